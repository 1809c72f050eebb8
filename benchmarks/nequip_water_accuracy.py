"""Accuracy of one NequIP 0.19 config trained by mlpot and by NequIP 0.19.1 on liquid water (not a test).

The config is ``tests/nequip_water_config.yaml`` (the one of the slow check
tests/test_nequip_water_accuracy.py; hyperparameters stated at its top: 3 layers, l_max 1, 16
features, r_max 4.5 Å, float32, Adam lr 0.005, EMA 0.99, batch 1, 8 epochs of 240 steps). Both codes
run it unchanged, for the same number of steps, on the same extxyz files: ``deepmd_water`` data_0 +
data_1 (240 frames of 192 atoms) for training, data_3 (80 frames) for validation, written once by
``tests/nequip_configs.water_extxyz`` (ASE's writer).

* mlpot: ``python -m mlpot.cli train -cn config.yaml`` in ``WORKDIR/mlpot``; its curve is the
  validation rows of ``lcurve.out``; its final errors are those of ``model.pt`` on data_3
  (``mlpot.calculators.evaluate``, as ``mlpot test`` computes them).
* NequIP: ``nequip-train -cp WORKDIR/nequip -cn config.yaml`` from the virtual environment given by
  ``--nequip-venv`` (default /work/peers/nequip; skipped when absent); its curve and its final errors
  are NequIP's own validation metrics (``val0_epoch/forces_rmse``, ``val0_epoch/per_atom_energy_rmse``
  of its CSV logger, computed with the EMA weights after each epoch on all of data_3).

Force RMSE: over all Cartesian components (eV/Å); energy RMSE: of the energy per atom (eV/atom), in
both codes. Wall times are those of the whole training command (data statistics, validation and
checkpoints included). Run one code at a time on an otherwise quiet machine, from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/nequip_water_accuracy.py [--threads 1] [--workdir DIR]
        [--nequip-venv /work/peers/nequip] [--only mlpot|nequip]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "deepmd_water"
CONFIG = ROOT / "tests" / "nequip_water_config.yaml"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nequip_configs import water_extxyz  # noqa: E402


def write_data(workdir: Path) -> tuple:
    """train.xyz (data_0 + data_1) and val.xyz (data_3) in ``workdir``."""
    train, valid = workdir / "train.xyz", workdir / "val.xyz"
    if not train.exists():
        water_extxyz(train, [DATA / "data_0", DATA / "data_1"])
    if not valid.exists():
        water_extxyz(valid, [DATA / "data_3"])
    return train, valid


def timed(command: list, cwd: Path, threads: int, log: Path) -> float:
    """Run ``command`` in ``cwd`` with ``threads`` OpenMP threads, output to ``log``; wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{command[0]} failed ({code}); see {log}")
    return wall


def run_mlpot(workdir: Path, train: Path, valid: Path, threads: int) -> dict:
    """Train with mlpot; its validation curve and the final model's errors on data_3."""
    from mlpot.calculators import load_model
    from mlpot.calculators.evaluate import evaluate_frames, system_errors
    from mlpot.data import read_frames

    folder = workdir / "mlpot"
    folder.mkdir(exist_ok=True)
    shutil.copy(CONFIG, folder / "config.yaml")
    command = [sys.executable, "-m", "mlpot.cli", "train", "-cn", "config.yaml", f"data.train_file_path={train}",
               f"data.val_file_path={valid}", "--no-progress"]
    wall = timed(command, folder, threads, folder / "train.log")
    rows = np.loadtxt(folder / "lcurve.out", ndmin=2)  # step rmse_val rmse_trn rmse_e_val rmse_e_trn rmse_f_val ...
    curve = [(int(row[0]), row[5], row[3]) for row in rows if not math.isnan(row[1])]
    model = load_model(folder / "model.pt")
    errors = system_errors(evaluate_frames(model, read_frames(valid, type_map=model.type_map), "data_3"))
    return {"wall": wall, "steps": int(rows[-1, 0]), "curve": curve, "forces_rmse": errors["forces_rmse"][0],
            "energy_rmse": errors["energy_rmse_per_atom"][0]}


def run_nequip(venv: Path, workdir: Path, train: Path, valid: Path, threads: int) -> dict:
    """Train with NequIP's own ``nequip-train``; its per-epoch validation metrics on data_3."""
    folder = workdir / "nequip"
    folder.mkdir(exist_ok=True)
    shutil.copy(CONFIG, folder / "config.yaml")
    command = [str(venv / "bin" / "nequip-train"), "-cp", str(folder), "-cn", "config.yaml",
               f"hydra.run.dir={folder / 'run'}", f"data.train_file_path={train}", f"data.val_file_path={valid}"]
    wall = timed(command, folder, threads, folder / "train.log")
    with open(folder / "run" / "csv" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    steps = max(int(row["step"]) for row in rows) + 1
    curve = [(int(row["step"]) + 1, float(row["val0_epoch/forces_rmse"]), float(row["val0_epoch/per_atom_energy_rmse"]))
             for row in rows if row.get("val0_epoch/forces_rmse")]
    return {"wall": wall, "steps": steps, "curve": curve, "forces_rmse": curve[-1][1], "energy_rmse": curve[-1][2]}


def report(name: str, result: dict) -> None:
    print(f"{name}: {result['steps']} steps, wall {result['wall']:.0f} s; data_3 force RMSE "
          f"{result['forces_rmse']:.4f} eV/Å, energy RMSE {1000 * result['energy_rmse']:.3f} meV/atom")
    print("    step  force RMSE (eV/Å)  energy RMSE (meV/atom)")
    for step, forces, energy in result["curve"]:
        print(f"  {step:6d}  {forces:17.4f}  {1000 * energy:22.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--nequip-venv", type=Path, default=Path("/work/peers/nequip"))
    parser.add_argument("--only", choices=["mlpot", "nequip"], default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nequip_water_accuracy_"))
    workdir.mkdir(parents=True, exist_ok=True)
    train, valid = write_data(workdir)
    print(f"work folder {workdir}; {args.threads} thread(s)")
    if args.only != "nequip":
        report("mlpot", run_mlpot(workdir, train, valid, args.threads))
    if args.only != "mlpot":
        if (args.nequip_venv / "bin" / "nequip-train").exists():
            report("NequIP", run_nequip(args.nequip_venv, workdir, train, valid, args.threads))
        else:
            print(f"NequIP skipped: no {args.nequip_venv / 'bin' / 'nequip-train'}")


if __name__ == "__main__":
    main()
