"""Model deviation of an ensemble of models (DeePMD-kit's ``dp model-devi``, used by DP-GEN).

:func:`predict_ensemble` runs every model on the same batches of frames (one neighbour list per
distinct cutoff) and returns stacked predictions; :func:`force_deviation`,
:func:`virial_deviation` and :func:`energy_deviation` turn them into DeePMD-kit's deviations;
:func:`model_deviation` combines them into the rows of ``model_devi.out`` and
:func:`write_model_devi` writes that file.

Definitions (M models, average <.> over models, population standard deviation):

* force, per atom i: eps_f,i = sqrt(<|F_i - <F_i>|^2>) eV/Å; per frame max/min/mean over atoms.
  Relative (``relative=level``): eps_f,i / (|<F_i>| + level), dimensionless.
* virial, per frame on the per-atom virial v = Ξ / N (9 components, eV): eps_v,ab = std over
  models of v_ab; max and min over the 9 components, avg = |eps_v| / 3 (Frobenius norm / 3).
  Relative (``relative_v=level``): eps_v,ab / (|<v>| + level), |<v>| the Frobenius norm.
* energy, per frame: devi_e = std over models of E / N (eV/atom).

The virial is the autograd one of :func:`mlpot.models.derivatives.compute_derivatives`; like
DeePMD-kit it is defined for non-periodic frames too (-Σ_k r_k ⊗ ∂E/∂r_k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "EnsemblePrediction",
    "predict_ensemble",
    "force_deviation",
    "virial_deviation",
    "energy_deviation",
    "model_deviation",
    "write_model_devi",
    "MODEL_DEVI_COLUMNS",
]

MODEL_DEVI_COLUMNS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f",
                      "devi_e")


@dataclass
class EnsemblePrediction:
    """Predictions of M models on F frames with A atoms in all.

    energy (M, F) eV; forces (M, A, 3) eV/Å; virial (M, F, 9) eV (DeePMD sign, row-major);
    n_atoms (F,); ptr (F + 1,) the first atom of each frame in ``forces`` (ptr[-1] = A).
    """

    energy: np.ndarray
    forces: np.ndarray
    virial: np.ndarray
    n_atoms: np.ndarray
    ptr: np.ndarray


def predict_ensemble(models: Sequence, frames: Sequence[dict], batch_size: int = 8,
                     type_map: Optional[Sequence[str]] = None) -> EnsemblePrediction:
    """Run every model of ``models`` on ``frames`` (batches of ``batch_size`` frames).

    Models sharing a cutoff share one neighbour list per frame; each batch is collated once per
    cutoff and evaluated by each model in turn. ``type_map`` defaults to the frames' own.
    """
    import torch

    from mlpot.calculators.evaluate import predict_batch
    from mlpot.data import AtomsDataset, collate
    from mlpot.data.keys import ENERGY, FORCES, POSITIONS, VIRIAL

    type_map = list(type_map if type_map is not None else getattr(frames, "type_map", models[0].type_map))
    datasets = {}
    for model in models:
        cutoff = float(model.cutoff)
        if cutoff not in datasets:
            datasets[cutoff] = AtomsDataset(frames, cutoff=cutoff, type_map=type_map)
    energy, forces, virial = [[] for _ in models], [[] for _ in models], [[] for _ in models]
    for start in range(0, len(frames), batch_size):
        indices = range(start, min(start + batch_size, len(frames)))
        batches = {c: collate([d[i] for i in indices], dtype=torch.float64) for c, d in datasets.items()}
        for m, model in enumerate(models):
            out = predict_batch(model, batches[float(model.cutoff)], virial=True)
            energy[m].append(out[ENERGY].to(torch.float64).numpy().reshape(-1))
            forces[m].append(out[FORCES].to(torch.float64).numpy())
            virial[m].append(out[VIRIAL].to(torch.float64).numpy().reshape(-1, 9))
    n_atoms = np.array([len(frame[POSITIONS]) for frame in frames], dtype=np.int64)
    return EnsemblePrediction(
        energy=np.stack([np.concatenate(e) for e in energy]),
        forces=np.stack([np.concatenate(f) for f in forces]),
        virial=np.stack([np.concatenate(v) for v in virial]),
        n_atoms=n_atoms,
        ptr=np.concatenate([[0], np.cumsum(n_atoms)]),
    )


def _segment_stats(values: np.ndarray, ptr: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """max, min, mean of ``values`` (A,) over each frame's atoms ptr[k]:ptr[k+1] (no empty frames)."""
    starts = ptr[:-1]
    counts = np.diff(ptr)
    if np.any(counts == 0):
        raise ValueError("model deviation needs at least one atom per frame")
    return (np.maximum.reduceat(values, starts), np.minimum.reduceat(values, starts),
            np.add.reduceat(values, starts) / counts)


