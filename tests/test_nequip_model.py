"""NequIP model: the test battery of spec nequip.md §5 (symmetry, batching, derivatives, locality,
isolated atoms, additivity, ZBL) in float32 and float64, and the model section's rules."""

import math

import numpy as np
import pytest
import torch
from e3nn import o3

from mlpot import testing as T
from mlpot.data import AtomsDataset, collate
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models.derivatives import compute_derivatives
from mlpot.models.equivariant.nequip import NequIPModelSection, build_nequip

BASE = {"type_names": ["A", "B"], "r_max": 3.5, "num_layers": 3, "l_max": 2, "num_features": 4, "radial_mlp_depth": 1,
        "radial_mlp_width": 8, "num_bessels": 6, "avg_num_neighbors": 9.0, "seed": 3,
        "per_type_energy_scales": {"A": 1.3, "B": 0.8}, "per_type_energy_shifts": {"A": -2.0, "B": -3.5}}
VARIANTS = {
    "default": {},
    "zbl": {"pair_potential": {"units": "metal", "chemical_species": ["C", "O"]}},
    "per_edge_type_cutoff": {"per_edge_type_cutoff": {"A": 2.9, "B": {"A": 2.9, "B": 3.2}}, "bessel_trainable": True},
    "per_l_features": {"num_features": [6, 4, 2], "parity": False, "avg_num_neighbors": {"A": 8.0, "B": 10.0},
                       "readout_mlp_hidden_layers_depth": 1, "per_type_energy_shifts_trainable": True},
}


def make_model(dtype=torch.float64, **changes):
    return build_nequip({**BASE, **changes}, dtype)


def tolerances(dtype):
    return dict(atol=1e-7, rtol=1e-7) if dtype == torch.float64 else dict(atol=5e-4, rtol=5e-4)


def molecule_frame(positions, types, box=None):
    positions = np.asarray(positions, dtype=np.float64)
    periodic = box is not None
    return {K.POSITIONS: positions, K.CELL: np.eye(3) * (box or 0.0), K.PBC: np.array([periodic] * 3),
            K.ATOM_TYPES: np.asarray(types, dtype=np.int64)}


