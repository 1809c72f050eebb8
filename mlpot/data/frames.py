"""Frames: the in-memory form of one configuration, and lists of them.

A *frame* is a ``dict[str, np.ndarray]`` with keys from :mod:`mlpot.data.keys` and no frame
dimension:

* ``POSITIONS`` (n_atoms, 3) float64 Å, ``ATOM_TYPES`` (n_atoms,) int64 (index into the list's
  ``type_map``), ``NUMBERS`` (n_atoms,) int64 (atomic numbers, 0 when unknown), ``CELL`` (3, 3)
  float64 Å (rows = lattice vectors, zeros allowed when non-periodic), ``PBC`` (3,) bool;
* every label that the file holds (``ENERGY`` (), ``FORCES`` (n_atoms, 3), ``VIRIAL`` (3, 3), ...)
  together with its weight ``weight_key(label)`` (1.0, or the file's per-config weight). A missing
  label is simply absent (it never becomes a fake zero).

A :class:`FrameList` is a plain ``list`` of frames that also carries the ``type_map`` (type names
in type order) and the ``source`` path it was read from.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np
from ase.data import atomic_numbers

from mlpot.data.keys import KEYS, LABELS, POSITIONS, weight_key
from mlpot.errors import DataError

__all__ = ["FrameList", "numbers_from_type_map", "check_finite", "frame_labels"]


class FrameList(list):
    """A list of frames with ``type_map`` (list[str]) and ``source`` (path str or None).

    ``sources`` lists every file or system the frames came from (several after concatenation);
    statistics caches are keyed on them.
    """

    def __init__(self, frames: Iterable[dict] = (), type_map: Optional[Sequence[str]] = None,
                 source: Optional[str] = None, sources: Optional[Sequence[str]] = None):
        super().__init__(frames)
        self.type_map: List[str] = list(type_map or [])
        self.source: Optional[str] = None if source is None else str(source)
        self.sources: List[str] = [str(s) for s in sources] if sources else \
            ([self.source] if self.source else [])

    def __getitem__(self, item):
        out = super().__getitem__(item)
        if isinstance(item, slice):
            return FrameList(out, self.type_map, self.source, self.sources)
        return out

    def __repr__(self) -> str:
        return f"FrameList({len(self)} frames, type_map={self.type_map}, source={self.source!r})"


def numbers_from_type_map(type_map: Sequence[str]) -> np.ndarray:
    """Atomic number of each type name (0 for names that are not element symbols); (n_types,) int64."""
    return np.array([atomic_numbers.get(str(name), 0) for name in type_map], dtype=np.int64)


def frame_labels(frame: dict) -> List[str]:
    """Labels present in ``frame`` (in the order of :data:`mlpot.data.keys.LABELS`)."""
    return [label for label in LABELS if label in frame]


def check_finite(frame: dict, *, file: Optional[str], frame_index: int,
                 names: Optional[dict] = None) -> None:
    """Raise :class:`DataError` naming file, frame and key when a float array of ``frame`` holds NaN/inf.

    ``names`` maps our key to the key as spelled in the file, so the message uses the user's name.
    """
    names = names or {}
    for key, value in frame.items():
        spec = KEYS.get(key)
        if spec is None or spec.kind != "float":
            continue
        array = np.asarray(value)
        if not np.all(np.isfinite(array)):
            bad = np.argwhere(~np.isfinite(np.atleast_1d(array)))[0]
            where = "" if array.ndim == 0 else f" at index {tuple(int(i) for i in bad)}"
            raise DataError(f"non-finite value ({np.atleast_1d(array)[tuple(bad)]}){where}",
                            file=file, frame=frame_index, key=names.get(key, key))


def n_atoms_of(frame: dict) -> int:
    """Number of atoms of a frame."""
    return int(np.asarray(frame[POSITIONS]).shape[0])


def present_weight(frame: dict, label: str) -> float:
    """Total weight of ``label`` in ``frame`` (0 when absent); vector weights count when any is > 0."""
    if label not in frame:
        return 0.0
    return float(np.max(np.asarray(frame.get(weight_key(label), 1.0))))
