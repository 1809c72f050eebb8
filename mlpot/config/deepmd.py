"""DeePMD-kit front-end: read an ``input.json`` (or .yaml) unchanged and turn it into the native config.

Note for the training engine (``mlpot train``): call ``mlpot.config.deepmd.convert(path) -> dict``
when ``is_deepmd_config(path)`` is true; the dict is the native config (paths already resolved
relative to the input file), ready for the native schema.

What this module does, in order:

1. load JSON or YAML (:func:`load_file`);
2. check every key against the key table of ``_deepmd_keys.py`` (:func:`check_keys`): keys starting
   with ``_comment`` are dropped at any depth; an unknown key is a :class:`ConfigError` naming the
   file and key path with the closest valid key; a key of a feature that is not built yet is
   ``ConfigError("not supported yet: model/descriptor/<key>")`` unless its value is DeePMD's default
   (which requests nothing); aliases (``se_a``, ``stop_batch``, ``n_neuron``...) are renamed to
   their canonical names;
3. translate the checked sections into the native layout (:func:`to_native`).

Multi-task inputs (``model/model_dict`` or the TF 2.x ``model/fitting_net_dict``) are checked and
translated by ``_deepmd_multitask.py`` into a ``multi_task`` model and the native ``tasks`` section.

The translation is a table lookup with no physics; defaults that DeePMD fills in (``out.json``)
are filled here too, so that the native file ``mlpot convert`` writes shows every value used.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union


from mlpot.config import _deepmd_keys as table
from mlpot.config._deepmd_check import check_descriptor, check_section, check_typed, require_built
from mlpot.config._deepmd_nvnmd import expand_nvnmd
from mlpot.config import _deepmd_multitask as multitask
from mlpot.config._deepmd_sections import (data_section, epochs, loss_section, lr_schedule, mixed_precision,
                                           model_dtype, type_map_from_data)
from mlpot.models.deepmd.multitask import resolve_task_section
from mlpot.config._deepmd_validating import apply_validating
from mlpot.config.loader import read_yaml
from mlpot.data import keys as K
from mlpot.data.deepmd_sources import find_deepmd_systems, split_hdf5_path
from mlpot.errors import ConfigError, DataError, KeyMap, suggest

__all__ = ["convert", "convert_dict", "check_keys", "check_model", "trained_model_section", "is_deepmd_config",
           "load_file", "keys_markdown"]

PathLike = Union[str, Path]


def load_file(path: PathLike) -> Dict[str, Any]:
    """Parse a JSON or YAML DeePMD input into a dict (errors name the file, line and column)."""
    return read_yaml(path)


def is_deepmd_config(path_or_dict: Union[PathLike, Dict[str, Any]]) -> bool:
    """True for a DeePMD-kit input: a mapping with ``model`` and ``training`` whose model carries
    ``descriptor``/``fitting_net`` (or a multi-task ``model_dict``, or a composite ``type``:
    linear_ener, pairtab, frozen) and a ``training`` section with ``training_data`` or ``data_dict``."""
    data = path_or_dict if isinstance(path_or_dict, dict) else None
    if data is None:
        try:
            data = load_file(path_or_dict)
        except ConfigError:
            return False
    model, training = data.get("model"), data.get("training")
    if isinstance(data.get("nvnmd"), dict) and isinstance(training, dict) and "training_data" in training:
        return True  # an NVNMD input: its nvnmd section replaces model (check_keys names it)
    if not isinstance(model, dict) or not isinstance(training, dict):
        return False
    composite = model.get("type") in ("linear_ener", "pairtab", "frozen", "zbl", "pairwise_dprc")
    has_model = "descriptor" in model or "fitting_net" in model or "model_dict" in model or composite
    has_data = "training_data" in training or "data_dict" in training
    return has_model and has_data


# ---- key checking ------------------------------------------------------------------------------












def check_keys(config: Dict[str, Any], file: Optional[str] = None, base_dir: PathLike = ".") -> Dict[str, Any]:
    """Validate a DeePMD input dict key by key; return a cleaned deep copy.

    Comments are dropped, aliases renamed to canonical names, ignored keys removed. Raises
    :class:`ConfigError` for unknown keys (with a suggestion) and for features not built yet. An
    ``nvnmd`` section becomes ``model`` / ``model/nvnmd`` (``_deepmd_nvnmd``; its files are relative
    to ``base_dir``).
    """
    config = copy.deepcopy(config)
    nvnmd_options = None
    if isinstance(config, dict) and "nvnmd" in config:
        config = expand_nvnmd(config, file, Path(base_dir))
        nvnmd_options = config["model"].pop("nvnmd", None) if isinstance(config.get("model"), dict) else None
    out = check_section(config, table.TOP, [], file)
    for required in ("model", "training"):
        if required not in out:
            raise ConfigError(f"missing required section '{required}'", file=file, key=required)
    raw_model = out["model"]
    if multitask.is_multi_task(raw_model):
        if nvnmd_options is not None:
            raise ConfigError("not supported yet: nvnmd with a multi-task model", file=file, key="nvnmd")
        return multitask.check_multi_task(out, file)
    for section, keys in multitask.MULTI_TASK_ONLY.items():
        holder = out if not section else out.get(section)
        for key in keys:
            if isinstance(holder, dict) and holder.get(key) is not None:
                raise ConfigError("a multi-task key: needs model/model_dict (or model/fitting_net_dict)",
                                  file=file, key=([section] if section else []) + [key])
    out["model"] = check_model(raw_model, file)
    if nvnmd_options is not None:
        out["model"]["nvnmd"] = nvnmd_options
    return _check_rest(out, file)


def check_model(raw_model: Dict[str, Any], file: Optional[str] = None) -> Dict[str, Any]:
    """Check a single-task ``model`` section key by key (as :func:`check_keys` does) and return it
    cleaned: the native model section (``to_native`` adds only a ``type_map`` read from the data).
    Composite model types (frozen, pairtab, linear_ener) are checked by ``build_model``."""
    model_type = raw_model.get("type", "standard") if isinstance(raw_model, dict) else "standard"
    if model_type != "standard":
        from mlpot.models import MODELS

        if model_type not in MODELS:
            status = "not supported yet" if model_type in table.UNBUILT_MODELS else "unknown model type"
            raise ConfigError(f"{status}: model/type={model_type}", file=file, key=["model", "type"])
        return {k: v for k, v in raw_model.items() if not str(k).startswith("_comment")}
    for key, owner in table.COMPOSITE_MODEL_KEYS.items():
        if isinstance(raw_model, dict) and raw_model.get(key) is not None:
            raise ConfigError(f"belongs to model/type \"{owner}\", not to a standard model (descriptor + fitting_net)",
                              file=file, key=["model", key])
    model = check_section(raw_model, table.MODEL, ["model"], file)
    for required in ("descriptor", "fitting_net"):  # type_map may come from the data (to_native)
        if required not in model:
            raise ConfigError(f"missing required key '{required}'", file=file, key=["model", required])
    model["descriptor"] = check_descriptor(model["descriptor"], ["model", "descriptor"], file)
    model["fitting_net"] = check_typed(
        model["fitting_net"], table.FITTINGS, table.UNBUILT_FITTINGS, "ener", {}, ["model", "fitting_net"], file
    )
    from mlpot.models.deepmd.fitting import FITTINGS

    require_built(model["fitting_net"]["type"], FITTINGS, ["model", "fitting_net"], file)
    if model.get("spin") is not None:
        model["spin"] = check_section(model["spin"], table.SPIN_KEYS, ["model", "spin"], file)
    return model


def trained_model_section(model_params: Dict[str, Any], file: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
    """(native model section, dtype name) of the model section that a DeePMD-kit trained file stores
    (``model_params``: the input's ``model`` with DeePMD-kit's defaults filled in, as in ``out.json``).

    Checked key by key as an input is (``check_model``); ConfigError naming ``file`` for keys of
    features not built yet and "not supported yet" for model kinds whose trained files mlpot does
    not read (multi-task, composite model types).
    """
    if not isinstance(model_params, dict):
        raise ConfigError(f"expected a mapping, got {type(model_params).__name__}", file=file, key="model")
    if multitask.is_multi_task(model_params):
        raise ConfigError("not supported yet: multi-task DeePMD-kit models", file=file, key=["model", "model_dict"])
    section = check_model(copy.deepcopy(model_params), file)
    if section.get("type", "standard") != "standard":
        raise ConfigError(f"not supported yet: DeePMD-kit trained files of model/type={section['type']}", file=file,
                          key=["model", "type"])
    if not section.get("type_map"):
        raise ConfigError("missing required key 'type_map'", file=file, key=["model", "type_map"])
    return section, model_dtype(section)


def _check_rest(out: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """Check the sections other than ``model`` (learning_rate, loss, optimizer, training)."""
    out["learning_rate"] = check_typed(
        out.get("learning_rate", {}), table.LEARNING_RATES, (), "exp", {}, ["learning_rate"], file,
    )
    out["loss"] = check_typed(out.get("loss", {}), table.LOSSES, table.UNBUILT_LOSSES, "ener", {}, ["loss"], file)
    out["optimizer"] = check_section(out.get("optimizer", {}), table.OPTIMIZER, ["optimizer"], file)
    training = check_section(out["training"], table.TRAINING, ["training"], file)
    if "training_data" not in training:
        raise ConfigError("missing required key 'training_data'", file=file, key=["training", "training_data"])
    training["training_data"] = check_section(
        training["training_data"], table.DATA_SECTION, ["training", "training_data"], file
    )
    if training.get("validation_data") is not None:
        training["validation_data"] = check_section(
            training["validation_data"], table.VALIDATION_DATA, ["training", "validation_data"], file
        )
    out["training"] = training
    return out


def keys_markdown() -> str:
    """The key-status tables of docs/deepmd_keys.md, generated from the key table."""
    lines = []
    for title, keys in table.all_tables().items():
        lines += [f"### `{title}`", "", "| key | aliases | status | note |", "|---|---|---|---|"]
        for name, record in keys.items():
            aliases = ", ".join(f"`{a}`" for a in record.aliases)
            lines.append(f"| `{name}` | {aliases} | {record.status} | {record.note} |")
        lines.append("")
    return "\n".join(lines)


# ---- translation into the native layout --------------------------------------------------------































def to_native(config: Dict[str, Any], base_dir: PathLike = ".", file: Optional[str] = None) -> Dict[str, Any]:
    """Translate a checked DeePMD dict (see :func:`check_keys`) into the native config dict
    (layout of :class:`mlpot.training.schema.NativeConfig`).

    Relative system paths and ``stat_file`` are resolved against ``base_dir`` (the folder of the
    input file, where ``dp train`` is normally run); output files (lcurve, checkpoints,
    TensorBoard) stay relative to ``output_dir: "."``.
    """
    base, training = Path(base_dir), config["training"]
    optimizer = dict(config.get("optimizer") or {})
    opt_name = optimizer.pop("type", training.get("opt_type", "Adam"))
    if opt_name not in ("Adam", "AdamW", "LKF"):
        raise ConfigError(f"not supported yet: optimizer/type={opt_name}", file=file, key=["optimizer", "type"])
    multi_task = "model_dict" in config["model"]
    if multi_task:
        first = next(iter(config["model"]["model_dict"]))
        dtype_model = resolve_task_section(first, config["model"]["model_dict"][first], config["model"]["shared_dict"])
    else:
        dtype_model = config["model"]
        data = _single_task_data(training, base, file)
        if "type_map" not in dtype_model and config["model"].get("type", "standard") == "standard":
            config["model"]["type_map"] = type_map_from_data(data["train"]["paths"], file)
    native: Dict[str, Any] = {
        "family": "deepmd",
        "seed": int(training.get("seed") or 0),
        "dtype": model_dtype(dtype_model),
        "output_dir": ".",
        "model": multitask.native_model(config) if multi_task else copy.deepcopy(config["model"]),
        "optimizer": _optimizer_section(opt_name, optimizer, training, file),
        "lr_schedule": lr_schedule(config["learning_rate"], training, file),
        "training": _run_length(training, multi_task, file),
        **_logging_and_checkpoints(training),
    }
    if multi_task:
        native["tasks"] = multitask.native_tasks(config, base, file)
    else:
        native["data"] = data
        native["loss"] = loss_section(config["loss"], config["model"].get("fitting_net", {}).get("type", "ener"))
    _training_options(native, training, multi_task, file)
    apply_validating(config, native, file)  # validating -> full_validation
    return native


_KF_KEYS = {"kf_blocksize": "block_size", "kf_start_pref_e": "start_pref_e", "kf_limit_pref_e": "limit_pref_e",
            "kf_start_pref_f": "start_pref_f", "kf_limit_pref_f": "limit_pref_f"}


def _optimizer_section(name: str, optimizer: Dict[str, Any], training: Dict[str, Any], file: Optional[str]):
    """The native optimizer: Adam/AdamW with their betas and weight decay, or the LKF with its kf_*
    keys, from the ``optimizer`` section (DeePMD-kit 3.1.3+) or, older form, from ``training``."""
    kf = [key for key in optimizer if key in _KF_KEYS]
    if name != "LKF":
        if kf:
            raise ConfigError(f"optimizer/{kf[0]} belongs to the LKF optimizer, not {name}", file=file,
                              key=["optimizer", kf[0]])
        return {"name": name.lower(), "betas": [optimizer.get("adam_beta1", 0.9), optimizer.get("adam_beta2", 0.999)],
                "weight_decay": optimizer.get("weight_decay", 0.0)}
    adam = [key for key in optimizer if key not in _KF_KEYS]
    if adam:
        raise ConfigError(f"optimizer/{adam[0]} is not an option of the LKF optimizer", file=file,
                          key=["optimizer", adam[0]])
    given = {**{key: training[key] for key in _KF_KEYS if training.get(key) is not None}, **optimizer}
    options = {native: given[key] for key, native in _KF_KEYS.items() if given.get(key) is not None}
    return {"name": "lkf", "kwargs": options}


def _run_length(training: Dict[str, Any], multi_task: bool, file: Optional[str]) -> Dict[str, Any]:
    """numb_steps, or numb_epoch as the engine's sampler_epochs (counted once the data are read)."""
    numb_steps, numb_epoch = training.get("numb_steps"), training.get("numb_epoch")
    if multi_task and training.get("num_epoch_dict"):  # checked by _deepmd_multitask (every task, no numb_steps)
        return {"task_epochs": {task: float(value) for task, value in training["num_epoch_dict"].items()}}
    if numb_steps is not None and numb_epoch is not None:
        # DeePMD-kit takes numb_steps and drops numb_epoch silently; one length only here
        raise ConfigError("give training/numb_steps or training/numb_epoch, not both", file=file,
                          key=["training", "numb_epoch"])
    if numb_steps is None and numb_epoch is None:
        raise ConfigError(f"missing required key 'numb_steps' (or {'num_epoch_dict' if multi_task else 'numb_epoch'})",
                          file=file, key=["training", "numb_steps"])
    return {"numb_steps": int(numb_steps)} if numb_steps is not None else {"sampler_epochs": epochs(numb_epoch, file)}


