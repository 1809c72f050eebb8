"""Update rules U of the fixed-point map p = p0 + U(f[p, mu]) (spec mace_scf.md §2.6).

Inputs of every rule: normalised field features f (n, n_widths, D_f) in the channel layout, the
mixed backbone features h (n, C, D) (MACE-SCF's ``all_layer_feats``), the species (n,), the
edge geometry (many-body rules). Output: the density change (n, (L+1)^2) in stored order.

``OneBodyVariableUpdate``: m = Emb(f, h, Z); s_c = sum_l w_lc <h_c,l, m_c,l>; s' = N(s);
g = h * s'; dp = per-species linear(g). Embeddings (``POTENTIAL_EMBEDDINGS``):
``LinearPotentialEmbedding`` m = W_Z f; ``BiasedLinearPotentialEmbedding`` (default) adds Lin(h);
``TanhPotentialEmbedding`` squashes f at 5 log-spaced scales in [1, 10] first (scalars by tanh,
vectors by tanh of their norm, which keeps them equivariant; the original applies tanh to every
component) then W_Z, plus Lin(h). Nonlinearities (``NONLINEARITIES``): ``NoNonLinearity``
(identity: dp is affine in f, a learned local softness) and ``MLPNonLinearity`` (C -> 64 -> 64 -> C, SiLU).
``ManyBodyUpdate``: the embedding is passed through one equivariant convolution over the
neighbour graph and added back (MACE-SCF's default ``AdditiveFieldMixer``) before the same
products, so dp_i depends on the neighbours' features.
"""

from __future__ import annotations

from typing import Optional

import torch

from mlpot.models.fixed_point.channels import ChannelLinear, channel_dot, channels_to_density
from mlpot.models.fixed_point.message import EdgeGeometry, EquivariantConvolution
from mlpot.nn import Registry, gather_rows

__all__ = ["POTENTIAL_EMBEDDINGS", "NONLINEARITIES", "UPDATES", "OneBodyVariableUpdate", "ManyBodyUpdate"]


class LinearPotentialEmbedding(torch.nn.Module):
    """m = W_Z f: (n, n_widths, D) -> (n, C, D)."""

    biased = False
    affine = True  # m is affine in f

    def __init__(self, n_widths: int, channels: int, n_species: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.field = ChannelLinear(n_widths, channels, 1, n_species, dtype=dtype)
        self.hidden = ChannelLinear(channels, channels, 1, dtype=dtype) if self.biased else None

    def squash(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def forward(self, features, hidden, species):
        m = self.field(self.squash(features), species)
        return m + self.hidden(hidden) if self.hidden is not None else m


class BiasedLinearPotentialEmbedding(LinearPotentialEmbedding):
    """m = W_Z f + Lin(h)."""

    biased = True


class TanhPotentialEmbedding(LinearPotentialEmbedding):
    """m = W_Z squash(f) + Lin(h), squash at scales w_j = 10^(j/4), j = 0..4 (module docstring)."""

    biased = True
    affine = False
    scales = tuple(10.0 ** (j / 4.0) for j in range(5))

    def __init__(self, n_widths: int, channels: int, n_species: int, dtype: torch.dtype = torch.float64):
        super().__init__(n_widths * len(self.scales), channels, n_species, dtype)

    def squash(self, features: torch.Tensor) -> torch.Tensor:
        blocks = []
        for scale in self.scales:  # five scales, not atoms
            scalar = torch.tanh(features[:, :, :1] / scale)
            if features.shape[-1] == 1:
                blocks.append(scalar)
                continue
            vector = features[:, :, 1:]
            norm = torch.sqrt((vector * vector).sum(-1, keepdim=True) + 1e-24) / scale
            blocks.append(torch.cat([scalar, vector * (torch.tanh(norm) / norm / scale)], dim=-1))
        return torch.cat(blocks, dim=1)


class NoNonLinearity(torch.nn.Module):
    affine = True

    def __init__(self, channels: int, dtype: torch.dtype = torch.float64):
        super().__init__()

    def forward(self, s):
        return s


class MLPNonLinearity(torch.nn.Module):
    """C -> 64 -> 64 -> C with SiLU."""

    def __init__(self, channels: int, dtype: torch.dtype = torch.float64, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(channels, hidden, dtype=dtype), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden, dtype=dtype), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, channels, dtype=dtype))

    affine = False

    def forward(self, s):
        return self.net(s)


