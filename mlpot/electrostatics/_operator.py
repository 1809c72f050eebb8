"""The Coulomb field of a batch as a linear operator of the density, geometry computed once.

A self-consistent loop evaluates the potentials of many densities on one geometry. Potentials
and gradients are linear in the multipole coefficients, ``[V; G] = K(r) p``, so
:class:`FieldOperator` builds what depends on the geometry once per batch and applies it to each
new density:

* isolated frames (``realspace`` handling) with at most ``dense_max_atoms`` atoms: the dense
  per-frame interaction blocks ``K_f`` (4 n_f x 4 n_f per receiver width, from the pair kernels of
  ``_kernels.py``), stacked over frames padded to the largest one; one batched matmul per
  receiver per application. Memory sum_f n_f^2: linear in the frames of a batch, never a batch-wide matrix.
  Only the ``block_receivers`` leading receivers (those applied at every SCF step) are padded
  blocks; the others (energy, ESPs: applied once) are pair sums over the same pair entries. The
  pair entries (R, P, 4, 4) are evaluated once per unordered pair for all receivers by
  :class:`_PairEntries`, whose first derivative in the separations is analytic (T3).
* every other frame (periodic, slab, molecule in box, or large): the frame solver
  (``_solver.frame_fields``: Ewald / PME / real space) called on each application (matrix-free).

Both paths are differentiable in positions and cell (forces, stress) and in the density; the
dense path is pinned to the frame solver by ``tests/test_fixed_point_operator.py``. Dense blocks
take position derivatives in one of two ways: while a batch's blocks are at most
``graph_block_bytes`` (16 MiB: ~100-atom frames), through the autograd graph of their build
(fastest; force training keeps ~20x the blocks' size); beyond, the blocks are constants and
:class:`_DenseFields` takes the position derivatives from pair sums recomputed in the backward
(``_realspace.realspace_potentials``, memory linear in the atoms; issue #14: one 260-atom frame of
force training 686 -> 339 MB).
Receivers, units and the stored order are those of ``_solver.py``: potentials V (V) and Cartesian
gradients G (V/Å) at every atom; densities (n_atoms, (L+1)^2) [Q, d_y, d_z, d_x].
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import BATCH, CELL, PBC, POSITIONS, PTR
from mlpot.electrostatics._coulomb import resolve_handling
from mlpot.electrostatics._density import gaussian_kernel_exponent, split_multipoles
from mlpot.electrostatics._kernels import erf_radial, erf_radial_at_zero, erf_radial_third
from mlpot.electrostatics._realspace import all_pairs, realspace_potentials
from mlpot.electrostatics._solver import CoulombOptions, Receiver, frame_fields
from mlpot.nn import is_tracing
from mlpot.units import COULOMB_CONSTANT

__all__ = ["FieldOperator", "padded_index", "frame_energy_from_fields"]

GRAPH_BLOCK_BYTES = 16 * 2**20  # dense blocks of a batch up to this size are built with an autograd graph


def padded_index(batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, int]:
    """(flat index frame * n_max + local of each atom (n_atoms,), n_max): the padded layout."""
    ptr, frames = batch[PTR], batch[BATCH]
    n_max = int((ptr[1:] - ptr[:-1]).max()) if ptr.numel() > 1 else 0
    local = torch.arange(frames.shape[0], device=frames.device) - ptr.index_select(0, frames)
    return frames * n_max + local, n_max


def _dense_blocks(entries: torch.Tensor, pairs: Tuple[torch.Tensor, torch.Tensor], slots: torch.Tensor,
                  n_frames: int, n_max: int, diagonals: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Interaction blocks of isolated frames padded to ``n_max`` atoms: one (n_frames, 4 n, 4 n) per receiver.

    entries: (R, P, 4, 4) of the pairs (``_PairEntries``); pairs: (index_i, index_j) every unordered
    pair of atoms of one dense frame (batch indices, i < j, (n_pairs,) each); slots: (n_atoms,)
    padded slot frame * n_max + local of each atom (-1 outside the dense frames); diagonals: (R, 4)
    self-terms or None. Row block of atom i, entry [V, Gx, Gy, Gz]; column atom j, entry [q, dx, dy,
    dz]; the block of (j, i) is the transpose of that of (i, j) (bit for bit: every entry is even or
    odd in s), the diagonal (d = 0) carries the self-terms. Scattered into the zero-padded blocks
    by one index_copy per receiver of the entries' rows (4 values each, at (frame, atom i, row,
    atom j) of the (n_frames, n, 4, n) layout): no (n_frames, n_max, n_max) intermediates, whose
    backward (forces) and double backward (force training) would run over the padding.
    """
    index_i, index_j = pairs
    n_rec = entries.shape[0]
    slot_i, slot_j = slots.index_select(0, index_i), slots.index_select(0, index_j)
    # first row (component 0) of each 4 x 4 block in the (n_frames n 4 n, 4) view: 4 n slot_row + local_column
    starts = [4 * n_max * slot_i + slot_j % n_max, 4 * n_max * slot_j + slot_i % n_max]
    values = [entries, entries.transpose(-1, -2)]
    if diagonals is not None:  # self-terms on the diagonal: constants
        real = slots[slots >= 0]
        starts.append(4 * n_max * real + real % n_max)
        values.append(torch.diag_embed(diagonals.to(entries.dtype)).unsqueeze(1).expand(n_rec, real.shape[0], 4, 4))
    index = (torch.cat(starts).unsqueeze(1) + n_max * torch.arange(4, device=slots.device)).flatten()
    rows = torch.cat(values, dim=1).reshape(n_rec, -1, 4)  # (R, 4 (2 P + n_self), 4)
    # one tensor per receiver, each its own scatter: an SCF step reads the feature receivers only,
    # and the backward gathers each block's gradient without first stacking them into one
    return [entries.new_zeros(n_frames * 4 * n_max * n_max, 4).index_copy_(0, index, r).view(n_frames, 4 * n_max, 4 * n_max)
            for r in rows]


