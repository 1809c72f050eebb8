"""MACE's per-layer energy readouts (mace-torch ``LinearReadoutBlock`` / ``NonLinearReadoutBlock``).

* linear: E_i = linear(h_i) onto one scalar (only the 0e block of h contributes);
* non-linear: E_i = linear_2(act(linear_1(h_i))) with ``MLP_irreps`` = K x 0e hidden scalars and
  act the ``gate`` (silu, tanh, abs or none) scaled to unit second moment as e3nn's ``Activation``.

Both map (n, D, C) node features to (n,) energies in eV (one head).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from e3nn import o3

from mlpot.models.equivariant.activations import activation_constant
from mlpot.models.equivariant.mace.linear import ChannelLinear

__all__ = ["LinearReadout", "NonLinearReadout", "GATES"]

SCALAR = o3.Irrep("0e")
GATES = {"silu": torch.nn.functional.silu, "tanh": torch.tanh, "abs": torch.abs, "None": None}


class LinearReadout(torch.nn.Module):
    """(n, D, C) -> (n,) energies by one equivariant linear map onto 1x0e."""

    def __init__(self, blocks: Sequence[o3.Irrep], channels: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.linear = ChannelLinear(blocks, channels, [SCALAR], 1, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)[:, 0, 0]


class NonLinearReadout(torch.nn.Module):
    """(n, D, C) -> (n,) energies through ``mlp_channels`` hidden scalars and the gate."""

    def __init__(self, blocks: Sequence[o3.Irrep], channels: int, mlp_channels: int, gate: Optional[str],
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; expected one of {sorted(GATES)}")
        self.gate = gate
        self.activation = GATES[gate]
        self.constant = 1.0 if self.activation is None else activation_constant(self.activation)
        self.linear_1 = ChannelLinear(blocks, channels, [SCALAR], mlp_channels, dtype)
        self.linear_2 = ChannelLinear([SCALAR], mlp_channels, [SCALAR], 1, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(x)
        if self.activation is not None:
            hidden = self.activation(hidden)
            if self.constant != 1.0:
                hidden = hidden * self.constant
        return self.linear_2(hidden)[:, 0, 0]

    def extra_repr(self) -> str:
        return f"gate={self.gate}"
