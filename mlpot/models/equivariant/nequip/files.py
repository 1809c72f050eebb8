"""Load NequIP 0.19 trained models into :class:`NequIPModel`, without running code from the files.

* ``load_nequip_checkpoint(path)``: a Lightning checkpoint written by ``nequip-train`` (``.ckpt``).
  Hyperparameters come from ``hyper_parameters.model``; weights from ``state_dict``, the EMA
  weights when the checkpoint has them (NequIP evaluates, packages and compiles with those).
* ``load_nequip_package(path)``: a ``nequip-package build`` archive (``.nequip.zip``).
  Hyperparameters come from ``model/config.yaml`` (YAML, read with ``safe_load``); weights from the
  pickled eager model, read as a tree of inert records (the code snapshot inside is never imported).

Both archives are zip files whose pickles are read by :mod:`mlpot.models.safe_pickle`'s restricted
unpickler with NequIP's allow-list (``NEQUIP_CHECKPOINT``: containers and tensors only;
``NEQUIP_PACKAGE``: also inert records of NequIP/e3nn/torch.nn classes);
weight names are mapped by :mod:`.parameter_names` and every weight, shape and constant buffer is
checked, so a file of a different architecture is an error, never a silently different model.
Errors are ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch
import yaml
from e3nn import o3

from mlpot.errors import CheckpointError, ConfigError
from mlpot.models.equivariant.nequip.builder import build_nequip, validate_nequip_section
from mlpot.models.equivariant.nequip.model import NequIPModel, per_edge_type_cutoff_matrix
from mlpot.models.equivariant.nequip.parameter_names import (CHECKED_NEQUIP_BUFFERS, IGNORED_NEQUIP_BUFFERS, WIGNER_BUFFER,
                                                             bessel_frequencies, nequip_section_from_config, nequip_to_mlpot_name)
from mlpot.models.equivariant.nequip.zbl import ZBL_UNITS
from mlpot.models.safe_pickle import AllowList, PickledObject, archive_root, load_archive_pickle, module_state, open_archive

__all__ = ["load_nequip_checkpoint", "load_nequip_package", "read_nequip_checkpoint", "read_nequip_package",
           "NEQUIP_CHECKPOINT", "NEQUIP_PACKAGE", "nequip_file_kind", "load_nequip_file", "package_metadata"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# what NequIP's archives may name: a Lightning checkpoint holds containers and tensors only; a
# package's eager model is a pickled module tree of NequIP, e3nn and torch.nn classes
NEQUIP_CHECKPOINT = AllowList(holds="a NequIP checkpoint holds only weights and known containers")
NEQUIP_PACKAGE = AllowList(packages=("nequip", "e3nn", "torch.nn.modules", "torch.nn.functional", "torch.nn.parameter"),
                           holds="a NequIP package holds only NequIP, e3nn and torch.nn module classes")
_NOT_ZIP = "not a zip archive (expected a NequIP .ckpt or .nequip.zip)"


def nequip_file_kind(path) -> Optional[str]:
    """"package" or "checkpoint" when ``path`` is a NequIP 0.19 package or Lightning checkpoint, else None.

    Decided from the archive's structure: a package has ``model/eager_model.pkl`` and
    ``model/config.yaml``; a checkpoint's pickle (read as inert records: nothing runs) is a dict with
    ``state_dict`` and ``hyper_parameters.model`` naming a ``nequip.`` builder.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if any(n.endswith("/model/eager_model.pkl") for n in names) and any(n.endswith("/model/config.yaml") for n in names):
                return "package"
            root = archive_root(archive, "data.pkl", path)
            tree = load_archive_pickle(archive, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", path,
                                       AllowList(everything=True))
    except (OSError, zipfile.BadZipFile, CheckpointError):
        return None
    model = ((tree.get("hyper_parameters") or {}) if isinstance(tree, dict) else {}).get("model")
    if isinstance(tree, dict) and "state_dict" in tree and isinstance(model, dict) and \
            str(model.get("_target_", "")).startswith("nequip."):
        return "checkpoint"
    return None


