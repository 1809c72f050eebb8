"""A neighbour list reused between MD steps (Verlet list with a skin).

``VerletList(cutoff, skin)`` builds the vesin list (``mlpot.data.neighbors.neighbor_list``) at
``cutoff + skin`` and keeps it until some atom has moved more than ``skin / 2`` from where it was at
the last build (then no pair can have come from beyond ``cutoff + skin`` to inside ``cutoff``), or
until the cell, the periodicity or the number of atoms changes. An atom that was wrapped back into
the cell (torch-sim and LAMMPS wrap positions; a jump by whole lattice vectors along periodic
directions) does not count as moved: the cached pairs' cell shifts absorb the jump (S_ij += n_i - n_j
for integer jumps n), so wrapping never forces a rebuild. Every call filters the cached pairs
by their current length, so a model always sees exactly the pairs with ``0 < |r_ij| < cutoff`` —
the same set a from-scratch list gives, in the same order (sorted by centre, then neighbour).

Units: positions and cell in Å. The filter is one vectorised pass over the cached pairs (numpy);
a rebuild costs a vesin call. ``rebuilds`` and ``calls`` count both, for logs and tests.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mlpot.data.neighbors import neighbor_list

__all__ = ["VerletList"]


class VerletList:
    """Cached neighbour list with a skin.

    cutoff: the model's cutoff (Å); skin: extra distance (Å) of the cached list; 0 rebuilds at
    every call. ``update(positions, cell, pbc)`` returns ``(edge_index (2, E) int64,
    shifts (E, 3) float64)`` of the pairs closer than ``cutoff``.
    """

    def __init__(self, cutoff: float, skin: float = 1.0):
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"cutoff must be > 0 and skin >= 0 (got cutoff={cutoff}, skin={skin})")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.rebuilds = 0
        self.calls = 0
        self._reference: Optional[np.ndarray] = None  # positions at the last build
        self._cell: Optional[np.ndarray] = None
        self._pbc: Optional[np.ndarray] = None
        self._edges: Tuple[np.ndarray, np.ndarray] = (np.zeros((2, 0), np.int64), np.zeros((0, 3)))
        self._offsets = np.zeros((0, 3))  # shifts @ cell of the cached pairs, set whenever the shifts change

    def _needs_rebuild(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        if self._reference is None or self.skin == 0.0 or self._reference.shape != positions.shape:
            return True
        if not (np.array_equal(cell, self._cell) and np.array_equal(pbc, self._pbc)):
            return True
        if positions.shape[0] == 0:
            return False
        moved = positions - self._reference
        jumps = self._lattice_jumps(moved, cell, pbc)
        if jumps is not None:
            moved = moved - jumps @ cell
        if float(np.einsum("ij,ij->i", moved, moved).max()) > (0.5 * self.skin) ** 2:
            return True
        if jumps is not None:  # wrapped atoms: move the reference and the pairs' shifts with them
            self._reference = self._reference + jumps @ cell
            edge_index, shifts = self._edges
            self._edges = (edge_index, shifts + jumps[edge_index[0]] - jumps[edge_index[1]])
            self._offsets = self._edges[1] @ cell
        return False

    @staticmethod
    def _lattice_jumps(moved: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> Optional[np.ndarray]:
        """Whole lattice vectors (n_atoms, 3) float of each displacement along periodic directions, or
        None when no atom jumped (or the cell is singular)."""
        if not pbc.any() or abs(np.linalg.det(cell)) < 1e-12:
            return None
        jumps = np.rint(moved @ np.linalg.inv(cell)) * pbc
        return jumps if np.any(jumps) else None

    def update(self, positions, cell, pbc) -> Tuple[np.ndarray, np.ndarray]:
        """Pairs (i, j, shift) with 0 < |r_ij| < cutoff at these positions (see the module docstring)."""
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        self.calls += 1
        if self._needs_rebuild(positions, cell, pbc):
            self._edges = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
            self._reference, self._cell, self._pbc = positions.copy(), cell.copy(), pbc.copy()
            self._offsets = self._edges[1] @ cell
            self.rebuilds += 1
            if self.skin == 0.0:
                return self._edges
        edge_index, shifts = self._edges
        if edge_index.shape[1] == 0:
            return edge_index, shifts
        vectors = np.take(positions, edge_index[1], axis=0)
        vectors -= np.take(positions, edge_index[0], axis=0)
        vectors += self._offsets
        inside = np.einsum("ij,ij->i", vectors, vectors) < self.cutoff ** 2
        return edge_index[:, inside], shifts[inside]
