"""MACE on DeePMD-kit's water example through ``mlpot train --config`` with mace_run_train options
(slow tier): train on data_0 + data_1 (240 frames of 192 atoms), validate on data_3 (80 frames).

Hyperparameters (``OPTIONS``, the same as ``benchmarks/mace_water_accuracy.py``, which also trains
mace-torch 0.3.16 with them; numbers in docs/mace_models.md, "Accuracy"): hidden_irreps
32x0e + 32x1o, max_ell 2, correlation 3, 2 interactions, r_max 4.5 Å, radial MLP [64, 64, 64],
``--model MACE`` (ScaleShiftMACE, zero shift, rms_forces_scaling), E0s average, weighted loss
(energy 1, forces 100), Adam (amsgrad) lr 0.01, ReduceLROnPlateau, EMA 0.99, batch 2, float32,
seed 1, EPOCHS epochs (120 steps each). These are smaller than the issue's 64x0e + 64x1o, max_ell 3,
r_max 5 so that mace-torch could be trained alongside on one shared CPU thread. The force RMSE on
data_3 after training must stay at or below FORCE_RMSE_BOUND (eV/Å); about 13 min with one thread.
The DeePMD systems are converted to extxyz with mlpot's data layer inside the test.
"""

from __future__ import annotations

import re

import pytest
import yaml

from mlpot.cli import main
from mlpot.data import read_systems, write_frames
from mlpot.data.batching import concat_frame_lists

EPOCHS = 6
FORCE_RMSE_BOUND = 0.055  # eV/Å; measured 0.0476 (docs/mace_models.md, "Accuracy"), the issue asks <= 0.08
OPTIONS = {"name": "water", "seed": 1, "train_file": "train.xyz", "valid_file": "valid.xyz", "energy_key": "energy",
           "forces_key": "forces", "E0s": "average", "model": "MACE", "hidden_irreps": "32x0e + 32x1o", "r_max": 4.5,
           "num_interactions": 2, "correlation": 3, "max_ell": 2, "scaling": "rms_forces_scaling", "batch_size": 2,
           "valid_batch_size": 10, "max_num_epochs": EPOCHS, "lr": 0.01, "ema": True, "ema_decay": 0.99,
           "default_dtype": "float32"}


@pytest.mark.slow
def test_mace_water_force_rmse(shared_data, tmp_path, monkeypatch, capsys):
    root = shared_data("deepmd_water")
    monkeypatch.chdir(tmp_path)
    train = concat_frame_lists(read_systems([root / "data_0", root / "data_1"], type_map=["H", "O"]))
    valid = concat_frame_lists(read_systems([root / "data_3"], type_map=["H", "O"]))
    write_frames(tmp_path / "train.xyz", train, "extxyz", type_map=["H", "O"])
    write_frames(tmp_path / "valid.xyz", valid, "extxyz", type_map=["H", "O"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**OPTIONS, "test_file": "valid.xyz"}))
    assert main(["train", "--config", "config.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    force_rmse = float(re.search(r"# test set valid.xyz\n(?:.*\n)*?Force  RMSE\s*: (\S+) eV/A", out).group(1))
    print(f"data_3 force RMSE after {EPOCHS} epochs: {force_rmse:.4f} eV/Å")
    assert force_rmse <= FORCE_RMSE_BOUND
