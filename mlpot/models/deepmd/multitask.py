"""Multi-task models (DeePMD-kit multi-task training): one standard model per task, sharing descriptors.

Config (the native section; DeePMD-kit's PyTorch layout)::

    {"type": "multi_task",
     "shared_dict": {name: descriptor section | type_map list, ...},
     "model_dict": {task: standard model section, ...}}

In a task's section, ``descriptor`` and ``type_map`` may be a string naming a ``shared_dict`` entry
(``"name"`` or ``"name:0"``: DeePMD's share level 0, everything shared) instead of a full value.
Each task becomes a :class:`~mlpot.models.deepmd.standard.StandardModel` (a *head*) built from its
resolved section; ``heads[task].config`` is that complete single-task section, which
``mlpot freeze --head`` stores. Tasks naming the same shared descriptor hold the *same* descriptor
module: its parameters and its davg/dstd buffers are one set of tensors, updated by every task's
steps. Fitting nets and output biases are per task. A task's ``model_branch_alias`` list names it too
(``task_of``): wherever a head is chosen (``--head``, ``--model-branch``, ``finetune_head``).

Statistics (``compute_statistics({task: sample batches})``): each descriptor's davg/dstd from the
samples of every task that uses it, pooled (all their environments counted together); each head's
output bias from its own task's samples.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from mlpot.data.keys import EDGE_INDEX
from mlpot.errors import ConfigError, DataError
from mlpot.models.base import AtomisticModel, edge_vectors
from mlpot.models.deepmd.standard import StandardModel

__all__ = ["MultiTaskModel", "build_multi_task", "resolve_task_section", "shared_reference"]

_SHAREABLE = ("descriptor", "type_map")


def shared_reference(value: str, shared_dict: Mapping[str, Any], key: str) -> str:
    """The ``shared_dict`` name a reference string points to (``"name"`` or ``"name:0"``).

    key: key path of the reference, for errors. Share levels other than 0 (partial sharing of
    hybrid members or fittings) are not built.
    """
    name, _, level = value.partition(":")
    if level and level != "0":
        raise ConfigError(f"not supported yet: share level {level} (only 0, everything shared)", key=key)
    if name not in shared_dict:
        known = ", ".join(sorted(shared_dict)) or "none"
        raise ConfigError(f"'{name}' is not a key of model/shared_dict (keys: {known})", key=key)
    return name


def resolve_task_section(task: str, section: Any, shared_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Task ``section`` with its shared references replaced by (copies of) the shared values."""
    path = f"model/model_dict/{task}"
    if not isinstance(section, dict):
        raise ConfigError(f"expected a model section (mapping), got {type(section).__name__}", key=path)
    resolved = copy.deepcopy(section)
    for key in _SHAREABLE:
        if isinstance(resolved.get(key), str):
            name = shared_reference(resolved[key], shared_dict, f"{path}/{key}")
            resolved[key] = copy.deepcopy(shared_dict[name])
    if isinstance(resolved.get("fitting_net"), str):
        raise ConfigError("not supported yet: a shared fitting net (DeePMD needs dim_case_embd for it)",
                          key=f"{path}/fitting_net")
    return resolved


