"""Smooth environment matrix of DeePMD descriptors (spec deepmd.md §2.1-2.2).

For centre i and the neighbour in slot k of its padded per-type neighbour list, the row is
``R_ik = (s, s x/r, s y/r, s z/r)`` with ``s = w(r)/r`` and w the quintic switch
(``mlpot.nn.smooth_switch``); with ``env_protection`` p, r + p replaces r in the denominators.
Padded slots give an all-zero row. Slots come from ``mlpot.data.neighbors.build_sel_matrix``
(per-type sections, nearest first, -1 padded).

Also here: ``EnvStatistics``, the running sums of the davg/dstd statistics (§2.2), which pool all
slots, padded ones included [COMPAT].
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES, EDGE_INDEX, POSITIONS
from mlpot.data.neighbors import build_sel_matrix
from mlpot.errors import DataError
from mlpot.nn import is_tracing, smooth_switch

__all__ = ["select_neighbors", "environment_matrix", "EnvStatistics", "atom_mask", "occupied_slots"]


def select_neighbors(
    batch: Dict[str, torch.Tensor],
    vectors: torch.Tensor,
    rcut: float,
    sel: Sequence[int],
    *,
    mixed_types: bool = False,
    warn_overflow: bool = True,
    excluded: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Padded neighbour list of EDGE indices, (n_atoms, sum(sel)) int64, -1 = empty slot.

    Only edges shorter than ``rcut`` (Å) are used, so one edge list built at a larger cutoff serves
    several descriptors (hybrid). Neighbours beyond ``sel`` are dropped as in DeePMD-kit [COMPAT]
    but reported with a warning. ``excluded`` (n_types, n_types) bool, the descriptor's
    ``exclude_types`` pairs: with per-type sel, dropped neighbours of excluded pairs change nothing
    (a centre type excludes all or none of a neighbour type) and are not reported (DPRc inputs give
    sel 0 to the excluded MM types).
    """
    n_atoms = batch[POSITIONS].shape[0]
    with torch.no_grad():
        distance = vectors.detach().norm(dim=-1)
        edge_index = batch[EDGE_INDEX]
        neighbor_types = batch[ATOM_TYPES].index_select(0, edge_index[1])
        sel_arg = int(sel[0]) if mixed_types else [int(s) for s in sel]
        nlist, overflow = build_sel_matrix(edge_index, distance, neighbor_types, n_atoms, sel_arg,
                                           mixed_types=mixed_types, valid=distance < rcut)
        if not warn_overflow or is_tracing():  # the count below only feeds the warning (a value of the data)
            return nlist
        if excluded is not None and not mixed_types and bool(torch.as_tensor(overflow).sum() > 0):
            kept = ~excluded[batch[ATOM_TYPES].index_select(0, edge_index[0]), neighbor_types]
            overflow = build_sel_matrix(edge_index, distance, neighbor_types, n_atoms, sel_arg,
                                        mixed_types=False, valid=(distance < rcut) & kept)[1]
        if bool(torch.as_tensor(overflow).sum() > 0):
            warnings.warn(
                f"more neighbours than sel={list(sel)} within rcut={rcut} Å (dropped per type: "
                f"{torch.as_tensor(overflow).tolist()}); energy is not conserved, increase sel",
                RuntimeWarning,
                stacklevel=3,
            )
    return nlist


def occupied_slots(mask: torch.Tensor) -> int:
    """Number of leading slots of ``mask`` (n_atoms, n_slots) bool (True = occupied) that hold every
    occupied slot, at least 1: the trailing columns, empty for every atom, can be dropped wherever an
    empty slot adds nothing. All n_slots while tracing (no size from the data) or without atoms."""
    n_slots = mask.shape[1]
    if is_tracing() or mask.shape[0] == 0 or n_slots == 0:
        return n_slots
    position = torch.arange(1, n_slots + 1, device=mask.device)
    return max(int((mask.any(0) * position).max()), 1)


def atom_mask(aparam) -> torch.Tensor:
    """Real (True) / virtual (False) atoms of se_a_mask models, (n_atoms,) bool, from aparam
    (n_atoms, 1): the value truncated to an integer, non-zero = real (DeePMD-kit casts it to int)."""
    if aparam is None:
        raise DataError("se_a_mask / use_aparam_as_mask models need aparam (1 per atom, 0 = virtual atom)",
                        key="aparam")
    return aparam.reshape(aparam.shape[0], -1)[:, 0].trunc() != 0


