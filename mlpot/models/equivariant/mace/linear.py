"""MACE's equivariant linear maps on channel-uniform irreps features, and their layout.

Layout. MACE's features have the same number of channels C for every irrep of a tensor, so mlpot
keeps them as (n, D, C): D runs over the components of one channel's irreps list ``blocks`` (e.g.
[0e, 1o] -> D = 4) and C is the last, contiguous axis, so that every channel mixing is a plain
matrix product. e3nn's flat layout (n, sum of C * (2l+1)) with ``Irreps([(C, ir) for ir in blocks])``
is converted at the boundaries only (``to_flat``/``from_flat``).

The maps are the shared blocks of :mod:`mlpot.models.equivariant.blocks` in their channels-last
layout, built from MACE's (blocks, channels) arguments:

* ``ChannelLinear`` = ``blocks.IrrepsLinear``: e3nn's ``o3.Linear(C_in x blocks_in, C_out x
  blocks_out)`` (no biases); ``weight`` is e3nn's flat parameter, so mace-torch state dicts load
  unchanged;
* ``ElementLinear`` = ``blocks.TypeSelfConnection`` with one-hot element attributes: e3nn's
  ``FullyConnectedTensorProduct(C_in x blocks, S x 0e, C_out x blocks_out)`` (MACE's ``skip_tp``),
  a linear map per element; atoms arrive sorted by element (``segments``: the count of each).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from e3nn import o3

from mlpot.models.equivariant.blocks import IrrepsLinear, TypeSelfConnection

__all__ = ["ChannelLinear", "ElementLinear", "block_slices", "to_flat", "from_flat", "irreps_of"]


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


class ChannelLinear(IrrepsLinear):
    """``IrrepsLinear`` on (n, D_in, C_in) -> (n, D_out, C_out) from per-channel irreps and channel counts."""

    def __init__(self, blocks_in: Sequence[o3.Irrep], channels_in: int, blocks_out: Sequence[o3.Irrep],
                 channels_out: int, dtype: torch.dtype = torch.float64):
        super().__init__(irreps_of(channels_in, blocks_in), irreps_of(channels_out, blocks_out), dtype=dtype, channels_last=True)


class ElementLinear(TypeSelfConnection):
    """MACE's ``skip_tp``: a linear map per element on (n, D_in, C_in) -> (n, D_out, C_out), rows sorted
    by element; ``weight`` is e3nn's flat FullyConnectedTensorProduct parameter."""

    def __init__(self, blocks_in: Sequence[o3.Irrep], channels_in: int, n_elements: int,
                 blocks_out: Sequence[o3.Irrep], channels_out: int, dtype: torch.dtype = torch.float64):
        super().__init__(irreps_of(channels_in, blocks_in), n_elements, irreps_of(channels_out, blocks_out), dtype=dtype,
                         channels_last=True)

    def forward(self, x: torch.Tensor, segments: Optional[Sequence[int]],
                elements: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (n, D_in, C_in), rows sorted by element with ``segments`` rows per element; elements (n,)
        the element of each row (used when ``segments`` is None: a traced model)."""
        return super().forward(x, elements, segments=segments)
