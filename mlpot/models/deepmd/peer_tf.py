"""DeePMD-kit TensorFlow frozen models (``dp --tf freeze -o model.pb``), read without TensorFlow.

The graph's constants (``mlpot.models.deepmd.tf_graph``) hold everything mlpot needs; nothing of
the graph runs. The model section is the ``model`` of the training input that DeePMD-kit stores as
the string constant ``train_attr/training_script`` (defaults filled in), checked against the
graph's own attributes (``model_attr/tmap``, ``descrpt_attr/rcut``, ``descrpt_attr/sel``), and
completed from the graph: ``type_one_side`` from the nets present, and ``fitting_net/tf_resnet``
(TF's fitting-net skip rule, ``mlpot.nn.mlp``). Constant names -> mlpot's state dict:

| DeePMD-kit TF graph | mlpot |
|---|---|
| ``descrpt_attr/t_avg`` / ``t_std`` (n_types, nnei * 4 or 1): per centre type, one row per neighbour slot | ``descriptor.davg`` / ``dstd`` (n_types, 4): that row (checked equal over the slots) |
| ``descrpt_attr/t_avg`` / ``t_std`` of loc_frame (n_types, dim_out) | ``descriptor.davg`` / ``dstd`` |
| ``filter_type_<c>/{matrix,bias,idt}_<l>_<n>`` (se_e2_a, se_e2_r, se_a_mask: it has no statistics) | ``descriptor.embeddings.<c * n_types + n>.layers.<l-1>.{weight,bias,idt}`` |
| ``filter_type_all/{matrix,bias,idt}_<l>_<n>`` (type_one_side) | ``descriptor.embeddings.<n>.layers.<l-1>...`` |
| ``type_embed_net/{matrix,bias,idt}_<l>``, ``filter_type_all/{matrix,bias,idt}_<l>`` (se_e2_a with model/type_embedding; se_atten) | ``descriptor.type_embedding.layers.<l-1>``, ``descriptor.embeddings.0`` (se_atten: ``descriptor.embedding``) |
| ``filter_type_all/{matrix,bias,idt}_<l>_{one,two}_side_ebd`` (se_a_ebd_v2) | ``descriptor.type_pair_embedding.layers.<l-1>`` |
| hybrid (of se_e2_a, se_e2_r, se_e3): member i's ``descrpt_attr_<i>/``, ``filter_type_<c>_<i>/``, ``filter_type_all_<i>/`` | ``descriptor.descriptors.<i>.`` (as above) |
| ``filter_type_all/{matrix,bias,idt}_<l>_<j>_<k>`` (se_e3, j <= k) | ``descriptor.embeddings.<pair (j, k)>.layers.<l-1>...`` |
| ``layer_<l>_type_<t>/{matrix,bias,idt}``, ``final_layer_type_<t>/{matrix,bias}`` | ``fitting.nets.<t>.layers.<l>``, ``fitting.nets.<t>.layers.<last>`` |
| ``fitting_attr/t_bias_atom_e`` + ``model_attr/model_attr/t_out_bias`` | ``fitting.bias_atom`` (eV per atom); a graph without them (DeePMD-kit < 2.2, < 3.0) has its bias in the output layer |
| ``model_attr/model_attr/t_out_std`` | ``fitting.out_std``; TF multiplies the atomic output (bias_atom_e included) by it, so a value other than 1 is folded into each type's output layer and bias |
| ``fitting_attr/t_fparam_avg`` / ``t_fparam_istd`` (and aparam) | ``fitting.fparam_avg`` / ``fparam_inv_std`` |
| dipole / polar: ``layer_<l>_type_<t>``, ``final_layer_type_<t>`` for the types of ``sel_type`` | ``fitting.nets.<t>`` (the other types' nets zero: masked) |
| polar: ``fitting_attr/t_constant_matrix`` (entry k for the type sel_type[k], as TF reads it) | ``fitting.constant_matrix`` (divided by mlpot's scale, which TF does not apply to the shift) |

Every float constant named as DeePMD-kit names its variables (``matrix*``, ``bias*``, ``idt*``,
``gamma``, ``beta``, ``t_*``) and every ``*_attr/`` constant must be read or known (``_KNOWN``):
anything else is a "not supported yet" CheckpointError naming the file and the constant, never
silently dropped. A compressed graph (``dp compress``: ``Tabulate*`` ops) is
refused with the advice to give the uncompressed model (``mlpot compress`` compresses it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from mlpot.errors import CheckpointError
from mlpot.models.deepmd.peer_files import DeepmdFile
from mlpot.models.deepmd.peer_names import filled_state
from mlpot.models.deepmd.tf_graph import looks_like_graph, read_graph_constants

__all__ = ["is_deepmd_tf_graph", "read_deepmd_tf_graph", "deepmd_tf_state_dict"]

_SCRIPT = "train_attr/training_script"
_BIAS_ATOM_E = "fitting_attr/t_bias_atom_e"
_OUT_BIAS, _OUT_STD = "model_attr/model_attr/t_out_bias", "model_attr/model_attr/t_out_std"
# constants read for the model section or checks, or holding nothing mlpot needs
_KNOWN = {_SCRIPT, "model_type", "model_attr/tmap", "model_attr/model_type", "model_attr/model_version",
          "fitting_attr/dfparam", "fitting_attr/daparam", "train_attr/min_nbor_dist",
          "model_attr/sel_type", "model_attr/output_dim", "fitting_attr/aparam_nall"}
_KNOWN_DESCRIPTOR_ATTR = re.compile(r"descrpt_attr(_\d+)?/(rcut|ntypes|sel|original_sel|ndescrpt)$")
_FITTINGS = ("ener", "dipole", "polar")
_GRAPH_VERSIONS = ("1.0", "1.1")  # model_attr/model_version: DeePMD-kit 2.0, and 2.1 to 3.x
_DESCRIPTORS = ("se_e2_a", "se_e2_r", "se_e3", "se_atten", "se_atten_v2", "loc_frame", "se_a_mask", "se_a_ebd_v2",
                "hybrid")
_HYBRID_MEMBERS = ("se_e2_a", "se_e2_r", "se_e3")
_ATTENTION = ("se_atten", "se_atten_v2")
_ALIASES = {"se_a": "se_e2_a", "se_r": "se_e2_r", "se_at": "se_e3", "se_a_3be": "se_e3", "se_t": "se_e3",
            "dpa1": "se_atten", "se_a_tpe_v2": "se_a_ebd_v2"}


def is_deepmd_tf_graph(path) -> bool:
    """True for a file that starts as a TensorFlow GraphDef does (``tf_graph.looks_like_graph``)."""
    return Path(path).is_file() and looks_like_graph(path)


# the names DeePMD-kit gives its variables (frozen into constants); other float constants are the
# literals of TF operations (x, y, Const, ones, padding_value...), part of the computation
_VARIABLE = re.compile(r"^(matrix|bias|idt)(_\w+)?$|^(gamma|beta)$|^t_")


def _weight_like(name: str, value) -> bool:
    if "_attr/" in name:
        return True
    if isinstance(value, (str, list)) or re.match(r"gradients(_\d+)?/", name):
        return False
    return value.dtype.kind == "f" and bool(_VARIABLE.match(name.rsplit("/", 1)[-1]))


def _graph_section(constants: Dict[str, Any], file: str) -> Dict[str, Any]:
    """The model section of the training script, checked against the graph's attributes."""
    script = constants.get(_SCRIPT)
    try:
        params = json.loads(script)["model"] if isinstance(script, str) else None
    except (json.JSONDecodeError, KeyError, TypeError):
        params = None
    if not isinstance(params, dict):
        raise CheckpointError(f"the graph holds no training input with a model section ({_SCRIPT})", file=file)
    model_type = constants.get("model_attr/model_type", "ener")
    if model_type not in _FITTINGS:
        raise CheckpointError(f"not supported yet: DeePMD-kit TF graphs of {model_type} models (read: "
                              f"{', '.join(_FITTINGS)})", file=file)
    tmap = constants.get("model_attr/tmap")
    if isinstance(tmap, str) and params.get("type_map") and tmap.split() != list(params["type_map"]):
        raise CheckpointError(f"model_attr/tmap {tmap.split()} differs from the training input's type_map "
                              f"{params['type_map']}", file=file)
    if isinstance(tmap, str) and not params.get("type_map"):
        params["type_map"] = tmap.split()
    descriptor = params.get("descriptor") if isinstance(params.get("descriptor"), dict) else {}
    kind = _ALIASES.get(descriptor.get("type"), descriptor.get("type"))
    if kind not in _DESCRIPTORS or (params.get("type_embedding") is None and kind in _ATTENTION) or \
            (params.get("type_embedding") is not None and kind not in _ATTENTION + ("se_e2_a", "se_a_ebd_v2")):
        extra = " with a model/type_embedding" if params.get("type_embedding") is not None else ""
        raise CheckpointError(f"not supported yet: DeePMD-kit TF graphs of a {kind} descriptor{extra} "
                              f"(read: {', '.join(_DESCRIPTORS)}; se_atten and se_e2_a with model/type_embedding)",
                              file=file)
    if kind in _ATTENTION:
        _attention_section(descriptor, params.pop("type_embedding"), file)
    fitting = params.get("fitting_net") if isinstance(params.get("fitting_net"), dict) else {}
    if fitting.get("type", "ener") != model_type:
        raise CheckpointError(f"not supported yet: a {model_type} model with a {fitting.get('type', 'ener')} fitting",
                              file=file)
    sel = constants.get("descrpt_attr/sel")
    if sel is not None and not isinstance(descriptor.get("sel"), list):
        descriptor["sel"] = [int(s) for s in sel]
    rcut = constants.get("descrpt_attr/rcut")
    if rcut is not None and "rcut" in descriptor and abs(float(rcut) - float(descriptor["rcut"])) > 1e-12:
        raise CheckpointError(f"descrpt_attr/rcut {float(rcut)} differs from the training input's rcut "
                              f"{descriptor['rcut']}", file=file)
    if kind == "hybrid":
        _hybrid_section(descriptor, constants, file)
    if kind in ("se_e2_a", "se_e2_r", "se_a_mask") and params.get("type_embedding") is None:
        descriptor["type_one_side"] = any(name.startswith("filter_type_all/") for name in constants)
    params["fitting_net"] = {**fitting, "tf_resnet": True}
    if model_type == "polar":
        _polar_section(params["fitting_net"], len(params["type_map"]))
    return params


