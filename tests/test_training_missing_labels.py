"""Labels some systems lack: weight 0 in training, validation and lcurve, never a fake 0.

DeePMD-kit's water_tensor and dos examples train on an ``atomic_system`` (atomic labels only) plus a
``global_system`` (global labels only); each batch comes from one system, so a batch may hold no
frame with a term's label at all (DeePMD ``find_* = 0``). A term whose label no training frame has
is a set-up error instead.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mlpot.cli import main
from mlpot.training.schema import LossTerm
from mlpot.data import keys as K
from mlpot.data.deepmd_format import write_deepmd_npy
from mlpot.errors import ConfigError
from mlpot.training.losses import WeightedLoss


def _batch(labels, n_atoms=(2, 3), seed=0):
    """Two frames with predictions for energy/forces/dipoles and only the ``labels`` given."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor(n_atoms)
    n = int(counts.sum())
    shapes = {K.ENERGY: (2,), K.FORCES: (n, 3), K.DIPOLE: (2, 3), K.ATOMIC_DIPOLE: (n, 3)}
    pred = {key: torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
            for key, shape in shapes.items()}
    batch = {K.N_ATOMS: counts, K.BATCH: torch.repeat_interleave(torch.arange(2), counts)}
    for label in labels:
        batch[label] = torch.randn(shapes[label], generator=g, dtype=torch.float64)
        batch[K.weight_key(label)] = torch.ones((2, 3) if label == K.DIPOLE else 2, dtype=torch.float64)
    return pred, batch


def test_a_batch_without_the_label_has_weight_zero_for_that_term():
    loss = WeightedLoss({K.DIPOLE: LossTerm(weight=1.0), K.ATOMIC_DIPOLE: LossTerm(weight=3.0)})
    pred, batch = _batch([K.DIPOLE])  # a global_system batch
    total, weighted, raw = loss(pred, batch)
    assert set(raw) == {K.DIPOLE}
    assert total.item() == pytest.approx(((pred[K.DIPOLE] - batch[K.DIPOLE]).square().mean()).item(), rel=1e-12)
    pred, batch = _batch([K.ATOMIC_DIPOLE])  # an atomic_system batch
    total, _, raw = loss(pred, batch)
    assert set(raw) == {K.ATOMIC_DIPOLE}
    hand = 3.0 * ((pred[K.ATOMIC_DIPOLE] - batch[K.ATOMIC_DIPOLE]).square().mean()).item()
    assert total.item() == pytest.approx(hand, rel=1e-12)


def test_energy_and_force_terms_are_gated_the_same_way():
    loss = WeightedLoss({"energy": LossTerm(weight=1.0), "forces": LossTerm(weight=10.0)})
    pred, batch = _batch([K.FORCES])
    total, _, raw = loss(pred, batch)
    assert set(raw) == {"forces"}
    assert total.item() == pytest.approx(10 * ((pred[K.FORCES] - batch[K.FORCES]).square().mean()).item(), rel=1e-12)


def test_a_batch_with_no_label_of_any_term_still_back_propagates_zero():
    loss = WeightedLoss({K.DIPOLE: LossTerm(weight=1.0)})
    pred, batch = _batch([K.ATOMIC_DIPOLE])
    total, weighted, _ = loss(pred, batch)
    assert weighted == {} and total.item() == 0.0
    total.backward()  # DeePMD find_* = 0: a zero loss, zero gradients, no error
    assert float(pred[K.DIPOLE].grad.abs().sum()) == 0.0


def test_a_term_whose_label_no_training_frame_has_is_a_config_error():
    frames = [{K.POSITIONS: np.zeros((2, 3)), K.ATOMIC_DIPOLE: np.zeros((2, 3))} for _ in range(2)]
    frames[1][K.DIPOLE] = np.zeros(3)
    frames[1][K.weight_key(K.DIPOLE)] = 0.0  # present in the file but weighted out
    loss = WeightedLoss({K.DIPOLE: LossTerm(weight=1.0), K.ATOMIC_DIPOLE: LossTerm(weight=1.0)})
    with pytest.raises(ConfigError, match=r"loss term 'dipole' .*no frame of the training data has") as info:
        loss.check_labels(frames)
    assert info.value.key == "loss.terms.dipole"
    # a prefactor of 0 needs no label (DeePMD's tensor loss with pref 0)
    WeightedLoss({K.DIPOLE: LossTerm(weight=0.0), K.ATOMIC_DIPOLE: LossTerm(weight=1.0)}).check_labels(frames)
    WeightedLoss({K.DIPOLE: LossTerm(start_pref=0.0, limit_pref=0.0)}).check_labels(frames)


