"""Monte Carlo fitting of the NN pseudopotential (spec deepseudopot.md §4.7).

Each iteration proposes new NN weights (and, for spinor systems, new SO/NL parameters a5..a7)
with one of the kernels ``mc_perturb_mode`` 1-7 (ε = ``mc_percentage``), evaluates the band loss
L without gradients, and accepts when L_new < L_best (new best) or with probability
exp(-β(√L_new - √L_cur)). Rejected moves are undone (NN and SO/NL alike; the 2024 code kept
rejected NN moves [BUG]). β is ``mc_beta`` or, with a schedule, the beta of the last schedule row
whose iteration is <= the current one.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import numpy as np
import torch

__all__ = ["perturb_weights", "perturb_so_nl", "monte_carlo", "NNMonteCarlo", "beta_at"]


def _sign(shape, generator):
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(torch.float64) * 2 - 1


def perturb_weights(state: Dict[str, torch.Tensor], mode: int, eps: float, generator: torch.Generator) -> Dict:
    """New NN state (floating tensors perturbed by kernel ``mode``; modes 6-7 leave it unchanged)."""
    out = {}
    for name, w in state.items():
        if not torch.is_floating_point(w) or mode in (6, 7):
            out[name] = w.clone()
            continue
        u = torch.rand(w.shape, generator=generator, dtype=w.dtype)
        if mode == 1:
            new = w * (1 - eps + 2 * eps * u)
        elif mode == 2:
            sign = _sign(w.shape, generator).to(w.dtype)
            new = torch.where(w.abs() > 20, w - u * eps * w,
                              torch.where(w.abs() < 0.01, w + sign * u * 10 * eps * w, w + sign * u * eps * w))
        elif mode == 3:
            mean, std = w.mean(), w.std() if w.numel() > 1 else torch.tensor(1.0, dtype=w.dtype)
            std = std if std > 0 else torch.tensor(1.0, dtype=w.dtype)
            z = (w - mean) / std
            mask = torch.rand(w.shape, generator=generator, dtype=w.dtype) < 0.5
            noise = torch.randn(w.shape, generator=generator, dtype=w.dtype) * eps
            new = (z + mask * noise) * std + mean
        else:  # 4: ±ε, 5: ±ε/10 per element, each tensor with probability 0.6
            step = eps if mode == 4 else eps / 10
            apply = float(torch.rand((), generator=generator)) < 0.6
            new = w + step * _sign(w.shape, generator).to(w.dtype) if apply else w.clone()
        out[name] = new
    return out


def perturb_so_nl(params: np.ndarray, mode: int, eps: float, rng: np.random.Generator) -> np.ndarray:
    """New (n_species, 9) parameters with a5..a7 perturbed by kernel ``mode`` (mode 3: unchanged)."""
    new = params.copy()
    cols = {6: [5], 7: [6, 7]}.get(mode, [5, 6, 7])
    block = new[:, cols]
    shape = block.shape
    if mode == 1:
        block = block * (1 + rng.choice([-1, 1], shape) * rng.random(shape) * eps / 100)
    elif mode == 2:
        block = block * (1 + rng.choice([-1, 1], shape) * rng.random(shape) * eps / 1000)
    elif mode in (4, 5, 6, 7):
        step = eps / 1000 if mode == 4 else eps
        apply = rng.random(shape) < 0.6
        block = block + apply * rng.choice([-1, 1], shape) * step
    new[:, cols] = block
    return new


def beta_at(iteration: int, beta: float, schedule: Optional[np.ndarray]) -> float:
    if schedule is None:
        return float(beta)
    rows = schedule[schedule[:, 0] <= iteration]
    return float(rows[-1, 1]) if len(rows) else float(beta)


class NNMonteCarlo:
    """NN Monte Carlo, one :meth:`step` per iteration, resumable from :meth:`state_dict`.

    ``model`` always holds the current (last accepted) state; ``best_state`` / ``best_params`` the
    lowest loss seen. Rows: ``(iter, newLoss, accepted, bestLoss, currLoss)``.
    """

    def __init__(self, problem, model: torch.nn.Module, mode: int, eps: float, beta: float, seed: int = 0,
                 beta_schedule: Optional[np.ndarray] = None):
        self.problem, self.model, self.mode, self.eps, self.beta = problem, model, int(mode), float(eps), float(beta)
        self.schedule = beta_schedule
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.current = problem.loss_of(problem.evaluate(model))
        self.best = self.current
        self.best_state = copy.deepcopy(model.state_dict())
        self.best_params = problem.params.numpy().copy()
        self.rows: List[tuple] = []

    def step(self, it: int) -> tuple:
        problem, model = self.problem, self.model
        old_state = {k: v.clone() for k, v in model.state_dict().items()}
        old_params = problem.params.numpy().copy()
        model.load_state_dict(perturb_weights(old_state, self.mode, self.eps, self.generator))
        if problem.spinor and self.mode != 3:
            problem.set_params(perturb_so_nl(old_params, self.mode, self.eps, self.rng))
        new = problem.loss_of(problem.evaluate(model))
        if new < self.best:
            accepted, self.best = True, new
            self.best_state, self.best_params = copy.deepcopy(model.state_dict()), problem.params.numpy().copy()
        else:
            b = beta_at(it, self.beta, self.schedule)
            accepted = bool(np.isfinite(new)) and self.rng.random() < np.exp(-b * (np.sqrt(new) - np.sqrt(self.current)))
        if accepted:
            self.current = new
        else:  # undo the move
            model.load_state_dict(old_state)
            problem.set_params(old_params)
        row = (it, new, int(accepted), self.best, self.current)
        self.rows.append(row)
        return row

    def state_dict(self) -> dict:
        return {"model": copy.deepcopy(self.model.state_dict()), "params": self.problem.params.numpy().copy(),
                "generator": self.generator.get_state(), "rng": self.rng.bit_generator.state, "current": self.current,
                "best": self.best, "best_state": self.best_state, "best_params": self.best_params, "rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.problem.set_params(state["params"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        self.current, self.best = state["current"], state["best"]
        self.best_state, self.best_params, self.rows = state["best_state"], state["best_params"], list(state["rows"])


def monte_carlo(problem, model: torch.nn.Module, iterations: int, mode: int, eps: float, beta: float,
                seed: int = 0, beta_schedule: Optional[np.ndarray] = None, progress=None):
    """Run NN Monte Carlo. Returns (rows ``(iter, newLoss, accepted, bestLoss, currLoss)``, best model,
    best (n_species, 9) params). ``model`` ends in the last accepted state."""
    run = NNMonteCarlo(problem, model, mode, eps, beta, seed, beta_schedule)
    for it in range(1, iterations + 1):
        run.step(it)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(best=f"{run.best:.4g}")
    best_model = copy.deepcopy(model)
    best_model.load_state_dict(run.best_state)
    return run.rows, best_model, run.best_params
