"""NN_config.par front-end and per-system readers: typing, validation rules, errors naming file and key,
notes only about keys a file sets, "not supported yet" for documented features not built."""

import warnings

import numpy as np
import pytest

from mlpot.bands.inputs import read_band_weights, read_input_par, read_mc_opts, read_param_vector, read_system, \
    read_system_bundle
from mlpot.bands.models import PP_MODELS, build_pp_model
from mlpot.config.deepseudopot import convert, read_nn_config
from mlpot.errors import ConfigError, DataError

BASE = "PPmodel = Net_celu_HeInit_decayGaussian\nPPmodel_gaussian_std = 2.0\nnSystem = 1\nhiddenLayers = 8 8\n"


def _write(tmp_path, text, name="NN_config.par"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _folder(shared_data, tmp_path, extra="", base=BASE):
    """cdse_zb copy with the given NN_config.par."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for f in shared_data("bands/cdse_zb").iterdir():
        (folder / f.name).write_text(f.read_text())
    (folder / "NN_config.par").write_text(base + extra)
    return folder


def test_typing_comments_lists_and_native_defaults(shared_data, tmp_path):
    text = "# a comment with = sign\nSHOWPLOTS = 0   # headless\nmax_num_epochs = 3\nplotEvery = 1\n" \
        "schedulerStep = 2\noptimizer_lr = 0.01\nscheduler_gamma = 0.9\noptimizer = AdamW\n\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # notes are returned, never Python warnings
        config, notes = convert(_folder(shared_data, tmp_path, text))
    assert config.model.hidden == [8, 8] and config.model.gaussian_std == 2.0
    assert config.runtime.show_plots is False and config.training.separate_kpoint_grad is True
    assert config.training.optimizer == "adamw" and config.training.patience is None
    assert config.training.pre_adjust_step == 0.005 and config.hamiltonian.basis == "sphere"
    assert config.monte_carlo is None and config.nonlocal_enabled is False
    assert notes == []  # the file sets no key that deserves a note (separateKptGrad is only a default)


def test_notes_only_for_keys_the_file_sets(tmp_path):
    nn = read_nn_config(_write(tmp_path, BASE + "separateKptGrad = 1\npatience = 5\n"))
    assert any("separateKptGrad: one backward per k-point chunk" in n for n in nn.notes)
    assert any("patience: early stopping after 5 epochs" in n and "keeping the best model" in n for n in nn.notes)
    assert all(str(tmp_path) in n for n in nn.notes)


def test_ppmodel_missing_suggests_a_value(tmp_path):
    with pytest.raises(ConfigError, match=r"NN_config.par: PPmodel: required in every NN_config.par "
                                          r"\(e.g. PPmodel = Net_relu_xavier_decay2 \(needs no other key\)"):
        read_nn_config(_write(tmp_path, BASE.replace("PPmodel = Net_celu_HeInit_decayGaussian\n", "")))


def test_shipped_bundle_configs_lack_only_ppmodel(shared_data):
    for bundle in ("cdse_zb", "ingaasp"):
        with pytest.raises(ConfigError, match=r"NN_config.par: PPmodel: required"):
            read_nn_config(shared_data(f"bands/{bundle}"))


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"NN_config.par: optimzer_lr: line 5: unknown key \(did you mean 'optimizer_lr'\?\)"):
        read_nn_config(_write(tmp_path, BASE + "optimzer_lr = 0.1\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"NN_config.par: max_num_epochs: line 5: expected an integer, got 'ten'"):
        read_nn_config(_write(tmp_path, BASE + "max_num_epochs = ten\n"))
    with pytest.raises(ConfigError, match=r"SObool: line 5: expected a boolean written 0 or 1"):
        read_nn_config(_write(tmp_path, BASE + "SObool = yes\n"))
    with pytest.raises(ConfigError, match=r"hiddenLayers: line 4: expected a space-separated list of integers"):
        read_nn_config(_write(tmp_path, BASE.replace("8 8", "8 x")))


def test_missing_file_and_required_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.par: file not found"):
        read_nn_config(tmp_path / "nope.par")
    with pytest.raises(ConfigError, match=r"nSystem: required in every NN_config.par"):
        read_nn_config(_write(tmp_path, BASE.replace("nSystem = 1\n", "")))
    with pytest.raises(ConfigError, match=r"plotEvery: required when max_num_epochs > 0"):
        read_nn_config(_write(tmp_path, BASE + "max_num_epochs = 3\n"))
    with pytest.raises(ConfigError, match=r"init_Zunger_plotEvery: required when init_Zunger_num_epochs > 0"):
        read_nn_config(_write(tmp_path, BASE + "init_Zunger_num_epochs = 3\n"))
    with pytest.raises(ConfigError, match=r"PPmodel_gaussian_std: required by PPmodel = Net_celu_HeInit_decayGaussian"):
        read_nn_config(_write(tmp_path, BASE.replace("PPmodel_gaussian_std = 2.0\n", "")))


def test_mc_and_gradient_training_exclusive_and_optimizer_names(tmp_path):
    text = BASE + "mc_bool = 1\nmax_num_epochs = 2\nplotEvery = 1\nschedulerStep = 1\noptimizer_lr = 0.1\nscheduler_gamma = 1\n"
    with pytest.raises(ConfigError, match=r"mc_bool: mc_bool = 1 cannot be combined with max_num_epochs > 0"):
        read_nn_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"optimizer: unknown optimizer 'adem'.*did you mean 'adam'"):
        read_nn_config(_write(tmp_path, BASE + "optimizer = adem\n"))


def test_sparseadam_is_refused_not_a_traceback(tmp_path):
    with pytest.raises(ConfigError, match=r"not supported yet: .*NN_config.par/optimizer = sparseadam \(SparseAdam "
                                          r"needs sparse gradients"):
        read_nn_config(_write(tmp_path, BASE + "optimizer = sparseadam\n"))


@pytest.mark.parametrize("line", ["tot_magnetization = 2", "low_mem = 1", "nonlocal_grad = 1", "local_env_corr = 1",
                                  "trainLR = 1", "longRange_lr = 0.01"])
def test_documented_features_not_built_are_refused(tmp_path, line):
    key = line.split()[0]
    with pytest.raises(ConfigError, match=rf"not supported yet: .*NN_config.par/{key} "):
        read_nn_config(_write(tmp_path, BASE + line + "\n"))


def test_native_errors_are_reported_with_the_nn_config_key(shared_data, tmp_path):
    folder = _folder(shared_data, tmp_path, "max_num_epochs = 2\nplotEvery = 0\nschedulerStep = 1\noptimizer_lr = 0.1\n"
                                            "scheduler_gamma = 1\n")
    with pytest.raises(ConfigError, match=r"NN_config.par: plotEvery: line 6: Input should be greater than or equal to 1"):
        convert(folder)


def test_system_readers(shared_data, tmp_path):
    cell, symbols, positions = read_system(shared_data("bands/cdse_zb") / "system_0.par")
    assert symbols == ["Cd", "Se"] and np.allclose(positions[0], 11.4485278 * np.array([0.125, 0.125, 0.125]))
    params = read_param_vector(shared_data("bands/cdse_zb") / "init_CdParams.par")
    assert params.shape == (9,) and params[0] == -31.4518 and np.all(params[5:] == 0)
    with pytest.raises(DataError, match=r"bandWeights_0.par: bandWeights: 2 weights but nBands = 16"):
        read_band_weights(_write(tmp_path, "1\n2\n", "bandWeights_0.par"), 16)
    with pytest.raises(DataError, match=r"system_0.par: atoms: line 7: expected 'Symbol f1 f2 f3'"):
        read_system(_write(tmp_path, "scale = 1\ncell\n1 0 0\n0 1 0\n0 0 1\natoms\nCd 0 0\n", "system_0.par"))
    with pytest.raises(DataError, match=r"system_0.par: file not found"):
        read_system_bundle(tmp_path / "empty", 0)


def test_input_par_keys_typed_and_unknown_refused(tmp_path):
    settings = read_input_par(_write(tmp_path, "maxKE = 6\nnBands = 16\nrelE_bIdx = 7\nfit_defPot = 1\n"
                                               "systemName = GaAs\n", "input_0.par"))
    assert settings["relE_bIdx"] == 7 and settings["fit_defPot"] is True and settings["systemName"] == "GaAs"
    with pytest.raises(DataError, match=r"input_0.par: relE_bIx: line 3: unknown key \(did you mean 'relE_bIdx'\?\)"):
        read_input_par(_write(tmp_path, "maxKE = 6\nnBands = 16\nrelE_bIx = 7\n", "input_0.par"))


def test_mc_opts_reader(tmp_path):
    opts = read_mc_opts(_write(tmp_path, "betas = 100 1\nstepsAtTemp = 5 5\ntotalIter = 20\noptGaps = True\n", "mcOpts1.par"))
    assert opts["betas"] == [100.0, 1.0] and opts["stepsAtTemp"] == [5, 5] and opts["optGaps"] is True
    assert opts["defPotWeight"] == 1.0 and opts["tempStepSizeMod"] == [1.0, 1.0]
    with pytest.raises(DataError, match=r"mcOpts1.par: betas: line 1: expected 2 value\(s\) separated by spaces"):
        read_mc_opts(_write(tmp_path, "betas = 100, 1\n", "mcOpts1.par"))
    with pytest.raises(DataError, match=r"mcOpts1.par: totalIters: line 1: unknown key \(did you mean 'totalIter'\?\)"):
        read_mc_opts(_write(tmp_path, "totalIters = 5\n", "mcOpts1.par"))


def test_model_catalog_is_a_registry_with_shapes_and_gates():
    import torch

    q = torch.linspace(0, 12, 50, dtype=torch.float64)[:, None]
    options = dict(gaussian_std=2.0, decay_rate=1.5, decay_center=6.0, scale=[1.0, 2.0, 3.0])
    for name in PP_MODELS.names():
        model = build_pp_model(name, [1, 6, 6, 3], options).eval()
        assert model(q).shape == (50, 3), name
    gated = build_pp_model("Net_celu_HeInit_scale_decayGaussian", [1, 6, 3], options)
    plain = gated.neural_network(q)
    expected = plain * torch.exp(-q**2 / 8.0) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(gated(q), expected)
    assert "scale" in gated.state_dict() and "neural_network.hidden_l.0.weight" in gated.state_dict()
    state = {k: v for k, v in gated.state_dict().items() if k != "scale"}  # original checkpoints lack it
    gated.load_state_dict(state)
    with pytest.raises(ConfigError, match=r"model.scale: needs 3 values"):
        build_pp_model("Net_celu_HeInit_scale_decayGaussian", [1, 6, 3], dict(options, scale=[1.0]))
    with pytest.raises(ConfigError, match=r"model.type: unknown pseudopotential model 'Net_relu_xavir'.*did you mean "
                                          r"'Net_relu_xavier'"):
        build_pp_model("Net_relu_xavir", [1, 3])


def test_prefit_plot_every_minus_one_means_skip(shared_data, tmp_path):
    text = "init_Zunger_num_epochs = 3\ninit_Zunger_plotEvery = -1\ninit_Zunger_optimizer_lr = 0.01\n" \
           "init_Zunger_scheduler_gamma = 0.9\nnum_cores = 2\n"
    config, _ = convert(_folder(shared_data, tmp_path, text))
    assert config.prefit.plot_every == -1 and config.prefit.epochs == 3
    assert config.runtime.workers == 2 and config.runtime.threads is None  # num_cores: worker processes
