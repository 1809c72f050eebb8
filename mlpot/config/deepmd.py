"""DeePMD-kit front-end: read an ``input.json`` (or .yaml) unchanged and turn it into the native config.

Note for the training engine (``mlpot train``): call ``mlpot.config.deepmd.convert(path) -> dict``
when ``is_deepmd_config(path)`` is true; the dict is the native config (paths already resolved
relative to the input file), ready for the native schema.

What this module does, in order:

1. load JSON or YAML (:func:`load_file`);
2. check every key against the key table of ``_deepmd_keys.py`` (:func:`check_keys`): keys starting
   with ``_comment`` are dropped at any depth; an unknown key is a :class:`ConfigError` naming the
   file and key path with the closest valid key; a key of a feature that is not built yet is
   ``ConfigError("not supported yet: model/descriptor/<key>")`` unless its value is DeePMD's default
   (which requests nothing); aliases (``se_a``, ``stop_batch``, ``n_neuron``...) are renamed to
   their canonical names;
3. translate the checked sections into the native layout (:func:`to_native`).

Multi-task inputs (``model/model_dict`` or the TF 2.x ``model/fitting_net_dict``) are checked and
translated by ``_deepmd_multitask.py`` into a ``multi_task`` model and the native ``tasks`` section.

The translation is a table lookup with no physics; defaults that DeePMD fills in (``out.json``)
are filled here too, so that the native file ``mlpot convert`` writes shows every value used.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Union


from mlpot.config import _deepmd_keys as table
from mlpot.config._deepmd_keys import IGNORED, UNSUPPORTED, DeepmdKey
from mlpot.config._deepmd_validating import apply_validating
from mlpot.config.loader import read_yaml
from mlpot.data import keys as K
from mlpot.data.deepmd_format import find_deepmd_systems, split_hdf5_path
from mlpot.errors import ConfigError, DataError, suggest

__all__ = ["convert", "convert_dict", "check_keys", "is_deepmd_config", "load_file", "keys_markdown"]

PathLike = Union[str, Path]


def load_file(path: PathLike) -> Dict[str, Any]:
    """Parse a JSON or YAML DeePMD input into a dict (errors name the file, line and column)."""
    return read_yaml(path)


def is_deepmd_config(path_or_dict: Union[PathLike, Dict[str, Any]]) -> bool:
    """True for a DeePMD-kit input: a mapping with ``model`` and ``training`` whose model carries
    ``descriptor``/``fitting_net`` (or a multi-task ``model_dict``, or a composite ``type``:
    linear_ener, pairtab, frozen) and a ``training`` section with ``training_data`` or ``data_dict``."""
    data = path_or_dict if isinstance(path_or_dict, dict) else None
    if data is None:
        try:
            data = load_file(path_or_dict)
        except ConfigError:
            return False
    model, training = data.get("model"), data.get("training")
    if isinstance(data.get("nvnmd"), dict) and isinstance(training, dict) and "training_data" in training:
        return True  # an NVNMD input: its nvnmd section replaces model (check_keys names it)
    if not isinstance(model, dict) or not isinstance(training, dict):
        return False
    composite = model.get("type") in ("linear_ener", "pairtab", "frozen", "zbl", "pairwise_dprc")
    has_model = "descriptor" in model or "fitting_net" in model or "model_dict" in model or composite
    has_data = "training_data" in training or "data_dict" in training
    return has_model and has_data


# ---- key checking ------------------------------------------------------------------------------


def _slash(path: List[Union[str, int]]) -> str:
    return "/".join(str(p) for p in path)


def _check_section(
    section: Any, keys: Dict[str, DeepmdKey], path: List[Union[str, int]], file: Optional[str]
) -> Dict[str, Any]:
    """Validate one mapping against its key table; return it with comments dropped and aliases renamed."""
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", file=file, key=path)
    alias_of = {alias: name for name, record in keys.items() for alias in record.aliases}
    out: Dict[str, Any] = {}
    for key, value in section.items():
        if str(key).startswith("_comment"):
            continue
        name = alias_of.get(key, key)
        if name not in keys:
            hint = suggest(key, list(keys) + list(alias_of))
            raise ConfigError(
                "unknown key", file=file, key=path + [key], hint=f"did you mean '{hint}'?" if hint else None
            )
        if name in out:
            raise ConfigError(f"given twice (as '{name}' and an alias)", file=file, key=path + [key])
        record = keys[name]
        if record.status == UNSUPPORTED and not record.requests_nothing(value):
            detail = f" ({record.note})" if record.note else ""
            raise ConfigError(f"not supported yet: {_slash(path + [name])}{detail}", file=file, key=path + [key])
        if record.status == IGNORED:
            continue
        out[name] = value
    return out


def _typed(section: Any, tables: Dict[str, Dict[str, DeepmdKey]], unbuilt, default_type, aliases, path, file):
    """Check a section whose key table depends on its ``type`` (descriptor, fitting, loss...)."""
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}", file=file, key=path)
    kind = section.get("type", default_type)
    if kind is None:
        raise ConfigError("missing required key 'type'", file=file, key=path)
    kind = aliases.get(kind, kind)
    if kind in unbuilt:
        raise ConfigError(f"not supported yet: {_slash(path + ['type'])}={kind}", file=file, key=path + ["type"])
    if kind not in tables:
        hint = suggest(kind, list(tables) + list(aliases))
        raise ConfigError(
            f"unknown type '{kind}' (valid: {', '.join(tables)})",
            file=file, key=path + ["type"], hint=f"did you mean '{hint}'?" if hint else None,
        )
    out = _check_section(section, tables[kind], path, file)
    out["type"] = kind
    return out


def _require_built(kind: str, registry, path, file) -> None:
    """A type known to DeePMD and to the key table but not (yet) registered by the models layer."""
    if kind not in registry:
        raise ConfigError(f"not supported yet: {_slash(path + ['type'])}={kind}", file=file, key=path + ["type"])


def _check_descriptor(section: Any, path, file) -> Dict[str, Any]:
    from mlpot.models.deepmd.descriptors import DESCRIPTORS

    out = _typed(section, table.DESCRIPTORS, table.UNBUILT_DESCRIPTORS, None, table.DESCRIPTOR_ALIASES, path, file)
    _require_built(out["type"], DESCRIPTORS, path, file)
    if out["type"] == "hybrid":
        members = out.get("list")
        if not isinstance(members, list) or not members:
            raise ConfigError("hybrid needs a non-empty list of descriptors", file=file, key=path + ["list"])
        out["list"] = [_check_descriptor(member, path + ["list", i], file) for i, member in enumerate(members)]
    return out


def check_keys(config: Dict[str, Any], file: Optional[str] = None) -> Dict[str, Any]:
    """Validate a DeePMD input dict key by key; return a cleaned deep copy.

    Comments are dropped, aliases renamed to canonical names, ignored keys removed. Raises
    :class:`ConfigError` for unknown keys (with a suggestion) and for features not built yet.
    """
    config = copy.deepcopy(config)
    out = _check_section(config, table.TOP, [], file)
    for required in ("model", "training"):
        if required not in out:
            raise ConfigError(f"missing required section '{required}'", file=file, key=required)
    raw_model = out["model"]
    from mlpot.config import _deepmd_multitask as multitask

    if multitask.is_multi_task(raw_model):
        return multitask.check_multi_task(out, file)
    for section, keys in multitask.MULTI_TASK_ONLY.items():
        holder = out if not section else out.get(section)
        for key in keys:
            if isinstance(holder, dict) and holder.get(key) is not None:
                raise ConfigError("a multi-task key: needs model/model_dict (or model/fitting_net_dict)",
                                  file=file, key=([section] if section else []) + [key])
    model_type = raw_model.get("type", "standard") if isinstance(raw_model, dict) else "standard"
    if model_type != "standard":
        from mlpot.models import MODELS

        if model_type not in MODELS:
            status = "not supported yet" if model_type in table.UNBUILT_MODELS else "unknown model type"
            raise ConfigError(f"{status}: model/type={model_type}", file=file, key=["model", "type"])
        # composite models (frozen, pairtab, linear_ener) are checked key by key by build_model
        out["model"] = {k: v for k, v in raw_model.items() if not str(k).startswith("_comment")}
        return _check_rest(out, file)
    for key, owner in table.COMPOSITE_MODEL_KEYS.items():
        if isinstance(raw_model, dict) and raw_model.get(key) is not None:
            raise ConfigError(f"belongs to model/type \"{owner}\", not to a standard model (descriptor + fitting_net)",
                              file=file, key=["model", key])
    model = _check_section(raw_model, table.MODEL, ["model"], file)
    for required in ("descriptor", "fitting_net"):  # type_map may come from the data (to_native)
        if required not in model:
            raise ConfigError(f"missing required key '{required}'", file=file, key=["model", required])
    model["descriptor"] = _check_descriptor(model["descriptor"], ["model", "descriptor"], file)
    model["fitting_net"] = _typed(
        model["fitting_net"], table.FITTINGS, table.UNBUILT_FITTINGS, "ener", {}, ["model", "fitting_net"], file
    )
    from mlpot.models.deepmd.fitting import FITTINGS

    _require_built(model["fitting_net"]["type"], FITTINGS, ["model", "fitting_net"], file)
    out["model"] = model
    return _check_rest(out, file)


def _check_rest(out: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """Check the sections other than ``model`` (learning_rate, loss, optimizer, training)."""
    out["learning_rate"] = _typed(
        out.get("learning_rate", {}), table.LEARNING_RATES, (), "exp", {}, ["learning_rate"], file,
    )
    out["loss"] = _typed(out.get("loss", {}), table.LOSSES, table.UNBUILT_LOSSES, "ener", {}, ["loss"], file)
    out["optimizer"] = _check_section(out.get("optimizer", {}), table.OPTIMIZER, ["optimizer"], file)
    training = _check_section(out["training"], table.TRAINING, ["training"], file)
    if "training_data" not in training:
        raise ConfigError("missing required key 'training_data'", file=file, key=["training", "training_data"])
    training["training_data"] = _check_section(
        training["training_data"], table.DATA_SECTION, ["training", "training_data"], file
    )
    if training.get("validation_data") is not None:
        training["validation_data"] = _check_section(
            training["validation_data"], table.VALIDATION_DATA, ["training", "validation_data"], file
        )
    out["training"] = training
    return out


def keys_markdown() -> str:
    """The key-status tables of docs/deepmd_keys.md, generated from the key table."""
    lines = []
    for title, keys in table.all_tables().items():
        lines += [f"### `{title}`", "", "| key | aliases | status | note |", "|---|---|---|---|"]
        for name, record in keys.items():
            aliases = ", ".join(f"`{a}`" for a in record.aliases)
            lines.append(f"| `{name}` | {aliases} | {record.status} | {record.note} |")
        lines.append("")
    return "\n".join(lines)


# ---- translation into the native layout --------------------------------------------------------

_DEFAULT_PREFACTORS = {"e": (0.02, 1.0), "f": (1000.0, 1.0), "v": (0.0, 0.0), "ae": (0.0, 0.0), "pf": (0.0, 0.0)}
# DeePMD loss-term suffix -> batch label it weighs (native loss names are the batch keys)
_ENER_TERMS = {"e": "energy", "f": "forces", "v": "virial", "ae": "atom_energy", "pf": "atom_pref"}


def _absolute_system(system: str, base: Path) -> str:
    """A system path made absolute against ``base``; for ``file.h5#/group`` only the file part."""
    hdf5 = split_hdf5_path(base / system)
    if hdf5 is not None and hdf5[1] is not None:
        return f"{hdf5[0].resolve()}#{hdf5[1]}"
    return str((base / system).resolve())


