"""``mlpot test MODEL DATA...``: evaluate a model on datasets, as DeePMD-kit's ``dp test``.

For each system (a DeePMD system folder, a folder searched for systems, or an extxyz file) it
prints the number of test data and dp test's error lines for the model's kind: Energy /
Energy-per-atom, Force and (periodic frames with labels) Virial and Stress MAE/RMSE for energy
models; ``Dipole``/``Polarizability`` RMSE, RMSE/sqrtN and RMSE/N for tensor models (atomic labels
of the selected types with ``-a``); DOS MAE/RMSE, per atom and (``-a``) atomic, for DOS models;
then a weighted average over all systems. Hessians (``Hessian MAE/RMSE``, ``.h.out``: systems with
hessian.npy) are computed, as by dp test, only for a model trained with a Hessian loss term
(start_pref_h/limit_pref_h; its ``hessian_mode`` record, or DeePMD-kit's ``hessian_mode`` key):
``--hessian`` forces them for any energy model, ``--no-hessian`` skips them (each costs 3N
backward passes per frame). ``-d PREFIX`` writes dp test's detail files (see
:mod:`mlpot.calculators.scoring`); ``--plot PNG`` draws a parity plot of an energy model's files.
DeePMD's options ``-m MODEL`` and ``-s SYSTEM`` are accepted too. MODEL is a frozen model or a
checkpoint, or a mace-torch ``.model`` file or mace_run_train checkpoint (with
``--mace-options`` its options YAML). Predictions stream into the error sums batch by batch (``--batch-size`` frames), with
per-atom work in chunks of ``--atom-chunk`` atoms: memory does not grow with the number of frames.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mlpot.errors import ConfigError

RULE = "# " + "-" * 47


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="*", help="MODEL then DATA... (or use -m and -s)")
    parser.add_argument("-m", "--model", default=None, help="frozen model or checkpoint")
    parser.add_argument("-s", "--system", dest="systems", action="append", default=[], help="data path (repeatable)")
    parser.add_argument("-n", "--numb-test", type=int, default=0, help="frames per system (0 = all)")
    parser.add_argument("-r", "--rand-seed", type=int, default=None, help="seed for --shuffle-test")
    parser.add_argument("--shuffle-test", action="store_true", help="test a random subset of frames")
    parser.add_argument("-d", "--detail-file", default=None, help="prefix of the detail files")
    parser.add_argument("--format", default=None, help="data format (default: detected)")
    parser.add_argument("-a", "--atomic", action="store_true", help="test atomic labels (atomic tensors, atom_dos, "
                        "atomic energies)")
    parser.add_argument("--batch-size", type=int, default=1, help="frames evaluated together")
    parser.add_argument("--atom-chunk", type=int, default=None,
                        help="atoms per recomputed chunk of per-atom work (default 32; 0: whole frames)")
    parser.add_argument("--plot", type=Path, default=None, help="write a parity plot PNG")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--mace-options", default=None,
                        help="options YAML of the run of a mace_run_train checkpoint given as MODEL")
    parser.add_argument("--hessian", action=argparse.BooleanOptionalAction, default=None,
                        help="compare Hessians with hessian.npy (3N backward passes per frame); default: only for "
                        "a model trained with a Hessian loss term (its hessian_mode, as dp test)")
    parser.add_argument("--min-distance", type=float, default=None, metavar="ANGSTROM",
                        help="atoms closer than this are an error naming file, frame and atoms (default 0.3 Å; 0: no check)")


def _model_and_data(args):
    paths = list(args.paths)
    model = args.model or (paths.pop(0) if paths else None)
    systems = paths + list(args.systems)
    if model is None or not systems:
        raise ConfigError("give a model and at least one data path: mlpot test MODEL DATA...", key="paths")
    return model, systems


def run(args) -> int:
    from mlpot.calculators import load_model
    from mlpot.calculators.evaluate import (
        DEFAULT_ATOM_CHUNK, DetailWriter, evaluate_frames, format_report, system_errors, weighted_average,
    )
    from mlpot.data import FrameList, read_systems

    model_path, data_paths = _model_and_data(args)
    model = load_model(model_path, device=args.device, mace_options=args.mace_options)
    detail = args.detail_file
    if detail is None and args.plot is not None:
        detail = str(Path(tempfile.mkdtemp(prefix="mlpot_test_")) / "detail")
    if detail is not None:
        for old in Path(detail).parent.glob(Path(detail).name + ".*.out"):
            old.unlink()  # stale files of labels this run lacks would enter the parity plot
    atom_chunk = DEFAULT_ATOM_CHUNK if args.atom_chunk is None else args.atom_chunk
    rng = np.random.default_rng(args.rand_seed)
    all_errors, per_system_only, footer, n_frames = [], set(), [], 0
    start = time.perf_counter()
    details = DetailWriter(detail) if detail is not None else None
    for group, frames in enumerate(read_systems(data_paths, args.format, type_map=model.type_map)):
        if args.shuffle_test:
            frames = FrameList([frames[i] for i in rng.permutation(len(frames))], frames.type_map, frames.source)
        if args.numb_test > 0:
            frames = frames[: args.numb_test]
        name = frames.source or "system"
        result = evaluate_frames(model, frames, name, batch_size=args.batch_size, atomic=args.atomic,
                                 details=details, group=group, atom_chunk=atom_chunk, min_distance=args.min_distance,
                                 hessian=args.hessian)
        errors = system_errors(result)
        all_errors.append(errors)
        per_system_only |= result.per_system_only
        footer += [line for line in result.footer if line not in footer]
        n_frames += len(frames)
        header = ["-" * 15 + "output of dp test" + "-" * 15, f"testing system : {name}",
                  f"number of test data : {len(frames)}"] + list(result.notes)
        print("\n".join(format_report(errors, header=header, footer=result.footer) + [RULE]))
    elapsed = time.perf_counter() - start
    header = ["-" * 10 + "weighted average of errors" + "-" * 11, f"number of systems : {len(all_errors)}"]
    average = weighted_average(all_errors, exclude=per_system_only)
    print("\n".join(format_report(average, header=header, footer=footer) + [RULE]))
    print(f"# evaluated in {elapsed:.2f} s" + (f" ({elapsed / n_frames:.4f} s per frame)" if n_frames else ""))
    if args.plot is not None:
        from mlpot.commands.plot import parity_panels, plot_parity

        print(f"wrote {plot_parity(parity_panels(detail), args.plot)}")
    return 0
