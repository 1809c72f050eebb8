"""DeePMD-kit 3.x (PyTorch backend) parameter names -> the state dict of mlpot's DeePMD model.

The names are those DeePMD-kit's files carry (read from its checkpoints and frozen archives,
``mlpot.models.deepmd.peer_files``), below the model (``model.Default.`` stripped):

| DeePMD-kit | mlpot |
|---|---|
| ``atomic_model.descriptor.sea.`` (se_e2_a), ``atomic_model.descriptor.`` (se_e2_r), ``atomic_model.descriptor.se_atten.`` (se_atten, se_atten_v2), ``atomic_model.descriptor.se_ttebd.`` (se_e3_tebd): the descriptor block, below | ``descriptor.`` |
| block ``mean`` / ``stddev`` (n_types, nnei, 4 or 1): one row per centre type repeated over the neighbour slots | ``davg`` / ``dstd`` (n_types, 4): that row (checked equal over the slots) |
| block ``filter_layers.networks.<k>`` (se_e2_a / se_e2_r) | ``embeddings.<k'>``: k = t_nei * n_types + t_centre, k' = t_centre * n_types + t_nei (``type_one_side``: k = k' = t_nei) |
| block ``filter_layers.networks.0`` / ``filter_layers_strip.networks.0`` (se_atten, se_e3_tebd) | ``embedding`` / ``type_pair_embedding`` |
| block ``dpa1_attention.attention_layers.<l>.attention_layer.{in_proj,out_proj}`` | ``attention.<l>.{in_proj,out_proj}`` |
| block ``dpa1_attention.attention_layers.<l>.attn_layer_norm.{matrix,bias}`` | ``attention.<l>.ln_{weight,bias}`` |
| ``atomic_model.descriptor.type_embedding.embedding.embedding_net`` | ``descriptor.type_embedding`` |
| ``atomic_model.fitting_net.filter_layers.networks.<t>`` | ``fitting.nets.<t>`` |
| ``atomic_model.out_bias[0]`` + ``atomic_model.fitting_net.bias_atom_e`` (eV per atom) | ``fitting.bias_atom`` |
| ``atomic_model.out_std[0]`` | ``fitting.out_std`` |

Inside every net DeePMD-kit's ``layers.<i>.{matrix,bias,idt}`` are mlpot's ``layers.<i>.{weight,bias,idt}``
with the same (in, out) layout. Not weights: ``min_nbor_dist`` (the loader reads it into the model's
training record, ``mlpot.models.record``). Not read: the exclusion masks (``emask.type_mask``, ``atom_excl`` / ``pair_excl``,
rebuilt from the model section), ``sec`` (from ``sel``), the ``_networks`` aliases of ``networks``,
and the tables of ``dp compress`` (``compress_info``, ``compress_data``, ``type_embd_data``), which
must be empty: a compressed model is not supported yet. Any other tensor of the file is an error
(a feature whose weights mlpot would silently drop).
"""

from __future__ import annotations

import re
from typing import Dict, List

import torch

from mlpot.errors import CheckpointError

__all__ = ["deepmd_state_dict", "filled_state"]

_IGNORED = re.compile(r"(^min_nbor_dist|\.emask\.type_mask|^atomic_model\.(atom|pair)_excl\.type_mask|"
                      r"^atomic_model\.descriptor\.sec|\._networks\.\d+\..*)$")
_COMPRESSION = re.compile(r"\.(compress_info\.\d+|compress_data\.\d+|type_embd_data)$")
_BLOCKS = {"se_e2_a": "atomic_model.descriptor.sea.", "se_e2_r": "atomic_model.descriptor.",
           "se_atten": "atomic_model.descriptor.se_atten.", "se_atten_v2": "atomic_model.descriptor.se_atten.",
           "dpa2": "atomic_model.descriptor.",
           "se_e3_tebd": "atomic_model.descriptor.se_ttebd."}
_TYPE_EMBEDDING = "atomic_model.descriptor.type_embedding.embedding.embedding_net."
_FITTING = "atomic_model.fitting_net."


class _FileTensors:
    """The file's tensors by name; ``take`` checks the shape and records what was read."""

    def __init__(self, tensors: Dict[str, torch.Tensor], file: str):
        self.tensors, self.file, self.read = tensors, file, set()

    def take(self, name: str, shape=None) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointError(f"missing DeePMD-kit parameter {name}", file=self.file)
        value = self.tensors[name]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise CheckpointError(f"DeePMD-kit parameter {name} has shape {tuple(value.shape)}, the model section "
                                  f"gives {tuple(shape)}", file=self.file)
        self.read.add(name)
        return value

    def check_all_read(self) -> None:
        for name, value in self.tensors.items():
            if name in self.read or _IGNORED.search(name):
                continue
            if _COMPRESSION.search(name):
                if value.numel():
                    raise CheckpointError("not supported yet: compressed DeePMD-kit models (dp compress); read the "
                                          "model before compression", file=self.file)
                continue
            raise CheckpointError(f"not supported yet: DeePMD-kit parameter {name} (mlpot's model has no place for it)",
                                  file=self.file)


