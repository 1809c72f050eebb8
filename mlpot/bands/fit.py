"""The band-fitting driver: DeePseudopot's ``main.py`` flow (spec deepseudopot.md §4.1, §4.5-4.7, §5).

read inputs -> starting-potential bands (``oldFunc_*``: the table of ``init_qSpace_pot.par`` or the
Zunger form) -> network: ``init_PPmodel.pth`` or the pre-fit to the starting potential
(``initZunger_*``) -> gradient training (``epoch_N_*``, :mod:`mlpot.bands.gradient`) or NN Monte
Carlo (``final_mc_cost.dat``, ``best_*``) -> ``final_*`` files. Checkpoints after every epoch /
Monte Carlo iteration make ``restart=True`` continue a killed run to the same numbers. Lines of
progress go to stdout and ``<results>/bands.log``; a progress bar runs on a terminal only; a metrics
CSV (``metrics.csv``) gets one row per epoch.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from tqdm import tqdm

from mlpot.bands import outputs, plots
from mlpot.bands.gradient import GradientTraining
from mlpot.bands.inputs import read_beta_schedule
from mlpot.bands.montecarlo import NNMonteCarlo
from mlpot.bands.native import BandsConfig
from mlpot.bands.parallel import KPointPool
from mlpot.bands.prefit import prefit
from mlpot.bands.setup import BandSetup, load_model_state, load_optimizer_state, load_setup
from mlpot.errors import CheckpointError, ConfigError
from mlpot.training.checkpoint import CheckpointManager, atomic_write_bytes, load_checkpoint
from mlpot.training.logging import MetricsCSV

__all__ = ["BandFit", "FitLog", "CHECKPOINT_PREFIX"]

CHECKPOINT_PREFIX = "bands.ckpt"


class FitLog:
    """Progress lines to stdout (unless quiet) and to ``<results>/bands.log``; bars on a terminal only."""

    def __init__(self, results: Path, quiet: bool = False, bars: bool = True):
        self.quiet, self.bars = quiet, bars
        self.handle = open(Path(results) / "bands.log", "a", buffering=1)

    def __call__(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text, file=sys.stdout)
        self.handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def bar(self, total: int, desc: str, initial: int = 0):
        show = self.bars and not self.quiet and sys.stderr.isatty()
        return tqdm(total=total, initial=initial, desc=desc, disable=not show, leave=False, file=sys.stderr)

    def close(self) -> None:
        self.handle.close()


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Keep the header and the rows up to ``last_epoch`` (rows a killed run wrote after its checkpoint go)."""
    if not path.is_file():
        return
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= last_epoch]
    out = io.StringIO()
    csv.writer(out).writerows(kept)
    atomic_write_bytes(path, out.getvalue().encode())


