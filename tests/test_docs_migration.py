"""The migration pages (docs/migration_*.md) run as written.

Each page is one shell session that starts at the repository root. Its ```bash blocks run in
order, line by line: ``cd DIR`` moves the session, ``mlpot ...`` runs in this process through
``mlpot.cli.main`` (exit status 0 required), any other line (``python ...``, ``cp``, ``sed``)
runs in bash with ``python`` meaning this interpreter; ``&&`` separates commands. Its
```python blocks run (``exec``) in the session's folder at the point where they appear. The
session's repository root is a copy of ``examples/`` under ``tmp_path``; ``../shared/data`` beside
it holds the datasets the page names, reached through the ``shared_data`` fixture.

Tiers:

* fast (default): the pages with the substitutions below, which only make numbers smaller (steps,
  epochs, frames); each must apply, so a page that changes is noticed here;
* slow (``test_page_as_written``): every page exactly as written, on the full datasets.

The inline ``mlpot ...`` commands of the pages' tables are parsed with mlpot's own parser (an
unknown option fails), not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from mlpot.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = ["migration_deepmd.md", "migration_nequip.md", "migration_mace.md", "migration_deepseudopot.md"]

# fast tier: (old, new) text replacements in the copied example files ...
FAST_FILES: Dict[str, List[Tuple[str, str]]] = {
    "examples/cuau_emt/input.json": [('"numb_steps": 1200', '"numb_steps": 20'), ('"disp_freq": 100', '"disp_freq": 10'),
                                     ('"save_freq": 1000', '"save_freq": 20')],
    "examples/macescf_water/config.yaml": [("end: 9", "end: 0"), ("start: 10", "start: 1"), ("end: 11", "end: 1")],
}
# ... in the commands of a page ...
FAST_COMMANDS: Dict[str, List[Tuple[str, str]]] = {
    "migration_deepseudopot.md": [("--prefit-epochs 200", "--prefit-epochs 5"), ("max_num_epochs = 20", "max_num_epochs = 2")],
    "migration_mace.md": [("water_clusters.xyz -n 10", "water_clusters.xyz -n 3")],
}
# ... and the first frames of these extxyz files of ../shared/data instead of all of them
FAST_FRAMES = {"water_clusters_aims/water_clusters.xyz": 20, "mace_reference/water.xyz": 4}


def fenced_blocks(text: str) -> List[Tuple[str, str]]:
    """(language, code) of every fenced block of a markdown text, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def shell_commands(code: str) -> List[str]:
    """The commands of a bash block: continuation lines joined, comment lines dropped, ``&&`` split."""
    lines, pending = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.strip().startswith("#"):
            lines.extend(part.strip() for part in line.split(" && "))
    return lines


def page_steps(page: str, substitutions=()) -> List[Tuple[str, str]]:
    """("bash", command) and ("python", code) steps of a page, substitutions applied (each must apply)."""
    steps = []
    for language, code in fenced_blocks((DOCS / page).read_text()):
        if language == "bash":
            steps += [("bash", command) for command in shell_commands(code)]
        elif language == "python":
            steps.append(("python", code))
    text = "\n".join(code for _, code in steps)
    for old, new in substitutions:
        assert old in text, f"{page}: the substitution {old!r} no longer applies"
        steps = [(kind, code.replace(old, new)) for kind, code in steps]
    return steps


def _first_frames(source: Path, target: Path, count: int) -> None:
    """The first ``count`` frames of an extxyz file, copied line by line (nothing reformatted)."""
    lines, out = source.read_text().splitlines(keepends=True), []
    while lines and count > 0:
        n_atoms = int(lines[0])
        out, lines, count = out + lines[: n_atoms + 2], lines[n_atoms + 2:], count - 1
    target.write_text("".join(out))


