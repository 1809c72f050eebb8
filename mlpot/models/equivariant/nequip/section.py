"""The ``nequip`` model section: every ``NequIPGNNModel`` hyperparameter with NequIP's name and default.

Spec nequip.md §2.1. Besides the ``NequIPGNNModel`` arguments the section takes the builder-level
keys (``type_names``, ``r_max``, ``seed``, ``model_dtype``, ``compile_mode``), ``preset`` (NequIP's
``PresetNequIPGNNModel``: S/M/L/XL defaults that explicit keys override) and the developer knobs
of ``FullNequIPGNNModel`` that ``NequIPGNNModel`` passes through. ``pair_potential`` is
``{type: zbl, units, chemical_species, polynomial_cutoff_p}`` (NequIP's ``nequip.nn.pair_potential.ZBL``).

Quirks kept [COMPAT]: lists for ``per_type_energy_scales/shifts`` are rejected (float or dict by type
name only); ``type_names`` must be alphanumeric; ``avg_num_neighbors`` is required (NequIP asserts it).
"""

from __future__ import annotations

from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["NequIPModelSection", "ZBLSection", "NEQUIP_PRESETS", "NEQUIP_PRESET_SHARED"]

NEQUIP_PRESET_SHARED = {"parity": False, "type_embed_num_features": 32, "radial_mlp_depth": 1, "radial_mlp_width": 128}
NEQUIP_PRESETS = {
    "S": {"num_layers": 2, "l_max": 1, "num_features": [128, 64]},
    "M": {"num_layers": 4, "l_max": 2, "num_features": [128, 64, 32]},
    "L": {"num_layers": 6, "l_max": 3, "num_features": [128, 64, 32, 32]},
    "XL": {"num_layers": 6, "l_max": 4, "num_features": [320, 96, 64, 32, 32]},
}
_READOUT_NONLINEARITIES = ("silu", "mish", "gelu", "ssp", "tanh", "sigmoid", "softplus", "None", "null")
_CONV_ACTIVATIONS = ("abs", "tanh", "ssp", "silu")

