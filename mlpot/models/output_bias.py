"""Per-type output bias of any model, and DeePMD-kit's two ways of fitting it to data.

A model whose atomic output contains a constant per atom type, O_i = ... + c_i b_{t_i}, exposes that
bias through :meth:`AtomisticModel.output_bias` as an :class:`OutputBias`: the bias tensor
``values`` (n_types, n_out) inside the model (changed in place), the frame label it shifts (ENERGY in
eV, or DOS), the rows fixed by the user (``atom_ener`` / ``preset_out_bias``), the least-squares
``rcond``, and ``coefficients(batch)`` -> c_i (n_atoms,): how much atom i's output moves per unit of
its type's bias (1 for a plain or summed model; 1 - λ_i for a table blend without
``srtab_add_bias``). With N (n_frames, n_types) the coefficient-weighted type counts of the frames
that carry the label:

* **set-by-statistic**: b = argmin |N b - y|² over the raw frame labels y;
* **change-by-statistic**: b += argmin |N δ - (y - prediction)|², the prediction taken with the
  current bias (DeePMD-kit's fine-tune / change-bias / ``change_bias_after_training`` mode).

The solver is numpy's SVD ``lstsq``: for frames of one fixed composition (all of the water data)
the problem is rank-deficient and the minimum-norm solution b ∝ composition is returned, as in
DeePMD-kit [COMPAT]. Fixed rows keep their value; they are subtracted before solving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mlpot.data.keys import ATOM_TYPES, BATCH, ENERGY, weight_key
from mlpot.errors import ConfigError

__all__ = ["OutputBias", "least_squares_bias", "labelled_counts_and_values", "set_by_statistic",
           "shift_by_residual", "change_by_statistic", "predict_frames", "fit_composite_bias", "energy_bias",
           "refit_energy_bias", "change_energy_bias"]

Batch = Dict[str, torch.Tensor]


@dataclass
class OutputBias:
    """Handle on a model's per-type output bias (see the module docstring)."""

    values: torch.Tensor  # (n_types, n_out), a buffer of the model, changed in place
    frame_key: str  # the per-frame label the bias shifts (ENERGY, DOS)
    fixed: Optional[Sequence[Optional[Any]]] = None  # per type: a preset row (kept) or None (fitted)
    rcond: Optional[float] = None
    out_std: Optional[torch.Tensor] = None  # (n_types, n_out) residual std, set by set-by-statistic
    coefficients: Optional[Callable[[Batch], torch.Tensor]] = None  # batch -> c_i (n_atoms,), default 1

    @property
    def n_types(self) -> int:
        return int(self.values.shape[0])

    def fixed_rows(self) -> List[Optional[Any]]:
        return list(self.fixed) if self.fixed is not None else [None] * self.n_types


def least_squares_bias(counts: np.ndarray, values: np.ndarray, rcond: Optional[float] = None,
                       preset: Optional[Sequence[Optional[Any]]] = None) -> np.ndarray:
    """Per-type bias b (n_types, n_out) solving counts (n_frames, n_types) @ b ≈ values (n_frames, n_out).

    numpy's SVD least squares: rank-deficient systems (fixed composition) give the minimum-norm
    solution. ``preset[t]`` (not None) fixes b[t] and is subtracted before solving.
    """
    counts = np.asarray(counts, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).reshape(len(counts), -1)
    bias = np.zeros((counts.shape[1], values.shape[1]))
    free = np.ones(counts.shape[1], dtype=bool)
    if preset is not None:
        for t, value in enumerate(preset):
            if value is not None:
                bias[t] = value
                free[t] = False
        values = values - counts[:, ~free] @ bias[~free]
    if free.any():
        bias[free] = np.linalg.lstsq(counts[:, free], values, rcond=rcond)[0]
    return bias


