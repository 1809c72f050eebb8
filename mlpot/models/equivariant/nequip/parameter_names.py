"""NequIP 0.19 <-> mlpot names: model configs and parameter names.

Config: the ``model`` of a NequIP training module (``nequip.model.NequIPGNNModel``,
``PresetNequIPGNNModel``, or ``nequip.model.modify`` around one of them with the persistent
modifiers ``modify_PerTypeScaleShift`` / ``enable_ForceStressOutput`` / ``disable_ForceStressOutput``)
becomes a :class:`NequIPModelSection` dict; keys keep their names.

Weights: NequIP names are taken relative to the energy model (``...model.func.``):

| NequIP                                                      | mlpot                                   |
|-------------------------------------------------------------|-----------------------------------------|
| ``type_embed.embed_module.weight``                          | ``type_embedding.weight``               |
| ``bessel_encode.bessel_weights`` (1, N), n                  | ``bessel.weights`` (N,), n π / r_max    |
| ``layer{i}_convnet.conv.linear_1.weight``                   | ``layers.{i}.linear_in.weight``         |
| ``layer{i}_convnet.conv.edge_mlp.mlp.{2k}.weight``          | ``layers.{i}.radial_mlp.layer{k}.weight`` |
| ``layer{i}_convnet.conv.linear_2.weight``                   | ``layers.{i}.linear_out.weight``        |
| ``layer{i}_convnet.conv.sc.weight``                         | ``layers.{i}.self_connection.weight``   |
| ``per_atom_energy_readout.mlp_module.mlp.{j}.weight`` [1]   | ``readout.layer{k}.weight``             |
| ``per_type_energy_scale_shift.scales`` / ``.shifts`` (T, 1) | ``scale_shift.scales`` / ``.shifts`` (T,) |

[1] j = 2k with a nonlinearity between layers, j = k without one; ``mlp.weights.{k}`` when NequIP
fused a deep linear readout (no nonlinearity, no bias, several layers).
Constant buffers (``edge_norm._rmax_recip``, ``pair_potential.atomic_numbers``,
``pair_potential._qqr2exesquare``, non-trainable ``bessel_weights``) are checked against the
config, and Wigner 3j constants of e3nn's generated code (``..._compiled_*._w3j_l1_l2_l3``) against
e3nn's; e3nn's empty biases, output masks, the empty weights of the edge tensor product and the
gate, other generated-code constants and ``_empty`` carry no information and are skipped.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Tuple

from mlpot.errors import CheckpointError, ConfigError, suggest

__all__ = ["nequip_section_from_config", "nequip_to_mlpot_name", "apply_modifier", "MODIFIERS", "IGNORED_NEQUIP_BUFFERS", "CHECKED_NEQUIP_BUFFERS", "WIGNER_BUFFER"]

_BUILDERS = {"nequip.model.NequIPGNNModel": None, "nequip.model.PresetNequIPGNNModel": "preset"}
_ZBL_TARGETS = ("nequip.nn.pair_potential.ZBL", "nequip.nn.ZBL")
_IGNORED_PATTERNS = (r".*\.bias$", r".*\.output_mask$", r".*tp_scatter\.tp\.weight$", r".*equivariant_nonlin\..*\.weight$", r"^_empty$",
                     r".*\._compiled_[a-z_]+\._tensor_constant\d+$")
IGNORED_NEQUIP_BUFFERS = tuple(re.compile(p) for p in _IGNORED_PATTERNS)
CHECKED_NEQUIP_BUFFERS = ("edge_norm._rmax_recip", "pair_potential.atomic_numbers", "pair_potential._qqr2exesquare")
# constants of e3nn's generated code that some files carry: Wigner 3j symbols (checked against e3nn's)
WIGNER_BUFFER = re.compile(r".*\._compiled_[a-z_]+\._w3j_(\d+)_(\d+)_(\d+)$")


MODIFIERS = {"modify_PerTypeScaleShift": {"scales", "shifts", "scales_trainable", "shifts_trainable"},
             "enable_ForceStressOutput": set(), "disable_ForceStressOutput": set()}
_ACCELERATION_MODIFIERS = ("enable_OpenEquivariance", "enable_CuEquivariance", "enable_TritonContracter")


def apply_modifier(section: Dict[str, Any], modifier: Dict[str, Any], file=None, key: str = "modifiers",
                   check_only: bool = False) -> None:
    """Apply one of NequIP's persistent modifiers to a section dict in place (``modify_PerTypeScaleShift``:
    new scales/shifts for the types given, on top of the section's; ``enable|disable_ForceStressOutput``:
    ``do_derivatives``). ConfigError at ``key`` for unknown or unsupported modifiers and arguments."""
    name = modifier.get("modifier")
    if name in _ACCELERATION_MODIFIERS:
        raise ConfigError(f"not supported yet: modifier {name} (NequIP's GPU tensor-product kernels)", file=file,
                          key=f"{key}.modifier")
    if name not in MODIFIERS:
        hint = suggest(str(name), list(MODIFIERS))
        raise ConfigError(f"unknown model modifier {name!r}; valid: {sorted(MODIFIERS)}", file=file, key=f"{key}.modifier",
                          hint=f"did you mean {hint!r}?" if hint else None)
    unknown = sorted(set(modifier) - {"modifier"} - MODIFIERS[name])
    if unknown:
        hint = suggest(unknown[0], sorted(MODIFIERS[name]))
        raise ConfigError("unknown key", file=file, key=f"{key}.{unknown[0]}", hint=f"did you mean {hint!r}?" if hint else None)
    if check_only:
        return
    if name == "modify_PerTypeScaleShift":
        for kind in ("scales", "shifts"):
            if modifier.get(kind) is not None:
                old, new = section.get(f"per_type_energy_{kind}"), modifier[kind]
                names = section["type_names"]
                base = dict(old) if isinstance(old, dict) else {t: old for t in names} if old is not None else {}
                base.update(new if isinstance(new, dict) else {t: new for t in names})
                section[f"per_type_energy_{kind}"] = base
            section[f"per_type_energy_{kind}_trainable"] = bool(modifier.get(f"{kind}_trainable", False))
    else:
        section["do_derivatives"] = name == "enable_ForceStressOutput"


def nequip_section_from_config(model: Dict[str, Any], file=None) -> Dict[str, Any]:
    """A NequIP ``training_module.model`` config (resolved) -> ``nequip`` model-section dict."""
    model = dict(model)
    target = model.pop("_target_", None)
    modifiers: List[Dict[str, Any]] = []
    if target == "nequip.model.modify":
        modifiers = list(model.get("modifiers") or [])
        inner = model.get("model")
        if not isinstance(inner, dict):
            raise CheckpointError("not supported yet: nequip.model.modify of a non-builder model", file=file, key="training_module.model")
        model = dict(inner)
        target = model.pop("_target_", None)
    if target not in _BUILDERS:
        raise CheckpointError(f"not supported yet: model _target_ {target!r} (readable: {sorted(_BUILDERS)})", file=file,
                              key="training_module.model._target_")
    section = {"type": "nequip", **model}
    section["compile_mode"] = "eager"  # how NequIP ran it, not what it computes; mlpot evaluates eagerly
    pair = section.get("pair_potential")
    if isinstance(pair, dict):
        pair = dict(pair)
        pair_target = pair.pop("_target_", None)
        if pair_target not in _ZBL_TARGETS:
            raise CheckpointError(f"not supported yet: pair_potential {pair_target!r}", file=file, key="training_module.model.pair_potential")
        section["pair_potential"] = {"type": "zbl", **pair}
    for index, modifier in enumerate(modifiers):
        try:
            apply_modifier(section, modifier, file, key=f"training_module.model.modifiers.{index}")
        except ConfigError as error:
            raise CheckpointError(error.message, file=file, key=error.key) from None
    return section


def _readout_index(index: int, section) -> int:
    """Position of readout layer ``index`` among NequIP's Sequential modules (nonlinearities in between)."""
    nonlinear = section.readout_mlp_nonlinearity is not None and section.readout_mlp_hidden_layers_depth > 0
    return 2 * index if nonlinear else index


