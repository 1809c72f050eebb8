"""Builders of the DeePMD family's model types from their (DeePMD-style) model sections.

``build_standard``: descriptor + fitting net (spec deepmd.md §5.1 ``model`` keys), with the
``use_srtab`` short-range table blend (``mlpot.models.pair``); ``resolve_auto_sel``: ``sel: "auto"``
from the neighbour counts of the training data (spec §2.1). The multi-task model is built in
``multitask.py``. Unknown keys are ConfigErrors with a suggestion; known features that are not
built give "not supported yet: model/<key>"; ``_comment*`` keys are ignored.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Sequence

import torch

from mlpot.errors import ConfigError
from mlpot.models.base import check_type_map
from mlpot.models.deepmd.compression import prepare_compressed
from mlpot.models.deepmd.keys import DESCRIPTOR_ALIASES, DESCRIPTOR_KEYS, STANDARD_KEYS, resolve_sel
from mlpot.models.sections import read_section
from mlpot.models.deepmd.descriptors import DESCRIPTORS
from mlpot.models.deepmd.fitting import FITTINGS
from mlpot.models.deepmd.spin import build_spin
from mlpot.models.deepmd.standard import StandardModel
from mlpot.models.deepmd.type_embedding import set_econf_inputs

__all__ = ["build_standard", "resolve_auto_sel", "descriptor_section", "wants_auto_sel"]

def descriptor_section(model_config: Dict[str, Any]) -> Dict[str, Any]:
    """The ``descriptor`` mapping of a standard model section (ConfigError when malformed)."""
    section = model_config.get("descriptor")
    if not isinstance(section, dict) or "type" not in section:
        raise ConfigError("needs a mapping with a 'type' key", key="model/descriptor")
    return section


def build_standard(config: Dict[str, Any], dtype: torch.dtype) -> StandardModel:
    """A StandardModel (descriptor + fitting) from a ``standard`` model section."""
    values = read_section(config, "model", STANDARD_KEYS, "StandardModelSection")
    if values["spin"] is not None:  # the virtual-atom wrapper builds its backbone with this function
        return build_spin(config, dtype, build_standard)
    type_map = check_type_map(values["type_map"])
    n_types = len(type_map)
    section = dict(descriptor_section(config))
    if values["pair_exclude_types"]:
        section["exclude_types"] = list(section.get("exclude_types", [])) + list(values["pair_exclude_types"])
    descriptor_cls = DESCRIPTORS.get(section["type"], key="model/descriptor/type")
    if values["nvnmd"] is not None:  # NVNMD: its own descriptor and fitting classes
        from mlpot.models.deepmd.nvnmd import build_nvnmd

        for name in ("type_embedding", "compress", "use_srtab", "preset_out_bias", "modifier"):
            if values.get(name) is not None:
                raise ConfigError(f"not supported yet: model/{name} with model/nvnmd", key=f"model/{name}")
        descriptor, fitting = build_nvnmd(values["nvnmd"], section, values["fitting_net"], n_types, dtype)
        return StandardModel(type_map, descriptor, fitting, config, atom_exclude_types=values["atom_exclude_types"],
                             data_stat_protect=values["data_stat_protect"], data_stat_nbatch=values["data_stat_nbatch"])
    if values["type_embedding"] is not None:  # TF-style type embedding section: se_e2_a, se_a_ebd_v2
        if not isinstance(values["type_embedding"], dict):
            raise ConfigError("needs a mapping", key="model/type_embedding")
        if section["type"] not in ("se_e2_a", "se_a", "se_a_ebd_v2", "se_a_tpe_v2"):
            raise ConfigError(f"not supported yet: model/type_embedding with descriptor type {section['type']!r} "
                              "(se_e2_a and se_a_ebd_v2 only; se_atten and se_e3_tebd have their own type embedding)",
                              key="model/type_embedding")
        descriptor = descriptor_cls.from_config(section, n_types, dtype, type_embedding=values["type_embedding"])
    else:
        descriptor = descriptor_cls.from_config(section, n_types, dtype)
    set_econf_inputs(descriptor, type_map)  # use_econf_tebd: the elements' configuration vectors
    if values["compress"] is not None:  # a compressed model: empty tables, filled by its state dict
        prepare_compressed(descriptor, values["compress"])
    fitting_section = values["fitting_net"]
    if not isinstance(fitting_section, dict):
        raise ConfigError("needs a mapping", key="model/fitting_net")
    if values["preset_out_bias"] is not None:
        fitting_section = _with_preset_out_bias(fitting_section, values["preset_out_bias"], n_types)
    fitting_cls = FITTINGS.get(fitting_section.get("type", "ener"), key="model/fitting_net/type")
    fitting = fitting_cls.from_config(fitting_section, n_types, descriptor, dtype)
    if getattr(descriptor, "needs_atom_mask", False) and not getattr(fitting, "use_aparam_as_mask", False):
        raise ConfigError(f"descriptor type {section['type']} needs numb_aparam: 1 and use_aparam_as_mask: true "
                          "(aparam marks real and virtual atoms)", key="model/fitting_net/use_aparam_as_mask")
    return StandardModel(type_map, descriptor, fitting, config, atom_exclude_types=values["atom_exclude_types"],
                         data_stat_protect=values["data_stat_protect"], data_stat_nbatch=values["data_stat_nbatch"])


def _with_preset_out_bias(fitting: Dict[str, Any], preset: Any, n_types: int) -> Dict[str, Any]:
    """model/preset_out_bias (DeePMD-kit PT, ``{"energy": [null or value per type]}``) as the
    fitting's ``preset_out_bias`` list: those types keep the value as their bias and are subtracted
    before the least-squares fit of the rest (spec §3); unlike ``atom_ener`` the net's vacuum output
    is not removed (DeePMD-kit PT only sets the bias)."""
    key = "model/preset_out_bias"
    output = {"ener": "energy", "dos": "dos"}.get(fitting.get("type", "ener"))
    if output is None:
        raise ConfigError(f"not supported yet: model/preset_out_bias with fitting_net/type={fitting['type']}", key=key)
    if not isinstance(preset, dict) or set(preset) - {output}:
        raise ConfigError(f'expected {{"{output}": [null or value per type]}}', key=key)
    values = preset.get(output)
    if values is None:
        return fitting
    if not isinstance(values, list) or len(values) != n_types:
        raise ConfigError(f"needs one entry (null or a value) per type of type_map ({n_types})", key=f"{key}/{output}")
    if fitting.get("preset_out_bias") is not None:
        raise ConfigError("given twice: as model/preset_out_bias and fitting_net/preset_out_bias", key=key)
    return dict(fitting, preset_out_bias=values)


def wants_auto_sel(part: Dict[str, Any]) -> bool:
    """True for a descriptor section with a ``sel`` key left at, or set to, "auto[:f]" (descriptor
    types without ``sel``, e.g. loc_frame with sel_a / sel_r, never)."""
    kind = part.get("type")
    table = DESCRIPTOR_KEYS.get(DESCRIPTOR_ALIASES.get(kind, kind), {}) if isinstance(kind, str) else {}
    return "sel" in table and isinstance(part.get("sel", "auto"), str)


# descriptors whose neighbours share one list whatever their type (DeePMD-kit's mixed_types()):
# their sel is one number, and "auto" counts all neighbours together
MIXED_TYPE_DESCRIPTORS = ("se_atten", "se_atten_v2", "se_e3_tebd")


def resolve_auto_sel(model_config: Dict[str, Any], max_neighbors: Sequence[int],
                     max_total: Optional[int] = None) -> Dict[str, Any]:
    """A copy of ``model_config`` with ``sel: "auto[:f]"`` replaced by the rule of spec §2.1.

    max_neighbors: maximum neighbour count per type within the descriptor's rcut (from data);
    max_total: maximum count of all neighbours of one atom (from data), which a mixed-type
    descriptor (se_atten / DPA-1, se_atten_v2, se_e3_tebd) resolves "auto" from, as DeePMD-kit's
    neighbour statistics do [COMPAT]; without it the sum of the per-type maxima (an upper bound).
    """
    config = copy.deepcopy(model_config)
    section = descriptor_section(config)
    sections = section.get("list", [section]) if section.get("type") == "hybrid" else [section]
    for sub in sections:
        if not wants_auto_sel(sub):  # a descriptor without sel: "auto" (DeePMD-kit 3.x)
            continue
        path = "model/descriptor"
        if DESCRIPTOR_ALIASES.get(sub["type"], sub["type"]) in MIXED_TYPE_DESCRIPTORS:
            total = int(sum(max_neighbors)) if max_total is None else int(max_total)
            sub["sel"] = resolve_sel(sub.get("sel", "auto"), 1, path, [total])[0]
        else:
            sub["sel"] = resolve_sel(sub.get("sel", "auto"), len(config["type_map"]), path, max_neighbors)
    return config
