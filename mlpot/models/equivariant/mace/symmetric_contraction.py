"""MACE's equivariant product basis: the symmetric contraction (MACE paper, Eqs. 10-11) and its linear.

For each atom n of element e, channel c and output irrep L (component M):

    out[n, c, L M] = sum_{nu=1..correlation} sum_{i_1..i_nu} sum_k U_nu^L[M, i_1..i_nu, k] W_nu^L[e, k, c]
                     x[n, c, i_1] ... x[n, c, i_nu]

with x the atom's A-features (one copy of each irrep 0e, 1o, ... per channel) and U the coupling
tensors of ``coupling.py``. Parameters and buffers keep mace-torch's names and shapes
(``contractions.{L}.weights_max`` for nu = correlation, ``weights.{j}`` for nu = correlation-1-j,
``U_matrix_{nu}``), so its state dicts load unchanged.

Evaluation (CPU-oriented; mace-torch contracts the dense U one index at a time, D^nu work per
channel): since x_{i_1}..x_{i_nu} is symmetric, U is summed over index permutations once
(``_tables``) and only the sorted index tuples t with a non-zero coefficient are kept (at
correlation 3 with D = 16: at most 816 instead of 4096). Per forward the weights are folded into
the coefficients, G[e, c, LM, t] = sum_k Usym[t, LM, k] W[e, k, c], the monomials
x^t are built degree by degree from the previous degree (one row gather and one product each) and
the result is one batched matrix product over channels per element and degree. Atoms arrive
sorted by element (``segments``), so each element is a contiguous slice.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from e3nn import o3

from mlpot.models.equivariant.mace.coupling import u_matrix
from mlpot.models.equivariant.mace.linear import ChannelLinear

__all__ = ["Contraction", "SymmetricContraction", "EquivariantProductBasis"]


class Contraction(torch.nn.Module):
    """Parameters and coupling tensors of one output irrep (mace-torch's ``Contraction``)."""

    def __init__(self, blocks_in: Sequence[o3.Irrep], irrep_out: o3.Irrep, correlation: int, n_elements: int,
                 channels: int, dtype: torch.dtype = torch.float64,
                 u_matrices: Optional[Dict[int, torch.Tensor]] = None):
        super().__init__()
        self.irrep_out, self.correlation = o3.Irrep(irrep_out), int(correlation)
        self.n_elements, self.channels = int(n_elements), int(channels)
        self.weights = torch.nn.ParameterList()
        for nu in range(self.correlation, 0, -1):
            u = u_matrix(blocks_in, self.irrep_out, nu, dtype) if u_matrices is None else u_matrices[nu].to(dtype)
            self.register_buffer(f"U_matrix_{nu}", u)
            n_paths = u.shape[-1]
            weight = torch.randn(self.n_elements, n_paths, self.channels, dtype=dtype) / n_paths
            if not bool(torch.any(u != 0)):  # no coupling path: a frozen zero weight, as mace-torch
                weight = torch.nn.Parameter(torch.zeros_like(weight), requires_grad=False)
            else:
                weight = torch.nn.Parameter(weight)
            if nu == self.correlation:
                self.weights_max = weight
            else:
                self.weights.append(weight)

    def u(self, nu: int) -> torch.Tensor:
        """U of degree nu as (dim_out, D**nu, n_paths)."""
        u = getattr(self, f"U_matrix_{nu}")
        u = u.unsqueeze(0) if self.irrep_out.dim == 1 else u
        return u.reshape(u.shape[0], -1, u.shape[-1])

    def weight(self, nu: int) -> torch.Tensor:
        """(n_elements, n_paths, channels) weights of degree nu."""
        return self.weights_max if nu == self.correlation else self.weights[self.correlation - 1 - nu]


def _symmetrize(u: torch.Tensor, dim: int, nu: int):
    """Sum (dim_out, D**nu, K) over index permutations: (sorted tuples (T, nu), coefficients (T, dim_out, K))."""
    tuples = np.indices((dim,) * nu).reshape(nu, -1).T
    keys, inverse = np.unique(np.sort(tuples, axis=1), axis=0, return_inverse=True)
    summed = torch.zeros(len(keys), u.shape[0], u.shape[-1], dtype=u.dtype)
    summed.index_add_(0, torch.from_numpy(inverse.reshape(-1)), u.transpose(0, 1))
    return keys, summed


class SymmetricContraction(torch.nn.Module):
    """x (n, D, C) of the irreps ``blocks_in`` -> (n, D_out, C) of the irreps ``blocks_out``."""

    def __init__(self, blocks_in: Sequence[o3.Irrep], blocks_out: Sequence[o3.Irrep], correlation: int,
                 n_elements: int, channels: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.blocks_in = [o3.Irrep(ir) for ir in blocks_in]
        self.blocks_out = [o3.Irrep(ir) for ir in blocks_out]
        self.dim_in = sum(ir.dim for ir in self.blocks_in)
        self.correlation, self.channels = int(correlation), int(channels)
        self.contractions = torch.nn.ModuleList(
            Contraction(self.blocks_in, ir, correlation, n_elements, channels, dtype) for ir in self.blocks_out)
        self._tables()
        self.register_load_state_dict_post_hook(lambda module, _: module._tables())

    def _tables(self) -> None:
        """Monomial tables and permutation-summed coefficients, from the current U buffers."""
        self.degrees: List[dict] = []
        per_degree = []
        for nu in range(1, self.correlation + 1):
            parts = [_symmetrize(c.u(nu).double(), self.dim_in, nu) for c in self.contractions]
            scale = max(float(s.abs().max()) for _, s in parts) if parts else 0.0
            used = set()
            for keys, summed in parts:
                nonzero = summed.abs().flatten(1).amax(1) > 1e-12 * max(scale, 1e-300)
                used.update(map(tuple, keys[nonzero.numpy()]))
            per_degree.append((parts, used))
        needed = [set() for _ in range(self.correlation + 1)]
        for nu in range(self.correlation, 0, -1):
            needed[nu] |= per_degree[nu - 1][1]
            if nu > 1:
                needed[nu - 1] |= {t[:-1] for t in needed[nu]}
        previous = {(i,): i for i in range(self.dim_in)}
        for nu in range(1, self.correlation + 1):
            monomials = sorted(previous) if nu == 1 else sorted(needed[nu])
            position = {t: k for k, t in enumerate(monomials)}
            entry = {"nu": nu, "coefficients": []}
            if nu > 1:
                entry["prefix"] = torch.tensor([previous[t[:-1]] for t in monomials], dtype=torch.long)
                entry["last"] = torch.tensor([t[-1] for t in monomials], dtype=torch.long)
            for contraction, (keys, summed) in zip(self.contractions, per_degree[nu - 1][0]):
                coeff = torch.zeros(len(monomials), summed.shape[1], summed.shape[2], dtype=torch.float64)
                rows = [(position[tuple(t)], k) for k, t in enumerate(keys) if tuple(t) in position]
                if rows:
                    target, source = zip(*rows)
                    coeff[list(target)] = summed[list(source)]
                entry["coefficients"].append(coeff.to(contraction.weights_max.dtype))
            entry["active"] = any(bool(torch.any(c != 0)) for c in entry["coefficients"])
            self.degrees.append(entry)
            previous = position

    def folded_weights(self, entry: dict) -> torch.Tensor:
        """G (n_elements, C, D_out, T): weights folded into the coefficients of one degree."""
        parts = [torch.einsum("tmk,ekc->ecmt", coeff.to(device=c.weights_max.device, dtype=c.weights_max.dtype),
                              c.weight(entry["nu"]))
                 for coeff, c in zip(entry["coefficients"], self.contractions)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def forward(self, x: torch.Tensor, segments: Optional[Sequence[int]],
                elements: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (n, D_in, C), rows sorted by element (``segments`` rows each) -> (n, D_out, C).
        ``segments`` None (a traced model: the counts are values of the data): every element's
        weights on every row, each row keeping its own element's (``elements`` (n,))."""
        folded = [self.folded_weights(entry) if entry["active"] else None for entry in self.degrees]
        if segments is None:
            per_element = torch.stack(self._contract(x.permute(1, 2, 0), folded, range(self.contractions[0].n_elements)))
            index = elements.view(1, 1, 1, -1).expand(1, *per_element.shape[1:])
            return per_element.gather(0, index).squeeze(0).permute(2, 1, 0)
        outputs, start = [], 0
        for element, count in enumerate(segments):
            if count:
                outputs.append(self._contract(x.narrow(0, start, count).permute(1, 2, 0), folded, [element])[0])
            start += count
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        return out.permute(2, 1, 0)

    def _contract(self, features: torch.Tensor, folded: List[Optional[torch.Tensor]],
                  elements: Sequence[int]) -> List[torch.Tensor]:
        """features (D, C, n) -> (C, D_out, n) with the weights of each of ``elements``;
        the monomials x^t, shared by all elements, are built once."""
        monomial, totals = features, [None] * len(elements)
        for entry, weights in zip(self.degrees, folded):
            if entry["nu"] > 1:
                prefix, last = entry["prefix"].to(features.device), entry["last"].to(features.device)
                monomial = monomial.index_select(0, prefix) * features.index_select(0, last)
            if weights is not None:
                for k, element in enumerate(elements):
                    term = torch.bmm(weights[element], monomial.transpose(0, 1))  # (C, D_out, n)
                    totals[k] = term if totals[k] is None else totals[k] + term
        return totals


class EquivariantProductBasis(torch.nn.Module):
    """mace-torch's ``EquivariantProductBasisBlock``: linear(symmetric contraction) (+ residual sc)."""

    def __init__(self, blocks_in: Sequence[o3.Irrep], blocks_out: Sequence[o3.Irrep], correlation: int,
                 n_elements: int, channels: int, use_sc: bool, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.use_sc = bool(use_sc)
        self.symmetric_contractions = SymmetricContraction(blocks_in, blocks_out, correlation, n_elements, channels, dtype)
        self.linear = ChannelLinear(blocks_out, channels, blocks_out, channels, dtype)

    def forward(self, x: torch.Tensor, sc: Optional[torch.Tensor], segments: Optional[Sequence[int]],
                elements: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.linear(self.symmetric_contractions(x, segments, elements))
        return out + sc if self.use_sc and sc is not None else out
