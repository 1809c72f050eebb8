"""DeePMD batch-size rules and system probabilities (spec §5.2-5.3); sampler determinism and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlpot.data import EpochSampler, SystemSampler, resolve_batch_sizes, system_probabilities
from mlpot.errors import ConfigError


def test_batch_size_rules():
    assert resolve_batch_sizes("auto", [192, 7, 10]) == [1, 5, 4]  # ceil(32 / n)
    assert resolve_batch_sizes("auto:100", [192, 7]) == [1, 15]
    assert resolve_batch_sizes("max:100", [192, 7]) == [1, 14]  # max(1, floor(N / n))
    assert resolve_batch_sizes("filter:100", [192, 7]) == [0, 14]
    assert resolve_batch_sizes(3, [192, 7]) == [3, 3]
    assert resolve_batch_sizes([2, 5], [192, 7]) == [2, 5]
    with pytest.raises(ConfigError, match=r"batch_size: expected an int, a list or 'auto\[:N\]'"):
        resolve_batch_sizes("many", [192])
    with pytest.raises(ConfigError, match=r"batch_size: 1 batch sizes for 2 systems"):
        resolve_batch_sizes([1], [192, 7])


def test_system_probabilities_of_the_spec():
    # water data_0 + data_1, batch 1: proportional to batches -> 1/3, 2/3
    np.testing.assert_allclose(system_probabilities([80, 160]), [1 / 3, 2 / 3])
    np.testing.assert_allclose(system_probabilities([80, 160, 80]), [0.25, 0.5, 0.25])
    np.testing.assert_allclose(system_probabilities([80, 160], "prob_uniform"), [0.5, 0.5])
    # blocks [0, 1) weight 1 and [1, 3) weight 3 -> 0.25, then 0.75 split 1:3 by batches
    np.testing.assert_allclose(system_probabilities([10, 10, 30], "prob_sys_size;0:1:1;1:3:3"),
                               [0.25, 0.75 * 0.25, 0.75 * 0.75])
    # sys_probs: unassigned (< 0) share the rest in proportion to batches
    np.testing.assert_allclose(system_probabilities([10, 20, 60], sys_probs=[0.2, -1, -1]),
                               [0.2, 0.8 * 0.25, 0.8 * 0.75])
    with pytest.raises(ConfigError, match=r"sys_probs: assigned probabilities sum to 1.2 > 1"):
        system_probabilities([1, 1], sys_probs=[0.6, 0.6])
    with pytest.raises(ConfigError, match=r"batch_size: no system to sample from \(batches per system: \[0, 0\]"):
        SystemSampler([5, 5], "filter:4", n_atoms=[7, 10])
    with pytest.raises(ConfigError, match=r"auto_prob: unknown auto_prob 'prob_sizes'"):
        system_probabilities([1, 1], "prob_sizes")


def test_sampler_from_systems(shared_data):
    from mlpot.data import read_systems
    systems = read_systems(shared_data("deepmd_nopbc"))
    sampler = SystemSampler.from_systems(systems, "auto", seed=0)
    assert sampler.batch_sizes == [5, 4, 4] and sampler.n_batches == [313, 122, 4]
    np.testing.assert_allclose(sampler.probabilities, np.array([313, 122, 4]) / 439)


def test_number_of_batches_uses_ceil():
    sampler = SystemSampler([80, 161], 2, seed=1)
    assert sampler.n_batches == [40, 81]
    np.testing.assert_allclose(sampler.probabilities, [40 / 121, 81 / 121])


def test_system_sampler_batches_and_empirical_probabilities():
    sampler = SystemSampler([80, 160], "auto", n_atoms=[192, 192], seed=3)
    systems, seen = [], {0: [], 1: []}
    for _ in range(3000):
        batch = sampler.next_batch()
        assert len(batch) == 1
        systems.append(sampler.last_system)
        seen[sampler.last_system] += batch
    assert np.mean(systems) == pytest.approx(2 / 3, abs=0.03)
    assert all(0 <= i < 80 for i in seen[0]) and all(80 <= i < 240 for i in seen[1])
    # each system's first pass is a permutation of its frames
    assert sorted(seen[0][:80]) == list(range(80))
    # batch of several frames from one system only
    sampler = SystemSampler([7, 10], "auto", n_atoms=[7, 10], seed=0)
    for _ in range(20):
        batch = sampler.next_batch()
        offset = 0 if sampler.last_system == 0 else 7
        assert all(offset <= i < offset + [7, 10][sampler.last_system] for i in batch)


@pytest.mark.parametrize("make", [
    lambda: SystemSampler([13, 29, 5], [2, 3, 1], seed=11),
    lambda: EpochSampler(23, 4, seed=5),
])
def test_resume_gives_the_same_batches(make):
    reference = make()
    draws = [_draw(reference) for _ in range(40)]
    interrupted = make()
    for _ in range(17):
        _draw(interrupted)
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    assert [_draw(resumed) for _ in range(23)] == draws[17:]
    again = make()
    assert [_draw(again) for _ in range(40)] == draws  # seeded: reproducible from scratch


def _draw(sampler):
    batch = sampler.next_batch()
    return batch if batch is not None else sampler.next_batch()


def test_epoch_sampler_covers_every_frame_once_per_epoch():
    sampler = EpochSampler(10, 3, seed=0)
    first = list(iter(sampler))
    second = list(iter(sampler))
    assert len(first) == len(sampler) == 4 and [len(b) for b in first] == [3, 3, 3, 1]
    assert sorted(sum(first, [])) == list(range(10)) == sorted(sum(second, []))
    assert first != second  # reshuffled each epoch
    assert len(list(iter(EpochSampler(10, 3, drop_last=True)))) == 3
