"""The backbone interface of the electrostatic models, and one adapter per mlpot backbone.

An electrostatic model (fixed-point SCF, local charges, QEq) sits on any mlpot model that gives,
per atom, a local energy and equivariant features:

    backbone.node_features(batch) -> (features (n_atoms, irreps.dim), irreps: e3nn o3.Irreps)
    backbone(batch)               -> {ATOM_ENERGY (n_atoms,) eV, ENERGY (n_frames,) eV}

:class:`Backbone` wraps such a model and returns both from one evaluation
(:meth:`Backbone.local_outputs`) when the model offers ``energy_and_node_features`` (MACE does),
else from two calls. Adapters:

* MACE (``models/equivariant/mace``): its own ``node_features`` (every layer, e3nn layout);
* DeePMD descriptor models (``standard`` with an ``ener`` fitting, e.g. se_e2_a):
  :class:`DeepmdFeatures` exposes the invariant descriptor (``dim_out`` x 0e) and the
  equivariant block G^T R (``dim_rot`` x 1o, Cartesian) next to the fitting's energy;
* NequIP (``energy_and_node_features``: one evaluation gives the atomic energies and the features of
  the last layer with l > 0);
* :class:`SpeciesBackbone`: features = one-hot species, energy = a per-species constant (no
  environment): the exact QEq limit and the synthetic tests.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple

import torch
from e3nn import o3

from mlpot.data.keys import APARAM, ATOM_ENERGY, ATOM_TYPES, BATCH, ENERGY, FPARAM
from mlpot.errors import ConfigError
from mlpot.models.base import AtomisticModel, edge_vectors, n_frames_of
from mlpot.nn import gather_rows, scatter_sum

__all__ = ["LocalOutputs", "Backbone", "DeepmdFeatures", "SpeciesBackbone", "wrap_backbone"]


class LocalOutputs(NamedTuple):
    """Per-atom local energy (n_atoms,) eV and features (n_atoms, irreps.dim) with their irreps."""

    atom_energy: torch.Tensor
    features: torch.Tensor
    irreps: o3.Irreps


class SpeciesBackbone(AtomisticModel):
    """No environment: features = one-hot species (n_types x 0e), energy = a trainable E0 per type."""

    output_keys = (ENERGY, ATOM_ENERGY)

    def __init__(self, type_map: Sequence[str], cutoff: float = 3.0, dtype: torch.dtype = torch.float64,
                 config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.type_map, self.cutoff, self.config = list(type_map), float(cutoff), dict(config or {})
        self.atom_energies = torch.nn.Parameter(torch.zeros(len(self.type_map), dtype=dtype))

    @property
    def node_irreps(self) -> o3.Irreps:
        return o3.Irreps(f"{len(self.type_map)}x0e")

    def node_features(self, batch) -> Tuple[torch.Tensor, o3.Irreps]:
        return torch.nn.functional.one_hot(batch[ATOM_TYPES], len(self.type_map)).to(self.atom_energies.dtype), self.node_irreps

    def forward(self, batch):
        atom_energy = gather_rows(self.atom_energies, batch[ATOM_TYPES])
        return {ATOM_ENERGY: atom_energy, ENERGY: scatter_sum(atom_energy, batch[BATCH], n_frames_of(batch))}


class DeepmdFeatures(torch.nn.Module):
    """Energy and features of a DeePMD ``standard`` model with an energy fitting, from one
    descriptor evaluation: features = [descriptor (dim_out x 0e), G^T R (dim_rot x 1o)]."""

    def __init__(self, model: AtomisticModel):
        super().__init__()
        descriptor = getattr(model, "descriptor", None)
        if descriptor is None or getattr(model.fitting, "atom_key", None) != ATOM_ENERGY:
            raise ConfigError("a DeePMD backbone needs a standard model with an 'ener' fitting net",
                              key="model.backbone.fitting_net.type")
        self.model = model

    @property
    def node_irreps(self) -> o3.Irreps:
        descriptor = self.model.descriptor
        rot = f" + {descriptor.dim_rot}x1o" if getattr(descriptor, "dim_rot", 0) else ""
        return o3.Irreps(f"{descriptor.dim_out}x0e{rot}")

    def energy_and_node_features(self, batch) -> LocalOutputs:
        model = self.model
        model._check(batch)
        descriptor, rot = model.descriptor(batch, edge_vectors(batch))
        types = batch[ATOM_TYPES]
        atomic = model.fitting(descriptor, rot, types, batch[BATCH], batch.get(FPARAM), batch.get(APARAM))
        if not bool(model.atom_keep.all()):
            atomic = atomic * model.atom_keep[types].to(atomic.dtype).unsqueeze(-1)
        features = descriptor if rot is None or not self.node_irreps.count("1o") else \
            torch.cat([descriptor, rot.reshape(rot.shape[0], -1).to(descriptor.dtype)], dim=1)
        return LocalOutputs(atomic.squeeze(-1), features, self.node_irreps)


class Backbone(torch.nn.Module):
    """Any backbone behind one call, :meth:`local_outputs` (module docstring).

    model: the backbone AtomisticModel (kept as ``self.model``; its parameters train with the
    electrostatic model). ``node_irreps``: the irreps of its features.
    """

    def __init__(self, model: AtomisticModel):
        super().__init__()
        self.model = model
        self.features = DeepmdFeatures(model) if hasattr(model, "descriptor") and hasattr(model, "fitting") else None
        source = self.features if self.features is not None else model
        if not hasattr(source, "node_irreps") and not hasattr(source, "node_features"):
            raise ConfigError(f"{type(model).__name__} exposes no node features; an electrostatic model needs a "
                              "backbone with node_features(batch) (DeePMD standard, MACE, NequIP, species)",
                              key="model.backbone.type")
        self.node_irreps = o3.Irreps(source.node_irreps)
        self.type_map, self.cutoff = list(model.type_map), float(model.cutoff)

    def local_outputs(self, batch: Dict[str, torch.Tensor]) -> LocalOutputs:
        """Local energy per atom and node features of ``batch`` (one backbone evaluation)."""
        if self.features is not None:
            return self.features.energy_and_node_features(batch)
        if hasattr(self.model, "energy_and_node_features"):
            atom_energy, features, irreps = self.model.energy_and_node_features(batch)
            return LocalOutputs(atom_energy, features, irreps)
        features, irreps = self.model.node_features(batch)
        return LocalOutputs(self.model(batch)[ATOM_ENERGY], features, irreps)

    def compute_statistics(self, batches: Iterable[Dict[str, torch.Tensor]]) -> Dict[str, Any]:
        """The backbone's own data statistics (DeePMD env-matrix mean/std and energy bias)."""
        method = getattr(self.model, "compute_statistics", None)
        return method(list(batches)) if method is not None else {}

    def output_bias(self):
        return self.model.output_bias()


def wrap_backbone(model: AtomisticModel) -> Backbone:
    """The :class:`Backbone` of an mlpot model (raises ConfigError when it has no node features)."""
    return Backbone(model)
