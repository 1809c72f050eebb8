"""The LKF optimizer (layer-wise Kalman filter, DeePMD-kit ``opt_type: "LKF"``).

Physics-free check: one block with ν = 1 is recursive least squares with forgetting factor λ, so
after T linear measurements y_t = x_t·w the weights are the closed-form minimiser of
Σ_t λ^(T-t) (y_t - x_t·w)² + λ^T |w - w0|² and P the inverse of λ^T I + Σ_t λ^(T-t) x_t x_tᵀ.
Then a tiny se_e2_a model on the water data: a few LKF steps lower the energy and force errors of
the training frames, and the DeePMD-kit keys of both input forms reach the optimizer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlpot.config import deepmd, validate_config
from mlpot.errors import ConfigError
from mlpot.training.lkf import LKF, kalman_blocks


def test_blocks_pack_small_parameters_and_cut_large_ones():
    assert kalman_blocks([3, 4, 2], 10) == [[(0, 0, 3), (1, 0, 4), (2, 0, 2)]]
    assert kalman_blocks([3, 4, 5], 8) == [[(0, 0, 3), (1, 0, 4)], [(2, 0, 5)]]
    assert kalman_blocks([2, 12, 3], 5) == [[(0, 0, 2)], [(1, 0, 5)], [(1, 5, 10)], [(1, 10, 12)], [(2, 0, 3)]]


@pytest.mark.parametrize("lam", [1.0, 0.98, 0.9])
def test_one_block_is_recursive_least_squares(lam):
    torch.manual_seed(0)
    d, T = 5, 40
    weight = torch.nn.Parameter(torch.randn(d, dtype=torch.float64))
    w0 = weight.detach().clone()
    x = torch.randn(T, d, dtype=torch.float64)
    true = torch.randn(d, dtype=torch.float64)
    y = x @ true + 0.1 * torch.randn(T, dtype=torch.float64)
    opt = LKF([weight], kalman_lambda=lam, kalman_nue=1.0, block_size=100)
    for t in range(T):
        opt.zero_grad()
        pred = x[t] @ weight
        pred.backward()
        opt.kalman_step(float(y[t] - pred.detach()))
    decay = lam ** torch.arange(T - 1, -1, -1, dtype=torch.float64)  # λ^(T-t)
    precision = lam ** T * torch.eye(d, dtype=torch.float64) + (x * decay[:, None]).T @ x
    closed = torch.linalg.solve(precision, lam ** T * w0 + (x * decay[:, None]).T @ y)
    torch.testing.assert_close(weight.detach(), closed, rtol=0, atol=1e-12)
    torch.testing.assert_close(opt.state[weight]["P"][0], torch.linalg.inv(precision), rtol=0, atol=1e-12)
    assert float((weight.detach() - true).norm()) < 0.1 * float((w0 - true).norm())


def test_forgetting_factor_schedule_and_state_dict():
    weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LKF([weight], kalman_lambda=0.98, kalman_nue=0.9987)
    for _ in range(3):
        opt.zero_grad()
        (weight * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
        opt.kalman_step(0.5)
    lam = 0.98
    for _ in range(3):
        lam = 0.9987 * lam + 1 - 0.9987
    assert opt.state[weight]["kalman_lambda"] == pytest.approx(lam, rel=1e-15)
    other = LKF([torch.nn.Parameter(weight.detach().clone())])
    other.load_state_dict(opt.state_dict())
    torch.testing.assert_close(other.state[other.params[0]]["P"][0], opt.state[weight]["P"][0], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="kalman_step"):
        opt.step()
    with pytest.raises(ValueError, match="multiple of atoms_per_group"):
        LKF([weight], force_atoms=10, atoms_per_group=6)


def _toy(weights):
    """A linear 'model' on one frame of 4 atoms: E = c·w, F = M w; labels E = 1 eV, random forces."""
    from mlpot.data import keys as K

    gen = torch.Generator().manual_seed(1)
    c, M = torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(12, 5, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    batch = {K.N_ATOMS: torch.tensor([4]), K.ENERGY: torch.tensor([1.0], dtype=torch.float64),
             K.FORCES: torch.randn(4, 3, generator=gen, dtype=torch.float64),
             K.weight_key(K.ENERGY): torch.tensor([weights[0]], dtype=torch.float64),
             K.weight_key(K.FORCES): torch.tensor([weights[1]], dtype=torch.float64)}
    return c, w, batch, lambda: {K.ENERGY: (c @ w)[None], K.FORCES: (M @ w).reshape(4, 3)}


def test_energy_measurement_with_the_sign_trick():
    """Energy label only (force weight 0): one batch update is the Kalman update of the per-atom
    energy, w1 = w0 + (E - Ê)/N · (c/N) / (λ + |c/N|²), whatever the sign of the residual; missing
    labels (weight 0) leave the weights unchanged."""
    c, w, batch, predict = _toy((1.0, 0.0))
    w0, n = w.detach().clone(), 4.0
    energy = float(c @ w0)
    LKF([w], kalman_lambda=0.98).update_from_batch(predict, batch, progress=0.0)
    expected = w0 + (1.0 - energy) / n * (c / n) / (0.98 + float((c / n).dot(c / n)))
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-14)
    c, w, batch, predict = _toy((0.0, 0.0))
    w0 = w.detach().clone()
    LKF([w]).update_from_batch(predict, batch, progress=0.5)
    assert torch.equal(w.detach(), w0)


def water_input(shared_data, optimizer=None, **training):
    """Tiny se_e2_a (embedding [4, 8], fitting [16]) on data_0 of the water example, batch 1."""
    config = {
        "model": {"type_map": ["O", "H"],
                  "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut": 6.0, "rcut_smth": 0.5,
                                 "neuron": [4, 8], "axis_neuron": 4, "seed": 1},
                  "fitting_net": {"neuron": [16], "seed": 1}},
        "learning_rate": {"start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 5},
        "loss": {"start_pref_e": 0.02, "limit_pref_e": 1.0, "start_pref_f": 1000, "limit_pref_f": 1.0},
        "training": {"training_data": {"systems": [str(shared_data("deepmd_water/data_0"))], "batch_size": 1},
                     "numb_steps": 8, "seed": 3, "disp_freq": 8, "save_freq": 8, **training},
    }
    if optimizer is not None:
        config["optimizer"] = optimizer
    return config


def _errors(trainer, frames):
    """RMSE of the per-atom energy (eV) and of the forces (eV/Å) over ``frames`` of the training data."""
    from mlpot.data import keys as K
    from mlpot.training.tasks import predict

    batch = trainer.task_data[""].train_batch(frames)
    pred = predict(trainer.model, batch, [K.ENERGY, K.FORCES], create_graph=False)
    de = (pred[K.ENERGY].detach() - batch[K.ENERGY]) / batch[K.N_ATOMS]
    df = pred[K.FORCES].detach() - batch[K.FORCES]
    return float(de.pow(2).mean().sqrt()), float(df.pow(2).mean().sqrt())


def _train(tmp_path, config, steps, monkeypatch=None, frames=(0, 1, 2, 3)):
    """Train ``steps`` steps; with ``monkeypatch`` the batches cycle over ``frames`` (one frame each).
    Returns the trainer and the (energy, force) RMSEs over ``frames`` before and after."""
    import mlpot.training.trainer as trainer_module
    from mlpot.training.trainer import Trainer

    native = deepmd.convert_dict(config, base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / "out")
    native["logging"]["debug_log"] = None
    native["logging"]["metrics_csv"] = None
    trainer = Trainer(validate_config(native), progress=False)
    trainer._enter_stage(0)
    frames = list(frames)
    if monkeypatch is not None:
        monkeypatch.setattr(trainer_module, "next_indices", lambda data, count=iter(range(10**6)):
                            [frames[next(count) % len(frames)]])
    before = _errors(trainer, frames)
    for _ in range(steps):
        trainer.train_step(metrics=False)
    return trainer, before, _errors(trainer, frames)


def test_lkf_lowers_water_energy_and_force_errors(tmp_path, shared_data, monkeypatch):
    """One LKF step on frame 0 removes most of that frame's energy residual (to first order the
    energy measurement leaves a fraction λ / (λ + HᵀPH) ≈ 0.18 of it here); 8 steps cycling over 4
    frames lower the energy and force errors of those frames. The force measurements start slow, as
    in DeePMD-kit: H is the gradient of a signed sum of 18 force components divided by n_atoms · 18
    (|H|² ~ 1e-8 here) against P = I, so an update corrects a tiny fraction of the residual until P
    has grown by ∏ 1/λ over hundreds of steps."""
    config = water_input(shared_data, opt_type="LKF", kf_blocksize=1024, numb_steps=8)
    trainer, before, after = _train(tmp_path / "one", config, 1, monkeypatch, frames=(0,))
    assert isinstance(trainer.optimizer, LKF)
    assert len(trainer.optimizer.blocks) > 1  # several blocks of at most 1024 weights
    assert max(b - a for block in trainer.optimizer.blocks for _, a, b in block) <= 1024
    assert after[0] < 0.5 * before[0], (before, after)
    trainer, before, after = _train(tmp_path / "cycle", config, 8, monkeypatch)
    assert after[0] < 0.9 * before[0] and after[1] < before[1], (before, after)


def test_lkf_keys_of_both_input_forms(tmp_path, shared_data):
    old = water_input(shared_data, opt_type="LKF", kf_blocksize=256, kf_start_pref_e=2.0, kf_limit_pref_f=0.5)
    new = water_input(shared_data, optimizer={"type": "LKF", "kf_blocksize": 256, "kf_start_pref_e": 2.0,
                                              "kf_limit_pref_f": 0.5})
    expected = {"name": "lkf", "kwargs": {"block_size": 256, "start_pref_e": 2.0, "limit_pref_f": 0.5}}
    for config in (old, new):
        assert deepmd.convert_dict(json.loads(json.dumps(config)), base_dir=tmp_path)["optimizer"] == expected
    with pytest.raises(ConfigError, match="kf_blocksiz"):
        deepmd.convert_dict(water_input(shared_data, optimizer={"type": "LKF", "kf_blocksiz": 256}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="adam_beta1 is not an option of the LKF"):
        deepmd.convert_dict(water_input(shared_data, optimizer={"type": "LKF", "adam_beta1": 0.8}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="kf_blocksize belongs to the LKF optimizer"):
        deepmd.convert_dict(water_input(shared_data, optimizer={"type": "Adam", "kf_blocksize": 8}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="LKF optimizer with .*acc_freq"):
        _train(tmp_path, water_input(shared_data, opt_type="LKF", acc_freq=2), 0)
    with pytest.raises(ConfigError, match="clipping has no effect on the LKF"):
        _train(tmp_path, water_input(shared_data, opt_type="LKF", gradient_max_norm=1.0), 0)
