"""mlpot's NequIP model reproduces NequIP 0.19.1 on its own trained model (shared nequip_reference).

The checkpoint and the package of the reference model are loaded with mlpot's safe reader and
evaluated through mlpot's data layer (extxyz reader, neighbour lists at the model cutoff) and
``compute_derivatives``; energies, forces and stress must match what NequIP computed in float64.
"""

import numpy as np
import pytest
import torch

from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K
from mlpot.models.derivatives import compute_derivatives
from mlpot.models.equivariant.nequip import NequIPModel
from mlpot.models.equivariant.nequip.files import load_nequip_checkpoint, load_nequip_package, read_nequip_checkpoint

REFERENCE = "nequip_reference"


def evaluate(model, folder):
    frames = read_frames(folder / "frames.xyz", type_map=model.type_map)
    dataset = AtomsDataset(frames, model.cutoff, type_map=model.type_map)
    batch = collate([dataset[i] for i in range(len(dataset))], dtype=torch.float64)
    out = compute_derivatives(model, batch, forces=True, stress=True)
    return {key: out[key].detach().numpy() for key in (K.ENERGY, K.FORCES, K.STRESS)}, batch


@pytest.mark.parametrize("kind", ["checkpoint", "package"])
def test_reproduces_nequip_energies_forces_stress(shared_data, kind):
    folder = shared_data(REFERENCE)
    reference = np.load(folder / "reference.npz")
    model = load_nequip_checkpoint(folder / "model.ckpt") if kind == "checkpoint" else load_nequip_package(folder / "model.nequip.zip")
    assert isinstance(model, NequIPModel) and model.model_dtype == torch.float64
    assert model.type_map == ["O", "H"] and model.cutoff == 4.0
    out, batch = evaluate(model, folder)
    np.testing.assert_array_equal(batch[K.N_ATOMS].numpy(), reference["n_atoms"])
    energy_error = np.abs(out[K.ENERGY] - reference["energy"]) / np.abs(reference["energy"])
    assert energy_error.max() < 1e-8, energy_error
    assert np.abs(out[K.FORCES] - reference["forces"]).max() < 1e-8
    periodic = ~np.isnan(reference["stress"]).any(axis=(1, 2))
    assert periodic.tolist() == [True, True, True, False]  # NequIP: NaN stress for the cluster in vacuum
    assert np.abs(out[K.STRESS][periodic] - reference["stress"][periodic]).max() < 1e-8


def test_checkpoint_and_package_give_the_same_model(shared_data):
    folder = shared_data(REFERENCE)
    from_checkpoint = load_nequip_checkpoint(folder / "model.ckpt").state_dict()
    from_package = load_nequip_package(folder / "model.nequip.zip").state_dict()
    assert from_checkpoint.keys() == from_package.keys()
    for name in from_checkpoint:
        torch.testing.assert_close(from_checkpoint[name], from_package[name], rtol=0, atol=0)


def test_checkpoint_evaluates_the_ema_weights(shared_data):
    """NequIP evaluates (and packages) the EMA weights; the raw weights give a different model."""
    folder = shared_data(REFERENCE)
    config, weights, ema = read_nequip_checkpoint(folder / "model.ckpt")
    assert config["_target_"] == "nequip.model.NequIPGNNModel" and len(ema) == 14
    reference = np.load(folder / "reference.npz")
    raw, _ = evaluate(load_nequip_checkpoint(folder / "model.ckpt", use_ema=False), folder)
    assert np.abs(raw[K.ENERGY] - reference["energy"]).max() > 1e-4


def test_float32_evaluation_of_the_float64_model(shared_data):
    folder = shared_data(REFERENCE)
    reference = np.load(folder / "reference.npz")
    model = load_nequip_checkpoint(folder / "model.ckpt", dtype=torch.float32)
    assert model.model_dtype == torch.float32 and model.config["model_dtype"] == "float32"
    out, _ = evaluate(model, folder)
    assert out[K.ENERGY].dtype == np.float64  # energies leave the scale/shift in float64
    np.testing.assert_allclose(out[K.ENERGY], reference["energy"], rtol=1e-6)
    np.testing.assert_allclose(out[K.FORCES], reference["forces"], atol=2e-4)
