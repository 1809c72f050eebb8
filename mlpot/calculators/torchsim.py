"""torch-sim model for every mlpot energy model (batched MD and relaxation on one device).

``MlpotTorchSimModel(model)`` implements torch-sim's ``ModelInterface`` (package
``torch-sim-atomistic``): ``forward(state)`` evaluates every system of a batched ``SimState`` as
one mlpot batch (per-system graph index, one model call) and returns, in torch-sim's units and
signs (metal units: eV, Å):

* ``energy`` (n_systems,) eV;
* ``forces`` (n_atoms, 3) eV/Å;
* ``stress`` (n_systems, 3, 3) eV/Å^3 with ``compute_stress`` (the default): σ = -sym(Ξ)/V =
  (1/V) ∂E/∂ε, the sign of ASE and of torch-sim's own models (its NPT integrators take the
  virial as -V σ); Ξ is mlpot's DeePMD-sign virial. Periodic states only: asking for stress on a
  non-periodic state is a ValueError (build the model with ``compute_stress=False``);
* spin models (DeePMD spin): ``force_mag`` (n_atoms, 3) eV/μB (-dE/ds, zero on non-magnetic
  atoms) and ``mag_mask`` (n_atoms,). The spins (n_atoms, 3) μB come from the state's per-atom
  attribute ``spin`` when it has one (``state.spin``, atoms in state order), else from the
  ``spin`` given to the model (the spins of the states it will see, in atom order). torch-sim
  0.3's integrators rebuild their states from the standard attributes and drop a custom one, so
  for MD give the spins to the model: they stay fixed, as in ``mlpot md``.

``model`` is taken as :class:`mlpot.calculators.MlpotCalculator` takes it
(:func:`mlpot.calculators.runner.load_runner`): a model object, a checkpoint, a frozen model
(``mlpot freeze``), a compiled model (``mlpot compile``; one frame per call, so the systems run
one after another) or a peer's model file; ``head``, ``mace_options`` and ``type_dict``
({symbol: type index}) as there. Atomic numbers map onto the model's ``type_map`` by element
symbol. Conventions: torch-sim stores cells as columns (``state.cell[s] = h^T``); mlpot's batch
takes rows (``state.row_vector_cell``). torch-sim 0.3 has one ``pbc`` flag per state, so periodic
and isolated systems go in separate states (a per-direction ``pbc`` of later versions is passed on).

Neighbour lists: one :class:`mlpot.data.verlet.VerletList` (``skin`` Å) per system, kept between
calls while the number of systems is unchanged; the edges of all systems are concatenated with
their atom offsets (no loop over atoms). The search runs on the CPU (vesin), the model on
``device``.

torch-sim is imported when :class:`MlpotTorchSimModel` is first used (``from
mlpot.calculators.torchsim import MlpotTorchSimModel``), with an ImportError naming the package
when it is missing; the batch helpers here need only torch.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ase.data import atomic_numbers as ATOMIC_NUMBERS, chemical_symbols

from mlpot.calculators.runner import load_runner, needs_spin
from mlpot.calculators.structure import structure_batch
from mlpot.data import keys as K
from mlpot.data.frames import numbers_from_type_map
from mlpot.data.verlet import VerletList
from mlpot.errors import DataError

__all__ = ["MlpotTorchSimModel", "type_lookup", "SystemNeighbours", "systems_batch", "TORCH_SIM_MISSING"]

TORCH_SIM_MISSING = ("torch-sim is not installed: MlpotTorchSimModel needs it "
                     "(pip install torch-sim-atomistic, or pip install 'mlpot[torchsim]')")
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", "float32": "float32", "float64": "float64",
                None: None}


def type_lookup(type_map: Sequence[str], type_dict: Optional[Mapping[str, int]] = None) -> torch.Tensor:
    """(119,) int64: the model type of each atomic number, -1 for elements the model lacks.

    type_dict: {chemical symbol: type index}; default: ``type_map`` by symbol (the first type of an
    element wins). Names that are not element symbols are skipped."""
    names = dict(type_dict) if type_dict else {name: i for i, name in enumerate(type_map)}
    lookup = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
    for symbol, index in names.items():  # one entry per type, not per atom
        if not 0 <= int(index) < len(type_map):
            raise ValueError(f"type_dict[{symbol!r}] = {index} is not a type of type_map {list(type_map)}")
        number = ATOMIC_NUMBERS.get(str(symbol))
        if number is not None and lookup[number] < 0:
            lookup[number] = int(index)
    return lookup


class SystemNeighbours:
    """Skin neighbour lists of the systems of a batched state (one VerletList each).

    cutoff: Å; skin: Å (0 rebuilds every call). ``edges`` returns one ``(edge_index (2, E_s),
    shifts (E_s, 3))`` per system, indices local to the system.
    """

    def __init__(self, cutoff: float, skin: float = 1.0):
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.lists: List[VerletList] = []

    def edges(self, positions: np.ndarray, cells: np.ndarray, pbc: np.ndarray,
              ptr: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
        """positions: (n_atoms, 3) Å; cells: (n_systems, 3, 3) Å rows; pbc: (3,) bool; ptr:
        (n_systems + 1,) first atom of each system."""
        n_systems = len(cells)
        if len(self.lists) != n_systems:
            self.lists = [VerletList(self.cutoff, self.skin) for _ in range(n_systems)]
        return [neighbours.update(positions[ptr[s]:ptr[s + 1]], cells[s], pbc)
                for s, neighbours in enumerate(self.lists)]


def systems_batch(positions: torch.Tensor, cells: torch.Tensor, pbc: np.ndarray, system_idx: torch.Tensor,
                  types: torch.Tensor, numbers: torch.Tensor,
                  edges: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, torch.Tensor]:
    """One mlpot batch of several systems (keys of :mod:`mlpot.data.keys`).

    positions: (n_atoms, 3) Å; cells: (n_systems, 3, 3) Å, rows = lattice vectors; pbc: (3,) bool,
    the same for every system; system_idx: (n_atoms,) system of each atom, sorted; types, numbers:
    (n_atoms,) model types and atomic numbers; edges: per system, local (edge_index, shifts) of
    :class:`SystemNeighbours`. Floats become float64 (models convert to their own precision).
    """
    device = positions.device
    n_systems = cells.shape[0]
    counts = torch.bincount(system_idx, minlength=n_systems)
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    offsets = ptr[:-1].cpu().numpy()
    edge_index = np.concatenate([index + offsets[s] for s, (index, _) in enumerate(edges)], axis=1)
    shifts = np.concatenate([shift for _, shift in edges])
    return {
        K.POSITIONS: positions.to(torch.float64),
        K.ATOM_TYPES: types,
        K.NUMBERS: numbers,
        K.CELL: cells.to(torch.float64),
        K.PBC: torch.as_tensor(np.array(pbc, dtype=bool)).to(device).expand(n_systems, 3),
        K.BATCH: system_idx,
        K.PTR: ptr,
        K.N_ATOMS: counts,
        K.EDGE_INDEX: torch.as_tensor(edge_index, dtype=torch.long).to(device),
        K.EDGE_SHIFTS: torch.as_tensor(shifts, dtype=torch.float64).to(device),
    }


class _Adapter:
    """What the torch-sim model does, kept apart from torch-sim's base class (see module docstring)."""

    def _setup(self, model, device, dtype, compute_stress: bool, type_dict, head, skin: float, mace_options,
               spin=None):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be torch.float32, torch.float64 or None, not {dtype!r}")
        self._runner = load_runner(model, device=device, head=head, dtype=_DTYPE_NAMES[dtype],
                                   mace_options=mace_options)
        self._device = torch.device(device)
        self._dtype = getattr(torch, _DTYPE_NAMES[dtype]) if dtype is not None else self._runner.dtype
        self._compute_stress = bool(compute_stress)
        self._compute_forces = True
        self._compiled = str(getattr(self._runner, "kind", "")).startswith("compiled")  # one frame per call
        self.type_map = list(self._runner.type_map)
        self._lookup = type_lookup(self.type_map, type_dict).to(self._device)
        self._type_numbers = torch.as_tensor(numbers_from_type_map(self.type_map)).to(self._device)
        self.neighbours = SystemNeighbours(self._runner.cutoff, skin)
        self._needs_spin = needs_spin(self._runner)
        self._spin = None if spin is None else torch.as_tensor(spin, dtype=torch.float64).to(self._device)

    def _spins(self, state, n_atoms: int) -> Optional[torch.Tensor]:
        """(n_atoms, 3) spins, μB, of a spin model: ``state.spin``, else the model's ``spin``."""
        if not self._needs_spin:
            return None
        spins = getattr(state, "spin", None)
        spins = self._spin if spins is None else torch.as_tensor(spins).to(self._device, torch.float64)
        if spins is None or tuple(spins.shape) != (n_atoms, 3):
            got = "none" if spins is None else tuple(spins.shape)
            raise DataError(f"a spin model needs spins (n_atoms, 3) = ({n_atoms}, 3) μB from state.spin or "
                            f"MlpotTorchSimModel(spin=...); got {got}", key="spin")
        return spins

    @property
    def compute_stress(self) -> bool:
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    def _types(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        atomic_numbers = atomic_numbers.to(self._device, torch.long)
        types = self._lookup[atomic_numbers.clamp(0, len(self._lookup) - 1)]
        if bool((types < 0).any()):
            unknown = sorted({chemical_symbols[int(z)] for z in torch.unique(atomic_numbers[types < 0])})
            raise DataError(f"elements {unknown} are not in the model's type map {self.type_map}",
                            key="atomic_numbers")
        return types

    def _evaluate(self, state) -> Dict[str, torch.Tensor]:
        """The adapter's forward (see the module docstring for shapes and units)."""
        pbc = state.pbc.detach().cpu().numpy() if torch.is_tensor(state.pbc) else state.pbc
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        if self._compute_stress and not pbc.all():
            raise ValueError(f"stress needs a periodic state (state.pbc is {state.pbc}): build MlpotTorchSimModel "
                             "with compute_stress=False for isolated systems")
        positions = state.positions.detach().to(self._device)
        cells = state.row_vector_cell.detach().to(self._device, torch.float64)  # (n_systems, 3, 3) rows
        system_idx = state.system_idx.to(self._device, torch.long)
        if system_idx.numel() > 1 and bool((system_idx[1:] < system_idx[:-1]).any()):
            raise DataError("the atoms of each system must be contiguous (state.system_idx sorted)",
                            key="system_idx")
        types = self._types(state.atomic_numbers)
        numbers = self._type_numbers[types]
        counts = torch.bincount(system_idx, minlength=cells.shape[0])
        ptr = np.concatenate([[0], counts.cumsum(0).cpu().numpy()])
        positions_np = positions.to(torch.float64).cpu().numpy()
        cells_np = cells.cpu().numpy()
        edges = self.neighbours.edges(positions_np, cells_np, pbc, ptr)
        spins = self._spins(state, positions.shape[0])
        if self._compiled:
            outputs = self._per_system(positions_np, cells_np, pbc, types, numbers, ptr, edges)
        else:
            batch = systems_batch(positions, cells, pbc, system_idx, types, numbers, edges)
            if spins is not None:
                batch[K.SPIN] = spins
            outputs = self._runner(batch, virial=self._compute_stress)
        if K.ENERGY not in outputs or K.FORCES not in outputs:
            raise ValueError(f"a torch-sim model needs energy and forces; this model returns {sorted(outputs)} "
                             "(dipole, polarizability, DOS and energy-only models are not supported)")
        results = {"energy": outputs[K.ENERGY].to(self._dtype), "forces": outputs[K.FORCES].to(self._dtype)}
        if self._compute_stress:
            virial = outputs[K.VIRIAL].to(torch.float64)
            volume = torch.linalg.det(cells).abs().reshape(-1, 1, 1)
            results["stress"] = (-0.5 * (virial + virial.transpose(1, 2)) / volume).to(self._dtype)
        if spins is not None:
            results["force_mag"] = outputs[K.FORCE_MAG].to(self._dtype)
            results["mag_mask"] = outputs[K.MAG_MASK].bool()
        return results

    def _per_system(self, positions, cells, pbc, types, numbers, ptr, edges) -> Dict[str, torch.Tensor]:
        """A one-frame runner (compiled model): the systems one after another, outputs concatenated.
        A compiled model takes no spins (``mlpot compile`` refuses spin models)."""
        types_np, numbers_np = types.cpu().numpy(), numbers.cpu().numpy()
        parts = []
        for s, (edge_index, shifts) in enumerate(edges):
            atoms = slice(ptr[s], ptr[s + 1])
            batch = structure_batch(positions[atoms], types_np[atoms], numbers_np[atoms], cells[s], pbc, edge_index,
                                    shifts, device=self._device)
            parts.append(self._runner(batch, virial=self._compute_stress))
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


_DOC = """torch-sim model (``ModelInterface``) of an mlpot energy model; see :mod:`mlpot.calculators.torchsim`.

    model: an ``AtomisticModel``, a runner, or a path (checkpoint, frozen ``.pt``, compiled ``.pt2``,
    peer model file). device: where the model runs. dtype: torch.float32 / torch.float64 (the
    model is converted and outputs are returned in it) or None (the model's precision).
    compute_stress: return ``stress`` (periodic states only). type_dict: {symbol: type index};
    default: the model's type_map by symbol. head: task of a multi-task model. skin: neighbour-list
    skin, Å. mace_options: options YAML of a mace_run_train checkpoint. spin: (n_atoms, 3) μB, the
    fixed spins of a spin model's states (used when the state has no ``spin`` attribute).
    """


@functools.lru_cache(maxsize=1)
def _model_class():
    try:
        from torch_sim.models.interface import ModelInterface
        from torch_sim.state import SimState
    except ImportError as error:
        raise ImportError(TORCH_SIM_MISSING) from error

    class MlpotTorchSimModel(_Adapter, ModelInterface):
        __doc__ = _DOC

        def __init__(self, model, device: Union[str, torch.device] = "cpu", dtype=None, compute_stress: bool = True,
                     type_dict: Optional[Dict[str, int]] = None, head: Optional[str] = None, skin: float = 1.0,
                     mace_options=None, spin=None):
            ModelInterface.__init__(self)
            self._setup(model, device, dtype, compute_stress, type_dict, head, skin, mace_options, spin)

        def forward(self, state, **kwargs) -> Dict[str, torch.Tensor]:
            """state: a ``SimState`` (or its dict). Returns energy (n_systems,) eV, forces
            (n_atoms, 3) eV/Å and, with compute_stress, stress (n_systems, 3, 3) eV/Å^3."""
            if not isinstance(state, SimState):
                fields = dict(state)
                spin = fields.pop("spin", None)
                state = SimState(**fields)
                if spin is not None:
                    state.spin = spin
            return self._evaluate(state)

    MlpotTorchSimModel.__module__ = __name__
    return MlpotTorchSimModel


def __getattr__(name: str):
    if name == "MlpotTorchSimModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
