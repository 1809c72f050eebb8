"""DeePMD-kit's water se_e2_a input.json runs unchanged: train (lcurve.out), freeze, test.

The example file is examples/deepmd_water/input.json (DeePMD-kit's examples/water/se_e2_a/input.json
with the provided systems); only the system paths (through the shared_data fixture) and the run
length are changed here, as a user would for a smoke run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mlpot.cli import main

REPO = Path(__file__).resolve().parents[1]
STEPS = 4


@pytest.fixture
def water_run(tmp_path, shared_data, monkeypatch):
    config = json.loads((REPO / "examples" / "deepmd_water" / "input.json").read_text())
    training = config["training"]
    training["training_data"]["systems"] = [str(shared_data("deepmd_water/data_0")),
                                            str(shared_data("deepmd_water/data_1"))]
    training["validation_data"]["systems"] = [str(shared_data("deepmd_water/data_3"))]
    training["numb_steps"] = STEPS
    training["disp_freq"] = 2
    training["save_freq"] = 2
    (tmp_path / "input.json").write_text(json.dumps(config, indent=2))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_water_example_trains_freezes_and_tests(water_run, shared_data, capsys):
    assert main(["train", "input.json"]) == 0
    lines = (water_run / "lcurve.out").read_text().splitlines()
    assert lines[0].split() == ["#", "step", "rmse_val", "rmse_trn", "rmse_e_val", "rmse_e_trn",
                                "rmse_f_val", "rmse_f_trn", "lr"]
    assert lines[1].startswith("# If there is no available reference data")
    rows = np.loadtxt(water_run / "lcurve.out")
    assert rows[:, 0].tolist() == [1, 2, 4]  # displayed steps are 1-based: step 1, every disp_freq, last
    assert np.isfinite(rows).all()
    # untrained: force RMSE near the label RMS (0.82 eV/Å), per-atom energy error of a few meV once biased
    assert 0.3 < rows[-1, 5] < 2.0
    assert rows[0, -1] == pytest.approx(1e-3)
    assert re.fullmatch(r"\s+1(\s+\S+){7}", (water_run / "lcurve.out").read_text().splitlines()[2])
    assert (water_run / "checkpoint").read_text().strip() == f"model.ckpt-{STEPS}.pt"

    assert main(["freeze", "-o", "frozen_model.pt"]) == 0
    capsys.readouterr()
    data_3 = str(shared_data("deepmd_water/data_3"))
    assert main(["test", "-m", "frozen_model.pt", "-s", data_3, "-n", "3", "-d", "detail"]) == 0
    out = capsys.readouterr().out
    assert "# number of test data : 3" in out
    for name in ("Energy MAE", "Energy RMSE", "Energy MAE/Natoms", "Energy RMSE/Natoms", "Force  MAE", "Force  RMSE"):
        assert re.search(rf"^{re.escape(name)}\s+: \d\.\d{{6}}e[-+]\d\d eV", out, re.M), name
    assert "Virial" not in out  # the water data have no virial labels
    energy = np.loadtxt(water_run / "detail.e.out")
    forces = np.loadtxt(water_run / "detail.f.out")
    assert energy.shape == (3, 2) and forces.shape == (3 * 192, 6)
    assert (water_run / "detail.e.out").read_text().startswith(f"# {data_3}: data_e pred_e")
    force_rmse = float(re.search(r"^Force  RMSE\s+: (\S+)", out, re.M).group(1))
    assert force_rmse == pytest.approx(np.sqrt(np.mean((forces[:, 3:] - forces[:, :3]) ** 2)), rel=1e-6)


def test_linear_ener_input_with_a_pair_table_trains_freezes_and_tests(water_run, shared_data, capsys):
    """model/type linear_ener (a small se_e2_a model + pairtab, weights "sum") through input.json:
    the table's energy is left to the table, so the first energy error is that of the bias fit."""
    grid = np.round(np.arange(0.05, 6.5, 0.05), 10)
    pair = 0.3 * np.exp(-grid) * np.clip(6.0 - grid, 0.0, None) ** 2  # 4.2 eV/atom in water
    np.savetxt(water_run / "table.txt", np.column_stack([grid, pair, pair, pair]))
    config = json.loads((water_run / "input.json").read_text())
    standard = dict(config["model"])
    standard["descriptor"] = dict(standard["descriptor"], neuron=[4, 8], axis_neuron=4)
    standard["fitting_net"] = dict(standard["fitting_net"], neuron=[8])
    config["model"] = {"type": "linear_ener", "type_map": ["O", "H"], "weights": "sum",
                       "models": [standard, {"type": "pairtab", "tab_file": "table.txt", "rcut": 6.0, "sel": [46, 92]}]}
    (water_run / "input.json").write_text(json.dumps(config, indent=2))
    assert main(["train", "input.json", "--no-progress"]) == 0
    rows = np.loadtxt(water_run / "lcurve.out")
    # rmse_e_val per atom at step 1 (eV): the bias is fitted to E - E_table, so what is left is the
    # untrained net's output (~0.7 eV/atom), not the table's 4.2 eV/atom on top of it
    assert rows[0, 3] < 2.0
    assert main(["freeze", "-o", "frozen.pth"]) == 0
    assert main(["test", "-m", "frozen.pth", "-s", str(shared_data("deepmd_water/data_3")), "-n", "2"]) == 0
    assert "Force  RMSE" in capsys.readouterr().out


