"""mace_run_train options -> native config (mlpot.config.mace): every mapping, the errors pinned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mlpot.config import validate_config
from mlpot.config._mace_options import MACE_OPTIONS
from mlpot.config.mace import MaceFrontEnd, is_mace_config, options_markdown, read_options
from mlpot.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "mace_models.md"


def front(tmp_path, argv=(), **options):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "run", "train_file": "train.xyz", **options}))
    return MaceFrontEnd.from_sources(path, argv)


def native(tmp_path, argv=(), **options):
    return front(tmp_path, argv, **options).to_native()


def test_defaults_are_mace_run_train_defaults(tmp_path):
    config = native(tmp_path)
    model = config["model"]
    # --model MACE: a ScaleShiftMACE with zero shift and a non-residual first interaction
    assert model["model"] == "ScaleShiftMACE" and model["atomic_inter_shift"] == 0.0
    assert model["interaction_first"] == "RealAgnosticInteractionBlock"
    assert model["interaction"] == "RealAgnosticResidualInteractionBlock"
    assert model["scaling"] == "rms_forces_scaling" and "avg_num_neighbors" not in model and "hidden_irreps" not in model
    assert (model["r_max"], model["max_ell"], model["correlation"], model["radial_MLP"]) == (5.0, 3, 3, [64, 64, 64])
    assert config["seed"] == 123 and config["dtype"] == "float64"
    train = config["data"]["train"]
    assert train["batch_size"] == 10 and train["drop_last"] and train["isolated_atoms"] == "exclude"
    mapped = {name: key for name, key in train["key_map"].items() if key is not None}
    assert mapped == {"REF_energy": "energy", "REF_forces": "forces", "REF_stress": "stress", "REF_virials": "virial"}
    assert train["key_map"]["energy"] is None and train["key_map"]["AIMS_forces"] is None  # only the *_key names
    assert config["data"]["valid_fraction"] == 0.1 and config["data"]["split_seed"] == 123
    assert config["data"]["valid"]["paths"] == [] and config["data"]["valid"]["batch_size"] == 10
    assert config["loss"]["terms"] == {"energy_per_atom": 1.0, "forces": 100.0}
    assert config["lr_schedule"] == {"type": "plateau", "factor": 0.8, "patience": 50}
    assert config["training"] == {"numb_epochs": 2048, "valid_epochs": 1, "patience": 2048, "clip_grad_norm": 10.0,
                                  "change_bias_after_training": False}
    optimizer = config["optimizer"]
    assert optimizer["name"] == "adam" and optimizer["kwargs"] == {"amsgrad": True} and optimizer["betas"] == [0.9, 0.999]
    decay = {group["name"]: group["weight_decay"] for group in optimizer["groups"]}
    assert decay == {"embedding": 0.0, "interactions_decay": 5e-7, "interactions_no_decay": 0.0, "products": 5e-7,
                     "readouts": 0.0}
    assert "ema" not in config and "train_schedule" not in config
    assert config["checkpoint"] == {"dir": "checkpoints", "prefix": "run_run-123"}


def test_model_options(tmp_path):
    model = native(tmp_path, model="ScaleShiftMACE", hidden_irreps="32x0e + 32x1o", E0s="{1: -13.6, 8: -2041.8}",
                   atomic_numbers="[1, 8]", compute_avg_num_neighbors=False, avg_num_neighbors=20.5,
                   radial_MLP="[16, 16]", scaling="std_scaling", pair_repulsion=True, distance_transform="Agnesi")["model"]
    assert model["interaction_first"] == "RealAgnosticResidualInteractionBlock" and "atomic_inter_shift" not in model
    assert model["E0s"] == {1: -13.6, 8: -2041.8} and model["atomic_numbers"] == [1, 8]
    assert model["avg_num_neighbors"] == 20.5 and model["radial_MLP"] == [16, 16] and model["scaling"] == "std_scaling"
    assert model["pair_repulsion"] is True and model["distance_transform"] == "Agnesi"
    assert native(tmp_path, E0s="Average")["model"]["E0s"] == "average"
    assert native(tmp_path, std=2.0, mean=0.5, model="ScaleShiftMACE")["model"]["atomic_inter_shift"] == 0.5
    assert native(tmp_path, std=2.0, mean=0.5)["model"]["atomic_inter_shift"] == 0.0  # --model MACE: no shift


@pytest.mark.parametrize("loss, terms", [
    ("weighted", {"energy_per_atom": 2.0, "forces": 50.0}),
    ("ef", {"energy_per_atom": 1.0, "forces": 1.0}),  # mace_run_train's fall-through: weights 1, 1
    ("forces_only", {"forces": 50.0}),
    ("stress", {"energy_per_atom": 2.0, "forces": 50.0, "stress": 3.0}),
    ("virials", {"energy_per_atom": 2.0, "forces": 50.0, "virial_per_atom": 4.0}),
    ("huber", {"energy_per_atom": {"weight": 2.0, "function": "huber", "huber_delta": 0.05},
               "forces": {"weight": 50.0, "function": "huber", "huber_delta": 0.05},
               "stress": {"weight": 3.0, "function": "huber", "huber_delta": 0.05}}),
    ("l1l2energyforces", {"energy_per_atom": {"weight": 2.0, "function": "mae"},
                          "forces": {"weight": 50.0, "function": "mae", "vector_norm": True}}),
])
def test_loss_options(tmp_path, loss, terms):
    config = native(tmp_path, loss=loss, energy_weight=2.0, forces_weight=50.0, stress_weight=3.0, virials_weight=4.0,
                    huber_delta=0.05)
    assert config["loss"]["terms"] == terms


def test_training_options(tmp_path):
    config = native(tmp_path, lr=0.005, weight_decay=1e-6, optimizer="adamw", beta=0.8, batch_size=4,
                    valid_batch_size=7, valid_file="valid.xyz", max_num_epochs=30, eval_interval=2, patience=5,
                    clip_grad="None", ema=True, ema_decay=0.995, scheduler="ExponentialLR", lr_scheduler_gamma=0.99,
                    default_dtype="float32", seed=7, keep_isolated_atoms=True, work_dir="out",
                    lr_params_factors='{"readouts_lr_factor": 0.5}', energy_key="E", forces_key="F")
    assert config["optimizer"]["name"] == "adamw" and config["optimizer"]["betas"] == [0.8, 0.999]
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in config["optimizer"]["groups"]}
    assert lrs["readouts"] == (0.0025, 0.0) and lrs["products"] == (0.005, 1e-6)
    assert config["lr_schedule"] == {"type": "exp", "per_epoch": True, "decay_steps": 1, "decay_rate": 0.99,
                                     "stop_lr": 0.0}
    assert config["training"]["numb_epochs"] == 30 and config["training"]["valid_epochs"] == 2
    assert config["training"]["patience"] == 5 and config["training"]["clip_grad_norm"] is None
    assert config["ema"] == {"decay": 0.995, "warmup": True}
    data = config["data"]
    assert data["valid"]["paths"] == ["valid.xyz"] and "valid_fraction" not in data and data["valid"]["batch_size"] == 7
    assert data["train"]["isolated_atoms"] == "keep" and data["train"]["key_map"]["E"] == "energy"
    assert config["dtype"] == "float32" and config["seed"] == 7 and config["output_dir"] == "out"


def test_stage_two(tmp_path):
    config = native(tmp_path, swa=True, max_num_epochs=8, swa_lr=1e-4, swa_energy_weight=500.0)
    one, two = config["train_schedule"]
    assert (one["start"], one["end"], two["start"], two["end"]) == (0, 5, 6, 7)  # max(1, 8 // 4 * 3)
    assert two["lr"] == 1e-4 and two["loss"] == {"energy_per_atom": 500.0, "forces": 100.0}
    assert one["loss"] == config["loss"]["terms"]
    staged = native(tmp_path, argv=["--stage_two", "--start_stage_two", "3"], max_num_epochs=8)["train_schedule"]
    assert staged[1]["start"] == 3
    assert "train_schedule" not in native(tmp_path, swa=True, start_swa=8, max_num_epochs=8)  # never reached
    with pytest.raises(ConfigError, match="swa: stage two .* forces_only"):
        native(tmp_path, swa=True, loss="forces_only")


def test_command_line_overrides_the_file(tmp_path):
    config = native(tmp_path, ["--r_max", "4.5", "--ema", "--lr=0.002", "--hidden_irreps", "8x0e + 8x1o",
                               "--correlation", "2"], r_max=6.0, lr=0.1)
    assert config["model"]["r_max"] == 4.5 and config["optimizer"]["lr"] == 0.002 and "ema" in config
    assert config["model"]["hidden_irreps"] == "8x0e + 8x1o" and config["model"]["correlation"] == 2
    options, given = read_options(None, ["--name", "x", "--train_file", "t.xyz", "--swa"])
    assert options["swa"] is True and options["seed"] == 123 and given == {"name", "train_file", "swa"}


def test_one_head_spec(tmp_path):
    config = native(tmp_path, heads={"DFT": {"train_file": "h.xyz", "E0s": "average", "valid_fraction": 0.2,
                                             "info_keys": {"energy": "AIMS_energy"}, "arrays_keys": {"forces": "AIMS_f"}}})
    assert config["data"]["train"]["paths"] == ["h.xyz"] and config["data"]["valid_fraction"] == 0.2
    assert config["data"]["train"]["key_map"]["AIMS_energy"] == "energy" and config["model"]["E0s"] == "average"
    assert config["data"]["train"]["key_map"]["AIMS_f"] == "forces"


@pytest.mark.parametrize("options, argv, message", [
    (dict(r_maxx=4.0), (), r"config.yaml: r_maxx: unknown mace_run_train option \(did you mean r_max\?\)"),
    ({}, ["--hiden_irreps", "4x0e"], r"--hiden_irreps: unknown mace_run_train option \(did you mean --hidden_irreps\?\)"),
    ({}, ["--lbfgs"], r"lbfgs: not supported yet: lbfgs"),
    (dict(use_so3=True), (), r"use_so3: not supported yet: use_so3"),
    (dict(distributed=True), (), r"not supported yet: distributed"),
    (dict(config_type_weights='{"Default": 1.0, "MD": 2.0}'), (), r"not supported yet: config_type_weights"),
    (dict(loss="universal"), (), r"loss: not supported yet: loss universal"),
    (dict(loss="weigthed"), (), r"loss: unknown loss 'weigthed' \(did you mean 'weighted'\?\)"),
    (dict(model="BOTNet"), (), r"model: not supported yet: model BOTNet"),
    (dict(optimizer="schedulefree"), (), r"optimizer: not supported yet: optimizer schedulefree"),
    (dict(scheduler="Cosine"), (), r"scheduler: unknown scheduler 'Cosine'"),
    (dict(train_file="data.h5"), (), r"train_file: not supported yet: train_file data.h5"),
    (dict(heads={"a": {}, "b": {}}), (), r"heads: not supported yet: heads with several heads"),
    (dict(heads={"a": {"train_fil": "x"}}), (), r"heads.a.train_fil: unknown head key \(did you mean 'train_file'\?\)"),
    (dict(mean=0.3), (), r"mean: mean needs std"),
    (dict(compute_forces=False), (), r"not supported yet: compute_forces false"),
    (dict(lr_params_factors='{"readouts_lr_factor": 0.0}'), (), r"not supported yet: lr_params_factors of 0"),
    (dict(batch_size="ten"), (), r"batch_size: invalid value 'ten'"),
    (dict(pt_train_file="replay.xyz"), (), r"not supported yet: pt_train_file"),
])
def test_errors_name_the_option(tmp_path, options, argv, message):
    with pytest.raises(ConfigError, match=message):
        native(tmp_path, argv, **options)


def test_name_is_required(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_file: t.xyz\n")
    with pytest.raises(ConfigError, match="c.yaml: name: missing required option: name"):
        MaceFrontEnd.from_sources(path)


def test_run_options(tmp_path):
    run = front(tmp_path, restart_latest=True, test_file="test.xyz", model_dir="models").run_options()
    assert run == {"restart": "latest", "finetune": None, "test_files": ["test.xyz"],
                   "model_file": str(Path("models") / "run.pt")}
    with pytest.raises(ConfigError, match=r"foundation_model: not supported yet: foundation model 'medium'"):
        front(tmp_path, foundation_model="medium").run_options()
    (tmp_path / "f.model").write_bytes(b"")
    with pytest.raises(ConfigError, match="not supported yet: foundation_filter_elements false"):
        front(tmp_path, foundation_model=str(tmp_path / "f.model"), foundation_filter_elements=False).run_options()


def test_native_config_validates_and_detection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.xyz").write_text("")
    config = validate_config(native(tmp_path, swa=True, ema=True, max_num_epochs=4), base_dir=tmp_path)
    assert config.model["type"] == "mace" and config.train_schedule[1].lr == 1e-3
    assert is_mace_config(tmp_path / "config.yaml")
    (tmp_path / "native.yaml").write_text(yaml.safe_dump({"model": {"type": "mace"}, "training": {"numb_steps": 1}}))
    assert not is_mace_config(tmp_path / "native.yaml")


def test_every_option_is_documented():
    assert options_markdown() in DOCS.read_text(), "regenerate: python -m mlpot.config.mace > table in docs"
    assert len(MACE_OPTIONS) > 160 and np.all([record.note or record.status == "supported"
                                               for record in MACE_OPTIONS.values()])
