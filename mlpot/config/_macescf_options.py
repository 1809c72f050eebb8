"""The run_train options MACE-SCF reads (spec mace_scf.md §1.4), their defaults, and their parsing.

MACE-SCF extends mace-torch's ``mace_run_train`` parser (configargparse: ``--config config.yaml``
supplies any option, the command line overrides it). The table is split in two:
:func:`mace_options` (the mace-torch part: names, data, architecture, optimiser) and
:func:`scf_options` (the fixed-point additions). The MACE part is a separate function so that the
MACE front-end (``config/mace.py``, on its own branch) can replace it when it lands.

Each option: (default, kind, status); kind is how a command-line string is read (int, float,
bool (MACE's str2bool), str, list / dict (a Python or YAML literal)); status ``ok`` (translated),
``not supported yet`` (any value other than the default raises) or ``logging`` (only changes what
the original prints or where: accepted, noted in docs/compatibility.md).
"""

from __future__ import annotations

import ast
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from mlpot.errors import ConfigError, suggest

__all__ = ["Option", "mace_options", "scf_options", "all_options", "read_options", "NOT_BUILT", "LOGGING"]

NOT_BUILT = "not supported yet"
LOGGING = "logging"
Option = Tuple[Any, str, str]


def mace_options() -> Dict[str, Option]:
    """mace-torch 0.3.14 run_train options MACE-SCF runs with (the MACE part; see module docstring)."""
    ok = "ok"
    return {
        "name": (None, "str", ok), "seed": (123, "int", ok), "work_dir": (".", "str", ok),
        "log_dir": (None, "str", LOGGING), "model_dir": (None, "str", LOGGING), "checkpoints_dir": (None, "str", LOGGING),
        "results_dir": (None, "str", LOGGING), "device": ("cpu", "str", ok), "default_dtype": ("float64", "str", ok),
        "log_level": ("INFO", "str", LOGGING), "error_table": ("PerAtomRMSE", "str", LOGGING),
        "model": ("MACE", "str", ok), "r_max": (5.0, "float", ok), "radial_type": ("bessel", "str", ok),
        "num_radial_basis": (8, "int", ok), "num_cutoff_basis": (5, "int", ok), "pair_repulsion": (False, "bool", ok),
        "distance_transform": ("None", "str", ok), "interaction": ("RealAgnosticResidualInteractionBlock", "str", ok),
        "interaction_first": ("RealAgnosticResidualInteractionBlock", "str", ok), "max_ell": (3, "int", ok),
        "correlation": (3, "int", ok), "num_interactions": (2, "int", ok), "MLP_irreps": ("16x0e", "str", ok),
        "radial_MLP": ("[64, 64, 64]", "str", ok), "hidden_irreps": (None, "str", ok), "num_channels": (None, "int", ok),
        "max_L": (None, "int", ok), "gate": ("silu", "str", ok), "avg_num_neighbors": (1.0, "float", ok),
        "compute_avg_num_neighbors": (True, "bool", ok), "compute_stress": (False, "bool", ok),
        "compute_forces": (True, "bool", ok), "train_file": (None, "str", ok), "valid_file": (None, "str", ok),
        "valid_fraction": (0.1, "float", ok), "test_file": (None, "str", NOT_BUILT), "test_dir": (None, "str", NOT_BUILT),
        "statistics_file": (None, "str", NOT_BUILT), "atomic_numbers": (None, "list", ok), "E0s": (None, "str", ok),
        "heads": (None, "dict", ok), "energy_key": (None, "str", ok), "forces_key": (None, "str", ok),
        "dipole_key": (None, "str", ok), "charges_key": (None, "str", ok), "total_charge_key": (None, "str", ok),
        "polarizability_key": (None, "str", ok), "stress_key": (None, "str", ok), "virials_key": (None, "str", ok),
        "loss": ("weighted", "str", ok), "config_type_weights": ('{"Default":1.0}', "dict", NOT_BUILT),
        "optimizer": ("schedulefree", "str", ok), "batch_size": (10, "int", ok), "valid_batch_size": (10, "int", ok),
        "lr": (0.01, "float", ok), "weight_decay": (5e-7, "float", ok), "amsgrad": (True, "bool", ok),
        "beta": (0.9, "float", ok), "scheduler": ("ReduceLROnPlateau", "str", ok), "lr_factor": (0.8, "float", ok),
        "scheduler_patience": (50, "int", ok), "lr_scheduler_gamma": (0.9993, "float", ok), "ema": (False, "bool", ok),
        "ema_decay": (0.99, "float", ok), "max_num_epochs": (2048, "int", ok), "patience": (2048, "int", LOGGING),
        "eval_interval": (1, "int", ok), "keep_checkpoints": (False, "bool", LOGGING),
        "save_all_checkpoints": (False, "bool", LOGGING), "restart_latest": (True, "bool", ok),
        "save_cpu": (False, "bool", LOGGING), "clip_grad": (10.0, "float", ok), "distributed": (False, "bool", NOT_BUILT),
        "swa": (False, "bool", NOT_BUILT), "wandb": (False, "bool", NOT_BUILT), "num_workers": (0, "int", LOGGING),
        "pin_memory": (True, "bool", LOGGING), "foundation_model": (None, "str", NOT_BUILT), "dry_run": (False, "bool", NOT_BUILT),
        "enable_cueq": (False, "bool", NOT_BUILT), "plot": (False, "bool", LOGGING),
    }


