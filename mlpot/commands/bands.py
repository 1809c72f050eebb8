"""``mlpot bands``: neural empirical pseudopotentials from DeePseudopot input folders.

    mlpot bands fit  INPUTS_DIR RESULTS_DIR      run the whole DeePseudopot flow (pre-fit, training or MC)
    mlpot bands eval INPUTS_DIR RESULTS_DIR [--model PPmodel.pth] [--tag eval]
    mlpot bands plot INPUTS_DIR RESULTS_DIR [--tag final]

``eval`` writes ``<tag>_BS_sysX.dat`` + ``<tag>_plotBS.png`` and prints loss and weighted RMSE per
system (analytic Zunger bands without ``--model``); ``plot`` redraws band plots from the
``<tag>_BS_sysX.dat`` files of a results folder and the cost curves found there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bands_command", metavar="ACTION", required=True)
    fit = sub.add_parser("fit", help="fit v(q) to the reference bands of an inputs folder")
    evaluate = sub.add_parser("eval", help="evaluate band structures of a model (or the analytic form)")
    plot = sub.add_parser("plot", help="redraw band and cost plots of a results folder")
    for p in (fit, evaluate, plot):
        p.add_argument("inputs", type=Path, metavar="INPUTS_DIR", help="DeePseudopot inputs folder (NN_config.par ...)")
        p.add_argument("results", type=Path, metavar="RESULTS_DIR", help="results folder")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    evaluate.add_argument("--model", type=Path, default=None, help="PPmodel state_dict (.pth); default analytic")
    evaluate.add_argument("--tag", default="eval", help="prefix of the written files")
    plot.add_argument("--tag", default="final", help="prefix of the band files to plot")


def run(args) -> int:
    from mlpot.bands import outputs
    from mlpot.bands.engine import AnalyticFormFactor
    from mlpot.bands.fit import BandFit
    from mlpot.bands.inputs import read_bands_table
    from mlpot.bands.setup import load_model_state, load_setup

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.bands_command == "fit":
        BandFit(args.inputs, args.results, quiet=args.quiet).run()
        return 0
    setup = load_setup(args.inputs)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.bands_command == "eval":
        model = AnalyticFormFactor(setup.params)
        if args.model is not None:
            model = setup.new_model()
            load_model_state(model, args.model)
            model.eval()
        bands = setup.problem.evaluate(model)
        for system, b, ref, kw, bw in zip(setup.systems, bands, setup.problem.references, setup.problem.kweights,
                                         setup.problem.band_weights):
            outputs.write_bands(args.results / f"{args.tag}_BS_sys{system.index}.dat", system.kdist, b.numpy())
            print(f"system {system.index}: weighted RMSE {_rmse(b, ref, kw, bw):.5f} eV, "
                  f"max |dE| {float((b - ref).abs().max()):.5f} eV")
        print(f"total loss {setup.problem.loss_of(bands):.6g} eV^2, weighted RMSE {setup.problem.rmse_of(bands):.5f} eV")
        outputs.plot_bands(args.results / f"{args.tag}_plotBS.png", setup.systems, [b.numpy() for b in bands],
                           title=args.tag)
        return 0
    bands = [read_bands_table(args.results / f"{args.tag}_BS_sys{s.index}.dat", s.n_bands, len(s.kweights))[1]
             for s in setup.systems]
    outputs.plot_bands(args.results / f"{args.tag}_plotBS.png", setup.systems, bands, title=args.tag)
    curves = {}
    for name in ("final_training_cost", "final_validation_cost", "final_mc_cost"):
        path = args.results / f"{name}.dat"
        if path.is_file():
            import numpy as np

            data = np.atleast_2d(np.loadtxt(path))
            curves[name] = [(row[0], row[1]) for row in data]
    if curves:
        outputs.plot_cost(args.results / "final_train_cost.png", curves)
    print(f"wrote {args.results / (args.tag + '_plotBS.png')}")
    return 0


def _rmse(bands, ref, kweights, band_weights) -> float:
    from mlpot.bands.loss import weighted_rmse

    return weighted_rmse(bands.numpy(), ref.numpy(), kweights.numpy(), band_weights.numpy())
