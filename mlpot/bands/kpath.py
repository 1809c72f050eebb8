"""High-symmetry labels (Γ, X, L, K, U, W, M, R, ...) of the k-points of a band path, for plots.

The special points of the cell's Bravais lattice come from ASE (``Cell.bandpath().special_points``,
fractions of the given cell's reciprocal basis). A path k-point gets a label when it equals a
special point up to a point operation of the lattice and a reciprocal-lattice vector (so K and its
equivalent U both match, as do the six X of a cubic cell). The lattice point group is found as the
integer matrices with entries in {-1, 0, 1} that preserve the metric of the (reduced) cell.

Shapes: ``cell`` (3, 3) Bohr rows; ``kpoints_frac`` (n_k, 3) fractions of the reciprocal basis.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import List, Tuple

import numpy as np

__all__ = ["high_symmetry_labels", "lattice_rotations", "path_length"]

_GREEK = {"G": "Γ"}


def path_length(cell: np.ndarray, kpoints_frac: np.ndarray) -> np.ndarray:
    """Cumulative |Δk| along the k-points, (n_k,) Bohr⁻¹ (the plots' x axis; some bundles' first
    ``expBandStruct`` column is |k| rather than a path coordinate).

    A step much longer than the typical one (a path that continues from a point equivalent to the
    previous one, e.g. X -> (½,½,1) -> K) is measured to the nearest equivalent image of the
    previous point, so the drawn path has no artificial gap.
    """
    recip = 2.0 * np.pi * np.linalg.inv(np.asarray(cell, dtype=np.float64)).T
    k = np.asarray(kpoints_frac, dtype=np.float64) @ recip
    steps = np.linalg.norm(np.diff(k, axis=0), axis=1)
    if len(steps) > 2:
        typical = np.median(steps[steps > 1e-12]) if np.any(steps > 1e-12) else 0.0
        shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64) @ recip
        rotations = lattice_rotations(cell)
        for i in np.nonzero(steps > 2.0 * typical)[0]:
            images = (np.einsum("nij,j->ni", rotations, k[i])[:, None, :] + shifts[None, :, :]).reshape(-1, 3)
            steps[i] = np.linalg.norm(images - k[i + 1], axis=1).min()
    return np.concatenate([[0.0], np.cumsum(steps)])


def lattice_rotations(cell: np.ndarray) -> np.ndarray:
    """Cartesian rotations (n_ops, 3, 3) of the lattice point group of ``cell``."""
    return _rotations(tuple(np.round(np.asarray(cell, dtype=np.float64), 10).ravel()))


@lru_cache(maxsize=32)
def _rotations(cell_flat: tuple) -> np.ndarray:
    a = np.array(cell_flat).reshape(3, 3)
    metric = a @ a.T
    candidates = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=np.float64).reshape(-1, 3, 3)
    transformed = np.einsum("nij,jk,nlk->nil", candidates, metric, candidates)
    keep = np.all(np.abs(transformed - metric) < 1e-6 * np.abs(metric).max(), axis=(1, 2))
    ints = candidates[keep]
    ints = ints[np.abs(np.linalg.det(ints)) > 0.5]
    inv_a = np.linalg.inv(a)
    return np.einsum("ji,njk,kl->nil", a, ints.transpose(0, 2, 1), inv_a.T)  # R = Aᵀ Mᵀ A⁻ᵀ


def high_symmetry_labels(cell: np.ndarray, kpoints_frac: np.ndarray, tol: float = 1e-5) -> List[Tuple[int, str]]:
    """``[(row, label), ...]`` for the path k-points that are special points (empty if unknown)."""
    try:
        from ase.cell import Cell

        special = Cell(np.asarray(cell)).bandpath(npoints=0).special_points
    except Exception:  # an unusual or degenerate cell: plots go without labels
        return []
    recip = 2.0 * np.pi * np.linalg.inv(np.asarray(cell, dtype=np.float64)).T
    inv_recip = np.linalg.inv(recip)
    rotations = lattice_rotations(cell)
    k_cart = np.asarray(kpoints_frac) @ recip
    labels = []
    for row, k in enumerate(k_cart):
        for name, frac in special.items():
            images = np.einsum("nij,j->ni", rotations, np.asarray(frac) @ recip)
            offsets = (k[None, :] - images) @ inv_recip
            if np.any(np.all(np.abs(offsets - np.round(offsets)) < tol, axis=1)):
                labels.append((row, _GREEK.get(name, name)))
                break
    return labels
