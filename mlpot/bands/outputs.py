"""Results files and plots of a band fit (spec deepseudopot.md §2.11, §5).

Files: ``basisStates_X.dat`` (index Gx Gy Gz |G|, Bohr⁻¹), ``<tag>_BS_sysX.dat`` (kdist E_1..E_n,
eV, ``%.5f``), ``<tag>_plotBS.png`` (reference blue dots, model red lines, full and zoom panels),
``<tag>_plotPP.png`` (v(q) analytic vs model + difference, v(r)), ``<tag>_pot_<atom>.dat`` (r Bohr,
v(r) Ha, ``%e``), ``<tag>_qSpace_pot.dat`` (``# q v_A v_B ...``), cost files ``epoch loss`` and
log-scale cost plots. Matplotlib uses the Agg backend unless ``SHOWPLOTS = 1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["write_basis", "write_bands", "plot_bands", "real_space_potential", "write_potentials", "plot_potentials",
           "write_cost", "plot_cost"]


def _pyplot(show: bool = False):
    import matplotlib

    if not show:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def write_basis(path: Path, g_vectors: np.ndarray) -> None:
    norms = np.linalg.norm(g_vectors, axis=1)
    table = np.column_stack([np.arange(len(g_vectors)), g_vectors, norms])
    np.savetxt(path, table, fmt=["%d", "%.8f", "%.8f", "%.8f", "%.8f"], header="index Gx Gy Gz |G| (Bohr^-1)")


def write_bands(path: Path, kdist: np.ndarray, bands: np.ndarray) -> None:
    """``kdist E_1..E_n`` rows in eV with ``%.5f``."""
    np.savetxt(path, np.column_stack([kdist, bands]), fmt="%.5f")


def plot_bands(path: Path, systems: Sequence, model_bands: Sequence[np.ndarray], show: bool = False,
               title: str = "") -> None:
    """One row per system: full window and zoom, reference (blue dots) vs model (red lines)."""
    plt = _pyplot(show)
    fig, axes = plt.subplots(len(systems), 2, figsize=(9, 3.6 * len(systems)), squeeze=False)
    for row, (system, bands) in enumerate(zip(systems, model_bands)):
        x = np.arange(len(bands))
        center = float(system.settings.get("BS_plot_center", np.median(system.ref_bands)))
        full = float(system.settings.get("BS_plot_CBVB_range", 1.2 * np.ptp(system.ref_bands) / 2 + 1))
        zoom = float(system.settings.get("BS_plot_CBVB_range_zoom", full / 4))
        for ax, half in zip(axes[row], (full, zoom)):
            ax.plot(x, system.ref_bands, "b.", markersize=3)
            ax.plot(x, bands, "r-", linewidth=0.8)
            ax.set_ylim(center - half, center + half)
            ax.set_xlabel("k index")
            ax.set_ylabel("E (eV)")
            ax.set_title(f"system {system.index} {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    if show:
        plt.show()
    plt.close(fig)


def real_space_potential(q: np.ndarray, v_q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """v(r) = (2π²)⁻¹ ∫ q² v(q) sin(qr)/(qr) dq, rectangle rule on uniform ``q``. (n_q,n_s) -> (n_r,n_s)."""
    dq = q[1] - q[0]
    qr = np.outer(r, q)
    sinc = np.where(qr > 0, np.sin(qr) / np.where(qr > 0, qr, 1.0), 1.0)
    return sinc @ (q[:, None] ** 2 * v_q) * dq / (2.0 * np.pi**2)


@torch.no_grad()
def write_potentials(folder: Path, tag: str, model, species: Sequence[str], q_max: float = 20.0, n_q: int = 2048,
                     r_max: float = 25.0, n_r: int = 2048) -> None:
    """``<tag>_pot_<atom>.dat`` (r, v(r)) and ``<tag>_qSpace_pot.dat`` (q, v per species)."""
    q = np.linspace(0.0, q_max, n_q)
    v_q = model(torch.tensor(q)[:, None]).numpy()
    r = np.linspace(0.0, r_max, n_r)
    v_r = real_space_potential(q, v_q, r)
    for i, atom in enumerate(species):
        np.savetxt(Path(folder) / f"{tag}_pot_{atom}.dat", np.column_stack([r, v_r[:, i]]), fmt="%e")
    np.savetxt(Path(folder) / f"{tag}_qSpace_pot.dat", np.column_stack([q, v_q]), fmt="%.8f",
               header="q " + " ".join(f"v(q)_{s}" for s in species))


@torch.no_grad()
def plot_potentials(path: Path, model, reference, species: Sequence[str], q: torch.Tensor, show: bool = False) -> None:
    """v(q) of ``model`` vs ``reference`` (analytic) per species, their difference, and v(r)."""
    plt = _pyplot(show)
    qn = q.numpy()
    v_model, v_ref = model(q[:, None]).numpy(), reference(q[:, None]).numpy()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, atom in enumerate(species):
        axes[0].plot(qn, v_ref[:, i], "--", label=f"{atom} analytic")
        axes[0].plot(qn, v_model[:, i], "-", label=f"{atom} model")
        axes[1].plot(qn, v_model[:, i] - v_ref[:, i], label=atom)
    r = np.linspace(0.0, 10.0, 400)
    axes[2].plot(r, real_space_potential(qn, v_model, r), label=list(species))
    axes[0].set_xlabel("q (1/Bohr)"); axes[0].set_ylabel("v(q) (Ha Bohr^3)"); axes[0].legend(fontsize=7)
    axes[1].set_xlabel("q (1/Bohr)"); axes[1].set_ylabel("model - analytic"); axes[1].legend(fontsize=7)
    axes[2].set_xlabel("r (Bohr)"); axes[2].set_ylabel("v(r) (Ha)"); axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    if show:
        plt.show()
    plt.close(fig)


def write_cost(path: Path, rows: List[tuple], header: Optional[str] = None) -> None:
    np.savetxt(path, np.array(rows, dtype=np.float64).reshape(len(rows), -1), fmt="%.10g", header=header or "")


def plot_cost(path: Path, curves: Dict[str, List[tuple]], show: bool = False, ylabel: str = "cost (eV^2)") -> None:
    """Log-scale cost curves ``{label: [(epoch, value), ...]}``."""
    plt = _pyplot(show)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in curves.items():
        if rows:
            data = np.array(rows)
            ax.plot(data[:, 0], data[:, 1], "o-" if len(rows) < 30 else "-", label=label, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    if show:
        plt.show()
    plt.close(fig)
