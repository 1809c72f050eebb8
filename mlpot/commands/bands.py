"""``mlpot bands``: neural empirical pseudopotentials from DeePseudopot input folders or native YAML.

    mlpot bands fit  CONFIG RESULTS_DIR [--restart] [--epochs N] [--quiet] [--threads N]
    mlpot bands eval CONFIG RESULTS_DIR [--model PPmodel.pth] [--tag eval]
    mlpot bands plot CONFIG RESULTS_DIR [--tag final]
    mlpot bands zunger-mc CONFIG RESULTS_DIR [--opts mcOpts1.par]

CONFIG is a DeePseudopot inputs folder (``NN_config.par`` + per-system files) or a native band YAML
(``mlpot convert INPUTS_DIR`` writes one). ``eval`` writes ``<tag>_BS_sysX.dat`` + ``<tag>_plotBS.png``
and prints loss and weighted RMSE per system, of ``--model`` or else of the starting potential (the
tabulated ``init_qSpace_pot.par`` when present, the analytic Zunger form otherwise); ``plot`` redraws
band plots and cost curves of a results folder; ``zunger-mc`` runs the Zunger-parameter Monte Carlo
driver (``mcOpts*.par``, ``<atom>ParamSteps.par``).
"""

from __future__ import annotations

from mlpot.errors import ConfigError

import argparse
import sys
from pathlib import Path

import torch

