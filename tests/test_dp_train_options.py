"""Every option of DeePMD-kit 3.2's ``dp train`` on ``mlpot train`` with a DeePMD input
(mlpot.commands._dp_train): short and long spellings, each mapped to mlpot's behaviour, and the few
not built refused with "not supported yet: <option>" (exit status 2, one line, no traceback).

One tiny CuAu EMT input (8-atom cells, sel "auto", a two-layer fitting net without resnet_dt) is
trained once for 2 steps; the tests start from that run's checkpoint, frozen model and out.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlpot.cli import build_parser, main
from mlpot.commands.train import split_arguments

# DeePMD-kit 3.2, `dp --pt train -h`: option -> the value it takes (None: a flag)
DP_TRAIN_OPTIONS = {
    ("-i", "--init-model"): "model.ckpt", ("-r", "--restart"): "model.ckpt", ("-t", "--finetune"): "model.pt",
    ("-f", "--init-frz-model"): "model.pt", ("-o", "--output"): "out.json", ("-l", "--log-path"): "train.log",
    ("-v", "--log-level"): "WARNING", ("-m", "--mpi-log"): "master", ("--use-pretrain-script",): None,
    ("--skip-neighbor-stat",): None, ("--model-branch",): "RANDOM", ("--force-load",): None,
}


def _input(sel="auto", fitting=None, steps=2) -> dict:
    return {
        "_comment": "tiny CuAu input",
        "model": {"type_map": ["Cu", "Au"],
                  "descriptor": {"type": "se_e2_a", "sel": sel, "rcut_smth": 0.5, "rcut": 3.0, "neuron": [2, 4],
                                 "axis_neuron": 2, "seed": 1},
                  "fitting_net": fitting or {"neuron": [4, 4], "resnet_dt": False, "seed": 1}},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 5},
        "loss": {"type": "ener", "start_pref_e": 1, "limit_pref_e": 1, "start_pref_f": 1, "limit_pref_f": 1},
        "training": {"training_data": {"systems": ["train.extxyz"], "batch_size": 2}, "numb_steps": steps,
                     "seed": 1, "disp_freq": 1, "save_freq": steps},
    }


def _write_input(folder: Path, name: str = "input.json", **changes) -> str:
    (folder / name).write_text(json.dumps(_input(**changes), indent=2))
    return name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder after ``mlpot train input.json``: model.ckpt-2.pt (and the model.ckpt.pt link), model.pt, out.json."""
    from test_training_trainer import make_dataset  # 8 + 4 frames of 8-atom CuAu with EMT labels

    folder = tmp_path_factory.mktemp("dp_train")
    make_dataset(folder)
    _write_input(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["train", "input.json", "--no-progress"]) == 0
    return folder


@pytest.fixture
def run(trained, tmp_path, monkeypatch):
    """A copy of the trained folder as the working directory."""
    shutil.copytree(trained, tmp_path / "run", symlinks=True)
    monkeypatch.chdir(tmp_path / "run")
    return tmp_path / "run"


