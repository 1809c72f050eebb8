"""The typed native band-fitting config: DeePseudopot conversion (`mlpot convert INPUTS_DIR`), YAML loading
(`mlpot bands fit fit.yaml`), errors with file, key path and closest key; layer and size rules of mlpot/bands."""

import ast
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlpot.bands.native import validate_bands_config
from mlpot.cli import main
from mlpot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _reduced(shared_data, tmp_path):
    from tests.test_bands_fit_cli import _inputs

    return _inputs(shared_data, tmp_path, "num_cores = 2\nSObool = 0\nrelE_bIdx = 3\npatience = 7\n")


def test_convert_shows_the_native_config_and_it_runs(shared_data, tmp_path, capsys):
    inputs = _reduced(shared_data, tmp_path)
    assert main(["convert", str(inputs)]) == 0
    native = yaml.safe_load(capsys.readouterr().out)
    assert native["family"] == "bands" and native["inputs"] == str(inputs.resolve())
    assert native["model"] == {"type": "Net_celu_HeInit_decayGaussian", "hidden": [8, 8], "decay_rate": None,
                               "decay_center": None, "gaussian_std": 2.0, "scale": None}
    assert native["runtime"]["workers"] == 2 and native["hamiltonian"]["relative_band"] == 3
    assert native["prefit"]["epochs"] == 4 and native["training"]["patience"] == 7
    native["runtime"]["workers"] = 0
    native["inputs"] = "inputs"  # relative to the YAML's folder
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(native))
    from mlpot.commands.bands import load_band_config

    assert load_band_config(path)[0].inputs == str(inputs.resolve())
    assert main(["bands", "fit", str(path), str(tmp_path / "yaml_run"), "--quiet"]) == 0
    assert main(["bands", "fit", str(inputs), str(tmp_path / "par_run"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "yaml_run" / "final_BS_sys0.dat"),
                                  np.loadtxt(tmp_path / "par_run" / "final_BS_sys0.dat"))


def test_native_errors_name_file_key_path_and_closest_key(tmp_path):
    base = {"inputs": str(tmp_path), "n_systems": 1, "model": {"type": "Net_relu_xavier_decay2", "hidden": [4]}}
    with pytest.raises(ConfigError, match=r"fit.yaml: training.epoch: unknown key \(did you mean 'epochs'\?\)"):
        validate_bands_config(dict(base, training={"epoch": 3}), file="fit.yaml")
    with pytest.raises(ConfigError, match=r"fit.yaml: model.type: unknown pseudopotential model 'Net_relu_xavir_decay2'"
                                          r".*did you mean 'Net_relu_xavier_decay2'"):
        validate_bands_config(dict(base, model={"type": "Net_relu_xavir_decay2", "hidden": [4]}), file="fit.yaml")
    with pytest.raises(ConfigError, match=r"fit.yaml: training.optimizer: unknown optimizer 'adan'.*did you mean 'adam'"):
        validate_bands_config(dict(base, training={"optimizer": "adan"}), file="fit.yaml")
    with pytest.raises(ConfigError, match=r"fit.yaml: training: Value error|training.lr is required"):
        validate_bands_config(dict(base, training={"epochs": 3}), file="fit.yaml")
    with pytest.raises(ConfigError, match=r"fit.yaml: hamiltonian.basis: Input should be 'sphere' or 'compat'"):
        validate_bands_config(dict(base, hamiltonian={"basis": "cube"}), file="fit.yaml")
    with pytest.raises(ConfigError, match=r"fit.yaml: inputs: no such folder"):
        validate_bands_config(dict(base, inputs=str(tmp_path / "missing")), file="fit.yaml")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_bands_does_not_import_upper_layers():
    upper = ("mlpot.config", "mlpot.calculators", "mlpot.commands", "mlpot.cli")
    for path in sorted((ROOT / "mlpot" / "bands").glob("*.py")):
        bad = [m for m in _imports(path) if m.startswith(upper)]
        assert not bad, f"{path.name} imports {bad}"


def test_band_modules_and_functions_are_small():
    files = sorted((ROOT / "mlpot" / "bands").glob("*.py")) + [ROOT / "mlpot" / "config" / "deepseudopot.py",
                                                                ROOT / "mlpot" / "commands" / "bands.py"]
    for path in files:
        text = path.read_text()
        assert len(text.splitlines()) <= 450, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path.name}:{node.name} has {length} lines"