def _single_task_data(training: Dict[str, Any], base: Path, file: Optional[str]) -> Dict[str, Any]:
    """training_data / validation_data (system paths resolved) and stat_file as the native data section."""
    data: Dict[str, Any] = {"train": data_section(training["training_data"], base, ["training", "training_data"], file)}
    if training.get("validation_data") is not None:
        data["valid"] = data_section(training["validation_data"], base, ["training", "validation_data"], file)
    if training.get("stat_file"):
        data["stat_file"] = str((base / training["stat_file"]).resolve())
        data["stat_file_mode"] = training.get("stat_file_mode", "update")
    elif training.get("stat_file_mode") == "read":
        raise ConfigError("stat_file_mode 'read' needs training/stat_file", file=file, key=["training", "stat_file_mode"])
    return data


def _logging_and_checkpoints(training: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "logging": {
            "lcurve": training.get("disp_file", "lcurve.out"),
            "disp_freq": training.get("disp_freq", 1000),
            "disp_training": training.get("disp_training", True),
            "time_training": training.get("time_training", True),
            "tensorboard": bool(training.get("tensorboard", False)),
            "tensorboard_log_dir": training.get("tensorboard_log_dir", "log"),
            "tensorboard_freq": training.get("tensorboard_freq", 1),
        },
        "checkpoint": {
            "prefix": training.get("save_ckpt", "model.ckpt"),
            "every": training.get("save_freq", 1000),
            "keep": training.get("max_ckpt_keep", 5),
        },
    }


