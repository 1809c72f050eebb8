"""Frozen models: a training checkpoint turned into one standalone file, and loading it back.

A frozen file (``torch.save`` of a plain dict, no pickled classes) holds:

* ``format``: ``"mlpot-frozen"``, ``format_version``: 1;
* ``model_config``: the model section (``build_model(model_config)`` rebuilds the architecture);
* ``state_dict``: weights and data-derived buffers (davg/dstd, output bias), tensors only;
* ``dtype``: the precision the model was trained in; ``metadata``: type_map, cutoff (Å),
  number of parameters, the mlpot version, the source checkpoint and its step, the time of freezing;
* ``training_record``: the model's training record (``mlpot.models.record``: min_nbor_dist Å,
  hessian_mode), as in the checkpoint it was frozen from; absent in older files.

``load_model(path)`` accepts a frozen file, a training checkpoint, mace-torch's ``.model`` file and
mace_run_train checkpoint, DeePMD-kit's PyTorch checkpoints (``model.ckpt-*.pt``) and frozen
``.pth`` models (found by content; ``mlpot.models.deepmd.peer_files``), or a peer's trained model
that a model family reads (``read_peer_file``: NequIP ``.ckpt`` Lightning checkpoints and
``.nequip.zip`` packages); peer files are read with ``weights_only`` loading or a restricted
unpickler, never running code from the file. It returns the model in eval mode;
``freeze`` turns any of them into a frozen file. A multi-task checkpoint holds every task's head:
``head=<task>`` (``mlpot freeze --head``, as ``dp freeze --head``) picks one, and its frozen file is
an ordinary single-task model. The model is rebuilt from its config rather than unpickled, so a
frozen file stays loadable as long as the config keys exist (and loading never executes code from
the file: ``weights_only``). A model holding NaN or infinity is neither loaded nor written (a
CheckpointError naming the file and the entry).
TorchScript is not used: the models take a dict batch whose optional keys TorchScript cannot type.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from mlpot.errors import CheckpointError
from mlpot.models.compose import FROZEN_FORMAT
from mlpot.models.equivariant.mace import is_mace_checkpoint, is_mace_model_file, load_mace_checkpoint, load_mace_model_file
from mlpot.models.record import apply_training_record, training_record
from mlpot.training.checkpoint import CHECKPOINT_FORMAT, check_finite_model

__all__ = ["FROZEN_FORMAT", "freeze", "load_model", "read_model_file", "save_frozen", "write_frozen", "apply_modifiers",
           "peer_model"]

FORMAT_VERSION = 1  # FROZEN_FORMAT (the file's "format" entry) is defined once, in mlpot.models.compose
_DTYPES = {"float32": torch.float32, "float64": torch.float64}

PathLike = Union[str, os.PathLike]


def read_model_file(path: PathLike) -> Dict[str, Any]:
    """Load a frozen model or a checkpoint as a dict, never running code from the file
    (``mlpot.training.checkpoint.read_torch_file``); a missing, truncated, foreign or hostile file is a
    CheckpointError naming it."""
    from mlpot.training.checkpoint import read_torch_file

    payload = read_torch_file(path)
    if not isinstance(payload, dict):
        raise CheckpointError("not an mlpot model file (expected a dict)", file=str(path))
    return payload


def _model_parts(payload: Dict[str, Any], file: str):
    """(model_config, state_dict, dtype name, step) from a frozen file or a training checkpoint."""
    if payload.get("format") == FROZEN_FORMAT:
        if payload.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"frozen format version {payload['format_version']} is newer than this mlpot", file=file)
        return payload["model_config"], payload["state_dict"], payload.get("dtype", "float64"), payload["metadata"].get("step")
    # training checkpoint: the model config and weights under the trainer's keys; EMA weights win
    config = payload.get("model_config")
    state = payload.get("ema_state_dict") or payload.get("model_state_dict") or payload.get("model")
    if config is None and isinstance(payload.get("config"), dict):
        config = payload["config"].get("model")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise CheckpointError("neither a frozen model nor a training checkpoint (no model config and weights)", file=file)
    dtype = payload.get("dtype") or (payload.get("config") or {}).get("dtype") or "float64"
    return config, state, dtype, payload.get("step")


def select_head(model, head: Optional[str], file: str):
    """The head ``head`` (a task or one of its ``model_branch_alias``) of a multi-task model (the model
    itself when single-task and no head asked); no head asked: the branch named or aliased
    ``Default`` if there is one (as DeePMD-kit's DeepEval)."""
    tasks = list(getattr(model, "tasks", []) or []) if hasattr(model, "heads") else []
    if not tasks:
        if head is not None:
            raise CheckpointError(f"--head {head!r} given, but this is a single-task model", file=file)
        return model
    if head is None and "Default" in (*tasks, *getattr(model, "aliases", {})):
        head = "Default"
    if head is None:
        raise CheckpointError(f"a multi-task model: choose a head with --head (one of {model.head_names()})", file=file)
    task = model.task_of(head)
    if task is None:
        raise CheckpointError(f"no head {head!r} (heads: {model.head_names()})", file=file)
    return model.heads[task]


def _mace_model(path: Path, payload: Optional[Dict[str, Any]], mace_options):
    """A mace-torch ``.model`` file (read without running its code) or a mace_run_train checkpoint
    (with the options it was trained with), as an mlpot MACE model; None for any other file."""
    if payload is None:
        return load_mace_model_file(path, dtype=None) if is_mace_model_file(path) else None
    if not is_mace_checkpoint(payload):
        return None
    if mace_options is None:
        raise CheckpointError("a mace_run_train checkpoint holds the weights only: give the options it was trained "
                              "with (--mace-options FILE, mace_options=...) or use the run's .model file", file=str(path))
    return load_mace_checkpoint(path, mace_options, dtype=None)


_PEER_SUFFIXES = (".ckpt", ".zip")


def _pickled_format(path: PathLike):
    """The ``format`` entry of a torch zip archive's top-level dict, read as inert records (nothing runs)."""
    import zipfile

    from mlpot.models.safe_pickle import AllowList, archive_root, load_archive_pickle

    try:
        with zipfile.ZipFile(path) as archive:
            root = archive_root(archive, "data.pkl", path)
            tree = load_archive_pickle(archive, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", path,
                                       AllowList(everything=True))
    except (OSError, zipfile.BadZipFile, CheckpointError):
        return None
    return tree.get("format") if isinstance(tree, dict) else None


def peer_model(path: PathLike):
    """The model of a peer's file (``.ckpt`` / ``.zip``) that a model family reads, or None for an mlpot
    file of that name; any other such file is refused (it is never unpickled with code execution)."""
    from mlpot.models.registry import read_peer_model

    if Path(path).suffix not in _PEER_SUFFIXES or not Path(path).is_file():
        return None
    model = read_peer_model(path)
    if model is None and _pickled_format(path) not in (FROZEN_FORMAT, CHECKPOINT_FORMAT):
        raise CheckpointError("neither an mlpot model or checkpoint nor a peer model file mlpot reads "
                              "(NequIP .ckpt / .nequip.zip)", file=str(path))
    return model


def _deepmd_model(path: Path, payload: Optional[Dict[str, Any]]):
    """A DeePMD-kit frozen model (``payload`` None: the file is looked at) or training checkpoint
    (``payload``: its content) as an mlpot DeePMD model, built from the model section the file
    stores through the DeePMD-kit front-end; None for any other file. Nothing from the file runs
    (``mlpot.models.deepmd.peer_files``)."""
    from mlpot.config.deepmd import trained_model_section
    from mlpot.models import build_model
    from mlpot.models.deepmd.peer_files import (deepmd_checkpoint, is_deepmd_checkpoint, is_deepmd_frozen_file,
                                                read_deepmd_frozen)
    from mlpot.models.deepmd.peer_names import deepmd_state_dict
    from mlpot.models.deepmd.peer_tf import deepmd_tf_state_dict, is_deepmd_tf_graph, read_deepmd_tf_graph

    if payload is None:
        if is_deepmd_tf_graph(path):
            parts = read_deepmd_tf_graph(path)
        elif not is_deepmd_frozen_file(path):
            return None
        else:
            parts = read_deepmd_frozen(path)
    elif is_deepmd_checkpoint(payload):
        parts = deepmd_checkpoint(payload, str(path))
    else:
        return None
    section, dtype = trained_model_section(parts.model_params, file=str(path))
    model = build_model(section, dtype=_DTYPES[dtype])
    to_state = deepmd_tf_state_dict if parts.kind == "tf_graph" else deepmd_state_dict
    model.load_state_dict(to_state(model, parts.tensors, str(path)))
    return apply_training_record(model, deepmd_training_record(parts), str(path))


def deepmd_training_record(parts) -> Dict[str, Any]:
    """The training record of a DeePMD-kit file: its ``min_nbor_dist`` (PyTorch buffer, -1 when not
    measured; TF ``train_attr/min_nbor_dist``) and its model section's ``hessian_mode``."""
    value = parts.tensors.get("train_attr/min_nbor_dist" if parts.kind == "tf_graph" else "min_nbor_dist")
    values = torch.empty(0) if value is None else torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    record: Dict[str, Any] = {"hessian_mode": bool(parts.model_params.get("hessian_mode", False))}
    if values.numel() == 1 and float(values[0]) > 0:
        record["min_nbor_dist"] = float(values[0])
    return record


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", head: Optional[str] = None,
               mace_options=None):
    """The model stored in ``path`` (frozen file, checkpoint or peer model file), in eval mode on ``device``.

    head: task of a multi-task checkpoint to return (its single-task head); None returns the whole
    multi-task model (which runs its first task). DeePMD-kit's checkpoints and frozen ``.pth`` files
    load as mlpot DeePMD models (``_deepmd_model``). mace-torch's files load too: a ``.model`` file
    (read by a restricted unpickler, its code never runs) and a mace_run_train checkpoint, which
    needs ``mace_options``, the options YAML (or dict) of its run (``mlpot.models.equivariant.mace``).
    """
    from mlpot.models import build_model

    path = Path(path)
    model = _mace_model(path, None, mace_options) if path.is_file() else None
    if model is None and path.is_file():
        model = _deepmd_model(path, None)
    if model is None:
        model = peer_model(path)
    if model is None:
        payload = read_model_file(path)
        model = _mace_model(path, payload, mace_options)
        if model is None:
            model = _deepmd_model(path, payload)
    if model is None:
        config, state, dtype, _ = _model_parts(payload, str(path))
        model = build_model(config, dtype=_DTYPES.get(dtype, torch.float64))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"weights do not fit the model config (missing: {missing[:5]}, unexpected: {unexpected[:5]})",
                file=str(path),
            )
        apply_training_record(model, payload.get("training_record"), str(path))
    check_finite_model({"state_dict": model.state_dict()}, path, "not loaded")
    if head is not None:
        model = select_head(model, head, str(path))
    return model.to(device).eval()


