"""``mlpot train CONFIG [--restart CKPT] [--init-model CKPT] [--finetune MODEL [--model-branch B|RANDOM]
[--use-pretrain-script]] [--output-dir DIR] [--no-progress]``.

CONFIG is a native YAML, or a peer config (DeePMD-kit ``input.json``/``.yaml``) converted on the
fly by ``mlpot convert``'s front-ends. Launch with ``torchrun --nproc-per-node N -m mlpot.cli train
CONFIG`` for data-parallel training. ``--restart`` resumes exactly (use ``latest`` for the newest
checkpoint in the output folder); ``--init-model`` takes only the weights (step 0, fresh optimizer).
``--finetune`` starts from a pretrained model with the input's type_map (a subset of the pretrained
one) and a change-by-statistic of the energy bias on the new data (the model family's
``prepare_finetune`` hook; DeePMD: :mod:`mlpot.models.deepmd.finetune`).
After training the last checkpoint is frozen to ``model.pt`` (multi-task: ``model_<task>.pt`` per head).
"""

from __future__ import annotations

from pathlib import Path

from mlpot.errors import ConfigError


# mlpot train's own options and whether each takes a value; with --config the rest are run_train options
_OWN_OPTIONS = {"--restart": True, "--init-model": True, "--finetune": True, "--model-branch": True,
                "--use-pretrain-script": False, "--output-dir": True, "--no-progress": False, "--config": True}


def split_peer_options(argv):
    """(mlpot's arguments, MACE-SCF run_train options) of ``mlpot train --config config.yaml ...``;
    without ``--config`` everything is mlpot's."""
    if "--config" not in argv:
        return argv, []
    own, peer, index = [], [], 0
    while index < len(argv):
        token = argv[index]
        name = token.split("=", 1)[0]
        if name in _OWN_OPTIONS or token == "train":
            takes = _OWN_OPTIONS.get(name, False) and "=" not in token
            own += argv[index:index + 1 + int(takes)]
            index += 1 + int(takes)
        else:
            peer.append(token)
            index += 1
    return own, peer


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, nargs="?", help="native YAML or DeePMD input.json/.yaml")
    parser.add_argument("--config", dest="peer_config", type=Path, default=None,
                        help="MACE-SCF config.yaml; any run_train option (--model FixedPoint, --train_file, ...) may follow")
    parser.add_argument("--restart", default=None,
                        help="checkpoint to resume exactly ('latest': the newest in the output folder)")
    parser.add_argument("--init-model", default=None, help="checkpoint or frozen model to take the weights from")
    parser.add_argument("--finetune", default=None,
                        help="pretrained checkpoint or frozen model to fine-tune (DeePMD dp train --finetune)")
    parser.add_argument("--model-branch", default=None,
                        help="head of a multi-task pretrained model, or RANDOM to re-initialise the fitting net")
    parser.add_argument("--use-pretrain-script", action="store_true",
                        help="take the model section from the pretrained model (type_map from the input)")
    parser.add_argument("--output-dir", type=Path, default=None, help="override output_dir of the config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_any_config(path: Path, peer_options=None):
    """Native config of ``path``: native YAML validated directly, peer configs converted first.

    peer_options: MACE-SCF run_train options (with ``--config path``, or a MACE-SCF YAML alone)."""
    from mlpot.config import deepmd, load_config, macescf, read_yaml, validate_config

    if peer_options is not None or (path.exists() and path.suffix in (".yaml", ".yml") and macescf.is_macescf_config(path)):
        native, notes = macescf.convert_run_train(list(peer_options or []), str(path))
        for note in notes:
            print(f"note: {note}")
        return validate_config(native, file=str(path), base_dir=Path.cwd())
    if path.suffix == ".json" or (path.exists() and deepmd.is_deepmd_config(path)):
        from mlpot.commands.convert import convert_file

        native = convert_file(path)
        return validate_config(native, file=str(path), base_dir=Path.cwd())
    read_yaml(path)  # a clear error for a missing or malformed file
    return load_config(path)


def run(args) -> int:
    from mlpot.training.trainer import Trainer

    if args.peer_config is not None:
        config = load_any_config(args.peer_config, args.peer_options)
    elif args.config is None:
        raise ConfigError("give a config file (or --config config.yaml with MACE-SCF run_train options)", key="config")
    else:
        config = load_any_config(args.config)
    if args.output_dir is not None:
        config.output_dir = str(args.output_dir.resolve())
    restart = args.restart
    if restart == "latest":
        from mlpot.training.checkpoint import CheckpointManager

        cp = config.checkpoint
        latest = CheckpointManager(Path(config.output_dir) / cp.dir, cp.prefix, cp.keep).latest()
        restart = str(latest) if latest else None
    from mlpot.calculators.export import freeze, load_model

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
