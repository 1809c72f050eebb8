"""se_atten (alias dpa1) and se_atten_v2: attention-based descriptor with type embedding, spec deepmd.md §2.6.

Neighbours are not split by type: every atom keeps its ``sel`` nearest neighbours of any type
(``mixed_types``), and types enter through a learned type embedding (``mlpot.models.deepmd.type_embedding``).
With R~ the normalised environment matrix (n_atoms, sel, 4), s~ = R~[..., 0], sw the switch w(r)
(0 on empty slots) and tebd(t) the type embeddings:

* embedding, ``tebd_input_mode``
  - ``concat``: G_ij = N([s~_ij, tebd(t_j), tebd(t_i)]) (tebd(t_i) dropped with ``type_one_side``);
  - ``strip``:  G_ij = N_s(s~_ij) ⊙ (1 + N_t([tebd(t_j), tebd(t_i)]) [· sw_ij when smooth]);
    N_t depends only on the type pair, so it is evaluated once per pair and gathered.
* ``attn_layer`` gated self-attention layers over the neighbours of each atom (one head, width
  ``attn``): q, k, v from one linear map of G, L2-normalised when ``normalize`` (x / max(|x|,
  ``normalize_eps``): 1e-12 as DeePMD-kit PT, 1e-6 as its TF backend), q scaled by
  (attn · scaling_factor)^-1/2 or by ``temperature``; logits l = q k^T. Non-smooth: empty keys
  get -inf; smooth (``smooth_type_embedding``, always on in v2): l -> (l + 20) sw_j sw_k - 20 and the
  softmax weights are multiplied by sw_j sw_k again (``tf_smooth_switch``, DeePMD-kit TF graphs: sw
  is TF's clip(1 - (1 - rcut_smth s~raw)^3, 0, 1), ``tf_switch``, also in the strip embedding). Empty query rows are zeroed; with
  ``attn_dotr`` the weights are multiplied by r̂_j · r̂_k; with ``attn_mask`` the diagonal weights are
  then set to 0 (a neighbour does not attend to itself; the rows are not renormalised, as in
  DeePMD-kit's TensorFlow backend, the only one that builds it). G <- LayerNorm(G + out_proj(weights v)).
* D_i = (1/N_c^2) G^T R~ R~^T G<  (N_c = sel, padded slots included [COMPAT], M2 = axis_neuron
  columns), flattened, with tebd(t_i) appended when ``concat_output_tebd``; the equivariant block
  (M1, 3) is returned for dipole/polar fittings.

Smoothness at rcut needs ``smooth_type_embedding`` (always on in v2) and, in ``concat`` mode,
``set_davg_zero`` (the se_atten default): otherwise a neighbour crossing rcut changes G by a jump.

Deviation from DeePMD-kit: an empty (or excluded) slot takes the zero "virtual atom" type
embedding, whereas DeePMD-kit gathers the type of atom 0 of the frame there. The two agree whenever
the result does not depend on that value (set_davg_zero, or strip mode with smooth on, the
defaults of se_atten and se_atten_v2); the DeePMD-kit choice is not invariant to atom order.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES
from mlpot.errors import ConfigError
from mlpot.models.deepmd.keys import SE_ATTEN, SE_ATTEN_V2
from mlpot.models.sections import read_section
from mlpot.models.deepmd.descriptors.base import DESCRIPTORS, MixedTypesDescriptor
from mlpot.models.deepmd.descriptors.env import occupied_slots
from mlpot.models.deepmd.type_embedding import TypeEmbedding
from mlpot.nn import EmbeddingNet, MLPLayer, gather_rows, map_row_chunks

__all__ = ["DescriptorSeAtten", "DescriptorSeAttenV2", "NeighborAttentionLayer"]

ATTENTION_SHIFT = 20.0  # the logit shift of the smooth attention (DeePMD-kit's attnw_shift)


class NeighborAttentionLayer(torch.nn.Module):
    """One gated self-attention layer over the neighbour slots of each atom, with residual + post-LayerNorm.

    forward(g (n_atoms, sel, M1), mask (n_atoms, sel) bool, sw (n_atoms, sel), directions
    (n_atoms, sel, 3) unit vectors or zeros) -> (n_atoms, sel, M1). No units (features).
    ``mask_diagonal`` (DeePMD ``attn_mask``) zeroes the weight of each slot on itself.
    """

    def __init__(self, width: int, hidden: int, *, normalize: bool = True, scaling_factor: float = 1.0,
                 temperature: Optional[float] = None, smooth: bool = False, dotr: bool = True,
                 mask_diagonal: bool = False, trainable_ln: bool = True, ln_eps: float = 1e-5, trainable: bool = True,
                 normalize_eps: float = 1e-12, dtype: torch.dtype = torch.float64,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.normalize_eps = float(normalize_eps)
        self.hidden, self.normalize, self.smooth, self.dotr = int(hidden), bool(normalize), bool(smooth), bool(dotr)
        self.mask_diagonal = bool(mask_diagonal)
        self.scale = float(temperature) if temperature is not None else (self.hidden * float(scaling_factor)) ** -0.5
        self.in_proj = MLPLayer(width, 3 * self.hidden, None, trainable=trainable, dtype=dtype, generator=generator)
        self.out_proj = MLPLayer(self.hidden, width, None, trainable=trainable, dtype=dtype, generator=generator)
        self.ln_eps = float(ln_eps)
        self.ln_weight = torch.nn.Parameter(torch.ones(width, dtype=dtype), requires_grad=trainable and trainable_ln)
        self.ln_bias = torch.nn.Parameter(torch.zeros(width, dtype=dtype), requires_grad=trainable and trainable_ln)

    def forward(self, g, mask, sw, directions):
        q, k, v = self.in_proj(g).chunk(3, dim=-1)
        if self.normalize:
            q, k, v = (torch.nn.functional.normalize(x, dim=-1, eps=self.normalize_eps) for x in (q, k, v))
        logits = torch.matmul(q * self.scale, k.transpose(1, 2))  # (n_atoms, sel_query, sel_key)
        pair_sw = sw.unsqueeze(2) * sw.unsqueeze(1)
        query_mask = mask.unsqueeze(2)
        if self.smooth:
            logits = (logits + ATTENTION_SHIFT) * pair_sw - ATTENTION_SHIFT
        else:
            # -inf on empty keys; empty query rows are left finite (they are zeroed below), so an atom
            # without neighbours gives no nan in the softmax or its gradient
            logits = logits.masked_fill(~mask.unsqueeze(1) & query_mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1).masked_fill(~query_mask, 0.0)
        if self.smooth:
            weights = weights * pair_sw
        if self.dotr:
            weights = weights * torch.matmul(directions, directions.transpose(1, 2))
        if self.mask_diagonal:  # after softmax, switch and dotr, like DeePMD-kit (TF _scaled_dot_attn)
            weights = weights * (1.0 - torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device))
        out = g + self.out_proj(torch.matmul(weights, v))
        return torch.nn.functional.layer_norm(out, out.shape[-1:], self.ln_weight, self.ln_bias, self.ln_eps)


class DescriptorSeAtten(MixedTypesDescriptor):
    """se_atten / dpa1 descriptor (see the module docstring).

    forward(batch, vectors (n_edges, 3) Å) -> (D (n_atoms, M1*M2 [+ tebd_dim]), rot (n_atoms, M1, 3)).
    Buffers davg/dstd (n_types, 4) per centre type as in se_e2_a; ``sel`` is one int (a list is summed).
    """

    def __init__(self, n_types: int, sel, rcut: float = 6.0, rcut_smth: float = 0.5, neuron=(10, 20, 40),
                 axis_neuron: int = 4, activation_function: str = "tanh", resnet_dt: bool = False,
                 type_one_side: bool = False, trainable: bool = True, seed: Optional[int] = None, exclude_types=(),
                 env_protection: float = 0.0, set_davg_zero: bool = True, tebd_dim: int = 8,
                 tebd_input_mode: str = "concat", attn: int = 128, attn_layer: int = 2, attn_dotr: bool = True,
                 scaling_factor: float = 1.0, normalize: bool = True, temperature: Optional[float] = None,
                 attn_mask: bool = False, concat_output_tebd: bool = True, trainable_ln: bool = True,
                 ln_eps: Optional[float] = None, use_tebd_bias: bool = False, use_econf_tebd: bool = False,
                 smooth_type_embedding: bool = False, tebd_activation: str = "linear", normalize_eps: float = 1e-12,
                 tf_smooth_switch: bool = False,
                 dtype: torch.dtype = torch.float64, config: Optional[Dict[str, Any]] = None,
                 path: str = "model/descriptor", own_type_embedding: bool = True):
        super().__init__()
        nsel = int(sum(sel)) if isinstance(sel, (list, tuple)) else int(sel)
        if nsel <= 0:
            raise ConfigError(f"must be a positive int, got {sel!r}", key=f"{path}/sel")
        # one mixed section: the per-type bookkeeping of the base class sees sel as [nsel, 0, ...]
        self._init_env(n_types, rcut, rcut_smth, [nsel] + [0] * (n_types - 1), env_protection, set_davg_zero, exclude_types, dtype)
        self.sel = [nsel]
        if tebd_input_mode not in ("concat", "strip"):
            raise ConfigError(f"expected 'concat' or 'strip', got {tebd_input_mode!r}", key=f"{path}/tebd_input_mode")
        self.neuron = [int(n) for n in neuron]
        self.m1, self.m2 = self.neuron[-1], int(axis_neuron)
        if self.m2 > self.m1:
            raise ConfigError(f"axis_neuron ({self.m2}) must not exceed neuron[-1] ({self.m1})", key=f"{path}/axis_neuron")
        self.tebd_input_mode, self.type_one_side = tebd_input_mode, bool(type_one_side)
        self.smooth, self.concat_output_tebd = bool(smooth_type_embedding), bool(concat_output_tebd)
        self.normalize_eps, self.tf_smooth_switch = float(normalize_eps), bool(tf_smooth_switch)
        seed = None if seed is None else int(seed)
        # DeePMD-kit's PyTorch type embedding of dpa1 has a linear layer (its TypeEmbedNet); its TF
        # one (model/type_embedding, read from .pb graphs) the section's activation, tanh by default
        # without own_type_embedding (a block of DPA-2) the caller owns the embedding and calls _atom_rows
        self.type_embedding = TypeEmbedding(n_types, [int(tebd_dim)], activation_function=tebd_activation,
                                            use_tebd_bias=use_tebd_bias, use_econf_tebd=use_econf_tebd, trainable=trainable,
                                            seed=None if seed is None else seed + 2, dtype=dtype) \
            if own_type_embedding else None
        tebd_width = int(tebd_dim) * (1 if self.type_one_side else 2)
        net = dict(activation=activation_function, resnet_dt=resnet_dt, trainable=trainable, dtype=dtype)
        if tebd_input_mode == "concat":
            self.embedding = EmbeddingNet(1 + tebd_width, self.neuron, seed=seed, **net)
            self.type_pair_embedding = None
        else:
            self.embedding = EmbeddingNet(1, self.neuron, seed=seed, **net)
            self.type_pair_embedding = EmbeddingNet(tebd_width, self.neuron, seed=None if seed is None else seed + 1, **net)
        generator = None if seed is None else torch.Generator().manual_seed(seed + 3)
        self.attention = torch.nn.ModuleList(
            NeighborAttentionLayer(self.m1, attn, normalize=normalize, scaling_factor=scaling_factor, temperature=temperature,
                                   smooth=self.smooth, dotr=attn_dotr, mask_diagonal=attn_mask, trainable_ln=trainable_ln,
                                   ln_eps=1e-5 if ln_eps is None else ln_eps, normalize_eps=normalize_eps, trainable=trainable,
                                   dtype=dtype, generator=generator)
            for _ in range(int(attn_layer))
        )
        self.dim_out = self.m1 * self.m2 + (int(tebd_dim) if self.concat_output_tebd else 0)
        self.dim_rot = self.m1
        self.config = dict(config or {})
        self.compressed = False  # True: embedding is a QuinticTable (mlpot.models.deepmd.compression)

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_section(section, path, SE_ATTEN, "SeAttenSection")
        values.pop("type")
        stripped, compressible = values.pop("stripped_type_embedding"), values.pop("compressible")
        if stripped is None:  # examples/water/hybrid's older spelling of the compressible (strip) input
            stripped = compressible
        if stripped is not None:  # deprecated DeePMD-kit spelling of tebd_input_mode
            values["tebd_input_mode"] = "strip" if stripped else "concat"
        return cls._build(values, n_types, dtype, section, path)

    def _embedding(self, env, types, neighbor_types, sw, table):
        """G (n_atoms, sel, M1) from s~ and the type embeddings (tebd_input_mode)."""
        n_atoms, nsel, _ = env.shape
        if self.tebd_input_mode == "concat":
            width = table.shape[-1]
            blocks = self.embedding.split_input([1, width] + ([] if self.type_one_side else [width]))
            if blocks is not None:  # type terms of the first layer per type, gathered per slot
                z = env[..., :1] * blocks[0][0] + gather_rows(table @ blocks[1], neighbor_types)
                if not self.type_one_side:
                    z = z + gather_rows(table @ blocks[2], types).unsqueeze(1)
                return self.embedding.forward_preactivated(z)
            parts = [env[..., :1], gather_rows(table, neighbor_types)]
            if not self.type_one_side:
                parts.append(gather_rows(table, types).unsqueeze(1).expand(n_atoms, nsel, -1))
            return self.embedding(torch.cat(parts, dim=-1))
        g_radial = self.embedding(env[..., :1])
        pair_values = self.type_pair_values(table)
        if self.type_one_side:
            g_types = gather_rows(pair_values, neighbor_types)
        else:
            g_types = gather_rows(pair_values, neighbor_types * self.n_types + types.unsqueeze(1))
        if self.smooth:
            g_types = g_types * sw.unsqueeze(-1)
        return g_radial * g_types + g_radial

    def type_pair_values(self, table: torch.Tensor) -> torch.Tensor:
        """strip mode: the type-pair net on every (neighbour type incl. padding[, centre type]) pair,
        (n_types + 1 [x n_types], M1), rows neighbour_type [* n_types + centre_type]; table: type embeddings."""
        if self.type_one_side:
            return self.type_pair_embedding(table)
        n_rows = table.shape[0]
        pairs = torch.cat([table.unsqueeze(1).expand(n_rows, self.n_types, -1),
                           table[: self.n_types].unsqueeze(0).expand(n_rows, self.n_types, -1)], dim=-1)
        return self.type_pair_embedding(pairs).reshape(n_rows * self.n_types, -1)

    def _tabulated_contraction(self, env, sw, neighbor_types, types) -> torch.Tensor:
        """R~^T G (n, 4, M1) of a compressed strip descriptor without materialising G.

        G_k = N_s(s~_k) ⊙ (1 + w_k N_t[c_k]) with c_k the slot's type class (neighbour type, padding =
        n_types; with the centre type unless type_one_side) and w = sw (smooth) or 1, so
        R~^T G = sum_k R~_k^T N_s(s~_k) + sum_c (sum_{k in c} w_k R~_k^T N_s(s~_k)) ⊙ N_t[c]: one
        table contraction (``QuinticTable.contract``) against [R~, w R~ 1(c_k = c) for every c].
        """
        n_atoms, nsel, width = env.shape
        classes = self.n_types + 1
        onehot = (neighbor_types.unsqueeze(-1) == torch.arange(classes, device=env.device)).to(env.dtype)
        weighted = env * sw.unsqueeze(-1) if self.smooth else env
        left = torch.cat([env.unsqueeze(2), weighted.unsqueeze(2) * onehot.unsqueeze(-1)], dim=2)
        out = self.embedding.contract(env[..., 0], left.reshape(n_atoms, nsel, (classes + 1) * width))
        out = out.view(n_atoms, classes + 1, width, self.m1)
        pair = self.type_pair_table  # rows: class [* n_types + centre type]
        if self.type_one_side:
            per_class = pair.unsqueeze(0)  # (1, classes, M1)
        else:
            per_class = pair.view(classes, self.n_types, self.m1).index_select(1, types).transpose(0, 1)
        return out[:, 0] + (out[:, 1:] * per_class.unsqueeze(2)).sum(1)

    def _atom_rows(self, env, mask, sw, neighbor_types, types, table) -> Tuple[torch.Tensor, torch.Tensor]:
        """(D without tebd (n, M1*M2), A = R~^T G / N_c (n, 4, M1)) of n centre atoms; rows independent.

        Without attention layers a slot with a zero env row adds nothing to R~^T G: the trailing slots
        empty for every atom are dropped when their rows are zero (davg 0 or excluded; N_c stays sel)."""
        if not self.attention:
            kept = occupied_slots(mask)
            if kept < mask.shape[1] and bool((env[:, kept:] == 0).all()):
                env, mask, sw, neighbor_types = (x[:, :kept] for x in (env, mask, sw, neighbor_types))
        if self.compressed:  # strip, no attention layer: the table fused with R~^T G
            a_matrix = self._tabulated_contraction(env, sw, neighbor_types, types) / self.sel[0]
        else:
            g = self._embedding(env, types, neighbor_types, sw, table)
            # empty slots (env 0) get a unit stand-in, zeroed after: the norm's second derivative at 0
            # is nan (Hessians), the values are those of normalising the zeros
            empty = ~mask.unsqueeze(-1)
            directions = torch.nn.functional.normalize(env[..., 1:4].masked_fill(empty, 1.0), dim=-1, eps=self.normalize_eps).masked_fill(empty, 0.0)
            for layer in self.attention:
                g = layer(g, mask, sw, directions)
            a_matrix = torch.matmul(env.transpose(1, 2), g) / self.sel[0]  # (n_atoms, 4, M1)
        descriptor = torch.matmul(a_matrix.transpose(1, 2), a_matrix[:, :, : self.m2]).flatten(1)
        return descriptor, a_matrix

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        types = batch[ATOM_TYPES]
        env, mask, sw, neighbor_types = self.mixed_environment(batch, vectors)
        if self.tf_smooth_switch:
            sw = self.tf_switch(env, mask, types)
        table = self.type_embedding.table()
        # inference inside mlpot.nn.atom_chunks: the sel x sel attention graphs are kept (and
        # recomputed in the backward pass) one chunk of atoms at a time
        descriptor, a_matrix = map_row_chunks(self._atom_rows, (env, mask, sw, neighbor_types, types), table,
                                               module=self)
        if self.concat_output_tebd:
            descriptor = torch.cat([descriptor, gather_rows(table, types)], dim=-1)
        return descriptor, a_matrix[:, 1:4, :].transpose(1, 2)


    def tf_switch(self, env: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """DeePMD-kit TF's weight of the smooth attention (n_atoms, sel): clip(1 - (1 - rcut_smth s)^3,
        0, 1) with s = s(r) the first column of the env matrix before normalisation (1/Å), 0 on
        empty slots; it replaces the envelope w(r) when ``tf_smooth_switch`` (TF graphs)."""
        raw = env[..., 0] * self.dstd[types, :1] + self.davg[types, :1]
        uu = 1.0 - self.rcut_smth * raw
        return (1.0 - uu * uu * uu).clamp(0.0, 1.0) * mask.to(env.dtype)

    def vacuum_descriptor(self) -> torch.Tensor:
        """D of an atom without neighbours per type, (n_types, dim_out): zero but for the appended
        tebd(t_i) (DeePMD-kit TF keeps the type embedding in the vacuum input of ``atom_ener``)."""
        table = self.type_embedding.table()[: self.n_types]
        zeros = table.new_zeros(self.n_types, self.m1 * self.m2)
        return torch.cat([zeros, table], dim=-1) if self.concat_output_tebd else zeros


class DescriptorSeAttenV2(DescriptorSeAtten):
    """se_atten_v2: se_atten with ``tebd_input_mode = "strip"`` and smooth type embedding, davg not forced to 0."""

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_section(section, path, SE_ATTEN_V2, "SeAttenV2Section")
        values.pop("type")
        if values["tebd_input_mode"] != "strip":
            raise ConfigError("se_atten_v2 always uses 'strip' (use se_atten for 'concat')", key=f"{path}/tebd_input_mode")
        values["smooth_type_embedding"] = True
        return cls._build(values, n_types, dtype, section, path)