def make_workspace(root: Path, page: str, shared_data, fast: bool) -> Path:
    """The repository root of a session: a copy of examples/ (fast-tier edits applied) and, beside
    it, shared/data with the datasets the page names."""
    repo = root / "repo"
    shutil.copytree(REPO / "examples", repo / "examples", ignore=shutil.ignore_patterns("out", "data", "__pycache__"))
    for name, replacements in (FAST_FILES.items() if fast else ()):
        path = repo / name
        text = path.read_text()
        for old, new in replacements:
            assert old in text, f"{name}: the substitution {old!r} no longer applies"
            text = text.replace(old, new)
        path.write_text(text)
    shared = root / "shared" / "data"
    shared.mkdir(parents=True)
    for dataset in sorted(set(re.findall(r"shared/data/([\w.-]+)", (DOCS / page).read_text()))):
        source, target = shared_data(dataset), shared / dataset
        subsets = {k.split("/", 1)[1]: n for k, n in FAST_FRAMES.items() if fast and k.startswith(dataset + "/")}
        if not subsets:
            target.symlink_to(source, target_is_directory=True)
            continue
        target.mkdir()
        for item in source.iterdir():
            if item.name in subsets:
                _first_frames(item, target / item.name, subsets[item.name])
            else:
                (target / item.name).symlink_to(item)
    return repo


def run_session(page: str, repo: Path, steps, monkeypatch) -> None:
    cwd = repo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for kind, code in steps:
        monkeypatch.chdir(cwd)
        if kind == "python":
            exec(compile(code, f"{page} python block", "exec"), {"__name__": "__main__"})
            continue
        words = shlex.split(code, comments=True)
        if words[0] == "cd":
            cwd = (cwd / words[1]).resolve()
            assert cwd.is_dir() and repo.parent in cwd.parents, f"{page}: {code}: no such folder in the session"
        elif words[0] == "mlpot":
            assert main(words[1:]) == 0, f"{page}: {code} failed"
        else:
            command = re.sub(r"^python\b", shlex.quote(sys.executable), code)
            done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{page}: {code} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_with_smaller_numbers(page, tmp_path, shared_data, monkeypatch):
    repo = make_workspace(tmp_path, page, shared_data, fast=True)
    run_session(page, repo, page_steps(page, FAST_COMMANDS.get(page, ())), monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_as_written(page, tmp_path, shared_data, monkeypatch):
    repo = make_workspace(tmp_path, page, shared_data, fast=False)
    run_session(page, repo, page_steps(page), monkeypatch)


@pytest.mark.parametrize("page", PAGES)
def test_table_commands_parse(page):
    """Every inline `mlpot COMMAND ARGS` of a page's tables names a command and options that exist
    (parsed, not run); elsewhere in the text the command must exist."""
    from mlpot.cli import COMMANDS

    text = re.sub(r"^```.*?^```", "", (DOCS / page).read_text(), flags=re.M | re.S)
    table_spans = [span for line in text.splitlines() if line.startswith("|")
                   for span in re.findall(r"`(mlpot [^`]+)`", line)]
    assert table_spans
    for span in re.findall(r"`(mlpot [^`]+)`", text):
        assert span.split()[1] in COMMANDS, f"{page}: `{span}`: no such command"
    for span in table_spans:
        argv = shlex.split(span)[1:]
        if len(argv) <= 2 and all(re.fullmatch(r"[a-z-]+", word) for word in argv):
            continue  # a command named in a note (`mlpot package build`), not a command line
        module = __import__(COMMANDS[argv[0]][0], fromlist=["add_arguments"])
        if hasattr(module, "split_arguments"):
            argv, _ = module.split_arguments(argv)
        try:
            build_parser(only=argv[0]).parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `{span}` does not parse")


def test_fenced_blocks_and_commands_are_read_as_a_shell_would():
    text = "x\n```bash\nmkdir a && cd a   # go\nmlpot test m.pt \\\n  d.xyz\n# note\n```\n```python\nprint(1)\n```\n"
    blocks = fenced_blocks(text)
    assert blocks == [("bash", "mkdir a && cd a   # go\nmlpot test m.pt \\\n  d.xyz\n# note\n"), ("python", "print(1)\n")]
    assert shell_commands(blocks[0][1]) == ["mkdir a", "cd a   # go", "mlpot test m.pt    d.xyz"]
