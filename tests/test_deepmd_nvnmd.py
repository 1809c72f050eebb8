"""NVNMD emulated in software (mlpot.models.deepmd.nvnmd, mlpot train-nvnmd, the nvnmd section).

The quantisation helpers against hand-computed values (and DeePMD-kit's own ops: 1/3 and pi in its
short float, measured with its flt_nvnmd op); the quantised model (QNN) against the continuous one
(CNN) on water within the quantisation error; the two-stage flow (stage 2 starts from stage 1's
weights; DeePMD-kit's files); bad nvnmd keys; and DeePMD-kit 3.2's own TF numbers of the same
weights (``test_reproduces_deepmd_kit_tf``: ``tests/peer_models/deepmd/nvnmd_reference.npz``, from
``tests/peer_models/make_nvnmd_reference.py``; the weights come from a formula, nothing large is
committed). Version 1 (se_atten, up to 32 types): DeePMD-kit's CNN and QNN of the same kind of
weights (``nvnmd_v1_reference.npz`` from ``make_nvnmd_v1_reference.py``), forces and invariance,
both train-nvnmd stages and their files, the checks of its input and model section.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.calculators.evaluate import iterate_predictions
from mlpot.cli import main
from mlpot.config import deepmd
from mlpot.data import read_frames
from mlpot.errors import ConfigError
from mlpot.models.deepmd.nvnmd.files import export_weights, import_weights, read_npy_dict
from mlpot.models.deepmd.nvnmd.tables import build_tables, build_tables_v1
from mlpot.models.registry import build_model
from mlpot.nn.quantize import (cubic_table, fixed_matmul, fixed_point, float_add, float_matmul, short_float, tanh4,
                                tanh4_fixed)

NVNMD = {"version": 0, "max_nnei": 128, "net_size": 128, "sel": [46, 92], "rcut": 6.0, "rcut_smth": 0.5,
         "type_map": ["O", "H"]}


def _input(systems, **nvnmd) -> dict:
    return {"nvnmd": {**NVNMD, **nvnmd},
            "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 3e-8, "decay_steps": 5000},
            "loss": {"start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1},
            "training": {"seed": 1, "stop_batch": 1, "numb_test": 1, "disp_freq": 1, "save_freq": 1,
                         "training_data": {"systems": systems, "batch_size": 1}}}


def _section(quantize: bool = False) -> dict:
    return {"type_map": ["O", "H"],
            "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut": 6.0, "rcut_smth": 0.5, "neuron": [8, 16, 32],
                           "axis_neuron": 4, "type_one_side": True, "resnet_dt": False, "seed": 1},
            "fitting_net": {"type": "ener", "neuron": [128] * 3, "activation_function": "tanh4", "resnet_dt": False,
                            "seed": 2},
            "nvnmd": {"quantize_descriptor": quantize, "quantize_fitting_net": quantize}}


def _predict(model, frames):
    out = [p for _, p in iterate_predictions(model, frames)]
    return np.array([p["energy"] for p in out]), np.stack([p["forces"] for p in out])


@pytest.fixture(scope="module")
def frames(shared_data):
    return read_frames(shared_data("deepmd_water/data_3"), type_map=["O", "H"])[:2]


def test_quantisation_helpers_give_hand_computed_values():
    x = torch.tensor([1 / 3, -1 / 3, 0.1, 1.5], dtype=torch.float64)
    assert fixed_point(x, 23).tolist() == [2796203 / 2**23, -2796203 / 2**23, 838861 / 2**23, 1.5]
    assert fixed_point(x, 23, "floor").tolist() == [2796202 / 2**23, -2796203 / 2**23, 838860 / 2**23, 1.5]
    # 21-bit mantissas cut toward zero: DeePMD-kit's flt_nvnmd gives these very numbers
    short = short_float(torch.tensor([1 / 3, -1 / 3, np.pi, 0.0], dtype=torch.float64)).tolist()
    assert short == [0.33333325386047363, -0.33333325386047363, 3.141592025756836, 0.0]
    assert tanh4(torch.tensor([0.5, 1.0, -1.5, 3.0], dtype=torch.float64)).tolist() == [0.47265625, 0.8125, -0.97265625, 1.0]
    y = torch.tensor([0.3, -2.0], dtype=torch.float64, requires_grad=True)
    (fixed_point(y, 4) + short_float(y, 3)).sum().backward()
    assert y.grad.tolist() == [2.0, 2.0]  # straight through both roundings
    with pytest.raises(ValueError, match="'round' or 'floor'"):
        fixed_point(x, 3, "ceil")


def test_hardware_arithmetic_gives_hand_computed_values():
    """NVNMD's sum, matrix products and tanh4 as DeePMD-kit's ops compute them (the helpers equal
    its add_flt / matmul_flt / matmul_flt2fix / tanh4_flt ops on random inputs, probed through them)."""
    one, tiny = torch.tensor([1.0], dtype=torch.float64), torch.tensor([-(2.0**-22)], dtype=torch.float64)
    assert short_float(one + tiny).item() == 1 - 2.0**-21  # the exact sum, cut to 21 bits...
    assert float_add(one, tiny).item() == 1.0  # ...but the hardware cuts the smaller term first
    x = torch.tensor([[1.0, -(2.0**-22)]], dtype=torch.float64)
    assert float_matmul(x, torch.ones(2, 1, dtype=torch.float64)).item() == 1.0
    third = torch.full((1, 2), 1 / 3, dtype=torch.float64)
    assert fixed_point(third @ third.T, 3).item() == 0.25 and fixed_matmul(third, third.T, 3).item() == 0.0
    assert tanh4_fixed(torch.tensor([0.5, -3.0], dtype=torch.float64)).tolist() == [0.47265625, -1.0]
    assert tanh4_fixed(torch.tensor([0.3], dtype=torch.float64)).item() == 2464205 / 2**23  # floor steps, below...
    assert tanh4(torch.tensor([0.3], dtype=torch.float64)).item() * 2**23 > 2464206  # ...tanh4(0.3) = 0.29375625


def test_cubic_table_reproduces_a_cubic_and_its_slope():
    f, df = (lambda x: x**3 - 2 * x + 1), (lambda x: 3 * x**2 - 2)
    from mlpot.models.deepmd.nvnmd.tables import _hermite

    segments = [[0.0, 1.0, 0.25, 0, 4], [0.0, 2.0, 0.5, 4, 8]]  # fine [0, 1], then coarse [0, 2]
    fine = np.linspace(0.0, 2.0, 17)
    coef = torch.as_tensor(_hermite(fine, f(fine)[:, None], df(fine)[:, None], segments))
    x = torch.tensor([0.0, 0.3, 0.99, 1.2, 1.9], dtype=torch.float64, requires_grad=True)
    y = cubic_table(x, coef, segments)[:, 0]
    assert torch.allclose(y, torch.as_tensor(f(x.detach().numpy())), atol=1e-12)
    (slope,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(slope, torch.as_tensor(df(x.detach().numpy())), atol=1e-12)
    # with a slope table (here of 2 x + 5, a made-up slope) the value stays, the derivative is the table's
    slope_coef = torch.as_tensor(_hermite(fine, (2 * fine + 5)[:, None], np.full((17, 1), 2.0), segments))
    y2 = cubic_table(x, coef, segments, slope=slope_coef)[:, 0]
    assert torch.equal(y2, y)
    (slope2,) = torch.autograd.grad(y2.sum(), x)
    assert torch.allclose(slope2, 2 * x.detach() + 5, atol=1e-12)


def _cnn_and_qnn(frames):
    cnn = build_model(_section())
    with torch.no_grad():
        cnn.descriptor.davg.copy_(torch.tensor([[0.05, 0.0, 0.0, 0.0]] * 2))
        cnn.descriptor.dstd.copy_(torch.tensor([[0.1, 0.08, 0.08, 0.08]] * 2))
        cnn.fitting.bias_atom.copy_(torch.tensor([[-93.5], [-187.0]]))
    qnn = build_model(_section(quantize=True))
    qnn.load_state_dict(cnn.state_dict(), strict=False)
    qnn.descriptor.set_tables(build_tables(cnn.descriptor, min_nbor_dist=0.9))
    return cnn, qnn


def test_quantised_model_agrees_with_the_continuous_one(frames):
    cnn, qnn = _cnn_and_qnn(frames)
    e_cnn, f_cnn = _predict(cnn, frames)
    e_qnn, f_qnn = _predict(qnn, frames)
    assert np.all(e_qnn != e_cnn)  # the quantisation does change the numbers...
    assert np.abs(e_qnn - e_cnn).max() / 192 < 2e-6  # ...by 1.7e-7 eV/atom (23 fraction bits, tables)
    assert np.abs(f_qnn - f_cnn).max() < 1e-3 * np.abs(f_cnn).max()  # measured 1.2e-5 of 0.06 eV/Å
    seen = []
    qnn.descriptor.register_forward_hook(lambda module, inputs, output: seen.append(output[0].detach()))
    _predict(qnn, frames[:1])
    assert torch.equal(seen[0], torch.floor(seen[0] * 2**23) / 2**23)  # the fitting reads fixed point


def test_two_stages_restore_the_first_and_write_deepmd_kit_files(tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train_cnn.json").write_text(json.dumps(_input([str(shared_data("deepmd_water/data_3"))])))
    assert main(["train-nvnmd", "train_cnn.json", "-s", "s1", "--no-progress"]) == 0
    assert main(["train-nvnmd", "train_cnn.json", "-s", "s2", "--no-progress"]) == 0
    for name in ("frozen_model.pt", "weight.npy", "config.npy", "map.npy", "lcurve.out", "train.json"):
        assert (tmp_path / "nvnmd_cnn" / name).is_file(), name
    assert "model.pb" in capsys.readouterr().out  # named as not written
    tables = read_npy_dict(tmp_path / "nvnmd_cnn/map.npy")
    assert [np.shape(g) for g in tables["g"]] == [(512, 128)] * 2 and tables["cfg_u2s"] == [[0.0, 64.0, 0.125, 0, 512]]
    config = read_npy_dict(tmp_path / "nvnmd_qnn/config.npy")
    assert config["dscp"]["NIX"] == 128 and config["fitn"]["NNODE_FITS"] == [128, 128, 128, 128, 1]
    from mlpot.calculators.export import load_model

    cnn = load_model(tmp_path / "nvnmd_cnn/frozen_model.pt")
    restored = load_model(tmp_path / "nvnmd_qnn/restored_cnn.pt")
    qnn = load_model(tmp_path / "nvnmd_qnn/frozen_model.pt")
    assert qnn.descriptor.quantize and qnn.fitting.quantize and not cnn.descriptor.quantize
    for name, value in cnn.state_dict().items():  # stage 2 starts from stage 1: weights, statistics, bias
        if name != "fitting.out_std":  # a statistic weight.npy does not hold (no part of the forward)
            assert torch.equal(restored.state_dict()[name], value), name
    frames = read_frames(shared_data("deepmd_water/data_3"), type_map=["O", "H"])[:1]
    (e_cnn, _), (e_restored, _) = _predict(cnn, frames), _predict(restored, frames)
    assert 0 < abs(e_restored[0] - e_cnn[0]) / 192 < 2e-6
    assert main(["test", "-m", str(tmp_path / "nvnmd_qnn/frozen_model.pt"), "-s",
                 str(shared_data("deepmd_water/data_3")), "-n", "1"]) == 0
    from ase import Atoms

    from mlpot.calculators.ase import MlpotCalculator

    frame = frames[0]
    atoms = Atoms(["O" if t == 0 else "H" for t in frame["atom_types"]], positions=frame["positions"],
                  cell=frame["cell"], pbc=True)
    atoms.calc = MlpotCalculator(str(tmp_path / "nvnmd_qnn/frozen_model.pt"))
    e_qnn, _ = _predict(qnn, frames)
    assert abs(atoms.get_potential_energy() - e_qnn[0]) < 1e-8


@pytest.mark.parametrize("change, key, message", [
    ({"version": 2}, "nvnmd/version", "expected 0 or 1, got 2"),
    ({"version": 1}, "nvnmd/sel", "version 1 takes one sel for all types"),
    ({"version": 1, "sel": 96, "quantize_descriptor": True}, "nvnmd/map_file", "needs the tables"),
    ({"version": 1, "sel": 130}, "model/descriptor/sel", "sel = 130 exceeds nvnmd max_nnei = 128"),
    ({"version": 1, "sel": 96, "type_map": [f"X{i}" for i in range(33)]}, "model/type_map", "at most 32 atom types"),
    ({"max_nnei": 64}, "nvnmd/max_nnei", "expected 128 or 256"),
    ({"net_size": 64}, "nvnmd/net_size", "128 wide"),
    ({"sel": [46, 130]}, "model/descriptor/sel", r"sel\[1\] = 130 exceeds nvnmd max_nnei = 128"),
    ({"enable": False}, "nvnmd/enable", "trained by mlpot train-nvnmd"),
    ({"restore_descriptor": True}, "nvnmd/restore_descriptor", "not supported yet: nvnmd/restore_descriptor"),
    ({"weight_file": "w.npy"}, "nvnmd/weight_file", "not supported yet: nvnmd/weight_file"),
    ({"quantize_descriptor": True}, "nvnmd/map_file", "needs the tables"),
    ({"map_file": "map.npy"}, "nvnmd/map_file", "quantised descriptor only"),
    ({"quantise_fitting_net": True}, "nvnmd/quantise_fitting_net", "unknown key.*quantize_fitting_net"),
    ({"config_file": "missing.npy"}, "nvnmd/config_file", "no such file"),
])
def test_bad_nvnmd_keys_are_named(tmp_path, change, key, message):
    config = _input(["sys"], **{"enable": True, **change})
    with pytest.raises(ConfigError, match=message) as error:
        native = deepmd.convert_dict(config, base_dir=tmp_path, file="train_cnn.json")
        build_model(native["model"])
    assert key in str(error.value).replace(".", "/")  # the key path (DeePMD's "/" when read via convert)


def test_model_section_with_disabled_nvnmd_is_a_plain_model(tmp_path):
    config = _input(["sys"])
    nvnmd = {"enable": False}
    config["nvnmd"] = nvnmd
    config["model"] = {"type_map": ["O", "H"], "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut": 6.0},
                       "fitting_net": {"neuron": [16]}}
    checked = deepmd.check_keys(config)
    assert "nvnmd" not in checked["model"]
    config["nvnmd"] = {"enable": False, "quantize_descriptor": True}
    with pytest.raises(ConfigError, match="nvnmd.quantize_descriptor: has no effect while nvnmd/enable is false"):
        deepmd.check_keys(config)


REFERENCE = Path(__file__).parent / "peer_models" / "deepmd" / "nvnmd_reference.npz"


def _reference_model(reference, quantize: bool):
    """The model of tests/peer_models/make_nvnmd_reference.py: formula weights, DeePMD-kit's statistics
    and bias; the quantised one with mlpot's own tables."""
    from tests.peer_models.nvnmd_weights import formula_weights

    model = build_model(_section())
    shapes = {name: value.shape for name, value in export_weights(model, 1.0).items()
              if name.startswith(("filter_type_all", "layer_", "final_layer"))}
    n_slots = model.descriptor.n_slots
    weights = {**formula_weights(shapes), "descrpt_attr.t_avg": np.tile(reference["davg"], (1, n_slots)),
               "descrpt_attr.t_std": np.tile(reference["dstd"], (1, n_slots)), "t_bias_atom_e": reference["bias"]}
    import_weights(model, weights)
    if not quantize:
        return model
    qnn = build_model(_section(quantize=True))
    qnn.load_state_dict(model.state_dict(), strict=False)
    qnn.descriptor.set_tables(build_tables(model.descriptor, float(reference["min_nbor_dist"])))
    return qnn


