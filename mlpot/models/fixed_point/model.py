"""The fixed-point (self-consistent) electrostatic model on any backbone (spec mace_scf.md §2-3).

forward(batch):
1. local state (``LocalState``): backbone energy and features (one evaluation), mixed features
   h = Lin(features) (C x (0e + 1o)), local density p0, applied-field features, the field
   operator of the geometry, edges (many-body blocks);
2. the density of the current mode (``modes.py``: direct, unroll_scf, implicit, linearize_solve;
   ``scf`` for inference), constant Fermi level or constant total charge;
3. observables (``observables.py``): ENERGY, ATOM_ENERGY, ATOMIC_MULTIPOLES, CHARGES, DIPOLE,
   TOTAL_CHARGE, FERMI_LEVEL, ELECTROSTATIC_ENERGY, SCF_CONVERGED, SCF_STEPS, and on request
   ESPS, FIELD_FEATURES, SCF_STABILITY, POLARIZABILITY (-d dipole / d F, e·Å²/V).

Forces and stress come from ``models/derivatives.py`` through whatever graph the mode keeps
(the implicit derivatives include positions and cell, so periodic models have a stress).
The engine sets the mode per stage (``set_options``, the stage's ``model_options``) and the
extra outputs from the loss labels (``request_outputs``); SCF convergence is counted per batch
and reported per epoch (``epoch_report``) and after training (``after_training``).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import torch

from mlpot.data import keys as K
from mlpot.electrostatics import CoulombOptions, FieldOperator, batch_method, external_field_features
from mlpot.models.base import AtomisticModel
from mlpot.models.fixed_point.backbone import Backbone
from mlpot.models.fixed_point.channels import IrrepsProjection, features_to_channels, joint_projection
from mlpot.models.fixed_point.message import edge_geometry
from mlpot.models.fixed_point.modes import run_mode
from mlpot.models.fixed_point.observables import build_observables
from mlpot.models.fixed_point.options import SCFOptions, TrainingOptions, parse_training_options
from mlpot.models.fixed_point.problem import LocalState, SCFProblem
from mlpot.models.fixed_point.readouts import READOUTS, LocalDensityReadout, pad_channels
from mlpot.models.fixed_point.statistics import SCFCounter, fixed_point_statistics, scf_convergence_summary
from mlpot.models.fixed_point.updates import UPDATES

__all__ = ["FixedPointModel"]

_EXTRA = (K.ESPS, K.REFERENCE_ESPS, K.FIELD_FEATURES, K.REFERENCE_FIELD_FEATURES, K.SCF_STABILITY, K.POLARIZABILITY)


class FixedPointModel(AtomisticModel):
    """Fixed-point electrostatics on ``backbone`` (module docstring). Keyword arguments carry
    the section's names (``models/fixed_point/section.py``); ``scf`` holds the inference options."""

    output_keys = (K.ENERGY, K.ATOM_ENERGY, K.ATOMIC_MULTIPOLES, K.CHARGES, K.DIPOLE, K.TOTAL_CHARGE, K.FERMI_LEVEL)

    def __init__(self, backbone: Backbone, *, atomic_multipoles_max_l: int = 1,
                 atomic_multipoles_smearing_width: float = 1.5, electrostatic_pbc_method: str = "auto",
                 include_electrostatic_self_interaction: bool = True, field_feature_widths: Sequence[float] = (1.0, 2.0),
                 field_feature_max_l: int = 1, include_field_si: bool = False, hidden_channels: int = 16,
                 local_density: Optional[Dict[str, Any]] = None, update: Optional[Dict[str, Any]] = None,
                 readout: Optional[Dict[str, Any]] = None, include_local_electron_energy: bool = True,
                 coulomb_options: CoulombOptions = CoulombOptions(), dense_max_atoms: int = 400,
                 scf: SCFOptions = SCFOptions(), allow_unconverged: bool = False, dtype: torch.dtype = torch.float64,
                 config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.backbone = backbone
        self.type_map, self.cutoff, self.config = list(backbone.type_map), float(backbone.cutoff), dict(config or {})
        n_species = len(self.type_map)
        self.density_max_l, self.sigma = int(atomic_multipoles_max_l), float(atomic_multipoles_smearing_width)
        self.method, self.include_self_interaction = electrostatic_pbc_method, bool(include_electrostatic_self_interaction)
        self.widths, self.field_max_l = [float(w) for w in field_feature_widths], int(field_feature_max_l)
        self.include_field_si, self.coulomb_options = bool(include_field_si), coulomb_options
        self.dense_max_atoms, self.allow_unconverged = int(dense_max_atoms), bool(allow_unconverged)
        n_features = len(self.widths) * (self.field_max_l + 1) ** 2
        self.register_buffer("field_feature_norms", torch.ones(n_features, dtype=dtype))
        self.register_buffer("fermi_level_offset", torch.zeros((), dtype=dtype))
        self.mixer = IrrepsProjection(backbone.node_irreps, hidden_channels, 1, bias=True, dtype=dtype)
        self.local_density = LocalDensityReadout(backbone.node_irreps, self.density_max_l, n_species, dtype=dtype,
                                                 **(local_density or {}))
        update = dict(update or {"type": "OneBodyVariableUpdate"})
        self.update = UPDATES.get(update.pop("type", "OneBodyVariableUpdate"), key="fixedpoint_update_config.type")(
            len(self.widths), hidden_channels, n_species, self.density_max_l, dtype=dtype, **update)
        readout = dict(readout or {"type": "StrictQuadraticFieldEnergyReadout"})
        self.readout = READOUTS.get(readout.pop("type", "StrictQuadraticFieldEnergyReadout"),
                                    key="field_readout_config.type")(hidden_channels, len(self.widths), dtype=dtype, **readout)
        self.include_local_electron_energy = bool(include_local_electron_energy)
        self.many_body = bool(getattr(self.update, "many_body", False)) or hasattr(self.readout, "convolution")
        self.inference = TrainingOptions("scf", scf)
        self.options = self.inference
        self.wanted: tuple = ()
        self.default_outputs: set = set()  # computed in evaluation (return_electrostatic_potentials, compute_polarizability)
        self.counter = SCFCounter()

    # ---- engine hooks ----------------------------------------------------------------------
    def set_options(self, fixed_point_training_options: Optional[Dict[str, Any]] = None, **options) -> None:
        """Stage options: ``fixed_point_training_options`` (or its keys directly); None resets to inference."""
        values = fixed_point_training_options if fixed_point_training_options is not None else options
        self.options = parse_training_options(values, base_scf=self.inference.scf) if values else self.inference

    def request_outputs(self, labels: Iterable[str]) -> None:
        """Compute the optional outputs among ``labels`` (the loss terms' keys) from now on."""
        wanted = set(labels)
        if K.ESPS in wanted:
            wanted.add(K.REFERENCE_ESPS)
        if K.FIELD_FEATURES in wanted:
            wanted.add(K.REFERENCE_FIELD_FEATURES)
        self.wanted = tuple(key for key in _EXTRA if key in wanted)

    def epoch_report(self) -> Optional[str]:
        """SCF convergence of the batches since the last report (train and validation), then reset."""
        return self.counter.report_and_reset()

    def after_training(self, batches: Iterable[Dict[str, torch.Tensor]]) -> Optional[str]:
        """MACE-SCF's post-training SCF convergence summary table on ``batches``."""
        if not self.config.get("scf_convergence_summary", True):
            return None
        return scf_convergence_summary(self, batches)

    def compute_statistics(self, batches: Iterable[Dict[str, torch.Tensor]], **kwargs) -> Dict[str, Any]:
        return fixed_point_statistics(self, list(batches))

    def output_bias(self):
        return self.backbone.output_bias()

    @property
    def input_keys(self):
        return tuple(key for key in self.backbone.model.input_keys)

    # ---- evaluation ------------------------------------------------------------------------
    def receivers(self, esps: bool):
        out = [(w, self.include_field_si) for w in self.widths] + [(self.sigma, self.include_self_interaction)]
        return out + [(0.0, True)] if esps else out

    def local_state(self, batch: Dict[str, torch.Tensor]) -> LocalState:
        """Field-independent state of ``batch`` (module docstring, step 1)."""
        local = self.backbone.local_outputs(batch)
        species, frames = batch[K.ATOM_TYPES], batch[K.BATCH]
        n_atoms = batch[K.N_ATOMS].to(local.atom_energy.dtype)
        # the mixer and the local density's projection: one product per block of the backbone features
        hidden, projected = joint_projection(local.features, [self.mixer, self.local_density.project])
        density0 = self.local_density.from_projection(projected, species)
        positions = batch[K.POSITIONS]
        if K.EXTERNAL_FIELD in batch:
            field = batch[K.EXTERNAL_FIELD].to(positions.dtype).index_select(0, frames)
            flat = external_field_features(positions, field, self.widths, self.field_max_l) / self.field_feature_norms
            external = pad_channels(features_to_channels(flat, len(self.widths), self.field_max_l))
        else:
            external = positions.new_zeros(positions.shape[0], len(self.widths), 4)
        esps = bool({K.ESPS, K.REFERENCE_ESPS} & (set(self.wanted) | (set() if self.training else self.default_outputs)))
        # the SCF applies the feature receivers at every step (padded blocks), the energy's and ESPs' once (pair sums)
        operator = FieldOperator(batch, batch_method(self.method, batch[K.PBC]), self.sigma, self.receivers(esps),
                                 self.coulomb_options, self.dense_max_atoms, block_receivers=len(self.widths))
        edges = edge_geometry(batch, self.cutoff, dtype=positions.dtype) if self.many_body else None
        return LocalState(local.atom_energy.to(positions.dtype), hidden, density0, external, species,
                          frames, n_atoms, operator, edges, _reference(batch, density0), _fermi_reference(batch),
                          batch.get(K.TOTAL_CHARGE, n_atoms.new_zeros(n_atoms.shape)).to(positions.dtype))

    def problem(self, state: LocalState, constant_charge: bool) -> SCFProblem:
        return SCFProblem(self.update, state, self.widths, self.field_max_l, self.field_feature_norms,
                          float(self.fermi_level_offset), constant_charge)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        batch = dict(batch)
        wanted = set(self.wanted) | (set() if self.training else self.default_outputs)
        polarizability = K.POLARIZABILITY in wanted
        if polarizability:
            batch[K.EXTERNAL_FIELD] = _field_leaf(batch)
        state = self.local_state(batch)
        problem = self.problem(state, self.options.scf.constant_charge)
        result = run_mode(problem, self.options, training=self.options.mode != "scf",
                          allow_unconverged=self.allow_unconverged, initial_density=_initial_density(batch, problem),
                          initial_fermi=batch.get(K.INITIAL_FERMI_LEVEL), log=self.diagnostics)
        readout = self.readout if self.include_local_electron_energy else None
        out = build_observables(batch, problem, readout, result.density, result.fermi_level, result.features, wanted)
        if result.scf is not None:
            self.counter.add(result.scf, self.training, result.fallback)
            out[K.SCF_CONVERGED] = result.scf.converged.to(out[K.ENERGY].dtype)
            out[K.SCF_STEPS] = result.scf.steps
        if K.SCF_STABILITY in wanted:
            out[K.SCF_STABILITY] = _stability(problem, result)
        if polarizability:
            out[K.POLARIZABILITY] = _polarizability(out[K.DIPOLE], batch[K.EXTERNAL_FIELD], self.training)
        return out


def _reference(batch, density0: torch.Tensor) -> Optional[torch.Tensor]:
    """The data's multipoles, truncated to (L+1)^2 columns; the local density where a frame has none."""
    if K.ATOMIC_MULTIPOLES not in batch:
        return None
    reference = batch[K.ATOMIC_MULTIPOLES][:, : density0.shape[1]].to(density0.dtype)
    weight = batch.get(K.weight_key(K.ATOMIC_MULTIPOLES))
    if weight is None:
        return reference
    present = (weight.reshape(weight.shape[0], -1).amax(1) > 0).index_select(0, batch[K.BATCH])
    return torch.where(present[:, None], reference, density0)


def _fermi_reference(batch) -> Optional[torch.Tensor]:
    if K.FERMI_LEVEL not in batch:
        return None
    return batch[K.FERMI_LEVEL].to(batch[K.POSITIONS].dtype)


def _initial_density(batch, problem: SCFProblem) -> Optional[torch.Tensor]:
    if K.INITIAL_MULTIPOLES not in batch:
        return None
    return batch[K.INITIAL_MULTIPOLES][:, : problem.n_coefficients].to(problem.state.density0.dtype)


def _field_leaf(batch) -> torch.Tensor:
    field = batch.get(K.EXTERNAL_FIELD)
    if field is None:
        field = batch[K.CELL].new_zeros(batch[K.CELL].shape[0], 3)
    return field.to(batch[K.POSITIONS].dtype).detach().requires_grad_(True)


def _polarizability(dipole: torch.Tensor, field: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """alpha_ab = -d mu_a / d F_b (n_frames, 3, 3) e·Å²/V (F: gradient of the applied potential)."""
    rows = [torch.autograd.grad(dipole[:, a].sum(), field, create_graph=create_graph, retain_graph=True)[0]
            for a in range(3)]
    return -torch.stack(rows, dim=1)


def _stability(problem: SCFProblem, result) -> torch.Tensor:
    """|G(p + d) - G(p)|^2 / |d|^2 per frame for a random d of norm 1e-3 per atom (n_frames,)."""
    state = problem.state
    direction = torch.randn_like(result.density)
    direction = 1e-3 * direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mu = state.atoms(result.fermi_level)
    base, _ = problem.apply(result.density, mu)
    perturbed, _ = problem.apply(result.density + direction, mu)
    return state.frame_sum((perturbed - base).pow(2).sum(1)) / state.frame_sum(direction.pow(2).sum(1))
