"""The bad-input corpus (tests/bad_inputs/corpus.py) through the ``mlpot`` command.

Every case runs in-process (``mlpot.cli.main``) on a fresh copy of a valid workspace and must:
exit with status 2; end stderr with one line ``mlpot <command>: error: <file>: <key or frame>: ...``
matching the case's pattern; raise no exception (an escaped exception is a traceback); run no code
from a model file; leave every file that existed before byte-identical. A few cases run again as
subprocesses, where a traceback would really reach stderr. With ``MLPOT_CORPUS_REPORT=FILE`` each
case appends a JSON line (name, front-end, command, exit code, message) to FILE: the table of the
corpus in the docs is made from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlpot.cli import main
from tests.bad_inputs.corpus import CASES, Workspace, build_template

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory, shared_data) -> Workspace:
    try:
        bands = shared_data("bands/cdse_zb")
    except pytest.skip.Exception:
        bands = None
    return build_template(tmp_path_factory.mktemp("bad_inputs") / "template", bands)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def readonly_folder(path: Path):
    """A folder nobody may write to: chmod for a user, a read-only tmpfs for root (skip if neither)."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot make a read-only folder here (root, and mounting a tmpfs is not allowed)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def _prepare(case, template: Workspace, tmp_path: Path, stack: contextlib.ExitStack, request) -> Workspace:
    if case.needs == "bands" and not template.bands.exists():
        pytest.skip("the DeePseudopot cases need the shared bands/cdse_zb data")
    if case.xfail:
        request.applymarker(pytest.mark.xfail(strict=True, reason=case.xfail))
    root = tmp_path / "ws"
    shutil.copytree(template.root, root)
    ws = Workspace(root)
    if case.needs == "readonly":
        ws.readonly = stack.enter_context(readonly_folder(tmp_path / "readonly"))
    stack.callback(lambda: getattr(ws, "held", None) and ws.held.close())
    return ws


def _check_message(case, argv, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines, "no message"
    prefix = f"mlpot {argv[0]}: error: "
    assert lines[-1].startswith(prefix), stderr
    assert re.search(case.expect, lines[-1]), f"{lines[-1]!r} does not match {case.expect!r}"


def _report(case, argv, code: int, stderr: str) -> None:
    report = os.environ.get("MLPOT_CORPUS_REPORT")
    if report:
        lines = stderr.strip().splitlines()
        with open(report, "a") as handle:
            handle.write(json.dumps({"name": case.name, "front_end": case.front_end, "command": argv[0], "code": code,
                                     "message": lines[-1] if lines else "", "traceback": "Traceback" in stderr}) + "\n")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_clear_error(case, template, tmp_path, monkeypatch, capsys, request):
    with contextlib.ExitStack() as stack:
        ws = _prepare(case, template, tmp_path, stack, request)
        monkeypatch.chdir(ws.root)
        argv = case.spoil(ws)
        before = snapshot(ws.root)
        capsys.readouterr()
        code = main(argv)
        stderr = capsys.readouterr().err
        _report(case, argv, code, stderr)
        assert code == 2, stderr
        _check_message(case, argv, stderr)
        assert not ws.marker.exists(), "code from a model file ran"
        after = snapshot(ws.root)
        assert {name: after.get(name) for name in before} == before, "a file written before changed"


def test_corpus_covers_the_issue():
    """>= 60 cases over the DeePMD, native and DeePseudopot front-ends, each with a distinct name."""
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    fronts = {c.front_end for c in CASES}
    assert {"deepmd", "native", "deepseudopot", "model", "data"} <= fronts


SUBPROCESS_CASES = ["dp JSON syntax error", "dp binary file as config", "dp rcut_smth > rcut",
                    "dp two atoms on one site (train)", "test: model that runs code", "native empty extxyz"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_subprocess(name, template, tmp_path, request):
    case = next(c for c in CASES if c.name == name)
    with contextlib.ExitStack() as stack:
        ws = _prepare(case, template, tmp_path, stack, request)
        cwd = os.getcwd()
        os.chdir(ws.root)
        try:
            argv = case.spoil(ws)
        finally:
            os.chdir(cwd)
        before = snapshot(ws.root)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        result = subprocess.run([sys.executable, "-m", "mlpot.cli", *argv], cwd=ws.root, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        _check_message(case, argv, result.stderr)
        assert not ws.marker.exists()
        after = snapshot(ws.root)
        assert {k: after.get(k) for k in before} == before


def test_forces_missing_in_some_systems_train_with_weight_zero(template, tmp_path, monkeypatch, capsys):
    """A system without force.npy has weight 0 in the force term: the run trains to finite numbers."""
    root = tmp_path / "ws"
    shutil.copytree(template.root, root)
    (root / "dp" / "sys5" / "set.000" / "force.npy").unlink()
    monkeypatch.chdir(root)
    assert main(["train", "dp/input.json", "--output-dir", "dp/out", "--no-progress"]) == 0
    rows = np.loadtxt(root / "dp" / "out" / "lcurve.out")
    assert np.all(np.isfinite(rows))
