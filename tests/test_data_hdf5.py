"""DeePMD-kit's HDF5 data format ``deepmd/hdf5`` (spec deepmd.md §1.3).

The same system tree is written by hand as an npy directory and as an HDF5 group (dpdata's layout:
``type.raw`` int dataset, ``type_map.raw`` byte strings, ``nopbc`` dataset, ``set.NNN/<name>.npy``
datasets); both are read and must give identical frames. Then: the writer's round trip, a file with
several systems, errors naming ``file.h5#/group/...`` and the key, the config checks, and one
``mlpot train input.json`` + ``mlpot test`` on ``data.h5#/sys0``.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from mlpot.cli import main
from mlpot.config import deepmd, validate_config
from mlpot.data import compute_statistics, detect_format, read_frames, read_systems, write_frames
from mlpot.data import keys as K
from mlpot.data.deepmd_format import (find_deepmd_systems, is_deepmd_system, read_deepmd, write_deepmd_hdf5,
                                      write_deepmd_npy)
from mlpot.errors import ConfigError, DataError

# file types of the synthetic system and its type_map.raw; read onto ["O", "H", "C"] they become [1, 0, 0, 1, 0]
TYPES = np.array([0, 1, 1, 0, 1])
FILE_TYPE_MAP = ["H", "O"]
MODEL_TYPE_MAP = ["O", "H", "C"]


def _tree(seed=0, sets=(3, 2), periodic=True, virial_sets=(0,), n_atoms=5):
    """{entry: array} of one system: set.000 has every label, virial only in ``virial_sets``.

    Positions Å in a 6 Å cubic box, energies eV, forces eV/Å, virial eV; atom_pref and fparam as inputs.
    """
    rng = np.random.default_rng(seed)
    types = TYPES if n_atoms == 5 else np.arange(n_atoms) % 2
    tree = {"type.raw": types, "type_map.raw": FILE_TYPE_MAP}
    if not periodic:
        tree["nopbc"] = True
    for s, n in enumerate(sets):
        folder = f"set.{s:03d}/"
        tree[folder + "coord.npy"] = rng.uniform(0, 6, (n, n_atoms * 3))
        if periodic:
            box = np.tile(np.diag([6.0, 6.0, 6.0]).reshape(1, 9), (n, 1))
            box[:, 1] = 0.3 * s  # a tilt, so that the 3x3 order is checked
            tree[folder + "box.npy"] = box
        tree[folder + "energy.npy"] = rng.normal(size=n)
        tree[folder + "force.npy"] = rng.normal(size=(n, n_atoms * 3))
        if s in virial_sets:
            tree[folder + "virial.npy"] = rng.normal(size=(n, 9))
        tree[folder + "atom_pref.npy"] = rng.uniform(0.5, 2.0, (n, n_atoms))
        tree[folder + "fparam.npy"] = rng.normal(size=(n, 2))
    return tree


def _write_dir(tree, path):
    path.mkdir(parents=True)
    for name, value in tree.items():
        file = path / name
        file.parent.mkdir(exist_ok=True)
        if name == "type.raw":
            np.savetxt(file, value, fmt="%d")
        elif name == "type_map.raw":
            file.write_text("\n".join(value) + "\n")
        elif name == "nopbc":
            file.touch()
        else:
            np.save(file, value)
    return path


def _write_group(tree, file, group):
    """The tree in dpdata's deepmd/hdf5 layout."""
    with h5py.File(file, "a") as handle:
        g = handle.require_group(group)
        for name, value in tree.items():
            if name == "type_map.raw":
                g.create_dataset(name, data=np.array(value, dtype="S"))
            else:
                g.create_dataset(name, data=value)  # "set.000/coord.npy" creates the subgroup
    return f"{file}#{group}"


def _assert_same_frames(a, b):
    assert len(a) == len(b) and a.type_map == b.type_map
    for i, (fa, fb) in enumerate(zip(a, b)):
        assert sorted(fa) == sorted(fb), i
        for key in fa:
            assert fa[key].dtype == fb[key].dtype, (i, key)
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=f"frame {i} {key}")


