"""Pair kernels of Gaussian charges and dipoles (l <= 1) and their radial derivatives.

Two multipole-normalised Gaussians (``_density.py``) of widths s_i, s_j interact through
``K(d) = erf(a d) / d`` with ``a = 1/sqrt(2 (s_i^2 + s_j^2))`` (times k_e). Charges and dipoles need
K and its first two derivatives, packed as the radial functions

    T0 = K,   T1 = K'/d,   T2 = (K'' - K'/d) / d^2,

so that grad K = T1 r and the Hessian is T1 I + T2 r r^T. For ``erf(a d)/d`` these are
``a^(2n+1) F_n(a^2 d^2)`` with ``F_n(u) = (2/sqrt(pi)) (-2)^n int_0^1 t^(2n) exp(-u t^2) dt`` (Boys-type
functions), evaluated by their Taylor series for u < 1 (no cancellation at short range, smooth at
d = 0, where the self-terms come from) and by closed forms in erfc/exp elsewhere. The Ewald
real-space part uses the erfc forms directly: ``erfc(b d)/d - erfc(a d)/d``.

Written by hand because no library provides the l <= 1 Gaussian-multipole interaction tensors
with the screened (Ewald) split; l = 2 needs one more radial derivative (T3) and the same pattern.
All functions are pure torch (autograd to any order, float32 and float64), vectorised over pairs.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from mlpot.nn import is_tracing

__all__ = [
    "erf_radial",
    "erfc_radial",
    "erf_radial_at_zero",
    "erf_radial_third",
    "screened_radial",
    "multipole_field",
]

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_SERIES_TERMS = 20  # u < 1: term 20 is < 1/20! ~ 4e-19 of the leading one
_SERIES_SWITCH = 1.0

Radial = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _series_coefficients(n: int):
    # G_n(u) = sum_k (-u)^k / (k! (2n + 2k + 1))
    return [(-1.0) ** k / (math.factorial(k) * (2 * n + 2 * k + 1)) for k in range(_SERIES_TERMS)]


_SERIES = [_series_coefficients(n) for n in range(3)]


def _horner(u: torch.Tensor, coefficients) -> torch.Tensor:
    out = torch.full_like(u, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * u + c
    return out


class _SeriesBoys(torch.autograd.Function):
    """G_n(u) = sum_k (-u)^k / (k! (2n + 2k + 1)) by Horner, differentiated as dG_n/du = -G_(n+1)
    (exact for the integral form, term by term for the truncated series up to its last term): the
    graph holds one node per order instead of one per series term (the Horner loop's 2 x 20
    saved products, a third of the dense Coulomb blocks' backward), to any order."""

    generate_vmap_rule = True  # torch.func transforms (jacrev in the fits of the tests)

    @staticmethod
    def forward(u: torch.Tensor, n: int) -> torch.Tensor:
        return _horner(u, _series(n))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        u, n = inputs
        ctx.save_for_backward(u)
        ctx.save_for_forward(u)
        ctx.order = n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (u,) = ctx.saved_tensors
        return -grad * _SeriesBoys.apply(u, ctx.order + 1), None

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, _):
        (u,) = ctx.saved_tensors
        return -tangent * _SeriesBoys.apply(u, ctx.order + 1)


def _series(n: int):
    while len(_SERIES) <= n:
        _SERIES.append(_series_coefficients(len(_SERIES)))
    return _SERIES[n]


def _series_boys(u: torch.Tensor, n: int) -> torch.Tensor:
    """G_n(u) (u < 1, (n_pairs,)): the custom-gradient series, or plain Horner when traced."""
    if is_tracing():
        return _horner(u, _series(n))
    return _SeriesBoys.apply(u, n)


def erfc_radial(distance: torch.Tensor, exponent) -> Radial:
    """(T0, T1, T2) of ``erfc(a d)/d`` for d > 0 (no cancellation; units 1/Å, 1/Å^3, 1/Å^5).

    distance: (n_pairs,) Å, strictly positive; exponent a: float or (n_pairs,) 1/Å.
    """
    x = exponent * distance
    e = torch.exp(-x * x) * (_TWO_OVER_SQRT_PI * exponent)  # (2a/sqrt(pi)) exp(-a^2 d^2)
    ec = torch.erfc(x)
    inv_d = 1.0 / distance
    inv_d2 = inv_d * inv_d
    t0 = ec * inv_d
    t1 = -(t0 + e) * inv_d2
    t2 = (3.0 * t0 * inv_d2 + 3.0 * e * inv_d2 + 2.0 * exponent * exponent * e) * inv_d2
    return t0, t1, t2


