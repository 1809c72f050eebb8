"""se_e3_tebd, se_a_ebd_v2 (+ the other descriptors of issue #17): physics checks and their formulas.

se_e3_tebd is also checked against DeePMD-kit's own numbers (tests/test_deepmd_files.py, files made
by DeePMD-kit 3.2); the TF-only descriptors are checked here against loops written from the formulas.
"""

import json

import numpy as np
import pytest
import torch

from mlpot import testing as T
from mlpot.cli import main
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.base import edge_vectors

TYPE_EMBEDDING = {"neuron": [3], "seed": 4}  # model/type_embedding of the se_a_ebd_v2 cases
CASES = {
    "se_e3_tebd": {"type": "se_e3_tebd", "sel": 16, "neuron": [4, 8], "tebd_dim": 3, "set_davg_zero": False},
    "se_e3_tebd_strip": {"type": "se_e3_tebd", "sel": 16, "neuron": [4, 8], "tebd_dim": 3, "tebd_input_mode": "strip"},
    "se_a_ebd_v2": {"type": "se_a_ebd_v2", "sel": [12, 12], "neuron": [4, 8], "axis_neuron": 2},
    "se_a_ebd_v2_one_side": {"type": "se_a_tpe_v2", "sel": [12, 12], "neuron": [4, 8], "axis_neuron": 2,
                             "type_one_side": True},
    "se_a_tpe": {"type": "se_a_tpe", "sel": [12, 12], "neuron": [4, 8], "axis_neuron": 2, "type_nchanl": 3},
    "se_a_tpe_one_side": {"type": "se_a_ebd", "sel": [12, 12], "neuron": [4, 8], "axis_neuron": 2, "type_nlayer": 1,
                          "type_one_side": True},
}


