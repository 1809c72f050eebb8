"""mlpot reads DeePMD-kit's trained files (3.x, PyTorch backend) and gives DeePMD-kit's numbers.

``tests/peer_models/deepmd/`` holds tiny water models (se_e2_a two- and one-sided, se_e2_r,
se_atten, se_atten_v2, se_e3_tebd in concat and strip mode; ener fitting; float64) that
DeePMD-kit 3.2 itself trained, froze and evaluated (``tests/peer_models/make_deepmd_models.py``,
run with DeePMD-kit's Python; CI has no DeePMD-kit): each model's training checkpoint (DeePMD-kit's
file, byte for byte), its frozen TorchScript archive (the data records of DeePMD-kit's file; mlpot
never reads the code records) and ``dp test``'s energies, forces and virials on frames 0 and 2 of
deepmd_water/data_3. Loaded by
``load_model`` (behind ``mlpot test``, ``mlpot md``, ``mlpot freeze`` and the ASE calculator), the
model must give DeePMD-kit's numbers to 1e-8 (eV, eV/Å, eV).

One pair is the exception, pinned here: in frame 0 two H atoms sit 2.1e-5 Å inside rcut (3.5 Å).
se_atten in DeePMD-kit's default concat mode is not smooth: its attention weighs neighbours by
r̂_j · r̂_k whatever their switch value, and r̂ = R~[1:4] / max(|R~[1:4]|, 1e-12) is then computed
from a row of size ~1e-14 that the quintic switch returns as a difference of numbers of order 1,
i.e. from rounding noise. The forces on that pair differ by 4e-7 eV/Å (every other atom agrees to
1e-15); se_atten_v2 (smooth) agrees to 1e-14 on the same pair.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.calculators.evaluate import iterate_predictions
from mlpot.calculators.export import freeze, load_model, read_model_file
from mlpot.cli import main
from mlpot.data import read_frames
from mlpot.errors import CheckpointError, ConfigError

FILES = Path(__file__).parent / "peer_models" / "deepmd"
MODELS = ["se_e2_a", "se_e2_a_one_side", "se_e2_r", "se_atten", "se_atten_v2", "se_e3_tebd", "se_e3_tebd_strip"]
KINDS = {"checkpoint": ".ckpt.pt", "frozen": ".pth"}
FRAMES = (0, 2)  # frames of data_3 that DeePMD-kit evaluated (make_deepmd_models.FRAMES)
TOLERANCE = 1e-8
NEAR_CUTOFF_PAIR = (66, 129)  # frame 0: H-H at 3.49998 Å, rcut 3.5 Å (module docstring)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FILES / "deepmd_reference.npz"))


@pytest.fixture(scope="module")
def frames(shared_data):
    every = read_frames(shared_data("deepmd_water/data_3"), type_map=["O", "H"])
    return [every[i] for i in FRAMES]


def predictions(model, frames, keys=("energy", "forces", "virial")):
    out = [prediction for _, prediction in iterate_predictions(model, frames)]
    return {key: np.stack([p[key] for p in out]) for key in keys}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", MODELS)
def test_reproduces_deepmd_kit(name, kind, reference, frames):
    model = load_model(FILES / f"{name}{KINDS[kind]}")
    rcut = 3.0 if name.startswith("se_e3_tebd") else 3.5
    assert model.type_map == ["O", "H"] and model.cutoff == rcut and model.dtype == torch.float64
    out = predictions(model, frames)
    errors = {key: np.abs(out[key] - reference[f"{name}/{key}"]) for key in out}
    assert errors["energy"].max() < TOLERANCE, errors["energy"]
    if name == "se_atten":  # the near-cutoff pair of frame 0 (module docstring)
        atom_errors = errors["forces"][0].max(axis=1)
        assert set(np.flatnonzero(atom_errors > TOLERANCE)) <= set(NEAR_CUTOFF_PAIR)
        assert atom_errors.max() < 1e-6
        assert errors["virial"][0].max() < 1e-5
        errors = {key: value[1:] for key, value in errors.items()}
    assert errors["forces"].max() < TOLERANCE, errors["forces"].max()
    assert errors["virial"].max() < TOLERANCE, errors["virial"].max()


def test_checkpoint_and_frozen_file_give_the_same_model():
    for name in MODELS:
        from_checkpoint = load_model(FILES / f"{name}.ckpt.pt")
        from_frozen = load_model(FILES / f"{name}.pth")
        assert from_checkpoint.config == from_frozen.config
        for key, value in from_checkpoint.state_dict().items():
            assert torch.equal(value, from_frozen.state_dict()[key]), (name, key)


def test_model_is_built_from_the_section_the_file_stores():
    model = load_model(FILES / "se_atten_v2.pth")
    descriptor = model.config["descriptor"]
    assert descriptor["type"] == "se_atten_v2" and descriptor["sel"] == 36 and descriptor["attn_layer"] == 1
    assert model.config["fitting_net"]["neuron"] == [8, 8]
    # DeePMD-kit's PyTorch se_e2_r has one net per neighbour type whatever its type_one_side says
    stored = read_model_file(FILES / "se_e2_r.ckpt.pt")["model"]["_extra_state"]["model_params"]
    assert stored["descriptor"]["type_one_side"] is False
    model = load_model(FILES / "se_e2_r.ckpt.pt")
    assert model.config["descriptor"]["type_one_side"] is True and len(model.descriptor.embeddings) == 2
    # out_bias + bias_atom_e of the file: mlpot's per-type energy bias
    state = read_model_file(FILES / "se_e2_a.ckpt.pt")["model"]
    bias = state["model.Default.atomic_model.out_bias"][0] + state["model.Default.atomic_model.fitting_net.bias_atom_e"]
    assert torch.equal(load_model(FILES / "se_e2_a.ckpt.pt").fitting.bias_atom, bias)


def test_file_kind_is_read_from_the_content(tmp_path, reference, frames):
    shutil.copyfile(FILES / "se_e2_a.ckpt.pt", tmp_path / "weights.bin")
    shutil.copyfile(FILES / "se_e2_a.pth", tmp_path / "model")
    for path in (tmp_path / "weights.bin", tmp_path / "model"):
        out = predictions(load_model(path), frames[:1])
        assert np.abs(out["energy"] - reference["se_e2_a/energy"][:1]).max() < TOLERANCE


def test_freeze_writes_an_mlpot_model_of_the_same_numbers(tmp_path, reference, frames):
    metadata = freeze(FILES / "se_atten_v2.ckpt.pt", tmp_path / "frozen.pt")
    assert metadata["type_map"] == ["O", "H"] and metadata["cutoff"] == 3.5
    assert read_model_file(tmp_path / "frozen.pt")["format"] == "mlpot-frozen"
    assert main(["freeze", str(FILES / "se_e2_a.pth"), "-o", str(tmp_path / "cli.pt")]) == 0
    for frozen, name in ((tmp_path / "frozen.pt", "se_atten_v2"), (tmp_path / "cli.pt", "se_e2_a")):
        out = predictions(load_model(frozen), frames)
        assert np.abs(out["forces"] - reference[f"{name}/forces"]).max() < TOLERANCE


def test_mlpot_test_ase_calculator_and_md(tmp_path, shared_data, reference, frames, capsys):
    from ase import Atoms
    from ase.io import write

    from mlpot.calculators.ase import MlpotCalculator

    data = shared_data("deepmd_water/data_3")
    detail = tmp_path / "detail"
    assert main(["test", str(FILES / "se_e2_r.pth"), str(data), "-n", "1", "-d", str(detail)]) == 0
    assert "Energy RMSE" in capsys.readouterr().out
    energy = np.loadtxt(f"{detail}.e.out", ndmin=2)
    forces = np.loadtxt(f"{detail}.f.out", ndmin=2)
    assert abs(energy[0, 1] - reference["se_e2_r/energy"][0]) < TOLERANCE
    assert np.abs(forces[:, 3:] - reference["se_e2_r/forces"][0]).max() < TOLERANCE

    frame = frames[1]
    atoms = Atoms(["O" if t == 0 else "H" for t in frame["atom_types"]], positions=frame["positions"],
                  cell=frame["cell"], pbc=True)
    atoms.calc = MlpotCalculator(str(FILES / "se_atten_v2.ckpt.pt"))
    assert abs(atoms.get_potential_energy() - reference["se_atten_v2/energy"][1]) < TOLERANCE
    assert np.abs(atoms.get_forces() - reference["se_atten_v2/forces"][1]).max() < TOLERANCE

    write(tmp_path / "water.extxyz", atoms)
    log = tmp_path / "md.log"
    assert main(["md", str(FILES / "se_atten_v2.ckpt.pt"), str(tmp_path / "water.extxyz"), "--steps", "2",
                 "--log", str(log), "--trajectory", str(tmp_path / "md.extxyz"), "--log-interval", "1",
                 "--no-progress"]) == 0
    assert len(log.read_text().splitlines()) >= 3


def train_from(pretrained: Path, tmp_path, shared_data, monkeypatch):
    """(trained, pretrained) models of one step of ``mlpot train input.json -f <pretrained>
    --use-pretrain-script`` on data_3 in ``tmp_path``."""
    import json

    model = json.loads((FILES / "deepmd_reference.json").read_text())["models"]["se_e2_a"]
    config = {"model": model, "learning_rate": {"type": "exp", "start_lr": 1e-3, "decay_steps": 1},
              "loss": {"type": "ener"},
              "training": {"training_data": {"systems": [str(shared_data("deepmd_water/data_3"))], "batch_size": 1},
                           "numb_steps": 1, "disp_freq": 1, "save_freq": 1}}
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "-f", str(pretrained), "--use-pretrain-script", "--no-progress"]) == 0
    return load_model(tmp_path / "model.pt"), load_model(pretrained)


def test_training_starts_from_a_deepmd_kit_model(tmp_path, shared_data, monkeypatch):
    """``mlpot train input.json -f frozen.pth --use-pretrain-script`` (dp train --init-frz-model):
    the DeePMD-kit model's section and weights; its statistics are kept, not recomputed."""
    trained, pretrained = train_from(FILES / "se_atten.pth", tmp_path, shared_data, monkeypatch)
    assert trained.config["descriptor"]["type"] == "se_atten"
    assert torch.equal(trained.descriptor.dstd, pretrained.descriptor.dstd)
    assert torch.equal(trained.fitting.bias_atom, pretrained.fitting.bias_atom)


