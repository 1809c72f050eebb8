"""Building blocks shared by the equivariant message-passing models (NequIP and MACE).

One class per piece of maths, used by both families:

* ``RadialMLP``: a bias-free MLP on edge invariants, x_{k+1} = act(x_k) · (α_k W_k), with
  NequIP's scaling (``ScalarMLPFunction``) or e3nn's (``FullyConnectedNet``, MACE);
* ``IrrepsLinear``: e3nn's ``o3.Linear`` (no biases), on e3nn's flat layout (NequIP) or on a
  channels-last layout (n, components, channels) when every irrep has the same multiplicity (MACE);
* ``TypeSelfConnection``: the per-species self-interaction, e3nn's
  ``FullyConnectedTensorProduct(x, a_t)`` with scalar attributes a_t of the atom type (NequIP:
  its type embedding; MACE's ``skip_tp``: one-hot elements), i.e. one linear map per type;
* ``EdgeSphericalHarmonics``: e3nn's real spherical harmonics of the edge directions;
* ``PerTypeScaleShift``: E_i = α_{t_i} · x_i + E0_{t_i} in float64 (NequIP);
* ``unique_pair_index``: the map from the directed edges of a full neighbour list onto unordered
  pairs, so that functions of the edge length are evaluated once per pair.

Kept apart, with why: the uvu edge tensor products (NequIP's pair-wise
:class:`~mlpot.models.equivariant.tensor_products.EdgeTensorProductScatter` on mixed multiplicities,
MACE's padded-slot ``ChannelwiseTensorProduct`` on uniform channels: two algorithms for one
contraction, each the faster for its model; ``tests/test_equivariant_blocks.py`` pins them
together); MACE's scale/shift (E0_t + s · x + b with mace-torch's buffers, read from its files).
The e3nn-compatible modules are written out rather than taken from e3nn for CPU speed (one matmul
per irrep block, no generated per-path code); tests pin each against e3nn 0.6 with the same weights.

Feature layouts: e3nn ``mul_ir`` (block k is (m_k, 2 l_k + 1) row-major), or channels-last
(n, D, C) with D the components of one channel's irreps. Shapes use n = atoms, E = edges.
"""

from __future__ import annotations

import math
from typing import List, Literal, Optional, Sequence, Tuple, Union

import torch
from e3nn import o3

from mlpot.models.equivariant.activations import SCALAR_ACTIVATIONS, activation_constant
from mlpot.models.equivariant.gate import Gate
from mlpot.models.equivariant.tensor_products import EdgeTensorProductScatter
from mlpot.nn import is_tracing

__all__ = [
    "RadialMLP", "IrrepsLinear", "TypeSelfConnection", "EdgeSphericalHarmonics", "PerTypeScaleShift", "Gate",
    "SCALAR_ACTIVATIONS", "activation_constant", "unique_pair_index", "EdgeTensorProductScatter",
]

_IDENTITY_NAMES = ("None", "null")


class _ScaledLinear(torch.nn.Module):
    """y = x · (alpha W), W: (n_in, n_out) parameter, alpha a fixed float; no bias."""

    def __init__(self, n_in: int, n_out: int, alpha: float, weight: torch.Tensor):
        super().__init__()
        self.alpha = float(alpha)
        self.weight = torch.nn.Parameter(weight)

    def scaled(self, columns: Optional[torch.Tensor] = None) -> torch.Tensor:
        weight = self.weight if columns is None else self.weight.index_select(1, columns)
        return weight * self.alpha

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} -> {self.weight.shape[1]}, alpha={self.alpha:.6g}"


