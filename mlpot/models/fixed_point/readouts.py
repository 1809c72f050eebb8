"""Field energy readouts e_i of the fixed-point model (spec mace_scf.md §2.8), and the local
density readout p0 (§2.5).

A readout sees the mixed backbone features h (n, C, 4), the final density p and the local guess
p0 (n, (L+1)^2, stored order), the final normalised features f (n, n_widths, 4) and the species;
it returns a per-atom energy (n,) eV (``include_local_electron_energy``):

* ``NullFieldReadout``: 0;
* ``StrictQuadraticFieldEnergyReadout`` (default): a = W_q (p - p0), b = W_v (0.01 f) (K x (0e+1o),
  no bias), c_k = sum_ij W0_ijk a_i0 b_j0 + W1_ijk a_i1.b_j1, e = sum_km W_km c_k h_m0: bilinear in
  the induced density and the field, weighted by the environment;
* ``OneBodyMLPFieldReadout``: MLP(128, 128, 128) over the invariants <h, W (p + p0)> and <h, W' f>;
* ``ManyBodyChargesReadout`` / ``ManyBodyChargesFieldReadout``: the embedded density (and
  features) passed through one equivariant convolution; per channel the scalar and the squared
  norm of the messages (correlation 2) with h's scalars go through an MLP.
"""

from __future__ import annotations

from typing import Optional

import torch

from mlpot.models.fixed_point.channels import (ChannelLinear, IrrepsProjection, channel_dot, channels_to_density,
                                               density_to_channels)
from mlpot.models.fixed_point.message import EdgeGeometry, EquivariantConvolution
from mlpot.nn import Registry, gather_rows

__all__ = ["READOUTS", "LocalDensityReadout", "pad_channels"]


def pad_channels(x: torch.Tensor, components: int = 4) -> torch.Tensor:
    """(n, C, D) -> (n, C, components) with zero l = 1 parts when D = 1."""
    if x.shape[-1] == components:
        return x
    return torch.cat([x, x.new_zeros(x.shape[:-1] + (components - x.shape[-1],))], dim=-1)


def _mlp(sizes, dtype):
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, dtype=dtype))
        if k < len(sizes) - 2:
            layers.append(torch.nn.SiLU())
    return torch.nn.Sequential(*layers)


class NullFieldReadout(torch.nn.Module):
    def __init__(self, channels: int, n_widths: int, dtype: torch.dtype = torch.float64, **_):
        super().__init__()

    def forward(self, hidden, density, density0, features, species, edges=None):
        return hidden.new_zeros(hidden.shape[0])


class StrictQuadraticFieldEnergyReadout(torch.nn.Module):
    def __init__(self, channels: int, n_widths: int, dtype: torch.dtype = torch.float64, inner_channels: int = 32, **_):
        super().__init__()
        k = int(inner_channels)
        self.induced = ChannelLinear(1, k, 1, dtype=dtype)
        self.field = ChannelLinear(n_widths, k, 1, dtype=dtype)
        self.coupling = torch.nn.Parameter(torch.randn(2, k, k, k, dtype=dtype) / k)
        self.environment = torch.nn.Parameter(torch.randn(k, channels, dtype=dtype) / (k * channels) ** 0.5)

    def forward(self, hidden, density, density0, features, species, edges=None):
        """e_n = sum_k c_nk sum_m W_km h_nm0 (class docstring). a has one input channel (the induced
        density x = p - p0) and b is linear in f, both without bias, so c is a bilinear form of
        the invariants z = [x_0 f_w0, x_1.f_w1] (n, 2 n_widths): c = z Q with Q (2 n_widths, K) =
        0.01 W_v,l (sum_i W_q,l[i] W_l[i]), and e = <z R, h_0> with R = Q W (2 n_widths, C):
        the K^3 coupling is contracted once per call instead of once per atom."""
        x = pad_channels(density_to_channels(density - density0))[:, 0]  # (n, 4) [x0, x]
        z = torch.cat([x[:, :1] * features[:, :, 0], (x[:, None, 1:] * features[:, :, 1:]).sum(-1)], dim=1)
        induced, field = self.induced.weight[:, 0], self.field.weight  # (2, K), (2, n_widths, K)
        pair = torch.einsum("li,lijk->ljk", induced, self.coupling)  # (2, K, K)
        q = (0.01 * torch.bmm(field, pair)).flatten(0, 1)  # (2 n_widths, K)
        return ((z @ (q @ self.environment)) * hidden[:, :, 0]).sum(-1)


