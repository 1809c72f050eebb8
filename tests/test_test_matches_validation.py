"""``mlpot test`` on the validation data gives the numbers training printed for it: the full
validation's val.log row (5 significant digits) and the lcurve.out validation columns (3 digits)
at the last step, for the checkpoint of that step."""

from __future__ import annotations

import numpy as np
import pytest

from mlpot.cli import main
from mlpot.config.loader import validate_config
from mlpot.training.trainer import Trainer

from test_full_validation import emt, native, val_rows  # noqa: F401 - emt is a fixture


def _report(text: str) -> dict:
    """{'Energy MAE/Natoms': value, ...} of the weighted-average block of ``mlpot test``."""
    block = text.split("weighted average of errors")[1]
    values = {}
    for line in block.splitlines():
        if ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            values[" ".join(name.split())] = float(value.split()[0])
    return values


def test_mlpot_test_equals_training_validation(emt, tmp_path, capsys):  # noqa: F811
    config = native(emt, tmp_path / "out", steps=12)
    config["logging"]["disp_freq"] = 12
    config["data"]["valid"].update(batch_size=5, numb_btch=1)  # lcurve's validation: the 5 frames, once
    Trainer(validate_config(config), progress=False).run()
    capsys.readouterr()
    assert main(["test", str(tmp_path / "out" / "model.ckpt-12.pt"), str(emt / "valid.extxyz")]) == 0
    report = _report(capsys.readouterr().out)
    header, rows, _ = val_rows(tmp_path / "out" / "val.log")
    logged = dict(zip(header[1:], rows[12]))  # header[0] is "step"
    pairs = {"E_MAE(meV/atom)": "Energy MAE/Natoms", "E_RMSE(meV/atom)": "Energy RMSE/Natoms",
             "F_MAE(meV/Å)": "Force MAE", "F_RMSE(meV/Å)": "Force RMSE",
             "S_MAE(meV/Å³)": "Stress MAE", "S_RMSE(meV/Å³)": "Stress RMSE"}
    for column, name in pairs.items():
        assert logged[column] == pytest.approx(1e3 * report[name], rel=1e-4), column
    lcurve = np.loadtxt(tmp_path / "out" / "lcurve.out", ndmin=2)
    names = (tmp_path / "out" / "lcurve.out").read_text().splitlines()[0].lstrip("#").split()
    last = dict(zip(names, lcurve[-1]))
    assert last["step"] == 12
    assert last["rmse_e_val"] == pytest.approx(report["Energy RMSE/Natoms"], rel=5e-3)
    assert last["rmse_f_val"] == pytest.approx(report["Force RMSE"], rel=5e-3)
