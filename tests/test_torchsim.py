"""mlpot models in torch-sim (``MlpotTorchSimModel``, issue #15): torch-sim's own interface check;
energy, forces and stress of a batched state equal the ASE calculator's per system to 1e-10
(float64; periodic water + a strained, rattled copy; isolated water molecules); a batch of N
systems equals N single-system states; the model read from a frozen file and (slow tier) a
compiled one; velocity-Verlet NVE in torch-sim conserves energy; the torch-sim snippet of
docs/md_lammps.md runs.
Skipped where torch-sim is absent (``pip install torch-sim-atomistic``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import write

ts = pytest.importorskip("torch_sim")

from mlpot.calculators import MlpotCalculator  # noqa: E402
from mlpot.calculators.export import write_frozen  # noqa: E402
from mlpot.calculators.torchsim import MlpotTorchSimModel  # noqa: E402
from mlpot.data import AtomsDataset, collate, keys as K, read_frames  # noqa: E402
from mlpot.errors import DataError  # noqa: E402
from mlpot.models import build_model  # noqa: E402

TYPE_MAP = ["O", "H"]
CPU = torch.device("cpu")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "md_lammps.md"


# a small se_e2_a water model (DeePMD-kit's water input with smaller nets)
WATER_SE_A = {"type_map": TYPE_MAP,
              "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut": 6.0, "rcut_smth": 0.5, "neuron": [8, 16],
                             "axis_neuron": 4, "type_one_side": True, "seed": 1},
              "fitting_net": {"neuron": [16, 16], "resnet_dt": True, "seed": 1}}


@pytest.fixture(scope="module")
def water(shared_data):
    """(first water frame as periodic Atoms (192 atoms), the first two frames as mlpot frames)."""
    frames = read_frames(shared_data("deepmd_water/data_0"), index="0:2", type_map=TYPE_MAP)
    symbols = np.array(TYPE_MAP)[frames[0][K.ATOM_TYPES]]
    return Atoms(symbols=list(symbols), positions=frames[0][K.POSITIONS], cell=frames[0][K.CELL], pbc=True), frames


@pytest.fixture(scope="module")
def model(water):
    """WATER_SE_A with the statistics of two water frames and its fitting nets' last layer scaled by
    0.1 (untrained nets give rough dynamics): non-trivial energies and stress, smooth NVE."""
    torch.manual_seed(0)
    model = build_model(WATER_SE_A, dtype=torch.float64)
    model.compute_statistics([collate(list(AtomsDataset(water[1], cutoff=model.cutoff)))])
    with torch.no_grad():
        for net in model.fitting.nets:
            list(net.parameters())[-2].mul_(0.1)
    return model.eval()


def _strained(atoms: Atoms, seed: int = 3) -> Atoms:
    other = atoms.copy()
    other.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0.0], [0.0, 0.98, 0.02], [0.01, 0.0, 1.01]]),
                   scale_atoms=True)
    other.rattle(0.05, seed=seed)
    return other


def _molecules():
    """Two isolated water clusters (no periodicity), 1 and 2 molecules."""
    single = molecule("H2O")
    pair = molecule("H2O") + molecule("H2O")
    pair.positions[3:] += [2.9, 0.3, 0.1]
    pair.rattle(0.02, seed=1)
    for atoms in (single, pair):
        atoms.pbc = False
    return [single, pair]


def _assert_matches_ase(model, systems, output, stress: bool, tol: float = 1e-10):
    start = 0
    for index, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = MlpotCalculator(model)
        rows = slice(start, start + len(atoms))
        start += len(atoms)
        assert abs(float(output["energy"][index]) - atoms.get_potential_energy()) < tol
        np.testing.assert_allclose(output["forces"][rows].numpy(), atoms.get_forces(), rtol=0, atol=tol)
        if stress:
            reference = atoms.get_stress(voigt=False)
            assert np.abs(reference).max() > 1e-4  # a non-trivial check
            np.testing.assert_allclose(output["stress"][index].numpy(), reference, rtol=0, atol=tol)


def test_torch_sim_validates_the_model(model):
    from torch_sim.models.interface import validate_model_outputs

    # torch-sim's check builds Si and Fe crystals: map them onto the water model's two types
    wrapped = MlpotTorchSimModel(model, dtype=torch.float64, type_dict={"Si": 0, "Fe": 1})
    validate_model_outputs(wrapped, CPU, torch.float64)
    assert wrapped.compute_stress and wrapped.compute_forces and wrapped.dtype == torch.float64


def test_float32_model(model, water):
    """dtype=torch.float32 converts (a copy of) the model and returns float32 outputs near float64's."""
    import copy

    from torch_sim.models.interface import validate_model_outputs

    validate_model_outputs(MlpotTorchSimModel(copy.deepcopy(model), dtype=torch.float32, type_dict={"Si": 0, "Fe": 1}),
                           CPU, torch.float32)
    systems = [water[0], _strained(water[0])]
    wrapped = MlpotTorchSimModel(copy.deepcopy(model), dtype=torch.float32)
    single = wrapped(ts.io.atoms_to_state(systems, CPU, torch.float32))
    double = MlpotTorchSimModel(model)(ts.io.atoms_to_state(systems, CPU, torch.float64))
    assert single["energy"].dtype == single["forces"].dtype == single["stress"].dtype == torch.float32
    assert float((single["energy"].double() - double["energy"]).abs().max()) < 1e-3
    assert float((single["forces"].double() - double["forces"]).abs().max()) < 1e-4
    assert next(model.parameters()).dtype == torch.float64  # the fixture's model is untouched


