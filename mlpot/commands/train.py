"""``mlpot train CONFIG [--restart CKPT] [--init-model CKPT] [--finetune MODEL [--model-branch B|RANDOM]
[--use-pretrain-script]] [--output-dir DIR] [--force] [--no-progress]``.

CONFIG is a native YAML, or a peer config (DeePMD-kit ``input.json``/``.yaml``) converted on the
fly by ``mlpot convert``'s front-ends. Launch with ``torchrun --nproc-per-node N -m mlpot.cli train
CONFIG`` for data-parallel training. ``--restart`` resumes exactly (use ``latest`` for the newest
checkpoint in the output folder; without one, that is an error, never a silent start from
scratch); ``--init-model`` takes only the weights (step 0, fresh optimizer).
``--finetune`` starts from a pretrained model with the input's type_map (a subset of the pretrained
one) and a change-by-statistic of the energy bias on the new data (the model family's
``prepare_finetune`` hook; DeePMD: :mod:`mlpot.models.deepmd.finetune`).
After training the last checkpoint is frozen to ``model.pt`` (multi-task: ``model_<task>.pt`` per head).

The output folder is claimed first (:mod:`mlpot.training.run_folder`): writable, locked for this
run, and refused when it holds an earlier run's results unless ``--restart`` or ``--force``. Errors
name the config file and, for a peer config, the key as written there (:func:`mlpot.errors.in_file`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mlpot.errors import ConfigError, KeyMap, in_file


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="native YAML or DeePMD input.json/.yaml")
    parser.add_argument("--restart", default=None,
                        help="checkpoint to resume exactly ('latest': the newest in the output folder; an error "
                             "when there is none)")
    parser.add_argument("--init-model", default=None, help="checkpoint or frozen model to take the weights from")
    parser.add_argument("--finetune", default=None,
                        help="pretrained checkpoint or frozen model to fine-tune (DeePMD dp train --finetune)")
    parser.add_argument("--model-branch", default=None,
                        help="head of a multi-task pretrained model, or RANDOM to re-initialise the fitting net")
    parser.add_argument("--use-pretrain-script", action="store_true",
                        help="take the model section from the pretrained model (type_map from the input)")
    parser.add_argument("--output-dir", type=Path, default=None, help="override output_dir of the config")
    parser.add_argument("--force", action="store_true",
                        help="start a new run in an output folder that holds an earlier run's results "
                             "(its checkpoints are removed, its logs overwritten)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_any_config(path: Path, keys: Optional[KeyMap] = None):
    """Native config of ``path``: native YAML validated directly, peer configs converted first.

    A missing, empty, binary or malformed file is an error saying so. ``keys`` receives the key
    translations of a peer config (native key -> the key in the file), for located errors later.
    """
    from mlpot.config import deepmd, load_config, read_yaml, validate_config

    content = read_yaml(path, finite=False)  # the values are checked when the file is read as its kind
    if path.suffix == ".json" or deepmd.is_deepmd_config(content):
        from mlpot.commands.convert import convert_file

        native = convert_file(path, keys)
        with in_file(path, keys):
            return validate_config(native, file=str(path), base_dir=Path.cwd())
    return load_config(path)


def _restart_checkpoint(restart: Optional[str], config) -> Optional[str]:
    """``--restart``'s checkpoint; ``latest`` is the newest in the output folder, an error if none."""
    if restart != "latest":
        return restart
    from mlpot.training.checkpoint import CheckpointManager

    cp = config.checkpoint
    folder = Path(config.output_dir) / cp.dir
    latest = CheckpointManager(folder, cp.prefix, cp.keep).latest()
    if latest is None:
        raise ConfigError(f"no checkpoint {cp.prefix}-<step>.pt in {folder} to resume from; run without "
                          "--restart to start a new run", key="--restart")
    return str(latest)


def run(args) -> int:
    from mlpot.training.run_folder import claim_output_folder

    keys = KeyMap()
    with in_file(args.config, keys):
        config = load_any_config(args.config, keys)
        if args.output_dir is not None:
            config.output_dir = str(args.output_dir.resolve())
        restart = _restart_checkpoint(args.restart, config)
        main = int(os.environ.get("RANK", "0")) == 0
        with claim_output_folder(config, resuming=restart is not None, force=args.force, main=main) as folder:
            return _train(args, config, restart, folder)


def _train(args, config, restart: Optional[str], folder) -> int:
    from mlpot.calculators.export import freeze, load_model
    from mlpot.training.trainer import Trainer

    init_weights = load_model(args.init_model).state_dict() if args.init_model else None
    finetune = args.finetune if restart is None else None
    if finetune:
        from mlpot.models.registry import family_of

        if args.init_model:
            raise ConfigError("--finetune and --init-model exclude each other", key="--finetune")
        family = family_of(config.model)
        if family.prepare_finetune is None:
            raise ConfigError(f"not supported yet: --finetune with a {family.name} model", key="--finetune")
        plan = family.prepare_finetune(config, load_model(finetune), branch=args.model_branch,
                                       use_pretrain_script=args.use_pretrain_script, file=str(args.config),
                                       pretrained_file=str(finetune))
        init_weights = plan.weights
    trainer = Trainer(config, restart=restart, init_weights=init_weights, progress=not args.no_progress,
                      file=str(args.config))
    if finetune:
        plan.after_statistics(trainer.model, trainer.data.stat_samples,
                              trainer._write if trainer.dist.is_main else (lambda line: None))
    folder.start()  # set-up done: --force now removes the earlier run's checkpoints
    trainer.run()
    if trainer.dist.is_main:
        # the frozen model of the checkpoint this run wrote last (EMA weights when EMA is on), not
        # the highest-numbered file in the folder, which may be a stale one from an earlier run
        checkpoint = trainer.last_checkpoint or trainer.checkpoints.latest()
        if config.tasks is None:
            freeze(checkpoint, Path(config.output_dir) / "model.pt")
        else:  # multi-task: one frozen single-task model per head
            for task in config.tasks:
                freeze(checkpoint, Path(config.output_dir) / f"model_{task}.pt", head=task)
    trainer.dist.shutdown()
    return 0
