"""DeePMD-kit systems: the ``deepmd/npy``, ``deepmd/raw`` and ``deepmd/hdf5`` formats (deepmd.md §1.1-1.3).

A system is a directory with ``type.raw`` (one type index per atom), an optional ``type_map.raw``
(type names), an optional empty ``nopbc`` flag and either ``set.*/<name>.npy`` folders (npy) or
``<name>.raw`` text files (raw), one frame per row. Units as in DeePMD-kit: Å, eV, eV/Å, virial eV.
The HDF5 format is the same tree inside an HDF5 group, addressed as ``file.h5#/group``: ``type.raw``
(integer dataset), ``type_map.raw`` (byte strings), ``nopbc`` (a dataset whose presence marks a
non-periodic system) and ``set.NNN`` subgroups holding datasets named like the npy files
(``coord.npy``, ``force.npy``, ...). A bare ``file.h5`` is its root group for :func:`read_deepmd`;
:func:`find_deepmd_systems` expands it (or any group) to every group below that holds ``type.raw``.
One reading routine serves both through a small "system source" (``mlpot.data.deepmd_sources``).

Label gating follows DeePMD's ``find_*``: a missing label file means the label is absent from the
frame (weight 0 when batched), never a zero label; the same holds for ``drdq`` (generalised-force
loss). Loss inputs ``atom_ener_coeff``, ``atom_weight``, ``atom_pref``: read when present (the
trainer checks that a loss option that needs one finds it in every system). Types are re-mapped by *name* onto a requested
``type_map`` when the system has ``type_map.raw``. Written by hand because dpdata (the usual
converter) is a heavy dependency and the format is a handful of numpy files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mlpot.data import keys as K
from mlpot.data.deepmd_sources import (HDF5_SUFFIXES, find_deepmd_systems, hdf5_group_exists, hdf5_name,
                                       is_deepmd_system, open_system, split_hdf5_path, system_type_map)
from mlpot.data.frames import FrameList, check_finite, numbers_from_type_map, present_weight
from mlpot.errors import DataError

__all__ = ["read_deepmd", "write_deepmd_npy", "write_deepmd_hdf5", "is_deepmd_system", "find_deepmd_systems",
           "split_hdf5_path", "hdf5_group_exists", "system_type_map", "HDF5_SUFFIXES"]

# file stem -> (our key, per-atom?, trailing shape per atom or per frame (-1: inferred))
_LABEL_FILES = {
    "energy": (K.ENERGY, False, ()),
    "force": (K.FORCES, True, (3,)),
    "virial": (K.VIRIAL, False, (3, 3)),
    "atom_ener": (K.ATOM_ENERGY, True, ()),
    "dipole": (K.DIPOLE, False, (3,)),
    "atomic_dipole": (K.ATOMIC_DIPOLE, True, (3,)),
    "polarizability": (K.POLARIZABILITY, False, (3, 3)),
    "atomic_polarizability": (K.ATOMIC_POLARIZABILITY, True, (3, 3)),
    "dos": (K.DOS, False, (-1,)),
    "atom_dos": (K.ATOM_DOS, True, (-1,)),
    "hessian": (K.HESSIAN, False, (-1,)),
    "force_mag": (K.FORCE_MAG, True, (3,)),
}
# inputs (no weight)
_INPUT_FILES = {
    "atom_pref": (K.ATOM_PREF, True, ()),
    "atom_ener_coeff": (K.ATOM_ENER_COEFF, True, ()),
    "atom_weight": (K.ATOM_WEIGHT, True, ()),
    "drdq": (K.DRDQ, True, (-1,)),
    "fparam": (K.FPARAM, False, (-1,)),
    "aparam": (K.APARAM, True, (-1,)),
    "spin": (K.SPIN, True, (3,)),
}
_FILES = {**_LABEL_FILES, **_INPUT_FILES}
_STEM_OF = {key: stem for stem, (key, _, _) in _FILES.items()}


# ---- system sources: a directory or an HDF5 group ---------------------------------------------------


























def _read_table(source, name: str, raw: bool, n_frames: Optional[int] = None) -> np.ndarray:
    """(n_frames, columns) float64 table of a .npy or .raw entry; DataError if unreadable.

    With ``n_frames`` (the frame count of coord) the values are laid out as DeePMD-kit does,
    ``reshape(n_frames, -1)`` whatever the stored shape: an aparam.npy of shape (1, 5400) holds
    100 frames of 54 values."""
    key = name.rsplit(".", 1)[0]
    try:
        array = source.table(name, raw).astype(np.float64)
    except (ValueError, OSError, EOFError, TypeError) as exc:
        raise DataError(f"cannot read ({exc})", file=source.where(name), key=key) from None
    if array.ndim == 0:
        raise DataError("holds a scalar, expected one row per frame", file=source.where(name), key=key)
    if n_frames is None:
        return array.reshape(array.shape[0], -1)
    if n_frames == 0 or array.size % n_frames:
        raise DataError(f"holds {array.size} values (shape {array.shape}), not a whole number of rows for the "
                        f"{n_frames} frames of coord", file=source.where(name), key=key)
    return array.reshape(n_frames, -1)


def _reshape(array: np.ndarray, file: Path, key: str, n_atoms: int, atomic: bool, shape,
             sel_atoms: Optional[np.ndarray]):
    """Reshape a (n_frames, columns) table into per-frame arrays; DataError on a size mismatch."""
    n_frames, columns = array.shape
    if atomic:
        rows = n_atoms
        if shape == (-1,):
            if columns % n_atoms:
                raise DataError(f"has {columns} values per frame, not a multiple of {n_atoms} atoms",
                                file=file, key=key)
            shape = (columns // n_atoms,)
        per_atom = int(np.prod(shape))
        if columns != rows * per_atom and sel_atoms is not None and columns == len(sel_atoms) * per_atom:
            # atomic tensor given for the selected types only: place rows, zeros elsewhere
            full = np.zeros((n_frames, n_atoms) + tuple(shape))
            full[:, sel_atoms] = array.reshape((n_frames, len(sel_atoms)) + tuple(shape))
            return full
        if columns != rows * per_atom:
            raise DataError(f"has {columns} values per frame, expected {rows} atoms x {per_atom} = "
                            f"{rows * per_atom} (shape mismatch with type.raw/coord.npy)",
                            file=file, key=key)
        return array.reshape((n_frames, rows) + tuple(shape))
    if key == "hessian" and columns != (3 * n_atoms) ** 2:
        raise DataError(f"has {columns} values per frame, expected (3 x {n_atoms} atoms)^2 = {(3 * n_atoms) ** 2} "
                        "(d²E/dR², row-major, eV/Å^2)", file=file, key=key)
    if shape == (-1,):
        return array
    if columns != int(np.prod(shape)):
        raise DataError(f"has {columns} values per frame, expected {int(np.prod(shape))}",
                        file=file, key=key)
    return array.reshape((n_frames,) + tuple(shape))


def _selected_atoms(types: np.ndarray, columns: int, per_atom: int) -> Optional[np.ndarray]:
    """Atoms of the smallest set of types whose atom count matches a reduced atomic-label table."""
    if columns % per_atom:
        return None
    wanted = columns // per_atom
    counts = np.bincount(types)
    for mask in range(1, 2 ** len(counts)):
        chosen = [t for t in range(len(counts)) if mask >> t & 1]
        if counts[chosen].sum() == wanted:
            return np.flatnonzero(np.isin(types, chosen))
    return None


def _resolve_types(system, types: np.ndarray, type_map: Optional[Sequence[str]]):
    file_map = system.words("type_map.raw") if system.is_file("type_map.raw") else None
    if file_map is not None and types.size and types.max() >= len(file_map):
        raise DataError(f"type index {int(types.max())} but type_map.raw lists only {len(file_map)} "
                        f"names {file_map}", file=system.where("type.raw"), key="type")
    if type_map is None:
        names = file_map or [f"Type_{t}" for t in range(int(types.max()) + 1 if types.size else 0)]
        return types, list(names)
    type_map = list(type_map)
    if file_map is None:
        if types.size and types.max() >= len(type_map):
            raise DataError(f"type index {int(types.max())} outside the type_map {type_map}",
                            file=system.where("type.raw"), key="type")
        return types, type_map
    missing = [name for name in file_map if name not in type_map]
    used = set(np.unique(types).tolist())
    if any(file_map.index(name) in used for name in missing):
        raise DataError(f"element(s) {missing} of type_map.raw {file_map} not in the type_map "
                        f"{type_map} (inconsistent type maps)", file=system.where("type_map.raw"), key="type_map")
    remap = np.array([type_map.index(n) if n in type_map else -1 for n in file_map], dtype=np.int64)
    return remap[types], type_map


def read_deepmd(path, *, type_map: Optional[Sequence[str]] = None, raw: Optional[bool] = None,
                index=slice(None), skip: Collection[str] = ()) -> FrameList:
    """Read one DeePMD system (directory, or HDF5 group ``file.h5#/group``) into a :class:`FrameList`.

    ``raw`` selects ``deepmd/raw`` (``*.raw`` tables) over ``deepmd/npy`` (``set.*``); None
    detects it. ``type_map`` re-maps the types by name (spec §1.1). ``index`` selects frames.
    ``skip``: batch keys whose files are not read (inputs or labels the model does not use), so
    a malformed file of such a key is no error.
    A bare ``file.h5`` reads the file's root group as the system.
    """
    with open_system(path) as system:  # everything is read into memory before an HDF5 file closes
        return _read_system(system, type_map, raw, index, skip)


def _read_columns(folders, suffix: str, raw: bool, types: np.ndarray, periodic: bool, skip: Collection[str]):
    """({key: [one (frames, ...) array per folder that has the file]}, frames per folder) of the
    coordinates, box, labels and inputs of every set (or of the system for ``deepmd/raw``)."""
    n_atoms = types.size
    columns: Dict[str, List[np.ndarray]] = {}
    set_lengths = []
    for folder in folders:
        coord_name = f"coord{suffix}"
        coord = _read_table(folder, coord_name, raw)
        coord = _reshape(coord, folder.where(coord_name), "coord", n_atoms, True, (3,), None)
        n_frames = coord.shape[0]
        set_lengths.append(n_frames)
        columns.setdefault(K.POSITIONS, []).append(coord)
        box_name = f"box{suffix}"
        if folder.is_file(box_name):
            columns.setdefault(K.CELL, []).append(_reshape(_read_table(folder, box_name, raw), folder.where(box_name),
                                                           "box", n_atoms, False, (3, 3), None))
        elif periodic:
            raise DataError(f"periodic system without box{suffix} (add an empty 'nopbc' file for "
                            "a non-periodic system)", file=folder.where(), key="box")
        for stem, (key, atomic, shape) in _FILES.items():
            name = f"{stem}{suffix}"
            if key in skip or not folder.is_file(name):
                continue
            table = _read_table(folder, name, raw, n_frames)
            per_atom = int(np.prod(shape)) if shape != (-1,) else 1
            sel = _selected_atoms(types, table.shape[1], per_atom) if atomic else None
            columns.setdefault(key, []).append(_reshape(table, folder.where(name), stem, n_atoms, atomic, shape, sel))
        if folder.is_file("real_atom_types.npy") and K.HESSIAN in columns:
            raise DataError("not supported yet: hessian.npy in a mixed-type system with virtual atoms "
                            "(real_atom_types.npy)", file=folder.where(), key="hessian")
        if folder.is_file("real_atom_types.npy"):
            columns.setdefault("real_atom_types", []).append(
                np.asarray(folder.table("real_atom_types.npy", False)).astype(np.int64))

    return columns, set_lengths


def _read_system(system, type_map: Optional[Sequence[str]], raw: Optional[bool], index,
                 skip: Collection[str] = ()) -> FrameList:
    """The reader of :func:`read_deepmd` on a system source (``mlpot.data.deepmd_sources``)."""
    if not system.is_file("type.raw"):
        raise DataError("not a DeePMD system (no type.raw)", file=system.where())
    try:
        types = system.integers("type.raw")
    except ValueError as exc:
        raise DataError(f"expected whitespace-separated integers ({exc})", file=system.where("type.raw"),
                        key="type") from None
    types, names = _resolve_types(system, types, type_map)
    n_atoms = types.size
    periodic = not system.exists("nopbc")
    sets = system.folders("set.*")
    if raw is None:
        raw = not sets
    folders = [system] if raw else sets
    suffix = ".raw" if raw else ".npy"
    if not folders or not folders[0].is_file(f"coord{suffix}"):
        raise DataError(f"no coord{suffix} found", file=system.where(), key="coord")

    columns, set_lengths = _read_columns(folders, suffix, raw, types, periodic, skip)
    total = sum(set_lengths)
    frames = FrameList(type_map=names, source=str(system.where()))
    numbers_of_type = numbers_from_type_map(names)
    starts = np.cumsum([0] + set_lengths)
    set_of_frame = np.repeat(np.arange(len(folders)), set_lengths)
    # a label file present in some sets only is gated per set, like DeePMD's find_* flags
    present_sets = {key: _present_sets(folders, key, suffix) for key in columns}
    for frame_index in range(total)[index]:
        s = set_of_frame[frame_index]
        local = frame_index - starts[s]
        frame: Dict[str, np.ndarray] = {}
        for key, parts in columns.items():
            if s not in present_sets[key]:
                continue
            frame[key] = parts[present_sets[key].index(s)][local]
        frame_types = types
        if "real_atom_types" in frame:
            real = frame.pop("real_atom_types")
            keep = real >= 0
            frame_types = real[keep]
            for key in list(frame):
                if K.level_of(key) == "atom":
                    frame[key] = frame[key][keep]
        frame[K.ATOM_TYPES] = frame_types.copy()
        frame[K.NUMBERS] = numbers_of_type[frame_types] if len(names) else np.zeros_like(frame_types)
        frame.setdefault(K.CELL, np.zeros((3, 3)))
        frame[K.PBC] = np.full(3, periodic)
        for key in list(frame):
            if key in K.WEIGHTED:
                frame[K.weight_key(key)] = np.ones(3) if key == K.DIPOLE else np.array(1.0)
        check_finite(frame, file=str(folders[s].where()), frame_index=int(local), names=_STEM_OF)
        frames.append(frame)
    return frames


def _present_sets(folders, key, suffix) -> List[int]:
    if key in (K.POSITIONS,):
        return list(range(len(folders)))
    stem = {K.CELL: "box"}.get(key, _STEM_OF.get(key, key))
    name = "real_atom_types.npy" if key == "real_atom_types" else f"{stem}{suffix}"
    return [i for i, folder in enumerate(folders) if folder.is_file(name)]


def _write_plan(frames: Sequence[dict], where, fmt: str):
    """Checks shared by the writers; returns (types, periodic, keys written besides coord).

    Every frame must have the same atom types in the same order; a label must be present in all
    frames or in none (the format has no per-frame weights).
    """
    if not frames:
        raise DataError("no frames to write", file=where)
    types = np.asarray(frames[0][K.ATOM_TYPES])
    for i, frame in enumerate(frames):
        if not np.array_equal(frame[K.ATOM_TYPES], types):
            raise DataError(f"{fmt} needs the same atoms in every frame (one system per formula)",
                            file=where, frame=i, key=K.ATOM_TYPES)
    periodic = bool(np.any(frames[0][K.PBC]))
    # an input (atom_pref, fparam, ...) is stored when present; a label when its weight is > 0
    # (present_weight only knows labels and gated inputs, hence the order of the tests)
    keys = [K.CELL] + [key for key in _STEM_OF if all((key in f and key not in K.LABELS) or
                                                      (key in K.WEIGHTED and present_weight(f, key) > 0)
                                                      for f in frames)]
    for key in _STEM_OF:
        if key not in keys and any(key in f for f in frames):
            raise DataError(f"label present in some frames only; {fmt} cannot store that",
                            file=where, key=_STEM_OF[key])
    return types, periodic, keys


def _set_arrays(frames: Sequence[dict], periodic: bool, keys, set_size: int):
    """Yield (set index, {entry name: (frames, columns) array}) of each ``set.NNN``."""
    for set_index, start in enumerate(range(0, len(frames), set_size)):
        chunk = frames[start:start + set_size]
        arrays = {"coord.npy": np.stack([f[K.POSITIONS] for f in chunk]).reshape(len(chunk), -1)}
        if periodic or np.any(chunk[0][K.CELL]):
            arrays["box.npy"] = np.stack([f[K.CELL] for f in chunk]).reshape(len(chunk), -1)
        for key in keys[1:]:
            arrays[f"{_STEM_OF[key]}.npy"] = np.stack([f[key] for f in chunk]).reshape(len(chunk), -1)
        yield set_index, arrays


def write_deepmd_npy(path, frames: Sequence[dict], *, type_map: Sequence[str], set_size: int = 5000) -> Path:
    """Write frames of one composition as a ``deepmd/npy`` system; returns the directory.

    Every frame must have the same atom types in the same order; a label must be present in all
    frames or in none (the format has no per-frame weights). Sets hold ``set_size`` frames each.
    """
    system = Path(path)
    types, periodic, keys = _write_plan(frames, system, "deepmd/npy")
    system.mkdir(parents=True, exist_ok=True)
    np.savetxt(system / "type.raw", types, fmt="%d")
    (system / "type_map.raw").write_text("\n".join(type_map) + "\n")
    if not periodic:
        (system / "nopbc").touch()
    elif (system / "nopbc").exists():
        os.remove(system / "nopbc")
    for set_index, arrays in _set_arrays(frames, periodic, keys, set_size):
        folder = system / f"set.{set_index:03d}"
        folder.mkdir(exist_ok=True)
        for name, array in arrays.items():
            np.save(folder / name, array)
    return system


def write_deepmd_hdf5(path_or_group, frames: Sequence[dict], *, type_map: Sequence[str],
                      set_size: int = 5000) -> Path:
    """Write frames of one composition as a ``deepmd/hdf5`` system; returns its ``file.h5#/group`` path.

    path_or_group: ``file.h5`` (the file's root group), ``file.h5#/group`` (created with its
    parents; the file is created or appended to) or an open, writable ``h5py.Group``. Same layout
    and rules as :func:`write_deepmd_npy`: ``type.raw`` int64 dataset, ``type_map.raw`` byte
    strings, ``nopbc`` dataset when non-periodic, ``set.NNN/<name>.npy`` float64 datasets of shape
    (frames, columns). A system already in the group is replaced (its ``type.raw``,
    ``type_map.raw``, ``nopbc`` and ``set.*``); other members, such as nested systems, are kept.
    """
    import h5py

    if isinstance(path_or_group, h5py.Group):
        group = path_or_group
        where = hdf5_name(Path(group.file.filename), group.name)
        plan = _write_plan(frames, where, "deepmd/hdf5")
        _fill_hdf5_group(group, frames, type_map, set_size, *plan)
        return where
    file, name = split_hdf5_path(path_or_group) or (Path(path_or_group), None)
    name = name or "/"
    where = hdf5_name(file, name)
    plan = _write_plan(frames, where, "deepmd/hdf5")
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = h5py.File(file, "a")
    except OSError as exc:
        raise DataError(f"cannot open for writing as HDF5 ({exc})", file=file) from None
    with handle:
        if name in handle and not isinstance(handle[name], h5py.Group):
            raise DataError("exists and is not a group", file=where)
        _fill_hdf5_group(handle.require_group(name), frames, type_map, set_size, *plan)
    return where


def _fill_hdf5_group(group, frames, type_map, set_size, types, periodic, keys) -> None:
    import fnmatch
    for name in list(group):
        if name in ("type.raw", "type_map.raw", "nopbc") or fnmatch.fnmatchcase(name, "set.*"):
            del group[name]
    group.create_dataset("type.raw", data=np.asarray(types, dtype=np.int64))
    group.create_dataset("type_map.raw", data=np.array([str(n).encode() for n in type_map], dtype="S"))
    if not periodic:
        group.create_dataset("nopbc", data=True)
    for set_index, arrays in _set_arrays(frames, periodic, keys, set_size):
        folder = group.create_group(f"set.{set_index:03d}")
        for name, array in arrays.items():
            folder.create_dataset(name, data=np.asarray(array, dtype=np.float64))
