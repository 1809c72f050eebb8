"""se_a_tpe (alias se_a_ebd; DeePMD-kit TF backend): se_e2_a with a built-in scalar type embedding.

One embedding net N(s~) for every type pair; its output (M1) is amplified by a linear layer L to
M1 x C x C (M1 x C with ``type_one_side``) and contracted with a type embedding T(t) of C =
``type_nchanl`` channels:

    G_ij[m] = (1/C²) Σ_ab L(N(s~_ij))[m, a, b] T(t_i)[a] T(t_j)[b]     (two sides)
    G_ij[m] = (1/C)  Σ_a  L(N(s~_ij))[m, a] T(t_j)[a]                  (type_one_side)

T(t) = linear(tanh(... tanh(t / n_types W_1 + b_1) ...)): ``type_nlayer`` tanh layers of width C
(the descriptor's activation function) and one linear layer, on the scalar t / n_types. The rest
is se_e2_a: A = R~ᵀ G / N_c over all Σsel slots (padded slots keep their section's type, as in
DeePMD-kit), D = Aᵀ A[:, :M2], per-type fitting nets (no type embedding in the fitting input).
DeePMD-kit's ``numb_aparam`` variant (aparam mixed into T) is not built.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from mlpot.models.deepmd.descriptors.se_e2_a import DescriptorSeA
from mlpot.models.deepmd.keys import SE_A_TPE
from mlpot.nn import EmbeddingNet, MLPLayer

__all__ = ["DescriptorSeATpe"]


class DescriptorSeATpe(DescriptorSeA):
    """se_a_tpe descriptor (module docstring): forward as se_e2_a -> (D (n_atoms, M1*M2), rot (n_atoms, M1, 3))."""

    KEYS = SE_A_TPE
    type_order_fixed = True  # T reads t / n_types: a type_map change cannot be remapped (finetune)

    def __init__(self, n_types: int, sel, type_nchanl: int = 4, type_nlayer: int = 2, **kwargs: Any):
        super().__init__(n_types, sel, **kwargs)
        seed, dtype = kwargs.get("seed"), self.davg.dtype
        activation, trainable = kwargs.get("activation_function", "tanh"), kwargs.get("trainable", True)
        self.embeddings = torch.nn.ModuleList([EmbeddingNet(
            1, self.neuron, activation=activation, resnet_dt=kwargs.get("resnet_dt", False), trainable=trainable,
            dtype=dtype, seed=seed)])
        self.channels = int(type_nchanl)
        generator = None if seed is None else torch.Generator().manual_seed(int(seed) + 1)
        width = self.m1 * self.channels * (1 if self.type_one_side else self.channels)
        self.amplify = MLPLayer(self.m1, width, None, trainable=trainable, dtype=dtype, generator=generator)
        layers, n_in = [], 1
        for _ in range(int(type_nlayer)):
            layers.append(MLPLayer(n_in, self.channels, activation, trainable=trainable, dtype=dtype, generator=generator))
            n_in = self.channels
        layers.append(MLPLayer(n_in, self.channels, None, trainable=trainable, dtype=dtype, generator=generator))
        self.type_layers = torch.nn.ModuleList(layers)
        self.register_buffer("type_inputs", (torch.arange(n_types, dtype=dtype) / n_types).unsqueeze(1), persistent=False)

    def _type_table(self) -> torch.Tensor:
        """T(t) of every type, (n_types, C)."""
        x = self.type_inputs
        for layer in self.type_layers:
            x = layer(x)
        return x

    def _embedding_net(self, ti: int, tj: int, tebd: Optional[torch.Tensor], padded: bool = False):
        """s~ (rows, 1) -> G (rows, M1) for centre type ti, neighbour (section) type tj (module docstring)."""
        shared, m1, channels = self.embeddings[0], self.m1, self.channels
        if self.type_one_side:
            weights = tebd[tj] / channels  # (C,)
            return lambda s: torch.matmul(self.amplify(shared(s)).view(-1, m1, channels), weights)
        weights = (torch.outer(tebd[ti], tebd[tj]) / channels ** 2).reshape(-1)  # (C*C,), index a*C + b
        return lambda s: torch.matmul(self.amplify(shared(s)).view(-1, m1, channels * channels), weights)
