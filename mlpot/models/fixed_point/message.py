"""One equivariant message-passing layer over the neighbour graph, in the channel layout (l <= 1).

Used by the many-body update (``ManyBodyUpdate``) and the many-body energy readouts: atom i
collects from its neighbours j (edges of the batch, within the model cutoff)

    A_i,c = (1 / n_avg) sum_j W_c(r_ij) * (x_j,c (x) Y(r_hat_ij))

with the four paths of l <= 1 (scalar -> scalar, scalar -> vector along r_hat, vector -> vector,
vector . r_hat -> scalar) each with its own radial weight per channel, W = MLP(Bessel(r) * cutoff(r)).
Written by hand for the same reason as ``channels.py`` (l <= 1 paths are a few products).
:class:`EdgeGeometry` is computed once per geometry (it does not change during the SCF).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mlpot.data.keys import EDGE_INDEX
from mlpot.models.base import edge_vectors
from mlpot.nn import BesselBasis, gather_rows, polynomial_cutoff, scatter_sum

__all__ = ["EdgeGeometry", "edge_geometry", "EquivariantConvolution"]


class EdgeGeometry(NamedTuple):
    """centre (n_edges,), neighbour (n_edges,), unit vectors r_hat_ij (n_edges, 3), radial basis
    times the cutoff envelope (n_edges, n_basis), the envelope (n_edges,)."""

    centre: torch.Tensor
    neighbour: torch.Tensor
    unit: torch.Tensor
    radial: torch.Tensor
    envelope: torch.Tensor


def edge_geometry(batch, cutoff: float, n_basis: int = 8, dtype: torch.dtype = torch.float64) -> EdgeGeometry:
    """The edge data of ``batch`` (EDGE_INDEX within ``cutoff`` Å), differentiable in positions and cell."""
    vectors = edge_vectors(batch, dtype)
    length = torch.linalg.norm(vectors, dim=-1)
    envelope = polynomial_cutoff(length, cutoff, 5.0)
    basis = BesselBasis(cutoff, n_basis, dtype=dtype)(length) * envelope.unsqueeze(-1)
    edges = batch[EDGE_INDEX]
    return EdgeGeometry(edges[0], edges[1], vectors / length.unsqueeze(-1), basis, envelope)


class EquivariantConvolution(torch.nn.Module):
    """(n, C, D) node channels -> (n, C, D) aggregated messages (module docstring).

    channels: C; max_l: 0 or 1 (D = 1 or 4); n_basis: radial basis size; hidden: width of the
    radial MLP; avg_num_neighbors: the normalisation n_avg.
    """

    def __init__(self, channels: int, max_l: int, n_basis: int = 8, hidden: int = 32,
                 avg_num_neighbors: float = 10.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.channels, self.max_l = int(channels), int(max_l)
        self.n_paths = 1 if self.max_l == 0 else 4
        self.radial = torch.nn.Sequential(
            torch.nn.Linear(n_basis, hidden, dtype=dtype), torch.nn.SiLU(),
            torch.nn.Linear(hidden, self.channels * self.n_paths, dtype=dtype))
        self.register_buffer("avg_num_neighbors", torch.tensor(float(avg_num_neighbors), dtype=dtype))

    def forward(self, x: torch.Tensor, edges: EdgeGeometry) -> torch.Tensor:
        weights = self.radial(edges.radial).view(-1, self.channels, self.n_paths)
        source = gather_rows(x, edges.neighbour)  # (E, C, D)
        scalar = weights[..., 0] * source[:, :, 0]
        if self.max_l == 0:
            messages = scalar.unsqueeze(-1)
        else:
            unit = edges.unit.unsqueeze(1)  # (E, 1, 3)
            vector = source[:, :, 1:]
            scalar = scalar + weights[..., 3] * (vector * unit).sum(-1)
            vectors = weights[..., 1:2] * source[:, :, :1] * unit + weights[..., 2:3] * vector
            messages = torch.cat([scalar.unsqueeze(-1), vectors], dim=-1)
        return scatter_sum(messages, edges.centre, x.shape[0]) / self.avg_num_neighbors
