"""What the electrostatic family fills in from the training data before building (the family's
``resolve_from_data`` hook).

The backbone's own data-dependent keys: DeePMD ``sel: "auto"`` (the DeePMD hook on the backbone
section), and for a MACE backbone ``atomic_numbers`` when absent (the sorted elements of the
training files, as mace_run_train and MACE-SCF's run_train take them without ``--atomic_numbers``),
``E0s: "average"`` (least-squares energy per element over the training frames, as mace-torch) and
``avg_num_neighbors: "auto"`` (mean neighbour count within ``r_max``).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping

import numpy as np

from mlpot.data import keys as K
from mlpot.data.neighbors import neighbor_list
from mlpot.errors import ConfigError
from mlpot.models import deepmd

__all__ = ["resolve_from_data"]


def _mace_statistics(backbone: Dict[str, Any], probe) -> Dict[str, Any]:
    from ase.data import chemical_symbols

    numbers = sorted(int(z) for z in backbone.get("atomic_numbers") or probe.atomic_numbers())
    if not numbers:
        raise ConfigError("needs the element table (list of atomic numbers): the training data hold no atoms",
                          key="model.backbone.atomic_numbers")
    backbone["atomic_numbers"] = numbers
    type_map = [chemical_symbols[z] for z in numbers]
    frames = [frame for system in probe.systems(type_map) for frame in system]
    if backbone.get("E0s") == "average":
        counts = np.array([np.bincount(f[K.ATOM_TYPES], minlength=len(numbers)) for f in frames if K.ENERGY in f], float)
        energies = np.array([float(f[K.ENERGY]) for f in frames if K.ENERGY in f])
        if not len(energies):
            raise ConfigError("'average' needs training energies", key="model.backbone.E0s")
        solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
        backbone["E0s"] = {int(z): float(e) for z, e in zip(numbers, solution)}
    if backbone.get("avg_num_neighbors") == "auto":
        cutoff = float(backbone.get("r_max", 5.0))
        edges = [neighbor_list(f[K.POSITIONS], f[K.CELL], f[K.PBC], cutoff)[0].shape[1] for f in frames]
        backbone["avg_num_neighbors"] = float(sum(edges)) / max(1, sum(len(f[K.POSITIONS]) for f in frames))
    return backbone


def resolve_from_data(section: Dict[str, Any], probes: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of the section with the backbone's data-dependent keys resolved (module docstring)."""
    section = copy.deepcopy(section)
    backbone = section.get("backbone")
    if not isinstance(backbone, dict):
        return section
    kind = backbone.get("type", "standard")
    if kind == "mace":
        section["backbone"] = _mace_statistics(backbone, probes[""])
    elif kind in ("standard", "se_e2_a"):
        section["backbone"] = deepmd.resolve_from_data(backbone, probes)
    return section
