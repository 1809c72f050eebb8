"""Attention pieces of the DPA-2 repformer layer (Zhang et al., npj Comput Mater 10, 293 (2024)).

All act on the neighbour slots of each centre atom: n atoms, s = nsel slots, ``mask`` (n, s) True
on occupied slots, ``sw`` (n, s) the smooth switch w(r) (0 on empty slots). With ``smooth`` the
logits l become (l + 20) sw sw' - 20 (a neighbour leaving the cutoff fades out of the softmax) and
the weights are multiplied by the switches again; otherwise empty slots get -inf. The shift 20 is
the one of se_atten (``se_atten.ATTENTION_SHIFT``).

* :class:`PairAttentionMap` (gated self-attention among the neighbours): per head h,
  A_h = softmax(q_h k_h^T / sqrt(d)) [⊙ (h2 h2^T), ``has_gate``] ⊙ (h2 h2^T) / sqrt(3), with q, k
  from g2 (n, s, g2_dim) and h2 (n, s, 3) the equivariant pair features -> (n, heads, s, s).
* :class:`PairAttentionValues`: g2' = W_o [A_h (g2 W_v,h)]_h (concatenated heads) -> (n, s, g2_dim).
* :class:`PairAttentionVectors`: h2' = sum_h w_h A_h h2 -> (n, s, 3).
* :class:`NeighborToAtomAttention` (local attention of the centre g1 on its neighbours' g1):
  q from g1_i, k and v from g1_j, per head, heads concatenated and mapped back -> (n, g1_dim).
"""

from __future__ import annotations

from typing import Optional

import torch

from mlpot.models.deepmd.descriptors.se_atten import ATTENTION_SHIFT
from mlpot.nn import MLPLayer

__all__ = ["PairAttentionMap", "PairAttentionValues", "PairAttentionVectors", "NeighborToAtomAttention",
           "masked_softmax"]


def masked_softmax(logits: torch.Tensor, key_mask: torch.Tensor, key_sw: torch.Tensor, query_sw: Optional[torch.Tensor],
                   smooth: bool) -> torch.Tensor:
    """Softmax over the last axis (keys) with DPA-2's smooth or masked rule.

    logits (..., keys); key_mask, key_sw broadcast to logits; query_sw broadcasts to logits or is
    None (one query per atom). Returns weights, zero on empty keys; an atom with no neighbour at all
    gets zero weights (and finite gradients).
    """
    sw = key_sw if query_sw is None else key_sw * query_sw
    if smooth:
        weights = torch.softmax((logits + ATTENTION_SHIFT) * sw - ATTENTION_SHIFT, dim=-1)
        return weights.masked_fill(~key_mask, 0.0) * sw
    any_key = key_mask.any(dim=-1, keepdim=True)
    logits = logits.masked_fill(~key_mask & any_key, float("-inf"))
    return torch.softmax(logits, dim=-1).masked_fill(~key_mask, 0.0)


