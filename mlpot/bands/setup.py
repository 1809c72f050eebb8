"""Build everything a band fit needs from a native :class:`BandsConfig`: systems, species,
parameter vectors, the optional tabulated v(q), plane-wave systems, observables, the
:class:`BandProblem` and the network (spec §1, §3, §4.1).

The starting potential is the tabulated v(q) of ``init_qSpace_pot.par`` when the folder has one,
else the analytic Zunger form of the parameter files. Parameter files are optional when a table
exists (their slots 4-8, long range / SO / NL / strain, are then zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from mlpot.bands.engine import BandProblem
from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.inputs import N_PARAMS, SystemInput, read_param_vector, read_system_bundle, species_order
from mlpot.bands.models import build_pp_model
from mlpot.bands.native import BandsConfig
from mlpot.bands.observables import SystemObservables, check_unsupported_inputs, read_defpot_table, read_effective_masses
from mlpot.bands.potentials import QSPACE_TABLE, AnalyticFormFactor, TabulatedFormFactor
from mlpot.errors import CheckpointError, DataError

__all__ = ["BandSetup", "load_setup", "read_species_params", "load_model_state", "load_optimizer_state",
           "describe_layers"]


@dataclass
class BandSetup:
    config: BandsConfig
    inputs: Path
    systems: List[SystemInput]
    species: List[str]
    params: np.ndarray  # (n_species, 9)
    problem: BandProblem
    table: Optional[TabulatedFormFactor] = None
    notes: List[str] = field(default_factory=list)

    def new_model(self) -> torch.nn.Module:
        layers = [1, *self.config.model.hidden, len(self.species)]
        return build_pp_model(self.config.model.type, layers, self.config.model.model_dump())

    def reference_potential(self) -> torch.nn.Module:
        """The starting v(q): the table when there is one, else the analytic Zunger form."""
        return self.table if self.table is not None else AnalyticFormFactor(self.params)

    @property
    def reference_name(self) -> str:
        return "table" if self.table is not None else "Zunger"


def read_species_params(folder: Path, species: List[str], required: bool = True) -> np.ndarray:
    """(n_species, 9) from ``init_<atom>Params.par`` (or ``<atom>Params.par``), zero-padded.

    With ``required=False`` (a tabulated v(q) exists) missing files give zero rows.
    """
    folder, rows = Path(folder), []
    for atom in species:
        candidates = [folder / f"init_{atom}Params.par", folder / f"{atom}Params.par"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None and required:
            raise DataError(f"missing parameter file for species {atom} (or give a tabulated v(q) in {QSPACE_TABLE})",
                            file=str(candidates[0]), key="params")
        rows.append(np.zeros(N_PARAMS) if path is None else read_param_vector(path))
    return np.stack(rows)


def describe_layers(state: dict) -> Optional[List[int]]:
    """Layer widths [1, h1, ..., n_out] of a catalog network's state_dict, or None."""
    weights = sorted(((int(k.split(".")[-2]), v) for k, v in state.items()
                      if k.endswith(".weight") and "hidden_l." in k and hasattr(v, "shape") and v.ndim == 2))
    if not weights:
        return None
    return [int(weights[0][1].shape[1])] + [int(w.shape[0]) for _, w in weights]


def load_model_state(model: torch.nn.Module, path: Path) -> None:
    """Load an ``init_PPmodel.pth``/``*_PPmodel.pth`` state_dict; any mismatch -> CheckpointError
    saying which network the file holds and which one the config asks for."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or pickled objects
        raise CheckpointError(f"cannot read a state_dict ({type(exc).__name__})", file=str(path)) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"expected a state_dict, got {type(state).__name__}", file=str(path))
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state and k != "scale"]
    unexpected = [k for k in state if k not in wanted]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"the file holds a {describe_layers(state) or 'different'} network, the config asks for "
                 f"{type(model).__name__} {describe_layers(wanted)}"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape (file vs config)", shapes)):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        raise CheckpointError("; ".join(parts), file=str(path))
    model.load_state_dict(state)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path, name: str, lr: float) -> None:
    """Load ``init_AdamState.pth`` into ``optimizer`` (``name`` as configured), then set ``lr``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        groups = state["param_groups"]
    except Exception as exc:
        raise CheckpointError(f"cannot read an optimizer state ({type(exc).__name__})", file=str(path)) from None
    saved = {k for g in groups for k in g if k not in ("params", "lr", "initial_lr")}
    # the numeric hyperparameters name the optimizer family (betas: Adam, momentum: SGD, rho: Adadelta...);
    # flags (foreach, fused, maximize...) may be missing from files of older torch versions
    needed = {k for k, v in optimizer.defaults.items() if k != "lr" and v is not None and not isinstance(v, bool)}
    if not needed <= saved or len(groups) != len(optimizer.param_groups):
        kind = "an Adam-family" if "betas" in saved else "a different"
        raise CheckpointError(f"holds the state of {kind} optimizer (hyperparameters: {', '.join(sorted(saved))}); "
                              f"optimizer = {name} needs {', '.join(sorted(needed))}: remove the file or set the "
                              "optimizer it was written by", file=str(path))
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"does not fit the network's parameters: {exc}", file=str(path)) from None
    for group in optimizer.param_groups:
        group["lr"] = lr


