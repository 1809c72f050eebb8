"""Write the tiny DeePMD-kit models and DeePMD-kit's own numbers that tests/test_deepmd_files.py reads.

Run with DeePMD-kit's Python (3.x, PyTorch backend), not mlpot's (CI has no DeePMD-kit; the files
this writes are committed):

    export OMP_NUM_THREADS=1 DP_INTRA_OP_PARALLELISM_THREADS=1 DP_INTER_OP_PARALLELISM_THREADS=1
    /work/peers/deepmd/bin/python tests/peer_models/make_deepmd_models.py \
        --dp "/work/peers/deepmd/bin/python /work/peers/dp_pure_torch.py" \
        --data /work/shared/data/deepmd_water/data_3 --work /tmp/deepmd_models

For each model of ``MODELS`` (water, O/H, float64, a few training steps so that nothing is at its
initial value) it runs DeePMD-kit's own command line in ``--work/<name>``: ``dp --pt train
input.json``, ``dp --pt freeze -o frozen.pth`` and ``dp --pt test -m <file> -s FRAMES_DIR -n 2 -d
detail`` on both the checkpoint and the frozen model (FRAMES_DIR: the frames ``FRAMES`` of
``--data``, copied unchanged into ``--work/frames``), and writes into ``deepmd/`` beside this script:

* ``<name>.ckpt.pt``: DeePMD-kit's training checkpoint ``model.ckpt-<N>.pt``, byte for byte (not for
  the models of ``FROZEN_ONLY``);
* ``<name>.pth``: DeePMD-kit's frozen TorchScript archive with only the records mlpot reads
  (``data.pkl``, ``data/*``, ``constants.pkl``, ``extra/*``, version and byte-order files), copied
  unchanged into a new zip: its ``code/`` folder (TorchScript source and debug information, ~120 kB
  of the ~150 kB of even a tiny model) is left out, because mlpot never reads or runs it. The full
  archive stays in ``--work/<name>/frozen.pth``;
* ``deepmd_reference.npz``: per model ``<name>/energy`` (2,) eV, ``<name>/forces`` (2, 192, 3) eV/Å
  and ``<name>/virial`` (2, 3, 3) eV of the frames ``FRAMES``, as ``dp test`` printed them
  (``detail.e.out`` / ``.f.out`` / ``.v.out``, 19 significant digits) for the frozen model, after
  checking that the checkpoint gives the same numbers (to 1e-10);
* ``deepmd_reference.json``: the DeePMD-kit and torch versions, the data folder, the frames and
  each model's input.

Nothing here copies DeePMD-kit code: it only runs DeePMD-kit's ``dp`` command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "deepmd"
# frames of the data folder that dp test evaluates: frame 0 has an H-H pair 2.1e-5 Å inside rcut
# (3.5 Å), where the non-smooth se_atten amplifies rounding (tests/test_deepmd_files.py); frame 2
# has no pair closer than 1e-3 Å to rcut
FRAMES = (0, 2)
STEPS = 4
# models whose training checkpoint (with its optimizer state, ~250 kB for these) is not kept: their
# frozen archive carries the same weights, and dp test gives the same numbers for both (checked)
FROZEN_ONLY = ("dpa2_attn", "dpa2_incr", "se_e3_tebd_econf", "dpa2_econf")

FITTING = {"type": "ener", "neuron": [8, 8], "resnet_dt": True, "seed": 3, "precision": "float64"}
MODELS = {
    "se_e2_a": {
        "descriptor": {"type": "se_e2_a", "sel": [12, 24], "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "resnet_dt": False, "axis_neuron": 4, "seed": 1, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "se_e2_a_one_side": {
        "descriptor": {"type": "se_e2_a", "sel": [12, 24], "rcut_smth": 1.0, "rcut": 3.5, "neuron": [4, 8],
                       "resnet_dt": True, "axis_neuron": 2, "type_one_side": True, "seed": 2,
                       "activation_function": "gelu", "precision": "float64"},
        "fitting_net": {**FITTING, "neuron": [6], "resnet_dt": False, "activation_function": "softplus"},
    },
    "se_e2_r": {
        "descriptor": {"type": "se_e2_r", "sel": [12, 24], "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "resnet_dt": False, "seed": 1, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "se_atten": {
        "descriptor": {"type": "se_atten", "sel": 36, "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "axis_neuron": 4, "attn": 8, "attn_layer": 1, "tebd_dim": 4, "seed": 1,
                       "precision": "float64"},
        "fitting_net": FITTING,
    },
    "se_atten_v2": {
        "descriptor": {"type": "se_atten_v2", "sel": 36, "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "axis_neuron": 4, "attn": 8, "attn_layer": 1, "tebd_dim": 4, "seed": 1,
                       "precision": "float64"},
        "fitting_net": FITTING,
    },
    # DPA-2 (nested repinit/repformer sections of DeePMD-kit 3.x), three option sets between them
    "dpa2": {  # the form of examples/water/dpa2/input_torch_small.json: three-body repinit, res_residual
        "descriptor": {"type": "dpa2", "seed": 1, "precision": "float64",
                       "repinit": {"tebd_dim": 4, "rcut": 3.5, "rcut_smth": 0.5, "nsel": 30, "neuron": [4, 8],
                                   "axis_neuron": 4, "activation_function": "tanh", "use_three_body": True,
                                   "three_body_sel": 18, "three_body_rcut": 3.0, "three_body_rcut_smth": 2.5,
                                   "three_body_neuron": [2, 4]},
                       "repformer": {"rcut": 2.5, "rcut_smth": 2.0, "nsel": 12, "nlayers": 2, "g1_dim": 16,
                                     "g2_dim": 8, "attn2_hidden": 4, "attn2_nhead": 2, "attn1_hidden": 8,
                                     "attn1_nhead": 2, "axis_neuron": 2, "update_h2": False,
                                     "update_g1_has_conv": True, "update_g1_has_grrg": True,
                                     "update_g1_has_drrd": True, "update_g1_has_attn": False,
                                     "update_g2_has_g1g1": False, "update_g2_has_attn": False,
                                     "update_style": "res_residual", "update_residual": 0.1,
                                     "update_residual_init": "norm", "attn2_has_gate": True, "use_sqrt_nnei": True,
                                     "g1_out_conv": True, "g1_out_mlp": True},
                       "add_tebd_to_repinit_out": False},
        "fitting_net": FITTING,
    },
    "dpa2_attn": {  # strip repinit, every repformer update (attention on g1, g2 and h2), res_avg
        "descriptor": {"type": "dpa2", "seed": 2, "precision": "float64", "concat_output_tebd": False,
                       "add_tebd_to_repinit_out": True,
                       "repinit": {"tebd_dim": 4, "rcut": 3.5, "rcut_smth": 0.5, "nsel": 30, "neuron": [4, 8],
                                   "axis_neuron": 4, "tebd_input_mode": "strip", "resnet_dt": True},
                       "repformer": {"rcut": 2.5, "rcut_smth": 1.0, "nsel": 12, "nlayers": 2, "g1_dim": 16,
                                     "g2_dim": 8, "attn2_hidden": 4, "attn2_nhead": 2, "attn1_hidden": 8,
                                     "attn1_nhead": 2, "axis_neuron": 2, "update_h2": True,
                                     "update_g1_has_attn": True, "update_g2_has_g1g1": True,
                                     "update_g2_has_attn": True, "attn2_has_gate": False, "update_style": "res_avg",
                                     "use_sqrt_nnei": False, "g1_out_conv": False, "g1_out_mlp": False,
                                     "set_davg_zero": False, "activation_function": "gelu"}},
        "fitting_net": FITTING,
    },
    "dpa2_incr": {  # not smooth, res_incr, direct_dist, strip three-body repinit, type_one_side, exclude_types
        "descriptor": {"type": "dpa2", "seed": 3, "precision": "float64", "smooth": False,
                       "exclude_types": [[0, 0]],
                       "repinit": {"tebd_dim": 4, "rcut": 3.5, "rcut_smth": 0.5, "nsel": 30, "neuron": [4, 8],
                                   "axis_neuron": 4, "tebd_input_mode": "strip", "type_one_side": True,
                                   "use_three_body": True, "three_body_sel": 18,
                                   "three_body_rcut": 3.0, "three_body_rcut_smth": 2.0, "three_body_neuron": [2, 4]},
                       "repformer": {"rcut": 2.5, "rcut_smth": 2.0, "nsel": 12, "nlayers": 2, "g1_dim": 16,
                                     "g2_dim": 8, "attn2_hidden": 4, "attn2_nhead": 1, "attn1_hidden": 8,
                                     "attn1_nhead": 1, "axis_neuron": 2, "update_h2": True, "direct_dist": True,
                                     "update_style": "res_incr", "trainable_ln": False, "ln_eps": 1e-4,
                                     "g1_out_conv": True, "g1_out_mlp": False}},
        "fitting_net": FITTING,
    },
    "se_e3_tebd": {
        "descriptor": {"type": "se_e3_tebd", "sel": 20, "rcut_smth": 0.5, "rcut": 3.0, "neuron": [4, 8],
                       "tebd_dim": 4, "seed": 1, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "se_e3_tebd_strip": {
        "descriptor": {"type": "se_e3_tebd", "sel": 20, "rcut_smth": 0.5, "rcut": 3.0, "neuron": [4, 8],
                       "tebd_dim": 4, "tebd_input_mode": "strip", "set_davg_zero": False, "resnet_dt": True,
                       "seed": 2, "precision": "float64"},
        "fitting_net": FITTING,
    },
    # use_econf_tebd: the type embedding reads each element's electronic-configuration vector
    "se_atten_econf": {
        "descriptor": {"type": "se_atten", "sel": 36, "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "axis_neuron": 4, "attn": 8, "attn_layer": 1, "tebd_dim": 4, "seed": 4,
                       "use_econf_tebd": True, "use_tebd_bias": True, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "se_e3_tebd_econf": {
        "descriptor": {"type": "se_e3_tebd", "sel": 20, "rcut_smth": 0.5, "rcut": 3.0, "neuron": [4, 8],
                       "tebd_dim": 4, "tebd_input_mode": "strip", "seed": 5, "use_econf_tebd": True,
                       "precision": "float64"},
        "fitting_net": FITTING,
    },
    "dpa2_econf": {
        "descriptor": {"type": "dpa2", "seed": 6, "precision": "float64", "use_econf_tebd": True,
                       "repinit": {"tebd_dim": 4, "rcut": 3.5, "rcut_smth": 0.5, "nsel": 30, "neuron": [4, 8],
                                   "axis_neuron": 4},
                       "repformer": {"rcut": 2.5, "rcut_smth": 2.0, "nsel": 12, "nlayers": 1, "g1_dim": 16,
                                     "g2_dim": 8, "attn2_hidden": 4, "attn2_nhead": 2, "attn1_hidden": 8,
                                     "attn1_nhead": 2, "axis_neuron": 2}},
        "fitting_net": FITTING,
    },
}

# records of a TorchScript archive that hold data (everything else is code/debug information)
_FROZEN_RECORDS = ("data.pkl", "constants.pkl", "byteorder", "version", ".data/version", ".data/serialization_id")


def training_input(model: dict, data: Path) -> dict:
    return {
        "model": {"type_map": ["O", "H"], **model},
        "learning_rate": {"type": "exp", "decay_steps": 2, "start_lr": 1e-3, "stop_lr": 1e-4},
        "loss": {"type": "ener", "start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100, "limit_pref_f": 1,
                 "start_pref_v": 0, "limit_pref_v": 0},
        "training": {"training_data": {"systems": [str(data)], "batch_size": 1}, "numb_steps": STEPS, "seed": 1,
                     "disp_freq": STEPS, "save_freq": STEPS},
    }


def dp(command: list, args: list, cwd: Path) -> None:
    with open(cwd / "dp.log", "a") as log:
        subprocess.run(command + args, cwd=cwd, check=True, stdout=log, stderr=subprocess.STDOUT)


def frame_subset(data: Path, folder: Path) -> Path:
    """A deepmd/npy system holding the frames ``FRAMES`` of ``data`` (arrays copied unchanged)."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "set.000").mkdir(parents=True)
    for raw in ("type.raw", "type_map.raw"):
        shutil.copyfile(data / raw, folder / raw)
    for array in sorted((data / "set.000").glob("*.npy")):
        np.save(folder / "set.000" / array.name, np.load(array)[list(FRAMES)])
    return folder


