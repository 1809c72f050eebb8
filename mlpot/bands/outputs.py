"""Results files of a band fit (spec deepseudopot.md §2.11, §5); figures are in :mod:`mlpot.bands.plots`.

Files: ``basisStates_X.dat`` (index Gx Gy Gz |G|, Bohr⁻¹), ``<tag>_BS_sysX.dat`` (kdist E_1..E_n,
eV, ``%.5f``), ``<tag>_pot_<atom>.dat`` (r Bohr, v(r) Ha, ``%e``), ``<tag>_qSpace_pot.dat``
(``# q v_A v_B ...``, the layout ``init_qSpace_pot.par`` reads), cost tables (``epoch loss ...``, full
float64 precision, a header-only file when a run has no rows), deformation potentials and
effective masses per system.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ["write_basis", "write_bands", "real_space_potential", "write_potentials", "write_cost",
           "write_observables", "write_parameters", "COST_FORMAT"]

COST_FORMAT = "%.17g"  # round-trips a float64


def write_basis(path: Path, g_vectors: np.ndarray) -> None:
    norms = np.linalg.norm(g_vectors, axis=1)
    table = np.column_stack([np.arange(len(g_vectors)), g_vectors, norms])
    np.savetxt(path, table, fmt=["%d", "%.8f", "%.8f", "%.8f", "%.8f"], header="index Gx Gy Gz |G| (Bohr^-1)")


def write_bands(path: Path, kdist: np.ndarray, bands: np.ndarray) -> None:
    """``kdist E_1..E_n`` rows in eV with ``%.5f``."""
    np.savetxt(path, np.column_stack([kdist, bands]), fmt="%.5f")


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


def write_cost(path: Path, rows: List[tuple], header: Optional[str] = None) -> None:
    """Rows of numbers in full float64 precision; no rows -> a file with the header only."""
    table = np.array(rows, dtype=np.float64).reshape(len(rows), -1) if rows else np.zeros((0, 0))
    if table.size == 0:
        Path(path).write_text(f"# {header}\n" if header else "")
        return
    np.savetxt(path, table, fmt=COST_FORMAT, header=header or "")


def write_observables(folder: Path, tag: str, values: Sequence[dict], observables: Sequence) -> None:
    """``<tag>_defPots_sysX.dat`` (computed target weight per row, eV) and ``<tag>_effMasses_sysX.dat``
    (``vb`` and ``cb`` computed target, electron masses) for the systems that have them."""
    for index, (found, obs) in enumerate(zip(values, observables)):
        if obs is None:
            continue
        if "defpot" in found:
            table = [(float(v), r.target, r.weight) for v, r in zip(found["defpot"], obs.defpots)]
            np.savetxt(Path(folder) / f"{tag}_defPots_sys{index}.dat", table, fmt=COST_FORMAT,
                       header="defpot_model(eV) defpot_target(eV) weight")
        if "effmass" in found:
            table = [(float(v), t) for v, t in zip(found["effmass"], obs.masses[:2])]
            np.savetxt(Path(folder) / f"{tag}_effMasses_sys{index}.dat", table, fmt=COST_FORMAT,
                       header="rows: vb cb; columns: mass_model(m_e) mass_target(m_e)")


def write_parameters(folder: Path, prefix: str, species: Sequence[str], params: np.ndarray) -> None:
    """``<prefix><atom>Params.dat``: the 9 parameters of each species, one per line (``%.14f``)."""
    for atom, vector in zip(species, params):
        np.savetxt(Path(folder) / f"{prefix}{atom}Params.dat", np.asarray(vector), fmt="%.14f")
