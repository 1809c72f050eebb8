"""e3nn-compatible equivariant linear maps and tensor products, written for CPU speed.

Each class computes exactly what an e3nn 0.6 module computes, with the same weight layout and
normalisation constants, so weights trained by e3nn-based codes (NequIP, MACE) load unchanged;
tests pin every class against its e3nn counterpart. They are written out rather than using
e3nn's generated code because on CPU the message-passing step is dominated by layout shuffles:
here an edge tensor product is one gather, one small batched matmul against Clebsch-Gordan
blocks contracted with Y(r̂) beforehand, one multiply by the radial weights and one scatter.

* ``IrrepsLinear`` = ``o3.Linear(irreps_in, irreps_out)`` without biases ("element" path
  normalisation: out_w = Σ_u W_uw x_u / sqrt(Σ fan-in)).
* ``EdgeTensorProductScatter`` = ``o3.TensorProduct(irreps_in, irreps_sh, irreps_mid,
  [(i, j, k, "uvu", True)], shared_weights=False)`` on gathered neighbour features, summed onto
  the centre atoms (NequIP's ``TensorProductScatter``).
* ``TypeSelfConnection`` = ``o3.FullyConnectedTensorProduct(irreps_in, f"{d}x0e", irreps_out)``
  with the scalar attributes of an atom given by its type (a per-type embedding table): the
  product is then a linear map per type, applied to the atoms of each type.

Layout: e3nn ``mul_ir`` (block k is (mul_k, 2 l_k + 1) row-major). n = atoms, E = edges.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from e3nn import o3

from mlpot.nn import scatter_sum

__all__ = ["IrrepsLinear", "EdgeTensorProductScatter", "TypeSelfConnection", "uvu_instructions"]


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


class IrrepsLinear(torch.nn.Module):
    """Equivariant linear map = e3nn ``o3.Linear(irreps_in, irreps_out)`` without biases.

    ``weight`` (weight_numel,) is laid out as e3nn's (blocks (mul_in, mul_out) per instruction).
    forward(x (n, irreps_in.dim), weight=None) -> (n, irreps_out.dim); ``weight`` overrides the
    parameter (used by ``TypeSelfConnection`` for per-type weights).
    """

    def __init__(self, irreps_in, irreps_out, dtype=None):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self._plan, self.weight_numel = _linear_plan(self.irreps_in, self.irreps_out)
        self._in_starts = [self.irreps_in[:k].dim for k in range(len(self.irreps_in))]
        self.weight = torch.nn.Parameter(torch.randn(self.weight_numel, dtype=dtype or torch.get_default_dtype()))

    def block_weight(self, weight: torch.Tensor, i_out: int) -> torch.Tensor:
        """(Σ mul_in, mul_out) normalised weight of output block ``i_out`` (inputs stacked in order)."""
        sources, norm = self._plan[i_out]
        mul_out = self.irreps_out[i_out].mul
        blocks = [weight.narrow(0, off, mul * mul_out).view(mul, mul_out) for _, off, mul in sources]
        return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, 0)) * norm

    def forward(self, x: torch.Tensor, weight: torch.Tensor = None) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        n = x.shape[0]
        out = []
        for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
            sources, _ = self._plan[i_out]
            if not sources or mul_out == 0:
                out.append(x.new_zeros(n, mul_out * ir_out.dim))
                continue
            d = ir_out.dim
            inputs = [x.narrow(1, self._in_starts[i_in], mul * d).view(n, mul, d) for i_in, _, mul in sources]
            stacked = inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)
            w = self.block_weight(weight, i_out)
            if d == 1:
                out.append(stacked.view(n, -1) @ w)
            else:  # (n, mul_in, d) -> (n, d, mul_in) @ (mul_in, mul_out) -> (n, mul_out, d)
                out.append(torch.matmul(stacked.transpose(1, 2), w).transpose(1, 2).reshape(n, mul_out * d))
        return out[0] if len(out) == 1 else torch.cat(out, 1)


def uvu_instructions(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps):
    """NequIP's edge tensor-product paths: every ir_in x ir_sh -> ir_out with ir_out in ``irreps_out``.

    Returns (irreps_mid sorted, instructions [(i_in, i_sh, i_mid)] in creation order): one mid
    block per path, sorted by irrep so that ``irreps_mid.simplify()`` merges equal irreps.
    """
    mid, instructions = [], []
    out_irs = {ir for _, ir in irreps_out}
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_edge) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_edge:
                if ir_out in out_irs:
                    instructions.append((i, j, len(mid)))
                    mid.append((mul, ir_out))
    irreps_mid, permutation, _ = o3.Irreps(mid).sort()
    return irreps_mid, [(i, j, permutation[k]) for i, j, k in instructions]


class EdgeTensorProductScatter(torch.nn.Module):
    """m_i = Σ_{edges (i, j)} TP_uvu(x_j, Y_ij; w_ij), summed onto the centre atoms i.

    Same values as e3nn ``TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions "uvu",
    shared_weights=False)`` with component irrep and element path normalisation (path weight
    sqrt(2 l_out + 1) / sqrt(mul_sh)), followed by a scatter-sum (NequIP ``TensorProductScatter``).
    Per-edge weights w (E, weight_numel) are laid out as e3nn's (per instruction, mul_in values).

    forward(x (n, irreps_in.dim), sh (E, irreps_sh.dim), weights (E, weight_numel), centre (E,),
    neighbour (E,)) -> (n, irreps_mid.dim). Input blocks are grouped by multiplicity; each group
    is one gather, one batched matmul and one scatter.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out):
        super().__init__()
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        self.irreps_mid, self.instructions = uvu_instructions(self.irreps_in, self.irreps_sh, o3.Irreps(irreps_out))
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"edge attributes must have multiplicity 1, got {self.irreps_sh}")
        weight_offsets, offset = [], 0
        for i_in, _, _ in self.instructions:
            weight_offsets.append(offset)
            offset += self.irreps_in[i_in].mul
        self.weight_numel = offset
        sh_starts = [self.irreps_sh[:k].dim for k in range(len(self.irreps_sh))]
        self._groups: List[Tuple[int, List[int], List[int]]] = []  # (mul, input blocks, instruction indices)
        for mul in sorted({mul for mul, _ in self.irreps_in if mul > 0}):
            blocks = [k for k, (m, _) in enumerate(self.irreps_in) if m == mul]
            paths = [p for p, (i_in, _, _) in enumerate(self.instructions) if i_in in blocks]
            if paths:
                self._groups.append((mul, blocks, paths))
        in_starts = [self.irreps_in[:k].dim for k in range(len(self.irreps_in))]
        self._group_inputs, self._group_cols, self._mid_sources = [], [], {}
        for g, (mul, blocks, paths) in enumerate(self._groups):
            self._group_inputs.append([(in_starts[b], self.irreps_in[b].ir.dim) for b in blocks])
            block_offsets = {b: sum(self.irreps_in[c].ir.dim for c in blocks[:k]) for k, b in enumerate(blocks)}
            width = sum(self.irreps_in[b].ir.dim for b in blocks)
            n_cols = sum(self.irreps_mid[self.instructions[p][2]].ir.dim for p in paths)
            coupling = torch.zeros(self.irreps_sh.dim, width, n_cols, dtype=torch.float64)
            weight_index = torch.zeros(mul, n_cols, dtype=torch.int64)
            col = 0
            for p in paths:
                i_in, i_sh, i_mid = self.instructions[p]
                l1, l2, l3 = self.irreps_in[i_in].ir.l, self.irreps_sh[i_sh].ir.l, self.irreps_mid[i_mid].ir.l
                d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
                w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)  # (d1, d2, d3)
                path_weight = math.sqrt(d3)  # component / element normalisation with mul_sh = 1
                coupling[sh_starts[i_sh]:sh_starts[i_sh] + d2, block_offsets[i_in]:block_offsets[i_in] + d1, col:col + d3] = \
                    path_weight * w3j.permute(1, 0, 2)
                weight_index[:, col:col + d3] = weight_offsets[p] + torch.arange(mul).unsqueeze(1)
                self._mid_sources[i_mid] = (g, col, d3)
                col += d3
            self.register_buffer(f"_coupling_{g}", coupling.reshape(self.irreps_sh.dim, width * n_cols), persistent=False)
            self.register_buffer(f"_weight_index_{g}", weight_index.reshape(-1), persistent=False)
            self._group_cols.append((width, n_cols))

    def _node_layout(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """(n, mul, Σ d) channel-major view of the input blocks of group g."""
        mul = self._groups[g][0]
        pieces = [x.narrow(1, start, mul * d).view(x.shape[0], mul, d) for start, d in self._group_inputs[g]]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 2)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor,
                neighbour: torch.Tensor) -> torch.Tensor:
        n, n_edges = x.shape[0], sh.shape[0]
        sums = []
        for g, (mul, _, _) in enumerate(self._groups):
            width, n_cols = self._group_cols[g]
            nodes = self._node_layout(x, g).reshape(n, mul * width)
            gathered = nodes.index_select(0, neighbour).view(n_edges, mul, width)
            coupling = (sh @ getattr(self, f"_coupling_{g}").to(sh.dtype)).view(n_edges, width, n_cols)
            messages = torch.bmm(gathered, coupling)  # (E, mul, n_cols)
            messages = messages * weights.index_select(1, getattr(self, f"_weight_index_{g}")).view(n_edges, mul, n_cols)
            sums.append(scatter_sum(messages.view(n_edges, mul * n_cols), centre, n).view(n, mul, n_cols))
        out = []
        for i_mid, (mul, ir) in enumerate(self.irreps_mid):
            g, col, d3 = self._mid_sources[i_mid]
            out.append(sums[g].narrow(2, col, d3).reshape(n, mul * d3))
        return torch.cat(out, 1) if len(out) > 1 else out[0]


