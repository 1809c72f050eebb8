"""Small synthetic extxyz datasets for the MACE family and front-end tests (fast to train on)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

E0 = {1: -13.6, 8: -2041.8}


def small_frames(n_frames: int, seed: int = 0, isolated: bool = False) -> List[Atoms]:
    """Periodic 4 Å boxes of 2-4 water-like molecules on a jittered grid (atoms >= ~0.9 Å apart),
    energies = E0s + a smooth random part, random forces; ``isolated``: one O and one H atom first,
    marked config_type=IsolatedAtom."""
    rng = np.random.default_rng(seed)
    images = []
    if isolated:
        for z in (8, 1):
            atoms = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * 20.0, pbc=False)
            atoms.info["config_type"] = "IsolatedAtom"
            atoms.calc = SinglePointCalculator(atoms, energy=E0[z] + 0.1 * z, forces=np.zeros((1, 3)))
            images.append(atoms)
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], dtype=float) * 2.0 + 0.5
    for _ in range(n_frames):
        n_molecules = int(rng.integers(2, 5))
        sites = rng.permutation(len(grid))[:n_molecules]
        numbers, positions = [], []
        for site in sites:
            centre = grid[site] + rng.normal(scale=0.05, size=3)
            numbers += [8, 1, 1]
            positions += [centre, centre + [0.95, 0.1, 0.0], centre + [-0.2, 0.93, 0.1]]
        atoms = Atoms(numbers=numbers, positions=positions, cell=np.eye(3) * 4.0, pbc=True)
        energy = sum(E0[z] for z in numbers) + float(rng.normal(scale=0.3)) - 0.2 * n_molecules
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=rng.normal(scale=0.5, size=(len(numbers), 3)))
        images.append(atoms)
    return images


def write_small(path: Path, n_frames: int, seed: int = 0, isolated: bool = False) -> List[Atoms]:
    """Write the frames; returns them as read back (the file's rounding)."""
    ase.io.write(path, small_frames(n_frames, seed, isolated), format="extxyz")
    return ase.io.read(path, index=":")


TINY_MODEL = {"hidden_irreps": "4x0e + 4x1o", "r_max": 2.5, "max_ell": 1, "correlation": 2, "radial_MLP": "[8]",
              "num_radial_basis": 4, "MLP_irreps": "4x0e"}
