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


def test_average_feature_norms_from_water_clusters(shared_data):
    """'average' norms (spec §2.4) from the real data make each (l, width) block unit RMS, and
    frames without a Fermi-level label are left out of the estimate."""
    from mlpot.data import collate, read_frames
    from mlpot.data.keys import ATOMIC_MULTIPOLES, FERMI_LEVEL, weight_key
    from mlpot.electrostatics import FrameWiseElectrostatics
    from mlpot.errors import ConfigError

    frames = read_frames(shared_data("water_clusters_aims/water_clusters.xyz"), index="::10")
    solver = FrameWiseElectrostatics(sigma=1.5, method="realspace", field_feature_widths=(1.5, 3.0), field_feature_max_l=1)
    batches = [collate(frames[i:i + 5]) for i in range(0, len(frames), 5)]
    norms = solver.estimate_average_norms(batches)
    assert len(norms) == 4 and all(v > 1e-3 for v in norms)
    normalised = FrameWiseElectrostatics(sigma=1.5, method="realspace", field_feature_widths=(1.5, 3.0),
                                         field_feature_max_l=1, field_feature_norms=norms)
    feats = torch.cat([normalised.compute(b, b[ATOMIC_MULTIPOLES][:, :4], energy=False)["features"] for b in batches])
    assert feats[:, :2].pow(2).mean(0).sqrt().tolist() == pytest.approx([1.0, 1.0], rel=1e-9)
    l1 = feats[:, 2:].reshape(-1, 2, 3).pow(2).mean((0, 2)).sqrt()
    assert l1.tolist() == pytest.approx([1.0, 1.0], rel=1e-9)
    # a frame without the Fermi-level label does not count; none at all is a clear error
    for b in batches:
        b[weight_key(FERMI_LEVEL)] = torch.zeros_like(b[weight_key(FERMI_LEVEL)])
    with pytest.raises(ConfigError, match="field_feature_norms: cannot estimate 'average'"):
        solver.estimate_average_norms(batches)
