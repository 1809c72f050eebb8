"""Learning-rate schedules as pure functions of the optimisation step.

Every schedule is a small picklable object with ``lr(step) -> float`` (absolute learning rate at the
0-based internal step) and ``start_lr``. The optimizer side (``optim.build_lr_scheduler``) drives a
torch ``LambdaLR`` with ``lr(step) / start_lr``, so per-group learning rates keep their ratios.

DeePMD's ``exp`` schedule follows specs/deepmd.md §4.1 exactly (decay-rate arithmetic, automatic
shrink of ``decay_steps``, clipping at ``stop_lr``, warmup that restarts the decay after it). It is
written here because torch's ExponentialLR has neither the stepped form nor the auto-shrink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from mlpot.errors import ConfigError, suggest

__all__ = [
    "ExponentialDecay",
    "StepDecay",
    "CosineDecay",
    "ConstantLR",
    "SCHEDULES",
    "build_schedule",
    "deepmd_decay_steps",
]


def deepmd_decay_steps(decay_steps: int, decay_span: int) -> int:
    """DeePMD 3.x auto-adjust [COMPAT]: when ``decay_steps >= decay_span`` it shrinks to 100 if
    ``decay_span // 10 > 100``, else to ``decay_span // 100 + 1``. Otherwise unchanged."""
    if decay_steps < decay_span:
        return int(decay_steps)
    return 100 if decay_span // 10 > 100 else decay_span // 100 + 1


@dataclass
class _Warmup:
    """Linear warmup from ``warmup_start_factor * start_lr`` to ``start_lr`` over ``warmup_steps``."""

    start_lr: float
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0

    def _warm(self, step: int) -> Optional[float]:
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.start_lr * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * frac)
        return None


@dataclass
class ExponentialDecay(_Warmup):
    """DeePMD ``exp``: lr(t) = start_lr * r^floor(t/s) (or r^(t/s) when ``smooth``), clipped at stop_lr.

    ``num_steps`` is the total number of training steps; T = num_steps - warmup_steps. Without
    ``decay_rate``, r = (stop_lr / start_lr)^(s / T) with s the (possibly auto-shrunk) decay_steps.
    """

    stop_lr: float = 1e-8
    decay_steps: int = 5000
    num_steps: int = 1
    decay_rate: Optional[float] = None
    smooth: bool = False

    def __post_init__(self):
        span = max(1, int(self.num_steps) - int(self.warmup_steps))
        if self.decay_rate is None:
            self.decay_steps = deepmd_decay_steps(int(self.decay_steps), span)
            self.decay_rate = math.exp(math.log(self.stop_lr / self.start_lr) / (span / self.decay_steps))
        self.decay_steps = max(1, int(self.decay_steps))

    def lr(self, step: int) -> float:
        warm = self._warm(step)
        if warm is not None:
            return warm
        t = step - self.warmup_steps
        power = t / self.decay_steps if self.smooth else t // self.decay_steps
        return max(self.start_lr * self.decay_rate ** power, self.stop_lr)


@dataclass
class StepDecay(_Warmup):
    """lr(t) = start_lr * gamma^floor(t / step_size) after warmup."""

    step_size: int = 1000
    gamma: float = 0.5

    def lr(self, step: int) -> float:
        warm = self._warm(step)
        if warm is not None:
            return warm
        return self.start_lr * self.gamma ** ((step - self.warmup_steps) // self.step_size)


@dataclass
class CosineDecay(_Warmup):
    """Cosine from start_lr to stop_lr over num_steps - warmup_steps, then constant stop_lr."""

    stop_lr: float = 0.0
    num_steps: int = 1

    def lr(self, step: int) -> float:
        warm = self._warm(step)
        if warm is not None:
            return warm
        span = max(1, self.num_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.stop_lr + 0.5 * (self.start_lr - self.stop_lr) * (1.0 + math.cos(math.pi * frac))


@dataclass
class ConstantLR(_Warmup):
    """Constant start_lr after warmup."""

    def lr(self, step: int) -> float:
        warm = self._warm(step)
        return self.start_lr if warm is None else warm


SCHEDULES = {"exp": ExponentialDecay, "step": StepDecay, "cosine": CosineDecay, "constant": ConstantLR}


def build_schedule(type: str, start_lr: float, *, key="lr_schedule", file=None, **kwargs):
    """Schedule object by name (``exp``, ``step``, ``cosine``, ``constant``) with its keyword options.

    Unknown names or options raise ConfigError naming ``key`` (and ``file``) with a suggestion.
    """
    name = str(type).lower()
    if name not in SCHEDULES:
        hint = suggest(name, SCHEDULES)
        raise ConfigError(
            f"unknown lr schedule {type!r}; valid: {', '.join(SCHEDULES)}, plateau",
            file=file, key=f"{key}.type", hint=f"did you mean {hint!r}?" if hint else None,
        )
    cls = SCHEDULES[name]
    valid = set(cls.__dataclass_fields__) - {"start_lr"}
    for option in kwargs:
        if option not in valid:
            hint = suggest(option, valid)
            raise ConfigError(
                f"unknown option of the {name!r} schedule; valid: {', '.join(sorted(valid))}",
                file=file, key=f"{key}.{option}", hint=f"did you mean {hint!r}?" if hint else None,
            )
    return cls(start_lr=float(start_lr), **kwargs)
