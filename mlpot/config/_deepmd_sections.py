"""DeePMD-kit input sections translated into the native layout: data sections (system paths
resolved), the ener / tensor / dos losses, warm-up, mixed precision, numb_epoch, the type_map from
the data and the model precision. A table lookup with no physics (``mlpot/config/deepmd.py``
drives it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from mlpot.data import keys as K
from mlpot.data.deepmd_sources import find_deepmd_systems, split_hdf5_path
from mlpot.errors import ConfigError, DataError

__all__ = ["data_section", "loss_section", "lr_schedule", "warmup", "mixed_precision", "epochs", "type_map_from_data", "model_dtype",
           "resolve_systems", "absolute_system"]

_DEFAULT_PREFACTORS = {"e": (0.02, 1.0), "f": (1000.0, 1.0), "v": (0.0, 0.0), "ae": (0.0, 0.0), "pf": (0.0, 0.0)}
# DeePMD loss-term suffix -> batch label it weighs (native loss names are the batch keys)
_ENER_TERMS = {"e": "energy", "f": "forces", "v": "virial", "ae": "atom_energy", "pf": "atom_pref"}
# ener_spin loss (spin models): suffix -> (native term, DeePMD-kit's default start and limit prefactors)
_SPIN_TERMS = {"e": ("energy", (0.02, 1.0)), "fr": ("forces", (1000.0, 1.0)), "fm": ("force_mag", (10000.0, 10.0)),
               "v": ("virial", (0.0, 0.0)), "ae": ("atom_energy", (0.0, 0.0)), "pf": ("atom_pref", (0.0, 0.0))}
# dos loss (spec 4.3): DeePMD suffix -> native term name, default (start, limit) prefactors
_DOS_TERMS = {"dos": ("dos", (0.0, 0.0)), "cdf": ("dos_cdf", (0.0, 0.0)),
              "ados": ("atom_dos", (1.0, 1.0)), "acdf": ("atom_dos_cdf", (0.0, 0.0))}
# tensor loss: fitting type -> (global label, atomic label)
_TENSOR_LABELS = {"dipole": (K.DIPOLE, K.ATOMIC_DIPOLE), "polar": (K.POLARIZABILITY, K.ATOMIC_POLARIZABILITY)}


def absolute_system(system: str, base: Path) -> str:
    """A system path made absolute against ``base``; for ``file.h5#/group`` only the file part."""
    hdf5 = split_hdf5_path(base / system)
    if hdf5 is not None and hdf5[1] is not None:
        return f"{hdf5[0].resolve()}#{hdf5[1]}"
    return str((base / system).resolve())


def glob_systems(systems: Any, patterns: Any, base: Path, path: List[str], file: Optional[str]) -> List[str]:
    """DeePMD-kit's ``rglob_patterns`` search: below each root folder (``systems``: one folder or a
    list of them), every folder matching one of the glob ``patterns`` at any depth
    (``Path.rglob(pattern)``, the root itself excluded) that holds ``type.raw``; duplicates dropped,
    sorted (DeePMD-kit keeps them in set order)."""
    key = path[:-1] + ["rglob_patterns"]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(f"expected a non-empty list of glob patterns, got {patterns!r}", file=file, key=key)
    roots = [systems] if isinstance(systems, str) else systems
    if not isinstance(roots, list) or not roots or not all(isinstance(r, str) for r in roots):
        raise ConfigError("expected a folder or a non-empty list of folders", file=file, key=path)
    found = set()
    for root in (base / r for r in roots):
        if split_hdf5_path(root) is not None or not root.is_dir():
            raise ConfigError(f"rglob_patterns search needs a folder; {root} is not one", file=file, key=path)
        found.update(str(d.resolve()) for pattern in patterns for d in root.rglob(pattern) if (d / "type.raw").is_file())
    if not found:
        raise ConfigError(f"no system (folder with type.raw) matching {patterns} under {', '.join(roots)}",
                          file=file, key=key)
    return sorted(found)


def resolve_systems(systems: Any, base: Path, path: List[str], file: Optional[str], patterns: Any = None) -> List[str]:
    """System folders as absolute paths; a single string is a root searched for ``type.raw``
    (an HDF5 file or ``file.h5#/group``: every group below holding ``type.raw``); with ``patterns``
    (DeePMD ``rglob_patterns``) the folders matching them below each root (:func:`glob_systems`)."""
    if patterns is not None:
        return glob_systems(systems, patterns, base, path, file)
    if isinstance(systems, str) and split_hdf5_path(base / systems) is not None:
        root = absolute_system(systems, base)
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
    return [absolute_system(str(s), base) for s in systems]


