"""DeePMD-kit multi-task training from input.json: both layouts, shared descriptor, task sampling,
per-task heads, freezing one head, exact resume, and errors naming the key path.

Data: a few frames of the water system data_0 copied into small deepmd/npy systems (tasks A and B
use different frames). Tiny networks (sel [10, 20] at rcut 3 Å, embedding [4, 8], fitting [8]).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.calculators.export import load_model
from mlpot.cli import main
from mlpot.config import deepmd
from mlpot.config.loader import validate_config
from mlpot.data import TaskSampler, task_probabilities
from mlpot.errors import CheckpointError, ConfigError
from mlpot.training.data_setup import build_training_data
from mlpot.training.trainer import Trainer

DESCRIPTOR = {"type": "se_e2_a", "sel": [10, 20], "rcut": 3.0, "rcut_smth": 0.5, "neuron": [4, 8],
              "axis_neuron": 2, "seed": 1}
ENER_LOSS = {"start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1}


def _subset(source: Path, target: Path, frames) -> str:
    """A deepmd/npy system holding ``frames`` of ``source``."""
    (target / "set.000").mkdir(parents=True)
    for name in ("type.raw", "type_map.raw"):
        (target / name).write_bytes((source / name).read_bytes())
    for name in ("box", "coord", "energy", "force"):
        np.save(target / "set.000" / f"{name}.npy", np.load(source / "set.000" / f"{name}.npy")[frames])
    return str(target)


@pytest.fixture
def systems(tmp_path, shared_data):
    source = shared_data("deepmd_water/data_0")
    return {"a": _subset(source, tmp_path / "sys_a", [0, 1, 2]), "b": _subset(source, tmp_path / "sys_b", [3, 4]),
            "valid": _subset(source, tmp_path / "sys_valid", [5])}


def pytorch_input(systems, steps=20) -> dict:
    """PyTorch layout: shared type_map and descriptor referenced by name."""
    return {
        "model": {
            "shared_dict": {"types": ["O", "H"], "my_descriptor": copy.deepcopy(DESCRIPTOR)},
            "model_dict": {
                "water_a": {"type_map": "types", "descriptor": "my_descriptor",
                            "fitting_net": {"neuron": [8], "seed": 2}},
                "water_b": {"type_map": "types", "descriptor": "my_descriptor:0",
                            "fitting_net": {"neuron": [8], "seed": 3}},
            },
        },
        "learning_rate": {"start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 10},
        "loss_dict": {"water_a": dict(ENER_LOSS), "water_b": dict(ENER_LOSS)},
        "training": {
            "model_prob": {"water_a": 0.7, "water_b": 0.3},
            "data_dict": {
                "water_a": {"training_data": {"systems": [systems["a"]], "batch_size": 1},
                            "validation_data": {"systems": [systems["valid"]], "batch_size": 1}},
                "water_b": {"training_data": {"systems": [systems["b"]], "batch_size": 1}},
            },
            "numb_steps": steps, "disp_freq": 10, "save_freq": 10, "seed": 1,
        },
    }


def tf_input(systems, steps=20) -> dict:
    """TF 2.x layout: one descriptor, fitting_net_dict, fitting_weight."""
    return {
        "model": {"type_map": ["O", "H"], "descriptor": copy.deepcopy(DESCRIPTOR),
                  "fitting_net_dict": {"water_a": {"neuron": [8], "seed": 2}, "water_b": {"neuron": [8], "seed": 3}}},
        "learning_rate_dict": {"water_a": {"start_lr": 1e-3, "decay_steps": 10},
                               "water_b": {"start_lr": 1e-3, "decay_steps": 10}},
        "loss_dict": {"water_a": dict(ENER_LOSS)},  # water_b: the default ener loss
        "training": {
            "fitting_weight": {"water_a": 1, "water_b": 3},
            "data_dict": {"water_a": {"training_data": {"systems": [systems["a"]], "batch_size": 1}},
                          "water_b": {"training_data": {"systems": [systems["b"]], "batch_size": 1}}},
            "numb_steps": steps, "disp_freq": 10, "save_freq": 10, "seed": 1,
        },
    }


def _native(config: dict, tmp_path: Path, name: str = "input.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return validate_config(deepmd.convert(path), file=str(path), base_dir=tmp_path)


def _energies(model, data, indices) -> torch.Tensor:
    return model(data.train_batch(indices))["energy"].detach()


# ---- end to end ----------------------------------------------------------------------------------


def test_pytorch_layout_trains_freezes_each_head_and_tests(systems, tmp_path, monkeypatch, capsys):
    (tmp_path / "input.json").write_text(json.dumps(pytorch_input(systems)))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    header = (tmp_path / "lcurve.out").read_text().splitlines()[0].split()
    # DeePMD-kit's multi-task columns: per task (model_dict order), sorted keys, val before trn
    assert header == ["#", "step",
                      "rmse_val_water_a", "rmse_trn_water_a", "rmse_e_val_water_a", "rmse_e_trn_water_a",
                      "rmse_f_val_water_a", "rmse_f_trn_water_a",
                      "rmse_trn_water_b", "rmse_e_trn_water_b", "rmse_f_trn_water_b", "lr"]
    rows = np.loadtxt(tmp_path / "lcurve.out")
    assert rows[:, 0].tolist() == [1, 10, 20] and np.isfinite(rows).all()
    assert 0.1 < rows[-1, 5] < 3.0 and 0.1 < rows[-1, 9] < 3.0  # force RMSE of both tasks near the label RMS
    for task in ("water_a", "water_b"):
        assert (tmp_path / f"model_{task}.pt").is_file()

    capsys.readouterr()
    assert main(["freeze", "-o", "frozen_b.pt", "--head", "water_b"]) == 0
    assert "head water_b" in capsys.readouterr().out
    assert main(["test", "-m", "frozen_b.pt", "-s", systems["b"]]) == 0
    assert re.search(r"^Force  RMSE\s+: \d\.\d{6}e[-+]\d\d eV", capsys.readouterr().out, re.M)
    assert main(["freeze", "-o", "x.pt"]) != 0
    assert "choose a head with --head (one of water_a, water_b)" in capsys.readouterr().err
    assert main(["freeze", "-o", "x.pt", "--head", "water_c"]) != 0
    assert "no head 'water_c' (heads: water_a, water_b)" in capsys.readouterr().err


def test_tf_layout_trains_with_fitting_weight_and_default_loss(systems, tmp_path, monkeypatch):
    native = _native(tf_input(systems), tmp_path)
    assert native.model["shared_dict"]["descriptor"]["sel"] == [10, 20]
    assert {t: native.model["model_dict"][t]["descriptor"] for t in native.tasks} == {
        "water_a": "descriptor", "water_b": "descriptor"}
    assert native.tasks["water_a"].prob == 1.0 and native.tasks["water_b"].prob == 3.0
    # water_b has no loss_dict entry: DeePMD's default ener prefactors (e 0.02 -> 1, f 1000 -> 1)
    terms = native.tasks["water_b"].loss.terms
    assert (terms["energy"].start_pref, terms["forces"].start_pref) == (0.02, 1000.0)
    assert native.lr_schedule.decay_steps == 10
    (tmp_path / "input.json").write_text(json.dumps(tf_input(systems)))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    header = (tmp_path / "lcurve.out").read_text().splitlines()[0].split()
    assert header[2:5] == ["rmse_trn_water_a", "rmse_e_trn_water_a", "rmse_f_trn_water_a"]
    assert np.isfinite(np.loadtxt(tmp_path / "lcurve.out")).all()


# ---- sharing and statistics ------------------------------------------------------------------------


def test_descriptor_is_one_module_and_a_step_on_a_moves_b(systems, tmp_path):
    config = _native(pytorch_input(systems), tmp_path)
    trainer = Trainer(config, progress=False)
    model = trainer.model
    head_a, head_b = model.heads["water_a"], model.heads["water_b"]
    assert head_a.descriptor is head_b.descriptor
    # the model and the optimizer hold each shared tensor once
    n_fitting_b = sum(p.numel() for p in head_b.fitting.parameters())
    assert model.num_parameters() == head_a.num_parameters() + n_fitting_b
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == model.num_parameters()
    data_b = trainer.task_data["water_b"]
    before = _energies(head_b, data_b, [0, 1])
    fitting_b = {k: v.clone() for k, v in head_b.fitting.state_dict().items()}
    trainer._enter_stage(0)
    trainer.task_sampler.next_task = lambda: "water_a"  # force a step on task A
    trainer.train_step(metrics=False)
    after = _energies(head_b, data_b, [0, 1])
    assert torch.all((after - before).abs() > 1e-9)  # B's energies move through the shared descriptor
    for key, value in head_b.fitting.state_dict().items():
        assert torch.equal(value, fitting_b[key]), key  # B's own fitting net is untouched
    assert trainer.optimizer.state_dict()["state"]  # Adam moments exist for the descriptor and A only
    ids_with_state = {id(p) for g in trainer.optimizer.param_groups for p in g["params"] if p in trainer.optimizer.state}
    assert not any(id(p) in ids_with_state for p in head_b.fitting.parameters())


def test_statistics_pool_descriptor_over_tasks_and_bias_per_head(systems, tmp_path):
    multi = build_training_data(_native(pytorch_input(systems), tmp_path), torch.float64)
    single = pytorch_input(systems)
    both = {
        "model": {"type_map": ["O", "H"], "descriptor": copy.deepcopy(DESCRIPTOR), "fitting_net": {"neuron": [8]}},
        "learning_rate": single["learning_rate"], "loss": dict(ENER_LOSS),
        "training": {"training_data": {"systems": [systems["a"], systems["b"]], "batch_size": 1}, "numb_steps": 1},
    }
    pooled = build_training_data(_native(both, tmp_path, "both.json"), torch.float64).model
    shared = multi.model.heads["water_a"].descriptor
    torch.testing.assert_close(shared.davg, pooled.descriptor.davg, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shared.dstd, pooled.descriptor.dstd, rtol=1e-12, atol=1e-12)
    # each head's energy bias solves its own task's least squares: frames 3-4 -> E_B / (64 O + 128 H)
    energies = np.load(Path(systems["b"]) / "set.000" / "energy.npy").astype(np.float64)
    bias_b = multi.model.heads["water_b"].fitting.bias_atom.squeeze(-1).numpy()
    assert 64 * bias_b[0] + 128 * bias_b[1] == pytest.approx(energies.mean(), rel=1e-10)
    energies_a = np.load(Path(systems["a"]) / "set.000" / "energy.npy").astype(np.float64)
    bias_a = multi.model.heads["water_a"].fitting.bias_atom.squeeze(-1).numpy()
    assert 64 * bias_a[0] + 128 * bias_a[1] == pytest.approx(energies_a.mean(), rel=1e-10)


# ---- task sampling -----------------------------------------------------------------------------------


def test_task_frequencies_follow_model_prob():
    probs = task_probabilities({"a": 0.7, "b": 0.2, "c": 0.1}, {"a": 1, "b": 1, "c": 1})
    sampler = TaskSampler(list(probs), list(probs.values()), seed=3)
    draws = [sampler.next_task() for _ in range(2000)]
    for task, p in probs.items():
        count = draws.count(task)
        sigma = np.sqrt(2000 * p * (1 - p))
        assert abs(count - 2000 * p) < 4 * sigma, (task, count)
    # default: proportional to the number of training systems; a given weight wins for its task
    assert task_probabilities({"a": None, "b": None}, {"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    assert task_probabilities({"a": 2.0, "b": None}, {"a": 1, "b": 2}) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ConfigError, match="training.model_prob: the task weights sum to 0"):
        task_probabilities({"a": 0.0}, {"a": 1})


def test_tf_fitting_weight_leaves_out_unlisted_tasks(systems, tmp_path):
    config = tf_input(systems)
    config["training"]["fitting_weight"] = {"water_a": 2}
    native = _native(config, tmp_path)
    assert (native.tasks["water_a"].prob, native.tasks["water_b"].prob) == (2.0, 0.0)
    del config["training"]["fitting_weight"]
    native = _native(config, tmp_path)
    assert (native.tasks["water_a"].prob, native.tasks["water_b"].prob) == (1.0, 1.0)


# ---- freezing and resuming ------------------------------------------------------------------------------


def test_frozen_head_gives_the_multitask_heads_energies(systems, tmp_path, monkeypatch):
    (tmp_path / "input.json").write_text(json.dumps(pytorch_input(systems, steps=10)))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    multi = load_model(tmp_path / "model.ckpt.pt")
    data = build_training_data(_native(pytorch_input(systems), tmp_path), torch.float64, with_statistics=False)
    for task in ("water_a", "water_b"):
        assert main(["freeze", "-o", f"frozen_{task}.pt", "--head", task]) == 0
        frozen = load_model(f"frozen_{task}.pt")
        assert frozen.config["descriptor"]["sel"] == [10, 20] and frozen.config["type_map"] == ["O", "H"]
        task_data = data.tasks[task]
        indices = list(range(len(task_data.train)))
        expected = _energies(multi.heads[task], task_data, indices)
        torch.testing.assert_close(_energies(frozen, task_data, indices), expected, rtol=0, atol=1e-10)
    # the two heads differ (own fitting nets and biases) on the same frames
    frames = data.tasks["water_a"]
    difference = _energies(multi.heads["water_a"], frames, [0]) - _energies(multi.heads["water_b"], frames, [0])
    assert float(difference.abs().max()) > 1e-3  # eV; both heads' biases were refitted to the same data


def test_resume_is_exact(systems, tmp_path):
    """A run restarted from its step-6 checkpoint ends with the weights and task-choice RNG of the
    uninterrupted run (the checkpoint holds the task sampler and every task's batch samplers)."""
    config = pytorch_input(systems, steps=12)
    config["training"]["save_freq"] = 6
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    straight = Trainer(_native(config, tmp_path / "straight"), progress=False)
    straight.run()
    checkpoint = tmp_path / "straight" / "model.ckpt-6.pt"
    resumed = Trainer(_native(config, tmp_path / "resumed"), restart=str(checkpoint), progress=False)
    assert resumed.step == 6
    resumed.run()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert straight.task_sampler.state_dict()["rng"] == resumed.task_sampler.state_dict()["rng"]


# ---- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"]["model_dict"]["water_b"].update(descriptor="no_such"),
     r"model\.model_dict\.water_b\.descriptor: 'no_such' is not a key of model/shared_dict \(keys: my_descriptor, types\)"),
    (lambda c: c["model"]["model_dict"]["water_a"].update(type_map="my_descriptor"),
     r"model\.model_dict\.water_a\.type_map: shared_dict/my_descriptor is not a type_map"),
    (lambda c: c["loss_dict"].update(typo=dict(ENER_LOSS)),
     r"loss_dict\.typo: 'typo' is not a task of the model \(tasks: water_a, water_b\)"),
    (lambda c: c["loss_dict"].pop("water_b"), r"loss_dict\.water_b: missing the loss of task 'water_b'"),
    (lambda c: c["training"]["data_dict"].pop("water_a"),
     r"training\.data_dict\.water_a: missing the data of task 'water_a'"),
    (lambda c: c["training"]["model_prob"].update(water_c=1.0), r"training\.model_prob\.water_c: 'water_c' is not a task"),
    (lambda c: c["training"]["model_prob"].update(water_a=-1), r"training\.model_prob\.water_a: expected a non-negative"),
    (lambda c: c["model"]["model_dict"]["water_a"].update(descriptor="my_descriptor:1"),
     r"not supported yet: share level 1"),
    (lambda c: c["model"].update(type_map=["O", "H"]),
     r"model\.type_map: with model_dict, this belongs in each model_dict entry"),
    (lambda c: c["training"].update(num_epoch_dict={"water_a": 1}),
     r"training\.numb_steps: num_epoch_dict and numb_steps exclude each other"),
    (lambda c: c["model"]["model_dict"]["water_a"]["fitting_net"].update(nueron=[8]),
     r"model\.model_dict\.water_a\.fitting_net\.nueron: unknown key"),
])
def test_bad_multitask_input_names_the_key(systems, edit, message):
    config = pytorch_input(systems)
    edit(config)
    with pytest.raises(ConfigError, match=message):
        deepmd.convert_dict(config, file="input.json")


