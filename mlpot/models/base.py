"""The model interface shared by every atomistic model.

An ``AtomisticModel`` maps a batch dictionary (keys of ``mlpot.data.keys``) to a dictionary of
outputs. Geometry is recomputed inside ``forward`` from POSITIONS, CELL, EDGE_INDEX, EDGE_SHIFTS and
BATCH, so that autograd through the positions and the cell gives forces and strain derivatives
(``mlpot.models.derivatives.compute_derivatives`` does this for every model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import BATCH, CELL, EDGE_INDEX, EDGE_SHIFTS, POSITIONS
from mlpot.data.neighbors import edge_vectors as _edge_vectors
from mlpot.nn.tracing import is_tracing

if TYPE_CHECKING:
    from mlpot.models.output_bias import OutputBias

__all__ = ["AtomisticModel", "FineTune", "edge_vectors", "n_frames_of"]

Batch = Dict[str, torch.Tensor]


@dataclass
class FineTune:
    """What a family's ``prepare_finetune`` hook returns to ``mlpot train --finetune``: the initial
    weights, and ``after_statistics(model, samples, write)``, run once the data-statistics sample
    exists (bias or E0 updates by statistic)."""

    weights: Dict[str, torch.Tensor]
    after_statistics: Callable[[torch.nn.Module, list, Callable[[str], None]], Any]


def n_frames_of(batch: Batch) -> int:
    """Number of frames in a batch (from CELL, which is per frame)."""
    return int(batch[CELL].shape[0])


def edge_vectors(batch: Batch, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Edge vectors r_ij = R_j - R_i + shift_ij · cell of a batch, (n_edges, 3) Å.

    Differentiable in POSITIONS and CELL (n_frames, 3, 3); thin wrapper of
    ``mlpot.data.neighbors.edge_vectors`` reading the batch keys.
    """
    cell = batch[CELL].to(batch[POSITIONS].dtype)
    if cell.shape[0] == 1 and not is_tracing():  # one frame (MD): one cell for all edges, not one per edge
        cell = cell[0]
    vectors = _edge_vectors(batch[POSITIONS], batch[EDGE_INDEX], batch[EDGE_SHIFTS], cell, batch[BATCH])
    return vectors if dtype is None else vectors.to(dtype)


class AtomisticModel(torch.nn.Module):
    """Base class of atomistic models.

    Attributes
    ----------
    type_map: element (or type) names; ATOM_TYPES index into it.
    cutoff: neighbour-list cutoff in Å that the batches must have been built with.
    config: the model section this model was built from (``build_model(config)`` rebuilds it).
    output_keys: batch keys that ``forward`` returns.
    input_keys: optional batch inputs ``forward`` reads besides the geometry (FPARAM, APARAM...);
    readers skip the others.
    statistics_batches: batches of every training system in the sample ``compute_statistics`` sees.
    energy_derivatives: False for an energy-only model (NequIP ``do_derivatives: false``): forces,
    virial and stress are then not computed (``compute_derivatives`` skips them), a loss on them is
    a configuration error and calculators report the energy only.
    min_nbor_dist, hessian_mode: the training record (``mlpot.models.record``): the smallest
    neighbour distance of the training data (Å; None: not known) and whether the training loss had
    a Hessian term. Not weights: checkpoints and frozen files store them beside the state dict.
    """

    type_map: List[str]
    cutoff: float
    config: Dict[str, Any]
    output_keys: Tuple[str, ...] = ()
    statistics_batches: int = 10  # batches per training system in the data-statistics sample
    energy_derivatives: bool = True
    min_nbor_dist: Optional[float] = None
    hessian_mode: bool = False

    @property
    def input_keys(self) -> Tuple[str, ...]:
        """Optional batch inputs read besides the geometry; by default those of the submodels
        (members of composite models, heads of multi-task models) that declare their own."""
        keys: List[str] = []
        for module in self.modules():
            if module is not self and isinstance(module, AtomisticModel) \
                    and type(module).input_keys is not AtomisticModel.input_keys:
                keys += [key for key in module.input_keys if key not in keys]
        return tuple(keys)

    def forward(self, batch: Batch) -> Batch:  # pragma: no cover - interface
        raise NotImplementedError

    def compute_statistics(self, batches: Iterable[Batch], **kwargs) -> Dict[str, Any]:
        """Set data-dependent buffers (normalisation, output bias) from sample batches; returns a summary."""
        return {}

    # ---- optional hooks of the training engine (no-ops by default) -----------------------
    #: debug-log sink the trainer sets (a model may write diagnostic lines to it)
    diagnostics: Optional[Callable[[str], None]] = None

    def request_outputs(self, labels: Iterable[str]) -> None:
        """The batch keys the current losses compare (called at each stage): a model computes
        optional outputs (ESPs, polarizabilities, ...) only when asked."""

    def epoch_report(self) -> Optional[str]:
        """A line for the training log at the end of each epoch (e.g. SCF convergence counts), or None."""
        return None

    def after_training(self, batches: Iterable[Batch]) -> Optional[str]:
        """A report printed after training, computed on ``batches`` (validation, else training), or None."""
        return None

    def output_bias(self) -> Optional["OutputBias"]:
        """The model's per-type output bias (:class:`~mlpot.models.output_bias.OutputBias`) that
        the bias statistics (set/change-by-statistic, change_bias_after_training, fine-tuning,
        ``mlpot change-bias``) work on; None when the model has none to change."""
        return None

    @property
    def dtype(self) -> torch.dtype:
        for parameter in self.parameters():
            return parameter.dtype
        for buffer in self.buffers():
            if buffer.is_floating_point():
                return buffer.dtype
        return torch.get_default_dtype()

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) scalar parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"type_map={self.type_map}, cutoff={self.cutoff}"


def check_type_map(type_map: Sequence[str]) -> List[str]:
    """Validate a type map (non-empty list of distinct names)."""
    from mlpot.errors import ConfigError

    if not isinstance(type_map, (list, tuple)) or not type_map:
        raise ConfigError("must be a non-empty list of type names", key="model.type_map")
    names = [str(t) for t in type_map]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate names in {names}", key="model.type_map")
    return names