# ---- through `mlpot train` with a DeePMD input ------------------------------------------------------


def _systems(tmp_path):
    """An atomic_system (atomic_dipole on every atom, H rows zero) and a global_system (dipole)."""
    rng = np.random.default_rng(0)
    types = np.array([0, 1, 1, 0, 1, 1, 1, 1])
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    out = {}
    for name, key in (("atomic_system", K.ATOMIC_DIPOLE), ("global_system", K.DIPOLE)):
        frames = []
        for _ in range(4):
            frame = {K.POSITIONS: (grid + 0.5 + rng.uniform(-0.15, 0.15, grid.shape)) * 2.5,
                     K.CELL: np.eye(3) * 5.0, K.PBC: np.ones(3, bool), K.ATOM_TYPES: types}
            frame[key] = rng.normal(size=3) if key == K.DIPOLE else rng.normal(size=(8, 3)) * (types == 0)[:, None]
            frames.append(frame)
        out[name] = str(write_deepmd_npy(tmp_path / name, frames, type_map=["O", "H"]))
    return out


def _dipole_input(systems, pref=1.0, pref_atomic=1.0):
    both = [systems["atomic_system"], systems["global_system"]]
    return {
        "model": {"type_map": ["O", "H"], "atom_exclude_types": [1],
                  "descriptor": {"type": "se_e2_a", "sel": [8, 16], "rcut": 3.0, "rcut_smth": 2.5, "neuron": [4, 8],
                                 "axis_neuron": 4, "type_one_side": True, "seed": 1},
                  "fitting_net": {"type": "dipole", "neuron": [8], "resnet_dt": True, "seed": 1}},
        "learning_rate": {"type": "exp", "start_lr": 0.01, "decay_steps": 5000},
        "loss": {"type": "tensor", "pref": pref, "pref_atomic": pref_atomic},
        "training": {"training_data": {"systems": both, "batch_size": "auto"},
                     "validation_data": {"systems": both, "batch_size": 1, "numb_btch": 4},
                     "numb_steps": 6, "seed": 10, "disp_freq": 1, "save_freq": 6},
    }


def test_mixed_atomic_and_global_systems_train(tmp_path, monkeypatch):
    systems = _systems(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "input.json").write_text(json.dumps(_dipole_input(systems)))
    monkeypatch.chdir(run)
    assert main(["train", "input.json"]) == 0
    header = (run / "lcurve.out").read_text().splitlines()[0].lstrip("#").split()
    rows = np.atleast_2d(np.loadtxt(run / "lcurve.out"))
    table = {name: rows[:, i] for i, name in enumerate(header)}
    assert len(rows) == 6
    # each training batch comes from one system: exactly one of the two columns is a number
    trained = np.isfinite(table["rmse_dipole_trn"]) ^ np.isfinite(table["rmse_atomic_dipole_trn"])
    assert trained.all()
    assert np.isfinite(table["rmse_dipole_trn"]).any() and np.isfinite(table["rmse_atomic_dipole_trn"]).any()
    assert np.all(np.isfinite(table["rmse_trn"]))
    # the validation rounds (4 batches from both systems) carry both labels somewhere
    assert np.isfinite(table["rmse_atomic_dipole_val"]).any() and np.isfinite(table["rmse_dipole_val"]).any()


def test_a_loss_term_without_any_training_label_stops_before_step_one(tmp_path, monkeypatch, capsys):
    systems = _systems(tmp_path)
    config = _dipole_input(systems)
    config["training"]["training_data"]["systems"] = [systems["atomic_system"]]
    run = tmp_path / "run"
    run.mkdir()
    (run / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(run)
    assert main(["train", "input.json"]) == 2
    message = capsys.readouterr().err
    assert "loss term 'dipole'" in message and "atomic_system" in message
    assert not (run / "lcurve.out").exists()
    # pref 0 for the global term: trains on atomic labels alone (DeePMD-kit behaviour)
    (run / "input.json").write_text(json.dumps(dict(config, loss={"type": "tensor", "pref": 0.0, "pref_atomic": 1.0})))
    assert main(["train", "input.json"]) == 0
    assert math.isfinite(np.atleast_2d(np.loadtxt(run / "lcurve.out"))[-1, 1])
