"""Typed model sections of the electrostatic family and their builders.

One section class for the fixed-point model and the non-SCF models (``type``: ``fixed_point``
(alias ``FixedPoint``), ``local_charges`` (``LocalCharges``), ``local_split_charges``
(``LocalSplitCharges``), ``fixed_charge_baselined`` (``FixedChargeBaselinedMACE``), ``qeq``
(``MACEQEq``)). Keys carry MACE-SCF's run_train names (spec mace_scf.md §1.4); mlpot additions:
``backbone`` (the backbone's own model section: ``type: species``, a DeePMD ``standard`` section
or ``type: mace`` with mace-torch's options), ``hidden_channels``, ``local_density_channels``,
``kspace_solver``, ``dense_max_atoms``, ``allow_unconverged``, ``scf`` (inference SCF options),
``scf_convergence_summary``, ``update_feature_norms``, ``compat`` (the original's Omega^0.3333 and vacuum permittivity).
Unknown keys raise with the closest valid one; keys the original documents but mlpot does not
build raise "not supported yet".
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Literal, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlpot.electrostatics import PBC_METHODS, CoulombOptions
from mlpot.errors import ConfigError, suggest
from mlpot.models.equivariant.mace import build_mace
from mlpot.models.fixed_point.backbone import Backbone, SpeciesBackbone
from mlpot.models.fixed_point.local_models import FixedChargeBaselinedModel, LocalChargesModel, LocalSplitChargesModel
from mlpot.models.fixed_point.model import FixedPointModel
from mlpot.models.fixed_point.options import parse_scf_options
from mlpot.models.fixed_point.qeq import QEqModel
from mlpot.models.fixed_point.readouts import READOUTS
from mlpot.models.fixed_point.updates import UPDATES

__all__ = ["ElectrostaticSection", "MODEL_TYPES", "check_section", "build_electrostatic_model", "build_backbone"]

MODEL_TYPES = {"fixed_point": ("FixedPoint",), "local_charges": ("LocalCharges",),
               "local_split_charges": ("LocalSplitCharges",), "fixed_charge_baselined": ("FixedChargeBaselinedMACE",),
               "qeq": ("MACEQEq",)}
_CANONICAL = {alias: name for name, aliases in MODEL_TYPES.items() for alias in (name, *aliases)}


class ElectrostaticSection(BaseModel):
    """The model section (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    backbone: Dict[str, Any] = Field(description="the backbone's model section (type species | standard | mace | ...)")
    atomic_multipoles_max_l: Literal[0, 1] = 1
    atomic_multipoles_smearing_width: float = Field(1.5, gt=0, description="sigma, Å")
    electrostatic_pbc_method: str = "auto"
    kspace_cutoff_factor: float = Field(1.25, gt=0)
    kspace_solver: Literal["auto", "ewald", "pme", "cutoff_rule"] = "auto"
    include_electrostatic_self_interaction: bool = True
    quadrupole_feature_corrections: bool = False
    return_electrostatic_potentials: bool = False
    field_feature_max_l: Literal[0, 1] = 1
    field_feature_widths: List[float] = Field(default_factory=lambda: [1.0, 2.0])
    field_feature_norms: Union[None, Literal["average"], List[float]] = None
    include_field_si: bool = False
    field_norm_factor: float = Field(1.0, description="accepted, unused by the one-body update [COMPAT]")
    fermi_level_offset: Optional[float] = Field(None, description="eV; default the mean training Fermi level")
    hidden_channels: int = Field(16, ge=1)
    local_density_channels: int = Field(16, ge=1)
    use_linear_local_charges: bool = False
    atom_density_scaling: Union[None, Literal["average"], Dict[str, float]] = None
    update_feature_norms: Union[None, Literal["average"], List[float]] = Field(
        "average", description="divisors of the mixed features h (l = 0, l = 1) inside the update; 'average': "
                               "from the data, bounded by the SCF gain (statistics.update_feature_norms)")
    fixedpoint_update_config: Dict[str, Any] = Field(default_factory=lambda: {
        "type": "OneBodyVariableUpdate", "potential_embedding_cls": "BiasedLinearPotentialEmbedding",
        "nonlinearity_cls": "NoNonLinearity"})
    field_readout_config: Dict[str, Any] = Field(default_factory=lambda: {"type": "StrictQuadraticFieldEnergyReadout"})
    include_local_electron_energy: bool = True
    scf: Dict[str, Any] = Field(default_factory=dict, description="inference SCF options")
    allow_unconverged: bool = False
    dense_max_atoms: int = Field(400, ge=0)
    scf_convergence_summary: bool = True
    compute_polarizability: bool = False
    compat: bool = Field(False, description="the original's Omega^0.3333 in the molecule-in-box correction")
    constant_charge: bool = Field(True, description="qeq: constant total charge (false: constant Fermi level)")
    fixed_charges: Optional[Dict[str, float]] = Field(None, description="fixed_charge_baselined: charge per element, e")
    type_map: Optional[List[str]] = Field(None, description="must equal the backbone's when given")


def _validate(section: Dict[str, Any]) -> ElectrostaticSection:
    try:
        values = ElectrostaticSection.model_validate(dict(section))
    except ValidationError as exc:
        error = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        key = "model." + ".".join(str(part) for part in error["loc"][:1])
        if error["type"] == "extra_forbidden":
            hint = suggest(str(error["loc"][0]), ElectrostaticSection.model_fields)
            raise ConfigError("unknown key", key=key, hint=f"did you mean {hint!r}?" if hint else None) from None
        if error["type"] == "missing":
            raise ConfigError("missing required key", key=key) from None
        raise ConfigError(f"{error['msg']}, got {error.get('input')!r}", key=key) from None
    if values.type not in _CANONICAL:
        hint = suggest(values.type, list(_CANONICAL))
        raise ConfigError(f"unknown electrostatic model type {values.type!r}", key="model.type",
                          hint=f"did you mean {hint!r}?" if hint else None)
    if values.electrostatic_pbc_method not in PBC_METHODS:
        raise ConfigError(f"expected one of {', '.join(PBC_METHODS)}, got {values.electrostatic_pbc_method!r}",
                          key="model.electrostatic_pbc_method")
    if values.quadrupole_feature_corrections:
        raise ConfigError("not supported yet: model.quadrupole_feature_corrections", key="model.quadrupole_feature_corrections")
    if not values.field_feature_widths or any(w <= 0 for w in values.field_feature_widths):
        raise ConfigError(f"needs positive widths (Å), got {values.field_feature_widths}", key="model.field_feature_widths")
    for name, registry, default in (("fixedpoint_update_config", UPDATES, "OneBodyVariableUpdate"),
                                    ("field_readout_config", READOUTS, "StrictQuadraticFieldEnergyReadout")):
        registry.get(getattr(values, name).get("type", default), key=f"model.{name}.type")
    parse_scf_options(values.scf, "model.scf")
    return values


def check_section(section: Dict[str, Any]) -> None:
    """Validate a section (ConfigError naming the key path); the backbone's section is checked when built."""
    _validate(section)


def build_backbone(section: Dict[str, Any], dtype: torch.dtype, build: Callable[..., Any],
                   type_map: Optional[List[str]] = None) -> Backbone:
    """The backbone of a ``backbone`` section: ``species`` (needs type_map), ``mace`` or any registered type."""
    if not isinstance(section, dict):
        raise ConfigError("expected the backbone's model section (a mapping)", key="model.backbone")
    kind = str(section.get("type", "standard"))
    if kind == "species":
        names = section.get("type_map") or type_map
        if not names:
            raise ConfigError("a species backbone needs a type_map", key="model.backbone.type_map")
        return Backbone(SpeciesBackbone(names, float(section.get("cutoff", 3.0)), dtype, config=section))
    if kind == "mace":
        return Backbone(build_mace(section, dtype))
    return Backbone(build(section, dtype))


def _common(values: ElectrostaticSection, dtype: torch.dtype, config: Dict[str, Any]) -> Dict[str, Any]:
    options = CoulombOptions(kspace_solver=values.kspace_solver, kspace_cutoff_factor=values.kspace_cutoff_factor,
                             compat_cube_root=values.compat)
    local_density = {"mlp_channels": values.local_density_channels, "use_linear_local_charges": values.use_linear_local_charges}
    return dict(atomic_multipoles_max_l=values.atomic_multipoles_max_l,
                atomic_multipoles_smearing_width=values.atomic_multipoles_smearing_width,
                electrostatic_pbc_method=values.electrostatic_pbc_method,
                include_electrostatic_self_interaction=values.include_electrostatic_self_interaction,
                coulomb_options=options, dense_max_atoms=values.dense_max_atoms, hidden_channels=values.hidden_channels,
                local_density=local_density, dtype=dtype, config=config)


def build_electrostatic_model(section: Dict[str, Any], dtype: torch.dtype = torch.float64, *, build: Callable[..., Any]):
    """The model of a section; ``build`` builds the backbone's registered section (the registry's build_model)."""
    values = _validate(section)
    config = dict(section)
    backbone = build_backbone(values.backbone, dtype, build, values.type_map)
    if values.type_map is not None and list(values.type_map) != backbone.type_map:
        raise ConfigError(f"type_map {values.type_map} differs from the backbone's {backbone.type_map}", key="model.type_map")
    common = _common(values, dtype, config)
    kind = _CANONICAL[values.type]
    if kind == "fixed_point":
        model = FixedPointModel(backbone, field_feature_widths=values.field_feature_widths,
                                field_feature_max_l=values.field_feature_max_l, include_field_si=values.include_field_si,
                                update=dict(values.fixedpoint_update_config), readout=dict(values.field_readout_config),
                                include_local_electron_energy=values.include_local_electron_energy,
                                scf=parse_scf_options(values.scf, "model.scf"), allow_unconverged=values.allow_unconverged,
                                **common)
        model.default_outputs = ({"esps"} if values.return_electrostatic_potentials else set()) | \
            ({"polarizability"} if values.compute_polarizability else set())
        return model
    if kind == "qeq":
        return QEqModel(backbone, constant_charge=values.constant_charge, **common)
    if kind == "fixed_charge_baselined":
        return FixedChargeBaselinedModel(backbone, fixed_charges=values.fixed_charges, **common)
    cls = LocalChargesModel if kind == "local_charges" else LocalSplitChargesModel
    return cls(backbone, **common)
