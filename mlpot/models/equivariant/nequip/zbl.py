"""ZBL screened nuclear repulsion as NequIP adds it to the per-atom energy (spec nequip.md §2.4).

Per directed edge (each pair is counted twice, half the energy each):

    E_ij = ½ V_ZBL(r) · u(r / r_c)

with V_ZBL the universal ZBL kernel of :mod:`mlpot.models.pair` (``ZBL_UNIVERSAL``; k = 14.399645
eV·Å for ``units: metal`` or 332.06371 kcal/mol·Å for ``units: real``, LAMMPS' constants) and u
the model's polynomial envelope at the (per-edge-type) cutoff with its own order p, not LAMMPS'
inner/outer switching [COMPAT]. E_i = Σ_j E_ij (centre atoms).
"""

from __future__ import annotations

from typing import Sequence

import torch
from ase.data import atomic_numbers as ASE_ATOMIC_NUMBERS

from mlpot.models.pair import zbl_pair_energy
from mlpot.nn import polynomial_cutoff, scatter_sum
from mlpot.units import LAMMPS_QQR2E_METAL, LAMMPS_QQR2E_REAL

__all__ = ["ZBL", "ZBL_UNITS"]

ZBL_UNITS = {"metal": LAMMPS_QQR2E_METAL, "real": LAMMPS_QQR2E_REAL}


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
