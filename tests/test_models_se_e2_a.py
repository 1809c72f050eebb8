"""se_e2_a + ener fitting: physics checks, conventions of spec deepmd.md §2.3, statistics on water."""

import numpy as np
import pytest
import torch

from mlpot import testing as T
from mlpot.data import keys as K
from mlpot.models import build_model
from mlpot.models.base import edge_vectors
from mlpot.models.derivatives import compute_derivatives
from mlpot.nn import smooth_switch

WATER_SE_A = {
    "type_map": ["O", "H"],
    "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
                   "resnet_dt": False, "axis_neuron": 16, "type_one_side": True, "seed": 1,
                   "_comment": " that's all"},
    "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "seed": 1},
}


def small_config(precision="default", **descriptor):
    section = {"type": "se_a", "sel": [12, 12], "rcut": 3.5, "rcut_smth": 1.0, "neuron": [4, 8], "axis_neuron": 3,
               "seed": 1, "precision": precision}
    section.update(descriptor)
    return {"type_map": ["A", "B"], "descriptor": section,
            "fitting_net": {"neuron": [8, 8], "seed": 2, "precision": precision}}


def small_model(dtype=torch.float64, batch=None, **descriptor):
    precision = "float64" if dtype == torch.float64 else "float32"
    model = build_model(small_config(precision, **descriptor))
    model.compute_statistics([batch if batch is not None else T.random_batch(2, 8, seed=5)])
    return model


def tolerances(dtype):
    return dict(atol=1e-7, rtol=1e-6) if dtype == torch.float64 else dict(atol=2e-3, rtol=2e-3)


def test_water_example_parameter_count():
    assert build_model(WATER_SE_A).num_parameters() == 1_014_182  # spec §3.1


@pytest.mark.parametrize("type_one_side", [True, False])
def test_forces_virial_by_finite_differences(dtype, type_one_side):
    batch = T.random_batch(2, [8, 7], seed=1)
    model = small_model(dtype, type_one_side=type_one_side)
    if dtype == torch.float64:
        T.assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-5)
        T.assert_virial_matches_finite_strain(model, batch, atol=1e-7, rtol=1e-5)
    else:  # float32 network: finite differences need a larger step and looser tolerance
        T.assert_forces_match_fd(model, batch, delta=2e-3, atol=5e-3, rtol=5e-2, atoms=[0, 3, 9])
        T.assert_virial_matches_finite_strain(model, batch, delta=2e-3, atol=2e-2, rtol=5e-2)


