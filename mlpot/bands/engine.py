"""Band-structure evaluation and loss gradients over several systems (spec deepseudopot.md §4.3-4.4).

:class:`BandProblem` wires a v(q) model (network, analytic or tabulated) to the
:class:`PlaneWaveSystem` of every system: v(q) is evaluated once per system on its distinct |q|
values (plus the fixed long-range tail when a4 ≠ 0), the k-independent local matrix is built once,
and the band energies of all k-points come from the subset eigensolver.

Gradients: ``separate=False`` builds every H(k) in one graph and calls one backward.
``separate=True`` (``separateKptGrad``) cuts the graph at the local matrix V: V is detached into a
leaf, k-points are processed in chunks of ``kpt_chunk`` with one backward each (accumulating
∂L/∂V), and a final ``V.backward(∂L/∂V)`` carries the sum into the network. By linearity this is
exactly the joint gradient, with the peak memory of one chunk. The same cut lets worker processes
(``num_cores``, :mod:`mlpot.bands.parallel`) take groups of k-points: each returns its loss, bands
and ∂L/∂V, and the parent sums them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.loss import band_loss
from mlpot.bands.potentials import AnalyticFormFactor
from mlpot.bands.zunger import long_range_form_factor

__all__ = ["AnalyticFormFactor", "BandProblem", "chunk_pass", "k_chunks"]


def k_chunks(k_indices: Sequence[int], size: int) -> List[List[int]]:
    ks = list(k_indices)
    return [ks[s:s + size] for s in range(0, len(ks), size)]


def chunk_pass(pw: PlaneWaveSystem, local: torch.Tensor, k_indices: Sequence[int], chunk: int, reference, kweights,
               band_weights, rel_band: Optional[int], permutation: Optional[torch.Tensor], grad: bool):
    """Band loss (eV²) and bands (n_k, n_bands) of ``k_indices``, chunk by chunk.

    With ``grad`` the backward of every chunk accumulates into ``local.grad`` (``local`` a leaf).
    ``permutation`` (n_k_all, n_bands) re-orders the bands of each k as the loss sees them.
    """
    total, pieces = 0.0, []
    for ks in k_chunks(k_indices, chunk):
        with torch.set_grad_enabled(grad):
            bands = pw.band_energies(local, ks)
            if permutation is not None:
                bands = torch.gather(bands, 1, permutation[ks])
            if reference is not None:
                loss = band_loss(bands, reference[ks], kweights[ks], band_weights, rel_band)
                if grad and loss.requires_grad:
                    loss.backward()
                total += float(loss.detach())
        pieces.append(bands.detach())
    return total, torch.cat(pieces)


class BandProblem:
    """Systems, references and weights of one fit.

    Args:
        systems: one :class:`PlaneWaveSystem` per ``system_X``.
        params: (n_species, 9) parameter vectors (a4 = long-range amplitude).
        long_range: add v_LR(q) of a4 to every model's v(q) (newest behaviour).
        rel_band: fit energies relative to this band at each k (``relE_bIdx``): one value for all
            systems or one per system (``input_X.par`` overrides), None for absolute energies.
        kpt_chunk: k-points per backward with ``separate=True``.
        checkpoint: recompute the network in backward (``checkpoint = 1``).
        observables: per system a :class:`mlpot.bands.observables.SystemObservables` or None.
        pool: a :class:`mlpot.bands.parallel.KPointPool` running the k-points in worker processes.
    """

    def __init__(self, systems: Sequence[PlaneWaveSystem], params, long_range: bool = True,
                 rel_band: Union[None, int, Sequence[Optional[int]]] = None, kpt_chunk: int = 8,
                 checkpoint: bool = False, observables=None, pool=None):
        self.systems = list(systems)
        self.params = torch.as_tensor(np.asarray(params), dtype=torch.float64)
        self._long_range_allowed = bool(long_range)
        self.long_range = self._long_range_allowed and bool(torch.any(self.params[:, 4] != 0))
        self.rel_bands = list(rel_band) if isinstance(rel_band, (list, tuple)) else [rel_band] * len(self.systems)
        self.kpt_chunk, self.checkpoint = int(kpt_chunk), bool(checkpoint)
        self.observables = list(observables) if observables is not None else [None] * len(self.systems)
        self.pool = pool
        self.permutations: List[Optional[torch.Tensor]] = [None] * len(self.systems)
        self.references, self.kweights, self.band_weights = [], [], []
        for pw in self.systems:
            dtype, device = pw.dtype, pw.device
            ref = pw.system.ref_bands
            self.references.append(None if ref is None else torch.as_tensor(ref, dtype=dtype, device=device))
            self.kweights.append(torch.as_tensor(pw.system.kweights, dtype=dtype, device=device))
            weights = pw.system.band_weights
            self.band_weights.append(None if weights is None else torch.as_tensor(weights, dtype=dtype, device=device))

    @property
    def n_kpoints(self) -> int:
        return sum(pw.n_k for pw in self.systems)

    @property
    def spinor(self) -> bool:
        return any(pw.spinor for pw in self.systems)

    def form_factors(self, model, pw: PlaneWaveSystem) -> torch.Tensor:
        """v(q) on the distinct q of ``pw``: (n_q, n_species) Ha·Bohr³."""
        q = pw.q_unique[:, None]
        use_checkpoint = self.checkpoint and torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())
        value = activation_checkpoint(model, q, use_reentrant=False) if use_checkpoint else model(q)
        if self.long_range:
            value = value + long_range_form_factor(pw.q_unique, self.params.to(value.dtype))
        return value

    def _pass(self, model, grad: bool, separate: bool = True):
        """(loss, bands per system) with gradients accumulated into the model when ``grad``."""
        locals_ = [pw.local_potential(self.form_factors(model, pw)) for pw in self.systems]
        if self.pool is not None:
            results = self.pool.run([local.detach() for local in locals_], self.permutations, self.rel_bands,
                                    self.params.numpy(), grad)
            total = 0.0
            for local, (loss, grad_local, bands) in zip(locals_, results):
                if grad and local.requires_grad and grad_local is not None:
                    local.backward(grad_local)
                total += loss
            return total, [bands for _, _, bands in results]
        total, all_bands = 0.0, []
        for i, (pw, local) in enumerate(zip(self.systems, locals_)):
            ref, kw, bw = self.references[i], self.kweights[i], self.band_weights[i]
            if grad and not separate and local.requires_grad:
                loss, bands = self._joint(pw, local, ref, kw, bw, i)
            else:
                leaf = local.detach().requires_grad_(grad and local.requires_grad)
                loss, bands = chunk_pass(pw, leaf, range(pw.n_k), self.kpt_chunk, ref, kw, bw, self.rel_bands[i],
                                         self.permutations[i], grad=grad and local.requires_grad)
                if grad and local.requires_grad:
                    local.backward(leaf.grad)
            total += loss
            all_bands.append(bands)
        return total, all_bands

    def _joint(self, pw, local, ref, kw, bw, i):
        bands = pw.band_energies(local)
        if self.permutations[i] is not None:
            bands = torch.gather(bands, 1, self.permutations[i])
        loss = band_loss(bands, ref, kw, bw, self.rel_bands[i])
        loss.backward()
        return float(loss.detach()), bands.detach()

    @torch.no_grad()
    def evaluate(self, model) -> List[torch.Tensor]:
        """Band energies (n_k, n_bands) eV per system, re-ordered as the loss sees them."""
        return self._pass(model, grad=False)[1]

    def loss_and_backward(self, model, separate: bool = True):
        """Band loss (eV², float) with gradients accumulated into ``model`` parameters' ``.grad``.

        Returns ``(loss, bands)`` with ``bands`` the detached (n_k, n_bands) eV per system.
        """
        return self._pass(model, grad=True, separate=separate)

    def loss_of(self, bands: Sequence[torch.Tensor]) -> float:
        return float(sum(band_loss(b, r, kw, bw, rel) for b, r, kw, bw, rel in
                         zip(bands, self.references, self.kweights, self.band_weights, self.rel_bands)))

    def errors_of(self, bands: Sequence[torch.Tensor]) -> List[np.ndarray]:
        """Per system the band errors (n_k, n_bands) eV, relative to band ``relE_bIdx`` where set."""
        out = []
        for b, r, rel in zip(bands, self.references, self.rel_bands):
            diff = (b - r) if rel is None else (b - b[:, rel:rel + 1]) - (r - r[:, rel:rel + 1])
            out.append(diff.detach().cpu().numpy())
        return out

    def rmse_of(self, bands: Sequence[torch.Tensor], index: Optional[int] = None) -> float:
        """Weighted band RMSE over all systems (or system ``index``), eV (relative where ``relE_bIdx`` is set)."""
        picks = range(len(self.systems)) if index is None else [index]
        errors = self.errors_of(bands)
        w = np.concatenate([np.outer(self.kweights[i].cpu(), self.band_weights[i].cpu()).ravel() for i in picks])
        d = np.concatenate([errors[i].ravel() for i in picks])
        return float(np.sqrt((w * d**2).sum() / w.sum()))

    def observables_pass(self, model, grad: bool, fit: bool = True) -> Dict[str, object]:
        """Deformation potentials / effective masses of every system; with ``grad`` and ``fit`` their
        weighted losses are back-propagated. Returns {'defpot_loss', 'effmass_loss', 'values'}."""
        out: Dict[str, object] = {"defpot_loss": 0.0, "effmass_loss": 0.0, "values": []}
        for obs in self.observables:
            if obs is None or not obs.active:
                out["values"].append({})
                continue
            with torch.set_grad_enabled(grad):
                values = obs.compute(lambda pw: self.form_factors(model, pw))
                losses = [values[k] for k in ("defpot_loss", "effmass_loss") if k in values]
                if grad and fit and losses and sum(losses).requires_grad:
                    sum(losses).backward()
            for key in ("defpot_loss", "effmass_loss"):
                if key in values:
                    out[key] += float(values[key].detach())
            out["values"].append({k: v.detach() for k, v in values.items()})
        return out

    @torch.no_grad()
    def eigenvectors(self, model, index: int) -> torch.Tensor:
        """Eigenvectors of the lowest levels of system ``index``: (n_k, dim, n_low)."""
        pw = self.systems[index]
        return pw.eigenvectors(pw.local_potential(self.form_factors(model, pw)))

    def set_params(self, params) -> None:
        """Replace the (n_species, 9) parameter vectors (SO/NL matrices rebuilt lazily when a5..a7 change)."""
        self.params = torch.as_tensor(np.asarray(params), dtype=torch.float64)
        self.long_range = self._long_range_allowed and bool(torch.any(self.params[:, 4] != 0))
        for pw in self.systems:
            pw.set_params(self.params.numpy())