POTENTIAL_EMBEDDINGS: Registry[type] = Registry("potential embedding")
POTENTIAL_EMBEDDINGS.register("BiasedLinearPotentialEmbedding", BiasedLinearPotentialEmbedding, ["biased_linear"])
POTENTIAL_EMBEDDINGS.register("LinearPotentialEmbedding", LinearPotentialEmbedding, ["linear"])
POTENTIAL_EMBEDDINGS.register("TanhPotentialEmbedding", TanhPotentialEmbedding, ["tanh"])
NONLINEARITIES: Registry[type] = Registry("nonlinearity")
NONLINEARITIES.register("NoNonLinearity", NoNonLinearity, ["none", "identity"])
NONLINEARITIES.register("MLPNonLinearity", MLPNonLinearity, ["mlp"])


class OneBodyVariableUpdate(torch.nn.Module):
    """dp_i = U(f_i, h_i, Z_i) (module docstring). Sizes: n_widths receiver widths, channels C of
    h, n_species, density_max_l L of the output density."""

    many_body = False

    def __init__(self, n_widths: int, channels: int, n_species: int, density_max_l: int,
                 potential_embedding_cls: str = "BiasedLinearPotentialEmbedding",
                 nonlinearity_cls: str = "NoNonLinearity", dtype: torch.dtype = torch.float64, **_):
        super().__init__()
        self.embedding = POTENTIAL_EMBEDDINGS.get(potential_embedding_cls, key="fixedpoint_update_config.potential_embedding_cls")(
            n_widths, channels, n_species, dtype)
        self.nonlinearity = NONLINEARITIES.get(nonlinearity_cls, key="fixedpoint_update_config.nonlinearity_cls")(channels, dtype)
        self.product_weights = torch.nn.Parameter(torch.ones(2, channels, dtype=dtype))
        self.density_max_l = int(density_max_l)
        # small output so the initial update is a gentle perturbation of the local density
        self.out = ChannelLinear(channels, 1, 1, n_species, dtype=dtype, scale=0.1)
        # divisors of h per l (l = 0, l = 1) inside the update: ones until the data statistics set
        # them (``statistics.update_feature_norms``); the readouts see h itself
        self.register_buffer("hidden_norms", torch.ones(2, dtype=dtype))

    @torch.no_grad()
    def physical_signs(self) -> None:
        """Make the weights' signs give a physical linear response for any h: dq_i/d(V + mu) <= 0
        (softness) and dd_i/dG <= 0 (polarisability), i.e. W_Z >= 0, product weights >= 0, output
        weights <= 0 (data initialisation, ``statistics.update_feature_norms``). With random signs
        (MACE-SCF's init) the per-atom responses cancel in a frame's Fermi response and feed the
        Coulomb field back positively, which no mixing converges."""
        self.embedding.field.weight.abs_()
        self.product_weights.abs_()
        self.out.weight.copy_(-self.out.weight.abs())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "hidden_norms", torch.ones_like(self.hidden_norms))  # models saved before it existed
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def affine_in_features(self) -> bool:
        """dp is affine in the features f (affine embedding, no nonlinearity; the many-body
        convolution is linear): d dp / d f, hence the Fukui slope d dp_00 / d mu, does not depend on
        the density or mu, and a constant-charge SCF computes it once (``solver.py``)."""
        return bool(self.embedding.affine and self.nonlinearity.affine)

    def affine_form(self, hidden: torch.Tensor, species: torch.Tensor):
        """(J (n, (L+1)^2, n_widths 4), b (n, (L+1)^2)) with dp = J f + b, f the features flattened
        per atom (n, n_widths 4), for a one-body update affine in f (``affine_in_features``); None
        otherwise. With h' = h / hidden_norms, w the product weights and m0 = Lin(h') (0 unbiased):
        s_c = w_0c h'_c0 (W_Z,0 f_0 + m0_0)_c + w_1c h'_c1.(W_Z,1 f_1 + m0_1)_c and dp_l = sum_c
        W_out,l[c] h'_cl s_c, so J and b are per-atom products computed once per SCF: each step
        then costs one batched matrix-vector product instead of the embedding's, the products' and
        the output's operations (equal to :meth:`forward` up to rounding)."""
        if self.many_body or not self.affine_in_features or hidden.shape[-1] != 4:
            return None
        hidden = self.normalised(hidden)
        m0 = self.embedding.hidden(hidden) if self.embedding.hidden is not None else torch.zeros_like(hidden)
        s0 = channel_dot(hidden, m0, self.product_weights)  # (n, C)
        field = gather_rows(self.embedding.field.weight, species)  # (n, 2, n_widths, C)
        out = gather_rows(self.out.weight, species)[..., 0]  # (n, 2, C)
        weighted = hidden * torch.cat([self.product_weights[:1], self.product_weights[1:].expand(3, -1)]).T  # w_lc h'_cl
        slopes = torch.cat([field[:, :1], field[:, 1:].expand(-1, 3, -1, -1)], dim=1) * weighted.transpose(1, 2)[:, :, None]
        slopes = slopes.permute(0, 2, 1, 3).flatten(1, 2)  # ds_c / df_(w, component): (n, n_widths 4, C)
        gain = hidden.transpose(1, 2) * torch.cat([out[:, :1], out[:, 1:].expand(-1, 3, -1)], dim=1)  # (n, 4, C)
        rows = torch.cat([gain @ slopes.transpose(1, 2), (gain @ s0.unsqueeze(-1))], dim=-1)  # (n, 4, n_widths 4 + 1)
        width = (self.density_max_l + 1) ** 2
        stored = channels_to_density(rows.transpose(1, 2).reshape(-1, 1, 4)[..., :width]).view(rows.shape[0], -1, width)
        return stored[:, :-1].transpose(1, 2), stored[:, -1]

    def normalised(self, hidden: torch.Tensor) -> torch.Tensor:
        """h / hidden_norms per l: (n, C, D) -> (n, C, D)."""
        divisors = torch.cat([self.hidden_norms[:1], self.hidden_norms[1:].expand(3)])
        return hidden / divisors[: hidden.shape[-1]]

    def mixed(self, features, hidden, species, edges: Optional[EdgeGeometry]):
        return self.embedding(features, hidden, species)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor, species: torch.Tensor,
                edges: Optional[EdgeGeometry] = None) -> torch.Tensor:
        """features (n, n_widths, 4) (l = 1 zero when field_feature_max_l = 0), hidden (n, C, 4),
        species (n,) -> dp (n, (L+1)^2) stored order."""
        hidden = self.normalised(hidden)
        m = self.mixed(features, hidden, species, edges)
        s = self.nonlinearity(channel_dot(hidden, m, self.product_weights))
        change = self.out(hidden * s.unsqueeze(-1), species)
        return channels_to_density(change[..., : (self.density_max_l + 1) ** 2])


