"""MACE-SCF front-end: ``mlpot train --config config.yaml --option value ...`` -> native config.

MACE-SCF's ``scripts/run_train.py`` reads its options with configargparse: ``config.yaml`` may
hold any option (``heads`` and ``train_schedule`` in particular), the command line overrides it.
This module turns the options into the native config (translation only, no data read):

* ``--model`` FixedPoint | LocalCharges | LocalSplitCharges | FixedChargeBaselinedMACE | MACEQEq:
  an electrostatic model (``models/fixed_point``) on a MACE backbone built from the mace-torch
  options (``atomic_numbers`` when not given, ``E0s`` "average" and ``avg_num_neighbors`` are
  computed from the training data by the family's data hook, as run_train does);
* data: ``train_file`` / ``valid_file`` (or ``valid_fraction``) as extxyz with the key map of
  ``heads``; ``batch_size`` / ``valid_batch_size``;
* ``train_schedule`` -> native stages (epochs, inclusive), the stage's ``fixed_point_training_options``
  -> the model options of the stage, ``<group>_lr`` -> the group's lr;
* optimiser: adam / adamw (amsgrad, ``beta``, ``beta_two``), ``weight_decay``, MACE-SCF's
  parameter groups with ``field_block_weight_decay`` / ``local_charges_weight_decay``; MACE-SCF's
  default ``schedulefree`` needs the schedulefree package, which mlpot does not use: without an
  explicit ``--optimizer`` the run uses adamw and says so (``notes`` of the result);
* ReduceLROnPlateau (``lr_factor``, ``scheduler_patience``) or ExponentialLR (``lr_scheduler_gamma``
  per epoch), ``ema`` / ``ema_decay``, ``clip_grad``, ``default_dtype``, ``seed``.

Checks of the original: every ``*_key`` option must be unset (keys only through ``heads``);
``compute_forces`` must be true; only ``.xyz`` files; h5 / ``test_dir`` / ``statistics_file``
rejected; pbc / method consistency is checked when the frames are read (electrostatics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mlpot.config._macescf_options import read_options
from mlpot.config._macescf_schedule import PARAMETER_GROUPS, key_map_of_heads, translate_schedule
from mlpot.config.loader import read_yaml
from mlpot.errors import ConfigError

__all__ = ["is_macescf_config", "convert_options", "convert_run_train", "MODEL_TYPES", "mace_backbone_section"]

MODEL_TYPES = {"FixedPoint": "fixed_point", "LocalCharges": "local_charges", "LocalSplitCharges": "local_split_charges",
               "FixedChargeBaselinedMACE": "fixed_charge_baselined", "MACEQEq": "qeq"}
_KEY_OPTIONS = ("energy_key", "forces_key", "dipole_key", "charges_key", "total_charge_key", "polarizability_key",
                "stress_key", "virials_key")


def is_macescf_config(path) -> bool:
    """True for a YAML with MACE-SCF's ``heads`` and ``train_schedule``."""
    try:
        data = read_yaml(path)
    except ConfigError:
        return False
    return "heads" in data and "train_schedule" in data


def mace_backbone_section(options: Mapping[str, Any]) -> Dict[str, Any]:
    """The MACE backbone section of the mace-torch options (the part ``config/mace.py`` will own)."""
    section = {"type": "mace", "model": "MACE"}
    for name in ("r_max", "radial_type", "num_radial_basis", "num_cutoff_basis", "pair_repulsion", "distance_transform",
                 "interaction", "interaction_first", "max_ell", "correlation", "num_interactions", "MLP_irreps",
                 "radial_MLP", "hidden_irreps", "num_channels", "max_L", "gate"):
        if options.get(name) is not None:
            section[name] = options[name]
    if options.get("atomic_numbers") is not None:
        section["atomic_numbers"] = [int(z) for z in options["atomic_numbers"]]
    section["E0s"] = options["E0s"] if options.get("E0s") not in (None, "None") else "average"
    section["avg_num_neighbors"] = "auto" if options.get("compute_avg_num_neighbors", True) else float(options["avg_num_neighbors"])
    return section


def _electrostatics(options: Mapping[str, Any], kind: str) -> Dict[str, Any]:
    names = ["atomic_multipoles_max_l", "atomic_multipoles_smearing_width", "kspace_cutoff_factor", "electrostatic_pbc_method",
             "include_electrostatic_self_interaction", "return_electrostatic_potentials"]
    if kind == "fixed_point":
        names += ["field_feature_max_l", "field_feature_widths", "include_field_si", "field_norm_factor", "fermi_level_offset",
                  "use_linear_local_charges", "include_local_electron_energy"]
    section = {name: options[name] for name in names if options.get(name) is not None}
    for name in ("field_feature_norms", "atom_density_scaling"):
        value = options.get(name)
        if kind == "fixed_point" or name == "atom_density_scaling":
            section[name] = None if value in (None, "None", "none") else value
    if kind == "fixed_point":
        for name in ("fixedpoint_update_config", "field_readout_config"):
            if options.get(name):
                section[name] = dict(options[name])
        section["scf_convergence_summary"] = not options.get("skip_scf_convergence_summary", False)
        # inference output (training computes it when a loss asks for it)
        section["compute_polarizability"] = bool(options.get("compute_polarizability"))
    return section


