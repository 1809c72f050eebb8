"""A contraction of per-row function values gathered into padded slots, with a hand-written backward.

``gathered_contraction(x, left, slot_rows, evaluate)`` computes, for every block a (a centre atom),

    out[a] = sum_k left[a, k, :]^T f(x[slot_rows[a, k]])            (a: blocks, k: slots)

where f: R -> R^width is given through ``evaluate(x) -> (f(x), f'(x))`` on the rows x, and a slot
whose row is the last one, ``n_rows``, a placeholder, holds f = 0 (an empty slot). The rows are
the distinct inputs (a descriptor's embedding-net inputs, one per neighbour pair), the slots the
padded (blocks x slots) layout of the contraction, so several slots may share a row.

Why: forces need only df/dx, and f of one variable gives it by forward-mode differentiation in the
same pass as f (``MLP.value_and_slope``, or a table's derivative). Keeping f and f' per row, the
backward pass is two small matrix products per block and no reverse pass through f: no saved
activations, no dense (blocks x slots x width) gradient, no scatter of it back to the rows. The
forward pass on CPU is one sparse x dense product (:func:`weighted_row_sum`: out[a, w] = sum_k
left[a, k, w] f(row_ak), no gathered rows at all); the backward pass (and the forward pass
elsewhere) gathers f and f' into the slots in chunks of blocks, so the gathered rows stay in cache
and no (blocks x slots x width) tensor is ever held: with ~16 MB such tensors per 192-atom water
frame, glibc's heap grew and was trimmed back every step (thousands of page faults).

First derivatives only: for inference. The gradient reaches ``x`` and ``left``, not the
parameters of f. Second derivatives through it would miss the f'' terms, so its backward refuses
to build a graph (:func:`no_double_backward`), and callers use it only inside
:func:`first_derivatives_only`, which the code that takes the derivatives opens when it builds no
graph of them (``mlpot.models.derivatives.compute_derivatives`` with
``create_graph=False``; its graph is freed by the gradient call, so nothing can differentiate
through it afterwards).
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Callable, Iterator, Tuple

import torch

from mlpot.nn.tracing import is_tracing

__all__ = ["gathered_contraction", "slope_gradient", "weighted_row_sum", "first_derivatives_only", "only_first_derivatives",
           "no_double_backward", "CHUNK_SLOTS"]

_FIRST_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("mlpot_first_derivatives_only", default=False)


@contextlib.contextmanager
def first_derivatives_only(enabled: bool = True) -> Iterator[None]:
    """Within the block the caller takes at most first derivatives of what it computes, and builds
    no graph of them: models may use first-derivative-only paths (see the module docstring)."""
    token = _FIRST_ONLY.set(bool(enabled))
    try:
        yield
    finally:
        _FIRST_ONLY.reset(token)


def only_first_derivatives() -> bool:
    """True inside :func:`first_derivatives_only`."""
    return _FIRST_ONLY.get()


def no_double_backward(message: str):
    """Decorator of an ``autograd.Function.backward`` that gives first derivatives only: it raises
    ``RuntimeError(message)`` when a graph of it is asked for (create_graph=True: Hessians, force
    training) and otherwise runs without one. Used in place of ``once_differentiable``, whose error
    node PyTorch prunes when second derivatives are taken with respect to chosen inputs, so that the
    missing terms would go unnoticed."""

    def decorate(backward):
        def guarded(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(message)
            return backward(ctx, *grads)

        return guarded

    return decorate

CHUNK_SLOTS = 4096  # slots per chunk of the backward pass (its gathered rows: slots x width x 8 B)

Evaluate = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def slope_gradient(slopes: torch.Tensor, left: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d/dx[a, k] of sum(grad * out) for out[a] = sum_k left[a, k]^T f(x[a, k]), given the slopes
    f'(x): (a, k, width), left (a, k, w), grad (a, w, width) -> (a, k); the width summed first."""
    return (torch.bmm(slopes, grad.transpose(1, 2)) * left).sum(-1)


