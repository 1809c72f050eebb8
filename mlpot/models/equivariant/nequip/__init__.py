"""NequIP GNN (NequIP 0.19.1 ``NequIPGNNModel``): model, model section, builder, and a safe reader of
NequIP checkpoints and packages (spec nequip.md §2)."""

from mlpot.models.equivariant.nequip.builder import build_nequip, validate_nequip_section
from mlpot.models.equivariant.nequip.model import NequIPModel
from mlpot.models.equivariant.nequip.section import NEQUIP_PRESETS, NequIPModelSection, ZBLSection
from mlpot.models.equivariant.nequip.zbl import ZBL

__all__ = ["NequIPModel", "NequIPModelSection", "ZBLSection", "NEQUIP_PRESETS", "ZBL", "build_nequip", "validate_nequip_section"]
