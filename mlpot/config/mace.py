"""mace_run_train's options (mace-torch 0.3.16) as a front-end of the native engine.

``mlpot train --config config.yaml [--option value ...]`` takes the options under mace_run_train's
names, from a YAML file (``--config``), from the command line (``--r_max 4.5``, ``--r_max=4.5``,
``--ema`` for a flag), or both: the command line wins, as with configargparse. Every option is in the
table of ``_mace_options.py``; an unknown one is a ConfigError with the closest name, a value for an
option that is not built is "not supported yet: <option>". Relative paths are relative to the
current folder (as mace_run_train reads them).

:class:`MaceFrontEnd` turns the options into the native config (``to_native``; ``mlpot convert``
writes it) and the options of the run itself (``run_options``: ``restart`` for restart_latest,
``finetune`` for foundation_model, ``test_files``, ``model_file``). The translation, option by
option (mace_run_train 0.3.16 semantics):

* model options -> a ``type: mace`` section; ``--model MACE`` -> ScaleShiftMACE with a zero shift and
  a non-residual first interaction (mace_run_train builds exactly that); ``E0s``, ``scaling``,
  ``avg_num_neighbors`` (when ``compute_avg_num_neighbors`` is false), ``mean``/``std``,
  ``atomic_numbers``: resolved from the data by the MACE family's hook;
* ``train_file``/``valid_file``/``valid_fraction``/``*_key``/``keep_isolated_atoms`` -> ``data``
  (extxyz, only the ``*_key`` names read as labels, shuffled epochs of ``batch_size`` frames, the
  short last batch dropped; the
  ``valid_fraction`` split is mace's seeded split; isolated atoms excluded from the batches);
* ``loss`` -> ``loss.terms`` (weighted: energy_weight · mean((ΔE/N)²) + forces_weight · mean(ΔF²);
  ef: the same with both weights 1, whatever energy_weight/forces_weight say, as mace_run_train;
  forces_only; stress and virials (ΔΞ/N) add their term; huber: Huber(huber_delta) of ΔE/N, ΔF and
  Δσ; l1l2energyforces: mean |ΔE/N| + mean over atoms of |ΔF|). Means run over the frames carrying
  the label, so a frame without a label never counts as zero (mace compares it with 0 in huber);
* ``optimizer``/``lr``/``beta``/``weight_decay``/``lr_params_factors`` -> Adam(W) with amsgrad and
  mace's five parameter groups (weight decay on the interactions' ``linear`` weights and on the
  products only); ``scheduler`` ReduceLROnPlateau -> ``plateau`` (factor lr_factor, patience
  scheduler_patience validations), ExponentialLR -> ``exp`` per epoch (gamma lr_scheduler_gamma);
* ``max_num_epochs`` -> ``training.numb_epochs``; ``eval_interval`` -> ``training.valid_epochs``;
  ``patience`` -> ``training.patience`` (mace-torch 0.3.16 logs the stop on one process but goes on;
  mlpot stops); ``clip_grad`` -> ``clip_grad_norm``; ``ema``/``ema_decay`` -> ``ema`` (torch_ema's
  warm-up, as ``warmup: true``);
* ``swa`` (stage two) -> two ``train_schedule`` stages in epochs: from ``start_swa`` (default
  max(1, max_num_epochs // 4 * 3)) the loss weights are the swa_* ones and the lr is ``swa_lr``.
  Differences: mace_run_train does not step ReduceLROnPlateau in stage two (mlpot does), and it
  saves the model of the lowest validation loss, mlpot the last one (EMA weights).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mlpot.config._mace_options import MACE_OPTIONS
from mlpot.config.loader import read_yaml
from mlpot.data.extxyz_format import DEFAULT_KEY_MAP
from mlpot.errors import ConfigError, suggest
from mlpot.models.sections import IGNORED, UNSUPPORTED, Key

__all__ = ["MaceFrontEnd", "read_options", "is_mace_config", "options_markdown"]

_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")
_MODEL_KEYS = ("r_max", "radial_type", "num_radial_basis", "num_cutoff_basis", "pair_repulsion", "distance_transform",
               "apply_cutoff", "use_last_readout_only", "interaction", "interaction_first", "max_ell", "correlation",
               "use_agnostic_product", "num_interactions", "MLP_irreps", "radial_MLP", "hidden_irreps",
               "num_channels", "max_L", "gate")
_NON_RESIDUAL = ("RealAgnosticInteractionBlock", "RealAgnosticDensityInteractionBlock")
_HEAD_KEYS = ("train_file", "valid_file", "test_file", "E0s", "valid_fraction", "config_type_weights",
              "compute_avg_num_neighbors", "atomic_numbers", "mean", "std", "avg_num_neighbors", "keep_isolated_atoms",
              "statistics_file", "energy_key", "forces_key", "stress_key", "virials_key", "info_keys", "arrays_keys")
_NAMED_FOUNDATIONS = ("small", "medium", "large", "small_off", "medium_off", "large_off", "mace_omol", "mp")


def _parse(name: str, kind: str, value: Any, where: str) -> Any:
    """An option value read as mace_run_train's argument parser reads it (``kind``: see the table)."""
    if value is None or (kind != "str" and value == "None"):
        return None
    try:
        if kind in ("bool", "flag"):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError("expected a boolean (true/false)")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "float_or_none":
            return None if str(value) == "None" else float(value)
        if kind == "literal":
            return ast.literal_eval(value) if isinstance(value, str) and value[:1] in "[{(" else value
        if kind == "list":
            return list(value) if isinstance(value, (list, tuple)) else str(value).split()
        return value if isinstance(value, str) else str(value)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ConfigError(f"invalid value {value!r}: {exc}", file=where, key=name) from None


