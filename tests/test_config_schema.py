"""Native config schema and loader: located errors with suggestions (pinned messages)."""

import copy
import json

import pytest
import yaml

from mlpot.config import load_config, validate_config
from mlpot.errors import ConfigError


@pytest.fixture
def base(tmp_path):
    (tmp_path / "sys").mkdir()
    return {
        "model": {"type_map": ["O", "H"], "descriptor": {"type": "se_e2_a", "sel": [4, 8]}, "fitting_net": {}},
        "data": {"train": {"paths": ["sys"], "batch_size": "auto:32"}},
        "training": {"numb_steps": 10},
        "loss": {"terms": {"energy": 1.0, "forces": {"start_pref": 1000, "limit_pref": 1}}},
    }


def write(tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_config_resolves_paths_and_defaults(tmp_path, base):
    config = load_config(write(tmp_path, base))
    assert config.data.train.paths == [str(tmp_path / "sys")]
    assert config.output_dir == str(tmp_path)
    assert config.loss.terms["energy"].weight == 1.0
    assert config.loss.terms["forces"].start_pref == 1000
    assert config.training.unit == "steps" and config.training.length == 10
    assert [(s.name, s.start, s.end) for s in config.stages()] == [("train", 0, 9)]
    # DeePMD spellings are accepted as aliases
    alias = copy.deepcopy(base)
    alias["training"] = {"num_steps": 5, "gradient_max_norm": 2.0}
    alias["data"]["train"]["numb_batch"] = 3
    config = load_config(write(tmp_path, alias))
    assert config.training.numb_steps == 5 and config.training.clip_grad_norm == 2.0
    assert config.data.train.numb_btch == 3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["training"].update(numb_step=3),
         r"^\S*config.yaml: training.numb_step: unknown key \(did you mean 'numb_steps'\?\)$"),
        (lambda d: d.update(lr_schedul={}), r"config.yaml: lr_schedul: unknown key \(did you mean 'lr_schedule'\?\)"),
        (lambda d: d["loss"]["terms"]["forces"].update(wieght=3),
         r"config.yaml: loss.terms.forces.wieght: unknown key \(did you mean 'weight'\?\)"),
        (lambda d: d["training"].update(numb_steps="ten"),
         r"config.yaml: training.numb_steps: Input should be a valid integer.*got 'ten'"),
        (lambda d: d["data"]["train"].update(batch_size="aut"),
         r"config.yaml: data.train.batch_size: expected an int or auto, auto:N, max:N, filter:N, mixed:N; got 'aut'"),
        (lambda d: d["data"]["train"].update(paths=["missing_dir"]),
         r"config.yaml: data.train.paths\[0\]: no such file or directory: .*missing_dir"),
        (lambda d: d.update(lr_schedule={"type": "expo"}), r"config.yaml: lr_schedule.type: Input should be 'exp'"),
        (lambda d: d.update(train_schedule=[{"name": "a", "start": 0, "end": 4}, {"name": "b", "start": 6, "end": 9}]),
         r"config.yaml: train_schedule\[1\] \('b'\) starts at 6, expected 5"),
        (lambda d: d.update(train_schedule=[{"name": "a", "start": 0, "end": 9, "loss": {"energy": {"wieght": 1}}}]),
         r"config.yaml: train_schedule\[0\].loss.energy.wieght: unknown key \(did you mean 'weight'\?\)"),
        (lambda d: d.pop("training"), r"config.yaml: training: missing required key"),
        (lambda d: d["training"].update(numb_epochs=3), r"give exactly one of numb_steps, numb_epochs or sampler_epochs"),
        (lambda d: d["loss"]["terms"]["forces"].pop("limit_pref"), r"start_pref and limit_pref must be given together"),
    ],
)
def test_bad_config_messages(tmp_path, base, mutate, message):
    mutate(base)
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, base))


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match=r"config.yaml: invalid YAML at line 2"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")


def test_validate_dict_without_base_dir_keeps_paths(tmp_path, base):
    base["data"]["train"]["paths"] = [str(tmp_path / "sys")]
    config = validate_config(base, file="input.json")
    assert config.output_dir == "."


def test_the_model_section_is_typed_by_its_family(tmp_path, base):
    """An error inside the model section names the key path and the closest valid key."""
    bad = json.loads(json.dumps(base))
    bad["model"]["descriptor"]["rcutt"] = 6.0
    with pytest.raises(ConfigError, match=r"config\.yaml: model/descriptor/rcutt: unknown key \(did you mean 'rcut'\?\)"):
        load_config(write(tmp_path, bad))
    bad = json.loads(json.dumps(base))
    bad["model"]["type"] = "standart"
    with pytest.raises(ConfigError, match=r"model/type: unknown model type 'standart'.*did you mean 'standard'"):
        load_config(write(tmp_path, bad))
    bad = json.loads(json.dumps(base))
    bad["model"]["descriptor"]["rcut"] = "four"
    with pytest.raises(ConfigError, match=r"model/descriptor/rcut: Input should be a valid number"):
        load_config(write(tmp_path, bad))