def test_periodic_batch_equals_ase_calculator(model, water):
    systems = [water[0], _strained(water[0])]
    wrapped = MlpotTorchSimModel(model, dtype=torch.float64)
    state = ts.io.atoms_to_state(systems, CPU, torch.float64)
    output = wrapped(state)
    assert output["energy"].shape == (2,) and output["forces"].shape == (384, 3) and output["stress"].shape == (2, 3, 3)
    assert abs(float(output["energy"][1] - output["energy"][0])) > 1e-3  # the two systems differ
    _assert_matches_ase(model, systems, output, stress=True)
    as_dict = {name: getattr(state, name) for name in ("positions", "masses", "cell", "pbc", "atomic_numbers",
                                                       "system_idx")}
    assert torch.equal(wrapped(as_dict)["forces"], output["forces"])  # a state dict works too


def test_isolated_molecules_equal_ase_calculator(model):
    systems = _molecules()
    state = ts.io.atoms_to_state(systems, CPU, torch.float64)
    output = MlpotTorchSimModel(model, compute_stress=False)(state)
    assert "stress" not in output
    _assert_matches_ase(model, systems, output, stress=False)
    np.testing.assert_allclose(output["forces"][3:].sum(0).numpy(), 0.0, atol=1e-10)  # no net force
    wrapped = MlpotTorchSimModel(model, compute_stress=False)
    wrapped.compute_stress = True  # torch-sim's validate_model_outputs sets it so
    with pytest.raises(ValueError, match="stress needs a periodic state .*compute_stress=False"):
        wrapped(state)


def test_batch_of_n_equals_n_single_runs(model, water):
    systems = [water[0], _strained(water[0], seed=3), _strained(water[0], seed=4)]
    wrapped = MlpotTorchSimModel(model, dtype=torch.float64)
    batched = wrapped(ts.io.atoms_to_state(systems, CPU, torch.float64))
    start = 0
    for index, atoms in enumerate(systems):
        single = wrapped(ts.io.atoms_to_state([atoms], CPU, torch.float64))
        rows = slice(start, start + len(atoms))
        start += len(atoms)
        assert abs(float(single["energy"][0] - batched["energy"][index])) < 1e-10
        assert float((single["forces"] - batched["forces"][rows]).abs().max()) < 1e-10
        assert float((single["stress"][0] - batched["stress"][index]).abs().max()) < 1e-12


def test_frozen_file(model, water, tmp_path):
    systems = [water[0], _strained(water[0])]
    frozen = tmp_path / "model.pt"
    write_frozen(model, frozen, "float64", {})
    output = MlpotTorchSimModel(str(frozen))(ts.io.atoms_to_state(systems, CPU, torch.float64))
    _assert_matches_ase(model, systems, output, stress=True)


