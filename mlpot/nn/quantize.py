"""Software emulation of fixed-point and short-float arithmetic (NVNMD's quantised networks).

Every function keeps the dtype of its input (the elementwise ones its shape) and has a
straight-through gradient: the forward value is the quantised one, the backward is that of the
unquantised expression (the identity for the rounding functions), so quantisation-aware training
and forces by autograd work.

* ``fixed_point(x, n, "round"|"floor")``: the nearest (or next lower) multiple of 2^-n
  (a fixed-point number with n fraction bits); e.g. n = 23: 1/3 -> 2796203 / 2^23.
* ``short_float(x, n)``: x with its binary mantissa cut to n bits toward zero (frexp convention,
  mantissa in [0.5, 1)); n = 21 is NVNMD's float of 1 sign, 8 exponent and 20 stored fraction bits.
* ``float_add``, ``float_mul``, ``float_matmul``, ``fixed_matmul``: NVNMD's short-float sum,
  product and matrix products as DeePMD-kit's ops compute them (``add_flt_nvnmd``,
  ``mul_flt_nvnmd``, ``matmul_flt_nvnmd``, ``matmul_flt2fix_nvnmd``; their results equal those
  ops' on random inputs, probed through DeePMD-kit 3.2's TF ops).
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

__all__ = ["fixed_point", "short_float", "float_add", "float_mul", "float_matmul", "fixed_matmul", "tanh4",
           "tanh4_fixed", "cubic_table"]


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
    return _straight_through(x, _cut(x.detach(), nbit))


def tanh4(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (a - a^3/4 + a^4/16) with a = min(|x|, 2): a quartic stand-in for tanh."""
    a = x.abs().clamp(max=2.0)
    return torch.sign(x) * (a + a.pow(3) * (a / 16.0 - 0.25))


def _exponent(x: torch.Tensor) -> torch.Tensor:
    """frexp exponent E of x (x = m 2^E, m in [0.5, 1)), -100 for 0 (so that 0 never sets a scale)."""
    _, exponent = torch.frexp(x)
    return torch.where(x == 0, torch.full_like(exponent, -100), exponent)


def float_add(a: torch.Tensor, b: torch.Tensor, nbit: int = 21) -> torch.Tensor:
    """NVNMD's short-float sum: a and b cut to nbit-bit mantissas, both truncated (toward zero) to
    the last mantissa bit of the larger exponent, added, the sum cut to nbit bits; gradient of a + b."""
    a_s, b_s = torch.broadcast_tensors(_cut(a.detach(), nbit), _cut(b.detach(), nbit))
    return _straight_through(a + b, _add_cut(a_s, b_s, nbit))


def float_mul(a: torch.Tensor, b: torch.Tensor, nbit: int = 21) -> torch.Tensor:
    """NVNMD's short-float product: both factors and the product cut to nbit-bit mantissas."""
    return _straight_through(a * b, short_float(short_float(a.detach(), nbit) * short_float(b.detach(), nbit), nbit))


def float_matmul(x: torch.Tensor, w: torch.Tensor, nbit: int = 21) -> torch.Tensor:
    """NVNMD's short-float matrix product x @ w (batched over leading dims): every entry of x
    truncated to the mantissa unit of the largest |x| of its matrix (and w of its own), the
    products summed exactly, the result cut to nbit-bit mantissas."""
    def aligned(m):
        m = short_float(m.detach(), nbit)
        unit = torch.ldexp(torch.ones_like(m[..., :1, :1]), (_exponent(m.abs().amax(dim=(-2, -1), keepdim=True)) - nbit).to(m.dtype))
        return torch.trunc(m / unit) * unit
    return _straight_through(x @ w, short_float(aligned(x) @ aligned(w), nbit))


def fixed_matmul(x: torch.Tensor, w: torch.Tensor, nbit: int = 23, mantissa: int = 21) -> torch.Tensor:
    """NVNMD's short-float to fixed-point matrix product x @ w (x (..., n, k), w (..., k, m)): each
    term x_ik w_kj (short floats) truncated toward zero to a multiple of 2^-nbit, the terms summed
    exactly, the sum cut to a ``mantissa``-bit short float. Materialises the (..., n, k, m) terms."""
    x_s, w_s = short_float(x.detach(), mantissa), short_float(w.detach(), mantissa)
    scale = float(2 ** int(nbit))
    terms = torch.trunc(x_s.unsqueeze(-1) * w_s.unsqueeze(-3) * scale).sum(-2) / scale
    return _straight_through(x @ w, short_float(terms, mantissa))


