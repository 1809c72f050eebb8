"""DeePseudopot ``NN_config.par`` front-end: parse, type and validate the global settings of a run.

Format (spec deepseudopot.md §1.1): one ``key = value`` per line, text after ``#`` dropped, blank
lines and comment-only lines skipped, booleans written ``0/1``, integer and float lists
space-separated. Every key of the 2024 and newest DeePseudopot versions is known here; keys that
have no effect in the original (``patience``, ``printGrad``, ``mc_beta_schedule``, ``writePerIter``)
and the newest-version extras mlpot does not implement are accepted with a warning, so existing
files load unchanged. Unknown keys are an error that suggests the closest known key.

mlpot additions (all optional): ``basis_mode`` (``sphere`` default, ``compat`` = the original's
truncated parallelepiped-in-sphere basis), ``double_nonspin_bands`` (1 = 2024 spin doubling of
non-SO eigenvalues, the default), ``NLbool`` (nonlocal terms; defaults to ``SObool`` as in 2024),
``kpt_chunk`` (k-points per backward with ``separateKptGrad``), ``seed``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from mlpot.errors import ConfigError, suggest

__all__ = ["DeePseudopotConfig", "read_nn_config", "parse_par_lines", "OPTIMIZER_NAMES", "NN_CONFIG_FILE"]

NN_CONFIG_FILE = "NN_config.par"

OPTIMIZER_NAMES = (
    "adam", "sgd", "asgd", "lbfgs", "adadelta", "adagrad", "adamw", "sparseadam", "adamax", "nadam",
    "radam", "rmsprop",
)

_BOOL_KEYS = (
    "SHOWPLOTS separateKptGrad checkpoint SObool NLbool cacheSO memory_flag runtime_flag "
    "init_Zunger_printGrad printGrad mc_bool smooth_reorder eigvec_reorder double_nonspin_bands"
).split()
_INT_KEYS = (
    "nSystem num_cores init_Zunger_num_epochs init_Zunger_plotEvery max_num_epochs plotEvery "
    "schedulerStep patience perturbEvery mc_iter pre_adjust_moves relE_bIdx mc_perturb_mode "
    "num_threads nQGrid nRGrid pool_initSO pool_initNL kpt_chunk seed"
).split()
_FLOAT_KEYS = (
    "PPmodel_decay_rate PPmodel_decay_center PPmodel_gaussian_std init_Zunger_optimizer_lr "
    "optimizer_lr init_Zunger_scheduler_gamma scheduler_gamma sgd_momentum adam_beta1 adam_beta2 "
    "mc_percentage mc_beta pre_adjust_stepSize penalize_starting penalize_lambda "
    "penalize_mag_threshold penalize_mag_lambda Rmax qmax"
).split()
_STR_KEYS = "PPmodel init_Zunger_optimizer optimizer mc_beta_schedule basis_mode".split()
_INT_LIST_KEYS = ["hiddenLayers"]
_FLOAT_LIST_KEYS = ["PPmodel_scale"]

# accepted for compatibility, no effect in the original (spec §11) -> warning
_NO_EFFECT_KEYS = {"patience", "printGrad", "init_Zunger_printGrad", "writePerIter", "eigvec_reorder_note"}
# newest-version extras that mlpot parses but does not implement -> warning, value kept as string
_UNSUPPORTED_KEYS = (
    "tot_magnetization group_by_type low_mem partial_eig partial_eig_driver blas_threads_per_worker "
    "init_threads nonlocal_grad nonlocal_grad_indices nonlocal_grad_lr local_env_corr longRange_lr "
    "writePerIter trainLR"
).split()

_KNOWN = set(_BOOL_KEYS + _INT_KEYS + _FLOAT_KEYS + _STR_KEYS + _INT_LIST_KEYS + _FLOAT_LIST_KEYS + _UNSUPPORTED_KEYS)

_DEFAULTS: Dict[str, Any] = {
    "num_cores": 0, "SHOWPLOTS": False, "separateKptGrad": True, "checkpoint": False, "memory_flag": False,
    "runtime_flag": False, "printGrad": False, "SObool": False, "cacheSO": True, "init_Zunger_num_epochs": 0,
    "init_Zunger_optimizer": "adam", "max_num_epochs": 0, "optimizer": "adam", "perturbEvery": -1,
    "pre_adjust_moves": 0, "pre_adjust_stepSize": 0.005, "mc_bool": False, "mc_perturb_mode": 1,
    "smooth_reorder": False, "eigvec_reorder": False, "double_nonspin_bands": True, "basis_mode": "sphere",
    "kpt_chunk": 8, "seed": 0, "qmax": 20.0, "nQGrid": 2048, "Rmax": 25.0, "nRGrid": 2048,
}


def parse_par_lines(path: Path) -> Dict[str, tuple]:
    """Read a ``key = value`` file. Returns ``{key: (raw_value, line_number)}``.

    Text after ``#`` is dropped; blank lines are skipped; a line without ``=`` is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found", file=str(path))
    out: Dict[str, tuple] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ConfigError(f"line {lineno}: expected 'key = value', got {raw.strip()!r}", file=str(path))
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise ConfigError(f"line {lineno}: empty key", file=str(path))
        out[key] = (value, lineno)
    return out


