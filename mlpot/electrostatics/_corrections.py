"""Boundary corrections for non-periodic frames evaluated in a periodic cell (spec §2.2-2.3).

Each correction is returned as a node potential V_i (V) and gradient G_i (V/Å) that equal the
derivatives of the correction energy with respect to the charges and Cartesian dipoles; the
corrections are quadratic in the density, so their energy is ``0.5 sum_i (q_i V_i + p_i.G_i)``.

* slab (TTF, z open): Yeh-Berkowitz, ``dE = 2 pi k_e M_z^2 / Omega``, ``M_z = sum q z + sum p_z``.
* molecule in box (FFF): Makov-Payne / Dabo (PRB 77, 115139),
  ``dE = 0.5 alpha_M k_e Q^2 / L + (2 pi k_e / 3 Omega)(|mu|^2 - Q Theta)``, ``L = Omega^(1/3)``
  (``Omega^0.3333`` in compatibility mode [COMPAT]), ``Theta = sum q |r|^2 + 2 sum r.p``.
  Assumes a cubic box. It is translation invariant, so positions are centred first (numerics).
* charged periodic frames: the k = 0 term of the Ewald real-space kernel is removed, so every
  solver uses the same neutralising-background gauge as a pure k-space sum with k = 0 dropped.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from mlpot.units import COULOMB_CONSTANT, EPSILON0, MADELUNG_CUBIC

__all__ = ["slab_correction", "molecule_in_box_correction", "background_potential"]

#: exponent of the box length used by the original's Makov-Payne term [COMPAT]
COMPAT_CUBE_ROOT = 0.3333


def slab_correction(
    positions: torch.Tensor, charges: torch.Tensor, dipoles: torch.Tensor, volume: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Yeh-Berkowitz node potentials (n_atoms,) V and gradients (n_atoms, 3) V/Å for a TTF frame.

    positions (n_atoms, 3) Å; charges (n_atoms,) e; dipoles (n_atoms, 3) e·Å; volume: cell volume Å^3.
    """
    moment_z = (charges * positions[:, 2]).sum() + dipoles[:, 2].sum()
    field = 4.0 * math.pi * COULOMB_CONSTANT * moment_z / volume
    potential = field * positions[:, 2]
    gradient = torch.zeros_like(positions)
    gradient = gradient + torch.stack([torch.zeros_like(field), torch.zeros_like(field), field])
    return potential, gradient


def molecule_in_box_correction(
    positions: torch.Tensor,
    charges: torch.Tensor,
    dipoles: torch.Tensor,
    volume: torch.Tensor,
    compat_cube_root: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Makov-Payne/Dabo node potentials (n_atoms,) V and gradients (n_atoms, 3) V/Å for an FFF frame.

    Same arguments as ``slab_correction``; ``compat_cube_root`` uses Omega^0.3333 as the original.
    """
    centred = positions - positions.detach().mean(0)
    total_charge = charges.sum()
    moment = (charges[:, None] * centred).sum(0) + dipoles.sum(0)
    theta = (charges * (centred * centred).sum(1)).sum() + 2.0 * (centred * dipoles).sum()
    length = volume ** (COMPAT_CUBE_ROOT if compat_cube_root else 1.0 / 3.0)
    c = 2.0 * math.pi * COULOMB_CONSTANT / (3.0 * volume)
    potential = (
        MADELUNG_CUBIC * COULOMB_CONSTANT * total_charge / length
        - c * total_charge * (centred * centred).sum(1)
        + 2.0 * c * (centred @ moment)
        - c * theta
    )
    gradient = 2.0 * c * (moment[None, :] - total_charge * centred)
    return potential, gradient


def background_potential(total_charge: torch.Tensor, volume: torch.Tensor, exponent: float, screening: float):
    """Constant potential (V) removing the k = 0 term of the Ewald real-space kernel.

    ``-(Q / (4 Omega eps0)) (1/b^2 - 1/a^2)`` for kernel exponent a and screening b (1/Å).
    """
    return -(total_charge / (4.0 * volume * EPSILON0)) * (1.0 / screening**2 - 1.0 / exponent**2)
