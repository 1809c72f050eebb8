"""Three-body embedding block with type embedding (DeePMD-kit's se_e3_tebd block), used by DPA-2's repinit.

For centre i and two neighbour slots j, k (s = nsel slots, nearest first, any type, within its own
rcut) with normalised env rows R~ (the angular columns a_ij = R~_ij[1:4]): the angle feature
e_ijk = a_ij · a_ik and an embedding G_ijk (width M = neuron[-1]) of it and of the two neighbour
types t_j, t_k (type embeddings tebd):

* ``concat``: G_ijk = N([e_ijk, tebd(t_j), tebd(t_k)]);
* ``strip``:  G_ijk = N_s(e_ijk) ⊙ (1 + N_t([tebd(t_j), tebd(t_k)]) [· w_ij w_ik when smooth]).

The output D_i = (1 / s^2) sum_jk e_ijk G_ijk, (n_atoms, M). Empty slots have a = 0 (davg has no
angular part), so they add nothing whatever embedding they take (here the zero padding row): the
sums run over the slots occupied for some atom of the batch only (s stays nsel).
Excluded pairs (``exclude_types``, centre-neighbour) have their rows zeroed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES, EDGE_INDEX
from mlpot.models.deepmd.descriptors.base import EnvMatrixDescriptor
from mlpot.models.deepmd.descriptors.env import environment_matrix, occupied_slots, select_neighbors
from mlpot.nn import EmbeddingNet, gather_rows, smooth_switch

__all__ = ["ThreeBodyBlock"]


class ThreeBodyBlock(EnvMatrixDescriptor):
    """forward(batch, vectors (n_edges, 3) Å, table (n_types + 1, tebd_dim) type embeddings with a zero
    padding row) -> (n_atoms, neuron[-1]). Buffers davg/dstd (n_types, 4) 1/Å."""

    mixed_types = True

    def __init__(self, n_types: int, rcut: float, rcut_smth: float, nsel: int, neuron, tebd_dim: int, *,
                 tebd_input_mode: str = "concat", set_davg_zero: bool = True, activation_function: str = "tanh",
                 resnet_dt: bool = False, smooth: bool = True, exclude_types=(), env_protection: float = 0.0,
                 trainable: bool = True, seed: Optional[int] = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        nsel = int(nsel)
        self._init_env(n_types, rcut, rcut_smth, [nsel] + [0] * (n_types - 1), env_protection, set_davg_zero,
                       exclude_types, dtype)
        self.sel = [nsel]
        self.tebd_input_mode, self.smooth = tebd_input_mode, bool(smooth)
        self.neuron = [int(n) for n in neuron]
        self.dim_out = self.neuron[-1]
        net = dict(activation=activation_function, resnet_dt=resnet_dt, trainable=trainable, dtype=dtype)
        if tebd_input_mode == "concat":
            self.embedding = EmbeddingNet(1 + 2 * int(tebd_dim), self.neuron, seed=seed, **net)
            self.type_pair_embedding = None
        else:
            self.embedding = EmbeddingNet(1, self.neuron, seed=seed, **net)
            self.type_pair_embedding = EmbeddingNet(2 * int(tebd_dim), self.neuron,
                                                    seed=None if seed is None else seed + 1, **net)

    def raw_environment(self, batch, vectors) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw env matrix (n_atoms, nsel, 4), nlist (n_atoms, nsel) edge indices, any type)."""
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel, mixed_types=True)
        env = environment_matrix(vectors, nlist, self.rcut, self.rcut_smth, env_protection=self.env_protection)
        return env, nlist

    def _concat_embedding(self, angle, table, neighbor_types) -> torch.Tensor:
        """G_ijk = N([e_ijk, tebd(t_j), tebd(t_k)]), (n, k, k, M), from angle (n, k, k) and
        neighbor_types (n, k). The first layer's type terms are taken per type and gathered per slot
        (``EmbeddingNet.split_input``), not formed per slot pair."""
        width = table.shape[-1]
        blocks = self.embedding.split_input([1, width, width])
        if blocks is None:
            tebd = gather_rows(table, neighbor_types)  # (n, k, tebd_dim)
            shape = angle.shape + (width,)
            return self.embedding(torch.cat([angle.unsqueeze(-1), tebd.unsqueeze(2).expand(shape),
                                             tebd.unsqueeze(1).expand(shape)], dim=-1))
        w_angle, w_j, w_k = blocks
        type_j, type_k = (gather_rows(table @ w, neighbor_types) for w in (w_j, w_k))  # (n, k, neuron[0])
        return self.embedding.forward_preactivated(angle.unsqueeze(-1) * w_angle[0] + type_j.unsqueeze(2)
                                                   + type_k.unsqueeze(1))

    def forward(self, batch, vectors, table, raw: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``raw``: this block's ``raw_environment`` when the caller has it already."""
        env, nlist = raw if raw is not None else self.raw_environment(batch, vectors)
        types = batch[ATOM_TYPES]
        env = (env.to(self.davg.dtype) - self.davg[types].unsqueeze(1)) / self.dstd[types].unsqueeze(1)
        mask = nlist >= 0
        slot_edge = torch.where(mask, nlist, torch.full_like(nlist, vectors.shape[0]))
        edge_types = torch.cat([types[batch[EDGE_INDEX][1]], types.new_full((1,), self.n_types)])
        neighbor_types = edge_types[slot_edge]  # (n, s), n_types on empty slots
        if self.has_excluded_pairs:
            excluded = self.excluded_pairs[types.unsqueeze(1), neighbor_types.clamp(max=self.n_types - 1)] & mask
            env = env * (~excluded).unsqueeze(-1).to(env.dtype)
            mask = mask & ~excluded
        n_atoms, n_slots = nlist.shape
        kept = occupied_slots(nlist >= 0)  # filled nearest first: drop the columns empty for every atom
        env, mask, slot_edge, neighbor_types = (x[:, :kept] for x in (env, mask, slot_edge, neighbor_types))
        angular = env[..., 1:]
        angle = torch.matmul(angular, angular.transpose(1, 2))  # (n, k, k), k <= s
        if self.tebd_input_mode == "concat":
            g = self._concat_embedding(angle, table, neighbor_types)
        else:
            g_radial = self.embedding(angle.unsqueeze(-1))
            n_rows = table.shape[0]
            pairs = torch.cat([table.unsqueeze(1).expand(n_rows, n_rows, -1), table.unsqueeze(0).expand(n_rows, n_rows, -1)],
                              dim=-1).reshape(n_rows * n_rows, -1)
            index = neighbor_types.unsqueeze(2) * n_rows + neighbor_types.unsqueeze(1)  # (n, s, s)
            g_types = gather_rows(self.type_pair_embedding(pairs), index)
            if self.smooth:
                distance = torch.linalg.vector_norm(torch.cat([vectors, vectors.new_full((1, 3), 2.0 * self.rcut)]), dim=-1)
                sw = torch.where(mask, smooth_switch(gather_rows(distance, slot_edge), self.rcut_smth, self.rcut),
                                 torch.zeros_like(env[..., 0])).to(env.dtype)
                g_types = g_types * (sw.unsqueeze(2) * sw.unsqueeze(1)).unsqueeze(-1)
            g = g_radial * g_types + g_radial
        return torch.einsum("nab,nabm->nm", angle, g) / n_slots ** 2