def small_model(case, dtype=torch.float64, batch=None, **extra):
    precision = "float64" if dtype == torch.float64 else "float32"
    section = {"rcut": 3.5, "rcut_smth": 1.0, "seed": 1, "precision": precision, **CASES[case], **extra}
    config = {"type_map": ["A", "B"], "descriptor": section, "fitting_net": {"neuron": [8, 8], "seed": 2, "precision": precision}}
    if case == "se_a_ebd_v2_one_side":
        config["type_embedding"] = dict(TYPE_EMBEDDING, precision=precision)
    model = build_model(config)
    model.compute_statistics([batch if batch is not None else T.random_batch(2, 8, seed=5, dtype=dtype)])
    with torch.no_grad():  # the biases of the type-pair nets start near 0: move them so they matter
        for name, parameter in model.named_parameters():
            if "type_pair_embedding" in name or "type_embedding" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def tolerances(dtype):
    return dict(atol=1e-7, rtol=1e-6) if dtype == torch.float64 else dict(atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("case", sorted(CASES))
def test_forces_virial_invariance_and_batches(case, dtype):
    batch = T.random_batch(2, [8, 7], seed=1, dtype=dtype)
    model = small_model(case, dtype)
    T.assert_derivatives_match_fd(model, batch, dtype)
    batch = T.random_batch(3, [8, 6, 7], seed=3, dtype=dtype)
    T.assert_invariant(model, batch, **tolerances(dtype))
    T.assert_batch_consistent(model, batch, **tolerances(dtype))


def _edges_of(batch, vectors, i, rcut):
    """Edge indices of centre i within rcut, nearest first."""
    centre = batch[K.EDGE_INDEX][0]
    edges = [e for e in range(len(centre)) if centre[e] == i and vectors[e].norm() < rcut]
    return sorted(edges, key=lambda e: float(vectors[e].norm()))


def _normalised_row(desc, vector, centre_type):
    from mlpot.nn import smooth_switch

    r = vector.norm()
    s = smooth_switch(r, desc.rcut_smth, desc.rcut) / r
    raw = torch.cat([s.reshape(1), s * vector / r])
    return (raw - desc.davg[centre_type]) / desc.dstd[centre_type]


def _naive_se_e3_tebd(model, batch):
    """D_i of se_e3_tebd by loops over atoms and neighbour pairs (module docstring of se_e3_tebd)."""
    from mlpot.nn import smooth_switch

    desc, types = model.descriptor, batch[K.ATOM_TYPES]
    vectors, neighbour = edge_vectors(batch).detach(), batch[K.EDGE_INDEX][1]
    table = desc.type_embedding.table()
    out = []
    for i in range(len(types)):
        edges = _edges_of(batch, vectors, i, desc.rcut)[: desc.sel[0]]
        rows = [_normalised_row(desc, vectors[e], types[i])[1:] for e in edges]
        tebd = [table[types[neighbour[e]]] for e in edges]
        sw = [smooth_switch(vectors[e].norm(), desc.rcut_smth, desc.rcut) for e in edges]
        d = torch.zeros(desc.m1, dtype=torch.float64)
        for j in range(len(edges)):
            for k in range(len(edges)):
                theta = (rows[j] * rows[k]).sum().reshape(1)
                if desc.tebd_input_mode == "concat":
                    g = desc.embedding(torch.cat([theta, tebd[j], tebd[k]]))
                else:
                    g_t = desc.type_pair_embedding(torch.cat([tebd[j], tebd[k]])) * sw[j] * sw[k]
                    g = desc.embedding(theta) * (1 + g_t)
                d = d + theta * g
        out.append(torch.cat([d / desc.sel[0] ** 2, table[types[i]]]))
    return torch.stack(out)


def _ebd_v2_embedding(desc, s, tj, ti):
    """se_a_ebd_v2: G = N_s(s~)(1 + N_t(tebd(t_j)[, tebd(t_i)])); padded slots have tj = n_types (zero row)."""
    table = desc.type_embedding.table()
    pair = table[tj] if desc.type_one_side else torch.cat([table[tj], table[ti]])
    return desc.embeddings[0](s) * (1 + desc.type_pair_embedding(pair))


def _tpe_embedding(desc, s, tj, ti):
    """se_a_tpe: G[m] = mean_ab L(N(s~))[m, a, b] T(t_i)[a] T(t_j)[b] (one side: mean_a L[m, a] T(t_j)[a]),
    T(t) = linear(tanh(... tanh(t / n_types ...))) written out from the layer weights."""
    def embed(t):
        x = torch.tensor([t / desc.n_types], dtype=torch.float64)
        for layer in desc.type_layers:
            x = x @ layer.weight + layer.bias
            x = x if layer is desc.type_layers[-1] else torch.tanh(x)
        return x

    amplified = desc.amplify(desc.embeddings[0](s))
    channels = desc.channels
    if desc.type_one_side:
        return (amplified.view(desc.m1, channels) * embed(tj)).mean(1)
    return (amplified.view(desc.m1, channels, channels) * embed(ti)[:, None] * embed(tj)[None, :]).mean((1, 2))


def _naive_se_a_typed(model, batch):
    """D_i of se_a_ebd_v2 / se_a_tpe by loops: A = R~^T G / N_c over all sum(sel) slots (padded
    slots: the row -davg/dstd; se_a_ebd_v2 gives them the padding type, se_a_tpe their section's),
    D = A^T A[:, :M2], with tebd(t_i) appended for se_a_ebd_v2."""
    desc, types = model.descriptor, batch[K.ATOM_TYPES]
    vectors, neighbour = edge_vectors(batch).detach(), batch[K.EDGE_INDEX][1]
    ebd_v2 = desc.type_embedding is not None
    embedding = _ebd_v2_embedding if ebd_v2 else _tpe_embedding
    out = []
    for i in range(len(types)):
        a_matrix = torch.zeros(4, desc.m1, dtype=torch.float64)
        for tj, sel in enumerate(desc.sel):
            edges = [e for e in _edges_of(batch, vectors, i, desc.rcut) if types[neighbour[e]] == tj][:sel]
            for slot in range(sel):
                if slot < len(edges):
                    row, t_slot = _normalised_row(desc, vectors[edges[slot]], types[i]), tj
                else:  # padding
                    row, t_slot = -desc.davg[types[i]] / desc.dstd[types[i]], desc.n_types if ebd_v2 else tj
                g = embedding(desc, row[:1], t_slot, int(types[i]))
                a_matrix = a_matrix + row.unsqueeze(1) * g.unsqueeze(0)
        a_matrix = a_matrix / sum(desc.sel)
        d = (a_matrix.T @ a_matrix[:, : desc.m2]).reshape(-1)
        out.append(torch.cat([d, desc.type_embedding.table()[types[i]]]) if ebd_v2 else d)
    return torch.stack(out)


@pytest.mark.filterwarnings("ignore:more neighbours than sel")  # small sel truncates: the loops do too
@pytest.mark.parametrize("case", sorted(CASES))
def test_descriptor_matches_the_formula(case):
    batch = T.random_batch(1, 7, seed=6)
    model = small_model(case, sel=5 if case.startswith("se_e3") else [3, 3])
    d, _ = model.descriptor(batch, edge_vectors(batch))
    naive = _naive_se_e3_tebd if case.startswith("se_e3") else _naive_se_a_typed
    expected = naive(model, batch).detach()
    assert d.shape == expected.shape
    torch.testing.assert_close(d.detach(), expected, atol=1e-12, rtol=1e-10)
    if not case.startswith("se_e3"):  # the padded slots in closed form == DeePMD-kit's dense evaluation
        model.descriptor.skip_padding = False
        torch.testing.assert_close(model.descriptor(batch, edge_vectors(batch))[0].detach(), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("one_side", [False, True])
def test_se_a_ebd_v2_is_dpa1_without_attention_when_davg_is_zero(one_side):
    """With set_davg_zero, padded slots add nothing in either model, so se_a_ebd_v2 (sel [8, 8]) with
    the weights of a se_atten (DPA-1: attn_layer 0, strip, not smooth, sel 16) gives its descriptor:
    DeePMD-kit's PT DPA-1, which mlpot reproduces to 1e-14 (test_deepmd_files.py), is the same model."""
    common = {"rcut": 3.5, "rcut_smth": 1.0, "neuron": [4, 8], "axis_neuron": 2, "seed": 1, "set_davg_zero": True,
              "type_one_side": one_side}
    ebd = build_model({"type_map": ["A", "B"], "descriptor": {"type": "se_a_ebd_v2", "sel": [12, 12], **common},
                       "fitting_net": {"neuron": [4]}}).descriptor
    atten = build_model({"type_map": ["A", "B"], "descriptor": {
        "type": "se_atten", "sel": 24, "attn_layer": 0, "tebd_dim": 8, "tebd_input_mode": "strip",
        "smooth_type_embedding": False, **common}, "fitting_net": {"neuron": [4]}}).descriptor
    batch = T.random_batch(2, [8, 7], seed=4)
    ebd.compute_statistics([(batch, edge_vectors(batch))])
    with torch.no_grad():
        atten.dstd.copy_(ebd.dstd)
        for target, source in ((atten.type_embedding, ebd.type_embedding), (atten.embedding, ebd.embeddings[0]),
                               (atten.type_pair_embedding, ebd.type_pair_embedding)):
            for parameter in source.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
            target.load_state_dict(source.state_dict())
    expected, _ = atten(batch, edge_vectors(batch))
    torch.testing.assert_close(ebd(batch, edge_vectors(batch))[0], expected, atol=1e-13, rtol=1e-11)


def test_se_e3_tebd_smooth_at_the_cutoff_and_excluded_pairs():
    """strip + smooth (and concat with davg 0): an atom crossing rcut changes nothing abruptly."""
    for case, extra in (("se_e3_tebd_strip", {}), ("se_e3_tebd", {"set_davg_zero": True})):
        model = small_model(case, **extra)
        energies = []
        for distance in (3.5 - 1e-7, 3.5 + 1e-7, 3.9):
            # atom 1 is within rcut of atom 0 only
            positions = np.array([[0.0, 0, 0], [distance, 0, 0], [-1.2, 0.5, 0.3], [-0.3, -1.1, 0.4]])
            frame = {K.POSITIONS: positions, K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool),
                     K.ATOM_TYPES: np.array([0, 1, 1, 0])}
            from mlpot.data import AtomsDataset, collate

            energies.append(model(collate([AtomsDataset([frame], 4.0)[0]]))[K.ENERGY].item())
        assert abs(energies[0] - energies[2]) < 1e-10 and abs(energies[1] - energies[2]) < 1e-12, (case, energies)
    batch = T.random_batch(1, 10, seed=7)
    T.assert_excluded_pair_decoupled(small_model("se_e3_tebd_strip", exclude_types=[[0, 1]]).descriptor, batch)


def test_keys_and_errors():
    model = small_model("se_a_ebd_v2")
    # without model/type_embedding: DeePMD-kit's default, one linear layer of width 8
    assert model.descriptor.type_embedding.dim_out == 8 and model.fitting.mixed_types
    assert model.descriptor.dim_out == 8 * 2 + 8
    with pytest.raises(ConfigError, match="tebd_input_mode"):
        small_model("se_a_ebd_v2", tebd_input_mode="concat")
    with pytest.raises(ConfigError, match="tebd_input_mode"):
        small_model("se_e3_tebd", tebd_input_mode="mixed")
    with pytest.raises(ConfigError, match=r"model/type_map: use_econf_tebd needs element symbols as types; not "
                       r"elements: \['A'\]"):
        small_model("se_e3_tebd", use_econf_tebd=True)  # types A, B: A is no element (B is boron)
    assert small_model("se_e3_tebd", concat_output_tebd=False).descriptor.dim_out == 8


WATER_DESCRIPTORS = {
    "se_e3_tebd": {"type": "se_e3_tebd", "sel": 16, "rcut": 3.0, "neuron": [4, 8], "tebd_dim": 4,
                   "tebd_input_mode": "strip"},
    "se_a_ebd_v2": {"type": "se_a_ebd_v2", "sel": [8, 16], "rcut": 3.0, "neuron": [4, 8], "axis_neuron": 4},
    "se_a_tpe": {"type": "se_a_tpe", "sel": [8, 16], "rcut": 3.0, "neuron": [4, 8], "axis_neuron": 4},
}


def train_freeze_test(folder, model, data, batch_size=1, n_test=1):
    """``model`` (a DeePMD-kit model section) trained 3 steps on ``data`` through ``mlpot train
    input.json``, frozen and tested in ``folder`` (the working directory); ``dp test``'s forces
    (n_test * n_atoms, 6) are returned, with the Force RMSE line printed."""
    config = {
        "model": model,
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 2},
        "loss": {"type": "ener", "start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100, "limit_pref_f": 1},
        "training": {"training_data": {"systems": [data], "batch_size": batch_size}, "numb_steps": 3,
                     "disp_freq": 1, "save_freq": 3, "seed": 1},
    }
    (folder / "input.json").write_text(json.dumps(config))
    assert main(["train", "input.json", "--no-progress"]) == 0
    assert main(["freeze", "-o", "frozen.pth"]) == 0
    assert main(["test", "-m", "frozen.pth", "-s", data, "-n", str(n_test), "-d", "detail"]) == 0
    return np.loadtxt(folder / "detail.f.out")


@pytest.mark.parametrize("name", sorted(WATER_DESCRIPTORS))
def test_deepmd_input_trains_freezes_and_tests(name, tmp_path, shared_data, monkeypatch, capsys):
    """A DeePMD-kit input.json with the descriptor: mlpot train (3 steps), freeze, test."""
    monkeypatch.chdir(tmp_path)
    model = {"type_map": ["O", "H"], "descriptor": dict(WATER_DESCRIPTORS[name], rcut_smth=0.5, seed=1),
             "fitting_net": {"neuron": [8], "seed": 1}}
    forces = train_freeze_test(tmp_path, model, str(shared_data("deepmd_water/data_3")))
    assert forces.shape == (192, 6) and np.isfinite(forces).all() and np.abs(forces[:, 3:]).max() > 0
    assert "Force  RMSE" in capsys.readouterr().out


# ---- se_a_mask -------------------------------------------------------------------------------
def mask_model(dtype=torch.float64, **extra):
    precision = "float64" if dtype == torch.float64 else "float32"
    section = {"type": "se_a_mask", "sel": [6, 6], "neuron": [4, 8], "axis_neuron": 2, "seed": 1,
               "precision": precision, **extra}
    model = build_model({"type_map": ["A", "B"], "descriptor": section,
                         "fitting_net": {"neuron": [8, 8], "seed": 2, "precision": precision, "numb_aparam": 1,
                                         "use_aparam_as_mask": True}})
    batch = masked_batch(2, [7, 6], seed=5, dtype=dtype)
    model.compute_statistics([batch])
    return model


def masked_batch(n_frames, n_atoms, seed, dtype=torch.float64, mask=None):
    """Non-periodic random frames with aparam: the given mask (n_atoms_total,) or 1 except every 4th atom."""
    batch = T.random_batch(n_frames, n_atoms, seed=seed, dtype=dtype, periodic=False, box=4.0, cutoff=1001.0)
    n = batch[K.POSITIONS].shape[0]
    if mask is None:
        mask = torch.ones(n)
        mask[::4] = 0
    batch[K.APARAM] = torch.as_tensor(mask, dtype=dtype).reshape(n, 1)
    return batch


def test_se_a_mask_forces_invariance_and_batches(dtype):
    model = mask_model(dtype)
    batch = masked_batch(2, [7, 6], seed=1, dtype=dtype)
    if dtype == torch.float64:
        T.assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-5)
    else:
        T.assert_forces_match_fd(model, batch, delta=2e-3, atol=5e-3, rtol=5e-2, atoms=[0, 3, 9])
    batch = masked_batch(3, [7, 6, 5], seed=3, dtype=dtype)
    T.assert_invariant(model, batch, **tolerances(dtype))
    T.assert_batch_consistent(model, batch, **tolerances(dtype))


