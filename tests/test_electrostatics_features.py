"""Field features: linear map, energy derivatives, self-interaction, equivariance, batches, norms."""

import math

import pytest
import torch

from mlpot.data.keys import CELL, EXTERNAL_FIELD, FERMI_LEVEL, PBC, POSITIONS, PTR
from mlpot.electrostatics import (
    CoulombOptions,
    FrameWiseElectrostatics,
    average_field_feature_norms,
    cartesian_to_multipoles,
    coulomb_energy,
    coulomb_fields,
    expand_feature_norms,
    external_field_features,
    fermi_level_features,
    potential_to_features,
    receiver_scale,
    self_interaction,
)
from mlpot.errors import ConfigError

F64 = torch.float64
SQRT_4PI = math.sqrt(4 * math.pi)


def cluster(n=6, seed=0, net_charge=0.0, spread=5.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    points = []
    while len(points) < n:
        trial = (torch.rand(3, generator=g, dtype=F64) - 0.5) * spread
        if all(float((trial - p).norm()) > 1.0 for p in points):
            points.append(trial)
    q = torch.randn(n, generator=g, dtype=F64)
    q = q - q.mean() + net_charge / n
    d = 0.3 * torch.randn(n, 3, generator=g, dtype=F64)
    return torch.stack(points).to(dtype), cartesian_to_multipoles(q, d).to(dtype)


def test_constant_potential_and_uniform_gradient_map():
    widths = [1.0, 2.0, 3.5]
    features = fermi_level_features(torch.tensor(-4.2, dtype=F64), 5, widths, 1, offset=-5.0)
    assert torch.allclose(features[:, :3], torch.full((5, 3), SQRT_4PI * 0.8, dtype=F64))
    assert torch.equal(features[:, 3:], torch.zeros(5, 9, dtype=F64))
    field = torch.tensor([0.01, -0.02, 0.03], dtype=F64)
    positions = torch.randn(5, 3, dtype=F64)
    features = external_field_features(positions, field, widths, 1)
    assert torch.allclose(features[:, :3], SQRT_4PI * (positions @ field)[:, None].expand(5, 3))
    for n, w in enumerate(widths):
        expected = math.pi * w * math.sqrt(1.5) * field[[1, 2, 0]]
        assert torch.allclose(features[:, 3 + 3 * n: 6 + 3 * n], expected.expand(5, 3))


@pytest.mark.parametrize("method,pbc", [
    ("realspace", (False,) * 3), ("pbc", (True,) * 3), ("slab", (True, True, False)), ("molecule_in_box", (False,) * 3),
])
def test_features_are_energy_derivatives_wrt_density_coefficients(method, pbc):
    positions, multipoles = cluster(6, seed=1, net_charge=0.0 if method in ("pbc", "slab") else 1.0)
    cell = torch.diag(torch.tensor([9.0, 9.5, 20.0 if method == "slab" else 10.0], dtype=F64))
    if method == "molecule_in_box":
        cell = torch.eye(3, dtype=F64) * 25.0
    sigma = 1.5
    multipoles = multipoles.clone().requires_grad_(True)
    energy = coulomb_energy(positions, multipoles, sigma, cell, pbc, method)
    (grad,) = torch.autograd.grad(energy, multipoles)
    electro = FrameWiseElectrostatics(sigma=sigma, method=method, field_feature_widths=[sigma], include_field_si=True)
    batch = {POSITIONS: positions, CELL: cell[None], PBC: torch.tensor([pbc]), PTR: torch.tensor([0, 6])}
    features = electro.compute(batch, multipoles.detach(), energy=False)["features"]
    assert torch.allclose(features[:, 0] / receiver_scale(0, sigma), grad[:, 0], rtol=1e-9, atol=1e-10)
    assert torch.allclose(features[:, 1:4] / receiver_scale(1, sigma), grad[:, 1:4], rtol=1e-9, atol=1e-10)
    # and by finite differences of the energy in one coefficient
    h = 1e-5
    for atom, comp in [(0, 0), (2, 3), (4, 1)]:
        plus, minus = multipoles.detach().clone(), multipoles.detach().clone()
        plus[atom, comp] += h
        minus[atom, comp] -= h
        fd = (coulomb_energy(positions, plus, sigma, cell, pbc, method) - coulomb_energy(positions, minus, sigma, cell, pbc, method)) / (2 * h)
        scale = receiver_scale(0 if comp == 0 else 1, sigma)
        assert float(features[atom, comp] / scale) == pytest.approx(float(fd), rel=1e-7, abs=1e-9)


def test_field_self_interaction_is_the_spec_closed_form():
    positions, multipoles = cluster(5, seed=2)
    widths = [1.5, 3.0]
    with_si = FrameWiseElectrostatics(sigma=1.5, method="realspace", field_feature_widths=widths, include_field_si=True)
    without = FrameWiseElectrostatics(sigma=1.5, method="realspace", field_feature_widths=widths, include_field_si=False)
    batch = {POSITIONS: positions, CELL: torch.zeros(1, 3, 3, dtype=F64), PBC: torch.zeros(1, 3, dtype=torch.bool), PTR: torch.tensor([0, 5])}
    diff = with_si.compute(batch, multipoles, energy=False)["features"] - without.compute(batch, multipoles, energy=False)["features"]
    for n, w in enumerate(widths):
        assert torch.allclose(diff[:, n], self_interaction(0, 1.5, w) * multipoles[:, 0], rtol=1e-12)
        assert torch.allclose(diff[:, 2 + 3 * n: 5 + 3 * n], self_interaction(1, 1.5, w) * multipoles[:, 1:4], rtol=1e-12)


def test_l1_features_rotate_like_dipoles_in_stored_order(dtype):
    positions, multipoles = cluster(6, seed=3, dtype=dtype)
    widths = [1.0, 2.0]
    electro = FrameWiseElectrostatics(sigma=1.5, method="realspace", field_feature_widths=widths)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=F64))
    rot = (q * torch.sign(torch.diagonal(r))).to(dtype)
    perm = [1, 2, 0]  # Cartesian -> stored (y, z, x)
    rot_stored = rot[perm][:, perm]
    batch = {POSITIONS: positions, CELL: torch.zeros(1, 3, 3, dtype=dtype), PBC: torch.zeros(1, 3, dtype=torch.bool), PTR: torch.tensor([0, 6])}
    rotated = dict(batch)
    rotated[POSITIONS] = positions @ rot.T + torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    rot_multipoles = torch.cat([multipoles[:, :1], multipoles[:, 1:4] @ rot_stored.T], 1)
    f = electro.compute(batch, multipoles, energy=False)["features"]
    f_rot = electro.compute(rotated, rot_multipoles, energy=False)["features"]
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    assert torch.allclose(f_rot[:, :2], f[:, :2], **tol)
    for n in range(2):
        block = slice(2 + 3 * n, 5 + 3 * n)
        assert torch.allclose(f_rot[:, block], f[:, block] @ rot_stored.T, **tol)


