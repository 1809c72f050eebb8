"""Exception hierarchy of mlpot.

Every user-facing error names *where* the problem is: the file, the frame and the key path.
The message format is ``<file>: <key path>: <what is wrong>`` so that a user can jump to it.

The file is attached once per entry point rather than at every raise: :func:`in_file` is a context
in which an error that names no file gets the entry point's file. A peer front-end that translates
keys (DeePMD ``learning_rate/start_lr`` -> native ``lr_schedule.start_lr``) records the translation
in a :class:`KeyMap`; handed to :func:`in_file`, it makes errors raised while validating or training
the converted config name the key as the user wrote it.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

KeyPath = Union[str, Sequence[Union[str, int]], None]

__all__ = [
    "MlpotError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "SCFNotConvergedError",
    "format_key_path",
    "suggest",
    "KeyMap",
    "in_file",
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
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        if self.key:
            where.append(self.key)
        text = ": ".join(where + [self.message]) if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def relocate(self, file: str, keys: Optional["KeyMap"] = None) -> None:
        """Name ``file`` when the error names no file; with ``keys``, an error about ``file`` whose key
        is a translated native key gets the user's key instead (see :func:`in_file`)."""
        if not self.file:
            self.file = str(file)
        if keys is not None and self.key and _same_file(self.file, file):
            self.key = keys.user_key(self.key) or self.key
        self.args = (self._text(),)


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


def _same_file(a: str, b: Union[str, os.PathLike]) -> bool:
    return os.path.abspath(str(a)) == os.path.abspath(str(b))


class KeyMap:
    """Native key paths -> the key paths a user wrote in a peer file, for the keys a front-end translates.

    ``add(native, user)`` records one translation (``"data.train.paths"`` ->
    ``"training/training_data/systems"``); :meth:`user_key` maps a native key by its longest recorded
    prefix and appends the rest in the user's spelling (``data.train.paths[0]`` ->
    ``training/training_data/systems[0]``), or drops the rest for an entry added with
    ``below=False`` (one user key stands for everything under the native one). Keys that were
    copied unchanged need no entry. ``separator``: the peer's spelling of key paths (DeePMD: "/");
    every other key of an error about the peer file is re-spelt with it.
    """

    def __init__(self, pairs: Optional[Dict[str, str]] = None, separator: Optional[str] = None):
        self._map: Dict[str, Tuple[str, bool]] = {}
        self.separator = separator
        for native, user in (pairs or {}).items():
            self.add(native, user)

    def add(self, native: KeyPath, user: str, below: bool = True) -> None:
        self._map[format_key_path(native)] = (user, below)

    def __len__(self) -> int:
        return len(self._map)

    def user_key(self, key: str) -> Optional[str]:
        """The user's key path of native ``key``, or None when ``key`` was not translated."""
        if key in self._map:
            return self._map[key][0]
        best = max((native for native in self._map
                    if key.startswith(native) and key[len(native):len(native) + 1] in (".", "[")),
                   key=len, default=None)
        if best is None:
            return key.replace(".", self.separator) if self.separator else None
        user, below = self._map[best]
        return user + key[len(best):].replace(".", "/") if below else user


@contextlib.contextmanager
def in_file(path: Union[str, os.PathLike], keys: Optional[KeyMap] = None) -> Iterator[None]:
    """A context in which every mlpot error that names no file names ``path`` (the file of the entry
    point: a config, a model), and, with ``keys``, errors about ``path`` name the user's key paths."""
    try:
        yield
    except _LocatedError as exc:
        exc.relocate(str(path), keys)
        raise
