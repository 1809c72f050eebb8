"""Piecewise quintic Hermite tables of vector functions of one variable (model compression).

A :class:`QuinticTable` holds ``n_variants`` functions f_v: R -> R^width on one grid of knots
x_0 < ... < x_n. On each interval [x_i, x_i + h_i] the table is the fifth-order polynomial in
t = x - x_i matching value, first and second derivative of f_v at both knots (quintic Hermite), so
it is C^2 across knots and its error is O(h^6 f^(6)). The grid has three uniform parts:

* ``[lower_ext, lower)`` with the coarse step (optional: only when a lower extrapolation is asked),
* ``[lower, upper)`` with the fine step,
* ``[upper, upper_ext]`` with the coarse step (the extrapolation region).

Outside ``[lower_ext, upper_ext]`` the table is constant (its end value; derivative 0).

Evaluation is one fused gather-and-sum (``embedding_bag``) of the six coefficient rows of each
input's interval with weights t^p (f' takes the five rows p >= 1, weights p t^(p-1)); the
interval, the rows and the weights of an input (:meth:`QuinticTable.lookup`) are found once for
f and f'. :meth:`QuinticTable.forward` returns the values (differentiable
in x: a custom autograd function computes f and f' and keeps only f'); :meth:`QuinticTable.contract`
fuses the table with a contraction ``sum_k left[a, k, :]^T f(x[a, k])`` (a: rows, k: columns of one
row): it keeps f(x) and the lookup of x, and its backward pass evaluates f' in chunks of rows, so neither f'(x) of all
inputs nor the (rows, k, w, width) products are held. Both give first derivatives only (second
derivatives through them raise): tables are for inference.

Storage: buffers ``coefficients`` (n_variants * n, 6, width) (row v * n + i is interval i of variant
v, then the powers 0..5) and ``knots`` (n + 1,); ``grid`` (9,) = (lower_ext, lower, upper, upper_ext, fine
step, coarse step, n_lower, n_fine, n_upper); knots and grid in float64, the coefficients in the
model's precision (computed in float64). They are resized from a state dict on
loading, so a table built empty loads any table's content.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Tuple

import torch

from mlpot.errors import ConfigError
from mlpot.nn.gathered_contraction import no_double_backward, slope_gradient, weighted_row_sum
from mlpot.nn.tracing import is_tracing

__all__ = ["QuinticTable", "quintic_hermite_coefficients", "function_derivatives"]

# inputs per chunk of the contraction's backward pass (temporaries ~ rows x width x 8 B); on the water
# example's contraction (192 atoms) 8192 took 15.9 ms against 17.5 ms for 2048 (2026-12-08, load 4)
CHUNK_ROWS = 8192


def quintic_hermite_coefficients(values: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                                 steps: torch.Tensor) -> torch.Tensor:
    """Coefficients a_0..a_5 of the quintic Hermite polynomials of the intervals between knots.

    values, first, second: f, f', f'' at the n + 1 knots, (n + 1, width); steps: interval lengths
    (n,). Returns (6, n, width): p_i(t) = sum_p a_p t^p on [0, steps_i] matches f, f', f'' at both ends.
    """
    h = steps.unsqueeze(1)
    y0, y1, d0, d1, s0, s1 = values[:-1], values[1:], first[:-1], first[1:], second[:-1], second[1:]
    dy = y1 - y0
    a3 = (20.0 * dy - (8.0 * d1 + 12.0 * d0) * h - (3.0 * s0 - s1) * h * h) / (2.0 * h ** 3)
    a4 = (-30.0 * dy + (14.0 * d1 + 16.0 * d0) * h + (3.0 * s0 - 2.0 * s1) * h * h) / (2.0 * h ** 4)
    a5 = (12.0 * dy - 6.0 * (d1 + d0) * h - (s0 - s1) * h * h) / (2.0 * h ** 5)
    return torch.stack([y0, d0, 0.5 * s0, a3, a4, a5])


def function_derivatives(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """f, f', f'' of a function of one variable applied row-wise: x (n,) or (n, 1) -> three (n, width)
    tensors without a graph (forward-mode differentiation, exact for any differentiable torch function)."""
    from torch.func import jvp

    ones = torch.ones_like(x)

    def first(z):
        return jvp(function, (z,), (ones,))[1]

    values = function(x)
    first_values, second_values = jvp(first, (x,), (ones,))
    return values.detach(), first_values.detach(), second_values.detach()


_FIRST_DERIVATIVES_ONLY = no_double_backward(
    "compressed (tabulated) embedding nets give first derivatives only: second derivatives (Hessians, "
    "training) need the uncompressed model")


class _TableValues(torch.autograd.Function):
    """f(x) from the table, (rows, width); saves f'(x) for the backward pass (first derivatives only)."""

    @staticmethod
    def forward(ctx, x, table, variant):
        values, derivative = table.evaluate(x, variant, derivative=True)
        ctx.save_for_backward(derivative)
        return values

    @staticmethod
    @_FIRST_DERIVATIVES_ONLY
    def backward(ctx, grad):
        (derivative,) = ctx.saved_tensors
        return (grad * derivative).sum(-1), None, None


