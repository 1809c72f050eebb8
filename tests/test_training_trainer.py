"""End-to-end training: exact resume after SIGKILL, DDP = one process, bad input, non-finite skip.

A tiny se_e2_a model on a few 8-atom EMT CuAu frames generated here (fast, no shared data).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlpot.config import load_config
from mlpot.errors import CheckpointError, ConfigError
from mlpot.training.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from mlpot.training.trainer import Trainer, TrainingStopped

REPO = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, n_frames: int = 12, seed: int = 0):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 2)
        atoms.symbols[rng.choice(len(atoms), 3, replace=False)] = "Au"
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    write(folder / "train.extxyz", frames[:8])
    write(folder / "valid.extxyz", frames[8:])


def base_config(**training):
    return {
        "seed": 3, "dtype": "float64", "output_dir": "out",
        "model": {
            "type_map": ["Cu", "Au"],
            "descriptor": {"type": "se_e2_a", "sel": [40, 40], "rcut": 4.0, "rcut_smth": 1.0,
                           "neuron": [4, 8], "axis_neuron": 2, "seed": 1},
            "fitting_net": {"neuron": [8, 8], "seed": 1},
        },
        "data": {"train": {"paths": ["train.extxyz"], "batch_size": 2},
                 "valid": {"paths": ["valid.extxyz"], "batch_size": 4}},
        "optimizer": {"name": "adam"},
        "lr_schedule": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 5},
        "loss": {"type": "ener", "terms": {"energy": {"start_pref": 0.02, "limit_pref": 1.0},
                                           "forces": {"start_pref": 1000.0, "limit_pref": 1.0}}},
        "training": {"numb_steps": 40, **training},
        "logging": {"disp_freq": 1, "progress_bar": False},
        "checkpoint": {"every": 10, "keep": 3},
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emt")
    make_dataset(folder)
    return folder


def write_config(folder: Path, config: dict, dataset: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    config["data"] = {split: {**section, "paths": [str(dataset / p) for p in section["paths"]]}
                      for split, section in config["data"].items()}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def cli(*args):
    return [sys.executable, "-m", "mlpot.cli", "train", *map(str, args), "--no-progress"]


def csv_rows(path: Path):
    """{step: row} keeping the last occurrence (a resumed run appends rows it repeats)."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = {}
    for line in lines[1:]:
        values = dict(zip(header, line.split(",")))
        rows[int(values["step"])] = values
    return rows


def staged(config):
    config = dict(config)
    config["train_schedule"] = [
        {"name": "first", "start": 0, "end": 59},
        {"name": "second", "start": 60, "end": 119, "lr": 5e-4,
         "loss": {"energy": {"weight": 1.0}, "forces": {"weight": 10.0, "function": "huber", "huber_delta": 0.5}}},
    ]
    config["ema"] = {"decay": 0.99}
    config["training"] = {"numb_steps": 120, "valid_freq": 50}
    config["checkpoint"] = {"every": 10, "keep": 3}
    return config


