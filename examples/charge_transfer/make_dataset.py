"""Non-local charge transfer data: polyene Schiff bases, neutral and protonated, labelled with
GFN2-xTB (tblite).

Molecules H2C=CH-(CH=CH)_m-CH=NH (neutral imine, total charge 0) and the protonated Schiff base
H2C=CH-(CH=CH)_m-CH=NH2+ (total charge +1, the retinal chromophore's motif): the proton's positive
charge delocalises along the conjugated chain, so the charges of the CH2 end change with the
protonation of the N end, many Å away. Geometries are ideal planar zigzags (bond lengths 1.35 /
1.45 Å, C=N 1.29 Å, C-H 1.09 Å, N-H 1.01 Å, angles 120°) with the CH2 end at the origin and the chain
along +x: the CH2 end has the same coordinates in every frame, so its atoms' local environments are
identical across frames (within any cutoff shorter than their distance to the N end).

Labels per frame (extxyz): ``energy`` (eV), ``forces`` (eV/Å, -gradient), ``REF_charges`` (Mulliken
charges, e), ``total_charge`` (e), ``n_double_bonds``
(m + 1 C=C bonds), ``protonated`` (0/1). Read by ``mlpot.data.read_frames`` with the default key map.

    python examples/charge_transfer/make_dataset.py out.xyz [--lengths 2 3 4 5 6]

About 0.05 s per molecule. Needs ``pip install tblite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

CC_DOUBLE, CC_SINGLE, CN_DOUBLE, CH, NH = 1.35, 1.45, 1.29, 1.09, 1.01  # Å


def _direction(angle_deg: float) -> np.ndarray:
    angle = np.radians(angle_deg)
    return np.array([np.cos(angle), np.sin(angle), 0.0])


def schiff_base(n_double_bonds: int, protonated: bool) -> Atoms:
    """H2C=CH-(CH=CH)_(n-1)-CH=NH(2+): n C=C bonds, then C=N; planar all-trans zigzag in the xy plane.

    Backbone bonds alternate between directions +30° and -30° from the x axis (120° angles);
    each backbone atom's hydrogens point away from its two backbone neighbours.
    """
    heavy = ["C"] * (2 * n_double_bonds + 1) + ["N"]
    lengths = [CC_DOUBLE if k % 2 == 0 else CC_SINGLE for k in range(2 * n_double_bonds)] + [CN_DOUBLE]
    positions = [np.zeros(3)]
    for k, length in enumerate(lengths):
        positions.append(positions[-1] + length * _direction(30.0 if k % 2 == 0 else -30.0))
    symbols, coords = list(heavy), list(positions)

    def add_h(atom: int, angle: float, length: float):
        symbols.append("H")
        coords.append(positions[atom] + length * _direction(angle))

    # the CH2 end (atom 0, bonded along +30°): hydrogens at 150° and -90°
    add_h(0, 150.0, CH)
    add_h(0, -90.0, CH)
    for atom in range(1, len(heavy) - 1):  # one H per inner C, pointing away from the backbone
        add_h(atom, 90.0 if atom % 2 == 1 else -90.0, CH)  # odd atoms: bonds at 210° and 330°
    last = len(heavy) - 1  # N (odd index): bond back to the chain at 210°, N-H bonds at 90° and 330°
    add_h(last, 90.0, NH)
    if protonated:
        add_h(last, -30.0, NH)  # the proton continues the zigzag
    return Atoms(symbols, positions=np.array(coords))


def label(atoms: Atoms, total_charge: float) -> Atoms:
    """GFN2-xTB energy (eV), forces (eV/Å) and Mulliken charges (e), stored in atoms.info / arrays."""
    from tblite.interface import Calculator

    calculator = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / Bohr, charge=total_charge)
    calculator.set("verbosity", 0)
    result = calculator.singlepoint()
    charges = np.asarray(result.get("charges"), dtype=float)
    labelled = atoms.copy()
    labelled.info.update(energy=float(result.get("energy")) * Hartree, total_charge=float(total_charge))
    labelled.arrays["forces"] = -np.asarray(result.get("gradient")) * Hartree / Bohr
    labelled.arrays["REF_charges"] = charges
    return labelled


def make_frames(lengths: Sequence[int] = (2, 3, 4, 5, 6)) -> List[Atoms]:
    """Neutral and protonated Schiff bases with ``lengths`` C=C bonds each, labelled."""
    frames = []
    for n in lengths:
        for protonated in (False, True):
            atoms = label(schiff_base(n, protonated), 1.0 if protonated else 0.0)
            atoms.info.update(n_double_bonds=int(n), protonated=int(protonated))
            atoms.pbc = False
            frames.append(atoms)
    return frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="numbers of C=C bonds")
    args = parser.parse_args(argv)
    import ase.io

    ase.io.write(args.output, make_frames(args.lengths), format="extxyz")


if __name__ == "__main__":
    main()
