"""Observables beyond the band energies: deformation potentials and effective masses (spec §1.10, §2.10).

Both are switched on per system in ``input_X.par`` (``fit_defPot = 1``, ``fit_eff_masses = 1``) as in
DeePseudopot; they are then fit targets (added to the loss) and outputs (``<tag>_defPots_sysX.dat``,
``<tag>_effMasses_sysX.dat``). Band indices count in the band list the loss compares (the columns of
``expBandStruct_X.par``, spin-doubled for 2024 non-SO files); k indices are rows of ``kpoints_X.par``.

* ``expDefPot_X.par`` — three layouts, one row type. 7 columns (DeePseudopot v2):
  ``kidx_VB bidx_VB kidx_CB bidx_CB latConst_ratio defPot_gap(eV) weight``; 5 columns (newest docs):
  ``kidx bidx latConst_ratio defPot_state(eV) weight``; 2 lines of one number (v1, Monte Carlo
  drivers): VBM and CBM deformation potentials at ``idxGap``/``idxVB``/``idxCB`` with a 1 % expansion.
  With X the gap (or state energy) on the cell scaled by s (same integer basis, §2.10):
  D = (X(1) - X(s)) / 2 · (1 + s³)/(1 - s³) eV; loss Σ weight (D - target)².
* ``expEffMasses_X.par`` — ``m_vb m_cb weight`` (electron masses); parabolic masses from the bands at
  ``idxGap`` and ``idxGap - 1``: m = |Δk|² / (2 ΔE) in atomic units (ΔE in Hartree, hole mass of
  the valence band counted positive); loss weight ((m_vb - t_vb)² + (m_cb - t_cb)²).

Electron-phonon couplings (``fit_eph``, ``qpoints_X.par``, ``expCoupling_X.par``) are not built:
asking for them raises "not supported yet".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mlpot.bands.inputs import SystemInput, data_lines, line_numbers
from mlpot.bands.native import not_supported
from mlpot.errors import DataError

__all__ = ["DefPotRow", "read_defpot_table", "read_effective_masses", "SystemObservables", "check_unsupported_inputs",
           "V1_DEFPOT_SCALE"]

V1_DEFPOT_SCALE = 1.01  # the Monte Carlo drivers' lattice expansion for the two-line file


@dataclass(frozen=True)
class DefPotRow:
    """One deformation-potential target: X = Σ sign·E(k, band); ``scale`` s; ``target`` eV."""

    terms: Tuple[Tuple[int, int, float], ...]
    scale: float
    target: float
    weight: float


def _index(value: float, limit: int, path, lineno: int, what: str) -> int:
    if value != int(value) or not 0 <= value < limit:
        raise DataError(f"line {lineno}: {what} {value:g} must be an integer in [0, {limit})", file=str(path),
                        key="expDefPot")
    return int(value)


def read_defpot_table(path, system: SystemInput) -> List[DefPotRow]:
    """Rows of ``expDefPot_X.par`` (7-column, 5-column or two-line layout)."""
    rows = [(lineno, line_numbers(line, path, lineno, "expDefPot")) for lineno, line in data_lines(path)]
    n_k, n_b = len(system.kweights), system.n_bands
    widths = {len(values) for _, values in rows}
    if widths == {1} and len(rows) == 2:
        need = [key for key in ("idxGap", "idxVB", "idxCB") if key not in system.settings]
        if need:
            raise DataError(f"the two-line (VBM, CBM) layout needs {', '.join(need)} in input_{system.index}.par",
                            file=str(path), key="expDefPot")
        k = int(system.settings["idxGap"])
        return [DefPotRow(((k, int(system.settings[b]), 1.0),), V1_DEFPOT_SCALE, rows[i][1][0], 1.0)
                for i, b in enumerate(("idxVB", "idxCB"))]
    out = []
    for lineno, values in rows:
        if len(values) == 7:
            kv, bv, kc, bc = (_index(values[i], lim, path, lineno, name) for i, lim, name in
                              zip(range(4), (n_k, n_b, n_k, n_b), ("kidx_VB", "bidx_VB", "kidx_CB", "bidx_CB")))
            terms, (scale, target, weight) = ((kc, bc, 1.0), (kv, bv, -1.0)), values[4:]
        elif len(values) == 5:
            terms = ((_index(values[0], n_k, path, lineno, "kidx"), _index(values[1], n_b, path, lineno, "bidx"), 1.0),)
            scale, target, weight = values[2:]
        else:
            raise DataError(f"line {lineno}: expected 7 columns (kidx_VB bidx_VB kidx_CB bidx_CB latConst_ratio "
                            f"defPot_gap weight) or 5 (kidx bidx latConst_ratio defPot weight), got {len(values)}",
                            file=str(path), key="expDefPot")
        if scale <= 0 or scale == 1.0:
            raise DataError(f"line {lineno}: latConst_ratio must be positive and != 1, got {scale}", file=str(path),
                            key="expDefPot")
        out.append(DefPotRow(terms, float(scale), float(target), float(weight)))
    if not out:
        raise DataError("no rows", file=str(path), key="expDefPot")
    return out


def read_effective_masses(path) -> Tuple[float, float, float]:
    """``expEffMasses_X.par`` -> (m_vb, m_cb, weight) in electron masses."""
    values = [v for lineno, line in data_lines(path) for v in line_numbers(line, path, lineno, "expEffMasses")]
    if len(values) != 3:
        raise DataError(f"expected 3 numbers (m_vb m_cb weight), got {len(values)}", file=str(path), key="expEffMasses")
    return values[0], values[1], values[2]


def check_unsupported_inputs(folder: Path, system: SystemInput) -> List[str]:
    """Raise for per-system switches mlpot has not built; return notes on files no switch reads."""
    path = Path(folder) / f"input_{system.index}.par"
    for key, what in (("fit_eph", "electron-phonon couplings (qpoints_X.par, expCoupling_X.par)"),
                      ("trainLR", "trainable long-range amplitudes"),
                      ("physicalBandOrdering", "physical band ordering")):
        if system.settings.get(key):
            raise not_supported(path, key, what)
    notes = []
    for name, switch in ((f"expDefPot_{system.index}.par", "fit_defPot"),
                         (f"expEffMasses_{system.index}.par", "fit_eff_masses"),
                         (f"expCoupling_{system.index}.par", "fit_eph"), (f"qpoints_{system.index}.par", "fit_eph")):
        if (Path(folder) / name).is_file() and not system.settings.get(switch):
            notes.append(f"{name} is read only with {switch} = 1 in input_{system.index}.par (as in DeePseudopot)")
    return notes


class SystemObservables:
    """Deformation potentials and effective masses of one system, differentiable w.r.t. the model.

    ``defpots``: rows of ``expDefPot_X.par`` or None; ``masses``: (m_vb, m_cb, weight) or None.
    """

    def __init__(self, pw, defpots: Optional[Sequence[DefPotRow]] = None, masses: Optional[Tuple] = None):
        self.pw, self.defpots, self.masses = pw, list(defpots or []), masses
        settings = pw.system.settings
        if masses is not None:
            need = [key for key in ("idxGap", "idxVB", "idxCB") if key not in settings]
            if need or int(settings.get("idxGap", 0)) < 1:
                raise DataError(f"effective masses need idxGap >= 1, idxVB and idxCB (missing: {', '.join(need) or '-'})",
                                file=f"input_{pw.system.index}.par", key="fit_eff_masses")
        self._deformed: Dict[float, tuple] = {}
        for scale in sorted({row.scale for row in self.defpots}):
            ks = sorted({k for row in self.defpots if row.scale == scale for k, _, _ in row.terms})
            self._deformed[scale] = (ks, pw.deformed(scale, ks))

    @property
    def active(self) -> bool:
        return bool(self.defpots) or self.masses is not None

    def _needed_k(self) -> List[int]:
        ks = {k for row in self.defpots for k, _, _ in row.terms}
        if self.masses is not None:
            gap = int(self.pw.system.settings["idxGap"])
            ks |= {gap, gap - 1}
        return sorted(ks)

    def compute(self, form_factors) -> Dict[str, torch.Tensor]:
        """``form_factors(pw) -> (n_q, n_species)`` v(q) on a system's distinct q (with gradient).

        Returns ``defpot`` (n_rows,) eV, ``effmass`` (2,) m_e and their weighted losses (scalars).
        """
        out: Dict[str, torch.Tensor] = {}
        if not self.active:
            return out
        ks = self._needed_k()
        bands = self.pw.band_energies(self.pw.local_potential(form_factors(self.pw)), ks)
        row_of = {k: i for i, k in enumerate(ks)}
        if self.defpots:
            out["defpot"] = self._deformation(bands, row_of, form_factors)
            targets = torch.tensor([r.target for r in self.defpots], dtype=bands.dtype)
            weights = torch.tensor([r.weight for r in self.defpots], dtype=bands.dtype)
            out["defpot_loss"] = (weights * (out["defpot"] - targets) ** 2).sum()
        if self.masses is not None:
            out["effmass"] = self._masses(bands, row_of)
            target = torch.tensor(self.masses[:2], dtype=bands.dtype)
            out["effmass_loss"] = self.masses[2] * ((out["effmass"] - target) ** 2).sum()
        return out

    def _deformation(self, bands, row_of, form_factors) -> torch.Tensor:
        strained = {}
        for scale, (ks, pw) in self._deformed.items():
            energies = pw.band_energies(pw.local_potential(form_factors(pw)))
            strained[scale] = (energies, {k: i for i, k in enumerate(ks)})
        values = []
        for row in self.defpots:
            energies, index = strained[row.scale]
            relaxed = sum(sign * bands[row_of[k], b] for k, b, sign in row.terms)
            deformed = sum(sign * energies[index[k], b] for k, b, sign in row.terms)
            s3 = row.scale**3
            values.append((relaxed - deformed) / 2.0 * (1.0 + s3) / (1.0 - s3))
        return torch.stack(values)

    def _masses(self, bands, row_of) -> torch.Tensor:
        settings, pw = self.pw.system.settings, self.pw
        gap, vb, cb = int(settings["idxGap"]), int(settings["idxVB"]), int(settings["idxCB"])
        dk2 = float(np.sum((pw.kpoints[gap] - pw.kpoints[gap - 1]) ** 2))  # Bohr⁻²
        d_vb = (bands[row_of[gap - 1], vb] - bands[row_of[gap], vb]) / pw.ev  # Hartree
        d_cb = (bands[row_of[gap - 1], cb] - bands[row_of[gap], cb]) / pw.ev
        return torch.stack([-dk2 / (2.0 * d_vb), dk2 / (2.0 * d_cb)])
