"""The training loop: a plain PyTorch loop driven by a validated :class:`NativeConfig`.

One step: draw the global batch (sampler), keep this rank's share, predict (forces/virial by
autograd through ``mlpot.models.derivatives``), loss = Σ prefactor · term (prefactors may follow
lr / start_lr, DeePMD), backward, sum gradients over ranks, clip, optimizer and lr-scheduler step,
EMA update. A non-finite loss skips the update (logged and counted; training stops after
``training.max_nonfinite`` such steps). Steps are counted from 0; DeePMD's displayed step is
``step + 1``.

Display (step 1, every ``logging.disp_freq`` steps and the last): lcurve.out row (training values
of the current batch, or with ``logging.disp_avg`` their mean over the steps since the previous
display), validation values averaged over ``numb_btch`` batches with atom-count
weights), a metrics-CSV row (pooled validation RMSE/MAE per label), TensorBoard scalars. Every
train and validation batch writes a ``loss breakdown:`` line to the debug log.

Checkpoints (rank 0, atomic) hold everything needed for an exact resume: model config and weights,
optimizer, schedulers, EMA, RNG states (torch, numpy, python), sampler positions, step and epoch.

Multi-task training (``config.tasks``, DeePMD ``model_dict``): each step draws one task with the
task sampler, takes the next batch of that task's data and does one optimiser step on that task's
loss through that task's head (the heads share their descriptor, so every step moves it). At a
display step the other tasks' training values come from one extra training batch each, without an
update (as DeePMD-kit does), and every task is validated on its own data; lcurve.out has the
columns ``<key>_val_<task> <key>_trn_<task>`` per task in model_dict order. The single-task path is
the same code with one unnamed task.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import torch

from mlpot.data import keys as K
from mlpot.errors import CheckpointError, ConfigError, MlpotError
from mlpot.training.checkpoint import CheckpointManager, load_checkpoint
from mlpot.training.data_setup import MultiTaskData, TrainingData, build_training_data
from mlpot.training.distributed import DistInfo, init_distributed, shard_indices
from mlpot.training.ema import ExponentialMovingAverage
from mlpot.training.finetune import energy_fitting, refit_energy_bias
from mlpot.training.logging import (LcurveWriter, MetricsCSV, TensorBoardWriter, WindowMean, close_log,
                                    format_loss_breakdown, open_debug_log)
from mlpot.training.losses import WeightedLoss, label_error_sums
from mlpot.training.metrics import AtomWeightedMean, PooledErrors, lcurve_keys, lcurve_values
from mlpot.training.optim import build_lr_scheduler, build_optimizer, current_lr
from mlpot.training.stages import StagePlan, apply_model_options, apply_stage_lr

if TYPE_CHECKING:  # the config layer sits above training; only its type is named here
    from mlpot.config.schema import NativeConfig

__all__ = ["Trainer", "TrainingStopped", "predict"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainingStopped(MlpotError, RuntimeError):
    """Training stopped on purpose (too many non-finite losses)."""


def predict(model: torch.nn.Module, batch: Dict[str, torch.Tensor], labels, create_graph: bool) -> Dict[str, torch.Tensor]:
    """Model outputs for ``labels``: forces/virial/stress by autograd when a label needs them."""
    forces, virial, stress = K.FORCES in labels, K.VIRIAL in labels, K.STRESS in labels
    if forces or virial or stress:
        from mlpot.models.derivatives import compute_derivatives

        return compute_derivatives(model, batch, forces=forces, virial=virial, stress=stress,
                                   create_graph=create_graph)
    return model(batch)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class Trainer:
    """Train the model of ``config``.

    restart: checkpoint to resume exactly (weights, optimizer, schedules, RNG, sampler, step).
    init_weights: a state dict that initialises the model (step 0, fresh optimizer; ``mlpot train
    --init-model`` loads it from a checkpoint or frozen model). progress: show a tqdm bar (only on a TTY). file: config file name for messages.
    """

    def __init__(self, config: "NativeConfig", *, restart: Optional[str] = None,
                 init_weights: Optional[Dict[str, torch.Tensor]] = None, progress: bool = True,
                 file: Optional[str] = None, stdout=None):
        self.config = config
        self.file = file
        self.dist: DistInfo = init_distributed()
        self.out = Path(config.output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.stdout = stdout or sys.stdout
        self.progress = progress
        self.dtype = _DTYPES[config.dtype]
        checkpoint = load_checkpoint(restart) if restart else None
        self._seed(config.seed)
        self.data: TrainingData = build_training_data(
            config, self.dtype, file=file, with_statistics=checkpoint is None and init_weights is None,
            device=self.dist.device)
        self.model = self.data.model
        if config.training.compute_dtype is not None:
            from mlpot.nn import set_compute_dtype

            set_compute_dtype(self.model, getattr(torch, config.training.compute_dtype))
        self._set_up_tasks()
        if init_weights is not None:
            self._init_weights(init_weights)
        self.unit = config.training.unit
        self.steps_per_epoch = sum(len(data.train_sampler) for data in self.task_data.values())
        self.total_steps = (config.training.numb_steps if self.unit == "steps"
                            else config.training.numb_epochs * self.steps_per_epoch)
        self.plan = StagePlan(config.stages(), self.unit)
        # labels of every stage's loss: fixed log columns even when stages change the terms
        self.task_labels = {
            name: tuple(dict.fromkeys(label for stage in self.plan.stages
                                      for label in WeightedLoss(stage.loss or loss.terms, loss.type, file=file).metric_labels))
            for name, loss in self.loss_configs.items()}
        self.all_labels = tuple(dict.fromkeys(label for labels in self.task_labels.values() for label in labels))
        self._check_loss_inputs()
        self._build_optimizer()
        self.ema = ExponentialMovingAverage(self.model, config.ema.decay, config.ema.warmup) if config.ema else None
        self.step, self.epoch, self.nonfinite = 0, 0, 0
        self.stage_index = -1
        if checkpoint is not None:
            self._restore(checkpoint, restart)
        cp = config.checkpoint
        self.checkpoints = CheckpointManager(self.out / cp.dir, cp.prefix, cp.keep)
        self.last_checkpoint: Optional[Path] = None
        self.losses: Dict[str, WeightedLoss] = {}
        self.loss: Optional[WeightedLoss] = None  # the first (single-task: the only) task's loss
        self.debug_log = self.lcurve = self.csv = self.bar = None
        self.profiler = None  # torch.profiler while PROFILED_STEPS run (logging.profile_file)

    # ---- set-up ------------------------------------------------------------------------
    def _set_up_tasks(self) -> None:
        """Per-task data, model (head) and loss section; single-task training is one task named ''."""
        self.multi_task = isinstance(self.data, MultiTaskData)
        if self.multi_task:
            self.task_data: Dict[str, TrainingData] = dict(self.data.tasks)
            self.heads: Dict[str, torch.nn.Module] = {name: self.model.heads[name] for name in self.task_data}
            self.loss_configs = {name: task.loss for name, task in self.config.tasks.items()}
            self.task_sampler = self.data.task_sampler
        else:
            self.task_data, self.heads = {"": self.data}, {"": self.model}
            self.loss_configs, self.task_sampler = {"": self.config.loss}, None
        self.task_names = list(self.task_data)
        self.last_task = self.task_names[0]

    def _check_loss_inputs(self) -> None:
        """DataError naming the system and key when a loss option needs a per-atom input
        (atom_ener_coeff, atom_weight, drdq) that the training or validation data lack;
        ConfigError when a term's label is in no frame of the training data."""
        for name, loss in self.loss_configs.items():
            for stage in self.plan.stages:
                checker = WeightedLoss(stage.loss or loss.terms, loss.type, file=self.file,
                                       atom_ener_coeff=loss.atom_ener_coeff)
                checker.check_labels(self.task_data[name].train.frames,
                                     f"training data of task {name!r}" if self.multi_task else "training data")
                for dataset in (self.task_data[name].train, self.task_data[name].valid):
                    if dataset is not None:
                        checker.check_data(dataset.frames)

    def _seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _init_weights(self, state: Dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"weights do not fit the configured model (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")

    def _build_optimizer(self) -> None:
        import fnmatch

        cfg, sched = self.config.optimizer, self.config.lr_schedule
        base_lr = cfg.lr or sched.start_lr or 1e-3
        scale = {"linear": self.dist.world_size, "sqrt": math.sqrt(self.dist.world_size), "none": 1.0}
        base_lr *= scale[sched.scale_by_worker]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("nothing to train: every parameter of the model is frozen (trainable: false)",
                              file=self.file, key="model")
        taken, groups, self.group_names = set(), [], []
        for index, group in enumerate(cfg.groups):
            params = [p for n, p in named if n not in taken and any(fnmatch.fnmatch(n, pat) for pat in group.params)]
            if not params:
                raise ConfigError(f"patterns {group.params} match no parameter", file=self.file,
                                  key=["optimizer", "groups", index, "params"])
            taken.update(n for n, p in named if any(p is q for q in params))
            entry = {"params": params, "lr": group.lr or base_lr, **group.kwargs}
            if group.weight_decay is not None:
                entry["weight_decay"] = group.weight_decay
            groups.append(entry)
            self.group_names.append(group.name)
        rest = [p for n, p in named if n not in taken]
        if rest:
            groups.insert(0, {"params": rest, "lr": base_lr})
            self.group_names.insert(0, "default")
        kwargs = dict(cfg.kwargs)
        if cfg.weight_decay is not None:
            kwargs["weight_decay"] = cfg.weight_decay
        if cfg.betas is not None:
            kwargs["betas"] = tuple(cfg.betas)
        self.optimizer = build_optimizer(cfg.name, groups, file=self.file, lr=base_lr, **kwargs)
        self.initial_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.start_lr = base_lr
        options = {}
        self.warmup_steps = 0
        if sched.type == "plateau":
            options = {"factor": sched.factor, "patience": sched.patience, "min_lr": sched.min_lr}
        elif sched.type != "constant" or sched.warmup_steps or sched.warmup_ratio:
            warmup = sched.warmup_steps or int((sched.warmup_ratio or 0.0) * self.total_steps)
            self.warmup_steps = warmup
            options = {"warmup_steps": warmup, "warmup_start_factor": sched.warmup_start_factor}
            if sched.type in ("exp", "cosine", "wsd"):
                stop = sched.stop_lr if sched.stop_lr is not None else (
                    base_lr * sched.stop_lr_ratio if sched.stop_lr_ratio else (1e-8 if sched.type == "exp" else 0.0))
                options.update(stop_lr=stop, num_steps=self.total_steps)
            if sched.type == "wsd":
                options.update(decay_phase_ratio=sched.decay_phase_ratio, decay_type=sched.decay_type)
            if sched.type == "exp":
                options.update(decay_steps=sched.decay_steps, decay_rate=sched.decay_rate, smooth=sched.smooth)
            if sched.type == "step":
                options.update(step_size=sched.step_size, gamma=sched.gamma)
        self.scheduler = build_lr_scheduler(self.optimizer, sched.type, start_lr=base_lr, file=self.file, **options)
        self.plateau = sched.type == "plateau"

    def _restore(self, state: dict, path: str) -> None:
        try:
            self.model.load_state_dict(state["model_state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            for name, samplers in self._sampler_states(state).items():
                data = self.task_data[name]
                data.train_sampler.load_state_dict(samplers["train"])
                if data.valid_sampler is not None and samplers.get("valid") is not None:
                    data.valid_sampler.load_state_dict(samplers["valid"])
            if self.task_sampler is not None:
                self.task_sampler.load_state_dict(state["task_sampler"])
            self.step, self.epoch, self.nonfinite = int(state["step"]), int(state["epoch"]), int(state["nonfinite"])
            _set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not fit this config: {exc}", file=str(path)) from None

    def _sampler_states(self, state: dict) -> Dict[str, dict]:
        """{task: {"train": state, "valid": state}} of a checkpoint (single-task files keep DeePMD-like
        top-level keys ``train_sampler``/``valid_sampler``)."""
        if self.multi_task:
            return state["task_samplers"]
        return {"": {"train": state["train_sampler"], "valid": state.get("valid_sampler")}}

    def state_dict(self) -> dict:
        samplers = {name: {"train": data.train_sampler.state_dict(),
                           "valid": data.valid_sampler.state_dict() if data.valid_sampler is not None else None}
                    for name, data in self.task_data.items()}
        if self.multi_task:
            sampler_state = {"task_samplers": samplers, "task_sampler": self.task_sampler.state_dict()}
        else:
            sampler_state = {"train_sampler": samplers[""]["train"], "valid_sampler": samplers[""]["valid"]}
        return {**sampler_state,
            "model_config": self.model.config, "dtype": self.config.dtype,
            "model_state_dict": self.model.state_dict(),
            "ema_state_dict": self._ema_weights(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": _rng_state(), "step": self.step, "epoch": self.epoch, "nonfinite": self.nonfinite,
            "config": self.config.model_dump(mode="json"),
        }

    def _ema_weights(self) -> Optional[dict]:
        if self.ema is None:
            return None
        # through the model (not by shadow names): a shared descriptor appears under every head's
        # names in state_dict but only once among the averaged parameters
        with self.ema.applied(self.model):
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # ---- one step -----------------------------------------------------------------------
    def _enter_stage(self, index: int) -> None:
        stage = self.plan[index]
        self.losses = {name: WeightedLoss(stage.loss or loss.terms, loss.type, loss.intensive_ener_virial, file=self.file,
                                          atom_ener_coeff=loss.atom_ener_coeff)
                       for name, loss in self.loss_configs.items()}
        self.loss = self.losses[self.task_names[0]]
        if self.plateau:
            if stage.lr is not None or stage.group_lr:
                apply_stage_lr(stage, self.optimizer, self.scheduler, self.group_names, self.initial_lrs)
        else:
            apply_stage_lr(stage, self.optimizer, self.scheduler, self.group_names, self.initial_lrs)
        apply_model_options(self.model, stage.model_options, stage.name)
        self.stage_index = index

    def _position(self) -> int:
        return self.step if self.unit == "steps" else self.epoch

    def _next_indices(self, data: TrainingData) -> List[int]:
        while True:  # an EpochSampler returns None once at the end of each pass
            indices = data.train_sampler.next_batch()
            if indices is not None:
                return indices

    def _lr_ratio(self) -> float:
        """lr / start_lr for the lr-coupled loss prefactors; 1 during warm-up, so the prefactors stay
        at their start values there (DeePMD-kit PT passes start_lr to the loss while step < warmup)."""
        if self.step < self.warmup_steps:
            return 1.0
        return current_lr(self.optimizer) / self.optimizer.param_groups[0]["initial_lr"]

    def train_step(self, metrics: bool = True) -> Dict[str, float]:
        """One optimisation step on the next global batch; returns display values of this batch
        (``loss`` and ``lr`` always, the lcurve metrics when ``metrics``; multi-task: the metrics
        of every task, keys ``<key>_<task>``, the other tasks from one training batch each).
        ``last_task`` names the task trained."""
        task = self.task_sampler.next_task() if self.task_sampler is not None else self.task_names[0]
        self.last_task = task
        data, head, loss = self.task_data[task], self.heads[task], self.losses[task]
        batch = data.train_batch(shard_indices(self._next_indices(data), self.dist))
        lr = current_lr(self.optimizer)
        self.model.train()
        pred = loss.prepare(predict(head, batch, loss.labels, create_graph=True), batch)
        reduce = self.dist.sum if self.dist.enabled else None
        total, weighted, _ = loss(pred, batch, self._lr_ratio(), reduce=reduce)
        global_total = float(self.dist.sum(total)) if self.dist.enabled else float(total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        finite = math.isfinite(global_total)
        trainable = [p for p in head.parameters() if p.requires_grad]
        if finite and not trainable:  # a multi-task head whose own parameters are all frozen
            self._log_debug(f"step {self.step + 1}: task {task!r} has no trainable parameter, nothing to update")
        elif finite:
            # gradients of the parameters only: without ``inputs`` autograd also back-propagates
            # the force loss to the positions (and strain) leaves, through the second derivatives
            # of the environment; skipping that is 5-6 % of a water se_e2_a step
            total.backward(inputs=trainable)
            # only this task's head: the other heads keep no gradient, so Adam leaves them (and
            # their moments) untouched, on one rank or many (all ranks draw the same task)
            self.dist.sum_gradients(list(head.parameters()))
            if self.config.training.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(head.parameters(), self.config.training.clip_grad_norm)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.nonfinite += 1
            self._log_debug(f"non-finite loss at step {self.step + 1}: update skipped "
                            f"({self.nonfinite} so far)", warning=True)
        if not self.plateau:
            self.scheduler.step()
        self.step += 1
        self.epoch = self.step // self.steps_per_epoch  # completed (nominal) epochs
        components = {k: float(self.dist.sum(v)) if self.dist.enabled else float(v.detach()) for k, v in weighted.items()}
        self._log_debug(format_loss_breakdown(components))
        values = {}
        if metrics:
            sums = label_error_sums(pred, batch, loss.metric_labels)
            if self.dist.enabled:
                sums = {k: self.dist.sum(v) for k, v in sums.items()}
            values = self._task_keys(task, lcurve_values(global_total, sums, self.task_labels[task]))
            # disp_avg averages each task over its own steps: no extra batches of the other tasks
            for other in self.task_names if not self.config.logging.disp_avg else ():
                if other != task:
                    values.update(self._task_keys(other, self._train_batch_values(other)))
        values["loss"] = global_total
        values["lr"] = lr
        if not finite and self.nonfinite > self.config.training.max_nonfinite:
            raise TrainingStopped(f"stopped after {self.nonfinite} steps with a non-finite loss "
                                  f"(training.max_nonfinite = {self.config.training.max_nonfinite})")
        return values

    def _task_keys(self, task: str, values: Dict[str, float]) -> Dict[str, float]:
        """Multi-task display keys ``<key>_<task>`` (single-task keys unchanged)."""
        return {f"{k}_{task}": v for k, v in values.items()} if self.multi_task else values

    def _train_batch_values(self, task: str) -> Dict[str, float]:
        """lcurve values of ``task`` on its next training batch, without an update (multi-task display)."""
        data, head, loss = self.task_data[task], self.heads[task], self.losses[task]
        batch = data.train_batch(shard_indices(self._next_indices(data), self.dist))
        pred = loss.prepare({k: v.detach() for k, v in predict(head, batch, loss.labels, create_graph=False).items()},
                            batch)
        reduce = self.dist.sum if self.dist.enabled else None
        with torch.no_grad():
            total, _, _ = loss(pred, batch, self._lr_ratio(), reduce=reduce)
            sums = label_error_sums(pred, batch, loss.metric_labels)
        total = float(self.dist.sum(total)) if self.dist.enabled else float(total)
        if self.dist.enabled:
            sums = {k: self.dist.sum(v) for k, v in sums.items()}
        return lcurve_values(total, sums, self.task_labels[task])

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> Optional[Dict[str, float]]:
        """Validation values (lcurve keys atom-weighted per batch, pooled <label>_rmse/_mae);
        multi-task: every task with validation data, keys ``<key>_<task>``."""
        import contextlib

        out: Dict[str, float] = {}
        self.model.eval()
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            for task in self.task_names:
                values = self._validate_task(task)
                if values is not None:
                    out.update(self._task_keys(task, values))
        return out or None

    def _validate_task(self, task: str) -> Optional[Dict[str, float]]:
        data, head, loss, labels = self.task_data[task], self.heads[task], self.losses[task], self.task_labels[task]
        if data.valid_sampler is None:
            return None
        lcurve, pooled = AtomWeightedMean(), PooledErrors()
        ratio = self._lr_ratio()
        for indices in data.valid_batches():
            batch = data.valid_batch(indices)
            pred = loss.prepare(predict(head, batch, labels, create_graph=False), batch)
            with torch.no_grad():
                total, weighted, _ = loss({k: v.detach() for k, v in pred.items()}, batch, ratio)
            self._log_debug(format_loss_breakdown({k: float(v) for k, v in weighted.items()}))
            sums = label_error_sums(pred, batch, labels)
            lcurve.add(lcurve_values(float(total), sums, labels), int(batch[K.N_ATOMS].sum()))
            pooled.add(sums)
        return {**lcurve.result(), **pooled.result()}

    # ---- logging -------------------------------------------------------------------------
    def _log_debug(self, message: str, warning: bool = False) -> None:
        if self.debug_log is not None:
            (self.debug_log.warning if warning else self.debug_log.debug)(message)
        if warning and self.dist.is_main:
            print(f"warning: {message}", file=sys.stderr)

    def _open_logs(self) -> None:
        cfg = self.config.logging
        append = self.step > 0
        main = self.dist.is_main
        self.debug_log = open_debug_log(self.out / cfg.debug_log, append=append) if (main and cfg.debug_log) else None
        self.lcurve = None
        if main and cfg.lcurve:
            has_valid = {name: data.valid_sampler is not None for name, data in self.task_data.items()}
            if self.multi_task:
                keys = {name: lcurve_keys(labels) for name, labels in self.task_labels.items()}
                self.lcurve = LcurveWriter.multi_task(self.out / cfg.lcurve, keys, has_valid, append)
            else:
                self.lcurve = LcurveWriter(self.out / cfg.lcurve, lcurve_keys(self.all_labels), has_valid[""], append)
        self.csv = MetricsCSV(self.out / cfg.metrics_csv, append) if (main and cfg.metrics_csv) else None
        self.tensorboard = TensorBoardWriter(self.out / cfg.tensorboard_log_dir, cfg.tensorboard_freq,
                                             enabled=main and cfg.tensorboard)

    def _close_logs(self) -> None:
        for writer in (self.lcurve, self.csv, self.tensorboard):
            if writer is not None:
                writer.close()
        close_log(self.debug_log)

    def _display(self, train: Dict[str, float], valid: Optional[Dict[str, float]]) -> None:
        step, stage = self.step, self.plan[self.stage_index].name
        if self.lcurve is not None:
            self.lcurve.write(step, train, valid, train["lr"])
        row = {"step": step, "epoch": self.epoch, "stage": stage, "lr": train["lr"], "loss": train["loss"]}
        row.update({f"train_{k}": v for k, v in train.items() if k not in ("lr", "loss")})
        row.update({f"valid_{k}": v for k, v in (valid or {}).items()})
        if self.csv is not None:
            self.csv.write(row)
        self.tensorboard.write(step, {k: v for k, v in row.items() if isinstance(v, float)})
        if self.dist.is_main and self.config.logging.disp_training:
            parts = [f"step {step}", f"stage {stage}", f"lr {train['lr']:.2e}", f"loss {train['loss']:.6g}"]
            parts += [f"{self._display_name(k, 'trn')} {v:.3e}" for k, v in train.items() if k.startswith("rmse")]
            parts += [f"{self._display_name(k, 'val')} {v:.3e}" for k, v in (valid or {}).items() if k.startswith("rmse")]
            self._write(", ".join(parts))

    def _display_name(self, key: str, kind: str) -> str:
        """``rmse_e`` -> ``rmse_e_trn``; multi-task ``rmse_e_<task>`` -> ``rmse_e_trn_<task>`` (lcurve names)."""
        for task in self.task_names if self.multi_task else ():
            if key.endswith("_" + task):
                return f"{key[:-len(task) - 1]}_{kind}_{task}"
        return f"{key}_{kind}"

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stdout)
        else:
            print(line, file=self.stdout, flush=True)

    # ---- the loop ------------------------------------------------------------------------
    def change_energy_bias(self) -> Dict[str, List[float]]:
        """Shift each energy head's ``bias_atom`` by the least-squares per-type fit of
        (label - prediction) over its statistics sample (DeePMD-kit ``change_bias_after_training``,
        mode change-by-statistic); types with an ``atom_ener`` preset keep theirs. Returns the
        shifts (eV per atom of each type) by task."""
        import contextlib

        shifts: Dict[str, List[float]] = {}
        self.model.eval()
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            for task, head in self.heads.items():
                if energy_fitting(head) is None:
                    continue
                shift = refit_energy_bias(head, self.task_data[task].stat_samples)
                if shift is None:
                    continue
                shifts[task] = shift[:, 0].tolist()
                label = f" of task {task}" if self.multi_task else ""
                self._write(f"changed the energy bias{label} after training by "
                            f"{', '.join(f'{t} {v:+.6g}' for t, v in zip(head.type_map, shifts[task]))} eV")
        return shifts

    PROFILED_STEPS = range(2, 7)  # displayed (1-based) steps; step 1 carries one-off set-up costs

    def _profile(self, shown: Optional[int]) -> None:
        """torch.profiler over ``PROFILED_STEPS`` when ``logging.profile_file`` is set (main rank);
        the Chrome trace is written when the window closes or training ends (``shown`` None)."""
        path = self.config.logging.profile_file
        if not path or not self.dist.is_main:
            return
        profiler = self.profiler
        if profiler is None and shown is not None and shown in self.PROFILED_STEPS:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.dist.device.type == "cuda" else [])
            self.profiler = profile(activities=activities, record_shapes=True)
            self.profiler.__enter__()
        elif profiler is not None and (shown is None or shown not in self.PROFILED_STEPS):
            profiler.__exit__(None, None, None)
            target = self.out / path
            profiler.export_chrome_trace(str(target))
            self._write(f"wrote the profile of steps {self.PROFILED_STEPS.start}-{self.PROFILED_STEPS.stop - 1} to {target}")
            self.profiler = None

    def run(self) -> Dict[str, float]:
        """Train to the end; returns the last validation (or training) values."""
        from tqdm import tqdm

        self._enter_stage(self.plan.index_at(self._position()))
        self._open_logs()
        cfg = self.config
        disp_freq = cfg.logging.disp_freq
        valid_freq = cfg.training.valid_freq or disp_freq
        show_bar = self.progress and cfg.logging.progress_bar and self.dist.is_main and self.stdout.isatty()
        self.bar = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=not show_bar,
                        dynamic_ncols=True, file=self.stdout)
        last: Dict[str, float] = {}
        # disp_avg: the metrics of every step, averaged over the display window
        window = WindowMean() if cfg.logging.disp_avg else None
        start_time, start_step = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps:
                index = self.plan.index_at(self._position())
                if index != self.stage_index:
                    self._enter_stage(index)
                shown = self.step + 1
                self._profile(shown)
                train = self.train_step(metrics=window is not None or shown == 1 or shown % disp_freq == 0
                                        or shown == self.total_steps)
                if window is not None:
                    window.add(train)
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{train['loss']:.4g}", lr=f"{train['lr']:.2e}", refresh=False)
                end = self.step == self.total_steps
                epoch_done = (self.step % self.steps_per_epoch == 0)
                if epoch_done and self.debug_log is not None:
                    self.debug_log.info(f"Epoch {self.step // self.steps_per_epoch - 1}: loss={train['loss']:.6g}")
                valid = None
                if self.step == 1 or self.step % valid_freq == 0 or end:
                    valid = self.validate() if self.dist.is_main else None
                    if self.plateau and valid is not None:
                        self.scheduler.step(valid.get("rmse", train["loss"]))
                if self.step == 1 or self.step % disp_freq == 0 or end:
                    if window is not None:
                        train = {**train, **window.pop()}
                    self._display(train, valid)
                    last = valid or train
                if self.step % cfg.checkpoint.every == 0 or end:
                    self.save()
            self._profile(None)
            if cfg.training.change_bias_after_training and self.dist.is_main:
                self.change_energy_bias()
                self.save()
            elapsed = time.perf_counter() - start_time
            if self.dist.is_main and cfg.logging.time_training and self.step > start_step:
                self._write(f"average training time: {elapsed / (self.step - start_step):.4f} s/step "
                            f"({self.step - start_step} steps)")
        finally:
            self.bar.close()
            self._close_logs()
        return last

    def save(self) -> Optional[Path]:
        """Write a checkpoint of the current state (rank 0 only)."""
        if not self.dist.is_main:
            return None
        self.last_checkpoint = self.checkpoints.save(self.step, self.state_dict())
        return self.last_checkpoint
