"""Load and validate a native YAML config; turn pydantic errors into located ConfigErrors.

``load_config(path)`` reads the YAML, resolves relative data paths and ``output_dir`` against the
file's folder, checks that every data path exists and validates with :class:`NativeConfig`.
``validate_config(dict, file=..., base_dir=...)`` does the same for a dict produced by a peer
front-end. Every error is a :class:`ConfigError` whose message reads
``<file>: <key path>: <what is wrong>`` and, for an unknown key, suggests the closest valid key.
"""

from __future__ import annotations

import copy
import json
import math
import os
import typing
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from mlpot.training.schema import NativeConfig
from mlpot.errors import ConfigError, DataError, suggest

__all__ = ["load_config", "validate_config", "read_yaml"]

PathLike = Union[str, os.PathLike]


def read_yaml(path: PathLike, finite: bool = True) -> Dict[str, Any]:
    """The mapping in a YAML (or, by its ``.json`` suffix, JSON) config file.

    A missing file, a directory, a binary or empty file, a syntax error (with line and column), a
    top level that is not a mapping or (``finite``) a number that is not finite (``NaN``, ``.inf``)
    raises ConfigError naming the file (and the key). Every config front-end reads its files through here.
    """
    path = Path(path)
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    if path.is_dir():
        raise ConfigError("a directory, not a config file", file=str(path))
    if not path.exists():
        raise ConfigError("file not found", file=str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a text file (byte {exc.start} is not UTF-8): expected a {kind} config",
                          file=str(path)) from None
    if not text.strip():
        raise ConfigError(f"empty file: expected a {kind} config", file=str(path))
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{where}: {getattr(exc, 'problem', exc)}", file=str(path)) from None
    if data is None:  # only comments
        raise ConfigError(f"empty file (comments only): expected a {kind} config", file=str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", file=str(path))
    if finite:
        _check_finite(data, [], str(path))
    return data


def _check_finite(value: Any, key: list, file: str) -> None:
    """No config key takes NaN or infinity (JSON ``NaN``/``Infinity``, YAML ``.nan``/``.inf``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"expected a finite number, got {value}", file=file, key=key or None)
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite(item, key + [str(name)], file)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, key + [index], file)


def _model_classes(annotation) -> list:
    """BaseModel classes reachable from an annotation through Optional/Union/List/Dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out.extend(_model_classes(arg))
    return out


def _valid_keys(loc: tuple) -> list:
    """Field names (and aliases) valid at the mapping that holds the last element of ``loc``."""
    models = [NativeConfig]
    for part in loc[:-1]:
        by_name = [m for m in models if m.__name__ == part]
        if by_name:  # a union member tag inserted by pydantic
            models = by_name
            continue
        nxt = []
        for model in models:
            field = model.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                nxt.extend(_model_classes(field.annotation))
        if nxt:
            models = nxt
    names = []
    for model in models:
        for name, field in model.model_fields.items():
            names.append(name)
            alias = field.validation_alias
            names.extend(getattr(alias, "choices", []) if alias is not None else [])
    return sorted(set(n for n in names if isinstance(n, str)))


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-member tags (class or type names) from a location."""
    tags = {"float", "int", "str", "list[int]", "bool", "LossTerm", "function-after", "union"}
    return tuple(p for p in loc if not (isinstance(p, str) and (p in tags or "[" in p)))


def _to_config_error(exc: ValidationError, file: Optional[str]) -> ConfigError:
    errors = exc.errors()
    # prefer the most informative error: unknown keys first, then the deepest location
    errors.sort(key=lambda e: (e["type"] not in ("extra_forbidden", "model_section"), -len(e["loc"])))
    err = errors[0]
    if err["type"] == "model_section":  # located inside the model section by its family's checks
        inner = err["ctx"]["error"]
        return ConfigError(inner.message, file=file, key=inner.key, hint=inner.hint)
    loc = _clean_loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        hint = suggest(str(loc[-1]), _valid_keys(tuple(err["loc"])))
        return ConfigError("unknown key", file=file, key=list(loc),
                           hint=f"did you mean {hint!r}?" if hint else None)
    if err["type"] == "missing":
        return ConfigError("missing required key", file=file, key=list(loc))
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict):
        message += f", got {err['input']!r}"
    return ConfigError(message, file=file, key=list(loc) or None)


def _resolve_paths(data: Dict[str, Any], base: Path, file: Optional[str]) -> None:
    """Make relative data paths and output_dir absolute against ``base``; check data paths exist."""
    data.setdefault("output_dir", ".")
    if isinstance(data["output_dir"], str) and not os.path.isabs(data["output_dir"]):
        data["output_dir"] = os.path.normpath(base / data["output_dir"])
    if isinstance(data.get("finetune"), str) and not os.path.isabs(data["finetune"]):
        data["finetune"] = os.path.normpath(base / data["finetune"])
    data_sections = [data.get("data")]
    if isinstance(data.get("tasks"), dict):  # multi-task: every task has its own data section
        data_sections += [task.get("data") for task in data["tasks"].values() if isinstance(task, dict)]
    for sections in data_sections:
        if isinstance(sections, dict):
            _resolve_data_paths(sections, base)


def _resolve_data_paths(sections: Dict[str, Any], base: Path) -> None:
    """Relative paths of one ``data`` section (train/valid paths, stat_file) made absolute against ``base``."""
    for split in ("train", "valid", "test"):
        section = sections.get(split)
        if not isinstance(section, dict) or not isinstance(section.get("paths"), list):
            continue
        section["paths"] = [str(base / p) if isinstance(p, str) and not os.path.isabs(p) else p
                            for p in section["paths"]]
    if isinstance(sections.get("stat_file"), str) and not os.path.isabs(sections["stat_file"]):
        sections["stat_file"] = str(base / sections["stat_file"])


def _check_paths_exist(config: NativeConfig, file: Optional[str]) -> None:
    located = [(["data"], config.data)]
    located += [(["tasks", name, "data"], task.data) for name, task in (config.tasks or {}).items()]
    for prefix, data in located:
        if data is None:
            continue
        for split in ("train", "valid"):
            section = getattr(data, split)
            if section is None:
                continue
            for index, path in enumerate(section.paths):
                problem = _missing_data_path(path)
                if problem:
                    raise ConfigError(problem, file=file, key=prefix + [split, "paths", index])


def _missing_data_path(path: str) -> Optional[str]:
    """Why ``path`` cannot be read as data, or None. ``file.h5#/group`` needs the file and the group."""
    # imported here: the data package pulls in torch, which plain config validation does not need
    from mlpot.data.deepmd_sources import hdf5_group_exists, split_hdf5_path

    hdf5 = split_hdf5_path(path)
    if hdf5 is None or hdf5[1] is None:
        return None if os.path.exists(path) else f"no such file or directory: {path}"
    h5file, group = hdf5
    if not h5file.is_file():
        return f"no such file: {h5file} (of the HDF5 system path {path})"
    try:
        found = hdf5_group_exists(h5file, group)
    except DataError as exc:
        return str(exc)
    return None if found else f"no group {group} in the HDF5 file {h5file}"


def validate_config(data: Dict[str, Any], *, file: Optional[str] = None,
                    base_dir: Optional[PathLike] = None) -> NativeConfig:
    """Validate a config dict (relative paths resolved against ``base_dir`` when given)."""
    data = copy.deepcopy(dict(data))
    if base_dir is not None:
        _resolve_paths(data, Path(base_dir), file)
    try:
        config = NativeConfig.model_validate(data)
    except ValidationError as exc:
        raise _to_config_error(exc, file) from None
    _check_paths_exist(config, file)
    return config


def load_config(path: PathLike) -> NativeConfig:
    """Read, resolve and validate the native YAML config at ``path``."""
    path = Path(path)
    return validate_config(read_yaml(path), file=str(path), base_dir=path.resolve().parent)