def test_hdf5_group_reads_exactly_like_the_npy_directory(tmp_path):
    tree = _tree()
    npy = read_deepmd(_write_dir(tree, tmp_path / "sys0"), type_map=MODEL_TYPE_MAP)
    path = _write_group(tree, tmp_path / "data.h5", "/H2O")
    h5 = read_deepmd(path, type_map=MODEL_TYPE_MAP)
    _assert_same_frames(npy, h5)
    assert h5.source == f"{tmp_path / 'data.h5'}#/H2O"
    # the values themselves: types re-mapped by name, per-set label gating, 3x3 box row-major
    assert len(h5) == 5
    for frame in h5:
        assert frame[K.ATOM_TYPES].tolist() == [1, 0, 0, 1, 0]
        assert frame[K.NUMBERS].tolist() == [1, 8, 8, 1, 8]  # H O O H O
        assert frame[K.PBC].tolist() == [True, True, True]
    np.testing.assert_array_equal(h5[4][K.FORCES], tree["set.001/force.npy"][1].reshape(5, 3))
    np.testing.assert_array_equal(h5[3][K.POSITIONS], tree["set.001/coord.npy"][0].reshape(5, 3))
    np.testing.assert_array_equal(h5[3][K.CELL], [[6, 0.3, 0], [0, 6, 0], [0, 0, 6]])
    np.testing.assert_array_equal(h5[1][K.VIRIAL], tree["set.000/virial.npy"][1].reshape(3, 3))
    assert float(h5[1][K.weight_key(K.VIRIAL)]) == 1.0
    assert K.VIRIAL not in h5[3] and K.weight_key(K.VIRIAL) not in h5[3]  # virial.npy in set.000 only
    np.testing.assert_array_equal(h5[2][K.ATOM_PREF], tree["set.000/atom_pref.npy"][2])
    np.testing.assert_array_equal(h5[4][K.FPARAM], tree["set.001/fparam.npy"][1])
    assert h5[0][K.ENERGY] == tree["set.000/energy.npy"][0]
    # without a requested type map the file's names are kept; a frame slice reads the same frames
    assert read_deepmd(path).type_map == FILE_TYPE_MAP
    _assert_same_frames(read_deepmd(path, type_map=MODEL_TYPE_MAP, index=slice(2, 4)), npy[2:4])


def test_hdf5_nopbc_flag_and_other_encodings(tmp_path):
    tree = _tree(seed=1, sets=(4,), periodic=False)
    npy = read_deepmd(_write_dir(tree, tmp_path / "mol"), type_map=MODEL_TYPE_MAP)
    h5 = read_deepmd(_write_group(tree, tmp_path / "d.h5", "/mol"), type_map=MODEL_TYPE_MAP)
    _assert_same_frames(npy, h5)
    assert h5[0][K.PBC].tolist() == [False] * 3 and not np.any(h5[0][K.CELL])
    # type.raw as float, type_map.raw as one string: still read
    with h5py.File(tmp_path / "d.h5", "a") as f:
        f.copy(f["/mol"], "/alt")
        del f["/alt/type.raw"], f["/alt/type_map.raw"]
        f["/alt"].create_dataset("type.raw", data=TYPES.astype(float))
        f["/alt"].create_dataset("type_map.raw", data="H O")
    _assert_same_frames(read_deepmd(f"{tmp_path / 'd.h5'}#/alt", type_map=MODEL_TYPE_MAP), npy)


def test_write_deepmd_hdf5_round_trip_matches_npy(tmp_path):
    frames = read_deepmd(_write_dir(_tree(seed=2, sets=(5,)), tmp_path / "src"), type_map=MODEL_TYPE_MAP)
    path = write_deepmd_hdf5(tmp_path / "out.h5#/a/sys", frames, type_map=MODEL_TYPE_MAP, set_size=2)
    assert str(path) == f"{tmp_path / 'out.h5'}#/a/sys"
    npy = write_deepmd_npy(tmp_path / "out_npy", frames, type_map=MODEL_TYPE_MAP, set_size=2)
    _assert_same_frames(read_deepmd(path, type_map=MODEL_TYPE_MAP), frames)
    _assert_same_frames(read_deepmd(npy, type_map=MODEL_TYPE_MAP), frames)
    with h5py.File(tmp_path / "out.h5") as f:
        g = f["/a/sys"]
        assert sorted(g) == ["set.000", "set.001", "set.002", "type.raw", "type_map.raw"]
        assert [s.decode() for s in g["type_map.raw"][()]] == MODEL_TYPE_MAP
        assert g["type.raw"][()].tolist() == [1, 0, 0, 1, 0]
        assert g["set.002/force.npy"].shape == (1, 15) and g["set.000/box.npy"].shape == (2, 9)
        for name in g["set.000"]:  # the same arrays as the npy files, entry by entry
            np.testing.assert_array_equal(g["set.000"][name][()], np.load(npy / "set.000" / name))
    # rewriting replaces the system; a non-periodic one gets the nopbc dataset; write_frames dispatches
    molecule = read_deepmd(_write_dir(_tree(seed=3, sets=(2,), periodic=False), tmp_path / "m"))
    again = write_frames(tmp_path / "out.h5#/a/sys", molecule, "hdf5")
    with h5py.File(tmp_path / "out.h5") as f:
        assert sorted(f["/a/sys"]) == ["nopbc", "set.000", "type.raw", "type_map.raw"]
    assert detect_format(again) == "deepmd/hdf5"
    _assert_same_frames(read_frames(again), molecule)
    with h5py.File(tmp_path / "open.h5", "w") as f:  # an open group
        write_deepmd_hdf5(f.create_group("g"), frames, type_map=MODEL_TYPE_MAP)
    _assert_same_frames(read_frames(f"{tmp_path / 'open.h5'}#/g", type_map=MODEL_TYPE_MAP), frames)


