"""Real-space pair sums of Gaussian charges and dipoles for one frame.

Algorithm only: the pair kernel comes from ``_kernels.py``. Two uses:

* isolated frames (``realspace``): every pair once, unscreened ``erf(a d)/d``; O(N^2) like the
  original, but vectorised (the original displaces point charges by finite differences for dipoles).
* the short-range half of an Ewald split: the kernel ``erf(a d)/d - erf(b d)/d`` over a half
  neighbour list within ``cutoff`` (vesin, periodic in all three directions).

Pairs are processed in chunks whose intermediates are recomputed in the backward pass, so memory
stays O(n_atoms + chunk). Self-terms (d = 0) are added by the caller (``_solver.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint
from vesin import NeighborList

from mlpot.electrostatics._kernels import multipole_field, screened_radial
from mlpot.units import COULOMB_CONSTANT

__all__ = ["all_pairs", "periodic_half_pairs", "realspace_potentials"]

_CHUNK_PAIRS = 1 << 18


def all_pairs(n_atoms: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every unordered pair (i < j) of an isolated frame: (index_i, index_j) each (n_pairs,) int64."""
    index = torch.triu_indices(n_atoms, n_atoms, offset=1, device=device)
    return index[0], index[1]


def periodic_half_pairs(positions: torch.Tensor, cell: torch.Tensor, cutoff: float):
    """Half neighbour list of a frame periodic in all directions (vesin).

    positions: (n_atoms, 3) Å; cell: (3, 3) Å (rows); cutoff: Å. Returns index_i, index_j (n_pairs,)
    int64 and integer shifts (n_pairs, 3) in the positions' dtype, such that the pair vector is
    ``r_j - r_i + shifts @ cell``. A half list halves the work of the symmetric Coulomb kernel.
    """
    nl = NeighborList(cutoff=float(cutoff), full_list=False)
    i, j, shifts = nl.compute(
        positions.detach().cpu().numpy().astype(np.float64),
        cell.detach().cpu().numpy().astype(np.float64),
        True,
        quantities="ijS",
        copy=True,
    )
    device = positions.device
    return (
        torch.as_tensor(i.astype(np.int64), device=device),
        torch.as_tensor(j.astype(np.int64), device=device),
        torch.as_tensor(shifts, dtype=positions.dtype, device=device),
    )


def _chunk_fields(positions, cell, charges, dipoles, index_i, index_j, shifts, exponents, screenings):
    n_atoms = positions.shape[0]
    separation = positions[index_j] - positions[index_i]  # r_j - r_i
    if shifts is not None:
        separation = separation + shifts @ cell
    distance = torch.linalg.norm(separation, dim=1)
    potentials, gradients = [], []
    for exponent, screening in zip(exponents, screenings):  # a handful of receiver widths, not atoms
        radial = screened_radial(distance, exponent, screening)
        # receiver i sees source j at r_i - r_j = -separation; receiver j sees source i at +separation
        v_i, g_i = multipole_field(-separation, radial, charges[index_j], dipoles[index_j])
        v_j, g_j = multipole_field(separation, radial, charges[index_i], dipoles[index_i])
        v = positions.new_zeros(n_atoms).index_add(0, index_i, v_i).index_add(0, index_j, v_j)
        g = positions.new_zeros(n_atoms, 3).index_add(0, index_i, g_i).index_add(0, index_j, g_j)
        potentials.append(v)
        gradients.append(g)
    return torch.stack(potentials), torch.stack(gradients)


def realspace_potentials(
    positions: torch.Tensor,
    charges: torch.Tensor,
    dipoles: torch.Tensor,
    pairs: Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]],
    exponents: Sequence[float],
    screenings: Optional[Sequence[Optional[float]]] = None,
    cell: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pair-sum potentials (V) and gradients (V/Å) at every atom, excluding self-terms.

    positions: (n_atoms, 3) Å; charges (n_atoms,) e; dipoles (n_atoms, 3) e·Å; pairs: (index_i,
    index_j, shifts or None), each unordered pair once; exponents: kernel exponents a (1/Å), one per
    receiver width; screenings: Ewald b (1/Å) per exponent, or None (isolated); cell: (3, 3) Å when shifts are given.
    Returns (n_exp, n_atoms) and (n_exp, n_atoms, 3).
    """
    index_i, index_j, shifts = pairs
    screenings = [None] * len(exponents) if screenings is None else list(screenings)
    n_atoms = positions.shape[0]
    potential = positions.new_zeros(len(exponents), n_atoms)
    gradient = positions.new_zeros(len(exponents), n_atoms, 3)
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (positions, charges, dipoles, cell)
    )
    for start in range(0, index_i.shape[0], _CHUNK_PAIRS):
        stop = start + _CHUNK_PAIRS
        args = (
            positions, cell, charges, dipoles, index_i[start:stop], index_j[start:stop],
            None if shifts is None else shifts[start:stop], tuple(exponents), tuple(screenings),
        )
        if needs_graph:
            v, g = checkpoint(_chunk_fields, *args, use_reentrant=False)
        else:
            v, g = _chunk_fields(*args)
        potential = potential + v
        gradient = gradient + g
    return potential * COULOMB_CONSTANT, gradient * COULOMB_CONSTANT