class OneBodyMLPFieldReadout(torch.nn.Module):
    def __init__(self, channels: int, n_widths: int, dtype: torch.dtype = torch.float64, hidden_sizes=(128, 128, 128), **_):
        super().__init__()
        self.density = ChannelLinear(1, channels, 1, dtype=dtype)
        self.field = ChannelLinear(n_widths, channels, 1, dtype=dtype)
        self.weights = torch.nn.Parameter(torch.ones(2, channels, dtype=dtype))
        self.mlp = _mlp([2 * channels, *hidden_sizes, 1], dtype)

    def forward(self, hidden, density, density0, features, species, edges=None):
        x = channel_dot(hidden, self.density(pad_channels(density_to_channels(density + density0))), self.weights)
        y = channel_dot(hidden, self.field(features), self.weights)
        return self.mlp(torch.cat([x, y], dim=1)).squeeze(-1)


class ManyBodyChargesReadout(torch.nn.Module):
    with_field = False

    def __init__(self, channels: int, n_widths: int, dtype: torch.dtype = torch.float64, avg_num_neighbors: float = 10.0,
                 hidden_sizes=(64, 64), **_):
        super().__init__()
        self.density = ChannelLinear(1, channels, 1, dtype=dtype)
        self.field = ChannelLinear(n_widths, channels, 1, dtype=dtype) if self.with_field else None
        self.convolution = EquivariantConvolution(channels, 1, avg_num_neighbors=avg_num_neighbors, dtype=dtype)
        self.mlp = _mlp([3 * channels, *hidden_sizes, 1], dtype)

    def forward(self, hidden, density, density0, features, species, edges: Optional[EdgeGeometry] = None):
        x = self.density(pad_channels(density_to_channels(density - density0)))
        if self.field is not None:
            x = x + self.field(features)
        messages = self.convolution(x, edges) + x
        invariants = torch.cat([messages[:, :, 0], (messages * messages).sum(-1), hidden[:, :, 0]], dim=1)
        return self.mlp(invariants).squeeze(-1)


class ManyBodyChargesFieldReadout(ManyBodyChargesReadout):
    with_field = True


READOUTS: Registry[type] = Registry("field energy readout")
READOUTS.register("StrictQuadraticFieldEnergyReadout", StrictQuadraticFieldEnergyReadout, ["strict_quadratic"])
READOUTS.register("NullFieldReadout", NullFieldReadout, ["null", "none"])
READOUTS.register("OneBodyMLPFieldReadout", OneBodyMLPFieldReadout, ["one_body_mlp"])
READOUTS.register("ManyBodyChargesReadout", ManyBodyChargesReadout, ["many_body_charges"])
READOUTS.register("ManyBodyChargesFieldReadout", ManyBodyChargesFieldReadout, ["many_body_charges_field"])


class LocalDensityReadout(torch.nn.Module):
    """Field-independent density p0 (n, (L+1)^2) stored order from backbone features.

    Default: gated equivariant MLP (e3nn linear to ``mlp_channels`` x (0e+1o), SiLU on scalars,
    sigmoid gates on vectors, linear to 0e (+1o) with a bias on the charge). With
    ``use_linear_local_charges``: one e3nn linear times a per-species scale (buffer
    ``density_scaling`` (n_species,), set from ``atom_density_scaling``).
    """

    def __init__(self, node_irreps, density_max_l: int, n_species: int, mlp_channels: int = 16,
                 use_linear_local_charges: bool = False, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.max_l, self.linear = int(density_max_l), bool(use_linear_local_charges)
        self.register_buffer("density_scaling", torch.ones(n_species, dtype=dtype))
        if self.linear:
            self.project = IrrepsProjection(node_irreps, 1, self.max_l, bias=False, dtype=dtype)
            return
        self.project = IrrepsProjection(node_irreps, mlp_channels, 1, bias=True, dtype=dtype)
        self.gates = torch.nn.Linear(mlp_channels, mlp_channels, dtype=dtype)
        self.out = ChannelLinear(mlp_channels, 1, 1, bias=True, dtype=dtype, scale=0.1)

    def forward(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.from_projection(self.project(features), species)

    def from_projection(self, h: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """p0 (n, (L+1)^2) from the projected features h = ``self.project(features)`` (n, C, D)."""
        if self.linear:
            return channels_to_density(h * gather_rows(self.density_scaling, species)[:, None, None])
        scalars = h[:, :, 0]
        gated = torch.cat([torch.nn.functional.silu(scalars).unsqueeze(-1),
                           h[:, :, 1:] * torch.sigmoid(self.gates(scalars)).unsqueeze(-1)], dim=-1)
        return channels_to_density(self.out(gated)[..., : (self.max_l + 1) ** 2])
