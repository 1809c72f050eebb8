"""Scalar nonlinearities of the equivariant models, by the names NequIP and MACE use, and e3nn's
second-moment normalisation of them.

* ``SCALAR_ACTIVATIONS``: silu, mish, gelu, ssp (shifted softplus), tanh, sigmoid, softplus, abs;
* ``activation_constant(f)``: 1 / sqrt(E[f(z)^2]) over e3nn's fixed sample of z ~ N(0, 1)
  (``e3nn.math.normalize2mom``), exactly 1.0 where e3nn leaves the function unscaled
  (|constant - 1| < 1e-4): e3nn's ``Gate``, ``Activation`` and ``FullyConnectedNet`` (MACE's radial
  MLPs and readouts) multiply by it;
* ``activation_parity(name)``: 1 for an even, -1 for an odd function, 0 for neither (what an
  activation does to the parity of an odd scalar).

These are not DeePMD-kit's ``activation_function`` names (``mlpot.nn.activations``), whose set and
meanings differ (gelu_tf, relu6, linear; no ssp, mish or abs).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Union

import torch
from e3nn.math import normalize2mom

__all__ = ["SCALAR_ACTIVATIONS", "activation_constant", "activation_parity"]


def _shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(x) - math.log(2.0)


SCALAR_ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": torch.nn.functional.silu,
    "mish": torch.nn.functional.mish,
    "gelu": torch.nn.functional.gelu,
    "ssp": _shifted_softplus,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
    "abs": torch.abs,
}

_CONSTANTS: Dict[Callable, float] = {}


def activation_constant(function: Union[str, Callable[[torch.Tensor], torch.Tensor]]) -> float:
    """e3nn's second-moment constant of an activation (a ``SCALAR_ACTIVATIONS`` name or a function);
    1.0 exactly when e3nn leaves the function unscaled."""
    function = SCALAR_ACTIVATIONS[function] if isinstance(function, str) else function
    if function not in _CONSTANTS:
        normalized = normalize2mom(function)
        _CONSTANTS[function] = 1.0 if normalized._is_id else float(normalized.cst)
    return _CONSTANTS[function]


def activation_parity(name: str) -> int:
    """1 if the activation ``name`` is even, -1 if odd, 0 if neither."""
    x = torch.linspace(0, 10, 256, dtype=torch.float64)
    f = SCALAR_ACTIVATIONS[name]
    if (f(x) - f(-x)).abs().max() < 1e-5:
        return 1
    if (f(x) + f(-x)).abs().max() < 1e-5:
        return -1
    return 0
