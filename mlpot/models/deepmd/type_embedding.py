"""Type embedding of DeePMD-kit (spec deepmd.md §2.6): atom type -> learned vector of width tebd_dim.

The one-hot vector of a type (n_types wide) — or, with ``use_econf_tebd``, the element's
electronic-configuration vector (:mod:`mlpot.models.deepmd.econf`, 118 wide; the rows are set from
the model's type_map by :func:`set_econf_inputs`) — feeds an embedding net of one layer per entry of
``neuron`` (default ``[tebd_dim]``), with DeePMD's layer rule (tanh, resnet skip when the width is
kept or doubled, no bias unless ``use_tebd_bias``). ``table()`` returns all embeddings at once,
plus one all-zero row (index ``n_types``) for padded neighbour slots ("virtual atoms"), so
``table()[types]`` is one gather with no loop.

Relabelling the types (permuting ``type_map``) together with the rows of the first weight matrix
permutes the embeddings alike, as long as the first layer has no resnet skip (tebd_dim not equal
to n_types or 2 n_types): the skip adds the one-hot vector itself, which does carry the order.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from mlpot.models.deepmd.econf import ECONF_DIM, econf_table
from mlpot.nn import MLPLayer

__all__ = ["TypeEmbedding", "set_econf_inputs"]


class TypeEmbedding(torch.nn.Module):
    """One-hot (or electronic-configuration) type -> (tebd_dim,) embedding.

    table() -> (n_types + 1, tebd_dim) in the module dtype, the last row zero (padding).
    forward(types (n,) int64, -1 or n_types = padding) -> (n, tebd_dim).
    use_econf_tebd: the input rows are the elements' configuration vectors, NaN until
    :meth:`set_type_map` is called (the model builder does it), so that a forgotten call cannot pass.
    """

    def __init__(self, n_types: int, neuron: Sequence[int] = (8,), *, activation_function: str = "tanh",
                 resnet_dt: bool = False, use_tebd_bias: bool = False, trainable: bool = True,
                 seed: Optional[int] = None, dtype: torch.dtype = torch.float64, use_econf_tebd: bool = False):
        super().__init__()
        self.n_types, self.use_econf_tebd = int(n_types), bool(use_econf_tebd)
        self.neuron = [int(n) for n in neuron]
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        layers, width = [], ECONF_DIM if self.use_econf_tebd else self.n_types
        for n_out in self.neuron:
            layers.append(MLPLayer(width, n_out, activation_function, resnet=True, resnet_dt=resnet_dt, bias=use_tebd_bias,
                                   trainable=trainable, dtype=dtype, generator=generator))
            width = n_out
        self.layers = torch.nn.ModuleList(layers)
        self.dim_out = width
        inputs = torch.full((self.n_types, ECONF_DIM), math.nan, dtype=dtype) if self.use_econf_tebd \
            else torch.eye(self.n_types, dtype=dtype)
        self.register_buffer("inputs", inputs, persistent=False)  # (n_types, width of the first layer)

    def set_type_map(self, type_map: Sequence[str]) -> None:
        """use_econf_tebd: the input rows of the elements of ``type_map`` (ConfigError for a type
        that is not an element); nothing otherwise."""
        if self.use_econf_tebd:
            if len(type_map) != self.n_types:
                raise ValueError(f"type_map has {len(type_map)} types, the type embedding {self.n_types}")
            self.inputs.copy_(torch.from_numpy(econf_table(type_map)))

    def table(self) -> torch.Tensor:
        """Embeddings of every type and a zero padding row, (n_types + 1, tebd_dim)."""
        x = self.inputs
        for layer in self.layers:
            x = layer(x)
        return torch.cat([x, x.new_zeros(1, x.shape[-1])], dim=0)

    def forward(self, types: torch.Tensor) -> torch.Tensor:
        index = torch.where(types < 0, torch.full_like(types, self.n_types), types)
        return self.table()[index]


def set_econf_inputs(module: torch.nn.Module, type_map: Sequence[str]) -> None:
    """Give every electronic-configuration type embedding inside ``module`` the rows of ``type_map``."""
    for sub in module.modules():
        if isinstance(sub, TypeEmbedding):
            sub.set_type_map(type_map)
