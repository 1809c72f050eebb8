"""Model-section keys of the DPA-2 descriptor (``model/descriptor`` with ``type: dpa2``), listed once.

DeePMD-kit 3.x nests the two blocks: ``repinit`` (the se_atten-like first block, optionally with a
three-body block beside it) and ``repformer`` (the message-passing stack), with the keys common to
both at the top. Its early PyTorch inputs (DeePMD-kit 2.x/3.0 alphas) spelled the same keys flat,
``repinit_rcut``, ``repformer_nlayers``...; :func:`nest_dpa2_section` turns that spelling into the
nested one (the flat names are in ``DPA2_FLAT_KEYS``). The builder (``descriptors/dpa2.py``), the
section check (``keys.py``), the front-end and docs/deepmd_keys.md read these tables.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from mlpot.errors import ConfigError
from mlpot.models.sections import REQUIRED, Key, ignored, key, read_section, unsupported

__all__ = ["DPA2", "DPA2_REPINIT", "DPA2_REPFORMER", "DPA2_FLAT_KEYS", "DPA2_TABLES", "nest_dpa2_section",
           "read_dpa2_section"]

Number = float
_NSEL_NOTE = "int; \"auto\" not supported yet (give a number)"

DPA2: Dict[str, Key] = {
    "type": key(REQUIRED),
    "repinit": key(REQUIRED, note="the repinit block (table model/descriptor[dpa2]/repinit)", annotation=dict),
    "repformer": key(REQUIRED, note="the repformer block (table model/descriptor[dpa2]/repformer)", annotation=dict),
    "concat_output_tebd": key(True, note="append the type embedding of the centre atom to the output", annotation=bool),
    "precision": key("default", note='"default", "float64" or "float32"', annotation=str),
    "smooth": key(True, note="switch-weighted attention and convolutions (smooth at every cutoff)", annotation=bool),
    "exclude_types": key([], note="type pairs without interaction, in every block", annotation=List[List[int]]),
    "env_protection": key(0.0, annotation=Number),
    "trainable": key(True, annotation=bool),
    "seed": key(None, note="initial weights (mlpot's own random streams, not DeePMD-kit's)", annotation=Optional[int]),
    "add_tebd_to_repinit_out": key(False, note="add a linear map of the centre's type embedding to the repinit "
                                   "output", annotation=bool),
    "use_econf_tebd": key(False, note="input of the type embedding: the element's electronic-configuration vector "
                          "(118 entries) instead of a one-hot vector; types must be element symbols", annotation=bool),
    "use_tebd_bias": key(False, note="bias in the type-embedding layer", annotation=bool),
    "type_map": ignored(note="taken from model/type_map"),
}
DPA2_REPINIT: Dict[str, Key] = {
    "rcut": key(REQUIRED, note="Å; the descriptor's cutoff (the largest of the blocks)", annotation=Number),
    "rcut_smth": key(REQUIRED, note="Å", annotation=Number),
    "nsel": key(REQUIRED, note=_NSEL_NOTE, annotation=Union[int, str]),
    "neuron": key([25, 50, 100], annotation=List[int]),
    "axis_neuron": key(16, annotation=int),
    "tebd_dim": key(8, note="width of the type embedding (shared by every block)", annotation=int),
    "tebd_input_mode": key("concat", note='"concat" or "strip"', annotation=str),
    "set_davg_zero": key(True, note="also used by the three-body block", annotation=bool),
    "activation_function": key("tanh", annotation=str),
    "type_one_side": key(False, annotation=bool),
    "resnet_dt": key(False, annotation=bool),
    "use_three_body": key(False, note="a three-body embedding block (se_e3 with type embedding) beside repinit",
                          annotation=bool),
    "three_body_neuron": key([2, 4, 8], annotation=List[int]),
    "three_body_rcut": key(4.0, note="Å", annotation=Number),
    "three_body_rcut_smth": key(0.5, note="Å", annotation=Number),
    "three_body_sel": key(40, note=_NSEL_NOTE, annotation=Union[int, str]),
}
DPA2_REPFORMER: Dict[str, Key] = {
    "rcut": key(REQUIRED, note="Å; smaller than repinit/rcut", annotation=Number),
    "rcut_smth": key(REQUIRED, note="Å", annotation=Number),
    "nsel": key(REQUIRED, note=_NSEL_NOTE + "; smaller than repinit/nsel", annotation=Union[int, str]),
    "nlayers": key(3, annotation=int),
    "g1_dim": key(128, note="width of the atom representation g1", annotation=int),
    "g2_dim": key(16, note="width of the pair representation g2 (and of the rotation matrix)", annotation=int),
    "axis_neuron": key(4, annotation=int),
    "direct_dist": key(False, note="g2, h2 start from r/rcut and the vector/rcut instead of the env matrix",
                       annotation=bool),
    "update_g1_has_conv": key(True, annotation=bool),
    "update_g1_has_drrd": key(True, annotation=bool),
    "update_g1_has_grrg": key(True, annotation=bool),
    "update_g1_has_attn": key(True, annotation=bool),
    "update_g2_has_g1g1": key(True, annotation=bool),
    "update_g2_has_attn": key(True, annotation=bool),
    "update_h2": key(False, annotation=bool),
    "attn1_hidden": key(64, annotation=int),
    "attn1_nhead": key(4, annotation=int),
    "attn2_hidden": key(16, annotation=int),
    "attn2_nhead": key(4, annotation=int),
    "attn2_has_gate": key(False, annotation=bool),
    "activation_function": key("tanh", annotation=str),
    "update_style": key("res_avg", note='"res_avg", "res_incr" or "res_residual"', annotation=str),
    "update_residual": key(0.001, note="res_residual: initial scale of the learned residual weights",
                           annotation=Number),
    "update_residual_init": key("norm", note='"norm" (normal, std update_residual) or "const"', annotation=str),
    "set_davg_zero": key(True, annotation=bool),
    "trainable_ln": key(True, annotation=bool),
    "ln_eps": key(None, note="default 1e-5", annotation=Optional[Number]),
    "use_sqrt_nnei": key(True, annotation=bool),
    "g1_out_conv": key(True, annotation=bool),
    "g1_out_mlp": key(True, annotation=bool),
}
DPA2_TABLES: Dict[str, Dict[str, Key]] = {"repinit": DPA2_REPINIT, "repformer": DPA2_REPFORMER}

# the flat spelling of early DeePMD-kit PyTorch inputs: flat name -> (block or None for the top, nested name)
_FLAT_RENAMED = {"repinit_activation": ("repinit", "activation_function"),
                 "repformer_activation": ("repformer", "activation_function"),
                 "repformer_axis_dim": ("repformer", "axis_neuron"),
                 "tebd_dim": ("repinit", "tebd_dim")}
DPA2_FLAT_KEYS: Dict[str, Key] = {
    **{f"{block}_{name}": ignored(note=f"older flat spelling of {block}/{name}")
       for block, table in DPA2_TABLES.items() for name in table
       if (block, name) not in _FLAT_RENAMED.values()},
    **{flat: ignored(note=f"older flat spelling of {block}/{name}") for flat, (block, name) in _FLAT_RENAMED.items()},
    "repformer_do_bn_mode": unsupported("no", note="batch norm in the repformer layers (early DPA-2): not built"),
    "repformer_bn_momentum": ignored(note="batch-norm momentum, read only with repformer_do_bn_mode"),
    "repformer_add_type_ebd_to_seq": unsupported(False, note="type embedding added to the pair sequence (early "
                                                 "DPA-2): not built"),
}

_FLAT_ONLY = ("repformer_do_bn_mode", "repformer_bn_momentum", "repformer_add_type_ebd_to_seq")


def nest_dpa2_section(section: Dict[str, Any], path: str = "model/descriptor") -> Dict[str, Any]:
    """A dpa2 section in the nested layout of DeePMD-kit 3.x (a copy; nested sections pass unchanged).

    Flat keys (``repinit_rcut``...) move into ``repinit``/``repformer``; mixing both spellings of one
    key is a ConfigError, and so is a not-built flat option (``repformer_do_bn_mode``...).
    """
    flat = [name for name in section if name in DPA2_FLAT_KEYS]
    if not flat:
        return dict(section)
    out = {name: value for name, value in section.items() if name not in DPA2_FLAT_KEYS}
    blocks = {block: dict(out.get(block) or {}) for block in DPA2_TABLES}
    for name in flat:
        value = section[name]
        record = DPA2_FLAT_KEYS[name]
        if name in _FLAT_ONLY:  # no nested spelling: not built (an error unless neutral), or without effect
            if record.status != "ignored" and not record.requests_nothing(value):
                raise ConfigError(f"not supported yet: {path}/{name}={value!r} ({record.note})", key=f"{path}/{name}")
            continue
        block, nested = _FLAT_RENAMED.get(name) or (name.split("_", 1)[0], name.split("_", 1)[1])
        if nested in blocks[block]:
            raise ConfigError(f"given twice: as {name} and {block}/{nested}", key=f"{path}/{name}")
        blocks[block][nested] = value
    out.update(blocks)
    return out


def read_dpa2_section(section: Dict[str, Any], path: str = "model/descriptor") -> Dict[str, Any]:
    """The dpa2 section's values, defaults filled, blocks nested (flat keys accepted), nsel checked."""
    values = read_section(nest_dpa2_section(section, path), path, DPA2, "Dpa2Section")
    for block, table in DPA2_TABLES.items():
        if not isinstance(values[block], dict):
            raise ConfigError("needs a mapping", key=f"{path}/{block}")
        values[block] = read_section(values[block], f"{path}/{block}", table, f"Dpa2{block.title()}Section")
    names = [("repinit", "nsel"), ("repformer", "nsel")]
    names += [("repinit", "three_body_sel")] if values["repinit"]["use_three_body"] else []
    for block, name in names:
        value = values[block][name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"not supported yet: {value!r} (give a positive int)" if isinstance(value, str)
                              else f"must be a positive int, got {value!r}", key=f"{path}/{block}/{name}")
    repinit, repformer = values["repinit"], values["repformer"]
    if not repformer["rcut"] <= repinit["rcut"] or not repformer["nsel"] <= repinit["nsel"]:
        raise ConfigError(f"repformer rcut/nsel ({repformer['rcut']}, {repformer['nsel']}) must not exceed "
                          f"repinit's ({repinit['rcut']}, {repinit['nsel']})", key=f"{path}/repformer")
    if repinit["use_three_body"] and not repinit["three_body_rcut"] <= repinit["rcut"]:
        raise ConfigError(f"must not exceed repinit/rcut ({repinit['rcut']} Å), got {repinit['three_body_rcut']}",
                          key=f"{path}/repinit/three_body_rcut")
    for block in ("repinit", "repformer"):
        if not 0 <= values[block]["rcut_smth"] < values[block]["rcut"]:
            raise ConfigError(f"must be in [0, rcut), got {values[block]['rcut_smth']}", key=f"{path}/{block}/rcut_smth")
    for name in ("nlayers", "g1_dim", "g2_dim", "axis_neuron", "attn1_hidden", "attn1_nhead", "attn2_hidden",
                 "attn2_nhead"):
        if not isinstance(repformer[name], int) or repformer[name] < 1:
            raise ConfigError(f"must be a positive int, got {repformer[name]!r}", key=f"{path}/repformer/{name}")
    widths = [repformer[w] for w, used in (("g2_dim", repformer["update_g1_has_grrg"]),
                                           ("g1_dim", repformer["update_g1_has_drrd"])) if used]
    if widths and repformer["axis_neuron"] > min(widths):
        raise ConfigError(f"must not exceed the widths it splits (g2_dim for grrg, g1_dim for drrd: {min(widths)}), "
                          f"got {repformer['axis_neuron']}", key=f"{path}/repformer/axis_neuron")
    if repinit["tebd_input_mode"] not in ("concat", "strip"):
        raise ConfigError(f"expected 'concat' or 'strip', got {repinit['tebd_input_mode']!r}",
                          key=f"{path}/repinit/tebd_input_mode")
    return values
