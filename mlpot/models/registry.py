"""``build_model(model_config)``: a model section -> AtomisticModel, through the registry of model types.

Model types register in ``MODELS`` explicitly, in one place (:func:`_register_model_types`): the
DeePMD family's ``standard`` (descriptor + fitting, with the ``use_srtab`` table blend) and
``multi_task``, and the family-neutral ``pairtab``, ``linear_ener`` and ``frozen``. Unknown types are
ConfigErrors listing the valid names with a suggestion.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional

import torch

from mlpot.errors import ConfigError
from mlpot.models.base import AtomisticModel
from mlpot.nn import Registry

__all__ = ["MODELS", "build_model"]

MODELS: Registry[Callable[..., AtomisticModel]] = Registry("model type")


def _register_model_types() -> None:
    from mlpot.models.compose import build_frozen, build_linear_ener
    from mlpot.models.deepmd.builders import build_standard
    from mlpot.models.deepmd.multitask import build_multi_task
    from mlpot.models.pair import build_pairtab, with_short_range_table

    MODELS.register("standard", with_short_range_table(build_standard))  # use_srtab: mlpot.models.pair
    MODELS.register("pairtab", build_pairtab)
    MODELS.register("linear_ener", build_linear_ener)
    MODELS.register("frozen", build_frozen)
    MODELS.register("multi_task", build_multi_task)


_register_model_types()


def build_model(model_config: Dict[str, Any], dtype: Optional[torch.dtype] = None) -> AtomisticModel:
    """Build a model from a ``model`` section.

    ``dtype`` is the precision used where the section says "default" (float64 if None).
    ``model.config`` keeps a deep copy of the section, so ``build_model(model.config)`` rebuilds it.
    """
    if not isinstance(model_config, dict):
        raise ConfigError(f"expected a mapping, got {type(model_config).__name__}", key="model")
    config = copy.deepcopy(model_config)
    builder = MODELS.get(config.get("type", "standard"), key="model/type")
    model = builder(config, dtype or torch.float64)
    model.config = config
    return model