def _self_diagonals(exponents: Sequence[float], include_self: Sequence[bool], like: torch.Tensor) -> Optional[torch.Tensor]:
    """Self-terms diag(T0(0), -T1(0), -T1(0), -T1(0)) per receiver (R, 4) (zeros without), None if none has any."""
    if not any(include_self):
        return None
    rows = []
    for a, keep in zip(exponents, include_self):
        z = [COULOMB_CONSTANT * v for v in erf_radial_at_zero(float(a))]
        rows.append([z[0], -z[1], -z[1], -z[1]] if keep else [0.0] * 4)
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


@functools.lru_cache(maxsize=256)
def _frame_pairs(n_atoms: int, device: torch.device) -> torch.Tensor:
    """(2, n_pairs) local indices (i < j) of every unordered pair of an n-atom frame (cached per size)."""
    return torch.stack(all_pairs(n_atoms, device))


def _radial(distance: torch.Tensor, exponents: Sequence[float]):
    """k (T0, T1, T2) each (R, P) of ``erf(a d)/d`` for the receivers' exponents a (R,); distance (P,) Å."""
    exponent = _radial_exponents(exponents, distance)
    return [COULOMB_CONSTANT * t for t in erf_radial(distance.unsqueeze(0), exponent)]


def _entry_formula(separation: torch.Tensor, exponents: Sequence[float], radial=None) -> torch.Tensor:
    """Pair entries (R, P, 4, 4) of separations s = r_i - r_j (P, 3) Å: rows [V, Gx, Gy, Gz] at i,
    columns [q, dx, dy, dz] of j: ``V = k (T0 q - T1 s.d)``, ``G = k ((T1 q - T2 s.d) s - T1 d)``.
    Stacked component by component (faster here than broadcast products over (R, P, 4, 4))."""
    distance = torch.sqrt((separation * separation).sum(-1))
    t0, t1, t2 = radial if radial is not None else _radial(distance, exponents)  # (R, P)
    t1_s = (t1.unsqueeze(-1) * separation).unbind(-1)  # 3 x (R, P)
    t2_s = (t2.unsqueeze(-1) * separation).unbind(-1)
    s = separation.unbind(-1)  # 3 x (P,)
    # G_a = T1 s_a q - sum_b H_ab d_b, H_ab = T2 s_a s_b + T1 delta_ab (symmetric: 6 products)
    hessian = {(a, b): -(t2_s[a] * s[b]) - t1 if a == b else -(t2_s[a] * s[b]) for a in range(3) for b in range(a, 3)}
    rows = [torch.stack([t0, -t1_s[0], -t1_s[1], -t1_s[2]], -1)]
    rows += [torch.stack([t1_s[a], *(hessian[min(a, b), max(a, b)] for b in range(3))], -1) for a in range(3)]
    return torch.stack(rows, -2)


