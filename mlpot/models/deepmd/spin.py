"""DeePMD-kit spin models (``model/spin``; DeepSPIN, Yang et al., PRB 2024): the virtual-atom scheme.

Every atom i of a magnetic type t (``use_spin[t]``) gets a virtual atom at

    r_i' = r_i + s_i · η_t          (s_i: SPIN in μB, η_t: ``virtual_scale`` in Å/μB)

of the virtual type ``t + n_types`` ("<name>_spin" in the extended type map of 2·n_types names).
The backbone is a standard DeePMD model (any descriptor, ener fitting) built on the extended type
map that sees real and virtual atoms as ordinary atoms, with a neighbour list of both within
rcut. As in DeePMD-kit 3.x (PyTorch): the atomic energies of the virtual types are excluded (zero,
and no output bias), the descriptor's ``exclude_types`` become the spin pair exclusions (every pair
with a placeholder type: the virtual type of a non-magnetic type) plus ``pair_exclude_types``,
``env_protection`` 0 becomes 0.01, and an ``se_e2_a`` ``sel`` is doubled (the virtual types get
the real types' slots). DeePMD-kit also places a placeholder atom on every non-magnetic atom; all
of its pairs are excluded, so mlpot leaves it out (identical energies for per-type ``sel``; a
mixed-type ``sel`` that overflows could keep other neighbours).

Derivatives (``mlpot.models.derivatives`` with ``input_derivatives``): the real force
FORCES = -dE/dr_i is the force on the real atom plus that on its virtual atom; the magnetic force
FORCE_MAG = -dE/ds_i = η_t · (force on the virtual atom), eV/μB, zero on non-magnetic atoms; the
virial strains the real positions only (the virtual atoms follow their real atom, the spins are not
strained: DeePMD-kit's virial correction) with a general, not symmetrised, strain: the energy is
invariant under joint rotations of positions and spins only, so Ξ = -Σ_k dE/dr_k ⊗ r_k has an
antisymmetric part, which DeePMD-kit keeps. ``MAG_MASK`` (n_atoms,) marks the magnetic atoms.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from mlpot.data.keys import (APARAM, ATOM_ENERGY, ATOM_TYPES, BATCH, CELL, EDGE_INDEX, EDGE_SHIFTS, ENERGY,
                             FORCE_MAG, FPARAM, MAG_MASK, PBC, POSITIONS, SPIN)
from mlpot.data.neighbors import neighbor_list
from mlpot.errors import ConfigError, DataError
from mlpot.models.base import AtomisticModel, edge_vectors
from mlpot.models.deepmd.keys import SPIN_KEYS
from mlpot.models.sections import read_section

__all__ = ["SpinModel", "spin_settings", "backbone_section", "build_spin"]



def _per_type(value: Any, use_spin: List[bool], name: str) -> List[float]:
    """One float per type from a number, a per-type list or a per-magnetic-type list (zeros elsewhere)."""
    n_types, magnetic = len(use_spin), [t for t, flag in enumerate(use_spin) if flag]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n_types
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if len(value) == n_types:
            return [float(v) for v in value]
        if len(value) == len(magnetic):
            out = [0.0] * n_types
            for t, v in zip(magnetic, value):
                out[t] = float(v)
            return out
    raise ConfigError(f"expected a number or a list of {n_types} (types) or {len(magnetic)} (magnetic types) numbers, "
                      f"got {value!r}", key=f"model/spin/{name}")


def spin_settings(section: Any, type_map: Sequence[str]) -> Tuple[List[bool], List[float]]:
    """(use_spin per type, virtual_scale per type in Å/μB, 0 for non-magnetic types) of ``model/spin``."""
    values = read_section(section, "model/spin", SPIN_KEYS, "SpinSection")
    names, flags = list(type_map), values["use_spin"]
    if flags and all(isinstance(f, bool) for f in flags):
        if len(flags) != len(names):
            raise ConfigError(f"has {len(flags)} entries but type_map has {len(names)} types", key="model/spin/use_spin")
        use_spin = list(flags)
    elif all(isinstance(f, str) and f in names for f in flags) or \
            all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < len(names) for f in flags):
        chosen = {names.index(f) if isinstance(f, str) else f for f in flags}
        use_spin = [t in chosen for t in range(len(names))]
    else:
        raise ConfigError(f"expected booleans per type, or type indices / names of {names}, got {flags!r}",
                          key="model/spin/use_spin")
    if values["virtual_scale"] is not None:
        scale = _per_type(values["virtual_scale"], use_spin, "virtual_scale")
    elif values["virtual_len"] is not None and values["spin_norm"] is not None:
        length = _per_type(values["virtual_len"], use_spin, "virtual_len")
        norm = _per_type(values["spin_norm"], use_spin, "spin_norm")
        if any(flag and n <= 0 for flag, n in zip(use_spin, norm)):
            raise ConfigError("must be > 0 for every magnetic type", key="model/spin/spin_norm")
        scale = [ln / n if flag else 0.0 for flag, ln, n in zip(use_spin, length, norm)]
    else:
        raise ConfigError("needs virtual_scale (or the TF pair virtual_len and spin_norm)", key="model/spin")
    return use_spin, [s if flag else 0.0 for s, flag in zip(scale, use_spin)]


def backbone_section(config: Dict[str, Any], use_spin: List[bool]) -> Dict[str, Any]:
    """The standard model section of the backbone: extended type map, spin exclusions (module docstring)."""
    section = copy.deepcopy(config)
    section.pop("spin")
    n_types = len(use_spin)
    section["type_map"] = list(config["type_map"]) + [f"{name}_spin" for name in config["type_map"]]
    placeholders = [n_types + t for t in range(n_types) if not use_spin[t]]
    pairs = [[p, t] for p in placeholders for t in range(2 * n_types)]
    pairs += [list(p) for p in config.get("pair_exclude_types", [])]
    section["pair_exclude_types"] = []
    descriptor = section["descriptor"]
    descriptor["exclude_types"] = pairs
    if not descriptor.get("env_protection"):
        descriptor["env_protection"] = 0.01
    if descriptor.get("type") in ("se_e2_a", "se_a") and isinstance(descriptor.get("sel"), list):
        descriptor["sel"] = list(descriptor["sel"]) * 2
    atom_excluded = set(range(n_types, 2 * n_types)) | set(config.get("atom_exclude_types", []))
    section["atom_exclude_types"] = sorted(atom_excluded)
    return section


class SpinModel(AtomisticModel):
    """Spin wrapper of a standard DeePMD energy model (module docstring).

    backbone: a StandardModel on the extended type map (2 n_types names); use_spin: (n_types,)
    bools; virtual_scale: (n_types,) Å/μB. forward(batch) reads SPIN (n_atoms, 3) μB and returns
    ATOM_ENERGY (n_atoms,) and ENERGY (n_frames,) in eV and MAG_MASK (n_atoms,).
    """

    input_derivatives = {SPIN: FORCE_MAG}
    symmetric_virial = False  # strained positions, unstrained spins: Ξ = -Σ_k dE/dr_k ⊗ r_k as DeePMD-kit

    def __init__(self, backbone, use_spin: Sequence[bool], virtual_scale: Sequence[float], config: Dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.n_real_types = len(use_spin)
        self.type_map = list(backbone.type_map[: self.n_real_types])
        self.cutoff = backbone.cutoff
        self.config = dict(config)
        self.statistics_batches = backbone.statistics_batches
        self.register_buffer("magnetic", torch.tensor([bool(f) for f in use_spin]), persistent=False)
        self.register_buffer("virtual_scale", torch.tensor([float(v) for v in virtual_scale], dtype=torch.float64),
                             persistent=False)
        self.output_keys = (ATOM_ENERGY, ENERGY, MAG_MASK)

    @property
    def input_keys(self) -> Tuple[str, ...]:
        return (SPIN,) + tuple(self.backbone.input_keys)

    def extended_batch(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The backbone's batch: real atoms, then the virtual atoms of the magnetic ones, with a
        neighbour list of both within rcut (built per frame, vesin). Positions stay differentiable
        in POSITIONS, SPIN and (through edge shifts) CELL."""
        if SPIN not in batch:
            raise DataError("a spin model needs atomic spins (deepmd spin.npy) in every system", key=SPIN)
        types, positions = batch[ATOM_TYPES], batch[POSITIONS]
        magnetic = self.magnetic.index_select(0, types).nonzero().squeeze(-1)
        mag_types = types.index_select(0, magnetic)
        scale = self.virtual_scale.to(positions.dtype).index_select(0, mag_types).unsqueeze(-1)
        virtual = positions.index_select(0, magnetic) + batch[SPIN].to(positions.dtype).index_select(0, magnetic) * scale
        frame = torch.cat([batch[BATCH], batch[BATCH].index_select(0, magnetic)])
        out = {POSITIONS: torch.cat([positions, virtual]), ATOM_TYPES: torch.cat([types, mag_types + self.n_real_types]),
               BATCH: frame, CELL: batch[CELL]}
        if PBC in batch:
            out[PBC] = batch[PBC]
        if FPARAM in batch:
            out[FPARAM] = batch[FPARAM]
        if APARAM in batch:  # DeePMD-kit gives the virtual atoms zero atomic parameters
            aparam = batch[APARAM]
            out[APARAM] = torch.cat([aparam, aparam.new_zeros((len(magnetic),) + aparam.shape[1:])])
        out[EDGE_INDEX], out[EDGE_SHIFTS] = self._edges(out)
        return out

    def _edges(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Edge index (2, n_edges) and shifts (n_edges, 3) of every frame of ``batch`` within rcut."""
        positions = batch[POSITIONS].detach().to(torch.float64).cpu().numpy()
        frames = batch[BATCH].cpu().numpy()
        cells = batch[CELL].detach().to(torch.float64).cpu().numpy()
        n_frames = cells.shape[0]
        pbc = batch[PBC].cpu().numpy() if PBC in batch else np.ones((n_frames, 3), dtype=bool)
        order = np.argsort(frames, kind="stable")
        bounds = np.searchsorted(frames[order], np.arange(n_frames + 1))
        edges, shifts = [], []
        for f in range(n_frames):  # one neighbour search per frame
            atoms = order[bounds[f]: bounds[f + 1]]
            index, shift = neighbor_list(positions[atoms], cells[f], pbc[f], self.cutoff)
            edges.append(atoms[index])
            shifts.append(shift)
        device = batch[POSITIONS].device
        edge_index = torch.from_numpy(np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), dtype=np.int64))
        edge_shifts = torch.from_numpy(np.concatenate(shifts) if shifts else np.zeros((0, 3)))
        return edge_index.to(device), edge_shifts.to(device=device, dtype=batch[POSITIONS].dtype)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """batch -> ATOM_ENERGY (n_atoms,), ENERGY (n_frames,) eV, MAG_MASK (n_atoms,) (module docstring)."""
        types = batch[ATOM_TYPES]
        if types.numel() and (int(types.max()) >= self.n_real_types or int(types.min()) < 0):
            raise DataError(f"atom type {int(types.max())} out of range for type_map {self.type_map}", key=ATOM_TYPES)
        outputs = self.backbone(self.extended_batch(batch))
        n_atoms = types.shape[0]
        return {ATOM_ENERGY: outputs[ATOM_ENERGY][:n_atoms], ENERGY: outputs[ENERGY],
                MAG_MASK: self.magnetic.index_select(0, types).to(batch[POSITIONS].dtype)}

    def output_bias(self):
        """The backbone's energy bias (rows of the virtual types stay zero: their atoms are excluded)."""
        return self.backbone.output_bias()

    def compute_statistics(self, batches, output_bias: bool = True, **kwargs) -> Dict[str, Any]:
        """Env statistics on the extended frames (real and virtual atoms, DeePMD-kit's packed
        samples); the energy bias on the real atoms only (virtual types count zero atoms)."""
        batches = [dict(b) for b in batches]
        if not batches:
            raise DataError("compute_statistics needs at least one sample batch")
        samples = [(ext, edge_vectors(ext)) for ext in map(self.extended_batch, batches)]
        summary = {"descriptor": self.backbone.descriptor.compute_statistics(samples)}
        summary["fitting"] = self.backbone.fitting.compute_output_statistics(
            batches, protection=self.backbone.data_stat_protect, output_bias=output_bias)
        return summary


def build_spin(config: Dict[str, Any], dtype: torch.dtype, build_standard) -> SpinModel:
    """A SpinModel from a standard model section with ``spin`` (``build_standard`` builds the backbone)."""
    if config.get("type_embedding") is not None:
        raise ConfigError("not supported yet: model/spin with a TF-style model/type_embedding", key="model/spin")
    fitting = config.get("fitting_net", {})
    if isinstance(fitting, dict) and fitting.get("type", "ener") != "ener":
        raise ConfigError(f"spin models have an ener fitting, got {fitting.get('type')!r}", key="model/fitting_net/type")
    use_spin, scale = spin_settings(config["spin"], config["type_map"])
    backbone = build_standard(backbone_section(config, use_spin), dtype)
    return SpinModel(backbone, use_spin, scale, config)
