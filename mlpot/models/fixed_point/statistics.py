"""Data statistics of the fixed-point model and its SCF convergence bookkeeping.

* :func:`fixed_point_statistics` (the model's ``compute_statistics``): the backbone's own
  statistics, ``fermi_level_offset`` (mean training Fermi level unless given), the
  ``field_feature_norms`` ("average": RMS of the reference features, spec §2.4), the
  ``atom_density_scaling`` ("average": per-element RMS of the reference multipoles) and the
  neighbour-count normalisation of many-body blocks; and (``update_feature_norms``, default
  "average") the divisors of the mixed features h inside the update (:func:`update_feature_norms`).
* :class:`SCFCounter`: converged / diverged / other frames and steps of every SCF solve, split
  into training and validation batches; the trainer prints one line per epoch.
* :func:`scf_convergence_summary`: MACE-SCF's post-training table (100 steps, tolerance 1e-7,
  local-guess density, data Fermi level, mixing 0.2, or m and 2m when the last stage mixed with
  m < 0.2; constant Fermi level and constant charge): converged / other / diverged %, median
  and 95th-percentile steps.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

from mlpot.data import keys as K
from mlpot.electrostatics import FrameWiseElectrostatics, expand_feature_norms
from mlpot.errors import ConfigError

__all__ = ["SCFCounter", "fixed_point_statistics", "scf_convergence_summary", "density_scaling_average",
           "update_feature_norms"]

RESPONSE_BOUND = 0.5  # largest |eigenvalue| of the SCF Jacobian dG/dp that the initial h normalisation allows
_POWER_ITERATIONS = 30


class SCFCounter:
    """Per-frame SCF outcomes since the last report, for training and validation batches."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.records: Dict[str, Dict[str, Any]] = {
            split: {"frames": 0, "converged": 0, "diverged": 0, "fallbacks": 0, "steps": []} for split in ("train", "valid")}

    def add(self, result, training: bool, fallback: bool) -> None:
        record = self.records["train" if training else "valid"]
        record["frames"] += int(result.converged.numel())
        record["converged"] += int(result.converged.sum())
        record["diverged"] += int(result.diverged.sum())
        record["fallbacks"] += int(fallback)
        record["steps"] += [int(s) for s in result.steps[result.converged]]

    def report_and_reset(self) -> str | None:
        parts = []
        for split, r in self.records.items():
            if not r["frames"]:
                continue
            steps = sorted(r["steps"])
            median = steps[len(steps) // 2] if steps else math.nan
            other = r["frames"] - r["converged"] - r["diverged"]
            parts.append(f"{split}: {r['frames']} frames, converged {r['converged']} ({100 * r['converged'] / r['frames']:.1f} %), "
                         f"diverged {r['diverged']}, not converged {other}, median steps {median}, "
                         f"unroll fallbacks {r['fallbacks']}")
        self.reset()
        return ("SCF " + "; ".join(parts)) if parts else None


def density_scaling_average(batches: List[dict], n_types: int, n_coefficients: int) -> torch.Tensor:
    """Per-type RMS of the reference multipoles (first (L+1)^2 columns) over frames that have them (n_types,)."""
    sums = torch.zeros(n_types, dtype=torch.float64)
    counts = torch.zeros(n_types, dtype=torch.float64)
    for batch in batches:
        if K.ATOMIC_MULTIPOLES not in batch:
            continue
        weight = batch[K.weight_key(K.ATOMIC_MULTIPOLES)].reshape(batch[K.CELL].shape[0], -1).amax(1) > 0
        present = weight.index_select(0, batch[K.BATCH])
        values = batch[K.ATOMIC_MULTIPOLES][:, :n_coefficients].double()[present]
        types = batch[K.ATOM_TYPES][present]
        sums.index_add_(0, types, values.pow(2).mean(1))
        counts.index_add_(0, types, torch.ones_like(types, dtype=torch.float64))
    if not bool((counts > 0).any()):
        raise ConfigError("'average' needs training frames with atomic multipoles", key="model.atom_density_scaling")
    return torch.where(counts > 0, (sums / counts.clamp_min(1)).sqrt(), torch.ones_like(sums)).clamp_min(1e-8)


def _fermi_offset(config: dict, batches: List[dict]) -> float:
    given = config.get("fermi_level_offset")
    if given is not None:
        return float(given)
    values = []
    for batch in batches:
        if K.FERMI_LEVEL in batch:
            present = batch[K.weight_key(K.FERMI_LEVEL)] > 0
            values += batch[K.FERMI_LEVEL][present].tolist()
    if not values:
        raise ConfigError("no training frame has a Fermi level: give fermi_level_offset (eV)",
                          key="model.fermi_level_offset")
    return sum(values) / len(values)


def fixed_point_statistics(model, batches: List[dict]) -> Dict[str, Any]:
    """Set the data-dependent buffers of a FixedPointModel (module docstring); returns a summary."""
    config = model.config
    summary: Dict[str, Any] = {"backbone": model.backbone.compute_statistics(batches)}
    offset = _fermi_offset(config, batches)
    model.fermi_level_offset.fill_(offset)
    norms = config.get("field_feature_norms")
    if isinstance(norms, str) and norms == "average":
        electrostatics = FrameWiseElectrostatics(model.sigma, model.method, model.include_self_interaction, model.widths,
                                                 model.field_max_l, model.include_field_si, offset,
                                                 options=model.coulomb_options)
        norms = electrostatics.estimate_average_norms(batches)
    if norms is not None:
        expanded = expand_feature_norms(norms, len(model.widths), model.field_max_l)
        model.field_feature_norms.copy_(torch.tensor(expanded, dtype=model.field_feature_norms.dtype))
    scaling = config.get("atom_density_scaling")
    if scaling == "average":
        model.local_density.density_scaling.copy_(density_scaling_average(batches, len(model.type_map), (model.density_max_l + 1) ** 2))
    elif isinstance(scaling, dict):
        values = [float(scaling.get(name, 1.0)) for name in model.type_map]
        model.local_density.density_scaling.copy_(torch.tensor(values, dtype=model.local_density.density_scaling.dtype))
    hidden_norms = config.get("update_feature_norms", "average")
    if hidden_norms == "average" and hasattr(model.update, "hidden_norms"):
        summary["update_feature_norms"] = update_feature_norms(model, batches)
    elif isinstance(hidden_norms, (list, tuple)):
        model.update.hidden_norms.copy_(torch.tensor([float(v) for v in hidden_norms], dtype=model.update.hidden_norms.dtype))
    neighbours = [batch[K.EDGE_INDEX].shape[1] / max(1, batch[K.POSITIONS].shape[0]) for batch in batches if K.EDGE_INDEX in batch]
    if neighbours:
        for module in model.modules():
            if hasattr(module, "avg_num_neighbors") and isinstance(module.avg_num_neighbors, torch.Tensor):
                module.avg_num_neighbors.fill_(max(sum(neighbours) / len(neighbours), 1.0))
    summary.update(fermi_level_offset=offset, field_feature_norms=model.field_feature_norms.tolist(),
                   atom_density_scaling=model.local_density.density_scaling.tolist())
    return summary


def _mixed_features(model, batches: List[dict]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.mixer(model.backbone.local_outputs(batch).features) for batch in batches])


