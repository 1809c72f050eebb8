"""DeePMD-kit 3.2's ``dp train`` options on ``mlpot train``, each mapped to what mlpot does.

==============================  ==========================================================================
dp train                        mlpot train
==============================  ==========================================================================
``-i/--init-model CKPT``        weights only (step 0, fresh optimizer); as in dp, ``model.ckpt`` is a path
                                prefix that names ``model.ckpt.pt`` (when no file ``model.ckpt`` exists)
``-r/--restart CKPT``           exact resume (the same prefix rule; ``latest``: the newest checkpoint)
``-t/--finetune MODEL``         fine-tuning (type_map remap, energy bias change-by-statistic)
``-f/--init-frz-model MODEL``   as ``--init-model``: mlpot's frozen models hold the same weights
``--use-pretrain-script``       with ``-t``: the pretrained model section (type_map from the input); with
                                ``-i``/``-f``: that model's section, type_map included, replaces the input's
``-o/--output FILE``            DeePMD inputs: the input as trained, as JSON (comments dropped, aliases under
                                their canonical names, the model section as built: type_map and ``sel:
                                "auto"`` filled in from the data); written once set-up is done, by default
                                to ``out.json`` in the output folder (the working directory, as dp)
``--skip-neighbor-stat``        DeePMD inputs: no neighbour statistics, so ``sel: "auto"`` is an error naming
                                the key; with numeric sel nothing changes (mlpot computes the neighbour
                                statistics only to resolve ``sel: "auto"``, it does not check a given sel)
``--model-branch B``            head of a multi-task pretrained model, or RANDOM
``--force-load``                with ``-i``/``-f``/``-t``: tensors the file lacks keep their fresh
                                initialisation (listed); unexpected or reshaped tensors stay an error
``-l/--log-path FILE``          the run's console lines (stdout and stderr) also to FILE (overwritten; an
                                error that ends the run too)
``-v/--log-level L``            DEBUG/3 and INFO/2: every line; WARNING/1: warnings and errors only;
                                ERROR/0: errors only (console and log file alike)
``-m/--mpi-log master``         the main rank logs (mlpot's way under torchrun)
==============================  ==========================================================================

Not built, each an error "not supported yet: <option>" (exit status 2): ``--mpi-log collect`` and
``workers`` (other ranks never write to the console), ``--force-load`` with ``--restart`` (an exact
resume restores the optimizer state of every weight).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

from mlpot.errors import ConfigError, MlpotError

__all__ = ["VALUED", "FLAGS", "add_arguments", "check_options", "check_input_options", "checkpoint_file",
           "console", "pretrained_section", "write_out_json"]

# options of dp train that mlpot train reads itself (the others go to mace_run_train's front-end)
VALUED = {"-i", "-r", "-t", "-f", "--init-frz-model", "-o", "--output", "-l", "--log-path", "-v", "--log-level",
          "-m", "--mpi-log"}
FLAGS = {"--skip-neighbor-stat", "--force-load"}
# -v/--log-level, DeePMD-kit's names and numbers: the console lines shown are those of this level and below
LOG_LEVELS = {"DEBUG": 3, "3": 3, "INFO": 2, "2": 2, "WARNING": 1, "1": 1, "ERROR": 0, "0": 0}
_INFO, _WARNING = 2, 1


def add_arguments(parser) -> None:
    """dp train's options: one start option at most (``-i``/``-r``/``-t``/``-f``, as dp), then the others."""
    start = parser.add_mutually_exclusive_group()
    start.add_argument("-i", "--init-model", default=None,
                       help="checkpoint or frozen model to take the weights from (step 0, fresh optimizer)")
    start.add_argument("-r", "--restart", default=None,
                       help="checkpoint to resume exactly ('latest': the newest in the output folder; an error "
                            "when there is none)")
    start.add_argument("-t", "--finetune", default=None,
                       help="pretrained checkpoint or frozen model to fine-tune (DeePMD dp train --finetune)")
    start.add_argument("-f", "--init-frz-model", default=None, help="frozen model to take the weights from")
    parser.add_argument("-o", "--output", default=None,
                        help="DeePMD inputs: where to write the input as trained (JSON; default out.json in the "
                             "output folder)")
    parser.add_argument("--skip-neighbor-stat", action="store_true",
                        help="DeePMD inputs: no neighbour statistics (sel must then be numbers)")
    parser.add_argument("--force-load", action="store_true",
                        help="with --init-model/--init-frz-model/--finetune: tensors the file lacks keep their "
                             "fresh initialisation")
    parser.add_argument("-l", "--log-path", default=None, help="also write the run's console lines to this file")
    parser.add_argument("-v", "--log-level", choices=list(LOG_LEVELS), default="INFO",
                        help="DEBUG/3, INFO/2: every line; WARNING/1: warnings and errors; ERROR/0: errors only")
    parser.add_argument("-m", "--mpi-log", choices=["master", "collect", "workers"], default="master",
                        help="under torchrun: master (the main rank logs; the others are not built)")


