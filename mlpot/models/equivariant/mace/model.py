"""The MACE model (mace-torch ``MACE`` and ``ScaleShiftMACE``, versions 0.3.14-0.3.16).

Per atom i of element e_i (index into ``atomic_numbers``):

    h^0_i = W_emb[e_i]                                         (C x 0e)
    for each layer t: A^t, sc^t = interaction_t(h^{t-1}, Y(r_ij), R(r_ij))
                      h^t = product_t(A^t) (+ sc^t for residual interactions)
                      E^t_i = readout_t(h^t)
    MACE:           E_i = E0[e_i] + E_ZBL,i + sum_t E^t_i
    ScaleShiftMACE: E_i = E0[e_i] + scale * (E_ZBL,i + sum_t E^t_i) + shift

Y are e3nn's real spherical harmonics ("component" normalisation) of the edge direction
r_i - r_j (mace-torch's sender -> receiver vector, the opposite of mlpot's r_ij = R_j - R_i),
R the radial embedding. All layers but the last carry ``hidden_irreps``; the last one keeps only
its scalars unless ``keep_last_layer_irreps``; its readout is non-linear, the others linear.
``use_last_readout_only`` keeps the last readout alone. Energies in eV, lengths in Å.

Internally node features are (n_atoms, D, C) (see ``linear.py``) with the atoms sorted by
element, so that element-dependent weights act on contiguous slices; ``forward`` returns
per-atom energies in the batch's order. ``node_features(batch)`` exposes the equivariant
features of every layer in e3nn's layout with their ``o3.Irreps`` (for models built on top of
MACE, e.g. a fixed-point electrostatics readout).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from e3nn import o3

from mlpot.data.keys import ATOM_ENERGY, ATOM_TYPES, BATCH, EDGE_INDEX, ENERGY
from mlpot.errors import DataError
from mlpot.models.base import AtomisticModel, edge_vectors, n_frames_of
from mlpot.models.equivariant.blocks import EdgeSphericalHarmonics
from mlpot.models.equivariant.mace.interaction import InteractionBlock
from mlpot.models.equivariant.mace.linear import ChannelLinear, irreps_of, to_flat
from mlpot.models.equivariant.mace.neighbours import PaddedEdges
from mlpot.models.equivariant.mace.radial import RadialEmbedding
from mlpot.models.equivariant.mace.readout import LinearReadout, NonLinearReadout
from mlpot.models.equivariant.mace.symmetric_contraction import EquivariantProductBasis
from mlpot.models.equivariant.mace.zbl import ZBLRepulsion
from mlpot.models.output_bias import OutputBias
from mlpot.nn import gather_rows, is_tracing, scatter_sum

__all__ = ["MACE", "ScaleShiftMACE", "ElementOrder"]

SCALAR = o3.Irrep("0e")


class ElementOrder:
    """Atoms sorted by element: ``order`` (sorted -> batch index), ``inverse`` (batch -> sorted),
    ``elements`` (element of each sorted atom) and ``segments`` (atoms per element, a list; None
    under a graph tracer, where the counts are values of the data and the per-element slices give
    way to fixed-shape branches)."""

    def __init__(self, elements: torch.Tensor, n_elements: int):
        self.order = torch.argsort(elements, stable=True)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(self.order.shape[0], device=self.order.device)
        self.elements = elements.index_select(0, self.order)
        self.segments: Optional[List[int]] = None if is_tracing() else \
            torch.bincount(elements, minlength=n_elements).tolist()


def _uniform_channels(irreps: o3.Irreps, name: str) -> Tuple[int, List[o3.Irrep]]:
    """(channels, per-channel irreps) of an irreps string with one multiplicity, e.g. 16x0e+16x1o."""
    muls = {mul for mul, _ in irreps}
    if len(muls) != 1:
        raise ValueError(f"{name} must have the same number of channels for every irrep, got {irreps}")
    return muls.pop(), [ir for mul, ir in irreps]


class MACE(AtomisticModel):
    """mace-torch's ``MACE`` (module docstring). Arguments carry mace-torch's class argument names."""

    output_keys = (ENERGY, ATOM_ENERGY)
    statistics_batches = 10 ** 9  # the statistics sample is every training frame (mace_run_train's statistics)

    def __init__(self, *, r_max: float, num_bessel: int, num_polynomial_cutoff: int, max_ell: int,
                 interaction_cls: str, interaction_cls_first: str, num_interactions: int,
                 atomic_numbers: Sequence[int], hidden_irreps: str, MLP_irreps: str, atomic_energies: Sequence[float],
                 avg_num_neighbors: float, correlation, gate: Optional[str] = "silu", pair_repulsion: bool = False,
                 apply_cutoff: bool = True, use_agnostic_product: bool = False, use_last_readout_only: bool = False,
                 distance_transform: str = "None", radial_MLP: Optional[Sequence[int]] = None,
                 radial_type: str = "bessel", keep_last_layer_irreps: bool = False,
                 dtype: torch.dtype = torch.float64, type_map: Optional[Sequence[str]] = None,
                 config: Optional[Dict[str, Any]] = None):
        super().__init__()
        from ase.data import chemical_symbols

        self.atomic_numbers_list = [int(z) for z in atomic_numbers]
        self.type_map = list(type_map) if type_map else [chemical_symbols[z] for z in self.atomic_numbers_list]
        self.cutoff = float(r_max)
        self.config = dict(config or {})
        self.n_elements = len(self.atomic_numbers_list)
        self.register_buffer("atomic_numbers", torch.tensor(self.atomic_numbers_list, dtype=torch.long))
        self.register_buffer("r_max", torch.tensor(float(r_max), dtype=dtype))
        self.register_buffer("num_interactions", torch.tensor(int(num_interactions), dtype=torch.long))
        correlations = [int(correlation)] * num_interactions if isinstance(correlation, int) else [int(c) for c in correlation]
        hidden = o3.Irreps(hidden_irreps)
        channels, hidden_blocks = _uniform_channels(hidden, "hidden_irreps")
        mlp_channels, mlp_blocks = _uniform_channels(o3.Irreps(MLP_irreps), "MLP_irreps")
        if any(ir != SCALAR for ir in mlp_blocks):
            raise ValueError(f"MLP_irreps must be even scalars (K x 0e), got {MLP_irreps}")
        self.spherical_harmonics = EdgeSphericalHarmonics(max_ell)
        self.sh_irreps = self.spherical_harmonics.irreps
        self.sh_blocks = [ir for _, ir in self.sh_irreps]
        target_blocks = sorted(self.sh_blocks, key=lambda ir: (ir.l, ir.p))
        if any(ir.p != (-1) ** ir.l for ir in hidden_blocks):  # odd-parity hidden features: both parities
            target_blocks = [o3.Irrep(l, p) for l in range(max_ell + 1) for p in (-1, 1)]
        self.channels, self.pair_repulsion = channels, bool(pair_repulsion)
        self.use_last_readout_only = bool(use_last_readout_only)
        self.node_embedding = torch.nn.Module()
        self.node_embedding.linear = ChannelLinear([SCALAR], self.n_elements, [SCALAR], channels, dtype)
        self.radial_embedding = RadialEmbedding(r_max, num_bessel, num_polynomial_cutoff, radial_type, distance_transform,
                                                apply_cutoff, self.atomic_numbers_list, dtype)
        if self.pair_repulsion:
            self.pair_repulsion_fn = ZBLRepulsion(self.atomic_numbers_list, num_polynomial_cutoff, dtype)
        self.atomic_energies_fn = torch.nn.Module()
        self.atomic_energies_fn.register_buffer(
            "atomic_energies", torch.as_tensor(atomic_energies, dtype=dtype).reshape(1, self.n_elements).clone())
        radial_mlp = [64, 64, 64] if radial_MLP is None else list(radial_MLP)
        product_elements = 1 if use_agnostic_product else self.n_elements
        self.interactions, self.products, self.readouts = torch.nn.ModuleList(), torch.nn.ModuleList(), torch.nn.ModuleList()
        self.layer_blocks: List[List[o3.Irrep]] = []
        node_blocks = [SCALAR]
        for t in range(num_interactions):
            last = t == num_interactions - 1
            if num_interactions == 1 or (last and not keep_last_layer_irreps):
                out_blocks = [SCALAR]  # mace-torch keeps only the scalars of the last layer
            else:
                out_blocks = list(hidden_blocks)
            kind = interaction_cls_first if t == 0 else interaction_cls
            self.interactions.append(InteractionBlock(
                kind, node_blocks, channels, channels, self.sh_blocks, self.sh_blocks if t == 0 else target_blocks,
                out_blocks, self.n_elements, num_bessel, radial_mlp, avg_num_neighbors, dtype))
            use_sc = self.interactions[-1].residual or t > 0
            self.products.append(EquivariantProductBasis(self.interactions[-1].target_blocks, out_blocks, correlations[t],
                                                         product_elements, channels, use_sc, dtype))
            if t > 0 and last:
                self.readouts.append(NonLinearReadout(out_blocks, channels, mlp_channels, gate, dtype))
            elif not use_last_readout_only:
                self.readouts.append(LinearReadout(out_blocks, channels, dtype))
            self.layer_blocks.append(list(out_blocks))
            node_blocks = hidden_blocks

    # ---- evaluation ------------------------------------------------------------------------
    def _layers(self, batch: Dict[str, torch.Tensor]) -> Tuple[ElementOrder, List[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Sorted-order results: (order, node features per layer, per-atom interaction energy
        sum (readouts + ZBL), per-atom E0)."""
        dtype = self.r_max.dtype
        types = batch[ATOM_TYPES]
        if not is_tracing() and types.numel() and (int(types.max()) >= self.n_elements or int(types.min()) < 0):
            raise DataError(f"atom type {int(types.max())} outside the model's elements {self.type_map} "
                            "(read the data with type_map=model.type_map)", key=ATOM_TYPES)
        order = ElementOrder(types, self.n_elements)
        edge_index = batch[EDGE_INDEX]
        receiver, sender = order.inverse.index_select(0, edge_index[0]), order.inverse.index_select(0, edge_index[1])
        vectors = -edge_vectors(batch, dtype)  # r_i - r_j: mace-torch's sender -> receiver vector
        lengths = torch.linalg.norm(vectors, dim=-1)
        element_i, element_j = order.elements.index_select(0, receiver), order.elements.index_select(0, sender)
        edge_sh = self.spherical_harmonics(vectors)
        edge_feats, envelope = self.radial_embedding(lengths, element_i, element_j)
        n_atoms = order.elements.shape[0]
        edges = PaddedEdges(receiver, sender, n_atoms)
        padded_sh, padded_feats = edges.pad(edge_sh), edges.pad(edge_feats)
        padded_envelope = None if envelope is None else edges.pad(envelope)
        one_hot = torch.nn.functional.one_hot(order.elements, self.n_elements).to(dtype).unsqueeze(1)
        node_feats = self.node_embedding.linear(one_hot)
        segments = order.segments if self.products[0].symmetric_contractions.contractions[0].n_elements > 1 else [n_atoms]
        features, energies = [], []
        if self.pair_repulsion:
            energies.append(self.pair_repulsion_fn(lengths, element_i, element_j, receiver, n_atoms))
        for interaction, product in zip(self.interactions, self.products):
            message, sc = interaction(node_feats, padded_sh, padded_feats, padded_envelope, edges, order.segments,
                                      order.elements)
            node_feats = product(message, sc, segments, order.elements)
            features.append(node_feats)
        for t, readout in enumerate(self.readouts):
            energies.append(readout(features[-1 if len(self.readouts) == 1 else t]))
        interaction_energy = torch.stack(energies).sum(0) if energies else features[-1].new_zeros(n_atoms)
        e0 = self.atomic_energies_fn.atomic_energies[0].to(dtype).index_select(0, order.elements)
        return order, features, interaction_energy, e0

    def combine(self, interaction_energy: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
        """Per-atom energy from the interaction part and E0 (MACE: their sum)."""
        return e0 + interaction_energy

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """batch: keys of mlpot.data.keys (ATOM_TYPES index ``atomic_numbers``). Returns ATOM_ENERGY
        (n_atoms,) and ENERGY (n_frames,) in eV."""
        order, _, interaction_energy, e0 = self._layers(batch)
        atom_energy = gather_rows(self.combine(interaction_energy, e0), order.inverse)
        # frame sums in float64: per-atom energies carry E0s of 1e2-1e4 eV, whose float32 sum over
        # hundreds of atoms would lose tenths of an eV
        energy = scatter_sum(atom_energy.double(), batch[BATCH], n_frames_of(batch)).to(atom_energy.dtype)
        return {ATOM_ENERGY: atom_energy, ENERGY: energy}

    def output_bias(self) -> OutputBias:
        """The E0s (per element, eV): the per-type energy bias that bias statistics change (the E0s
        "estimated" of fine-tuning, ``mlpot change-bias``)."""
        return OutputBias(self.atomic_energies_fn.atomic_energies.view(self.n_elements, 1), ENERGY)

    @property
    def node_irreps(self) -> o3.Irreps:
        """e3nn Irreps of ``node_features``: every layer's features, concatenated."""
        return o3.Irreps(sum((list(irreps_of(self.channels, blocks)) for blocks in self.layer_blocks), []))

    def node_features(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, o3.Irreps]:
        """Equivariant features of every layer per atom, batch order: ((n_atoms, node_irreps.dim), node_irreps)."""
        _, features, irreps = self.energy_and_node_features(batch)
        return features, irreps

    def energy_and_node_features(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, o3.Irreps]:
        """Per-atom energy (n_atoms,) eV and the node features of :meth:`node_features` from one
        evaluation (for models built on top of MACE that need both)."""
        order, features, interaction_energy, e0 = self._layers(batch)
        flat = torch.cat([to_flat(f, blocks) for f, blocks in zip(features, self.layer_blocks)], dim=1)
        atom_energy = gather_rows(self.combine(interaction_energy, e0), order.inverse)
        return atom_energy, gather_rows(flat, order.inverse), self.node_irreps

    def extra_repr(self) -> str:
        return f"type_map={self.type_map}, cutoff={self.cutoff}, channels={self.channels}"


class ScaleShiftMACE(MACE):
    """mace-torch's ``ScaleShiftMACE``: the interaction energy is scaled and shifted per atom."""

    def __init__(self, *, atomic_inter_scale: float = 1.0, atomic_inter_shift: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        dtype = self.r_max.dtype
        self.scale_shift = torch.nn.Module()
        self.scale_shift.register_buffer("scale", torch.as_tensor(atomic_inter_scale, dtype=dtype).reshape(1).clone())
        self.scale_shift.register_buffer("shift", torch.as_tensor(atomic_inter_shift, dtype=dtype).reshape(1).clone())

    def combine(self, interaction_energy: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
        return e0 + (self.scale_shift.scale[0] * interaction_energy + self.scale_shift.shift[0])
