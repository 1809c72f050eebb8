"""The monitored validation value and what follows from it: early stopping, the best checkpoint.

``training.monitor`` names the value a run watches: a weighted sum Σ_k c_k m_k of pooled validation
metrics m_k (``<label>_rmse`` / ``<label>_mae`` of :class:`~mlpot.training.metrics.PooledErrors`:
``energy_rmse``, ``energy_per_atom_mae``, ``forces_rmse``, ``stress_mae``...) or ``loss`` (the
validation loss), with the coefficients normalised to sum to 1 (as Lightning users of NequIP
monitor ``val0_epoch/weighted_sum``). Without a monitor the value is the validation ``rmse`` (the
DeePMD lcurve column, what the plateau schedule used before).

:class:`ValidationMonitor` follows it over the validations of a run:

* best value so far (``mode`` min or max) and whether the latest one improved on it by more than
  ``min_delta`` (the best checkpoint ``checkpoint.best`` is written then);
* early stopping (``training.early_stopping``, Lightning's ``EarlyStopping`` rule): after
  ``patience`` validations in a row without an improvement larger than ``min_delta``, when the value
  is not finite (``check_finite``), when it reaches ``stopping_threshold`` or goes beyond
  ``divergence_threshold``, the run stops after that validation.

Its state is part of the checkpoint, so a resumed run counts on.
"""

from __future__ import annotations

import math
from typing import Dict, Literal, Mapping, Optional

from pydantic import Field, field_validator

from mlpot.training._strict import Strict as _Strict

__all__ = ["MonitorConfig", "EarlyStoppingConfig", "ValidationMonitor"]


class MonitorConfig(_Strict):
    """The monitored validation value (module docstring)."""

    metrics: Dict[str, float] = Field(description="pooled validation metric (energy_rmse, forces_mae, ..., loss) -> "
                                      "coefficient; coefficients are normalised to sum to 1")
    mode: Literal["min", "max"] = "min"

    @field_validator("metrics")
    @classmethod
    def _positive(cls, metrics: Dict[str, float]) -> Dict[str, float]:
        if not metrics or any(c < 0 for c in metrics.values()) or sum(metrics.values()) <= 0:
            raise ValueError(f"give at least one metric with a positive coefficient (no negative ones), got {metrics}")
        return metrics


class EarlyStoppingConfig(_Strict):
    """Stop when the monitored value stops improving (Lightning ``EarlyStopping`` semantics)."""

    patience: int = Field(3, ge=1, description="validations in a row without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="an improvement must be larger than this")
    check_finite: bool = Field(True, description="stop when the monitored value is NaN or infinite")
    stopping_threshold: Optional[float] = Field(None, description="stop once the value is at least this good")
    divergence_threshold: Optional[float] = Field(None, description="stop once the value is worse than this")


class ValidationMonitor:
    """Best value, improvements and early stopping over the validations of a run (module docstring)."""

    def __init__(self, config: Optional[MonitorConfig], early_stopping: Optional[EarlyStoppingConfig] = None):
        self.mode = config.mode if config is not None else "min"
        total = sum(config.metrics.values()) if config is not None else 1.0
        self.weights = {k: v / total for k, v in config.metrics.items() if v > 0} if config is not None else {"rmse": 1.0}
        self.early_stopping = early_stopping
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.reference: Optional[float] = None  # early stopping's best score
        self.wait = 0
        self.stop_reason: Optional[str] = None

    def value(self, valid: Mapping[str, float]) -> float:
        """The monitored value of one validation's values (KeyError names a metric it lacks)."""
        missing = [k for k in self.weights if k not in valid]
        if missing:
            raise KeyError(f"monitored metrics {missing} are not among the validation values {sorted(valid)}")
        return float(sum(c * valid[k] for k, c in self.weights.items()))

    def _better(self, value: float, reference: float, delta: float) -> bool:
        return value < reference - delta if self.mode == "min" else value > reference + delta

    def update(self, value: float, step: int) -> bool:
        """Record a validation; returns whether it is a new best (strictly better than every earlier
        one). Sets ``stop_reason`` when early stopping says the run should end: Lightning's order of
        checks, its reference value moving only on improvements larger than ``min_delta``."""
        new_best = math.isfinite(value) and (self.best is None or self._better(value, self.best, 0.0))
        if new_best:
            self.best, self.best_step = value, step
        rule = self.early_stopping
        if rule is None:
            return new_best
        if rule.check_finite and not math.isfinite(value):
            self.stop_reason = f"the monitored value is {value}"
        elif rule.stopping_threshold is not None and self._better(value, rule.stopping_threshold, 0.0):
            self.stop_reason = f"the monitored value {value:.6g} reached stopping_threshold {rule.stopping_threshold}"
        elif rule.divergence_threshold is not None and self._better(rule.divergence_threshold, value, 0.0):
            self.stop_reason = f"the monitored value {value:.6g} passed divergence_threshold {rule.divergence_threshold}"
        elif self.reference is None or self._better(value, self.reference, rule.min_delta):
            self.reference, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= rule.patience:
                self.stop_reason = (f"no improvement larger than {rule.min_delta} in {self.wait} validations "
                                    f"(best {self.best:.6g} at step {self.best_step})")
        return new_best

    def state_dict(self) -> Dict[str, object]:
        return {"best": self.best, "best_step": self.best_step, "reference": self.reference, "wait": self.wait,
                "stop_reason": self.stop_reason}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.best, self.best_step, self.reference = state.get("best"), state.get("best_step"), state.get("reference")
        self.wait, self.stop_reason = int(state.get("wait", 0)), state.get("stop_reason")
