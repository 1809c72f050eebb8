"""Gathers and segment / scatter sums over a leading index (atoms -> edges, edges -> atoms -> frames)."""

from __future__ import annotations

import torch

from mlpot.nn.tracing import is_tracing

__all__ = ["gather_rows", "scatter_sum", "segment_sum"]


def gather_rows(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[...] = src[index[...]]: rows of ``src`` (n, *feature) at ``index`` (any shape, int64).

    Returns index.shape + feature. Same values as ``src[index]``, but through ``index_select``,
    whose backward is an ``index_add`` vectorised over the feature axis; advanced indexing backs
    up through an accumulating ``index_put`` that runs element by element on CPU (it was a fifth
    of a float32 se_e2_a training step with the double backward of forces).
    """
    return src.index_select(0, index.reshape(-1)).view(tuple(index.shape) + tuple(src.shape[1:]))


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """out[k] = sum of src[n] over n with index[n] == k.

    src: (n, *feature); index: (n,) int64 in [0, dim_size); returns (dim_size, *feature).
    Differentiable in ``src`` (``index_add``), including double backward. Under a graph tracer a
    single target (one frame) is a plain sum: Inductor's C++ code generator with more than one
    OpenMP thread fails on an ``index_add`` into one element (the vectorised atomic add of a
    constant index, torch 2.13).
    """
    if isinstance(dim_size, int) and dim_size == 1 and is_tracing():
        return src.sum(0, keepdim=True)
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add(0, index, src)


def segment_sum(src: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum consecutive segments of ``src`` of lengths ``counts`` (n_segments,) -> (n_segments, *feature)."""
    index = torch.repeat_interleave(torch.arange(len(counts), device=src.device), counts.to(src.device))
    return scatter_sum(src, index, len(counts))
