"""Band-energy gradients (finite differences, separateKptGrad == joint), pre-fit, Monte Carlo, CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mlpot.bands.engine import AnalyticFormFactor, BandProblem
from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.inputs import read_param_vector, read_system_bundle, species_order
from mlpot.bands.models import build_pp_model
from mlpot.bands.montecarlo import monte_carlo
from mlpot.bands.prefit import prefit


def _problem(shared_data, max_ke=2.5, n_k=6, chunk=2):
    folder = shared_data("bands/cdse_zb")
    system = read_system_bundle(folder, 0)
    system.settings["maxKE"] = max_ke
    keep = np.linspace(0, system.kweights.size - 1, n_k).astype(int)
    system.kpoints_frac, system.kweights = system.kpoints_frac[keep], system.kweights[keep]
    system.ref_bands, system.kdist = system.ref_bands[keep], system.kdist[keep]
    species = species_order([system])
    params = np.stack([read_param_vector(folder / f"init_{s}Params.par") for s in species])
    pw = PlaneWaveSystem(system, species, params, basis_mode="sphere")
    return BandProblem([pw], params, kpt_chunk=chunk), params


def _model():
    torch.manual_seed(1)
    return build_pp_model("Net_celu_HeInit_decayGaussian", [1, 6, 6, 2], {"gaussian_std": 2.0})


def test_gradient_matches_finite_differences(shared_data):
    problem, _ = _problem(shared_data)
    model = _model()
    model.zero_grad()
    loss, _ = problem.loss_and_backward(model, separate=True)
    weight = model.neural_network.hidden_l[1].weight
    grad = weight.grad.clone()
    h = 1e-6
    for idx in [(0, 0), (3, 2), (5, 5)]:
        with torch.no_grad():
            weight[idx] += h
            plus = problem.loss_of(problem.evaluate(model))
            weight[idx] -= 2 * h
            minus = problem.loss_of(problem.evaluate(model))
            weight[idx] += h
        fd = (plus - minus) / (2 * h)
        assert fd == pytest.approx(float(grad[idx]), rel=1e-5, abs=1e-6 * max(1.0, loss))


def test_separate_kpoint_gradient_equals_joint(shared_data):
    problem, _ = _problem(shared_data, n_k=7, chunk=3)
    model = _model()
    model.zero_grad()
    loss_joint, bands_joint = problem.loss_and_backward(model, separate=False)
    joint = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_sep, bands_sep = problem.loss_and_backward(model, separate=True)
    assert loss_sep == pytest.approx(loss_joint, rel=1e-12)
    for a, p in zip(joint, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(bands_joint[0], bands_sep[0])


_MEMORY_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {root!r})
from mlpot.bands.inputs import read_param_vector, read_system_bundle, species_order
from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.engine import BandProblem
from mlpot.bands.models import build_pp_model
torch.set_num_threads(1)
folder = {folder!r}
system = read_system_bundle(folder, 0)
species = species_order([system])
params = np.stack([read_param_vector(f"{{folder}}/init_{{s}}Params.par") for s in species])
problem = BandProblem([PlaneWaveSystem(system, species, params, basis_mode="compat")], params, kpt_chunk=4)
model = build_pp_model("Net_relu_xavier_decayGaussian", [1, 20, 20, 20, 2], {{"gaussian_std": 3.0}})
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
base = status_kib("VmRSS")
# reset the high-water mark so that set-up peaks (reading, basis tables) do not hide the backward's
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
problem.loss_and_backward(model, separate={separate})
print((status_kib("VmHWM") - base) / 1024.0)
"""


@pytest.mark.slow
def test_separate_kpoint_gradient_lowers_peak_memory(shared_data):
    """Peak RSS growth of one gradient on cdse_zb (61 k, 453 PWs), each mode in a fresh process."""
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parents[1])
    folder = str(shared_data("bands/cdse_zb"))
    peaks = {}
    for separate in (False, True):
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT.format(root=root, folder=folder, separate=separate)],
                             capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1"})
        peaks[separate] = float(out.stdout.split()[-1])
    print(f"peak RSS growth (MiB): joint {peaks[False]:.0f}, separateKptGrad {peaks[True]:.0f}")
    assert peaks[True] < 0.5 * peaks[False]


def test_zunger_prefit_approaches_analytic(shared_data):
    _, params = _problem(shared_data)
    model = _model()
    analytic = AnalyticFormFactor(params)
    q = torch.linspace(0, 10, 200, dtype=torch.float64)[:, None]
    before = float(((model(q) - analytic(q)) ** 2).mean().detach())
    history = prefit(model, analytic, epochs=40, lr=0.02, gamma=0.9, plot_every=20).history
    assert history[-1][2] < 0.2 * history[0][2]
    assert float(((model(q) - analytic(q)) ** 2).mean().detach()) < 0.2 * before


def test_monte_carlo_never_keeps_worse_best_and_undoes_rejections(shared_data):
    problem, _ = _problem(shared_data, n_k=3)
    model = _model()
    start = problem.loss_of(problem.evaluate(model))
    rows, best_model, _ = monte_carlo(problem, model, iterations=8, mode=1, eps=0.05, beta=50.0, seed=3)
    best = [r[3] for r in rows]
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:])) and best[-1] <= start
    assert problem.loss_of(problem.evaluate(best_model)) == pytest.approx(best[-1], rel=1e-10)
    # the model ends in the last accepted state: its loss is the reported current loss
    assert problem.loss_of(problem.evaluate(model)) == pytest.approx(rows[-1][4], rel=1e-10)