def dp_test(command: list, model: str, prefix: str, data: Path, cwd: Path, backend: str = "--pt") -> dict:
    """Energies, forces and virials ``dp test`` prints for the frames of ``data`` (its detail files
    ``<prefix>.e.out``...; ``prefix`` without dots: dp replaces a suffix); ``backend``: ``--pt`` or ``--tf``."""
    n = len(FRAMES)
    dp(command, [backend, "test", "-m", model, "-s", str(data), "-n", str(n), "-d", prefix], cwd)
    energy = np.loadtxt(cwd / f"{prefix}.e.out", ndmin=2)
    forces = np.loadtxt(cwd / f"{prefix}.f.out", ndmin=2)
    virial = np.loadtxt(cwd / f"{prefix}.v.out", ndmin=2)
    if not np.array_equal(energy[:, 0], np.load(data / "set.000" / "energy.npy")):  # every frame, in order
        raise RuntimeError(f"dp test evaluated other frames than those of {data}")
    return {"energy": energy[:, 1], "forces": forces[:, 3:].reshape(n, -1, 3), "virial": virial[:, 9:].reshape(n, 3, 3)}


def strip_code(frozen: Path, output: Path) -> None:
    """Copy the data records of a TorchScript archive, unchanged, into a new zip (module docstring)."""
    with zipfile.ZipFile(frozen) as source, zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            inner = info.filename.split("/", 1)[1]
            if inner in _FROZEN_RECORDS or inner.startswith(("data/", "extra/")):
                target.writestr(info.filename, source.read(info.filename))


