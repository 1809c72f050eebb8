"""Fixed (non-trained) form-factor modules: the analytic Zunger form and a tabulated v(q).

Both map q (N, 1) Bohr⁻¹ to per-species form factors (N, n_species) Ha·Bohr³, like the networks of
:mod:`mlpot.bands.models`, so every consumer (Hamiltonian, plots, exports, pre-fit target) takes any
of them.

:class:`TabulatedFormFactor` reads ``init_qSpace_pot.par`` (rows ``q v_0(q) v_1(q) ...``, species in
the alphabetical order of every other per-species file) and interpolates linearly between rows;
beyond the last row it is zero (a table covers the q a Hamiltonian needs; DeePseudopot's own
``*_qSpace_pot.dat`` exports run to 20-40 Bohr⁻¹). A q that is a row of the table gets that row's
value exactly, so a table written on the |G-G'| shells of a crystal reproduces them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlpot.bands.inputs import data_lines, line_numbers
from mlpot.bands.zunger import zunger_form_factor
from mlpot.errors import DataError

__all__ = ["AnalyticFormFactor", "TabulatedFormFactor", "read_qspace_table", "QSPACE_TABLE"]

QSPACE_TABLE = "init_qSpace_pot.par"


class AnalyticFormFactor(torch.nn.Module):
    """Zunger form of parameters 0-3: (N, 1) Bohr⁻¹ -> (N, n_species) Ha·Bohr³."""

    def __init__(self, params):
        super().__init__()
        self.register_buffer("params", torch.as_tensor(np.asarray(params), dtype=torch.float64).clone())

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return zunger_form_factor(q[:, 0], self.params.to(q.dtype))


def read_qspace_table(path, n_species: int):
    """``init_qSpace_pot.par`` -> (q (n_q,) Bohr⁻¹ ascending, v (n_q, n_species) Ha·Bohr³)."""
    rows = [line_numbers(line, path, lineno, "qSpace_pot", n_species + 1) for lineno, line in data_lines(path)]
    if len(rows) < 2:
        raise DataError(f"need at least 2 rows, got {len(rows)}", file=str(path), key="qSpace_pot")
    table = np.array(rows, dtype=np.float64)
    if np.any(np.diff(table[:, 0]) <= 0) or table[0, 0] < 0:
        raise DataError("q (first column) must be >= 0 and strictly increasing", file=str(path), key="qSpace_pot")
    return table[:, 0], table[:, 1:]


class TabulatedFormFactor(torch.nn.Module):
    """Linear interpolation of a v(q) table: (N, 1) Bohr⁻¹ -> (N, n_species); zero past the last row."""

    def __init__(self, q, values):
        super().__init__()
        self.register_buffer("q", torch.as_tensor(np.ascontiguousarray(q), dtype=torch.float64))
        self.register_buffer("values", torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float64))

    @classmethod
    def from_file(cls, path, n_species: int) -> "TabulatedFormFactor":
        return cls(*read_qspace_table(Path(path), n_species))

    @property
    def q_max(self) -> float:
        return float(self.q[-1])

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        x = q[:, 0].to(self.q.dtype)
        upper = torch.searchsorted(self.q, x, right=True).clamp(1, len(self.q) - 1)
        lower = upper - 1
        q0, q1 = self.q[lower], self.q[upper]
        t = ((x - q0) / (q1 - q0)).clamp(0.0, 1.0)[:, None]
        value = torch.lerp(self.values[lower], self.values[upper], t)
        value = torch.where((x > self.q[-1])[:, None], torch.zeros_like(value), value)
        return value.to(q.dtype)
