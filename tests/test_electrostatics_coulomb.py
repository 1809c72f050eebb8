"""Coulomb energies of Gaussian multipole densities against analytic and independent references."""

import math

import pytest
import torch

from mlpot.electrostatics import CoulombOptions, cartesian_to_multipoles, coulomb_energy, electrostatic_potential_at_nuclei
from mlpot.errors import ConfigError
from mlpot.units import COULOMB_CONSTANT

F64 = torch.float64
TIGHT = CoulombOptions(accuracy=1e-12, max_realspace_cutoff=12.0)


def rocksalt(a=5.64, dtype=F64):
    fcc = torch.tensor([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=dtype)
    positions = torch.cat([fcc, fcc + torch.tensor([0.5, 0, 0], dtype=dtype)]) * a
    charges = torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=dtype)
    return positions, charges[:, None], torch.eye(3, dtype=dtype) * a


def cluster(n=7, seed=1, dipoles=True, dtype=F64, net_charge=0.0):
    """Random cluster with atoms >= 1 Å apart, charges summing to ``net_charge``, random dipoles."""
    g = torch.Generator().manual_seed(seed)
    points = []
    while len(points) < n:
        trial = (torch.rand(3, generator=g, dtype=F64) - 0.5) * 6.0
        if all(float((trial - p).norm()) > 1.0 for p in points):
            points.append(trial)
    positions = torch.stack(points)
    q = torch.randn(n, generator=g, dtype=F64)
    q = q - q.mean() + net_charge / n
    d = 0.3 * torch.randn(n, 3, generator=g, dtype=F64) if dipoles else torch.zeros(n, 3, dtype=F64)
    return positions.to(dtype), cartesian_to_multipoles(q, d).to(dtype)


def test_rocksalt_madelung_constant_point_charge_limit():
    positions, charges, cell = rocksalt()
    pbc = (True, True, True)
    # sigma -> 0 with the self-energy removed is the point-charge lattice
    energy = coulomb_energy(positions, charges, 1e-3, cell, pbc, "pbc", include_self_interaction=False, options=TIGHT)
    madelung = -float(energy) / 4 / COULOMB_CONSTANT * (5.64 / 2)
    assert madelung == pytest.approx(1.747565, abs=2e-6)
    # the original's setting: sigma 0.1, cutoff factor 2, pure k-space (tolerance 1e-5 of its test)
    rule = CoulombOptions(kspace_solver="cutoff_rule", kspace_cutoff_factor=2.0)
    energy_rule = coulomb_energy(positions, charges, 0.1, cell, pbc, "pbc", include_self_interaction=False, options=rule)
    assert float(energy_rule) == pytest.approx(float(energy), rel=1e-5)


def test_point_charges_agree_with_torch_pme_ewald():
    torchpme = pytest.importorskip("torchpme")
    g = torch.Generator().manual_seed(3)
    cell = torch.tensor([[8.0, 0.0, 0.0], [1.0, 7.5, 0.0], [0.5, -0.8, 9.0]], dtype=F64)
    n = 12
    positions = torch.rand(n, 3, generator=g, dtype=F64) @ cell
    charges = torch.randn(n, generator=g, dtype=F64)
    charges = charges - charges.mean()
    smearing, cutoff = 1.2, 9.0
    calc = torchpme.EwaldCalculator(torchpme.CoulombPotential(smearing=smearing), lr_wavelength=0.3, full_neighbor_list=False)
    calc.to(dtype=F64)
    from vesin import NeighborList

    i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(positions.numpy(), cell.numpy(), True, quantities="ijd")
    pairs = torch.stack([torch.as_tensor(i, dtype=torch.long), torch.as_tensor(j, dtype=torch.long)], 1)
    potentials = calc(charges[:, None], cell, positions, pairs, torch.as_tensor(d, dtype=F64))
    # torch-pme's potentials carry the 1/2 of the pair double count: E = sum_i q_i phi_i
    reference = float((charges[:, None] * potentials).sum()) * COULOMB_CONSTANT
    energy = coulomb_energy(positions, charges[:, None], 1e-3, cell, (True,) * 3, "pbc", include_self_interaction=False, options=TIGHT)
    assert float(energy) == pytest.approx(reference, rel=1e-6)


