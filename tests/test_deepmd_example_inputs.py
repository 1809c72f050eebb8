"""DeePMD-kit's own example inputs run unchanged (issue: inputs read wrong, refused, or accepted and
ignored): type_map from the data, num_epoch aliases, the early DPA-1 keys of examples/water/se_atten,
NVNMD inputs sent to mlpot train-nvnmd and DPA-4 keys named in the error, stat_file written and read back, enable_profiler, and
DeePMD-kit's default for change_bias_after_training.

Tiny runs on the synthetic systems of ``tests.test_deepmd_extra_keys.write_system``.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from mlpot.config import deepmd, validate_config
from mlpot.errors import ConfigError
from tests.test_deepmd_extra_keys import write_system
from tests.test_deepmd_training_keys import small_deepmd_input


def _native(tmp_path, config):
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / "out")
    native["logging"]["debug_log"] = None
    native["logging"]["metrics_csv"] = None
    return native


def _trainer(native, stdout=None):
    from mlpot.training.trainer import Trainer

    return Trainer(validate_config(copy.deepcopy(native)), progress=False, stdout=stdout)


def test_type_map_comes_from_the_data_when_the_input_leaves_it_out(tmp_path):
    config = small_deepmd_input(tmp_path)
    del config["model"]["type_map"]
    for system in ("sys4", "sys5"):
        (tmp_path / system / "type_map.raw").write_text("C\nH\n")
    assert deepmd.convert_dict(config, base_dir=tmp_path)["model"]["type_map"] == ["C", "H"]
    (tmp_path / "sys5" / "type_map.raw").write_text("C\nH\nO\n")  # the union, in order of appearance
    assert deepmd.convert_dict(config, base_dir=tmp_path)["model"]["type_map"] == ["C", "H", "O"]
    (tmp_path / "sys5" / "type_map.raw").unlink()
    with pytest.raises(ConfigError, match=r"model.type_map: missing, and the training system .*sys5 has no type_map\.raw"):
        deepmd.convert_dict(config, base_dir=tmp_path)


@pytest.mark.parametrize("alias", ["num_epoch", "num_epochs", "numb_epochs"])
def test_num_epoch_aliases(tmp_path, alias):
    config = small_deepmd_input(tmp_path)
    del config["training"]["numb_steps"]
    config["training"][alias] = 2
    assert deepmd.convert_dict(config, base_dir=tmp_path)["training"]["sampler_epochs"] == 2.0


def test_early_dpa1_keys_of_the_se_atten_torch_example(tmp_path):
    """examples/water/se_atten/input_torch.json: post_ln true, ffn false, ffn_embed_dim, head_num 1
    describe mlpot's attention layer; other values are "not supported yet"."""
    config = small_deepmd_input(tmp_path)
    config["model"]["descriptor"] = {"type": "dpa1", "sel": 8, "rcut_smth": 0.5, "rcut": 4.0, "neuron": [4, 8],
                                     "tebd_dim": 4, "axis_neuron": 2, "type_one_side": True, "attn": 8,
                                     "attn_layer": 1, "attn_dotr": True, "attn_mask": False, "post_ln": True,
                                     "ffn": False, "ffn_embed_dim": 1024, "activation_function": "tanh",
                                     "scaling_factor": 1.0, "head_num": 1, "normalize": True, "temperature": 1.0,
                                     "return_rot": False}
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    assert native["model"]["descriptor"]["type"] == "se_atten"
    from mlpot.models import build_model

    assert len(build_model(native["model"]).descriptor.attention) == 1
    compressible = copy.deepcopy(config)  # examples/water/hybrid: se_atten with compressible true
    compressible["model"]["descriptor"].update(compressible=True, attn_layer=0)
    model = build_model(deepmd.convert_dict(compressible, base_dir=tmp_path)["model"])
    assert model.descriptor.tebd_input_mode == "strip"
    for key, value in (("post_ln", False), ("ffn", True), ("head_num", 4)):
        bad = copy.deepcopy(config)
        bad["model"]["descriptor"][key] = value
        with pytest.raises(ConfigError, match=f"not supported yet: model/descriptor/{key}"):
            deepmd.convert_dict(bad, base_dir=tmp_path)


