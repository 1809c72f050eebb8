"""Electrostatic models without a self-consistent loop (spec mace_scf.md §1.1 "non-SCF models").

All share the backbone, the Gaussian multipole density and its Coulomb energy:

    E = sum_i E_local,i + E_extra + E_C[p] + F . mu_tot

* ``LocalChargesModel`` (MACE-SCF ``LocalCharges``): p = the local density readout of the
  backbone features; the charges are shifted uniformly so that they sum to the frame's
  ``total_charge``.
* ``LocalSplitChargesModel`` (``LocalSplitCharges``): charges from antisymmetric pair transfers,
  q_i = Q/N + sum_j [t(h_i, h_j, r_ij) - t(h_j, h_i, r_ij)] over neighbours within the cutoff
  (charge conserved by construction, transfer strictly local); dipoles from the local readout.
* ``FixedChargeBaselinedModel`` (``FixedChargeBaselinedMACE``): fixed charges per element
  (``fixed_charges``) or the data's per-atom ``charges`` when present, shifted uniformly to the
  total charge; the backbone learns the rest.
* ``QEqModel`` (``MACEQEq``, ``qeq.py``).

Outputs as the fixed-point model (ENERGY, ATOM_ENERGY, ATOMIC_MULTIPOLES, CHARGES, DIPOLE,
TOTAL_CHARGE, ELECTROSTATIC_ENERGY; ESPS on request).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch

from mlpot.data import keys as K
from mlpot.electrostatics import CoulombOptions, FieldOperator, batch_method, frame_dipoles, split_multipoles
from mlpot.errors import ConfigError
from mlpot.models.base import AtomisticModel, n_frames_of
from mlpot.models.fixed_point.backbone import Backbone
from mlpot.models.fixed_point.channels import IrrepsProjection
from mlpot.models.fixed_point.message import edge_geometry
from mlpot.models.fixed_point.observables import applied_potential_energy
from mlpot.models.fixed_point.readouts import LocalDensityReadout
from mlpot.models.fixed_point.statistics import density_scaling_average
from mlpot.nn import gather_rows, scatter_sum

__all__ = ["ElectrostaticModel", "LocalChargesModel", "LocalSplitChargesModel", "FixedChargeBaselinedModel"]


class ElectrostaticModel(AtomisticModel):
    """Common part (module docstring); subclasses implement :meth:`density`."""

    output_keys = (K.ENERGY, K.ATOM_ENERGY, K.ATOMIC_MULTIPOLES, K.CHARGES, K.DIPOLE, K.TOTAL_CHARGE)

    def __init__(self, backbone: Backbone, *, atomic_multipoles_max_l: int = 1, atomic_multipoles_smearing_width: float = 1.5,
                 electrostatic_pbc_method: str = "auto", include_electrostatic_self_interaction: bool = True,
                 coulomb_options: CoulombOptions = CoulombOptions(), dense_max_atoms: int = 400, hidden_channels: int = 16,
                 local_density: Optional[Dict[str, Any]] = None, dtype: torch.dtype = torch.float64,
                 config: Optional[Dict[str, Any]] = None, **_):
        super().__init__()
        self.backbone = backbone
        self.type_map, self.cutoff, self.config = list(backbone.type_map), float(backbone.cutoff), dict(config or {})
        self.density_max_l, self.sigma = int(atomic_multipoles_max_l), float(atomic_multipoles_smearing_width)
        self.method, self.include_self_interaction = electrostatic_pbc_method, bool(include_electrostatic_self_interaction)
        self.coulomb_options, self.dense_max_atoms = coulomb_options, int(dense_max_atoms)
        self.local_density = LocalDensityReadout(backbone.node_irreps, self.density_max_l, len(self.type_map), dtype=dtype,
                                                 **(local_density or {}))
        self.mixer = IrrepsProjection(backbone.node_irreps, hidden_channels, 1, bias=True, dtype=dtype)
        self.wanted: Tuple[str, ...] = ()

    def request_outputs(self, labels: Iterable[str]) -> None:
        self.wanted = tuple(key for key in (K.ESPS,) if key in set(labels))

    def output_bias(self):
        return self.backbone.output_bias()

    @property
    def input_keys(self):
        return tuple(self.backbone.model.input_keys)

    def compute_statistics(self, batches: Iterable[Dict[str, torch.Tensor]], **kwargs) -> Dict[str, Any]:
        batches = list(batches)
        summary = {"backbone": self.backbone.compute_statistics(batches)}
        scaling = self.config.get("atom_density_scaling")
        if scaling == "average":
            values = density_scaling_average(batches, len(self.type_map), (self.density_max_l + 1) ** 2)
            self.local_density.density_scaling.copy_(values.to(self.local_density.density_scaling.dtype))
        elif isinstance(scaling, dict):
            values = [float(scaling.get(name, 1.0)) for name in self.type_map]
            self.local_density.density_scaling.copy_(torch.tensor(values, dtype=self.local_density.density_scaling.dtype))
        return summary

    def density(self, batch, features, hidden, operator) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """(density (n, (L+1)^2) stored order, Fermi level (F,) or None, extra per-atom energy (n,))."""
        raise NotImplementedError  # pragma: no cover

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        local = self.backbone.local_outputs(batch)
        positions, frames = batch[K.POSITIONS], batch[K.BATCH]
        n_frames = n_frames_of(batch)
        receivers = [(self.sigma, self.include_self_interaction)] + ([(0.0, True)] if K.ESPS in self.wanted else [])
        operator = FieldOperator(batch, batch_method(self.method, batch[K.PBC]), self.sigma, receivers,
                                 self.coulomb_options, self.dense_max_atoms, block_receivers=0)  # applied once: pair sums
        density, fermi, extra = self.density(batch, local.features, self.mixer(local.features), operator)
        potential, gradient = operator.fields(density, (0, 1))
        charges, dipoles = split_multipoles(density.to(positions.dtype))
        coulomb = 0.5 * (charges * potential[0] + (dipoles * gradient[0]).sum(-1))
        field = batch[K.EXTERNAL_FIELD].to(positions.dtype).index_select(0, frames) if K.EXTERNAL_FIELD in batch else None
        atom_energy = local.atom_energy.to(positions.dtype) + extra + coulomb + applied_potential_energy(positions, density, field)
        out = {K.ATOM_ENERGY: atom_energy, K.ENERGY: scatter_sum(atom_energy, frames, n_frames),
               K.ELECTROSTATIC_ENERGY: scatter_sum(coulomb, frames, n_frames), K.ATOMIC_MULTIPOLES: density,
               K.CHARGES: charges, K.TOTAL_CHARGE: scatter_sum(charges, frames, n_frames),
               K.DIPOLE: frame_dipoles(positions, density, frames, n_frames)}
        if fermi is not None:
            out[K.FERMI_LEVEL] = fermi
        if K.ESPS in self.wanted:
            applied = (positions * field).sum(-1) if field is not None else 0.0
            out[K.ESPS] = operator.fields(density, (1, 2))[0][0] + applied
        return out


def shift_to_total_charge(charges: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Charges (n,) shifted uniformly per frame so that they sum to TOTAL_CHARGE (0 without it)."""
    frames, n_frames = batch[K.BATCH], n_frames_of(batch)
    target = batch.get(K.TOTAL_CHARGE, charges.new_zeros(n_frames)).to(charges.dtype)
    deficit = (target - scatter_sum(charges, frames, n_frames)) / batch[K.N_ATOMS].to(charges.dtype)
    return charges + gather_rows(deficit, frames)


