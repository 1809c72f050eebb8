"""ASE calculator for every mlpot model (a thin adapter: no physics here).

``MlpotCalculator(model)`` takes a model object, or the path of a checkpoint, a frozen model
(``mlpot freeze``), a compiled model (``mlpot compile``, ``.pt2``) or a peer's model file that
``mlpot.calculators.load_model`` reads (mace-torch ``.model`` / mace_run_train checkpoint, NequIP
``.ckpt`` / ``.nequip.zip``). Atoms are mapped onto the model's ``type_map`` by chemical symbol (or
by an explicit ``type_dict`` {symbol: type index}, as DeePMD's ``DP`` calculator).

Results (ASE units: eV, Å, e):

* ``energy`` and ``free_energy`` (the same value), eV; ``energies`` per atom, eV;
* ``forces`` (n_atoms, 3), eV/Å;
* ``virial`` (3, 3), eV, DeePMD sign convention Ξ = -dE/dε (= Σ r ⊗ F for pair terms);
* ``stress`` in ASE's convention, Voigt order [xx, yy, zz, yz, xz, xy], eV/Å^3:
  σ = -sym(Ξ)/V, i.e. (1/V) ∂E/∂ε — fully periodic cells only (requesting it for a
  non-periodic system raises ``PropertyNotImplementedError``, as ASE's own calculators do);
* on request (``get_property("virials")`` / ``atoms.get_stresses()``): ``virials`` per atom
  (n_atoms, 3, 3) eV and ``stresses`` per atom (n_atoms, 6) eV/Å^3 (= -sym(Ξ_i)/V, Voigt);
* every other output of the model, under ASE-style names (:data:`RESULT_NAMES`): ``charges``,
  ``atomic_multipoles``, ``dipole``, ``polarizability``, ``fermi_level``, ``atomic_dipoles``,
  ``atomic_polarizabilities``, ``dos``, ``atom_dos``, ``esps``; for spin models ``force_mag``
  (magnetic force -dE/ds, (n_atoms, 3) eV/μB, zero on non-magnetic atoms) and ``mag_mask``.

Inputs read from the Atoms: total charge (e) from ``atoms.info["total_charge"]`` or ``["charge"]``,
external field (V/Å, the gradient of the applied potential) from ``atoms.info["external_field"]``,
the applied Fermi level (eV, constant-Fermi electrostatic models) from ``atoms.info["fermi_level"]``,
DeePMD ``fparam`` from ``atoms.info`` and ``aparam`` from ``atoms.arrays``, atomic spin vectors
(μB, spin models) from ``atoms.arrays["spin"]`` or non-collinear ``initial_magmoms`` (n_atoms, 3).

Neighbour lists are kept between calls (:class:`mlpot.data.verlet.VerletList`, ``skin`` Å) and
rebuilt only when an atom has moved more than skin/2; each call filters the cached list to the
model's cutoff, so results equal a from-scratch evaluation.
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from mlpot.calculators.runner import load_runner
from mlpot.calculators.structure import inputs_from_info, structure_batch
from mlpot.data import keys as K
from mlpot.data.frames import numbers_from_type_map
from mlpot.data.verlet import VerletList
from mlpot.errors import DataError

__all__ = ["MlpotCalculator", "RESULT_NAMES"]

# model output key -> name in calc.results (ASE's own names where ASE has one)
RESULT_NAMES = {
    K.ATOM_ENERGY: "energies",
    K.CHARGES: "charges",
    K.ATOMIC_MULTIPOLES: "atomic_multipoles",
    K.DIPOLE: "dipole",
    K.ATOMIC_DIPOLE: "atomic_dipoles",
    K.POLARIZABILITY: "polarizability",
    K.ATOMIC_POLARIZABILITY: "atomic_polarizabilities",
    K.FERMI_LEVEL: "fermi_level",
    K.DOS: "dos",
    K.ATOM_DOS: "atom_dos",
    K.ESPS: "esps",
    K.FORCE_MAG: "force_mag",  # spin models: -dE/ds, eV/μB
    K.MAG_MASK: "mag_mask",
}
_VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])
_BASE = ["energy", "free_energy", "forces", "virial", "stress", "energies", "virials", "stresses"]


class MlpotCalculator(Calculator):
    """ASE calculator backed by an mlpot model.

    model: an ``AtomisticModel``, or a path (checkpoint, frozen ``.pt``, compiled ``.pt2``).
    type_dict: optional {chemical symbol: type index}; default: the model's type_map by symbol.
    device: torch device ("cpu", "cuda"); dtype: None (the model's) or "float32"/"float64".
    head: task of a multi-task checkpoint (as DeePMD's ``DP(..., head=...)``).
    skin: extra neighbour-list distance in Å (0 rebuilds the list at every call).
    mace_options: the options YAML of a mace_run_train checkpoint given as ``model`` (a mace
    ``.model`` file needs nothing).
    """

    implemented_properties = list(_BASE) + list(RESULT_NAMES.values())

    def __init__(self, model, type_dict: Optional[Dict[str, int]] = None, device: Union[str, torch.device] = "cpu",
                 head: Optional[str] = None, dtype: Optional[str] = None, skin: float = 1.0, mace_options=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.runner = load_runner(model, device=device, head=head, dtype=dtype, mace_options=mace_options)
        self.model = getattr(self.runner, "model", None)
        self.device = torch.device(device)
        self.type_map = list(self.runner.type_map)
        self.type_dict = dict(type_dict) if type_dict else {name: i for i, name in enumerate(self.type_map)}
        self.neighbours = VerletList(self.runner.cutoff, skin)

    def _batch(self, atoms) -> Dict[str, torch.Tensor]:
        symbols = atoms.get_chemical_symbols()
        try:
            types = np.fromiter((self.type_dict[s] for s in symbols), dtype=np.int64, count=len(symbols))
        except KeyError:
            unknown = sorted(set(symbols) - set(self.type_dict))
            raise DataError(f"elements {unknown} are not in the model's type map {list(self.type_dict)}",
                            key="type_map") from None
        positions, cell, pbc = atoms.get_positions(), atoms.get_cell().array, atoms.get_pbc()
        edge_index, shifts = self.neighbours.update(positions, cell, pbc)
        numbers = numbers_from_type_map(self.type_map)[types]
        return structure_batch(positions, types, numbers, cell, pbc, edge_index, shifts,
                               inputs_from_info(atoms.info, atoms.arrays), device=self.device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.all(self.atoms.get_pbc()))
        wants_stress = any(p in properties for p in ("stress", "stresses"))
        if wants_stress and not periodic:
            raise PropertyNotImplementedError("stress needs a fully periodic cell")
        batch = self._batch(self.atoms)
        outputs = {key: value.cpu().numpy() for key, value in self.runner(batch, virial=periodic).items()}
        results: Dict[str, object] = {}
        if K.ENERGY in outputs:
            energy = float(outputs[K.ENERGY][0])
            results.update(energy=energy, free_energy=energy)
            if K.FORCES in outputs:  # an energy-only model has none
                results["forces"] = outputs[K.FORCES].astype(np.float64)
        if periodic and K.VIRIAL in outputs:
            virial = outputs[K.VIRIAL][0].astype(np.float64)
            results["virial"] = virial
            results["stress"] = (-0.5 * (virial + virial.T) / self.atoms.get_volume())[_VOIGT]
        for key, name in RESULT_NAMES.items():
            if key in outputs:
                value = outputs[key]
                results[name] = value[0] if K.KEYS[key].level == "frame" else value
        if any(p in properties for p in ("virials", "stresses")):
            results.update(self._atom_virials(batch, periodic))
        self.results = results

    def _atom_virials(self, batch, periodic: bool) -> Dict[str, np.ndarray]:
        if not hasattr(self.runner, "atom_virials"):
            raise PropertyNotImplementedError(f"per-atom virials need an eager model (this is a {self.runner.kind} one)")
        virials = self.runner.atom_virials(batch).cpu().numpy().astype(np.float64)
        out = {"virials": virials}
        if periodic:
            symmetric = 0.5 * (virials + virials.transpose(0, 2, 1))
            out["stresses"] = (-symmetric / self.atoms.get_volume())[:, _VOIGT[0], _VOIGT[1]]
        return out
