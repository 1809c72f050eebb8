"""Real-data training through the DeePMD input.json path (slow tier).

Small models train for 400-5000 steps (15-70 s each on one core) on the provided datasets (spec deepmd.md §7.3) and
must reach a validation RMSE below (label standard deviation) / 5, measured on the same basis as
the RMSE lcurve.out prints (all entries that carry the label). Datasets with one system only are
split by frame into training and validation systems written under tmp_path (the shared data stay
read-only). Each case finishes in well under 3 minutes on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlpot.cli import main

pytestmark = pytest.mark.slow


def _descriptor(sel, rcut, rcut_smth, neuron=(16, 32), axis_neuron=8):
    return {"type": "se_e2_a", "sel": sel, "rcut": rcut, "rcut_smth": rcut_smth, "neuron": list(neuron),
            "axis_neuron": axis_neuron, "resnet_dt": False, "seed": 1}


def _input(type_map, descriptor, fitting, loss, train, valid, steps, start_lr=5e-3, decay_steps=50, batch_size=1):
    return {
        "model": {"type_map": type_map, "descriptor": descriptor, "fitting_net": fitting},
        "learning_rate": {"type": "exp", "start_lr": start_lr, "stop_lr": 1e-5, "decay_steps": decay_steps},
        "loss": loss,
        "training": {
            "training_data": {"systems": [str(s) for s in train], "batch_size": batch_size},
            "validation_data": {"systems": [str(s) for s in valid], "batch_size": 1, "numb_btch": 1000},
            "numb_steps": steps, "seed": 1, "disp_freq": steps // 5, "save_freq": steps,
        },
    }


def _train(tmp_path, monkeypatch, config) -> dict:
    """Run ``mlpot train input.json``; return the last lcurve.out row as {column: value}."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "input.json").write_text(json.dumps(config, indent=1))
    monkeypatch.chdir(run_dir)
    assert main(["train", "input.json"]) == 0
    header = (run_dir / "lcurve.out").read_text().splitlines()[0].lstrip("#").split()
    rows = np.atleast_2d(np.loadtxt(run_dir / "lcurve.out"))
    return dict(zip(header, rows[-1]))


def _split_system(source: Path, dest: Path, every: int):
    """Write every ``every``-th frame of a one-set DeePMD system to dest/<name>_valid, the rest to
    dest/<name>_train (interleaved, so both parts sample the same trajectory)."""
    sets = sorted(source.glob("set.*"))
    assert len(sets) == 1
    n_frames = len(np.load(sets[0] / "coord.npy"))
    is_valid = np.arange(n_frames) % every == every // 2
    out = {}
    for part, frames in (("train", ~is_valid), ("valid", is_valid)):
        target = dest / f"{source.name}_{part}"
        (target / "set.000").mkdir(parents=True)
        for raw in source.glob("*.raw"):
            (target / raw.name).write_text(raw.read_text())
        if (source / "nopbc").exists():
            (target / "nopbc").write_text("")
        for array in sets[0].glob("*.npy"):
            np.save(target / "set.000" / array.name, np.load(array)[frames])
        out[part] = target
    return out["train"], out["valid"]


def _report(name, rmse, std):
    print(f"\n{name}: validation RMSE {rmse:.4g}, label std {std:.4g}, ratio {rmse / std:.3f} (must be < 0.2)")
    assert rmse < std / 5


@pytest.mark.parametrize("kind,fitting", [
    ("dipole", {"type": "dipole", "sel_type": [0], "neuron": [32, 32], "resnet_dt": True, "seed": 1}),
    ("polar", {"type": "polar", "sel_type": [0], "neuron": [32, 32], "resnet_dt": True, "fit_diag": False,
               "seed": 1}),
])
def test_water_tensor_atomic(tmp_path, monkeypatch, shared_data, kind, fitting):
    root = shared_data(f"deepmd_water_tensor/{kind}")
    train = root / "training_data_reformat" / "atomic_system"
    valid = root / "validation_data_reformat" / "atomic_system"
    config = _input(["O", "H"], _descriptor([46, 92], 4.0, 3.5), fitting,
                    {"type": "tensor", "pref": 0.0, "pref_atomic": 1.0}, [train], [valid], steps=400)
    last = _train(tmp_path, monkeypatch, config)
    label = "atomic_dipole" if kind == "dipole" else "atomic_polarizability"
    std = float(np.load(valid / "set.000" / f"{label}.npy").std())
    _report(f"water_tensor {kind} (atomic, all atoms incl. zero H rows)", last[f"rmse_{label}_val"], std)


