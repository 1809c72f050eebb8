"""Hessians d²E/dR² (DeePMD-kit 3.x ``hessian`` output, ``start_pref_h``/``limit_pref_h`` loss, hessian.npy).

* the autograd Hessian (one batched backward pass, ``mlpot.models.hessian``) equals central finite
  differences of the forces to 1e-6 eV/Å² in float64 (se_e2_a, se_e2_r, se_atten_v2 with attention,
  dpa2; periodic and molecular frames of different sizes in one batch), is symmetric, and zero on
  the padding of the smaller frame; its graph gives the parameter gradient of a Hessian loss
  (finite differences in one parameter); compressed tables refuse the second derivative by name;
* the loss term is DeePMD-kit's: pref_h · mean over the (3N)² entries of (H - H*)² (``mae``: mean
  |H - H*|), pref_h = limit + (start - limit) · lr/start_lr, on when start or limit is non-zero;
* GFN2-xTB data (examples/hessian/make_dataset.py, tblite, written to tmp): training with the
  Hessian term lowers the Hessian RMSE against the same run without it; DeePMD-kit's example input
  form (dpa2, loss ener with h) trains, logs rmse_h, and ``mlpot test`` reports the Hessian lines
  and writes the ``.h.out`` detail file;
* as dp test, ``mlpot test`` computes Hessians only for a model trained with an h term (its recorded
  hessian_mode) or with ``--hessian``; with an h term val.log (full validation) has H_MAE/H_RMSE
  columns equal to mlpot test's numbers.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.calculators.export import read_model_file
from mlpot.config._deepmd_sections import loss_section
from mlpot.data import keys as K
from mlpot.errors import ConfigError, DataError
from mlpot.models import build_model
from mlpot.models.derivatives import compute_derivatives
from mlpot.testing import assert_hessian_matches_fd, random_batch
from mlpot.training.losses import WeightedLoss
from mlpot.training.schema import LossConfig

SMALL = {"rcut": 3.5, "rcut_smth": 0.5, "seed": 1}
DESCRIPTORS = {
    "se_e2_a": {"type": "se_e2_a", "sel": [12, 12], "neuron": [4, 8], "axis_neuron": 4, **SMALL},
    "se_e2_r": {"type": "se_e2_r", "sel": [12, 12], "neuron": [4, 8], **SMALL},
    "se_atten_v2": {"type": "se_atten_v2", "sel": 24, "neuron": [4, 8], "axis_neuron": 4, "attn_layer": 1, "attn": 8,
                    **SMALL},
    "dpa2": {"type": "dpa2", "repinit": {"rcut": 3.5, "rcut_smth": 0.5, "nsel": 24, "neuron": [4, 8], "axis_neuron": 4},
             "repformer": {"rcut": 3.0, "rcut_smth": 0.5, "nsel": 12, "nlayers": 1, "g1_dim": 8, "g2_dim": 4,
                           "attn2_hidden": 4, "attn1_hidden": 4, "axis_neuron": 4}},
}


def _model(descriptor, batch):
    model = build_model({"type_map": ["O", "H"], "descriptor": descriptor, "fitting_net": {"neuron": [8, 8], "seed": 1}},
                        dtype=torch.float64)
    model.compute_statistics([batch])
    return model


@pytest.mark.parametrize("name", sorted(DESCRIPTORS))
@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "molecules"])
def test_hessian_matches_finite_differences(name, periodic):
    batch = random_batch(2, [4, 6], 2, cutoff=3.5, periodic=periodic, seed=3)
    model = _model(DESCRIPTORS[name], batch)
    assert_hessian_matches_fd(model, batch, atol=1e-6, rtol=1e-6)
    hessian = compute_derivatives(model, dict(batch), hessian=True)[K.HESSIAN].detach()
    assert hessian.shape == (2, 18 * 18)
    small = hessian[0, : 12 * 12].reshape(12, 12)
    large = hessian[1].reshape(18, 18)
    assert large.abs().max() > 1e-2 and small.abs().max() > 1e-2  # far above the 1e-6 tolerance
    torch.testing.assert_close(large, large.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(small, small.T, atol=1e-12, rtol=0)
    assert hessian[0, 12 * 12:].abs().max() == 0  # the smaller frame's padding
    # translation invariance: every row of each block sums to zero over the atoms, per axis
    torch.testing.assert_close(large.reshape(18, 6, 3).sum(1), torch.zeros(18, 3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_hessian_graph_gives_the_parameter_gradient():
    """d/dθ Σ (H - H*)² by the create_graph path equals central differences in θ (a fitting weight)."""
    batch = random_batch(2, [4, 5], 2, cutoff=3.5, periodic=False, seed=5)
    model = _model(DESCRIPTORS["se_e2_a"], batch)
    parameter = next(p for name, p in model.named_parameters() if "fitting" in name and p.ndim == 2)
    target = torch.randn(2, 15 * 15, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(create_graph):
        hessian = compute_derivatives(model, dict(batch), hessian=True, create_graph=create_graph)[K.HESSIAN]
        return (hessian - target).square().sum()

    (gradient,) = torch.autograd.grad(loss(True), parameter)
    delta, values = 1e-6, []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            parameter[0, 0] += sign * delta
        values.append(float(loss(False)))
        with torch.no_grad():
            parameter[0, 0] -= sign * delta
    assert abs(float(gradient[0, 0]) - (values[0] - values[1]) / (2 * delta)) < 1e-4 * max(1.0, abs(float(gradient[0, 0])))


def test_compressed_model_refuses_the_hessian():
    from mlpot.models.deepmd.compression import compress_model

    batch = random_batch(1, 6, 2, cutoff=3.5, seed=3)
    model = compress_model(_model(DESCRIPTORS["se_e2_a"], batch).eval(), 0.8)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        compute_derivatives(model, dict(batch), hessian=True)


def _loss(**loss):
    section = loss_section({"type": "ener", "start_pref_e": 0, "limit_pref_e": 0, "start_pref_f": 0,
                            "limit_pref_f": 0, **loss})
    config = LossConfig(**section)
    return WeightedLoss(config.terms, config.type, config.intensive_ener_virial)


def _labelled(seed=0):
    """Batch of two molecules (3 and 5 atoms) with random Hessian labels and predictions."""
    from mlpot.data import AtomsDataset, collate

    rng = np.random.default_rng(seed)
    frames = []
    for n_atoms in (3, 5):
        frames.append({K.POSITIONS: rng.uniform(0, 4, (n_atoms, 3)), K.ATOM_TYPES: np.zeros(n_atoms, np.int64),
                       K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool),
                       K.HESSIAN: rng.normal(size=(3 * n_atoms) ** 2), K.weight_key(K.HESSIAN): np.array(1.0)})
    batch = collate([AtomsDataset(frames, 3.0)[i] for i in range(2)])
    labels = [f[K.HESSIAN] for f in frames]
    predictions = [rng.normal(size=label.size) for label in labels]
    padded = np.zeros((2, 15 * 15))
    for row, prediction in enumerate(predictions):
        padded[row, : prediction.size] = prediction
    return batch, {K.HESSIAN: torch.from_numpy(padded)}, np.concatenate([p - y for p, y in zip(predictions, labels)])


def test_loss_term_is_deepmd_formula():
    batch, pred, diff = _labelled()
    assert batch[K.HESSIAN].shape == (2, 225)  # the 3-atom frame's 81 values padded with zeros
    lr_ratio = 0.3
    total, weighted, raw = _loss(start_pref_h=10.0, limit_pref_h=1.0)(pred, batch, lr_ratio=lr_ratio)
    pref = 1.0 + (10.0 - 1.0) * lr_ratio
    assert float(raw["hessian"]) == pytest.approx(np.mean(diff ** 2), rel=1e-12)  # 81 + 225 entries, padding out
    assert float(total) == pytest.approx(pref * np.mean(diff ** 2), rel=1e-12)
    _, _, raw = _loss(start_pref_h=10.0, limit_pref_h=1.0, loss_func="mae")(pred, batch, lr_ratio=lr_ratio)
    assert float(raw["hessian"]) == pytest.approx(np.mean(np.abs(diff)), rel=1e-12)
    # on when only one prefactor is non-zero (DeePMD-kit 3.x has_h), unlike the e/f/v terms
    assert "hessian" in _loss(start_pref_h=0.0, limit_pref_h=1.0).terms
    assert "hessian" not in _loss().terms
    # a batch without Hessian labels: the term is absent from it (find_hessian = 0)
    no_label = {k: v for k, v in batch.items() if k not in (K.HESSIAN, K.weight_key(K.HESSIAN))}
    _, weighted, _ = _loss(start_pref_h=1.0, limit_pref_h=1.0)({**pred, K.ENERGY: torch.zeros(2)}, no_label)
    assert "hessian" not in weighted


def test_huber_with_hessian_is_refused():
    with pytest.raises(ConfigError, match="h terms"):
        _loss(start_pref_e=1.0, limit_pref_e=1.0, start_pref_h=1.0, limit_pref_h=1.0, use_huber=True)


def test_hessian_file_of_wrong_width_names_file(tmp_path):
    from mlpot.data import read_frames

    system = tmp_path / "water"
    (system / "set.000").mkdir(parents=True)
    (system / "type.raw").write_text("0\n1\n1\n")
    (system / "nopbc").touch()
    np.save(system / "set.000" / "coord.npy", np.random.default_rng(0).uniform(0, 3, (2, 9)))
    np.save(system / "set.000" / "hessian.npy", np.zeros((2, 80)))
    with pytest.raises(DataError, match=r"hessian.*expected \(3 x 3 atoms\)\^2 = 81"):
        read_frames(str(system), type_map=["O", "H"])


# ---- GFN2-xTB data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xtb_data(tmp_path_factory):
    pytest.importorskip("tblite")
    # by file path: examples/charge_transfer has a make_dataset module too (sys.modules would mix them)
    spec = importlib.util.spec_from_file_location(
        "hessian_make_dataset", Path(__file__).resolve().parents[1] / "examples" / "hessian" / "make_dataset.py")
    make_dataset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_dataset)

    out = tmp_path_factory.mktemp("hessian_data")
    report = make_dataset.write_dataset(out, ("H2O",), n_frames=6, seed=0)
    make_dataset.write_dataset(out / "val", ("H2O",), n_frames=2, seed=1)
    assert report["H2O"]["step h/2 change"] < 1e-3 and report["H2O"]["asymmetry"] < 1e-3  # eV/Å², FD accuracy
    return out


def _input(tmp_path, data, descriptor, pref_h, steps, lr=(0.005, 1e-4)):
    config = {"model": {"type_map": ["H", "C", "N", "O"], "descriptor": descriptor,
                        "fitting_net": {"neuron": [16, 16], "resnet_dt": True, "seed": 1}},
              "learning_rate": {"type": "exp", "decay_steps": 20, "start_lr": lr[0], "stop_lr": lr[1]},
              "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
                       "start_pref_v": 0, "limit_pref_v": 0, "start_pref_h": pref_h, "limit_pref_h": pref_h / 10},
              "training": {"training_data": {"systems": [str(data / "H2O")], "batch_size": 1},
                           "validation_data": {"systems": [str(data / "val" / "H2O")], "batch_size": 1},
                           "numb_steps": steps, "disp_freq": max(1, steps // 4), "save_freq": steps, "seed": 10}}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(config))
    return path


def _hessian_rmse(tmp_path, data, capsys, *options):
    from mlpot.cli import main

    assert main(["freeze"]) == 0
    capsys.readouterr()
    assert main(["test", "-m", "frozen_model.pt", "-s", str(data / "H2O"), "-d", "detail", *options]) == 0
    report = capsys.readouterr().out
    line = next(line for line in report.splitlines() if line.startswith("Hessian RMSE"))
    return float(line.split(":")[1].split()[0]), report


SE_A = {"type": "se_e2_a", "sel": [8, 4, 2, 2], "rcut": 4.0, "rcut_smth": 0.5, "neuron": [8, 16], "axis_neuron": 4,
        "seed": 1}


def test_training_with_hessian_term_lowers_hessian_error(xtb_data, tmp_path, capsys, monkeypatch):
    from mlpot.cli import main

    errors = {}
    for pref_h in (0.0, 100.0):
        run = tmp_path / f"h{pref_h:g}"
        run.mkdir()
        monkeypatch.chdir(run)
        assert main(["train", str(_input(run, xtb_data, SE_A, pref_h, 30, lr=(0.01, 1e-3)))]) == 0
        errors[pref_h], _ = _hessian_rmse(run, xtb_data, capsys, "--hessian")  # pref 0: no hessian_mode
    print("Hessian RMSE (eV/Å²) without / with the h term:", errors)
    assert errors[100.0] < 0.5 * errors[0.0]  # measured 14.4 -> 4.0 eV/Å²


def test_deepmd_hessian_example_form_trains_and_tests(xtb_data, tmp_path, capsys, monkeypatch):
    """The layout of DeePMD-kit's examples/hessian/single_task input (dpa2 with three-body repinit and
    repformer, resnet_dt fitting, loss ener with h), shrunk to a few steps."""
    from mlpot.cli import main

    monkeypatch.chdir(tmp_path)
    dpa2 = {"type": "dpa2",
            "repinit": {"tebd_dim": 8, "rcut": 4.0, "rcut_smth": 0.5, "nsel": 12, "neuron": [4, 8], "axis_neuron": 4,
                        "activation_function": "tanh", "three_body_sel": 8, "three_body_rcut": 3.0,
                        "three_body_rcut_smth": 2.5, "use_three_body": True},
            "repformer": {"rcut": 3.0, "rcut_smth": 2.5, "nsel": 8, "nlayers": 1, "g1_dim": 8, "g2_dim": 4,
                          "attn2_hidden": 4, "attn2_nhead": 1, "attn1_hidden": 4, "attn1_nhead": 1, "axis_neuron": 4,
                          "update_h2": False, "update_g1_has_conv": True, "update_g1_has_grrg": True,
                          "update_g1_has_drrd": True, "update_g1_has_attn": False, "update_g2_has_g1g1": False,
                          "update_g2_has_attn": False, "update_style": "res_residual", "update_residual": 0.01,
                          "update_residual_init": "norm", "attn2_has_gate": True, "use_sqrt_nnei": True,
                          "g1_out_conv": True, "g1_out_mlp": True},
            "precision": "float64", "add_tebd_to_repinit_out": False}
    assert main(["train", str(_input(tmp_path, xtb_data, dpa2, 10.0, 2, lr=(1e-3, 3.51e-8)))]) == 0
    assert read_model_file(tmp_path / "model.ckpt.pt")["training_record"]["hessian_mode"] is True
    lcurve = (tmp_path / "lcurve.out").read_text().splitlines()
    columns = lcurve[0].lstrip("#").split()
    assert "rmse_h_val" in columns and "rmse_h_trn" in columns
    values = np.loadtxt(tmp_path / "lcurve.out", ndmin=2)
    assert np.isfinite(values[:, columns.index("rmse_h_trn")]).all() and (values[:, columns.index("rmse_h_trn")] > 0).all()
    rmse, report = _hessian_rmse(tmp_path, xtb_data, capsys)  # no --hessian: the model's hessian_mode
    assert "Hessian MAE        :" in report and rmse > 0
    detail = np.loadtxt(tmp_path / "detail.h.out")
    assert detail.shape == (6 * 81, 2)  # (3N)² rows per frame: data_h pred_h
    assert "data_h pred_h" in (tmp_path / "detail.h.out").read_text().splitlines()[0]
    # the detail rows are the label file's entries in row-major order and their RMSE is the reported one
    labels = np.load(xtb_data / "H2O" / "set.000" / "hessian.npy").reshape(-1)
    np.testing.assert_allclose(detail[:, 0], labels, rtol=1e-12)
    assert np.sqrt(np.mean((detail[:, 1] - detail[:, 0]) ** 2)) == pytest.approx(rmse, rel=1e-5)


def test_mlpot_test_computes_hessians_for_hessian_mode_models_only():
    """As dp test: Hessians only for a model trained with an h term (its hessian_mode), or with
    ``hessian=True`` (mlpot test --hessian); never on frames without hessian.npy."""
    from mlpot.calculators.evaluate import evaluate_frames, system_errors

    batch, _, _ = _labelled()
    rng = np.random.default_rng(1)
    frames = [{K.POSITIONS: rng.uniform(0, 3, (n, 3)), K.ATOM_TYPES: np.array([0] + [1] * (n - 1)),
               K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool), K.HESSIAN: rng.normal(size=(3 * n) ** 2),
               K.weight_key(K.HESSIAN): np.array(1.0)} for n in (3, 4)]
    model = _model(DESCRIPTORS["se_e2_a"], batch)
    assert model.hessian_mode is False
    scores = {}
    for mode, hessian in (("plain", None), ("forced", True), ("recorded", None), ("refused", False)):
        model.hessian_mode = mode == "recorded"
        scores[mode] = system_errors(evaluate_frames(model, frames, mode, hessian=hessian))
    assert "hessian_rmse" not in scores["plain"] and "hessian_rmse" not in scores["refused"]
    assert scores["forced"]["hessian_rmse"] == scores["recorded"]["hessian_rmse"]
    rows = [compute_derivatives(model.eval(), dict(collate_one(frame, model)), hessian=True)[K.HESSIAN].detach().numpy()
            .ravel() - frame[K.HESSIAN] for frame in frames]
    expected = np.sqrt(np.mean(np.concatenate(rows) ** 2))
    assert scores["recorded"]["hessian_rmse"][0] == pytest.approx(expected, rel=1e-12)


def collate_one(frame, model):
    from mlpot.data import AtomsDataset, collate

    return collate([AtomsDataset([frame], model.cutoff, type_map=model.type_map)[0]])


def test_hessian_mode_is_recorded_and_full_validation_logs_h(xtb_data, tmp_path, capsys, monkeypatch):
    """An h term sets the model's hessian_mode (checkpoint and frozen file); val.log gets H columns
    (meV/Å²) equal to mlpot test's Hessian errors of the same weights on the validation system."""
    from mlpot.cli import main

    monkeypatch.chdir(tmp_path)
    config = json.loads(_input(tmp_path, xtb_data, SE_A, 100.0, 2).read_text())
    config["validating"] = {"full_validation": True, "validation_freq": 2, "full_val_start": 0}
    (tmp_path / "input.json").write_text(json.dumps(config))
    assert main(["train", "input.json", "--no-progress"]) == 0
    assert read_model_file("model.ckpt-2.pt")["training_record"] == {"hessian_mode": True,
                                                                      "min_nbor_dist": pytest.approx(0.9, abs=0.2)}
    lines = (tmp_path / "val.log").read_text().splitlines()
    assert lines[0].split()[-2:] == ["H_MAE(meV/Å²)", "H_RMSE(meV/Å²)"]
    row = [line for line in lines if not line.startswith("#")][-1]
    assert row.split()[0] == "2"
    logged = [float(value) for value in row.split()[-2:]]
    capsys.readouterr()
    assert main(["test", "-m", "model.ckpt-2.pt", "-s", str(xtb_data / "val" / "H2O")]) == 0
    report = capsys.readouterr().out
    tested = [float(line.split(":")[1].split()[0]) * 1000 for line in report.splitlines()
              if line.startswith(("Hessian MAE", "Hessian RMSE"))][:2]
    assert logged == pytest.approx(tested, rel=2e-4) and tested[1] > 0  # 5 significant digits in the log
    assert main(["test", "-m", "model.ckpt-2.pt", "-s", str(xtb_data / "val" / "H2O"), "--no-hessian"]) == 0
    assert "Hessian" not in capsys.readouterr().out


