"""Typed model sections: each section is described once, by a table of keys, and validated by pydantic.

A model section (a DeePMD descriptor or fitting net, a DeePMD model type, a NequIP or MACE model...)
is a table ``{name: Key}``; each :class:`Key` holds the default (or ``REQUIRED``), the accepted
aliases, a status and a note:

* ``supported``: read and honoured;
* ``ignored``: accepted with no effect (the note says why; never a key that changes the result);
* ``not supported yet``: the feature is not built; any value other than the neutral one (the
  ``default``, which requests nothing) is an error "not supported yet: <key path>".

:func:`section_model` turns a table into a pydantic class (``extra="forbid"``); keys starting with
``_comment`` are dropped at every depth, as DeePMD-kit does. The same table serves the builders
(:func:`read_section`: the values with defaults filled), the typed ``model`` section of the native
config, the peer front-ends' key checks and the generated key documentation, so keys and defaults
are listed once. :func:`located_error` turns a pydantic ``ValidationError`` into a
:class:`~mlpot.errors.ConfigError` naming the key path and, for an unknown key, the closest valid
one ("did you mean 'rcut'?").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Type

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from mlpot.errors import ConfigError, KeyPath, suggest

__all__ = ["SUPPORTED", "IGNORED", "UNSUPPORTED", "REQUIRED", "Key", "key", "unsupported", "ignored", "Section",
           "section_model", "read_section", "located_error", "slash_path"]

SUPPORTED = "supported"
IGNORED = "ignored"
UNSUPPORTED = "not supported yet"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Key:
    """One key of a section: default (or REQUIRED), aliases, status, note for the docs, type."""

    default: Any = REQUIRED
    aliases: Tuple[str, ...] = ()
    status: str = SUPPORTED
    note: str = ""
    annotation: Any = Any

    def requests_nothing(self, value: Any) -> bool:
        """True when ``value`` of a not-built key asks for nothing (its neutral value)."""
        if value == self.default:
            return True
        return self.default is None and value in (None, False, [], 0, {})


def key(default: Any = REQUIRED, *aliases: str, note: str = "", annotation: Any = Any) -> Key:
    """A supported key."""
    return Key(default, tuple(aliases), SUPPORTED, note, annotation)


def unsupported(neutral: Any = None, *aliases: str, note: str = "") -> Key:
    """A key of a feature not built yet; ``neutral`` (DeePMD's default) requests nothing."""
    return Key(neutral, tuple(aliases), UNSUPPORTED, note)


def ignored(*aliases: str, note: str = "") -> Key:
    """A key accepted with no effect (the note says why)."""
    return Key(None, tuple(aliases), IGNORED, note)


def slash_path(path: Sequence[Any]) -> str:
    """``("model", "descriptor", "sel")`` -> ``model/descriptor/sel`` (DeePMD's spelling of key paths)."""
    return "/".join(str(p) for p in path if p != "")


class Section(BaseModel):
    """Base of every typed section: the key table in ``keys``; comments dropped, unknown keys named
    with a suggestion, keys of features not built refused unless neutral, ignored keys dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)
    section_keys: ClassVar[Dict[str, Key]] = {}  # the key table (set on each generated class)

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise PydanticCustomError("not_a_mapping", "expected a mapping, got {kind}", {"kind": type(data).__name__})
        table = cls.section_keys
        canonical = {name: name for name in table}
        canonical.update({alias: name for name, record in table.items() for alias in record.aliases})
        out, seen = {}, set()
        for name, value in data.items():
            if str(name).startswith("_comment"):
                continue
            if name not in canonical:
                hint = suggest(str(name), list(canonical))
                raise PydanticCustomError("unknown_key", "unknown key", {"key": name, "hint": hint})
            if canonical[name] in seen:
                raise PydanticCustomError("given_twice", "given twice (as '{canonical}' and an alias)",
                                          {"key": name, "canonical": canonical[name]})
            seen.add(canonical[name])
            record = table[canonical[name]]
            if record.status == UNSUPPORTED and not record.requests_nothing(value):
                raise PydanticCustomError("not_supported", "not supported yet", {"key": name})
            if record.status in (UNSUPPORTED, IGNORED):
                continue
            out[name] = value
        return out


_MODELS: Dict[int, Type[Section]] = {}


def section_model(name: str, table: Mapping[str, Key], base: Type[Section] = Section) -> Type[Section]:
    """The pydantic class of a key table (cached per table object)."""
    cached = _MODELS.get(id(table))
    if cached is not None and cached.section_keys is table:
        return cached
    fields: Dict[str, Any] = {}
    for field, record in table.items():
        if record.status != SUPPORTED:
            continue
        options: Dict[str, Any] = {"description": record.note or None}
        if record.aliases:
            options["validation_alias"] = AliasChoices(field, *record.aliases)
        if record.default is REQUIRED:
            spec = Field(..., **options)
        elif isinstance(record.default, (list, dict, set)):
            spec = Field(default_factory=lambda value=record.default: copy.deepcopy(value), **options)
        else:
            spec = Field(record.default, **options)
        fields[field] = (record.annotation, spec)
    model = create_model(name, __base__=base, **fields)
    model.section_keys = table
    _MODELS[id(table)] = model
    return model


def located_error(exc: ValidationError, *, file: Optional[str] = None, prefix: KeyPath = (),
                  slash: bool = False) -> ConfigError:
    """The most informative error of ``exc`` as a ConfigError at ``prefix`` + its location.

    Unknown keys come first (with "did you mean"), then keys of features not built, then the
    deepest location. pydantic's union tags (class names, literal tags) are dropped from the path.
    ``slash`` spells the key path DeePMD's way (``model/descriptor/sel``) instead of ``model.descriptor.sel``.
    """
    error = _located_error(exc, file, prefix)
    if slash and error.key:
        parts = [p for p in error.key.replace("[", ".[").split(".") if p]
        return ConfigError(error.message, file=file, key="/".join(p.strip("[]") for p in parts), hint=error.hint)
    return error


def _located_error(exc: ValidationError, file: Optional[str], prefix: KeyPath) -> ConfigError:
    errors = exc.errors()
    order = {"unknown_key": 0, "extra_forbidden": 0, "not_supported": 1}
    errors.sort(key=lambda e: (order.get(e["type"], 2), -len(e["loc"])))
    err = errors[0]
    prefix = [prefix] if isinstance(prefix, str) else list(prefix or ())
    loc = prefix + [p for p in err["loc"] if not _is_tag(p)]
    ctx = err.get("ctx") or {}
    if err["type"] == "unknown_key":
        hint = ctx.get("hint")
        return ConfigError("unknown key", file=file, key=loc + [ctx["key"]], hint=f"did you mean {hint!r}?" if hint else None)
    if err["type"] == "extra_forbidden":
        return ConfigError("unknown key", file=file, key=loc)
    if err["type"] == "given_twice":
        return ConfigError(err["msg"], file=file, key=loc + [ctx["key"]])
    if err["type"] == "not_supported":
        return ConfigError(f"not supported yet: {slash_path(loc + [ctx['key']])}", file=file, key=loc + [ctx["key"]])
    if err["type"] == "missing":
        return ConfigError("missing required key", file=file, key=loc)
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("value_error", "assertion_error") and not isinstance(err["input"], dict):
        message += f", got {err['input']!r}"
    return ConfigError(message, file=file, key=loc or None)


def _is_tag(part: Any) -> bool:
    """pydantic inserts union member tags into error locations: class names, 'function-after[...]'..."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in ("union", "function-after",
                                                                                    "function-before", "int", "float",
                                                                                    "str", "bool", "list", "dict"))


def read_section(section: Mapping[str, Any], path: KeyPath, table: Mapping[str, Key], name: str = "Section",
                 file: Optional[str] = None) -> Dict[str, Any]:
    """The values of ``section`` with the defaults of ``table`` filled in (canonical key names);
    a ConfigError at ``path`` + key for anything wrong (module docstring)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", file=file, key=path)
    try:
        validated = section_model(name, table).model_validate(dict(section))
    except ValidationError as exc:
        raise located_error(exc, file=file, prefix=_path_parts(path), slash=isinstance(path, str)) from None
    return {field: getattr(validated, field) for field in validated.__class__.model_fields}


def _path_parts(path: KeyPath) -> list:
    if path is None:
        return []
    if isinstance(path, str):
        return [p for p in path.replace(".", "/").split("/") if p]
    return list(path)
