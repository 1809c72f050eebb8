"""Electrostatics of atom-centred Gaussian multipole densities (spec mace_scf.md §2.1-2.4).

What: ``_density`` (normalisations, storage order [Q, d_y, d_z, d_x], closed forms) and
``_kernels`` (pair kernels of Gaussian charges and dipoles). How: ``_realspace`` (pair sums),
``_kspace`` (reciprocal sums), ``_solver`` (Ewald split, boundary handlings), ``_corrections``
(slab, molecule in box). Public entry points: ``coulomb_energy``, ``coulomb_fields``,
``electrostatic_potential_at_nuclei`` (one frame), ``field_features`` helpers, and
``FrameWiseElectrostatics`` for collated batches. Units: eV, Å, e, V, V/Å.
"""

from mlpot.electrostatics._batch import FrameWiseElectrostatics, batch_method
from mlpot.electrostatics._coulomb import (
    PBC_METHODS,
    coulomb_energy,
    coulomb_fields,
    electrostatic_potential_at_nuclei,
    resolve_handling,
)
from mlpot.electrostatics._density import (
    cartesian_to_multipoles,
    frame_dipoles,
    gaussian_kernel_exponent,
    multipole_normalisation,
    multipoles_to_cartesian,
    receiver_normalisation,
    receiver_scale,
    self_interaction,
    split_multipoles,
)
from mlpot.electrostatics._features import (
    average_field_feature_norms,
    expand_feature_norms,
    external_field_features,
    fermi_level_features,
    n_field_features,
    potential_to_features,
)
from mlpot.electrostatics._kspace import gaussian_charge_reciprocal_potentials, half_space_miller_kvectors
from mlpot.electrostatics._operator import FieldOperator, frame_energy_from_fields, padded_index
from mlpot.electrostatics._solver import CoulombOptions, cutoff_rule_kmax, ewald_parameters

__all__ = [
    "FrameWiseElectrostatics", "batch_method", "PBC_METHODS", "coulomb_energy", "coulomb_fields",
    "electrostatic_potential_at_nuclei", "resolve_handling", "cartesian_to_multipoles", "frame_dipoles",
    "gaussian_kernel_exponent", "multipole_normalisation", "multipoles_to_cartesian", "receiver_normalisation",
    "receiver_scale", "self_interaction", "split_multipoles", "average_field_feature_norms",
    "expand_feature_norms", "external_field_features", "fermi_level_features", "n_field_features",
    "potential_to_features", "FieldOperator", "frame_energy_from_fields", "padded_index", "CoulombOptions", "cutoff_rule_kmax", "ewald_parameters",
    "gaussian_charge_reciprocal_potentials", "half_space_miller_kvectors",
]