def _lcurve(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


def test_every_dp_train_option_parses_as_dp_spells_it():
    parser = build_parser(only="train")
    for spellings, value in DP_TRAIN_OPTIONS.items():
        for spelling in spellings:
            argv = ["train", "input.json", spelling] + ([value] if value is not None else [])
            own, extra = split_arguments(argv)
            assert extra == [], spelling  # never taken for a mace_run_train option
            args = parser.parse_args(own)
            dest = spellings[-1].lstrip("-").replace("-", "_")
            assert getattr(args, dest) == (True if value is None else value), spelling
    # after a mace_run_train option and its value, a dp option is still mlpot's own
    own, extra = split_arguments(["train", "--config", "m.yaml", "--max_num_epochs", "5", "-r", "x", "--skip-neighbor-stat"])
    assert extra == ["--max_num_epochs", "5"] and own[-3:] == ["-r", "x", "--skip-neighbor-stat"]
    with pytest.raises(SystemExit):  # one start option at most, as dp
        parser.parse_args(["train", "input.json", "-r", "a.pt", "-i", "b.pt"])


def test_out_json_is_the_input_as_trained_and_trains_again(run):
    trained = json.loads((run / "out.json").read_text())  # written by default, as dp
    assert "_comment" not in trained
    sel = trained["model"]["descriptor"]["sel"]
    assert isinstance(sel, list) and len(sel) == 2 and all(n > 0 and n % 4 == 0 for n in sel)
    assert main(["train", "out.json", "-o", "again/out2.json", "--output-dir", "again", "--no-progress"]) == 0
    assert json.loads((run / "again" / "out2.json").read_text())["model"] == trained["model"]
    assert not (run / "again" / "out.json").exists()


def test_restart_takes_the_checkpoint_prefix(run):
    _write_input(run, "input3.json", steps=3)
    assert main(["train", "input3.json", "-r", "model.ckpt", "--no-progress"]) == 0  # model.ckpt.pt, as dp
    assert _lcurve(run / "lcurve.out")[:, 0].tolist() == [1, 2, 3]


def test_init_model_prefix_and_init_frz_model_start_from_the_same_weights(run):
    assert main(["train", "input.json", "-i", "model.ckpt", "--output-dir", "i", "--no-progress"]) == 0
    assert main(["train", "input.json", "--init-frz-model", "model.pt", "--output-dir", "f", "--no-progress"]) == 0
    from_checkpoint, from_frozen = _lcurve(run / "i" / "lcurve.out"), _lcurve(run / "f" / "lcurve.out")
    assert from_checkpoint[:, 0].tolist() == [1, 2]  # step 0, fresh optimizer
    np.testing.assert_allclose(from_checkpoint, from_frozen, rtol=1e-10)
    assert from_checkpoint[0, 1] < _lcurve(run / "lcurve.out")[0, 1]  # trained weights, not a fresh start


def test_finetune_short_option(run, capsys):
    assert main(["train", "input.json", "-t", "model.pt", "--output-dir", "t", "--no-progress"]) == 0
    assert "fine-tuning: energy bias change-by-statistic" in capsys.readouterr().out
    assert _lcurve(run / "t" / "lcurve.out")[:, 0].tolist() == [1, 2]


def test_force_load_keeps_fresh_weights_for_what_the_file_lacks(run, capsys):
    _write_input(run, "resnet.json", fitting={"neuron": [4, 4], "resnet_dt": True, "seed": 1})  # adds idt tensors
    assert main(["train", "resnet.json", "-f", "model.pt", "--output-dir", "a", "--no-progress"]) == 2
    assert "weights do not fit the configured model (missing ['fitting.nets.0.layers.1.idt'" in capsys.readouterr().err
    assert main(["train", "resnet.json", "-f", "model.pt", "--force-load", "--output-dir", "b", "--no-progress"]) == 0
    assert "force-load: not in the weights file, freshly initialised: fitting.nets.0.*, fitting.nets.1.*" in \
        capsys.readouterr().out


def test_use_pretrain_script_with_init_model_takes_its_model_section(run):
    _write_input(run, "other.json", fitting={"neuron": [8], "seed": 2})
    assert main(["train", "other.json", "-i", "model.ckpt.pt", "--use-pretrain-script", "--output-dir", "p",
                 "--no-progress"]) == 0
    assert json.loads((run / "p" / "out.json").read_text())["model"]["fitting_net"]["neuron"] == [4, 4]


def test_skip_neighbor_stat(run, capsys):
    assert main(["train", "input.json", "--skip-neighbor-stat", "--output-dir", "s", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "input.json: model/descriptor/sel: 'auto' needs the neighbour statistics" in err and "Traceback" not in err
    _write_input(run, "numeric.json", sel=[12, 12])
    assert main(["train", "numeric.json", "--skip-neighbor-stat", "--output-dir", "n", "--no-progress"]) == 0
    assert "from the training data" not in capsys.readouterr().out


def test_log_path_and_log_level(run, capsys):
    assert main(["train", "input.json", "-l", "train.log", "-m", "master", "--output-dir", "l", "--no-progress"]) == 0
    shown, logged = capsys.readouterr().out, (run / "train.log").read_text()
    assert "step 2, stage train" in logged and logged in shown
    assert main(["train", "input.json", "-v", "WARNING", "-l", "quiet.log", "--output-dir", "q", "--no-progress"]) == 0
    assert capsys.readouterr().out == "" and (run / "quiet.log").read_text() == ""
    assert _lcurve(run / "q" / "lcurve.out")[:, 0].tolist() == [1, 2]  # only the console is quiet
    assert main(["train", "input.json", "--skip-neighbor-stat", "-v", "0", "-l", "error.log", "--output-dir", "e"]) == 2
    assert (run / "error.log").read_text().startswith("mlpot train: error: input.json: model/descriptor/sel")


@pytest.mark.parametrize("argv, option", [
    (["--mpi-log", "collect"], "--mpi-log collect"),
    (["-m", "workers"], "--mpi-log workers"),
    (["-r", "model.ckpt", "--force-load"], "--force-load with --restart"),
])
def test_options_not_built_are_refused_in_one_line(run, capsys, argv, option):
    assert main(["train", "input.json", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlpot train: error: not supported yet: {option}") and err.count("\n") == 1


def test_deepmd_only_options_are_refused_for_other_configs(run, capsys):
    assert main(["convert", "input.json", "-o", "native.yaml"]) == 0
    for option in ("--skip-neighbor-stat", "--output"):
        argv = [option] + (["x.json"] if option == "--output" else [])
        assert main(["train", "native.yaml", *argv, "--output-dir", "x"]) == 2
        assert f"{option}: applies to DeePMD-kit inputs" in capsys.readouterr().err
