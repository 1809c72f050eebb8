"""se_a_mask (DeePMD-kit TF backend): se_e2_a over all real atoms of a frame, atoms masked by aparam.

For frames whose atom count varies (padded with virtual atoms to a fixed size, e.g. DeePMD-kit's
zinc_protein example), ``aparam`` (one per atom) marks real (non-zero) and virtual (0) atoms; the
fitting must have ``numb_aparam: 1`` and ``use_aparam_as_mask: true``. With m_i the mask
(``env.atom_mask``):

* neighbours are every other real atom, whatever the distance: no cutoff and no switch, so the
  environment row is (1/r, x/r², y/r², z/r²) (Å⁻¹); there is no davg/dstd normalisation (DeePMD-kit
  sets the statistics to 0 and 1);
* a virtual atom is nobody's neighbour and has no neighbours; its slots, like the padded ones,
  hold zero rows, so it adds nothing to A;
* A_i = (1/N_c) Σ_j R_ijᵀ G_ij, D_i = A_iᵀ A_i[:, :M2] exactly as se_e2_a (per-type ``sel``
  sections, N_c = Σ sel, one net per type pair or per neighbour type with ``type_one_side``).

The fitting multiplies the atomic energies by m_i, so a frame with virtual atoms has the energy of
the same frame without them. Deviation (deliberate): DeePMD-kit TF leaves a virtual atom the
energy of a zero descriptor (its fitting net's output at 0 plus its type's bias), a constant per
frame composition; forces agree either way. DeePMD-kit's op also needs every frame to hold exactly
sel[t] atoms of type t (virtual ones included) so that its sorted neighbour rows line up with the
type sections; here the sections are built by type, so any composition works.

Frames must be non-periodic (DeePMD-kit ignores the box); neighbours are found within
``ALL_ATOMS_CUTOFF`` (1000 Å) and a frame wider than that is an error.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from mlpot.data.keys import APARAM, BATCH, EDGE_INDEX, EDGE_SHIFTS, PBC, POSITIONS
from mlpot.errors import DataError
from mlpot.models.deepmd.descriptors.env import atom_mask
from mlpot.models.deepmd.descriptors.se_e2_a import DescriptorSeA
from mlpot.models.deepmd.keys import SE_A_MASK
from mlpot.nn import is_tracing

__all__ = ["DescriptorSeAMask", "ALL_ATOMS_CUTOFF"]

ALL_ATOMS_CUTOFF = 1000.0  # Å: "every atom" for the neighbour list; the switch starts above it


class DescriptorSeAMask(DescriptorSeA):
    """se_a_mask descriptor (module docstring): forward(batch with APARAM, vectors (n_edges, 3) Å)
    -> (D (n_atoms, M1*M2), rot (n_atoms, M1, 3)) as se_e2_a."""

    KEYS = SE_A_MASK
    needs_atom_mask = True  # the fitting must use aparam as the mask (checked by build_standard)

    def __init__(self, n_types: int, sel, **kwargs):
        super().__init__(n_types, sel, rcut=ALL_ATOMS_CUTOFF + 1.0, rcut_smth=ALL_ATOMS_CUTOFF, **kwargs)

    def compute_statistics(self, samples, protection: float = 1e-2) -> Dict[str, Any]:
        """No statistics: davg stays 0 and dstd 1 (DeePMD-kit's se_a_mask)."""
        return {}

    def _check_frames(self, batch: Dict[str, torch.Tensor]) -> None:
        if is_tracing():
            return
        if bool(batch[PBC].any()):
            raise DataError("se_a_mask takes non-periodic frames (DeePMD-kit ignores the box): give the system "
                            "a nopbc flag or no box.npy", key=PBC)
        positions = batch[POSITIONS].detach()
        if positions.shape[0]:
            n_frames = int(batch[PBC].shape[0])
            index = batch[BATCH].unsqueeze(1).expand(-1, 3)
            high = positions.new_full((n_frames, 3), -float("inf")).scatter_reduce(0, index, positions, "amax")
            low = positions.new_full((n_frames, 3), float("inf")).scatter_reduce(0, index, positions, "amin")
            width = float(torch.nan_to_num((high - low).norm(dim=-1), nan=0.0, neginf=0.0, posinf=0.0).max())
            if width >= ALL_ATOMS_CUTOFF:
                raise DataError(f"se_a_mask: a frame spans {width:.1f} Å, more than the {ALL_ATOMS_CUTOFF} Å within "
                                "which mlpot finds its neighbours", key=POSITIONS)

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check_frames(batch)
        real = atom_mask(batch.get(APARAM))
        edge_index = batch[EDGE_INDEX]
        kept = torch.nonzero(real[edge_index[0]] & real[edge_index[1]]).squeeze(1)
        masked = dict(batch)
        masked[EDGE_INDEX] = edge_index.index_select(1, kept)
        masked[EDGE_SHIFTS] = batch[EDGE_SHIFTS].index_select(0, kept)
        return super().forward(masked, vectors.index_select(0, kept))
