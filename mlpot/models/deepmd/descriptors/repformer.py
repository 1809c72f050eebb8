"""The repformer stack of DPA-2 (Zhang et al., npj Comput Mater 10, 293 (2024); DeePMD-kit 3.x).

Three representations per centre atom i and neighbour slot j (s = nsel slots, nearest first, any
type, within the repformer's own rcut): the atom features g1_i (g1_dim), the invariant pair
features g2_ij (g2_dim) and the equivariant pair vectors h2_ij (3). Start: g1 = act(input) (the
repinit output), g2 = act(W s~_ij + b) and h2 = R~_ij[1:4] from the normalised environment matrix
(``direct_dist``: r_ij / rcut and r_vec_ij / rcut instead). With gg1_ij = g1_j (message passing)
and switch w_ij (sw), each layer forms update terms, all from the layer's input:

* g1: [g1] + [act(W g1), ``g1_out_mlp``] + [conv, ``g1_out_conv``] + [act(W concat(...))] +
  [local attention, ``update_g1_has_attn``]; the concatenation holds g1 (unless g1_out_mlp), the
  convolution sum_j g2_ij ⊙ (W gg1_ij) (or (W g2_ij) ⊙ gg1_ij with g1_out_conv) weighted w_ij / s
  (smooth) or 1 / (1e-4 + n_i) over occupied slots, and the symmetrisations grrg (of g2) and drrd
  (of gg1): with H = h2^T X w / sqrt(s) (or / s without ``use_sqrt_nnei``; not smooth: 1/(1e-4 +
  sqrt(n_i)) or 1/(1e-4 + n_i) and no w), the flattened H[:, :axis]^T H / 3;
* g2 (all but the last layer): [g2, act(W g2)] + [W (g1_i ⊙ gg1_ij) w_ij, ``update_g2_has_g1g1``]
  + [LayerNorm(multi-head attention values), ``update_g2_has_attn``];
* h2 (all but the last layer): [h2] + [attention on h2, ``update_h2``].

Terms combine by ``update_style``: res_avg (u0 + u1 + ... + un) / sqrt(n + 1), res_incr
u0 + (u1 + ... + un) / sqrt(n), res_residual u0 + sum_k r_k ⊙ u_k with learned r_k (initialised
N(0, update_residual) or constant). The output: g1 of the last layer, and the rotation matrix
(H computed from the last g2, h2)^T, (n, g2_dim, 3).

Empty and excluded slots (``exclude_types``) carry no weight anywhere; with ``smooth`` their number
still enters the softmax denominators (the logit -20 of every empty slot), so a stack with attention
layers keeps all nsel slots; the others drop the trailing slots empty for every atom (the averages
still divide by nsel).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES, EDGE_INDEX
from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors.base import EnvMatrixDescriptor
from mlpot.models.deepmd.descriptors.env import environment_matrix, occupied_slots, select_neighbors
from mlpot.models.deepmd.descriptors.repformer_attention import (NeighborToAtomAttention, PairAttentionMap,
                                                                 PairAttentionValues, PairAttentionVectors)
from mlpot.nn import MLPLayer, gather_rows, get_activation, smooth_switch

__all__ = ["RepformerBlock", "RepformerLayer", "UPDATE_STYLES"]

UPDATE_STYLES = ("res_avg", "res_incr", "res_residual")
_EPSILON = 1e-4  # DeePMD-kit's protection of 1 / n_neighbours in the non-smooth averages


class LayerNorm(torch.nn.Module):
    """Layer norm over the last axis, (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, width: int, eps: float, trainable: bool, dtype: torch.dtype):
        super().__init__()
        self.eps = float(eps)
        self.weight = torch.nn.Parameter(torch.ones(width, dtype=dtype), requires_grad=trainable)
        self.bias = torch.nn.Parameter(torch.zeros(width, dtype=dtype), requires_grad=trainable)

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Slots(NamedTuple):
    """Per-slot tensors shared by the layers, each (n, s): ``mask`` (occupied), ``sw`` (switch, 0 on
    empty slots), and the slot weights of the two averages (0 on empty slots): ``moment`` of H
    (sw / sqrt(nsel) or sw / nsel when smooth, else 1 / (1e-4 + sqrt(n_i)) or 1 / (1e-4 + n_i)) and
    ``mean`` of the convolution (sw / nsel when smooth, else 1 / (1e-4 + n_i)). nsel counts every slot
    of the neighbour list, also trailing empty ones the block dropped."""

    mask: torch.Tensor
    sw: torch.Tensor
    moment: torch.Tensor
    mean: torch.Tensor


