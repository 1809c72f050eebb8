"""Pre-fit: train the network to a reference v(q), the analytic Zunger form or a table (spec §4.2).

Training set: 4000 q ~ U[0, 10) Bohr⁻¹ (the first 10 set to 0), targets the reference v(q) (Zunger
parameters 0-3 without the long-range term, or the tabulated ``init_qSpace_pot.par``), weight 10 for
q <= 1 and 1 otherwise; loss mean(w (ŷ - y)²) in (Ha·Bohr³)²; shuffled batches of 1000; optimizer by
name (``init_Zunger_optimizer``, honoured, unlike the 2024 code); ExponentialLR(γ) stepped every
``plot_every`` epochs (never when ``plot_every`` <= 0, DeePseudopot's "skip"). Validation: 2048 q on
[0, 10].

Differences from DeePseudopot: the network ends in its *best* validation epoch, not its last; a run
whose validation loss becomes non-finite or grows 10⁴-fold above the initial network's (a
diverging SGD) stops there, back at its best epoch. Optionally (``focus_weight`` > 0, mlpot's
``init_Zunger_focus_weight``) the q values the Hamiltonians actually use (the distinct |G-G'| of
every system, ``focus_q``) join the training set (about a fifth of the samples) and the
validation set with that weight, since v(q) enters the bands nowhere else; it helps a tabulated
target with sharp features between shells (Cohen-Bergstresser), while for smooth Zunger targets
trained at DeePseudopot's large learning rates the plain recipe converges faster.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

__all__ = ["prefit", "PrefitResult", "prefit_data", "VALIDATION_Q", "DIVERGENCE_FACTOR", "gradient_norms"]

N_TRAIN, Q_MAX, BATCH = 4000, 10.0, 1000
VALIDATION_Q = torch.linspace(0.0, Q_MAX, 2048, dtype=torch.float64)
DIVERGENCE_FACTOR = 1e4


@dataclass
class PrefitResult:
    history: List[tuple] = field(default_factory=list)  # (epoch, train loss, validation loss)
    best_epoch: int = 0  # 0: the initial network
    best_validation: float = float("inf")
    diverged_at: Optional[int] = None


def gradient_norms(model: torch.nn.Module) -> str:
    """``name |grad|`` per parameter tensor (per layer), for ``printGrad`` lines."""
    return ", ".join(f"{name} {float(p.grad.norm()):.3e}" for name, p in model.named_parameters() if p.grad is not None)


def _weights(q: torch.Tensor, focus: int, focus_weight: float) -> torch.Tensor:
    weight = torch.where(q <= 1.0, 10.0, 1.0).to(torch.float64)
    if focus:
        weight[-focus:] = focus_weight
    return weight


def prefit_data(target: torch.nn.Module, generator: Optional[torch.Generator] = None,
                focus_q: Optional[torch.Tensor] = None, focus_weight: float = 0.0):
    """(q (N,1) Bohr⁻¹, v (N,n_s) Ha·Bohr³, weight (N,1)) for the reference module ``target``:
    4000 uniform q (the first 10 at 0) plus ``focus_q`` repeated to about a fifth of the set."""
    q = torch.rand(N_TRAIN, generator=generator, dtype=torch.float64) * Q_MAX
    q[:10] = 0.0
    focus = 0
    if focus_weight > 0 and focus_q is not None and len(focus_q):
        extra = focus_q.to(torch.float64).repeat(max(1, N_TRAIN // (4 * len(focus_q))))
        q, focus = torch.cat([q, extra]), len(extra)
    with torch.no_grad():
        v = target(q[:, None])
    return q[:, None], v, _weights(q, focus, focus_weight)[:, None]


def _validation(model, target, q: torch.Tensor, weight: torch.Tensor) -> float:
    with torch.no_grad():
        v = target(q)
        model.eval()
        loss = float((weight * (model(q) - v) ** 2).mean())
        model.train()
    return loss


def prefit(model: torch.nn.Module, target: torch.nn.Module, epochs: int, lr: float, gamma: float,
           plot_every: Optional[int], optimizer_name: str = "adam", seed: int = 0,
           callback: Optional[Callable[[int, float, float], None]] = None, progress=None,
           log: Optional[Callable[[str], None]] = None, print_grad: bool = False,
           focus_q: Optional[torch.Tensor] = None, focus_weight: float = 0.0) -> PrefitResult:
    """Fit ``model`` to ``target`` (q (N,1) -> (N, n_s)); the model ends in its best validation epoch.

    ``focus_q`` (n,) Bohr⁻¹: the q the Hamiltonians use, trained with ``focus_weight`` (0: not). ``callback(epoch, train, validation)`` runs
    at epoch 1 and every ``plot_every`` epochs.
    """
    from mlpot.training.optim import build_optimizer  # optimizer by name (training layer's registry)

    generator = torch.Generator().manual_seed(seed)
    q, v, weight = prefit_data(target, generator, focus_q, focus_weight)
    n_train = len(q)
    focused = focus_weight > 0 and focus_q is not None
    q_val = torch.cat([VALIDATION_Q, focus_q.to(torch.float64)]) if focused else VALIDATION_Q
    w_val = _weights(q_val, len(focus_q) if focused else 0, focus_weight)[:, None]
    optimizer = build_optimizer(optimizer_name, model.parameters(), lr=lr, key="prefit.optimizer")
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    snapshots = plot_every is not None and plot_every > 0
    result, best_state = PrefitResult(), copy.deepcopy(model.state_dict())
    model.train()
    result.best_validation = initial = _validation(model, target, q_val[:, None], w_val)  # epoch 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n_train, generator=generator)
        running = 0.0
        for start in range(0, n_train, BATCH):
            idx = order[start:start + BATCH]

            def closure():
                optimizer.zero_grad()
                loss = (weight[idx] * (model(q[idx]) - v[idx]) ** 2).mean()
                loss.backward()
                return loss

            running += float(optimizer.step(closure).detach()) * len(idx) / n_train
        validation = _validation(model, target, q_val[:, None], w_val)
        result.history.append((epoch, running, validation))
        if validation < result.best_validation:
            result.best_epoch, result.best_validation = epoch, validation
            best_state = copy.deepcopy(model.state_dict())
        elif not math.isfinite(validation) or validation > DIVERGENCE_FACTOR * initial:
            result.diverged_at = epoch
            break
        if snapshots and epoch % plot_every == 0:
            scheduler.step()
        if snapshots and (epoch == 1 or epoch % plot_every == 0):
            if print_grad and log is not None:
                log(f"pre-fit epoch {epoch} gradient norms: {gradient_norms(model)}")
            if callback is not None:
                callback(epoch, running, validation)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{running:.3g}")
    model.load_state_dict(best_state)
    model.eval()
    return result
