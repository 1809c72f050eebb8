"""ZeRO optimizer-state sharding for data-parallel training (DeePMD-kit ``training/zero_stage``).

Stages, as DeePMD-kit 3.x defines them (PyTorch backend):

* 0: every rank holds the whole optimizer state (plain data parallelism, the default).
* 1: the optimizer state is sharded: ``torch.distributed.optim.ZeroRedundancyOptimizer`` gives each
  parameter to one rank (sorted-greedy by size); that rank alone keeps its Adam moments and
  updates it, then broadcasts the new values. Gradients are still summed over ranks by
  :meth:`DistInfo.sum_gradients` first (the same all-reduce as stage 0), so the update — and
  every weight — is the one of stage 0 to rounding.
* 2 and 3 (gradients, then parameters sharded too) are FSDP2 in DeePMD-kit. They are not built:
  FSDP2 shards and reduces gradients inside autograd hooks of a wrapped module, while mlpot's step
  takes a second derivative (force losses) and sums the gradients by hand after the backward.

One process has nothing to shard: any stage then trains as stage 0, as DeePMD-kit does (one input
file serves both). Checkpoints hold the whole optimizer state in the plain ``torch.optim`` layout
(consolidated on rank 0 by :func:`optimizer_state`), so a run restarts with any number of ranks
and any stage.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch.distributed.optim import ZeroRedundancyOptimizer

from mlpot.errors import ConfigError

__all__ = ["ZeroRedundancyOptimizer", "check_zero_stage", "sharded_optimizer", "is_sharded", "gather_optimizer_state",
           "optimizer_state"]

_UNBUILT = {2: "gradient sharding (FSDP2 stage 2)", 3: "parameter sharding (FSDP2 stage 3)"}


def check_zero_stage(stage: int, *, world_size: int, multi_task: bool, lkf: bool, full_validation: bool,
                     file: Optional[str] = None) -> int:
    """The stage in effect (0 in one process); ConfigError for what is not built.

    Stages 2-3 are refused in any run (one input file must behave the same on one and many ranks);
    stage 1 on several ranks is refused with multi-task models and LKF (as DeePMD-kit does) and
    with full validation (its best checkpoints are written by rank 0 alone, mid-step, while the
    optimizer state is spread over the ranks).
    """
    key = "training.zero_stage"
    if stage in _UNBUILT:
        raise ConfigError(f"not supported yet: zero_stage = {stage} ({_UNBUILT[stage]}: FSDP2 reduces "
                          "gradients in autograd hooks of a wrapped module, which the force loss's double backward "
                          "and mlpot's hand all-reduce of the gradients bypass); use zero_stage 1 (optimizer-state "
                          "sharding) or 0", file=file, key=key)
    if stage == 0 or world_size <= 1:
        return 0
    for used, what in ((multi_task, "multi-task models"), (lkf, "the LKF optimizer"),
                       (full_validation, "full validation (validating/full_validation)")):
        if used:
            raise ConfigError(f"not supported yet: zero_stage = {stage} with {what}", file=file, key=key)
    return stage


def sharded_optimizer(cls: type, params: List[Any], **kwargs) -> ZeroRedundancyOptimizer:
    """A ``ZeroRedundancyOptimizer`` over ``params`` (tensors or group dicts) whose local optimizer
    is ``cls(**kwargs)``; needs an initialised process group. Its ``param_groups`` carry every
    option of the local optimizer (``eps``, ``amsgrad``, ...), so that its consolidated state loads
    into a plain ``cls`` (a restart on one rank)."""
    optimizer = ZeroRedundancyOptimizer(params, optimizer_class=cls, **kwargs)
    for exposed, local in zip(optimizer.param_groups, optimizer.optim.param_groups):
        for name, value in local.items():
            if name != "params":
                exposed.setdefault(name, value)
    return optimizer


def is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, ZeroRedundancyOptimizer)


def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Send every rank's shard of a sharded optimizer's state to rank 0 (a collective: every rank
    calls it before rank 0 writes a checkpoint); nothing for a plain optimizer."""
    if is_sharded(optimizer):
        optimizer.consolidate_state_dict(to=0)


def optimizer_state(optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The whole optimizer state in ``torch.optim`` layout (parameters by global index); for a
    sharded optimizer, on rank 0, the state :func:`gather_optimizer_state` gathered (used once)."""
    if not is_sharded(optimizer):
        return optimizer.state_dict()
    state = optimizer.state_dict()  # RuntimeError when nothing was gathered: a missing collective
    optimizer._all_state_dicts = []  # a later checkpoint must gather again, never reuse stale shards
    return state
