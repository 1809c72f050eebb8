"""Evaluate a model on datasets: errors per label, ``dp test`` style report and detail files.

:func:`evaluate_frames` runs a model over frames (any reader's output) and collects predictions
and labels per system into a :class:`SystemResult`; :func:`system_errors` turns one into MAE/RMSE per
label, :func:`weighted_average` combines systems as ``dp test`` does (each error weighted by its
number of values), :func:`format_report` prints DeePMD-kit's lines and :func:`write_detail_files`
writes ``<prefix>.e.out``, ``.e_peratom.out``, ``.f.out``, ``.v.out``, ``.v_peratom.out`` (and
``.s.out`` for stress labels).

Units: energy eV, forces eV/Å, virial eV (DeePMD sign: Ξ = -Σ r ⊗ ∂E/∂r), stress eV/Å^3
(= -Ξ / V, ASE sign). Only labels present in a frame (weight > 0) enter its errors; virial and stress
are skipped for non-periodic frames (DeePMD-kit bug #1286 is not copied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mlpot.training.metrics import combine_errors, label_errors

__all__ = [
    "SystemResult",
    "system_errors",
    "weighted_average",
    "format_report",
    "write_detail_files",
    "predict_batch",
    "iterate_predictions",
    "evaluate_frames",
]

# label -> (report name, unit) in the order dp test prints them
_REPORT = {
    "energy": ("Energy", "eV"),
    "forces": ("Force ", "eV/A"),
    "virial": ("Virial", "eV"),
    "stress": ("Stress", "eV/A^3"),
}


@dataclass
class SystemResult:
    """Predictions and labels of one system (a dataset path), label-wise.

    ``reference[label]`` and ``predicted[label]`` hold only the frames that carry the label:
    energy (n,), forces (n_atoms_total, 3), virial (n, 9), stress (n, 9); ``n_atoms[label]`` holds the
    atom count of each of those frames (for per-atom errors).
    """

    name: str
    n_frames: int = 0
    reference: Dict[str, List[np.ndarray]] = field(default_factory=dict)
    predicted: Dict[str, List[np.ndarray]] = field(default_factory=dict)
    n_atoms: Dict[str, List[int]] = field(default_factory=dict)

    def add(self, label: str, reference: np.ndarray, predicted: np.ndarray, n_atoms: int) -> None:
        """Add one frame's label (any shape; flattened per frame for frame-level labels)."""
        self.reference.setdefault(label, []).append(np.asarray(reference, dtype=np.float64))
        self.predicted.setdefault(label, []).append(np.asarray(predicted, dtype=np.float64))
        self.n_atoms.setdefault(label, []).append(int(n_atoms))

    def arrays(self, label: str):
        """(reference, predicted, n_atoms) stacked: frame labels (n, k), atom labels (Σ atoms, 3)."""
        ref = self.reference.get(label, [])
        if not ref:
            return None
        if label == "forces":
            return np.concatenate(ref), np.concatenate(self.predicted[label]), np.array(self.n_atoms[label])
        return (
            np.stack([r.reshape(-1) for r in ref]),
            np.stack([p.reshape(-1) for p in self.predicted[label]]),
            np.array(self.n_atoms[label]),
        )


def system_errors(result: SystemResult) -> Dict[str, tuple]:
    """Errors of one system: name -> (value, number of values it averages).

    Names: ``energy_mae``, ``energy_rmse``, ``energy_mae_per_atom``, ``energy_rmse_per_atom`` (eV),
    ``forces_mae``/``forces_rmse`` (eV/Å, per component), ``virial_*`` (eV, per component, and per
    atom), ``stress_mae``/``stress_rmse`` (eV/Å^3). RMSE is sqrt(mean squared error), never an MSE.
    The arithmetic is ``mlpot.training.metrics.label_errors`` (shared with the full validation).
    """
    errors: Dict[str, tuple] = {}
    for label in _REPORT:
        arrays = result.arrays(label)
        if arrays is None:
            continue
        ref, pred, n_atoms = arrays
        errors.update(label_errors(label, pred, ref, n_atoms if label in ("energy", "virial") else None))
    return errors


# ``dp test`` combines systems by the number of values each error averages (one shared copy)
weighted_average = combine_errors


def format_report(errors: Dict[str, tuple], header: Sequence[str] = ()) -> List[str]:
    """``dp test`` style lines, e.g. ``Energy RMSE/Natoms : 2.976042e-03 eV``; absent labels are skipped."""
    lines = [f"# {text}" for text in header]
    for label, (title, unit) in _REPORT.items():
        for stat in ("MAE", "RMSE"):
            key = f"{label}_{stat.lower()}"
            if key in errors:
                lines.append(f"{title} {stat:<4}        : {errors[key][0]:e} {unit}")
        for stat in ("MAE", "RMSE"):
            key = f"{label}_{stat.lower()}_per_atom"
            if key in errors:
                lines.append(f"{title} {stat + '/Natoms':<11} : {errors[key][0]:e} {unit}")
    return lines


def _append(path: Path, header: str, columns: np.ndarray) -> None:
    with open(path, "a") as handle:
        np.savetxt(handle, columns, header=header)


