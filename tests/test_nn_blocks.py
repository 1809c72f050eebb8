"""mlpot.nn: DeePMD layer rule, activations, switching function, scatter sums, registry."""

import pytest
import torch

from mlpot.errors import ConfigError
from mlpot.nn import ACTIVATIONS, EmbeddingNet, FittingNet, MLPLayer, Registry, gather_rows, get_activation, scatter_sum, segment_sum, smooth_switch


def test_resnet_rule_identity_doubled_and_none(dtype):
    x = torch.randn(5, 4, dtype=dtype)
    same = MLPLayer(4, 4, "tanh", resnet=True, dtype=dtype)
    torch.testing.assert_close(same(x), torch.tanh(x @ same.weight + same.bias) + x)
    doubled = MLPLayer(4, 8, "tanh", resnet=True, dtype=dtype)
    torch.testing.assert_close(doubled(x), torch.tanh(x @ doubled.weight + doubled.bias) + torch.cat([x, x], -1))
    other = MLPLayer(4, 6, "tanh", resnet=True, resnet_dt=True, dtype=dtype)
    assert other.idt is None  # the time step only exists on layers with a skip
    torch.testing.assert_close(other(x), torch.tanh(x @ other.weight + other.bias))


def test_split_input_equals_the_net_on_the_concatenation():
    # a type-embedding part enters the first layer per type and is gathered: same values as the net
    # on [x, tebd(t)] (DPA-2's repinit and three-body concat embeddings)
    net = EmbeddingNet(5, [3, 6, 12], resnet_dt=True, seed=1)
    x, table = torch.randn(7, 1, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    types = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    w_x, w_t = net.split_input([1, 4])
    split = net.forward_preactivated(x * w_x[0] + gather_rows(table @ w_t, types))
    torch.testing.assert_close(split, net(torch.cat([x, table[types]], dim=-1)), rtol=1e-14, atol=1e-14)
    assert EmbeddingNet(4, [4, 8]).split_input([1, 3]) is None  # a first layer with a skip: not split


def test_timestep_scales_the_activation_before_the_skip():
    layer = MLPLayer(3, 3, "tanh", resnet=True, resnet_dt=True)
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), torch.tanh(x @ layer.weight + layer.bias) * layer.idt + x)


def test_fitting_net_structure_and_parameter_count():
    # water example fitting net: 1600 -> 240 -> 240 (skip, idt) -> 240 (skip, idt) -> 1
    net = FittingNet(1600, [240, 240, 240], 1, resnet_dt=True)
    assert [layer.skip for layer in net.layers] == [False, True, True, False]
    assert sum(p.numel() for p in net.parameters()) == 1600 * 240 + 240 + 2 * (240 * 240 + 2 * 240) + 241
    embedding = EmbeddingNet(1, [25, 50, 100])
    assert [layer.skip for layer in embedding.layers] == [False, True, True]


def test_initialisation_statistics_and_seed():
    layer = MLPLayer(300, 300, "tanh", resnet=True, resnet_dt=True, generator=torch.Generator().manual_seed(3))
    assert abs(layer.weight.std().item() - 1 / 600 ** 0.5) < 0.002
    assert abs(layer.bias.std().item() - 1.0) < 0.15
    assert abs(layer.idt.mean().item() - 0.1) < 0.001
    a, b = FittingNet(4, [3], seed=7), FittingNet(4, [3], seed=7)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_trainable_per_layer():
    net = FittingNet(4, [3, 3], 1, trainable=[False, True, True])
    assert not net.layers[0].weight.requires_grad and net.layers[1].weight.requires_grad
    with pytest.raises(ValueError, match="trainable has 2 entries, expected 3"):
        FittingNet(4, [3, 3], 1, trainable=[True, True])


def test_activation_registry():
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(get_activation("relu6")(x * 3), torch.clamp(x * 3, 0, 6))
    torch.testing.assert_close(get_activation("none")(x), x)
    # DeePMD-kit's gelu is the tanh approximation in every backend (gelu_tf the same function)
    for name in ("gelu", "gelu_tf"):
        torch.testing.assert_close(get_activation(name)(x), 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3))))
    for name in ("tanh", "gelu", "relu", "softplus", "sigmoid", "linear"):
        assert name in ACTIVATIONS
    with pytest.raises(ConfigError, match="unknown activation function 'tahn'.*did you mean 'tanh'"):
        get_activation("tahn")


def test_registry_rejects_duplicates_and_resolves_aliases():
    registry = Registry("descriptor")
    registry.register("se_e2_a", 1, aliases=("se_a",))
    assert registry.get("SE_A") == 1 and registry.canonical("se_a") == "se_e2_a"
    with pytest.raises(ValueError, match="already registered"):
        registry.register("se_a", 2)
    with pytest.raises(ConfigError, match="unknown descriptor 'se_e2a'; valid: se_a, se_e2_a.*did you mean"):
        registry.get("se_e2a")


