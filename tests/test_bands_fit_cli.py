"""End-to-end `mlpot bands fit` on a reduced cdse_zb folder (3 Ha, 4 k-points): gradient and MC modes."""

import numpy as np
import pytest

from mlpot.cli import main

CONFIG = """PPmodel = Net_celu_HeInit_decayGaussian
PPmodel_gaussian_std = 2.0
nSystem = 1
hiddenLayers = 8 8
SHOWPLOTS = 0
separateKptGrad = 1
init_Zunger_num_epochs = 4
init_Zunger_plotEvery = 2
init_Zunger_optimizer_lr = 0.02
init_Zunger_scheduler_gamma = 0.9
nQGrid = 256
nRGrid = 256
"""


def _inputs(shared_data, tmp_path, extra):
    src = shared_data("bands/cdse_zb")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("system_0.par", "bandWeights_0.par", "init_CdParams.par", "init_SeParams.par"):
        (inputs / name).write_text((src / name).read_text())
    (inputs / "input_0.par").write_text("maxKE = 3\nnBands = 16\n")
    rows = [0, 20, 40, 60]
    kpts = (src / "kpoints_0.par").read_text().splitlines()
    bands = (src / "expBandStruct_0.par").read_text().splitlines()
    (inputs / "kpoints_0.par").write_text("\n".join(kpts[r] for r in rows) + "\n")
    (inputs / "expBandStruct_0.par").write_text("\n".join(bands[r] for r in rows) + "\n")
    (inputs / "NN_config.par").write_text(CONFIG + extra)
    return inputs


def test_fit_gradient_mode_writes_results(shared_data, tmp_path):
    extra = "max_num_epochs = 3\nplotEvery = 2\nschedulerStep = 1\noptimizer_lr = 0.001\nscheduler_gamma = 0.5\n" \
            "pre_adjust_moves = 1\nsmooth_reorder = 1\npenalize_starting = 4.5\npenalize_lambda = 1\n"
    inputs = _inputs(shared_data, tmp_path, extra)
    out = tmp_path / "results"
    with pytest.warns(UserWarning):
        assert main(["bands", "fit", str(inputs), str(out), "--quiet"]) == 0
    for name in ("basisStates_0.dat", "oldFunc_BS_sys0.dat", "initZunger_PPmodel.pth", "init_train_cost.png",
                 "epoch_2_PPmodel.pth", "epoch_2_AdamState.pth", "epoch_2_plotBS.png", "final_training_cost.dat",
                 "final_validation_cost.dat", "final_pot_Cd.dat", "final_qSpace_pot.dat", "preEpoch_1_PPmodel.pth",
                 "epoch_1_gradients.dat"):
        assert (out / name).is_file(), name
    cost = np.loadtxt(out / "final_training_cost.dat")
    assert cost.shape == (4, 2) and cost[0, 0] == -1  # pre-adjust move logged with a negative epoch
    assert np.all(np.isfinite(cost[:, 1]))
    # eval of the saved model reproduces the written band file
    assert main(["bands", "eval", str(inputs), str(tmp_path / "ev"), "--model", str(out / "final_PPmodel.pth")]) == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "ev" / "eval_BS_sys0.dat"), np.loadtxt(out / "final_BS_sys0.dat"),
                               atol=2e-5)


def test_fit_monte_carlo_mode(shared_data, tmp_path):
    extra = "mc_bool = 1\nmc_iter = 3\nmc_percentage = 0.05\nmc_beta = 10\nmc_perturb_mode = 4\n"
    inputs = _inputs(shared_data, tmp_path, extra)
    out = tmp_path / "results"
    with pytest.warns(UserWarning):
        assert main(["bands", "fit", str(inputs), str(out), "--quiet"]) == 0
    rows = np.loadtxt(out / "final_mc_cost.dat")
    assert rows.shape == (3, 5) and np.all(np.diff(rows[:, 3]) <= 0)
    assert (out / "best_PPmodel.pth").is_file() and (out / "best_CdParams.dat").is_file()


def test_fit_bad_config_is_one_line_error(shared_data, tmp_path, capsys):
    inputs = _inputs(shared_data, tmp_path, "max_num_epoch = 3\n")
    assert main(["bands", "fit", str(inputs), str(tmp_path / "r")]) == 2
    assert "max_num_epoch: line 13: unknown key (did you mean 'max_num_epochs'?)" in capsys.readouterr().err
