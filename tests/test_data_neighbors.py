"""Neighbour lists against ASE, and DeePMD's padded per-type neighbour matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list
from ase import Atoms

from mlpot.data import (AtomsDataset, build_sel_matrix, compute_statistics, edge_vectors, neighbor_list,
                        read_systems)
from mlpot.data import keys as K

RNG = np.random.default_rng(7)

CASES = {
    "cubic": (np.eye(3) * 5.0, [True, True, True], 3.0),
    "cubic_cutoff_beyond_half_cell": (np.eye(3) * 5.0, [True, True, True], 7.3),
    "triclinic": (np.array([[4.0, 0.0, 0.0], [1.7, 3.9, 0.0], [-0.8, 1.1, 4.4]]), [True, True, True], 3.5),
    "triclinic_large_cutoff": (np.array([[3.0, 0.0, 0.0], [1.4, 2.8, 0.0], [0.6, -0.9, 3.2]]), [True] * 3, 6.5),
    "slab": (np.array([[4.5, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 12.0]]), [True, True, False], 5.0),
    "slab_zero_vacuum_vector": (np.array([[4.5, 0.0, 0.0], [1.0, 4.0, 0.0], [0.0, 0.0, 0.0]]), [True, True, False], 5.0),
    "wire": (np.array([[3.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]]), [True, False, False], 4.0),
    "isolated_zero_cell": (np.zeros((3, 3)), [False, False, False], 3.0),
    "isolated_box": (np.eye(3) * 40.0, [False, False, False], 3.0),
}


def _canonical(i, j, shifts, d):
    order = np.lexsort((d.round(9), shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return i[order], j[order], shifts[order].astype(int), d[order]


@pytest.mark.parametrize("name", list(CASES))
def test_neighbor_list_equals_ase(name):
    cell, pbc, cutoff = CASES[name]
    n_atoms = 9
    extent = np.where(np.linalg.norm(cell, axis=1) > 0, 1.0, 0.0)
    fractional = RNG.random((n_atoms, 3))
    positions = fractional @ cell if any(pbc) and np.linalg.det(cell) != 0 else RNG.random((n_atoms, 3)) * 4.0
    if name == "slab_zero_vacuum_vector":
        positions = fractional @ cell + np.outer(RNG.random(n_atoms) * 3.0, [0, 0, 1]) * (1 - extent[2])
    atoms = Atoms("H" * n_atoms, positions=positions, cell=cell, pbc=pbc)
    ai, aj, aS, ad = ase_neighbor_list("ijSd", atoms, cutoff)
    edge_index, shifts = neighbor_list(positions, cell, pbc, cutoff)
    vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts @ cell
    d = np.linalg.norm(vectors, axis=1)
    assert edge_index.dtype == np.int64 and shifts.dtype == np.float64
    assert np.all(np.diff(edge_index[0]) >= 0)  # sorted by centre
    ours = _canonical(edge_index[0], edge_index[1], shifts, d)
    theirs = _canonical(ai, aj, aS, ad)
    assert len(ours[0]) == len(theirs[0]) > 0
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_edge_vectors_batched_cell_and_gradient():
    cell = torch.tensor(CASES["triclinic"][0], dtype=torch.float64)
    positions = torch.tensor(RNG.random((6, 3)) @ CASES["triclinic"][0], requires_grad=True)
    edge_index, shifts = neighbor_list(positions.detach().numpy(), cell.numpy(), [True] * 3, 3.5)
    edge_index, shifts = torch.from_numpy(edge_index), torch.from_numpy(shifts)
    single = edge_vectors(positions, edge_index, shifts, cell)
    batched = edge_vectors(positions, edge_index, shifts, cell[None], batch=torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(single, batched)
    single.norm(dim=1).sum().backward()
    assert positions.grad is not None and torch.isfinite(positions.grad).all()


def _reference_sel(edge_index, distance, types, n_atoms, sel):
    """Straightforward per-atom reference for the vectorised builder (tests only)."""
    nlist = -np.ones((n_atoms, sum(sel)), dtype=np.int64)
    dropped = np.zeros(len(sel), dtype=np.int64)
    offsets = np.cumsum([0] + list(sel))
    for atom in range(n_atoms):
        for t in range(len(sel)):
            edges = np.flatnonzero((edge_index[0] == atom) & (types == t))
            edges = edges[np.argsort(distance[edges], kind="stable")]
            nlist[atom, offsets[t]:offsets[t] + min(len(edges), sel[t])] = edges[: sel[t]]
            dropped[t] += max(0, len(edges) - sel[t])
    return nlist, dropped


def test_sel_matrix_sections_sorted_and_overflow_reported():
    cell = np.eye(3) * 6.0
    positions = RNG.random((20, 3)) * 6.0
    atom_types = RNG.integers(0, 3, 20)
    edge_index, shifts = neighbor_list(positions, cell, True, 4.0)
    distance = np.linalg.norm(positions[edge_index[1]] - positions[edge_index[0]] + shifts @ cell, axis=1)
    neighbor_types = atom_types[edge_index[1]]
    sel = [3, 5, 4]  # small: forces truncation
    nlist, overflow = build_sel_matrix(torch.from_numpy(edge_index), torch.from_numpy(distance),
                                       torch.from_numpy(neighbor_types), 20, sel)
    ref_nlist, ref_dropped = _reference_sel(edge_index, distance, neighbor_types, 20, sel)
    np.testing.assert_array_equal(nlist.numpy(), ref_nlist)
    np.testing.assert_array_equal(overflow.numpy(), ref_dropped)
    assert overflow.sum() > 0
    # explicit properties: each section holds its type, nearest first, padding at the end
    offsets = np.cumsum([0] + sel)
    for t in range(3):
        section = nlist.numpy()[:, offsets[t]:offsets[t + 1]]
        valid = section >= 0
        assert np.all(neighbor_types[section[valid]] == t)
        d = np.where(valid, distance[np.where(valid, section, 0)], np.inf)
        assert np.all(np.diff(d, axis=1)[np.isfinite(np.diff(d, axis=1))] >= 0)
        assert np.all(valid[:, :-1] | ~valid[:, 1:])  # no hole before a valid slot
    # mixed types: the nearest sel of any type
    mixed, dropped = build_sel_matrix(torch.from_numpy(edge_index), torch.from_numpy(distance),
                                      torch.from_numpy(neighbor_types), 20, 6, mixed_types=True)
    ref_mixed, ref_mixed_dropped = _reference_sel(edge_index, distance, np.zeros_like(neighbor_types), 20, [6])
    np.testing.assert_array_equal(mixed.numpy(), ref_mixed)
    assert dropped.ndim == 0 and int(dropped) == ref_mixed_dropped[0]
    # large enough sel: nothing dropped, every edge appears exactly once
    full, none = build_sel_matrix(torch.from_numpy(edge_index), torch.from_numpy(distance),
                                  torch.from_numpy(neighbor_types), 20, [40, 40, 40])
    assert none.sum() == 0
    assert sorted(full[full >= 0].tolist()) == list(range(edge_index.shape[1]))


def test_water_neighbor_statistics_match_deepmd(shared_data):
    """Spec §2.1: rcut 6 over data_0 + data_1 -> max neighbours [38, 72], min distance 0.885439 Å."""
    systems = read_systems([shared_data("deepmd_water/data_0"), shared_data("deepmd_water/data_1")])
    stats = compute_statistics(systems, ["O", "H"], cutoff=6.0)
    assert stats.max_neighbors_per_type == [38, 72]
    assert stats.min_distance == pytest.approx(0.885439, abs=1e-6)
    # the sel matrix on a real frame: no overflow at sel = [46, 92]; overflow at [30, 60]
    dataset = AtomsDataset(systems[0], cutoff=6.0)
    frame = dataset[0]
    edge_index = torch.from_numpy(frame[K.EDGE_INDEX])
    vectors = edge_vectors(torch.from_numpy(frame[K.POSITIONS]), edge_index, torch.from_numpy(frame[K.EDGE_SHIFTS]),
                           torch.from_numpy(frame[K.CELL]))
    types = torch.from_numpy(frame[K.ATOM_TYPES])[edge_index[1]]
    _, overflow = build_sel_matrix(edge_index, vectors.norm(dim=1), types, 192, [46, 92])
    assert overflow.tolist() == [0, 0]
    _, overflow = build_sel_matrix(edge_index, vectors.norm(dim=1), types, 192, [30, 60])
    assert overflow[0] > 0 and overflow[1] > 0


from hypothesis import given, settings, strategies as st


@settings(max_examples=25, deadline=None)
@given(n_atoms=st.integers(1, 12), n_types=st.integers(1, 3), seed=st.integers(0, 10_000),
       sel_max=st.integers(1, 6))
def test_sel_matrix_matches_reference_on_random_graphs(n_atoms, n_types, seed, sel_max):
    rng = np.random.default_rng(seed)
    positions = rng.random((n_atoms, 3)) * 4.0
    atom_types = rng.integers(0, n_types, n_atoms)
    edge_index, shifts = neighbor_list(positions, np.eye(3) * 4.0, True, 3.0)
    distance = np.linalg.norm(positions[edge_index[1]] - positions[edge_index[0]] + shifts * 4.0, axis=1)
    neighbor_types = atom_types[edge_index[1]]
    sel = list(rng.integers(1, sel_max + 1, n_types))
    nlist, overflow = build_sel_matrix(torch.from_numpy(edge_index), torch.from_numpy(distance).float(),
                                       torch.from_numpy(neighbor_types), n_atoms, sel)
    ref, dropped = _reference_sel(edge_index, distance.astype(np.float32), neighbor_types, n_atoms, sel)
    # equal distances (periodic images at the same range) may swap places; compare distances and types
    padded = np.append(distance, -1.0)  # index -1 (padding) reads -1
    got, want = padded[nlist.numpy()], padded[ref]
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(overflow.numpy(), dropped)
