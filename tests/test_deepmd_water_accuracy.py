"""DeePMD-kit's water se_e2_a example at full length (slow tier; about 40-60 min on one core).

The repository's ``examples/deepmd_water/input.json`` (DeePMD-kit's example, unchanged except the
system paths) runs with ``numb_steps`` 20 000 and ``decay_steps`` 500, so the learning rate falls
from 1e-3 to 3.51e-8, training on data_0 + data_1 and validating on data_3 (spec deepmd.md §7.3).
The input leaves ``change_bias_after_training`` out, so, as in DeePMD-kit, the energy bias is not
refitted after the last step (at 20 000 steps the refit is neutral: 1.32 vs 1.30 meV/atom). The model
is frozen and ``mlpot test`` evaluates every frame of data_3:

* force RMSE <= 0.12 eV/Å and energy RMSE <= 1.5 meV/atom on all 80 frames of data_3;
* the lcurve.out validation force RMSE no worse than DeePMD-kit 3.2's float32 curve on the same
  input at equal steps. Both lcurves use 3 random validation frames per row, so one row is noisy
  (this run printed 0.205 at step 1 000 between 0.166 and 0.161): the comparison takes the median
  of the rows within 200 steps of each reference step and allows 15 % for the frame draw.

Set ``MLPOT_WATER_RUN_DIR`` to keep the run folder (lcurve.out, checkpoints, detail files).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mlpot.cli import main

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]

# DeePMD-kit 3.2, float32, same input: rmse_f_val (eV/Å) at these steps (issue #3)
DEEPMD_RMSE_F_VAL = {1000: 0.164, 2000: 0.139, 5000: 0.119, 10000: 0.115, 20000: 0.12}


def _rmse(detail_file: Path) -> float:
    table = np.loadtxt(detail_file)
    half = table.shape[1] // 2
    return float(np.sqrt(np.mean((table[:, :half] - table[:, half:]) ** 2)))


def test_water_se_e2_a_20000_steps(tmp_path, monkeypatch, shared_data):
    water = shared_data("deepmd_water")
    run_dir = Path(os.environ.get("MLPOT_WATER_RUN_DIR", tmp_path / "run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((REPO_ROOT / "examples" / "deepmd_water" / "input.json").read_text())
    training = config["training"]
    training["training_data"]["systems"] = [str(water / "data_0"), str(water / "data_1")]
    training["validation_data"]["systems"] = [str(water / "data_3")]
    training["numb_steps"] = 20000
    config["learning_rate"]["decay_steps"] = 500
    (run_dir / "input.json").write_text(json.dumps(config, indent=1))
    monkeypatch.chdir(run_dir)

    start = time.perf_counter()
    assert main(["train", "input.json", "--no-progress"]) == 0
    wall = time.perf_counter() - start
    assert main(["freeze", "-o", "frozen_model.pth"]) == 0
    assert main(["test", "-m", "frozen_model.pth", "-s", str(water / "data_3"), "-d", "detail"]) == 0

    header = (run_dir / "lcurve.out").read_text().splitlines()[0].lstrip("#").split()
    curve = {int(row[0]): dict(zip(header, row)) for row in np.atleast_2d(np.loadtxt(run_dir / "lcurve.out"))}
    rmse_f = _rmse(run_dir / "detail.f.out")
    rmse_e_per_atom = _rmse(run_dir / "detail.e_peratom.out")
    print(f"\nwall time {wall:.0f} s ({wall / 20000:.4f} s per step incl. validation and checkpoints)")
    print("step  rmse_f_val  median of +-200 steps  DeePMD-kit  rmse_e_val (meV/atom)  lr")
    for step in sorted(curve):
        if step in DEEPMD_RMSE_F_VAL or step % 5000 == 0 or step == 1:
            row = curve[step]
            window = np.median([r["rmse_f_val"] for shown, r in curve.items() if abs(shown - step) <= 200])
            print(f"{step:6d}  {row['rmse_f_val']:.4f}  {window:.4f}  {DEEPMD_RMSE_F_VAL.get(step, float('nan')):.3f}"
                  f"  {1000 * row['rmse_e_val']:.3f}  {row['lr']:.2e}")
    print(f"data_3, all frames: force RMSE {rmse_f:.4f} eV/Å, energy RMSE {1000 * rmse_e_per_atom:.3f} meV/atom")

    assert rmse_f <= 0.12
    assert rmse_e_per_atom <= 1.5e-3
    for step, reference in DEEPMD_RMSE_F_VAL.items():
        nearby = [row["rmse_f_val"] for shown, row in curve.items() if abs(shown - step) <= 200]
        assert float(np.median(nearby)) <= 1.15 * reference, (step, nearby, reference)
