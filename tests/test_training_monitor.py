"""Generic engine features NequIP configs rely on: the monitored validation value with Lightning's early
stopping rule, per-type loss terms (NequIP per_type_forces_coeffs), random splits (NequIP's
split_dataset) and the data statistics the probe serves (unbiased standard deviations)."""

import math

import numpy as np
import pytest
import torch

from mlpot.data import keys as K
from mlpot.data.splits import split_indices
from mlpot.errors import ConfigError
from mlpot.training.losses import WeightedLoss
from mlpot.training.monitor import EarlyStoppingConfig, MonitorConfig, ValidationMonitor
from mlpot.training.schema import LossTerm


def test_monitor_weighted_sum_best_and_lightning_early_stopping():
    monitor = ValidationMonitor(MonitorConfig(metrics={"energy_mae": 1.0, "forces_mae": 3.0}),
                                EarlyStoppingConfig(patience=3, min_delta=0.1))
    assert monitor.value({"energy_mae": 0.4, "forces_mae": 0.8, "rmse": 9.0}) == pytest.approx(0.25 * 0.4 + 0.75 * 0.8)
    with pytest.raises(KeyError, match="stress_mae"):
        ValidationMonitor(MonitorConfig(metrics={"stress_mae": 1.0})).value({"energy_mae": 1.0})
    # Lightning: the reference moves only on improvements larger than min_delta; the best on any
    history = [(1.0, True), (0.95, True), (0.93, True), (0.85, True), (0.9, False), (0.8, True)]
    for step, (value, best) in enumerate(history):
        assert monitor.update(value, step) is best and monitor.stop_reason is None
    assert monitor.reference == 0.85 and monitor.wait == 2
    monitor.update(0.79, 6)
    assert monitor.stop_reason is not None and "no improvement larger than 0.1 in 3 validations" in monitor.stop_reason
    assert monitor.best == 0.79 and monitor.best_step == 6
    restored = ValidationMonitor(None, EarlyStoppingConfig())
    restored.load_state_dict(monitor.state_dict())
    assert restored.best == 0.79 and restored.wait == 3
    finite = ValidationMonitor(None, EarlyStoppingConfig(stopping_threshold=0.5))
    finite.update(math.nan, 0)
    assert "nan" in finite.stop_reason
    threshold = ValidationMonitor(None, EarlyStoppingConfig(stopping_threshold=0.5))
    threshold.update(0.4, 0)
    assert "stopping_threshold" in threshold.stop_reason


def test_per_type_force_term_is_the_weighted_mean_of_type_means():
    types = torch.tensor([0, 0, 1, 1, 1, 0])
    residual = torch.arange(18, dtype=torch.float64).reshape(6, 3) / 10
    batch = {K.FORCES: torch.zeros(6, 3, dtype=torch.float64), K.weight_key(K.FORCES): torch.ones(2, dtype=torch.float64),
             K.BATCH: torch.tensor([0, 0, 0, 1, 1, 1]), K.ATOM_TYPES: types, K.N_ATOMS: torch.tensor([3, 3])}
    pred = {K.FORCES: residual}
    loss = WeightedLoss({"forces": LossTerm(per_type={"O": 5.0, "H": 1.0})}, type_map=["O", "H"])
    _, _, raw = loss(pred, batch)
    mse = [float((residual[types == t] ** 2).mean()) for t in (0, 1)]
    assert float(raw["forces"]) == pytest.approx((5 * mse[0] + mse[1]) / 6)
    equal = WeightedLoss({"forces": LossTerm(per_type=True)}, type_map=["O", "H"])
    assert float(equal(pred, batch)[2]["forces"]) == pytest.approx(sum(mse) / 2)
    only_h = {**batch, K.ATOM_TYPES: torch.ones(6, dtype=torch.long)}  # a type absent from the batch does not count
    assert float(loss(pred, only_h)[2]["forces"]) == pytest.approx(float((residual ** 2).mean()))
    with pytest.raises(ConfigError, match=r"loss\.terms\.forces\.per_type: give a positive weight for every type"):
        WeightedLoss({"forces": LossTerm(per_type={"O": 1.0})}, type_map=["O", "H"])
    with pytest.raises(ConfigError, match="per_type applies to atomic labels"):
        WeightedLoss({"energy": LossTerm(per_type=True)}, type_map=["O", "H"])


@pytest.mark.parametrize("sizes", [{"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 50, "val": 27}, {"val": 0.3, "train": 0.7}])
def test_split_is_torch_random_split(sizes):
    n = 77
    parts = split_indices(n, sizes, seed=456)
    expected = torch.utils.data.random_split(range(n), list(sizes.values()), generator=torch.Generator().manual_seed(456))
    assert [parts[name] for name in sizes] == [list(p.indices) for p in expected]
    assert sorted(i for part in parts.values() for i in part) == list(range(n))
    with pytest.raises(ConfigError, match="sum to 1"):
        split_indices(n, {"train": 0.8, "val": 0.3}, 0)


def test_probe_statistics_have_sample_standard_deviations(shared_data):
    from mlpot.training.data_setup import DataProbe
    from mlpot.training.schema import DataSection

    probe = DataProbe(DataSection(paths=[str(shared_data("deepmd_water/data_3"))], format="deepmd/npy"))
    stats = probe.statistics(4.0, ["O", "H"])
    energies = np.concatenate([np.load(p).astype(np.float64) for p in sorted(shared_data("deepmd_water/data_3").glob("set.*/energy.npy"))])
    assert stats.energy_sample_std == pytest.approx(np.std(energies, ddof=1), rel=1e-10)
    assert stats.energy_per_atom_sample_std == pytest.approx(np.std(energies / 192, ddof=1), rel=1e-10)
    assert len(probe.frames(["O", "H"])) == len(energies) and probe.reads == 1
