"""The native band-fitting config: a typed pydantic schema (unknown keys forbidden everywhere).

A band fit is described by one YAML file (``mlpot bands fit fit.yaml RESULTS``; the command reads it
with the config layer's YAML reader and validates it here) or by a DeePseudopot
inputs folder, whose ``NN_config.par`` the front-end :mod:`mlpot.config.deepseudopot` converts into
this schema (``mlpot convert INPUTS_DIR`` prints the result). Sections and their DeePseudopot keys
are listed in docs/bands.md; every field below documents its unit.

``inputs`` is the folder holding the per-system data files (``system_X.par``, ``input_X.par``,
``kpoints_X.par``, ``expBandStruct_X.par``, ``bandWeights_X.par``, parameter files, optional
``init_qSpace_pot.par``, ``init_PPmodel.pth``...); a relative path is resolved against the YAML's
folder. Errors read ``<file>: <key path>: <what is wrong> (did you mean '<closest key>'?)``.

Names (pseudopotential model, optimizer) are checked after the schema through the registries, so
their errors carry the same "did you mean" hint as every other registry of mlpot.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import List, Literal, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpot.bands.models import PP_MODELS
from mlpot.errors import ConfigError, suggest
from mlpot.nn import Registry

__all__ = [
    "BandsConfig", "ModelSection", "HamiltonianSection", "PrefitSection", "TrainingSection", "PenaltySection",
    "MonteCarloSection", "RuntimeSection", "OutputSection", "BAND_OPTIMIZERS", "validate_bands_config",
    "bands_config_to_yaml", "not_supported",
]

# the optimizers DeePseudopot accepts (``optimizer``, ``init_Zunger_optimizer``); SparseAdam is
# listed apart: it needs sparse gradients, and a pseudopotential network's are dense
BAND_OPTIMIZERS: Registry[str] = Registry("optimizer")
for _name in ("adam", "sgd", "asgd", "lbfgs", "adadelta", "adagrad", "adamw", "adamax", "nadam", "radam", "rmsprop"):
    BAND_OPTIMIZERS.register(_name, _name)


def not_supported(file, key: str, detail: str = "") -> ConfigError:
    """``not supported yet: <file>/<key> (detail)`` for a documented peer feature mlpot has not built."""
    error = ConfigError(f"not supported yet: {file}/{key}" + (f" ({detail})" if detail else ""))
    error.file, error.key = str(file), key
    return error


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    """The network v(q): q (Bohr⁻¹) -> per-species form factors (Ha·Bohr³)."""

    type: str = Field(description="network class of the DeePseudopot catalog (PPmodel), e.g. Net_relu_xavier_decay2")
    hidden: List[int] = Field(min_length=1, description="hidden widths (hiddenLayers)")
    decay_rate: Optional[float] = Field(None, description="logistic gate rate, 1/Bohr⁻¹ (PPmodel_decay_rate)")
    decay_center: Optional[float] = Field(None, description="logistic gate centre, Bohr⁻¹ (PPmodel_decay_center)")
    gaussian_std: Optional[float] = Field(None, gt=0, description="Gaussian gate width, Bohr⁻¹ (PPmodel_gaussian_std)")
    scale: Optional[List[float]] = Field(None, description="per-species output scale (PPmodel_scale)")


class HamiltonianSection(_Section):
    basis: Literal["sphere", "compat"] = Field("sphere", description="full cutoff sphere, or DeePseudopot's truncated basis")
    spin_orbit: bool = Field(False, description="spinor Hamiltonian with spin-orbit terms (SObool)")
    nonlocal_terms: Optional[bool] = Field(None, description="nonlocal p terms (NLbool); default: spin_orbit")
    double_nonspin_bands: bool = Field(True, description="list every non-spinor eigenvalue twice (2024 files)")
    cache_fixed: bool = Field(True, description="keep the SO/NL matrices of every k (cacheSO)")
    relative_band: Optional[int] = Field(None, ge=0, description="fit energies relative to this band (relE_bIdx)")
    compat_units: bool = Field(True, description="Hartree -> eV with DeePseudopot's 27.2114")
    eigensolver: Literal["evr", "evx", "evd"] = Field("evr", description="LAPACK driver (partial_eig_driver)")


class PrefitSection(_Section):
    """Pre-fit of the network to the analytic (Zunger) or tabulated v(q)."""

    epochs: int = Field(0, ge=0, description="init_Zunger_num_epochs")
    optimizer: str = "adam"
    lr: Optional[float] = Field(None, gt=0, description="init_Zunger_optimizer_lr")
    gamma: Optional[float] = Field(None, gt=0, description="ExponentialLR factor per plot_every epochs")
    plot_every: Optional[int] = Field(None, description="snapshot + scheduler cadence in epochs; null/<=0: skip")
    print_grad: bool = Field(False, description="log per-layer gradient norms (init_Zunger_printGrad)")
    focus_weight: float = Field(0.0, ge=0, description="weight of the Hamiltonians' own q in the pre-fit; 0: off")

    @model_validator(mode="after")
    def _needs_lr(self):
        if self.epochs > 0:
            for name in ("lr", "gamma"):
                if getattr(self, name) is None:
                    raise ValueError(f"prefit.{name} is required when prefit.epochs > 0")
        return self


class TrainingSection(_Section):
    """Gradient training of the network on the band loss (eV²)."""

    epochs: int = Field(0, ge=0, description="max_num_epochs")
    optimizer: str = "adam"
    lr: Optional[float] = Field(None, gt=0, description="optimizer_lr")
    scheduler_gamma: Optional[float] = Field(None, gt=0)
    scheduler_step: Optional[int] = Field(None, ge=1, description="ExponentialLR step every N epochs")
    plot_every: Optional[int] = Field(None, ge=1, description="evaluation / epoch_N_* files cadence")
    betas: Optional[Tuple[float, float]] = Field(None, description="Adam-family betas (adam_beta1, adam_beta2)")
    momentum: Optional[float] = Field(None, ge=0, description="SGD momentum (sgd_momentum)")
    patience: Optional[int] = Field(None, ge=1, description="early stop after N epochs without a lower loss")
    perturb_every: Optional[int] = Field(None, description="multiply weights by U[0.9,1.1] every N epochs")
    pre_adjust_moves: int = Field(0, ge=0)
    pre_adjust_step: float = Field(0.005, gt=0)
    separate_kpoint_grad: bool = Field(True, description="backward per k-chunk (separateKptGrad)")
    kpoint_chunk: int = Field(8, ge=1)
    activation_checkpoint: bool = Field(False, description="recompute the network in backward (checkpoint)")
    print_grad: bool = Field(False, description="log per-layer gradient norms (printGrad)")
    reorder: Literal["none", "smooth", "eigvec"] = Field("none", description="band re-matching along the path")

    @model_validator(mode="after")
    def _needs_schedule(self):
        if self.epochs > 0:
            for name in ("lr", "scheduler_gamma", "scheduler_step", "plot_every"):
                if getattr(self, name) is None:
                    raise ValueError(f"training.{name} is required when training.epochs > 0")
        return self


class PenaltySection(_Section):
    decay_start: Optional[float] = Field(None, description="q (Bohr⁻¹) where the large-q penalty starts")
    decay_lambda: Optional[float] = None
    magnitude_threshold: Optional[float] = Field(None, description="bound on |v(r=0)| (Ha)")
    magnitude_lambda: Optional[float] = None


class MonteCarloSection(_Section):
    iterations: int = Field(ge=1)
    perturb_mode: int = Field(1, ge=1, le=7)
    step: float = Field(gt=0, description="relative step ε (mc_percentage)")
    beta: float = Field(description="inverse temperature, 1/√eV² (mc_beta)")
    beta_schedule: Optional[str] = Field(None, description="file of 'iteration beta' rows, relative to inputs")
    write_every: Optional[int] = Field(None, ge=1, description="mc_iter_N_* snapshot cadence (writePerIter)")


class RuntimeSection(_Section):
    workers: int = Field(0, ge=0, description="worker processes over k-points (num_cores); 0 = in process")
    threads: Optional[int] = Field(None, ge=1, description="torch threads of the main process (num_threads)")
    worker_threads: int = Field(1, ge=1, description="threads per worker process (blas_threads_per_worker)")
    show_plots: bool = Field(False, description="interactive plots (SHOWPLOTS) when a display exists")
    report_time: bool = Field(False, description="per-epoch timings (runtime_flag)")
    report_memory: bool = Field(False, description="peak RSS per epoch (memory_flag)")
    progress_bar: bool = True


class OutputSection(_Section):
    q_max: float = Field(20.0, gt=0, description="v(q) export grid end, Bohr⁻¹ (qmax)")
    n_q: int = Field(2048, ge=2, description="nQGrid")
    r_max: float = Field(25.0, gt=0, description="v(r) export grid end, Bohr (Rmax)")
    n_r: int = Field(2048, ge=2, description="nRGrid")


class BandsConfig(_Section):
    family: Literal["bands"] = "bands"
    inputs: str = Field(description="folder of the per-system DeePseudopot data files")
    n_systems: int = Field(ge=1, description="nSystem")
    seed: int = 0
    dtype: Literal["float64", "float32"] = "float64"
    model: ModelSection
    hamiltonian: HamiltonianSection = Field(default_factory=HamiltonianSection)
    prefit: PrefitSection = Field(default_factory=PrefitSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    penalties: PenaltySection = Field(default_factory=PenaltySection)
    monte_carlo: Optional[MonteCarloSection] = None
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _one_driver(self):
        if self.monte_carlo is not None and self.training.epochs > 0:
            raise ValueError("monte_carlo cannot be combined with training.epochs > 0")
        return self

    @property
    def nonlocal_enabled(self) -> bool:
        h = self.hamiltonian
        return h.spin_orbit if h.nonlocal_terms is None else h.nonlocal_terms


# ----------------------------------------------------------------------------- errors
def _models_of(annotation) -> list:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_of(arg)]


def _keys_at(loc: tuple) -> List[str]:
    """Field names valid in the mapping that holds ``loc[-1]``."""
    models = [BandsConfig]
    for part in loc[:-1]:
        models = [m for model in models if isinstance(part, str) and part in model.model_fields
                  for m in _models_of(model.model_fields[part].annotation)] or models
    return sorted({name for model in models for name in model.model_fields})


def _located(exc: ValidationError, file: Optional[str]) -> ConfigError:
    errors = sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden", -len(e["loc"])))
    err = errors[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    if err["type"] == "extra_forbidden":
        hint = suggest(str(loc[-1]), _keys_at(tuple(loc)))
        return ConfigError("unknown key", file=file, key=loc, hint=f"did you mean {hint!r}?" if hint else None)
    if err["type"] == "missing":
        return ConfigError("missing required key", file=file, key=loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] != "value_error" and not isinstance(err.get("input"), dict):
        message += f", got {err.get('input')!r}"
    return ConfigError(message, file=file, key=loc or None)


def _check_names(config: BandsConfig, file: Optional[str]) -> None:
    """Registry names (did-you-mean errors) and optimizer choices."""
    config.model.type = PP_MODELS.canonical(config.model.type, key="model.type", file=file)
    for section in ("prefit", "training"):
        name = getattr(config, section).optimizer.lower()
        if name == "sparseadam":
            raise not_supported(file, f"{section}.optimizer = sparseadam",
                                "SparseAdam needs sparse gradients; the network's are dense: use adam")
        getattr(config, section).optimizer = BAND_OPTIMIZERS.canonical(name, key=f"{section}.optimizer", file=file)


def validate_bands_config(data: dict, *, file: Optional[str] = None,
                          base_dir: Optional[Union[str, os.PathLike]] = None) -> BandsConfig:
    """Validate a native band config dict; ``inputs`` made absolute against ``base_dir``."""
    data = dict(data)
    if base_dir is not None and isinstance(data.get("inputs"), str) and not os.path.isabs(data["inputs"]):
        data["inputs"] = os.path.normpath(Path(base_dir) / data["inputs"])
    try:
        config = BandsConfig.model_validate(data)
    except ValidationError as exc:
        raise _located(exc, file) from None
    _check_names(config, file)
    if not Path(config.inputs).is_dir():
        raise ConfigError(f"no such folder: {config.inputs}", file=file, key="inputs")
    return config


def bands_config_to_yaml(config: Union[BandsConfig, dict]) -> str:
    """The YAML text of a config (defaults included, so users see every setting)."""
    data = config.model_dump(mode="json") if isinstance(config, BandsConfig) else config
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