def _net(source: _FileTensors, prefix: str, module: torch.nn.Module, target: str, out: Dict[str, torch.Tensor]) -> None:
    """Copy a DeePMD-kit net (``layers.<i>.{matrix,bias,idt}``) into the mlpot net ``module``."""
    for key, value in module.state_dict().items():
        name = re.sub(r"(^|\.)weight$", r"\1matrix", key)
        out[target + key] = source.take(prefix + name, value.shape)


def _env_statistics(source: _FileTensors, block: str, descriptor, out: Dict[str, torch.Tensor],
                    target: str = "descriptor.") -> None:
    """davg/dstd from the block's mean/stddev (n_types, nnei, width): one row per centre type."""
    n_types = descriptor.davg.shape[0]
    for deepmd_name, name in (("mean", "davg"), ("stddev", "dstd")):
        value = source.take(block + deepmd_name)
        if value.dim() != 3 or value.shape[0] != n_types or value.shape[1] != sum(descriptor.sel) \
                or value.shape[2] not in (1, 4):
            raise CheckpointError(f"DeePMD-kit parameter {block}{deepmd_name} has shape {tuple(value.shape)}, expected "
                                  f"({n_types}, {sum(descriptor.sel)}, 4 or 1)", file=source.file)
        if not torch.equal(value, value[:, :1].expand_as(value)):
            raise CheckpointError(f"not supported yet: {block}{deepmd_name} differs between the neighbour slots of a "
                                  "centre type (mlpot keeps one row per centre type)", file=source.file)
        row = getattr(descriptor, name).clone()
        row[:, : value.shape[2]] = value[:, 0]
        out[f"{target}{name}"] = row


def _se_e2(source: _FileTensors, block: str, descriptor, out: Dict[str, torch.Tensor]) -> None:
    if descriptor.type_embedding is not None:
        raise CheckpointError("not supported yet: se_e2_a with a model-level type embedding in a DeePMD-kit "
                              "PyTorch file", file=source.file)
    n_types = descriptor.n_types
    for index, net in enumerate(descriptor.embeddings):
        if descriptor.type_one_side:
            deepmd_index = index
        else:
            centre, neighbour = divmod(index, n_types)
            deepmd_index = neighbour * n_types + centre
        _net(source, f"{block}filter_layers.networks.{deepmd_index}.", net, f"descriptor.embeddings.{index}.", out)


def _type_embedding(source: _FileTensors, embedding, out: Dict[str, torch.Tensor]) -> None:
    """The type-embedding net; use_econf_tebd: the input rows (electronic configurations of the
    type_map's elements) that a frozen archive holds must be mlpot's own (mlpot.models.deepmd.econf)."""
    _net(source, _TYPE_EMBEDDING, embedding, "descriptor.type_embedding.", out)
    name = _TYPE_EMBEDDING.replace("embedding_net.", "econf_tebd")
    if name in source.tensors:  # frozen archives only (an attribute, not in the training state dict)
        rows = source.take(name, embedding.inputs.shape)
        if not torch.allclose(rows.to(embedding.inputs.dtype), embedding.inputs, rtol=0, atol=1e-12):
            raise CheckpointError(f"DeePMD-kit parameter {name}: the electronic-configuration rows of the file differ "
                                  "from mlpot's for the model's type_map", file=source.file)


def _type_embedded_nets(source: _FileTensors, block: str, descriptor, out: Dict[str, torch.Tensor]) -> None:
    """The type embedding and the one embedding net (+ the strip-mode type-pair net) of se_atten / se_e3_tebd."""
    _type_embedding(source, descriptor.type_embedding, out)
    _net(source, f"{block}filter_layers.networks.0.", descriptor.embedding, "descriptor.embedding.", out)
    if descriptor.type_pair_embedding is not None:
        _net(source, f"{block}filter_layers_strip.networks.0.", descriptor.type_pair_embedding,
             "descriptor.type_pair_embedding.", out)


def _se_atten(source: _FileTensors, block: str, descriptor, out: Dict[str, torch.Tensor]) -> None:
    _type_embedded_nets(source, block, descriptor, out)
    for index, layer in enumerate(descriptor.attention):
        prefix = f"{block}dpa1_attention.attention_layers.{index}."
        for part in ("in_proj", "out_proj"):
            _net(source, f"{prefix}attention_layer.{part}.", getattr(layer, part), f"descriptor.attention.{index}.{part}.", out)
        out[f"descriptor.attention.{index}.ln_weight"] = source.take(f"{prefix}attn_layer_norm.matrix", layer.ln_weight.shape)
        out[f"descriptor.attention.{index}.ln_bias"] = source.take(f"{prefix}attn_layer_norm.bias", layer.ln_bias.shape)