def test_multitask_keys_in_a_single_task_input_are_errors(systems):
    config = {"model": {"type_map": ["O", "H"], "descriptor": dict(DESCRIPTOR), "fitting_net": {"neuron": [8]}},
              "loss": dict(ENER_LOSS),
              "training": {"training_data": {"systems": [systems["a"]]}, "numb_steps": 1,
                           "model_prob": {"a": 1.0}}}
    with pytest.raises(ConfigError, match=r"training\.model_prob: a multi-task key: needs model/model_dict"):
        deepmd.convert_dict(config)
    with pytest.raises(CheckpointError, match="single-task model"):
        from mlpot.calculators.export import select_head

        select_head(torch.nn.Linear(1, 1), "water_a", "model.pt")


def test_ase_calculator_takes_a_head_of_a_checkpoint(systems, tmp_path, monkeypatch):
    from ase import Atoms

    from mlpot.calculators import MlpotCalculator

    (tmp_path / "input.json").write_text(json.dumps(pytorch_input(systems, steps=10)))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    system = Path(systems["b"])
    types = np.loadtxt(system / "type.raw", dtype=int)
    atoms = Atoms(symbols=[["O", "H"][t] for t in types], pbc=True,
                  positions=np.load(system / "set.000" / "coord.npy")[0].reshape(-1, 3),
                  cell=np.load(system / "set.000" / "box.npy")[0].reshape(3, 3))
    energies = {}
    for source, head in (("model.ckpt.pt", "water_b"), ("model_water_b.pt", None), ("model.ckpt.pt", "water_a")):
        atoms.calc = MlpotCalculator(source, head=head)
        energies[(source, head)] = atoms.get_potential_energy()
    assert energies[("model.ckpt.pt", "water_b")] == pytest.approx(energies[("model_water_b.pt", None)], abs=1e-9)
    assert energies[("model.ckpt.pt", "water_a")] != pytest.approx(energies[("model.ckpt.pt", "water_b")], abs=1e-6)


def test_multitask_input_takes_every_learning_rate_type(systems):
    config = pytorch_input(systems)
    config["learning_rate"] = {"type": "cosine", "start_lr": 1e-3, "stop_lr": 1e-5}
    assert deepmd.convert_dict(config)["lr_schedule"]["type"] == "cosine"
    config["learning_rate"] = {"type": "wsd", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_phase_ratio": 0.2}
    schedule = deepmd.convert_dict(config)["lr_schedule"]
    assert schedule["type"] == "wsd" and schedule["decay_phase_ratio"] == 0.2
