"""Physics of mlpot's MACE: symmetries, derivatives, locality, E0, batch consistency, every variant."""

from __future__ import annotations

import pytest
import torch

from mlpot.data import keys as K
from mlpot.models.derivatives import compute_derivatives
from mlpot.models.equivariant.mace import MACE, ScaleShiftMACE, build_mace
from mlpot.testing import (assert_batch_consistent, assert_forces_match_fd, assert_invariant,
                           assert_virial_matches_finite_strain, random_batch, random_rotation, rotate_batch)

E0S = {1: -1.5, 8: -3.25}


def small_model(dtype=torch.float64, **overrides) -> MACE:
    section = dict(type="mace", model="ScaleShiftMACE", r_max=3.5, num_radial_basis=6, num_cutoff_basis=5,
                   hidden_irreps="4x0e+4x1o", max_ell=2, correlation=2, num_interactions=2, MLP_irreps="4x0e",
                   radial_MLP=[8], atomic_numbers=[8, 1], E0s=E0S, avg_num_neighbors=6.0,
                   interaction_first="RealAgnosticInteractionBlock", atomic_inter_scale=0.7, atomic_inter_shift=0.0)
    section.update(overrides)
    torch.manual_seed(0)
    return build_mace(section, dtype)


def batch_of(dtype=torch.float64, **kwargs):
    options = dict(n_frames=2, n_atoms=[5, 7], n_types=2, cutoff=3.5, box=4.0, seed=3)
    options.update(kwargs)
    return random_batch(dtype=dtype, **options)


def tolerances(dtype):
    return dict(atol=1e-8, rtol=1e-7) if dtype == torch.float64 else dict(atol=2e-4, rtol=1e-4)


def test_element_table_and_outputs():
    model = small_model()
    assert model.type_map == ["H", "O"] and model.atomic_numbers.tolist() == [1, 8]
    out = model(batch_of())
    assert out[K.ENERGY].shape == (2,) and out[K.ATOM_ENERGY].shape == (12,)
    torch.testing.assert_close(out[K.ENERGY], torch.stack([out[K.ATOM_ENERGY][:5].sum(), out[K.ATOM_ENERGY][5:].sum()]))


def test_rotation_translation_permutation(dtype):
    model, batch = small_model(dtype), batch_of(dtype)
    assert_invariant(model, batch, forces=True, **tolerances(dtype))


def test_parity(dtype):
    """An improper rotation leaves energies unchanged and rotates forces (O(3) invariance)."""
    model, batch = small_model(dtype), batch_of(dtype)
    improper = -random_rotation(torch.float64, seed=5)
    before = compute_derivatives(model, batch)
    after = compute_derivatives(model, rotate_batch(batch, improper))
    torch.testing.assert_close(after[K.ATOM_ENERGY], before[K.ATOM_ENERGY], **tolerances(dtype))
    torch.testing.assert_close(after[K.FORCES], before[K.FORCES] @ improper.to(dtype).T, **tolerances(dtype))