def _mixed_batch(dtype=F64):
    frames = []
    p1, m1 = cluster(5, seed=5, dtype=dtype)
    frames.append((p1 + 4.0, m1, torch.eye(3, dtype=dtype) * 8.0, (True, True, True)))
    p2, m2 = cluster(4, seed=6, dtype=dtype)
    frames.append((p2 + 3.0, m2, torch.diag(torch.tensor([7.0, 7.0, 25.0], dtype=dtype)), (True, True, False)))
    p3, m3 = cluster(6, seed=7, net_charge=-1.0, dtype=dtype)
    frames.append((p3 + 12.0, m3, torch.eye(3, dtype=dtype) * 24.0, (False, False, False)))
    batch = {
        POSITIONS: torch.cat([f[0] for f in frames]),
        CELL: torch.stack([f[2] for f in frames]),
        PBC: torch.tensor([f[3] for f in frames]),
        PTR: torch.tensor([0, 5, 9, 15]),
        EXTERNAL_FIELD: torch.tensor([[0.0, 0.0, 0.01], [0.02, 0.0, 0.0], [0.0, -0.03, 0.0]], dtype=dtype),
        FERMI_LEVEL: torch.tensor([-5.0, -4.0, 0.0], dtype=dtype),
    }
    return batch, torch.cat([f[1] for f in frames]), frames