def _input_gradient(bags, slope_weights, left, grad, table) -> torch.Tensor:
    """d/dx of sum(grad * contraction) for rows (rows, k) of inputs, given their ``QuinticTable.lookup``
    (bags[:, 1:] and slope weights, flat): sum_w left[a,k,w] sum_m grad[a,w,m] f'(x[a,k])_m, the
    width m summed first (a matmul)."""
    derivative = table.bag_sum(bags, slope_weights)
    return slope_gradient(derivative.view(left.shape[0], left.shape[1], -1), left, grad)


def _traced_input_gradient(bags, slope_weights, left, grad, table) -> torch.Tensor:
    """``_input_gradient`` under a graph tracer, as one sum Inductor fuses into a loop:
    sum_m f'(x[a,k])_m sum_w left[a,k,w] grad[a,w,m], the derivative's gathered coefficient rows
    inline (no f'(x) tensor, no bmm)."""
    derivative = table.bag_sum(bags, slope_weights).view(left.shape[0], left.shape[1], -1)
    projected = (left.unsqueeze(3) * grad.unsqueeze(1)).sum(2)  # (rows, k, width)
    return (derivative * projected).sum(2)


class _TableContraction(torch.autograd.Function):
    """out[a] = sum_k left[a, k, :]^T f(x[a, k]), (rows, w, width). f(x) and the table lookup of x are
    kept for the backward pass, which evaluates f'(x) in chunks of rows (the chunk's temporaries stay
    in cache) without locating x again."""

    @staticmethod
    def forward(ctx, x, left, table, variant):
        n_rows, n_cols, _ = left.shape
        bags, t_powers, slope_weights = table.lookup(x, variant)
        values = table.bag_sum(bags, t_powers).view(n_rows, n_cols, table.width)
        ctx.table = table
        ctx.save_for_backward(left, values, bags[:, 1:].contiguous(), slope_weights)
        return torch.bmm(left.transpose(1, 2), values)

    @staticmethod
    @_FIRST_DERIVATIVES_ONLY
    def backward(ctx, grad):
        left, values, bags, slope_weights = ctx.saved_tensors
        table = ctx.table
        grad_left = torch.bmm(values, grad.transpose(1, 2)) if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_left, None, None
        n_rows, n_cols, _ = left.shape
        if is_tracing():  # a graph tracer (mlpot compile): one chunk, no loop over a symbolic size
            return _traced_input_gradient(bags, slope_weights, left, grad, table), grad_left, None, None
        grad_x = left.new_empty(n_rows, n_cols)
        step = max(1, CHUNK_ROWS // max(n_cols, 1))
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            flat = slice(start * n_cols, stop * n_cols)
            grad_x[start:stop] = _input_gradient(bags[flat], slope_weights[flat], left[start:stop], grad[start:stop],
                                                 table)
        return grad_x, grad_left, None, None


class QuinticTable(torch.nn.Module):
    """Tables of ``n_variants`` functions R -> R^width on one grid (see the module docstring).

    ``check_frequency`` > 0: every that many evaluations, warn when inputs leave [lower, upper]
    (the fine table) or [lower_ext, upper_ext] (then clamped); ``name`` labels the warning.
    """

    def __init__(self, width: int, n_variants: int = 1, dtype: torch.dtype = torch.float64, name: str = "table",
                 check_frequency: int = -1):
        super().__init__()
        self.width, self.n_variants, self.name = int(width), int(n_variants), name
        self.check_frequency, self._calls = int(check_frequency), 0
        self.training = False  # for inference only: evaluating in training mode is an error
        self.register_buffer("coefficients", torch.zeros(0, 6, self.width, dtype=dtype))
        self.register_buffer("knots", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("grid", torch.zeros(9, dtype=torch.float64))
        self._read_grid()

    # ---- building -------------------------------------------------------------------------------
    def build(self, functions, lower: float, upper: float, step: float, coarse_step: float, extrapolate: float,
              extrapolate_lower: bool = False) -> None:
        """Tabulate ``functions`` (one callable x (n,) float64 -> (n, width) per variant) on
        [lower, upper] with ``step``, then up to extrapolate * upper (and down to extrapolate * lower
        when ``extrapolate_lower``) with ``coarse_step``."""
        if len(functions) != self.n_variants:
            raise ValueError(f"{self.name}: {self.n_variants} functions expected, got {len(functions)}")
        if not (upper > lower and step > 0 and coarse_step > 0):
            raise ValueError(f"{self.name}: bad table range [{lower}, {upper}] or steps {step}, {coarse_step}")
        n_fine = max(1, math.ceil((upper - lower) / step - 1e-9))
        upper = lower + n_fine * step
        n_upper = max(0, math.ceil((extrapolate * upper - upper) / coarse_step - 1e-9))
        n_lower = max(0, math.ceil((lower - extrapolate * lower) / coarse_step - 1e-9)) if extrapolate_lower else 0
        lower_ext = lower - n_lower * coarse_step
        knots = torch.cat([lower_ext + coarse_step * torch.arange(n_lower, dtype=torch.float64),
                           lower + step * torch.arange(n_fine, dtype=torch.float64),
                           upper + coarse_step * torch.arange(n_upper + 1, dtype=torch.float64)])
        dtype = self.coefficients.dtype
        tables = []
        for function in functions:
            values, first, second = function_derivatives(function, knots)  # float64 (functions of float64 inputs)
            tables.append(quintic_hermite_coefficients(values.double(), first.double(), second.double(), knots.diff()))
        self.coefficients = torch.cat(tables, dim=1).transpose(0, 1).to(dtype).contiguous()
        self.knots = knots
        self.grid = torch.tensor([lower_ext, lower, upper, upper + n_upper * coarse_step, step, coarse_step,
                                  n_lower, n_fine, n_upper], dtype=torch.float64)
        self._read_grid()

    def _read_grid(self) -> None:
        g = self.grid.tolist()
        self.lower_ext, self.lower, self.upper, self.upper_ext, self.step, self.coarse_step = g[:6]
        self.n_lower, self.n_fine, self.n_upper = (int(v) for v in g[6:])
        self.n_intervals = self.n_lower + self.n_fine + self.n_upper

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("coefficients", "knots", "grid"):  # a table of any size loads into an empty one
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], dtype=getattr(self, name).dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._read_grid()

    def _apply(self, fn, recurse=True):  # .to(device) / .double(): the knots and grid stay float64
        result = super()._apply(fn, recurse)
        self.knots, self.grid = self.knots.double(), self.grid.double()
        return result

    # ---- evaluation -----------------------------------------------------------------------------
    def locate(self, x: torch.Tensor, variant: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(coefficient row (n,), t = x - knot (n, 1), inside (n, 1) bool) of x (any shape, flattened);
        variant: (x.shape[0],) index of the function per leading row (None: variant 0)."""
        if self.n_intervals == 0:
            raise RuntimeError(f"{self.name}: empty table (a compressed model's tables come from its file; "
                               "compress a trained model with mlpot compress)")
        flat = x.reshape(-1)
        clamped = flat.clamp(self.lower_ext, self.upper_ext)
        fine = self.n_lower + torch.floor((clamped - self.lower) / self.step)
        below = torch.floor((clamped - self.lower_ext) / self.coarse_step)
        above = self.n_lower + self.n_fine + torch.floor((clamped - self.upper) / self.coarse_step)
        index = torch.where(clamped < self.lower, below, torch.where(clamped < self.upper, fine, above))
        index = index.to(torch.long).clamp_(0, self.n_intervals - 1)
        t = (clamped - self.knots.index_select(0, index).to(x.dtype)).unsqueeze(1)
        if variant is not None and self.n_variants > 1:
            offsets = (variant * self.n_intervals).unsqueeze(1).expand(variant.shape[0], flat.shape[0] // variant.shape[0])
            index = index + offsets.reshape(-1)
        inside = ((flat >= self.lower_ext) & (flat <= self.upper_ext)).unsqueeze(1)
        return index, t, inside

    def lookup(self, x: torch.Tensor, variant: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What ``evaluate`` needs of x, computed once: (bags (n, 6) rows 6 * interval + power of the
        coefficient table, t^0..t^5 (n, 6), slope weights p t^(p-1) for p = 1..5 (n, 5), 0 outside
        the table), n = x.numel(); a function of x only (no graph)."""
        index, t, inside = self.locate(x, variant)
        bags = index.unsqueeze(1) * 6 + torch.arange(6, device=x.device)
        t_powers = torch.cat([torch.ones_like(t), t.expand(-1, 5).cumprod(1)], dim=1)  # (n, 6): t^0 .. t^5
        factors = torch.arange(1, 6, dtype=t.dtype, device=x.device)
        return bags, t_powers, t_powers[:, :5] * factors * inside.to(t.dtype)  # a_0 drops out of f'

    def bag_sum(self, bags: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_p weights[:, p] * coefficient row bags[:, p] -> (n, width): f with the t powers of
        ``lookup``, f' with its slope weights and ``bags[:, 1:]``. A fused gather and sum that never
        holds the gathered rows: on CPU the product of a CSR matrix (row j: ``weights[j]`` at columns
        ``bags[j]``) and the coefficient table (MKL's sparse x dense kernel, 13 % faster than
        ``embedding_bag`` in float64 on the water example's contraction), else (other devices, graph
        tracers) one ``embedding_bag``. Same sums, in another order (rounding)."""
        return weighted_row_sum(bags, weights, self.coefficients.view(-1, self.width))  # row 6 * interval + power

    def evaluate(self, x: torch.Tensor, variant: Optional[torch.Tensor] = None, derivative: bool = False,
                 values: bool = True):
        """f(x) (x.numel(), width), or (f(x) or None, f'(x)) when ``derivative`` (f' is 0 outside the table)."""
        bags, t_powers, slope_weights = self.lookup(x, variant)
        out = self.bag_sum(bags, t_powers) if values else None
        if not derivative:
            return out
        return out, self.bag_sum(bags[:, 1:].contiguous(), slope_weights)

    def _check(self, x: torch.Tensor) -> None:
        if self.training:  # its autograd functions give no second derivatives: no force-trained parameters
            raise ConfigError(f"{self.name}: a compressed model is for inference (eval mode); train the model "
                              "before compression", key="model/compress")
        self._calls += 1
        if self.check_frequency <= 0 or is_tracing() or self._calls % self.check_frequency or x.numel() == 0:
            return
        low, high = float(x.detach().min()), float(x.detach().max())
        if low < self.lower_ext or high > self.upper_ext:
            warnings.warn(f"{self.name}: input range [{low:.4g}, {high:.4g}] leaves the table "
                          f"[{self.lower_ext:.4g}, {self.upper_ext:.4g}]: values are clamped there", RuntimeWarning)
        elif low < self.lower or high > self.upper:
            warnings.warn(f"{self.name}: input range [{low:.4g}, {high:.4g}] leaves the fine table "
                          f"[{self.lower:.4g}, {self.upper:.4g}] (coarse extrapolation table used)", RuntimeWarning)

    def forward(self, x: torch.Tensor, variant: Optional[torch.Tensor] = None) -> torch.Tensor:
        """f(x): x (..., 1) -> (..., width), like an embedding net of one input; variant (x.shape[0],)."""
        self._check(x)
        return _TableValues.apply(x.reshape(-1), self, variant).view(x.shape[:-1] + (self.width,))

    def contract(self, x: torch.Tensor, left: torch.Tensor, variant: Optional[torch.Tensor] = None) -> torch.Tensor:
        """sum_k left[a, k, :]^T f(x[a, k]): x (rows, k), left (rows, k, w) -> (rows, w, width);
        variant (rows,) picks the function per row (None: variant 0)."""
        self._check(x)
        return _TableContraction.apply(x.contiguous(), left.contiguous(), self, variant)
