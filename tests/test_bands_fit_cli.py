"""End-to-end `mlpot bands fit` on a reduced cdse_zb folder (3 Ha, 4 k-points): gradient and Monte Carlo
modes, files and their precision, logs, errors, early stopping, exact restart after kill -9."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """PPmodel = Net_celu_HeInit_decayGaussian
PPmodel_gaussian_std = 2.0
nSystem = 1
hiddenLayers = 8 8
SHOWPLOTS = 0
init_Zunger_num_epochs = 4
init_Zunger_plotEvery = 2
init_Zunger_optimizer_lr = 0.02
init_Zunger_scheduler_gamma = 0.9
nQGrid = 256
nRGrid = 256
"""
TRAIN = "max_num_epochs = 3\nplotEvery = 2\nschedulerStep = 1\noptimizer_lr = 0.001\nscheduler_gamma = 0.5\n"


def _inputs(shared_data, tmp_path, extra, rows=(0, 20, 40, 60), max_ke=3, name="inputs"):
    src = shared_data("bands/cdse_zb")
    inputs = tmp_path / name
    inputs.mkdir()
    for f in ("system_0.par", "bandWeights_0.par", "init_CdParams.par", "init_SeParams.par"):
        (inputs / f).write_text((src / f).read_text())
    (inputs / "input_0.par").write_text(f"maxKE = {max_ke}\nnBands = 16\nsystemName = zb-CdSe\n")
    kpts = (src / "kpoints_0.par").read_text().splitlines()
    bands = (src / "expBandStruct_0.par").read_text().splitlines()
    (inputs / "kpoints_0.par").write_text("\n".join(kpts[r] for r in rows) + "\n")
    (inputs / "expBandStruct_0.par").write_text("\n".join(bands[r] for r in rows) + "\n")
    (inputs / "NN_config.par").write_text(CONFIG + extra)
    return inputs


def test_fit_gradient_mode_writes_results(shared_data, tmp_path, capsys):
    extra = TRAIN + "pre_adjust_moves = 1\nsmooth_reorder = 1\npenalize_starting = 4.5\npenalize_lambda = 1\n"
    inputs = _inputs(shared_data, tmp_path, extra)
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out)]) == 0
    for name in ("basisStates_0.dat", "oldFunc_BS_sys0.dat", "initZunger_PPmodel.pth", "init_train_cost.png",
                 "epoch_2_PPmodel.pth", "epoch_2_AdamState.pth", "epoch_2_plotBS.png", "final_training_cost.dat",
                 "final_validation_cost.dat", "final_pot_Cd.dat", "final_qSpace_pot.dat", "epoch_1_gradients.dat",
                 "metrics.csv", "bands.log"):
        assert (out / name).is_file(), name
    cost = np.loadtxt(out / "final_training_cost.dat")
    assert cost.shape == (4, 2) and cost[0, 0] == -1  # pre-adjust move logged with a negative epoch
    assert np.all(np.isfinite(cost[:, 1]))
    text = (out / "final_training_cost.dat").read_text().splitlines()[1]
    assert float(text.split()[1]) == cost[0, 1] and len(text.split()[1]) > 12  # full float64 digits
    metrics = np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)
    assert list(metrics["epoch"]) == [-1, 1, 2, 3]
    np.testing.assert_allclose(metrics["loss"], cost[:, 1], rtol=1e-15)
    captured = capsys.readouterr()
    assert "UserWarning" not in captured.out + captured.err and "%|" not in captured.err  # no tqdm spam off a TTY
    # eval of the saved model reproduces the written band file
    assert main(["bands", "eval", str(inputs), str(tmp_path / "ev"), "--model", str(out / "final_PPmodel.pth")]) == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "ev" / "eval_BS_sys0.dat"), np.loadtxt(out / "final_BS_sys0.dat"),
                               atol=2e-5)


def test_fewer_epochs_than_plot_every_writes_final_files(shared_data, tmp_path):
    """3 epochs with plotEvery = 100 (the shipped bundles' value) used to crash in the cost writer."""
    inputs = _inputs(shared_data, tmp_path, TRAIN.replace("plotEvery = 2", "plotEvery = 100"))
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out), "--quiet"]) == 0
    assert np.loadtxt(out / "final_training_cost.dat").shape == (3, 2)
    assert np.atleast_2d(np.loadtxt(out / "final_validation_cost.dat"))[-1, 0] == 3
    assert (out / "final_PPmodel.pth").is_file() and (out / "final_plotBS.png").is_file()