def test_se_a_mask_virtual_atoms_change_nothing():
    """A frame with masked atoms (aparam 0) = the frame without them: energy, forces on the real
    atoms; the masked atoms get zero force and zero energy wherever they are."""
    from mlpot.models.derivatives import compute_derivatives

    model = mask_model()
    full = masked_batch(1, 9, seed=8, mask=[1, 0, 1, 1, 0, 1, 1, 1, 0])
    real = torch.tensor([0, 2, 3, 5, 6, 7])
    frame = {K.POSITIONS: full[K.POSITIONS][real].numpy(), K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool),
             K.ATOM_TYPES: full[K.ATOM_TYPES][real].numpy()}
    from mlpot.data import AtomsDataset, collate

    alone = collate([AtomsDataset([frame], 1001.0)[0]])
    alone[K.APARAM] = torch.ones(6, 1, dtype=torch.float64)
    out_full, out_alone = compute_derivatives(model, full), compute_derivatives(model, alone)
    torch.testing.assert_close(out_full[K.ENERGY], out_alone[K.ENERGY], atol=1e-12, rtol=0)
    torch.testing.assert_close(out_full[K.FORCES][real], out_alone[K.FORCES], atol=1e-12, rtol=0)
    assert out_full[K.FORCES][[1, 4, 8]].abs().max() == 0 and out_full[K.ATOM_ENERGY][[1, 4, 8]].abs().max() == 0
    moved = dict(full)
    moved[K.POSITIONS] = full[K.POSITIONS].clone()
    moved[K.POSITIONS][4] += torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)  # a virtual atom moves
    torch.testing.assert_close(model(moved)[K.ENERGY], out_full[K.ENERGY].detach(), atol=1e-12, rtol=0)


