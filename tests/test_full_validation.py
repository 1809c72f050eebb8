"""Full validation (DeePMD-kit ``validating``): dp-test metrics on the whole validation set, val.log,
best checkpoints (names, ranks, pruning, reconcile), exact restart, start variants, the DeePMD
front-end and its errors.

Native runs: a tiny se_e2_a on 16-atom EMT CuAu frames generated here (periodic, with energy, forces
and stress labels). DeePMD run: the water input with a tiny network on a few frames of
deepmd_water (shared_data fixture).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlpot.calculators.evaluate import evaluate_frames, system_errors, weighted_average
from mlpot.calculators.export import load_model
from mlpot.cli import main
from mlpot.config import deepmd
from mlpot.config.loader import validate_config
from mlpot.training.schema import FullValidationConfig
from mlpot.data import keys as K
from mlpot.data import read_systems
from mlpot.errors import ConfigError
from mlpot.models.derivatives import compute_derivatives
from mlpot.training.checkpoint import load_checkpoint
from mlpot.training.full_validation import FullValidation, ValidationFlow, format_number, validation_errors
from mlpot.training.trainer import Trainer
from test_deepmd_multitask import _subset  # a deepmd/npy system of a few frames of a shared system

COLUMNS_S = ["step", "E_MAE(meV/atom)", "E_RMSE(meV/atom)", "F_MAE(meV/Å)", "F_RMSE(meV/Å)",
             "S_MAE(meV/Å³)", "S_RMSE(meV/Å³)"]


@pytest.fixture(scope="module")
def emt(tmp_path_factory):
    """8 training and 5 validation frames of 16-atom CuAu with EMT energy, forces and stress."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    folder = tmp_path_factory.mktemp("emt")
    rng = np.random.default_rng(0)
    frames = []
    for index in range(13):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 2)
        atoms.symbols[rng.choice(len(atoms), 3, replace=False)] = "Au"
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        atoms.set_cell(atoms.cell * (1 + 0.01 * index), scale_atoms=True)
        atoms.calc = EMT()
        atoms.get_stress()
        frames.append(atoms)
    write(folder / "train.extxyz", frames[:8])
    write(folder / "valid.extxyz", frames[8:])
    return folder


def native(emt: Path, out: Path, steps: int = 12, **full_validation) -> dict:
    config = {
        "seed": 3, "dtype": "float64", "output_dir": str(out),
        "model": {"type_map": ["Cu", "Au"],
                  "descriptor": {"type": "se_e2_a", "sel": [40, 40], "rcut": 4.0, "rcut_smth": 1.0,
                                 "neuron": [4, 8], "axis_neuron": 2, "seed": 1},
                  "fitting_net": {"neuron": [8, 8], "seed": 1}},
        "data": {"train": {"paths": [str(emt / "train.extxyz")], "batch_size": 2},
                 "valid": {"paths": [str(emt / "valid.extxyz")], "batch_size": 2}},
        "lr_schedule": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 5},
        "loss": {"type": "ener", "terms": {"energy": {"start_pref": 0.02, "limit_pref": 1.0},
                                           "forces": {"start_pref": 100.0, "limit_pref": 1.0},
                                           "stress": {"start_pref": 1.0, "limit_pref": 1.0}}},
        "training": {"numb_steps": steps, "change_bias_after_training": False},
        "logging": {"disp_freq": 100, "progress_bar": False, "disp_training": False, "time_training": False},
        "checkpoint": {"every": 4, "keep": 10},
        "full_validation": {"start": 0, "freq": 4, **full_validation},
    }
    return config


def train(config: dict, restart=None) -> Trainer:
    trainer = Trainer(validate_config(config), restart=restart, progress=False)
    trainer.run()
    return trainer


def val_rows(path: Path):
    """(header fields, {step: [values]}, [saved-best lines]) of a val.log."""
    lines = path.read_text().splitlines()
    rows = {int(line.split()[0]): [float(v) for v in line.split()[1:]] for line in lines if not line.startswith("#")}
    return lines[0].split()[1:], rows, [line for line in lines if line.startswith("# saved best checkpoint:")]


def test_format_number_five_significant_digits():
    cases = {1234.5678: "1234.6", 0.000123456: "0.00012346", 123456.7: "123460", -2.5: "-2.5000",
             0.0: "0", 1e-20: "1.0000e-20", 99999.7: "100000", float("nan"): "nan", float("inf"): "inf"}
    for value, text in cases.items():
        assert format_number(value) == text, value


