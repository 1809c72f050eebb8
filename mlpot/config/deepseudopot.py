"""DeePseudopot front-end: ``NN_config.par`` of an inputs folder -> the native band config.

Format (spec deepseudopot.md §1.1): one ``key = value`` per line, text after ``#`` dropped, blank and
comment-only lines skipped, booleans written ``0/1``, integer and float lists space-separated.
:func:`read_nn_config` types and validates the keys (DeePseudopot's rules: ``PPmodel``,
``hiddenLayers``, ``nSystem`` required; ``mc_bool`` excludes ``max_num_epochs > 0``; optimizer and
network names known); :func:`convert` translates them into the native schema of
:mod:`mlpot.bands.native` (the table in docs/bands.md lists every key's native name), the way
``config/deepmd.py`` translates ``input.json``. No data is read here.

Every key either has an effect or is refused: features mlpot has not built raise "not supported
yet: NN_config.par/<key>"; keys whose only effect in DeePseudopot is a memory or thread strategy that
mlpot does differently are accepted with a note saying what mlpot does instead. Notes are returned,
never emitted as Python warnings, and only about keys the file sets.

mlpot additions (optional): ``basis_mode`` (``sphere`` default, ``compat`` = the original's
truncated basis), ``double_nonspin_bands`` (1 = 2024 spin doubling, default), ``NLbool``,
``kpt_chunk`` (k-points per backward), ``seed``, ``init_Zunger_focus_weight`` (pre-fit weight of
the Hamiltonians' own q values, 0 = off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from mlpot.bands.inputs import parse_par_lines
from mlpot.bands.models import PP_MODELS, required_options
from mlpot.bands.native import BAND_OPTIMIZERS, BandsConfig, not_supported, validate_bands_config
from mlpot.errors import ConfigError, suggest

__all__ = ["NNConfig", "read_nn_config", "to_native", "convert", "is_deepseudopot_inputs", "KEY_MAP", "NN_CONFIG_FILE",
           "SUGGESTED_PPMODEL"]

NN_CONFIG_FILE = "NN_config.par"
# needs no other key; DeePseudopot's shipped CdSe/InGaAsP runs used it with hiddenLayers = 20 20 20
SUGGESTED_PPMODEL = "Net_relu_xavier_decay2"

_BOOL_KEYS = (
    "SHOWPLOTS separateKptGrad checkpoint SObool NLbool cacheSO memory_flag runtime_flag init_Zunger_printGrad "
    "printGrad mc_bool smooth_reorder eigvec_reorder double_nonspin_bands group_by_type low_mem partial_eig "
    "nonlocal_grad local_env_corr trainLR"
).split()
_INT_KEYS = (
    "nSystem num_cores init_Zunger_num_epochs init_Zunger_plotEvery max_num_epochs plotEvery schedulerStep "
    "patience perturbEvery mc_iter pre_adjust_moves relE_bIdx mc_perturb_mode num_threads nQGrid nRGrid "
    "pool_initSO pool_initNL kpt_chunk seed blas_threads_per_worker init_threads writePerIter"
).split()
_FLOAT_KEYS = (
    "PPmodel_decay_rate PPmodel_decay_center PPmodel_gaussian_std init_Zunger_optimizer_lr optimizer_lr "
    "init_Zunger_scheduler_gamma scheduler_gamma sgd_momentum adam_beta1 adam_beta2 mc_percentage mc_beta "
    "pre_adjust_stepSize penalize_starting penalize_lambda penalize_mag_threshold penalize_mag_lambda Rmax qmax "
    "tot_magnetization longRange_lr nonlocal_grad_lr init_Zunger_focus_weight"
).split()
_STR_KEYS = "PPmodel init_Zunger_optimizer optimizer mc_beta_schedule basis_mode partial_eig_driver".split()
_INT_LIST_KEYS = ["hiddenLayers", "nonlocal_grad_indices"]
_FLOAT_LIST_KEYS = ["PPmodel_scale"]
_KNOWN = set(_BOOL_KEYS + _INT_KEYS + _FLOAT_KEYS + _STR_KEYS + _INT_LIST_KEYS + _FLOAT_LIST_KEYS)

# documented DeePseudopot features mlpot has not built: (key, value that is still fine, what it is)
_NOT_BUILT = [
    ("tot_magnetization", 0.0, "spin-polarized potentials"), ("low_mem", False, "disk cache of SO/NL matrices"),
    ("nonlocal_grad", False, "trainable SO/NL parameters"), ("nonlocal_grad_indices", None, "trainable SO/NL parameters"),
    ("nonlocal_grad_lr", None, "trainable SO/NL parameters"), ("local_env_corr", False, "local-structure corrections"),
    ("trainLR", False, "trainable long-range amplitudes"), ("longRange_lr", None, "trainable long-range amplitudes"),
]
# strategies with the same results, done differently by mlpot
_STRATEGY_NOTES = {
    "group_by_type": "mlpot always sums SO/NL matrices per species",
    "partial_eig": "mlpot always solves for the lowest eigenvalues only (LAPACK subset driver)",
    "pool_initSO": "SO matrices are built vectorised in the main process (no pool needed)",
    "pool_initNL": "NL matrices are built vectorised in the main process (no pool needed)",
    "init_threads": "set-up runs with the main process's threads (num_threads)",
    "cacheSO": None, "checkpoint": "the network is recomputed in backward (slower, less memory)",
    "separateKptGrad": "one backward per k-point chunk (same gradient, lower peak memory)",
}


@dataclass
class NNConfig:
    """Typed ``NN_config.par``: ``values`` holds the keys the file sets (typed); ``lines`` their line numbers."""

    values: Dict[str, Any]
    lines: Dict[str, int]
    file: str
    notes: List[str] = field(default_factory=list)

    def get(self, key: str, default=None):
        return self.values.get(key, default)


def _convert(key: str, value: str, lineno: int, file: str):
    kinds = [(_BOOL_KEYS, "a boolean written 0 or 1"), (_INT_KEYS, "an integer"), (_FLOAT_KEYS, "a number"),
             (_INT_LIST_KEYS, "a space-separated list of integers"), (_FLOAT_LIST_KEYS, "a space-separated list of numbers")]
    expected = next((text for keys, text in kinds if key in keys), None)
    try:
        if key in _BOOL_KEYS:
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError
            return value.lower() in ("1", "true")
        if key in _INT_KEYS:
            return int(value)
        if key in _FLOAT_KEYS:
            return float(value)
        if key in _INT_LIST_KEYS or key in _FLOAT_LIST_KEYS:
            items = [(int if key in _INT_LIST_KEYS else float)(v) for v in value.split()]
            if not items:
                raise ValueError
            return items
    except ValueError:
        raise ConfigError(f"line {lineno}: expected {expected}, got {value!r}", file=file, key=key) from None
    return value


def _check_required(values: Dict[str, Any], file: str) -> None:
    if values.get("PPmodel") is None:
        raise ConfigError("required in every NN_config.par", file=file, key="PPmodel",
                          hint=f"e.g. PPmodel = {SUGGESTED_PPMODEL} (needs no other key); valid: "
                               f"{', '.join(PP_MODELS.names())}")
    for key in ("hiddenLayers", "nSystem"):
        if values.get(key) is None:
            raise ConfigError("required in every NN_config.par", file=file, key=key)
    PP_MODELS.canonical(values["PPmodel"], key="PPmodel", file=file)
    for option in required_options(values["PPmodel"]):
        key = {"scale": "PPmodel_scale"}.get(option, f"PPmodel_{option}")
        if values.get(key) is None:
            raise ConfigError(f"required by PPmodel = {values['PPmodel']}", file=file, key=key)
    groups = [("init_Zunger_num_epochs", ("init_Zunger_plotEvery", "init_Zunger_optimizer_lr",
                                          "init_Zunger_scheduler_gamma")),
              ("max_num_epochs", ("plotEvery", "schedulerStep", "optimizer_lr", "scheduler_gamma"))]
    for switch, keys in groups:
        if values.get(switch, 0) > 0:
            for key in keys:
                if values.get(key) is None:
                    raise ConfigError(f"required when {switch} > 0", file=file, key=key)
    if values.get("mc_bool"):
        if values.get("max_num_epochs", 0) > 0:
            raise ConfigError("mc_bool = 1 cannot be combined with max_num_epochs > 0", file=file, key="mc_bool")
        for key in ("mc_iter", "mc_percentage", "mc_beta"):
            if values.get(key) is None:
                raise ConfigError("required when mc_bool = 1", file=file, key=key)


def _check_names_and_notes(values: Dict[str, Any], file: str) -> List[str]:
    for key in ("optimizer", "init_Zunger_optimizer"):
        if key in values:
            name = str(values[key]).lower()
            if name == "sparseadam":
                raise not_supported(file, f"{key} = sparseadam", "SparseAdam needs sparse gradients; the network's "
                                    "are dense: use adam")
            values[key] = BAND_OPTIMIZERS.canonical(name, key=key, file=file)
    for key, fine, what in _NOT_BUILT:
        if key in values and values[key] != fine and not (fine is False and values[key] == 0):
            raise not_supported(file, key, what)
    if values.get("smooth_reorder") and values.get("eigvec_reorder"):
        raise ConfigError("choose one of smooth_reorder and eigvec_reorder", file=file, key="eigvec_reorder")
    notes = [f"{key}: {text}" for key, text in _STRATEGY_NOTES.items() if text and values.get(key)]
    if values.get("patience") is not None:
        notes.append(f"patience: early stopping after {values['patience']} epochs without a lower loss, keeping the "
                     "best model (DeePseudopot parses this key without using it)")
    if values.get("writePerIter") is not None and not values.get("mc_bool"):
        notes.append("writePerIter: the snapshot cadence of the Monte Carlo mode (mc_bool = 1); gradient training "
                     "writes epoch_N_* files every plotEvery epochs")
    if values.get("penalize_mag_threshold", 0) > 100:
        notes.append("penalize_mag_threshold > 100: the |v(r=0)| bound is very loose")
    return notes


def read_nn_config(path) -> NNConfig:
    """Read and validate ``NN_config.par`` (a file or the inputs folder holding it).

    Raises :class:`ConfigError` naming the file and key for unknown keys (with a suggestion), values
    of the wrong type, missing required keys, contradictory settings and features not built.
    """
    path = Path(path)
    if path.is_dir():
        path = path / NN_CONFIG_FILE
    file = str(path)
    values, lines = {}, {}
    for key, (value, lineno) in parse_par_lines(path).items():
        if key not in _KNOWN:
            hint = suggest(key, sorted(_KNOWN))
            raise ConfigError(f"line {lineno}: unknown key", file=file, key=key,
                              hint=f"did you mean {hint!r}?" if hint else "see docs/bands.md for the keys")
        values[key], lines[key] = _convert(key, value, lineno, file), lineno
    _check_required(values, file)
    notes = _check_names_and_notes(values, file)
    return NNConfig(values, lines, file, [f"{file}: {note}" for note in notes])


# DeePseudopot key -> native key path (docs/bands.md has the same table)
KEY_MAP: List[Tuple[str, str]] = [
    ("nSystem", "n_systems"), ("seed", "seed"),
    ("PPmodel", "model.type"), ("hiddenLayers", "model.hidden"), ("PPmodel_decay_rate", "model.decay_rate"),
    ("PPmodel_decay_center", "model.decay_center"), ("PPmodel_gaussian_std", "model.gaussian_std"),
    ("PPmodel_scale", "model.scale"),
    ("basis_mode", "hamiltonian.basis"), ("SObool", "hamiltonian.spin_orbit"), ("NLbool", "hamiltonian.nonlocal_terms"),
    ("double_nonspin_bands", "hamiltonian.double_nonspin_bands"), ("cacheSO", "hamiltonian.cache_fixed"),
    ("relE_bIdx", "hamiltonian.relative_band"), ("partial_eig_driver", "hamiltonian.eigensolver"),
    ("init_Zunger_num_epochs", "prefit.epochs"), ("init_Zunger_optimizer", "prefit.optimizer"),
    ("init_Zunger_optimizer_lr", "prefit.lr"), ("init_Zunger_scheduler_gamma", "prefit.gamma"),
    ("init_Zunger_plotEvery", "prefit.plot_every"), ("init_Zunger_printGrad", "prefit.print_grad"),
    ("init_Zunger_focus_weight", "prefit.focus_weight"),
    ("max_num_epochs", "training.epochs"), ("optimizer", "training.optimizer"), ("optimizer_lr", "training.lr"),
    ("scheduler_gamma", "training.scheduler_gamma"), ("schedulerStep", "training.scheduler_step"),
    ("plotEvery", "training.plot_every"), ("sgd_momentum", "training.momentum"), ("patience", "training.patience"),
    ("perturbEvery", "training.perturb_every"), ("pre_adjust_moves", "training.pre_adjust_moves"),
    ("pre_adjust_stepSize", "training.pre_adjust_step"), ("separateKptGrad", "training.separate_kpoint_grad"),
    ("kpt_chunk", "training.kpoint_chunk"), ("checkpoint", "training.activation_checkpoint"),
    ("printGrad", "training.print_grad"),
    ("penalize_starting", "penalties.decay_start"), ("penalize_lambda", "penalties.decay_lambda"),
    ("penalize_mag_threshold", "penalties.magnitude_threshold"), ("penalize_mag_lambda", "penalties.magnitude_lambda"),
    ("mc_iter", "monte_carlo.iterations"), ("mc_perturb_mode", "monte_carlo.perturb_mode"),
    ("mc_percentage", "monte_carlo.step"), ("mc_beta", "monte_carlo.beta"),
    ("mc_beta_schedule", "monte_carlo.beta_schedule"), ("writePerIter", "monte_carlo.write_every"),
    ("num_cores", "runtime.workers"), ("num_threads", "runtime.threads"),
    ("blas_threads_per_worker", "runtime.worker_threads"), ("SHOWPLOTS", "runtime.show_plots"),
    ("runtime_flag", "runtime.report_time"), ("memory_flag", "runtime.report_memory"),
    ("qmax", "output.q_max"), ("nQGrid", "output.n_q"), ("Rmax", "output.r_max"), ("nRGrid", "output.n_r"),
]
_PEER_KEY = {native: peer for peer, native in KEY_MAP}


def _put(native: Dict[str, Any], path: str, value) -> None:
    *sections, leaf = path.split(".")
    for section in sections:
        native = native.setdefault(section, {})
    native[leaf] = value


def to_native(nn: NNConfig, inputs) -> Dict[str, Any]:
    """The native config dict of a typed ``NN_config.par`` whose data live in ``inputs``."""
    v = nn.values
    native: Dict[str, Any] = {"family": "bands", "inputs": str(Path(inputs).resolve()), "model": {}}
    skip = {"relE_bIdx"} if v.get("relE_bIdx", -1) < 0 else set()
    if not v.get("mc_bool"):
        skip |= {peer for peer, path in KEY_MAP if path.startswith("monte_carlo.")}
    if v.get("max_num_epochs", 0) == 0:  # DeePseudopot reads these only for gradient training
        skip |= {"plotEvery", "schedulerStep"}
    for peer, path in KEY_MAP:
        if peer in v and peer not in skip:
            _put(native, path, v[peer])
    if v.get("adam_beta1") is not None or v.get("adam_beta2") is not None:
        _put(native, "training.betas", [v.get("adam_beta1", 0.9), v.get("adam_beta2", 0.999)])
    if v.get("smooth_reorder") or v.get("eigvec_reorder"):
        _put(native, "training.reorder", "smooth" if v.get("smooth_reorder") else "eigvec")
    return native


def is_deepseudopot_inputs(path) -> bool:
    """True for a folder holding ``NN_config.par`` (or that file itself)."""
    path = Path(path)
    return (path / NN_CONFIG_FILE).is_file() if path.is_dir() else path.name == NN_CONFIG_FILE


def convert(path) -> Tuple[BandsConfig, List[str]]:
    """Validated native config and the notes of a DeePseudopot inputs folder (or its ``NN_config.par``)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    nn = read_nn_config(folder)
    try:
        config = validate_bands_config(to_native(nn, folder), file=nn.file)
    except ConfigError as exc:  # name the NN_config.par key the user wrote, not the native path
        peer = _PEER_KEY.get(exc.key)
        if peer is None:
            raise
        line = f"line {nn.lines[peer]}: " if peer in nn.lines else ""
        raise ConfigError(line + exc.message, file=nn.file, key=peer, hint=exc.hint) from None
    return config, nn.notes
