"""Neighbour lists (vesin) and DeePMD's padded per-type neighbour matrices ("sel").

``neighbor_list`` returns a full (both directions) edge list of one frame, with integer cell
shifts, for periodic, mixed-periodic (slab, wire) and isolated frames; vesin does the cell-list
search. ``build_sel_matrix`` turns an edge list into DeePMD's fixed-width neighbour matrix: per
centre atom, one section per neighbour type (in type order), nearest first, truncated to ``sel[t]``
and padded with -1 (spec deepmd.md §2.1). It is written by hand (no library builds this layout)
with sorts and scatters only, so it has no Python loop over atoms.

Conventions: ``edge_index[0]`` = centre i, ``edge_index[1]`` = neighbour j,
``r_ij = positions[j] - positions[i] + shifts @ cell``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from vesin import NeighborList

__all__ = ["neighbor_list", "edge_vectors", "build_sel_matrix", "neighbor_counts"]


def neighbor_list(positions, cell, pbc, cutoff: float) -> Tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) with 0 < |r_ij| < cutoff, including periodic images.

    positions: (n_atoms, 3) Å; cell: (3, 3) Å, rows = lattice vectors (zeros allowed when no
    direction is periodic); pbc: (3,) bool or bool; cutoff: Å.
    Returns ``edge_index`` (2, n_edges) int64 [centre i; neighbour j] sorted by i, and ``shifts``
    (n_edges, 3) float64 integer cell shifts of j.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if positions.shape[0] == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3))
    if not pbc.any():
        if np.linalg.norm(np.ptp(positions, axis=0)) < cutoff:  # every pair is within the cutoff
            return _all_pairs(positions)
        # the cell plays no role; vesin needs no box when nothing is periodic
        cell = np.zeros((3, 3))
    elif abs(np.linalg.det(cell)) < 1e-12:
        # degenerate vectors along non-periodic directions: replace them by an orthogonal,
        # large-enough vector so that vesin sees a proper box (no images are made along them)
        cell = _complete_cell(cell, pbc, positions)
    searcher = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = searcher.compute(positions, cell, [bool(p) for p in pbc], quantities="ijS")
    edge_index = np.stack([i.astype(np.int64), j.astype(np.int64)])
    order = np.lexsort((edge_index[1], edge_index[0]))
    return edge_index[:, order], shifts[order].astype(np.float64)


def _all_pairs(positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every ordered pair of distinct atoms of a non-periodic frame (coincident ones included, as
    vesin gives them), sorted by i then j: a cutoff larger than the frame (e.g. se_a_mask's) makes
    vesin's cell grid slow."""
    i, j = np.nonzero(~np.eye(positions.shape[0], dtype=bool))
    edge_index = np.stack([i, j]).astype(np.int64)
    return edge_index, np.zeros((edge_index.shape[1], 3))


def _complete_cell(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray) -> np.ndarray:
    cell = cell.copy()
    extent = np.ptp(positions, axis=0).max() + 1.0 + np.abs(cell).max()
    for axis in np.flatnonzero(~pbc):
        if np.linalg.norm(cell[axis]) < 1e-12:
            others = cell[[a for a in range(3) if a != axis]]
            normal = np.cross(others[0], others[1]) if axis != 1 else np.cross(others[1], others[0])
            if np.linalg.norm(normal) < 1e-12:
                normal = np.eye(3)[axis]
            cell[axis] = normal / np.linalg.norm(normal) * extent
    return cell


def edge_vectors(positions: torch.Tensor, edge_index: torch.Tensor, edge_shifts: torch.Tensor,
                 cell: torch.Tensor, batch: torch.Tensor = None) -> torch.Tensor:
    """Edge vectors r_ij = r_j - r_i + shift @ cell, differentiable in positions and cell.

    positions: (n_atoms, 3) Å; edge_index: (2, n_edges); edge_shifts: (n_edges, 3);
    cell: (3, 3) or (n_frames, 3, 3) Å; batch: (n_atoms,) frame of each atom (needed with a
    batched cell). Returns (n_edges, 3) Å.
    """
    i, j = edge_index[0], edge_index[1]
    if cell.dim() == 2:
        offsets = edge_shifts.to(positions.dtype) @ cell
    else:
        frame_cell = cell.index_select(0, batch.index_select(0, i))  # (n_edges, 3, 3)
        offsets = torch.einsum("ea,eab->eb", edge_shifts.to(positions.dtype), frame_cell)
    # index_select rather than positions[j]: its backward is a vectorised index_add (advanced
    # indexing backs up through a serial accumulating index_put on CPU), see nn.gather_rows
    return positions.index_select(0, j) - positions.index_select(0, i) + offsets


