"""NVNMD's energy fitting net: DeePMD-kit's TF ``ener`` fitting with the tanh4 activation, and
its quantised (QNN) forward emulated in software.

Layout as DeePMD-kit's TF fitting: one net per type (version 1: one for all), hidden layers
y = tanh4(x W + b) with a skip (y + x) on hidden layers after the first whose width equals the
previous one's, a linear output layer, no time step. Quantised mode (``quantize``), per layer,
with q23 / f23 = rounding / flooring to 23 fraction bits (``mlpot.nn.quantize.fixed_point``): x, W
and b in q23; f23(x W) with each column of W scaled by the power of two that bounds it and floored
to 20 fraction bits there (DeePMD-kit's matmul_fitnet_nvnmd: NBIT_FIT_SHORT_FL = 19 bits plus
sign; probed through its op, this equals it); q23(x W + b); on hidden layers tanh4 in its fixed-point
evaluation (``tanh4_fixed``, equal to DeePMD-kit's tanh4_flt_nvnmd). Version 1 (input [D,
tebd(t_i)]): the first layer adds q23(tebd W_t) (the ``tweight`` rows, neither factor rounded) to
f23(x W) before the bias. Gradients pass straight through the roundings.
"""

from __future__ import annotations

import torch

from mlpot.errors import ConfigError
from mlpot.models.deepmd.fitting import EnerFitting
from mlpot.nn import FittingNet
from mlpot.nn.quantize import fixed_point, tanh4_fixed

__all__ = ["NvnmdEnerFitting", "QuantizedFittingNet"]

NBIT_DATA, NBIT_WEIGHT = 23, 20


class QuantizedFittingNet(FittingNet):
    """A ``FittingNet`` whose forward is NVNMD's quantised one when ``quantize`` is set."""

    quantize = False
    tebd_width = 0  # version 1: the last inputs are tebd(t_i), read by the first layer's tweight rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return super().forward(x)
        y = x
        for index, layer in enumerate(self.layers):
            weight, extra = layer.weight, None
            if index == 0 and self.tebd_width:  # DeePMD-kit: q23(tebd @ tweight), neither factor rounded
                y, tebd = y[:, : -self.tebd_width], y[:, -self.tebd_width:]
                weight, extra = weight[: -self.tebd_width], fixed_point(tebd @ weight[-self.tebd_width:], NBIT_DATA)
            y = fixed_point(y, NBIT_DATA)
            product = fixed_point(y @ _short_weight(fixed_point(weight, NBIT_DATA)), NBIT_DATA, "floor")
            if extra is not None:
                product = product + extra
            hidden = fixed_point(product + fixed_point(layer.bias, NBIT_DATA), NBIT_DATA)
            out = tanh4_fixed(hidden) if layer.activation_name is not None else hidden
            y = y + out if layer.skip else out
        return y


def _short_weight(weight: torch.Tensor) -> torch.Tensor:
    """W as the product unit reads it: per output column, scaled by the power of two 2^e that
    bounds the column (e = ceil(log2 max |W|)), floored to 20 fraction bits, scaled back."""
    scale = torch.exp2(torch.ceil(torch.log2(weight.detach().abs().amax(dim=0).clamp(min=2.0**-60))))
    return fixed_point(weight / scale, NBIT_WEIGHT, "floor") * scale


class NvnmdEnerFitting(EnerFitting):
    """``ener`` fitting of an NVNMD model (built by ``mlpot.models.deepmd.nvnmd.build_nvnmd``)."""

    def setup_nvnmd(self, quantize: bool, path: str = "model/fitting_net", tebd_width: int = 0) -> None:
        """Check the net against the hardware's, switch the first layer's skip off (TF layout) and
        set the quantised mode. ``tebd_width`` (version 1: 8): one net for all types, reading
        [D, tebd(t_i)] with tebd_width type-embedding columns."""
        first = self.nets[0].layers[0]
        if first.activation_name != "tanh4":
            raise ConfigError(f"NVNMD fitting nets use activation_function tanh4, got {first.activation_name!r}",
                              key=f"{path}/activation_function")
        if any(layer.idt is not None for net in self.nets for layer in net.layers):
            raise ConfigError("NVNMD fitting nets have no time step: set resnet_dt false", key=f"{path}/resnet_dt")
        if self.numb_fparam or self.numb_aparam or self.mixed_types != bool(tebd_width):
            raise ConfigError("NVNMD fitting nets take the descriptor only (no fparam / aparam)", key=path)
        for net in self.nets:
            net.__class__ = QuantizedFittingNet  # same parameters, NVNMD's forward
            net.layers[0].skip = False
            net.quantize = bool(quantize)
            net.tebd_width = tebd_width
        self.quantize = bool(quantize)
