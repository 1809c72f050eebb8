"""MACE-SCF's ``heads`` and ``train_schedule`` blocks (spec mace_scf.md §1.5, §4) -> native pieces.

* ``heads``: exactly one head with ``info_keys`` and ``arrays_keys`` (both required; the info key
  ``total_charge`` is mandatory) -> the extxyz ``key_map`` (file key -> batch key).
* ``train_schedule``: keys 0..n-1, stage i starts at stage i-1's end + 1, the first at 0; ``name``,
  ``start``, ``end`` (inclusive) required, ``lr`` 0.01 by default; ``loss``: MACE-SCF loss names,
  each a float weight or ``{weight: w, <option>: ...}``; ``fixed_point_training_options``
  mandatory for FixedPoint and forbidden otherwise (checked by the model's option parser);
  ``<group>_lr`` sets one optimizer group's lr in the stage.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from mlpot.data import keys as K
from mlpot.errors import ConfigError, suggest
from mlpot.models.fixed_point import parse_training_options

__all__ = ["HEAD_PROPERTIES", "key_map_of_heads", "translate_schedule", "PARAMETER_GROUPS", "LOSS_NAMES"]

# property names of a head -> batch keys
HEAD_PROPERTIES = {
    "energy": K.ENERGY, "forces": K.FORCES, "stress": K.STRESS, "virials": K.VIRIAL, "dipole": K.DIPOLE,
    "total_charge": K.TOTAL_CHARGE, "fermi_level": K.FERMI_LEVEL, "external_field": K.EXTERNAL_FIELD,
    "polarizability": K.POLARIZABILITY, "atomic_multipoles": K.ATOMIC_MULTIPOLES, "charges": K.CHARGES,
    "electrostatic_potentials": K.ESPS, "esps": K.ESPS, "molID": K.MOL_ID,
}
# MACE-SCF loss name -> native term name (polarizability: MACE-SCF divides by N)
LOSS_NAMES = {
    "energy_per_atom": "energy_per_atom", "forces": "forces", "stress": "stress", "atomic_multipoles": "atomic_multipoles",
    "total_charge": "total_charge", "total_charge_per_atom": "total_charge_per_atom", "dipole": "dipole",
    "dipole_per_atom": "dipole_per_atom", "polarizability": "polarizability_per_atom", "fermi_level": "fermi_level",
    "fermi_level_per_atom": "fermi_level_per_atom", "esps": "esps", "cluster_virial": "cluster_virial",
    "cluster_virial_per_atom": "cluster_virial_per_atom", "molecular_forces": "molecular_forces",
    "field_features": "field_features", "fixedpoint_scf_stability": "fixedpoint_scf_stability",
}
_NOT_BUILT_LOSSES = ("final_terms_fixedpoint_scf_stability", "fermi_level_gradient", "rho_fftn", "fourier_density")
_LOSS_OPTIONS = {"weight", "smooth", "beta", "offset"}
# MACE-SCF's optimizer parameter groups -> parameter-name patterns of the mlpot model
PARAMETER_GROUPS = {
    "embedding": ["backbone.model.node_embedding.*"],
    "interactions": ["backbone.model.interactions.*", "backbone.model.radial_embedding.*"],
    "products": ["backbone.model.products.*"],
    "readouts": ["backbone.model.readouts.*"],
    "lr_source_maps": ["local_density.*"],
    "field_dependent_charges_map": ["update.*"],
    "local_electron_energy": ["readout.*"],
    "layer_feature_mixer": ["mixer.*"],
}


def key_map_of_heads(heads: Any, file: Optional[str]) -> Dict[str, str]:
    """The extxyz key map (file key -> batch key) of the single head."""
    if not isinstance(heads, Mapping) or len(heads) != 1:
        raise ConfigError("needs exactly one head (MACE-SCF trains a single head)", file=file, key="heads")
    (name, head), = heads.items()
    if not isinstance(head, Mapping) or set(head) != {"info_keys", "arrays_keys"}:
        raise ConfigError("needs exactly the sub-dicts info_keys and arrays_keys", file=file, key=f"heads.{name}")
    key_map: Dict[str, str] = {}
    for part in ("info_keys", "arrays_keys"):
        for prop, file_key in (head[part] or {}).items():
            if prop not in HEAD_PROPERTIES:
                hint = suggest(prop, HEAD_PROPERTIES)
                raise ConfigError("unknown property", file=file, key=f"heads.{name}.{part}.{prop}",
                                  hint=f"did you mean {hint!r}?" if hint else None)
            key_map[str(file_key)] = HEAD_PROPERTIES[prop]
    if "total_charge" not in (head["info_keys"] or {}):
        raise ConfigError("total_charge is required (the info key holding each frame's net charge)", file=file,
                          key=f"heads.{name}.info_keys.total_charge")
    return key_map


def _loss_terms(loss: Any, where: str, file: Optional[str]) -> Dict[str, Dict[str, Any]]:
    if not isinstance(loss, Mapping) or not loss:
        raise ConfigError("needs a mapping of loss names to weights", file=file, key=where)
    terms: Dict[str, Dict[str, Any]] = {}
    for name, value in loss.items():
        if name in _NOT_BUILT_LOSSES:
            raise ConfigError(f"not supported yet: loss {name!r}", file=file, key=f"{where}.{name}")
        if name not in LOSS_NAMES:
            hint = suggest(str(name), LOSS_NAMES)
            raise ConfigError("unknown loss", file=file, key=f"{where}.{name}", hint=f"did you mean {hint!r}?" if hint else None)
        if isinstance(value, Mapping):
            unknown = set(value) - _LOSS_OPTIONS
            if unknown or "weight" not in value:
                raise ConfigError(f"a loss dict needs 'weight' and takes only {sorted(_LOSS_OPTIONS)}", file=file,
                                  key=f"{where}.{name}")
            terms[LOSS_NAMES[name]] = {k: v for k, v in value.items()}
        else:
            terms[LOSS_NAMES[name]] = {"weight": float(value)}
    return terms


def translate_schedule(schedule: Any, fixed_point: bool, file: Optional[str]) -> Tuple[List[Dict[str, Any]], int]:
    """(native stages, number of epochs) of ``train_schedule`` (module docstring)."""
    if not isinstance(schedule, Mapping) or not schedule:
        raise ConfigError("is required: stages 0..n-1 with name, start, end", file=file, key="train_schedule")
    keys = sorted(schedule, key=lambda k: int(k))
    if [int(k) for k in keys] != list(range(len(keys))):
        raise ConfigError(f"keys must be 0..{len(keys) - 1}, got {list(schedule)}", file=file, key="train_schedule")
    stages, expected = [], 0
    for k in keys:
        stage, where = dict(schedule[k]), f"train_schedule.{k}"
        for required in ("name", "start", "end"):
            if required not in stage:
                raise ConfigError(f"missing required key {required!r}", file=file, key=f"{where}.{required}")
        if int(stage["start"]) != expected:
            raise ConfigError(f"starts at {stage['start']}, expected {expected} (the previous end + 1)", file=file,
                              key=f"{where}.start")
        expected = int(stage["end"]) + 1
        group_lr = {name[:-3]: float(stage.pop(name)) for name in list(stage) if name.endswith("_lr")}
        unknown_groups = set(group_lr) - set(PARAMETER_GROUPS)
        if unknown_groups:
            raise ConfigError(f"unknown optimizer group(s) {sorted(unknown_groups)}; groups: {sorted(PARAMETER_GROUPS)}",
                              file=file, key=where)
        options = stage.pop("fixed_point_training_options", None)
        unknown = set(stage) - {"name", "start", "end", "lr", "loss"}
        if unknown:
            name = sorted(unknown)[0]
            hint = suggest(name, ["name", "start", "end", "lr", "loss", "fixed_point_training_options"])
            raise ConfigError("unknown key", file=file, key=f"{where}.{name}", hint=f"did you mean {hint!r}?" if hint else None)
        native = {"name": str(stage["name"]), "start": int(stage["start"]), "end": int(stage["end"]),
                  "lr": float(stage.get("lr", 0.01)), "group_lr": group_lr,
                  "loss": _loss_terms(stage.get("loss"), f"{where}.loss", file)}
        if fixed_point:
            if options is None:
                raise ConfigError("is required for FixedPoint", file=file, key=f"{where}.fixed_point_training_options")
            try:
                parse_training_options(options, key=f"{where}.fixed_point_training_options")
            except ConfigError as error:
                raise ConfigError(error.message, file=file, key=error.key, hint=error.hint) from None
            native["model_options"] = {"fixed_point_training_options": dict(options)}
        elif options is not None:
            raise ConfigError("is only for --model FixedPoint", file=file, key=f"{where}.fixed_point_training_options")
        stages.append(native)
    return stages, expected
