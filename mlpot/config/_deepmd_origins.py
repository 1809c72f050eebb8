"""Where each translated key of a DeePMD input came from: native key path -> the key in input.json.

The translation (``_deepmd_sections``, ``deepmd.to_native``) renames keys (``learning_rate/start_lr``
-> ``lr_schedule.start_lr``, ``training/training_data/systems`` -> ``data.train.paths``...). An error
raised later, while the native config is validated or trained, names the native key; ``mlpot train``
and ``mlpot convert`` hand this map to :func:`mlpot.errors.in_file` so that the message names the key
as the user wrote it, in DeePMD's slash spelling. The model section is copied unchanged (its errors
already name ``model/...``), so it needs no entry.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from mlpot.errors import KeyMap

__all__ = ["key_origins"]

# native key (relative to the section) -> DeePMD key, for the keys renamed by the translation
# (learning_rate keys keep their names: lr_schedule.<key> -> learning_rate/<key> by prefix)
_TRAINING = {"numb_steps": "numb_steps", "sampler_epochs": "numb_epoch", "task_epochs": "num_epoch_dict",
             "clip_grad_norm": "gradient_max_norm",
             "change_bias_after_training": "change_bias_after_training", "zero_stage": "zero_stage",
             "compute_dtype": "mixed_precision/compute_prec"}
_LOGGING = {"lcurve": "disp_file", "disp_freq": "disp_freq", "disp_training": "disp_training",
            "time_training": "time_training", "tensorboard": "tensorboard",
            "tensorboard_log_dir": "tensorboard_log_dir", "tensorboard_freq": "tensorboard_freq",
            "disp_avg": "disp_avg", "profile_file": "profiling_file"}
_CHECKPOINT = {"prefix": "save_ckpt", "every": "save_freq", "keep": "max_ckpt_keep", "dir": "save_dir"}
_DATA = {"paths": "systems", "batch_size": "batch_size", "set_prefix": "set_prefix", "auto_prob": "auto_prob",
         "sys_probs": "sys_probs", "numb_btch": "numb_btch"}
_FULL_VALIDATION = {"live": "full_validation", "ema": "ema_full_validation", "freq": "validation_freq",
                    "start": "full_val_start", "metric": "validation_metric", "save_best": "save_best",
                    "max_best": "max_best_ckpt", "best_dir": "save_best_dir", "log_file": "full_val_file"}
# ener loss: native term -> DeePMD prefactor suffix
_ENER_SUFFIX = {"energy": "e", "forces": "f", "virial": "v", "atom_energy": "ae", "atom_pref": "pf",
                "generalized_force": "gf"}
_DOS_SUFFIX = {"dos": "dos", "dos_cdf": "cdf", "atom_dos": "ados", "atom_dos_cdf": "acdf"}
_TENSOR_KEY = {"dipole": "pref", "polarizability": "pref", "atomic_dipole": "pref_atomic",
               "atomic_polarizability": "pref_atomic"}


def key_origins(config: Dict[str, Any], native: Dict[str, Any], keys: Optional[KeyMap] = None) -> KeyMap:
    """The :class:`KeyMap` (``keys``, filled in, or a new one) of a checked DeePMD input ``config``
    and its translation ``native``."""
    keys = KeyMap() if keys is None else keys
    training = config.get("training") or {}
    keys.add("seed", "training/seed")
    keys.add("lr_schedule", "learning_rate")
    legacy_warmup = bool(training.get("warmup_steps")) and not (config.get("learning_rate") or {}).get("warmup_steps")
    keys.add(["lr_schedule", "warmup_steps"],
             "training/warmup_steps" if legacy_warmup else "learning_rate/warmup_steps")
    keys.add(["optimizer", "weight_decay"], "optimizer/weight_decay")
    optimizer_type = "type" in (config.get("optimizer") or {})
    keys.add(["optimizer", "name"], "optimizer/type" if optimizer_type else "training/opt_type")
    keys.add(["optimizer", "betas"], "optimizer/adam_beta1")
    for section, table, prefix in (("training", _TRAINING, "training"), ("logging", _LOGGING, "training"),
                                   ("checkpoint", _CHECKPOINT, "training")):
        for name, user in table.items():
            keys.add([section, name], f"{prefix}/{user}")
    keys.add(["ema", "decay"], "training/ema_decay")
    keys.add("full_validation", "validating")
    for name, user in _FULL_VALIDATION.items():
        keys.add(["full_validation", name], f"validating/{user}")
    if "tasks" in native:
        for task, entry in native["tasks"].items():
            base = f"training/data_dict/{task}"
            _data_origins(keys, ["tasks", task, "data"], base, training.get("data_dict", {}).get(task) or {})
            _loss_origins(keys, ["tasks", task, "loss"], f"loss_dict/{task}", entry.get("loss") or {})
            keys.add(["tasks", task, "prob"], f"training/model_prob/{task}")
    else:
        _data_origins(keys, ["data"], "training", training)
        _loss_origins(keys, ["loss"], "loss", native.get("loss") or {})
    return keys


def _data_origins(keys: KeyMap, native: List[str], user: str, section: Dict[str, Any]) -> None:
    """data.train / data.valid / data.stat_file of one (task's) data section."""
    keys.add(native, user)
    keys.add(native + ["stat_file"], f"{user}/stat_file")
    keys.add(native + ["stat_file_mode"], f"{user}/stat_file_mode")
    for split, name in (("train", "training_data"), ("valid", "validation_data")):
        keys.add(native + [split], f"{user}/{name}")
        for key, deepmd in _DATA.items():
            keys.add(native + [split, key], f"{user}/{name}/{deepmd}")
        systems = (section.get(name) or {}).get("systems")
        if isinstance(systems, str):  # one root searched for systems: every path found is that key
            keys.add(native + [split, "paths"], f"{user}/{name}/systems", below=False)


def _loss_origins(keys: KeyMap, native: List[str], user: str, loss: Dict[str, Any]) -> None:
    """loss.terms.<term>[.start_pref|limit_pref|weight] -> the prefactor key that turned the term on."""
    keys.add(native, user)
    for term in (loss.get("terms") or {}):
        if term in _ENER_SUFFIX:
            suffix = _ENER_SUFFIX[term]
        elif term in _DOS_SUFFIX:
            suffix = _DOS_SUFFIX[term]
        elif term in _TENSOR_KEY:
            keys.add(native + ["terms", term], f"{user}/{_TENSOR_KEY[term]}")
            continue
        else:
            continue
        keys.add(native + ["terms", term], f"{user}/start_pref_{suffix}")
        keys.add(native + ["terms", term, "start_pref"], f"{user}/start_pref_{suffix}")
        keys.add(native + ["terms", term, "limit_pref"], f"{user}/limit_pref_{suffix}")
