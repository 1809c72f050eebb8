"""Where a DeePMD system lives: a directory (``type.raw``, ``set.*/`` or ``*.raw``) or an HDF5 group
(``file.h5#/group``: the same tree as datasets and subgroups). One small "system source" interface
(``where``, ``is_file``, ``exists``, ``table``, ``integers``, ``words``, ``folders``) lets one reader
(:mod:`mlpot.data.deepmd_format`) serve both; this module also finds the systems below a folder or an
HDF5 file and reads a system's ``type_map.raw``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

from mlpot.errors import DataError

__all__ = ["HDF5_SUFFIXES", "split_hdf5_path", "hdf5_group_exists", "is_deepmd_system", "find_deepmd_systems",
           "system_type_map", "open_system", "hdf5_name"]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class _Folder:
    """A system directory or one of its ``set.*`` folders; entries are files."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def where(self, name: Optional[str] = None):
        """Location for messages: the folder or one entry in it."""
        return self.path if name is None else self.path / name

    def is_file(self, name: str) -> bool:
        return (self.path / name).is_file()

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def table(self, name: str, raw: bool) -> np.ndarray:
        """The array of a ``.raw`` text table or a ``.npy`` file (raises ValueError/OSError/EOFError)."""
        file = self.path / name
        return np.loadtxt(file, ndmin=2, dtype=np.float64) if raw else np.load(file)

    def integers(self, name: str) -> np.ndarray:
        """Whitespace-separated integers of a text file (``type.raw``), 1-D int64."""
        return np.loadtxt(self.path / name, dtype=np.int64, ndmin=1).reshape(-1)

    def words(self, name: str) -> List[str]:
        """Whitespace-separated words of a text file (``type_map.raw``)."""
        return (self.path / name).read_text().split()

    def folders(self, pattern: str) -> List["_Folder"]:
        """Sub-folders matching ``pattern`` (``set.*``), sorted by name."""
        return [_Folder(p) for p in sorted(p for p in self.path.glob(pattern) if p.is_dir())]


class _Group:
    """A system group of an HDF5 file or one of its ``set.*`` subgroups; entries are datasets.

    Entries keep the file names of the npy layout (``type.raw``, ``set.000/coord.npy``); messages
    name them ``file.h5#/group/set.000/force.npy``.
    """

    def __init__(self, group, file: Path):
        self.group = group
        self.file = Path(file)

    def where(self, name: Optional[str] = None) -> str:
        inner = self.group.name.rstrip("/")
        return f"{self.file}#{inner or '/'}" if name is None else f"{self.file}#{inner}/{name}"

    def _dataset(self, name: str):
        import h5py
        entry = self.group.get(name)
        return entry if isinstance(entry, h5py.Dataset) else None

    def is_file(self, name: str) -> bool:
        return self._dataset(name) is not None

    def exists(self, name: str) -> bool:
        return name in self.group

    def table(self, name: str, raw: bool) -> np.ndarray:
        """The dataset as an array (the same array for a ``.raw`` or ``.npy`` name)."""
        array = np.asarray(self._dataset(name)[()])
        if array.dtype.kind not in "biuf":
            raise ValueError(f"holds {array.dtype} data, expected numbers")
        return array

    def integers(self, name: str) -> np.ndarray:
        """``type.raw``: an integer dataset (dpdata), or text of whitespace-separated integers."""
        array = np.asarray(self._dataset(name)[()])
        if array.dtype.kind in "SUO":
            return np.array(" ".join(_decode(array)).split(), dtype=np.int64)
        if array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise ValueError("non-integer type index")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"holds {array.dtype} data")
        return array.astype(np.int64).reshape(-1)

    def words(self, name: str) -> List[str]:
        """``type_map.raw``: an array of (byte) strings (dpdata), or one whitespace-separated string."""
        return " ".join(_decode(np.asarray(self._dataset(name)[()]))).split()

    def folders(self, pattern: str) -> List["_Group"]:
        import fnmatch
        import h5py
        names = sorted(n for n in self.group if fnmatch.fnmatchcase(n, pattern)
                       and isinstance(self.group.get(n), h5py.Group))
        return [_Group(self.group[n], self.file) for n in names]


class _MissingGroup(DataError):
    """The HDF5 file opened but has no such group."""


def _decode(array: np.ndarray) -> List[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(array).reshape(-1)]