def _resolve_systems(systems: Any, base: Path, path: List[str], file: Optional[str]) -> List[str]:
    """System folders as absolute paths; a single string is a root searched for ``type.raw``
    (an HDF5 file or ``file.h5#/group``: every group below holding ``type.raw``)."""
    if isinstance(systems, str) and split_hdf5_path(base / systems) is not None:
        root = _absolute_system(systems, base)
        try:
            found = [str(p) for p in find_deepmd_systems(root)]
        except DataError as exc:
            raise ConfigError(str(exc), file=file, key=path) from None
        if not found:
            raise ConfigError(f"no system (group with type.raw) in {root}", file=file, key=path)
        return found
    if isinstance(systems, str):
        root = (base / systems).resolve()
        found = sorted({str(p.parent) for p in root.rglob("type.raw")})
        if not found:
            raise ConfigError(f"no system (folder with type.raw) under {root}", file=file, key=path)
        return found
    if not isinstance(systems, list) or not systems:
        raise ConfigError("expected a non-empty list of system folders", file=file, key=path)
    return [_absolute_system(str(s), base) for s in systems]


def _data_section(section: Dict[str, Any], base: Path, path: List[str], file: Optional[str]) -> Dict[str, Any]:
    # "mixed:N" (global batches of N frames across systems) is validated by the native schema
    batch_size = section.get("batch_size", "auto")
    out = {
        # DeePMD systems are detected by type.raw; "auto" also lets an extxyz file stand in for a
        # system (an mlpot extension, cf. DeePMD-kit PR #5984)
        "format": "auto",
        "paths": _resolve_systems(section.get("systems"), base, path + ["systems"], file),
        "batch_size": batch_size,
        "set_prefix": section.get("set_prefix", "set"),
        # DeePMD draws a random system per step, then the next batch of that system (spec 5.3)
        "sampler": "deepmd",
        "auto_prob": section.get("auto_prob", "prob_sys_size"),
        "sys_probs": section.get("sys_probs"),
    }
    if "numb_btch" in section:
        out["numb_btch"] = section["numb_btch"]
    return out


