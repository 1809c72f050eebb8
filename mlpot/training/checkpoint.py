"""Training checkpoints: atomic writes, DeePMD-style naming, keep-last-N, safe loading.

A checkpoint is a ``torch.save`` dict with ``format`` = :data:`CHECKPOINT_FORMAT` holding the model
config and weights, optimizer, schedulers, EMA, RNG states (torch, numpy, python), sampler
positions and the step. Files are ``<prefix>-<step>.pt`` (DeePMD: ``model.ckpt-<step>.pt``), a
symlink ``<prefix>.pt`` points to the newest and a text file ``checkpoint`` holds its name
(specs/deepmd.md §5.4).

Every file is written to a temporary file in the same folder, flushed and fsync'ed, then moved
over the target with ``os.replace`` (atomic on POSIX), so a crash mid-write never damages an
existing good checkpoint. A truncated or foreign file raises :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import io
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from mlpot.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "atomic_write_bytes", "save_checkpoint", "load_checkpoint", "CheckpointManager",
           "rng_state", "set_rng_state", "trainer_state", "restore_trainer_state"]

CHECKPOINT_FORMAT = "mlpot-checkpoint-1"
PathLike = Union[str, os.PathLike]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Serialise ``state`` (adds ``format``) and write it atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a pointer symlink is followed).

    Raises CheckpointError naming the file when it is missing, truncated, corrupt or not ours.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError("no such checkpoint file", file=str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # zip/pickle/EOF errors of a truncated or corrupt file
        raise CheckpointError(f"cannot read checkpoint (truncated or corrupt file: {type(exc).__name__})",
                              file=str(path)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not an mlpot training checkpoint (expected format {CHECKPOINT_FORMAT!r})",
                              file=str(path))
    return state


class CheckpointManager:
    """``<dir>/<prefix>-<step>.pt`` files, a ``<prefix>.pt`` symlink to the newest, ``checkpoint``
    text pointer, and pruning to the newest ``keep`` files."""

    def __init__(self, directory: PathLike, prefix: str = "model.ckpt", keep: int = 5):
        self.directory = Path(directory)
        self.prefix = prefix
        self.keep = int(keep)
        self._pattern = re.compile(re.escape(prefix) + r"-(\d+)\.pt$")

    def path_for(self, step: int) -> Path:
        return self.directory / f"{self.prefix}-{int(step)}.pt"

    def existing(self) -> List[Path]:
        """Numbered checkpoint files, oldest first."""
        if not self.directory.exists():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := self._pattern.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, step: int, state: Dict[str, Any]) -> Path:
        """Write the checkpoint of ``step`` (number of completed steps), repoint, prune."""
        path = self.path_for(step)
        save_checkpoint(path, state)
        link = self.directory / f"{self.prefix}.pt"
        tmp_link = self.directory / f".{self.prefix}.pt.tmp-link"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(path.name, tmp_link)
        os.replace(tmp_link, link)
        atomic_write_bytes(self.directory / "checkpoint", (path.name + "\n").encode())
        for old in self.existing()[: -self.keep]:
            old.unlink()
        return path

    def latest(self) -> Optional[Path]:
        """Newest numbered checkpoint, or None."""
        files = self.existing()
        return files[-1] if files else None


# ---- the state of a training run -------------------------------------------------------------
def rng_state() -> dict:
    """The torch, numpy and python random states (restored by :func:`set_rng_state`)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def trainer_state(trainer) -> Dict[str, Any]:
    """Everything an exact resume needs (module docstring): model config and weights (and the EMA
    weights), optimizer, scheduler, EMA, RNG states, sampler positions, step, epoch, the config."""
    samplers = {name: {"train": data.train_sampler.state_dict(),
                       "valid": data.valid_sampler.state_dict() if data.valid_sampler is not None else None}
                for name, data in trainer.task_data.items()}
    if trainer.multi_task:
        sampler_state = {"task_samplers": samplers, "task_sampler": trainer.task_sampler.state_dict()}
    else:  # single-task files keep DeePMD-like top-level keys
        sampler_state = {"train_sampler": samplers[""]["train"], "valid_sampler": samplers[""]["valid"]}
    ema_weights = None
    if trainer.ema is not None:
        # through the model (not by shadow names): a module shared by heads appears under every head's
        # names in state_dict but only once among the averaged parameters
        with trainer.ema.applied(trainer.model):
            ema_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return {**sampler_state,
            "model_config": trainer.model.config, "dtype": trainer.config.dtype,
            "model_state_dict": trainer.model.state_dict(), "ema_state_dict": ema_weights,
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "ema": trainer.ema.state_dict() if trainer.ema else None,
            "rng": rng_state(), "step": trainer.step, "epoch": trainer.epoch, "nonfinite": trainer.nonfinite,
            "full_validation": trainer.full_validation.state_dict(),
            "early_stopping": trainer.early_stopping.state_dict(),
            "config": trainer.config.model_dump(mode="json")}


def restore_trainer_state(trainer, state: Dict[str, Any], path: PathLike) -> None:
    """Put a :func:`trainer_state` back into ``trainer``; CheckpointError when it does not fit."""
    try:
        trainer.model.load_state_dict(state["model_state_dict"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
        if trainer.ema is not None and state.get("ema") is not None:
            trainer.ema.load_state_dict(state["ema"])
        samplers = state["task_samplers"] if trainer.multi_task else \
            {"": {"train": state["train_sampler"], "valid": state.get("valid_sampler")}}
        for name, positions in samplers.items():
            data = trainer.task_data[name]
            data.train_sampler.load_state_dict(positions["train"])
            if data.valid_sampler is not None and positions.get("valid") is not None:
                data.valid_sampler.load_state_dict(positions["valid"])
        if trainer.task_sampler is not None:
            trainer.task_sampler.load_state_dict(state["task_sampler"])
        trainer.step, trainer.epoch, trainer.nonfinite = int(state["step"]), int(state["epoch"]), int(state["nonfinite"])
        trainer.early_stopping.load_state_dict(state.get("early_stopping"))
        set_rng_state(state["rng"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not fit this config: {exc}", file=str(path)) from None
