"""SCF drivers: constant Fermi level and constant total charge (spec mace_scf.md §2.7).

Both iterate the map G of ``problem.py`` with linear mixing p <- p + alpha (G(p) - p), taking
T - 1 updates for ``num_scf_steps`` = T (the initial density is step 0) [COMPAT]. The per-frame
change is c_g = mean over atoms and components of |p_t - p_(t-1)|.

* Constant Fermi level: mu fixed; converged when c_g < tol for every frame; diverged when a
  frame has |Q| > 10 e or c_g > 1.
* Constant charge (target Q* = ``total_charge``): before the loop and at every step the Fukui
  weights w_i = s_i / S_g (s_i = d dp_i,00 / d mu_i, S_g = sum over the frame) redistribute the
  charge deficit onto the input density (s is computed once when the update is affine in the
  features, ``affine_in_features``: it is then the same at every step); after the update a Newton step on mu,
  d mu = (Q* - Q) / S_g clamped to [-1, 1] (unclamped on the last step or after divergence).
  When |S_g| < 1e-6 the step is sign(Q* - Q) (the original always steps -1 [BUG]). Converged when
  c_g < tol and |Q - Q*| < 1e-3 for every frame (checked before mu is updated); diverged when
  |Q| > 10 e or c_g > 5.

``graph``: "none" (every step detached: no gradients), "full" (the whole unrolled graph, BPTT)
or "last" (only the last update keeps its graph: the one-step "shortcut" gradient of
``use_autograd_forces: false``). Per-frame bookkeeping (first converged step, divergence, final
change and charge error) is returned in :class:`SCFResult`; ``log`` receives the DEBUG lines of
spec §4 (``step N, ... abs_change=``, ``converged at step N``, ``SCF diverged at step N``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from mlpot.models.fixed_point.problem import SCFProblem

__all__ = ["SCFResult", "converge"]

CHARGE_TOLERANCE = 1e-3  # e, constant-charge convergence
MAX_CHARGE = 10.0  # e, divergence
MAX_CHANGE = {False: 1.0, True: 5.0}  # divergence threshold on c_g: constant Fermi, constant charge
FLAT_RESPONSE = 1e-6  # |S_g| below which the Newton step falls back to sign(Q* - Q)


@dataclass
class SCFResult:
    """Outcome of one SCF solve of a batch.

    density (n, (L+1)^2) the last mixed density; fermi_level (F,) eV; features (n, n_widths, 4) of
    the last input; converged / diverged (F,) bool; steps (F,) long: first step with c_g < tol
    (the last step taken when never); change (F,) final c_g; charge_error (F,) |Q - Q*| e;
    n_steps: steps taken (history entries, initial density included); history: densities when kept.
    """

    density: torch.Tensor
    fermi_level: torch.Tensor
    features: torch.Tensor
    converged: torch.Tensor
    diverged: torch.Tensor
    steps: torch.Tensor
    change: torch.Tensor
    charge_error: torch.Tensor
    n_steps: int
    history: List[torch.Tensor] = field(default_factory=list)


def _frame_change(problem: SCFProblem, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    per_atom = (new - old).abs().mean(dim=1)
    return problem.state.frame_sum(per_atom.detach()) / problem.state.n_atoms


def _grad_context(graph: str, step: int, last: int):
    if graph == "full" or (graph == "last" and step == last):
        return contextlib.nullcontext()
    return torch.no_grad()


def converge(problem: SCFProblem, density: torch.Tensor, fermi_level: torch.Tensor, *, num_steps: int,
             tolerance: float, mixing: float, graph: str = "none", keep_history: bool = False,
             log: Optional[Callable[[str], None]] = None) -> SCFResult:
    """Run the SCF from ``density`` (n, (L+1)^2) and ``fermi_level`` (F,) eV (module docstring).

    ``problem.constant_charge`` selects the driver; the target charge is ``problem.state.target_charge``.
    """
    state = problem.state
    n_frames = state.n_frames
    device = density.device
    if graph != "full":
        density, fermi_level = density.detach(), fermi_level.detach()
    steps = torch.full((n_frames,), max(num_steps - 1, 0), dtype=torch.long, device=device)
    seen = torch.zeros(n_frames, dtype=torch.bool, device=device)
    change = torch.zeros(n_frames, dtype=density.dtype, device=device)
    history = [density] if keep_history else []
    constant_charge = problem.constant_charge
    target = state.target_charge.to(density.dtype)
    diverged = torch.zeros(n_frames, dtype=torch.bool, device=device)
    features = None
    last = num_steps - 1
    # an update affine in the features has one Fukui slope for every density and mu: computed once
    fixed_slope = constant_charge and graph != "last" and bool(getattr(problem.update, "affine_in_features", False))
    slope = None
    if constant_charge:
        with _grad_context(graph, 0, last):
            density_in, slope = _redistribute(problem, density, fermi_level, target, graph == "full")
    else:
        density_in = density
    taken = 1
    for step in range(1, num_steps):
        with _grad_context(graph, step, last):
            if graph == "last" and step == last:
                density_in, fermi_level = density_in.detach(), fermi_level.detach()
            atoms_mu = state.atoms(fermi_level)
            if constant_charge and not fixed_slope:
                mapped, features, slope = problem.fukui(density_in, atoms_mu, create_graph=graph != "none")
            else:
                mapped, features = problem.apply(density_in, atoms_mu)
            new = density_in + mixing * (mapped - density_in)
        change = _frame_change(problem, new, density)
        density = new
        taken = step + 1
        if keep_history:
            history.append(density)
        charge = problem.charges(density).detach()
        error = (charge - target).abs()
        charge_ok = (error < CHARGE_TOLERANCE) if constant_charge else torch.ones_like(seen)
        newly = (change < tolerance) & ~seen & charge_ok
        steps = torch.where(newly, torch.full_like(steps, step), steps)
        seen |= newly
        if log is not None:
            log(f"step {step}, max abs_change={float(change.max()):.3e}, max charge error={float(error.max()):.3e}")
        diverged = (charge.abs() > MAX_CHARGE) | (change > MAX_CHANGE[constant_charge]) | ~torch.isfinite(change)
        done = bool((change < tolerance).all()) and (not constant_charge or bool((error < CHARGE_TOLERANCE).all()))
        if done or bool(diverged.any()):
            if log is not None:
                log(f"converged at step {step}" if done and not bool(diverged.any()) else f"SCF diverged at step {step}")
            break
        if constant_charge:
            with _grad_context(graph, step, last):
                frame_slope = state.frame_sum(slope)
                density_in = _shifted(problem, density, slope, frame_slope, target)
                fermi_level = fermi_level + _newton_step(frame_slope, target - problem.charges(density), step == last)
        else:
            density_in = density
    charge_error = (problem.charges(density).detach() - target).abs()
    charge_ok = (charge_error < CHARGE_TOLERANCE) if constant_charge else torch.ones_like(diverged)
    converged = (change < tolerance) & ~diverged & charge_ok
    return SCFResult(density, fermi_level, features, converged, diverged, steps, change, charge_error, taken, history)


def _redistribute(problem: SCFProblem, density, fermi_level, target, create_graph: bool):
    """(Input density with the charge deficit spread by the Fukui weights at (p, mu), the slope s (n,)) (pre-loop)."""
    _, _, slope = problem.fukui(density, problem.state.atoms(fermi_level), create_graph=create_graph)
    return _shifted(problem, density, slope, problem.state.frame_sum(slope), target), slope


def _shifted(problem: SCFProblem, density, slope, frame_slope, target):
    state = problem.state
    safe = torch.where(frame_slope.abs() > FLAT_RESPONSE, frame_slope, torch.ones_like(frame_slope))
    weights = torch.where(state.atoms(frame_slope.abs() > FLAT_RESPONSE), slope / state.atoms(safe),
                          1.0 / state.atoms(state.n_atoms.to(slope.dtype)))
    deficit = state.atoms(target - problem.charges(density))
    return torch.cat([density[:, :1] + (weights * deficit).unsqueeze(1), density[:, 1:]], dim=1)


def _newton_step(frame_slope, deficit, unclamped: bool):
    flat = frame_slope.abs() <= FLAT_RESPONSE
    safe = torch.where(flat, torch.ones_like(frame_slope), frame_slope)
    step = torch.where(flat, torch.sign(deficit), deficit / safe)
    return step if unclamped else step.clamp(-1.0, 1.0)
