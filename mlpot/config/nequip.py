"""NequIP 0.19 front-end: read a NequIP (Hydra/OmegaConf) YAML unchanged and turn it into the native config.

``convert(path, overrides=(), output_dir=None) -> (native dict, notes)``; ``is_nequip_config(path)``
tells a NequIP config (``run``, ``data``, ``trainer`` and ``training_module`` with ``_target_``
entries) from the others. In order:

1. Hydra-style overrides (``key=value``, ``+key=value``, ``++key=value``, ``~key``) change the YAML;
2. interpolations are resolved (:mod:`._interpolation`) with NequIP's resolvers (``int_mul``,
   ``int_div``, ``concat_lists``, ``list_to_identity_dict``, ``list_to_constant_dict``,
   ``type_names_from_package``, ``cutoff_radius_from_package``, ``hydra:runtime.output_dir``,
   ``oc.env``); ``${training_data_stats:NAME}`` stays in the model section: the NequIP family
   fills it in from the training data (``mlpot.models.equivariant.nequip.statistics``);
3. every section is translated by its ``_target_`` (:mod:`._nequip_sections`); a key or target
   that is not built raises ``ConfigError("not supported yet: <key path>")``, an unknown key one with
   a "did you mean"; keys that change no number (``num_workers``, ``LearningRateMonitor``...) give a
   note the command prints. ``docs/nequip_keys.md`` is the table of every key.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from mlpot.config._interpolation import resolve
from mlpot.config._nequip_common import Context
from mlpot.config._nequip_sections import data_section, model_section
from mlpot.config._nequip_training import trainer_section, training_module
from mlpot.config.loader import read_yaml
from mlpot.errors import ConfigError, suggest
from mlpot.models.equivariant.nequip.statistics import placeholders

__all__ = ["convert", "convert_dict", "is_nequip_config", "apply_overrides", "RESOLVERS", "config_path"]

PathLike = Union[str, Path]


def config_path(config_name: Optional[str], config_dir: Optional[str]) -> Path:
    """The file Hydra's ``-cp DIR -cn NAME`` names (``.yaml`` added when NAME has no suffix)."""
    name = Path(config_name)
    if not name.suffix:
        name = name.with_suffix(".yaml")
    return Path(config_dir or ".") / name


def is_nequip_config(path_or_dict) -> bool:
    """True for a mapping with NequIP's mandatory sections whose ``training_module`` has a ``_target_``."""
    data = path_or_dict
    if not isinstance(data, dict):
        try:
            data = yaml.safe_load(Path(path_or_dict).read_text())
        except (OSError, yaml.YAMLError):
            return False
    return isinstance(data, dict) and all(k in data for k in ("run", "data", "trainer", "training_module")) and \
        isinstance(data["training_module"], dict) and "_target_" in data["training_module"]


