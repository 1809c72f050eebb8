"""Implicit-function derivatives of a root, to any order, matrix-free (no torchopt, no Jacobian).

Given a root y* of R(y, theta) = 0 found without a graph, :func:`implicit_root` returns a tensor
with the value y* whose derivatives are those of the implicit function y(theta):

    dy/dtheta = -J^-1 dR/dtheta,   J = dR/dy at y*.

Backward (vector-Jacobian product with an incoming gradient g): solve J^T lam = g by GMRES, whose
matrix-vector products are vector-Jacobian products of R (one residual evaluation and one
backward each), then return -lam^T dR/dtheta. Nothing of size n^2 is formed: memory is linear
in the unknowns, and the solve couples only what R couples (atoms of the same frame).

Higher derivatives (force training differentiates forces, which are first derivatives): when
the backward itself is differentiated (``create_graph``), lam is returned as an implicit root of
the adjoint residual J(y, theta)^T lam - g, through this same function, and y and theta enter the
final product as graph tensors; partial derivatives are taken with respect to zero-valued
perturbations (R(y, theta + eps)), so the dependence of y on theta is counted exactly once. The
derivatives are exact up to the GMRES tolerance at every order.

``residual(y, tensors)`` must be a pure function of y and of the listed tensors (substitutes
are passed in their place); anything else it uses is a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch

__all__ = ["GMRESOptions", "gmres", "implicit_root", "LinearSolveError"]

Residual = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


class LinearSolveError(RuntimeError):
    """The adjoint linear system did not converge (attributes ``iterations``, ``residual``)."""

    def __init__(self, iterations: int, residual: float):
        self.iterations, self.residual = iterations, residual
        super().__init__(f"GMRES did not converge: relative residual {residual:.2e} after {iterations} iterations")


@dataclass(frozen=True)
class GMRESOptions:
    """rtol: relative residual target; restart: Krylov basis size; max_iter: total iterations;
    normal_equations: solve A^T A x = A^T b by conjugate gradients instead (``linear_solve: normal_cg``)."""

    rtol: float = 1e-11
    restart: int = 60
    max_iter: int = 1000
    normal_equations: bool = False


def gmres(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, options: GMRESOptions = GMRESOptions()
          ) -> Tuple[torch.Tensor, float, int]:
    """Restarted GMRES (modified Gram-Schmidt Arnoldi, Givens rotations) for A x = b, x0 = 0.

    matvec: v -> A v on flat vectors; b: (n,). Returns (x, relative residual, iterations).
    Written by hand: scipy's solvers work on NumPy arrays (no GPU, no torch dtypes).
    """
    norm_b = float(torch.linalg.vector_norm(b))
    x = torch.zeros_like(b)
    if norm_b == 0.0:
        return x, 0.0, 0
    total, relative = 0, 1.0
    while total < options.max_iter:
        r = b - matvec(x) if total else b.clone()
        beta = float(torch.linalg.vector_norm(r))
        relative = beta / norm_b
        if relative <= options.rtol:
            break
        m = min(options.restart, options.max_iter - total)
        basis = [r / beta]
        hessenberg = torch.zeros(m + 1, m, dtype=torch.float64)
        cs, sn = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
        g = torch.zeros(m + 1, dtype=torch.float64)
        g[0] = beta
        k = 0
        for k in range(m):  # Krylov iterations, not atoms
            w = matvec(basis[k])
            for i in range(k + 1):
                hessenberg[i, k] = float(torch.dot(w, basis[i]))
                w = w - hessenberg[i, k].item() * basis[i]
            hessenberg[k + 1, k] = float(torch.linalg.vector_norm(w))
            for i in range(k):  # apply the previous rotations to the new column
                a, c = hessenberg[i, k].item(), hessenberg[i + 1, k].item()
                hessenberg[i, k], hessenberg[i + 1, k] = cs[i] * a + sn[i] * c, -sn[i] * a + cs[i] * c
            a, c = hessenberg[k, k].item(), hessenberg[k + 1, k].item()
            denom = (a * a + c * c) ** 0.5 or 1.0
            cs[k], sn[k] = a / denom, c / denom
            hessenberg[k, k], hessenberg[k + 1, k] = denom, 0.0
            g[k + 1], g[k] = -sn[k] * g[k], cs[k] * g[k]
            total += 1
            relative = abs(float(g[k + 1])) / norm_b
            if relative <= options.rtol:
                break
            norm_w = float(torch.linalg.vector_norm(w))
            if norm_w == 0.0:
                break
            basis.append(w / norm_w)
        coefficients = torch.linalg.solve_triangular(hessenberg[: k + 1, : k + 1], g[: k + 1, None], upper=True)[:, 0]
        x = x + torch.stack(basis[: k + 1], dim=1) @ coefficients.to(b.dtype)
        if relative <= options.rtol:
            break
    true_relative = float(torch.linalg.vector_norm(b - matvec(x))) / norm_b
    return x, true_relative, total


def _conjugate_gradient_normal(matvec, rmatvec, b, options: GMRESOptions):
    """CG on A^T A x = A^T b (matvec: A v, rmatvec: A^T v); same return as :func:`gmres`."""
    rhs = rmatvec(b)
    x = torch.zeros_like(b)
    r = rhs.clone()
    p = r.clone()
    rr = float(torch.dot(r, r))
    norm = rr ** 0.5 or 1.0
    it = 0
    for it in range(1, options.max_iter + 1):
        ap = rmatvec(matvec(p))
        alpha = rr / float(torch.dot(p, ap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(torch.dot(r, r))
        if rr_new ** 0.5 / norm <= options.rtol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, float(torch.linalg.vector_norm(b - matvec(x))) / (float(torch.linalg.vector_norm(b)) or 1.0), it


def _vjp_y(residual: Residual, y: torch.Tensor, tensors, vector, create_graph: bool) -> torch.Tensor:
    """(dR/dy)^T vector at (y, tensors), as a partial derivative."""
    with torch.enable_grad():
        eps = torch.zeros_like(y, requires_grad=True)
        (out,) = torch.autograd.grad(residual(y + eps, tensors), eps, vector, create_graph=create_graph)
    return out


def _jvp_y(residual: Residual, y: torch.Tensor, tensors, vector) -> torch.Tensor:
    """(dR/dy) vector by the double-VJP trick (no graph kept)."""
    with torch.enable_grad():
        eps = torch.zeros_like(y, requires_grad=True)
        r = residual(y + eps, tensors)
        u = torch.zeros_like(r, requires_grad=True)
        (vjp,) = torch.autograd.grad(r, eps, u, create_graph=True)
        (out,) = torch.autograd.grad(vjp, u, vector)
    return out


def solve_adjoint(residual: Residual, y: torch.Tensor, tensors, gradient: torch.Tensor,
                  options: GMRESOptions) -> torch.Tensor:
    """lam with J^T lam = gradient at (y, tensors), numerically (no graph)."""
    y, tensors = y.detach(), [t.detach() for t in tensors]
    transpose = lambda v: _vjp_y(residual, y, tensors, v, False)  # noqa: E731
    if options.normal_equations:
        solution, relative, iterations = _conjugate_gradient_normal(
            transpose, lambda v: _jvp_y(residual, y, tensors, v), gradient, options)
    else:
        solution, relative, iterations = gmres(transpose, gradient, options)
    if relative > max(1e3 * options.rtol, 1e-6):
        raise LinearSolveError(iterations, relative)
    return solution


class _ImplicitRoot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual, options, root, *tensors):
        ctx.residual, ctx.options = residual, options
        out = root.detach().clone()
        ctx.save_for_backward(out, *tensors)
        return out

    @staticmethod
    def backward(ctx, gradient):
        y, *tensors = ctx.saved_tensors
        residual, options = ctx.residual, ctx.options
        create = torch.is_grad_enabled()
        solution = solve_adjoint(residual, y, tensors, gradient.detach(), options)
        if create:
            def adjoint_residual(lam, adjoint_tensors):
                g, yy, *ts = adjoint_tensors
                return _vjp_y(residual, yy, ts, lam, True) - g

            solution = _ImplicitRoot.apply(adjoint_residual, options, solution, gradient, y, *tensors)
        floating = [t.is_floating_point() for t in tensors]
        with torch.enable_grad():
            eps = [torch.zeros_like(t, requires_grad=True) if f else None for t, f in zip(tensors, floating)]
            shifted = [t + e if e is not None else t for t, e in zip(tensors, eps)]
            r = residual(y if create else y.detach(), shifted)
            wanted = [e for e in eps if e is not None]
            grads = torch.autograd.grad(r, wanted, -solution, create_graph=create, allow_unused=True)
        it = iter(grads)
        out: List = [next(it) if f else None for f in floating]
        return (None, None, None, *out)


def implicit_root(residual: Residual, root: torch.Tensor, tensors: Sequence[torch.Tensor],
                  options: GMRESOptions = GMRESOptions()) -> torch.Tensor:
    """A tensor equal to ``root`` (a root of residual(., tensors)) carrying the implicit-function
    derivatives with respect to ``tensors`` (module docstring)."""
    return _ImplicitRoot.apply(residual, options, root.detach(), *tensors)
