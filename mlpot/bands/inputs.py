"""Readers for the per-system files of a DeePseudopot inputs folder (spec deepseudopot.md §1.2-1.9).

Every reader validates what it reads and raises :class:`mlpot.errors.DataError` naming the file,
the line (as ``frame``-free message text) and the key. Units are kept as in the files: lengths in
Bohr, ``maxKE`` in Hartree, energies in eV; conversions happen in the Hamiltonian.

Species order everywhere is the sorted unique symbol list over all systems (alphabetical) [COMPAT].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mlpot.bands.kpath import path_length
from mlpot.errors import ConfigError, DataError, suggest

__all__ = [
    "parse_par_lines", "data_lines", "line_numbers", "SystemInput", "read_system", "read_input_par", "read_kpoints", "read_bands_table", "read_band_weights",
    "read_param_vector", "read_order_matrix", "read_mc_opts", "MC_OPTS_DEFAULTS", "read_param_steps",
    "read_beta_schedule", "read_system_bundle", "species_order", "N_PARAMS",
]

N_PARAMS = 9  # local a0..a3, long-range a4, spin-orbit a5, nonlocal a6 a7, strain a8 (spec §1.7)


@dataclass
class SystemInput:
    """One ``system_X`` bundle. ``cell`` (3,3) Bohr rows; ``positions`` (n_atoms,3) Bohr Cartesian;
    ``kpoints_frac`` (n_k,3) reciprocal-basis fractions; ``kweights`` (n_k,); ``ref_bands`` (n_k,nBands) eV;
    ``band_weights`` (nBands,); ``kdist`` (n_k,) path coordinate for plots."""

    index: int
    cell: np.ndarray
    symbols: List[str]
    positions: np.ndarray
    settings: Dict[str, object]
    kpoints_frac: np.ndarray
    kweights: np.ndarray
    ref_bands: Optional[np.ndarray] = None
    kdist: Optional[np.ndarray] = None
    band_weights: Optional[np.ndarray] = None
    order_matrix: Optional[np.ndarray] = None
    files: Dict[str, str] = field(default_factory=dict)

    @property
    def max_ke(self) -> float:
        return float(self.settings["maxKE"])

    @property
    def n_bands(self) -> int:
        return int(self.settings["nBands"])

    @property
    def name(self) -> str:
        """``systemName`` of ``input_X.par``, else the formula from the atoms (e.g. ``CdSe``)."""
        if self.settings.get("systemName"):
            return str(self.settings["systemName"])
        return "".join(dict.fromkeys(self.symbols))


def parse_par_lines(path) -> Dict[str, tuple]:
    """Read a ``key = value`` file (``NN_config.par``, ``input_X.par``, ``mcOpts.par``).

    Returns ``{key: (raw_value, line_number)}``. Text after ``#`` is dropped; blank and comment-only
    lines are skipped; a line without ``=`` raises ConfigError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found", file=str(path))
    out: Dict[str, tuple] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ConfigError(f"line {lineno}: expected 'key = value', got {raw.strip()!r}", file=str(path))
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise ConfigError(f"line {lineno}: empty key", file=str(path))
        out[key] = (value, lineno)
    return out


def line_numbers(line: str, file, lineno: int, key: str, count: Optional[int] = None) -> List[float]:
    """The numbers of one data line; DataError naming file, line and key otherwise (or a wrong count)."""
    try:
        values = [float(v) for v in line.split()]
    except ValueError:
        raise DataError(f"line {lineno}: expected numbers, got {line.strip()!r}", file=str(file), key=key) from None
    if count is not None and len(values) != count:
        raise DataError(f"line {lineno}: expected {count} numbers, got {len(values)}", file=str(file), key=key)
    return values


def data_lines(path: Path) -> List[tuple]:
    """``[(line number, text)]`` of a data file without comments (``#``) and blank lines."""
    if not Path(path).is_file():
        raise DataError("file not found", file=str(path))
    out = []
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((lineno, line))
    return out