def nequip_to_mlpot_name(name: str, section) -> Optional[Tuple[str, str]]:
    """(mlpot name, transform) of a NequIP parameter/buffer name relative to the energy model, or None if unknown.

    transform: "copy", "flatten" ((T, 1) -> (T,)), "bessel" (n -> n π / r_max, flattened).
    """
    if name == "type_embed.embed_module.weight":
        return "type_embedding.weight", "copy"
    if name == "bessel_encode.bessel_weights":
        return "bessel.weights", "bessel"
    match = re.fullmatch(r"layer(\d+)_convnet\.conv\.(linear_1|linear_2|sc)\.weight", name)
    if match:
        target = {"linear_1": "linear_in", "linear_2": "linear_out", "sc": "self_connection"}[match.group(2)]
        return f"layers.{match.group(1)}.{target}.weight", "copy"
    match = re.fullmatch(r"layer(\d+)_convnet\.conv\.edge_mlp\.mlp\.(\d+)\.weight", name)
    if match and int(match.group(2)) % 2 == 0:
        return f"layers.{match.group(1)}.radial_mlp.layer{int(match.group(2)) // 2}.weight", "copy"
    match = re.fullmatch(r"per_atom_energy_readout\.mlp_module\.mlp\.(?:weights\.)?(\d+)(?:\.weight)?", name)
    if match:
        position = int(match.group(1))
        fused = ".weights." in name
        n_layers = section.readout_mlp_hidden_layers_depth + 1
        for k in range(n_layers):
            if (k if fused else _readout_index(k, section)) == position:
                return f"readout.layer{k}.weight", "copy"
        return None
    match = re.fullmatch(r"per_type_energy_scale_shift\.(scales|shifts)", name)
    if match:
        return f"scale_shift.{match.group(1)}", "flatten"
    return None


def bessel_frequencies(nequip_weights, r_max: float):
    """NequIP's Bessel multipliers n (dimensionless, of x = r / r_c) -> mlpot frequencies n π / r_max (1/Å)."""
    return nequip_weights.reshape(-1) * (math.pi / r_max)