def test_file_without_group_means_every_system_in_it(tmp_path):
    file = tmp_path / "data.h5"
    _write_group(_tree(seed=4, sets=(2,)), file, "/sys1")
    _write_group(_tree(seed=5, sets=(3,), n_atoms=4), file, "/nested/sys0")
    with h5py.File(file, "a") as f:
        f.create_group("/empty")
    assert find_deepmd_systems(file) == [file.parent / "data.h5#/nested/sys0", file.parent / "data.h5#/sys1"]
    assert find_deepmd_systems(f"{file}#/nested") == [file.parent / "data.h5#/nested/sys0"]
    assert not is_deepmd_system(file) and is_deepmd_system(f"{file}#/sys1")
    assert not is_deepmd_system(f"{file}#/missing") and not is_deepmd_system(tmp_path / "none.h5#/x")
    systems = read_systems([file])
    assert [len(s) for s in systems] == [3, 2] and [s.source for s in systems] == [
        f"{file}#/nested/sys0", f"{file}#/sys1"]
    assert systems[0][0][K.ATOM_TYPES].tolist() == [0, 1, 0, 1]
    # a directory next to an HDF5 group in one list, on a common type map
    mixed = read_systems([f"{file}#/sys1", _write_dir(_tree(seed=6, sets=(1,)), tmp_path / "dir")],
                         type_map=MODEL_TYPE_MAP)
    assert [len(s) for s in mixed] == [2, 1] and mixed[0].type_map == MODEL_TYPE_MAP
    # statistics cache keyed by the file of each group: a second call is read back
    first = compute_statistics(systems, systems[0].type_map, cache=tmp_path / "cache")
    again = compute_statistics(read_systems([file]), systems[0].type_map, cache=tmp_path / "cache")
    assert not first.from_cache and again.from_cache and again.label_counts == first.label_counts


def test_errors_name_the_hdf5_path_and_key(tmp_path):
    file = tmp_path / "data.h5"
    tree = _tree(seed=7, sets=(2, 2))
    tree["set.001/force.npy"] = np.zeros((2, 14))  # one value short
    _write_group(tree, file, "/sys0")
    with pytest.raises(DataError) as info:
        read_deepmd(f"{file}#/sys0")
    assert info.value.file == f"{file}#/sys0/set.001/force.npy" and info.value.key == "force"
    assert "has 14 values per frame, expected 5 atoms x 3 = 15" in str(info.value)

    with pytest.raises(DataError, match=r"no such group in the HDF5 file \(systems in it: /sys0\)") as info:
        read_deepmd(f"{file}#/sys9")
    assert info.value.file == str(file) and info.value.key == "/sys9"
    with pytest.raises(DataError, match="no such group"):
        read_systems([f"{file}#/sys9"])

    with h5py.File(file, "a") as f:
        del f["/sys0/set.000/coord.npy"]
    with pytest.raises(DataError) as info:
        read_deepmd(f"{file}#/sys0")
    assert info.value.file == f"{file}#/sys0" and info.value.key == "coord" and "no coord.npy found" in str(info.value)

    with h5py.File(file, "a") as f:
        f.create_dataset("/bad/type.raw", data=TYPES)
        f.create_dataset("/bad/set.000/coord.npy", data=np.zeros((1, 15)))
    with pytest.raises(DataError) as info:
        read_deepmd(f"{file}#/bad")
    assert info.value.file == f"{file}#/bad/set.000" and info.value.key == "box"  # periodic without box.npy

    with pytest.raises(DataError, match="path does not exist"):
        read_frames(tmp_path / "none.h5#/sys0")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        read_deepmd(tmp_path / "text.h5")
    with pytest.raises(DataError, match="no DeePMD system"):
        read_systems([f"{file}#/sys0/set.001"])