@pytest.mark.slow
def test_compiled_file(model, water, tmp_path):
    """A compiled model (``mlpot compile --backend export``, ~30 s) runs the systems one by one."""
    from mlpot.calculators.compile import compile_model

    systems = [water[0], _strained(water[0])]
    frozen = tmp_path / "model.pt"
    write_frozen(model, frozen, "float64", {})
    compile_model(frozen, tmp_path / "model.pt2", backend="export")
    compiled = MlpotTorchSimModel(str(tmp_path / "model.pt2"))
    assert compiled.dtype == torch.float64
    output = compiled(ts.io.atoms_to_state(systems, CPU, torch.float64))
    _assert_matches_ase(model, systems, output, stress=True, tol=1e-9)


def test_unknown_element_is_an_error(model):
    state = ts.io.atoms_to_state([molecule("CH4")], CPU, torch.float64)
    with pytest.raises(DataError, match=r"elements \['C'\] are not in the model's type map \['O', 'H'\]"):
        MlpotTorchSimModel(model, compute_stress=False)(state)
    with pytest.raises(ValueError, match=r"dtype must be torch.float32, torch.float64 or None"):
        MlpotTorchSimModel(model, dtype=torch.float16)


def test_model_without_forces_is_an_error():
    class DipoleRunner:  # a runner (load_runner takes it as it is) of a model with no energy
        type_map, cutoff, dtype, kind = ["O", "H"], 3.0, torch.float64, "eager"

        def __call__(self, batch, virial=True):
            return {K.DIPOLE: torch.zeros(int(batch[K.N_ATOMS].numel()), 3, dtype=torch.float64)}

    state = ts.io.atoms_to_state([molecule("H2O")], CPU, torch.float64)
    with pytest.raises(ValueError, match=r"needs energy and forces; this model returns \['dipole'\]"):
        MlpotTorchSimModel(DipoleRunner(), compute_stress=False)(state)


def test_missing_torch_sim_names_the_package(monkeypatch):
    import sys

    from mlpot.calculators import torchsim

    torchsim._model_class.cache_clear()
    monkeypatch.setitem(sys.modules, "torch_sim.models.interface", None)
    try:
        with pytest.raises(ImportError, match="pip install torch-sim-atomistic"):
            torchsim.MlpotTorchSimModel
    finally:
        monkeypatch.undo()
        torchsim._model_class.cache_clear()


def test_nve_conserves_energy(model, water):
    """Velocity Verlet (torch-sim's nve) on two 192-atom water boxes, 0.5 fs, 300 K, 40 steps:
    the total energy of each system stays within 1e-5 eV/atom of its start (measured 3.5e-7)."""
    from torch_sim.quantities import calc_kinetic_energy

    wrapped = MlpotTorchSimModel(model, dtype=torch.float64, compute_stress=False)
    state = ts.io.atoms_to_state([water[0], _strained(water[0])], CPU, torch.float64)
    init, update = ts.integrators.nve(wrapped, dt=torch.tensor(0.5e-3 * ts.units.MetalUnits.time),
                                      kT=torch.tensor(300.0 * ts.units.MetalUnits.temperature), seed=7)
    state = init(state)

    def total():
        return state.energy + calc_kinetic_energy(masses=state.masses, momenta=state.momenta,
                                                  system_idx=state.system_idx)

    energies = [total()]
    for _ in range(40):
        state = update(state)
        energies.append(total())
    energies = torch.stack(energies) / 192
    kinetic = calc_kinetic_energy(masses=state.masses, momenta=state.momenta, system_idx=state.system_idx)
    assert bool((kinetic > 1.0).all())  # the atoms move (~7 eV at 300 K)
    drift = (energies - energies[0]).abs().max()
    print(f"NVE: max |E_tot - E_tot(0)| = {float(drift):.2e} eV/atom")
    assert float(drift) < 1e-5, f"energy drift {float(drift):.2e} eV/atom"


def test_docs_snippet_runs(model, water, tmp_path, monkeypatch):
    """The python block of the torch-sim section of docs/md_lammps.md, in a folder holding the
    page's model.pt and water.extxyz (here: the test model and the first water frame)."""
    section = DOCS.read_text().split("## torch-sim", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert blocks, "docs/md_lammps.md has no python block in its torch-sim section"
    write_frozen(model, tmp_path / "model.pt", "float64", {})
    write(tmp_path / "water.extxyz", water[0])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(DOCS), "exec"), namespace)
    assert namespace["final"].n_systems == 2