class ManyBodyUpdate(OneBodyVariableUpdate):
    """OneBodyVariableUpdate whose embedding is mixed with its neighbours' (module docstring).

    central_atom_mixer_cls: ``AdditiveFieldMixer`` (m + A, default) or ``NoMixer`` (A only).
    """

    many_body = True

    def __init__(self, n_widths: int, channels: int, n_species: int, density_max_l: int,
                 potential_embedding_cls: str = "BiasedLinearPotentialEmbedding", nonlinearity_cls: str = "NoNonLinearity",
                 central_atom_mixer_cls: str = "AdditiveFieldMixer", avg_num_neighbors: float = 10.0,
                 dtype: torch.dtype = torch.float64, **_):
        super().__init__(n_widths, channels, n_species, density_max_l, potential_embedding_cls, nonlinearity_cls, dtype)
        if central_atom_mixer_cls not in ("AdditiveFieldMixer", "NoMixer"):
            from mlpot.errors import ConfigError, suggest

            hint = suggest(central_atom_mixer_cls, ["AdditiveFieldMixer", "NoMixer"])
            raise ConfigError(f"unknown central atom mixer {central_atom_mixer_cls!r}; valid: AdditiveFieldMixer, NoMixer",
                              key="fixedpoint_update_config.central_atom_mixer_cls",
                              hint=f"did you mean {hint!r}?" if hint else None)
        self.additive = central_atom_mixer_cls == "AdditiveFieldMixer"
        self.convolution = EquivariantConvolution(channels, 1, avg_num_neighbors=avg_num_neighbors, dtype=dtype)

    def mixed(self, features, hidden, species, edges: Optional[EdgeGeometry]):
        m = self.embedding(features, hidden, species)
        messages = self.convolution(m, edges)
        return m + messages if self.additive else messages


UPDATES: Registry[type] = Registry("fixed-point update")
UPDATES.register("OneBodyVariableUpdate", OneBodyVariableUpdate, ["one_body"])
UPDATES.register("ManyBodyUpdate", ManyBodyUpdate, ["many_body"])
