"""Log formats users already read (DeePMD lcurve.out, MACE-SCF loss breakdown), EMA, checkpoints."""

import math
import re

import pytest
import torch

from mlpot.training.checkpoint import CheckpointManager, load_checkpoint
from mlpot.training.ema import ExponentialMovingAverage
from mlpot.training.logging import LcurveWriter, MetricsCSV, format_loss_breakdown, open_debug_log, close_log
from mlpot.training.metrics import AtomWeightedMean, lcurve_keys


def test_lcurve_format_exact(tmp_path):
    path = tmp_path / "lcurve.out"
    writer = LcurveWriter(path, lcurve_keys(["energy", "forces"]), has_valid=True)
    writer.write(1, {"rmse": 26.8, "rmse_e": 0.533, "rmse_f": 0.847}, {"rmse": 26.0, "rmse_e": 0.114, "rmse_f": 0.823}, 1e-3)
    writer.write(10, {"rmse": 19.7, "rmse_e": 9.21e-5, "rmse_f": 0.784}, {"rmse": 19.8, "rmse_f": 0.789}, 6.30e-4)
    writer.close()
    lines = path.read_text().splitlines()
    assert lines[0] == ("#  step" + "".join("   %11s %11s" % (k + "_val", k + "_trn") for k in ("rmse", "rmse_e", "rmse_f"))
                        + "   %8s" % "lr")
    assert lines[0].split() == ["#", "step", "rmse_val", "rmse_trn", "rmse_e_val", "rmse_e_trn", "rmse_f_val",
                                "rmse_f_trn", "lr"]
    assert lines[1] == "# If there is no available reference data, rmse_*_{val,trn} will print nan"
    assert lines[2] == "      1      2.60e+01    2.68e+01      1.14e-01    5.33e-01      8.23e-01    8.47e-01    1.0e-03"
    assert lines[3].split()[3:5] == ["nan", "9.21e-05"] and lines[3].endswith("6.3e-04")
    # restart appends without a new header; without validation only _trn columns
    LcurveWriter(path, ["rmse"], has_valid=True, append=True).write(11, {"rmse": 1.0}, {"rmse": 2.0}, 1e-4)
    assert path.read_text().count("# step") == 0 and path.read_text().count("#  step") == 1
    solo = LcurveWriter(tmp_path / "solo.out", ["rmse_f", "rmse"], has_valid=False)
    solo.write(5, {"rmse": 3.0, "rmse_f": 0.5}, None, 1e-3)
    solo.close()
    assert (tmp_path / "solo.out").read_text().splitlines()[0].split() == ["#", "step", "rmse_trn", "rmse_f_trn", "lr"]


def test_loss_breakdown_line(tmp_path):
    assert format_loss_breakdown({"energy_per_atom": 0.0001251, "forces": 7.49e-06}) == (
        "loss breakdown: energy_per_atom: 0.0001251, forces: 7.49e-06, ")
    logger = open_debug_log(tmp_path / "debug.log")
    logger.debug(format_loss_breakdown({"forces": torch.tensor(0.5)}))
    logger.info("Epoch 0: loss=0.5")
    close_log(logger)
    lines = (tmp_path / "debug.log").read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} DEBUG: loss breakdown: forces: 0.5, ", lines[0])
    assert re.fullmatch(r".* INFO: Epoch 0: loss=0.5", lines[1])


def test_validation_average_is_atom_weighted_and_csv_columns(tmp_path):
    mean = AtomWeightedMean()
    mean.add({"rmse_e": 1.0, "rmse_v": math.nan}, 10)
    mean.add({"rmse_e": 4.0, "rmse_v": math.nan}, 30)
    out = mean.result()
    assert out["rmse_e"] == pytest.approx((10 * 1.0 + 30 * 4.0) / 40) and math.isnan(out["rmse_v"])
    csv = MetricsCSV(tmp_path / "m.csv")
    csv.write({"step": 1, "loss": 0.1})
    csv.write({"step": 2})
    csv.close()
    assert (tmp_path / "m.csv").read_text().splitlines() == ["step,loss", "1,0.1", "2,nan"]
    # a later row with new columns (the first validation) widens the file; nothing is dropped
    csv = MetricsCSV(tmp_path / "m.csv", append=True)
    csv.write({"step": 3, "loss": 0.2, "valid_forces_rmse": 0.5})
    csv.write({"step": 4, "loss": 0.3})
    csv.close()
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "step,loss,valid_forces_rmse", "1,0.1,nan", "2,nan,nan", "3,0.2,0.5", "4,0.3,nan"]


def test_ema_decay_warmup_and_swap():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ExponentialMovingAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n = 0: decay min(0.9, 1/10) = 0.1 -> shadow = 0.9
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9))
    ema.update(model)  # n = 1: decay min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), d * 0.9 + (1 - d)))
    with ema.applied(model):
        assert torch.allclose(model.weight, ema.shadow["weight"])
    assert torch.all(model.weight == 1.0)


def test_checkpoint_manager_naming_pointer_and_pruning(tmp_path):
    manager = CheckpointManager(tmp_path, "model.ckpt", keep=2)
    for step in (10, 20, 30):
        manager.save(step, {"step": step})
    assert [p.name for p in manager.existing()] == ["model.ckpt-20.pt", "model.ckpt-30.pt"]
    assert (tmp_path / "checkpoint").read_text() == "model.ckpt-30.pt\n"
    assert (tmp_path / "model.ckpt.pt").is_symlink() and load_checkpoint(tmp_path / "model.ckpt.pt")["step"] == 30
