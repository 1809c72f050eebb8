"""The bad-input corpus: each case spoils a copy of a valid workspace and names the command to run.

Workspace (built once by :func:`build_template`, copied for every case):

* ``dp/``: a DeePMD-kit ``input.json`` (se_e2_a, energy + force loss) with two small npy systems
  ``sys4`` (5 frames of 4 atoms) and ``sys5`` (3 frames of 5 atoms);
* ``native/``: a native ``config.yaml`` (the same model family) with ``train.extxyz`` and
  ``valid.extxyz`` (EMT CuAu frames);
* ``prev/``: the results of an earlier good run of ``dp/input.json``: ``model.pt``, the checkpoints
  ``model.ckpt-*.pt``, ``checkpoint``, ``lcurve.out`` (the files that bad input must never damage);
* ``bands/`` (when the shared cdse_zb data exist): a reduced DeePseudopot inputs folder.

A case is ``Case(name, front_end, spoil, expect)``: ``spoil(ws)`` changes the workspace and returns
the command line (``mlpot`` arguments, run with the workspace as current folder); ``expect`` is a
regular expression that the one-line error must match (it names the file and the key or frame).
Every case must exit with status 2, print no traceback and leave every file that existed before it
ran byte-identical. ``needs``: "bands" (shared data) or "readonly" (a read-only folder can be made).
``xfail``: the reason a case is expected to fail on this branch (strict).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
import yaml

__all__ = ["Case", "CASES", "build_template", "Workspace", "MALICIOUS_MARKER", "plant_malicious"]

MALICIOUS_MARKER = "PWNED_BY_A_MODEL_FILE"


class _RunsCode:
    """Unpickling this object runs ``touch <marker>``: a model file that executes code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_malicious(path: Path, marker: Path, like: Optional[dict] = None) -> Path:
    """A torch file whose unpickling would create ``marker`` (inside a checkpoint-like dict when ``like``)."""
    payload = dict(like or {"format": "mlpot-frozen"})
    payload["payload"] = _RunsCode(str(marker))
    torch.save(payload, path)
    return path


@dataclass
class Workspace:
    root: Path

    @property
    def dp(self) -> Path:
        return self.root / "dp"

    @property
    def native(self) -> Path:
        return self.root / "native"

    @property
    def prev(self) -> Path:
        return self.root / "prev"

    @property
    def bands(self) -> Path:
        return self.root / "bands"

    @property
    def marker(self) -> Path:
        return self.root / MALICIOUS_MARKER

    def dp_input(self) -> dict:
        return json.loads((self.dp / "input.json").read_text())

    def write_dp(self, config: dict, name: str = "input.json") -> str:
        (self.dp / name).write_text(json.dumps(config, indent=1))
        return f"dp/{name}"

    def edit_dp(self, change: Callable[[dict], None], name: str = "input.json") -> str:
        config = self.dp_input()
        change(config)
        return self.write_dp(config, name)

    def native_config(self) -> dict:
        return yaml.safe_load((self.native / "config.yaml").read_text())

    def edit_native(self, change: Callable[[dict], None], name: str = "config.yaml") -> str:
        config = self.native_config()
        change(config)
        (self.native / name).write_text(yaml.safe_dump(config, sort_keys=False))
        return f"native/{name}"


def fresh_workspace(template: "Workspace", tmp_path: Path, monkeypatch) -> "Workspace":
    """A copy of the template workspace under ``tmp_path``, made the current folder."""
    root = tmp_path / "ws"
    shutil.copytree(template.root, root)
    monkeypatch.chdir(root)
    return Workspace(root)


@dataclass
class Case:
    name: str
    front_end: str  # deepmd | native | deepseudopot | model (a model or checkpoint file) | data
    spoil: Callable[[Workspace], List[str]]
    expect: str
    needs: Optional[str] = None
    xfail: Optional[str] = None


# ---- the valid workspace ------------------------------------------------------------------------
def _write_dp(folder: Path) -> None:
    from tests.test_deepmd_training_keys import small_deepmd_input

    config = small_deepmd_input(folder, numb_steps=4, disp_freq=2, save_freq=2)
    del config["training"]["change_bias_after_training"]  # the workspace input keeps DeePMD's own keys only
    (folder / "input.json").write_text(json.dumps(config, indent=1))


