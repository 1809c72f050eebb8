"""e3nn's ``Gate`` nonlinearity, written out (NequIP's convolution layers use it).

Gate(x) = act(scalars) ⊕ act(gates) · gated: the input irreps are (scalars + gates + gated) sorted
and simplified, as in e3nn; the output is the activated scalars followed by the gated blocks, each
l > 0 block multiplied by its activated gate scalar. Activation names index
``SCALAR_ACTIVATIONS``; each is normalised to unit second moment (e3nn ``normalize2mom``).
Written out rather than e3nn's module to slice columns instead of running e3nn's generated
extraction and element-wise tensor product; a test pins it against e3nn 0.6's ``Gate``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from e3nn import o3

from mlpot.models.equivariant.activations import SCALAR_ACTIVATIONS, activation_constant, activation_parity

__all__ = ["Gate"]


class Gate(torch.nn.Module):
    """e3nn's ``Gate`` (module docstring). forward(x (n, irreps_in.dim)) -> (n, irreps_out.dim)."""

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
    p_out = activation_parity(name) if p_in == -1 else p_in
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
        factor = activation_constant(name)
        result.append((name, None if factor == 1.0 else factor))
    return result