PerType = Union[float, Dict[str, float]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ZBLSection(_Strict):
    """NequIP's ZBL pair potential (spec §2.4)."""

    type: Literal["zbl"] = "zbl"
    units: Literal["metal", "real"] = Field(description="LAMMPS unit style of the data: metal (eV, Å) or real (kcal/mol, Å)")
    chemical_species: List[str] = Field(min_length=1, description="element symbol of each model type, aligned with type_names")
    polynomial_cutoff_p: float = Field(6.0, ge=1, description="order of the envelope at the model cutoff")


class NequIPModelSection(_Strict):
    """A NequIP GNN (``nequip.model.NequIPGNNModel``); distances in Å, energies in the data's unit."""

    type: Literal["nequip"] = "nequip"
    # builder-level keys
    type_names: List[str] = Field(min_length=1, description="atom type names (alphanumeric); ATOM_TYPES index into them")
    r_max: float = Field(gt=0, description="cutoff radius, Å")
    seed: Optional[int] = Field(None, description="seed of the weight initialisation (NequIP requires one)")
    model_dtype: Optional[Literal["float32", "float64"]] = Field(None, description="network precision; default: the builder's dtype")
    compile_mode: Literal["eager"] = "eager"
    preset: Optional[Literal["S", "M", "L", "XL"]] = Field(None, description="PresetNequIPGNNModel size")
    # NequIPGNNModel
    num_layers: int = Field(4, ge=1)
    l_max: int = Field(1, ge=0)
    parity: bool = True
    num_features: Union[int, List[int]] = Field(32, description="multiplicity per l (int: the same for every l)")
    type_embed_num_features: Optional[int] = Field(None, ge=1, description="default: num_features[0]")
    radial_mlp_depth: int = Field(1, ge=0)
    radial_mlp_width: int = Field(128, ge=1)
    readout_mlp_hidden_layers_depth: int = Field(0, ge=0)
    readout_mlp_hidden_layers_width: Optional[int] = Field(None, ge=1, description="default: num_features[0]")
    readout_mlp_nonlinearity: Optional[Literal[_READOUT_NONLINEARITIES]] = "silu"
    num_bessels: int = Field(8, ge=1)
    bessel_trainable: bool = False
    polynomial_cutoff_p: float = Field(6.0, ge=2)
    avg_num_neighbors: Optional[PerType] = Field(None, description="edge-sum normalisation: float or per-type dict")
    per_type_energy_scales: Optional[PerType] = None
    per_type_energy_shifts: Optional[PerType] = None
    per_type_energy_scales_trainable: bool = False
    per_type_energy_shifts_trainable: bool = False
    pair_potential: Optional[ZBLSection] = None
    do_derivatives: bool = Field(True, description="False: energy-only model (callers skip forces/stress)")
    per_edge_type_cutoff: Optional[Dict[str, Union[float, Dict[str, float]]]] = Field(
        None, description="centre type -> cutoff, or centre type -> {neighbour type -> cutoff}; Å, <= r_max")
    categorical_graph_field_embed: Optional[List[dict]] = None
    # FullNequIPGNNModel developer knobs
    convnet_sc: bool = True
    convnet_resnet: bool = False
    learnable_shift: bool = False
    convnet_nonlinearity_type: Literal["gate", "norm"] = "gate"
    convnet_nonlinearity_scalars: Dict[Literal["e", "o"], Literal[_CONV_ACTIVATIONS]] = {"e": "silu", "o": "tanh"}
    convnet_nonlinearity_gates: Dict[Literal["e", "o"], Literal[_CONV_ACTIVATIONS]] = {"e": "silu", "o": "tanh"}

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """Preset defaults (shared, then per size) for keys the section does not set."""
        if isinstance(data, dict) and data.get("preset") is not None:
            preset = str(data["preset"]).upper()
            if preset in NEQUIP_PRESETS:
                data = {**NEQUIP_PRESET_SHARED, **NEQUIP_PRESETS[preset], **data, "preset": preset}
        return data

    @field_validator("type_names")
    @classmethod
    def _alphanumeric(cls, names):
        bad = [n for n in names if not str(n).isalnum()]
        if bad:
            raise ValueError(f"type names must be alphanumeric (NequIP), got {bad}")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate type names in {names}")
        return names

    @field_validator("per_type_energy_scales", "per_type_energy_shifts", "avg_num_neighbors", mode="before")
    @classmethod
    def _no_lists(cls, value):
        if isinstance(value, (list, tuple)):
            raise ValueError("lists are not accepted; give a float or a dict mapping each type name to a value "
                             "(e.g. {O: -93.5, H: -187.1})")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        types = self.type_names
        features = self.feature_multiplicities()
        if len(features) != self.l_max + 1:
            raise ValueError(f"num_features: expected {self.l_max + 1} entries (l = 0..l_max), got {self.num_features}")
        if any(m < 1 for m in features):
            raise ValueError(f"num_features must be positive, got {self.num_features}")
        if self.avg_num_neighbors is None:
            raise ValueError("avg_num_neighbors is required (a float or a dict by type name), e.g. "
                             "the training data's num_neighbors_mean")
        for name in ("avg_num_neighbors", "per_type_energy_scales", "per_type_energy_shifts"):
            value = getattr(self, name)
            if isinstance(value, dict) and set(value) != set(types):
                raise ValueError(f"{name}: keys {sorted(value)} must be the type names {types}")
        if self.per_edge_type_cutoff is not None:
            for centre, entry in self.per_edge_type_cutoff.items():
                values = entry if isinstance(entry, dict) else {"*": entry}
                unknown = [t for t in [centre] + [k for k in values if k != "*"] if t not in types]
                if unknown:
                    raise ValueError(f"per_edge_type_cutoff: unknown type names {unknown}; type_names are {types}")
                if any(not 0 < float(v) <= self.r_max for v in values.values()):
                    raise ValueError(f"per_edge_type_cutoff: cutoffs must lie in (0, r_max = {self.r_max}], got {entry}")
        if self.pair_potential is not None and len(self.pair_potential.chemical_species) != len(types):
            raise ValueError(f"pair_potential.chemical_species needs one symbol per type name {types}")
        if self.learnable_shift and not (self.convnet_sc or self.convnet_resnet):
            raise ValueError("learnable_shift needs convnet_sc or convnet_resnet")
        return self

    def feature_multiplicities(self) -> List[int]:
        """num_features as one multiplicity per l = 0..l_max."""
        if isinstance(self.num_features, int):
            return [self.num_features] * (self.l_max + 1)
        return list(self.num_features)
