"""NVNMD's se_a descriptor (version 0): DeePMD-kit's ``se_a`` as the NVNMD hardware computes it.

Differences from se_e2_a (``DescriptorSeA``), per the NVNMD training code (npj Comput Mater 8, 107):

* A_i = (1/N_X) sum_k R~_ik^T G_ik with N_X = 2^ceil(log2(sum(sel) / 1.5)) (a power of two, a shift
  in hardware) instead of 1/sum(sel);
* D_i keeps M2 "diagonal band" columns of A_i^T A_i: D_i[m, k] = (A_i^T A_i)[m, (m + k) mod M1]
  for k < M2 (flattened m * M2 + k), instead of the first M2 columns;
* type_one_side embedding nets, tanh, no time step, no exclusions (checked when built).

Quantised mode (QNN, ``quantize``) emulates the hardware's arithmetic in software: per slot u = r^2
and the vector r_ij as short floats (``mlpot.nn.quantize.short_float``); s~ and h~ = s/r / dstd_1
read from the u -> (s, h) table of the centre type, G from the s -> G table of the neighbour type
(cubic pieces, ``tables.py``, evaluated in short-float arithmetic as DeePMD-kit's map_flt_nvnmd;
their derivatives from the slope tables, as DeePMD-kit's backward reads them); R~ = (s~, h~ x,
h~ y, h~ z) in short floats; sum_k R~^T G with each term truncated to 23 fraction bits, the sum a
short float (``fixed_matmul``); A = that / N_X in short floats; A^T A in NVNMD's short-float
product (``float_matmul``); D floored to 23 fraction bits. Padded slots have u = 0 and r = 0, so their row is (s~(0), 0, 0, 0) = (-davg/dstd,
0, 0, 0) as in the continuous model. The tables are buffers (saved with the model); they come from
``map_file`` or are built from the model's own embedding nets (``build_tables``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES, EDGE_INDEX, EDGE_SHIFTS
from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors.env import select_neighbors, undirected_pair_key
from mlpot.models.deepmd.descriptors.se_e2_a import DescriptorSeA
from mlpot.nn import gather_rows
from mlpot.nn.quantize import cubic_table, fixed_matmul, fixed_point, float_matmul, float_mul, short_float

__all__ = ["DescriptorSeANvnmd", "NBIT_FRACTION", "NBIT_MANTISSA", "U_ROWS", "S_ROWS"]

NBIT_FRACTION = 23  # fraction bits of NVNMD's fixed-point data (NBIT_FIXD_FL, NBIT_FIT_DATA_FL)
NBIT_MANTISSA = 21  # mantissa bits of its short float (1 implicit + NBIT_FLTF = 20 stored)
U_ROWS, S_ROWS = 512, 512  # rows of the u -> (s, h) and s -> G tables


class DescriptorSeANvnmd(DescriptorSeA):
    """NVNMD se_a: forward(batch, vectors (n_edges, 3) Å) -> (D (n_atoms, M1*M2), rot (n_atoms, M1, 3))."""

    def setup_nvnmd(self, quantize: bool, max_nnei: int, path: str = "model/descriptor") -> None:
        """Check the section against what the hardware computes and set the NVNMD parts up."""
        time_step = any(layer.idt is not None for net in self.embeddings for layer in net.layers)
        checks = (("type_one_side", self.type_one_side, True), ("resnet_dt", time_step, False),
                  ("exclude_types", self.has_excluded_pairs, False), ("env_protection", self.env_protection != 0.0, False),
                  ("type_embedding", self.type_embedding is not None, False))
        for name, value, wanted in checks:
            if value != wanted:
                raise ConfigError(f"NVNMD needs {name} {'true' if wanted else 'unset / false / 0'}", key=f"{path}/{name}")
        activation = self.embeddings[0].layers[0].activation_name
        if activation != "tanh":
            raise ConfigError(f"NVNMD needs activation_function tanh, got {activation!r}", key=f"{path}/activation_function")
        if self.n_types > 4:
            raise ConfigError(f"NVNMD version 0 takes at most 4 atom types, got {self.n_types}", key="model/type_map")
        for t, s in enumerate(self.sel):
            if s > max_nnei:
                raise ConfigError(f"sel[{t}] = {s} exceeds nvnmd max_nnei = {max_nnei}", key=f"{path}/sel")
        self.nix = 2 ** int(math.ceil(math.log2(sum(self.sel) / 1.5)))
        band = [m * self.m1 + (m + k) % self.m1 for m in range(self.m1) for k in range(self.m2)]
        self.register_buffer("band_index", torch.tensor(band, dtype=torch.long), persistent=False)
        self.quantize = bool(quantize)
        if self.quantize:
            dtype = self.davg.dtype
            for name, width in (("s", 4), ("h", 4), ("g", 4 * self.m1)):  # values and slopes (map.npy's *_grad)
                self.register_buffer(f"{name}_table", torch.zeros(self.n_types * U_ROWS, width, dtype=dtype))
                self.register_buffer(f"{name}_slope", torch.zeros(self.n_types * U_ROWS, width, dtype=dtype))
            self.register_buffer("u_segments", torch.zeros(1, 5, dtype=torch.float64))
            self.register_buffer("s_segments", torch.zeros(2, 5, dtype=torch.float64))
            self.register_buffer("tables_ready", torch.zeros((), dtype=torch.bool))

    def set_tables(self, tables: Dict[str, Any]) -> None:
        """Fill the table buffers from a DeePMD-kit map.npy dictionary (``tables.py``)."""
        dtype = self.davg.dtype
        for key, width in (("s", 4), ("h", 4), ("g", 4 * self.m1)):
            for name, entry in ((f"{key}_table", key), (f"{key}_slope", f"{key}_grad")):
                if entry not in tables:
                    raise ConfigError(f"the map has no {entry!r} table", key="model/nvnmd/map_file")
                getattr(self, name).copy_(torch.as_tensor(_stack(tables[entry], self.n_types, width, entry), dtype=dtype))
        self.u_segments.copy_(torch.as_tensor(tables["cfg_u2s"], dtype=torch.float64).reshape(1, 5))
        self.s_segments.copy_(torch.as_tensor(tables["cfg_s2g"], dtype=torch.float64).reshape(2, 5))
        self.tables_ready.fill_(True)

    def _segments(self, name: str):
        return [tuple(float(v) for v in row[:3]) + tuple(int(v) for v in row[3:]) for row in getattr(self, name).tolist()]

    def _quantized_a(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        """A_i of the quantised mode, (n_atoms, 4, M1)."""
        if not bool(self.tables_ready):
            raise ConfigError("the quantised NVNMD descriptor has no tables: give nvnmd/map_file (or build them "
                              "from the continuous model with mlpot train-nvnmd -s s1)", key="model/nvnmd/map_file")
        dtype = self.davg.dtype
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel)
        n_atoms, n_slots = nlist.shape
        occupied = (nlist >= 0).to(dtype).unsqueeze(-1)
        rij = gather_rows(vectors.to(dtype), nlist.clamp(min=0).reshape(-1)).reshape(n_atoms, n_slots, 3) * occupied
        rij = short_float(rij, NBIT_MANTISSA)
        u = float_matmul(rij.unsqueeze(-2), rij.unsqueeze(-1), NBIT_MANTISSA).reshape(-1)  # r^2, DeePMD-kit's dotmul_flt
        centre = batch[ATOM_TYPES].repeat_interleave(n_slots)
        u_segments = self._segments("u_segments")
        s = cubic_table(u, self.s_table, u_segments, centre, self.s_slope, hardware=True)
        h = cubic_table(u, self.h_table, u_segments, centre, self.h_slope, hardware=True)
        rxyz = float_mul(h.reshape(n_atoms, n_slots, 1), rij, NBIT_MANTISSA)
        env = torch.cat([s.reshape(n_atoms, n_slots, 1), rxyz], dim=-1)  # (n_atoms, n_slots, 4)
        neighbour = self.slot_types.repeat(n_atoms)
        g = cubic_table(s.reshape(-1), self.g_table, self._segments("s_segments"), neighbour, self.g_slope, hardware=True)
        gr = fixed_matmul(env.transpose(1, 2), g.reshape(n_atoms, n_slots, self.m1), NBIT_FRACTION, NBIT_MANTISSA)
        return short_float(gr / self.nix, NBIT_MANTISSA)

    def a_matrix(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        """A_i = (1/N_X) sum_k R~_ik^T G_ik, (n_atoms, 4, M1), continuous or quantised."""
        if self.quantize:
            return self._quantized_a(batch, vectors)
        env, nlist, bounds = self.compact_environment(batch, vectors)
        pair_key = undirected_pair_key(batch[EDGE_INDEX], batch[EDGE_SHIFTS])
        return self.embedding_contraction(env, nlist, batch[ATOM_TYPES], pair_key=pair_key, bounds=bounds) / self.nix

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        a_matrix = self.a_matrix(batch, vectors)
        n_atoms = a_matrix.shape[0]
        product = float_matmul if self.quantize else torch.matmul
        full = product(a_matrix.transpose(1, 2), a_matrix).reshape(n_atoms, self.m1 * self.m1)
        descriptor = full.index_select(1, self.band_index)
        if self.quantize:
            descriptor = fixed_point(descriptor, NBIT_FRACTION, "floor")
        return descriptor, a_matrix[:, 1:4, :].transpose(1, 2)


def _stack(value: Any, n_types: int, width: int, key: str):
    """A map.npy entry (one (rows, width) array per type) as one (n_types * rows, width) array."""
    import numpy as np

    parts = [np.asarray(part, dtype=np.float64) for part in value]
    if len(parts) != n_types or any(p.shape != (U_ROWS, width) for p in parts):
        shapes = [p.shape for p in parts]
        raise ConfigError(f"map table {key!r} has shapes {shapes}, expected {n_types} of ({U_ROWS}, {width})",
                          key="model/nvnmd/map_file")
    return np.concatenate(parts, axis=0)
