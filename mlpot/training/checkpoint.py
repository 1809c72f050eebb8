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
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from mlpot.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "atomic_write_bytes", "save_checkpoint", "load_checkpoint", "CheckpointManager"]

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
