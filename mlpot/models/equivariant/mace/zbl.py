"""Ziegler-Biersack-Littmark screened nuclear repulsion with MACE's envelope (``pair_repulsion``).

For an edge between atoms of atomic numbers Z_i, Z_j at distance r (Å):

    a = 0.4543 * 0.529 / (Z_i^0.3 + Z_j^0.3)        (Å; 0.4543 and 0.3 are the buffers a_prefactor, a_exp)
    phi(x) = 0.1818 e^{-3.2 x} + 0.5099 e^{-0.9423 x} + 0.2802 e^{-0.4028 x} + 0.02817 e^{-0.2016 x}
    V(r) = 14.3996 Z_i Z_j / r * phi(r / a)         (eV)

multiplied by the polynomial cutoff envelope of order p (``num_cutoff_basis``) with the cut at
R_i + R_j (ASE covalent radii), halved per directed edge and summed on the receiving atom, so that
a pair contributes V once. Constants as mace-torch's ``ZBLBasis`` (its 14.3996 eV·Å and 0.529 Å,
not the CODATA values) so that energies match it. Generic (a candidate for the shared equivariant
blocks); written by hand as no library provides it in torch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from ase.data import covalent_radii

from mlpot.nn import polynomial_cutoff, scatter_sum

__all__ = ["ZBLRepulsion"]


class ZBLRepulsion(torch.nn.Module):
    """Per-atom ZBL energies (n_atoms,) eV from edge lengths and the elements at both ends."""

    def __init__(self, atomic_numbers: Sequence[int], p: int = 6, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.p = float(p)
        self.register_buffer("c", torch.tensor([0.1818, 0.5099, 0.2802, 0.02817], dtype=dtype))
        self.register_buffer("a_exp", torch.tensor(0.300, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(0.4543, dtype=dtype))
        self.register_buffer("numbers", torch.tensor([int(z) for z in atomic_numbers], dtype=torch.long), persistent=False)
        radii = torch.tensor([covalent_radii[int(z)] for z in atomic_numbers], dtype=dtype)
        self.register_buffer("radii", radii, persistent=False)

    def forward(self, lengths: torch.Tensor, element_i: torch.Tensor, element_j: torch.Tensor, receiver: torch.Tensor,
                n_atoms: int) -> torch.Tensor:
        """lengths (n_edges,) Å; element_i/j (n_edges,) element indices of receiver/sender; returns (n_atoms,) eV."""
        z_i = self.numbers.index_select(0, element_i).to(lengths.dtype)
        z_j = self.numbers.index_select(0, element_j).to(lengths.dtype)
        a = self.a_prefactor * 0.529 / (torch.pow(z_j, self.a_exp) + torch.pow(z_i, self.a_exp))
        x = lengths / a
        phi = (self.c[0] * torch.exp(-3.2 * x) + self.c[1] * torch.exp(-0.9423 * x)
               + self.c[2] * torch.exp(-0.4028 * x) + self.c[3] * torch.exp(-0.2016 * x))
        energy = (14.3996 * z_j * z_i) / lengths * phi
        r_max = self.radii.index_select(0, element_j) + self.radii.index_select(0, element_i)
        energy = 0.5 * energy * polynomial_cutoff(lengths, r_max, self.p)
        return scatter_sum(energy, receiver, n_atoms)