def test_worker_processes_give_the_serial_loss_gradient_and_bands(shared_data):
    """num_cores: k-points in 2 worker processes; same loss, gradient and bands as in process."""
    from mlpot.bands.parallel import KPointPool

    problem, _ = _problem(shared_data, n_k=7, chunk=2)
    model = _model()
    model.zero_grad()
    loss, bands = problem.loss_and_backward(model)
    serial = [p.grad.clone() for p in model.parameters()]
    with KPointPool(problem.systems, workers=2, chunk=2) as pool:
        problem.pool = pool
        model.zero_grad()
        loss_pool, bands_pool = problem.loss_and_backward(model)
        evaluated = problem.evaluate(model)
    assert loss_pool == pytest.approx(loss, rel=1e-12)
    for a, p in zip(serial, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-10, atol=1e-13)
    assert torch.allclose(bands_pool[0], bands[0], atol=1e-12) and torch.allclose(evaluated[0], bands[0], atol=1e-12)


def _validation_loss(model, target):
    from mlpot.bands.prefit import VALIDATION_Q

    q = VALIDATION_Q[:, None]
    with torch.no_grad():
        return float((torch.where(q <= 1.0, 10.0, 1.0) * (model(q) - target(q)) ** 2).mean())


def test_prefit_keeps_its_best_epoch(shared_data):
    _, params = _problem(shared_data)
    model, analytic = _model(), AnalyticFormFactor(params)
    result = prefit(model, analytic, epochs=30, lr=0.3, gamma=1.0, plot_every=10)  # large lr: a noisy descent
    last = result.history[-1][2]
    assert result.best_validation == min([h[2] for h in result.history] + [result.best_validation])
    assert _validation_loss(model, analytic) == pytest.approx(result.best_validation, rel=1e-9)
    assert result.best_validation <= last


def test_diverging_sgd_prefit_stops_at_its_best_epoch(shared_data):
    _, params = _problem(shared_data)
    model, analytic = _model(), AnalyticFormFactor(params)
    result = prefit(model, analytic, epochs=50, lr=5.0, gamma=1.0, plot_every=10, optimizer_name="sgd")
    assert result.diverged_at is not None and result.diverged_at < 50
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _validation_loss(model, analytic) == pytest.approx(result.best_validation, rel=1e-9)


def test_prefit_plot_every_minus_one_skips_snapshots_and_schedule(shared_data):
    _, params = _problem(shared_data)
    model, calls = _model(), []
    result = prefit(model, AnalyticFormFactor(params), epochs=6, lr=0.01, gamma=0.5, plot_every=-1,
                    callback=lambda *a: calls.append(a))
    assert len(result.history) == 6 and calls == []


def test_prefit_to_a_table_fits_the_hamiltonian_q(shared_data):
    """A tabulated target: the q the Hamiltonian uses (focus_q) are fitted much closer than without."""
    from mlpot.bands.potentials import TabulatedFormFactor

    problem, params = _problem(shared_data, max_ke=2.0)
    q = np.linspace(0, 10, 401)
    table = TabulatedFormFactor(q, AnalyticFormFactor(params)(torch.tensor(q)[:, None]).numpy())
    focus = problem.systems[0].q_unique
    errors = []
    for focus_q in (None, focus):
        model = _model()
        prefit(model, table, epochs=60, lr=0.02, gamma=0.9, plot_every=20, focus_q=focus_q, focus_weight=100.0)
        with torch.no_grad():
            errors.append(float((model(focus[:, None]) - table(focus[:, None])).abs().max()))
    assert errors[1] < errors[0]


def test_eigvec_reorder_on_spin_doubled_bands():
    """Overlap following swaps spatial levels and moves each with its spin copy (2n, 2n+1)."""
    from mlpot.bands.loss import eigvec_reorder_permutation

    vectors = np.tile(np.eye(6, 4, dtype=complex), (3, 1, 1))
    vectors[1] = vectors[1][:, [1, 0, 2, 3]]  # levels 0 and 1 exchange their character at k = 1
    vectors[2] = vectors[1]
    perm = eigvec_reorder_permutation(vectors, 8, doubled=True)
    assert perm.shape == (3, 8)
    assert list(perm[0]) == list(range(8)) and list(perm[1]) == [2, 3, 0, 1, 4, 5, 6, 7] == list(perm[2])


def test_eigvec_reorder_runs_on_a_doubled_problem(shared_data):
    from types import SimpleNamespace

    from mlpot.bands.gradient import GradientTraining

    problem, _ = _problem(shared_data, n_k=5)
    assert problem.systems[0].double_bands
    trainer = SimpleNamespace(config=SimpleNamespace(training=SimpleNamespace(reorder="eigvec")), problem=problem,
                              model=_model(), last_bands=problem.evaluate(_model()))
    GradientTraining._reorder(trainer)
    assert problem.permutations[0].shape == (5, 16)
