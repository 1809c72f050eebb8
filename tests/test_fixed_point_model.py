"""Fixed-point model: forces by finite differences in every mode and charge mode, stress by finite
strain, implicit gradients equal to a long unrolled SCF, symmetries, batches, errors."""

import pytest
import torch

from fixed_point_helpers import F64, cluster_batch, fixed_point_model, scf_options
from mlpot.data import keys as K
from mlpot.errors import SCFNotConvergedError
from mlpot.models.derivatives import compute_derivatives
from mlpot.testing import (assert_batch_consistent, assert_equivariant_vector, assert_invariant,
                           assert_virial_matches_finite_strain, finite_difference_forces)

MODES = ["direct", "unroll_scf", "implicit", "linearize_solve", "scf"]


@pytest.mark.parametrize("constant_charge", [False, True], ids=["constant_fermi", "constant_charge"])
@pytest.mark.parametrize("mode", MODES)
def test_forces_match_finite_differences(mode, constant_charge):
    model = fixed_point_model()
    batch = cluster_batch()
    if mode == "direct":
        batch[K.ATOMIC_MULTIPOLES] = 0.1 * torch.randn(11, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
        batch[K.weight_key(K.ATOMIC_MULTIPOLES)] = torch.ones(2, dtype=F64)
    model.set_options(scf_options(mode, constant_charge))
    out = compute_derivatives(model, batch, forces=True)
    if mode != "direct":
        assert bool(out[K.SCF_CONVERGED].all())
        if constant_charge:
            torch.testing.assert_close(out[K.TOTAL_CHARGE], batch[K.TOTAL_CHARGE], atol=1e-10, rtol=0)
    reference = finite_difference_forces(model, batch, delta=1e-5, atoms=[0, 7])  # one atom per frame
    torch.testing.assert_close(out[K.FORCES][[0, 7]], reference[[0, 7]], atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("constant_charge", [False, True], ids=["constant_fermi", "constant_charge"])
def test_periodic_stress_matches_finite_strain(constant_charge):
    model = fixed_point_model(electrostatic_pbc_method="pbc")
    batch = cluster_batch(sizes=(5,), periodic=True, charges=(0.0,), fermi=(0.1,), box=5.0)
    model.set_options(scf_options("scf", constant_charge))
    out = compute_derivatives(model, batch, forces=True, stress=True)
    assert float(out[K.STRESS].abs().max()) > 1e-6
    assert_virial_matches_finite_strain(model, batch, delta=1e-5, atol=1e-7, rtol=1e-5)


def _gradients(model, batch, mode, constant_charge, force_weight):
    model.set_options(scf_options(mode, constant_charge, steps=400, tolerance=1e-14))
    out = compute_derivatives(model, batch, forces=True, create_graph=True)
    objective = out[K.ENERGY].sum() + out[K.FERMI_LEVEL].sum() + out[K.DIPOLE].pow(2).sum() \
        + force_weight * out[K.FORCES].pow(2).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return torch.cat([torch.zeros(p.numel(), dtype=F64) if g is None else g.flatten() for g, p in zip(grads, params)])


@pytest.mark.parametrize("constant_charge,nonlinearity", [(False, "MLPNonLinearity"), (True, "NoNonLinearity")],
                         ids=["constant_fermi", "constant_charge"])
def test_implicit_gradients_equal_converged_unroll(constant_charge, nonlinearity):
    """Parameter gradients of an objective with a force term (second derivatives) in implicit and
    linearize_solve equal those of a long, converged unrolled SCF."""
    model = fixed_point_model(fixedpoint_update_config={"type": "OneBodyVariableUpdate", "nonlinearity_cls": nonlinearity},
                              field_readout_config={"type": "OneBodyMLPFieldReadout"})
    batch = cluster_batch()
    reference = _gradients(model, batch, "unroll_scf", constant_charge, 10.0)
    for mode in ("implicit", "linearize_solve"):
        torch.testing.assert_close(_gradients(model, batch, mode, constant_charge, 10.0), reference,
                                   atol=1e-8 * float(reference.abs().max()), rtol=1e-7)
    force_part = reference - _gradients(model, batch, "unroll_scf", constant_charge, 0.0)
    assert float(force_part.abs().max()) > 1e-6  # the force term contributes (second derivatives are tested)


def test_direct_mode_from_the_fixed_point_reproduces_it():
    model = fixed_point_model()
    batch = cluster_batch()
    model.set_options(scf_options("scf", True))
    scf = model(batch)
    batch[K.ATOMIC_MULTIPOLES] = scf[K.ATOMIC_MULTIPOLES].detach()
    batch[K.weight_key(K.ATOMIC_MULTIPOLES)] = torch.ones(2, dtype=F64)
    batch[K.FERMI_LEVEL] = scf[K.FERMI_LEVEL].detach()
    model.set_options({"mode": "direct"})
    direct = model(batch)
    torch.testing.assert_close(direct[K.ATOMIC_MULTIPOLES], scf[K.ATOMIC_MULTIPOLES], atol=1e-10, rtol=0)
    torch.testing.assert_close(direct[K.ENERGY], scf[K.ENERGY], atol=1e-9, rtol=0)


@pytest.mark.parametrize("constant_charge", [False, True], ids=["constant_fermi", "constant_charge"])
def test_symmetries_and_batches(constant_charge):
    model = fixed_point_model()
    batch = cluster_batch(field=False)
    model.set_options(scf_options("scf", constant_charge))
    assert_invariant(model, batch, keys=(K.ENERGY, K.CHARGES, K.FERMI_LEVEL), atol=1e-8)
    assert_equivariant_vector(model, batch, K.DIPOLE, atol=1e-8)
    assert_batch_consistent(model, batch, keys=(K.ENERGY, K.CHARGES), atol=1e-8)


def test_unconverged_inference_raises_unless_allowed():
    model = fixed_point_model()
    batch = cluster_batch()
    model.set_options(scf_options("scf", True, steps=3))
    with pytest.raises(SCFNotConvergedError, match=r"SCF did not converge in 3 steps for frame\(s\) \[0, 1\]"):
        model(batch)
    model.allow_unconverged = True
    out = model(batch)
    assert not bool(out[K.SCF_CONVERGED].any())
    model.allow_unconverged = False
    model.set_options(scf_options("implicit", True, steps=3))  # training: unrolled fallback, counted
    model.train()
    model(batch)
    assert "unroll fallbacks 1" in model.epoch_report()


def test_polarizability_is_minus_dipole_field_derivative():
    model = fixed_point_model()
    batch = cluster_batch()
    model.set_options(scf_options("scf", True))
    model.default_outputs = {K.POLARIZABILITY}
    model.eval()
    alpha = model(batch)[K.POLARIZABILITY].detach()
    h = 1e-5
    for b in range(3):
        plus, minus = dict(batch), dict(batch)
        plus[K.EXTERNAL_FIELD] = batch[K.EXTERNAL_FIELD].clone()
        minus[K.EXTERNAL_FIELD] = batch[K.EXTERNAL_FIELD].clone()
        plus[K.EXTERNAL_FIELD][:, b] += h
        minus[K.EXTERNAL_FIELD][:, b] -= h
        column = -(model(plus)[K.DIPOLE] - model(minus)[K.DIPOLE]).detach() / (2 * h)
        torch.testing.assert_close(alpha[:, :, b], column, atol=1e-7, rtol=1e-5)


def test_constant_charge_fukui_slope_computed_once_for_an_affine_update(monkeypatch):
    """An update affine in the features has one Fukui slope for every density: the SCF that computes
    it once gives the per-step SCF's density, Fermi level, forces and parameter gradients (truncated
    unrolled SCF, where every step's slope enters the result)."""
    from mlpot.models.fixed_point.updates import OneBodyVariableUpdate

    assert not fixed_point_model(fixedpoint_update_config={"nonlinearity_cls": "MLPNonLinearity"}).update.affine_in_features
    assert not fixed_point_model(fixedpoint_update_config={"potential_embedding_cls": "tanh"}).update.affine_in_features
    batch, runs = cluster_batch(), []
    for per_step in (False, True):
        if per_step:
            monkeypatch.setattr(OneBodyVariableUpdate, "affine_in_features", property(lambda self: False))
        model = fixed_point_model()
        model.set_options(scf_options("unroll_scf", True, steps=6, tolerance=1e-300, mixing=0.3))
        out = compute_derivatives(model, batch, forces=True, create_graph=True)
        objective = out[K.ENERGY].sum() + out[K.FERMI_LEVEL].sum() + 10.0 * out[K.FORCES].pow(2).sum()
        grads = torch.autograd.grad(objective, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        runs.append([t.detach() for t in [out[K.ATOMIC_MULTIPOLES], out[K.FERMI_LEVEL], out[K.FORCES]] + [g for g in grads if g is not None]])
    assert float((runs[0][1] - batch[K.FERMI_LEVEL]).abs().max()) > 1e-3  # the Newton steps moved mu
    for fixed, per_step in zip(*runs):
        torch.testing.assert_close(fixed, per_step, atol=1e-12 * float(per_step.abs().max()) + 1e-14, rtol=1e-10)