def batch_of(frames, cutoff=3.5):
    dataset = AtomsDataset(frames, cutoff, type_map=["A", "B"])
    return collate([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_invariance_equivariance_and_batching(dtype, variant):
    model = make_model(dtype, **VARIANTS[variant])
    batch = T.random_batch(3, [8, 6, 7], cutoff=3.5, seed=3)
    tol = tolerances(dtype)
    T.assert_invariant(model, batch, **tol)  # rotation, translation, permutation; forces rotate and permute
    T.assert_batch_consistent(model, batch, **({"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else tol))
    # parity: inversion leaves the energy unchanged and flips the forces
    reference = compute_derivatives(model, batch)
    inverted = compute_derivatives(model, T.rotate_batch(batch, -torch.eye(3, dtype=torch.float64)))
    torch.testing.assert_close(inverted[K.ENERGY], reference[K.ENERGY], **tol)
    torch.testing.assert_close(inverted[K.FORCES], -reference[K.FORCES], **tol)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forces_and_stress_by_finite_differences(dtype, variant):
    model = make_model(dtype, **VARIANTS[variant])
    batch = T.random_batch(2, [7, 6], cutoff=3.5, seed=1)
    if dtype == torch.float64:
        T.assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-6)
        T.assert_virial_matches_finite_strain(model, batch, atol=1e-7, rtol=1e-6)
    else:
        T.assert_forces_match_fd(model, batch, delta=2e-3, atol=5e-3, rtol=5e-2, atoms=[0, 4, 9])
        T.assert_virial_matches_finite_strain(model, batch, delta=2e-3, atol=2e-2, rtol=5e-2)


def test_stress_sign_and_virial_convention():
    model = make_model()
    batch = T.random_batch(1, 8, cutoff=3.5, seed=6)
    out = compute_derivatives(model, batch, forces=False, virial=True, stress=True)
    volume = torch.linalg.det(batch[K.CELL][0]).abs()
    torch.testing.assert_close(out[K.STRESS][0], -out[K.VIRIAL][0] / volume)  # NequIP/ASE: virial = -stress V
    torch.testing.assert_close(out[K.VIRIAL][0], out[K.VIRIAL][0].T)


def test_atoms_beyond_every_cutoff_feel_no_force(dtype):
    model = make_model(dtype, **VARIANTS["zbl"])
    cluster = [[0, 0, 0], [1.1, 0.2, 0], [0.3, 1.2, 0.4], [1.4, 1.3, 1.1]]
    lonely = [[9.0, 0.0, 0.0]]
    batch = batch_of([molecule_frame(cluster + lonely, [0, 1, 1, 0, 1])])
    forces = compute_derivatives(model, batch)[K.FORCES]
    assert torch.equal(forces[4], torch.zeros(3, dtype=forces.dtype))
    assert forces[:4].abs().max() > 1e-3
    # an atom just beyond the cutoff of its only neighbour: no force on either (envelope and radial weights are 0)
    pair = batch_of([molecule_frame([[0, 0, 0], [3.5 + 1e-9, 0, 0]], [0, 1])], cutoff=4.0)
    assert pair[K.EDGE_INDEX].shape[1] == 2
    assert torch.equal(compute_derivatives(model, pair)[K.FORCES], torch.zeros(2, 3, dtype=forces.dtype))
    near = batch_of([molecule_frame([[0, 0, 0], [1.75, 0, 0]], [0, 1])])
    assert compute_derivatives(model, near)[K.FORCES].abs().max() > 1e-3  # non-zero at half the cutoff


@pytest.mark.parametrize("variant", ["default", "zbl", "per_l_features"])
def test_isolated_atoms_get_exactly_their_shift(dtype, variant):
    model = make_model(dtype, **VARIANTS[variant])
    batch = batch_of([molecule_frame([[0.0, 0.0, 0.0]], [0]), molecule_frame([[1.0, 2.0, 3.0]], [1], box=6.0)], cutoff=3.5)
    energy = model(batch)[K.ENERGY]
    assert energy.dtype == torch.float64
    assert torch.equal(energy, torch.tensor([-2.0, -3.5], dtype=torch.float64))
    shared = make_model(dtype, per_type_energy_shifts=-1.25, per_type_energy_scales=2.0)
    assert torch.equal(shared(batch)[K.ENERGY], torch.tensor([-1.25, -1.25], dtype=torch.float64))


def test_separated_molecules_add_up(dtype):
    model = make_model(dtype, **VARIANTS["zbl"])
    first = molecule_frame([[0, 0, 0], [1.0, 0.3, 0], [0.2, 1.1, 0.5]], [0, 1, 1])
    second = molecule_frame([[0, 0, 0], [1.2, 0, 0.4], [0.1, 0.9, -0.8], [-0.9, 0.3, 0.2]], [1, 0, 0, 1])
    joined = molecule_frame(np.concatenate([first[K.POSITIONS], second[K.POSITIONS] + [40.0, 0, 0]]), [0, 1, 1, 1, 0, 0, 1])
    parts = [compute_derivatives(model, batch_of([f])) for f in (first, second)]
    whole = compute_derivatives(model, batch_of([joined]))
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(whole[K.ENERGY], parts[0][K.ENERGY] + parts[1][K.ENERGY], **tol)
    torch.testing.assert_close(whole[K.FORCES], torch.cat([parts[0][K.FORCES], parts[1][K.FORCES]]), **tol)
    torch.testing.assert_close(whole[K.FORCES].sum(0), torch.zeros(3, dtype=whole[K.FORCES].dtype), atol=1e-4, rtol=0)


def zbl_closed_form(r, z1, z2, r_max, p=6.0):
    """ZBL pair energy (eV), both directions of the pair, with NequIP's polynomial envelope."""
    a = 0.46850 / (z1 ** 0.23 + z2 ** 0.23)
    x = r / a
    phi = 0.18175 * math.exp(-3.19980 * x) + 0.50986 * math.exp(-0.94229 * x) + 0.28022 * math.exp(-0.40290 * x) \
        + 0.02817 * math.exp(-0.20162 * x)
    u = r / r_max
    envelope = 1 - (p + 1) * (p + 2) / 2 * u ** p + p * (p + 2) * u ** (p + 1) - p * (p + 1) / 2 * u ** (p + 2)
    return 14.399645 * z1 * z2 / r * phi * envelope


@pytest.mark.parametrize("r", [0.6, 1.1, 2.7])
def test_zbl_matches_its_closed_form(r):
    with_zbl, without = make_model(**VARIANTS["zbl"]), make_model()  # same seed: same network weights
    pair = batch_of([molecule_frame([[0, 0, 0], [r, 0, 0]], [0, 1])])
    difference = (with_zbl(pair)[K.ENERGY] - without(pair)[K.ENERGY]).detach()
    assert float(difference) == pytest.approx(zbl_closed_form(r, 6, 8, 3.5), rel=1e-12)
    same_species = batch_of([molecule_frame([[0, 0, 0], [r, 0, 0]], [1, 1])])
    difference = (with_zbl(same_species)[K.ENERGY] - without(same_species)[K.ENERGY]).detach()
    assert float(difference) == pytest.approx(zbl_closed_form(r, 8, 8, 3.5), rel=1e-12)
    atomic = with_zbl(pair)[K.ATOM_ENERGY] - without(pair)[K.ATOM_ENERGY]
    torch.testing.assert_close(atomic[0], atomic[1])  # half the pair energy on each atom


def test_zbl_real_units_scale_the_energy():
    metal = make_model(pair_potential={"units": "metal", "chemical_species": ["C", "O"]})
    real = make_model(pair_potential={"units": "real", "chemical_species": ["C", "O"]})
    plain = make_model()
    pair = batch_of([molecule_frame([[0, 0, 0], [0.9, 0, 0]], [0, 1])])
    ratio = (real(pair)[K.ENERGY] - plain(pair)[K.ENERGY]) / (metal(pair)[K.ENERGY] - plain(pair)[K.ENERGY])
    assert float(ratio.detach()) == pytest.approx(332.06371 / 14.399645, rel=1e-12)


def test_per_edge_type_cutoff_switches_pairs_off():
    model = make_model(per_edge_type_cutoff={"A": {"A": 2.0, "B": 3.5}, "B": {"A": 3.5, "B": 3.5}})
    batch = batch_of([molecule_frame([[0, 0, 0], [2.5, 0, 0]], [0, 0]), molecule_frame([[0, 0, 0], [2.5, 0, 0]], [0, 1])])
    out = compute_derivatives(model, batch)
    torch.testing.assert_close(out[K.ENERGY][0], torch.tensor(-4.0, dtype=torch.float64), atol=0, rtol=0)
    assert torch.equal(out[K.FORCES][:2], torch.zeros(2, 3, dtype=torch.float64))
    assert out[K.FORCES][2:].abs().max() > 1e-4
    asymmetric = make_model(per_edge_type_cutoff={"A": {"B": 2.0}})
    assert not asymmetric.pairs_symmetric  # the radial network then runs on every directed edge
    T.assert_forces_match_fd(asymmetric, T.random_batch(1, 7, cutoff=3.5, seed=4), atol=1e-7, rtol=1e-6)


def test_node_features_are_equivariant():
    model = make_model()
    batch = T.random_batch(1, 8, cutoff=3.5, seed=2)
    features, irreps = model.node_features(batch)
    assert irreps == model.layers[1].irreps_out and features.shape == (8, irreps.dim)
    assert any(ir.l == 2 for _, ir in irreps)
    rotation = T.random_rotation(torch.float64, seed=5)
    rotated, _ = model.node_features(T.rotate_batch(batch, rotation))
    torch.testing.assert_close(rotated, features @ irreps.D_from_matrix(rotation).T, atol=1e-10, rtol=1e-8)
    inverted, _ = model.node_features(T.rotate_batch(batch, -torch.eye(3, dtype=torch.float64)))
    torch.testing.assert_close(inverted, features @ irreps.D_from_matrix(-torch.eye(3, dtype=torch.float64)).T, atol=1e-10, rtol=1e-8)
    last, last_irreps = model.node_features(batch, layer=-1)
    assert last_irreps == o3.Irreps("4x0e") and last.shape == (8, 4)


def test_architecture_and_parameter_count():
    """Layer irreps follow NequIP's tp_path_exists rule; 2 types, l_max 1, parity: spec §2.2 counts."""
    tutorial_like = dict(BASE, type_names=["Cu", "Au"], num_layers=4, l_max=1, num_features=32, radial_mlp_depth=2,
                         radial_mlp_width=64, num_bessels=8, per_type_energy_scales=1.0, per_type_energy_shifts=0.0)
    assert make_model(**tutorial_like).num_parameters() == pytest.approx(417_000, rel=0.01)
    small = dict(tutorial_like, num_layers=2, num_features=16, radial_mlp_width=32)
    assert make_model(**small).num_parameters() == pytest.approx(10_800, rel=0.01)
    model = make_model(**dict(small, l_max=1))
    assert str(model.layers[0].irreps_out) == "16x0e+16x1o"  # only paths reachable from the scalar embedding
    assert str(model.layers[1].irreps_out) == "16x0e"  # last layer: scalars only


def test_presets_and_explicit_overrides():
    base = {k: v for k, v in BASE.items() if k not in ("num_layers", "l_max", "num_features", "radial_mlp_depth", "radial_mlp_width")}
    section = NequIPModelSection.model_validate({**base, "preset": "m", "num_features": [8, 4, 2], "radial_mlp_width": 8})
    assert (section.num_layers, section.l_max, section.parity, section.radial_mlp_depth) == (4, 2, False, 1)
    assert section.num_features == [8, 4, 2] and section.radial_mlp_width == 8 and section.type_embed_num_features == 32
    assert NequIPModelSection.model_validate({**base, "preset": "XL"}).feature_multiplicities() == [320, 96, 64, 32, 32]


@pytest.mark.parametrize("change, message", [
    ({"per_type_energy_shifts": [-2.0, -3.5]}, "lists are not accepted"),
    ({"per_type_energy_scales": {"A": 1.0}}, "must be the type names"),
    ({"type_names": ["A-1", "B"]}, "alphanumeric"),
    ({"avg_num_neighbors": None}, "avg_num_neighbors is required"),
    ({"num_features": [4, 4]}, "expected 3 entries"),
    ({"per_edge_type_cutoff": {"A": 4.0}}, "must lie in"),
    ({"pair_potential": {"units": "metal", "chemical_species": ["C"]}}, "one symbol per type"),
    ({"categorical_graph_field_embed": [{"field": "total_charge"}]}, "not supported yet: model.categorical_graph_field_embed"),
    ({"num_layer": 2}, r"model.num_layer: unknown key \(did you mean 'num_layers'\?\)"),
    ({"pair_potential": {"units": "lj", "chemical_species": ["C", "O"]}}, "model.pair_potential.units"),
])
def test_section_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        build_nequip({**BASE, **change})


def test_zbl_needs_real_elements():
    with pytest.raises(ValueError, match="real chemical symbols"):
        build_nequip({**BASE, "pair_potential": {"units": "metal", "chemical_species": ["X1", "O"]}})


def test_seed_makes_initialisation_reproducible_without_touching_global_rng():
    state = torch.random.get_rng_state()
    first, second = make_model(), make_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), name
    assert make_model(model_dtype="float32").model_dtype == torch.float32