__all__ = ["add_arguments", "run", "load_band_config"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bands_command", metavar="ACTION", required=True)
    fit = sub.add_parser("fit", help="fit v(q) to the reference bands")
    evaluate = sub.add_parser("eval", help="band structures of a model (or of the starting potential)")
    plot = sub.add_parser("plot", help="redraw band and cost plots of a results folder")
    zmc = sub.add_parser("zunger-mc", help="Monte Carlo fit of the Zunger parameters (mcOpts*.par)")
    for p in (fit, evaluate, plot, zmc):
        p.add_argument("inputs", type=Path, metavar="CONFIG", help="DeePseudopot inputs folder or native band YAML")
        p.add_argument("results", type=Path, metavar="RESULTS_DIR", help="results folder")
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: num_threads or torch's)")
    for p in (fit, zmc):
        p.add_argument("--quiet", action="store_true", help="no progress lines or bar on the terminal")
    fit.add_argument("--restart", action="store_true", help="continue from the newest checkpoint in RESULTS_DIR")
    fit.add_argument("--epochs", type=int, default=None, help="override max_num_epochs / training.epochs")
    evaluate.add_argument("--model", type=Path, default=None, help="PPmodel state_dict (.pth)")
    evaluate.add_argument("--tag", default="eval", help="prefix of the written files")
    plot.add_argument("--tag", default="final", help="prefix of the band files to plot")
    zmc.add_argument("--opts", default=None, help="mcOpts file in the inputs folder (default: the only mcOpts*.par)")


def load_band_config(path: Path):
    """(native config, notes) of a DeePseudopot folder or a native band YAML."""
    from mlpot.bands.native import validate_bands_config
    from mlpot.config import deepseudopot, read_yaml

    if deepseudopot.is_deepseudopot_inputs(path):
        return deepseudopot.convert(path)
    path = Path(path)
    if path.is_dir():
        raise ConfigError("a folder without NN_config.par: neither a DeePseudopot inputs folder nor a native band "
                          "config (YAML)", file=str(path))
    return validate_bands_config(read_yaml(path), file=str(path), base_dir=path.resolve().parent), []


def _evaluate(args, setup) -> int:
    import numpy as np

    from mlpot.bands import outputs, plots
    from mlpot.bands.setup import load_model_state

    model, label = setup.reference_potential(), setup.reference_name
    if args.model is not None:
        model, label = setup.new_model(), "model"
        load_model_state(model, args.model)
        model.eval()
    problem = setup.problem
    bands = problem.evaluate(model)
    for i, (system, b, error) in enumerate(zip(setup.systems, bands, problem.errors_of(bands))):
        outputs.write_bands(args.results / f"{args.tag}_BS_sys{system.index}.dat", system.kdist, b.numpy())
        relative = "" if problem.rel_bands[i] is None else f" (relative to band {problem.rel_bands[i]})"
        print(f"{system.name} (system {system.index}): weighted RMSE {problem.rmse_of(bands, i):.5f} eV, "
              f"max |dE| {np.abs(error).max():.5f} eV{relative}")
    print(f"{label}: total loss {problem.loss_of(bands):.6g} eV², weighted RMSE {problem.rmse_of(bands):.5f} eV")
    plots.plot_bands(args.results / f"{args.tag}_plotBS.png", setup.systems, [b.numpy() for b in bands],
                     title=args.tag, model_label=label)
    if any(o is not None for o in problem.observables):
        found = problem.observables_pass(model, grad=False)
        outputs.write_observables(args.results, args.tag, found["values"], problem.observables)
    return 0


def _plot(args, setup) -> int:
    import numpy as np

    from mlpot.bands import plots
    from mlpot.bands.inputs import read_bands_table

    bands = [read_bands_table(args.results / f"{args.tag}_BS_sys{s.index}.dat", s.n_bands, len(s.kweights))[1]
             for s in setup.systems]
    plots.plot_bands(args.results / f"{args.tag}_plotBS.png", setup.systems, bands, title=args.tag)
    curves = {}
    for name in ("final_training_cost", "final_validation_cost", "final_mc_cost"):
        path = args.results / f"{name}.dat"
        if path.is_file() and path.stat().st_size and np.loadtxt(path).size:
            data = np.atleast_2d(np.loadtxt(path))
            curves[name] = [(row[0], row[1]) for row in data]
    if curves:
        plots.plot_cost(args.results / "final_train_cost.png", curves)
    print(f"wrote {args.results / (args.tag + '_plotBS.png')}")
    return 0


def _set_epochs(config, epochs: int, inputs) -> None:
    """``--epochs`` as the training length; a config that cannot train that long (no learning rate)
    is a ConfigError naming the option, not a validation traceback."""
    try:
        config.training.epochs = epochs
    except ValueError as exc:  # pydantic's ValidationError of the assignment
        reason = "; ".join(str(e.get("msg", e)).removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"{reason}: give a learning rate (optimizer_lr in NN_config.par, training.lr in a native "
                          "config)", file=str(inputs), key="--epochs") from None


def run(args) -> int:
    from mlpot.bands.setup import load_setup

    config, notes = load_band_config(args.inputs)
    if args.threads:
        config.runtime.threads = args.threads
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    if args.bands_command == "fit":
        from mlpot.bands.fit import BandFit

        if args.epochs is not None:
            _set_epochs(config, args.epochs, args.inputs)
        BandFit(config, args.results, notes, quiet=args.quiet, restart=args.restart).run()
        return 0
    if args.bands_command == "zunger-mc":
        from mlpot.bands.fit import FitLog
        from mlpot.bands.zunger_mc import ZungerMonteCarlo, find_mc_opts

        opts = find_mc_opts(Path(config.inputs), args.opts)
        args.results.mkdir(parents=True, exist_ok=True)
        log = FitLog(args.results, args.quiet, config.runtime.progress_bar)
        try:
            driver = ZungerMonteCarlo(config, args.results, opts, log=log)
            bar = log.bar(driver.opts["totalIter"], "Zunger Monte Carlo")
            driver.run(progress=bar)
            bar.close()
        finally:
            log.close()
        return 0
    config.runtime.workers = 0
    setup = load_setup(config, notes)
    for note in setup.notes:
        print(f"note: {note}", file=sys.stderr)
    args.results.mkdir(parents=True, exist_ok=True)
    return _evaluate(args, setup) if args.bands_command == "eval" else _plot(args, setup)
