"""Ziegler-Biersack-Littmark screened nuclear repulsion with MACE's envelope (``pair_repulsion``).

For an edge between atoms of atomic numbers Z_i, Z_j at distance r (Å), V(r) is the ZBL kernel of
:mod:`mlpot.models.pair` with mace-torch's constants (``ZBL_MACE``: its rounded coefficients,
a_0 = 0.4543 · 0.529 Å, Z exponent 0.3, k = 14.3996 eV·Å, not the CODATA values, so that energies
match mace-torch's ``ZBLBasis``); the coefficients c, the exponent ``a_exp`` and the prefactor
``a_prefactor`` are buffers, loaded from mace-torch's files. V is multiplied by the polynomial
cutoff envelope of order p (``num_cutoff_basis``) with the cut at R_i + R_j (ASE covalent radii),
halved per directed edge and summed on the receiving atom, so that a pair contributes V once.
"""

from __future__ import annotations

from typing import Sequence

import torch
from ase.data import covalent_radii

from mlpot.models.pair import ZBL_MACE, zbl_pair_energy
from mlpot.nn import polynomial_cutoff, scatter_sum
from mlpot.units import MACE_BOHR_ANGSTROM, MACE_ZBL_COULOMB

__all__ = ["ZBLRepulsion"]


class ZBLRepulsion(torch.nn.Module):
    """Per-atom ZBL energies (n_atoms,) eV from edge lengths and the elements at both ends."""

    def __init__(self, atomic_numbers: Sequence[int], p: int = 6, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.p = float(p)
        self.register_buffer("c", torch.tensor(ZBL_MACE.coefficients, dtype=dtype))
        self.register_buffer("a_exp", torch.tensor(ZBL_MACE.z_exponent, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(0.4543, dtype=dtype))
        self.register_buffer("numbers", torch.tensor([int(z) for z in atomic_numbers], dtype=torch.long), persistent=False)
        radii = torch.tensor([covalent_radii[int(z)] for z in atomic_numbers], dtype=dtype)
        self.register_buffer("radii", radii, persistent=False)

    def forward(self, lengths: torch.Tensor, element_i: torch.Tensor, element_j: torch.Tensor, receiver: torch.Tensor,
                n_atoms: int) -> torch.Tensor:
        """lengths (n_edges,) Å; element_i/j (n_edges,) element indices of receiver/sender; returns (n_atoms,) eV."""
        z_i = self.numbers.index_select(0, element_i).to(lengths.dtype)
        z_j = self.numbers.index_select(0, element_j).to(lengths.dtype)
        energy = zbl_pair_energy(lengths, z_i, z_j, MACE_ZBL_COULOMB, ZBL_MACE, coefficients=self.c,
                                 screening_length=self.a_prefactor * MACE_BOHR_ANGSTROM, z_exponent=self.a_exp)
        r_max = self.radii.index_select(0, element_j) + self.radii.index_select(0, element_i)
        energy = 0.5 * energy * polynomial_cutoff(lengths, r_max, self.p)
        return scatter_sum(energy, receiver, n_atoms)
