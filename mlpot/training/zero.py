"""ZeRO sharding for data-parallel training (DeePMD-kit ``training/zero_stage``).

Stages, as DeePMD-kit 3.x defines them (PyTorch backend):

* 0: every rank holds the whole optimizer state and every gradient (the default).
* 1: the optimizer state is sharded: ``torch.distributed.optim.ZeroRedundancyOptimizer`` gives each
  parameter tensor to one rank (sorted-greedy by size); that rank alone keeps its Adam moments and
  updates it, then broadcasts the new values. The gradients are summed over all ranks first
  (:meth:`DistInfo.sum_gradients`, the all-reduce of stage 0).
* 2: the gradients are sharded as well: after the backward, each gradient is summed onto its
  owner rank only (one reduce per rank, half the traffic of an all-reduce) and the other ranks
  drop it; the gradient norm (clipping, the non-finite check) is the sum of the owners' shares.
  DeePMD-kit uses FSDP2 here; mlpot reduces by hand after the whole backward, as for stage 0,
  because a force loss needs a second backward through the graph of the first (FSDP2 frees its
  gathered parameters after the first one: "setStorage ... out of bounds for storage of size 0"
  with torch 2.13). So gradients are sharded between steps, not during the backward: the peak
  memory is that of stage 1.
* 3 (parameters sharded too) is not built: it needs the parameters gathered for both backward
  passes, which FSDP2 does not do (above).

In every stage the update — and every weight — is the one of stage 0 to rounding. One process has
nothing to shard: any stage then trains as stage 0, as DeePMD-kit does (one input file serves both).
Checkpoints hold the whole optimizer state in the plain ``torch.optim`` layout (gathered on rank 0
by :func:`gather_optimizer_state`), so a run restarts with any number of ranks and any stage.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from mlpot.errors import ConfigError
from mlpot.training.distributed import DistInfo, copy_flat

__all__ = ["ZeroRedundancyOptimizer", "check_zero_stage", "sharded_optimizer", "is_sharded", "gather_optimizer_state",
           "optimizer_state", "reduce_gradients"]

_UNBUILT = {3: "parameter sharding (FSDP2 stage 3)"}


def check_zero_stage(stage: int, *, world_size: int, multi_task: bool, lkf: bool, full_validation: bool,
                     file: Optional[str] = None) -> int:
    """The stage in effect (0 in one process); ConfigError for what is not built.

    Stage 3 is refused in any run (one input file must behave the same on one and many ranks);
    stages 1-2 on several ranks are refused with multi-task models and LKF (as DeePMD-kit does) and
    with full validation (its best checkpoints are written by rank 0 alone, mid-step, while the
    optimizer state is spread over the ranks).
    """
    key = "training.zero_stage"
    if stage in _UNBUILT:
        raise ConfigError(f"not supported yet: zero_stage = {stage} ({_UNBUILT[stage]}: FSDP2 frees the gathered "
                          "parameters after the first backward, which the second backward of a force loss still "
                          "needs); use zero_stage 2 (optimizer state and gradients sharded), 1 or 0", file=file, key=key)
    if stage == 0 or world_size <= 1:
        return 0
    for used, what in ((multi_task, "multi-task models"), (lkf, "the LKF optimizer"),
                       (full_validation, "full validation (validating/full_validation)")):
        if used:
            raise ConfigError(f"not supported yet: zero_stage = {stage} with {what}", file=file, key=key)
    return stage


def sharded_optimizer(cls: type, params: List[Any], stage: int = 1, **kwargs) -> ZeroRedundancyOptimizer:
    """A ``ZeroRedundancyOptimizer`` over ``params`` (tensors or group dicts) whose local optimizer
    is ``cls(**kwargs)``; needs an initialised process group. Its ``param_groups`` carry every
    option of the local optimizer (``eps``, ``amsgrad``, ...), so that its consolidated state loads
    into a plain ``cls`` (a restart on one rank). ``stage`` 2: :func:`reduce_gradients` shards the
    gradients too (attribute ``zero_stage``)."""
    optimizer = ZeroRedundancyOptimizer(params, optimizer_class=cls, **kwargs)
    optimizer.zero_stage = int(stage)
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


def reduce_gradients(parameters: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer, info: DistInfo,
                     clip: Optional[float] = None) -> torch.Tensor:
    """Sum this step's gradients over the ranks, clip them to the 2-norm ``clip`` (torch's rule,
    coefficient clip / (norm + 1e-6) when below 1) and return their global 2-norm before clipping
    (a 0-d tensor, the same on every rank).

    Stages 0-1: every rank gets every summed gradient (one flat all-reduce). Stage 2: each
    gradient is summed onto the rank that owns the parameter in the sharded optimizer; every
    other rank sets it to None (module docstring).
    """
    params = [p for p in parameters if p.requires_grad]
    if getattr(optimizer, "zero_stage", 0) < 2 or not info.enabled:
        info.sum_gradients(params)
        if clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, clip)
        grads = [p.grad for p in params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    owner = optimizer._param_to_rank
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for rank in range(info.world_size):
        mine = [p for p in params if owner[p] == rank]
        if not mine:
            continue
        flat = torch.cat([p.grad.reshape(-1) for p in mine])
        dist.reduce(flat, dst=rank, op=dist.ReduceOp.SUM)
        if rank == info.rank:
            copy_flat(flat, [p.grad for p in mine])
    owned = []
    for p in params:
        if owner[p] == info.rank:
            owned.append(p.grad)
        else:
            p.grad = None
    square = sum((g.double().square().sum() for g in owned), torch.zeros((), dtype=torch.float64))
    norm = info.sum(square).sqrt()
    if clip is not None:
        coefficient = torch.clamp(clip / (norm + 1e-6), max=1.0)
        for g in owned:
            g.mul_(coefficient.to(g.dtype))
    return norm
