"""se_e3 (three-body embedding) + ener fitting: physics checks and the spec formula of deepmd.md §2.5."""

import numpy as np
import pytest
import torch

from mlpot import testing as T
from mlpot.data import AtomsDataset, collate
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.base import edge_vectors
from mlpot.models.derivatives import compute_derivatives
from mlpot.nn import smooth_switch


def small_model(dtype=torch.float64, batch=None, **descriptor):
    precision = "float64" if dtype == torch.float64 else "float32"
    section = {"type": "se_at", "sel": [12, 12], "rcut": 3.5, "rcut_smth": 1.0, "neuron": [2, 4, 8], "seed": 1,
               "precision": precision}
    section.update(descriptor)
    model = build_model({"type_map": ["A", "B"], "descriptor": section,
                         "fitting_net": {"neuron": [8, 8], "seed": 2, "precision": precision}})
    model.compute_statistics([batch if batch is not None else T.random_batch(2, 8, seed=5)])
    return model


def tolerances(dtype):
    return dict(atol=1e-7, rtol=1e-6) if dtype == torch.float64 else dict(atol=2e-3, rtol=2e-3)


def test_aliases_and_unknown_key():
    for alias in ("se_e3", "se_at", "se_a_3be", "se_t"):
        model = build_model({"type_map": ["A", "B"], "descriptor": {"type": alias, "sel": [4, 4], "rcut": 3.0},
                             "fitting_net": {"neuron": [4]}})
        assert model.descriptor.dim_out == 40 and model.descriptor.dim_rot == 0
    with pytest.raises(ConfigError, match="axis_neuron"):  # se_e3 has no axis_neuron
        build_model({"type_map": ["A"], "descriptor": {"type": "se_e3", "sel": [4], "axis_neuron": 4},
                     "fitting_net": {}})


def test_forces_virial_by_finite_differences(dtype):
    batch = T.random_batch(2, [8, 7], seed=1)
    model = small_model(dtype)
    if dtype == torch.float64:
        T.assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-5)
        T.assert_virial_matches_finite_strain(model, batch, atol=1e-7, rtol=1e-5)
    else:
        T.assert_forces_match_fd(model, batch, delta=2e-3, atol=5e-3, rtol=5e-2, atoms=[0, 3, 9])
        T.assert_virial_matches_finite_strain(model, batch, delta=2e-3, atol=2e-2, rtol=5e-2)


def test_invariance_and_batch_consistency(dtype):
    batch = T.random_batch(3, [8, 6, 7], seed=3)
    model = small_model(dtype)
    T.assert_invariant(model, batch, **tolerances(dtype))
    T.assert_batch_consistent(model, batch, **tolerances(dtype))


def test_smooth_when_an_atom_crosses_the_cutoff():
    model = small_model()
    energies, forces = [], []
    for distance in (3.5 - 1e-4, 3.5 - 1e-7, 3.5 + 1e-7, 3.9):
        # a third atom keeps a non-trivial environment: theta needs two neighbours
        frame = {K.POSITIONS: np.array([[0.0, 0, 0], [distance, 0, 0], [-1.2, 0.5, 0.3]]), K.CELL: np.zeros((3, 3)),
                 K.PBC: np.zeros(3, bool), K.ATOM_TYPES: np.array([0, 1, 1])}
        out = compute_derivatives(model, collate([AtomsDataset([frame], 4.0)[0]]))
        energies.append(out[K.ENERGY].item())
        forces.append(out[K.FORCES].detach())
    assert abs(energies[1] - energies[3]) < 1e-12 and abs(energies[2] - energies[3]) < 1e-12
    assert abs(energies[0] - energies[3]) < 1e-8
    torch.testing.assert_close(forces[1], forces[3], atol=1e-9, rtol=0)


def _naive_descriptor(model, batch):
    """D_i by explicit loops over atoms and neighbour pairs (spec §2.2, §2.5)."""
    desc = model.descriptor
    types = batch[K.ATOM_TYPES]
    vectors = edge_vectors(batch).detach()
    centre, neighbour = batch[K.EDGE_INDEX]
    out = []
    for i in range(len(types)):
        angular = []  # per type: list of normalised angular rows, padded to sel
        for tj, s in enumerate(desc.sel):
            edges = [e for e in range(len(centre)) if centre[e] == i and types[neighbour[e]] == tj and vectors[e].norm() < desc.rcut]
            edges.sort(key=lambda e: float(vectors[e].norm()))
            rows = []
            for slot in range(s):
                if slot < len(edges):
                    v = vectors[edges[slot]]
                    r = v.norm()
                    rows.append(smooth_switch(r, desc.rcut_smth, desc.rcut) / r * v / r / desc.dstd[types[i], 1:])
                else:
                    rows.append(torch.zeros(3, dtype=torch.float64))
            angular.append(rows)
        d = torch.zeros(desc.m1, dtype=torch.float64)
        for net, (tj, tk) in zip(desc.embeddings, desc.type_pairs):
            for a in angular[tj]:
                for b in angular[tk]:
                    theta = (a * b).sum()
                    d = d + theta * net(theta.reshape(1)) / (desc.sel[tj] * desc.sel[tk])
        out.append(d)
    return torch.stack(out)


@pytest.mark.filterwarnings("ignore:more neighbours than sel")  # sel [5, 5] truncates: the reference does too
def test_descriptor_matches_spec_formula():
    batch = T.random_batch(1, 6, seed=6)
    model = small_model(sel=[5, 5])
    d, rot = model.descriptor(batch, edge_vectors(batch))
    assert rot is None and d.shape == (6, 8)
    torch.testing.assert_close(d.detach(), _naive_descriptor(model, batch).detach())


def test_exclude_types_masks_the_pair():
    batch = T.random_batch(1, 10, seed=7)
    model = small_model(exclude_types=[[0, 1]])
    T.assert_excluded_pair_decoupled(model.descriptor, batch)
