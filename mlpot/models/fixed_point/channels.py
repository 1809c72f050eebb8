"""Channel layout of the fixed-point blocks: equivariant features with l <= 1 as (n, C, D).

Every block of the fixed-point model (densities, field features, mixed backbone features,
embeddings) holds C channels of one scalar (l = 0) and, when D = 4, one Cartesian vector (l = 1,
odd parity) each: ``x[:, c, 0]`` is the scalar and ``x[:, c, 1:4]`` the vector (x, y, z), which
is e3nn 0.6's own l = 1 order, so backbone irreps projected with e3nn land here unchanged.
Linear maps act on the channel axis, separately per l, which keeps them equivariant; they may
depend on the species (MACE-SCF's ``FCTP(x (x) onehot(Z))`` is exactly a per-species linear map).

The stored density order [Q, d_y, d_z, d_x] and the field-feature layout of
``mlpot.electrostatics`` (l = 0 of every width, then l = 1 of each width in (y, z, x)) are
converted here, at the boundary, and nowhere else.

Written by hand rather than with e3nn tensor products: for l <= 1 with uniform channels these
maps are a few einsums, several times faster than e3nn's generic kernels on small blocks.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from e3nn import o3

from mlpot.nn import gather_rows

__all__ = [
    "n_components", "density_to_channels", "channels_to_density", "features_to_channels", "ChannelLinear",
    "IrrepsProjection", "joint_projection", "channel_dot", "channel_irreps",
]

# stored [Q, d_y, d_z, d_x] -> channel [Q, x, y, z] and back
_STORED_TO_CHANNEL = (0, 3, 1, 2)
_CHANNEL_TO_STORED = (0, 2, 3, 1)
_YZX_TO_XYZ = (2, 0, 1)


def n_components(max_l: int) -> int:
    """D = (max_l + 1)^2 components per channel (1 or 4)."""
    if max_l not in (0, 1):
        raise ValueError(f"channel blocks support l <= 1; got max_l = {max_l}")
    return (max_l + 1) ** 2


def _columns(x: torch.Tensor, order) -> torch.Tensor:
    return x.index_select(-1, torch.tensor(order[: x.shape[-1]], device=x.device))


def density_to_channels(density: torch.Tensor) -> torch.Tensor:
    """(n, (L+1)^2) stored [Q, d_y, d_z, d_x] -> (n, 1, D) [Q, x, y, z]."""
    return _columns(density, _STORED_TO_CHANNEL).unsqueeze(1)


def channels_to_density(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, D) [Q, x, y, z] -> (n, D) stored [Q, d_y, d_z, d_x]."""
    return _columns(x[:, 0], _CHANNEL_TO_STORED)


def features_to_channels(features: torch.Tensor, n_widths: int, max_l: int) -> torch.Tensor:
    """Field features (n, n_widths (max_l+1)^2) of ``mlpot.electrostatics`` -> (n, n_widths, D)."""
    scalars = features[:, :n_widths].unsqueeze(-1)
    if max_l == 0:
        return scalars
    vectors = features[:, n_widths:].reshape(-1, n_widths, 3)
    return torch.cat([scalars, _columns(vectors, _YZX_TO_XYZ)], dim=-1)


def channel_irreps(channels: int, max_l: int) -> o3.Irreps:
    """e3nn irreps of a (C, D) block: C x 0e (+ C x 1o)."""
    return o3.Irreps(f"{channels}x0e" + (f" + {channels}x1o" if max_l >= 1 else ""))


