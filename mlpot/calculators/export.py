"""Frozen models: a training checkpoint turned into one standalone file, and loading it back.

A frozen file (``torch.save`` of a plain dict, no pickled classes) holds:

* ``format``: ``"mlpot-frozen"``, ``format_version``: 1;
* ``model_config``: the model section (``build_model(model_config)`` rebuilds the architecture);
* ``state_dict``: weights and data-derived buffers (davg/dstd, output bias), tensors only;
* ``dtype``: the precision the model was trained in; ``metadata``: type_map, cutoff (Å),
  number of parameters, the mlpot version, the source checkpoint and its step, the time of freezing.

``load_model(path)`` accepts a frozen file or a training checkpoint and returns the model in eval
mode. A multi-task checkpoint holds every task's head: ``head=<task>`` (``mlpot freeze --head``,
as ``dp freeze --head``) picks one, and its frozen file is an ordinary single-task model. The model is rebuilt from its config rather than unpickled, so a frozen file stays loadable
as long as the config keys exist (and loading never executes code from the file: ``weights_only``). A model holding NaN or infinity
is neither loaded nor written (a CheckpointError naming the file and the entry).
TorchScript is not used: the models take a dict batch whose optional keys TorchScript cannot type.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from mlpot.errors import CheckpointError
from mlpot.models.compose import FROZEN_FORMAT
from mlpot.training.checkpoint import check_finite_model

__all__ = ["FROZEN_FORMAT", "freeze", "load_model", "read_model_file", "save_frozen"]

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
    """The head ``head`` of a multi-task model (the model itself when single-task and no head asked)."""
    tasks = list(getattr(model, "tasks", []) or []) if hasattr(model, "heads") else []
    if not tasks:
        if head is not None:
            raise CheckpointError(f"--head {head!r} given, but this is a single-task model", file=file)
        return model
    if head is None:
        raise CheckpointError(f"a multi-task model: choose a head with --head (one of {', '.join(tasks)})", file=file)
    if head not in tasks:
        raise CheckpointError(f"no head {head!r} (heads: {', '.join(tasks)})", file=file)
    return model.heads[head]


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", head: Optional[str] = None):
    """The model stored in ``path`` (frozen file or checkpoint), in eval mode on ``device``.

    head: task of a multi-task checkpoint to return (its single-task head); None returns the whole
    multi-task model (which runs its first task).
    """
    from mlpot.models import build_model

    payload = read_model_file(path)
    config, state, dtype, _ = _model_parts(payload, str(path))
    model = build_model(config, dtype=_DTYPES.get(dtype, torch.float64))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the model config (missing: {missing[:5]}, unexpected: {unexpected[:5]})",
            file=str(path),
        )
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


def freeze(checkpoint: PathLike, output: PathLike, head: Optional[str] = None) -> Dict[str, Any]:
    """Write the frozen model of ``checkpoint`` to ``output``; returns its metadata.

    head: the task to freeze from a multi-task checkpoint (required there; an error for a
    single-task one). The model is rebuilt and its weights loaded before writing, so a frozen file
    that was written is known to load.
    """
    from mlpot import __version__

    checkpoint, output = Path(checkpoint), Path(output)
    payload = read_model_file(checkpoint)
    _, _, dtype, step = _model_parts(payload, str(checkpoint))
    model = select_head(load_model(checkpoint), head, str(checkpoint))
    config = model.config
    metadata = {
        "type_map": list(model.type_map),
        "cutoff": float(model.cutoff),
        "num_parameters": int(model.num_parameters()),
        "mlpot_version": __version__,
        "source": str(checkpoint.resolve()),
        "step": step,
        "head": head,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    frozen = {
        "format": FROZEN_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "dtype": dtype,
        "metadata": metadata,
    }
    save_frozen(frozen, output)
    return metadata
