"""The band-fitting driver: DeePseudopot's ``main.py`` flow (spec deepseudopot.md §4.1, §4.5-4.7, §5).

read inputs -> analytic bands (``oldFunc_*``) -> network: ``init_PPmodel.pth`` or Zunger pre-fit
(``initZunger_*``) -> gradient training (``epoch_N_*``, ``final_*``) or Monte Carlo (``mc_*``,
``best_*``) -> final v(q)/v(r) exports. Headless unless ``SHOWPLOTS = 1``; a tqdm progress bar
runs during pre-fit, training and Monte Carlo.
"""

from __future__ import annotations

import copy
import resource
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from mlpot.bands import outputs
from mlpot.bands.engine import AnalyticFormFactor
from mlpot.bands.inputs import read_beta_schedule
from mlpot.bands.loss import decay_penalty, eigvec_reorder_permutation, magnitude_penalty, smooth_reorder_permutation
from mlpot.bands.montecarlo import monte_carlo
from mlpot.bands.prefit import VALIDATION_Q, zunger_prefit
from mlpot.bands.setup import BandSetup, load_model_state, load_setup

__all__ = ["BandFit", "build_band_optimizer"]

_BETA_OPTIMIZERS = ("adam", "adamw", "adamax", "nadam", "radam")


def build_band_optimizer(config, params):
    """Optimizer ``config.optimizer`` with lr and the hyperparameters really passed ([BUG] fix)."""
    from mlpot.training.optim import build_optimizer

    name, kwargs = config.optimizer, {"lr": config.optimizer_lr}
    if name in _BETA_OPTIMIZERS and (config.adam_beta1 is not None or config.adam_beta2 is not None):
        kwargs["betas"] = (config.get("adam_beta1", 0.9), config.get("adam_beta2", 0.999))
    if name == "sgd" and config.sgd_momentum is not None:
        kwargs["momentum"] = config.sgd_momentum
    return build_optimizer(name, params, key="optimizer", file=config.file, **kwargs)


