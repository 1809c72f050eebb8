"""Model families and model types: what the engine knows about a model, through one registry.

A :class:`ModelFamily` names the model-section ``type`` values it builds and carries the hooks the
training engine calls without knowing the family:

* ``check_section(section)``: validate a model section (typed, key paths and suggestions in errors);
* ``build(section, dtype)``: the model;
* ``resolve_from_data(section, probes)``: a copy of the section with what depends on the training
  data filled in (DeePMD ``sel: "auto"``; average neighbour counts, E0s... for other families).
  ``probes``: task name ("" for single-task training) -> :class:`DataProbe`;
* ``prepare_finetune(config, pretrained, ...)``: adapt a config to a pretrained model (type maps,
  section check) and return its initial weights.

Hooks of the model itself (``mlpot.models.base.AtomisticModel``): ``compute_statistics`` (data
statistics: input normalisation, output bias), ``output_bias`` (the bias that change-by-statistic,
``change_bias_after_training`` and ``mlpot change-bias`` refit), ``input_keys``.

Families register explicitly, in one place (:func:`_register_families`); ``MODELS`` maps every
model type to its builder for ``build_model``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch

from mlpot.errors import ConfigError
from mlpot.models import deepmd, fixed_point
from mlpot.models.base import AtomisticModel
from mlpot.models.compose import build_frozen, build_linear_ener
from mlpot.models.pair import build_pairtab, with_short_range_table
from mlpot.nn import Registry

__all__ = ["DataProbe", "ModelFamily", "FAMILIES", "MODELS", "family_of", "check_model_section", "build_model"]


class DataProbe(Protocol):
    """The training data of one task as a family hook sees it (read once, cached)."""

    def max_neighbors(self, cutoff: float, type_map: Sequence[str]) -> np.ndarray:
        """Maximum neighbour count per neighbour type within ``cutoff`` Å over all centres."""


@dataclass(frozen=True)
class ModelFamily:
    """A model family: the section types it builds and its hooks (module docstring)."""

    name: str
    types: Tuple[str, ...]
    check_section: Callable[[Dict[str, Any]], None]
    build: Callable[[Dict[str, Any], torch.dtype], AtomisticModel]
    resolve_from_data: Optional[Callable[[Dict[str, Any], Mapping[str, DataProbe]], Dict[str, Any]]] = None
    prepare_finetune: Optional[Callable[..., Any]] = None


FAMILIES: Registry[ModelFamily] = Registry("model family")
MODELS: Registry[Callable[..., AtomisticModel]] = Registry("model type")
_FAMILY_OF_TYPE: Dict[str, str] = {}


def _register(family: ModelFamily, builders: Mapping[str, Callable[..., AtomisticModel]]) -> None:
    FAMILIES.register(family.name, family)
    for name, builder in builders.items():
        MODELS.register(name, builder)
        _FAMILY_OF_TYPE[MODELS.canonical(name)] = family.name


def _register_families() -> None:
    # composite builders build their members through build_model, handed to them here
    _register(ModelFamily("deepmd", ("standard", "multi_task", "linear_ener", "pairtab", "frozen"),
                          check_section=deepmd.check_model_section, build=build_model,
                          resolve_from_data=deepmd.resolve_from_data,
                          prepare_finetune=functools.partial(deepmd.prepare_finetune, build=build_model)),
              {"standard": with_short_range_table(deepmd.build_standard),  # use_srtab: mlpot.models.pair
               "multi_task": functools.partial(deepmd.build_multi_task, build=build_model),
               # family-neutral composites, spelt as DeePMD-kit's model types
               "linear_ener": functools.partial(build_linear_ener, build=build_model), "pairtab": build_pairtab,
               "frozen": functools.partial(build_frozen, build=build_model)})
    # electrostatic models (fixed-point SCF, local charges, QEq) on any backbone, MACE-SCF's names as aliases
    electrostatic = functools.partial(fixed_point.build_electrostatic_model, build=build_model)
    names = [name for canonical, aliases in fixed_point.MODEL_TYPES.items() for name in (canonical, *aliases)]
    _register(ModelFamily("electrostatic", tuple(names), check_section=fixed_point.check_section, build=build_model,
                          resolve_from_data=fixed_point.resolve_from_data),
              {name: electrostatic for name in names})


def family_of(section: Mapping[str, Any]) -> ModelFamily:
    """The family that builds a model section (by its ``type``; DeePMD's default ``standard``)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", key="model")
    kind = MODELS.canonical(section.get("type", "standard"), key="model/type")
    return FAMILIES.get(_FAMILY_OF_TYPE[kind])


def check_model_section(section: Mapping[str, Any]) -> None:
    """Validate a model section with its family's typed checks (ConfigError naming the key path)."""
    family_of(section).check_section(dict(section))


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


_register_families()
