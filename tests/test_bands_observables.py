"""Deformation potentials and effective masses (fit targets and outputs), their input layouts, the
"not supported yet" couplings, and the Zunger-parameter Monte Carlo driver (mcOpts, ParamSteps)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from mlpot.bands.engine import BandProblem
from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.inputs import SystemInput, read_param_vector, read_system_bundle, species_order
from mlpot.bands.models import build_pp_model
from mlpot.bands.observables import SystemObservables, read_defpot_table, read_effective_masses
from mlpot.bands.potentials import AnalyticFormFactor
from mlpot.cli import main
from mlpot.errors import ConfigError, DataError


def _cdse(shared_data, max_ke=2.5, rows=(0, 19, 20, 40)):
    folder = shared_data("bands/cdse_zb")
    system = read_system_bundle(folder, 0)
    system.settings.update(maxKE=max_ke, idxGap=2, idxVB=7, idxCB=8)
    keep = list(rows)
    system.kpoints_frac, system.kweights = system.kpoints_frac[keep], system.kweights[keep]
    system.ref_bands, system.kdist = system.ref_bands[keep], system.kdist[keep]
    species = species_order([system])
    params = np.stack([read_param_vector(folder / f"init_{s}Params.par") for s in species])
    return system, species, params


def test_deformation_potential_equals_a_rebuilt_scaled_crystal(shared_data):
    """D = (gap(1) - gap(s))/2 (1+s³)/(1-s³), the strained gap from a crystal read with scale·s."""
    system, species, params = _cdse(shared_data)
    pw = PlaneWaveSystem(system, species, params)
    from mlpot.bands.observables import DefPotRow

    s = 1.01
    row = DefPotRow(((2, 8, 1.0), (2, 7, -1.0)), s, 0.0, 1.0)
    obs = SystemObservables(pw, [row])
    model = AnalyticFormFactor(params)
    value = float(obs.compute(lambda p: model(p.q_unique[:, None]))["defpot"][0])
    strained = replace(system, cell=system.cell * s, positions=system.positions * s,
                       settings=dict(system.settings, maxKE=system.max_ke / s**2))
    pw_s = PlaneWaveSystem(strained, species, params)
    assert pw_s.n_g == pw.n_g
    gap = [float(np.diff(p.band_energies(p.local_potential(model(p.q_unique[:, None])), [2])[0, [7, 8]].numpy())[0])
           for p in (pw, pw_s)]
    expected = (gap[0] - gap[1]) / 2 * (1 + s**3) / (1 - s**3)
    assert value == pytest.approx(expected, rel=1e-9)
    assert -6.0 < value < 0.0  # a negative gap deformation potential of a few eV, as for II-VI semiconductors


def test_free_electron_effective_masses_are_one(shared_data):
    """v(q) = 0: E = ½|k+G|², the lowest band's parabolic mass at Γ is exactly 1 m_e (±1 for vb/cb)."""
    system, species, params = _cdse(shared_data, max_ke=2.0, rows=(20, 21, 22))
    system.settings.update(idxGap=1, idxVB=0, idxCB=0)
    system.kpoints_frac = np.array([[0.0, 0.0, 0.0], [0.01, 0.01, 0.0], [0.02, 0.02, 0.0]])
    system.kweights = np.ones(3)
    pw = PlaneWaveSystem(system, species, np.zeros_like(params))
    system.settings["idxGap"] = 0 + 1
    pw.kpoints = pw.kpoints[[1, 0, 2]]  # idxGap (row 1) at Γ, idxGap - 1 (row 0) next to it
    pw.kinetic = pw.kinetic[[1, 0, 2]]
    obs = SystemObservables(pw, None, (1.0, 1.0, 1.0))
    zero = build_pp_model("ZeroFunction", [1, 2])
    masses = obs.compute(lambda p: zero(p.q_unique[:, None]))["effmass"].numpy()
    np.testing.assert_allclose(masses, [-1.0, 1.0], rtol=1e-9)