def _training_options(native: Dict[str, Any], training: Dict[str, Any], multi_task: bool, file: Optional[str]) -> None:
    """The optional training keys: save_dir, disp_avg, clipping, the bias refit, profiling, mixed
    precision, EMA."""
    if training.get("save_dir"):  # checkpoints, their pointer file and link go there (native checkpoint.dir)
        native["checkpoint"]["dir"] = training["save_dir"]
    if training.get("disp_avg"):
        native["logging"]["disp_avg"] = True
    if int(training.get("zero_stage", 0)) != 0:
        native["training"]["zero_stage"] = int(training["zero_stage"])
    if int(training.get("acc_freq", 1)) != 1:
        native["training"]["acc_freq"] = int(training["acc_freq"])
    if training.get("gradient_max_norm") is not None:
        native["training"]["clip_grad_norm"] = training["gradient_max_norm"]
    # DeePMD-kit's default is off; an unchanged input gets DeePMD-kit's behaviour (the refit is
    # mlpot's default for native configs only)
    native["training"]["change_bias_after_training"] = bool(training.get("change_bias_after_training", False))
    if training.get("profiling"):
        native["logging"]["profile_file"] = training.get("profiling_file") or "timeline.json"
    if training.get("enable_profiler"):
        native["logging"]["profile_tensorboard"] = True
    if training.get("mixed_precision") is not None:
        mixed_precision(native, training["mixed_precision"], multi_task, file)
    if training.get("enable_ema"):
        native["ema"] = {"decay": training.get("ema_decay", 0.999)}


