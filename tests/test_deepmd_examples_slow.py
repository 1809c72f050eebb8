"""Slow tier: DeePMD-kit's example inputs whose features mlpot builds, run as a DeePMD-kit user would:
``mlpot train input.json`` -> ``mlpot freeze`` -> ``mlpot test`` on data_3 of the water data.

The inputs (examples/deepmd_water/example_inputs.py) keep the examples' model sections, loss and
learning rate of DeePMD-kit 3.2's examples/water/*/input*.json and examples/nopbc/train/input.json
with only the step counts lowered (``MLPOT_EXAMPLE_STEPS``, default 300, decay_steps steps/10)
and the systems pointed at ../shared/data; the se_atten(_v2)/dpa1 descriptors run with attn_layer 0
unless ``MLPOT_EXAMPLE_ATTENTION=1`` (two attention layers cost ~5 s per step on one core, so the
examples' own depth is a multi-hour run here; the composite-model rules do not depend on it). The pair tables are written by
examples/deepmd_water/make_tables.py (ZBL and a D2 dispersion table of the d3 example's form).

Checks: every example trains and tests; its test errors are compared with a plain se_e2_a run of
the same steps (the se_e2_a example); a composite model (linear_ener of two se_atten models,
se_atten + dispersion table) has an error within 1.5x of its best member's (the se_atten example)
and never near the label itself (the "2x the label" defect); the zbl example (se_atten_v2 +
use_srtab, attn_layer 0, 300 steps) is within 1.25x of DeePMD-kit's own errors on the same input.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("MLPOT_EXAMPLE_STEPS", "300"))
LIGHT = os.environ.get("MLPOT_EXAMPLE_ATTENTION", "0") != "1"

sys.path.insert(0, str(REPO / "examples" / "deepmd_water"))
from example_inputs import example_input, nopbc_input, write_tables  # noqa: E402

# DeePMD-kit 3.2 (pure-PyTorch path) on the zbl example with attn_layer 0, 300 steps, 2 threads, as
# printed by `python benchmarks/deepmd_examples.py zbl --steps 300 --light` (2026-12-07): the
# example blends ZBL into every O-H bond (sw_rmin 0.8, sw_rmax 1.0 Å around the 0.96 Å bond), so
# in early training the network cancels the switch term's forces by raising its energies, and
# DeePMD-kit itself ends with a constant offset of several eV/atom at this step count.
DEEPMD_ZBL_300_STEPS = {"energy_per_atom": 3.9364, "forces": 2.2281}  # mlpot then: 3.7817, 2.2381
ZBL_STEPS = 300
# DeePMD-kit 3.2 on the nopbc example input (300 steps, decay_steps 100, batch_size auto), tested on
# 200 frames of C1H4O2: medians over 9 seeds (descriptor/fitting seeds 1-8 and the example's 1,
# training seeds 10-18), `python benchmarks/deepmd_short_schedule.py nopbc` (2026-12-07). The spread
# is wide (forces 1.68-2.42 eV/Å, energy 0.69-2.37 eV/atom); mlpot's medians over the same seeds:
# 2.38 eV/Å and 0.57 eV/atom (label RMS force 3.45 eV/Å).
DEEPMD_NOPBC_300_STEPS = {"energy_per_atom": 1.54, "forces": 2.27}
NOPBC_STEPS = 300


def _mlpot(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    result = subprocess.run([sys.executable, "-m", "mlpot.cli", *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"mlpot {' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr
    return result.stdout


def _errors(report: str) -> dict:
    values = {}
    for name, key in (("energy_per_atom", r"Energy RMSE/Natoms\s*:\s*(\S+)"), ("forces", r"Force\s+RMSE\s*:\s*(\S+)")):
        match = re.search(key, report)
        values[name] = float(match.group(1)) if match else float("nan")
    return values


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    """name -> test errors of each example, run once per session (they take minutes each)."""
    data = shared_data("deepmd_water")
    root = tmp_path_factory.mktemp("examples")
    tables = write_tables(root / "tables")
    cache = {}

    def run(name: str) -> dict:
        if name not in cache:
            folder = root / name
            folder.mkdir()
            steps, light = (ZBL_STEPS, True) if name == "zbl" else (STEPS, LIGHT)
            config = example_input(name, data, tables, steps, light=light)
            (folder / "input.json").write_text(json.dumps(config, indent=1))
            _mlpot("train", "input.json", "--no-progress", cwd=folder)
            _mlpot("freeze", "model.ckpt.pt", "-o", "model.pt", cwd=folder)
            report = _mlpot("test", "model.pt", data / "data_3", "-d", "detail", cwd=folder)
            cache[name] = _errors(report)
            detail = np.loadtxt(folder / "detail.e.out", ndmin=2)
            cache[name]["mean_offset_per_atom"] = float(np.mean(detail[:, 1] - detail[:, 0])) / 192
            print(f"{name}: {cache[name]}")
        return cache[name]

    return run


@pytest.mark.parametrize("name", ["se_e2_r", "se_e3", "dpa1", "hybrid"])
def test_example_trains_and_tests_close_to_plain_se_e2_a(runs, name):
    plain, example = runs("se_e2_a"), runs(name)
    assert example["forces"] < 3.0 * plain["forces"], (name, example, plain)
    assert abs(example["mean_offset_per_atom"]) < 0.05, (name, example)  # no constant offset (eV/atom)


def test_zbl_example_is_as_accurate_as_deepmd_kit(runs):
    """The standard + pair-table model (use_srtab): DeePMD-kit's own errors on the same input and
    steps are the reference (module constants); the one output bias is fitted on the blend."""
    zbl = runs("zbl")
    for key, reference in DEEPMD_ZBL_300_STEPS.items():
        assert zbl[key] <= 1.25 * reference, (key, zbl, DEEPMD_ZBL_300_STEPS)


@pytest.mark.parametrize("name", ["linear", "d3"])
def test_composite_model_is_within_1_5x_of_its_best_member(runs, name):
    member, composite = runs("se_atten"), runs(name)
    for key in ("energy_per_atom", "forces"):
        assert composite[key] <= 1.5 * member[key], (name, key, composite, member)
    label_energy_per_atom = 156.0  # |E|/N of the water frames: a model twice the label is off by this much
    assert composite["energy_per_atom"] < 0.01 * label_energy_per_atom


def test_nopbc_example_trains(tmp_path, shared_data):
    data = shared_data("deepmd_nopbc")
    config = nopbc_input(data, NOPBC_STEPS)
    (tmp_path / "input.json").write_text(json.dumps(config))
    _mlpot("train", "input.json", "--no-progress", cwd=tmp_path)
    _mlpot("freeze", "model.ckpt.pt", "-o", "model.pt", cwd=tmp_path)
    errors = _errors(_mlpot("test", "model.pt", data / "C1H4O2", "-n", "200", cwd=tmp_path))
    # The example's schedule (1e-3 to 3.51e-8 with decay_steps 100) leaves 100 steps at a useful lr in
    # a 300-step run, so neither code gets far: DeePMD-kit's own figures are the reference.
    for key, reference in DEEPMD_NOPBC_300_STEPS.items():
        assert errors[key] <= 1.25 * reference, (key, errors, DEEPMD_NOPBC_300_STEPS)