class ChannelLinear(torch.nn.Module):
    """y[:, o, l] = sum_c x[:, c, l] W_l[c, o] (+ b[o] on l = 0); W per species when ``n_species``.

    (n, c_in, D) -> (n, c_out, D); ``species`` (n,) int64 indexes the per-species weights.
    """

    def __init__(self, c_in: int, c_out: int, max_l: int, n_species: int = 0, bias: bool = False,
                 dtype: torch.dtype = torch.float64, scale: float = 1.0):
        super().__init__()
        self.c_in, self.c_out, self.max_l, self.n_species = int(c_in), int(c_out), int(max_l), int(n_species)
        shape = ((self.n_species,) if self.n_species else ()) + (self.max_l + 1, self.c_in, self.c_out)
        self.weight = torch.nn.Parameter(scale * torch.randn(shape, dtype=dtype) / self.c_in ** 0.5)
        bias_shape = ((self.n_species,) if self.n_species else ()) + (self.c_out,)
        self.bias = torch.nn.Parameter(torch.zeros(bias_shape, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor, species: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.n_species:
            weight = gather_rows(self.weight, species)  # (n, L+1, c_in, c_out)
            out = [torch.einsum("ncd,nco->nod", x[:, :, :1], weight[:, 0])]
            if x.shape[-1] > 1:
                out.append(torch.einsum("ncd,nco->nod", x[:, :, 1:], weight[:, 1]))
        else:
            out = [torch.einsum("ncd,co->nod", x[:, :, :1], self.weight[0])]
            if x.shape[-1] > 1:
                out.append(torch.einsum("ncd,co->nod", x[:, :, 1:], self.weight[1]))
        y = torch.cat(out, dim=-1)
        if self.bias is not None:
            bias = gather_rows(self.bias, species) if self.n_species else self.bias.expand(x.shape[0], -1)
            y = torch.cat([y[:, :, :1] + bias.unsqueeze(-1), y[:, :, 1:]], dim=-1)
        return y


class IrrepsProjection(torch.nn.Module):
    """Backbone features with any e3nn irreps -> (n, C, D) channels by an e3nn ``o3.Linear``.

    Irreps of the input that have no l <= 1 counterpart (l >= 2, even vectors) do not contribute;
    if the input has no odd vectors the l = 1 part is zero. ``bias``: a learned constant on the
    scalars (so a projection of species-only features can be any per-species value).
    """

    def __init__(self, irreps_in, channels: int, max_l: int, bias: bool = True, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.channels, self.max_l = int(channels), int(max_l)
        self.linear = o3.Linear(self.irreps_in, channel_irreps(self.channels, self.max_l), biases=bias).to(dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(n, irreps_in.dim) -> (n, C, D) (``joint_projection`` of this projection alone)."""
        return joint_projection(features, [self])[0]

    def assemble(self, products: Dict[int, torch.Tensor], n: int, like: torch.Tensor) -> torch.Tensor:
        """(n, C, D) from the weighted products of this projection's instructions (by index), the
        biases added and the terms of one output summed in instruction order (as e3nn does)."""
        linear, parts, bias_at = self.linear, {}, 0
        for k, ins in enumerate(linear.instructions):
            if 0 in ins.path_shape:
                continue
            if ins.i_in == -1:
                term = (ins.path_weight * linear.bias.narrow(-1, bias_at, ins.path_shape[0])).view(1, -1, 1)
                bias_at += ins.path_shape[0]
            else:
                term = products[k]
            parts[ins.i_out] = term if ins.i_out not in parts else parts[ins.i_out] + term
        blocks = [parts[i] if i in parts else like.new_zeros(n, mul_ir.mul, mul_ir.ir.dim)
                  for i, mul_ir in enumerate(linear.irreps_out)]
        scalars = blocks[0].expand(n, -1, -1)
        return scalars if self.max_l == 0 else torch.cat([scalars, blocks[1]], dim=-1)


def joint_projection(features: torch.Tensor, projections: Sequence[IrrepsProjection]) -> List[torch.Tensor]:
    """The outputs (n, C_p, D_p) of several projections of the same features (n, irreps_in.dim).

    Each projection is its e3nn linear (same weights, path weights and order of sums), evaluated
    with one matrix product per input irreps block for all the projections together (their weights
    side by side), the input split once: one concatenation in the backward, where e3nn's own
    code zero-fills a gradient of the whole input per block and projection (se_e2_a's 1600 + 300
    features of the DeePMD water example: 2.6 ms -> 0.5 ms per projection and batch).
    """
    irreps, n = projections[0].irreps_in, features.shape[0]
    if any(p.irreps_in != irreps for p in projections):
        raise ValueError("joint_projection needs projections of the same input irreps")
    pieces = features.split([mul_ir.dim for mul_ir in irreps], dim=1)
    products: List[Dict[int, torch.Tensor]] = [{} for _ in projections]
    for i_in, mul_ir in enumerate(irreps):
        users = [(p, k, ins) for p, projection in enumerate(projections)
                 for k, ins in enumerate(projection.linear.instructions) if ins.i_in == i_in and 0 not in ins.path_shape]
        if not users:
            continue
        weights = [projections[p].linear.weight_view_for_instruction(k) for p, k, _ in users]
        x = pieces[i_in] if mul_ir.ir.dim == 1 else pieces[i_in].view(n, mul_ir.mul, mul_ir.ir.dim).transpose(1, 2)
        outs = (x @ (weights[0] if len(weights) == 1 else torch.cat(weights, dim=1))).split([w.shape[1] for w in weights], -1)
        for (p, k, ins), y in zip(users, outs):
            y = ins.path_weight * y
            products[p][k] = y.unsqueeze(-1) if mul_ir.ir.dim == 1 else y.transpose(1, 2)
    return [projection.assemble(products[p], n, features) for p, projection in enumerate(projections)]


def channel_dot(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Invariant per-channel products sum_l w_l[c] <a_c,l, b_c,l> (n, C); weights (L+1, C)."""
    out = weights[0] * a[:, :, 0] * b[:, :, 0]
    if a.shape[-1] > 1:
        out = out + weights[1] * (a[:, :, 1:] * b[:, :, 1:]).sum(-1)
    return out
