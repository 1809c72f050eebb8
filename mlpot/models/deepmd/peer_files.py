"""DeePMD-kit 3.x trained files (PyTorch backend), read without running code from them.

Two kinds of file, both zip archives written by torch:

* the training checkpoint ``model.ckpt-<step>.pt`` / ``model.ckpt.pt``: ``torch.save`` of
  ``{"model": state dict, "optimizer": ...}``, read with ``torch.load(weights_only=True)`` (tensors
  and plain data only; mlpot's ``read_torch_file``). Its state dict holds the weights under
  ``model.<branch>.`` (``Default`` for a single-task model) and, under ``_extra_state``, the model
  section it was trained with (``model_params``, defaults filled in as in ``out.json``);
* the frozen model ``dp --pt freeze -o frozen.pth``: a TorchScript archive. Its module tree is a
  pickle (``<root>/data.pkl``, tensors in ``<root>/data/<key>``) whose classes are TorchScript's
  ``__torch__.*`` names; :mod:`mlpot.models.safe_pickle` reads it as inert records (nothing of
  the archive's ``code/`` folder is read, compiled or run). Every module's attributes are in its
  record: the weights, and the model section as the JSON string ``model_def_script`` of the top
  module (of its ``backbone_model`` for a spin model, ``SpinEnergyModel``).

Both give a :class:`DeepmdFile`: the model section and the tensors named as the checkpoint names
them without its ``model.Default.`` prefix (``atomic_model.descriptor.sea.mean``...), so one
parameter map (``mlpot.models.deepmd.peer_names``) serves both.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from mlpot.errors import CheckpointError
from mlpot.models.safe_pickle import AllowList, PickledObject, archive_root, load_archive_pickle, open_archive

__all__ = ["DeepmdFile", "is_deepmd_checkpoint", "is_deepmd_frozen_file", "deepmd_checkpoint", "read_deepmd_frozen",
           "FROZEN_ARCHIVE"]

# TorchScript names every class of a scripted module tree (deepmd's and torch.nn's) under __torch__
FROZEN_ARCHIVE = AllowList(packages=("__torch__",),
                           holds="a DeePMD-kit frozen model holds only TorchScript module records and tensors "
                                 "(the file may be corrupted or malicious)")
_MODEL_CLASS = b"__torch__.deepmd."
_SINGLE_TASK = "model.Default."


@dataclass
class DeepmdFile:
    """What mlpot reads from a DeePMD-kit trained file.

    file: the path (for messages); kind: "checkpoint" or "frozen"; model_params: DeePMD-kit's
    model section (JSON-like dict); tensors: name (below the model, e.g.
    ``atomic_model.fitting_net.bias_atom_e``) -> tensor.
    """

    file: str
    kind: str
    model_params: Dict[str, Any]
    tensors: Dict[str, torch.Tensor]


def is_deepmd_checkpoint(payload: Any) -> bool:
    """True for a loaded DeePMD-kit PyTorch checkpoint: ``{"model": {..., "_extra_state":
    {"model_params": {...}}}}`` (mlpot's own files carry a ``format`` entry instead)."""
    state = payload.get("model") if isinstance(payload, dict) and "format" not in payload else None
    extra = state.get("_extra_state") if isinstance(state, dict) else None
    return isinstance(extra, dict) and isinstance(extra.get("model_params"), dict)


def is_deepmd_frozen_file(path) -> bool:
    """True for a TorchScript archive of a DeePMD-kit model (``dp --pt freeze``): a ``constants.pkl``
    record beside ``data.pkl``, whose bytes name a ``__torch__.deepmd`` class (searched, not unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if not pickles or f"{pickles[0][: -len('data.pkl')]}constants.pkl" not in names:
                return False
            return _MODEL_CLASS in archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def deepmd_checkpoint(payload: Dict[str, Any], file: str) -> DeepmdFile:
    """The :class:`DeepmdFile` of a loaded DeePMD-kit checkpoint (``is_deepmd_checkpoint``)."""
    state = payload["model"]
    params = state["_extra_state"]["model_params"]
    if "model_dict" in params:
        raise CheckpointError(f"not supported yet: multi-task DeePMD-kit checkpoints (model/model_dict with "
                              f"{', '.join(map(str, params['model_dict']))}); freeze one branch with "
                              "dp --pt freeze --head BRANCH and read the frozen file", file=file)
    tensors = {name[len(_SINGLE_TASK):]: value for name, value in state.items()
               if name.startswith(_SINGLE_TASK) and isinstance(value, torch.Tensor)}
    others = [name for name in state if name != "_extra_state" and not name.startswith(_SINGLE_TASK)]
    if not tensors or others:
        raise CheckpointError("not a single-task DeePMD-kit checkpoint: expected every weight under "
                              f"'{_SINGLE_TASK}' (found {others[:3]})", file=file)
    return DeepmdFile(file, "checkpoint", _as_built(params, tensors), tensors)


def _as_built(params: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """The model section as DeePMD-kit built the model: its PyTorch se_e2_r has one embedding net per
    neighbour type whatever ``type_one_side`` says (it stores the input's value, default false), so
    the number of nets in the file decides."""
    descriptor = params.get("descriptor")
    if not isinstance(descriptor, dict) or descriptor.get("type") not in ("se_e2_r", "se_r"):
        return params
    nets = {name.split(".")[4] for name in tensors if name.startswith("atomic_model.descriptor.filter_layers.networks.")}
    n_types = len(params.get("type_map") or [])
    if n_types and len(nets) == n_types and not descriptor.get("type_one_side", False):
        params = {**params, "descriptor": {**descriptor, "type_one_side": True}}
    return params


def _spin_input_section(built: Dict[str, Any]) -> Dict[str, Any]:
    """The model section of a spin model's input from the one its frozen backbone stores (DeePMD-kit
    3.x: type map with the "<name>_spin" types, se_e2_a sel doubled, the spin pair and atom exclusions
    added; ``mlpot.models.deepmd.spin`` adds them again)."""
    params = json.loads(json.dumps(built))
    n_types = len(params["type_map"]) // 2
    params["type_map"] = params["type_map"][:n_types]
    descriptor = params["descriptor"]
    if descriptor.get("type") in ("se_e2_a", "se_a") and isinstance(descriptor.get("sel"), list):
        descriptor["sel"] = descriptor["sel"][:n_types]
    descriptor["exclude_types"] = []
    params["pair_exclude_types"] = [p for p in params.get("pair_exclude_types", []) if max(p) < n_types]
    params["atom_exclude_types"] = [t for t in params.get("atom_exclude_types", []) if t < n_types]
    return params


def _module_tensors(record: PickledObject, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript module record and its sub-modules, by dotted path.
    A scripted module pickles one dict of attributes (parameters, buffers, plain tensors and
    sub-modules together), so the names are those of ``state_dict`` plus a few plain tensors."""
    out: Dict[str, torch.Tensor] = {}
    attributes = record.state if isinstance(record.state, dict) else {}
    for name, value in attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, PickledObject):
            out.update(_module_tensors(value, f"{prefix}{name}."))
    return out


