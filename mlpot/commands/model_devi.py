"""``mlpot model-devi -m M1 M2 ... -s SYSTEM...``: model deviation, as DeePMD-kit's ``dp model-devi``.

Every model (frozen file or checkpoint; ``--head`` picks the task of multi-task checkpoints) is
run on every frame of each system (a DeePMD system, a folder searched for systems, or any file
ASE/extxyz reads, e.g. an MD trajectory). For each system the rows are appended to ``-o``
(default ``model_devi.out``) under a ``# <system>`` line and DeePMD-kit's column line:
step (frame index x ``-f``), max/min/avg_devi_v, max/min/avg_devi_f, devi_e, and with
``--atomic`` the per-atom force deviations. ``--relative L`` / ``--relative_v L`` divide the
force / virial deviations by (|mean| + L). Formulas: :mod:`mlpot.calculators.deviation`.
The output file is rewritten by each run (DeePMD-kit appends to an existing one).
"""

from __future__ import annotations

from pathlib import Path

from mlpot.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("-m", "--models", nargs="+", required=True, help="frozen models or checkpoints (two or more)")
    parser.add_argument("-s", "--system", dest="systems", nargs="+", action="extend", required=True,
                        help="data paths: DeePMD systems, folders searched for them, extxyz/ASE trajectories")
    parser.add_argument("-o", "--output", default="model_devi.out", help="output file (default model_devi.out)")
    parser.add_argument("-f", "--frequency", type=int, default=1, help="MD steps between frames (step column)")
    parser.add_argument("--relative", type=float, default=None,
                        help="relative force deviation: divide by |mean force| + RELATIVE (eV/A)")
    parser.add_argument("--relative_v", "--relative-v", dest="relative_v", type=float, default=None,
                        help="relative virial deviation: divide by |mean virial per atom| + RELATIVE_V (eV)")
    parser.add_argument("--atomic", action="store_true", help="append the force deviation of every atom")
    parser.add_argument("--head", default=None, help="task of multi-task models")
    parser.add_argument("--format", default=None, help="data format (default: detected)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames evaluated together")
    parser.add_argument("--device", default="cpu", help="torch device")


def run(args) -> int:
    from mlpot.calculators import load_model
    from mlpot.calculators.deviation import model_deviation, predict_ensemble, write_model_devi
    from mlpot.data import read_systems

    if len(args.models) < 2:
        raise ConfigError("model deviation needs at least two models", key="models")
    models = [load_model(path, device=args.device, head=args.head) for path in args.models]
    type_map = list(models[0].type_map)
    for path, model in zip(args.models[1:], models[1:]):
        if list(model.type_map) != type_map:
            raise ConfigError(f"{path} has type map {list(model.type_map)}, {args.models[0]} has {type_map}: "
                              "the models must share one", key="models")
    blocks = []  # (system, rows): every system is evaluated before the output is touched
    for frames in read_systems(args.systems, args.format, type_map=type_map):
        name = str(frames.source or "system")
        if len(frames) == 0:
            continue
        prediction = predict_ensemble(models, frames, batch_size=args.batch_size, type_map=type_map)
        try:
            rows = model_deviation(prediction, frequency=args.frequency, relative=args.relative,
                                   relative_v=args.relative_v, atomic=args.atomic)
        except ValueError as exc:
            raise ConfigError(str(exc), file=name, key="atomic") from None
        blocks.append((name, rows))
        print(f"{name}: {len(frames)} frames, max_devi_f up to {rows[:, 4].max():.6e}")
    output = Path(args.output)
    if output.exists():
        output.unlink()  # write_model_devi appends one block per system: start clean
    for name, rows in blocks:
        write_model_devi(output, rows, header=name, atomic=args.atomic)
    print(f"wrote {output}")
    return 0
