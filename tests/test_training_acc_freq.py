"""Gradient accumulation (``training.acc_freq``, DeePMD-kit 3.x ``training/acc_freq``).

DeePMD-kit (Paddle backend, the one that has the key) calls backward on every batch's loss, steps the
optimizer and the lr scheduler every acc_freq-th batch on the *sum* of the gradients, and reads the
lr-coupled loss prefactors from the scheduler: the lr schedule counts optimizer steps while
numb_steps counts batches. Checked here on a tiny se_e2_a model in float64 with hand-picked frames:
acc_freq = k with batch size 1 and SGD at lr / k moves the parameters exactly as one batch of k
frames at lr (the loss is a mean over frames of equal size), and the lr follows the optimizer steps.
"""

from __future__ import annotations

import pytest
import torch

import mlpot.training.trainer as trainer_module
from mlpot.config import deepmd, validate_config
from mlpot.errors import ConfigError
from tests.test_deepmd_training_keys import small_deepmd_input


def _trainer(tmp_path, batches, *, acc_freq=1, batch_size=1, lr=1e-3, native_optimizer=None, monkeypatch=None,
             **training):
    from mlpot.training.trainer import Trainer

    config = small_deepmd_input(tmp_path, acc_freq=acc_freq, **training)
    config["training"]["training_data"] = {"systems": ["sys4"], "batch_size": batch_size}
    config["learning_rate"] = {"start_lr": lr, "stop_lr": lr / 100, "decay_steps": 1}
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / f"out{acc_freq}")
    native["logging"]["debug_log"] = None
    native["logging"]["metrics_csv"] = None
    if native_optimizer is not None:
        native["optimizer"] = native_optimizer
        native["lr_schedule"] = {"type": "constant", "start_lr": lr}
    trainer = Trainer(validate_config(native), progress=False)
    trainer._enter_stage(0)
    queue = list(batches)
    monkeypatch.setattr(trainer_module, "next_indices", lambda data: queue.pop(0))
    return trainer


def _params(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("k", [2, 3])
def test_accumulated_step_equals_one_big_batch(tmp_path, monkeypatch, k):
    frames = [[0], [3], [1]][:k]
    big = _trainer(tmp_path, [sum(frames, [])], batch_size=k, lr=1e-2,
                   native_optimizer={"name": "sgd", "lr": 1e-2}, monkeypatch=monkeypatch)
    start = _params(big)
    assert next(iter(start.values())).dtype == torch.float64
    big.train_step()
    acc = _trainer(tmp_path, frames, acc_freq=k, lr=1e-2 / k, native_optimizer={"name": "sgd", "lr": 1e-2 / k},
                   monkeypatch=monkeypatch)
    assert all(torch.equal(start[n], p) for n, p in _params(acc).items())  # same initial model
    for _ in range(k - 1):
        acc.train_step()
        assert all(torch.equal(start[n], p) for n, p in _params(acc).items())  # no update inside the window
    acc.train_step()
    moved = max(float((p - start[n]).abs().max()) for n, p in _params(big).items())
    assert moved > 1e-6
    for name, value in _params(acc).items():
        torch.testing.assert_close(value, _params(big)[name], rtol=0, atol=1e-12)


def test_adam_without_eps_is_blind_to_the_sum(tmp_path, monkeypatch):
    """Adam's first step is g / |g| per element (eps = 0): the summed gradient of k batches gives
    the update of their mean, i.e. of one batch of k frames at the same lr."""
    adam = {"name": "adam", "lr": 1e-3, "kwargs": {"eps": 0.0}}
    big = _trainer(tmp_path, [[0, 2]], batch_size=2, native_optimizer=adam, monkeypatch=monkeypatch)
    big.train_step()
    acc = _trainer(tmp_path, [[0], [2]], acc_freq=2, native_optimizer=adam, monkeypatch=monkeypatch)
    acc.train_step(), acc.train_step()
    for name, value in _params(acc).items():
        torch.testing.assert_close(value, _params(big)[name], rtol=0, atol=1e-12)


def test_lr_schedule_counts_optimizer_steps(tmp_path, monkeypatch):
    """exp schedule with decay_steps 1 over numb_steps 6 batches: with acc_freq 2 the lr after batch s
    is lr(s // 2), the value the schedule has after s // 2 optimizer steps (DeePMD-kit's scheduler
    steps with the optimizer); the displayed lr of a batch is the one its update uses."""
    ref = _trainer(tmp_path, [[i % 5] for i in range(6)], monkeypatch=monkeypatch)
    lrs = [ref.train_step(metrics=False)["lr"] for _ in range(6)]
    assert lrs[1] < lrs[0]  # decays every step without accumulation
    acc = _trainer(tmp_path, [[i % 5] for i in range(6)], acc_freq=2, monkeypatch=monkeypatch)
    shown = [acc.train_step(metrics=False)["lr"] for _ in range(6)]
    assert shown == pytest.approx([lrs[0], lrs[0], lrs[1], lrs[1], lrs[2], lrs[2]], rel=1e-12)
    # the lr-coupled prefactors follow that lr: lr / start_lr after two optimizer steps
    assert acc._lr_ratio() == pytest.approx(lrs[3] / lrs[0], rel=1e-12)


def test_acc_freq_converted_and_checked(tmp_path):
    config = small_deepmd_input(tmp_path, acc_freq=4)
    assert deepmd.convert_dict(config, base_dir=tmp_path)["training"]["acc_freq"] == 4
    config = small_deepmd_input(tmp_path, acc_freq=0)
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="acc_freq"):
        validate_config(native)


def test_acc_freq_with_multitask_is_not_supported_yet(tmp_path, shared_data):
    from mlpot.training.trainer import Trainer
    from tests.test_deepmd_multitask import _native, _subset, pytorch_input

    source = shared_data("deepmd_water/data_0")
    systems = {"a": _subset(source, tmp_path / "sys_a", [0, 1]), "b": _subset(source, tmp_path / "sys_b", [2]),
               "valid": _subset(source, tmp_path / "sys_valid", [3])}
    config = pytorch_input(systems, steps=2)
    config["training"]["acc_freq"] = 2
    native = _native(config, tmp_path)
    assert native.training.acc_freq == 2
    with pytest.raises(ConfigError, match="not supported yet: acc_freq > 1 with multi-task"):
        Trainer(native, progress=False)
