"""Public single-frame API: Coulomb energy, potentials and ESPs of Gaussian multipole densities.

Chooses the boundary handling of a frame from ``method`` (the spec's ``electrostatic_pbc_method``)
and its ``pbc``, validates inputs once, and calls the solver (``_solver.py``).

Methods and the pbc patterns they accept (spec §2.2):
``realspace`` FFF; ``pbc`` TTT; ``slab`` TTF; ``molecule_in_box`` FFF (periodic in its cell +
Makov-Payne); ``mixed_periodic`` TTT / TTF / FFF (molecule correction for FFF, slab for TTF);
``auto``: realspace for FFF, periodic for TTT, slab for TTF (the batch-level dispatcher applies the
spec's batch rule: realspace only if every frame is FFF, else mixed_periodic).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from mlpot.electrostatics._density import split_multipoles
from mlpot.electrostatics._solver import CoulombOptions, Receiver, energy_from_fields, frame_fields
from mlpot.errors import ConfigError

__all__ = ["PBC_METHODS", "resolve_handling", "coulomb_energy", "coulomb_fields", "electrostatic_potential_at_nuclei"]

PBC_METHODS = ("realspace", "pbc", "slab", "molecule_in_box", "mixed_periodic", "auto")
_PATTERNS = {(False, False, False): "FFF", (True, True, True): "TTT", (True, True, False): "TTF"}
_ALLOWED = {
    "realspace": {"FFF": "realspace"},
    "pbc": {"TTT": "periodic"},
    "slab": {"TTF": "slab"},
    "molecule_in_box": {"FFF": "molecule"},
    "mixed_periodic": {"TTT": "periodic", "TTF": "slab", "FFF": "molecule"},
    "auto": {"TTT": "periodic", "TTF": "slab", "FFF": "realspace"},
}


def resolve_handling(method: str, pbc, cell: Optional[torch.Tensor] = None, frame: Optional[int] = None) -> str:
    """Solver handling ("realspace" | "periodic" | "slab" | "molecule") of one frame.

    method: one of PBC_METHODS; pbc: (3,) bools; cell: (3, 3) Å, checked to have a volume when the
    handling is periodic. Raises ConfigError (key ``electrostatic_pbc_method``) naming the frame.
    """
    if method not in _ALLOWED:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(PBC_METHODS)}", key="electrostatic_pbc_method")
    pattern = _PATTERNS.get(tuple(bool(x) for x in (pbc.tolist() if torch.is_tensor(pbc) else pbc)))
    handling = _ALLOWED[method].get(pattern)
    if handling is None:
        allowed = ", ".join(_ALLOWED[method])
        got = "".join("T" if bool(x) else "F" for x in (pbc.tolist() if torch.is_tensor(pbc) else pbc))
        raise ConfigError(f"method {method!r} accepts pbc {allowed}; got {got}", key="electrostatic_pbc_method", frame=frame)
    if handling != "realspace":
        if cell is None or float(torch.linalg.det(cell.detach()).abs()) < 1e-6:
            raise ConfigError(
                f"handling {handling!r} evaluates the frame in its periodic cell, but the cell has no volume "
                "(give isolated frames a box of 30-40 Å or use method 'realspace')",
                key="cell", frame=frame,
            )
    return handling


def _check(positions, multipoles, sigma):
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3); got {tuple(positions.shape)}")
    if multipoles.shape[0] != positions.shape[0]:
        raise ValueError(f"multipoles has {multipoles.shape[0]} rows but positions has {positions.shape[0]} atoms")
    if not float(sigma) > 0.0:
        raise ValueError(f"sigma (atomic_multipoles_smearing_width) must be > 0 Å; got {sigma}")


def _prepare(positions, multipoles, sigma, cell, pbc, method):
    _check(positions, multipoles, sigma)
    pbc = (False, False, False) if pbc is None else pbc
    handling = resolve_handling(method, pbc, cell)
    if cell is None:
        cell = positions.new_zeros(3, 3)
    charges, dipoles = split_multipoles(multipoles.to(positions.dtype))
    return charges, dipoles, cell.to(positions.dtype), handling


def coulomb_fields(
    positions: torch.Tensor,
    multipoles: torch.Tensor,
    sigma: float,
    receiver_widths: Sequence[float],
    cell: Optional[torch.Tensor] = None,
    pbc=None,
    method: str = "auto",
    include_self: bool = True,
    options: CoulombOptions = CoulombOptions(),
):
    """Potential (n_widths, n_atoms) V and gradient (n_widths, n_atoms, 3) V/Å (Cartesian) at each
    atom, averaged over a multipole-normalised receiver Gaussian of each width (Å; 0 = the nucleus).

    positions (n_atoms, 3) Å; multipoles (n_atoms, (L+1)^2) [Q, d_y, d_z, d_x] e, e·Å; sigma Å;
    cell (3, 3) Å rows; pbc (3,) bools (None = isolated); include_self: whether an atom's own density
    contributes to its own values. Boundary corrections are included.
    """
    charges, dipoles, cell, handling = _prepare(positions, multipoles, sigma, cell, pbc, method)
    receivers = [Receiver(float(w), include_self) for w in receiver_widths]
    return frame_fields(positions, charges, dipoles, cell, handling, float(sigma), receivers, options)


def coulomb_energy(
    positions: torch.Tensor,
    multipoles: torch.Tensor,
    sigma: float,
    cell: Optional[torch.Tensor] = None,
    pbc=None,
    method: str = "auto",
    include_self_interaction: bool = True,
    options: CoulombOptions = CoulombOptions(),
) -> torch.Tensor:
    """Coulomb energy (eV, scalar) of one frame's Gaussian multipole density, 0.5 ∬ rho rho' / (4 pi eps0 |r - r'|).

    positions (n_atoms, 3) Å; multipoles (n_atoms, (L+1)^2) [Q, d_y, d_z, d_x] in e and e·Å; sigma:
    Gaussian width Å; cell (3, 3) Å rows; pbc (3,) bools (None = isolated); method: one of
    PBC_METHODS; include_self_interaction: keep each Gaussian's self-energy (k_e q^2 / (2 sqrt(pi) sigma)
    for a charge). Differentiable in positions, cell and multipoles (forces, stress, features).
    """
    charges, dipoles, cell, handling = _prepare(positions, multipoles, sigma, cell, pbc, method)
    v, g = frame_fields(positions, charges, dipoles, cell, handling, float(sigma), [Receiver(float(sigma), include_self_interaction)], options)
    return energy_from_fields(charges, dipoles, v[0], g[0])


def electrostatic_potential_at_nuclei(
    positions: torch.Tensor,
    multipoles: torch.Tensor,
    sigma: float,
    cell: Optional[torch.Tensor] = None,
    pbc=None,
    method: str = "auto",
    options: CoulombOptions = CoulombOptions(),
) -> torch.Tensor:
    """Electrostatic potential (V) of the whole density at each nucleus (n_atoms,), own atom included.

    Same arguments as ``coulomb_energy``. Slab and molecule corrections are added (the original
    offers ESPs for TTT and TTF only).
    """
    v, _ = coulomb_fields(positions, multipoles, sigma, [0.0], cell, pbc, method, True, options)
    return v[0]