class _PairEntries(torch.autograd.Function):
    """``_entry_formula`` with an analytic first derivative in the separations: with incoming W
    (R, P, 4, 4) = [[w00, w_r], [w_c, M]] and T_(n+1) = T_n'/d,

        dL/ds = sum_R s (w00 T1 + T2 ((w_c - w_r).s - tr M) - T3 s.M s) + T1 (w_c - w_r) - T2 (M + M^T) s

    (a dozen operations on (R, P) tensors instead of the formula's graph). A backward that builds
    a graph (force training: second derivatives) differentiates the formula itself.
    """

    @staticmethod
    def forward(ctx, separation, exponents):
        distance = torch.sqrt((separation * separation).sum(-1))
        t0, t1, t2 = _radial(distance, exponents)
        ctx.exponents = exponents
        ctx.save_for_backward(separation, distance, t1, t2)
        return _entry_formula(separation, exponents, (t0, t1, t2))

    @staticmethod
    def backward(ctx, grad):
        separation, distance, t1, t2 = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the formula's own graph, to any order
            with torch.enable_grad():
                entries = _entry_formula(separation, ctx.exponents)
                (out,) = torch.autograd.grad(entries, separation, grad, create_graph=True)
            return out, None
        t3 = COULOMB_CONSTANT * erf_radial_third(distance.unsqueeze(0), _radial_exponents(ctx.exponents, distance))
        s4 = torch.cat([separation.new_zeros(separation.shape[0], 1), separation], dim=1)  # (P, 4): [0, s]
        rows = torch.matmul(grad, s4.unsqueeze(-1)).squeeze(-1)  # (R, P, 4): [w_r.s, M s]
        columns = torch.matmul(s4.unsqueeze(-2), grad).squeeze(-2)  # [w_c.s, M^T s]
        diff = grad[..., 1:, 0] - grad[..., 0, 1:]  # w_c - w_r
        trace = grad.diagonal(dim1=-2, dim2=-1)[..., 1:].sum(-1)
        s = separation.unsqueeze(0)
        scalar = grad[..., 0, 0] * t1 + t2 * (columns[..., 0] - rows[..., 0] - trace) - t3 * (rows * s4).sum(-1)
        out = scalar.unsqueeze(-1) * s + t1.unsqueeze(-1) * diff - t2.unsqueeze(-1) * (rows[..., 1:] + columns[..., 1:])
        return out.sum(0), None


def _pair_entries(separation: torch.Tensor, exponents: Tuple[float, ...]) -> torch.Tensor:
    """Pair entries (R, P, 4, 4) of ``_entry_formula``: by :class:`_PairEntries` (analytic first
    derivative), or by the formula's own graph under torch.func transforms and tracing."""
    if is_tracing() or torch._C._are_functorch_transforms_active():
        return _entry_formula(separation, exponents)
    return _PairEntries.apply(separation, exponents)


def _radial_exponents(exponents: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(exponents), dtype=like.dtype, device=like.device).view(-1, 1)