class PairAttentionMap(torch.nn.Module):
    """Gated multi-head attention weights among the neighbour slots of each atom (module docstring).

    forward(g2 (n, s, g2_dim), h2 (n, s, 3), mask (n, s) bool, sw (n, s)) -> (n, heads, s, s).
    """

    def __init__(self, g2_dim: int, hidden: int, heads: int, has_gate: bool, smooth: bool, *, trainable: bool = True,
                 dtype: torch.dtype = torch.float64, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.hidden, self.heads, self.has_gate, self.smooth = int(hidden), int(heads), bool(has_gate), bool(smooth)
        self.mapqk = MLPLayer(g2_dim, 2 * self.hidden * self.heads, None, bias=False, trainable=trainable, dtype=dtype,
                              generator=generator)

    def forward(self, g2, h2, mask, sw):
        n, s, _ = g2.shape
        # feature axis laid out (hidden, 2 heads): queries are the first `heads` of the second axis
        qk = self.mapqk(g2).view(n, s, self.hidden, 2 * self.heads).permute(0, 3, 1, 2)
        q, k = qk.split(self.heads, dim=1)  # (n, heads, s, hidden)
        logits = torch.matmul(q, k.transpose(-1, -2)) / self.hidden ** 0.5
        h2h2 = torch.matmul(h2, h2.transpose(-1, -2)).unsqueeze(1)  # (n, 1, s, s)
        if self.has_gate:
            logits = logits * h2h2
        weights = masked_softmax(logits, mask[:, None, None, :], sw[:, None, None, :], sw[:, None, :, None], self.smooth)
        weights = weights.masked_fill(~mask[:, None, :, None], 0.0)
        return weights * h2h2 / 3.0 ** 0.5


class PairAttentionValues(torch.nn.Module):
    """g2 update from the attention weights: forward(weights (n, heads, s, s), g2 (n, s, g2_dim)) -> (n, s, g2_dim)."""

    def __init__(self, g2_dim: int, heads: int, *, trainable: bool = True, dtype: torch.dtype = torch.float64,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.heads = int(heads)
        net = dict(trainable=trainable, dtype=dtype, generator=generator)
        self.mapv = MLPLayer(g2_dim, g2_dim * self.heads, None, bias=False, **net)
        self.head_map = MLPLayer(g2_dim * self.heads, g2_dim, None, **net)

    def forward(self, weights, g2):
        n, s, width = g2.shape
        values = self.mapv(g2).view(n, s, width, self.heads).permute(0, 3, 1, 2)  # (n, heads, s, g2_dim)
        out = torch.matmul(weights, values).permute(0, 2, 3, 1).reshape(n, s, width * self.heads)
        return self.head_map(out)


class PairAttentionVectors(torch.nn.Module):
    """h2 update: forward(weights (n, heads, s, s), h2 (n, s, 3)) -> sum_h w_h A_h h2, (n, s, 3)."""

    def __init__(self, heads: int, *, trainable: bool = True, dtype: torch.dtype = torch.float64,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.head_map = MLPLayer(int(heads), 1, None, bias=False, trainable=trainable, dtype=dtype, generator=generator)

    def forward(self, weights, h2):
        out = torch.matmul(weights, h2.unsqueeze(1)).permute(0, 2, 3, 1)  # (n, s, 3, heads)
        return self.head_map(out).squeeze(-1)


class NeighborToAtomAttention(torch.nn.Module):
    """Local attention of each atom on its neighbours (module docstring).

    forward(g1 (n, g1_dim), gg1 (n, s, g1_dim) neighbour g1, mask (n, s), sw (n, s)) -> (n, g1_dim).
    """

    def __init__(self, g1_dim: int, hidden: int, heads: int, smooth: bool, *, trainable: bool = True,
                 dtype: torch.dtype = torch.float64, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.g1_dim, self.hidden, self.heads, self.smooth = int(g1_dim), int(hidden), int(heads), bool(smooth)
        net = dict(trainable=trainable, dtype=dtype, generator=generator)
        self.mapq = MLPLayer(g1_dim, self.hidden * self.heads, None, bias=False, **net)
        self.mapkv = MLPLayer(g1_dim, (self.hidden + self.g1_dim) * self.heads, None, bias=False, **net)
        self.head_map = MLPLayer(self.g1_dim * self.heads, g1_dim, None, **net)

    def forward(self, g1, gg1, mask, sw):
        n, s, _ = gg1.shape
        q = self.mapq(g1).view(n, self.hidden, self.heads).transpose(1, 2)  # (n, heads, hidden)
        kv = self.mapkv(gg1).view(n, s, self.hidden + self.g1_dim, self.heads).permute(0, 3, 1, 2)
        k, v = kv.split([self.hidden, self.g1_dim], dim=-1)  # (n, heads, s, hidden), (n, heads, s, g1_dim)
        logits = torch.matmul(k, q.unsqueeze(-1)).squeeze(-1) / self.hidden ** 0.5  # (n, heads, s)
        weights = masked_softmax(logits, mask.unsqueeze(1), sw.unsqueeze(1), None, self.smooth)
        out = torch.matmul(weights.unsqueeze(-2), v).squeeze(-2)  # (n, heads, g1_dim)
        return self.head_map(out.reshape(n, self.heads * self.g1_dim))
