"""One structure -> one batch of tensors, for the MD drivers (ASE calculator, LAMMPS callback).

The drivers hold arrays (positions, types, cell, periodicity) and a neighbour list from
:class:`mlpot.data.verlet.VerletList`; :func:`structure_batch` turns them into the batch dictionary
a model reads (keys of :mod:`mlpot.data.keys`, one frame), without going through the training
data path (no per-call Dataset or numpy collation). :func:`inputs_from_info` reads the optional
frame inputs — total charge (e), external field (V/Å), DeePMD fparam/aparam, atomic spins (μB,
spin models) — from an ASE ``atoms.info`` / ``atoms.arrays`` under the names the readers accept.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np
import torch

from mlpot.data import keys as K

__all__ = ["structure_batch", "inputs_from_info", "INFO_NAMES"]

# batch key -> names looked up in atoms.info (frame inputs) or atoms.arrays (per-atom inputs,
# ARRAY_KEYS), first match wins
INFO_NAMES = {
    K.TOTAL_CHARGE: ("total_charge", "charge"),
    K.EXTERNAL_FIELD: ("external_field", "the_external_field"),
    K.FERMI_LEVEL: ("fermi_level", "the_fermi_level"),  # the applied one, for constant-Fermi models
    K.FPARAM: ("fparam",),
    K.APARAM: ("aparam",),
    # spin vectors (n_atoms, 3) μB; ASE keeps non-collinear initial magnetic moments as (n_atoms, 3)
    K.SPIN: ("spin", "spins", "initial_magmoms"),
}
ARRAY_KEYS = (K.APARAM, K.SPIN)


def inputs_from_info(info: Mapping, arrays: Optional[Mapping] = None) -> Dict[str, np.ndarray]:
    """Optional inputs of one frame from ``atoms.info`` (and ``atoms.arrays`` for aparam and spins),
    as float64 arrays with the key's per-frame shape: TOTAL_CHARGE () e, EXTERNAL_FIELD (3,) V/Å,
    FERMI_LEVEL () eV, FPARAM (k,), APARAM (n_atoms, k), SPIN (n_atoms, 3) μB (collinear magnetic
    moments, one number per atom, are not spin vectors and are not read)."""
    found: Dict[str, np.ndarray] = {}
    for key, names in INFO_NAMES.items():
        source = (arrays or {}) if key in ARRAY_KEYS else info
        for name in names:
            if name in source and source[name] is not None:
                value = np.asarray(source[name], dtype=np.float64)
                if key == K.SPIN and (value.ndim != 2 or value.shape[1] != 3):
                    continue
                found[key] = value.reshape(-1, value.shape[-1] if value.ndim else 1) if key in ARRAY_KEYS \
                    else (value.reshape(()) if key in (K.TOTAL_CHARGE, K.FERMI_LEVEL) else value.reshape(-1))
                break
    return found


def structure_batch(positions: np.ndarray, types: np.ndarray, numbers: np.ndarray, cell: np.ndarray,
                    pbc: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray,
                    inputs: Optional[Mapping[str, np.ndarray]] = None,
                    device: torch.device = torch.device("cpu")) -> Dict[str, torch.Tensor]:
    """The batch of one frame.

    positions: (n_atoms, 3) Å; types: (n_atoms,) index into the model's type_map; numbers:
    (n_atoms,) atomic numbers; cell: (3, 3) Å rows; pbc: (3,) bool; edge_index: (2, n_edges);
    shifts: (n_edges, 3) integer cell shifts; inputs: frame inputs of :func:`inputs_from_info`.
    Floats are float64 (models convert to their own precision).
    """
    n_atoms = len(positions)

    def tensor(value, dtype):
        return torch.as_tensor(np.asarray(value), dtype=dtype).to(device)

    batch = {
        K.POSITIONS: tensor(positions, torch.float64),
        K.ATOM_TYPES: tensor(types, torch.long),
        K.NUMBERS: tensor(numbers, torch.long),
        K.CELL: tensor(np.asarray(cell).reshape(1, 3, 3), torch.float64),
        K.PBC: tensor(np.asarray(pbc, dtype=bool).reshape(1, 3), torch.bool),
        K.BATCH: torch.zeros(n_atoms, dtype=torch.long, device=device),
        K.PTR: torch.tensor([0, n_atoms], dtype=torch.long, device=device),
        K.N_ATOMS: torch.tensor([n_atoms], dtype=torch.long, device=device),
        K.EDGE_INDEX: tensor(edge_index, torch.long),
        K.EDGE_SHIFTS: tensor(shifts, torch.float64),
    }
    for key, value in (inputs or {}).items():
        level = K.KEYS[key].level
        batch[key] = tensor(value if level == "atom" else np.asarray(value)[None], torch.float64)
    return batch
