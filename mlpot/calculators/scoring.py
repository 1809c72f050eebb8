"""Errors of a model against labels as DeePMD-kit 3.2's ``dp test`` reports them, streamed, and its detail files.

A scorer per model kind turns one frame's prediction and labels into error contributions:

* energy models: energy and energy per atom (eV), forces (eV/Å, per component), virial and virial
  per atom (eV, periodic frames only), stress (eV/Å^3), Hessian entries (eV/Å², frames with
  hessian.npy); with ``atomic`` the atomic energies;
* tensor models (dipole, polarizability; any unit, that of the labels): the global tensor, also
  divided by sqrt(N_sel) and N_sel, N_sel the atoms of the model's selected types (``RMSE/sqrtN``,
  ``RMSE/N``); with ``atomic`` the atomic tensors of the selected atoms instead;
* DOS models: the global DOS and the DOS divided by the atom count; with ``atomic`` the atomic DOS.

Only labels a frame carries (weight > 0) count. Contributions are running sums (Σ|d|, Σd², n) per
error in a :class:`SystemResult`, so nothing per frame is kept: MAE = Σ|d|/n, RMSE = sqrt(Σd²/n),
exactly the merge of DeePMD-kit's chunk errors. Systems combine weighted by n
(:func:`weighted_average`); errors DeePMD reports per system only (tensor RMSE/sqrtN and RMSE/N,
atomic DOS, atomic energy) stay out of the average.

Detail files (``-d PREFIX``, :class:`DetailWriter`): energy models write ``PREFIX.e.out``,
``.e_peratom.out``, ``.f.out``, ``.v.out``, ``.v_peratom.out``, ``.s.out``, ``.h.out`` (Hessian: one
row per entry, data_h pred_h, (3N)² rows per frame in row-major order) (a ``# <system>:
columns`` header per system); tensor models ``PREFIX.out`` (dp test's ``Path.with_suffix(".out")``;
the k-th system after the first ``PREFIX.out.k``), one row per frame: the label components then
the predicted ones (atomic: each selected atom's components, ``data_x1 data_y1 ... pred_z<N>``);
DOS models one file per frame, ``PREFIX.dos.out.<frame>`` (``.dos.out.<k>.<frame>`` for the k-th
system) with columns data_dos pred_dos, and with ``atomic`` ``PREFIX.ados.out.<frame>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

from mlpot.data import keys as K
from mlpot.training.metrics import combine_errors

__all__ = ["SystemResult", "DetailWriter", "scorers_for", "system_errors", "weighted_average", "format_report",
           "TENSOR_FOOTER"]

TENSOR_FOOTER = "The unit of error is the same as the unit of provided label."
_OCC = "Occupation/eV"
# error name -> report line, in dp test's order
REPORT_LINES = {
    "energy_mae": "Energy MAE         : {} eV", "energy_rmse": "Energy RMSE        : {} eV",
    "energy_mae_per_atom": "Energy MAE/Natoms  : {} eV", "energy_rmse_per_atom": "Energy RMSE/Natoms : {} eV",
    "forces_mae": "Force  MAE         : {} eV/A", "forces_rmse": "Force  RMSE        : {} eV/A",
    # spin models (dp test's lines): real forces, and magnetic forces of the magnetic atoms
    "force_r_mae": "Force atom MAE      : {} eV/A", "force_r_rmse": "Force atom RMSE     : {} eV/A",
    "force_m_mae": "Force spin MAE      : {} eV/uB", "force_m_rmse": "Force spin RMSE     : {} eV/uB",
    "virial_mae": "Virial MAE         : {} eV", "virial_rmse": "Virial RMSE        : {} eV",
    "virial_mae_per_atom": "Virial MAE/Natoms  : {} eV", "virial_rmse_per_atom": "Virial RMSE/Natoms : {} eV",
    "stress_mae": "Stress MAE         : {} eV/A^3", "stress_rmse": "Stress RMSE        : {} eV/A^3",
    "atom_energy_mae": "Atomic ener MAE    : {} eV", "atom_energy_rmse": "Atomic ener RMSE   : {} eV",
    "hessian_mae": "Hessian MAE        : {} eV/A^2", "hessian_rmse": "Hessian RMSE       : {} eV/A^2",
    **{f"{prefix}{label}_rmse{suffix}": f"{title}  RMSE{tail} : {{}}"
       for label, title in ((K.DIPOLE, "Dipole"), (K.POLARIZABILITY, "Polarizability"))
       for prefix in ("", "atomic_")
       for suffix, tail in (("", "      "), ("_sqrtn", "/sqrtN"), ("_n", "/N    "))
       if not (prefix and suffix)},
    "dos_mae": f"DOS MAE            : {{}} {_OCC}", "dos_rmse": f"DOS RMSE           : {{}} {_OCC}",
    "dos_mae_per_atom": f"DOS MAE/Natoms     : {{}} {_OCC}", "dos_rmse_per_atom": f"DOS RMSE/Natoms    : {{}} {_OCC}",
    "atom_dos_mae": f"Atomic DOS MAE     : {{}} {_OCC}", "atom_dos_rmse": f"Atomic DOS RMSE    : {{}} {_OCC}",
}


@dataclass
class SystemResult:
    """Running error sums of one system: ``sums[(label, suffix)] = [Σ|d|, Σd², n]`` (float64).

    suffix: "" or a normalisation such as ``_per_atom``, ``_sqrtn``, ``_n``; errors are named
    ``<label>_mae<suffix>`` / ``<label>_rmse<suffix>``. ``per_system_only``: error names kept
    out of :func:`weighted_average`; ``notes`` and ``footer``: lines for the report.
    """

    name: str
    n_frames: int = 0
    sums: Dict[tuple, np.ndarray] = field(default_factory=dict)
    per_system_only: Set[str] = field(default_factory=set)
    notes: List[str] = field(default_factory=list)
    footer: List[str] = field(default_factory=list)

    def add(self, label: str, diff, suffix: str = "", per_system_only: bool = False) -> None:
        """Add differences (prediction - label, any shape) to the error ``label`` + ``suffix``."""
        diff = np.asarray(diff, dtype=np.float64)
        totals = self.sums.setdefault((label, suffix), np.zeros(3))
        totals += (np.abs(diff).sum(), np.square(diff).sum(), diff.size)
        if per_system_only:
            self.per_system_only.update({f"{label}_mae{suffix}", f"{label}_rmse{suffix}"})

    def has(self, label: str) -> bool:
        return (label, "") in self.sums and self.sums[(label, "")][2] > 0


def system_errors(result: SystemResult) -> Dict[str, tuple]:
    """{error name: (value, number of values)}: MAE and RMSE (sqrt of the mean square) of every sum."""
    errors: Dict[str, tuple] = {}
    for (label, suffix), (abs_sum, sq_sum, count) in result.sums.items():
        if count <= 0:
            continue
        errors[f"{label}_mae{suffix}"] = (abs_sum / count, int(count))
        errors[f"{label}_rmse{suffix}"] = (math.sqrt(sq_sum / count), int(count))
    return errors


def weighted_average(all_errors: Sequence[Dict[str, tuple]], exclude=()) -> Dict[str, tuple]:
    """Combine per-system errors as ``dp test`` does (``mlpot.training.metrics.combine_errors``: MAE
    weighted by size, RMSE as sqrt of the size-weighted mean square); names in ``exclude``
    (per-system-only errors) are left out."""
    return combine_errors([{k: v for k, v in errors.items() if k not in set(exclude)} for errors in all_errors])


def format_report(errors: Dict[str, tuple], header: Sequence[str] = (), footer: Sequence[str] = ()) -> List[str]:
    """``dp test`` lines, e.g. ``Energy RMSE/Natoms : 2.976042e-03 eV``; absent errors are skipped."""
    lines = [f"# {text}" for text in header]
    lines += [template.format(f"{errors[name][0]:e}") for name, template in REPORT_LINES.items() if name in errors]
    return lines + list(footer)


class DetailWriter:
    """Writes dp test's detail files under ``prefix`` as frames are scored (see the module docstring).

    A file written for the first time in this run is truncated and gets its header; later rows are
    appended (files are opened per write, so any number of systems keeps no file open).
    """

    def __init__(self, prefix: str):
        self.prefix = str(prefix)
        self._written: Set[Path] = set()
        self._headed: Set[tuple] = set()

    def _rows(self, path: Path, rows: np.ndarray, header: Optional[str], header_key) -> None:
        mode = "a" if path in self._written else "w"
        self._written.add(path)
        write_header = header_key not in self._headed
        self._headed.add(header_key)
        with open(path, mode) as handle:
            np.savetxt(handle, np.atleast_2d(rows), header=header if write_header else "")

    def system_rows(self, suffix: str, system: str, names: Sequence[str], rows) -> None:
        """Energy-model files ``<prefix>.<suffix>.out`` with a ``<system>: names`` header per system."""
        path = Path(f"{self.prefix}.{suffix}.out")
        self._rows(path, rows, f"{system}: {' '.join(names)}", (path, system))

    def tensor_rows(self, group: int, names: Sequence[str], rows) -> None:
        """Tensor-model file ``<prefix>.out`` (system ``group`` > 0: ``.out.<group>``), one header."""
        path = Path(self.prefix).with_suffix(".out" + (f".{group}" if group else ""))
        self._rows(path, rows, " ".join(names), (path,))

    def frame_file(self, suffix: str, group: int, frame: int, system: str, reference, prediction) -> None:
        """One file per frame, ``<prefix>.<suffix>.out[.<group>].<frame>``: columns data, pred."""
        path = Path(self.prefix).with_suffix(f".{suffix}.out" + (f".{group}" if group else "") + f".{frame}")
        columns = np.stack([np.ravel(reference), np.ravel(prediction)], axis=1)
        np.savetxt(path, columns, header=f"{system} - {frame}: data_{suffix} pred_{suffix}")


def _has(frame: dict, key: str) -> bool:
    """The frame carries label ``key`` (weight > 0)."""
    return key in frame and float(np.max(frame.get(K.weight_key(key), 1.0))) > 0


_XYZ = ("x", "y", "z")
_PAIRS = tuple(a + b for a in _XYZ for b in _XYZ)


class EnergyScorer:
    """Energy, forces, virial, stress (and atomic energies with ``atomic``) of an energy model."""

    footer: Sequence[str] = ()

    def __init__(self, atomic: bool = False, spin: bool = False):
        self.atomic = bool(atomic)
        self.spin = bool(spin)  # a spin model: real and magnetic forces (dp test's force_r / force_m)

    def score(self, frame, pred, result: SystemResult, details: Optional[DetailWriter], index: int, group: int) -> None:
        n_atoms = len(frame[K.POSITIONS])
        if self.spin:
            self._score_spin(frame, pred, result, details)
        periodic = bool(np.all(frame[K.PBC]))
        if _has(frame, K.ENERGY):
            ref, out = np.reshape(frame[K.ENERGY], 1), np.reshape(pred[K.ENERGY], 1)
            result.add(K.ENERGY, out - ref)
            result.add(K.ENERGY, (out - ref) / n_atoms, "_per_atom")
            if details:
                details.system_rows("e", result.name, ("data_e", "pred_e"), np.concatenate([ref, out])[None])
                details.system_rows("e_peratom", result.name, ("data_e", "pred_e"),
                                    np.concatenate([ref, out])[None] / n_atoms)
        if _has(frame, K.FORCES) and K.FORCES in pred and not self.spin:  # energy-only models have none
            ref, out = np.asarray(frame[K.FORCES]), np.asarray(pred[K.FORCES])
            result.add(K.FORCES, out - ref)
            if details:
                names = [f"data_f{c}" for c in _XYZ] + [f"pred_f{c}" for c in _XYZ]
                details.system_rows("f", result.name, names, np.concatenate([ref, out], axis=1))
        for label, short, per_atom in ((K.VIRIAL, "v", True), (K.STRESS, "s", False)):
            # virial and stress only of periodic frames (DeePMD-kit issue #1286 is not copied)
            if not (_has(frame, label) and periodic and label in pred):
                continue
            ref, out = np.reshape(frame[label], 9), np.reshape(pred[label], 9)
            result.add(label, out - ref)
            if per_atom:
                result.add(label, (out - ref) / n_atoms, "_per_atom")
            if details:
                names = [f"data_{short}{c}" for c in _PAIRS] + [f"pred_{short}{c}" for c in _PAIRS]
                row = np.concatenate([ref, out])[None]
                details.system_rows(short, result.name, names, row)
                if per_atom:
                    details.system_rows(f"{short}_peratom", result.name, names, row / n_atoms)
        if _has(frame, K.HESSIAN) and K.HESSIAN in pred:  # the frame's (3N)² entries of the padded row
            ref = np.ravel(frame[K.HESSIAN])
            out = np.ravel(pred[K.HESSIAN])[: ref.size]
            result.add(K.HESSIAN, out - ref)
            if details:
                details.system_rows("h", result.name, ("data_h", "pred_h (3Na*3Na matrix in row-major order)"),
                                    np.stack([ref, out], axis=1))
        if self.atomic and _has(frame, K.ATOM_ENERGY) and K.ATOM_ENERGY in pred:
            result.add(K.ATOM_ENERGY, np.ravel(pred[K.ATOM_ENERGY]) - np.ravel(frame[K.ATOM_ENERGY]),
                       per_system_only=True)

    @staticmethod
    def _score_spin(frame, pred, result: SystemResult, details: Optional[DetailWriter]) -> None:
        """Real forces (eV/Å) of every atom, magnetic forces (eV/μB) of the magnetic atoms only
        (MAG_MASK), as ``dp test`` reports a spin model; detail files ``.fr`` and ``.fm``."""
        for label, name, short in ((K.FORCES, "force_r", "f"), (K.FORCE_MAG, "force_m", "fm")):
            if not (_has(frame, label) and label in pred):
                continue
            ref, out = np.asarray(frame[label]).reshape(-1, 3), np.asarray(pred[label]).reshape(-1, 3)
            if label == K.FORCE_MAG:
                magnetic = np.asarray(pred[K.MAG_MASK]).reshape(-1) > 0
                ref, out = ref[magnetic], out[magnetic]
            result.add(name, out - ref)
            if details:
                names = [f"data_{short}{c}" for c in _XYZ] + [f"pred_{short}{c}" for c in _XYZ]
                details.system_rows("fr" if label == K.FORCES else "fm", result.name, names,
                                    np.concatenate([ref, out], axis=1))

    def finish(self, result: SystemResult) -> None:
        pass


class TensorScorer:
    """Global (or with ``atomic``, per selected atom) dipole or polarizability errors.

    selected: (n_types,) bool, the types whose atoms carry the model's atomic tensors.
    """

    footer = (TENSOR_FOOTER,)

    def __init__(self, label: str, atom_label: str, selected: np.ndarray, atomic: bool = False):
        self.label, self.atom_label, self.atomic = label, atom_label, bool(atomic)
        self.selected = np.asarray(selected, dtype=bool)
        self.components = _XYZ if label == K.DIPOLE else tuple(f"p{pair}" for pair in _PAIRS)

    def score(self, frame, pred, result: SystemResult, details: Optional[DetailWriter], index: int, group: int) -> None:
        chosen = self.selected[np.asarray(frame[K.ATOM_TYPES])]
        n_sel = int(chosen.sum())
        if not self.atomic:
            if not _has(frame, self.label):
                return
            ref, out = np.ravel(frame[self.label]), np.ravel(pred[self.label])
            result.add(self.label, out - ref)
            if n_sel:
                result.add(self.label, (out - ref) / math.sqrt(n_sel), "_sqrtn", per_system_only=True)
                result.add(self.label, (out - ref) / n_sel, "_n", per_system_only=True)
            names = [f"{p}_{c}" for p in ("data", "pred") for c in self.components]
        else:
            if not _has(frame, self.atom_label) or n_sel == 0:
                return
            width = len(self.components)
            ref = np.reshape(frame[self.atom_label], (-1, width))[chosen].ravel()
            out = np.reshape(pred[self.atom_label], (-1, width))[chosen].ravel()
            result.add(self.atom_label, out - ref)
            names = [f"{p}_{c}{n}" for p in ("data", "pred") for n in range(1, n_sel + 1) for c in self.components]
        if details:
            details.tensor_rows(group, names, np.concatenate([ref, out])[None])

    def finish(self, result: SystemResult) -> None:
        if not result.has(self.atom_label if self.atomic else self.label):
            wanted = self.atom_label if self.atomic else self.label
            hint = "" if self.atomic else f" (atomic labels, {self.atom_label}, are tested with -a)"
            result.notes.append(f"no {wanted} labels in this system{hint}")


class DosScorer:
    """DOS and DOS per atom (and with ``atomic`` the atomic DOS) of a DOS model."""

    footer: Sequence[str] = ()

    def __init__(self, atomic: bool = False, spin: bool = False):
        self.atomic = bool(atomic)
        self.spin = bool(spin)  # a spin model: real and magnetic forces (dp test's force_r / force_m)

    def score(self, frame, pred, result: SystemResult, details: Optional[DetailWriter], index: int, group: int) -> None:
        n_atoms = len(frame[K.POSITIONS])
        if self.spin:
            self._score_spin(frame, pred, result, details)
        if _has(frame, K.DOS):
            ref, out = np.ravel(frame[K.DOS]), np.ravel(pred[K.DOS])
            result.add(K.DOS, out - ref)
            result.add(K.DOS, (out - ref) / n_atoms, "_per_atom")
            if details:
                details.frame_file("dos", group, index, result.name, ref, out)
        if self.atomic and _has(frame, K.ATOM_DOS):
            ref, out = np.ravel(frame[K.ATOM_DOS]), np.ravel(pred[K.ATOM_DOS])
            result.add(K.ATOM_DOS, out - ref, per_system_only=True)
            if details:
                details.frame_file("ados", group, index, result.name, ref, out)

    def finish(self, result: SystemResult) -> None:
        for label, tested in ((K.DOS, True), (K.ATOM_DOS, self.atomic)):
            if tested and not result.has(label):
                result.notes.append(f"no {label} labels in this system")


def scorers_for(output_keys: Sequence[str], selected: np.ndarray, atomic: bool = False) -> list:
    """The scorers of a model with outputs ``output_keys`` (empty: an energy model);
    selected: (n_types,) bool, types with atomic tensor outputs (tensor models)."""
    keys = set(output_keys) or {K.ENERGY}
    scorers: list = []
    if K.ENERGY in keys:
        scorers.append(EnergyScorer(atomic, spin=K.MAG_MASK in keys))
    for label, atom_label in ((K.DIPOLE, K.ATOMIC_DIPOLE), (K.POLARIZABILITY, K.ATOMIC_POLARIZABILITY)):
        if label in keys or atom_label in keys:
            scorers.append(TensorScorer(label, atom_label, selected, atomic))
    if K.DOS in keys or K.ATOM_DOS in keys:
        scorers.append(DosScorer(atomic))
    return scorers
