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

__all__ = ["reciprocal_cell", "half_space_kvectors", "kspace_potentials"]

#: entries of one (k chunk x atoms) phase matrix; ~ 8 MB per float64 matrix
_CHUNK_ENTRIES = 1 << 20


def reciprocal_cell(cell: torch.Tensor) -> torch.Tensor:
    """Reciprocal lattice vectors as rows, 2 pi inv(cell)^T (3, 3) 1/Å; cell rows in Å."""
    return 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)


def half_space_kvectors(cell: torch.Tensor, k_cutoff: float) -> torch.Tensor:
    """Reciprocal vectors with 0 < |k| <= k_cutoff in a half space (n_k, 3) 1/Å, differentiable in cell.

    Half space: n1 > 0, or n1 = 0 and n2 > 0, or n1 = n2 = 0 and n3 > 0 (each +-k pair once).
    Miller ranges |n_i| <= ceil(k_cutoff |a_i| / 2 pi) per frame (no batch-wide maximum).
    """
    recip = reciprocal_cell(cell)
    lengths = torch.linalg.norm(cell.detach(), dim=1)
    m = [int(math.ceil(float(k_cutoff) * float(length) / (2 * math.pi))) for length in lengths]
    ranges = [torch.arange(-mi, mi + 1, device=cell.device) for mi in m]
    n = torch.cartesian_prod(*ranges)
    half = (n[:, 0] > 0) | ((n[:, 0] == 0) & (n[:, 1] > 0)) | ((n[:, 0] == 0) & (n[:, 1] == 0) & (n[:, 2] > 0))
    n = n[half].to(cell.dtype)
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
