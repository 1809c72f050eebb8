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
rather than in ``mlpot/nn`` whose MLPs follow DeePMD's layer rule. The catalog is the registry
:data:`PP_MODELS` (``mlpot.nn.Registry``: unknown names get "did you mean"); every entry is
registered below, by name, next to the builder it maps to.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from mlpot.errors import ConfigError
from mlpot.nn import Registry

STEP_GATE_Q = 10.0  # Bohr⁻¹, cut of Net_relu_xavier_BN_dropout_decay

__all__ = ["FormFactorNet", "GatedNet", "ZeroFunction", "build_pp_model", "PP_MODELS", "required_options"]


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


class _Builder:
    """Builds one catalog entry: ``(layers, options) -> module``; ``needs``: option names it reads."""

    def __init__(self, base: Optional[str], gate: Optional[str] = None, needs: Sequence[str] = (), **fixed):
        self.base, self.gate, self.needs, self.fixed = base, gate, tuple(needs), fixed

    def __call__(self, layers: Sequence[int], options: dict):
        if self.base is None:
            return ZeroFunction(layers)
        network = FormFactorNet(layers, **_BASES[self.base])
        if self.gate is None:
            return network
        kwargs = dict(self.fixed)
        for name in self.needs:
            kwargs[{"decay_rate": "rate", "decay_center": "center", "gaussian_std": "std"}.get(name, name)] = options[name]
        return GatedNet(network, self.gate, **kwargs)


PP_MODELS: Registry[_Builder] = Registry("pseudopotential model")
for _base in _BASES:
    PP_MODELS.register(_base, _Builder(_base))
for _base in _GAUSSIAN_BASES:
    PP_MODELS.register(f"{_base}_decayGaussian", _Builder(_base, "gaussian", needs=("gaussian_std",)))
PP_MODELS.register("Net_relu_xavier_decay", _Builder("Net_relu_xavier", "decay", needs=("decay_rate", "decay_center")))
PP_MODELS.register("Net_relu_xavier_decay2", _Builder("Net_relu_xavier", "decay", rate=1.5, center=6.0))
PP_MODELS.register("Net_relu_xavier_BN_dropout_decay", _Builder("Net_relu_xavier_BN_dropout", "step"))
PP_MODELS.register("Net_celu_HeInit_scale_decayGaussian",
                   _Builder("Net_celu_HeInit", "gaussian", needs=("gaussian_std", "scale")))
PP_MODELS.register("ZeroFunction", _Builder(None))


def required_options(name: str) -> tuple:
    """Option names (``gaussian_std``, ``decay_rate``, ``decay_center``, ``scale``) model ``name`` needs."""
    return PP_MODELS.get(name).needs


def build_pp_model(name: str, layers: Sequence[int], options: Optional[dict] = None, *, file: Optional[str] = None,
                   key_prefix: str = "model."):
    """Network ``name`` of the catalog for ``layers`` = [1, *hidden, n_species].

    ``options``: ``decay_rate``, ``decay_center``, ``gaussian_std``, ``scale`` (the native names of
    ``PPmodel_*``). Unknown names and missing or inconsistent options raise ConfigError naming
    ``<key_prefix><option>``.
    """
    options = dict(options or {})
    builder = PP_MODELS.get(name, key=f"{key_prefix}type", file=file)
    for option in builder.needs:
        if options.get(option) is None:
            raise ConfigError(f"required by {key_prefix}type = {name}", file=file, key=f"{key_prefix}{option}")
    if "scale" in builder.needs and len(options["scale"]) != layers[-1]:
        raise ConfigError(f"needs {layers[-1]} values (one per species), got {len(options['scale'])}", file=file,
                          key=f"{key_prefix}scale")
    return builder(layers, options)