def test_fit_monte_carlo_mode(shared_data, tmp_path):
    extra = "mc_bool = 1\nmc_iter = 3\nmc_percentage = 0.05\nmc_beta = 10\nmc_perturb_mode = 4\n"
    inputs = _inputs(shared_data, tmp_path, extra)
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out), "--quiet"]) == 0
    rows = np.loadtxt(out / "final_mc_cost.dat")
    assert rows.shape == (3, 5) and np.all(np.diff(rows[:, 3]) <= 0)
    assert (out / "best_PPmodel.pth").is_file() and (out / "best_CdParams.dat").is_file()


@pytest.mark.parametrize("mode", [6, 7])
def test_spin_orbit_only_monte_carlo_modes_need_spin_orbit(shared_data, tmp_path, capsys, mode):
    extra = f"mc_bool = 1\nmc_iter = 2\nmc_percentage = 0.05\nmc_beta = 10\nmc_perturb_mode = {mode}\n"
    assert main(["bands", "fit", str(_inputs(shared_data, tmp_path, extra)), str(tmp_path / "r"), "--quiet"]) == 2
    assert f"perturb_mode = {mode} moves only the" in capsys.readouterr().err


def test_fit_bad_config_is_one_line_error(shared_data, tmp_path, capsys):
    inputs = _inputs(shared_data, tmp_path, "max_num_epoch = 3\n")
    assert main(["bands", "fit", str(inputs), str(tmp_path / "r")]) == 2
    assert "max_num_epoch: line 12: unknown key (did you mean 'max_num_epochs'?)" in capsys.readouterr().err


