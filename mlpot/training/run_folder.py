"""The output folder of a training run: one run at a time, no run's results silently replaced.

:func:`claim_output_folder` is called by ``mlpot train`` before anything is read or written:

* the folder (and the checkpoint folder) is created and must be writable: a read-only or full
  folder is an error at the start, not at the first checkpoint;
* a lock file ``.mlpot.lock`` holds the PID of the run; while that run lives a second run in the
  folder fails at once naming it. The lock is an ``fcntl.flock`` on the file, which the kernel drops
  when its process dies, so a lock left by a killed run (a dead PID) is taken over;
* a folder holding another run's results (its checkpoints, learning curve, metrics, frozen model)
  is refused unless the run resumes (``--restart``) or overwrites on request (``--force``, which
  removes that run's numbered checkpoints, once the new run's set-up has succeeded, so that they are
  never mistaken for this run's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

from mlpot.errors import ConfigError
from mlpot.training.checkpoint import CheckpointManager
from mlpot.training.schema import NativeConfig

__all__ = ["LOCK_NAME", "claim_output_folder", "earlier_results", "ClaimedFolder", "FolderLock"]

LOCK_NAME = ".mlpot.lock"


class FolderLock:
    """An exclusive lock on ``folder`` (``.mlpot.lock`` holding ``pid host``), released by :meth:`release`."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        """Take the lock (ConfigError naming the holder's PID when another live run has it)."""
        for _ in range(3):  # a lock file unlinked by a finishing run between our open and flock: retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise ConfigError(f"the output folder is in use by another mlpot run ({self._holder()}); wait "
                                  "for it to finish or choose another output folder (--output-dir)",
                                  file=str(self.path.parent), key="output_dir") from None
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        else:
            raise ConfigError("cannot take the lock of the output folder (it keeps changing)",
                              file=str(self.path.parent), key="output_dir")
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as exc:
            self.release()
            raise ConfigError(f"the output folder cannot be written: {exc.strerror}", file=str(self.path.parent),
                              key="output_dir") from None
        return self

    def _holder(self) -> str:
        try:
            pid, _, host = self.path.read_text().strip().partition(" ")
        except OSError:
            return "PID unknown"
        return f"PID {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def earlier_results(out: Path, config: NativeConfig) -> List[Path]:
    """Files of an earlier run in ``out``: numbered checkpoints, learning curve, metrics, frozen models."""
    cp = config.checkpoint
    found = CheckpointManager(out / cp.dir, cp.prefix, cp.keep).existing()
    for name in (config.logging.lcurve, config.logging.metrics_csv, "model.pt"):
        if name and (out / name).is_file():
            found.append(out / name)
    found += sorted(out.glob("model_*.pt")) if out.is_dir() else []
    return found


def _writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:  # a byte written and flushed: a full disk fails too
            probe.write(b"\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            reason = "no space left on device"
        raise ConfigError(f"the {what} cannot be written: {reason}", file=str(folder), key="output_dir") from None


class ClaimedFolder:
    """The output folder of a run, locked (:func:`claim_output_folder`); ``earlier``: the earlier run's
    files that ``--force`` overwrites. :meth:`start` removes its checkpoints once the run's set-up has
    succeeded (a run that fails before its first step leaves them as they were)."""

    def __init__(self, path: Path, earlier: List[Path], prefix: str):
        self.path, self.earlier, self.prefix = path, earlier, prefix

    def start(self) -> None:
        for path in self.earlier:
            if path.name.startswith(self.prefix) and path.exists():
                path.unlink()  # would be pruned against / picked as 'latest' in place of this run's
        self.earlier = []


@contextlib.contextmanager
def claim_output_folder(config: NativeConfig, *, resuming: bool, force: bool, main: bool = True
                        ) -> Iterator[ClaimedFolder]:
    """Check and lock ``config.output_dir`` for one run (module docstring).

    resuming: the run continues a checkpoint (``--restart``); force: start over in a folder holding
    an earlier run's results (call ``start()`` on the yielded folder when the run begins). ``main``:
    False on the other ranks of a data-parallel run, which neither check nor lock (rank 0 does).
    """
    out = Path(config.output_dir)
    if not main:
        yield ClaimedFolder(out, [], config.checkpoint.prefix)
        return
    _writable(out, "output folder")
    _writable(out / config.checkpoint.dir, "checkpoint folder")
    lock = FolderLock(out).acquire()
    try:
        earlier = [] if resuming else earlier_results(out, config)
        if earlier and not force:
            names = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
            raise ConfigError(f"holds the results of an earlier run ({names}): resume it with --restart latest, "
                              "overwrite them with --force, or choose another output folder (--output-dir)",
                              file=str(out), key="output_dir")
        yield ClaimedFolder(out, earlier, config.checkpoint.prefix)
    finally:
        lock.release()
