"""Small molecules with GFN2-xTB energies, forces and Hessians, written as DeePMD systems (tblite).

For each molecule (ASE's ``molecule`` geometries: H2O, CH3OH, NH3) ``--frames`` geometries are drawn
by displacing every atom by a Gaussian of ``--sigma`` Å per component (seeded). Labels per frame:

* ``energy.npy`` (eV) and ``force.npy`` (eV/Å, minus the analytic gradient) from tblite;
* ``hessian.npy`` (eV/Å², (3N)² values per frame, row-major, atom order x1 y1 z1 x2 ...):
  tblite's Python interface has no analytic Hessian, so it is the central finite difference of
  the analytic forces, H[:, 3a+c] = -(F(x + h e_ac) - F(x - h e_ac)) / (2h), step ``--step``
  (default 1e-3 Å), symmetrised as (H + H^T) / 2. Its error is O(h²) plus the SCF noise of the
  gradients over 2h; the script prints an estimate (the largest change against step h/2 on the
  first frame of each molecule, and the largest asymmetry before symmetrising): 1e-4 to 2e-4 eV/Å²
  against entries up to 50-70 eV/Å² (relative 3e-6) with tblite's accuracy 0.01 used here.

Each molecule is one system ``OUT/<name>`` (``nopbc``, ``type_map.raw`` = the common type map
H C N O). Cost: 6N + 1 singlepoints per frame, about 0.1 s per water frame.

    python examples/hessian/make_dataset.py OUT [--molecules H2O CH3OH] [--frames 30] [--seed 0]

Needs ``pip install tblite``. Data are written where asked, never into the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
from ase.build import molecule
from ase.units import Bohr, Hartree

TYPE_MAP = ("H", "C", "N", "O")
MOLECULES = ("H2O", "CH3OH", "NH3")


def energy_forces(numbers: np.ndarray, positions: np.ndarray, accuracy: float = 0.01):
    """GFN2-xTB (energy eV, forces (n_atoms, 3) eV/Å) of a neutral molecule at ``positions`` Å."""
    from tblite.interface import Calculator

    calculator = Calculator("GFN2-xTB", numbers, positions / Bohr)
    calculator.set("verbosity", 0)
    calculator.set("accuracy", accuracy)
    result = calculator.singlepoint()
    return float(result.get("energy")) * Hartree, -np.asarray(result.get("gradient")) * Hartree / Bohr


def fd_hessian(numbers: np.ndarray, positions: np.ndarray, step: float = 1e-3, symmetrise: bool = True) -> np.ndarray:
    """(3N, 3N) eV/Å²: central differences of the analytic forces with ``step`` Å (module docstring)."""
    n_coords = positions.size
    hessian = np.zeros((n_coords, n_coords))
    for column in range(n_coords):  # one displaced pair per coordinate: 6N singlepoints
        displaced = []
        for sign in (1.0, -1.0):
            moved = positions.copy().reshape(-1)
            moved[column] += sign * step
            displaced.append(energy_forces(numbers, moved.reshape(-1, 3))[1].reshape(-1))
        hessian[:, column] = -(displaced[0] - displaced[1]) / (2.0 * step)
    return 0.5 * (hessian + hessian.T) if symmetrise else hessian


def make_system(name: str, n_frames: int, sigma: float, step: float, rng: np.random.Generator):
    """Frames (dicts of mlpot batch keys) of molecule ``name`` and accuracy estimates of its Hessians."""
    from mlpot.data import keys as K

    base = molecule(name)
    numbers = base.numbers
    types = np.array([TYPE_MAP.index(symbol) for symbol in base.get_chemical_symbols()], dtype=np.int64)
    frames = []
    for index in range(n_frames):
        positions = base.positions + rng.normal(0.0, sigma, base.positions.shape)
        energy, forces = energy_forces(numbers, positions)
        hessian = fd_hessian(numbers, positions, step)
        frames.append({K.POSITIONS: positions, K.ATOM_TYPES: types, K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool),
                       K.ENERGY: np.array(energy), K.FORCES: forces, K.HESSIAN: hessian.reshape(-1),
                       K.weight_key(K.ENERGY): np.array(1.0), K.weight_key(K.FORCES): np.array(1.0),
                       K.weight_key(K.HESSIAN): np.array(1.0)})
        if index == 0:
            raw = fd_hessian(numbers, positions, step, symmetrise=False)
            half = fd_hessian(numbers, positions, step / 2)
            accuracy = {"max |H|": float(np.abs(hessian).max()), "step h/2 change": float(np.abs(half - hessian).max()),
                        "asymmetry": float(np.abs(raw - raw.T).max())}
    return frames, accuracy


def write_dataset(out: Path, molecules: Sequence[str] = ("H2O", "CH3OH"), n_frames: int = 30, sigma: float = 0.05,
                  step: float = 1e-3, seed: int = 0) -> Dict[str, dict]:
    """Write one DeePMD system per molecule under ``out``; returns {name: accuracy estimates (eV/Å²)}."""
    from mlpot.data.deepmd_format import write_deepmd_npy

    rng = np.random.default_rng(seed)
    report = {}
    for name in molecules:
        frames, accuracy = make_system(name, n_frames, sigma, step, rng)
        write_deepmd_npy(Path(out) / name, frames, type_map=list(TYPE_MAP))
        report[name] = accuracy
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--molecules", nargs="+", default=["H2O", "CH3OH"], choices=MOLECULES)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--sigma", type=float, default=0.05, help="displacement per component, Å")
    parser.add_argument("--step", type=float, default=1e-3, help="finite-difference step, Å")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = write_dataset(args.out, args.molecules, args.frames, args.sigma, args.step, args.seed)
    for name, accuracy in report.items():
        print(f"{args.out / name}: {args.frames} frames; " + ", ".join(f"{k} {v:.2e}" for k, v in accuracy.items()))


if __name__ == "__main__":
    main()
