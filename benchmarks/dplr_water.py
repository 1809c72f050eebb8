"""DPLR (short range + dipole_charge long range) vs a short-range-only DeePMD model on liquid water (not a test).

DeePMD-kit's two-step DPLR workflow (doc/model/dplr.md), run by mlpot on DeePMD-kit-form inputs
(``examples/deepmd_water_dplr/``):

1. DW model (``dw.json``): se_e2_a + dipole fitting on O, trained on the atomic dipoles (Wannier
   centroid displacements, Å) of ``deepmd_water_tensor/dipole`` (64 H2O in 12.3-12.4 Å boxes),
   validated on its validation system, frozen to ``dw.pth``. The dataset carries a ``nopbc`` flag
   although it is periodic liquid water with whole molecules (coordinates -1..13.6 Å in a 12.3 Å box);
   the DW model is used on periodic water, so it is trained on a copy without the flag.
2. Energy models (``ener.json``) on ``deepmd_water`` data_0 + data_1 (240 frames of 64 H2O, 12.44 Å):
   the DPLR model (same input with ``model/modifier`` dipole_charge, beta 0.4 1/Å, h 1 Å, charges
   O 6, H 1, WC -8) and the same input without the modifier (short range only), the same steps and
   seed. decay_steps = steps / 40, so the learning rate falls from 1e-3 to ``--stop-lr`` (the example's
   3.51e-8 by default; short runs want a larger one) in both.
3. Both frozen models are evaluated on every frame of the held-out data_3 (80 frames, the same
   energy/force labels): energy RMSE per atom and force RMSE (as ``mlpot test``).

The two water datasets are different frames of the same kind of system (64-molecule liquid water,
both from DeePMD-kit's examples); the DW labels are not of the energy frames, so the DW model is
transferred, as in DeePMD-kit's DPLR example. Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/dplr_water.py --dw-steps 2000 --steps 2000 [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EXAMPLE = ROOT / "examples" / "deepmd_water_dplr"
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def periodic_copy(system: Path, target: Path) -> Path:
    """``system`` copied to ``target`` without its ``nopbc`` flag (see the module docstring)."""
    if not target.exists():
        shutil.copytree(system, target, ignore=shutil.ignore_patterns("nopbc"))
    return target


def train_and_freeze(folder: Path, config: dict, output: str) -> float:
    """``mlpot train`` + ``mlpot freeze`` of ``config`` in ``folder``; wall seconds of the training."""
    from mlpot.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.json").write_text(json.dumps(config, indent=1))
    with working_directory(folder):
        start = time.perf_counter()
        if main(["train", "input.json", "--no-progress"]) != 0:
            raise SystemExit(f"training in {folder} failed")
        wall = time.perf_counter() - start
        if main(["freeze", "-o", output]) != 0:
            raise SystemExit(f"freezing in {folder} failed")
    return wall


def errors_on(model_file: Path, system: Path, atomic: bool = False) -> dict:
    """{error name: value} of a frozen model on every frame of a DeePMD system (``mlpot test``'s numbers)."""
    from mlpot.calculators import load_model
    from mlpot.calculators.evaluate import evaluate_frames, system_errors
    from mlpot.data import read_frames

    model = load_model(model_file)
    frames = read_frames(system, type_map=model.type_map)
    result = evaluate_frames(model, frames, system.name, atomic=atomic)
    return {name: value for name, (value, _) in system_errors(result).items()}


def long_range_size(model_file: Path, system: Path) -> dict:
    """Spread of the long-range part on a system: std of E_lr per atom (eV) and RMS of F_lr (eV/Å)."""
    from mlpot.calculators import load_model
    from mlpot.calculators.evaluate import predict_batch
    from mlpot.data import AtomsDataset, collate, read_frames

    model = load_model(model_file)
    long_range = model.members[1]
    frames = read_frames(system, type_map=model.type_map)
    dataset = AtomsDataset(list(frames), model.cutoff, type_map=model.type_map)
    energies, forces = [], []
    for index in range(len(dataset)):
        out = predict_batch(long_range, collate([dataset[index]]), virial=False)
        energies.append(float(out["energy"][0]) / len(out["forces"]))
        forces.append(out["forces"].numpy())
    return {"e_lr_std_per_atom": float(np.std(energies)), "f_lr_rms": float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))}


def scaled_dw(source: Path, scale: float, target: Path) -> Path:
    """A frozen DW model predicting ``scale`` times what ``source`` predicts: the last (linear) layer of
    each fitting net scaled, i.e. the DW model of the labels times ``scale`` (the dipole fitting has no
    output bias). ``--dw-label-scale 0.25`` reads the dataset's atomic dipoles as the sum of the four
    Wannier-centre displacements of each O rather than their centroid (module docstring)."""
    import re

    import torch

    payload = torch.load(source, map_location="cpu", weights_only=True)
    state = payload["state_dict"]
    last = {}
    for name in state:
        match = re.match(r"(.*fitting\.nets\.\d+\.layers\.)(\d+)\.(weight|bias)$", name)
        if match:
            last[match.group(1)] = max(last.get(match.group(1), 0), int(match.group(2)))
    for prefix, index in last.items():
        for kind in ("weight", "bias"):
            state[f"{prefix}{index}.{kind}"] = state[f"{prefix}{index}.{kind}"] * scale
    torch.save(payload, target)
    return target


