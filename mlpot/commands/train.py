"""``mlpot train CONFIG [-r/--restart CKPT | -i/--init-model CKPT | -f/--init-frz-model MODEL |
-t/--finetune MODEL [--model-branch B|RANDOM]] [--use-pretrain-script] [--force-load] [-o/--output
out.json] [--skip-neighbor-stat] [-l/--log-path FILE] [-v/--log-level L] [-m/--mpi-log master]
[--output-dir DIR] [--force] [--no-progress]``, or ``mlpot train --config mace.yaml [--<mace_run_train
option> VALUE ...]``.

Every option of DeePMD-kit 3.2's ``dp train`` works as there (:mod:`mlpot.commands._dp_train`: what
each maps to, and the few not built, each an error "not supported yet: <option>").

CONFIG is a native YAML, or a peer config (DeePMD-kit ``input.json``/``.yaml``, a NequIP 0.19 YAML,
a YAML of mace_run_train options, a MACE-SCF config.yaml) converted on the fly by ``mlpot
convert``'s front-ends. NequIP users' habits work too: ``mlpot train -cn config.yaml`` (``-cp DIR``
for its folder) and Hydra overrides after it (``trainer.max_epochs=3``, ``++ckpt_path=last.pt`` to
resume); a config's ``finetune`` (NequIP's ``ModelFromCheckpoint`` / ``ModelFromPackage``) works as
``--finetune``. ``--config FILE`` and any other ``--option value`` are mace_run_train's
(``mlpot.config.mace``), or MACE-SCF run_train's when the file has ``heads`` and ``train_schedule``
or ``--model`` names a MACE-SCF electrostatic model (``mlpot.config.macescf``). Of mace_run_train's
options ``restart_latest``, ``foundation_model`` (as ``--finetune``), ``test_file`` (evaluated after
training) and ``name`` (the frozen model is also written as ``<model_dir>/<name>.pt``) apply to
the run. Launch with ``torchrun --nproc-per-node N -m mlpot.cli train CONFIG`` for data-parallel
training. ``--restart`` resumes exactly (use ``latest`` for the newest
checkpoint in the output folder; without one, that is an error, never a silent start from
scratch); ``--init-model`` takes only the weights (step 0, fresh optimizer). An output folder
holding an earlier run's results is refused unless ``--restart`` or ``--force``
(:mod:`mlpot.training.run_folder`).
``--finetune`` starts from a pretrained model with the input's type_map (a subset of the pretrained
one) and a change-by-statistic of the energy bias on the new data (the model family's
``prepare_finetune`` hook; DeePMD: :mod:`mlpot.models.deepmd.finetune`).
After training the last checkpoint is frozen to ``model.pt`` (multi-task: ``model_<task>.pt`` per head).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mlpot.commands import _dp_train as dp
from mlpot.errors import ConfigError, KeyMap, in_file


_OWN_VALUED = {"--restart", "--init-model", "--finetune", "--model-branch", "--output-dir", "--config", "--mace-options",
               "-cn", "--config-name", "-cp", "--config-path"} | dp.VALUED
_OWN_FLAGS = {"--use-pretrain-script", "--no-progress", "--force", "-h", "--help"} | dp.FLAGS


def split_arguments(argv):
    """(mlpot's own arguments, mace_run_train's): an unknown ``--option`` and the values after it
    belong to mace_run_train (``mlpot.cli`` hands them over as ``args.extra``)."""
    own, extra = [], []
    values_to = None  # where a value that follows an option goes
    for token in argv:
        name = token.split("=", 1)[0]
        if name in _OWN_VALUED or name in _OWN_FLAGS:
            own.append(token)
            values_to = own if name in _OWN_VALUED and "=" not in token else None
        elif token.startswith("--"):
            extra.append(token)
            values_to = extra
        else:  # the value of the previous option, or a positional argument of mlpot
            (values_to if values_to is not None else own).append(token)
            values_to = None if values_to is own else values_to
    return own, extra


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="native YAML, DeePMD input.json/.yaml, NequIP YAML or a YAML of mace_run_train options")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides of a NequIP config (key=value, ++key=value)")
    parser.add_argument("-cn", "--config-name", default=None, help="config file (NequIP's nequip-train -cn)")
    parser.add_argument("-cp", "--config-path", default=None, help="folder of --config-name")
    parser.add_argument("--config", dest="mace_config", type=Path, default=None,
                        help="YAML of mace_run_train options (other --options as mace_run_train takes them)")
    dp.add_arguments(parser)
    parser.add_argument("--model-branch", default=None,
                        help="head of a multi-task pretrained model, or RANDOM to re-initialise the fitting net")
    parser.add_argument("--use-pretrain-script", action="store_true",
                        help="take the model section from the pretrained model (--finetune: type_map from the "
                             "input; --init-model/--init-frz-model: that model's whole section)")
    parser.add_argument("--output-dir", type=Path, default=None, help="override output_dir of the config")
    parser.add_argument("--mace-options", default=None,
                        help="options YAML of the mace_run_train checkpoint given to --finetune / --init-model")
    parser.add_argument("--force", action="store_true",
                        help="start a new run in an output folder that holds an earlier run's results "
                             "(its checkpoints are removed, its logs overwritten)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_any_config(path: Path, overrides=(), output_dir=None, keys: Optional[KeyMap] = None):
    """Native config of ``path``: native YAML validated directly, peer configs converted first. Returns
    (config, restart checkpoint named by a NequIP ``++ckpt_path`` or None).

    A missing, empty, binary or malformed file is an error saying so. ``keys`` receives the key
    translations of a DeePMD config (native key -> the key in the file), for located errors later.
    """
    from mlpot.config import deepmd, load_config, nequip, read_yaml, validate_config

    content = read_yaml(path, finite=False)  # the values are checked when the file is read as its kind
    if nequip.is_nequip_config(content):
        native, notes, restart = nequip.convert(path, overrides, output_dir=output_dir)
        for note in notes:
            print(f"note: {note}")
        return validate_config(native, file=str(path), base_dir=Path.cwd()), restart
    if overrides:
        raise ConfigError(f"overrides {list(overrides)} apply to NequIP configs only", file=str(path))
    if path.suffix == ".json" or deepmd.is_deepmd_config(content):
        from mlpot.commands.convert import convert_file

        native = convert_file(path, keys)
        with in_file(path, keys):
            return validate_config(native, file=str(path), base_dir=Path.cwd()), None
    return load_config(path), None


def config_file(args) -> Path:
    """The config of the command line: CONFIG, or NequIP's ``-cp DIR -cn NAME``; leading ``key=value``
    words are overrides."""
    from mlpot.config.nequip import config_path

    words = ([args.config] if args.config else []) + list(args.overrides)
    if args.config_name:
        args.overrides = words
        return config_path(args.config_name, args.config_path)
    if not words or "=" in words[0] and not Path(words[0]).exists():
        raise ConfigError("give a config file (mlpot train config.yaml, or mlpot train -cn config.yaml)", key="config")
    args.overrides = words[1:]
    return Path(words[0])


def load_train_config(args, keys: Optional[KeyMap] = None):
    """(native config, run options) of the command line: a MACE-style front-end for ``--config`` or
    extra options, else the positional config file (NequIP ``-cn``/``-cp`` and overrides included).
    Run options: ``restart`` (NequIP ``++ckpt_path``, mace ``restart_latest``), ``finetune``,
    ``model_file``, ``test_files``, ``deepmd_input`` (the file, when it is a DeePMD-kit input)."""
    from mlpot.config import mace, validate_config

    extra = list(getattr(args, "extra", None) or [])
    mace_file = args.mace_config
    if mace_file is None and not extra:
        path = config_file(args)
        args.config = path
        if not (path.exists() and (mace.is_mace_config(path) or _is_macescf(path, ()))):
            from mlpot.config import deepmd

            output_dir = str(args.output_dir.resolve()) if args.output_dir else None
            config, restart = load_any_config(path, args.overrides, output_dir=output_dir, keys=keys)
            options = {"restart": restart} if restart else {}
            if deepmd.is_deepmd_config(path):
                options["deepmd_input"] = path
            return config, options
        mace_file = path
    elif args.config is not None and Path(args.config) != mace_file:
        raise ConfigError("give either a config file or mace_run_train options (--config FILE --option ...)",
                          key="config")
    args.config = mace_file or "command line"
    if _is_macescf(mace_file, extra):
        from mlpot.config import macescf

        native, notes = macescf.convert_run_train(extra, str(mace_file) if mace_file else None)
        for note in notes:
            print(f"note: {note}")
        return validate_config(native, file=str(args.config), base_dir=Path.cwd()), {}
    front = mace.MaceFrontEnd.from_sources(mace_file, extra)
    native = validate_config(front.to_native(), file=str(mace_file or "command line"), base_dir=Path.cwd())
    return native, front.run_options()


def _is_macescf(config_file, options) -> bool:
    """True for MACE-SCF's run_train: a config.yaml with heads and train_schedule, or ``--model`` naming
    one of its electrostatic models (FixedPoint, LocalCharges, ...)."""
    from mlpot.config import macescf

    if config_file is not None and macescf.is_macescf_config(config_file):
        return True
    for index, token in enumerate(options):
        name, _, value = token.partition("=")
        if name == "--model":
            value = value or (options[index + 1] if index + 1 < len(options) else "")
            return value in macescf.MODEL_TYPES
    return False


def _evaluate(model_file: Path, files, write=print) -> None:
    """mlpot test's error report of ``model_file`` on each test file (mace_run_train's test_file)."""
    from mlpot.calculators import load_model
    from mlpot.calculators.evaluate import evaluate_frames, format_report, system_errors
    from mlpot.data import read_frames

    model = load_model(model_file)
    for path in files:
        errors = system_errors(evaluate_frames(model, read_frames(path, type_map=model.type_map), str(path)))
        write("\n".join(format_report(errors, header=[f"test set {path}"])))


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

    dp.check_options(args)
    keys = KeyMap()
    with dp.console(args), in_file(args.mace_config or args.config or args.config_name or "command line", keys):
        config, run_options = load_train_config(args, keys)
        dp.check_input_options(args, "deepmd_input" in run_options)
        if args.restart is None and run_options.get("restart"):
            args.restart = run_options["restart"]
        if args.finetune is None and run_options.get("finetune"):
            args.finetune = run_options["finetune"]
        if args.output_dir is not None:
            config.output_dir = str(args.output_dir.resolve())
        restart = _restart_checkpoint(args.restart, config)
        main = int(os.environ.get("RANK", "0")) == 0
        with claim_output_folder(config, resuming=restart is not None, force=args.force, main=main) as folder:
            return _train(args, config, restart, folder, run_options)


def _initial_weights(args, config, restart: Optional[str]):
    """(state dict the model starts from or None, fine-tuning plan or None) of ``--init-model`` /
    ``--init-frz-model`` (``--use-pretrain-script``: its model section too) or ``--finetune``."""
    from mlpot.calculators.export import load_model

    init_weights = None
    if args.init_model:
        initial = load_model(args.init_model, mace_options=args.mace_options)
        if args.use_pretrain_script:
            config.model = dp.pretrained_section(initial, args.init_model)
        init_weights = initial.state_dict()
    finetune = (args.finetune or config.finetune) if restart is None else None
    if not finetune:
        return init_weights, None
    from mlpot.models.registry import family_of

    if args.init_model:
        raise ConfigError("--finetune and --init-model exclude each other", key="--finetune")
    if args.finetune is None and not Path(finetune).is_absolute():
        finetune = str(Path.cwd() / finetune)
    family = family_of(config.model)
    if family.prepare_finetune is None:
        raise ConfigError(f"not supported yet: --finetune with a {family.name} model", key="--finetune")
    plan = family.prepare_finetune(config, load_model(finetune, mace_options=args.mace_options),
                                   branch=args.model_branch,
                                   use_pretrain_script=args.use_pretrain_script, file=str(args.config),
                                   pretrained_file=str(finetune))
    return plan.weights, plan


def _train(args, config, restart: Optional[str], folder, run_options) -> int:
    from mlpot.calculators.export import freeze
    from mlpot.training.trainer import Trainer

    init_weights, plan = _initial_weights(args, config, restart)
    trainer = Trainer(config, restart=restart, init_weights=init_weights, progress=not args.no_progress,
                      file=str(args.config), force_load=args.force_load,
                      resolve_from_data=not args.skip_neighbor_stat)
    if plan is not None:
        plan.after_statistics(trainer.model, trainer.data.stat_samples,
                              trainer._write if trainer.dist.is_main else (lambda line: None))
        if trainer.ema is not None:  # the average starts from the weights the plan set
            trainer.ema.reset(trainer.model)
    folder.start()  # set-up done: --force now removes the earlier run's checkpoints
    if trainer.dist.is_main and run_options.get("deepmd_input"):
        # DeePMD-kit's out.json (-o): where dp writes it, the working directory, unless --output-dir
        out_json = Path(args.output) if args.output else Path(config.output_dir) / "out.json"
        dp.write_out_json(out_json, run_options["deepmd_input"], trainer.model.config)
    trainer.run()
    if trainer.dist.is_main:
        # the frozen model of the checkpoint this run wrote last (EMA weights when EMA is on), not
        # the highest-numbered file in the folder, which may be a stale one from an earlier run
        checkpoint = trainer.last_checkpoint or trainer.checkpoints.latest()
        if config.tasks is None:
            freeze(checkpoint, Path(config.output_dir) / "model.pt")
            if run_options.get("model_file"):
                freeze(checkpoint, run_options["model_file"])
            _evaluate(Path(config.output_dir) / "model.pt", run_options.get("test_files") or [])
        else:  # multi-task: one frozen single-task model per head
            for task in config.tasks:
                freeze(checkpoint, Path(config.output_dir) / f"model_{task}.pt", head=task)
    trainer.dist.shutdown()
    return 0
