"""Shared equivariant blocks (mlpot.models.equivariant.blocks) pinned against the e3nn 0.6 modules
they reproduce, with first and second derivatives (forces and force training need both)."""

import math

import pytest
import torch
from e3nn import o3
from e3nn.nn import Gate as E3nnGate

from mlpot.models.equivariant.blocks import (EdgeSphericalHarmonics, EdgeTensorProductScatter, Gate, IrrepsLinear,
                                             PerTypeScaleShift, RadialMLP, TypeSelfConnection, unique_pair_index)
from mlpot.models.equivariant.tensor_products import _DotComponents, _ScaleComponents

F64 = torch.float64


@pytest.fixture(autouse=True)
def _e3nn_in_float64():
    """e3nn modules compute their constants (Wigner 3j) in the default dtype: make it float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(previous)


def scatter_reference(messages, centre, n):
    return torch.zeros(n, messages.shape[1], dtype=messages.dtype).index_add(0, centre, messages)


@pytest.mark.parametrize("irreps_in, irreps_out", [
    ("8x0e+8x0o+8x1e+4x1o+3x1o", "16x0e+8x1o+5x1e+2x2e"),
    ("5x0e+3x2e", "5x0e+3x2e"),
])
def test_irreps_linear_is_e3nn_linear(irreps_in, irreps_out):
    ours = IrrepsLinear(irreps_in, irreps_out, dtype=F64)
    reference = o3.Linear(irreps_in, irreps_out).to(F64)
    assert ours.weight_numel == reference.weight_numel
    reference.weight.data.copy_(ours.weight.data)
    x = torch.randn(6, ours.irreps_in.dim, dtype=F64)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-13, rtol=0)


@pytest.mark.parametrize("constant_l0", [True, False])
@pytest.mark.parametrize("irreps_in, l_max", [("8x0e+8x0o+8x1e+8x1o", 2), ("16x0e+8x1o+4x2e", 2), ("4x0e", 1), ("3x0e+3x1o", 1)])
def test_edge_tensor_product_is_e3nn_uvu_tensor_product_plus_scatter(irreps_in, l_max, constant_l0):
    irreps_sh = o3.Irreps.spherical_harmonics(l_max)
    target = o3.Irreps("16x0e+8x0o+8x1o+8x1e+8x2e+8x2o")
    ours = EdgeTensorProductScatter(irreps_in, irreps_sh, target, constant_l0=constant_l0)
    instructions = [(i, j, k, "uvu", True) for i, j, k in ours.instructions]
    reference = o3.TensorProduct(irreps_in, irreps_sh, ours.irreps_mid, instructions, shared_weights=False,
                                 internal_weights=False).to(F64)
    assert ours.weight_numel == reference.weight_numel
    n, n_edges = 7, 40
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, ours.irreps_in.dim, dtype=F64, generator=generator)
    vectors = torch.randn(n_edges, 3, dtype=F64, generator=generator)
    sh = o3.spherical_harmonics(irreps_sh, vectors, True, normalization="component")
    w = torch.randn(n_edges, ours.weight_numel, dtype=F64, generator=generator)
    centre, neighbour = torch.randint(0, n, (n_edges,), generator=generator), torch.randint(0, n, (n_edges,), generator=generator)
    expected = scatter_reference(reference(x[neighbour], sh, w), centre, n)
    torch.testing.assert_close(ours(x, sh, ours.e3nn_weights(w), centre, neighbour), expected, atol=1e-12, rtol=0)
    # unordered pairs standing for both directions: the reverse edges spelled out for e3nn
    reverse_sh = o3.spherical_harmonics(irreps_sh, -vectors, True, normalization="component")
    both = scatter_reference(reference(x[centre], reverse_sh, w), neighbour, n) + expected
    torch.testing.assert_close(ours(x, sh, ours.e3nn_weights(w), centre, neighbour, both_directions=True), both, atol=1e-12, rtol=0)


def test_edge_tensor_product_gradients_of_second_order():
    ours = EdgeTensorProductScatter("2x0e+1x1o+2x2e", o3.Irreps.spherical_harmonics(2), "2x0e+1x1o+1x1e+2x2e", constant_l0=True)
    n, n_edges = 3, 5
    x = torch.randn(n, ours.irreps_in.dim, dtype=F64, requires_grad=True)
    sh = torch.randn(n_edges, 9, dtype=F64, requires_grad=True)
    w = torch.randn(n_edges, ours.weight_numel, dtype=F64, requires_grad=True)
    centre, neighbour = torch.randint(0, n, (n_edges,)), torch.randint(0, n, (n_edges,))

    def f(x, sh, w):
        return ours(x, sh, w, centre, neighbour, both_directions=True)

    assert torch.autograd.gradcheck(f, (x, sh, w), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, sh, w), fast_mode=True)
    a, b = torch.randn(5, 3, 4, dtype=F64, requires_grad=True), torch.randn(5, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(_ScaleComponents.apply, (a, b))
    c = torch.randn(5, 3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(_DotComponents.apply, (a, c))


@pytest.mark.parametrize("n_types", [1, 3])
def test_type_self_connection_is_e3nn_fully_connected_product(n_types):
    irreps_in, irreps_out = "8x0e+8x0o+8x1e+8x1o", "16x0e+8x0o+8x1o+8x1e+8x2e"
    ours = TypeSelfConnection(irreps_in, 5, irreps_out, dtype=F64)
    reference = o3.FullyConnectedTensorProduct(irreps_in, "5x0e", irreps_out).to(F64)
    assert ours.weight_numel == reference.weight_numel
    reference.weight.data.copy_(ours.weight.data)
    table = torch.randn(n_types, 5, dtype=F64)
    types = torch.randint(0, n_types, (11,))
    x = torch.randn(11, ours.irreps_in.dim, dtype=F64)
    torch.testing.assert_close(ours(x, types, table), reference(x, table[types]), atol=1e-13, rtol=0)


@pytest.mark.parametrize("scalars, act_scalars, gates, act_gates, gated", [
    ("8x0e+8x0o", ["silu", "tanh"], "8x0e+8x0e", ["silu", "silu"], "8x1o+8x1e"),
    ("8x0e", ["silu"], "8x0o", ["tanh"], "8x1e"),
    ("4x0e+4x0o", ["silu", "abs"], "", [], ""),
    ("6x0e", ["ssp"], "3x0e", ["silu"], "3x2e"),
])
def test_gate_is_e3nn_gate(scalars, act_scalars, gates, act_gates, gated):
    functions = {"silu": torch.nn.functional.silu, "tanh": torch.tanh, "abs": torch.abs,
                 "ssp": lambda x: torch.nn.functional.softplus(x) - math.log(2.0)}
    ours = Gate(scalars, act_scalars, gates, act_gates, gated)
    reference = E3nnGate(scalars, [functions[a] for a in act_scalars], gates, [functions[a] for a in act_gates], gated)
    assert ours.irreps_in == reference.irreps_in and ours.irreps_out == reference.irreps_out
    x = torch.randn(5, ours.irreps_in.dim, dtype=F64)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-14, rtol=0)


def test_spherical_harmonics_are_e3nn_component_normalised():
    vectors = torch.randn(10, 3, dtype=F64)
    sh = EdgeSphericalHarmonics(2)(vectors)
    torch.testing.assert_close(sh, o3.spherical_harmonics(o3.Irreps.spherical_harmonics(2), vectors, True, normalization="component"))
    torch.testing.assert_close(sh[:, 1:4].square().sum(1), torch.full((10,), 3.0, dtype=F64))  # |Y_1|^2 = 2l+1


def test_radial_mlp_init_rule_and_nonlinearity_quirk():
    mlp = RadialMLP([8, 16, 16, 5], "silu", dtype=F64)
    assert [layer.alpha for layer in mlp.layers] == pytest.approx([1 / math.sqrt(8), math.sqrt(2) / 4, math.sqrt(2) / 4])
    assert all(layer.weight.abs().max() <= math.sqrt(3) for layer in mlp.layers)
    x = torch.randn(3, 8, dtype=F64)
    expected = x
    for k, layer in enumerate(mlp.layers):
        expected = expected @ (layer.weight * layer.alpha)
        expected = torch.nn.functional.silu(expected) if k < 2 else expected
    torch.testing.assert_close(mlp(x), expected)
    permutation = torch.tensor([4, 0, 3, 1, 2])
    torch.testing.assert_close(mlp(x, permutation), expected[:, permutation])
    assert [layer.alpha for layer in RadialMLP([8, 4, 1], None).layers] == pytest.approx([8 ** -0.5, 0.5])  # linear: gain 1
    assert [layer.alpha for layer in RadialMLP([8, 4, 1], "null").layers] == pytest.approx([8 ** -0.5, 2 ** 0.5 / 2])


def test_per_type_scale_shift():
    module = PerTypeScaleShift(["A", "B"], scales={"A": 2.0, "B": 0.5}, shifts=-1.0, shifts_trainable=True)
    assert isinstance(module.shifts, torch.nn.Parameter) and module.shifts.shape == (2,)
    x, types = torch.tensor([1.0, 1.0, 3.0], dtype=torch.float32), torch.tensor([0, 1, 1])
    out = module(x, types)
    assert out.dtype == F64
    torch.testing.assert_close(out, torch.tensor([1.0, -0.5, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="lists are not accepted"):
        PerTypeScaleShift(["A", "B"], shifts=[1.0, 2.0])


def test_unique_pairs_group_each_edge_with_its_reverse():
    edge_index = torch.tensor([[0, 1, 0, 2, 2, 2, 1], [1, 0, 2, 0, 2, 2, 2]])
    shifts = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=F64)
    representative, inverse = unique_pair_index(edge_index, shifts, 3)
    assert len(representative) == 4
    assert inverse[0] == inverse[1] and inverse[2] == inverse[3] and inverse[4] == inverse[5]
    assert len({int(inverse[0]), int(inverse[2]), int(inverse[4]), int(inverse[6])}) == 4
    torch.testing.assert_close(inverse[representative], torch.arange(4))
    assert unique_pair_index(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=F64), 3) is None
