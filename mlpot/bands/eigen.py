"""Lowest eigenvalues of a stack of Hermitian matrices, differentiable (spec deepseudopot.md §2.9).

A band fit needs only the lowest ``n_low`` eigenvalues of each H(k) (CdSe: 8 of 453), yet
``torch.linalg.eigh`` computes every eigenvector and its backward multiplies full n×n matrices.
LAPACK's subset driver (``zheevr``, MRRR; through :func:`scipy.linalg.eigh` with
``subset_by_index``) returns just the wanted eigenpairs: the tridiagonal reduction stays, the
eigenvector back-transformation shrinks from n³ to n²·n_low. The gradient of eigenvalues alone is
∂L/∂H = U diag(∂L/∂λ) U^H with U the (n, n_low) eigenvectors — the same expression torch's eigh
backward uses for eigenvalue-only losses, so gradients agree with it (a test pins them).

Hand-written because neither torch nor scipy offers a batched subset Hermitian solver; the k-points
are looped over in Python, which costs microseconds per call against milliseconds of LAPACK work
per matrix (a 453×453 complex matrix takes ~25 ms). Small stacks (n <= ``SMALL``) use torch's
batched solver, where the loop overhead would dominate.

Shapes: ``hamiltonians`` (n_k, n, n) complex -> (n_k, n_low) real, ascending.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.linalg
import torch

__all__ = ["lowest_eigenvalues", "lowest_eigenpairs", "EIGEN_DRIVERS", "SMALL"]

EIGEN_DRIVERS = ("evr", "evx", "evd")  # LAPACK drivers: MRRR subset, bisection subset, full divide & conquer
SMALL = 64  # matrix size below which torch's batched full solver is faster than the per-k loop


def lowest_eigenpairs(hamiltonians: torch.Tensor, n_low: int, driver: str = "evr") -> Tuple[torch.Tensor, torch.Tensor]:
    """Lowest ``n_low`` eigenvalues (n_k, n_low) and eigenvectors (n_k, n, n_low), no gradient."""
    n = hamiltonians.shape[-1]
    n_low = min(int(n_low), n)
    if n <= SMALL or driver == "evd" or hamiltonians.device.type != "cpu":
        values, vectors = torch.linalg.eigh(hamiltonians.detach())
        return values[..., :n_low], vectors[..., :n_low]
    stack = hamiltonians.detach().numpy()
    values = np.empty(stack.shape[:-2] + (n_low,), dtype=np.float64 if stack.real.dtype == np.float64 else np.float32)
    vectors = np.empty(stack.shape[:-1] + (n_low,), dtype=stack.dtype)
    for k, matrix in enumerate(stack):
        values[k], vectors[k] = scipy.linalg.eigh(matrix, subset_by_index=(0, n_low - 1), driver=driver,
                                                  check_finite=False, overwrite_a=False)
    return torch.from_numpy(values), torch.from_numpy(vectors)


def _values_only(hamiltonians: torch.Tensor, n_low: int, driver: str) -> torch.Tensor:
    n = hamiltonians.shape[-1]
    n_low = min(int(n_low), n)
    if n <= SMALL or driver == "evd" or hamiltonians.device.type != "cpu":
        return torch.linalg.eigvalsh(hamiltonians.detach())[..., :n_low]
    stack = hamiltonians.detach().numpy()
    rows = [scipy.linalg.eigh(matrix, eigvals_only=True, subset_by_index=(0, n_low - 1), driver=driver,
                              check_finite=False) for matrix in stack]
    return torch.from_numpy(np.stack(rows)).to(hamiltonians.real.dtype)


class _LowestEigenvalues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hamiltonians, n_low, driver):
        values, vectors = lowest_eigenpairs(hamiltonians, n_low, driver)
        ctx.save_for_backward(vectors)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        (vectors,) = ctx.saved_tensors
        # ∂L/∂H = U diag(g) U^H, summed over the kept eigenpairs
        grad = torch.einsum("kim,km,kjm->kij", vectors, grad_values.to(vectors.dtype), vectors.conj())
        return grad, None, None


def lowest_eigenvalues(hamiltonians: torch.Tensor, n_low: int, driver: str = "evr") -> torch.Tensor:
    """Lowest ``n_low`` eigenvalues, ascending: (n_k, n, n) Hermitian -> (n_k, n_low).

    Differentiable w.r.t. ``hamiltonians`` when it requires grad (eigenvectors are then computed
    for the backward); otherwise only eigenvalues are computed.
    """
    if driver not in EIGEN_DRIVERS:
        raise ValueError(f"unknown eigensolver driver {driver!r}; valid: {', '.join(EIGEN_DRIVERS)}")
    if hamiltonians.requires_grad and torch.is_grad_enabled():
        return _LowestEigenvalues.apply(hamiltonians, n_low, driver)
    return _values_only(hamiltonians, n_low, driver)