# dos loss (spec 4.3): DeePMD suffix -> native term name, default (start, limit) prefactors
_DOS_TERMS = {"dos": ("dos", (0.0, 0.0)), "cdf": ("dos_cdf", (0.0, 0.0)),
              "ados": ("atom_dos", (1.0, 1.0)), "acdf": ("atom_dos_cdf", (0.0, 0.0))}
# tensor loss: fitting type -> (global label, atomic label)
_TENSOR_LABELS = {"dipole": (K.DIPOLE, K.ATOMIC_DIPOLE), "polar": (K.POLARIZABILITY, K.ATOMIC_POLARIZABILITY)}


def _tensor_loss(loss: Dict[str, Any], fitting_type: str) -> Dict[str, Any]:
    """DeePMD ``tensor`` loss: L = pref_atomic · mean(Δlocal²) + pref · mean(Δglobal²), constant weights."""
    if fitting_type not in _TENSOR_LABELS:
        raise ConfigError(f"loss/type=tensor needs a dipole or polar fitting_net, not {fitting_type!r}",
                          key=["loss", "type"])
    global_label, atomic_label = _TENSOR_LABELS[fitting_type]
    terms: Dict[str, Any] = {}
    for key, label in (("pref", global_label), ("pref_atomic", atomic_label)):
        if key not in loss:
            raise ConfigError(f"missing required key 'loss/{key}'", key=["loss", key])
        if float(loss[key]) != 0.0:
            # atom_norm none: DeePMD's global tensor MSE is not divided by the atom count
            terms[label] = {"weight": float(loss[key]), "label": label, "atom_norm": "none"}
    if loss.get("enable_atomic_weight") and atomic_label in terms:
        # per-atom weights (atom_weight.npy) multiply the atomic residuals
        terms[atomic_label]["atom_weight"] = True
    return {"type": "native", "terms": terms}