def _optimizer(options: Mapping[str, Any], notes: List[str], file: Optional[str]) -> Dict[str, Any]:
    name = str(options["optimizer"]).lower()
    if name == "schedulefree":
        if "optimizer" in options["_given"]:
            raise ConfigError("not supported yet: --optimizer schedulefree (use adam or adamw)", file=file, key="--optimizer")
        notes.append("MACE-SCF's default optimizer schedulefree is not available in mlpot: training uses adamw "
                     "(pass --optimizer adam or adamw to choose)")
        name = "adamw"
    if name not in ("adam", "adamw"):
        raise ConfigError(f"expected adam, adamw or schedulefree, got {options['optimizer']!r}", file=file, key="--optimizer")
    groups = []
    decay = {"embedding": 0.0, "lr_source_maps": options["local_charges_weight_decay"],
             "field_dependent_charges_map": options["field_block_weight_decay"]}
    for group, patterns in PARAMETER_GROUPS.items():
        entry = {"name": group, "params": patterns}
        if group in decay:
            entry["weight_decay"] = float(decay[group])
        groups.append(entry)
    return {"name": name, "lr": float(options["lr"]), "weight_decay": float(options["weight_decay"]),
            "betas": [float(options["beta"]), float(options["beta_two"])], "kwargs": {"amsgrad": bool(options["amsgrad"])},
            "groups": groups}


def _schedule(options: Mapping[str, Any], file: Optional[str]) -> Dict[str, Any]:
    scheduler = str(options["scheduler"])
    if scheduler == "ReduceLROnPlateau":
        return {"type": "plateau", "factor": float(options["lr_factor"]), "patience": int(options["scheduler_patience"])}
    if scheduler == "ExponentialLR":
        # mace-torch steps ExponentialLR once per epoch
        return {"type": "exp", "per_epoch": True, "decay_steps": 1, "decay_rate": float(options["lr_scheduler_gamma"]),
                "stop_lr": 0.0}
    raise ConfigError(f"expected ReduceLROnPlateau or ExponentialLR, got {scheduler!r}", file=file, key="--scheduler")


def _data(options: Mapping[str, Any], key_map: Dict[str, str], file: Optional[str], base: Path) -> Dict[str, Any]:
    def path_of(name):
        value = options.get(name)
        if value is None:
            return None
        if not str(value).endswith(".xyz"):
            raise ConfigError(f"only .xyz files are accepted, got {value!r}", file=file, key=f"--{name}")
        return str((base / value) if not Path(value).is_absolute() else Path(value))

    train = path_of("train_file")
    if train is None:
        raise ConfigError("is required", file=file, key="--train_file")
    data = {"train": {"paths": [train], "format": "extxyz", "key_map": key_map, "batch_size": int(options["batch_size"]),
                      "sampler": "epoch"}}
    valid = path_of("valid_file")
    if valid is not None:
        data["valid"] = {"paths": [valid], "format": "extxyz", "key_map": key_map,
                         "batch_size": int(options["valid_batch_size"]), "sampler": "epoch", "shuffle": False}
    elif float(options["valid_fraction"]) > 0:
        data["valid_fraction"] = float(options["valid_fraction"])  # held out as mace-torch splits, seeded by seed
        data["valid"] = {"paths": [], "batch_size": int(options["valid_batch_size"]), "sampler": "epoch", "shuffle": False}
    return data


def convert_options(options: Dict[str, Any], file: Optional[str] = None, base: Path = Path(".")) -> Tuple[Dict[str, Any], List[str]]:
    """(native config dict, notes) of parsed run_train options (module docstring)."""
    notes: List[str] = []
    model_name = str(options["model"])
    if model_name not in MODEL_TYPES:
        raise ConfigError(f"expected one of {', '.join(MODEL_TYPES)} (mlpot's MACE-SCF front-end); got {model_name!r}",
                          file=file, key="--model")
    for name in _KEY_OPTIONS:
        if options.get(name) is not None:
            raise ConfigError("must be unset: keys come from the heads block of the config", file=file, key=f"--{name}")
    if not options["compute_forces"]:
        raise ConfigError("must be true for MACE-SCF models", file=file, key="--compute_forces")
    kind = MODEL_TYPES[model_name]
    key_map = key_map_of_heads(options.get("heads"), file)
    stages, epochs = translate_schedule(options.get("train_schedule"), kind == "fixed_point", file)
    model = {"type": kind, "backbone": mace_backbone_section(options), **_electrostatics(options, kind)}
    dtype = str(options["default_dtype"])
    native = {
        "family": "macescf", "seed": int(options["seed"]), "dtype": dtype if dtype in ("float32", "float64") else "float64",
        "output_dir": str(base / options["work_dir"]), "model": model, "data": _data(options, key_map, file, base),
        "optimizer": _optimizer(options, notes, file), "lr_schedule": _schedule(options, file),
        "training": {"numb_epochs": epochs, "clip_grad_norm": float(options["clip_grad"]) if options["clip_grad"] else None,
                     "change_bias_after_training": False},
        "train_schedule": stages,
        "logging": {"debug_log": f"logs/{options['name'] or 'mlpot'}_run-{int(options['seed'])}_debug.log"},
    }
    if options["ema"]:
        native["ema"] = {"decay": float(options["ema_decay"])}
    return native, notes


def convert_run_train(argv: Sequence[str], config_path: Optional[str] = None) -> Tuple[Dict[str, Any], List[str]]:
    """Native config of ``run_train`` arguments: ``--config FILE`` plus overriding options."""
    argv = list(argv)
    if config_path is None and "--config" in argv:
        at = argv.index("--config")
        config_path = argv[at + 1] if at + 1 < len(argv) else None
        del argv[at:at + 2]
    config = read_yaml(config_path) if config_path else {}
    options = read_options(argv, config, config_path)
    base = Path(config_path).resolve().parent if config_path else Path.cwd()
    return convert_options(options, config_path, base)

