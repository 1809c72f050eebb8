"""Hessians d²E/dR² of energy models by autograd, vectorised over the rows (DeePMD-kit 3.x ``hessian``).

For a batch of independent frames the Hessian of the summed energy is block diagonal, one
(3 N_f, 3 N_f) block per frame. With the forces F = -dE/dR computed with a graph, one batched
backward pass (``torch.autograd.grad(..., is_grads_batched=True)``, vmap over the grad outputs)
gives every row at once: grad output k (k < 3 N_max) selects Cartesian component k of *every*
frame's local coordinate vector (atom k // 3, axis k % 3 within the frame), so the gradient of
Σ_f F_f[k] holds row k of every frame's block in that frame's atoms. No loop over atoms or frames.

Layout (the ``HESSIAN`` batch key, DeePMD ``hessian.npy``): per frame the (3N, 3N) matrix
H_ij = ∂²E/∂x_i∂x_j, x = (x_1, y_1, z_1, x_2, ...) in the frame's atom order, flattened row-major
into the first (3N)² entries of a row of width (3 N_max)², zero beyond. Unit eV/Å². Periodic
frames: positions move with their images, the cell stays fixed (DeePMD-kit's coordinate Hessian).

The positions must be a leaf of the graph of the forces (``compute_derivatives`` arranges it), and
the forces must carry a graph (``create_graph=True`` in their pass). Paths that give first
derivatives only (compressed tables, the gathered inference contraction) raise their own
"first derivatives only" error when asked for this second derivative.
"""

from __future__ import annotations

from typing import Dict

import torch

from mlpot.data.keys import BATCH, N_ATOMS, PTR

__all__ = ["hessian_from_forces", "hessian_entry_mask"]


def hessian_entry_mask(n_atoms: torch.Tensor, width: int) -> torch.Tensor:
    """(n_frames, width) bool: True on the (3 N_f)² real entries of each padded Hessian row."""
    entries = torch.arange(width, device=n_atoms.device)
    return entries.unsqueeze(0) < (3 * n_atoms.to(torch.long)).square().unsqueeze(1)


def hessian_from_forces(forces: torch.Tensor, positions: torch.Tensor, batch: Dict[str, torch.Tensor],
                        create_graph: bool = False) -> torch.Tensor:
    """Per-frame Hessians (n_frames, (3 N_max)²) eV/Å², layout in the module docstring.

    forces: (n_atoms, 3) eV/Å = -dE/d``positions``, computed with a graph; positions: (n_atoms, 3) Å,
    the tensor the forces were differentiated against; batch: N_ATOMS, PTR and BATCH of the frames.
    create_graph: keep the graph of the Hessian (a Hessian loss back-propagates through it).
    """
    if not forces.requires_grad:
        raise RuntimeError("the Hessian needs forces computed with a graph (create_graph=True in their pass)")
    n_atoms, ptr, frame = batch[N_ATOMS].to(torch.long), batch[PTR].to(torch.long), batch[BATCH].to(torch.long)
    device, n_total = forces.device, forces.shape[0]
    size = 3 * int(n_atoms.max()) if n_atoms.numel() else 0
    # component index of every coordinate within its frame: 3 * (local atom) + axis, (n_atoms, 3)
    local = torch.arange(n_total, device=device) - ptr.index_select(0, frame)
    component = 3 * local.unsqueeze(1) + torch.arange(3, device=device)
    selector = torch.nn.functional.one_hot(component, size).to(forces.dtype).permute(2, 0, 1)  # (size, n_atoms, 3)
    (rows,) = torch.autograd.grad(forces, positions, selector, is_grads_batched=True, create_graph=create_graph)
    rows = -rows.reshape(size, 3 * n_total)  # rows[k, 3a + c] = H_f[k, 3 local(a) + c], f the frame of a
    # entry e = k * 3N_f + m of frame f reads rows[k, 3 ptr_f + m]; padding entries read 0
    width = size * size
    mask = hessian_entry_mask(n_atoms, width)
    entries = torch.arange(width, device=device).unsqueeze(0)
    dim = (3 * n_atoms).clamp(min=1).unsqueeze(1)
    row, column = entries // dim, entries % dim + 3 * ptr[:-1].unsqueeze(1)
    flat = torch.where(mask, row * (3 * n_total) + column, torch.zeros_like(row))
    values = rows.reshape(-1).index_select(0, flat.reshape(-1)).reshape(flat.shape)
    return torch.where(mask, values, torch.zeros_like(values))
