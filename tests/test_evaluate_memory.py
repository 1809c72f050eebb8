"""Evaluation builds no second-derivative graph, records no parameter gradients, and keeps the
se_atten attention graph of one chunk of atoms at a time (the same numbers as whole frames).

Memory is checked by the peak of what autograd holds for the backward pass (bytes of the tensors
saved for backward, each counted while its graph node lives), not by timing or the process RSS.
"""

from __future__ import annotations

import pytest
import torch

from mlpot import testing as T
from mlpot.calculators.evaluate import DEFAULT_ATOM_CHUNK, predict_batch
from mlpot.data import keys as K
from mlpot.models import build_model
from mlpot.models.deepmd.descriptors.se_atten import DescriptorSeAtten
from mlpot.nn import atom_chunk_size

SE_ATTEN_V2 = {"type": "se_atten_v2", "sel": 56, "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8, 16], "axis_neuron": 4,
               "attn": 16, "attn_layer": 2, "seed": 1, "precision": "float64"}


@pytest.fixture(scope="module")
def model_and_batch():
    batch = T.random_batch(1, 48, cutoff=4.0, box=7.0, seed=3)
    model = build_model({"type_map": ["A", "B"], "descriptor": SE_ATTEN_V2,
                         "fitting_net": {"neuron": [16, 16], "seed": 2, "precision": "float64"}})
    model.compute_statistics([batch])
    return model, batch


class _LiveBytes:
    """Bytes of tensors autograd holds for backward, now and at most (each saved tensor counted
    until the graph node that saved it is freed)."""

    def __init__(self):
        self.now = self.peak = 0

    def pack(self, tensor):
        return _Held(self, tensor)

    @staticmethod
    def unpack(held):
        return held.tensor


class _Held:
    def __init__(self, counter, tensor):
        self.counter, self.tensor, self.size = counter, tensor, tensor.numel() * tensor.element_size()
        counter.now += self.size
        counter.peak = max(counter.peak, counter.now)

    def __del__(self):
        self.counter.now -= self.size


def _peak_saved_bytes(model, batch, atom_chunk):
    """(peak bytes held for backward during predict_batch, prediction)."""
    counter = _LiveBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        out = predict_batch(model, batch, virial=True, atom_chunk=atom_chunk)
    return counter.peak, out


def test_chunked_evaluation_keeps_a_fraction_of_the_graph_and_gives_the_same_numbers(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    whole, reference = _peak_saved_bytes(model, batch, atom_chunk=0)
    rows_per_call = []
    original = DescriptorSeAtten._atom_rows

    def spy(self, env, *args):
        rows_per_call.append(env.shape[0])
        return original(self, env, *args)

    monkeypatch.setattr(DescriptorSeAtten, "_atom_rows", spy)
    chunked, out = _peak_saved_bytes(model, batch, atom_chunk=8)
    # 48 atoms in chunks of 8: 6 forward calls without a graph, then 6 recomputations in the backward pass
    assert rows_per_call == [8] * 12
    assert chunked < 0.25 * whole, (chunked, whole)
    for key in (K.ENERGY, K.FORCES, K.VIRIAL, K.STRESS):
        torch.testing.assert_close(out[key], reference[key], rtol=1e-12, atol=1e-12)


def test_evaluation_asks_for_first_derivatives_only_and_leaves_parameters_alone(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    calls, flags_in_forward = [], []
    grad = torch.autograd.grad

    def recording_grad(*args, **kwargs):
        calls.append(bool(kwargs.get("create_graph", False)))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recording_grad)
    handle = model.register_forward_pre_hook(
        lambda module, args: flags_in_forward.append(
            (any(p.requires_grad for p in module.parameters()), atom_chunk_size())))
    try:
        out = predict_batch(model, batch, virial=True)
    finally:
        handle.remove()
    # first-order passes only (the forces, and one per recomputed chunk): no graph of second derivatives
    assert calls == [False] * 3
    assert flags_in_forward == [(False, DEFAULT_ATOM_CHUNK)]  # no parameter records a gradient; chunked
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    assert atom_chunk_size() is None  # chunking is off outside evaluation (training never chunks)
    assert not out[K.FORCES].requires_grad and out[K.FORCES].grad_fn is None


def test_row_chunks_give_the_plain_gradient_and_refuse_second_derivatives():
    from mlpot.nn import map_row_chunks

    layer = torch.nn.Linear(3, 4).double()
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    shared = torch.randn(4, dtype=torch.float64, requires_grad=True)
    calls = []

    def rows(block, weight):
        calls.append(len(block))
        return (torch.tanh(layer(block)) * weight,)

    plain = torch.autograd.grad(rows(x, shared)[0].square().sum(), [x, shared])
    calls.clear()
    # parameters recording gradients (training): one plain call, never a recomputation
    map_row_chunks(rows, (x,), shared, module=layer, chunk=4)
    assert calls == [10]
    layer.requires_grad_(False)
    calls.clear()
    out = map_row_chunks(rows, (x,), shared, module=layer, chunk=4)[0]
    chunked = torch.autograd.grad(out.square().sum(), [x, shared])
    # forward without a graph, then each chunk recomputed in the backward pass (in reverse order)
    assert calls[:3] == [4, 4, 2] and sorted(calls[3:]) == [2, 4, 4]
    for a, b in zip(chunked, plain):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    out = map_row_chunks(rows, (x,), shared, module=layer, chunk=4)[0]
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(out.square().sum(), [x], create_graph=True)
