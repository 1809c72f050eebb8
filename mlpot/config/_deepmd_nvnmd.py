"""DeePMD-kit's ``nvnmd`` section (NVNMD training, TF backend) for the DeePMD front-end.

Two input layouts, as DeePMD-kit reads them:

* an NVNMD input (``train_cnn.json`` / ``train_qnn.json`` of its examples): no ``model``; the
  nvnmd section carries ``sel``, ``rcut``, ``rcut_smth`` (and ``type_map``) and the model is
  NVNMD's version-0 one: se_e2_a with neuron [8, 16, 32], axis_neuron 4, type_one_side, and
  ``net_size``-wide tanh4 fitting nets ([net_size] * 3); version 1 (``sel`` one int): se_atten in
  strip mode without attention layers (attn_layer 0; two-sided type-pair net, as DeePMD-kit TF's
  strip mode always builds it), the same widths, one fitting net reading [D, tebd(t_i)]. It is what ``dp train-nvnmd`` (mlpot
  train-nvnmd) trains; with ``mlpot train`` it needs ``enable: true``, as dp train cannot train it
  at all;
* a model section and an nvnmd section (the ``train.json`` that train-nvnmd writes): with
  ``enable: true`` the model section's se_e2_a / ener are built as NVNMD's; with ``enable: false``
  it is a plain model and every other nvnmd key must keep its default.

The restore keys (``restore_descriptor``, ``restore_fitting_net``, ``weight_file``) are the
second stage's, taken by ``mlpot train-nvnmd -s s2`` (which starts from the first stage's weights);
in ``mlpot train`` they are "not supported yet". ``config_file`` (config.npy) is read and must
describe the same model. Errors name the key as ``nvnmd/<key>``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

from mlpot.config import _deepmd_keys as table
from mlpot.config._deepmd_check import check_section
from mlpot.errors import ConfigError

__all__ = ["expand_nvnmd", "NVNMD_DEFAULTS", "nvnmd_model"]

NVNMD_DEFAULTS = {"version": 0, "max_nnei": 128, "net_size": 128, "map_file": "none", "config_file": "none",
                  "weight_file": "none", "enable": False, "restore_descriptor": False, "restore_fitting_net": False,
                  "quantize_descriptor": False, "quantize_fitting_net": False}
_MODEL_KEYS = ("sel", "rcut", "rcut_smth", "type_map")


def _file(value: str) -> Optional[str]:
    return None if value in (None, "none", "") else value


def _descriptor(section: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """The descriptor of an NVNMD input without model section: version 0 se_e2_a (sel a list),
    version 1 se_atten (sel one int)."""
    sel = section["sel"]
    common = {"sel": sel, "rcut": section["rcut"], "rcut_smth": section["rcut_smth"], "neuron": [8, 16, 32],
              "axis_neuron": 4, "resnet_dt": False, "seed": 1}
    if section["version"] == 0:
        if not isinstance(sel, list):
            raise ConfigError(f"version 0 takes sel per type (a list), got {sel!r}", file=file, key=["nvnmd", "sel"])
        return {"type": "se_e2_a", "type_one_side": True, **common}
    if isinstance(sel, bool) or not isinstance(sel, int):
        raise ConfigError(f"version 1 takes one sel for all types (an int), got {sel!r}", file=file,
                          key=["nvnmd", "sel"])
    return {"type": "se_atten", "tebd_input_mode": "strip", "type_one_side": False, "attn": 128, "attn_layer": 0,
            "attn_dotr": True, "attn_mask": False, **common}


def nvnmd_model(section: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """The model section of an NVNMD input (version 0 or 1) from its nvnmd section."""
    for name in ("sel", "rcut", "rcut_smth"):
        if name not in section:
            raise ConfigError(f"missing required key '{name}' (an NVNMD input without model section)", file=file,
                              key=["nvnmd", name])
    if section["net_size"] != 128:
        raise ConfigError(f"NVNMD's fitting nets are 128 wide (net_size 128), got {section['net_size']}", file=file,
                          key=["nvnmd", "net_size"])
    model = {"descriptor": _descriptor(section, file),
             "fitting_net": {"type": "ener", "neuron": [section["net_size"]] * 3, "resnet_dt": False, "seed": 1}}
    if section.get("type_map"):
        model["type_map"] = list(section["type_map"])
    return model


def expand_nvnmd(config: Dict[str, Any], file: Optional[str] = None, base_dir: Path = Path(".")) -> Dict[str, Any]:
    """A copy of a DeePMD input with its nvnmd section turned into ``model`` (+ ``model/nvnmd``);
    map_file and config_file are relative to ``base_dir`` (the input's folder)."""
    config = copy.deepcopy(config)
    raw = config.pop("nvnmd")
    section = {**NVNMD_DEFAULTS, **check_section(raw, table.NVNMD, ["nvnmd"], file)}
    if section["version"] not in (0, 1):
        raise ConfigError(f"expected 0 or 1, got {section['version']}", file=file, key=["nvnmd", "version"])
    if section["max_nnei"] not in (128, 256):
        raise ConfigError(f"expected 128 or 256, got {section['max_nnei']}", file=file, key=["nvnmd", "max_nnei"])
    has_model = "model" in config
    if not has_model:
        if not section["enable"]:
            raise ConfigError("an NVNMD input (no model section) is trained by mlpot train-nvnmd -s s1|s2 "
                              "(dp train-nvnmd); for mlpot train set enable true", file=file, key=["nvnmd", "enable"])
        config["model"] = nvnmd_model(section, file)
    else:
        for name in _MODEL_KEYS:
            if name in section:
                raise ConfigError("belongs to an NVNMD input without model section (here the model section gives it)",
                                  file=file, key=["nvnmd", name])
        if not section["enable"]:
            for name, default in NVNMD_DEFAULTS.items():
                if name != "enable" and section[name] != default:
                    raise ConfigError(f"has no effect while nvnmd/enable is false (set enable true or leave "
                                      f"{name} out)", file=file, key=["nvnmd", name])
            return config
    for name in ("restore_descriptor", "restore_fitting_net"):
        if section[name]:
            raise ConfigError(f"not supported yet: nvnmd/{name} in mlpot train (the second stage restores the first "
                              "one's weights: mlpot train-nvnmd -s s2)", file=file, key=["nvnmd", name])
    if _file(section["weight_file"]) is not None:
        raise ConfigError("not supported yet: nvnmd/weight_file in mlpot train (read by mlpot train-nvnmd -s s2)",
                          file=file, key=["nvnmd", "weight_file"])
    map_file = _file(section["map_file"])
    if section["quantize_descriptor"] and map_file is None:
        raise ConfigError("the quantised descriptor needs the tables: give map_file (map.npy of the first stage)",
                          file=file, key=["nvnmd", "map_file"])
    if map_file is not None and not section["quantize_descriptor"]:
        raise ConfigError("the tables are read by the quantised descriptor only: set quantize_descriptor true or "
                          "leave map_file out", file=file, key=["nvnmd", "map_file"])
    model = config["model"]
    descriptor = model.get("descriptor")
    if section["version"] == 1 and isinstance(descriptor, dict) and descriptor.get("type") in ("se_atten", "dpa1"):
        descriptor["type_one_side"] = False  # DeePMD-kit TF's strip mode reads both types whatever it says
    fitting = model.setdefault("fitting_net", {})
    if fitting.get("activation_function", "tanh") != "tanh":
        raise ConfigError("NVNMD fitting nets use tanh4 (DeePMD-kit replaces the activation): leave "
                          "activation_function out", file=file, key=["model", "fitting_net", "activation_function"])
    fitting["activation_function"] = "tanh4"
    model["nvnmd"] = {"version": section["version"], "max_nnei": section["max_nnei"],
                      "quantize_descriptor": section["quantize_descriptor"],
                      "quantize_fitting_net": section["quantize_fitting_net"],
                      "map_file": None if map_file is None else str(Path(base_dir) / map_file)}
    if _file(section["config_file"]) is not None:
        _check_config_file(Path(base_dir) / section["config_file"], model, file)
    return config


def _check_config_file(path: Path, model: Dict[str, Any], file: Optional[str]) -> None:
    """config.npy (DeePMD-kit's hardware configuration) must describe the model's descriptor."""
    from mlpot.models.deepmd.nvnmd.files import read_npy_dict

    stored = read_npy_dict(path, "nvnmd/config_file").get("dscp", {})
    descriptor = model.get("descriptor", {})
    for name in ("sel", "rcut", "rcut_smth", "neuron", "axis_neuron"):
        if name in stored and name in descriptor and list(_as_list(stored[name])) != list(_as_list(descriptor[name])):
            raise ConfigError(f"config_file {path} has dscp/{name} = {stored[name]!r}, the model "
                              f"{descriptor[name]!r}", file=file, key=["nvnmd", "config_file"])


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
