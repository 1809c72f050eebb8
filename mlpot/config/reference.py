"""The reference of the native config, generated from its pydantic schema (``mlpot.training.schema``).

``python -m mlpot.config.reference > docs/config_reference.md`` writes it; a test checks that the
committed page equals :func:`config_reference`. Each section (a pydantic class) becomes one table
of its keys: type, default, accepted aliases, limits and the field's description, in the order the
schema declares them, starting from :class:`~mlpot.training.schema.NativeConfig` and following
every nested section. The model section is typed by its family and documented on the family pages.
"""

from __future__ import annotations

import typing
from typing import Any, List, Tuple

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mlpot.training.schema import NativeConfig

__all__ = ["config_reference"]

HEADER = """# Native config reference

Generated from `mlpot/training/schema.py` by `python -m mlpot.config.reference > docs/config_reference.md`
(a test checks that this page is up to date). The guide with examples is [config.md](config.md);
the `model` section is typed by its family: [DeePMD models](deepmd_models.md) and
[keys](deepmd_keys.md), [MACE](mace_models.md). Unknown keys are errors everywhere.
"""


def _type_name(annotation: Any) -> str:
    """A short readable name of a type annotation (``int``, ``list of str``, ``a | b``...)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Union:
        return " \\| ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (list, List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "defaults"
    return f"`{value!r}`" if value not in (None, {}, []) else {None: "null", "{}": "{}", "[]": "[]"}.get(
        repr(value) if value is not None else None, "null")


def _limits(field) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"),
                             ("max_length", "length ≤")):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _aliases(name: str, field) -> str:
    choices = getattr(field.validation_alias, "choices", None) or []
    return ", ".join(f"`{c}`" for c in choices if c != name)


def _nested(annotation: Any) -> List[type]:
    """The pydantic section classes inside an annotation (Optional, list, dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [cls for arg in typing.get_args(annotation) for cls in _nested(arg)]


def _sections(root: type) -> List[Tuple[List[str], type]]:
    """(paths, class) of every section reachable from ``root``, depth first, each class once with
    every path it appears at (``<name>`` stands for a mapping key, ``[]`` for a list item)."""
    paths: dict = {}

    def visit(path: str, cls: type) -> None:
        known = cls in paths
        paths.setdefault(cls, []).append(path)
        if known:
            return
        for name, field in cls.model_fields.items():
            origin = typing.get_origin(field.annotation)
            inner = [a for a in typing.get_args(field.annotation) if a is not type(None)]
            suffix = "[]" if origin in (list, List) or any(typing.get_origin(a) in (list, List) for a in inner) else ""
            if origin is dict or any(typing.get_origin(a) is dict for a in inner):
                suffix = ".<name>"
            for nested in _nested(field.annotation):
                visit((f"{path}.{name}" if path else name) + suffix, nested)

    visit("", root)
    return [(found, cls) for cls, found in paths.items()]


def _table(cls: type) -> List[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        extra = "; ".join(part for part in (f"limits {_limits(field)}" if _limits(field) else "",
                                             f"alias {_aliases(name, field)}" if _aliases(name, field) else "") if part)
        if extra:
            meaning = f"{meaning} ({extra})" if meaning else extra
        if name == "model":
            meaning = "the model section, typed by its family (see the family pages)"
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
    return rows


def config_reference() -> str:
    """The markdown of docs/config_reference.md."""
    lines = [HEADER]
    for paths, cls in _sections(NativeConfig):
        title = "top level" if paths == [""] else ", ".join(f"`{path}`" for path in paths)
        lines.append(f"## {title}")
        lines.append(f'<a id="{cls.__name__.lower()}"></a>{cls.__name__}' + (
            f": {' '.join(cls.__doc__.split())}" if cls.__doc__ and cls is not NativeConfig else ""))
        lines.append("")
        lines.extend(_table(cls))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover - regenerates docs/config_reference.md
    print(config_reference(), end="")
