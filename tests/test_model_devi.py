"""``mlpot model-devi`` (DeePMD-kit's model_devi.out) and ``mlpot neighbor-stat``.

The file's values are checked against a numpy computation from each model's own forces, virial and
energy (through the ASE calculator, frame by frame — independent of the batched ensemble code).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import write

from mlpot.calculators import MlpotCalculator
from mlpot.commands import model_devi, neighbor_stat
from mlpot.data import read_frames
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model

HEADER = ("#       step         max_devi_v         min_devi_v         avg_devi_v         max_devi_f"
          "         min_devi_f         avg_devi_f             devi_e")


def _config(type_map, seed):
    return {
        "type_map": list(type_map),
        "descriptor": {"type": "se_e2_a", "sel": [60, 120], "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8],
                       "axis_neuron": 2, "seed": seed},
        "fitting_net": {"neuron": [8, 8], "seed": seed + 100},
    }


def _save(tmp_path, type_map, seed, name):
    torch.manual_seed(seed)
    model = build_model(_config(type_map, seed), dtype=torch.float64)
    path = tmp_path / name
    torch.save({"format": "mlpot-frozen", "format_version": 1, "model_config": model.config,
                "state_dict": model.state_dict(), "dtype": "float64", "metadata": {"step": 0}}, path)
    return path


def _run(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def _atoms(frame, type_map):
    from ase import Atoms

    return Atoms(symbols=[type_map[t] for t in frame[K.ATOM_TYPES]], positions=frame[K.POSITIONS],
                 cell=frame[K.CELL], pbc=frame[K.PBC])


def _reference(model_paths, frames, type_map, relative=None, relative_v=None):
    """numpy: per model E, F, Ξ from the ASE calculator; std over models; max/min/mean over atoms."""
    rows, atomic = [], []
    calcs = [MlpotCalculator(str(p)) for p in model_paths]
    for index, frame in enumerate(frames):
        energies, forces, virials = [], [], []
        for calc in calcs:
            atoms = _atoms(frame, type_map)
            atoms.calc = calc
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            if atoms.pbc.any():
                calc.calculate(atoms, ["virial"])
                virials.append(calc.results["virial"].reshape(9))
            else:  # isolated: Ξ_ab = Σ_k F_ka r_kb, DeePMD-kit's virial without a cell
                virials.append(np.einsum("ka,kb->ab", forces[-1], atoms.positions).reshape(9))
        n = len(frame[K.POSITIONS])
        f = np.array(forces)  # (M, n, 3)
        f_mean = f.mean(0)
        eps_f = np.sqrt(np.mean(np.sum((f - f_mean) ** 2, axis=-1), axis=0))  # sqrt(<|F_i - <F_i>|^2>)
        if relative is not None:
            eps_f = eps_f / (np.linalg.norm(f_mean, axis=-1) + relative)
        v = np.array(virials) / n
        eps_v = np.sqrt(np.mean((v - v.mean(0)) ** 2, axis=0))
        if relative_v is not None:
            eps_v = eps_v / (np.linalg.norm(v.mean(0)) + relative_v)
        e = np.array(energies) / n
        rows.append([index, eps_v.max(), eps_v.min(), np.sqrt(np.sum(eps_v ** 2)) / 3,
                     eps_f.max(), eps_f.min(), eps_f.mean(), np.sqrt(np.mean((e - e.mean()) ** 2))])
        atomic.append(eps_f)
    return np.array(rows), np.array(atomic)


@pytest.fixture(scope="module")
def water(tmp_path_factory, shared_data):
    """Three se_e2_a models (different seeds) and a 3-frame DeePMD water system."""
    tmp = tmp_path_factory.mktemp("devi_water")
    source = shared_data("deepmd_water/data_0")
    frames = read_frames(source, type_map=["O", "H"])[:3]
    system = tmp / "water3"
    (system / "set.000").mkdir(parents=True)
    np.savetxt(system / "type.raw", frames[0][K.ATOM_TYPES], fmt="%d")
    (system / "type_map.raw").write_text("O\nH\n")
    np.save(system / "set.000" / "coord.npy", np.stack([f[K.POSITIONS].reshape(-1) for f in frames]))
    np.save(system / "set.000" / "box.npy", np.stack([f[K.CELL].reshape(-1) for f in frames]))
    models = [_save(tmp, ["O", "H"], seed, f"m{seed}.pt") for seed in (1, 2, 3)]
    return tmp, system, models, frames


def test_water_file_matches_numpy_and_deepmd_layout(water):
    tmp, system, models, frames = water
    out = tmp / "model_devi.out"
    assert _run(model_devi, ["-m", *map(str, models), "-s", str(system), "-o", str(out), "-f", "10"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == f"# {system}"
    assert lines[1] == HEADER
    assert len(lines) == 2 + len(frames)
    assert lines[2][:12] == "%12d" % 0 and lines[3][:12] == "%12d" % 10  # step = index x frequency
    assert len(lines[2]) == 12 + 7 * 19  # %12d then seven %19.6e
    values = np.loadtxt(out)
    expected, _ = _reference(models, frames, ["O", "H"])
    expected[:, 0] *= 10
    assert values[:, 4].min() > 1e-4 and values[:, 1].min() > 1e-7 and values[:, 7].min() > 1e-8  # non-trivial
    np.testing.assert_allclose(values, expected, rtol=2e-6, atol=1e-12)  # %19.6e keeps 7 digits

    # a second run rewrites the file instead of appending
    assert _run(model_devi, ["-m", *map(str, models), "-s", str(system), "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2 + len(frames)


def test_identical_models_give_zero_deviation(water):
    tmp, system, models, frames = water
    out = tmp / "same.out"
    assert _run(model_devi, ["-m", str(models[0]), str(models[0]), "-s", str(system), "-o", str(out)]) == 0
    values = np.loadtxt(out)
    np.testing.assert_array_equal(values[:, 0], np.arange(len(frames)))
    np.testing.assert_allclose(values[:, 1:], 0.0, atol=1e-12)


def test_relative_atomic_and_extxyz_trajectory(tmp_path):
    """ASE trajectory (extxyz, Cu/Au fcc frames) with --relative, --relative_v and --atomic."""
    type_map = ["Cu", "Au"]
    rng = np.random.default_rng(0)
    images = []
    for k in range(4):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
        atoms.symbols[[1, 4]] = "Au"
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        images.append(atoms)
    trajectory = tmp_path / "md.extxyz"
    write(trajectory, images, format="extxyz")
    models = [_save(tmp_path, type_map, seed, f"cu{seed}.pt") for seed in (4, 5)]
    out = tmp_path / "rel.out"
    assert _run(model_devi, ["-m", *map(str, models), "-s", str(trajectory), "-o", str(out), "--relative", "1e-5",
                             "--relative_v", "0.02", "--atomic", "--batch-size", "3"]) == 0
    lines = out.read_text().splitlines()
    assert lines[1] == HEADER + "      atm_devi_f(N)"
    values = np.loadtxt(out)
    assert values.shape == (4, 8 + 8)
    frames = read_frames(trajectory, type_map=type_map)
    expected, atomic = _reference(models, frames, type_map, relative=1e-5, relative_v=0.02)
    np.testing.assert_allclose(values[:, :8], expected, rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(values[:, 8:], atomic, rtol=2e-6, atol=1e-12)
    absolute, _ = _reference(models, frames, type_map)
    assert absolute[:, 4].min() > 0
    assert np.all(values[:, 4] <= absolute[:, 4] / 1e-5 * (1 + 1e-6))  # eps / (|<F>| + level) <= eps / level


def test_non_periodic_cluster(tmp_path):
    """Isolated frames: forces/energy deviations as for periodic ones, virial from -sum r x dE/dr."""
    type_map = ["Cu", "Au"]
    cluster = bulk("Cu", "fcc", a=3.7, cubic=True)
    cluster.symbols[[0]] = "Au"
    cluster.pbc = False
    cluster.rattle(0.05, seed=3)
    path = tmp_path / "cluster.extxyz"
    write(path, [cluster, cluster], format="extxyz")
    models = [_save(tmp_path, type_map, seed, f"c{seed}.pt") for seed in (8, 9)]
    out = tmp_path / "cluster.out"
    assert _run(model_devi, ["-m", *map(str, models), "-s", str(path), "-o", str(out)]) == 0
    values = np.loadtxt(out)
    frames = read_frames(path, type_map=type_map)
    assert not frames[0][K.PBC].any()
    expected, _ = _reference(models, frames, type_map)
    np.testing.assert_allclose(values, expected, rtol=2e-6, atol=1e-12)
    assert values[0, 1] > 0 and values[0, 4] > 0
    np.testing.assert_allclose(values[0], values[1] + [-1, 0, 0, 0, 0, 0, 0, 0])


def test_model_devi_errors(water, tmp_path):
    tmp, system, models, _ = water
    cu = _save(tmp_path, ["Cu", "Au"], 7, "cu.pt")
    with pytest.raises(ConfigError, match="type map"):
        _run(model_devi, ["-m", str(models[0]), str(cu), "-s", str(system), "-o", str(tmp_path / "x.out")])
    with pytest.raises(ConfigError, match="at least two models"):
        _run(model_devi, ["-m", str(models[0]), "-s", str(system), "-o", str(tmp_path / "x.out")])
    # a failing run (--atomic on frames of different sizes) leaves an earlier output as it was
    mixed = tmp_path / "mixed.extxyz"
    small = bulk("Cu", "fcc", a=3.7, cubic=True)
    write(mixed, [small, small.repeat((2, 1, 1))], format="extxyz")
    previous = tmp_path / "previous.out"
    previous.write_text("# an earlier run\n")
    with pytest.raises(ConfigError, match="same number of atoms"):
        _run(model_devi, ["-m", str(cu), str(_save(tmp_path, ["Cu", "Au"], 8, "cu8.pt")), "-s", str(mixed),
                          "-o", str(previous), "--atomic"])
    assert previous.read_text() == "# an earlier run\n"


def test_neighbor_stat_fcc(tmp_path, capsys):
    a = 3.6
    crystal = bulk("Cu", "fcc", a=a, cubic=True).repeat((3, 3, 3))
    crystal.symbols[::4] = "Au"  # one Au per cubic cell: Au at the corners, Cu on the faces (L1_2)
    path = tmp_path / "fcc.extxyz"
    write(path, [crystal], format="extxyz")
    rcut = 0.5 * (a / np.sqrt(2) + a)  # between the first (12 at a/sqrt2) and second (6 at a) shells
    assert _run(neighbor_stat, ["-s", str(path), "-r", f"{rcut}", "-t", "Cu", "Au"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"min_nbor_dist: {a / np.sqrt(2):f}"
    # L1_2: each Au has 12 Cu neighbours; each Cu has 8 Cu and 4 Au -> max per neighbour type [12, 4]
    assert lines[1] == "max_nbor_size: [12, 4]"
    min_dist, sizes, names = neighbor_stat.neighbor_stat([str(path)], rcut, ["Au", "Cu"])
    assert min_dist == pytest.approx(a / np.sqrt(2), abs=1e-9) and sizes == [4, 12] and names == ["Au", "Cu"]
    assert neighbor_stat.neighbor_stat([str(path)], rcut, mixed_type=True)[1] == [12]
    # past the second shell: 12 + 6 neighbours in all
    assert neighbor_stat.neighbor_stat([str(path)], 0.5 * (a + a * np.sqrt(1.5)), mixed_type=True)[1] == [18]
    with pytest.raises(ConfigError, match="rcut"):
        neighbor_stat.neighbor_stat([str(path)], 0.0)


def test_through_mlpot_main(tmp_path, capsys):
    import mlpot.cli

    path = tmp_path / "cu.extxyz"
    write(path, [bulk("Cu", "fcc", a=3.6, cubic=True)], format="extxyz")
    assert mlpot.cli.main(["neighbor-stat", "-s", str(path), "-r", "3.0"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"min_nbor_dist: {3.6 / np.sqrt(2):f}", "max_nbor_size: [12]"]
    assert mlpot.cli.main(["neighbor-stat", "-s", str(path), "-r", "-1"]) == 2
    assert "rcut must be positive" in capsys.readouterr().err


def test_every_cli_command_is_registered_and_loads(capsys):
    import importlib

    import mlpot.cli

    for name in ("change-bias", "model-devi", "neighbor-stat"):
        assert name in mlpot.cli.COMMANDS
    for module, _ in mlpot.cli.COMMANDS.values():
        loaded = importlib.import_module(module)
        assert callable(loaded.add_arguments) and callable(loaded.run)
    with pytest.raises(SystemExit):
        mlpot.cli.main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in mlpot.cli.COMMANDS)
