"""ZBL screened nuclear repulsion as NequIP adds it to the per-atom energy (spec nequip.md §2.4).

Per directed edge (each pair is counted twice, half the energy each):

    E_ij = ½ k Z_i Z_j / r · φ(r / a) · u(r / r_c),   a = 0.46850 / (Z_i^0.23 + Z_j^0.23) Å,
    φ(x) = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x} + 0.28022 e^{-0.40290 x} + 0.02817 e^{-0.20162 x},

k = 14.399645 eV·Å (``units: metal``) or 332.06371 kcal/mol·Å (``units: real``), LAMMPS' constants;
u is the model's polynomial envelope at the (per-edge-type) cutoff with its own order p, not LAMMPS'
inner/outer switching [COMPAT]. E_i = Σ_j E_ij (centre atoms). Written by hand: the formula is
four exponentials and no library evaluates NequIP's envelope variant.
"""

from __future__ import annotations

from typing import Sequence

import torch
from ase.data import atomic_numbers as ASE_ATOMIC_NUMBERS

from mlpot.nn import polynomial_cutoff, scatter_sum
from mlpot.units import LAMMPS_QQR2E_METAL, LAMMPS_QQR2E_REAL

__all__ = ["ZBL", "ZBL_UNITS", "zbl_pair_energy"]

ZBL_UNITS = {"metal": LAMMPS_QQR2E_METAL, "real": LAMMPS_QQR2E_REAL}
_SCREENING = ((0.18175, -3.19980), (0.50986, -0.94229), (0.28022, -0.40290), (0.02817, -0.20162))
_SCREENING_LENGTH = 0.46850  # Å
_Z_EXPONENT = 0.23


def zbl_pair_energy(distance: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor, coulomb: float) -> torch.Tensor:
    """Unscreened-by-envelope ZBL energy k Z_i Z_j / r φ(r/a) of pairs, (n,) in k's energy unit; distance in Å."""
    x = (torch.pow(z_i, _Z_EXPONENT) + torch.pow(z_j, _Z_EXPONENT)) * distance / _SCREENING_LENGTH
    phi = sum(c * torch.exp(d * x) for c, d in _SCREENING)
    return coulomb * z_i * z_j / distance * phi


class ZBL(torch.nn.Module):
    """ZBL per-atom energies over the edges of a batch (module docstring).

    chemical_species: element symbol of every model type (aligned with the type names);
    units: "metal" | "real"; polynomial_cutoff_p: envelope order p.
    forward(distance (E,) Å, reduced (E,) = r / r_c, types (n,), centre (E,), neighbour (E,),
    both_directions: each edge also stands for its reverse) -> (n,) energy per atom.
    """

    def __init__(self, chemical_species: Sequence[str], units: str = "metal", polynomial_cutoff_p: float = 6.0):
        super().__init__()
        if units not in ZBL_UNITS:
            raise ValueError(f"ZBL units must be one of {sorted(ZBL_UNITS)}, got {units!r}")
        unknown = [s for s in chemical_species if ASE_ATOMIC_NUMBERS.get(s, 0) < 1]
        if unknown:
            raise ValueError(f"ZBL needs real chemical symbols, got {unknown}")
        self.chemical_species, self.units, self.p = list(chemical_species), units, float(polynomial_cutoff_p)
        self.coulomb = ZBL_UNITS[units]
        self.register_buffer("atomic_numbers", torch.tensor([float(ASE_ATOMIC_NUMBERS[s]) for s in chemical_species],
                                                            dtype=torch.float64), persistent=False)

    def forward(self, distance: torch.Tensor, reduced: torch.Tensor, types: torch.Tensor, centre: torch.Tensor,
                neighbour: torch.Tensor, both_directions: bool = False) -> torch.Tensor:
        z = self.atomic_numbers.to(distance.dtype).index_select(0, types)
        pair = zbl_pair_energy(distance, z.index_select(0, centre), z.index_select(0, neighbour), self.coulomb)
        edge_energy = 0.5 * pair * polynomial_cutoff(reduced, 1.0, self.p)
        energy = scatter_sum(edge_energy, centre, types.shape[0])
        return energy + scatter_sum(edge_energy, neighbour, types.shape[0]) if both_directions else energy

    def extra_repr(self) -> str:
        return f"chemical_species={self.chemical_species}, units={self.units}, p={self.p}"
