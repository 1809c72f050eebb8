"""Edges grouped by receiving atom and padded to the largest neighbour count.

The convolution sums, for every atom i, products over its incoming edges. Storing edge quantities
as (n_nodes, K, ...) — the edges of atom i in row i, K the largest neighbour count, zeros in the
unused slots — turns that sum into one batched matrix product per coupling path
(``ChannelwiseTensorProduct``) and never materialises per-edge messages of size
(n_edges, n_paths x (2l+1), channels), whose allocation and traversal dominated an edge-wise
gather/scatter implementation on CPU. The padding costs K / mean neighbour count (about 1.2 for
liquids) on the small per-edge tensors only.

K is a value of the data, which a graph tracer (``mlpot compile``, ``mlpot.nn.is_tracing``) cannot
turn into a shape; there every edge is its own row (``n_rows`` = n_edges, K = 1) and
:meth:`PaddedEdges.sum_rows` adds the rows up at the receivers (the edge-wise scatter: the same
numbers, shapes that depend on the input sizes only).
"""

from __future__ import annotations

import torch

from mlpot.nn import is_tracing, scatter_sum

__all__ = ["PaddedEdges"]


class PaddedEdges:
    """Slots (n_nodes * width) of the edges of each receiver.

    receiver, sender: (n_edges,) node indices (int64); n_nodes: number of nodes. Attributes:
    ``width`` (K), ``n_rows`` (n_nodes, or n_edges in the per-edge layout of a traced model),
    ``edge_of_slot`` (n_rows * K,) edge index of each slot (0 in empty slots), ``sender_of_slot``
    (n_rows * K,) its sender, ``used`` (n_rows * K,) True for used slots.
    """

    def __init__(self, receiver: torch.Tensor, sender: torch.Tensor, n_nodes: int):
        self.n_nodes = n_nodes if is_tracing() else int(n_nodes)  # int() would fix a traced size
        self.receiver = receiver
        self.per_edge = is_tracing()
        if self.per_edge:
            self.width, self.n_rows = 1, receiver.shape[0]
            self.sender_of_slot = sender
            return
        self.n_rows = self.n_nodes
        n_edges = receiver.shape[0]
        counts = torch.bincount(receiver, minlength=self.n_nodes)
        self.width = int(counts.max()) if n_edges else 0
        order = torch.argsort(receiver, stable=True)
        first = torch.cumsum(counts, 0) - counts
        sorted_receiver = receiver.index_select(0, order)
        slots = sorted_receiver * self.width + (torch.arange(n_edges, device=receiver.device) - first.index_select(0, sorted_receiver))
        self.edge_of_slot = torch.zeros(self.n_nodes * self.width, dtype=torch.long, device=receiver.device)
        self.edge_of_slot[slots] = order
        used = torch.zeros(self.n_nodes * self.width, dtype=torch.bool, device=receiver.device)
        used[slots] = True
        self.used = used
        self.sender_of_slot = sender.index_select(0, self.edge_of_slot) if n_edges else self.edge_of_slot

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """(n_edges, *feature) -> (n_rows, K, *feature), zero in empty slots (differentiable)."""
        if self.per_edge:
            return values.unsqueeze(1)
        gathered = values.index_select(0, self.edge_of_slot)
        mask = self.used.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))
        return (gathered * mask).view(self.n_nodes, self.width, *values.shape[1:])

    def sum_rows(self, values: torch.Tensor) -> torch.Tensor:
        """(n_rows, *feature) sums over slots -> (n_nodes, *feature): the per-edge rows added up at
        their receivers; the padded layout has one row per node already."""
        return scatter_sum(values, self.receiver, self.n_nodes) if self.per_edge else values
