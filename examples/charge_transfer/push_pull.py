"""Non-local charge transfer at constant total charge: neutral push-pull polyenes X-(CH=CH)_n-Y,
labelled with GFN2-xTB (tblite).

Every molecule is neutral (total charge 0). The end groups are a donor or H at one end and an
acceptor or H at the other: X in ``DONORS`` (H, NH2, OH), Y in ``ACCEPTORS`` (H, NO2, CN, CHO). A donor
pushes electrons along the conjugated chain to the acceptor, so the charges of one end change with
the group at the other end, many Å away, while the total stays 0 (a uniform shift to the total
charge cannot reproduce that pattern: it is a dipole, not a uniform offset).

Geometries are ideal planar all-trans zigzags (C=C 1.35 Å, C-C 1.45 Å, C-H 1.09 Å, 120° angles;
end groups with textbook bond lengths, ``GROUP_BONDS``), built from the X end: the X-end carbon
at the origin, the chain along +x. All molecules with the same X and n share the coordinates of
every atom up to the Y end, so the X-end atoms' environments (within any cutoff shorter than their
distance to the Y group) are identical across Y and n; the Y-end atoms' environments are identical
across X and n up to a translation.

Labels per frame (extxyz): ``energy`` (eV), ``forces`` (eV/Å), ``REF_charges`` (Mulliken, e),
``total_charge`` (0), and ``donor``, ``acceptor`` (group names), ``n_double_bonds`` (n). Read by
``mlpot.data.read_frames`` with the default key map.

    python examples/charge_transfer/push_pull.py out.xyz [--lengths 4 5] [--donors H NH2 OH]
        [--acceptors H NO2 CN CHO]

About 0.05 s per molecule. Needs ``pip install tblite``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import List, Sequence

import numpy as np
from ase import Atoms

from make_dataset import CC_DOUBLE, CC_SINGLE, CH, _direction, label

# (element, parent index within the group (-1: the chain carbon), bond length Å, angle offset from
# the chain-to-group bond direction, degrees); +60° continues the all-trans zigzag
GROUP_BONDS = {
    "H": [("H", -1, CH, 0.0)],
    "NH2": [("N", -1, 1.38, 0.0), ("H", 0, 1.01, 60.0), ("H", 0, 1.01, -60.0)],
    "OH": [("O", -1, 1.36, 0.0), ("H", 0, 0.97, 60.0)],
    "NO2": [("N", -1, 1.46, 0.0), ("O", 0, 1.22, 60.0), ("O", 0, 1.22, -60.0)],
    "CN": [("C", -1, 1.43, 0.0), ("N", 0, 1.16, 0.0)],
    "CHO": [("C", -1, 1.46, 0.0), ("O", 0, 1.22, 60.0), ("H", 0, 1.10, -60.0)],
}
DONORS, ACCEPTORS = ("H", "NH2", "OH"), ("H", "NO2", "CN", "CHO")


def _add_group(symbols: list, coords: list, carbon: np.ndarray, angle: float, group: str) -> None:
    placed = []
    for element, parent, length, offset in GROUP_BONDS[group]:
        origin = carbon if parent < 0 else placed[parent]
        placed.append(origin + length * _direction(angle + offset))
        symbols.append(element)
    coords.extend(placed)


def push_pull(donor: str, acceptor: str, n_double_bonds: int) -> Atoms:
    """X-CH=CH-(CH=CH)_(n-1)-Y, planar all-trans zigzag in the xy plane, the X-end carbon at the
    origin, the chain along +x.

    Backbone bonds alternate +30° / -30° from the x axis; each carbon's H points away from its
    backbone neighbours; X leaves the first carbon at 150°, Y the last at -30° (continuing the zigzag).
    """
    if donor not in GROUP_BONDS or acceptor not in GROUP_BONDS:
        raise ValueError(f"unknown end group {donor if donor not in GROUP_BONDS else acceptor!r}; known: {sorted(GROUP_BONDS)}")
    n_carbons = 2 * n_double_bonds
    positions = [np.zeros(3)]
    for k in range(n_carbons - 1):
        positions.append(positions[-1] + (CC_DOUBLE if k % 2 == 0 else CC_SINGLE) * _direction(30.0 if k % 2 == 0 else -30.0))
    symbols, coords = ["C"] * n_carbons, list(positions)
    for atom in range(n_carbons):  # first carbon: bond at 30°, H at -90°; odd: 90°; even: -90°; last (odd): 90°
        symbols.append("H")
        coords.append(positions[atom] + CH * _direction(90.0 if atom % 2 == 1 else -90.0))
    _add_group(symbols, coords, positions[0], 150.0, donor)
    _add_group(symbols, coords, positions[-1], -30.0, acceptor)
    return Atoms(symbols, positions=np.array(coords))


def make_frames(lengths: Sequence[int] = (4, 5), donors: Sequence[str] = DONORS,
                acceptors: Sequence[str] = ACCEPTORS) -> List[Atoms]:
    """Every (n, donor, acceptor) molecule, neutral, labelled (energy, forces, Mulliken charges)."""
    return [_labelled(donor, acceptor, n) for n, donor, acceptor in itertools.product(lengths, donors, acceptors)]


def _labelled(donor: str, acceptor: str, n_double_bonds: int) -> Atoms:
    atoms = label(push_pull(donor, acceptor, n_double_bonds), 0.0)
    atoms.info.update(donor=donor, acceptor=acceptor, n_double_bonds=int(n_double_bonds))
    atoms.pbc = False
    return atoms


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    for end, groups in (("donors", DONORS), ("acceptors", ACCEPTORS)):
        parser.add_argument(f"--{end}", nargs="+", default=list(groups), choices=sorted(GROUP_BONDS))
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 5], help="numbers of C=C bonds")
    args = parser.parse_args(argv)
    import ase.io

    ase.io.write(args.output, make_frames(args.lengths, args.donors, args.acceptors), format="extxyz")


if __name__ == "__main__":
    main()
