"""SCF and training-mode options of the fixed-point model, with MACE-SCF's validation rules.

``fixed_point_training_options`` of a stage (spec mace_scf.md §1.5) and the model's own ``scf``
section (the inference defaults) are read here:

* ``mode``: ``direct`` (one update from the data's density), ``unroll_scf`` (backpropagation
  through the iterations), ``implicit`` (converge, implicit-function gradients, observables from
  G(p*)), ``linearize_solve`` (converge, implicit-function gradients, observables from p*) and
  ``scf`` (inference: converge, implicit gradients; a frame that does not converge raises
  :class:`~mlpot.errors.SCFNotConvergedError` unless ``allow_unconverged``).
* ``scf``: ``num_scf_steps`` (100), ``scf_tolerance`` (1e-6), ``mixing_parameter`` (0.25, in
  (0, 1]), ``constant_charge`` (true), ``initial_density`` (local_guess | from_data | zero),
  ``initial_fermi_level`` (from_data | zero), ``use_autograd_forces`` (true). ``direct`` takes no
  ``scf`` block; ``unroll_scf``, ``implicit`` and ``linearize_solve`` need ``num_scf_steps`` and
  ``mixing_parameter``.
* ``linear_solve`` (implicit, linearize_solve): ``inverse`` or ``gmres`` (GMRES on the adjoint
  system; mlpot never forms the dense inverse) or ``normal_cg``.
* ``fallback`` (mlpot): what an implicit / linearize_solve training batch whose SCF did not
  converge does: ``unroll`` (a short unrolled SCF as the original, but logged and counted per
  epoch) or ``raise`` (:class:`~mlpot.errors.SCFNotConvergedError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional

from mlpot.errors import ConfigError, suggest

__all__ = ["MODES", "SCFOptions", "TrainingOptions", "parse_training_options", "parse_scf_options", "options_as_dict"]

MODES = ("direct", "unroll_scf", "implicit", "linearize_solve", "scf")
INITIAL_DENSITY = ("local_guess", "from_data", "zero")
INITIAL_FERMI = ("from_data", "zero")
LINEAR_SOLVES = ("inverse", "gmres", "normal_cg")
FALLBACKS = ("unroll", "raise")


@dataclass(frozen=True)
class SCFOptions:
    num_scf_steps: int = 100
    scf_tolerance: float = 1e-6
    mixing_parameter: float = 0.25
    constant_charge: bool = True
    initial_density: str = "local_guess"
    initial_fermi_level: str = "from_data"
    use_autograd_forces: bool = True


@dataclass(frozen=True)
class TrainingOptions:
    mode: str = "scf"
    scf: SCFOptions = field(default_factory=SCFOptions)
    linear_solve: str = "inverse"
    fallback: str = "unroll"


def _unknown(name: str, valid, key: str) -> ConfigError:
    hint = suggest(name, valid)
    return ConfigError(f"unknown key; valid: {', '.join(valid)}", key=f"{key}.{name}",
                       hint=f"did you mean {hint!r}?" if hint else None)


def _choice(value, valid, key: str) -> str:
    if value not in valid:
        hint = suggest(str(value), valid)
        raise ConfigError(f"expected one of {', '.join(valid)}, got {value!r}", key=key,
                          hint=f"did you mean {hint!r}?" if hint else None)
    return str(value)


def parse_scf_options(values: Mapping[str, Any], key: str = "scf", base: SCFOptions = SCFOptions(),
                      require_steps: bool = False) -> SCFOptions:
    """SCFOptions from a mapping (defaults from ``base``); ConfigError at ``key`` for bad values."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"expected a mapping, got {type(values).__name__}", key=key)
    names = list(SCFOptions.__dataclass_fields__)
    for name in values:
        if name not in names:
            raise _unknown(str(name), names, key)
    if require_steps:
        missing = [n for n in ("num_scf_steps", "mixing_parameter") if n not in values]
        if missing:
            raise ConfigError(f"missing {' and '.join(missing)} (required for this mode)", key=key)
    options = replace(base, **dict(values))
    if not isinstance(options.num_scf_steps, int) or options.num_scf_steps < 1:
        raise ConfigError(f"must be an integer >= 1, got {options.num_scf_steps!r}", key=f"{key}.num_scf_steps")
    if not 0.0 < float(options.mixing_parameter) <= 1.0:
        raise ConfigError(f"must be in (0, 1], got {options.mixing_parameter!r}", key=f"{key}.mixing_parameter")
    if not float(options.scf_tolerance) > 0.0:
        raise ConfigError(f"must be > 0, got {options.scf_tolerance!r}", key=f"{key}.scf_tolerance")
    _choice(options.initial_density, INITIAL_DENSITY, f"{key}.initial_density")
    _choice(options.initial_fermi_level, INITIAL_FERMI, f"{key}.initial_fermi_level")
    return replace(options, mixing_parameter=float(options.mixing_parameter), scf_tolerance=float(options.scf_tolerance),
                   constant_charge=bool(options.constant_charge), use_autograd_forces=bool(options.use_autograd_forces))


def parse_training_options(values: Optional[Mapping[str, Any]], key: str = "fixed_point_training_options",
                           base_scf: SCFOptions = SCFOptions()) -> TrainingOptions:
    """TrainingOptions of a stage (module docstring); ConfigError naming ``key`` + the bad key."""
    values = dict(values or {})
    valid = ["mode", "scf", "linear_solve", "fallback"]
    for name in values:
        if name not in valid:
            raise _unknown(str(name), valid, key)
    mode = _choice(values.get("mode", "scf"), MODES, f"{key}.mode")
    if mode == "direct" and "scf" in values:
        raise ConfigError("mode 'direct' takes no scf block", key=f"{key}.scf")
    needs_steps = mode in ("unroll_scf", "implicit", "linearize_solve")
    if needs_steps and "scf" not in values:
        raise ConfigError(f"mode {mode!r} needs an scf block with num_scf_steps and mixing_parameter", key=f"{key}.scf")
    scf = parse_scf_options(values.get("scf", {}), f"{key}.scf", base_scf, require_steps=needs_steps)
    linear_solve = _choice(values.get("linear_solve", "inverse"), LINEAR_SOLVES, f"{key}.linear_solve")
    fallback = _choice(values.get("fallback", "unroll"), FALLBACKS, f"{key}.fallback")
    return TrainingOptions(mode, scf, linear_solve, fallback)


def options_as_dict(options: TrainingOptions) -> Dict[str, Any]:
    """The mapping :func:`parse_training_options` reads back to ``options``."""
    scf = {name: getattr(options.scf, name) for name in SCFOptions.__dataclass_fields__}
    out: Dict[str, Any] = {"mode": options.mode, "linear_solve": options.linear_solve, "fallback": options.fallback}
    if options.mode != "direct":
        out["scf"] = scf
    return out

