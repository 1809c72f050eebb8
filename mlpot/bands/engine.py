"""Band-structure evaluation and loss gradients over several systems (spec deepseudopot.md §4.3-4.4).

:class:`BandProblem` wires a v(q) model (NN or analytic) to the :class:`PlaneWaveSystem` of every
system: v(q) is evaluated once per system on its distinct |q| values (plus the fixed long-range
tail when a4 ≠ 0), the k-independent local matrix is built once, and the band energies of all
k-points come from batched eigensolves.

Gradients: ``separate=False`` builds every H(k) in one graph and calls one backward.
``separate=True`` (``separateKptGrad``) cuts the graph at the local matrix V: V is detached into a
leaf, k-points are processed in chunks of ``kpt_chunk`` with one backward each (accumulating
∂L/∂V, each chunk's eigenvectors freed before the next), and a final ``V.backward(∂L/∂V)`` carries
the sum into the network. By linearity this is exactly the joint gradient, with peak memory of one
chunk instead of all k-points.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.loss import band_loss
from mlpot.bands.zunger import long_range_form_factor, zunger_form_factor

__all__ = ["AnalyticFormFactor", "BandProblem"]


class AnalyticFormFactor(torch.nn.Module):
    """Zunger form (params 0-3) as a module: (N, 1) Bohr⁻¹ -> (N, n_species) Ha·Bohr³."""

    def __init__(self, params: torch.Tensor):
        super().__init__()
        self.register_buffer("params", torch.as_tensor(params, dtype=torch.float64).clone())

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return zunger_form_factor(q[:, 0], self.params.to(q.dtype))


class BandProblem:
    """Systems, references and weights of one fit.

    Args:
        systems: one :class:`PlaneWaveSystem` per ``system_X``.
        params: (n_species, 9) parameter vectors (a4 = long-range amplitude).
        long_range: add v_LR(q) of a4 to every model's v(q) (newest behaviour; the analytic path
            always has it in the original).
        rel_band: fit energies relative to this band at each k (``relE_bIdx``) or None.
        kpt_chunk: k-points per backward with ``separate=True``.
        checkpoint: recompute the network in backward (``checkpoint = 1``).
    """

    def __init__(self, systems: Sequence[PlaneWaveSystem], params, long_range: bool = True,
                 rel_band: Optional[int] = None, kpt_chunk: int = 8, checkpoint: bool = False):
        self.systems = list(systems)
        self.params = torch.as_tensor(np.asarray(params), dtype=torch.float64)
        self.long_range = bool(long_range) and bool(torch.any(self.params[:, 4] != 0))
        self.rel_band, self.kpt_chunk, self.checkpoint = rel_band, int(kpt_chunk), bool(checkpoint)
        self.permutations: List[Optional[torch.Tensor]] = [None] * len(self.systems)
        self.references, self.kweights, self.band_weights = [], [], []
        for pw in self.systems:
            dtype, device = pw.dtype, pw.device
            self.references.append(torch.as_tensor(pw.system.ref_bands, dtype=dtype, device=device))
            self.kweights.append(torch.as_tensor(pw.system.kweights, dtype=dtype, device=device))
            self.band_weights.append(torch.as_tensor(pw.system.band_weights, dtype=dtype, device=device))

    @property
    def n_kpoints(self) -> int:
        return sum(pw.n_k for pw in self.systems)

    def form_factors(self, model, pw: PlaneWaveSystem) -> torch.Tensor:
        """v(q) on the distinct q of ``pw``: (n_q, n_species) Ha·Bohr³."""
        q = pw.q_unique[:, None]
        value = activation_checkpoint(model, q, use_reentrant=False) if self.checkpoint and torch.is_grad_enabled() \
            else model(q)
        if self.long_range:
            value = value + long_range_form_factor(pw.q_unique, self.params.to(value.dtype))
        return value

    def _apply_order(self, i: int, bands: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
        perm = self.permutations[i]
        return bands if perm is None else torch.gather(bands, 1, perm[list(ks)])

    @torch.no_grad()
    def evaluate(self, model) -> List[torch.Tensor]:
        """Band energies (n_k, n_bands) eV per system, re-ordered as the loss sees them."""
        out = []
        for i, pw in enumerate(self.systems):
            local = pw.local_potential(self.form_factors(model, pw))
            bands = torch.cat([pw.band_energies(local, ks) for ks in self._chunks(pw)])
            out.append(self._apply_order(i, bands, range(pw.n_k)))
        return out

    def loss_of(self, bands: Sequence[torch.Tensor]) -> float:
        return float(sum(band_loss(b, r, kw, bw, self.rel_band) for b, r, kw, bw in
                         zip(bands, self.references, self.kweights, self.band_weights)))

    def rmse_of(self, bands: Sequence[torch.Tensor]) -> float:
        """Weighted band RMSE over all systems, eV."""
        w = np.concatenate([np.outer(kw.cpu(), bw.cpu()).ravel() for kw, bw in zip(self.kweights, self.band_weights)])
        d = np.concatenate([(b - r).detach().cpu().numpy().ravel() for b, r in zip(bands, self.references)])
        return float(np.sqrt((w * d**2).sum() / w.sum()))

    def _chunks(self, pw: PlaneWaveSystem):
        return [list(range(s, min(s + self.kpt_chunk, pw.n_k))) for s in range(0, pw.n_k, self.kpt_chunk)]

    def loss_and_backward(self, model, separate: bool = True):
        """Band loss (eV², float) with gradients accumulated into ``model`` parameters' ``.grad``.

        Returns ``(loss, bands)`` with ``bands`` the detached (n_k, n_bands) eV per system.
        """
        total, all_bands = 0.0, []
        for i, pw in enumerate(self.systems):
            ref, kw, bw = self.references[i], self.kweights[i], self.band_weights[i]
            local = pw.local_potential(self.form_factors(model, pw))
            if not separate:
                bands = self._apply_order(i, pw.band_energies(local), range(pw.n_k))
                loss = band_loss(bands, ref, kw, bw, self.rel_band)
                if loss.requires_grad:
                    loss.backward()
                total += float(loss.detach())
                all_bands.append(bands.detach())
                continue
            leaf = local.detach().requires_grad_(local.requires_grad)
            pieces = []
            for ks in self._chunks(pw):
                bands = self._apply_order(i, pw.band_energies(leaf, ks), ks)
                loss = band_loss(bands, ref[ks], kw[ks], bw, self.rel_band)
                if loss.requires_grad:
                    loss.backward()
                total += float(loss.detach())
                pieces.append(bands.detach())
            if local.requires_grad:
                local.backward(leaf.grad)
            all_bands.append(torch.cat(pieces))
        return total, all_bands

    def set_params(self, params) -> None:
        """Replace the (n_species, 9) parameter vectors (SO/NL matrices rebuilt lazily when a5..a7 change)."""
        self.params = torch.as_tensor(np.asarray(params), dtype=torch.float64)
        for pw in self.systems:
            pw.set_params(self.params.numpy())

    @property
    def spinor(self) -> bool:
        return any(pw.spinor for pw in self.systems)
