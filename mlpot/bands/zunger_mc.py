"""Monte Carlo fit of the nine Zunger parameters per species (DeePseudopot's standalone
``main_mc_Zunger*.py`` drivers; spec §1.9, §4.7): ``mlpot bands zunger-mc INPUTS RESULTS``.

Options come from ``mcOpts*.par`` (``betas``, ``stepsAtTemp``, ``tempStepSizeMod``, ``totalIter``,
``fitDefPot``, ``fitCoupling``, ``fitEffMass``, ``optGaps``, ``defPotWeight``, ``writePerIter``) and
step sizes from ``<atom>ParamSteps.par`` (all species or none; default p/100 and log(p₃+1)/100 for
the exponent a3).

Quasi parallel tempering: ``stepsAtTemp[t]`` steps at ``betas[t]`` alternately; each step moves
every parameter, p_j += U(-1, 1)·step_j·``tempStepSizeMod[t]``, then a_SO ← |a_SO| and the long-range
amplitude of one species (the last with a4 ≠ 0 in system 0's atom order) is set so that Σ_atoms a4
= 0. Cost per system: Σ_k w_k Σ_b w_b ΔE² over the non-zero reference entries divided by their
count (``optGaps``: differences of adjacent bands instead), + 5 (a_SO - 8)² per species with
a_SO > 8 on spin-orbit systems, + ``defPotWeight`` Σ w (D - D_ref)², + the effective-mass term.
Acceptance: new best, or exp(-β(√L_new - √L_cur)) > U(0, 1). Stops after ``totalIter`` steps or
10 000 steps without a new best.

Files: ``iterations.dat`` (``nIter newMSE curMSE bstMSE %Accpt <atom>_a<j>...``), ``bandStruct_X.dat``
(start), ``bestBandStruct_X.dat`` + ``bestBandStruct_plotBS.png``, ``best_<atom>Params.dat``,
``<atom>bestParams.pt``, ``nIter_N_BS_X.dat`` every ``writePerIter`` steps, ``effMasses_X.dat`` /
``defPots_X.dat`` when fitted, ``metrics.csv``. Differences from the original: effective masses are not
rounded to 2 decimals; deformation potentials read every ``expDefPot_X.par`` layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from mlpot.bands import outputs, plots
from mlpot.bands.inputs import read_mc_opts, read_param_steps
from mlpot.bands.native import BandsConfig, not_supported
from mlpot.bands.observables import SystemObservables, read_defpot_table, read_effective_masses
from mlpot.bands.potentials import AnalyticFormFactor
from mlpot.bands.setup import BandSetup, load_setup
from mlpot.errors import DataError
from mlpot.training.logging import MetricsCSV

__all__ = ["ZungerMonteCarlo", "find_mc_opts", "STALL_LIMIT"]

STALL_LIMIT = 10_000  # steps without a new best before the driver stops
SO_LIMIT, SO_PENALTY = 8.0, 5.0


def find_mc_opts(folder: Path, name: Optional[str] = None) -> Path:
    """``name`` in ``folder``, or its only ``mcOpts*.par``."""
    if name is not None:
        return Path(folder) / name
    found = sorted(Path(folder).glob("mcOpts*.par"))
    if len(found) != 1:
        raise DataError(f"expected one mcOpts*.par, found {[p.name for p in found] or 'none'} (choose with --opts)",
                        file=str(folder))
    return found[0]


class ZungerMonteCarlo:
    """The driver; ``run()`` returns the best (n_species, 9) parameters."""

    def __init__(self, config: BandsConfig, results, opts_path: Path, log=print, setup: Optional[BandSetup] = None):
        self.setup = setup or load_setup(config)
        self.problem, self.species, self.log = self.setup.problem, self.setup.species, log
        self.results = Path(results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.opts = read_mc_opts(opts_path)
        if self.opts["fitCoupling"]:
            raise not_supported(opts_path, "fitCoupling", "electron-phonon couplings")
        if not np.any(self.setup.params[:, :4]):
            raise DataError("the Zunger Monte Carlo driver needs init_<atom>Params.par files", file=str(self.setup.inputs))
        self.rng = np.random.default_rng(config.seed)
        self.steps = self._steps()
        self.observables = self._observables()

    def _steps(self) -> np.ndarray:
        paths = [self.setup.inputs / f"{atom}ParamSteps.par" for atom in self.species]
        present = [p.is_file() for p in paths]
        if any(present) and not all(present):
            missing = [p.name for p, ok in zip(paths, present) if not ok]
            raise DataError(f"ParamSteps files are needed for all species or none; missing {', '.join(missing)}",
                            file=str(self.setup.inputs))
        if all(present):
            return np.stack([read_param_steps(p) for p in paths])
        steps = self.setup.params / 100.0
        steps[:, 3] = np.log(self.setup.params[:, 3] + 1.0) / 100.0
        return steps

    def _observables(self) -> List[Optional[SystemObservables]]:
        out = []
        for system, pw in zip(self.setup.systems, self.problem.systems):
            defpots = masses = None
            path = self.setup.inputs / f"expDefPot_{system.index}.par"
            if self.opts["fitDefPot"] and path.is_file():
                defpots = read_defpot_table(path, system)
            if self.opts["fitEffMass"]:
                masses = read_effective_masses(self.setup.inputs / f"expEffMasses_{system.index}.par")
            out.append(SystemObservables(pw, defpots, masses) if (defpots or masses) else None)
        if self.opts["fitDefPot"] and not any(o is not None and o.defpots for o in out):
            raise DataError("fitDefPot = True but no expDefPot_X.par", file=str(self.setup.inputs))
        return out

    # ------------------------------------------------------------------ cost
    def _band_cost(self, bands: torch.Tensor, index: int) -> float:
        ref = self.problem.references[index].numpy()
        kw, bw = self.problem.kweights[index].numpy(), self.problem.band_weights[index].numpy()
        e = bands.numpy()
        if self.opts["optGaps"]:
            keep = (np.abs(ref[:, 1:]) > 1e-15) & (np.abs(ref[:, :-1]) > 1e-15)
            diff = (e[:, 1:] - e[:, :-1]) - (ref[:, 1:] - ref[:, :-1])
            weight = kw[:, None] * 0.5 * (bw[1:] + bw[:-1])[None, :]
        else:
            keep = np.abs(ref) > 1e-15
            diff, weight = e - ref, kw[:, None] * bw[None, :]
        return float((weight * diff**2)[keep].sum() / max(int(keep.sum()), 1))

    def cost(self, params: np.ndarray) -> tuple:
        """(total cost, bands per system, observable values per system) of ``params``."""
        self.problem.set_params(params)
        model = AnalyticFormFactor(params)
        bands = self.problem.evaluate(model)
        total, values = 0.0, []
        for i, (pw, obs) in enumerate(zip(self.problem.systems, self.observables)):
            total += self._band_cost(bands[i], i)
            if pw.spinor:
                total += float(np.sum(SO_PENALTY * np.clip(params[:, 5] - SO_LIMIT, 0.0, None) ** 2))
            found: Dict[str, torch.Tensor] = {}
            if obs is not None:
                with torch.no_grad():
                    found = obs.compute(lambda p: self.problem.form_factors(model, p))
                total += self.opts["defPotWeight"] * float(found.get("defpot_loss", 0.0))
                total += float(found.get("effmass_loss", 0.0))
            values.append(found)
        return total, bands, values

    # ------------------------------------------------------------------ moves
    def propose(self, params: np.ndarray, temperature: int) -> np.ndarray:
        new = params + self.rng.uniform(-1.0, 1.0, params.shape) * self.steps * self.opts["tempStepSizeMod"][temperature]
        new[:, 5] = np.abs(new[:, 5])
        symbols = self.setup.systems[0].symbols
        index = {s: i for i, s in enumerate(self.species)}
        constrained = None
        for symbol in symbols:
            if abs(new[index[symbol], 4]) > 1e-10:
                constrained = symbol
        if constrained is not None:
            others = sum(new[index[s], 4] for s in symbols if s != constrained)
            new[index[constrained], 4] = -others / symbols.count(constrained)
        return new

    def _iteration_line(self, n_iter, new, current, best, accept, params) -> str:
        return f"{n_iter} {new:.6g}\t {current:.6g}\t {best:.6g}\t {accept:.5g}\t " + \
            "".join(f"{p:.14f}\t" for p in params.ravel()) + "\n"

    def run(self, progress=None) -> np.ndarray:
        o = self.opts
        params = self.setup.params.copy()
        current, bands, values = self.cost(params)
        best, best_params, best_bands, best_values = current, params.copy(), bands, values
        self._write_state("bandStruct", bands, values)
        header = "nIter newMSE \t curMSE \t bstMSE \t %Accpt \t " + \
            "".join(f"{a}_a{j}  \t" for a in self.species for j in range(params.shape[1])) + "\n"
        lines = [header, self._iteration_line(0, current, current, best, 1.0, params)]
        metrics = MetricsCSV(self.results / "metrics.csv")
        temperature, at_temperature, accepted, since_best = 0, 0, 0, 0
        for n_iter in range(1, o["totalIter"] + 1):
            since_best += 1
            if since_best > STALL_LIMIT:
                self.log(f"no new best for {STALL_LIMIT} steps: stopping at step {n_iter - 1}")
                break
            trial = self.propose(params, temperature)
            new, bands, values = self.cost(trial)
            beta = o["betas"][temperature]
            at_temperature += 1
            if at_temperature >= o["stepsAtTemp"][temperature]:
                temperature, at_temperature = 1 - temperature, 0
            thermal = np.exp(-beta * (np.sqrt(new) - np.sqrt(current))) > self.rng.uniform()
            if new < best or thermal:
                accepted += 1
            if new < best:
                best = current = new
                params, best_params, best_bands, best_values, since_best = trial, trial.copy(), bands, values, 0
            elif thermal:
                params, current = trial, new
            lines.append(self._iteration_line(n_iter, new, current, best, accepted / n_iter, trial))
            metrics.write(dict(iteration=n_iter, new=new, current=current, best=best, acceptance=accepted / n_iter,
                               beta=beta))
            if n_iter % o["writePerIter"] == 0:
                self._write_state(f"nIter_{n_iter}_BS", bands, values)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(best=f"{best:.4g}")
        metrics.close()
        (self.results / "iterations.dat").write_text("".join(lines))
        self._write_best(best_params, best_bands, best_values, best)
        return best_params

    def _write_state(self, stub: str, bands, values) -> None:
        for system, b, found in zip(self.setup.systems, bands, values):
            outputs.write_bands(self.results / f"{stub}_{system.index}.dat", system.kdist, b.numpy())
            if "effmass" in found:
                m = found["effmass"].numpy()
                (self.results / f"{stub.replace('bandStruct', 'effMasses').replace('_BS', '_effMasses')}"
                 f"_{system.index}.dat").write_text(f"vb = {m[0]:.6g}\ncb = {m[1]:.6g}")

    def _write_best(self, params, bands, values, best) -> None:
        outputs.write_parameters(self.results, "best_", self.species, params)
        for atom, vector in zip(self.species, params):
            torch.save(torch.tensor(vector), self.results / f"{atom}bestParams.pt")
        self._write_state("bestBandStruct", bands, values)
        outputs.write_observables(self.results, "best", values, self.observables)
        plots.plot_bands(self.results / "bestBandStruct_plotBS.png", self.setup.systems,
                         [b.numpy() for b in bands], title=f"best (cost {best:.4g})", model_label="Zunger MC")
        self.log(f"Zunger Monte Carlo: best cost {best:.6g}; parameters in best_<atom>Params.dat")
