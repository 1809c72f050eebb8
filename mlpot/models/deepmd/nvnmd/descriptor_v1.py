"""NVNMD's version-1 descriptor: DeePMD-kit TF's ``se_atten`` as its NVNMD variant computes it.

The model of an NVNMD version-1 input (DeePMD-kit 3.2, ``deepmd/tf/nvnmd``, up to 32 types):
se_atten in ``strip`` mode without attention layers (attn_layer 0), neuron [8, 16, 32],
axis_neuron 4, ``set_davg_zero``, one mixed neighbour list of ``sel`` slots (at most ``max_nnei``),
and the default TF type embedding (one linear layer without bias, width 8 = NTAVC). Per slot,
with s~ = R~[..., 0]:

* G_ij = N_s(s~_ij) (1 + N_t([tebd(t_j), tebd(t_i)])): TF's strip embedding always feeds both
  types to the type-pair net (``_two_side_ebd``), whatever ``type_one_side`` says, so the model is
  built two-sided;
* A_i = (1/N_X) R~_i^T G_i (4, M1) with N_X = 2^ceil(log2(sel / 1.5)) (a power of two, a shift in
  hardware) instead of 1/sel;
* D_i[m, k] = (A_i^T A_i)[m, (m + k) mod M1], k < M2 (the "diagonal band", as version 0), and
  tebd(t_i) appended: the TF fitting net reads [D_i, tebd(t_i)] (its first layer splits the weight
  into ``matrix`` for D and ``tweight`` for tebd, ``files.py``).

Quantised mode (QNN, ``quantize``), as DeePMD-kit's version-1 QNN: per slot u = r^2 and r_ij as
short floats (``mlpot.nn.quantize.short_float``, 21-bit mantissa); the raw s and h = s/r from the
one u -> (s, h) table (short-float arithmetic, as version 0); s~ = s / dstd[t_i, 0] and h~ = h /
dstd[t_i, 1] (``dstd_inv`` of the tables) as short-float products (``float_mul``); R~ = (s~, h~
r_ij); G = G_s(s~) from the s~ -> G_s table times gt[t_i, t_j] = 1 + N_t (the type-pair table), a
short-float product; sum_k R~^T G, A = that / N_X and A^T A as version 0 (``fixed_matmul``,
``float_matmul``), the band floored to 23 fraction bits; the appended type embedding is the tables'
``t_ebd`` (so the type embedding net, like the embedding nets, is not trained in the QNN stage).
Table derivatives come from the slope tables, the roundings pass gradients straight through.
"""

from __future__ import annotations

import math

import torch

from mlpot.data.keys import ATOM_TYPES, EDGE_INDEX
from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors.env import occupied_slots, select_neighbors
from mlpot.models.deepmd.descriptors.se_atten import DescriptorSeAtten
from mlpot.models.deepmd.nvnmd.descriptor import NBIT_FRACTION, NBIT_MANTISSA, S_ROWS, U_ROWS
from mlpot.nn import gather_rows
from mlpot.nn.quantize import cubic_table, fixed_matmul, fixed_point, float_matmul, float_mul, short_float

__all__ = ["DescriptorSeAttenNvnmd", "NTYPE_MAX", "TEBD_WIDTH", "band_index"]

NTYPE_MAX = 32  # types the version-1 hardware holds (config.npy dscp/ntype_max)
TEBD_WIDTH = 8  # width of the type embedding read by the fitting's tweight (fitn/NTAVC)


def band_index(m1: int, m2: int) -> torch.Tensor:
    """Columns of the flattened A^T A (M1 * M1) that NVNMD keeps: m * M1 + (m + k) mod M1, k < M2."""
    return torch.tensor([m * m1 + (m + k) % m1 for m in range(m1) for k in range(m2)], dtype=torch.long)


