"""Fine-tuning (``mlpot train --finetune``) and ``mlpot change-bias`` on tiny EMT CuAu models.

Pretrained models are trained here for a few steps (type_map [Cu, Au, Ag]: Ag plays the pretrained
type that the new data lacks); the checks are exact: energies before fine-tuning equal the
pretrained ones plus the per-type bias shift, which equals the hand least squares of the residual.
"""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlpot.calculators.export import freeze, load_model
from mlpot.config import load_config
from mlpot.data import AtomsDataset, collate, read_systems
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.deepmd.finetune import finetune_bias, prepare_finetune
from mlpot.training.trainer import Trainer


def _make_data(folder: Path, n_frames: int = 10, seed: int = 0) -> None:
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 2)
        atoms.symbols[rng.choice(len(atoms), 2 + k % 3, replace=False)] = "Au"  # varying composition
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    write(folder / "train.extxyz", frames)
    # the fine-tuning data: the same structures with another energy reference per element
    # (+0.3 eV per Cu, -0.2 eV per Au), as from another DFT setting
    from ase.calculators.singlepoint import SinglePointCalculator

    shifted = []
    for atoms in frames:
        energy = atoms.get_potential_energy() + 0.3 * (atoms.symbols == "Cu").sum() - 0.2 * (atoms.symbols == "Au").sum()
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=energy, forces=atoms.get_forces())
        shifted.append(copy)
    write(folder / "ft.extxyz", shifted)


DESCRIPTORS = {
    "se_e2_a": {"type": "se_e2_a", "sel": [30, 30, 30], "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8],
                "axis_neuron": 2, "seed": 1},
    "se_atten": {"type": "se_atten", "sel": 40, "rcut": 4.0, "rcut_smth": 1.0, "neuron": [4, 8],
                 "axis_neuron": 2, "attn_layer": 1, "attn": 8, "tebd_dim": 5, "seed": 1},
}


def _config(data: Path, out: Path, type_map, descriptor, steps=3, train="train.extxyz") -> dict:
    return {
        "seed": 3, "dtype": "float64", "output_dir": str(out),
        "model": {"type_map": list(type_map), "descriptor": descriptor, "fitting_net": {"neuron": [8, 8], "seed": 1}},
        "data": {"train": {"paths": [str(data / train)], "batch_size": 2}},
        "optimizer": {"name": "adam"},
        "lr_schedule": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 5},
        "loss": {"type": "ener", "terms": {"energy": {"start_pref": 1.0, "limit_pref": 1.0},
                                           "forces": {"start_pref": 1.0, "limit_pref": 1.0}}},
        "training": {"numb_steps": steps},
        "logging": {"disp_freq": 1, "progress_bar": False},
        "checkpoint": {"every": 100, "keep": 2},
    }


def _write(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emt")
    _make_data(folder)
    return folder


def _pretrain(data: Path, folder: Path, kind: str, type_map=("Cu", "Au", "Ag")) -> Path:
    descriptor = dict(DESCRIPTORS[kind])
    if isinstance(descriptor["sel"], list):
        descriptor["sel"] = descriptor["sel"][:len(type_map)]
    config = load_config(_write(_config(data, folder / "pre", type_map, descriptor), folder / "pre.yaml"))
    trainer = Trainer(config, progress=False)
    trainer.run()
    return trainer.last_checkpoint


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """{kind: checkpoint} of se_e2_a and se_atten models with type_map [Cu, Au, Ag]."""
    folder = tmp_path_factory.mktemp("pre")
    return {kind: _pretrain(data, folder / kind, kind) for kind in DESCRIPTORS}


def _batches(path: Path, type_map, cutoff: float):
    system = read_systems([str(path)], type_map=list(type_map))[0]
    dataset = AtomsDataset(system, cutoff, type_map=list(type_map))
    return [collate([dataset[i] for i in range(len(dataset))])]


def _energies(model, batches) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(b)[K.ENERGY].detach().numpy() for b in batches])


