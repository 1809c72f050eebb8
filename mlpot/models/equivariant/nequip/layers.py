"""One NequIP message-passing layer: interaction block + equivariant nonlinearity (+ optional resnet).

NequIP's ``ConvNetLayer`` around its ``InteractionBlock`` (spec nequip.md §2.2, step 5). With h the
node features, a_t the type embedding, Y the edge spherical harmonics and w_ij = RadialMLP(B(r_ij)):

    sc_i = FCTP(h_i, a_{t_i})                          (not in layer 0: isolated atoms stay at 0)
    h'_i = Linear_2( Σ_j TP_uvu(Linear_1(h)_j / sqrt(N_avg), Y_ij; w_ij) ) + sc_i
    h_i  <- Gate(h'_i)   [+ h_i with resnet, when the irreps agree]

The gate acts on the scalars (silu for even, tanh for odd) and multiplies each l > 0 block by an
activated gate scalar; which irreps a layer outputs depends on which paths exist from its input
(``tp_path_exists``), exactly as in NequIP, so that weights of NequIP layers load one to one.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from e3nn import o3
from e3nn.nn import NormActivation

from mlpot.models.equivariant.blocks import (SCALAR_ACTIVATIONS, EdgeTensorProductScatter, Gate, IrrepsLinear, RadialMLP,
                                             TypeSelfConnection)

__all__ = ["InteractionLayer", "tp_path_exists"]


def tp_path_exists(irreps_in1, irreps_in2, ir_out) -> bool:
    """Whether some ir1 x ir2 of the inputs contains ``ir_out``."""
    ir_out = o3.Irrep(ir_out)
    return any(ir_out in ir1 * ir2 for _, ir1 in o3.Irreps(irreps_in1).simplify() for _, ir2 in o3.Irreps(irreps_in2).simplify())


class InteractionLayer(torch.nn.Module):
    """A NequIP convolution layer (module docstring).

    irreps_in: input node features; irreps_sh: edge spherical harmonics; feature_irreps_hidden:
    the irreps this layer aims at (NequIP's ``feature_irreps_hidden``); n_attrs: type-embedding
    width; n_radial: edge-embedding width (number of Bessel functions). ``irreps_out`` is what the
    layer really outputs.

    forward(h (n, irreps_in.dim), types (n,), type_attrs (n_types, n_attrs), sh (E, irreps_sh.dim),
    edge_weights (E, weight_numel) = ``radial_mlp`` of the edge embedding, centre (E,), neighbour (E,),
    norm (n, 1) or float = 1 / sqrt(avg_num_neighbors), both_directions: the edges are unordered
    pairs standing for both directions) -> (n, irreps_out.dim). The caller evaluates ``radial_mlp``.
    """

    def __init__(self, irreps_in, irreps_sh, feature_irreps_hidden, n_attrs: int, n_radial: int, radial_mlp_depth: int,
                 radial_mlp_width: int, use_sc: bool, resnet: bool, nonlinearity_type: str = "gate",
                 scalar_acts: Optional[Dict[str, str]] = None, gate_acts: Optional[Dict[str, str]] = None, dtype=None):
        super().__init__()
        scalar_acts = {1: (scalar_acts or {}).get("e", "silu"), -1: (scalar_acts or {}).get("o", "tanh")}
        gate_acts = {1: (gate_acts or {}).get("e", "silu"), -1: (gate_acts or {}).get("o", "tanh")}
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        hidden = o3.Irreps(feature_irreps_hidden)
        reachable = [(mul, ir) for mul, ir in hidden if tp_path_exists(self.irreps_in, self.irreps_sh, ir)]
        irreps_scalars = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l == 0])
        irreps_gated = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l > 0])
        layer_out = (irreps_scalars + irreps_gated).simplify()
        if nonlinearity_type == "gate":
            gate_ir = "0e" if tp_path_exists(self.irreps_in, self.irreps_sh, "0e") else "0o"
            irreps_gates = o3.Irreps([(mul, gate_ir) for mul, _ in irreps_gated])
            self.nonlinearity = Gate(irreps_scalars, [scalar_acts[ir.p] for _, ir in irreps_scalars],
                                     irreps_gates, [gate_acts[ir.p] for _, ir in irreps_gates], irreps_gated)
            conv_out = self.nonlinearity.irreps_in.simplify()
        elif nonlinearity_type == "norm":
            conv_out = layer_out.simplify()
            self.nonlinearity = NormActivation(conv_out, SCALAR_ACTIVATIONS[scalar_acts[1]], normalize=True, epsilon=1e-8, bias=False)
        else:
            raise ValueError(f"nonlinearity_type must be 'gate' or 'norm', got {nonlinearity_type!r}")
        self.irreps_out = o3.Irreps(self.nonlinearity.irreps_out)
        self.resnet = bool(resnet) and layer_out == self.irreps_in
        self.linear_in = IrrepsLinear(self.irreps_in, self.irreps_in, dtype=dtype)
        # the edge attributes are e3nn spherical harmonics with component normalisation: Y_0 = 1
        self.tensor_product = EdgeTensorProductScatter(self.irreps_in, self.irreps_sh, conv_out, constant_l0=True)
        self.radial_mlp = RadialMLP([n_radial] + [radial_mlp_width] * radial_mlp_depth + [self.tensor_product.weight_numel], "silu",
                                    dtype=dtype)
        self.linear_out = IrrepsLinear(self.tensor_product.irreps_mid.simplify(), conv_out, dtype=dtype)
        self.self_connection = TypeSelfConnection(self.irreps_in, n_attrs, conv_out, dtype=dtype) if use_sc else None

    def forward(self, h: torch.Tensor, types: torch.Tensor, type_attrs: torch.Tensor, sh: torch.Tensor,
                edge_weights: torch.Tensor, centre: torch.Tensor, neighbour: torch.Tensor, norm,
                both_directions: bool = False) -> torch.Tensor:
        previous = h
        sc = self.self_connection(h, types, type_attrs) if self.self_connection is not None else None
        h = self.linear_in(h) * norm
        h = self.tensor_product(h, sh, edge_weights, centre, neighbour, both_directions)
        h = self.linear_out(h)
        if sc is not None:
            h = h + sc
        h = self.nonlinearity(h)
        return previous + h if self.resnet else h