# ---- what is not read ----------------------------------------------------------------------------
def _edited_checkpoint(tmp_path, edit) -> Path:
    payload = read_model_file(FILES / "se_e2_a.ckpt.pt")
    edit(payload["model"], payload["model"]["_extra_state"]["model_params"])
    path = tmp_path / "edited.ckpt.pt"
    torch.save(payload, path)
    return path


def _multi_task(state, params):
    params["model_dict"] = {"water": dict(params)}


def _dipole_fitting(state, params):
    params["fitting_net"] = {"type": "dipole", "neuron": [8, 8], "resnet_dt": True, "precision": "float64"}


def _dpa3(state, params):
    params["descriptor"]["type"] = "dpa3"


def _compressed(state, params):
    state["model.Default.atomic_model.descriptor.sea.compress_info.0"] = torch.ones(6, dtype=torch.float64)


def _unknown_tensor(state, params):
    state["model.Default.atomic_model.fitting_net.case_embd"] = torch.ones(2, dtype=torch.float64)


def _per_slot_statistics(state, params):
    state["model.Default.atomic_model.descriptor.sea.mean"][0, 5, 0] += 1.0


@pytest.mark.parametrize("edit, error, message", [
    (_multi_task, CheckpointError, "not supported yet: multi-task DeePMD-kit checkpoints"),
    (_dipole_fitting, CheckpointError, "not supported yet: DeePMD-kit files of a se_e2_a descriptor with a dipole"),
    (_dpa3, ConfigError, "not supported yet: model/descriptor/type=dpa3"),
    (_compressed, CheckpointError, r"not supported yet: compressed DeePMD-kit models \(dp compress\)"),
    (_unknown_tensor, CheckpointError, "not supported yet: DeePMD-kit parameter atomic_model.fitting_net.case_embd"),
    (_per_slot_statistics, CheckpointError, "not supported yet: .*sea.mean differs between the neighbour slots"),
])
def test_unsupported_models_are_named(tmp_path, edit, error, message):
    path = _edited_checkpoint(tmp_path, edit)
    with pytest.raises(error, match=message) as raised:
        load_model(path)
    assert "edited.ckpt.pt" in str(raised.value)


class _Planted:
    """Pickles to ``os.system(command)``: plain unpickling would run it."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_hostile_frozen_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model_def_script": "__torch__.deepmd.", "x": _Planted(f"touch {marker}")}, protocol=2)
    fake = tmp_path / "evil.pth"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("frozen/data.pkl", payload)
        archive.writestr("frozen/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("frozen/byteorder", "little")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refusing to unpickle the global (posix|os)\.system"):
        load_model(fake)
    assert not marker.exists()


def test_truncated_frozen_archive_fails_clearly(tmp_path):
    blob = (FILES / "se_e2_a.pth").read_bytes()
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        names = archive.namelist()
    broken = tmp_path / "broken.pth"
    with zipfile.ZipFile(FILES / "se_e2_a.pth") as source, zipfile.ZipFile(broken, "w") as target:
        for name in names:
            if name != "frozen/data/3":
                target.writestr(name, source.read(name))
    with pytest.raises(CheckpointError, match=r"broken\.pth: missing storage record frozen/data/3"):
        load_model(broken)
