"""The ASE calculator for MD: the skin neighbour list (reused, yet the model sees exactly the pairs
within its cutoff: energies and forces equal a from-scratch evaluation along an MD trajectory),
per-atom energies and virials that add up to the totals, float32/float64, the model's other
outputs in ``results`` and the frame inputs read from ``atoms.info``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from mlpot.calculators import MlpotCalculator
from mlpot.calculators.structure import inputs_from_info
from mlpot.data import AtomsDataset, collate, keys as K, neighbor_list
from mlpot.data.frames import FrameList
from mlpot.data.verlet import VerletList
from mlpot.models import build_model
from mlpot.models.base import edge_vectors

TYPE_MAP = ["Cu", "Au"]
SE_A = {"type": "se_e2_a", "sel": [40, 40], "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8], "axis_neuron": 2,
        "seed": 1}


def _atoms(seed=1, repeat=(2, 1, 1)):
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(repeat)
    atoms.symbols[[1, 4, 6]] = "Au"
    atoms.rattle(0.05, seed=seed)
    return atoms


def _model(fitting=None, dtype=torch.float64):
    torch.manual_seed(0)
    model = build_model({"type_map": TYPE_MAP, "descriptor": SE_A, "fitting_net": fitting or {"neuron": [8, 8], "seed": 2}},
                        dtype=dtype)
    frames = []
    for seed in range(3):
        atoms = _atoms(seed)
        frames.append({K.POSITIONS: atoms.positions, K.ATOM_TYPES: np.array([TYPE_MAP.index(s) for s in atoms.symbols]),
                       K.CELL: atoms.cell.array, K.PBC: atoms.pbc, K.FPARAM: np.array([0.3 * seed])})
    dataset = AtomsDataset(FrameList(frames, TYPE_MAP), cutoff=model.cutoff)
    batch = collate([dataset[i] for i in range(len(dataset))])
    model.descriptor.compute_statistics([(batch, edge_vectors(batch))])
    if getattr(model.fitting, "numb_fparam", 0):
        model.compute_statistics([batch])
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def test_verlet_list_gives_the_from_scratch_pairs():
    rng = np.random.default_rng(0)
    atoms = _atoms(repeat=(2, 2, 2))
    verlet = VerletList(cutoff=4.0, skin=0.6)
    for step in range(30):
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
        edges, shifts = verlet.update(atoms.positions, atoms.cell.array, atoms.pbc)
        reference, reference_shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
        np.testing.assert_array_equal(edges, reference)
        np.testing.assert_array_equal(shifts, reference_shifts)
    assert 1 < verlet.rebuilds < 15  # reused between rebuilds, rebuilt when atoms moved > skin/2
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)  # a new cell always rebuilds
    before = verlet.rebuilds
    verlet.update(atoms.positions, atoms.cell.array, atoms.pbc)
    assert verlet.rebuilds == before + 1
    with pytest.raises(ValueError, match="skin >= 0"):
        VerletList(4.0, skin=-1.0)


def _pair_set(positions, cell, edges, shifts):
    vectors = positions[edges[1]] - positions[edges[0]] + shifts @ cell
    return sorted(zip(edges[0].tolist(), edges[1].tolist(), np.round(vectors, 9).tolist()))


def test_verlet_list_keeps_its_pairs_when_atoms_are_wrapped_into_the_cell():
    """torch-sim and LAMMPS wrap positions into the cell: a jump by a lattice vector is not a move,
    the cached shifts follow it, and the pairs (with their vectors) equal a from-scratch list; the
    list rebuilds exactly as often as on the unwrapped trajectory."""
    rng = np.random.default_rng(3)
    atoms = _atoms(repeat=(2, 2, 1))
    atoms.cell[2] = [0.4, 0.3, atoms.cell[2, 2]]  # a non-orthogonal cell
    wrapped, unwrapped = VerletList(cutoff=4.0, skin=0.6), VerletList(cutoff=4.0, skin=0.6)
    drift = np.array([0.04, -0.03, 0.02])  # atoms at the faces cross them
    positions = atoms.positions.copy()
    crossings = 0
    for step in range(40):
        positions = positions + drift + rng.normal(0, 0.02, positions.shape)
        atoms.positions = positions
        atoms.wrap()
        crossings += int(np.any(np.abs(atoms.positions - positions) > 1e-9))
        edges, shifts = wrapped.update(atoms.positions, atoms.cell.array, atoms.pbc)
        reference = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
        assert _pair_set(atoms.positions, atoms.cell.array, edges, shifts) == \
            _pair_set(atoms.positions, atoms.cell.array, *reference)
        unwrapped.update(positions, atoms.cell.array, atoms.pbc)
    assert crossings > 10 and wrapped.rebuilds == unwrapped.rebuilds <= 15


def test_md_with_reused_lists_equals_from_scratch_evaluation(model):
    """Langevin MD through a calculator with a skin; at every step, a fresh calculator (skin 0:
    new list each call) gives the same energy and forces."""
    atoms = _atoms(repeat=(2, 2, 1))
    atoms.calc = MlpotCalculator(model, skin=0.8)
    thermalize_momenta(atoms, 1500, rng=np.random.default_rng(1))
    fresh = MlpotCalculator(model, skin=0.0)
    dynamics = Langevin(atoms, 2.0 * units.fs, temperature_K=1500, friction=0.02, fixcm=False,
                        rng=np.random.default_rng(2))
    worst = 0.0
    for _ in range(25):
        dynamics.run(1)
        probe = atoms.copy()
        probe.calc = fresh
        assert atoms.get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-10)
        worst = max(worst, float(np.abs(atoms.get_forces() - probe.get_forces()).max()))
    assert worst < 1e-10
    listed = atoms.calc.neighbours
    assert listed.calls >= 25 and 2 <= listed.rebuilds < listed.calls  # reused, and rebuilt at least once
    assert fresh.neighbours.rebuilds == fresh.neighbours.calls


def test_per_atom_energies_and_virials_add_up(model):
    atoms = _atoms()
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, 0.02], [0.01, 0.0, 1.0]]), scale_atoms=True)
    atoms.calc = MlpotCalculator(model)
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    virials = atoms.calc.get_property("virials", atoms)
    np.testing.assert_allclose(virials.sum(0), atoms.calc.results["virial"], atol=1e-10)
    assert np.abs(virials).max() > 1e-4
    # ASE's per-atom stresses: their sum is the stress (both already divided by the volume)
    np.testing.assert_allclose(atoms.get_stresses().sum(0), atoms.get_stress(), atol=1e-12)
    cluster = _atoms()
    cluster.pbc = False
    cluster.calc = MlpotCalculator(model)
    virials = cluster.calc.get_property("virials", cluster)
    # isolated: the per-atom virials sum to -Σ r ⊗ ∂E/∂r = Σ r ⊗ F (DeePMD's non-periodic virial)
    total = np.einsum("ib,ia->ab", cluster.positions, cluster.get_forces())
    np.testing.assert_allclose(virials.sum(0), total, atol=1e-9)


def test_float32_and_float64(model):
    atoms = _atoms()
    atoms.calc = MlpotCalculator(model, dtype="float64")
    single = atoms.copy()
    single.calc = MlpotCalculator(_model(), dtype="float32")
    assert single.calc.runner.dtype == torch.float32
    np.testing.assert_allclose(single.get_forces(), atoms.get_forces(), atol=1e-4)
    assert single.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    with pytest.raises(ValueError, match="dtype must be"):
        MlpotCalculator(model, dtype="half")


def test_other_outputs_go_into_results():
    dipole_model = _model({"type": "dipole", "neuron": [8], "sel_type": [0, 1], "seed": 4})
    atoms = _atoms()
    atoms.calc = MlpotCalculator(dipole_model)
    dipole = atoms.calc.get_property("dipole", atoms)
    atomic = atoms.calc.get_property("atomic_dipoles", atoms)
    assert dipole.shape == (3,) and atomic.shape == (len(atoms), 3)
    np.testing.assert_allclose(atomic.sum(0), dipole, atol=1e-12)
    assert "energy" not in atoms.calc.results and "forces" not in atoms.calc.results


def test_frame_inputs_from_atoms_info():
    fparam_model = _model({"neuron": [8], "numb_fparam": 1, "seed": 4})
    atoms = _atoms()
    atoms.calc = MlpotCalculator(fparam_model)
    atoms.info["fparam"] = 0.1
    first = atoms.get_potential_energy()
    atoms.info["fparam"] = 0.5
    atoms.calc.reset()
    assert abs(atoms.get_potential_energy() - first) > 1e-6
    inputs = inputs_from_info({"charge": -1, "external_field": [0.0, 0.0, 0.1]}, {"aparam": np.ones((4, 2))})
    assert inputs[K.TOTAL_CHARGE].shape == () and float(inputs[K.TOTAL_CHARGE]) == -1.0
    np.testing.assert_array_equal(inputs[K.EXTERNAL_FIELD], [0.0, 0.0, 0.1])
    assert inputs[K.APARAM].shape == (4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu(model):  # pragma: no cover - needs a GPU
    atoms = _atoms()
    atoms.calc = MlpotCalculator(model)
    gpu = atoms.copy()
    gpu.calc = MlpotCalculator(_model(), device="cuda")
    np.testing.assert_allclose(gpu.get_forces(), atoms.get_forces(), atol=1e-10)