class DescriptorSeAttenNvnmd(DescriptorSeAtten):
    """NVNMD se_atten (version 1): forward(batch, vectors (n_edges, 3) Å) -> (D (n_atoms, M1*M2 + 8),
    rot (n_atoms, M1, 3)); see the module docstring."""

    def setup_nvnmd(self, quantize: bool, max_nnei: int, path: str = "model/descriptor") -> None:
        """Check the section against what NVNMD version 1 computes and set N_X and the band."""
        tebd = self.type_embedding
        tebd_layer = tebd.layers[0] if tebd is not None and len(tebd.layers) == 1 else None
        time_step = any(layer.idt is not None for net in (self.embedding, self.type_pair_embedding)
                        if net is not None for layer in net.layers)
        checks = (("tebd_input_mode", self.tebd_input_mode, "strip"), ("attn_layer", len(self.attention), 0),
                  ("type_one_side", self.type_one_side, False), ("smooth_type_embedding", self.smooth, False),
                  ("resnet_dt", time_step, False), ("exclude_types", self.has_excluded_pairs, False),
                  ("env_protection", self.env_protection, 0.0), ("set_davg_zero", self.set_davg_zero, True),
                  ("concat_output_tebd", self.concat_output_tebd, True),
                  ("tebd_dim", None if tebd_layer is None else tebd_layer.n_out, TEBD_WIDTH),
                  ("use_tebd_bias", tebd_layer is not None and tebd_layer.bias is not None, False),
                  ("tebd_activation", None if tebd_layer is None else tebd_layer.activation_name or "linear", "linear"))
        for name, value, wanted in checks:
            if value != wanted:
                raise ConfigError(f"NVNMD version 1 needs {name} {wanted!r}, got {value!r}", key=f"{path}/{name}")
        activation = self.embedding.layers[0].activation_name
        if activation != "tanh":
            raise ConfigError(f"NVNMD needs activation_function tanh, got {activation!r}", key=f"{path}/activation_function")
        if self.n_types > NTYPE_MAX:
            raise ConfigError(f"NVNMD version 1 takes at most {NTYPE_MAX} atom types, got {self.n_types}", key="model/type_map")
        if self.sel[0] > max_nnei:
            raise ConfigError(f"sel = {self.sel[0]} exceeds nvnmd max_nnei = {max_nnei}", key=f"{path}/sel")
        self.nix = 2 ** int(math.ceil(math.log2(self.sel[0] / 1.5)))
        self.register_buffer("band_index", band_index(self.m1, self.m2), persistent=False)
        self.quantize = bool(quantize)
        if self.quantize:
            dtype = self.davg.dtype
            for name, shape in self._table_shapes().items():
                self.register_buffer(name, torch.zeros(shape, dtype=dtype))
            self.register_buffer("u_segments", torch.zeros(1, 5, dtype=torch.float64))
            self.register_buffer("s_segments", torch.zeros(2, 5, dtype=torch.float64))
            self.register_buffer("tables_ready", torch.zeros((), dtype=torch.bool))

    def _table_shapes(self):
        """Buffer name -> shape of the version-1 tables (map.npy entry: the name without the suffix)."""
        n_rows = self.n_types + 1
        return {"s_table": (U_ROWS, 4), "s_slope": (U_ROWS, 4), "h_table": (U_ROWS, 4), "h_slope": (U_ROWS, 4),
                "g_table": (S_ROWS, 4 * self.m1), "g_slope": (S_ROWS, 4 * self.m1),
                "t_ebd_table": (n_rows, self.type_embedding.dim_out), "gt": (n_rows * n_rows, self.m1),
                "dstd_inv": (self.n_types, 4)}

    def set_tables(self, tables) -> None:
        """Fill the table buffers from a version-1 map.npy dictionary (``tables.build_tables_v1`` or
        DeePMD-kit's mapt)."""
        import numpy as np

        entries = {"s_table": "s", "s_slope": "s_grad", "h_table": "h", "h_slope": "h_grad", "g_table": "g",
                   "g_slope": "g_grad", "t_ebd_table": "t_ebd", "gt": "gt", "dstd_inv": "dstd_inv"}
        for name, shape in self._table_shapes().items():
            entry = entries[name]
            if entry not in tables:
                raise ConfigError(f"the map has no {entry!r} table (an NVNMD version 1 map.npy)", key="model/nvnmd/map_file")
            value = np.asarray(tables[entry], dtype=np.float64)
            value = value[0] if value.ndim == 3 and value.shape[0] == 1 else value  # one table per list
            if value.shape != shape:
                raise ConfigError(f"map table {entry!r} has shape {value.shape}, expected {shape}", key="model/nvnmd/map_file")
            getattr(self, name).copy_(torch.as_tensor(value))
        self.u_segments.copy_(torch.as_tensor(tables["cfg_u2s"], dtype=torch.float64).reshape(1, 5))
        self.s_segments.copy_(torch.as_tensor(tables["cfg_s2g"], dtype=torch.float64).reshape(2, 5))
        self.tables_ready.fill_(True)

    def _segments(self, name: str):
        return [tuple(float(v) for v in row[:3]) + tuple(int(v) for v in row[3:]) for row in getattr(self, name).tolist()]

    def _quantized_a(self, batch, vectors) -> torch.Tensor:
        """A_i of the quantised mode, (n_atoms, 4, M1)."""
        if not bool(self.tables_ready):
            raise ConfigError("the quantised NVNMD descriptor has no tables: give nvnmd/map_file (or build them "
                              "from the continuous model with mlpot train-nvnmd -s s1)", key="model/nvnmd/map_file")
        types, dtype = batch[ATOM_TYPES], self.davg.dtype
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel, mixed_types=True)
        n_atoms, n_slots = nlist.shape
        occupied = nlist >= 0
        edges = nlist.clamp(min=0).reshape(-1)
        rij = gather_rows(vectors.to(dtype), edges).reshape(n_atoms, n_slots, 3) * occupied.unsqueeze(-1).to(dtype)
        rij = short_float(rij, NBIT_MANTISSA)
        u = float_matmul(rij.unsqueeze(-2), rij.unsqueeze(-1), NBIT_MANTISSA).reshape(-1)  # r^2, DeePMD-kit's dotmul_flt
        u_segments = self._segments("u_segments")
        inverse = self.dstd_inv.index_select(0, types).unsqueeze(1)  # (n_atoms, 1, 4)
        s, h = (cubic_table(u, table, u_segments, None, slope, hardware=True).reshape(n_atoms, n_slots, 1)
                for table, slope in ((self.s_table, self.s_slope), (self.h_table, self.h_slope)))
        s = float_mul(inverse[..., :1], s, NBIT_MANTISSA)
        h = float_mul(inverse[..., 1:2], h, NBIT_MANTISSA)
        env = torch.cat([s, float_mul(h, rij, NBIT_MANTISSA)], dim=-1)  # (n_atoms, n_slots, 4)
        g_s = cubic_table(s.reshape(-1), self.g_table, self._segments("s_segments"), None, self.g_slope, hardware=True)
        neighbour = torch.where(occupied, types.index_select(0, batch[EDGE_INDEX][1]).index_select(0, edges).reshape(n_atoms, n_slots),
                                torch.full_like(nlist, self.n_types))
        pair = (types.unsqueeze(1) * (self.n_types + 1) + neighbour).reshape(-1)
        g = float_mul(g_s, self.gt.index_select(0, pair), NBIT_MANTISSA)
        gr = fixed_matmul(env.transpose(1, 2), g.reshape(n_atoms, n_slots, self.m1), NBIT_FRACTION, NBIT_MANTISSA)
        return short_float(gr / self.nix, NBIT_MANTISSA)

    def forward(self, batch, vectors):
        if not self.quantize:
            return super().forward(batch, vectors)
        a_matrix = self._quantized_a(batch, vectors)
        full = float_matmul(a_matrix.transpose(1, 2), a_matrix, NBIT_MANTISSA).flatten(1)
        descriptor = fixed_point(full.index_select(1, self.band_index), NBIT_FRACTION, "floor")
        tebd = self.t_ebd_table.index_select(0, batch[ATOM_TYPES])
        return torch.cat([descriptor, tebd], dim=-1), a_matrix[:, 1:4, :].transpose(1, 2)

    def _atom_rows(self, env, mask, sw, neighbor_types, types, table):
        """(band D (n, M1*M2), A = R~^T G / N_X (n, 4, M1)) of n centre atoms; trailing slots empty
        for every atom add nothing (env rows 0: davg is 0) and are dropped."""
        kept = occupied_slots(mask)
        if kept < mask.shape[1]:
            env, mask, sw, neighbor_types = (x[:, :kept] for x in (env, mask, sw, neighbor_types))
        g = self._embedding(env, types, neighbor_types, sw, table)
        a_matrix = torch.matmul(env.transpose(1, 2), g) / self.nix
        full = torch.matmul(a_matrix.transpose(1, 2), a_matrix).flatten(1)
        return full.index_select(1, self.band_index), a_matrix