def scf_options() -> Dict[str, Option]:
    """MACE-SCF's additions (spec §1.4)."""
    ok = "ok"
    return {
        "train_schedule": (None, "dict", ok), "atomic_multipoles_max_l": (1, "int", ok),
        "atomic_multipoles_smearing_width": (1.5, "float", ok), "kspace_cutoff_factor": (1.25, "float", ok),
        "electrostatic_pbc_method": ("mixed_periodic", "str", ok), "include_electrostatic_self_interaction": (True, "bool", ok),
        "quadrupole_feature_corrections": (False, "bool", NOT_BUILT), "return_electrostatic_potentials": (False, "bool", ok),
        "override_pbc_checks": (False, "bool", ok), "allow_low_density_pbc": (False, "bool", ok),
        "low_density_pbc_max_volume_per_atom": (100.0, "float", ok), "field_feature_max_l": (1, "int", ok),
        "field_feature_widths": ([1.0, 2.0], "list", ok), "field_feature_norms": ("None", "str", ok),
        "include_field_si": (False, "bool", ok), "field_norm_factor": (1.0, "float", ok),
        "fixedpoint_update_config": (None, "dict", ok), "field_readout_config": (None, "dict", ok),
        "include_local_electron_energy": (True, "bool", ok), "use_linear_local_charges": (False, "bool", ok),
        "atom_density_scaling": ("None", "str", ok), "fermi_level_offset": (None, "float", ok),
        "field_block_weight_decay": (5e-7, "float", ok), "local_charges_weight_decay": (5e-7, "float", ok),
        "beta_two": (0.999, "float", ok), "log_on_test_sets": (False, "bool", LOGGING),
        "skip_scf_convergence_summary": (False, "bool", ok), "wandb_watch": (False, "bool", NOT_BUILT),
        "wandb_watch_log_freq": (50, "int", LOGGING), "debug_log_grad_summary": (False, "bool", LOGGING),
        "compute_polarizability": (True, "bool", ok),
    }


def all_options() -> Dict[str, Option]:
    return {**mace_options(), **scf_options()}


def _str2bool(text: str, name: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise ConfigError(f"expected a boolean, got {text!r}", key=f"--{name}")


def parse_value(name: str, value: Any, kind: str) -> Any:
    """A command-line string (or a YAML value) as the option's kind."""
    if not isinstance(value, str) or kind == "str":
        return value
    try:
        if kind == "bool":
            return _str2bool(value, name)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return yaml.safe_load(value)
    except (ValueError, yaml.YAMLError):
        raise ConfigError(f"expected a {kind}, got {value!r}", key=f"--{name}") from None


def _canonical_name(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def read_options(argv: Sequence[str], config: Optional[Mapping[str, Any]] = None,
                 file: Optional[str] = None) -> Dict[str, Any]:
    """Options from the config file's mapping, overridden by ``argv`` (``--name value`` pairs or
    ``--name=value``; a bare ``--flag`` means true). Unknown names raise with a suggestion."""
    table = all_options()
    values: Dict[str, Any] = {name: default for name, (default, _, _) in table.items()}
    given: Dict[str, Any] = {}
    for name, value in (config or {}).items():
        given[_canonical_name(str(name))] = (value, file)
    items: List[str] = list(argv)
    index = 0
    while index < len(items):
        token = items[index]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r} (options are --name value)", key="run_train")
        name, _, inline = token.partition("=")
        if "=" in token:
            given[_canonical_name(name)] = (inline, None)
            index += 1
        elif index + 1 < len(items) and not items[index + 1].startswith("--"):
            given[_canonical_name(name)] = (items[index + 1], None)
            index += 2
        else:
            given[_canonical_name(name)] = ("True", None)
            index += 1
    for name, (value, source) in given.items():
        if name not in table:
            hint = suggest(name, table)
            raise ConfigError("unknown run_train option", file=source, key=f"--{name}",
                              hint=f"did you mean '--{hint}'?" if hint else None)
        default, kind, status = table[name]
        parsed = parse_value(name, value, kind)
        if status == NOT_BUILT and parsed != default and parsed not in (None, False, "None"):
            raise ConfigError(f"not supported yet: --{name} {value!r}", file=source, key=f"--{name}")
        values[name] = parsed
    values["_given"] = sorted(given)
    return values
