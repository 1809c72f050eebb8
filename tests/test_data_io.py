"""Readers and writers: DeePMD systems, extxyz, round trips, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlpot.data import read_frames, read_systems, write_frames
from mlpot.data import keys as K
from mlpot.errors import DataError


def _assert_frames_equal(a, b, atol=0.0):
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        assert set(fa) == set(fb), set(fa) ^ set(fb)
        for key in fa:
            np.testing.assert_allclose(np.asarray(fa[key], dtype=float), np.asarray(fb[key], dtype=float),
                                       atol=atol, rtol=0, err_msg=key)


def test_water_systems_frame_counts(shared_data):
    systems = read_systems([shared_data("deepmd_water/data_0"), shared_data("deepmd_water/data_1"),
                            shared_data("deepmd_water/data_3")])
    assert [len(s) for s in systems] == [80, 160, 80]
    for system in systems:
        assert system.type_map == ["O", "H"]
        frame = system[0]
        assert frame[K.POSITIONS].shape == (192, 3) and frame[K.POSITIONS].dtype == np.float64
        assert np.bincount(frame[K.ATOM_TYPES]).tolist() == [64, 128]
        assert set(np.unique(frame[K.NUMBERS])) == {1, 8}
        assert frame[K.PBC].all() and np.allclose(np.diag(frame[K.CELL]), 12.44466, atol=1e-4)
        assert frame[K.ENERGY].shape == () and frame[K.FORCES].shape == (192, 3)
        assert K.VIRIAL not in frame  # no virial.npy: label absent, never a zero label
        assert frame[K.weight_key(K.ENERGY)] == 1.0
    # the two sets of data_1 are concatenated in order
    second_set = np.load(shared_data("deepmd_water/data_1") / "set.001" / "energy.npy")
    first_set_len = len(np.load(shared_data("deepmd_water/data_1") / "set.000" / "energy.npy"))
    assert systems[1][first_set_len][K.ENERGY] == pytest.approx(float(second_set[0]))
    mean_energy = np.mean([f[K.ENERGY] for f in systems[0]])
    assert mean_energy == pytest.approx(-29943.590, abs=1e-3)


def test_parent_directory_is_searched_for_systems(shared_data):
    systems = read_systems(shared_data("deepmd_water"))
    assert [len(s) for s in systems] == [80, 160, 80]


def test_type_map_remapped_by_name(shared_data):
    frames = read_frames(shared_data("deepmd_water/data_0"), type_map=["H", "X", "O"], index="0:2")
    assert len(frames) == 2 and frames.type_map == ["H", "X", "O"]
    assert np.bincount(frames[0][K.ATOM_TYPES], minlength=3).tolist() == [128, 0, 64]
    assert np.all(frames[0][K.NUMBERS][frames[0][K.ATOM_TYPES] == 2] == 8)


def test_nopbc_systems_and_merged_type_map(shared_data):
    systems = read_systems(shared_data("deepmd_nopbc"))
    assert [len(s) for s in systems] == [1562, 485, 15]
    assert [len(s[0][K.POSITIONS]) for s in systems] == [7, 10, 8]
    for system in systems:
        assert system.type_map == ["C", "H", "O"]
        assert not system[0][K.PBC].any() and not system[0][K.CELL].any()


def test_atomic_tensor_labels_and_dos(shared_data):
    atomic = read_frames(shared_data("deepmd_water_tensor/dipole/training_data_reformat/atomic_system"), index="0:3")
    assert atomic[0][K.ATOMIC_DIPOLE].shape == (192, 3)
    assert not atomic[0][K.PBC].any()  # nopbc flag although box.npy exists
    assert np.all(atomic[0][K.ATOMIC_DIPOLE][atomic[0][K.ATOM_TYPES] == 1] == 0)
    dos = read_frames(shared_data("deepmd_dos/heat-221"))
    assert len(dos) == 11 and dos[0][K.DOS].shape == (250,) and dos[0][K.ATOM_DOS].shape == (32, 250)


def test_water_clusters_charges_sum_to_total_charge(shared_data):
    frames = read_frames(shared_data("water_clusters_aims/water_clusters.xyz"))
    assert len(frames) == 150 and frames.type_map == ["O", "H"]
    charges = [f[K.TOTAL_CHARGE] for f in frames]
    assert sorted(set(np.round(charges).tolist())) == [-1.0, 0.0, 1.0]
    for frame in frames:
        assert frame[K.ATOMIC_MULTIPOLES].shape[1] == 9
        assert abs(frame[K.ATOMIC_MULTIPOLES][:, 0].sum() - frame[K.TOTAL_CHARGE]) < 1e-7
        assert np.abs(frame[K.FORCES].sum(0)).max() < 1e-6
        assert frame[K.EXTERNAL_FIELD].shape == (3,) and frame[K.DIPOLE].shape == (3,)
        np.testing.assert_array_equal(frame[K.weight_key(K.DIPOLE)], [1.0, 1.0, 1.0])
        assert not frame[K.PBC].any()
    # Fermi level follows the charge (README): 0 for -1, -5 for 0, -10 for +1
    for frame in frames:
        assert frame[K.FERMI_LEVEL] == pytest.approx({-1: 0.0, 0: -5.0, 1: -10.0}[round(float(frame[K.TOTAL_CHARGE]))])


def test_extxyz_round_trip(shared_data, tmp_path):
    frames = read_frames(shared_data("water_clusters_aims/water_clusters.xyz"), index="0:12")
    frames[3][K.weight_key(K.DIPOLE)] = np.array([0.0, 0.0, 1.0])  # a non-trivial weight survives too
    write_frames(tmp_path / "out.xyz", frames, "extxyz")
    again = read_frames(tmp_path / "out.xyz", type_map=frames.type_map)
    _assert_frames_equal(frames, again, atol=1e-8)  # ASE writes 8 decimals for per-atom arrays


def test_deepmd_npy_round_trip(shared_data, tmp_path):
    frames = read_frames(shared_data("deepmd_water/data_1"), index="0:7")
    write_frames(tmp_path / "sys", frames, "deepmd/npy", set_size=3)
    assert sorted(p.name for p in (tmp_path / "sys").glob("set.*")) == ["set.000", "set.001", "set.002"]
    again = read_frames(tmp_path / "sys")
    assert again.type_map == ["O", "H"]
    _assert_frames_equal(frames, again)
    # nopbc systems keep their flag
    mol = read_frames(shared_data("deepmd_nopbc/C4H3O1"))
    write_frames(tmp_path / "mol", mol, "deepmd/npy")
    assert (tmp_path / "mol" / "nopbc").exists()
    _assert_frames_equal(mol, read_frames(tmp_path / "mol"))


def test_deepmd_raw_format(shared_data, tmp_path):
    frames = read_frames(shared_data("deepmd_water/data_0"), index="0:4")
    system = tmp_path / "raw"
    system.mkdir()
    np.savetxt(system / "type.raw", frames[0][K.ATOM_TYPES], fmt="%d")
    (system / "type_map.raw").write_text("O\nH\n")
    for stem, key in [("coord", K.POSITIONS), ("box", K.CELL), ("energy", K.ENERGY), ("force", K.FORCES)]:
        np.savetxt(system / f"{stem}.raw", np.stack([f[key] for f in frames]).reshape(4, -1), fmt="%.17g")
    again = read_frames(system)
    assert len(again) == 4
    _assert_frames_equal(frames, again)


# ---- bad input ---------------------------------------------------------------------------------

def _copy_system(shared_data, tmp_path):
    target = tmp_path / "sys"
    shutil.copytree(shared_data("deepmd_water/data_0"), target)
    for file in target.rglob("*"):
        file.chmod(0o644 if file.is_file() else 0o755)
    target.chmod(0o755)
    return target


def test_force_shape_mismatch_names_file_and_key(shared_data, tmp_path):
    system = _copy_system(shared_data, tmp_path)
    force = np.load(system / "set.000" / "force.npy")
    np.save(system / "set.000" / "force.npy", force[:, :-3])
    with pytest.raises(DataError, match=r"set\.000/force\.npy: force: has 573 values per frame, expected 192 atoms"):
        read_frames(system)


def test_nan_forces_in_extxyz_name_file_frame_and_key(shared_data, tmp_path):
    lines = (shared_data("water_clusters_aims/water_clusters.xyz")).read_text().splitlines()
    n_first = int(lines[0])
    start = n_first + 2  # second frame
    columns = lines[start + 3].split()
    columns[4] = "nan"
    lines[start + 3] = " ".join(columns)
    bad = tmp_path / "bad.xyz"
    bad.write_text("\n".join(lines[: start + int(lines[start]) + 2]) + "\n")
    with pytest.raises(DataError, match=r"bad\.xyz: frame 1: AIMS_forces: non-finite value"):
        read_frames(bad)


def test_unknown_format_and_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"unknown format 'vasp'; valid formats are deepmd/npy"):
        read_frames(tmp_path, fmt="vasp")
    with pytest.raises(DataError, match=r"nowhere: path does not exist"):
        read_frames(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"nowhere: path does not exist"):
        read_systems([tmp_path / "nowhere"])
    (tmp_path / "file.cif").write_text("x")
    with pytest.raises(DataError, match=r"cannot detect the format"):
        read_frames(tmp_path / "file.cif")


def test_inconsistent_type_maps(shared_data, tmp_path):
    with pytest.raises(DataError, match=r"type_map\.raw: type_map: element\(s\) \['O'\] of type_map\.raw"
                                        r" \['O', 'H'\] not in the type_map \['H'\]"):
        read_frames(shared_data("deepmd_water/data_0"), type_map=["H"])
    with pytest.raises(DataError, match=r"frame 0: species: element\(s\) \['O'\] not in the type_map"):
        read_frames(shared_data("water_clusters_aims/water_clusters.xyz"), type_map=["H"])
    system = _copy_system(shared_data, tmp_path)
    (system / "type_map.raw").write_text("O\n")
    with pytest.raises(DataError, match=r"type\.raw: type: type index 1 but type_map\.raw lists only 1"):
        read_frames(system)


def test_periodic_system_without_box(shared_data, tmp_path):
    system = _copy_system(shared_data, tmp_path)
    (system / "set.000" / "box.npy").unlink()
    with pytest.raises(DataError, match=r"box: periodic system without box\.npy"):
        read_frames(system)


def test_partial_labels_cannot_be_written_as_deepmd(shared_data, tmp_path):
    frames = read_frames(shared_data("deepmd_water/data_0"), index="0:2")
    del frames[1][K.FORCES]
    with pytest.raises(DataError, match=r"force: label present in some frames only"):
        write_frames(tmp_path / "x", frames, "deepmd/npy")


def test_label_gated_per_set_and_frame_count_mismatch(shared_data, tmp_path):
    system = _copy_system(shared_data, tmp_path)
    frames = read_frames(system)
    write_frames(tmp_path / "two", frames[:6], "deepmd/npy", set_size=3)
    (tmp_path / "two" / "set.001" / "energy.npy").unlink()  # find_energy = 0 in the second set
    gated = read_frames(tmp_path / "two")
    assert [K.ENERGY in f for f in gated] == [True] * 3 + [False] * 3
    assert all(K.weight_key(K.ENERGY) not in f for f in gated[3:])
    energy = np.load(system / "set.000" / "energy.npy")
    np.save(system / "set.000" / "energy.npy", energy[:-1])
    with pytest.raises(DataError, match=r"set\.000/energy\.npy: energy: holds 79 values .*not a whole number of rows "
                                         r"for the 80 frames of coord"):
        read_frames(system)


def test_npy_tables_are_laid_out_by_the_frame_count_as_deepmd_does(shared_data, tmp_path):
    """DeePMD-kit reshapes every table to (n_frames, -1) with n_frames from coord.npy: the fparam
    example's aparam.npy of shape (1, 5400) holds 100 frames x 54 atoms. A file the model does not
    read (``skip``) is not opened at all."""
    system = _copy_system(shared_data, tmp_path)
    n_frames, n_atoms = np.load(system / "set.000" / "coord.npy").shape[0], len((system / "type.raw").read_text().split())
    aparam = np.arange(n_frames * n_atoms, dtype=np.float64)
    np.save(system / "set.000" / "aparam.npy", aparam.reshape(1, -1))
    frames = read_frames(system)
    np.testing.assert_array_equal(frames[3][K.APARAM][:, 0], aparam.reshape(n_frames, n_atoms)[3])
    np.save(system / "set.000" / "aparam.npy", aparam[:-1])  # malformed, but unused
    with pytest.raises(DataError, match=r"aparam\.npy: aparam: holds"):
        read_frames(system)
    assert K.APARAM not in read_frames(system, skip=(K.APARAM,))[0]


def test_mixed_type_system_drops_virtual_atoms(tmp_path):
    """deepmd/npy/mixed (spec §1.4): per-frame real_atom_types, -1 marks a padding atom."""
    system = tmp_path / "mixed"
    (system / "set.000").mkdir(parents=True)
    np.savetxt(system / "type.raw", np.zeros(4, dtype=int), fmt="%d")
    (system / "type_map.raw").write_text("C\nH\nO\n")
    (system / "nopbc").touch()
    coord = np.arange(2 * 12, dtype=float).reshape(2, 12)
    np.save(system / "set.000" / "coord.npy", coord)
    np.save(system / "set.000" / "energy.npy", np.array([-1.0, -2.0]))
    np.save(system / "set.000" / "real_atom_types.npy", np.array([[0, 1, 1, -1], [2, 1, 0, 1]]))
    frames = read_frames(system)
    assert [len(f[K.POSITIONS]) for f in frames] == [3, 4]
    assert frames[0][K.ATOM_TYPES].tolist() == [0, 1, 1] and frames[1][K.NUMBERS].tolist() == [8, 1, 6, 1]
    np.testing.assert_array_equal(frames[0][K.POSITIONS], coord[0].reshape(4, 3)[:3])


def test_extxyz_round_trip_periodic_with_stress_and_virial(shared_data, tmp_path):
    frames = read_frames(shared_data("deepmd_water/data_0"), index="0:3")
    rng = np.random.default_rng(0)
    for frame in frames:
        virial = rng.normal(size=(3, 3))
        virial = virial + virial.T
        frame[K.VIRIAL] = virial
        frame[K.STRESS] = -virial / abs(np.linalg.det(frame[K.CELL]))
        frame[K.weight_key(K.VIRIAL)] = np.array(1.0)
        frame[K.weight_key(K.STRESS)] = np.array(1.0)
    write_frames(tmp_path / "water.xyz", frames, "extxyz")
    again = read_frames(tmp_path / "water.xyz")
    assert again.type_map == ["O", "H"] and again[0][K.PBC].all()
    _assert_frames_equal(frames, again, atol=1e-8)
    # a Voigt-6 stress (ASE's calculator convention) is read as the full symmetric tensor
    text = (tmp_path / "water.xyz").read_text()
    assert "stress=" in text


def test_extxyz_key_map_precedence(shared_data, tmp_path):
    frames = read_frames(shared_data("water_clusters_aims/water_clusters.xyz"), index="0:2")
    for frame in frames:
        frame[K.ATOM_ENERGY] = np.full(len(frame[K.POSITIONS]), 0.5)  # written as 'atom_energy'
    write_frames(tmp_path / "c.xyz", frames, "extxyz")
    text = (tmp_path / "c.xyz").read_text().replace("Properties=", "my_e=-1.5 Properties=")
    (tmp_path / "c.xyz").write_text(text)
    # the file holds 'energy' (ours) and 'my_e': the user's key map wins; None drops a default
    again = read_frames(tmp_path / "c.xyz", key_map={"my_e": K.ENERGY, "atom_energy": None})
    assert again[0][K.ENERGY] == -1.5 and K.ATOM_ENERGY not in again[0]
    assert read_frames(tmp_path / "c.xyz")[0][K.ENERGY] == pytest.approx(frames[0][K.ENERGY])
    with pytest.raises(DataError, match=r"key_map: key_map maps 'my_e' to unknown batch key 'energi' "
                                        r"\(did you mean 'energy'\?\)"):
        read_frames(tmp_path / "c.xyz", key_map={"my_e": "energi"})


def test_truncated_npy_and_bad_type_raw(shared_data, tmp_path):
    system = _copy_system(shared_data, tmp_path)
    force = system / "set.000" / "force.npy"
    force.write_bytes(force.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"set\.000/force\.npy: force: cannot read"):
        read_frames(system)
    (system / "type.raw").write_text("0 1 O\n")
    with pytest.raises(DataError, match=r"type\.raw: type: expected whitespace-separated integers"):
        read_frames(system)