def split_hdf5_path(path) -> Optional[Tuple[Path, Optional[str]]]:
    """``(file, group)`` of an HDF5 system path, or None for a directory/other file.

    ``file.h5#/group`` -> ``(file.h5, "/group")``; a bare ``file.h5`` (suffix in
    :data:`HDF5_SUFFIXES`) -> ``(file.h5, None)``: the whole file. A path that exists as it is
    (a directory whose name holds ``#``) is not split.
    """
    text = str(path)
    if "#" in text and not os.path.exists(text):
        file, group = text.split("#", 1)
        return Path(file), "/" + group.strip("/")
    if Path(text).suffix.lower() in HDF5_SUFFIXES and not os.path.isdir(text):
        return Path(text), None
    return None


def hdf5_name(file: Path, group: str) -> Path:
    """The system path of a group, ``file.h5#/group``."""
    return Path(f"{file}#{group}")


@contextlib.contextmanager
def _open_hdf5(file: Path, group: Optional[str]) -> Iterator[_Group]:
    """Open ``file`` read-only and yield its ``group`` (None: the root); DataError when either is missing."""
    try:
        import h5py
    except ImportError:  # a declared dependency; the message says what to install
        raise DataError("reading HDF5 data needs h5py (pip install h5py)", file=file) from None
    if not Path(file).is_file():
        raise DataError("path does not exist", file=file)
    try:
        handle = h5py.File(file, "r")
    except OSError as exc:
        raise DataError(f"not a readable HDF5 file ({exc})", file=file) from None
    with handle:
        group = group or "/"
        if not isinstance(handle.get(group), h5py.Group):
            inside = _system_groups(handle["/"])
            raise _MissingGroup("no such group in the HDF5 file", file=file, key=group,
                                hint=f"systems in it: {', '.join(inside)}" if inside else "it holds no system")
        yield _Group(handle[group], file)


def _system_groups(group) -> List[str]:
    """Absolute names of the groups below (and including) ``group`` that hold ``type.raw``, sorted."""
    import h5py
    found = [group.name] if "type.raw" in group else []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "type.raw" in obj:
            found.append(obj.name)

    group.visititems(visit)
    return sorted(found)


def hdf5_group_exists(file, group: str) -> bool:
    """True when the HDF5 ``file`` has ``group``; DataError when the file is missing or unreadable."""
    try:
        with _open_hdf5(Path(file), group):
            return True
    except _MissingGroup:
        return False


def is_deepmd_system(path) -> bool:
    """True when ``path`` is a directory holding ``type.raw``, or an HDF5 group (``file.h5#/group``,
    a bare ``file.h5`` meaning its root) holding a ``type.raw`` dataset."""
    hdf5 = split_hdf5_path(path)
    if hdf5 is None:
        return (Path(path) / "type.raw").is_file()
    try:
        with _open_hdf5(*hdf5) as source:
            return source.is_file("type.raw")
    except DataError:
        return False


def system_type_map(path) -> Optional[List[str]]:
    """The names of ``type_map.raw`` of one DeePMD system (directory or HDF5 group), or None when
    the system has none; only that file is read."""
    hdf5 = split_hdf5_path(path)
    if hdf5 is None:
        source = _Folder(Path(path))
        return source.words("type_map.raw") if source.is_file("type_map.raw") else None
    with _open_hdf5(*hdf5) as source:
        return source.words("type_map.raw") if source.is_file("type_map.raw") else None


def find_deepmd_systems(path) -> List[Path]:
    """``path`` itself if it is a system, else every system below it (sorted, recursive).

    For HDF5 (``file.h5`` or ``file.h5#/group``) the systems are the groups holding ``type.raw``,
    returned as ``file.h5#/group`` paths; a missing file or group is a DataError.
    """
    hdf5 = split_hdf5_path(path)
    if hdf5 is not None:
        file, _ = hdf5
        with _open_hdf5(*hdf5) as source:
            return [hdf5_name(file, name) for name in _system_groups(source.group)]
    path = Path(path)
    if is_deepmd_system(path):
        return [path]
    return sorted(p.parent for p in path.rglob("type.raw"))


@contextlib.contextmanager
def open_system(path) -> Iterator:
    """The system source of a DeePMD system path: a folder, or an HDF5 group (``file.h5#/group``;
    a bare ``file.h5`` is its root group), open while the context lasts."""
    hdf5 = split_hdf5_path(path)
    if hdf5 is None:
        yield _Folder(Path(path))
        return
    with _open_hdf5(*hdf5) as source:
        yield source