def _finetune(data, tmp_path, checkpoint, type_map, descriptor, branch=None, use_script=False):
    """(trainer after the pre-training bias change, old bias, new bias)."""
    config = load_config(_write(_config(data, tmp_path / "ft", type_map, descriptor, train="ft.extxyz"),
                                tmp_path / "ft.yaml"))
    weights, random_fitting = prepare_finetune(config, load_model(checkpoint), build=build_model, branch=branch,
                                               use_pretrain_script=use_script, file="ft.yaml",
                                               pretrained_file=str(checkpoint))
    trainer = Trainer(config, init_weights=weights, progress=False)
    old, new = finetune_bias(trainer.model, trainer.data.stat_samples, random_fitting, write=lambda line: None)
    return trainer, old, new


def _counts(batches, n_types):
    return np.concatenate([np.stack([np.bincount(b[K.ATOM_TYPES][b[K.BATCH] == f].numpy(), minlength=n_types)
                                     for f in range(int(b[K.N_ATOMS].shape[0]))]) for b in batches]).astype(float)


def test_finetune_shifts_only_the_bias_by_the_least_squares_of_the_residual(data, tmp_path, pretrained):
    checkpoint = pretrained["se_e2_a"]
    before = load_model(checkpoint)
    trainer, old, new = _finetune(data, tmp_path, checkpoint, ["Cu", "Au", "Ag"], DESCRIPTORS["se_e2_a"])
    model = trainer.model.eval()
    batches = _batches(data / "train.extxyz", ["Cu", "Au", "Ag"], 4.0)
    e_pre, e_ft = _energies(before, batches), _energies(model, batches)
    # the hand least squares of label - prediction over the statistics sample (every frame here)
    sample = trainer.data.stat_samples
    counts = _counts(sample, 3)
    labels = np.concatenate([b[K.ENERGY].numpy() for b in sample])
    shift = np.linalg.lstsq(counts, labels - _energies(before, sample), rcond=None)[0]
    np.testing.assert_allclose(new - old, shift, atol=1e-10)
    # the label change per element is recovered (the pretrained model was fitted to the old labels)
    np.testing.assert_allclose(shift[:2], [0.3, -0.2], atol=0.02)
    assert shift[2] == pytest.approx(0.0, abs=1e-12)  # no Ag atom: min-norm zero
    np.testing.assert_allclose(e_ft - e_pre, _counts(batches, 3) @ shift, atol=1e-8)
    np.testing.assert_allclose(old, before.fitting.bias_atom[:, 0].numpy())
    # descriptor statistics are the pretrained ones (not recomputed)
    torch.testing.assert_close(model.descriptor.davg, before.descriptor.davg)
    torch.testing.assert_close(model.descriptor.dstd, before.descriptor.dstd)


def test_type_map_subset_gives_the_pretrained_energies_up_to_the_bias(data, tmp_path, pretrained):
    checkpoint = pretrained["se_atten"]
    before = load_model(checkpoint)
    trainer, old, new = _finetune(data, tmp_path, checkpoint, ["Au", "Cu"], DESCRIPTORS["se_atten"])
    model = trainer.model.eval()
    assert model.type_map == ["Au", "Cu"]
    np.testing.assert_allclose(old, before.fitting.bias_atom[[1, 0], 0].numpy())
    e_pre = _energies(before, _batches(data / "train.extxyz", ["Cu", "Au", "Ag"], 4.0))
    new_batches = _batches(data / "train.extxyz", ["Au", "Cu"], 4.0)
    e_ft = _energies(model, new_batches)
    np.testing.assert_allclose(e_ft - e_pre, _counts(new_batches, 2) @ (new - old), atol=1e-8)
    torch.testing.assert_close(model.descriptor.davg, before.descriptor.davg[[1, 0]])


def test_type_map_permutation_of_a_per_type_descriptor(data, tmp_path, pretrained):
    checkpoint = pretrained["se_e2_a"]
    before = load_model(checkpoint)
    descriptor = dict(DESCRIPTORS["se_e2_a"], sel=[30, 30, 30])
    trainer, old, new = _finetune(data, tmp_path, checkpoint, ["Ag", "Au", "Cu"], descriptor)
    e_pre = _energies(before, _batches(data / "train.extxyz", ["Cu", "Au", "Ag"], 4.0))
    batches = _batches(data / "train.extxyz", ["Ag", "Au", "Cu"], 4.0)
    np.testing.assert_allclose(_energies(trainer.model.eval(), batches) - e_pre, _counts(batches, 3) @ (new - old),
                               atol=1e-8)


