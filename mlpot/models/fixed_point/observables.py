"""Observables of a density (spec mace_scf.md §2.8): energy, charges, dipole, ESPs, features.

E = sum_i [E_local,i + e_i (field readout) + 0.5 (q_i V_i + d_i.G_i) + q_i F.r_i + d_i.F]: the
backbone's local energy, the readout, the Coulomb energy (receiver width sigma, self-interaction
as configured) and the energy of the density in the applied potential F.r (F: gradient of the
applied potential; absolute positions, so origin-dependent for charged frames [COMPAT]).
``ATOM_ENERGY`` holds these per-atom parts, so it sums to ``ENERGY``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from mlpot.data import keys as K
from mlpot.electrostatics import frame_dipoles, split_multipoles
from mlpot.models.fixed_point.problem import LocalState, SCFProblem

__all__ = ["build_observables", "applied_potential_energy"]


def applied_potential_energy(positions: torch.Tensor, density: torch.Tensor, field_atoms: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-atom energy (n,) eV of the density in the applied potential F.r: q F.r + d.F."""
    if field_atoms is None:
        return positions.new_zeros(positions.shape[0])
    charges, dipoles = split_multipoles(density.to(positions.dtype))
    return charges * (positions * field_atoms).sum(-1) + (dipoles * field_atoms).sum(-1)


def build_observables(batch: Dict[str, torch.Tensor], problem: SCFProblem, readout: Optional[torch.nn.Module],
                      density: torch.Tensor, fermi: torch.Tensor, features: torch.Tensor,
                      wanted: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """Outputs of the final density (n, (L+1)^2) and Fermi level (F,) (module docstring).

    readout: the field readout (None: no local electron energy); wanted: extra outputs (ESPS,
    REFERENCE_ESPS, FIELD_FEATURES, REFERENCE_FIELD_FEATURES) to compute.
    """
    state: LocalState = problem.state
    n_widths = len(problem.widths)
    positions = batch[K.POSITIONS]
    field_atoms = state.atoms(batch[K.EXTERNAL_FIELD].to(positions.dtype)) if K.EXTERNAL_FIELD in batch else None
    potential, gradient = state.operator.fields(density, (n_widths, n_widths + 1))
    charges, dipoles = split_multipoles(density.to(positions.dtype))
    coulomb = 0.5 * (charges * potential[0] + (dipoles * gradient[0]).sum(-1))
    atom_energy = state.atom_energy + coulomb + applied_potential_energy(positions, density, field_atoms)
    if readout is not None:
        atom_energy = atom_energy + readout(state.hidden, density, state.density0, features, state.species, state.edges)
    out = {
        K.ATOM_ENERGY: atom_energy,
        K.ENERGY: state.frame_sum(atom_energy),
        K.ELECTROSTATIC_ENERGY: state.frame_sum(coulomb),
        K.ATOMIC_MULTIPOLES: density,
        K.CHARGES: density[:, 0],
        K.TOTAL_CHARGE: problem.charges(density),
        K.DIPOLE: frame_dipoles(positions, density, state.batch_index, state.n_frames),
        K.FERMI_LEVEL: fermi,
    }
    if K.ESPS in wanted or K.REFERENCE_ESPS in wanted:
        applied = (positions * field_atoms).sum(-1) if field_atoms is not None else 0.0
        esp_receiver = (n_widths + 1, n_widths + 2)
        out[K.ESPS] = state.operator.fields(density, esp_receiver)[0][0] + applied
        if K.REFERENCE_ESPS in wanted and state.reference is not None:
            out[K.REFERENCE_ESPS] = state.operator.fields(state.reference, esp_receiver)[0][0] + applied
    if K.FIELD_FEATURES in wanted or K.REFERENCE_FIELD_FEATURES in wanted:
        # features without the Fermi-level term (MACE-SCF feats_no_mu), channel layout flattened
        offset = torch.full_like(density[:, 0], problem.fermi_offset)
        out[K.FIELD_FEATURES] = problem.features(density, offset).flatten(1)
        if state.reference is not None:
            out[K.REFERENCE_FIELD_FEATURES] = problem.features(state.reference, offset).flatten(1)
    return out