class _Table:
    """Option names and aliases of a table."""

    def __init__(self, table: Mapping[str, Key]):
        self.table = table
        self.names = {name: name for name in table}
        self.names.update({alias: name for name, record in table.items() for alias in record.aliases})

    def canonical(self, name: str, where: Optional[str], spelled: str) -> str:
        if name not in self.names:
            hint = suggest(name, list(self.names))
            raise ConfigError("unknown mace_run_train option", file=where, key=spelled,
                              hint=f"did you mean {'--' if spelled.startswith('--') else ''}{hint}?" if hint else None)
        return self.names[name]


def _command_line(argv: Sequence[str], table: _Table) -> Dict[str, Any]:
    """``--name value`` / ``--name=value`` / ``--flag`` pairs of the command line (raw values)."""
    out: Dict[str, Any] = {}
    args = list(argv)
    while args:
        token = args.pop(0)
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r} (options are --name value)", key=token)
        spelled, _, value = token.partition("=")
        name = table.canonical(spelled[2:], None, spelled)
        record = table.table[name]
        if record.annotation == "flag" and not value:
            # a store_true flag; --disallow_random_padding_pt is mace's one store_false
            out[name] = spelled != "--disallow_random_padding_pt"
            continue
        if not value:
            if not args or args[0].startswith("--"):
                raise ConfigError("expected a value", key=spelled)
            value = args.pop(0)
        out[name] = value
    return out


def read_options(config: Optional[os.PathLike] = None, argv: Sequence[str] = (),
                 table: Mapping[str, Key] = MACE_OPTIONS) -> Tuple[Dict[str, Any], set]:
    """(every option with its value, the names given) from a YAML file and the command line."""
    names = _Table(table)
    raw: Dict[str, Tuple[Any, Optional[str]]] = {}
    if config is not None:
        for key, value in read_yaml(config).items():
            raw[names.canonical(str(key), str(config), str(key))] = (value, str(config))
    for name, value in _command_line(argv, names).items():
        raw[name] = (value, None)
    raw.pop("config", None)
    options = {name: _parse(name, str(record.annotation), record.default, None) for name, record in table.items()}
    for name, (value, where) in raw.items():
        record = table[name]
        options[name] = _parse(name, str(record.annotation), value, where)
        default = _parse(name, str(record.annotation), record.default, None)
        if record.status == UNSUPPORTED and options[name] != default and not (
                record.default is None and options[name] in (None, False, "", [], {})):
            raise ConfigError(f"not supported yet: {name}", file=where, key=name)
    return options, set(raw)


def is_mace_config(path: os.PathLike) -> bool:
    """True for a YAML of mace_run_train options: a mapping whose keys are all mace options and that
    names train_file or foundation_model (a native config has a ``model`` mapping and ``training``)."""
    try:
        data = read_yaml(path)
    except ConfigError:
        return False
    names = _Table(MACE_OPTIONS).names
    return all(str(key) in names for key in data) and any(k in data for k in ("train_file", "heads", "foundation_model"))


