"""DeePMD-kit's pairwise DPRc model (model/type pairwise_dprc): E = E_qm + sum_l E_qmmm,l.

A synthetic QM/MM system: one QM water (types O, H) among MM waters (types OW, HW), aparam the
residue index (0 = QM). Tiny se_atten sub-models, float64.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mlpot.data import AtomsDataset, collate
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.derivatives import compute_derivatives
from mlpot.testing import assert_forces_match_fd, assert_invariant, assert_virial_matches_finite_strain

TYPE_MAP = ["O", "H", "OW", "HW"]
QM_QM = [[0, 0], [0, 1], [1, 1]]
MM_MM = [[2, 2], [2, 3], [3, 3]]
WATER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def _descriptor(rcut, exclude, kind="se_atten", davg_zero=True):
    return {"type": kind, "sel": 24, "rcut": rcut, "rcut_smth": 0.5, "attn_layer": 0, "neuron": [4, 8],
            "axis_neuron": 4, "set_davg_zero": davg_zero, "exclude_types": exclude, "seed": 1}


def dprc_section(kind="se_atten"):
    """The layout of DeePMD-kit's doc/model/pairwise-dprc.md example, with tiny nets (the QM/MM
    part with set_davg_zero, which atom_ener needs)."""
    return {"type": "pairwise_dprc", "type_map": TYPE_MAP, "type_embedding": {"neuron": [4]},
            "qm_model": {"descriptor": _descriptor(4.0, MM_MM, kind, davg_zero=False),
                         "fitting_net": {"neuron": [8], "seed": 1, "atom_ener": [None, None, 0.0, 0.0]}},
            "qmmm_model": {"descriptor": _descriptor(5.0, QM_QM + MM_MM, kind),
                           "fitting_net": {"neuron": [8], "seed": 2, "atom_ener": [0.0, 0.0, 0.0, 0.0]}}}


def qmmm_frame(n_mm=3, seed=0):
    """(positions (n, 3) Å, types (n,), residue index (n,)): a QM water at the origin, MM waters
    2.6-3.2 Å away in random directions."""
    rng = np.random.default_rng(seed)
    positions, types, residue = [WATER], [[0, 1, 1]], [[0, 0, 0]]
    for l in range(1, n_mm + 1):
        direction = rng.normal(size=3)
        centre = direction / np.linalg.norm(direction) * rng.uniform(2.6, 3.2)
        positions.append(centre + WATER @ _rotation(rng).T)
        types.append([2, 3, 3])
        residue.append([l] * 3)
    return np.concatenate(positions), np.concatenate(types), np.concatenate(residue)


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_batch(frames, cutoff=5.0, box=None):
    """Collated batch of (positions, types, residue) frames; aparam = residue index."""
    cell = np.eye(3) * box if box else np.zeros((3, 3))
    items = [{K.POSITIONS: p, K.ATOM_TYPES: t.astype(np.int64), K.CELL: cell, K.PBC: np.array([box is not None] * 3),
              K.APARAM: r.astype(float).reshape(-1, 1)} for p, t, r in frames]
    dataset = AtomsDataset(items, cutoff, type_map=TYPE_MAP)
    return collate([dataset[i] for i in range(len(items))])


def _perturbed(built):
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial fitting biases and type embeddings
        for parameter in built.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return built


@pytest.fixture(scope="module")
def model():
    return _perturbed(build_model(dprc_section(), torch.float64))


def _sub_energy(member, frame, keep, box):
    p, t, r = frame
    return float(member(make_batch([(p[keep], t[keep], r[keep])], box=box))[K.ENERGY][0])


@pytest.mark.parametrize("box,kind", [(None, "se_atten"), (7.0, "se_atten"), (None, "se_atten_v2")])
def test_energy_is_qm_term_plus_one_qmmm_term_per_residue(model, box, kind):
    """E equals the documented formula evaluated by hand: the QM model on the QM water alone plus
    the QM/MM model on (QM water + MM water l) for each l, each from its own neighbour list (in a
    7 Å periodic box the QM atoms also see MM images across the boundary)."""
    model = model if kind == "se_atten" else _perturbed(build_model(dprc_section(kind), torch.float64))
    frame = qmmm_frame()
    with torch.no_grad():
        energy = float(model(make_batch([frame], box=box))[K.ENERGY][0])
        residue = frame[2]
        e_qm = _sub_energy(model.qm_model, frame, residue == 0, box)
        e_qmmm = [_sub_energy(model.qmmm_model, frame, (residue == 0) | (residue == l), box) for l in (1, 2, 3)]
    assert all(abs(e) > 1e-3 for e in e_qmmm)  # every MM water is in range and contributes
    assert energy == pytest.approx(e_qm + sum(e_qmmm), abs=1e-10)


def test_mm_atoms_far_from_qm_have_no_energy_and_mm_mm_pairs_are_excluded(model):
    """An MM water beyond the QM/MM cutoff adds exactly 0 (atom_ener 0, MM-MM pairs excluded);
    moving two MM waters relative to each other changes nothing when no QM atom is near."""
    p, t, r = qmmm_frame(n_mm=2)
    far = (WATER + [11.0, 0.0, 0.0], np.array([2, 3, 3]), np.array([3, 3, 3]))
    far2 = (WATER + [11.0, 2.9, 0.0], np.array([2, 3, 3]), np.array([4, 4, 4]))
    with torch.no_grad():
        near = model(make_batch([(p, t, r)]))
        both = model(make_batch([(np.concatenate([p, far[0], far2[0]]), np.concatenate([t, far[1], far2[1]]),
                                  np.concatenate([r, far[2], far2[2]]))]))
        moved = model(make_batch([(np.concatenate([p, far[0], far2[0] + [0.0, -0.6, 0.3]]),
                                   np.concatenate([t, far[1], far2[1]]), np.concatenate([r, far[2], far2[2]]))]))
    assert float(both[K.ENERGY][0]) == pytest.approx(float(near[K.ENERGY][0]), abs=1e-12)
    assert torch.all(both[K.ATOM_ENERGY][len(p):] == 0)
    assert float(moved[K.ENERGY][0]) == pytest.approx(float(both[K.ENERGY][0]), abs=1e-12)
    assert float(near[K.ATOM_ENERGY][3:].abs().min()) > 0  # near MM atoms do carry QM/MM energy


def test_forces_virial_and_invariance(model):
    """F = -dE/dR and the virial by finite differences (two frames, one periodic-free, one in a
    periodic box); rotation/translation/permutation invariance of E and the per-atom energies."""
    batch = make_batch([qmmm_frame(seed=1), qmmm_frame(n_mm=2, seed=2)])
    assert_forces_match_fd(model, batch)
    assert_invariant(model, batch)
    periodic = make_batch([qmmm_frame(seed=3)], box=11.0)
    assert_virial_matches_finite_strain(model, periodic)
    forces = compute_derivatives(model, batch, forces=True)[K.FORCES]
    torch.testing.assert_close(forces.sum(0), torch.zeros(3, dtype=forces.dtype), atol=1e-10, rtol=0)


def test_statistics_fit_the_qm_bias_only(model):
    """compute_statistics: the QM model's bias of the QM types comes from the labels, MM types keep
    atom_ener 0; the QM/MM model's bias stays 0."""
    local = copy.deepcopy(model)
    batch = make_batch([qmmm_frame(seed=s) for s in range(3)])
    batch[K.ENERGY] = torch.tensor([-10.0, -10.5, -9.5], dtype=torch.float64)
    local.compute_statistics([batch])
    bias = local.qm_model.fitting.bias_atom[:, 0]
    assert bias[2] == 0 and bias[3] == 0 and bias[0] != 0
    assert torch.all(local.qmmm_model.fitting.bias_atom == 0)
    assert local.qm_model.descriptor.davg.abs().max() > 0  # env statistics of the QM sub-frames
    # after the statistics, an MM water out of range still adds exactly 0
    p, t, r = qmmm_frame(n_mm=1)
    far = (np.concatenate([p, WATER + [11.0, 0.0, 0.0]]), np.concatenate([t, [2, 3, 3]]), np.concatenate([r, [2, 2, 2]]))
    with torch.no_grad():
        assert torch.equal(local(make_batch([far]))[K.ENERGY], local(make_batch([(p, t, r)]))[K.ENERGY])


