"""The MACE model section and its builder.

``MACEModelSection`` holds mace-torch's model options under their ``mace_run_train`` names and
defaults (``r_max``, ``num_radial_basis``, ``num_cutoff_basis``, ``hidden_irreps`` or
``num_channels`` + ``max_L``, ``interaction``/``interaction_first``, ``MLP_irreps``,
``radial_MLP``, ``correlation``, ``gate``, ``avg_num_neighbors``, ``E0s``, ...), plus:

* ``model``: the mace-torch class, ``MACE`` (energies of the layers summed) or ``ScaleShiftMACE``
  (``atomic_inter_scale``/``atomic_inter_shift`` applied per atom). ``mace_run_train --model MACE``
  builds a ``ScaleShiftMACE`` with shift 0 and a non-residual first interaction: a front-end
  translates it (``files.section_from_run_train_options``);
* ``atomic_numbers``: the element table (sorted atomic numbers; the model's ``type_map`` are their
  symbols and ATOM_TYPES index it); ``E0s``: isolated-atom energies in eV, a mapping {Z or symbol:
  energy} or a list in ``atomic_numbers`` order;
* values computed from the training data by the family's data hook (``hooks.resolve_from_data``,
  run by ``mlpot train``) before the model is built: ``atomic_numbers`` when absent, ``E0s``
  "average" / "estimated" / "foundation" / a ``.json`` file, ``avg_num_neighbors`` when absent,
  and with ``scaling`` (std_scaling, rms_forces_scaling, no_scaling) the ``atomic_inter_scale``
  and ``atomic_inter_shift`` that are absent. The builder itself needs numbers.

Options mace-torch documents but mlpot does not build (``use_so3``, ``use_reduced_cg`` for a new
model, ``edge_irreps``, embeddings, other interaction classes) raise "not supported yet".
"""

from __future__ import annotations

import ast
from typing import Any, Dict, List, Literal, Optional, Union

import torch
from e3nn import o3
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlpot.errors import ConfigError, suggest
from mlpot.models.equivariant.mace.interaction import INTERACTIONS
from mlpot.models.equivariant.mace.model import MACE, ScaleShiftMACE

__all__ = ["MACEModelSection", "build_mace", "check_mace_section", "resolve_hidden_irreps", "E0S_FROM_DATA",
           "element_energies"]

MACE_INTERACTIONS = tuple(INTERACTIONS) + ("RealAgnosticAttResidualInteractionBlock",
                                           "RealAgnosticResidualNonLinearInteractionBlock")


class MACEModelSection(BaseModel):
    """mace-torch model options (module docstring); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: Literal["mace"] = "mace"
    model: Literal["MACE", "ScaleShiftMACE"] = Field("MACE", description="mace-torch model class")
    r_max: float = Field(5.0, gt=0, description="cutoff, Å")
    radial_type: Literal["bessel", "gaussian", "chebyshev"] = "bessel"
    num_radial_basis: int = Field(8, ge=1)
    num_cutoff_basis: int = Field(5, ge=1, description="order p of the polynomial cutoff")
    pair_repulsion: bool = False
    distance_transform: Literal["None", "Agnesi", "Soft"] = "None"
    apply_cutoff: bool = True
    use_last_readout_only: bool = False
    use_embedding_readout: bool = False
    interaction: str = "RealAgnosticResidualInteractionBlock"
    interaction_first: str = "RealAgnosticResidualInteractionBlock"
    max_ell: int = Field(3, ge=0)
    correlation: Union[int, List[int]] = 3
    use_reduced_cg: bool = False
    use_so3: bool = False
    use_agnostic_product: bool = False
    num_interactions: int = Field(2, ge=1)
    MLP_irreps: str = "16x0e"
    radial_MLP: Union[str, List[int]] = "[64, 64, 64]"
    hidden_irreps: Optional[str] = None
    edge_irreps: Optional[str] = None
    use_edge_irreps_first: bool = False
    num_channels: Optional[int] = Field(None, ge=1)
    max_L: Optional[int] = Field(None, ge=0)
    gate: Literal["silu", "tanh", "abs", "None"] = "silu"
    avg_num_neighbors: float = Field(1.0, gt=0)
    atomic_numbers: Optional[List[int]] = None
    E0s: Union[Dict[Union[int, str], float], List[float], str, None] = None
    scaling: Optional[Literal["std_scaling", "rms_forces_scaling", "no_scaling"]] = Field(
        None, description="scale/shift from the training data (resolved before building; None: as given)")
    atomic_inter_scale: float = 1.0
    atomic_inter_shift: float = 0.0
    keep_last_layer_irreps: bool = False


def resolve_hidden_irreps(section: MACEModelSection) -> str:
    """``hidden_irreps`` as mace-torch's argument check resolves it from hidden_irreps / num_channels / max_L."""
    if section.num_channels is None and section.max_L is None:
        return section.hidden_irreps or "128x0e + 128x1o"
    if section.hidden_irreps is not None and (section.num_channels is None or section.max_L is None):
        return section.hidden_irreps
    channels = 128 if section.num_channels is None else section.num_channels
    max_l = 1 if section.max_L is None else section.max_L
    return str((channels * o3.Irreps.spherical_harmonics(max_l)).sort().irreps.simplify())


