"""``mlpot compress [-i MODEL] [-o OUTPUT] [-s STEP] [-e EXTRAPOLATE] [-f FREQUENCY] [-t SCRIPT]``: DeePMD-kit's ``dp compress``.

Tabulates the embedding nets of a DeePMD model's descriptor (se_e2_a, se_e2_r, se_e3, se_atten /
se_atten_v2 with attn_layer 0 in strip mode; hybrids of them) as piecewise quintic polynomials
(``mlpot.models.deepmd.compression``) and writes a frozen model that loads wherever a frozen model
does. MODEL defaults to ``frozen_model.pth`` (DeePMD-kit PT's name), else ``frozen_model.pt``
(``mlpot freeze``'s). The table range needs the smallest neighbour distance of the training data
(min_nbor_dist): ``--min-nbor-dist`` (Å) gives it; else, as ``dp compress``, the value the model
file stores (its training record: mlpot's files of a training that ran its neighbour statistics, i.e.
without ``--skip-neighbor-stat``, and DeePMD-kit's files); else the one computed from the training
systems of ``-t`` (a DeePMD-kit input.json or native YAML).
"""

from __future__ import annotations

from pathlib import Path

from mlpot.errors import ConfigError

DEFAULT_INPUTS = ("frozen_model.pth", "frozen_model.pt")


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--input", default=None,
                        help=f"model to compress (default: {' or '.join(DEFAULT_INPUTS)})")
    parser.add_argument("-o", "--output", type=Path, default=Path("frozen_model_compressed.pt"), help="compressed model")
    parser.add_argument("-s", "--step", type=float, default=0.01,
                        help="step of the fine table (normalised s~ units); the coarse table uses 10 x step")
    parser.add_argument("-e", "--extrapolate", type=float, default=5,
                        help="the coarse table reaches extrapolate x the upper bound of the fine table")
    parser.add_argument("-f", "--frequency", type=int, default=-1,
                        help="check the table range every that many evaluations (-1: never)")
    parser.add_argument("-t", "--training-script", default=None,
                        help="training input (input.json or native YAML): its training data give min_nbor_dist")
    parser.add_argument("--head", "--model-branch", default=None,
                        help="task of a multi-task model to compress (its single-task model is written)")
    parser.add_argument("--min-nbor-dist", type=float, default=None,
                        help="smallest neighbour distance of the training data, Å (instead of -t)")


def training_systems(script: Path):
    """The training system paths of ``script``: a DeePMD-kit input's training/training_data/systems
    (read as dp compress does, the rest of the input unchecked), else a native YAML's data.train.paths."""
    from mlpot.config import load_config, read_yaml
    from mlpot.config._deepmd_sections import resolve_systems

    if not Path(script).is_file():
        raise ConfigError(f"training script {script} not found", key="--training-script")
    content = read_yaml(script, finite=False)
    training = content.get("training") if isinstance(content, dict) else None
    if isinstance(training, dict) and isinstance(training.get("training_data"), dict):
        return resolve_systems(training["training_data"].get("systems"), Path(script).resolve().parent,
                               ["training", "training_data", "systems"], str(script),
                               training["training_data"].get("rglob_patterns"))
    config = load_config(script)
    if config.data is None:
        raise ConfigError("no training data (multi-task inputs: give --min-nbor-dist)", file=str(script), key="data")
    return config.data.train.paths


def training_min_nbor_dist(script: Path, rcut: float, type_map) -> float:
    """The smallest neighbour distance (Å, within ``rcut``) of the training systems of ``script``."""
    from mlpot.commands.neighbor_stat import neighbor_stat

    distance, _, _ = neighbor_stat(training_systems(script), rcut, type_map)
    if distance is None:
        raise ConfigError(f"no two atoms of the training data are closer than rcut = {rcut} Å", file=str(script))
    return float(distance)


def stored_min_nbor_dist(path: Path, head=None):
    """The ``min_nbor_dist`` (Å) the model file stores (what ``dp compress`` reads first), or None: the
    model's training record (``mlpot.models.record``), read from mlpot's checkpoints and frozen files
    of a training that ran its neighbour statistics and from DeePMD-kit's frozen models (.pth, TF .pb)
    and checkpoints."""
    from mlpot.calculators import load_model

    return getattr(load_model(path, head=head), "min_nbor_dist", None)


def _input(args) -> Path:
    if args.input is not None:
        return Path(args.input)
    for name in DEFAULT_INPUTS:
        if Path(name).exists():
            return Path(name)
    raise ConfigError(f"no model given and none of {', '.join(DEFAULT_INPUTS)} here", key="--input")


def run(args) -> int:
    from mlpot.calculators import load_model
    from mlpot.calculators.compress import compress

    source = _input(args)
    min_nbor_dist = args.min_nbor_dist
    if min_nbor_dist is None:
        model = load_model(source, head=args.head)
        min_nbor_dist = getattr(model, "min_nbor_dist", None)
    if min_nbor_dist is None:
        if args.training_script is None:
            raise ConfigError("the model does not store min_nbor_dist (trained with --skip-neighbor-stat, or by an "
                              "older mlpot): give the training script (-t input.json, whose training data give it) "
                              "or --min-nbor-dist", key="--training-script")
        min_nbor_dist = training_min_nbor_dist(Path(args.training_script), float(model.cutoff), list(model.type_map))
    metadata = compress(source, args.output, min_nbor_dist, step=args.step, extrapolate=args.extrapolate,
                        frequency=args.frequency, head=args.head)
    print(f"compressed {source} into {args.output}: min_nbor_dist {min_nbor_dist:.6f} Å, table_config "
          f"{metadata['compress']['table_config']} (extrapolate, step, coarse step, check frequency), "
          f"{metadata['num_parameters']} parameters left")
    return 0