def test_mixed_batch_equals_each_frame_alone():
    batch, multipoles, frames = _mixed_batch()
    electro = FrameWiseElectrostatics(sigma=1.5, method="auto", field_feature_widths=[1.5, 3.0], fermi_level_offset=-5.0)
    out = electro.compute(batch, multipoles, esps=True)
    ptr = batch[PTR]
    for k, (pos, mult, cell, pbc) in enumerate(frames):
        single = {
            POSITIONS: pos, CELL: cell[None], PBC: torch.tensor([pbc]), PTR: torch.tensor([0, pos.shape[0]]),
            EXTERNAL_FIELD: batch[EXTERNAL_FIELD][k:k + 1], FERMI_LEVEL: batch[FERMI_LEVEL][k:k + 1],
        }
        alone = FrameWiseElectrostatics(sigma=1.5, method="mixed_periodic", field_feature_widths=[1.5, 3.0], fermi_level_offset=-5.0)
        ref = alone.compute(single, mult, esps=True)
        lo, hi = int(ptr[k]), int(ptr[k + 1])
        assert torch.allclose(out["energy"][k], ref["energy"][0], rtol=1e-12)
        assert torch.allclose(out["features"][lo:hi], ref["features"], rtol=1e-12, atol=1e-12)
        assert torch.allclose(out["esps"][lo:hi], ref["esps"], rtol=1e-12, atol=1e-12)
        method = {(True, True, True): "pbc", (True, True, False): "slab", (False, False, False): "molecule_in_box"}[pbc]
        # a different set of receiver widths moves the Ewald split: equal to the solver accuracy (1e-7)
        assert float(ref["energy"][0]) == pytest.approx(float(coulomb_energy(pos, mult, 1.5, cell, pbc, method)), rel=1e-6)
    assert out["features"].shape == (15, electro.n_features) == (15, 8)


def test_batch_forces_by_autograd_match_finite_differences():
    batch, multipoles, _ = _mixed_batch()
    electro = FrameWiseElectrostatics(sigma=1.5, method="mixed_periodic")
    positions = batch[POSITIONS].clone().requires_grad_(True)
    energy = electro.compute({**batch, POSITIONS: positions}, multipoles, features=False)["energy"].sum()
    (grad,) = torch.autograd.grad(energy, positions)
    h = 1e-5
    for atom, axis in [(1, 0), (6, 2), (12, 1)]:
        plus, minus = batch[POSITIONS].clone(), batch[POSITIONS].clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        e = lambda p: electro.compute({**batch, POSITIONS: p}, multipoles, features=False)["energy"].sum()
        assert float(grad[atom, axis]) == pytest.approx(float((e(plus) - e(minus)) / (2 * h)), rel=1e-6, abs=1e-8)


def test_average_norms_and_explicit_norms():
    batch, multipoles, _ = _mixed_batch()
    electro = FrameWiseElectrostatics(sigma=1.5, method="mixed_periodic", field_feature_widths=[1.5, 3.0])
    raw = electro.compute(batch, multipoles, energy=False)["features"]
    norms = average_field_feature_norms([raw[:7], raw[7:]], 2, 1)
    assert norms[0] == pytest.approx(float(raw[:, 0].pow(2).mean().sqrt()), rel=1e-12)
    assert norms[3] == pytest.approx(float(raw[:, 5:8].pow(2).mean().sqrt()), rel=1e-12)
    normed = FrameWiseElectrostatics(sigma=1.5, method="mixed_periodic", field_feature_widths=[1.5, 3.0], field_feature_norms=norms)
    out = normed.compute(batch, multipoles, energy=False)["features"]
    assert torch.allclose(out * torch.tensor(expand_feature_norms(norms, 2, 1), dtype=F64), raw, rtol=1e-12)
    with pytest.raises(ConfigError, match=r"field_feature_norms: field_feature_norms needs n_widths \* \(field_feature_max_l \+ 1\) = 4"):
        FrameWiseElectrostatics(field_feature_widths=[1.5, 3.0], field_feature_norms=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"field_feature_max_l must be 0 or 1"):
        FrameWiseElectrostatics(field_feature_max_l=2)
    with pytest.raises(ConfigError, match=r"frame 1: electrostatic_pbc_method: method 'pbc' accepts pbc TTT; got TTF"):
        FrameWiseElectrostatics(method="pbc").compute(batch, multipoles)


def test_max_l_zero_features_and_potential_layout():
    v = torch.randn(2, 4, dtype=F64)
    g = torch.randn(2, 4, 3, dtype=F64)
    f0 = potential_to_features(v, g, [1.0, 2.0], 0)
    assert f0.shape == (4, 2) and torch.allclose(f0, SQRT_4PI * v.T)
    f1 = potential_to_features(v, g, [1.0, 2.0], 1)
    assert torch.allclose(f1[:, 5:8], math.pi * 2.0 * math.sqrt(1.5) * g[1][:, [1, 2, 0]])
