"""Smooth cutoff (switching) functions shared by descriptor families.

``smooth_switch`` is DeePMD-kit's C2 quintic (spec deepmd.md §2.2): with
u = clip((r - r_s) / (r_c - r_s), 0, 1), w(r) = u^3 (-6 u^2 + 15 u - 10) + 1, so w = 1 for r <= r_s,
w = 0 for r >= r_c, and w, w', w'' are continuous everywhere.
"""

from __future__ import annotations

import torch

__all__ = ["smooth_switch"]


def smooth_switch(r: torch.Tensor, r_smooth: float, r_cut: float) -> torch.Tensor:
    """Quintic switching weight w(r), same shape and dtype as ``r`` (Å); dimensionless, in [0, 1]."""
    if not r_cut > r_smooth:
        raise ValueError(f"rcut ({r_cut}) must be larger than rcut_smth ({r_smooth})")
    u = ((r - r_smooth) / (r_cut - r_smooth)).clamp(0.0, 1.0)
    return u * u * u * (u * (-6.0 * u + 15.0) - 10.0) + 1.0
