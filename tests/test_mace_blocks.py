"""MACE's building blocks against e3nn 0.6 and against the formulas written out plainly."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from mlpot.models.equivariant.mace.coupling import u_matrix
from mlpot.models.equivariant.mace.linear import ChannelLinear, ElementLinear, from_flat, irreps_of, to_flat
from mlpot.models.equivariant.mace.neighbours import PaddedEdges
from mlpot.models.equivariant.blocks import RadialMLP
from mlpot.models.equivariant.mace.radial import RadialEmbedding
from mlpot.models.equivariant.mace.symmetric_contraction import SymmetricContraction
from mlpot.models.equivariant.mace.tensor_product import ChannelwiseTensorProduct
from mlpot.nn import GaussianBasis

IR = lambda names: [o3.Irrep(name) for name in names.split()]  # noqa: E731


def test_layout_round_trip():
    blocks = IR("0e 1o 2e")
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    flat = to_flat(x, blocks)
    assert flat.shape == (4, 27)
    torch.testing.assert_close(from_flat(flat, blocks, 3), x)
    torch.testing.assert_close(flat[:, 3:6], x[:, 1:4, 0])  # channel 0 of the 1o block, e3nn order


def test_irreps_linear_equals_e3nn_linear():
    blocks_in, blocks_out = IR("0e 0e 1o 1o 1o 2e"), IR("0e 1o 2e 3o")
    ours = ChannelLinear(blocks_in, 5, blocks_out, 7, torch.float64)
    theirs = o3.Linear(irreps_of(5, blocks_in), irreps_of(7, blocks_out)).double()
    assert theirs.weight_numel == ours.weight.numel()
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
    x = torch.randn(11, 16, 5, dtype=torch.float64)
    torch.testing.assert_close(to_flat(ours(x), blocks_out), theirs(to_flat(x, blocks_in)))


def test_element_linear_equals_e3nn_tensor_product_with_one_hot():
    blocks_in, blocks_out = IR("0e 1o 2e"), IR("0e 1o")
    ours = ElementLinear(blocks_in, 4, 3, blocks_out, 6, torch.float64)
    theirs = o3.FullyConnectedTensorProduct(irreps_of(4, blocks_in), o3.Irreps("3x0e"), irreps_of(6, blocks_out)).double()
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
    elements = torch.tensor([0, 0, 1, 2, 2, 2])
    x = torch.randn(6, 9, 4, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(elements, 3).double()
    torch.testing.assert_close(to_flat(ours(x, [2, 1, 3]), blocks_out), theirs(to_flat(x, blocks_in), one_hot))


def test_channelwise_tensor_product_equals_e3nn_uvu():
    channels, blocks_in, blocks_sh = 3, IR("0e 1o"), IR("0e 1o 2e 3o")
    ours = ChannelwiseTensorProduct(blocks_in, channels, blocks_sh, blocks_sh, torch.float64)
    irreps_in, irreps_sh = irreps_of(channels, blocks_in), o3.Irreps("0e+1o+2e+3o")
    outputs, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):  # mace-torch's tp_out_irreps_with_instructions, written out
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in irreps_sh:
                    instructions.append((i, j, len(outputs), "uvu", True))
                    outputs.append((mul, ir_out))
    irreps_out, permutation, _ = o3.Irreps(outputs).sort()
    instructions = sorted([(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions], key=lambda x: x[2])
    theirs = o3.TensorProduct(irreps_in, irreps_sh, irreps_out, instructions, shared_weights=False,
                              internal_weights=False).double()
    assert [ir for _, ir in irreps_out] == ours.blocks_out and theirs.weight_numel == ours.weight_numel
    n_nodes, n_edges = 5, 13
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(n_nodes, 4, channels, dtype=torch.float64, generator=generator)
    sh = torch.randn(n_edges, 16, dtype=torch.float64, generator=generator)
    w = torch.randn(n_edges, ours.weight_numel, dtype=torch.float64, generator=generator)
    sender, receiver = torch.randint(0, n_nodes, (2, n_edges), generator=generator)
    expected = torch.zeros(n_nodes, irreps_out.dim, dtype=torch.float64).index_add(
        0, receiver, theirs(to_flat(h, blocks_in)[sender], sh, w))
    edges = PaddedEdges(receiver, sender, n_nodes)
    assert edges.width == int(torch.bincount(receiver, minlength=n_nodes).max())
    out = ours(h, edges.pad(sh), edges.pad(w), edges)
    torch.testing.assert_close(to_flat(out, ours.blocks_out), expected)


def test_radial_mlp_equals_e3nn_fully_connected_net():
    from e3nn.nn import FullyConnectedNet

    ours = RadialMLP([8, 16, 16, 5], "silu", "moment", dtype=torch.float64)
    theirs = FullyConnectedNet([8, 16, 16, 5], torch.nn.functional.silu).double()
    with torch.no_grad():
        for k in range(3):
            getattr(theirs, f"layer{k}").weight.copy_(getattr(ours, f"layer{k}").weight)
    x = torch.randn(7, 8, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))


def test_radial_embedding_formulas():
    r = torch.tensor([0.7, 1.9, 3.4, 4.6], dtype=torch.float64)
    features, envelope = RadialEmbedding(4.5, 4, 5, "bessel", dtype=torch.float64)(r, r.long() * 0, r.long() * 0)
    assert envelope is None
    x = r / 4.5
    cutoff = (1 - 21 * x ** 5 + 35 * x ** 6 - 15 * x ** 7) * (x < 1)
    n = torch.arange(1, 5, dtype=torch.float64)
    bessel = math.sqrt(2 / 4.5) * torch.sin(n * math.pi * r[:, None] / 4.5) / r[:, None]
    torch.testing.assert_close(features, bessel * cutoff[:, None])
    gaussian = GaussianBasis(4.5, 4, dtype=torch.float64)(r)
    centres = torch.linspace(0, 4.5, 4, dtype=torch.float64)
    torch.testing.assert_close(gaussian, torch.exp(-0.5 * (r[:, None] - centres) ** 2 / 1.5 ** 2))
    chebyshev, _ = RadialEmbedding(4.5, 3, 5, "chebyshev", apply_cutoff=False, dtype=torch.float64)(r, r.long(), r.long())
    torch.testing.assert_close(chebyshev, torch.stack([r, 2 * r ** 2 - 1, 4 * r ** 3 - 3 * r], dim=-1))


def _plain_symmetric_contraction(module, x, elements):
    """out[n, c, LM] = sum_nu sum_{i..} U_nu[M, i_1..i_nu, k] W_nu[e_n, k, c] x[n, c, i_1] ... x[n, c, i_nu]."""
    letters = "ijkl"
    outputs = []
    for contraction in module.contractions:
        total = 0
        for nu in range(1, contraction.correlation + 1):
            u = contraction.u(nu).reshape((contraction.irrep_out.dim,) + (x.shape[1],) * nu + (-1,))
            weights = contraction.weight(nu)[elements]
            indices = letters[:nu]
            equation = f"m{indices}p,npc," + ",".join(f"nc{a}" for a in indices) + "->ncm"
            total = total + torch.einsum(equation, u, weights, *([x.transpose(1, 2)] * nu))
        outputs.append(total.transpose(1, 2))
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("correlation,blocks", [(1, "0e 1o 2e 3o"), (2, "0e 1o 2e 3o"), (3, "0e 1o 2e 3o"),
                                                (4, "0e 1o 2e")])
def test_symmetric_contraction_equals_the_plain_contraction(correlation, blocks):
    blocks_in = IR(blocks)
    module = SymmetricContraction(blocks_in, IR("0e 1o"), correlation, 2, 3, torch.float64)
    dim = sum(ir.dim for ir in blocks_in)
    x = torch.randn(7, dim, 3, dtype=torch.float64, requires_grad=True)
    elements = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    out = module(x, [3, 4])
    expected = _plain_symmetric_contraction(module, x, elements)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    # derivatives too (forces go through them)
    grad_out = torch.randn_like(out)
    ours, = torch.autograd.grad(out, x, grad_out)
    theirs, = torch.autograd.grad(expected, x, grad_out)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_symmetric_contraction_reloads_tables_with_state():
    blocks = IR("0e 1o 2e")
    first = SymmetricContraction(blocks, IR("0e"), 3, 1, 2, torch.float64)
    second = SymmetricContraction(blocks, IR("0e"), 3, 1, 2, torch.float64)
    with torch.no_grad():
        first.contractions[0].U_matrix_3.mul_(-1.0)  # another (equally valid) basis
    first._tables()
    second.load_state_dict(first.state_dict())
    x = torch.randn(4, 9, 2, dtype=torch.float64)
    torch.testing.assert_close(second(x, [4]), first(x, [4]))


def test_coupling_tensor_is_invariant_for_scalar_output():
    """U^{0e} of degree 2 couples each irrep with itself: sum_M Y_M(r) Y_M(r) U[...] is rotation invariant."""
    blocks = IR("0e 1o 2e")
    u = u_matrix(blocks, o3.Irrep("0e"), 2)
    assert u.shape == (9, 9, 3)
    x = torch.randn(9, dtype=torch.float64)
    rotation = o3.rand_matrix(dtype=torch.float64)
    wigner = o3.Irreps("0e+1o+2e").D_from_matrix(rotation)
    invariants = torch.einsum("ijk,i,j->k", u, x, x)
    rotated = torch.einsum("ijk,i,j->k", u, wigner @ x, wigner @ x)
    torch.testing.assert_close(rotated, invariants, atol=1e-6, rtol=1e-6)