def erf_radial(distance: torch.Tensor, exponent) -> Radial:
    """(T0, T1, T2) of ``erf(a d)/d`` for d >= 0, smooth through d = 0 (1/Å, 1/Å^3, 1/Å^5).

    distance: (n_pairs,) Å; exponent a: float or (n_pairs,) 1/Å.
    """
    exponent = torch.as_tensor(exponent, dtype=distance.dtype, device=distance.device)
    u = (exponent * distance) ** 2
    short = u < _SERIES_SWITCH
    # series branch on clamped input, closed branch on a safe distance (no NaN gradients in where)
    u_series = torch.where(short, u, torch.zeros_like(u))
    a1 = exponent * _TWO_OVER_SQRT_PI
    a3 = -2.0 * exponent**3 * _TWO_OVER_SQRT_PI
    a5 = 4.0 * exponent**5 * _TWO_OVER_SQRT_PI
    # the series of F_2 only; F_1, F_0 by the (stable) downward recursion F_n = (2u F_(n+1) + e^-u) / (2n + 1)
    f2 = _series_boys(u_series, 2)
    decay = torch.exp(-u_series)
    f1 = (2.0 * u_series * f2 + decay) / 3.0
    f0 = 2.0 * u_series * f1 + decay
    s0, s1, s2 = a1 * f0, a3 * f1, a5 * f2
    d_safe = torch.where(short, torch.ones_like(distance) * 2.0 * math.sqrt(_SERIES_SWITCH) / exponent, distance)
    c0, c1, c2 = erfc_radial(d_safe, exponent)
    inv_d = 1.0 / d_safe
    inv_d3 = inv_d**3
    l0 = inv_d - c0
    l1 = -inv_d3 - c1
    l2 = 3.0 * inv_d3 * inv_d * inv_d - c2
    return torch.where(short, s0, l0), torch.where(short, s1, l1), torch.where(short, s2, l2)


def erf_radial_third(distance: torch.Tensor, exponent) -> torch.Tensor:
    """T3 = (dT2/dd) / d of ``erf(a d)/d`` (1/Å^7), d >= 0: the radial function of the third
    derivatives (``a^7 (-8) (2/sqrt(pi)) G_3(u)`` by the series for u < 1, ``-15/d^7`` minus that of
    ``erfc(a d)/d`` elsewhere). Values only (the analytic backward of the dense pair entries)."""
    exponent = torch.as_tensor(exponent, dtype=distance.dtype, device=distance.device)
    u = (exponent * distance) ** 2
    short = u < _SERIES_SWITCH
    series = -8.0 * exponent**7 * _TWO_OVER_SQRT_PI * _horner(torch.where(short, u, torch.zeros_like(u)), _series(3))
    d = torch.where(short, torch.ones_like(distance) * 2.0 * math.sqrt(_SERIES_SWITCH) / exponent, distance)
    x = exponent * d
    e = torch.exp(-x * x) * (_TWO_OVER_SQRT_PI * exponent)
    inv_d2 = 1.0 / (d * d)
    c0 = torch.erfc(x) / d
    c3 = -((15.0 * (c0 + e) * inv_d2 + 10.0 * exponent**2 * e) * inv_d2 + 4.0 * exponent**4 * e) * inv_d2
    return torch.where(short, series, -15.0 * inv_d2**3 / d - c3)


def erf_radial_at_zero(exponent: float) -> Tuple[float, float]:
    """(T0(0), T1(0)) of ``erf(a d)/d``: (2a/sqrt(pi), -4a^3/(3 sqrt(pi))); T2 does not enter self-terms."""
    return _TWO_OVER_SQRT_PI * exponent, -2.0 * _TWO_OVER_SQRT_PI * exponent**3 / 3.0


def screened_radial(distance: torch.Tensor, exponent, screening) -> Radial:
    """(T0, T1, T2) of the Ewald real-space kernel ``erf(a d)/d - erf(b d)/d`` for d > 0.

    exponent a (pair kernel, 1/Å) and screening b (Ewald splitting, 1/Å); b = None gives the
    unscreened ``erf(a d)/d`` of an isolated system.
    """
    if screening is None:
        return erf_radial(distance, exponent)
    b0, b1, b2 = erfc_radial(distance, screening)
    a0, a1, a2 = erfc_radial(distance, exponent)
    return b0 - a0, b1 - a1, b2 - a2


def multipole_field(
    separation: torch.Tensor, radial: Radial, charges: torch.Tensor, dipoles: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Potential and its gradient at receivers due to Gaussian charges + dipoles (kernel units).

    separation: (n_pairs, 3) Å, receiver position minus source position; radial: (T0, T1, T2) each
    (n_pairs,); charges: (n_pairs,) e and dipoles: (n_pairs, 3) e·Å of the sources.
    Returns V (n_pairs,) e/Å and grad V (n_pairs, 3) e/Å^2 (multiply by k_e for V and V/Å):
    ``V = q T0 - T1 (p.r)``, ``grad V = q T1 r - T1 p - T2 (p.r) r``.
    """
    t0, t1, t2 = radial
    p_dot_r = (dipoles * separation).sum(-1)
    potential = charges * t0 - t1 * p_dot_r
    gradient = (charges * t1 - t2 * p_dot_r)[:, None] * separation - t1[:, None] * dipoles
    return potential, gradient
