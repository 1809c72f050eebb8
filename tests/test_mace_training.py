"""``mlpot train --config`` with mace_run_train options end to end, the engine options it uses
(epoch validation, patience, stage two, per-epoch lr), and mace-torch's trained models in
``mlpot test``, the ASE calculator, ``mlpot freeze`` and fine-tuning."""

from __future__ import annotations

import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml

from mace_data import TINY_MODEL, write_small
from mlpot.calculators import MlpotCalculator, load_model
from mlpot.cli import main
from mlpot.errors import CheckpointError
from mlpot.training.early_stopping import EarlyStopping
from mlpot.training.optim import build_training_optimizer
from mlpot.training.schema import LRScheduleConfig, OptimizerConfig


def mace_yaml(folder: Path, **options) -> Path:
    write_small(folder / "train.xyz", 10, seed=1)
    values = {"name": "tiny", "seed": 2, "train_file": "train.xyz", "valid_fraction": 0.2, "energy_key": "energy",
              "forces_key": "forces", "E0s": "average", **TINY_MODEL, "batch_size": 2, "valid_batch_size": 4,
              "max_num_epochs": 2, **options}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def lcurve_steps(folder: Path):
    return [int(line.split()[0]) for line in (folder / "lcurve.out").read_text().splitlines() if not line.startswith("#")]


def test_train_with_mace_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mace_yaml(tmp_path, ema=True, swa=True, test_file="train.xyz")
    assert main(["train", "--config", "config.yaml", "--no-progress", "--max_num_epochs", "3", "--lr", "0.005"]) == 0
    out = capsys.readouterr().out
    # 8 training frames, batches of 2 (a short last batch dropped): 4 steps per epoch, 3 epochs;
    # a validation row at step 1 and after every epoch (eval_interval 1)
    assert lcurve_steps(tmp_path) == [1, 4, 8, 12]
    assert "stage stage_one, lr 5.00e-03" in out and "stage stage_two, lr 1.00e-03" in out  # stage two from epoch 2
    assert re.search(r"# test set train.xyz\nEnergy MAE", out)
    assert (tmp_path / "checkpoints" / "tiny_run-2-12.pt").exists()
    model = load_model(tmp_path / "tiny.pt")
    assert model.config["model"] == "ScaleShiftMACE" and model.config["atomic_inter_shift"] == 0.0
    assert model.config["interaction_first"] == "RealAgnosticInteractionBlock"
    reference = load_model(tmp_path / "model.pt")
    batch_energy = MlpotCalculator(model).get_potential_energy(ase.io.read("train.xyz", 0))
    assert batch_energy == pytest.approx(MlpotCalculator(reference).get_potential_energy(ase.io.read("train.xyz", 0)))


