"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc-per-node N -m mlpot.cli train config.yaml`` sets RANK/WORLD_SIZE/LOCAL_RANK;
:func:`init_distributed` then joins the process group (gloo on CPU, NCCL on GPU). Every rank draws
the same *global* batch from an identically seeded sampler and keeps its share
(:func:`shard_indices`). Losses are weighted means over the global batch: each term's denominator
is summed over ranks (:meth:`DistInfo.sum`) before dividing, and the parameter gradients are
summed over ranks (:meth:`DistInfo.sum_gradients`) — one flat all-reduce per step, as NequIP's
SimpleDDPStrategy does — so N processes reproduce one process with the same global batch, also for
force losses (double backward), which ``DistributedDataParallel`` hooks do not support. Rank 0
writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.distributed as dist

from mlpot.errors import ConfigError

__all__ = ["DistInfo", "init_distributed", "shard_indices", "copy_flat"]


@dataclass
class DistInfo:
    """Rank, world size and device of this process (world_size 1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks (a new detached tensor; identity when not distributed)."""
        out = tensor.detach().clone()
        if self.enabled:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over ranks (one flat all-reduce)."""
        if not self.enabled:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        copy_flat(flat, [p.grad for p in params])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        """Wait for every rank, then leave the process group.

        Without this, a rank that exits while another still holds its gloo connection can abort
        with "terminate called without an active exception".
        """
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def copy_flat(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy the concatenation ``flat`` (sum of numels,) back into ``tensors``, in order."""
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single process.

    The device is the local GPU when CUDA is available, else the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, device)


def shard_indices(indices: List[int], info: DistInfo) -> List[int]:
    """This rank's frames of a global batch (round robin); every rank must get at least one."""
    if len(indices) < info.world_size:
        raise ConfigError(
            f"a global batch of {len(indices)} frames cannot be split over {info.world_size} processes; "
            "raise batch_size", key="data.train.batch_size")
    return indices[info.rank::info.world_size]
