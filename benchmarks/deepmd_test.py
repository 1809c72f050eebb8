"""`mlpot test` against DeePMD-kit's `dp test` on the se_atten_v2 water example model: time and peak memory.

Both codes train the model section of DeePMD-kit 3.2's ``examples/water/se_atten/input.json``
(se_atten_v2, sel 120, rcut 6, neuron [25, 50, 100], attn 128, 2 attention layers, float64; fitting
[240, 240, 240]) for a few steps on data_0 + data_1 (the model only has to exist), freeze it, and
evaluate ``--frames`` frames of data_3 with their own ``test`` command, alternately, ``--rounds``
times each. Each evaluation runs in a fresh process under ``/usr/bin/time -v``: wall time (start-up
included, as a user sees it), CPU time (user + system; less sensitive to other load) and peak
resident memory. DeePMD-kit runs from the virtual environment
``--deepmd`` (default /work/peers/deepmd) on its pure-PyTorch path (its wheel's compiled op library
is built for torch 2.11 and is not needed by train/freeze/test); without that environment only
mlpot's figures are printed.

Run from the repository root: ``python benchmarks/deepmd_test.py [--frames 80] [--threads 1]``.
Times are only comparable within one run on a machine with nothing else heavy running.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "deepmd_water"

SE_ATTEN_EXAMPLE_MODEL = {
    "type_map": ["O", "H"],
    "descriptor": {"type": "se_atten_v2", "sel": 120, "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
                   "resnet_dt": False, "axis_neuron": 16, "seed": 1, "attn": 128, "attn_layer": 2, "attn_dotr": True,
                   "attn_mask": False, "activation_function": "tanh", "scaling_factor": 1.0, "normalize": True,
                   "temperature": 1.0, "precision": "float64"},
    "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "precision": "float64", "seed": 1},
}

# runs DeePMD-kit's `dp` without importing its compiled op library (built for torch 2.11)
DP_LAUNCHER = """import sys, types
stub = types.ModuleType("deepmd.pt.cxx_op")
stub.ENABLE_CUSTOMIZED_OP = False
stub.__all__ = ["ENABLE_CUSTOMIZED_OP"]
sys.modules["deepmd.pt.cxx_op"] = stub
from deepmd.main import main
sys.exit(main())
"""


def example_input(data: Path, steps: int) -> dict:
    return {
        "model": SE_ATTEN_EXAMPLE_MODEL,
        "learning_rate": {"type": "exp", "decay_steps": 5000, "start_lr": 0.001, "stop_lr": 3.51e-8},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
                 "start_pref_v": 0, "limit_pref_v": 0},
        "training": {"training_data": {"systems": [str(data / "data_0"), str(data / "data_1")], "batch_size": 1},
                     "validation_data": {"systems": [str(data / "data_3")], "batch_size": 1, "numb_btch": 1},
                     "numb_steps": steps, "seed": 10, "disp_file": "lcurve.out", "disp_freq": steps,
                     "save_freq": steps},
    }


def thread_env(threads: int, inter_op: int = None) -> dict:
    """The environment of a peer run with ``threads`` threads (OpenMP, MKL and DeePMD-kit's own pools)."""
    threads = str(threads)
    return dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, DP_INTRA_OP_PARALLELISM_THREADS=threads,
                DP_INTER_OP_PARALLELISM_THREADS=str(inter_op or threads), PYTHONPATH=str(ROOT))


def run(command, cwd: Path, env: dict, log: Path) -> str:
    """Run ``command`` (list) in ``cwd``; output goes to ``log`` and is returned; fails loudly."""
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write_text(result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed ({result.returncode}); see {log}")
    return result.stdout


def timed(command, cwd: Path, env: dict, log: Path):
    """(wall seconds, CPU seconds (user + system), peak RSS MB, output) of ``command`` under /usr/bin/time -v."""
    out = run(["/usr/bin/time", "-v", *command], cwd, env, log)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", out).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): (\S+)", out).group(1)) for kind in ("User", "System"))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out).group(1)) / 1024
    return seconds, cpu, rss, out


