"""loc_frame (DeePMD-kit TF backend): the original Deep Potential's local-frame descriptor.

Neighbours within ``rcut`` (a hard cutoff, no switch) are sorted by type, then distance. Of the
type-t neighbours the ``sel_a[t]`` nearest form the "a" list (full coordinates), the next
``sel_r[t]`` the "r" list (distance only); slots are laid out as DeePMD-kit does, [a list of every
type | r list of every type]. Each centre i of type t gets a local frame from two of its
neighbours chosen by ``axis_rule[6t:6t+6]`` = (class, type, index) twice: class 0 = a list,
1 = r list, the index-th nearest neighbour of that type in that list. With r1, r2 their vectors
(neighbour - centre, Å):

    e_x = r1/|r1|,  e_y = (r2 - (e_x·r2) e_x)/|...|,  e_z = e_x × e_y;

when r1 and r2 are antiparallel (|cos + 1| < 1e-4) the second axis atom is the next one of the
rule's list (index + 1), as in DeePMD-kit. For a neighbour r with local coordinates
(x', y', z') = (e_x·r, e_y·r, e_z·r):

* a slot: (1/r, z'/r², x'/r², y'/r²) (1/Å); r slot: 1/r; empty slots 0;
* D_i = (d - davg[t_i]) / dstd[t_i] column by column, davg/dstd (n_types, 4 Σsel_a + Σsel_r)
  from the training frames (mean and std of each column over the atoms of each type, a std
  below 1e-2 raised to 1e-2), and D_i goes straight to the fitting net (no embedding net).

Forces include the frame's dependence on the axis atoms (autograd). Not smooth: a neighbour that
crosses rcut, changes its rank or the axis atoms makes the energy jump, as in DeePMD-kit.
Negative types in ``axis_rule`` (the nearest of any type but one) are not supported yet; a centre
without the axis neighbours its rule names is an error (DeePMD-kit asserts).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES
from mlpot.errors import ConfigError, DataError
from mlpot.models.deepmd.descriptors.base import Descriptor
from mlpot.models.deepmd.descriptors.env import select_neighbors
from mlpot.models.deepmd.keys import LOC_FRAME
from mlpot.models.sections import read_section
from mlpot.nn import gather_rows, is_tracing

__all__ = ["DescriptorLocFrame"]

ANTIPARALLEL = 1e-4  # |cos(r1, r2) + 1| below which the backup second axis atom is used (DeePMD-kit)
STD_PROTECTION = 1e-2


class DescriptorLocFrame(Descriptor):
    """loc_frame descriptor (module docstring): forward(batch, vectors (n_edges, 3) Å) ->
    (D (n_atoms, 4 Σsel_a + Σsel_r), None). Buffers davg/dstd (n_types, dim_out)."""

    def __init__(self, n_types: int, sel_a: Sequence[int], sel_r: Sequence[int], axis_rule: Sequence[int],
                 rcut: float = 6.0, dtype: torch.dtype = torch.float64, config: Optional[Dict[str, Any]] = None,
                 path: str = "model/descriptor"):
        super().__init__()
        self.n_types = int(n_types)
        for name, value in (("sel_a", sel_a), ("sel_r", sel_r)):
            if len(value) != self.n_types or any(int(s) < 0 for s in value):
                raise ConfigError(f"needs {self.n_types} non-negative ints (one per type), got {list(value)}",
                                  key=f"{path}/{name}")
        self.sel_a, self.sel_r = [int(s) for s in sel_a], [int(s) for s in sel_r]
        self.sel = [a + r for a, r in zip(self.sel_a, self.sel_r)]
        self.rcut = float(rcut)
        self.rcut_smth = self.rcut
        self.n_a, self.n_r = sum(self.sel_a), sum(self.sel_r)
        self.dim_out, self.dim_rot = 4 * self.n_a + self.n_r, 0
        self.config = dict(config or {})
        # column of the (type-sectioned, nearest-first) neighbour list behind each a and r slot
        starts = [sum(self.sel[:t]) for t in range(self.n_types)]
        a_columns = [starts[t] + k for t in range(self.n_types) for k in range(self.sel_a[t])]
        r_columns = [starts[t] + self.sel_a[t] + k for t in range(self.n_types) for k in range(self.sel_r[t])]
        self.register_buffer("slot_columns", torch.tensor(a_columns + r_columns, dtype=torch.long), persistent=False)
        self.register_buffer("axis_slots", self._axis_slots(axis_rule, path), persistent=False)
        self.register_buffer("davg", torch.zeros(self.n_types, self.dim_out, dtype=dtype))
        self.register_buffer("dstd", torch.ones(self.n_types, self.dim_out, dtype=dtype))

    def _axis_slots(self, rule: Sequence[int], path: str) -> torch.Tensor:
        """(n_types, 3) slot (of [a slots | r slots]) of axis atom 1, axis atom 2 and its backup."""
        key, rule = f"{path}/axis_rule", [int(v) for v in rule]
        if len(rule) != 6 * self.n_types:
            raise ConfigError(f"needs 6 ints per type ({6 * self.n_types}), got {len(rule)}", key=key)
        rows = []
        for t in range(self.n_types):
            row = []
            for klass, kind, index in (rule[6 * t: 6 * t + 3], rule[6 * t + 3: 6 * t + 6]):
                if klass not in (0, 1):
                    raise ConfigError(f"type {t}: class must be 0 (a list) or 1 (r list), got {klass}", key=key)
                if kind < 0:
                    raise ConfigError(f"not supported yet: {key} with a negative type (type {t})", key=key)
                sel, first = (self.sel_a, 0) if klass == 0 else (self.sel_r, self.n_a)
                if kind >= self.n_types or not 0 <= index < sel[kind]:
                    raise ConfigError(f"type {t}: neighbour {index} of type {kind} is not in the "
                                      f"{'a' if klass == 0 else 'r'} list (sel {sel})", key=key)
                row.append(first + sum(sel[:kind]) + index)
            # backup of the second axis atom: the next slot of its list (DeePMD-kit's rule), kept inside it
            list_end = self.n_a if rule[6 * t + 3] == 0 else self.dim_out - 3 * self.n_a
            row.append(min(row[1] + 1, list_end - 1))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long)

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_section(section, path, LOC_FRAME, "LocFrameSection")
        values.pop("type")
        return cls(n_types, dtype=dtype, config=dict(section), path=path, **values)

    def raw_descriptor(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        """The descriptor before davg/dstd, (n_atoms, dim_out), in the descriptor dtype."""
        types = batch[ATOM_TYPES]
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel).index_select(1, self.slot_columns)
        occupied = nlist >= 0
        padded = torch.cat([vectors.to(self.davg.dtype), vectors.new_zeros(1, 3, dtype=self.davg.dtype)])
        slots = gather_rows(padded, torch.where(occupied, nlist, vectors.shape[0]).reshape(-1)).view(nlist.shape + (3,))
        axis = self.axis_slots[types]  # (n_atoms, 3)
        if not is_tracing() and types.numel() and not bool(occupied.gather(1, axis[:, :2]).all()):
            raise DataError("loc_frame: an atom lacks the axis neighbours its axis_rule names (within rcut)",
                            key="model/descriptor/axis_rule")
        r1, r2, backup = (slots.gather(1, axis[:, k, None, None].expand(-1, 1, 3)).squeeze(1) for k in range(3))
        cosine = (r1 * r2).sum(-1) / (r1.norm(dim=-1) * r2.norm(dim=-1))
        r2 = torch.where(((cosine + 1).abs() < ANTIPARALLEL).unsqueeze(-1), backup, r2)
        e_x = r1 / r1.norm(dim=-1, keepdim=True)
        e_y = r2 - (e_x * r2).sum(-1, keepdim=True) * e_x
        e_y = e_y / e_y.norm(dim=-1, keepdim=True)
        frame = torch.stack([e_x, e_y, torch.linalg.cross(e_x, e_y)], dim=1)  # (n_atoms, 3, 3), rows e_x, e_y, e_z
        local = torch.matmul(slots, frame.transpose(1, 2))  # (n_atoms, slots, 3): x', y', z'
        # empty slots hold a unit length so that 1/r stays finite; their rows are zeroed below
        r2_len = torch.where(occupied, (local * local).sum(-1), torch.ones_like(local[..., 0]))
        inverse = torch.rsqrt(r2_len)
        a_part = torch.stack([inverse, local[..., 2] / r2_len, local[..., 0] / r2_len, local[..., 1] / r2_len], -1)
        a_part = (a_part * occupied.unsqueeze(-1).to(a_part.dtype))[:, : self.n_a]
        r_part = (inverse * occupied.to(inverse.dtype))[:, self.n_a:]
        return torch.cat([a_part.flatten(1), r_part], dim=-1)

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, None]:
        types = batch[ATOM_TYPES]
        return (self.raw_descriptor(batch, vectors) - self.davg[types]) / self.dstd[types], None

    def compute_statistics(self, samples, protection: float = STD_PROTECTION) -> Dict[str, Any]:
        """davg/dstd per type and column over the centre atoms of ``samples`` (module docstring)."""
        sums = torch.zeros(self.n_types, 3, self.dim_out, dtype=torch.float64)
        with torch.no_grad():
            for batch, vectors in samples:
                raw = self.raw_descriptor(batch, vectors).to(torch.float64).cpu()
                stacked = torch.stack([torch.ones_like(raw), raw, raw * raw], dim=1)
                sums.index_add_(0, batch[ATOM_TYPES].cpu(), stacked)
        count = sums[:, 0].clamp(min=1)
        mean = sums[:, 1] / count
        std = (sums[:, 2] / count - mean * mean).clamp(min=0).sqrt().clamp(min=protection)
        self.davg.copy_(mean.to(self.davg.dtype))
        self.dstd.copy_(std.to(self.dstd.dtype))
        return {"davg": mean.tolist(), "dstd": std.tolist()}