def test_metrics_equal_numpy_on_the_same_predictions(emt, tmp_path):
    trainer = Trainer(validate_config(native(emt, tmp_path / "out", steps=2)), progress=False)
    data = trainer.task_data[""]
    # one frame per chunk (16 atoms each) against one batch of every frame computed here
    errors = validation_errors(trainer.model, data, chunk_atoms=20)
    batch = data.valid_batch(list(range(len(data.valid))))
    prediction = compute_derivatives(trainer.model.eval(), batch, forces=True, virial=True)
    n_atoms = batch[K.N_ATOMS].numpy()
    volume = np.abs(np.linalg.det(batch[K.CELL].numpy()))
    d_energy = (prediction[K.ENERGY].detach().numpy() - batch[K.ENERGY].numpy()) / n_atoms
    d_forces = prediction[K.FORCES].detach().numpy() - batch[K.FORCES].numpy()
    virial = prediction[K.VIRIAL].detach().numpy()
    reference_virial = -batch[K.STRESS].numpy() * volume[:, None, None]
    d_virial = (virial - reference_virial).reshape(-1, 9) / n_atoms[:, None]
    d_stress = (-virial / volume[:, None, None] - batch[K.STRESS].numpy()).reshape(-1, 9)
    expected = {
        "energy_mae_per_atom": np.mean(np.abs(d_energy)), "energy_rmse_per_atom": np.sqrt(np.mean(d_energy ** 2)),
        "forces_mae": np.mean(np.abs(d_forces)), "forces_rmse": np.sqrt(np.mean(d_forces ** 2)),
        "virial_mae_per_atom": np.mean(np.abs(d_virial)), "virial_rmse_per_atom": np.sqrt(np.mean(d_virial ** 2)),
        "stress_mae": np.mean(np.abs(d_stress)), "stress_rmse": np.sqrt(np.mean(d_stress ** 2)),
    }
    for name, value in expected.items():
        assert errors[name] == pytest.approx(value, rel=1e-10), name
    assert errors["forces_rmse"] > 0.01 and errors["stress_rmse"] > 1e-4  # an untrained model has errors


def test_val_log_layout_rows_and_best_checkpoints(emt, tmp_path):
    out = tmp_path / "out"
    trainer = train(native(emt, out, steps=12, metric="v:rmse", max_best=2))
    header, rows, saved = val_rows(out / "val.log")
    assert header == ["step", "E_MAE(meV/atom)", "E_RMSE(meV/atom)", "F_MAE(meV/Å)", "F_RMSE(meV/Å)",
                      "V_MAE(meV/atom)", "V_RMSE(meV/atom)"]
    lines = (out / "val.log").read_text().splitlines()
    assert lines[0].startswith("# step ") and lines[1].startswith("# ")
    # "# " + "step" / "  " + the step centred in 4 characters; each value centred under its label
    assert lines[2].startswith("   4   ")
    for label in header[1:]:
        start = lines[0].index(label)
        assert lines[2][start:start + len(label)].strip() == lines[2].split()[header.index(label)]
    assert sorted(rows) == [4, 8, 12]
    # the last row is the error of the final weights, in meV units, 5 significant digits
    final = validation_errors(trainer.model, trainer.task_data[""])
    names = ["energy_mae_per_atom", "energy_rmse_per_atom", "forces_mae", "forces_rmse",
             "virial_mae_per_atom", "virial_rmse_per_atom"]
    assert lines[-1].split()[1:] == [format_number(1000 * final[n]) for n in names] or \
        lines[-2].split()[1:] == [format_number(1000 * final[n]) for n in names]
    # best checkpoints: the two lowest V:RMSE, rank 1 the lowest, each holding the weights it was ranked by
    ranked = sorted((values[5], step) for step, values in rows.items())[:2]
    files = sorted(p.name for p in out.glob("best*"))
    assert files == sorted(f"best.ckpt-{step}.t-{rank}.pt" for rank, (_, step) in enumerate(ranked, start=1))
    for rank, (value, step) in enumerate(ranked, start=1):
        path = out / f"best.ckpt-{step}.t-{rank}.pt"
        state = load_checkpoint(path)
        assert state["step"] == step and state["ema_state_dict"] is None
        model = load_model(path)
        data = SimpleNamespace(valid=trainer.task_data[""].valid, valid_batch=trainer.task_data[""].valid_batch)
        assert format_number(1000 * validation_errors(model, data)["virial_rmse_per_atom"]) == format_number(value)
    # each "saved" line follows its row and names the file it wrote then, with the metric
    for line in saved:
        match = re.fullmatch(r"# saved best checkpoint: best\.ckpt-(\d+)\.t-(\d)\.pt \(V:RMSE = (\S+) meV/atom\)", line)
        assert match and float(match.group(3)) == rows[int(match.group(1))][5]
    # the records travel in the training checkpoint
    records = load_checkpoint(out / "model.ckpt-12.pt")["full_validation"]["live"]
    assert records["metric"] == "V:RMSE" and [s for _, s in records["records"]] == [s for _, s in ranked]