def test_nvnmd_and_dpa4_keys_are_named(tmp_path):
    nvnmd = {"nvnmd": {"version": 0, "max_nnei": 128, "net_size": 128, "sel": [60, 60], "rcut": 6.0,
                       "rcut_smth": 0.5, "type_map": ["Ge", "Te"]},
             "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 3e-8, "decay_steps": 5000},
             "loss": {"start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1},
             "training": {"seed": 1, "stop_batch": 10, "numb_test": 1, "training_data": {"systems": ["sys4"]}}}
    path = tmp_path / "train_cnn.json"
    path.write_text(json.dumps(nvnmd))
    assert deepmd.is_deepmd_config(path)
    with pytest.raises(ConfigError, match=r"train_cnn\.json: nvnmd.enable: an NVNMD input \(no model section\) is trained "
                                          r"by mlpot train-nvnmd"):
        deepmd.convert(path)
    config = small_deepmd_input(tmp_path)
    config["model"]["use_compile"] = True
    with pytest.raises(ConfigError, match=r"not supported yet: model/use_compile \(a key of model/type dpa4"):
        deepmd.convert_dict(config, base_dir=tmp_path)


def _statistics(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("davg", "dstd", "bias_atom", "out_std"))}


@pytest.mark.parametrize("name", ["stat.hdf5", "stat_dir"])
def test_stat_file_is_written_then_read_instead_of_recomputed(tmp_path, monkeypatch, name):
    import io

    from mlpot.models.deepmd.standard import StandardModel

    stat_file = tmp_path / name
    if name.endswith("hdf5"):  # a file DeePMD-kit wrote there keeps its content
        with h5py.File(stat_file, "w") as handle:
            handle.create_dataset("O H/some/deepmd/record", data=np.arange(3))
    native = _native(tmp_path, small_deepmd_input(tmp_path, stat_file=name))
    native["training"]["numb_steps"] = 1
    log = io.StringIO()
    first = _trainer(native, log)
    assert "data statistics computed and written to" in log.getvalue()
    computed = _statistics(first.model)
    assert stat_file.exists()
    monkeypatch.setattr(StandardModel, "compute_statistics", lambda *a, **k: pytest.fail("recomputed"))
    log = io.StringIO()
    second = _trainer(native, log)
    assert f"data statistics read from {stat_file}" in log.getvalue()
    for key, value in _statistics(second.model).items():
        torch.testing.assert_close(value, computed[key], rtol=0, atol=0)
    if name.endswith("hdf5"):
        with h5py.File(stat_file, "r") as handle:
            np.testing.assert_array_equal(handle["O H/some/deepmd/record"][()], np.arange(3))
            assert "mlpot" in handle
    # another model section is another record; in read mode a missing record is an error
    changed = copy.deepcopy(native)
    changed["model"]["fitting_net"]["neuron"] = [6]
    changed["data"]["stat_file_mode"] = "read"
    with pytest.raises(ConfigError, match="stat_file_mode 'read'.*holds no statistics for this model"):
        _trainer(changed)


def test_enable_profiler_writes_a_tensorboard_trace(tmp_path):
    native = _native(tmp_path, small_deepmd_input(tmp_path, enable_profiler=True))
    assert native["logging"]["profile_tensorboard"]
    native["training"]["numb_steps"] = 7
    _trainer(native).run()
    traces = list((tmp_path / "out" / "log").rglob("*.pt.trace.json*"))
    assert traces, "no TensorBoard profiler trace written"


def test_change_bias_after_training_is_off_for_deepmd_inputs_and_the_log_says_so(tmp_path):
    import io

    config = small_deepmd_input(tmp_path)
    del config["training"]["change_bias_after_training"]
    native = _native(tmp_path, config)
    assert native["training"]["change_bias_after_training"] is False  # DeePMD-kit's default
    log = io.StringIO()
    trainer = _trainer(native, log)
    before = trainer.model.fitting.bias_atom.clone()
    trainer.run()
    assert "change_bias_after_training): off" in log.getvalue()
    torch.testing.assert_close(trainer.model.fitting.bias_atom, before)  # bias_atom is a buffer: untouched
    assert validate_config({k: v for k, v in native.items() if k != "training"} | {"training": {"numb_steps": 1}}
                           ).training.change_bias_after_training  # native default: on


def test_a_descriptor_without_sel_is_sel_auto_as_in_deepmd_kit_3():
    """DeePMD-kit 3.x's sel defaults to "auto": resolved from the training data's neighbour counts."""
    from mlpot.models import build_model
    from mlpot.models.deepmd import resolve_from_data

    class Probe:
        def statistics(self, cutoff, type_map):
            assert cutoff == 4.0 and list(type_map) == ["C", "H"]
            return SimpleNamespace(max_neighbors_per_type=[5, 9], max_neighbors_total=12)

    section = {"type_map": ["C", "H"], "descriptor": {"type": "se_e2_a", "rcut": 4.0, "neuron": [4], "axis_neuron": 2},
               "fitting_net": {"neuron": [4]}}
    resolved = resolve_from_data(section, {"": Probe()})
    assert resolved["descriptor"]["sel"] == [8, 12]  # ceil(1.1 * count), rounded up to a multiple of 4
    assert build_model(resolved).descriptor.sel == [8, 12]
