"""Datasets with cached neighbour lists, and batching frames of different sizes.

:class:`AtomsDataset` wraps a list of frames, computes each frame's neighbour list once (on first
access) and returns frames with ``EDGE_INDEX``, ``EDGE_SHIFTS`` and ``FRAME_ID`` added.
:func:`collate` concatenates frames into one batch dictionary of tensors (atoms and edges along
the first dimension, frame-level keys stacked) with ``BATCH``, ``PTR`` and ``N_ATOMS``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from mlpot.data import keys as K
from mlpot.data.frames import FrameList
from mlpot.data.neighbors import neighbor_list
from mlpot.errors import DataError

__all__ = ["AtomsDataset", "collate", "MIN_SANE_DISTANCE", "closest_pair", "check_distances"]

# Å; closer atoms are a unit, parsing or duplication error, never physics (H2 bond: 0.74 Å); two
# atoms on one site give NaN descriptors (0/0) and a NaN model, so they are refused, not warned about
MIN_SANE_DISTANCE = 0.3

# inputs that have a physical default when a frame lacks them (MACE-SCF: neutral, no field)
_DEFAULT_ZERO_INPUTS = (K.TOTAL_CHARGE, K.EXTERNAL_FIELD)


def closest_pair(positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray):
    """(distance Å, i, j) of the closest pair of an edge list (periodic images included), or None."""
    if not edge_index.shape[1]:
        return None
    vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts @ cell
    distances = np.sqrt((vectors ** 2).sum(1))
    k = int(np.argmin(distances))
    return float(distances[k]), int(edge_index[0, k]), int(edge_index[1, k])


def _too_close(frame: dict, found, min_distance: float, type_map: Sequence[str], file, index: int) -> None:
    if found is None or not found[0] < min_distance:
        return
    distance, i, j = found
    types = frame[K.ATOM_TYPES]
    name = (lambda a: f"atom {a} ({type_map[int(types[a])]})") if len(type_map) > int(max(types[i], types[j])) \
        else (lambda a: f"atom {a}")
    raise DataError(f"{name(min(i, j))} and {name(max(i, j))} are {distance:.4f} Å apart, closer than "
                    f"min_distance = {min_distance:g} Å (duplicated atoms or wrong units?); fix the data or lower "
                    "min_distance (native data.min_distance, --min-distance)", file=file, frame=index)


def check_distances(frames: Sequence[dict], min_distance: float = MIN_SANE_DISTANCE, *,
                    type_map: Optional[Sequence[str]] = None) -> None:
    """DataError naming the file, frame and the two atoms of the first frame with two atoms closer
    than ``min_distance`` (Å; 0 turns the check off). A neighbour list at ``min_distance`` per frame:
    cheap, and all the frames are checked before a run starts."""
    if not min_distance > 0:
        return
    type_map = list(type_map if type_map is not None else getattr(frames, "type_map", []))
    for index, frame in enumerate(frames):
        edge_index, shifts = neighbor_list(frame[K.POSITIONS], frame[K.CELL], frame[K.PBC], min_distance)
        file, local = _frame_origin(frames, index)
        _too_close(frame, closest_pair(frame[K.POSITIONS], frame[K.CELL], edge_index, shifts), min_distance,
                   type_map, file, local)


def _frame_origin(frames: Sequence[dict], index: int):
    """(source file, frame index in it) of frame ``index``, local to its system after concatenation."""
    offsets = getattr(frames, "offsets", None)
    sources = getattr(frames, "sources", [])
    if offsets and len(sources) == len(offsets) - 1:
        system = int(np.searchsorted(offsets, index, side="right")) - 1
        return sources[system], index - offsets[system]
    return getattr(frames, "source", None) or "dataset", index


class AtomsDataset(torch.utils.data.Dataset):
    """Frames with neighbour lists at ``cutoff`` (Å), each computed once and cached.

    frames: a list of frames (e.g. a :class:`FrameList`, or several concatenated); ``type_map`` and
    ``source`` are taken from it when present. Items are new dicts (the frames are not modified)
    holding the frame's arrays plus ``EDGE_INDEX`` (2, n_edges), ``EDGE_SHIFTS`` (n_edges, 3) and
    ``FRAME_ID`` () = the index in this dataset. Two atoms closer than ``min_distance`` (Å, default
    :data:`MIN_SANE_DISTANCE`; 0: no check) are a DataError naming the file, frame and atoms, raised
    when the frame's neighbour list is built (:meth:`check_distances` checks every frame at once).
    ``warn_distance`` is the former name of ``min_distance``.
    """

    def __init__(self, frames: Sequence[dict], cutoff: float, *, type_map: Optional[Sequence[str]] = None,
                 min_distance: float = MIN_SANE_DISTANCE, warn_distance: Optional[float] = None):
        self.frames = frames
        self.cutoff = float(cutoff)
        self.type_map = list(type_map if type_map is not None else getattr(frames, "type_map", []))
        self.source = getattr(frames, "source", None)
        self.min_distance = float(min_distance if warn_distance is None else warn_distance)
        self._edges: List[Optional[tuple]] = [None] * len(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def check_distances(self) -> "AtomsDataset":
        """Check every frame for atoms closer than ``min_distance`` (see :func:`check_distances`)."""
        check_distances(self.frames, self.min_distance, type_map=self.type_map)
        return self

    def edges(self, index: int):
        """(edge_index (2, E) int64, shifts (E, 3) float64) of frame ``index``; computed once."""
        if self._edges[index] is None:
            frame = self.frames[index]
            edge_index, shifts = neighbor_list(frame[K.POSITIONS], frame[K.CELL], frame[K.PBC], self.cutoff)
            if self.min_distance > 0:
                found = closest_pair(frame[K.POSITIONS], frame[K.CELL], edge_index, shifts)
                _too_close(frame, found, self.min_distance, self.type_map, *_frame_origin(self.frames, index))
            # cached compactly (int32 indices, int16 shifts: 14 instead of 40 bytes per edge;
            # 0.24 MB instead of 0.68 MB per 192-atom water frame at 6 Å)
            compact_index = edge_index.astype(np.int32) if len(frame[K.POSITIONS]) < 2**31 else edge_index
            compact_shifts = shifts.astype(np.int16) if np.abs(shifts).max(initial=0) < 2**15 else shifts
            self._edges[index] = (compact_index, compact_shifts)
        edge_index, shifts = self._edges[index]
        return edge_index.astype(np.int64), shifts.astype(np.float64)

    def precompute(self, progress: bool = False) -> "AtomsDataset":
        """Build every neighbour list now (e.g. before forking DataLoader workers, whose caches
        would otherwise be lost with them). ``progress`` shows a tqdm bar."""
        indices = range(len(self))
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"neighbour lists (rc={self.cutoff:g} Å)", unit="frame")
        for index in indices:
            self.edges(index)
        return self

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        frame = dict(self.frames[index])
        frame[K.EDGE_INDEX], frame[K.EDGE_SHIFTS] = self.edges(index)
        frame[K.FRAME_ID] = np.array(index, dtype=np.int64)
        return frame


def _torch_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    return {"float": dtype, "int": torch.long, "bool": torch.bool}[kind]


def collate(frames: Sequence[dict], dtype: torch.dtype = torch.float64) -> Dict[str, torch.Tensor]:
    """Batch frames of any sizes into one dictionary of tensors.

    Atom- and edge-level keys are concatenated (``EDGE_INDEX`` offset by each frame's first atom),
    frame-level keys stacked. Adds ``BATCH`` (n_atoms,), ``PTR`` (n_frames + 1,) and ``N_ATOMS``
    (n_frames,). A label (or gated input such as ``DRDQ``) present in some frames only is filled
    with zeros elsewhere and its ``<label>_weight`` is 0 there; ``TOTAL_CHARGE``/``EXTERNAL_FIELD``
    default to zero and keys with a ``default`` in :mod:`mlpot.data.keys` to that value; ``ragged``
    frame keys (HESSIAN) are zero-padded to the widest frame. Float
    arrays become ``dtype``; keys unknown to :mod:`mlpot.data.keys` are dropped.
    """
    if not frames:
        raise ValueError("collate needs at least one frame")
    n_atoms = np.array([len(f[K.POSITIONS]) for f in frames], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(n_atoms)])
    batch: Dict[str, torch.Tensor] = {
        K.N_ATOMS: torch.from_numpy(n_atoms),
        K.PTR: torch.from_numpy(ptr),
        K.BATCH: torch.from_numpy(np.repeat(np.arange(len(frames)), n_atoms)),
    }
    present = [key for key in dict.fromkeys(k for f in frames for k in f) if key in K.KEYS]
    for key in present:
        if key in (K.N_ATOMS, K.PTR, K.BATCH) or key.endswith("_weight"):
            continue
        spec = K.KEYS[key]
        if key == K.EDGE_INDEX:
            parts = [np.asarray(f[key]) + ptr[n] for n, f in enumerate(frames)]
            batch[key] = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.int64))
            continue
        example = np.asarray(next(f[key] for f in frames if key in f))
        parts = []
        for n, frame in enumerate(frames):
            if key in frame:
                parts.append(np.asarray(frame[key]))
            elif spec.label or spec.gated or key in _DEFAULT_ZERO_INPUTS or spec.default is not None:
                rows = (n_atoms[n],) if spec.level == "atom" else ()
                parts.append(np.full(rows + example.shape[1 if spec.level == "atom" else 0:], spec.default or 0.0))
            else:
                raise ValueError(f"key {key!r} is in some frames of the batch but not in frame {n}")
        if spec.ragged:  # (3N)^2 Hessian rows of different frames: zero-padded to the widest
            width = max(part.shape[-1] for part in parts)
            parts = [np.pad(part, (0, width - part.shape[-1])) for part in parts]
        array = np.concatenate(parts) if spec.level in ("atom", "edge") else np.stack(parts)
        batch[key] = torch.as_tensor(array, dtype=_torch_dtype(spec.kind, dtype))
        if spec.label or spec.gated:
            weight_name = K.weight_key(key)
            shape = (3,) if key == K.DIPOLE else ()
            weights = [np.broadcast_to(np.asarray(f.get(weight_name, 1.0), dtype=np.float64), shape)
                       if key in f else np.zeros(shape) for f in frames]
            batch[weight_name] = torch.as_tensor(np.stack(weights), dtype=dtype)
    return batch


def concat_frame_lists(systems: Sequence[FrameList]) -> FrameList:
    """Concatenate systems that share one type_map into a single FrameList (source: first system)."""
    type_map = systems[0].type_map if systems else []
    out = FrameList(type_map=type_map, source=systems[0].source if systems else None,
                    sources=[s for system in systems for s in getattr(system, "sources", [])])
    out.offsets = np.cumsum([0] + [len(system) for system in systems]).tolist()
    for system in systems:
        if system.type_map != type_map:
            raise ValueError(f"type maps differ: {system.type_map} vs {type_map}")
        out.extend(system)
    return out