def slot_weights(mask, sw, n_slots: int, smooth: bool, sqrt_nnei: bool) -> Slots:
    """The :class:`Slots` of mask (n, s) bool and sw (n, s), for a list of ``n_slots`` (nsel) slots."""
    if smooth:
        return Slots(mask, sw, sw * (n_slots ** -0.5 if sqrt_nnei else 1.0 / n_slots), sw * (1.0 / n_slots))
    keep = mask.to(sw.dtype)
    count = keep.sum(-1, keepdim=True)
    mean = keep * (1.0 / (_EPSILON + count))
    return Slots(mask, sw, keep * (1.0 / (_EPSILON + torch.sqrt(count))) if sqrt_nnei else mean, mean)


def pair_moment(x, h2, weight) -> torch.Tensor:
    """H = h2^T X, averaged over the slots (module docstring): x (n, s, d), h2 (n, s, 3), weight
    (n, s) the ``moment`` slot weights -> (n, 3, d). The weights go on the small h2 (no pass over x)."""
    return torch.matmul((h2 * weight.unsqueeze(-1)).transpose(1, 2), x)


def symmetrize(x, h2, weight, axis: int) -> torch.Tensor:
    """grrg / drrd: H[:, :, :axis]^T H / 3 flattened, (n, axis * d)."""
    moment = pair_moment(x, h2, weight)
    return (torch.matmul(moment[..., :axis].transpose(1, 2), moment) / 3.0).reshape(x.shape[0], -1)