def _scf_jacobian_radius(model, batch: dict) -> float:
    """|largest eigenvalue| of dG/dp at the local density of ``batch`` (constant Fermi level), by power
    iteration on vector-Jacobian products (G is affine in p for the default update: exact)."""
    with torch.no_grad():
        state = model.local_state(batch)
    problem = model.problem(state, False)
    fermi = state.fermi_reference if state.fermi_reference is not None else \
        torch.full((state.n_frames,), float(model.fermi_level_offset), dtype=state.density0.dtype)
    mu = state.atoms(fermi)
    density = state.density0.detach().requires_grad_(True)
    with torch.enable_grad():
        mapped, _ = problem.apply(density, mu)
    vector = torch.randn(density.shape, dtype=density.dtype, generator=torch.Generator().manual_seed(0))
    ratios = []
    for _ in range(_POWER_ITERATIONS):  # iterations, not atoms
        vector = vector / vector.norm().clamp_min(1e-300)
        (image,) = torch.autograd.grad(mapped, density, vector, retain_graph=True)
        ratios.append(float(image.norm()))
        vector = image
    return max(ratios[-5:])  # complex or +- pairs make single ratios oscillate


def update_feature_norms(model, batches: List[dict]) -> List[float]:
    """Divisors of h per l inside the update, from the data, bounded by the SCF gain they give.

    The update's linear response (softness dq/d(V + mu), polarisability) is quadratic in h, whose
    size depends on the backbone: at initialisation the Fermi response of a frame is ~1e-11 e/eV
    on se_e2_a and ~1e-6 on NequIP (h RMS 1e-5..1e-2), ~1e-2 on MACE (h RMS 0.5), so a
    constant-charge SCF has nothing to steer with. Here, for a fresh model (mixer bias zero): the
    update's weights get physical signs (``physical_signs``: responses of one sign per frame, no
    positive feedback) and the mixer a scalar bias of the RMS of its scalars (atoms without
    neighbours, whose se_e2_a / NequIP features vanish, respond too); then h is divided by its RMS per l and, where the SCF Jacobian dG/dp
    of the first batch then exceeds RESPONSE_BOUND in modulus, by sqrt(radius / RESPONSE_BOUND)
    more (two rounds: exact for affine updates): linear mixing converges at any mixing parameter
    at initialisation, and the Fermi response is as large as that allows. Returns the divisors.
    """
    update = model.update
    bias = getattr(model.mixer.linear, "bias", None)
    hidden = _mixed_features(model, batches)
    if bias is not None and bias.numel() and not bool(bias.detach().any()):
        update.physical_signs()
        with torch.no_grad():
            bias.fill_(float(hidden[..., 0].pow(2).mean().sqrt()))
        hidden = _mixed_features(model, batches)
    rms = [float(hidden[..., 0].pow(2).mean().sqrt())]
    rms.append(float(hidden[..., 1:].pow(2).mean().sqrt()) if hidden.shape[-1] > 1 else 1.0)
    norms = torch.tensor([r if r > 1e-12 else 1.0 for r in rms], dtype=update.hidden_norms.dtype)
    update.hidden_norms.copy_(norms)
    for _ in range(2):
        radius = max(_scf_jacobian_radius(model, batch) for batch in batches[:1])
        if radius <= RESPONSE_BOUND:
            break
        update.hidden_norms.mul_((radius / RESPONSE_BOUND) ** 0.5)
    return update.hidden_norms.tolist()