def test_se_a_mask_matches_the_formula():
    """A_i = Σ_j R_ijᵀ G(1/r_ij) / Σsel over the real neighbours j, R = (1/r, x/r², y/r², z/r²), no switch."""
    model = mask_model()
    batch = masked_batch(1, 8, seed=9)
    desc, types = model.descriptor, batch[K.ATOM_TYPES]
    real = batch[K.APARAM][:, 0] != 0
    positions = batch[K.POSITIONS]
    d, _ = desc(batch, edge_vectors(batch))
    for i in range(len(types)):
        a_matrix = torch.zeros(4, desc.m1, dtype=torch.float64)
        for j in range(len(types)):
            if j == i or not (real[i] and real[j]):
                continue
            v = positions[j] - positions[i]
            r = v.norm()
            row = torch.cat([(1 / r).reshape(1), v / r**2])
            g = desc.embeddings[desc._net_index(int(types[i]), int(types[j]))](row[:1])
            a_matrix = a_matrix + row.unsqueeze(1) * g.unsqueeze(0)
        a_matrix = a_matrix / sum(desc.sel)
        expected = (a_matrix.T @ a_matrix[:, : desc.m2]).reshape(-1)
        torch.testing.assert_close(d[i].detach(), expected.detach(), atol=1e-12, rtol=1e-10)


