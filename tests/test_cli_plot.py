"""`mlpot plot losses` / `mlpot plot parity`: log parsing, epoch filtering, PNG output."""

from __future__ import annotations

import numpy as np
import pytest

from mlpot.cli import main
from mlpot.commands import plot
from mlpot.errors import DataError

DEBUG_LOG = """\
2026-02-25 11:59:19.000 INFO: Started training
2026-02-25 11:59:19.214 DEBUG: loss breakdown: energy_per_atom: 0.0001251, forces: 7.49e-06, 
2026-02-25 11:59:19.300 DEBUG: loss breakdown: energy_per_atom: 0.0001000, forces: 6.00e-06, 
2026-02-25 11:59:20.000 INFO: Epoch 0: loss=0.0001, MAE_E=...
2026-02-25 11:59:21.214 DEBUG: loss breakdown: energy_per_atom: 5e-05, forces: nan, dipole: 0.5, 
2026-02-25 11:59:22.000 INFO: Epoch 1: loss=0.00005
2026-02-25 11:59:23.214 DEBUG: loss breakdown: energy_per_atom: 4e-05, forces: 4e-06, 
"""


def test_parse_loss_breakdown(tmp_path):
    log = tmp_path / "fit_run-3_debug.log"
    log.write_text(DEBUG_LOG)
    terms, epochs = plot.parse_loss_breakdown(log)
    assert epochs.tolist() == [0, 0, 1, 2]
    np.testing.assert_allclose(terms["energy_per_atom"], [1.251e-4, 1e-4, 5e-5, 4e-5])
    assert np.isnan(terms["forces"][2]) and terms["forces"][3] == 4e-6
    assert np.isnan(terms["dipole"][[0, 1, 3]]).all() and terms["dipole"][2] == 0.5
    assert plot.default_output(log).name == "fit.png"


def test_ema_skips_nan():
    values = np.array([1.0, np.nan, 3.0])
    np.testing.assert_allclose(plot.ema(values, decay=0.5), [1.0, 1.0, 2.0])


def test_plot_losses_command_writes_png(tmp_path, capsys):
    log = tmp_path / "fit_debug.log"
    log.write_text(DEBUG_LOG)
    assert main(["plot", "losses", str(log), "--min_epoch", "1", "--max_epoch", "2"]) == 0
    png = tmp_path / "fit.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "losses", str(log), "--min_epoch", "7"]) == 2
    assert "no records between epochs 7 and None" in capsys.readouterr().err
    empty = tmp_path / "empty.log"
    empty.write_text("INFO: nothing\n")
    with pytest.raises(DataError, match=r"empty\.log: no 'loss breakdown:' lines found"):
        plot.parse_loss_breakdown(empty)


def test_plot_losses_from_lcurve(tmp_path):
    lcurve = tmp_path / "lcurve.out"
    lcurve.write_text(
        "#  step      rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn         lr\n"
        "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"
        "      1    2.60e+01    2.68e+01    1.14e-01    5.33e-01    8.23e-01    8.47e-01    1.0e-03\n"
        "     10    1.98e+01    1.97e+01    1.17e-02    9.21e-05    7.89e-01    7.84e-01    6.3e-04\n"
    )
    columns = plot.read_lcurve(lcurve)
    assert columns["step"].tolist() == [1, 10] and columns["rmse_f_trn"][0] == 0.847
    out = plot.plot_losses(lcurve, tmp_path / "curve.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_parity_from_detail_files(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10, 3))
    np.savetxt(tmp_path / "detail.f.out", np.hstack([ref, ref + 0.1]), header="sys: data_fx ...")
    np.savetxt(tmp_path / "detail.e_peratom.out", np.c_[ref[:, 0], ref[:, 0] - 0.2], header="sys: data_e pred_e")
    panels = plot.parity_panels(str(tmp_path / "detail"))
    assert [p[0].split()[0] for p in panels] == ["energy", "force"]
    np.testing.assert_allclose(panels[1][2] - panels[1][1], 0.1)
    assert main(["plot", "parity", str(tmp_path / "detail")]) == 0
    assert (tmp_path / "detail.parity.png").exists()