def _hybrid_section(descriptor: Dict[str, Any], constants: Dict[str, Any], file: str) -> None:
    """A hybrid of se_e2_a / se_e2_r / se_e3: member i's constants carry the suffix ``_<i>``
    (``descrpt_attr_<i>/t_avg``, ``filter_type_<c>_<i>/``, ``filter_type_all_<i>/``)."""
    for index, member in enumerate(descriptor.get("list") or []):
        kind = _ALIASES.get(member.get("type"), member.get("type"))
        if kind not in _HYBRID_MEMBERS:
            raise CheckpointError(f"not supported yet: a {kind} member of a hybrid descriptor in a DeePMD-kit TF graph "
                                  f"(read: {', '.join(_HYBRID_MEMBERS)})", file=file)
        sel = constants.get(f"descrpt_attr_{index}/sel")
        if sel is not None and not isinstance(member.get("sel"), list):
            member["sel"] = [int(s) for s in sel]
        if kind != "se_e3":
            member["type_one_side"] = any(name.startswith(f"filter_type_all_{index}/") for name in constants)


def _polar_section(fitting: Dict[str, Any], n_types: int) -> None:
    """TF's polar fitting in mlpot's terms: the type of sel_type[k] is scaled by scale[k] and shifted
    by t_constant_matrix[k] (entries taken by position in sel_type), the shift added after the scale
    and always (zero unless shift_diag computed it); without fit_diag its matrix is M + M^T where
    mlpot's is (M + M^T)/2, a factor 2 put into the scale."""
    sel_type = [int(t) for t in (fitting.get("sel_type") or range(n_types))]
    scale = fitting.get("scale", 1.0)
    scale = [float(scale)] * n_types if not isinstance(scale, list) else [float(s) for s in scale]
    factor = 1.0 if fitting.get("fit_diag", True) else 2.0
    per_type = [1.0] * n_types
    for index, t in enumerate(sel_type):
        per_type[t] = scale[index] * factor
    fitting.update(scale=per_type, shift_diag=True, sel_type=sel_type)


