"""The training record of a model: what its training learnt about the data and the loss, kept
beside the weights (``training_record`` entry of mlpot's checkpoints and frozen files).

* ``min_nbor_dist`` (Å): the smallest distance between two atoms of the training data within the
  model's cutoff, measured by the training's neighbour statistics (not with ``--skip-neighbor-stat``);
  ``mlpot compress`` reads it first, as ``dp compress`` reads DeePMD-kit's ``min_nbor_dist`` buffer.
* ``hessian_mode`` (bool): the loss had a Hessian term (start_pref_h or limit_pref_h non-zero;
  DeePMD-kit's ``hessian_mode`` model key); ``mlpot test`` then evaluates Hessians.

A multi-task model's record holds one record per task under ``heads``. Files without a record (older
files, peers' files without the values) load with the defaults: min_nbor_dist None, hessian_mode False.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from mlpot.errors import CheckpointError

__all__ = ["training_record", "apply_training_record"]


def _heads(model) -> Optional[Dict[str, torch.nn.Module]]:
    heads, tasks = getattr(model, "heads", None), getattr(model, "tasks", None)
    return {task: heads[task] for task in tasks} if isinstance(heads, torch.nn.ModuleDict) and tasks else None


def training_record(model) -> Dict[str, Any]:
    """The record of ``model`` as plain data: {"min_nbor_dist": Å, "hessian_mode": True} with the
    entries that are set, and {"heads": {task: record}} for a multi-task model."""
    heads = _heads(model)
    if heads is not None:
        return {"heads": {task: training_record(head) for task, head in heads.items()}}
    record: Dict[str, Any] = {}
    if getattr(model, "min_nbor_dist", None) is not None:
        record["min_nbor_dist"] = float(model.min_nbor_dist)
    if getattr(model, "hessian_mode", False):
        record["hessian_mode"] = True
    return record


def apply_training_record(model, record: Any, file: str = "model"):
    """Set the record read from ``file`` (``training_record``'s form; None: no record) on ``model``
    and return it; a malformed record is a CheckpointError naming the file and the entry."""
    if record is None:
        return model
    if not isinstance(record, dict):
        raise CheckpointError(f"training_record must be a mapping, got {type(record).__name__}", file=file)
    heads = _heads(model)
    if heads is not None:
        for task, head in heads.items():
            apply_training_record(head, (record.get("heads") or {}).get(task), file)
        return model
    unknown = sorted(set(record) - {"min_nbor_dist", "hessian_mode"})
    if unknown:
        raise CheckpointError(f"unknown training_record entries {unknown}", file=file)
    distance = record.get("min_nbor_dist")
    if distance is not None:
        if isinstance(distance, bool) or not isinstance(distance, (int, float)) or not (math.isfinite(distance) and distance > 0):
            raise CheckpointError(f"training_record.min_nbor_dist must be a positive distance (Å), got {distance!r}",
                                  file=file)
        model.min_nbor_dist = float(distance)
    if not isinstance(record.get("hessian_mode", False), bool):
        raise CheckpointError(f"training_record.hessian_mode must be true or false, got {record['hessian_mode']!r}",
                              file=file)
    model.hessian_mode = bool(record.get("hessian_mode", False))
    return model