def _write_native(folder: Path) -> None:
    from tests.test_training_trainer import base_config, make_dataset

    make_dataset(folder, n_frames=12)
    config = base_config(numb_steps=4)
    config["data"]["valid"]["batch_size"] = 4
    config["checkpoint"] = {"every": 2, "keep": 3}
    config["logging"]["debug_log"] = None
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _write_bands(folder: Path, source: Path) -> None:
    from tests.test_bands_fit_cli import CONFIG

    folder.mkdir()
    for name in ("system_0.par", "bandWeights_0.par", "init_CdParams.par", "init_SeParams.par"):
        (folder / name).write_text((source / name).read_text())
    (folder / "input_0.par").write_text("maxKE = 3\nnBands = 16\n")
    rows = [0, 20, 40, 60]
    kpts = (source / "kpoints_0.par").read_text().splitlines()
    bands = (source / "expBandStruct_0.par").read_text().splitlines()
    (folder / "kpoints_0.par").write_text("\n".join(kpts[r] for r in rows) + "\n")
    (folder / "expBandStruct_0.par").write_text("\n".join(bands[r] for r in rows) + "\n")
    (folder / "NN_config.par").write_text(CONFIG + "max_num_epochs = 1\nplotEvery = 1\nschedulerStep = 1\n"
                                          "optimizer_lr = 0.001\nscheduler_gamma = 0.5\n")


