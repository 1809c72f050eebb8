"""The training loop: a plain PyTorch loop driven by a validated :class:`NativeConfig`.

One step: draw the global batch (sampler), keep this rank's share, predict (forces/virial by
autograd through ``mlpot.models.derivatives``), loss = Σ prefactor · term (prefactors may follow
lr / start_lr, DeePMD), backward, sum gradients over ranks, clip, optimizer and lr-scheduler step,
EMA update. A non-finite loss (or gradient) skips the update (logged with its first non-finite
term and counted); training stops with an error naming the step and that term after
``training.max_nonfinite`` such steps, or at the end of a run in which no step updated the model.
Steps are counted from 0; DeePMD's displayed step is ``step + 1``.

Display (step 1, every ``logging.disp_freq`` steps and the last): lcurve.out row (training values
of the current batch, or with ``logging.disp_avg`` their mean over the steps since the previous
display), validation values averaged over ``numb_btch`` batches with atom-count
weights), a metrics-CSV row (pooled validation RMSE/MAE per label), TensorBoard scalars. Every
train and validation batch writes a ``loss breakdown:`` line to the debug log.

Epoch runs may also validate and display at the end of every ``training.valid_epochs``-th epoch
(MACE's eval_interval); ``training.patience`` stops the run (or moves to the next stage) after that
many validations without a lower validation loss (:mod:`mlpot.training.early_stopping`).

Checkpoints (rank 0, atomic) hold everything needed for an exact resume: model config and weights,
optimizer, schedulers, EMA, RNG states (torch, numpy, python), sampler positions, step and epoch.

Multi-task training (``config.tasks``, DeePMD ``model_dict``): each step draws one task with the
task sampler, takes the next batch of that task's data and does one optimiser step on that task's
loss through that task's head (the heads share modules, so every step moves those). At a
display step the other tasks' training values come from one extra training batch each, without an
update (as DeePMD-kit does), and every task is validated on its own data; lcurve.out has the
columns ``<key>_val_<task> <key>_trn_<task>`` per task in model_dict order. The single-task path is
the same code with one unnamed task.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from mlpot.errors import CheckpointError, ConfigError
from mlpot.models.output_bias import energy_bias, refit_energy_bias
from mlpot.training.checkpoint import (CheckpointManager, load_checkpoint, restore_trainer_state,
                                       trainer_state)
from mlpot.training.data_setup import TrainingData, build_training_data
from mlpot.training.distributed import DistInfo, init_distributed, shard_indices
from mlpot.training.early_stopping import EarlyStopping
from mlpot.training.ema import ExponentialMovingAverage
from mlpot.training.full_validation import FullValidation
from mlpot.training.logging import TrainingLog, WindowMean, format_loss_breakdown
from mlpot.training.losses import WeightedLoss
from mlpot.training.metrics import label_error_sums
from mlpot.training.metrics import lcurve_values
from mlpot.training.monitor import ValidationMonitor
from mlpot.training.optim import build_training_optimizer, current_lr
from mlpot.training.schema import NativeConfig
from mlpot.training.stages import StagePlan, apply_model_options, apply_stage_lr
from mlpot.training.validation_flow import ValidationFlow
from mlpot.training.zero import check_zero_stage, gather_optimizer_state, reduce_gradients
from mlpot.training.tasks import Tasks, next_indices, predict

__all__ = ["Trainer", "TrainingStopped", "predict"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainingStopped(ConfigError):
    """Training stopped on purpose (too many non-finite losses); names the step and the first
    non-finite loss term (a ConfigError at ``training.max_nonfinite``: the config file is named)."""


class Trainer(ValidationFlow):
    """Train the model of ``config``.

    restart: checkpoint to resume exactly (weights, optimizer, schedules, RNG, sampler, step).
    init_weights: a state dict that initialises the model (step 0, fresh optimizer; ``mlpot train
    --init-model`` loads it from a checkpoint or frozen model). force_load: weights that
    ``init_weights`` lacks keep their fresh initialisation (listed) instead of being an error
    (DeePMD-kit's ``--force-load``). resolve_from_data: False skips the model family's data hook
    (``dp train --skip-neighbor-stat``). progress: show a tqdm bar (only on a TTY). file: config
    file name for messages.
    """

    def __init__(self, config: NativeConfig, *, restart: Optional[str] = None,
                 init_weights: Optional[Dict[str, torch.Tensor]] = None, progress: bool = True,
                 file: Optional[str] = None, stdout=None, force_load: bool = False, resolve_from_data: bool = True):
        self.config, self.file, self.progress = config, file, progress
        self.dist: DistInfo = init_distributed()
        self.out = Path(config.output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.stdout = stdout or sys.stdout
        self.log = TrainingLog(config.logging, self.out, is_main=self.dist.is_main, stdout=self.stdout,
                               device_type=self.dist.device.type)
        checkpoint = load_checkpoint(restart) if restart else None
        self._seed(config.seed)
        self.data: TrainingData = build_training_data(
            config, _DTYPES[config.dtype], file=file, with_statistics=checkpoint is None and init_weights is None,
            device=self.dist.device, log=self.log.write, resolve_from_data=resolve_from_data)
        self.model = self.data.model
        if config.training.compute_dtype is not None:
            from mlpot.nn import set_compute_dtype

            set_compute_dtype(self.model, getattr(torch, config.training.compute_dtype))
        if init_weights is not None:
            self._init_weights(init_weights, force_load)
        self._set_length(config)
        self.tasks = Tasks(self.data, config, self.plan.stages, file)
        self.tasks.check_loss_inputs()
        self.tasks.record_hessian_mode()
        fv = config.full_validation
        zero = check_zero_stage(config.training.zero_stage, world_size=self.dist.world_size, multi_task=self.multi_task,
                                lkf=config.optimizer.name.lower() == "lkf", full_validation=fv is not None and fv.active,
                                file=file)
        setup = build_training_optimizer(self.model, config.optimizer, config.lr_schedule, self.total_steps,
                                         self.dist.world_size, file, steps_per_epoch=self.steps_per_epoch,
                                         zero_stage=zero)
        self.optimizer, self.scheduler, self.optimizer_setup = setup.optimizer, setup.scheduler, setup
        if hasattr(self.optimizer, "update_from_batch") and (self.dist.enabled or self.multi_task
                                                              or config.training.acc_freq > 1):
            raise ConfigError("not supported yet: the LKF optimizer with several ranks, multi-task models or "
                              "acc_freq > 1", file=file, key="optimizer.name")
        if hasattr(self.optimizer, "update_from_batch") and config.training.clip_grad_norm is not None:
            raise ConfigError("gradient clipping has no effect on the LKF optimizer: remove clip_grad_norm "
                              "(DeePMD-kit gradient_max_norm)", file=file, key="training.clip_grad_norm")
        if config.training.acc_freq > 1 and self.multi_task:
            raise ConfigError("not supported yet: acc_freq > 1 with multi-task models", file=file,
                              key="training.acc_freq")
        self.ema = ExponentialMovingAverage(self.model, config.ema.decay, config.ema.warmup) if config.ema else None
        self.step, self.epoch, self.nonfinite, self.stage_index = 0, 0, 0, -1
        self.accumulated = 0  # batches whose gradients the current acc_freq window holds
        self.early_stopping = EarlyStopping(config.training.patience)
        self.first_nonfinite: Optional[tuple] = None  # (step, loss term) of the first skipped step
        self.last_task = self.task_names[0]
        if checkpoint is not None:
            restore_trainer_state(self, checkpoint, restart)
        cp = config.checkpoint
        self.checkpoints = CheckpointManager(self.out / cp.dir, cp.prefix, cp.keep)
        self.full_validation = FullValidation.for_trainer(self, checkpoint)  # val.log, best checkpoints
        self.monitor = ValidationMonitor(config.training.monitor, config.training.early_stopping)
        if checkpoint is not None and checkpoint.get("monitor"):
            self.monitor.load_state_dict(checkpoint["monitor"])
        self.last_checkpoint: Optional[Path] = None
        self.losses: Dict[str, WeightedLoss] = {}

    # ---- set-up ------------------------------------------------------------------------
    def _set_length(self, config: NativeConfig) -> None:
        """Training length in steps and the stage plan (``sampler_epochs``: counted on the sampler)."""
        self.unit = config.training.unit
        samplers = [self.data.train_sampler] if not hasattr(self.data, "tasks") else \
            [task.train_sampler for task in self.data.tasks.values()]
        self.steps_per_epoch = sum(len(sampler) for sampler in samplers)
        training = config.training
        if training.sampler_epochs is not None:
            self.total_steps = self.data.train_sampler.steps_for_epochs(training.sampler_epochs)
        elif training.task_epochs is not None:  # multi-task, counted by the data set-up
            self.total_steps = self.data.epoch_steps
        elif self.unit == "steps":
            self.total_steps = training.numb_steps
        else:
            self.total_steps = training.numb_epochs * self.steps_per_epoch
        self.plan = StagePlan(config.stages(self.total_steps if self.unit == "steps" else None), self.unit)

    def _seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _init_weights(self, state: Dict[str, torch.Tensor], force_load: bool = False) -> None:
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of another shape: torch's first "size mismatch" line
            detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
            raise CheckpointError(f"weights do not fit the configured model: {detail}") from None
        if missing and force_load and not unexpected:
            # named by their first three levels, as DeePMD-kit's --force-load lists them
            groups = sorted({".".join(name.split(".")[:3]) + ".*" for name in missing})
            self.log.write(f"force-load: not in the weights file, freshly initialised: {', '.join(groups)}")
        elif missing or unexpected:
            raise CheckpointError(f"weights do not fit the configured model (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")

    # the tasks' view used by checkpoints, full validation and the tests
    multi_task = property(lambda self: self.tasks.multi_task)
    task_data = property(lambda self: self.tasks.data)
    heads = property(lambda self: self.tasks.heads)
    task_names = property(lambda self: self.tasks.names)
    task_sampler = property(lambda self: self.tasks.sampler)

    def state_dict(self) -> dict:
        return {**trainer_state(self), "monitor": self.monitor.state_dict()}

    def _write(self, line: str) -> None:
        self.log.write(line)

    # ---- one step -----------------------------------------------------------------------
    def _enter_stage(self, index: int) -> None:
        stage, setup = self.plan[index], self.optimizer_setup
        self.losses = self.tasks.losses(stage)
        if not setup.plateau or stage.lr is not None or stage.group_lr:
            apply_stage_lr(stage, self.optimizer, self.scheduler, setup.group_names, setup.initial_lrs)
        apply_model_options(self.model, stage.model_options, stage.name)
        for task, head in self.heads.items():
            if hasattr(head, "request_outputs"):
                head.request_outputs(self.losses[task].labels)
        self.stage_index = index

    def _position(self) -> int:
        return self.step if self.unit == "steps" else self.epoch

    def _lr_ratio(self) -> float:
        """lr / start_lr for the lr-coupled loss prefactors; 1 during warm-up, so the prefactors stay
        at their start values there (DeePMD-kit PT passes start_lr to the loss while step < warmup)."""
        if self.step // self.config.training.acc_freq < self.optimizer_setup.warmup_steps:
            return 1.0
        return current_lr(self.optimizer) / self.optimizer.param_groups[0]["initial_lr"]

    def _reduced(self, value: torch.Tensor) -> float:
        return float(self.dist.sum(value)) if self.dist.enabled else float(value.detach())

    def _update(self, task: str, head: torch.nn.Module, total: torch.Tensor, nonfinite: Optional[str]) -> bool:
        """Backward to the parameters only; every ``training.acc_freq``-th batch (DeePMD-kit's gradient
        accumulation: the gradients of the window's batches are summed, not averaged) the gradient sum
        over ranks, clipping, optimizer and EMA step. ``nonfinite``: the first non-finite loss term of
        this batch (None when the loss is finite); such a batch adds no gradient and is counted, and
        an update whose gradients are not finite is skipped and counted. True at the end of a window
        (the lr scheduler steps then: the schedule counts optimizer steps, as DeePMD-kit's does)."""
        acc = self.config.training.acc_freq
        if self.step % acc == 0:
            self.optimizer.zero_grad(set_to_none=True)
            self.accumulated = 0
        trainable = [p for p in head.parameters() if p.requires_grad]
        if nonfinite is None and trainable:
            # gradients of the parameters only: without ``inputs`` autograd also back-propagates
            # the force loss to the positions (and strain) leaves, through the second derivatives
            # of the environment; skipping that is 5-6 % of a water se_e2_a step
            total.backward(inputs=trainable)
            self.accumulated += 1
        elif nonfinite is not None:
            self._count_nonfinite(nonfinite)
        if (self.step + 1) % acc:
            return False
        if not trainable:  # a multi-task head whose own parameters are all frozen
            self.log.debug(f"step {self.step + 1}: task {task!r} has no trainable parameter, nothing to update")
            return True
        if not self.accumulated:
            return True
        # only this task's head: the other heads keep no gradient, so Adam leaves them (and
        # their moments) untouched, on one rank or many (all ranks draw the same task)
        # summed over ranks (zero_stage 2: each onto the rank that owns it), clipped; the global norm
        norm = reduce_gradients(head.parameters(), self.optimizer, self.dist, self.config.training.clip_grad_norm)
        if not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite("the gradient")
        else:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        return True

    def _count_nonfinite(self, term: str) -> None:
        self.nonfinite += 1
        if self.first_nonfinite is None:
            self.first_nonfinite = (self.step + 1, term)
        self.log.debug(f"non-finite loss at step {self.step + 1}: update skipped ({self.nonfinite} so far; "
                       f"first non-finite term: {term})", warning=True)

    @staticmethod
    def _first_nonfinite(weighted: Dict[str, torch.Tensor], total: float) -> Optional[str]:
        """Name of the first loss term that is not finite ('the total' when only their sum is not), or None."""
        if math.isfinite(total):
            return None
        return next((name for name, value in weighted.items() if not math.isfinite(float(value.detach()))),
                    "the total")

    def train_step(self, metrics: bool = True) -> Dict[str, float]:
        """One optimisation step on the next global batch; returns display values of this batch
        (``loss`` and ``lr`` always, the lcurve metrics when ``metrics``; multi-task: the metrics
        of every task, keys ``<key>_<task>``, the other tasks from one training batch each).
        ``last_task`` names the task trained."""
        task = self.task_sampler.next_task() if self.task_sampler is not None else self.task_names[0]
        self.last_task = task
        data, head, loss = self.task_data[task], self.heads[task], self.losses[task]
        batch = data.train_batch(shard_indices(next_indices(data), self.dist))
        lr = current_lr(self.optimizer)
        self.model.train()
        def predict_batch():
            return predict(head, batch, loss.labels, create_graph=True)
        # optimizers that run the model on the batch themselves (LKF): their last prediction is shown
        batch_update = getattr(self.optimizer, "update_from_batch", None)
        raw = batch_update(predict_batch, batch, self.step / self.total_steps) if batch_update else predict_batch()
        pred = loss.prepare(raw, batch)
        total, weighted, _ = loss(pred, batch, self._lr_ratio(), reduce=self.dist.sum if self.dist.enabled else None)
        global_total = self._reduced(total)
        skipped = self.nonfinite
        stepped = batch_update is not None or self._update(task, head, total, self._first_nonfinite(weighted, global_total))
        if batch_update is not None and self.ema is not None:
            self.ema.update(self.model)
        if stepped and not self.optimizer_setup.plateau:
            self.scheduler.step()
        self.step += 1
        self.epoch = self.step // self.steps_per_epoch  # completed (nominal) epochs
        self.log.debug(format_loss_breakdown({k: self._reduced(v) for k, v in weighted.items()}))
        values = {}
        if metrics:
            sums = label_error_sums(pred, batch, loss.metric_labels)
            if self.dist.enabled:
                sums = {k: self.dist.sum(v) for k, v in sums.items()}
            values = self.tasks.keys(task, lcurve_values(global_total, sums, self.tasks.labels[task]))
            # disp_avg averages each task over its own steps: no extra batches of the other tasks
            for other in self.task_names if not self.config.logging.disp_avg else ():
                if other != task:
                    values.update(self.tasks.keys(other, self.tasks.batch_values(other, self.losses[other],
                                                                                 self._lr_ratio(), self.dist)))
        values.update(loss=global_total, lr=lr)
        if self.nonfinite > skipped and self.nonfinite > self.config.training.max_nonfinite:
            first_step, first_term = self.first_nonfinite
            raise TrainingStopped(f"stopped after {self.nonfinite} steps with a non-finite loss "
                                  f"(training.max_nonfinite = {self.config.training.max_nonfinite}), at step "
                                  f"{self.step}; the first was step {first_step}, term {first_term} (check the data "
                                  "labels, the learning rate and the loss prefactors)", key="training.max_nonfinite")
        return values

    def validate(self) -> Optional[Dict[str, float]]:
        """Validation values of every task (see :meth:`Tasks.validate`)."""
        return self.tasks.validate(self.model, self.ema, self.losses, self._lr_ratio(), self.log.debug)

    def change_energy_bias(self) -> Dict[str, List[float]]:
        """Shift each energy head's output bias by the least-squares per-type fit of
        (label - prediction) over its statistics sample (``change_bias_after_training``,
        change-by-statistic); preset types keep theirs. Returns the shifts (eV per atom) by task."""
        shifts: Dict[str, List[float]] = {}
        self.model.eval()
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            for task, head in self.heads.items():
                shift = refit_energy_bias(head, self.task_data[task].stat_samples) if energy_bias(head) else None
                if shift is None:
                    continue
                shifts[task] = shift[:, 0].tolist()
                label = f" of task {task}" if self.multi_task else ""
                self.log.write(f"changed the energy bias{label} after training by "
                               f"{', '.join(f'{t} {v:+.6g}' for t, v in zip(head.type_map, shifts[task]))} eV")
        return shifts

    def _change_bias_and_save(self) -> None:
        if self.dist.is_main:
            self.change_energy_bias()
        self.save()  # on every rank: a sharded optimizer state is gathered first

    # ---- the loop ------------------------------------------------------------------------
    def _display_due(self, end: bool) -> bool:
        return self.step == 1 or self.step % self.config.logging.disp_freq == 0 or end

    def run(self) -> Dict[str, float]:
        """Train to the end; returns the last validation (or training) values."""
        cfg = self.config
        self._enter_stage(self.plan.index_at(self._position()))
        for head in self.heads.values():
            head.diagnostics = self.log.debug
        self.log.open(append=self.step > 0, task_labels=self.tasks.labels, total_steps=self.total_steps,
                      has_valid={name: data.valid_sampler is not None for name, data in self.task_data.items()},
                      initial_step=self.step, progress=self.progress)
        valid_freq = cfg.training.valid_freq or cfg.logging.disp_freq
        last: Dict[str, float] = {}
        window = WindowMean() if cfg.logging.disp_avg else None  # disp_avg: metrics averaged over the window
        start_time, start_step, start_skipped = time.perf_counter(), self.step, self.nonfinite
        if self.step < self.total_steps and any(energy_bias(h) is not None for h in self.heads.values()):
            self.log.write("energy bias refit after the last step (change_bias_after_training): " + (
                "on" if cfg.training.change_bias_after_training else
                "off (set change_bias_after_training: true to refit it on the statistics sample)"))
        try:
            while self.step < self.total_steps:
                index = self.plan.index_at(self._position())
                if index != self.stage_index:
                    if self.stage_index >= 0:
                        self.early_stopping.new_stage()
                    self._enter_stage(index)
                shown = self.step + 1  # the (1-based) step this iteration displays
                self.log.profile(shown)
                train = self.train_step(metrics=window is not None or shown == 1 or shown % cfg.logging.disp_freq == 0
                                        or shown == self.total_steps)
                if window is not None:
                    window.add(train)
                self.log.step_done(train)
                end = self.step == self.total_steps
                epoch_end = self.step % self.steps_per_epoch == 0
                if epoch_end:
                    self.log.epoch_done(self.step // self.steps_per_epoch - 1, train["loss"])
                valid_epoch = epoch_end and cfg.training.valid_epochs is not None and \
                    (self.step // self.steps_per_epoch - 1) % cfg.training.valid_epochs == 0
                valid, validated = None, self._validation_due(end, valid_freq) or valid_epoch
                if validated:
                    valid = self.validate() if self.dist.is_main else None
                    self._after_validation(valid, train)
                if self._display_due(end) or valid_epoch or (valid is not None and cfg.training.valid_every_epochs):
                    train = {**train, **window.pop()} if window is not None else train
                    self.log.display(self.step, self.epoch, self.plan[self.stage_index].name, train, valid)
                    last = valid or train
                if self.step % self.steps_per_epoch == 0:
                    self._model_report()
                self.full_validation.run(self.step, self.state_dict)
                if cfg.training.max_time is not None and time.perf_counter() - start_time > cfg.training.max_time:
                    self.monitor.stop_reason = self.monitor.stop_reason or f"max_time {cfg.training.max_time:g} s reached"
                stop = self.monitor.stop_reason is not None  # decided on rank 0, which validates
                if self.dist.enabled:
                    stop = bool(self.dist.sum(torch.tensor(float(stop), device=self.dist.device)) > 0)
                stop = (validated and self._patience_exhausted(valid)) or stop
                if self.step % cfg.checkpoint.every == 0 or end or stop:
                    self.save()
                if stop:
                    if self.monitor.stop_reason is not None:
                        self.log.write(f"stopping after step {self.step}: {self.monitor.stop_reason}")
                    break
            self.log.profile(None)
            if self.step > start_step and self.nonfinite - start_skipped == self.step - start_step:
                first_step, first_term = self.first_nonfinite
                raise TrainingStopped(f"no step of this run updated the model: all {self.step - start_step} had a "
                                      f"non-finite loss (the first at step {first_step}, term {first_term}); check "
                                      "the data labels, the learning rate and the loss prefactors",
                                      key="training.max_nonfinite")
            if self.dist.is_main:
                self._after_training()
            if cfg.training.change_bias_after_training:
                self._change_bias_and_save()
            if cfg.logging.time_training and self.step > start_step:
                self.log.write(f"average training time: {(time.perf_counter() - start_time) / (self.step - start_step):.4f} "
                               f"s/step ({self.step - start_step} steps)")
            if self.dist.is_main and any(data.test is not None for data in self.task_data.values()):
                self.test()
        finally:
            self.log.close()
        return last

    def save(self) -> Optional[Path]:
        """Write a checkpoint of the current state (rank 0 writes; every rank calls it)."""
        gather_optimizer_state(self.optimizer)
        if not self.dist.is_main:
            return None
        self.last_checkpoint = self.checkpoints.save(self.step, self.state_dict())
        return self.last_checkpoint