def test_se_a_mask_errors():
    with pytest.raises(ConfigError, match="use_aparam_as_mask"):
        build_model({"type_map": ["A"], "descriptor": {"type": "se_a_mask", "sel": [4]}, "fitting_net": {"neuron": [4]}})
    with pytest.raises(ConfigError, match="numb_aparam = 1"):
        build_model({"type_map": ["A"], "descriptor": {"type": "se_a_mask", "sel": [4]},
                     "fitting_net": {"neuron": [4], "use_aparam_as_mask": True}})
    with pytest.raises(ConfigError, match="rcut"):  # DeePMD-kit's se_a_mask has no cutoff key
        build_model({"type_map": ["A"], "descriptor": {"type": "se_a_mask", "sel": [4], "rcut": 6.0},
                     "fitting_net": {"neuron": [4], "numb_aparam": 1, "use_aparam_as_mask": True}})
    from mlpot.errors import DataError

    periodic = T.random_batch(1, 5, seed=1)
    periodic[K.APARAM] = torch.ones(5, 1, dtype=torch.float64)
    with pytest.raises(DataError, match="non-periodic"):
        mask_model()(periodic)


def _padded_system(source, folder, n_frames=4, n_virtual=2):
    """A deepmd/npy copy of ``n_frames`` frames of a non-periodic system with ``n_virtual`` extra
    virtual H atoms (aparam 0, zero force) placed 3 Å beyond the molecule: se_a_mask's data layout."""
    types = np.loadtxt(source / "type.raw", dtype=int).tolist() + [1] * n_virtual
    coord = np.load(source / "set.000" / "coord.npy")[:n_frames].reshape(n_frames, -1, 3)
    force = np.load(source / "set.000" / "force.npy")[:n_frames].reshape(n_frames, -1, 3)
    far = coord.max(axis=1, keepdims=True) + 3.0 + np.arange(n_virtual).reshape(1, -1, 1)
    (folder / "set.000").mkdir(parents=True)
    (folder / "nopbc").write_text("")
    (folder / "type.raw").write_text("\n".join(map(str, types)) + "\n")
    (folder / "type_map.raw").write_text((source / "type_map.raw").read_text())
    np.save(folder / "set.000" / "coord.npy", np.concatenate([coord, np.broadcast_to(far, (n_frames, n_virtual, 3))], 1).reshape(n_frames, -1))
    np.save(folder / "set.000" / "force.npy", np.concatenate([force, np.zeros((n_frames, n_virtual, 3))], 1).reshape(n_frames, -1))
    np.save(folder / "set.000" / "energy.npy", np.load(source / "set.000" / "energy.npy")[:n_frames])
    np.save(folder / "set.000" / "aparam.npy", np.array([[1.0] * (len(types) - n_virtual) + [0.0] * n_virtual] * n_frames))
    return str(folder)


