"""Radial bases and cutoff envelopes of message-passing models (NequIP, MACE).

* ``BesselBasis``: b_n(r) = c · sin(w_n r) / r with w_n = n π / r_max (n = 1..N), optionally with
  trainable frequencies w_n. The prefactor c is a choice of the model family: NequIP uses
  2 / r_max, MACE sqrt(2 / r_max) (``prefactor`` argument).
* ``GaussianBasis``: g_n(r) = exp(-(r - mu_n)^2 / (2 sigma^2)) with N centres mu_n evenly spaced
  from 0 to r_max and sigma = r_max / (N - 1) (MACE's ``radial_type: gaussian``).
* ``PolynomialCutoff``: the smooth envelope of Klicpera et al. (DimeNet) with x = r / r_max:
  f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, 0 beyond; f(0) = 1 and
  f, f', f'' vanish at x = 1 for integer p >= 1.

All take distances r (...,) in Å and return (..., N) (bases) or (...,) (envelope), dimensionless
except the Bessel basis, which carries the 1/Å of sin(w r)/r times the prefactor.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["BesselBasis", "GaussianBasis", "PolynomialCutoff", "polynomial_cutoff"]


def polynomial_cutoff(r: torch.Tensor, r_max: float, p: float) -> torch.Tensor:
    """Envelope f(r / r_max) of order ``p`` (module docstring); same shape and dtype as ``r``."""
    x = r / r_max
    envelope = (1.0 - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p) + p * (p + 2.0) * torch.pow(x, p + 1.0)
                - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0))
    return envelope * (x < 1.0).to(envelope.dtype)


class PolynomialCutoff(torch.nn.Module):
    """``polynomial_cutoff`` as a module: forward(r (...,) Å) -> (...,)."""

    def __init__(self, r_max: float, p: float = 6.0):
        super().__init__()
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        if not p >= 1:
            raise ValueError(f"the polynomial cutoff order p must be >= 1, got {p}")
        self.r_max, self.p = float(r_max), float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return polynomial_cutoff(r, self.r_max, self.p)

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, p={self.p}"


class BesselBasis(torch.nn.Module):
    """Radial Bessel functions c · sin(n π r / r_max) / r, n = 1..``num_basis``.

    forward(r (...,) Å) -> (..., num_basis). ``trainable`` makes the frequencies a parameter
    (``weights``, (num_basis,) 1/Å); otherwise they are a buffer. r = 0 is not defined (the
    models never see zero-length edges).
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False, prefactor: Optional[float] = None,
                 dtype: Optional[torch.dtype] = None):
        super().__init__()
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        if int(num_basis) < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        self.r_max, self.num_basis = float(r_max), int(num_basis)
        self.prefactor = float(2.0 / r_max if prefactor is None else prefactor)
        weights = math.pi / self.r_max * torch.arange(1, self.num_basis + 1, dtype=dtype or torch.get_default_dtype())
        if trainable:
            self.weights = torch.nn.Parameter(weights)
        else:
            self.register_buffer("weights", weights)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.weights.to(r.dtype) * r) / r

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, num_basis={self.num_basis}, prefactor={self.prefactor:.6g}"


class GaussianBasis(torch.nn.Module):
    """Gaussians exp(coeff (r - mu_n)^2), mu_n = linspace(0, r_max, num_basis), coeff = -1 / (2 sigma^2),
    sigma = r_max / (num_basis - 1) Å.

    forward(r (...,) Å) -> (..., num_basis). ``trainable`` makes the centres (``centres``, Å) a
    parameter; otherwise they are a buffer.
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False, dtype: Optional[torch.dtype] = None):
        super().__init__()
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        if int(num_basis) < 2:
            raise ValueError(f"a Gaussian basis needs num_basis >= 2, got {num_basis}")
        self.r_max, self.num_basis = float(r_max), int(num_basis)
        self.coeff = -0.5 / (self.r_max / (self.num_basis - 1)) ** 2
        centres = torch.linspace(0.0, self.r_max, self.num_basis, dtype=dtype or torch.get_default_dtype())
        if trainable:
            self.centres = torch.nn.Parameter(centres)
        else:
            self.register_buffer("centres", centres)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * torch.pow(r.unsqueeze(-1) - self.centres.to(r.dtype), 2))

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, num_basis={self.num_basis}"