def _read_systems(config: BandsConfig, inputs: Path, notes: List[str]) -> List[SystemInput]:
    systems = [read_system_bundle(inputs, i) for i in range(config.n_systems)]
    for system in systems:
        notes += check_unsupported_inputs(inputs, system)
    extras = sorted(p.name for p in inputs.glob("mcOpts*.par")) + sorted(p.name for p in inputs.glob("*ParamSteps.par"))
    if extras:
        notes.append(f"{', '.join(extras)}: read by `mlpot bands zunger-mc` (the Zunger-parameter Monte Carlo "
                     "driver), not by fit/eval")
    return systems


def _observables(system: SystemInput, pw: PlaneWaveSystem, inputs: Path) -> Optional[SystemObservables]:
    defpots = masses = None
    if system.settings.get("fit_defPot"):
        defpots = read_defpot_table(inputs / f"expDefPot_{system.index}.par", system)
    if system.settings.get("fit_eff_masses"):
        masses = read_effective_masses(inputs / f"expEffMasses_{system.index}.par")
    return SystemObservables(pw, defpots, masses) if (defpots or masses) else None


def load_setup(config: BandsConfig, notes: Optional[List[str]] = None, pool_factory=None) -> BandSetup:
    """Read the inputs folder of ``config`` and build the plane-wave systems and the band problem.

    ``pool_factory(systems) -> KPointPool`` runs the k-points in worker processes (``num_cores``).
    """
    inputs, notes = Path(config.inputs), list(notes or [])
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    systems = _read_systems(config, inputs, notes)
    species = species_order(systems)
    table_path = inputs / QSPACE_TABLE
    table = TabulatedFormFactor.from_file(table_path, len(species)) if table_path.is_file() else None
    params = read_species_params(inputs, species, required=table is None)
    h = config.hamiltonian
    spin_orbit, non_local = h.spin_orbit, config.nonlocal_enabled
    if (spin_orbit or non_local) and not np.any(params[:, 5:8]):
        spin_orbit = non_local = False  # SObool with a5..a7 = 0 (e.g. cdse_zb) is a local-only system
        notes.append("SObool = 1 but every SO/NL parameter (slots 5-7) is zero: solved as a local-only system")
    pws = [PlaneWaveSystem(s, species, params, basis_mode=h.basis, spin_orbit=spin_orbit, non_local=non_local,
                           double_bands=h.double_nonspin_bands, cache_fixed=h.cache_fixed, compat_units=h.compat_units,
                           dtype=dtype, eigen_driver=h.eigensolver) for s in systems]
    rel_bands = []
    for s in systems:
        own = s.settings.get("relE_bIdx")
        rel = h.relative_band if own is None else (None if own < 0 else int(own))
        if rel is not None and rel >= s.n_bands:
            raise DataError(f"relE_bIdx = {rel} but nBands = {s.n_bands}", file=str(inputs / f"input_{s.index}.par"),
                            key="relE_bIdx")
        rel_bands.append(rel)
    observables = [_observables(s, pw, inputs) for s, pw in zip(systems, pws)]
    pool = pool_factory(pws) if pool_factory is not None and config.runtime.workers > 0 else None
    problem = BandProblem(pws, params, rel_band=rel_bands, kpt_chunk=config.training.kpoint_chunk,
                          checkpoint=config.training.activation_checkpoint, observables=observables, pool=pool)
    return BandSetup(config, inputs, systems, species, params, problem, table, notes)
