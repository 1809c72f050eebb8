"""Training logs users already read.

* :class:`LcurveWriter` — DeePMD's ``lcurve.out`` exactly (specs/deepmd.md §5.4): header
  ``# step`` then per metric key (sorted) ``<key>_val <key>_trn`` (only ``_trn`` without
  validation) then ``lr``; a second header line about nan; rows ``%7d``, ``   %11.2e`` per value,
  ``   %8.1e`` for the lr. Appended on restart. Multi-task (DeePMD-kit's layout):
  ``<key>_val_<task> <key>_trn_<task>`` per task, tasks in model_dict order.
* :class:`WindowMean` — DeePMD ``disp_avg``: training values averaged over the steps since the
  previous display.
* :class:`MetricsCSV` — one row per display step with fixed columns (nan where a value is missing).
* :func:`open_debug_log` — a ``logging`` logger writing MACE-SCF's line
  ``<date> <time>.<ms> DEBUG: loss breakdown: name: value, name: value, `` for every train and
  validation batch, and ``Epoch N: loss=...`` INFO lines (specs/mace_scf.md §4) that
  ``mlpot plot losses`` parses.
* :class:`TensorBoardWriter` — optional; silently off when tensorboard is not installed.
"""

from __future__ import annotations

import csv
import logging as _logging
import math
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = ["LcurveWriter", "WindowMean", "MetricsCSV", "open_debug_log", "close_log", "format_loss_breakdown", "TensorBoardWriter",
           "TrainingLog"]