def wigner_matrix(irreps, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal representation matrix of ``irreps`` for an orthogonal matrix, to float64 precision
    (from Y_l(R x) = D_l(R) Y_l(x) on random directions; e3nn's D_from_matrix goes through Euler
    angles and loses ~1e-7)."""
    from e3nn import o3

    points = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    improper = bool(torch.det(rotation) < 0)
    blocks = []
    for mul, ir in irreps:
        before = o3.spherical_harmonics(ir.l, points, normalize=True)
        after = o3.spherical_harmonics(ir.l, points @ rotation.T, normalize=True)
        block = torch.linalg.lstsq(before, after).solution.T
        if improper and ir.p != (-1) ** ir.l:
            block = -block
        blocks += [block] * mul
    return torch.block_diag(*blocks)


def test_node_features_are_equivariant(dtype):
    model, batch = small_model(dtype, keep_last_layer_irreps=True), batch_of(dtype)
    features, irreps = model.node_features(batch)
    assert str(irreps) == "4x0e+4x1o+4x0e+4x1o" and features.shape == (12, irreps.dim)
    for rotation in (random_rotation(torch.float64, seed=1), -random_rotation(torch.float64, seed=2)):
        rotated, _ = model.node_features(rotate_batch(batch, rotation))
        wigner = wigner_matrix(irreps, rotation).to(dtype)
        torch.testing.assert_close(rotated, features @ wigner.T, **tolerances(dtype))


def test_batch_equals_single_frames(dtype):
    assert_batch_consistent(small_model(dtype), batch_of(dtype), forces=True, **tolerances(dtype))


def test_forces_and_stress_by_finite_differences():
    model, batch = small_model(), batch_of()
    assert_forces_match_fd(model, batch, atol=1e-6, rtol=1e-5)
    assert_virial_matches_finite_strain(model, batch, atol=1e-6, rtol=1e-5)


def test_float32_forces_by_finite_differences():
    model, batch = small_model(torch.float32), batch_of(torch.float32)
    assert_forces_match_fd(model, batch, delta=1e-2, atol=2e-2, rtol=1e-2, atoms=[0, 3, 6])


def _two_atoms(distance: float, dtype=torch.float64):
    from mlpot.data import AtomsDataset, collate

    frame = {K.POSITIONS: torch.tensor([[0.0, 0.0, 0.0], [distance, 0.3, 0.0]], dtype=torch.float64).numpy(),
             K.CELL: torch.zeros(3, 3, dtype=torch.float64).numpy(), K.PBC: torch.zeros(3, dtype=torch.bool).numpy(),
             K.ATOM_TYPES: torch.tensor([0, 1]).numpy()}
    dataset = AtomsDataset([frame], 3.5, type_map=["H", "O"], warn_distance=0.0)
    return collate([dataset[0]], dtype=dtype)


@pytest.mark.parametrize("cls", ["MACE", "ScaleShiftMACE"])
def test_atoms_beyond_the_cutoff_feel_nothing_and_carry_their_e0(cls, dtype):
    scaling = dict(atomic_inter_scale=1.0) if cls == "MACE" else {}
    model = small_model(dtype, model=cls, **scaling)
    assert type(model).__name__ == cls
    out = compute_derivatives(model, _two_atoms(3.6, dtype))
    assert torch.count_nonzero(out[K.FORCES]) == 0
    torch.testing.assert_close(out[K.ATOM_ENERGY], torch.tensor([E0S[1], E0S[8]], dtype=dtype))
    near = compute_derivatives(model, _two_atoms(3.3, dtype))
    assert float(near[K.FORCES].abs().max()) > 1e-6


def test_isolated_atom_energy_is_its_e0_plus_shift(dtype):
    from mlpot.data import AtomsDataset, collate

    model = small_model(dtype, atomic_inter_shift=0.25)
    frame = {K.POSITIONS: torch.zeros(1, 3, dtype=torch.float64).numpy(), K.CELL: torch.zeros(3, 3).double().numpy(),
             K.PBC: torch.zeros(3, dtype=torch.bool).numpy(), K.ATOM_TYPES: torch.tensor([1]).numpy()}
    batch = collate([AtomsDataset([frame], 3.5, type_map=["H", "O"])[0]], dtype=dtype)
    torch.testing.assert_close(model(batch)[K.ENERGY], torch.tensor([E0S[8] + 0.25], dtype=dtype))


VARIANTS = {
    "residual_first": dict(interaction_first="RealAgnosticResidualInteractionBlock"),
    "density": dict(interaction_first="RealAgnosticDensityInteractionBlock",
                    interaction="RealAgnosticDensityResidualInteractionBlock"),
    "plain_all": dict(interaction="RealAgnosticInteractionBlock"),
    "correlation_3": dict(correlation=3, max_ell=3),
    "correlation_4": dict(correlation=4, hidden_irreps="2x0e+2x1o", max_ell=1),
    "correlation_list": dict(correlation=[3, 1]),
    "gaussian": dict(radial_type="gaussian"),
    "chebyshev": dict(radial_type="chebyshev", apply_cutoff=False, num_radial_basis=3),
    "agnesi": dict(distance_transform="Agnesi"),
    "soft_zbl": dict(distance_transform="Soft", pair_repulsion=True),
    "one_layer": dict(num_interactions=1),
    "three_layers_last_readout": dict(num_interactions=3, use_last_readout_only=True, gate="tanh"),
    "agnostic_product": dict(use_agnostic_product=True, gate="None"),
    "odd_scalars": dict(hidden_irreps="3x0e+3x0o+3x1o", max_L=None),
    "channels_max_L": dict(hidden_irreps=None, num_channels=3, max_L=2, gate="abs"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_are_invariant_with_consistent_forces(variant):
    model, batch = small_model(**VARIANTS[variant]), batch_of(n_frames=1, n_atoms=[6])
    assert_invariant(model, batch, forces=True, atol=1e-8, rtol=1e-7)
    improper = -random_rotation(torch.float64, seed=4)
    torch.testing.assert_close(model(rotate_batch(batch, improper))[K.ENERGY], model(batch)[K.ENERGY])
    assert_forces_match_fd(model, batch, atol=1e-6, rtol=1e-5, atoms=[0, 2, 5])


def zbl_energy(z_1: int, z_2: int, r: float, p: int = 5) -> float:
    """ZBL pair energy with MACE's constants and envelope (cut at the sum of covalent radii), eV."""
    import math

    from ase.data import covalent_radii

    a = 0.4543 * 0.529 / (z_1 ** 0.3 + z_2 ** 0.3)
    phi = sum(c * math.exp(-k * r / a) for c, k in ((0.1818, 3.2), (0.5099, 0.9423), (0.2802, 0.4028), (0.02817, 0.2016)))
    x = r / (covalent_radii[z_1] + covalent_radii[z_2])
    envelope = 1 - (p + 1) * (p + 2) / 2 * x ** p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return 14.3996 * z_1 * z_2 / r * phi * (envelope if x < 1 else 0.0)


@pytest.mark.parametrize("distance", [0.6, 0.9, 1.2])
def test_zbl_pair_energy(distance):
    """The ZBL term adds V(r) once per pair, scaled like the other interaction energies (mace-torch)."""
    plain, zbl = small_model(), small_model(pair_repulsion=True)
    assert isinstance(zbl, ScaleShiftMACE)
    close = _two_atoms(distance)
    with torch.no_grad():
        extra = float(zbl(close)[K.ENERGY] - plain(close)[K.ENERGY])
    expected = 0.7 * zbl_energy(1, 8, (distance ** 2 + 0.3 ** 2) ** 0.5)
    assert extra == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert (extra > 0.5) == (distance < 0.7)
