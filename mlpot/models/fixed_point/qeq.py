"""Charge equilibration on any backbone (MACE-SCF ``MACEQEq``), Gaussian charges.

Electronegativities chi_i and hardnesses eta_i (softplus, > 0) are read from the backbone's mixed
features; the charges minimise

    E_QEq(q) = sum_i (chi_i q_i + 0.5 eta_i q_i^2) + E_C[q]

at the frame's ``total_charge`` (Lagrange multiplier lam: chi + eta q + V(q) = lam, sum q = Q;
Fermi level mu = -lam = -dE/dQ) or, with ``constant_charge: false``, in contact with the
frame's ``fermi_level`` mu (chi + eta q + V(q) + mu = 0). V is the potential of the charges at
receiver width sigma (self-interaction as configured). The linear system is solved by GMRES
with the field operator's matrix-vector products and differentiated implicitly
(``implicit.py``): no dense matrix, exact forces, stress and parameter gradients.
"""

from __future__ import annotations

from typing import Optional

import torch

from mlpot.data import keys as K
from mlpot.errors import DataError
from mlpot.models.fixed_point.backbone import Backbone
from mlpot.models.fixed_point.implicit import GMRESOptions, LinearSolveError, gmres, implicit_root
from mlpot.models.fixed_point.local_models import ElectrostaticModel
from mlpot.nn import gather_rows, scatter_sum

__all__ = ["QEqModel"]


class QEqModel(ElectrostaticModel):
    """QEq (module docstring)."""

    def __init__(self, backbone: Backbone, *, constant_charge: bool = True, hidden_channels: int = 16,
                 dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(backbone, hidden_channels=hidden_channels, dtype=dtype, **kwargs)
        self.constant_charge = bool(constant_charge)
        n_types = len(self.type_map)
        self.electronegativity = torch.nn.Linear(hidden_channels, 1, dtype=dtype)
        self.hardness = torch.nn.Linear(hidden_channels, 1, dtype=dtype)
        self.electronegativity_bias = torch.nn.Parameter(torch.zeros(n_types, dtype=dtype))
        self.hardness_bias = torch.nn.Parameter(torch.zeros(n_types, dtype=dtype))

    def parameters_of(self, hidden: torch.Tensor, species: torch.Tensor):
        """(chi (n,) eV/e, eta (n,) eV/e^2) of every atom."""
        scalars = hidden[:, :, 0]
        chi = self.electronegativity(scalars).squeeze(-1) + gather_rows(self.electronegativity_bias, species)
        eta = torch.nn.functional.softplus(self.hardness(scalars).squeeze(-1) + gather_rows(self.hardness_bias, species)) + 1e-3
        return chi, eta

    def density(self, batch, features, hidden, operator):
        species, frames = batch[K.ATOM_TYPES], batch[K.BATCH]
        n_atoms, n_frames = hidden.shape[0], batch[K.N_ATOMS].shape[0]
        chi, eta = self.parameters_of(hidden, species)
        # Bound once: the residual is called again in backward, after this method has returned, so
        # it must not read a name that is rebound below (the output Fermi level).
        applied_fermi: Optional[torch.Tensor] = None
        if self.constant_charge:
            target = batch.get(K.TOTAL_CHARGE, hidden.new_zeros(n_frames)).to(hidden.dtype)
        else:
            if K.FERMI_LEVEL not in batch:
                raise DataError("constant-Fermi QEq needs the Fermi level of every frame", key=K.FERMI_LEVEL)
            applied_fermi = batch[K.FERMI_LEVEL].to(hidden.dtype)

        def residual(y, tensors):
            chi_, eta_, *op_state = tensors
            charges = y[:n_atoms]
            potential = operator.fields(charges.unsqueeze(1), (0, 1), op_state)[0][0]
            stationarity = chi_ + eta_ * charges + potential
            if applied_fermi is not None:
                return stationarity + gather_rows(applied_fermi, frames)
            lam = y[n_atoms:]
            return torch.cat([stationarity - gather_rows(lam, frames), scatter_sum(charges, frames, n_frames) - target])

        tensors = [chi, eta, *operator.state()]
        root = _solve_affine(residual, tensors, n_atoms + (0 if applied_fermi is not None else n_frames), hidden)
        y = implicit_root(residual, root, tensors)
        charges = y[:n_atoms]
        fermi = applied_fermi if applied_fermi is not None else -y[n_atoms:]
        n_coefficients = (self.density_max_l + 1) ** 2
        density = torch.cat([charges.unsqueeze(1), charges.new_zeros(n_atoms, n_coefficients - 1)], dim=1)
        return density, fermi, chi * charges + 0.5 * eta * charges * charges


def _solve_affine(residual, tensors, size: int, like: torch.Tensor, options: Optional[GMRESOptions] = None) -> torch.Tensor:
    """Root of an affine residual R(y) = A y + b by GMRES on A y = -b (no graph)."""
    with torch.no_grad():
        detached = [t.detach() for t in tensors]
        offset = residual(like.new_zeros(size), detached)
        solution, relative, iterations = gmres(lambda v: residual(v, detached) - offset, -offset,
                                               options or GMRESOptions(rtol=1e-13))
    if relative > 1e-8:
        raise LinearSolveError(iterations, relative)
    return solution
