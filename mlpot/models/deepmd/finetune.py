"""Fine-tuning a pretrained model and changing its energy bias (spec deepmd.md §3.1, §5.5, §6).

``mlpot train input --finetune pretrained [--model-branch BRANCH|RANDOM] [--use-pretrain-script]``:

1. the pretrained model (checkpoint or frozen file; a multi-task one needs ``--model-branch``, or
   the input's ``model/finetune_head`` when it is not given, to pick a head: a task or one of its
   ``model_branch_alias``) is loaded by the caller and handed to :func:`prepare_finetune`;
2. the input's ``type_map`` must be a subset (any order) of the pretrained one: the per-type
   parameters and statistics (fitting nets, descriptor embedding nets, type-embedding rows, davg/dstd,
   bias_atom, out_std) and the per-type config lists (sel, atom_ener, preset_out_bias, exclude
   types) are selected and reordered by type name. A type the pretrained model lacks is a
   ConfigError ("type_map extension" is not supported yet). Dropping types is only exact for
   mixed-type (type-embedding) descriptors: a per-type ``sel`` descriptor (se_e2_a, se_e2_r) counts
   padded slots of every type section and normalises by sum(sel), so it only allows reordering, as
   in DeePMD-kit;
3. the input's model section must equal the pretrained one (ignoring type_map, seeds, statistics
   sample sizes and ``sel: "auto"``), else a ConfigError names the first differing key; with
   ``--use-pretrain-script`` the pretrained section replaces the input's (type_map from the input);
4. before step 0 (:func:`finetune_bias`): change-by-statistic on the energy bias with the new
   training data (predict, least squares of label - prediction per type, added to the bias). The
   env statistics (davg/dstd) are the pretrained ones. ``RANDOM`` re-initialises the fitting net
   (descriptor kept) and sets the bias by statistic from the labels instead, as DeePMD-kit does.

The bias update itself is the family-neutral ``mlpot.models.output_bias.change_energy_bias`` (also
``mlpot change-bias``). Biases are in eV per atom of each type.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mlpot.data import keys as K
from mlpot.errors import CheckpointError, ConfigError

__all__ = ["RANDOM_BRANCH", "prepare_finetune", "select_branch", "type_index", "remap_model_section",
           "remap_state_dict", "check_model_sections", "finetune_bias"]

RANDOM_BRANCH = "RANDOM"
# keys that do not shape the network or its weights (the statistics are not recomputed)
_IGNORED_KEYS = {"type_map", "seed", "data_stat_nbatch", "data_stat_protect", "data_bias_nsample", "finetune_head",
                 "model_branch_alias", "info"}
# keys of the pretrained branch's section that name it, not the fine-tuned model
_BRANCH_KEYS = ("finetune_head", "model_branch_alias")


# ---- pretrained model and type_map --------------------------------------------------------
def select_branch(model: torch.nn.Module, branch: Optional[str], file: str,
                  key: str = "--model-branch") -> Tuple[torch.nn.Module, bool]:
    """(single-task model to start from, random_fitting) for ``--model-branch`` (or the input's
    ``model/finetune_head``, named by ``key`` in errors).

    A multi-task model needs a branch (one of its heads or their ``model_branch_alias``); ``RANDOM``
    takes the first head of a multi-task model (only its descriptor survives) or the single-task
    model itself; a single-task model is also branch ``Default`` (DeePMD-kit's name for it).
    """
    tasks = list(getattr(model, "tasks", []) or []) if hasattr(model, "heads") else []
    random_fitting = branch == RANDOM_BRANCH
    if not tasks:
        if branch not in (None, RANDOM_BRANCH, "Default"):
            raise ConfigError(f"{key} {branch!r} given, but the pretrained model is single-task (branch Default)",
                              file=file, key=key)
        return model, random_fitting
    if branch is None:
        raise ConfigError(f"a multi-task pretrained model: choose a head with --model-branch or model/finetune_head "
                          f"(one of {model.head_names()}, or {RANDOM_BRANCH})", file=file, key=key)
    if random_fitting:
        return model.heads[tasks[0]], True
    task = model.task_of(branch)
    if task is None:
        raise ConfigError(f"no branch {branch!r} (branches: {model.head_names()})", file=file, key=key)
    return model.heads[task], False


def type_index(type_map: Sequence[str], pretrained: Sequence[str], file: Optional[str] = None) -> List[int]:
    """Index in ``pretrained`` of every type of ``type_map`` (input order)."""
    missing = [t for t in type_map if t not in pretrained]
    if missing:
        raise ConfigError(f"types {missing} are not in the pretrained type_map {list(pretrained)}: "
                          "not supported yet: type_map extension", file=file, key="model/type_map")
    if len(set(type_map)) != len(type_map):
        raise ConfigError(f"repeated type names in {list(type_map)}", file=file, key="model/type_map")
    return [list(pretrained).index(t) for t in type_map]


def _remap_pairs(pairs, index: List[int]):
    new = {old: k for k, old in enumerate(index)}
    return [[new[a], new[b]] for a, b in pairs if a in new and b in new]


def _per_type(values, index: List[int]):
    """A per-type list (missing trailing entries mean None) in the new type order."""
    return [values[i] if i < len(values) else None for i in index]


def remap_model_section(section: Dict[str, Any], index: List[int], type_map: Sequence[str]) -> Dict[str, Any]:
    """The model section with ``type_map`` and every per-type list in the new type order."""
    section = copy.deepcopy(section)
    n_old = len(section.get("type_map") or [])
    section["type_map"] = list(type_map)
    for key in ("atom_exclude_types",):
        if isinstance(section.get(key), list):
            new = {old: k for k, old in enumerate(index)}
            section[key] = [new[t] for t in section[key] if t in new]
    if isinstance(section.get("pair_exclude_types"), list):
        section["pair_exclude_types"] = _remap_pairs(section["pair_exclude_types"], index)
    descriptor = section.get("descriptor")
    if isinstance(descriptor, dict):
        parts = descriptor.get("list", []) if descriptor.get("type") == "hybrid" else [descriptor]
        for part in parts:
            if isinstance(part.get("sel"), list) and len(part["sel"]) == n_old and n_old > 1:
                part["sel"] = [part["sel"][i] for i in index]
            if isinstance(part.get("exclude_types"), list):
                part["exclude_types"] = _remap_pairs(part["exclude_types"], index)
    fitting = section.get("fitting_net")
    if isinstance(fitting, dict):
        for key in ("atom_ener", "preset_out_bias"):
            if isinstance(fitting.get(key), list) and fitting[key]:
                fitting[key] = _per_type(fitting[key], index)
    return section


def _first_difference(mine: Any, theirs: Any, path: str) -> Optional[Tuple[str, Any, Any]]:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in list(mine) + [k for k in theirs if k not in mine]:
            if key in _IGNORED_KEYS:
                continue
            a, b = mine.get(key, "<absent>"), theirs.get(key, "<absent>")
            if key == "sel" and isinstance(a, str) and a.startswith("auto"):
                continue  # resolved from the data; the pretrained value is the resolved one
            found = _first_difference(a, b, f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(mine, (list, tuple)) and isinstance(theirs, (list, tuple)) and len(mine) == len(theirs):
        for k, (a, b) in enumerate(zip(mine, theirs)):
            found = _first_difference(a, b, f"{path}/{k}")
            if found:
                return found
        return None
    same = mine == theirs
    if not same and isinstance(mine, (int, float)) and isinstance(theirs, (int, float)):
        same = float(mine) == float(theirs)
    return None if same else (path, mine, theirs)


def check_model_sections(section: Dict[str, Any], pretrained: Dict[str, Any], *, file: Optional[str],
                         pretrained_file: str) -> None:
    """ConfigError naming the first key where the input model section differs from the
    pretrained one (already in the input's type order)."""
    found = _first_difference(section, pretrained, "model")
    if found:
        path, mine, theirs = found
        raise ConfigError(f"differs from the pretrained model {pretrained_file} (input {mine!r}, pretrained "
                          f"{theirs!r}); make the model sections equal or use --use-pretrain-script",
                          file=file, key=path)


def remap_state_dict(old: torch.nn.Module, new: torch.nn.Module, index: List[int],
                     file: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Weights of ``old`` (pretrained type_map) for ``new`` (built with the type_map ``index``
    selects), by type name: per-type nets renamed, per-type rows selected."""
    from mlpot.models.deepmd.fitting import InvariantFitting
    from mlpot.models.deepmd.type_embedding import TypeEmbedding

    n_old = len(old.type_map)
    old_state = old.state_dict()
    if index == list(range(n_old)):
        return old_state
    dropped = len(index) < n_old
    rename: Dict[str, str] = {}  # new key prefix -> old key prefix
    rows = set()  # keys whose first axis is the atom type
    for name, module in new.named_modules():
        prefix = f"{name}." if name else ""
        previous = old.get_submodule(name) if name else old
        if isinstance(module, InvariantFitting):
            rows |= {prefix + "bias_atom", prefix + "out_std"}
            if not module.mixed_types:
                rename.update({f"{prefix}nets.{t}.": f"{prefix}nets.{i}." for t, i in enumerate(index)})
        elif isinstance(module, TypeEmbedding):
            if module.layers[0].skip or previous.layers[0].skip:  # the skip adds the one-hot itself
                raise ConfigError("not supported yet: changing the type_map of a type embedding whose first "
                                  "layer has a resnet skip (width = number of types or twice that)", file=file,
                                  key="model/type_map")
            rows.add(prefix + "layers.0.weight")
        elif hasattr(module, "davg") and hasattr(module, "sel") and not hasattr(module, "descriptors"):
            rows |= {prefix + "davg", prefix + "dstd"}
            kind = module.config.get("type", type(module).__name__) if isinstance(getattr(module, "config", None), dict) else type(module).__name__
            if getattr(module, "type_order_fixed", False):
                raise ConfigError(f"not supported yet: changing the type_map of descriptor {kind!r} (its type "
                                  "embedding reads the type index itself)", file=file, key="model/type_map")
            if getattr(module, "mixed_types", False):
                continue
            if dropped:
                raise ConfigError(f"not supported yet: dropping pretrained types with descriptor {kind!r} "
                                  "(per-type sel: the padded slots of every type and sum(sel) enter the "
                                  "descriptor); keep every pretrained type (any order) or use a type-embedding "
                                  "descriptor", file=file, key="model/type_map")
            embeddings = getattr(module, "embeddings", None)
            if embeddings is not None and hasattr(module, "_net_index") and getattr(module, "type_embedding", None) is None:
                n_new = len(index)
                for ti in range(n_new):
                    for tj in range(n_new):
                        rename[f"{prefix}embeddings.{module._net_index(ti, tj)}."] = \
                            f"{prefix}embeddings.{previous._net_index(index[ti], index[tj])}."
            elif getattr(module, "type_embedding", None) is None:
                raise ConfigError(f"not supported yet: reordering the type_map of descriptor {kind!r}",
                                  file=file, key="model/type_map")
    result = {}
    for key, target in new.state_dict().items():
        source = key
        for new_prefix, old_prefix in rename.items():
            if key.startswith(new_prefix):
                source = old_prefix + key[len(new_prefix):]
                break
        value = old_state.get(source)
        if value is None:
            raise CheckpointError(f"the pretrained model has no {source!r} for {key!r}", file=file)
        if key in rows:
            value = value[torch.as_tensor(index, dtype=torch.long, device=value.device)]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(f"{key}: pretrained shape {tuple(value.shape)} does not fit {tuple(target.shape)}",
                                  file=file)
        result[key] = value
    return result


def prepare_finetune(config, pretrained: torch.nn.Module, *, build: Callable[..., torch.nn.Module],
                     branch: Optional[str] = None, use_pretrain_script: bool = False, file: Optional[str] = None,
                     pretrained_file: str = "pretrained") -> Tuple[Dict[str, torch.Tensor], bool]:
    """Adapt ``config`` (its model section, in place) to the pretrained model and return
    (initial weights for the trainer, random_fitting).

    config: the validated native config (single-task). pretrained: the loaded model (checkpoint or
    frozen; multi-task allowed with ``branch``). file: the input file, for messages.
    """
    if config.tasks is not None:
        raise ConfigError("not supported yet: fine-tuning into a multi-task input", file=file, key="model/model_dict")
    head = config.model.get("finetune_head") if branch is None else None  # --model-branch wins, as in DeePMD-kit
    model, random_fitting = select_branch(pretrained, branch if head is None else head, pretrained_file,
                                          "--model-branch" if head is None else "model/finetune_head")
    if not hasattr(model, "fitting") or not hasattr(model, "descriptor") or not isinstance(getattr(model, "config", None), dict):
        raise ConfigError("fine-tuning needs a standard (descriptor + fitting) pretrained model",
                          file=pretrained_file, key="model/type")
    section = dict(config.model)
    type_map = list(section.get("type_map") or model.type_map)
    index = type_index(type_map, model.type_map, file)
    reference = {k: v for k, v in remap_model_section(model.config, index, type_map).items() if k not in _BRANCH_KEYS}
    if use_pretrain_script:
        config.model = reference
    else:
        check_model_sections(section, reference, file=file, pretrained_file=pretrained_file)
        config.model = reference  # resolved sel and the pretrained's explicit values
    dtype = next((p.dtype for p in model.parameters()), torch.float64)
    fresh = build(reference, dtype)
    weights = remap_state_dict(model, fresh, index, pretrained_file)
    if random_fitting:  # fitting nets and their statistics from a fresh model; the descriptor stays
        weights.update({k: v for k, v in fresh.state_dict().items() if k.startswith("fitting.")})
    return weights, random_fitting


# ---- energy bias ----------------------------------------------------------------------------
def finetune_bias(model: torch.nn.Module, batches: Sequence[Dict[str, torch.Tensor]], random_fitting: bool,
                  write=print, file: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The bias update before fine-tuning: change-by-statistic, or with a re-initialised fitting
    (``RANDOM``) set-by-statistic plus the fitting's input statistics and output centring of a
    fresh model. Writes one line with the old and new biases."""
    if random_fitting:
        model.fitting.compute_output_statistics(batches, protection=getattr(model, "data_stat_protect", 1e-2))
        if hasattr(model.fitting, "center_initial_output") and hasattr(model, "_center_initial_output"):
            from mlpot.models.base import edge_vectors

            device = model.fitting.bias_atom.device
            samples = []
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                samples.append((batch, edge_vectors(batch)))
            model._center_initial_output(samples)
        old = np.zeros(len(model.type_map))
        new = model.fitting.bias_atom[:, 0].detach().cpu().numpy().copy()
        mode = "set-by-statistic (random fitting)"
    else:
        from mlpot.models.output_bias import change_energy_bias

        old, new = change_energy_bias(model, batches, "change", file=file)
        mode = "change-by-statistic"
    write(f"fine-tuning: energy bias {mode}: " + ", ".join(
        f"{t} {a:.6g} -> {b:.6g}" for t, a, b in zip(model.type_map, old, new)) + " eV")
    return old, new
