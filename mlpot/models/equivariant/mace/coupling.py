"""Generalised Clebsch-Gordan coupling tensors U of MACE's symmetric contraction (MACE paper, Eq. 10).

For node features x (D,) made of one copy of each irrep in ``irreps`` (D = sum of their dimensions,
e.g. 0e + 1o + 2e + 3o: D = 16), the degree-nu product basis of output irrep L is

    B_{M,k} = sum_{i_1..i_nu} U[M, i_1, ..., i_nu, k] x_{i_1} ... x_{i_nu},

one column k per coupling path. A path couples the nu inputs left to right: (ir_1 x ir_2) -> ir_12,
(ir_12 x ir_3) -> ir_123, ... -> L, each step with the Wigner 3j symbol of e3nn (``o3.wigner_3j``)
scaled by sqrt(2 l_out + 1) ("component" normalisation). Paths are ordered as mace-torch orders
them: recursion over the left paths, then over the right input irrep, then over the coupled irrep
by increasing l; at every level the list is sorted stably by the coupled irrep (l, then parity).
For correlation 4 the intermediate irreps are restricted to l < 12 with parity (-1)^l, as
mace-torch does; other correlations keep every intermediate irrep.

The coefficients match mace-torch's ``U_matrix_real`` up to the sign of some columns: e3nn 0.4.4
and 0.6 fix the sign of Wigner 3j symbols with odd l_1 + l_2 + l_3 differently, and paths through
an intermediate irrep of unnatural parity use two of them. A column sign is a change of basis that
the weights absorb, so a fresh model is the same function space; a model read from mace-torch
files brings its own U tensors (they are buffers of its state). Written by hand: e3nn has no
symmetric-power coupling tensors.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from e3nn import o3

__all__ = ["coupling_paths", "u_matrix", "path_count"]

Path = Tuple[o3.Irrep, torch.Tensor]  # (coupled irrep, tensor (ir.dim, D, ..., D))


def _natural_filter(correlation: int) -> Optional[List[o3.Irrep]]:
    """Intermediate irreps allowed (mace-torch restricts them for correlation 4 only)."""
    if correlation == 4:
        return [o3.Irrep(l, 1 if l % 2 == 0 else -1) for l in range(12)]
    return None


def coupling_paths(irreps: Sequence[o3.Irrep], correlation: int, dtype: torch.dtype = torch.float64,
                   allowed: Optional[List[o3.Irrep]] = None, final: Optional[o3.Irrep] = None) -> List[Path]:
    """Every coupling path of ``correlation`` copies of the irreps list (one copy each), in mace order
    (only those ending in ``final`` when given: the order among them is unchanged).

    Returns (irrep, tensor) pairs; the tensor has shape (irrep.dim,) + (D,) * correlation.
    """
    irreps = [o3.Irrep(ir) for ir in irreps]
    dim = sum(ir.dim for ir in irreps)
    if correlation == 1:
        eye = torch.eye(dim, dtype=dtype)
        paths, start = [], 0
        for ir in irreps:
            paths.append((ir, eye[start:start + ir.dim]))
            start += ir.dim
        return paths
    paths = []
    for ir_left, left in coupling_paths(irreps, correlation - 1, dtype, allowed):
        left_flat = left.reshape(ir_left.dim, -1)
        start = 0
        for ir in irreps:
            for ir_out in ir_left * ir:
                if (allowed is not None and ir_out not in allowed) or (final is not None and ir_out != final):
                    continue
                w3j = o3.wigner_3j(ir_out.l, ir_left.l, ir.l, dtype=dtype) * ir_out.dim ** 0.5
                coupled = torch.einsum("jk,ijl->ikl", left_flat, w3j)
                tensor = torch.zeros((ir_out.dim,) + (dim,) * correlation, dtype=dtype)
                tensor[..., start:start + ir.dim] = coupled.reshape((ir_out.dim,) + (dim,) * (correlation - 1) + (ir.dim,))
                paths.append((ir_out, tensor))
            start += ir.dim
    return sorted(paths, key=lambda path: (path[0].l, path[0].p))


def u_matrix(irreps: Sequence[o3.Irrep], irrep_out: o3.Irrep, correlation: int,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """U of output irrep ``irrep_out`` at degree ``correlation``: (dim_out, D, ..., D, n_paths).

    The leading axis is dropped when dim_out = 1 (mace-torch's layout). Without any path the
    tensor has one column of zeros.
    """
    irrep_out = o3.Irrep(irrep_out)
    dim = sum(o3.Irrep(ir).dim for ir in irreps)
    paths = coupling_paths(irreps, correlation, dtype, _natural_filter(correlation), final=irrep_out)
    columns = [tensor for ir, tensor in paths if ir == irrep_out]
    if columns:
        out = torch.stack(columns, dim=-1)
    else:
        out = torch.zeros((irrep_out.dim,) + (dim,) * correlation + (1,), dtype=dtype)
    return out[0] if irrep_out.dim == 1 else out


def path_count(u: torch.Tensor) -> int:
    """Number of coupling paths (columns) of a U tensor; 0 when it is all zeros."""
    return 0 if not bool(torch.any(u != 0)) else int(u.shape[-1])