def test_type_map_errors(data, tmp_path, pretrained):
    with pytest.raises(ConfigError, match="type_map extension") as error:
        _finetune(data, tmp_path, pretrained["se_atten"], ["Cu", "Au", "Pt"], DESCRIPTORS["se_atten"])
    assert "model/type_map" in str(error.value)
    with pytest.raises(ConfigError, match="not supported yet: dropping pretrained types with descriptor 'se_e2_a'"):
        _finetune(data, tmp_path, pretrained["se_e2_a"], ["Cu", "Au"], dict(DESCRIPTORS["se_e2_a"], sel=[30, 30]))


def test_mismatching_model_section_names_the_key_and_use_pretrain_script(data, tmp_path, pretrained):
    checkpoint = pretrained["se_e2_a"]
    other = dict(DESCRIPTORS["se_e2_a"], neuron=[4, 6])
    with pytest.raises(ConfigError) as error:
        _finetune(data, tmp_path, checkpoint, ["Cu", "Au", "Ag"], other)
    message = str(error.value)
    assert "model/descriptor/neuron" in message and "ft.yaml" in message and "--use-pretrain-script" in message
    trainer, old, new = _finetune(data, tmp_path, checkpoint, ["Cu", "Au", "Ag"], other, use_script=True)
    assert trainer.config.model["descriptor"]["neuron"] == [4, 8]
    before = load_model(checkpoint)
    batches = _batches(data / "train.extxyz", ["Cu", "Au", "Ag"], 4.0)
    np.testing.assert_allclose(_energies(trainer.model.eval(), batches) - _energies(before, batches),
                               _counts(batches, 3) @ (new - old), atol=1e-8)


def test_random_branch_reinitialises_only_the_fitting(data, tmp_path, pretrained):
    checkpoint = pretrained["se_e2_a"]
    before = load_model(checkpoint)
    trainer, old, new = _finetune(data, tmp_path, checkpoint, ["Cu", "Au", "Ag"], DESCRIPTORS["se_e2_a"],
                                  branch="RANDOM")
    model = trainer.model
    for key, value in before.state_dict().items():
        if key.startswith("descriptor."):
            torch.testing.assert_close(model.state_dict()[key], value)
    changed = [k for k, v in before.state_dict().items() if k.startswith("fitting.nets.")
               and not torch.equal(model.state_dict()[k], v)]
    assert changed
    # set-by-statistic on the labels: least squares of the raw energies
    sample = trainer.data.stat_samples
    labels = np.concatenate([b[K.ENERGY].numpy() for b in sample])
    np.testing.assert_allclose(new, np.linalg.lstsq(_counts(sample, 3), labels, rcond=None)[0], atol=1e-8)


def test_multitask_branch_selection(data, tmp_path):
    from mlpot.models import build_model
    from mlpot.models.deepmd.finetune import select_branch

    head = {"type_map": ["Cu", "Au"], "descriptor": "d", "fitting_net": {"neuron": [8], "seed": 1}}
    multi = build_model({"type": "multi_task", "shared_dict": {"d": dict(DESCRIPTORS["se_atten"])},
                         "model_dict": {"a": head, "b": dict(head, fitting_net={"neuron": [8], "seed": 2})}})
    with pytest.raises(ConfigError, match="choose a head with --model-branch"):
        select_branch(multi, None, "multi.pt")
    with pytest.raises(ConfigError, match="no branch 'c'"):
        select_branch(multi, "c", "multi.pt")
    chosen, random_fitting = select_branch(multi, "b", "multi.pt")
    assert chosen is multi.heads["b"] and not random_fitting
    chosen, random_fitting = select_branch(multi, "RANDOM", "multi.pt")
    assert chosen is multi.heads["a"] and random_fitting
    # a head's weights go to the fine-tuned model
    config = load_config(_write(_config(data, tmp_path / "ft", ["Cu", "Au"], DESCRIPTORS["se_atten"]), tmp_path / "ft.yaml"))
    weights, _ = prepare_finetune(config, multi, build=build_model, branch="b", use_pretrain_script=True,
                                  pretrained_file="multi.pt")
    for key, value in multi.heads["b"].state_dict().items():
        torch.testing.assert_close(weights[key], value)


