"""mlpot reads DeePMD-kit's TensorFlow frozen graphs (``dp --tf freeze`` .pb) without TensorFlow and
gives ``dp --tf test``'s numbers.

``tests/peer_models/deepmd/tf_*.pb`` are tiny water models (float64, a few training steps) that
DeePMD-kit 3.2's TF backend trained, froze and evaluated (``tests/peer_models/make_deepmd_tf_models.py``,
run with DeePMD-kit's Python; CI has neither it nor TensorFlow): the graphs byte for byte and
``dp --tf test``'s energies, forces and virials on frames 0 and 2 of deepmd_water/data_3. Loaded by
``load_model`` (behind ``mlpot test``, ``mlpot md``, ``mlpot freeze``, ``mlpot compress`` and the ASE
calculator), every model gives DeePMD-kit TF's numbers to rounding (measured: energy 2e-11 eV of
~ -3e4, forces 2e-11 eV/Å, virial 1e-10 eV; se_atten's near-cutoff pair of frame 0 included).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.calculators.export import freeze, load_model, read_model_file
from mlpot.cli import main
from mlpot.errors import CheckpointError
from mlpot.models.deepmd.tf_graph import looks_like_graph, read_graph_constants
from test_deepmd_files import frames, predictions, train_from  # noqa: F401  (frames: the fixture of frames 0 and 2)

FILES = Path(__file__).parent / "peer_models" / "deepmd"
MODELS = ["tf_se_e2_a", "tf_se_e2_a_one_side", "tf_se_e2_a_tebd", "tf_se_a_ebd_v2", "tf_hybrid", "tf_se_e2_r", "tf_se_e2_r_one_side", "tf_se_e3", "tf_se_atten",
          "tf_se_atten_variant", "tf_se_atten_strip", "tf_se_atten_v2"]


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FILES / "deepmd_tf_reference.npz"))


@pytest.mark.parametrize("name", MODELS)
def test_reproduces_dp_tf_test(name, reference, frames):
    model = load_model(FILES / f"{name}.pb")
    assert model.type_map == ["O", "H"] and model.dtype == torch.float64
    assert model.cutoff == (3.0 if name == "tf_se_e3" else 3.5)  # hybrid: the largest member's
    out = predictions(model, frames)
    energy = reference[f"{name}/energy"]
    assert np.abs(out["energy"] / energy - 1).max() < 1e-14
    assert np.abs(out["forces"] - reference[f"{name}/forces"]).max() < 1e-10
    assert np.abs(out["virial"] - reference[f"{name}/virial"]).max() < 1e-9


# atoms of frames 0 and 2 whose loc_frame forces DeePMD-kit TF gets wrong (test below)
LOC_FRAME_TF_FORCE_ERRORS = {0: (20, 35, 47, 57), 1: (53, 56)}


def test_loc_frame_energy_and_the_forces_tf_gets_right(reference, frames):
    """loc_frame, compared with DeePMD-kit itself: the energies agree to rounding, and so do the
    forces on all atoms but six, where DeePMD-kit TF's forces are not -dE/dr of its own energy
    (off by up to 0.14 eV/Å; its forces on frame 0 sum to 0.26 eV/Å instead of 0). mlpot's forces
    there are the finite differences of the shared energy and sum to zero."""
    model = load_model(FILES / "tf_loc_frame.pb")
    out = predictions(model, frames)
    assert np.abs(out["energy"] / reference["tf_loc_frame/energy"] - 1).max() < 1e-14
    tf_forces = reference["tf_loc_frame/forces"]
    for frame, wrong in LOC_FRAME_TF_FORCE_ERRORS.items():
        errors = np.abs(out["forces"][frame] - tf_forces[frame]).max(axis=1)
        assert set(np.flatnonzero(errors > 1e-10)) == set(wrong)
        assert np.abs(out["forces"][frame].sum(axis=0)).max() < 1e-12
    assert np.abs(tf_forces[0].sum(axis=0)).max() > 0.2
    atom, step, frame = 57, 1e-5, frames[0]
    energies = []
    for sign in (1, -1):
        moved = dict(frame, positions=frame["positions"].copy())
        moved["positions"][atom, 0] += sign * step
        energies.append(predictions(model, [moved], ("energy",))["energy"][0])
    finite_difference = -(energies[0] - energies[1]) / (2 * step)
    assert abs(finite_difference - out["forces"][0][atom, 0]) < 1e-5
    assert abs(finite_difference - tf_forces[0][atom, 0]) > 0.1


@pytest.mark.parametrize("name, kind, label, width", [("tf_dipole", "dipole", "dipole", 3),
                                                     ("tf_polar", "polar", "polarizability", 9)])
def test_tensor_models(name, kind, label, width, shared_data, reference):
    """se_e2_a + dipole (sel_type [0]) and polar (sel_type [0], fit_diag false, scale 2) graphs on
    frames 0 and 2 of the water clusters' validation system, against dp --tf test."""
    from mlpot.data import read_frames

    every = read_frames(shared_data(f"deepmd_water_tensor/{kind}/validation_data_reformat/global_system"),
                        type_map=["O", "H"])
    model = load_model(FILES / f"{name}.pb")
    assert model.config["fitting_net"]["type"] == kind and model.config["fitting_net"]["sel_type"] == [0]
    out = predictions(model, [every[i] for i in (0, 2)], (label,))[label].reshape(2, width)
    assert np.abs(out - reference[f"{name}/{label}"]).max() < 1e-12 * np.abs(out).max()