def _with_charges(density: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
    return torch.cat([charges.unsqueeze(1), density[:, 1:]], dim=1)


class LocalChargesModel(ElectrostaticModel):
    def density(self, batch, features, hidden, operator):
        density = self.local_density(features, batch[K.ATOM_TYPES])
        return _with_charges(density, shift_to_total_charge(density[:, 0], batch)), None, hidden.new_zeros(hidden.shape[0])


class LocalSplitChargesModel(ElectrostaticModel):
    def __init__(self, backbone: Backbone, *, hidden_channels: int = 16, split_hidden: int = 32,
                 dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(backbone, hidden_channels=hidden_channels, dtype=dtype, **kwargs)
        self.transfer = torch.nn.Sequential(torch.nn.Linear(2 * hidden_channels + 8, split_hidden, dtype=dtype), torch.nn.SiLU(),
                                            torch.nn.Linear(split_hidden, 1, dtype=dtype))

    def density(self, batch, features, hidden, operator):
        density = self.local_density(features, batch[K.ATOM_TYPES])
        edges = edge_geometry(batch, self.cutoff, dtype=hidden.dtype)
        scalars = hidden[:, :, 0]
        h_i, h_j = gather_rows(scalars, edges.centre), gather_rows(scalars, edges.neighbour)
        forward = self.transfer(torch.cat([h_i, h_j, edges.radial], dim=1)).squeeze(-1)
        backward = self.transfer(torch.cat([h_j, h_i, edges.radial], dim=1)).squeeze(-1)
        # the envelope makes the transfer vanish smoothly at the cutoff
        transfer = scatter_sum((forward - backward) * edges.envelope, edges.centre, hidden.shape[0])
        n_frames = n_frames_of(batch)
        target = batch.get(K.TOTAL_CHARGE, hidden.new_zeros(n_frames)).to(hidden.dtype)
        base = gather_rows(target / batch[K.N_ATOMS].to(hidden.dtype), batch[K.BATCH])
        return _with_charges(density, base + transfer), None, hidden.new_zeros(hidden.shape[0])


class FixedChargeBaselinedModel(ElectrostaticModel):
    """Fixed charges (module docstring); ``fixed_charges``: {element: charge e} (required unless
    every frame carries per-atom ``charges``)."""

    def __init__(self, backbone: Backbone, *, fixed_charges: Optional[Mapping[str, float]] = None,
                 dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(backbone, dtype=dtype, **kwargs)
        table = dict(fixed_charges or {})
        unknown = sorted(set(table) - set(self.type_map))
        if unknown:
            raise ConfigError(f"elements {unknown} are not in the type map {self.type_map}", key="model.fixed_charges")
        self.has_table = bool(table)
        self.register_buffer("fixed_charges", torch.tensor([float(table.get(t, 0.0)) for t in self.type_map], dtype=dtype))

    def density(self, batch, features, hidden, operator):
        if K.CHARGES in batch and bool((batch[K.weight_key(K.CHARGES)] > 0).all()):
            charges = batch[K.CHARGES].to(hidden.dtype)
        elif self.has_table:
            charges = gather_rows(self.fixed_charges, batch[K.ATOM_TYPES])
        else:
            raise ConfigError("no fixed charges: give model.fixed_charges or per-atom charges in every frame",
                              key="model.fixed_charges")
        n_coefficients = (self.density_max_l + 1) ** 2
        density = torch.zeros(charges.shape[0], n_coefficients, dtype=hidden.dtype, device=hidden.device)
        return _with_charges(density, shift_to_total_charge(charges, batch)), None, hidden.new_zeros(hidden.shape[0])
