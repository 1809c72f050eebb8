"""MD throughput on liquid water: mlpot (eager, frozen, compiled; ASE and LAMMPS) against DeePMD-kit's ASE calculator.

The model is examples/md_water/input.json (DeePMD-kit's se_e2_a water layout with smaller nets,
float64), trained for ``--train-steps`` steps by mlpot and, from the same input, by DeePMD-kit
(throughput does not depend on how far a model is trained). Systems: a frame of the water data
(192 atoms) and its 2 x 2 x 2 replica (1 536 atoms), velocities at 300 K. Each variant runs
``--steps`` velocity-Verlet steps of 0.5 fs after ``--warmup`` steps, in a fresh process with
``--threads`` threads:

* ``mlpot eager`` — the training checkpoint through the ASE calculator (skin 1 Å);
* ``mlpot frozen`` — ``mlpot freeze``'s model.pt through the ASE calculator;
* ``mlpot compressed`` — that model after ``mlpot compress`` (tabulated embedding nets, as
  ``dp compress``) through the ASE calculator;
* ``mlpot compiled`` — ``mlpot compile``'s AOTInductor package through the ASE calculator
  (``--no-compile`` skips it: compiling takes minutes);
* ``mlpot lammps`` — the frozen model in LAMMPS (the ``lammps`` package, ``fix external``, fix nve);
* ``dp ase`` — DeePMD-kit's ``deepmd.calculator.DP`` on its frozen model (pure-PyTorch path,
  benchmarks/deepmd_test.py's launcher), from the venv ``--deepmd`` where it exists.

Printed: steps/s and ns/day per variant and size, and each variant's ratio to ``dp ase``.
Run from the repository root: ``python benchmarks/md_water.py [--threads 2] [--steps 100]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from deepmd_test import DATA, DP_LAUNCHER, run, thread_env  # noqa: E402

TIMESTEP_FS = 0.5

# one MD measurement, run by the python of either venv: prints "steps_per_second <value>"
WORKER = r"""
import sys, time, json
import numpy as np
from ase.io import read
from ase import units
from ase.md.verlet import VelocityVerlet
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
args = json.loads(sys.argv[1])
atoms = read(args["structure"])
MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
Stationary(atoms)
variant = args["variant"]
if variant == "dp ase":
    exec(args["launcher_stub"])
    from deepmd.calculator import DP
    atoms.calc = DP(model=args["model"])
elif variant == "mlpot lammps":
    from mlpot.calculators.lammps import LammpsDriver, new_lammps
    from ase.io import write
    from ase.data import atomic_masses, atomic_numbers
    write(args["workdir"] + "/data.lmp", atoms, format="lammps-data", specorder=["O", "H"], masses=True,
          velocities=True, units="metal")
    lmp = new_lammps()
    lmp.commands_string(f"units metal\natom_style atomic\natom_modify map yes\nboundary p p p\n"
                        f"read_data {args['workdir']}/data.lmp\n")
    for i, name in enumerate(["O", "H"]):
        lmp.command(f"mass {i + 1} {atomic_masses[atomic_numbers[name]]}")
    driver = LammpsDriver(lmp, args["model"], elements=["O", "H"], skin=1.0).install()
    driver.command(f"timestep {args['timestep_fs'] / 1000}\nfix integrate all nve\nthermo 0")
    driver.command(f"run {args['warmup']}")
    start = time.perf_counter()
    driver.command(f"run {args['steps']} pre no post no")
    print("steps_per_second", args["steps"] / (time.perf_counter() - start))
    sys.exit(0)
else:
    from mlpot.calculators import MlpotCalculator
    atoms.calc = MlpotCalculator(args["model"], skin=1.0)
