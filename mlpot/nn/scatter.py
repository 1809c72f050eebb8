"""Segment / scatter sums over a leading index (atoms -> frames, edges -> atoms)."""

from __future__ import annotations

import torch

__all__ = ["scatter_sum", "segment_sum"]


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """out[k] = sum of src[n] over n with index[n] == k.

    src: (n, *feature); index: (n,) int64 in [0, dim_size); returns (dim_size, *feature).
    Differentiable in ``src`` (``index_add``), including double backward.
    """
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add(0, index, src)


def segment_sum(src: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum consecutive segments of ``src`` of lengths ``counts`` (n_segments,) -> (n_segments, *feature)."""
    index = torch.repeat_interleave(torch.arange(len(counts), device=src.device), counts.to(src.device))
    return scatter_sum(src, index, len(counts))
