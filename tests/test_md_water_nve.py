"""Slow tier: energy conservation of a trained water model in NVE MD (issue: using trained models).

examples/md_water/input_repulsion.json (DeePMD-kit's se_e2_a water layout, smaller nets, 3000
steps, summed with a short-range repulsive pair table that is zero at every distance of the data)
is trained on ../shared/data/deepmd_water as a user would (``mlpot train``), then ``mlpot md`` runs
10 000 velocity-Verlet steps of 0.5 fs (5 ps) of the 192-atom water frame from 300 K. The drift of
E_tot per atom (least-squares slope over the run) must stay within 1e-4 eV/atom/ps, and the
largest excursion within 1e-3 eV/atom; the E_tot plot is written. (Without the table the same
network falls into an O–O hole after ~500 steps: O–O 0.07 Å, 800 K; the data's closest O–O is 2.39 Å.) ``MLPOT_NVE_STEPS`` shortens the
run (the bound is for 10 000 steps); ``MLPOT_NVE_OUT`` keeps the log and plot in that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from mlpot.calculators.md import energy_drift, read_md_log
from mlpot.cli import main
from mlpot.data import keys as K, read_frames

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MD_STEPS = int(os.environ.get("MLPOT_NVE_STEPS", "10000"))


def test_trained_water_model_conserves_energy_over_10000_steps(tmp_path, shared_data, monkeypatch, capsys):
    data = shared_data("deepmd_water")
    config = json.loads((REPO / "examples" / "md_water" / "input_repulsion.json").read_text())
    subprocess.run([sys.executable, str(REPO / "examples" / "deepmd_water" / "make_tables.py"), str(tmp_path)],
                   check=True, capture_output=True)
    config["training"]["training_data"]["systems"] = [str(data / "data_0"), str(data / "data_1")]
    config["training"]["validation_data"]["systems"] = [str(data / "data_3")]
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json", "--no-progress"]) == 0
    frame = read_frames(data / "data_0", index="0:1", type_map=["O", "H"])[0]
    write(tmp_path / "water.extxyz", Atoms(numbers=[8 if t == 0 else 1 for t in frame[K.ATOM_TYPES]],
                                           positions=frame[K.POSITIONS], cell=frame[K.CELL], pbc=True))
    capsys.readouterr()
    assert main(["md", "model.pt", "water.extxyz", "--ensemble", "nve", "--timestep", "0.5", "--steps", str(MD_STEPS),
                 "--temperature", "300", "--seed", "1", "--log", "md.log", "--trajectory", "md.extxyz",
                 "--log-interval", "10", "--trajectory-interval", "1000", "--plot", "md.png", "--no-progress"]) == 0
    out = capsys.readouterr().out
    print(out)
    columns = read_md_log(tmp_path / "md.log")
    assert columns["step"][-1] == MD_STEPS
    drift = energy_drift(columns["time_ps"], columns["E_tot_eV"], 192)
    excursion = float(np.max(np.abs(columns["E_tot_eV"] - columns["E_tot_eV"][0]))) / 192
    assert np.all(np.isfinite(columns["E_tot_eV"])) and 200 < np.mean(columns["T_K"]) < 450  # liquid, not blown up
    assert abs(drift) <= 1e-4, (drift, excursion)
    assert excursion <= 1e-3, (drift, excursion)
    assert (tmp_path / "md.png").stat().st_size > 10_000
    if os.environ.get("MLPOT_NVE_OUT"):
        keep = Path(os.environ["MLPOT_NVE_OUT"])
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("md.log", "md.png", "lcurve.out"):
            shutil.copy(tmp_path / name, keep / name)
