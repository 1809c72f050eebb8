"""The tasks of a training run: single-task training is one task named "", multi-task training one task
per head (DeePMD ``model_dict``).

:class:`Tasks` holds, per task, its data (:class:`~mlpot.training.data_setup.TrainingData`), the
model head it trains, its loss section and the metric labels of every stage's loss (fixed log
columns even when stages change the terms); it builds a stage's losses, checks that the data have
the per-atom inputs the losses read, evaluates the validation values of every task, and the display
values of one extra training batch of a task (no update; DeePMD-kit shows every task at a display).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Tuple

import torch

from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.training.data_setup import MultiTaskData, TrainingData
from mlpot.training.distributed import shard_indices
from mlpot.training.logging import format_loss_breakdown
from mlpot.training.losses import WeightedLoss
from mlpot.training.metrics import label_error_sums
from mlpot.training.metrics import AtomWeightedMean, PooledErrors, lcurve_values

__all__ = ["Tasks", "predict", "next_indices"]


def predict(model: torch.nn.Module, batch: Dict[str, torch.Tensor], labels, create_graph: bool) -> Dict[str, torch.Tensor]:
    """Model outputs for ``labels``: forces/virial/stress by autograd when a label needs them."""
    forces, virial, stress = K.FORCES in labels or K.FORCE_MAG in labels, K.VIRIAL in labels, K.STRESS in labels
    hessian = K.HESSIAN in labels and K.HESSIAN in batch  # (3N)² per frame: only where the data carry it
    if forces or virial or stress or hessian:
        from mlpot.models.derivatives import compute_derivatives

        return compute_derivatives(model, batch, forces=forces, virial=virial, stress=stress,
                                   create_graph=create_graph, hessian=hessian)
    return model(batch)


def next_indices(data: TrainingData) -> List[int]:
    """The next training batch of a task (an EpochSampler returns None once at the end of each pass)."""
    while True:
        indices = data.train_sampler.next_batch()
        if indices is not None:
            return indices


class Tasks:
    """Per-task data, heads, loss sections and metric labels (module docstring)."""

    def __init__(self, data, config, stages, file: Optional[str] = None):
        self.multi_task = isinstance(data, MultiTaskData)
        self.file = file
        if self.multi_task:
            self.data: Dict[str, TrainingData] = dict(data.tasks)
            self.heads: Dict[str, torch.nn.Module] = {name: data.model.heads[name] for name in self.data}
            self.loss_configs = {name: task.loss for name, task in config.tasks.items()}
            self.sampler = data.task_sampler
        else:
            self.data, self.heads = {"": data}, {"": data.model}
            self.loss_configs, self.sampler = {"": config.loss}, None
        self.names = list(self.data)
        self.stages = list(stages)
        self.labels: Dict[str, Tuple[str, ...]] = {
            name: tuple(dict.fromkeys(label for stage in self.stages
                                      for label in WeightedLoss(stage.loss or loss.terms, loss.type, file=file,
                                                                type_map=self.heads[name].type_map).metric_labels))
            for name, loss in self.loss_configs.items()}
        self.all_labels = tuple(dict.fromkeys(label for labels in self.labels.values() for label in labels))

    def record_hessian_mode(self) -> None:
        """Set each head's ``hessian_mode`` (its training record, ``mlpot.models.record``): True when a
        stage of its loss has a Hessian term (DeePMD-kit's hessian_mode; mlpot test then evaluates Hessians)."""
        for name, head in self.heads.items():
            head.hessian_mode = K.HESSIAN in self.labels[name]

    def losses(self, stage) -> Dict[str, WeightedLoss]:
        """The loss of every task in ``stage`` (its own terms or the task's)."""
        return {name: WeightedLoss(stage.loss or loss.terms, loss.type, loss.intensive_ener_virial, file=self.file,
                                   atom_ener_coeff=loss.atom_ener_coeff, type_map=self.heads[name].type_map)
                for name, loss in self.loss_configs.items()}

    def check_loss_inputs(self) -> None:
        """DataError naming the system and key when a loss option needs a per-atom input
        (atom_ener_coeff, atom_weight, drdq) that the training or validation data lack;
        ConfigError when a term's label is in no frame of the training data, or when a term needs
        forces, virial, stress or Hessians of an energy-only model."""
        for name, loss in self.loss_configs.items():
            for stage in self.stages:
                derived = [term for term, fn in WeightedLoss(stage.loss or loss.terms, loss.type, file=self.file,
                                                             type_map=self.heads[name].type_map).fns.items()
                           if fn.label in (K.FORCES, K.VIRIAL, K.STRESS, K.HESSIAN)]
                if derived and not getattr(self.heads[name], "energy_derivatives", True):
                    raise ConfigError(f"the model is energy-only (no forces, virial, stress or Hessian: do_derivatives false), "
                                      f"so the loss cannot compare {derived[0]}", file=self.file, key=["loss", "terms", derived[0]])
                checker = WeightedLoss(stage.loss or loss.terms, loss.type, file=self.file,
                                       atom_ener_coeff=loss.atom_ener_coeff, type_map=self.heads[name].type_map)
                checker.check_labels(self.data[name].train.frames,
                                     f"training data of task {name!r}" if self.multi_task else "training data")
                for dataset in (self.data[name].train, self.data[name].valid):
                    if dataset is not None:
                        checker.check_data(dataset.frames)

    def keys(self, task: str, values: Dict[str, float]) -> Dict[str, float]:
        """Multi-task display keys ``<key>_<task>`` (single-task keys unchanged)."""
        return {f"{k}_{task}": v for k, v in values.items()} if self.multi_task else values

    def batch_values(self, task: str, loss: WeightedLoss, lr_ratio: float, dist) -> Dict[str, float]:
        """lcurve values of ``task`` on its next training batch, without an update (multi-task display)."""
        data, head = self.data[task], self.heads[task]
        batch = data.train_batch(shard_indices(next_indices(data), dist))
        pred = loss.prepare({k: v.detach() for k, v in predict(head, batch, loss.labels, create_graph=False).items()},
                            batch)
        reduce = dist.sum if dist.enabled else None
        with torch.no_grad():
            total, _, _ = loss(pred, batch, lr_ratio, reduce=reduce)
            sums = label_error_sums(pred, batch, loss.metric_labels)
        total = float(dist.sum(total)) if dist.enabled else float(total)
        if dist.enabled:
            sums = {k: dist.sum(v) for k, v in sums.items()}
        return lcurve_values(total, sums, self.labels[task])

    def validate(self, model: torch.nn.Module, ema, losses: Dict[str, WeightedLoss], lr_ratio: float,
                 debug: Callable[[str], None]) -> Optional[Dict[str, float]]:
        """Validation values (lcurve keys atom-weighted per batch, pooled <label>_rmse/_mae) of every
        task with validation data (multi-task keys ``<key>_<task>``), with the EMA weights when on."""
        out: Dict[str, float] = {}
        model.eval()
        with ema.applied(model) if ema is not None else contextlib.nullcontext():
            for task in self.names:
                values = self._validate_task(task, losses[task], lr_ratio, debug)
                if values is not None:
                    out.update(self.keys(task, values))
        return out or None

    def _validate_task(self, task: str, loss: WeightedLoss, lr_ratio: float, debug) -> Optional[Dict[str, float]]:
        return self.evaluate(task, "valid", loss, lr_ratio, debug)

    def evaluate(self, task: str, split: str, loss: WeightedLoss, lr_ratio: float, debug) -> Optional[Dict[str, float]]:
        """lcurve values and pooled <label>_rmse/_mae of one task's ``valid`` or ``test`` data (None without)."""
        data, head, labels = self.data[task], self.heads[task], self.labels[task]
        sampler, dataset = getattr(data, f"{split}_sampler"), getattr(data, split)
        if sampler is None:
            return None
        lcurve, pooled = AtomWeightedMean(), PooledErrors()
        for indices in data.valid_batches(sampler):
            batch = data._batch(dataset, indices)
            pred = loss.prepare(predict(head, batch, labels, create_graph=False), batch)
            with torch.no_grad():
                total, weighted, _ = loss({k: v.detach() for k, v in pred.items()}, batch, lr_ratio)
            debug(format_loss_breakdown({k: float(v) for k, v in weighted.items()}))
            sums = label_error_sums(pred, batch, labels)
            lcurve.add(lcurve_values(float(total), sums, labels), int(batch[K.N_ATOMS].sum()))
            pooled.add(sums)
        return {**lcurve.result(), **pooled.result()}