def _attention_section(descriptor: Dict[str, Any], embedding: Dict[str, Any], file: str) -> None:
    """se_atten / se_atten_v2 of TF in mlpot's terms: its type embedding is the model-level section
    (one layer: tebd_dim = neuron[-1], its activation and bias); its attention always L2-normalises
    q, k, v (and the neighbour directions of attn_dotr) as x / sqrt(max(|x|^2, 1e-12)), i.e. with a
    floor of 1e-6 on |x|, and divides the logits by a temperature of 1 (no 1/sqrt(attn)); its layer
    norm's eps defaults to 1e-3; its smooth weights are its own switch of s(r)
    (``DescriptorSeAtten.tf_switch``)."""
    neuron = list(embedding.get("neuron", [8]))
    if len(neuron) != 1 or embedding.get("use_econf_tebd"):
        raise CheckpointError(f"not supported yet: a TF type embedding of {len(neuron)} layers "
                              f"(model/type_embedding/neuron {neuron}) or with use_econf_tebd; one layer is read",
                              file=file)
    descriptor.update(tebd_dim=int(neuron[0]), tebd_activation=embedding.get("activation_function", "tanh"),
                      use_tebd_bias=bool(embedding.get("use_tebd_bias", False)), normalize=True, temperature=1.0,
                      scaling_factor=1.0, normalize_eps=1e-6, tf_smooth_switch=True)
    if descriptor.get("ln_eps") is None:
        descriptor["ln_eps"] = 1e-3


