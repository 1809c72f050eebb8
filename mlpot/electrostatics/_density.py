"""Atom-centred Gaussian multipole densities: normalisations, storage order, closed forms.

The density of atom i is ``rho_i(r) = sum_{l<=L} sum_m p_{i,lm} phi_lm(r - r_i)`` with
``phi_lm(r) = C_l(sigma) |r|^l exp(-|r|^2 / 2 sigma^2) Y_lm(r_hat)`` (spec mace_scf.md §2.1), real
spherical harmonics in e3nn's ``integral`` normalisation and e3nn order ``[Q, d_y, d_z, d_x]``.

With the "multipoles" normalisation ``phi_00`` is the unit-normalised 3-D Gaussian
``g_sigma(r) = (2 pi sigma^2)^(-3/2) exp(-r^2 / 2 sigma^2)`` and ``phi_1m = -d/dx_m g_sigma`` (the
Gaussian-smeared point dipole along Cartesian axis ``x_m``), so the coefficients are the atomic
charge (e) and the Cartesian dipole (e·Å). Every Coulomb quantity of such densities is therefore a
derivative of the Gaussian-charge pair kernel ``k_e erf(d / sqrt(2 (s_i^2 + s_j^2))) / d``; the
kernels live in ``_kernels.py``.

The "receiver" normalisation of the field-feature projectors only rescales these functions:
``phi^rec_lm(sigma) = receiver_scale(l, sigma) * phi^mult_lm(sigma)`` with
``receiver_scale(0, s) = sqrt(4 pi)`` and ``receiver_scale(1, s) = pi s sqrt(3/2)``.
Loops over ``l`` in this module run in setup code only.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from mlpot.units import EPSILON0

__all__ = [
    "MAX_SUPPORTED_L",
    "n_coefficients",
    "multipole_normalisation",
    "receiver_normalisation",
    "receiver_scale",
    "self_interaction",
    "gaussian_kernel_exponent",
    "E3NN_TO_CARTESIAN",
    "CARTESIAN_TO_E3NN",
    "split_multipoles",
    "multipoles_to_cartesian",
    "cartesian_to_multipoles",
    "frame_dipoles",
]

#: highest angular momentum implemented by the kernels (the normalisations below are general)
MAX_SUPPORTED_L = 1

#: e3nn l=1 order (y, z, x) -> Cartesian (x, y, z): cartesian = e3nn[..., E3NN_TO_CARTESIAN]
E3NN_TO_CARTESIAN = (2, 0, 1)
#: Cartesian (x, y, z) -> e3nn (y, z, x): e3nn = cartesian[..., CARTESIAN_TO_E3NN]
CARTESIAN_TO_E3NN = (1, 2, 0)


def n_coefficients(max_l: int) -> int:
    """Number of density coefficients per atom for multipoles up to ``max_l``: (L+1)^2."""
    return (max_l + 1) ** 2


def multipole_normalisation(l: int, sigma: float) -> float:
    """C_l(sigma) of the "multipoles" normalisation, 1/(Å^(l+3)).

    ``[sqrt(4 pi/(2l+1)) 2^((2l+1)/2) Gamma((2l+3)/2) sigma^(2l+3)]^-1``, so that the coefficient of
    ``phi_lm`` is the l-th Cartesian multipole moment (charge for l=0, dipole for l=1).
    """
    return 1.0 / (
        math.sqrt(4 * math.pi / (2 * l + 1)) * 2 ** ((2 * l + 1) / 2) * math.gamma((2 * l + 3) / 2) * sigma ** (2 * l + 3)
    )


def receiver_normalisation(l: int, sigma: float) -> float:
    """C_l^rec(sigma) of the "receiver" normalisation, 1/(Å^(l+3)): int_0^inf C r^(l+2) e^(-r^2/2s^2) dr = 1."""
    return 1.0 / (2 ** ((l + 1) / 2) * math.gamma((l + 3) / 2) * sigma ** (l + 3))


def receiver_scale(l: int, sigma: float) -> float:
    """Ratio phi^rec_lm / phi^mult_lm at width ``sigma`` (Å^l).

    A feature is ``receiver_scale(l, sigma)`` times the potential (l=0, V) or its gradient (l=1, V/Å)
    averaged over the multipole-normalised Gaussian of width sigma. l=0: sqrt(4 pi); l=1:
    pi sigma sqrt(3/2).
    """
    # phi^rec = C^rec r^l e^(..) Y ; phi^mult = C^mult r^l e^(..) Y  -> ratio of the constants
    return receiver_normalisation(l, sigma) / multipole_normalisation(l, sigma)


def gaussian_kernel_exponent(sigma_source, sigma_receiver):
    """Exponent a of the pair kernel k_e erf(a d)/d between two Gaussians (1/Å).

    ``a = 1 / sqrt(2 (sigma_source^2 + sigma_receiver^2))``; both widths in Å (either may be 0, a
    point receiver such as a nucleus, but not both). Works on floats and tensors.
    """
    return 1.0 / ((2.0 * (sigma_source**2 + sigma_receiver**2)) ** 0.5)


def self_interaction(l: int, sigma_source: float, sigma_receiver: float) -> float:
    """Closed form SI_l(sigma_s, sigma_r) of spec §2.2 (eV·Å^(2l)/e^2 per coefficient squared).

    ``(1/eps0) C_l^src(s_s) C_l^rec(s_r) s_s^(2l+3) s_r^(2l+3) Gamma(l+1/2) / (2 a^(l+1/2))``,
    ``a = (s_s^2 + s_r^2)/2``. The receiver side is receiver-normalised, so the self-energy of a
    density with ``sigma_receiver = sigma_source`` is ``0.5 * p^2 * SI_l / receiver_scale(l, sigma)``.
    """
    a = (sigma_source**2 + sigma_receiver**2) / 2.0
    return (
        multipole_normalisation(l, sigma_source)
        * receiver_normalisation(l, sigma_receiver)
        * sigma_source ** (2 * l + 3)
        * sigma_receiver ** (2 * l + 3)
        * math.gamma(l + 0.5)
        / (2.0 * a ** (l + 0.5))
        / EPSILON0
    )


def split_multipoles(multipoles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Charges (n_atoms,) e and Cartesian dipoles (n_atoms, 3) e·Å from stored coefficients.

    multipoles: (n_atoms, (L+1)^2) in order [Q, d_y, d_z, d_x, ...]; with L=0 the dipoles are zero.
    Columns beyond l=1 are ignored here (the kernels stop at l=1).
    """
    if multipoles.dim() != 2 or multipoles.shape[1] not in (1, 4, 9):
        raise ValueError(
            f"multipoles must have shape (n_atoms, 1), (n_atoms, 4) or (n_atoms, 9); got {tuple(multipoles.shape)}"
        )
    charges = multipoles[:, 0]
    if multipoles.shape[1] == 1:
        return charges, multipoles.new_zeros(multipoles.shape[0], 3)
    return charges, multipoles[:, 1:4][:, list(E3NN_TO_CARTESIAN)]


