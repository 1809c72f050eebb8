"""The DeePMD "standard" model: descriptor + fitting net, per-atom outputs summed per frame.

forward(batch) computes edge vectors from POSITIONS/CELL/EDGE_INDEX/EDGE_SHIFTS (so autograd gives
forces and virials), the descriptor, the per-atom fitting output, and the per-frame sum:
ener -> ATOM_ENERGY (n_atoms,) and ENERGY (n_frames,) in eV; dos -> ATOM_DOS / DOS;
dipole -> ATOMIC_DIPOLE (n_atoms, 3) / DIPOLE (n_frames, 3); polar -> ATOMIC_POLARIZABILITY /
POLARIZABILITY (…, 3, 3). Outputs are float64 whatever the network precision.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch

from mlpot.data.keys import APARAM, ATOM_ENERGY, ATOM_TYPES, BATCH, CELL, EDGE_INDEX, FPARAM, POSITIONS
from mlpot.errors import DataError
from mlpot.models.base import AtomisticModel, edge_vectors
from mlpot.models.output_bias import OutputBias
from mlpot.nn import is_tracing, scatter_sum

__all__ = ["StandardModel"]


class StandardModel(AtomisticModel):
    """Descriptor + fitting. ``atom_exclude_types`` zero the atomic outputs of those types."""

    def __init__(self, type_map: Sequence[str], descriptor, fitting, config: Dict[str, Any],
                 atom_exclude_types: Sequence[int] = (), data_stat_protect: float = 1e-2, data_stat_nbatch: int = 10):
        super().__init__()
        self.type_map = list(type_map)
        self.descriptor = descriptor
        self.fitting = fitting
        self.cutoff = float(descriptor.rcut)
        self.config = dict(config)
        self.data_stat_protect = float(data_stat_protect)
        self.statistics_batches = int(data_stat_nbatch)  # DeePMD data_stat_nbatch
        keep = torch.ones(len(type_map), dtype=torch.bool)
        for t in atom_exclude_types:
            keep[int(t)] = False
        self.register_buffer("atom_keep", keep, persistent=False)
        self.keeps_all_types = bool(keep.all())  # a Python flag: no buffer value read in forward
        self.output_keys = (fitting.atom_key, fitting.frame_key)
        self.tf_vacuum = False  # see use_tf_vacuum

    def use_tf_vacuum(self) -> None:
        """``atom_ener``'s vacuum input as in DeePMD-kit TF: the descriptor of an isolated atom keeps
        se_atten's appended type embedding (DeePMD-kit PT, the default here, zeroes it). The
        TF-only pairwise_dprc model sets it on its sub-models."""
        self.tf_vacuum = hasattr(self.descriptor, "vacuum_descriptor") and getattr(self.fitting, "atom_ener", None) is not None

    def _check(self, batch: Dict[str, torch.Tensor]) -> None:
        types = batch[ATOM_TYPES]
        if is_tracing():  # a compiled model checks its inputs before the call
            return
        if types.numel() and (int(types.max()) >= len(self.type_map) or int(types.min()) < 0):
            raise DataError(
                f"atom type {int(types.max())} out of range for type_map {self.type_map}", key=ATOM_TYPES
            )

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """batch -> {atom key: (n_atoms, ...), frame key: (n_frames, ...)} (see module docstring)."""
        self._check(batch)
        vectors = edge_vectors(batch)
        descriptor, rot = self.descriptor(batch, vectors)
        types = batch[ATOM_TYPES]
        extra = {"vacuum": self.descriptor.vacuum_descriptor()} if self.tf_vacuum else {}
        atomic = self.fitting(descriptor, rot, types, batch[BATCH], batch.get(FPARAM), batch.get(APARAM), **extra)
        if not self.keeps_all_types:
            keep = self.atom_keep[types].to(atomic.dtype).reshape((-1,) + (1,) * (atomic.dim() - 1))
            atomic = atomic * keep
        if self.fitting.atom_key == ATOM_ENERGY:
            atomic = atomic.squeeze(-1)
        atomic = atomic.to(batch[POSITIONS].dtype)
        total = scatter_sum(atomic, batch[BATCH], batch[CELL].shape[0])
        return {self.fitting.atom_key: atomic, self.fitting.frame_key: total}

    @property
    def input_keys(self) -> Tuple[str, ...]:
        """FPARAM / APARAM when the fitting reads them (numb_fparam, numb_aparam > 0)."""
        return tuple(key for key, width in ((FPARAM, getattr(self.fitting, "numb_fparam", 0)),
                                            (APARAM, getattr(self.fitting, "numb_aparam", 0))) if width)

    def output_bias(self) -> Optional[OutputBias]:
        """The fitting's ``bias_atom`` for energy and DOS fittings; None for dipole/polar."""
        return self.fitting.output_bias() if hasattr(self.fitting, "output_bias") else None

    def compute_statistics(self, batches: Iterable[Dict[str, torch.Tensor]], output_bias: bool = True,
                           **kwargs) -> Dict[str, Any]:
        """Env-matrix davg/dstd and output bias from sample batches (collated dicts with edges).

        The caller chooses the sample (DeePMD: ``data_stat_nbatch`` batches per system for the
        env statistics, ``data_bias_nsample`` for the bias); all batches given are used. Without
        ``output_bias`` the input statistics only, and a zero bias: the model is a member of a
        composite model that owns the output bias.
        """
        batches = [dict(b) for b in batches]
        if not batches:
            raise DataError("compute_statistics needs at least one sample batch")
        for batch in batches:
            if EDGE_INDEX not in batch:
                raise DataError("sample batches need neighbour lists (EDGE_INDEX); build them with the data layer", key=EDGE_INDEX)
        samples = [(b, edge_vectors(b)) for b in batches]
        summary = {"descriptor": self.descriptor.compute_statistics(samples)}
        summary["fitting"] = self.fitting.compute_output_statistics(batches, protection=self.data_stat_protect,
                                                                  output_bias=output_bias)
        if hasattr(self.fitting, "center_initial_output"):
            self._center_initial_output(samples)
        return summary

    def _center_initial_output(self, samples) -> None:
        """Mean raw fitting-net output per type over the sample -> ``fitting.center_initial_output``."""
        n_types = len(self.type_map)
        sums = torch.zeros(n_types, 1, dtype=torch.float64)
        counts = torch.zeros(n_types, dtype=torch.float64)
        with torch.no_grad():
            for batch, vectors in samples:
                descriptor, _ = self.descriptor(batch, vectors)
                types = batch[ATOM_TYPES]
                inputs = self.fitting._inputs(descriptor, batch[BATCH], batch.get(FPARAM), batch.get(APARAM))
                raw = self.fitting.net_outputs(inputs, types).to(torch.float64).cpu()
                sums.index_add_(0, types.cpu(), raw)
                counts += torch.bincount(types.cpu(), minlength=n_types).to(torch.float64)
        self.fitting.center_initial_output(sums / counts.clamp(min=1).unsqueeze(1), counts)
