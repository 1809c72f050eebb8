"""The main job (`make demo`) end to end with a tiny step count: generate the example dataset,
train the example config, freeze/evaluate with a parity plot, plot the loss curves."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import yaml

from mlpot.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cuau_emt"


def _make_dataset_module():
    spec = importlib.util.spec_from_file_location("make_dataset", EXAMPLE / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_generator_is_deterministic(tmp_path):
    make_dataset = _make_dataset_module()
    make_dataset.main(["--out", str(tmp_path / "a"), "--n-train", "3", "--n-test", "1"])
    make_dataset.main(["--out", str(tmp_path / "b"), "--n-train", "3", "--n-test", "1"])
    assert (tmp_path / "a" / "train.extxyz").read_text() == (tmp_path / "b" / "train.extxyz").read_text()
    from ase.io import read

    frames = read(tmp_path / "a" / "train.extxyz", ":")
    assert len(frames) == 3 and all(len(f) == 32 for f in frames)
    assert set(frames[0].get_chemical_symbols()) == {"Cu", "Au"}
    # EMT labels: forces sum to zero in a periodic cell
    np.testing.assert_allclose(frames[0].get_forces().sum(0), 0.0, atol=1e-6)  # extxyz keeps 8 decimals


def test_demo_pipeline_tiny(tmp_path, capsys):
    _make_dataset_module().main(["--out", str(tmp_path / "data"), "--n-train", "8", "--n-test", "4"])
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    config["training"]["numb_steps"] = 6
    config["logging"]["disp_freq"] = 3
    config["checkpoint"]["every"] = 3
    config["data"]["valid"]["batch_size"] = 4
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "config.yaml")]) == 0
    out = tmp_path / "out"
    assert (out / "model.pt").exists() and (out / "lcurve.out").exists()
    capsys.readouterr()
    assert main(["test", str(out / "model.pt"), str(tmp_path / "data" / "test.extxyz"),
                 "-d", str(out / "detail"), "--plot", str(out / "parity.png")]) == 0
    printed = capsys.readouterr().out
    assert "# number of test data : 4" in printed
    assert re.search(r"^Stress RMSE\s+: \S+ eV/A\^3", printed, re.M)
    assert (out / "parity.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "losses", str(out / "lcurve.out"), "--output", str(out / "lcurve.png")]) == 0
    assert main(["plot", "losses", str(out / "debug.log"), "--output", str(out / "losses.png")]) == 0
    assert (out / "lcurve.png").exists() and (out / "losses.png").exists()
