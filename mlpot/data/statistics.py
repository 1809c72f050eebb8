"""Dataset statistics, computed once per dataset and cached on disk as JSON.

* Per-type energy bias by least squares (spec deepmd.md §3.1): solve N b ≈ E with N (n_frames,
  n_types) the atom counts per type, by SVD least squares (``numpy.linalg.lstsq``, ``rcond``
  None). For fixed-composition data the problem is rank-deficient and the minimum-norm solution is
  returned [COMPAT], b ∝ composition (water data_0 + data_1: O -93.57366, H -187.14733 eV).
* Energy per atom mean and std over frames (E / N per frame: frame-weighted; population std, and
  the sample std with N - 1), total energy sample std, residual of the bias fit (std per frame,
  RMS per atom), forces RMS overall and per type (label RMS over Cartesian components), label
  counts.
* At a cutoff: mean neighbours per atom (overall, per centre type, and over the atoms that have at
  least one neighbour: MACE's ``avg_num_neighbors``), maximum neighbours per neighbour type over all
  centres (DeePMD's neighbour stat for ``sel: "auto"``), minimum distance.

The cache (a :class:`~mlpot.data.stat_file.StatisticsFile`, DeePMD's ``stat_file``: an HDF5 file or
a directory) keys the record by a hash of the source files (path, size, mtime), the cutoff, the
type_map and the number of frames; a second call with the same inputs reads it instead of
recomputing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from mlpot.data import keys as K
from mlpot.data.deepmd_sources import split_hdf5_path
from mlpot.data.frames import frame_labels, present_weight
from mlpot.data.stat_file import StatisticsFile
from mlpot.data.neighbors import neighbor_counts, neighbor_list

__all__ = ["DatasetStatistics", "compute_statistics", "energy_bias_lstsq", "auto_sel"]

_CACHE_VERSION = 2


@dataclasses.dataclass
class DatasetStatistics:
    """Statistics of a dataset; energies eV, forces eV/Å, distances Å. Lists are per type."""

    type_map: List[str]
    n_frames: int
    atoms_per_frame: Dict[str, float]  # min / mean / max
    atoms_per_type: List[int]  # total atoms of each type over the dataset
    label_counts: Dict[str, int]  # frames with each label (weight > 0)
    energy_bias: Optional[List[float]] = None  # eV per atom of each type
    energy_per_atom_mean: Optional[float] = None
    energy_per_atom_std: Optional[float] = None  # population std (N)
    energy_per_atom_sample_std: Optional[float] = None  # sample std (N - 1), eV per atom
    energy_sample_std: Optional[float] = None  # sample std (N - 1) of the total energy, eV
    bias_residual_std: Optional[float] = None  # eV per frame
    bias_residual_rms_per_atom: Optional[float] = None  # eV per atom
    forces_rms: Optional[float] = None
    forces_rms_per_type: Optional[List[Optional[float]]] = None
    cutoff: Optional[float] = None
    mean_neighbors: Optional[float] = None
    mean_neighbors_per_type: Optional[List[Optional[float]]] = None  # per centre type
    mean_neighbors_connected: Optional[float] = None  # over the atoms with at least one neighbour
    max_neighbors_per_type: Optional[List[int]] = None  # per neighbour type (DeePMD neighbour stat)
    max_neighbors_total: Optional[int] = None  # over all neighbour types (DeePMD's mixed-type neighbour stat)
    min_distance: Optional[float] = None
    sources: List[str] = dataclasses.field(default_factory=list)
    from_cache: bool = dataclasses.field(default=False, compare=False)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("from_cache")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetStatistics":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def energy_bias_lstsq(type_counts: np.ndarray, energies: np.ndarray, rcond: Optional[float] = None,
                      preset: Optional[Sequence[Optional[float]]] = None):
    """Per-type bias b minimising |N b - E|^2 (minimum norm when rank-deficient).

    type_counts: (n_frames, n_types) atoms per type; energies: (n_frames,) eV; rcond: as in
    ``numpy.linalg.lstsq`` (DeePMD ``fitting_net/rcond``); preset: per type a fixed bias (eV) or
    None — fixed types are subtracted first and the rest is fitted (DeePMD ``preset_out_bias`` /
    ``atom_ener``). Returns (bias (n_types,) eV, residual (n_frames,) eV).
    """
    counts = np.asarray(type_counts, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    bias = np.zeros(counts.shape[1])
    fixed = np.array([p is not None for p in (preset or [None] * counts.shape[1])], dtype=bool)
    if fixed.any():
        bias[fixed] = [float(p) for p in preset if p is not None]
    free = ~fixed
    target = energies - counts[:, fixed] @ bias[fixed]
    if free.any():
        bias[free] = np.linalg.lstsq(counts[:, free], target, rcond=rcond)[0]
    return bias, energies - counts @ bias


def auto_sel(max_neighbors: Sequence[int], factor: float = 1.1) -> List[int]:
    """DeePMD ``sel: "auto[:factor]"``: max count x factor rounded up to a multiple of 4 [COMPAT]."""
    return [int(math.ceil(n * factor / 4.0) * 4) for n in max_neighbors]


def _frames_and_sources(data):
    """Flatten a FrameList, AtomsDataset or list of them into (frames, sources, dataset-or-None)."""
    if hasattr(data, "frames") and hasattr(data, "edges"):  # AtomsDataset
        return list(data.frames), list(getattr(data.frames, "sources", [])), data
    if data and isinstance(data[0], dict):
        return list(data), list(getattr(data, "sources", [])), None
    frames, sources = [], []
    for part in data:
        sub_frames, sub_sources, _ = _frames_and_sources(part)
        frames += sub_frames
        sources += sub_sources
    return frames, sources, None


def source_fingerprint(sources: Sequence[str]) -> list:
    """(path, size, mtime) of every file of the sources (directories walked; an HDF5 group
    ``file.h5#/group`` counts as its whole file)."""
    out = []
    for source in sources:
        hdf5 = split_hdf5_path(source)
        if hdf5 is not None:
            stat = hdf5[0].stat()
            out.append([f"{hdf5[0].resolve()}#{hdf5[1] or '/'}", stat.st_size, stat.st_mtime_ns])
            continue
        path = Path(source)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            out.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns])
    return out