def build_template(root: Path, bands_source: Optional[Path] = None) -> Workspace:
    """The valid workspace (module docstring); ``prev/`` comes from a real run of ``dp/input.json``."""
    from mlpot.cli import main

    ws = Workspace(root)
    root.mkdir(parents=True, exist_ok=True)
    ws.dp.mkdir()
    ws.native.mkdir()
    _write_dp(ws.dp)
    _write_native(ws.native)
    ws.prev.mkdir()
    for name in ("sys4", "sys5", "input.json"):
        src = ws.dp / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, ws.prev / name)
    cwd = os.getcwd()
    try:
        os.chdir(ws.prev)
        assert main(["train", "input.json", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    for name in ("sys4", "sys5", "input.json"):
        target = ws.prev / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    if bands_source is not None:
        _write_bands(ws.bands, bands_source)
    return ws


# ---- helpers of the cases ---------------------------------------------------------------------------
def _npy(ws: Workspace, system: str, name: str) -> Path:
    return ws.dp / system / "set.000" / f"{name}.npy"


def _set_coord(ws: Workspace, system: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    path = _npy(ws, system, "coord")
    np.save(path, change(np.load(path)))


def _duplicate_atom(coords: np.ndarray) -> np.ndarray:
    coords = coords.copy()
    coords[2, 3:6] = coords[2, 0:3]  # frame 2: atom 1 on top of atom 0
    return coords


def _dp_train(ws: Workspace, change: Callable[[dict], None], name: str = "input.json") -> List[str]:
    return ["train", ws.edit_dp(change, name), "--output-dir", "dp/out", "--no-progress"]


def _native_train(ws: Workspace, change: Callable[[dict], None], name: str = "config.yaml") -> List[str]:
    return ["train", ws.edit_native(change, name), "--no-progress"]


def _set(path: List, value) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        holder = config
        for part in path[:-1]:
            holder = holder[part]
        holder[path[-1]] = value
    return change


def _dp_case(name: str, path: List, value, expect: str, **options) -> Case:
    return Case(name, "deepmd", lambda ws: _dp_train(ws, _set(path, value)), expect, **options)


def _native_case(name: str, path: List, value, expect: str, **options) -> Case:
    return Case(name, "native", lambda ws: _native_train(ws, _set(path, value)), expect, **options)


def _raw_file(relpath: str, content: bytes, command: Callable[[str], List[str]]) -> Callable[[Workspace], List[str]]:
    def spoil(ws: Workspace) -> List[str]:
        path = ws.root / relpath
        path.write_bytes(content)
        return command(relpath)
    return spoil


def _train(path: str) -> List[str]:
    return ["train", path, "--no-progress"]


def _dp_outdir_train(path: str) -> List[str]:
    return ["train", path, "--output-dir", "dp/out", "--no-progress"]


def _extxyz(ws: Workspace, change: Callable[[List[str]], List[str]], name: str = "train.extxyz") -> None:
    path = ws.native / name
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")


def _nan_position(lines: List[str]) -> List[str]:
    lines = list(lines)
    parts = lines[3].split()  # frame 0, atom 1 (line 0: count, 1: comment, 2: atom 0)
    parts[1] = "nan"
    lines[3] = " ".join(parts)
    return lines


def _duplicate_extxyz_atom(lines: List[str]) -> List[str]:
    lines = list(lines)
    n = int(lines[0])
    frame1 = n + 2  # frame 1 starts here
    first, second = lines[frame1 + 2].split(), lines[frame1 + 3].split()
    second[1:4] = first[1:4]
    lines[frame1 + 3] = " ".join(second)
    return lines


def _strip_forces(lines: List[str]) -> List[str]:
    """extxyz without the forces column (Properties without forces:R:3, 3 numbers fewer per atom)."""
    out = []
    for line in lines:
        if "Properties=" in line:
            line = line.replace(":forces:R:3", "")
            out.append(line)
        elif len(line.split()) >= 7:
            out.append(" ".join(line.split()[:-3]))
        else:
            out.append(line)
    return out


def _prev_copy(ws: Workspace, name: str, target: str) -> str:
    shutil.copy(ws.prev / name, ws.root / target)
    return target


def _nan_checkpoint(ws: Workspace) -> str:
    from mlpot.training.checkpoint import load_checkpoint

    state = load_checkpoint(ws.prev / "model.ckpt-4.pt")
    key = next(k for k, v in state["model_state_dict"].items() if v.is_floating_point())
    state["model_state_dict"][key] = state["model_state_dict"][key] * float("nan")
    torch.save(state, ws.root / "nan.ckpt.pt")  # as a broken writer would (mlpot refuses to write it)
    return "nan.ckpt.pt"


def _hold_lock(ws: Workspace) -> List[str]:
    """Another live run (this test process) holds the lock of the output folder."""
    import fcntl

    from mlpot.training.run_folder import LOCK_NAME

    out = ws.dp / "out"
    out.mkdir()
    handle = open(out / LOCK_NAME, "w")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(f"{os.getpid()} {os.uname().nodename}\n")
    handle.flush()
    ws.held = handle  # released when the case ends (the workspace is dropped)
    return ["train", "dp/input.json", "--output-dir", "dp/out", "--no-progress"]


def _results_in_output(ws: Workspace) -> List[str]:
    out = ws.dp / "out"
    shutil.copytree(ws.prev, out)
    return ["train", "dp/input.json", "--output-dir", "dp/out", "--no-progress"]


def _readonly_output(ws: Workspace) -> List[str]:
    return ["train", "dp/input.json", "--output-dir", str(ws.readonly / "out"), "--no-progress"]


def _bands(ws: Workspace, change: Callable[[Path], None], *extra: str) -> List[str]:
    change(ws.bands)
    return ["bands", "fit", "bands", "results", "--quiet", *extra]


def _bands_config(text_change: Callable[[str], str]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / "NN_config.par"
        path.write_text(text_change(path.read_text()))
    return change


def _replace_line(key: str, value: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        lines = [f"{key} = {value}" if line.split("=")[0].strip() == key else line for line in text.splitlines()]
        return "\n".join(lines) + "\n"
    return change


def _bands_eval_model(ws: Workspace) -> List[str]:
    plant_malicious(ws.root / "PPmodel.pth", ws.marker, like={})
    return ["bands", "eval", "bands", "results", "--model", "PPmodel.pth"]


F = r"(?:[\w./-]*/)?"  # an optional folder before a file name in a message


# ---- the peers' front-ends (NequIP YAML, mace_run_train options, MACE-SCF run_train) -----------
def _peer_files(ws: Workspace) -> Path:
    """``peers/`` with a small water extxyz (REF_energy, REF_forces) and a NequIP tutorial config."""
    from ase import Atoms
    from ase.io import write

    from tests.nequip_configs import tutorial

    folder = ws.root / "peers"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]] + 0.05 * rng.normal(size=(3, 3)),
                      cell=[6, 6, 6], pbc=True)
        atoms.info["REF_energy"] = -10.0
        atoms.arrays["REF_forces"] = rng.normal(size=(3, 3))
        frames.append(atoms)
    write(folder / "train.xyz", frames)
    (folder / "nequip.yaml").write_text(tutorial("train.xyz"))
    return folder


def _peer_file(name: str, text: Callable[[Path], str], argv: Callable[[str], List[str]]):
    def spoil(ws: Workspace) -> List[str]:
        folder = _peer_files(ws)
        (folder / name).write_text(text(folder))
        return argv(f"peers/{name}")
    return spoil


def _peer_cases() -> List[Case]:
    train = lambda path: ["train", path, "--no-progress"]  # noqa: E731
    config = lambda path: ["train", "--config", path, "--no-progress"]  # noqa: E731
    mace = "train_file: peers/train.xyz\n"
    return [
        Case("nequip: misspelt key", "nequip",
             _peer_file("typo.yaml", lambda f: (f / "nequip.yaml").read_text().replace("num_layers:", "num_layer:"), train),
             rf"{F}typo\.yaml: training_module\.model\.num_layer: interpolation \$\{{num_layers\}}"),
        Case("nequip: -cn of a missing file", "nequip", lambda ws: ["train", "-cn", "nowhere.yaml", "--no-progress"],
             r"nowhere\.yaml"),
        Case("mace: unknown option", "mace", _peer_file("opts.yaml", lambda f: mace + "name: run\nhidden_irrep: 8x0e\n", config),
             rf"{F}opts\.yaml: hidden_irrep: unknown mace_run_train option \(did you mean hidden_irreps\?\)"),
        Case("mace: missing name", "mace", _peer_file("opts.yaml", lambda f: mace, config),
             rf"{F}opts\.yaml: name: missing required option"),
        Case("mace: max_L 'two'", "mace", _peer_file("opts.yaml", lambda f: mace + "name: run\n",
                                                      lambda p: config(p) + ["--max_L", "two"]),
             rf"{F}opts\.yaml: max_L: invalid value 'two'"),
        Case("macescf: no heads", "macescf", lambda ws: ["train", "--train_file", str(_peer_files(ws) / "train.xyz"),
                                                          "--model", "FixedPoint", "--no-progress"],
             r"command line: heads: needs exactly one head"),
    ]


def _cases() -> List[Case]:
    cases: List[Case] = []
    add = cases.append
    # ---- DeePMD input.json: values and keys ---------------------------------------------------
    add(_dp_case("dp rcut_smth > rcut", ["model", "descriptor", "rcut_smth"], 5.0,
                 rf"{F}input\.json: model/descriptor/rcut_smth: must be smaller than rcut"))
    add(_dp_case("dp rcut <= 0", ["model", "descriptor", "rcut"], -4.0,
                 rf"{F}input\.json: model/descriptor/rcut: must be > 0"))
    add(_dp_case("dp numb_steps 'ten'", ["training", "numb_steps"], "ten",
                 rf"{F}input\.json: training/numb_steps: expected an integer, got 'ten'"))
    add(_dp_case("dp rcut 'four'", ["model", "descriptor", "rcut"], "four",
                 rf"{F}input\.json: model[./]descriptor[./]rcut: .*'four'"))
    add(_dp_case("dp start_pref_f 'big'", ["loss", "start_pref_f"], "big",
                 rf"{F}input\.json: loss/start_pref_f: expected a number, got 'big'"))
    add(_dp_case("dp start_lr -1", ["learning_rate", "start_lr"], -1.0,
                 rf"{F}input\.json: learning_rate/start_lr: .*greater than 0"))
    add(_dp_case("dp decay_steps 'x'", ["learning_rate", "decay_steps"], "x",
                 rf"{F}input\.json: learning_rate/decay_steps: expected an integer"))
    add(_dp_case("dp numb_steps 0", ["training", "numb_steps"], 0,
                 rf"{F}input\.json: training/numb_steps: .*greater than or equal to 1"))
    add(_dp_case("dp numb_steps 2.5", ["training", "numb_steps"], 2.5,
                 rf"{F}input\.json: training/numb_steps: expected an integer, got 2\.5"))
    add(_dp_case("dp disp_avg 'no'", ["training", "disp_avg"], "no",
                 rf"{F}input\.json: training/disp_avg: expected true or false"))
    add(_dp_case("dp max_ckpt_keep 0", ["training", "max_ckpt_keep"], 0,
                 rf"{F}input\.json: training/max_ckpt_keep: .*greater than or equal to 1"))
    add(_dp_case("dp batch_size 0", ["training", "training_data", "batch_size"], 0,
                 rf"{F}input\.json: training/training_data/batch_size: batch_size must be >= 1"))
    add(_dp_case("dp batch_size 'many'", ["training", "training_data", "batch_size"], "many",
                 rf"{F}input\.json: training/training_data/batch_size: expected an int or auto"))
    add(_dp_case("dp sel of wrong length", ["model", "descriptor", "sel"], [4, 4, 4],
                 rf"{F}input\.json: model/descriptor/sel: has 3 entries but type_map has 2 types"))
    add(_dp_case("dp neuron negative", ["model", "descriptor", "neuron"], [-4],
                 rf"{F}input\.json: model/descriptor/neuron"))
    add(_dp_case("dp unknown key numb_step", ["training", "numb_step"], 3,
                 rf"{F}input\.json: training/numb_step: unknown key \(did you mean 'numb_steps'\?\)"))
    add(_dp_case("dp unknown descriptor type", ["model", "descriptor", "type"], "se_e2_x",
                 rf"{F}input\.json: model/descriptor/type: unknown type 'se_e2_x'.*did you mean"))
    add(_dp_case("dp system not found", ["training", "training_data", "systems"], ["sys4", "nowhere"],
                 rf"{F}input\.json: training/training_data/systems\[1\]: no such file or directory"))
    add(_dp_case("dp systems root without systems", ["training", "training_data", "systems"], "nowhere",
                 rf"{F}input\.json: training/training_data/systems: no system \(folder with type\.raw\)"))
    add(_dp_case("dp type_map without an element of the data", ["model", "type_map"], ["C", "O"],
                 r"sys4/type_map\.raw: type_map: element\(s\) \['H'\] of type_map\.raw \['C', 'H'\] not in the type_map"))
    add(_dp_case("dp training_data a list", ["training", "training_data"], ["sys4"],
                 rf"{F}input\.json: training/training_data: expected a mapping, got list"))
    add(Case("dp NaN literal", "deepmd", _raw_file(
        "dp/nan.json",
        b'{"model": {"type_map": ["C", "H"], "descriptor": {"type": "se_e2_a", "sel": [4, 4], "rcut": 4.0, '
        b'"rcut_smth": 0.5, "neuron": [4], "axis_neuron": 2}, "fitting_net": {"neuron": [8]}}, '
        b'"learning_rate": {"start_lr": NaN}, "training": {"training_data": {"systems": ["sys4"]}, "numb_steps": 2}}',
        _dp_outdir_train), rf"{F}nan\.json: learning_rate/start_lr: expected a finite number, got nan"))
    add(Case("dp Infinity in loss", "deepmd", lambda ws: _dp_train(ws, _set(["loss", "limit_pref_f"], float("inf"))),
             rf"{F}input\.json: loss/limit_pref_f: expected a finite number, got inf"))
    # ---- DeePMD input.json: the file itself --------------------------------------------------
    add(Case("dp JSON syntax error", "deepmd", _raw_file("dp/syntax.json", b'{"model": {,}', _train),
             rf"{F}syntax\.json: invalid JSON at line 1, column 12"))
    add(Case("dp empty JSON", "deepmd", _raw_file("dp/empty.json", b"", _train),
             rf"{F}empty\.json: empty file"))
    add(Case("dp missing JSON", "deepmd", lambda ws: _train("dp/missing.json"), rf"{F}missing\.json: file not found"))
    add(Case("dp binary file as config", "deepmd", _raw_file("dp/binary.json", bytes(range(256)) * 4, _train),
             rf"{F}binary\.json: not a text file"))
    add(Case("dp directory as config", "deepmd", lambda ws: _train("dp/sys4"),
             rf"{F}sys4: a directory, not a config file"))
    add(Case("dp top level a list", "deepmd", _raw_file("dp/list.json", b"[1, 2]", _train),
             rf"{F}list\.json: expected a mapping at the top level, got list"))
    add(Case("dp JSON that is no DeePMD input", "deepmd", _raw_file("dp/other.json", b'{"a": 1}', _train),
             rf"{F}other\.json: not a recognised peer config"))
    add(Case("dp convert: numb_steps 'ten'", "deepmd",
             lambda ws: ["convert", ws.edit_dp(_set(["training", "numb_steps"], "ten"))],
             rf"{F}input\.json: training/numb_steps: expected an integer"))
    add(Case("dp convert: missing system", "deepmd",
             lambda ws: ["convert", ws.edit_dp(_set(["training", "training_data", "systems"], ["x"]))],
             rf"{F}input\.json: training/training_data/systems\[0\]: no such file"))
    # ---- DeePMD data -------------------------------------------------------------------------
    add(Case("dp two atoms on one site (train)", "deepmd",
             lambda ws: (_set_coord(ws, "sys4", _duplicate_atom), _dp_outdir_train("dp/input.json"))[1],
             r"sys4: frame 2: atom 0 \(C\) and atom 1 \(H\) are 0\.0000 Å apart"))
    add(Case("dp atoms 0.1 Å apart", "deepmd",
             lambda ws: (_set_coord(ws, "sys5", lambda c: np.concatenate([c[:, :3], c[:, :3] + [0.1, 0, 0], c[:, 6:]], 1)),
                         _dp_outdir_train("dp/input.json"))[1],
             r"sys5: frame 0: atom 0 \(C\) and atom 1 \(H\) are 0\.1000 Å apart"))
    add(Case("dp NaN coordinate", "deepmd",
             lambda ws: (_set_coord(ws, "sys4", lambda c: np.where(np.arange(c.size).reshape(c.shape) == 7, np.nan, c)),
                         _dp_outdir_train("dp/input.json"))[1], r"sys4.*frame 0.*non-finite value"))
    add(Case("dp infinite energy", "deepmd",
             lambda ws: (np.save(_npy(ws, "sys4", "energy"), np.full(5, np.inf)), _dp_outdir_train("dp/input.json"))[1],
             r"sys4.*frame 0.*non-finite value"))
    add(Case("dp coord.npy of the wrong width", "deepmd",
             lambda ws: (_set_coord(ws, "sys4", lambda c: c[:, :-1]), _dp_outdir_train("dp/input.json"))[1],
             r"sys4.*coord"))
    add(Case("dp force.npy of fewer frames", "deepmd",
             lambda ws: (np.save(_npy(ws, "sys4", "force"), np.load(_npy(ws, "sys4", "force"))[:3]),
                         _dp_outdir_train("dp/input.json"))[1], r"sys4.*force"))
    add(Case("dp truncated coord.npy", "deepmd",
             lambda ws: (_npy(ws, "sys4", "coord").write_bytes(_npy(ws, "sys4", "coord").read_bytes()[:100]),
                         _dp_outdir_train("dp/input.json"))[1], r"sys4.*coord\.npy"))
    add(Case("dp coord.npy not a numpy file", "deepmd",
             lambda ws: (_npy(ws, "sys4", "coord").write_text("1 2 3\n"), _dp_outdir_train("dp/input.json"))[1],
             r"sys4.*coord\.npy"))
    add(Case("dp type.raw missing", "deepmd",
             lambda ws: ((ws.dp / "sys4" / "type.raw").unlink(), _dp_outdir_train("dp/input.json"))[1],
             r"sys4.*type\.raw"))
    add(Case("dp type.raw of the wrong length", "deepmd",
             lambda ws: ((ws.dp / "sys4" / "type.raw").write_text("0\n1\n0\n"), _dp_outdir_train("dp/input.json"))[1],
             r"sys4.*(type\.raw|atoms)"))
    add(Case("dp type index beyond type_map.raw", "deepmd",
             lambda ws: ((ws.dp / "sys4" / "type.raw").write_text("0\n1\n0\n5\n"), _dp_outdir_train("dp/input.json"))[1],
             r"sys4.*type"))
    add(Case("dp forces missing in every system", "deepmd",
             lambda ws: ([_npy(ws, s, "force").unlink() for s in ("sys4", "sys5")], _dp_outdir_train("dp/input.json"))[1],
             rf"{F}input\.json: loss/start_pref_f: .*forces"))
    # ---- output folders, restart, models given to train ----------------------------------------
    add(Case("dp output folder locked by a live run", "deepmd", _hold_lock,
             rf"{F}dp/out: output_dir: the output folder is in use by another mlpot run \(PID {os.getpid()}\)"))
    add(Case("dp output folder holds another run's results", "deepmd", _results_in_output,
             rf"{F}dp/out: output_dir: holds the results of an earlier run .*--restart latest.*--force"))
    add(Case("dp read-only output folder", "deepmd", _readonly_output,
             r"out: output_dir: the output folder cannot be written: Read-only file system", needs="readonly"))
    add(Case("native output_dir is a file", "native",
             lambda ws: ((ws.native / "out").write_text("x"), _train("native/config.yaml"))[1],
             rf"{F}native/out: output_dir: the output folder cannot be written"))
    add(Case("dp --restart latest without checkpoint", "deepmd",
             lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--restart", "latest"],
             rf"{F}input\.json: --restart: no checkpoint model\.ckpt-<step>\.pt in .*dp/out"))
    add(Case("dp --restart truncated checkpoint", "deepmd",
             lambda ws: ((ws.root / "cut.pt").write_bytes((ws.prev / "model.ckpt-4.pt").read_bytes()[:3000]),
                         ["train", "dp/input.json", "--output-dir", "dp/out", "--restart", "cut.pt"])[1],
             r"cut\.pt: cannot read checkpoint \(truncated or corrupt file"))
    add(Case("dp --restart a frozen model", "deepmd",
             lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--restart", "prev/model.pt"],
             r"prev/model\.pt: not an mlpot training checkpoint"))
    add(Case("dp --restart a directory", "deepmd",
             lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--restart", "prev"],
             r"prev: a directory, not a model file"))
    add(Case("dp --init-model missing", "deepmd",
             lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--init-model", "nowhere.pt"],
             r"nowhere\.pt: no such file"))
    add(Case("dp --finetune a directory", "deepmd",
             lambda ws: ["train", "dp/input.json", "--output-dir", "dp/out", "--finetune", "prev"],
             r"prev: a directory, not a model file"))
    add(Case("dp --init-model runs code", "deepmd",
             lambda ws: (plant_malicious(ws.root / "evil.pt", ws.marker),
                         ["train", "dp/input.json", "--output-dir", "dp/out", "--init-model", "evil.pt"])[1],
             r"evil\.pt: refused: the file holds a Python object"))
    # ---- native YAML -----------------------------------------------------------------------------
    add(_native_case("native rcut 'four'", ["model", "descriptor", "rcut"], "four",
                     rf"{F}config\.yaml: model/descriptor/rcut: .*'four'"))
    add(_native_case("native rcut_smth > rcut", ["model", "descriptor", "rcut_smth"], 9.0,
                     rf"{F}config\.yaml: model/descriptor/rcut_smth: must be smaller than rcut"))
    add(_native_case("native unknown key", ["training", "numb_step"], 3,
                     rf"{F}config\.yaml: training\.numb_step: unknown key \(did you mean 'numb_steps'\?\)"))
    add(_native_case("native numb_steps 'ten'", ["training", "numb_steps"], "ten",
                     rf"{F}config\.yaml: training\.numb_steps: .*integer"))
    add(_native_case("native batch_size -1", ["data", "train", "batch_size"], -1,
                     rf"{F}config\.yaml: data\.train\.batch_size"))
    add(_native_case("native min_distance -1", ["data", "min_distance"], -1,
                     rf"{F}config\.yaml: data\.min_distance: .*greater than or equal to 0"))
    add(_native_case("native missing data file", ["data", "train", "paths"], ["nowhere.extxyz"],
                     rf"{F}config\.yaml: data\.train\.paths\[0\]: no such file or directory"))
    add(_native_case("native lr .inf", ["lr_schedule", "start_lr"], float("inf"),
                     rf"{F}config\.yaml: lr_schedule\.start_lr: expected a finite number"))
    add(_native_case("native unknown loss term", ["loss", "terms", "forcez"], {"weight": 1.0},
                     rf"{F}config\.yaml: loss\.terms\.forcez"))
    add(_native_case("native unknown optimizer", ["optimizer", "name"], "adamm",
                     rf"{F}config\.yaml: optimizer\.name: .*adam"))
    add(Case("native YAML syntax error", "native", _raw_file("native/bad.yaml", b"model: [1, 2\ndata: 3\n", _train),
             rf"{F}bad\.yaml: invalid YAML at line \d+, column \d+"))
    add(Case("native empty YAML", "native", _raw_file("native/empty.yaml", b"", _train), rf"{F}empty\.yaml: empty file"))
    add(Case("native comments-only YAML", "native", _raw_file("native/comments.yaml", b"# nothing\n", _train),
             rf"{F}comments\.yaml: empty file \(comments only\)"))
    add(Case("native binary YAML", "native", _raw_file("native/binary.yaml", bytes(range(128, 256)), _train),
             rf"{F}binary\.yaml: not a text file"))
    add(Case("native YAML top level a string", "native", _raw_file("native/str.yaml", b"hello\n", _train),
             rf"{F}str\.yaml: expected a mapping at the top level, got str"))
    add(Case("native empty extxyz", "native",
             lambda ws: ((ws.native / "valid.extxyz").write_text(""), _train("native/config.yaml"))[1],
             r"valid\.extxyz: holds no frame"))
    add(Case("native truncated extxyz", "native",
             lambda ws: (_extxyz(ws, lambda lines: lines[:-3]), _train("native/config.yaml"))[1], r"train\.extxyz"))
    add(Case("native NaN position in extxyz", "native",
             lambda ws: (_extxyz(ws, _nan_position), _train("native/config.yaml"))[1],
             r"train\.extxyz.*frame 0.*non-finite value"))
    add(Case("native two atoms on one site (extxyz)", "native",
             lambda ws: (_extxyz(ws, _duplicate_extxyz_atom), _train("native/config.yaml"))[1],
             r"train\.extxyz: frame 1: atom 0 \(\w+\) and atom 1 \(\w+\) are 0\.0000 Å apart"))
    add(Case("native forces missing (extxyz without forces)", "native",
             lambda ws: ([_extxyz(ws, _strip_forces, n) for n in ("train.extxyz", "valid.extxyz")],
                         _train("native/config.yaml"))[1],
             rf"{F}config\.yaml: loss\.terms\.forces: .*forces"))
    add(Case("native energies of 1e200 eV (non-finite data statistics)", "native",
             lambda ws: (_native_huge_energies(ws), _train("native/config.yaml"))[1],
             rf"{F}config\.yaml: data\.train: the model's statistics of the training data are not finite"))
    # ---- models and checkpoints given to the other commands --------------------------------------
    add(Case("test: a directory as model", "model", lambda ws: ["test", "prev", "dp/sys4"],
             r"prev: a directory, not a model file"))
    add(Case("test: missing model", "model", lambda ws: ["test", "nowhere.pt", "dp/sys4"], r"nowhere\.pt: no such file"))
    add(Case("test: truncated model", "model",
             lambda ws: ((ws.root / "cut.pt").write_bytes((ws.prev / "model.pt").read_bytes()[:2000]),
                         ["test", "cut.pt", "dp/sys4"])[1], r"cut\.pt: cannot read checkpoint \(truncated or corrupt"))
    add(Case("test: a text file as model", "model",
             lambda ws: ((ws.root / "notes.pt").write_text("not a model\n"), ["test", "notes.pt", "dp/sys4"])[1],
             r"notes\.pt: cannot read checkpoint"))
    add(Case("test: model that runs code", "model",
             lambda ws: (plant_malicious(ws.root / "evil.pt", ws.marker), ["test", "evil.pt", "dp/sys4"])[1],
             r"evil\.pt: refused: the file holds a Python object"))
    add(Case("test: model with NaN weights", "model",
             lambda ws: ["test", _nan_checkpoint(ws), "dp/sys4"], r"nan\.ckpt\.pt: not loaded: .*non-finite"))
    add(Case("test: two atoms on one site", "data",
             lambda ws: (_set_coord(ws, "sys4", _duplicate_atom), ["test", "prev/model.pt", "dp/sys4"])[1],
             r"sys4: frame 2: atom 0 \(C\) and atom 1 \(H\) are 0\.0000 Å apart"))
    add(Case("test: data path missing", "data", lambda ws: ["test", "prev/model.pt", "dp/nowhere"],
             r"nowhere: path does not exist"))
    add(Case("freeze: checkpoint that runs code", "model",
             lambda ws: (plant_malicious(ws.root / "evil.pt", ws.marker), ["freeze", "evil.pt", "-o", "frozen.pt"])[1],
             r"evil\.pt: refused"))
    add(Case("freeze: checkpoint with NaN weights", "model",
             lambda ws: ["freeze", _nan_checkpoint(ws), "-o", "frozen.pt"], r"nan\.ckpt\.pt: not loaded: .*non-finite"))
    add(Case("freeze: no checkpoint in the folder", "model", lambda ws: ["freeze", "-c", "dp", "-o", "frozen.pt"],
             r"dp: no checkpoint found"))
    add(Case("change-bias: NaN bias value", "model",
             lambda ws: ["change-bias", "prev/model.pt", "-b", "nan", "0.0", "-o", "updated.pt"],
             r"updated\.pt: not written: .*non-finite"))
    add(Case("change-bias: model that runs code", "model",
             lambda ws: (plant_malicious(ws.root / "evil.pt", ws.marker), ["change-bias", "evil.pt", "-b", "0", "0"])[1],
             r"evil\.pt: refused"))
    add(Case("model-devi: model that runs code", "model",
             lambda ws: (plant_malicious(ws.root / "evil.pt", ws.marker),
                         ["model-devi", "-m", "prev/model.pt", "evil.pt", "-s", "dp/sys4"])[1], r"evil\.pt: refused"))
    add(Case("data info: two atoms on one site", "data",
             lambda ws: (_set_coord(ws, "sys4", _duplicate_atom), ["data", "info", "dp/sys4", "--cutoff", "4"])[1],
             r"sys4: frame 2: atom 0 \(C\) and atom 1 \(H\) are 0\.0000 Å apart"))
    add(Case("data info: missing path", "data", lambda ws: ["data", "info", "dp/nowhere"], r"nowhere: path does not exist"))
    # ---- DeePseudopot -------------------------------------------------------------------------------
    add(Case("bands: no NN_config.par", "deepseudopot",
             lambda ws: _bands(ws, lambda f: (f / "NN_config.par").unlink()), r"NN_config\.par", needs="bands"))
    add(Case("bands: unknown key", "deepseudopot",
             lambda ws: _bands(ws, _bands_config(lambda t: t + "hiddenLayer = 8 8\n")),
             r"NN_config\.par.*hiddenLayer.*did you mean 'hiddenLayers'", needs="bands"))
    add(Case("bands: non-numeric value", "deepseudopot",
             lambda ws: _bands(ws, _bands_config(_replace_line("nQGrid", "many"))), r"NN_config\.par.*nQGrid",
             needs="bands"))
    add(Case("bands: nSystem larger than the systems given", "deepseudopot",
             lambda ws: _bands(ws, _bands_config(_replace_line("nSystem", "2"))), r"_1\.par|system.*1", needs="bands"))
    add(Case("bands: kpoints file missing", "deepseudopot",
             lambda ws: _bands(ws, lambda f: (f / "kpoints_0.par").unlink()), r"kpoints_0\.par", needs="bands"))
    add(Case("bands: inputs folder missing", "deepseudopot",
             lambda ws: ["bands", "fit", "nowhere", "results", "--quiet"], r"nowhere", needs="bands"))
    add(Case("bands: eval of a model that runs code", "deepseudopot", _bands_eval_model, r"PPmodel\.pth",
             needs="bands"))
    cases += _peer_cases()
    return cases


def _native_huge_energies(ws: Workspace) -> None:
    """Energies of 1e200 eV: every loss is infinite (finite labels, finite statistics)."""
    import re

    for name in ("train.extxyz", "valid.extxyz"):
        path = ws.native / name
        path.write_text(re.sub(r"energy=([-\d.eE+]+)", lambda m: f"energy={float(m.group(1)) * 1e200:.6e}",
                               path.read_text()))


CASES = _cases()


def _table() -> str:  # pragma: no cover - `python -m tests.bad_inputs.corpus`: the table of the issue note
    import contextlib
    import io
    import tempfile

    from mlpot.cli import main

    lines = ["| # | front-end | case | exit | message |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        template = build_template(Path(tmp) / "template")
        for number, case in enumerate(CASES, 1):
            if case.needs:
                continue
            root = Path(tmp) / f"case{number}"
            shutil.copytree(template.root, root)
            ws = Workspace(root)
            cwd = os.getcwd()
            err = io.StringIO()
            try:
                os.chdir(root)
                argv = case.spoil(ws)
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = main(argv)
            except BaseException as exc:  # noqa: BLE001 - reported in the table
                code = f"{type(exc).__name__}"
            finally:
                os.chdir(cwd)
            message = (err.getvalue().strip().splitlines() or [""])[-1].replace("|", "\\|").replace(tmp, "…")
            lines.append(f"| {number} | {case.front_end} | {case.name} | {code} | {message} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(_table())
