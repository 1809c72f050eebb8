"""The field operator of the SCF: its dense per-frame blocks (isolated frames) equal the matrix-free
frame solver in fields, in their position derivatives (forces) and in the second derivatives that
force training takes, including frames of different sizes (padding) and the self-terms, whether
the blocks carry their own graph (small batches) or are constants with pair-sum derivatives, and
whether a receiver is held as a padded block or applied by pair sums; the pair entries and their
analytic derivative against the kernel differentiated by autograd."""

import pytest
import torch

from fixed_point_helpers import cluster_batch, fixed_point_model, scf_options
from mlpot.data import keys as K
from mlpot.electrostatics import FieldOperator
from mlpot.models.derivatives import compute_derivatives
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


def _kernel_entries(separation: torch.Tensor, exponents) -> torch.Tensor:
    """Reference pair entries (R, P, 4, 4) straight from the kernel K(s) = k erf(a |s|) / |s| by
    autograd: [[K, -grad K^T], [grad K, -Hessian K]] (V from q and d, G from q and d)."""
    from torch.func import hessian, jacrev, vmap

    from mlpot.units import COULOMB_CONSTANT

    out = []
    for a in exponents:
        def kernel(s, a=a):
            d = torch.sqrt((s * s).sum())
            return COULOMB_CONSTANT * torch.erf(a * d) / d
        k, g, h = vmap(kernel)(separation), vmap(jacrev(kernel))(separation), vmap(hessian(kernel))(separation)
        top = torch.cat([k[:, None], -g], dim=1)
        out.append(torch.cat([top[:, None, :], torch.cat([g[:, :, None], -h], dim=2)], dim=1))
    return torch.stack(out)


def test_pair_entries_and_their_derivatives_equal_the_kernel_by_autograd():
    """The dense blocks' pair entries (values by T0..T2, first derivative analytic with T3, second
    derivatives through the formula's graph) against the kernel differentiated by autograd, at
    distances on both sides of the series / closed-form switch (a d = 1)."""
    from mlpot.electrostatics._operator import _PairEntries

    generator = torch.Generator().manual_seed(3)
    direction = torch.nn.functional.normalize(torch.randn(24, 3, dtype=torch.float64, generator=generator), dim=1)
    separation = (direction * torch.linspace(0.4, 6.0, 24, dtype=torch.float64)[:, None]).requires_grad_(True)
    exponents = (0.25, 0.45, 0.9)
    weights = torch.randn(3, 24, 4, 4, dtype=torch.float64, generator=generator)
    entries, reference = _PairEntries.apply(separation, exponents), _kernel_entries(separation, exponents)
    torch.testing.assert_close(entries, reference, atol=1e-12, rtol=1e-12)
    (first,) = torch.autograd.grad((weights * entries).sum(), separation)  # the analytic backward
    (first_ref,) = torch.autograd.grad((weights * reference).sum(), separation, create_graph=True)
    torch.testing.assert_close(first, first_ref, atol=1e-12, rtol=1e-12)
    (graph,) = torch.autograd.grad((weights * _PairEntries.apply(separation, exponents)).sum(), separation, create_graph=True)
    (second,) = torch.autograd.grad(graph.pow(2).sum(), separation)
    (second_ref,) = torch.autograd.grad(first_ref.pow(2).sum(), separation)
    torch.testing.assert_close(second, second_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("constant_charge", [False, True], ids=["constant_fermi", "constant_charge"])
def test_fixed_point_training_gradients_equal_the_matrix_free_model(constant_charge):
    """A fixed-point model on dense blocks (features) and pair sums (energy) equals the same model
    on the matrix-free frame solver in every training mode: energies, forces, multipoles, Fermi
    levels and the parameter gradients of a force-training loss (second derivatives)."""
    batch = cluster_batch()
    results = []
    for dense_max_atoms in (400, 0):
        model = fixed_point_model(dense_max_atoms=dense_max_atoms)
        model.train()
        per_mode = []
        for mode in ("direct", "unroll_scf", "implicit", "linearize_solve"):
            model.set_options(scf_options(mode, constant_charge, steps=12 if mode == "unroll_scf" else 300))
            model.zero_grad(set_to_none=True)
            out = compute_derivatives(model, batch, forces=True, create_graph=True)
            (out[K.ENERGY].pow(2).sum() + out[K.FORCES].pow(2).sum()).backward()
            values = [out[key].detach() for key in (K.ENERGY, K.FORCES, K.ATOMIC_MULTIPOLES, K.FERMI_LEVEL)]
            per_mode.append(values + [p.grad.detach().clone() for p in model.parameters() if p.grad is not None])
        results.append(per_mode)
    for dense, free in zip(*results):
        assert len(dense) == len(free) > 4
        for a, b in zip(dense, free):
            torch.testing.assert_close(a, b, atol=1e-9 * float(b.abs().max()), rtol=1e-9)