def run_comparison(workdir: Path, dw_steps: int, steps: int, models=("short_range", "dplr"), dw_label_scale: float = 1.0,
                   stop_lr: float = 3.51e-8) -> dict:
    """Steps 1-3 of the module docstring in ``workdir`` for ``models``; the numbers as a dict. A DW model
    already frozen in ``workdir/dw/dw.pth`` is reused (its folder's input gives its steps)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tensor = DATA / "deepmd_water_tensor" / "dipole"
    dw_train = periodic_copy(tensor / "training_data_reformat" / "atomic_system", workdir / "dw_data" / "train")
    dw_valid = periodic_copy(tensor / "validation_data_reformat" / "atomic_system", workdir / "dw_data" / "valid")
    dw = json.loads((EXAMPLE / "dw.json").read_text())
    dw["training"]["training_data"]["systems"] = [str(dw_train)]
    dw["training"]["validation_data"]["systems"] = [str(dw_valid)]
    dw["training"]["numb_steps"] = dw_steps
    dw["learning_rate"]["decay_steps"] = max(1, dw_steps // 20)
    results = {"dw_steps": dw_steps, "steps": steps}
    if (workdir / "dw" / "dw.pth").is_file():
        results["dw_wall"] = float("nan")
        results["dw_steps"] = json.loads((workdir / "dw" / "input.json").read_text())["training"]["numb_steps"]
    else:
        results["dw_wall"] = train_and_freeze(workdir / "dw", dw, "dw.pth")
    dw_errors = errors_on(workdir / "dw" / "dw.pth", dw_valid, atomic=True)
    results["dw_rmse"] = next(v for k, v in dw_errors.items() if "dipole_rmse" in k)
    oxygen = np.loadtxt(dw_valid / "type.raw", dtype=int) == 0
    labels = np.load(dw_valid / "set.000" / "atomic_dipole.npy").reshape(-1, len(oxygen), 3)[:, oxygen]
    results["dw_label_rms"] = float(np.sqrt(np.mean(labels**2)))  # per component, as the RMSE
    water = DATA / "deepmd_water"
    ener = json.loads((EXAMPLE / "ener.json").read_text())
    ener["training"]["training_data"]["systems"] = [str(water / "data_0"), str(water / "data_1")]
    ener["training"]["validation_data"]["systems"] = [str(water / "data_3")]
    ener["training"]["numb_steps"] = steps
    ener["learning_rate"]["decay_steps"] = max(1, steps // 40)
    ener["learning_rate"]["stop_lr"] = stop_lr
    results["stop_lr"] = stop_lr
    dw_model = workdir / "dw" / "dw.pth"
    if dw_label_scale != 1.0:
        dw_model = scaled_dw(dw_model, dw_label_scale, workdir / "dw" / f"dw_x{dw_label_scale:g}.pth")
        results["dw_label_scale"] = dw_label_scale
    ener["model"]["modifier"]["model_name"] = str(dw_model)
    short = copy.deepcopy(ener)
    del short["model"]["modifier"]
    for name, config in (("short_range", short), ("dplr", ener)):
        if name not in models:
            continue
        results[f"{name}_wall"] = train_and_freeze(workdir / name, config, "model.pth")
        errors = errors_on(workdir / name / "model.pth", water / "data_3")
        results[f"{name}_energy_rmse_per_atom"] = errors["energy_rmse_per_atom"]
        results[f"{name}_forces_rmse"] = errors["forces_rmse"]
    if "dplr" in models:
        results.update(long_range_size(workdir / "dplr" / "model.pth", water / "data_3"))
    (workdir / f"results_{'_'.join(models)}.json").write_text(json.dumps(results, indent=1))
    return results


def report(results: dict) -> None:
    print(f"DW model: {results['dw_steps']} steps, {results['dw_wall']:.0f} s; validation atomic-dipole RMSE "
          f"{results['dw_rmse']:.4f} Å (label RMS on O {results['dw_label_rms']:.4f} Å)")
    print(f"energy models: {results['steps']} steps each, lr 1e-3 to {results['stop_lr']:.3g}; data_3 (80 frames, "
          "held out):")
    for name in ("short_range", "dplr"):
        if f"{name}_wall" not in results:
            continue
        print(f"  {name:12s} energy RMSE {1000 * results[f'{name}_energy_rmse_per_atom']:.3f} meV/atom, force RMSE "
              f"{results[f'{name}_forces_rmse']:.4f} eV/Å, training {results[f'{name}_wall']:.0f} s")
    if "f_lr_rms" in results:
        print(f"long-range part on data_3: std of E_lr {1000 * results['e_lr_std_per_atom']:.3f} meV/atom, "
              f"RMS of F_lr {results['f_lr_rms']:.4f} eV/Å")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dw-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--models", nargs="+", choices=["short_range", "dplr"], default=["short_range", "dplr"],
                        help="energy models to train (two processes may share a workdir once dw/dw.pth exists)")
    parser.add_argument("--dw-label-scale", type=float, default=1.0,
                        help="WC displacement = DW prediction x this (0.25: labels are sums over the 4 WCs)")
    parser.add_argument("--stop-lr", type=float, default=3.51e-8,
                        help="final learning rate of the energy models (the example's 3.51e-8 suits long runs)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dplr_water_"))
    print(f"work folder {workdir}")
    report(run_comparison(workdir.resolve(), args.dw_steps, args.steps, tuple(args.models), args.dw_label_scale,
                          args.stop_lr))


if __name__ == "__main__":
    main()
