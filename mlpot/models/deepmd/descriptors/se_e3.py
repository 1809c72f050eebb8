"""se_e3 (aliases se_at, se_a_3be, se_t): three-body embedding descriptor, spec deepmd.md §2.5.

With a_ij = R~_ij[1:4] the angular part of the normalised environment row of neighbour j (1/Å,
normalised), every neighbour pair (j, k) of types (t_j, t_k), t_j <= t_k, gives the invariant
θ_jk = a_ij · a_ik, and

    D_i = sum_{t_j <= t_k} 1 / (sel[t_j] sel[t_k]) sum_{j in t_j, k in t_k} θ_jk N_{t_j t_k}(θ_jk),

a vector of width M1 = neuron[-1]. As in DeePMD-kit the sums run over all slots (padded slots have
a = 0, so θ = 0 and they add nothing) and the normaliser is sel[t_j] sel[t_k] [COMPAT].

Speed: one batched einsum gives the (sel_j x sel_k) block of θ for all atoms at once; the embedding
net of the type pair runs on that dense block. The cost is O(sel^2) per atom, as in DeePMD-kit.
DeePMD-kit allocates nets for every ordered type pair and uses only t_j <= t_k; only the used nets
are built here (so ``num_parameters`` counts fewer, unused parameters).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from mlpot.models.deepmd.keys import SE_E3, resolve_precision, resolve_sel
from mlpot.models.sections import read_section
from mlpot.models.deepmd.descriptors.base import DESCRIPTORS, EnvMatrixDescriptor
from mlpot.nn import EmbeddingNet

__all__ = ["DescriptorSeE3"]



class DescriptorSeE3(EnvMatrixDescriptor):
    """se_e3 descriptor.

    forward(batch, vectors (n_edges, 3) Å) -> (D (n_atoms, M1), None); no equivariant block.
    """

    def __init__(
        self,
        n_types: int,
        sel,
        rcut: float = 6.0,
        rcut_smth: float = 0.5,
        neuron=(10, 20, 40),
        activation_function: str = "tanh",
        resnet_dt: bool = False,
        trainable: bool = True,
        seed: Optional[int] = None,
        exclude_types=(),
        env_protection: float = 0.0,
        set_davg_zero: bool = False,
        dtype: torch.dtype = torch.float64,
        config: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        self._init_env(n_types, rcut, rcut_smth, sel, env_protection, set_davg_zero, exclude_types, dtype)
        self.neuron = [int(n) for n in neuron]
        self.m1 = self.neuron[-1]
        # the type pairs t_j <= t_k, in DeePMD-kit's order; one net each
        self.type_pairs = [(tj, tk) for tk in range(self.n_types) for tj in range(self.n_types) if tj <= tk]
        self.embeddings = torch.nn.ModuleList(
            EmbeddingNet(
                1, self.neuron, activation=activation_function, resnet_dt=resnet_dt, trainable=trainable, dtype=dtype,
                seed=None if seed is None else int(seed) + tj * self.n_types + tk,
            )
            for tj, tk in self.type_pairs
        )
        self.dim_out = self.m1
        self.dim_rot = 0
        self.config = dict(config or {})
        self.tables = None  # compressed: one QuinticTable of θ per type pair (mlpot.models.deepmd.compression)

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_section(section, path, SE_E3, "SeE3Section")
        values.pop("type")
        dtype = resolve_precision(values.pop("precision"), dtype, path)
        values["sel"] = resolve_sel(values["sel"], n_types, path)
        return cls(n_types, dtype=dtype, config=dict(section), **values)

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, None]:
        env, _ = self.normalized_environment(batch, vectors)
        angular = env[..., 1:4]  # (n_atoms, n_slots, 3)
        out = env.new_zeros(env.shape[0], self.m1)
        for index, (tj, tk) in enumerate(self.type_pairs):
            (start_j, stop_j), (start_k, stop_k) = self.section_bounds[tj], self.section_bounds[tk]
            if stop_j == start_j or stop_k == start_k:
                continue
            theta = torch.einsum("ajm,akm->ajk", angular[:, start_j:stop_j], angular[:, start_k:stop_k])
            if self.tables is not None:  # the table fused with the θ-weighted sum: no (sel_j, sel_k, M1) block
                flat = theta.reshape(theta.shape[0], -1)
                block = self.tables[index].contract(flat, flat.unsqueeze(-1))[:, 0]
            else:
                embedded = self.embeddings[index](theta.unsqueeze(-1))  # (n_atoms, sel_j, sel_k, M1)
                block = torch.einsum("ajk,ajkm->am", theta, embedded)
            out = out + block / float((stop_j - start_j) * (stop_k - start_k))
        return out, None