def test_type_embedding_input_trains(water_run):
    """DeePMD-kit's TF-era water se_e2_a_tebd layout: model/type_embedding next to an se_e2_a descriptor."""
    config = json.loads((water_run / "input.json").read_text())
    config["model"]["type_embedding"] = {"neuron": [2, 4, 8], "resnet_dt": False, "seed": 1}
    config["model"]["descriptor"].update(neuron=[4, 8], axis_neuron=4)
    config["model"]["fitting_net"]["neuron"] = [16]
    (water_run / "input.json").write_text(json.dumps(config, indent=2))
    assert main(["train", "input.json", "--no-progress"]) == 0
    rows = np.loadtxt(water_run / "lcurve.out")
    assert np.isfinite(rows).all() and rows[-1, 5] < 2.0  # rmse_f_val (eV/Å) of a barely trained model


def test_mixed_precision_and_profiling_keys_train(water_run):
    """training/mixed_precision (bfloat16 compute) and training/profiling through input.json."""
    config = json.loads((water_run / "input.json").read_text())
    config["model"]["descriptor"].update(neuron=[4, 8], axis_neuron=4)
    config["model"]["fitting_net"]["neuron"] = [16]
    config["training"]["mixed_precision"] = {"output_prec": "float32", "compute_prec": "bfloat16"}
    config["training"]["profiling"] = True
    config["training"]["profiling_file"] = "trace.json"
    config["learning_rate"]["smooth"] = True
    (water_run / "input.json").write_text(json.dumps(config, indent=2))
    assert main(["train", "input.json", "--no-progress"]) == 0
    rows = np.loadtxt(water_run / "lcurve.out")
    assert np.isfinite(rows).all()
    trace = json.loads((water_run / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "aten::mm" in names or "aten::addmm" in names
    # the matmuls of the profiled steps ran in bfloat16
    dtypes = {str(arg) for event in trace["traceEvents"] if event.get("name") == "aten::addmm"
              for arg in (event.get("args", {}).get("Input type") or [])}
    assert "c10::BFloat16" in dtypes


def test_change_bias_after_training_zeroes_the_mean_error_on_the_statistics_sample(water_run, shared_data, capsys):
    config = json.loads((water_run / "input.json").read_text())
    config["model"]["descriptor"].update(neuron=[4, 8], axis_neuron=4)
    config["model"]["fitting_net"]["neuron"] = [16]
    config["model"]["data_stat_nbatch"] = 3
    config["training"]["change_bias_after_training"] = True
    (water_run / "input.json").write_text(json.dumps(config, indent=2))
    assert main(["train", "input.json", "--no-progress"]) == 0
    assert "changed the energy bias after training by O" in capsys.readouterr().out
    assert main(["freeze", "-o", "frozen.pth"]) == 0
    errors = []
    for system in ("data_0", "data_1"):  # the statistics sample: the first 3 frames of each system
        assert main(["test", "-m", "frozen.pth", "-s", str(shared_data(f"deepmd_water/{system}")), "-n", "3",
                     "-d", f"detail_{system}"]) == 0
        table = np.loadtxt(water_run / f"detail_{system}.e.out")
        errors.append(table[:, 1] - table[:, 0])
    assert abs(np.concatenate(errors).mean()) < 1e-6  # eV per frame: the least-squares shift removed it
