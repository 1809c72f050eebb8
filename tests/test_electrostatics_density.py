"""Gaussian multipole densities: normalisations, receiver map, closed forms, storage order."""

import math

import numpy as np
import pytest
import torch
from e3nn import o3

from mlpot.electrostatics import (
    cartesian_to_multipoles,
    cutoff_rule_kmax,
    multipole_normalisation,
    multipoles_to_cartesian,
    receiver_normalisation,
    receiver_scale,
    self_interaction,
    split_multipoles,
)
from mlpot.electrostatics._kernels import erf_radial, erf_radial_at_zero
from mlpot.units import COULOMB_CONSTANT


def _grid(sigma, n=81, extent=7.0):
    axis = torch.linspace(-extent * sigma, extent * sigma, n, dtype=torch.float64)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([x, y, z], -1).reshape(-1, 3)
    return points, (axis[1] - axis[0]) ** 3


def _basis(points, l, sigma, constant):
    r = points.norm(dim=1)
    # real SH, integral normalisation, stored order (y, z, x); e3nn 0.6 itself orders l=1 as (x, y, z)
    sh = o3.spherical_harmonics(l, points, normalize=True, normalization="integral")
    if l == 1:
        sh = sh[:, [1, 2, 0]]
    return constant * (r**l * torch.exp(-r * r / (2 * sigma**2)))[:, None] * sh


@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_multipole_normalisation_gives_charge_and_cartesian_dipole(sigma):
    points, dv = _grid(sigma)
    phi0 = _basis(points, 0, sigma, multipole_normalisation(0, sigma))[:, 0]
    assert float((phi0 * dv).sum()) == pytest.approx(1.0, rel=1e-6)
    phi1 = _basis(points, 1, sigma, multipole_normalisation(1, sigma))  # (n, 3) in (y, z, x)
    moments = (points[:, [1, 2, 0], None] * phi1[:, None, :] * dv).sum(0)  # <x_a phi_m>
    assert torch.allclose(moments, torch.eye(3, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_receiver_projection_of_constant_and_uniform_gradient(sigma):
    points, dv = _grid(sigma)
    rec0 = _basis(points, 0, sigma, receiver_normalisation(0, sigma))[:, 0]
    rec1 = _basis(points, 1, sigma, receiver_normalisation(1, sigma))
    v_const = 0.37
    assert float((v_const * rec0 * dv).sum()) == pytest.approx(math.sqrt(4 * math.pi) * v_const, rel=1e-6)
    g = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    proj = ((points @ g)[:, None] * rec1 * dv).sum(0)  # (y, z, x)
    expected = math.pi * sigma * math.sqrt(1.5) * g[[1, 2, 0]]
    assert torch.allclose(proj, expected, rtol=1e-6)
    assert receiver_scale(0, sigma) == pytest.approx(math.sqrt(4 * math.pi))
    assert receiver_scale(1, sigma) == pytest.approx(math.pi * sigma * math.sqrt(1.5))


@pytest.mark.parametrize("sigma_s,sigma_r", [(1.5, 1.5), (1.5, 3.0), (0.8, 1.0)])
def test_self_interaction_closed_form_matches_kernel_limit(sigma_s, sigma_r):
    a = 1.0 / math.sqrt(2 * (sigma_s**2 + sigma_r**2))
    t0, t1 = erf_radial_at_zero(a)
    # own potential (l=0) and own gradient (l=1) per unit coefficient, receiver-normalised
    assert self_interaction(0, sigma_s, sigma_r) == pytest.approx(receiver_scale(0, sigma_r) * COULOMB_CONSTANT * t0, rel=1e-12)
    assert self_interaction(1, sigma_s, sigma_r) == pytest.approx(-receiver_scale(1, sigma_r) * COULOMB_CONSTANT * t1, rel=1e-12)


def test_gaussian_self_energy_number_of_the_spec():
    sigma = 1.5
    energy = 0.5 * self_interaction(0, sigma, sigma) / receiver_scale(0, sigma)
    assert energy == pytest.approx(COULOMB_CONSTANT / (2 * math.sqrt(math.pi) * sigma), rel=1e-12)
    assert energy == pytest.approx(2.708, abs=1e-3)


def test_kernel_is_smooth_through_the_series_switch():
    a = 0.4
    d = torch.tensor([2.4999999, 2.5000001], dtype=torch.float64)  # u = (a d)^2 crosses 1
    t0, t1, t2 = erf_radial(d, a)
    assert float(t0[0]) == pytest.approx(float(torch.erf(a * d[0]) / d[0]), rel=1e-14)
    for t in (t0, t1, t2):
        assert abs(float(t[1] - t[0])) < 1e-6 * abs(float(t[0]))


def test_cutoff_rule_of_the_spec():
    assert cutoff_rule_kmax(1.25, 1, 1.5) == pytest.approx(2.31, abs=0.01)


def test_storage_order_round_trip():
    q = torch.randn(5, dtype=torch.float64)
    d = torch.randn(5, 3, dtype=torch.float64)
    stored = cartesian_to_multipoles(q, d)
    assert torch.equal(stored[:, 1], d[:, 1]) and torch.equal(stored[:, 2], d[:, 2]) and torch.equal(stored[:, 3], d[:, 0])
    assert torch.equal(multipoles_to_cartesian(stored), torch.cat([q[:, None], d], 1))
    q2, d2 = split_multipoles(torch.cat([stored, torch.randn(5, 5, dtype=torch.float64)], 1))
    assert torch.equal(q2, q) and torch.equal(d2, d)
    with pytest.raises(ValueError, match=r"multipoles must have shape"):
        split_multipoles(torch.zeros(5, 3))