def _dpa2(source: _FileTensors, block: str, descriptor, out: Dict[str, torch.Tensor]) -> None:
    """DPA-2: the type embedding, the repinit (se_atten) and three-body blocks, the linear maps, and
    the repformer stack, whose module names are DeePMD-kit's (``weight`` spelled ``matrix``)."""
    _type_embedding(source, descriptor.type_embedding, out)
    for name, module in (("repinit", descriptor.repinit), ("repinit_three_body", descriptor.three_body)):
        if module is None:
            continue
        target = f"descriptor.{'repinit' if name == 'repinit' else 'three_body'}."
        _env_statistics(source, f"{block}{name}.", module, out, target)
        _net(source, f"{block}{name}.filter_layers.networks.0.", module.embedding, f"{target}embedding.", out)
        if module.type_pair_embedding is not None:
            _net(source, f"{block}{name}.filter_layers_strip.networks.0.", module.type_pair_embedding,
                 f"{target}type_pair_embedding.", out)
    for name, module in (("g1_shape_tranform", descriptor.g1_shape_transform), ("tebd_transform", descriptor.tebd_transform)):
        if module is not None:
            _net(source, f"{block}{name}.", module, f"descriptor.{name.replace('tranform', 'transform')}.", out)
    repformers = descriptor.repformers
    _env_statistics(source, f"{block}repformers.", repformers, out, "descriptor.repformers.")
    for name in repformers.state_dict():
        if name not in ("davg", "dstd"):
            out[f"descriptor.repformers.{name}"] = source.take(
                f"{block}repformers." + re.sub(r"(^|\.)weight$", r"\1matrix", name), repformers.state_dict()[name].shape)


def _ener_fitting(source: _FileTensors, fitting, out: Dict[str, torch.Tensor]) -> None:
    for index, net in enumerate(fitting.nets):
        _net(source, f"{_FITTING}filter_layers.networks.{index}.", net, f"fitting.nets.{index}.", out)
    n_types, n_out = fitting.bias_atom.shape
    out_bias = source.take("atomic_model.out_bias", (1, n_types, n_out))[0]
    out["fitting.bias_atom"] = out_bias.to(torch.float64) + source.take(f"{_FITTING}bias_atom_e", (n_types, n_out))
    out["fitting.out_std"] = source.take("atomic_model.out_std", (1, n_types, n_out))[0]


def deepmd_state_dict(model: torch.nn.Module, tensors: Dict[str, torch.Tensor], file: str) -> Dict[str, torch.Tensor]:
    """A spin model (``mlpot.models.deepmd.spin``): DeePMD-kit's ``backbone_model.`` tensors are the
    state of mlpot's ``backbone.`` (a standard model on the extended type map); otherwise:

    The state dict of ``model`` (a standard DeePMD model built from the file's model section, with
    an ener fitting) holding the DeePMD-kit ``tensors`` (names as in the module docstring).
    CheckpointError naming ``file`` for a missing or misshapen parameter, a compressed model or a
    tensor mlpot has no place for; every parameter of ``model`` comes from the file."""
    if hasattr(model, "backbone") and hasattr(model, "virtual_scale"):
        prefix = "backbone_model."
        if not tensors or any(not name.startswith(prefix) for name in tensors):
            raise CheckpointError(f"a spin model's file keeps its weights under '{prefix}'", file=file)
        inner = deepmd_state_dict(model.backbone, {n[len(prefix):]: v for n, v in tensors.items()}, file)
        return {f"backbone.{name}": value for name, value in inner.items()}
    kind = model.config["descriptor"]["type"]
    fitting_kind = model.config["fitting_net"].get("type", "ener")
    if kind not in _BLOCKS or fitting_kind != "ener":
        raise CheckpointError(f"not supported yet: DeePMD-kit files of a {kind} descriptor with a {fitting_kind} "
                              f"fitting (read: {', '.join(_BLOCKS)} with ener)", file=file)
    source = _FileTensors(tensors, file)
    out: Dict[str, torch.Tensor] = {}
    block = _BLOCKS[kind]
    if kind == "dpa2":  # statistics per block
        _dpa2(source, block, model.descriptor, out)
    else:
        _env_statistics(source, block, model.descriptor, out)
        if kind in ("se_e2_a", "se_e2_r"):
            _se_e2(source, block, model.descriptor, out)
        elif kind == "se_e3_tebd":
            _type_embedded_nets(source, block, model.descriptor, out)
        else:
            _se_atten(source, block, model.descriptor, out)
    _ener_fitting(source, model.fitting, out)
    source.check_all_read()
    return filled_state(model, out, file)


def filled_state(model: torch.nn.Module, values: Dict[str, torch.Tensor], file: str) -> Dict[str, torch.Tensor]:
    """``model``'s state dict with ``values`` (cast to each entry's dtype); CheckpointError naming
    ``file`` when a parameter of ``model`` has no value (every one must come from the file)."""
    state = model.state_dict()
    unset: List[str] = [name for name, _ in model.named_parameters() if name not in values]
    if unset:
        raise CheckpointError(f"the file gives no value for {unset[:5]}", file=file)
    for name, value in values.items():
        state[name] = value.to(state[name].dtype)
    return state
