"""Property-based bad input (issue #18): hypothesis spoils valid configs and small datasets at random.

Mutations: a config leaf (DeePMD input.json or native YAML) replaced by a string, NaN, infinity, its
negative, zero, a list, a mapping, null or a bool, or deleted; the file cut short; a data array
(DeePMD ``coord``/``energy``/``force`` npy) given a NaN or infinite entry, a row or column fewer, or
cut short, or a system's ``type.raw``/``coord.npy`` removed; an extxyz file cut at a random line or a
number in it replaced by ``nan``/``inf``/text.

Invariants, for every example: ``mlpot train`` returns 0 or 2 and raises nothing (no traceback);
on 2 the last line of stderr is ``mlpot train: error: ...`` naming a file of the workspace; every file
that existed before is byte-identical afterwards; on 0 the model written loads (finite). A
mutation that is certainly invalid (text, NaN or infinity in a number; any change of a DeePMD
system; NaN or infinity in an extxyz file) must give 2. Removing a label file is left to the corpus.
The default tier runs ``max_examples`` = 25 + 25 + 20 + 15 = 85 examples (derandomized:
the same ones every run).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlpot.cli import main
from tests.bad_inputs.corpus import Workspace, build_template

# MLPOT_BAD_INPUT_EXAMPLES=k runs k times as many (random, not derandomized) examples: a longer hunt
SCALE = int(os.environ.get("MLPOT_BAD_INPUT_EXAMPLES", "1"))
SETTINGS = dict(deadline=None, derandomize=SCALE == 1, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
VALUE_MUTATIONS = ("string", "nan", "inf", "negate", "zero", "list", "dict", "null", "bool", "delete")
WORKSPACE_NAMES = ("input.json", "config.yaml", "sys4", "sys5", "train.extxyz", "valid.extxyz", "run_out")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Workspace:
    return build_template(tmp_path_factory.mktemp("hypothesis") / "template")


def leaves(value, path=()):
    """Every leaf path of a config (list elements included)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, path + (key,))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from leaves(item, path + (index,))
    else:
        yield path


def mutate_value(config, path, how: str) -> bool:
    """Apply ``how`` at ``path``; True when the result is certainly invalid."""
    holder = config
    for part in path[:-1]:
        holder = holder[part]
    old = holder[path[-1]]
    numeric = isinstance(old, (int, float)) and not isinstance(old, bool)
    if how == "delete":
        if isinstance(holder, list):
            holder.pop(path[-1])
        else:
            del holder[path[-1]]
        return False
    holder[path[-1]] = {"string": "xyz", "nan": math.nan, "inf": math.inf, "negate": -old if numeric else old,
                        "zero": 0, "list": [old], "dict": {"x": old}, "null": None, "bool": True}[how]
    return numeric and how in ("string", "nan", "inf")


def run_mlpot(ws: Workspace, argv) -> tuple:
    before = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ws.root)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)  # an exception here is a traceback: hypothesis reports the example
    finally:
        os.chdir(cwd)
    for path, content in before.items():
        assert path.exists() and path.read_bytes() == content, f"{path} changed"
    return code, err.getvalue()


def check_outcome(ws: Workspace, code: int, stderr: str, certainly_invalid: bool) -> None:
    event(f"exit status {code}")  # the share of accepted and refused examples (--hypothesis-show-statistics)
    assert "Traceback" not in stderr
    assert code in (0, 2), stderr
    if code == 2:
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("mlpot train: error: "), stderr
        assert any(name in last for name in WORKSPACE_NAMES), last
    else:
        assert not certainly_invalid, "a certainly invalid input was accepted"
        from mlpot.calculators import load_model

        load_model(ws.root / "run_out" / "model.pt")  # refuses a non-finite model


@contextlib.contextmanager
def workspace(template: Workspace):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        shutil.copytree(template.root, root, ignore=shutil.ignore_patterns("prev"))
        yield Workspace(root)


def _train(config_path: str):
    return ["train", config_path, "--output-dir", "run_out", "--no-progress"]