def environment_matrix(
    vectors: torch.Tensor,
    nlist: torch.Tensor,
    rcut: float,
    rcut_smth: float,
    *,
    env_protection: float = 0.0,
    radial_only: bool = False,
) -> torch.Tensor:
    """Raw (un-normalised) environment matrix.

    vectors: (n_edges, 3) Å; nlist: (n_atoms, n_slots) edge indices, -1 = padding.
    Returns (n_atoms, n_slots, 4) with rows (s, s x/r, s y/r, s z/r), or (n_atoms, n_slots, 1) if
    ``radial_only``; units 1/Å. Empty slots are exactly zero, with zero gradient.
    """
    mask = nlist >= 0
    if vectors.shape[0] == 0:  # no edges at all (isolated atoms): every slot is padding
        vectors = vectors.new_tensor([[2.0 * rcut + 1.0, 0.0, 0.0]])
    # rows are computed once per edge, then gathered into the slots: fewer elements than the padded
    # slots, and no reductions over a length-3 axis of a 3-d tensor (slow in every pass of autograd)
    x, y, z = vectors.unbind(-1)
    r = torch.sqrt(x * x + y * y + z * z).unsqueeze(-1)  # (n_edges, 1)
    r_protected = r + env_protection
    s = smooth_switch(r, rcut_smth, rcut) / r_protected
    rows = s if radial_only else torch.cat([s, s * vectors / r_protected], dim=-1)
    # empty slots read edge 0 and are zeroed (value and gradient) by the mask
    gathered = torch.index_select(rows, 0, nlist.clamp(min=0).reshape(-1)).view(nlist.shape + (rows.shape[-1],))
    return gathered * mask.unsqueeze(-1).to(rows.dtype)


class EnvStatistics:
    """Running sums for davg/dstd per centre type (spec §2.2).

    Pools all slots of each centre atom (padded slots included as zeros): radial column -> mu_r,
    sigma_r; the three angular columns together -> sigma_a. A std below ``protection`` (1e-2) is
    raised to it; a type with no samples gets mean 0 and std 0.1.
    """

    def __init__(self, n_types: int):
        self.n_types = n_types
        self.sums = torch.zeros(n_types, 6, dtype=torch.float64)  # n_r, sum_r, sum_r2, n_a, sum_a, sum_a2

    def add(self, env: torch.Tensor, centre_types: torch.Tensor) -> None:
        """env: (n_atoms, n_slots, 4 or 1) raw environment matrix; centre_types: (n_atoms,)."""
        env = env.detach().to(torch.float64)
        radial = env[..., 0]
        per_atom = [
            torch.full_like(radial[:, 0], radial.shape[1]),
            radial.sum(-1),
            (radial * radial).sum(-1),
        ]
        if env.shape[-1] > 1:
            angular = env[..., 1:]
            per_atom += [
                torch.full_like(radial[:, 0], angular.shape[1] * angular.shape[2]),
                angular.sum((-1, -2)),
                (angular * angular).sum((-1, -2)),
            ]
        else:
            per_atom += [torch.zeros_like(radial[:, 0])] * 3
        stacked = torch.stack(per_atom, dim=-1)
        self.sums.index_add_(0, centre_types.to(torch.long).cpu(), stacked.cpu())

    @staticmethod
    def _std(count: float, total: float, squares: float, protection: float) -> float:
        if count == 0:
            return 0.1
        value = max(squares / count - (total / count) ** 2, 0.0) ** 0.5
        return max(value, protection)

    def result(self, protection: float = 1e-2, set_davg_zero: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """davg (n_types, 4) = (mu_r, 0, 0, 0) and dstd (n_types, 4) = (sigma_r, sigma_a x 3), 1/Å."""
        davg = torch.zeros(self.n_types, 4, dtype=torch.float64)
        dstd = torch.zeros(self.n_types, 4, dtype=torch.float64)
        for t in range(self.n_types):  # loop over types, not atoms
            n_r, sum_r, sum_r2, n_a, sum_a, sum_a2 = self.sums[t].tolist()
            davg[t, 0] = 0.0 if (set_davg_zero or n_r == 0) else sum_r / n_r
            dstd[t, 0] = self._std(n_r, sum_r, sum_r2, protection)
            dstd[t, 1:] = self._std(n_a, sum_a, sum_a2, protection)
        return davg, dstd

    def as_dict(self) -> Dict[str, List[float]]:
        return {"sums": self.sums.tolist()}


def undirected_pair_key(edge_index: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """An int64 key per edge, equal for the edge (i, j, S) and its reverse (j, i, -S); (n_edges,).

    Lets descriptors evaluate a function of the pair distance once per unordered pair.
    """
    i, j = edge_index[0], edge_index[1]
    s = shifts.detach().round().to(torch.long)
    # orientation: i < j, or i == j with the first non-zero shift component positive
    first_nonzero = torch.where(s[:, 0] != 0, s[:, 0], torch.where(s[:, 1] != 0, s[:, 1], s[:, 2]))
    flip = (i > j) | ((i == j) & (first_nonzero < 0))
    a, b = torch.where(flip, j, i), torch.where(flip, i, j)
    s = torch.where(flip.unsqueeze(1), -s, s)
    # spans as 0-d tensors (no value read back to Python: the key traces with dynamic sizes)
    span = torch.cat([s.abs().reshape(-1), s.new_zeros(1)]).amax() * 2 + 1
    n = torch.cat([edge_index.reshape(-1), edge_index.new_zeros(1)]).amax() + 1
    half = span // 2
    code = ((s[:, 0] + half) * span + (s[:, 1] + half)) * span + (s[:, 2] + half)
    return (a * n + b) * span ** 3 + code
