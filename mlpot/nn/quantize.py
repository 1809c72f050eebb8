"""Software emulation of fixed-point and short-float arithmetic (NVNMD's quantised networks).

Every function keeps the shape and dtype of its input and has a straight-through gradient: the
forward value is the quantised one, the backward is that of the unquantised expression (the
identity for the rounding functions), so quantisation-aware training and forces by autograd work.

* ``fixed_point(x, n, "round"|"floor")``: the nearest (or next lower) multiple of 2^-n
  (a fixed-point number with n fraction bits); e.g. n = 23: 1/3 -> 2796203 / 2^23.
* ``short_float(x, n)``: x with its binary mantissa cut to n bits toward zero (frexp convention,
  mantissa in [0.5, 1)); n = 21 is NVNMD's float of 1 sign, 8 exponent and 20 stored fraction bits.
* ``tanh4(x)``: NVNMD's hardware activation, sign(x) (|x| - |x|^3/4 + |x|^4/16) on |x| <= 2 and
  +-1 beyond; it equals tanh to about 0.03 and has slope 1 at 0 and 0 at |x| = 2.
* ``cubic_table(x, coef, segments)``: piecewise cubic lookup, y = d + t (c + t (b + a t)) with
  t = x - x_k, from rows (a, b, c, d) per output column; ``segments`` rows (x0, x1, dx, row0,
  row1): the first segment with x0 <= x <= x1 is used; x outside them takes the nearest end of
  the last segment.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["fixed_point", "short_float", "tanh4", "cubic_table"]


def _straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y in the forward pass, the gradient of x in the backward one."""
    return x + (y - x).detach()


def fixed_point(x: torch.Tensor, nbit: int, mode: str = "round") -> torch.Tensor:
    """x rounded ("round") or floored ("floor") to a multiple of 2^-nbit; straight-through gradient."""
    scale = float(2 ** int(nbit))
    if mode == "round":
        y = torch.round(x.detach() * scale) / scale
    elif mode == "floor":
        y = torch.floor(x.detach() * scale) / scale
    else:
        raise ValueError(f"mode must be 'round' or 'floor', got {mode!r}")
    return _straight_through(x, y)


def short_float(x: torch.Tensor, nbit: int = 21) -> torch.Tensor:
    """x with an nbit-bit mantissa (cut toward zero); 0 stays 0; straight-through gradient."""
    mantissa, exponent = torch.frexp(x.detach())
    scale = float(2 ** int(nbit))
    y = torch.ldexp(torch.trunc(mantissa * scale) / scale, exponent.to(x.dtype))
    return _straight_through(x, y)


def tanh4(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (a - a^3/4 + a^4/16) with a = min(|x|, 2): a quartic stand-in for tanh."""
    a = x.abs().clamp(max=2.0)
    return torch.sign(x) * (a + a.pow(3) * (a / 16.0 - 0.25))


def cubic_table(x: torch.Tensor, coef: torch.Tensor, segments: Sequence[Sequence[float]],
                variant: Optional[torch.Tensor] = None, slope: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Piecewise cubic lookup: x (n,) -> (n, n_columns) from coef (n_rows, 4 * n_columns), whose
    columns run (a, b, c, d) per output column; differentiable in x: by the cubic's own slope, or,
    with ``slope`` (a table of the same layout for dy/dx), by that table's value.
    ``variant`` (n,) long: several tables stacked in coef, one block of rows per variant, each
    laid out as ``segments`` say; entry i reads block variant[i]."""
    block = max(int(row1) for *_, row1 in segments)
    row = torch.zeros_like(x, dtype=torch.long)
    offset = torch.zeros_like(x)
    chosen = torch.zeros_like(x, dtype=torch.bool)
    last = len(segments) - 1
    for index, (x0, x1, dx, row0, row1) in enumerate(segments):
        inside = ~chosen & ((x >= x0) & (x <= x1) if index < last else torch.ones_like(chosen))
        position = ((x - x0) / dx).clamp(min=0.0)
        k = torch.floor(position.detach()).to(torch.long).clamp(max=int(row1) - int(row0) - 1)
        row = torch.where(inside, k + int(row0), row)
        offset = torch.where(inside, (x - x0 - k.to(x.dtype) * dx).clamp(0.0, dx), offset)
        chosen = chosen | inside
    if variant is not None:
        row = row + variant * block
    if slope is None:
        return _cubic(coef, row, offset)
    offset = offset.detach()
    return _cubic(coef, row, offset) + _cubic(slope, row, offset) * (x - x.detach()).unsqueeze(1)


def _cubic(coef: torch.Tensor, row: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """d + t (c + t (b + a t)) of the rows ``row`` of coef at t = offset: (n, n_columns)."""
    a, b, c, d = coef.reshape(coef.shape[0], -1, 4).index_select(0, row).unbind(-1)
    t = offset.unsqueeze(1)
    return d + t * (c + t * (b + a * t))
