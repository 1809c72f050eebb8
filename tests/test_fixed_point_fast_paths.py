"""The fixed-point model's restructured blocks equal their defining formulas: the quadratic field
readout (K^3 coupling contracted once per call), the affine form dp = J f + b of the one-body
update (J once per SCF), the channel projection (one matrix product per e3nn instruction) and
several projections of the same features evaluated together, in values and in gradients."""

import pytest
import torch
from e3nn import o3

from mlpot.models.fixed_point.channels import IrrepsProjection, channel_irreps, density_to_channels, joint_projection
from mlpot.models.fixed_point.readouts import StrictQuadraticFieldEnergyReadout, pad_channels
from mlpot.models.fixed_point.updates import OneBodyVariableUpdate

F64 = torch.float64


def _random(*shape, seed):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _randomise(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, dtype=F64, generator=generator))


def _readout_by_definition(readout, hidden, density, density0, features):
    """c_k = sum_ij W0_ijk a_i0 b_j0 + W1_ijk a_i1.b_j1, e = sum_km W_km c_k h_m0 (readouts.py)."""
    a = readout.induced(pad_channels(density_to_channels(density - density0)))
    b = readout.field(0.01 * features)
    c = torch.einsum("ni,nj,ijk->nk", a[:, :, 0], b[:, :, 0], readout.coupling[0])
    c = c + torch.einsum("nid,njd,ijk->nk", a[:, :, 1:], b[:, :, 1:], readout.coupling[1])
    return torch.einsum("nk,nm,km->n", c, hidden[:, :, 0], readout.environment)


@pytest.mark.parametrize("n_coefficients", [4, 1], ids=["dipoles", "charges"])
def test_quadratic_readout_equals_its_definition(n_coefficients):
    readout = StrictQuadraticFieldEnergyReadout(5, 2, inner_channels=6)
    _randomise(readout, 1)
    hidden, features = _random(9, 5, 4, seed=2), _random(9, 2, 4, seed=3)
    density, density0 = _random(9, n_coefficients, seed=4), _random(9, n_coefficients, seed=5)
    hidden.requires_grad_(True)
    density.requires_grad_(True)
    energy = readout(hidden, density, density0, features, None)
    reference = _readout_by_definition(readout, hidden, density, density0, features)
    assert float(reference.detach().abs().max()) > 1e-3
    torch.testing.assert_close(energy, reference, rtol=1e-12, atol=1e-14)
    inputs = [hidden, density, *readout.parameters()]
    for g, r in zip(torch.autograd.grad(energy.sum(), inputs), torch.autograd.grad(reference.sum(), inputs)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("embedding", ["BiasedLinearPotentialEmbedding", "LinearPotentialEmbedding"])
@pytest.mark.parametrize("max_l", [1, 0])
def test_affine_form_of_the_update_equals_the_update(embedding, max_l):
    update = OneBodyVariableUpdate(2, 5, 3, max_l, potential_embedding_cls=embedding)
    _randomise(update, 6)
    with torch.no_grad():
        update.hidden_norms.copy_(torch.tensor([0.7, 1.3], dtype=F64))
    hidden, species = _random(11, 5, 4, seed=7).requires_grad_(True), torch.arange(11) % 3
    slopes, constant = update.affine_form(hidden, species)
    assert slopes.shape == (11, (max_l + 1) ** 2, 8) and constant.shape == (11, (max_l + 1) ** 2)
    for seed in (8, 9):  # two feature vectors: the map is affine, not only tangent at one point
        features = _random(11, 2, 4, seed=seed)
        change = torch.bmm(slopes, features.reshape(11, 8, 1)).squeeze(-1) + constant
        reference = update(features, hidden, species)
        torch.testing.assert_close(change, reference, rtol=1e-12, atol=1e-13)
        inputs = [hidden, *update.parameters()]
        got = torch.autograd.grad(change.pow(2).sum(), inputs, allow_unused=True, retain_graph=True)
        want = torch.autograd.grad(reference.pow(2).sum(), inputs, allow_unused=True)
        for g, r in zip(got, want):
            if r is None:
                assert g is None or float(g.abs().max()) == 0.0
            else:
                torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)


def test_affine_form_is_none_for_a_nonlinear_update():
    update = OneBodyVariableUpdate(2, 5, 3, 1, nonlinearity_cls="MLPNonLinearity")
    assert update.affine_form(_random(4, 5, 4, seed=1), torch.zeros(4, dtype=torch.long)) is None


@pytest.mark.parametrize("irreps,channels,max_l,bias", [
    ("1600x0e + 100x1o", 8, 1, True),  # se_e2_a's descriptor and G^T R (the DeePMD water example's sizes)
    ("8x0e + 8x1o + 4x2e + 8x0e + 3x1o", 5, 1, True),  # MACE-like: repeated irreps, an l = 2 block that drops out
    ("6x0e", 4, 1, True),  # no vectors in: zero l = 1 channels
    ("6x0e + 2x1o", 1, 0, False),  # the linear local density (charges only)
])
def test_projection_equals_e3nn_linear(irreps, channels, max_l, bias):
    torch.manual_seed(0)
    projection = IrrepsProjection(irreps, channels, max_l, bias=bias)
    assert projection.linear.irreps_out == channel_irreps(channels, max_l)
    _randomise(projection, 2)
    features = _random(7, o3.Irreps(irreps).dim, seed=3).requires_grad_(True)
    flat = projection.linear(features)  # e3nn's own evaluation
    reference = flat[:, :channels].unsqueeze(-1)
    if max_l:
        reference = torch.cat([reference, flat[:, channels:].reshape(-1, channels, 3)], dim=-1)
    out = projection(features)
    torch.testing.assert_close(out, reference, rtol=1e-13, atol=1e-13)
    weights = _random(*out.shape, seed=4)
    inputs = [features, *projection.parameters()]
    for g, r in zip(torch.autograd.grad((weights * out).sum(), inputs), torch.autograd.grad((weights * reference).sum(), inputs)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_joint_projection_equals_separate_projections():
    irreps = "12x0e + 3x1o + 2x2e"
    projections = [IrrepsProjection(irreps, 4, 1, bias=True), IrrepsProjection(irreps, 6, 1, bias=True),
                   IrrepsProjection(irreps, 1, 0, bias=False)]
    for k, projection in enumerate(projections):
        _randomise(projection, 10 + k)
    features = _random(5, o3.Irreps(irreps).dim, seed=13).requires_grad_(True)
    joint = joint_projection(features, projections)
    for out, projection in zip(joint, projections):
        torch.testing.assert_close(out, projection(features), rtol=1e-13, atol=1e-13)
    weights = [_random(*out.shape, seed=14 + k) for k, out in enumerate(joint)]
    (got,) = torch.autograd.grad(sum((w * out).sum() for w, out in zip(weights, joint)), features)
    (want,) = torch.autograd.grad(sum((w * p(features)).sum() for w, p in zip(weights, projections)), features)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="same input irreps"):
        joint_projection(features, [projections[0], IrrepsProjection("12x0e", 2, 1)])
