"""`mlpot test` on dipole, polarizability and DOS models: dp test 3.2's lines and detail files.

Small models on synthetic DeePMD systems (a global-label and an atomic-label system, as in
DeePMD-kit's water_tensor and dos examples). The errors are recomputed here with numpy from the
model's own forward pass and the labels written to disk, independently of mlpot's scoring code.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mlpot.calculators.export import FORMAT_VERSION, FROZEN_FORMAT, load_model, save_frozen
from mlpot.cli import main
from mlpot.data import AtomsDataset, collate
from mlpot.data import keys as K
from mlpot.data.deepmd_format import write_deepmd_npy
from mlpot.models import build_model

DESCRIPTOR = {"type": "se_e2_a", "sel": [8, 16], "rcut": 3.0, "rcut_smth": 2.5, "neuron": [4, 8], "axis_neuron": 4,
              "seed": 1}
N_FRAMES = 3


def _frames(types, label_arrays, seed):
    """Frames of one composition in a 5 Å box with the given labels (name -> per-frame arrays)."""
    rng = np.random.default_rng(seed)
    n_atoms = len(types)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
    frames = []
    for index in range(N_FRAMES):
        frame = {K.POSITIONS: (grid + 0.5 + rng.uniform(-0.15, 0.15, grid.shape)) * 2.5, K.CELL: np.eye(3) * 5.0,
                 K.PBC: np.ones(3, bool), K.ATOM_TYPES: np.asarray(types)}
        frame.update({key: values[index] for key, values in label_arrays.items()})
        frames.append(frame)
    return frames


def _freeze(model, path):
    save_frozen({"format": FROZEN_FORMAT, "format_version": FORMAT_VERSION, "model_config": model.config,
                 "state_dict": model.state_dict(), "dtype": "float64", "metadata": {"step": 0}}, path)
    return str(path)


def _predict(model_path, frames):
    model = load_model(model_path)
    batch = collate(list(AtomsDataset(frames, cutoff=model.cutoff)), dtype=torch.float64)
    with torch.no_grad():
        out = model(batch)
    return {key: value.numpy() for key, value in out.items()}


def _values(text: str, title: str):
    """The numbers of every report line starting with ``title`` (in order of appearance)."""
    return [float(m) for m in re.findall(rf"^{re.escape(title)}\s*: (\S+)", text, flags=re.M)]


def _blocks(text: str):
    """(per-system blocks, weighted-average block) of the report."""
    parts = text.split("# ----------weighted average of errors-----------")
    return parts[0].split("# ---------------output of dp test---------------")[1:], parts[1]


@pytest.fixture
def water_like(tmp_path):
    """Dipole systems: 8 atoms (2 O, 6 H); atomic labels on every atom (H rows zero), as the shared data."""
    types = np.array([0, 1, 1, 0, 1, 1, 1, 1])
    rng = np.random.default_rng(7)
    atomic = rng.normal(size=(N_FRAMES, 8, 3)) * (types == 0)[None, :, None]
    systems = {
        "atomic_system": _frames(types, {K.ATOMIC_DIPOLE: atomic}, 1),
        "global_system": _frames(types, {K.DIPOLE: rng.normal(size=(N_FRAMES, 3)) * 3}, 2),
    }
    paths = {name: str(write_deepmd_npy(tmp_path / name, frames, type_map=["O", "H"])) for name, frames in systems.items()}
    model = build_model({"type_map": ["O", "H"], "atom_exclude_types": [1], "descriptor": DESCRIPTOR,
                         "fitting_net": {"type": "dipole", "neuron": [8], "seed": 2}})
    model.compute_statistics([collate(list(AtomsDataset(systems["global_system"], cutoff=3.0)))])
    return _freeze(model, tmp_path / "dipole.pt"), systems, paths


def test_dipole_global_lines_and_detail_file(water_like, tmp_path, capsys):
    model_path, systems, paths = water_like
    prefix = tmp_path / "detail"
    assert main(["test", model_path, paths["atomic_system"], paths["global_system"], "-d", str(prefix)]) == 0
    text = capsys.readouterr().out
    blocks, average = _blocks(text)
    frames = systems["global_system"]
    label = np.stack([f[K.DIPOLE] for f in frames])
    pred = _predict(model_path, frames)[K.DIPOLE]
    rmse = np.sqrt(np.mean((pred - label) ** 2))
    n_oxygen = 2  # the selected type (atom_exclude_types [1])
    assert _values(blocks[1], "Dipole  RMSE") == [pytest.approx(rmse, rel=1e-6)]
    assert _values(blocks[1], "Dipole  RMSE/sqrtN") == [pytest.approx(rmse / np.sqrt(n_oxygen), rel=1e-6)]
    assert _values(blocks[1], "Dipole  RMSE/N") == [pytest.approx(rmse / n_oxygen, rel=1e-6)]
    assert "Dipole  RMSE       : " in blocks[1] and "Dipole  RMSE/sqrtN : " in blocks[1]
    assert blocks[1].count("The unit of error is the same as the unit of provided label.") == 1
    # the atomic system has no global label: no numbers, a note; the average has no per-system lines
    assert "RMSE" not in blocks[0] and "# no dipole labels in this system" in blocks[0]
    assert _values(average, "Dipole  RMSE") == [pytest.approx(rmse, rel=1e-6)]
    assert "sqrtN" not in average and "The unit of error" in average
    # dp test names the tensor detail file with Path.with_suffix: system 1 (second) -> detail.out.1
    detail = tmp_path / "detail.out.1"
    assert detail.read_text().splitlines()[0] == "# data_x data_y data_z pred_x pred_y pred_z"
    np.testing.assert_allclose(np.loadtxt(detail), np.concatenate([label, pred], axis=1), rtol=1e-12)
    assert not (tmp_path / "detail.out").exists()


def test_dipole_atomic_lines(water_like, tmp_path, capsys):
    model_path, systems, paths = water_like
    prefix = tmp_path / "detail"
    assert main(["test", "-m", model_path, "-s", paths["atomic_system"], "-a", "-d", str(prefix)]) == 0
    text = capsys.readouterr().out
    frames = systems["atomic_system"]
    oxygen = frames[0][K.ATOM_TYPES] == 0
    label = np.stack([f[K.ATOMIC_DIPOLE][oxygen] for f in frames]).reshape(N_FRAMES, -1)
    pred = _predict(model_path, frames)[K.ATOMIC_DIPOLE].reshape(N_FRAMES, 8, 3)[:, oxygen].reshape(N_FRAMES, -1)
    rmse = np.sqrt(np.mean((pred - label) ** 2))
    assert _values(text, "Dipole  RMSE") == [pytest.approx(rmse, rel=1e-6)] * 2  # system and average
    assert "sqrtN" not in text
    lines = (tmp_path / "detail.out").read_text().splitlines()
    assert lines[0] == "# " + " ".join([f"{p}_{c}{n}" for p in ("data", "pred") for n in (1, 2) for c in "xyz"])
    np.testing.assert_allclose(np.loadtxt(tmp_path / "detail.out"), np.concatenate([label, pred], axis=1), rtol=1e-12)


def test_polarizability_lines(tmp_path, capsys):
    types = np.array([0, 1, 1, 0, 1, 1, 1, 1])
    rng = np.random.default_rng(3)
    frames = _frames(types, {K.POLARIZABILITY: rng.normal(size=(N_FRAMES, 3, 3)) + 5 * np.eye(3)}, 4)
    path = str(write_deepmd_npy(tmp_path / "polar", frames, type_map=["O", "H"]))
    model = build_model({"type_map": ["O", "H"], "descriptor": DESCRIPTOR,
                         "fitting_net": {"type": "polar", "neuron": [8], "sel_type": [0], "fit_diag": False, "seed": 2}})
    model.compute_statistics([collate(list(AtomsDataset(frames, cutoff=3.0)))])
    model_path = _freeze(model, tmp_path / "polar.pt")
    assert main(["test", model_path, path, "-d", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    label = np.stack([f[K.POLARIZABILITY] for f in frames]).reshape(N_FRAMES, 9)
    pred = _predict(model_path, frames)[K.POLARIZABILITY].reshape(N_FRAMES, 9)
    rmse = np.sqrt(np.mean((pred - label) ** 2))
    assert _values(text, "Polarizability  RMSE") == [pytest.approx(rmse, rel=1e-6)] * 2
    assert _values(text, "Polarizability  RMSE/N") == [pytest.approx(rmse / 2, rel=1e-6)]  # sel_type [0]: 2 atoms
    header = (tmp_path / "d.out").read_text().splitlines()[0].split()[1:]
    assert header[:3] == ["data_pxx", "data_pxy", "data_pxz"] and header[-1] == "pred_pzz" and len(header) == 18


def test_dos_lines_and_per_frame_detail_files(tmp_path, capsys):
    types = np.zeros(6, dtype=np.int64)
    rng = np.random.default_rng(5)
    atom_dos = rng.uniform(0, 2, size=(N_FRAMES, 6, 5))
    both = _frames(types, {K.DOS: atom_dos.sum(1) + 0.1, K.ATOM_DOS: atom_dos}, 6)
    only_global = _frames(types, {K.DOS: rng.uniform(0, 10, size=(N_FRAMES, 5))}, 7)
    paths = [str(write_deepmd_npy(tmp_path / name, frames, type_map=["Si"]))
             for name, frames in (("both", both), ("global", only_global))]
    model = build_model({"type_map": ["Si"], "descriptor": dict(DESCRIPTOR, sel=[16]),
                         "fitting_net": {"type": "dos", "numb_dos": 5, "neuron": [8], "seed": 2}})
    model.compute_statistics([collate(list(AtomsDataset(both, cutoff=3.0)))])
    model_path = _freeze(model, tmp_path / "dos.pt")
    assert main(["test", model_path, *paths, "-a", "-d", str(tmp_path / "detail")]) == 0
    text = capsys.readouterr().out
    blocks, average = _blocks(text)
    diffs, atom_diffs = [], None
    for index, frames in enumerate((both, only_global)):
        pred = _predict(model_path, frames)
        diff = pred[K.DOS] - np.stack([f[K.DOS] for f in frames])
        diffs.append(diff)
        assert _values(blocks[index], "DOS MAE") == [pytest.approx(np.mean(np.abs(diff)), rel=1e-6)]
        assert _values(blocks[index], "DOS RMSE") == [pytest.approx(np.sqrt(np.mean(diff**2)), rel=1e-6)]
        assert _values(blocks[index], "DOS RMSE/Natoms") == [pytest.approx(np.sqrt(np.mean(diff**2)) / 6, rel=1e-6)]
        if index == 0:
            atom_diffs = pred[K.ATOM_DOS].reshape(N_FRAMES, 6, 5) - atom_dos
            assert _values(blocks[0], "Atomic DOS RMSE") == [pytest.approx(np.sqrt(np.mean(atom_diffs**2)), rel=1e-6)]
            # per-frame detail files: one column of labels, one of predictions
            frame_1 = np.loadtxt(tmp_path / "detail.dos.out.1")
            np.testing.assert_allclose(frame_1, np.stack([both[1][K.DOS], pred[K.DOS][1]], axis=1), rtol=1e-12)
            first = (tmp_path / "detail.ados.out.2").read_text().splitlines()[0]
            assert first == f"# {paths[0]} - 2: data_ados pred_ados"
            assert np.loadtxt(tmp_path / "detail.ados.out.2").shape == (30, 2)
    assert "# no atom_dos labels in this system" in blocks[1]
    pooled = np.concatenate(diffs)
    assert _values(average, "DOS RMSE") == [pytest.approx(np.sqrt(np.mean(pooled**2)), rel=1e-6)]
    assert "Atomic DOS" not in average  # dp test reports the atomic DOS per system only
    assert (tmp_path / "detail.dos.out.1.2").exists()  # second system: .dos.out.<system>.<frame>


def test_derivatives_of_a_model_without_energy_name_the_problem(water_like):
    from mlpot.models.derivatives import compute_derivatives

    model_path, systems, _ = water_like
    batch = collate(list(AtomsDataset(systems["global_system"], cutoff=3.0)))
    with pytest.raises(ValueError, match="derivatives of an energy"):
        compute_derivatives(load_model(model_path), batch)
