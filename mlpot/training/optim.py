"""Optimizers and learning-rate schedulers by name.

``build_optimizer("adamw", params, lr=1e-3, weight_decay=1e-2)`` returns any ``torch.optim``
optimizer by case-insensitive class name; ``params_or_groups`` is an iterable of tensors or a list
of parameter-group dicts (each may carry its own ``lr``, ``weight_decay``, ...). Unknown names raise
ConfigError listing the valid ones.

``build_lr_scheduler(optimizer, type, start_lr=..., **options)`` returns a torch scheduler:
a ``LambdaLR`` driven by a schedule of :mod:`mlpot.training.schedules` (``exp``, ``step``,
``cosine``, ``constant``; the factor is ``lr(step) / start_lr`` so every group keeps its own base lr)
or ``ReduceLROnPlateau`` for ``plateau`` (stepped with a validation metric).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Union

import torch

from mlpot.errors import ConfigError
from mlpot.nn.registry import Registry, check_option_names
from mlpot.training.lkf import LKF
from mlpot.training.schedules import SCHEDULES, build_schedule
from mlpot.training.zero import sharded_optimizer

__all__ = ["OPTIMIZERS", "build_optimizer", "build_lr_scheduler", "ScheduleFactor", "current_lr", "OptimizerSetup",
           "build_training_optimizer"]


def _optimizer_classes() -> Registry[type]:
    """Every optimizer class of ``torch.optim``, by its class name (matched case-insensitively), and LKF."""
    registry: Registry[type] = Registry("optimizer")
    for name in sorted(dir(torch.optim)):
        obj = getattr(torch.optim, name)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            registry.register(obj.__name__, obj)
    registry.register("LKF", LKF)  # layer-wise Kalman filter (DeePMD-kit): updates from a batch, see trainer
    return registry


OPTIMIZERS: Registry[type] = _optimizer_classes()


def build_optimizer(
    name: str,
    params_or_groups: Union[Iterable[torch.Tensor], List[Dict[str, Any]]],
    *,
    key: str = "optimizer.name",
    file: Optional[str] = None,
    shard: int = 0,
    **kwargs,
) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer by case-insensitive name (``adam``, ``AdamW``, ``sgd``, ...).

    kwargs go to the optimizer's constructor (``lr``, ``betas``, ``weight_decay``, ...); a keyword
    the class does not accept raises ConfigError naming it. Adam and AdamW use the fused kernel
    unless ``fused`` or ``foreach`` is given. shard: the ZeRO stage (1: the optimizer state is
    sharded over the ranks of the process group, 2: the gradients too; :mod:`mlpot.training.zero`).
    """
    cls = OPTIMIZERS.get(str(name), key=key, file=file)
    params = list(params_or_groups)
    if cls in (torch.optim.Adam, torch.optim.AdamW) and "fused" not in kwargs and "foreach" not in kwargs:
        # the fused kernel updates each tensor in one pass (3-4x faster than the foreach default on
        # CPU; ~5 % of a DeePMD water step); same update rule, same state_dict layout
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        if tensors and all(torch.is_floating_point(t) and t.device.type in ("cpu", "cuda") for t in tensors):
            kwargs["fused"] = True
    try:
        return sharded_optimizer(cls, params, shard, **kwargs) if shard else cls(params, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid options for optimizer {cls.__name__}: {exc}", file=file, key=key) from None


class ScheduleFactor:
    """Picklable ``step -> lr(step // steps_per_unit) / start_lr`` for ``LambdaLR`` (steps_per_unit:
    the steps of an epoch for a per-epoch schedule, else 1)."""

    def __init__(self, schedule, steps_per_unit: int = 1):
        self.schedule, self.steps_per_unit = schedule, max(1, int(steps_per_unit))

    def __call__(self, step: int) -> float:
        return self.schedule.lr(step // getattr(self, "steps_per_unit", 1)) / self.schedule.start_lr


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    type: str = "constant",
    *,
    start_lr: Optional[float] = None,
    key: str = "lr_schedule",
    file: Optional[str] = None,
    steps_per_unit: int = 1,
    **options,
):
    """Scheduler for ``optimizer``; call ``.step()`` after every optimizer step (``.step(metric)``
    for ``plateau``). ``start_lr`` defaults to the first group's lr.

    plateau options: ``factor`` (0.5), ``patience`` (10), ``threshold``, ``min_lr``, ``mode`` ('min').
    """
    if start_lr is None:
        start_lr = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:  # the base lr (lr-coupled loss prefactors use lr / initial_lr)
        group.setdefault("initial_lr", group["lr"])
    if SCHEDULES.canonical(str(type), key=f"{key}.type", file=file) == "plateau":
        check_option_names(options, {"factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps",
                                     "mode"}, "the 'plateau' schedule", key=key, file=file)
        # torch ignores reductions smaller than eps = 1e-8 (absolute), which freezes the small lrs of
        # potential training (DeePMD decays to ~1e-8); reduce whenever asked unless eps is given
        options.setdefault("eps", 0.0)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **options)
    schedule = build_schedule(type, start_lr, key=key, file=file, **options)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, ScheduleFactor(schedule, steps_per_unit))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the first parameter group (the one DeePMD displays)."""
    return float(optimizer.param_groups[0]["lr"])


@dataclass
class OptimizerSetup:
    """The optimizer of a training run and its lr scheduler.

    ``group_names`` / ``initial_lrs``: per parameter group (stages set their lrs by name);
    ``start_lr``: the base lr (after ``scale_by_worker``); ``warmup_steps``: steps of linear warm-up;
    ``plateau``: the scheduler is ReduceLROnPlateau (stepped with a validation metric).
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any
    group_names: List[str]
    initial_lrs: List[float]
    start_lr: float
    warmup_steps: int
    plateau: bool


