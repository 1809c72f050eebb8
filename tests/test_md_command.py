"""``mlpot md``: every ensemble runs through ASE; the log, trajectory, drift and throughput lines;
the energy drift of an NVE run is small and equals the slope fitted to the log; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import read, write

from mlpot.calculators.md import ENSEMBLES, energy_drift, read_md_log
from mlpot.cli import main
from mlpot.errors import ConfigError

from test_calculators_neighbours import _atoms, _model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("md")
    model = _model()
    torch.save({"format": "mlpot-frozen", "format_version": 1, "model_config": model.config,
                "state_dict": model.state_dict(), "dtype": "float64", "metadata": {"step": 0}}, folder / "model.pt")
    write(folder / "cuau.extxyz", _atoms(repeat=(2, 2, 1)))
    return folder


def test_nve_run_writes_log_trajectory_and_summary(files, tmp_path, capsys):
    log, trajectory, plot = tmp_path / "md.log", tmp_path / "md.extxyz", tmp_path / "md.png"
    code = main(["md", str(files / "model.pt"), str(files / "cuau.extxyz"), "--steps", "40", "--timestep", "1",
                 "--temperature", "300", "--seed", "3", "--log", str(log), "--trajectory", str(trajectory),
                 "--log-interval", "5", "--trajectory-interval", "20", "--plot", str(plot), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "md: 16 atoms, nve, 40 steps of 1.0 fs" in out
    assert "energy drift:" in out and "eV/atom/ps" in out and "steps/s" in out and "ns/day" in out
    columns = read_md_log(log)
    np.testing.assert_array_equal(columns["step"], np.arange(0, 41, 5))
    np.testing.assert_allclose(columns["time_ps"], columns["step"] * 1e-3)
    np.testing.assert_allclose(columns["E_tot_eV"], columns["E_pot_eV"] + columns["E_kin_eV"], atol=1e-7)
    assert np.all(np.isfinite(columns["P_bar"]))
    drift = energy_drift(columns["time_ps"], columns["E_tot_eV"], 16)  # from the log's rounded energies
    printed = float(out.split("energy drift: ")[1].split()[0])
    assert printed == pytest.approx(drift, rel=0.05, abs=1e-6) and abs(printed) < 1e-3
    frames = read(trajectory, index=":")
    assert len(frames) == 3 and "forces" in frames[-1].calc.results
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("ensemble", [e for e in ENSEMBLES if e != "nve"])
def test_thermostats_and_barostats_run(files, tmp_path, ensemble):
    log = tmp_path / "md.log"
    assert main(["md", str(files / "model.pt"), str(files / "cuau.extxyz"), "--ensemble", ensemble, "--steps", "6",
                 "--log-interval", "2", "--log", str(log), "--trajectory", str(tmp_path / "t.extxyz"),
                 "--seed", "1", "--no-progress"]) == 0
    columns = read_md_log(log)
    assert len(columns["step"]) == 4 and np.all(np.isfinite(columns["T_K"]))


def test_nonperiodic_molecule_and_errors(files, tmp_path, capsys):
    cluster = bulk("Cu", "fcc", a=3.75, cubic=True)
    cluster.pbc = False
    write(tmp_path / "cluster.extxyz", cluster)
    log = tmp_path / "md.log"
    assert main(["md", str(files / "model.pt"), str(tmp_path / "cluster.extxyz"), "--steps", "4", "--log", str(log),
                 "--trajectory", str(tmp_path / "t.extxyz"), "--log-interval", "2", "--no-progress"]) == 0
    assert np.all(np.isnan(read_md_log(log)["P_bar"]))  # no pressure without a cell
    code = main(["md", str(files / "model.pt"), str(tmp_path / "cluster.extxyz"), "--ensemble", "npt", "--steps", "1",
                 "--log", str(log), "--trajectory", str(tmp_path / "t.extxyz")])
    assert code == 2 and "npt needs a fully periodic cell" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"unknown ensemble 'langevn'.*did you mean 'langevin'"):
        from mlpot.calculators.md import make_dynamics

        make_dynamics(cluster, "langevn", 1.0)