def _unsupported(key: str, value: Any) -> ConfigError:
    return ConfigError(f"not supported yet: model.{key} = {value!r}", key=f"model.{key}")


def _check_supported(section: MACEModelSection) -> None:
    flags = {"use_so3": section.use_so3, "use_reduced_cg": section.use_reduced_cg,
             "use_embedding_readout": section.use_embedding_readout, "use_edge_irreps_first": section.use_edge_irreps_first}
    for key, value in flags.items():
        if value:
            raise _unsupported(key, value)
    if section.edge_irreps is not None:
        raise _unsupported("edge_irreps", section.edge_irreps)
    for key in ("interaction", "interaction_first"):
        name = getattr(section, key)
        if name not in MACE_INTERACTIONS:
            hint = suggest(name, MACE_INTERACTIONS)
            raise ConfigError(f"unknown interaction block {name!r}", key=f"model.{key}",
                              hint=f"did you mean {hint!r}?" if hint else None)
        if name not in INTERACTIONS:
            raise _unsupported(key, name)
    if section.model == "MACE" and (section.atomic_inter_scale != 1.0 or section.atomic_inter_shift != 0.0):
        raise ConfigError("atomic_inter_scale/atomic_inter_shift need model: ScaleShiftMACE", key="model.model")


def element_energies(section, numbers: List[int]) -> List[float]:
    """E0s of a section (or its dict) as a list in ``numbers`` order (eV)."""
    from ase.data import atomic_numbers as by_symbol

    e0s = _validate(section).E0s
    if e0s is None:
        raise ConfigError("needs the isolated-atom energies of every element (a mapping {Z: eV} or a list)",
                          key="model.E0s")
    if isinstance(e0s, str):
        raise ConfigError(f"E0s {e0s!r} is computed from the training data: mlpot train resolves it before the model "
                          "is built; give the energies to build a model without data", key="model.E0s")
    if isinstance(e0s, list):
        if len(e0s) != len(numbers):
            raise ConfigError(f"expected {len(numbers)} energies (one per element of {numbers}), got {len(e0s)}",
                              key="model.E0s")
        return [float(e) for e in e0s]
    table = {}
    for key, energy in e0s.items():
        z = int(key) if str(key).isdigit() else by_symbol.get(str(key))
        if z is None:
            raise ConfigError(f"unknown element {key!r}", key="model.E0s")
        table[z] = float(energy)
    missing = [z for z in numbers if z not in table]
    if missing:
        raise ConfigError(f"no energy for atomic numbers {missing}", key="model.E0s")
    return [table[z] for z in numbers]


