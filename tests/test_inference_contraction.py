"""The first-derivative inference path of se_e2_a / se_e2_r: ``MLP.value_and_slope`` (forward-mode
through an embedding net), ``gathered_contraction`` (hand-written backward) and the descriptor path
that uses them in eval mode with frozen parameters, each pinned to autograd."""

import pytest
import torch

from mlpot import testing as T
from mlpot.data import keys as K
from mlpot.models import build_model
from mlpot.models.derivatives import compute_derivatives
from mlpot.models.deepmd.descriptors.se_e2_a import DescriptorSeA
from mlpot.nn import EmbeddingNet
from mlpot.nn.gathered_contraction import gathered_contraction, weighted_row_sum


@pytest.mark.parametrize("activation, resnet_dt", [("tanh", False), ("tanh", True), ("gelu", True), ("linear", False)])
def test_value_and_slope_equal_forward_and_autograd(activation, resnet_dt):
    net = EmbeddingNet(1, [4, 8, 16, 16], activation=activation, resnet_dt=resnet_dt, seed=3)
    x = torch.linspace(-2.0, 3.0, 57, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
    reference = net(x)
    slope = torch.stack([torch.autograd.grad(reference[:, m].sum(), x, retain_graph=True)[0][:, 0]
                         for m in range(reference.shape[1])], dim=1)
    for chunk in (1024, 10):  # one chunk, several
        values, slopes = net.value_and_slope(x.detach(), chunk=chunk)
        torch.testing.assert_close(values, reference.detach(), atol=1e-14, rtol=0)
        torch.testing.assert_close(slopes, slope, atol=1e-13, rtol=1e-12)
        out = (torch.full_like(values, float("nan")), torch.full_like(slopes, float("nan")))  # written into
        assert net.value_and_slope(x.detach(), chunk=chunk, out=out) == out
        assert torch.equal(out[0], values) and torch.equal(out[1], slopes)
    with pytest.raises(ValueError, match="one input"):
        EmbeddingNet(2, [4]).value_and_slope(torch.zeros(3, 2, dtype=torch.float64))


def _contraction_case():
    """Rows shared by several slots and empty slots (row 5, the placeholder), as a descriptor makes them."""
    generator = torch.Generator().manual_seed(0)
    net = EmbeddingNet(1, [3, 6], seed=1)
    x = torch.randn(6, dtype=torch.float64, generator=generator)  # 5 rows + the placeholder
    left = torch.randn(3, 4, 2, dtype=torch.float64, generator=generator)
    slot_rows = torch.tensor([0, 1, 5, 5, 1, 2, 3, 5, 4, 0, 2, 5])
    return net, x, left, slot_rows


def _reference(net, x, left, slot_rows):
    values = torch.cat([net(x[:-1].unsqueeze(1)), x.new_zeros(1, 6)])
    return torch.bmm(left.transpose(1, 2), values.index_select(0, slot_rows).view(3, 4, 6))


def test_gathered_contraction_value_and_gradients_equal_autograd():
    net, x, left, slot_rows = _contraction_case()
    evaluate = lambda z: net.value_and_slope(z.unsqueeze(1))  # noqa: E731
    weight = torch.randn(3, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for function in (lambda a, b: gathered_contraction(a, b, slot_rows, evaluate),
                     lambda a, b: _reference(net, a, b, slot_rows)):
        a, b = x.clone().requires_grad_(True), left.clone().requires_grad_(True)
        out = function(a, b)
        grads.append((out.detach(), *torch.autograd.grad((out * weight).sum(), [a, b])))
    for fast, reference in zip(*grads):
        torch.testing.assert_close(fast, reference, atol=1e-13, rtol=1e-12)
    assert float(grads[0][1][-1]) == 0.0  # the placeholder row is no input


@pytest.mark.parametrize("n_rows, n_terms", [(7, 5), (0, 5), (4, 0), (1, 1)])
def test_weighted_row_sum_equals_embedding_bag(n_rows, n_terms):
    """The CPU sparse x dense product against embedding_bag (its path elsewhere), with columns that
    repeat within a row (they add), and empty shapes."""
    generator = torch.Generator().manual_seed(2)
    table = torch.randn(6, 3, dtype=torch.float64, generator=generator)
    columns = torch.randint(0, 6, (n_rows, n_terms), generator=generator)
    if n_rows and n_terms > 1:
        columns[0, 1] = columns[0, 0]
    weights = torch.randn(n_rows, n_terms, dtype=torch.float64, generator=generator)
    out = weighted_row_sum(columns, weights, table)
    expected = (weights.unsqueeze(-1) * table[columns]).sum(1)
    assert out.shape == (n_rows, 3)
    torch.testing.assert_close(out, expected, atol=1e-14, rtol=1e-13)
    if n_terms:
        reference = torch.nn.functional.embedding_bag(columns, table, per_sample_weights=weights, mode="sum")
        torch.testing.assert_close(out, reference, atol=1e-14, rtol=1e-13)


def test_gathered_contraction_gradcheck():
    net, x, left, slot_rows = _contraction_case()
    evaluate = lambda z: net.value_and_slope(z.unsqueeze(1))  # noqa: E731
    a, b = x.clone().requires_grad_(True), left.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: gathered_contraction(p, q, slot_rows, evaluate), (a, b))
    with pytest.raises(ValueError, match="slot_rows of shape"):
        gathered_contraction(x, left, slot_rows[:-1], evaluate)
    with pytest.raises(RuntimeError, match="first derivatives only"):  # no graph of its backward
        out = gathered_contraction(a, b, slot_rows, evaluate)
        (grad_x,) = torch.autograd.grad(out.sum(), a, create_graph=True)
        torch.autograd.grad(grad_x.sum(), b)


def _model(descriptor_type, type_one_side):
    section = {"type": descriptor_type, "sel": [12, 12], "rcut": 3.5, "rcut_smth": 1.0, "neuron": [4, 8],
               "type_one_side": type_one_side, "seed": 1}
    if descriptor_type == "se_e2_a":
        section["axis_neuron"] = 3
    model = build_model({"type_map": ["A", "B"], "descriptor": section, "fitting_net": {"neuron": [8, 8], "seed": 2}})
    model.compute_statistics([T.random_batch(2, 8, seed=5)])
    return model


@pytest.mark.parametrize("descriptor_type, type_one_side, n_types", [
    ("se_e2_a", True, 2), ("se_e2_a", False, 2), ("se_e2_r", True, 2), ("se_e2_a", False, 1), ("se_e2_r", True, 1)])
def test_inference_path_equals_the_autograd_path(descriptor_type, type_one_side, n_types, monkeypatch):
    """Forces without a graph of them take the row path, equal to autograd; with create_graph
    (training, Hessians) the autograd path runs, so second derivatives stay exact. n_types 1: the
    frames hold type A only, so section B has no column (all its slots padding)."""
    batch = T.random_batch(2, [9, 8], n_types, seed=12)
    model = _model(descriptor_type, type_one_side)
    calls = []
    original = DescriptorSeA._row_contraction
    monkeypatch.setattr(DescriptorSeA, "_row_contraction", lambda self, *a: calls.append(1) or original(self, *a))
    reference = compute_derivatives(model, batch, virial=True, create_graph=True)
    assert not calls
    fast = compute_derivatives(model, batch, virial=True)
    assert calls
    for key in (K.ENERGY, K.ATOM_ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(fast[key], reference[key].detach(), atol=1e-12, rtol=1e-12)
    model.eval()  # a graph of the forces (training, Hessians): the autograd path, whatever the mode
    calls.clear()
    compute_derivatives(model, batch, create_graph=True)
    assert not calls


def test_mixed_precision_nets_keep_the_autograd_path(monkeypatch):
    from mlpot.nn import set_compute_dtype

    model = _model("se_e2_a", True)
    set_compute_dtype(model, torch.bfloat16)
    monkeypatch.setattr(DescriptorSeA, "_row_contraction", lambda self, *a: pytest.fail("row path in bfloat16"))
    forces = compute_derivatives(model, T.random_batch(1, 8, seed=3))[K.FORCES]
    assert forces.dtype == torch.float64 and bool(torch.isfinite(forces).all())


def test_single_frame_edge_vectors_equal_the_per_edge_cell_path():
    """One frame: one cell for all edges (MD); values and position/cell gradients as the batched path."""
    from mlpot.data.neighbors import edge_vectors as per_edge_cell
    from mlpot.models.base import edge_vectors

    batch = T.random_batch(1, 9, seed=4)
    weight = torch.randn(batch[K.EDGE_SHIFTS].shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for function in (edge_vectors, lambda b: per_edge_cell(b[K.POSITIONS], b[K.EDGE_INDEX], b[K.EDGE_SHIFTS], b[K.CELL], b[K.BATCH])):
        positions, cell = batch[K.POSITIONS].clone().requires_grad_(True), batch[K.CELL].clone().requires_grad_(True)
        vectors = function(dict(batch, **{K.POSITIONS: positions, K.CELL: cell}))
        results.append((vectors.detach(), *torch.autograd.grad((vectors * weight).sum(), [positions, cell])))
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference, atol=1e-13, rtol=1e-13)
