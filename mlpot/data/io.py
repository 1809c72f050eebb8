"""One entry point to read and write frames in every supported format.

Formats: ``"deepmd/npy"`` (system directory with ``set.*``), ``"deepmd/raw"`` (``*.raw`` tables),
``"deepmd/hdf5"`` (``file.h5#/group``, or ``file.h5`` for every system in it), ``"extxyz"`` (through
ASE). ``fmt=None`` detects the format from the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, List, Mapping, Optional, Sequence, Union

import numpy as np

from mlpot.data.deepmd_format import read_deepmd, write_deepmd_hdf5, write_deepmd_npy
from mlpot.data.deepmd_sources import find_deepmd_systems, is_deepmd_system, split_hdf5_path
from mlpot.data.extxyz_format import read_extxyz, write_extxyz
from mlpot.data.frames import FrameList
from mlpot.data.keys import ATOM_TYPES, WEIGHTED, weight_key
from mlpot.errors import DataError

__all__ = ["FORMATS", "detect_format", "read_frames", "read_systems", "write_frames", "merge_type_maps"]

FORMATS = ("deepmd/npy", "deepmd/raw", "deepmd/hdf5", "extxyz")
_ALIASES = {"deepmd": "deepmd/npy", "npy": "deepmd/npy", "raw": "deepmd/raw", "hdf5": "deepmd/hdf5",
            "h5": "deepmd/hdf5", "xyz": "extxyz"}


def _canonical(fmt: str, path) -> str:
    name = _ALIASES.get(fmt.lower(), fmt.lower())
    if name not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; valid formats are {', '.join(FORMATS)}", file=path, key="format")
    return name


def _check_exists(path) -> None:
    """DataError when ``path`` (for ``file.h5#/group``: the file) does not exist."""
    hdf5 = split_hdf5_path(path)
    if hdf5 is not None and not hdf5[0].is_file():
        raise DataError("path does not exist", file=hdf5[0])
    if hdf5 is None and not Path(path).exists():
        raise DataError("path does not exist", file=path)


def detect_format(path) -> str:
    """Guess the format of ``path``: a directory with type.raw is DeePMD (npy when it has set.*);
    ``file.h5#/group`` or a ``.h5``/``.hdf5`` file is ``deepmd/hdf5``."""
    if split_hdf5_path(path) is not None:
        _check_exists(path)
        return "deepmd/hdf5"
    path = Path(path)
    if not path.exists():
        raise DataError("path does not exist", file=path)
    if path.is_dir():
        if is_deepmd_system(path):
            return "deepmd/npy" if any(path.glob("set.*")) else "deepmd/raw"
        raise DataError("directory is not a DeePMD system (no type.raw)", file=path)
    if path.suffix.lower() in (".xyz", ".extxyz"):
        return "extxyz"
    raise DataError("cannot detect the format (expected a DeePMD system directory or .xyz/.extxyz file); "
                    "pass fmt=", file=path, key="format")


def _to_slice(index):
    if isinstance(index, str):
        if index == ":":
            return slice(None)
        if ":" in index:
            return slice(*[int(p) if p else None for p in index.split(":")])
        return slice(int(index), int(index) + 1 if int(index) != -1 else None)
    if isinstance(index, int):
        return slice(index, index + 1 if index != -1 else None)
    return index


def read_frames(path, fmt: Optional[str] = None, *, type_map: Optional[Sequence[str]] = None,
                key_map: Optional[Mapping[str, str]] = None, index=":", skip: Collection[str] = ()) -> FrameList:
    """Read the frames of one file or DeePMD system.

    path: an extxyz file, a DeePMD system directory or HDF5 group (``file.h5#/group``; a bare
    ``file.h5`` is its root group). fmt: one of :data:`FORMATS` or None (detect). type_map: type
    names defining ``ATOM_TYPES`` (DeePMD systems are re-mapped by name).
    key_map: extra extxyz names -> batch keys. index: frames to keep (``":"``, ``"a:b"``, int, slice).
    skip: batch keys not read (DeePMD files of inputs or labels the model does not use are not
    opened; extxyz columns are parsed by ASE and dropped).
    """
    path = Path(path)
    _check_exists(path)
    fmt = detect_format(path) if fmt is None else _canonical(fmt, path)
    if fmt == "deepmd/hdf5" and split_hdf5_path(path) is None:
        raise DataError("deepmd/hdf5 needs a file.h5#/group or .h5/.hdf5 path", file=path, key="format")
    if fmt == "extxyz":
        frames = read_extxyz(path, type_map=type_map, key_map=key_map,
                             index=index if isinstance(index, str) else ":")[
            slice(None) if isinstance(index, str) else _to_slice(index)]
        for frame in frames if skip else ():
            for key in skip:
                frame.pop(key, None)
                if key in WEIGHTED:
                    frame.pop(weight_key(key), None)
        return frames
    return read_deepmd(path, type_map=type_map, raw=(fmt == "deepmd/raw"), index=_to_slice(index), skip=skip)


def merge_type_maps(type_maps: Sequence[Sequence[str]]) -> List[str]:
    """Union of type maps, keeping the order of first appearance."""
    merged: List[str] = []
    for type_map in type_maps:
        merged += [name for name in type_map if name not in merged]
    return merged


def read_systems(paths: Union[str, Path, Sequence[Union[str, Path]]], fmt: Optional[str] = None, *,
                 type_map: Optional[Sequence[str]] = None, key_map: Optional[Mapping[str, str]] = None,
                 skip: Collection[str] = ()) -> List[FrameList]:
    """Read several systems (one :class:`FrameList` each) with one common ``type_map``.

    A path that is a directory but not a system is searched recursively for ``type.raw``
    (DeePMD's ``systems: "dir"``); so is an HDF5 file or group (``file.h5``, ``file.h5#/group``)
    that is not itself a system: every group holding ``type.raw``, sorted. Without ``type_map`` the
    systems' type maps are merged in order of first appearance and every system is re-mapped onto
    the merged map.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if fmt is not None:
        fmt = _canonical(fmt, paths[0] if paths else None)
    expanded: List[Path] = []
    for path in paths:
        path = Path(path)
        _check_exists(path)
        hdf5 = split_hdf5_path(path) is not None
        if (hdf5 or path.is_dir()) and not is_deepmd_system(path):
            found = find_deepmd_systems(path)  # HDF5: DataError for a missing group or unreadable file
            if not found:
                raise DataError("no DeePMD system (group with type.raw) found in this HDF5 file/group" if hdf5
                                else "no DeePMD system (type.raw) found below this directory", file=path)
            expanded += found
        else:
            expanded.append(path)
    systems = [read_frames(p, fmt, type_map=type_map, key_map=key_map, skip=skip) for p in expanded]
    for path, system in zip(expanded, systems):
        if len(system) == 0:
            raise DataError("holds no frame (an empty file or system)", file=path)
    if type_map is None:
        common = merge_type_maps([s.type_map for s in systems])
        for system in systems:
            if system.type_map != common:
                remap = np.array([common.index(n) for n in system.type_map], dtype=np.int64)
                for frame in system:
                    frame[ATOM_TYPES] = remap[frame[ATOM_TYPES]]
                system.type_map = list(common)
    return systems


def write_frames(path, frames: Sequence[dict], fmt: str, *, type_map: Optional[Sequence[str]] = None,
                 set_size: int = 5000) -> Path:
    """Write frames as ``extxyz``, ``deepmd/npy`` or ``deepmd/hdf5`` (``set_size`` frames per ``set.*``)."""
    fmt = _canonical(fmt, path)
    type_map = list(type_map if type_map is not None else getattr(frames, "type_map", []))
    if not type_map:
        raise DataError("write_frames needs a type_map", file=path, key="type_map")
    if fmt == "extxyz":
        return write_extxyz(path, frames, type_map=type_map)
    if fmt == "deepmd/npy":
        return write_deepmd_npy(path, frames, type_map=type_map, set_size=set_size)
    if fmt == "deepmd/hdf5":
        return write_deepmd_hdf5(path, frames, type_map=type_map, set_size=set_size)
    raise DataError(f"writing {fmt} is not supported (use extxyz, deepmd/npy or deepmd/hdf5)", file=path,
                    key="format")