class FieldOperator:
    """Potentials and gradients of any density on one batch geometry (module docstring).

    batch: collated dict with POSITIONS (n_atoms, 3) Å, CELL (n_frames, 3, 3) Å, PBC, PTR, BATCH;
    method: the batch-level ``electrostatic_pbc_method`` (``batch_method`` applied); sigma: density
    width Å; receivers: (width Å, include_self) pairs; dense_max_atoms: largest isolated frame
    stored as a dense block (0: always matrix-free); block_receivers: how many leading receivers
    the dense frames hold as padded blocks (default all: those applied repeatedly, an SCF's
    features); the others (applied once or twice: energy, ESPs) apply their pair entries directly
    (pair sums: no padded block to fill, scatter and differentiate).
    """

    def __init__(self, batch: Dict[str, torch.Tensor], method: str, sigma: float,
                 receivers: Sequence[Tuple[float, bool]], options: CoulombOptions = CoulombOptions(),
                 dense_max_atoms: int = 400, graph_block_bytes: float = GRAPH_BLOCK_BYTES,
                 block_receivers: Optional[int] = None):
        self.positions = batch[POSITIONS]
        self.cells = batch[CELL].to(self.positions.dtype)
        self.ptr = [int(v) for v in batch[PTR].tolist()]
        self.sigma, self.options = float(sigma), options
        self.receivers = [Receiver(float(w), bool(own)) for w, own in receivers]
        self.n_blocks = len(self.receivers) if block_receivers is None else min(int(block_receivers), len(self.receivers))
        self.n_atoms = self.positions.shape[0]
        sizes = [hi - lo for lo, hi in zip(self.ptr[:-1], self.ptr[1:])]
        pbcs, cells = batch[PBC].tolist(), self.cells.unbind(0)  # per frame, without a dispatch per element
        self.handlings = [resolve_handling(method, pbcs[f], cells[f], frame=f) for f in range(len(sizes))]
        dense = [f for f, (h, n) in enumerate(zip(self.handlings, sizes)) if h == "realspace" and 0 < n <= dense_max_atoms]
        self.free_frames = [f for f in range(len(sizes)) if f not in set(dense)]
        self.dense_frames = dense
        # blocks with an autograd graph only while small: force training keeps ~20x their size
        block_bytes = 16 * len(self.receivers) * self.positions.element_size() * len(dense) * max([sizes[f] for f in dense] or [0]) ** 2
        self.graph_blocks = bool(dense) and torch.is_grad_enabled() and self.positions.requires_grad and block_bytes <= graph_block_bytes
        self._build_dense(dense, sizes)

    def _build_dense(self, frames: List[int], sizes: List[int]) -> None:
        self.blocks, self.pair_entries, self.dense_identity = None, None, False
        if not frames:
            return
        device = self.positions.device
        self.n_max = max(sizes[f] for f in frames)
        # atoms, padded slots and unordered pairs of the dense frames: a few batched operations, not per frame
        counts = torch.tensor([sizes[f] for f in frames], device=device)
        first = torch.tensor([self.ptr[f] for f in frames], device=device)
        if len(frames) == len(sizes):  # every frame dense: the batch's atoms, in order
            atoms = torch.arange(self.n_atoms, device=device)
        else:
            atoms = torch.cat([torch.arange(self.ptr[f], self.ptr[f + 1], device=device) for f in frames])
        rank = torch.repeat_interleave(torch.arange(len(frames), device=device), counts)
        slot = rank * self.n_max + atoms - first.index_select(0, rank)
        self.dense_atoms, self.dense_slots = atoms, slot
        pairs = [_frame_pairs(sizes[f], device) for f in frames]
        offsets = torch.repeat_interleave(first, torch.tensor([p.shape[1] for p in pairs], device=device))
        index = torch.cat(pairs, dim=1) + offsets
        self.dense_pairs = (index[0], index[1], None)
        # every frame dense and all of the same size: padded layout = batch layout (no copies)
        self.dense_identity = len(frames) == len(sizes) and all(sizes[f] == self.n_max for f in frames)
        self.exponents = [gaussian_kernel_exponent(self.sigma, r.width) for r in self.receivers]
        slots = torch.full((self.n_atoms,), -1, dtype=torch.long, device=device).index_copy(0, atoms, slot)
        self.diagonals = _self_diagonals(self.exponents, [r.include_self for r in self.receivers], self.positions)
        if self.diagonals is not None:  # (R, n_atoms, 4): the self-terms of the pair receivers, zero outside dense frames
            mask = torch.zeros(self.n_atoms, 1, dtype=self.positions.dtype, device=device).index_fill(0, atoms, 1.0)
            self.self_terms = self.diagonals.unsqueeze(1) * mask
        with torch.set_grad_enabled(self.graph_blocks):  # else constants: position derivatives by _DenseFields
            positions = self.positions if self.graph_blocks else self.positions.detach()
            index_i, index_j = self.dense_pairs[:2]
            separation = positions.index_select(0, index_i) - positions.index_select(0, index_j)  # (P, 3): r_i - r_j
            entries = _pair_entries(separation, tuple(self.exponents))  # (R, P, 4, 4)
            nb = self.n_blocks
            diagonals = self.diagonals[:nb] if self.diagonals is not None and bool(self.diagonals[:nb].any()) else None
            self.blocks = _dense_blocks(entries[:nb], (index_i, index_j), slots, len(frames), self.n_max, diagonals) if nb else []
            self.pair_entries = entries[nb:] if nb < len(self.receivers) else None

    def state(self) -> List[torch.Tensor]:
        """The geometry tensors the fields depend on: [blocks (one per block receiver) and pair
        entries of the others (when built with a graph), positions, cells]; pass substitutes of the
        same values (e.g. shifted by zero-valued perturbations: implicit gradients) to :meth:`fields`
        to differentiate with respect to them."""
        return self._graph_tensors() + [self.positions, self.cells]

    def _graph_tensors(self) -> List[torch.Tensor]:
        if not self.graph_blocks:
            return []
        return list(self.blocks) + ([self.pair_entries] if self.pair_entries is not None else [])

    def fields(self, multipoles: torch.Tensor, select: Optional[Tuple[int, int]] = None,
               state: Optional[Sequence[torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Potentials (n_sel, n_atoms) V and Cartesian gradients (n_sel, n_atoms, 3) V/Å.

        multipoles: (n_atoms, (L+1)^2) stored order [Q, d_y, d_z, d_x] (L <= 1); select: receivers
        [start, stop) (default all); state: substitute for :meth:`state`.
        """
        charges, dipoles = split_multipoles(multipoles.to(self.positions.dtype))
        out = self.apply(torch.cat([charges[:, None], dipoles], dim=1), select, state)
        return out[..., 0], out[..., 1:]

    def apply(self, cartesian: torch.Tensor, select: Optional[Tuple[int, int]] = None,
              state: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """[V, G_x, G_y, G_z] (n_sel, n_atoms, 4) of a density given as [q, d_x, d_y, d_z] (n_atoms, 4)
        (e, e·Å): the operator itself, without reordering (the SCF hot path)."""
        blocks, pair_entries, positions, cells = self.blocks, self.pair_entries, self.positions, self.cells
        if state is not None:
            n_graph = len(self._graph_tensors())
            if n_graph:
                blocks = list(state[:len(self.blocks)])
                pair_entries = state[len(self.blocks)] if self.pair_entries is not None else None
            positions, cells = state[n_graph], state[n_graph + 1]
        start, stop = select if select is not None else (0, len(self.receivers))
        if blocks is None:
            out = cartesian.new_zeros(stop - start, self.n_atoms, 4)
        elif not self.graph_blocks and torch.is_grad_enabled() and positions.requires_grad:
            out = _DenseFields.apply(self, (start, stop), cartesian, positions)
        else:
            out = self.dense_product(cartesian, (start, stop), blocks, pair_entries)
        receivers = self.receivers[start:stop]
        for frame in self.free_frames:  # frames, each with its own k-set / neighbour list
            lo, hi = self.ptr[frame], self.ptr[frame + 1]
            v, g = frame_fields(positions[lo:hi], cartesian[lo:hi, 0], cartesian[lo:hi, 1:], cells[frame],
                                self.handlings[frame], self.sigma, receivers, self.options)
            block = torch.cat([v[..., None], g], -1)
            out = out.index_copy(1, torch.arange(lo, hi, device=out.device), block)
        return out

    def dense_product(self, cartesian: torch.Tensor, select: Tuple[int, int],
                      blocks: Optional[Sequence[torch.Tensor]] = None, pair_entries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The dense frames' part of :meth:`apply` (R', n_atoms, 4) by the blocks and pair entries
        (default the stored ones; zeros at other atoms): derivatives through their graph, if any."""
        start, stop = select
        blocks = self.blocks if blocks is None else blocks
        pair_entries = self.pair_entries if pair_entries is None else pair_entries
        nb = self.n_blocks
        parts = [self._block_product(cartesian, blocks[start:min(stop, nb)])] if start < nb else []
        if stop > nb:
            lo = max(start, nb)
            parts.append(self._pair_product(cartesian, pair_entries[lo - nb:stop - nb], (lo, stop)))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _pair_product(self, cartesian: torch.Tensor, entries: torch.Tensor, select: Tuple[int, int]) -> torch.Tensor:
        """Fields (R', n_atoms, 4) by pair sums over the entries (R', P, 4, 4) and the self-terms."""
        index_i, index_j = self.dense_pairs[:2]
        upper = (entries * cartesian.index_select(0, index_j).unsqueeze(-2)).sum(-1)  # (R', P, 4) at i
        lower = (entries * cartesian.index_select(0, index_i).unsqueeze(-1)).sum(-2)  # at j: the transposed block
        if self.diagonals is None:
            base = cartesian.new_zeros(entries.shape[0], self.n_atoms, 4)
        else:
            base = self.self_terms[select[0]:select[1]] * cartesian
        return base.index_add(1, index_i, upper).index_add(1, index_j, lower)

    def _block_product(self, cartesian: torch.Tensor, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fields (R', n_atoms, 4) by the padded blocks (R' of them)."""
        n_rec, rows = len(blocks), 4 * self.n_max
        if not self.free_frames and self.dense_identity:
            x = cartesian.view(-1, rows, 1)
            return torch.stack([torch.bmm(b, x) for b in blocks]).view(n_rec, -1, 4)
        n_frames = len(self.dense_frames)
        # every frame dense: the dense atoms are the batch's, in order (no gather in, no scatter out)
        dense = cartesian if not self.free_frames else cartesian.index_select(0, self.dense_atoms)
        padded = cartesian.new_zeros(n_frames * self.n_max, 4).index_copy(0, self.dense_slots, dense).view(n_frames, rows, 1)
        applied = torch.stack([torch.bmm(b, padded) for b in blocks]).view(n_rec, -1, 4).index_select(1, self.dense_slots)
        if not self.free_frames:
            return applied
        return cartesian.new_zeros(n_rec, self.n_atoms, 4).index_copy(1, self.dense_atoms, applied)

    def dense_pair_product(self, positions: torch.Tensor, cartesian: torch.Tensor, weights: torch.Tensor,
                           select: Tuple[int, int]) -> torch.Tensor:
        """sum over dense atoms and receivers of weights . fields(cartesian) by pair sums at ``positions``
        (no self-terms: they do not depend on positions); differentiable to any order, memory linear
        in the atoms (``realspace_potentials`` recomputes its chunks in the backward)."""
        start, stop = select
        v, g = realspace_potentials(positions, cartesian[:, 0], cartesian[:, 1:], self.dense_pairs,
                                    self.exponents[start:stop])
        return (weights[..., 0] * v).sum() + (weights[..., 1:] * g).sum()

    def dense_bytes(self) -> float:
        """Bytes held by the dense blocks and pair entries (for memory reports)."""
        held = list(self.blocks or []) + ([self.pair_entries] if self.pair_entries is not None else [])
        return float(sum(b.numel() * b.element_size() for b in held))


class _DenseFields(torch.autograd.Function):
    """Fields of the dense frames: values from the stored blocks, position derivatives from pair sums.

    The stored blocks K_r (one per receiver) are constants, so nothing of size n^2 enters the graph.
    Backward of y_r = K_r(positions) x with incoming g_r: the density gradient sum_r K_r^T g_r =
    sum_r K_r g_r (each block is symmetric: [V, G] from [q, d] is the Hessian-type Coulomb form),
    again through this function (so it is differentiable in positions); the position gradient is the
    partial derivative of sum_r g_r . K_r(positions) x evaluated by ``dense_pair_product`` (any order).
    """

    @staticmethod
    def forward(ctx, operator, select, cartesian, positions):
        ctx.operator, ctx.select = operator, select
        ctx.save_for_backward(cartesian, positions)
        return operator.dense_product(cartesian, select)

    @staticmethod
    def backward(ctx, grad):
        cartesian, positions = ctx.saved_tensors
        operator, (start, stop) = ctx.operator, ctx.select
        grad_density = grad_positions = None
        if ctx.needs_input_grad[2]:
            parts = [_DenseFields.apply(operator, (r, r + 1), grad[r - start].contiguous(), positions)[0]
                     for r in range(start, stop)]  # receivers, not atoms
            grad_density = torch.stack(parts).sum(0)
        if ctx.needs_input_grad[3]:
            create = torch.is_grad_enabled()
            with torch.enable_grad():
                # partial derivative: a zero-valued perturbation, so paths through cartesian are not counted
                shift = torch.zeros_like(positions, requires_grad=True)
                inputs = (cartesian, grad) if create else (cartesian.detach(), grad.detach())
                base = positions if create else positions.detach()
                energy = operator.dense_pair_product(base + shift, *inputs, (start, stop))
                (grad_positions,) = torch.autograd.grad(energy, shift, create_graph=create)
        return None, None, grad_density, grad_positions


def frame_energy_from_fields(multipoles: torch.Tensor, potential: torch.Tensor, gradient: torch.Tensor,
                             batch_index: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Coulomb energy per frame (n_frames,) eV, 0.5 sum_i (q_i V_i + d_i.G_i), from the fields of
    the density's own width: potential (n_atoms,) V, gradient (n_atoms, 3) V/Å."""
    charges, dipoles = split_multipoles(multipoles.to(potential.dtype))
    per_atom = 0.5 * (charges * potential + (dipoles * gradient).sum(-1))
    return per_atom.new_zeros(n_frames).index_add(0, batch_index, per_atom)