def _dos_loss(loss: Dict[str, Any]) -> Dict[str, Any]:
    """DeePMD ``dos`` loss: MSE terms dos, cdf (running sum), ados, acdf with lr-coupled prefactors."""
    terms: Dict[str, Any] = {}
    for suffix, (name, (start_default, limit_default)) in _DOS_TERMS.items():
        start = float(loss.get(f"start_pref_{suffix}", start_default))
        limit = float(loss.get(f"limit_pref_{suffix}", limit_default))
        if start != 0.0 and limit != 0.0:  # [COMPAT] on only when both are non-zero, like ener
            terms[name] = {"start_pref": start, "limit_pref": limit}
    return {"type": "native", "terms": terms}


def _huber_deltas(value: Any) -> Dict[str, float]:
    """huber_delta: one float for every term, or [energy, force, virial] (DeePMD 3.x); the atomic
    energy term uses the energy delta."""
    key = ["loss", "huber_delta"]
    values = value if isinstance(value, list) else [value] * 3
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ConfigError("expected a number or a list [energy, force, virial] of 3 numbers", key=key)
    if min(values) <= 0:
        raise ConfigError("Huber deltas must be > 0", key=key)
    e, f, v = (float(x) for x in values)
    return {"energy": e, "forces": f, "virial": v, "atom_energy": e}


