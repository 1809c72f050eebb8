"""Zunger pre-fit: train the network to the analytic local form factors (spec deepseudopot.md §4.2).

Training set: 4000 q ~ U[0, 10) Bohr⁻¹ (the first 10 set to 0), targets the Zunger v(q) of params
0-3 (no long-range term), weight 10 for q <= 1 and 1 otherwise; loss mean(w (ŷ - y)²); shuffled
batches of 1000; optimizer by name (``init_Zunger_optimizer``, honoured, unlike the 2024 code);
ExponentialLR(γ) stepped every ``plot_every`` epochs. Validation: 2048 q on [0, 10].
Units: q Bohr⁻¹, v Ha·Bohr³.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from mlpot.bands.zunger import zunger_form_factor

__all__ = ["zunger_prefit", "prefit_data", "VALIDATION_Q"]

N_TRAIN, Q_MAX, BATCH = 4000, 10.0, 1000
VALIDATION_Q = torch.linspace(0.0, Q_MAX, 2048, dtype=torch.float64)


def prefit_data(params: torch.Tensor, generator: Optional[torch.Generator] = None, target=None):
    """(q (4000,1), v (4000,n_s), weight (4000,1)). ``target(q)`` overrides the analytic form."""
    q = torch.rand(N_TRAIN, generator=generator, dtype=torch.float64) * Q_MAX
    q[:10] = 0.0
    v = target(q) if target is not None else zunger_form_factor(q, params)
    weight = torch.where(q <= 1.0, 10.0, 1.0).to(torch.float64)
    return q[:, None], v, weight[:, None]


def zunger_prefit(model: torch.nn.Module, params: torch.Tensor, epochs: int, lr: float, gamma: float,
                  plot_every: int, optimizer_name: str = "adam", target=None, seed: int = 0,
                  callback: Optional[Callable[[int, float, float], None]] = None, progress=None) -> List[tuple]:
    """Fit ``model`` to the analytic v(q); returns [(epoch, train_loss, validation_loss)] per epoch.

    ``callback(epoch, train, validation)`` is called at epoch 1 and every ``plot_every`` epochs.
    """
    from mlpot.training.optim import build_optimizer  # optimizer by name (training layer's registry)

    generator = torch.Generator().manual_seed(seed)
    q, v, weight = prefit_data(params, generator, target)
    q_val = VALIDATION_Q[:, None]
    v_val = target(VALIDATION_Q) if target is not None else zunger_form_factor(VALIDATION_Q, params)
    w_val = torch.where(q_val <= 1.0, 10.0, 1.0).to(torch.float64)
    optimizer = build_optimizer(optimizer_name, model.parameters(), lr=lr, key="init_Zunger_optimizer")
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    history = []
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(N_TRAIN, generator=generator)
        running = 0.0
        for start in range(0, N_TRAIN, BATCH):
            idx = order[start : start + BATCH]

            def closure():
                optimizer.zero_grad()
                loss = (weight[idx] * (model(q[idx]) - v[idx]) ** 2).mean()
                loss.backward()
                return loss

            running += float(optimizer.step(closure).detach()) * len(idx) / N_TRAIN
        with torch.no_grad():
            model.eval()
            validation = float((w_val * (model(q_val) - v_val) ** 2).mean())
            model.train()
        history.append((epoch, running, validation))
        if epoch % plot_every == 0:
            scheduler.step()
        if callback is not None and (epoch == 1 or epoch % plot_every == 0):
            callback(epoch, running, validation)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{running:.3g}")
    model.eval()
    return history