class TypeSelfConnection(torch.nn.Module):
    """e3nn ``FullyConnectedTensorProduct(irreps_in, f"{n_attrs}x0e", irreps_out)`` applied to
    (x_i, a_{t_i}) where a_t are per-type scalar attributes (NequIP's self-connection with the
    type embedding as node attributes).

    With scalar attributes the product is linear in x with weights W_t = Σ_v a_tv W_v / sqrt(n_attrs)
    per type, so it is evaluated as one ``IrrepsLinear`` per type on that type's atoms.
    ``weight`` (weight_numel,) has e3nn's layout (per instruction (mul_in, n_attrs, mul_out)).
    forward(x (n, irreps_in.dim), types (n,), attributes (n_types, n_attrs)) -> (n, irreps_out.dim).
    """

    def __init__(self, irreps_in, n_attrs: int, irreps_out, dtype=None):
        super().__init__()
        self.linear = IrrepsLinear(irreps_in, irreps_out, dtype=dtype)
        self.irreps_in, self.irreps_out, self.n_attrs = self.linear.irreps_in, self.linear.irreps_out, int(n_attrs)
        del self.linear.weight  # the per-type weights are computed from ``weight``
        self.linear.register_parameter("weight", None)
        self.weight_numel = self.linear.weight_numel * self.n_attrs
        self.weight = torch.nn.Parameter(torch.randn(self.weight_numel, dtype=dtype or torch.get_default_dtype()))
        blocks, offset = [], 0  # e3nn's per-instruction blocks (mul_in, n_attrs, mul_out), in Linear's order
        for i_in, (mul_in, ir_in) in enumerate(self.irreps_in):
            for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
                if ir_in == ir_out:
                    blocks.append((offset, mul_in, mul_out))
                    offset += mul_in * self.n_attrs * mul_out
        self._blocks = blocks

    def type_weights(self, attributes: torch.Tensor) -> torch.Tensor:
        """(n_types, linear weight_numel): Σ_v a_tv W[u, v, w] / sqrt(n_attrs), per instruction."""
        per_block = []
        for offset, mul_in, mul_out in self._blocks:
            w = self.weight.narrow(0, offset, mul_in * self.n_attrs * mul_out).view(mul_in, self.n_attrs, mul_out)
            per_block.append(torch.einsum("uvw,tv->tuw", w, attributes).reshape(attributes.shape[0], mul_in * mul_out))
        return torch.cat(per_block, 1) / math.sqrt(self.n_attrs)

    def forward(self, x: torch.Tensor, types: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        weights = self.type_weights(attributes.to(x.dtype))
        n_types = attributes.shape[0]
        if n_types == 1:
            return self.linear(x, weights[0])
        order = torch.argsort(types, stable=True)
        counts = torch.bincount(types, minlength=n_types).tolist()
        pieces = [self.linear(part, weights[t]) for t, part in enumerate(x.index_select(0, order).split(counts)) if counts[t]]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(pieces, 0).index_select(0, inverse)