def test_epochs_without_a_learning_rate_is_one_line_error(shared_data, tmp_path, capsys):
    """--epochs on a folder that sets no optimizer_lr (a pre-fit-only folder) names the option."""
    inputs = _inputs(shared_data, tmp_path, "")
    assert main(["bands", "fit", str(inputs), str(tmp_path / "r"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "--epochs: training.lr is required when training.epochs > 0: give a learning rate" in err and "Traceback" not in err


def test_stale_adam_state_with_sgd_is_a_clear_error(shared_data, tmp_path, capsys):
    inputs = _inputs(shared_data, tmp_path, TRAIN + "optimizer = sgd\n")
    params = [torch.nn.Parameter(torch.zeros(3))]
    torch.save(torch.optim.Adam(params).state_dict(), inputs / "init_AdamState.pth")
    assert main(["bands", "fit", str(inputs), str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "init_AdamState.pth: holds the state of an Adam-family optimizer" in err and "optimizer = sgd needs" in err
    assert "KeyError" not in err


def test_wrong_architecture_init_model_message_is_complete(shared_data, tmp_path, capsys):
    from mlpot.bands.models import build_pp_model

    inputs = _inputs(shared_data, tmp_path, "")
    torch.save(build_pp_model("Net_celu_HeInit_decayGaussian", [1, 20, 20, 2], {"gaussian_std": 2.0}).state_dict(),
               inputs / "init_PPmodel.pth")
    assert main(["bands", "fit", str(inputs), str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the file holds a [1, 20, 20, 2] network, the config asks for GatedNet [1, 8, 8, 2]" in err
    assert "shape (file vs config): neural_network.hidden_l.0.weight (20, 1) vs (8, 1)" in err


def test_early_stopping_keeps_the_best_model(shared_data, tmp_path):
    """A learning rate far too large makes the loss rise; patience stops the run at the best epoch."""
    extra = TRAIN.replace("max_num_epochs = 3", "max_num_epochs = 12").replace("optimizer_lr = 0.001", "optimizer_lr = 5") \
        .replace("scheduler_gamma = 0.5", "scheduler_gamma = 1.0") + "patience = 1\n"
    inputs = _inputs(shared_data, tmp_path, extra)
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out), "--quiet"]) == 0
    cost = np.loadtxt(out / "final_training_cost.dat")
    assert len(cost) < 12  # stopped early
    log = (out / "bands.log").read_text()
    assert "early stop at epoch" in log and "keeping the model of epoch" in log
    final = float(np.atleast_2d(np.loadtxt(out / "final_validation_cost.dat"))[-1, 1])
    assert final == pytest.approx(cost[:, 1].min(), rel=1e-9)


def test_print_grad_logs_per_layer_norms(shared_data, tmp_path):
    inputs = _inputs(shared_data, tmp_path, TRAIN + "printGrad = 1\ninit_Zunger_printGrad = 1\n")
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out), "--quiet"]) == 0
    log = (out / "bands.log").read_text()
    assert "epoch 2 gradient norms: neural_network.hidden_l.0.weight" in log
    assert "pre-fit epoch 2 gradient norms: neural_network.hidden_l.0.weight" in log


def test_relative_band_per_system_from_input_par(shared_data, tmp_path):
    from mlpot.bands.setup import load_setup
    from mlpot.commands.bands import load_band_config

    inputs = _inputs(shared_data, tmp_path, "relE_bIdx = 2\n")
    (inputs / "input_0.par").write_text("maxKE = 3\nnBands = 16\nrelE_bIdx = 7\n")
    config, _ = load_band_config(inputs)
    assert config.hamiltonian.relative_band == 2
    assert load_setup(config).problem.rel_bands == [7]  # input_X.par overrides NN_config.par


_RESTART_CONFIG = TRAIN.replace("max_num_epochs = 3", "max_num_epochs = 8").replace("plotEvery = 2", "plotEvery = 5") \
    + "perturbEvery = 3\n"


def _run_cli(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "mlpot.cli", "bands", "fit", *map(str, args), "--quiet"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_restart_after_kill_reaches_the_same_numbers(shared_data, tmp_path):
    """kill -9 in the middle of training, ``--restart``: same costs and weights as an uninterrupted run."""
    inputs = _inputs(shared_data, tmp_path, _RESTART_CONFIG, rows=tuple(range(0, 61, 5)), max_ke=4)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run_cli([inputs, full]).wait() == 0
    process = _run_cli([inputs, cut])
    deadline = time.time() + 300
    while time.time() < deadline and not (cut / "bands.ckpt-3.pt").exists():
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (cut / "final_PPmodel.pth").exists()
    resumed = _run_cli([inputs, cut, "--restart"])
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err.decode()
    for name in ("final_training_cost.dat", "final_validation_cost.dat", "final_BS_sys0.dat"):
        assert (cut / name).read_text() == (full / name).read_text(), name
    a, b = torch.load(full / "final_PPmodel.pth"), torch.load(cut / "final_PPmodel.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = np.genfromtxt(cut / "metrics.csv", delimiter=",", names=True)
    assert list(rows["epoch"]) == list(range(1, 9))
    np.testing.assert_array_equal(rows["loss"], np.genfromtxt(full / "metrics.csv", delimiter=",", names=True)["loss"])


@pytest.mark.slow
def test_num_cores_runs_worker_processes_with_the_serial_results(shared_data, tmp_path):
    serial = _inputs(shared_data, tmp_path, TRAIN, name="serial")
    pooled = _inputs(shared_data, tmp_path, TRAIN + "num_cores = 2\n", name="pooled")
    for inputs in (serial, pooled):
        assert main(["bands", "fit", str(inputs), str(tmp_path / f"out_{inputs.name}"), "--quiet"]) == 0
    a = np.loadtxt(tmp_path / "out_serial" / "final_training_cost.dat")
    b = np.loadtxt(tmp_path / "out_pooled" / "final_training_cost.dat")
    np.testing.assert_allclose(b, a, rtol=1e-10)
