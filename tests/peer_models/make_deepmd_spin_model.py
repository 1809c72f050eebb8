"""Write the tiny DeePMD-kit spin model and DeePMD-kit's own numbers that tests/test_deepmd_spin.py reads.

Run with DeePMD-kit's Python (3.x, PyTorch backend), not mlpot's (the files it writes are committed):

    export OMP_NUM_THREADS=1 DP_INTRA_OP_PARALLELISM_THREADS=1 DP_INTER_OP_PARALLELISM_THREADS=1
    /work/peers/deepmd/bin/python tests/peer_models/make_deepmd_spin_model.py \
        --dp "/work/peers/deepmd/bin/python /work/peers/dp_pure_torch.py" --work /tmp/deepmd_spin

It writes NiO-like spin data with ``examples/spin/make_data.py`` (training: 20 frames, seed 0;
test: 3 frames, seed 1) into ``--work``, trains DeePMD-kit's spin example input
(``examples/spin/se_e2_a/input_torch.json`` of DeePMD-kit, with tiny networks, float64, ``STEPS``
steps) with ``dp --pt train``, runs ``dp --pt test -d detail`` on the test frames, and writes into
``deepmd/`` beside this script:

* ``spin_se_e2_a.ckpt.pt``: DeePMD-kit's checkpoint ``model.ckpt-<STEPS>.pt``, byte for byte;
* ``spin_se_e2_a.pth``: ``dp --pt freeze``'s archive without its ``code/`` folder (``strip_code`` of
  ``make_deepmd_models.py``), after checking that ``dp test`` of the full archive gives the
  checkpoint's numbers;
* ``deepmd_spin_reference.npz``: the test frames (``coord`` (3, n, 3) Å, ``box`` (3, 3, 3) Å,
  ``spin`` (3, n, 3) μB, ``types`` (n,)) and ``dp test``'s ``energy`` (3,) eV, real ``force``
  (3, n, 3) eV/Å, ``force_mag`` (n_mag_total, 3) eV/μB (magnetic atoms in frame order, as
  ``detail.fm.out``) and ``virial`` (3, 3, 3) eV (19 significant digits of the detail files);
* ``deepmd_spin_reference.json``: DeePMD-kit and torch versions and the input.

Nothing here copies DeePMD-kit code: it only runs DeePMD-kit's ``dp`` command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from make_deepmd_models import strip_code

HERE = Path(__file__).resolve().parent
OUT = HERE / "deepmd"
GENERATOR = HERE.parent.parent / "examples" / "spin" / "make_data.py"
STEPS = 6
MODEL = {
    "type_map": ["Ni", "O"],
    "descriptor": {"type": "se_e2_a", "sel": [24, 24], "rcut_smth": 3.0, "rcut": 4.2, "neuron": [4, 8],
                   "resnet_dt": False, "axis_neuron": 4, "seed": 1, "precision": "float64"},
    "fitting_net": {"neuron": [8, 8], "resnet_dt": True, "seed": 1, "precision": "float64"},
    "data_stat_nbatch": 10,
    "spin": {"use_spin": [True, False], "virtual_scale": [0.3140]},
}
INPUT = {
    "model": MODEL,
    "learning_rate": {"type": "exp", "decay_steps": 2, "start_lr": 0.001, "stop_lr": 3.51e-5},
    "loss": {"type": "ener_spin", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_fr": 1000, "limit_pref_fr": 1,
             "start_pref_fm": 10000, "limit_pref_fm": 10},
    "training": {"training_data": {"systems": ["train"], "batch_size": 2}, "numb_steps": STEPS, "seed": 10,
                 "disp_file": "lcurve.out", "disp_freq": STEPS, "save_freq": STEPS},
}


def generator():
    spec = importlib.util.spec_from_file_location("spin_make_data", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dp(command: list, args: list, cwd: Path) -> None:
    with open(cwd / "dp.log", "a") as log:
        subprocess.run(command + args, cwd=cwd, check=True, stdout=log, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dp", required=True, help="the dp command, e.g. 'python dp_pure_torch.py'")
    parser.add_argument("--work", required=True, type=Path)
    args = parser.parse_args()
    command, work = shlex.split(args.dp), args.work
    if work.exists():
        shutil.rmtree(work)
    make_data = generator()
    make_data.write(work / "train", n_frames=20, seed=0)
    make_data.write(work / "test", n_frames=3, seed=1)
    (work / "input.json").write_text(json.dumps(INPUT, indent=1))
    dp(command, ["--pt", "train", "input.json"], work)
    dp(command, ["--pt", "test", "-m", f"model.ckpt-{STEPS}.pt", "-s", "test", "-d", "detail"], work)
    dp(command, ["--pt", "freeze", "-o", "frozen.pth"], work)
    dp(command, ["--pt", "test", "-m", "frozen.pth", "-s", "test", "-d", "frozen"], work)
    for name in ("e", "fr", "fm", "v"):
        if not np.allclose(np.loadtxt(work / f"detail.{name}.out"), np.loadtxt(work / f"frozen.{name}.out"),
                           rtol=0, atol=1e-10):
            raise SystemExit(f"dp test of the frozen model differs from the checkpoint's ({name})")
    OUT.mkdir(exist_ok=True)
    shutil.copyfile(work / f"model.ckpt-{STEPS}.pt", OUT / "spin_se_e2_a.ckpt.pt")
    strip_code(work / "frozen.pth", OUT / "spin_se_e2_a.pth")
    sets = work / "test" / "set.000"
    n_frames = 3
    detail = {name: np.loadtxt(work / f"detail.{name}.out", ndmin=2) for name in ("e", "fr", "fm", "v")}
    np.savez_compressed(
        OUT / "deepmd_spin_reference.npz",
        coord=np.load(sets / "coord.npy").reshape(n_frames, -1, 3), box=np.load(sets / "box.npy").reshape(n_frames, 3, 3),
        spin=np.load(sets / "spin.npy").reshape(n_frames, -1, 3), types=np.loadtxt(work / "test" / "type.raw", dtype=int),
        energy=detail["e"][:, 1], force=detail["fr"][:, 3:].reshape(n_frames, -1, 3), force_mag=detail["fm"][:, 3:],
        virial=detail["v"][:, 9:].reshape(n_frames, 3, 3))
    import deepmd
    import torch

    info = {"deepmd_kit": deepmd.__version__, "torch": torch.__version__, "steps": STEPS, "input": INPUT}
    (OUT / "deepmd_spin_reference.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {OUT / 'spin_se_e2_a.ckpt.pt'} ({(OUT / 'spin_se_e2_a.ckpt.pt').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