def read_nequip_checkpoint(path) -> Tuple[Dict, Dict[str, torch.Tensor], Optional[List[torch.Tensor]]]:
    """(NequIP model config, energy-model weights by NequIP name, EMA weights or None) of a ``.ckpt``."""
    with open_archive(path, _NOT_ZIP) as archive:
        root = archive_root(archive, "data.pkl", path)
        checkpoint = load_archive_pickle(archive, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", path, NEQUIP_CHECKPOINT)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError("not a Lightning checkpoint (no state_dict / hyper_parameters)", file=str(path))
    config = (checkpoint["hyper_parameters"] or {}).get("model")
    if not isinstance(config, dict):
        raise CheckpointError("hyper_parameters.model is missing", file=str(path), key="hyper_parameters.model")
    state = checkpoint["state_dict"]
    models = {m.group(1) for m in (re.match(r"model\.([^.]+)\.", k) for k in state) if m}
    if models != {"sole_model"}:
        raise CheckpointError(f"not supported yet: checkpoints of several models ({sorted(models)})", file=str(path))
    weights = _energy_model_weights(state, r"model\.sole_model\.model\.func\.", path)
    ema = None
    ema_keys = sorted((k for k in state if re.fullmatch(r"ema\.ema_weight_\d+", k)), key=lambda k: int(k.rsplit("_", 1)[1]))
    extra = state.get("ema._extra_state")
    if ema_keys and (not isinstance(extra, dict) or extra.get("is_holding_ema_weights", True)):
        ema = [state[k] for k in ema_keys]
    return config, weights, ema


def _energy_model_weights(state: Dict, prefix: str, path) -> Dict[str, torch.Tensor]:
    weights = {k[re.match(prefix, k).end():]: v for k, v in state.items() if re.match(prefix, k)}
    if not weights:
        raise CheckpointError(f"no weights under {prefix.replace(chr(92), '')!r}", file=str(path))
    return weights


def read_nequip_package(path) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(NequIP model config, energy-model weights by NequIP name) of a ``.nequip.zip`` package."""
    with open_archive(path, _NOT_ZIP) as archive:
        root = archive_root(archive, "model/eager_model.pkl", path)
        try:
            config = yaml.safe_load(archive.read(f"{root}/model/config.yaml"))
        except (KeyError, yaml.YAMLError) as error:
            raise CheckpointError(f"cannot read model/config.yaml: {error}", file=str(path)) from None
        tree = load_archive_pickle(archive, f"{root}/model/eager_model.pkl", lambda key: f"{root}/.data/{key}.storage", path,
                                   NEQUIP_PACKAGE)
    model = ((config or {}).get("training_module") or {}).get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError("model/config.yaml has no training_module.model", file=str(path), key="training_module.model")
    if not isinstance(tree, PickledObject):
        raise CheckpointError("the eager model is not a pickled module", file=str(path))
    state = module_state(tree, str(path), persistent_only=True, allow=NEQUIP_PACKAGE)
    models = {k.split(".", 1)[0] for k in state}
    if models != {"sole_model"}:
        raise CheckpointError(f"not supported yet: packages of several models ({sorted(models)})", file=str(path))
    return model, _energy_model_weights(state, r"sole_model\.model\.func\.", path)


def _check_constant(name: str, value: torch.Tensor, model: NequIPModel, path) -> None:
    section = model.section
    if name == "edge_norm._rmax_recip":
        if section.per_edge_type_cutoff is None:
            expected = torch.tensor(1.0 / section.r_max, dtype=torch.float64)
        else:
            expected = per_edge_type_cutoff_matrix(section.per_edge_type_cutoff, model.type_map, section.r_max).reciprocal().reshape(-1)
    elif name == "pair_potential.atomic_numbers":
        expected = model.zbl.atomic_numbers if model.zbl is not None else None
    else:  # pair_potential._qqr2exesquare
        expected = torch.tensor(0.5 * ZBL_UNITS[model.zbl.units], dtype=torch.float64) if model.zbl is not None else None
    if expected is None or value.shape != expected.shape or not torch.allclose(value.to(torch.float64), expected.to(torch.float64),
                                                                                rtol=1e-6, atol=0):
        raise CheckpointError(f"{name} = {value.tolist()} does not match the model configuration", file=str(path))


def _load_weights(model: NequIPModel, weights: Dict[str, torch.Tensor], ema: Optional[List[torch.Tensor]], path) -> None:
    section = model.section
    parameters = dict(model.named_parameters())
    targets = model.state_dict()
    mapped: Dict[str, Tuple[str, str]] = {}
    for name, value in weights.items():
        if name in CHECKED_NEQUIP_BUFFERS:
            _check_constant(name, value, model, path)
            continue
        if any(p.fullmatch(name) for p in IGNORED_NEQUIP_BUFFERS):
            if value.numel() and not name.endswith(("output_mask", "_empty")) and "_tensor_constant" not in name:
                raise CheckpointError(f"{name} should be an empty placeholder, got shape {tuple(value.shape)}", file=str(path))
            continue
        wigner = WIGNER_BUFFER.fullmatch(name)
        if wigner:
            expected = o3.wigner_3j(*(int(l) for l in wigner.groups()), dtype=torch.float64)
            if value.shape != expected.shape or not torch.allclose(value.to(torch.float64), expected, atol=1e-6):
                raise CheckpointError(f"{name} is not e3nn's Wigner 3j symbol", file=str(path))
            continue
        target = nequip_to_mlpot_name(name, section)
        if target is not None and target[1] == "flatten" and value.numel() == 0 and target[0] not in targets:
            continue  # NequIP's empty placeholder for absent scales / shifts
        if target is None or target[0] not in targets:
            raise CheckpointError(f"unexpected weight {name!r}: the file's architecture differs from its configuration", file=str(path))
        mapped[name] = target
    if ema is not None:  # EMA buffers follow model.parameters() order = registration order of the parameters
        trainable = [n for n in weights if n in mapped and mapped[n][0] in parameters]
        if len(trainable) != len(ema) or any(weights[n].shape != e.shape for n, e in zip(trainable, ema)):
            raise CheckpointError(f"{len(ema)} EMA weights do not match the {len(trainable)} parameters", file=str(path))
        weights = {**weights, **dict(zip(trainable, ema))}
    missing = set(targets) - {t for t, _ in mapped.values()} - {n for n, b in model.named_buffers() if n not in parameters}
    if missing:
        raise CheckpointError(f"weights missing from the file: {sorted(missing)}", file=str(path))
    with torch.no_grad():
        for name, (target, transform) in mapped.items():
            value = weights[name].to(torch.float64)
            if transform == "bessel":
                value = bessel_frequencies(value, section.r_max)
                if name not in parameters and "bessel.weights" not in parameters and not torch.allclose(value, targets[target].to(value.dtype)):
                    raise CheckpointError(f"{name} is not 1..{section.num_bessels}", file=str(path))
            elif transform == "flatten":
                value = value.reshape(-1)
            destination = parameters.get(target)
            destination = destination if destination is not None else dict(model.named_buffers())[target]
            if destination.shape != value.shape:
                raise CheckpointError(f"{name}: shape {tuple(weights[name].shape)} does not fit {target} {tuple(destination.shape)}",
                                      file=str(path))
            destination.copy_(value.to(destination.dtype))


def _build(config: Dict, weights, ema, path, dtype: Optional[torch.dtype]) -> NequIPModel:
    section_dict = nequip_section_from_config(config, path)
    try:
        section = validate_nequip_section(section_dict, file=str(path))
    except ConfigError as error:
        raise CheckpointError(f"model configuration: {error}", file=str(path)) from None
    file_dtype = _DTYPES[section.model_dtype or "float64"]
    section = section.model_copy(update={"model_dtype": None, "seed": None})
    model = build_nequip(section, dtype or file_dtype)
    model.config["model_dtype"] = {torch.float32: "float32", torch.float64: "float64"}[model.model_dtype]
    _load_weights(model, weights, ema, path)
    return model


def load_nequip_checkpoint(path, dtype: Optional[torch.dtype] = None, use_ema: bool = True) -> NequIPModel:
    """NequIPModel of a NequIP 0.19 ``.ckpt`` (EMA weights if present and ``use_ema``); ``dtype``
    overrides the file's ``model_dtype``."""
    config, weights, ema = read_nequip_checkpoint(path)
    return _build(config, weights, ema if use_ema else None, path, dtype)


def load_nequip_package(path, dtype: Optional[torch.dtype] = None) -> NequIPModel:
    """NequIPModel of a NequIP 0.19 ``.nequip.zip`` package; ``dtype`` overrides the file's ``model_dtype``."""
    config, weights = read_nequip_package(path)
    return _build(config, weights, None, path, dtype)


def load_nequip_file(path, dtype: Optional[torch.dtype] = None) -> Optional[NequIPModel]:
    """The model of a NequIP package or checkpoint (``nequip_file_kind``), None for any other file."""
    kind = nequip_file_kind(path)
    if kind == "package":
        return load_nequip_package(path, dtype)
    return load_nequip_checkpoint(path, dtype) if kind == "checkpoint" else None


def package_metadata(path) -> Dict:
    """``type_names`` and ``r_max`` of the model of a NequIP package (its ``model/config.yaml``) or
    checkpoint (``hyper_parameters.model``), read without building the model."""
    kind = nequip_file_kind(path)
    if kind is None:
        raise CheckpointError("not a NequIP package or checkpoint", file=str(path))
    config = read_nequip_package(path)[0] if kind == "package" else read_nequip_checkpoint(path)[0]
    section = nequip_section_from_config(config, path)
    return {"type_names": list(section["type_names"]), "r_max": float(section["r_max"])}
