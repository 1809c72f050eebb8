"""AtomsDataset caching and collate of frames of different sizes and label sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpot.data import (AtomsDataset, FrameList, check_distances, collate, concat_frame_lists, edge_vectors, read_frames,
                        read_systems)
from mlpot.data import keys as K
from mlpot.errors import DataError


def test_collate_mixed_sizes_and_missing_labels(shared_data, dtype):
    clusters = read_frames(shared_data("water_clusters_aims/water_clusters.xyz"), index="0:3")
    for frame in clusters:
        del frame[K.FERMI_LEVEL], frame[K.weight_key(K.FERMI_LEVEL)]
    clusters[1][K.FERMI_LEVEL] = np.array(-5.0)
    clusters[1][K.weight_key(K.FERMI_LEVEL)] = np.array(0.5)
    del clusters[2][K.FORCES], clusters[2][K.weight_key(K.FORCES)]
    dataset = AtomsDataset(clusters, cutoff=3.0)
    items = [dataset[i] for i in range(3)]
    batch = collate(items, dtype=dtype)
    sizes = [len(f[K.POSITIONS]) for f in clusters]
    assert batch[K.N_ATOMS].tolist() == sizes
    assert batch[K.PTR].tolist() == [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    assert batch[K.BATCH].tolist() == sum(([n] * s for n, s in enumerate(sizes)), [])
    assert batch[K.POSITIONS].dtype == dtype and batch[K.POSITIONS].shape == (sum(sizes), 3)
    assert batch[K.ATOM_TYPES].dtype == torch.long and batch[K.PBC].dtype == torch.bool
    assert batch[K.CELL].shape == (3, 3, 3) and batch[K.FRAME_ID].tolist() == [0, 1, 2]
    # labels: present somewhere -> everywhere, with weight 0 where missing
    assert batch[K.weight_key(K.FERMI_LEVEL)].tolist() == [0.0, 0.5, 0.0]
    assert batch[K.FERMI_LEVEL].tolist() == [0.0, -5.0, 0.0]
    assert batch[K.weight_key(K.FORCES)].tolist() == [1.0, 1.0, 0.0]
    assert torch.all(batch[K.FORCES][sizes[0] + sizes[1]:] == 0)
    assert batch[K.weight_key(K.DIPOLE)].shape == (3, 3)
    assert K.VIRIAL not in batch
    # edges are offset per frame and give the same vectors as frame by frame
    vectors = edge_vectors(batch[K.POSITIONS], batch[K.EDGE_INDEX], batch[K.EDGE_SHIFTS], batch[K.CELL], batch[K.BATCH])
    single = [edge_vectors(torch.as_tensor(f[K.POSITIONS], dtype=dtype), torch.from_numpy(f[K.EDGE_INDEX]),
                           torch.as_tensor(f[K.EDGE_SHIFTS], dtype=dtype), torch.as_tensor(f[K.CELL], dtype=dtype))
              for f in items]
    torch.testing.assert_close(vectors, torch.cat(single))
    assert torch.all(batch[K.BATCH][batch[K.EDGE_INDEX][0]] == batch[K.BATCH][batch[K.EDGE_INDEX][1]])


def test_collate_deepmd_systems_of_different_formulas(shared_data):
    systems = read_systems(shared_data("deepmd_nopbc"))
    frames = [systems[0][0], systems[1][0], systems[2][0]]
    dataset = AtomsDataset(FrameList(frames, systems[0].type_map), cutoff=5.0)
    batch = collate([dataset[i] for i in range(3)])
    assert batch[K.N_ATOMS].tolist() == [7, 10, 8]
    assert batch[K.ENERGY].shape == (3,) and batch[K.FORCES].shape == (25, 3)
    assert batch[K.EDGE_INDEX].max() < 25 and not batch[K.PBC].any()


def test_dataset_caches_neighbor_lists(shared_data, monkeypatch):
    frames = read_frames(shared_data("deepmd_water/data_0"), index="0:2")
    dataset = AtomsDataset(frames, cutoff=6.0)
    first = dataset[1]
    calls = []
    import mlpot.data.batching as batching
    monkeypatch.setattr(batching, "neighbor_list", lambda *a: calls.append(a))
    again = dataset[1]
    assert not calls
    np.testing.assert_array_equal(again[K.EDGE_INDEX], first[K.EDGE_INDEX])
    assert again[K.EDGE_INDEX].dtype == np.int64 and again[K.EDGE_SHIFTS].dtype == np.float64
    assert K.EDGE_INDEX not in frames[1]  # the source frames are not modified


def test_close_atoms_are_a_data_error_naming_file_frame_and_atoms():
    def frame(gap):
        return {K.POSITIONS: np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [gap, 0.0, 0.0]]), K.CELL: np.zeros((3, 3)),
                K.PBC: np.zeros(3, bool), K.ATOM_TYPES: np.array([0, 1, 1])}
    dataset = AtomsDataset(FrameList([frame(1.5), frame(0.2)], ["H", "O"], source="tiny.xyz"), cutoff=2.0)
    with pytest.raises(DataError, match=r"tiny\.xyz: frame 1: atom 0 \(H\) and atom 2 \(O\) are 0\.2000 Å apart, "
                                        r"closer than min_distance = 0\.3 Å"):
        dataset[1]
    assert K.EDGE_INDEX in dataset[0]
    with pytest.raises(DataError, match=r"tiny\.xyz: frame 1: atom 0 \(H\) and atom 2 \(O\)"):
        dataset.check_distances()  # every frame, without building the neighbour lists at the cutoff
    # two atoms on one site (0/0 in the descriptors: a NaN model) and the check turned off
    with pytest.raises(DataError, match=r"are 0\.0000 Å apart"):
        check_distances(FrameList([frame(0.0)], ["H", "O"], source="tiny.xyz"))
    assert AtomsDataset(FrameList([frame(0.2)], ["H", "O"]), cutoff=2.0, min_distance=0.1)[0][K.FRAME_ID] == 0
    check_distances(FrameList([frame(0.0)], ["H", "O"]), min_distance=0.0)


def test_periodic_images_count_for_the_closest_pair():
    cell = np.eye(3) * 5.0
    frame = {K.POSITIONS: np.array([[0.05, 1.0, 1.0], [4.9, 1.0, 1.0]]), K.CELL: cell, K.PBC: np.ones(3, bool),
             K.ATOM_TYPES: np.zeros(2, np.int64)}
    with pytest.raises(DataError, match=r"atom 0 \(H\) and atom 1 \(H\) are 0\.1500 Å apart"):
        check_distances(FrameList([frame], ["H"], source="box.xyz"))


def test_dataset_precompute_and_pickle(shared_data):
    import pickle
    frames = read_frames(shared_data("deepmd_nopbc/C4H3O1"))
    dataset = AtomsDataset(frames, cutoff=4.0).precompute()
    assert all(edges is not None for edges in dataset._edges)
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.type_map == ["C", "H", "O"] and copy.frames.source == frames.source
    np.testing.assert_array_equal(copy[3][K.EDGE_INDEX], dataset[3][K.EDGE_INDEX])


def test_close_atoms_error_names_the_system_after_concatenation():
    def frame(gap):
        return {K.POSITIONS: np.array([[0.0, 0.0, 0.0], [gap, 0.0, 0.0]]), K.CELL: np.zeros((3, 3)),
                K.PBC: np.zeros(3, bool), K.ATOM_TYPES: np.zeros(2, np.int64)}
    first = FrameList([frame(1.0)], ["H"], source="a.xyz")
    second = FrameList([frame(1.0), frame(0.2)], ["H"], source="b.xyz")
    dataset = AtomsDataset(concat_frame_lists([first, second]), cutoff=2.0)
    with pytest.raises(DataError, match=r"b\.xyz: frame 1: atom 0 \(H\) and atom 1 \(H\) are 0\.2000 Å apart"):
        dataset[2]