def force_deviation(forces: np.ndarray, ptr: np.ndarray, relative: Optional[float] = None):
    """Per-frame (max, min, avg) of the per-atom force deviation, and the per-atom values.

    forces (M, A, 3) eV/Å; ptr (F + 1,). Returns max (F,), min (F,), avg (F,), per_atom (A,):
    eV/Å, or dimensionless with ``relative`` (eps_f,i / (|<F_i>| + relative)).
    """
    per_atom = np.linalg.norm(forces.std(axis=0), axis=-1)  # sqrt(Σ_xyz var) = sqrt(<|F-<F>|^2>)
    if relative is not None:
        per_atom = per_atom / (np.linalg.norm(forces.mean(axis=0), axis=-1) + relative)
    return (*_segment_stats(per_atom, ptr), per_atom)


def virial_deviation(virial_per_atom: np.ndarray, relative: Optional[float] = None):
    """Per-frame (max, min, avg) deviation of the per-atom virial (M, F, 9) eV; see module docstring."""
    devi = virial_per_atom.std(axis=0)  # (F, 9)
    if relative is not None:
        devi = devi / (np.linalg.norm(virial_per_atom.mean(axis=0), axis=-1, keepdims=True) + relative)
    return devi.max(axis=-1), devi.min(axis=-1), np.linalg.norm(devi, axis=-1) / 3.0


def energy_deviation(energy_per_atom: np.ndarray) -> np.ndarray:
    """Std over models of the energy per atom (M, F) eV -> (F,) eV/atom."""
    return energy_per_atom.std(axis=0)


def model_deviation(prediction: EnsemblePrediction, frequency: int = 1, relative: Optional[float] = None,
                    relative_v: Optional[float] = None, atomic: bool = False) -> np.ndarray:
    """Rows of ``model_devi.out``: (F, 8) [step, max/min/avg_devi_v, max/min/avg_devi_f, devi_e],
    step = frame index x ``frequency``; with ``atomic`` the per-atom force deviations follow
    (F, 8 + A/F; all frames must then have the same number of atoms)."""
    n = prediction.n_atoms.astype(np.float64)
    devi_v = virial_deviation(prediction.virial / n[None, :, None], relative_v)
    *devi_f, per_atom = force_deviation(prediction.forces, prediction.ptr, relative)
    devi_e = energy_deviation(prediction.energy / n[None, :])
    steps = np.arange(len(n), dtype=np.float64) * frequency
    rows = np.column_stack([steps, *devi_v, *devi_f, devi_e])
    if atomic:
        if len(set(prediction.n_atoms.tolist())) > 1:
            raise ValueError("--atomic needs frames with the same number of atoms")
        rows = np.concatenate([rows, per_atom.reshape(len(n), -1)], axis=1)
    return rows


def write_model_devi(path, rows: np.ndarray, header: str = "", atomic: bool = False) -> Path:
    """Append ``rows`` to ``path`` in DeePMD-kit's layout: a ``# <header>`` line (the system), the
    column line (``step`` right-aligned in 10 characters, every other name in 19; ``atm_devi_f(N)``
    with ``atomic``), then the step as ``%12d`` and the values as ``%19.6e``."""
    names = "%10s" % "step" + "".join("%19s" % name for name in MODEL_DEVI_COLUMNS)
    if atomic:
        names += "%19s" % "atm_devi_f(N)"
    path = Path(path)
    with open(path, "ab") as handle:
        np.savetxt(handle, rows, fmt=["%12d"] + ["%19.6e"] * (rows.shape[1] - 1), delimiter="",
                   header=f"{header}\n{names}")
    return path
