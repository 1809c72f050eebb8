"""Self-consistent (fixed-point) electrostatic models on any backbone, and the non-SCF electrostatic
models beside them (spec mace_scf.md §2-4; docs/fixed_point_models.md).

By concept: ``backbone`` (the interface and one adapter per backbone), ``channels`` (l <= 1
equivariant blocks), ``readouts`` (local density readout, field energy readouts), ``updates``
(update rules of the fixed-point map), ``message`` (one equivariant convolution), ``problem``
(local state, map, residual), ``solver`` (constant-Fermi and constant-charge SCF drivers),
``implicit`` (implicit-function derivatives, GMRES), ``modes`` (direct, unroll_scf, implicit,
linearize_solve, scf), ``observables``, ``model`` (``FixedPointModel``), ``local_models`` and
``qeq`` (LocalCharges, LocalSplitCharges, FixedChargeBaselined, QEq), ``options``, ``statistics``
(data statistics, SCF convergence counts and summary), ``section`` (typed section, builders),
``data_hooks`` (data-dependent backbone keys). Family hooks for ``mlpot.models.registry`` are
exported here.
"""

from mlpot.models.fixed_point.backbone import Backbone, LocalOutputs, SpeciesBackbone
from mlpot.models.fixed_point.data_hooks import resolve_from_data
from mlpot.models.fixed_point.implicit import GMRESOptions, gmres, implicit_root
from mlpot.models.fixed_point.local_models import (ElectrostaticModel, FixedChargeBaselinedModel, LocalChargesModel,
                                                   LocalSplitChargesModel)
from mlpot.models.fixed_point.model import FixedPointModel
from mlpot.models.fixed_point.options import SCFOptions, TrainingOptions, parse_scf_options, parse_training_options
from mlpot.models.fixed_point.qeq import QEqModel
from mlpot.models.fixed_point.section import MODEL_TYPES, ElectrostaticSection, build_electrostatic_model, check_section

__all__ = [
    "Backbone", "LocalOutputs", "SpeciesBackbone", "resolve_from_data", "GMRESOptions", "gmres", "implicit_root",
    "ElectrostaticModel", "FixedChargeBaselinedModel", "LocalChargesModel", "LocalSplitChargesModel", "FixedPointModel",
    "SCFOptions", "TrainingOptions", "parse_scf_options", "parse_training_options", "QEqModel", "MODEL_TYPES",
    "ElectrostaticSection", "build_electrostatic_model", "check_section",
]
