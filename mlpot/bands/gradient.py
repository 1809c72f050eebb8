"""Gradient training of the pseudopotential network on the band loss (spec deepseudopot.md §4.3-4.6).

Why its own loop rather than :class:`mlpot.training.Trainer`: a band fit is a full-batch problem —
one "step" is the exact loss over every k-point of every system, there is no dataset, sampler,
batch or label dictionary, and the model is not an atomistic ``Model`` with family hooks; around
the step it must reproduce DeePseudopot's own cadence and files (``plotEvery`` evaluations and
``epoch_N_*`` files, epochs 1-10 gradient dumps, ``schedulerStep`` decay, ``perturbEvery`` kicks,
pre-adjust moves, band re-matching, early stopping). It shares the engine's pieces instead:
optimizers by name (:func:`mlpot.training.optim.build_optimizer`), atomic checkpoints
(:class:`mlpot.training.checkpoint.CheckpointManager`) and the metrics CSV
(:class:`mlpot.training.logging.MetricsCSV`).

Exact resume: after every epoch a checkpoint ``bands.ckpt-<epoch>.pt`` holds the network, optimizer,
scheduler, the random generator of the perturbation/pre-adjust moves, the loss history, the best
state of early stopping and the band permutations; ``mlpot bands fit --restart`` continues from it
and reaches the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import copy
import resource
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from mlpot.bands.loss import decay_penalty, eigvec_reorder_permutation, magnitude_penalty, smooth_reorder_permutation
from mlpot.bands.prefit import gradient_norms

__all__ = ["GradientTraining", "build_band_optimizer", "METRIC_COLUMNS"]

_BETA_OPTIMIZERS = ("adam", "adamw", "adamax", "nadam", "radam")
METRIC_COLUMNS = ("epoch", "loss", "band_loss", "penalty", "defpot_loss", "effmass_loss", "rmse_eV", "lr", "seconds")


def build_band_optimizer(training, params):
    """Optimizer ``training.optimizer`` with lr, betas and momentum really passed ([BUG] fix of the 2024 code)."""
    from mlpot.training.optim import build_optimizer

    kwargs = {"lr": training.lr}
    if training.optimizer in _BETA_OPTIMIZERS and training.betas is not None:
        kwargs["betas"] = tuple(training.betas)
    if training.optimizer == "sgd" and training.momentum is not None:
        kwargs["momentum"] = training.momentum
    return build_optimizer(training.optimizer, params, key="training.optimizer", **kwargs)


class GradientTraining:
    """The epoch loop of one fit.

    Args:
        problem: the :class:`BandProblem`.
        config: the :class:`BandsConfig`.
        model: the network (already initialised / pre-fitted).
        log: ``log(text)`` for progress lines.
        snapshot: ``snapshot(model, tag, optimizer) -> bands`` evaluates, writes ``<tag>_*`` files and
            returns the band energies per system (``plotEvery`` epochs).
        dump: ``dump(model, epoch)`` writes ``epoch_N_gradients.dat`` / ``epoch_N_params.dat``.
        checkpoints: a CheckpointManager; ``metrics``: a MetricsCSV.
    """

    def __init__(self, problem, config, model, log: Callable[[str], None], snapshot, dump, checkpoints, metrics,
                 optimizer_state=None):
        self.problem, self.config, self.model, self.log = problem, config, model, log
        self.snapshot, self.dump, self.checkpoints, self.metrics = snapshot, dump, checkpoints, metrics
        t = config.training
        self.optimizer = build_band_optimizer(t, model.parameters())
        if optimizer_state is not None:
            optimizer_state(self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, t.scheduler_gamma)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.history: Dict[str, List[tuple]] = {"train": [], "validation": [], "rmse": []}
        self.epoch, self.best_loss, self.best_epoch, self.since_best = 0, np.inf, 0, 0
        self.best_state: Optional[dict] = None
        self.last_bands: List[torch.Tensor] = []
        self.stopped_early = False

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        return {"stage": "train", "epoch": self.epoch, "model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "history": copy.deepcopy(self.history),
                "best": (self.best_loss, self.best_epoch, self.since_best, self.best_state),
                "permutations": list(self.problem.permutations), "last_bands": list(self.last_bands),
                "stopped_early": self.stopped_early, "model_config": self.config.model.model_dump()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.history = state["history"]
        self.best_loss, self.best_epoch, self.since_best, self.best_state = state["best"]
        self.problem.permutations = list(state["permutations"])
        self.last_bands, self.epoch, self.stopped_early = list(state["last_bands"]), state["epoch"], state["stopped_early"]

    # ------------------------------------------------------------------ one epoch
    def _penalties(self) -> torch.Tensor:
        p, n_k = self.config.penalties, self.problem.n_kpoints
        total = torch.zeros((), dtype=torch.float64)
        if p.decay_start is not None and p.decay_lambda:
            total = total + decay_penalty(self.model, p.decay_start, n_k, p.decay_lambda)
        if p.magnitude_threshold is not None and p.magnitude_lambda:
            total = total + magnitude_penalty(self.model, p.magnitude_threshold, n_k, p.magnitude_lambda)
        return total

    def _loss_and_grad(self) -> Dict[str, float]:
        """All loss terms of the current network with their gradients in ``.grad``."""
        self.optimizer.zero_grad()
        band, bands = self.problem.loss_and_backward(self.model, self.config.training.separate_kpoint_grad)
        penalty = self._penalties()
        if penalty.requires_grad:
            penalty.backward()
        extra = self.problem.observables_pass(self.model, grad=True)
        self.last_bands = bands
        terms = {"band_loss": band, "penalty": float(penalty.detach()), "defpot_loss": extra["defpot_loss"],
                 "effmass_loss": extra["effmass_loss"]}
        terms["loss"] = sum(terms.values())
        terms["rmse_eV"] = self.problem.rmse_of(bands)
        return terms

    def _step(self) -> Dict[str, float]:
        if isinstance(self.optimizer, torch.optim.LBFGS):
            found: Dict[str, float] = {}

            def closure():
                found.clear()
                found.update(self._loss_and_grad())
                return torch.tensor(found["loss"])

            self.optimizer.step(closure)
            return found
        terms = self._loss_and_grad()
        finite = np.isfinite(terms["loss"]) and all(
            torch.isfinite(p.grad).all() for p in self.model.parameters() if p.grad is not None)
        if terms["loss"] < self.best_loss:  # the loss belongs to the weights before this step
            self.best_loss, self.best_epoch, self.since_best = terms["loss"], self.epoch + 1, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.since_best += 1
        if finite:
            self.optimizer.step()
        else:
            self.log(f"epoch {self.epoch + 1}: non-finite loss or gradient ({terms['loss']}); step skipped")
        return terms

    def _reorder(self) -> None:
        mode = self.config.training.reorder
        if mode == "none" or not self.last_bands:
            return
        for i, (pw, bands) in enumerate(zip(self.problem.systems, self.last_bands)):
            if mode == "smooth":
                old = self.problem.permutations[i]
                perm = torch.from_numpy(smooth_reorder_permutation(bands.cpu().numpy(), pw.spinor or pw.double_bands))
                self.problem.permutations[i] = perm if old is None else torch.gather(old, 1, perm)
            else:
                self.problem.permutations[i] = torch.from_numpy(eigvec_reorder_permutation(
                    self.problem.eigenvectors(self.model, i).cpu().numpy(), pw.system.n_bands, pw.double_bands))

    def _after_step(self, epoch: int) -> None:
        t = self.config.training
        if epoch % t.scheduler_step == 0:
            self.scheduler.step()
        if t.perturb_every is not None and t.perturb_every > 0 and epoch % t.perturb_every == 0:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.mul_(0.9 + 0.2 * torch.rand(p.shape, generator=self.generator, dtype=p.dtype))
        if epoch <= 10 or epoch % t.plot_every == 0:
            self.dump(self.model, epoch)
        if epoch % t.plot_every == 0:
            bands = self.snapshot(self.model, f"epoch_{epoch}", self.optimizer)
            self.history["validation"].append((epoch, self.problem.loss_of(bands)))
            self.history["rmse"].append((epoch, self.problem.rmse_of(bands)))

    def run_epoch(self) -> Dict[str, float]:
        """One epoch: re-match, loss + gradients + step, schedule/perturb/files; returns the metrics row."""
        start = time.perf_counter()
        self._reorder()
        terms = self._step()
        self.epoch += 1
        self.history["train"].append((self.epoch, terms["loss"]))
        if self.config.training.print_grad:
            self.log(f"epoch {self.epoch} gradient norms: {gradient_norms(self.model)}")
        self._after_step(self.epoch)
        row = dict(epoch=self.epoch, **{k: terms[k] for k in METRIC_COLUMNS[1:7]},
                   lr=self.optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - start)
        if self.config.runtime.report_time:
            self.log(f"epoch {self.epoch}: {row['seconds']:.2f} s")
        if self.config.runtime.report_memory:
            self.log(f"epoch {self.epoch}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        return row

    def pre_adjust(self) -> None:
        """``pre_adjust_moves`` single-parameter moves; keep the state with the smallest max|grad| (§4.6)."""
        t = self.config.training
        candidates = []
        for move in range(1, t.pre_adjust_moves + 1):
            terms = self._loss_and_grad()
            grads = torch.cat([p.grad.reshape(-1) for p in self.model.parameters()])
            max_grad = float(grads.abs().max())
            candidates.append((max_grad, copy.deepcopy(self.model.state_dict())))
            self.history["train"].append((-move, terms["loss"]))
            self.metrics.write(dict(epoch=-move, **{k: terms[k] for k in METRIC_COLUMNS[1:7]},
                                    lr=t.pre_adjust_step, seconds=0.0))
            self.log(f"pre-adjust move {move}: loss {terms['loss']:.6g} eV², max|grad| {max_grad:.4g}"
                     f"{' (well-conditioned)' if max_grad <= 50 else ''}")
            flat, offset = int(grads.abs().argmax()), 0
            with torch.no_grad():
                for p in self.model.parameters():
                    if offset <= flat < offset + p.numel():
                        g = p.grad.reshape(-1)[flat - offset]
                        step = t.pre_adjust_step * float(torch.rand((), generator=self.generator, dtype=torch.float64))
                        p.view(-1)[flat - offset] -= step * torch.sign(g)
                    offset += p.numel()
        self.model.load_state_dict(min(candidates, key=lambda c: c[0])[1])

    def run(self, epochs: int, progress=None, resumed: bool = False) -> torch.nn.Module:
        """Train up to ``epochs`` (or early stop); a checkpoint after every epoch."""
        t = self.config.training
        if not resumed:
            if t.pre_adjust_moves > 0:
                self.pre_adjust()
            self.checkpoints.save(0, self.state_dict())
        while self.epoch < epochs and not self.stopped_early:
            row = self.run_epoch()
            self.metrics.write(row)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{row['loss']:.4g}", rmse=f"{row['rmse_eV']:.3g} eV")
            if t.patience is not None and self.since_best >= t.patience:
                self.stopped_early = True
                self.log(f"early stop at epoch {self.epoch}: no lower loss for {t.patience} epochs; keeping the "
                         f"model of epoch {self.best_epoch} (loss {self.best_loss:.6g} eV²)")
                self.model.load_state_dict(self.best_state)
            self.checkpoints.save(self.epoch, self.state_dict())
        return self.model
