"""Learning-rate schedules as pure functions of the optimisation step.

Every schedule is a small picklable object with ``lr(step) -> float`` (absolute learning rate at the
0-based internal step) and ``start_lr``. The optimizer side (``optim.build_lr_scheduler``) drives a
torch ``LambdaLR`` with ``lr(step) / start_lr``, so per-group learning rates keep their ratios.

DeePMD's ``cosine`` and ``wsd`` (warmup-stable-decay, DeePMD-kit 3.x) are the same formulas as
DeePMD-kit's, with the shared warm-up in front.

DeePMD's ``exp`` schedule follows specs/deepmd.md §4.1 exactly (decay-rate arithmetic, automatic
shrink of ``decay_steps``, clipping at ``stop_lr``, warmup that restarts the decay after it). It is
written here because torch's ExponentialLR has neither the stepped form nor the auto-shrink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from mlpot.errors import ConfigError, suggest
from mlpot.nn.registry import Registry, check_option_names

__all__ = [
    "ExponentialDecay",
    "StepDecay",
    "CosineDecay",
    "WarmupStableDecay",
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


WSD_DECAY_TYPES = ("inverse_linear", "cosine", "linear")


@dataclass
class WarmupStableDecay(_Warmup):
    """DeePMD-kit ``wsd``: warm-up, a stable phase at start_lr, then a final decay to stop_lr.

    With W warm-up steps and N = ``num_steps``, the decay phase lasts D = floor(ratio * N) steps
    (ratio = ``decay_phase_ratio`` of the *total* steps, as DeePMD-kit), clamped to [1, N - W];
    the stable phase is the remaining S = N - W - D steps. In the decay phase, with the progress
    u = (t - W - S) / D in [0, 1]:

    * ``inverse_linear`` (default): lr = 1 / (u / stop_lr + (1 - u) / start_lr)
    * ``cosine``: lr = stop_lr + (start_lr - stop_lr) (1 + cos(pi u)) / 2
    * ``linear``: lr = start_lr + (stop_lr - start_lr) u

    and stop_lr from t >= N on.
    """

    stop_lr: float = 0.0
    num_steps: int = 1
    decay_phase_ratio: float = 0.1
    decay_type: str = "inverse_linear"

    def __post_init__(self):
        if not 0.0 < float(self.decay_phase_ratio) <= 1.0:
            raise ConfigError(f"decay_phase_ratio must be in (0, 1], got {self.decay_phase_ratio}",
                              key="lr_schedule.decay_phase_ratio")
        if self.decay_type not in WSD_DECAY_TYPES:
            hint = suggest(str(self.decay_type), WSD_DECAY_TYPES)
            raise ConfigError(f"unknown decay_type {self.decay_type!r}; valid: {', '.join(WSD_DECAY_TYPES)}",
                              key="lr_schedule.decay_type", hint=f"did you mean {hint!r}?" if hint else None)
        if self.decay_type == "inverse_linear" and self.stop_lr <= 0:
            raise ConfigError("the inverse_linear decay needs stop_lr > 0", key="lr_schedule.stop_lr")
        span = max(1, int(self.num_steps) - int(self.warmup_steps))
        self.decay_phase_steps = min(span, max(1, int(float(self.decay_phase_ratio) * int(self.num_steps))))
        self.stable_steps = span - self.decay_phase_steps

    def lr(self, step: int) -> float:
        warm = self._warm(step)
        if warm is not None:
            return warm
        into_decay = step - self.warmup_steps - self.stable_steps
        if into_decay <= 0:
            return self.start_lr
        u = into_decay / self.decay_phase_steps
        if u >= 1.0:
            return self.stop_lr
        if self.decay_type == "inverse_linear":
            return 1.0 / (u / self.stop_lr + (1.0 - u) / self.start_lr)
        if self.decay_type == "cosine":
            return self.stop_lr + 0.5 * (self.start_lr - self.stop_lr) * (1.0 + math.cos(math.pi * u))
        return self.start_lr + (self.stop_lr - self.start_lr) * u


@dataclass
class ConstantLR(_Warmup):
    """Constant start_lr after warmup."""

    def lr(self, step: int) -> float:
        warm = self._warm(step)
        return self.start_lr if warm is None else warm


SCHEDULES: Registry[type] = Registry("lr schedule")
for _name, _schedule in (("exp", ExponentialDecay), ("step", StepDecay), ("cosine", CosineDecay),
                         ("wsd", WarmupStableDecay), ("constant", ConstantLR), ("plateau", None)):
    SCHEDULES.register(_name, _schedule)  # plateau: torch's ReduceLROnPlateau (mlpot.training.optim)


def build_schedule(type: str, start_lr: float, *, key="lr_schedule", file=None, **kwargs):
    """Schedule object by name (``exp``, ``step``, ``cosine``, ``wsd``, ``constant``) with its keyword options.

    Unknown names or options raise ConfigError naming ``key`` (and ``file``) with a suggestion.
    """
    name = SCHEDULES.canonical(str(type), key=f"{key}.type", file=file)
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ConfigError("the plateau schedule is stepped with a validation metric: build it with "
                          "mlpot.training.optim.build_lr_scheduler", file=file, key=f"{key}.type")
    check_option_names(kwargs, set(cls.__dataclass_fields__) - {"start_lr"}, f"the {name!r} schedule",
                       key=key, file=file)
    return cls(start_lr=float(start_lr), **kwargs)
