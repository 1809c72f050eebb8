"""mlpot.data: frames, readers/writers, neighbour lists, batching, samplers and statistics.

Public interface (see docs/data.md):

* :func:`read_frames`, :func:`read_systems`, :func:`write_frames` — extxyz and DeePMD systems;
  a frame is ``dict[str, np.ndarray]`` with keys from :mod:`mlpot.data.keys`.
* :func:`neighbor_list`, :func:`build_sel_matrix`, :func:`edge_vectors` — vesin edges and
  DeePMD's padded per-type neighbour matrices.
* :class:`AtomsDataset`, :func:`collate` — cached neighbour lists and batches of tensors.
* :class:`SystemSampler`, :class:`EpochSampler` — deterministic, resumable batch samplers;
  :class:`TaskSampler` — the task of each multi-task training step.
* :func:`compute_statistics` — energy bias, forces RMS, neighbour statistics, cached on disk.
"""

from mlpot.data.batching import MIN_SANE_DISTANCE, AtomsDataset, check_distances, collate, concat_frame_lists
from mlpot.data.frames import FrameList, numbers_from_type_map
from mlpot.data.io import FORMATS, detect_format, merge_type_maps, read_frames, read_systems, write_frames
from mlpot.data.neighbors import build_sel_matrix, edge_vectors, neighbor_counts, neighbor_list
from mlpot.data.samplers import (EpochSampler, SystemSampler, TaskSampler, epoch_task_schedule, resolve_batch_sizes,
                                 system_probabilities, task_probabilities)
from mlpot.data.statistics import DatasetStatistics, auto_sel, compute_statistics, energy_bias_lstsq

__all__ = [
    "FrameList", "numbers_from_type_map",
    "FORMATS", "detect_format", "read_frames", "read_systems", "write_frames", "merge_type_maps",
    "neighbor_list", "edge_vectors", "build_sel_matrix", "neighbor_counts",
    "AtomsDataset", "collate", "concat_frame_lists", "MIN_SANE_DISTANCE", "check_distances",
    "SystemSampler", "EpochSampler", "TaskSampler", "resolve_batch_sizes", "system_probabilities",
    "task_probabilities", "epoch_task_schedule",
    "DatasetStatistics", "compute_statistics", "energy_bias_lstsq", "auto_sel",
]
