"""DeePMD-kit multi-task inputs: key checks and translation into the native ``tasks`` layout.

Two layouts are read (spec deepmd.md §5.1, §5.3):

* PyTorch: ``model: {shared_dict, model_dict: {task: model section}}``, ``loss_dict: {task: loss}``,
  ``training: {data_dict: {task: {training_data, validation_data, stat_file}}, model_prob}``. In a
  task's section ``descriptor`` and ``type_map`` may be a string naming a ``shared_dict`` entry.
  Every task needs its loss in ``loss_dict``; ``model_prob`` defaults to the number of training
  systems of each task (also for a task left out of it).
* TensorFlow 2.x: ``model: {type_map, descriptor, fitting_net_dict: {task: fitting_net}, ...}``,
  ``loss_dict``, ``learning_rate_dict``, ``training: {data_dict, fitting_weight}``: one descriptor
  shared by every task. It is rewritten into the PyTorch layout (the descriptor becomes
  ``shared_dict/descriptor``). A task left out of ``loss_dict`` gets the default loss;
  ``fitting_weight`` defaults to 1 per task, and a task left out of a given ``fitting_weight`` is
  never drawn (DeePMD-kit 2.x).

The checked dict keeps DeePMD's names (``model/model_dict``, ``loss_dict``, ``training/data_dict``,
``training/model_prob``); :func:`native_tasks` turns it into the native ``model`` (type
``multi_task``) and ``tasks`` sections. Errors name the DeePMD key path, e.g.
``model/model_dict/water/descriptor`` or ``loss_dict/typo``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

from mlpot.config import _deepmd_keys as table
from mlpot.config._deepmd_check import check_descriptor, check_section, check_typed, require_built
from mlpot.config._deepmd_sections import data_section, loss_section
from mlpot.errors import ConfigError

__all__ = ["MULTI_TASK_ONLY", "is_multi_task", "check_multi_task", "native_tasks", "native_model"]

# keys that exist only in multi-task inputs; a single-task input using them is an error
MULTI_TASK_ONLY = {"model": ("shared_dict", "model_dict", "fitting_net_dict"), "": ("loss_dict", "learning_rate_dict"),
                   "training": ("data_dict", "model_prob", "fitting_weight", "num_epoch_dict")}
# keys that a multi-task input must not use at the place the single-task input has them
SINGLE_TASK_ONLY = {"": ("loss",), "training": ("training_data", "validation_data")}
_TASK_MODEL_KEYS = {k: v for k, v in table.MODEL.items() if k not in MULTI_TASK_ONLY["model"]}
_SHARED_DESCRIPTOR = "descriptor"  # shared_dict name of the TF 2.x layout's one descriptor


def is_multi_task(model: Any) -> bool:
    """True for a multi-task ``model`` section (``model_dict`` or ``fitting_net_dict``)."""
    return isinstance(model, dict) and ("model_dict" in model or "fitting_net_dict" in model)


def _task_names(section: Any, path: List[str], file: Optional[str]) -> List[str]:
    if not isinstance(section, dict) or not section:
        raise ConfigError("expected a non-empty mapping task -> section", file=file, key=path)
    return [str(name) for name in section if not str(name).startswith("_comment")]


def _check_task_keys(names: List[str], tasks: List[str], path: List[str], file: Optional[str]) -> None:
    """Every key of a per-task dict (loss_dict, data_dict, model_prob) must be a task of the model."""
    for name in names:
        if name not in tasks:
            raise ConfigError(f"'{name}' is not a task of the model (tasks: {', '.join(tasks)})",
                              file=file, key=path + [name])


def _check_shared_dict(shared: Any, file: Optional[str]) -> Dict[str, Any]:
    if shared is None:
        return {}
    if not isinstance(shared, dict):
        raise ConfigError("expected a mapping name -> shared section", file=file, key=["model", "shared_dict"])
    out: Dict[str, Any] = {}
    for name, value in shared.items():
        path = ["model", "shared_dict", name]
        if str(name).startswith("_comment"):
            continue
        if isinstance(value, list):
            if not value or not all(isinstance(t, str) for t in value):
                raise ConfigError("a shared type_map must be a non-empty list of type names", file=file, key=path)
            out[name] = list(value)
        elif isinstance(value, dict) and "type" in value:
            out[name] = check_descriptor(value, path, file)
        else:
            raise ConfigError("not supported yet: a shared section other than a descriptor or a type_map list "
                              "(e.g. a shared type_embedding or fitting_net)", file=file, key=path)
    return out


def _check_task_model(task: str, section: Any, shared: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    from mlpot.models.deepmd.fitting import FITTINGS
    from mlpot.models.deepmd.multitask import shared_reference

    path = ["model", "model_dict", task]
    model = check_section(section, _TASK_MODEL_KEYS, path, file)
    if model.get("type", "standard") != "standard":
        raise ConfigError(f"not supported yet: a multi-task head of type {model['type']!r} (standard only)",
                          file=file, key=path + ["type"])
    for required in ("type_map", "descriptor", "fitting_net"):
        if required not in model:
            raise ConfigError(f"missing required key '{required}'", file=file, key=path + [required])
    for key in ("descriptor", "type_map"):
        if isinstance(model[key], str):
            try:
                name = shared_reference(model[key], shared, "/".join(path + [key]))
            except ConfigError as error:
                raise ConfigError(error.message, file=file, key=path + [key]) from None
            expected = list if key == "type_map" else dict
            if not isinstance(shared[name], expected):
                raise ConfigError(f"shared_dict/{name} is not a {key}", file=file, key=path + [key])
    if isinstance(model["descriptor"], dict):
        model["descriptor"] = check_descriptor(model["descriptor"], path + ["descriptor"], file)
    if isinstance(model["fitting_net"], str):
        raise ConfigError("not supported yet: a shared fitting net", file=file, key=path + ["fitting_net"])
    model["fitting_net"] = check_typed(model["fitting_net"], table.FITTINGS, table.UNBUILT_FITTINGS, "ener", {},
                                        path + ["fitting_net"], file)
    require_built(model["fitting_net"]["type"], FITTINGS, path + ["fitting_net"], file)
    return model


def _from_tf_layout(model: Dict[str, Any], out: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """TF 2.x ``fitting_net_dict`` -> PyTorch ``shared_dict`` + ``model_dict`` (one shared descriptor)."""
    checked = check_section(model, table.MODEL, ["model"], file)
    for key in ("model_dict", "shared_dict", "fitting_net"):
        if key in checked:
            raise ConfigError("cannot be combined with model/fitting_net_dict", file=file, key=["model", key])
    for required in ("type_map", "descriptor"):
        if required not in checked:
            raise ConfigError(f"missing required key '{required}'", file=file, key=["model", required])
    fittings = checked.pop("fitting_net_dict")
    tasks = _task_names(fittings, ["model", "fitting_net_dict"], file)
    common = {k: v for k, v in checked.items() if k not in ("descriptor", "type")}
    model_dict = {}
    for task in tasks:
        model_dict[task] = {**copy.deepcopy(common), "descriptor": _SHARED_DESCRIPTOR, "fitting_net": fittings[task]}
    training = out["training"] if isinstance(out.get("training"), dict) else {}
    if "model_prob" in training:
        raise ConfigError("the TF 2.x layout (fitting_net_dict) takes fitting_weight", file=file,
                          key=["training", "model_prob"])
    weights = training.pop("fitting_weight", None)
    if weights is None:
        if not training.get("num_epoch_dict"):  # num_epoch_dict sets the task weights itself
            training["model_prob"] = {task: 1.0 for task in tasks}
    else:
        if not isinstance(weights, dict):
            raise ConfigError("expected a mapping task -> weight", file=file, key=["training", "fitting_weight"])
        _check_task_keys(list(weights), tasks, ["training", "fitting_weight"], file)
        training["model_prob"] = {task: weights.get(task, 0.0) for task in tasks}
    losses = out.get("loss_dict") or {}
    if not isinstance(losses, dict):
        raise ConfigError("expected a mapping task -> loss section", file=file, key=["loss_dict"])
    _check_task_keys(list(losses), tasks, ["loss_dict"], file)
    out["loss_dict"] = {task: losses.get(task, {}) for task in tasks}
    return {"shared_dict": {_SHARED_DESCRIPTOR: checked["descriptor"]}, "model_dict": model_dict}


def _learning_rate(out: Dict[str, Any], tasks: List[str], file: Optional[str]) -> None:
    """``learning_rate_dict`` (TF 2.x): one optimizer, so every task must give the same schedule."""
    schedules = out.pop("learning_rate_dict", None)
    if schedules is None:
        return
    if not isinstance(schedules, dict):
        raise ConfigError("expected a mapping task -> learning_rate section", file=file, key=["learning_rate_dict"])
    _check_task_keys(list(schedules), tasks, ["learning_rate_dict"], file)
    distinct = {repr(sorted(schedules.get(task, {}).items())) for task in tasks}
    if len(distinct) > 1:
        raise ConfigError("not supported yet: a different learning rate per task (give every task the same "
                          "schedule, or one learning_rate)", file=file, key=["learning_rate_dict"])
    if "learning_rate" in out:
        raise ConfigError("give learning_rate or learning_rate_dict, not both", file=file, key=["learning_rate_dict"])
    out["learning_rate"] = copy.deepcopy(schedules.get(tasks[0], {}))


def check_multi_task(out: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """Check a multi-task input (top level already checked): returns the cleaned dict in the
    PyTorch layout with ``loss_dict`` checked per task and ``training/data_dict`` checked."""
    raw_model = out["model"]
    for section, keys in SINGLE_TASK_ONLY.items():
        holder = out if not section else out.get(section, {})
        for key in keys:
            if isinstance(holder, dict) and key in holder:
                where = "loss_dict" if key == "loss" else "training/data_dict/<task>"
                raise ConfigError(f"a multi-task input gives this per task ({where})", file=file,
                                  key=([section] if section else []) + [key])
    if "fitting_net_dict" in raw_model:
        model = _from_tf_layout(raw_model, out, file)
    else:
        extra = [k for k in raw_model if not str(k).startswith("_comment") and k not in ("shared_dict", "model_dict")]
        if extra:
            raise ConfigError("with model_dict, this belongs in each model_dict entry", file=file,
                              key=["model", extra[0]])
        model = {"shared_dict": raw_model.get("shared_dict"), "model_dict": raw_model["model_dict"]}
        if isinstance(out.get("training"), dict) and "fitting_weight" in out["training"]:
            raise ConfigError("the PyTorch layout (model_dict) takes model_prob", file=file,
                              key=["training", "fitting_weight"])
        if "loss_dict" not in out:
            raise ConfigError("missing required key 'loss_dict' (the loss of every task)", file=file, key="loss_dict")
    tasks = _task_names(model["model_dict"], ["model", "model_dict"], file)
    shared = _check_shared_dict(model.get("shared_dict"), file)
    out["model"] = {"shared_dict": shared,
                    "model_dict": {task: _check_task_model(task, model["model_dict"][task], shared, file)
                                   for task in tasks}}
    losses = out["loss_dict"]
    if not isinstance(losses, dict):
        raise ConfigError("expected a mapping task -> loss section", file=file, key="loss_dict")
    _check_task_keys([k for k in losses if not str(k).startswith("_comment")], tasks, ["loss_dict"], file)
    for task in tasks:
        if task not in losses:
            raise ConfigError(f"missing the loss of task '{task}'", file=file, key=["loss_dict", task])
    out["loss_dict"] = {task: check_typed(losses[task], table.LOSSES, table.UNBUILT_LOSSES, "ener", {},
                                           ["loss_dict", task], file) for task in tasks}
    _learning_rate(out, tasks, file)
    out["learning_rate"] = check_typed(out.get("learning_rate", {}), table.LEARNING_RATES, (), "exp", {},
                                        ["learning_rate"], file)
    out["optimizer"] = check_section(out.get("optimizer", {}), table.OPTIMIZER, ["optimizer"], file)
    training = check_section(out["training"], table.TRAINING, ["training"], file)
    if "data_dict" not in training:
        raise ConfigError("missing required key 'data_dict' (the data of every task)", file=file,
                          key=["training", "data_dict"])
    data_dict = training["data_dict"]
    _check_task_keys(_task_names(data_dict, ["training", "data_dict"], file), tasks, ["training", "data_dict"], file)
    checked_data = {}
    for task in tasks:
        path = ["training", "data_dict", task]
        if task not in data_dict:
            raise ConfigError(f"missing the data of task '{task}'", file=file, key=path)
        entry = check_section(data_dict[task], table.TASK_DATA, path, file)
        if "training_data" not in entry:
            raise ConfigError("missing required key 'training_data'", file=file, key=path + ["training_data"])
        entry["training_data"] = check_section(entry["training_data"], table.DATA_SECTION,
                                                      path + ["training_data"], file)
        if entry.get("validation_data") is not None:
            entry["validation_data"] = check_section(entry["validation_data"], table.VALIDATION_DATA,
                                                            path + ["validation_data"], file)
        checked_data[task] = entry
    training["data_dict"] = checked_data
    probs = training.get("model_prob")
    if probs is not None:
        if not isinstance(probs, dict):
            raise ConfigError("expected a mapping task -> weight", file=file, key=["training", "model_prob"])
        _check_task_keys(list(probs), tasks, ["training", "model_prob"], file)
        for task, value in probs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"expected a non-negative number, got {value!r}", file=file,
                                  key=["training", "model_prob", task])
    _check_epochs(training, tasks, file)
    out["training"] = training
    return out


def _check_epochs(training: Dict[str, Any], tasks: List[str], file: Optional[str]) -> None:
    """``num_epoch_dict`` (DeePMD-kit 3.x): positive epochs for every task, instead of numb_steps and
    model_prob; ``{}`` (DeePMD-kit's default) is absent. ``numb_epoch`` is single-task only."""
    epochs, key = training.get("num_epoch_dict"), ["training", "num_epoch_dict"]
    if "numb_epoch" in training:
        raise ConfigError("training/numb_epoch is single-task only (as in DeePMD-kit); multi-task inputs give "
                          "num_epoch_dict", file=file, key=["training", "numb_epoch"])
    if not epochs:
        training.pop("num_epoch_dict", None)
        return
    if not isinstance(epochs, dict):
        raise ConfigError("expected a mapping task -> epochs", file=file, key=key)
    _check_task_keys(list(epochs), tasks, key, file)
    for other in ("numb_steps", "model_prob"):
        if training.get(other) is not None:
            raise ConfigError(f"num_epoch_dict and {other} exclude each other (as in DeePMD-kit)", file=file,
                              key=["training", other])
    for task in tasks:
        value = epochs.get(task)
        if value is None:
            raise ConfigError(f"missing the epochs of task '{task}' (num_epoch_dict needs every task)", file=file,
                              key=key + [task])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"expected a positive number, got {value!r}", file=file, key=key + [task])