def train_and_freeze(name: str, model: dict, command: list, data: Path, work: Path, backend: str, frozen: str,
                     loss: dict = None) -> Path:
    """``dp <backend> train`` of ``model`` on ``data`` in a fresh ``work/name`` (``loss``: instead of
    the energy loss), then ``dp <backend> freeze -o <frozen>``; returns the folder."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    script = training_input(model, data)
    if loss is not None:
        script["loss"] = loss
    (folder / "input.json").write_text(json.dumps(script, indent=1))
    dp(command, [backend, "train", "input.json"], folder)
    dp(command, [backend, "freeze", "-o", frozen], folder)
    return folder


def make(name: str, model: dict, command: list, data: Path, frames: Path, work: Path) -> dict:
    folder = train_and_freeze(name, model, command, data, work, "--pt", "frozen.pth")
    frozen = dp_test(command, "frozen.pth", "detail_frozen", frames, folder)
    checkpoint = dp_test(command, f"model.ckpt-{STEPS}.pt", "detail_checkpoint", frames, folder)
    for key in frozen:
        if not np.allclose(frozen[key], checkpoint[key], rtol=0, atol=1e-10):
            raise RuntimeError(f"{name}: dp test gives other {key} for the checkpoint and the frozen model")
    if name not in FROZEN_ONLY:
        shutil.copyfile(folder / f"model.ckpt-{STEPS}.pt", OUT / f"{name}.ckpt.pt")
    strip_code(folder / "frozen.pth", OUT / f"{name}.pth")
    return frozen


def parse_arguments(doc: str, models, data_help: str) -> argparse.Namespace:
    """The command line of this script and of make_deepmd_tf_models.py: --dp, --data, --work, --only."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--dp", default="dp", help="how to run DeePMD-kit's dp (a command line)")
    parser.add_argument("--data", type=Path, required=True, help=data_help)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder outside the repository")
    parser.add_argument("--only", nargs="*", default=list(models), help="models to make")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments(__doc__, sorted(MODELS), "a deepmd/npy water system (O, H)")
    import deepmd
    import torch

    OUT.mkdir(exist_ok=True)
    command = shlex.split(args.dp)
    reference_file = OUT / "deepmd_reference.npz"
    numbers = dict(np.load(reference_file)) if reference_file.exists() else {}
    frames = frame_subset(args.data.resolve(), args.work.resolve() / "frames")
    for name in args.only:
        for key, value in make(name, MODELS[name], command, args.data.resolve(), frames, args.work.resolve()).items():
            numbers[f"{name}/{key}"] = value
        print(name, "done")
    np.savez_compressed(reference_file, **numbers)
    info = {"deepmd_kit": deepmd.__version__, "torch": torch.__version__, "data": args.data.name, "frames": list(FRAMES),
            "steps": STEPS, "models": {name: training_input(MODELS[name], Path("DATA"))["model"] for name in MODELS}}
    (OUT / "deepmd_reference.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
