"""se_e2_r (alias se_r) radial descriptor, spec deepmd.md §2.4.

D_i = (1/5) (1/N_c) sum_k N_t(s~_ik), dimension M1 = neuron[-1]; the 1/5 is hard-coded in
DeePMD-kit [COMPAT]; N_c = sum(sel) and padded slots take part, as in se_e2_a. The embedding nets
and their fast evaluation (occupied slots only, padded slots in closed form) are those of se_e2_a.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES
from mlpot.models.deepmd.keys import SE_E2_R, resolve_precision, resolve_sel
from mlpot.models.sections import read_section
from mlpot.models.deepmd.descriptors.base import DESCRIPTORS
from mlpot.models.deepmd.descriptors.se_e2_a import DescriptorSeA

__all__ = ["DescriptorSeR"]

SE_R_FACTOR = 0.2  # DeePMD-kit's hard-coded 1/5 [COMPAT]


class DescriptorSeR(DescriptorSeA):
    """se_e2_r descriptor: forward(batch, vectors) -> (D (n_atoms, M1), None)."""

    radial_only = True

    def __init__(self, n_types: int, sel, **kwargs):
        neuron = kwargs.get("neuron", (10, 20, 40))
        super().__init__(n_types, sel, axis_neuron=int(neuron[-1]), **kwargs)
        self.dim_out = self.m1
        self.dim_rot = 0

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_section(section, path, SE_E2_R, "SeE2RSection")
        values.pop("type")
        dtype = resolve_precision(values.pop("precision"), dtype, path)
        values["sel"] = resolve_sel(values["sel"], n_types, path)
        return cls(n_types, dtype=dtype, config=dict(section), **values)

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, None]:
        if self.skip_padding:
            env, nlist, bounds = self.compact_environment(batch, vectors)  # (n_atoms, n_kept, 1)
        else:
            (env, nlist), bounds = self.normalized_environment(batch, vectors), None
        ones = torch.ones_like(env)
        pair_key = self._pair_key(batch)
        summed = self.embedding_contraction(env, nlist, batch[ATOM_TYPES], weights=ones, pad_weight=env.new_ones(env.shape[0], 1),
                                            pair_key=pair_key, bounds=bounds)
        return summed[:, 0] * (SE_R_FACTOR / self.n_slots), None


