"""Building blocks shared by the equivariant message-passing models (NequIP, MACE).

Invariant / per-type pieces (this module):

* ``RadialMLP``: a bias-free MLP on edge invariants (NequIP's ``ScalarMLPFunction``): layers
  ``y = x · (α W)`` with W ~ U(-√3, √3) and α = gain / sqrt(fan_in) ("forward" variance-preserving
  init), gain = 1 on the first layer or without nonlinearity, sqrt(2) otherwise.
* ``EdgeSphericalHarmonics``: e3nn real spherical harmonics of the edge directions.
* ``PerTypeScaleShift``: E_i = α_{t_i} · x_i + E0_{t_i} in float64 (or the input precision if wider).
* ``equivariant_gate`` / ``Gate``: e3nn's ``Gate`` nonlinearity.
* ``unique_pair_index``: the map from the directed edges of a full neighbour list onto unordered
  pairs, so that functions of the edge length (radial MLPs) are evaluated once per pair.

Equivariant linear maps and tensor products (``IrrepsLinear``, ``EdgeTensorProductScatter``,
``TypeSelfConnection``) live in :mod:`mlpot.models.equivariant.tensor_products` and are
re-exported here.

Feature tensors follow e3nn's ``mul_ir`` layout: for irreps ``m0 x ir0 + m1 x ir1 + ...`` the
last axis holds block k as (m_k, 2 l_k + 1) row-major. Shapes use n = atoms, E = edges.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from e3nn import o3
from e3nn.math import normalize2mom

from mlpot.models.equivariant.tensor_products import EdgeTensorProductScatter, IrrepsLinear, TypeSelfConnection

__all__ = [
    "RadialMLP", "EdgeSphericalHarmonics", "PerTypeScaleShift", "Gate", "SCALAR_ACTIVATIONS",
    "unique_pair_index", "IrrepsLinear", "EdgeTensorProductScatter", "TypeSelfConnection",
]


def _shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(x) - math.log(2.0)


# elementwise nonlinearities by the names NequIP uses (``None``/"None"/"null": identity)
SCALAR_ACTIVATIONS = {
    "silu": torch.nn.functional.silu,
    "mish": torch.nn.functional.mish,
    "gelu": torch.nn.functional.gelu,
    "ssp": _shifted_softplus,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
    "abs": torch.abs,
}
_IDENTITY_NAMES = ("None", "null")


class _ScaledLinear(torch.nn.Module):
    """y = x · (alpha W), W: (n_in, n_out) parameter, alpha a fixed float; no bias."""

    def __init__(self, n_in: int, n_out: int, alpha: float, dtype: torch.dtype):
        super().__init__()
        self.alpha = float(alpha)
        self.weight = torch.nn.Parameter(torch.empty(n_in, n_out, dtype=dtype).uniform_(-math.sqrt(3.0), math.sqrt(3.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, self.weight * self.alpha)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} -> {self.weight.shape[1]}, alpha={self.alpha:.6g}"


class RadialMLP(torch.nn.Module):
    """Bias-free MLP ``input_dim -> [hidden_width] * hidden_depth -> output_dim`` (NequIP rule, module docstring).

    nonlinearity: a name of ``SCALAR_ACTIVATIONS``, None (no nonlinearity) or "None"/"null" (an
    identity nonlinearity that still counts as one for the init gain [COMPAT: NequIP's string
    options behave so]). forward(x (..., input_dim)) -> (..., output_dim), dimensionless.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_depth: int = 0, hidden_width: Optional[int] = None,
                 nonlinearity: Optional[str] = "silu", dtype: Optional[torch.dtype] = None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        if hidden_depth < 0 or (hidden_depth > 0 and not (hidden_width and hidden_width > 0)):
            raise ValueError(f"hidden_depth {hidden_depth} needs a positive hidden_width, got {hidden_width}")
        if nonlinearity is not None and nonlinearity not in SCALAR_ACTIVATIONS and nonlinearity not in _IDENTITY_NAMES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; valid: {sorted(SCALAR_ACTIVATIONS)} or None")
        self.dims = [int(input_dim)] + [int(hidden_width or 0)] * int(hidden_depth) + [int(output_dim)]
        self.nonlinearity = nonlinearity
        self._act = SCALAR_ACTIVATIONS.get(nonlinearity) if nonlinearity is not None else None
        layers = []
        for index, (n_in, n_out) in enumerate(zip(self.dims, self.dims[1:])):
            gain = 1.0 if nonlinearity is None or index == 0 else math.sqrt(2.0)
            layers.append(_ScaledLinear(n_in, n_out, gain / math.sqrt(n_in), dtype))
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, output_permutation: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (..., input_dim) -> (..., output_dim); ``output_permutation`` (output_dim,) reorders the
        outputs (out[..., k] = mlp(x)[..., perm[k]]) through the last layer's weight columns."""
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if index == last and output_permutation is not None:
                x = torch.mm(x, (layer.weight * layer.alpha).index_select(1, output_permutation))
            else:
                x = layer(x)
            if index < last and self._act is not None:
                x = self._act(x)
        return x.reshape(shape + (x.shape[-1],))


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


_MOMENT_CACHE: Dict[str, float] = {}


def _second_moment_factor(name: str) -> float:
    """e3nn's normalize2mom constant of an activation (1 / sqrt(E[f(z)^2]), z ~ N(0,1))."""
    if name not in _MOMENT_CACHE:
        _MOMENT_CACHE[name] = float(normalize2mom(SCALAR_ACTIVATIONS[name]).cst)
    return _MOMENT_CACHE[name]


