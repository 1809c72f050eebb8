"""Write the pair tables of DeePMD-kit's water composite-model examples, in DeePMD-kit's table format.

* ``zbl.txt`` — the Ziegler–Biersack–Littmark universal screened nuclear repulsion for the type
  pairs (O, O), (O, H), (H, H) (the physics of examples/water/zbl's ``H2O_tab_potential.txt``):
  u(r) = e²/(4πε0) Z_i Z_j / r · φ(r/a), a = 0.46850 Å / (Z_i^0.23 + Z_j^0.23),
  φ(x) = 0.18175 e^{-3.19980x} + 0.50986 e^{-0.94229x} + 0.28022 e^{-0.40290x} + 0.02817 e^{-0.20162x};
  r = 0.001 … 6 Å in steps of 0.001 Å, as the example's table.
* ``dftd2.txt`` — a Grimme D2 dispersion pair energy (J. Comput. Chem. 27, 1787 (2006): C6(H) = 0.14,
  C6(O) = 0.70 J nm^6 mol^-1, R0(H) = 1.001, R0(O) = 1.342 Å, d = 20, s6 = 0.75 for PBE), shifted to 0 at
  the 10 Å cutoff, for the d3 example's ``linear_ener`` of a network and a dispersion table
  (examples/water/d3 uses a D3 table of the same form and range: r = 0.1 … 10 Å in steps of 0.1 Å).

* ``repulsion.txt`` — the same ZBL repulsion switched off smoothly (quintic, C2) between r_on and
  r_off per pair: O–O 1.7 → 2.2 Å, O–H 0.55 → 0.8 Å, H–H 0.9 → 1.25 Å; zero at every distance
  of the water data (closest O–O 2.39, O–H 0.885, H–H 1.35 Å), so it changes no label fit and
  only walls off the short-range region a network never saw (examples/md_water/input_repulsion.json:
  a model trained 3000 steps falls into an O–O hole after ~500 NVE steps at 300 K without it).
  r = 0.001 … 2.5 Å in steps of 0.001 Å.

Columns: r (Å), then u_OO, u_OH, u_HH (eV). Usage: ``python make_tables.py [output_dir]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

COULOMB = 14.399645  # e²/(4πε0) in eV·Å
Z = {"O": 8, "H": 1}
C6 = {"O": 0.70, "H": 0.14}  # J nm^6 mol^-1
R0 = {"O": 1.342, "H": 1.001}  # Å
JNM6_PER_MOL_TO_EV_A6 = 1e6 / 96485.33212  # 1 J/mol = 1/96485.33 eV; 1 nm^6 = 1e6 Å^6
PAIRS = (("O", "O"), ("O", "H"), ("H", "H"))


def zbl(r: np.ndarray, zi: int, zj: int) -> np.ndarray:
    a = 0.46850 / (zi ** 0.23 + zj ** 0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x)
           + 0.28022 * np.exp(-0.40290 * x) + 0.02817 * np.exp(-0.20162 * x))
    return COULOMB * zi * zj / r * phi


REPULSION_SWITCH = {("O", "O"): (1.7, 2.2), ("O", "H"): (0.55, 0.8), ("H", "H"): (0.9, 1.25)}  # Å


def switched_off(r: np.ndarray, r_on: float, r_off: float) -> np.ndarray:
    """1 below r_on, 0 above r_off, the quintic 1 - 10x³ + 15x⁴ - 6x⁵ between (C2 at both ends)."""
    x = np.clip((r - r_on) / (r_off - r_on), 0.0, 1.0)
    return 1.0 - x ** 3 * (10.0 - 15.0 * x + 6.0 * x ** 2)


def dispersion_d2(r: np.ndarray, i: str, j: str, s6: float = 0.75, d: float = 20.0) -> np.ndarray:
    c6 = np.sqrt(C6[i] * C6[j]) * JNM6_PER_MOL_TO_EV_A6
    damping = 1.0 / (1.0 + np.exp(-d * (r / (R0[i] + R0[j]) - 1.0)))
    return -s6 * c6 / r ** 6 * damping


def write_tables(folder) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    r = np.round(np.arange(1, 6001) * 0.001, 6)
    zbl_table = np.column_stack([r] + [zbl(r, Z[i], Z[j]) for i, j in PAIRS])
    np.savetxt(folder / "zbl.txt", zbl_table, fmt="%.10e")
    r = np.round(np.arange(1, 101) * 0.1, 6)
    columns = [dispersion_d2(r, i, j) for i, j in PAIRS]
    columns = [c - c[-1] for c in columns]  # 0 at the 10 Å cutoff: no energy jump
    np.savetxt(folder / "dftd2.txt", np.column_stack([r] + columns), fmt="%.12e")
    r = np.round(np.arange(1, 2501) * 0.001, 6)
    columns = [zbl(r, Z[i], Z[j]) * switched_off(r, *REPULSION_SWITCH[(i, j)]) for i, j in PAIRS]
    np.savetxt(folder / "repulsion.txt", np.column_stack([r] + columns), fmt="%.10e")
    return {"zbl": folder / "zbl.txt", "dftd2": folder / "dftd2.txt", "repulsion": folder / "repulsion.txt"}


if __name__ == "__main__":
    written = write_tables(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    print("wrote " + ", ".join(str(p) for p in written.values()))
