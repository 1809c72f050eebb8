"""Model families and model types: what the engine knows about a model, through one registry.

A :class:`ModelFamily` names the model-section ``type`` values it builds and carries the hooks the
training engine calls without knowing the family:

* ``check_section(section)``: validate a model section (typed, key paths and suggestions in errors);
* ``build(section, dtype)``: the model;
* ``resolve_from_data(section, probes)``: a copy of the section with what depends on the training
  data filled in (DeePMD ``sel: "auto"``; MACE's elements, E0s, average neighbour count, scale and
  shift).
  ``probes``: task name ("" for single-task training) -> :class:`DataProbe`;
* ``prepare_finetune(config, pretrained, ...)``: adapt a config to a pretrained model (type maps,
  section check) and return its initial weights;
* ``read_peer_file(path)``: the model of a peer's trained-model file (NequIP checkpoints and
  packages), read without running code from it, or None when the file is not of that peer;
* ``modify(model, modifiers)``: a copy of a built model with the peer's persistent model modifiers
  (NequIP ``enable_ForceStressOutput``, ``modify_PerTypeScaleShift``...).

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
from mlpot.models.equivariant.mace import build_mace
from mlpot.models.equivariant.mace import hooks as mace_hooks
from mlpot.models.equivariant.nequip import family as nequip_family
from mlpot.models.deepmd.dplr import with_dipole_charge_modifier
from mlpot.models.pair import build_pairtab, with_short_range_table
from mlpot.nn import Registry

__all__ = ["DataProbe", "ModelFamily", "FAMILIES", "MODELS", "family_of", "check_model_section", "build_model",
           "read_peer_model"]


class DataProbe(Protocol):
    """The training data of one task as a family hook sees it (read once, cached): the training
    frames (the training part of a ``valid_fraction`` split, isolated-atom frames set aside).

    ``cutoff``: the data section's neighbour cutoff (``data.cutoff``, Å) or None (the model's).
    """

    cutoff: Optional[float]

    def mean_neighbors(self, cutoff: float, type_map: Sequence[str]) -> float:
        """Mean neighbour count within ``cutoff`` Å over the atoms that have at least one neighbour."""

    def atomic_numbers(self) -> list:
        """Sorted atomic numbers of the elements in the training data."""

    def energy_composition(self, type_map: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(atoms per type (n_frames, n_types), energy (n_frames,) eV) of the frames with an energy label."""

    def forces_rms(self, type_map: Sequence[str]) -> Optional[float]:
        """Root mean square force component, eV/Å (None without force labels)."""

    def isolated_atom_energies(self, type_map: Sequence[str]) -> Dict[int, float]:
        """{type index: eV} of the isolated reference atoms (``ISOLATED_ATOM`` frames) of the training files."""

    def frames(self, type_map: Sequence[str]) -> Sequence[Dict[str, Any]]:
        """The frames (keys of ``mlpot.data.keys``) with atom types on ``type_map``."""

    def statistics(self, cutoff: float, type_map: Sequence[str]) -> Any:
        """``mlpot.data.DatasetStatistics`` of the frames (neighbours within ``data.cutoff`` or ``cutoff`` Å)."""


@dataclass(frozen=True)
class ModelFamily:
    """A model family: the section types it builds and its hooks (module docstring)."""

    name: str
    types: Tuple[str, ...]
    check_section: Callable[[Dict[str, Any]], None]
    build: Callable[[Dict[str, Any], torch.dtype], AtomisticModel]
    resolve_from_data: Optional[Callable[[Dict[str, Any], Mapping[str, DataProbe]], Dict[str, Any]]] = None
    prepare_finetune: Optional[Callable[..., Any]] = None
    read_peer_file: Optional[Callable[[Any], Optional[AtomisticModel]]] = None
    modify: Optional[Callable[[AtomisticModel, list], AtomisticModel]] = None


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
    _register(ModelFamily("deepmd", ("standard", "multi_task", "linear_ener", "pairtab", "frozen", "pairwise_dprc"),
                          check_section=deepmd.check_model_section, build=build_model,
                          resolve_from_data=deepmd.resolve_from_data,
                          prepare_finetune=functools.partial(deepmd.prepare_finetune, build=build_model)),
              {"standard": with_dipole_charge_modifier(with_short_range_table(deepmd.build_standard), build_model),
               # use_srtab: mlpot.models.pair; modifier (DPLR): mlpot.models.deepmd.dplr
               "multi_task": functools.partial(deepmd.build_multi_task, build=build_model),
               # family-neutral composites, spelt as DeePMD-kit's model types
               "linear_ener": functools.partial(build_linear_ener, build=build_model), "pairtab": build_pairtab,
               "frozen": functools.partial(build_frozen, build=build_model),
               "pairwise_dprc": functools.partial(deepmd.build_pairwise_dprc, build=build_model)})
    _register(ModelFamily("mace", ("mace",), check_section=mace_hooks.check_section, build=build_mace,
                          resolve_from_data=mace_hooks.resolve_from_data, prepare_finetune=mace_hooks.prepare_finetune),
              {"mace": build_mace})
    _register(ModelFamily("nequip", ("nequip",), check_section=nequip_family.check_section, build=build_model,
                          resolve_from_data=nequip_family.resolve_from_data, prepare_finetune=nequip_family.prepare_finetune,
                          read_peer_file=nequip_family.read_peer_file, modify=nequip_family.modify),
              {"nequip": nequip_family.build})
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


def read_peer_model(path) -> Optional[AtomisticModel]:
    """The model of a peer's trained-model file (each family's ``read_peer_file``), or None."""
    for name in FAMILIES.names():
        reader = FAMILIES.get(name).read_peer_file
        model = reader(path) if reader is not None else None
        if model is not None:
            return model
    return None


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