def test_dos_global(tmp_path, monkeypatch, shared_data):
    train, valid = _split_system(shared_data("deepmd_dos/heat-221"), tmp_path / "data", every=5)
    fitting = {"type": "dos", "numb_dos": 250, "neuron": [32, 32], "resnet_dt": True, "seed": 1}
    loss = {"type": "dos", "start_pref_dos": 1.0, "limit_pref_dos": 1.0, "start_pref_cdf": 0.0,
            "limit_pref_cdf": 0.0, "start_pref_ados": 1.0, "limit_pref_ados": 1.0}
    config = _input(["Si"], _descriptor([60], 5.0, 4.5), fitting, loss, [train], [valid], steps=1000, start_lr=1e-2,
                    decay_steps=400, batch_size=3)
    last = _train(tmp_path, monkeypatch, config)
    std = float(np.load(valid / "set.000" / "dos.npy").std())
    _report("dos heat-221 (global dos, every 5th frame held out)", last["rmse_dos_val"], std)


def test_nopbc_energy_forces(tmp_path, monkeypatch, shared_data):
    train, valid = [], []
    for name in ("C1H4O2", "C3H3O4"):
        t, v = _split_system(shared_data(f"deepmd_nopbc/{name}"), tmp_path / "data", every=10)
        train.append(t)
        valid.append(v)
    fitting = {"type": "ener", "neuron": [64, 64, 64], "resnet_dt": True, "seed": 1}
    loss = {"type": "ener", "start_pref_e": 1.0, "limit_pref_e": 10.0, "start_pref_f": 100, "limit_pref_f": 1.0}
    config = _input(["C", "H", "O"], _descriptor([10, 10, 10], 6.0, 0.5), fitting, loss, train, valid,
                    steps=5000, start_lr=5e-3, decay_steps=500, batch_size=4)
    last = _train(tmp_path, monkeypatch, config)
    # energy spread within each formula (the composition offset is what the output bias fits for free)
    energy_per_atom = []
    for system in valid:
        per_atom = np.load(system / "set.000" / "energy.npy") / len((system / "type.raw").read_text().split())
        energy_per_atom.append(per_atom - per_atom.mean())
    energy_per_atom = np.concatenate(energy_per_atom)
    forces = np.concatenate([np.load(v / "set.000" / "force.npy").ravel() for v in valid])
    _report("nopbc forces (eV/Å)", last["rmse_f_val"], float(forces.std()))
    _report("nopbc energy per atom (eV)", last["rmse_e_val"], float(energy_per_atom.std()))


def _freeze_and_test(capsys, systems, atomic=False) -> str:
    """``mlpot freeze`` in the run directory, then ``mlpot test`` on ``systems``; returns the report."""
    assert main(["freeze", "-o", "frozen.pt"]) == 0
    capsys.readouterr()
    assert main(["test", "frozen.pt", *[str(s) for s in systems]] + (["-a"] if atomic else [])) == 0
    return capsys.readouterr().out


def _average(report: str, title: str) -> float:
    """The number of the ``title`` line in the weighted-average block of a ``mlpot test`` report."""
    block = report.split("weighted average of errors")[1]
    return float(next(line.split(":")[1].split()[0] for line in block.splitlines() if line.startswith(title)))


