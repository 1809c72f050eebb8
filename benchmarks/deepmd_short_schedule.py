"""Accuracy at a short schedule, mlpot against DeePMD-kit over several seeds (issue: short-schedule parity).

Both codes train the same DeePMD-kit input for each seed (the descriptor, fitting and training seeds
all set from it), freeze it and test it with their own ``test`` command on the held-out system;
printed per seed and tool: the test energy RMSE/atom and force RMSE, then the medians and the ratio
mlpot / DeePMD-kit. Two inputs:

* ``water`` — DeePMD-kit's water se_e2_a example (examples/water/se_e2_a/input.json model, loss and
  lr) with ``numb_steps`` 2000 and ``decay_steps`` 100, trained on data_0 + data_1 of
  ../shared/data/deepmd_water, tested on data_3 (issue #17: mlpot's force RMSE was ~12 % above);
* ``nopbc`` — DeePMD-kit's examples/nopbc input (se_e2_a, C/H/O molecules, ``batch_size`` auto) for
  300 steps with ``decay_steps`` 100, on ../shared/data/deepmd_nopbc, tested on 200 frames of C1H4O2.
  Cheap (seconds per run for mlpot), so it takes many seeds.

``--cross`` adds a third row per seed: mlpot trained from DeePMD-kit's untrained checkpoint of the
same seed (``mlpot train -i``: weights, env-matrix statistics and output bias all DeePMD-kit's),
which separates the initial state from the training loop.

DeePMD-kit runs from the venv ``--deepmd`` (default /work/peers/deepmd) on its pure-PyTorch path
(benchmarks/deepmd_test.py's launcher); without it only mlpot's rows print.
Run from the repository root: ``python benchmarks/deepmd_short_schedule.py nopbc --seeds 1 2 3 4 5``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "examples" / "deepmd_water")]
from deepmd_examples import test_figures  # noqa: E402
from deepmd_test import DP_LAUNCHER, run, thread_env  # noqa: E402
from example_inputs import example_input, nopbc_input  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def case(name: str, steps: int):
    """(input.json dict, test system, test frames, atoms per test frame) of a case."""
    if name == "water":
        config = example_input("se_e2_a", SHARED / "deepmd_water", Path("."), steps or 2000)
        config["learning_rate"]["decay_steps"] = 100
        return config, SHARED / "deepmd_water" / "data_3", 100, 192
    return nopbc_input(SHARED / "deepmd_nopbc", steps or 300), SHARED / "deepmd_nopbc" / "C1H4O2", 200, 7


def seeded(config: dict, seed: int) -> dict:
    config = json.loads(json.dumps(config))
    model = config["model"]
    model["descriptor"]["seed"] = model["fitting_net"]["seed"] = seed
    config["training"]["seed"] = 10 + seed
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["water", "nopbc"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=0, help="default: 2000 (water), 300 (nopbc)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cross", action="store_true", help="also mlpot from DeePMD-kit's untrained checkpoint")
    parser.add_argument("--deepmd", type=Path, default=Path("/work/peers/deepmd"), help="DeePMD-kit 3.2 venv")
    parser.add_argument("--only", choices=["mlpot", "deepmd-kit", "mlpot from dp init"], default=None,
                        help="run one code only (two 1-thread lanes side by side on a 2-core machine)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="short_schedule_"))
    env = thread_env(args.threads)
    base, test_system, frames, n_atoms = case(args.case, args.steps)
    python = args.deepmd / "bin" / "python"
    tools = ["mlpot"] + (["deepmd-kit"] + (["mlpot from dp init"] if args.cross else []) if python.exists() else [])
    if args.only:
        tools = [args.only]
    mlpot = [sys.executable, "-m", "mlpot.cli"]
    dp = [str(python), "dp_launcher.py", "--pt"]
    results = {tool: [] for tool in tools}
    print(f"# {args.case}: test on {frames} frames of {test_system.name}, {args.threads} thread(s); work {work}")
    print(f"# {'tool':<20} {'seed':>4} {'E RMSE/atom':>12} {'F RMSE':>9}")
    for seed in args.seeds:
        config = seeded(base, seed)
        for tool in tools:
            folder = work / f"seed{seed}" / tool.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "input.json").write_text(json.dumps(config, indent=1))
            (folder / "dp_launcher.py").write_text(DP_LAUNCHER)
            if tool == "deepmd-kit":
                run(dp + ["train", "input.json", "--skip-neighbor-stat"], folder, env, folder / "train.log")
                run(dp + ["freeze", "-o", "model.pth"], folder, env, folder / "freeze.log")
                report = run(dp + ["test", "-m", "model.pth", "-s", str(test_system), "-n", str(frames), "-d", "detail"],
                             folder, env, folder / "test.log")
            else:
                init = []
                if tool == "mlpot from dp init":
                    untrained = dict(config, training=dict(config["training"], numb_steps=0))
                    (folder / "init").mkdir(exist_ok=True)
                    (folder / "init" / "input.json").write_text(json.dumps(untrained))
                    (folder / "init" / "dp_launcher.py").write_text(DP_LAUNCHER)
                    run(dp + ["train", "input.json", "--skip-neighbor-stat"], folder / "init", env, folder / "init" / "train.log")
                    init = ["-i", "init/model.ckpt-0.pt"]
                run(mlpot + ["train", "input.json", "--no-progress", *init], folder, env, folder / "train.log")
                run(mlpot + ["freeze", "model.ckpt.pt", "-o", "model.pt"], folder, env, folder / "freeze.log")
                report = run(mlpot + ["test", "model.pt", str(test_system), "-n", str(frames), "-d", "detail"],
                             folder, env, folder / "test.log")
            figures = test_figures(report, folder / "detail.e.out", n_atoms)
            results[tool].append(figures)
            print(f"  {tool:<20} {seed:>4} {figures['e_rmse']:>12.4g} {figures['f_rmse']:>9.4f}", flush=True)
    print(f"# medians over seeds {args.seeds}")
    for tool, rows in results.items():
        e, f = (statistics.median(r[k] for r in rows) for k in ("e_rmse", "f_rmse"))
        ratio = ""
        if tool != "deepmd-kit" and results.get("deepmd-kit"):
            f_dp = statistics.median(r["f_rmse"] for r in results["deepmd-kit"])
            ratio = f"  force ratio to DeePMD-kit {f / f_dp:.3f}"
        print(f"  {tool:<20} E {e:.4g} eV/atom  F {f:.4f} eV/Å{ratio}")


if __name__ == "__main__":
    main()
