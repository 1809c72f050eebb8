"""The NequIP GNN energy model (NequIP 0.19 ``NequIPGNNModel``, spec nequip.md §2.2).

Per batch: type embedding a_t (also the initial node features), spherical harmonics Y(r̂_ij)
(component normalisation), edge embedding B_n(r) u(r / r_c) with B_n = (2 / r_c) sin(n π r / r_c) / r
and the polynomial envelope u of order p, ``num_layers`` ``InteractionLayer``s, a bias-free
readout MLP on the last (scalar) features, E_i = α_t Ẽ_i + E0_t (float64), optional ZBL, and
E = Σ_i E_i per frame.

Per-edge-type cutoffs r_c(t_i, t_j) enter through the reduced distance x = r / r_c: the Bessel
basis at r_c equals (r_c / r_max) times the global basis at r · r_max / r_c, which is what NequIP
computes (it always multiplies by 2π / r_max²), so the global ``BesselBasis`` is evaluated at the
scaled distance. Functions of the edge (embedding, radial MLPs, spherical harmonics) are evaluated once per
unordered pair (i, j, S) / (j, i, -S) when the cutoffs are symmetric; this halves the dominant
cost and changes no value; when every edge has its reverse the pair list drives the whole
message passing (Y(-r̂) = (-1)^l Y(r̂), same radial weights, see ``EdgeTensorProductScatter``). Geometry is recomputed from the batch with ``edge_vectors`` so that
``compute_derivatives`` gives forces and stress; distances and the embedding are computed in
the batch precision and cast to ``model_dtype`` (NequIP does the same in float64).

Outputs: ATOM_ENERGY (n_atoms,) and ENERGY (n_frames,), float64 (or wider input precision), in
the unit of the shifts/scales (eV for eV data). An atom without neighbours gets exactly its shift.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from e3nn import o3

from mlpot.data.keys import ATOM_ENERGY, ATOM_TYPES, BATCH, CELL, EDGE_INDEX, EDGE_SHIFTS, ENERGY
from mlpot.errors import DataError
from mlpot.models.base import AtomisticModel, edge_vectors
from mlpot.models.equivariant.blocks import EdgeSphericalHarmonics, PerTypeScaleShift, RadialMLP, unique_pair_index
from mlpot.models.equivariant.nequip.layers import InteractionLayer
from mlpot.models.equivariant.nequip.section import NequIPModelSection
from mlpot.models.equivariant.nequip.zbl import ZBL
from mlpot.nn import BesselBasis, is_tracing, polynomial_cutoff, scatter_sum

__all__ = ["NequIPModel", "hidden_irreps", "per_edge_type_cutoff_matrix"]

Batch = Dict[str, torch.Tensor]


def hidden_irreps(multiplicities: List[int], parity: bool) -> o3.Irreps:
    """NequIP's hidden irreps: for l = 0..l_max, multiplicities[l] x (l, p), both parities (even first) with parity."""
    return o3.Irreps([(mul, (l, p)) for l, mul in enumerate(multiplicities)
                      for p in ((1, -1) if parity else ((1,) if l % 2 == 0 else (-1,)))])


def per_edge_type_cutoff_matrix(spec, type_names: List[str], r_max: float) -> torch.Tensor:
    """(n_types, n_types) float64 cutoffs [centre type, neighbour type]; missing entries are r_max."""
    n = len(type_names)
    matrix = torch.full((n, n), float(r_max), dtype=torch.float64)
    for centre, entry in spec.items():
        row = type_names.index(centre)
        if isinstance(entry, dict):
            for neighbour, value in entry.items():
                matrix[row, type_names.index(neighbour)] = float(value)
        else:
            matrix[row, :] = float(entry)
    return matrix