def test_two_gaussian_charges_analytic():
    sigma, distance = 1.5, 2.3
    positions = torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], dtype=F64)
    q = torch.tensor([[0.7], [-1.3]], dtype=F64)
    energy = coulomb_energy(positions, q, sigma, method="realspace", include_self_interaction=False)
    expected = COULOMB_CONSTANT * 0.7 * -1.3 * math.erf(distance / (2 * sigma)) / distance
    assert float(energy) == pytest.approx(expected, rel=1e-12)
    with_self = coulomb_energy(positions, q, sigma, method="realspace")
    self_energy = COULOMB_CONSTANT * (0.7**2 + 1.3**2) / (2 * math.sqrt(math.pi) * sigma)
    assert float(with_self - energy) == pytest.approx(self_energy, rel=1e-12)


def _displaced_charge_energy(positions, multipoles, sigma, h):
    """Reference: each dipole as charges +-p/h at +-h/2 (erf kernel only), no self-terms of the sites
    of one atom with each other removed consistently: only inter-atomic site pairs count."""
    q, d = multipoles[:, 0], multipoles[:, [3, 1, 2]]
    sites, charges, owner = [], [], []
    for a in range(3):
        unit = torch.zeros(3, dtype=F64)
        unit[a] = 0.5 * h
        sites += [positions + unit, positions - unit]
        charges += [d[:, a] / h, -d[:, a] / h]
        owner += [torch.arange(len(q))] * 2
    sites = torch.cat([positions] + sites)
    charges = torch.cat([q] + charges)
    owner = torch.cat([torch.arange(len(q))] + owner)
    diff = sites[:, None] - sites[None]
    dist = diff.norm(dim=-1)
    other = owner[:, None] != owner[None]
    kernel = torch.where(other, torch.erf(dist / (2 * sigma)) / dist.clamp_min(1e-12), torch.zeros_like(dist))
    return 0.5 * COULOMB_CONSTANT * (charges[:, None] * charges[None] * kernel).sum()


def test_isolated_charges_and_dipoles_agree_with_displaced_charge_reference():
    positions, multipoles = cluster(6, seed=2)
    sigma = 0.9
    energy = coulomb_energy(positions, multipoles, sigma, method="realspace", include_self_interaction=False)
    coarse = _displaced_charge_energy(positions, multipoles, sigma, 2e-3)
    fine = _displaced_charge_energy(positions, multipoles, sigma, 1e-3)
    reference = (4 * fine - coarse) / 3  # Richardson: error O(h^4)
    assert float(energy) == pytest.approx(float(reference), rel=1e-6)


@pytest.mark.parametrize("net_charge", [0.0, 1.0])
@pytest.mark.parametrize("solver", ["ewald", "cutoff_rule"])
def test_molecule_in_box_matches_realspace(net_charge, solver):
    positions, multipoles = cluster(8, seed=4, net_charge=net_charge)
    cell = torch.eye(3, dtype=F64) * 30.0
    reference = coulomb_energy(positions, multipoles, 1.5, method="realspace")
    options = CoulombOptions(kspace_solver=solver)
    boxed = coulomb_energy(positions + 15.0, multipoles, 1.5, cell, (False,) * 3, "molecule_in_box", options=options)
    assert float(boxed) == pytest.approx(float(reference), rel=5e-3)
    compat = CoulombOptions(kspace_solver=solver, compat_cube_root=True)
    boxed_compat = coulomb_energy(positions, multipoles, 1.5, cell, (False,) * 3, "mixed_periodic", options=compat)
    assert float(boxed_compat) == pytest.approx(float(reference), rel=5e-3)


