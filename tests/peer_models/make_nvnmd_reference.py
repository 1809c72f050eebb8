"""Write DeePMD-kit's own NVNMD numbers that tests/test_deepmd_nvnmd.py compares with.

Run with the Python of a DeePMD-kit 3.2 install that has its TensorFlow backend (NVNMD is TF only;
tensorflow-cpu 2.21.0, the version its TF ops are built against), not mlpot's:

    export OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 TF_INTRA_OP_PARALLELISM_THREADS=1 \\
        TF_INTER_OP_PARALLELISM_THREADS=1
    /work/peers/deepmd-tf/bin/python tests/peer_models/make_nvnmd_reference.py \\
        --dp /work/peers/deepmd-tf/bin/dp --data /work/shared/data/deepmd_water/data_3 --work /tmp/nvnmd_reference

In ``--work`` it copies frames 0 and 1 of ``--data`` to ``sys/``, runs ``dp --tf train-nvnmd
train_cnn.json -s s1`` (one step: it gives the statistics, bias, min_nbor_dist and config.npy),
replaces the nets in ``nvnmd_cnn/weight.npy`` by ``nvnmd_weights.formula_weights`` and rebuilds
``nvnmd_cnn/map.npy`` with DeePMD-kit's mapt for them, then takes DeePMD-kit's numbers of
that model:

* CNN: ``dp --tf train`` of the continuous model restored from that weight.npy (nvnmd enable,
  restore_descriptor, restore_fitting_net; learning rate 1e-30 so that one step changes nothing),
  ``dp --tf freeze -w``, ``dp --tf test -n 2``;
* QNN: ``dp --tf train-nvnmd train_qnn.json -s s2`` (the same learning rate), ``dp --tf test -n 2``
  of ``nvnmd_qnn/frozen_model.pb``.

It writes ``deepmd/nvnmd_reference.npz`` beside this script: ``davg``, ``dstd`` (2, 4),
``bias`` (2,) eV, ``min_nbor_dist`` Å and ``<cnn|qnn>/energy`` (2,) eV, ``<cnn|qnn>/forces``
(2, 192, 3) eV/Å as dp test printed them. Nothing here copies DeePMD-kit code: it runs dp and calls
its mapt entry point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nvnmd_weights import formula_weights  # noqa: E402

HERE = Path(__file__).resolve().parent
MAPT = ("from deepmd.tf.nvnmd.entrypoints.mapt import mapt; mapt(nvnmd_config='nvnmd_cnn/config.npy', "
        "nvnmd_weight='nvnmd_cnn/weight.npy', nvnmd_map='nvnmd_cnn/map.npy')")
NVNMD = {"version": 0, "max_nnei": 128, "net_size": 128, "sel": [46, 92], "rcut": 6.0, "rcut_smth": 0.5,
         "type_map": ["O", "H"]}


def _input(lr: float) -> dict:
    return {"nvnmd": dict(NVNMD),
            "learning_rate": {"type": "exp", "start_lr": lr, "stop_lr": lr, "decay_steps": 5000},
            "loss": {"start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1},
            "training": {"seed": 1, "stop_batch": 1, "disp_file": "lcurve.out", "disp_freq": 1, "save_freq": 1,
                         "save_ckpt": "model.ckpt", "training_data": {"systems": ["sys"], "batch_size": 1}}}


def _run(command, cwd: Path) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def _dp_test(dp, model: str, work: Path, name: str):
    _run(dp + ["test", "-m", model, "-s", "sys", "-n", "2", "-d", name], work)
    energy = np.loadtxt(work / f"{name}.e.out", ndmin=2)[:, 1]
    forces = np.loadtxt(work / f"{name}.f.out", ndmin=2)[:, 3:].reshape(2, -1, 3)
    return energy, forces


def prepare_work():
    """(work folder, dp command) from the command line (--dp, --data, --work); a fresh work folder
    holding frames 0 and 1 of the system --data in ``sys/``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dp", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    work, data = args.work, args.data
    shutil.rmtree(work, ignore_errors=True)
    (work / "sys/set.000").mkdir(parents=True)
    for name in ("type.raw", "type_map.raw"):
        shutil.copy(data / name, work / "sys" / name)
    for name in ("coord", "box", "energy", "force"):
        np.save(work / f"sys/set.000/{name}.npy", np.load(data / f"set.000/{name}.npy")[:2])
    return work, [args.dp, "--tf"]


def restored_cnn(dp, work: Path) -> None:
    """``cnn_ref/frozen_model.pb``: the continuous model of ``nvnmd_cnn/weight.npy`` (dp train with
    restore_descriptor and restore_fitting_net at learning rate 1e-30, then dp freeze)."""
    cnn = json.loads((work / "nvnmd_cnn/train.json").read_text())
    cnn["nvnmd"].update(enable=True, restore_descriptor=True, restore_fitting_net=True, quantize_descriptor=False,
                        quantize_fitting_net=False, weight_file="nvnmd_cnn/weight.npy", map_file="none",
                        config_file="nvnmd_cnn/config.npy")
    cnn["learning_rate"].update(start_lr=1e-30, stop_lr=1e-30)
    cnn["training"].update(disp_file="cnn_ref/lcurve.out", save_ckpt="cnn_ref/model.ckpt")
    (work / "cnn_ref.json").write_text(json.dumps(cnn, indent=1))
    (work / "cnn_ref").mkdir()
    _run(dp + ["train", "cnn_ref.json"], work)
    _run(dp + ["freeze", "-c", "cnn_ref", "-o", "cnn_ref/frozen_model.pb", "-w", "cnn_ref/weight.npy"], work)


def main() -> None:
    work, dp = prepare_work()
    (work / "train_cnn.json").write_text(json.dumps(_input(1e-3), indent=1))
    _run(dp + ["train-nvnmd", "train_cnn.json", "-s", "s1"], work)
    weight_file = work / "nvnmd_cnn/weight.npy"
    weights = np.load(weight_file, allow_pickle=True)[0]
    nets = {k: np.shape(v) for k, v in weights.items() if k.startswith(("filter_type_all", "layer_", "final_layer"))}
    weights.update(formula_weights(nets))
    holder = np.empty(1, dtype=object)
    holder[0] = weights
    np.save(weight_file, holder, allow_pickle=True)
    _run([sys.executable, "-c", MAPT], work)
    restored_cnn(dp, work)
    (work / "train_qnn.json").write_text(json.dumps(_input(1e-30), indent=1))
    _run(dp + ["train-nvnmd", "train_qnn.json", "-s", "s2"], work)
    out = {"davg": weights["descrpt_attr.t_avg"].reshape(2, -1, 4)[:, 0], "bias": weights["t_bias_atom_e"],
           "dstd": weights["descrpt_attr.t_std"].reshape(2, -1, 4)[:, 0],
           "min_nbor_dist": np.float64(weights["train_attr.min_nbor_dist"])}
    for stage, model in (("cnn", "cnn_ref/frozen_model.pb"), ("qnn", "nvnmd_qnn/frozen_model.pb")):
        out[f"{stage}/energy"], out[f"{stage}/forces"] = _dp_test(dp, model, work, stage)
    np.savez(HERE / "deepmd" / "nvnmd_reference.npz", **out)
    print("wrote", HERE / "deepmd" / "nvnmd_reference.npz")


if __name__ == "__main__":
    main()