def read_system(path) -> tuple:
    """``system_X.par`` -> (cell (3,3) Bohr, symbols, positions (n,3) Bohr Cartesian)."""
    lines = data_lines(path)
    scale, rows, symbols, fracs, block = None, [], [], [], None
    for lineno, line in lines:
        head = line.split()[0].lower()
        if head == "scale":
            tokens = line.replace("=", " = ").split()
            if len(tokens) != 3:
                raise DataError(f"line {lineno}: expected 'scale = value'", file=str(path), key="scale")
            scale = line_numbers(tokens[2], path, lineno, "scale")[0]
        elif head in ("cell", "atoms"):
            block = head
        elif block == "cell" and len(rows) < 3:
            rows.append(line_numbers(line, path, lineno, "cell", 3))
        elif block in ("atoms", "cell"):
            tokens = line.split()
            if len(tokens) != 4:
                raise DataError(f"line {lineno}: expected 'Symbol f1 f2 f3'", file=str(path), key="atoms")
            symbols.append(tokens[0])
            fracs.append(line_numbers(" ".join(tokens[1:]), path, lineno, "atoms", 3))
        else:
            raise DataError(f"line {lineno}: unexpected line {line!r}", file=str(path))
    if scale is None:
        raise DataError("missing 'scale = ...'", file=str(path), key="scale")
    if len(rows) != 3:
        raise DataError(f"the cell block needs 3 rows, got {len(rows)}", file=str(path), key="cell")
    if not symbols:
        raise DataError("no atoms", file=str(path), key="atoms")
    cell = scale * np.array(rows, dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-8:
        raise DataError("cell is singular", file=str(path), key="cell")
    positions = np.array(fracs, dtype=np.float64) @ cell
    return cell, symbols, positions


_INPUT_TYPES = {"maxKE": float, "nBands": int, "idxVB": int, "idxCB": int, "idxGap": int, "relE_bIdx": int,
                "BS_plot_center": float, "BS_plot_CBVB_range": float, "BS_plot_CBVB_range_zoom": float,
                "systemName": str, "fit_defPot": bool, "fit_eph": bool, "fit_eff_masses": bool, "trainLR": bool,
                "physicalBandOrdering": bool}


def read_input_par(path) -> Dict[str, object]:
    """``input_X.par`` -> dict; ``maxKE`` (Hartree) and ``nBands`` required."""
    raw = parse_par_lines(Path(path))
    out: Dict[str, object] = {}
    for key, (value, lineno) in raw.items():
        kind = _INPUT_TYPES.get(key)
        if kind is None:
            hint = suggest(key, list(_INPUT_TYPES))
            raise DataError(f"line {lineno}: unknown key", file=str(path), key=key,
                            hint=f"did you mean {hint!r}?" if hint else f"valid: {', '.join(_INPUT_TYPES)}")
        try:
            out[key] = kind(float(value)) if kind in (int, bool) else kind(value)
        except ValueError:
            raise DataError(f"line {lineno}: expected {kind.__name__}, got {value!r}", file=str(path), key=key) from None
    for key in ("maxKE", "nBands"):
        if key not in out:
            raise DataError("required key missing", file=str(path), key=key)
    if out["maxKE"] <= 0 or out["nBands"] < 1:
        raise DataError("maxKE and nBands must be positive", file=str(path), key="maxKE")
    return out


def read_kpoints(path) -> tuple:
    """``kpoints_X.par`` -> (fractions (n_k,3), weights (n_k,)). Weights are used as is [COMPAT]."""
    rows = [line_numbers(line, path, lineno, "kpoints", 4) for lineno, line in data_lines(path)]
    if not rows:
        raise DataError("no k-points", file=str(path), key="kpoints")
    table = np.array(rows, dtype=np.float64)
    return table[:, :3], table[:, 3]


def read_bands_table(path, n_bands: Optional[int] = None, n_k: Optional[int] = None) -> tuple:
    """``expBandStruct_X.par`` / ``*_BS_sysX.dat`` -> (kdist (n_k,), energies (n_k, n_bands) eV)."""
    rows = [line_numbers(line, path, lineno, "bands") for lineno, line in data_lines(path)]
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DataError(f"rows have different lengths {sorted(widths)}", file=str(path), key="bands")
    table = np.array(rows, dtype=np.float64)
    if n_k is not None and table.shape[0] != n_k:
        raise DataError(f"{table.shape[0]} rows but {n_k} k-points", file=str(path), key="bands")
    if n_bands is not None and table.shape[1] - 1 < n_bands:
        raise DataError(f"{table.shape[1] - 1} energy columns but nBands = {n_bands}", file=str(path), key="nBands")
    energies = table[:, 1:] if n_bands is None else table[:, 1:1 + n_bands]
    return table[:, 0], energies


def read_band_weights(path, n_bands: int) -> np.ndarray:
    """``bandWeights_X.par`` -> (nBands,); a length mismatch is an error."""
    values = [v for lineno, line in data_lines(path) for v in line_numbers(line, path, lineno, "bandWeights")]
    if len(values) != n_bands:
        raise DataError(f"{len(values)} weights but nBands = {n_bands}", file=str(path), key="bandWeights")
    return np.array(values, dtype=np.float64)


def read_param_vector(path) -> np.ndarray:
    """``init_<atom>Params.par`` -> (9,) float64, shorter files zero-padded (spec §1.7; [BUG] fix)."""
    values = [v for lineno, line in data_lines(path) for v in line_numbers(line, path, lineno, "params")]
    if not 4 <= len(values) <= N_PARAMS:
        raise DataError(f"expected 4 to {N_PARAMS} parameters, got {len(values)}", file=str(path), key="params")
    return np.pad(np.array(values, dtype=np.float64), (0, N_PARAMS - len(values)))


def read_order_matrix(path, n_k: int, n_bands: int) -> np.ndarray:
    """``kpoints_X_orderMatrix.par`` -> (n_k, n_bands) int permutation of sorted eigenvalues per k."""
    rows = [line_numbers(line, path, lineno, "orderMatrix") for lineno, line in data_lines(path)]
    table = np.array(rows, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] != n_k or table.shape[1] < n_bands:
        raise DataError(f"expected {n_k} rows of >= {n_bands} integers, got shape {table.shape}", file=str(path),
                        key="orderMatrix")
    return table.astype(np.int64)


MC_OPTS_DEFAULTS = {"betas": [100.0, 1.0], "stepsAtTemp": [5000, 500], "tempStepSizeMod": [1.0, 1.0],
                   "totalIter": 100000, "fitDefPot": False, "fitCoupling": False, "fitEffMass": False, "optGaps": False,
                   "defPotWeight": 1.0, "writePerIter": 100}


def read_mc_opts(path) -> Dict[str, object]:
    """``mcOpts*.par`` of the Zunger Monte Carlo driver, defaults filled (spec §1.9).

    Lines ``key = v1 [v2]``; an unknown key, a missing value or a comma is an error naming the line.
    """
    kinds = {"betas": (float, 2), "stepsAtTemp": (int, 2), "tempStepSizeMod": (float, 2), "totalIter": (int, 1),
             "fitDefPot": (bool, 1), "fitCoupling": (bool, 1), "fitEffMass": (bool, 1), "optGaps": (bool, 1),
             "defPotWeight": (float, 1), "writePerIter": (int, 1)}
    out: Dict[str, object] = dict(MC_OPTS_DEFAULTS)
    for key, (value, lineno) in parse_par_lines(Path(path)).items():
        if key not in kinds:
            hint = suggest(key, list(kinds))
            extra = " (per-parameter steps go in <atom>ParamSteps.par)" if key == "paramSteps" else ""
            raise DataError(f"line {lineno}: unknown key{extra}", file=str(path), key=key,
                            hint=f"did you mean {hint!r}?" if hint else f"valid: {', '.join(kinds)}")
        kind, count = kinds[key]
        tokens = value.split()
        if "," in value or len(tokens) != count:
            raise DataError(f"line {lineno}: expected {count} value(s) separated by spaces, got {value!r}",
                            file=str(path), key=key)
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError
                items = [value.lower() == "true"]
            else:
                items = [kind(float(t)) for t in tokens]
        except ValueError:
            raise DataError(f"line {lineno}: expected {'True/False' if kind is bool else kind.__name__}, got {value!r}",
                            file=str(path), key=key) from None
        out[key] = items if count == 2 else items[0]
    return out


def read_param_steps(path) -> np.ndarray:
    """``<atom>ParamSteps.par`` -> (9,) MC step sizes (shorter files zero-padded)."""
    values = [v for lineno, line in data_lines(path) for v in line_numbers(line, path, lineno, "ParamSteps")]
    if not 1 <= len(values) <= N_PARAMS:
        raise DataError(f"expected 1 to {N_PARAMS} step sizes, got {len(values)}", file=str(path), key="ParamSteps")
    return np.pad(np.array(values, dtype=np.float64), (0, N_PARAMS - len(values)))


def read_beta_schedule(path) -> np.ndarray:
    """``mc_beta_schedule`` file -> (n, 2) rows ``iteration beta`` sorted by iteration."""
    rows = np.array([line_numbers(line, path, lineno, "mc_beta_schedule", 2) for lineno, line in data_lines(path)])
    if rows.size == 0:
        raise DataError("empty schedule", file=str(path), key="mc_beta_schedule")
    return rows[np.argsort(rows[:, 0])]


def species_order(systems: Sequence[SystemInput]) -> List[str]:
    """Sorted unique symbols over all systems (alphabetical) [COMPAT]."""
    return sorted({s for system in systems for s in system.symbols})


def read_system_bundle(folder, index: int, need_reference: bool = True) -> SystemInput:
    """Read ``system_X``, ``input_X``, ``kpoints_X`` (+ order matrix), ``expBandStruct_X``, ``bandWeights_X``."""
    folder = Path(folder)
    cell, symbols, positions = read_system(folder / f"system_{index}.par")
    settings = read_input_par(folder / f"input_{index}.par")
    kfrac, kweights = read_kpoints(folder / f"kpoints_{index}.par")
    system = SystemInput(index, cell, symbols, positions, settings, kfrac, kweights)
    n_bands = system.n_bands
    ref_path = folder / f"expBandStruct_{index}.par"
    if ref_path.is_file() or need_reference:
        system.kdist, system.ref_bands = read_bands_table(ref_path, n_bands, len(kfrac))
        weight_path = folder / f"bandWeights_{index}.par"
        if not weight_path.is_file():
            raise DataError("file not found (needed by the band loss)", file=str(weight_path), key="bandWeights")
        system.band_weights = read_band_weights(weight_path, n_bands)
    order_path = folder / f"kpoints_{index}_orderMatrix.par"
    if order_path.is_file():
        system.order_matrix = read_order_matrix(order_path, len(kfrac), n_bands)
    if system.kdist is None:
        system.kdist = path_length(cell, kfrac)
    return system