def test_slab_correction_converges_to_large_vacuum():
    g = torch.Generator().manual_seed(5)
    n = 10
    frac = torch.rand(n, 3, generator=g, dtype=F64)
    q = torch.randn(n, generator=g, dtype=F64)
    q = q - q.mean()
    d = 0.2 * torch.randn(n, 3, generator=g, dtype=F64)
    multipoles = cartesian_to_multipoles(q, d)
    energies = {}
    for vacuum in (30.0, 60.0, 120.0):
        cell = torch.diag(torch.tensor([6.0, 6.0, 6.0 + vacuum], dtype=F64))
        positions = frac * torch.tensor([6.0, 6.0, 6.0], dtype=F64)
        slab = coulomb_energy(positions, multipoles, 1.0, cell, (True, True, False), "slab")
        bare = coulomb_energy(positions, multipoles, 1.0, cell, (True, True, True), "pbc")
        energies[vacuum] = (float(slab), float(bare))
    reference = energies[120.0][0]
    assert energies[30.0][0] == pytest.approx(reference, rel=1e-3)
    # the correction matters: without it the 30 Å slab is further off than with it
    assert abs(energies[30.0][1] - reference) > 3 * abs(energies[30.0][0] - reference)


def test_ewald_and_cutoff_rule_agree_for_smooth_densities():
    positions, multipoles = cluster(8, seed=6)
    cell = torch.tensor([[9.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 11.0]], dtype=F64)
    pbc = (True, True, True)
    ewald = coulomb_energy(positions, multipoles, 1.5, cell, pbc, "pbc", options=TIGHT)
    rule = coulomb_energy(positions, multipoles, 1.5, cell, pbc, "pbc", options=CoulombOptions(kspace_solver="cutoff_rule", kspace_cutoff_factor=2.0))
    assert float(rule) == pytest.approx(float(ewald), rel=1e-9)
    default = coulomb_energy(positions, multipoles, 1.5, cell, pbc, "pbc")  # accuracy 1e-7
    assert float(default) == pytest.approx(float(ewald), rel=1e-6)


def _rotation(seed=0):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def _rotate_multipoles(multipoles, rotation):
    q, d = multipoles[:, 0], multipoles[:, [3, 1, 2]]
    return cartesian_to_multipoles(q, d @ rotation.T)


@pytest.mark.parametrize("method", ["realspace", "pbc", "molecule_in_box"])
def test_energy_invariant_under_rotation_and_translation(method, dtype):
    positions, multipoles = cluster(7, seed=7, net_charge=1.0 if method != "pbc" else 0.0, dtype=dtype)
    cell = None if method == "realspace" else torch.eye(3, dtype=dtype) * (30.0 if method == "molecule_in_box" else 8.0)
    pbc = (True,) * 3 if method == "pbc" else (False,) * 3
    energy = coulomb_energy(positions, multipoles, 1.5, cell, pbc, method)
    rot = _rotation(1).to(dtype)
    rotated = coulomb_energy(positions @ rot.T, _rotate_multipoles(multipoles, rot), 1.5, None if cell is None else cell @ rot.T, pbc, method)
    shifted = coulomb_energy(positions + torch.tensor([0.3, -1.1, 2.0], dtype=dtype), multipoles, 1.5, cell, pbc, method)
    tol = 1e-10 if dtype == F64 else 2e-5
    assert float(rotated) == pytest.approx(float(energy), rel=tol)
    assert float(shifted) == pytest.approx(float(energy), rel=tol)


def test_float32_matches_float64():
    positions, multipoles = cluster(9, seed=8)
    cell = torch.eye(3, dtype=F64) * 9.0
    e64 = coulomb_energy(positions, multipoles, 1.5, cell, (True,) * 3, "pbc")
    e32 = coulomb_energy(positions.float(), multipoles.float(), 1.5, cell.float(), (True,) * 3, "pbc")
    assert e32.dtype == torch.float32
    assert float(e32) == pytest.approx(float(e64), rel=1e-5)


