"""``mlpot train-nvnmd INPUT -s s1|s2 [-i/--init-model CKPT] [-r/--restart CKPT]
[--skip-neighbor-stat] [--no-progress]``: DeePMD-kit's ``dp train-nvnmd``, NVNMD's two stages.

INPUT is DeePMD-kit's NVNMD input (``train_cnn.json`` / ``train_qnn.json``: an ``nvnmd`` section,
no model section; see ``mlpot.config._deepmd_nvnmd``). The stages work in the folders DeePMD-kit
uses and write its files there:

* ``-s s1``, continuous network (CNN): in ``nvnmd_cnn/``: ``train.json`` (the input as trained:
  nvnmd enabled, nothing quantised or restored; system paths made absolute), the training's
  ``lcurve.out`` and checkpoints, ``frozen_model.pt`` (mlpot's frozen model; DeePMD-kit writes a
  TF ``frozen_model.pb``), ``weight.npy`` (the weights by DeePMD-kit's TF names), ``config.npy``
  (the hardware configuration) and ``map.npy`` (the tables of the quantised descriptor, built from
  the embedding nets over the training data's range of s);
* ``-s s2``, quantised network (QNN): in ``nvnmd_qnn/``: ``train.json`` (quantised descriptor and
  fitting nets, map_file and config_file of the first stage), training that starts from
  ``nvnmd_cnn/weight.npy`` (restore_descriptor and restore_fitting_net: statistics, bias and
  weights from there; the descriptor is the tables, the fitting nets train on), then
  ``frozen_model.pt``, ``weight.npy`` and ``config.npy``. DeePMD-kit's ``model.pb`` (the binary
  model of the NVNMD hardware) is not written: not supported yet.

Both frozen models run everywhere mlpot models do (``mlpot test``, the ASE calculator, ``mlpot md``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlpot.errors import ConfigError

CNN, QNN = "nvnmd_cnn", "nvnmd_qnn"


def add_arguments(parser) -> None:
    parser.add_argument("input", type=Path, help="DeePMD-kit NVNMD input (train_cnn.json / train_qnn.json)")
    parser.add_argument("-s", "--step", choices=["s1", "s2"], default="s1",
                        help="s1: continuous network (nvnmd_cnn/); s2: quantised network (nvnmd_qnn/)")
    parser.add_argument("-i", "--init-model", default=None, help="s1: checkpoint to take the weights from")
    parser.add_argument("-r", "--restart", default=None, help="checkpoint of the stage to resume exactly")
    parser.add_argument("--skip-neighbor-stat", action="store_true", help="no neighbour statistics (numeric sel)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _stage_input(path: Path, folder: Path, step: str) -> dict:
    """The input of a stage: nvnmd flags of the stage, system paths absolute, files of stage 1."""
    from mlpot.config import read_yaml
    from mlpot.config._deepmd_sections import resolve_systems

    content = read_yaml(path, finite=False)
    if not isinstance(content, dict) or not isinstance(content.get("nvnmd"), dict):
        raise ConfigError("needs an nvnmd section (DeePMD-kit's NVNMD input)", file=str(path), key="nvnmd")
    if "model" in content:
        raise ConfigError("an NVNMD input has no model section (the nvnmd section's sel, rcut and rcut_smth "
                          "define it); train a model section with nvnmd/enable true by mlpot train",
                          file=str(path), key="model")
    nvnmd = content["nvnmd"]
    quantised = step == "s2"
    cnn = (Path.cwd() / CNN).resolve()
    nvnmd.update(enable=True, quantize_descriptor=quantised, quantize_fitting_net=quantised,
                 restore_descriptor=False, restore_fitting_net=False, weight_file="none",
                 map_file=str(cnn / "map.npy") if quantised else "none",
                 config_file=str(cnn / "config.npy") if quantised else "none")
    training = content.get("training")
    for name in ("training_data", "validation_data"):
        data = training.get(name) if isinstance(training, dict) else None
        if isinstance(data, dict) and "systems" in data:
            data["systems"] = [str(p) for p in resolve_systems(data["systems"], path.resolve().parent,
                                                               ["training", name, "systems"], str(path),
                                                               data.pop("rglob_patterns", None))]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.json", "w") as handle:
        json.dump(content, handle, indent=2)
    return content


def _restored_model(folder: Path) -> Path:
    """A frozen QNN model holding the first stage's weight.npy (the start of the second stage)."""
    from mlpot.calculators.export import write_frozen
    from mlpot.config import deepmd
    from mlpot.models.deepmd.nvnmd.files import import_weights, read_npy_dict
    from mlpot.models.registry import build_model

    weights = read_npy_dict(Path(CNN) / "weight.npy", "nvnmd/weight_file")
    native = deepmd.convert(folder / "train.json")
    model = build_model(native["model"])
    import_weights(model, weights, str(Path(CNN) / "weight.npy"))
    output = folder / "restored_cnn.pt"
    write_frozen(model, output, native.get("dtype", "float64"), {"source": str(Path(CNN) / "weight.npy")})
    return output


