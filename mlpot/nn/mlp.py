"""Multilayer perceptrons with DeePMD-kit's layer rule (spec deepmd.md §2.3, §3.1).

One layer computes ``y = act(x W + b)``; with a time step (``resnet_dt``) y is multiplied by a
trainable vector ``idt``; with ``resnet`` a skip is added when the width is kept (``y + x``) or doubled
(``y + [x, x]``; not with ``double_skip`` False). The time step exists only on layers that have a skip (as in DeePMD-kit, where it
scales the residual branch). Initialisation: W ~ N(0, 1/sqrt(n_in + n_out)), b ~ N(0, 1),
idt ~ N(0.1, 0.001), drawn from a generator seeded by ``seed`` when given.

* ``EmbeddingNet``: every layer is a resnet layer (descriptor embedding nets).
* ``FittingNet``: resnet hidden layers, then a linear output layer with bias (fitting nets).
  ``tf_resnet``: DeePMD-kit TensorFlow's fitting-net rule instead of its PyTorch one: no skip on
  the first hidden layer (even when its width equals the input's) and a skip only where the width
  is kept, never where it doubles (the graphs of ``dp --tf freeze``, read by
  ``mlpot.models.deepmd.peer_tf``).

Mixed precision (DeePMD-kit's ``training/mixed_precision``): ``MLP.compute_dtype`` (None, or
torch.float16 / torch.bfloat16) runs the layers under ``torch.autocast`` (matmuls and
activations in that dtype, parameters kept in theirs) and casts the output back to the input dtype.

Shapes: input (..., n_in) -> output (..., n_out); no physical units.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch

from mlpot.nn.activations import get_activation

__all__ = ["MLPLayer", "MLP", "EmbeddingNet", "FittingNet", "set_compute_dtype"]


def _generator(seed: Optional[int]) -> Optional[torch.Generator]:
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


class MLPLayer(torch.nn.Module):
    """One DeePMD layer ``x -> act(x W + b) [* idt] [+ skip]``; (..., n_in) -> (..., n_out)."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        activation: Optional[str] = "tanh",
        *,
        resnet: bool = False,
        resnet_dt: bool = False,
        double_skip: bool = True,
        bias: bool = True,
        trainable: bool = True,
        dtype: torch.dtype = torch.float64,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.activation_name = activation
        self.activation = get_activation(activation)
        self.skip = resnet and (n_out == n_in or (double_skip and n_out == 2 * n_in))
        weight = torch.randn(n_in, n_out, generator=generator, dtype=torch.float64) / (n_in + n_out) ** 0.5
        self.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=trainable)
        self.bias = (
            torch.nn.Parameter(torch.randn(n_out, generator=generator, dtype=torch.float64).to(dtype), requires_grad=trainable)
            if bias
            else None
        )
        if resnet_dt and self.skip:
            idt = 0.1 + 0.001 * torch.randn(n_out, generator=generator, dtype=torch.float64)
            self.idt = torch.nn.Parameter(idt.to(dtype), requires_grad=trainable)
        else:
            self.idt = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight if self.bias is None else torch.addmm(self.bias, x.reshape(-1, self.n_in), self.weight).reshape(
            x.shape[:-1] + (self.n_out,)
        )
        y = self.activation(y)
        if self.idt is not None:
            y = y * self.idt
        if self.skip:
            y = y + (x if self.n_out == self.n_in else torch.cat([x, x], dim=-1))
        return y

    def extra_repr(self) -> str:
        return f"{self.n_in} -> {self.n_out}, act={self.activation_name}, skip={self.skip}, idt={self.idt is not None}"


