"""The NequIP family's hooks (``mlpot.models.registry.ModelFamily``).

A native ``nequip`` model section is a :class:`~.section.NequIPModelSection` plus:

* values ``"${training_data_stats:NAME}"`` anywhere (NequIP's late-bound statistics), filled in by
  ``resolve_from_data`` from the training data with the manager of ``data_statistics``
  (:mod:`.statistics`); ``check_section`` checks NAME against the manager's names;
* ``from_pretrained: true`` (NequIP ``ModelFromCheckpoint`` / ``ModelFromPackage``): the architecture
  and weights come from the pretrained model the config fine-tunes (native ``finetune``); the section
  then holds only ``modifiers`` (``modify_PerTypeScaleShift``, ``enable|disable_ForceStressOutput``)
  and ``data_statistics``; ``prepare_finetune`` completes it.

Other hooks: ``read_peer_file`` (NequIP checkpoints and packages, read safely), ``modify`` (NequIP's
persistent model modifiers on a built model).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from mlpot.errors import ConfigError, suggest
from mlpot.models.equivariant.nequip.builder import build_nequip, validate_nequip_section
from mlpot.models.equivariant.nequip.files import load_nequip_file
from mlpot.models.equivariant.nequip.model import NequIPModel
from mlpot.models.equivariant.nequip.parameter_names import apply_modifier
from mlpot.models.equivariant.nequip.statistics import compute_statistics, manager_entries, placeholders, statistic_names

__all__ = ["check_section", "build", "resolve_from_data", "prepare_finetune", "read_peer_file", "modify", "NequIPFineTune"]

_EXTRA_KEYS = ("data_statistics", "from_pretrained", "modifiers")
_PRETRAINED_KEYS = {"type", "from_pretrained", "modifiers", "data_statistics"}


def _set(section: Dict[str, Any], path, value) -> None:
    target = section
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _substituted(section: Dict[str, Any], values: Mapping[str, Any], key: str = "model") -> Dict[str, Any]:
    """A copy of ``section`` with every statistics placeholder replaced by ``values[NAME]``."""
    out = copy.deepcopy(dict(section))
    for path, name in placeholders(section):
        if name not in values:
            hint = suggest(name, list(values))
            raise ConfigError(f"unknown training data statistic {name!r}; the statistics manager gives {sorted(values)}",
                              key=".".join([key] + [str(p) for p in path]), hint=f"did you mean {hint!r}?" if hint else None)
        _set(out, path, values[name])
    return out


def _dummy_statistics(section: Dict[str, Any]) -> Dict[str, Any]:
    """A plausible value of every statistic name (1.0, or 1.0 per type) to type-check a section."""
    entries = manager_entries(section.get("data_statistics"))
    type_names = section.get("type_names") or []
    return {name: ({t: 1.0 for t in type_names} if kind == "per_type" else 1.0)
            for name, kind in statistic_names(entries, type_names).items()}


def _check_modifiers(modifiers, key: str = "model.modifiers") -> None:
    if not isinstance(modifiers, list):
        raise ConfigError("expected a list of {modifier: name, ...}", key=key)
    for index, modifier in enumerate(modifiers):
        if not isinstance(modifier, dict):
            raise ConfigError("expected a mapping with a modifier name", key=f"{key}.{index}")
        apply_modifier({"type_names": [], "type": "nequip"}, modifier, None, key=f"{key}.{index}", check_only=True)


def check_section(section: Dict[str, Any]) -> None:
    """Validate a ``nequip`` section (module docstring); ConfigError at the key path inside ``model``."""
    section = dict(section)
    if section.get("data_statistics") is not None:
        manager_entries(section["data_statistics"])
    if section.get("modifiers") is not None:
        _check_modifiers(section["modifiers"])
    if section.get("from_pretrained"):
        extra = sorted(set(section) - _PRETRAINED_KEYS)
        if extra:
            raise ConfigError("with from_pretrained the architecture comes from the pretrained model; change it with "
                              "modifiers only", key=f"model.{extra[0]}")
        return
    plain = {k: v for k, v in _substituted(section, _dummy_statistics(section)).items() if k not in _EXTRA_KEYS}
    validate_nequip_section(plain)


def build(section: Dict[str, Any], dtype: torch.dtype) -> NequIPModel:
    """The NequIP model of a complete section (placeholders filled in, modifiers applied)."""
    unresolved = [".".join(["model"] + [str(p) for p in path]) for path, _ in placeholders(section)]
    if unresolved:
        raise ConfigError("needs training data statistics (build the model through training, or give the value)",
                          key=unresolved[0])
    if section.get("from_pretrained"):
        raise ConfigError("from_pretrained needs the pretrained model (the config's finetune)", key="model.from_pretrained")
    plain = {k: v for k, v in section.items() if k not in _EXTRA_KEYS}
    for index, modifier in enumerate(section.get("modifiers") or []):
        apply_modifier(plain, modifier, None, key=f"model.modifiers.{index}")
    return build_nequip(plain, dtype)


def resolve_from_data(section: Dict[str, Any], probes: Mapping[str, Any]) -> Dict[str, Any]:
    """``section`` with every ``${training_data_stats:NAME}`` computed over the training data (the
    single task's probe) with the section's statistics manager."""
    if not any(True for _ in placeholders(section)):
        return section
    probe = probes.get("")
    if probe is None:
        raise ConfigError("not supported yet: training data statistics with multi-task training", key="model")
    entries = manager_entries(section.get("data_statistics"))
    type_names = list(section["type_names"])
    cutoff = float(probe.cutoff or section["r_max"])
    values = compute_statistics(entries, probe.frames(type_names), type_names, cutoff)
    return _substituted(section, values)


@dataclass
class NequIPFineTune:
    """What fine-tuning needs: initial weights, and the step after the data statistics."""

    weights: Dict[str, torch.Tensor]
    after_statistics: Callable[[torch.nn.Module, list, Callable[[str], None]], Any]


def _trained_scale_shift(model: NequIPModel) -> Dict[str, Any]:
    """The pretrained model's per-type scales and shifts as section values (the trained ones)."""
    out = {}
    for kind in ("scales", "shifts"):
        values = getattr(model.scale_shift, kind)
        if values is not None:
            flat = values.detach().double().reshape(-1).tolist()
            out[f"per_type_energy_{kind}"] = flat[0] if len(flat) == 1 else dict(zip(model.type_map, flat))
    return out


def prepare_finetune(config, pretrained: torch.nn.Module, *, branch: Optional[str] = None,
                     use_pretrain_script: bool = False, file: Optional[str] = None,
                     pretrained_file: str = "pretrained") -> NequIPFineTune:
    """Complete ``config.model`` from a pretrained NequIP model (NequIP ``ModelFromCheckpoint`` /
    ``ModelFromPackage``, ``--finetune``) and return its weights; ``modifiers`` apply on top of the
    trained values, and the scales/shifts they set are put back after the weights are loaded."""
    if not isinstance(pretrained, NequIPModel):
        raise ConfigError(f"the pretrained model is not a NequIP model ({type(pretrained).__name__})", file=pretrained_file)
    if branch is not None:
        raise ConfigError("a NequIP model has no branches", key="--model-branch", file=file)
    section = dict(config.model)
    if section.get("from_pretrained") or use_pretrain_script:
        base = {**copy.deepcopy(pretrained.config), **_trained_scale_shift(pretrained)}
        base.pop("model_dtype", None)
        completed = {**base, **{k: v for k, v in section.items() if k in ("modifiers", "data_statistics")}}
    else:
        completed = section
    completed.pop("from_pretrained", None)
    config.model = completed
    weights = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}
    modified = bool(completed.get("modifiers"))

    def after_statistics(model, samples, write):
        if not modified:
            return
        with torch.no_grad():
            fresh = build({k: v for k, v in model.config.items()}, model.dtype).scale_shift.state_dict()
            model.scale_shift.load_state_dict(fresh)
        write("fine-tuning: per-type scales/shifts set by the modifiers: " +
              ", ".join(f"{k} {v.reshape(-1).tolist()}" for k, v in fresh.items()))
    return NequIPFineTune(weights, after_statistics)


def read_peer_file(path) -> Optional[NequIPModel]:
    """The model of a NequIP checkpoint or package (read without running code from it), else None."""
    return load_nequip_file(path)


def modify(model: NequIPModel, modifiers: List[Dict[str, Any]]) -> NequIPModel:
    """A copy of ``model`` with NequIP's persistent modifiers applied (``modify_PerTypeScaleShift`` on top
    of the trained values, ``enable|disable_ForceStressOutput``)."""
    _check_modifiers(modifiers, key="modifiers")
    # the native-only keys are done with: statistics resolved, earlier modifiers in the trained values
    section = {k: v for k, v in {**copy.deepcopy(model.config), **_trained_scale_shift(model)}.items()
               if k not in _EXTRA_KEYS}
    for index, modifier in enumerate(modifiers):
        apply_modifier(section, modifier, None, key=f"modifiers.{index}")
    new = build_nequip(section, model.dtype)
    state = model.state_dict()
    fresh = new.state_dict()
    new.load_state_dict({k: fresh[k] if k.startswith("scale_shift.") else v for k, v in state.items()}, strict=True)
    new.config = section
    return new.eval()

