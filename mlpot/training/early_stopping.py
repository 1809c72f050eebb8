"""Early stopping on the validation loss (``training.patience``, MACE's ``--patience``).

Each validation compares the validation loss with the lowest one of the current stage: a value at or
above it counts one more validation without improvement, a lower one becomes the best and resets
the count. When the count reaches ``patience`` the run stops, or, when a later ``train_schedule``
stage exists, jumps to that stage's start (mace_run_train starts its stage two there). Entering a
stage forgets the best value (MACE resets it when stage two begins); the count carries on.
"""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Counts validations without improvement; ``update(loss)`` -> True when patience is exhausted."""

    def __init__(self, patience: Optional[int]):
        self.patience = patience
        self.best = math.inf
        self.count = 0

    def new_stage(self) -> None:
        self.best = math.inf

    def update(self, loss: float) -> bool:
        """Record one validation loss; True when ``patience`` validations in a row did not improve."""
        if self.patience is None or not math.isfinite(loss):
            return False
        if loss >= self.best:
            self.count += 1
            return self.count >= self.patience
        self.best, self.count = loss, 0
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "count": self.count}

    def load_state_dict(self, state: Optional[dict]) -> None:
        if state:
            self.best, self.count = float(state["best"]), int(state["count"])
