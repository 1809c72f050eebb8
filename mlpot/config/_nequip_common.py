"""Shared pieces of the NequIP front-end: the translation context and the key checks by ``_target_``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mlpot.errors import ConfigError, suggest

__all__ = ["Context", "NOTED", "UNSUPPORTED", "TARGETS", "fail", "kind_of", "check_keys"]


@dataclass
class Context:
    file: Optional[str]
    notes: List[str]
    output_dir: str
    monitor: Optional[Dict[str, Any]] = None  # the native training.monitor, once a section names one
    val_metrics: Dict[str, float] = field(default_factory=dict)  # native metric -> coefficient (weighted_sum)
    loss_labels: Tuple[str, ...] = ()


# keys that change no number: accepted with a note
NOTED = {
    "num_workers": "mlpot batches in the main process (data are in memory)", "persistent_workers": "no worker processes",
    "pin_memory": "no effect", "prefetch_factor": "no worker processes", "dataloader_kwargs": "statistics do not depend on batching",
    "num_sanity_val_steps": "no sanity validation (it changes no number)", "enable_model_summary": "cosmetic",
    "LearningRateMonitor": "the learning rate is in lcurve.out and the metrics CSV", "backend": "mlpot's neighbour lists (vesin) are the same lists",
    "accelerator": "mlpot uses the local GPU when CUDA is available, else the CPU", "verbose": "cosmetic",
    "log_rank_zero_only": "rank 0 logs", "compile_mode": "mlpot trains its model eagerly (train-time torch.compile changes no number)",
}
# documented keys that are not built (listed in docs/nequip_keys.md)
UNSUPPORTED = ("val_check_interval", "deterministic", "benchmark", "accumulate_grad_batches", "param_groups",
               "extra_metrics", "ignore_nan", "include_keys", "exclude_keys", "predict_file_path", "strategy")

TARGETS = {
    "ase_datamodule": ("nequip.data.datamodule.ASEDataModule",),
    "nequip_datamodule": ("nequip.data.datamodule.NequIPDataModule",),
    "ase_dataset": ("nequip.data.dataset.ASEDataset",),
    "mapper": ("nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",),
    "neighbors": ("nequip.data.transforms.NeighborListTransform",),
    "loader": ("torch.utils.data.DataLoader",),
    "common_stats": ("nequip.data.CommonDataStatisticsManager", "nequip.data.stats_manager.CommonDataStatisticsManager"),
    "energy_stats": ("nequip.data.EnergyOnlyDataStatisticsManager", "nequip.data.stats_manager.EnergyOnlyDataStatisticsManager"),
    "custom_stats": ("nequip.data.DataStatisticsManager", "nequip.data.stats_manager.DataStatisticsManager"),
    "gnn": ("nequip.model.NequIPGNNModel",), "preset": ("nequip.model.PresetNequIPGNNModel",),
    "modify": ("nequip.model.modify",), "from_checkpoint": ("nequip.model.ModelFromCheckpoint",),
    "from_package": ("nequip.model.ModelFromPackage",), "zbl": ("nequip.nn.pair_potential.ZBL", "nequip.nn.ZBL"),
}


def fail(message: str, ctx: Context, key: str, hint: Optional[str] = None):
    raise ConfigError(message, file=ctx.file, key=key, hint=hint)


def kind_of(value: Any, kinds: Sequence[str], ctx: Context, key: str) -> str:
    """The kind of a ``_target_`` mapping among ``kinds`` (ConfigError otherwise)."""
    target = value.get("_target_") if isinstance(value, dict) else None
    for kind in kinds:
        if target in TARGETS.get(kind, (kind,)):
            return kind
    known = [t for k in kinds for t in TARGETS.get(k, (k,))]
    if target is None:
        fail(f"expected a mapping with _target_ (one of {known})", ctx, key)
    hint = suggest(str(target), known)
    fail(f"not supported yet: _target_ {target!r} (built: {known})", ctx, f"{key}._target_", f"did you mean {hint!r}?" if hint else None)


def check_keys(value: Dict[str, Any], allowed: Dict[str, Any], ctx: Context, key: str) -> Dict[str, Any]:
    """The mapping without ``_target_``; unknown keys and unsupported non-default ones raise, noted ones note."""
    out = {k: v for k, v in value.items() if k != "_target_"}
    for name, item in out.items():
        if name not in allowed:
            hint = suggest(name, list(allowed))
            fail("unknown key", ctx, f"{key}.{name}", f"did you mean {hint!r}?" if hint else None)
        default = allowed[name]
        if default == "unsupported" or (name in UNSUPPORTED and item not in (None, [], {}, False)):
            fail(f"not supported yet: {key}.{name}", ctx, f"{key}.{name}")
        if name in NOTED and item not in (None, 0, False, "auto"):
            ctx.notes.append(f"{key}.{name}: {NOTED[name]}")
    return out
