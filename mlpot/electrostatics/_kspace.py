"""Reciprocal-space (Ewald) sum of point charges and dipoles for one periodic frame.

Algorithm only: the physics enters through a Gaussian damping variance. For variance ``s2`` the
reciprocal kernel is ``(1/(Omega eps0)) exp(-k^2 s2 / 2) / k^2`` (the Fourier transform of
``k_e erf(d / sqrt(2 s2)) / d``), summed over a half space of reciprocal vectors (x2) with k = 0
dropped (neutralising background, zero-mean potential gauge, spec §2.2). With the structure factor
``S(k) = sum_j (q_j - i p_j.k) exp(-i k.r_j) = A - i B`` the potential at atom i is
``V_i = (2/(Omega eps0)) sum_k w(k)/k^2 (A cos k.r_i + B sin k.r_i)`` and its gradient
``G_i = (2/(Omega eps0)) sum_k w(k)/k^2 k (B cos k.r_i - A sin k.r_i)``.

The k-vectors are split into chunks whose phases are recomputed in the backward pass
(activation checkpointing), so memory stays O(chunk x n_atoms) instead of O(n_k x n_atoms) while
forces, stress and double backward still come from autograd. One frame at a time: no batch-wide
k x atom matrix.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from mlpot.units import EPSILON0

__all__ = ["reciprocal_cell", "half_space_kvectors", "half_space_miller_kvectors", "kspace_potentials",
           "gaussian_charge_reciprocal_potentials"]

#: entries of one (k chunk x atoms) phase matrix; ~ 8 MB per float64 matrix
_CHUNK_ENTRIES = 1 << 20


def reciprocal_cell(cell: torch.Tensor) -> torch.Tensor:
    """Reciprocal lattice vectors as rows, 2 pi inv(cell)^T (3, 3) 1/Å; cell rows in Å."""
    return 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)


def half_space_miller_kvectors(cell: torch.Tensor, max_index: Sequence[int]) -> torch.Tensor:
    """Reciprocal vectors k = 2 pi n inv(cell)^T of the Miller box |n_a| <= max_index[a], k != 0, in a
    half space (n_k, 3) 1/Å, differentiable in cell.

    Half space: n1 > 0, or n1 = 0 and n2 > 0, or n1 = n2 = 0 and n3 > 0 (each +-k pair once).
    A box rather than a sphere is DeePMD-kit's DPLR grid (``ewald_h``); ``half_space_kvectors`` cuts
    the same box to a sphere.
    """
    return _miller_half_space(cell, max_index) @ reciprocal_cell(cell)


def _miller_half_space(cell: torch.Tensor, max_index: Sequence[int]) -> torch.Tensor:
    """Integer Miller indices (n_k, 3), in the cell's dtype, of the half box (see above)."""
    ranges = [torch.arange(-int(mi), int(mi) + 1, device=cell.device) for mi in max_index]
    n = torch.cartesian_prod(*ranges)
    half = (n[:, 0] > 0) | ((n[:, 0] == 0) & (n[:, 1] > 0)) | ((n[:, 0] == 0) & (n[:, 1] == 0) & (n[:, 2] > 0))
    return n[half].to(cell.dtype)


def half_space_kvectors(cell: torch.Tensor, k_cutoff: float) -> torch.Tensor:
    """Reciprocal vectors with 0 < |k| <= k_cutoff in a half space (n_k, 3) 1/Å, differentiable in cell.

    Miller ranges |n_i| <= ceil(k_cutoff |a_i| / 2 pi) per frame (no batch-wide maximum), cut to the sphere.
    """
    recip = reciprocal_cell(cell)
    lengths = torch.linalg.norm(cell.detach(), dim=1)
    n = _miller_half_space(cell, [int(math.ceil(float(k_cutoff) * float(length) / (2 * math.pi))) for length in lengths])
    k_norm = torch.linalg.norm(n @ recip.detach(), dim=1)
    n = n[k_norm <= k_cutoff]
    return n @ recip


