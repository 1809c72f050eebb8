"""Activation functions by DeePMD-kit name (``activation_function`` keys).

Names follow DeePMD-kit: tanh (default), gelu (erf form), gelu_tf (tanh approximation, as
TensorFlow's ``gelu(approximate=True)``), relu, relu6, softplus, sigmoid, silu, linear / none.
"""

from __future__ import annotations

from typing import Callable

import torch

from mlpot.nn.registry import Registry

__all__ = ["ACTIVATIONS", "get_activation"]

Activation = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: Registry[Activation] = Registry("activation function")
ACTIVATIONS.register("tanh", torch.tanh)
ACTIVATIONS.register("gelu", lambda x: torch.nn.functional.gelu(x))
ACTIVATIONS.register("gelu_tf", lambda x: torch.nn.functional.gelu(x, approximate="tanh"))
ACTIVATIONS.register("relu", torch.relu)
ACTIVATIONS.register("relu6", lambda x: torch.nn.functional.relu6(x))
ACTIVATIONS.register("softplus", lambda x: torch.nn.functional.softplus(x))
ACTIVATIONS.register("sigmoid", torch.sigmoid)
ACTIVATIONS.register("silu", lambda x: torch.nn.functional.silu(x))
ACTIVATIONS.register("linear", lambda x: x, aliases=("none",))


def get_activation(name: str | None, *, key=None) -> Activation:
    """The activation called ``name`` (None means linear); unknown names raise ConfigError."""
    return ACTIVATIONS.get("linear" if name is None else name, key=key)