def _convert(key: str, value: str, lineno: int, file: str):
    def bad(expected: str):
        return ConfigError(f"line {lineno}: expected {expected}, got {value!r}", file=file, key=key)

    try:
        if key in _BOOL_KEYS:
            if value.lower() in ("1", "true"):
                return True
            if value.lower() in ("0", "false"):
                return False
            raise bad("a boolean written 0 or 1")
        if key in _INT_KEYS:
            return int(value)
        if key in _FLOAT_KEYS:
            return float(value)
        if key in _INT_LIST_KEYS:
            items = [int(v) for v in value.split()]
            if not items:
                raise bad("a space-separated list of integers")
            return items
        if key in _FLOAT_LIST_KEYS:
            return [float(v) for v in value.split()]
    except ConfigError:
        raise
    except ValueError:
        kind = (
            "an integer" if key in _INT_KEYS else "a number" if key in _FLOAT_KEYS
            else "a space-separated list of integers" if key in _INT_LIST_KEYS else "a space-separated list of numbers"
        )
        raise bad(kind) from None
    return value


@dataclass
class DeePseudopotConfig:
    """Typed ``NN_config.par``. ``values`` holds every key (defaults filled); attribute access reads it."""

    values: Dict[str, Any]
    file: str = NN_CONFIG_FILE
    warnings: List[str] = field(default_factory=list)

    def __getattr__(self, name: str):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        if name in _KNOWN:
            return None
        raise AttributeError(name)

    def get(self, name: str, default=None):
        value = self.values.get(name)
        return default if value is None else value

    @property
    def nl_enabled(self) -> bool:
        """Nonlocal terms on: ``NLbool`` if given, else ``SObool`` (2024: NL only exists with SO)."""
        return bool(self.values["NLbool"] if self.values.get("NLbool") is not None else self.values["SObool"])


def _require(values: Dict[str, Any], keys, file: str, because: str):
    for key in keys:
        if values.get(key) is None:
            raise ConfigError(f"required {because}", file=file, key=key)