class RepformerLayer(torch.nn.Module):
    """One repformer layer: forward(g1 (n, g1_dim), gg1 (n, s, g1_dim) or None, g2 (n, s, g2_dim),
    h2 (n, s, 3), mask (n, s), sw (n, s)) -> (g1, g2, h2). ``update_pair``: False for the last layer."""

    def __init__(self, g1_dim: int, g2_dim: int, *, axis_neuron: int, update_pair: bool, options: dict,
                 dtype: torch.dtype, trainable: bool, generator: Optional[torch.Generator]):
        super().__init__()
        o = dict(options)
        self.axis, self.smooth, self.sqrt_nnei = int(axis_neuron), bool(o["smooth"]), bool(o["use_sqrt_nnei"])
        self.style, self.act = o["update_style"], get_activation(o["activation_function"])
        self.has_conv, self.has_grrg = bool(o["update_g1_has_conv"]), bool(o["update_g1_has_grrg"])
        self.has_drrd, self.has_attn = bool(o["update_g1_has_drrd"]), bool(o["update_g1_has_attn"])
        self.out_conv, self.out_mlp = bool(o["g1_out_conv"]), bool(o["g1_out_mlp"])
        self.update_pair = bool(update_pair)
        self.has_g1g1 = self.update_pair and bool(o["update_g2_has_g1g1"])
        self.has_g2_attn = self.update_pair and bool(o["update_g2_has_attn"])
        self.has_h2 = self.update_pair and bool(o["update_h2"])
        self.needs_neighbors = self.has_conv or self.has_drrd or self.has_attn or self.has_g1g1
        net = dict(trainable=trainable, dtype=dtype, generator=generator)
        residuals = {"g1": [g1_dim], "g2": [], "h2": []}  # widths of the learned residual weights, in order
        g1_in = (0 if self.out_mlp else g1_dim) + (g2_dim * self.axis if self.has_grrg else 0) \
            + (g1_dim * self.axis if self.has_drrd else 0) + (g2_dim if self.has_conv and not self.out_conv else 0)
        self.linear1 = MLPLayer(g1_in, g1_dim, None, **net)
        self.linear2 = MLPLayer(g2_dim, g2_dim, None, **net) if self.update_pair else None
        if self.update_pair:
            residuals["g2"].append(g2_dim)
        self.g1_self_mlp = MLPLayer(g1_dim, g1_dim, None, **net) if self.out_mlp else None
        if self.out_mlp:
            residuals["g1"].append(g1_dim)
        self.proj_g1g2 = None
        if self.has_conv:
            shape = (g2_dim, g1_dim) if self.out_conv else (g1_dim, g2_dim)
            self.proj_g1g2 = MLPLayer(*shape, None, bias=False, **net)
            if self.out_conv:
                residuals["g1"].append(g1_dim)
        self.proj_g1g1g2 = MLPLayer(g1_dim, g2_dim, None, bias=False, **net) if self.has_g1g1 else None
        if self.has_g1g1:
            residuals["g2"].append(g2_dim)
        self.attn2g_map = self.attn2_mh_apply = self.attn2_lm = self.attn2_ev_apply = None
        if self.has_g2_attn or self.has_h2:
            self.attn2g_map = PairAttentionMap(g2_dim, o["attn2_hidden"], o["attn2_nhead"], o["attn2_has_gate"],
                                               self.smooth, **net)
        if self.has_g2_attn:
            self.attn2_mh_apply = PairAttentionValues(g2_dim, o["attn2_nhead"], **net)
            self.attn2_lm = LayerNorm(g2_dim, o["ln_eps"], trainable and o["trainable_ln"], dtype)
            residuals["g2"].append(g2_dim)
        if self.has_h2:
            self.attn2_ev_apply = PairAttentionVectors(o["attn2_nhead"], **net)
            residuals["h2"].append(1)
        self.loc_attn = NeighborToAtomAttention(g1_dim, o["attn1_hidden"], o["attn1_nhead"], self.smooth, **net) \
            if self.has_attn else None
        if self.has_attn:
            residuals["g1"].append(g1_dim)
        if self.style == "res_residual":
            for name, widths in residuals.items():
                setattr(self, f"{name}_residual", torch.nn.ParameterList(
                    [self._residual(w, o["update_residual"], o["update_residual_init"], trainable, dtype, generator)
                     for w in widths]))

    @staticmethod
    def _residual(width, scale, init, trainable, dtype, generator):
        if init == "norm":
            value = torch.randn(width, generator=generator, dtype=torch.float64) * float(scale)
        else:
            value = torch.full((width,), float(scale), dtype=torch.float64)
        return torch.nn.Parameter(value.to(dtype), requires_grad=trainable)

    def _combine(self, terms: List[torch.Tensor], name: str) -> torch.Tensor:
        out = terms[0]
        if self.style == "res_avg":
            return sum(terms[1:], out) / len(terms) ** 0.5
        if self.style == "res_incr":
            scale = (len(terms) - 1) ** -0.5 if len(terms) > 1 else 0.0
            return out + scale * sum(terms[1:], torch.zeros_like(out))
        for weight, term in zip(getattr(self, f"{name}_residual"), terms[1:]):
            out = out + weight * term
        return out

    def _conv(self, gg1, g2, weight):
        """sum_j g2_ij ⊙ W gg1_ij (or W g2_ij ⊙ gg1_ij), averaged with the ``mean`` slot weights
        (n, s): (n, g2_dim or g1_dim). W has no bias, so the weights go on g2 (the narrower side)."""
        pair = g2 * weight.unsqueeze(-1)
        if self.out_conv:
            return (self.proj_g1g2(pair) * gg1).sum(1)
        return (pair * self.proj_g1g2(gg1)).sum(1)

    def forward(self, g1, gg1, g2, h2, slots: Slots) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask, sw = slots.mask, slots.sw
        g1_terms, concat = [g1], ([] if self.out_mlp else [g1])
        if self.out_mlp:
            g1_terms.append(self.act(self.g1_self_mlp(g1)))
        g2_terms, h2_terms = [g2], [h2]
        if self.update_pair:
            g2_terms.append(self.act(self.linear2(g2)))
            if self.has_g1g1:
                weight = sw if self.smooth else mask.to(g1.dtype)  # sw is 0 on empty slots
                g2_terms.append(self.proj_g1g1g2(g1.unsqueeze(1) * (gg1 * weight.unsqueeze(-1))))
            if self.attn2g_map is not None:
                weights = self.attn2g_map(g2, h2, mask, sw)
                if self.has_g2_attn:
                    g2_terms.append(self.attn2_lm(self.attn2_mh_apply(weights, g2)))
                if self.has_h2:
                    h2_terms.append(self.attn2_ev_apply(weights, h2))
        if self.has_conv:
            (g1_terms if self.out_conv else concat).append(self._conv(gg1, g2, slots.mean))
        if self.has_grrg:
            concat.append(symmetrize(g2, h2, slots.moment, self.axis))
        if self.has_drrd:
            concat.append(symmetrize(gg1, h2, slots.moment, self.axis))
        g1_terms.append(self.act(self.linear1(torch.cat(concat, dim=-1))))
        if self.has_attn:
            g1_terms.append(self.loc_attn(g1, gg1, mask, sw))
        if self.update_pair:
            g2, h2 = self._combine(g2_terms, "g2"), self._combine(h2_terms, "h2")
        return self._combine(g1_terms, "g1"), g2, h2


