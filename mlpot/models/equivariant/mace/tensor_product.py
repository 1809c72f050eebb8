"""MACE's convolution: a channel-wise ("uvu") tensor product of neighbour features with the edge
spherical harmonics, weighted per edge and channel, summed over the neighbours of each atom.

For each path p = (input block l1, harmonic l2 -> output l3) and channel c:

    m_i[p, M, c] = sum_j w_ij[p, c] sqrt(2 l3 + 1) sum_{m1 m2} W3j(l1 l2 l3)[m1, m2, M] h_j[m1, c] Y_ij[m2]

with e3nn's Wigner 3j symbols; the paths are those of mace-torch's
``tp_out_irreps_with_instructions`` (every l3 in l1 x l2 that the target irreps hold), sorted
stably by output irrep, so the per-edge weight layout (n_edges, n_paths * C) and the output irreps
(``blocks_out``) are e3nn's ``TensorProduct(..., "uvu", shared_weights=False)`` ones.

Evaluation: edges are grouped by receiver in padded slots (``PaddedEdges``). Per path, the
harmonics are contracted with the path's 3j block, the weights multiply the sender features of
its input block, and one batched matrix product over atoms sums over (neighbour, m1): the
per-edge messages (n_edges x D_out x C) are never formed.
The coupling tensor is a persistent buffer so that a model read from a file keeps the 3j sign
convention of the e3nn version that trained it (``set_path_coupling``). Written by hand for speed;
a test pins it against e3nn 0.6's TensorProduct.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from e3nn import o3

from mlpot.models.equivariant.mace.linear import block_slices
from mlpot.models.equivariant.mace.neighbours import PaddedEdges
from mlpot.models.equivariant.tensor_products import uvu_instructions
from mlpot.nn import gather_rows

__all__ = ["ChannelwiseTensorProduct", "tp_paths"]

PathSpec = Tuple[int, int, o3.Irrep]  # (input block, harmonic block, output irrep)


def tp_paths(blocks_in: Sequence[o3.Irrep], blocks_sh: Sequence[o3.Irrep], target: Sequence[o3.Irrep]) -> List[PathSpec]:
    """Paths in mace-torch's order: by (input block, harmonic block, l3), then sorted stably by l3's
    irrep; the same paths and order as NequIP's (``uvu_instructions``, one channel per block)."""
    single = lambda blocks: o3.Irreps([(1, o3.Irrep(ir)) for ir in blocks])  # noqa: E731
    mid, instructions = uvu_instructions(single(blocks_in), single(blocks_sh), single(target))
    return [(i, j, mid[k].ir) for i, j, k in sorted(instructions, key=lambda ins: ins[2])]


class ChannelwiseTensorProduct(torch.nn.Module):
    """Convolution m_i = sum_j TP(h_j, Y_ij; w_ij) (module docstring).

    blocks_in: irreps of one channel of the node features; blocks_sh: irreps of the harmonics
    (one copy each); target: irreps a path may produce. ``blocks_out`` and ``weight_numel``
    (n_paths * channels) describe the result.
    """

    def __init__(self, blocks_in: Sequence[o3.Irrep], channels: int, blocks_sh: Sequence[o3.Irrep],
                 target: Sequence[o3.Irrep], dtype: torch.dtype = torch.float64):
        super().__init__()
        self.blocks_in = [o3.Irrep(ir) for ir in blocks_in]
        self.blocks_sh = [o3.Irrep(ir) for ir in blocks_sh]
        self.channels = int(channels)
        self.paths = tp_paths(self.blocks_in, self.blocks_sh, target)
        self.blocks_out = [ir for _, _, ir in self.paths]
        self.weight_numel = len(self.paths) * self.channels
        self.slices_in, self.slices_sh = block_slices(self.blocks_in), block_slices(self.blocks_sh)
        self.slices_out = block_slices(self.blocks_out)
        self.dim_in, self.dim_sh = sum(ir.dim for ir in self.blocks_in), sum(ir.dim for ir in self.blocks_sh)
        self.dim_out = sum(ir.dim for ir in self.blocks_out)
        coupling = torch.zeros(self.dim_in, self.dim_sh, self.dim_out, dtype=dtype)
        self.register_buffer("coupling", coupling)
        for p in range(len(self.paths)):
            self.set_path_coupling(p, self.path_w3j(p))

    def path_w3j(self, p: int) -> torch.Tensor:
        """e3nn 0.6's Wigner 3j symbol of path p, (2l1+1, 2l2+1, 2l3+1)."""
        i, j, ir_out = self.paths[p]
        return o3.wigner_3j(self.blocks_in[i].l, self.blocks_sh[j].l, ir_out.l, dtype=torch.float64)

    def set_path_coupling(self, p: int, w3j: torch.Tensor) -> None:
        """Use ``w3j`` (2l1+1, 2l2+1, 2l3+1) as the 3j symbol of path p (times sqrt(2 l3 + 1))."""
        i, j, ir_out = self.paths[p]
        (a0, a1), (s0, s1), (o0, o1) = self.slices_in[i], self.slices_sh[j], self.slices_out[p]
        with torch.no_grad():
            self.coupling[a0:a1, s0:s1, o0:o1] = w3j.to(self.coupling.dtype) * ir_out.dim ** 0.5

    def forward(self, node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
                edges: PaddedEdges) -> torch.Tensor:
        """Messages summed at the receivers.

        node_feats: (n_nodes, D_in, C); edge_sh: (n_rows, K, D_sh) and edge_weights
        (n_rows, K, n_paths * C) in the receivers' padded slots (``edges``; zero in empty slots).
        Returns (n_nodes, D_out, C).
        """
        n_nodes, n_rows, width = edges.n_nodes, edges.n_rows, edges.width
        if width == 0:
            return node_feats.new_zeros(n_nodes, self.dim_out, self.channels)
        neighbours = gather_rows(node_feats, edges.sender_of_slot).view(n_rows, width, self.dim_in, self.channels)
        # split / unbind once: slicing per path would make autograd fill a full-size zero gradient per slice
        neighbour_blocks = torch.split(neighbours, [ir.dim for ir in self.blocks_in], dim=2)
        sh_blocks = torch.split(edge_sh, [ir.dim for ir in self.blocks_sh], dim=2)
        path_weights = edge_weights.view(n_rows, width, len(self.paths), self.channels).unbind(2)
        coupling = self.coupling.to(edge_sh.dtype)
        messages = []
        for p, (i, j, _) in enumerate(self.paths):
            (a0, a1), (s0, s1), (o0, o1) = self.slices_in[i], self.slices_sh[j], self.slices_out[p]
            # (n, K, d2) x (d1, d2, d3) -> (n, d3, K * d1): the 3j-weighted harmonics of the path
            angular = torch.einsum("nks,aso->noka", sh_blocks[j], coupling[a0:a1, s0:s1, o0:o1])
            products = path_weights[p].unsqueeze(2) * neighbour_blocks[i]  # (n, K, d1, C)
            messages.append(torch.bmm(angular.reshape(n_rows, o1 - o0, -1), products.view(n_rows, -1, self.channels)))
        return edges.sum_rows(torch.cat(messages, dim=1))

    def extra_repr(self) -> str:
        return (f"{self.channels}x({'+'.join(map(str, self.blocks_in))}) x {'+'.join(map(str, self.blocks_sh))} -> "
                f"{len(self.paths)} paths ({'+'.join(map(str, self.blocks_out))})")