class MultiTaskModel(AtomisticModel):
    """Task heads (StandardModels) that share descriptor modules.

    heads: task name -> StandardModel (a ModuleDict; a shared descriptor appears under every head
    that uses it in ``state_dict`` but is one set of parameters). ``forward(batch)`` runs the head
    ``active_task`` (the first task until changed); the trainer calls ``heads[task]`` directly.
    type_map: the first head's; cutoff: the largest head cutoff (Å).
    """

    def __init__(self, heads: Mapping[str, StandardModel], aliases: Optional[Mapping[str, str]] = None):
        super().__init__()
        if not heads:
            raise ConfigError("needs at least one task", key="model/model_dict")
        self.heads = torch.nn.ModuleDict(dict(heads))
        self.tasks: List[str] = list(heads)
        self.aliases: Dict[str, str] = dict(aliases or {})  # model_branch_alias -> task
        self.active_task = self.tasks[0]
        first = self.heads[self.active_task]
        self.type_map = list(first.type_map)
        self.cutoff = max(float(head.cutoff) for head in self.heads.values())
        self.output_keys = first.output_keys

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Outputs of head ``active_task`` (see StandardModel.forward)."""
        return self.heads[self.active_task](batch)

    def task_of(self, name: str) -> Optional[str]:
        """The task a head name means: a task, a ``model_branch_alias``, else the one task or alias
        equal to it ignoring case (as DeePMD-kit's DeepEval); None when nothing matches."""
        if name in self.heads:
            return name
        if name in self.aliases:
            return self.aliases[name]
        folded = {task for known, task in [(t, t) for t in self.tasks] + list(self.aliases.items())
                  if known.lower() == str(name).lower()}
        return folded.pop() if len(folded) == 1 else None

    def head_names(self) -> str:
        """The tasks with their aliases, for messages: ``a (alias: x, y), b``."""
        listed = {task: [a for a, t in self.aliases.items() if t == task] for task in self.tasks}
        return ", ".join(f"{t} (alias: {', '.join(a)})" if a else t for t, a in listed.items())

    def descriptor_users(self) -> List[List[str]]:
        """Tasks grouped by the descriptor module they use (one group per distinct module)."""
        groups: Dict[int, List[str]] = {}
        for task, head in self.heads.items():
            groups.setdefault(id(head.descriptor), []).append(task)
        return list(groups.values())

    def compute_statistics(self, batches: Mapping[str, Sequence[Dict[str, torch.Tensor]]], **kwargs) -> Dict[str, Any]:
        """Descriptor davg/dstd pooled over the tasks sharing it; output bias per head.

        batches: task -> sample batches (collated dicts with neighbour lists) of that task's data.
        """
        if not isinstance(batches, Mapping) or set(batches) != set(self.tasks):
            raise DataError(f"compute_statistics needs sample batches for every task {self.tasks}")
        for task, task_batches in batches.items():
            if not task_batches:
                raise DataError(f"compute_statistics needs at least one sample batch of task {task!r}")
            if any(EDGE_INDEX not in b for b in task_batches):
                raise DataError("sample batches need neighbour lists (EDGE_INDEX); build them with the data layer",
                                key=EDGE_INDEX)
        summary: Dict[str, Any] = {}
        for users in self.descriptor_users():
            samples = [(dict(b), edge_vectors(b)) for task in users for b in batches[task]]
            summary["descriptor:" + ",".join(users)] = self.heads[users[0]].descriptor.compute_statistics(samples)
        for task, head in self.heads.items():
            summary[f"fitting:{task}"] = head.fitting.compute_output_statistics(
                [dict(b) for b in batches[task]], protection=head.data_stat_protect)
        return summary


def build_multi_task(config: Dict[str, Any], dtype: torch.dtype, build: Callable[..., AtomisticModel]) -> MultiTaskModel:
    """A MultiTaskModel from a ``multi_task`` section (module docstring); ``build(section, dtype)``
    builds each head (the registry's build_model)."""
    unknown = set(config) - {"type", "shared_dict", "model_dict"}
    if unknown:
        raise ConfigError(f"unknown key (multi_task takes shared_dict and model_dict): {sorted(unknown)[0]}",
                          key=f"model/{sorted(unknown)[0]}")
    shared_dict = config.get("shared_dict") or {}
    model_dict = config.get("model_dict")
    if not isinstance(shared_dict, dict):
        raise ConfigError("expected a mapping of shared sections", key="model/shared_dict")
    if not isinstance(model_dict, dict) or not model_dict:
        raise ConfigError("expected a non-empty mapping task -> model section", key="model/model_dict")
    heads: Dict[str, StandardModel] = {}
    shared: Dict[str, StandardModel] = {}  # shared descriptor name -> first head that built it
    aliases: Dict[str, str] = {}
    for task, section in model_dict.items():
        path = f"model/model_dict/{task}"
        resolved = resolve_task_section(task, section, shared_dict)
        _add_aliases(aliases, task, resolved.get("model_branch_alias"), model_dict, f"{path}/model_branch_alias")
        if resolved.get("type", "standard") != "standard" or resolved.get("use_srtab"):
            raise ConfigError("not supported yet: a multi-task head other than a standard model "
                              "(descriptor + fitting_net, no use_srtab)", key=path)
        try:
            head = build(resolved, dtype)
        except ConfigError as error:  # re-rooted under the task: model/x -> model/model_dict/<task>/x
            inner = re.sub(r"^model[./]?", "", error.key or "")
            raise ConfigError(error.message, file=error.file, key=f"{path}/{inner}" if inner else path,
                              hint=error.hint) from error
        reference = section.get("descriptor")
        if isinstance(reference, str):
            name = shared_reference(reference, shared_dict, f"{path}/descriptor")
            owner = shared.setdefault(name, head)
            if owner is not head:
                _check_compatible(owner, head, name, path)
                head.descriptor = owner.descriptor  # the same module: shared parameters and statistics
        heads[task] = head
    return MultiTaskModel(heads, aliases)


def _add_aliases(aliases: Dict[str, str], task: str, names: Any, model_dict: Mapping[str, Any], key: str) -> None:
    """Record ``names`` (a task's model_branch_alias list) as aliases of ``task``; an alias that is a
    task name or another alias is a ConfigError (DeePMD-kit: an assertion)."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"expected a list of branch names, got {names!r}", key=key)
    for name in names:
        if name in model_dict or name in aliases:
            owner = name if name in model_dict else aliases[name]
            raise ConfigError(f"alias {name!r} of branch {task!r} is already the name or an alias of branch "
                              f"{owner!r}", key=key)
        aliases[name] = task


def _check_compatible(owner: StandardModel, head: StandardModel, name: str, path: str) -> None:
    """Heads sharing a descriptor must mean the same types and exclude the same pairs."""
    if list(owner.type_map) != list(head.type_map):
        raise ConfigError(f"type_map {head.type_map} differs from {owner.type_map} of another task sharing "
                          f"descriptor '{name}'", key=f"{path}/type_map")
    mine, theirs = head.config.get("pair_exclude_types", []), owner.config.get("pair_exclude_types", [])
    if mine != theirs:
        raise ConfigError(f"pair_exclude_types {mine} differs from {theirs} of another task sharing descriptor "
                          f"'{name}' (they change the descriptor)", key=f"{path}/pair_exclude_types")