def tanh4_fixed(x: torch.Tensor) -> torch.Tensor:
    """tanh4 as NVNMD's hardware evaluates it (DeePMD-kit's tanh4_flt_nvnmd, probed through its op:
    equal on 20 000 inputs), gradient straight through to ``tanh4``: with f23 / f19 flooring to 23 /
    19 fraction bits and a = |x|, h = f23(a), s = f23(h f19(a)) (a^2), y = f23(s (s/16 - h/4) + h)
    for a < 2, else 1; the sign of x. In 2^-23 units it lies up to a few units below
    f23(tanh4(x)) in magnitude."""
    a = x.detach().abs()
    high = torch.floor(a * 2.0**23) / 2.0**23
    square = torch.floor(high * torch.floor(a * 2.0**19) / 2.0**19 * 2.0**23) / 2.0**23
    value = torch.floor((square * (square * 0.0625 - high * 0.25) + high) * 2.0**23) / 2.0**23
    value = torch.sign(x.detach()) * torch.where(a < 2.0, value, torch.ones_like(value))
    return _straight_through(tanh4(x), value)


def cubic_table(x: torch.Tensor, coef: torch.Tensor, segments: Sequence[Sequence[float]],
                variant: Optional[torch.Tensor] = None, slope: Optional[torch.Tensor] = None,
                hardware: bool = False) -> torch.Tensor:
    """Piecewise cubic lookup: x (n,) -> (n, n_columns) from coef (n_rows, 4 * n_columns), whose
    columns run (a, b, c, d) per output column; differentiable in x: by the cubic's own slope, or,
    with ``slope`` (a table of the same layout for dy/dx), by that table's value.
    ``variant`` (n,) long: several tables stacked in coef, one block of rows per variant, each
    laid out as ``segments`` say; entry i reads block variant[i]. ``hardware``: the value as
    DeePMD-kit's map_flt_nvnmd computes it (the offset t cut to a 17-bit mantissa, the Horner steps
    in ``float_mul`` / ``float_add``), the gradient unchanged."""
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
        y = _cubic(coef, row, offset)
    else:
        y = _cubic(coef, row, offset.detach()) + _cubic(slope, row, offset.detach()) * (x - x.detach()).unsqueeze(1)
    return _straight_through(y, _cubic_hardware(coef, row, offset.detach())) if hardware else y


def _cubic(coef: torch.Tensor, row: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """d + t (c + t (b + a t)) of the rows ``row`` of coef at t = offset: (n, n_columns)."""
    a, b, c, d = coef.reshape(coef.shape[0], -1, 4).index_select(0, row).unbind(-1)
    t = offset.unsqueeze(1)
    return d + t * (c + t * (b + a * t))


_BITS = {torch.float64: (torch.int64, 53, 52, 1023), torch.float32: (torch.int32, 24, 23, 127)}


def _cut(x: torch.Tensor, nbit: int = 21) -> torch.Tensor:
    """``short_float``'s value (no gradient): the low mantissa bits cleared in the IEEE bit pattern
    (DeePMD-kit's FLT_MASK), as frexp / trunc / ldexp for other dtypes."""
    if x.dtype in _BITS and nbit < _BITS[x.dtype][1]:
        int_type, digits, _, _ = _BITS[x.dtype]
        mask = -(1 << (digits - int(nbit)))  # ...111000: clears the low digits - nbit bits
        return (x.contiguous().view(int_type) & mask).view(x.dtype)
    mantissa, exponent = torch.frexp(x)
    return torch.ldexp(torch.trunc(mantissa * float(2 ** nbit)) / float(2 ** nbit), exponent.to(x.dtype))


def _unit(a: torch.Tensor, b: torch.Tensor, nbit: int = 21) -> torch.Tensor:
    """2^(E - nbit), E the larger frexp exponent of a and b (0 counts as the smallest number):
    the last mantissa bit of the larger of two nbit-bit short floats."""
    if a.dtype in _BITS:
        int_type, _, fraction, _ = _BITS[a.dtype]
        field = torch.maximum((a.contiguous().view(int_type) >> fraction) & (2 * _BITS[a.dtype][3] + 1),
                              (b.contiguous().view(int_type) >> fraction) & (2 * _BITS[a.dtype][3] + 1))
        return ((field - (nbit - 1)).clamp(min=1) << fraction).view(a.dtype)
    return torch.ldexp(torch.ones_like(a), (torch.maximum(_exponent(a), _exponent(b)) - nbit).to(a.dtype))


def _add_cut(a: torch.Tensor, b: torch.Tensor, nbit: int = 21) -> torch.Tensor:
    """``float_add``'s value for a, b already cut to nbit bits."""
    unit = _unit(a, b, nbit)
    return _cut(torch.trunc(a / unit) * unit + torch.trunc(b / unit) * unit, nbit)


def _cubic_hardware(coef: torch.Tensor, row: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``_cubic`` in NVNMD's short-float arithmetic (``float_mul`` / ``float_add`` steps; no gradient)."""
    with torch.no_grad():
        a, b, c, d = _cut(coef.detach()).reshape(coef.shape[0], -1, 4).index_select(0, row).unbind(-1)
        t = _cut(offset, 17).unsqueeze(1)
        y = _add_cut(b, _cut(a * t))
        y = _add_cut(c, _cut(y * t))
        return _add_cut(d, _cut(y * t))
