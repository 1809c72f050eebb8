"""Checking DeePMD-style model-section keys: defaults, unknown keys, features not built yet.

Every model component reads its section through ``read_section``: ``_comment*`` keys are ignored;
an unknown key is a ConfigError naming the key path and suggesting the closest valid key; a known
key whose feature is not implemented gives "not supported yet: <path>" unless it holds its
neutral value. Nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch

from mlpot.data.statistics import auto_sel
from mlpot.errors import ConfigError, suggest

__all__ = ["read_section", "resolve_precision", "resolve_sel", "key_path"]

_MISSING = object()
REQUIRED = object()


def key_path(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def read_section(
    section: Mapping[str, Any],
    path: str,
    defaults: Mapping[str, Any],
    *,
    aliases: Optional[Mapping[str, str]] = None,
    unsupported: Optional[Mapping[str, Any]] = None,
    ignore: Iterable[str] = ("type",),
) -> Dict[str, Any]:
    """Values of ``section`` merged over ``defaults`` (value ``REQUIRED`` = must be given).

    ``aliases`` maps alternative spellings to canonical keys; ``unsupported`` maps a known key to
    its neutral value: any other value raises "not supported yet".
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", key=path)
    aliases = dict(aliases or {})
    unsupported = dict(unsupported or {})
    ignore = set(ignore)
    valid = set(defaults) | set(aliases) | set(unsupported) | ignore
    out = {k: v for k, v in defaults.items()}
    for key, value in section.items():
        if str(key).startswith("_comment") or key in ignore:
            continue
        canonical = aliases.get(key, key)
        if canonical in unsupported:
            neutral = unsupported[canonical]
            if value != neutral and not (neutral is None and value in (None, False, [], 0)):
                raise ConfigError(f"not supported yet: {key_path(path, key)}", key=key_path(path, key))
            continue
        if canonical not in defaults:
            hint = suggest(key, valid)
            raise ConfigError(
                "unknown key", key=key_path(path, key), hint=f"did you mean {hint!r}?" if hint else None
            )
        out[canonical] = value
    for key, value in out.items():
        if value is REQUIRED:
            raise ConfigError("required key is missing", key=key_path(path, key))
    return out


_PRECISIONS = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_precision(name: str, default: torch.dtype, path: str) -> torch.dtype:
    """DeePMD ``precision`` ("default", "float64", "float32", ...) -> torch dtype."""
    if name in (None, "default"):
        return default
    if name not in _PRECISIONS:
        hint = suggest(str(name), list(_PRECISIONS) + ["default"])
        raise ConfigError(f"unknown precision {name!r}", key=key_path(path, "precision"), hint=f"did you mean {hint!r}?" if hint else None)
    return _PRECISIONS[name]


def resolve_sel(sel: Any, n_types: int, path: str, max_neighbors: Optional[Sequence[int]] = None) -> List[int]:
    """``sel`` as a list of ints per type.

    Accepts a list, an int (the same for every type), or "auto" / "auto:f" which needs
    ``max_neighbors`` (per type, from data): ceil(max * f) rounded up to a multiple of 4 [COMPAT].
    """
    if isinstance(sel, str):
        if not sel.startswith("auto"):
            raise ConfigError(f"expected a list of ints, an int or 'auto[:factor]', got {sel!r}", key=key_path(path, "sel"))
        factor = float(sel.split(":", 1)[1]) if ":" in sel else 1.1
        if max_neighbors is None:
            raise ConfigError(
                "sel 'auto' needs neighbour statistics from the training data; resolve it with "
                "mlpot.models.deepmd.builders.resolve_auto_sel(model_config, max_neighbors) before build_model",
                key=key_path(path, "sel"),
            )
        return auto_sel(max_neighbors, factor)
    if isinstance(sel, int) and not isinstance(sel, bool):
        return [sel] * n_types
    if isinstance(sel, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sel):
        if len(sel) != n_types:
            raise ConfigError(f"has {len(sel)} entries but type_map has {n_types} types", key=key_path(path, "sel"))
        return [int(s) for s in sel]
    raise ConfigError(f"expected a list of non-negative ints, an int or 'auto', got {sel!r}", key=key_path(path, "sel"))
