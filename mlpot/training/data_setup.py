"""From the ``data`` section to what the trainer iterates: model, datasets, samplers, batches.

Systems are read with the data layer (``read_systems``) onto the model's ``type_map``; neighbour
lists are built once per frame at the model cutoff (or ``data.cutoff``) and cached by
``AtomsDataset``. The training sampler is DeePMD's system sampler (``sampler: deepmd``: a random
system per step, batch sizes by the ``auto:N``/``max:N`` rules) or shuffled epochs (``epoch``).
Validation with ``sampler: deepmd`` takes the next ``numb_btch`` batches at each display (DeePMD);
with ``epoch`` it is one full pass in file order. Model statistics (``model.compute_statistics``:
input normalisation, output bias) use the first ``model.statistics_batches`` (10) batches of every
training system.
Multi-task (``config.tasks``): one dataset pair and sampler set per task, read onto that task's head;
a :class:`~mlpot.data.TaskSampler` picks the task of each step (``prob`` normalised; default
proportional to the number of training systems of each task, as DeePMD-kit's ``model_prob``).
Batches are float64 (data precision); the model casts to its own precision.

The training data of each task are read once (:class:`DataProbe`): the family hook that fills in
what depends on the data (``ModelFamily.resolve_from_data``: DeePMD ``sel: "auto"``...) and the
datasets share that read; the neighbour statistics and the model's data statistics go through
the statistics file (``data.stat_file``) when there is one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mlpot.data import (AtomsDataset, EpochSampler, SystemSampler, TaskSampler, collate, read_systems,
                        resolve_batch_sizes, task_probabilities)
from mlpot.data import keys as K
from mlpot.data.batching import concat_frame_lists
from mlpot.data.stat_file import StatisticsFile
from mlpot.errors import ConfigError

from mlpot.training.schema import DataConfig, DataSection, NativeConfig

__all__ = ["TrainingData", "MultiTaskData", "build_training_data"]


# optional model inputs: read only when the model declares them (model.input_keys)
_OPTIONAL_INPUTS = (K.FPARAM, K.APARAM)


class DataProbe:
    """The systems of one data section, read once per type map (``mlpot.models.registry.DataProbe``).

    ``systems(type_map, skip)`` reads on first use and then serves later requests whose ``skip``
    contains the first one's (the keys they need were read); ``max_neighbors`` computes neighbour
    statistics on those frames through the statistics file.
    """

    def __init__(self, section: DataSection, store: Optional[StatisticsFile] = None, cutoff: Optional[float] = None):
        self.section, self.store, self.cutoff = section, store, cutoff  # cutoff: data.cutoff, overriding the model's
        self._read: Dict[tuple, tuple] = {}  # type_map -> (skip used, systems)
        self.reads = 0

    def systems(self, type_map: Sequence[str], skip: Sequence[str] = ()):
        cached = self._read.get(tuple(type_map))
        if cached is not None and set(cached[0]) <= set(skip):
            return cached[1]
        fmt = None if self.section.format == "auto" else self.section.format
        systems = read_systems(self.section.paths, fmt, type_map=list(type_map), key_map=self.section.key_map or None,
                               skip=tuple(skip))
        self.reads += 1
        self._read[tuple(type_map)] = (tuple(skip), systems)
        return systems

    def max_neighbors(self, cutoff: float, type_map: Sequence[str]) -> np.ndarray:
        from mlpot.data import compute_statistics

        frames = concat_frame_lists(self.systems(type_map, _OPTIONAL_INPUTS))
        stats = compute_statistics(frames, list(type_map), float(self.cutoff or cutoff), cache=self.store)
        return np.asarray(stats.max_neighbors_per_type)


def _dataset(probe: DataProbe, type_map, cutoff: float, skip=()):
    systems = probe.systems(type_map, skip)
    sizes = [len(s) for s in systems]
    n_atoms = [int(round(np.mean([len(f[K.POSITIONS]) for f in s]))) for s in systems]
    return systems, AtomsDataset(concat_frame_lists(systems), cutoff, type_map=type_map), sizes, n_atoms


def _sampler(section: DataSection, sizes, n_atoms, seed: int, shuffle: bool):
    if section.sampler == "deepmd":
        return SystemSampler(sizes, section.batch_size, n_atoms=n_atoms, auto_prob=section.auto_prob,
                             sys_probs=section.sys_probs, seed=seed)
    batch_size = resolve_batch_sizes(section.batch_size, [max(1, int(np.mean(n_atoms)))])[0]
    return EpochSampler(sum(sizes), batch_size, shuffle=shuffle and section.shuffle, seed=seed)


@dataclass
class TrainingData:
    model: torch.nn.Module
    train: AtomsDataset
    train_sampler: object
    valid: Optional[AtomsDataset] = None
    valid_sampler: Optional[object] = None
    numb_btch: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    stat_samples: list = field(default_factory=list)  # the statistics sample (collated batches)

    def _batch(self, dataset: AtomsDataset, indices: List[int]):
        batch = collate([dataset[i] for i in indices], dtype=torch.float64)
        return {k: v.to(self.device) for k, v in batch.items()}

    def train_batch(self, indices: List[int]):
        return self._batch(self.train, indices)

    def valid_batch(self, indices: List[int]):
        return self._batch(self.valid, indices)

    def valid_batches(self) -> Iterator[List[int]]:
        """Index lists of one validation round."""
        sampler = self.valid_sampler
        if isinstance(sampler, SystemSampler):
            count = self.numb_btch if self.numb_btch > 0 else len(sampler)
            for _ in range(count):
                yield sampler.next_batch()
            return
        sampler.load_state_dict({"seed": sampler.seed, "epoch": 0, "cursor": 0})
        while (indices := sampler.next_batch()) is not None:
            yield indices


@dataclass
class MultiTaskData:
    """Multi-task training: the multi-task model, one :class:`TrainingData` per task (whose ``model``
    is that task's head) and the sampler of the task of each step."""

    model: torch.nn.Module
    tasks: Dict[str, TrainingData]
    task_sampler: TaskSampler


def _stat_file(data_config: DataConfig) -> Optional[StatisticsFile]:
    return None if data_config.stat_file is None else StatisticsFile(data_config.stat_file, data_config.stat_file_mode)


def _probe(data_config: DataConfig) -> DataProbe:
    return DataProbe(data_config.train, _stat_file(data_config), data_config.cutoff)


def model_statistics(model: torch.nn.Module, samples, store: Optional[StatisticsFile], identity,
                     log: Callable[[str], None] = lambda line: None) -> None:
    """``model.compute_statistics(samples)``, or the same result read from the statistics file.

    The record holds the model state entries that the statistics change (env-matrix mean/std,
    output biases, network centring...), under a hash of ``identity`` (the model section,
    precision, data files, statistics sample and seed), so a changed model or dataset never
    reuses stale statistics. In ``read`` mode a missing record is a ConfigError.
    """
    name = None
    if store is not None:
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
        name = f"model/{digest}"
        record = store.read(name)
        state = model.state_dict()
        if record is not None and all(k in state and tuple(state[k].shape) == v.shape for k, v in record.items()):
            model.load_state_dict({k: torch.as_tensor(v, dtype=state[k].dtype) for k, v in record.items()}, strict=False)
            log(f"data statistics read from {store.path}")
            return
        if store.mode == "read":
            raise ConfigError(f"stat_file_mode 'read': {store.path} holds no statistics for this model and data "
                              "(run once with stat_file_mode 'update')", key="data.stat_file")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.compute_statistics(samples)
    if name is not None:
        changed = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        store.write(name, changed)
        log(f"data statistics computed and written to {store.path}")


def _statistics_identity(config: NativeConfig, model, data_config: DataConfig, samples) -> dict:
    from mlpot.data.statistics import source_fingerprint

    return {"model": model.config, "dtype": str(model.dtype), "seed": config.seed,
            "data": source_fingerprint(list(data_config.train.paths)),
            "sample": [int(b[K.ATOM_TYPES].shape[0]) for b in samples]}


def _datasets(model, probe: DataProbe, data_config: DataConfig, seed: int, device) -> Tuple[TrainingData, list]:
    """Training/validation datasets and samplers of one model (or head) and the statistics samples:
    the first ``model.statistics_batches`` batches of every training system (DeePMD's
    data_stat_nbatch, 10 by default)."""
    cutoff = float(data_config.cutoff or model.cutoff)
    skip = tuple(key for key in _OPTIONAL_INPUTS if key not in model.input_keys)
    _, train, sizes, n_atoms = _dataset(probe, list(model.type_map), cutoff, skip)
    valid_split = None
    if data_config.valid is None and data_config.valid_fraction:
        train, valid_split, sizes, n_atoms = _split_fraction(train, data_config.valid_fraction, seed, cutoff)
    sampler = _sampler(data_config.train, sizes, n_atoms, seed, shuffle=True)
    data = TrainingData(model, train, sampler, device=device)
    if valid_split is not None:
        data.valid = valid_split
        data.valid_sampler = EpochSampler(len(valid_split), data_config.valid_batch_size, shuffle=False, seed=seed + 1)
        data.numb_btch = 0
    if data_config.valid is not None:
        _, valid, vsizes, vatoms = _dataset(DataProbe(data_config.valid), list(model.type_map), cutoff, skip)
        data.valid = valid
        data.valid_sampler = _sampler(data_config.valid, vsizes, vatoms, seed + 1, shuffle=False)
        data.numb_btch = data_config.valid.numb_btch
    n_batches = int(getattr(model, "statistics_batches", 10))
    batch_sizes = resolve_batch_sizes(data_config.train.batch_size, n_atoms) \
        if not isinstance(data_config.train.batch_size, int) else [data_config.train.batch_size] * len(sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    samples = []
    for system, (size, bs) in enumerate(zip(sizes, batch_sizes)):
        bs = max(1, bs)
        for start in range(0, min(size, n_batches * bs), bs):
            stop = min(size, start + bs)
            samples.append(collate([train[int(offsets[system] + i)] for i in range(start, stop)]))
    return data, samples


def _split_fraction(dataset: AtomsDataset, fraction: float, seed: int, cutoff: float):
    """(train, valid, sizes, mean atoms) with the last ``fraction`` of a seeded shuffle validating
    (mace-torch's random_train_valid_split); the frames keep their order within each part."""
    import random

    indices = list(range(len(dataset)))
    random.Random(seed).shuffle(indices)
    n_valid = max(1, int(round(fraction * len(indices))))
    train_index, valid_index = sorted(indices[: len(indices) - n_valid]), sorted(indices[len(indices) - n_valid:])
    frames = dataset.frames
    train = AtomsDataset([frames[i] for i in train_index], cutoff, type_map=dataset.type_map)
    valid = AtomsDataset([frames[i] for i in valid_index], cutoff, type_map=dataset.type_map)
    n_atoms = [int(round(np.mean([len(frames[i][K.POSITIONS]) for i in train_index])))]
    return train, valid, [len(train_index)], n_atoms


def build_training_data(config: NativeConfig, dtype: torch.dtype, *, file: Optional[str] = None,
                        with_statistics: bool = True, device: Optional[torch.device] = None,
                        log: Callable[[str], None] = lambda line: None) -> Union[TrainingData, MultiTaskData]:
    """Build the model and the data of ``config``; ``with_statistics`` runs model.compute_statistics
    (or reads its result from ``data.stat_file``). ``log`` receives one-line notes.

    With ``config.tasks`` (multi-task) the result is a :class:`MultiTaskData`.
    """
    from mlpot.models.registry import build_model, family_of

    device = device or torch.device("cpu")
    family = family_of(config.model)
    if config.tasks is not None:
        return _build_multi_task_data(config, family, dtype, with_statistics, device, log)
    probe = _probe(config.data)
    section = family.resolve_from_data(config.model, {"": probe}) if family.resolve_from_data else config.model
    model = build_model(section, dtype=dtype)
    data, samples = _datasets(model, probe, config.data, config.seed, device)
    data.stat_samples = samples
    if with_statistics and hasattr(model, "compute_statistics"):
        model_statistics(model, samples, _stat_file(config.data),
                         _statistics_identity(config, model, config.data, samples), log)
    model.to(device)
    return data


def _build_multi_task_data(config: NativeConfig, family, dtype: torch.dtype, with_statistics: bool,
                           device: torch.device, log: Callable[[str], None]) -> MultiTaskData:
    """Heads, per-task data and the task sampler; statistics of shared modules pooled over tasks (the model's)."""
    from mlpot.models.registry import build_model

    probes = {name: _probe(task.data) for name, task in config.tasks.items()}
    section = family.resolve_from_data(config.model, probes) if family.resolve_from_data else config.model
    model = build_model(section, dtype=dtype)
    tasks: Dict[str, TrainingData] = {}
    samples: Dict[str, list] = {}
    for index, (name, task) in enumerate(config.tasks.items()):
        head = model.heads[name]
        # seeds 2k+2, 2k+3 for task k's train/valid samplers; the task choice uses the seed itself
        tasks[name], samples[name] = _datasets(head, probes[name], task.data, config.seed + 2 * index + 2, device)
        tasks[name].stat_samples = samples[name]
    n_systems = {name: len(task.data.train.paths) for name, task in config.tasks.items()}
    probabilities = task_probabilities({name: task.prob for name, task in config.tasks.items()}, n_systems)
    sampler = TaskSampler(list(config.tasks), [probabilities[name] for name in config.tasks], seed=config.seed)
    if with_statistics:
        # one record for the whole model, in the first task's statistics file
        store = next((_stat_file(task.data) for task in config.tasks.values() if task.data.stat_file), None)
        identity = {name: _statistics_identity(config, model, task.data, samples[name]) for name, task in config.tasks.items()}
        model_statistics(model, samples, store, identity, log)
    model.to(device)
    return MultiTaskData(model, tasks, sampler)
