"""Band-structure loss, penalties on v(q) and band re-matching (spec deepseudopot.md §2.9, §4.3, §4.5).

Loss [COMPAT]: L = Σ_k w_k Σ_b w_b (E_kb - E_kb^ref)², a weighted *sum* in eV², k-weights used as
is. With ``rel_band`` = r both sets are shifted by their band r at the same k (newest per-k
alignment, whose gradient is the same in the joint and per-k paths).

Re-matching (``smooth_reorder``, ``eigvec_reorder``) runs on detached bands and returns a per-k
permutation that the loss then applies; it is sequential along the k-path by nature (each k is
matched against the previous ones), so it loops over k in NumPy outside the autograd graph.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["band_loss", "smooth_reorder_permutation", "eigvec_reorder_permutation",
           "decay_penalty", "magnitude_penalty"]


def band_loss(bands: torch.Tensor, reference: torch.Tensor, kweights: torch.Tensor, band_weights: torch.Tensor,
              rel_band: Optional[int] = None) -> torch.Tensor:
    """Σ_k w_k Σ_b w_b ΔE². ``bands``, ``reference`` (n_k, n_b) eV; weights (n_k,), (n_b,) -> scalar eV²."""
    if rel_band is not None:
        bands = bands - bands[:, rel_band : rel_band + 1]
        reference = reference - reference[:, rel_band : rel_band + 1]
    return (kweights[:, None] * band_weights[None, :] * (bands - reference) ** 2).sum()


def _assign(cost: np.ndarray, max_shift: int, pair: bool) -> np.ndarray:
    """Minimum-cost permutation of bands (rows: predicted slots, cols: computed bands)."""
    n = cost.shape[0]
    idx = np.arange(n)
    cost = np.where(np.abs(idx[:, None] - idx[None, :]) > max_shift, 1e12, cost)
    if pair and n % 2 == 0:  # match Kramers pairs as 2x2 blocks
        block = cost.reshape(n // 2, 2, n // 2, 2).sum(axis=(1, 3))
        _, cols = linear_sum_assignment(block)
        return (2 * cols[:, None] + np.arange(2)[None, :]).reshape(-1)
    _, cols = linear_sum_assignment(cost)
    return cols


def smooth_reorder_permutation(bands: np.ndarray, pairs: bool = True, max_shift: int = 5) -> np.ndarray:
    """Per-k permutation (n_k, n_b) making bands smooth along the path.

    For k >= 4 each band is predicted as E₄ + 1.3Δ¹ + ½Δ² + ⅙Δ³ from the previous four (already
    re-ordered) k-points; the computed bands are matched to the predictions by Hungarian
    assignment on |pred - E|, swaps of more than ``max_shift`` indices forbidden.
    """
    bands = np.asarray(bands, dtype=np.float64)
    n_k, n_b = bands.shape
    perm = np.tile(np.arange(n_b), (n_k, 1))
    ordered = bands.copy()
    for k in range(4, n_k):
        e = ordered[k - 4 : k]
        d1, d2, d3 = e[3] - e[2], e[3] - 2 * e[2] + e[1], e[3] - 3 * e[2] + 3 * e[1] - e[0]
        prediction = e[3] + 1.3 * d1 + 0.5 * d2 + d3 / 6.0
        perm[k] = _assign(np.abs(prediction[:, None] - bands[k][None, :]), max_shift, pairs)
        ordered[k] = bands[k][perm[k]]
    return perm


def eigvec_reorder_permutation(vectors: np.ndarray, n_bands: int, doubled: bool = False) -> np.ndarray:
    """Per-k permutation (n_k, n_bands) following maximal |<u_n,k-1|u_m,k>| overlaps along the path.

    ``vectors`` (n_k, dim, n_low) eigenvectors of the lowest levels. With ``doubled`` (2024 spin
    doubling of non-spinor levels) the spatial levels are matched and each moves with its copy:
    band 2n and 2n+1 follow spatial level n.
    """
    n_k = vectors.shape[0]
    n_match = (n_bands + 1) // 2 if doubled else n_bands
    perm = np.tile(np.arange(n_match), (n_k, 1))
    for k in range(1, n_k):
        previous = vectors[k - 1][:, perm[k - 1]]
        overlap = np.abs(previous.conj().T @ vectors[k][:, :n_match])
        _, perm[k] = linear_sum_assignment(-overlap)
    if doubled:
        perm = np.stack([2 * perm, 2 * perm + 1], axis=-1).reshape(n_k, -1)[:, :n_bands]
    return perm


def decay_penalty(model, q_start: float, n_k: int, strength: float, dtype=torch.float64) -> torch.Tensor:
    """λ n_k mean_{q,s}(σ(10(q - q_s - 0.5)) |v_s(q)|) on 50 q in [q_s, 12] Bohr⁻¹ (penalizes |v| itself)."""
    q = torch.linspace(q_start, 12.0, 50, dtype=dtype)[:, None]
    switch = torch.sigmoid(10.0 * (q - q_start - 0.5))
    return strength * n_k * (switch * model(q).abs()).mean()


def magnitude_penalty(model, threshold: float, n_k: int, strength: float, dtype=torch.float64) -> torch.Tensor:
    """λ n_k mean_s ReLU(|v_s(r=0)| - threshold), v(r=0) = (2π²)⁻¹ Σ q² v(q) Δq on 240 q in [0, 12]."""
    q = torch.linspace(0.0, 12.0, 240, dtype=dtype)[:, None]
    v_r0 = (q**2 * model(q)).sum(0) * (q[1, 0] - q[0, 0]) / (2.0 * np.pi**2)
    return strength * n_k * torch.relu(v_r0.abs() - threshold).mean()
