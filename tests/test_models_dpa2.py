"""DPA-2 descriptor: physics (forces, virial, invariances, batching, precisions, smoothness), its key
handling (nested and older flat keys, errors), and DeePMD-kit's DPA-2 input form through
``mlpot train`` / ``freeze`` / ``test``. Agreement with DeePMD-kit itself: test_deepmd_files_dpa2.py."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

from mlpot import testing as T
from mlpot.cli import main
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.derivatives import compute_derivatives

REPINIT = {"tebd_dim": 4, "rcut": 3.5, "rcut_smth": 0.5, "nsel": 24, "neuron": [4, 8], "axis_neuron": 4,
           "use_three_body": True, "three_body_sel": 16, "three_body_rcut": 3.0, "three_body_rcut_smth": 2.5,
           "three_body_neuron": [2, 4]}
REPFORMER = {"rcut": 3.0, "rcut_smth": 2.0, "nsel": 16, "nlayers": 2, "g1_dim": 8, "g2_dim": 4, "axis_neuron": 2,
             "attn1_hidden": 4, "attn1_nhead": 2, "attn2_hidden": 4, "attn2_nhead": 2, "update_h2": True,
             "attn2_has_gate": True, "update_style": "res_residual", "update_residual": 0.3}
# every repformer update on, three-body concat repinit, smooth (DeePMD-kit's defaults otherwise)
SMOOTH = {"type": "dpa2", "seed": 1, "repinit": REPINIT, "repformer": REPFORMER}
# strip repinit, not smooth, res_avg, direct_dist, one-sided, an excluded pair, tebd added to repinit
ROUGH = {"type": "dpa2", "seed": 2, "smooth": False, "exclude_types": [[0, 1]], "add_tebd_to_repinit_out": True,
         "repinit": dict(REPINIT, tebd_input_mode="strip", type_one_side=True, use_three_body=False),
         "repformer": dict(REPFORMER, update_style="res_avg", direct_dist=True, g1_out_conv=False, g1_out_mlp=False,
                           use_sqrt_nnei=False)}
FITTING = {"neuron": [8], "seed": 3}


def dpa2_model(descriptor, dtype=torch.float64, batch=None):
    precision = "float64" if dtype == torch.float64 else "float32"
    model = build_model({"type_map": ["A", "B"], "descriptor": dict(descriptor, precision=precision),
                         "fitting_net": dict(FITTING, precision=precision)})
    model.compute_statistics([batch if batch is not None else T.random_batch(2, 8, seed=5)])
    return model


def tol(dtype):
    return dict(atol=1e-8, rtol=1e-7) if dtype == torch.float64 else dict(atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("descriptor", [SMOOTH, ROUGH], ids=["smooth", "rough"])
def test_physics(dtype, descriptor):
    batch = T.random_batch(2, [8, 7], seed=1)
    model = dpa2_model(descriptor, dtype)
    if dtype == torch.float64:  # the tiny random nets are steep: central differences converge as delta^2
        T.assert_forces_match_fd(model, batch, delta=1e-5)
        T.assert_virial_matches_finite_strain(model, batch, delta=1e-6)
    T.assert_invariant(model, batch, **tol(dtype))
    T.assert_batch_consistent(model, batch, **tol(dtype))


def test_float32_model_follows_the_float64_one():
    batch = T.random_batch(2, [8, 7], seed=1)
    model64 = dpa2_model(SMOOTH, torch.float64)
    model32 = dpa2_model(SMOOTH, torch.float32)
    model32.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                             for k, v in model64.state_dict().items()})
    assert model32.descriptor.repformers.layers[0].linear1.weight.dtype == torch.float32
    e64, e32 = model64(batch)[K.ENERGY], model32(batch)[K.ENERGY]
    torch.testing.assert_close(e32.to(torch.float64), e64, atol=1e-4, rtol=1e-5)


def _chain_energies(model, x_c):
    """Atomic energies of A (type 0) at the origin, B (type 1) at x = 2 Å, C (type 1) at x = x_c (Å)."""
    from mlpot.data import AtomsDataset, collate

    positions = np.array([[0.0, 0.0, 0.0], [2.0, 0.3, 0.0], [x_c, 0.5, 0.4]])
    frame = {K.POSITIONS: positions, K.CELL: np.zeros((3, 3)), K.PBC: np.array([False] * 3),
             K.ATOM_TYPES: np.array([0, 1, 1])}
    batch = collate([AtomsDataset([frame], 3.5, type_map=["A", "B"])[0]], dtype=torch.float64)
    return model(batch)[K.ATOM_ENERGY].detach()


def test_message_passing_reaches_beyond_the_cutoff_and_is_smooth_at_the_repformer_cutoff():
    """A chain A-B-C with C beyond A's largest cutoff (3.5 Å): moving C changes A's energy only through
    B (the repformer layers pass messages). C crossing B's repformer cutoff (3.0 Å) leaves the energy
    continuous with ``smooth`` and makes it jump without (neighbour counts normalise the averages)."""
    model = dpa2_model(SMOOTH)
    near, far = _chain_energies(model, 4.6), _chain_energies(model, 4.7)
    assert abs(float(near[0] - far[0])) > 1e-7
    x_cross = 2.0 + (3.0 ** 2 - 0.2 ** 2 - 0.4 ** 2) ** 0.5  # |BC| = 3.0 Å
    for descriptor, bound in ((SMOOTH, lambda jump: jump < 1e-11), (ROUGH, lambda jump: jump > 1e-6)):
        model = dpa2_model(descriptor)
        jump = (_chain_energies(model, x_cross - 1e-9) - _chain_energies(model, x_cross + 1e-9)).abs().max()
        assert bound(float(jump)), (descriptor["seed"], float(jump))


@pytest.mark.parametrize("descriptor", [
    dict(SMOOTH, repformer=dict(REPFORMER, update_g1_has_attn=False, update_g2_has_attn=False, update_h2=False)),
    ROUGH], ids=["smooth_no_attention", "rough"])
def test_dropping_the_empty_trailing_slots_keeps_the_numbers(descriptor, monkeypatch):
    # repinit, three-body and repformer evaluate only the leading slots that some atom occupies;
    # with every slot kept (occupied_slots -> nsel) energies, forces and virials agree to rounding
    from mlpot.models.deepmd.descriptors import env, repformer, se_atten, three_body

    batch = T.random_batch(2, [8, 7], seed=1)
    model = dpa2_model(descriptor)
    calls = []

    def patch(keep_all):
        def occupied(mask):
            kept = mask.shape[1] if keep_all else env.occupied_slots(mask)
            calls.append((kept, mask.shape[1]))
            return kept
        for module in (repformer, se_atten, three_body):
            monkeypatch.setattr(module, "occupied_slots", occupied)

    patch(keep_all=False)
    dropped = compute_derivatives(model, batch, forces=True, virial=True)
    assert any(kept < width for kept, width in calls)  # the batch has trailing empty slots
    patch(keep_all=True)
    full = compute_derivatives(model, batch, forces=True, virial=True)
    for key in (K.ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(dropped[key], full[key], rtol=1e-12, atol=1e-12)


def test_isolated_atoms_have_finite_energies_and_zero_forces():
    model = dpa2_model(ROUGH)
    lonely = T.random_batch(1, 3, box=30.0, seed=1)
    assert lonely[K.EDGE_INDEX].shape[1] == 0
    out = compute_derivatives(model, lonely, virial=True)
    assert torch.isfinite(out[K.ENERGY]).all()
    torch.testing.assert_close(out[K.FORCES], torch.zeros_like(out[K.FORCES]))


def test_flat_keys_of_early_inputs_build_the_same_model():
    flat = {"type": "dpa2", "seed": 1, "tebd_dim": 4, "repinit_rcut": 3.5, "repinit_rcut_smth": 0.5,
            "repinit_nsel": 24, "repinit_neuron": [4, 8], "repinit_axis_neuron": 4, "repinit_activation": "tanh",
            "repformer_rcut": 3.0, "repformer_rcut_smth": 2.0, "repformer_nsel": 16, "repformer_nlayers": 2,
            "repformer_g1_dim": 8, "repformer_g2_dim": 4, "repformer_axis_dim": 2, "repformer_attn1_hidden": 4,
            "repformer_attn1_nhead": 2, "repformer_attn2_hidden": 4, "repformer_attn2_nhead": 2,
            "repformer_update_h2": True, "repformer_attn2_has_gate": True, "repformer_update_style": "res_residual",
            "repformer_update_residual": 0.3, "repformer_do_bn_mode": "no", "repformer_bn_momentum": 0.1,
            "repformer_add_type_ebd_to_seq": False}
    nested = dict(SMOOTH, repinit=dict(REPINIT, use_three_body=False))
    batch = T.random_batch(1, 8, seed=2)
    a, b = dpa2_model(flat, batch=batch), dpa2_model(nested, batch=batch)
    assert a.state_dict().keys() == b.state_dict().keys()
    torch.testing.assert_close(a(batch)[K.ENERGY], b(batch)[K.ENERGY], atol=0, rtol=0)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["repinit"].update(nsel="auto"), r"model/descriptor/repinit/nsel: not supported yet: 'auto'"),
    (lambda d: d["repformer"].update(rcut=4.0), "repformer rcut/nsel .* must not exceed repinit's"),
    (lambda d: d["repinit"].update(three_body_rcut=5.0), "three_body_rcut: must not exceed repinit/rcut"),
    (lambda d: d["repformer"].update(update_style="res_sum"), "update_style: expected one of res_avg"),
    (lambda d: d["repformer"].update(update_residual_init="uniform"), "update_residual_init: expected 'norm'"),
    (lambda d: d["repformer"].update(g3_dim=4), "g3_dim"),
    (lambda d: d["repformer"].update(axis_neuron=6), "repformer/axis_neuron: must not exceed the widths"),
    (lambda d: d["repformer"].update(nlayers=0), "repformer/nlayers: must be a positive int"),
    (lambda d: d["repinit"].update(axis_neuron=12), "repinit/axis_neuron.*must not exceed neuron"),
    (lambda d: d.update(repformer_do_bn_mode="uniform"), "not supported yet: model/descriptor/repformer_do_bn_mode"),
    (lambda d: d.update(repformer_nlayers=3), "given twice: as repformer_nlayers and repformer/nlayers"),
])
def test_bad_sections_are_named(edit, message):
    descriptor = copy.deepcopy(SMOOTH)
    edit(descriptor)
    with pytest.raises(ConfigError, match=message):
        build_model({"type_map": ["A", "B"], "descriptor": descriptor, "fitting_net": FITTING})


def _small_example_input(shared_data) -> dict:
    """DeePMD-kit's examples/water/dpa2/input_torch_small.json, with the shared data, a few steps and
    smaller widths and neighbour counts (the same keys and layout)."""
    return {
        "model": {
            "type_map": ["O", "H"],
            "descriptor": {
                "type": "dpa2",
                "repinit": {"tebd_dim": 8, "rcut": 4.0, "rcut_smth": 0.5, "nsel": 40, "neuron": [4, 8],
                            "axis_neuron": 4, "activation_function": "tanh", "three_body_sel": 16,
                            "three_body_rcut": 3.0, "three_body_rcut_smth": 2.5, "use_three_body": True},
                "repformer": {"rcut": 3.0, "rcut_smth": 2.5, "nsel": 20, "nlayers": 2, "g1_dim": 16, "g2_dim": 8,
                              "attn2_hidden": 8, "attn2_nhead": 2, "attn1_hidden": 16, "attn1_nhead": 2,
                              "axis_neuron": 4, "update_h2": False, "update_g1_has_conv": True,
                              "update_g1_has_grrg": True, "update_g1_has_drrd": True, "update_g1_has_attn": False,
                              "update_g2_has_g1g1": False, "update_g2_has_attn": False,
                              "update_style": "res_residual", "update_residual": 0.01,
                              "update_residual_init": "norm", "attn2_has_gate": True, "use_sqrt_nnei": True,
                              "g1_out_conv": True, "g1_out_mlp": True},
                "precision": "float64",
                "add_tebd_to_repinit_out": False,
            },
            "fitting_net": {"neuron": [16, 16], "resnet_dt": True, "precision": "float64", "seed": 1,
                            "_comment": " that's all"},
            "_comment": " that's all",
        },
        "learning_rate": {"type": "exp", "decay_steps": 5000, "start_lr": 0.001, "stop_lr": 3.51e-08},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
                 "start_pref_v": 0, "limit_pref_v": 0},
        "training": {
            "stat_file": "./dpa2.hdf5",
            "training_data": {"systems": [str(shared_data("deepmd_water/data_0"))], "batch_size": 1},
            "validation_data": {"systems": [str(shared_data("deepmd_water/data_3"))], "batch_size": 1},
            "numb_steps": 3, "warmup_steps": 0, "gradient_max_norm": 5.0, "seed": 10, "disp_file": "lcurve.out",
            "disp_freq": 1, "save_freq": 3,
        },
    }


def test_dpa2_example_input_trains_freezes_and_tests(tmp_path, shared_data, monkeypatch, capsys):
    (tmp_path / "input.json").write_text(json.dumps(_small_example_input(shared_data), indent=1))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json"]) == 0
    assert (tmp_path / "dpa2.hdf5").exists()  # the statistics file of the example input
    rows = np.loadtxt(tmp_path / "lcurve.out")
    assert rows[:, 0].tolist() == [1, 2, 3] and np.isfinite(rows).all()
    assert 0.1 < rows[-1, 5] < 3.0  # force RMSE (eV/Å) of a barely trained model on water
    assert main(["freeze", "-o", "frozen.pt"]) == 0
    capsys.readouterr()
    assert main(["test", "-m", "frozen.pt", "-s", str(shared_data("deepmd_water/data_3")), "-n", "2",
                 "-d", "detail"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Force  RMSE\s+: \d\.\d{6}e[-+]\d\d eV/A", out, re.M)
    assert np.loadtxt(tmp_path / "detail.f.out").shape == (2 * 192, 6)