def test_patience_stops_and_moves_to_stage_two(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # lr 1e-30 leaves the weights unchanged: every validation equals the first one
    mace_yaml(tmp_path, lr=1e-30, patience=2, max_num_epochs=10)
    assert main(["train", "--config", "config.yaml", "--no-progress"]) == 0
    assert "early stopping at step 8: 2 validations without a lower validation loss" in capsys.readouterr().out
    assert lcurve_steps(tmp_path) == [1, 4, 8]
    (tmp_path / "lcurve.out").unlink()
    mace_yaml(tmp_path, lr=1e-30, swa_lr=1e-30, patience=2, max_num_epochs=10, swa=True, start_swa=6,
              work_dir="two")
    assert main(["train", "--config", "config.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "patience exhausted at step 8: going on with stage 'stage_two'" in out
    assert lcurve_steps(tmp_path / "two") == [1, 4, 8, 28, 32, 36]  # epochs 2-5 skipped; stopped again after epoch 8


def test_early_stopping_counts_validations_without_improvement():
    stopping = EarlyStopping(3)
    assert [stopping.update(v) for v in (5.0, 4.0, 4.0, 4.5, 3.9, 4.0, 4.0, 4.0)] == \
        [False, False, False, False, False, False, False, True]
    stopping.new_stage()
    assert not stopping.update(10.0) and stopping.count == 0 and not EarlyStopping(None).update(1.0)


def test_per_epoch_exponential_schedule():
    model = torch.nn.Linear(2, 2)
    schedule = LRScheduleConfig(type="exp", per_epoch=True, decay_steps=1, decay_rate=0.5, stop_lr=0.0)
    setup = build_training_optimizer(model, OptimizerConfig(lr=0.1), schedule, total_steps=12, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(setup.optimizer.param_groups[0]["lr"])
        setup.optimizer.step()
        setup.scheduler.step()
    np.testing.assert_allclose(lrs, [0.1] * 4 + [0.05] * 4 + [0.025] * 4)


@pytest.fixture(scope="module")
def reference(shared_data):
    root = shared_data("mace_reference")
    return root, np.load(root / "reference.npz")


def test_mace_model_file_in_calculator_freeze_and_test(reference, tmp_path, capsys):
    root, ref = reference
    frames = ase.io.read(root / "frames.xyz", index=":")
    calculator = MlpotCalculator(str(root / "model.model"))
    cluster = frames[3]
    cluster.calc = calculator
    assert abs(cluster.get_potential_energy() / ref["energy"][3] - 1.0) < 1e-8
    np.testing.assert_allclose(cluster.get_forces(), ref["forces"][-12:], atol=1e-8)
    assert main(["freeze", str(root / "model.model"), "-o", str(tmp_path / "frozen.pt")]) == 0
    frozen = load_model(tmp_path / "frozen.pt")
    assert frozen.dtype == torch.float64 and frozen.config["avg_num_neighbors"] == pytest.approx(37.838541666666664)
    # mlpot test on the reference frames labelled with mace-torch's own numbers: zero errors
    for atoms, energy in zip(frames, ref["energy"]):
        atoms.info["REF_energy"] = energy
    ase.io.write(tmp_path / "labelled.xyz", frames, format="extxyz")
    capsys.readouterr()
    assert main(["test", str(root / "model.model"), str(tmp_path / "labelled.xyz")]) == 0
    rmse = float(re.search(r"Energy RMSE\s*: (\S+) eV", capsys.readouterr().out).group(1))
    assert rmse < 1e-6


def test_mace_checkpoint_needs_its_options(reference, tmp_path):
    root, ref = reference
    with pytest.raises(CheckpointError, match="checkpoint.pt: a mace_run_train checkpoint holds the weights only"):
        load_model(root / "checkpoint.pt")
    assert main(["freeze", str(root / "checkpoint.pt"), "--mace-options", str(root / "options.yaml"),
                 "-o", str(tmp_path / "from_checkpoint.pt")]) == 0
    model = load_model(tmp_path / "from_checkpoint.pt")
    atoms = ase.io.read(root / "frames.xyz", index=3)
    atoms.calc = MlpotCalculator(model)
    assert abs(atoms.get_potential_energy() / ref["energy"][3] - 1.0) < 1e-8


def test_finetune_from_a_mace_model_file(reference, tmp_path, monkeypatch, capsys):
    root, _ = reference
    monkeypatch.chdir(tmp_path)
    mace_yaml(tmp_path, foundation_model=str(root / "model.model"), E0s="estimated", max_num_epochs=1, lr=1e-3)
    assert main(["train", "--config", "config.yaml", "--no-progress"]) == 0
    assert "fine-tuning: E0s estimated from the foundation model's errors: H " in capsys.readouterr().out
    tuned = load_model(tmp_path / "tiny.pt")
    foundation = load_model(root / "model.model")
    # the foundation's architecture, scale and shift, its avg_num_neighbors (not the input's tiny model)
    assert tuned.config["hidden_irreps"] == foundation.config["hidden_irreps"] and tuned.cutoff == 4.5
    assert tuned.config["avg_num_neighbors"] == foundation.config["avg_num_neighbors"]
    assert tuned.config["atomic_inter_scale"] == foundation.config["atomic_inter_scale"]
