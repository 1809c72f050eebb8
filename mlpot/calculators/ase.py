"""ASE calculator for every mlpot model (a thin adapter: no physics here).

``MlpotCalculator(model)`` takes a model object or the path of a frozen model / checkpoint, or of a
mace-torch ``.model`` file / mace_run_train checkpoint (``mlpot.calculators.load_model``). Atoms are mapped onto the model's ``type_map`` by chemical
symbol (or by an explicit ``type_dict`` {symbol: type index}, as DeePMD's ``DP`` calculator).

Results (ASE units: eV, Å):

* ``energy`` and ``free_energy`` (the same value), eV;
* ``forces`` (n_atoms, 3), eV/Å;
* ``virial`` (3, 3), eV, DeePMD sign convention Ξ = -Σ r ⊗ ∂E/∂r (= Σ r ⊗ F);
* ``stress`` in ASE's convention, Voigt order [xx, yy, zz, yz, xz, xy], eV/Å^3:
  σ = -sym(Ξ)/V, i.e. (1/V) ∂E/∂ε. Only for fully periodic cells; requesting stress of a
  non-periodic system raises ``PropertyNotImplementedError`` (as ASE's own calculators do).
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from mlpot.data.frames import numbers_from_type_map
from mlpot.data.keys import ATOM_TYPES, CELL, NUMBERS, PBC, POSITIONS
from mlpot.errors import DataError

__all__ = ["MlpotCalculator"]


class MlpotCalculator(Calculator):
    """ASE calculator backed by an mlpot model.

    model: an ``AtomisticModel`` or a path to a frozen model / checkpoint.
    type_dict: optional {chemical symbol: type index}; default: the model's type_map by symbol.
    device: torch device for the model ("cpu", "cuda").
    head: task of a multi-task checkpoint to evaluate (as DeePMD's ``DP(..., head=...)``); a
    multi-task model given without one evaluates its first task.
    mace_options: the options YAML of a mace_run_train checkpoint given as ``model`` (a mace
    ``.model`` file needs nothing).
    """

    implemented_properties = ["energy", "free_energy", "forces", "virial", "stress"]

    def __init__(self, model, type_dict: Optional[Dict[str, int]] = None, device: Union[str, torch.device] = "cpu",
                 head: Optional[str] = None, mace_options=None, **kwargs):
        super().__init__(**kwargs)
        from mlpot.calculators.export import load_model, select_head

        if not isinstance(model, torch.nn.Module):
            model = load_model(model, device=device, head=head, mace_options=mace_options)
        elif head is not None:
            model = select_head(model, head, "model")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.type_dict = dict(type_dict) if type_dict else {name: i for i, name in enumerate(model.type_map)}

    def _frame(self, atoms) -> dict:
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(self.type_dict))
        if unknown:
            raise DataError(f"elements {unknown} are not in the model's type map {list(self.type_dict)}",
                            key="type_map")
        types = np.array([self.type_dict[s] for s in symbols], dtype=np.int64)
        return {
            POSITIONS: np.asarray(atoms.get_positions(), dtype=np.float64),
            ATOM_TYPES: types,
            NUMBERS: numbers_from_type_map(self.model.type_map)[types],
            CELL: np.asarray(atoms.get_cell().array, dtype=np.float64),
            PBC: np.asarray(atoms.get_pbc(), dtype=bool),
        }

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from mlpot.calculators.evaluate import iterate_predictions

        periodic = bool(np.all(self.atoms.get_pbc()))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress needs a fully periodic cell")
        _, prediction = next(iterate_predictions(self.model, [self._frame(self.atoms)], batch_size=1))
        energy = float(prediction["energy"])
        self.results = {"energy": energy, "free_energy": energy}
        if "forces" in prediction:  # an energy-only model has none
            self.results["forces"] = prediction["forces"].copy()
        if periodic and "virial" in prediction:
            virial = prediction["virial"]
            self.results["virial"] = virial.copy()
            stress = 0.5 * (prediction["stress"] + prediction["stress"].T)
            self.results["stress"] = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
