"""The fixed-point problem of one batch: local state, the map G and the residual R.

:class:`LocalState` holds what the SCF does not change (MACE-SCF's ``LocalState``): the
backbone's local energy, the mixed features h, the local density p0, the features of the applied
field, the field operator (geometry cached) and the edge geometry. :class:`SCFProblem` defines

    f(p, mu) = (A p + X + M(mu)) / nu          normalised field features (spec §2.4)
    G(p, mu) = p0 + U(f(p, mu), h, Z)          the fixed-point map (spec §2.6)
    R(y)     = [p - G(p, mu); Q(p) - Q*]       (constant charge, y = (p, mu)) or p - G(p, mu)

``residual(y, tensors)`` is a pure function of the tensors listed by ``tensors()`` (the state
tensors and the update block's parameters): the implicit gradients differentiate it with
respect to substitutes of them (``implicit.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch.func import functional_call

from mlpot.electrostatics import FieldOperator, receiver_scale
from mlpot.models.fixed_point.channels import density_to_channels, features_to_channels
from mlpot.models.fixed_point.message import EdgeGeometry
from mlpot.models.fixed_point.readouts import pad_channels
from mlpot.nn import gather_rows, scatter_sum

__all__ = ["LocalState", "SCFProblem"]


@dataclass
class LocalState:
    """Field-independent quantities of a batch (shapes per atom n, per frame F).

    atom_energy (n,) eV; hidden (n, C, 4); density0 (n, (L+1)^2) stored order; external
    (n, n_widths, 4) normalised channel-layout features of the applied field (zeros without one); species (n,);
    batch_index (n,); n_atoms (F,) float; operator: receivers [feature widths..., sigma (energy),
    point (ESPs, optional)]; edges: for many-body blocks; reference (n, (L+1)^2) or None: the
    data's multipoles; fermi_reference (F,) eV or None; target_charge (F,) e.
    """

    atom_energy: torch.Tensor
    hidden: torch.Tensor
    density0: torch.Tensor
    external: torch.Tensor
    species: torch.Tensor
    batch_index: torch.Tensor
    n_atoms: torch.Tensor
    operator: FieldOperator
    edges: Optional[EdgeGeometry]
    reference: Optional[torch.Tensor]
    fermi_reference: Optional[torch.Tensor]
    target_charge: torch.Tensor

    @property
    def n_frames(self) -> int:
        return int(self.n_atoms.shape[0])

    def frame_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-frame sums (F, ...) of per-atom values (n, ...)."""
        return scatter_sum(values, self.batch_index, self.n_frames)

    def atoms(self, frame_values: torch.Tensor) -> torch.Tensor:
        """Per-atom copies (n, ...) of per-frame values (F, ...)."""
        return gather_rows(frame_values, self.batch_index)