def test_float32_graph(reference, frames):
    """A graph trained with precision float32 (descriptor and fitting): float32 weights, read into a
    float32 model; dp --tf test's numbers to float32 rounding (measured 1e-11 relative energy,
    1.3e-7 eV/Å forces)."""
    assert read_graph_constants(FILES / "tf_se_e2_a_float32.pb").constants["layer_0_type_0/matrix"].dtype == np.float32
    model = load_model(FILES / "tf_se_e2_a_float32.pb")
    assert model.fitting.nets[0].layers[0].weight.dtype == torch.float32
    out = predictions(model, frames)
    assert np.abs(out["energy"] / reference["tf_se_e2_a_float32/energy"] - 1).max() < 1e-9
    assert np.abs(out["forces"] - reference["tf_se_e2_a_float32/forces"]).max() < 1e-6
    assert np.abs(out["virial"] - reference["tf_se_e2_a_float32/virial"]).max() < 1e-5


def test_se_a_mask(shared_data, reference):
    """se_a_mask (no cutoff; aparam = 1: every atom real) on two 7-atom molecules of deepmd_nopbc."""
    from mlpot.data import read_frames

    every = read_frames(shared_data("deepmd_nopbc/C1H4O2"), type_map=["C", "H", "O"])
    frames = [dict(every[i], aparam=np.ones((7, 1))) for i in (0, 2)]
    model = load_model(FILES / "tf_se_a_mask.pb")
    assert model.config["fitting_net"]["use_aparam_as_mask"] is True
    out = predictions(model, frames, ("energy", "forces"))
    assert np.abs(out["energy"] / reference["tf_se_a_mask/energy"] - 1).max() < 1e-14
    assert np.abs(out["forces"] - reference["tf_se_a_mask/forces"]).max() < 1e-12


