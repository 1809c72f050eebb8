"""Errors name the file once per entry point (``errors.in_file``) and the key as the user wrote it
(``KeyMap``: a DeePMD input's keys behind the native ones the engine validates)."""

from __future__ import annotations

import json

import pytest

from mlpot.config import deepmd, validate_config
from mlpot.errors import ConfigError, DataError, KeyMap, in_file
from tests.bad_inputs.corpus import _write_dp


def test_in_file_names_the_file_of_errors_that_name_none():
    with pytest.raises(ConfigError, match=r"^input\.json: training\.numb_steps: bad$"):
        with in_file("input.json"):
            raise ConfigError("bad", key="training.numb_steps")
    with pytest.raises(DataError, match=r"^sys4: frame 2: bad$"):  # an error naming its own file keeps it
        with in_file("input.json"):
            raise DataError("bad", file="sys4", frame=2)


def test_key_map_rewrites_native_keys_of_errors_about_the_file():
    keys = KeyMap({"lr_schedule": "learning_rate", "data.train.paths": "training/training_data/systems"})
    keys.add(["data", "valid", "paths"], "training/validation_data/systems", below=False)
    assert keys.user_key("lr_schedule.start_lr") == "learning_rate/start_lr"
    assert keys.user_key("data.train.paths[2]") == "training/training_data/systems[2]"
    assert keys.user_key("data.valid.paths[5]") == "training/validation_data/systems"
    assert keys.user_key("lr_schedulex") is None and keys.user_key("model/descriptor/rcut") is None
    with pytest.raises(ConfigError, match=r"^input\.json: learning_rate/start_lr: must be > 0$"):
        with in_file("input.json", keys):
            raise ConfigError("must be > 0", file="input.json", key=["lr_schedule", "start_lr"])
    with pytest.raises(DataError, match=r"^other\.json: lr_schedule\.start_lr: x$"):  # not about this file
        with in_file("input.json", keys):
            raise DataError("x", file="other.json", key="lr_schedule.start_lr")


def test_deepmd_key_origins(tmp_path):
    _write_dp(tmp_path)
    config = json.loads((tmp_path / "input.json").read_text())
    config["training"]["training_data"]["systems"] = "."  # one root searched for systems
    config["training"]["gradient_max_norm"] = -1.0
    keys = KeyMap()
    native = deepmd.convert_dict(config, base_dir=tmp_path, file="input.json", keys=keys)
    expected = {
        "data.train.paths[1]": "training/training_data/systems",
        "data.train.batch_size": "training/training_data/batch_size",
        "lr_schedule.start_lr": "learning_rate/start_lr",
        "loss.terms.forces.start_pref": "loss/start_pref_f",
        "loss.terms.energy": "loss/start_pref_e",
        "training.numb_steps": "training/numb_steps",
        "training.clip_grad_norm": "training/gradient_max_norm",
        "checkpoint.every": "training/save_freq",
        "logging.disp_freq": "training/disp_freq",
        "seed": "training/seed",
    }
    assert {native_key: keys.user_key(native_key) for native_key in expected} == expected
    with pytest.raises(ConfigError, match=r"input\.json: training/gradient_max_norm: Input should be greater than 0"):
        with in_file("input.json", keys):
            validate_config(native, file="input.json")