def _parameter_groups(model: torch.nn.Module, cfg, base_lr: float, file: Optional[str]):
    """(groups, names): the ``optimizer.groups`` of the config by parameter-name patterns, the
    parameters no pattern takes in a first group "default"."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("nothing to train: every parameter of the model is frozen (trainable: false)",
                          file=file, key="model")
    taken, groups, names = set(), [], []
    for index, group in enumerate(cfg.groups):
        params = [p for n, p in named if n not in taken and any(fnmatch.fnmatch(n, pat) for pat in group.params)]
        if not params:
            raise ConfigError(f"patterns {group.params} match no parameter", file=file,
                              key=["optimizer", "groups", index, "params"])
        taken.update(n for n, p in named if any(p is q for q in params))
        entry = {"params": params, "lr": group.lr or base_lr, **group.kwargs}
        if group.weight_decay is not None:
            entry["weight_decay"] = group.weight_decay
        groups.append(entry)
        names.append(group.name)
    rest = [p for n, p in named if n not in taken]
    if rest:
        groups.insert(0, {"params": rest, "lr": base_lr})
        names.insert(0, "default")
    return groups, names


def _schedule_options(sched, base_lr: float, total_steps: int):
    """(warm-up steps, options of build_lr_scheduler) of the ``lr_schedule`` section."""
    if sched.type == "plateau":
        return 0, {"factor": sched.factor, "patience": sched.patience, "min_lr": sched.min_lr, "threshold": sched.threshold,
                   "threshold_mode": sched.threshold_mode, "cooldown": sched.cooldown, "eps": sched.eps}
    if sched.type == "constant" and not (sched.warmup_steps or sched.warmup_ratio):
        return 0, {}
    warmup = sched.warmup_steps or int((sched.warmup_ratio or 0.0) * total_steps)
    options = {"warmup_steps": warmup, "warmup_start_factor": sched.warmup_start_factor}
    if sched.type in ("exp", "cosine", "wsd"):
        stop = sched.stop_lr if sched.stop_lr is not None else (
            base_lr * sched.stop_lr_ratio if sched.stop_lr_ratio else (1e-8 if sched.type == "exp" else 0.0))
        options.update(stop_lr=stop, num_steps=total_steps)
    if sched.type == "wsd":
        options.update(decay_phase_ratio=sched.decay_phase_ratio, decay_type=sched.decay_type)
    if sched.type == "exp":
        options.update(decay_steps=sched.decay_steps, decay_rate=sched.decay_rate, smooth=sched.smooth)
    if sched.type == "step":
        options.update(step_size=sched.step_size, gamma=sched.gamma)
    return warmup, options


def build_training_optimizer(model: torch.nn.Module, optimizer_cfg, schedule_cfg, total_steps: int,
                             world_size: int = 1, file: Optional[str] = None, steps_per_epoch: int = 1,
                             zero_stage: int = 0) -> OptimizerSetup:
    """The optimizer and scheduler of the native ``optimizer`` and ``lr_schedule`` sections for
    ``model``'s trainable parameters over ``total_steps`` steps (``lr_schedule.per_epoch``: the
    schedule counts epochs of ``steps_per_epoch`` steps); the base lr is scaled by the number of
    data-parallel workers (``scale_by_worker`` linear | sqrt | none); ``zero_stage`` 1-2 (in effect,
    see :func:`~mlpot.training.zero.check_zero_stage`) shards the optimizer state (and gradients)."""
    base_lr = optimizer_cfg.lr or schedule_cfg.start_lr or 1e-3
    base_lr *= {"linear": world_size, "sqrt": math.sqrt(world_size), "none": 1.0}[schedule_cfg.scale_by_worker]
    groups, names = _parameter_groups(model, optimizer_cfg, base_lr, file)
    kwargs = dict(optimizer_cfg.kwargs)
    if optimizer_cfg.weight_decay is not None:
        kwargs["weight_decay"] = optimizer_cfg.weight_decay
    if optimizer_cfg.betas is not None:
        kwargs["betas"] = tuple(optimizer_cfg.betas)
    optimizer = build_optimizer(optimizer_cfg.name, groups, file=file, lr=base_lr, shard=zero_stage, **kwargs)
    initial_lrs = [g["lr"] for g in optimizer.param_groups]
    per_unit = max(1, int(steps_per_epoch)) if schedule_cfg.per_epoch else 1
    warmup, options = _schedule_options(schedule_cfg, base_lr, -(-total_steps // per_unit))
    scheduler = build_lr_scheduler(optimizer, schedule_cfg.type, start_lr=base_lr, file=file,
                                   steps_per_unit=per_unit, **options)
    warmup *= per_unit
    return OptimizerSetup(optimizer, scheduler, names, initial_lrs, base_lr, warmup, schedule_cfg.type == "plateau")
