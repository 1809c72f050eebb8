"""Build everything a band fit needs from a DeePseudopot inputs folder: config, systems, species,
parameter vectors, plane-wave systems, the :class:`BandProblem` and the network (spec §1, §3, §4.1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from mlpot.bands.engine import BandProblem
from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.inputs import SystemInput, read_param_vector, read_qspace_pot, read_system_bundle, species_order
from mlpot.bands.models import build_pp_model
from mlpot.config.deepseudopot import DeePseudopotConfig, read_nn_config
from mlpot.errors import CheckpointError, DataError

__all__ = ["BandSetup", "load_setup", "read_species_params", "load_model_state"]


@dataclass
class BandSetup:
    config: DeePseudopotConfig
    inputs: Path
    systems: List[SystemInput]
    species: List[str]
    params: np.ndarray  # (n_species, 9)
    problem: BandProblem

    def new_model(self) -> torch.nn.Module:
        layers = [1, *self.config.hiddenLayers, len(self.species)]
        return build_pp_model(self.config.PPmodel, layers, self.config.values, file=self.config.file)

    def qspace_target(self):
        """Tabulated v(q) init target (``init_qSpace_pot.par``) as a callable, or None."""
        path = self.inputs / "init_qSpace_pot.par"
        if not path.is_file():
            return None
        q_tab, v_tab = read_qspace_pot(path, len(self.species))

        def target(q: torch.Tensor) -> torch.Tensor:
            cols = [np.interp(q.numpy(), q_tab, v_tab[:, i]) for i in range(len(self.species))]
            return torch.tensor(np.stack(cols, axis=1), dtype=torch.float64)

        return target


def read_species_params(folder: Path, species: List[str]) -> np.ndarray:
    """(n_species, 9) from ``init_<atom>Params.par`` (or ``<atom>Params.par``), zero-padded."""
    folder, rows = Path(folder), []
    for atom in species:
        candidates = [folder / f"init_{atom}Params.par", folder / f"{atom}Params.par"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"missing parameter file for species {atom}", file=str(candidates[0]), key="params")
        rows.append(read_param_vector(path))
    return np.stack(rows)


def load_model_state(model: torch.nn.Module, path: Path) -> None:
    """Load an ``init_PPmodel.pth``/``*_PPmodel.pth`` state_dict; architecture mismatch -> CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot load into {type(model).__name__}: {str(exc).splitlines()[0]}", file=str(path)) from None


def load_setup(inputs, config: Optional[DeePseudopotConfig] = None, dtype=torch.float64, device="cpu",
               compat_units: bool = True) -> BandSetup:
    """Read the inputs folder and build the plane-wave systems and the band problem."""
    inputs = Path(inputs)
    config = config or read_nn_config(inputs)
    systems = [read_system_bundle(inputs, i) for i in range(config.nSystem)]
    species = species_order(systems)
    params = read_species_params(inputs, species)
    spin_orbit, non_local = bool(config.SObool), config.nl_enabled
    if spin_orbit and not np.any(params[:, 5]) and not (non_local and np.any(params[:, 6:8])):
        spin_orbit = non_local = False  # SObool with all a5..a7 = 0 (e.g. cdse_zb) is a local-only system
    pws = [PlaneWaveSystem(s, species, params, basis_mode=config.basis_mode, spin_orbit=spin_orbit,
                           non_local=non_local, double_bands=config.double_nonspin_bands,
                           cache_fixed=config.cacheSO, compat_units=compat_units, dtype=dtype, device=device)
           for s in systems]
    rel_band = config.relE_bIdx
    problem = BandProblem(pws, params, rel_band=rel_band, kpt_chunk=config.kpt_chunk, checkpoint=config.checkpoint)
    return BandSetup(config, inputs, systems, species, params, problem)
