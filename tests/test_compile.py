"""``mlpot compile``: compiled, frozen and eager models agree (float64 within 1e-10 relative,
float32 within 1e-5) on structures of other sizes than the traced one, through the ASE
calculator too; the metadata; a model torch.export cannot trace gets both reasons. The
AOTInductor build (minutes of C++ compilation) is in the slow tier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpot.calculators import MlpotCalculator
from mlpot.calculators.compile import compile_model
from mlpot.calculators.compiled import is_compiled_file, load_compiled
from mlpot.cli import main
from mlpot.data import keys as K
from mlpot.errors import ConfigError, DataError

from test_calculators_neighbours import _atoms, _model


def _save_frozen(model, path):
    torch.save({"format": "mlpot-frozen", "format_version": 1, "model_config": model.config,
                "state_dict": model.state_dict(), "dtype": str(model.dtype).replace("torch.", ""),
                "metadata": {"step": 0}}, path)
    return path


def _relative(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300))


def _assert_agree(compiled_path, frozen_path, model, tolerance, dtype=None):
    atoms = _atoms(seed=7, repeat=(2, 2, 1))  # 16 atoms: another size than the traced structure
    results = {}
    for name, source in (("compiled", str(compiled_path)), ("frozen", str(frozen_path)), ("eager", model)):
        probe = atoms.copy()
        probe.calc = MlpotCalculator(source, dtype=dtype if name != "compiled" else None)
        results[name] = (probe.get_potential_energy(), probe.get_forces(), probe.get_stress(),
                         probe.get_potential_energies())
    for name in ("compiled", "frozen"):
        for got, reference in zip(results[name], results["eager"]):
            assert _relative(got, reference) < tolerance, name
    return results


def test_exported_program_agrees_with_eager_and_frozen(tmp_path, capsys):
    model = _model()
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    assert main(["compile", str(frozen), "-o", str(tmp_path / "model.pt2"), "--backend", "export"]) == 0
    out = capsys.readouterr().out
    assert "with export" in out and "largest relative difference" in out
    path = tmp_path / "model.pt2"
    assert is_compiled_file(path) and not is_compiled_file(frozen)
    runner = load_compiled(path)
    assert runner.type_map == ["Cu", "Au"] and runner.cutoff == 4.0 and runner.dtype == torch.float64
    assert runner.metadata["family"] == "deepmd" and runner.metadata["backend"] == "export"
    _assert_agree(path, frozen, model, 1e-10)
    with pytest.raises(DataError, match="at least 2 atoms"):
        lonely = _atoms()[:1]
        lonely.calc = MlpotCalculator(str(path))
        lonely.get_potential_energy()


def test_failing_aotinductor_falls_back_to_the_exported_program(tmp_path, capsys, monkeypatch):
    import torch._inductor

    def broken_inductor(*args, **kwargs):
        raise AssertionError("vectorised store")  # what Inductor's C++ code generator raised with 2 threads

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken_inductor)
    model = _model()
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    assert main(["compile", str(frozen), "-o", str(tmp_path / "model.pt2")]) == 0
    out = capsys.readouterr().out
    assert "AOTInductor failed: AssertionError: vectorised store; wrote the export backend instead" in out
    runner = load_compiled(tmp_path / "model.pt2")
    assert runner.metadata["backend"] == "export" and "AOTInductor failed" in runner.metadata["fallback_reason"]
    _assert_agree(tmp_path / "model.pt2", frozen, model, 1e-10)


@pytest.mark.slow
def test_float32_compiled_agrees_within_1e_5(tmp_path):
    model = _model()
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    metadata = compile_model(frozen, tmp_path / "model32.pt2", backend="export", dtype="float32")
    assert metadata["dtype"] == "float32" and max(metadata["check"].values()) < 1e-5
    eager32 = _model().to(torch.float32)
    _assert_agree(tmp_path / "model32.pt2", frozen, eager32, 1e-5, dtype="float32")


def test_untraceable_model_gets_both_reasons(tmp_path):
    model = _model()
    plain_forward = model.forward

    def data_dependent_forward(batch):  # a Python branch on a value of the data: neither tracer takes it
        return plain_forward(batch) if float(batch[K.POSITIONS].sum()) > -1e300 else {}

    model.forward = data_dependent_forward
    with pytest.raises(ConfigError, match=r"not supported yet: compiling this .*torch.export failed .*TorchScript "
                                          r"fallback failed too"):
        compile_model(model, tmp_path / "branchy.pt2", backend="export")
    with pytest.raises(ConfigError, match="unknown backend 'tvm'"):
        compile_model(_model(), tmp_path / "x.pt2", backend="tvm")


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-10), ("float32", 1e-5)])
def test_aotinductor_package_agrees(tmp_path, dtype, tolerance):
    """The C++ build (AOTInductor): 1.5-4 min per model on a shared 2-core machine."""
    model = _model()
    frozen = _save_frozen(model, tmp_path / "frozen.pt")
    metadata = compile_model(frozen, tmp_path / "model.pt2", backend="aoti", dtype=dtype)
    assert metadata["backend"] == "aoti" and max(metadata["check"].values()) < tolerance
    eager = _model().to(getattr(torch, dtype))
    _assert_agree(tmp_path / "model.pt2", frozen, eager, tolerance, dtype=dtype)
