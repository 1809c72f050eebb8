"""The trainer's validation-driven steps, a mixin of :class:`mlpot.training.trainer.Trainer`.

When to validate (every ``valid_freq`` steps, every ``valid_every_epochs`` epochs), what a
validation decides (the plateau schedule step, the best checkpoint and early stopping through the
monitored value of :mod:`mlpot.training.monitor`; MACE's ``patience`` with its move to the next
``train_schedule`` stage through :mod:`mlpot.training.early_stopping`), the evaluation of
``data.test`` after training, and the model's own reports (``epoch_report``, ``after_training``:
e.g. the SCF convergence counts of the fixed-point models). The methods read the trainer's state
(``config``, ``model``, ``log``, ``monitor``, ``early_stopping``, ``plan``...).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Dict, Optional

import torch

from mlpot.errors import MlpotError
from mlpot.training.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["ValidationFlow"]


class ValidationFlow:
    """Validation, early stopping, test and model reports of the trainer (module docstring)."""

    def _patience_exhausted(self, valid: Optional[Dict[str, float]]) -> bool:
        """Early stopping (``training.patience``) after a validation: True to stop the run; when a
        later stage exists it is entered at its start instead (the steps in between are skipped)."""
        exhausted = self.early_stopping.update(valid.get("rmse", math.nan) if valid else math.nan)
        if self.dist.enabled:  # the main rank validated: every rank follows its decision
            exhausted = self._reduced(torch.tensor(float(exhausted))) > 0
        if not exhausted:
            return False
        if self.stage_index + 1 >= len(self.plan):
            self.log.write(f"early stopping at step {self.step}: {self.early_stopping.count} validations without a "
                           f"lower validation loss (training.patience)")
            return True
        stage = self.plan[self.stage_index + 1]
        self.log.write(f"patience exhausted at step {self.step}: going on with stage {stage.name!r}")
        self.step = stage.start * (self.steps_per_epoch if self.unit == "epochs" else 1)
        self.epoch = self.step // self.steps_per_epoch
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            self.scheduler.last_epoch = self.step
        return False

    def _validation_due(self, end: bool, valid_freq: int) -> bool:
        every = self.config.training.valid_every_epochs
        if every is not None:
            return end or self.step % (every * self.steps_per_epoch) == 0
        return self.step == 1 or self.step % valid_freq == 0 or end

    def _after_validation(self, valid: Optional[Dict[str, float]], train: Dict[str, float]) -> None:
        """The monitored value: plateau schedule step, best checkpoint, early stopping (rank 0 decides)."""
        if valid is None:
            return
        try:
            value = self.monitor.value(valid) if self.config.training.monitor is not None else valid.get("rmse", train["loss"])
        except KeyError as error:
            raise MlpotError(f"training.monitor: {error.args[0]}") from None
        if self.optimizer_setup.plateau:
            self.scheduler.step(value)
        if self.monitor.update(value, self.step) and self.config.checkpoint.best:
            path = self.out / self.config.checkpoint.dir / self.config.checkpoint.best
            save_checkpoint(path, self.state_dict())
            self.log.debug(f"new best monitored value {value:.6g} at step {self.step}: {path}")

    def best_checkpoint(self) -> Optional[Path]:
        """The best checkpoint written (``checkpoint.best``), or None."""
        if not self.config.checkpoint.best:
            return None
        path = self.out / self.config.checkpoint.dir / self.config.checkpoint.best
        return path if path.exists() else None

    def test(self) -> Dict[str, Dict[str, float]]:
        """Evaluate ``data.test`` of every task with the best checkpoint's weights (else the final
        ones, EMA when on); logs one line per task and returns {task: metrics}."""
        best = self.best_checkpoint()
        results: Dict[str, Dict[str, float]] = {}
        state = load_checkpoint(best) if best is not None else None
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if state is not None else None
        if state is not None:
            self.model.load_state_dict(state.get("ema_state_dict") or state["model_state_dict"])
        try:
            self.model.eval()
            with self.ema.applied(self.model) if self.ema is not None and state is None else contextlib.nullcontext():
                for task in self.task_names:
                    values = self.tasks.evaluate(task, "test", self.losses[task], self._lr_ratio(), self.log.debug)
                    if values is not None:
                        results[task] = values
                        shown = ", ".join(f"{k} {v:.6g}" for k, v in values.items() if k.endswith(("_rmse", "_mae")))
                        weights = f"best checkpoint {best.name}" if best is not None else "final weights"
                        self.log.write(f"test{' of task ' + task if task else ''} ({weights}): {shown}")
        finally:
            if backup is not None:
                self.model.load_state_dict(backup)
        return results

    def _model_report(self) -> None:
        """The model's end-of-epoch line (e.g. SCF convergence counts) to the console and debug log."""
        report = self.model.epoch_report() if hasattr(self.model, "epoch_report") else None
        if report:
            self.log.write(f"epoch {self.epoch - 1}: {report}")
            self.log.debug(report)

    def _after_training(self) -> None:
        """The model's post-training report (e.g. the SCF convergence summary) on the validation
        batches (training batches without validation data), with the EMA weights when on."""
        data = self.task_data[self.task_names[0]]
        if not hasattr(self.model, "after_training") or self.multi_task:
            return
        if data.valid_sampler is not None:
            batches = (data.valid_batch(indices) for indices in data.valid_batches())
        else:
            batches = iter(data.stat_samples)
        self.model.eval()
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            report = self.model.after_training(batches)
        if report:
            for line in report.splitlines():
                self.log.write(line)
                self.log.debug(line)