def multipoles_to_cartesian(multipoles: torch.Tensor) -> torch.Tensor:
    """Stored [Q, d_y, d_z, d_x] (n_atoms, 4) -> [Q, d_x, d_y, d_z] (n_atoms, 4)."""
    charges, dipoles = split_multipoles(multipoles)
    return torch.cat([charges[:, None], dipoles], dim=1)


def cartesian_to_multipoles(charges: torch.Tensor, dipoles: torch.Tensor) -> torch.Tensor:
    """Charges (n_atoms,) e and Cartesian dipoles (n_atoms, 3) e·Å -> stored (n_atoms, 4) [Q, d_y, d_z, d_x]."""
    return torch.cat([charges[:, None], dipoles[:, list(CARTESIAN_TO_E3NN)]], dim=1)


def frame_dipoles(positions: torch.Tensor, multipoles: torch.Tensor, batch: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Total Cartesian dipole of each frame, sum_i q_i r_i + sum_i d_i (n_frames, 3) e·Å.

    positions: (n_atoms, 3) Å (absolute, so the result depends on the origin for charged frames);
    multipoles: (n_atoms, (L+1)^2) stored order; batch: (n_atoms,) frame index.
    """
    charges, dipoles = split_multipoles(multipoles)
    per_atom = charges[:, None] * positions + dipoles
    return torch.zeros(n_frames, 3, dtype=per_atom.dtype, device=per_atom.device).index_add_(0, batch, per_atom)
