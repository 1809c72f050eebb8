"""Training checkpoints: atomic writes, DeePMD-style naming, keep-last-N, safe loading.

A checkpoint is a ``torch.save`` dict with ``format`` = :data:`CHECKPOINT_FORMAT` holding the model
config and weights, the model's training record (``mlpot.models.record``: min_nbor_dist,
hessian_mode), optimizer, schedulers, EMA, RNG states (torch, numpy, python), sampler
positions and the step. Files are ``<prefix>-<step>.pt`` (DeePMD: ``model.ckpt-<step>.pt``), a
symlink ``<prefix>.pt`` points to the newest and a text file ``checkpoint`` holds its name
(specs/deepmd.md §5.4).

Every file is written to a temporary file in the same folder, flushed and fsync'ed, then moved
over the target with ``os.replace`` (atomic on POSIX), so a crash mid-write never damages an
existing good checkpoint; a failed write (a full disk) is a :class:`CheckpointError` and leaves the
earlier files as they were. A truncated or foreign file raises :class:`CheckpointError` naming it.
A model whose weights or statistics hold NaN or infinity is never written (:func:`check_finite_model`).

Reading never runs code from a file (:func:`read_torch_file`): ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers only. Checkpoints therefore hold nothing else: RNG
states as lists and tensors, the lr scheduler without its schedule objects (rebuilt from the
config). Files of earlier mlpot versions additionally held a numpy array and the schedule classes;
those few names (``_legacy_globals``) are allowed and every other object is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch

from mlpot.errors import CheckpointError
from mlpot.models.record import training_record
from mlpot.training.zero import optimizer_state

__all__ = ["CHECKPOINT_FORMAT", "atomic_write_bytes", "save_checkpoint", "load_checkpoint", "read_torch_file",
           "check_finite_model", "CheckpointManager", "rng_state", "set_rng_state", "trainer_state",
           "restore_trainer_state"]

CHECKPOINT_FORMAT = "mlpot-checkpoint-1"
PathLike = Union[str, os.PathLike]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + fsync + os.replace).

    A failed write (no space left, a read-only folder) is a CheckpointError naming ``path``; the
    temporary file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise CheckpointError(f"cannot write: {exc.strerror or exc}; an earlier file of this name is kept "
                              "unchanged", file=str(path)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def check_finite_model(payload: Mapping[str, Any], path: PathLike, outcome: str = "not written") -> None:
    """CheckpointError when a model state in ``payload`` (``model_state_dict``, ``ema_state_dict``,
    a frozen file's ``state_dict``) holds NaN or infinity: such a model is never written (nor used,
    with ``outcome`` "not loaded")."""
    for part in ("model_state_dict", "ema_state_dict", "state_dict"):
        state = payload.get(part)
        if not isinstance(state, Mapping):
            continue
        for name, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{outcome}: the model holds non-finite values (NaN or inf) in {name!r} "
                                      "(diverged training or bad data statistics)", file=str(path))


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Serialise ``state`` (adds ``format``) and write it atomically to ``path``; a model with
    non-finite weights or statistics is refused (:func:`check_finite_model`)."""
    check_finite_model(state, path)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _legacy_globals() -> list:
    """The classes that checkpoints of earlier mlpot versions hold: the numpy RNG state array and the
    lr schedule objects of LambdaLR's state. Plain data classes: creating them runs no code of the file."""
    from mlpot.training import schedules
    from mlpot.training.optim import ScheduleFactor

    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), ScheduleFactor,
            schedules.ExponentialDecay, schedules.StepDecay, schedules.CosineDecay, schedules.WarmupStableDecay,
            schedules.ConstantLR]



def read_torch_file(path: PathLike) -> Any:
    """The content of a ``torch.save`` file, read without running code from it (module docstring).

    CheckpointError naming the file when it is missing, a directory, truncated or corrupt, or holds
    a Python object other than tensors and plain data (refused, never created).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError("a directory, not a model file", file=str(path))
    if not path.exists():
        raise CheckpointError("no such file", file=str(path))
    try:
        with torch.serialization.safe_globals(_legacy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses a global (a class, a function such as os.system) or a call of one
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found or "reduce" in str(exc).lower():
            name = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"refused: the file holds a Python object{name} that loading would have to run "
                                  "code for; mlpot reads only tensors and plain data from model files",
                                  file=str(path)) from None
        raise CheckpointError(f"cannot read checkpoint (truncated or corrupt file: {type(exc).__name__})",
                              file=str(path)) from None
    except Exception as exc:  # zip/EOF errors of a truncated or corrupt file
        raise CheckpointError(f"cannot read checkpoint (truncated or corrupt file: {type(exc).__name__})",
                              file=str(path)) from None


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a pointer symlink is followed).

    Raises CheckpointError naming the file when it is missing, truncated, corrupt, not ours, or
    holds objects whose loading would run code.
    """
    path = Path(path)
    if not path.exists() and not path.is_dir():
        raise CheckpointError("no such checkpoint file", file=str(path))
    state = read_torch_file(path)
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
        try:
            if tmp_link.is_symlink() or tmp_link.exists():
                tmp_link.unlink()
            os.symlink(path.name, tmp_link)
            os.replace(tmp_link, link)
        except OSError as exc:
            raise CheckpointError(f"cannot point {link.name} to the new checkpoint: {exc.strerror or exc}",
                                  file=str(path)) from None
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
    """The torch, numpy and python random states (restored by :func:`set_rng_state`), as tensors and
    plain lists, so that a checkpoint loads with ``weights_only``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)], "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))


def _scheduler_state(scheduler) -> dict:
    """The lr scheduler's state without LambdaLR's schedule objects (rebuilt from the config; a
    checkpoint holds tensors and plain data only). ``None`` entries are skipped by load_state_dict."""
    state = scheduler.state_dict()
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state


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
            "training_record": training_record(trainer.model),
            "optimizer": optimizer_state(trainer.optimizer), "scheduler": _scheduler_state(trainer.scheduler),
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