dynamics = VelocityVerlet(atoms, args["timestep_fs"] * units.fs)
dynamics.run(args["warmup"])
start = time.perf_counter()
dynamics.run(args["steps"])
print("steps_per_second", args["steps"] / (time.perf_counter() - start))
"""

# the launcher's first lines: make `import deepmd.pt` skip its compiled op library (built for another torch)
STUB = DP_LAUNCHER.split("from deepmd.main")[0]


def write_structures(folder: Path) -> dict:
    """{n_atoms: extxyz path}: frame 0 of data_0 (192 atoms) and its 2 x 2 x 2 replica."""
    sys.path.insert(0, str(ROOT))
    from ase import Atoms
    from ase.io import write

    from mlpot.data import keys as K, read_frames

    frame = read_frames(DATA / "data_0", index="0:1", type_map=["O", "H"])[0]
    atoms = Atoms(numbers=[8 if t == 0 else 1 for t in frame[K.ATOM_TYPES]], positions=frame[K.POSITIONS],
                  cell=frame[K.CELL], pbc=True)
    paths = {}
    for replica in (atoms, atoms.repeat((2, 2, 2))):
        paths[len(replica)] = folder / f"water_{len(replica)}.extxyz"
        write(paths[len(replica)], replica)
    return paths


def train_models(work: Path, args, env: dict) -> dict:
    """{variant: model path}, trained from examples/md_water/input.json with absolute data paths."""
    config = json.loads((ROOT / "examples" / "md_water" / "input.json").read_text())
    config["training"]["training_data"]["systems"] = [str(DATA / "data_0")]
    config["training"]["validation_data"]["systems"] = [str(DATA / "data_3")]
    config["training"].update(numb_steps=args.train_steps, save_freq=args.train_steps, disp_freq=args.train_steps)
    models = {}
    mlpot = [sys.executable, "-m", "mlpot.cli"]
    folder = work / "mlpot"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.json").write_text(json.dumps(config))
    run(mlpot + ["train", "input.json", "--no-progress"], folder, env, folder / "train.log")
    run(mlpot + ["freeze", "model.ckpt.pt", "-o", "frozen.pt"], folder, env, folder / "freeze.log")
    models["mlpot eager"] = folder / "model.ckpt.pt"
    models["mlpot frozen"] = models["mlpot lammps"] = folder / "frozen.pt"
    run(mlpot + ["compress", "-i", "frozen.pt", "-o", "compressed.pt", "-t", "input.json"], folder, env,
        folder / "compress.log")
    models["mlpot compressed"] = folder / "compressed.pt"
    if not args.no_compile:
        run(mlpot + ["compile", "frozen.pt", "-o", "model.pt2"], folder, env, folder / "compile.log")
        models["mlpot compiled"] = folder / "model.pt2"
    python = args.deepmd / "bin" / "python"
    if python.exists():
        folder = work / "deepmd"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "input.json").write_text(json.dumps(config))
        (folder / "dp_launcher.py").write_text(DP_LAUNCHER)
        dp = [str(python), "dp_launcher.py", "--pt"]
        run(dp + ["train", "input.json", "--skip-neighbor-stat"], folder, env, folder / "train.log")
        run(dp + ["freeze", "-o", "frozen.pth"], folder, env, folder / "freeze.log")
        models["dp ase"] = folder / "frozen.pth"
    else:
        print(f"# {args.deepmd} not found: DeePMD-kit's figures are skipped")
    return models


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100, help="timed MD steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 1536])
    parser.add_argument("--no-compile", action="store_true", help="skip the AOTInductor model")
    parser.add_argument("--deepmd", type=Path, default=Path("/work/peers/deepmd"), help="DeePMD-kit 3.2 venv")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="md_water_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    env = thread_env(args.threads, inter_op=1)
    structures = write_structures(work)
    models = train_models(work, args, env)
    print(f"# velocity Verlet, {TIMESTEP_FS} fs, {args.steps} timed steps after {args.warmup}, {threads} thread(s), "
          f"float64, se_e2_a water model (examples/md_water)")
    print(f"# {'variant':<17} {'atoms':>6} {'steps/s':>9} {'ns/day':>8} {'x dp ase':>9}")
    for size in args.sizes:
        rates = {}
        for variant, model in models.items():
            python = str(args.deepmd / "bin" / "python") if variant == "dp ase" else sys.executable
            task = {"structure": str(structures[size]), "variant": variant, "model": str(model), "steps": args.steps,
                    "warmup": args.warmup, "timestep_fs": TIMESTEP_FS, "workdir": str(work), "launcher_stub": STUB}
            result = subprocess.run([python, "-c", WORKER, json.dumps(task)], env=env, capture_output=True, text=True)
            lines = [line for line in result.stdout.splitlines() if line.startswith("steps_per_second")]
            if result.returncode != 0 or not lines:
                print(f"  {variant:<17} {size:>6} failed: {result.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            rates[variant] = float(lines[-1].split()[1])
        for variant, rate in rates.items():
            ratio = f"{rate / rates['dp ase']:9.2f}" if "dp ase" in rates else f"{'-':>9}"
            print(f"  {variant:<17} {size:>6} {rate:9.2f} {rate * TIMESTEP_FS * 86400 / 1e6:8.3f} {ratio}", flush=True)
    print(f"# models and logs in {work}")


if __name__ == "__main__":
    main()