def test_exact_resume_after_sigkill(tmp_path, dataset):
    config = staged(base_config())
    reference = write_config(tmp_path / "reference", config, dataset)
    reference_run = subprocess.Popen(cli(reference), env=env(), cwd=REPO, stdout=subprocess.DEVNULL)

    killed = write_config(tmp_path / "killed", config, dataset)
    out = killed.parent / "out"
    process = subprocess.Popen(cli(killed), env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "model.ckpt-70.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # every checkpoint left behind is complete and loadable, and no half-written file is picked up
    manager = CheckpointManager(out, "model.ckpt", 3)
    assert manager.existing() and all(load_checkpoint(p)["step"] % 10 == 0 for p in manager.existing())
    killed_at = load_checkpoint(manager.latest())["step"]
    assert 70 <= killed_at < 120  # inside stage "second"
    assert reference_run.wait() == 0

    subprocess.run(cli(killed, "--restart", "latest"), check=True, env=env(), cwd=REPO, capture_output=True)
    ref_rows, resumed_rows = csv_rows(reference.parent / "out" / "metrics.csv"), csv_rows(out / "metrics.csv")
    assert sorted(ref_rows) == sorted(resumed_rows) == list(range(1, 121))
    for step in ref_rows:  # identical to the last digit, step by step, losses and validation
        assert resumed_rows[step] == ref_rows[step], step
    ref_lcurve = (reference.parent / "out" / "lcurve.out").read_text().splitlines()
    resumed_lcurve = (out / "lcurve.out").read_text().splitlines()
    assert resumed_lcurve[-1] == ref_lcurve[-1] and resumed_lcurve[:2] == ref_lcurve[:2]
    assert (out / "model.pt").exists()


def test_ddp_two_processes_match_one(tmp_path, dataset):
    config = base_config(numb_steps=6)
    config["data"]["train"]["batch_size"] = 4
    config["checkpoint"] = {"every": 100, "keep": 1}
    single = write_config(tmp_path / "single", config, dataset)
    subprocess.run(cli(single), check=True, env=env(), cwd=REPO, capture_output=True)
    ddp = write_config(tmp_path / "ddp", config, dataset)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mlpot.cli", "train", str(ddp), "--no-progress"]
    result = subprocess.run(command, env=env(), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = csv_rows(single.parent / "out" / "metrics.csv"), csv_rows(ddp.parent / "out" / "metrics.csv")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        for column in ("loss", "train_rmse_e", "train_rmse_f", "valid_rmse", "valid_forces_rmse"):
            assert float(b[step][column]) == pytest.approx(float(a[step][column]), rel=1e-10), (step, column)


def test_bad_inputs_name_file_and_key(tmp_path, dataset):
    folder = tmp_path / "run"
    path = write_config(folder, base_config(numb_steps=10), dataset)
    Trainer(load_config(path), progress=False).run()
    out = folder / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # a checkpoint cut short
    good = out / "model.ckpt-10.pt"
    cut = folder / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    result = subprocess.run(cli(path, "--restart", cut), env=env(), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "cut.pt: cannot read checkpoint (truncated or corrupt file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match=r"cut.pt: cannot read checkpoint"):
        load_checkpoint(cut)
    torch.save({"x": 1}, folder / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt: not an mlpot training checkpoint"):
        load_checkpoint(folder / "foreign.pt")
    # unknown key with suggestion, and a missing data path
    bad = yaml.safe_load(path.read_text())
    bad["training"]["numb_step"] = 3
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run(cli(path), env=env(), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "config.yaml: training.numb_step: unknown key (did you mean 'numb_steps'?)" in result.stderr
    bad["training"].pop("numb_step")
    bad["data"]["train"]["paths"] = [str(folder / "nowhere.extxyz")]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"config.yaml: data.train.paths\[0\]: no such file or directory"):
        load_config(path)
    # nothing already written changed
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_atomic_checkpoint_write_keeps_old_file(tmp_path):
    target = tmp_path / "model.ckpt-1.pt"
    save_checkpoint(target, {"step": 1})
    original = target.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(target, {"step": 2, "bad": Unpicklable()})
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left behind


def _poison(monkeypatch, steps, term=None):
    """Make the loss of the given training calls (1-based) NaN: the total, or one term's weighted value."""
    from mlpot.training import losses

    original = losses.WeightedLoss.__call__
    calls = {"n": 0}

    def poisoned(self, pred, batch, lr_ratio=1.0, reduce=None):
        total, weighted, raw = original(self, pred, batch, lr_ratio, reduce)
        if total.requires_grad:  # training steps only (validation runs without a graph)
            calls["n"] += 1
            if calls["n"] in steps:
                if term is None:
                    total = total * float("nan")
                else:
                    weighted = dict(weighted, **{term: weighted[term] * float("nan")})
                    total = sum(weighted.values())
        return total, weighted, raw

    monkeypatch.setattr(losses.WeightedLoss, "__call__", poisoned)


def test_nonfinite_loss_skips_update_and_stops(tmp_path, dataset, monkeypatch):
    config = base_config(numb_steps=4, max_nonfinite=1)
    config["ema"] = {"decay": 0.9}
    path = write_config(tmp_path, config, dataset)
    trainer = Trainer(load_config(path), progress=False)
    _poison(monkeypatch, (2, 3), term="forces")
    with pytest.raises(TrainingStopped, match=r"stopped after 2 steps with a non-finite loss "
                                              r"\(training.max_nonfinite = 1\), at step 3; the first was step 2, "
                                              r"term forces"):
        trainer.run()
    assert trainer.nonfinite == 2
    log = (tmp_path / "out" / "debug.log").read_text()
    assert "non-finite loss at step 2: update skipped (1 so far; first non-finite term: forces)" in log
    # only step 1 updated the weights
    assert all(int(state["step"]) == 1 for state in trainer.optimizer.state.values())
    assert trainer.ema.num_updates == 1


def test_a_run_that_never_updates_is_an_error(tmp_path, dataset, monkeypatch):
    """Non-finite losses on every step of a run shorter than max_nonfinite: an error, not exit 0."""
    path = write_config(tmp_path, base_config(numb_steps=3), dataset)
    trainer = Trainer(load_config(path), progress=False)
    _poison(monkeypatch, (1, 2, 3))
    with pytest.raises(TrainingStopped, match=r"no step of this run updated the model: all 3 had a non-finite loss "
                                              r"\(the first at step 1, term the total\)"):
        trainer.run()
    assert not trainer.optimizer.state  # Adam never stepped


def test_nonfinite_gradient_skips_the_update(tmp_path, dataset, monkeypatch):
    path = write_config(tmp_path, base_config(numb_steps=2), dataset)
    trainer = Trainer(load_config(path), progress=False)
    original = torch.Tensor.backward

    def nan_gradients(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if trainer.step == 0:
            next(p for p in trainer.model.parameters() if p.grad is not None).grad.fill_(float("nan"))

    monkeypatch.setattr(torch.Tensor, "backward", nan_gradients)
    trainer.run()
    assert trainer.nonfinite == 1 and trainer.first_nonfinite == (1, "the gradient")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_checkpoint_of_a_nan_model_is_refused(tmp_path):
    save_checkpoint(tmp_path / "model.ckpt-1.pt", {"step": 1, "model_state_dict": {"w": torch.ones(2)}})
    with pytest.raises(CheckpointError, match=r"model\.ckpt-2\.pt: not written: the model holds non-finite "
                                              r"values \(NaN or inf\) in 'w'"):
        save_checkpoint(tmp_path / "model.ckpt-2.pt", {"step": 2, "model_state_dict": {"w": torch.tensor([1.0, float("inf")])}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt-1.pt"]


def test_fully_frozen_model_is_a_config_error(tmp_path, dataset):
    frozen = base_config(numb_steps=2)
    frozen["model"]["descriptor"]["trainable"] = False
    frozen["model"]["fitting_net"]["trainable"] = False
    path = write_config(tmp_path, frozen, dataset)
    with pytest.raises(ConfigError, match="nothing to train: every parameter of the model is frozen") as error:
        Trainer(load_config(path), progress=False, file=str(path))
    assert str(path) in str(error.value)


def test_epoch_units_stages_and_ema_export(tmp_path, dataset):
    config = base_config()
    config["training"] = {"numb_epochs": 3}
    config["lr_schedule"] = {"type": "constant", "start_lr": 1e-3}
    config["train_schedule"] = [{"name": "a", "start": 0, "end": 1}, {"name": "b", "start": 2, "end": 2, "lr": 1e-4,
                                                                         "loss": {"energy_per_atom": 1.0}}]
    config["ema"] = {"decay": 0.5}
    config["data"]["train"]["sampler"] = "epoch"
    config["model"]["descriptor"]["sel"] = "auto"
    path = write_config(tmp_path, config, dataset)
    trainer = Trainer(load_config(path), progress=False)
    # sel "auto": max neighbours per type at rcut from the data, x1.1, rounded up to a multiple of 4
    sel = trainer.model.config["descriptor"]["sel"]
    assert all(isinstance(n, int) and n % 4 == 0 for n in sel) and len(sel) == 2
    trainer.run()
    assert trainer.step == 12  # 8 frames / batch 2 = 4 steps per epoch
    rows = csv_rows(tmp_path / "out" / "metrics.csv")
    assert [rows[s]["stage"] for s in (1, 8, 9, 12)] == ["a", "a", "b", "b"]
    assert float(rows[8]["lr"]) == 1e-3 and float(rows[9]["lr"]) == pytest.approx(1e-4)
    # stage b trains on energies only: the log columns stay, the force training column is nan
    assert rows[12]["train_rmse_f"] == "nan" and float(rows[12]["valid_forces_rmse"]) > 0
    assert float(rows[8]["train_rmse_f"]) > 0
    debug = (tmp_path / "out" / "debug.log").read_text()
    assert debug.count("INFO: Epoch ") == 3
    from mlpot.calculators.export import freeze, load_model

    freeze(trainer.checkpoints.latest(), tmp_path / "model.pt")
    exported = load_model(tmp_path / "model.pt")
    ema = trainer.ema.shadow
    name = next(iter(ema))
    assert torch.equal(dict(exported.named_parameters())[name], ema[name])


def test_trainer_lr_follows_deepmd_worked_example(tmp_path, dataset):
    """T = 200 with decay_steps 5000: the lr used at displayed step 10 is 6.30e-4, at 200 3.9e-8."""
    config = base_config(numb_steps=200)
    config["lr_schedule"] = {"type": "exp", "start_lr": 1e-3, "stop_lr": 3.51e-8}
    trainer = Trainer(load_config(write_config(tmp_path, config, dataset)), progress=False)
    lrs = []
    for _ in range(200):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])  # the lr step t + 1 is displayed with
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert f"{lrs[9]:.2e}" == "6.30e-04" and f"{lrs[199]:.1e}" == "3.9e-08"
    assert lrs[9] == pytest.approx(1e-3 * 0.8574**3, rel=1e-3)


def test_init_model_takes_weights_only(tmp_path, dataset):
    from mlpot.cli import main

    path = write_config(tmp_path / "first", base_config(numb_steps=3), dataset)
    assert main(["train", str(path), "--no-progress"]) == 0
    source = tmp_path / "first" / "out" / "model.pt"
    assert source.exists()
    second = tmp_path / "second"
    assert main(["train", str(path), "--init-model", str(source), "--output-dir", str(second), "--no-progress"]) == 0
    first_state = load_checkpoint(tmp_path / "first" / "out" / "model.ckpt-3.pt")
    state = load_checkpoint(second / "model.ckpt-3.pt")
    assert state["step"] == 3  # started again from step 0
    # the second run started from the first run's final weights: its Adam moments restart from zero
    # but its weights are not those of a fresh initialisation
    fresh_model = Trainer(load_config(path), progress=False).model
    fresh = fresh_model.state_dict()
    name = next(k for k, v in fresh_model.named_parameters() if v.numel() > 4)
    assert not torch.equal(state["model_state_dict"][name], fresh[name])
    assert not torch.equal(state["model_state_dict"][name], first_state["model_state_dict"][name])


def test_plateau_and_tensorboard_optional(tmp_path, dataset):
    config = base_config(numb_steps=6, valid_freq=1)
    # an lr so small that the validation error changes by less than the relative threshold (1e-4):
    # no improvement at every validation, so the lr halves each time (patience 0)
    config["lr_schedule"] = {"type": "plateau", "start_lr": 1e-9, "factor": 0.5, "patience": 0}
    config["loss"] = {"terms": {"energy_per_atom": 1.0, "forces": 1.0}}  # constant weights
    config["logging"]["tensorboard"] = True
    trainer = Trainer(load_config(write_config(tmp_path, config, dataset)), progress=False)
    try:
        import tensorboard  # noqa: F401
        trainer.run()
        assert any((tmp_path / "out" / "tensorboard").iterdir())
    except ImportError:
        with pytest.warns(UserWarning, match="tensorboard is not installed"):
            trainer.run()
    rows = csv_rows(tmp_path / "out" / "metrics.csv")
    lrs = [float(rows[s]["lr"]) for s in sorted(rows)]
    # the lr only ever halves, after validations that did not improve
    assert lrs == pytest.approx([1e-9, 1e-9, 5e-10, 2.5e-10, 1.25e-10, 6.25e-11]), lrs
