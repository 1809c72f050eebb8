"""Equivariant linear maps on channel-uniform irreps features, with e3nn's weight layout.

Layout. MACE's features have the same number of channels C for every irrep of a tensor, so mlpot
keeps them as (n, D, C): D runs over the components of one channel's irreps list ``blocks`` (e.g.
[0e, 1o] -> D = 4) and C is the last, contiguous axis, so that every channel mixing is a plain
matrix product. e3nn's flat layout (n, sum of C * (2l+1)) with ``Irreps([(C, ir) for ir in blocks])``
is converted at the boundaries only (``to_flat``/``from_flat``).

* ``IrrepsLinear`` equals ``e3nn.o3.Linear(Irreps C_in x blocks_in, Irreps C_out x blocks_out)``
  (no biases): output block j = sum over input blocks i of the same irrep of
  x_i @ W_ij / sqrt(fan_in_j), fan_in_j = C_in times the number of such i. ``weight`` is e3nn's
  flat parameter (instructions ordered by input block, then output block), so state dicts of
  mace-torch models load unchanged.
* ``ElementLinear`` equals ``e3nn.o3.FullyConnectedTensorProduct(C_in x blocks, S x 0e, C_out x
  blocks_out)`` evaluated on a one-hot element vector (MACE's ``skip_tp``): a linear map per
  element, weight (C_in, S, C_out) per irrep. Atoms arrive sorted by element (``segments``: the
  count of each element), so each element is one matrix product on a contiguous slice.

Written by hand rather than with e3nn modules for speed (one matmul per irrep block, no per-path
einsum graph) and to control the layout; tests pin both against e3nn 0.6 with the same weights.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from e3nn import o3

__all__ = ["IrrepsLinear", "ElementLinear", "block_slices", "to_flat", "from_flat", "irreps_of"]


def block_slices(blocks: Sequence[o3.Irrep]) -> List[Tuple[int, int]]:
    """(start, stop) along D of each block."""
    out, start = [], 0
    for ir in blocks:
        out.append((start, start + ir.dim))
        start += ir.dim
    return out


def irreps_of(channels: int, blocks: Sequence[o3.Irrep]) -> o3.Irreps:
    """e3nn Irreps of a (n, D, channels) feature: C x ir for each block, unsimplified."""
    return o3.Irreps([(channels, ir) for ir in blocks])


def to_flat(x: torch.Tensor, blocks: Sequence[o3.Irrep]) -> torch.Tensor:
    """(n, D, C) -> e3nn flat layout (n, sum C * dim), channel-major within each block."""
    n = x.shape[0]
    return torch.cat([x[:, a:b, :].transpose(1, 2).reshape(n, -1) for a, b in block_slices(blocks)], dim=1)


def from_flat(x: torch.Tensor, blocks: Sequence[o3.Irrep], channels: int) -> torch.Tensor:
    """e3nn flat layout (n, sum C * dim) -> (n, D, C)."""
    n, parts, start = x.shape[0], [], 0
    for ir in blocks:
        size = channels * ir.dim
        parts.append(x[:, start:start + size].reshape(n, channels, ir.dim).transpose(1, 2))
        start += size
    return torch.cat(parts, dim=1)


class IrrepsLinear(torch.nn.Module):
    """e3nn ``o3.Linear`` on (n, D_in, C_in) -> (n, D_out, C_out) (module docstring)."""

    def __init__(self, blocks_in: Sequence[o3.Irrep], channels_in: int, blocks_out: Sequence[o3.Irrep],
                 channels_out: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.blocks_in = [o3.Irrep(ir) for ir in blocks_in]
        self.blocks_out = [o3.Irrep(ir) for ir in blocks_out]
        self.channels_in, self.channels_out = int(channels_in), int(channels_out)
        self.slices_in, self.slices_out = block_slices(self.blocks_in), block_slices(self.blocks_out)
        instructions = [(i, j) for i, ir_in in enumerate(self.blocks_in) for j, ir_out in enumerate(self.blocks_out)
                        if ir_in == ir_out]
        self.sources = [[i for i, jj in instructions if jj == j] for j in range(len(self.blocks_out))]
        size = self.channels_in * self.channels_out
        self.offsets = {ins: k * size for k, ins in enumerate(instructions)}
        self.weight = torch.nn.Parameter(torch.randn(len(instructions) * size, dtype=dtype))

    @property
    def irreps_in(self) -> o3.Irreps:
        return irreps_of(self.channels_in, self.blocks_in)

    @property
    def irreps_out(self) -> o3.Irreps:
        return irreps_of(self.channels_out, self.blocks_out)

    def block_weight(self, j: int) -> torch.Tensor:
        """Stacked weight (len(sources_j) * C_in, C_out) of output block j, normalisation included."""
        size = self.channels_in * self.channels_out
        parts = [self.weight.narrow(0, self.offsets[(i, j)], size).view(self.channels_in, self.channels_out)
                 for i in self.sources[j]]
        scale = 1.0 / math.sqrt(self.channels_in * len(parts))
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, D_in, C_in) -> (n, D_out, C_out); output blocks without a source are zero."""
        outputs = []
        for j, (a, b) in enumerate(self.slices_out):
            if not self.sources[j]:
                outputs.append(x.new_zeros(x.shape[0], b - a, self.channels_out))
                continue
            inputs = [x[:, self.slices_in[i][0]:self.slices_in[i][1], :] for i in self.sources[j]]
            stacked = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=2)
            outputs.append(torch.matmul(stacked, self.block_weight(j)))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"