def _rerooted(error: ConfigError, prefix: str, new_prefix: str) -> ConfigError:
    key = error.key or ""
    key = new_prefix + key[len(prefix):] if key.startswith(prefix) else new_prefix
    return ConfigError(error.message, file=error.file, key=key, hint=error.hint)


def native_tasks(config: Dict[str, Any], base: Path, file: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """The native ``tasks`` section of a checked multi-task input: per task its data, loss and prob."""
    from mlpot.models.deepmd.multitask import resolve_task_section

    training = config["training"]
    probs = training.get("model_prob") or {}
    tasks: Dict[str, Dict[str, Any]] = {}
    for task, entry in training["data_dict"].items():
        path = ["training", "data_dict", task]
        data = {"train": data_section(entry["training_data"], base, path + ["training_data"], file)}
        if entry.get("validation_data") is not None:
            data["valid"] = data_section(entry["validation_data"], base, path + ["validation_data"], file)
        stat_file = entry.get("stat_file") or training.get("stat_file")
        if stat_file:
            data["stat_file"] = str((base / stat_file).resolve())
        head = resolve_task_section(task, config["model"]["model_dict"][task], config["model"]["shared_dict"])
        try:
            loss = loss_section(config["loss_dict"][task], head["fitting_net"].get("type", "ener"))
        except ConfigError as error:
            raise _rerooted(error, "loss", f"loss_dict/{task}") from None
        tasks[task] = {"data": data, "loss": loss}
        if probs.get(task) is not None:
            tasks[task]["prob"] = float(probs[task])
    return tasks


def native_model(config: Dict[str, Any]) -> Dict[str, Any]:
    """The native ``multi_task`` model section."""
    return {"type": "multi_task", **copy.deepcopy(config["model"])}