class BandFit:
    """One run: ``BandFit(config, results).run()``.

    Args:
        config: the native :class:`BandsConfig` (from a YAML or converted from ``NN_config.par``).
        results: results folder.
        notes: front-end notes to log.
        quiet: no progress lines on stdout and no bars (the log file is still written).
        restart: continue from the newest ``bands.ckpt-N.pt`` in ``results``.
    """

    def __init__(self, config: BandsConfig, results, notes: Sequence[str] = (), quiet: bool = False,
                 restart: bool = False, setup: Optional[BandSetup] = None):
        self.config, self.results = config, Path(results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.log = FitLog(self.results, quiet, config.runtime.progress_bar)
        if config.runtime.threads:
            torch.set_num_threads(config.runtime.threads)
        rt = config.runtime

        def pool_factory(systems):
            return KPointPool(systems, rt.workers, config.training.kpoint_chunk, rt.worker_threads)

        self.setup = setup or load_setup(config, list(notes), pool_factory)
        self.problem, self.species = self.setup.problem, self.setup.species
        self.reference = self.setup.reference_potential()
        self.show = config.runtime.show_plots
        if self.show and not plots.display_available():
            self.setup.notes.append("SHOWPLOTS = 1 but no display: plots are written to files only")
            self.show = False
        for note in self.setup.notes:
            self.log(f"note: {note}")
        self.checkpoints = CheckpointManager(self.results, prefix=CHECKPOINT_PREFIX, keep=2)
        self.state = self._restart_state() if restart else None
        self.q_range = plots.hamiltonian_q_range(self.problem)

    def _restart_state(self) -> Optional[dict]:
        latest = self.checkpoints.latest()
        if latest is None:
            self.log(f"note: no {CHECKPOINT_PREFIX}-N.pt in {self.results}: starting from the beginning")
            return None
        state = load_checkpoint(latest)
        if state.get("model_config") != self.config.model.model_dump():
            raise CheckpointError("was written for a different network (model section / PPmodel keys differ)",
                                  file=str(latest))
        stage = "mc" if self.config.monte_carlo is not None else "train"
        if state.get("stage") != stage:
            raise CheckpointError(f"holds a {state.get('stage')!r} run, the config asks for {stage!r}", file=str(latest))
        self.log(f"restarting from {latest.name} ({state['stage']}, epoch/iteration {state['epoch']})")
        return state

    # ------------------------------------------------------------------ files
    def evaluate_and_write(self, model, tag: str, label: str = "model") -> List[torch.Tensor]:
        bands = self.problem.evaluate(model)
        for system, b in zip(self.setup.systems, bands):
            outputs.write_bands(self.results / f"{tag}_BS_sys{system.index}.dat", system.kdist, b.cpu().numpy())
        plots.plot_bands(self.results / f"{tag}_plotBS.png", self.setup.systems, [b.cpu().numpy() for b in bands],
                         self.show, tag, model_label=label)
        if any(o is not None for o in self.problem.observables):
            found = self.problem.observables_pass(model, grad=False)
            outputs.write_observables(self.results, tag, found["values"], self.problem.observables)
        return bands

    def write_model_files(self, model, tag: str, optimizer=None) -> None:
        torch.save(model.state_dict(), self.results / f"{tag}_PPmodel.pth")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), self.results / f"{tag}_AdamState.pth")
        plots.plot_potentials(self.results / f"{tag}_plotPP.png", model, self.reference, self.species, self.q_range,
                              self.show, self.setup.reference_name, title=tag)
        o = self.config.output
        outputs.write_potentials(self.results, tag, model, self.species, o.q_max, o.n_q, o.r_max, o.n_r)

    def dump_gradients(self, model, epoch: int) -> None:
        with open(self.results / f"epoch_{epoch}_gradients.dat", "w") as grads, \
                open(self.results / f"epoch_{epoch}_params.dat", "w") as params:
            for name, p in model.named_parameters():
                params.write(f"{name} {p.detach().reshape(-1).tolist()}\n")
                if p.grad is not None:
                    grads.write(f"{name} {p.grad.reshape(-1).tolist()}\n")

    def _report(self, what: str, bands) -> float:
        rmse = self.problem.rmse_of(bands)
        self.log(f"{what}: loss {self.problem.loss_of(bands):.6g} eV², weighted RMSE {rmse:.4f} eV")
        return rmse

    # ------------------------------------------------------------------ stages
    def _prefit(self, model) -> None:
        p = self.config.prefit
        bar = self.log.bar(p.epochs, "pre-fit")

        def save(epoch, train, validation):
            torch.save(model.state_dict(), self.results / f"initZunger_epoch_{epoch}_PPmodel.pth")

        result = prefit(model, self.reference, p.epochs, p.lr, p.gamma, p.plot_every, p.optimizer, self.config.seed,
                        callback=save, progress=bar, log=self.log, print_grad=p.print_grad,
                        focus_q=torch.unique(torch.cat([pw.q_unique.to(torch.float64) for pw in self.problem.systems])),
                        focus_weight=p.focus_weight)
        bar.close()
        history = result.history
        outputs.write_cost(self.results / "init_train_cost.dat", history, "epoch train validation")
        plots.plot_cost(self.results / "init_train_cost.png",
                        {"train": [h[:2] for h in history], "validation": [(h[0], h[2]) for h in history]},
                        self.show, "pre-fit loss ((Ha·Bohr³)²)")
        torch.save(model.state_dict(), self.results / "initZunger_PPmodel.pth")
        if result.diverged_at is not None:
            self.log(f"pre-fit diverged at epoch {result.diverged_at} (validation loss {history[-1][2]:.4g}); "
                     f"stopped, lower prefit.lr (init_Zunger_optimizer_lr)")
        self.log(f"pre-fit to the {self.setup.reference_name} v(q): best validation loss {result.best_validation:.4g} "
                 f"at epoch {result.best_epoch} of {len(history)} (kept)")

    def initial_model(self) -> torch.nn.Module:
        torch.manual_seed(self.config.seed)
        model = self.setup.new_model()
        restart = self.setup.inputs / "init_PPmodel.pth"
        if restart.is_file():
            load_model_state(model, restart)
            self.log(f"loaded {restart}")
        elif self.config.prefit.epochs > 0:
            self._prefit(model)
        model.eval()
        return model

    def _start(self) -> torch.nn.Module:
        for pw in self.problem.systems:
            outputs.write_basis(self.results / f"basisStates_{pw.system.index}.dat", pw.g_vectors)
        name = self.setup.reference_name
        self._report(f"{name} v(q)", self.evaluate_and_write(self.reference, "oldFunc", name))
        model = self.initial_model()
        self._report("initial network", self.evaluate_and_write(model, "initZunger"))
        self.write_model_files(model, "initZunger")
        return model

    def _train(self, model) -> GradientTraining:
        adam_state = self.setup.inputs / "init_AdamState.pth"
        t = self.config.training
        loader = (lambda opt: load_optimizer_state(opt, adam_state, t.optimizer, t.lr)) if adam_state.is_file() else None
        metrics = self.results / "metrics.csv"
        if self.state is not None:
            _truncate_metrics(metrics, self.state["epoch"])
        csv_writer = MetricsCSV(metrics, append=self.state is not None)
        training = GradientTraining(self.problem, self.config, model, self.log, self._snapshot, self.dump_gradients,
                                    self.checkpoints, csv_writer, optimizer_state=loader)
        if self.state is not None:
            training.load_state_dict(self.state)
        bar = self.log.bar(t.epochs, "band fit", initial=training.epoch)
        try:
            training.run(t.epochs, bar, resumed=self.state is not None)
        finally:
            bar.close()
            csv_writer.close()
        return training

    def _snapshot(self, model, tag: str, optimizer) -> List[torch.Tensor]:
        bands = self.evaluate_and_write(model, tag)
        self.write_model_files(model, tag, optimizer)
        return bands

    def _monte_carlo(self, model) -> torch.nn.Module:
        mc = self.config.monte_carlo
        if mc.perturb_mode in (6, 7) and not self.problem.spinor:
            raise ConfigError(f"perturb_mode = {mc.perturb_mode} moves only the {'SO' if mc.perturb_mode == 6 else 'NL'} "
                              "parameters, but no system has spin-orbit/nonlocal terms (SObool = 1 and non-zero "
                              "a5..a7): nothing would change", key="monte_carlo.perturb_mode (mc_perturb_mode)")
        schedule = read_beta_schedule(self.setup.inputs / mc.beta_schedule) if mc.beta_schedule else None
        run = NNMonteCarlo(self.problem, model, mc.perturb_mode, mc.step, mc.beta, self.config.seed, schedule)
        if self.state is not None:
            run.load_state_dict(self.state["mc"])
        start = len(run.rows)
        bar = self.log.bar(mc.iterations, "Monte Carlo", initial=start)
        for it in range(start + 1, mc.iterations + 1):
            run.step(it)
            if mc.write_every and it % mc.write_every == 0:
                self.evaluate_and_write(model, f"mc_iter_{it}")
                self.write_model_files(model, f"mc_iter_{it}")
            self.checkpoints.save(it, {"stage": "mc", "epoch": it, "mc": run.state_dict(),
                                       "model_config": self.config.model.model_dump()})
            bar.update(1)
            bar.set_postfix(best=f"{run.best:.4g}")
        bar.close()
        rows = run.rows
        outputs.write_cost(self.results / "final_mc_cost.dat", rows, "iter newLoss accept? bestLoss currLoss")
        plots.plot_cost(self.results / "final_mc_cost.png", {"trial": [(r[0], r[1]) for r in rows],
                                                             "accepted": [(r[0], r[4]) for r in rows]},
                        self.show, xlabel="iteration")
        last_params = self.problem.params.numpy().copy()
        best = self.setup.new_model()
        best.load_state_dict(run.best_state)
        best.eval()
        self.problem.set_params(run.best_params)
        outputs.write_parameters(self.results, "best_", self.species, run.best_params)
        self.evaluate_and_write(best, "best")
        self.write_model_files(best, "best")
        self.problem.set_params(last_params)
        outputs.write_parameters(self.results, "final_", self.species, last_params)
        return model

    def _finish(self, model, training: Optional[GradientTraining]) -> None:
        final = self.evaluate_and_write(model, "final")
        self.write_model_files(model, "final")
        rmse = self._report("final network", final)
        if training is None:
            return
        history = training.history
        # the last row is the final network (after an early stop: the best one, not the last snapshot)
        history["validation"] = [row for row in history["validation"] if row[0] != training.epoch]
        history["validation"].append((training.epoch, self.problem.loss_of(final)))
        history["rmse"].append((training.epoch, rmse))
        outputs.write_cost(self.results / "final_training_cost.dat", history["train"], "epoch loss")
        outputs.write_cost(self.results / "final_validation_cost.dat", history["validation"], "epoch loss")
        plots.plot_cost(self.results / "final_train_cost.png",
                        {"training": history["train"], "validation": history["validation"]}, self.show)

    def run(self) -> torch.nn.Module:
        """The whole flow; returns the final network."""
        try:
            if self.state is None:
                model = self._start()
            else:
                model = self.setup.new_model()
                model.eval()
            training = None
            if self.config.monte_carlo is not None:
                model = self._monte_carlo(model)
            elif self.config.training.epochs > 0:
                training = self._train(model)
            self._finish(model, training)
            return model
        finally:
            if self.problem.pool is not None:
                self.problem.pool.close()
            self.log.close()