class NequIPModel(AtomisticModel):
    """NequIP GNN energy model built from a validated :class:`NequIPModelSection` (module docstring).

    ``node_features(batch, layer)`` returns the equivariant features of a layer and their irreps
    (for models that build on the backbone, e.g. fixed-point electrostatics).
    """

    output_keys = (ATOM_ENERGY, ENERGY)

    def __init__(self, section: NequIPModelSection, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.section = section
        self.type_map = list(section.type_names)
        self.cutoff = float(section.r_max)
        self.config = section.model_dump()
        self.model_dtype = dtype
        self.energy_derivatives = section.do_derivatives  # do_derivatives: false -> an energy-only model
        n_types, features = len(self.type_map), section.feature_multiplicities()
        n_attrs = section.type_embed_num_features or features[0]
        self.type_embedding = torch.nn.Embedding(n_types, n_attrs, dtype=dtype)
        self.spherical_harmonics = EdgeSphericalHarmonics(section.l_max)
        self.bessel = BesselBasis(section.r_max, section.num_bessels, section.bessel_trainable, prefactor=2.0 / section.r_max,
                                  dtype=torch.float64)
        self.polynomial_p = float(section.polynomial_cutoff_p)
        self._init_cutoffs(section)
        self._init_neighbor_norm(section)
        hidden = hidden_irreps(features, section.parity)
        irreps = o3.Irreps([(n_attrs, (0, 1))])
        layers = []
        for index in range(section.num_layers):
            last = index == section.num_layers - 1
            use_sc = section.convnet_sc if section.learnable_shift else (index != 0 and section.convnet_sc)
            resnet = section.convnet_resnet if section.learnable_shift else (index != 0 and section.convnet_resnet)
            layer = InteractionLayer(irreps, self.spherical_harmonics.irreps, o3.Irreps([(features[0], (0, 1))]) if last else hidden,
                                     n_attrs, section.num_bessels, section.radial_mlp_depth, section.radial_mlp_width, use_sc, resnet,
                                     section.convnet_nonlinearity_type, section.convnet_nonlinearity_scalars,
                                     section.convnet_nonlinearity_gates, dtype=dtype)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = torch.nn.ModuleList(layers)
        readout_width = section.readout_mlp_hidden_layers_width or irreps.dim
        self.readout = RadialMLP([irreps.dim] + [readout_width] * section.readout_mlp_hidden_layers_depth + [1],
                                 section.readout_mlp_nonlinearity, dtype=dtype)
        self.scale_shift = PerTypeScaleShift(self.type_map, section.per_type_energy_scales, section.per_type_energy_shifts,
                                             section.per_type_energy_scales_trainable, section.per_type_energy_shifts_trainable)
        zbl = section.pair_potential
        self.zbl = ZBL(zbl.chemical_species, zbl.units, zbl.polynomial_cutoff_p) if zbl is not None else None

    def _init_cutoffs(self, section: NequIPModelSection) -> None:
        if section.per_edge_type_cutoff is None:
            self.register_buffer("cutoff_scale", None)
            self.pairs_symmetric = True
            return
        matrix = per_edge_type_cutoff_matrix(section.per_edge_type_cutoff, self.type_map, section.r_max)
        # scaled distance r * r_max / r_c(t_i, t_j), flattened [centre * n_types + neighbour]
        self.register_buffer("cutoff_scale", (section.r_max / matrix).reshape(-1), persistent=False)
        self.pairs_symmetric = bool(torch.equal(matrix, matrix.T))

    def _init_neighbor_norm(self, section: NequIPModelSection) -> None:
        value = section.avg_num_neighbors
        if isinstance(value, dict):
            table = torch.tensor([float(value[t]) for t in self.type_map], dtype=torch.float64).rsqrt()
            self.register_buffer("neighbor_norm", table, persistent=False)
            self.neighbor_norm_value = None
        else:
            self.register_buffer("neighbor_norm", None)
            self.neighbor_norm_value = float(value) ** -0.5

    # ---- geometry -----------------------------------------------------------------------------
    def _scaled_distance(self, lengths: torch.Tensor, types: torch.Tensor, centre: torch.Tensor, neighbour: torch.Tensor):
        """r · r_max / r_c(t_i, t_j) (just r without per-edge-type cutoffs), (E,) Å."""
        if self.cutoff_scale is None:
            return lengths
        n_types = len(self.type_map)
        edge_type = types.index_select(0, centre) * n_types + types.index_select(0, neighbour)
        return lengths * self.cutoff_scale.to(lengths.dtype).index_select(0, edge_type)

    def _edge_embedding(self, scaled: torch.Tensor) -> torch.Tensor:
        """B_n(r) u(r / r_c) at scaled distances (..., num_bessels), model dtype."""
        basis = self.bessel(scaled)
        envelope = polynomial_cutoff(scaled, self.cutoff, self.polynomial_p)
        return basis.to(self.model_dtype) * envelope.to(self.model_dtype).unsqueeze(-1)

    def set_export_mode(self, enabled: bool = True) -> "NequIPModel":
        """Shapes that depend only on the input sizes, for ``torch.export`` (the generic ``mlpot compile``):
        no atom-type range check, every directed edge evaluated (no unordered-pair halving), the
        self-connection by masks instead of per-type slices. The numbers are the same. Under a graph
        tracer (``mlpot.nn.is_tracing``: ``mlpot compile``) these branches are taken without it."""
        self.export_mode = bool(enabled)
        for layer in self.layers:
            if layer.self_connection is not None:
                layer.self_connection.masked = bool(enabled)
        return self

    def _apply(self, fn, *args, **kwargs):
        """``.to(dtype)`` (e.g. a float64 file run in float32) moves ``model_dtype``, the network's
        precision, along with the weights."""
        module = super()._apply(fn, *args, **kwargs)
        self.model_dtype = self.type_embedding.weight.dtype
        return module

    def _fixed_shapes(self) -> bool:
        """Export mode, set by hand or under a graph tracer (``mlpot compile``: ``is_tracing``)."""
        return getattr(self, "export_mode", False) or is_tracing()

    def _check(self, batch: Batch) -> None:
        if self._fixed_shapes():  # a compiled model checks the types before the call
            return
        types = batch[ATOM_TYPES]
        if types.numel() and (int(types.max()) >= len(self.type_map) or int(types.min()) < 0):
            raise DataError(f"atom type {int(types.max())} out of range for type_names {self.type_map}", key=ATOM_TYPES)

    def _edges(self, batch: Batch) -> dict:
        """Edge geometry: vectors, lengths, centre/neighbour indices; as unordered pairs (each standing
        for both directions, ``both``) when the cutoffs are symmetric and every edge has its reverse."""
        types = batch[ATOM_TYPES]
        centre, neighbour = batch[EDGE_INDEX][0], batch[EDGE_INDEX][1]
        vectors = edge_vectors(batch)
        pairs = unique_pair_index(batch[EDGE_INDEX], batch[EDGE_SHIFTS], types.shape[0]) \
            if self.pairs_symmetric and not self._fixed_shapes() else None
        both = pairs is not None and bool((torch.bincount(pairs[1], minlength=len(pairs[0])) == 2).all())
        if both:
            representative = pairs[0]
            vectors = vectors.index_select(0, representative)
            centre, neighbour = centre.index_select(0, representative), neighbour.index_select(0, representative)
        lengths = vectors.square().sum(-1).sqrt()
        return {"vectors": vectors, "lengths": lengths, "centre": centre, "neighbour": neighbour, "both": both,
                "scaled": self._scaled_distance(lengths, types, centre, neighbour)}

    def _features(self, batch: Batch, n_layers: Optional[int] = None) -> Tuple[List[torch.Tensor], dict]:
        """Node features after each of the first ``n_layers`` layers (all by default) and the edge geometry."""
        self._check(batch)
        types = batch[ATOM_TYPES]
        edges = self._edges(batch)
        sh = self.spherical_harmonics(edges["vectors"]).to(self.model_dtype)
        embedding = self._edge_embedding(edges["scaled"])
        attrs = self.type_embedding.weight
        h = attrs.index_select(0, types)
        norm = self.neighbor_norm_value if self.neighbor_norm is None else \
            self.neighbor_norm.to(self.model_dtype).index_select(0, types).unsqueeze(1)
        features = []
        for layer in self.layers[:n_layers]:
            weights = layer.radial_mlp(embedding, layer.tensor_product.weight_permutation)
            h = layer(h, types, attrs, sh, weights, edges["centre"], edges["neighbour"], norm, edges["both"])
            features.append(h)
        return features, edges

    def node_features(self, batch: Batch, layer: Optional[int] = None) -> Tuple[torch.Tensor, o3.Irreps]:
        """Features after layer ``layer`` (0-based; default: the last layer with l > 0 features,
        i.e. the input of the scalar-only last layer) as (n_atoms, irreps.dim) in e3nn mul_ir
        layout, model dtype, and their ``o3.Irreps``."""
        if layer is None:
            layer = max(len(self.layers) - 2, 0)
        layer = layer % len(self.layers)
        features, _ = self._features(batch, layer + 1)
        return features[-1], self.layers[layer].irreps_out

    @property
    def node_irreps(self) -> o3.Irreps:
        """Irreps of :meth:`node_features` by default (the last layer with l > 0 features)."""
        return self.layers[max(len(self.layers) - 2, 0)].irreps_out

    def energy_and_node_features(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor, o3.Irreps]:
        """(atomic energies (n_atoms,) eV, default node features, their irreps) from one evaluation
        (the fixed-point electrostatic models sit on this)."""
        features, edges = self._features(batch)
        layer = max(len(self.layers) - 2, 0)
        return self._atomic_energy(batch, features, edges), features[layer], self.layers[layer].irreps_out

    def _atomic_energy(self, batch: Batch, features: List[torch.Tensor], edges: dict) -> torch.Tensor:
        types = batch[ATOM_TYPES]
        atomic = self.scale_shift(self.readout(features[-1]).squeeze(-1), types)
        if self.zbl is not None:
            atomic = atomic + self.zbl(edges["lengths"], edges["scaled"] / self.cutoff, types, edges["centre"], edges["neighbour"],
                                       edges["both"]).to(atomic.dtype)
        return atomic

    def forward(self, batch: Batch) -> Batch:
        """batch -> {ATOM_ENERGY (n_atoms,), ENERGY (n_frames,)} (module docstring)."""
        features, edges = self._features(batch)
        atomic = self._atomic_energy(batch, features, edges)
        return {ATOM_ENERGY: atomic, ENERGY: scatter_sum(atomic, batch[BATCH], batch[CELL].shape[0])}
