"""The ``mlpot`` command.

A thin dispatcher: each sub-command lives in ``mlpot/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their command
runs, so ``mlpot --help`` stays fast. Errors derived from :class:`mlpot.errors.MlpotError` are
printed as one short line (file, frame, key and what is wrong) with exit status 2; so are errors of
the operating system (a full disk, a folder that cannot be written), named by their file.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from mlpot import __version__
from mlpot.errors import MlpotError

# command name -> (module, one-line help)
COMMANDS = {
    "train": ("mlpot.commands.train", "train a model from a native YAML, DeePMD input.json, NequIP or MACE-SCF config"),
    "train-nvnmd": ("mlpot.commands.train_nvnmd", "NVNMD's two training stages, continuous (-s s1) then quantised (-s s2) (dp train-nvnmd)"),
    "test": ("mlpot.commands.test", "evaluate a model on a dataset (RMSE/MAE per label, detail files, parity plot)"),
    "freeze": ("mlpot.commands.freeze", "turn a training checkpoint into a standalone model file"),
    "compress": ("mlpot.commands.compress", "tabulate a DeePMD model's embedding nets for faster inference (dp compress)"),
    "package": ("mlpot.commands.package", "a self-contained model file with modifiers and metadata (nequip-package)"),
    "convert": ("mlpot.commands.convert", "convert a peer config (DeePMD, NequIP, MACE-SCF) into native YAML"),
    "data": ("mlpot.commands.data", "inspect datasets (`mlpot data info PATH...`)"),
    "plot": ("mlpot.commands.plot", "plots: loss curves from a debug log, parity plots"),
    "bands": ("mlpot.commands.bands", "neural empirical pseudopotentials: fit, eval, plot band structures"),
    "change-bias": ("mlpot.commands.change_bias", "change or set the per-type energy bias of a model from data or values (dp change-bias)"),
    "model-devi": ("mlpot.commands.model_devi", "model deviation of an ensemble (DeePMD-kit's dp model-devi, model_devi.out)"),
    "neighbor-stat": ("mlpot.commands.neighbor_stat", "min neighbour distance and max neighbours per type (dp neighbor-stat)"),
    "md": ("mlpot.commands.md", "molecular dynamics with ASE (NVE, NVT, NPT): log, extxyz trajectory, energy drift, throughput"),
    "compile": ("mlpot.commands.compile", "compile a model (torch.export + AOTInductor, .pt2) for fast MD in ASE and LAMMPS"),
    "lammps": ("mlpot.commands.lammps", "run a model in LAMMPS (fix external), or write an example input / ML-IAP adapter"),
}


def _load(name: str):
    module_name = COMMANDS[name][0]
    return importlib.import_module(module_name)


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlpot", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlpot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            _load(name).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else "__none__")
    extra = []
    if command in COMMANDS and hasattr(_load(command), "split_arguments"):
        # the command reads options of a peer's command line itself (mlpot train: mace_run_train's)
        argv, extra = _load(command).split_arguments(argv)
    args = parser.parse_args(argv)
    args.extra = extra
    if not args.command:
        parser.print_help()
        return 1
    try:
        return int(_load(args.command).run(args) or 0)
    except MlpotError as exc:
        print(f"mlpot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not mlpot: no space left, no permission, a file removed meanwhile
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mlpot {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlpot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
