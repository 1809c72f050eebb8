"""Display metrics: DeePMD's lcurve values per batch and pooled RMSE/MAE per label.

DeePMD names (specs/deepmd.md §4.2, §5.4): ``rmse`` = sqrt(total weighted loss); ``rmse_e`` =
energy RMSE per atom (eV/atom); ``rmse_f`` = force-component RMSE (eV/Å); ``rmse_v`` = virial RMSE
per atom (eV/atom); ``rmse_ae`` atomic energy; ``rmse_gf`` generalised force; ``rmse_h`` Hessian
entries (eV/Å²); any other label ``X``
is shown as ``rmse_X``.
Validation averages each batch's values with weights equal to its atom count [COMPAT]
(:class:`AtomWeightedMean`); the metrics CSV gets pooled RMSE and MAE per label
(:class:`PooledErrors`), which is the statistically meaningful number.

``dp test`` errors (DeePMD-kit ``dp test``, also its full validation during training):
:func:`label_errors` gives the MAE and RMSE of one label over aligned prediction and reference
arrays (component-wise; with the atom counts also per atom, each frame's difference divided by its
atom count), each with the number of values it averages; :func:`combine_errors` merges such
results of several systems or chunks as if they had been computed at once (MAE weighted by the
number of values, RMSE as the root of the weighted mean square). ``mlpot test``
(``calculators/evaluate.py``) and the full validation (``training/full_validation.py``) both use them.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mlpot.data import keys as K
from mlpot.training.losses import GENERALIZED_FORCE, TERMS, LossTermFn, LossTermSpec


def label_error_sums(pred, batch, labels: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Per-label sums for pooled metrics: ``{name: tensor([Σw r², Σw |r|, Σw])}`` (detached).

    Names are the labels plus ``energy_per_atom`` (and ``virial_per_atom``) with residuals / N.
    The name GENERALIZED_FORCE gives the error of the generalised forces Σ_i drdq_i^T ΔF_i (eV per
    unit of the generalised coordinate), from frames that hold DRDQ. RMSE = sqrt(s0 / s2), MAE = s1 / s2.
    """
    out: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for label in labels:
            if label == GENERALIZED_FORCE:
                present = K.FORCES in pred and K.FORCES in batch and K.DRDQ in batch
                variants = [(label, TERMS[GENERALIZED_FORCE])] if present else []
            elif label not in pred or label not in batch or K.weight_key(label) not in batch:
                continue
            else:
                # magnetic forces: magnetic atoms only; Hessians: the real (3N)² entries, not the padding
                kind = {K.FORCE_MAG: "magnetic", K.HESSIAN: "hessian"}.get(label, "standard")
                variants = [(label, LossTermSpec(label, "none", truncate=label == K.ATOMIC_MULTIPOLES, kind=kind))]
                if label in (K.ENERGY, K.VIRIAL):
                    variants.append((f"{label}_per_atom", LossTermSpec(label, "per_atom")))
            for name, spec in variants:
                residual, weight = LossTermFn(spec).residual_and_weight(pred, batch)
                out[name] = torch.stack([(weight * residual.square()).sum(), (weight * residual.abs()).sum(),
                                         weight.sum()]).double()
    return out


def rmse_mae(sums: torch.Tensor) -> Tuple[float, float]:
    """(RMSE, MAE) from :func:`label_error_sums` entries; nan when no entry carried the label."""
    s0, s1, s2 = (float(v) for v in sums)
    if s2 <= 0:
        return math.nan, math.nan
    return math.sqrt(s0 / s2), s1 / s2


__all__ = ["LCURVE_SHORT", "lcurve_keys", "lcurve_values", "AtomWeightedMean", "PooledErrors", "label_errors",
           "combine_errors", "label_error_sums", "rmse_mae"]

# label -> (DeePMD short name, error-sum entry used for it)
LCURVE_SHORT = {
    K.ENERGY: ("e", "energy_per_atom"),
    K.FORCES: ("f", K.FORCES),
    K.VIRIAL: ("v", "virial_per_atom"),
    K.ATOM_ENERGY: ("ae", K.ATOM_ENERGY),
    GENERALIZED_FORCE: ("gf", GENERALIZED_FORCE),
    K.FORCE_MAG: ("fm", K.FORCE_MAG),
    K.HESSIAN: ("h", K.HESSIAN),
}


