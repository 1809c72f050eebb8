"""DeePseudopot's catalog of neural form-factor networks v(q) (spec deepseudopot.md §3).

Every network maps q = |G-G'| (N, 1) Bohr⁻¹ to per-species form factors (N, n_species) Ha·Bohr³:
``Linear(1->h1) ... Linear(h_last->n_species)`` with the activation after every layer but the last.
Attribute names follow the original (``hidden_l`` for the layer list, ``neural_network`` inside the
gated wrappers) so that its ``init_PPmodel.pth`` state_dicts load unchanged. Gates multiply every
output column: ``decay`` g = 1 - σ(rate (q - center)); ``decayGaussian`` g = exp(-q²/(2 std²)); ``*_BN_dropout_decay`` g = [q <= 10].
Differences from the original (documented [BUG] fixes): ``ZeroFunction`` returns n_species columns;
the ``scale`` of ``Net_celu_HeInit_scale_decayGaussian`` is a buffer (loading a state_dict without it
keeps the configured scale).

These networks are DeePseudopot-specific (init schemes, gates, state_dict layout), so they live here
rather than in ``mlpot/nn`` whose MLPs follow DeePMD's layer rule.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from mlpot.errors import ConfigError, suggest

STEP_GATE_Q = 10.0  # Bohr⁻¹, cut of Net_relu_xavier_BN_dropout_decay

__all__ = ["FormFactorNet", "GatedNet", "ZeroFunction", "build_pp_model", "PP_MODELS"]


def _init_xavier_normal(linear: nn.Linear) -> None:
    nn.init.xavier_normal_(linear.weight)


def _init_xavier_uniform(linear: nn.Linear) -> None:
    nn.init.xavier_uniform_(linear.weight)


def _init_he_normal(linear: nn.Linear) -> None:
    nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")


def _init_he_uniform(linear: nn.Linear) -> None:
    nn.init.kaiming_uniform_(linear.weight, mode="fan_in", nonlinearity="relu")


def _init_uniform01(linear: nn.Linear) -> None:
    nn.init.uniform_(linear.weight, 0.0, 1.0)


def _init_random_normal(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, 0.0, linear.in_features ** -0.5)


class FormFactorNet(nn.Module):
    """Plain MLP q -> (n_species) with a chosen activation, init and optional BatchNorm/dropout.

    ``layers`` = [1, *hidden, n_species]. ``fresh_seed``: draw the weights from an OS-random seed and
    restore the global RNG afterwards (``Net_celu_RandInit``).
    """

    def __init__(self, layers: Sequence[int], activation: Callable[[], nn.Module], init=None,
                 batch_norm: bool = False, dropout: float = 0.0, fresh_seed: bool = False):
        super().__init__()
        self.layers = list(layers)
        state = torch.random.get_rng_state() if fresh_seed else None
        if fresh_seed:
            torch.seed()
        self.hidden_l = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64) for a, b in zip(layers[:-1], layers[1:]))
        if init is not None:
            for linear in self.hidden_l:
                init(linear)
        if state is not None:
            torch.random.set_rng_state(state)
        self.bn_l = nn.ModuleList(nn.BatchNorm1d(b, dtype=torch.float64) for b in layers[1:-1]) if batch_norm else None
        self.activation = activation()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """``q`` (N, 1) Bohr⁻¹ -> (N, n_species) Ha·Bohr³."""
        x = q
        for i, linear in enumerate(self.hidden_l):
            x = linear(x)
            if i < len(self.hidden_l) - 1:
                if self.bn_l is not None:
                    x = self.bn_l[i](x)
                x = self.activation(x)
                if self.dropout is not None:
                    x = self.dropout(x)
        return x


class GatedNet(nn.Module):
    """``neural_network(q) * gate(q) [* scale]``; gate 'decay' (rate, center) or 'gaussian' (std)."""

    def __init__(self, network: nn.Module, gate: str, rate: float = 1.5, center: float = 6.0,
                 std: float = 2.0, scale: Optional[Sequence[float]] = None):
        super().__init__()
        self.neural_network = network
        self.gate = gate
        self.decay_rate, self.decay_center, self.gaussian_std = float(rate), float(center), float(std)
        if scale is not None:
            self.register_buffer("scale", torch.tensor(list(scale), dtype=torch.float64))
        else:
            self.scale = None

    def gate_value(self, q: torch.Tensor) -> torch.Tensor:
        if self.gate == "decay":
            return 1.0 - torch.sigmoid(self.decay_rate * (q - self.decay_center))
        if self.gate == "step":  # NN for q <= 10 Bohr⁻¹, zero beyond (rows kept in order: [BUG] fix)
            return (q <= STEP_GATE_Q).to(q.dtype)
        return torch.exp(-(q**2) / (2.0 * self.gaussian_std**2))

    def change_scale(self, scale: Sequence[float]) -> None:
        self.scale = torch.as_tensor(list(scale), dtype=torch.float64, device=self.scale.device)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        out = self.neural_network(q) * self.gate_value(q)
        return out * self.scale if self.scale is not None else out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # original checkpoints carry no 'scale' (it was a plain attribute): keep the configured one
        if self.scale is not None and "scale" not in state_dict:
            state_dict = dict(state_dict, scale=self.scale)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class ZeroFunction(nn.Module):
    """v(q) = 0 for every species (analytic-only runs); (N, 1) -> (N, n_species)."""

    def __init__(self, layers: Sequence[int]):
        super().__init__()
        self.n_species = int(layers[-1])

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.zeros(q.shape[0], self.n_species, dtype=q.dtype, device=q.device)


_BASES: Dict[str, dict] = {
    "Net_sig": dict(activation=nn.Sigmoid),
    "Net_tanh": dict(activation=nn.Tanh),
    "Net_relu": dict(activation=nn.ReLU),
    "Net_relu_xavier": dict(activation=nn.ReLU, init=_init_xavier_normal),
    "Net_sigmoid_xavier": dict(activation=nn.Sigmoid, init=_init_xavier_normal),
    "Net_celu_HeInit": dict(activation=nn.CELU, init=_init_he_normal),
    "Net_celu_RandInit": dict(activation=nn.CELU, init=_init_random_normal, fresh_seed=True),
    "Net_sig_UniformInit": dict(activation=nn.Sigmoid, init=_init_uniform01),
    "Net_tanh_XavierInit_dropout": dict(activation=nn.Tanh, init=_init_xavier_uniform, dropout=0.1),
    "Net_relu_HeInit": dict(activation=nn.ReLU, init=_init_he_uniform),
    "Net_relu_xavier_BN": dict(activation=nn.ReLU, init=_init_xavier_normal, batch_norm=True),
    "Net_relu_xavier_BN_dropout": dict(activation=nn.ReLU, init=_init_xavier_normal, batch_norm=True, dropout=0.1),
}
_GAUSSIAN_BASES = ("Net_relu_xavier", "Net_relu_HeInit", "Net_sigmoid_xavier", "Net_celu_HeInit",
                   "Net_celu_RandInit", "Net_relu_xavier_BN", "Net_relu_xavier_BN_dropout")
PP_MODELS: List[str] = sorted(
    list(_BASES) + [f"{b}_decayGaussian" for b in _GAUSSIAN_BASES]
    + ["Net_relu_xavier_decay", "Net_relu_xavier_decay2", "Net_relu_xavier_BN_dropout_decay",
       "Net_celu_HeInit_scale_decayGaussian", "ZeroFunction"]
)


def build_pp_model(name: str, layers: Sequence[int], options: Optional[dict] = None, file: str = "NN_config.par"):
    """Network ``name`` of the catalog for ``layers`` = [1, *hidden, n_species].

    ``options``: ``PPmodel_decay_rate``, ``PPmodel_decay_center``, ``PPmodel_gaussian_std``,
    ``PPmodel_scale`` as in NN_config.par. Raises ConfigError for unknown names or missing options.
    """
    options = options or {}
    if name not in PP_MODELS:
        hint = suggest(name, PP_MODELS)
        raise ConfigError(f"unknown PPmodel {name!r}", file=file, key="PPmodel",
                          hint=f"did you mean {hint!r}?" if hint else f"valid: {', '.join(PP_MODELS)}")

    def need(key):
        if options.get(key) is None:
            raise ConfigError(f"required by PPmodel = {name}", file=file, key=key)
        return options[key]

    if name == "ZeroFunction":
        return ZeroFunction(layers)
    if name in _BASES:
        return FormFactorNet(layers, **_BASES[name])
    if name == "Net_relu_xavier_decay2":
        return GatedNet(FormFactorNet(layers, **_BASES["Net_relu_xavier"]), "decay", rate=1.5, center=6.0)
    if name == "Net_relu_xavier_BN_dropout_decay":
        return GatedNet(FormFactorNet(layers, **_BASES["Net_relu_xavier_BN_dropout"]), "step")
    if name == "Net_relu_xavier_decay":
        return GatedNet(FormFactorNet(layers, **_BASES["Net_relu_xavier"]), "decay", rate=need("PPmodel_decay_rate"),
                        center=need("PPmodel_decay_center"))
    if name == "Net_celu_HeInit_scale_decayGaussian":
        scale = need("PPmodel_scale")
        if len(scale) != layers[-1]:
            raise ConfigError(f"needs {layers[-1]} values (one per species), got {len(scale)}", file=file,
                              key="PPmodel_scale")
        return GatedNet(FormFactorNet(layers, **_BASES["Net_celu_HeInit"]), "gaussian",
                        std=need("PPmodel_gaussian_std"), scale=scale)
    base = name[: -len("_decayGaussian")]
    return GatedNet(FormFactorNet(layers, **_BASES[base]), "gaussian", std=need("PPmodel_gaussian_std"))
