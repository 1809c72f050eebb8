"""Model runners: one interface over eager, frozen and compiled models for the MD drivers.

A runner has ``type_map``, ``cutoff`` (Å), ``dtype`` and ``device``, and maps a one-frame batch
(:func:`mlpot.calculators.structure.structure_batch`) to detached outputs:

* ENERGY (1,) eV, ATOM_ENERGY (n_atoms,) eV, FORCES (n_atoms, 3) eV/Å and, with ``virial``,
  VIRIAL (1, 3, 3) eV (DeePMD sign, Ξ = -dE/dε) — for models that predict an energy;
* every other output the model returns (charges, multipoles, dipole, polarizability, Fermi
  level, DOS, ...), under its batch key.

:class:`EagerRunner` runs an ``AtomisticModel`` (from memory, a checkpoint or a frozen file) with
``mlpot.models.derivatives.compute_derivatives``; it also gives per-atom virials
(:meth:`EagerRunner.atom_virials`). Compiled models (``mlpot compile``, ``.pt2``) have their own
runner in :mod:`mlpot.calculators.compiled`; :func:`load_runner` picks by file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch

from mlpot.data import keys as K
from mlpot.errors import DataError
from mlpot.models.derivatives import compute_derivatives

__all__ = ["EagerRunner", "load_runner", "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, None: None}
Batch = Dict[str, torch.Tensor]


class EagerRunner:
    """Runs an eager model. dtype: None keeps the model's precision, "float32"/"float64" converts it."""

    kind = "eager"

    def __init__(self, model: torch.nn.Module, device: Union[str, torch.device] = "cpu",
                 dtype: Optional[str] = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float32', 'float64' or None, not {dtype!r}")
        self.device = torch.device(device)
        model = model.to(self.device)
        if DTYPES[dtype] is not None:
            model = model.to(DTYPES[dtype])
        self.model = model.eval()
        self.type_map = list(model.type_map)
        self.cutoff = float(model.cutoff)
        self.dtype = getattr(model, "dtype", torch.float64)
        self._has_energy: Optional[bool] = None

    def __call__(self, batch: Batch, virial: bool = True) -> Batch:
        if self._has_energy is None:
            keys = getattr(self.model, "output_keys", ()) or ()
            self._has_energy = K.ENERGY in keys if keys else True
        if not self._has_energy:
            with torch.no_grad():
                outputs = self.model(batch)
        else:
            with torch.enable_grad():
                outputs = compute_derivatives(self.model, batch, forces=True, virial=virial)
        return {key: value.detach() for key, value in outputs.items() if torch.is_tensor(value)}

    def atom_virials(self, batch: Batch) -> torch.Tensor:
        """Per-atom virials (n_atoms, 3, 3) eV, DeePMD sign, that sum to the frame's virial.

        Each pair term -r_e ⊗ ∂E/∂r_e is split half and half between the pair's two atoms (the
        LAMMPS convention of compute stress/atom). ∂E/∂r_e comes from a displacement added to
        every edge vector: the batch gets the edges' lattice offsets as its shifts and a unit
        cell. This holds for models whose energy depends on the geometry through the edge vectors
        only; others raise a DataError (the per-atom sum is checked against the strain virial).
        """
        positions = batch[K.POSITIONS].detach().requires_grad_(True)
        offsets = batch[K.EDGE_SHIFTS].to(positions.dtype) @ batch[K.CELL][0].to(positions.dtype)
        displacement = torch.zeros_like(offsets, requires_grad=True)
        edged = dict(batch)
        edged[K.POSITIONS] = positions
        edged[K.EDGE_SHIFTS] = offsets + displacement
        edged[K.CELL] = torch.eye(3, dtype=positions.dtype, device=positions.device).unsqueeze(0)
        with torch.enable_grad():
            energy = self.model(edged)[K.ENERGY].sum()
            (gradient,) = torch.autograd.grad(energy, [displacement], allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(displacement)
        vectors = (positions.index_select(0, batch[K.EDGE_INDEX][1]) - positions.index_select(0, batch[K.EDGE_INDEX][0])
                   + offsets).detach()
        pair = -0.5 * gradient.unsqueeze(2) * vectors.unsqueeze(1)  # (n_edges, 3, 3): Ξ_ab = -g_a r_b / 2
        per_atom = torch.zeros(positions.shape[0], 3, 3, dtype=pair.dtype, device=pair.device)
        per_atom.index_add_(0, batch[K.EDGE_INDEX][0], pair)
        per_atom.index_add_(0, batch[K.EDGE_INDEX][1], pair)
        total = self(batch, virial=True)[K.VIRIAL][0]
        if not torch.allclose(per_atom.sum(0), total, rtol=1e-6, atol=1e-6 * (1.0 + float(total.abs().max()))):
            raise DataError("per-atom virials need a model whose energy depends on the edge vectors only "
                            "(this model's do not add up to its virial)", key="virials")
        return per_atom


def reads_spin(model) -> bool:
    """Whether ``model`` reads per-atom spins (K.SPIN, a DeePMD spin model)."""
    return K.SPIN in tuple(getattr(model, "input_keys", ()) or ())


def needs_spin(runner) -> bool:
    """Whether the runner's model reads per-atom spins (a compiled runner's never does)."""
    return reads_spin(getattr(runner, "model", None))


def load_runner(model, device: Union[str, torch.device] = "cpu", head: Optional[str] = None,
                dtype: Optional[str] = None, mace_options=None):
    """A runner for ``model``: an ``AtomisticModel``, a runner, or the path of a checkpoint, a
    frozen model (``mlpot freeze``), a peer's model file that ``load_model`` reads (``mace_options``:
    the options of a mace_run_train checkpoint) or a compiled model (``mlpot compile``: ``.pt2``,
    ``.pt2.ts``)."""
    from mlpot.calculators.export import load_model, select_head

    if hasattr(model, "type_map") and callable(model) and not isinstance(model, torch.nn.Module):
        return model  # already a runner
    if isinstance(model, torch.nn.Module):
        if head is not None:
            model = select_head(model, head, "model")
        return EagerRunner(model, device=device, dtype=dtype)
    path = Path(model)
    from mlpot.calculators.compiled import is_compiled_file, load_compiled

    if is_compiled_file(path):
        return load_compiled(path, device=device)
    return EagerRunner(load_model(path, device=device, head=head, mace_options=mace_options), device=device,
                       dtype=dtype)
