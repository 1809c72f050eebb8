"""The field operator of the SCF: its dense per-frame blocks (isolated frames) equal the matrix-free
frame solver in fields, in their position derivatives (forces) and in the second derivatives that
force training takes, including frames of different sizes (padding) and the self-terms, whether
the blocks carry their own graph (small batches) or are constants with pair-sum derivatives."""

import torch

from mlpot.data import keys as K
from mlpot.electrostatics import FieldOperator
from mlpot.testing import random_batch

RECEIVERS = [(1.0, False), (2.0, False), (1.5, True)]  # two feature widths, then the density's own (self-term)


def _fields_and_derivatives(dense_max_atoms: int, graph_block_bytes: float = 2**30, block_receivers=None):
    batch = random_batch(3, [6, 4, 5], 2, cutoff=3.0, box=5.0, periodic=False, triclinic=False, seed=4)
    positions = batch[K.POSITIONS].clone().requires_grad_(True)
    density = torch.randn(positions.shape[0], 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    density.requires_grad_(True)
    operator = FieldOperator({**batch, K.POSITIONS: positions}, "realspace", 1.5, RECEIVERS,
                             dense_max_atoms=dense_max_atoms, graph_block_bytes=graph_block_bytes,
                             block_receivers=block_receivers)
    assert (operator.blocks is not None) == (dense_max_atoms > 0)
    assert operator.graph_blocks == (dense_max_atoms > 0 and graph_block_bytes > 0)
    fields = operator.apply(density)  # (R, n, 4)
    weights = torch.linspace(0.5, 1.5, fields.numel(), dtype=torch.float64).view_as(fields)
    objective = (weights * fields * fields).sum()
    (forces, density_gradient) = torch.autograd.grad(objective, (positions, density), create_graph=True)
    # a force-training objective: its gradient needs the mixed second derivatives
    (second,) = torch.autograd.grad(forces.pow(2).sum() + density_gradient.pow(2).sum(), density)
    return fields.detach(), forces.detach(), second


def test_dense_blocks_equal_the_matrix_free_solver():
    free = _fields_and_derivatives(dense_max_atoms=0)
    for graph_block_bytes in (2**30, 0):
        # all receivers as padded blocks; the features' only (the self-term receiver by pair sums); none
        for block_receivers in (None, 2, 0):
            dense = _fields_and_derivatives(400, graph_block_bytes, block_receivers)
            for a, b in zip(dense, free):
                torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
