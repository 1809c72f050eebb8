"""DeePMD-kit's NVNMD files: ``weight.npy`` (the weights by TF variable name), ``map.npy`` (the
tables, ``tables.py``) and ``config.npy`` (the hardware configuration), each a pickled dict in
a .npy file.

weight.npy names (version 0, type_one_side): ``descrpt_attr.t_avg`` / ``t_std`` (n_types,
4 sum(sel)), ``filter_type_all.matrix_<l>_<t>`` / ``bias_<l>_<t>`` (embedding layer l = 1.. of
neighbour type t), ``layer_<l>_type_<t>.matrix`` / ``bias`` (fitting hidden layer l = 0..),
``final_layer_type_<t>.matrix`` / ``bias``, ``t_bias_atom_e`` and ``fitting_attr.t_bias_atom_e``
(n_types,) eV, ``train_attr.min_nbor_dist`` Å. Version 1 (se_atten, one fitting net):
``type_embed_net.matrix_1`` (n_types, 8), ``filter_type_all.matrix_<l>`` / ``bias_<l>`` (the s~
net), ``filter_type_all.matrix_<l>_two_side_ebd`` / ``bias_<l>_two_side_ebd`` (the type-pair
net), ``layer_0.matrix`` (M1 M2, n) for D and ``layer_0.tweight`` (8, n) for tebd(t_i) (mlpot's
first layer is the two stacked), ``layer_<l>.matrix`` / ``bias``, ``final_layer.matrix`` /
``bias``; DeePMD-kit 3.2 writes ``layer_0.matrix_1`` and reads either, as mlpot does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from mlpot.errors import ConfigError

__all__ = ["read_npy_dict", "write_npy_dict", "export_weights", "import_weights", "hardware_config"]


def read_npy_dict(path, key: str = "nvnmd") -> Dict[str, Any]:
    """The dict pickled in a .npy file (ConfigError naming the file when missing or not a dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", key=key)
    try:
        value = np.load(path, allow_pickle=True)
        value = value.reshape(-1)[0] if value.dtype == object and value.size == 1 else None  # DeePMD-kit: shape (1,)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"not a .npy file: {exc}", file=str(path), key=key) from None
    if not isinstance(value, dict):
        raise ConfigError("expected a dict saved with numpy (DeePMD-kit's NVNMD layout)", file=str(path), key=key)
    return value


def write_npy_dict(path, value: Dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = np.empty(1, dtype=object)  # DeePMD-kit's layout: a (1,) object array holding the dict
    holder[0] = value
    np.save(path, holder, allow_pickle=True)


def _named_tensors(model):
    """(weight.npy name, tensor of the model) pairs of an NVNMD StandardModel (views of the
    parameters: copying into them sets the model)."""
    descriptor, fitting = model.descriptor, model.fitting
    if getattr(descriptor, "mixed_types", False):
        yield from _named_tensors_v1(descriptor, fitting)
        return
    for t, net in enumerate(descriptor.embeddings):
        for index, layer in enumerate(net.layers):
            yield f"filter_type_all.matrix_{index + 1}_{t}", layer.weight
            yield f"filter_type_all.bias_{index + 1}_{t}", layer.bias
    for t, net in enumerate(fitting.nets):
        *hidden, final = net.layers
        for index, layer in enumerate(hidden):
            yield f"layer_{index}_type_{t}.matrix", layer.weight
            yield f"layer_{index}_type_{t}.bias", layer.bias
        yield f"final_layer_type_{t}.matrix", final.weight
        yield f"final_layer_type_{t}.bias", final.bias


def _named_tensors_v1(descriptor, fitting):
    yield "type_embed_net.matrix_1", descriptor.type_embedding.layers[0].weight
    for suffix, net in (("", descriptor.embedding), ("_two_side_ebd", descriptor.type_pair_embedding)):
        for index, layer in enumerate(net.layers):
            yield f"filter_type_all.matrix_{index + 1}{suffix}", layer.weight
            yield f"filter_type_all.bias_{index + 1}{suffix}", layer.bias
    *hidden, final = fitting.nets[0].layers
    n_descriptor = descriptor.m1 * descriptor.m2
    yield "layer_0.matrix", hidden[0].weight[:n_descriptor]
    yield "layer_0.tweight", hidden[0].weight[n_descriptor:]
    for index, layer in enumerate(hidden):
        if index:
            yield f"layer_{index}.matrix", layer.weight
        yield f"layer_{index}.bias", layer.bias
    yield "final_layer.matrix", final.weight
    yield "final_layer.bias", final.bias


def export_weights(model, min_nbor_dist: float) -> Dict[str, np.ndarray]:
    """weight.npy dictionary of an NVNMD StandardModel (float64 arrays)."""
    descriptor = model.descriptor
    n_slots = descriptor.n_slots
    out = {"descrpt_attr.t_avg": np.tile(descriptor.davg.detach().double().numpy(), (1, n_slots)),
           "descrpt_attr.t_std": np.tile(descriptor.dstd.detach().double().numpy(), (1, n_slots))}
    for name, tensor in _named_tensors(model):
        out[name] = tensor.detach().double().numpy().copy()
    bias = model.fitting.bias_atom[:, 0].detach().double().numpy().copy()
    out["fitting_attr.t_bias_atom_e"] = bias
    out["t_bias_atom_e"] = bias.copy()
    out["train_attr.min_nbor_dist"] = np.float64(min_nbor_dist)
    return out


def import_weights(model, weights: Dict[str, Any], file: str = "weight.npy") -> None:
    """Set an NVNMD StandardModel's weights, davg/dstd and energy bias from a weight.npy dict
    (DeePMD-kit's or ``export_weights``'); every tensor must be there with its shape, except the
    embedding nets of a quantised descriptor (whose tables replace them)."""
    descriptor = model.descriptor
    with torch.no_grad():
        for name, stat in (("descrpt_attr.t_avg", descriptor.davg), ("descrpt_attr.t_std", descriptor.dstd)):
            value = _entry(weights, name, (stat.shape[0], 4 * descriptor.n_slots), file)
            stat.copy_(torch.as_tensor(value.reshape(stat.shape[0], -1, 4)[:, 0, :]))
        for name, tensor in _named_tensors(model):
            if name.startswith(("filter_type_all", "type_embed_net")) and name not in weights \
                    and getattr(descriptor, "quantize", False):
                continue  # a QNN's weight.npy: its descriptor is the tables, the embedding nets are not written
            tensor.copy_(torch.as_tensor(_entry(weights, name, tuple(tensor.shape), file)))
        bias = _entry(weights, "t_bias_atom_e", (descriptor.n_types,), file)
        model.fitting.bias_atom.copy_(torch.as_tensor(bias).reshape(-1, 1))


def _entry(weights: Dict[str, Any], name: str, shape, file: str) -> np.ndarray:
    if name not in weights and f"{name}_1" in weights:  # DeePMD-kit 3.2's layer_0.matrix_1 (version 1)
        name = f"{name}_1"
    if name not in weights:
        raise ConfigError(f"has no {name!r} (the weights of an NVNMD model with this model section)",
                          file=file, key=name)
    value = np.asarray(weights[name], dtype=np.float64)
    if value.size == math.prod(shape) and value.shape != tuple(shape) and len(shape) == 1:
        value = value.reshape(shape)
    if value.shape != tuple(shape):
        raise ConfigError(f"has shape {value.shape}, the model needs {tuple(shape)}", file=file, key=name)
    return value


def hardware_config(model, version: int, max_nnei: int, min_nbor_dist: float, s_min: float, s_max: float) -> Dict[str, Any]:
    """config.npy dictionary: descriptor and fitting sizes, derived sizes and the number formats
    (version 1: sel one int, up to 32 types, the fitting's type-embedding width NTAVC)."""
    descriptor = model.descriptor
    sel = list(descriptor.sel)
    neuron = [layer.n_out for layer in model.fitting.nets[0].layers[:-1]]
    dscp = {"sel": sel, "rcut": descriptor.rcut, "rcut_smth": descriptor.rcut_smth, "neuron": list(descriptor.neuron),
            "resnet_dt": False, "axis_neuron": descriptor.m2, "type_one_side": True, "rc_lim": 0.5, "rc_max": 8.0,
            "M1": descriptor.m1, "M2": descriptor.m2, "SEL": (sel + [0, 0, 0, 0])[:4],
            "NNODE_FEAS": [1] + list(descriptor.neuron), "nlayer_fea": len(descriptor.neuron), "same_net": 1,
            "NI": max_nnei, "NIDP": sum(sel), "NIX": descriptor.nix, "ntype": descriptor.n_types, "ntypex": 1,
            "ntypex_max": 1, "ntype_max": 4, "dmin": float(min_nbor_dist), "smin": s_min, "smax": s_max}
    fitn = {"neuron": neuron, "resnet_dt": False, "NNODE_FITS": [descriptor.m1 * descriptor.m2] + neuron + [1],
            "nlayer_fit": len(neuron) + 1, "NLAYER": len(neuron) + 1}
    if version == 1:
        for name in ("ntypex", "ntypex_max"):
            dscp.pop(name)
        dscp.update(sel=sel[0], SEL=sel[0], ntype_max=32)
        fitn["NTAVC"] = descriptor.type_embedding.dim_out
    nbit = {"NBIT_FLTF": 20, "NBIT_FIXD_FL": 23, "NBIT_FIT_DATA_FL": 23, "NBIT_FIT_SHORT_FL": 19}
    ctrl = {"MAX_NNEI": max_nnei, "VERSION": version}
    return {"dscp": dscp, "fitn": fitn, "dpin": {"type_map": list(model.type_map)}, "ctrl": ctrl, "nbit": nbit}
