"""DeePMD-kit systems: the ``deepmd/npy`` and ``deepmd/raw`` formats (spec deepmd.md §1.1-1.2).

A system is a directory with ``type.raw`` (one type index per atom), an optional ``type_map.raw``
(type names), an optional empty ``nopbc`` flag and either ``set.*/<name>.npy`` folders (npy) or
``<name>.raw`` text files (raw), one frame per row. Units as in DeePMD-kit: Å, eV, eV/Å, virial eV.

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
from typing import Dict, List, Optional, Sequence

import numpy as np

from mlpot.data import keys as K
from mlpot.data.frames import FrameList, check_finite, numbers_from_type_map, present_weight
from mlpot.errors import DataError

__all__ = ["read_deepmd", "write_deepmd_npy", "is_deepmd_system", "find_deepmd_systems"]

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
}
# inputs (no weight)
_INPUT_FILES = {
    "atom_pref": (K.ATOM_PREF, True, ()),
    "atom_ener_coeff": (K.ATOM_ENER_COEFF, True, ()),
    "atom_weight": (K.ATOM_WEIGHT, True, ()),
    "drdq": (K.DRDQ, True, (-1,)),
    "fparam": (K.FPARAM, False, (-1,)),
    "aparam": (K.APARAM, True, (-1,)),
}
_FILES = {**_LABEL_FILES, **_INPUT_FILES}
_STEM_OF = {key: stem for stem, (key, _, _) in _FILES.items()}


def is_deepmd_system(path) -> bool:
    """True when ``path`` is a directory holding ``type.raw``."""
    return (Path(path) / "type.raw").is_file()


def find_deepmd_systems(path) -> List[Path]:
    """``path`` itself if it is a system, else every system below it (sorted, recursive)."""
    path = Path(path)
    if is_deepmd_system(path):
        return [path]
    return sorted(p.parent for p in path.rglob("type.raw"))


def _read_table(file: Path, raw: bool) -> np.ndarray:
    """(n_frames, columns) float64 table of a .npy or .raw file; DataError if unreadable."""
    try:
        array = np.loadtxt(file, ndmin=2, dtype=np.float64) if raw else np.load(file).astype(np.float64)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read ({exc})", file=file, key=file.stem) from None
    if array.ndim == 0:
        raise DataError("holds a scalar, expected one row per frame", file=file, key=file.stem)
    return array.reshape(array.shape[0], -1)


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


def _resolve_types(system: Path, types: np.ndarray, type_map: Optional[Sequence[str]]):
    file_map_path = system / "type_map.raw"
    file_map = file_map_path.read_text().split() if file_map_path.is_file() else None
    if file_map is not None and types.size and types.max() >= len(file_map):
        raise DataError(f"type index {int(types.max())} but type_map.raw lists only {len(file_map)} "
                        f"names {file_map}", file=system / "type.raw", key="type")
    if type_map is None:
        names = file_map or [f"Type_{t}" for t in range(int(types.max()) + 1 if types.size else 0)]
        return types, list(names)
    type_map = list(type_map)
    if file_map is None:
        if types.size and types.max() >= len(type_map):
            raise DataError(f"type index {int(types.max())} outside the type_map {type_map}",
                            file=system / "type.raw", key="type")
        return types, type_map
    missing = [name for name in file_map if name not in type_map]
    used = set(np.unique(types).tolist())
    if any(file_map.index(name) in used for name in missing):
        raise DataError(f"element(s) {missing} of type_map.raw {file_map} not in the type_map "
                        f"{type_map} (inconsistent type maps)", file=file_map_path, key="type_map")
    remap = np.array([type_map.index(n) if n in type_map else -1 for n in file_map], dtype=np.int64)
    return remap[types], type_map


def read_deepmd(path, *, type_map: Optional[Sequence[str]] = None, raw: Optional[bool] = None,
                index=slice(None)) -> FrameList:
    """Read one DeePMD system (directory) into a :class:`FrameList`.

    ``raw`` selects ``deepmd/raw`` (``*.raw`` tables) over ``deepmd/npy`` (``set.*``); None
    detects it. ``type_map`` re-maps the types by name (spec §1.1). ``index`` selects frames.
    """
    system = Path(path)
    if not is_deepmd_system(system):
        raise DataError("not a DeePMD system (no type.raw)", file=system)
    try:
        types = np.loadtxt(system / "type.raw", dtype=np.int64, ndmin=1).reshape(-1)
    except ValueError as exc:
        raise DataError(f"expected whitespace-separated integers ({exc})", file=system / "type.raw",
                        key="type") from None
    types, names = _resolve_types(system, types, type_map)
    n_atoms = types.size
    periodic = not (system / "nopbc").exists()
    sets = sorted(p for p in system.glob("set.*") if p.is_dir())
    if raw is None:
        raw = not sets
    folders = [system] if raw else sets
    suffix = ".raw" if raw else ".npy"
    if not folders or not (folders[0] / f"coord{suffix}").is_file():
        raise DataError(f"no coord{suffix} found", file=system, key="coord")

    columns: Dict[str, List[np.ndarray]] = {}
    set_lengths = []
    for folder in folders:
        coord_file = folder / f"coord{suffix}"
        coord = _read_table(coord_file, raw)
        coord = _reshape(coord, coord_file, "coord", n_atoms, True, (3,), None)
        n_frames = coord.shape[0]
        set_lengths.append(n_frames)
        columns.setdefault(K.POSITIONS, []).append(coord)
        box_file = folder / f"box{suffix}"
        if box_file.is_file():
            columns.setdefault(K.CELL, []).append(_reshape(_read_table(box_file, raw), box_file, "box",
                                                           n_atoms, False, (3, 3), None))
        elif periodic:
            raise DataError(f"periodic system without box{suffix} (add an empty 'nopbc' file for "
                            "a non-periodic system)", file=folder, key="box")
        for stem, (key, atomic, shape) in _FILES.items():
            file = folder / f"{stem}{suffix}"
            if not file.is_file():
                continue
            table = _read_table(file, raw)
            if table.shape[0] != n_frames:
                raise DataError(f"has {table.shape[0]} frames but coord{suffix} has {n_frames}",
                                file=file, key=stem)
            per_atom = int(np.prod(shape)) if shape != (-1,) else 1
            sel = _selected_atoms(types, table.shape[1], per_atom) if atomic else None
            columns.setdefault(key, []).append(_reshape(table, file, stem, n_atoms, atomic, shape, sel))
        real_types_file = folder / "real_atom_types.npy"
        if real_types_file.is_file():
            columns.setdefault("real_atom_types", []).append(np.load(real_types_file).astype(np.int64))

    total = sum(set_lengths)
    frames = FrameList(type_map=names, source=str(system))
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
        check_finite(frame, file=str(folders[s]), frame_index=int(local), names=_STEM_OF)
        frames.append(frame)
    return frames


def _present_sets(folders, key, suffix) -> List[int]:
    if key in (K.POSITIONS,):
        return list(range(len(folders)))
    stem = {K.CELL: "box"}.get(key, _STEM_OF.get(key, key))
    name = "real_atom_types.npy" if key == "real_atom_types" else f"{stem}{suffix}"
    return [i for i, folder in enumerate(folders) if (folder / name).is_file()]


def write_deepmd_npy(path, frames: Sequence[dict], *, type_map: Sequence[str], set_size: int = 5000) -> Path:
    """Write frames of one composition as a ``deepmd/npy`` system; returns the directory.

    Every frame must have the same atom types in the same order; a label must be present in all
    frames or in none (the format has no per-frame weights). Sets hold ``set_size`` frames each.
    """
    system = Path(path)
    if not frames:
        raise DataError("no frames to write", file=system)
    types = np.asarray(frames[0][K.ATOM_TYPES])
    for i, frame in enumerate(frames):
        if not np.array_equal(frame[K.ATOM_TYPES], types):
            raise DataError("deepmd/npy needs the same atoms in every frame (one system per formula)",
                            file=system, frame=i, key=K.ATOM_TYPES)
    system.mkdir(parents=True, exist_ok=True)
    np.savetxt(system / "type.raw", types, fmt="%d")
    (system / "type_map.raw").write_text("\n".join(type_map) + "\n")
    periodic = bool(np.any(frames[0][K.PBC]))
    if not periodic:
        (system / "nopbc").touch()
    elif (system / "nopbc").exists():
        os.remove(system / "nopbc")
    keys = [K.CELL] + [key for key in _STEM_OF if all(present_weight(f, key) > 0 or (key in f and
                                                      key not in K.LABELS) for f in frames)]
    for key in _STEM_OF:
        if key not in keys and any(key in f for f in frames):
            raise DataError("label present in some frames only; deepmd/npy cannot store that",
                            file=system, key=_STEM_OF[key])
    n_frames = len(frames)
    for set_index, start in enumerate(range(0, n_frames, set_size)):
        folder = system / f"set.{set_index:03d}"
        folder.mkdir(exist_ok=True)
        chunk = frames[start:start + set_size]
        np.save(folder / "coord.npy", np.stack([f[K.POSITIONS] for f in chunk]).reshape(len(chunk), -1))
        if periodic or np.any(chunk[0][K.CELL]):
            np.save(folder / "box.npy", np.stack([f[K.CELL] for f in chunk]).reshape(len(chunk), -1))
        for key in keys[1:]:
            np.save(folder / f"{_STEM_OF[key]}.npy", np.stack([f[key] for f in chunk]).reshape(len(chunk), -1))
    return system