def build_sel_matrix(edge_index: torch.Tensor, edge_distance: torch.Tensor, neighbor_types: torch.Tensor,
                     n_atoms: int, sel: Union[Sequence[int], int], mixed_types: bool = False,
                     valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded neighbour matrix of edge indices, DeePMD layout.

    edge_index: (2, n_edges) int64; edge_distance: (n_edges,) Å; neighbor_types: (n_edges,) int64
    type of neighbour j; n_atoms: number of centre atoms; sel: per-type slots (list) or, with
    ``mixed_types=True``, one int; valid: optional (n_edges,) bool, edges to consider (the others
    are ignored: e.g. those beyond a descriptor's rcut).
    Returns ``nlist`` (n_atoms, sum(sel)) int64 of edge indices (-1 = padding) — sections in type
    order, nearest first — and ``overflow``: neighbours dropped because a section was full,
    (n_types,) int64 per neighbour type, or a 0-d tensor when ``mixed_types``. DeePMD drops them
    silently; callers should warn when ``overflow.sum() > 0``.

    Every intermediate has a shape fixed by n_atoms, n_edges and sel (no boolean indexing, no
    value read back to Python), so the function traces into a graph with dynamic sizes
    (``mlpot compile``): dropped and ignored edges are written to one spare slot that is cut off.
    """
    device = edge_index.device
    centre = edge_index[0].long()
    sel_list = [int(sel)] if mixed_types else [int(s) for s in sel]
    sel_t = torch.tensor(sel_list, device=device, dtype=torch.long)
    group_type = torch.zeros_like(centre) if mixed_types else neighbor_types.long()
    n_types, width = len(sel_list), sum(sel_list)
    n_groups = n_atoms * n_types
    # one sort on a composite key (group, distance): group * span + distance with span larger than
    # any distance, in float64 (exact grouping up to ~1e7 groups at 1e-9 Å resolution); three
    # stable sorts give the same order but take 5x longer. Ignored edges go to group n_groups.
    group_of_edge = centre * n_types + group_type
    distance = edge_distance.detach().to(torch.float64)
    if valid is not None:
        group_of_edge = torch.where(valid, group_of_edge, torch.full_like(group_of_edge, n_groups))
        distance = torch.where(valid, distance, torch.zeros_like(distance))
    span = torch.cat([distance, distance.new_zeros(1)]).amax() + 1.0
    order = torch.argsort(group_of_edge.to(torch.float64) * span + distance, stable=True)
    group = group_of_edge.index_select(0, order)
    counts = torch.zeros(n_groups + 1, dtype=torch.long, device=device).index_add_(0, group, torch.ones_like(group))
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=device) - group_start.index_select(0, group)
    sorted_type = group_type.index_select(0, order)
    considered = group < n_groups
    keep = (rank < sel_t.index_select(0, sorted_type)) & considered
    section_offset = torch.cumsum(sel_t, 0) - sel_t
    slot = centre.index_select(0, order) * width + section_offset.index_select(0, sorted_type) + rank
    slot = torch.where(keep, slot, torch.full_like(slot, n_atoms * width))  # the spare slot
    nlist = torch.full((n_atoms * width + 1,), -1, dtype=torch.long, device=device).scatter_(0, slot, order)
    nlist = nlist[: n_atoms * width].view(n_atoms, width)
    dropped = torch.zeros(n_types, dtype=torch.long, device=device).index_add_(
        0, sorted_type, (considered & ~keep).to(torch.long))
    return nlist, (dropped.sum() if mixed_types else dropped)


def neighbor_counts(edge_index, neighbor_types, n_atoms: int, n_types: int) -> np.ndarray:
    """Number of neighbours of each type around every atom; (n_atoms, n_types) int64 (numpy)."""
    centre = np.asarray(edge_index)[0]
    flat = centre * n_types + np.asarray(neighbor_types)
    return np.bincount(flat, minlength=n_atoms * n_types).reshape(n_atoms, n_types)
