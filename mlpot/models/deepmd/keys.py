"""The DeePMD family's model-section keys, listed once: defaults, aliases, status, notes.

Every key of DeePMD-kit 3.2's ``model`` section that mlpot knows (spec deepmd.md §2-3, §5.1), per
descriptor type, fitting type and model type. The builders read their sections through these tables
(``mlpot.models.sections.read_section``), the native config validates the ``model`` section with the
pydantic classes generated from them, and the DeePMD-kit front-end (``mlpot/config/deepmd.py``) and
docs/deepmd_keys.md use the same records. Status ``not supported yet`` keys are accepted only with
their neutral value (DeePMD's default, which requests nothing).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from mlpot.data.statistics import auto_sel
from mlpot.errors import ConfigError, suggest
from mlpot.models.compose import FROZEN_KEYS, LINEAR_KEYS
from mlpot.models.deepmd.keys_dpa2 import DPA2, read_dpa2_section
from mlpot.models.deepmd.keys_fitting import FITTING_KEYS, UNBUILT_FITTINGS, Neurons, Number
from mlpot.models.pair import PAIRTAB_KEYS
from mlpot.models.sections import REQUIRED, Key, ignored, key, read_section, unsupported

__all__ = ["DESCRIPTOR_KEYS", "DESCRIPTOR_ALIASES", "FITTING_KEYS", "STANDARD_KEYS", "TYPE_EMBEDDING_KEYS",
           "LINEAR_KEYS", "PAIRTAB_KEYS", "SPIN_KEYS", "FROZEN_KEYS", "MULTI_TASK_KEYS", "PAIRWISE_DPRC_KEYS", "MODEL_TYPE_KEYS", "DPA1_LEGACY_KEYS",
           "UNBUILT_DESCRIPTORS", "UNBUILT_FITTINGS", "UNBUILT_MODELS", "resolve_precision", "resolve_sel",
           "check_model_section", "MODIFIER_KEYS", "UNBUILT_MODIFIERS", "read_modifier_section"]


# ---- descriptors (model/descriptor) -----------------------------------------------------------------
_SMOOTH_ENV: Dict[str, Key] = {
    "type": key(REQUIRED),
    "sel": key("auto", note='list, int, "auto" (the default, as in DeePMD-kit 3.x) or "auto:factor" (rounded up to a '
                'multiple of 4)'),
    "rcut": key(6.0, note="Å", annotation=Number),
    "rcut_smth": key(0.5, note="Å", annotation=Number),
    "neuron": key([10, 20, 40], annotation=Neurons),
    "activation_function": key("tanh", annotation=str),
    "resnet_dt": key(False, annotation=bool),
    "precision": key("default", note='"default", "float64" or "float32"', annotation=str),
    "trainable": key(True, annotation=bool),
    "seed": key(None, annotation=Optional[int]),
    "exclude_types": key([], annotation=List[List[int]]),
    "env_protection": key(0.0, annotation=Number),
    "set_davg_zero": key(False, annotation=bool),
}
SE_E2_A: Dict[str, Key] = {
    **_SMOOTH_ENV,
    "axis_neuron": key(4, "n_axis_neuron", annotation=int),
    "type_one_side": key(False, annotation=bool),
    "tebd_input_mode": unsupported(None, note="a type-embedding key (se_e2_a takes model/type_embedding)"),
    "spin": unsupported(None, note="a descriptor-level spin section (TF era): give it as model/spin"),
}
# se_a_ebd_v2 (TF): se_e2_a's keys; the type embedding (model/type_embedding) enters in strip mode
SE_A_EBD_V2: Dict[str, Key] = {name: value for name, value in SE_E2_A.items() if name != "tebd_input_mode"}
# se_a_mask (TF): se_e2_a over every real atom of a non-periodic frame, no cutoff; aparam masks atoms
SE_A_MASK: Dict[str, Key] = {name: SE_E2_A[name] for name in (
    "type", "neuron", "axis_neuron", "activation_function", "resnet_dt", "type_one_side", "exclude_types",
    "precision", "trainable", "seed")}
SE_A_MASK["sel"] = key(REQUIRED, note="a list per type (DeePMD-kit's zinc example: the atoms of each type in a padded "
                       'frame); "auto" is not supported (there is no cutoff to count neighbours within)',
                       annotation=List[int])
# loc_frame (TF): the local-frame descriptor of the original Deep Potential
LOC_FRAME: Dict[str, Key] = {
    "type": key(REQUIRED),
    "sel_a": key(REQUIRED, note="per type: neighbours with full (local-frame) coordinates", annotation=List[int]),
    "sel_r": key(REQUIRED, note="per type: the next neighbours, distance only", annotation=List[int]),
    "rcut": key(6.0, note="Å, a hard cutoff (no switch)", annotation=Number),
    "axis_rule": key(REQUIRED, note="6 ints per type: (class 0=a/1=r, type, index) of the two axis atoms; "
                     "negative types not supported yet", annotation=List[int]),
}
# se_a_tpe / se_a_ebd (TF): se_e2_a with its own scalar type embedding mixed into the embedding net
SE_A_TPE: Dict[str, Key] = {
    **SE_A_EBD_V2,
    "type_nchanl": key(4, note="channels C of the type embedding", annotation=int),
    "type_nlayer": key(2, note="tanh layers of the type embedding (then one linear layer)", annotation=int),
    "numb_aparam": unsupported(0, note="aparam mixed into the neighbour type embedding: not built yet"),
    "exclude_types": unsupported([], note="DeePMD-kit's TF se_a_tpe does not apply it"),
    "env_protection": unsupported(0.0, note="DeePMD-kit's TF se_a_tpe does not apply it"),
}
SE_E2_R: Dict[str, Key] = {**_SMOOTH_ENV, "type_one_side": key(False, annotation=bool),
                           "spin": unsupported(None, note="a descriptor-level spin section (TF era): give it as model/spin")}
SE_E3: Dict[str, Key] = dict(_SMOOTH_ENV)
_ATTENTION: Dict[str, Key] = {
    **_SMOOTH_ENV,
    "axis_neuron": key(4, "n_axis_neuron", annotation=int),
    "type_one_side": key(False, annotation=bool),
    "set_davg_zero": key(True, annotation=bool),
    "tebd_dim": key(8, annotation=int),
    "tebd_input_mode": key("concat", annotation=str),
    "attn": key(128, annotation=int),
    "attn_layer": key(2, annotation=int),
    "attn_dotr": key(True, annotation=bool),
    "attn_mask": key(False, note="zero the diagonal attention weights (a neighbour does not attend to itself)",
                     annotation=bool),
    "scaling_factor": key(1.0, annotation=Number),
    "normalize": key(True, annotation=bool),
    "temperature": key(None, annotation=Optional[Number]),
    "concat_output_tebd": key(True, annotation=bool),
    "trainable_ln": key(True, annotation=bool),
    "ln_eps": key(None, annotation=Optional[Number]),
    "use_econf_tebd": key(False, note="input of the type embedding: the element's electronic-configuration vector (118 entries, mlpot.models.deepmd.econf) instead of a one-hot vector; types must be element symbols", annotation=bool),
    "use_tebd_bias": key(False, note="bias in the type-embedding layer", annotation=bool),
    "tebd_activation": key("linear", note="mlpot key, set when a DeePMD-kit TF graph (.pb) is read: the activation "
                           "of the type-embedding layer (TF: model/type_embedding/activation_function; DeePMD-kit "
                           "PT: linear)", annotation=str),
    "normalize_eps": key(1e-12, note="mlpot key, set to 1e-6 when a DeePMD-kit TF graph is read: the L2 "
                         "normalisations of q, k, v and of the neighbour directions divide by max(|x|, eps) "
                         "(DeePMD-kit PT: 1e-12; TF: max(|x|^2, 1e-12))", annotation=Number),
    "tf_smooth_switch": key(False, note="mlpot key, set when a DeePMD-kit TF graph is read: the smooth attention "
                            "and strip type-pair weights use TF's clip(1 - (1 - rcut_smth s(r))^3, 0, 1) instead "
                            "of the envelope w(r)", annotation=bool),
    "type_map": ignored(note="taken from model/type_map"),
}
# keys of the early PyTorch DPA-1 inputs (DeePMD-kit's examples/water/se_atten/input_torch.json): the
# values that describe mlpot's attention layer (post-layer-norm, one head, no feed-forward block) are
# accepted, any other value is "not supported yet"
_DPA1_LEGACY: Dict[str, Key] = {
    "post_ln": unsupported(True, note="layer norm after each attention layer (true: mlpot's layer); false not supported yet"),
    "ffn": unsupported(False, note="feed-forward block in the attention layer: not supported yet"),
    "ffn_embed_dim": ignored(note="width of the feed-forward block; only read with ffn true"),
    "head_num": unsupported(1, note="attention heads: 1 (mlpot's layer); more not supported yet"),
    "return_rot": ignored(note="also return the rotation matrix; mlpot's descriptor always provides it to tensor fittings"),
}
DPA1_LEGACY_KEYS = tuple(_DPA1_LEGACY)
SE_ATTEN: Dict[str, Key] = {
    **_ATTENTION,
    **_DPA1_LEGACY,
    "smooth_type_embedding": key(False, "smooth_type_embdding", annotation=bool),
    "stripped_type_embedding": key(None, note="deprecated: true = tebd_input_mode strip, false = concat",
                                   annotation=Optional[bool]),
    "compressible": key(None, note="older spelling of the compressible (strip) type-embedding input: true = "
                        "tebd_input_mode strip (examples/water/hybrid)", annotation=Optional[bool]),
}
# se_atten_v2 = se_atten with strip mode and smooth type embedding fixed on, davg not forced to 0
SE_ATTEN_V2: Dict[str, Key] = {**_ATTENTION, "set_davg_zero": key(False, annotation=bool),
                               "tebd_input_mode": key("strip", note='"strip" only (v2 is strip + smooth)', annotation=str)}
# se_e3_tebd (DeePMD-kit 3.x PT): se_e3's three-body embedding with a type embedding, one mixed section
SE_E3_TEBD: Dict[str, Key] = {
    **_SMOOTH_ENV,
    "sel": key("auto", note='int (the nearest sel neighbours of any type), a list (summed) or "auto[:factor]"'),
    "set_davg_zero": key(True, annotation=bool),
    "tebd_dim": key(8, annotation=int),
    "tebd_input_mode": key("concat", note='"concat" or "strip"', annotation=str),
    "smooth": key(True, note="strip mode: the type-pair embedding is multiplied by sw_j sw_k", annotation=bool),
    "concat_output_tebd": key(True, annotation=bool),
    "use_econf_tebd": key(False, note="input of the type embedding: the element's electronic-configuration vector (118 entries, mlpot.models.deepmd.econf) instead of a one-hot vector; types must be element symbols", annotation=bool),
    "use_tebd_bias": key(True, note="bias in the type-embedding layer (true by default for se_e3_tebd)", annotation=bool),
    "type_map": ignored(note="taken from model/type_map"),
}
HYBRID: Dict[str, Key] = {"type": key(REQUIRED), "list": key(REQUIRED, annotation=list)}

DESCRIPTOR_KEYS: Dict[str, Dict[str, Key]] = {
    "se_e2_a": SE_E2_A, "se_e2_r": SE_E2_R, "se_e3": SE_E3, "se_atten": SE_ATTEN, "se_atten_v2": SE_ATTEN_V2,
    "se_e3_tebd": SE_E3_TEBD, "se_a_ebd_v2": SE_A_EBD_V2, "se_a_tpe": SE_A_TPE, "se_a_mask": SE_A_MASK,
    "loc_frame": LOC_FRAME, "hybrid": HYBRID, "dpa2": DPA2,
}
DESCRIPTOR_ALIASES = {"se_a": "se_e2_a", "se_r": "se_e2_r", "se_at": "se_e3", "se_a_3be": "se_e3", "se_t": "se_e3",
                      "dpa1": "se_atten", "se_a_tpe_v2": "se_a_ebd_v2", "se_a_ebd": "se_a_tpe"}
# descriptor types of DeePMD-kit that mlpot does not build (any section of them is refused)
UNBUILT_DESCRIPTORS = ("dpa3", "dpa4", "se_a_tebd_v2")

# model/type_embedding (TensorFlow-era section for se_e2_a; DeePMD-kit docs "type embedding approach")
TYPE_EMBEDDING_KEYS: Dict[str, Key] = {
    "neuron": key([8], annotation=Neurons), "activation_function": key("tanh", annotation=str),
    "resnet_dt": key(False, annotation=bool), "precision": key("default", annotation=str),
    "trainable": key(True, annotation=bool), "seed": key(None, annotation=Optional[int]),
    "use_tebd_bias": key(False, annotation=bool), "use_econf_tebd": key(False, note="electronic-configuration input (as for se_atten); checked against DeePMD-kit only through its PyTorch descriptors (this section is TensorFlow-era)", annotation=bool),
}


DIPOLE_CHARGE_KEYS: Dict[str, Key] = {
    "type": key(REQUIRED, note="dipole_charge (DPLR)", annotation=str),
    "model_name": key(REQUIRED, note="the DW (dipole) model: an mlpot frozen file (`mlpot freeze`), path relative to "
                      "the working directory as in DeePMD-kit (a DeePMD-kit TF .pb DW model: "
                      "mlpot freeze dw.pb -o dw.pt first)",
                      annotation=str),
    "model_charge_map": key(REQUIRED, note="e, charge of the WC of each sel_type of the DW model, in its order",
                            annotation=List[float]),
    "sys_charge_map": key(REQUIRED, note="e, ion charge per type of type_map", annotation=List[float]),
    "ewald_h": key(1.0, note="Å, reciprocal grid spacing: Miller indices up to K/2 along each cell vector, K = its length / ewald_h "
                   "rounded up to an even integer (DeePMD-kit's rule)",
                   annotation=float),
    "ewald_beta": key(0.4, note="1/Å, Gaussian spread of the reciprocal kernel exp(-pi^2 m^2/beta^2)/m^2",
                      annotation=float),
    "efield": key(None, note="mlpot key: uniform external field [Ex, Ey, Ez] V/Å on ions and WCs, energy "
                  "-sum q r.E (DeePMD-kit puts it in LAMMPS `fix dplr ... efield`); a per-frame external_field "
                  "input (gradient of the potential) adds to it", annotation=Optional[List[float]]),
    "dw_model": key(None, note="mlpot, written by the build (not an input key): the DW model's section and precision, "
                    "so that a frozen DPLR file, which holds the DW weights, loads without model_name",
                    annotation=Optional[dict]),
}
MODIFIER_KEYS: Dict[str, Dict[str, Key]] = {"dipole_charge": DIPOLE_CHARGE_KEYS}
UNBUILT_MODIFIERS = ("dipole_charge_beta", "dipole_charge_electrode")  # ec-MLP's variants of DeePMD-kit TF


def read_modifier_section(section: Any, path: str = "model/modifier") -> Dict[str, Any]:
    """The values of a ``model/modifier`` section (defaults filled); ConfigErrors name ``path/<key>``."""
    table = _typed_table(section, MODIFIER_KEYS, {}, UNBUILT_MODIFIERS, None, path)
    return read_section(section, path, table, "ModifierSection")


# model/spin (DeePMD-kit 3.x virtual-atom spin model, mlpot.models.deepmd.spin)
SPIN_KEYS = {
    "use_spin": key(REQUIRED, note="one bool per type, or the indices (or names) of the magnetic types",
                    annotation=list),
    "virtual_scale": key(None, note="Å/μB: virtual atom at r + s·virtual_scale; one value per type, per magnetic "
                         "type, or one for all", annotation=Any),
    "spin_norm": key(None, note="TF form (with virtual_len): μB per magnetic type; virtual_scale = virtual_len / "
                     "spin_norm", annotation=Any),
    "virtual_len": key(None, note="TF form (with spin_norm): Å per magnetic type", annotation=Any),
    "scheme": unsupported("deepspin", note='"deepspin" (virtual atoms, the default); "native" (DPA-4/SeZM spin '
                          'descriptors) not built'),
    "allow_missing_label": unsupported(False, note="systems without spin.npy (a DPA-4/SeZM option in DeePMD-kit)"),
}

# ---- model types (model) -----------------------------------------------------------------------
STANDARD_KEYS: Dict[str, Key] = {
    "type": key("standard", note="standard; frozen, pairtab, linear_ener, multi-task: their own keys", annotation=str),
    "type_map": key(REQUIRED, note="may be left out in a DeePMD-kit input: taken from the systems' type_map.raw",
                    annotation=List[str]),
    "descriptor": key(REQUIRED, annotation=dict),
    "fitting_net": key(REQUIRED, annotation=dict),
    "data_stat_nbatch": key(10, annotation=int),
    "data_stat_protect": key(1e-2, annotation=Number),
    "data_bias_nsample": key(10, annotation=int),
    "pair_exclude_types": key([], annotation=List[List[int]]),
    "atom_exclude_types": key([], annotation=List[int]),
    "preset_out_bias": key(None, note='{"energy": [null or value per type]} (PT): fixed bias of those types, subtracted '
                           "before the least-squares fit of the rest and kept by change_bias_after_training; the vacuum "
                           "output is not removed (unlike atom_ener)", annotation=Any),
    "nvnmd": key(None, note="NVNMD options (mlpot.models.deepmd.nvnmd): the hardware's se_a descriptor and tanh4 fitting, "
                 "continuous or quantised; written by the DeePMD-kit front-end from an input's nvnmd section",
                 annotation=Optional[dict]),
    "srtab_add_bias": key(True, note="add the type bias to the table part of the blend (TF)", annotation=bool),
    "use_srtab": key(None, note="pair table file (DeePMD-kit table format), blended in at short range",
                     annotation=Optional[str]),
    "smin_alpha": key(None, note="Å, soft-min length of the blend", annotation=Optional[Number]),
    "sw_rmin": key(None, note="Å, table only below", annotation=Optional[Number]),
    "sw_rmax": key(None, note="Å, network only above", annotation=Optional[Number]),
    "type_embedding": key(None, note="TF-style type embedding (neuron, activation_function, resnet_dt, precision, "
                          "trainable, seed, use_tebd_bias) for se_e2_a: one shared embedding net on [s~, tebd(t_j) "
                          "(, tebd(t_i))] and one fitting net reading tebd(t_i); for se_a_ebd_v2 (strip mode) "
                          "N_s(s~)(1 + N_t(tebd(t_j) (, tebd(t_i))))", annotation=Optional[dict]),
    "modifier": key(None, note="DPLR long range: type dipole_charge (model_name, model_charge_map, sys_charge_map, "
                    "ewald_h, ewald_beta; mlpot: efield), see model/modifier[dipole_charge]", annotation=Optional[dict]),
    "compress": key(None, note="written by mlpot compress (as dp compress): model_file, min_nbor_dist (Å), table_config "
                    "[extrapolate, step, coarse step, check frequency]; the embedding nets are then tables, filled from "
                    "the compressed model file (mlpot.models.deepmd.compression)", annotation=Optional[dict]),
    "use_compression": unsupported(None, note="not a key of DeePMD-kit 3.2's model section; compress a frozen model "
                                   "with mlpot compress"),
    "spin": key(None, note="spin model (use_spin, virtual_scale or TF virtual_len/spin_norm): virtual atoms at r + "
                "s·virtual_scale on the magnetic atoms, loss type ener_spin (docs: DeePMD spin models)",
                annotation=Optional[dict]),
    "finetune_head": key(None, note="the head (task or model_branch_alias, or RANDOM: a fresh fitting net) of the multi-task "
                         "pretrained model that mlpot train --finetune starts from when --model-branch is not given; no effect "
                         "without --finetune (as in DeePMD-kit); fine-tuning into multi-task inputs: not supported yet", annotation=Optional[str]),
    "info": ignored(note="free metadata of the model (DeePMD-kit stores it, it changes nothing)"),
    "hessian_mode": ignored(note="set by DeePMD-kit 3.x training with an h loss term; in an input ignored (mlpot "
                            "records it from the loss), in a trained DeePMD-kit file read: mlpot test then "
                            "evaluates Hessians, as dp test"),
    "model_branch_alias": key([], note="multi-task (model_dict/<task>): other names of the task, accepted wherever a "
                              "head is named (--head, --model-branch, finetune_head, the ASE calculator's head), then a "
                              "name equal ignoring case; freeze and change-bias without a head take the branch named "
                              "or aliased Default (as DeePMD-kit's DeepEval); an alias used twice is an error; in a "
                              "single-task model kept as metadata (a head frozen from a multi-task model)",
                              annotation=List[str]),
    **{name: unsupported(default, note="a key of model/type dpa4 (DPA-4/SeZM), not built")
       for name, default in (("use_compile", False), ("enable_tf32", True), ("lora", None))},
    "bridging_method": unsupported("None", note="DeePMD-kit 3.2's short-range bridging (ZBL through a linear_ener "
                                   "composition) is not built; its trained files store the default \"None\""),
    "bridging_r_inner": ignored(note="Å, read only with bridging_method (not built)"),
    "bridging_r_outer": ignored(note="Å, read only with bridging_method (not built)"),
}
MULTI_TASK_KEYS: Dict[str, Key] = {
    "type": key(REQUIRED, annotation=str),
    "shared_dict": key({}, note="name -> descriptor section or type_map list, referenced by name from model_dict",
                       annotation=dict),
    "model_dict": key(REQUIRED, note="task -> model section; descriptor/type_map may name a shared_dict entry",
                      annotation=dict),
}
# model/type pairwise_dprc (built in mlpot.models.deepmd.dprc)
PAIRWISE_DPRC_KEYS: Dict[str, Key] = {
    "type": key(REQUIRED, annotation=str),
    "type_map": key(REQUIRED, note="QM and MM types together", annotation=List[str]),
    "qm_model": key(REQUIRED, note="a standard model section (descriptor + fitting_net): sees the QM atoms only",
                    annotation=dict),
    "qmmm_model": key(REQUIRED, note="a standard model section: sees the QM atoms with one MM residue at a time",
                      annotation=dict),
    "type_embedding": key(None, note="DeePMD-kit's shared type embedding; mlpot: neuron[-1] becomes each se_atten "
                          "sub-descriptor's tebd_dim (one embedding per sub-model, not shared)",
                          annotation=Optional[dict]),
    "data_stat_nbatch": key(10, note="batches per system for the statistics", annotation=int),
    "data_stat_nsample": ignored(note="TF-only statistics option"),
    "data_stat_protect": key(1e-2, annotation=float),
    "use_srtab": unsupported(None, note="short-range table of a pairwise_dprc model"),
    **{name: unsupported(None, note=f"{what} of the short-range table (use_srtab) of a pairwise_dprc model")
       for name, what in (("smin_alpha", "switch parameter"), ("sw_rmin", "inner switching radius"),
                          ("sw_rmax", "outer switching radius"))},
    "spin": unsupported(None, note="spin in a pairwise_dprc model"),
    "compress": unsupported(None, note="compression of a pairwise_dprc model"),
}
MODEL_TYPE_KEYS: Dict[str, Dict[str, Key]] = {"standard": STANDARD_KEYS, "linear_ener": LINEAR_KEYS,
                                              "pairtab": PAIRTAB_KEYS, "frozen": FROZEN_KEYS,
                                              "multi_task": MULTI_TASK_KEYS, "pairwise_dprc": PAIRWISE_DPRC_KEYS}
UNBUILT_MODELS = ("zbl", "multi", "dpa4", "sezm")


_PRECISIONS = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_precision(name: str, default: torch.dtype, path: str) -> torch.dtype:
    """DeePMD ``precision`` ("default", "float64", "float32", ...) -> torch dtype."""
    if name in (None, "default"):
        return default
    if name not in _PRECISIONS:
        hint = suggest(str(name), list(_PRECISIONS) + ["default"])
        raise ConfigError(f"unknown precision {name!r}", key=f"{path}/precision", hint=f"did you mean {hint!r}?" if hint else None)
    return _PRECISIONS[name]


def resolve_sel(sel: Any, n_types: int, path: str, max_neighbors: Optional[Sequence[int]] = None) -> List[int]:
    """``sel`` as a list of ints per type.

    Accepts a list, an int (the same for every type), or "auto" / "auto:f" which needs
    ``max_neighbors`` (per type, from data): ceil(max * f) rounded up to a multiple of 4 [COMPAT].
    """
    if isinstance(sel, str):
        if not sel.startswith("auto"):
            raise ConfigError(f"expected a list of ints, an int or 'auto[:factor]', got {sel!r}", key=f"{path}/sel")
        factor = float(sel.split(":", 1)[1]) if ":" in sel else 1.1
        if max_neighbors is None:
            raise ConfigError("'auto' needs the neighbour statistics of the training data, which mlpot train "
                              "computes unless --skip-neighbor-stat: give sel as numbers, or (in Python) resolve "
                              "it with mlpot.models.deepmd.builders.resolve_auto_sel(model_config, max_neighbors) "
                              "before build_model", key=f"{path}/sel")
        return auto_sel(max_neighbors, factor)
    if isinstance(sel, int) and not isinstance(sel, bool):
        return [sel] * n_types
    if isinstance(sel, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sel):
        if len(sel) != n_types:
            raise ConfigError(f"has {len(sel)} entries but type_map has {n_types} types", key=f"{path}/sel")
        return [int(s) for s in sel]
    raise ConfigError(f"expected a list of non-negative ints, an int or 'auto', got {sel!r}", key=f"{path}/sel")


def _typed_table(section: Any, tables: Dict[str, Dict[str, Key]], aliases: Dict[str, str], unbuilt, default: Any,
                 path: str) -> Dict[str, Key]:
    """The key table of a section whose keys depend on its ``type`` (descriptor, fitting net)."""
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", key=path)
    kind = section.get("type", default)
    if not isinstance(kind, str):
        raise ConfigError(f"expected a type name, got {kind!r}", key=f"{path}/type")
    kind = aliases.get(kind, kind)
    if kind in unbuilt:
        raise ConfigError(f"not supported yet: {path}/type={kind}", key=f"{path}/type")
    if kind not in tables:
        hint = suggest(str(kind), list(tables) + list(aliases))
        raise ConfigError(f"unknown type {kind!r} (valid: {', '.join(tables)})", key=f"{path}/type",
                          hint=f"did you mean {hint!r}?" if hint else None)
    return tables[kind]


def _check_descriptor(section: Any, path: str) -> None:
    table = _typed_table(section, DESCRIPTOR_KEYS, DESCRIPTOR_ALIASES, UNBUILT_DESCRIPTORS, None, path)
    if table is DPA2:  # nested blocks, each with its own cutoffs (checked there)
        read_dpa2_section(section, path)
        return
    values = read_section(section, path, table, "DescriptorSection")
    rcut, rcut_smth = values.get("rcut"), values.get("rcut_smth")
    if rcut is not None and not rcut > 0:
        raise ConfigError(f"must be > 0 Å, got {rcut}", key=f"{path}/rcut")
    if rcut is not None and rcut_smth is not None and not rcut_smth < rcut:
        raise ConfigError(f"must be smaller than rcut ({rcut} Å), got {rcut_smth}", key=f"{path}/rcut_smth")
    for index, member in enumerate(values.get("list", []) if table is HYBRID else []):
        _check_descriptor(member, f"{path}/list[{index}]")


def check_model_section(config: Any, path: str = "model") -> None:
    """Validate a DeePMD-family model section (any model type, members and heads included) against
    the key tables, without building it: ConfigErrors name the key path and suggest the closest key."""
    if not isinstance(config, dict):
        raise ConfigError(f"expected a mapping, got {type(config).__name__}", key=path)
    kind = config.get("type", "standard")
    if not isinstance(kind, str):
        raise ConfigError(f"expected a model type name, got {kind!r}", key=f"{path}/type")
    if kind in UNBUILT_MODELS:
        raise ConfigError(f"not supported yet: {path}/type={kind}", key=f"{path}/type")
    if kind not in MODEL_TYPE_KEYS:
        hint = suggest(str(kind), list(MODEL_TYPE_KEYS))
        raise ConfigError(f"unknown model type {kind!r} (valid: {', '.join(MODEL_TYPE_KEYS)})", key=f"{path}/type",
                          hint=f"did you mean {hint!r}?" if hint else None)
    values = read_section(config, path, MODEL_TYPE_KEYS[kind], f"{kind}ModelSection")
    if kind == "standard":
        _check_descriptor(values["descriptor"], f"{path}/descriptor")
        fitting = _typed_table(values["fitting_net"], FITTING_KEYS, {}, UNBUILT_FITTINGS, "ener", f"{path}/fitting_net")
        read_section(values["fitting_net"], f"{path}/fitting_net", fitting, "FittingSection")
        if values["type_embedding"] is not None:
            read_section(values["type_embedding"], f"{path}/type_embedding", TYPE_EMBEDDING_KEYS, "TypeEmbeddingSection")
        if values["modifier"] is not None:
            read_modifier_section(values["modifier"], f"{path}/modifier")
        if values["spin"] is not None:
            read_section(values["spin"], f"{path}/spin", SPIN_KEYS, "SpinSection")
    elif kind == "linear_ener":
        for index, member in enumerate(values["models"]):
            inherited = dict(member, type_map=member.get("type_map", values["type_map"])) \
                if isinstance(member, dict) and member.get("type") != "frozen" else member
            check_model_section(inherited, f"{path}/models/{index}")
    elif kind == "pairwise_dprc":
        if values["type_embedding"] is not None:
            read_section(values["type_embedding"], f"{path}/type_embedding", TYPE_EMBEDDING_KEYS, "TypeEmbeddingSection")
        for name in ("qm_model", "qmmm_model"):
            member = values[name]
            if isinstance(member, dict) and member.get("type", "standard") != "standard":
                raise ConfigError(f"not supported yet: {path}/{name}/type={member['type']} (a standard model section)",
                                  key=f"{path}/{name}/type")
            check_model_section(dict(member, type_map=values["type_map"]), f"{path}/{name}")
