"""DeePMD-kit 3.2 ``validating`` section -> the native ``full_validation`` section.

The keys are checked against the ``VALIDATING`` key table (unknown keys with a suggestion; the
GPU/compile switches ``compiled_infer``, ``tf32_infer``, ``amp_infer`` only at their default
``false``), then each value as DeePMD-kit's argument check does (types, ``validation_freq`` and
``max_best_ckpt`` > 0, ``full_val_start`` >= 0, ``validation_metric`` one of E/F/S/V with MAE/RMSE,
case-insensitive), then the cross-section rules of DeePMD-kit when the feature is on (some flow
enabled and ``full_val_start`` != 1): single-task energy training with validation data, a
metric whose loss prefactors are both non-zero (S and V both need the virial ones) and, here an
error where DeePMD-kit silently drops the flow, ``ema_full_validation`` only with
``training/enable_ema``. Every error is a ConfigError naming ``validating.<key>``.

Defaults as DeePMD-kit: validation_freq 5000, save_best true, max_best_ckpt 1, validation_metric
E:MAE, full_val_file val.log, full_val_start 0.5; the best checkpoints go to ``save_best_dir``,
else to the folder of ``training/save_ckpt`` (DeePMD-kit does not use ``save_dir`` for them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from mlpot.config import _deepmd_keys as table
from mlpot.config._deepmd_check import check_section
from mlpot.errors import ConfigError

__all__ = ["apply_validating"]

_DEFAULTS = {
    "full_validation": False, "ema_full_validation": False, "validation_freq": 5000, "save_best": True,
    "save_best_dir": None, "max_best_ckpt": 1, "validation_metric": "E:MAE", "full_val_file": "val.log",
    "full_val_start": 0.5,
}
_BOOLS = ("full_validation", "ema_full_validation", "save_best")
# metric family -> (DeePMD loss prefactor suffix, native loss term the front-end makes of it)
_FAMILIES = {"E": ("e", "energy"), "F": ("f", "forces"), "S": ("v", "virial"), "V": ("v", "virial")}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric(value: Any, file: Optional[str]) -> str:
    """``validation_metric`` normalised to ``E:MAE`` form."""
    key = ["validating", "validation_metric"]
    if not isinstance(value, str):
        raise ConfigError(f"expected a string such as 'E:MAE', got {value!r}", file=file, key=key)
    family, _, stat = value.strip().upper().partition(":")
    if family in ("FR", "FM") and stat in ("MAE", "RMSE"):  # spin-energy training is not built
        raise ConfigError(f"not supported yet: validating/validation_metric={value}", file=file, key=key)
    if family not in _FAMILIES or stat not in ("MAE", "RMSE"):
        raise ConfigError(f"must be one of E:MAE, E:RMSE, F:MAE, F:RMSE, S:MAE, S:RMSE, V:MAE, V:RMSE, got {value!r}",
                          file=file, key=key)
    return f"{family}:{stat}"


def _check_values(section: Dict[str, Any], file: Optional[str]) -> None:
    """DeePMD-kit's per-key checks (type and range)."""
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{message}, got {section[key]!r}", file=file, key=["validating", key])

    for key in _BOOLS:
        if not isinstance(section[key], bool):
            fail(key, "expected true or false")
    for key in ("validation_freq", "max_best_ckpt"):
        if not isinstance(section[key], int) or isinstance(section[key], bool) or section[key] <= 0:
            fail(key, "must be an integer greater than 0")
    if not _number(section["full_val_start"]) or section["full_val_start"] < 0:
        fail("full_val_start", "must be a number greater than or equal to 0")
    if section["save_best_dir"] is not None and not isinstance(section["save_best_dir"], str):
        fail("save_best_dir", "expected a folder name or null")
    if not isinstance(section["full_val_file"], str) or not section["full_val_file"]:
        fail("full_val_file", "expected a file name")


def _check_fits(config: Dict[str, Any], native: Dict[str, Any], section: Dict[str, Any], metric: str,
                file: Optional[str]) -> None:
    """DeePMD-kit's cross-section checks of an enabled full validation."""
    flag = ["validating", "full_validation" if section["full_validation"] else "ema_full_validation"]
    if "model_dict" in config["model"]:
        raise ConfigError("full validation supports single-task training only (as DeePMD-kit)", file=file, key=flag)
    training = config["training"]
    if section["ema_full_validation"] and not training.get("enable_ema"):
        raise ConfigError("needs training/enable_ema: true (DeePMD-kit would skip the EMA flow)", file=file,
                          key=["validating", "ema_full_validation"])
    loss_type = config.get("loss", {}).get("type", "ener")
    if loss_type != "ener":
        raise ConfigError(f"full validation needs energy training (loss/type ener), not loss/type {loss_type}",
                          file=file, key=flag)
    if not training.get("validation_data"):
        raise ConfigError("full validation needs training/validation_data", file=file, key=flag)
    suffix, term = _FAMILIES[metric.partition(":")[0]]
    if term not in native.get("loss", {}).get("terms", {}):
        raise ConfigError(f"{metric} needs loss/start_pref_{suffix} and loss/limit_pref_{suffix} both non-zero",
                          file=file, key=["validating", "validation_metric"])


def apply_validating(config: Dict[str, Any], native: Dict[str, Any], file: Optional[str] = None) -> None:
    """Check ``config['validating']`` (a DeePMD input after the key check of the other sections)
    and, when it turns full validation on, set ``native['full_validation']``."""
    raw = config.get("validating")
    if raw is None:
        return

    section = {**_DEFAULTS, **check_section(raw, table.VALIDATING, ["validating"], file)}
    _check_values(section, file)
    metric = _metric(section["validation_metric"], file)
    if not (section["full_validation"] or section["ema_full_validation"]) or float(section["full_val_start"]) == 1.0:
        return  # off (DeePMD-kit: full_val_start 1 disables the feature, and its checks)
    _check_fits(config, native, section, metric, file)
    best_dir = section["save_best_dir"] or str(Path(config["training"].get("save_ckpt", "model.ckpt")).parent)
    native["full_validation"] = {
        "live": section["full_validation"],
        "ema": section["ema_full_validation"],
        "freq": section["validation_freq"],
        "start": float(section["full_val_start"]),
        "metric": metric,
        "save_best": section["save_best"],
        "max_best": section["max_best_ckpt"],
        "best_dir": best_dir,
        "log_file": section["full_val_file"],
    }