def test_best_records_rank_rename_and_prune(tmp_path):
    config = FullValidationConfig(max_best=3)
    flow = ValidationFlow("live", config, tmp_path, tmp_path / "best", total_steps=100)
    (tmp_path / "best").mkdir()
    listing = []
    for step, value in ((10, 5.0), (20, 3.0), (30, 4.0), (40, 9.0), (50, 1.0), (60, 3.0)):
        path = flow.offer(value, step)
        if path is not None:
            path.write_text(str(step))
            flow.reconcile()
        listing.append(sorted(p.name for p in (tmp_path / "best").iterdir()))
    assert listing[0] == ["best.ckpt-10.t-1.pt"]
    assert listing[1] == ["best.ckpt-10.t-2.pt", "best.ckpt-20.t-1.pt"]
    assert listing[2] == ["best.ckpt-10.t-3.pt", "best.ckpt-20.t-1.pt", "best.ckpt-30.t-2.pt"]
    assert listing[3] == listing[2]  # 9.0 is not in the top 3: nothing written
    assert listing[4] == ["best.ckpt-20.t-2.pt", "best.ckpt-30.t-3.pt", "best.ckpt-50.t-1.pt"]
    # a tie ranks the earlier step first: 60 (3.0) comes after 20 (3.0) and pushes 30 out
    assert listing[5] == ["best.ckpt-20.t-2.pt", "best.ckpt-50.t-1.pt", "best.ckpt-60.t-3.pt"]
    assert (tmp_path / "best" / "best.ckpt-20.t-2.pt").read_text() == "20"  # renamed, not rewritten
    # restart from a state that only knew steps 10 and 20: files of later steps go, ranks follow
    (tmp_path / "best" / "best.ckpt-10.t-3.pt").write_text("10")
    (tmp_path / "best" / "unrelated.pt").write_text("x")
    restarted = ValidationFlow("live", config, tmp_path, tmp_path / "best", total_steps=100)
    restarted.start({"metric": "E:MAE", "records": [[5.0, 10], [3.0, 20]]}, restart=True, step=25)
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [
        "best.ckpt-10.t-2.pt", "best.ckpt-20.t-1.pt", "unrelated.pt"]
    # a fresh run (or a changed metric) starts with no records and removes the managed files
    fresh = ValidationFlow("live", FullValidationConfig(metric="F:MAE"), tmp_path, tmp_path / "best", total_steps=100)
    fresh.start({"metric": "E:MAE", "records": [[5.0, 10]]}, restart=True, step=25)
    assert fresh.records == [] and sorted(p.name for p in (tmp_path / "best").iterdir()) == ["unrelated.pt"]


