"""DeePMD-kit's pairwise DPRc model (``model/type: pairwise_dprc``): QM/MM range corrections.

DPRc (Zeng et al., J. Chem. Theory Comput. 17, 6993, 2021) learns the correction from a low-level to
a high-level QM/MM energy, E_DPRc = E_high - E_low (eV), on a type map that holds QM types (C, H, O,
...) and MM types (HW, OW, mNa, ...). The pairwise variant splits it into the QM internal term and
one QM/MM term per MM residue l:

    E = E_qm_model(QM atoms only) + sum_l E_qmmm_model(QM atoms + atoms of MM residue l)

``aparam`` (one value per atom, ``aparam.npy`` of shape (n_frames, n_atoms)) is the residue index:
0 for the QM residue, 1, 2, ... for MM residues (DeePMD-kit's doc/model/pairwise-dprc.md). Nothing
is subtracted: the QM/MM sub-model is made blind to QM-QM and MM-MM pairs by its descriptor's
``exclude_types`` and vanishes for far residues by ``atom_ener`` 0 for every type (its fitting net's
vacuum output removed, the vacuum input keeping se_atten's type embedding as in DeePMD-kit TF),
as DeePMD-kit's example inputs set; those are configuration, honoured as
given. Per-atom energy: E_i = E_i^qm (QM atoms) + sum_l E_i^(qmmm, l); MM atoms of residue l get
their QM/MM-model energy of sub-frame l only.

The sub-frames are built from the batch's graph, vectorised: the QM sub-batch keeps the QM atoms and
QM-QM edges; the QM/MM sub-batch holds, per (frame, residue l), a copy of the frame's QM atoms and
the residue's atoms, with the edges among them (QM-QM edges copied once per residue, MM-MM edges
across residues dropped). Positions are gathered with ``index_select``, so forces and virials come
from autograd through the original positions and cells. The model cutoff is the larger sub-model
cutoff; each sub-descriptor uses its own rcut.

Statistics: the QM sub-model gets input statistics on QM-only sub-frames and its output bias by
least squares on the frame labels against QM type counts (DeePMD-kit fits the QM model's bias on the
full data with atom_ener 0 for MM types, which is the same); the QM/MM sub-model gets input
statistics on its sub-frames and no fitted bias (its ``atom_ener`` presets stay; DeePMD-kit's
examples fix all of them at 0). DeePMD-kit shares one type embedding (model/type_embedding) between
the two se_atten sub-descriptors; mlpot gives each sub-descriptor its own, of width
type_embedding/neuron[-1] (``tebd_dim``).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import APARAM, ATOM_ENERGY, ATOM_TYPES, BATCH, CELL, EDGE_INDEX, EDGE_SHIFTS, ENERGY, KEYS, N_ATOMS, POSITIONS
from mlpot.errors import ConfigError, DataError
from mlpot.models.base import AtomisticModel, check_type_map
from mlpot.models.deepmd.keys import PAIRWISE_DPRC_KEYS, TYPE_EMBEDDING_KEYS, check_model_section
from mlpot.models.sections import read_section
from mlpot.nn import gather_rows, is_tracing, scatter_sum

__all__ = ["PairwiseDPRcModel", "build_pairwise_dprc", "qm_subbatch", "qmmm_subbatch", "residue_index"]

Batch = Dict[str, torch.Tensor]



def residue_index(batch: Batch) -> torch.Tensor:
    """The residue index per atom from APARAM (n_atoms, 1): 0 for QM atoms, >= 1 for MM residues."""
    if APARAM not in batch:
        raise DataError("pairwise_dprc needs aparam.npy: the residue index of each atom (0 = QM)", key=APARAM)
    values = batch[APARAM].reshape(batch[ATOM_TYPES].shape[0], -1)
    if values.shape[1] != 1:
        raise DataError(f"pairwise_dprc reads one aparam per atom (the residue index), got {values.shape[1]}", key=APARAM)
    index = torch.round(values[:, 0]).to(torch.int64)
    if not is_tracing() and index.numel() and (bool((values[:, 0] - index).abs().max() > 1e-6) or int(index.min()) < 0):
        raise DataError("aparam of pairwise_dprc must be whole numbers >= 0 (0 = QM, l >= 1 = MM residue l)", key=APARAM)
    return index


def _carry(batch: Batch, atoms: torch.Tensor, frames: Optional[torch.Tensor], frame_of_atom: torch.Tensor,
           edges: torch.Tensor, shifts: torch.Tensor, n_frames: int) -> Batch:
    """A batch of the atoms ``atoms`` (original indices), frames ``frames`` (None: all) and the given
    edges (new indices): atom-level keys gathered, frame-level keys gathered, N_ATOMS recounted."""
    out: Batch = {}
    for name, value in batch.items():
        level = KEYS[name].level if name in KEYS else None
        if name in (EDGE_INDEX, EDGE_SHIFTS, BATCH, N_ATOMS) or level is None or not torch.is_tensor(value):
            continue
        if level == "atom" and value.shape[:1] == batch[ATOM_TYPES].shape[:1]:
            out[name] = gather_rows(value, atoms)
        elif level == "frame" and value.shape[:1] == batch[CELL].shape[:1]:
            out[name] = value if frames is None else gather_rows(value, frames)
    out.update({BATCH: frame_of_atom, EDGE_INDEX: edges, EDGE_SHIFTS: shifts,
                N_ATOMS: torch.bincount(frame_of_atom, minlength=n_frames)})
    return out


def qm_subbatch(batch: Batch, residue: torch.Tensor) -> Tuple[Batch, torch.Tensor]:
    """(batch of the QM atoms only with their QM-QM edges, original indices of those atoms (n_qm,))."""
    qm = residue == 0
    atoms = torch.nonzero(qm).squeeze(1)
    new_index = torch.cumsum(qm.to(torch.int64), 0) - 1
    edge_index = batch[EDGE_INDEX]
    keep = qm[edge_index[0]] & qm[edge_index[1]]
    edges = new_index[edge_index[:, keep]]
    sub = _carry(batch, atoms, None, batch[BATCH][atoms], edges, batch[EDGE_SHIFTS][keep], int(batch[CELL].shape[0]))
    return sub, atoms


def qmmm_subbatch(batch: Batch, residue: torch.Tensor) -> Tuple[Batch, torch.Tensor]:
    """(batch of the QM/MM sub-frames, original index of each sub-frame atom (n_sub_atoms,)).

    One sub-frame per (frame, MM residue l): the frame's QM atoms (copied) and residue l's atoms,
    with the original edges among them (module docstring). Sub-frames of a frame are contiguous.
    """
    frame, edge_index = batch[BATCH], batch[EDGE_INDEX]
    n_frames, device = int(batch[CELL].shape[0]), frame.device
    qm = residue == 0
    span = int(residue.max()) + 1 if residue.numel() else 1
    mm_atoms = torch.nonzero(~qm).squeeze(1)
    pair_ids, mm_sub = torch.unique(frame[mm_atoms] * span + residue[mm_atoms], return_inverse=True)
    sub_frame = pair_ids // span  # original frame of each sub-frame (n_sub,)
    n_sub = int(pair_ids.shape[0])
    per_frame = torch.bincount(sub_frame, minlength=n_frames)
    first = torch.cumsum(per_frame, 0) - per_frame  # first sub-frame of each frame
    qm_atoms = torch.nonzero(qm).squeeze(1)
    copies = per_frame[frame[qm_atoms]]  # copies of each QM atom
    qm_start = torch.cumsum(copies, 0) - copies
    qm_orig = torch.repeat_interleave(qm_atoms, copies)
    rank = torch.arange(qm_orig.shape[0], device=device) - torch.repeat_interleave(qm_start, copies)
    qm_sub = first[frame[qm_orig]] + rank
    orig = torch.cat([qm_orig, mm_atoms])
    sub_of = torch.cat([qm_sub, mm_sub])
    order = torch.argsort(sub_of, stable=True)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.shape[0], device=device)
    qm_slot = torch.full_like(residue, -1)
    qm_slot[qm_atoms] = qm_start
    mm_slot = torch.full_like(residue, -1)
    mm_slot[mm_atoms] = position[qm_orig.shape[0] + torch.arange(mm_atoms.shape[0], device=device)]
    mm_sub_of = torch.full_like(residue, -1)
    mm_sub_of[mm_atoms] = mm_sub

    i, j = edge_index[0], edge_index[1]
    # QM-QM edges: one copy per sub-frame of their frame
    both_qm = torch.nonzero(qm[i] & qm[j]).squeeze(1)
    reps = per_frame[frame[i[both_qm]]]
    e_qq = torch.repeat_interleave(both_qm, reps)
    k = torch.arange(e_qq.shape[0], device=device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    qq = torch.stack([position[qm_slot[i[e_qq]] + k], position[qm_slot[j[e_qq]] + k]])
    # edges with an MM end: kept when both ends are in the same sub-frame (QM ends take its copy)
    mixed = ~(qm[i] & qm[j]) & ((qm[i] | qm[j]) | (residue[i] == residue[j]))
    e_m = torch.nonzero(mixed).squeeze(1)
    sub = torch.where(qm[i[e_m]], mm_sub_of[j[e_m]], mm_sub_of[i[e_m]])

    def slot(atom: torch.Tensor) -> torch.Tensor:
        copy_index = qm_slot[atom] + sub - first[frame[atom]]
        return torch.where(qm[atom], position[copy_index.clamp(min=0, max=max(position.numel() - 1, 0))], mm_slot[atom])

    mm_edges = torch.stack([slot(i[e_m]), slot(j[e_m])])
    edges = torch.cat([qq, mm_edges], dim=1)
    shifts = torch.cat([batch[EDGE_SHIFTS][e_qq], batch[EDGE_SHIFTS][e_m]])
    atoms = orig[order]
    out = _carry(batch, atoms, sub_frame, sub_of[order], edges, shifts, n_sub)
    return out, atoms


class PairwiseDPRcModel(AtomisticModel):
    """E = E_qm + sum_l E_qmmm,l (module docstring). Outputs ATOM_ENERGY (n_atoms,) and ENERGY
    (n_frames,) in eV; reads APARAM (n_atoms, 1), the residue index."""

    output_keys = (ATOM_ENERGY, ENERGY)

    def __init__(self, type_map: Sequence[str], qm_model: AtomisticModel, qmmm_model: AtomisticModel,
                 config: Dict[str, Any], data_stat_nbatch: int = 10):
        super().__init__()
        self.type_map = list(type_map)
        self.qm_model, self.qmmm_model = qm_model, qmmm_model
        self.cutoff = max(float(qm_model.cutoff), float(qmmm_model.cutoff))
        self.config = dict(config)
        self.statistics_batches = int(data_stat_nbatch)

    @property
    def input_keys(self) -> Tuple[str, ...]:
        return (APARAM,)

    def parts(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(E_i from the QM model, E_i summed over the QM/MM sub-frames), each (n_atoms,) eV."""
        residue = residue_index(batch)
        n_atoms = batch[ATOM_TYPES].shape[0]
        dtype = batch[POSITIONS].dtype
        qm_batch, qm_atoms = qm_subbatch(batch, residue)
        qmmm_batch, qmmm_atoms = qmmm_subbatch(batch, residue)
        e_qm = torch.zeros(n_atoms, dtype=dtype, device=residue.device)
        e_qmmm = torch.zeros_like(e_qm)
        if qm_atoms.numel():
            e_qm = e_qm.index_add(0, qm_atoms, self.qm_model(qm_batch)[ATOM_ENERGY].to(dtype))
        if qmmm_atoms.numel():
            e_qmmm = e_qmmm.index_add(0, qmmm_atoms, self.qmmm_model(qmmm_batch)[ATOM_ENERGY].to(dtype))
        return e_qm, e_qmmm

    def forward(self, batch: Batch) -> Batch:
        e_qm, e_qmmm = self.parts(batch)
        atomic = e_qm + e_qmmm
        return {ATOM_ENERGY: atomic, ENERGY: scatter_sum(atomic, batch[BATCH], batch[CELL].shape[0])}

    def output_bias(self):
        """The QM sub-model's energy bias (the one DeePMD-kit fits)."""
        return self.qm_model.output_bias()

    def compute_statistics(self, batches: Iterable[Batch], output_bias: bool = True, **kwargs) -> Dict[str, Any]:
        """QM sub-model: input statistics and (``output_bias``) the bias on the frame labels; QM/MM
        sub-model: input statistics only (module docstring)."""
        batches = list(batches)
        with torch.no_grad():
            qm = [qm_subbatch(b, residue_index(b))[0] for b in batches]
            qmmm = [qmmm_subbatch(b, residue_index(b))[0] for b in batches]
        return {"qm_model": self.qm_model.compute_statistics([b for b in qm if b[ATOM_TYPES].numel()],
                                                               output_bias=output_bias, **kwargs),
                "qmmm_model": self.qmmm_model.compute_statistics([b for b in qmmm if b[ATOM_TYPES].numel()],
                                                                   output_bias=False, **kwargs)}


