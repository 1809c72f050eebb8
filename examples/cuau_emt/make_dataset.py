"""Generate the shipped example dataset: CuAu alloy frames labelled with ASE's EMT potential.

EMT (effective medium theory, ASE's built-in analytic potential for Cu, Au, Ag, Ni, Pd, Pt, Al)
gives energies, forces and stresses in milliseconds, so the example needs no downloads and no DFT.
Each frame is a 2x2x2 conventional fcc cell (32 atoms) with a random Cu/Au occupation, the
Vegard's-law lattice constant of its composition, a random small strain (so that the stress
varies) and a Gaussian rattle of the positions. Everything is drawn from one seeded numpy
generator, so the files are identical on every machine.

Output (extxyz, energies in eV, forces in eV/Å, stress in eV/Å^3 with ASE's sign convention):
``<out>/train.extxyz`` and ``<out>/test.extxyz``.

Usage: ``python examples/cuau_emt/make_dataset.py [--out DIR] [--n-train N] [--n-test N] [--seed S]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

HERE = Path(__file__).resolve().parent
LATTICE_CONSTANT = {"Cu": 3.61, "Au": 4.08}  # Å, fcc; alloys follow Vegard's law
RATTLE_STDDEV = 0.08  # Å
STRAIN_MAX = 0.03  # largest component of the random symmetric strain


def make_frame(rng: np.random.Generator):
    """One labelled 32-atom CuAu frame (ase.Atoms with a SinglePointCalculator)."""
    gold_fraction = rng.uniform(0.2, 0.8)
    lattice_constant = (1 - gold_fraction) * LATTICE_CONSTANT["Cu"] + gold_fraction * LATTICE_CONSTANT["Au"]
    atoms = bulk("Cu", "fcc", a=lattice_constant, cubic=True).repeat((2, 2, 2))
    symbols = np.where(rng.random(len(atoms)) < gold_fraction, "Au", "Cu")
    atoms.set_chemical_symbols(symbols.tolist())
    strain = rng.uniform(-STRAIN_MAX, STRAIN_MAX, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions += rng.normal(0.0, RATTLE_STDDEV, size=atoms.positions.shape)
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
    return atoms


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "data", help="output folder")
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    frames = [make_frame(rng) for _ in range(args.n_train + args.n_test)]
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "train.extxyz", frames[: args.n_train], format="extxyz")
    write(args.out / "test.extxyz", frames[args.n_train :], format="extxyz")
    energies = np.array([f.get_potential_energy() / len(f) for f in frames])
    force_rms = np.sqrt(np.mean(np.concatenate([f.get_forces().ravel() for f in frames]) ** 2))
    print(
        f"wrote {args.n_train} training and {args.n_test} test frames of {len(frames[0])} atoms to {args.out} "
        f"(energy/atom {energies.mean():.4f} ± {energies.std():.4f} eV, force RMS {force_rms:.3f} eV/Å)"
    )


if __name__ == "__main__":
    main()