def _chunk_potentials(kvectors, positions, charges, dipoles, prefactors):
    """(n_var, n_atoms) potentials and (n_var, n_atoms, 3) gradients from one chunk of k-vectors."""
    phase = kvectors @ positions.transpose(0, 1)  # (n_kc, n_atoms)
    cos, sin = torch.cos(phase), torch.sin(phase)
    p_dot_k = kvectors @ dipoles.transpose(0, 1)  # (n_kc, n_atoms)
    re_s = (cos * charges - sin * p_dot_k).sum(1)  # A(k)
    im_s = (sin * charges + cos * p_dot_k).sum(1)  # B(k) (S = A - iB)
    weighted_a = prefactors * re_s  # (n_var, n_kc)
    weighted_b = prefactors * im_s
    potential = weighted_a @ cos + weighted_b @ sin  # (n_var, n_atoms)
    grad_coeff_cos = weighted_b[:, :, None] * kvectors  # (n_var, n_kc, 3)
    grad_coeff_sin = -weighted_a[:, :, None] * kvectors
    gradient = torch.einsum("vkc,ka->vac", grad_coeff_cos, cos) + torch.einsum("vkc,ka->vac", grad_coeff_sin, sin)
    return potential, gradient


def kspace_potentials(
    positions: torch.Tensor,
    charges: torch.Tensor,
    dipoles: torch.Tensor,
    cell: torch.Tensor,
    kvectors: torch.Tensor,
    variances: Sequence[float],
    checkpoint_chunks: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reciprocal-space potentials and gradients at the atoms of one periodic frame.

    positions: (n_atoms, 3) Å; charges: (n_atoms,) e; dipoles: (n_atoms, 3) e·Å; cell: (3, 3) Å;
    kvectors: (n_k, 3) 1/Å from ``half_space_kvectors``; variances: Gaussian damping s2 (Å^2), one
    per requested kernel. Returns V (n_var, n_atoms) in V and grad V (n_var, n_atoms, 3) in V/Å.
    """
    n_var, n_atoms = len(variances), positions.shape[0]
    volume = torch.linalg.det(cell).abs()
    k2 = (kvectors * kvectors).sum(1)
    var = torch.as_tensor(list(variances), dtype=positions.dtype, device=positions.device)
    prefactors = torch.exp(-0.5 * var[:, None] * k2[None, :]) / k2 * (2.0 / (EPSILON0 * volume))
    potential = positions.new_zeros(n_var, n_atoms)
    gradient = positions.new_zeros(n_var, n_atoms, 3)
    chunk = max(1, _CHUNK_ENTRIES // max(n_atoms, 1))
    needs_graph = torch.is_grad_enabled() and any(
        t.requires_grad for t in (positions, charges, dipoles, cell)
    )
    for start in range(0, kvectors.shape[0], chunk):
        args = (kvectors[start:start + chunk], positions, charges, dipoles, prefactors[:, start:start + chunk])
        if checkpoint_chunks and needs_graph:
            v, g = checkpoint(_chunk_potentials, *args, use_reentrant=False)
        else:
            v, g = _chunk_potentials(*args)
        potential = potential + v
        gradient = gradient + g
    return potential, gradient


def gaussian_charge_reciprocal_potentials(
    positions: torch.Tensor, charges: torch.Tensor, cell: torch.Tensor, kvectors: torch.Tensor, beta: float
) -> torch.Tensor:
    """Reciprocal-space Ewald potentials (n_atoms,) V of point charges with splitting parameter beta.

    positions (n_atoms, 3) Å; charges (n_atoms,) e; cell (3, 3) Å rows; kvectors (n_k, 3) 1/Å (half
    space); beta 1/Å. The kernel is ``exp(-k^2 / (4 beta^2)) / k^2`` (damping variance 1/(2 beta^2)),
    i.e. the field of Gaussian charges of width 1/(2 beta) with k = 0 dropped, so
    ``0.5 sum_i q_i V_i = (1 / (2 pi Omega)) sum_{m != 0} exp(-pi^2 m^2 / beta^2) / m^2 |S(m)|^2`` (times
    k_e), DeePMD-kit's DPLR energy (its own Gaussian self-energy included, no real-space part).
    """
    zeros = torch.zeros_like(positions)
    potential, _ = kspace_potentials(positions, charges, zeros, cell, kvectors, [1.0 / (2.0 * float(beta) ** 2)])
    return potential[0]
