"""se_atten (dpa1) / se_atten_v2 + type embedding: physics checks (spec deepmd.md §2.6)."""

import time

import numpy as np
import pytest
import torch

from mlpot import testing as T
from mlpot.data import AtomsDataset, collate
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.base import edge_vectors
from mlpot.models.derivatives import compute_derivatives
from mlpot.models.deepmd.type_embedding import TypeEmbedding

VARIANTS = {
    "concat": {"type": "se_atten"},
    "concat_smooth": {"type": "dpa1", "smooth_type_embedding": True},
    "strip_one_side": {"type": "se_atten", "tebd_input_mode": "strip", "type_one_side": True, "normalize": False,
                       "temperature": 0.7, "attn_dotr": False},
    "v2": {"type": "se_atten_v2", "attn_layer": 1, "scaling_factor": 2.0},
}
SMOOTH_VARIANTS = ["concat_smooth", "v2"]  # concat is smooth at rcut only with set_davg_zero (its default)


def small_config(variant, precision="float64", **extra):
    section = {"sel": 24, "rcut": 3.5, "rcut_smth": 1.0, "neuron": [4, 8], "axis_neuron": 3, "attn": 6,
               "attn_layer": 2, "tebd_dim": 3, "seed": 1, "precision": precision}
    section.update(VARIANTS[variant])
    section.update(extra)
    return {"type_map": ["A", "B", "C"], "descriptor": section,
            "fitting_net": {"neuron": [8, 8], "seed": 2, "precision": precision}}


def small_model(variant, dtype=torch.float64, **extra):
    model = build_model(small_config(variant, "float64" if dtype == torch.float64 else "float32", **extra))
    model.compute_statistics([T.random_batch(2, 8, n_types=3, seed=5)])
    return model


def tolerances(dtype):
    return dict(atol=1e-7, rtol=1e-6) if dtype == torch.float64 else dict(atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forces_virial_by_finite_differences(dtype, variant):
    batch = T.random_batch(2, [8, 7], n_types=3, seed=1)
    model = small_model(variant, dtype)
    if dtype == torch.float64:
        T.assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-5)
        T.assert_virial_matches_finite_strain(model, batch, atol=1e-7, rtol=1e-5)
    else:
        T.assert_forces_match_fd(model, batch, delta=2e-3, atol=5e-3, rtol=5e-2, atoms=[0, 3, 9])
        T.assert_virial_matches_finite_strain(model, batch, delta=2e-3, atol=2e-2, rtol=5e-2)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_invariance_and_batch_consistency(dtype, variant):
    batch = T.random_batch(3, [8, 6, 7], n_types=3, seed=3)
    model = small_model(variant, dtype)
    T.assert_invariant(model, batch, **tolerances(dtype))
    T.assert_batch_consistent(model, batch, **tolerances(dtype))


def _pair_frame(distance, third=(-1.2, 0.5, 0.3)):
    frame = {K.POSITIONS: np.array([[0.0, 0, 0], [distance, 0, 0], list(third)]), K.CELL: np.zeros((3, 3)),
             K.PBC: np.zeros(3, bool), K.ATOM_TYPES: np.array([0, 1, 2])}
    return collate([AtomsDataset([frame], 4.0)[0]])