def _record_name(sources, cutoff, type_map, n_frames) -> str:
    payload = json.dumps([_CACHE_VERSION, source_fingerprint(sources), cutoff, list(type_map), n_frames])
    return "dataset/" + hashlib.sha256(payload.encode()).hexdigest()[:20]


def compute_statistics(data, type_map: Sequence[str], cutoff: Optional[float] = None,
                       cache: Union[None, str, Path, StatisticsFile] = None) -> DatasetStatistics:
    """Statistics of frames (a FrameList, an AtomsDataset or a list of them).

    type_map: type names (defines the per-type lists). cutoff: Å, enables neighbour statistics
    (an AtomsDataset's cached edges are reused when its cutoff matches). cache: a
    :class:`StatisticsFile` or its path (HDF5 file or directory) to read the statistics from and
    write them to (only used when the frames know their source files).
    """
    frames, sources, dataset = _frames_and_sources(data)
    type_map = list(type_map)
    store = cache if isinstance(cache, StatisticsFile) or cache is None else StatisticsFile(cache)
    name = _record_name(sources, cutoff, type_map, len(frames)) if store is not None and sources else None
    if name is not None:
        record = store.read_json(name)
        if record is not None and (cutoff is None or "max_neighbors_total" in record):  # older records lack it
            stats = DatasetStatistics.from_dict(record)
            stats.from_cache = True
            return stats
    stats = _compute(frames, type_map, cutoff, dataset)
    stats.sources = [str(s) for s in sources]
    if name is not None:
        store.write_json(name, stats.to_dict())
    return stats


