"""Plane-wave basis of a periodic cell (spec deepseudopot.md §2.2).

The basis is k-independent: reciprocal-lattice vectors G with ½|G|² < maxKE (Hartree, strict),
sorted by |G|. Two modes:

* ``"sphere"`` (default): every lattice vector inside the cutoff sphere.
* ``"compat"`` [COMPAT]: DeePseudopot's candidate cube |n_i| <= N, N = floor(sqrt(2 maxKE)/min|b_i|),
  intersected with the sphere. For non-orthogonal reciprocal bases (FCC/ZB) this drops vectors
  (CdSe at 10 Ha keeps 453 of 537) and is needed only to reproduce files made by the original.

Shapes: ``cell`` (3,3) Bohr rows; returned ``G`` (n_G,3) Bohr⁻¹ Cartesian and ``miller`` (n_G,3) int.
"""

from __future__ import annotations

import math

import numpy as np

from mlpot.errors import ConfigError

__all__ = ["reciprocal_lattice", "plane_wave_basis", "BASIS_MODES"]

BASIS_MODES = ("sphere", "compat")


def reciprocal_lattice(cell: np.ndarray) -> np.ndarray:
    """Rows b_i with a_i·b_j = 2π δ_ij. ``cell`` (3,3) Bohr -> (3,3) Bohr⁻¹."""
    return 2.0 * np.pi * np.linalg.inv(np.asarray(cell, dtype=np.float64)).T


def plane_wave_basis(cell: np.ndarray, max_ke: float, mode: str = "sphere"):
    """Return ``(G, miller)`` for kinetic cutoff ``max_ke`` (Hartree) sorted by |G| (stable)."""
    if mode not in BASIS_MODES:
        raise ConfigError(f"unknown basis mode {mode!r}; valid: {', '.join(BASIS_MODES)}", key="basis_mode")
    cell = np.asarray(cell, dtype=np.float64)
    recip = reciprocal_lattice(cell)
    g_max = math.sqrt(2.0 * max_ke)
    if mode == "compat":
        n_max = np.full(3, int(math.floor(g_max / np.linalg.norm(recip, axis=1).min())))
    else:
        # |n_i| = |G·a_i| / 2π <= g_max |a_i| / 2π covers the whole sphere
        n_max = np.ceil(g_max * np.linalg.norm(cell, axis=1) / (2.0 * np.pi)).astype(int)
    axes = [np.arange(-n, n + 1) for n in n_max]
    miller = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    g_vectors = miller @ recip
    g_norm = np.linalg.norm(g_vectors, axis=1)
    keep = 0.5 * g_norm**2 < max_ke
    order = np.argsort(g_norm[keep], kind="stable")
    return g_vectors[keep][order], miller[keep][order]