def read_deepmd_tf_graph(path) -> DeepmdFile:
    """The :class:`DeepmdFile` of a DeePMD-kit TF frozen graph: the model section (module docstring)
    and the graph's constants by name (numpy arrays, str for strings). Nothing of the graph runs."""
    graph = read_graph_constants(path)
    tabulated = sorted(op for op in graph.ops if op.startswith("Tabulate"))
    if tabulated or graph.constants.get("model_type") == "compressed_model":
        raise CheckpointError(f"not supported yet: compressed DeePMD-kit TF graphs (dp compress; ops {tabulated}): "
                              "give the uncompressed model (mlpot compress can compress it)", file=graph.file)
    version = graph.constants.get("model_attr/model_version")
    if version not in _GRAPH_VERSIONS:
        raise CheckpointError(f"not supported yet: DeePMD-kit TF graph version {version or 'before 1.0'} (mlpot reads "
                              f"{', '.join(_GRAPH_VERSIONS)}: DeePMD-kit 2.0 and later); convert it with DeePMD-kit's "
                              "dp convert-from first", file=graph.file)
    params = _graph_section(dict(graph.constants), graph.file)
    return DeepmdFile(graph.file, "tf_graph", params, graph.constants)


class _GraphTensors:
    """The graph's constants; ``take`` converts to a torch tensor of the target shape (TF stores an
    embedding ``idt`` as (1, width)) and records what was read."""

    def __init__(self, constants: Dict[str, Any], file: str):
        self.constants, self.file, self.read = constants, file, set(_KNOWN)

    def take(self, name: str, shape=None) -> torch.Tensor:
        value = self.constants.get(name)
        if value is None or isinstance(value, (str, list)):
            raise CheckpointError(f"missing DeePMD-kit TF graph constant {name}", file=self.file)
        array = np.asarray(value)
        if shape is not None:
            if [s for s in array.shape if s != 1] != [s for s in shape if s != 1]:
                raise CheckpointError(f"DeePMD-kit TF graph constant {name} has shape {array.shape}, the model "
                                      f"section gives {tuple(shape)}", file=self.file)
            array = array.reshape(shape)
        self.read.add(name)
        return torch.from_numpy(np.array(array))

    def check_all_read(self) -> None:
        for name, value in self.constants.items():
            if name not in self.read and not _KNOWN_DESCRIPTOR_ATTR.match(name) and _weight_like(name, value):
                raise CheckpointError(f"not supported yet: DeePMD-kit TF graph constant {name} (mlpot's model has no "
                                      "place for it)", file=self.file)


