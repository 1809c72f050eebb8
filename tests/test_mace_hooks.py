"""The MACE family's data hooks against independent numpy computations: E0s (average, isolated atoms,
estimated), avg_num_neighbors, scaling; the valid_fraction split and isolated-atom exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from mace_data import E0, TINY_MODEL, write_small
from mlpot.config import validate_config
from mlpot.errors import ConfigError
from mlpot.models.equivariant.mace import build_mace, hooks
from mlpot.training.data_setup import build_training_data

SECTION = {"type": "mace", "model": "ScaleShiftMACE", "hidden_irreps": "4x0e+4x1o", "r_max": 2.5, "max_ell": 1,
           "correlation": 2, "radial_MLP": [8], "num_radial_basis": 4, "MLP_irreps": "4x0e"}


def build(tmp_path, model, n_frames=12, isolated=False, seed=0, **data):
    images = write_small(tmp_path / "train.xyz", n_frames, seed=seed, isolated=isolated)
    config = validate_config({"model": model, "data": {"train": {"paths": [str(tmp_path / "train.xyz")],
                                                                 "batch_size": 2, **data.pop("train", {})}, **data},
                              "loss": {"terms": {"forces": 1.0}}, "training": {"numb_steps": 1}, "seed": 5})
    return build_training_data(config, torch.float64, with_statistics=False), images


def numpy_statistics(images, r_max):
    """Counts per element (H, O), energies, neighbour counts and forces of the non-isolated frames."""
    frames = [a for a in images if a.info.get("config_type") != "IsolatedAtom"]
    counts = np.array([[np.sum(a.numbers == 1), np.sum(a.numbers == 8)] for a in frames], dtype=float)
    energies = np.array([a.get_potential_energy() for a in frames])
    neighbours = np.concatenate([np.bincount(neighbor_list("i", a, r_max), minlength=len(a)) for a in frames])
    forces = np.concatenate([a.get_forces() for a in frames])
    return counts, energies, neighbours, forces


def test_average_e0s_neighbours_and_rms_forces_scaling(tmp_path):
    data, images = build(tmp_path, {**SECTION, "E0s": "average", "scaling": "rms_forces_scaling"})
    counts, energies, neighbours, forces = numpy_statistics(images, 2.5)
    config = data.model.config
    e0s = np.linalg.lstsq(counts, energies, rcond=None)[0]
    assert config["atomic_numbers"] == [1, 8] and data.model.type_map == ["H", "O"]
    np.testing.assert_allclose(config["E0s"], e0s, rtol=1e-12)
    np.testing.assert_allclose(config["avg_num_neighbors"], neighbours[neighbours > 0].mean(), rtol=1e-12)
    np.testing.assert_allclose(config["atomic_inter_scale"], np.sqrt(np.mean(forces ** 2)), rtol=1e-12)
    per_atom = (energies - counts @ e0s) / counts.sum(1)
    np.testing.assert_allclose(config["atomic_inter_shift"], per_atom.mean(), rtol=1e-9, atol=1e-12)
    assert "scaling" not in config
    np.testing.assert_allclose(data.model.atomic_energies_fn.atomic_energies[0].numpy(), e0s, rtol=1e-12)
    rebuilt = build_mace(config)  # the resolved section holds numbers: no data needed to rebuild
    assert rebuilt.interactions[0].avg_num_neighbors == pytest.approx(config["avg_num_neighbors"])


def test_std_scaling_explicit_values_and_no_scaling(tmp_path):
    given = {1: -13.0, 8: -2040.0}
    data, images = build(tmp_path, {**SECTION, "E0s": given, "scaling": "std_scaling", "avg_num_neighbors": 7.5})
    counts, energies, _, _ = numpy_statistics(images, 2.5)
    per_atom = (energies - counts @ np.array([given[1], given[8]])) / counts.sum(1)
    config = data.model.config
    assert config["avg_num_neighbors"] == 7.5 and config["E0s"] == given
    np.testing.assert_allclose(config["atomic_inter_scale"], np.std(per_atom, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(config["atomic_inter_shift"], per_atom.mean(), rtol=1e-12)
    kept, _ = build(tmp_path, {**SECTION, "E0s": given, "scaling": "std_scaling", "atomic_inter_shift": 0.0,
                               "atomic_inter_scale": 2.0})
    assert (kept.model.config["atomic_inter_scale"], kept.model.config["atomic_inter_shift"]) == (2.0, 0.0)
    plain, _ = build(tmp_path, {**SECTION, "E0s": given, "scaling": "no_scaling"})
    assert (plain.model.config["atomic_inter_scale"], plain.model.config["atomic_inter_shift"]) == (1.0, 0.0)


def test_isolated_atoms_give_the_e0s_and_leave_the_batches(tmp_path):
    data, images = build(tmp_path, {**SECTION, "E0s": "average"}, isolated=True, train={"isolated_atoms": "exclude"})
    # the isolated atoms win over "average" (mace_run_train's precedence)
    assert data.model.config["E0s"] == [E0[1] + 0.1, E0[8] + 0.8]
    assert len(data.train) == 12 and all(len(f["positions"]) > 1 for f in data.train.frames)
    kept, _ = build(tmp_path, {**SECTION, "E0s": "average"}, isolated=True)  # isolated_atoms: keep (native default)
    assert len(kept.train) == 14


def test_valid_fraction_is_maces_split(tmp_path):
    data, images = build(tmp_path, {**SECTION, "E0s": "average"}, n_frames=20, valid_fraction=0.25, split_seed=11,
                         valid={"paths": [], "batch_size": 3})
    indices = list(range(20))
    np.random.default_rng(11).shuffle(indices)
    n_train = min(20 - int(0.25 * 20), 19)
    expected = [images[i].positions for i in indices[n_train:]]
    assert len(data.train) == 15 and len(data.valid) == 5 and data.valid_sampler.batch_size == 3
    for frame, positions in zip(data.valid.frames, expected):
        np.testing.assert_allclose(frame["positions"], positions)
    # the statistics see the training part only
    counts, energies, _, _ = numpy_statistics([images[i] for i in indices[:n_train]], 2.5)
    np.testing.assert_allclose(data.model.config["E0s"], np.linalg.lstsq(counts, energies, rcond=None)[0], rtol=1e-12)


def test_estimated_e0s_from_a_foundation_model(tmp_path):
    write_small(tmp_path / "train.xyz", 10, seed=3)
    foundation = build_mace({**SECTION, "E0s": [-10.0, -2000.0], "atomic_numbers": [1, 8], "avg_num_neighbors": 3.0,
                             "atomic_inter_scale": 0.7, "atomic_inter_shift": 0.1})
    config = validate_config({"model": {**SECTION, "E0s": "estimated"},
                              "data": {"train": {"paths": [str(tmp_path / "train.xyz")], "batch_size": 2}},
                              "loss": {"terms": {"forces": 1.0}}, "training": {"numb_steps": 1}})
    plan = hooks.prepare_finetune(config, foundation)
    assert config.model["E0s"] == [-10.0, -2000.0] and config.model["atomic_inter_scale"] == 0.7
    data = build_training_data(config, torch.float64, with_statistics=False)
    data.model.load_state_dict(plan.weights)
    samples = data.stat_samples
    assert sum(int(s["n_atoms"].shape[0]) for s in samples) == 10  # every training frame
    predicted = np.concatenate([data.model(s)["energy"].detach().numpy() for s in samples])
    reference = np.concatenate([s["energy"].numpy() for s in samples])
    counts = np.concatenate([np.stack([np.bincount(t, minlength=2) for t in torch.split(s["atom_types"],
                             s["n_atoms"].tolist())]) for s in samples]).astype(float)
    expected = np.array([-10.0, -2000.0]) + np.linalg.lstsq(counts, reference - predicted, rcond=None)[0]
    lines = []
    plan.after_statistics(data.model, samples, lines.append)
    np.testing.assert_allclose(data.model.atomic_energies_fn.atomic_energies[0].numpy(), expected, rtol=1e-10)
    assert lines and lines[0].startswith("fine-tuning: E0s estimated")


@pytest.mark.parametrize("section, message", [
    ({"E0s": None}, r"model.E0s: E0s not found in the training file"),
    ({"E0s": "estimated"}, r"model.E0s: E0s 'estimated' needs a foundation model"),
    ({"E0s": "averag"}, r"model.E0s: expected average, estimated, foundation, .* \(did you mean 'average'\?\)"),
    ({"E0s": "average", "scaling": "std_scaling", "model": "MACE"}, r"model.scaling: scaling 'std_scaling' needs model"),
    ({"E0s": "average", "hiden_irreps": "4x0e"}, r"model.hiden_irreps: unknown key \(did you mean 'hidden_irreps'\?\)"),
])
def test_section_errors(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, {**SECTION, **section}, n_frames=4)


def test_isolated_atoms_must_cover_every_element(tmp_path):
    images = write_small(tmp_path / "train.xyz", 4, isolated=True)
    import ase.io

    ase.io.write(tmp_path / "train.xyz", images[1:], format="extxyz")  # drop the isolated O
    config = validate_config({"model": {**SECTION, "E0s": "average"},
                              "data": {"train": {"paths": [str(tmp_path / "train.xyz")], "batch_size": 2}},
                              "loss": {"terms": {"forces": 1.0}}, "training": {"numb_steps": 1}})
    with pytest.raises(ConfigError, match=r"isolated atoms .* none of atomic numbers \[8\]"):
        build_training_data(config, torch.float64, with_statistics=False)


def test_output_bias_is_the_e0s():
    model = build_mace({**SECTION, "E0s": [-1.0, -2.0], "atomic_numbers": [1, 8]})
    bias = model.output_bias()
    with torch.no_grad():
        bias.values += 0.5
    assert model.atomic_energies_fn.atomic_energies.tolist() == [[-0.5, -1.5]]
    assert TINY_MODEL["r_max"] == SECTION["r_max"]
