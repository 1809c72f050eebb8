"""Write DeePMD-kit's own numbers of an NVNMD version-1 model (se_atten, continuous stage) that
tests/test_deepmd_nvnmd.py compares with.

Run with the Python of a DeePMD-kit 3.2 install that has its TensorFlow backend (NVNMD is TF only;
tensorflow-cpu 2.21.0), not mlpot's:

    export OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 TF_INTRA_OP_PARALLELISM_THREADS=1 \\
        TF_INTER_OP_PARALLELISM_THREADS=1
    /work/peers/deepmd-tf/bin/python tests/peer_models/make_nvnmd_v1_reference.py \\
        --dp /work/peers/deepmd-tf/bin/dp --data /work/shared/data/deepmd_water/data_3 --work /tmp/nvnmd_v1_reference

As ``make_nvnmd_reference.py`` (version 0) does: in ``--work`` it copies frames 0 and 1 of
``--data`` to ``sys/``, runs ``dp --tf train-nvnmd train_cnn.json -s s1`` with ``version: 1``,
``sel: 128`` (one step: statistics, bias, min_nbor_dist, config.npy; DeePMD-kit 3.2 then fails
in building map.npy, see below, which this script tolerates), replaces every net of
``nvnmd_cnn/weight.npy`` (type embedding, both embedding nets, the fitting net with its
``layer_0.tweight``) by ``nvnmd_weights.formula_weights`` (DeePMD-kit's ``layer_0.matrix_1`` is
stored as ``layer_0.matrix``, which it reads too), then ``dp --tf train`` of the continuous model
restored from that weight.npy (restore_descriptor, restore_fitting_net; learning rate 1e-30),
``dp --tf freeze -w`` and ``dp --tf test -n 2``.

It writes ``deepmd/nvnmd_v1_reference.npz`` beside this script: ``davg``, ``dstd`` (2, 4),
``bias`` (2,) eV, ``min_nbor_dist`` Å, ``cnn/energy`` (2,) eV and ``cnn/forces`` (2, 192, 3) eV/Å
as dp test printed them. Nothing here copies DeePMD-kit code: it runs dp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_nvnmd_reference import MAPT, _dp_test, _input, _run, prepare_work, restored_cnn  # noqa: E402
from nvnmd_weights import formula_weights  # noqa: E402

HERE = Path(__file__).resolve().parent
NVNMD_V1 = {"version": 1, "max_nnei": 128, "net_size": 128, "sel": 128, "rcut": 6.0, "rcut_smth": 0.5,
            "type_map": ["O", "H"]}
NETS = ("type_embed_net", "filter_type_all", "layer_", "final_layer")


def main() -> None:
    work, dp = prepare_work()
    cnn_input = _input(1e-3)
    cnn_input["nvnmd"] = dict(NVNMD_V1)
    (work / "train_cnn.json").write_text(json.dumps(cnn_input, indent=1))
    # DeePMD-kit 3.2 fails at the end of this stage, in its mapt (map.npy): its type embedding has no
    # bias and mapt stops reading a net at a missing bias, so the type-pair net gets the one-hot
    # types (a shape error); weight.npy and config.npy are written before that
    print("+", " ".join(dp + ["train-nvnmd", "train_cnn.json", "-s", "s1"]), "(mapt may fail)", flush=True)
    subprocess.run(dp + ["train-nvnmd", "train_cnn.json", "-s", "s1"], cwd=work, check=False)
    weight_file = work / "nvnmd_cnn/weight.npy"
    weights = np.load(weight_file, allow_pickle=True)[0]
    if "layer_0.matrix_1" in weights:
        weights["layer_0.matrix"] = weights.pop("layer_0.matrix_1")
    nets = {k: np.shape(v) for k, v in weights.items() if k.startswith(NETS)}
    weights.update(formula_weights(nets))
    # DeePMD-kit 3.2's mapt reads a net up to its first missing bias: a zero bias of the type
    # embedding (which its bias-free net never reads) lets it build the version-1 tables
    weights["type_embed_net.bias_1"] = np.zeros(weights["type_embed_net.matrix_1"].shape[1])
    holder = np.empty(1, dtype=object)
    holder[0] = weights
    np.save(weight_file, holder, allow_pickle=True)
    _run([sys.executable, "-c", MAPT], work)
    restored_cnn(dp, work)
    qnn_input = _input(1e-30)
    qnn_input["nvnmd"] = dict(NVNMD_V1)
    (work / "train_qnn.json").write_text(json.dumps(qnn_input, indent=1))
    # the stage ends with dp's wrap (model.pb), after frozen_model.pb: its failure does not matter here
    subprocess.run(dp + ["train-nvnmd", "train_qnn.json", "-s", "s2"], cwd=work, check=False)
    out = {"davg": weights["descrpt_attr.t_avg"].reshape(2, -1, 4)[:, 0], "bias": weights["t_bias_atom_e"],
           "dstd": weights["descrpt_attr.t_std"].reshape(2, -1, 4)[:, 0],
           "min_nbor_dist": np.float64(weights["train_attr.min_nbor_dist"])}
    for stage, model in (("cnn", "cnn_ref/frozen_model.pb"), ("qnn", "nvnmd_qnn/frozen_model.pb")):
        out[f"{stage}/energy"], out[f"{stage}/forces"] = _dp_test(dp, model, work, stage)
    frozen = np.load(work / "cnn_ref/weight.npy", allow_pickle=True)[0]  # the weights the frozen model holds
    out["weights_kept"] = np.float64(max(np.abs(np.asarray(frozen[k if k in frozen else f"{k}_1"]) - v).max()
                                         for k, v in formula_weights(nets).items()))
    np.savez(HERE / "deepmd" / "nvnmd_v1_reference.npz", **out)
    print("wrote", HERE / "deepmd" / "nvnmd_v1_reference.npz", "weights kept to", out["weights_kept"])


if __name__ == "__main__":
    main()