def test_se_a_mask_input_trains_freezes_and_tests(tmp_path, shared_data, monkeypatch, capsys):
    """DeePMD-kit's zinc_protein se_a_mask layout (the mask is aparam) on a molecule padded with
    virtual atoms: mlpot train (3 steps), freeze, test."""
    data = _padded_system(shared_data("deepmd_nopbc/C1H4O2"), tmp_path / "padded")
    monkeypatch.chdir(tmp_path)
    model = {"type_map": ["C", "H", "O"],
             "descriptor": {"type": "se_a_mask", "sel": [1, 6, 2], "neuron": [4, 8], "axis_neuron": 4,
                            "resnet_dt": True, "seed": 1},
             "fitting_net": {"neuron": [8], "resnet_dt": True, "seed": 1, "numb_aparam": 1, "use_aparam_as_mask": True}}
    forces = train_freeze_test(tmp_path, model, data, batch_size=2, n_test=2).reshape(2, 9, 6)
    assert np.abs(forces[:, 7:, 3:]).max() == 0 and np.abs(forces[:, :7, 3:]).max() > 0  # virtual atoms: no force
    assert "Force  RMSE" in capsys.readouterr().out


def test_all_pairs_neighbour_list_equals_vesin():
    from vesin import NeighborList

    from mlpot.data.neighbors import neighbor_list

    positions = np.random.default_rng(0).uniform(0, 5, (9, 3))
    edge_index, shifts = neighbor_list(positions, np.zeros((3, 3)), False, 1001.0)  # all pairs, no vesin
    i, j = NeighborList(cutoff=20.0, full_list=True).compute(positions, np.zeros((3, 3)), False, quantities="ij")
    assert sorted(zip(i.tolist(), j.tolist())) == list(zip(*edge_index.tolist())) and not shifts.any()


# ---- loc_frame -------------------------------------------------------------------------------
LOC_FRAME = {"type": "loc_frame", "sel_a": [4, 6], "sel_r": [16, 20], "rcut": 4.0,
             "axis_rule": [0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0]}  # DeePMD-kit's water rule (O: two H; H: O, H)


def loc_frame_model(dtype=torch.float64, **extra):
    model = build_model({"type_map": ["O", "H"], "descriptor": {**LOC_FRAME, **extra},
                         "fitting_net": {"neuron": [8, 8], "seed": 2}}, dtype=dtype)
    model.compute_statistics([loc_frame_batch(2, seed=5, dtype=dtype)])
    return model


def loc_frame_batch(n_frames, seed, dtype=torch.float64, sizes=(16, 14, 15)):
    return T.random_batch(n_frames, list(sizes[:n_frames]), seed=seed, cutoff=4.0, box=6.0, dtype=dtype)


def test_loc_frame_forces_virial_invariance_and_batches():
    """float64; small steps (1e-5 Å, strain 1e-6): the descriptor is not smooth (hard cutoff, ranks)."""
    model = loc_frame_model()
    batch = loc_frame_batch(2, seed=1)
    T.assert_forces_match_fd(model, batch, delta=1e-5, atol=1e-7, rtol=1e-5)
    T.assert_virial_matches_finite_strain(model, batch, delta=1e-6, atol=1e-6, rtol=1e-5)
    batch = loc_frame_batch(3, seed=3)
    T.assert_invariant(model, batch, atol=1e-7, rtol=1e-6)
    T.assert_batch_consistent(model, batch, atol=1e-7, rtol=1e-6)


