"""The training record (``mlpot.models.record``): min_nbor_dist and hessian_mode kept beside the weights.

* ``mlpot train`` measures min_nbor_dist on the training data (unless ``--skip-neighbor-stat``, as
  DeePMD-kit 3.x): the checkpoint and the frozen file store exactly ``mlpot neighbor-stat``'s value
  for the training systems, and ``mlpot compress`` then needs no ``-t``: its tables equal those of
  an explicit ``--min-nbor-dist``;
* a DeePMD-kit checkpoint's ``min_nbor_dist`` survives ``mlpot freeze`` (its frozen file compresses
  without ``-t`` to the same tables as the DeePMD-kit file);
* files without a record (older mlpot files) load with min_nbor_dist None; a malformed record is
  refused naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlpot.calculators import load_model
from mlpot.calculators.export import read_model_file, save_frozen
from mlpot.cli import main
from mlpot.errors import CheckpointError

PEER_MODELS = Path(__file__).parent / "peer_models" / "deepmd"


def _input(system: str, **training) -> dict:
    return {
        "model": {"type_map": ["C", "H", "O"],
                  "descriptor": {"type": "se_e2_a", "sel": [4, 4, 2], "rcut_smth": 0.5, "rcut": 4.0, "neuron": [2, 4],
                                 "axis_neuron": 2, "seed": 1},
                  "fitting_net": {"neuron": [4, 4], "seed": 1}},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 5},
        "loss": {"type": "ener", "start_pref_e": 1, "limit_pref_e": 1, "start_pref_f": 1, "limit_pref_f": 1},
        "training": {"training_data": {"systems": [system], "batch_size": 2}, "numb_steps": 2, "seed": 1,
                     "disp_freq": 1, "save_freq": 2, **training},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """A folder after ``mlpot train input.json`` (2 steps, 8-atom CHO molecules) and ``mlpot freeze``."""
    folder = tmp_path_factory.mktemp("record")
    system = str(shared_data("deepmd_nopbc/C4H3O1"))
    (folder / "input.json").write_text(json.dumps(_input(system)))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["train", "input.json", "--no-progress"]) == 0
        assert main(["freeze", "-o", "frozen_model.pt"]) == 0
    return folder, system


def test_training_stores_neighbor_stat_min_distance(trained, capsys):
    folder, system = trained
    capsys.readouterr()
    assert main(["neighbor-stat", "-s", system, "-r", "4.0", "-t", "C", "H", "O"]) == 0
    printed = float(capsys.readouterr().out.split("min_nbor_dist:")[1].split()[0])
    from mlpot.commands.neighbor_stat import neighbor_stat

    expected, _, _ = neighbor_stat([system], 4.0, ["C", "H", "O"])
    assert 0.8 < expected < 1.2 and expected == pytest.approx(printed, abs=1e-6)  # Å, a bond of the molecules
    checkpoint = read_model_file(folder / "model.ckpt.pt")
    assert checkpoint["training_record"] == {"min_nbor_dist": expected}  # the same float, no h term
    frozen = read_model_file(folder / "frozen_model.pt")
    assert frozen["training_record"] == {"min_nbor_dist": expected}
    model = load_model(folder / "frozen_model.pt")
    assert model.min_nbor_dist == expected and model.hessian_mode is False


def test_compress_reads_the_stored_distance(trained, tmp_path, capsys, monkeypatch):
    folder, _ = trained
    monkeypatch.chdir(tmp_path)
    stored = load_model(folder / "frozen_model.pt").min_nbor_dist
    capsys.readouterr()
    assert main(["compress", "-i", str(folder / "frozen_model.pt"), "-o", "stored.pt"]) == 0  # no -t
    assert f"min_nbor_dist {stored:.6f}" in capsys.readouterr().out
    assert main(["compress", "-i", str(folder / "frozen_model.pt"), "-o", "given.pt",
                 "--min-nbor-dist", repr(stored)]) == 0
    tables = [read_model_file(name)["state_dict"] for name in ("stored.pt", "given.pt")]
    assert tables[0].keys() == tables[1].keys() and any("table" in key for key in tables[0])
    assert all(torch.equal(tables[0][key], tables[1][key]) for key in tables[0])
    compressed = load_model("stored.pt")
    assert compressed.config["compress"]["min_nbor_dist"] == stored and compressed.min_nbor_dist == stored


def test_skip_neighbor_stat_stores_nothing(trained, tmp_path, capsys, monkeypatch):
    folder, _ = trained
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.json").write_text((folder / "input.json").read_text())
    assert main(["train", "input.json", "--skip-neighbor-stat", "--no-progress"]) == 0
    assert read_model_file("model.ckpt.pt")["training_record"] == {}
    capsys.readouterr()
    assert main(["compress", "-i", "model.ckpt.pt", "-o", "c.pt"]) == 2
    assert "does not store min_nbor_dist" in capsys.readouterr().err
    assert main(["compress", "-i", "model.ckpt.pt", "-o", "c.pt", "-t", "input.json"]) == 0  # -t still works


def test_deepmd_kit_distance_survives_freeze(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = PEER_MODELS / "se_e2_r.ckpt.pt"
    assert main(["freeze", str(source), "-o", "frozen.pt"]) == 0
    stored = load_model("frozen.pt").min_nbor_dist
    assert stored == pytest.approx(0.876, abs=5e-4) and stored == load_model(source).min_nbor_dist  # Å, dp train's
    capsys.readouterr()
    assert main(["compress", "-i", "frozen.pt", "-o", "ours.pt"]) == 0
    assert main(["compress", "-i", str(source), "-o", "theirs.pt"]) == 0
    ours, theirs = (read_model_file(name)["state_dict"] for name in ("ours.pt", "theirs.pt"))
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_files_without_record_load_and_bad_records_are_refused(trained, tmp_path):
    folder, _ = trained
    payload = read_model_file(folder / "frozen_model.pt")
    del payload["training_record"]  # a frozen file of an earlier mlpot
    save_frozen(payload, tmp_path / "old.pt")
    model = load_model(tmp_path / "old.pt")
    assert model.min_nbor_dist is None and model.hessian_mode is False
    for record, entry in (({"min_nbor_dist": -1.0}, "min_nbor_dist"), ({"hessian_mode": "yes"}, "hessian_mode"),
                          ({"min_dist": 1.0}, "min_dist")):
        save_frozen({**payload, "training_record": record}, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=entry) as error:
            load_model(tmp_path / "bad.pt")
        assert "bad.pt" in str(error.value)


def test_multi_task_record_holds_one_distance_per_task(tmp_path, shared_data, monkeypatch):
    """Each task's head records the min_nbor_dist of its own training systems; ``freeze --head`` keeps it."""
    from test_deepmd_multitask import _subset, pytorch_input

    from mlpot.commands.neighbor_stat import neighbor_stat

    source = shared_data("deepmd_water/data_0")
    systems = {"a": _subset(source, tmp_path / "sys_a", [0, 1]), "b": _subset(source, tmp_path / "sys_b", [3]),
               "valid": _subset(source, tmp_path / "sys_valid", [5])}
    (tmp_path / "input.json").write_text(json.dumps(pytorch_input(systems, steps=1)))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    rcut = load_model("model.ckpt.pt", head="water_a").cutoff
    expected = {task: neighbor_stat([systems[key]], rcut, ["O", "H"])[0] for task, key in (("water_a", "a"),
                                                                                          ("water_b", "b"))}
    assert expected["water_a"] != expected["water_b"]
    record = read_model_file("model.ckpt.pt")["training_record"]
    assert record == {"heads": {task: {"min_nbor_dist": value} for task, value in expected.items()}}
    assert main(["freeze", "-o", "frozen_b.pt", "--head", "water_b"]) == 0
    assert read_model_file("frozen_b.pt")["training_record"] == {"min_nbor_dist": expected["water_b"]}
