"""MACE's interaction blocks (mace-torch ``RealAgnostic*InteractionBlock``): the A-features.

Every block computes, for the node features h (n, D, C) and the edges j -> i:

    h' = linear_up(h)
    w_ij = radial_MLP(radial features_ij) [x envelope_ij when the cutoff is not in the features]
    A_i = linear(sum_j TP(h'_j, Y_ij; w_ij)) / norm_i

and differs in
* the normalisation: ``avg_num_neighbors`` (a constant), or, for the *Density* blocks,
  1 + sum_j tanh(MLP_d(radial features_ij)^2) [x envelope] (a learnt local density);
* the element-dependent linear ``skip_tp``: applied to A (plain blocks: A <- skip_tp(A)) or to the
  incoming h as a residual ``sc`` that the product basis adds to its output (*Residual* blocks).

``INTERACTIONS`` maps mace-torch's class names to (residual, density). Other mace-torch blocks
(attention, non-linear residual) are not built.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from e3nn import o3

from mlpot.models.equivariant.blocks import RadialMLP
from mlpot.models.equivariant.mace.linear import ChannelLinear, ElementLinear
from mlpot.models.equivariant.mace.neighbours import PaddedEdges
from mlpot.models.equivariant.mace.tensor_product import ChannelwiseTensorProduct

__all__ = ["InteractionBlock", "INTERACTIONS"]

INTERACTIONS: Dict[str, Tuple[bool, bool]] = {
    "RealAgnosticInteractionBlock": (False, False),
    "RealAgnosticResidualInteractionBlock": (True, False),
    "RealAgnosticDensityInteractionBlock": (False, True),
    "RealAgnosticDensityResidualInteractionBlock": (True, True),
}


class InteractionBlock(torch.nn.Module):
    """One interaction (module docstring).

    node_blocks/channels: irreps and channels of the incoming node features; sh_blocks: irreps of
    the edge harmonics; target_blocks: irreps of A (channels ``channels``); hidden_blocks: irreps of
    the residual ``sc`` (the product basis output of this layer); num_basis: radial features per edge.
    """

    def __init__(self, kind: str, node_blocks: Sequence[o3.Irrep], node_channels: int, channels: int,
                 sh_blocks: Sequence[o3.Irrep], target_blocks: Sequence[o3.Irrep], hidden_blocks: Sequence[o3.Irrep],
                 n_elements: int, num_basis: int, radial_mlp: Sequence[int], avg_num_neighbors: float,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        if kind not in INTERACTIONS:
            raise ValueError(f"unknown interaction block {kind!r}")
        self.kind = kind
        self.residual, self.density = INTERACTIONS[kind]
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.node_blocks = [o3.Irrep(ir) for ir in node_blocks]
        self.target_blocks = [o3.Irrep(ir) for ir in target_blocks]
        self.hidden_blocks = [o3.Irrep(ir) for ir in hidden_blocks]
        self.linear_up = ChannelLinear(self.node_blocks, node_channels, self.node_blocks, node_channels, dtype)
        self.conv_tp = ChannelwiseTensorProduct(self.node_blocks, node_channels, sh_blocks, self.target_blocks, dtype)
        # e3nn's FullyConnectedNet(sizes, silu) without biases, as mace-torch builds its radial MLPs
        self.conv_tp_weights = RadialMLP([num_basis] + list(radial_mlp) + [self.conv_tp.weight_numel], "silu", "moment", dtype)
        self.linear = ChannelLinear(self.conv_tp.blocks_out, node_channels, self.target_blocks, channels, dtype)
        if self.residual:
            self.skip_tp = ElementLinear(self.node_blocks, node_channels, n_elements, self.hidden_blocks, channels, dtype)
        else:
            self.skip_tp = ElementLinear(self.target_blocks, channels, n_elements, self.target_blocks, channels, dtype)
        if self.density:
            self.density_fn = RadialMLP([num_basis, 1], "silu", "moment", dtype)

    def forward(self, node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_feats: torch.Tensor,
                envelope: Optional[torch.Tensor], edges: PaddedEdges,
                segments: Optional[Sequence[int]],
                elements: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """node_feats (n, D_node, C_node) sorted by element (``elements`` (n,), ``segments`` atoms per
        element or None when traced); edge_sh (rows, K, D_sh), edge_feats (rows, K, num_basis) and
        envelope (rows, K, 1) or None in the receivers' padded slots (``edges``).
        Returns A (n, D_target, C) and sc (n, D_hidden, C) or None."""
        sc = self.skip_tp(node_feats, segments, elements) if self.residual else None
        up = self.linear_up(node_feats)
        weights = self.conv_tp_weights(edge_feats)
        if self.density:
            edge_density = torch.tanh(torch.square(self.density_fn(edge_feats)))
        if envelope is not None:
            weights = weights * envelope
            if self.density:
                edge_density = edge_density * envelope
        message = self.linear(self.conv_tp(up, edge_sh, weights, edges))
        if self.density:
            message = message / (edges.sum_rows(edge_density.sum(dim=1)) + 1).unsqueeze(-1)
        else:
            message = message / self.avg_num_neighbors
        if not self.residual:
            message = self.skip_tp(message, segments, elements)
        return message, sc

    def extra_repr(self) -> str:
        return f"{self.kind}, avg_num_neighbors={self.avg_num_neighbors:.6g}"
