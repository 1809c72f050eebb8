"""DeePMD-kit's water example inputs trained side by side by mlpot and DeePMD-kit: test errors at equal steps.

For each example name (examples/deepmd_water/example_inputs.py: e.g. ``zbl`` and its plain model
``se_atten_v2``, ``d3``, ``linear`` and their member ``se_atten``) both codes train the same
input.json for ``--steps`` steps, freeze it and test it on data_3 with their own ``test`` command;
printed per example and tool: energy RMSE/atom, mean energy offset/atom (prediction - label) and
force RMSE, and the training time per step. This is how the composite models' numbers (one output
bias fitted on the combined model) are checked against DeePMD-kit's own behaviour, not only against
a plain model.

DeePMD-kit runs from the virtual environment ``--deepmd`` (default /work/peers/deepmd) on its
pure-PyTorch path (benchmarks/deepmd_test.py's launcher); without it only mlpot's figures print.
Run from the repository root:
``python benchmarks/deepmd_examples.py zbl se_atten_v2 --steps 200 --light --threads 2``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "examples" / "deepmd_water")]
from deepmd_test import DATA, DP_LAUNCHER, run, thread_env  # noqa: E402
from example_inputs import MODELS, example_input, write_tables  # noqa: E402


def test_figures(report: str, detail_energy: Path, n_atoms: int) -> dict:
    """Energy RMSE/atom, force RMSE (the last summary lines of a `test` report) and the mean offset/atom."""
    figures = {"e_rmse": float(re.findall(r"Energy RMSE/Natoms\s*:\s*(\S+)", report)[-1]),
               "f_rmse": float(re.findall(r"Force\s+RMSE\s*:\s*(\S+)", report)[-1])}
    detail = np.loadtxt(detail_energy, ndmin=2)
    figures["offset"] = float(np.mean(detail[:, 1] - detail[:, 0])) / n_atoms
    return figures


def seconds_per_step(log: str) -> float:
    match = re.findall(r"average training time: (\S+) s/(?:step|batch)", log)
    return float(match[-1]) if match else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help=f"examples: {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--light", action="store_true", help="attn_layer 0 in se_atten descriptors")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--deepmd", type=Path, default=Path("/work/peers/deepmd"), help="DeePMD-kit 3.2 venv")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and logs here (default: temporary)")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="deepmd_examples_"))
    threads = str(args.threads)
    env = thread_env(args.threads)
    tables = write_tables(work / "tables")
    test_data = str(args.data / "data_3")
    n_atoms = 192
    python = args.deepmd / "bin" / "python"
    mlpot = [sys.executable, "-m", "mlpot.cli"]
    print(f"# {args.steps} steps{' (attn_layer 0)' if args.light else ''}, {threads} thread(s), test on {test_data}")
    print(f"# {'example':<12} {'tool':<7} {'E RMSE/atom':>12} {'E offset/atom':>14} {'F RMSE':>9} {'s/step':>7}")
    for name in args.names:
        config = json.dumps(example_input(name, args.data, tables, args.steps, args.light), indent=1)
        tools = {"mlpot": (mlpot + ["train", "input.json", "--no-progress"], mlpot + ["freeze", "-o", "model.pt"],
                           mlpot + ["test", "model.pt", test_data, "-d", "detail"])}
        if python.exists():
            dp = [str(python), "dp_launcher.py", "--pt"]
            tools["deepmd"] = (dp + ["train", "input.json", "--skip-neighbor-stat"], dp + ["freeze", "-o", "model.pth"],
                               dp + ["test", "-m", "model.pth", "-s", test_data, "-d", "detail"])
        for tool, (train, freeze, test) in tools.items():
            folder = work / name / tool
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "input.json").write_text(config)
            (folder / "dp_launcher.py").write_text(DP_LAUNCHER)
            train_log = run(train, folder, env, folder / "train.log")
            run(freeze, folder, env, folder / "freeze.log")
            report = run(test, folder, env, folder / "test.log")
            figures = test_figures(report, folder / "detail.e.out", n_atoms)
            print(f"  {name:<12} {tool:<7} {figures['e_rmse']:12.4e} {figures['offset']:14.4e} {figures['f_rmse']:9.4f} "
                  f"{seconds_per_step(train_log):7.2f}", flush=True)
    print(f"# models and logs in {work}")


if __name__ == "__main__":
    main()
