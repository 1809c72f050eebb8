"""Evaluation metrics and `dp test` style output (no model needed: synthetic predictions)."""

from __future__ import annotations

import numpy as np
import pytest

from mlpot.calculators.evaluate import (
    SystemResult, format_report, system_errors, weighted_average, write_detail_files,
)


def _system(name, n_frames, n_atoms, rng, with_virial=False):
    result = SystemResult(name, n_frames)
    for _ in range(n_frames):
        e = rng.normal()
        result.add("energy", e, e + rng.normal(scale=0.5), n_atoms)
        f = rng.normal(size=(n_atoms, 3))
        result.add("forces", f, f + rng.normal(scale=0.1, size=f.shape), n_atoms)
        if with_virial:
            v = rng.normal(size=(3, 3))
            result.add("virial", v, v + 0.3, n_atoms)
    return result


def test_errors_match_numpy():
    rng = np.random.default_rng(1)
    result = _system("a", 5, 4, rng, with_virial=True)
    errors = system_errors(result)
    ref_e, pred_e, n = result.arrays("energy")
    d = (pred_e - ref_e).ravel()
    assert errors["energy_rmse"][0] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert errors["energy_mae"][0] == pytest.approx(np.mean(np.abs(d)))
    assert errors["energy_rmse_per_atom"][0] == pytest.approx(np.sqrt(np.mean((d / 4) ** 2)))
    ref_f, pred_f, _ = result.arrays("forces")
    assert ref_f.shape == (20, 3)
    assert errors["forces_rmse"] == (pytest.approx(np.sqrt(np.mean((pred_f - ref_f) ** 2))), 60)
    assert errors["virial_mae"][0] == pytest.approx(0.3)
    assert errors["virial_rmse_per_atom"][0] == pytest.approx(0.3 / 4)


def test_weighted_average_equals_pooled_errors():
    rng = np.random.default_rng(2)
    a, b = _system("a", 3, 4, rng), _system("b", 7, 6, rng)
    combined = weighted_average([system_errors(a), system_errors(b)])
    pooled = SystemResult("ab")
    for s in (a, b):
        for label in ("energy", "forces"):
            for r, p, n in zip(s.reference[label], s.predicted[label], s.n_atoms[label]):
                pooled.add(label, r, p, n)
    expected = system_errors(pooled)
    for name in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "energy_rmse_per_atom"):
        assert combined[name][0] == pytest.approx(expected[name][0])
        assert combined[name][1] == expected[name][1]


def test_report_lines_and_missing_labels():
    rng = np.random.default_rng(3)
    lines = format_report(system_errors(_system("a", 2, 3, rng)), header=["number of test data : 2"])
    assert lines[0] == "# number of test data : 2"
    titles = [line.split(":")[0].rstrip() for line in lines[1:]]
    assert titles == [
        "Energy MAE", "Energy RMSE", "Energy MAE/Natoms", "Energy RMSE/Natoms", "Force  MAE", "Force  RMSE",
    ]
    assert lines[2].endswith(" eV") and lines[5].endswith(" eV/A")
    assert not any("Virial" in line for line in lines)  # no labels -> no lines


def test_detail_files(tmp_path):
    rng = np.random.default_rng(4)
    a, b = _system("sys_a", 2, 3, rng, with_virial=True), _system("sys_b", 1, 5, rng)
    prefix = str(tmp_path / "detail")
    write_detail_files(prefix, a)
    write_detail_files(prefix, b)
    e = np.loadtxt(f"{prefix}.e.out")
    assert e.shape == (3, 2)
    np.testing.assert_allclose(e[:2, 0], np.ravel(a.reference["energy"]))
    np.testing.assert_allclose(e[2, 1], np.ravel(b.predicted["energy"]))
    np.testing.assert_allclose(np.loadtxt(f"{prefix}.e_peratom.out")[2], e[2] / 5)
    f = np.loadtxt(f"{prefix}.f.out")
    assert f.shape == (2 * 3 + 5, 6)
    np.testing.assert_allclose(f[:3, 3:], a.predicted["forces"][0])
    header = open(f"{prefix}.f.out").readline()
    assert header.strip() == "# sys_a: data_fx data_fy data_fz pred_fx pred_fy pred_fz"
    assert np.loadtxt(f"{prefix}.v.out").shape == (2, 18)
