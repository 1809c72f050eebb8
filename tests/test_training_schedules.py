"""Learning-rate schedules: DeePMD exp arithmetic (specs/deepmd.md §4.1) and optimizers by name."""

import math

import pytest
import torch

from mlpot.errors import ConfigError
from mlpot.training.optim import build_lr_scheduler, build_optimizer, current_lr
from mlpot.training.schedules import ExponentialDecay, build_schedule, deepmd_decay_steps


def test_exp_worked_example_auto_shrink():
    # T = 200, default decay_steps 5000 >= T -> s = 200 // 100 + 1 = 3; r = 0.8574
    sched = ExponentialDecay(start_lr=1e-3, stop_lr=3.51e-8, decay_steps=5000, num_steps=200)
    assert sched.decay_steps == 3
    assert sched.decay_rate == pytest.approx(0.8574, abs=5e-5)
    # displayed step 10 = internal 9 -> 1e-3 r^3 = 6.30e-4; displayed 200 = internal 199 -> r^66
    assert f"{sched.lr(9):.2e}" == "6.30e-04"
    assert sched.lr(9) == pytest.approx(1e-3 * sched.decay_rate**3)
    assert f"{sched.lr(199):.1e}" == "3.9e-08"
    assert sched.lr(199) == pytest.approx(1e-3 * sched.decay_rate**66)
    assert sched.lr(0) == 1e-3
    # stepped: constant inside a decay window
    assert sched.lr(3) == sched.lr(5) < sched.lr(2)


def test_exp_water_rate_and_shrink_rule():
    sched = ExponentialDecay(start_lr=1e-3, stop_lr=3.51e-8, decay_steps=5000, num_steps=1_000_000)
    assert sched.decay_steps == 5000
    assert sched.decay_rate == pytest.approx(0.950007, abs=1e-6)
    assert ExponentialDecay(start_lr=1e-3, stop_lr=3.51e-8, decay_steps=5000, num_steps=100_000).decay_rate == (
        pytest.approx(0.599, abs=1e-3)
    )
    assert deepmd_decay_steps(5000, 2000) == 100  # s >= T and T // 10 > 100
    assert deepmd_decay_steps(5000, 1000) == 11  # T // 10 = 100, not > 100
    assert deepmd_decay_steps(100, 2000) == 100  # unchanged when s < T


def test_exp_clip_smooth_warmup_and_given_rate():
    sched = ExponentialDecay(start_lr=1e-3, stop_lr=1e-4, decay_steps=10, num_steps=100, decay_rate=0.5)
    assert sched.decay_steps == 10  # no shrink when decay_rate is given
    assert sched.lr(95) == 1e-4  # 1e-3 * 0.5^9 < stop_lr -> clipped
    smooth = ExponentialDecay(start_lr=1e-3, stop_lr=1e-6, decay_steps=10, num_steps=100, smooth=True)
    assert smooth.lr(5) == pytest.approx(1e-3 * smooth.decay_rate**0.5)
    warm = ExponentialDecay(start_lr=1e-3, stop_lr=1e-6, decay_steps=10, num_steps=110, warmup_steps=10,
                            warmup_start_factor=0.1)
    assert warm.lr(0) == pytest.approx(1e-4)
    assert warm.lr(5) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert warm.lr(10) == pytest.approx(1e-3)  # decay restarts at t' = t - warmup
    assert warm.lr(109) == pytest.approx(1e-3 * warm.decay_rate**9)
    assert warm.decay_rate == pytest.approx((1e-6 / 1e-3) ** (10 / 100))


def test_other_schedules():
    cos = build_schedule("cosine", 1.0, stop_lr=0.0, num_steps=100)
    assert cos.lr(0) == 1.0 and cos.lr(50) == pytest.approx(0.5) and cos.lr(100) == pytest.approx(0.0)
    step = build_schedule("step", 1.0, step_size=10, gamma=0.1)
    assert step.lr(9) == 1.0 and step.lr(10) == pytest.approx(0.1)
    assert build_schedule("constant", 2.0, warmup_steps=4).lr(2) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"lr_schedule.type: unknown lr schedule 'expo'.*did you mean 'exp'"):
        build_schedule("expo", 1.0)
    with pytest.raises(ConfigError, match=r"lr_schedule.decay_step: unknown option.*did you mean 'decay_steps'"):
        build_schedule("exp", 1.0, decay_step=3)