def test_observable_losses_have_exact_gradients(shared_data):
    system, species, params = _cdse(shared_data)
    pw = PlaneWaveSystem(system, species, params)
    from mlpot.bands.observables import DefPotRow

    # non-degenerate levels only: a single member of a degenerate set has no well-defined gradient
    system.settings.update(idxVB=0, idxCB=8)
    obs = SystemObservables(pw, [DefPotRow(((0, 14, 1.0), (0, 8, -1.0)), 1.02, -2.0, 3.0)], (0.3, 0.2, 2.0))
    problem = BandProblem([pw], params, observables=[obs])
    torch.manual_seed(3)
    model = build_pp_model("Net_celu_HeInit_decayGaussian", [1, 6, 2], {"gaussian_std": 2.0})
    model.zero_grad()
    problem.observables_pass(model, grad=True)
    weight = model.neural_network.hidden_l[0].weight
    h = 1e-5  # masses divide by small band differences: a larger step keeps rounding out
    for idx in [(0, 0), (3, 0)]:
        with torch.no_grad():
            weight[idx] += h
            plus = problem.observables_pass(model, grad=False)
            weight[idx] -= 2 * h
            minus = problem.observables_pass(model, grad=False)
            weight[idx] += h
        fd = sum(plus[k] - minus[k] for k in ("defpot_loss", "effmass_loss")) / (2 * h)
        assert fd == pytest.approx(float(weight.grad[idx]), rel=1e-5, abs=1e-8)


def test_defpot_layouts_and_errors(shared_data, tmp_path):
    system, _, _ = _cdse(shared_data)
    path = tmp_path / "expDefPot_0.par"
    path.write_text("2 7 2 8 1.01 -3.5 2.0\n")
    (row,) = read_defpot_table(path, system)
    assert row.terms == ((2, 8, 1.0), (2, 7, -1.0)) and row.scale == 1.01 and row.weight == 2.0
    path.write_text("2 8 0.99 -1.2 1.0\n")
    assert read_defpot_table(path, system)[0].terms == ((2, 8, 1.0),)
    path.write_text("-1.0\n-4.0\n")  # the Monte Carlo drivers' VBM/CBM file, at idxGap with a 1 % expansion
    vbm, cbm = read_defpot_table(path, system)
    assert vbm.terms == ((2, 7, 1.0),) and cbm.terms == ((2, 8, 1.0),) and cbm.scale == 1.01 and cbm.target == -4.0
    path.write_text("2 7 2 99 1.01 -3.5 2.0\n")
    with pytest.raises(DataError, match=r"expDefPot_0.par: expDefPot: line 1: bidx_CB 99 must be an integer in \[0, 16\)"):
        read_defpot_table(path, system)
    path.write_text("1 2 3\n")
    with pytest.raises(DataError, match=r"line 1: expected 7 columns"):
        read_defpot_table(path, system)
    (tmp_path / "m.par").write_text("0.5 0.1\n")
    with pytest.raises(DataError, match=r"expected 3 numbers \(m_vb m_cb weight\)"):
        read_effective_masses(tmp_path / "m.par")


def _fit_folder(shared_data, tmp_path, input_extra="", files=None, config_extra=""):
    from tests.test_bands_fit_cli import TRAIN, _inputs

    inputs = _inputs(shared_data, tmp_path, TRAIN + config_extra)
    (inputs / "input_0.par").write_text("maxKE = 3\nnBands = 16\nidxGap = 1\nidxVB = 7\nidxCB = 8\n" + input_extra)
    for name, text in (files or {}).items():
        (inputs / name).write_text(text)
    return inputs