@pytest.mark.parametrize("method,pbc", [("pbc", (True, True, True)), ("slab", (True, True, False)), ("realspace", (False,) * 3)])
def test_forces_are_minus_energy_gradient_by_finite_differences(method, pbc):
    positions, multipoles = cluster(6, seed=9)
    cell = torch.diag(torch.tensor([8.0, 9.0, 25.0 if method == "slab" else 10.0], dtype=F64))
    positions = positions.clone().requires_grad_(True)
    energy = coulomb_energy(positions, multipoles, 1.2, cell, pbc, method)
    (grad,) = torch.autograd.grad(energy, positions)
    h = 1e-5
    for atom, axis in [(0, 0), (3, 2), (5, 1)]:
        plus, minus = positions.detach().clone(), positions.detach().clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = (coulomb_energy(plus, multipoles, 1.2, cell, pbc, method) - coulomb_energy(minus, multipoles, 1.2, cell, pbc, method)) / (2 * h)
        assert float(grad[atom, axis]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


def test_stress_by_finite_strain():
    positions, multipoles = cluster(6, seed=10)
    cell = torch.tensor([[8.0, 0.5, 0.0], [0.0, 9.0, 0.3], [0.2, 0.0, 10.0]], dtype=F64)
    strain = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    deform = torch.eye(3, dtype=F64) + 0.5 * (strain + strain.T)

    def energy_at(deformation):
        return coulomb_energy(positions @ deformation.T, multipoles, 1.3, cell @ deformation.T, (True,) * 3, "pbc")

    (dE_deps,) = torch.autograd.grad(energy_at(deform), strain)
    h = 1e-6
    for a, b in [(0, 0), (1, 2), (2, 2), (0, 1)]:
        e = torch.zeros(3, 3, dtype=F64)
        e[a, b] = e[b, a] = h
        fd = (energy_at(torch.eye(3, dtype=F64) + e) - energy_at(torch.eye(3, dtype=F64) - e)) / (2 * h)
        sym = dE_deps[a, b] + (dE_deps[b, a] if a != b else 0)
        assert float(sym) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


def test_esps_are_energy_derivative_for_point_receiver_limit():
    positions, multipoles = cluster(5, seed=11, dipoles=False)
    esp = electrostatic_potential_at_nuclei(positions, multipoles, 1.0, method="realspace")
    q = multipoles[:, 0]
    diff = positions[:, None] - positions[None]
    dist = diff.norm(dim=-1) + torch.eye(5, dtype=F64)
    kernel = torch.erf(dist / (math.sqrt(2) * 1.0)) / dist * (1 - torch.eye(5, dtype=F64))
    self_term = math.sqrt(2 / math.pi) / 1.0
    expected = COULOMB_CONSTANT * (kernel @ q + self_term * q)
    assert torch.allclose(esp, expected, rtol=1e-12)


def test_bad_boundary_handling_is_rejected_with_location():
    positions, multipoles = cluster(3, seed=12)
    with pytest.raises(ConfigError, match=r"electrostatic_pbc_method: method 'pbc' accepts pbc TTT; got FFF"):
        coulomb_energy(positions, multipoles, 1.5, torch.eye(3, dtype=F64) * 20, (False,) * 3, "pbc")
    with pytest.raises(ConfigError, match=r"cell: handling 'molecule' .* has no volume"):
        coulomb_energy(positions, multipoles, 1.5, None, (False,) * 3, "molecule_in_box")
    with pytest.raises(ConfigError, match=r"unknown method 'ewald'"):
        coulomb_energy(positions, multipoles, 1.5, None, None, "ewald")
    with pytest.raises(ValueError, match=r"sigma .* must be > 0"):
        coulomb_energy(positions, multipoles, 0.0)


def _water_like(n_side=3, seed=0):
    """n_side^3 water-like molecules (O -0.8, H +0.4, random dipoles) in a periodic cube."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n_side, dtype=F64)] * 3, indexing="ij"), -1).reshape(-1, 3)
    oxygen = (grid + 0.5) * 3.1
    h1 = oxygen + torch.tensor([0.76, 0.59, 0.0], dtype=F64)
    h2 = oxygen + torch.tensor([-0.76, 0.59, 0.0], dtype=F64)
    positions = torch.stack([oxygen, h1, h2], 1).reshape(-1, 3) + 0.1 * torch.randn(3 * len(grid), 3, generator=g, dtype=F64)
    q = torch.tensor([-0.8, 0.4, 0.4], dtype=F64).repeat(len(grid))
    d = 0.1 * torch.randn(3 * len(grid), 3, generator=g, dtype=F64)
    cell = torch.tensor([[3.1 * n_side, 0.0, 0.0], [0.4, 3.1 * n_side, 0.0], [0.0, 0.3, 3.1 * n_side]], dtype=F64)
    return positions, cartesian_to_multipoles(q, d), cell


@pytest.mark.parametrize("sigma", [1.5, 0.3])
def test_pme_matches_explicit_ewald(sigma):
    positions, multipoles, cell = _water_like()
    pbc = (True,) * 3
    ewald = coulomb_energy(positions, multipoles, sigma, cell, pbc, "pbc", options=TIGHT.__class__(kspace_solver="ewald", accuracy=1e-12))
    pme = coulomb_energy(positions, multipoles, sigma, cell, pbc, "pbc", options=CoulombOptions(kspace_solver="pme"))
    # sigma = 0.3 is too sharp for the mesh: it gets a real-space part (pme_realspace_cutoff)
    assert float(pme) == pytest.approx(float(ewald), rel=2e-5)
    fine = CoulombOptions(kspace_solver="pme", pme_order=8, pme_oversampling=1.5, accuracy=1e-10)
    assert float(coulomb_energy(positions, multipoles, sigma, cell, pbc, "pbc", options=fine)) == pytest.approx(float(ewald), rel=1e-6)


def test_pme_forces_and_stress_by_finite_differences():
    positions, multipoles, cell = _water_like(2, seed=1)
    options = CoulombOptions(kspace_solver="pme")
    strain = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    pos = positions.clone().requires_grad_(True)

    def energy_at(p, deformation):
        return coulomb_energy(p @ deformation.T, multipoles, 1.5, cell @ deformation.T, (True,) * 3, "pbc", options=options)

    energy = energy_at(pos, torch.eye(3, dtype=F64) + 0.5 * (strain + strain.T))
    grad_pos, grad_strain = torch.autograd.grad(energy, (pos, strain))
    h = 1e-5
    for atom, axis in [(0, 0), (7, 2)]:
        plus, minus = positions.clone(), positions.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = (energy_at(plus, torch.eye(3, dtype=F64)) - energy_at(minus, torch.eye(3, dtype=F64))) / (2 * h)
        assert float(grad_pos[atom, axis]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
    e = torch.zeros(3, 3, dtype=F64)
    e[0, 1] = e[1, 0] = 1e-6
    fd = (energy_at(positions, torch.eye(3, dtype=F64) + e) - energy_at(positions, torch.eye(3, dtype=F64) - e)) / 2e-6
    assert float(2 * grad_strain[0, 1]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("solver", ["ewald", "pme"])
def test_double_backward_force_gradient_wrt_multipoles(solver):
    """Training on forces needs d(force)/d(density): checkpointed chunks must support it."""
    positions, multipoles, cell = _water_like(2, seed=2)
    options = CoulombOptions(kspace_solver=solver)

    def force_component(mult):
        pos = positions.clone().requires_grad_(True)
        energy = coulomb_energy(pos, mult, 1.5, cell, (True,) * 3, "pbc", options=options)
        (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
        return -grad[3, 1]

    mult = multipoles.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(force_component(mult), mult)
    h = 1e-5
    for atom, comp in [(0, 0), (5, 2)]:
        plus, minus = multipoles.clone(), multipoles.clone()
        plus[atom, comp] += h
        minus[atom, comp] -= h
        fd = (force_component(plus) - force_component(minus)).detach() / (2 * h)
        assert float(analytic[atom, comp]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