def _chunks(n_blocks: int, n_slots: int):
    """Block ranges of about CHUNK_SLOTS slots each (one range when a graph tracer records)."""
    step = n_blocks if is_tracing() else max(1, CHUNK_SLOTS // max(n_slots, 1))
    return [(start, min(start + step, n_blocks)) for start in range(0, n_blocks, step)]


def _gather(table: torch.Tensor, rows: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows of ``table`` for the slots of blocks start:stop, (stop - start, n_slots, width)."""
    return table.index_select(0, rows[start:stop].reshape(-1)).view(stop - start, rows.shape[1], -1)


def weighted_row_sum(columns: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """out[j] = sum_p weights[j, p] * table[columns[j, p]]: columns (n, p) int64, weights (n, p),
    table (m, width) -> (n, width), without holding the (n, p, width) gathered rows.

    On CPU (eager) the product of a CSR matrix (row j: weights[j] at columns[j]; repeated columns
    add) and ``table``, MKL's sparse x dense kernel, written straight into a new tensor (``S @ table``
    would zero-fill a result and copy it back: two more passes over it); on other devices one
    ``embedding_bag`` with per-sample weights; under a graph tracer the gathered rows times the
    weights, summed, which Inductor compiles into one loop without holding the gathered rows (an
    ``embedding_bag`` would stay an extern call that zero-fills its result). No graph: for autograd
    functions' own passes.
    """
    if is_tracing():
        rows = table.index_select(0, columns.reshape(-1)).view(columns.shape[0], columns.shape[1], table.shape[1])
        return (weights.to(table.dtype).unsqueeze(2) * rows).sum(1)
    if columns.device.type != "cpu":
        return torch.nn.functional.embedding_bag(columns, table, per_sample_weights=weights, mode="sum")
    n_rows, n_terms = columns.shape
    if n_terms == 0:
        return table.new_zeros(n_rows, table.shape[1])
    starts = torch.arange(0, n_rows * n_terms + 1, n_terms, device=columns.device)
    with warnings.catch_warnings():  # torch's one-time "Sparse CSR tensor support is in beta" notice
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(starts, columns.reshape(-1), weights.reshape(-1).to(table.dtype),
                                         size=(n_rows, table.shape[0]), check_invariants=False)
    out = table.new_empty(n_rows, table.shape[1])  # beta 0: written, not read (no zero fill, no copy back)
    return torch.addmm(out, matrix, table, beta=0.0, out=out)


class _GatheredContraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, left, slot_rows, evaluate):
        values, slopes = evaluate(x)
        for table in (values, slopes):  # the last row is the empty slot's: f = f' = 0 there
            table[-1].zero_()
        n_blocks, n_slots, _ = left.shape
        rows = slot_rows.view(n_blocks, n_slots)
        if left.device.type == "cpu" and not is_tracing():  # out[a, w] = sum_k left[a, k, w] f(row_ak): sparse x dense
            width = left.shape[2]
            columns = rows.unsqueeze(1).expand(n_blocks, width, n_slots).reshape(n_blocks * width, n_slots)
            out = weighted_row_sum(columns, left.transpose(1, 2).reshape(n_blocks * width, n_slots), values)
            out = out.view(n_blocks, width, values.shape[1])
        else:
            out = left.new_empty(n_blocks, left.shape[2], values.shape[1])
            for start, stop in _chunks(n_blocks, n_slots):  # f gathered a chunk at a time, never all slots
                torch.bmm(left[start:stop].transpose(1, 2), _gather(values, rows, start, stop), out=out[start:stop])
        ctx.save_for_backward(left, slot_rows, values, slopes)  # f and f' per row
        return out

    @staticmethod
    @no_double_backward("the inference contraction gives first derivatives only: use it inside "
                        "first_derivatives_only, without create_graph")
    def backward(ctx, grad):
        left, slot_rows, values, slopes = ctx.saved_tensors
        n_blocks, n_slots, _ = left.shape
        grad_left = torch.empty_like(left)
        grad_slot = left.new_empty(n_blocks, n_slots)
        rows = slot_rows.view(n_blocks, n_slots)
        for start, stop in _chunks(n_blocks, n_slots):
            chunk_grad = grad[start:stop].transpose(1, 2)
            torch.bmm(_gather(values, rows, start, stop), chunk_grad, out=grad_left[start:stop])
            grad_slot[start:stop] = slope_gradient(_gather(slopes, rows, start, stop), left[start:stop], grad[start:stop])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_slot.new_zeros(slopes.shape[0]).index_add_(0, slot_rows, grad_slot.view(-1))
            grad_x[-1] = 0.0  # the empty slot's row is no input
        return grad_x, (grad_left if ctx.needs_input_grad[1] else None), None, None


def gathered_contraction(x: torch.Tensor, left: torch.Tensor, slot_rows: torch.Tensor,
                         evaluate: Evaluate) -> torch.Tensor:
    """sum_k left[a, k, :]^T f(x[slot_rows[a, k]]) (see the module docstring).

    x: (n_rows + 1,) inputs of f, the last one a placeholder (any finite value) for the empty
    slots; left: (n_blocks, n_slots, w); slot_rows: (n_blocks * n_slots,) int64 in [0, n_rows],
    n_rows = empty slot; evaluate: x -> (f(x), f'(x)), each (n_rows + 1, width), new tensors
    computed without a graph (their last row is zeroed in place). Returns (n_blocks, w, width),
    differentiable once in x and left (the placeholder gets gradient 0).
    """
    if slot_rows.shape != (left.shape[0] * left.shape[1],) or x.dim() != 1:
        raise ValueError(f"x must be 1-d and slot_rows of shape ({left.shape[0] * left.shape[1]},); got "
                         f"x {tuple(x.shape)}, slot_rows {tuple(slot_rows.shape)}")
    return _GatheredContraction.apply(x, left.contiguous(), slot_rows, evaluate)