class RadialMLP(torch.nn.Module):
    """Bias-free MLP ``sizes[0] -> ... -> sizes[-1]``: x_{k+1} = act(x_k) · (α_k W_k), no activation
    before the first layer or after the last; α_k = g_k / sqrt(fan_in_k) with g_0 = 1 and, after an
    activation,

    * ``scaling="kaiming"`` (NequIP's ``ScalarMLPFunction``): g = sqrt(2), W ~ U(-√3, √3);
    * ``scaling="moment"`` (e3nn's ``FullyConnectedNet``, MACE): g = the activation's second-moment
      constant (``activation_constant``), W ~ N(0, 1).

    nonlinearity: a ``SCALAR_ACTIVATIONS`` name, None (no nonlinearity, all gains 1) or "None"/"null"
    (identity that still counts as one for the kaiming gain [COMPAT: NequIP's string options]).
    Parameters ``layer{k}.weight`` (fan_in, fan_out), e3nn's names. forward(x (..., sizes[0]),
    output_permutation) -> (..., sizes[-1]); ``output_permutation`` reorders the outputs
    (out[..., k] = mlp(x)[..., perm[k]]) through the last layer's weight columns.
    """

    def __init__(self, sizes: Sequence[int], nonlinearity: Optional[str] = "silu",
                 scaling: Literal["kaiming", "moment"] = "kaiming", dtype: Optional[torch.dtype] = None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"an MLP needs at least an input and an output size, all positive; got {sizes}")
        if nonlinearity is not None and nonlinearity not in SCALAR_ACTIVATIONS and nonlinearity not in _IDENTITY_NAMES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; valid: {sorted(SCALAR_ACTIVATIONS)} or None")
        if scaling not in ("kaiming", "moment"):
            raise ValueError(f"scaling must be 'kaiming' or 'moment', got {scaling!r}")
        self.nonlinearity, self.scaling = nonlinearity, scaling
        self._act = SCALAR_ACTIVATIONS.get(nonlinearity) if nonlinearity is not None else None
        if nonlinearity is None:
            hidden_gain = 1.0
        elif scaling == "kaiming":
            hidden_gain = math.sqrt(2.0)
        else:
            hidden_gain = activation_constant(self._act) if self._act is not None else 1.0
        self.n_layers = len(self.sizes) - 1
        for k, (n_in, n_out) in enumerate(zip(self.sizes, self.sizes[1:])):
            weight = torch.empty(n_in, n_out, dtype=dtype)
            weight = weight.uniform_(-math.sqrt(3.0), math.sqrt(3.0)) if scaling == "kaiming" else weight.normal_()
            self.add_module(f"layer{k}", _ScaledLinear(n_in, n_out, (1.0 if k == 0 else hidden_gain) / math.sqrt(n_in), weight))

    @property
    def layers(self) -> List[_ScaledLinear]:
        return [getattr(self, f"layer{k}") for k in range(self.n_layers)]

    def forward(self, x: torch.Tensor, output_permutation: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        last = self.n_layers - 1
        for k, layer in enumerate(self.layers):
            x = torch.mm(x, layer.scaled(output_permutation if k == last else None))
            if k < last and self._act is not None:
                x = self._act(x)
        return x.reshape(shape + (x.shape[-1],))

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, nonlinearity={self.nonlinearity}, scaling={self.scaling}"


def _linear_plan(irreps_in: o3.Irreps, irreps_out: o3.Irreps):
    """Per output block: [(input block, weight offset, mul_in)] and the normalisation 1/sqrt(fan-in)."""
    instructions = [(i_in, i_out) for i_in, (_, ir_in) in enumerate(irreps_in)
                    for i_out, (_, ir_out) in enumerate(irreps_out) if ir_in == ir_out]
    offsets, offset = [], 0
    for i_in, i_out in instructions:
        offsets.append(offset)
        offset += irreps_in[i_in].mul * irreps_out[i_out].mul
    plan = []
    for i_out, (mul_out, ir_out) in enumerate(irreps_out):
        sources = [(i_in, off, irreps_in[i_in].mul) for (i_in, o), off in zip(instructions, offsets) if o == i_out]
        fan_in = sum(mul for _, _, mul in sources)
        plan.append((sources, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 1.0))
    return plan, offset


def _uniform_multiplicity(irreps: o3.Irreps) -> int:
    muls = {mul for mul, _ in irreps}
    if len(muls) != 1:
        raise ValueError(f"the channels-last layout needs one multiplicity for every irrep, got {irreps}")
    return muls.pop()


class IrrepsLinear(torch.nn.Module):
    """Equivariant linear map = e3nn ``o3.Linear(irreps_in, irreps_out)`` without biases:
    out_w = Σ_u W_uw x_u / sqrt(Σ fan-in) per output block, from the input blocks of the same irrep.

    ``weight`` (weight_numel,) has e3nn's layout (blocks (mul_in, mul_out) per instruction).
    ``channels_last``: features are (n, D, C) (every irrep with multiplicity C; D = the summed
    dimensions of the irreps of one channel) instead of e3nn's flat (n, irreps.dim).
    forward(x, weight=None) -> (n, irreps_out.dim) or (n, D_out, C_out); ``weight`` overrides the
    parameter. Output blocks without a source are zero.
    """

    def __init__(self, irreps_in, irreps_out, dtype=None, channels_last: bool = False):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.channels_last = bool(channels_last)
        self._plan, self.weight_numel = _linear_plan(self.irreps_in, self.irreps_out)
        if self.channels_last:
            _uniform_multiplicity(self.irreps_in), _uniform_multiplicity(self.irreps_out)
            self._in_starts = [sum(ir.dim for _, ir in self.irreps_in[:k]) for k in range(len(self.irreps_in))]
        else:
            self._in_starts = [self.irreps_in[:k].dim for k in range(len(self.irreps_in))]
        self.weight = torch.nn.Parameter(torch.randn(self.weight_numel, dtype=dtype or torch.get_default_dtype()))

    def block_weight(self, weight: torch.Tensor, i_out: int) -> torch.Tensor:
        """(Σ mul_in, mul_out) normalised weight of output block ``i_out`` (inputs stacked in order)."""
        sources, norm = self._plan[i_out]
        mul_out = self.irreps_out[i_out].mul
        blocks = [weight.narrow(0, off, mul * mul_out).view(mul, mul_out) for _, off, mul in sources]
        return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, 0)) * norm

    def block_weights(self, weight: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """``block_weight`` of every output block (None for blocks without a source)."""
        return [self.block_weight(weight, i_out) if sources else None for i_out, (sources, _) in enumerate(self._plan)]

    def apply_blocks(self, x: torch.Tensor, weights: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """The map with given per-output-block weights (``block_weights`` layout)."""
        n = x.shape[0]
        out = []
        for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
            sources, _ = self._plan[i_out]
            d = ir_out.dim
            if weights[i_out] is None or mul_out == 0:
                out.append(x.new_zeros((n, d, mul_out) if self.channels_last else (n, mul_out * d)))
                continue
            if self.channels_last:  # (n, d, C_in * k) @ (C_in * k, C_out)
                inputs = [x.narrow(1, self._in_starts[i_in], d) for i_in, _, _ in sources]
                out.append(torch.matmul(inputs[0] if len(inputs) == 1 else torch.cat(inputs, 2), weights[i_out]))
                continue
            inputs = [x.narrow(1, self._in_starts[i_in], mul * d).view(n, mul, d) for i_in, _, mul in sources]
            stacked = inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)
            if d == 1:
                out.append(stacked.view(n, -1) @ weights[i_out])
            else:  # (n, mul_in, d) -> (n, d, mul_in) @ (mul_in, mul_out) -> (n, mul_out, d)
                out.append(torch.matmul(stacked.transpose(1, 2), weights[i_out]).transpose(1, 2).reshape(n, mul_out * d))
        return out[0] if len(out) == 1 else torch.cat(out, 1)

    def forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.apply_blocks(x, self.block_weights(self.weight if weight is None else weight))

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}{', channels last' if self.channels_last else ''}"


