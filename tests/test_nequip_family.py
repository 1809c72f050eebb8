"""The NequIP family's hooks and its trained models in mlpot's tools: statistics managers (custom and
energy-only) against numpy, persistent modifiers, fine-tuning from a NequIP package through a config
(ModelFromPackage + modify_PerTypeScaleShift), energy-only models (do_derivatives false), and
mlpot freeze / package / test / the ASE calculator / load_model on NequIP files (never running code
from them)."""

import ast
import re

import numpy as np
import pytest
import torch
import yaml

from mlpot.calculators import load_model
from mlpot.cli import main
from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K
from mlpot.errors import CheckpointError, ConfigError
from mlpot.models.equivariant.nequip import family
from mlpot.models.equivariant.nequip.statistics import compute_statistics, manager_entries


@pytest.fixture(scope="module")
def reference(shared_data):
    return shared_data("nequip_reference")


def energies(model, frames_path):
    frames = read_frames(frames_path, type_map=model.type_map)
    dataset = AtomsDataset(frames, model.cutoff, type_map=model.type_map)
    batch = collate([dataset[i] for i in range(len(dataset))], dtype=torch.float64)
    return model(batch)[K.ENERGY].detach().numpy(), batch


def test_custom_and_energy_only_statistics_match_numpy(reference):
    frames = read_frames(reference / "water.xyz", type_map=["O", "H"])
    spec = {"metrics": [{"field": "forces", "metric": "absmax", "per_type": True},
                        {"name": "n_mean", "field": "num_neighbors", "metric": "mean", "per_type": True},
                        {"name": "e_var", "field": "total_energy", "metric": "var", "unbiased": False},
                        {"name": "count", "field": "forces", "metric": "count"}]}
    stats = compute_statistics(manager_entries(spec), frames, ["O", "H"], 4.0)
    forces = np.concatenate([f[K.FORCES] for f in frames])
    types = np.concatenate([f[K.ATOM_TYPES] for f in frames])
    assert stats["F_absmax"]["O"] == np.abs(forces[types == 0]).max() and stats["F_absmax_H"] == np.abs(forces[types == 1]).max()
    assert stats["e_var"] == pytest.approx(np.var([float(f[K.ENERGY]) for f in frames]))
    assert stats["count"] == forces.size
    import ase.io
    from ase.neighborlist import neighbor_list

    atoms = ase.io.read(reference / "water.xyz", index=":")
    counts = np.concatenate([np.bincount(neighbor_list("i", a, 4.0), minlength=len(a)) for a in atoms])
    for index, name in enumerate(["O", "H"]):
        assert stats["n_mean"][name] == pytest.approx(counts[types == index].mean(), rel=1e-12)
    energy_only = compute_statistics(manager_entries({"manager": "energy_only"}), frames, ["O", "H"], 4.0)
    per_atom = np.array([float(f[K.ENERGY]) / len(f[K.POSITIONS]) for f in frames])
    assert energy_only["per_atom_energy_std"] == pytest.approx(per_atom.std(ddof=1), rel=1e-12)
    assert energy_only["total_energy_std"] == pytest.approx(np.std([float(f[K.ENERGY]) for f in frames], ddof=1), rel=1e-12)
    with pytest.raises(ConfigError, match=r"model\.data_statistics\.metrics\.0\.field: not supported yet: field 'edge_lengths'"):
        manager_entries({"metrics": [{"field": "edge_lengths", "metric": "mean"}]})