def _net(source: _GraphTensors, module: torch.nn.Module, target: str, name, out: Dict[str, torch.Tensor]) -> None:
    """Copy a net: ``name(layer index, kind)`` is the graph constant of mlpot's ``layers.<i>.<kind>``."""
    for key, value in module.state_dict().items():
        match = re.fullmatch(r"layers\.(\d+)\.(weight|bias|idt)", key)
        kind = {"weight": "matrix"}.get(match.group(2), match.group(2))
        out[target + key] = source.take(name(int(match.group(1)), kind), value.shape)


def _statistics(source: _GraphTensors, descriptor, kind: str, out: Dict[str, torch.Tensor], suffix: str = "",
                target: str = "descriptor.") -> None:
    if kind == "se_a_mask":  # no statistics (davg 0, dstd 1), none in the graph
        return
    if kind == "loc_frame":  # one value per descriptor column and centre type
        for tf_name, name in (("t_avg", "davg"), ("t_std", "dstd")):
            out[f"{target}{name}"] = source.take(f"descrpt_attr{suffix}/{tf_name}", getattr(descriptor, name).shape)
        return
    n_types, width = descriptor.davg.shape[0], 1 if kind == "se_e2_r" else 4
    for tf_name, name in (("t_avg", "davg"), ("t_std", "dstd")):
        value = source.take(f"descrpt_attr{suffix}/{tf_name}")
        if value.numel() != n_types * sum(descriptor.sel) * width:
            raise CheckpointError(f"DeePMD-kit TF graph constant descrpt_attr{suffix}/{tf_name} has shape {tuple(value.shape)}, "
                                  f"expected ({n_types}, {sum(descriptor.sel) * width})", file=source.file)
        value = value.reshape(n_types, sum(descriptor.sel), width)
        if not torch.equal(value, value[:, :1].expand_as(value)):
            raise CheckpointError(f"not supported yet: descrpt_attr{suffix}/{tf_name} differs between the neighbour slots of a "
                                  "centre type (mlpot keeps one row per centre type)", file=source.file)
        row = getattr(descriptor, name).clone()
        row[:, :width] = value[:, 0]
        out[f"{target}{name}"] = row