def apply_overrides(config: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Hydra's override grammar on the raw YAML: ``a.b=v`` (the key must exist), ``+a.b=v`` (must not),
    ``++a.b=v`` (either), ``~a.b`` (delete); values are YAML. ``ckpt_path`` is returned apart."""
    config = copy.deepcopy(config)
    for override in overrides:
        text = override.strip()
        delete = text.startswith("~")
        mode = "++" if text.startswith("++") else "+" if text.startswith("+") else ""
        text = text.lstrip("~+")
        key, equal, raw = text.partition("=")
        if not equal and not delete:
            raise ConfigError(f"override {override!r} needs key=value", key=key)
        parts = key.strip().split(".")
        parent = config
        for part in parts[:-1]:
            parent = parent.setdefault(part, {}) if mode else parent.get(part)
            if not isinstance(parent, dict):
                raise ConfigError(f"override {override!r}: no such key", key=key)
        leaf = parts[-1]
        exists = leaf in parent
        if delete:
            parent.pop(leaf, None)
        elif (mode == "" and not exists) or (mode == "+" and exists):
            hint = suggest(leaf, list(parent)) if mode == "" else None
            raise ConfigError(f"override {override!r}: {'no such key (use +' + key + '=...)' if mode == '' else 'key exists (use ++)'}",
                              key=key, hint=f"did you mean {hint!r}?" if hint else None)
        else:
            parent[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return config


def _int_div(a, b):
    if int(a) % int(b):
        raise ValueError(f"{a} is not divisible by {b}")
    return int(a) // int(b)


def _from_package(key: str):
    def read(path):
        from mlpot.models.equivariant.nequip.files import package_metadata

        return package_metadata(path)[key]
    return read


def _env(name, default=None):
    value = os.environ.get(str(name), default)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    return value


def _big_dataset_stats(*_):
    raise ConfigError("not supported yet: ${big_dataset_stats:...} (NequIP's precomputed MPTrj/MatPES/OMat statistics "
                      "are not shipped with mlpot; give the values)")


def _resolvers(output_dir: str) -> Dict[str, Any]:
    return {
        "int_mul": lambda *a: math.prod(int(x) for x in a),
        "int_div": _int_div,
        "concat_lists": lambda *lists: [x for part in lists for x in part],
        "list_to_identity_dict": lambda items: {x: x for x in items},
        "list_to_constant_dict": lambda items, value: {x: value for x in items},
        "type_names_from_package": _from_package("type_names"),
        "cutoff_radius_from_package": _from_package("r_max"),
        "big_dataset_stats": _big_dataset_stats,
        "hydra": lambda name: {"runtime.output_dir": output_dir, "runtime.cwd": os.getcwd()}[str(name)],
        "oc.env": _env,
    }


RESOLVERS = sorted(_resolvers(".")) + ["training_data_stats"]


def _top_level(config: Dict[str, Any], file: Optional[str]) -> List[str]:
    missing = [k for k in ("run", "data", "trainer", "training_module") if k not in config]
    if missing:
        raise ConfigError("missing required section", file=file, key=missing[0])
    hydra = config.get("hydra") or {}
    if set(hydra) - {"run"} or set((hydra.get("run") or {})) - {"dir"}:
        raise ConfigError("not supported yet: hydra settings other than run.dir", file=file, key="hydra")
    run = config["run"]
    if not isinstance(run, list) or not all(isinstance(r, str) for r in run):
        raise ConfigError("expected a list of train, val, test", file=file, key="run")
    unknown = [r for r in run if r not in ("train", "val", "test", "predict")]
    if unknown:
        raise ConfigError(f"unknown run entry {unknown[0]!r}", file=file, key="run",
                          hint=f"did you mean {suggest(unknown[0], ['train', 'val', 'test'])!r}?")
    if run.count("train") != 1 or run[0] != "train":
        raise ConfigError("not supported yet: a run that does not start with one train (use mlpot test to evaluate a model)",
                          file=file, key="run")
    if "predict" in run:
        raise ConfigError("not supported yet: run entry predict", file=file, key="run")
    return run


def _check_model(model: Dict[str, Any], written: Any, file: Optional[str]) -> None:
    """The family's check of the translated model section, its errors at the key path as written."""
    from mlpot.models.registry import check_model_section

    wrapped = isinstance(written, dict) and "modifiers" in written  # nequip.model.modify around the builder
    try:
        check_model_section(model)
    except ConfigError as error:
        key = error.key or "model"
        inner = ".model" if wrapped and not key.startswith("model.modifiers") else ""
        key = "training_module.model" + inner + key[len("model"):] if key.startswith("model") else key
        raise ConfigError(error.message, file=file, key=key, hint=error.hint) from None


def convert_dict(config: Dict[str, Any], file: Optional[str] = None, output_dir: Optional[str] = None
                 ) -> Tuple[Dict[str, Any], List[str]]:
    """(native config, notes) of a NequIP config dict (module docstring)."""
    run = _top_level(config, file)
    output_dir = output_dir or str(((config.get("hydra") or {}).get("run") or {}).get("dir") or ".")
    try:
        resolved = resolve(config, _resolvers(output_dir), keep=("training_data_stats",))
    except ConfigError as error:
        raise ConfigError(error.message, file=file, key=error.key, hint=error.hint) from None
    outside = [".".join(map(str, path)) for path, _ in placeholders({k: v for k, v in resolved.items() if k != "training_module"})]
    outside += [f"training_module.{'.'.join(map(str, path))}" for path, _ in
                placeholders({k: v for k, v in resolved["training_module"].items() if k != "model"})]
    if outside:
        raise ConfigError("not supported yet: ${training_data_stats:...} outside training_module.model", file=file, key=outside[0])
    notes: List[str] = []
    context = Context(file=file, notes=notes, output_dir=output_dir)
    model, pretrained = model_section(resolved["training_module"].get("model"), context)
    data, seed, statistics = data_section(resolved["data"], model, None, "test" in run, context)
    if statistics is not None:
        model["data_statistics"] = statistics
    _check_model(model, resolved["training_module"].get("model"), file)
    native: Dict[str, Any] = {"family": "nequip", "seed": seed, "output_dir": output_dir, "model": model, "data": data}
    if model.get("model_dtype") is not None:
        native["dtype"] = model["model_dtype"]
    if pretrained is not None:
        native["finetune"] = pretrained
    training_module(resolved["training_module"], native, context)
    trainer_section(resolved["trainer"], native, context)
    if "val" in run:
        notes.append("run: val after train: the validation after the last epoch is the one reported")
    if "global_options" in resolved:
        notes.append("global_options: ignored, as NequIP >= 0.14 ignores it")
    return native, notes


def convert(path: PathLike, overrides: Sequence[str] = (), output_dir: Optional[str] = None
            ) -> Tuple[Dict[str, Any], List[str], Optional[str]]:
    """(native config, notes, restart checkpoint from ``++ckpt_path``) of the NequIP config at ``path``."""
    config = read_yaml(path)
    config = apply_overrides(config, overrides)
    restart = config.pop("ckpt_path", None)
    native, notes = convert_dict(config, file=str(path), output_dir=output_dir)
    return native, notes, restart
