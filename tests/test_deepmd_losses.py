"""DeePMD ``tensor`` and ``dos`` losses: front-end mapping and the cumulative (cdf) loss term."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mlpot.config import deepmd
from mlpot.config import validate_config
from mlpot.config.schema import LossTerm
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.training.losses import WeightedLoss

WATER_INPUT = Path(__file__).resolve().parents[1] / "examples" / "deepmd_water" / "input.json"


@pytest.fixture
def water_input(shared_data):
    config = json.loads(WATER_INPUT.read_text())
    config["training"]["training_data"]["systems"] = [str(shared_data("deepmd_water/data_0"))]
    config["training"]["validation_data"]["systems"] = [str(shared_data("deepmd_water/data_3"))]
    return config


def _dos_batch(seed=0):
    """Two frames (2 and 3 atoms), 5 DOS bins; predictions and labels random."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = torch.tensor([2, 3])
    batch = {
        K.N_ATOMS: n_atoms, K.BATCH: torch.repeat_interleave(torch.arange(2), n_atoms),
        K.DOS: torch.randn(2, 5, generator=g, dtype=torch.float64),
        K.ATOM_DOS: torch.randn(5, 5, generator=g, dtype=torch.float64),
        K.weight_key(K.DOS): torch.ones(2, dtype=torch.float64),
        K.weight_key(K.ATOM_DOS): torch.ones(2, dtype=torch.float64),
    }
    pred = {K.DOS: torch.randn(2, 5, generator=g, dtype=torch.float64),
            K.ATOM_DOS: torch.randn(5, 5, generator=g, dtype=torch.float64)}
    return pred, batch


def test_cdf_terms_match_hand_computation():
    pred, batch = _dos_batch()
    loss = WeightedLoss({"dos_cdf": LossTerm(weight=2.0), "atom_dos_cdf": LossTerm(weight=1.0),
                         "dos": LossTerm(weight=1.0)})
    total, weighted, raw = loss(pred, batch)
    # hand: running sums along the energy axis, element by element
    cdf_pred = [[sum(row[: i + 1]) for i in range(5)] for row in pred[K.DOS].tolist()]
    cdf_label = [[sum(row[: i + 1]) for i in range(5)] for row in batch[K.DOS].tolist()]
    hand = sum((a - b) ** 2 for ra, rb in zip(cdf_pred, cdf_label) for a, b in zip(ra, rb)) / 10
    assert float(raw["dos_cdf"]) == pytest.approx(hand, rel=1e-12)
    acdf = torch.cumsum(pred[K.ATOM_DOS], 1) - torch.cumsum(batch[K.ATOM_DOS], 1)
    assert float(raw["atom_dos_cdf"]) == pytest.approx(float(acdf.square().mean()), rel=1e-12)
    assert float(raw["dos"]) == pytest.approx(float((pred[K.DOS] - batch[K.DOS]).square().mean()), rel=1e-12)
    assert float(total) == pytest.approx(2 * hand + float(raw["atom_dos_cdf"]) + float(raw["dos"]), rel=1e-12)


def test_cdf_of_frame_without_label_is_ignored():
    pred, batch = _dos_batch()
    batch[K.weight_key(K.DOS)] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    _, _, raw = WeightedLoss({"dos_cdf": LossTerm()})(pred, batch)
    first = torch.cumsum(pred[K.DOS][0] - batch[K.DOS][0], 0)
    assert float(raw["dos_cdf"]) == pytest.approx(float(first.square().mean()), rel=1e-12)


def _tensor_input(water_input, fitting_type, **loss):
    config = copy.deepcopy(water_input)
    config["model"]["fitting_net"] = {"type": fitting_type, "neuron": [16], "sel_type": [0]}
    config["loss"] = {"type": "tensor", **loss}
    return config


@pytest.mark.parametrize("fitting_type,global_label,atomic_label", [
    ("dipole", K.DIPOLE, K.ATOMIC_DIPOLE), ("polar", K.POLARIZABILITY, K.ATOMIC_POLARIZABILITY)])
def test_tensor_loss_maps_to_constant_terms(water_input, fitting_type, global_label, atomic_label):
    native = deepmd.convert_dict(_tensor_input(water_input, fitting_type, pref=0.5, pref_atomic=2.0))
    terms = native["loss"]["terms"]
    assert terms[global_label] == {"weight": 0.5, "label": global_label, "atom_norm": "none"}
    assert terms[atomic_label] == {"weight": 2.0, "label": atomic_label, "atom_norm": "none"}
    config = validate_config(native)
    loss = WeightedLoss(config.loss.terms, config.loss.type)
    assert loss.prefactor(global_label, 0.01) == 0.5  # constants: no lr coupling
    # a zero prefactor switches the term off
    native = deepmd.convert_dict(_tensor_input(water_input, fitting_type, pref=0.0, pref_atomic=1.0))
    assert set(native["loss"]["terms"]) == {atomic_label}


def test_tensor_loss_errors(water_input):
    with pytest.raises(ConfigError, match="pref_atomic"):
        deepmd.convert_dict(_tensor_input(water_input, "dipole", pref=1.0))
    config = copy.deepcopy(water_input)
    config["loss"] = {"type": "tensor", "pref": 1.0, "pref_atomic": 1.0}
    with pytest.raises(ConfigError, match="dipole or polar"):
        deepmd.convert_dict(config)
    weighted = deepmd.convert_dict(_tensor_input(water_input, "dipole", pref=1.0, pref_atomic=1.0,
                                                 enable_atomic_weight=True))
    assert weighted["loss"]["terms"][K.ATOMIC_DIPOLE]["atom_weight"] is True


def test_dos_loss_maps_prefactors(water_input):
    config = copy.deepcopy(water_input)
    config["model"]["fitting_net"] = {"type": "dos", "numb_dos": 250, "neuron": [16]}
    config["loss"] = {"type": "dos", "start_pref_dos": 1.0, "limit_pref_dos": 0.5,
                      "start_pref_cdf": 100.0, "limit_pref_cdf": 1.0}
    native = deepmd.convert_dict(config)
    assert native["loss"]["terms"] == {
        "dos": {"start_pref": 1.0, "limit_pref": 0.5}, "dos_cdf": {"start_pref": 100.0, "limit_pref": 1.0},
        "atom_dos": {"start_pref": 1.0, "limit_pref": 1.0}}  # ados defaults to 1 -> 1; acdf off
    loss_config = validate_config(native).loss
    loss = WeightedLoss(loss_config.terms, loss_config.type)
    assert loss.prefactor("dos_cdf", 0.5) == pytest.approx(1.0 + 99.0 * 0.5)
    assert loss.labels == (K.DOS, K.ATOM_DOS)