def write_detail_files(prefix: str, result: SystemResult) -> List[Path]:
    """Append this system's detail files next to ``prefix`` (as ``dp test -d prefix``); returns paths.

    ``.e.out``: data_e pred_e per frame; ``.e_peratom.out``: the same divided by the atom count;
    ``.f.out``: data_fx data_fy data_fz pred_fx pred_fy pred_fz per atom; ``.v.out`` and
    ``.v_peratom.out``: 9 data then 9 predicted virial components; ``.s.out``: the same for stress.
    """
    written = []
    for label, suffixes in (("energy", ("e", "e_peratom")), ("forces", ("f",)), ("virial", ("v", "v_peratom")),
                            ("stress", ("s",))):
        arrays = result.arrays(label)
        if arrays is None:
            continue
        ref, pred, n_atoms = arrays
        for suffix in suffixes:
            scale = n_atoms[:, None] if suffix.endswith("peratom") else 1.0
            ref2, pred2 = ref.reshape(len(ref), -1) / scale, pred.reshape(len(pred), -1) / scale
            short = suffix[0]
            if label == "energy":
                names = ["data_e", "pred_e"]
            else:
                comps = ["x", "y", "z"] if label == "forces" else [a + b for a in "xyz" for b in "xyz"]
                names = [f"data_{short}{c}" for c in comps] + [f"pred_{short}{c}" for c in comps]
            path = Path(f"{prefix}.{suffix}.out")
            _append(path, f"{result.name}: {' '.join(names)}", np.concatenate([ref2, pred2], axis=1))
            written.append(path)
    return written


# ---- running a model over frames --------------------------------------------------------------


def predict_batch(model, batch: Dict[str, "torch.Tensor"], virial: bool = True) -> Dict[str, "torch.Tensor"]:
    """Energy (n_frames,) eV, forces (n_atoms, 3) eV/Å and, when ``virial``, virial (n_frames, 3, 3) eV
    and stress (n_frames, 3, 3) eV/Å^3 of a collated batch (with edges), detached and on the CPU (the batch is moved to the model's
    device first). Forces/virial come from the generic autograd
    wrapper ``mlpot.models.derivatives.compute_derivatives``."""
    import torch

    from mlpot.models.derivatives import compute_derivatives

    device = next(iter(model.parameters()), torch.empty(0)).device
    batch = {key: value.to(device) for key, value in batch.items()}
    with torch.enable_grad():
        outputs = compute_derivatives(model, batch, forces=True, virial=virial, stress=virial)
    return {key: value.detach().cpu() for key, value in outputs.items() if torch.is_tensor(value)}


def iterate_predictions(model, frames: Sequence[dict], batch_size: int = 8, min_distance: Optional[float] = None):
    """Yield (frame, prediction) for each frame; prediction holds numpy ``energy`` (), ``forces``
    (n_atoms, 3) and, for periodic frames, ``virial`` (3, 3) and ``stress`` (3, 3) eV/Å^3.
    Atoms closer than ``min_distance`` Å (default ``MIN_SANE_DISTANCE``) are a DataError."""
    import torch

    from mlpot.data import MIN_SANE_DISTANCE, AtomsDataset, collate
    from mlpot.data.keys import ENERGY, FORCES, PBC, PTR, STRESS, VIRIAL

    dataset = AtomsDataset(frames, cutoff=model.cutoff, type_map=getattr(frames, "type_map", model.type_map),
                           min_distance=MIN_SANE_DISTANCE if min_distance is None else min_distance)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(items, dtype=torch.float64)
        periodic = bool(batch[PBC].all())
        out = predict_batch(model, batch, virial=periodic)
        ptr = batch[PTR].numpy()
        for n, item in enumerate(items):
            prediction = {
                "energy": out[ENERGY][n].numpy(),
                "forces": out[FORCES][ptr[n]:ptr[n + 1]].numpy(),
            }
            if periodic and VIRIAL in out:
                prediction["virial"] = out[VIRIAL][n].numpy()
                prediction["stress"] = out[STRESS][n].numpy()
            yield item, prediction


def evaluate_frames(model, frames: Sequence[dict], name: str, batch_size: int = 8,
                    min_distance: Optional[float] = None) -> SystemResult:
    """Run ``model`` over ``frames`` (read with the model's type_map) and collect the labels they
    carry: energy, forces, and for periodic frames virial and stress (``min_distance``: see
    :func:`iterate_predictions`)."""
    from mlpot.data.keys import ENERGY, FORCES, PBC, STRESS, VIRIAL, weight_key

    result = SystemResult(name, len(frames))
    for frame, prediction in iterate_predictions(model, frames, batch_size, min_distance):
        n_atoms = len(frame[FORCES]) if FORCES in frame else len(prediction["forces"])
        for key, label in ((ENERGY, "energy"), (FORCES, "forces"), (VIRIAL, "virial"), (STRESS, "stress")):
            if key not in frame or float(np.max(frame.get(weight_key(key), 1.0))) <= 0:
                continue
            if label in ("virial", "stress") and (label not in prediction or not np.all(frame[PBC])):
                continue
            result.add(label, frame[key], prediction[label], n_atoms)
    return result
