"""Loss residuals that are not one label against itself (spec mace_scf.md §4), by batch key only.

* molecule terms (per-atom ``MOL_ID``; molecules are the distinct (frame, mol_id) pairs):
  dF_m = sum_{i in m} (F_i - F*_i), R_m = mean position of m;
  ``cluster_virial``: W_g = sum_{m in g} R_m . dF_m per frame (``/ N_g`` for ``_per_atom``);
  ``molecular_forces``: per frame and Cartesian direction sum_m dF_m^2 / N_g (already a square).
* ``magnetic`` (DeePMD ener_spin ``fm``): the magnetic-force residual F_m - F_m* (n_atoms, 3) eV/μB,
  weighted by the frame's force_mag weight times the predicted ``MAG_MASK`` (magnetic atoms only);
* ``hessian`` (DeePMD ener ``h``): H - H* of every frame's (3N)² Hessian entries, eV/Å², the batch's
  zero padding (frames of fewer atoms) weighted 0, so the term is the mean over the real entries;
* ``penalty`` terms (``fixedpoint_scf_stability``): a predicted per-frame value x above an
  ``offset`` is penalised by softplus(beta (x - offset)) / beta (``smooth``) or relu(x - offset).

Each function returns (value, weight) of matching shape for the weighted mean of ``losses.py``.
"""

from __future__ import annotations

from typing import Tuple

import torch

from mlpot.data import keys as K
from mlpot.models.hessian import hessian_entry_mask
from mlpot.nn import scatter_sum

__all__ = ["molecule_force_residuals", "cluster_virial_residual", "molecular_forces_value", "penalty_value",
           "magnetic_residual", "hessian_residual"]


def molecule_force_residuals(pred, batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dF_m (n_mol, 3) eV/Å, R_m (n_mol, 3) Å, frame of each molecule (n_mol,)) (module docstring)."""
    frames = batch[K.BATCH]
    mol = batch[K.MOL_ID].to(torch.long)
    span = int(mol.max()) + 1 if mol.numel() else 1
    unique, inverse = torch.unique(frames * span + mol, return_inverse=True)
    n_mol = unique.shape[0]
    delta = pred[K.FORCES].to(batch[K.FORCES].dtype) - batch[K.FORCES]
    force = scatter_sum(delta, inverse, n_mol)
    counts = scatter_sum(torch.ones_like(frames, dtype=delta.dtype), inverse, n_mol)
    centre = scatter_sum(batch[K.POSITIONS].to(delta.dtype), inverse, n_mol) / counts.unsqueeze(-1)
    return force, centre, unique // span


def _frame_weight(batch, dtype) -> torch.Tensor:
    """Frames carrying forces and molecule ids."""
    return batch[K.weight_key(K.FORCES)].to(dtype) * batch[K.weight_key(K.MOL_ID)].to(dtype)


def cluster_virial_residual(pred, batch, per_atom: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(W_g (n_frames,) eV [/ atom], weight (n_frames,))."""
    force, centre, frame = molecule_force_residuals(pred, batch)
    n_frames = batch[K.N_ATOMS].shape[0]
    virial = scatter_sum((centre * force).sum(-1), frame, n_frames)
    if per_atom:
        virial = virial / batch[K.N_ATOMS].to(virial.dtype)
    return virial, _frame_weight(batch, virial.dtype)


def magnetic_residual(pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """(F_m - F_m* (n_atoms, 3) eV/μB, weight (n_atoms, 3): frame weight of FORCE_MAG x MAG_MASK)."""
    target = batch[K.FORCE_MAG]
    residual = pred[K.FORCE_MAG].to(target.dtype) - target
    weight = batch[K.weight_key(K.FORCE_MAG)].to(target.dtype).index_select(0, batch[K.BATCH])
    weight = weight * pred[K.MAG_MASK].to(target.dtype)
    return residual, weight.unsqueeze(-1).expand_as(residual)


def hessian_residual(pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """(H - H* (n_frames, (3 N_max)²) eV/Å², weight (n_frames, (3 N_max)²): the frame's HESSIAN
    weight on its (3N)² entries, 0 on the padding)."""
    target = batch[K.HESSIAN]
    residual = pred[K.HESSIAN].to(target.dtype) - target
    mask = hessian_entry_mask(batch[K.N_ATOMS], residual.shape[-1]).to(target.dtype)
    return residual, batch[K.weight_key(K.HESSIAN)].to(target.dtype).unsqueeze(-1) * mask


def molecular_forces_value(pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum_m dF_m^2 / N_g (n_frames, 3) (eV/Å)^2, weight (n_frames, 3))."""
    force, _, frame = molecule_force_residuals(pred, batch)
    n_frames = batch[K.N_ATOMS].shape[0]
    value = scatter_sum(force * force, frame, n_frames) / batch[K.N_ATOMS].to(force.dtype).unsqueeze(-1)
    return value, _frame_weight(batch, value.dtype).unsqueeze(-1).expand_as(value)


def penalty_value(values: torch.Tensor, offset: float, smooth: bool, beta: float) -> torch.Tensor:
    """softplus(beta (x - offset)) / beta, or relu(x - offset)."""
    shifted = values - offset
    if smooth:
        return torch.nn.functional.softplus(beta * shifted) / beta
    return torch.relu(shifted)