@pytest.mark.parametrize("stage, tolerance", [("cnn", (1e-9, 1e-12)), ("qnn", (1e-5, 2e-6))])  # measured: 1e-11, 2e-16; 1.3e-6, 7.4e-7
def test_reproduces_deepmd_kit_tf(stage, tolerance, frames):
    reference = dict(np.load(REFERENCE))
    model = _reference_model(reference, quantize=stage == "qnn")
    energy, forces = _predict(model, frames)
    assert np.abs(energy - reference[f"{stage}/energy"]).max() < tolerance[0]
    assert np.abs(forces - reference[f"{stage}/forces"]).max() < tolerance[1]


def _small_section(**descriptor) -> dict:
    section = _section()
    section["descriptor"].update(sel=[12, 12], rcut=3.5, **descriptor)
    return section


def test_continuous_model_forces_virial_and_invariance():
    import mlpot.testing as T

    model = build_model(_small_section())
    with torch.no_grad():
        model.descriptor.davg.copy_(torch.tensor([[0.1, 0.0, 0.0, 0.0]] * 2))
        model.descriptor.dstd.copy_(torch.tensor([[0.2, 0.15, 0.15, 0.15]] * 2))
    batch = T.random_batch(2, [8, 7], seed=1)
    T.assert_derivatives_match_fd(model, batch)
    T.assert_invariant(model, batch, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("descriptor, fitting, key, message", [
    ({"type_one_side": False}, {}, "model/descriptor/type_one_side", "NVNMD needs type_one_side true"),
    ({"resnet_dt": True}, {}, "model/descriptor/resnet_dt", "NVNMD needs resnet_dt"),
    ({"activation_function": "gelu"}, {}, "model/descriptor/activation_function", "needs activation_function tanh"),
    ({}, {"activation_function": "tanh"}, "model/fitting_net/activation_function", "use activation_function tanh4"),
    ({}, {"numb_fparam": 1}, "model/fitting_net", "descriptor only"),
    ({"type": "se_e2_r"}, {}, "model/descriptor/type", "uses descriptor se_e2_a"),
])
def test_native_nvnmd_sections_are_checked(descriptor, fitting, key, message):
    section = _small_section(**descriptor)
    section["fitting_net"].update(fitting)
    with pytest.raises(ConfigError, match=message) as error:
        build_model(section)
    assert key in str(error.value).replace(".", "/")


def test_quantised_model_without_tables_and_compression_are_refused(frames):
    from mlpot.models.deepmd.compression import compress_model

    qnn = build_model(_section(quantize=True))
    with pytest.raises(ConfigError, match="has no tables: give nvnmd/map_file"):
        _predict(qnn, frames[:1])
    with pytest.raises(ConfigError, match="not supported yet: compressing an NVNMD model"):
        compress_model(build_model(_section()), 0.9)
    section = _section()
    section["nvnmd"]["map_file"] = "map.npy"
    with pytest.raises(ConfigError, match="quantised descriptor only"):
        build_model(section)


# ---- version 1: NVNMD's se_atten variant (continuous stage) ------------------------------------------

NVNMD_V1 = {**NVNMD, "version": 1, "sel": 128}
REFERENCE_V1 = Path(__file__).parent / "peer_models" / "deepmd" / "nvnmd_v1_reference.npz"
_V1_NETS = ("type_embed_net", "filter_type_all", "layer_", "final_layer")


def _v1_model(**nvnmd):
    """A version-1 model of NVNMD_V1 (+ ``nvnmd`` keys); a quantised one without its tables (set_tables)."""
    config = _input(["sys"], **{**NVNMD_V1, "enable": True, **nvnmd})
    section = deepmd.convert_dict(config, base_dir=".", file="train_cnn.json")["model"]
    section["nvnmd"]["map_file"] = None
    return build_model(section)


@pytest.mark.parametrize("stage, tolerance", [("cnn", (1e-9, 1e-12)), ("qnn", (1e-5, 5e-6))])  # measured: 1.5e-11, 1.7e-15; 2.1e-6, 2.4e-6
def test_v1_reproduces_deepmd_kit_tf(stage, tolerance, frames):
    """DeePMD-kit 3.2 TF's version-1 CNN and QNN (tests/peer_models/make_nvnmd_v1_reference.py) on
    the same formula weights; the QNN with mlpot's own tables."""
    from tests.peer_models.nvnmd_weights import formula_weights

    reference = dict(np.load(REFERENCE_V1))
    model = _v1_model()
    assert type(model.descriptor).__name__ == "DescriptorSeAttenNvnmd" and model.descriptor.nix == 128
    shapes = {name: value.shape for name, value in export_weights(model, 1.0).items() if name.startswith(_V1_NETS)}
    n_slots = model.descriptor.n_slots
    weights = {**formula_weights(shapes), "descrpt_attr.t_avg": np.tile(reference["davg"], (1, n_slots)),
               "descrpt_attr.t_std": np.tile(reference["dstd"], (1, n_slots)), "t_bias_atom_e": reference["bias"]}
    weights["layer_0.matrix_1"] = weights.pop("layer_0.matrix")  # DeePMD-kit 3.2's spelling, read as well
    import_weights(model, weights)
    exported = export_weights(model, float(reference["min_nbor_dist"]))
    assert np.array_equal(exported["layer_0.tweight"], weights["layer_0.tweight"])  # tebd rows of the first layer
    if stage == "qnn":
        qnn = _v1_model(quantize_descriptor=True, quantize_fitting_net=True, map_file="map.npy")
        qnn.load_state_dict(model.state_dict(), strict=False)
        qnn.descriptor.set_tables(build_tables_v1(model.descriptor, float(reference["min_nbor_dist"])))
        model = qnn
    energy, forces = _predict(model, frames)
    assert np.abs(energy - reference[f"{stage}/energy"]).max() < tolerance[0]
    assert np.abs(forces - reference[f"{stage}/forces"]).max() < tolerance[1]


def test_v1_forces_and_invariance():
    import mlpot.testing as T

    model = _v1_model(sel=24, rcut=3.5)
    with torch.no_grad():
        model.descriptor.dstd.copy_(torch.tensor([[0.2, 0.15, 0.15, 0.15]] * 2))
    batch = T.random_batch(2, [8, 7], seed=1)
    T.assert_derivatives_match_fd(model, batch)
    T.assert_invariant(model, batch, atol=1e-9, rtol=1e-7)


def test_v1_two_stages_write_deepmd_kit_files(tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _input([str(shared_data("deepmd_water/data_3"))], **NVNMD_V1)
    (tmp_path / "train_cnn.json").write_text(json.dumps(config))
    assert main(["train-nvnmd", "train_cnn.json", "-s", "s1", "--no-progress"]) == 0
    weights = read_npy_dict(tmp_path / "nvnmd_cnn/weight.npy")
    assert weights["layer_0.tweight"].shape == (8, 128) and weights["type_embed_net.matrix_1"].shape == (2, 8)
    assert weights["descrpt_attr.t_avg"].shape == (2, 512) and not weights["descrpt_attr.t_avg"].any()  # davg 0
    hardware = read_npy_dict(tmp_path / "nvnmd_cnn/config.npy")
    assert hardware["ctrl"]["VERSION"] == 1 and hardware["dscp"]["sel"] == 128 and hardware["fitn"]["NTAVC"] == 8
    tables = read_npy_dict(tmp_path / "nvnmd_cnn/map.npy")
    assert tables["gt"].shape == (9, 32) and tables["t_ebd"].shape == (3, 8) and not tables["t_ebd"][2].any()
    assert [np.shape(g) for g in tables["g"]] == [(512, 128)] and tables["cfg_s2g"][0][0] == 0.0
    from mlpot.calculators.export import load_model

    cnn = load_model(tmp_path / "nvnmd_cnn/frozen_model.pt")
    restored = _v1_model()
    import_weights(restored, weights)
    frame = read_frames(shared_data("deepmd_water/data_3"), type_map=["O", "H"])[:1]
    e_cnn, _ = _predict(cnn, frame)
    assert np.allclose(_predict(restored, frame)[0], e_cnn, rtol=0, atol=1e-9)
    assert main(["train-nvnmd", "train_cnn.json", "-s", "s2", "--no-progress"]) == 0
    qnn = load_model(tmp_path / "nvnmd_qnn/frozen_model.pt")
    assert qnn.descriptor.quantize and qnn.fitting.quantize
    start = load_model(tmp_path / "nvnmd_qnn/restored_cnn.pt")
    assert 0 < abs(_predict(start, frame)[0][0] - e_cnn[0]) / 192 < 2e-6  # the first stage, quantised


def test_v1_model_section_is_checked():
    section = {"type_map": ["O", "H"], "descriptor": {"type": "se_atten", "sel": 24, "rcut": 3.5, "neuron": [8, 16, 32],
                                                      "axis_neuron": 4, "tebd_input_mode": "strip", "attn_layer": 2},
               "fitting_net": {"neuron": [128] * 3, "activation_function": "tanh4"}, "nvnmd": {"version": 1}}
    with pytest.raises(ConfigError, match="NVNMD version 1 needs attn_layer 0, got 2"):
        build_model(section)
    section["descriptor"].update(attn_layer=0, type="se_e2_a", sel=[12, 12])
    with pytest.raises(ConfigError, match="NVNMD version 1 uses descriptor se_atten"):
        build_model(section)
