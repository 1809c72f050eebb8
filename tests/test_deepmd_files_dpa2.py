"""mlpot reads DeePMD-kit 3.2's trained DPA-2 files and gives ``dp test``'s numbers.

``tests/peer_models/deepmd/`` holds three tiny DPA-2 water models that DeePMD-kit 3.2 trained for 4
steps, froze and evaluated on frames 0 and 2 of deepmd_water/data_3
(``tests/peer_models/make_deepmd_models.py``, ``MODELS["dpa2*"]``); between them they cover:

* ``dpa2``: the form of DeePMD-kit's examples/water/dpa2/input_torch_small.json: concat repinit
  with the three-body block, repformer with conv, grrg, drrd, g1_out_conv, g1_out_mlp, gated
  attention map, res_residual; checkpoint and frozen archive;
* ``dpa2_attn``: strip repinit with resnet_dt, every repformer update (local attention on g1, g1g1
  and attention on g2, h2 update), res_avg, gelu, non-zero repformer davg, add_tebd_to_repinit_out,
  no concat_output_tebd; frozen archive only;
* ``dpa2_incr``: not smooth, res_incr, direct_dist, strip three-body, type_one_side, exclude_types,
  fixed layer norm (trainable_ln false, ln_eps); frozen archive only.

Energies agree to ~2e-11 eV (of 3e4 eV, rounding of the sum), forces and virials to ~5e-14.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.calculators.evaluate import iterate_predictions
from mlpot.calculators.export import load_model
from mlpot.data import read_frames
from mlpot.models.deepmd.descriptors import DescriptorDPA2

FILES = Path(__file__).parent / "peer_models" / "deepmd"
CASES = [("dpa2", ".ckpt.pt"), ("dpa2", ".pth"), ("dpa2_attn", ".pth"), ("dpa2_incr", ".pth")]
FRAMES = (0, 2)
TOLERANCE = {"energy": 1e-9, "forces": 1e-12, "virial": 1e-11}  # eV, eV/Å, eV


@pytest.fixture(scope="module")
def dp_test_numbers(shared_data):
    """(the frames DeePMD-kit evaluated, its numbers by "<model>/<key>")."""
    every = read_frames(shared_data("deepmd_water/data_3"), type_map=["O", "H"])
    return [every[i] for i in FRAMES], dict(np.load(FILES / "deepmd_reference.npz"))


@pytest.mark.parametrize("name, suffix", CASES, ids=[f"{n}{s}" for n, s in CASES])
def test_reproduces_dp_test(name, suffix, dp_test_numbers):
    frames, reference = dp_test_numbers
    model = load_model(FILES / f"{name}{suffix}")
    assert isinstance(model.descriptor, DescriptorDPA2) and model.dtype == torch.float64
    assert model.cutoff == 3.5 and model.descriptor.repformers.rcut == 2.5
    out = [prediction for _, prediction in iterate_predictions(model, frames)]
    for key, tolerance in TOLERANCE.items():
        ours = np.stack([p[key] for p in out])
        error = np.abs(ours - reference[f"{name}/{key}"]).max()
        assert error < tolerance, (key, error)


def test_checkpoint_and_frozen_archive_give_the_same_weights():
    from_checkpoint, from_frozen = load_model(FILES / "dpa2.ckpt.pt"), load_model(FILES / "dpa2.pth")
    assert from_checkpoint.config == from_frozen.config
    frozen_state = from_frozen.state_dict()
    for key, value in from_checkpoint.state_dict().items():
        assert torch.equal(value, frozen_state[key]), key


def test_file_options_reach_the_model():
    three_body = load_model(FILES / "dpa2.pth").descriptor
    assert three_body.three_body is not None and three_body.three_body.rcut == 3.0
    assert three_body.repformers.layers[0].style == "res_residual" and three_body.dim_out == 16 + 4
    attn = load_model(FILES / "dpa2_attn.pth").descriptor
    assert attn.tebd_transform is not None and attn.dim_out == 16 and attn.repformers.layers[0].has_attn
    assert attn.repformers.layers[-1].attn2g_map is None  # the last layer updates g1 only
    incr = load_model(FILES / "dpa2_incr.pth").descriptor
    assert incr.repformers.direct_dist and not incr.repformers.smooth and incr.repformers.has_excluded_pairs
    assert not incr.repformers.layers[0].attn2_lm.weight.requires_grad