def data_section(section: Dict[str, Any], base: Path, path: List[str], file: Optional[str]) -> Dict[str, Any]:
    # "mixed:N" (global batches of N frames across systems) is validated by the native schema
    batch_size = section.get("batch_size", "auto")
    out = {
        # DeePMD systems are detected by type.raw; "auto" also lets an extxyz file stand in for a
        # system (an mlpot extension, cf. DeePMD-kit PR #5984)
        "format": "auto",
        "paths": resolve_systems(section.get("systems"), base, path + ["systems"], file, section.get("rglob_patterns")),
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


def tensor_loss(loss: Dict[str, Any], fitting_type: str) -> Dict[str, Any]:
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


def dos_loss(loss: Dict[str, Any]) -> Dict[str, Any]:
    """DeePMD ``dos`` loss: MSE terms dos, cdf (running sum), ados, acdf with lr-coupled prefactors."""
    terms: Dict[str, Any] = {}
    for suffix, (name, (start_default, limit_default)) in _DOS_TERMS.items():
        start = float(loss.get(f"start_pref_{suffix}", start_default))
        limit = float(loss.get(f"limit_pref_{suffix}", limit_default))
        if start != 0.0 and limit != 0.0:  # [COMPAT] on only when both are non-zero, like ener
            terms[name] = {"start_pref": start, "limit_pref": limit}
    return {"type": "native", "terms": terms}


def huber_deltas(value: Any) -> Dict[str, float]:
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


def loss_function(loss: Dict[str, Any], terms: Dict[str, Any]) -> None:
    """``loss_func`` (mse | mae), ``use_huber``/``huber_delta`` and ``f_use_norm`` onto the native
    terms (DeePMD-kit 3.x PT ener loss, spec 4.2).

    * mae: every term except gf (always MSE in DeePMD) compares |Δ|: energy and virial |Δ|/N
      (the ``ener`` loss normalises E and Ξ by N inside MAE/Huber), forces, atom_energy and
      atom_pref component means, hessian the mean |ΔH| over the (3N)² entries. As in DeePMD the MAE force term takes the plain force difference
      (relative_f only enters the pf term there).
    * use_huber (mse only): Huber on E/N, the force components (or |ΔF_k|) and Ξ/N, and on the
      atomic energies; DeePMD rejects it with pf, gf, h or relative_f, so does mlpot.
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
    if huber and ("atom_pref" in terms or "generalized_force" in terms or "hessian" in terms
                  or loss.get("relative_f") is not None):
        raise ConfigError("use_huber cannot be combined with the pf, gf or h terms or relative_f (as in DeePMD-kit)",
                          key=["loss", "use_huber"])
    if loss.get("f_use_norm") and function != "mae" and not huber:
        raise ConfigError("f_use_norm needs loss_func 'mae' or use_huber true (as in DeePMD-kit)",
                          key=["loss", "f_use_norm"])
    if huber:
        deltas = huber_deltas(loss.get("huber_delta", 0.01))
        for name, delta in deltas.items():
            if name in terms:
                terms[name].update(function="huber", huber_delta=delta)
    elif function == "mae":
        for name in ("energy", "forces", "force_mag", "virial", "atom_energy", "atom_pref", "hessian"):
            if name in terms:
                terms[name]["function"] = "mae"
        if "forces" in terms:
            terms["forces"].pop("relative", None)
    if loss.get("f_use_norm") and "forces" in terms:
        terms["forces"]["vector_norm"] = True


def loss_section(loss: Dict[str, Any], fitting_type: str = "ener") -> Dict[str, Any]:
    """DeePMD loss -> native loss: one term per label with start/limit prefactors (lr-coupled)."""
    kind = loss["type"]
    if kind == "tensor":
        return tensor_loss(loss, fitting_type)
    if kind == "dos":
        return dos_loss(loss)
    if kind == "ener_spin":
        return spin_loss(loss)
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
    start, limit = float(loss.get("start_pref_h", 0.0)), float(loss.get("limit_pref_h", 0.0))
    if start != 0.0 or limit != 0.0:  # [COMPAT] h is on when start OR limit is non-zero (DeePMD-kit 3.x)
        # d²E/dR² per frame against hessian.npy, mean square over the (3N)² entries (3.x "h" term, last as in lcurve)
        terms["hessian"] = {"start_pref": start, "limit_pref": limit}
    loss_function(loss, terms)
    return {"type": "ener", "terms": terms, "intensive_ener_virial": bool(loss.get("intensive_ener_virial", False)),
            # E = sum_i c_i E_i with c from atom_ener_coeff.npy (e.g. reaction energies)
            "atom_ener_coeff": bool(loss.get("enable_atom_ener_coeff", False))}


def spin_loss(loss: Dict[str, Any]) -> Dict[str, Any]:
    """DeePMD ener_spin -> native ener loss: e, fr (real force: native forces), fm (magnetic force on
    the magnetic atoms: native force_mag), v, ae, pf terms with lr-coupled prefactors, each on only when
    its start and limit prefactors are non-zero (DeePMD-kit PT); loss_func mse or mae."""
    terms: Dict[str, Any] = {}
    for suffix, (label, (start, limit)) in _SPIN_TERMS.items():
        start = float(loss.get(f"start_pref_{suffix}", start))
        limit = float(loss.get(f"limit_pref_{suffix}", limit))
        if start != 0.0 and limit != 0.0:
            terms[label] = {"start_pref": start, "limit_pref": limit}
    loss_function(loss, terms)
    return {"type": "ener", "terms": terms, "intensive_ener_virial": bool(loss.get("intensive_ener_virial", False)),
            "atom_ener_coeff": bool(loss.get("enable_atom_ener_coeff", False))}


def epochs(numb_epoch: Any, file: Optional[str]) -> float:
    """numb_epoch: a positive number of passes (DeePMD-kit 3.x counts the steps on its system sampler;
    so does the engine, native ``training.sampler_epochs``, once the data are read)."""
    if isinstance(numb_epoch, bool) or not isinstance(numb_epoch, (int, float)) or not numb_epoch > 0:
        raise ConfigError(f"expected a positive number of epochs, got {numb_epoch!r}", file=file,
                          key=["training", "numb_epoch"])
    return float(numb_epoch)


def lr_schedule(lr: Dict[str, Any], training: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """learning_rate -> the native lr_schedule (exp, cosine, wsd: the same names and formulas)."""
    schedule = {"type": lr.get("type", "exp"), "start_lr": lr.get("start_lr", 1e-3),
                "scale_by_worker": lr.get("scale_by_worker", "linear")}
    if schedule["type"] == "exp":
        schedule["decay_steps"] = lr.get("decay_steps", 5000)
    for key in ("stop_lr", "stop_lr_ratio", "decay_rate", "smooth", "decay_phase_ratio", "decay_type"):
        if lr.get(key) is not None:
            schedule[key] = lr[key]
    if "stop_lr" not in schedule and "stop_lr_ratio" not in schedule:
        schedule["stop_lr"] = 1e-8  # DeePMD-kit's default stop_lr
    schedule.update(warmup(lr, training, file))
    return schedule


def warmup(lr: Dict[str, Any], training: Dict[str, Any], file: Optional[str]) -> Dict[str, Any]:
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


def mixed_precision(native: Dict[str, Any], section: Any, multi_task: bool, file: Optional[str]) -> None:
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


def type_map_from_data(systems: List[str], file: Optional[str]) -> List[str]:
    """model/type_map left out: the union (in order of first appearance) of the training systems'
    ``type_map.raw`` files, as DeePMD-kit takes it from the data."""
    from mlpot.data.deepmd_sources import system_type_map
    from mlpot.data.io import merge_type_maps

    maps = []
    for system in systems:
        names = system_type_map(system) if Path(str(system).split("#")[0]).exists() else None
        if names is None:
            raise ConfigError(f"missing, and the training system {system} has no type_map.raw to take it from",
                              file=file, key=["model", "type_map"])
        maps.append(names)
    return merge_type_maps(maps)


def model_dtype(model: Dict[str, Any]) -> str:
    """Native ``dtype``: the fitting's precision, else the descriptor's, else float64 (DeePMD default)."""
    for section in (model.get("fitting_net", {}), model.get("descriptor", {})):
        if section.get("precision") in ("float32", "float64"):
            return section["precision"]
    return "float64"


