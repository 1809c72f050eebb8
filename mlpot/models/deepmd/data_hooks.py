"""The DeePMD family's hooks into the training engine (``mlpot.models.registry.ModelFamily``).

* :func:`resolve_from_data`: ``sel: "auto[:factor]"`` from the maximum neighbour count per type in
  the training data at the descriptor's rcut (spec deepmd.md §2.1); in a multi-task model a
  shared descriptor takes the largest counts over every task that uses it.
* :func:`prepare_finetune`: the pretrained model's weights remapped to the input's type_map, and the
  bias update to run once the data statistics sample exists (``--finetune``; :mod:`.finetune`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

from mlpot.models.base import FineTune
from mlpot.models.deepmd.builders import resolve_auto_sel, wants_auto_sel
from mlpot.models.deepmd.multitask import resolve_task_section, shared_reference

__all__ = ["resolve_from_data", "FineTune", "prepare_finetune_hook"]


def _descriptor_parts(descriptor: Any) -> List[Dict[str, Any]]:
    descriptor = descriptor if isinstance(descriptor, dict) else {}
    return descriptor.get("list", [descriptor]) if descriptor.get("type") == "hybrid" else [descriptor]


def _max_neighbors(section: Dict[str, Any], probe) -> Optional[np.ndarray]:
    """Maximum neighbour counts at the descriptor cutoff, per type and (last entry) of all types
    together, or None when no part asks for ``sel: auto``."""
    parts = _descriptor_parts(section.get("descriptor"))
    if not any(wants_auto_sel(part) for part in parts):  # no sel: "auto" (DeePMD-kit 3.x)
        return None
    rcut = max(float(part.get("rcut", 6.0)) for part in parts)
    stats = probe.statistics(rcut, list(section["type_map"]))
    return np.asarray([*stats.max_neighbors_per_type, stats.max_neighbors_total])


def _resolve(section: Dict[str, Any], counts: np.ndarray) -> Dict[str, Any]:
    return resolve_auto_sel(section, counts[:-1], int(counts[-1]))


def _resolve_single(section: Dict[str, Any], probe) -> Dict[str, Any]:
    counts = _max_neighbors(section, probe)
    return section if counts is None else _resolve(section, counts)


def _resolve_multi_task(model: Dict[str, Any], probes: Mapping[str, Any]) -> Dict[str, Any]:
    model = copy.deepcopy(model)
    shared = model.get("shared_dict") or {}
    shared_counts: Dict[str, np.ndarray] = {}
    for name, section in model["model_dict"].items():
        counts = _max_neighbors(resolve_task_section(name, section, shared), probes[name])
        if counts is None:
            continue
        if isinstance(section.get("descriptor"), str):
            key = shared_reference(section["descriptor"], shared, f"model/model_dict/{name}/descriptor")
            shared_counts[key] = np.maximum(shared_counts.get(key, counts), counts)
        else:
            model["model_dict"][name] = _resolve(resolve_task_section(name, section, shared), counts)
    for key, counts in shared_counts.items():
        type_map = next(resolve_task_section(n, s, shared)["type_map"] for n, s in model["model_dict"].items()
                        if isinstance(s.get("descriptor"), str) and s["descriptor"].partition(":")[0] == key)
        shared[key] = _resolve({"type_map": type_map, "descriptor": shared[key]}, counts)["descriptor"]
    return model


def resolve_from_data(model: Dict[str, Any], probes: Mapping[str, Any]) -> Dict[str, Any]:
    """The model section with ``sel: "auto[:f]"`` resolved (module docstring); ``probes``: task ->
    DataProbe ("" for single-task training)."""
    if model.get("type") == "multi_task":
        return _resolve_multi_task(model, probes)
    if model.get("type", "standard") != "standard":
        return model
    return _resolve_single(model, probes[""])


def prepare_finetune_hook(config, pretrained: torch.nn.Module, *, build: Callable[..., torch.nn.Module],
                          branch: Optional[str] = None, use_pretrain_script: bool = False, file: Optional[str] = None,
                          pretrained_file: str = "pretrained") -> FineTune:
    """``config.model`` adapted to ``pretrained`` (type_map remap, section check) and the FineTune plan;
    ``build(section, dtype)`` builds a fresh model of the adapted section."""
    from mlpot.models.deepmd.finetune import finetune_bias, prepare_finetune

    weights, random_fitting = prepare_finetune(config, pretrained, build=build, branch=branch,
                                               use_pretrain_script=use_pretrain_script, file=file,
                                               pretrained_file=pretrained_file)
    return FineTune(weights, lambda model, samples, write: finetune_bias(model, samples, random_fitting, write=write,
                                                                         file=file))