def _loss_function(loss: Dict[str, Any], terms: Dict[str, Any]) -> None:
    """``loss_func`` (mse | mae), ``use_huber``/``huber_delta`` and ``f_use_norm`` onto the native
    terms (DeePMD-kit 3.x PT ener loss, spec 4.2).

    * mae: every term except gf (always MSE in DeePMD) compares |Δ|: energy and virial |Δ|/N
      (the ``ener`` loss normalises E and Ξ by N inside MAE/Huber), forces, atom_energy and
      atom_pref component means. As in DeePMD the MAE force term takes the plain force difference
      (relative_f only enters the pf term there).
    * use_huber (mse only): Huber on E/N, the force components (or |ΔF_k|) and Ξ/N, and on the
      atomic energies; DeePMD rejects it with pf, gf or relative_f, so does mlpot.
    * f_use_norm: forces compared by |ΔF_k| per atom; only with mae or use_huber (DeePMD errors).
    """
    function = loss.get("loss_func", "mse")
    if function not in ("mse", "mae"):
        raise ConfigError(f"expected 'mse' or 'mae', got {function!r}", key=["loss", "loss_func"])
    huber = bool(loss.get("use_huber", False))
    if huber and function == "mae":
        # DeePMD-kit applies use_huber in its mse branch only and silently ignores it with mae
        raise ConfigError("use_huber needs loss_func 'mse' (DeePMD-kit ignores it with 'mae')",
                          key=["loss", "use_huber"])
    if huber and ("atom_pref" in terms or "generalized_force" in terms or loss.get("relative_f") is not None):
        raise ConfigError("use_huber cannot be combined with the pf or gf terms or relative_f (as in DeePMD-kit)",
                          key=["loss", "use_huber"])
    if loss.get("f_use_norm") and function != "mae" and not huber:
        raise ConfigError("f_use_norm needs loss_func 'mae' or use_huber true (as in DeePMD-kit)",
                          key=["loss", "f_use_norm"])
    if huber:
        deltas = _huber_deltas(loss.get("huber_delta", 0.01))
        for name, delta in deltas.items():
            if name in terms:
                terms[name].update(function="huber", huber_delta=delta)
    elif function == "mae":
        for name in ("energy", "forces", "virial", "atom_energy", "atom_pref"):
            if name in terms:
                terms[name]["function"] = "mae"
        if "forces" in terms:
            terms["forces"].pop("relative", None)
    if loss.get("f_use_norm") and "forces" in terms:
        terms["forces"]["vector_norm"] = True


def _loss_section(loss: Dict[str, Any], fitting_type: str = "ener") -> Dict[str, Any]:
    """DeePMD loss -> native loss: one term per label with start/limit prefactors (lr-coupled)."""
    kind = loss["type"]
    if kind == "tensor":
        return _tensor_loss(loss, fitting_type)
    if kind == "dos":
        return _dos_loss(loss)
    if kind != "ener":
        raise ConfigError(f"not supported yet: loss/type={kind}", key=["loss", "type"])
    terms: Dict[str, Any] = {}
    for suffix, label in _ENER_TERMS.items():
        start = float(loss.get(f"start_pref_{suffix}", _DEFAULT_PREFACTORS[suffix][0]))
        limit = float(loss.get(f"limit_pref_{suffix}", _DEFAULT_PREFACTORS[suffix][1]))
        # [COMPAT] PyTorch backend: a term is on only when start AND limit are non-zero (spec 4.2)
        if start != 0.0 and limit != 0.0:
            terms[label] = {"start_pref": start, "limit_pref": limit}
    if loss.get("relative_f") is not None and "forces" in terms:
        terms["forces"]["relative"] = float(loss["relative_f"])
    if loss.get("use_default_pf") and "atom_pref" in terms:
        # a system without atom_pref.npy weighs every atom 1 (DeePMD: find_atom_pref forced to 1)
        terms["atom_pref"]["atom_pref_default"] = 1.0
    start, limit = float(loss.get("start_pref_gf", 0.0)), float(loss.get("limit_pref_gf", 0.0))
    if start != 0.0 and limit != 0.0:
        # generalised force (DPRc): drdq^T F per frame against drdq^T F*, drdq.npy from the data
        n_generalized = int(loss.get("numb_generalized_coord", 0))
        if n_generalized < 1:
            raise ConfigError("the generalised-force loss (start_pref_gf, limit_pref_gf) needs "
                              "numb_generalized_coord >= 1", key=["loss", "numb_generalized_coord"])
        terms["generalized_force"] = {"start_pref": start, "limit_pref": limit, "n_generalized": n_generalized}
    _loss_function(loss, terms)
    return {"type": "ener", "terms": terms, "intensive_ener_virial": bool(loss.get("intensive_ener_virial", False)),
            # E = sum_i c_i E_i with c from atom_ener_coeff.npy (e.g. reaction energies)
            "atom_ener_coeff": bool(loss.get("enable_atom_ener_coeff", False))}


