"""Reading a model or checkpoint never runs code from it (issue #18, item 6).

A planted file whose unpickling would create a marker file is handed to every command that reads a
model or a checkpoint (``train --restart / --init-model / --finetune``, ``test``, ``freeze``,
``change-bias``, ``model-devi``, a ``frozen`` model in a DeePMD input) and to the ASE calculator:
the marker never appears, the command exits with status 2 naming the file. Checkpoints that mlpot
writes load with plain ``weights_only`` (no global to allow), and a checkpoint of an earlier
version (numpy RNG array, pickled schedule objects) still loads.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch

from mlpot.cli import main
from mlpot.errors import CheckpointError
from mlpot.training.checkpoint import load_checkpoint, read_torch_file
from tests.bad_inputs.corpus import Workspace, build_template, fresh_workspace, plant_malicious


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Workspace:
    return build_template(tmp_path_factory.mktemp("safe_loading") / "template")


@pytest.fixture
def ws(template, tmp_path, monkeypatch) -> Workspace:
    return fresh_workspace(template, tmp_path, monkeypatch)


def _frozen_model_input(ws: Workspace) -> list:
    config = ws.dp_input()
    config["model"] = {"type": "frozen", "model_file": str(ws.root / "evil.pt"), "type_map": ["C", "H"]}
    ws.write_dp(config, "frozen.json")
    return ["train", "dp/frozen.json", "--output-dir", "dp/out", "--no-progress"]


COMMANDS = {
    "train --restart": lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--restart", "evil.pt"],
    "train --init-model": lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--init-model", "evil.pt"],
    "train --finetune": lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--finetune", "evil.pt"],
    "train with a frozen model_file": _frozen_model_input,
    "test": lambda ws: ["test", "evil.pt", "dp/sys4"],
    "freeze": lambda ws: ["freeze", "evil.pt", "-o", "frozen.pt"],
    "change-bias": lambda ws: ["change-bias", "evil.pt", "-s", "dp/sys4"],
    "model-devi": lambda ws: ["model-devi", "-m", "prev/model.pt", "evil.pt", "-s", "dp/sys4"],
}


@pytest.mark.parametrize("like", ["frozen", "checkpoint"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_runs_code_from_a_model_file(ws, command, like, capsys):
    shape = {"format": "mlpot-frozen"} if like == "frozen" else {"format": "mlpot-checkpoint-1", "step": 4}
    plant_malicious(ws.root / "evil.pt", ws.marker, like=shape)
    code = main(COMMANDS[command](ws))
    err = capsys.readouterr().err
    assert not ws.marker.exists(), "the model file ran code"
    assert code == 2, err
    assert "evil.pt" in err and ("refused" in err or "not an mlpot frozen model" in err), err


def test_ase_calculator_refuses_a_model_that_runs_code(ws):
    from mlpot.calculators import MlpotCalculator

    plant_malicious(ws.root / "evil.pt", ws.marker)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: the file holds a Python object \(posix\.system\)"):
        MlpotCalculator(str(ws.root / "evil.pt"))
    assert not ws.marker.exists()


def test_checkpoints_hold_tensors_and_plain_data_only(template):
    for path in [*template.prev.glob("model.ckpt-*.pt"), template.prev / "model.pt"]:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == [], path
        torch.load(path, weights_only=True)  # no allow-list needed


def test_checkpoint_of_an_earlier_version_still_loads(template, tmp_path):
    """Earlier checkpoints held the numpy RNG state array and LambdaLR's schedule objects."""
    from mlpot.training.schedules import ExponentialDecay

    state = load_checkpoint(next(template.prev.glob("model.ckpt-*.pt")))
    state["rng"]["numpy"] = np.random.get_state()
    state["scheduler"]["lr_lambdas"] = [{"schedule": ExponentialDecay(start_lr=1e-3, stop_lr=1e-5, decay_steps=2, num_steps=4)}]
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy)
    assert load_checkpoint(legacy)["step"] == state["step"]


def test_other_classes_are_refused_even_from_mlpot(tmp_path):
    from mlpot.training.run_folder import FolderLock

    path = tmp_path / "lock.pt"
    torch.save({"format": "mlpot-checkpoint-1", "x": FolderLock(tmp_path)}, path)
    with pytest.raises(CheckpointError, match=r"refused: .*FolderLock"):
        read_torch_file(path)


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    from mlpot.training.checkpoint import rng_state, save_checkpoint, set_rng_state

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_pickle_without_zip_is_refused_too(tmp_path):
    """The legacy (non-zip) torch format goes through the same restricted unpickler."""
    path = tmp_path / "old.pt"
    marker = tmp_path / "MARK"
    buffer = io.BytesIO()

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": RunsCode()}, buffer, _use_new_zipfile_serialization=False)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="refused"):
        read_torch_file(path)
    assert not marker.exists()
