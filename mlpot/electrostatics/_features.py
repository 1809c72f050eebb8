"""Electrostatic field features: projections of potentials onto receiver Gaussians (spec §2.3-2.4).

A node potential V_i (V) and gradient G_i (V/Å) seen through a receiver-normalised Gaussian of
width s_n become features by one linear map: l = 0 gets ``sqrt(4 pi) V_i`` and l = 1 gets
``pi s_n sqrt(3/2) G_i`` in e3nn order (y, z, x). The same map turns the applied potential of an
external field F (V = F.r_i, G = F; F is the *gradient* of the applied potential) and a Fermi
level (V = mu - mu_offset) into features. Layout, irreps ``n x 0e + n x 1o``: all widths for l = 0
first, then for each width its three l = 1 components.

Normalisation nu: one value per (l, width), explicit lists are l-major, width-minor; "average"
is the RMS of the unnormalised features over training atoms (floor 1e-8).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch

from mlpot.electrostatics._density import CARTESIAN_TO_E3NN, receiver_scale

__all__ = [
    "n_field_features",
    "potential_to_features",
    "external_field_features",
    "fermi_level_features",
    "expand_feature_norms",
    "average_field_feature_norms",
    "NORM_FLOOR",
]

NORM_FLOOR = 1e-8


def _check_max_l(max_l: int):
    if max_l not in (0, 1):
        raise ValueError(f"field_feature_max_l must be 0 or 1 (l = 2 is not implemented); got {max_l}")


def n_field_features(n_widths: int, max_l: int) -> int:
    """Features per atom: n_widths * (max_l + 1)^2."""
    _check_max_l(max_l)
    return n_widths * (max_l + 1) ** 2


def potential_to_features(potential: torch.Tensor, gradient: Optional[torch.Tensor], widths: Sequence[float], max_l: int) -> torch.Tensor:
    """Feature layout (n_atoms, n_features) from node potentials and gradients.

    potential: (n_widths, n_atoms) or (n_atoms,) V (broadcast over widths); gradient: (n_widths,
    n_atoms, 3) or (n_atoms, 3) V/Å Cartesian, or None (zero); widths: receiver widths Å.
    """
    _check_max_l(max_l)
    n_widths = len(widths)
    if potential.dim() == 1:
        potential = potential.expand(n_widths, -1)
    blocks = [receiver_scale(0, 1.0) * potential.transpose(0, 1)]
    if max_l >= 1:
        n_atoms = potential.shape[1]
        if gradient is None:
            gradient = potential.new_zeros(n_atoms, 3)
        if gradient.dim() == 2:
            gradient = gradient.expand(n_widths, -1, -1)
        scales = torch.tensor([receiver_scale(1, float(w)) for w in widths], dtype=potential.dtype, device=potential.device)
        e3nn = gradient[..., list(CARTESIAN_TO_E3NN)] * scales[:, None, None]  # (n_widths, n_atoms, 3)
        blocks.append(e3nn.permute(1, 0, 2).reshape(n_atoms, 3 * n_widths))
    return torch.cat(blocks, dim=1)


def external_field_features(positions: torch.Tensor, field: torch.Tensor, widths: Sequence[float], max_l: int) -> torch.Tensor:
    """Features (n_atoms, n_features) of the applied potential v(r) = F.r.

    positions: (n_atoms, 3) Å (absolute: origin-dependent for the l = 0 part [COMPAT]);
    field: (3,) or (n_atoms, 3) V/Å, gradient of the applied potential (minus the physical E-field).
    """
    field = field.expand_as(positions) if field.dim() == 1 else field
    return potential_to_features((positions * field).sum(1), field, widths, max_l)


def fermi_level_features(fermi_level: torch.Tensor, n_atoms: int, widths: Sequence[float], max_l: int, offset: float = 0.0) -> torch.Tensor:
    """Features (n_atoms, n_features) of a constant potential mu - offset (eV per e = V).

    fermi_level: scalar or (n_atoms,) eV; offset: ``fermi_level_offset`` eV. l = 1 entries are zero.
    """
    mu = torch.as_tensor(fermi_level) - offset
    potential = mu.expand(n_atoms) if mu.dim() == 0 else mu
    return potential_to_features(potential, None, widths, max_l)


def expand_feature_norms(norms: Sequence[float], n_widths: int, max_l: int) -> List[float]:
    """Per-feature divisors from one value per (l, width), l-major, width-minor (spec §2.4)."""
    _check_max_l(max_l)
    if len(norms) != n_widths * (max_l + 1):
        raise ValueError(
            f"field_feature_norms needs n_widths * (field_feature_max_l + 1) = {n_widths * (max_l + 1)} values "
            f"(l-major, width-minor); got {len(norms)}"
        )
    out = [float(v) for v in norms[:n_widths]]
    if max_l >= 1:
        for w in range(n_widths):
            out += [float(norms[n_widths + w])] * 3
    return out


def average_field_feature_norms(features: Iterable[torch.Tensor], n_widths: int, max_l: int) -> List[float]:
    """RMS of unnormalised features per (l, width), l-major, width-minor ("average" norms).

    features: iterable of (n_atoms, n_features) tensors (training atoms whose frames have both
    reference multipoles and a Fermi level). l = 1 pools its three components. Floor 1e-8.
    """
    _check_max_l(max_l)
    sums = None
    count = 0
    for block in features:
        sq = block.detach().to(torch.float64).pow(2).sum(0)
        sums = sq if sums is None else sums + sq
        count += block.shape[0]
    if sums is None or count == 0:
        raise ValueError("cannot estimate 'average' field_feature_norms: no training atom has multipoles and a Fermi level")
    norms = (sums[:n_widths] / count).sqrt().tolist()
    if max_l >= 1:
        per_width = sums[n_widths:].reshape(n_widths, 3).sum(1) / (3 * count)
        norms += per_width.sqrt().tolist()
    return [max(v, NORM_FLOOR) for v in norms]