def _input(tmp_path, systems, steps=4):
    """A tiny se_e2_a DeePMD input.json dict (periodic 5-atom synthetic data)."""
    return {
        "model": {"type_map": MODEL_TYPE_MAP,
                  "descriptor": {"type": "se_e2_a", "sel": [8, 8, 8], "rcut": 3.0, "rcut_smth": 1.0,
                                 "neuron": [4, 8], "axis_neuron": 2, "seed": 1},
                  "fitting_net": {"neuron": [8], "seed": 2}, "data_stat_nbatch": 1},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 2},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1.0, "start_pref_f": 100.0,
                 "limit_pref_f": 1.0},
        "training": {"training_data": {"systems": systems, "batch_size": 1}, "numb_steps": steps, "seed": 3,
                     "disp_file": "lcurve.out", "disp_freq": 1, "save_freq": steps},
    }


def test_config_accepts_hdf5_groups_and_names_a_missing_one(tmp_path):
    _write_group(_tree(seed=8, sets=(2,)), tmp_path / "data.h5", "/sys0")
    _write_group(_tree(seed=9, sets=(2,)), tmp_path / "data.h5", "/sys1")
    native = validate_config(deepmd.convert_dict(_input(tmp_path, ["data.h5#/sys0", "data.h5"]), base_dir=tmp_path),
                             base_dir=tmp_path)
    assert native.data.train.paths == [f"{tmp_path / 'data.h5'}#/sys0", str(tmp_path / "data.h5")]
    # a single string is a root: every system of the file
    native = deepmd.convert_dict(_input(tmp_path, "data.h5"), base_dir=tmp_path)
    assert native["data"]["train"]["paths"] == [f"{tmp_path / 'data.h5'}#/sys0", f"{tmp_path / 'data.h5'}#/sys1"]
    with pytest.raises(ConfigError, match=r"no group /sys7 in the HDF5 file .*data\.h5") as info:
        validate_config(deepmd.convert_dict(_input(tmp_path, ["data.h5#/sys7"]), base_dir=tmp_path), base_dir=tmp_path)
    assert info.value.key == "data.train.paths[0]"
    with pytest.raises(ConfigError, match=r"no such file: .*other\.h5"):
        validate_config(deepmd.convert_dict(_input(tmp_path, ["other.h5#/sys0"]), base_dir=tmp_path), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="no such file or directory"):
        validate_config(deepmd.convert_dict(_input(tmp_path, ["other.h5"]), base_dir=tmp_path), base_dir=tmp_path)


def _errors(out):
    return {name: float(value) for name, value in re.findall(r"^(Energy RMSE|Force  RMSE)\s+: (\S+)", out, re.M)}


def test_input_json_trains_and_tests_on_an_hdf5_group(tmp_path, monkeypatch, capsys):
    tree = _tree(seed=10, sets=(3, 3), virial_sets=(0, 1))
    _write_group(tree, tmp_path / "data.h5", "/sys0")
    _write_dir(tree, tmp_path / "sys0_npy")
    (tmp_path / "input.json").write_text(json.dumps(_input(tmp_path, ["data.h5#/sys0"])))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    rows = np.loadtxt(tmp_path / "lcurve.out", ndmin=2)
    assert rows.shape[0] == 4 and np.all(np.isfinite(rows))
    assert main(["freeze", "-o", "frozen.pth"]) == 0
    capsys.readouterr()
    assert main(["test", "-m", "frozen.pth", "-s", "data.h5#/sys0"]) == 0
    out_h5 = capsys.readouterr().out
    assert "testing system : data.h5#/sys0" in out_h5 and "number of test data : 6" in out_h5
    assert main(["test", "-m", "frozen.pth", "-s", "sys0_npy"]) == 0
    out_npy = capsys.readouterr().out
    assert len(_errors(out_h5)) == 2 and _errors(out_h5) == _errors(out_npy)  # the same frames, the same errors