# ---- DeePMD-kit's own loss on the same predictions (peer venv; skipped where it is absent) --------

DEEPMD_PYTHON = Path("/work/peers/deepmd/bin/python")
PEER_LOSS = """
import json, sys, types
stub = types.ModuleType("deepmd.pt.cxx_op"); stub.ENABLE_CUSTOMIZED_OP = False; sys.modules["deepmd.pt.cxx_op"] = stub
import numpy as np, torch
from deepmd.pt.loss.ener import EnergyStdLoss
d = json.loads(sys.stdin.read())
t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float64)
nf, n = d["nf"], d["natoms"]
pred = {"energy": t(d["pred_e"]).reshape(nf, 1), "force": t(d["pred_f"]).reshape(nf, n, 3),
        "hessian": t(d["pred_h"]).reshape(nf, 3 * n, 3 * n)}
label = {"energy": t(d["label_e"]).reshape(nf, 1), "force": t(d["label_f"]).reshape(nf, n, 3),
         "hessian": t(d["label_h"]).reshape(nf, -1), "find_energy": 1.0, "find_force": 1.0, "find_hessian": 1.0}
out = {}
for func in ("mse", "mae"):
    loss = EnergyStdLoss(starter_learning_rate=1e-3, loss_func=func, **d["prefs"])
    _, value, more = loss({"atype": torch.zeros(nf, n, dtype=torch.long)}, lambda **kw: dict(pred), label, n, d["lr"])
    out[func] = {"loss": float(value), "rmse_h": float(more["rmse_h"])}
print(json.dumps(out))
"""