def _as_list(value) -> List[str]:
    return [] if value is None else [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


class MaceFrontEnd:
    """mace_run_train options -> native config (module docstring). Subclasses (MACE-SCF) extend
    ``OPTIONS`` and override the section methods."""

    OPTIONS: Mapping[str, Key] = MACE_OPTIONS

    def __init__(self, options: Dict[str, Any], given: set, file: Optional[str] = None):
        self.options, self.given, self.file = dict(options), set(given), file
        if not self.options.get("name"):
            raise ConfigError("missing required option: name", file=file, key="name")
        self._apply_heads()
        if not self.options.get("train_file") and not self.options.get("foundation_model"):
            raise ConfigError("missing option: train_file", file=file, key="train_file")

    @classmethod
    def from_sources(cls, config: Optional[os.PathLike] = None, argv: Sequence[str] = ()) -> "MaceFrontEnd":
        options, given = read_options(config, argv, cls.OPTIONS)
        return cls(options, given, None if config is None else str(config))

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    def _apply_heads(self) -> None:
        """One ``heads`` entry: its values override the top-level options (mace's priority)."""
        heads = self.options.get("heads")
        if heads is None:
            return
        if not isinstance(heads, dict) or len(heads) != 1:
            raise self.error("not supported yet: heads with several heads (multi-head training)", "heads")
        (name, head), = heads.items()
        for key, value in (head or {}).items():
            if key not in _HEAD_KEYS:
                hint = suggest(str(key), _HEAD_KEYS)
                raise ConfigError("unknown head key", file=self.file, key=f"heads.{name}.{key}",
                                  hint=f"did you mean {hint!r}?" if hint else None)
            if key in ("info_keys", "arrays_keys"):
                for prop, file_key in (value or {}).items():
                    option = {"energy": "energy_key", "forces": "forces_key", "stress": "stress_key",
                              "virials": "virials_key"}.get(prop)
                    if option is None:
                        raise self.error(f"not supported yet: the {prop!r} property", f"heads.{name}.{key}.{prop}")
                    self.options[option] = file_key
            else:
                self.options[key] = _parse(key, str(self.OPTIONS[key].annotation), value, self.file)
                self.given.add(key)
        self.options["heads"] = None

    # ---- sections ----------------------------------------------------------------------------
    def model_section(self) -> Dict[str, Any]:
        o = self.options
        if o["model"] not in ("MACE", "ScaleShiftMACE"):
            raise self.error(f"not supported yet: model {o['model']}", "model")
        if not o["compute_forces"]:
            raise self.error("not supported yet: compute_forces false", "compute_forces")
        section: Dict[str, Any] = {"type": "mace", "model": "ScaleShiftMACE"}
        section.update({key: o[key] for key in _MODEL_KEYS if o[key] is not None})
        if o["model"] == "MACE" and section["interaction_first"] not in _NON_RESIDUAL:
            section["interaction_first"] = "RealAgnosticInteractionBlock"
        section["scaling"] = o["scaling"]
        if o["std"] is not None:
            section["atomic_inter_scale"] = o["std"]
            if o["mean"] is not None and o["model"] == "ScaleShiftMACE":
                section["atomic_inter_shift"] = o["mean"]
        elif o["mean"] is not None:
            raise self.error("mean needs std (mace_run_train computes both from the data unless std is given)", "mean")
        if o["model"] == "MACE":
            section["atomic_inter_shift"] = 0.0
        if not o["compute_avg_num_neighbors"]:
            section["avg_num_neighbors"] = o["avg_num_neighbors"]
        if o["atomic_numbers"] is not None:
            section["atomic_numbers"] = [int(z) for z in o["atomic_numbers"]]
        e0s = o["E0s"]
        if isinstance(e0s, str) and e0s.lower() in ("average", "estimated", "foundation"):
            e0s = e0s.lower()
        elif isinstance(e0s, dict):
            e0s = {int(z): float(e) for z, e in e0s.items()}
        section["E0s"] = e0s
        return section

    def _files(self, option: str) -> List[str]:
        files = _as_list(self.options[option])
        for path in files:
            if path.endswith((".h5", ".hdf5", ".lmdb", ".aselmdb")) or os.path.isdir(path):
                raise self.error(f"not supported yet: {option} {path} (HDF5/LMDB datasets); give extxyz files", option)
        return files

    def data_section(self) -> Dict[str, Any]:
        o = self.options
        chosen = {o["energy_key"]: "energy", o["forces_key"]: "forces", o["stress_key"]: "stress",
                  o["virials_key"]: "virial"}
        # only the *_key names are read, as mace_run_train reads them (not mlpot's other default names)
        key_map = {name: None for name, key in DEFAULT_KEY_MAP.items() if key in chosen.values()}
        key_map.update(chosen)
        train = {"paths": self._files("train_file"), "format": "extxyz", "key_map": key_map,
                 "batch_size": o["batch_size"], "sampler": "epoch", "drop_last": True,
                 "isolated_atoms": "keep" if o["keep_isolated_atoms"] else "exclude"}
        data: Dict[str, Any] = {"train": train}
        valid = {"paths": self._files("valid_file"), "format": "extxyz", "key_map": dict(key_map),
                 "batch_size": o["valid_batch_size"], "sampler": "epoch", "shuffle": False}
        if not valid["paths"]:
            data.update(valid_fraction=o["valid_fraction"], split_seed=o["seed"])
        data["valid"] = valid
        return data

    def loss_terms(self, stage_two: bool = False) -> Dict[str, Any]:
        o, prefix = self.options, "swa_" if stage_two else ""
        ew, fw = o[prefix + "energy_weight"], o[prefix + "forces_weight"]
        kind = o["loss"]
        if kind == "weighted":
            return {"energy_per_atom": ew, "forces": fw}
        if kind == "ef":  # mace_run_train 0.3.16 falls through to WeightedEnergyForcesLoss(1, 1)
            return {"energy_per_atom": 1.0, "forces": 1.0}
        if kind == "forces_only":
            return {"forces": fw}
        if kind == "stress":
            return {"energy_per_atom": ew, "forces": fw, "stress": o[prefix + "stress_weight"]}
        if kind == "virials":
            return {"energy_per_atom": ew, "forces": fw, "virial_per_atom": o[prefix + "virials_weight"]}
        if kind == "huber":
            huber = {"function": "huber", "huber_delta": o["huber_delta"]}
            return {"energy_per_atom": {"weight": ew, **huber}, "forces": {"weight": fw, **huber},
                    "stress": {"weight": o[prefix + "stress_weight"], **huber}}
        if kind == "l1l2energyforces":
            return {"energy_per_atom": {"weight": ew, "function": "mae"},
                    "forces": {"weight": fw, "function": "mae", "vector_norm": True}}
        choices = ("weighted", "ef", "forces_only", "stress", "virials", "huber", "l1l2energyforces", "universal",
                   "dipole", "dipole_polar", "energy_forces_dipole")
        if kind in choices:
            raise self.error(f"not supported yet: loss {kind}", "loss")
        hint = suggest(str(kind), choices)
        raise ConfigError(f"unknown loss {kind!r}", file=self.file, key="loss", hint=f"did you mean {hint!r}?" if hint else None)

    def optimizer_section(self) -> Dict[str, Any]:
        o = self.options
        if o["optimizer"] not in ("adam", "adamw"):
            raise self.error(f"not supported yet: optimizer {o['optimizer']}" if o["optimizer"] == "schedulefree"
                             else f"unknown optimizer {o['optimizer']!r} (adam, adamw, schedulefree)", "optimizer")
        factors = {"embedding_lr_factor": 1.0, "interactions_lr_factor": 1.0, "products_lr_factor": 1.0,
                   "readouts_lr_factor": 1.0, **dict(o["lr_params_factors"])}
        if any(float(v) <= 0 for v in factors.values()):
            raise self.error("not supported yet: lr_params_factors of 0 (frozen layers)", "lr_params_factors")
        lr, wd = o["lr"], o["weight_decay"]
        groups = [("embedding", ["node_embedding.*"], 0.0, "embedding"),
                  ("interactions_decay", ["interactions.*.linear.weight"], wd, "interactions"),
                  ("interactions_no_decay", ["interactions.*"], 0.0, "interactions"),
                  ("products", ["products.*"], wd, "products"), ("readouts", ["readouts.*"], 0.0, "readouts")]
        return {"name": o["optimizer"], "lr": lr, "betas": [o["beta"], 0.999], "kwargs": {"amsgrad": True},
                "groups": [{"name": name, "params": params, "weight_decay": decay,
                            "lr": lr * float(factors[f"{part}_lr_factor"])} for name, params, decay, part in groups]}

    def lr_schedule(self) -> Dict[str, Any]:
        o = self.options
        if o["scheduler"] == "ReduceLROnPlateau":
            return {"type": "plateau", "factor": o["lr_factor"], "patience": o["scheduler_patience"]}
        if o["scheduler"] == "ExponentialLR":
            return {"type": "exp", "per_epoch": True, "decay_steps": 1, "decay_rate": o["lr_scheduler_gamma"],
                    "stop_lr": 0.0}
        raise self.error(f"unknown scheduler {o['scheduler']!r} (ReduceLROnPlateau, ExponentialLR)", "scheduler")

    def stages(self) -> List[Dict[str, Any]]:
        """Stage two (``swa``) as a second stage; [] without it."""
        o = self.options
        if not o["swa"]:
            return []
        if o["loss"] == "forces_only":
            raise self.error("stage two (swa) cannot be used with the forces_only loss", "swa")
        epochs = o["max_num_epochs"]
        start = o["start_swa"] if o["start_swa"] is not None else max(1, epochs // 4 * 3)
        if start >= epochs:  # mace_run_train warns and never reaches stage two
            return []
        return [{"name": "stage_one", "start": 0, "end": start - 1, "loss": self.loss_terms()},
                {"name": "stage_two", "start": start, "end": epochs - 1, "lr": o["swa_lr"],
                 "loss": self.loss_terms(stage_two=True)}]

    def to_native(self) -> Dict[str, Any]:
        """The native config dict (paths as given: relative ones are relative to the current folder)."""
        o = self.options
        work_dir = o["work_dir"]
        checkpoints = o["checkpoints_dir"] or os.path.join(work_dir, "checkpoints")
        native: Dict[str, Any] = {
            "family": "mace", "seed": o["seed"], "dtype": o["default_dtype"], "output_dir": work_dir,
            "model": self.model_section(), "data": self.data_section(), "optimizer": self.optimizer_section(),
            "lr_schedule": self.lr_schedule(), "loss": {"terms": self.loss_terms()},
            "training": {"numb_epochs": o["max_num_epochs"], "valid_epochs": o["eval_interval"],
                         "patience": o["patience"], "clip_grad_norm": o["clip_grad"],
                         "change_bias_after_training": False},
            "logging": {"disp_freq": 10 ** 9},
            "checkpoint": {"dir": os.path.relpath(checkpoints, work_dir), "prefix": f"{o['name']}_run-{o['seed']}"},
        }
        stages = self.stages()
        if stages:
            native["train_schedule"] = stages
        if o["ema"]:
            native["ema"] = {"decay": o["ema_decay"], "warmup": True}
        return native

    def run_options(self) -> Dict[str, Any]:
        """What the run needs besides the config: restart, finetune, test_files, model_file."""
        o = self.options
        foundation = o["foundation_model"]
        if foundation is not None:
            if foundation in _NAMED_FOUNDATIONS or not Path(foundation).exists():
                raise self.error(f"not supported yet: foundation model {foundation!r} (give the path of a .model, "
                                 "checkpoint or mlpot model file)", "foundation_model")
            if not o["foundation_filter_elements"]:
                raise self.error("not supported yet: foundation_filter_elements false (fresh readouts)",
                                 "foundation_filter_elements")
        return {"restart": "latest" if o["restart_latest"] else None, "finetune": foundation,
                "test_files": self._files("test_file"),
                "model_file": os.path.join(o["model_dir"] or o["work_dir"], f"{o['name']}.pt")}


def options_markdown(table: Mapping[str, Key] = MACE_OPTIONS) -> str:
    """The option table as Markdown (docs/mace_models.md)."""
    status = {IGNORED: "ignored", UNSUPPORTED: "not supported yet"}
    lines = ["| option | default | status | note |", "|---|---|---|---|"]
    for name, record in table.items():
        aliases = "".join(f", `--{alias}`" for alias in record.aliases)
        default = "" if record.default is None else f"`{record.default}`"
        lines.append(f"| `--{name}`{aliases} | {default} | {status.get(record.status, 'supported')} | "
                     f"{record.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - regenerates the option table of docs/mace_models.md
    print(options_markdown())