class SCFProblem:
    """G, R and the features of one batch (module docstring).

    update: the update block; widths, field_max_l: receivers; norms: (n_features,) divisors;
    fermi_offset: mu_off eV; constant_charge: selects R.
    """

    def __init__(self, update: torch.nn.Module, state: LocalState, widths: Sequence[float], field_max_l: int,
                 norms: torch.Tensor, fermi_offset: float, constant_charge: bool):
        self.update, self.state = update, state
        self.widths, self.field_max_l = [float(w) for w in widths], int(field_max_l)
        self.norms, self.fermi_offset, self.constant_charge = norms, float(fermi_offset), bool(constant_charge)
        self.parameter_names = [name for name, p in update.named_parameters() if p.requires_grad]
        self.n_coefficients = state.density0.shape[1]
        # [V, G] -> normalised channel features: l = 0 sqrt(4 pi) / nu, l = 1 pi w sqrt(3/2) / nu (l = 1 zero when l_f = 0)
        n_widths = len(self.widths)
        layout = features_to_channels(norms.unsqueeze(0), n_widths, self.field_max_l)[0]  # (n_widths, D)
        receiver = torch.tensor([[receiver_scale(0, w)] + [receiver_scale(1, w)] * 3 for w in self.widths],
                                dtype=norms.dtype, device=norms.device)
        self.scales = receiver[:, : layout.shape[1]] / layout
        if self.field_max_l == 0:
            self.scales = torch.cat([self.scales, torch.zeros_like(receiver[:, 1:])], dim=1)
        self.fermi_scales = self.scales[:, 0]
        # dp = J f + b once per SCF when the update is one-body and affine in f (``affine_form``)
        affine = getattr(update, "affine_form", None)
        self.affine = affine(state.hidden, state.species) if affine is not None else None

    # ---- tensors of the pure residual --------------------------------------------------
    def tensors(self) -> List[torch.Tensor]:
        """[hidden, density0, external, *operator state, (edge unit, edge radial), *update parameters]."""
        s = self.state
        edges = [s.edges.unit, s.edges.radial] if s.edges is not None else []
        params = dict(self.update.named_parameters())
        return [s.hidden, s.density0, s.external, *s.operator.state(), *edges] + [params[n] for n in self.parameter_names]

    def _unpack(self, tensors: Optional[Sequence[torch.Tensor]]):
        s = self.state
        if tensors is None:
            return s.hidden, s.density0, s.external, None, s.edges, None
        n_op = len(s.operator.state())
        hidden, density0, external = tensors[0], tensors[1], tensors[2]
        op_state = list(tensors[3:3 + n_op])
        at = 3 + n_op
        edges = s.edges
        if edges is not None:
            edges = EdgeGeometry(edges.centre, edges.neighbour, tensors[at], tensors[at + 1], edges.envelope)
            at += 2
        params = dict(zip(self.parameter_names, tensors[at:]))
        return hidden, density0, external, op_state, edges, params

    # ---- the map ---------------------------------------------------------------------------
    def features(self, density: torch.Tensor, fermi_atoms: torch.Tensor, tensors=None) -> torch.Tensor:
        """Normalised features in the channel layout (n, n_widths, 4); fermi_atoms (n,) eV."""
        _, _, external, op_state, _, _ = self._unpack(tensors)
        cartesian = pad_channels(density_to_channels(density))[:, 0]  # [q, dx, dy, dz]
        fields = self.state.operator.apply(cartesian, (0, len(self.widths)), op_state).transpose(0, 1)
        fields = fields * self.scales + external
        fermi = (fermi_atoms - self.fermi_offset).unsqueeze(-1) * self.fermi_scales
        return torch.cat([fields[:, :, :1] + fermi.unsqueeze(-1), fields[:, :, 1:]], dim=-1)

    def apply(self, density: torch.Tensor, fermi_atoms: torch.Tensor, tensors=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(G(p, mu) (n, (L+1)^2), features of p (n, n_widths, 4))."""
        hidden, density0, _, _, edges, params = self._unpack(tensors)
        features = self.features(density, fermi_atoms, tensors)
        if tensors is None and self.affine is not None:
            slopes, constant = self.affine
            change = torch.baddbmm(constant.unsqueeze(-1), slopes, features.reshape(features.shape[0], -1, 1))
            return density0 + change.squeeze(-1), features
        args = (features, hidden, self.state.species, edges)
        change = self.update(*args) if params is None else functional_call(self.update, params, args, strict=False)
        return density0 + change, features

    def fukui(self, density: torch.Tensor, fermi_atoms: torch.Tensor, create_graph: bool):
        """(G, features, s (n,)) with s_i = d(sum_j dp_j,00)/d(mu_i) (MACE-SCF's definition; for
        one-body updates d(dp_i,00)/d(mu_i)). ``create_graph``: the result is differentiable
        (unrolled SCF). Reverse mode: forward-mode dual numbers measured 4x slower here."""
        with torch.enable_grad():
            mu = fermi_atoms if fermi_atoms.requires_grad and create_graph else fermi_atoms.detach().requires_grad_(True)
            mapped, features = self.apply(density, mu)
            (slope,) = torch.autograd.grad(mapped[:, 0].sum(), mu, create_graph=create_graph, allow_unused=True)
        if slope is None:
            slope = torch.zeros_like(mu)
        if not create_graph:
            return mapped.detach(), features.detach(), slope.detach()
        return mapped, features, slope

    def charges(self, density: torch.Tensor) -> torch.Tensor:
        """Total charge per frame (F,) e."""
        return self.state.frame_sum(density[:, 0])

    # ---- residual --------------------------------------------------------------------------
    def pack(self, density: torch.Tensor, fermi: torch.Tensor) -> torch.Tensor:
        """y: flat density (n (L+1)^2,) followed by the Fermi levels (F,) in constant-charge mode."""
        flat = density.reshape(-1)
        return torch.cat([flat, fermi]) if self.constant_charge else flat

    def unpack(self, y: torch.Tensor, fermi: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        n = self.state.density0.numel()
        density = y[:n].view(-1, self.n_coefficients)
        return density, (y[n:] if self.constant_charge else fermi)

    def residual(self, y: torch.Tensor, tensors: Sequence[torch.Tensor], fermi: Optional[torch.Tensor] = None) -> torch.Tensor:
        """R(y) (module docstring); ``fermi`` (F,) eV: the fixed Fermi level of constant-Fermi mode."""
        density, mu = self.unpack(y, fermi)
        mapped, _ = self.apply(density, self.state.atoms(mu), tensors)
        parts = [(density - mapped).reshape(-1)]
        if self.constant_charge:
            parts.append(self.charges(density) - self.state.target_charge)
        return torch.cat(parts)
