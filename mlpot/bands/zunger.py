"""Analytic pseudopotential forms of DeePseudopot (spec deepseudopot.md §2.4-2.5).

* Zunger (Wang-Zunger, PRB 51, 17398): v(q) = a0 (q² - a1) / (a2 exp(a3 q²) - 1).
* Long-range screened Coulomb tail: v_LR(q) = -a4 · 4π/q² · exp(-q²/(4γ²)), γ = 0.2 Bohr⁻¹,
  zero for q <= 1e-4.

Units: q in Bohr⁻¹, v in Hartree·Bohr³ (the Hamiltonian divides by the cell volume).
Shapes: ``q`` (n_q,), ``params`` (n_species, 9) -> (n_q, n_species).
"""

from __future__ import annotations

import torch

__all__ = ["zunger_form_factor", "long_range_form_factor", "analytic_form_factor", "LR_GAMMA", "LR_Q_MIN"]

LR_GAMMA = 0.2  # Bohr⁻¹, width of the long-range tail
LR_Q_MIN = 1e-4  # Bohr⁻¹, below this the tail is set to zero
_POLE_GUARD = 1e-12


def zunger_form_factor(q: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Zunger local form factor. ``q`` (n_q,) Bohr⁻¹, ``params`` (n_s, >=4) -> (n_q, n_s) Ha·Bohr³.

    For 0 < a2 < 1 and a3 > 0 the denominator vanishes at q² = -ln(a2)/a3; it is kept away from 0
    by ``_POLE_GUARD`` with its sign preserved so that the value stays finite.
    """
    q2 = q[:, None] ** 2
    a0, a1, a2, a3 = (params[:, i][None, :] for i in range(4))
    denominator = a2 * torch.exp(a3 * q2) - 1.0
    sign = torch.where(denominator >= 0, 1.0, -1.0).to(denominator.dtype)
    denominator = torch.where(denominator.abs() < _POLE_GUARD, sign * _POLE_GUARD, denominator)
    return a0 * (q2 - a1) / denominator


def long_range_form_factor(q: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Screened Coulomb tail, amplitude ``params[:, 4]``. (n_q,) -> (n_q, n_s) Ha·Bohr³."""
    q2 = q[:, None] ** 2
    safe_q2 = torch.where(q2 > LR_Q_MIN**2, q2, torch.ones_like(q2))
    tail = -params[:, 4][None, :] * 4.0 * torch.pi / safe_q2 * torch.exp(-safe_q2 / (4.0 * LR_GAMMA**2))
    return torch.where(q2 > LR_Q_MIN**2, tail, torch.zeros_like(tail))


def analytic_form_factor(q: torch.Tensor, params: torch.Tensor, long_range: bool = True) -> torch.Tensor:
    """Zunger form plus (optionally) the long-range tail: (n_q,) -> (n_q, n_s)."""
    value = zunger_form_factor(q, params)
    return value + long_range_form_factor(q, params) if long_range else value
