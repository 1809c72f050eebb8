"""mlpot.testing and compute_derivatives checked on analytic models (and on models that must fail)."""

import pytest
import torch

from mlpot import testing as T
from mlpot.data import keys as K
from mlpot.models.base import AtomisticModel, edge_vectors
from mlpot.models.derivatives import compute_derivatives
from mlpot.nn import scatter_sum


class HarmonicPairs(AtomisticModel):
    """E = sum over directed edges of k/2 (r - r0)^2 / 2 (each pair counted twice), analytic forces."""

    def __init__(self, k=1.3, r0=1.1, cutoff=3.5):
        super().__init__()
        self.k, self.r0, self.cutoff, self.type_map, self.config = k, r0, cutoff, ["A", "B"], {}

    def forward(self, batch):
        r = edge_vectors(batch).norm(dim=-1)
        pair = 0.25 * self.k * (r - self.r0) ** 2
        atom = scatter_sum(pair, batch[K.EDGE_INDEX][0], len(batch[K.BATCH]))
        return {K.ATOM_ENERGY: atom, K.ENERGY: scatter_sum(atom, batch[K.BATCH], batch[K.CELL].shape[0])}


class NotInvariant(HarmonicPairs):
    def forward(self, batch):
        out = super().forward(batch)
        out[K.ENERGY] = out[K.ENERGY] + scatter_sum(batch[K.POSITIONS][:, 0], batch[K.BATCH], batch[K.CELL].shape[0])
        return out


class WrongForces(HarmonicPairs):
    def forward(self, batch):
        out = super().forward(batch)
        # a term that autograd does not see: the energy depends on positions but the graph does not
        out[K.ENERGY] = out[K.ENERGY] + 0.1 * batch[K.POSITIONS].detach().pow(2).sum()
        return out


def analytic(batch, model):
    vectors = edge_vectors(batch)
    r = vectors.norm(dim=-1, keepdim=True)
    # dE/dr_ij (per directed edge, k/2 (r - r0)) along the unit vector; force on j is -that, on i +that
    g = 0.5 * model.k * (r - model.r0) * vectors / r
    forces = torch.zeros_like(batch[K.POSITIONS])
    forces.index_add_(0, batch[K.EDGE_INDEX][1], -g)
    forces.index_add_(0, batch[K.EDGE_INDEX][0], g)
    frame = batch[K.BATCH][batch[K.EDGE_INDEX][0]]
    virial = torch.zeros(batch[K.CELL].shape[0], 3, 3, dtype=vectors.dtype)
    virial.index_add_(0, frame, -g.unsqueeze(2) * vectors.unsqueeze(1))  # Ξ = -sum dE/dr_ij ⊗ r_ij
    return forces, virial


@pytest.mark.parametrize("periodic", [True, False])
def test_compute_derivatives_matches_analytic_forces_virial_stress(periodic):
    batch = T.random_batch(2, [7, 5], periodic=periodic, seed=11)
    model = HarmonicPairs()
    out = compute_derivatives(model, batch, forces=True, virial=True, stress=True)
    forces, virial = analytic(batch, model)
    torch.testing.assert_close(out[K.FORCES], forces)
    torch.testing.assert_close(out[K.VIRIAL], virial)
    volume = torch.linalg.det(batch[K.CELL]).abs()
    expected_stress = -virial / volume[:, None, None] if periodic else torch.zeros_like(virial)
    torch.testing.assert_close(out[K.STRESS], expected_stress)
    T.assert_forces_match_fd(model, batch)
    T.assert_virial_matches_finite_strain(model, batch)


def test_create_graph_allows_a_force_loss_gradient():
    batch = T.random_batch(1, 6, seed=2)
    k = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    model = HarmonicPairs(k=k)
    out = compute_derivatives(model, batch, forces=True, virial=True, create_graph=True)
    (grad,) = torch.autograd.grad(out[K.FORCES].pow(2).sum(), k)
    # forces are linear in k: d/dk sum F^2 = 2 sum F^2 / k
    torch.testing.assert_close(grad, 2 * out[K.FORCES].pow(2).sum().detach() / k.detach())


def test_toolkit_passes_good_models_and_catches_bad_ones():
    batch = T.random_batch(2, [6, 7], seed=3)
    good = HarmonicPairs()
    T.assert_invariant(good, batch)
    T.assert_batch_consistent(good, batch)
    with pytest.raises(AssertionError):
        T.assert_invariant(NotInvariant(), batch, keys=(K.ENERGY,), forces=False, permutation=False, rotation=False)
    with pytest.raises(AssertionError):
        T.assert_forces_match_fd(WrongForces(), batch, atoms=[0, 1])


def test_random_rotation_is_proper_and_permutation_roundtrips(dtype):
    rotation = T.random_rotation(dtype, seed=4)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3, dtype=dtype))
    assert torch.det(rotation.double()) == pytest.approx(1.0)
    batch = T.random_batch(2, 5, seed=5)
    permuted, perm = T.permute_batch(batch, seed=1)
    torch.testing.assert_close(permuted[K.POSITIONS], batch[K.POSITIONS][perm])
    assert torch.equal(permuted[K.BATCH], batch[K.BATCH])  # atoms stay in their frame
    frames = T.split_batch(batch)
    assert [len(f[K.POSITIONS]) for f in frames] == [5, 5]
    assert sum(f[K.EDGE_INDEX].shape[1] for f in frames) == batch[K.EDGE_INDEX].shape[1]
