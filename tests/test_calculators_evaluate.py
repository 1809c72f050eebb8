"""Evaluation metrics and `dp test` style output of energy models (no model needed: synthetic
predictions fed to the energy scorer, errors recomputed with numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from mlpot.calculators.evaluate import DetailWriter, SystemResult, format_report, system_errors, weighted_average
from mlpot.calculators.scoring import EnergyScorer
from mlpot.data import keys as K


def _system(name, n_frames, n_atoms, rng, with_virial=False, details=None):
    """(result, frames, predictions) of ``n_frames`` random frames scored by the energy scorer."""
    result, frames, predictions = SystemResult(name, n_frames), [], []
    scorer = EnergyScorer()
    for index in range(n_frames):
        e, f = rng.normal(), rng.normal(size=(n_atoms, 3))
        frame = {K.POSITIONS: rng.normal(size=(n_atoms, 3)), K.PBC: np.ones(3, bool), K.ENERGY: np.array(e),
                 K.FORCES: f}
        pred = {K.ENERGY: np.array(e + rng.normal(scale=0.5)), K.FORCES: f + rng.normal(scale=0.1, size=f.shape)}
        if with_virial:
            v = rng.normal(size=(3, 3))
            frame[K.VIRIAL], pred[K.VIRIAL] = v, v + 0.3
        scorer.score(frame, pred, result, details, index, 0)
        frames.append(frame)
        predictions.append(pred)
    return result, frames, predictions


def test_errors_match_numpy():
    rng = np.random.default_rng(1)
    result, frames, preds = _system("a", 5, 4, rng, with_virial=True)
    errors = system_errors(result)
    d = np.array([float(p[K.ENERGY]) - float(f[K.ENERGY]) for f, p in zip(frames, preds)])
    assert errors["energy_rmse"][0] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert errors["energy_mae"][0] == pytest.approx(np.mean(np.abs(d)))
    assert errors["energy_rmse_per_atom"][0] == pytest.approx(np.sqrt(np.mean((d / 4) ** 2)))
    df = np.concatenate([p[K.FORCES] - f[K.FORCES] for f, p in zip(frames, preds)])
    assert df.shape == (20, 3)
    assert errors["forces_rmse"] == (pytest.approx(np.sqrt(np.mean(df**2))), 60)
    assert errors["virial_mae"][0] == pytest.approx(0.3)
    assert errors["virial_rmse_per_atom"][0] == pytest.approx(0.3 / 4)
    assert "stress_rmse" not in errors  # no stress labels


def test_missing_labels_are_skipped_not_zero():
    result = SystemResult("a", 2)
    frame = {K.POSITIONS: np.zeros((2, 3)), K.PBC: np.zeros(3, bool), K.ENERGY: np.array(1.0),
             K.FORCES: np.ones((2, 3)), K.VIRIAL: np.eye(3), K.weight_key(K.ENERGY): np.array(0.0)}
    pred = {K.ENERGY: np.array(9.0), K.FORCES: np.ones((2, 3)) + 0.5, K.VIRIAL: np.zeros((3, 3))}
    EnergyScorer().score(frame, pred, result, None, 0, 0)
    errors = system_errors(result)
    assert "energy_rmse" not in errors  # weight 0: the label is missing
    assert "virial_rmse" not in errors  # not periodic
    assert errors["forces_mae"][0] == pytest.approx(0.5)


def test_weighted_average_equals_pooled_errors():
    rng = np.random.default_rng(2)
    (a, fa, pa), (b, fb, pb) = _system("a", 3, 4, rng), _system("b", 7, 6, rng)
    combined = weighted_average([system_errors(a), system_errors(b)])
    pooled = SystemResult("ab")
    for frame, pred in zip(fa + fb, pa + pb):
        EnergyScorer().score(frame, pred, pooled, None, 0, 0)
    expected = system_errors(pooled)
    for name in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "energy_rmse_per_atom"):
        assert combined[name][0] == pytest.approx(expected[name][0])
        assert combined[name][1] == expected[name][1]
    assert "forces_rmse" not in weighted_average([system_errors(a)], exclude={"forces_rmse"})


def test_report_lines_and_missing_labels():
    rng = np.random.default_rng(3)
    lines = format_report(system_errors(_system("a", 2, 3, rng)[0]), header=["number of test data : 2"])
    assert lines[0] == "# number of test data : 2"
    titles = [line.split(":")[0].rstrip() for line in lines[1:]]
    assert titles == [
        "Energy MAE", "Energy RMSE", "Energy MAE/Natoms", "Energy RMSE/Natoms", "Force  MAE", "Force  RMSE",
    ]
    assert lines[1].startswith("Energy MAE         : ") and lines[4].startswith("Energy RMSE/Natoms : ")
    assert lines[2].endswith(" eV") and lines[5].endswith(" eV/A")
    assert not any("Virial" in line for line in lines)  # no labels -> no lines


def test_detail_files(tmp_path):
    rng = np.random.default_rng(4)
    prefix = str(tmp_path / "detail")
    details = DetailWriter(prefix)
    _, fa, pa = _system("sys_a", 2, 3, rng, with_virial=True, details=details)
    _, fb, pb = _system("sys_b", 1, 5, rng, details=details)
    e = np.loadtxt(f"{prefix}.e.out")
    assert e.shape == (3, 2)
    np.testing.assert_allclose(e[:2, 0], [float(f[K.ENERGY]) for f in fa])
    np.testing.assert_allclose(e[2, 1], float(pb[0][K.ENERGY]))
    np.testing.assert_allclose(np.loadtxt(f"{prefix}.e_peratom.out")[2], e[2] / 5)
    f = np.loadtxt(f"{prefix}.f.out")
    assert f.shape == (2 * 3 + 5, 6)
    np.testing.assert_allclose(f[:3, 3:], pa[0][K.FORCES])
    lines = open(f"{prefix}.f.out").read().splitlines()
    assert lines[0] == "# sys_a: data_fx data_fy data_fz pred_fx pred_fy pred_fz"
    assert lines[7] == "# sys_b: data_fx data_fy data_fz pred_fx pred_fy pred_fz"  # one header per system
    assert np.loadtxt(f"{prefix}.v.out").shape == (2, 18)
    np.testing.assert_allclose(np.loadtxt(f"{prefix}.v_peratom.out"), np.loadtxt(f"{prefix}.v.out") / 3)