def test_build_optimizer_by_name_and_groups():
    w = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.zeros(1))
    for name in ("adam", "AdamW", "SGD", "rmsprop", "nadam", "radam", "adagrad"):
        opt = build_optimizer(name, [w], lr=0.1)
        assert type(opt).__name__.lower() == name.lower()
    opt = build_optimizer("adam", [{"params": [w]}, {"params": [b], "lr": 0.5}], lr=0.1)
    sched = build_lr_scheduler(opt, "exp", stop_lr=0.01, decay_steps=1, num_steps=3, decay_rate=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.25])  # group ratios kept
    assert current_lr(opt) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match=r"optimizer.name: unknown optimizer 'adamm'; valid: .*Adam.*did you mean"):
        build_optimizer("adamm", [w], lr=0.1)
    with pytest.raises(ConfigError, match=r"invalid options for optimizer Adam"):
        build_optimizer("adam", [w], lr=0.1, momentum=0.9)


def test_plateau_and_scheduler_state_roundtrip():
    w = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer("sgd", [w], lr=1.0)
    plateau = build_lr_scheduler(opt, "plateau", factor=0.5, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)  # no improvement -> halve
    assert current_lr(opt) == pytest.approx(0.5)
    opt2 = build_optimizer("sgd", [w], lr=1.0)
    sched = build_lr_scheduler(opt2, "exp", stop_lr=1e-3, decay_steps=1, num_steps=10)
    for _ in range(4):
        opt2.step()
        sched.step()
    state = sched.state_dict()
    opt3 = build_optimizer("sgd", [w], lr=1.0)
    sched3 = build_lr_scheduler(opt3, "exp", stop_lr=1e-3, decay_steps=1, num_steps=10)
    sched3.load_state_dict(state)
    opt3.step()
    sched3.step()
    assert current_lr(opt3) == pytest.approx(math.exp(math.log(1e-3) * 5 / 10))


def test_cosine_follows_deepmd_formula_after_warmup():
    # DeePMD-kit 3.x: lr = stop + (start - stop)(1 + cos(pi (t - W) / (N - W))) / 2, stop_lr from t >= N
    sched = build_schedule("cosine", 1e-3, stop_lr=1e-5, num_steps=110, warmup_steps=10, warmup_start_factor=0.2)
    assert sched.lr(0) == pytest.approx(2e-4) and sched.lr(5) == pytest.approx(2e-4 + 0.8e-3 * 0.5)
    for t in (10, 35, 60, 85, 109):
        hand = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (t - 10) / 100))
        assert sched.lr(t) == pytest.approx(hand, rel=1e-12)
    assert sched.lr(60) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-12)
    assert sched.lr(110) == sched.lr(500) == pytest.approx(1e-5)


@pytest.mark.parametrize("decay_type", ["inverse_linear", "cosine", "linear"])
def test_wsd_phases_and_decay_rules(decay_type):
    # N = 10000, W = 1000, ratio 0.1: D = floor(0.1 N) = 1000 (of the total steps), S = N - W - D = 8000
    sched = build_schedule("wsd", 1e-3, stop_lr=1e-5, num_steps=10000, warmup_steps=1000, decay_phase_ratio=0.1,
                           decay_type=decay_type)
    assert (sched.decay_phase_steps, sched.stable_steps) == (1000, 8000)
    assert sched.lr(0) == 0.0 and sched.lr(500) == pytest.approx(0.5e-3)
    assert sched.lr(1000) == sched.lr(5000) == sched.lr(9000) == 1e-3
    for t in (9250, 9500, 9900):
        u = (t - 9000) / 1000
        hand = {"inverse_linear": 1 / (u / 1e-5 + (1 - u) / 1e-3),
                "cosine": 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * u)),
                "linear": 1e-3 + (1e-5 - 1e-3) * u}[decay_type]
        assert sched.lr(t) == pytest.approx(hand, rel=1e-12)
    assert sched.lr(10000) == sched.lr(20000) == 1e-5


def test_wsd_defaults_clamping_and_errors():
    sched = build_schedule("wsd", 1e-3, stop_lr=1e-5, num_steps=10000)
    assert (sched.decay_phase_ratio, sched.decay_type) == (0.1, "inverse_linear")
    assert sched.lr(9500) == pytest.approx(1 / (0.5 / 1e-5 + 0.5 / 1e-3), rel=1e-12)
    short = build_schedule("wsd", 1e-3, stop_lr=1e-5, num_steps=10, warmup_steps=9, decay_phase_ratio=0.2)
    assert (short.decay_phase_steps, short.stable_steps) == (1, 0)  # clamped to the post-warm-up steps
    with pytest.raises(ConfigError, match="decay_phase_ratio must be in"):
        build_schedule("wsd", 1e-3, stop_lr=1e-5, num_steps=100, decay_phase_ratio=0.0)
    with pytest.raises(ConfigError, match="lr_schedule.decay_type: unknown decay_type 'cosin'.*did you mean 'cosine'"):
        build_schedule("wsd", 1e-3, stop_lr=1e-5, num_steps=100, decay_type="cosin")
    with pytest.raises(ConfigError, match="needs stop_lr > 0"):
        build_schedule("wsd", 1e-3, stop_lr=0.0, num_steps=100)
