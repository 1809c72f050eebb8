"""Exception hierarchy of mlpot.

Every user-facing error names *where* the problem is: the file, the frame and the key path.
The message format is ``<file>: <key path>: <what is wrong>`` so that a user can jump to it.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional, Sequence, Union

KeyPath = Union[str, Sequence[Union[str, int]], None]

__all__ = [
    "MlpotError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "SCFNotConvergedError",
    "format_key_path",
    "suggest",
]


def format_key_path(key: KeyPath) -> str:
    """Render a key path such as ``("model", "descriptor", 0, "sel")`` as ``model.descriptor[0].sel``."""
    if key is None:
        return ""
    if isinstance(key, str):
        return key
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def suggest(name: str, valid: Iterable[str]) -> Optional[str]:
    """Closest valid name to ``name`` (for 'did you mean' hints), or None."""
    matches = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


class MlpotError(Exception):
    """Base class of every error raised deliberately by mlpot."""


class _LocatedError(MlpotError):
    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        key: KeyPath = None,
        frame: Optional[int] = None,
        hint: Optional[str] = None,
    ):
        self.file = None if file is None else str(file)
        self.key = format_key_path(key)
        self.frame = frame
        self.hint = hint
        self.message = message
        where = []
        if self.file:
            where.append(self.file)
        if frame is not None:
            where.append(f"frame {frame}")
        if self.key:
            where.append(self.key)
        text = ": ".join(where + [message]) if where else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class ConfigError(_LocatedError, ValueError):
    """A configuration file or argument is invalid. Carries ``file`` and ``key`` (key path)."""


class DataError(_LocatedError, ValueError):
    """A data file is malformed or inconsistent. Carries ``file``, ``frame`` and ``key``."""


class CheckpointError(_LocatedError, ValueError):
    """A checkpoint or frozen model cannot be read (truncated, foreign, incompatible)."""


class SCFNotConvergedError(MlpotError, RuntimeError):
    """A self-consistent iteration did not converge.

    Attributes: ``iterations`` (int) and ``residual`` (float, in the solver's unit).
    """

    def __init__(self, iterations: int, residual: float, message: str = ""):
        self.iterations = int(iterations)
        self.residual = float(residual)
        super().__init__(
            message or f"SCF did not converge after {self.iterations} iterations (residual {self.residual:.3e})"
        )