def test_restart_from_a_mid_run_checkpoint_gives_the_same_log_and_files(emt, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train(native(emt, reference, steps=16, metric="S:RMSE", max_best=2))
    config = native(emt, resumed, steps=16, metric="S:RMSE", max_best=2)
    train(config)  # a full run, then resumed from its step-8 checkpoint: the log is cut back and rewritten
    train(config, restart=str(resumed / "model.ckpt-8.pt"))
    assert (resumed / "val.log").read_text() == (reference / "val.log").read_text()
    assert sorted(p.name for p in resumed.glob("best*")) == sorted(p.name for p in reference.glob("best*"))
    header, rows, _ = val_rows(reference / "val.log")
    assert header == COLUMNS_S and sorted(rows) == [4, 8, 12, 16]


@pytest.mark.parametrize("start, steps, expected", [
    (0, 12, [4, 8, 12]), (0.5, 12, [6, 10]), (7, 12, [7, 11]), (1, 12, []), (13, 12, []), (0.25, 12, [3, 7, 11])])
def test_full_val_start_variants(start, steps, expected):
    config = FullValidationConfig(start=start, freq=4)
    data = SimpleNamespace(valid=SimpleNamespace(frames=[{K.POSITIONS: np.zeros((1, 3)), K.ENERGY: 0.0}]))
    validation = FullValidation(config, model=None, data=data, ema=None, total_steps=steps, out=Path("."),
                                best_dir=Path("."))
    assert [step for step in range(1, steps + 1) if validation.due(step)] == expected
    assert (validation.flows == []) == (expected == [])


def test_start_ratio_run_writes_rows_from_there(emt, tmp_path):
    out = tmp_path / "out"
    train(native(emt, out, steps=10, start=0.5, freq=3, save_best=False))
    _, rows, saved = val_rows(out / "val.log")
    assert sorted(rows) == [5, 8] and saved == [] and not list(out.glob("best*"))


def test_ema_flow_logs_and_saves_ema_weights(emt, tmp_path):
    out = tmp_path / "out"
    config = native(emt, out, steps=8, ema=True, live=False, best_dir="best", max_best=2)
    config["ema"] = {"decay": 0.9}
    trainer = train(config)
    assert not (out / "val.log").exists()
    _, rows, _ = val_rows(out / "val_ema.log")
    assert sorted(rows) == [4, 8]
    rank = 1 if (rows[8][0], 8) < (rows[4][0], 4) else 2
    assert sorted(p.name for p in (out / "best").iterdir()) == sorted(
        [f"best_ema.ckpt-8.t-{rank}.pt", f"best_ema.ckpt-4.t-{3 - rank}.pt"])
    state = load_checkpoint(out / "best" / f"best_ema.ckpt-8.t-{rank}.pt")
    assert "optimizer" not in state and "ema" not in state  # weights only, as DeePMD-kit
    final_ema = trainer.state_dict()["ema_state_dict"]  # the EMA weights at the end of the run (step 8)
    live = trainer.model.state_dict()
    assert all(torch.equal(state["model_state_dict"][k], final_ema[k]) for k in final_ema)
    assert any(not torch.equal(final_ema[k], live[k]) for k in live)
    assert load_checkpoint(out / "model.ckpt-8.pt")["full_validation"]["ema"]["records"]


# ---- DeePMD-kit input ---------------------------------------------------------------------------


def water_input(train_systems, valid_systems, **validating) -> dict:
    return {
        "model": {"type_map": ["O", "H"],
                  "descriptor": {"type": "se_e2_a", "sel": [10, 20], "rcut": 3.0, "rcut_smth": 0.5,
                                 "neuron": [4, 8], "axis_neuron": 2, "seed": 1},
                  "fitting_net": {"neuron": [8], "seed": 2}},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 2},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1},
        "training": {"training_data": {"systems": train_systems, "batch_size": 1},
                     "validation_data": {"systems": valid_systems, "batch_size": 1},
                     "numb_steps": 4, "disp_freq": 2, "save_freq": 2, "seed": 1},
        "validating": validating,
    }


def test_deepmd_input_with_validating_runs(tmp_path, shared_data, monkeypatch, capsys):
    water = shared_data("deepmd_water")
    train_sys = _subset(water / "data_0", tmp_path / "train", [0, 1, 2])
    valid = [_subset(water / "data_3", tmp_path / "valid_a", [0, 1]), _subset(water / "data_1", tmp_path / "valid_b", [4])]
    config = water_input([train_sys], valid, full_validation=True, validation_freq=2, full_val_start=0,
                         validation_metric="F:RMSE", max_best_ckpt=2, save_best_dir="best")
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    assert "saved best checkpoint best/best.ckpt-2.t-1.pt (F:RMSE = " in capsys.readouterr().out
    header, rows, saved = val_rows(tmp_path / "val.log")
    assert header == COLUMNS_S and sorted(rows) == [2, 4]
    assert all(np.isnan(values[4:]).all() for values in rows.values())  # water has no virial: S is nan
    assert len(saved) >= 1 and len(list((tmp_path / "best").glob("best.ckpt-*.t-*.pt"))) == 2
    # the row of each best checkpoint is what `mlpot test` computes with its weights on both systems
    for path in (tmp_path / "best").glob("best.ckpt-*.pt"):
        step = int(re.search(r"-(\d+)\.t-", path.name).group(1))
        model = load_model(path)
        results = [evaluate_frames(model, frames, name=str(i)) for i, frames in enumerate(
            read_systems(valid, None, type_map=["O", "H"]))]
        errors = weighted_average([system_errors(r) for r in results])
        expected = [errors[n][0] * 1000 for n in ("energy_mae_per_atom", "energy_rmse_per_atom", "forces_mae",
                                                   "forces_rmse")]
        assert rows[step][:4] == pytest.approx(expected, rel=2e-4)  # 5 significant digits in the log


def _convert(config, tmp_path):
    return deepmd.convert_dict(config, base_dir=tmp_path, file="input.json")


