"""The shipped DeePseudopot bundles, unchanged but for the one required key they lack (``PPmodel``)."""

import numpy as np
import pytest

from mlpot.cli import main

PPMODEL_LINE = "\nPPmodel = Net_relu_xavier_decay2\n"  # the key the bundles predate; needs no other key


def _copy(shared_data, tmp_path, bundle, extra=""):
    folder = tmp_path / bundle
    folder.mkdir()
    for f in shared_data(f"bands/{bundle}").iterdir():
        (folder / f.name).write_text(f.read_text())
    with open(folder / "NN_config.par", "a") as handle:
        handle.write(PPMODEL_LINE + extra)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["cdse_zb", "ingaasp"])
def test_shipped_bundle_runs_three_epochs_and_writes_final_files(shared_data, tmp_path, bundle):
    """max_num_epochs overridden to 3 (--epochs); plotEvery (50 / 100) stays larger than the run."""
    inputs = _copy(shared_data, tmp_path, bundle)
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out), "--epochs", "3", "--quiet"]) == 0
    assert np.loadtxt(out / "final_training_cost.dat").shape == (3, 2)
    n_systems = 1 if bundle == "cdse_zb" else 4
    for name in ["final_PPmodel.pth", "final_plotBS.png", "final_plotPP.png", "final_validation_cost.dat",
                 "final_train_cost.png", "initZunger_PPmodel.pth", "metrics.csv"] + \
            [f"final_BS_sys{i}.dat" for i in range(n_systems)]:
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_ingaasp_fit_improves_without_oscillation(shared_data, tmp_path):
    """Shipped config (1000-epoch pre-fit, best epoch kept; Adam) with optimizer_lr = 0.0005: the weighted
    band RMSE falls monotonically below its starting value over 30 epochs. (The shipped 0.005, and the
    0.002 of the run in issue 16, oscillate: Adam's first steps move every weight by about lr, too much
    for a loss summed over 4 x 61 k x 16 bands with weights up to 200.)"""
    inputs = _copy(shared_data, tmp_path, "ingaasp", "optimizer_lr = 0.0005\n")
    out = tmp_path / "results"
    assert main(["bands", "fit", str(inputs), str(out), "--epochs", "30", "--quiet"]) == 0
    rmse = np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)["rmse_eV"]
    print("ingaasp weighted RMSE per epoch (eV):", [round(float(r), 4) for r in rmse])
    assert len(rmse) == 30 and rmse[-1] < rmse[0] - 0.01
    # no oscillation: a rise of at most 1 meV between epochs (the shipped lr rises by 60-200 meV at
    # once); the exact curve depends on the thread count through the 1000-epoch pre-fit's best epoch
    assert np.all(np.diff(rmse) < 1e-3), "the curve oscillates"