def _percentile(values: List[int], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)])


def scf_convergence_summary(model, batches) -> str:
    """The post-training table (module docstring) over ``batches`` (collated, with neighbour lists)."""
    from mlpot.models.fixed_point.solver import converge

    batches = list(batches)
    stage_mixing = model.options.scf.mixing_parameter if model.options.mode != "direct" else 0.2
    mixings = [0.2] if stage_mixing >= 0.2 else [stage_mixing, 2 * stage_mixing]
    lines = ["SCF convergence summary (100 steps, tolerance 1e-07, local_guess density, from_data Fermi level)",
             f"{'mode':<16} {'mixing':>6} {'frames':>6} {'converged %':>11} {'other %':>8} {'diverged %':>10} "
             f"{'median steps':>12} {'p95 steps':>9}"]
    was_training = model.training
    model.eval()
    for constant_charge in (False, True):
        for mixing in mixings:
            converged = diverged = frames = 0
            steps: List[int] = []
            for batch in batches:
                with torch.no_grad():
                    state = model.local_state(batch)
                problem = model.problem(state, constant_charge)
                fermi = state.fermi_reference if state.fermi_reference is not None else \
                    torch.full((state.n_frames,), float(model.fermi_level_offset), dtype=state.density0.dtype)
                result = converge(problem, state.density0.detach(), fermi, num_steps=100, tolerance=1e-7,
                                  mixing=mixing, graph="none")
                frames += state.n_frames
                converged += int(result.converged.sum())
                diverged += int(result.diverged.sum())
                steps += [int(s) for s in result.steps[result.converged]]
            other = frames - converged - diverged
            name = "constant charge" if constant_charge else "constant Fermi"
            median = _percentile(steps, 0.5)
            lines.append(f"{name:<16} {mixing:>6.3g} {frames:>6d} {100 * converged / max(frames, 1):>11.1f} "
                         f"{100 * other / max(frames, 1):>8.1f} {100 * diverged / max(frames, 1):>10.1f} "
                         f"{median:>12.0f} {_percentile(steps, 0.95):>9.0f}")
    model.train(was_training)
    return "\n".join(lines)
