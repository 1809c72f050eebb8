"""Training modes of the fixed-point model (spec mace_scf.md §3): how the density whose
observables are built is obtained, and which gradients it carries.

* ``direct``: p = G(p_ref, mu_ref), one update from the data's multipoles and Fermi level (frames
  without multipoles start from the local density); forces hold p_ref fixed.
* ``unroll_scf``: the SCF of ``solver.py`` with its graph (all steps; constant Fermi with
  ``use_autograd_forces: false`` keeps the last step only).
* ``implicit``: converge without a graph, y* carries implicit-function derivatives
  (``implicit.py``), observables from G(p*, mu*).
* ``linearize_solve``: the same derivatives, observables from p* itself (MACE-SCF builds them
  from one differentiable Newton step y* - J^-1 R(y*) with a dense batch Jacobian; here nothing
  of size n^2 exists and the derivatives are exact to every order).
* ``scf`` (inference): as ``linearize_solve``; a frame that does not converge raises
  SCFNotConvergedError unless ``allow_unconverged``.

When a training batch does not converge in ``implicit``/``linearize_solve``, ``fallback: unroll``
unrolls max(2, min(10 | 15, steps taken + 1)) steps instead (MACE-SCF does this silently; here it
is counted and logged), ``fallback: raise`` raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from mlpot.errors import SCFNotConvergedError
from mlpot.models.fixed_point.implicit import GMRESOptions, implicit_root
from mlpot.models.fixed_point.options import SCFOptions, TrainingOptions
from mlpot.models.fixed_point.problem import SCFProblem
from mlpot.models.fixed_point.solver import SCFResult, converge

__all__ = ["ModeResult", "run_mode", "initial_state"]


@dataclass
class ModeResult:
    """density (n, (L+1)^2), fermi_level (F,) eV, features (n, n_widths, 4) normalised, the SCF
    record (None for direct), and whether the batch fell back to an unrolled SCF."""

    density: torch.Tensor
    fermi_level: torch.Tensor
    features: torch.Tensor
    scf: Optional[SCFResult]
    fallback: bool = False


def initial_state(problem: SCFProblem, scf: SCFOptions, initial_density: Optional[torch.Tensor],
                  initial_fermi: Optional[torch.Tensor]):
    """(density (n, (L+1)^2), Fermi level (F,)) the SCF starts from: explicit restarts first
    (INITIAL_MULTIPOLES / INITIAL_FERMI_LEVEL of the batch), else the options."""
    state = problem.state
    if initial_density is not None:
        density = initial_density
    elif scf.initial_density == "from_data" and state.reference is not None:
        density = state.reference
    elif scf.initial_density == "zero":
        density = torch.zeros_like(state.density0)
    else:
        density = state.density0
    offset = torch.full((state.n_frames,), problem.fermi_offset, dtype=density.dtype, device=density.device)
    if initial_fermi is not None:
        fermi = initial_fermi.to(density.dtype)
    elif scf.initial_fermi_level == "from_data" and state.fermi_reference is not None:
        fermi = state.fermi_reference
    else:
        fermi = offset
    return density, fermi


def _unroll(problem, density, fermi, scf: SCFOptions, steps: int, log) -> ModeResult:
    graph = "full" if (problem.constant_charge or scf.use_autograd_forces) else "last"
    result = converge(problem, density, fermi, num_steps=steps, tolerance=scf.scf_tolerance,
                      mixing=scf.mixing_parameter, graph=graph, log=log)
    return ModeResult(result.density, result.fermi_level, result.features, result)


def _implicit(problem: SCFProblem, result: SCFResult, options: TrainingOptions, observe_mapped: bool) -> ModeResult:
    fermi_fixed = None if problem.constant_charge else result.fermi_level.detach()

    def residual(y, tensors):
        return problem.residual(y, tensors, fermi_fixed)

    gmres = GMRESOptions(normal_equations=options.linear_solve == "normal_cg")
    root = problem.pack(result.density.detach(), result.fermi_level.detach())
    y = implicit_root(residual, root, problem.tensors(), gmres)
    density, fermi = problem.unpack(y, fermi_fixed)
    atoms_mu = problem.state.atoms(fermi)
    if observe_mapped:
        density, features = problem.apply(density, atoms_mu)
    else:
        features = problem.features(density, atoms_mu)
    return ModeResult(density, fermi, features, result)


def run_mode(problem: SCFProblem, options: TrainingOptions, *, training: bool, allow_unconverged: bool = False,
             initial_density: Optional[torch.Tensor] = None, initial_fermi: Optional[torch.Tensor] = None,
             log: Optional[Callable[[str], None]] = None) -> ModeResult:
    """The density, Fermi level and features of ``options.mode`` for ``problem`` (module docstring)."""
    scf = options.scf
    if options.mode == "direct":
        state = problem.state
        density = state.reference if state.reference is not None else state.density0
        fermi = state.fermi_reference if state.fermi_reference is not None else \
            torch.full((state.n_frames,), problem.fermi_offset, dtype=density.dtype, device=density.device)
        mapped, features = problem.apply(density, state.atoms(fermi))
        return ModeResult(mapped, fermi, features, None)
    density, fermi = initial_state(problem, scf, initial_density, initial_fermi)
    if options.mode == "unroll_scf":
        return _unroll(problem, density, fermi, scf, scf.num_scf_steps, log)
    result = converge(problem, density, fermi, num_steps=scf.num_scf_steps, tolerance=scf.scf_tolerance,
                      mixing=scf.mixing_parameter, graph="none", log=log)
    if not bool(result.converged.all()):
        failed = [int(f) for f in torch.nonzero(~result.converged).flatten()]
        worst = float(result.change.max())
        if training and options.mode != "scf" and options.fallback == "unroll":
            cap = 10 if options.mode == "implicit" else 15
            steps = max(2, min(cap, result.n_steps))
            out = _unroll(problem, density, fermi, scf, steps, log)
            out.fallback, out.scf = True, result
            return out
        if not allow_unconverged:
            raise SCFNotConvergedError(result.n_steps, worst, (
                f"SCF did not converge in {result.n_steps} steps for frame(s) {failed} of the batch "
                f"(largest change {worst:.3e}, charge error {float(result.charge_error.max()):.3e}); raise "
                "num_scf_steps or lower mixing_parameter, or set allow_unconverged to accept it"))
    return _implicit(problem, result, options, observe_mapped=options.mode == "implicit")
