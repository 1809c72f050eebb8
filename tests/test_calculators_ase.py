"""ASE calculator: forces = -dE/dr and stress = (1/V) dE/dε by finite differences through the
calculator, ASE sign/Voigt convention, frozen-model round trip, and a few steps of ASE MD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.verlet import VelocityVerlet

from mlpot.calculators import MlpotCalculator, freeze, load_model
from mlpot.data import AtomsDataset, collate
from mlpot.data.frames import FrameList
from mlpot.errors import CheckpointError, DataError
from mlpot.models import build_model

SMALL_SE_A = {
    "type_map": ["Cu", "Au"],
    "descriptor": {"type": "se_e2_a", "sel": [40, 40], "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8],
                   "axis_neuron": 2, "seed": 1},
    "fitting_net": {"neuron": [8, 8], "seed": 2},
}


def _atoms(seed=1):
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 1, 1))
    atoms.symbols[[1, 4, 6]] = "Au"
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.03], [0.01, 0.0, 1.0]]),
                   scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def _frame(atoms, type_map):
    from mlpot.data import keys as K

    return {K.POSITIONS: atoms.positions.copy(), K.ATOM_TYPES: np.array([type_map.index(s) for s in atoms.symbols]),
            K.CELL: atoms.cell.array.copy(), K.PBC: atoms.pbc.copy()}


@pytest.fixture(scope="module")
def model():
    """A small se_e2_a model with data statistics from a few rattled frames (non-trivial outputs)."""
    torch.manual_seed(0)
    model = build_model(SMALL_SE_A, dtype=torch.float64)
    frames = FrameList([_frame(_atoms(seed), SMALL_SE_A["type_map"]) for seed in range(3)], SMALL_SE_A["type_map"])
    dataset = AtomsDataset(frames, cutoff=model.cutoff)
    batch = collate([dataset[i] for i in range(len(dataset))])
    from mlpot.models.base import edge_vectors

    model.descriptor.compute_statistics([(batch, edge_vectors(batch))])
    return model.eval()


def test_forces_are_minus_energy_gradient(model):
    atoms = _atoms()
    atoms.calc = MlpotCalculator(model)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # a non-trivial check
    numerical = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(forces, numerical, atol=1e-7, rtol=1e-5)
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)


def test_stress_is_ase_convention(model):
    atoms = _atoms()
    atoms.calc = MlpotCalculator(model)
    stress = atoms.get_stress()
    virial = atoms.calc.results["virial"].copy()
    np.testing.assert_allclose(atoms.get_stress(voigt=False), -0.5 * (virial + virial.T) / atoms.get_volume(),
                               atol=1e-12)
    assert stress.shape == (6,)
    assert np.abs(stress).max() > 1e-5
    # ASE's finite strain: sigma_ij = (1/V) dE/d(eps_ij), Voigt order xx yy zz yz xz xy
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=2e-8, rtol=1e-5)


def test_nonperiodic_and_type_errors(model):
    cluster = molecule("CH4")
    cluster.calc = MlpotCalculator(model)
    with pytest.raises(DataError, match=r"elements \['C', 'H'\] are not in the model's type map"):
        cluster.get_potential_energy()
    dimer = bulk("Cu", "fcc", a=3.75, cubic=True)
    dimer.pbc = False
    dimer.calc = MlpotCalculator(model)
    assert np.isfinite(dimer.get_potential_energy())
    np.testing.assert_allclose(dimer.get_forces().sum(0), 0.0, atol=1e-10)  # isolated: no net force
    with pytest.raises(PropertyNotImplementedError):
        dimer.get_stress()


def test_frozen_model_round_trip(tmp_path, model):
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"format": "mlpot-frozen", "format_version": 1, "model_config": model.config,
                "state_dict": model.state_dict(), "dtype": "float64", "metadata": {"step": 7}}, checkpoint)
    metadata = freeze(checkpoint, tmp_path / "frozen.pt")
    assert metadata["type_map"] == ["Cu", "Au"] and metadata["cutoff"] == 4.0 and metadata["step"] == 7
    atoms = _atoms()
    atoms.calc = MlpotCalculator(str(tmp_path / "frozen.pt"))
    reference = _atoms()
    reference.calc = MlpotCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-12)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes((tmp_path / "frozen.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        load_model(truncated)


def test_ase_md_runs_and_conserves_energy(model):
    atoms = _atoms()
    atoms.calc = MlpotCalculator(model)
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(0, 0.05, size=(len(atoms), 3)) * atoms.get_masses()[:, None] ** 0.5)
    start = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(5)
    assert np.isfinite(atoms.get_total_energy())
    assert abs(atoms.get_total_energy() - start) < 1e-4 * len(atoms)  # eV: velocity Verlet conserves E
