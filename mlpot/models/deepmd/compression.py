"""Model compression of DeePMD descriptors (DeePMD-kit's ``dp compress``).

Each embedding net of one input, G(s~) with s~ a normalised env-matrix entry, is replaced by a
piecewise quintic Hermite table (``mlpot.nn.QuinticTable``): se_e2_a and se_e2_r (one table per
neighbour type; without ``type_one_side`` its rows hold one function per centre type), se_e3 (one
table per type pair, over θ) and se_atten / se_atten_v2 in ``strip`` mode with ``attn_layer`` 0 (the
s~ net is tabulated; the type-pair net becomes a stored table of its values per type pair). Hybrid
descriptors compress every member; anything else is refused, naming the descriptor.

Table range, as DeePMD-kit (``_get_env_mat_range``): with r_min the smallest neighbour distance of
the training data (``min_nbor_dist``, Å) and w the switch, s_max = w(r_min) / r_min (1/Å):

* s~ nets: [floor(min_t -davg_t0 / dstd_t0), ceil(max_t (s_max - davg_t0) / dstd_t0)] over centre types t;
* se_e3: ±ceil(max_t,c (s_max / dstd_tc)^2), c the angular columns, with extrapolation below too.

The fine table has step ``step``; a coarse one (``coarse_step``, DeePMD 10 x step) continues to
``extrapolate`` x upper. The model section gets DeePMD-kit's ``compress`` record
(``model_file``, ``min_nbor_dist``, ``table_config`` = [extrapolate, step, coarse step, check
frequency]); the builder sees it and builds empty tables, which the frozen file's state dict fills,
so a compressed file loads through the ordinary ``load_model`` path.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional

import torch

from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors import (DescriptorHybrid, DescriptorSeA, DescriptorSeAtten, DescriptorSeE3)
from mlpot.nn import set_compute_dtype, smooth_switch
from mlpot.nn.quintic_table import QuinticTable

__all__ = ["COMPRESS_KEYS", "compress_model", "prepare_compressed", "check_compressible"]

COMPRESS_KEYS = ("type", "compress", "model_file", "min_nbor_dist", "table_config")


def _name(descriptor) -> str:
    return str(descriptor.config.get("type", type(descriptor).__name__))


def check_compressible(descriptor, path: str = "model/descriptor") -> None:
    """A ConfigError naming the descriptor (and its key path) when it cannot be tabulated."""
    name = _name(descriptor)
    if getattr(descriptor, "compressed", False):
        raise ConfigError(f"descriptor {name} is already compressed", key=path)
    if isinstance(descriptor, DescriptorHybrid):
        for index, child in enumerate(descriptor.descriptors):
            check_compressible(child, f"{path}/list[{index}]")
        return
    if isinstance(descriptor, DescriptorSeAtten):
        if len(descriptor.attention) > 0:
            raise ConfigError(f"cannot compress descriptor {name}: attn_layer is {len(descriptor.attention)}; only "
                              "attn_layer 0 with tebd_input_mode 'strip' is compressible (as in DeePMD-kit)",
                              key=f"{path}/attn_layer")
        if descriptor.tebd_input_mode != "strip":
            raise ConfigError(f"cannot compress descriptor {name}: tebd_input_mode is "
                              f"{descriptor.tebd_input_mode!r}; only 'strip' is compressible (as in DeePMD-kit)",
                              key=f"{path}/tebd_input_mode")
        return
    if isinstance(descriptor, DescriptorSeA):  # se_e2_a and se_e2_r
        if descriptor.type_embedding is not None:
            raise ConfigError(f"not supported yet: compressing descriptor {name} with model/type_embedding",
                              key="model/type_embedding")
        return
    if isinstance(descriptor, DescriptorSeE3):
        return
    raise ConfigError(f"cannot compress descriptor {name}: not a tabulated descriptor (se_e2_a, se_e2_r, se_e3, "
                      "se_atten/se_atten_v2 with attn_layer 0 and strip)", key=path)


def _radial_bounds(descriptor, min_nbor_dist: float):
    """(lower, upper) of s~ over centre types (DeePMD-kit's floor / ceil), and of θ for se_e3."""
    r = torch.tensor(float(min_nbor_dist), dtype=torch.float64)
    s_max = float(smooth_switch(r, descriptor.rcut_smth, descriptor.rcut) / r)
    davg, dstd = descriptor.davg.detach().double(), descriptor.dstd.detach().double()
    if isinstance(descriptor, DescriptorSeE3):
        var = (s_max / dstd[:, 1:4]) ** 2
        return math.floor(float((-var).min())), math.ceil(float(var.max()))
    lower = -davg[:, 0] / dstd[:, 0]
    upper = (s_max - davg[:, 0]) / dstd[:, 0]
    return math.floor(float(lower.min())), math.ceil(float(upper.max()))


def _net_function(net):
    """x (n,) -> (n, M1) of a float64 copy of ``net``: the table is built in float64 whatever the
    model precision (its Hermite coefficients divide by h^5), then stored in the model's."""
    net = copy.deepcopy(net).to(torch.float64)
    set_compute_dtype(net, None)  # full precision, not a mixed-precision compute dtype
    return lambda x: net(x.unsqueeze(-1))


def _install(descriptor, path: str, frequency: int) -> List[QuinticTable]:
    """Empty tables in place of the descriptor's s~ nets (nets removed); returns them in build order."""
    dtype, width = descriptor.davg.dtype, descriptor.m1
    if isinstance(descriptor, DescriptorSeAtten):
        descriptor.embedding = QuinticTable(width, 1, dtype, f"{path} table", frequency)
        n_rows = descriptor.n_types + 1
        rows = n_rows if descriptor.type_one_side else n_rows * descriptor.n_types
        descriptor.type_pair_embedding = None
        descriptor.register_buffer("type_pair_table", torch.zeros(rows, width, dtype=dtype))
        tables = [descriptor.embedding]
    elif isinstance(descriptor, DescriptorSeE3):
        tables = [QuinticTable(width, 1, dtype, f"{path} table {tj}-{tk}", frequency) for tj, tk in descriptor.type_pairs]
    else:
        variants = 1 if descriptor.type_one_side else descriptor.n_types
        tables = [QuinticTable(width, variants, dtype, f"{path} table {tj}", frequency) for tj in range(descriptor.n_types)]
    if not isinstance(descriptor, DescriptorSeAtten):
        descriptor.embeddings = torch.nn.ModuleList()
        descriptor.tables = torch.nn.ModuleList(tables)
    for table in tables:
        table.train(descriptor.training)  # the mode of the model it joins
    descriptor.compressed = True
    return tables


def _nets(descriptor) -> List[List[Any]]:
    """The nets to tabulate, one list (of variants) per table, in the order of ``_install``."""
    if isinstance(descriptor, DescriptorSeAtten):
        return [[descriptor.embedding]]
    if isinstance(descriptor, DescriptorSeE3):
        return [[net] for net in descriptor.embeddings]
    n = descriptor.n_types
    if descriptor.type_one_side:
        return [[descriptor.embeddings[tj]] for tj in range(n)]
    return [[descriptor.embeddings[ti * n + tj] for ti in range(n)] for tj in range(n)]


def _compress_descriptor(descriptor, path: str, min_nbor_dist: float, table_config) -> None:
    if isinstance(descriptor, DescriptorHybrid):
        for index, child in enumerate(descriptor.descriptors):
            _compress_descriptor(child, f"{path}/list[{index}]", min_nbor_dist, table_config)
        return
    extrapolate, step, coarse_step, frequency = table_config
    lower, upper = _radial_bounds(descriptor, min_nbor_dist)
    nets = _nets(descriptor)
    pair_values = None
    if isinstance(descriptor, DescriptorSeAtten):
        with torch.no_grad():
            pair_values = descriptor.type_pair_values(descriptor.type_embedding.table())
    with torch.no_grad():
        nets = [[_net_function(net) for net in variants] for variants in nets]
        tables = _install(descriptor, path, int(frequency))
        for table, functions in zip(tables, nets):
            table.build(functions, lower, upper, float(step), float(coarse_step), float(extrapolate),
                        extrapolate_lower=isinstance(descriptor, DescriptorSeE3))
        if pair_values is not None:
            descriptor.type_pair_table.copy_(pair_values)


def _read_compress(section: Any, path: str = "model/compress") -> Dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError("expected a mapping", key=path)
    unknown = sorted(set(section) - set(COMPRESS_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} (known: {', '.join(COMPRESS_KEYS)})", key=path)
    config = section.get("table_config", [5, 0.01, 0.1, -1])
    if not (isinstance(config, (list, tuple)) and len(config) == 4):
        raise ConfigError("expected [extrapolate, step, coarse step, check frequency]", key=f"{path}/table_config")
    extrapolate, step, coarse, frequency = (float(v) for v in config)
    if not (extrapolate >= 1 and step > 0 and coarse > 0):
        raise ConfigError(f"needs extrapolate >= 1 and positive steps, got {list(config)}", key=f"{path}/table_config")
    return {**section, "table_config": [extrapolate, step, coarse, int(frequency)]}


def prepare_compressed(descriptor, section: Dict[str, Any]) -> None:
    """Build-time half of compression (``model/compress`` present): empty tables in place of the
    nets, to be filled from the frozen file's state dict."""
    values = _read_compress(section)
    check_compressible(descriptor)
    frequency = values["table_config"][3]
    if isinstance(descriptor, DescriptorHybrid):
        for index, child in enumerate(descriptor.descriptors):
            _install(child, f"model/descriptor/list[{index}]", frequency)
    else:
        _install(descriptor, "model/descriptor", frequency)


def compress_model(model, min_nbor_dist: float, step: float = 0.01, extrapolate: float = 5, frequency: int = -1,
                   model_file: Optional[str] = None):
    """Compress ``model`` (a DeePMD standard model) in place and return it; its ``config`` gets the
    ``compress`` record. min_nbor_dist: Å, the smallest neighbour distance of the training data;
    step: fine table step (s~ units); extrapolate: the coarse table (step x 10) reaches
    extrapolate x upper; frequency: overflow-check period in evaluations (-1: never)."""
    descriptor = getattr(model, "descriptor", None)
    if descriptor is None or not hasattr(model, "fitting"):
        kind = model.config.get("type", type(model).__name__) if isinstance(getattr(model, "config", None), dict) else type(model).__name__
        raise ConfigError(f"not supported yet: compressing a model of type {kind} (standard DeePMD models only)",
                          key="model/type")
    if model.config.get("compress") is not None:
        raise ConfigError("the model is already compressed", key="model/compress")
    if model.config.get("nvnmd") is not None:
        raise ConfigError("not supported yet: compressing an NVNMD model (its quantised stage has its own tables: "
                          "mlpot train-nvnmd -s s2)", key="model/nvnmd")
    if not (min_nbor_dist > 0):
        raise ConfigError(f"min_nbor_dist must be positive, got {min_nbor_dist}", key="min_nbor_dist")
    check_compressible(descriptor)
    table_config = [float(extrapolate), float(step), 10.0 * float(step), int(frequency)]
    _read_compress({"table_config": table_config}, "compress")
    _compress_descriptor(descriptor, "model/descriptor", float(min_nbor_dist), table_config)
    record = {"model_file": model_file, "min_nbor_dist": float(min_nbor_dist), "table_config": table_config}
    model.config = dict(model.config, compress={k: v for k, v in record.items() if v is not None})
    return model
