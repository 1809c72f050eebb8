"""DeePMD-kit input key checks: every key of a section against its key table (``_deepmd_keys``).

Keys starting with ``_comment`` are dropped at any depth; an unknown key is a ConfigError naming the
file and key path with the closest valid key; a key of a feature not built yet is
"not supported yet: <key path>" unless its value is DeePMD's default (which requests nothing);
ignored keys are dropped; aliases are renamed to their canonical names. Sections whose keys depend
on a ``type`` (descriptor, fitting_net, loss, learning_rate) go through :func:`check_typed`.
"""

from __future__ import annotations

import typing
from typing import Any, Dict, List, Optional, Union

from mlpot.config import _deepmd_keys as table
from mlpot.config._deepmd_keys import IGNORED, UNSUPPORTED, DeepmdKey
from mlpot.errors import ConfigError, suggest

__all__ = ["check_section", "check_typed", "require_built", "check_descriptor", "check_kind", "slash"]


def slash(path: List[Union[str, int]]) -> str:
    return "/".join(str(p) for p in path)


def check_section(
    section: Any, keys: Dict[str, DeepmdKey], path: List[Union[str, int]], file: Optional[str]
) -> Dict[str, Any]:
    """Validate one mapping against its key table; return it with comments dropped and aliases renamed."""
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", file=file, key=path)
    alias_of = {alias: name for name, record in keys.items() for alias in record.aliases}
    out: Dict[str, Any] = {}
    for key, value in section.items():
        if str(key).startswith("_comment"):
            continue
        name = alias_of.get(key, key)
        if name not in keys:
            hint = suggest(key, list(keys) + list(alias_of))
            raise ConfigError(
                "unknown key", file=file, key=path + [key], hint=f"did you mean '{hint}'?" if hint else None
            )
        if name in out:
            raise ConfigError(f"given twice (as '{name}' and an alias)", file=file, key=path + [key])
        record = keys[name]
        if record.status == UNSUPPORTED and not record.requests_nothing(value):
            detail = f" ({record.note})" if record.note else ""
            raise ConfigError(f"not supported yet: {slash(path + [name])}{detail}", file=file, key=path + [key])
        if record.status == IGNORED:
            continue
        check_kind(value, record.annotation, path + [key], file)
        out[name] = value
    return out


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false"}


def check_kind(value: Any, kind: Any, path: List[Union[str, int]], file: Optional[str]) -> None:
    """ConfigError at ``path`` when ``value`` is not of the key's ``kind`` (int, float, bool, or
    Optional of one; ``Any`` accepts everything). An int is a number; a whole float is an integer;
    a bool is neither (``"numb_steps": true`` is a mistake, not 1)."""
    optional = typing.get_origin(kind) is Union and type(None) in typing.get_args(kind)
    base = next((a for a in typing.get_args(kind) if a is not type(None)), None) if optional else kind
    if base not in _KIND_NAMES or (optional and value is None):
        return
    if base is bool:
        ok = isinstance(value, bool)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        ok = False
    else:
        ok = base is float or isinstance(value, int) or float(value).is_integer()
    if not ok:
        raise ConfigError(f"expected {_KIND_NAMES[base]}{' or null' if optional else ''}, got {value!r}",
                          file=file, key=path)


def check_typed(section: Any, tables: Dict[str, Dict[str, DeepmdKey]], unbuilt, default_type, aliases, path, file):
    """Check a section whose key table depends on its ``type`` (descriptor, fitting, loss...)."""
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", file=file, key=path)
    kind = section.get("type", default_type)
    if kind is None:
        raise ConfigError("missing required key 'type'", file=file, key=path)
    if not isinstance(kind, str):
        raise ConfigError(f"expected a type name, got {kind!r}", file=file, key=path + ["type"])
    kind = aliases.get(kind, kind)
    if kind in unbuilt:
        raise ConfigError(f"not supported yet: {slash(path + ['type'])}={kind}", file=file, key=path + ["type"])
    if kind not in tables:
        hint = suggest(kind, list(tables) + list(aliases))
        raise ConfigError(
            f"unknown type '{kind}' (valid: {', '.join(tables)})",
            file=file, key=path + ["type"], hint=f"did you mean '{hint}'?" if hint else None,
        )
    out = check_section(section, tables[kind], path, file)
    out["type"] = kind
    return out


def require_built(kind: str, registry, path, file) -> None:
    """A type known to DeePMD and to the key table but not (yet) registered by the models layer."""
    if kind not in registry:
        raise ConfigError(f"not supported yet: {slash(path + ['type'])}={kind}", file=file, key=path + ["type"])


def check_descriptor(section: Any, path, file) -> Dict[str, Any]:
    from mlpot.models.deepmd.descriptors import DESCRIPTORS

    if isinstance(section, dict) and section.get("type") == "dpa2":  # the older flat keys, nested
        try:
            section = table.nest_dpa2_section(section, slash(path))
        except ConfigError as error:
            raise ConfigError(error.message, file=file, key=path + [str(error.key).rsplit("/", 1)[-1]]) from None
    out = check_typed(section, table.DESCRIPTORS, table.UNBUILT_DESCRIPTORS, None, table.DESCRIPTOR_ALIASES, path, file)
    require_built(out["type"], DESCRIPTORS, path, file)
    if out["type"] == "dpa2":
        for block, keys in table.DPA2_TABLES.items():
            out[block] = check_section(out[block], keys, path + [block], file)
    if out["type"] == "hybrid":
        members = out.get("list")
        if not isinstance(members, list) or not members:
            raise ConfigError("hybrid needs a non-empty list of descriptors", file=file, key=path + ["list"])
        out["list"] = [check_descriptor(member, path + ["list", i], file) for i, member in enumerate(members)]
    return out