def _epochs(numb_epoch: Any, file: Optional[str]) -> float:
    """numb_epoch: a positive number of passes (DeePMD-kit 3.x counts the steps on its system sampler;
    so does the engine, native ``training.sampler_epochs``, once the data are read)."""
    if isinstance(numb_epoch, bool) or not isinstance(numb_epoch, (int, float)) or not numb_epoch > 0:
        raise ConfigError(f"expected a positive number of epochs, got {numb_epoch!r}", file=file,
                          key=["training", "numb_epoch"])
    return float(numb_epoch)


def _warmup(lr: Dict[str, Any], training: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """Linear warm-up (spec 4.1): from warmup_start_factor·start_lr to start_lr over the warm-up
    steps, then the exp decay restarts at t - warmup with T = numb_steps - warmup.

    ``learning_rate/warmup_steps`` or ``warmup_ratio`` (steps = int(ratio · numb_steps)) with
    ``warmup_start_factor``; the older ``training/warmup_steps`` (DeePMD-kit PT 3.0) starts from 0.
    """
    steps, ratio = int(lr.get("warmup_steps") or 0), lr.get("warmup_ratio")
    legacy = int(training.get("warmup_steps") or 0)
    if steps and ratio is not None:
        raise ConfigError("give learning_rate/warmup_steps or learning_rate/warmup_ratio, not both",
                          file=file, key=["learning_rate", "warmup_ratio"])
    if legacy and (steps or ratio is not None):
        raise ConfigError("warm-up given twice: use learning_rate/warmup_steps (or warmup_ratio) only",
                          file=file, key=["training", "warmup_steps"])
    if min(steps, legacy) < 0 or (ratio is not None and not 0 <= float(ratio) < 1):
        raise ConfigError("warm-up steps must be >= 0 and warmup_ratio in [0, 1)", file=file,
                          key=["learning_rate", "warmup_ratio" if ratio is not None else "warmup_steps"])
    out: Dict[str, Any] = {"warmup_steps": steps or legacy,
                           "warmup_start_factor": float(lr.get("warmup_start_factor", 0.0))}
    if ratio is not None:
        out["warmup_ratio"] = float(ratio)
    return out


def _mixed_precision(native: Dict[str, Any], section: Any, multi_task: bool, file: Optional[str]) -> None:
    """training/mixed_precision {output_prec, compute_prec}: as DeePMD-kit, output_prec (float32)
    replaces the precision of the descriptor, type embedding and fitting, and the networks compute
    in compute_prec (native ``training.compute_dtype``)."""
    key = ["training", "mixed_precision"]
    if not isinstance(section, dict):
        raise ConfigError("needs a mapping {output_prec, compute_prec}", file=file, key=key)
    unknown = set(section) - {"output_prec", "compute_prec"}
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r}; valid: output_prec, compute_prec", file=file,
                          key=key + [sorted(unknown)[0]])
    if section.get("output_prec", "float32") != "float32":
        raise ConfigError("only float32 is supported (as in DeePMD-kit)", file=file, key=key + ["output_prec"])
    if section.get("compute_prec") not in ("float16", "bfloat16"):
        raise ConfigError("expected float16 or bfloat16", file=file, key=key + ["compute_prec"])
    if multi_task:
        raise ConfigError("not supported yet: training/mixed_precision with multi-task models", file=file, key=key)
    model = native["model"]
    descriptor = model.get("descriptor")
    sections = [descriptor] + list(descriptor.get("list", [])) if isinstance(descriptor, dict) else []
    for part in sections + [model.get("fitting_net"), model.get("type_embedding")]:
        if isinstance(part, dict):
            part["precision"] = "float32"
    native["dtype"] = "float32"
    native["training"]["compute_dtype"] = section["compute_prec"]


