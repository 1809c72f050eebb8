"""DeePMD-kit training keys ``numb_epoch``, ``save_dir`` and ``disp_avg`` (spec deepmd.md §5.1, §5.4).

Tiny ``input.json`` runs on synthetic molecules (written by ``write_system`` of the extra-keys
tests): the step count from ``numb_epoch`` (DeePMD-kit 3.x: ceil(numb_epoch · ceil(max_k nb_k / p_k))),
the checkpoint files in ``save_dir``, and ``disp_avg`` rows equal to the mean of the per-step values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlpot.config import deepmd, validate_config
from mlpot.errors import ConfigError
from mlpot.training.logging import WindowMean
from tests.test_deepmd_extra_keys import write_system


def small_deepmd_input(tmp_path, **training):
    """se_e2_a [4] / fitting [8] on two systems written to ``tmp_path`` (5 frames of 4 atoms, 3 frames
    of 5 atoms; batch 2): a small DeePMD-kit input dict, ``training`` keys overriding."""
    if not (tmp_path / "sys4").exists():
        write_system(tmp_path / "sys4", 4, 5, seed=1)
        write_system(tmp_path / "sys5", 5, 3, seed=2)
    config = {
        "model": {"type_map": ["C", "H"],
                  "descriptor": {"type": "se_e2_a", "sel": [4, 4], "rcut": 4.0, "rcut_smth": 0.5,
                                 "neuron": [4], "axis_neuron": 2, "seed": 1},
                  "fitting_net": {"neuron": [8], "seed": 1}},
        "learning_rate": {"start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 2},
        "loss": {"start_pref_e": 0.02, "limit_pref_e": 1.0, "start_pref_f": 100, "limit_pref_f": 1.0},
        "training": {"training_data": {"systems": ["sys4", "sys5"], "batch_size": 2},
                     "numb_steps": 6, "seed": 3, "disp_freq": 3, "save_freq": 3,
                     "change_bias_after_training": False, **training},
    }
    return config


def _trainer(tmp_path, **training):
    from mlpot.training.trainer import Trainer

    config = small_deepmd_input(tmp_path, **training)
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / "out")
    native["logging"]["debug_log"] = None
    native["logging"]["metrics_csv"] = None
    return Trainer(validate_config(native), progress=False)


def _total_steps(tmp_path, config) -> int:
    """Steps of the run: numb_epoch is counted by the engine on the system sampler, once the data are read."""
    from mlpot.training.trainer import Trainer

    native = deepmd.convert_dict(config, base_dir=tmp_path)
    assert native["training"] == {"sampler_epochs": float(config["training"]["numb_epoch"]),
                                  "change_bias_after_training": False}  # the converter reads no data
    native["output_dir"] = str(tmp_path / "out")
    return Trainer(validate_config(native), progress=False).total_steps


def test_numb_epoch_gives_deepmd_step_count(tmp_path):
    config = small_deepmd_input(tmp_path)
    del config["training"]["numb_steps"]
    # nb = [ceil(5/2), ceil(3/2)] = [3, 2]; prob_sys_size p = [3/5, 2/5]: max nb/p = 5 batches per epoch
    config["training"]["numb_epoch"] = 2
    assert _total_steps(tmp_path, config) == 10
    config["training"]["numb_epoch"] = 0.5  # fractional epochs round up: ceil(2.5)
    assert _total_steps(tmp_path, config) == 3
    # prob_uniform p = [1/2, 1/2]: max(3/0.5, 2/0.5) = 6 batches per epoch
    config["training"]["training_data"]["auto_prob"] = "prob_uniform"
    config["training"]["numb_epoch"] = 2
    assert _total_steps(tmp_path, config) == 12
    # sys_probs [0.9, 0.1]: max(3/0.9, 2/0.1) = 20
    config["training"]["training_data"]["sys_probs"] = [0.9, 0.1]
    config["training"]["numb_epoch"] = 1
    assert _total_steps(tmp_path, config) == 20


def test_numb_epoch_errors(tmp_path):
    config = small_deepmd_input(tmp_path, numb_epoch=1)
    with pytest.raises(ConfigError, match="training/numb_steps or training/numb_epoch, not both") as info:
        deepmd.convert_dict(config, base_dir=tmp_path)
    assert "training.numb_epoch" in str(info.value) or "training/numb_epoch" in str(info.value)
    del config["training"]["numb_steps"]
    config["training"]["numb_epoch"] = -1
    with pytest.raises(ConfigError, match="positive number of epochs"):
        deepmd.convert_dict(config, base_dir=tmp_path)
    del config["training"]["numb_epoch"]
    with pytest.raises(ConfigError, match="missing required key 'numb_steps'"):
        deepmd.convert_dict(config, base_dir=tmp_path)


def test_numb_epoch_run_trains_that_many_steps_and_save_dir_holds_checkpoints(tmp_path):
    config = small_deepmd_input(tmp_path, save_dir="ckpts")
    del config["training"]["numb_steps"]
    config["training"]["numb_epoch"] = 1  # 5 steps
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    assert native["checkpoint"]["dir"] == "ckpts"
    native["output_dir"] = str(tmp_path / "out")
    from mlpot.training.trainer import Trainer

    trainer = Trainer(validate_config(native), progress=False)
    trainer.run()
    assert trainer.step == 5
    rows = np.loadtxt(tmp_path / "out" / "lcurve.out", ndmin=2)
    assert rows[:, 0].tolist() == [1, 3, 5]
    ckpts = tmp_path / "out" / "ckpts"
    assert sorted(p.name for p in ckpts.glob("model.ckpt-*.pt")) == ["model.ckpt-3.pt", "model.ckpt-5.pt"]
    assert (ckpts / "checkpoint").read_text().strip().endswith("model.ckpt-5.pt")
    assert not list((tmp_path / "out").glob("model.ckpt-*.pt"))  # nothing beside the run folder


def test_window_mean_counts_each_key_over_its_steps():
    window = WindowMean()
    window.add({"rmse": 1.0, "rmse_a": 2.0, "lr": 1e-3, "loss": 5.0})
    window.add({"rmse": 3.0, "lr": 1e-4, "loss": 6.0})
    assert window.pop() == {"rmse": 2.0, "rmse_a": 2.0}
    assert window.pop() == {}


def test_disp_avg_rows_are_means_of_per_step_values(tmp_path):
    # reference: the same run without disp_avg, displaying every step (the per-step values)
    every = _trainer(tmp_path / "a", disp_freq=1)
    every.run()
    per_step = np.loadtxt(tmp_path / "a" / "out" / "lcurve.out", ndmin=2)
    assert per_step.shape[0] == 6
    averaged = _trainer(tmp_path / "b", disp_avg=True)
    assert averaged.config.logging.disp_avg
    averaged.run()
    rows = np.loadtxt(tmp_path / "b" / "out" / "lcurve.out", ndmin=2)
    assert rows[:, 0].tolist() == [1, 3, 6]
    header = (tmp_path / "b" / "out" / "lcurve.out").read_text().splitlines()[0].split()[1:]
    metrics = slice(1, len(header) - 1)  # every column but step and lr
    # windows: step 1 alone, steps 2-3, steps 4-6 (the same seed gives the same batches and updates)
    for row, (start, stop) in zip(rows, [(0, 1), (1, 3), (3, 6)]):
        np.testing.assert_allclose(row[metrics], per_step[start:stop, metrics].mean(axis=0), rtol=2e-2)
        assert row[-1] == per_step[stop - 1, -1]  # the lr is the current one
    # without disp_avg the display shows the current batch's values only
    plain = _trainer(tmp_path / "c")
    plain.run()
    current = np.loadtxt(tmp_path / "c" / "out" / "lcurve.out", ndmin=2)
    np.testing.assert_allclose(current[:, metrics], per_step[[0, 2, 5]][:, metrics], rtol=2e-2)