@pytest.mark.slow  # ~15 s, most of it importing DeePMD-kit
@pytest.mark.skipif(not DEEPMD_PYTHON.exists(), reason="DeePMD-kit peer venv not installed")
def test_loss_equals_deepmd_kit_on_given_predictions():
    """DeePMD-kit 3.2's EnergyStdLoss (PT) and mlpot's translated loss on the same energies, forces and
    Hessians of two 3-atom frames (lr = 0.3 start_lr): total loss (mse and mae) and rmse_h agree."""
    import subprocess

    from mlpot.data import AtomsDataset, collate
    from mlpot.training.metrics import label_error_sums, rmse_mae

    rng = np.random.default_rng(0)
    n_frames, n_atoms = 2, 3
    data = {"pred_e": rng.normal(size=n_frames), "label_e": rng.normal(size=n_frames),
            "pred_f": rng.normal(size=(n_frames, n_atoms, 3)), "label_f": rng.normal(size=(n_frames, n_atoms, 3)),
            "pred_h": rng.normal(size=(n_frames, 81)), "label_h": rng.normal(size=(n_frames, 81))}
    prefs = {"start_pref_e": 0.02, "limit_pref_e": 1.0, "start_pref_f": 1000.0, "limit_pref_f": 1.0,
             "start_pref_h": 10.0, "limit_pref_h": 1.0}
    request = {key: value.tolist() for key, value in data.items()} | {"nf": n_frames, "natoms": n_atoms, "lr": 3e-4,
                                                                       "prefs": prefs}
    run = subprocess.run([str(DEEPMD_PYTHON), "-c", PEER_LOSS], input=json.dumps(request), capture_output=True,
                         text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    peer = json.loads(run.stdout.strip().splitlines()[-1])
    frames = [{K.POSITIONS: rng.uniform(0, 3, (n_atoms, 3)), K.ATOM_TYPES: np.zeros(n_atoms, np.int64),
               K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool), K.ENERGY: data["label_e"][f],
               K.FORCES: data["label_f"][f], K.HESSIAN: data["label_h"][f]} | {
        K.weight_key(key): np.array(1.0) for key in (K.ENERGY, K.FORCES, K.HESSIAN)} for f in range(n_frames)]
    batch = collate([AtomsDataset(frames, 3.0)[f] for f in range(n_frames)])
    pred = {K.ENERGY: torch.from_numpy(data["pred_e"]), K.FORCES: torch.from_numpy(data["pred_f"].reshape(-1, 3)),
            K.HESSIAN: torch.from_numpy(data["pred_h"])}
    for function in ("mse", "mae"):
        section = loss_section({"type": "ener", "loss_func": function, **prefs})
        config = LossConfig(**section)
        total, _, _ = WeightedLoss(config.terms, config.type, config.intensive_ener_virial)(pred, batch, lr_ratio=0.3)
        assert float(total) == pytest.approx(peer[function]["loss"], rel=1e-10)
    rmse_h = rmse_mae(label_error_sums(pred, batch, [K.HESSIAN])[K.HESSIAN])[0]
    assert rmse_h == pytest.approx(peer["mse"]["rmse_h"], rel=1e-10)


