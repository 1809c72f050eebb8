"""NN_config.par and per-system readers: typing, validation rules, errors naming file and key."""

import numpy as np
import pytest

from mlpot.bands.inputs import read_band_weights, read_param_vector, read_system, read_system_bundle
from mlpot.bands.models import PP_MODELS, build_pp_model
from mlpot.config.deepseudopot import read_nn_config
from mlpot.errors import ConfigError, DataError

BASE = "PPmodel = Net_celu_HeInit_decayGaussian\nPPmodel_gaussian_std = 2.0\nnSystem = 1\nhiddenLayers = 8 8\n"


def _write(tmp_path, text, name="NN_config.par"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_typing_comments_lists_and_defaults(tmp_path):
    text = BASE + "# a comment with = sign\nSHOWPLOTS = 0   # headless\nmax_num_epochs = 3\nplotEvery = 1\n" \
        "schedulerStep = 2\noptimizer_lr = 0.01\nscheduler_gamma = 0.9\noptimizer = AdamW\n\nPPmodel_scale = 1 2.5\n"
    with pytest.warns(UserWarning, match="separateKptGrad"):
        cfg = read_nn_config(_write(tmp_path, text))
    assert cfg.hiddenLayers == [8, 8] and cfg.PPmodel_scale == [1.0, 2.5]
    assert cfg.SHOWPLOTS is False and cfg.separateKptGrad is True and cfg.optimizer == "adamw"
    assert cfg.patience == 4 and cfg.pre_adjust_stepSize == 0.005 and cfg.basis_mode == "sphere"
    assert cfg.mc_iter is None and cfg.nl_enabled is False


def test_shipped_ingaasp_config_loads(shared_data):
    with pytest.raises(ConfigError, match=r"NN_config.par: PPmodel: required"):
        read_nn_config(shared_data("bands/ingaasp"))  # the shipped file predates the PPmodel key


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


def test_mc_and_gradient_training_exclusive(tmp_path):
    text = BASE + "mc_bool = 1\nmax_num_epochs = 2\nplotEvery = 1\nschedulerStep = 1\noptimizer_lr = 0.1\nscheduler_gamma = 1\n"
    with pytest.raises(ConfigError, match=r"mc_bool: mc_bool = 1 cannot be combined with max_num_epochs > 0"):
        read_nn_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"optimizer: unknown optimizer 'adem'.*did you mean 'adam'"):
        read_nn_config(_write(tmp_path, BASE + "optimizer = adem\n"))


def test_compat_keys_warn(tmp_path):
    with pytest.warns(UserWarning, match="patience: accepted for compatibility"):
        read_nn_config(_write(tmp_path, BASE + "patience = 5\nseparateKptGrad = 0\n"))
    with pytest.warns(UserWarning, match="penalize_mag_threshold > 100"):
        read_nn_config(_write(tmp_path, BASE + "penalize_mag_threshold = 150\n"))


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


def test_model_catalog_shapes_and_gates():
    import torch
    q = torch.linspace(0, 12, 50, dtype=torch.float64)[:, None]
    options = dict(PPmodel_gaussian_std=2.0, PPmodel_decay_rate=1.5, PPmodel_decay_center=6.0, PPmodel_scale=[1.0, 2.0, 3.0])
    for name in PP_MODELS:
        model = build_pp_model(name, [1, 6, 6, 3], options).eval()
        assert model(q).shape == (50, 3), name
    gated = build_pp_model("Net_celu_HeInit_scale_decayGaussian", [1, 6, 3], options)
    plain = gated.neural_network(q)
    expected = plain * torch.exp(-q**2 / 8.0) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(gated(q), expected)
    assert "scale" in gated.state_dict() and "neural_network.hidden_l.0.weight" in gated.state_dict()
    state = {k: v for k, v in gated.state_dict().items() if k != "scale"}  # original checkpoints lack it
    gated.load_state_dict(state)
    with pytest.raises(ConfigError, match=r"PPmodel_scale: needs 3 values"):
        build_pp_model("Net_celu_HeInit_scale_decayGaussian", [1, 6, 3], dict(options, PPmodel_scale=[1.0]))
    with pytest.raises(ConfigError, match=r"PPmodel: unknown PPmodel 'Net_relu_xavir'.*did you mean 'Net_relu_xavier'"):
        build_pp_model("Net_relu_xavir", [1, 3])