def test_loc_frame_float32_follows_float64():
    """The same weights in float32 give the float64 energies, forces and virials (finite differences
    in float32 need steps that cross the hard cutoff)."""
    from mlpot.models.derivatives import compute_derivatives

    model64 = loc_frame_model()
    model32 = build_model(model64.config, dtype=torch.float32)
    model32.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                             for k, v in model64.state_dict().items()})
    batch = loc_frame_batch(2, seed=2)
    out64 = compute_derivatives(model64, batch, virial=True)
    out32 = compute_derivatives(model32, loc_frame_batch(2, seed=2, dtype=torch.float32), virial=True)
    for key in (K.ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(out32[key].detach().to(torch.float64), out64[key].detach(), atol=2e-3, rtol=1e-4)


def _naive_loc_frame(desc, batch):
    """The raw loc_frame descriptor by loops (module docstring of loc_frame)."""
    types, vectors = batch[K.ATOM_TYPES], edge_vectors(batch).detach()
    neighbour = batch[K.EDGE_INDEX][1]
    rows = []
    for i in range(len(types)):
        a_slots, r_slots = [], []
        for t in range(desc.n_types):
            edges = [e for e in _edges_of(batch, vectors, i, desc.rcut) if types[neighbour[e]] == t]
            found = [vectors[e] for e in edges]
            a_slots += (found[: desc.sel_a[t]] + [None] * desc.sel_a[t])[: desc.sel_a[t]]
            r_slots += (found[desc.sel_a[t]:] + [None] * desc.sel_r[t])[: desc.sel_r[t]]
        rule = desc.config["axis_rule"][6 * int(types[i]): 6 * int(types[i]) + 6]

        def axis(klass, kind, index):
            sel = desc.sel_a if klass == 0 else desc.sel_r
            return (a_slots if klass == 0 else r_slots)[sum(sel[:kind]) + index]

        r1, r2 = axis(*rule[:3]), axis(*rule[3:])
        if abs(float(r1 @ r2 / (r1.norm() * r2.norm())) + 1) < 1e-4:
            r2 = axis(rule[3], rule[4], rule[5] + 1)
        e_x = r1 / r1.norm()
        e_y = r2 - (e_x @ r2) * e_x
        e_y = e_y / e_y.norm()
        rot = torch.stack([e_x, e_y, torch.linalg.cross(e_x, e_y)])
        row = []
        for v in a_slots:
            if v is None:
                row += [0.0] * 4
            else:
                x, y, z = (rot @ v).tolist()
                r2_len = float(v @ v)
                row += [r2_len ** -0.5, z / r2_len, x / r2_len, y / r2_len]
        row += [0.0 if v is None else float(v.norm()) ** -1 for v in r_slots]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def test_loc_frame_matches_the_formula_and_statistics():
    model = loc_frame_model()
    desc = model.descriptor
    batch = loc_frame_batch(1, seed=7)
    raw = desc.raw_descriptor(batch, edge_vectors(batch)).detach()
    torch.testing.assert_close(raw, _naive_loc_frame(desc, batch), atol=1e-12, rtol=1e-10)
    d, _ = desc(batch, edge_vectors(batch))
    torch.testing.assert_close(d.detach(), (raw - desc.davg[batch[K.ATOM_TYPES]]) / desc.dstd[batch[K.ATOM_TYPES]])
    # statistics: per type and column, mean and std (>= 1e-2) over the centre atoms
    desc.compute_statistics([(batch, edge_vectors(batch))])
    for t in range(2):
        of_type = raw[batch[K.ATOM_TYPES] == t]
        torch.testing.assert_close(desc.davg[t], of_type.mean(0))
        torch.testing.assert_close(desc.dstd[t], of_type.std(0, unbiased=False).clamp(min=1e-2))


def test_loc_frame_antiparallel_axis_atoms_use_the_backup():
    """A linear H-O-H: the two H axis atoms of O are antiparallel, so the third H defines e_y."""
    from mlpot.data import AtomsDataset, collate

    model = loc_frame_model()
    positions = np.array([[0.0, 0, 0], [1.0, 0, 0], [-1.0, 0, 0], [0.3, 1.2, 0.4], [2.0, 1.5, -0.5], [-1.5, 1.0, 1.5]])
    frame = {K.POSITIONS: positions, K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool),
             K.ATOM_TYPES: np.array([0, 1, 1, 1, 0, 0])}
    batch = collate([AtomsDataset([frame], 4.0)[0]])
    raw = model.descriptor.raw_descriptor(batch, edge_vectors(batch)).detach()
    torch.testing.assert_close(raw, _naive_loc_frame(model.descriptor, batch), atol=1e-12, rtol=1e-10)
    # e_y of atom 0 from atom 3 (the backup): its local y' of H atom 3 is positive, z' zero
    h3 = 4 * (model.descriptor.sel_a[0] + 2)  # a slot 2 of type H (nearest H atoms 1, 2, then 3)
    assert raw[0, h3 + 3] > 0 and abs(raw[0, h3 + 1]) < 1e-12


def test_loc_frame_errors():
    with pytest.raises(ConfigError, match="not supported yet.*negative type"):
        build_model({"type_map": ["O", "H"], "descriptor": {**LOC_FRAME, "axis_rule": [0, -1, 0, 0, 1, 1] * 2},
                     "fitting_net": {}})
    with pytest.raises(ConfigError, match="not in the a list"):
        build_model({"type_map": ["O", "H"], "descriptor": {**LOC_FRAME, "axis_rule": [0, 1, 0, 0, 1, 9] * 2},
                     "fitting_net": {}})
    with pytest.raises(ConfigError, match="rcut_smth"):  # not a loc_frame key
        build_model({"type_map": ["O", "H"], "descriptor": {**LOC_FRAME, "rcut_smth": 1.0}, "fitting_net": {}})
    from mlpot.data import AtomsDataset, collate
    from mlpot.errors import DataError

    lonely = {K.POSITIONS: np.array([[0.0, 0, 0], [1.0, 0, 0]]), K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool),
              K.ATOM_TYPES: np.array([0, 1])}  # O has one H: no second axis atom
    with pytest.raises(DataError, match="axis"):
        loc_frame_model()(collate([AtomsDataset([lonely], 4.0)[0]]))