@pytest.mark.slow  # ~40 s: DeePMD-kit trains 2 steps, then both codes test the checkpoint
@pytest.mark.skipif(not DEEPMD_PYTHON.exists(), reason="DeePMD-kit peer venv not installed")
def test_hessian_of_deepmd_kit_checkpoint_equals_dp_test(xtb_data, tmp_path, capsys, monkeypatch):
    """DeePMD-kit 3.2 trains se_e2_a with an h term on the GFN2-xTB water (its checkpoint carries
    model.hessian_mode); ``dp test -d`` and ``mlpot test -d`` on that checkpoint write the same
    ``.h.out`` (measured: 5e-15 eV/Å² for entries up to 7 eV/Å²)."""
    import subprocess

    from mlpot.cli import main

    monkeypatch.chdir(tmp_path)
    config = json.loads(_input(tmp_path, xtb_data, SE_A, 100.0, 2).read_text())
    config["training"].pop("validation_data")
    (tmp_path / "input.json").write_text(json.dumps(config))
    dp = [str(DEEPMD_PYTHON), "/work/peers/dp_pure_torch.py", "--pt"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for command in (["train", "input.json"], ["test", "-m", "model.ckpt-2.pt", "-s", str(xtb_data / "H2O"), "-d", "dp"]):
        run = subprocess.run(dp + command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
    assert main(["test", "-m", "model.ckpt-2.pt", "-s", str(xtb_data / "H2O"), "-d", "mlpot"]) == 0
    theirs, ours = np.loadtxt(tmp_path / "dp.h.out"), np.loadtxt(tmp_path / "mlpot.h.out")
    assert ours.shape == theirs.shape == (6 * 81, 2)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    assert np.abs(ours[:, 1]).max() > 0.1