def _compute(frames, type_map, cutoff, dataset) -> DatasetStatistics:
    n_types = len(type_map)
    n_atoms = np.array([len(f[K.POSITIONS]) for f in frames])
    counts = np.stack([np.bincount(f[K.ATOM_TYPES], minlength=n_types) for f in frames]) if frames \
        else np.zeros((0, n_types), dtype=int)
    label_counts: Dict[str, int] = {}
    for frame in frames:
        for label in frame_labels(frame):
            if present_weight(frame, label) > 0:
                label_counts[label] = label_counts.get(label, 0) + 1
    stats = DatasetStatistics(
        type_map=type_map, n_frames=len(frames),
        atoms_per_frame={"min": int(n_atoms.min()) if len(frames) else 0,
                         "mean": float(n_atoms.mean()) if len(frames) else 0.0,
                         "max": int(n_atoms.max()) if len(frames) else 0},
        atoms_per_type=counts.sum(0).astype(int).tolist(), label_counts=label_counts,
    )
    with_energy = [i for i, f in enumerate(frames) if present_weight(f, K.ENERGY) > 0]
    if with_energy:
        energies = np.array([float(frames[i][K.ENERGY]) for i in with_energy])
        bias, residual = energy_bias_lstsq(counts[with_energy], energies)
        per_atom = energies / n_atoms[with_energy]
        stats.energy_bias = bias.tolist()
        stats.energy_per_atom_mean = float(per_atom.mean())
        stats.energy_per_atom_std = float(per_atom.std())
        if len(energies) > 1:
            stats.energy_per_atom_sample_std = float(per_atom.std(ddof=1))
            stats.energy_sample_std = float(energies.std(ddof=1))
        stats.bias_residual_std = float(residual.std())
        stats.bias_residual_rms_per_atom = float(np.sqrt(np.mean((residual / n_atoms[with_energy]) ** 2)))
    with_forces = [f for f in frames if present_weight(f, K.FORCES) > 0]
    if with_forces:
        forces = np.concatenate([f[K.FORCES] for f in with_forces])
        types = np.concatenate([f[K.ATOM_TYPES] for f in with_forces])
        stats.forces_rms = float(np.sqrt(np.mean(forces ** 2)))
        sq = np.bincount(types, weights=(forces ** 2).sum(1), minlength=n_types)
        num = np.bincount(types, minlength=n_types) * 3
        stats.forces_rms_per_type = [float(np.sqrt(s / n)) if n else None for s, n in zip(sq, num)]
    if cutoff is not None:
        _neighbor_statistics(stats, frames, n_types, float(cutoff), dataset)
    return stats


def _neighbor_statistics(stats, frames, n_types, cutoff, dataset) -> None:
    """Streams over frames: one neighbour list at a time (never all in memory unless cached)."""
    use_cache = dataset is not None and abs(dataset.cutoff - cutoff) < 1e-12
    max_per_type = np.zeros(n_types, dtype=np.int64)
    max_total = 0
    sum_per_centre = np.zeros(n_types)
    atoms_per_centre = np.zeros(n_types)
    connected = 0
    min_distance = math.inf
    for index, frame in enumerate(frames):
        if use_cache:
            edge_index, shifts = dataset.edges(index)
        else:
            edge_index, shifts = neighbor_list(frame[K.POSITIONS], frame[K.CELL], frame[K.PBC], cutoff)
        types = frame[K.ATOM_TYPES]
        table = neighbor_counts(edge_index, types[edge_index[1]], len(types), n_types)
        max_per_type = np.maximum(max_per_type, table.max(0, initial=0))
        max_total = max(max_total, int(table.sum(1).max(initial=0)))
        sum_per_centre += np.bincount(types, weights=table.sum(1), minlength=n_types)
        atoms_per_centre += np.bincount(types, minlength=n_types)
        connected += int(np.count_nonzero(table.sum(1)))
        if edge_index.shape[1]:
            positions = frame[K.POSITIONS]
            vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts @ frame[K.CELL]
            min_distance = min(min_distance, float(np.sqrt((vectors ** 2).sum(1).min())))
    stats.cutoff = cutoff
    stats.max_neighbors_per_type = max_per_type.tolist()
    stats.max_neighbors_total = max_total
    stats.mean_neighbors = float(sum_per_centre.sum() / max(atoms_per_centre.sum(), 1))
    stats.mean_neighbors_connected = float(sum_per_centre.sum() / max(connected, 1))
    stats.mean_neighbors_per_type = [float(s / a) if a else None for s, a in zip(sum_per_centre, atoms_per_centre)]
    stats.min_distance = None if math.isinf(min_distance) else min_distance