def test_deepmd_validating_converts_with_defaults(tmp_path):
    config = water_input(["a"], ["b"], full_validation=True, compiled_infer=False, tf32_infer=False,
                         amp_infer=False, _comment="x")
    config["training"]["save_ckpt"] = "ckpt/model.ckpt"
    section = _convert(config, tmp_path)["full_validation"]
    assert section == {"live": True, "ema": False, "freq": 5000, "start": 0.5, "metric": "E:MAE", "save_best": True,
                       "max_best": 1, "best_dir": "ckpt", "log_file": "val.log"}
    off = [water_input(["a"], ["b"]), water_input(["a"], ["b"], full_validation=True, full_val_start=1,
                                                  validation_metric="V:MAE")]
    for config in off:  # off, or disabled by full_val_start 1 (then no cross-section check, as DeePMD-kit)
        assert "full_validation" not in _convert(config, tmp_path)


@pytest.mark.parametrize("validating, message", [
    ({"validation_freq": 0}, r"validating\.validation_freq: must be an integer greater than 0, got 0"),
    ({"max_best_ckpt": -1}, r"validating\.max_best_ckpt: must be an integer greater than 0"),
    ({"full_val_start": -0.5}, r"validating\.full_val_start: must be a number greater than or equal to 0"),
    ({"full_validation": "yes"}, r"validating\.full_validation: expected true or false"),
    ({"validation_metric": "E:MSE"}, r"validating\.validation_metric: must be one of E:MAE, E:RMSE"),
    ({"validation_metric": "FM:MAE"}, r"validating\.validation_metric: not supported yet: validating/validation_metric"),
    ({"compiled_infer": True}, r"validating\.compiled_infer: not supported yet: validating/compiled_infer"),
    ({"tf32_infer": True}, r"validating\.tf32_infer: not supported yet: validating/tf32_infer"),
    ({"amp_infer": True}, r"validating\.amp_infer: not supported yet: validating/amp_infer"),
    ({"validation_frq": 10}, r"validating\.validation_frq: unknown key \(did you mean 'validation_freq'\?\)"),
    ({"full_validation": True, "validation_metric": "s:rmse"},
     r"validating\.validation_metric: S:RMSE needs loss/start_pref_v and loss/limit_pref_v both non-zero"),
    ({"ema_full_validation": True}, r"validating\.ema_full_validation: needs training/enable_ema: true"),
])
def test_deepmd_validating_errors_name_the_key(tmp_path, validating, message):
    with pytest.raises(ConfigError, match=r"input\.json: " + message):
        _convert(water_input(["a"], ["b"], **validating), tmp_path)


def test_deepmd_validating_cross_section_errors(tmp_path):
    config = water_input(["a"], ["b"], full_validation=True)
    del config["training"]["validation_data"]
    with pytest.raises(ConfigError, match=r"validating\.full_validation: full validation needs training/validation_data"):
        _convert(config, tmp_path)
    config = water_input(["a"], ["b"], full_validation=True)
    config["model"]["fitting_net"] = {"type": "dipole", "neuron": [8], "sel_type": [0]}
    config["loss"] = {"type": "tensor", "pref": 1.0, "pref_atomic": 0.0}
    with pytest.raises(ConfigError, match=r"validating\.full_validation: full validation needs energy training"):
        _convert(config, tmp_path)
    config = water_input(["a"], ["b"], full_validation=True)
    config["model"] = {"shared_dict": {}, "model_dict": {"a": copy.deepcopy(config["model"])}}
    config["loss_dict"] = {"a": config.pop("loss")}
    config["training"]["data_dict"] = {"a": {"training_data": config["training"].pop("training_data"),
                                             "validation_data": config["training"].pop("validation_data")}}
    with pytest.raises(ConfigError, match=r"validating\.full_validation: full validation supports single-task"):
        _convert(config, tmp_path)


def test_native_full_validation_errors(emt, tmp_path):
    cases = [
        ({"metric": "X:MAE"}, r"full_validation\.metric: expected one of E:MAE"),
        ({"freq": 0}, r"full_validation\.freq: Input should be greater than or equal to 1"),
        ({"ema": True}, r"full_validation\.ema needs the ema section"),
        ({"live": False}, r"live and ema are both false"),
        ({"metric": "V:MAE", "start": 0}, None),
        ({"bogus": 1}, r"full_validation\.bogus: unknown key"),
    ]
    for section, message in cases:
        config = native(emt, tmp_path / "out", **section)
        if message is None:  # V/S need a virial or stress term: without one it is an error
            del config["loss"]["terms"]["stress"]
            message = r"full_validation\.metric V:MAE needs a loss term with a non-zero prefactor on virial or stress"
        with pytest.raises(ConfigError, match=message):
            validate_config(config, file="config.yaml")
    config = native(emt, tmp_path / "out")
    del config["data"]["valid"]
    with pytest.raises(ConfigError, match=r"full_validation needs validation data \(data\.valid\)"):
        validate_config(config)