def test_non_periodic_forces_and_virial():
    batch = T.random_batch(1, 9, periodic=False, seed=2)
    model = small_model()
    T.assert_forces_match_fd(model, batch)
    T.assert_virial_matches_finite_strain(model, batch)
    out = compute_derivatives(model, batch, forces=True)
    torch.testing.assert_close(out[K.FORCES].sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("type_one_side", [True, False])
def test_invariance_and_batch_consistency(dtype, type_one_side):
    batch = T.random_batch(3, [8, 6, 7], seed=3)
    model = small_model(dtype, type_one_side=type_one_side)
    T.assert_invariant(model, batch, **tolerances(dtype))
    T.assert_batch_consistent(model, batch, **tolerances(dtype))


def test_atom_energies_sum_to_energy_and_outputs_are_float64():
    batch = T.random_batch(2, 8, seed=4)
    out = small_model(torch.float32)(batch)
    assert out[K.ENERGY].dtype == torch.float64
    torch.testing.assert_close(out[K.ENERGY], torch.stack([out[K.ATOM_ENERGY][:8].sum(), out[K.ATOM_ENERGY][8:].sum()]))


def test_smooth_when_an_atom_crosses_the_cutoff():
    # two atoms, isolated: energy, forces are continuous and constant beyond rcut
    model = small_model()
    model.descriptor.rcut_smth = 1.0
    energies, forces = [], []
    for distance in (3.5 - 1e-4, 3.5 - 1e-7, 3.5 + 1e-7, 3.9):
        frame = {K.POSITIONS: np.array([[0.0, 0, 0], [distance, 0, 0]]), K.CELL: np.zeros((3, 3)),
                 K.PBC: np.zeros(3, bool), K.ATOM_TYPES: np.array([0, 1])}
        from mlpot.data import AtomsDataset, collate

        batch = collate([AtomsDataset([frame], 4.0)[0]])
        out = compute_derivatives(model, batch)
        energies.append(out[K.ENERGY].item())
        forces.append(out[K.FORCES].detach())
    assert abs(energies[1] - energies[3]) < 1e-12 and abs(energies[2] - energies[3]) < 1e-12
    assert abs(energies[0] - energies[3]) < 1e-8  # w ~ (1-u)^3 near rc
    assert forces[1].abs().max() < 1e-9 and forces[3].abs().max() == 0


def _naive_descriptor(model, batch):
    """Reference D and rot by explicit loops over atoms and slots (spec §2.2-2.3)."""
    desc = model.descriptor
    types = batch[K.ATOM_TYPES]
    vectors = edge_vectors(batch).detach()
    centre, neighbour = batch[K.EDGE_INDEX]
    out, rots = [], []
    for i in range(len(types)):
        rows, nets = [], []
        for tj, s in enumerate(desc.sel):
            edges = [e for e in range(len(centre)) if centre[e] == i and types[neighbour[e]] == tj and vectors[e].norm() < desc.rcut]
            edges.sort(key=lambda e: float(vectors[e].norm()))
            for slot in range(s):
                if slot < len(edges):
                    v = vectors[edges[slot]]
                    r = v.norm()
                    sw = smooth_switch(r, desc.rcut_smth, desc.rcut) / r
                    row = torch.cat([sw.reshape(1), sw * v / r])
                else:
                    row = torch.zeros(4, dtype=torch.float64)
                row = (row - desc.davg[types[i]]) / desc.dstd[types[i]]
                rows.append(row)
                nets.append(tj if desc.type_one_side else int(types[i]) * desc.n_types + tj)
        rows = torch.stack(rows)
        g = torch.stack([desc.embeddings[n](rows[k, :1]) for k, n in enumerate(nets)])  # (Nc, M1)
        a = rows.T @ g / len(rows)  # (4, M1)
        out.append((a.T @ a[:, : desc.m2]).reshape(-1))
        rots.append(a[1:4].T)
    return torch.stack(out), torch.stack(rots)


@pytest.mark.parametrize("type_one_side", [True, False])
def test_descriptor_matches_spec_formula_with_padding(type_one_side):
    batch = T.random_batch(1, 8, seed=6)
    model = small_model(type_one_side=type_one_side)
    assert model.descriptor.davg[:, 0].abs().min() > 0  # padding enters as (-mu/sigma, 0, 0, 0) [COMPAT]
    d, rot = model.descriptor(batch, edge_vectors(batch))
    d_ref, rot_ref = _naive_descriptor(model, batch)
    assert d.shape == (8, 8 * 3) and rot.shape == (8, 8, 3)
    torch.testing.assert_close(d.detach(), d_ref.detach())
    torch.testing.assert_close(rot.detach(), rot_ref.detach())


def test_exclude_types_masks_the_pair():
    batch = T.random_batch(1, 10, seed=7)
    model = small_model(exclude_types=[[0, 1]])
    T.assert_excluded_pair_decoupled(model.descriptor, batch, min_change=1e-6)


def test_more_neighbours_than_sel_warns():
    batch = T.random_batch(1, 27, box=4.0, seed=8)
    model = small_model(sel=[2, 2])
    with pytest.warns(RuntimeWarning, match="more neighbours than sel"):
        model(batch)


def _water_batches(shared_data, systems, n_frames):
    from mlpot.data import AtomsDataset, collate, read_frames

    batches = []
    for system in systems:
        frames = read_frames(shared_data(f"deepmd_water/{system}"), type_map=["O", "H"])
        dataset = AtomsDataset(frames[:n_frames], 6.0)
        batches.append(collate([dataset[i] for i in range(len(dataset))]))
    return batches


def test_env_statistics_on_water(shared_data):
    model = build_model(WATER_SE_A)
    summary = model.compute_statistics(_water_batches(shared_data, ["data_0", "data_1", "data_3"], 10))
    davg, dstd = np.array(summary["descriptor"]["davg"]), np.array(summary["descriptor"]["dstd"])
    # DeePMD-kit 3.2.0 on 20 frames of data_0..2 (spec §2.2); frame samples differ: a few per cent
    np.testing.assert_allclose(davg[:, 0], [0.050349, 0.048121], rtol=0.01)
    np.testing.assert_allclose(dstd[:, 0], [0.139914, 0.123944], rtol=0.01)
    np.testing.assert_allclose(dstd[:, 1], [0.085850, 0.076763], rtol=0.01)
    assert np.all(davg[:, 1:] == 0) and np.all(dstd[:, 1:] == dstd[:, 1:2])
    # minimum-norm least-squares bias ∝ composition (64 O, 128 H) [COMPAT]
    bias = np.array(summary["fitting"]["bias_atom"])[:, 0]
    assert abs(bias[1] / bias[0] - 2.0) < 1e-9


def test_energy_bias_over_data_0_and_1_all_frames(shared_data):
    from mlpot.data import collate, read_frames

    model = build_model(WATER_SE_A)
    batches = [collate(list(read_frames(shared_data(f"deepmd_water/{s}"), type_map=["O", "H"]))) for s in ("data_0", "data_1")]
    summary = model.fitting.compute_output_statistics(batches)
    np.testing.assert_allclose(np.array(summary["bias_atom"])[:, 0], [-93.57366, -187.14733], atol=2e-5)


def test_undirected_pair_key_pairs_each_edge_with_its_reverse():
    from mlpot.models.deepmd.descriptors.env import undirected_pair_key

    batch = T.random_batch(1, 5, box=3.0, cutoff=4.0, seed=3)  # many periodic images, incl. self-images
    edges, shifts = batch[K.EDGE_INDEX], batch[K.EDGE_SHIFTS]
    keys = undirected_pair_key(edges, shifts)
    triples = {(int(i), int(j), tuple(int(x) for x in s)): int(k) for i, j, s, k in zip(edges[0], edges[1], shifts.round(), keys)}
    for (i, j, s), k in triples.items():
        assert triples[(j, i, tuple(-x for x in s))] == k
    assert len(set(keys.tolist())) == len(keys) // 2  # each unordered pair exactly twice


@pytest.mark.parametrize("type_one_side", [True, False])
def test_fast_embedding_equals_dense_evaluation_over_all_slots(type_one_side):
    batch = T.random_batch(2, [9, 8], seed=12)
    model = small_model(type_one_side=type_one_side)
    fast = compute_derivatives(model, batch, virial=True)
    model.descriptor.skip_padding = False
    dense = compute_derivatives(model, batch, virial=True)
    for key in (K.ENERGY, K.ATOM_ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(fast[key], dense[key], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("descriptor_type", ["se_e2_a", "se_e2_r"])
def test_fast_embedding_handles_a_type_section_with_no_neighbours(descriptor_type):
    """A frame with atoms of type 0 only: the type-1 section is all padding, kept as 0 columns."""
    batch = T.random_batch(2, [9, 8], seed=12)
    batch[K.ATOM_TYPES] = torch.zeros_like(batch[K.ATOM_TYPES])
    config = small_config("float64")
    config["descriptor"]["type"] = descriptor_type
    config["descriptor"].pop("axis_neuron", None)
    model = build_model(config)
    model.compute_statistics([T.random_batch(2, 8, seed=5)])
    _, nlist, bounds = model.descriptor.compact_environment(batch, edge_vectors(batch))
    assert bounds[1][1] == bounds[1][0] and nlist.shape[1] < model.descriptor.n_slots
    fast = compute_derivatives(model, batch, virial=True)
    model.descriptor.skip_padding = False
    dense = compute_derivatives(model, batch, virial=True)
    for key in (K.ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(fast[key], dense[key], atol=1e-10, rtol=1e-10)


def tebd_model(dtype=torch.float64, type_one_side=True):
    config = small_config("float64" if dtype == torch.float64 else "float32", type_one_side=type_one_side)
    config["type_embedding"] = {"neuron": [2, 4], "seed": 7,
                                "precision": "float64" if dtype == torch.float64 else "float32"}
    model = build_model(config)
    model.compute_statistics([T.random_batch(2, 8, seed=5)])
    return model


@pytest.mark.parametrize("type_one_side", [True, False])
def test_type_embedding_model_physics(dtype, type_one_side):
    """TF-style model/type_embedding: one shared embedding net and one fitting net."""
    model = tebd_model(dtype, type_one_side)
    assert len(model.descriptor.embeddings) == 1 and len(model.fitting.nets) == 1
    assert model.descriptor.dim_out == 8 * 3 + 4  # M1 * M2 + tebd_dim (the fitting reads tebd(t_i))
    batch = T.random_batch(2, [9, 8], seed=12)
    if dtype == torch.float64:
        T.assert_forces_match_fd(model, batch)
        T.assert_virial_matches_finite_strain(model, batch)
    T.assert_invariant(model, batch, **tolerances(dtype))
    T.assert_batch_consistent(model, batch, **tolerances(dtype))
    fast = compute_derivatives(model, batch)
    model.descriptor.skip_padding = False
    dense = compute_derivatives(model, batch)
    torch.testing.assert_close(fast[K.FORCES], dense[K.FORCES], **tolerances(dtype))


def test_type_embedding_descriptor_formula_on_a_dimer():
    """A = (1/N_c) sum over all slots of R~^T N([s~, tebd(t_j)]), padded slots keeping their section's type."""
    model = tebd_model(type_one_side=True)
    desc = model.descriptor
    batch = T.random_batch(1, 2, periodic=False, box=2.0, seed=9)
    vectors = edge_vectors(batch)
    d, _ = desc(batch, vectors)
    table = desc.type_embedding.table()
    net = desc.embeddings[0]
    types = batch[K.ATOM_TYPES]
    r = vectors[0].norm()
    for i in range(2):
        ti, tj = int(types[i]), int(types[1 - i])
        vector = vectors[int(torch.nonzero(batch[K.EDGE_INDEX][0] == i)[0])]
        real = torch.cat([(smooth_switch(r, 1.0, 3.5) / r).reshape(1), smooth_switch(r, 1.0, 3.5) / r * vector / r])
        real = (real - desc.davg[ti]) / desc.dstd[ti]
        pad = -desc.davg[ti] / desc.dstd[ti]
        a = torch.zeros(4, 8, dtype=torch.float64)
        for t in range(2):
            g_real = net(torch.cat([real[:1], table[t]]).unsqueeze(0))[0]
            g_pad = net(torch.cat([pad[:1], table[t]]).unsqueeze(0))[0]
            n_real = 1 if t == tj else 0
            a = a + n_real * torch.outer(real, g_real) + (desc.sel[t] - n_real) * torch.outer(pad, g_pad)
        a = a / desc.n_slots
        expected = torch.cat([(a.T @ a[:, :3]).reshape(-1), table[ti]])
        torch.testing.assert_close(d[i], expected, atol=1e-12, rtol=1e-10)


def test_type_embedding_errors():
    from mlpot.errors import ConfigError

    config = small_config()
    config["type_embedding"] = {"neuron": [4], "neurons": [4]}
    with pytest.raises(ConfigError, match="model/type_embedding"):
        build_model(config)
    config["type_embedding"] = {"neuron": [4]}
    config["descriptor"] = {"type": "se_e3", "sel": [4, 4], "rcut": 3.0, "neuron": [4]}
    with pytest.raises(ConfigError, match="not supported yet: model/type_embedding"):
        build_model(config)


@pytest.mark.parametrize("with_type_embedding", [False, True])
def test_untrained_model_starts_at_the_label_mean_energy(shared_data, with_type_embedding):
    """After the statistics the fitting nets are centred per type: over the sample, the mean model
    energy equals the mean label energy (water frames share one composition), where DeePMD-kit's
    N(0, 1) output bias would leave ~1 eV/atom."""
    from mlpot.data import AtomsDataset, collate, read_frames

    config = small_config()
    if with_type_embedding:
        config["type_embedding"] = {"neuron": [4], "seed": 3}
    config["type_map"] = ["O", "H"]
    config["descriptor"].update(sel=[46, 92], rcut=6.0, rcut_smth=0.5)
    frames = read_frames(shared_data("deepmd_water/data_0"), type_map=["O", "H"])
    dataset = AtomsDataset(frames[:6], 6.0)
    batches = [collate([dataset[i]]) for i in range(6)]
    model = build_model(config)
    model.compute_statistics(batches)
    with torch.no_grad():
        errors = torch.stack([(model(b)[K.ENERGY] - b[K.ENERGY])[0] for b in batches]) / 192
    assert abs(float(errors.mean())) < 1e-9
    assert float(errors.abs().max()) < 0.05  # per-frame spread of an untrained net, eV/atom


def test_fitting_on_atoms_in_type_order_equals_the_gathered_groups(monkeypatch):
    """In eval mode, atoms in type order take contiguous groups (split / cat) in the fitting; the
    same frame in another order, or in train mode, takes the gathers: same energies, per-atom
    energies, forces (inference and with a graph of them) and virial, to rounding."""
    import mlpot.models.deepmd.fitting as fitting

    batch = T.random_batch(1, 12, seed=3)
    types = batch[K.ATOM_TYPES]
    assert not bool((types[1:] >= types[:-1]).all()) and len(set(types.tolist())) == 2
    ordered, perm = T.permute_batch(batch, perm=torch.argsort(types, stable=True))
    model = small_model(type_one_side=False).eval()
    groups = []
    monkeypatch.setattr(fitting, "_group_by_type", lambda *a: groups.append(1) or _group(*a))
    reference = compute_derivatives(model, batch, forces=True, virial=True)
    assert len(groups) == 1  # the gathered path
    for create_graph in (False, True):
        out = compute_derivatives(model, ordered, forces=True, virial=True, create_graph=create_graph)
        assert len(groups) == 1  # the contiguous path
        torch.testing.assert_close(out[K.ENERGY], reference[K.ENERGY], rtol=1e-13, atol=0)
        torch.testing.assert_close(out[K.ATOM_ENERGY], reference[K.ATOM_ENERGY][perm], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(out[K.FORCES], reference[K.FORCES][perm], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(out[K.VIRIAL], reference[K.VIRIAL], rtol=1e-10, atol=1e-13)
    assert reference[K.FORCES].abs().max() > 1e-3
    T.assert_forces_match_fd(model, ordered, atol=1e-7, rtol=1e-5)
    model.train()  # training: every net gets its parameter gradient, through the gathers
    torch.testing.assert_close(compute_derivatives(model, ordered)[K.FORCES], reference[K.FORCES][perm],
                               rtol=1e-10, atol=1e-13)
    assert len(groups) == 2


def _group(types, n_types):
    return [torch.nonzero(types == t).squeeze(1) for t in range(n_types)]


@pytest.mark.parametrize("types", [[1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 1], []])
def test_fitting_net_outputs_are_the_per_type_nets(types):
    """net_outputs on sorted types (one type absent too), unsorted types and no atoms: row i is the
    net of type t_i at row i of the inputs."""
    fitting = small_model().fitting.eval()
    types = torch.tensor(types, dtype=torch.long)
    inputs = torch.randn(len(types), fitting.nets[0].layers[0].weight.shape[0], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))
    out = fitting.net_outputs(inputs, types)
    assert out.shape == (len(types), 1)
    for i, t in enumerate(types.tolist()):
        torch.testing.assert_close(out[i], fitting.nets[t](inputs[i:i + 1])[0], rtol=1e-14, atol=1e-15)
