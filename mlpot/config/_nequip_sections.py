"""The ``data`` and ``training_module.model`` sections of a (resolved) NequIP 0.19 config, translated
into the native ``data`` and ``model`` sections by ``_target_``.

Every function checks the keys of its section against NequIP's signature: an unknown key is a
ConfigError with the closest valid one, a key of a feature that is not built is "not supported yet:
<key path>" unless it holds NequIP's default, and a key that changes no number gets a note. The key
table of ``docs/nequip_keys.md`` lists the same. Translation only: no data is read.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from mlpot.config._nequip_common import Context, check_keys, fail, kind_of

__all__ = ["model_section", "data_section"]


_STAT_METRICS = {"Mean": "mean", "MeanAbsolute": "mean_abs", "RootMeanSquare": "rms", "StandardDeviation": "std",
                 "Max": "max", "Min": "min", "Count": "count"}
_STAT_FIELDS = {"total_energy": "total_energy", "forces": "forces", "stress": "stress"}
_LABELS = {"total_energy": "energy", "forces": "forces", "stress": "stress", "virial": "virial"}



# ---- model ---------------------------------------------------------------------------------
_GNN_KEYS = {k: None for k in (
    "seed", "model_dtype", "type_names", "r_max", "compile_mode", "num_layers", "l_max", "parity", "num_features",
    "type_embed_num_features", "radial_mlp_depth", "radial_mlp_width", "readout_mlp_hidden_layers_depth",
    "readout_mlp_hidden_layers_width", "readout_mlp_nonlinearity", "num_bessels", "bessel_trainable", "polynomial_cutoff_p",
    "avg_num_neighbors", "per_type_energy_scales", "per_type_energy_shifts", "per_type_energy_scales_trainable",
    "per_type_energy_shifts_trainable", "pair_potential", "do_derivatives", "per_edge_type_cutoff",
    "categorical_graph_field_embed", "convnet_sc", "convnet_resnet", "learnable_shift", "convnet_nonlinearity_type",
    "convnet_nonlinearity_scalars", "convnet_nonlinearity_gates", "model_size")}


def _builder(value: Dict[str, Any], kind: str, ctx: Context, key: str) -> Dict[str, Any]:
    section = check_keys(value, _GNN_KEYS, ctx, key)
    if kind == "preset":
        section["preset"] = section.pop("model_size", None)
    elif "model_size" in section:
        fail("unknown key", ctx, f"{key}.model_size", "model_size belongs to PresetNequIPGNNModel")
    if section.get("compile_mode") not in (None, "eager", "compile"):
        fail(f"compile_mode must be eager or compile, got {section['compile_mode']!r}", ctx, f"{key}.compile_mode")
    section["compile_mode"] = "eager"
    pair = section.get("pair_potential")
    if isinstance(pair, dict):
        kind_of(pair, ["zbl"], ctx, f"{key}.pair_potential")
        pair = check_keys(pair, {"units": None, "chemical_species": None, "polynomial_cutoff_p": None}, ctx,
                           f"{key}.pair_potential")
        section["pair_potential"] = {"type": "zbl", **pair}
    if section.get("categorical_graph_field_embed") is not None:
        fail(f"not supported yet: {key}.categorical_graph_field_embed", ctx, f"{key}.categorical_graph_field_embed")
    return {"type": "nequip", **section}


def model_section(value: Any, ctx: Context) -> Tuple[Dict[str, Any], Optional[str]]:
    """(native ``nequip`` section, pretrained model file for ModelFromCheckpoint/Package or None)."""
    key = "training_module.model"
    kind = kind_of(value, ["gnn", "preset", "modify", "from_checkpoint", "from_package"], ctx, key)
    modifiers: List[Dict[str, Any]] = []
    if kind == "modify":
        body = check_keys(value, {"model": None, "modifiers": None}, ctx, key)
        modifiers = list(body.get("modifiers") or [])
        value, key = body.get("model"), f"{key}.model"
        kind = kind_of(value, ["gnn", "preset", "from_checkpoint", "from_package"], ctx, key)
    if kind in ("gnn", "preset"):
        section, pretrained = _builder(value, kind, ctx, key), None
    else:
        path_key = "checkpoint_path" if kind == "from_checkpoint" else "package_path"
        body = check_keys(value, {path_key: None, "compile_mode": None}, ctx, key)
        if not body.get(path_key):
            fail("missing required key", ctx, f"{key}.{path_key}")
        section, pretrained = {"type": "nequip", "from_pretrained": True}, str(body[path_key])
    if modifiers:
        section["modifiers"] = modifiers
    return section, pretrained


# ---- data ----------------------------------------------------------------------------------
_ASE_KEYS = {"seed": None, "train_file_path": None, "val_file_path": None, "test_file_path": None, "predict_file_path": None,
             "split_dataset": None, "transforms": None, "ase_args": None, "include_keys": None, "exclude_keys": None,
             "key_mapping": None, "train_dataloader": None, "val_dataloader": None, "test_dataloader": None,
             "predict_dataloader": None, "stats_manager": None}
_LOADER_KEYS = {"batch_size": None, "shuffle": None, "num_workers": None, "persistent_workers": None, "pin_memory": None,
                "prefetch_factor": None, "drop_last": None, "timeout": None}


def _paths(value, ctx: Context, key: str) -> List[str]:
    paths = value if isinstance(value, list) else [value] if value else []
    if not all(isinstance(p, str) for p in paths):
        fail("expected a file path or a list of them", ctx, key)
    return [str(p) for p in paths]


def _transforms(transforms, model: Dict[str, Any], ctx: Context, key: str) -> Optional[float]:
    """The data cutoff of the transforms (NeighborListTransform r_max); the type mapping checked."""
    cutoff = None
    for index, transform in enumerate(transforms or []):
        where = f"{key}.{index}"
        kind = kind_of(transform, ["mapper", "neighbors"], ctx, where)
        if kind == "mapper":
            body = check_keys(transform, {"model_type_names": None, "chemical_species_to_atom_type_map": None}, ctx, where)
            mapping = body.get("chemical_species_to_atom_type_map")
            if mapping is not None and any(k != v for k, v in dict(mapping).items()):
                fail(f"not supported yet: {where}.chemical_species_to_atom_type_map other than the identity "
                      "(mlpot maps chemical symbols onto type names of the same name)", ctx, f"{where}.chemical_species_to_atom_type_map")
            names = body.get("model_type_names")
            if model.get("type_names") is not None and names is not None and list(names) != list(model["type_names"]):
                fail(f"model_type_names {names} differ from the model's type_names {model['type_names']}", ctx,
                      f"{where}.model_type_names")
        else:
            body = check_keys(transform, {"r_max": None, "per_edge_type_cutoff": "unsupported", "type_names": None,
                                           "backend": None}, ctx, where)
            cutoff = float(body["r_max"]) if body.get("r_max") is not None else fail("missing required key", ctx, f"{where}.r_max")
    return cutoff


def _loader(value, ctx: Context, key: str, shuffle_default: bool) -> Dict[str, Any]:
    if value is None:
        return {"batch_size": 1, "shuffle": shuffle_default}
    if isinstance(value, dict) and "_target_" not in value:
        value = {**value, "_target_": "torch.utils.data.DataLoader"}
    kind_of(value, ["loader"], ctx, key)
    body = check_keys(value, _LOADER_KEYS, ctx, key)
    if body.get("drop_last"):
        fail(f"not supported yet: {key}.drop_last", ctx, f"{key}.drop_last")
    return {"batch_size": int(body.get("batch_size", 1)), "shuffle": bool(body.get("shuffle", False))}


def _statistics(value, model: Dict[str, Any], ctx: Context, key: str) -> Optional[Dict[str, Any]]:
    if value is None:
        return None
    kind = kind_of(value, ["common_stats", "energy_stats", "custom_stats"], ctx, key)
    body = check_keys(value, {"dataloader_kwargs": None, "type_names": None, **({"metrics": None} if kind == "custom_stats" else {})},
                       ctx, key)
    if body.get("type_names") is not None and model.get("type_names") is not None and list(body["type_names"]) != list(model["type_names"]):
        fail(f"type_names {body['type_names']} differ from the model's {model['type_names']}", ctx, f"{key}.type_names")
    if kind != "custom_stats":
        return {"manager": "common" if kind == "common_stats" else "energy_only"}
    metrics = []
    for index, entry in enumerate(body.get("metrics") or []):
        metrics.append(_stat_entry(entry, ctx, f"{key}.metrics.{index}"))
    return {"metrics": metrics}


def _stat_entry(entry: Dict[str, Any], ctx: Context, key: str) -> Dict[str, Any]:
    body = check_keys(entry, {"field": None, "metric": None, "name": None, "per_type": None, "ignore_nan": None}, ctx, key)
    field_value = body.get("field")
    if isinstance(field_value, dict):
        target = str(field_value.get("_target_", "")).rsplit(".", 1)[-1]
        inner = field_value.get("field")
        names = {"NumNeighbors": "num_neighbors", "PerAtomModifier": "per_atom_energy" if inner == "total_energy" else None}
        field_name = names.get(target)
        if field_name is None:
            fail(f"not supported yet: statistics field {field_value.get('_target_')}", ctx, f"{key}.field")
    else:
        field_name = _STAT_FIELDS.get(field_value) or fail(f"not supported yet: statistics field {field_value!r}", ctx, f"{key}.field")
    metric = body.get("metric") or {}
    target = str(metric.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(metric, dict) else ""
    if target not in _STAT_METRICS:
        fail(f"not supported yet: statistics metric {metric!r} (built: {sorted(_STAT_METRICS)})", ctx, f"{key}.metric")
    name = _STAT_METRICS[target]
    out = {"field": field_name, "metric": name, "per_type": bool(body.get("per_type", False))}
    if target == "StandardDeviation":
        out["metric"] = "var" if metric.get("squared") else "std"
        out["unbiased"] = bool(metric.get("unbiased", True))
    if target in ("Max", "Min") and metric.get("abs"):
        out["metric"] = "abs" + name
    if body.get("name"):
        out["name"] = body["name"]
    return out


def data_section(value: Any, model: Dict[str, Any], statistics, with_test: bool, ctx: Context):
    """(native ``data``, seed, ``data_statistics`` of the model section or None)."""
    key = "data"
    kind_of(value, ["ase_datamodule"], ctx, key)
    body = check_keys(value, _ASE_KEYS, ctx, key)
    if body.get("seed") is None:
        fail("missing required key", ctx, f"{key}.seed")
    fmt = dict(body.get("ase_args") or {})
    if set(fmt) - {"format"} or fmt.get("format", "extxyz") not in ("extxyz", "xyz"):
        fail(f"not supported yet: {key}.ase_args other than format: extxyz", ctx, f"{key}.ase_args")
    key_map = {}
    for ase_key, nequip_key in dict(body.get("key_mapping") or {}).items():
        if nequip_key not in _LABELS:
            fail(f"not supported yet: key {nequip_key!r} (built: {sorted(_LABELS)})", ctx, f"{key}.key_mapping.{ase_key}")
        key_map[ase_key] = _LABELS[nequip_key]
    cutoff = _transforms(body.get("transforms"), model, ctx, f"{key}.transforms")
    loaders = {part: _loader(body.get(f"{part}_dataloader"), ctx, f"{key}.{part}_dataloader", part == "train")
               for part in ("train", "val", "test")}
    sections = _data_parts(body, ctx, key)
    native: Dict[str, Any] = {}
    for part, native_part in (("train", "train"), ("val", "valid"), ("test", "test")):
        if part not in sections or (part == "test" and not with_test):
            continue
        entry = {**sections[part], "format": "extxyz", "key_map": dict(key_map), "batch_size": loaders[part]["batch_size"],
                 "sampler": "epoch"}
        if part == "train":
            entry["shuffle"] = loaders["train"]["shuffle"]
        native[native_part] = entry
    if "train" not in native or "valid" not in native:
        fail("needs training and validation data (train_file_path / val_file_path or split_dataset with train and val)",
              ctx, key)
    if with_test and "test" not in native:
        fail("run has test but the data has no test set", ctx, key)
    if cutoff is not None:
        native["cutoff"] = cutoff
    return native, int(body["seed"]), _statistics(body.get("stats_manager"), model, ctx, f"{key}.stats_manager") or statistics


def _data_parts(body: Dict[str, Any], ctx: Context, key: str) -> Dict[str, Dict[str, Any]]:
    """train / val / test native sections (paths, split) from the file paths or ``split_dataset``."""
    parts = {p: {"paths": _paths(body.get(f"{p}_file_path"), ctx, f"{key}.{p}_file_path")}
             for p in ("train", "val", "test") if body.get(f"{p}_file_path")}
    split = body.get("split_dataset")
    if split in (None, [], {}):
        return parts
    splits = split if isinstance(split, list) else [split]
    if len(splits) != 1 or parts:
        fail("not supported yet: several split_dataset entries, or split_dataset with *_file_path", ctx, f"{key}.split_dataset")
    spec = dict(splits[0])
    path = spec.pop("file_path", None) or fail("missing required key", ctx, f"{key}.split_dataset.file_path")
    unknown = sorted(set(spec) - {"train", "val", "test"})
    if unknown:
        fail(f"not supported yet: split part {unknown[0]!r}" if unknown[0] == "predict" else "unknown key", ctx,
              f"{key}.split_dataset.{unknown[0]}")
    for part in spec:
        parts[part] = {"paths": [str(path)], "split": {"sizes": dict(spec), "part": part, "seed": int(body["seed"])}}
    return parts