def _embeddings(source: _GraphTensors, descriptor, kind: str, out: Dict[str, torch.Tensor], member: str = "",
                target: str = "descriptor.") -> None:
    """The embedding nets; ``member``: ``_<i>`` for member i of a hybrid, ``target`` its prefix."""
    n_types = descriptor.n_types
    if getattr(descriptor, "type_embedding", None) is not None:  # se_e2_a + model/type_embedding: one net
        _net(source, descriptor.type_embedding, "descriptor.type_embedding.",
             lambda layer, what: f"type_embed_net/{what}_{layer + 1}", out)
        _net(source, descriptor.embeddings[0], "descriptor.embeddings.0.",
             lambda layer, what: f"filter_type_all/{what}_{layer + 1}", out)
        if descriptor.type_pair_embedding is not None:  # se_a_ebd_v2 (strip)
            side = "one" if descriptor.type_one_side else "two"
            _net(source, descriptor.type_pair_embedding, "descriptor.type_pair_embedding.",
                 lambda layer, what: f"filter_type_all/{what}_{layer + 1}_{side}_side_ebd", out)
        return
    for index, net in enumerate(descriptor.embeddings):
        if kind == "se_e3":
            scope, suffix = f"filter_type_all{member}", "{}_{}".format(*descriptor.type_pairs[index])
        elif descriptor.type_one_side:
            scope, suffix = f"filter_type_all{member}", str(index)
        else:
            centre, neighbour = divmod(index, n_types)
            scope, suffix = f"filter_type_{centre}{member}", str(neighbour)
        _net(source, net, f"{target}embeddings.{index}.",
             lambda layer, what: f"{scope}/{what}_{layer + 1}_{suffix}", out)


def _attention(source: _GraphTensors, descriptor, out: Dict[str, torch.Tensor]) -> None:
    """Type embedding, embedding net(s) and attention layers of se_atten / se_atten_v2."""
    _net(source, descriptor.type_embedding, "descriptor.type_embedding.",
         lambda layer, what: f"type_embed_net/{what}_{layer + 1}", out)
    if "zeros" in source.constants and torch.count_nonzero(source.take("zeros")):  # the padding row
        raise CheckpointError("the TF type embedding's padding row (constant zeros) is not zero", file=source.file)
    _net(source, descriptor.embedding, "descriptor.embedding.", lambda layer, what: f"filter_type_all/{what}_{layer + 1}", out)
    if descriptor.type_pair_embedding is not None:
        _net(source, descriptor.type_pair_embedding, "descriptor.type_pair_embedding.",
             lambda layer, what: f"filter_type_all/{what}_{layer + 1}_two_side_ebd", out)
    for index, layer in enumerate(descriptor.attention):
        scope, target = f"attention_layer_{index}/", f"descriptor.attention.{index}."
        width, hidden = layer.in_proj.weight.shape[0], layer.hidden
        for part in ("matrix", "bias"):
            shape = (width, hidden) if part == "matrix" else (hidden,)
            blocks = [source.take(f"{scope}c_{name}/{part}", shape) for name in ("query", "key", "value")]
            out[f"{target}in_proj.{'weight' if part == 'matrix' else 'bias'}"] = torch.cat(blocks, dim=-1)
        out[f"{target}out_proj.weight"] = source.take(f"{scope}c_out/matrix", layer.out_proj.weight.shape)
        out[f"{target}out_proj.bias"] = source.take(f"{scope}c_out/bias", layer.out_proj.bias.shape)
        out[f"{target}ln_weight"] = source.take(f"{scope}layer_normalization/gamma", layer.ln_weight.shape)
        out[f"{target}ln_bias"] = source.take(f"{scope}layer_normalization/beta", layer.ln_bias.shape)


def _fitting_nets(source: _GraphTensors, fitting, out: Dict[str, torch.Tensor]) -> None:
    """The per-type (or, with a type embedding, one) fitting nets; a tensor fitting has nets only
    for its ``sel_type``: the others, masked by mlpot, are set to zero."""
    selected = getattr(fitting, "selected", None)
    for t, net in enumerate(fitting.nets):
        if selected is not None and not fitting.mixed_types and not bool(selected[t]):
            out.update({f"fitting.nets.{t}.{key}": torch.zeros_like(value) for key, value in net.state_dict().items()})
            continue
        last, suffix = len(net.layers) - 1, "" if fitting.mixed_types else f"_type_{t}"
        _net(source, net, f"fitting.nets.{t}.",
             lambda layer, what: f"{'final_layer' if layer == last else f'layer_{layer}'}{suffix}/{what}", out)


