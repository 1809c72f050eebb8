"""MACE-SCF's run_train front-end (mlpot.config.macescf) and how ``mlpot train`` picks it."""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from mlpot.commands.train import _is_macescf
from mlpot.config import mace, macescf, validate_config

CONFIG = """heads:
  DFT:
    info_keys: {energy: AIMS_energy, dipole: AIMS_dipole, total_charge: total_charge}
    arrays_keys: {forces: AIMS_forces}
train_schedule:
  0: {name: direct, start: 0, end: 1, lr: 0.01, loss: {energy_per_atom: 10.0, forces: 100.0},
      fixed_point_training_options: {mode: direct}}
"""


@pytest.fixture
def run_folder(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(4):
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]] + 0.05 * rng.normal(size=(3, 3)))
        atoms.info.update(AIMS_energy=-10.0 + rng.normal(), AIMS_dipole=rng.normal(size=3), total_charge=0.0)
        atoms.arrays["AIMS_forces"] = rng.normal(size=(3, 3))
        frames.append(atoms)
    write(tmp_path / "train.xyz", frames)
    (tmp_path / "config.yaml").write_text(CONFIG)
    return tmp_path


def test_run_train_options_become_a_valid_native_config(run_folder):
    argv = ["--model", "FixedPoint", "--train_file", "train.xyz", "--scheduler", "ExponentialLR",
            "--lr_scheduler_gamma", "0.99", "--r_max", "4.0", "--num_channels", "8", "--max_L", "1"]
    native, _ = macescf.convert_run_train(argv, str(run_folder / "config.yaml"))
    assert native["model"]["type"] == "fixed_point"
    assert native["model"]["field_feature_widths"] == [1.0, 2.0]  # MACE-SCF's default, as a list
    # mace-torch steps ExponentialLR once per epoch
    assert native["lr_schedule"] == {"type": "exp", "per_epoch": True, "decay_steps": 1, "decay_rate": 0.99,
                                     "stop_lr": 0.0}
    assert native["data"]["valid_fraction"] == pytest.approx(0.1)  # held out of train_file
    config = validate_config(native, file=str(run_folder / "config.yaml"), base_dir=run_folder)
    assert config.data.train.paths == [str(run_folder / "train.xyz")]


def test_train_tells_mace_scf_from_mace_run_train(run_folder):
    config = run_folder / "config.yaml"
    assert _is_macescf(config, ()) and not mace.is_mace_config(config)
    assert _is_macescf(None, ["--model=LocalCharges"]) and _is_macescf(None, ["--model", "FixedPoint"])
    assert not _is_macescf(None, ["--model", "MACE", "--train_file", "x.xyz"])
    assert not _is_macescf(Path(run_folder / "train.xyz"), ())


def test_fixed_point_config_without_atomic_numbers_takes_the_elements_of_the_training_file(tmp_path, shared_data,
                                                                                           monkeypatch, capsys):
    """run_train without --atomic_numbers: the MACE backbone's element table is that of train_file
    (as MACE-SCF's run_train collects it), and the frozen model carries it."""
    from ase.io import read

    from mlpot.calculators.export import load_model
    from mlpot.cli import main

    frames = read(shared_data("water_clusters_aims/water_clusters.xyz"), index=":3")
    write(tmp_path / "train.xyz", frames)
    (tmp_path / "config.yaml").write_text(
        "model: FixedPoint\ntrain_file: train.xyz\nvalid_fraction: 0.0\nr_max: 3.0\nnum_channels: 4\nmax_L: 0\n"
        "num_interactions: 1\natomic_multipoles_max_l: 1\nelectrostatic_pbc_method: realspace\nbatch_size: 3\n"
        "optimizer: adam\ndefault_dtype: float64\n"
        "heads:\n  DFT:\n    info_keys: {energy: AIMS_energy, total_charge: total_charge, fermi_level: the_fermi_level,\n"
        "                external_field: the_external_field}\n"
        "    arrays_keys: {forces: AIMS_forces, atomic_multipoles: AIMS_atom_multipoles}\n"
        "train_schedule:\n  0: {name: direct, start: 0, end: 0, loss: {energy_per_atom: 1.0, forces: 1.0},\n"
        "      fixed_point_training_options: {mode: direct}}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "config.yaml", "--no-progress"]) == 0
    assert "from the training data: model.backbone.atomic_numbers = [1, 8]" in capsys.readouterr().out
    model = load_model(tmp_path / "model.pt")
    assert model.type_map == ["H", "O"]
    assert model.config["backbone"]["atomic_numbers"] == [1, 8]
