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

``data.valid_fraction`` validates on frames held out of the training files (:func:`split_frames`,
mace_run_train's split); ``isolated_atoms: exclude`` leaves the ``ISOLATED_ATOM`` reference frames
(MACE's E0s) out of the batches; ``drop_last`` drops a short last batch of each epoch.

The training data of each task are read once (:class:`DataProbe`): the family hook that fills in
what depends on the data (``ModelFamily.resolve_from_data``: DeePMD ``sel: "auto"``, NequIP's
``${training_data_stats:...}``...) and the datasets share that read; the neighbour statistics,
the dataset statistics and the model's data statistics go through the statistics file
(``data.stat_file``) when there is one. Every model-section value the hook filled in is logged.
A section with ``split`` takes one part of a random split of its frames (``mlpot.data.splits``);
``data.test`` is read for the evaluation after training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mlpot.data import (MIN_SANE_DISTANCE, AtomsDataset, EpochSampler, SystemSampler, TaskSampler, collate,
                        read_systems, resolve_batch_sizes, task_probabilities,
                        epoch_task_schedule)
from mlpot.data import keys as K
from mlpot.data.batching import concat_frame_lists
from mlpot.data.frames import FrameList
from mlpot.data.splits import split_indices
from mlpot.data.stat_file import StatisticsFile
from mlpot.errors import ConfigError, DataError

from mlpot.training.schema import DataConfig, DataSection, NativeConfig

__all__ = ["TrainingData", "MultiTaskData", "build_training_data"]


# optional model inputs: read only when the model declares them (model.input_keys)
_OPTIONAL_INPUTS = (K.FPARAM, K.APARAM, K.SPIN)


def split_frames(frames: FrameList, fraction: float, seed: int) -> Tuple[FrameList, FrameList]:
    """(training, validation) frames of a random hold-out, as mace_run_train splits: a numpy
    ``default_rng(seed)`` shuffle of the frame indices; the first n_train = min(n - int(fraction * n),
    n - 1) frames train, the rest validate (each part in shuffled order)."""
    size = len(frames)
    if size < 2:
        raise ConfigError(f"valid_fraction needs at least 2 training frames, got {size}", key="data.valid_fraction")
    n_train = min(size - int(fraction * size), size - 1)
    indices = list(range(size))
    np.random.default_rng(seed).shuffle(indices)
    part = lambda chosen: FrameList([frames[i] for i in chosen], frames.type_map, frames.source)  # noqa: E731
    return part(indices[:n_train]), part(indices[n_train:])


class DataProbe:
    """The systems of one data section, read once per type map (``mlpot.models.registry.DataProbe``).

    ``systems(type_map, skip)`` reads on first use and then serves later requests whose ``skip``
    contains the first one's (the keys they need were read). Frames marked ``ISOLATED_ATOM`` are
    set aside when the section excludes them; with ``valid_fraction`` the systems are the training
    part of the split (one system) and ``held_out`` the validation part. The statistics the family
    hooks read (neighbour counts, energies and composition, forces RMS, isolated-atom energies) are
    those of the training frames; neighbour statistics go through the statistics file.
    """

    def __init__(self, section: DataSection, store: Optional[StatisticsFile] = None, cutoff: Optional[float] = None,
                 valid_fraction: Optional[float] = None, split_seed: int = 0):
        self.section, self.store, self.cutoff = section, store, cutoff  # cutoff: data.cutoff, overriding the model's
        self.valid_fraction, self.split_seed = valid_fraction, split_seed
        self._read: Dict[tuple, tuple] = {}  # type_map -> (skip used, systems, held-out frames, isolated frames)
        self.reads = 0

    def _parts(self, type_map: Sequence[str], skip: Sequence[str] = ()):
        cached = self._read.get(tuple(type_map))
        if cached is not None and set(cached[0]) <= set(skip):
            return cached[1:]
        fmt = None if self.section.format == "auto" else self.section.format
        systems = read_systems(self.section.paths, fmt, type_map=list(type_map), key_map=self.section.key_map or None,
                               skip=tuple(skip))
        if self.section.split is not None:
            systems = [_split_part(systems, self.section.split)]
        self.reads += 1
        isolated = [(f, s.source) for s in systems for f in s if f.get(K.ISOLATED_ATOM, False)]
        if self.section.isolated_atoms == "exclude" and isolated:
            systems = [FrameList([f for f in s if not f.get(K.ISOLATED_ATOM, False)], s.type_map, s.source, s.sources)
                       for s in systems]
            systems = [s for s in systems if len(s)]
        held_out = None
        if self.valid_fraction is not None:
            train, held_out = split_frames(concat_frame_lists(systems), self.valid_fraction, self.split_seed)
            systems = [train]
        self._read[tuple(type_map)] = (tuple(skip), systems, held_out, isolated)
        return systems, held_out, isolated

    def systems(self, type_map: Sequence[str], skip: Sequence[str] = ()):
        return self._parts(type_map, skip)[0]

    def held_out(self, type_map: Sequence[str], skip: Sequence[str] = ()) -> Optional[FrameList]:
        """The validation frames of the valid_fraction split (None without one)."""
        return self._parts(type_map, skip)[1]

    def frames(self, type_map: Sequence[str]) -> FrameList:
        """All frames of the section (data keys of ``mlpot.data.keys``, float64 labels) on ``type_map``."""
        return concat_frame_lists(self.systems(type_map, _OPTIONAL_INPUTS))

    def statistics(self, cutoff: float, type_map: Sequence[str]):
        """:class:`~mlpot.data.statistics.DatasetStatistics` of the frames, neighbours at ``data.cutoff``
        (or ``cutoff``) Å, through the statistics file."""
        from mlpot.data import compute_statistics

        return compute_statistics(self.frames(type_map), list(type_map), float(self.cutoff or cutoff), cache=self.store)

    def mean_neighbors(self, cutoff: float, type_map: Sequence[str]) -> float:
        """Mean neighbour count within ``cutoff`` Å over the training atoms that have at least one."""
        return float(self.statistics(cutoff, type_map).mean_neighbors_connected)

    def atomic_numbers(self) -> List[int]:
        """Sorted atomic numbers of the elements in the training data (isolated atoms included)."""
        systems = read_systems(self.section.paths, None if self.section.format == "auto" else self.section.format,
                               key_map=self.section.key_map or None, skip=_OPTIONAL_INPUTS)
        return sorted({int(z) for system in systems for frame in system for z in frame[K.NUMBERS]})

    def energy_composition(self, type_map: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(atoms per type (n_frames, n_types), energy (n_frames,) eV) of the training frames with an energy."""
        frames = [f for f in self.frames(type_map) if K.ENERGY in f and float(f.get(K.weight_key(K.ENERGY), 1.0)) > 0]
        counts = np.array([np.bincount(f[K.ATOM_TYPES], minlength=len(type_map)) for f in frames], dtype=np.float64)
        return counts.reshape(len(frames), len(type_map)), np.array([float(f[K.ENERGY]) for f in frames])

    def forces_rms(self, type_map: Sequence[str]) -> Optional[float]:
        """Root mean square force component (eV/Å) over the training frames with forces (None without)."""
        forces = [f[K.FORCES] for f in self.frames(type_map) if K.FORCES in f
                  and float(f.get(K.weight_key(K.FORCES), 1.0)) > 0]
        return float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else None

    def isolated_atom_energies(self, type_map: Sequence[str]) -> Dict[int, float]:
        """{type index: energy (eV)} of the ISOLATED_ATOM frames with an energy (per type, the mean over
        the files that have one; within a file the last one counts, as mace_run_train reads them)."""
        per_file: Dict[tuple, float] = {}
        for frame, source in self._parts(type_map, _OPTIONAL_INPUTS)[2]:
            if K.ENERGY in frame:
                per_file[(int(frame[K.ATOM_TYPES][0]), source)] = float(frame[K.ENERGY])
        types = sorted({t for t, _ in per_file})
        return {t: float(np.mean([e for (u, _), e in per_file.items() if u == t])) for t in types}


def _split_part(systems, split) -> FrameList:
    """The frames of ``split.part`` of a random split of the systems' frames, in split order; no
    ``sources``, so statistics caches never mistake one part for another."""
    frames = concat_frame_lists(systems)
    indices = split_indices(len(frames), split.sizes, split.seed, key="data.split")[split.part]
    return FrameList([frames[i] for i in indices], frames.type_map, source=frames.source, sources=[])


def _dataset(probe: DataProbe, type_map, cutoff: float, skip=(), min_distance: float = MIN_SANE_DISTANCE):
    """The systems of ``probe`` as one AtomsDataset, every frame checked for atoms closer than ``min_distance``."""
    systems = probe.systems(type_map, skip)
    sizes = [len(s) for s in systems]
    n_atoms = [int(round(np.mean([len(f[K.POSITIONS]) for f in s]))) for s in systems]
    dataset = AtomsDataset(concat_frame_lists(systems), cutoff, type_map=type_map, min_distance=min_distance)
    return systems, dataset.check_distances(), sizes, n_atoms


def _sampler(section: DataSection, sizes, n_atoms, seed: int, shuffle: bool):
    if section.sampler == "deepmd":
        return SystemSampler(sizes, section.batch_size, n_atoms=n_atoms, auto_prob=section.auto_prob,
                             sys_probs=section.sys_probs, seed=seed)
    batch_size = resolve_batch_sizes(section.batch_size, [max(1, int(np.mean(n_atoms)))])[0]
    return EpochSampler(sum(sizes), batch_size, shuffle=shuffle and section.shuffle, drop_last=section.drop_last,
                        seed=seed)


@dataclass
class TrainingData:
    model: torch.nn.Module
    train: AtomsDataset
    train_sampler: object
    valid: Optional[AtomsDataset] = None
    valid_sampler: Optional[object] = None
    test: Optional[AtomsDataset] = None
    test_sampler: Optional[object] = None
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

    def valid_batches(self, sampler=None) -> Iterator[List[int]]:
        """Index lists of one validation round (of ``sampler``: the validation sampler by default)."""
        sampler = sampler or self.valid_sampler
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
    epoch_steps: Optional[int] = None  # run length in steps from training.task_epochs


def _stat_file(data_config: DataConfig) -> Optional[StatisticsFile]:
    return None if data_config.stat_file is None else StatisticsFile(data_config.stat_file, data_config.stat_file_mode)


def _probe(data_config: DataConfig, seed: int) -> DataProbe:
    split_seed = seed if data_config.split_seed is None else data_config.split_seed
    return DataProbe(data_config.train, _stat_file(data_config), data_config.cutoff, data_config.valid_fraction,
                     split_seed)


def model_statistics(model: torch.nn.Module, samples, store: Optional[StatisticsFile], identity,
                     log: Callable[[str], None] = lambda line: None, data_key: str = "data.train") -> None:
    """``model.compute_statistics(samples)``, or the same result read from the statistics file.

    The record holds the model state entries that the statistics change (env-matrix mean/std,
    output biases, network centring...), under a hash of ``identity`` (the model section,
    precision, data files, statistics sample and seed), so a changed model or dataset never
    reuses stale statistics. In ``read`` mode a missing record is a ConfigError. Statistics that are
    not finite (absurd labels) are a DataError at ``data_key``: never trained on, never stored.
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
    for entry, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DataError(f"the model's statistics of the training data are not finite ({entry!r}): check the "
                            "labels (values of absurd size?) and the positions", key=data_key)
    if name is not None:
        changed = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        store.write(name, changed)
        log(f"data statistics computed and written to {store.path}")


def _statistics_identity(config: NativeConfig, model, data_config: DataConfig, samples) -> dict:
    from mlpot.data.statistics import source_fingerprint

    split = data_config.train.split
    return {"model": model.config, "dtype": str(model.dtype), "seed": config.seed,
            "data": source_fingerprint(list(data_config.train.paths)), "split": split.model_dump() if split else None,
            "sample": [int(b[K.ATOM_TYPES].shape[0]) for b in samples]}


def _record_min_nbor_dist(model, train: AtomsDataset, store: Optional[StatisticsFile]) -> None:
    """Set ``model.min_nbor_dist`` (Å, its training record): the smallest distance between two atoms
    of the training frames within the dataset's cutoff, from the neighbour lists the training builds
    anyway (built now and kept) or the statistics file; None when no two atoms are that close."""
    from mlpot.data import compute_statistics

    model.min_nbor_dist = compute_statistics(train, list(model.type_map), train.cutoff, cache=store).min_distance


def _datasets(model, probe: DataProbe, data_config: DataConfig, seed: int, device,
              neighbor_stat: bool = True) -> Tuple[TrainingData, list]:
    """Training/validation datasets and samplers of one model (or head) and the statistics samples:
    the first ``model.statistics_batches`` batches of every training system (DeePMD's
    data_stat_nbatch, 10 by default). ``neighbor_stat``: record the model's min_nbor_dist."""
    cutoff = float(data_config.cutoff or model.cutoff)
    skip = tuple(key for key in _OPTIONAL_INPUTS if key not in model.input_keys)
    _, train, sizes, n_atoms = _dataset(probe, list(model.type_map), cutoff, skip, data_config.min_distance)
    if neighbor_stat:
        _record_min_nbor_dist(model, train, probe.store)
    sampler = _sampler(data_config.train, sizes, n_atoms, seed, shuffle=True)
    data = TrainingData(model, train, sampler, device=device)
    held_out = probe.held_out(list(model.type_map), skip)
    if held_out is not None:  # valid_fraction: batched as data.valid says, else as the training data
        section = data_config.valid or data_config.train
        data.valid = AtomsDataset(held_out, cutoff, type_map=list(model.type_map))
        n_valid_atoms = [int(round(np.mean([len(f[K.POSITIONS]) for f in held_out])))]
        data.valid_sampler = _sampler(section.model_copy(update={"sampler": "epoch"}), [len(held_out)], n_valid_atoms,
                                      seed + 1, shuffle=False)
    elif data_config.valid is not None:
        _, valid, vsizes, vatoms = _dataset(DataProbe(data_config.valid), list(model.type_map), cutoff, skip,
                                            data_config.min_distance)
        data.valid = valid
        data.valid_sampler = _sampler(data_config.valid, vsizes, vatoms, seed + 1, shuffle=False)
        data.numb_btch = data_config.valid.numb_btch
    if data_config.test is not None:
        _, data.test, tsizes, tatoms = _dataset(DataProbe(data_config.test), list(model.type_map), cutoff, skip,
                                              data_config.min_distance)
        data.test_sampler = EpochSampler(sum(tsizes), resolve_batch_sizes(data_config.test.batch_size,
                                                                          [max(1, int(np.mean(tatoms)))])[0], shuffle=False)
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


def _changed_leaves(before, after, path: str = "model"):
    """(key path, value) of every value of ``after`` that differs from ``before`` (nested mappings walked)."""
    if isinstance(before, dict) and isinstance(after, dict) and not (set(before) - set(after)):
        for key, value in after.items():
            yield from _changed_leaves(before.get(key), value, f"{path}.{key}")
    elif before != after:
        yield path, after


def _log_resolved(before, after, log: Callable[[str], None]) -> None:
    """One line per model-section value the family filled in from the training data."""
    for path, value in _changed_leaves(before, after):
        log(f"from the training data: {path} = {value}")


def build_training_data(config: NativeConfig, dtype: torch.dtype, *, file: Optional[str] = None,
                        with_statistics: bool = True, device: Optional[torch.device] = None,
                        log: Callable[[str], None] = lambda line: None,
                        resolve_from_data: bool = True) -> Union[TrainingData, MultiTaskData]:
    """Build the model and the data of ``config``; ``with_statistics`` runs model.compute_statistics
    (or reads its result from ``data.stat_file``). ``log`` receives one-line notes.
    ``resolve_from_data`` False builds the model section as given: the family's data hook (DeePMD
    ``sel: "auto"`` from the neighbour statistics...) is skipped (``dp train --skip-neighbor-stat``),
    and so is the model's min_nbor_dist (``mlpot.models.record``), else measured on the training data.

    With ``config.tasks`` (multi-task) the result is a :class:`MultiTaskData`.
    """
    from mlpot.models.registry import build_model, family_of

    device = device or torch.device("cpu")
    family = family_of(config.model)
    if not resolve_from_data:
        family = replace(family, resolve_from_data=None)
    if config.tasks is not None:
        return _build_multi_task_data(config, family, dtype, with_statistics, device, log, resolve_from_data)
    probe = _probe(config.data, config.seed)
    section = family.resolve_from_data(config.model, {"": probe}) if family.resolve_from_data else config.model
    _log_resolved(config.model, section, log)
    model = build_model(section, dtype=dtype)
    data, samples = _datasets(model, probe, config.data, config.seed, device, resolve_from_data)
    data.stat_samples = samples
    if with_statistics and hasattr(model, "compute_statistics"):
        model_statistics(model, samples, _stat_file(config.data),
                         _statistics_identity(config, model, config.data, samples), log)
    model.to(device)
    return data


def _build_multi_task_data(config: NativeConfig, family, dtype: torch.dtype, with_statistics: bool,
                           device: torch.device, log: Callable[[str], None], neighbor_stat: bool) -> MultiTaskData:
    """Heads, per-task data and the task sampler; statistics of shared modules pooled over tasks (the model's)."""
    from mlpot.models.registry import build_model

    probes = {name: _probe(task.data, config.seed) for name, task in config.tasks.items()}
    section = family.resolve_from_data(config.model, probes) if family.resolve_from_data else config.model
    _log_resolved(config.model, section, log)
    model = build_model(section, dtype=dtype)
    tasks: Dict[str, TrainingData] = {}
    samples: Dict[str, list] = {}
    for index, (name, task) in enumerate(config.tasks.items()):
        head = model.heads[name]
        # seeds 2k+2, 2k+3 for task k's train/valid samplers; the task choice uses the seed itself
        tasks[name], samples[name] = _datasets(head, probes[name], task.data, config.seed + 2 * index + 2, device,
                                               neighbor_stat)
        tasks[name].stat_samples = samples[name]
    n_systems = {name: len(task.data.train.paths) for name, task in config.tasks.items()}
    probabilities = task_probabilities({name: task.prob for name, task in config.tasks.items()}, n_systems)
    epoch_steps = None  # run length of training.task_epochs, which also sets the task probabilities
    if config.training.task_epochs is not None:
        probabilities, epoch_steps = epoch_task_schedule(
            {name: tasks[name].train_sampler.steps_for_epochs(1.0) for name in config.tasks}, config.training.task_epochs)
        log(f"task_epochs {config.training.task_epochs}: {epoch_steps} steps, task probabilities "
            + ", ".join(f"{name} {p:.6g}" for name, p in probabilities.items()))
    sampler = TaskSampler(list(config.tasks), [probabilities[name] for name in config.tasks], seed=config.seed)
    if with_statistics:
        # one record for the whole model, in the first task's statistics file
        store = next((_stat_file(task.data) for task in config.tasks.values() if task.data.stat_file), None)
        identity = {name: _statistics_identity(config, model, task.data, samples[name]) for name, task in config.tasks.items()}
        model_statistics(model, samples, store, identity, log, data_key="tasks")
    model.to(device)
    return MultiTaskData(model, tasks, sampler, epoch_steps)