def test_fit_targets_are_fitted_and_written(shared_data, tmp_path):
    files = {"expDefPot_0.par": "1 7 1 8 1.01 -2.0 1.0\n", "expEffMasses_0.par": "0.5 0.15 1.0\n"}
    inputs = _fit_folder(shared_data, tmp_path, "fit_defPot = 1\nfit_eff_masses = 1\n", files)
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out), "--quiet"]) == 0
    defpot = np.atleast_2d(np.loadtxt(out / "final_defPots_sys0.dat"))
    assert defpot.shape == (1, 3) and defpot[0, 1] == -2.0 and np.isfinite(defpot[0, 0])
    masses = np.loadtxt(out / "final_effMasses_sys0.dat")
    assert masses.shape == (2, 2) and list(masses[:, 1]) == [0.5, 0.15]
    metrics = np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)
    assert np.all(metrics["defpot_loss"] > 0) and np.all(metrics["effmass_loss"] > 0)
    np.testing.assert_allclose(metrics["loss"], metrics["band_loss"] + metrics["penalty"] + metrics["defpot_loss"]
                               + metrics["effmass_loss"], rtol=1e-12)


def test_couplings_are_refused_and_unread_files_noted(shared_data, tmp_path, capsys):
    inputs = _fit_folder(shared_data, tmp_path, "fit_eph = 1\n")
    assert main(["bands", "fit", str(inputs), str(tmp_path / "r"), "--quiet"]) == 2
    assert f"not supported yet: {inputs / 'input_0.par'}/fit_eph (electron-phonon couplings" in capsys.readouterr().err
    from mlpot.bands.setup import load_setup
    from mlpot.commands.bands import load_band_config

    (tmp_path / "b").mkdir()
    inputs2 = _fit_folder(shared_data, tmp_path / "b", "", {"expDefPot_0.par": "1 7 1 8 1.01 -2.0 1.0\n",
                                                           "mcOpts1.par": "totalIter = 2\n"})
    config, notes = load_band_config(inputs2)
    notes = load_setup(config, notes).notes
    assert any("expDefPot_0.par is read only with fit_defPot = 1" in n for n in notes)
    assert any("mcOpts1.par: read by `mlpot bands zunger-mc`" in n for n in notes)


def test_zunger_monte_carlo_driver(shared_data, tmp_path):
    files = {"mcOpts1.par": "betas = 100 1\nstepsAtTemp = 2 2\ntotalIter = 6\nfitDefPot = True\nwritePerIter = 3\n",
             "expDefPot_0.par": "-1.0\n-4.0\n", "CdParamSteps.par": "0.5\n0.01\n0.001\n0.01\n0\n",
             "SeParamSteps.par": "0.2\n0.01\n0.001\n0.01\n0\n"}
    inputs = _fit_folder(shared_data, tmp_path, "", files)
    out = tmp_path / "mc"
    assert main(["bands", "zunger-mc", str(inputs), str(out), "--quiet"]) == 0
    lines = (out / "iterations.dat").read_text().splitlines()
    assert lines[0].startswith("nIter newMSE") and "Cd_a0" in lines[0] and len(lines) == 8
    best = [float(line.split()[3]) for line in lines[1:]]
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:]))
    for name in ("best_CdParams.dat", "best_SeParams.dat", "CdbestParams.pt", "bestBandStruct_0.dat",
                 "bandStruct_0.dat", "nIter_3_BS_0.dat", "best_defPots_sys0.dat", "metrics.csv"):
        assert (out / name).is_file(), name
    params = np.loadtxt(out / "best_CdParams.dat")
    assert params.shape == (9,) and params[5] >= 0.0
    (inputs / "SeParamSteps.par").unlink()
    with pytest.raises(DataError, match=r"ParamSteps files are needed for all species or none; missing SeParamSteps.par"):
        from mlpot.bands.zunger_mc import ZungerMonteCarlo
        from mlpot.commands.bands import load_band_config

        ZungerMonteCarlo(load_band_config(inputs)[0], out, inputs / "mcOpts1.par")
    (inputs / "mcOpts1.par").write_text("totalIter = 2\nfitCoupling = True\n")
    with pytest.raises(ConfigError, match=r"not supported yet: .*mcOpts1.par/fitCoupling"):
        ZungerMonteCarlo(load_band_config(inputs)[0], out, inputs / "mcOpts1.par")