def _short(label: str, labels) -> Tuple[str, str]:
    """(lcurve short name, error-sum entry) of a label; with a magnetic-force term the forces are
    the real forces of a spin model, ``fr`` (DeePMD ener_spin)."""
    if label == K.FORCES and K.FORCE_MAG in labels:
        return "fr", K.FORCES
    return LCURVE_SHORT.get(label, (label, label))


def lcurve_keys(labels: Iterable[str]) -> List[str]:
    """Metric keys of lcurve.out for the loss labels (``rmse`` first)."""
    labels = list(labels)
    keys = ["rmse"] + ["rmse_" + _short(label, labels)[0] for label in labels]
    return list(dict.fromkeys(keys))


def lcurve_values(total_loss: float, sums: Mapping[str, torch.Tensor], labels: Iterable[str]) -> Dict[str, float]:
    """{lcurve key: value} of one batch; nan for labels missing from the batch."""
    out = {"rmse": math.sqrt(total_loss) if total_loss >= 0 else math.nan}
    labels = list(labels)
    for label in labels:
        short, entry = _short(label, labels)
        out["rmse_" + short] = rmse_mae(sums[entry])[0] if entry in sums else math.nan
    return out


class AtomWeightedMean:
    """Average of per-batch metric values weighted by each batch's atom count; nan entries skipped."""

    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.weights: Dict[str, float] = {}

    def add(self, values: Mapping[str, float], n_atoms: int) -> None:
        for key, value in values.items():
            if math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + n_atoms * value
                self.weights[key] = self.weights.get(key, 0.0) + n_atoms
            else:
                self.sums.setdefault(key, 0.0)
                self.weights.setdefault(key, 0.0)

    def result(self) -> Dict[str, float]:
        return {k: (self.sums[k] / self.weights[k] if self.weights[k] > 0 else math.nan) for k in self.sums}


class PooledErrors:
    """Accumulates :func:`label_error_sums` over batches; ``result()`` -> {<name>_rmse, <name>_mae}."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}

    def add(self, sums: Mapping[str, torch.Tensor]) -> None:
        for name, value in sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    def result(self) -> Dict[str, float]:
        out = {}
        for name, value in self.sums.items():
            rmse, mae = rmse_mae(value)
            out[f"{name}_rmse"], out[f"{name}_mae"] = rmse, mae
        return out


def label_errors(name: str, predicted: np.ndarray, reference: np.ndarray,
                 n_atoms: Optional[np.ndarray] = None) -> Dict[str, Tuple[float, int]]:
    """``dp test`` errors of one label: ``{<name>_mae, <name>_rmse: (value, number of values)}``.

    predicted, reference: (n, ...) aligned arrays, one row per frame (frame labels) or per atom
    (forces); every component counts as one value. n_atoms: (n,) atom count of each frame: adds
    ``<name>_mae_per_atom`` and ``<name>_rmse_per_atom`` of the differences divided by it. Units
    are those of the arrays. Empty arrays give ``{}``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    diff = (np.asarray(predicted, dtype=np.float64) - reference).reshape(len(reference), -1)
    if diff.size == 0:
        return {}
    variants = [("", diff)]
    if n_atoms is not None:
        variants.append(("_per_atom", diff / np.asarray(n_atoms, dtype=np.float64).reshape(-1, 1)))
    out: Dict[str, Tuple[float, int]] = {}
    for suffix, values in variants:
        out[f"{name}_mae{suffix}"] = (float(np.mean(np.abs(values))), int(values.size))
        out[f"{name}_rmse{suffix}"] = (float(np.sqrt(np.mean(values ** 2))), int(values.size))
    return out


def combine_errors(all_errors: Sequence[Mapping[str, Tuple[float, int]]]) -> Dict[str, Tuple[float, int]]:
    """Merge :func:`label_errors` results (of systems or chunks): MAE weighted by the number of
    values, RMSE as sqrt of the weighted mean square; the same as computing over all values at once."""
    combined: Dict[str, Tuple[float, int]] = {}
    for name in sorted({name for errors in all_errors for name in errors}):
        values = np.array([errors[name][0] for errors in all_errors if name in errors])
        sizes = np.array([errors[name][1] for errors in all_errors if name in errors], dtype=np.float64)
        if "rmse" in name:
            value = float(np.sqrt(np.sum(values ** 2 * sizes) / sizes.sum()))
        else:
            value = float(np.sum(values * sizes) / sizes.sum())
        combined[name] = (value, int(sizes.sum()))
    return combined
