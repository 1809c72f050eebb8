"""Exponential moving average of model parameters (evaluate and export with the averaged weights).

After each optimizer step ``shadow = d · shadow + (1 - d) · param`` with the effective decay
``d = min(decay, (1 + n) / (10 + n))`` when ``warmup`` is on (n = updates so far), as in NequIP's
EMA module (specs/nequip.md §3.1). ``applied(model)`` swaps the averaged weights in for validation
and swaps the raw ones back afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """EMA of the floating-point parameters of ``model`` (buffers are not averaged)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: Dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Start the average again from the current parameters (after they were changed outside training)."""
        params = dict(model.named_parameters())
        for name, value in self.shadow.items():
            value.copy_(params[name].detach())
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the current parameters of ``model`` into the average."""
        decay = self.current_decay()
        params = dict(model.named_parameters())
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        torch._foreach_lerp_(shadows, [params[n].detach() for n in names], 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the parameters of ``model`` with the averages (e.g. before export)."""
        params = dict(model.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Temporarily evaluate ``model`` with the averaged weights."""
        params = dict(model.named_parameters())
        backup = {name: params[name].detach().clone() for name in self.shadow}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
