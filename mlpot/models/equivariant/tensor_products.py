"""NequIP's edge tensor product: m_i = Σ_j TP_uvu(x_j, Y_ij; w_ij), written for CPU speed.

``EdgeTensorProductScatter`` computes exactly e3nn 0.6's ``o3.TensorProduct(irreps_in, irreps_sh,
irreps_mid, [(i, j, k, "uvu", True)], shared_weights=False)`` on gathered neighbour features,
summed onto the centre atoms (NequIP's ``TensorProductScatter``), with e3nn's weight layout and
normalisation constants, so weights trained by NequIP load unchanged; a test pins it against e3nn.
It is written out because on CPU the message-passing step is dominated by layout shuffles: here an
edge tensor product is one gather, one small batched matmul against Clebsch-Gordan blocks
contracted with Y(r̂) beforehand, one multiply by the radial weights and one scatter, over
unordered pairs when the neighbour list is full. Custom autograd functions replace autograd's
reductions over short axes, which are slow on CPU; they stay differentiable to any order (force
training needs second derivatives).

MACE's convolution (``mace.tensor_product.ChannelwiseTensorProduct``) is the same contraction
computed another way (atoms' incoming edges in padded slots, one batched product per path over
(neighbour, m1); uniform channels): each is the faster layout for its model (NequIP mixes
multiplicities and uses the pair symmetry of full neighbour lists; MACE's uniform channels fit
the padded slots), so both are kept and ``tests/test_equivariant_blocks.py`` pins them together.
``uvu_instructions`` lists the paths for both.

Layout: e3nn ``mul_ir`` (block k is (mul_k, 2 l_k + 1) row-major). n = atoms, E = edges.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

from mlpot.nn import scatter_sum

__all__ = ["EdgeTensorProductScatter", "uvu_instructions"]


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


def _dot_components(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_m a[..., m, :] b[..., m, :] -> (..., u): a sum over the component axis (-2) done as
    adds of contiguous-row slices (faster on CPU than a reduction over a short axis)."""
    product = a * b
    out = product.select(-2, 0)
    for k in range(1, product.shape[-2]):
        out = out + product.select(-2, k)
    return out


