"""Training stages (``train_schedule``): which stage is active and what it changes.

A stage covers [start, end] (inclusive, 0-based) in the run's unit (steps or epochs, MACE-SCF
convention). Entering a stage sets the base learning rate of every optimizer group (``lr``, with
``group_lr`` overrides by group name; the lr schedule keeps running on top of the new base), the
loss terms (``loss`` replaces ``loss.terms``) and model-specific options (``model_options``, passed
to ``model.set_options(**options)``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from mlpot.errors import ConfigError

__all__ = ["StagePlan", "apply_stage_lr", "apply_model_options"]


class StagePlan:
    """Ordered stages; ``index_at(position)`` gives the stage covering a step or epoch."""

    def __init__(self, stages: Sequence, unit: str):
        self.stages = list(stages)
        self.unit = unit
        self.ends = [int(s.end) for s in self.stages]

    def index_at(self, position: int) -> int:
        for index, end in enumerate(self.ends):
            if position <= end:
                return index
        return len(self.stages) - 1

    def __getitem__(self, index: int):
        return self.stages[index]

    def __len__(self) -> int:
        return len(self.stages)


def apply_stage_lr(stage, optimizer: torch.optim.Optimizer, scheduler, group_names: List[str],
                   initial_lrs: List[float]) -> None:
    """Set each group's base lr for ``stage`` and refresh the current lr from the schedule factor.

    initial_lrs: the groups' base lrs from the optimizer config (used when the stage sets none).
    Group lrs keep their ratio to the first group unless ``group_lr`` names the group.
    """
    unknown = set(stage.group_lr) - set(group_names)
    if unknown:
        raise ConfigError(f"unknown optimizer group(s) {sorted(unknown)}; groups: {group_names}",
                          key=f"train_schedule.{stage.name}.group_lr")
    bases = []
    for name, initial in zip(group_names, initial_lrs):
        if name in stage.group_lr:
            bases.append(float(stage.group_lr[name]))
        elif stage.lr is not None:
            bases.append(float(stage.lr) * initial / initial_lrs[0])
        else:
            bases.append(initial)
    factor = 1.0
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = list(bases)
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, base in zip(optimizer.param_groups, bases):
        group["initial_lr"] = base
        group["lr"] = base * factor


def apply_model_options(model: torch.nn.Module, options: Optional[Dict], stage_name: str) -> None:
    """Pass a stage's ``model_options`` to ``model.set_options``; a model without it rejects them."""
    if not options:
        return
    setter = getattr(model, "set_options", None)
    if setter is None:
        raise ConfigError(f"{type(model).__name__} takes no model_options",
                          key=f"train_schedule.{stage_name}.model_options")
    setter(**options)