def _activation_parity(name: str) -> int:
    x = torch.linspace(0, 10, 256, dtype=torch.float64)
    f = SCALAR_ACTIVATIONS[name]
    if (f(x) - f(-x)).abs().max() < 1e-5:
        return 1
    if (f(x) + f(-x)).abs().max() < 1e-5:
        return -1
    return 0


class Gate(torch.nn.Module):
    """e3nn's ``Gate``: act(scalars) ⊕ act(gates) · gated (same semantics and irreps layout).

    The input irreps are (scalars + gates + gated) sorted and simplified, as in e3nn; the output is
    the activated scalars followed by the gated blocks. Activation names index
    ``SCALAR_ACTIVATIONS``; each is normalised to unit second moment (e3nn ``normalize2mom``).
    Written out (not e3nn's module) to slice columns instead of running e3nn's generated
    extraction and element-wise tensor product. forward(x (n, irreps_in.dim)) -> (n, irreps_out.dim).
    """

    def __init__(self, irreps_scalars, act_scalars: Sequence[str], irreps_gates, act_gates: Sequence[str], irreps_gated):
        super().__init__()
        originals = [o3.Irreps(irreps_scalars), o3.Irreps(irreps_gates), o3.Irreps(irreps_gated)]
        if originals[1].num_irreps != originals[2].num_irreps:
            raise ValueError(f"{originals[1].num_irreps} gates for {originals[2].num_irreps} gated irreps")
        if any(ir.l > 0 for _, ir in originals[0] + originals[1]):
            raise ValueError("scalars and gates must be scalars (l = 0)")
        parts = [irreps.simplify() for irreps in originals]
        sorted_irreps, permutation, _ = sum(parts, o3.Irreps([])).sort()
        self.irreps_in = sorted_irreps.simplify()
        # column (start, length) of every part's blocks in the sorted input layout
        starts = [sorted_irreps[:k].dim for k in range(len(sorted_irreps))]
        offset, self._slices = 0, []
        for part in parts:
            blocks = [permutation[offset + k] for k in range(len(part))]
            self._slices.append([(starts[b], sorted_irreps[b].dim) for b in blocks])
            offset += len(part)
        self._scalar_acts = _merged_activations(originals[0], act_scalars)
        self._gate_acts = _merged_activations(originals[1], act_gates)
        scalar_out = [(mul, (0, _output_parity(ir.p, name))) for (mul, ir), (name, _) in zip(parts[0], self._scalar_acts)]
        gate_parity = [p for (mul, ir), (name, _) in zip(parts[1], self._gate_acts) for p in [_output_parity(ir.p, name)] * mul]
        gated_out, cursor = [], 0
        for mul, ir in parts[2]:
            parities = set(gate_parity[cursor:cursor + mul])
            cursor += mul
            if len(parities) != 1:  # e3nn would split such a block; NequIP never builds one
                raise ValueError("a gated block must take gates of one parity")
            gated_out.append((mul, (ir.l, ir.p * parities.pop())))
        self._scalar_muls = [mul for mul, _ in parts[0]]
        self._gate_muls = [mul for mul, _ in parts[1]]
        self._gated_blocks = [(mul, ir.dim) for mul, ir in parts[2]]
        self.irreps_out = o3.Irreps(scalar_out) + o3.Irreps(gated_out)

    def _take(self, x: torch.Tensor, part: int) -> torch.Tensor:
        pieces = [x.narrow(-1, start, length) for start, length in self._slices[part]]
        if not pieces:
            return x.new_zeros(x.shape[:-1] + (0,))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    @staticmethod
    def _activate(x: torch.Tensor, muls, acts) -> torch.Tensor:
        out, start = [], 0
        for mul, (name, factor) in zip(muls, acts):
            y = SCALAR_ACTIVATIONS[name](x.narrow(-1, start, mul))
            out.append(y if factor is None else y * factor)
            start += mul
        if not out:
            return x
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars = self._activate(self._take(x, 0), self._scalar_muls, self._scalar_acts)
        if not self._gated_blocks:
            return scalars
        gates = self._activate(self._take(x, 1), self._gate_muls, self._gate_acts)
        gated = self._take(x, 2)
        out, g_start, x_start = [scalars], 0, 0
        for mul, dim in self._gated_blocks:
            block = gated.narrow(-1, x_start, mul * dim).reshape(x.shape[0], mul, dim)
            out.append((block * gates.narrow(-1, g_start, mul).unsqueeze(-1)).reshape(x.shape[0], mul * dim))
            g_start += mul
            x_start += mul * dim
        return torch.cat(out, dim=-1)


def _output_parity(p_in: int, name: str) -> int:
    """Parity of act(x) for a scalar x of parity p_in (e3nn ``Activation`` rule)."""
    p_out = _activation_parity(name) if p_in == -1 else p_in
    if p_out == 0:
        raise ValueError(f"activation {name!r} is neither even nor odd; it cannot act on odd scalars")
    return p_out


def _merged_activations(irreps: o3.Irreps, names: Sequence[str]):
    """(name, factor or None) per block of ``irreps.simplify()``; factor None when within 1e-4 of 1 (e3nn)."""
    if len(names) != len(irreps):
        raise ValueError(f"{len(names)} activations for irreps {irreps}")
    merged = []
    for index, ((_, ir), name) in enumerate(zip(irreps, names)):
        if index and irreps[index - 1].ir == ir:
            if merged[-1] != name:
                raise ValueError("consecutive blocks of one irrep need the same activation")
            continue
        merged.append(name)
    result = []
    for name in merged:
        if name not in SCALAR_ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; valid: {sorted(SCALAR_ACTIVATIONS)}")
        factor = _second_moment_factor(name)
        result.append((name, None if abs(factor - 1.0) < 1e-4 else factor))
    return result


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
