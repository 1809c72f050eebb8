"""ZeRO stages 1-2 (``training.zero_stage``, DeePMD-kit's key): two gloo CPU processes.

Stage 1 shards the Adam state over the ranks, stage 2 the summed gradients too; both must leave
every weight as stage 0 leaves it. Checkpoints hold the whole (consolidated) optimizer state, so a
run restarts from them on two ranks or on one to the same weights.
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from mlpot.config import load_config
from mlpot.config.deepmd import convert_dict
from mlpot.errors import ConfigError
from mlpot.training.trainer import Trainer
from test_training_trainer import base_config, make_dataset, write_config

STEPS = 4


def _config(stage: int) -> dict:
    # clipping on (the gradient norm is ~1e2): stage 2 clips with the norm summed from the shards
    config = base_config(numb_steps=STEPS, zero_stage=stage, clip_grad_norm=1.0)
    config["data"]["train"]["batch_size"] = 4
    config["checkpoint"] = {"every": 2, "keep": 5}
    return config


def _weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _worker(rank: int, root: str, port: int) -> None:
    """One of two ranks: stages 0, 1, 2, stage 1 restarted at step 2; weights, Adam and gradient shards to disk."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    root, result = Path(root), {}
    runs = (("zero0", None), ("zero1", None), ("zero2", None), ("resumed", root / "zero1" / "out" / "model.ckpt-2.pt"))
    for name, restart in runs:
        trainer = Trainer(load_config(root / name / "config.yaml"), restart=restart, progress=False)
        trainer.run()
        result[name] = _weights(trainer)
        optimizer = trainer.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        result[f"{name}_with_grad"] = [i for i, p in enumerate(params) if p.grad is not None]  # of the last step
        if name == "zero1":
            result["owned"] = [i for i, p in enumerate(params) if optimizer._param_to_rank[p] == rank]
            result["with_state"] = sorted(i for i, p in enumerate(params) if p in optimizer.optim.state)
            result["state_numel"] = sum(t.numel() for s in optimizer.optim.state.values() for t in s.values()
                                        if t.dim() > 0)
            result["all_numel"] = 2 * sum(p.numel() for p in params)  # Adam: exp_avg + exp_avg_sq
    torch.save(result, root / f"rank{rank}.pt")
    trainer.dist.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero")
    make_dataset(root)
    for name, stage in (("zero0", 0), ("zero1", 1), ("zero2", 2), ("resumed", 1)):
        write_config(root / name, _config(stage), root)
    mp.spawn(_worker, args=(str(root), _free_port()), nprocs=2, join=True)
    return root, [torch.load(root / f"rank{r}.pt") for r in range(2)]


def test_stage1_same_weights_and_sharded_adam_state(zero_runs):
    _, ranks = zero_runs
    for result in ranks:  # rank by rank: the bias refit after training is rank 0's alone
        reference = result["zero0"]
        for name in ("zero1", "zero2", "resumed"):
            for key, value in reference.items():
                torch.testing.assert_close(result[name][key], value, rtol=0, atol=1e-12, msg=f"{name} {key}")
    # each rank holds the Adam moments of its own parameters only; together they hold all of them
    for rank, result in enumerate(ranks):
        assert result["with_state"] == result["owned"] and result["owned"]
        assert 0 < result["state_numel"] < result["all_numel"]
    assert sorted(ranks[0]["owned"] + ranks[1]["owned"]) == list(range(len(ranks[0]["owned"] + ranks[1]["owned"])))
    assert ranks[0]["state_numel"] + ranks[1]["state_numel"] == ranks[0]["all_numel"]
    # stage 2: after the step each rank keeps only the summed gradients of its own parameters
    for result in ranks:
        assert result["zero1_with_grad"] == result["zero0_with_grad"] == list(range(len(result["zero0_with_grad"])))
        assert result["zero2_with_grad"] == result["owned"]


def test_stage1_checkpoint_restarts_on_one_process(zero_runs, monkeypatch):
    root, ranks = zero_runs
    checkpoint = torch.load(root / "zero1" / "out" / "model.ckpt-2.pt", weights_only=False)
    state = checkpoint["optimizer"]["state"]  # consolidated: every parameter's moments, torch layout
    n_params = sum(len(group["params"]) for group in checkpoint["optimizer"]["param_groups"])
    assert sorted(state) == list(range(n_params)) and all("exp_avg_sq" in s for s in state.values())
    assert checkpoint["optimizer"]["param_groups"][0]["eps"] == 1e-8  # loads into a plain Adam
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    write_config(root / "single", _config(1), root)  # stage 1 in one process: plain Adam (DeePMD-kit)
    trainer = Trainer(load_config(root / "single" / "config.yaml"), restart=root / "zero1" / "out" / "model.ckpt-2.pt",
                      progress=False)
    assert type(trainer.optimizer) is torch.optim.Adam
    trainer.run()
    for key, value in _weights(trainer).items():
        torch.testing.assert_close(value, ranks[0]["zero1"][key], rtol=0, atol=1e-12, msg=key)


def test_zero_stage_keys_and_unbuilt_stage(tmp_path):
    make_dataset(tmp_path)
    path = write_config(tmp_path / "s3", _config(3), tmp_path)
    with pytest.raises(ConfigError, match="training.zero_stage: not supported yet: zero_stage = 3 \\(parameter "
                       "sharding .* use zero_stage 2"):
        Trainer(load_config(path), progress=False)
    path = write_config(tmp_path / "s4", _config(4), tmp_path)
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(path)
    deepmd = {"model": {"type_map": ["O"], "descriptor": {"type": "se_e2_a", "sel": [4], "rcut": 4.0, "rcut_smth": 1.0},
                        "fitting_net": {}},
              "learning_rate": {"start_lr": 1e-3}, "loss": {},
              "training": {"training_data": {"systems": ["x"]}, "numb_steps": 1, "zero_stage": 1}}
    assert convert_dict(deepmd)["training"]["zero_stage"] == 1
    assert yaml.safe_dump(convert_dict({**deepmd, "training": {**deepmd["training"], "zero_stage": 0}})).count(
        "zero_stage") == 0


def test_stage_in_effect_and_refused_combinations():
    from mlpot.training.zero import check_zero_stage

    plain = dict(multi_task=False, lkf=False, full_validation=False)
    assert check_zero_stage(2, world_size=1, **plain) == 0  # one process: nothing to shard (DeePMD-kit)
    assert check_zero_stage(2, world_size=2, **plain) == 2 and check_zero_stage(0, world_size=2, **plain) == 0
    for flag, what in (("multi_task", "multi-task models"), ("lkf", "the LKF optimizer"),
                       ("full_validation", "full validation")):
        with pytest.raises(ConfigError, match=rf"in.yaml: training.zero_stage: not supported yet: zero_stage = 1 "
                                              rf"with {what}"):
            check_zero_stage(1, world_size=2, file="in.yaml", **{**plain, flag: True})
        assert check_zero_stage(1, world_size=1, **{**plain, flag: True}) == 0
