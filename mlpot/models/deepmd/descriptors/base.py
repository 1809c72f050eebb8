"""Base class of DeePMD-style descriptors and the descriptor registry.

A descriptor reads a batch and the edge vectors (computed once by the model, differentiable) and
returns per-atom invariant features (n_atoms, dim_out) and, when it has one, the equivariant
block (n_atoms, dim_rot, 3) used by the dipole and polar fittings.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES, EDGE_INDEX
from mlpot.errors import ConfigError
from mlpot.models.deepmd.keys import resolve_precision
from mlpot.models.deepmd.descriptors.env import EnvStatistics, environment_matrix, select_neighbors
from mlpot.nn import Registry, gather_rows, is_tracing, smooth_switch

__all__ = ["Descriptor", "DESCRIPTORS", "EnvMatrixDescriptor", "MixedTypesDescriptor"]

DESCRIPTORS: Registry[Any] = Registry("descriptor")


class Descriptor(torch.nn.Module):
    """Interface. Attributes: ``rcut``, ``rcut_smth`` (Å), ``sel``, ``n_types``, ``dim_out``,
    ``dim_rot`` (0 when there is no equivariant block), ``config`` (its model-section dict)."""

    rcut: float
    rcut_smth: float
    sel: List[int]
    n_types: int
    dim_out: int
    dim_rot: int = 0
    config: Dict[str, Any]

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError  # pragma: no cover

    def compute_statistics(self, samples: Sequence[Tuple[Dict[str, torch.Tensor], torch.Tensor]], protection: float = 1e-2) -> Dict[str, Any]:
        """Set normalisation buffers from (batch, edge_vectors) samples; returns a summary."""
        return {}


class EnvMatrixDescriptor(Descriptor):
    """Common part of se_e2_a / se_e2_r / se_e3: per-type sel, env matrix, davg/dstd by centre type.

    Buffers ``davg``, ``dstd``: (n_types, 4) in 1/Å (the radial-only descriptor uses column 0).
    ``exclude_types`` pairs are zeroed after normalisation; padded slots are not [COMPAT].
    """

    radial_only = False

    def _init_env(self, n_types, rcut, rcut_smth, sel, env_protection, set_davg_zero, exclude_types, dtype):
        self.n_types = int(n_types)
        self.rcut, self.rcut_smth = float(rcut), float(rcut_smth)
        self.sel = [int(s) for s in sel]
        self.n_slots = sum(self.sel)
        self.env_protection = float(env_protection)
        self.set_davg_zero = bool(set_davg_zero)
        self.register_buffer("davg", torch.zeros(n_types, 4, dtype=dtype))
        self.register_buffer("dstd", torch.ones(n_types, 4, dtype=dtype))
        excluded = torch.zeros(n_types, n_types, dtype=torch.bool)
        for pair in exclude_types or []:
            ti, tj = int(pair[0]), int(pair[1])
            excluded[ti, tj] = excluded[tj, ti] = True
        self.register_buffer("excluded_pairs", excluded, persistent=False)
        self.has_excluded_pairs = bool(excluded.any())  # a Python flag: no buffer value read in forward
        # neighbour type of every slot (its section)
        self.register_buffer(
            "slot_types", torch.repeat_interleave(torch.arange(n_types), torch.tensor(self.sel, dtype=torch.long)), persistent=False
        )
        self.section_bounds = [(sum(self.sel[:t]), sum(self.sel[: t + 1])) for t in range(n_types)]

    def raw_environment(self, batch, vectors) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw env matrix (n_atoms, n_slots, 4|1) float64-or-input dtype, nlist (n_atoms, n_slots))."""
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel)
        env = environment_matrix(vectors, nlist, self.rcut, self.rcut_smth, env_protection=self.env_protection, radial_only=self.radial_only)
        return env, nlist

    def normalized_environment(self, batch, vectors) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised env matrix R~ = (R - davg[t_i]) / dstd[t_i] in the descriptor dtype, and nlist."""
        env, nlist = self.raw_environment(batch, vectors)
        return self._normalize(env, nlist, batch[ATOM_TYPES], self.slot_types), nlist

    def compact_environment(self, batch, vectors) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """The normalised env matrix on the occupied columns only: (env, nlist, section bounds).

        Each type section of the sel matrix is filled nearest first, so its occupied slots form a
        prefix; section t keeps its first k_t = max_i(occupied slots of atom i) columns. The
        dropped columns are padding for every atom: callers that need them (the [COMPAT] padded
        slots of se_e2_a / se_e2_r) add them in closed form from the per-section counts
        ``sel[t] - (nlist[:, section t] >= 0).sum(1)``. On water (sel [46, 92]) this keeps
        ~80 % of the columns and saves that share of every dense (atoms x slots x M1) tensor.
        """
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel)
        n_atoms = nlist.shape[0]
        per_section = torch.zeros(n_atoms, self.n_types, dtype=torch.long, device=nlist.device)
        per_section.index_add_(1, self.slot_types, (nlist >= 0).to(torch.long))
        if is_tracing():  # fixed shapes: every column (the dropped ones are padding for all atoms anyway)
            kept = list(self.sel)
        else:
            kept = per_section.amax(0).tolist() if n_atoms else [0] * self.n_types
        columns, bounds, start = [], [], 0
        for (first, _), k in zip(self.section_bounds, kept):
            columns.append(torch.arange(first, first + k, device=nlist.device))
            bounds.append((start, start + k))
            start += k
        columns = torch.cat(columns)
        nlist = nlist[:, columns]
        # edge vectors are short (< rcut), so the descriptor dtype holds them to its own precision
        # whatever the absolute coordinates; float32 models then build the env matrix in float32
        env = environment_matrix(vectors.to(self.davg.dtype), nlist, self.rcut, self.rcut_smth,
                                 env_protection=self.env_protection, radial_only=self.radial_only)
        return self._normalize(env, nlist, batch[ATOM_TYPES], self.slot_types[columns]), nlist, bounds

    def _normalize(self, env, nlist, types, slot_types) -> torch.Tensor:
        env = env.to(self.davg.dtype)
        width = env.shape[-1]
        env = (env - self.davg[types, :width].unsqueeze(1)) / self.dstd[types, :width].unsqueeze(1)
        if self.has_excluded_pairs:
            excluded = self.excluded_pairs[types][:, slot_types] & (nlist >= 0)
            env = env * (~excluded).unsqueeze(-1).to(env.dtype)
        return env

    def compute_statistics(self, samples, protection: float = 1e-2) -> Dict[str, Any]:
        if getattr(self, "compressed", False):  # the tables were built from the statistics they hold
            raise ConfigError("a compressed model (tables from mlpot compress) cannot be trained or have its "
                              "statistics recomputed: use the model before compression", key="model/compress")
        stats = EnvStatistics(self.n_types)
        with torch.no_grad():
            for batch, vectors in samples:
                env, _ = self.raw_environment(batch, vectors)
                stats.add(env, batch[ATOM_TYPES])
        davg, dstd = stats.result(protection=protection, set_davg_zero=self.set_davg_zero)
        self.davg.copy_(davg.to(self.davg.dtype))
        self.dstd.copy_(dstd.to(self.dstd.dtype))
        return {"davg": davg.tolist(), "dstd": dstd.tolist()}


class MixedTypesDescriptor(EnvMatrixDescriptor):
    """Common part of the type-embedding descriptors (se_atten, se_e3_tebd): one neighbour section.

    Every atom keeps its ``sel[0]`` nearest neighbours of any type; davg/dstd stay per centre type.
    Subclasses call ``_init_env`` with sel ``[nsel, 0, ...]`` and then set ``self.sel = [nsel]``.
    """

    mixed_types = True

    @classmethod
    def _build(cls, values, n_types, dtype, section, path):
        """The descriptor from its read section ``values`` ("type" removed): precision, then the
        constructor; sel "auto" must have been resolved from data before."""
        dtype = resolve_precision(values.pop("precision"), dtype, path)
        if isinstance(values["sel"], str):
            raise ConfigError("sel 'auto' must be resolved from data first (mlpot.models.deepmd.builders.resolve_auto_sel)", key=f"{path}/sel")
        return cls(n_types, dtype=dtype, config=dict(section), path=path, **values)

    def raw_environment(self, batch, vectors) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw env matrix (n_atoms, sel, 4), nlist (n_atoms, sel) edge indices, nearest first, any type)."""
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel, mixed_types=True)
        env = environment_matrix(vectors, nlist, self.rcut, self.rcut_smth, env_protection=self.env_protection)
        return env, nlist

    def mixed_environment(self, batch, vectors) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised env (n_atoms, sel, 4) with excluded pairs zeroed, occupancy mask (n_atoms, sel)
        bool, switch sw = w(r) (n_atoms, sel) (0 on empty slots) and neighbour types (pad = n_types)."""
        env, nlist = self.raw_environment(batch, vectors)
        types = batch[ATOM_TYPES]
        env = (env.to(self.davg.dtype) - self.davg[types].unsqueeze(1)) / self.dstd[types].unsqueeze(1)
        mask = nlist >= 0
        # per-edge tables with one trailing padding entry, so empty slots (and edge-free batches) index it
        n_edges = vectors.shape[0]
        slot_edge = torch.where(mask, nlist, torch.full_like(nlist, n_edges))
        edge_types = torch.cat([types[batch[EDGE_INDEX][1]], types.new_full((1,), self.n_types)])
        neighbor_types = edge_types[slot_edge]
        if self.has_excluded_pairs:
            excluded = self.excluded_pairs[types.unsqueeze(1), neighbor_types.clamp(max=self.n_types - 1)] & mask
            env = env * (~excluded).unsqueeze(-1).to(env.dtype)
            mask = mask & ~excluded
            neighbor_types = torch.where(mask, neighbor_types, torch.full_like(neighbor_types, self.n_types))
        distance = gather_rows(torch.cat([torch.linalg.vector_norm(vectors, dim=-1), vectors.new_full((1,), 2.0 * self.rcut + 1.0)]), slot_edge)
        sw = torch.where(mask, smooth_switch(distance, self.rcut_smth, self.rcut), torch.zeros_like(distance)).to(env.dtype)
        return env, mask, sw, neighbor_types