def _write_stage_files(folder: Path, step: str, skip_stat: bool) -> None:
    """frozen_model.pt, weight.npy, config.npy (and map.npy after s1) of a trained stage."""
    from mlpot.calculators.export import load_model
    from mlpot.commands.compress import training_min_nbor_dist
    from mlpot.models.deepmd.nvnmd.files import export_weights, hardware_config, write_npy_dict
    from mlpot.models.deepmd.nvnmd.tables import build_tables, build_tables_v1, s_range

    os.replace(folder / "model.pt", folder / "frozen_model.pt")
    model = load_model(folder / "frozen_model.pt")
    options = model.config["nvnmd"]
    min_nbor_dist = training_min_nbor_dist(folder / "train.json", model.cutoff, model.type_map)
    write_npy_dict(folder / "weight.npy", export_weights(model, min_nbor_dist))
    s_min, s_max = s_range(model.descriptor, min_nbor_dist)
    if s_max - s_min > 16.0:
        print(f"warning: the range of s is [{s_min:.4g}, {s_max:.4g}], wider than the 16 the tables hold; "
              "a larger rcut_smth narrows it")
    write_npy_dict(folder / "config.npy", hardware_config(model, options["version"], options["max_nnei"],
                                                          min_nbor_dist, s_min, s_max))
    if step == "s1":
        tables = (build_tables if options["version"] == 0 else build_tables_v1)(model.descriptor, min_nbor_dist)
        write_npy_dict(folder / "map.npy", tables)
    else:
        print("note: model.pb (the NVNMD hardware's binary model, dp train-nvnmd's last file) is not written: "
              "not supported yet")


def run(args) -> int:
    from mlpot.cli import main

    step = args.step
    folder = Path(CNN if step == "s1" else QNN)
    if step == "s2" and args.init_model:
        raise ConfigError("-s s2 starts from the first stage's weight.npy; --init-model applies to -s s1", key="--init-model")
    if step == "s2" and not (Path(CNN) / "weight.npy").is_file():
        raise ConfigError(f"no {CNN}/weight.npy: run mlpot train-nvnmd -s s1 first (in this folder)", key="--step")
    _stage_input(args.input, folder, step)
    command = ["train", str(folder / "train.json"), "--output-dir", str(folder)]
    if args.restart:
        command += ["--restart", args.restart]
    else:
        command += ["--force"]
        start = args.init_model if step == "s1" else (str(_restored_model(folder)) if step == "s2" else None)
        command += ["--init-model", start] if start else []
    command += ["--skip-neighbor-stat"] if args.skip_neighbor_stat else []
    command += ["--no-progress"] if args.no_progress else []
    status = main(command)
    if status:
        return status
    _write_stage_files(folder, step, args.skip_neighbor_stat)
    print(f"NVNMD stage {step} done: {folder}/ frozen_model.pt, weight.npy, config.npy"
          + (", map.npy" if step == "s1" else ""))
    return 0