def _member_section(values: Dict[str, Any], name: str) -> Dict[str, Any]:
    """A sub-model section with the outer type_map and the shared type embedding's width."""
    section = copy.deepcopy(values[name])
    if section.get("type", "standard") != "standard":
        raise ConfigError(f"not supported yet: model/{name}/type={section['type']} (a standard model section)",
                          key=f"model/{name}/type")
    if "type_map" in section and list(section["type_map"]) != list(values["type_map"]):
        raise ConfigError(f"differs from model/type_map {values['type_map']}", key=f"model/{name}/type_map")
    section["type_map"] = values["type_map"]
    embedding = values["type_embedding"]
    descriptor = section.get("descriptor")
    if embedding is not None and isinstance(descriptor, dict):
        read_section(embedding, "model/type_embedding", TYPE_EMBEDDING_KEYS, "TypeEmbeddingSection")
        if descriptor.get("type") not in ("se_atten", "dpa1", "se_atten_v2"):
            raise ConfigError(f"not supported yet: model/type_embedding with model/{name}/descriptor/type="
                              f"{descriptor.get('type')} (se_atten sub-descriptors only)", key="model/type_embedding")
        neuron = embedding.get("neuron", [8])
        descriptor.setdefault("tebd_dim", int(neuron[-1]) if isinstance(neuron, list) and neuron else 8)
    return section