def test_smooth_switch_exact_values(dtype):
    r = torch.tensor([0.2, 0.5, 1.25, 2.0, 2.75, 3.5, 4.0], dtype=dtype)
    # u = 0, 0, 0.25, 0.5, 0.75, 1, 1 for r_s = 0.5, r_c = 3.5
    expected = torch.tensor([1.0, 1.0, 0.896484375, 0.5, 0.103515625, 0.0, 0.0], dtype=dtype)
    torch.testing.assert_close(smooth_switch(r, 0.5, 3.5), expected)


def test_smooth_switch_is_c2_at_both_ends():
    for point in (0.5, 3.5):
        r = torch.tensor([point - 1e-6, point + 1e-6], dtype=torch.float64, requires_grad=True)
        w = smooth_switch(r, 0.5, 3.5)
        (d1,) = torch.autograd.grad(w.sum(), r, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), r)
        assert torch.allclose(d1, torch.zeros_like(d1), atol=1e-9)
        assert torch.allclose(d2, torch.zeros_like(d2), atol=1e-5)
    with pytest.raises(ValueError, match="rcut .* must be larger than rcut_smth"):
        smooth_switch(torch.ones(1), 2.0, 1.0)


def test_scatter_and_segment_sums():
    src = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    index = torch.tensor([0, 2, 0, 1, 2, 2])
    torch.testing.assert_close(scatter_sum(src, index, 4), torch.tensor([[4.0, 6], [6, 7], [20, 23], [0, 0]], dtype=torch.float64))
    torch.testing.assert_close(segment_sum(src, torch.tensor([2, 0, 4])), torch.tensor([[2.0, 4], [0, 0], [28, 32]], dtype=torch.float64))


def test_gather_rows_equals_advanced_indexing_through_double_backward():
    torch.manual_seed(0)
    src = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[4, 0, 4], [1, 1, 2]])
    out = gather_rows(src, index)
    assert out.shape == (2, 3, 3)
    torch.testing.assert_close(out, src[index])
    # repeated rows accumulate in the backward; second derivatives flow through it
    torch.autograd.gradcheck(lambda s: gather_rows(s, index), (src,))
    torch.autograd.gradgradcheck(lambda s: gather_rows(s, index) ** 2, (src,))
    assert gather_rows(src, torch.zeros(0, dtype=torch.long)).shape == (0, 3)


def test_mlp_compute_dtype_runs_the_layers_in_reduced_precision():
    from mlpot.nn import EmbeddingNet, set_compute_dtype

    torch.manual_seed(0)
    net = EmbeddingNet(1, [4, 8], seed=3, dtype=torch.float32)
    x = torch.rand(5, 1)
    full = net(x)
    assert set_compute_dtype(net, torch.bfloat16) == 1
    reduced = net(x)
    assert reduced.dtype == torch.float32
    # by hand: every matmul and activation in bfloat16, skips added in bfloat16, result cast back
    h = x.to(torch.bfloat16)
    for layer in net.layers:
        y = torch.tanh(torch.addmm(layer.bias.to(torch.bfloat16), h, layer.weight.to(torch.bfloat16)))
        h = y + torch.cat([h, h], dim=-1) if layer.skip else y
    torch.testing.assert_close(reduced, h.float(), atol=0, rtol=0)
    assert 1e-4 < float((reduced - full).detach().abs().max()) < 0.1
    set_compute_dtype(net, None)
    torch.testing.assert_close(net(x), full, atol=0, rtol=0)


def test_polynomial_cutoff_closed_form_and_smoothness():
    from mlpot.nn import PolynomialCutoff

    cutoff = PolynomialCutoff(r_max=4.0, p=6)
    r = torch.tensor([0.0, 2.0, 3.999999, 4.0, 5.0], dtype=torch.float64, requires_grad=True)
    f = cutoff(r)
    x = 0.5
    expected_mid = 1 - 28 * x**6 + 48 * x**7 - 21 * x**8  # p = 6: (p+1)(p+2)/2 = 28, p(p+2) = 48, p(p+1)/2 = 21
    assert torch.allclose(f.detach(), torch.tensor([1.0, expected_mid, 0.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    (grad,) = torch.autograd.grad(f.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), r)
    assert abs(float(grad[2])) < 1e-9 and abs(float(second[2])) < 1e-4  # f' and f'' vanish at r_max


def test_bessel_basis_values_and_trainable_frequencies():
    import math

    from mlpot.nn import BesselBasis

    r = torch.tensor([0.7, 1.9], dtype=torch.float64)
    basis = BesselBasis(r_max=5.0, num_basis=3, dtype=torch.float64)
    n = torch.arange(1, 4, dtype=torch.float64)
    expected = 2.0 / 5.0 * torch.sin(n * math.pi / 5.0 * r[:, None]) / r[:, None]
    assert torch.allclose(basis(r), expected, atol=1e-14)
    mace_like = BesselBasis(r_max=5.0, num_basis=3, prefactor=math.sqrt(2 / 5.0), trainable=True, dtype=torch.float64)
    assert torch.allclose(mace_like(r), expected * math.sqrt(2 / 5.0) / (2 / 5.0), atol=1e-14)
    assert [name for name, _ in mace_like.named_parameters()] == ["weights"]
    assert "weights" in dict(basis.named_buffers())
