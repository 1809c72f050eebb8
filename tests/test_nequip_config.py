"""NequIP 0.19 YAML configs run unchanged: the spec's tutorial config trains (only data path, species and
sizes changed), the statistics it prints equal the managers' definitions recomputed here with ASE and
numpy, and the front-end's errors name the key path (unknown keys with "did you mean", features not
built "not supported yet")."""

import ast
import re

import ase.io
import numpy as np
import pytest
import torch
import yaml

from mlpot.cli import main
from mlpot.config.nequip import apply_overrides, convert_dict, is_nequip_config
from mlpot.errors import ConfigError
from nequip_configs import tutorial, water_extxyz


@pytest.fixture(scope="module")
def water(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("water")
    return water_extxyz(folder / "water.xyz", [shared_data("deepmd_water/data_0")])


def independent_statistics(atoms_list, cutoff):
    """CommonDataStatisticsManager's definitions (spec §1.3), with ASE's neighbour list and numpy."""
    from ase.neighborlist import neighbor_list

    counts, types, forces, per_atom = [], [], [], []
    for atoms in atoms_list:
        centres = neighbor_list("i", atoms, cutoff)
        counts.append(np.bincount(centres, minlength=len(atoms)))
        types.append(np.array(atoms.get_chemical_symbols()))
        forces.append(atoms.get_forces())
        per_atom.append(atoms.get_potential_energy() / len(atoms))
    counts, types, forces = np.concatenate(counts), np.concatenate(types), np.concatenate(forces)
    return {"num_neighbors_mean": counts.mean(),
            "per_type_forces_rms": {t: np.sqrt(np.mean(forces[types == t] ** 2)) for t in ("O", "H")},
            "per_atom_energy_mean": np.mean(per_atom)}


def test_tutorial_config_trains_unchanged_and_prints_the_managers_statistics(tmp_path, water, shared_data, capsys, monkeypatch):
    config = tmp_path / "tutorial.yaml"
    config.write_text(tutorial(str(water)))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-cn", "tutorial.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    printed = {m.group(1): ast.literal_eval(m.group(2)) for m in re.finditer(r"from the training data: model\.(\w+) = (.+)", out)}
    assert set(printed) == {"avg_num_neighbors", "per_type_energy_scales", "per_type_energy_shifts"}
    # the split NequIP makes: torch.utils.data.random_split with the data seed, in split_dataset's order
    frames = ase.io.read(water, index=":")  # what NequIP's ASEDataset reads
    train, _, _ = torch.utils.data.random_split(range(len(frames)), [0.8, 0.1, 0.1], generator=torch.Generator().manual_seed(456))
    expected = independent_statistics([frames[i] for i in train.indices], 4.5)
    assert printed["avg_num_neighbors"] == pytest.approx(expected["num_neighbors_mean"], rel=1e-12)
    assert printed["per_type_energy_shifts"] == pytest.approx(expected["per_atom_energy_mean"], rel=1e-12)
    for name in ("O", "H"):
        assert printed["per_type_energy_scales"][name] == pytest.approx(expected["per_type_forces_rms"][name], rel=1e-12)
    assert "note: trainer.logger: mlpot does not log to Weights & Biases" in out
    assert re.search(r"test \(best checkpoint best\.ckpt\): .*forces_rmse \d", out)
    assert (tmp_path / "best.ckpt").exists() and (tmp_path / "last.pt").exists() and (tmp_path / "model.pt").exists()
    rows = [line.split() for line in (tmp_path / "lcurve.out").read_text().splitlines() if not line.startswith("#")]
    assert int(rows[-1][0]) == 13  # one epoch of 64 training frames in batches of 5


@pytest.fixture()
def reference_config(tmp_path, shared_data):
    config = yaml.safe_load((shared_data("nequip_reference") / "config.yaml").read_text())
    config["data"]["split_dataset"]["file_path"] = str(shared_data("nequip_reference/water.xyz"))
    return config


def test_reference_config_statistics_equal_nequips_own(reference_config, shared_data, tmp_path, capsys):
    """NequIP resolved ${training_data_stats:...} of the reference run into its checkpoint: the same numbers."""
    from mlpot.config import validate_config
    from mlpot.models.equivariant.nequip.files import read_nequip_checkpoint
    from mlpot.training.data_setup import build_training_data

    native, _ = convert_dict(reference_config, file="config.yaml", output_dir=str(tmp_path))
    lines = []
    build_training_data(validate_config(native, base_dir=tmp_path), torch.float64, log=lines.append)
    nequip_config, _, _ = read_nequip_checkpoint(shared_data("nequip_reference/model.ckpt"))
    resolved = {m.group(1): ast.literal_eval(m.group(2)) for m in (re.match(r"from the training data: model\.(\w+) = (.+)", l) for l in lines) if m}
    assert resolved["avg_num_neighbors"] == pytest.approx(nequip_config["avg_num_neighbors"], rel=1e-14)
    for name, value in nequip_config["per_type_energy_scales"].items():
        assert resolved["per_type_energy_scales"][name] == pytest.approx(value, rel=1e-14)


def test_overrides_and_detection(reference_config):
    assert is_nequip_config(reference_config)
    changed = apply_overrides(reference_config, ["trainer.max_epochs=3", "++cutoff_radius=4.5", "+extra.key=[1, 2]", "~model_type_names"])
    assert changed["trainer"]["max_epochs"] == 3 and changed["cutoff_radius"] == 4.5 and changed["extra"]["key"] == [1, 2]
    assert "model_type_names" not in changed
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch: override .*no such key.*did you mean 'max_epochs'"):
        apply_overrides(reference_config, ["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match="key exists"):
        apply_overrides(reference_config, ["+cutoff_radius=4.5"])


@pytest.mark.parametrize("path, value, message", [
    (("training_module", "model", "num_layer"), 2, r"training_module\.model\.num_layer: unknown key \(did you mean 'num_layers'\?\)"),
    (("trainer", "val_check_interval"), 0.5, r"trainer\.val_check_interval: not supported yet: trainer\.val_check_interval"),
    (("trainer", "inference_mode"), False, r"trainer\.inference_mode: inference_mode must not be set"),
    (("trainer", "callbacks", 0, "_target_"), "nequip.train.callbacks.SoftAdapt", r"trainer\.callbacks\.0\._target_: not supported yet"),
    (("data", "_target_"), "nequip.data.datamodule.rMD17DataModule", r"data\._target_: not supported yet: _target_ 'nequip\.data"),
    (("data", "include_keys"), ["dipole"], r"data\.include_keys: not supported yet"),
    (("training_module", "loss", "_target_"), "nequip.train.EnergyForceLos", r"not supported yet: loss _target_"),
    (("training_module", "val_metrics", "coeffs"), {"forces_maxabserr": 1.0}, r"maxabserr .*not pooled"),
    (("training_module", "model", "avg_num_neighbors"), "${training_data_stats:num_neighbor_mean}",
     r"training_module\.model\.avg_num_neighbors: unknown training data statistic .*did you mean 'num_neighbors_mean'"),
    (("training_module", "model", "r_max"), "${cutof_radius}", r"no key 'cutof_radius' .*did you mean 'cutoff_radius'"),
])
def test_config_errors_name_the_key(reference_config, tmp_path, path, value, message):
    from mlpot.config import validate_config

    target = reference_config
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        native, _ = convert_dict(reference_config, file="config.yaml", output_dir=str(tmp_path))
        validate_config(native, base_dir=tmp_path)


def test_resolvers_and_run_list(reference_config, tmp_path):
    reference_config["names"] = ["O", "H"]
    reference_config["layers"] = "${int_div:${int_mul:3,4},6}"
    reference_config["training_module"]["model"]["num_layers"] = "${layers}"
    reference_config["training_module"]["model"]["per_type_energy_shifts"] = "${list_to_constant_dict:${names},-5.0}"
    native, notes = convert_dict(reference_config, output_dir=str(tmp_path))
    assert native["model"]["num_layers"] == 2 and native["model"]["per_type_energy_shifts"] == {"O": -5.0, "H": -5.0}
    assert native["training"]["change_bias_after_training"] is False and native["ema"] == {"decay": 0.99, "warmup": True}
    reference_config["run"] = ["val"]
    with pytest.raises(ConfigError, match="run: not supported yet: a run that does not start with one train"):
        convert_dict(reference_config)
