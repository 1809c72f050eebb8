"""DeePMD-kit 3.2's water example inputs (examples/water/*/input*.json), written out for the provided data.

Each input keeps the example's model section, loss and learning-rate schedule; only the step count
(``--steps``; ``decay_steps`` = steps / 10) and the system paths (data_0 + data_1 train, data_3
validation) change. The pair tables of the zbl and d3 examples come from ``make_tables.py`` beside
this file (written into ``OUT_DIR/tables``). ``--light`` sets ``attn_layer`` 0 in the se_atten(_v2)
descriptors (a cheaper network for side-by-side runs; the composite-model rules do not depend on it).

Used by tests/test_deepmd_examples_slow.py and benchmarks/deepmd_examples.py. Usage:
``python example_inputs.py OUT_DIR [--steps 1000] [--light] [NAME ...]`` writes OUT_DIR/NAME/input.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "deepmd_water"

SE_E2_A = {"type": "se_e2_a", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
           "resnet_dt": False, "axis_neuron": 16, "type_one_side": True, "precision": "float64", "seed": 1}
SE_ATTEN = {"type": "se_atten", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
            "resnet_dt": False, "axis_neuron": 16, "type_one_side": True, "precision": "float64", "seed": 1}
# examples/water/se_atten/input.json and zbl/input.json: se_atten_v2 with its defaults (2 attention layers)
SE_ATTEN_V2 = {"type": "se_atten_v2", "sel": 120, "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
               "axis_neuron": 16, "type_one_side": True, "attn": 128, "attn_layer": 2, "attn_dotr": True,
               "attn_mask": False, "activation_function": "tanh", "scaling_factor": 1.0, "normalize": True,
               "temperature": 1.0, "precision": "float64", "seed": 1}
FITTING = {"neuron": [240, 240, 240], "resnet_dt": True, "precision": "float64", "seed": 1}
WATER = {"type_map": ["O", "H"]}
ZBL = {"use_srtab": "TABLES/zbl.txt", "smin_alpha": 0.1, "sw_rmin": 0.8, "sw_rmax": 1.0}

MODELS = {
    "se_e2_a": {**WATER, "descriptor": SE_E2_A, "fitting_net": FITTING},
    "se_e2_r": {**WATER, "descriptor": {"type": "se_e2_r", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0,
                                         "neuron": [5, 10, 20], "resnet_dt": False, "seed": 1},
                "fitting_net": FITTING},
    "se_e3": {**WATER, "descriptor": {"type": "se_e3", "sel": [40, 80], "rcut_smth": 0.5, "rcut": 6.0,
                                       "neuron": [2, 4, 8], "resnet_dt": False, "seed": 1},
              "fitting_net": FITTING},
    # examples/water/se_atten/input_torch.json, with its early DPA-1 keys
    "dpa1": {**WATER, "descriptor": {"type": "dpa1", "sel": 120, "rcut_smth": 0.5, "rcut": 6.0,
                                      "neuron": [25, 50, 100], "tebd_dim": 8, "axis_neuron": 16,
                                      "type_one_side": True, "attn": 128, "attn_layer": 2, "attn_dotr": True,
                                      "attn_mask": False, "post_ln": True, "ffn": False, "ffn_embed_dim": 1024,
                                      "activation_function": "tanh", "scaling_factor": 1.0, "head_num": 1,
                                      "normalize": True, "temperature": 1.0},
             "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "seed": 1}},
    "hybrid": {**WATER, "descriptor": {"type": "hybrid", "list": [
        {"type": "se_e2_a", "sel": [20, 40], "rcut_smth": 0.5, "rcut": 4.0, "neuron": [10, 20, 40],
         "resnet_dt": False, "axis_neuron": 4, "seed": 1},
        {"type": "se_e2_r", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0, "neuron": [5, 10, 20],
         "resnet_dt": False, "seed": 1},
        {"type": "se_atten", "compressible": True, "attn_layer": 0, "sel": [46, 92], "rcut_smth": 0.5,
         "rcut": 6.0, "neuron": [5, 10, 20], "resnet_dt": False, "seed": 1}]},
        "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "seed": 1}},
    # the members of the linear and d3 examples, and the plain model of the zbl example
    "se_atten": {**WATER, "descriptor": SE_ATTEN, "fitting_net": FITTING},
    "se_atten_v2": {**WATER, "descriptor": SE_ATTEN_V2, "fitting_net": FITTING},
    "linear": {"type": "linear_ener", "weights": "sum", **WATER,
               "models": [{"descriptor": SE_ATTEN, "fitting_net": FITTING}, {"descriptor": SE_ATTEN, "fitting_net": FITTING}]},
    "d3": {"type": "linear_ener", "weights": "sum", **WATER,
           "models": [{"descriptor": SE_ATTEN, "fitting_net": FITTING},
                      {"type": "pairtab", "tab_file": "TABLES/dftd2.txt", "rcut": 10.0, "sel": 534}]},
    # examples/water/zbl/input.json (DeePMD-kit 3.x's PyTorch backend takes use_srtab only with a
    # mixed-type descriptor; its TF backend also took se_e2_a, as mlpot does)
    "zbl": {**ZBL, **WATER, "descriptor": SE_ATTEN_V2, "fitting_net": FITTING},
    "zbl_se_e2_a": {**ZBL, **WATER, "descriptor": SE_E2_A, "fitting_net": FITTING},
}


def _lighten(section):
    """attn_layer 0 in every se_atten(_v2) descriptor of a model section (in place)."""
    if isinstance(section, dict):
        if section.get("type") in ("se_atten", "se_atten_v2", "dpa1"):
            section["attn_layer"] = 0
        for value in section.values():
            _lighten(value)
    elif isinstance(section, list):
        for value in section:
            _lighten(value)


def example_input(name: str, data: Path, tables: Path, steps: int, light: bool = False) -> dict:
    """The input.json of example ``name``: its model section, loss and learning rate, ``steps`` steps."""
    model = json.loads(json.dumps(MODELS[name]).replace("TABLES", str(tables)))
    if light:
        _lighten(model)
    return {
        "model": model,
        "learning_rate": {"type": "exp", "decay_steps": max(1, steps // 10), "start_lr": 0.001, "stop_lr": 3.51e-8},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
                 "start_pref_v": 0, "limit_pref_v": 0},
        "training": {"training_data": {"systems": [str(data / "data_0"), str(data / "data_1")], "batch_size": "auto"},
                     "validation_data": {"systems": [str(data / "data_3")], "batch_size": 1, "numb_btch": 1},
                     "numb_steps": steps, "seed": 10, "disp_file": "lcurve.out", "disp_freq": max(1, steps // 10),
                     "save_freq": steps},
    }


def nopbc_input(data: Path, steps: int) -> dict:
    """DeePMD-kit's examples/nopbc/train/input.json (se_e2_a on C/H/O molecules, ``batch_size`` auto)
    for ``steps`` steps, its systems under ``data`` (../shared/data/deepmd_nopbc)."""
    return {"model": {"type_map": ["C", "H", "O"],
                      "descriptor": {"type": "se_e2_a", "sel": [40, 80, 40], "rcut_smth": 1.0, "rcut": 6.0,
                                     "neuron": [25, 50, 100], "resnet_dt": False, "axis_neuron": 12,
                                     "type_one_side": True, "seed": 1},
                      "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "seed": 1}},
            "learning_rate": {"type": "exp", "decay_steps": 100, "start_lr": 0.001, "stop_lr": 3.51e-8},
            "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000,
                     "limit_pref_f": 1, "start_pref_v": 0, "limit_pref_v": 0},
            "training": {"training_data": {"systems": str(data), "batch_size": "auto"}, "numb_steps": steps,
                         "seed": 10, "disp_freq": max(1, steps // 10), "save_freq": steps}}


def write_tables(folder: Path) -> Path:
    """The zbl and D2 tables of ``make_tables.py`` in ``folder`` (returned)."""
    subprocess.run([sys.executable, str(HERE / "make_tables.py"), str(folder)], check=True, capture_output=True)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("names", nargs="*", default=sorted(MODELS), help=f"examples (default all: {', '.join(MODELS)})")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--light", action="store_true", help="attn_layer 0 in se_atten descriptors")
    args = parser.parse_args(argv)
    tables = write_tables(args.out / "tables")
    for name in args.names:
        (args.out / name).mkdir(parents=True, exist_ok=True)
        (args.out / name / "input.json").write_text(
            json.dumps(example_input(name, args.data, tables, args.steps, args.light), indent=1))
        print(args.out / name / "input.json")


if __name__ == "__main__":
    main()
