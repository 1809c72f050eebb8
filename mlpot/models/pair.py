"""Pair potentials: the ZBL screened nuclear repulsion kernel, and tabulated pair potentials in
DeePMD-kit's table format, alone (``pairtab``) or blended into a model at short range
(``use_srtab``), spec deepmd.md §5.1.

ZBL (Ziegler-Biersack-Littmark universal screening), the one kernel of every family's ZBL term:

    V(r) = k Z_i Z_j / r · Σ_k c_k exp(-d_k x),   x = r (Z_i^z + Z_j^z) / a_0

with the universal constants ``ZBL_UNIVERSAL`` (c = 0.18175, 0.50986, 0.28022, 0.02817;
d = 3.19980, 0.94229, 0.40290, 0.20162; a_0 = 0.46850 Å; z = 0.23; LAMMPS ``pair zbl`` and NequIP)
or mace-torch's variant (``ZBL_MACE``: rounded c = 0.1818, 0.5099, 0.2802, 0.02817 and d = 3.2,
0.9423, 0.4028, 0.2016, and its own screening length a_0 = 0.4543 · 0.529 Å with z = 0.3), and k
the Coulomb constant of the unit system.
Each family puts its own envelope and cutoff on top (NequIP: its polynomial envelope at the model
cutoff; MACE: the polynomial envelope cut at the sum of covalent radii). Written by hand: four
exponentials, and no library evaluates these variants in torch.

Table file (``tab_file`` / ``use_srtab``): a text table whose first column is the distance r (Å,
uniform grid from r_min) and whose other n(n+1)/2 columns hold the pair energy u(r) (eV) of the
type pairs (0,0), (0,1), ..., (0,n-1), (1,1), ... Each column becomes a clamped cubic spline
(scipy ``CubicSpline``, zero slope at both ends), evaluated per grid interval as a cubic in
u = (r - r_min)/h. If the model's ``rcut`` lies beyond the table, the table is padded with zeros
(last row zero) or extended by a cubic that reaches zero at the last grid point before rcut
(DeePMD-kit's rule, including its slope of v[-1] - v[-2] per Å [COMPAT]). u = 0 at and beyond
rcut; a pair closer than r_min is an error (the table says nothing there).

Atomic energy: E_i = 1/2 sum_j u_{t_i t_j}(r_ij) (each pair shared by its two atoms).

Short-range blend (``use_srtab`` in a standard model), with the soft-min distance
σ_i = sum_j r_ij e^{-r_ij/α} / sum_j e^{-r_ij/α} (α = ``smin_alpha``, sum over neighbours within the
model's cutoff) and λ_i = 1 for σ < sw_rmin, the quintic w((σ - sw_rmin)/(sw_rmax - sw_rmin)) between,
0 beyond (λ = 0 for an atom without neighbours):

    E_i = (1 - λ_i) E_i^DP + λ_i E_i^pair + b_{t_i}              (srtab_add_bias, the default)
    E_i = (1 - λ_i) (E_i^DP + b_{t_i}) + λ_i E_i^pair            (srtab_add_bias false, TF only)

E_i^DP is the inner model without a bias of its own: the blend owns the one output bias b
(DeePMD-kit's ZBL model is a linear model of the DP and table models with one combined bias). b is
fitted by least squares to label - (blend with b = 0), so the table's energy at short range
(ZBL: +276 eV per water frame, λ ~ 0.03 on the O-H bonds with sw_rmin 0.8, sw_rmax 1.0) is not
an offset of the initial model; DeePMD-kit fits b to the raw labels and starts with that offset.
Written by hand
because no library evaluates DeePMD-kit's table convention.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from scipy.interpolate import CubicSpline

from mlpot.data.keys import ATOM_ENERGY, ATOM_TYPES, BATCH, CELL, EDGE_INDEX, ENERGY, POSITIONS
from mlpot.errors import ConfigError, DataError
from mlpot.models.base import AtomisticModel, check_type_map, edge_vectors
from mlpot.models.sections import REQUIRED, Key, key, read_section
from mlpot.models.output_bias import OutputBias, fit_composite_bias
from mlpot.nn import scatter_sum, smooth_switch
from mlpot.units import MACE_BOHR_ANGSTROM

__all__ = ["PairTable", "read_pair_table", "PairTabModel", "ShortRangeTableBlend", "build_pairtab", "with_short_range_table",
           "ZBLConstants", "ZBL_UNIVERSAL", "ZBL_MACE", "zbl_pair_energy"]


@dataclass(frozen=True)
class ZBLConstants:
    """Constants of the ZBL screening function (module docstring): coefficients c_k, decay rates d_k,
    screening length a_0 (Å) and the exponent z of the atomic numbers."""

    coefficients: Tuple[float, ...]
    decays: Tuple[float, ...]
    screening_length: float
    z_exponent: float


ZBL_UNIVERSAL = ZBLConstants((0.18175, 0.50986, 0.28022, 0.02817), (3.19980, 0.94229, 0.40290, 0.20162), 0.46850, 0.23)
ZBL_MACE = ZBLConstants((0.1818, 0.5099, 0.2802, 0.02817), (3.2, 0.9423, 0.4028, 0.2016), 0.4543 * MACE_BOHR_ANGSTROM, 0.3)


def zbl_pair_energy(distance: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor, coulomb: float,
                    constants: ZBLConstants = ZBL_UNIVERSAL, coefficients: Optional[torch.Tensor] = None,
                    screening_length=None, z_exponent=None) -> torch.Tensor:
    """ZBL energy k Z_i Z_j / r · φ(x) of pairs without any envelope (module docstring).

    distance (n,) Å; z_i, z_j (n,) atomic numbers (float); coulomb k in energy · Å. ``coefficients``
    (4,), ``screening_length`` and ``z_exponent`` (floats or 0-d tensors) override the constants'
    values (mace-torch keeps them as loadable buffers). Returns (n,) in k's energy unit.
    """
    length = constants.screening_length if screening_length is None else screening_length
    exponent = constants.z_exponent if z_exponent is None else z_exponent
    x = (torch.pow(z_i, exponent) + torch.pow(z_j, exponent)) * distance / length
    c = constants.coefficients if coefficients is None else coefficients
    phi = sum(c[k] * torch.exp(-d * x) for k, d in enumerate(constants.decays))
    return coulomb * z_i * z_j / distance * phi


def read_pair_table(path, key: str = "model/tab_file") -> np.ndarray:
    """The table file as an array (n_rows, 1 + n(n+1)/2); errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"table file {str(path)!r} not found", key=key)
    try:
        data = np.atleast_2d(np.loadtxt(path, dtype=np.float64))
    except ValueError as error:
        raise ConfigError(f"not a numeric table: {error}", file=str(path), key=key) from None
    n_pairs = data.shape[1] - 1
    n_types = int(round((-1 + np.sqrt(1 + 8 * n_pairs)) / 2))
    if data.shape[0] < 2 or n_pairs < 1 or n_types * (n_types + 1) // 2 != n_pairs:
        raise ConfigError(f"expected a distance column and n(n+1)/2 energy columns and at least 2 rows, got shape {data.shape}",
                          file=str(path), key=key)
    steps = np.diff(data[:, 0])
    if not np.all(steps > 0) or not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-10):
        raise ConfigError("the distance column must be a uniform increasing grid", file=str(path), key=key)
    return data


