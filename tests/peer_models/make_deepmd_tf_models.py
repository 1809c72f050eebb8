"""Write the tiny DeePMD-kit TensorFlow frozen graphs and DeePMD-kit's own numbers that
tests/test_deepmd_tf_files.py reads.

Run with the Python of a DeePMD-kit with its TensorFlow backend, not mlpot's (CI has neither; the
files this writes are committed):

    export OMP_NUM_THREADS=1 TF_INTRA_OP_PARALLELISM_THREADS=1 TF_INTER_OP_PARALLELISM_THREADS=1 \\
        DP_INTRA_OP_PARALLELISM_THREADS=1 DP_INTER_OP_PARALLELISM_THREADS=1
    /work/peers/deepmd-tf/bin/python tests/peer_models/make_deepmd_tf_models.py \\
        --dp /work/peers/deepmd-tf/bin/dp --data /work/shared/data/deepmd_water --work /tmp/deepmd_tf_models

For each model of ``MODELS`` (water, O/H, float64, a few training steps on ``data_0`` so that nothing
is at its initial value) it runs DeePMD-kit's command line in ``--work/<name>``: ``dp --tf train
input.json``, ``dp --tf freeze -o model.pb`` and ``dp --tf test -m model.pb -s FRAMES_DIR -n 2 -d
detail`` (FRAMES_DIR: frames 0 and 2 of ``data_3``, as for the PyTorch files), and writes into
``deepmd/`` beside this script:

* ``<name>.pb``: DeePMD-kit's frozen graph, byte for byte;
* ``deepmd_tf_reference.npz``: per model ``<name>/energy`` (2,) eV, ``<name>/forces`` (2, 192, 3)
  eV/Å and ``<name>/virial`` (2, 3, 3) eV, as ``dp --tf test`` printed them;
* ``deepmd_tf_reference.json``: the DeePMD-kit and TensorFlow versions, the data, the frames and
  each model's input.

For each model of ``TENSOR_MODELS`` (a dipole and a polar fitting on se_e2_a) the same is done with
the water clusters of ``deepmd_water_tensor`` (beside ``--data``): training on
``<kind>/training_data_reformat/global_system`` with the tensor loss, ``dp --tf test`` on frames 0
and 2 of its ``validation_data_reformat/global_system``; ``deepmd_tf_reference.npz`` gets
``<name>/dipole`` (2, 3) or ``<name>/polarizability`` (2, 9). Their graphs are committed without
the nodes under ``gradients/``, ``gradients_1/``... (TensorFlow's derivatives of each tensor
component, which make the polar graph 875 kB; mlpot reads none of them), every other node unchanged.

``tf_se_a_mask`` (se_a_mask, no cutoff, aparam as the atom mask) trains on the first 100 frames of
``deepmd_nopbc/C1H4O2`` (beside ``--data``; 7-atom molecules) with aparam = 1 on every atom, and
``dp --tf test`` evaluates its frames 0 and 2 one at a time (two at once fail inside DeePMD-kit 3.2,
reshaping the atomic virials); ``<name>/energy`` (2,), ``<name>/forces`` (2, 7, 3).

Not made: se_a_tpe, whose training fails inside DeePMD-kit 3.2's TF backend (a reshape of 55296
values into 10616832, on this data with the defaults and with type_nchanl 2 / type_nlayer 1).

Nothing here copies DeePMD-kit code: it only runs DeePMD-kit's ``dp`` command.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_deepmd_models import (FRAMES, OUT, STEPS, dp, dp_test, frame_subset, parse_arguments,  # noqa: E402
                                train_and_freeze, training_input)

FITTING = {"type": "ener", "neuron": [8, 8], "resnet_dt": True, "seed": 3, "precision": "float64"}
SE_A = {"type": "se_e2_a", "sel": [12, 24], "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8], "resnet_dt": False,
        "axis_neuron": 4, "seed": 1, "precision": "float64"}
MODELS = {
    "tf_se_e2_a": {"descriptor": SE_A, "fitting_net": FITTING},
    "tf_se_e2_a_one_side": {
        "descriptor": {**SE_A, "rcut_smth": 1.0, "resnet_dt": True, "axis_neuron": 2, "type_one_side": True,
                       "seed": 2, "activation_function": "gelu"},
        # equal widths everywhere: the TF fitting net has no residual on its first layer
        "fitting_net": {**FITTING, "neuron": [16, 16], "resnet_dt": False, "activation_function": "softplus"},
    },
    "tf_se_e2_r": {
        "descriptor": {"type": "se_e2_r", "sel": [12, 24], "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "resnet_dt": False, "seed": 1, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_e2_r_one_side": {
        "descriptor": {"type": "se_e2_r", "sel": [12, 24], "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "resnet_dt": True, "type_one_side": True, "seed": 2, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_e3": {
        "descriptor": {"type": "se_e3", "sel": [8, 16], "rcut_smth": 0.5, "rcut": 3.0, "neuron": [2, 4, 8],
                       "resnet_dt": False, "seed": 1, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_atten": {
        "descriptor": {"type": "se_atten", "sel": 36, "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "axis_neuron": 4, "attn": 8, "attn_layer": 1, "seed": 1, "precision": "float64"},
        "type_embedding": {"neuron": [4], "seed": 1, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_atten_v2": {
        "descriptor": {"type": "se_atten_v2", "sel": 36, "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "axis_neuron": 4, "attn": 8, "attn_layer": 1, "seed": 1, "precision": "float64"},
        "type_embedding": {"neuron": [4], "seed": 1, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_atten_variant": {  # type_one_side, two attention layers with attn_mask, no dotr, resnet_dt
        "descriptor": {"type": "se_atten", "sel": 36, "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "axis_neuron": 4, "attn": 8, "attn_layer": 2, "attn_mask": True, "attn_dotr": False,
                       "type_one_side": True, "resnet_dt": True, "seed": 2, "precision": "float64"},
        "type_embedding": {"neuron": [2], "seed": 2, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_atten_strip": {  # se_atten with the stripped type embedding, not smooth
        "descriptor": {"type": "se_atten", "sel": 36, "rcut_smth": 0.5, "rcut": 3.5, "neuron": [4, 8],
                       "axis_neuron": 4, "attn": 8, "attn_layer": 1, "tebd_input_mode": "strip",
                       "seed": 3, "precision": "float64"},
        "type_embedding": {"neuron": [4], "seed": 3, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_e2_a_tebd": {  # se_e2_a with the model-level type embedding (examples/water/se_e2_a_tebd)
        "descriptor": {**SE_A, "seed": 4},
        "type_embedding": {"neuron": [2, 4], "seed": 4, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_a_ebd_v2": {  # se_e2_a with the type embedding in strip mode
        "descriptor": {**SE_A, "type": "se_a_ebd_v2", "seed": 5, "type_one_side": True},
        "type_embedding": {"neuron": [4], "seed": 5, "precision": "float64"},
        "fitting_net": FITTING,
    },
    "tf_se_e2_a_float32": {
        "descriptor": {**SE_A, "precision": "float32", "seed": 6},
        "fitting_net": {**FITTING, "precision": "float32"},
    },
    "tf_hybrid": {  # se_e2_a (two-sided) + se_e2_r (one-sided, a smaller cutoff)
        "descriptor": {"type": "hybrid", "list": [
            {**SE_A, "seed": 7},
            {"type": "se_e2_r", "sel": [8, 16], "rcut_smth": 0.5, "rcut": 3.0, "neuron": [4, 8], "type_one_side": True,
             "seed": 8, "precision": "float64"}]},
        "fitting_net": FITTING,
    },
    "tf_loc_frame": {  # the axis rule of DeePMD-kit's examples/water/loc_frame
        "descriptor": {"type": "loc_frame", "sel_a": [8, 16], "sel_r": [12, 24], "rcut": 3.5,
                       "axis_rule": [0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0]},
        "fitting_net": FITTING,
    },
}
TENSOR_FITTING = {"sel_type": [0], "neuron": [8, 8], "resnet_dt": True, "seed": 3, "precision": "float64"}
# name: (model, folder of deepmd_water_tensor, label)
TENSOR_MODELS = {
    "tf_dipole": ({"descriptor": SE_A, "fitting_net": {"type": "dipole", **TENSOR_FITTING}}, "dipole", "dipole"),
    "tf_polar": ({"descriptor": SE_A, "fitting_net": {"type": "polar", "fit_diag": False, "scale": 2.0,
                                                      **TENSOR_FITTING}}, "polar", "polarizability"),
}
TENSOR_LOSS = {"type": "tensor", "pref": 1.0, "pref_atomic": 0.0}
# se_a_mask (no cutoff, aparam marks real atoms): the 7-atom molecules of deepmd_nopbc/C1H4O2
MASK_MODEL = {"type_map": ["C", "H", "O"],
              "descriptor": {"type": "se_a_mask", "sel": [1, 4, 2], "neuron": [4, 8], "axis_neuron": 4,
                             "resnet_dt": False, "seed": 1, "precision": "float64"},
              "fitting_net": {**FITTING, "numb_aparam": 1, "use_aparam_as_mask": True}}
MASK_TRAIN_FRAMES = 100


def make(name: str, model: dict, command: list, data: Path, frames: Path, work: Path) -> dict:
    folder = train_and_freeze(name, model, command, data, work, "--tf", "model.pb")
    numbers = dp_test(command, "model.pb", "detail", frames, folder, backend="--tf")
    shutil.copyfile(folder / "model.pb", OUT / f"{name}.pb")
    return numbers


def strip_gradients(graph: Path, output: Path) -> None:
    """Copy a frozen graph without its ``gradients/``, ``gradients_<k>/`` nodes (module docstring)."""
    import tensorflow

    definition = tensorflow.compat.v1.GraphDef()
    definition.ParseFromString(graph.read_bytes())
    kept = [node for node in definition.node if not re.match(r"gradients(_\d+)?/", node.name)]
    del definition.node[:]
    definition.node.extend(kept)
    output.write_bytes(definition.SerializeToString())


def make_tensor(name: str, command: list, tensor_data: Path, work: Path) -> dict:
    model, kind, label = TENSOR_MODELS[name]
    source = tensor_data / kind
    validation = source / "validation_data_reformat" / "global_system"
    frames = frame_subset(validation, work / f"frames_{kind}")
    if (validation / "nopbc").exists():
        shutil.copyfile(validation / "nopbc", frames / "nopbc")
    folder = train_and_freeze(name, model, command, source / "training_data_reformat" / "global_system", work, "--tf",
                              "model.pb", loss=TENSOR_LOSS)
    dp(command, ["--tf", "test", "-m", "model.pb", "-s", str(frames), "-n", str(len(FRAMES)), "-d", "detail"], folder)
    table = np.loadtxt(folder / "detail.out", ndmin=2)  # data columns, then as many predicted ones
    strip_gradients(folder / "model.pb", OUT / f"{name}.pb")
    return {label: table[:, table.shape[1] // 2:]}


def masked_copy(source: Path, folder: Path, frames) -> Path:
    """A deepmd/npy copy of the ``frames`` of ``source`` with aparam = 1 on every atom (all real)."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "set.000").mkdir(parents=True)
    for name in ("type.raw", "type_map.raw", "nopbc"):
        shutil.copyfile(source / name, folder / name)
    for name in ("coord", "energy", "force"):
        np.save(folder / "set.000" / f"{name}.npy", np.load(source / "set.000" / f"{name}.npy")[frames])
    n_frames, n_atoms = np.load(folder / "set.000" / "coord.npy").shape[0], len((source / "type.raw").read_text().split())
    np.save(folder / "set.000" / "aparam.npy", np.ones((n_frames, n_atoms)))
    return folder