@pytest.mark.parametrize("variant", SMOOTH_VARIANTS)
def test_smooth_when_an_atom_crosses_the_cutoff(variant):
    model = small_model(variant)
    energies, forces = [], []
    for distance in (3.5 - 1e-4, 3.5 - 1e-7, 3.5 + 1e-7, 3.9):
        out = compute_derivatives(model, _pair_frame(distance))
        energies.append(out[K.ENERGY].item())
        forces.append(out[K.FORCES].detach())
    assert abs(energies[1] - energies[3]) < 1e-12 and abs(energies[2] - energies[3]) < 1e-12
    assert abs(energies[0] - energies[3]) < 1e-8
    torch.testing.assert_close(forces[1], forces[3], atol=1e-9, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_isolated_atom_gives_finite_outputs_and_gradients(variant):
    # the third atom has every slot empty: the masked softmax must not produce nan (value or gradient)
    model = small_model(variant)
    frame = _pair_frame(1.5, third=(0.0, 6.0, 0.0))
    out = compute_derivatives(model, frame, forces=True)
    assert torch.isfinite(out[K.ENERGY]).all() and torch.isfinite(out[K.FORCES]).all()
    assert out[K.FORCES][2].abs().max() == 0
    again = compute_derivatives(model, frame, create_graph=True)
    loss = again[K.FORCES].pow(2).sum() + again[K.ENERGY].sum()
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def _relabelled(model, order):
    """A copy of ``model`` for types renamed old t -> new position order.index(t) (weights permuted alike)."""
    config = dict(model.config, type_map=[model.type_map[t] for t in order])
    twin = build_model(config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    index = torch.tensor(order)
    for key in ("descriptor.davg", "descriptor.dstd", "fitting.bias_atom", "fitting.out_std"):
        state[key] = state[key][index]
    first = "descriptor.type_embedding.layers.0.weight"  # (n_types, tebd_dim): one row per one-hot input
    state[first] = state[first][index]
    twin.load_state_dict(state)
    return twin


@pytest.mark.parametrize("variant", ["concat", "v2"])
def test_type_relabelling_with_permuted_embedding_rows_is_exact(variant):
    # tebd_dim 4 with 3 types: no resnet skip (a skip would add the one-hot itself, which has an order)
    model = small_model(variant, exclude_types=[[0, 2]], tebd_dim=4)
    order = [2, 0, 1]  # new type k is old type order[k]
    twin = _relabelled(model, order)
    twin.descriptor.excluded_pairs.copy_(model.descriptor.excluded_pairs[order][:, order])
    batch = T.random_batch(2, 8, n_types=3, seed=9)
    relabelled = dict(batch)
    new_of_old = torch.argsort(torch.tensor(order))
    relabelled[K.ATOM_TYPES] = new_of_old[batch[K.ATOM_TYPES]]
    reference = compute_derivatives(model, batch)
    out = compute_derivatives(twin, relabelled)
    torch.testing.assert_close(out[K.ENERGY], reference[K.ENERGY])
    torch.testing.assert_close(out[K.FORCES], reference[K.FORCES])
    # the embeddings themselves are permuted rows, the padding row stays zero
    table, twin_table = model.descriptor.type_embedding.table(), twin.descriptor.type_embedding.table()
    torch.testing.assert_close(twin_table[:3], table[order])
    assert twin_table[3].abs().max() == 0


def test_type_embedding_layer_rule():
    embedding = TypeEmbedding(4, [8], seed=3)  # 4 -> 8 doubles the width: resnet skip [x, x]
    weight = embedding.layers[0].weight.detach()
    expected = torch.tanh(weight) + torch.eye(4).repeat(1, 2).to(weight.dtype)
    torch.testing.assert_close(embedding.table()[:4], expected)
    torch.testing.assert_close(embedding(torch.tensor([1, -1])), torch.stack([expected[1], torch.zeros(8, dtype=weight.dtype)]))
    assert embedding.layers[0].bias is None  # DeePMD-kit: no bias unless use_tebd_bias


def test_descriptor_shapes_and_keys():
    model = small_model("concat")
    batch = T.random_batch(1, 6, n_types=3, seed=6)
    d, rot = model.descriptor(batch, edge_vectors(batch))
    assert d.shape == (6, 8 * 3 + 3) and rot.shape == (6, 8, 3)
    torch.testing.assert_close(d[:, -3:], model.descriptor.type_embedding.table()[batch[K.ATOM_TYPES]])
    no_tebd = build_model(small_config("concat", concat_output_tebd=False, sel=[10, 10, 4]))
    assert no_tebd.descriptor.dim_out == 24 and no_tebd.descriptor.sel == [24]
    assert len(model.fitting.nets) == 1  # mixed types: one shared fitting net
    with pytest.raises(ConfigError, match="model/type_map: use_econf_tebd needs element symbols"):
        build_model(small_config("concat", use_econf_tebd=True))  # types A, B, C are not elements
    with pytest.raises(ConfigError, match="tebd_input_mode"):
        build_model(small_config("v2", tebd_input_mode="concat"))
    with pytest.raises(ConfigError, match="attn_layers"):
        build_model(small_config("concat", attn_layers=2))
    assert build_model(small_config("concat", stripped_type_embedding=True)).descriptor.tebd_input_mode == "strip"


def test_exclude_types_masks_the_pair():
    batch = T.random_batch(1, 10, n_types=3, seed=7)
    model = small_model("v2", exclude_types=[[0, 1]])
    T.assert_excluded_pair_decoupled(model.descriptor, batch)


def test_training_lowers_force_error_on_water(shared_data):
    """se_atten (float32) on one water frame: 80 Adam steps on the force loss bring the force RMSE
    well below the label RMS (what predicting zero forces gives). About 8 s on one core."""
    from mlpot.data import read_frames

    frames = read_frames(shared_data("deepmd_water/data_0"), type_map=["O", "H"])
    batch = collate([AtomsDataset(frames[:1], 4.0)[0]])
    model = build_model({"type_map": ["O", "H"],
                         "descriptor": {"type": "se_atten", "sel": 40, "rcut": 4.0, "rcut_smth": 0.5, "neuron": [8, 16],
                                        "axis_neuron": 4, "attn": 16, "attn_layer": 1, "tebd_dim": 4, "seed": 1,
                                        "precision": "float32"},
                         "fitting_net": {"neuron": [32, 32], "seed": 1, "precision": "float32"}})
    model.compute_statistics([batch])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def force_rmse(create_graph):
        out = compute_derivatives(model, batch, create_graph=create_graph)
        return (out[K.FORCES] - batch[K.FORCES]).pow(2).mean().sqrt()

    start = time.perf_counter()
    initial = force_rmse(False).item()
    for _ in range(80):
        optimizer.zero_grad()
        loss = force_rmse(True)
        loss.backward()
        optimizer.step()
    final = force_rmse(False).item()
    label_rms = batch[K.FORCES].pow(2).mean().sqrt().item()
    print(f"se_atten water force RMSE {initial:.3f} -> {final:.3f} eV/Å (label RMS {label_rms:.3f}) in {time.perf_counter() - start:.1f} s")
    assert final < 0.7 * initial and final < 0.7 * label_rms


def test_hybrid_with_se_atten_and_se_e3_members():
    model = build_model({"type_map": ["A", "B"], "fitting_net": {"neuron": [8], "seed": 2},
                         "descriptor": {"type": "hybrid", "list": [
                             {"type": "se_e2_a", "sel": [12, 12], "rcut": 3.0, "neuron": [4, 8], "axis_neuron": 2, "seed": 1},
                             {"type": "se_atten", "sel": 24, "rcut": 3.5, "neuron": [4, 8], "axis_neuron": 2, "attn": 4,
                              "tebd_dim": 3, "seed": 1},
                             {"type": "se_e3", "sel": [12, 12], "rcut": 3.5, "neuron": [2, 4], "seed": 1}]}})
    model.compute_statistics([T.random_batch(2, 8, seed=5)])
    batch = T.random_batch(2, [8, 7], seed=1)
    assert model.descriptor.dim_out == 8 * 2 + (8 * 2 + 3) + 4
    T.assert_forces_match_fd(model, batch, atol=1e-6, rtol=1e-5)
    T.assert_invariant(model, batch)