def labelled_counts_and_values(bias: OutputBias, batches: Sequence[Batch], labels: Optional[Sequence[torch.Tensor]] = None
                               ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(N (n_frames, n_types), y (n_frames, n_out)) over the frames of ``batches`` that carry the
    label (``find_*`` weight > 0); ``labels`` replaces the batches' own label values (one tensor per
    batch, e.g. label - prediction). None when no frame carries the label."""
    counts, values = [], []
    for index, batch in enumerate(batches):
        if bias.frame_key not in batch:
            continue
        n_frames = batch[bias.frame_key].shape[0]
        weight = batch.get(weight_key(bias.frame_key))
        present = (torch.ones(n_frames, dtype=torch.bool) if weight is None
                   else weight.detach().cpu().reshape(n_frames, -1)[:, 0] > 0)
        coefficient = (torch.ones(len(batch[BATCH]), dtype=torch.float64) if bias.coefficients is None
                       else bias.coefficients(batch).detach().to(torch.float64).cpu())
        count = torch.zeros(n_frames, bias.n_types, dtype=torch.float64)
        count.index_put_((batch[BATCH].cpu(), batch[ATOM_TYPES].cpu()), coefficient, accumulate=True)
        label = batch[bias.frame_key] if labels is None else labels[index]
        counts.append(count[present].numpy())
        values.append(label.detach().cpu().to(torch.float64).reshape(n_frames, -1)[present].numpy())
    if not counts:
        return None
    return np.concatenate(counts), np.concatenate(values)


def set_by_statistic(bias: OutputBias, batches: Sequence[Batch]) -> Optional[Dict[str, np.ndarray]]:
    """Set the bias (and ``out_std``) to the least-squares fit of the raw frame labels.

    Returns {"bias": (n_types, n_out), "std": (n_out,)}, or None when no frame has the label.
    """
    data = labelled_counts_and_values(bias, batches)
    if data is None:
        return None
    counts, values = data
    fitted = least_squares_bias(counts, values, bias.rcond, bias.fixed_rows())
    residual = values - counts @ fitted
    std = residual.std(axis=0) if len(residual) > 1 else np.ones(values.shape[1])
    with torch.no_grad():
        bias.values.copy_(torch.as_tensor(fitted, dtype=bias.values.dtype))
        if bias.out_std is not None:
            bias.out_std.copy_(torch.as_tensor(std, dtype=bias.out_std.dtype).expand_as(bias.out_std))
    return {"bias": fitted, "std": std}


def shift_by_residual(bias: OutputBias, batches: Sequence[Batch], residuals: Sequence[torch.Tensor]) -> Optional[np.ndarray]:
    """Add to the bias the least-squares per-type fit of ``residuals`` (label - prediction, one
    (n_frames, ...) tensor per batch); fixed rows are left alone. Returns the shift (n_types, n_out),
    or None when no frame carries the label."""
    data = labelled_counts_and_values(bias, batches, residuals)
    if data is None:
        return None
    counts, values = data
    shift = least_squares_bias(counts, values, bias.rcond, [0.0 if row is not None else None for row in bias.fixed_rows()])
    with torch.no_grad():
        bias.values += torch.as_tensor(shift, dtype=bias.values.dtype, device=bias.values.device)
    return shift


def predict_frames(model: torch.nn.Module, batches: Sequence[Batch], key: str) -> List[torch.Tensor]:
    """``model(batch)[key]`` for each batch (eval mode, no grad, CPU float64 results)."""
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [model({k: v.to(device) for k, v in batch.items()})[key].detach().to(torch.float64).cpu()
                    for batch in batches]
    finally:
        model.train(was_training)


def _residuals(model: torch.nn.Module, bias: OutputBias, batches: Sequence[Batch]) -> Tuple[List[Batch], List[torch.Tensor]]:
    """The batches that carry the bias's label, and label - model prediction for each."""
    labelled = [b for b in batches if bias.frame_key in b]
    predictions = predict_frames(model, labelled, bias.frame_key)
    return labelled, [b[bias.frame_key].to(torch.float64).cpu() - p.reshape(b[bias.frame_key].shape)
                      for b, p in zip(labelled, predictions)]


