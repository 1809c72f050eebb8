"""Plane-wave Hamiltonian: exact reproduction of shipped references, basis sizes, symmetry."""

import numpy as np
import pytest
import torch

from mlpot.bands.basis import plane_wave_basis
from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.inputs import (SystemInput, read_bands_table, read_input_par, read_kpoints, read_param_vector,
                                read_system, read_system_bundle, species_order)
from mlpot.bands.zunger import analytic_form_factor


def _cdse(shared_data, mode, **kw):
    folder = shared_data("bands/cdse_zb")
    system = read_system_bundle(folder, 0)
    species = species_order([system])
    params = np.stack([read_param_vector(folder / f"init_{s}Params.par") for s in species])
    return system, PlaneWaveSystem(system, species, params, basis_mode=mode, compat_units=True, **kw), params


def test_cdse_zunger_reproduces_reference_compat_basis(shared_data):
    system, pw, params = _cdse(shared_data, "compat")
    assert pw.n_g == 453 and len(pw.q_unique) == 83
    assert pw.volume == pytest.approx(375.136, abs=1e-3)
    local = pw.local_potential(analytic_form_factor(pw.q_unique, torch.tensor(params)))
    bands = pw.band_energies(local).numpy()
    assert np.abs(bands - system.ref_bands).max() < 1e-6
    # spec table: Γ (row 20) spatial bands
    np.testing.assert_allclose(bands[20, ::2], [-20.17989, -6.30953, -6.30953, -6.30243, -4.41489, 1.32334, 1.32334,
                                                1.32351], atol=1e-5)


def test_cdse_full_sphere_basis_restores_cubic_symmetry(shared_data):
    system, pw, params = _cdse(shared_data, "sphere")
    assert pw.n_g == 537
    local = pw.local_potential(analytic_form_factor(pw.q_unique, torch.tensor(params)))
    gamma = pw.band_energies(local, [20])[0].numpy()[::2]
    np.testing.assert_allclose(gamma[[0, 1, 4, 5]], [-20.18939, -6.31265, -4.42047, 1.32307], atol=1e-5)
    assert np.ptp(gamma[1:4]) < 1e-9 and np.ptp(gamma[5:8]) < 1e-9  # exact Γ15 triplets
    assert np.abs(pw.band_energies(local).numpy() - system.ref_bands).max() == pytest.approx(0.0173, abs=1e-3)


def test_basis_sizes_of_spec():
    fcc = 0.5 * (np.ones((3, 3)) - np.eye(3))
    assert len(plane_wave_basis(11.4485278 * fcc, 10.0, "compat")[0]) == 453
    assert len(plane_wave_basis(10.683 * fcc, 6.0, "compat")[0]) == 175
    assert len(plane_wave_basis(11.884 * np.eye(3), 6.0, "compat")[0]) == 1189
    assert len(plane_wave_basis(11.884 * np.eye(3), 6.0, "sphere")[0]) == 1189


def test_batched_equals_single_k_and_hermitian(shared_data):
    system, pw, params = _cdse(shared_data, "compat")
    local = pw.local_potential(analytic_form_factor(pw.q_unique, torch.tensor(params)))
    h = pw.hamiltonians(local, [0, 7])
    assert torch.allclose(h, h.mH)
    both = pw.band_energies(local, [3, 11])
    assert torch.allclose(both[1], pw.band_energies(local, [11])[0], atol=1e-10)


def test_float32_close_to_float64(shared_data):
    system, pw, params = _cdse(shared_data, "compat", dtype=torch.float32)
    local = pw.local_potential(analytic_form_factor(pw.q_unique, torch.tensor(params, dtype=torch.float32)))
    bands = pw.band_energies(local, [0, 20, 40]).numpy()
    assert np.abs(bands - system.ref_bands[[0, 20, 40]]).max() < 2e-3


