"""DeePMD-kit keys learning_rate/type cosine and wsd, and model/preset_out_bias, through input.json
(spec deepmd.md §3 energy bias, §4.1; formulas of DeePMD-kit 3.x)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlpot.cli import main
from mlpot.config import deepmd, validate_config
from mlpot.errors import ConfigError

from test_deepmd_extra_keys import _input


def _lr_input(tmp_path, lr):
    config = _input(tmp_path, batch_size=1)
    config["learning_rate"] = lr
    return config


def _cosine(t):
    # W = 2 warm-up steps from 0.1·start, then T = 12 - 2 steps of cosine to stop_lr
    if t < 2:
        return 1e-3 * (0.1 + 0.9 * t / 2)
    return 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (t - 2) / 10))


def _wsd(t):
    # N = 12, no warm-up, ratio 0.5: D = 6 decay steps after S = 6 stable ones; linear decay
    return 1e-3 if t < 6 else 1e-3 + (1e-5 - 1e-3) * (t - 6) / 6


@pytest.mark.parametrize("lr, formula", [
    ({"type": "cosine", "start_lr": 1e-3, "stop_lr": 1e-5, "warmup_steps": 2, "warmup_start_factor": 0.1}, _cosine),
    ({"type": "wsd", "start_lr": 1e-3, "stop_lr_ratio": 1e-2, "decay_phase_ratio": 0.5, "decay_type": "linear"}, _wsd),
], ids=["cosine", "wsd"])
def test_trainer_lr_follows_the_formula(tmp_path, lr, formula):
    from mlpot.training.optim import current_lr
    from mlpot.training.trainer import Trainer

    native = deepmd.convert_dict(_lr_input(tmp_path, lr), base_dir=tmp_path)
    assert native["lr_schedule"]["type"] == lr["type"] and "decay_steps" not in native["lr_schedule"]
    native["output_dir"] = str(tmp_path / "out")
    trainer = Trainer(validate_config(native), progress=False)
    trainer._enter_stage(0)
    for t in range(12):
        assert current_lr(trainer.optimizer) == pytest.approx(formula(t), rel=1e-12)
        trainer.train_step(metrics=False)


def test_input_json_wsd_lcurve_lr_column(tmp_path, monkeypatch):
    config = _lr_input(tmp_path, {"type": "wsd", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_phase_ratio": 0.5,
                                  "decay_type": "linear"})
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json"]) == 0
    rows = np.loadtxt(tmp_path / "lcurve.out", ndmin=2)
    assert rows.shape[0] == 12 and np.all(np.isfinite(rows))
    # displayed step s is internal step s - 1; lcurve prints the lr as %8.1e
    np.testing.assert_allclose(rows[:, -1], [_wsd(t) for t in range(12)], rtol=0.06)


def test_lr_front_end_errors(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate.decay_steps: unknown key"):
        deepmd.convert_dict(_lr_input(tmp_path, {"type": "cosine", "start_lr": 1e-3, "stop_lr": 1e-5,
                                                 "decay_steps": 10}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        deepmd.convert_dict(_lr_input(tmp_path, {"type": "cosine", "start_lr": 1e-3, "decay_phase_ratio": 0.1}),
                            base_dir=tmp_path)
    native = deepmd.convert_dict(_lr_input(tmp_path, {"type": "wsd", "start_lr": 1e-3, "stop_lr": 1e-5,
                                                      "decay_type": "sqrt"}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="decay_type"):
        validate_config(native)


def test_preset_out_bias_is_moved_to_the_fitting_and_checked(tmp_path):
    from mlpot.models import build_model

    config = _input(tmp_path, batch_size=1)
    config["model"]["preset_out_bias"] = {"energy": [None, -1.25]}
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    assert native["model"]["preset_out_bias"] == {"energy": [None, -1.25]}  # the native key, built by the model
    assert build_model(native["model"]).fitting.preset_out_bias == [None, [-1.25]]
    for bad, message in (({"energy": [None]}, "one entry"), ({"force": [None, 1.0]}, 'expected {"energy"'),
                         ([None, 1.0], 'expected {"energy"')):
        config["model"]["preset_out_bias"] = bad
        with pytest.raises(ConfigError, match=message):
            build_model(deepmd.convert_dict(config, base_dir=tmp_path)["model"])


def test_input_json_preset_out_bias_kept_through_training_and_bias_change(tmp_path, monkeypatch, capsys):
    import torch

    config = _input(tmp_path, batch_size=1)
    config["model"]["preset_out_bias"] = {"energy": [None, -1.25]}
    config["training"]["change_bias_after_training"] = True
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json"]) == 0
    state = torch.load(tmp_path / "model.ckpt.pt", map_location="cpu", weights_only=False)
    bias = [v for k, v in state["model_state_dict"].items() if k.endswith("fitting.bias_atom")][0]
    assert float(bias[1, 0]) == -1.25  # fixed through the statistics, training and the bias change
    changed = [line for line in capsys.readouterr().out.splitlines() if "changed the energy bias" in line]
    assert changed and "H +0 eV" in changed[-1]  # the preset type H is not shifted