def _type_map_from_data(systems: List[str], file: Optional[str]) -> List[str]:
    """model/type_map left out: the union (in order of first appearance) of the training systems'
    ``type_map.raw`` files, as DeePMD-kit takes it from the data."""
    from mlpot.data.deepmd_format import system_type_map
    from mlpot.data.io import merge_type_maps

    maps = []
    for system in systems:
        names = system_type_map(system) if Path(str(system).split("#")[0]).exists() else None
        if names is None:
            raise ConfigError(f"missing, and the training system {system} has no type_map.raw to take it from",
                              file=file, key=["model", "type_map"])
        maps.append(names)
    return merge_type_maps(maps)


def _model_dtype(model: Dict[str, Any]) -> str:
    """Native ``dtype``: the fitting's precision, else the descriptor's, else float64 (DeePMD default)."""
    for section in (model.get("fitting_net", {}), model.get("descriptor", {})):
        if section.get("precision") in ("float32", "float64"):
            return section["precision"]
    return "float64"


def to_native(config: Dict[str, Any], base_dir: PathLike = ".", file: Optional[str] = None) -> Dict[str, Any]:
    """Translate a checked DeePMD dict (see :func:`check_keys`) into the native config dict
    (layout of :class:`mlpot.config.schema.NativeConfig`).

    Relative system paths and ``stat_file`` are resolved against ``base_dir`` (the folder of the
    input file, where ``dp train`` is normally run); output files (lcurve, checkpoints,
    TensorBoard) stay relative to ``output_dir: "."``.
    """
    base = Path(base_dir)
    training = config["training"]
    lr = config["learning_rate"]
    optimizer = dict(config.get("optimizer") or {})
    opt_name = optimizer.pop("type", training.get("opt_type", "Adam"))
    if opt_name not in ("Adam", "AdamW"):
        raise ConfigError(f"not supported yet: optimizer/type={opt_name}", file=file, key=["optimizer", "type"])
    numb_steps, numb_epoch = training.get("numb_steps"), training.get("numb_epoch")
    if numb_steps is not None and numb_epoch is not None:
        # DeePMD-kit takes numb_steps and drops numb_epoch silently; one length only here
        raise ConfigError("give training/numb_steps or training/numb_epoch, not both", file=file,
                          key=["training", "numb_epoch"])
    if numb_steps is None and numb_epoch is None:
        raise ConfigError("missing required key 'numb_steps' (or 'numb_epoch')", file=file,
                          key=["training", "numb_steps"])
    multi_task = "model_dict" in config["model"]
    if numb_epoch is not None and multi_task:
        raise ConfigError("not supported yet: training/numb_epoch with multi-task models (num_epoch_dict)",
                          file=file, key=["training", "numb_epoch"])
    if multi_task:
        from mlpot.config import _deepmd_multitask as multitask
        from mlpot.models.deepmd.multitask import resolve_task_section

        first = next(iter(config["model"]["model_dict"]))
        dtype_model = resolve_task_section(first, config["model"]["model_dict"][first], config["model"]["shared_dict"])
    else:
        dtype_model = config["model"]
        data: Dict[str, Any] = {"train": _data_section(training["training_data"], base, ["training", "training_data"], file)}
        if training.get("validation_data") is not None:
            data["valid"] = _data_section(training["validation_data"], base, ["training", "validation_data"], file)
        if training.get("stat_file"):
            data["stat_file"] = str((base / training["stat_file"]).resolve())
            data["stat_file_mode"] = training.get("stat_file_mode", "update")
        elif training.get("stat_file_mode") == "read":
            raise ConfigError("stat_file_mode 'read' needs training/stat_file", file=file,
                              key=["training", "stat_file_mode"])
        if "type_map" not in dtype_model and config["model"].get("type", "standard") == "standard":
            config["model"]["type_map"] = _type_map_from_data(data["train"]["paths"], file)
    lr_schedule = {
        "type": lr.get("type", "exp"),  # exp, cosine, wsd: the same names and formulas natively
        "start_lr": lr.get("start_lr", 1e-3),
        "scale_by_worker": lr.get("scale_by_worker", "linear"),
    }
    if lr_schedule["type"] == "exp":
        lr_schedule["decay_steps"] = lr.get("decay_steps", 5000)
    for key in ("stop_lr", "stop_lr_ratio", "decay_rate", "smooth", "decay_phase_ratio", "decay_type"):
        if lr.get(key) is not None:
            lr_schedule[key] = lr[key]
    if "stop_lr" not in lr_schedule and "stop_lr_ratio" not in lr_schedule:
        lr_schedule["stop_lr"] = 1e-8  # DeePMD-kit's default stop_lr
    lr_schedule.update(_warmup(lr, training, file))
    native: Dict[str, Any] = {
        "family": "deepmd",
        "seed": int(training.get("seed") or 0),
        "dtype": _model_dtype(dtype_model),
        "output_dir": ".",
        "model": multitask.native_model(config) if multi_task else copy.deepcopy(config["model"]),
        "optimizer": {
            "name": opt_name.lower(),
            "betas": [optimizer.get("adam_beta1", 0.9), optimizer.get("adam_beta2", 0.999)],
            "weight_decay": optimizer.get("weight_decay", 0.0),
        },
        "lr_schedule": lr_schedule,
        "training": ({"numb_steps": int(numb_steps)} if numb_steps is not None else {"sampler_epochs": _epochs(numb_epoch, file)}),
        "logging": {
            "lcurve": training.get("disp_file", "lcurve.out"),
            "disp_freq": training.get("disp_freq", 1000),
            "disp_training": training.get("disp_training", True),
            "time_training": training.get("time_training", True),
            "tensorboard": bool(training.get("tensorboard", False)),
            "tensorboard_log_dir": training.get("tensorboard_log_dir", "log"),
            "tensorboard_freq": training.get("tensorboard_freq", 1),
        },
        "checkpoint": {
            "prefix": training.get("save_ckpt", "model.ckpt"),
            "every": training.get("save_freq", 1000),
            "keep": training.get("max_ckpt_keep", 5),
        },
    }
    if multi_task:
        native["tasks"] = multitask.native_tasks(config, base, file)
    else:
        native["data"] = data
        native["loss"] = _loss_section(config["loss"], config["model"].get("fitting_net", {}).get("type", "ener"))
    if training.get("save_dir"):  # checkpoints, their pointer file and link go there (native checkpoint.dir)
        native["checkpoint"]["dir"] = training["save_dir"]
    if training.get("disp_avg"):
        native["logging"]["disp_avg"] = True
    if training.get("gradient_max_norm") is not None:
        native["training"]["clip_grad_norm"] = training["gradient_max_norm"]
    # DeePMD-kit's default is off; an unchanged input gets DeePMD-kit's behaviour (the refit is
    # mlpot's default for native configs only)
    native["training"]["change_bias_after_training"] = bool(training.get("change_bias_after_training", False))
    if training.get("profiling"):
        native["logging"]["profile_file"] = training.get("profiling_file") or "timeline.json"
    if training.get("enable_profiler"):
        native["logging"]["profile_tensorboard"] = True
    if training.get("mixed_precision") is not None:
        _mixed_precision(native, training["mixed_precision"], multi_task, file)
    if training.get("enable_ema"):
        native["ema"] = {"decay": training.get("ema_decay", 0.999)}
    apply_validating(config, native, file)  # validating -> full_validation
    return native


def convert_dict(config: Dict[str, Any], base_dir: PathLike = ".", file: Optional[str] = None) -> Dict[str, Any]:
    """Check and translate an in-memory DeePMD input dict (see :func:`convert`)."""
    return to_native(check_keys(config, file=file), base_dir=base_dir, file=file)


def convert(path: PathLike) -> Dict[str, Any]:
    """Read a DeePMD-kit ``input.json``/``.yaml`` and return the native config dict.

    Raises :class:`ConfigError` naming the file and key path for unknown keys (with a suggestion)
    and for features not built yet (``not supported yet: <key path>``).
    """
    path = Path(path)
    return convert_dict(load_file(path), base_dir=path.resolve().parent, file=str(path))


if __name__ == "__main__":  # pragma: no cover - regenerates docs/deepmd_keys.md tables
    import sys

    if "--keys-md" in sys.argv:
        print(keys_markdown())