def _cspbi3(shared_data):
    folder = shared_data("bands/cspbi3_soc")
    cell, symbols, positions = read_system(folder / "system_0.par")
    kfrac, kweights = read_kpoints(folder / "kpoints_0.par")
    kdist, ref = read_bands_table(folder / "bandStruct_0.dat", 32)
    system = SystemInput(0, cell, symbols, positions, read_input_par(folder / "input_0.par"), kfrac, kweights, ref,
                         kdist, np.ones(32))
    species = species_order([system])
    params = np.stack([read_param_vector(folder / f"{s}Params.par") for s in species])
    return system, species, params


@pytest.mark.slow
def test_cspbi3_spin_orbit_nonlocal_matches_c_code(shared_data):
    system, species, params = _cspbi3(shared_data)
    pw = PlaneWaveSystem(system, species, params, spin_orbit=True, non_local=True, compat_units=True)
    assert pw.n_g == 2517
    local = pw.local_potential(analytic_form_factor(pw.q_unique, torch.tensor(params)))
    for k in (0, 4):  # R and (0.35, 0.35, 0.35)
        bands = pw.band_energies(local, [k])[0].numpy()
        assert np.abs(bands - system.ref_bands[k]).max() < 1e-4


def test_spin_orbit_small_cell_kramers_and_hermitian(shared_data):
    """Cheap SO check at 2 Ha: Hermitian spinor H, Kramers pairs at the time-reversal-invariant R point,
    and SO splitting that vanishes when a5 = 0."""
    system, species, params = _cspbi3(shared_data)
    system.settings["maxKE"] = 2.0
    pw = PlaneWaveSystem(system, species, params, spin_orbit=True, non_local=True)
    local = pw.local_potential(analytic_form_factor(pw.q_unique, torch.tensor(params)))
    h = pw.hamiltonians(local, [0, 4])
    assert torch.allclose(h, h.mH, atol=1e-12)
    bands = pw.band_energies(local, [0])[0].numpy()
    np.testing.assert_allclose(bands[::2], bands[1::2], atol=1e-9)
    no_so = params.copy()
    no_so[:, 5] = 0
    pw.set_params(no_so)
    spatial = torch.linalg.eigvalsh(pw.hamiltonians(local, [4]))[0].numpy()
    # without SO the spinor H is two identical blocks: every level exactly twice
    np.testing.assert_allclose(spatial[::2], spatial[1::2], atol=1e-9)


@pytest.mark.parametrize("n", [40, 120])
def test_subset_eigensolver_matches_torch_values_and_gradients(n):
    """Only the lowest eigenpairs are computed (LAPACK subset driver above SMALL); values and the
    gradient of any eigenvalue-only loss equal torch's full eigh."""
    from mlpot.bands.eigen import lowest_eigenvalues

    torch.manual_seed(0)
    a = torch.randn(5, n, n, dtype=torch.complex128)
    h0 = a + a.mH
    weights = torch.randn(5, 6, dtype=torch.float64)
    h = h0.clone().requires_grad_(True)
    (lowest_eigenvalues(h, 6) * weights).sum().backward()
    reference = h0.clone().requires_grad_(True)
    (torch.linalg.eigvalsh(reference)[:, :6] * weights).sum().backward()
    assert torch.allclose(lowest_eigenvalues(h0, 6), torch.linalg.eigvalsh(h0)[:, :6], atol=1e-10)
    assert torch.allclose(h.grad, reference.grad, atol=1e-10)


def test_band_energies_need_only_the_lowest_levels(shared_data):
    system, pw, params = _cdse(shared_data, "compat")
    assert pw.n_low == 8  # 16 spin-doubled bands = 8 spatial levels of 453
    local = pw.local_potential(analytic_form_factor(pw.q_unique, torch.tensor(params)))
    full = torch.linalg.eigvalsh(pw.hamiltonians(local, [0, 40]))[:, :8].repeat_interleave(2, dim=1)
    assert torch.allclose(pw.band_energies(local, [0, 40]) / pw.ev, full, atol=1e-11)