class TypeSelfConnection(torch.nn.Module):
    """e3nn ``FullyConnectedTensorProduct(irreps_in, f"{n_attrs}x0e", irreps_out)`` applied to
    (x_i, a_{t_i}) where a_t are per-type scalar attributes: NequIP's self-connection (its type
    embedding as attributes) and MACE's ``skip_tp`` (one-hot elements, ``attributes=None``).

    With scalar attributes the product is linear in x with weights W_t = Σ_v a_tv W_v / sqrt(n_attrs)
    per type (times e3nn's 1/sqrt(fan-in)), so it is one ``IrrepsLinear`` per type on that type's
    atoms. ``weight`` (weight_numel,) has e3nn's layout (per instruction (mul_in, n_attrs, mul_out)).
    forward(x (n, irreps_in.dim) or channels-last (n, D_in, C_in), types (n,) or ``segments`` (atoms
    per type, rows already sorted by type), attributes (n_types, n_attrs) or None for one-hot)
    -> (n, irreps_out.dim) or (n, D_out, C_out).
    """

    def __init__(self, irreps_in, n_attrs: int, irreps_out, dtype=None, channels_last: bool = False):
        super().__init__()
        self.linear = IrrepsLinear(irreps_in, irreps_out, dtype=dtype, channels_last=channels_last)
        self.irreps_in, self.irreps_out, self.n_attrs = self.linear.irreps_in, self.linear.irreps_out, int(n_attrs)
        del self.linear.weight  # the per-type weights are computed from ``weight``
        self.linear.register_parameter("weight", None)
        self.weight_numel = self.linear.weight_numel * self.n_attrs
        self.weight = torch.nn.Parameter(torch.randn(self.weight_numel, dtype=dtype or torch.get_default_dtype()))
        self._instructions = [(i_in, i_out, off * self.n_attrs, mul) for i_out, (sources, _) in enumerate(self.linear._plan)
                              for i_in, off, mul in sources]

    def type_block_weights(self, attributes: Optional[torch.Tensor] = None) -> List[Optional[torch.Tensor]]:
        """Per output block: (n_types, Σ mul_in, mul_out) weights of every type (None without a source)."""
        per_instruction = {}
        for i_in, i_out, offset, mul_in in self._instructions:
            mul_out = self.irreps_out[i_out].mul
            w = self.weight.narrow(0, offset, mul_in * self.n_attrs * mul_out).view(mul_in, self.n_attrs, mul_out)
            w = w.transpose(0, 1) if attributes is None else torch.einsum("uvw,tv->tuw", w, attributes.to(w.dtype))
            per_instruction[(i_in, i_out)] = w / math.sqrt(self.n_attrs)
        out = []
        for i_out, (sources, norm) in enumerate(self.linear._plan):
            blocks = [per_instruction[(i_in, i_out)] for i_in, _, _ in sources]
            out.append(None if not blocks else (blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)) * norm)
        return out

    def forward(self, x: torch.Tensor, types: Optional[torch.Tensor] = None, attributes: Optional[torch.Tensor] = None,
                segments: Optional[Sequence[int]] = None) -> torch.Tensor:
        weights = self.type_block_weights(attributes)
        n_types = self.n_attrs if attributes is None else attributes.shape[0]
        if n_types == 1:
            return self.linear.apply_blocks(x, [None if w is None else w[0] for w in weights])
        if (getattr(self, "masked", False) or is_tracing()) and segments is None:  # sizes independent of the data
            per_type = torch.stack([self.linear.apply_blocks(x, [None if w is None else w[t] for w in weights])
                                    for t in range(n_types)])
            index = types.view(1, -1, *([1] * (x.dim() - 1))).expand(1, *per_type.shape[1:])
            return per_type.gather(0, index).squeeze(0)
        order = None
        if segments is None:
            order = torch.argsort(types, stable=True)
            segments = torch.bincount(types, minlength=n_types).tolist()
            x = x.index_select(0, order)
        pieces = [self.linear.apply_blocks(part, [None if w is None else w[t] for w in weights])
                  for t, part in enumerate(x.split(list(segments))) if segments[t]]
        out = torch.cat(pieces, 0) if pieces else self.linear.apply_blocks(x, [None] * len(weights))
        if order is None:
            return out
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return out.index_select(0, inverse)