def checkpoint_file(value: Optional[str]) -> Optional[str]:
    """dp's path prefix of checkpoint files: ``model.ckpt`` names ``model.ckpt.pt`` when no file
    ``model.ckpt`` exists but that one does; any other value as given."""
    if value is None or value == "latest" or Path(value).exists() or not Path(value + ".pt").exists():
        return value
    return value + ".pt"


def check_options(args) -> None:
    """Options of features not built (ConfigError "not supported yet: <option>"); ``-f`` becomes
    ``--init-model``; the checkpoint prefixes of ``-i``/``-r`` are resolved."""
    if args.mpi_log != "master":
        raise ConfigError(f"not supported yet: --mpi-log {args.mpi_log} (only the main rank logs: master)")
    if args.force_load and args.restart:
        raise ConfigError("not supported yet: --force-load with --restart (an exact resume restores the optimizer "
                          "state of every weight); use --init-model to start from the weights")
    args.init_model = checkpoint_file(args.init_model or args.init_frz_model)
    args.restart = checkpoint_file(args.restart)


def check_input_options(args, deepmd_input: bool) -> None:
    """The options that exist for DeePMD-kit inputs only."""
    if deepmd_input:
        return
    for option, given in (("--skip-neighbor-stat", args.skip_neighbor_stat), ("--output", args.output is not None)):
        if given:
            raise ConfigError("applies to DeePMD-kit inputs (input.json with model and training) only", key=option)


class _Stream:
    """A console stream of the run: written when its level is shown, each write also copied to the
    log file; progress-bar redraws (they carry a carriage return) stay off the file."""

    def __init__(self, stream, shown: bool, log):
        self.stream, self.shown, self.log = stream, shown, log

    def write(self, text: str) -> int:
        if self.shown:
            self.stream.write(text)
            if self.log is not None and "\r" not in text:
                self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        if self.log is not None:
            self.log.flush()

    def isatty(self) -> bool:
        return self.shown and self.stream.isatty()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def console(args) -> Iterator[None]:
    """``-v/--log-level`` and ``-l/--log-path`` for the run: stdout holds the INFO lines, stderr the
    warnings; a level hides the lines above it, the log file (main rank; opened anew) gets the lines
    shown and the error that ends the run."""
    level = LOG_LEVELS[args.log_level]
    main = int(os.environ.get("RANK", "0")) == 0
    if level >= _INFO and not (args.log_path and main):
        yield
        return
    log = open(args.log_path, "w", buffering=1) if args.log_path and main else None
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Stream(stdout, level >= _INFO, log), _Stream(stderr, level >= _WARNING, log)
    try:
        yield
    except MlpotError as exc:
        if log is not None:
            log.write(f"mlpot train: error: {exc}\n")
        raise
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        if log is not None:
            log.close()


def pretrained_section(model, path: str) -> Dict[str, Any]:
    """``--use-pretrain-script`` with ``--init-model``: the model section of the loaded model."""
    section = getattr(model, "config", None)
    if not isinstance(section, Mapping):
        raise ConfigError("holds no model section to take (--use-pretrain-script)", file=path, key="--init-model")
    return copy.deepcopy(dict(section))


def write_out_json(path: Path, input_file: Path, model_section: Mapping[str, Any]) -> None:
    """``-o/--output``: the DeePMD input ``input_file`` as trained (module docstring), written atomically."""
    from mlpot.config import deepmd
    from mlpot.training.checkpoint import atomic_write_bytes

    trained = deepmd.check_keys(deepmd.load_file(input_file), file=str(input_file))
    model = copy.deepcopy(dict(model_section))
    if model.get("type") == "multi_task":  # the native marker of a model_dict section
        model.pop("type")
    trained["model"] = model
    atomic_write_bytes(path, (json.dumps(trained, indent=4) + "\n").encode())
