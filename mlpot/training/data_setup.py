"""From the ``data`` section to what the trainer iterates: model, datasets, samplers, batches.

Systems are read with the data layer (``read_systems``) onto the model's ``type_map``; neighbour
lists are built once per frame at the model cutoff (or ``data.cutoff``) and cached by
``AtomsDataset``. The training sampler is DeePMD's system sampler (``sampler: deepmd``: a random
system per step, batch sizes by the ``auto:N``/``max:N`` rules) or shuffled epochs (``epoch``).
Validation with ``sampler: deepmd`` takes the next ``numb_btch`` batches at each display (DeePMD);
with ``epoch`` it is one full pass in file order. Model statistics (env-matrix mean/std, energy
bias) use the first ``model.data_stat_nbatch`` (10) batches of every training system.
Batches are float64 (data precision); the model casts to its own precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional

import numpy as np
import torch

from mlpot.data import AtomsDataset, EpochSampler, SystemSampler, collate, read_systems, resolve_batch_sizes
from mlpot.data import keys as K
from mlpot.data.batching import concat_frame_lists

if TYPE_CHECKING:  # the config layer sits above training; only its types are named here
    from mlpot.config.schema import DataSection, NativeConfig

__all__ = ["TrainingData", "build_training_data"]


def _read(section: "DataSection", type_map, cutoff: float):
    fmt = None if section.format == "auto" else section.format
    systems = read_systems(section.paths, fmt, type_map=type_map, key_map=section.key_map or None)
    sizes = [len(s) for s in systems]
    n_atoms = [int(round(np.mean([len(f[K.POSITIONS]) for f in s]))) for s in systems]
    return systems, AtomsDataset(concat_frame_lists(systems), cutoff, type_map=type_map), sizes, n_atoms


def _sampler(section: "DataSection", sizes, n_atoms, seed: int, shuffle: bool):
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


def build_training_data(config: "NativeConfig", dtype: torch.dtype, *, file: Optional[str] = None,
                        with_statistics: bool = True, device: Optional[torch.device] = None) -> TrainingData:
    """Build the model and the data of ``config``; ``with_statistics`` runs model.compute_statistics."""
    from mlpot.models import build_model

    model_config = config.model
    descriptor = model_config.get("descriptor") if isinstance(model_config.get("descriptor"), dict) else {}
    parts = descriptor.get("list", [descriptor]) if descriptor.get("type") == "hybrid" else [descriptor]
    if any(isinstance(part.get("sel"), str) for part in parts):
        # sel: "auto[:factor]" needs the maximum neighbour count per type at the descriptor cutoff
        from mlpot.data import compute_statistics
        from mlpot.models import resolve_auto_sel

        rcut = float(config.data.cutoff or max(float(part.get("rcut", 6.0)) for part in parts))
        _, probe, _, _ = _read(config.data.train, list(model_config["type_map"]), rcut)
        cache = None if config.data.stat_file is None else Path(config.data.stat_file)
        stats = compute_statistics(probe, list(model_config["type_map"]), rcut, cache_dir=cache)
        model_config = resolve_auto_sel(model_config, stats.max_neighbors_per_type)
    model = build_model(model_config, dtype=dtype)
    cutoff = float(config.data.cutoff or model.cutoff)
    systems, train, sizes, n_atoms = _read(config.data.train, list(model.type_map), cutoff)
    sampler = _sampler(config.data.train, sizes, n_atoms, config.seed, shuffle=True)
    data = TrainingData(model, train, sampler, device=device or torch.device("cpu"))
    if config.data.valid is not None:
        _, valid, vsizes, vatoms = _read(config.data.valid, list(model.type_map), cutoff)
        data.valid = valid
        data.valid_sampler = _sampler(config.data.valid, vsizes, vatoms, config.seed + 1, shuffle=False)
        data.numb_btch = config.data.valid.numb_btch
    if with_statistics and hasattr(model, "compute_statistics"):
        n_batches = int(config.model.get("data_stat_nbatch", 10))
        batch_sizes = resolve_batch_sizes(config.data.train.batch_size, n_atoms) \
            if not isinstance(config.data.train.batch_size, int) else [config.data.train.batch_size] * len(sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        samples = []
        for system, (size, bs) in enumerate(zip(sizes, batch_sizes)):
            bs = max(1, bs)
            for start in range(0, min(size, n_batches * bs), bs):
                stop = min(size, start + bs)
                samples.append(collate([train[int(offsets[system] + i)] for i in range(start, stop)]))
        model.compute_statistics(samples)
    model.to(data.device)
    return data