def make_masked(name: str, command: list, source: Path, work: Path) -> dict:
    """se_a_mask: ``dp --tf test`` one frame at a time (with two frames DeePMD-kit 3.2 fails reshaping
    the atomic virials)."""
    train = masked_copy(source, work / "mask_train", slice(0, MASK_TRAIN_FRAMES))
    folder = train_and_freeze(name, MASK_MODEL, command, train, work, "--tf", "model.pb")  # its type_map wins
    energy, forces = [], []
    for frame in FRAMES:
        frames = masked_copy(source, work / f"mask_frame_{frame}", [frame])
        dp(command, ["--tf", "test", "-m", "model.pb", "-s", str(frames), "-n", "1", "-d", f"detail_{frame}"], folder)
        energy.append(np.loadtxt(folder / f"detail_{frame}.e.out", ndmin=2)[0, 1])
        forces.append(np.loadtxt(folder / f"detail_{frame}.f.out", ndmin=2)[:, 3:])
    shutil.copyfile(folder / "model.pb", OUT / f"{name}.pb")
    return {"energy": np.array(energy), "forces": np.stack(forces)}


def main() -> None:
    args = parse_arguments(__doc__, list(MODELS) + list(TENSOR_MODELS) + ["tf_se_a_mask"],
                           "the deepmd_water folder (data_0, data_3)")
    import deepmd
    import tensorflow

    command = shlex.split(args.dp)
    reference_file = OUT / "deepmd_tf_reference.npz"
    numbers = dict(np.load(reference_file)) if reference_file.exists() else {}
    data = args.data.resolve()
    frames = frame_subset(data / "data_3", args.work.resolve() / "frames")
    for name in args.only:
        if name == "tf_se_a_mask":
            made = make_masked(name, command, data.parent / "deepmd_nopbc" / "C1H4O2", args.work.resolve())
        elif name in TENSOR_MODELS:
            made = make_tensor(name, command, data.parent / "deepmd_water_tensor", args.work.resolve())
        else:
            made = make(name, MODELS[name], command, data / "data_0", frames, args.work.resolve())
        for key, value in made.items():
            numbers[f"{name}/{key}"] = value
        print(name, "done", flush=True)
        np.savez_compressed(reference_file, **numbers)
    info = {"deepmd_kit": deepmd.__version__, "tensorflow": tensorflow.__version__, "data": "data_0",
            "test_data": "data_3", "frames": list(FRAMES), "steps": STEPS,
            "models": {name: training_input(MODELS[name], Path("DATA"))["model"] for name in MODELS},
            "tensor_models": {name: {"model": {"type_map": ["O", "H"], **model}, "data": f"deepmd_water_tensor/{kind}",
                                     "loss": TENSOR_LOSS} for name, (model, kind, _) in TENSOR_MODELS.items()},
            "tf_se_a_mask": {"model": MASK_MODEL, "data": "deepmd_nopbc/C1H4O2", "train_frames": MASK_TRAIN_FRAMES,
                             "aparam": 1.0}}
    (OUT / "deepmd_tf_reference.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