def build_pairwise_dprc(config: Dict[str, Any], dtype: torch.dtype,
                        build: Callable[[Dict[str, Any], torch.dtype], AtomisticModel]) -> PairwiseDPRcModel:
    """A PairwiseDPRcModel; ``build(section, dtype)`` builds the two standard sub-models."""
    values = read_section(config, "model", PAIRWISE_DPRC_KEYS, "PairwiseDPRcSection")
    type_map = check_type_map(values["type_map"])
    members = []
    for name in ("qm_model", "qmmm_model"):
        section = _member_section(values, name)
        section.setdefault("data_stat_protect", values["data_stat_protect"])
        check_model_section(section, f"model/{name}")  # errors name model/<name>/...
        try:
            members.append(build(section, dtype))
        except ConfigError as error:
            raise ConfigError(str(error), key=f"model/{name}") from error
    for name, member in zip(("qm_model", "qmmm_model"), members):
        if not hasattr(member, "use_tf_vacuum"):  # e.g. a use_srtab or spin wrapper
            raise ConfigError(f"not supported yet: a {type(member).__name__} as a pairwise_dprc sub-model", key=f"model/{name}")
        member.use_tf_vacuum()  # a TF-only model: TF's atom_ener vacuum (far residues add exactly 0)
    return PairwiseDPRcModel(type_map, members[0], members[1], config, data_stat_nbatch=values["data_stat_nbatch"])