def _validate(section_or_dict) -> MACEModelSection:
    if isinstance(section_or_dict, MACEModelSection):
        return section_or_dict
    try:
        return MACEModelSection.model_validate(dict(section_or_dict))
    except ValidationError as exc:
        error = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        key = "model." + ".".join(str(part) for part in error["loc"][:1])
        if error["type"] == "extra_forbidden":
            hint = suggest(str(error["loc"][0]), MACEModelSection.model_fields)
            raise ConfigError("unknown key", key=key, hint=f"did you mean {hint!r}?" if hint else None) from None
        raise ConfigError(f"{error['msg']}, got {error.get('input')!r}", key=key) from None


E0S_FROM_DATA = ("average", "estimated", "foundation")


def check_mace_section(section_or_dict) -> MACEModelSection:
    """The typed section (ConfigError at the key path, "did you mean" for unknown keys, "not supported
    yet" for options not built); E0s strings are one of :data:`E0S_FROM_DATA` or a ``.json`` file."""
    section = _validate(section_or_dict)
    _check_supported(section)
    if isinstance(section.E0s, str) and section.E0s not in E0S_FROM_DATA and not section.E0s.endswith(".json"):
        hint = suggest(section.E0s, E0S_FROM_DATA)
        raise ConfigError(f"expected {', '.join(E0S_FROM_DATA)}, a .json file, a mapping or a list, got {section.E0s!r}",
                          key="model.E0s", hint=f"did you mean {hint!r}?" if hint else None)
    if section.scaling is not None and section.model != "ScaleShiftMACE":
        raise ConfigError(f"scaling {section.scaling!r} needs model: ScaleShiftMACE (mace_run_train --model MACE "
                          "trains one with a zero shift)", key="model.scaling")
    return section


def build_mace(section_or_dict, dtype: torch.dtype = torch.float64) -> MACE:
    """A ``MACE`` or ``ScaleShiftMACE`` from a section (or its dict) in precision ``dtype``."""
    section = check_mace_section(section_or_dict)
    if not section.atomic_numbers:
        raise ConfigError("needs the element table (list of atomic numbers)", key="model.atomic_numbers")
    numbers = sorted(int(z) for z in section.atomic_numbers)
    hidden = resolve_hidden_irreps(section)
    radial_mlp = section.radial_MLP
    if isinstance(radial_mlp, str):
        try:
            radial_mlp = [int(width) for width in ast.literal_eval(radial_mlp)]
        except (ValueError, SyntaxError, TypeError):
            raise ConfigError(f"expected a list of widths such as '[64, 64, 64]', got {radial_mlp!r}",
                              key="model.radial_MLP") from None
    correlation = section.correlation
    if isinstance(correlation, list) and len(correlation) != section.num_interactions:
        raise ConfigError(f"expected {section.num_interactions} values (one per interaction), got {correlation}",
                          key="model.correlation")
    kwargs = dict(r_max=section.r_max, num_bessel=section.num_radial_basis, num_polynomial_cutoff=section.num_cutoff_basis,
                  max_ell=section.max_ell, interaction_cls=section.interaction, interaction_cls_first=section.interaction_first,
                  num_interactions=section.num_interactions, atomic_numbers=numbers, hidden_irreps=hidden,
                  MLP_irreps=section.MLP_irreps, atomic_energies=element_energies(section, numbers),
                  avg_num_neighbors=section.avg_num_neighbors, correlation=correlation,
                  gate=section.gate, pair_repulsion=section.pair_repulsion, apply_cutoff=section.apply_cutoff,
                  use_agnostic_product=section.use_agnostic_product, use_last_readout_only=section.use_last_readout_only,
                  distance_transform=section.distance_transform, radial_MLP=radial_mlp, radial_type=section.radial_type,
                  keep_last_layer_irreps=section.keep_last_layer_irreps, dtype=dtype,
                  config=section.model_dump())
    try:
        if section.model == "ScaleShiftMACE":
            return ScaleShiftMACE(atomic_inter_scale=section.atomic_inter_scale,
                                  atomic_inter_shift=section.atomic_inter_shift, **kwargs)
        return MACE(**kwargs)
    except ValueError as exc:  # irreps that the architecture cannot use (non-uniform channels, ...)
        raise ConfigError(str(exc), key="model") from None
