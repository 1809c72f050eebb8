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

Version 1 (``build_tables_v1``, se_atten): one u -> (s, h) table of the raw s = w(r')/r'' and
h = s/r'' (u = 0: 0; the centre type's 1/dstd is applied after it, from ``dstd_inv``), one s~ -> G_s
table (the s~ net) with s_0 = 0 (davg is 0, so s~ >= 0), and the type tables ``t_ebd`` (n_types
+ 1, 8: the type embeddings, padding row 0) and ``gt`` ((n_types + 1)^2, M1: 1 + N_t([tebd(t_j),
tebd(t_i)]) in row t_i (n_types + 1) + t_j), ``davg_opp`` = -davg and ``dstd_inv`` = 1/dstd
(n_types, 4).

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

__all__ = ["build_tables", "build_tables_v1", "s_range"]

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


def _u_tables(descriptor, min_nbor_dist: float, stats) -> Dict[str, Any]:
    """u -> s~, h~ tables (``s``, ``s_grad``, ``h``, ``h_grad``), one per (davg_s, dstd_s, dstd_h) of ``stats``."""
    table: Dict[str, Any] = {name: [] for name in ("s", "s_grad", "h", "h_grad")}
    u = torch.linspace(0.0, U_MAX, U_STEPS + 1, dtype=torch.float64).unsqueeze(1)
    cfg_u2s = [[0.0, U_MAX, U_MAX / U_STEPS, 0, U_STEPS]]
    nodes = u.squeeze(1).numpy()
    d = 0.5 if min_nbor_dist > 0.5 else min_nbor_dist - 0.1
    for avg, std_s, std_h in stats:
        for name, column in (("s", 0), ("h", 1)):
            def radial(x, column=column):
                r = torch.sqrt(x)
                s = smooth_switch(r.clamp(descriptor.rcut_smth, descriptor.rcut), descriptor.rcut_smth, descriptor.rcut) / r.clamp(d, descriptor.rcut)
                return (s - avg) / std_s if column == 0 else s / r.clamp(d, descriptor.rcut) / std_h
            values = [v.detach().numpy().copy() for v in function_derivatives(radial, u)]
            values[0][0] = (-avg / std_s).item() if column == 0 else 0.0
            values[1][0] = values[2][0] = 0.0
            table[name].append(_hermite(nodes, values[0], values[1], cfg_u2s))
            table[f"{name}_grad"].append(_hermite(nodes, values[1], values[2], cfg_u2s))
    table["cfg_u2s"] = cfg_u2s
    return table


def _g_tables(nets, s0: float, dtype: torch.dtype) -> Dict[str, Any]:
    """s~ -> G tables (``g``, ``g_grad``) of each embedding net over [s0, s0 + 16]."""
    s = (s0 + S_SPAN * torch.arange(S_STEPS + 1, dtype=torch.float64) / S_STEPS).unsqueeze(1)
    step = S_SPAN / S_STEPS
    cfg_s2g = [[s0, s0 + 256 * step, step, 0, 256], [s0, s0 + S_SPAN, 16 * step, 256, 512]]
    table: Dict[str, Any] = {"g": [], "g_grad": [], "cfg_s2g": cfg_s2g}
    nodes = s.squeeze(1).numpy()
    for net in nets:
        values = [v.detach().double().numpy() for v in function_derivatives(lambda x: net(x.to(dtype)).double(), s)]
        table["g"].append(_hermite(nodes, values[0], values[1], cfg_s2g))
        table["g_grad"].append(_hermite(nodes, values[1], values[2], cfg_s2g))
    return table


def build_tables(descriptor, min_nbor_dist: float) -> Dict[str, Any]:
    """The map.npy dictionary of a continuous ``DescriptorSeANvnmd`` (its embedding nets, davg and dstd)."""
    davg, dstd = descriptor.davg.double(), descriptor.dstd.double()
    table = _u_tables(descriptor, min_nbor_dist, [(davg[t, 0], dstd[t, 0], dstd[t, 1]) for t in range(descriptor.n_types)])
    s_min, _ = s_range(descriptor, min_nbor_dist)
    s0 = math.floor(s_min * S_STEPS / S_SPAN - 1) / (S_STEPS / S_SPAN)
    table.update(_g_tables(descriptor.embeddings, s0, descriptor.davg.dtype))
    return table


def build_tables_v1(descriptor, min_nbor_dist: float) -> Dict[str, Any]:
    """The map.npy dictionary of a continuous ``DescriptorSeAttenNvnmd`` (version 1, module docstring)."""
    one = torch.ones((), dtype=torch.float64)
    table = _u_tables(descriptor, min_nbor_dist, [(0.0 * one, one, one)])
    table.update(_g_tables([descriptor.embedding], 0.0, descriptor.davg.dtype))
    with torch.no_grad():
        t_ebd = descriptor.type_embedding.table()
        rows = t_ebd.shape[0]
        pairs = torch.cat([t_ebd.unsqueeze(0).expand(rows, rows, -1), t_ebd.unsqueeze(1).expand(rows, rows, -1)], dim=-1)
        gt = descriptor.type_pair_embedding(pairs.reshape(rows * rows, -1)) + 1.0
    table.update(t_ebd=t_ebd.double().numpy(), gt=gt.double().numpy(),
                 davg_opp=-descriptor.davg.double().numpy(), dstd_inv=1.0 / descriptor.dstd.double().numpy())
    return table