class BandFit:
    """One run: ``BandFit(inputs, results).run()``. ``quiet`` hides the progress bars."""

    def __init__(self, inputs, results, setup: Optional[BandSetup] = None, quiet: bool = False):
        self.setup = setup or load_setup(inputs)
        self.config = self.setup.config
        self.results = Path(results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self.show = bool(self.config.SHOWPLOTS)
        self.problem = self.setup.problem
        self.analytic = AnalyticFormFactor(self.setup.params)
        self.history: Dict[str, List[tuple]] = {"train": [], "validation": [], "rmse": []}
        torch.manual_seed(self.config.seed)
        if self.config.num_cores and self.config.num_cores > 0:
            torch.set_num_threads(int(self.config.num_cores))  # batched eigensolves parallelise over k

    # ------------------------------------------------------------------ helpers
    def log(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text)

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=self.quiet, leave=False)

    def evaluate_and_write(self, model, tag: str) -> List[np.ndarray]:
        bands = [b.cpu().numpy() for b in self.problem.evaluate(model)]
        for system, b in zip(self.setup.systems, bands):
            outputs.write_bands(self.results / f"{tag}_BS_sys{system.index}.dat", system.kdist, b)
        outputs.plot_bands(self.results / f"{tag}_plotBS.png", self.setup.systems, bands, self.show, tag)
        return bands

    def _write_model_files(self, model, tag: str, optimizer=None) -> None:
        torch.save(model.state_dict(), self.results / f"{tag}_PPmodel.pth")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), self.results / f"{tag}_AdamState.pth")
        outputs.plot_potentials(self.results / f"{tag}_plotPP.png", model, self.analytic, self.setup.species,
                                VALIDATION_Q, self.show)
        outputs.write_potentials(self.results, tag, model, self.setup.species, self.config.qmax, self.config.nQGrid,
                                 self.config.Rmax, self.config.nRGrid)

    # ------------------------------------------------------------------ stages
    def initial_model(self) -> torch.nn.Module:
        model = self.setup.new_model()
        restart = self.setup.inputs / "init_PPmodel.pth"
        if restart.is_file():
            load_model_state(model, restart)
            self.log(f"loaded {restart}")
        elif self.config.init_Zunger_num_epochs > 0:
            rows = []
            bar = self._bar(self.config.init_Zunger_num_epochs, "Zunger pre-fit")

            def save(epoch, train, validation):
                torch.save(model.state_dict(), self.results / f"initZunger_epoch_{epoch}_PPmodel.pth")
                rows.append((epoch, train, validation))

            history = zunger_prefit(model, torch.tensor(self.setup.params), self.config.init_Zunger_num_epochs,
                                    self.config.init_Zunger_optimizer_lr, self.config.init_Zunger_scheduler_gamma,
                                    self.config.init_Zunger_plotEvery, self.config.init_Zunger_optimizer,
                                    target=self.setup.qspace_target(), seed=self.config.seed, callback=save,
                                    progress=bar)
            bar.close()
            outputs.write_cost(self.results / "init_train_cost.dat", history, "epoch train validation")
            outputs.plot_cost(self.results / "init_train_cost.png",
                              {"train": [h[:2] for h in history], "validation": [(h[0], h[2]) for h in history]},
                              self.show, "pre-fit loss")
            torch.save(model.state_dict(), self.results / "initZunger_PPmodel.pth")
            self.log(f"Zunger pre-fit: final validation loss {history[-1][2]:.4g}")
        model.eval()
        return model

    def _update_permutations(self, bands: List[torch.Tensor], model) -> None:
        pairs = self.problem.spinor or any(pw.double_bands for pw in self.problem.systems)
        for i, (pw, b) in enumerate(zip(self.problem.systems, bands)):
            old = self.problem.permutations[i]
            if self.config.smooth_reorder:
                p = torch.from_numpy(smooth_reorder_permutation(b.cpu().numpy(), pairs))
                self.problem.permutations[i] = p if old is None else torch.gather(old, 1, p)
            elif self.config.eigvec_reorder and not pw.double_bands:
                with torch.no_grad():
                    local = pw.local_potential(self.problem.form_factors(model, pw))
                    _, vectors = torch.linalg.eigh(pw.hamiltonians(local))
                self.problem.permutations[i] = torch.from_numpy(
                    eigvec_reorder_permutation(vectors.cpu().numpy(), pw.system.n_bands))

    def penalties(self, model) -> torch.Tensor:
        cfg, n_k = self.config, self.problem.n_kpoints
        total = torch.zeros((), dtype=torch.float64)
        if cfg.penalize_starting is not None and cfg.penalize_lambda:
            total = total + decay_penalty(model, cfg.penalize_starting, n_k, cfg.penalize_lambda)
        if cfg.penalize_mag_threshold is not None and cfg.penalize_mag_lambda:
            total = total + magnitude_penalty(model, cfg.penalize_mag_threshold, n_k, cfg.penalize_mag_lambda)
        return total

    def gradient_step(self, model, optimizer, bands_out: list) -> float:
        """One epoch: loss, gradients (joint or per k-chunk), penalties, optimizer step. Returns the loss."""
        separate = bool(self.config.separateKptGrad)

        def closure():
            optimizer.zero_grad()
            loss, bands = self.problem.loss_and_backward(model, separate)
            penalty = self.penalties(model)
            if penalty.requires_grad:
                penalty.backward()
            bands_out[:] = bands
            return torch.tensor(loss + float(penalty.detach()))

        if isinstance(optimizer, torch.optim.LBFGS):
            return float(optimizer.step(closure))
        loss = float(closure())
        grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        if np.isfinite(loss) and grads_finite:
            optimizer.step()
        else:
            self.log(f"non-finite loss or gradient ({loss}); step skipped")
        return loss

    def pre_adjust(self, model, optimizer) -> None:
        """``pre_adjust_moves`` single-parameter moves; keep the state with the smallest max|grad|."""
        moves, step = self.config.pre_adjust_moves, self.config.pre_adjust_stepSize
        candidates = []
        for move in range(1, moves + 1):
            optimizer.zero_grad()
            loss, bands = self.problem.loss_and_backward(model, bool(self.config.separateKptGrad))
            grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            max_grad = float(grads.abs().max())
            candidates.append((max_grad, copy.deepcopy(model.state_dict())))
            self.history["train"].append((-move, loss))
            self.log(f"pre-adjust move {move}: loss {loss:.6g}, max|grad| {max_grad:.4g}"
                     f"{' (well-conditioned)' if max_grad <= 50 else ''}")
            flat_index, offset = int(grads.abs().argmax()), 0
            with torch.no_grad():
                for p in model.parameters():
                    if offset <= flat_index < offset + p.numel():
                        g = p.grad.reshape(-1)[flat_index - offset]
                        p.view(-1)[flat_index - offset] -= step * float(torch.rand(())) * torch.sign(g)
                    offset += p.numel()
            torch.save(model.state_dict(), self.results / f"preEpoch_{move}_PPmodel.pth")
        best = min(candidates, key=lambda c: c[0])
        model.load_state_dict(best[1])

    def train(self, model) -> torch.nn.Module:
        cfg = self.config
        optimizer = build_band_optimizer(cfg, model.parameters())
        adam_state = self.setup.inputs / "init_AdamState.pth"
        if adam_state.is_file():
            optimizer.load_state_dict(torch.load(adam_state, weights_only=True))
            for group in optimizer.param_groups:
                group["lr"] = cfg.optimizer_lr
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg.scheduler_gamma)
        if cfg.pre_adjust_moves > 0:
            self.pre_adjust(model, optimizer)
        best_loss, since_best = np.inf, 0
        bands: list = []
        bar = self._bar(cfg.max_num_epochs, "band fit")
        for epoch in range(1, cfg.max_num_epochs + 1):
            start = time.perf_counter()
            if (cfg.smooth_reorder or cfg.eigvec_reorder) and bands:
                self._update_permutations(bands, model)
            loss = self.gradient_step(model, optimizer, bands)
            self.history["train"].append((epoch, loss))
            if epoch % cfg.schedulerStep == 0:
                scheduler.step()
            if cfg.perturbEvery > 0 and epoch % cfg.perturbEvery == 0:
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(0.9 + 0.2 * torch.rand_like(p))
            if epoch <= 10 or epoch % cfg.plotEvery == 0:
                self._dump_grads(model, epoch)
            if epoch % cfg.plotEvery == 0:
                evaluated = self.evaluate_and_write(model, f"epoch_{epoch}")
                validation = self.problem.loss_of([torch.as_tensor(b) for b in evaluated])
                self.history["validation"].append((epoch, validation))
                self.history["rmse"].append((epoch, self.problem.rmse_of([torch.as_tensor(b) for b in evaluated])))
                self._write_model_files(model, f"epoch_{epoch}", optimizer)
            if cfg.runtime_flag:
                self.log(f"epoch {epoch}: {time.perf_counter() - start:.2f} s")
            if cfg.memory_flag:
                self.log(f"epoch {epoch}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", lr=f"{optimizer.param_groups[0]['lr']:.2g}")
            if loss < best_loss:
                best_loss, since_best = loss, 0
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    self.log(f"early stop at epoch {epoch}: no improvement for {cfg.patience} epochs")
                    break
        bar.close()
        outputs.write_cost(self.results / "final_training_cost.dat", self.history["train"], "epoch loss")
        outputs.write_cost(self.results / "final_validation_cost.dat", self.history["validation"], "epoch loss")
        outputs.plot_cost(self.results / "final_train_cost.png",
                          {"training": self.history["train"], "validation": self.history["validation"]}, self.show)
        return model

    def _dump_grads(self, model, epoch: int) -> None:
        with open(self.results / f"epoch_{epoch}_gradients.dat", "w") as grads, \
                open(self.results / f"epoch_{epoch}_params.dat", "w") as params:
            for name, p in model.named_parameters():
                params.write(f"{name} {p.detach().reshape(-1).tolist()}\n")
                if p.grad is not None:
                    grads.write(f"{name} {p.grad.reshape(-1).tolist()}\n")

    def run_monte_carlo(self, model) -> torch.nn.Module:
        cfg = self.config
        schedule = None
        if cfg.mc_beta_schedule:
            schedule = read_beta_schedule(self.setup.inputs / cfg.mc_beta_schedule)
        bar = self._bar(cfg.mc_iter, "Monte Carlo")
        rows, best_model, best_params = monte_carlo(self.problem, model, cfg.mc_iter, cfg.mc_perturb_mode,
                                                    cfg.mc_percentage, cfg.mc_beta, cfg.seed, schedule, progress=bar)
        bar.close()
        outputs.write_cost(self.results / "final_mc_cost.dat", rows, "iter newLoss accept? bestLoss currLoss")
        outputs.plot_cost(self.results / "final_mc_cost.png",
                          {"trial": [(r[0], r[1]) for r in rows], "accepted": [(r[0], r[4]) for r in rows]}, self.show)
        self._write_model_files(model, "final")
        self.problem.set_params(best_params)
        for atom, vector in zip(self.setup.species, best_params):
            np.savetxt(self.results / f"best_{atom}Params.dat", vector, fmt="%.8f")
        self.evaluate_and_write(best_model, "best")
        self._write_model_files(best_model, "best")
        return best_model

    # ------------------------------------------------------------------ entry point
    def run(self) -> torch.nn.Module:
        for pw in self.problem.systems:
            outputs.write_basis(self.results / f"basisStates_{pw.system.index}.dat", pw.g_vectors)
        analytic_bands = self.evaluate_and_write(self.analytic, "oldFunc")
        analytic_t = [torch.as_tensor(b) for b in analytic_bands]
        self.log(f"analytic: loss {self.problem.loss_of(analytic_t):.6g} eV^2, weighted RMSE "
                 f"{self.problem.rmse_of(analytic_t):.4f} eV")
        model = self.initial_model()
        init_bands = [torch.as_tensor(b) for b in self.evaluate_and_write(model, "initZunger")]
        self.history["rmse"].append((0, self.problem.rmse_of(init_bands)))
        self.log(f"initial NN: loss {self.problem.loss_of(init_bands):.6g} eV^2, weighted RMSE "
                 f"{self.history['rmse'][-1][1]:.4f} eV")
        self._write_model_files(model, "initZunger")
        if self.config.mc_bool:
            model = self.run_monte_carlo(model)
        elif self.config.max_num_epochs > 0:
            model = self.train(model)
        final_bands = [torch.as_tensor(b) for b in self.evaluate_and_write(model, "final")]
        self.history["rmse"].append((-1, self.problem.rmse_of(final_bands)))
        self._write_model_files(model, "final")
        self.log(f"final: loss {self.problem.loss_of(final_bands):.6g} eV^2, weighted RMSE "
                 f"{self.history['rmse'][-1][1]:.4f} eV")
        return model