@pytest.mark.parametrize("kind,fitting,global_label,atomic_label,title", [
    ("dipole", {"type": "dipole", "neuron": [32, 32], "resnet_dt": True, "seed": 1}, "dipole", "atomic_dipole",
     "Dipole  RMSE "),
    ("polar", {"type": "polar", "neuron": [32, 32], "resnet_dt": True, "fit_diag": False, "seed": 1},
     "polarizability", "atomic_polarizability", "Polarizability  RMSE "),
])
def test_water_tensor_mixed_atomic_and_global_systems(tmp_path, monkeypatch, capsys, shared_data, kind, fitting,
                                                     global_label, atomic_label, title):
    """DeePMD-kit's water_tensor example layout: an atomic_system and a global_system trained together
    (each batch has one kind of label), then `mlpot test` on the validation systems of each kind."""
    root = shared_data(f"deepmd_water_tensor/{kind}")
    train = [root / "training_data_reformat" / name for name in ("atomic_system", "global_system")]
    valid = [root / "validation_data_reformat" / name for name in ("atomic_system", "global_system")]
    config = _input(["O", "H"], _descriptor([46, 92], 4.0, 3.5), fitting,
                    {"type": "tensor", "pref": 1.0, "pref_atomic": 1.0}, train, valid, steps=600)
    config["model"]["atom_exclude_types"] = [1]  # DeePMD-kit's PyTorch examples select O this way
    _train(tmp_path, monkeypatch, config)
    global_report = _freeze_and_test(capsys, [valid[1]])
    atomic_report = _freeze_and_test(capsys, [valid[0]], atomic=True)
    global_std = float(np.load(valid[1] / "set.000" / f"{global_label}.npy").std())
    # `test -a` compares the selected (O) atoms only, as dp test does: the std of their labels
    oxygen = np.loadtxt(valid[0] / "type.raw", dtype=int) == 0
    atomic = np.load(valid[0] / "set.000" / f"{atomic_label}.npy")
    atomic_std = float(atomic.reshape(len(atomic), len(oxygen), -1)[:, oxygen].std())
    _report(f"water_tensor {kind} mixed systems, mlpot test on the global validation system",
            _average(global_report, title), global_std)
    _report(f"water_tensor {kind} mixed systems, mlpot test -a on the atomic validation system (O atoms)",
            _average(atomic_report, title), atomic_std)


def test_dos_mixed_atomic_and_global_systems(tmp_path, monkeypatch, capsys, shared_data):
    """DeePMD-kit's dos example layout (heat-221-reformat: atomic_system with atom_dos, global_system
    with dos, the same frames), every 5th frame of each held out; `mlpot test` on the held-out frames.

    The bound is on the global DOS, as in test_dos_global. The atomic DOS is printed, not bounded:
    on these 9 training frames no small model gets near std/5 (trained on atom_dos alone it stays at
    0.35 std, both on training and held-out frames; predicting the mean atomic DOS gives 0.41 std).
    """
    source = shared_data("deepmd_dos/heat-221-reformat")
    atomic_train, atomic_valid = _split_system(source / "atomic_system", tmp_path / "data", every=5)
    global_train, global_valid = _split_system(source / "global_system", tmp_path / "data", every=5)
    fitting = {"type": "dos", "numb_dos": 250, "neuron": [32, 32], "resnet_dt": True, "seed": 1}
    loss = {"type": "dos", "start_pref_dos": 1.0, "limit_pref_dos": 1.0, "start_pref_cdf": 0.0,
            "limit_pref_cdf": 0.0, "start_pref_ados": 1.0, "limit_pref_ados": 1.0}
    config = _input(["Si"], _descriptor([60], 5.0, 4.5), fitting, loss, [atomic_train, global_train],
                    [atomic_valid, global_valid], steps=2000, start_lr=1e-2, decay_steps=800, batch_size=3)
    _train(tmp_path, monkeypatch, config)
    global_report = _freeze_and_test(capsys, [global_valid])
    atomic_report = _freeze_and_test(capsys, [atomic_valid], atomic=True)
    atomic_block = atomic_report.split("output of dp test")[1]  # atomic DOS is reported per system only
    atomic_rmse = float(next(line.split(":")[1].split()[0] for line in atomic_block.splitlines()
                             if line.startswith("Atomic DOS RMSE")))
    atom_dos = np.load(atomic_valid / "set.000" / "atom_dos.npy")
    print(f"\ndos mixed systems, mlpot test -a on the held-out atomic frames: atomic DOS RMSE {atomic_rmse:.4g}, "
          f"label std {atom_dos.std():.4g}, ratio {atomic_rmse / atom_dos.std():.3f} (not bounded, see docstring)")
    assert np.isfinite(atomic_rmse)
    _report("dos mixed systems, mlpot test on the held-out global frames", _average(global_report, "DOS RMSE "),
            float(np.load(global_valid / "set.000" / "dos.npy").std()))
