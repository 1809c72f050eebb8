"""Reading NequIP checkpoints and packages never runs code from them; broken or foreign files fail clearly.

A planted pickle whose unpickling would create a marker file (``os.system``, ``builtins.exec``,
``posix.system``) inside a fake ``.ckpt`` and a fake ``.nequip.zip`` must be refused with a
``CheckpointError`` naming the file, and the marker must never appear. Also: a round trip through
a hand-made checkpoint with NequIP's parameter names for the model options the shared reference
model does not use (trainable Bessel frequencies, per-edge-type cutoffs, ZBL, readout MLP).
"""

import io
import os
import pickle
import zipfile

import pytest
import torch

from mlpot.errors import CheckpointError
from mlpot.models.equivariant.nequip import build_nequip
from mlpot.models.equivariant.nequip.files import load_nequip_checkpoint, load_nequip_package

F64 = torch.float64


class _Planted:
    """Pickles to ``callable(argument)``: unpickling with plain pickle would run it."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _plant(marker, how: str):
    command = f"touch {marker}"
    if how == "os.system":
        return _Planted(os.system, command)
    if how == "exec":
        return _Planted(exec, f"open({str(marker)!r}, 'w').close()")
    return _Planted(getattr(__import__("posix"), "system"), command)


def _write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("how", ["os.system", "exec", "posix.system"])
def test_malicious_checkpoint_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": {}, "hyper_parameters": {"model": _plant(marker, how)}}, protocol=2)
    fake = tmp_path / "evil.ckpt"
    _write_zip(fake, {"archive/data.pkl": payload, "archive/byteorder": "little"})
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refusing to unpickle the global"):
        load_nequip_checkpoint(fake)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["os.system", "exec"])
def test_malicious_package_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    fake = tmp_path / "evil.nequip.zip"
    config = "training_module:\n  model:\n    _target_: nequip.model.NequIPGNNModel\n"
    _write_zip(fake, {"evil/model/eager_model.pkl": pickle.dumps(_plant(marker, how), protocol=3),
                      "evil/model/config.yaml": config})
    with pytest.raises(CheckpointError, match=r"evil\.nequip\.zip: refusing to unpickle the global"):
        load_nequip_package(fake)
    assert not marker.exists()


def test_a_real_torch_save_with_code_is_refused(tmp_path):
    """torch.save writes the same zip layout as a Lightning checkpoint."""
    marker = tmp_path / "pwned"
    fake = tmp_path / "saved.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"model": _plant(marker, "os.system")}}, fake)
    with pytest.raises(CheckpointError, match="refusing to unpickle the global"):
        load_nequip_checkpoint(fake)
    assert not marker.exists()


def test_unreadable_files_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_nequip_checkpoint(tmp_path / "missing.ckpt")
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a zip archive"):
        load_nequip_checkpoint(text)
    empty = tmp_path / "other.ckpt"
    _write_zip(empty, {"something/else.txt": "x"})
    with pytest.raises(CheckpointError, match="no data.pkl inside"):
        load_nequip_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no model/eager_model.pkl inside"):
        load_nequip_package(empty)


# ---- round trip through NequIP's names ---------------------------------------------------
SECTION = {"type_names": ["C", "H"], "r_max": 4.0, "num_layers": 2, "l_max": 1, "num_features": 4, "radial_mlp_depth": 2,
           "radial_mlp_width": 8, "num_bessels": 5, "bessel_trainable": True, "avg_num_neighbors": 7.0, "seed": 2,
           "per_edge_type_cutoff": {"C": 3.5}, "readout_mlp_hidden_layers_depth": 1, "readout_mlp_hidden_layers_width": 3,
           "per_type_energy_scales": 1.5, "per_type_energy_shifts": {"C": -1.0, "H": -0.5},
           "per_type_energy_shifts_trainable": True, "model_dtype": "float64"}


def nequip_state_dict(model, section):
    """The state dict NequIP 0.19 would write for ``model`` (names relative to ``model.sole_model.model.func.``)."""
    state = {"type_embed.embed_module.weight": model.type_embedding.weight,
             "edge_norm._rmax_recip": torch.tensor([1 / 3.5, 1 / 3.5, 1 / 4.0, 1 / 4.0], dtype=F64),
             "bessel_encode.bessel_weights": (model.bessel.weights * section["r_max"] / torch.pi).reshape(1, -1)}
    for i, layer in enumerate(model.layers):
        prefix = f"layer{i}_convnet."
        state[prefix + "equivariant_nonlin.mul.output_mask"] = torch.ones(3, dtype=F64)
        state[prefix + "conv.linear_1.weight"] = layer.linear_in.weight
        state[prefix + "conv.linear_1.bias"] = torch.zeros(0, dtype=F64)
        state[prefix + "conv.tp_scatter.tp.weight"] = torch.zeros(0, dtype=F64)
        for k, mlp_layer in enumerate(layer.radial_mlp.layers):
            state[prefix + f"conv.edge_mlp.mlp.{2 * k}.weight"] = mlp_layer.weight
        state[prefix + "conv.linear_2.weight"] = layer.linear_out.weight
        if layer.self_connection is not None:
            state[prefix + "conv.sc.weight"] = layer.self_connection.weight
    for k, mlp_layer in enumerate(model.readout.layers):
        state[f"per_atom_energy_readout.mlp_module.mlp.{2 * k}.weight"] = mlp_layer.weight
    state["per_type_energy_scale_shift.shifts"] = model.scale_shift.shifts.reshape(-1, 1)
    state["per_type_energy_scale_shift.scales"] = model.scale_shift.scales.reshape(-1, 1)
    return {f"model.sole_model.model.func.{k}": v.detach().clone() for k, v in state.items()}


def test_checkpoint_round_trip_of_nequip_names(tmp_path):
    model = build_nequip(SECTION)
    with torch.no_grad():
        model.bessel.weights.mul_(1.1)  # trained frequencies
        model.scale_shift.shifts.add_(0.25)
    config = {"_target_": "nequip.model.NequIPGNNModel", **SECTION}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": nequip_state_dict(model, SECTION), "hyper_parameters": {"model": config}}, path)
    loaded = load_nequip_checkpoint(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0, msg=name)
    # a weight of the wrong shape, or one the configuration does not have, is an error naming it
    state = nequip_state_dict(model, SECTION)
    state["model.sole_model.model.func.layer1_convnet.conv.sc.weight"] = torch.zeros(3, dtype=F64)
    torch.save({"state_dict": state, "hyper_parameters": {"model": config}}, path)
    with pytest.raises(CheckpointError, match=r"layer1_convnet\.conv\.sc\.weight: shape"):
        load_nequip_checkpoint(path)
    state = nequip_state_dict(model, SECTION)
    state["model.sole_model.model.func.layer2_convnet.conv.linear_1.weight"] = torch.zeros(3, dtype=F64)
    torch.save({"state_dict": state, "hyper_parameters": {"model": config}}, path)
    with pytest.raises(CheckpointError, match="unexpected weight 'layer2_convnet"):
        load_nequip_checkpoint(path)
    state = nequip_state_dict(model, SECTION)
    state["model.sole_model.model.func.edge_norm._rmax_recip"] = torch.full((4,), 0.25, dtype=F64)
    torch.save({"state_dict": state, "hyper_parameters": {"model": config}}, path)
    with pytest.raises(CheckpointError, match="_rmax_recip .* does not match"):
        load_nequip_checkpoint(path)


def test_unsupported_model_targets_are_named(tmp_path):
    path = tmp_path / "other.ckpt"
    state = {"model.sole_model.model.func.type_embed.embed_module.weight": torch.zeros(2, 4)}
    torch.save({"state_dict": state, "hyper_parameters": {"model": {"_target_": "allegro.model.AllegroModel"}}}, path)
    with pytest.raises(CheckpointError, match="not supported yet: model _target_ 'allegro.model.AllegroModel'"):
        load_nequip_checkpoint(path)
