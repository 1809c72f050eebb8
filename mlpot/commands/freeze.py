"""``mlpot freeze [CHECKPOINT] -o model.pt [--head TASK]``: turn a training checkpoint into a standalone model file.

``--head TASK`` picks one task of a multi-task checkpoint (as ``dp freeze --head``); the frozen file
is then that task's single-task model. A mace-torch ``.model`` file, or a mace_run_train checkpoint
with ``--mace-options OPTIONS.yaml``, freezes into the mlpot model of the same numbers.

``--lammps-mliap [PATH]`` also writes the ML-IAP unified adapter of the model (default
``<output stem>.mliap.pkl``) for ``pair_style mliap unified PATH 0`` in a LAMMPS built with ML-IAP
and Python (see :mod:`mlpot.calculators.mliap` and docs/md_lammps.md).

CHECKPOINT defaults to the latest checkpoint named in ``./checkpoint`` (DeePMD's pointer file) or
``model.ckpt.pt``; ``-c DIR`` looks in DIR instead (as ``dp freeze -c``). The output loads with
``mlpot.calculators.load_model(path)`` and ``mlpot test``; see :mod:`mlpot.calculators.export`.
"""

from __future__ import annotations

from pathlib import Path

from mlpot.errors import CheckpointError


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=None, help="training checkpoint (default: the latest)")
    parser.add_argument("-c", "--checkpoint-folder", type=Path, default=Path("."), help="folder with the checkpoints")
    parser.add_argument("-o", "--output", type=Path, default=Path("frozen_model.pt"), help="frozen model file")
    parser.add_argument("--head", default=None, help="task of a multi-task checkpoint to freeze (model_dict key)")
    parser.add_argument("--mace-options", default=None,
                        help="options YAML of the run of a mace_run_train checkpoint given as CHECKPOINT")
    parser.add_argument("--lammps-mliap", nargs="?", const="", default=None, metavar="PATH",
                        help="also write the LAMMPS ML-IAP unified adapter (default <output stem>.mliap.pkl)")


def latest_checkpoint(folder: Path) -> Path:
    """The checkpoint named in ``folder/checkpoint``, else ``folder/model.ckpt.pt``."""
    pointer = folder / "checkpoint"
    if pointer.is_file():
        name = pointer.read_text().strip().splitlines()[0].strip()
        name = name.split(":", 1)[1].strip().strip('"') if ":" in name else name
        candidate = folder / name
        if candidate.exists():
            return candidate
    candidate = folder / "model.ckpt.pt"
    if candidate.exists():
        return candidate
    raise CheckpointError("no checkpoint found (no 'checkpoint' pointer file or model.ckpt.pt)", file=str(folder))


def run(args) -> int:
    from mlpot.calculators import freeze

    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(args.checkpoint_folder)
    metadata = freeze(checkpoint, args.output, head=args.head, mace_options=args.mace_options)
    head = f" head {args.head}" if args.head else ""
    print(
        f"froze {checkpoint}{head} (step {metadata['step']}) into {args.output}: type_map {metadata['type_map']}, "
        f"cutoff {metadata['cutoff']} Å, {metadata['num_parameters']} parameters"
    )
    if args.lammps_mliap is not None:
        from mlpot.calculators import load_model
        from mlpot.calculators.mliap import write_mliap

        path = Path(args.lammps_mliap) if args.lammps_mliap else args.output.with_suffix(".mliap.pkl")
        summary = write_mliap(load_model(args.output), path)
        elements = " ".join(summary["element_types"])
        print(f"wrote the ML-IAP adapter {path}: in LAMMPS (built with ML-IAP + Python), "
              f"pair_style mliap unified {path} 0 and pair_coeff * * {elements}")
    return 0
