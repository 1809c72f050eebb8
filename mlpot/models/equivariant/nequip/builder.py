"""``build_nequip(section, dtype)``: a ``nequip`` model section (dict or validated) -> :class:`NequIPModel`.

Validation errors become ``ConfigError``s naming the key path under ``model`` (with a "did you
mean" hint for unknown keys); features NequIP has but mlpot does not build yet are
"not supported yet: model.<key>" errors. ``model_dtype`` in the section overrides ``dtype``;
``seed`` seeds the weight initialisation without touching the global RNG.
"""

from __future__ import annotations

from typing import Any, Dict, Union

import torch
from pydantic import ValidationError

from mlpot.errors import ConfigError, suggest
from mlpot.models.equivariant.nequip.model import NequIPModel
from mlpot.models.equivariant.nequip.section import NequIPModelSection

__all__ = ["build_nequip", "validate_nequip_section"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _config_error(exc: ValidationError, file=None, prefix: str = "model") -> ConfigError:
    errors = sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden", -len(e["loc"])))
    err = errors[0]
    loc = [prefix] + [p for p in err["loc"] if not (isinstance(p, str) and (p.startswith(("function-", "literal[")) or "[" in p))]
    if err["type"] == "extra_forbidden":
        hint = suggest(str(loc[-1]), NequIPModelSection.model_fields)
        return ConfigError("unknown key", file=file, key=loc, hint=f"did you mean {hint!r}?" if hint else None)
    if err["type"] == "missing":
        return ConfigError("missing required key", file=file, key=loc)
    message = err["msg"].removeprefix("Value error, ")
    return ConfigError(message, file=file, key=loc if len(loc) > 1 else prefix)


def validate_nequip_section(section: Union[Dict[str, Any], NequIPModelSection], file=None) -> NequIPModelSection:
    """The validated section; ConfigError (key path ``model.<key>``) for invalid or unsupported input."""
    if isinstance(section, NequIPModelSection):
        validated = section
    else:
        try:
            validated = NequIPModelSection.model_validate(dict(section))
        except ValidationError as exc:
            raise _config_error(exc, file) from None
    if validated.categorical_graph_field_embed is not None:
        raise ConfigError("not supported yet: model.categorical_graph_field_embed", file=file, key="model.categorical_graph_field_embed")
    return validated


def build_nequip(section: Union[Dict[str, Any], NequIPModelSection], dtype: torch.dtype = torch.float64, file=None) -> NequIPModel:
    """A NequIP GNN from its model section (see :class:`NequIPModelSection` for the keys)."""
    validated = validate_nequip_section(section, file)
    model_dtype = _DTYPES[validated.model_dtype] if validated.model_dtype else dtype
    if validated.seed is None:
        return NequIPModel(validated, model_dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(validated.seed)
        return NequIPModel(validated, model_dtype)
