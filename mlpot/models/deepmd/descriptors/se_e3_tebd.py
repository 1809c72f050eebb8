"""se_e3_tebd: the three-body embedding of se_e3 with a type embedding (DeePMD-kit 3.x, PyTorch backend).

Neighbours are not split by type: every atom keeps its ``sel`` nearest neighbours of any type
(``MixedTypesDescriptor``). With a_j = R~_ij[1:4] the angular part of the normalised environment
row of neighbour j (excluded pairs zeroed), θ_jk = a_j · a_k for every ordered pair of slots
(j, k), tebd(t) the type embedding (``mlpot.models.deepmd.type_embedding``, a linear layer as in
DeePMD-kit's PyTorch type embedding) and sw the switch w(r) (0 on empty slots):

* ``tebd_input_mode`` ``concat``: G_jk = N([θ_jk, tebd(t_j), tebd(t_k)]);
* ``strip``: G_jk = N_s(θ_jk) ⊙ (1 + N_t([tebd(t_j), tebd(t_k)]) [· sw_j sw_k when ``smooth``]);
  N_t depends only on the type pair and runs once per pair (empty slots: the zero padding row);

    D_i = (1 / sel^2) sum_{j, k} θ_jk G_jk,   width M1 = neuron[-1],

with tebd(t_i) appended when ``concat_output_tebd``; one fitting net for all types. The sums run
over all sel x sel slot pairs in DeePMD-kit; an empty slot has a = -davg[1:4]/dstd = 0 (the
angular entries of davg are 0, spec deepmd.md §2.2), so θ = 0 and it adds nothing: the slots that
are empty for every atom are dropped before the nets run (exact), and the rest is evaluated in
chunks of atoms (``mlpot.nn.map_row_chunks``). No equivariant block. Cost O(sel^2) per atom.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES
from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors.base import MixedTypesDescriptor
from mlpot.models.deepmd.keys import SE_E3_TEBD
from mlpot.models.deepmd.type_embedding import TypeEmbedding
from mlpot.models.sections import read_section
from mlpot.nn import EmbeddingNet, gather_rows, is_tracing, map_row_chunks

__all__ = ["DescriptorSeE3Tebd"]


class DescriptorSeE3Tebd(MixedTypesDescriptor):
    """se_e3_tebd descriptor (module docstring).

    forward(batch, vectors (n_edges, 3) Å) -> (D (n_atoms, M1 [+ tebd_dim]), None).
    Buffers davg/dstd (n_types, 4) per centre type; ``sel`` is one int (a list is summed).
    """

    def __init__(self, n_types: int, sel, rcut: float = 6.0, rcut_smth: float = 0.5, neuron=(10, 20, 40),
                 tebd_dim: int = 8, tebd_input_mode: str = "concat", resnet_dt: bool = False,
                 set_davg_zero: bool = True, activation_function: str = "tanh", env_protection: float = 0.0,
                 smooth: bool = True, exclude_types=(), trainable: bool = True, seed: Optional[int] = None,
                 concat_output_tebd: bool = True, use_tebd_bias: bool = True, use_econf_tebd: bool = False,
                 dtype: torch.dtype = torch.float64,
                 config: Optional[Dict[str, Any]] = None, path: str = "model/descriptor"):
        super().__init__()
        nsel = int(sum(sel)) if isinstance(sel, (list, tuple)) else int(sel)
        if nsel <= 0:
            raise ConfigError(f"must be a positive int, got {sel!r}", key=f"{path}/sel")
        self._init_env(n_types, rcut, rcut_smth, [nsel] + [0] * (n_types - 1), env_protection, set_davg_zero,
                       exclude_types, dtype)
        self.sel = [nsel]
        if tebd_input_mode not in ("concat", "strip"):
            raise ConfigError(f"expected 'concat' or 'strip', got {tebd_input_mode!r}", key=f"{path}/tebd_input_mode")
        self.tebd_input_mode, self.smooth = tebd_input_mode, bool(smooth)
        self.concat_output_tebd = bool(concat_output_tebd)
        self.neuron = [int(n) for n in neuron]
        self.m1 = self.neuron[-1]
        seed = None if seed is None else int(seed)
        self.type_embedding = TypeEmbedding(n_types, [int(tebd_dim)], activation_function="linear",
                                            use_tebd_bias=use_tebd_bias, use_econf_tebd=use_econf_tebd, trainable=trainable,
                                            seed=None if seed is None else seed + 2, dtype=dtype)
        net = dict(activation=activation_function, resnet_dt=resnet_dt, trainable=trainable, dtype=dtype)
        concat = tebd_input_mode == "concat"
        self.embedding = EmbeddingNet(1 + 2 * int(tebd_dim) if concat else 1, self.neuron, seed=seed, **net)
        self.type_pair_embedding = None if concat else EmbeddingNet(
            2 * int(tebd_dim), self.neuron, seed=None if seed is None else seed + 1, **net)
        self.dim_out = self.m1 + (int(tebd_dim) if self.concat_output_tebd else 0)
        self.dim_rot = 0
        self.config = dict(config or {})

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_section(section, path, SE_E3_TEBD, "SeE3TebdSection")
        values.pop("type")
        return cls._build(values, n_types, dtype, section, path)

    def _pair_type_embedding(self, table: torch.Tensor) -> torch.Tensor:
        """N_t([tebd(a), tebd(b)]) of every type pair, padding included: ((n_types + 1)^2, M1), row a (n_types + 1) + b."""
        n_rows = table.shape[0]
        pairs = torch.cat([table.unsqueeze(1).expand(n_rows, n_rows, -1), table.unsqueeze(0).expand(n_rows, n_rows, -1)], dim=-1)
        return self.type_pair_embedding(pairs.reshape(n_rows * n_rows, -1))

    def _atom_rows(self, angular: torch.Tensor, sw: torch.Tensor, neighbor_types: torch.Tensor,
                   table: torch.Tensor, pair_table: torch.Tensor) -> Tuple[torch.Tensor]:
        """sum_jk θ_jk G_jk / sel^2 (n, M1) of n centre atoms from their angular rows (n, k, 3)."""
        n_atoms, width, _ = angular.shape
        theta = torch.matmul(angular, angular.transpose(1, 2))  # (n, k, k)
        if self.tebd_input_mode == "concat":
            tebd = gather_rows(table, neighbor_types)  # (n, k, tebd_dim)
            inputs = torch.cat([theta.unsqueeze(-1), tebd.unsqueeze(2).expand(n_atoms, width, width, -1),
                                tebd.unsqueeze(1).expand(n_atoms, width, width, -1)], dim=-1)
            embedded = self.embedding(inputs)
        else:
            radial = self.embedding(theta.unsqueeze(-1))
            index = neighbor_types.unsqueeze(2) * table.shape[0] + neighbor_types.unsqueeze(1)  # (n, k, k)
            g_types = gather_rows(pair_table, index)
            if self.smooth:
                g_types = g_types * (sw.unsqueeze(2) * sw.unsqueeze(1)).unsqueeze(-1)
            embedded = radial * g_types + radial
        out = torch.einsum("ajk,ajkm->am", theta, embedded)
        return (out / float(self.sel[0] * self.sel[0]),)

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, None]:
        types = batch[ATOM_TYPES]
        env, mask, sw, neighbor_types = self.mixed_environment(batch, vectors)
        if not is_tracing() and mask.numel():  # slots empty for every atom: θ = 0 there (module docstring)
            last = (torch.arange(1, mask.shape[1] + 1, device=mask.device) * mask).amax()  # last used slot + 1
            kept = int(last)
            env, sw, neighbor_types = env[:, :kept], sw[:, :kept], neighbor_types[:, :kept]
        table = self.type_embedding.table()
        pair_table = self._pair_type_embedding(table) if self.type_pair_embedding is not None else table
        (descriptor,) = map_row_chunks(self._atom_rows, (env[..., 1:4], sw, neighbor_types), table, pair_table, module=self)
        if self.concat_output_tebd:
            descriptor = torch.cat([descriptor, gather_rows(table, types)], dim=-1)
        return descriptor, None