def test_cli_finetune_trains_from_step_zero(data, tmp_path, pretrained, capsys):
    from mlpot.commands import train

    frozen = tmp_path / "pre.pt"
    freeze(pretrained["se_atten"], frozen)
    config = _write(_config(data, tmp_path / "out", ["Au", "Cu"], DESCRIPTORS["se_atten"], steps=2, train="ft.extxyz"),
                    tmp_path / "in.yaml")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert train.run(parser.parse_args([str(config), "--finetune", str(frozen), "--no-progress"])) == 0
    out = capsys.readouterr().out
    assert "fine-tuning: energy bias change-by-statistic: Au" in out
    model = load_model(tmp_path / "out" / "model.pt")
    assert model.type_map == ["Au", "Cu"]
    lcurve = (tmp_path / "out" / "lcurve.out").read_text().splitlines()
    assert [line.split()[0] for line in lcurve if not line.startswith("#")] == ["1", "2"]


# ---- change-bias --------------------------------------------------------------------------------
def _change_bias(*argv):
    from mlpot.commands import change_bias

    parser = argparse.ArgumentParser()
    change_bias.add_arguments(parser)
    return change_bias.run(parser.parse_args([str(a) for a in argv]))


def test_change_bias_modes(data, tmp_path, pretrained, capsys):
    frozen = tmp_path / "model.pt"
    freeze(pretrained["se_e2_a"], frozen)
    before = load_model(frozen)
    batches = _batches(data / "train.extxyz", ["Cu", "Au", "Ag"], 4.0)
    counts, labels = _counts(batches, 3), batches[0][K.ENERGY].numpy()
    old = before.fitting.bias_atom[:, 0].numpy()

    assert _change_bias(frozen, "-s", data / "train.extxyz", "-m", "change") == 0
    changed = load_model(tmp_path / "model_updated.pt")  # DeePMD's default name
    expected = old + np.linalg.lstsq(counts, labels - _energies(before, batches), rcond=None)[0]
    np.testing.assert_allclose(changed.fitting.bias_atom[:, 0].numpy(), expected, atol=1e-10)
    out = capsys.readouterr().out
    assert "old:" in out and "new:" in out and f"{expected[0]:.10g}" in out

    assert _change_bias(frozen, "-s", data / "train.extxyz", "-m", "set", "-n", "4", "-o", tmp_path / "set.pt") == 0
    expected = np.linalg.lstsq(counts[:4], labels[:4], rcond=None)[0]
    np.testing.assert_allclose(load_model(tmp_path / "set.pt").fitting.bias_atom[:, 0].numpy(), expected, atol=1e-10)

    assert _change_bias(frozen, "-b", "-1.5", "-2.5", "0.25", "-o", tmp_path / "user.pt") == 0
    user = load_model(tmp_path / "user.pt")
    np.testing.assert_array_equal(user.fitting.bias_atom[:, 0].numpy(), [-1.5, -2.5, 0.25])
    # only the bias moved: energies shift by counts @ (new - old)
    np.testing.assert_allclose(_energies(user, batches) - _energies(before, batches),
                               counts @ (np.array([-1.5, -2.5, 0.25]) - old), atol=1e-8)


def test_change_bias_of_a_checkpoint_stays_a_checkpoint_and_errors_name_the_file(data, tmp_path, pretrained):
    from mlpot.training.checkpoint import load_checkpoint

    checkpoint = pretrained["se_atten"]
    assert _change_bias(checkpoint, "-b", "1", "2", "3", "-o", tmp_path / "ck.pt") == 0
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["step"] == 3 and "optimizer" in state
    np.testing.assert_array_equal(state["model_state_dict"]["fitting.bias_atom"][:, 0].numpy(), [1, 2, 3])
    with pytest.raises(ConfigError) as error:
        _change_bias(checkpoint, "-b", "1", "2", "-o", tmp_path / "bad.pt")
    assert str(checkpoint) in str(error.value) and "2 bias values for 3 types" in str(error.value)
    with pytest.raises(Exception) as error:
        _change_bias(tmp_path / "missing.pt", "-b", "1")
    assert "missing.pt" in str(error.value)