def _extend_to_rcut(data: np.ndarray, rcut: float) -> np.ndarray:
    """Pad (zeros) or extrapolate the table up to rcut (DeePMD-kit's rule, module docstring)."""
    r_min, r_max, h = data[0, 0], data[-1, 0], data[1, 0] - data[0, 0]
    last = data[-1, 1:]
    rcut_index = int(np.ceil(rcut / h - r_min / h))  # DeePMD-kit's rounding, kept for identical tables
    n_new = rcut_index - (len(data) - 1)
    if rcut <= r_max or n_new <= 0:
        at_rcut = data[min(max(rcut_index, 0), len(data) - 1), 1:]
        if np.any(np.abs(at_rcut) > 1e-12):
            warnings.warn("the pair table does not decay to 0 at rcut: the energy jumps there", RuntimeWarning, stacklevel=3)
        return data
    extra = np.zeros((n_new, data.shape[1]))
    extra[:, 0] = r_max + h * np.arange(1, n_new + 1)
    if np.any(last != 0):
        warnings.warn("rcut goes beyond the pair table: extrapolating it to 0", RuntimeWarning, stacklevel=3)
        end = -2 if (extra[-1, 0] - r_max) / h >= 2 else -1
        slope = data[-1, 1:] - data[-2, 1:]  # [COMPAT] a difference, used as a slope per Å
        spline = CubicSpline([r_max, extra[end, 0]], np.stack([last, np.zeros_like(last)]),
                             bc_type=((1, slope), (1, np.zeros_like(slope))))
        extra[:, 1:] = spline(extra[:, 0])
        if end == -2:
            extra = extra[:-1]
    return np.concatenate([data, extra], axis=0)


