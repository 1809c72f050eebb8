"""mlpot's MACE is mace-torch 0.3.16's model: its reference numbers to 1e-8 from its own files.

The reference (shared/data/mace_reference) holds a model trained by mace-torch in float64, its
``.model`` file, training checkpoint and options, and the energies, forces and stresses mace-torch
computed on four frames (two periodic water boxes, a sheared triclinic one, a cluster in vacuum).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3

from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K
from mlpot.models.derivatives import compute_derivatives
from mlpot.models.equivariant.mace import MACEModelSection, ScaleShiftMACE, load_mace_checkpoint, load_mace_model_file
from mlpot.models.equivariant.mace.coupling import u_matrix
from mlpot.models.equivariant.mace.files import MACE_MODEL_FILE, read_pickled_module, section_from_model_tree
from mlpot.models.safe_pickle import module_state


@pytest.fixture(scope="module")
def reference(shared_data):
    root = shared_data("mace_reference")
    return root, np.load(root / "reference.npz")


def _evaluate(model, root):
    frames = read_frames(root / "frames.xyz", type_map=model.type_map)
    dataset = AtomsDataset(frames, model.cutoff)
    batch = collate([dataset[i] for i in range(len(dataset))], dtype=torch.float64)
    out = compute_derivatives(model, batch, forces=True, stress=True)
    return {key: out[key].detach().numpy() for key in (K.ENERGY, K.FORCES, K.STRESS)}


def _assert_reproduces(out, ref):
    assert out[K.ENERGY].shape == ref["energy"].shape
    np.testing.assert_array_less(np.abs(out[K.ENERGY] / ref["energy"] - 1.0), 1e-8)
    np.testing.assert_array_less(np.abs(out[K.FORCES] - ref["forces"]), 1e-8)
    periodic = ~np.isnan(ref["stress"]).any(axis=(1, 2))
    assert periodic.tolist() == [True, True, True, False]
    np.testing.assert_array_less(np.abs(out[K.STRESS][periodic] - ref["stress"][periodic]), 1e-8)


def test_model_file_reproduces_mace_torch(reference):
    root, ref = reference
    model = load_mace_model_file(root / "model.model", dtype=torch.float64)
    assert isinstance(model, ScaleShiftMACE) and model.type_map == ["H", "O"]
    _assert_reproduces(_evaluate(model, root), ref)


def test_checkpoint_and_options_reproduce_mace_torch(reference):
    root, ref = reference
    model = load_mace_checkpoint(root / "checkpoint.pt", root / "options.yaml", dtype=torch.float64)
    # avg_num_neighbors is not in the state dict: recomputed from mace_run_train's split of water.xyz
    assert model.interactions[0].avg_num_neighbors == 37.838541666666664
    _assert_reproduces(_evaluate(model, root), ref)


def test_hyperparameters_recovered_from_the_pickled_module(reference):
    root, _ = reference
    section = section_from_model_tree(read_pickled_module(root / "model.model"), "model.model")
    MACEModelSection.model_validate(section)
    expected = {"model": "ScaleShiftMACE", "r_max": 4.5, "num_radial_basis": 8, "num_cutoff_basis": 5, "max_ell": 3,
                "correlation": 3, "num_interactions": 2, "hidden_irreps": "16x0e+16x1o", "MLP_irreps": "8x0e",
                "radial_MLP": [16, 16], "interaction_first": "RealAgnosticInteractionBlock",
                "interaction": "RealAgnosticResidualInteractionBlock", "gate": "silu", "atomic_numbers": [1, 8],
                "avg_num_neighbors": 37.838541666666664, "radial_type": "bessel", "distance_transform": "None"}
    assert {key: section[key] for key in expected} == expected
    assert section["atomic_inter_shift"] == 0.0 and section["atomic_inter_scale"] > 0


def test_model_file_state_equals_checkpoint_state(reference):
    """Every tensor of the .model (including e3nn's generated-code buffers) is read, bit for bit."""
    root, _ = reference
    state = module_state(read_pickled_module(root / "model.model"), "model.model", allow=MACE_MODEL_FILE)
    checkpoint = torch.load(root / "checkpoint.pt", weights_only=True)["model"]
    assert set(state) == set(checkpoint)
    for key, value in checkpoint.items():
        assert torch.equal(state[key], value), key


def test_coupling_tensors_equal_mace_up_to_column_signs(reference):
    """mlpot's generalised CG tensors are mace-torch's, except the column signs that e3nn 0.4.4 and
    0.6 fix differently (paths through intermediate irreps of unnatural parity)."""
    root, _ = reference
    state = torch.load(root / "checkpoint.pt", weights_only=True)["model"]
    blocks = [o3.Irrep(ir) for ir in ("0e", "1o", "2e", "3o")]
    flipped = 0
    for k, irrep in enumerate(("0e", "1o")):
        for nu in (1, 2, 3):
            theirs = state[f"products.0.symmetric_contractions.contractions.{k}.U_matrix_{nu}"]
            ours = u_matrix(blocks, o3.Irrep(irrep), nu)
            assert ours.shape == theirs.shape
            same = (ours - theirs).flatten(0, -2).abs().amax(0) < 1e-12
            opposite = (ours + theirs).flatten(0, -2).abs().amax(0) < 1e-12
            assert bool(torch.all(same | opposite))
            flipped += int((~same).sum())
    assert flipped == 6  # the 1o paths of correlation 3 through 1e/2o intermediates


def test_conv_tp_3j_symbols_come_from_the_file(reference):
    root, _ = reference
    model = load_mace_model_file(root / "model.model")
    tp = model.interactions[1].conv_tp
    for p, (i, j, ir_out) in enumerate(tp.paths):
        (a0, a1), (s0, s1), (o0, o1) = tp.slices_in[i], tp.slices_sh[j], tp.slices_out[p]
        block = tp.coupling[a0:a1, s0:s1, o0:o1] / ir_out.dim ** 0.5
        torch.testing.assert_close(block, tp.path_w3j(p), rtol=0, atol=1e-15)  # natural parity: same 3j


def test_float32_model_from_float64_file_is_close(reference):
    root, ref = reference
    model = load_mace_model_file(root / "model.model", dtype=torch.float32)
    frames = read_frames(root / "frames.xyz", type_map=model.type_map)
    dataset = AtomsDataset(frames, model.cutoff)
    batch = collate([dataset[i] for i in range(len(dataset))], dtype=torch.float32)
    out = compute_derivatives(model, batch, forces=True)
    energy = out[K.ENERGY].detach().double().numpy()
    np.testing.assert_allclose(energy, ref["energy"], rtol=1e-6)
    np.testing.assert_allclose(out[K.FORCES].detach().double().numpy(), ref["forces"], atol=2e-3)
