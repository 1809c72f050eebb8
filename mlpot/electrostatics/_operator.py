"""The Coulomb field of a batch as a linear operator of the density, geometry computed once.

A self-consistent loop evaluates the potentials of many densities on one geometry. Potentials
and gradients are linear in the multipole coefficients, ``[V; G] = K(r) p``, so
:class:`FieldOperator` builds what depends on the geometry once per batch and applies it to each
new density:

* isolated frames (``realspace`` handling) with at most ``dense_max_atoms`` atoms: the dense
  per-frame interaction blocks ``K_f`` (4 n_f x 4 n_f per receiver width, from the pair kernels of
  ``_kernels.py``), stacked over frames padded to the largest one; one batched matmul per
  receiver per application. Memory sum_f n_f^2: linear in the frames of a batch, never a batch-wide matrix.
* every other frame (periodic, slab, molecule in box, or large): the frame solver
  (``_solver.frame_fields``: Ewald / PME / real space) called on each application (matrix-free).

Both paths are differentiable in positions and cell (forces, stress) and in the density; the
dense path is pinned to the frame solver by ``tests/test_fixed_point_operator.py``.
Receivers, units and the stored order are those of ``_solver.py``: potentials V (V) and Cartesian
gradients G (V/Å) at every atom; densities (n_atoms, (L+1)^2) [Q, d_y, d_z, d_x].
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import BATCH, CELL, PBC, POSITIONS, PTR
from mlpot.electrostatics._coulomb import resolve_handling
from mlpot.electrostatics._density import gaussian_kernel_exponent, split_multipoles
from mlpot.electrostatics._kernels import erf_radial, erf_radial_at_zero
from mlpot.electrostatics._solver import CoulombOptions, Receiver, frame_fields
from mlpot.units import COULOMB_CONSTANT

__all__ = ["FieldOperator", "padded_index", "frame_energy_from_fields"]

_CROSS_LEFT, _CROSS_RIGHT = [0, 0, 1], [1, 2, 2]  # the off-diagonal products xy, xz, yz
_SYMMETRIC_3X3 = [0, 3, 4, 3, 1, 5, 4, 5, 2]  # [xx, yy, zz, xy, xz, yz] -> row-major 3 x 3


def padded_index(batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, int]:
    """(flat index frame * n_max + local of each atom (n_atoms,), n_max): the padded layout."""
    ptr, frames = batch[PTR], batch[BATCH]
    n_max = int((ptr[1:] - ptr[:-1]).max()) if ptr.numel() > 1 else 0
    local = torch.arange(frames.shape[0], device=frames.device) - ptr.index_select(0, frames)
    return frames * n_max + local, n_max


def _dense_blocks(positions: torch.Tensor, mask: torch.Tensor, exponents: Sequence[float],
                  include_self: Sequence[bool]) -> List[torch.Tensor]:
    """Interaction blocks of isolated frames padded to n atoms: one (n_frames, 4 n, 4 n) per receiver.

    positions: (n_frames, n, 3) Å (padding anywhere); mask: (n_frames, n) real atoms. Row block r,
    atom i, entry [V, Gx, Gy, Gz]; column atom j, entry [q, dx, dy, dz]. With s = r_i - r_j:
    ``V = k (T0 q - T1 s.d)``, ``G = k ((T1 q - T2 s.d) s - T1 d)``; the diagonal (d = 0) carries
    the self-terms where ``include_self``. All receivers are evaluated together (one kernel call).
    """
    n_frames, n = mask.shape
    n_rec = len(exponents)
    separation = positions[:, :, None, :] - positions[:, None, :, :]  # (F, n, n, 3): r_i - r_j
    pair = mask[:, :, None] & mask[:, None, :]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)[None]
    off = pair & ~eye
    squares = separation * separation  # (F, n, n, 3): xx, yy, zz
    squared = squares.sum(-1)
    distance = torch.sqrt(torch.where(off, squared, torch.ones_like(squared)))  # safe at d = 0
    exponent = torch.tensor(list(exponents), dtype=positions.dtype, device=positions.device).view(n_rec, 1, 1, 1)
    t0, t1, t2 = (COULOMB_CONSTANT * t for t in erf_radial(distance.unsqueeze(0), exponent))  # (R, F, n, n)
    zeros = [[COULOMB_CONSTANT * z for z in erf_radial_at_zero(float(a))] for a in exponents]
    z0 = torch.tensor([z[0] for z in zeros], dtype=positions.dtype, device=positions.device).view(n_rec, 1, 1, 1)
    z1 = torch.tensor([z[1] for z in zeros], dtype=positions.dtype, device=positions.device).view(n_rec, 1, 1, 1)
    own = torch.tensor(list(include_self), dtype=torch.bool, device=mask.device).view(n_rec, 1, 1, 1)
    keep_diag = (pair & eye).unsqueeze(0) & own
    t0 = torch.where(off, t0, torch.where(keep_diag, z0.expand_as(t0), torch.zeros_like(t0)))
    t1 = torch.where(off, t1, torch.where(keep_diag, z1.expand_as(t1), torch.zeros_like(t1)))
    t2 = torch.where(off, t2, torch.zeros_like(t2))
    # assembled from (R, F, n, n, <=6) pieces: no (R, F, n, n, 4, 4) broadcast products, whose
    # backward (forces) and double backward (force training) reduce over the full block
    t1_s = t1.unsqueeze(-1) * separation  # (R, F, n, n, 3)
    cross = separation[..., _CROSS_LEFT] * separation[..., _CROSS_RIGHT]  # (F, n, n, 3): xy, xz, yz
    t2_e = t2.unsqueeze(-1)
    hessian = torch.cat([-t2_e * squares - t1.unsqueeze(-1), -t2_e * cross], -1)  # (R, F, n, n, 6)
    hessian = hessian.index_select(-1, torch.tensor(_SYMMETRIC_3X3, device=mask.device))  # (R, F, n, n, 9)
    top = torch.cat([t0.unsqueeze(-1), -t1_s], -1)  # (R, F, n, n, 4)
    bottom = torch.cat([t1_s.unsqueeze(-1), hessian.unflatten(-1, (3, 3))], -1)  # (R, F, n, n, 3, 4)
    block = torch.cat([top.unsqueeze(-2), bottom], -2)  # (R, F, n, n, 4, 4)
    # one tensor per receiver: an SCF step reads the feature receivers only, and a slice of one
    # joint tensor would cost a zero-filled gradient of the whole block per step in the backward
    return [b.reshape(n_frames, 4 * n, 4 * n) for b in block.permute(0, 1, 2, 4, 3, 5).unbind(0)]


class FieldOperator:
    """Potentials and gradients of any density on one batch geometry (module docstring).

    batch: collated dict with POSITIONS (n_atoms, 3) Å, CELL (n_frames, 3, 3) Å, PBC, PTR, BATCH;
    method: the batch-level ``electrostatic_pbc_method`` (``batch_method`` applied); sigma: density
    width Å; receivers: (width Å, include_self) pairs; dense_max_atoms: largest isolated frame
    stored as a dense block (0: always matrix-free).
    """

    def __init__(self, batch: Dict[str, torch.Tensor], method: str, sigma: float,
                 receivers: Sequence[Tuple[float, bool]], options: CoulombOptions = CoulombOptions(),
                 dense_max_atoms: int = 400):
        self.positions = batch[POSITIONS]
        self.cells = batch[CELL].to(self.positions.dtype)
        self.ptr = [int(v) for v in batch[PTR]]
        self.sigma, self.options = float(sigma), options
        self.receivers = [Receiver(float(w), bool(own)) for w, own in receivers]
        self.n_atoms = self.positions.shape[0]
        sizes = [hi - lo for lo, hi in zip(self.ptr[:-1], self.ptr[1:])]
        self.handlings = [resolve_handling(method, batch[PBC][f], self.cells[f], frame=f) for f in range(len(sizes))]
        dense = [f for f, (h, n) in enumerate(zip(self.handlings, sizes)) if h == "realspace" and 0 < n <= dense_max_atoms]
        self.free_frames = [f for f in range(len(sizes)) if f not in set(dense)]
        self.dense_frames = dense
        self._build_dense(dense, sizes)

    def _build_dense(self, frames: List[int], sizes: List[int]) -> None:
        self.blocks, self.dense_identity = None, False
        if not frames:
            return
        device = self.positions.device
        self.n_max = max(sizes[f] for f in frames)
        atoms = torch.cat([torch.arange(self.ptr[f], self.ptr[f + 1], device=device) for f in frames])
        slot = torch.cat([torch.arange(sizes[f], device=device) + k * self.n_max for k, f in enumerate(frames)])
        self.dense_atoms, self.dense_slots = atoms, slot
        # every frame dense and all of the same size: padded layout = batch layout (no copies)
        self.dense_identity = len(frames) == len(sizes) and all(sizes[f] == self.n_max for f in frames)
        n_pad = len(frames) * self.n_max
        padded = self.positions.new_zeros(n_pad, 3).index_copy(0, slot, self.positions.index_select(0, atoms))
        mask = torch.zeros(n_pad, dtype=torch.bool, device=device)
        mask[slot] = True
        exponents = [gaussian_kernel_exponent(self.sigma, r.width) for r in self.receivers]
        self.blocks = _dense_blocks(padded.view(len(frames), self.n_max, 3), mask.view(len(frames), self.n_max),
                                    exponents, [r.include_self for r in self.receivers])

    def state(self) -> List[torch.Tensor]:
        """The geometry tensors the fields depend on: [blocks (one per receiver, if any), positions,
        cells]; pass a list of the same layout to :meth:`fields` to evaluate with substitutes
        (implicit gradients)."""
        return list(self.blocks or []) + [self.positions, self.cells]

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
        blocks, positions, cells = self.blocks, self.positions, self.cells
        if state is not None:
            n_blocks = len(self.blocks or [])
            blocks, positions, cells = list(state[:n_blocks]) or None, state[n_blocks], state[n_blocks + 1]
        start, stop = select if select is not None else (0, len(self.receivers))
        n_rec = stop - start
        rows = 4 * self.n_max if blocks is not None else 0
        if blocks is not None and not self.free_frames and self.dense_identity:
            x = cartesian.view(-1, rows, 1)
            return torch.stack([torch.bmm(b, x) for b in blocks[start:stop]]).view(n_rec, -1, 4)
        out = cartesian.new_zeros(n_rec, self.n_atoms, 4)
        if blocks is not None:
            n_frames = len(self.dense_frames)
            padded = cartesian.new_zeros(n_frames * self.n_max, 4).index_copy(
                0, self.dense_slots, cartesian.index_select(0, self.dense_atoms)).view(n_frames, rows, 1)
            applied = torch.stack([torch.bmm(b, padded) for b in blocks[start:stop]]).view(n_rec, -1, 4)
            out = out.index_copy(1, self.dense_atoms, applied.index_select(1, self.dense_slots))
        receivers = self.receivers[start:stop]
        for frame in self.free_frames:  # frames, each with its own k-set / neighbour list
            lo, hi = self.ptr[frame], self.ptr[frame + 1]
            v, g = frame_fields(positions[lo:hi], cartesian[lo:hi, 0], cartesian[lo:hi, 1:], cells[frame],
                                self.handlings[frame], self.sigma, receivers, self.options)
            block = torch.cat([v[..., None], g], -1)
            out = out.index_copy(1, torch.arange(lo, hi, device=out.device), block)
        return out

    def dense_bytes(self) -> float:
        """Bytes held by the dense blocks (for memory reports)."""
        return float(sum(b.numel() * b.element_size() for b in self.blocks or []))


def frame_energy_from_fields(multipoles: torch.Tensor, potential: torch.Tensor, gradient: torch.Tensor,
                             batch_index: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Coulomb energy per frame (n_frames,) eV, 0.5 sum_i (q_i V_i + d_i.G_i), from the fields of
    the density's own width: potential (n_atoms,) V, gradient (n_atoms, 3) V/Å."""
    charges, dipoles = split_multipoles(multipoles.to(potential.dtype))
    per_atom = 0.5 * (charges * potential + (dipoles * gradient).sum(-1))
    return per_atom.new_zeros(n_frames).index_add(0, batch_index, per_atom)

