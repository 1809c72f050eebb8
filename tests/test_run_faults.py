"""Faults around a training run (issue #18): killed checkpoint writes, a full disk, the output folder.

* SIGKILL in the middle of a checkpoint write (a writer slowed down inside the write, and kills at
  random moments of a loop of writes) leaves every checkpoint that is listed loadable;
* a full disk during a save (ENOSPC injected into the writer; a real, small tmpfs where one can be
  mounted) is a CheckpointError naming the file, and the previous checkpoint stays loadable;
* the output folder: a stale lock of a dead process is taken over, ``--force`` clears an earlier
  run's checkpoints only once the new run has set up, ``--restart`` runs where the results are;
* a DeePMD input.json run killed with SIGKILL resumes (``--restart latest``) to the same numbers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.cli import main
from mlpot.errors import CheckpointError
from mlpot.training.checkpoint import CheckpointManager, load_checkpoint
from tests.bad_inputs.corpus import Workspace, build_template, fresh_workspace

REPO = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _state(step: int, size: int = 200_000) -> dict:
    return {"step": step, "model_state_dict": {"w": torch.full((size,), float(step), dtype=torch.float64)}}


def _all_listed_load(folder: Path) -> list:
    manager = CheckpointManager(folder, "model.ckpt", 3)
    steps = [load_checkpoint(p)["step"] for p in manager.existing()]
    if (folder / "checkpoint").exists():  # the pointer names a complete file
        name = (folder / "checkpoint").read_text().strip()
        assert load_checkpoint(folder / name)["step"] == int(name.split("-")[1].split(".")[0])
    if (folder / "model.ckpt.pt").is_symlink():
        load_checkpoint(folder / "model.ckpt.pt")
    return steps


SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    import torch
    import mlpot.training.checkpoint as checkpoint
    manager = checkpoint.CheckpointManager(sys.argv[1], "model.ckpt", 3)
    manager.save(1, {"step": 1, "model_state_dict": {"w": torch.ones(100000)}})
    real_fsync = os.fsync
    def slow_fsync(fd):  # the data are in the temporary file, not yet renamed over anything
        print("writing", flush=True)
        time.sleep(60)
        real_fsync(fd)
    checkpoint.os.fsync = slow_fsync
    manager.save(2, {"step": 2, "model_state_dict": {"w": torch.ones(100000) * 2}})
""")


def test_sigkill_in_the_middle_of_a_checkpoint_write(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(tmp_path)], env=_env(), cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # killed with a half-done file around
    process.kill()
    process.wait()
    assert _all_listed_load(tmp_path) == [1]
    assert CheckpointManager(tmp_path, "model.ckpt").latest().name == "model.ckpt-1.pt"
    # the next run saves over the leftovers without tripping on them
    CheckpointManager(tmp_path, "model.ckpt", 3).save(2, _state(2, 10))
    assert _all_listed_load(tmp_path) == [1, 2]


LOOP_WRITER = textwrap.dedent("""
    import sys, torch
    import mlpot.training.checkpoint as checkpoint
    manager = checkpoint.CheckpointManager(sys.argv[1], "model.ckpt", 3)
    start = len(manager.existing()) and checkpoint.load_checkpoint(manager.latest())["step"]
    for step in range(start + 1, start + 10000):
        manager.save(step, {"step": step, "model_state_dict": {"w": torch.full((300000,), float(step))}})
""")


def test_sigkill_at_random_moments_of_checkpoint_writes(tmp_path):
    """Kill a process that writes checkpoints in a loop at random moments (bounded: 6 kills)."""
    rng = np.random.default_rng(0)
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", LOOP_WRITER, str(tmp_path)], env=_env(), cwd=REPO)
        deadline = time.time() + 60
        while not list(tmp_path.glob("model.ckpt-*.pt")) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.4)))
        process.send_signal(signal.SIGKILL)
        process.wait()
        steps = _all_listed_load(tmp_path)
        assert steps and steps == sorted(steps)
        for path in CheckpointManager(tmp_path, "model.ckpt").existing():
            state = load_checkpoint(path)
            assert float(state["model_state_dict"]["w"][0]) == state["step"]


def _enospc_open(real_open):
    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

    return lambda fd, mode="r", *args, **kwargs: FullDisk(real_open(fd, mode, *args, **kwargs))


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import mlpot.training.checkpoint as checkpoint

    manager = CheckpointManager(tmp_path, "model.ckpt", 3)
    manager.save(1, _state(1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.is_symlink()}
    monkeypatch.setattr(checkpoint.os, "fdopen", _enospc_open(os.fdopen))
    with pytest.raises(CheckpointError, match=r"model\.ckpt-2\.pt: cannot write: No space left on device; an earlier "
                                              r"file of this name is kept unchanged"):
        manager.save(2, _state(2))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.is_symlink()} == before  # no temporary left
    assert _all_listed_load(tmp_path) == [1]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs (root with mount only; otherwise the injected ENOSPC test above stands)."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_full_tmpfs_during_a_save_keeps_the_previous_checkpoint(small_tmpfs):
    manager = CheckpointManager(small_tmpfs, "model.ckpt", 3)
    manager.save(1, _state(1, 250_000))  # 2 MB of the 3 MB
    with pytest.raises(CheckpointError, match=r"model\.ckpt-2\.pt: cannot write: No space left on device"):
        manager.save(2, _state(2, 250_000))
    assert _all_listed_load(small_tmpfs) == [1]
    assert not [p for p in small_tmpfs.iterdir() if p.name.endswith(".tmp")]


