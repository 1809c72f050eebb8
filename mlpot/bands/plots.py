"""Figures of a band fit: band structures, form factors v(q) and v(r), cost curves (spec §5).

* Bands: one row per system titled with its ``systemName``; full window and zoom (``BS_plot_*`` of
  ``input_X.par``); reference as blue dots, model as red lines, a legend; x = path length
  (Bohr⁻¹) with the high-symmetry points (Γ, X, L, K, ...) as labelled ticks.
* Potentials: per species one colour, the reference (Zunger or table) dashed and the model solid;
  q from 0 to the largest |G-G'| the Hamiltonians use, y limits set by the values at q >= the
  smallest non-zero |G| (v(q → 0) only shifts all energies and would dwarf the rest); the
  difference panel and v(r), all axes with units.
* Costs: log-scale curves with units.

Headless (Agg) unless interactive plots are asked for *and* a display exists.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from mlpot.bands.kpath import high_symmetry_labels, path_length
from mlpot.bands.outputs import real_space_potential

__all__ = ["plot_bands", "band_figure", "plot_potentials", "potential_figure", "plot_cost", "display_available",
           "hamiltonian_q_range"]


def display_available() -> bool:
    return sys.platform == "darwin" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _pyplot(show: bool):
    import matplotlib

    if not (show and display_available()):
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: Path, show: bool, plt) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    if show and display_available():
        plt.show(block=False)
        plt.pause(0.1)
    plt.close(fig)


def _path_axis(ax, system, x: np.ndarray) -> None:
    labels = high_symmetry_labels(system.cell, system.kpoints_frac)
    ticks = [x[row] for row, _ in labels]
    ax.set_xticks(ticks, [name for _, name in labels])
    for tick in ticks:
        ax.axvline(tick, color="0.8", linewidth=0.6, zorder=0)
    ax.set_xlim(x[0], x[-1])
    ax.set_xlabel("k path (Bohr⁻¹)")


def plot_bands(path: Path, systems: Sequence, model_bands: Sequence[np.ndarray], show: bool = False, title: str = "",
               model_label: str = "model") -> None:
    """Write :func:`band_figure` to ``path``."""
    _finish(band_figure(systems, model_bands, show, title, model_label), path, show, _pyplot(show))


def band_figure(systems: Sequence, model_bands: Sequence[np.ndarray], show: bool = False, title: str = "",
                model_label: str = "model"):
    """One row per system: full window and zoom, reference (blue dots) vs ``model_label`` (red lines)."""
    plt = _pyplot(show)
    fig, axes = plt.subplots(len(systems), 2, figsize=(10, 3.8 * len(systems)), squeeze=False)
    for row, (system, bands) in enumerate(zip(systems, model_bands)):
        x = path_length(system.cell, system.kpoints_frac)
        ref = system.ref_bands
        center = float(system.settings.get("BS_plot_center", np.median(ref) if ref is not None else 0.0))
        spread = np.ptp(ref) if ref is not None else np.ptp(bands)
        full = float(system.settings.get("BS_plot_CBVB_range", 0.6 * spread + 1.0))
        zoom = float(system.settings.get("BS_plot_CBVB_range_zoom", full / 4))
        for ax, half, window in zip(axes[row], (full, zoom), ("full", "zoom")):
            if ref is not None:
                ax.plot(x, ref[:, 0], "b.", markersize=3, label="reference")
                ax.plot(x, ref[:, 1:], "b.", markersize=3)
            ax.plot(x, bands[:, 0], "r-", linewidth=0.9, label=model_label)
            ax.plot(x, bands[:, 1:], "r-", linewidth=0.9)
            ax.set_ylim(center - half, center + half)
            _path_axis(ax, system, x)
            ax.set_ylabel("E (eV)")
            ax.set_title(f"{system.name} {title} ({window})".replace("  ", " "))
            ax.legend(loc="upper right", fontsize=8)
    return fig


def _potential_limits(values: np.ndarray, q: np.ndarray, q_low: float) -> tuple:
    shown = values[q >= q_low]
    low, high = float(np.nanmin(shown)), float(np.nanmax(shown))
    margin = 0.08 * max(high - low, 1e-6)
    return low - margin, high + margin


def plot_potentials(path: Path, model, reference, species: Sequence[str], q_range: tuple, show: bool = False,
                    reference_label: str = "Zunger", title: str = "") -> None:
    """Write :func:`potential_figure` to ``path``."""
    fig = potential_figure(model, reference, species, q_range, show, reference_label, title)
    _finish(fig, path, show, _pyplot(show))


@torch.no_grad()
def potential_figure(model, reference, species: Sequence[str], q_range: tuple, show: bool = False,
                     reference_label: str = "Zunger", title: str = ""):
    """v(q) of ``model`` vs ``reference`` per species, their difference and v(r) of the model.

    ``q_range`` = (smallest non-zero |G|, largest |G-G'|) of the Hamiltonians, Bohr⁻¹.
    """
    plt = _pyplot(show)
    q_low, q_high = q_range
    q = torch.linspace(0.0, q_high, 600, dtype=torch.float64)
    qn = q.numpy()
    v_model, v_ref = model(q[:, None]).numpy(), reference(q[:, None]).numpy()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, atom in enumerate(species):
        color = f"C{i % 10}"
        axes[0].plot(qn, v_ref[:, i], "--", color=color, label=f"{atom} {reference_label}")
        axes[0].plot(qn, v_model[:, i], "-", color=color, label=f"{atom} model")
        axes[1].plot(qn, v_model[:, i] - v_ref[:, i], "-", color=color, label=atom)
    axes[0].set_ylim(*_potential_limits(np.concatenate([v_model, v_ref], axis=1), qn, q_low))
    axes[1].set_ylim(*_potential_limits(v_model - v_ref, qn, q_low))
    q_fine = np.linspace(0.0, max(q_high, 12.0), 2048)
    v_fine = model(torch.tensor(q_fine)[:, None]).numpy()
    r = np.linspace(0.0, 8.0, 400)
    for i, atom in enumerate(species):
        axes[2].plot(r, real_space_potential(q_fine, v_fine[:, i:i + 1], r)[:, 0], color=f"C{i % 10}", label=atom)
    for ax, ylabel in zip(axes, ("v(q) (Ha·Bohr³)", f"v_model − v_{reference_label} (Ha·Bohr³)", "v(r) (Ha)")):
        ax.set_ylabel(ylabel)
        ax.set_xlabel("q (Bohr⁻¹)" if ax is not axes[2] else "r (Bohr)")
        ax.legend(fontsize=7)
        ax.axhline(0.0, color="0.7", linewidth=0.5)
    for ax in axes[:2]:
        ax.axvline(q_low, color="0.8", linewidth=0.6, linestyle=":")
        ax.set_xlim(0.0, q_high)
    if title:
        fig.suptitle(title)
    return fig


def plot_cost(path: Path, curves: Dict[str, List[tuple]], show: bool = False, ylabel: str = "loss (eV²)",
              xlabel: str = "epoch") -> None:
    """Log-scale curves ``{label: [(epoch, value), ...]}``."""
    plt = _pyplot(show)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, rows in curves.items():
        data = np.array([r for r in rows if np.isfinite(r[1]) and r[1] > 0]) if rows else np.zeros((0, 2))
        if len(data):
            ax.plot(data[:, 0], data[:, 1], "o-" if len(data) < 30 else "-", label=label, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    _finish(fig, path, show, plt)


def hamiltonian_q_range(problem) -> tuple:
    """(smallest non-zero, largest) |G-G'| over the systems of a :class:`BandProblem`, Bohr⁻¹."""
    values = np.concatenate([pw.q_unique.cpu().numpy() for pw in problem.systems])
    nonzero = values[values > 1e-9]
    return (float(nonzero.min()) if len(nonzero) else 0.0, float(values.max()))

