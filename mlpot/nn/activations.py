"""Activation functions by DeePMD-kit name (``activation_function`` keys).

Names follow DeePMD-kit: tanh (default), gelu and gelu_tf (both the tanh approximation
0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in every DeePMD-kit backend: TensorFlow's custom
op and ``gelu(approximate=True)``, PyTorch's ``gelu(approximate="tanh")``), relu, relu6, softplus,
sigmoid, silu, linear / none; and tanh4, NVNMD's quartic hardware activation (``mlpot.nn.quantize``),
which the NVNMD fitting nets use (not a name DeePMD-kit's activation_function accepts).
"""

from __future__ import annotations

from typing import Callable

import torch

from mlpot.nn.quantize import tanh4
from mlpot.nn.registry import Registry

__all__ = ["ACTIVATIONS", "get_activation"]

Activation = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: Registry[Activation] = Registry("activation function")
ACTIVATIONS.register("tanh", torch.tanh)
ACTIVATIONS.register("gelu", lambda x: torch.nn.functional.gelu(x, approximate="tanh"), aliases=("gelu_tf",))
ACTIVATIONS.register("relu", torch.relu)
ACTIVATIONS.register("relu6", lambda x: torch.nn.functional.relu6(x))
ACTIVATIONS.register("softplus", lambda x: torch.nn.functional.softplus(x))
ACTIVATIONS.register("sigmoid", torch.sigmoid)
ACTIVATIONS.register("silu", lambda x: torch.nn.functional.silu(x))
ACTIVATIONS.register("linear", lambda x: x, aliases=("none",))
ACTIVATIONS.register("tanh4", tanh4)


def get_activation(name: str | None, *, key=None) -> Activation:
    """The activation called ``name`` (None means linear); unknown names raise ConfigError."""
    return ACTIVATIONS.get("linear" if name is None else name, key=key)