def test_tf_fitting_rule_is_kept():
    """TF's fitting net has no residual on its first hidden layer (here 16 -> 16); PT's rule would
    add one: the same weights then give other energies."""
    model = load_model(FILES / "tf_se_e2_a_one_side.pb")
    assert model.config["fitting_net"]["tf_resnet"] is True
    assert model.descriptor.type_one_side and len(model.descriptor.embeddings) == 2
    first = model.fitting.nets[0].layers[0]
    assert (first.n_in, first.n_out, first.skip) == (16, 16, False)
    from mlpot.models import build_model

    section = json.loads(json.dumps(model.config))
    section["fitting_net"]["tf_resnet"] = False
    pt_rule = build_model(section, dtype=torch.float64)
    pt_rule.load_state_dict(model.state_dict())
    assert pt_rule.fitting.nets[0].layers[0].skip
    x = torch.randn(3, 16, dtype=torch.float64)
    assert (model.fitting.nets[0](x) - pt_rule.fitting.nets[0](x)).abs().max() > 1e-3


def test_attention_model_section_follows_tf():
    model = load_model(FILES / "tf_se_atten_v2.pb")
    descriptor = model.config["descriptor"]
    assert descriptor["tebd_dim"] == 4 and descriptor["tebd_activation"] == "tanh"
    assert descriptor["normalize_eps"] == 1e-6 and descriptor["temperature"] == 1.0 and descriptor["ln_eps"] == 1e-3
    assert descriptor["tf_smooth_switch"] is True and "type_embedding" not in model.config


# ---- the GraphDef decoder ------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload, wire: int = 2) -> bytes:
    if wire == 0:
        return _varint(number << 3) + _varint(payload)
    if wire == 2:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return _varint(number << 3 | wire) + payload


def _tensor(dtype: int, shape, *fields: bytes) -> bytes:
    dims = b"".join(_field(2, _field(1, size, 0)) for size in shape)
    return _field(1, dtype, 0) + _field(2, dims) + b"".join(fields)


def _node(name: str, op: str = "Const", tensor: bytes = b"") -> bytes:
    body = _field(1, name.encode()) + _field(2, op.encode())
    if tensor:
        body += _field(5, _field(1, b"value") + _field(2, _field(8, tensor)))
    return _field(1, body)


def test_decoder_reads_every_encoding(tmp_path):
    packed = _field(6, struct.pack("<d", 2.5))  # one double fills the shape
    unpacked_ints = b"".join(_field(7, v, 0) for v in (-3, 7))
    float32_content = _field(4, np.array([[1.5, -2.0]], dtype="<f4").tobytes())
    int64 = _field(10, _varint(2**40) + _varint(-1))
    floats = _field(5, struct.pack("<f", 0.25), 5) + _field(5, struct.pack("<f", 0.5), 5)  # not packed
    graph = (_node("a", tensor=_tensor(2, [3], packed)) + _node("b", tensor=_tensor(3, [2], unpacked_ints))
             + _node("c", tensor=_tensor(1, [1, 2], float32_content)) + _node("d", tensor=_tensor(9, [2], int64))
             + _node("e", tensor=_tensor(7, [], _field(8, "O H".encode()))) + _node("f", tensor=_tensor(1, [2], floats))
             + _node("x", op="MatMul"))
    (tmp_path / "g.pb").write_bytes(graph)
    read = read_graph_constants(tmp_path / "g.pb")
    c = read.constants
    assert c["a"].tolist() == [2.5, 2.5, 2.5] and c["a"].dtype == np.float64
    assert c["b"].tolist() == [-3, 7] and c["b"].dtype == np.int32
    assert c["c"].tolist() == [[1.5, -2.0]] and c["c"].dtype == np.float32
    assert c["d"].tolist() == [2**40, -1] and c["f"].tolist() == [0.25, 0.5] and c["e"] == "O H"
    assert read.ops == {"Const": 6, "MatMul": 1}
    assert looks_like_graph(tmp_path / "g.pb") and not looks_like_graph(FILES / "se_e2_a.pth")
    (tmp_path / "text").write_text("\n\n\nnot a graph\n")
    assert not looks_like_graph(tmp_path / "text")


