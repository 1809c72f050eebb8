"""Real data: FHI-aims water clusters with atomic multipoles (shared data water_clusters_aims)."""

import pytest
import torch

from mlpot.electrostatics import CoulombOptions, coulomb_energy, frame_dipoles, split_multipoles

F64 = torch.float64


def _frames(shared_data, stride):
    ase_io = pytest.importorskip("ase.io")
    path = shared_data("water_clusters_aims/water_clusters.xyz")
    return ase_io.read(path, index=f"::{stride}")


def _check(frames):
    for k, atoms in enumerate(frames):
        positions = torch.tensor(atoms.get_positions(), dtype=F64)
        # file columns: charge, dipole (y, z, x), quadrupole; L = 1 keeps the first four
        multipoles = torch.tensor(atoms.arrays["AIMS_atom_multipoles"][:, :4], dtype=F64)
        dipole = frame_dipoles(positions, multipoles, torch.zeros(len(atoms), dtype=torch.long), 1)[0]
        reference = torch.tensor(atoms.info["AIMS_dipole"], dtype=F64)
        assert torch.allclose(dipole, reference, atol=1e-5, rtol=1e-6), f"frame {k}"
        charges, _ = split_multipoles(multipoles)
        assert float(charges.sum()) == pytest.approx(atoms.info["total_charge"], abs=1e-6)
        cell = torch.tensor(atoms.cell.array, dtype=F64)
        real = coulomb_energy(positions, multipoles, 1.5, None, (False,) * 3, "realspace")
        boxed = coulomb_energy(positions, multipoles, 1.5, cell, (False,) * 3, "molecule_in_box", options=CoulombOptions(kspace_solver="ewald"))
        assert torch.isfinite(real) and torch.isfinite(boxed)
        assert float(boxed) == pytest.approx(float(real), rel=5e-3, abs=1e-3), f"frame {k}"


def test_water_clusters_dipoles_and_molecule_in_box_subset(shared_data):
    _check(_frames(shared_data, 15))


@pytest.mark.slow
def test_water_clusters_all_frames(shared_data):
    _check(_frames(shared_data, 1))