def test_full_tmpfs_as_output_folder_is_a_clear_error_at_the_start(small_tmpfs, tmp_path, monkeypatch, capsys):
    """A run whose output folder is full fails before its first step, naming the folder."""
    template = build_template(tmp_path / "template")
    (small_tmpfs / "filler").write_bytes(b"\0" * (3 * 2**20))  # as full as it gets
    monkeypatch.chdir(template.root)
    code = main(["train", "dp/input.json", "--output-dir", str(small_tmpfs / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{small_tmpfs / 'run'}: output_dir: the output folder cannot be written: no space left on device" in err


# ---- output folders ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Workspace:
    return build_template(tmp_path_factory.mktemp("faults") / "template")


@pytest.fixture
def ws(template, tmp_path, monkeypatch) -> Workspace:
    return fresh_workspace(template, tmp_path, monkeypatch)


def test_stale_lock_of_a_dead_process_is_taken_over(ws):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = ws.dp / "out"
    out.mkdir()
    (out / ".mlpot.lock").write_text(f"{dead.pid} {os.uname().nodename}\n")
    assert main(["train", "dp/input.json", "--output-dir", "dp/out", "--no-progress"]) == 0
    assert not (out / ".mlpot.lock").exists() and (out / "model.pt").exists()


def test_two_runs_in_one_folder_the_second_fails_at_once(ws, capsys):
    """A subprocess run holds the folder; an in-process run there fails naming its PID."""
    out = ws.dp / "out"
    slow = ws.edit_dp(lambda c: c["training"].update(numb_steps=100000, save_freq=100000), "slow.json")
    process = subprocess.Popen([sys.executable, "-m", "mlpot.cli", "train", slow, "--output-dir", "dp/out",
                                "--no-progress"], cwd=ws.root, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "lcurve.out").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the first run ended early"
        start = time.time()
        capsys.readouterr()
        assert main(["train", "dp/input.json", "--output-dir", "dp/out", "--no-progress"]) == 2
        assert f"in use by another mlpot run (PID {process.pid})" in capsys.readouterr().err
        assert time.time() - start < 10
    finally:
        process.kill()
        process.wait()


def test_force_clears_the_earlier_run_only_once_the_new_one_has_set_up(ws, capsys):
    out = ws.dp / "out"
    shutil.copytree(ws.prev, out)
    before = sorted(p.name for p in out.iterdir())
    (ws.dp / "sys5" / "set.000" / "coord.npy").write_text("broken")  # the new run fails at set-up
    assert main(["train", "dp/input.json", "--output-dir", "dp/out", "--force", "--no-progress"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before  # the earlier run is untouched
    assert "sys5" in capsys.readouterr().err


def test_force_starts_over_and_restart_resumes(ws):
    out = ws.dp / "out"
    shutil.copytree(ws.prev, out)
    (out / "model.ckpt-1000.pt").write_bytes((out / "model.ckpt-4.pt").read_bytes())  # a longer earlier run
    assert main(["train", "dp/input.json", "--output-dir", "dp/out", "--force", "--no-progress"]) == 0
    # the earlier checkpoints are gone: the new run's are kept and frozen, not pruned against step 1000
    assert sorted(p.name for p in out.glob("model.ckpt-*.pt")) == ["model.ckpt-2.pt", "model.ckpt-4.pt"]
    assert main(["train", "dp/input.json", "--output-dir", "dp/out", "--restart", "latest", "--no-progress"]) == 0


# ---- exact resume of a DeePMD input.json run after SIGKILL -----------------------------------------
def test_deepmd_input_resumes_exactly_after_sigkill(template, tmp_path):
    def folder(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(template.dp, root)
        config = json.loads((root / "input.json").read_text())
        config["training"].update(numb_steps=60, save_freq=10, disp_freq=1)
        config["learning_rate"]["decay_steps"] = 5
        (root / "input.json").write_text(json.dumps(config))
        return root

    reference, killed = folder("reference"), folder("killed")
    command = [sys.executable, "-m", "mlpot.cli", "train", "input.json", "--no-progress"]
    reference_run = subprocess.Popen(command, cwd=reference, env=_env(), stdout=subprocess.DEVNULL)
    process = subprocess.Popen(command, cwd=killed, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not (killed / "model.ckpt-30.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert reference_run.wait() == 0
    resumed = subprocess.run(command + ["--restart", "latest"], cwd=killed, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ref_rows = {int(r.split()[0]): r for r in (reference / "lcurve.out").read_text().splitlines() if r[:1] != "#"}
    rows = {int(r.split()[0]): r for r in (killed / "lcurve.out").read_text().splitlines() if r[:1] != "#"}
    assert sorted(rows) == sorted(ref_rows) == list(range(1, 61))
    for step in ref_rows:  # identical to the last digit
        assert rows[step] == ref_rows[step], step
    assert (reference / "model.pt").read_bytes() != b"" and (killed / "model.pt").exists()
