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

__all__ = ["LcurveWriter", "WindowMean", "MetricsCSV", "open_debug_log", "close_log", "format_loss_breakdown", "TensorBoardWriter"]


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
    """CSV with the columns fixed at the first row; appended on restart (header kept)."""

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
        self.writer.writerow([_fmt(row.get(c, math.nan)) for c in self.columns])
        self.handle.flush()

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
