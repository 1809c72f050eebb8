"""MACE's radial embedding of edge lengths and its radial MLP.

* ``RadialEmbedding``: basis(r') x f_cut(r) (``apply_cutoff``; otherwise the envelope is returned
  separately and multiplies the MLP output), with
  - basis ``bessel``: mlpot's ``BesselBasis`` with MACE's prefactor sqrt(2 / r_max);
  - ``gaussian``: mlpot's ``GaussianBasis``;
  - ``chebyshev``: T_n(r), n = 1..N, of the bare distance in Å (mace-torch evaluates the
    polynomials on r itself, not on a scaled distance [COMPAT]). mace-torch calls
    ``torch.special.chebyshev_polynomial_t``, which has no derivative, so its forces miss the
    radial part of this basis [BUG, not copied]: here the three-term recurrence gives the same
    values and their derivatives;
  - f_cut: mlpot's ``PolynomialCutoff`` with p = ``num_cutoff_basis``;
  - r' = r, or a distance transform with r_0 from the covalent radii (ASE) of the two atoms:
    ``Agnesi``: r' = 1 / (1 + a (r/r_0)^q / (1 + (r/r_0)^(q-p))), r_0 = (R_i + R_j)/2,
    q = 0.9183, p = 4.5791, a = 1.0805; ``Soft``: r' = p_0 + (r - p_0) s(r),
    s = (1 + tanh(alpha (r - m) / (p_1 - p_0)))/2, r_0 = R_i + R_j, p_0 = 3 r_0/4, p_1 = 4 r_0/3,
    m = (p_0 + p_1)/2, alpha = 4.
The radial MLP (e3nn's ``FullyConnectedNet``, no biases) is the shared
:class:`mlpot.models.equivariant.blocks.RadialMLP` with ``scaling="moment"``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from ase.data import covalent_radii

from mlpot.nn import BesselBasis, GaussianBasis, PolynomialCutoff

__all__ = ["RadialEmbedding", "ChebyshevPolynomials", "AgnesiTransform", "SoftTransform"]


class ChebyshevPolynomials(torch.nn.Module):
    """T_n(r), n = 1..num_basis, of the distance r in Å (mace-torch's ``chebyshev`` basis)."""

    def __init__(self, num_basis: int):
        super().__init__()
        self.num_basis = int(num_basis)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        previous, current = torch.ones_like(r), r
        values = [current]
        for _ in range(self.num_basis - 1):  # T_{n+1} = 2 r T_n - T_{n-1}
            previous, current = current, 2 * r * current - previous
            values.append(current)
        return torch.stack(values, dim=-1)


class _CovalentTransform(torch.nn.Module):
    """Base of the distance transforms: covalent radii (Å) per element of the model."""

    def __init__(self, atomic_numbers: Sequence[int], dtype: torch.dtype):
        super().__init__()
        radii = torch.tensor([covalent_radii[int(z)] for z in atomic_numbers], dtype=dtype)
        self.register_buffer("radii", radii, persistent=False)

    def pair_radius(self, element_i: torch.Tensor, element_j: torch.Tensor) -> torch.Tensor:
        return self.radii.index_select(0, element_i) + self.radii.index_select(0, element_j)


class AgnesiTransform(_CovalentTransform):
    """Agnesi transform of ACEpotentials.jl (module docstring); parameters as buffers q, p, a."""

    def __init__(self, atomic_numbers: Sequence[int], dtype: torch.dtype, q: float = 0.9183, p: float = 4.5791,
                 a: float = 1.0805):
        super().__init__(atomic_numbers, dtype)
        for name, value in (("q", q), ("p", p), ("a", a)):
            self.register_buffer(name, torch.tensor(value, dtype=dtype))

    def forward(self, r: torch.Tensor, element_i: torch.Tensor, element_j: torch.Tensor) -> torch.Tensor:
        x = r / (0.5 * self.pair_radius(element_i, element_j))
        return torch.reciprocal(1 + self.a * torch.pow(x, self.q) / (1 + torch.pow(x, self.q - self.p)))


class SoftTransform(_CovalentTransform):
    """Smooth clamp of short distances (module docstring); ``alpha`` buffer."""

    def __init__(self, atomic_numbers: Sequence[int], dtype: torch.dtype, alpha: float = 4.0):
        super().__init__(atomic_numbers, dtype)
        self.register_buffer("alpha", torch.tensor(alpha, dtype=dtype))

    def forward(self, r: torch.Tensor, element_i: torch.Tensor, element_j: torch.Tensor) -> torch.Tensor:
        r_0 = self.pair_radius(element_i, element_j)
        p_0, p_1 = 0.75 * r_0, (4.0 / 3.0) * r_0
        switch = 0.5 * (1.0 + torch.tanh(self.alpha / (p_1 - p_0) * (r - 0.5 * (p_0 + p_1))))
        return p_0 + (r - p_0) * switch


class RadialEmbedding(torch.nn.Module):
    """Edge lengths (n_edges,) Å -> (features (n_edges, num_basis), envelope (n_edges, 1) or None)."""

    def __init__(self, r_max: float, num_basis: int, num_cutoff_basis: int, radial_type: str = "bessel",
                 distance_transform: str = "None", apply_cutoff: bool = True,
                 atomic_numbers: Sequence[int] = (), dtype: torch.dtype = torch.float64):
        super().__init__()
        if radial_type == "bessel":
            self.basis = BesselBasis(r_max, num_basis, prefactor=math.sqrt(2.0 / r_max), dtype=dtype)
        elif radial_type == "gaussian":
            self.basis = GaussianBasis(r_max, num_basis, dtype=dtype)
        elif radial_type == "chebyshev":
            self.basis = ChebyshevPolynomials(num_basis)
        else:
            raise ValueError(f"unknown radial_type {radial_type!r}")
        self.transform: Optional[torch.nn.Module] = None
        if distance_transform == "Agnesi":
            self.transform = AgnesiTransform(atomic_numbers, dtype)
        elif distance_transform == "Soft":
            self.transform = SoftTransform(atomic_numbers, dtype)
        elif distance_transform not in ("None", None):
            raise ValueError(f"unknown distance_transform {distance_transform!r}")
        self.cutoff = PolynomialCutoff(r_max, float(num_cutoff_basis))
        self.num_basis, self.apply_cutoff = int(num_basis), bool(apply_cutoff)

    def forward(self, lengths: torch.Tensor, element_i: torch.Tensor, element_j: torch.Tensor
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        envelope = self.cutoff(lengths).unsqueeze(-1)
        r = lengths if self.transform is None else self.transform(lengths, element_i, element_j)
        features = self.basis(r)
        if self.apply_cutoff:
            return features * envelope, None
        return features, envelope