def test_bad_sections_name_the_key():
    section = dprc_section()
    section["use_srtab"] = "table.txt"
    with pytest.raises(ConfigError, match="not supported yet") as error:
        build_model(section, torch.float64)
    assert "use_srtab" in str(error.value)
    section = dprc_section()
    section["qm_model"]["descriptor"]["rcutt"] = 3.0
    with pytest.raises(ConfigError, match="qm_model/descriptor"):
        build_model(section, torch.float64)
    section = dprc_section()
    section["qmmm_model"] = {"type": "linear_ener", "models": [], "weights": "sum"}
    with pytest.raises(ConfigError, match="not supported yet: model/qmmm_model/type=linear_ener"):
        build_model(section, torch.float64)


# ---- DeePMD-form inputs through mlpot train / freeze / test -------------------------------------
def write_system(path, n_frames=6, seed=0, drdq=False):
    """A synthetic DeePMD system: one QM water and three MM waters in a 20 Å box, aparam = residue
    index, labels from a smooth analytic QM/MM pair energy (eV, eV/Å); with ``drdq`` one generalised
    coordinate, the QM O-H1 distance (drdq.npy: natoms*3 per frame)."""
    frames = [qmmm_frame(seed=seed + k) for k in range(n_frames)]
    positions = torch.tensor(np.stack([f[0] for f in frames]) + 10.0, requires_grad=True)
    types, residue = frames[0][1], frames[0][2]
    qm = torch.tensor(residue == 0)
    distance = torch.linalg.vector_norm(positions[:, :, None] - positions[:, None], dim=-1)
    pair = (qm[:, None] & ~qm[None, :]).to(torch.float64)
    energy = (0.5 * torch.exp(-(distance - 2.5) ** 2) * pair).sum((1, 2)) - 3.0
    forces = -torch.autograd.grad(energy.sum(), positions)[0]
    path.mkdir(parents=True)
    (path / "type_map.raw").write_text("\n".join(TYPE_MAP) + "\n")
    np.savetxt(path / "type.raw", types, fmt="%d")
    data = {"coord": positions.detach().reshape(n_frames, -1), "energy": energy.detach(),
            "force": forces.reshape(n_frames, -1), "box": np.tile(np.eye(3).reshape(1, 9) * 20.0, (n_frames, 1)),
            "aparam": np.tile(residue.astype(float), (n_frames, 1))}
    if drdq:
        grad = np.zeros((n_frames, len(types), 3))
        bond = positions.detach().numpy()[:, 1] - positions.detach().numpy()[:, 0]
        unit = bond / np.linalg.norm(bond, axis=1, keepdims=True)
        grad[:, 0], grad[:, 1] = -unit, unit
        data["drdq"] = grad.reshape(n_frames, -1)
    (path / "set.000").mkdir()
    for name, value in data.items():
        np.save(path / "set.000" / f"{name}.npy", np.asarray(value, dtype=np.float64))
    return path


