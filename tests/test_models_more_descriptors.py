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


def _naive_se_a_ebd_v2(model, batch):
    """D_i of se_a_ebd_v2 by loops: G = N_s(s~)(1 + N_t(tebd(t_j)[, tebd(t_i)])), padded slots with
    the zero padding embedding, A = R~^T G / N_c over all sum(sel) slots, D = A^T A[:, :M2]."""
    desc, types = model.descriptor, batch[K.ATOM_TYPES]
    vectors, neighbour = edge_vectors(batch).detach(), batch[K.EDGE_INDEX][1]
    table = desc.type_embedding.table()
    out = []
    for i in range(len(types)):
        a_matrix = torch.zeros(4, desc.m1, dtype=torch.float64)
        for tj, sel in enumerate(desc.sel):
            edges = [e for e in _edges_of(batch, vectors, i, desc.rcut) if types[neighbour[e]] == tj][:sel]
            for slot in range(sel):
                if slot < len(edges):
                    row, t_slot = _normalised_row(desc, vectors[edges[slot]], types[i]), tj
                else:
                    row, t_slot = -desc.davg[types[i]] / desc.dstd[types[i]], desc.n_types  # padding
                pair = table[t_slot] if desc.type_one_side else torch.cat([table[t_slot], table[types[i]]])
                g = desc.embeddings[0](row[:1]) * (1 + desc.type_pair_embedding(pair))
                a_matrix = a_matrix + row.unsqueeze(1) * g.unsqueeze(0)
        a_matrix = a_matrix / sum(desc.sel)
        d = (a_matrix.T @ a_matrix[:, : desc.m2]).reshape(-1)
        out.append(torch.cat([d, table[types[i]]]))
    return torch.stack(out)


@pytest.mark.filterwarnings("ignore:more neighbours than sel")  # small sel truncates: the loops do too
@pytest.mark.parametrize("case", sorted(CASES))
def test_descriptor_matches_the_formula(case):
    batch = T.random_batch(1, 7, seed=6)
    model = small_model(case, sel=5 if case.startswith("se_e3") else [3, 3])
    d, _ = model.descriptor(batch, edge_vectors(batch))
    naive = _naive_se_e3_tebd if case.startswith("se_e3") else _naive_se_a_ebd_v2
    expected = naive(model, batch).detach()
    assert d.shape == expected.shape
    torch.testing.assert_close(d.detach(), expected, atol=1e-12, rtol=1e-10)
    if not case.startswith("se_e3"):  # the padded slots in closed form == DeePMD-kit's dense evaluation
        model.descriptor.skip_padding = False
        torch.testing.assert_close(model.descriptor(batch, edge_vectors(batch))[0].detach(), expected, atol=1e-12, rtol=1e-10)


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
    with pytest.raises(ConfigError, match="not supported yet.*use_econf_tebd"):
        small_model("se_e3_tebd", use_econf_tebd=True)
    assert small_model("se_e3_tebd", concat_output_tebd=False).descriptor.dim_out == 8


WATER_DESCRIPTORS = {
    "se_e3_tebd": {"type": "se_e3_tebd", "sel": 16, "rcut": 3.0, "neuron": [4, 8], "tebd_dim": 4,
                   "tebd_input_mode": "strip"},
    "se_a_ebd_v2": {"type": "se_a_ebd_v2", "sel": [8, 16], "rcut": 3.0, "neuron": [4, 8], "axis_neuron": 4},
}


@pytest.mark.parametrize("name", sorted(WATER_DESCRIPTORS))
def test_deepmd_input_trains_freezes_and_tests(name, tmp_path, shared_data, monkeypatch, capsys):
    """A DeePMD-kit input.json with the descriptor: mlpot train (3 steps), freeze, test."""
    data = str(shared_data("deepmd_water/data_3"))
    config = {
        "model": {"type_map": ["O", "H"], "descriptor": dict(WATER_DESCRIPTORS[name], rcut_smth=0.5, seed=1),
                  "fitting_net": {"neuron": [8], "seed": 1}},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 2},
        "loss": {"type": "ener", "start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100, "limit_pref_f": 1},
        "training": {"training_data": {"systems": [data], "batch_size": 1}, "numb_steps": 3, "disp_freq": 1,
                     "save_freq": 3, "seed": 1},
    }
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    assert main(["freeze", "-o", "frozen.pth"]) == 0
    assert main(["test", "-m", "frozen.pth", "-s", data, "-n", "1", "-d", "detail"]) == 0
    forces = np.loadtxt(tmp_path / "detail.f.out")
    assert forces.shape == (192, 6) and np.isfinite(forces).all() and np.abs(forces[:, 3:]).max() > 0
    assert "Force  RMSE" in capsys.readouterr().out