def test_decoder_on_a_real_graph():
    c = read_graph_constants(FILES / "tf_se_e2_a.pb").constants
    assert c["model_attr/tmap"] == "O H" and float(c["descrpt_attr/rcut"]) == 3.5
    assert c["descrpt_attr/sel"].tolist() == [12, 24] and c["descrpt_attr/t_avg"].shape == (2, 144)
    assert json.loads(c["train_attr/training_script"])["model"]["descriptor"]["type"] == "se_e2_a"


# ---- what is not read ----------------------------------------------------------------------------
def _edited(tmp_path, *nodes: bytes, cut: int = 0) -> Path:
    """tf_se_e2_a.pb with nodes appended (a protobuf message concatenated with more fields: a later
    Const of the same name replaces the earlier one) or cut to ``cut`` bytes."""
    blob = (FILES / "tf_se_e2_a.pb").read_bytes()
    path = tmp_path / "edited.pb"
    path.write_bytes(blob[:cut] if cut else blob + b"".join(nodes))
    return path


def _string(name: str, text: str) -> bytes:
    return _node(name, tensor=_tensor(7, [], _field(8, text.encode())))


def _script(edit) -> bytes:
    script = json.loads(read_graph_constants(FILES / "tf_se_e2_a.pb").constants["train_attr/training_script"])
    edit(script["model"])
    return _string("train_attr/training_script", json.dumps(script))


@pytest.mark.parametrize("nodes, message", [
    ([_node("load/TabulateFusionSeA", op="TabulateFusionSeA")],
     r"compressed DeePMD-kit TF graphs .*give the uncompressed model \(mlpot compress can compress it\)"),
    ([_node("fitting_attr/t_foo", tensor=_tensor(2, [2], _field(6, struct.pack("<2d", 1, 2))))],
     "not supported yet: DeePMD-kit TF graph constant fitting_attr/t_foo"),
    ([_string("model_attr/model_type", "dos")], "not supported yet: DeePMD-kit TF graphs of dos models"),
    ([_string("model_attr/model_type", "dipole")], "not supported yet: a dipole model with a ener fitting"),
    ([_script(lambda m: m["descriptor"].update(type="se_a_tpe"))],
     "not supported yet: DeePMD-kit TF graphs of a se_a_tpe descriptor"),
    ([_script(lambda m: (m["descriptor"].update(type="se_e3"), m.update(type_embedding={"neuron": [4]})))],
     "not supported yet: DeePMD-kit TF graphs of a se_e3 descriptor with a model/type_embedding"),
    ([_script(lambda m: m.update(type_embedding={"neuron": [4]}))],
     "missing DeePMD-kit TF graph constant type_embed_net/matrix_1"),
    ([_string("model_attr/model_version", "0.9")],
     "not supported yet: DeePMD-kit TF graph version 0.9 .*convert it with DeePMD-kit's dp convert-from"),
    ([_string("model_attr/tmap", "H O")], r"model_attr/tmap \['H', 'O'\] differs from the training input's type_map"),
])
def test_unsupported_graphs_are_named(tmp_path, nodes, message):
    with pytest.raises(CheckpointError, match=message) as raised:
        load_model(_edited(tmp_path, *nodes))
    assert "edited.pb" in str(raised.value)


def test_truncated_graph_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match=r"edited\.pb: not a readable TensorFlow GraphDef"):
        load_model(_edited(tmp_path, cut=60000))


def test_out_std_is_folded_into_the_output_layer(tmp_path, frames):
    """TF scales the atomic output (bias_atom_e included) by t_out_std per type."""
    std = struct.pack("<2d", 2.0, 3.0)
    path = _edited(tmp_path, _node("model_attr/model_attr/t_out_std", tensor=_tensor(2, [1, 2, 1], _field(4, std))))
    keys = ("atom_energy",)
    plain = predictions(load_model(FILES / "tf_se_e2_a.pb"), frames[:1], keys)["atom_energy"][0]
    scaled = predictions(load_model(path), frames[:1], keys)["atom_energy"][0]
    types = frames[0]["atom_types"]
    np.testing.assert_allclose(scaled, plain * np.where(types == 0, 2.0, 3.0), rtol=1e-13)