def _input(model, systems, valid):
    return {"model": model,
            "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 5},
            "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1},
            "training": {"training_data": {"systems": systems, "batch_size": 2},
                         "validation_data": {"systems": valid, "batch_size": 2},
                         "numb_steps": 4, "disp_freq": 2, "save_freq": 2, "seed": 1}}


def test_pairwise_input_trains_freezes_and_tests(tmp_path, monkeypatch, capsys):
    """The doc/model/pairwise-dprc.md layout (type_embedding + se_atten sub-models, aparam residue
    index) on a synthetic QM/MM dataset: train, freeze, test."""
    from mlpot.cli import main

    train = [str(write_system(tmp_path / "train", seed=0))]
    valid = [str(write_system(tmp_path / "valid", n_frames=2, seed=20))]
    (tmp_path / "input.json").write_text(__import__("json").dumps(_input(dprc_section(), train, valid)))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    rows = np.loadtxt(tmp_path / "lcurve.out")
    assert np.isfinite(rows).all()
    assert main(["freeze", "-o", "frozen.pth"]) == 0
    assert main(["test", "-m", "frozen.pth", "-s", valid[0]]) == 0
    assert "Force  RMSE" in capsys.readouterr().out
    # change-bias refits the QM sub-model's bias (MM types keep atom_ener 0)
    assert main(["change-bias", "frozen.pth", "-s", valid[0], "-m", "set", "-o", "changed.pth"]) == 0
    from mlpot.calculators import load_model

    bias = load_model(tmp_path / "changed.pth").qm_model.fitting.bias_atom[:, 0]
    assert bias[2] == 0 and bias[3] == 0
    assert torch.all(bias[:2] != load_model(tmp_path / "frozen.pth").qm_model.fitting.bias_atom[:2, 0])


def test_hybrid_dprc_input_with_generalized_force_loss_trains(tmp_path, monkeypatch):
    """DeePMD-kit's non-pairwise DPRc form (doc/model/dprc.md, se_e2_a version): a standard model with a hybrid of a
    QM/QM and a QM/MM descriptor (exclude_types), atom_ener 0 for MM types, and the generalised
    force loss (start_pref_gf, numb_generalized_coord, drdq.npy)."""
    from mlpot.cli import main

    qm, mm = (0, 1), (2, 3)
    qm_qm = [[a, b] for a in qm for b in qm if a <= b]
    mm_mm = [[a, b] for a in mm for b in mm if a <= b]
    qm_mm = [[a, b] for a in qm for b in mm]
    part = {"type": "se_e2_a", "neuron": [4, 8], "axis_neuron": 4, "set_davg_zero": True, "seed": 1}
    model = {"type_map": TYPE_MAP,
             "descriptor": {"type": "hybrid", "list": [
                 dict(part, sel=[4, 8, 0, 0], rcut=4.0, rcut_smth=0.5, exclude_types=mm_mm + qm_mm),
                 dict(part, sel=[4, 8, 6, 12], rcut=5.0, rcut_smth=0.5, exclude_types=qm_qm + mm_mm)]},
             "fitting_net": {"neuron": [8], "seed": 1, "atom_ener": [None, None, 0.0, 0.0]}}
    train = [str(write_system(tmp_path / "train", seed=0, drdq=True))]
    valid = [str(write_system(tmp_path / "valid", n_frames=2, seed=20, drdq=True))]
    config = _input(model, train, valid)
    config["loss"].update(start_pref_gf=1.0, limit_pref_gf=1.0, numb_generalized_coord=1)
    (tmp_path / "input.json").write_text(__import__("json").dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    header = (tmp_path / "lcurve.out").read_text().splitlines()[0]
    assert "rmse_gf_val" in header
    assert np.isfinite(np.loadtxt(tmp_path / "lcurve.out")).all()


def test_sub_model_wrappers_are_not_supported_yet():
    section = dprc_section()
    section["qm_model"]["spin"] = {"use_spin": [True, False, False, False], "virtual_scale": [0.3]}
    with pytest.raises(ConfigError, match="not supported yet") as error:
        build_model(section, torch.float64)
    assert "model/qm_model" in str(error.value)
