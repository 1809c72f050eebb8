"""hybrid descriptor, spec deepmd.md §2.7: the concatenation of its sub-descriptors.

rcut is the largest sub-rcut (the batch's edge list is built at it), rcut_smth the smallest;
each sub-descriptor picks its own neighbours (its rcut, its sel) from that edge list. Equivariant
blocks are concatenated along the feature axis when every sub-descriptor has one.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from mlpot.errors import ConfigError
from mlpot.models.deepmd.keys import HYBRID
from mlpot.models.sections import read_section
from mlpot.models.deepmd.descriptors.base import DESCRIPTORS, Descriptor

__all__ = ["DescriptorHybrid"]


class DescriptorHybrid(Descriptor):
    """Concatenation of descriptors: forward -> (D (n_atoms, sum dim_out), rot or None)."""

    def __init__(self, descriptors, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        if not descriptors:
            raise ConfigError("needs at least one descriptor", key="model/descriptor/list")
        self.descriptors = torch.nn.ModuleList(descriptors)
        self.rcut = max(d.rcut for d in descriptors)
        self.rcut_smth = min(d.rcut_smth for d in descriptors)
        self.n_types = descriptors[0].n_types
        self.sel = [sum(s) for s in zip(*(d.sel for d in descriptors))]
        self.dim_out = sum(d.dim_out for d in descriptors)
        self.dim_rot = sum(d.dim_rot for d in descriptors) if all(d.dim_rot for d in descriptors) else 0
        self.mixed_types = any(getattr(d, "mixed_types", False) for d in descriptors)
        self.config = dict(config or {})

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_section(section, path, HYBRID, "HybridSection")
        if not isinstance(values["list"], list) or not values["list"]:
            raise ConfigError("must be a non-empty list of descriptor sections", key=f"{path}/list")
        children = []
        for index, sub in enumerate(values["list"]):
            sub_path = f"{path}/list[{index}]"
            if not isinstance(sub, dict) or "type" not in sub:
                raise ConfigError("needs a mapping with a 'type' key", key=sub_path)
            child_cls = DESCRIPTORS.get(sub["type"], key=f"{sub_path}/type")
            children.append(child_cls.from_config(sub, n_types, dtype, sub_path))
        return cls(children, config=dict(section))

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        outputs = [d(batch, vectors) for d in self.descriptors]
        features = torch.cat([o[0] for o in outputs], dim=-1)
        rot = torch.cat([o[1] for o in outputs], dim=1) if self.dim_rot else None
        return features, rot

    def compute_statistics(self, samples, protection: float = 1e-2) -> Dict[str, Any]:
        return {"list": [d.compute_statistics(samples, protection) for d in self.descriptors]}


