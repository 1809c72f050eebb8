"""MACE accuracy on liquid water: mlpot vs mace-torch 0.3.16 trained with the same mace_run_train options.

Data: DeePMD-kit's water example (``shared/data/deepmd_water``), train on data_0 + data_1 (240 frames
of 64 O + 128 H), validate on data_3 (80 frames); the systems are written once as extxyz by mlpot's
data layer and both codes read the same two files. Both codes get the same options file (``OPTIONS``
below, ``--set key=value`` to change one, ``--epochs`` for ``max_num_epochs``), the same seed and
the same number of optimiser steps (240 / batch_size per epoch).

* mlpot: ``python -m mlpot.cli train --config options.yaml`` in ``WORKDIR/mlpot``;
* mace-torch: ``mace_run_train --config options.yaml`` of the virtual environment given by
  ``--mace-venv`` (skipped without it), in ``WORKDIR/mace``, as a separate program: nothing of mace
  is imported here.

Afterwards the final model of each code is evaluated on data_3 by ``mlpot test`` (mlpot reads
mace-torch's ``.model`` file unchanged and reproduces its numbers), so both get the same evaluator.
Note that mace_run_train saves the model of the lowest validation loss, mlpot the last (EMA) model.
The script prints the wall time of each training, the final energy and force RMSE on data_3 and the
per-epoch validation force RMSE of both (mlpot's ``metrics.csv``, mace's ``results/*_train.txt``).
Every process runs with ``--threads`` intra-op threads (OMP_NUM_THREADS), default 1.

    OMP_NUM_THREADS=1 python benchmarks/mace_water_accuracy.py --epochs 4 --workdir /tmp/macc \\
        --mace-venv /work/peers/mace
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "deepmd_water"
# the 64x0e + 64x1o / max_ell 3 / r_max 5 costs mace-torch ~7 s per frame and training step
# with one thread; these options fit both trainings in ~25 min each on a shared 2-core machine
OPTIONS = {"name": "water", "seed": 1, "train_file": "../train.xyz", "valid_file": "../valid.xyz",
           "energy_key": "energy", "forces_key": "forces", "E0s": "average", "model": "MACE",
           "hidden_irreps": "32x0e + 32x1o", "r_max": 4.5, "num_interactions": 2, "correlation": 3, "max_ell": 2,
           "scaling": "rms_forces_scaling", "batch_size": 2, "valid_batch_size": 10, "max_num_epochs": 4,
           "lr": 0.01, "ema": True, "ema_decay": 0.99, "default_dtype": "float32", "device": "cpu", "plot": False}
FINAL_RE = re.compile(r"(Energy|Force)\s+RMSE(/Natoms)?\s*:\s*(\S+)")


def write_data(workdir: Path) -> None:
    """train.xyz (data_0 + data_1) and valid.xyz (data_3) in ``workdir``, unless they are there."""
    sys.path.insert(0, str(ROOT))
    from mlpot.data import read_systems, write_frames
    from mlpot.data.batching import concat_frame_lists

    for name, systems in (("train.xyz", ["data_0", "data_1"]), ("valid.xyz", ["data_3"])):
        if not (workdir / name).exists():
            frames = concat_frame_lists(read_systems([DATA / s for s in systems], type_map=["H", "O"]))
            write_frames(workdir / name, frames, "extxyz", type_map=["H", "O"])


def run(command: list[str], folder: Path, env: dict) -> float:
    """Run ``command`` in ``folder`` (stdout/stderr to run.out/run.err there); wall seconds."""
    start = time.perf_counter()
    with open(folder / "run.out", "w") as out, open(folder / "run.err", "w") as err:
        code = subprocess.run(command, cwd=folder, env=env, stdout=out, stderr=err).returncode
    if code:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {folder}/run.err")
    return time.perf_counter() - start


def final_rmse(model: Path, valid: Path, env: dict) -> dict[str, float]:
    """Energy (eV), energy per atom (eV) and force (eV/Å) RMSE of ``model`` on ``valid`` by ``mlpot test``."""
    result = subprocess.run([sys.executable, "-m", "mlpot.cli", "test", str(model), str(valid)], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    return {kind.lower() + ("_per_atom" if per_atom else ""): float(value)
            for kind, per_atom, value in FINAL_RE.findall(result.stdout)}


def mlpot_curve(folder: Path) -> list[tuple[int, float]]:
    """(epoch, validation force RMSE eV/Å) of every validation in mlpot's metrics.csv."""
    with open(folder / "metrics.csv") as handle:
        return [(int(row["epoch"]), float(row["valid_forces_rmse"])) for row in csv.DictReader(handle)
                if row.get("valid_forces_rmse")]


def mace_curve(folder: Path) -> list[tuple[int, float]]:
    """(epoch, validation force RMSE eV/Å) of mace_run_train's evaluations (epoch -1: before training)."""
    curve = []
    for path in sorted((folder / "results").glob("*_train.txt")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("mode") == "eval":
                curve.append((-1 if entry["epoch"] is None else int(entry["epoch"]), float(entry["rmse_f"])))
    return curve


def train_both(args, options: dict, env: dict) -> dict:
    results = {}
    codes = [("mlpot", [sys.executable, "-m", "mlpot.cli", "train", "--config", "options.yaml", "--no-progress"])]
    if args.mace_venv:
        codes.append(("mace", [str(Path(args.mace_venv) / "bin" / "mace_run_train"), "--config", "options.yaml"]))
    for code, command in codes:
        folder = args.workdir / code
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "options.yaml").write_text(yaml.safe_dump(options))
        code_env = dict(env, PYTHONPATH=str(ROOT)) if code == "mlpot" else \
            dict(env, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")  # mace 0.3.16 + e3nn 0.4.4 need it with torch >= 2.6
        wall = run(command, folder, code_env) if not args.reuse or not (folder / "run.out").exists() else None
        model = folder / (f"{options['name']}.pt" if code == "mlpot" else f"{options['name']}.model")
        results[code] = {"wall_s": wall, **final_rmse(model, args.workdir / "valid.xyz", dict(env, PYTHONPATH=str(ROOT))),
                         "curve": mlpot_curve(folder) if code == "mlpot" else mace_curve(folder)}
        print(f"{code}: {results[code]}", flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=OPTIONS["max_num_epochs"])
    parser.add_argument("--mace-venv", help="virtual environment with mace-torch 0.3.16 (its bin/mace_run_train)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an option (YAML value)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="evaluate finished runs in WORKDIR instead of training")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    options = dict(OPTIONS, max_num_epochs=args.epochs)
    for item in args.set:
        key, value = item.split("=", 1)
        options[key] = yaml.safe_load(value)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    write_data(args.workdir)
    steps = args.epochs * (240 // options["batch_size"])
    print(f"options: {json.dumps(options)}\n{steps} steps, {args.threads} thread(s)", flush=True)
    results = train_both(args, options, env)
    print("\ncode   wall (s)  energy RMSE (eV)  force RMSE (eV/Å)   validation force RMSE per epoch (eV/Å)")
    for code, result in results.items():
        wall = "-" if result["wall_s"] is None else f"{result['wall_s']:.0f}"
        curve = ", ".join(f"{epoch}: {value:.4f}" for epoch, value in result["curve"])
        print(f"{code:6s} {wall:>8s}  {result.get('energy', float('nan')):16.4f}  {result.get('force', float('nan')):17.4f}"
              f"   {curve}")
    (args.workdir / "summary.json").write_text(json.dumps({"options": options, "steps": steps, **results}, indent=1))


if __name__ == "__main__":
    main()
