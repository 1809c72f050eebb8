"""OmegaConf-style interpolation of a YAML config, the subset NequIP configs use.

NequIP configs are Hydra/OmegaConf files: values may be ``${a.b.c}`` (another node, by absolute
dotted path; ``${.x}`` / ``${..x}`` relative to the node's parent), ``${resolver:arg,...}`` (a
registered function; arguments are YAML scalars, lists or interpolations themselves) or strings
with interpolations inside (string concatenation). A string that is exactly one interpolation
becomes the value itself (a list, a dict, a number). ``\\${`` escapes a literal ``${``.

``resolve(config, resolvers, keep=...)`` returns a resolved deep copy; ``keep`` names resolvers
whose interpolations stay as they are (NequIP's late-bound ``training_data_stats``). Unknown
resolvers, missing nodes and cycles are ConfigErrors naming the key path. Written here because
omegaconf is not a dependency of mlpot; only the grammar above is read.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import yaml

from mlpot.errors import ConfigError, suggest

__all__ = ["resolve", "parse_arguments"]

Path = Tuple[Any, ...]


def _find_close(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` at ``start`` (nested ``${...}`` and quotes respected)."""
    depth, index, quote = 0, start, None
    while index < len(text):
        char = text[index]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif text.startswith("${", index):
            depth += 1
            index += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise ValueError(f"unclosed interpolation in {text!r}")


def _split_top(text: str, separator: str = ",") -> List[str]:
    """Split at ``separator`` outside brackets, quotes and interpolations."""
    parts, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_arguments(text: str) -> List[str]:
    """The raw argument strings of a resolver call (``a, [1, 2], ${x}``)."""
    return [] if not text.strip() else _split_top(text)


class _Resolver:
    def __init__(self, root: Dict[str, Any], resolvers: Mapping[str, Callable], keep: Sequence[str]):
        self.root, self.resolvers, self.keep = root, dict(resolvers), tuple(keep)
        self.active: List[Path] = []

    def node(self, path: Path, where: Path) -> Any:
        value: Any = self.root
        for depth, part in enumerate(path):
            if isinstance(value, list) and str(part).lstrip("-").isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                options = list(value) if isinstance(value, dict) else []
                hint = suggest(str(part), [str(o) for o in options])
                raise ConfigError(f"interpolation ${{{'.'.join(map(str, path))}}}: no key {part!r} at "
                                  f"{'.'.join(map(str, path[:depth])) or 'the top level'}", key=_key(where),
                                  hint=f"did you mean {hint!r}?" if hint else None)
        if path in self.active:
            raise ConfigError(f"interpolation cycle through {'.'.join(map(str, path))}", key=_key(where))
        self.active.append(path)
        try:
            return self.value(copy.deepcopy(value), path)
        finally:
            self.active.pop()

    def target(self, expression: str, where: Path) -> Path:
        if expression.startswith("."):
            level = len(expression) - len(expression.lstrip("."))
            base = where[: len(where) - level]
            return base + tuple(p for p in expression[level:].split(".") if p)
        return tuple(p for p in expression.replace("[", ".").replace("]", "").split(".") if p)

    def expression(self, inner: str, where: Path) -> Any:
        """Value of the text between ``${`` and ``}``."""
        name, colon, rest = inner.partition(":")
        if colon and not name.strip().startswith(".") and all(c.isalnum() or c in "._" for c in name.strip()):
            name = name.strip()
            if name in self.keep:
                return "${" + inner + "}"
            if name not in self.resolvers:
                hint = suggest(name, list(self.resolvers))
                raise ConfigError(f"not supported yet: resolver {name!r} (supported: {sorted(self.resolvers)})",
                                  key=_key(where), hint=f"did you mean {hint!r}?" if hint else None)
            arguments = [self.argument(a, where) for a in parse_arguments(rest)]
            try:
                return self.resolvers[name](*arguments)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"${{{name}:...}}: {exc}", key=_key(where)) from None
        return self.node(self.target(inner.strip(), where), where)

    def argument(self, text: str, where: Path) -> Any:
        value = self.string(text, where)
        if isinstance(value, str):
            try:
                return yaml.safe_load(value) if value else value
            except yaml.YAMLError:
                return value
        return value

    def string(self, text: str, where: Path) -> Any:
        pieces: List[Any] = []
        index = 0
        while index < len(text):
            if text.startswith("\\${", index):
                pieces.append("${")
                index += 3
                continue
            if text.startswith("${", index):
                end = _find_close(text, index)
                pieces.append(self.expression(text[index + 2:end], where))
                index = end + 1
                continue
            pieces.append(text[index])
            index += 1
        if text.startswith("${") and _find_close(text, 0) == len(text) - 1:
            return pieces[0]  # exactly one interpolation: its value, whatever its type
        return "".join(str(p) for p in pieces)

    def value(self, value: Any, where: Path) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, where + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, where + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            try:
                return self.string(value, where)
            except ConfigError:  # already located (ConfigError is a ValueError)
                raise
            except ValueError as exc:
                raise ConfigError(str(exc), key=_key(where)) from None
        return value


def _key(path: Path) -> str:
    return ".".join(str(p) for p in path) or None


def resolve(config: Dict[str, Any], resolvers: Mapping[str, Callable], keep: Sequence[str] = ()) -> Dict[str, Any]:
    """A deep copy of ``config`` with every interpolation resolved (module docstring)."""
    return _Resolver(copy.deepcopy(config), resolvers, keep).value(copy.deepcopy(config), ())
