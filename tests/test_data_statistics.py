"""Dataset statistics: least-squares energy bias (spec §3.1), forces RMS, neighbour stats, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlpot.data import AtomsDataset, auto_sel, compute_statistics, energy_bias_lstsq, read_frames, read_systems
from mlpot.data import keys as K
from mlpot.data.statistics import DatasetStatistics


@pytest.fixture(scope="module")
def water(shared_data):
    return read_systems([shared_data("deepmd_water/data_0"), shared_data("deepmd_water/data_1")])


def test_energy_bias_least_squares_water(water, tmp_path):
    stats = compute_statistics(water, ["O", "H"], cutoff=None, cache=tmp_path)
    assert stats.n_frames == 240
    # minimum-norm solution for a fixed composition (64, 128): b proportional to it
    assert stats.energy_bias == pytest.approx([-93.57366, -187.14733], abs=1e-5)
    assert stats.bias_residual_std == pytest.approx(0.6617, abs=1e-4)
    assert stats.bias_residual_rms_per_atom == pytest.approx(3.45e-3, abs=1e-5)
    assert stats.energy_per_atom_mean == pytest.approx(-155.96, abs=1e-2)
    assert stats.forces_rms == pytest.approx(0.816, abs=2e-3)
    assert stats.label_counts == {"energy": 240, "forces": 240}
    assert stats.atoms_per_frame == {"min": 192, "mean": 192.0, "max": 192}


def test_energy_bias_full_rank_recovers_exact_biases():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 9, size=(12, 3))
    true_bias = np.array([-3.5, 1.25, -0.75])
    bias, residual = energy_bias_lstsq(counts, counts @ true_bias)
    np.testing.assert_allclose(bias, true_bias, atol=1e-12)
    assert np.abs(residual).max() < 1e-10
    # a preset bias is held fixed and the others fitted to the rest
    bias, _ = energy_bias_lstsq(counts, counts @ true_bias, preset=[None, 2.0, None])
    assert bias[1] == 2.0
    rest = np.linalg.lstsq(counts[:, [0, 2]], counts @ true_bias - 2.0 * counts[:, 1], rcond=None)[0]
    np.testing.assert_allclose(bias[[0, 2]], rest, atol=1e-12)


def test_auto_sel_rounds_up_to_multiple_of_four():
    assert auto_sel([38, 72]) == [44, 80]
    assert auto_sel([38, 72], factor=1.0) == [40, 72]


def test_statistics_cache_is_hit_on_second_call(shared_data, tmp_path, monkeypatch):
    frames = read_frames(shared_data("water_clusters_aims/water_clusters.xyz"))
    first = compute_statistics(frames, frames.type_map, cutoff=4.0, cache=tmp_path)
    assert not first.from_cache and len(list((tmp_path / "mlpot" / "dataset").iterdir())) == 1
    import mlpot.data.statistics as statistics
    monkeypatch.setattr(statistics, "_compute", lambda *a: pytest.fail("recomputed despite the cache"))
    second = compute_statistics(frames, frames.type_map, cutoff=4.0, cache=tmp_path)
    assert second.from_cache and second == first
    # another cutoff is another cache entry
    monkeypatch.undo()
    third = compute_statistics(frames, frames.type_map, cutoff=5.0, cache=tmp_path)
    assert not third.from_cache and len(list((tmp_path / "mlpot" / "dataset").iterdir())) == 2
    assert DatasetStatistics.from_dict(json.loads(json.dumps(third.to_dict()))) == third


def test_cluster_statistics_and_dataset_edges_reused(shared_data):
    frames = read_frames(shared_data("water_clusters_aims/water_clusters.xyz"))
    dataset = AtomsDataset(frames, cutoff=4.0)
    from_dataset = compute_statistics(dataset, frames.type_map, cutoff=4.0)
    direct = compute_statistics(frames, frames.type_map, cutoff=4.0)
    assert from_dataset == direct
    assert direct.atoms_per_frame["min"] == 2 and direct.atoms_per_frame["max"] == 37
    assert direct.label_counts[K.ENERGY] == 150 and direct.label_counts[K.DIPOLE] == 150
    assert len(direct.energy_bias) == 2 and all(len(x) == 2 for x in
                                                (direct.forces_rms_per_type, direct.max_neighbors_per_type))
    # an isolated 2-atom frame has exactly one neighbour each: the mean count stays sane
    assert 0 < direct.mean_neighbors < 40 and 0.9 < direct.min_distance < 1.1


def test_cache_of_concatenated_systems_sees_every_source(shared_data, tmp_path):
    import os
    import shutil
    from mlpot.data import concat_frame_lists, read_systems
    for name in ("a", "b"):
        shutil.copytree(shared_data("deepmd_nopbc/C4H3O1"), tmp_path / name)
    dataset = AtomsDataset(concat_frame_lists(read_systems([tmp_path / "a", tmp_path / "b"])), cutoff=4.0)
    assert dataset.frames.sources == [str(tmp_path / "a"), str(tmp_path / "b")]
    cache = tmp_path / "cache"
    assert not compute_statistics(dataset, dataset.type_map, cutoff=4.0, cache=cache).from_cache
    assert compute_statistics(dataset, dataset.type_map, cutoff=4.0, cache=cache).from_cache
    energy = tmp_path / "b" / "set.000" / "energy.npy"
    os.chmod(energy, 0o644)
    os.utime(energy, ns=(energy.stat().st_atime_ns, energy.stat().st_mtime_ns + 10**9))
    assert not compute_statistics(dataset, dataset.type_map, cutoff=4.0, cache=cache).from_cache