class EdgeSphericalHarmonics(torch.nn.Module):
    """Y_lm(r̂) of edge vectors: forward(vectors (E, 3)) -> (E, irreps.dim) (e3nn order and signs).

    lmax_or_irreps: l_max (all l <= l_max with parity (-1)^l) or explicit irreps;
    normalization "component" (|Y_l|^2 = 2l+1, NequIP and MACE) | "norm" | "integral".
    """

    def __init__(self, lmax_or_irreps: Union[int, str, o3.Irreps], normalize: bool = True, normalization: str = "component"):
        super().__init__()
        irreps = o3.Irreps.spherical_harmonics(lmax_or_irreps) if isinstance(lmax_or_irreps, int) else o3.Irreps(lmax_or_irreps)
        self.irreps = irreps
        self.sh = o3.SphericalHarmonics(irreps, normalize, normalization)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.sh(vectors)


def _per_type_values(values, type_names: Sequence[str], what: str) -> Optional[torch.Tensor]:
    """None, a float (one shared value) or a dict type name -> float, as a float64 tensor (1,) or (n_types,)."""
    if values is None:
        return None
    if isinstance(values, dict):
        missing = [t for t in type_names if t not in values]
        extra = [k for k in values if k not in type_names]
        if missing or extra:
            raise ValueError(f"{what}: keys must be the type names {list(type_names)}; missing {missing}, unknown {extra}")
        return torch.tensor([float(values[t]) for t in type_names], dtype=torch.float64)
    if isinstance(values, (list, tuple)):
        raise ValueError(f"{what}: lists are not accepted; give a float or a dict type name -> value")
    return torch.tensor([float(values)], dtype=torch.float64)