class LcurveWriter:
    """DeePMD ``lcurve.out``. ``keys``: metric names (e.g. rmse, rmse_e, rmse_f); sorted here.

    :meth:`multi_task` writes DeePMD-kit's multi-task layout instead: per task (in the given order)
    the sorted keys as ``<key>_val_<task> <key>_trn_<task>`` (only ``_trn`` for a task without
    validation data), reading the values ``<key>_<task>``.
    """

    def __init__(self, path, keys: Iterable[str], has_valid: bool, append: bool = False,
                 columns: Optional[List[Tuple[str, str, str, bool]]] = None):
        self.path = Path(path)
        # (header of the validation column, header of the training column, value key, has validation)
        self.columns = columns if columns is not None else [
            (key + "_val", key + "_trn", key, bool(has_valid)) for key in sorted(keys)]
        self.keys = [column[2] for column in self.columns]
        self.has_valid = any(column[3] for column in self.columns)
        fresh = not (append and self.path.exists() and self.path.stat().st_size > 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w" if fresh else "a", buffering=1)
        if fresh:
            header = "# %5s" % "step"
            for val_name, trn_name, _, valid in self.columns:
                header += ("   %11s %11s" % (val_name, trn_name)) if valid else ("   %11s" % trn_name)
            header += "   %8s\n" % "lr"
            header += "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"
            self.handle.write(header)

    @classmethod
    def multi_task(cls, path, keys: Mapping[str, Iterable[str]], has_valid: Mapping[str, bool],
                   append: bool = False) -> "LcurveWriter":
        """Multi-task lcurve: ``keys`` and ``has_valid`` per task, in the tasks' order."""
        columns = [(f"{key}_val_{task}", f"{key}_trn_{task}", f"{key}_{task}", bool(has_valid[task]))
                   for task, task_keys in keys.items() for key in sorted(task_keys)]
        return cls(path, (), False, append, columns=columns)

    def write(self, step: int, train: Mapping[str, float], valid: Optional[Mapping[str, float]], lr: float) -> None:
        """One row; ``step`` is the displayed (1-based) step."""
        row = "%7d" % step
        for _, _, key, has_valid in self.columns:
            trn = train.get(key, math.nan)
            if has_valid:
                row += "   %11.2e %11.2e" % ((valid or {}).get(key, math.nan), trn)
            else:
                row += "   %11.2e" % trn
        row += "   %8.1e\n" % lr
        self.handle.write(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class WindowMean:
    """Mean of each training value over the steps of a display window (DeePMD ``disp_avg``).

    :meth:`add` takes one step's values; a key counts only the steps that reported it (multi-task:
    the steps of its task). :meth:`pop` returns the means and starts a new window. Keys in
    ``skip`` (the current ``lr`` and ``loss``) are not averaged. The means are of the per-step
    values (e.g. of the per-batch RMSEs), as DeePMD-kit averages them.
    """

    def __init__(self, skip: Iterable[str] = ("lr", "loss")):
        self.skip = set(skip)
        self.sums: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            if key in self.skip:
                continue
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> Dict[str, float]:
        means = {key: self.sums[key] / self.counts[key] for key in self.sums}
        self.sums, self.counts = {}, {}
        return means


class MetricsCSV:
    """CSV of one row per display; appended on restart (header kept). A row with columns the file
    lacks (the first validation after rows without one) widens the file: the header is rewritten
    and the earlier rows get ``nan`` there, so no value is ever dropped."""

    def __init__(self, path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: Optional[List[str]] = None
        if append and self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as handle:
                self.columns = next(csv.reader(handle), None)
            self.handle = open(self.path, "a", newline="", buffering=1)
        else:
            self.handle = open(self.path, "w", newline="", buffering=1)
        self.writer = csv.writer(self.handle)

    def write(self, row: Mapping[str, object]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.writer.writerow(self.columns)
        elif any(c not in self.columns for c in row):
            self._widen([c for c in row if c not in self.columns])
        self.writer.writerow([_fmt(row.get(c, math.nan)) for c in self.columns])
        self.handle.flush()

    def _widen(self, new_columns: List[str]) -> None:
        self.handle.close()
        with open(self.path, newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        self.columns = list(self.columns) + new_columns
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            writer.writerows(r + ["nan"] * (len(self.columns) - len(r)) for r in rows)
        os.replace(temporary, self.path)
        self.handle = open(self.path, "a", newline="", buffering=1)
        self.writer = csv.writer(self.handle)

    def close(self) -> None:
        self.handle.close()


def _fmt(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def format_loss_breakdown(components: Mapping[str, float]) -> str:
    """``loss breakdown: a: 0.0001251, b: 7.49e-06, `` (weighted components, %.4g, trailing ', ')."""
    return "loss breakdown: " + "".join(f"{name}: {float(value):.4g}, " for name, value in components.items())


def open_debug_log(path, name: str = "mlpot.train", append: bool = False) -> _logging.Logger:
    """A logger writing DEBUG and up to ``path`` in MACE's format (``%Y-%m-%d %H:%M:%S.mmm LEVEL: msg``)."""
    logger = _logging.getLogger(f"{name}.{os.path.abspath(path)}")
    logger.setLevel(_logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = _logging.FileHandler(path, mode="a" if append else "w")
    handler.setFormatter(_logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s: %(message)s",
                                            datefmt="%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    return logger


def close_log(logger: Optional[_logging.Logger]) -> None:
    """Close and detach the handlers of a logger from :func:`open_debug_log`."""
    if logger is None:
        return
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


class TensorBoardWriter:
    """Scalars to TensorBoard every ``freq`` steps; a no-op (with one warning) without tensorboard."""

    def __init__(self, log_dir, freq: int = 1, enabled: bool = True):
        self.freq = int(freq)
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: optional dependency
        except ImportError:
            warnings.warn("tensorboard is not installed; TensorBoard logging is off (pip install tensorboard)")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, scalars: Dict[str, float]) -> None:
        if self.writer is None or step % self.freq:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class TrainingLog:
    """What a training run writes besides checkpoints: console lines (through the progress bar
    when there is one), lcurve.out, the metrics CSV, TensorBoard scalars, the loss-breakdown debug
    log and the torch.profiler window. Only the main rank writes files.

    Multi-task runs name their lcurve columns ``<key>_val_<task>`` / ``<key>_trn_<task>``; the
    display values come in with keys ``<key>_<task>``.
    """

    PROFILED_STEPS = range(2, 7)  # displayed (1-based) steps; step 1 carries one-off set-up costs

    def __init__(self, config, out: Path, *, is_main: bool, stdout, device_type: str = "cpu"):
        self.config, self.out, self.is_main, self.stdout, self.device_type = config, Path(out), is_main, stdout, device_type
        self.debug_log = self.lcurve = self.csv = self.tensorboard = self.bar = self.profiler = None
        self.task_names: List[str] = [""]

    # ---- files ---------------------------------------------------------------------------
    def open(self, *, append: bool, task_labels: Mapping[str, Tuple[str, ...]], has_valid: Mapping[str, bool],
             total_steps: int, initial_step: int, progress: bool) -> None:
        """Open every writer (``append`` on restart) and the progress bar (on a terminal only)."""
        from tqdm import tqdm

        from mlpot.training.metrics import lcurve_keys

        cfg, main = self.config, self.is_main
        self.task_names = list(task_labels)
        self.debug_log = open_debug_log(self.out / cfg.debug_log, append=append) if (main and cfg.debug_log) else None
        if main and cfg.lcurve:
            if self.task_names != [""]:
                keys = {name: lcurve_keys(labels) for name, labels in task_labels.items()}
                self.lcurve = LcurveWriter.multi_task(self.out / cfg.lcurve, keys, dict(has_valid), append)
            else:
                self.lcurve = LcurveWriter(self.out / cfg.lcurve, lcurve_keys(task_labels[""]), has_valid[""], append)
        self.csv = MetricsCSV(self.out / cfg.metrics_csv, append) if (main and cfg.metrics_csv) else None
        self.tensorboard = TensorBoardWriter(self.out / cfg.tensorboard_log_dir, cfg.tensorboard_freq,
                                             enabled=main and cfg.tensorboard)
        show_bar = progress and cfg.progress_bar and main and self.stdout.isatty()
        self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", disable=not show_bar,
                        dynamic_ncols=True, file=self.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for writer in (self.lcurve, self.csv, self.tensorboard):
            if writer is not None:
                writer.close()
        close_log(self.debug_log)

    # ---- lines -----------------------------------------------------------------------------
    def write(self, line: str) -> None:
        """One console line (main rank), above the progress bar when there is one."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stdout)
        else:
            print(line, file=self.stdout, flush=True)

    def debug(self, message: str, warning: bool = False) -> None:
        """A debug-log line; a warning also goes to stderr (main rank)."""
        if self.debug_log is not None:
            (self.debug_log.warning if warning else self.debug_log.debug)(message)
        if warning and self.is_main:
            import sys

            print(f"warning: {message}", file=sys.stderr)

    def epoch_done(self, epoch: int, loss: float) -> None:
        """The ``Epoch N: loss=...`` line of the debug log (MACE-SCF's; ``mlpot plot losses`` reads it)."""
        if self.debug_log is not None:
            self.debug_log.info(f"Epoch {epoch}: loss={loss:.6g}")

    def step_done(self, train: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{train['loss']:.4g}", lr=f"{train['lr']:.2e}", refresh=False)

    def display(self, step: int, epoch: int, stage: str, train: Mapping[str, float],
                valid: Optional[Mapping[str, float]]) -> None:
        """lcurve row, metrics-CSV row, TensorBoard scalars and (``disp_training``) a console line."""
        if self.lcurve is not None:
            self.lcurve.write(step, train, valid, train["lr"])
        row = {"step": step, "epoch": epoch, "stage": stage, "lr": train["lr"], "loss": train["loss"]}
        row.update({f"train_{k}": v for k, v in train.items() if k not in ("lr", "loss")})
        row.update({f"valid_{k}": v for k, v in (valid or {}).items()})
        if self.csv is not None:
            self.csv.write(row)
        if self.tensorboard is not None:
            self.tensorboard.write(step, {k: v for k, v in row.items() if isinstance(v, float)})
        if self.is_main and self.config.disp_training:
            parts = [f"step {step}", f"stage {stage}", f"lr {train['lr']:.2e}", f"loss {train['loss']:.6g}"]
            parts += [f"{self._name(k, 'trn')} {v:.3e}" for k, v in train.items() if k.startswith("rmse")]
            parts += [f"{self._name(k, 'val')} {v:.3e}" for k, v in (valid or {}).items() if k.startswith("rmse")]
            self.write(", ".join(parts))

    def _name(self, key: str, kind: str) -> str:
        """``rmse_e`` -> ``rmse_e_trn``; multi-task ``rmse_e_<task>`` -> ``rmse_e_trn_<task>`` (lcurve names)."""
        for task in self.task_names if self.task_names != [""] else ():
            if key.endswith("_" + task):
                return f"{key[:-len(task) - 1]}_{kind}_{task}"
        return f"{key}_{kind}"

    # ---- profiler ----------------------------------------------------------------------------
    def profile(self, shown: Optional[int]) -> None:
        """torch.profiler over ``PROFILED_STEPS`` when ``profile_file`` (Chrome trace) or
        ``profile_tensorboard`` (TensorBoard trace under tensorboard_log_dir) is set (main rank);
        the traces are written when the window closes or training ends (``shown`` None)."""
        cfg = self.config
        if not (cfg.profile_file or cfg.profile_tensorboard) or not self.is_main:
            return
        if self.profiler is None and shown is not None and shown in self.PROFILED_STEPS:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device_type == "cuda" else [])
            self.profiler = profile(activities=activities, record_shapes=True)
            self.profiler.__enter__()
        elif self.profiler is not None and (shown is None or shown not in self.PROFILED_STEPS):
            self.profiler.__exit__(None, None, None)
            window = f"{self.PROFILED_STEPS.start}-{self.PROFILED_STEPS.stop - 1}"
            if cfg.profile_file:
                target = self.out / cfg.profile_file
                self.profiler.export_chrome_trace(str(target))
                self.write(f"wrote the profile of steps {window} to {target}")
            if cfg.profile_tensorboard:
                from torch.profiler import tensorboard_trace_handler

                folder = self.out / cfg.tensorboard_log_dir
                tensorboard_trace_handler(str(folder))(self.profiler)
                self.write(f"wrote the TensorBoard profile of steps {window} to {folder}")
            self.profiler = None