def test_persistent_modifiers_on_a_trained_model(reference):
    model = load_model(reference / "model.nequip.zip")
    base, batch = energies(model, reference / "frames.xyz")
    shifted = family.modify(model, [{"modifier": "modify_PerTypeScaleShift", "shifts": {"O": -90.0}}])
    n_oxygen = torch.zeros(4, dtype=torch.float64).index_add(0, batch[K.BATCH], (batch[K.ATOM_TYPES] == 0).double()).numpy()
    trained_o = float(model.scale_shift.shifts[0].detach())  # the trained (not the configured) value is the base
    np.testing.assert_allclose(energies(shifted, reference / "frames.xyz")[0], base + (-90.0 - trained_o) * n_oxygen, rtol=1e-13)
    assert not isinstance(shifted.scale_shift.shifts, torch.nn.Parameter)  # shifts_trainable defaults to false
    energy_only = family.modify(model, [{"modifier": "disable_ForceStressOutput"}])
    assert energy_only.energy_derivatives is False and model.energy_derivatives is True
    assert family.modify(energy_only, [{"modifier": "enable_ForceStressOutput"}]).energy_derivatives is True
    with pytest.raises(ConfigError, match=r"modifiers\.0\.modifier: not supported yet: modifier enable_OpenEquivariance"):
        family.modify(model, [{"modifier": "enable_OpenEquivariance"}])
    with pytest.raises(ConfigError, match=r"unknown model modifier 'modify_PerTypeScaleShif'.*did you mean 'modify_PerTypeScaleShift'"):
        family.modify(model, [{"modifier": "modify_PerTypeScaleShif"}])


def test_modifiers_on_a_model_trained_from_a_config(reference):
    """A model built from a native section keeps its native-only keys (data_statistics, modifiers) in
    its config; modifying it (mlpot package build --modifiers) works on top of the trained values."""
    model = load_model(reference / "model.nequip.zip")
    section = {**model.config, "data_statistics": {"manager": "common"},
               "modifiers": [{"modifier": "modify_PerTypeScaleShift", "shifts": {"H": -187.0}}]}
    trained = family.build(section, torch.float64)
    trained.load_state_dict(model.state_dict())
    trained.config = section  # as training leaves it: the resolved section, native-only keys included
    shifted = family.modify(trained, [{"modifier": "modify_PerTypeScaleShift", "shifts": {"O": -90.0}}])
    assert "data_statistics" not in shifted.config and "modifiers" not in shifted.config
    assert shifted.scale_shift.shifts.detach().tolist() == pytest.approx([-90.0, float(model.scale_shift.shifts[1].detach())])


def test_finetune_from_a_nequip_package_through_the_config(reference, tmp_path, capsys, monkeypatch):
    config = yaml.safe_load((reference / "config.yaml").read_text())
    config["data"]["split_dataset"]["file_path"] = str(reference / "water.xyz")
    config["training_module"]["optimizer"]["lr"] = 1e-14  # one step that changes nothing measurable
    config["training_module"]["model"] = {
        "_target_": "nequip.model.modify",
        "modifiers": [{"modifier": "modify_PerTypeScaleShift", "shifts": {"O": -90.0}, "shifts_trainable": True}],
        "model": {"_target_": "nequip.model.ModelFromPackage", "package_path": str(reference / "model.nequip.zip")}}
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "finetune.yaml", "~trainer.max_epochs", "++trainer.max_steps=1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning: per-type scales/shifts set by the modifiers" in out
    pretrained, tuned = load_model(reference / "model.nequip.zip"), load_model(tmp_path / "model.pt")
    base, batch = energies(pretrained, reference / "frames.xyz")
    n_oxygen = torch.zeros(4, dtype=torch.float64).index_add(0, batch[K.BATCH], (batch[K.ATOM_TYPES] == 0).double()).numpy()
    expected = base + (-90.0 - float(pretrained.scale_shift.shifts[0].detach())) * n_oxygen
    np.testing.assert_allclose(energies(tuned, reference / "frames.xyz")[0], expected, rtol=1e-10)