def convert_dict(config: Dict[str, Any], base_dir: PathLike = ".", file: Optional[str] = None,
                 keys: Optional[KeyMap] = None) -> Dict[str, Any]:
    """Check and translate an in-memory DeePMD input dict (see :func:`convert`)."""
    if keys is not None:
        keys.separator = "/"  # DeePMD's spelling of key paths, for every error about the input
    checked = check_keys(config, file=file, base_dir=base_dir)
    native = to_native(checked, base_dir=base_dir, file=file)
    if keys is not None:
        from mlpot.config._deepmd_origins import key_origins

        key_origins(checked, native, keys)
    return native


def convert(path: PathLike, keys: Optional[KeyMap] = None) -> Dict[str, Any]:
    """Read a DeePMD-kit ``input.json``/``.yaml`` and return the native config dict.

    Raises :class:`ConfigError` naming the file and key path for unknown keys (with a suggestion)
    and for features not built yet (``not supported yet: <key path>``). ``keys``, when given,
    receives the native key -> input key translations (:mod:`mlpot.config._deepmd_origins`).
    """
    path = Path(path)
    if keys is not None:
        keys.separator = "/"  # DeePMD's spelling of key paths, for every error about the input
    return convert_dict(load_file(path), base_dir=path.resolve().parent, file=str(path), keys=keys)


if __name__ == "__main__":  # pragma: no cover - regenerates docs/deepmd_keys.md tables
    import sys

    if "--keys-md" in sys.argv:
        print(keys_markdown())