@settings(max_examples=25 * SCALE, **SETTINGS)
@given(data=st.data(), how=st.sampled_from(VALUE_MUTATIONS + ("truncate",)))
def test_mutated_deepmd_input(template, data, how):
    with workspace(template) as ws:
        path = ws.dp / "input.json"
        certain = False
        if how == "truncate":
            text = path.read_bytes()
            path.write_bytes(text[: data.draw(st.integers(0, len(text) - 1), label="cut")])
            certain = True
        else:
            config = json.loads(path.read_text())
            leaf = data.draw(st.sampled_from(sorted(leaves(config), key=str)), label="leaf")
            certain = mutate_value(config, leaf, how)
            path.write_text(json.dumps(config))
        code, stderr = run_mlpot(ws, _train("dp/input.json"))
        check_outcome(ws, code, stderr, certain)


@settings(max_examples=25 * SCALE, **SETTINGS)
@given(data=st.data(), how=st.sampled_from(VALUE_MUTATIONS + ("truncate",)))
def test_mutated_native_yaml(template, data, how):
    with workspace(template) as ws:
        path = ws.native / "config.yaml"
        certain = False
        if how == "truncate":
            lines = path.read_text().splitlines()
            path.write_text("\n".join(lines[: data.draw(st.integers(0, len(lines) - 1), label="lines")]))
        else:
            config = yaml.safe_load(path.read_text())
            leaf = data.draw(st.sampled_from(sorted(leaves(config), key=str)), label="leaf")
            certain = mutate_value(config, leaf, how)
            path.write_text(yaml.safe_dump(config))
        code, stderr = run_mlpot(ws, _train("native/config.yaml"))
        check_outcome(ws, code, stderr, certain)


NPY_MUTATIONS = ("nan", "inf", "row", "column", "cut", "remove_coord", "remove_type_raw")


@settings(max_examples=20 * SCALE, **SETTINGS)
@given(data=st.data(), system=st.sampled_from(["sys4", "sys5"]), name=st.sampled_from(["coord", "energy", "force"]),
       how=st.sampled_from(NPY_MUTATIONS))
def test_mutated_deepmd_system(template, data, system, name, how):
    with workspace(template) as ws:
        path = ws.dp / system / "set.000" / f"{name}.npy"
        array = np.load(path)
        certain = True  # every one of these breaks the system
        if how in ("nan", "inf"):
            flat = array.reshape(-1).copy()
            flat[data.draw(st.integers(0, flat.size - 1), label="entry")] = np.nan if how == "nan" else np.inf
            np.save(path, flat.reshape(array.shape))
        elif how == "row":
            np.save(path, array[:-1])
        elif how == "column":
            np.save(path, array.reshape(len(array), -1)[:, :-1])
        elif how == "cut":
            raw = path.read_bytes()
            path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")])
        elif how == "remove_coord":
            (ws.dp / system / "set.000" / "coord.npy").unlink()
        else:
            (ws.dp / system / "type.raw").unlink()
        code, stderr = run_mlpot(ws, _train("dp/input.json"))
        check_outcome(ws, code, stderr, certain)


@settings(max_examples=15 * SCALE, **SETTINGS)
@given(data=st.data(), name=st.sampled_from(["train.extxyz", "valid.extxyz"]),
       how=st.sampled_from(["cut", "nan", "inf", "text", "drop_line"]))
def test_mutated_extxyz(template, data, name, how):
    with workspace(template) as ws:
        path = ws.native / name
        lines = path.read_text().splitlines()
        certain = how in ("nan", "inf")
        if how == "cut":
            lines = lines[: data.draw(st.integers(0, len(lines) - 1), label="lines")]
        elif how == "drop_line":
            lines.pop(data.draw(st.integers(0, len(lines) - 1), label="line"))
        else:
            atom_lines = [i for i, line in enumerate(lines) if len(line.split()) >= 7 and "=" not in line]
            row = data.draw(st.sampled_from(atom_lines), label="row")
            parts = lines[row].split()
            column = data.draw(st.integers(1, len(parts) - 1), label="column")
            parts[column] = {"nan": "nan", "inf": "inf", "text": "abc"}[how]
            lines[row] = " ".join(parts)
        path.write_text("\n".join(lines) + "\n")
        code, stderr = run_mlpot(ws, _train("native/config.yaml"))
        check_outcome(ws, code, stderr, certain)
