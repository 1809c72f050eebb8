"""Forces, virial and stress by autograd, one wrapper for every model (DESIGN "derivatives").

A symmetric strain ε (n_frames, 3, 3), zero-valued but requiring grad, displaces positions and
cell: R' = R (1 + ε), h' = h (1 + ε). Then

* FORCES = -dE/dR, (n_atoms, 3) eV/Å;
* VIRIAL Ξ = -dE/dε (a general strain for a model with ``symmetric_virial = False``; transposed to DeePMD's Ξ_ab = -sum_k dE/dr_ka r_kb; symmetric for
  rotation-invariant energies), (n_frames, 3, 3) eV — also for non-periodic frames, where it
  equals -sum_k r_k ⊗ dE/dr_k as in DeePMD-kit;
* with forces, for every (input, output) of ``model.input_derivatives`` (a spin model: SPIN ->
  FORCE_MAG), output = -dE/d(input) of the input's shape (the magnetic force, eV/μB);
* STRESS = -Ξ / V for frames with a non-singular cell (n_frames, 3, 3) eV/Å^3; zero for frames
  without one (isolated molecules have no volume);
* with ``hessian``: HESSIAN = d²E/dR² per frame (n_frames, (3 N_max)²) eV/Å², row-major, zero-padded
  (``models/hessian.py``); the forces' pass then keeps its graph (a second derivative needs it).

``create_graph=True`` keeps the graph so a force or virial loss can be back-propagated (training);
evaluation leaves it False, so no graph of second derivatives is built. A model without ENERGY
(dipole, polarizability, DOS) has nothing to derive: asking for derivatives is a ValueError. An
energy-only model (``model.energy_derivatives`` False, e.g. NequIP ``do_derivatives: false``) gets
none of them: its outputs are returned as they are.
"""

from __future__ import annotations

from typing import Dict

import torch

from mlpot.data.keys import BATCH, CELL, ENERGY, FORCES, HESSIAN, PBC, POSITIONS, STRESS, VIRIAL
from mlpot.nn.gathered_contraction import first_derivatives_only

__all__ = ["compute_derivatives"]


def compute_derivatives(model, batch: Dict[str, torch.Tensor], forces: bool = True, virial: bool = False,
                        stress: bool = False, create_graph: bool = False,
                        hessian: bool = False) -> Dict[str, torch.Tensor]:
    """Model outputs plus FORCES / VIRIAL / STRESS (see module docstring).

    batch: a collated batch; ``model(batch)`` must return ENERGY (n_frames,) in eV.
    """
    if not getattr(model, "energy_derivatives", True):
        forces = virial = stress = hessian = False
    forces = forces or hessian
    graph = create_graph or hessian  # the Hessian differentiates the forces again
    need_strain = virial or stress
    positions = batch[POSITIONS]
    if forces and not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    cell = batch[CELL].to(positions.dtype)
    inputs = dict(batch)
    inputs[POSITIONS] = positions
    strain = None
    if need_strain:
        n_frames = cell.shape[0]
        strain = torch.zeros(n_frames, 3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
        # a spin model strains positions but not spins: its virial is not symmetric (DeePMD-kit keeps it)
        symmetric = 0.5 * (strain + strain.transpose(1, 2)) if getattr(model, "symmetric_virial", True) else strain
        inputs[POSITIONS] = positions + torch.bmm(positions.unsqueeze(1), symmetric[batch[BATCH]]).squeeze(1)
        inputs[CELL] = cell + torch.bmm(cell, symmetric)
    extra = dict(getattr(model, "input_derivatives", {})) if forces else {}
    extra_inputs = []
    for name in extra:
        if name in inputs:
            inputs[name] = inputs[name].detach().to(positions.dtype).requires_grad_(True)
            extra_inputs.append(name)
    # no graph of the derivatives (evaluation, MD): models may take first-derivative-only paths
    with first_derivatives_only(not graph and (forces or need_strain)):
        outputs = dict(model(inputs))
    if not (forces or need_strain):
        return outputs
    if ENERGY not in outputs:
        raise ValueError(f"forces, virial and stress are derivatives of an energy; this model returns "
                         f"{sorted(outputs)} (a dipole, polarizability or DOS model has none to derive)")
    energy = outputs[ENERGY]
    wrt = ([positions] if forces else []) + ([strain] if need_strain else []) + [inputs[n] for n in extra_inputs]
    grads = torch.autograd.grad(energy.sum(), wrt, create_graph=graph, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
    if forces:
        outputs[FORCES] = -grads[0]
    if hessian:
        from mlpot.models.hessian import hessian_from_forces

        outputs[HESSIAN] = hessian_from_forces(outputs[FORCES], positions, batch, create_graph)
    for offset, name in enumerate(extra_inputs):
        outputs[extra[name]] = -grads[len(grads) - len(extra_inputs) + offset]
    if need_strain:
        virial_value = -grads[1 if forces else 0].transpose(1, 2)
        if virial:
            outputs[VIRIAL] = virial_value
        if stress:
            volume = torch.linalg.det(cell).abs()
            periodic = volume > 1e-12
            if PBC in batch:
                periodic = periodic & batch[PBC].to(torch.bool).any(dim=-1)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            outputs[STRESS] = torch.where(periodic[:, None, None], -virial_value / safe[:, None, None], torch.zeros_like(virial_value))
    return outputs