class ElementLinear(torch.nn.Module):
    """MACE's ``skip_tp``: a linear map per element on (n, D_in, C_in) -> (n, D_out, C_out).

    ``weight`` is e3nn's flat FullyConnectedTensorProduct parameter: for each instruction (input
    block i, output block j of the same irrep) a (C_in, n_elements, C_out) tensor.
    """

    def __init__(self, blocks_in: Sequence[o3.Irrep], channels_in: int, n_elements: int,
                 blocks_out: Sequence[o3.Irrep], channels_out: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.blocks_in = [o3.Irrep(ir) for ir in blocks_in]
        self.blocks_out = [o3.Irrep(ir) for ir in blocks_out]
        self.channels_in, self.channels_out, self.n_elements = int(channels_in), int(channels_out), int(n_elements)
        self.slices_in, self.slices_out = block_slices(self.blocks_in), block_slices(self.blocks_out)
        instructions = [(i, j) for i, ir_in in enumerate(self.blocks_in) for j, ir_out in enumerate(self.blocks_out)
                        if ir_in == ir_out]
        self.sources = [[i for i, jj in instructions if jj == j] for j in range(len(self.blocks_out))]
        size = self.channels_in * self.n_elements * self.channels_out
        self.offsets = {ins: k * size for k, ins in enumerate(instructions)}
        self.weight = torch.nn.Parameter(torch.randn(len(instructions) * size, dtype=dtype))
        # e3nn: path weight sqrt(dim / fan_in) times the 3j symbol of (l, 0, l), i.e. 1/sqrt(fan_in)
        self.coefficients = []
        for j, ir in enumerate(self.blocks_out):
            fan_in = self.channels_in * self.n_elements * max(len(self.sources[j]), 1)
            w3j = float(o3.wigner_3j(ir.l, 0, ir.l, dtype=torch.float64)[0, 0, 0])
            self.coefficients.append(math.sqrt(ir.dim / fan_in) * w3j)

    def element_weights(self, j: int) -> torch.Tensor:
        """(n_elements, len(sources_j) * C_in, C_out) weights of output block j, scaled."""
        size = self.channels_in * self.n_elements * self.channels_out
        parts = [self.weight.narrow(0, self.offsets[(i, j)], size).view(self.channels_in, self.n_elements, self.channels_out)
                 for i in self.sources[j]]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return stacked.transpose(0, 1) * self.coefficients[j]

    def forward(self, x: torch.Tensor, segments: Sequence[int]) -> torch.Tensor:
        """x: (n, D_in, C_in), rows sorted by element with ``segments`` rows per element."""
        outputs = []
        for j, (a, b) in enumerate(self.slices_out):
            if not self.sources[j]:
                outputs.append(x.new_zeros(x.shape[0], b - a, self.channels_out))
                continue
            inputs = [x[:, self.slices_in[i][0]:self.slices_in[i][1], :] for i in self.sources[j]]
            stacked = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=2)
            weights = self.element_weights(j)
            parts, start = [], 0
            for element, count in enumerate(segments):
                if count:
                    parts.append(torch.matmul(stacked.narrow(0, start, count), weights[element]))
                start += count
            if not parts:
                parts.append(x.new_zeros(0, b - a, self.channels_out))
            outputs.append(torch.cat(parts, dim=0) if len(parts) != 1 else parts[0])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def extra_repr(self) -> str:
        return f"{irreps_of(self.channels_in, self.blocks_in)} x {self.n_elements}x0e -> {irreps_of(self.channels_out, self.blocks_out)}"
