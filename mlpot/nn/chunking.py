"""Row-chunked evaluation with recomputation: bounded memory for per-atom work in inference.

Evaluating forces keeps the whole forward graph of a frame until the backward pass. For a
descriptor whose work per centre atom is large (se_atten: an attention matrix of sel x sel per
atom and layer, 0.6 GB per 192-atom water frame in float64) that graph, not the model, sets the
memory. The rows (centre atoms) are independent there, so :func:`map_row_chunks` runs the per-row
function on chunks of rows without recording a graph, keeping only each chunk's inputs, and the
backward pass recomputes one chunk at a time: the graph held at any time is one chunk's. The price
is one more forward pass of that function; the numbers are the same.

Chunking is opt-in, for inference: :func:`atom_chunks` sets the chunk size (atoms) for the code
run inside it, and functions that support it read :func:`atom_chunk_size`. It applies only while
no parameter of the module records a gradient (evaluation freezes them), so training, which needs
parameter gradients and the force graph twice, never recomputes; asking for second derivatives
through a recomputed chunk is an error.

Hand-written rather than ``torch.utils.checkpoint``: that one imports ``torch._dynamo`` on its first
call (4-7 s and ~100 MB per process), and its reentrant variant does not support
``torch.autograd.grad``, which forces need.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch

from mlpot.nn.tracing import is_tracing

__all__ = ["atom_chunks", "atom_chunk_size", "map_row_chunks"]

_ATOM_CHUNK: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("mlpot_atom_chunk", default=None)


@contextlib.contextmanager
def atom_chunks(size: Optional[int]) -> Iterator[None]:
    """Within the block, per-atom work that supports it runs in chunks of ``size`` atoms with
    recomputation (None or 0: off). size: atoms per chunk, > 0."""
    if size is not None and int(size) < 0:
        raise ValueError(f"atom chunk size must be >= 0, got {size}")
    token = _ATOM_CHUNK.set(int(size) if size else None)
    try:
        yield
    finally:
        _ATOM_CHUNK.reset(token)


def atom_chunk_size() -> Optional[int]:
    """The chunk size set by the innermost :func:`atom_chunks` block, or None (no chunking)."""
    return _ATOM_CHUNK.get()


class _Recomputed(torch.autograd.Function):
    """outputs = function(*inputs) with no graph kept; the backward pass runs it again with grad."""

    @staticmethod
    def forward(ctx, function, *inputs):
        ctx.function = function
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return tuple(function(*inputs))

    @staticmethod
    def backward(ctx, *grad_outputs):
        if torch.is_grad_enabled():
            raise RuntimeError("a recomputed atom chunk gives first derivatives only (create_graph is not "
                               "supported inside mlpot.nn.atom_chunks)")
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved]
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        grads = [None] * len(inputs)
        with torch.enable_grad():
            outputs = ctx.function(*inputs)
            pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad and g is not None]
            # a scalar <outputs, grad_outputs> instead of grad_outputs: torch.autograd.grad imports
            # sympy (1.5 s) the first time it checks the shapes of explicit grad_outputs
            inner = sum((o * g).sum() for o, g in pairs) if pairs else None
        if wanted and inner is not None:
            found = torch.autograd.grad(inner, [inputs[i] for i in wanted], allow_unused=True)
            for i, g in zip(wanted, found):
                grads[i] = g
        return (None, *grads)


def map_row_chunks(function: Callable[..., Tuple[torch.Tensor, ...]], rows: Sequence[torch.Tensor],
                   *shared: torch.Tensor, module: Optional[torch.nn.Module] = None,
                   chunk: Optional[int] = None) -> Tuple[torch.Tensor, ...]:
    """``function(*row_slices, *shared)`` over chunks of rows, outputs concatenated along dim 0.

    rows: tensors whose first dimension is the same n_rows (sliced per chunk); shared: tensors
    passed whole to every call; function returns a tuple of tensors with n_chunk rows each and may
    use the parameters of ``module`` (if any requires grad, or no gradient is being recorded, or
    ``chunk`` is None or not less than n_rows, or while a graph tracer runs: one plain call). chunk: rows per call (default
    :func:`atom_chunk_size`). See the module docstring.
    """
    chunk = atom_chunk_size() if chunk is None else chunk
    if is_tracing():  # a traced graph takes any number of rows: one plain call, no guard on n_rows
        return tuple(function(*rows, *shared))
    n_rows = int(rows[0].shape[0])
    if (not chunk or chunk >= n_rows or not torch.is_grad_enabled()
            or (module is not None and any(p.requires_grad for p in module.parameters()))):
        return tuple(function(*rows, *shared))
    pieces = [_Recomputed.apply(function, *(r[start:start + chunk] for r in rows), *shared)
              for start in range(0, n_rows, chunk)]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*pieces))
