"""``mlpot compile`` of DeePMD descriptors beyond se_e2_a (test_compile.py): DPA-2 (three
configurations: every repformer update with attention; strip repinit, not smooth, an excluded pair;
DeePMD-kit's input_torch_small layout, whose repformer drops empty neighbour slots), se_e2_r, se_e3,
se_atten, se_atten_v2, hybrid and se_e2_a with exclude_types. The exported program (float64) agrees
with the eager and the frozen model within 1e-10 relative on energy, atom energies, forces and
virial on a periodic and a non-periodic structure with other atom and edge counts than the traced
one. Tracing takes 7-45 s per model on a shared 2-core machine: slow tier, as are float32 (1e-5)
and the AOTInductor build of DPA-2. The default tier checks the fixed-shape branches a tracer takes
against the eager numbers (seconds)."""

from __future__ import annotations

import pytest
import torch

from mlpot import testing as T
from mlpot.calculators.compile import compile_model
from mlpot.data import keys as K
from mlpot.models import build_model

from test_compile import _save_frozen
from test_compile_equivariant import assert_compiled_agrees
from test_models_dpa2 import ROUGH, SMOOTH, _small_example_input

# the dense structures of compile_model's own check (1.6 Å grid) exceed the small sels: the same
# truncation in the compiled and the eager model
pytestmark = pytest.mark.filterwarnings("ignore:more neighbours than sel")

_SMALL = {"rcut": 3.5, "rcut_smth": 0.5, "neuron": [4, 8], "seed": 1}
_ATTEN = dict(_SMALL, sel=24, axis_neuron=2, attn=8, attn_layer=1, tebd_dim=4)
DESCRIPTORS = {
    "dpa2": SMOOTH,
    "dpa2_rough": ROUGH,
    "dpa2_example": _small_example_input(lambda path: path)["model"]["descriptor"],
    "se_e2_r": dict(_SMALL, type="se_e2_r", sel=[24, 24]),
    "se_e3": dict(_SMALL, type="se_e3", sel=[24, 24], neuron=[2, 4]),
    "se_atten": dict(_ATTEN, type="se_atten"),
    "se_atten_v2": dict(_ATTEN, type="se_atten_v2"),
    "hybrid": {"type": "hybrid", "list": [dict(_SMALL, type="se_e2_a", sel=[24, 24], axis_neuron=2),
                                          dict(_SMALL, type="se_e2_r", sel=[12, 12], rcut=3.0, seed=2)]},
    "se_e2_a_excluded": dict(_SMALL, type="se_e2_a", sel=[24, 24], axis_neuron=2, exclude_types=[[0, 1]]),
}


def deepmd_model(name: str) -> torch.nn.Module:
    """A small float64 energy model of descriptor ``name`` for O and H, statistics from a random batch."""
    model = build_model({"type_map": ["O", "H"], "descriptor": dict(DESCRIPTORS[name]),
                         "fitting_net": {"neuron": [8], "seed": 3}})
    model.compute_statistics([T.random_batch(2, 8, seed=5)])
    return model.eval()


def _fixed_shape_branches(monkeypatch):
    """The branches a tracer takes, in plain eager evaluation (``is_tracing`` forced on where it is read)."""
    from mlpot.models import base
    from mlpot.models.deepmd import standard
    from mlpot.models.deepmd.descriptors import base as descriptor_base, env, se_e2_a
    from mlpot.nn import chunking

    for module in (base, standard, descriptor_base, env, se_e2_a, chunking):
        monkeypatch.setattr(module, "is_tracing", lambda: True)


@pytest.mark.parametrize("name", sorted(DESCRIPTORS))
def test_fixed_shape_branches_give_the_eager_numbers(name, monkeypatch):
    """All neighbour slots kept (no trimming of empty ones), no overflow count: the eager numbers."""
    from mlpot.models.derivatives import compute_derivatives

    model = deepmd_model(name)
    batch = T.random_batch(2, [9, 6], cutoff=model.cutoff, seed=3)
    eager = compute_derivatives(model, batch, forces=True, virial=True)
    _fixed_shape_branches(monkeypatch)
    fixed = compute_derivatives(model, batch, forces=True, virial=True)
    assert eager[K.FORCES].abs().max() > 1e-3
    for key in (K.ENERGY, K.ATOM_ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(fixed[key], eager[key], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DESCRIPTORS))
def test_exported_program_agrees_with_eager_and_frozen(name, tmp_path):
    model = deepmd_model(name)
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    metadata = compile_model(frozen, tmp_path / "model.pt2", backend="export")
    assert metadata["backend"] == "export" and "fallback_reason" not in metadata
    assert metadata["family"] == "deepmd" and max(metadata["check"].values()) < 1e-10
    assert_compiled_agrees(tmp_path / "model.pt2", frozen, model, 1e-10)


@pytest.mark.slow
def test_float32_dpa2_exported_program_agrees_within_1e_5(tmp_path):
    model = deepmd_model("dpa2")
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    metadata = compile_model(frozen, tmp_path / "model32.pt2", backend="export", dtype="float32")
    assert metadata["dtype"] == "float32" and max(metadata["check"].values()) < 1e-5
    assert_compiled_agrees(tmp_path / "model32.pt2", frozen, deepmd_model("dpa2").to(torch.float32), 1e-5,
                           dtype="float32")


@pytest.mark.slow
def test_aotinductor_dpa2_package_agrees(tmp_path):
    """The C++ build (AOTInductor) of the float64 DPA-2 model: minutes on a shared 2-core machine."""
    model = deepmd_model("dpa2_example")
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    metadata = compile_model(frozen, tmp_path / "model.pt2", backend="aoti")
    assert metadata["backend"] == "aoti" and max(metadata["check"].values()) < 1e-10
    assert_compiled_agrees(tmp_path / "model.pt2", frozen, model, 1e-10)