class MLP(torch.nn.Module):
    """A stack of ``MLPLayer``; hidden widths ``neuron``, optional linear output of width ``out_dim``;
    ``tf_resnet``: DeePMD-kit TF's fitting-net skip rule (module docstring).

    ``trainable`` is one bool or one per layer (hidden layers, then the output layer).
    """

    def __init__(
        self,
        in_dim: int,
        neuron: Sequence[int],
        out_dim: Optional[int] = None,
        *,
        activation: Optional[str] = "tanh",
        resnet: bool = True,
        resnet_dt: bool = False,
        bias_out: bool = True,
        trainable: bool | Sequence[bool] = True,
        dtype: torch.dtype = torch.float64,
        seed: Optional[int] = None,
        tf_resnet: bool = False,
    ):
        super().__init__()
        n_layers = len(neuron) + (out_dim is not None)
        flags = [bool(trainable)] * n_layers if isinstance(trainable, bool) else [bool(t) for t in trainable]
        if len(flags) != n_layers:
            raise ValueError(f"trainable has {len(flags)} entries, expected {n_layers} (one per layer)")
        generator = _generator(seed)
        layers = []
        width = int(in_dim)
        for index, n_out in enumerate(neuron):
            layers.append(
                MLPLayer(width, n_out, activation, resnet=resnet and not (tf_resnet and index == 0), resnet_dt=resnet_dt,
                         double_skip=not tf_resnet, trainable=flags[index], dtype=dtype, generator=generator)
            )
            width = int(n_out)
        if out_dim is not None:
            layers.append(MLPLayer(width, out_dim, None, bias=bias_out, trainable=flags[-1], dtype=dtype, generator=generator))
            width = int(out_dim)
        self.layers = torch.nn.ModuleList(layers)
        self.in_dim, self.out_dim = int(in_dim), width
        self.compute_dtype: Optional[torch.dtype] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        precision = (torch.autocast(x.device.type, dtype=self.compute_dtype) if self.compute_dtype is not None
                     else contextlib.nullcontext())
        with precision:
            y = x
            for layer in self.layers:
                y = layer(y)
        return y.to(x.dtype)  # a no-op in full precision

    def split_input(self, widths: Sequence[int]) -> Optional[Tuple[torch.Tensor, ...]]:
        """The first layer's weight rows cut into blocks of ``widths`` (summing to in_dim), for an input
        that is a concatenation of parts: x W = sum_p x_p W_p, so a part with few distinct rows (a type
        embedding gathered per slot) is multiplied once per distinct row and gathered, and the
        concatenation is never formed (``forward_preactivated``). None when the first layer has a
        skip or the net runs in reduced precision (then call the net on the concatenation)."""
        first = self.layers[0]
        if first.skip or self.compute_dtype is not None:
            return None
        return tuple(first.weight.split([int(w) for w in widths], dim=0))

    def forward_preactivated(self, z: torch.Tensor) -> torch.Tensor:
        """The net from z = x W of its first layer (bias not added; see ``split_input``): (..., neuron[0])
        -> (..., out_dim). Same values as ``forward(x)``, to rounding."""
        first = self.layers[0]
        y = first.activation(z if first.bias is None else z + first.bias)
        if first.idt is not None:
            y = y * first.idt
        for layer in self.layers[1:]:
            y = layer(y)
        return y

    @torch.no_grad()
    def value_and_slope(self, x: torch.Tensor, chunk: int = 1024,
                        out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """f(x) and df/dx of a net of one input: x (n, 1) -> two (n, out_dim) tensors, no graph
        (written into ``out``, two (n, out_dim) tensors, when given).

        Forward-mode differentiation layer by layer (tangent dy = act'(z) (dx W) [* idt] + skip(dx)),
        values and tangents stacked (one matmul per layer) and updated in place, ``chunk`` rows at a
        time (the layers' temporaries stay in cache): the first derivative for an inference
        backward pass that needs nothing else of the net
        (``mlpot.nn.gathered_contraction``). Same numbers as ``forward`` and autograd, to rounding.
        Full precision only (``compute_dtype`` None).
        """
        if self.in_dim != 1 or self.compute_dtype is not None:
            raise ValueError("value_and_slope needs a net of one input in full precision")
        if x.shape[0] <= chunk and out is None:
            return self._value_and_slope(x)
        values, slopes = out if out is not None else (x.new_empty(x.shape[0], self.out_dim),
                                                      x.new_empty(x.shape[0], self.out_dim))
        for start in range(0, x.shape[0], chunk):
            values[start:start + chunk], slopes[start:start + chunk] = self._value_and_slope(x[start:start + chunk])
        return values, slopes

    def _value_and_slope(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        y = torch.cat([x, torch.ones_like(x)])  # rows [:n] the values, [n:] the tangents: one matmul each layer
        for layer in self.layers:
            z = y @ layer.weight
            value, tangent = z[:n], z[n:]
            if layer.bias is not None:
                value += layer.bias
            if layer.activation is torch.tanh:  # t and (1 - t^2) tangent, in place, the common case
                torch.tanh(value, out=value)
                torch.ops.aten.tanh_backward.grad_input(tangent, value, grad_input=tangent)
            else:  # elementwise activation: its Jacobian is diagonal, so the JVP equals the VJP
                with torch.enable_grad():
                    pre = value.clone().requires_grad_(True)
                    post = layer.activation(pre)
                    (slope,) = torch.autograd.grad(post, pre, tangent)
                value.copy_(post.detach())
                tangent.copy_(slope)
            if layer.idt is not None:
                z.mul_(layer.idt)
            if layer.skip:
                width = layer.n_in
                for half in ((slice(None),) if layer.n_out == width else (slice(0, width), slice(width, 2 * width))):
                    z[:, half] += y
            y = z
        return y[:n], y[n:]


class EmbeddingNet(MLP):
    """DeePMD embedding net: every layer resnet (skip when width kept or doubled), no output layer."""

    def __init__(self, in_dim: int, neuron: Sequence[int], **kwargs):
        super().__init__(in_dim, neuron, None, resnet=True, **kwargs)


class FittingNet(MLP):
    """DeePMD fitting net: resnet hidden layers ``neuron`` and a linear output layer of ``out_dim``."""

    def __init__(self, in_dim: int, neuron: Sequence[int], out_dim: int = 1, **kwargs):
        super().__init__(in_dim, neuron, out_dim, resnet=True, **kwargs)


def set_compute_dtype(module: torch.nn.Module, dtype: Optional[torch.dtype]) -> int:
    """Set ``compute_dtype`` on every MLP inside ``module`` (None = full precision); returns how many."""
    nets = [m for m in module.modules() if isinstance(m, MLP)]
    for net in nets:
        net.compute_dtype = dtype
    return len(nets)
