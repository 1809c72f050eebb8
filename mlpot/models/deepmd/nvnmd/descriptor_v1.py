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

The quantised (QNN) descriptor of version 1 is not supported yet (ConfigError).
"""

from __future__ import annotations

import math

import torch

from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors.env import occupied_slots
from mlpot.models.deepmd.descriptors.se_atten import DescriptorSeAtten

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
        if quantize:
            raise ConfigError("not supported yet: nvnmd version 1 quantised descriptor (QNN, quantize_descriptor)",
                              key="model/nvnmd/quantize_descriptor")
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
        self.quantize = False

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