def validate(values: Dict[str, Any], file: str) -> List[str]:
    """Apply the validation rules of spec §1.1 in place; returns the warning texts."""
    notes: List[str] = []
    _require(values, ["PPmodel", "hiddenLayers", "nSystem"], file, "in every NN_config.par")
    if values["nSystem"] < 1:
        raise ConfigError(f"must be >= 1, got {values['nSystem']}", file=file, key="nSystem")
    if any(h < 1 for h in values["hiddenLayers"]):
        raise ConfigError(f"hidden widths must be >= 1, got {values['hiddenLayers']}", file=file, key="hiddenLayers")
    if values["init_Zunger_num_epochs"] > 0:
        _require(values, ["init_Zunger_plotEvery", "init_Zunger_optimizer_lr", "init_Zunger_scheduler_gamma"],
                 file, "when init_Zunger_num_epochs > 0")
    if values["max_num_epochs"] > 0:
        _require(values, ["plotEvery", "schedulerStep", "optimizer_lr", "scheduler_gamma"], file,
                 "when max_num_epochs > 0")
    if values["mc_bool"]:
        if values["max_num_epochs"] > 0:
            raise ConfigError("mc_bool = 1 cannot be combined with max_num_epochs > 0", file=file, key="mc_bool")
        _require(values, ["mc_iter", "mc_percentage", "mc_beta"], file, "when mc_bool = 1")
        if not 1 <= values["mc_perturb_mode"] <= 7:
            raise ConfigError(f"must be 1..7, got {values['mc_perturb_mode']}", file=file, key="mc_perturb_mode")
    for key in ("optimizer", "init_Zunger_optimizer"):
        name = str(values[key]).lower()
        if name not in OPTIMIZER_NAMES:
            hint = suggest(name, OPTIMIZER_NAMES)
            raise ConfigError(f"unknown optimizer {values[key]!r}; valid: {', '.join(OPTIMIZER_NAMES)}", file=file,
                              key=key, hint=f"did you mean {hint!r}?" if hint else None)
        values[key] = name
    if values["basis_mode"] not in ("sphere", "compat"):
        raise ConfigError(f"must be 'sphere' or 'compat', got {values['basis_mode']!r}", file=file, key="basis_mode")
    for key in ("schedulerStep", "plotEvery", "init_Zunger_plotEvery", "kpt_chunk"):
        if values.get(key) is not None and values[key] < 1 and (key != "plotEvery" or values["max_num_epochs"] > 0):
            raise ConfigError(f"must be >= 1, got {values[key]}", file=file, key=key)
    if values.get("penalize_mag_threshold") is not None and values["penalize_mag_threshold"] > 100:
        notes.append("penalize_mag_threshold > 100: the |v(r=0)| bound is very loose")
    if values["checkpoint"]:
        notes.append("checkpoint = 1: NN form factors are recomputed in backward (slower, less memory)")
    if values["separateKptGrad"]:
        notes.append("separateKptGrad = 1: one backward per k-point chunk (same gradient, lower peak memory)")
    if values["eigvec_reorder"] and values["smooth_reorder"]:
        raise ConfigError("choose one of smooth_reorder and eigvec_reorder", file=file, key="eigvec_reorder")
    if values.get("patience") is None:
        values["patience"] = values["max_num_epochs"] + 1
    return notes


def read_nn_config(path) -> DeePseudopotConfig:
    """Read and validate ``NN_config.par`` (a file or the inputs folder holding it).

    Raises :class:`ConfigError` naming the file and key for unknown keys (with a suggestion), values
    of the wrong type, missing required keys and contradictory settings.
    """
    path = Path(path)
    if path.is_dir():
        path = path / NN_CONFIG_FILE
    file = str(path)
    raw = parse_par_lines(path)
    values: Dict[str, Any] = {key: None for key in _KNOWN}
    values.update(_DEFAULTS)
    notes: List[str] = []
    for key, (value, lineno) in raw.items():
        if key not in _KNOWN:
            hint = suggest(key, sorted(_KNOWN))
            raise ConfigError(f"line {lineno}: unknown key", file=file, key=key,
                              hint=f"did you mean {hint!r}?" if hint else "see docs/bands.md for the keys")
        values[key] = _convert(key, value, lineno, file)
        if key in _UNSUPPORTED_KEYS:
            notes.append(f"{key}: newest-DeePseudopot key not implemented by mlpot; ignored")
        elif key in _NO_EFFECT_KEYS:
            notes.append(f"{key}: accepted for compatibility; it has no effect in DeePseudopot either")
    if values.get("mc_beta_schedule") is not None:
        notes.append("mc_beta_schedule: documented but unused by DeePseudopot; mlpot reads it (iteration beta pairs)")
    notes += validate(values, file)
    for note in notes:
        warnings.warn(f"{file}: {note}", stacklevel=2)
    return DeePseudopotConfig(values=values, file=file, warnings=notes)