def force_rmse(output: str) -> float:
    return float(re.findall(r"Force  RMSE\s*: (\S+)", output)[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with data_0, data_1, data_3")
    parser.add_argument("--frames", type=int, default=80, help="frames of data_3 to test")
    parser.add_argument("--steps", type=int, default=2, help="training steps (the model only has to exist)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deepmd", type=Path, default=Path("/work/peers/deepmd"), help="DeePMD-kit 3.2 venv")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and logs here (default: temporary)")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="deepmd_test_bench_"))
    threads = str(args.threads)
    env = thread_env(args.threads)
    test_data = str(args.data / "data_3")
    config = json.dumps(example_input(args.data, args.steps), indent=1)
    tools = {}

    mlpot_dir = work / "mlpot"
    mlpot_dir.mkdir(parents=True, exist_ok=True)
    (mlpot_dir / "input.json").write_text(config)
    mlpot = [sys.executable, "-m", "mlpot.cli"]
    if not (mlpot_dir / "frozen.pt").exists():
        run(mlpot + ["train", "input.json"], mlpot_dir, env, mlpot_dir / "train.log")
        run(mlpot + ["freeze", "-o", "frozen.pt"], mlpot_dir, env, mlpot_dir / "freeze.log")
    tools["mlpot test"] = (mlpot + ["test", "frozen.pt", test_data, "-n", str(args.frames)], mlpot_dir)

    python = args.deepmd / "bin" / "python"
    if python.exists():
        dp_dir = work / "deepmd"
        dp_dir.mkdir(parents=True, exist_ok=True)
        (dp_dir / "input.json").write_text(config)
        (dp_dir / "dp_launcher.py").write_text(DP_LAUNCHER)
        dp = [str(python), "dp_launcher.py", "--pt"]
        if not (dp_dir / "frozen_model.pth").exists():
            run(dp + ["train", "input.json", "--skip-neighbor-stat"], dp_dir, env, dp_dir / "train.log")
            run(dp + ["freeze", "-o", "frozen_model.pth"], dp_dir, env, dp_dir / "freeze.log")
        tools["dp test"] = (dp + ["test", "-m", "frozen_model.pth", "-s", test_data, "-n", str(args.frames)], dp_dir)
    else:
        print(f"# {args.deepmd} not found: DeePMD-kit's figures are skipped")

    print(f"# {args.frames} frames of {test_data}, {threads} thread(s), se_atten_v2 water example model, float64")
    print(f"# {'tool':<11} {'round':>5} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'s/frame':>8} {'force RMSE':>11}")
    figures = {name: [] for name in tools}
    for round_index in range(args.rounds):
        for name, (command, cwd) in tools.items():
            log = cwd / f"test_round{round_index}.log"
            wall, cpu, rss, out = timed(command, cwd, env, log)
            figures[name].append((wall, rss))
            print(f"  {name:<11} {round_index + 1:>5} {wall:8.1f} {cpu:8.1f} {rss:12.0f} {wall / args.frames:8.3f} "
                  f"{force_rmse(out):11.4e}", flush=True)
    if len(figures) == 2 and args.rounds > 0:
        best = {name: (min(w for w, _ in values), max(r for _, r in values)) for name, values in figures.items()}
        (mw, mr), (dw, dr) = best["mlpot test"], best["dp test"]
        print(f"# best wall: mlpot {mw:.1f} s, dp test {dw:.1f} s (dp/mlpot {dw / mw:.2f}x); "
              f"peak RSS: mlpot {mr:.0f} MB, dp test {dr:.0f} MB (dp/mlpot {dr / mr:.2f}x)")
    print(f"# models and logs in {work}")


if __name__ == "__main__":
    main()