# ---- the rest of mlpot takes .pb files ------------------------------------------------------------
def _check_ase_calculator(path, frame, reference):
    """MlpotCalculator(path) on frame 2 of data_3 gives tf_se_e2_a's dp --tf test numbers."""
    from ase import Atoms

    from mlpot.calculators import MlpotCalculator

    atoms = Atoms(["O" if t == 0 else "H" for t in frame["atom_types"]], positions=frame["positions"],
                  cell=frame["cell"], pbc=True)
    atoms.calc = MlpotCalculator(str(path))
    assert abs(atoms.get_potential_energy() - reference["tf_se_e2_a/energy"][1]) < 1e-9
    assert np.abs(atoms.get_forces() - reference["tf_se_e2_a/forces"][1]).max() < 1e-10


def test_mlpot_test_freeze_ase_and_compress(tmp_path, shared_data, reference, frames, capsys):
    from mlpot.commands.compress import stored_min_nbor_dist

    detail = tmp_path / "detail"
    assert main(["test", str(FILES / "tf_se_e2_r.pb"), str(shared_data("deepmd_water/data_3")), "-n", "1",
                 "-d", str(detail)]) == 0
    assert "Energy RMSE" in capsys.readouterr().out
    assert abs(np.loadtxt(f"{detail}.e.out", ndmin=2)[0, 1] - reference["tf_se_e2_r/energy"][0]) < 1e-9

    assert main(["freeze", str(FILES / "tf_se_atten.pb"), "-o", str(tmp_path / "frozen.pt")]) == 0
    assert read_model_file(tmp_path / "frozen.pt")["format"] == "mlpot-frozen"
    out = predictions(load_model(tmp_path / "frozen.pt"), frames[1:])
    assert np.abs(out["forces"] - reference["tf_se_atten/forces"][1:]).max() < 1e-10

    _check_ase_calculator(FILES / "tf_se_e2_a.pb", frames[1], reference)

    assert stored_min_nbor_dist(FILES / "tf_se_e2_a.pb") == pytest.approx(0.89245151, abs=1e-8)
    # mlpot compress of the graph (its min_nbor_dist): dp --tf compress's numbers, which equal the
    # uncompressed ones to 5e-14 eV/Å for this model
    assert main(["compress", "-i", str(FILES / "tf_se_e2_a.pb"), "-o", str(tmp_path / "compressed.pt")]) == 0
    out = predictions(load_model(tmp_path / "compressed.pt"), frames)
    assert np.abs(out["forces"] - reference["tf_se_e2_a/forces"]).max() < 1e-10
    assert freeze(FILES / "tf_se_e2_a.pb", tmp_path / "f2.pt")["type_map"] == ["O", "H"]


def test_training_starts_from_a_graph(tmp_path, shared_data, monkeypatch):
    """``mlpot train input.json -f model.pb --use-pretrain-script`` (dp train --init-frz-model): the
    graph's model section, TF rules included, and its statistics are kept."""
    trained, pretrained = train_from(FILES / "tf_se_atten.pb", tmp_path, shared_data, monkeypatch)
    assert trained.config["fitting_net"]["tf_resnet"] and trained.config["descriptor"]["tf_smooth_switch"]
    assert torch.equal(trained.descriptor.dstd, pretrained.descriptor.dstd)
    assert torch.equal(trained.fitting.bias_atom, pretrained.fitting.bias_atom)


@pytest.mark.slow
def test_compiled_graph_model(tmp_path, reference, frames):
    """``mlpot compile model.pb`` (exported program, about a minute): dp --tf test's numbers."""
    assert main(["compile", str(FILES / "tf_se_e2_a.pb"), "-o", str(tmp_path / "model.pt2"), "--backend", "export"]) == 0
    _check_ase_calculator(tmp_path / "model.pt2", frames[1], reference)