class PairTable(torch.nn.Module):
    """Spline pair energies u_{t_i t_j}(r) of a DeePMD-kit table.

    Buffers: ``coefficients`` (n_types, n_types, n_intervals, 4) eV, cubic coefficients (a3, a2, a1, a0)
    in the reduced coordinate of each interval. forward(distance (n,) Å, ti (n,), tj (n,)) -> (n,) eV.
    """

    def __init__(self, data: np.ndarray, rcut: Optional[float] = None):
        super().__init__()
        rcut = float(data[-1, 0] if rcut is None else rcut)
        data = _extend_to_rcut(np.asarray(data, dtype=np.float64), rcut)
        self.r_min, self.step, self.rcut = float(data[0, 0]), float(data[1, 0] - data[0, 0]), rcut
        n_pairs = data.shape[1] - 1
        self.n_types = int(round((-1 + np.sqrt(1 + 8 * n_pairs)) / 2))
        self.n_intervals = len(data) - 1
        grid, values = data[:, 0], data[:, 1:]
        slopes = CubicSpline(grid, values, bc_type="clamped")(grid, 1) * self.step  # dv/du at the knots
        v0, v1, d0, d1 = values[:-1], values[1:], slopes[:-1], slopes[1:]
        cubic = np.stack([2 * v0 - 2 * v1 + d0 + d1, -3 * v0 + 3 * v1 - 2 * d0 - d1, d0, v0], axis=-1)  # (n_int, n_pairs, 4)
        coefficients = np.zeros((self.n_types, self.n_types, self.n_intervals, 4))
        ti, tj = np.triu_indices(self.n_types)  # column order (0,0), (0,1), ..., (1,1), ...
        coefficients[ti, tj] = coefficients[tj, ti] = cubic.transpose(1, 0, 2)
        self.register_buffer("coefficients", torch.as_tensor(coefficients))

    def forward(self, distance: torch.Tensor, ti: torch.Tensor, tj: torch.Tensor) -> torch.Tensor:
        reduced = (distance - self.r_min) / self.step
        interval = reduced.detach().floor().long().clamp(0, self.n_intervals - 1)
        u = reduced - interval.to(reduced.dtype)
        a3, a2, a1, a0 = self.coefficients.to(distance.dtype)[ti, tj, interval].unbind(-1)
        energy = ((a3 * u + a2) * u + a1) * u + a0
        inside = (distance < self.rcut) & (distance < self.r_min + self.n_intervals * self.step)
        return torch.where(inside, energy, torch.zeros_like(energy))


def pair_atom_energy(table: PairTable, batch: Dict[str, torch.Tensor], vectors: torch.Tensor,
                     cutoff: Optional[float] = None) -> torch.Tensor:
    """E_i = 1/2 sum_j u(r_ij) over the edges of the batch (shorter than ``cutoff`` Å if given), (n_atoms,) eV.

    A pair closer than the table's first distance is a DataError naming the frame.
    """
    types = batch[ATOM_TYPES]
    centre, neighbour = batch[EDGE_INDEX]
    distance = vectors.norm(dim=-1)
    if cutoff is not None:
        inside = torch.nonzero(distance.detach() < cutoff).squeeze(1)
        centre, neighbour, distance = centre[inside], neighbour[inside], distance[inside]
    too_close = distance.detach() < table.r_min
    if bool(too_close.any()):
        edge = int(torch.nonzero(too_close)[0])
        frame = int(batch[BATCH][centre[edge]])
        raise DataError(f"atoms {int(centre[edge])} and {int(neighbour[edge])} are {float(distance[edge]):.4f} Å apart, "
                        f"closer than the pair table's first distance {table.r_min} Å", key=POSITIONS, frame=frame)
    return scatter_sum(0.5 * table(distance, types[centre], types[neighbour]), centre, len(types))