def read_deepmd_frozen(path) -> DeepmdFile:
    """The :class:`DeepmdFile` of a DeePMD-kit frozen model (TorchScript archive), read as inert
    records: the archive's code is neither read nor run."""
    source = str(path)
    with open_archive(source, "not a zip archive (DeePMD-kit frozen .pth models are)") as archive:
        root = archive_root(archive, "data.pkl", source)
        tree = load_archive_pickle(archive, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", source, FROZEN_ARCHIVE)
    if not isinstance(tree, PickledObject) or not tree.qualname.startswith("__torch__.deepmd."):
        raise CheckpointError("not a DeePMD-kit frozen model (expected a scripted deepmd module)", file=source)
    spin = tree.class_name == "SpinEnergyModel"
    script = tree.attr("backbone_model").attr("model_def_script") if spin else tree.attr("model_def_script")
    try:
        params = json.loads(script) if isinstance(script, str) else None
    except json.JSONDecodeError:
        params = None
    if not isinstance(params, dict):
        raise CheckpointError("the frozen model holds no model section (model_def_script)", file=source)
    if tree.class_name not in ("EnergyModel", "SpinEnergyModel"):
        raise CheckpointError(f"not supported yet: DeePMD-kit {tree.class_name} files (energy models only)", file=source)
    tensors = _module_tensors(tree)
    if spin:  # the spin wrapper's own tensors follow from model/spin; its backbone stores the built section
        tensors = {name: value for name, value in tensors.items() if name not in ("virtual_scale_mask", "spin_mask")}
        params = _spin_input_section(params)
    return DeepmdFile(source, "frozen", _as_built(params, tensors), tensors)
