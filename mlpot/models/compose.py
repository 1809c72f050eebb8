"""Composite models: weighted sums of models (``linear_ener``) and frozen (fixed, pre-trained) models.

* ``linear_ener``: ``{"type": "linear_ener", "type_map": [...], "models": [model sections], "weights":
  [w_1, ...] | "mean" | "sum"}``. E_i = sum_k w_k E_i^(k) + b_{t_i} per atom (eV), so forces and
  virials are the same weighted sums; "mean" is w_k = 1/K, "sum" is w_k = 1. A member without
  ``type_map`` inherits the outer one; a member with a different one is an error. The model cutoff
  is the largest member cutoff (each member only uses its own neighbours).
  **One output bias, owned by the combined model** (DeePMD-kit's linear atomic model): the members
  get their input statistics only (env-matrix mean/std, fparam, net centring) and a zero bias of
  their own; the combined bias b is then fitted by least squares to label - (combined prediction
  with b = 0). DeePMD-kit fits b to the raw labels; mlpot subtracts what the members already
  predict, which for trainable members (centred, ~0) is the same and for fixed members (pairtab,
  frozen: a D3 table gives -32 eV per water frame) removes the offset they would start with. Before
  this rule each trainable member fitted its own bias to the full label, so "sum" of two models
  predicted twice the energy.
* ``frozen``: ``{"type": "frozen", "model_file": path}`` loads an mlpot frozen file (format
  ``mlpot-frozen``, written by ``mlpot freeze``): the architecture is rebuilt from its stored
  model section and the stored weights and buffers are loaded; parameters are not trainable and
  statistics are never recomputed. Training checkpoints are not read here (freeze them first).
  ``read_frozen_file`` is the file reader (the calculators layer writes this format).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from mlpot.data.keys import ATOM_ENERGY, ATOM_TYPES, BATCH, CELL, ENERGY
from mlpot.errors import CheckpointError, ConfigError
from mlpot.models.base import AtomisticModel, check_type_map
from mlpot.models.sections import REQUIRED, Key, key, read_section
from mlpot.models.output_bias import OutputBias, fit_composite_bias
from mlpot.nn import scatter_sum

__all__ = ["LinearEnergyModel", "FrozenModel", "read_frozen_file", "build_linear_ener", "build_frozen", "FROZEN_FORMAT"]

FROZEN_FORMAT = "mlpot-frozen"  # the "format" entry of files written by mlpot freeze
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class LinearEnergyModel(AtomisticModel):
    """Weighted sum of energy models plus one per-type bias. Outputs ATOM_ENERGY (n_atoms,) and
    ENERGY (n_frames,) in eV. Buffers: ``bias_atom`` (n_types, 1) eV, ``out_std`` (n_types, 1)."""

    output_keys = (ATOM_ENERGY, ENERGY)

    def __init__(self, type_map: Sequence[str], members: Sequence[AtomisticModel], weights: Sequence[float]):
        super().__init__()
        self.type_map = list(type_map)
        self.members = torch.nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor([float(w) for w in weights], dtype=torch.float64))
        self.register_buffer("bias_atom", torch.zeros(len(self.type_map), 1, dtype=torch.float64))
        self.register_buffer("out_std", torch.ones(len(self.type_map), 1, dtype=torch.float64))
        self.cutoff = max(float(m.cutoff) for m in members)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        atomic = self.bias_atom[batch[ATOM_TYPES], 0]
        for weight, member in zip(self.weights, self.members):  # a loop over (few) models, not atoms
            atomic = atomic + weight * member(batch)[ATOM_ENERGY].to(torch.float64)
        return {ATOM_ENERGY: atomic, ENERGY: scatter_sum(atomic, batch[BATCH], batch[CELL].shape[0])}

    def output_bias(self) -> OutputBias:
        return OutputBias(self.bias_atom, ENERGY, out_std=self.out_std)

    def compute_statistics(self, batches: Iterable[Dict[str, torch.Tensor]], output_bias: bool = True,
                           **kwargs) -> Dict[str, Any]:
        """Input statistics of every member that is not frozen (their own bias zero), then the
        combined bias by least squares on label - prediction (module docstring); without
        ``output_bias`` (this model is itself a member) the combined bias stays zero."""
        batches = list(batches)
        summary: Dict[str, Any] = {f"models/{k}": m.compute_statistics(batches, output_bias=False, **kwargs)
                                   for k, m in enumerate(self.members) if not isinstance(m, FrozenModel)}
        summary.update(fit_composite_bias(self, batches, output_bias))
        return summary


def _weights(value: Any, n_models: int) -> List[float]:
    if value == "mean":
        return [1.0 / n_models] * n_models
    if value == "sum":
        return [1.0] * n_models
    if isinstance(value, (list, tuple)) and len(value) == n_models and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in value):
        return [float(w) for w in value]
    raise ConfigError(f"expected 'mean', 'sum' or a list of {n_models} numbers, got {value!r}", key="model/weights")


LINEAR_KEYS: Dict[str, Key] = {
    "type": key(REQUIRED, annotation=str),
    "type_map": key(None, note="members without one inherit it", annotation=Optional[List[str]]),
    "models": key(REQUIRED, note="list of model sections", annotation=list),
    "weights": key(REQUIRED, note='a list of floats, "mean" or "sum"', annotation=Any),
}
FROZEN_KEYS: Dict[str, Key] = {
    "type": key(REQUIRED, annotation=str),
    "model_file": key(REQUIRED, note="a file written by mlpot freeze", annotation=str),
    "type_map": key(None, annotation=Optional[List[str]]),
}


def build_linear_ener(config: Dict[str, Any], dtype: torch.dtype, build: Callable[..., AtomisticModel]) -> LinearEnergyModel:
    """A LinearEnergyModel; ``build(section, dtype)`` builds each member (the registry's build_model)."""
    values = read_section(config, "model", LINEAR_KEYS, "LinearEnergySection")
    sections = values["models"]
    if not isinstance(sections, list) or not sections or not all(isinstance(s, dict) for s in sections):
        raise ConfigError("expected a non-empty list of model sections", key="model/models")
    members = []
    type_map = values["type_map"] or sections[0].get("type_map")
    for index, section in enumerate(sections):
        section = copy.deepcopy(section)
        if section.get("type") != "frozen":
            section.setdefault("type_map", type_map)
        try:
            member = build(section, dtype)
        except ConfigError as error:
            raise ConfigError(str(error), key=f"model/models/{index}") from error
        if type_map is not None and list(member.type_map) != list(type_map):
            raise ConfigError(f"type_map {member.type_map} differs from the linear model's {list(type_map)}", key=f"model/models/{index}")
        type_map = member.type_map
        members.append(member)
    return LinearEnergyModel(check_type_map(type_map), members, _weights(values["weights"], len(members)))


class FrozenModel(AtomisticModel):
    """A loaded model with fixed weights: forward delegates, statistics are kept, nothing is trainable."""

    def __init__(self, model: AtomisticModel, model_file: str):
        super().__init__()
        self.model = model
        self.model_file = str(model_file)
        self.type_map, self.cutoff = model.type_map, model.cutoff
        self.output_keys = model.output_keys
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.model(batch)

    def compute_statistics(self, batches, **kwargs) -> Dict[str, Any]:
        return {}


def read_frozen_file(path) -> Dict[str, Any]:
    """The content of an mlpot frozen file (plain tensors, loaded with ``weights_only``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such file", file=str(path), key="model/model_file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign, truncated or pickled-object file
        raise CheckpointError(f"not an mlpot frozen model ({type(error).__name__}); freeze checkpoints with `mlpot freeze`",
                              file=str(path), key="model/model_file") from None
    if not isinstance(payload, dict) or payload.get("format") != FROZEN_FORMAT:
        raise CheckpointError(f"not an mlpot frozen model (format {FROZEN_FORMAT!r} expected)", file=str(path), key="model/model_file")
    return payload


def build_frozen(config: Dict[str, Any], dtype: torch.dtype, build: Callable[..., AtomisticModel]) -> FrozenModel:
    """A FrozenModel of an mlpot frozen file; ``build(section, dtype)`` rebuilds the stored architecture."""

    values = read_section(config, "model", FROZEN_KEYS, "FrozenSection")
    payload = read_frozen_file(values["model_file"])
    model = build(payload["model_config"], _DTYPES.get(payload.get("dtype"), dtype))
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit the stored model (missing {missing}, unexpected {unexpected})",
                              file=str(values["model_file"]), key="model/model_file")
    if values["type_map"] is not None and list(values["type_map"]) != list(model.type_map):
        raise ConfigError(f"differs from the frozen model's type_map {model.type_map}", key="model/type_map")
    return FrozenModel(model.eval(), values["model_file"])
