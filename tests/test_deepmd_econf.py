"""use_econf_tebd: the type embedding reads the elements' electronic configurations (DeePMD-kit 3.x).

* the configuration vectors of all 118 elements: electron counts, Hund's rule, the Madelung
  exceptions, and the whole table against DeePMD-kit 3.2's (its sha256);
* DeePMD-kit 3.2's own files trained with use_econf_tebd (se_atten with use_tebd_bias: checkpoint
  and frozen archive; se_e3_tebd strip and DPA-2: frozen archives; written by
  ``tests/peer_models/make_deepmd_models.py``, models ``*_econf``) give ``dp test``'s numbers;
* mlpot trains from such an input, and its checkpoint evaluates to the trained model's numbers.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.data import chemical_symbols

from mlpot.calculators.evaluate import iterate_predictions
from mlpot.calculators.export import load_model
from mlpot.config import deepmd
from mlpot.config.loader import validate_config
from mlpot.data import read_frames
from mlpot.models.deepmd.econf import ECONF_DIM, SUBSHELLS, configuration, econf_table
from test_deepmd_training_keys import small_deepmd_input

FILES = Path(__file__).parent / "peer_models" / "deepmd"
FRAMES = (0, 2)
# sha256 of DeePMD-kit 3.2's table (deepmd.utils.econf_embd, H..Og, entries +-1 as int8, row by row)
DEEPMD_TABLE_SHA256 = "306fe19a29d49dbedebe1c8ee400eb89bd5ccbae623894269c3f62725fecbbc0"
ELEMENTS = chemical_symbols[1:119]


def _occupations(row: np.ndarray) -> np.ndarray:
    """Electrons per orbital (0, 1, 2) from a row of +-1 pairs."""
    pairs = np.rint(row * math.sqrt(ECONF_DIM)).astype(int).reshape(-1, 2)
    return (pairs[:, 0] + 1) // 2 + (pairs[:, 1] + 1) // 2


def test_configuration_vectors():
    table = econf_table(ELEMENTS)
    assert table.shape == (118, 118) == (len(ELEMENTS), ECONF_DIM)
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, rtol=0, atol=1e-14)
    electrons = np.array([_occupations(row).sum() for row in table])
    np.testing.assert_array_equal(electrons, np.arange(1, 119))  # neutral atoms: Z electrons
    widths = [2 * l + 1 for _, l in SUBSHELLS]
    start = np.cumsum([0] + widths)
    fe = _occupations(econf_table(["Fe"])[0])
    d3 = fe[start[5]:start[6]]  # 3d6: Hund's rule, one pair and four single electrons
    assert d3.tolist() == [2, 1, 1, 1, 1] and fe[start[6]] == 2  # 4s2
    assert configuration("Cr")[(3, 2)] == 5 and configuration("Cr")[(4, 0)] == 1  # 3d5 4s1, not 3d4 4s2
    assert (5, 0) not in configuration("Pd") and configuration("Pd")[(4, 2)] == 10  # 4d10 5s0
    assert configuration("Lr")[(6, 2)] == 1 and configuration("Og")[(7, 1)] == 6
    as_int = np.rint(table * math.sqrt(ECONF_DIM)).astype(np.int8)
    assert hashlib.sha256(as_int.tobytes()).hexdigest() == DEEPMD_TABLE_SHA256


@pytest.fixture(scope="module")
def frames(shared_data):
    every = read_frames(shared_data("deepmd_water/data_3"), type_map=["O", "H"])
    return [every[i] for i in FRAMES]


def _predict(model, frames, keys=("energy", "forces", "virial")):
    out = [prediction for _, prediction in iterate_predictions(model, frames)]
    return {key: np.stack([p[key] for p in out]) for key in keys}


CASES = [("se_atten_econf", ".ckpt.pt"), ("se_atten_econf", ".pth"), ("se_e3_tebd_econf", ".pth"),
         ("dpa2_econf", ".pth")]
NEAR_CUTOFF_PAIR = (66, 129)  # frame 0: H-H 2.1e-5 Å inside rcut; concat se_atten is not smooth there


@pytest.mark.parametrize("name, suffix", CASES, ids=[n + s for n, s in CASES])
def test_reproduces_dp_test(name, suffix, frames):
    reference = np.load(FILES / "deepmd_reference.npz")
    model = load_model(FILES / f"{name}{suffix}")
    embedding = model.descriptor.type_embedding
    assert embedding.use_econf_tebd and embedding.inputs.shape == (2, 118)
    np.testing.assert_array_equal(embedding.inputs.numpy(), econf_table(["O", "H"]))
    out = _predict(model, frames)
    errors = {key: np.abs(out[key] - reference[f"{name}/{key}"]) for key in out}
    assert errors["energy"].max() < 1e-9, errors["energy"]  # of -2.9e4 eV: rounding of the sum
    if name == "se_atten_econf":  # as tests/test_deepmd_files.py: only the near-cutoff pair of frame 0
        atom_errors = errors["forces"][0].max(axis=1)
        assert set(np.flatnonzero(atom_errors > 1e-12)) <= set(NEAR_CUTOFF_PAIR) and atom_errors.max() < 1e-5
        errors = {key: value[1:] for key, value in errors.items()}
    assert errors["forces"].max() < 1e-12 and errors["virial"].max() < 1e-10, (errors["forces"].max(),
                                                                               errors["virial"].max())


def test_trains_from_a_deepmd_input(tmp_path):
    from mlpot.training.trainer import Trainer

    config = small_deepmd_input(tmp_path, numb_steps=6)
    config["model"]["descriptor"] = {"type": "se_atten", "sel": 8, "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8],
                                     "axis_neuron": 2, "attn": 8, "attn_layer": 1, "tebd_dim": 4, "seed": 1,
                                     "use_econf_tebd": True, "use_tebd_bias": True}
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / "out")
    trainer = Trainer(validate_config(native), progress=False)
    embedding = trainer.model.descriptor.type_embedding
    start = embedding.layers[0].weight.detach().clone()
    assert start.shape == (118, 4)
    carbon = _occupations(embedding.inputs[0].numpy())
    assert carbon[:5].tolist() == [2, 2, 1, 1, 0] and carbon.sum() == 6  # 1s2 2s2 2p2 (Hund: 2p 1 1 0)
    trainer.run()
    rows = [line.split() for line in (tmp_path / "out" / "lcurve.out").read_text().splitlines()
            if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == [1, 3, 6] and float(rows[-1][1]) < float(rows[0][1])  # rmse_trn
    assert not torch.equal(embedding.layers[0].weight.detach(), start)
    # the checkpoint rebuilds the configuration rows from its type_map: the trained model's numbers
    frames = read_frames(tmp_path / "sys5", type_map=["C", "H"])[:2]
    reloaded = load_model(trainer.last_checkpoint)
    assert reloaded.descriptor.type_embedding.use_econf_tebd
    keys = ("energy", "forces")
    ours, theirs = _predict(trainer.model.eval(), frames, keys), _predict(reloaded, frames, keys)
    for key in keys:
        np.testing.assert_allclose(theirs[key], ours[key], rtol=0, atol=1e-12)