def save_frozen(payload: Dict[str, Any], path: PathLike) -> None:
    """Write a frozen-model payload to ``path`` atomically (the checkpoint writer's temporary file,
    fsync and rename: never a half-written file, an existing one kept on failure)."""
    import io

    from mlpot.training.checkpoint import atomic_write_bytes

    check_finite_model(payload, path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def apply_modifiers(model, modifiers: Optional[Sequence[Union[str, Dict[str, Any]]]]):
    """``model`` with its family's persistent model modifiers applied (a copy; ``model`` when there are
    none). ``modifiers``: names (NequIP ``enable_ForceStressOutput``) or mappings with ``modifier`` and
    its arguments (``{modifier: modify_PerTypeScaleShift, shifts: {O: -93.5}}``). ``mlpot package`` and
    the generic ``mlpot compile`` call it before writing their file."""
    if not modifiers:
        return model
    from mlpot.errors import ConfigError
    from mlpot.models.registry import family_of

    family = family_of(model.config)
    if family.modify is None:
        raise ConfigError(f"not supported yet: model modifiers for a {family.name} model", key="--modifiers")
    return family.modify(model, [m if isinstance(m, dict) else {"modifier": str(m)} for m in modifiers])


def freeze(checkpoint: PathLike, output: PathLike, head: Optional[str] = None, modifiers=None,
           extra_metadata: Optional[Dict[str, Any]] = None, mace_options=None) -> Dict[str, Any]:
    """Write the frozen model of ``checkpoint`` to ``output``; returns its metadata.

    head: the task to freeze from a multi-task checkpoint (required there; an error for a
    single-task one). modifiers: persistent model modifiers to apply first (``apply_modifiers``).
    extra_metadata: added to the metadata. The model is rebuilt and its weights loaded before
    writing, so a frozen file that was written is known to load. mace-torch files (``.model``, or a
    checkpoint with ``mace_options``) and NequIP files freeze into an mlpot model of the same numbers.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    model = select_head(load_model(checkpoint, mace_options=mace_options), head, str(checkpoint))
    if _pickled_format(checkpoint) in (FROZEN_FORMAT, CHECKPOINT_FORMAT):
        _, _, dtype, step = _model_parts(read_model_file(checkpoint), str(checkpoint))
    else:  # a peer's file
        dtype, step = str(model.dtype).removeprefix("torch."), None
    model = apply_modifiers(model, modifiers)
    return write_frozen(model, output, dtype, {"source": str(checkpoint.resolve()), "step": step, "head": head,
                                               **(extra_metadata or {})})


def write_frozen(model, output: PathLike, dtype: str, metadata: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``model`` (its ``config`` and state dict) as a frozen file; returns the metadata (type_map,
    cutoff, parameter count, version, time of writing, then ``metadata``: source, step, head...)."""
    from mlpot import __version__

    metadata = {
        "type_map": list(model.type_map),
        "cutoff": float(model.cutoff),
        "num_parameters": int(model.num_parameters()),
        "energy_derivatives": bool(getattr(model, "energy_derivatives", True)),
        "mlpot_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **metadata,
    }
    frozen = {
        "format": FROZEN_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "dtype": dtype,
        "metadata": metadata,
        "training_record": training_record(model),
    }
    save_frozen(frozen, output)
    return metadata
