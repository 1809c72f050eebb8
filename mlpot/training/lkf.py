"""Layer-wise extended Kalman filter (LKF): DeePMD-kit's ``opt_type: "LKF"`` optimizer.

Hu et al., "Training one DeePMD model in minutes: a step towards online learning" (2023), after
the reorganized layer-wise EKF (RLEKF) of Hu et al. (2022). The weights ``w`` are the state of a
Kalman filter whose measurements are the model's outputs; the filter keeps, per block of at most
``block_size`` weights, an error covariance ``P_i`` (initially the identity) and one forgetting factor
``λ`` shared by all blocks. One measurement, with ``H_i = ∂y/∂w_i`` (the gradient of a scalar
output ``y`` over block ``i``) and residual ``e``:

    A    = 1 / Σ_i (λ + H_iᵀ P_i H_i)                (DeePMD-kit adds λ once per block)
    K_i  = P_i H_i
    w_i ← w_i + A e K_i
    P_i ← (P_i − A K_i K_iᵀ) / λ
    λ   ← ν λ + 1 − ν                                  (λ → 1: the filter forgets less and less)

With one block and ν = 1 this is recursive least squares with forgetting factor λ (exact for a
linear model). Blocks: parameters are taken in order and packed while the block stays within
``block_size`` weights; a parameter larger than ``block_size`` is cut into blocks of its own.

A training step on a batch (:meth:`LKF.update_from_batch`) makes, as DeePMD-kit's KF wrapper does:
one energy measurement, then force measurements on ``force_atoms`` atom indices drawn at random
(with replacement, the same indices in every frame of the batch) in groups of ``atoms_per_group``,
each after a fresh forward pass. The "error sign trick": a measurement is ``y = Σ s · pref · ŷ``
over the selected outputs with ``s`` the sign of each residual, so every residual enters as
``|label − ŷ|`` and the update moves each output towards its label. Energies are taken per atom;
the residual is the mean of ``|e|`` times √(n_frames); the prefactors go from ``start_pref_*`` to
``limit_pref_*`` geometrically over the run (``pref(t) = start (limit/start)^t``, t = step / steps).
Frames whose energy or force label is missing (weight 0) add nothing to those measurements.
The lr is not used (it stays in the param groups for display and the lr-coupled loss prefactors).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import torch

from mlpot.data import keys as K
from mlpot.errors import ConfigError

__all__ = ["LKF", "kalman_blocks"]

Block = List[Tuple[int, int, int]]  # (parameter index, start, stop) slices of flattened parameters


def kalman_blocks(sizes: List[int], block_size: int) -> List[Block]:
    """Blocks of consecutive parameter slices (``sizes``: numel of each parameter): small parameters
    packed while the block holds at most ``block_size`` weights, larger ones cut into pieces of
    ``block_size`` (the last one shorter)."""
    blocks: List[Block] = []
    current: Block = []
    filled = 0
    for index, size in enumerate(sizes):
        if size > block_size or filled + size > block_size:
            if current:
                blocks.append(current)
            current, filled = [], 0
        if size > block_size:
            blocks.extend([(index, start, min(size, start + block_size))] for start in range(0, size, block_size))
        else:
            current.append((index, 0, size))
            filled += size
    if current:
        blocks.append(current)
    return blocks


class LKF(torch.optim.Optimizer):
    """Layer-wise Kalman filter over every parameter of ``params`` (groups are merged: the filter
    has one state). kalman_lambda: initial forgetting factor λ; kalman_nue: ν of its schedule;
    block_size: the largest block (DeePMD-kit ``kf_blocksize``, P_i is block_size² numbers);
    start/limit_pref_e/f: DeePMD-kit ``kf_start_pref_e`` ...; force_atoms / atoms_per_group: the
    force measurements of a step (DeePMD-kit: 24 atoms in groups of 6). ``lr`` is kept for display.
    """

    def __init__(self, params, lr: float = 0.1, kalman_lambda: float = 0.98, kalman_nue: float = 0.9987,
                 block_size: int = 5120, start_pref_e: float = 1.0, limit_pref_e: float = 1.0,
                 start_pref_f: float = 1.0, limit_pref_f: float = 1.0, force_atoms: int = 24,
                 atoms_per_group: int = 6):
        if block_size < 1 or force_atoms < 1 or atoms_per_group < 1 or force_atoms % atoms_per_group:
            raise ValueError(f"LKF: block_size ({block_size}) and atoms_per_group ({atoms_per_group}) must be "
                             f">= 1 and force_atoms ({force_atoms}) a multiple of atoms_per_group")
        if not 0 < kalman_lambda <= 1 or not 0 < kalman_nue <= 1:
            raise ValueError(f"LKF: kalman_lambda ({kalman_lambda}) and kalman_nue ({kalman_nue}) must be in (0, 1]")
        super().__init__(params, {"lr": lr})
        self.params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        self.options = dict(nue=kalman_nue, block_size=int(block_size), start_e=start_pref_e, limit_e=limit_pref_e,
                            start_f=start_pref_f, limit_f=limit_pref_f, force_atoms=force_atoms,
                            per_group=atoms_per_group)
        self.blocks = kalman_blocks([p.numel() for p in self.params], int(block_size))
        first = self.params[0]
        # the filter's state sits with the first parameter, so that state_dict / load_state_dict carry it
        state = self.state[first]
        state["P"] = [torch.eye(sum(b - a for _, a, b in block), dtype=first.dtype, device=first.device)
                      for block in self.blocks]
        state["kalman_lambda"] = float(kalman_lambda)

    def kalman_step(self, error: float, grad_prefactor: float = 1.0) -> None:
        """One measurement: H = grad / grad_prefactor (the ``.grad`` of every parameter, None = 0),
        residual ``error``; updates the weights, the P_i and λ (module docstring)."""
        state = self.state[self.params[0]]
        lam = float(state["kalman_lambda"])
        flat = [(p.grad.reshape(-1) / grad_prefactor) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                for p in self.params]
        H = [torch.cat([flat[i][a:b] for i, a, b in block]) for block in self.blocks]
        PH = [P @ h for P, h in zip(state["P"], H)]
        A = 1.0 / sum(lam + torch.dot(h, ph) for h, ph in zip(H, PH))
        with torch.no_grad():
            for block, ph, index in zip(self.blocks, PH, range(len(H))):
                offset = 0
                for i, a, b in block:
                    self.params[i].view(-1)[a:b].add_(ph[offset:offset + b - a], alpha=float(A * error))
                    offset += b - a
                state["P"][index] = (state["P"][index] - A * torch.outer(ph, ph)) / lam
        nue = self.options["nue"]
        state["kalman_lambda"] = nue * lam + 1.0 - nue

    def step(self, closure=None):  # noqa: D102 - LKF steps through kalman_step / update_from_batch
        raise RuntimeError("LKF updates through kalman_step(error) or update_from_batch(predict, batch, progress)")

    def _measure(self, signed_output: torch.Tensor, error: float, grad_prefactor: float) -> None:
        self.zero_grad(set_to_none=True)
        signed_output.backward(inputs=[p for p in self.params if p.requires_grad])
        self.kalman_step(error, grad_prefactor)

    def update_from_batch(self, predict: Callable[[], Dict[str, torch.Tensor]], batch: Dict[str, torch.Tensor],
                          progress: float) -> Dict[str, torch.Tensor]:
        """One LKF training step on ``batch``: the energy measurement, then the force measurements
        (module docstring). predict: runs the model on the batch (energy (n_frames,) eV, forces
        (n_atoms, 3) eV/Å, differentiable in the parameters); progress: step / total steps, for the
        prefactor schedule. Returns the (detached) prediction of the last forward pass."""
        o = self.options
        if K.ENERGY not in batch or K.FORCES not in batch:
            raise ConfigError("the LKF optimizer trains on energy and force labels: the batch has no "
                              f"{K.ENERGY if K.ENERGY not in batch else K.FORCES}", key="optimizer.name")
        pref_e = o["start_e"] * (o["limit_e"] / o["start_e"]) ** progress
        pref_f = o["start_f"] * (o["limit_f"] / o["start_f"]) ** progress
        n_atoms = batch[K.N_ATOMS]
        frames = int(n_atoms.numel())
        # frames without the label (weight 0) add nothing to a measurement
        ones = torch.ones(frames, dtype=batch[K.ENERGY].dtype, device=n_atoms.device)
        e_weight, f_weight = (batch.get(K.weight_key(key), ones) for key in (K.ENERGY, K.FORCES))
        pred = predict()
        per_atom = pref_e * e_weight * pred[K.ENERGY] / n_atoms
        residual = pref_e * e_weight * (batch[K.ENERGY] - pred[K.ENERGY].detach()) / n_atoms
        sign = torch.where(residual < 0, -1.0, 1.0).to(per_atom.dtype)
        self._measure((sign * per_atom).sum(), float(residual.abs().mean()) * math.sqrt(frames), 1.0)
        # the same atom indices (drawn with replacement below the smallest frame) in every frame
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        picks = torch.randint(0, int(n_atoms.min()), (o["force_atoms"],)).reshape(-1, o["per_group"])
        mean_atoms = float(n_atoms.double().mean())
        row_weight = (pref_f * f_weight)[:, None, None].expand(frames, o["per_group"], 1).reshape(-1, 1)
        for group in picks:
            pred = predict()
            rows = (offsets[:, None] + group.to(offsets.device)[None, :]).reshape(-1)
            chosen = row_weight * pred[K.FORCES].index_select(0, rows)
            residual = row_weight * batch[K.FORCES].index_select(0, rows) - chosen.detach()
            sign = torch.where(residual < 0, -1.0, 1.0).to(chosen.dtype)
            error = float(residual.abs().mean()) / mean_atoms * math.sqrt(frames)
            self._measure((sign * chosen).sum(), error, mean_atoms * o["per_group"] * 3)
        self._opt_called = True  # torch's lr schedulers warn when they step before the optimizer has
        return {key: value.detach() for key, value in pred.items()}