class _ScaleComponents(torch.autograd.Function):
    """out[..., m, u] = x[..., m, u] w[..., u]: per-channel weights broadcast over the components m
    (and over leading axes of x that w lacks).
    Its gradient for w is ``_dot_components``; differentiable to any order."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w.unsqueeze(-2)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = _ScaleComponents.apply(grad, w) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = _DotComponents.apply(grad, x)
            if grad_w.shape != w.shape:  # w was broadcast over leading axes of x
                grad_w = grad_w.sum_to_size(w.shape)
        return grad_x, grad_w


class _DotComponents(torch.autograd.Function):
    """out[..., u] = Σ_m a[..., m, u] b[..., m, u]; differentiable to any order through ``_ScaleComponents``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _dot_components(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a = _ScaleComponents.apply(b, grad) if ctx.needs_input_grad[0] else None
        grad_b = _ScaleComponents.apply(a, grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


class EdgeTensorProductScatter(torch.nn.Module):
    """m_i = Σ_{edges (i, j)} TP_uvu(x_j, Y_ij; w_ij), summed onto the centre atoms i.

    Same values as e3nn ``TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions "uvu",
    shared_weights=False)`` with component irrep and element path normalisation (path weight
    sqrt(2 l_out + 1) / sqrt(mul_sh)), followed by a scatter-sum (NequIP ``TensorProductScatter``).

    How it is computed (CPU-bound by memory traffic, so the layout matters):

    * edge tensors are channels-last, (E, components, u), so every elementwise step runs over
      contiguous rows of the u channels;
    * input blocks are grouped by multiplicity u; per group the neighbour features are gathered once
      and one batched matmul of the Clebsch-Gordan blocks (contracted with Y beforehand) against them
      gives the products of every path; paths are then grouped by output dimension d, multiplied by
      their weights (E, n_paths, u) broadcast over d, and scattered;
    * with ``constant_l0`` (the l = 0 edge attribute is identically 1, as for e3nn spherical
      harmonics with component or norm normalisation) paths through it skip the matmul: their
      message is the neighbour's block times the weights;
    * ``forward(..., both_directions=True)`` takes unordered pairs: each listed edge also stands for
      its reverse, whose coupling is the same up to (-1)^l_sh per path (Y_l(-r̂) = (-1)^l Y_l(r̂)),
      so Y, the coupling and the weights are computed once per pair.

    Per-edge weights come in the internal layout ``weights_e3nn[:, weight_permutation]`` (e3nn's
    (path, u) blocks regrouped); a weight producer (the radial MLP) applies the permutation to its
    last layer's columns at no per-edge cost; ``e3nn_weights`` converts.

    forward(x (n, irreps_in.dim), sh (E, irreps_sh.dim), weights (E, weight_numel) internal layout,
    centre (E,), neighbour (E,), both_directions) -> (n, irreps_mid.dim), e3nn mul_ir layout.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out, constant_l0: bool = False):
        super().__init__()
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        self.constant_l0 = bool(constant_l0)
        self.irreps_mid, self.instructions = uvu_instructions(self.irreps_in, self.irreps_sh, o3.Irreps(irreps_out))
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"edge attributes must have multiplicity 1, got {self.irreps_sh}")
        e3nn_offsets, offset = [], 0
        for i_in, _, _ in self.instructions:
            e3nn_offsets.append(offset)
            offset += self.irreps_in[i_in].mul
        self.weight_numel = offset
        in_starts = [self.irreps_in[:k].dim for k in range(len(self.irreps_in))]
        self._groups = []  # (mul, [(input start, d1)], width, [(d3, n dense paths, [(input block, coefficient)])])
        self._mid_sources = {}  # mid block -> (group, block, path position)
        permutation = []
        for mul in sorted({mul for mul, _ in self.irreps_in if mul > 0}):
            paths = [p for p, (i_in, _, _) in enumerate(self.instructions) if self.irreps_in[i_in].mul == mul]
            blocks = sorted({self.instructions[p][0] for p in paths})  # only inputs that feed a path are gathered
            if not paths:
                continue
            g = len(self._groups)
            block_offsets = {b: sum(self.irreps_in[c].ir.dim for c in blocks[:k]) for k, b in enumerate(blocks)}
            width = sum(self.irreps_in[b].ir.dim for b in blocks)
            out_blocks, couplings, parities = [], [], []
            for d3 in sorted({self.irreps_mid[self.instructions[p][2]].ir.dim for p in paths}):
                same_d3 = [p for p in paths if self.irreps_mid[self.instructions[p][2]].ir.dim == d3]
                # paths through a constant Y_0 = 1 need no Clebsch-Gordan product: the message is the
                # neighbour's block times a constant; the others go through the coupling matmul
                const = [(p, self._constant_coefficient(p)) for p in same_d3
                         if self.constant_l0 and self.irreps_sh[self.instructions[p][1]].ir.l == 0]
                const = [(p, c) for p, c in const if c is not None]
                dense = [p for p in same_d3 if p not in {q for q, _ in const}]
                chosen = dense + [p for p, _ in const]
                if dense:
                    couplings.append(self._coupling(dense, block_offsets, width, d3))
                    # rows of the reverse edge's coupling: (-1)^l_sh per path (Y_l(-r̂) = (-1)^l Y_l(r̂))
                    parities += [(-1.0) ** self.irreps_sh[self.instructions[p][1]].ir.l for p in dense for _ in range(d3)]
                for position, p in enumerate(chosen):
                    self._mid_sources[self.instructions[p][2]] = (g, len(out_blocks), position)
                const_inputs = [(blocks.index(self.instructions[p][0]), c) for p, c in const]
                out_blocks.append((d3, len(dense), const_inputs))
                permutation += [e3nn_offsets[p] + u for p in chosen for u in range(mul)]  # (n_paths, u) row-major
            if couplings:  # one coupling matmul per group: rows (d3 block, path, m3) of every dense path
                self.register_buffer(f"_coupling_{g}", torch.cat(couplings, 1).reshape(self.irreps_sh.dim, -1), persistent=False)
                parity = torch.tensor([[1.0] * len(parities), parities], dtype=torch.float64)
                self.register_buffer(f"_parity_{g}", parity.view(2, 1, -1, 1), persistent=False)
            self._groups.append((mul, [(in_starts[b], self.irreps_in[b].ir.dim) for b in blocks], width, out_blocks))
        self.register_buffer("weight_permutation", torch.tensor(permutation, dtype=torch.int64), persistent=False)
        self._weight_sizes = [(n_dense + len(const)) * mul for mul, _, _, blocks in self._groups for _, n_dense, const in blocks]

    def _constant_coefficient(self, p: int):
        """c with message = c · x_block for a path through Y_0 (w3j(l, 0, l) = δ / sqrt(2l+1)), or None."""
        i_in, _, i_mid = self.instructions[p]
        l1, l3 = self.irreps_in[i_in].ir.l, self.irreps_mid[i_mid].ir.l
        w3j = o3.wigner_3j(l1, 0, l3, dtype=torch.float64)[:, 0, :] * math.sqrt(2 * l3 + 1)
        if l1 != l3 or not torch.allclose(w3j, w3j[0, 0] * torch.eye(2 * l1 + 1, dtype=torch.float64), atol=1e-12):
            return None
        return float(w3j[0, 0])

    def _coupling(self, paths, block_offsets, width: int, d3: int) -> torch.Tensor:
        """(d_sh, n_paths * d3, width): Clebsch-Gordan blocks times path weights, to contract with Y."""
        sh_starts = [self.irreps_sh[:k].dim for k in range(len(self.irreps_sh))]
        coupling = torch.zeros(self.irreps_sh.dim, len(paths), d3, width, dtype=torch.float64)
        for position, p in enumerate(paths):
            i_in, i_sh, _ = self.instructions[p]
            l1, l2 = self.irreps_in[i_in].ir.l, self.irreps_sh[i_sh].ir.l
            w3j = o3.wigner_3j(l1, l2, (d3 - 1) // 2, dtype=torch.float64)  # (d1, d2, d3)
            rows = slice(sh_starts[i_sh], sh_starts[i_sh] + 2 * l2 + 1)
            cols = slice(block_offsets[i_in], block_offsets[i_in] + 2 * l1 + 1)
            coupling[rows, position, :, cols] = math.sqrt(d3) * w3j.permute(1, 2, 0)  # component/element normalisation
        return coupling.reshape(self.irreps_sh.dim, len(paths) * d3, width)

    def e3nn_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Weights in e3nn's layout (E, weight_numel) -> the internal layout ``forward`` takes."""
        return weights.index_select(-1, self.weight_permutation)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor,
                neighbour: torch.Tensor, both_directions: bool = False) -> torch.Tensor:
        """Messages summed onto centres, (n, irreps_mid.dim). With ``both_directions`` every listed
        edge (i, j) also stands for its reverse (j, i) (a list of unordered pairs of a full neighbour
        list): the reverse message uses Y(-r̂) = (-1)^l Y(r̂) and the same weights, so Y, the
        Clebsch-Gordan contraction and the weights are computed once per pair."""
        n, n_edges = x.shape[0], sh.shape[0]
        # split (not narrow): its gradient is one concatenation instead of a zero-filled copy per block
        weight_blocks = iter(weights.split(self._weight_sizes, dim=1))
        n_directions = 2 if both_directions else 1
        targets = torch.cat([centre, neighbour]) if both_directions else centre
        sources = torch.cat([neighbour, centre]) if both_directions else neighbour
        sums = []
        for g, (mul, inputs, width, out_blocks) in enumerate(self._groups):
            pieces = [x.narrow(1, start, mul * d).view(n, mul, d).transpose(1, 2) for start, d in inputs]
            nodes = (pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)).reshape(n, width * mul)
            gathered = nodes.index_select(0, sources).view(n_directions * n_edges, width, mul)
            # per input block (split, not narrow: the gradient is one concatenation)
            gathered_blocks = gathered.split([d for _, d in inputs], dim=1) if len(inputs) > 1 else [gathered]
            dense_rows = [n_dense * d3 for d3, n_dense, _ in out_blocks if n_dense]
            if dense_rows:
                rows = sum(dense_rows)
                coupling = (sh @ getattr(self, f"_coupling_{g}").to(sh.dtype)).view(n_edges, rows, width)
                if both_directions:  # the reverse edge's coupling: Y(-r̂) = (-1)^l Y(r̂), a sign per path
                    coupling = (coupling.unsqueeze(0) * getattr(self, f"_parity_{g}").to(sh.dtype)).view(2 * n_edges, rows, width)
                # one matmul for all dense paths of the group (a bmm with a size-1 dimension, also in its
                # gradients, is far slower on CPU); a scalar input block is an outer product
                products = coupling * gathered if width == 1 else torch.bmm(coupling, gathered)
                dense_blocks = iter(products.split(dense_rows, dim=1) if len(dense_rows) > 1 else [products])
            group_sums = []
            for d3, n_dense, const_inputs in out_blocks:
                path_weights = next(weight_blocks).view(n_edges, n_dense + len(const_inputs), mul)
                parts = path_weights.split([n_dense] * bool(n_dense) + [1] * len(const_inputs), dim=1)
                summed = []
                if n_dense:
                    messages = next(dense_blocks).reshape(n_directions, n_edges, n_dense, d3, mul)
                    messages = _ScaleComponents.apply(messages, parts[0])
                    summed.append(scatter_sum(messages.view(n_directions * n_edges, n_dense * d3 * mul), targets, n)
                                  .view(n, n_dense, d3, mul))
                for (block, coefficient), weight in zip(const_inputs, parts[1 if n_dense else 0:]):
                    weight = weight if coefficient == 1.0 else weight * coefficient
                    messages = _ScaleComponents.apply(gathered_blocks[block].view(n_directions, n_edges, 1, d3, mul), weight)
                    summed.append(scatter_sum(messages.view(n_directions * n_edges, d3 * mul), targets, n).view(n, 1, d3, mul))
                group_sums.append(summed[0] if len(summed) == 1 else torch.cat(summed, 1))
            sums.append(group_sums)
        out = []
        for i_mid, (mul, ir) in enumerate(self.irreps_mid):
            g, block, position = self._mid_sources[i_mid]
            out.append(sums[g][block].select(1, position).transpose(1, 2).reshape(n, mul * ir.dim))
        return torch.cat(out, 1) if len(out) > 1 else out[0]