def test_loc_frame_input_trains_freezes_and_tests(tmp_path, shared_data, monkeypatch, capsys):
    """DeePMD-kit's water loc_frame layout (smaller sel and rcut): mlpot train (3 steps), freeze, test."""
    monkeypatch.chdir(tmp_path)
    model = {"type_map": ["O", "H"],
             "descriptor": {"type": "loc_frame", "sel_a": [4, 8], "sel_r": [12, 20], "rcut": 4.0,
                            "axis_rule": [0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0]},
             "fitting_net": {"neuron": [8], "seed": 1}}
    forces = train_freeze_test(tmp_path, model, str(shared_data("deepmd_water/data_3")))
    assert forces.shape == (192, 6) and np.isfinite(forces).all() and np.abs(forces[:, 3:]).max() > 0
    assert "Force  RMSE" in capsys.readouterr().out


def test_se_e3_tebd_statistics_match_deepmd_kit(shared_data):
    """davg/dstd of the mixed-type environment (padded slots pooled as zeros) from all 80 frames of
    data_3 against those DeePMD-kit stored in its se_e3_tebd_strip checkpoint (sampled from the same
    system): within 1 %."""
    from pathlib import Path

    from mlpot.calculators.export import load_model
    from mlpot.data import AtomsDataset, collate, read_frames

    model = load_model(Path(__file__).parent / "peer_models" / "deepmd" / "se_e3_tebd_strip.ckpt.pt")
    desc = model.descriptor
    stored = desc.davg.clone(), desc.dstd.clone()
    frames = AtomsDataset(read_frames(shared_data("deepmd_water/data_3"), type_map=["O", "H"]), desc.rcut)
    batches = [collate([frames[i]]) for i in range(len(frames))]
    desc.compute_statistics([(batch, edge_vectors(batch)) for batch in batches])
    torch.testing.assert_close(desc.davg[:, 0], stored[0][:, 0], rtol=1e-2, atol=0)
    torch.testing.assert_close(desc.dstd, stored[1], rtol=1e-2, atol=0)


COMPILED = {
    "se_e3_tebd": {"type": "se_e3_tebd", "sel": 24, "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8], "tebd_dim": 4,
                   "tebd_input_mode": "strip", "seed": 1},
    "se_a_ebd_v2": {"type": "se_a_ebd_v2", "sel": [24, 24], "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8],
                    "axis_neuron": 2, "seed": 1},
    "se_a_tpe": {"type": "se_a_tpe", "sel": [24, 24], "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8],
                 "axis_neuron": 2, "seed": 1},
    "loc_frame": {"type": "loc_frame", "sel_a": [4, 4], "sel_r": [20, 20], "rcut": 4.0,
                  "axis_rule": [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_model_agrees(name, tmp_path, monkeypatch):
    """``mlpot compile`` (torch.export) of each descriptor: compiled = frozen = eager within 1e-10 on a
    structure of another size than the traced one (~15 s each)."""
    import test_calculators_neighbours as neighbours
    from test_compile import _assert_agree, _save_frozen

    from mlpot.calculators.compile import compile_model

    monkeypatch.setattr(neighbours, "SE_A", COMPILED[name])
    model = neighbours._model()
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    compile_model(frozen, tmp_path / "model.pt2", backend="export")
    _assert_agree(tmp_path / "model.pt2", frozen, model, 1e-10)


def test_type_map_change_remaps_se_e3_tebd_and_refuses_se_a_tpe():
    """Fine-tuning to a reordered type_map: se_e3_tebd's type embedding rows follow the names (same
    energy for the relabelled frame); se_a_tpe's embedding reads the type index, so it is refused."""
    from mlpot.models.deepmd.finetune import remap_state_dict

    batch = T.random_batch(2, [8, 7], seed=2)
    swapped = dict(batch)
    swapped[K.ATOM_TYPES] = 1 - batch[K.ATOM_TYPES]
    for case in ("se_e3_tebd", "se_e3_tebd_strip", "se_a_ebd_v2"):
        old = small_model(case)
        config = dict(old.config, type_map=["B", "A"])
        new = build_model(config)
        new.load_state_dict(remap_state_dict(old, new, [1, 0]))
        torch.testing.assert_close(new(swapped)[K.ENERGY], old(batch)[K.ENERGY], atol=1e-10, rtol=0)
    old = small_model("se_a_tpe")
    with pytest.raises(ConfigError, match="not supported yet: changing the type_map of descriptor 'se_a_tpe'"):
        remap_state_dict(old, build_model(dict(old.config, type_map=["B", "A"])), [1, 0])