class PerTypeScaleShift(torch.nn.Module):
    """E_i = scale_{t_i} · x_i + shift_{t_i} per atom (NequIP ``PerTypeScaleShift``).

    scales / shifts: None (absent), a float (shared) or a dict type name -> value; ``*_trainable``
    makes them per-type parameters (a shared float is broadcast to every type). Stored and applied
    in float64 (the precision of x if wider). forward(x (n,), types (n,)) -> (n,).
    """

    def __init__(self, type_names: Sequence[str], scales=None, shifts=None, scales_trainable: bool = False,
                 shifts_trainable: bool = False):
        super().__init__()
        self.type_names = list(type_names)
        for name, values, trainable in (("scales", scales, scales_trainable), ("shifts", shifts, shifts_trainable)):
            tensor = _per_type_values(values, self.type_names, f"per_type_energy_{name}")
            if tensor is not None and trainable and tensor.numel() == 1:
                tensor = tensor.expand(len(self.type_names)).clone()
            if tensor is None:
                self.register_buffer(name, None)
            elif trainable:
                self.register_parameter(name, torch.nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)

    @staticmethod
    def _lookup(values: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return values if values.numel() == 1 else values.index_select(0, types)

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float64)
        x = x.to(dtype)
        if self.scales is not None:
            x = self._lookup(self.scales.to(dtype), types) * x
        if self.shifts is not None:
            x = self._lookup(self.shifts.to(dtype), types) + x
        return x


def unique_pair_index(edge_index: torch.Tensor, edge_shifts: torch.Tensor, n_atoms: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Map directed edges onto unordered pairs: (representative (P,), inverse (E,)).

    Edge (i, j, S) and its reverse (j, i, -S) have the same length; ``inverse[e]`` is the pair of
    edge e and ``representative[p]`` one edge of pair p, so ``f(r)[representative][inverse]``
    equals ``f(r)`` for any function of the length. Returns None when the integer key would
    overflow int64 (then evaluate on all edges). Edges without a reverse are their own pair.
    """
    n_edges = edge_index.shape[1]
    if n_edges == 0:
        return None
    shifts = torch.round(edge_shifts).to(torch.int64)
    span = int(shifts.abs().max()) if shifts.numel() else 0
    base = 2 * span + 1
    if float(n_atoms) ** 2 * float(base) ** 3 >= 2.0**62:
        return None
    i, j = edge_index[0], edge_index[1]
    first_nonzero = torch.where(shifts[:, 0] != 0, shifts[:, 0], torch.where(shifts[:, 1] != 0, shifts[:, 1], shifts[:, 2]))
    flip = (i > j) | ((i == j) & (first_nonzero < 0))
    a, b = torch.where(flip, j, i), torch.where(flip, i, j)
    s = torch.where(flip.unsqueeze(1), -shifts, shifts) + span
    key = (((a * n_atoms + b) * base + s[:, 0]) * base + s[:, 1]) * base + s[:, 2]
    _, inverse = torch.unique(key, return_inverse=True)
    n_pairs = int(inverse.max()) + 1
    representative = torch.empty(n_pairs, dtype=torch.int64, device=key.device)
    representative.scatter_(0, inverse, torch.arange(n_edges, device=key.device))
    return representative, inverse
