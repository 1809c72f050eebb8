"""DeePMD input.json front-end: key checking, aliases, comments, errors and the native mapping."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from mlpot.config import deepmd
from mlpot.config import _deepmd_keys as table
from mlpot.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
WATER_INPUT = REPO / "examples" / "deepmd_water" / "input.json"


@pytest.fixture
def water_input(shared_data):
    """The water se_e2_a example with its systems pointing at the shared data."""
    config = json.loads(WATER_INPUT.read_text())
    config["training"]["training_data"]["systems"] = [
        str(shared_data("deepmd_water/data_0")), str(shared_data("deepmd_water/data_1"))
    ]
    config["training"]["validation_data"]["systems"] = [str(shared_data("deepmd_water/data_3"))]
    return config


def test_water_example_maps_every_key(water_input):
    native = deepmd.convert_dict(water_input, file="input.json")
    model = native["model"]
    assert model["type_map"] == ["O", "H"]
    assert model["descriptor"] == {
        "type": "se_e2_a", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
        "resnet_dt": False, "axis_neuron": 16, "type_one_side": True, "precision": "float64", "seed": 1,
    }
    assert model["fitting_net"] == {
        "type": "ener", "neuron": [240, 240, 240], "resnet_dt": True, "precision": "float64", "seed": 1,
    }
    assert native["family"] == "deepmd" and native["dtype"] == "float64" and native["seed"] == 10
    assert native["lr_schedule"]["start_lr"] == 1e-3
    assert native["lr_schedule"]["stop_lr"] == 3.51e-8
    assert native["lr_schedule"]["decay_steps"] == 5000
    # PT rule: v has start = limit = 0, so it is off; e and f follow the lr-coupled schedule
    assert native["loss"]["terms"] == {
        "energy": {"start_pref": 0.02, "limit_pref": 1.0},
        "forces": {"start_pref": 1000.0, "limit_pref": 1.0},
    }
    train, valid = native["data"]["train"], native["data"]["valid"]
    assert [Path(p).name for p in train["paths"]] == ["data_0", "data_1"]
    assert train["batch_size"] == "auto" and train["auto_prob"] == "prob_sys_size"
    assert train["sampler"] == "deepmd" and train["format"] == "auto"
    assert valid["batch_size"] == 1 and valid["numb_btch"] == 3
    assert native["training"] == {"numb_steps": 1_000_000, "change_bias_after_training": False}  # DeePMD-kit default
    assert native["logging"]["lcurve"] == "lcurve.out" and native["logging"]["disp_freq"] == 100
    assert native["checkpoint"] == {"prefix": "model.ckpt", "every": 1000, "keep": 5}
    # no _comment survives anywhere
    assert "_comment" not in json.dumps(native)


def test_native_config_validates_against_the_schema(water_input):
    from mlpot.config import validate_config

    config = validate_config(deepmd.convert_dict(water_input), file="input.json")
    assert config.loss.type == "ener"
    assert config.loss.terms["forces"].start_pref == 1000.0
    assert config.lr_schedule.type == "exp" and config.lr_schedule.decay_steps == 5000
    assert config.data.valid.numb_btch == 3 and config.training.numb_steps == 1_000_000
    water_input["loss"]["relative_f"] = 0.5
    water_input["training"]["gradient_max_norm"] = 5.0
    water_input["training"]["enable_ema"] = True
    config = validate_config(deepmd.convert_dict(water_input))
    assert config.loss.terms["forces"].relative == 0.5
    assert config.training.clip_grad_norm == 5.0 and config.ema.decay == 0.999


def test_convert_from_file_resolves_relative_systems(tmp_path, water_input, shared_data):
    data_root = shared_data("deepmd_water")
    water_input["training"]["training_data"]["systems"] = [str(data_root / "data_0")]
    water_input["training"]["validation_data"]["systems"] = str(data_root)  # a root: searched for type.raw
    path = tmp_path / "input.json"
    path.write_text(json.dumps(water_input))
    native = deepmd.convert(path)
    assert [Path(p).name for p in native["data"]["valid"]["paths"]] == ["data_0", "data_1", "data_3"]
    assert deepmd.is_deepmd_config(path)
    assert not deepmd.is_deepmd_config({"model": {"r_max": 5.0}, "training": {}})


def test_aliases_are_canonicalised(water_input):
    water_input["model"]["descriptor"]["type"] = "se_a"
    water_input["model"]["fitting_net"]["n_neuron"] = water_input["model"]["fitting_net"].pop("neuron")
    water_input["training"]["stop_batch"] = water_input["training"].pop("numb_steps")
    water_input["training"]["validation_data"]["numb_batch"] = water_input["training"]["validation_data"].pop("numb_btch")
    native = deepmd.convert_dict(water_input)
    assert native["model"]["descriptor"]["type"] == "se_e2_a"
    assert native["model"]["fitting_net"]["neuron"] == [240, 240, 240]
    assert native["training"]["numb_steps"] == 1_000_000
    assert native["data"]["valid"]["numb_btch"] == 3


def test_comments_ignored_at_any_depth(water_input):
    water_input["_comment2"] = "x"
    water_input["model"]["descriptor"]["_comment_sel"] = "why 46"
    water_input["training"]["training_data"]["_comment"] = {"nested": True}
    assert deepmd.convert_dict(water_input) == deepmd.convert_dict(
        json.loads(json.dumps(water_input).replace('"_comment2": "x", ', ""))
    )


@pytest.mark.parametrize(
    "where, typo, suggestion",
    [
        (("model", "descriptor"), "rcutt", "rcut"),
        (("model", "fitting_net"), "nueron", "neuron"),
        (("training",), "disp_freqq", "disp_freq"),
        (("learning_rate",), "start_lrr", "start_lr"),
        ((), "trainning", "training"),
    ],
)
def test_typo_key_errors_with_suggestion(water_input, where, typo, suggestion):
    section = water_input
    for key in where:
        section = section[key]
    section[typo] = 1
    key_path = ".".join(where + (typo,))
    with pytest.raises(ConfigError, match=rf"input\.json: {re.escape(key_path)}: unknown key \(did you mean '{suggestion}'\?\)"):
        deepmd.convert_dict(water_input, file="input.json")


def test_unbuilt_feature_errors(water_input):
    bad = copy.deepcopy(water_input)
    bad["model"]["descriptor"]["type"] = "dpa3"
    with pytest.raises(ConfigError, match="not supported yet: model/descriptor/type=dpa3"):
        deepmd.convert_dict(bad)
    bad = copy.deepcopy(water_input)
    bad["model"]["spin"] = {"use_spin": [True, False], "virtual_scale": 0.3, "scheme": "native"}
    with pytest.raises(ConfigError, match="not supported yet: model/spin/scheme"):
        deepmd.convert_dict(bad)
    # a composite model's key in a standard model is an error naming its model type, never ignored
    bad = copy.deepcopy(water_input)
    bad["model"]["tab_file"] = "table.xvg"
    with pytest.raises(ConfigError, match=r"input\.json: model\.tab_file: belongs to model/type \"pairtab\""):
        deepmd.convert_dict(bad, file="input.json")
    mixed = copy.deepcopy(water_input)
    mixed["training"]["training_data"]["batch_size"] = "mixed:4"
    assert deepmd.convert_dict(mixed)["data"]["train"]["batch_size"] == "mixed:4"


def test_unsupported_key_at_default_value_is_accepted(water_input):
    """out.json files list every key with its default; a default requests nothing."""
    water_input["training"]["mixed_precision"] = None
    water_input["training"]["warmup_steps"] = 0
    water_input["loss"]["start_pref_gf"] = 0.0
    water_input["learning_rate"]["smooth"] = False
    deepmd.convert_dict(water_input)


def test_missing_sections_and_bad_types(water_input, tmp_path):
    bad = copy.deepcopy(water_input)
    del bad["model"]["descriptor"]["type"]
    with pytest.raises(ConfigError, match=r"model\.descriptor: missing required key 'type'"):
        deepmd.convert_dict(bad)
    bad = copy.deepcopy(water_input)
    bad["model"]["descriptor"]["type"] = "se_e2_x"
    with pytest.raises(ConfigError, match=r"unknown type 'se_e2_x'.*did you mean 'se_e2_[ar]'"):
        deepmd.convert_dict(bad)
    bad = copy.deepcopy(water_input)
    bad["training"]["training_data"] = [1, 2]
    with pytest.raises(ConfigError, match=r"training\.training_data: expected a mapping, got list"):
        deepmd.convert_dict(bad)
    broken = tmp_path / "input.json"
    broken.write_text('{"model": {,}}')
    with pytest.raises(ConfigError, match=r"input\.json: invalid JSON at line 1"):
        deepmd.convert(broken)


def test_yaml_input_gives_the_same_config(tmp_path, water_input):
    import yaml

    (tmp_path / "input.yaml").write_text(yaml.safe_dump(water_input))
    (tmp_path / "input.json").write_text(json.dumps(water_input))
    assert deepmd.convert(tmp_path / "input.yaml") == deepmd.convert(tmp_path / "input.json")


def test_keys_doc_is_in_sync_with_the_table():
    doc = (REPO / "docs" / "deepmd_keys.md").read_text()
    assert deepmd.keys_markdown() in doc, "regenerate with: python -m mlpot.config.deepmd --keys-md"
    for title, keys in table.all_tables().items():
        for name in keys:
            assert f"| `{name}` |" in doc, f"{title}/{name} missing from docs/deepmd_keys.md"


def test_convert_command_writes_loadable_yaml(tmp_path, water_input, capsys):
    from mlpot.cli import main
    from mlpot.config import load_config

    source = tmp_path / "input.json"
    source.write_text(json.dumps(water_input))
    assert main(["convert", str(source), "-o", str(tmp_path / "native.yaml")]) == 0
    config = load_config(tmp_path / "native.yaml")
    assert config.model["descriptor"]["sel"] == [46, 92] and config.family == "deepmd"
    water_input["model"]["descriptor"]["rcutt"] = 6.0
    source.write_text(json.dumps(water_input))
    assert main(["convert", str(source)]) == 2
    assert "model/descriptor/rcutt: unknown key (did you mean 'rcut'?)" in capsys.readouterr().err


def test_example_input_json_matches_native_example():
    """examples/cuau_emt/input.json (DeePMD style) and config.yaml (native) describe the same model."""
    import yaml

    native = deepmd.convert(REPO / "examples" / "cuau_emt" / "input.json")
    reference = yaml.safe_load((REPO / "examples" / "cuau_emt" / "config.yaml").read_text())
    fitting = dict(native["model"]["fitting_net"])
    assert fitting.pop("type") == "ener"
    assert native["model"]["descriptor"] == reference["model"]["descriptor"]
    assert fitting == reference["model"]["fitting_net"]
    assert native["lr_schedule"]["start_lr"] == reference["lr_schedule"]["start_lr"]
    assert native["training"]["numb_steps"] == reference["training"]["numb_steps"]
    assert [Path(p).name for p in native["data"]["train"]["paths"]] == ["train.extxyz"]


def test_registered_composite_model_types_pass_through(water_input):
    """frozen/pairtab/linear_ener models are registered by the models layer, which checks their keys."""
    water_input["model"] = {"type": "frozen", "model_file": "graph.pt", "_comment": "x"}
    assert deepmd.convert_dict(water_input)["model"] == {"type": "frozen", "model_file": "graph.pt"}
    water_input["model"] = {"type": "zbl"}
    with pytest.raises(ConfigError, match="not supported yet: model/type=zbl"):
        deepmd.convert_dict(water_input)


def test_mixed_precision_profiling_and_smooth_lr_map_to_native(water_input):
    water_input["training"]["mixed_precision"] = {"output_prec": "float32", "compute_prec": "float16"}
    water_input["training"]["profiling"] = True
    water_input["learning_rate"]["smooth"] = True
    native = deepmd.convert_dict(water_input)
    assert native["dtype"] == "float32" and native["training"]["compute_dtype"] == "float16"
    assert native["model"]["descriptor"]["precision"] == native["model"]["fitting_net"]["precision"] == "float32"
    assert native["logging"]["profile_file"] == "timeline.json"
    assert native["lr_schedule"]["smooth"] is True
    for bad, key in (({"output_prec": "float64", "compute_prec": "float16"}, "output_prec"),
                     ({"output_prec": "float32", "compute_prec": "int8"}, "compute_prec"),
                     ({"compute_prec": "float16", "output": 1}, "output")):
        water_input["training"]["mixed_precision"] = bad
        with pytest.raises(ConfigError, match=rf"training\.mixed_precision\.{key}"):
            deepmd.convert_dict(water_input, file="input.json")
