"""A small explicit name -> object registry (descriptors, fittings, activations, losses, ...).

``register(name, obj, aliases=())`` rejects duplicates; ``get(name)`` on an unknown name raises a
``ConfigError`` that lists the valid names and suggests the closest one. Names are matched
case-insensitively; the canonical spelling is the first name registered.
"""

from __future__ import annotations

from typing import Dict, Generic, Iterable, Iterator, List, Optional, TypeVar

from mlpot.errors import ConfigError, KeyPath, suggest

T = TypeVar("T")

__all__ = ["Registry", "check_option_names"]


class Registry(Generic[T]):
    """Name -> object mapping with aliases.

    ``kind`` names what is registered (e.g. "descriptor") and appears in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._objects: Dict[str, T] = {}
        self._canonical: Dict[str, str] = {}  # lower-case name or alias -> canonical name
        self._spelling: Dict[str, str] = {}  # lower-case name or alias -> as registered

    def register(self, name: str, obj: T, aliases: Iterable[str] = ()) -> T:
        """Register ``obj`` under ``name`` and ``aliases``; a name already taken raises ValueError."""
        for key in (name, *aliases):
            if key.lower() in self._canonical:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._objects[name] = obj
        for key in (name, *aliases):
            self._canonical[key.lower()] = name
            self._spelling[key.lower()] = key
        return obj

    def canonical(self, name: str, *, key: KeyPath = None, file: Optional[str] = None) -> str:
        """Canonical name of ``name`` (resolving aliases); unknown -> ConfigError with a suggestion."""
        try:
            return self._canonical[str(name).lower()]
        except KeyError:
            pass
        valid = sorted(self._spelling.values())
        hint = suggest(str(name).lower(), sorted(self._canonical))
        message = f"unknown {self.kind} {name!r}; valid: {', '.join(valid)}"
        hint = self._spelling.get(hint, hint)
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


def check_option_names(options: Iterable[str], valid: Iterable[str], what: str, *, key: KeyPath = None,
                       file: Optional[str] = None) -> None:
    """ConfigError "unknown option of <what>; valid: ..." (with the closest valid name) for the first
    of ``options`` that is not in ``valid``; ``key`` is the path of the section holding them."""
    valid = sorted(valid)
    for option in options:
        if option not in valid:
            hint = suggest(str(option), valid)
            path = list(key) if isinstance(key, (list, tuple)) else ([key] if key else [])
            raise ConfigError(f"unknown option of {what}; valid: {', '.join(valid)}", file=file,
                              key=path + [option] if path else option, hint=f"did you mean {hint!r}?" if hint else None)