def _table_from(value: Any, key: str, rcut: Optional[float]) -> PairTable:
    return PairTable(read_pair_table(value, key), rcut)


class PairTabModel(AtomisticModel):
    """Model type ``pairtab``: the tabulated pair energy alone. Outputs ATOM_ENERGY (n_atoms,), ENERGY (n_frames,) eV."""

    output_keys = (ATOM_ENERGY, ENERGY)

    def __init__(self, type_map, table: PairTable, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.type_map = list(type_map)
        if table.n_types < len(self.type_map):
            raise ConfigError(f"the table has {table.n_types} types but type_map has {len(self.type_map)}", key="model/tab_file")
        self.table = table
        self.cutoff = table.rcut
        self.config = dict(config or {})

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        atomic = pair_atom_energy(self.table, batch, edge_vectors(batch))
        return {ATOM_ENERGY: atomic, ENERGY: scatter_sum(atomic, batch[BATCH], batch[CELL].shape[0])}


PAIRTAB_KEYS: Dict[str, Key] = {
    "type": key(REQUIRED, annotation=str),
    "type_map": key(REQUIRED, annotation=List[str]),
    "tab_file": key(REQUIRED, note="DeePMD-kit table file", annotation=str),
    "rcut": key(REQUIRED, note="Å", annotation=float),
    "sel": key(None, note="accepted; every neighbour within rcut is used", annotation=Any),
}


def build_pairtab(config: Dict[str, Any], dtype: torch.dtype) -> PairTabModel:
    """``{"type": "pairtab", "type_map", "tab_file", "rcut", "sel"}``; sel is accepted (all neighbours are used)."""
    values = read_section(config, "model", PAIRTAB_KEYS, "PairTabSection")
    table = _table_from(values["tab_file"], "model/tab_file", float(values["rcut"]))
    return PairTabModel(check_type_map(values["type_map"]), table, config)


class ShortRangeTableBlend(AtomisticModel):
    """A model blended with a pair table at short range (``use_srtab``; formula in the module docstring).

    Outputs the inner model's ATOM_ENERGY / ENERGY replaced by the blend (eV). Buffers: ``bias_atom``
    (n_types, 1) eV, the one output bias, and ``out_std``.
    """

    def __init__(self, inner: AtomisticModel, table: PairTable, smin_alpha: float, sw_rmin: float, sw_rmax: float,
                 add_bias: bool = True):
        super().__init__()
        if not sw_rmax > sw_rmin:
            raise ConfigError(f"sw_rmax ({sw_rmax}) must be larger than sw_rmin ({sw_rmin})", key="model/sw_rmax")
        if not smin_alpha > 0:
            raise ConfigError(f"must be positive, got {smin_alpha}", key="model/smin_alpha")
        self.inner, self.table = inner, table
        self.smin_alpha, self.sw_rmin, self.sw_rmax, self.add_bias = float(smin_alpha), float(sw_rmin), float(sw_rmax), bool(add_bias)
        self.type_map, self.cutoff = inner.type_map, inner.cutoff
        self.output_keys = (ATOM_ENERGY, ENERGY)
        self.register_buffer("bias_atom", torch.zeros(len(self.type_map), 1, dtype=torch.float64))
        self.register_buffer("out_std", torch.ones(len(self.type_map), 1, dtype=torch.float64))

    def switch_weight(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        """λ_i (n_atoms,): 1 where the soft-min neighbour distance is below sw_rmin, 0 above sw_rmax."""
        centre = batch[EDGE_INDEX][0]
        distance = vectors.norm(dim=-1)
        inside = distance.detach() < self.cutoff
        n_atoms = batch[ATOM_TYPES].shape[0]
        # σ is unchanged by a common factor per atom: measure r from the atom's nearest neighbour so
        # that exp never overflows (exp(r_c/α) would in float32 for small α)
        nearest = torch.full((n_atoms,), float(self.cutoff), dtype=distance.dtype, device=distance.device)
        nearest = nearest.scatter_reduce(0, centre, distance.detach(), reduce="amin")
        weight = torch.where(inside, torch.exp(-(distance - nearest[centre]) / self.smin_alpha), torch.zeros_like(distance))
        numerator, denominator = scatter_sum(distance * weight, centre, n_atoms), scatter_sum(weight, centre, n_atoms)
        has_neighbors = denominator > 0
        sigma = numerator / torch.where(has_neighbors, denominator, torch.ones_like(denominator))
        lam = smooth_switch(sigma, self.sw_rmin, self.sw_rmax)
        return torch.where(has_neighbors, lam, torch.zeros_like(lam))

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        outputs = dict(self.inner(batch))
        vectors = edge_vectors(batch)
        lam = self.switch_weight(batch, vectors)
        pair = pair_atom_energy(self.table, batch, vectors, cutoff=self.cutoff)
        bias = self.bias_atom[batch[ATOM_TYPES], 0]
        model = outputs[ATOM_ENERGY] if self.add_bias else outputs[ATOM_ENERGY] + bias
        atomic = (1.0 - lam) * model + lam * pair + (bias if self.add_bias else 0.0)
        outputs[ATOM_ENERGY] = atomic
        outputs[ENERGY] = scatter_sum(atomic, batch[BATCH], batch[CELL].shape[0])
        return outputs

    def _bias_coefficients(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """∂E_i/∂b_{t_i}: 1, or 1 - λ_i without ``srtab_add_bias``."""
        if self.add_bias:
            return torch.ones(batch[ATOM_TYPES].shape[0], dtype=torch.float64)
        with torch.no_grad():
            return 1.0 - self.switch_weight(batch, edge_vectors(batch))

    def output_bias(self) -> OutputBias:
        return OutputBias(self.bias_atom, ENERGY, out_std=self.out_std, coefficients=self._bias_coefficients)

    def compute_statistics(self, batches: Iterable[Dict[str, torch.Tensor]], output_bias: bool = True,
                           **kwargs) -> Dict[str, Any]:
        """The inner model's input statistics (its own bias zero), then the blend's bias by least
        squares on label - prediction (module docstring)."""
        batches = list(batches)
        summary = {"inner": self.inner.compute_statistics(batches, output_bias=False, **kwargs)}
        summary.update(fit_composite_bias(self, batches, output_bias))
        return summary


SRTAB_KEYS = ("use_srtab", "smin_alpha", "sw_rmin", "sw_rmax", "srtab_add_bias")


def with_short_range_table(builder: Callable[[Dict[str, Any], torch.dtype], AtomisticModel]):
    """Wrap a model builder so that ``use_srtab`` (+ smin_alpha, sw_rmin, sw_rmax, srtab_add_bias) blends a pair table in."""

    def build(config: Dict[str, Any], dtype: torch.dtype) -> AtomisticModel:
        inner_config = {k: v for k, v in config.items() if k not in SRTAB_KEYS}
        inner = builder(inner_config, dtype)
        tab_file = config.get("use_srtab")
        if not tab_file:
            for key in ("smin_alpha", "sw_rmin", "sw_rmax"):
                if config.get(key) is not None:
                    raise ConfigError("only used with use_srtab (a pair table file)", key=f"model/{key}")
            return inner
        missing = [k for k in ("smin_alpha", "sw_rmin", "sw_rmax") if config.get(k) is None]
        if missing:
            raise ConfigError("required with use_srtab", key=f"model/{missing[0]}")
        table = _table_from(tab_file, "model/use_srtab", None)
        if table.n_types < len(inner.type_map):
            raise ConfigError(f"the table has {table.n_types} types but type_map has {len(inner.type_map)}", key="model/use_srtab")
        return ShortRangeTableBlend(inner, table, float(config["smin_alpha"]), float(config["sw_rmin"]), float(config["sw_rmax"]),
                                    add_bias=bool(config.get("srtab_add_bias", True)))

    build.__doc__ = builder.__doc__
    return build