class RepformerBlock(EnvMatrixDescriptor):
    """The repformer stack with its own neighbour list and env statistics (davg/dstd (n_types, 4)).

    forward(batch, vectors (n_edges, 3) Å, g1 (n_atoms, g1_dim)) -> (g1 (n_atoms, g1_dim),
    rot (n_atoms, g2_dim, 3)). ``options``: the repformer keys (``keys_dpa2.DPA2_REPFORMER``) with
    ``smooth`` added.
    """

    mixed_types = True

    def __init__(self, n_types: int, options: dict, *, exclude_types=(), env_protection: float = 0.0,
                 dtype: torch.dtype = torch.float64, trainable: bool = True, generator=None,
                 path: str = "model/descriptor/repformer"):
        super().__init__()
        o = dict(options)
        if o["update_style"] not in UPDATE_STYLES:
            raise ConfigError(f"expected one of {', '.join(UPDATE_STYLES)}, got {o['update_style']!r}",
                              key=f"{path}/update_style")
        if o["update_residual_init"] not in ("norm", "const"):
            raise ConfigError(f"expected 'norm' or 'const', got {o['update_residual_init']!r}",
                              key=f"{path}/update_residual_init")
        nsel = int(o["nsel"])
        self._init_env(n_types, o["rcut"], o["rcut_smth"], [nsel] + [0] * (n_types - 1), env_protection,
                       o["set_davg_zero"], exclude_types, dtype)
        self.sel = [nsel]
        self.g1_dim, self.g2_dim = int(o["g1_dim"]), int(o["g2_dim"])
        self.direct_dist, self.smooth, self.sqrt_nnei = bool(o["direct_dist"]), bool(o["smooth"]), bool(o["use_sqrt_nnei"])
        self.act = get_activation(o["activation_function"], key=f"{path}/activation_function")
        o["ln_eps"] = 1e-5 if o["ln_eps"] is None else float(o["ln_eps"])
        self.g2_embd = MLPLayer(1, self.g2_dim, None, trainable=trainable, dtype=dtype, generator=generator)
        n_layers = int(o["nlayers"])
        self.layers = torch.nn.ModuleList(
            RepformerLayer(self.g1_dim, self.g2_dim, axis_neuron=o["axis_neuron"], update_pair=index < n_layers - 1,
                           options=o, dtype=dtype, trainable=trainable, generator=generator)
            for index in range(n_layers))
        # with smooth, the empty slots enter the softmax denominators of the attention layers (logit -20)
        self.drops_empty_slots = not (self.smooth and any(layer.attn2g_map is not None or layer.has_attn
                                                          for layer in self.layers))

    def raw_environment(self, batch, vectors) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw env matrix (n_atoms, nsel, 4), nlist (n_atoms, nsel)); excluded pairs are empty slots."""
        nlist = select_neighbors(batch, vectors, self.rcut, self.sel, mixed_types=True)
        if self.has_excluded_pairs:
            types = batch[ATOM_TYPES]
            edge_types = torch.cat([types[batch[EDGE_INDEX][1]], types.new_zeros(1)])
            neighbor_types = edge_types[torch.where(nlist >= 0, nlist, torch.full_like(nlist, vectors.shape[0]))]
            nlist = torch.where(self.excluded_pairs[types.unsqueeze(1), neighbor_types], -1, nlist)
        env = environment_matrix(vectors, nlist, self.rcut, self.rcut_smth, env_protection=self.env_protection)
        return env, nlist

    def _pairs(self, batch, vectors, raw=None):
        """(g2 input (n, s, 1), h2 (n, s, 3), mask, sw, neighbour atom per slot (0 on empty slots));
        ``raw``: the (env, nlist) of ``raw_environment`` when the caller has it already."""
        env, nlist = raw if raw is not None else self.raw_environment(batch, vectors)
        types = batch[ATOM_TYPES]
        mask = nlist >= 0
        env = (env.to(self.davg.dtype) - self.davg[types].unsqueeze(1)) / self.dstd[types].unsqueeze(1)
        vectors = vectors.to(env.dtype)
        n_edges = vectors.shape[0]
        slot_edge = torch.where(mask, nlist, torch.full_like(nlist, n_edges))
        padded = torch.cat([vectors, vectors.new_full((1, 3), 2.0 * self.rcut + 1.0)])
        slot_vectors = gather_rows(padded, slot_edge)  # (n, s, 3), beyond rcut on empty slots
        x, y, z = slot_vectors.unbind(-1)
        distance = torch.sqrt(x * x + y * y + z * z)
        sw = torch.where(mask, smooth_switch(distance, self.rcut_smth, self.rcut), torch.zeros_like(distance))
        if self.direct_dist:
            keep = mask.unsqueeze(-1).to(env.dtype)
            g2_in, h2 = distance.unsqueeze(-1) * keep / self.rcut, slot_vectors * keep / self.rcut
        else:
            g2_in, h2 = env[..., :1], env[..., 1:]
        # empty slots read atom 0 (as in DeePMD-kit); every use of a neighbour's g1 is masked
        slot_atom = torch.cat([batch[EDGE_INDEX][1], types.new_zeros(1)])[slot_edge]
        return g2_in, h2, mask, sw, slot_atom

    def forward(self, batch, vectors, g1, raw=None) -> Tuple[torch.Tensor, torch.Tensor]:
        g2_in, h2, mask, sw, slot_atom = self._pairs(batch, vectors, raw)
        n_slots = mask.shape[1]
        if self.drops_empty_slots:  # trailing slots empty for every atom add nothing: drop them
            kept = occupied_slots(mask)
            g2_in, h2, mask, sw, slot_atom = (x[:, :kept] for x in (g2_in, h2, mask, sw, slot_atom))
        slots = slot_weights(mask, sw, n_slots, self.smooth, self.sqrt_nnei)
        g1 = self.act(g1)
        g2 = self.act(self.g2_embd(g2_in))
        for layer in self.layers:
            gg1 = gather_rows(g1, slot_atom) if layer.needs_neighbors else None
            g1, g2, h2 = layer(g1, gg1, g2, h2, slots)
        rot = pair_moment(g2, h2, slots.moment).transpose(1, 2)
        return g1, rot