def test_energy_only_model_trains_on_energies_and_gives_no_forces(reference, tmp_path, capsys, monkeypatch):
    config = yaml.safe_load((reference / "config.yaml").read_text())
    config["data"]["split_dataset"]["file_path"] = str(reference / "water.xyz")
    config["data"]["stats_manager"]["_target_"] = "nequip.data.EnergyOnlyDataStatisticsManager"
    config["training_module"]["loss"] = {"_target_": "nequip.train.EnergyOnlyLoss"}
    config["training_module"]["val_metrics"] = {"_target_": "nequip.train.EnergyOnlyMetrics"}
    model = config["training_module"]["model"]
    model.update(do_derivatives=False, per_type_energy_scales="${training_data_stats:total_energy_std}")
    (tmp_path / "energy.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-cn", "energy.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    printed = float(re.search(r"model\.per_type_energy_scales = (.+)", out).group(1))
    frames = read_frames(reference / "water.xyz")
    train, _ = torch.utils.data.random_split(range(len(frames)), [0.75, 0.25], generator=torch.Generator().manual_seed(456))
    assert printed == pytest.approx(np.std([float(frames[i][K.ENERGY]) for i in train.indices], ddof=1), rel=1e-12)
    trained = load_model(tmp_path / "model.pt")
    assert trained.energy_derivatives is False
    from mlpot.calculators.ase import MlpotCalculator
    from ase.calculators.calculator import PropertyNotImplementedError
    import ase.io

    atoms = ase.io.read(reference / "frames.xyz", index=0)
    atoms.calc = MlpotCalculator(trained)
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_forces()
    config["training_module"]["loss"] = {"_target_": "nequip.train.EnergyForceLoss"}
    config["training_module"]["val_metrics"] = {"_target_": "nequip.train.EnergyForceMetrics"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"loss\.terms\.forces: the model is energy-only"):
        from mlpot.commands.train import load_any_config
        from mlpot.training.trainer import Trainer

        Trainer(load_any_config(tmp_path / "bad.yaml")[0], progress=False)


def test_nequip_files_in_mlpot_tools(reference, tmp_path, capsys):
    reference_numbers = np.load(reference / "reference.npz")
    assert main(["freeze", str(reference / "model.ckpt"), "-o", str(tmp_path / "frozen.pt")]) == 0
    assert main(["package", "build", str(reference / "model.ckpt"), str(tmp_path / "package.pt"),
                 "--modifiers", "{modifier: modify_PerTypeScaleShift, scales: 1.0}"]) == 0
    assert main(["package", "info", str(tmp_path / "package.pt")]) == 0
    info = capsys.readouterr().out
    assert '"modify_PerTypeScaleShift"' in info and '"energy_derivatives": true' in info
    for path in (reference / "model.ckpt", reference / "model.nequip.zip", tmp_path / "frozen.pt"):
        model = load_model(path)
        np.testing.assert_allclose(energies(model, reference / "frames.xyz")[0], reference_numbers["energy"], rtol=1e-12)
    assert main(["test", "-m", str(reference / "model.nequip.zip"), "-s", str(reference / "water.xyz")]) == 0
    assert re.search(r"Force\s+RMSE\s*:\s*[0-9.e+-]+", capsys.readouterr().out)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(tmp_path / "pwned")}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: neither an mlpot model or checkpoint nor a peer model file"):
        load_model(evil)
    assert not (tmp_path / "pwned").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_export_mode_gives_the_same_numbers_and_exports(reference):
    """``set_export_mode``: data-independent shapes for torch.export (the generic mlpot compile)."""
    model = load_model(reference / "model.nequip.zip")
    eager, batch = energies(model, reference / "frames.xyz")
    model.set_export_mode(True)
    np.testing.assert_allclose(energies(model, reference / "frames.xyz")[0], eager, rtol=1e-14)
    keys = (K.POSITIONS, K.ATOM_TYPES, K.CELL, K.EDGE_INDEX, K.EDGE_SHIFTS, K.BATCH)

    class Energy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(dict(zip(keys, tensors)))[K.ENERGY]

    program = torch.export.export(Energy(model), tuple(batch[k] for k in keys))
    np.testing.assert_allclose(program.module()(*(batch[k] for k in keys)).detach().numpy(), eager, rtol=1e-14)