def _fitting(source: _GraphTensors, fitting, out: Dict[str, torch.Tensor]) -> None:
    n_types = fitting.n_types
    _fitting_nets(source, fitting, out)
    if hasattr(fitting, "constant_matrix"):  # polar: TF's diagonal shift (scale folded in by _polar_section)
        shift = source.take("fitting_attr/t_constant_matrix", (n_types,))
        sel_type = [int(t) for t in torch.nonzero(fitting.selected).flatten()]
        values = torch.zeros(n_types, dtype=torch.float64)
        for index, t in enumerate(sel_type):  # TF reads entry sel_type.index(t) (module docstring)
            values[t] = shift[index] / fitting.scale[t]
        out["fitting.constant_matrix"] = values
    if hasattr(fitting, "selected"):  # dipole, polar: no output bias
        return
    # graphs before DeePMD-kit 2.2 have no t_bias_atom_e: the bias is in the output layer's
    # (DeePMD-kit TF reads such graphs so); before 3.0 no t_out_bias / t_out_std
    bias = source.take(_BIAS_ATOM_E, (n_types, 1)).to(torch.float64) if _BIAS_ATOM_E in source.constants \
        else torch.zeros(n_types, 1, dtype=torch.float64)
    out_bias = source.take(_OUT_BIAS, (1, n_types, 1))[0] if _OUT_BIAS in source.constants else torch.zeros_like(bias)
    std = source.take(_OUT_STD, (1, n_types, 1))[0] if _OUT_STD in source.constants else torch.ones_like(bias)
    if not torch.equal(std, torch.ones_like(std)):  # TF: (net + bias_atom_e) * out_std + out_bias, per type
        if fitting.mixed_types:
            raise CheckpointError("not supported yet: a TF model_attr/t_out_std other than 1 with one fitting net "
                                  "for all types", file=source.file)
        for t in range(n_types):
            for key in (f"fitting.nets.{t}.layers.{len(fitting.nets[t].layers) - 1}.{p}" for p in ("weight", "bias")):
                out[key] = out[key] * std[t]
        bias = bias * std
    out["fitting.bias_atom"] = bias + out_bias
    out["fitting.out_std"] = std
    for name, width in (("fparam", fitting.numb_fparam), ("aparam", fitting.numb_aparam)):
        if width and not (name == "aparam" and fitting.use_aparam_as_mask):
            out[f"fitting.{name}_avg"] = source.take(f"fitting_attr/t_{name}_avg", (width,))
            out[f"fitting.{name}_inv_std"] = source.take(f"fitting_attr/t_{name}_istd", (width,))


def deepmd_tf_state_dict(model: torch.nn.Module, constants: Dict[str, Any], file: str) -> Dict[str, torch.Tensor]:
    """The state dict of ``model`` (built from the section of ``read_deepmd_tf_graph``) holding the
    graph's constants (module docstring). CheckpointError naming ``file`` for a missing or misshapen
    constant or one mlpot has no place for; every parameter of ``model`` comes from the graph."""
    kind = _ALIASES.get(model.config["descriptor"]["type"], model.config["descriptor"]["type"])
    source = _GraphTensors(constants, file)
    out: Dict[str, torch.Tensor] = {}
    if kind == "hybrid":
        for index, member in enumerate(model.descriptor.descriptors):
            member_kind = _ALIASES.get(member.config["type"], member.config["type"])
            target = f"descriptor.descriptors.{index}."
            _statistics(source, member, member_kind, out, f"_{index}", target)
            _embeddings(source, member, member_kind, out, f"_{index}", target)
    else:
        _statistics(source, model.descriptor, kind, out)
        if kind in _ATTENTION:
            _attention(source, model.descriptor, out)
        elif kind != "loc_frame":  # loc_frame has no net
            _embeddings(source, model.descriptor, kind, out)
    _fitting(source, model.fitting, out)
    source.check_all_read()
    return filled_state(model, out, file)