def change_by_statistic(model: torch.nn.Module, bias: OutputBias, batches: Sequence[Batch]) -> Optional[np.ndarray]:
    """Change-by-statistic: predict ``batches`` with ``model`` (whose output contains ``bias``) and
    add the least-squares fit of label - prediction to the bias. Returns the shift or None."""
    return shift_by_residual(bias, *_residuals(model, bias, batches))


def fit_composite_bias(model: torch.nn.Module, batches: Sequence[Batch], output_bias: bool = True) -> Dict[str, Any]:
    """The one output bias of a composite model whose members already have their input statistics:
    zero it, then (``output_bias``) fit it by least squares to label - prediction, i.e. what the
    members do not predict, and set ``out_std`` to the std of what is left. Returns the summary
    entries ({"bias_atom": (n_types, n_out) list} when fitted)."""
    bias = model.output_bias()
    with torch.no_grad():
        bias.values.zero_()
    if not output_bias:
        return {}
    labelled, residuals = _residuals(model, bias, batches)
    result = set_by_statistic(bias, [dict(b, **{bias.frame_key: r}) for b, r in zip(labelled, residuals)])
    return {} if result is None else {"bias_atom": result["bias"].tolist(), "out_std": np.asarray(result["std"]).tolist()}


# ---- the energy bias of a single-task model (fine-tuning, change-bias, change_bias_after_training) ----
def energy_bias(model: torch.nn.Module):
    """The per-type energy bias (:class:`~mlpot.models.output_bias.OutputBias`) of a single-task
    model, or None when it has none (dipole, polar, dos, a bare pair table)."""
    bias = model.output_bias() if hasattr(model, "output_bias") else None
    return bias if bias is not None and bias.frame_key == ENERGY else None


def _energy_bias(model: torch.nn.Module, file: Optional[str]):
    bias = energy_bias(model)
    if bias is None:
        raise ConfigError("the model has no energy bias (bias changes need an energy model)", file=file,
                          key="model/fitting_net")
    return bias


def refit_energy_bias(model: torch.nn.Module, batches: Sequence[Dict[str, torch.Tensor]]) -> Optional[np.ndarray]:
    """Change-by-statistic on a single-task energy model, in place: predict the frames of
    ``batches`` (CPU collated batches with neighbour lists) in eval mode and add the least-squares
    per-type fit of label - prediction to the model's output bias (composite models included).
    Returns the shift (n_types, 1) in eV per atom, or None when no frame has an energy label."""
    return change_by_statistic(model, _energy_bias(model, None), batches)


def change_energy_bias(model: torch.nn.Module, batches: Sequence[Dict[str, torch.Tensor]], mode: str = "change",
                       values: Optional[Sequence[float]] = None, file: Optional[str] = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Change the energy bias of ``model`` (a single-task energy model) in place; returns (old, new)
    biases (n_types,) in eV per atom.

    mode "change": add the least-squares per-type fit of label - prediction over ``batches``
    (CPU collated batches with neighbour lists); "set": the least-squares fit of the raw labels
    (also sets out_std); ``values`` (one per type, type_map order): set the bias to them.
    Types with an atom_ener / preset_out_bias keep theirs in the statistic modes.
    """
    bias = _energy_bias(model, file)
    old = bias.values[:, 0].detach().cpu().numpy().copy()
    if values is not None:
        if len(values) != bias.n_types:
            raise ConfigError(f"{len(values)} bias values for {bias.n_types} types ({list(model.type_map)})",
                              file=file, key="--bias-value")
        with torch.no_grad():
            bias.values[:, 0] = torch.as_tensor(values, dtype=bias.values.dtype)
    elif mode == "set":
        if set_by_statistic(bias, batches) is None:
            raise ConfigError("no frame of the data has an energy label", file=file, key="energy")
    elif mode == "change":
        if refit_energy_bias(model, batches) is None:
            raise ConfigError("no frame of the data has an energy label", file=file, key="energy")
    else:
        raise ConfigError(f"unknown mode {mode!r} (change or set)", file=file, key="--mode")
    return old, bias.values[:, 0].detach().cpu().numpy().copy()
