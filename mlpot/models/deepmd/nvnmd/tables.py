"""NVNMD's mapping tables (DeePMD-kit's ``map.npy``), built from a continuous NVNMD model.

Two lookups replace computation in the quantised descriptor (version 0):

* u = r^2 -> s~ and h~, per centre type t: with r' = clip(r, r_s, r_c), r'' = clip(r, d, r_c),
  s = w(r') / r'', h = s / r'', s~ = (s - davg[t, 0]) / dstd[t, 0], h~ = h / dstd[t, 1], where w is
  the quintic switch and d = 0.5 Å, or min_nbor_dist - 0.1 Å when that is below 0.5 Å; the node
  u = 0 holds the padding row (s~ = -davg/dstd, h~ = 0). u runs over [0, 64] Å^2 (r up to 8 Å) in
  512 steps of 1/8 Å^2.
* s~ -> G (M1 columns), per neighbour type: the embedding net. s~ runs from s_0 =
  floor(256 s_min - 1) / 256 over 16 units: steps of 1/256 on [s_0, s_0 + 1] (rows 0-255) and of
  1/16 on [s_0, s_0 + 16] (rows 256-511), where s_min = min_t(-davg[t,0]/dstd[t,0]).

Each piece is the cubic that matches value and slope at both nodes (Hermite): from values y0, y1
and slopes y0', y1' over a step dx, a = (dx y1' - 2 y1 + dx y0' + 2 y0) / dx^3, b = (3 y1 - dx y1' -
2 dx y0' - 3 y0) / dx^2, c = y0', d = y0. The ``*_grad`` tables hold the same for the slopes (from
second derivatives), as DeePMD-kit writes them. Rows (a, b, c, d) per column, one array per type;
``cfg_u2s`` / ``cfg_s2g`` are the segments [x0, x1, dx, first row, end row].
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np
import torch

from mlpot.nn import smooth_switch
from mlpot.nn.quintic_table import function_derivatives

__all__ = ["build_tables", "s_range"]

U_MAX, U_STEPS = 64.0, 512  # r up to rc_max = 8 Å
S_SPAN, S_STEPS = 16.0, 4096


def _hermite(nodes: np.ndarray, y: np.ndarray, dy: np.ndarray, segments) -> np.ndarray:
    """(rows, 4 * m) coefficients (a, b, c, d per column) of ``segments`` from node values (n, m)."""
    rows = []
    for x0, _, dx, row0, row1 in segments:
        stride = int(round(dx / (nodes[1] - nodes[0])))
        first = int(round((x0 - nodes[0]) / (nodes[1] - nodes[0])))
        index = first + stride * np.arange(int(row1) - int(row0) + 1)
        y0, y1, d0, d1 = y[index[:-1]], y[index[1:]], dy[index[:-1]], dy[index[1:]]
        a = (dx * d1 - 2 * y1 + dx * d0 + 2 * y0) / dx**3
        b = (3 * y1 - dx * d1 - 2 * dx * d0 - 3 * y0) / dx**2
        rows.append(np.stack([a, b, d0, y0], axis=-1).reshape(len(y0), -1))
    return np.concatenate(rows, axis=0)


def s_range(descriptor, min_nbor_dist: float) -> Tuple[float, float]:
    """(s_min, s_max) of s~ over the types: s = 0 and s = w(d)/d at the smallest distance d."""
    davg, dstd = descriptor.davg[:, 0].double(), descriptor.dstd[:, 0].double()
    d = torch.tensor(float(min_nbor_dist), dtype=torch.float64)
    s0 = smooth_switch(d, descriptor.rcut_smth, descriptor.rcut) / d if d > 0.01 else torch.zeros((), dtype=torch.float64)
    return float((-davg / dstd).min()), float(((s0 - davg) / dstd).max())


def build_tables(descriptor, min_nbor_dist: float) -> Dict[str, Any]:
    """The map.npy dictionary of a continuous ``DescriptorSeANvnmd`` (its embedding nets, davg and dstd)."""
    table: Dict[str, Any] = {}
    u = torch.linspace(0.0, U_MAX, U_STEPS + 1, dtype=torch.float64).unsqueeze(1)
    cfg_u2s = [[0.0, U_MAX, U_MAX / U_STEPS, 0, U_STEPS]]
    nodes = u.squeeze(1).numpy()
    d = 0.5 if min_nbor_dist > 0.5 else min_nbor_dist - 0.1
    for name in ("s", "s_grad", "h", "h_grad"):
        table[name] = []
    for t in range(descriptor.n_types):
        davg, dstd = descriptor.davg[t].double(), descriptor.dstd[t].double()
        for name, column in (("s", 0), ("h", 1)):
            def radial(x, column=column):
                r = torch.sqrt(x)
                s = smooth_switch(r.clamp(descriptor.rcut_smth, descriptor.rcut), descriptor.rcut_smth, descriptor.rcut) / r.clamp(d, descriptor.rcut)
                return (s - davg[0]) / dstd[0] if column == 0 else s / r.clamp(d, descriptor.rcut) / dstd[1]
            values = [v.detach().numpy().copy() for v in function_derivatives(radial, u)]
            values[0][0] = (-davg[0] / dstd[0]).item() if column == 0 else 0.0
            values[1][0] = values[2][0] = 0.0
            table[name].append(_hermite(nodes, values[0], values[1], cfg_u2s))
            table[f"{name}_grad"].append(_hermite(nodes, values[1], values[2], cfg_u2s))
    s_min, _ = s_range(descriptor, min_nbor_dist)
    s0 = math.floor(s_min * S_STEPS / S_SPAN - 1) / (S_STEPS / S_SPAN)
    s = (s0 + S_SPAN * torch.arange(S_STEPS + 1, dtype=torch.float64) / S_STEPS).unsqueeze(1)
    step = S_SPAN / S_STEPS
    cfg_s2g = [[s0, s0 + 256 * step, step, 0, 256], [s0, s0 + S_SPAN, 16 * step, 256, 512]]
    table["g"], table["g_grad"] = [], []
    for t in range(descriptor.n_types):
        net = descriptor.embeddings[t]
        values = [v.detach().double().numpy() for v in function_derivatives(lambda x: net(x.to(descriptor.davg.dtype)).double(), s)]
        table["g"].append(_hermite(s.squeeze(1).numpy(), values[0], values[1], cfg_s2g))
        table["g_grad"].append(_hermite(s.squeeze(1).numpy(), values[1], values[2], cfg_s2g))
    table["cfg_u2s"], table["cfg_s2g"] = cfg_u2s, cfg_s2g
    return table

