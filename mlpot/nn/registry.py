"""A small explicit name -> object registry (descriptors, fittings, activations, losses, ...).

``register(name, obj, aliases=())`` rejects duplicates; ``get(name)`` on an unknown name raises a
``ConfigError`` that lists the valid names and suggests the closest one. Names are matched
case-insensitively; the canonical spelling is the first name registered.
"""

from __future__ import annotations

from typing import Dict, Generic, Iterable, Iterator, List, Optional, TypeVar

from mlpot.errors import ConfigError, KeyPath, suggest

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Name -> object mapping with aliases.

    ``kind`` names what is registered (e.g. "descriptor") and appears in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._objects: Dict[str, T] = {}
        self._canonical: Dict[str, str] = {}  # lower-case name or alias -> canonical name

    def register(self, name: str, obj: T, aliases: Iterable[str] = ()) -> T:
        """Register ``obj`` under ``name`` and ``aliases``; a name already taken raises ValueError."""
        for key in (name, *aliases):
            if key.lower() in self._canonical:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._objects[name] = obj
        for key in (name, *aliases):
            self._canonical[key.lower()] = name
        return obj

    def canonical(self, name: str, *, key: KeyPath = None, file: Optional[str] = None) -> str:
        """Canonical name of ``name`` (resolving aliases); unknown -> ConfigError with a suggestion."""
        try:
            return self._canonical[str(name).lower()]
        except KeyError:
            pass
        valid = sorted(self._canonical)
        hint = suggest(str(name).lower(), valid)
        message = f"unknown {self.kind} {name!r}; valid: {', '.join(valid)}"
        raise ConfigError(message, file=file, key=key, hint=f"did you mean {hint!r}?" if hint else None)

    def get(self, name: str, *, key: KeyPath = None, file: Optional[str] = None) -> T:
        """The object registered under ``name`` or one of its aliases."""
        return self._objects[self.canonical(name, key=key, file=file)]

    def names(self) -> List[str]:
        """Canonical names, in registration order."""
        return list(self._objects)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._canonical

    def __iter__(self) -> Iterator[str]:
        return iter(self._objects)

    def __len__(self) -> int:
        return len(self._objects)
