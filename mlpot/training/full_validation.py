"""Full validation during training (DeePMD-kit 3.2 ``validating``): the whole validation set, val.log,
best checkpoints.

Every ``full_validation.freq`` steps from ``start`` (displayed step s runs when s >= start and
(s - start) % freq == 0) the model is evaluated on EVERY frame of the validation data, in chunks of
at most ``chunk_atoms`` atoms, in eval mode, with forces and virial by first derivatives only (no
graph for a second one); the ``ema`` flow does the same with the EMA weights swapped in. The
errors are those of ``dp test`` (:func:`mlpot.training.metrics.label_errors`, pooled over all
frames): E = energy per atom, F = force components, V = virial per atom, S = stress = -virial /
|det cell| (periodic frames carrying a virial, or a stress label, with a non-zero volume); when the
loss has a Hessian term (the model's ``hessian_mode``) also H = the (3N)² Hessian entries of the
frames carrying hessian.npy (an mlpot extension: DeePMD-kit's val.log has no Hessian columns).

``val.log`` (DeePMD-kit's layout): a header ``# step E_MAE(meV/atom) E_RMSE(meV/atom) F_MAE(meV/Å)
F_RMSE(meV/Å) S_MAE(meV/Å³) S_RMSE(meV/Å³)`` (V instead of S when the metric is V), each label
centred in a column of max(len, 10) characters (step: max(4, digits of the run length)), one
space between columns (then ``H_MAE(meV/Å²) H_RMSE(meV/Å²)`` with a Hessian term), then a comment
line; each row starts with two spaces; numbers have 5
significant digits (``nan`` where the data lack the label). A row that makes a new best checkpoint
is followed by ``# saved best checkpoint: <path> (<METRIC> = <value> <unit>)``.

Best checkpoints ``<best_dir>/best.ckpt-<step>.t-<rank>.pt`` (EMA flow: ``best_ema.ckpt-...``):
the top ``max_best`` (metric, step) records, ranked by metric then step, are kept; when a new
record enters, the others are renamed to their new rank and the one pushed out is deleted. A
fresh run deletes such files left in ``best_dir``; ``--restart`` takes the records from the
training checkpoint (when the metric is unchanged), renames or deletes files to match them, and
removes the rows of val.log after the checkpoint's step, so that the resumed run writes the same
log as an uninterrupted one (DeePMD-kit only appends). The live-weight best checkpoint is a full
training checkpoint whose exported weights are the live ones (``ema_state_dict`` left out); the EMA
best checkpoint holds the EMA weights only, no optimizer (as DeePMD-kit), so it serves
``mlpot freeze``/``--init-model`` but not ``--restart``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from mlpot.data import keys as K
from mlpot.errors import ConfigError, DataError
from mlpot.training.checkpoint import atomic_write_bytes, save_checkpoint
from mlpot.training.metrics import combine_errors, label_errors

from mlpot.training.schema import FullValidationConfig

__all__ = ["FullValidation", "ValidationFlow", "validation_errors", "format_number", "log_columns", "FAMILIES"]

# metric family -> (error-name stem, suffix of the per-atom variant, display unit)
FAMILIES = {
    "E": ("energy", "_per_atom", "meV/atom"),
    "F": ("forces", "", "meV/Å"),
    "S": ("stress", "", "meV/Å³"),
    "V": ("virial", "_per_atom", "meV/atom"),
}
_TO_MEV = 1000.0  # eV-based errors are logged in meV-based units
_NOTE = ("# errors as dp test: E energy per atom, F force components, S stress -virial/volume "
         "(V: virial per atom)\n")


def _error_name(family: str, stat: str) -> str:
    stem, per_atom, _ = FAMILIES[family]
    return f"{stem}_{stat.lower()}{per_atom}"


def log_columns(metric: str, hessian: bool = False) -> List[Tuple[str, str]]:
    """(header label, error name) of the val.log columns for ``metric`` (``E:MAE`` ...): E, F and
    one second-rank family, V when the metric is V, otherwise S; then H (Hessian) with ``hessian``."""
    second = "V" if metric.startswith("V") else "S"
    columns = [(f"{family}_{stat}({FAMILIES[family][2]})", _error_name(family, stat))
               for family in ("E", "F", second) for stat in ("MAE", "RMSE")]
    return columns + ([(f"H_{stat}(meV/Å²)", f"hessian_{stat.lower()}") for stat in ("MAE", "RMSE")] if hessian else [])


def format_number(value: float) -> str:
    """``value`` rounded to 5 significant digits in fixed notation (scientific below 1e-12)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0.0 or abs(value) < np.finfo(float).tiny:
        return "0"
    decimals = 4 - math.floor(math.log10(abs(value)))
    if decimals > 16:
        return f"{value:.4e}"
    rounded = round(value, decimals) + 0.0  # + 0.0: no "-0"
    return f"{rounded:.{max(decimals, 0)}f}"


# ---- evaluation ---------------------------------------------------------------------------------


def _chunks(n_atoms: List[int], chunk_atoms: int) -> List[List[int]]:
    """Consecutive frame indices grouped into chunks of at most ``chunk_atoms`` atoms."""
    chunks: List[List[int]] = [[]]
    total = 0
    for index, count in enumerate(n_atoms):
        if chunks[-1] and total + count > chunk_atoms:
            chunks.append([])
            total = 0
        chunks[-1].append(index)
        total += count
    return [chunk for chunk in chunks if chunk]


def _chunk_errors(prediction: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> Dict[str, tuple]:
    """``dp test`` errors of one evaluated chunk (eV, eV/Å, eV/Å^3), only frames carrying a label."""
    wanted = [K.N_ATOMS, K.BATCH, K.CELL, K.PBC] + [key for label in (K.ENERGY, K.FORCES, K.VIRIAL, K.STRESS)
                                                    for key in (label, K.weight_key(label))]
    host = {key: batch[key].detach().cpu().numpy() for key in wanted if key in batch}
    pred = {key: value.detach().cpu().double().numpy() for key, value in prediction.items()
            if key in (K.ENERGY, K.FORCES, K.VIRIAL)}
    n_atoms = host[K.N_ATOMS].astype(np.float64)
    errors: Dict[str, tuple] = {}
    if K.ENERGY in host:
        has = host[K.weight_key(K.ENERGY)] > 0
        errors.update(label_errors("energy", pred[K.ENERGY][has], host[K.ENERGY][has], n_atoms[has]))
    if K.FORCES in host:
        has = host[K.weight_key(K.FORCES)][host[K.BATCH]] > 0
        errors.update(label_errors("forces", pred[K.FORCES][has], host[K.FORCES][has]))
    if K.VIRIAL in pred:
        volume = np.abs(np.linalg.det(host[K.CELL].reshape(-1, 3, 3)))
        reference = np.zeros_like(pred[K.VIRIAL])
        has = np.zeros(len(n_atoms), dtype=bool)
        if K.VIRIAL in host:
            has = host[K.weight_key(K.VIRIAL)] > 0
            reference[has] = host[K.VIRIAL][has]
        if K.STRESS in host:  # a stress label is the virial -stress * volume
            from_stress = (host[K.weight_key(K.STRESS)] > 0) & ~has
            reference[from_stress] = -host[K.STRESS][from_stress] * volume[from_stress, None, None]
            has = has | from_stress
        has &= host[K.PBC].reshape(len(n_atoms), -1).all(axis=1)
        errors.update(label_errors("virial", pred[K.VIRIAL][has], reference[has], n_atoms[has]))
        has &= volume > 0
        scale = -1.0 / volume[has, None, None]
        errors.update(label_errors("stress", pred[K.VIRIAL][has] * scale, reference[has] * scale))
    if K.HESSIAN in prediction:  # the (3N)² entries of the frames with hessian.npy, eV/Å²
        from mlpot.training.structured_losses import hessian_residual

        residual, weight = hessian_residual(prediction, batch)
        difference = residual.detach().cpu().double().numpy()[weight.detach().cpu().numpy() > 0]
        if difference.size:
            errors.update(label_errors("hessian", difference, np.zeros_like(difference)))
    return errors


def validation_errors(model: torch.nn.Module, data, chunk_atoms: int = 1024, hessian: bool = False) -> Dict[str, float]:
    """``dp test`` errors of ``model`` over every frame of ``data.valid`` (eV, eV/Å, eV/Å^3; with
    ``hessian`` also ``hessian_mae``/``_rmse``, eV/Å², of the chunks carrying hessian.npy).

    data: a ``TrainingData`` (``valid`` dataset, ``valid_batch(indices)`` collating onto the
    device). Keys ``<label>_mae``/``_rmse`` (and ``_per_atom`` for energy and virial) for the
    labels present; the model is put in eval mode and back.
    """
    from mlpot.models.derivatives import compute_derivatives

    frames = data.valid.frames
    n_atoms = [len(frames[i][K.POSITIONS]) for i in range(len(frames))]
    was_training = model.training
    model.eval()
    chunk_errors = []
    try:
        with torch.enable_grad():
            for indices in _chunks(n_atoms, chunk_atoms):
                batch = data.valid_batch(indices)
                virial = K.VIRIAL in batch or K.STRESS in batch
                prediction = compute_derivatives(model, batch, forces=True, virial=virial, create_graph=False,
                                                 hessian=hessian and K.HESSIAN in batch
                                                 and bool(batch[K.weight_key(K.HESSIAN)].any()))
                chunk_errors.append(_chunk_errors(prediction, batch))
    finally:
        model.train(was_training)
    return {name: value for name, (value, _) in combine_errors(chunk_errors).items()}


# ---- one flow (live or EMA weights): records, files, log ------------------------------------------


class ValidationFlow:
    """Best records, best-checkpoint files and the log of one flow.

    name: "live" (files ``best.ckpt-*``, log ``log_file``) or "ema" (``best_ema.ckpt-*``, log
    ``<stem>_ema<suffix>``); out: output folder (the log's base, and paths in the log are relative
    to it); best_dir: folder of the best checkpoints. ``records``: (metric in eV-based units,
    displayed step), ascending, at most ``max_best``; rank = position + 1.
    """

    def __init__(self, name: str, config: FullValidationConfig, out: Path, best_dir: Path, total_steps: int,
                 hessian: bool = False):
        self.name, self.config, self.out = name, config, out
        log = Path(config.log_file)
        if name == "ema":
            log = log.with_name(f"{log.stem}_ema{log.suffix}")
        self.log_path = out / log
        self.best_dir = best_dir
        self.prefix = "best.ckpt" if name == "live" else "best_ema.ckpt"
        self.pattern = re.compile(rf"^{re.escape(self.prefix)}-(\d+)\.t-(\d+)\.pt$")
        self.records: List[Tuple[float, int]] = []
        self.step_width = max(len("step"), len(str(total_steps)))
        self.columns = log_columns(config.metric, hessian)
        self.fresh_log = True  # the first row of a fresh run replaces an old log

    # -- records and files
    def path_for(self, step: int, rank: int) -> Path:
        return self.best_dir / f"{self.prefix}-{step}.t-{rank}.pt"

    def offer(self, value: float, step: int) -> Optional[Path]:
        """Enter (value, step) into the top records; the path to save, or None when it is not in
        the top ``max_best`` or ``save_best`` is off."""
        candidate = (value, step)
        records = sorted([r for r in self.records if r[1] != step] + [candidate])[: self.config.max_best]
        if candidate not in records:
            return None
        self.records = records
        return self.path_for(step, records.index(candidate) + 1) if self.config.save_best else None

    def _managed_files(self) -> List[Tuple[int, Path]]:
        if not self.best_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.best_dir.iterdir()
                 if (m := self.pattern.match(p.name)) and p.is_file() and not p.is_symlink()]
        return sorted(found, key=lambda item: item[1].stat().st_mtime)

    def reconcile(self) -> None:
        """Rename the kept steps' files to their rank, delete every other managed file (of a step
        with several files the one already named right, else the oldest, is kept)."""
        wanted = {step: self.path_for(step, rank).name for rank, (_, step) in enumerate(self.records, start=1)}
        by_step: Dict[int, List[Path]] = {}
        for step, path in self._managed_files():
            by_step.setdefault(step, []).append(path)
        for step, paths in by_step.items():
            name = wanted.get(step)
            keep = None if name is None else next((p for p in paths if p.name == name), paths[0])
            for path in paths:
                if path is not keep:
                    path.unlink()
            if keep is not None and keep.name != name:
                # the name carries the step, so the target is no other step's file
                os.replace(keep, keep.with_name(name))

    def start(self, state: Optional[dict], restart: bool, step: int) -> None:
        """Records from a checkpoint's ``state`` (restart) and the files made to match them."""
        if restart and state and state.get("metric") == self.config.metric:
            self.records = sorted((float(m), int(s)) for m, s in state.get("records", []))[: self.config.max_best]
        if restart and self.config.save_best and self.records:
            self.reconcile()
        else:
            for _, path in self._managed_files():
                path.unlink()
        if restart:
            self.fresh_log = False
            self._drop_rows_after(step)

    def state_dict(self) -> dict:
        return {"metric": self.config.metric, "records": [[m, s] for m, s in self.records]}

    # -- val.log
    def _drop_rows_after(self, step: int) -> None:
        """Remove the rows of steps after ``step`` (and their best-checkpoint lines) from the log."""
        if not self.log_path.exists():
            return
        kept, dropping = [], False
        for line in self.log_path.read_text().splitlines(keepends=True):
            if not line.startswith("#"):
                fields = line.split()
                dropping = bool(fields) and fields[0].isdigit() and int(fields[0]) > step
            elif not line.startswith("# saved best checkpoint:"):
                dropping = False
            if not dropping:
                kept.append(line)
        atomic_write_bytes(self.log_path, "".join(kept).encode())

    def write_row(self, step: int, errors: Dict[str, float], saved: Optional[Path], value: float) -> None:
        header = self.fresh_log or not self.log_path.exists() or self.log_path.stat().st_size == 0
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w" if self.fresh_log else "a", buffering=1) as handle:
            if header:
                line = "# " + f"{'step':^{self.step_width}s}"
                line += "".join(" " + f"{label:^{max(len(label), 10)}s}" for label, _ in self.columns)
                handle.write(line + "\n" + _NOTE)
            row = "  " + f"{step:^{self.step_width}d}"
            for label, name in self.columns:
                text = format_number(errors.get(name, math.nan) * _TO_MEV)
                row += " " + f"{text:^{max(len(label), 10)}s}"
            handle.write(row + "\n")
            if saved is not None:
                handle.write(f"# saved best checkpoint: {self.relative(saved)} ({self.describe(value)})\n")
        self.fresh_log = False

    def relative(self, path: Path) -> str:
        return os.path.relpath(path, self.out)

    def describe(self, value: float) -> str:
        family = self.config.metric.partition(":")[0]
        return f"{self.config.metric} = {format_number(value * _TO_MEV)} {FAMILIES[family][2]}"


# ---- the hook the trainer calls ---------------------------------------------------------------------


class FullValidation:
    """The full validation of one run: :meth:`run` after each step, :meth:`state_dict` into the
    training checkpoint. Inert (``flows`` empty) when the config has no active section, when the
    run never reaches ``start``, and on every process but the main one.

    model: the trained model; data: its ``TrainingData`` (``valid`` must be set); ema: the
    ``ExponentialMovingAverage`` (needed by the ``ema`` flow); out: the output folder; best_dir:
    folder of the best checkpoints (relative paths are taken from ``out``); write: prints a
    message line (the trainer's stdout).
    """

    def __init__(self, config: Optional[FullValidationConfig], *, model: torch.nn.Module, data, ema,
                 total_steps: int, out: Path, best_dir: Path, is_main: bool = True,
                 write: Callable[[str], None] = print, file: Optional[str] = None):
        self.config, self.model, self.data, self.ema, self.write = config, model, data, ema, write
        self.hessian = bool(getattr(model, "hessian_mode", False))  # the loss has a Hessian term
        self.flows: List[ValidationFlow] = []
        self.start_step = config.start_step(total_steps) if config is not None else None
        if self.start_step is None or self.start_step > total_steps or not is_main:
            return
        if data.valid is None:
            raise ConfigError("needs validation data (data.valid)", file=file, key="full_validation")
        if config.ema and ema is None:
            raise ConfigError("needs the ema section (EMA weights)", file=file, key=["full_validation", "ema"])
        self._check_labels(file)
        best_dir = out / best_dir
        self.flows = [ValidationFlow(name, config, out, best_dir, total_steps, self.hessian)
                      for name, on in (("live", config.live), ("ema", config.ema)) if on]

    @classmethod
    def for_trainer(cls, trainer, checkpoint: Optional[dict]) -> "FullValidation":
        """The full validation of a :class:`~mlpot.training.trainer.Trainer` (after its restore):
        records and files are set up from ``checkpoint`` when it resumes one."""
        config = trainer.config.full_validation
        if config is not None and config.active and trainer.multi_task:
            raise ConfigError("not supported with multi-task training", file=trainer.file, key="full_validation")
        cp = trainer.config.checkpoint
        best_dir = Path(config.best_dir) if config is not None and config.best_dir is not None \
            else (Path(cp.dir) / cp.prefix).parent
        from tqdm import tqdm

        validation = cls(config, model=trainer.model, data=trainer.task_data[trainer.task_names[0]], ema=trainer.ema,
                         total_steps=trainer.total_steps, out=trainer.out, best_dir=best_dir,
                         is_main=trainer.dist.is_main, write=lambda line: tqdm.write(line, file=trainer.stdout),
                         file=trainer.file)
        validation.load_state_dict((checkpoint or {}).get("full_validation"), restart=checkpoint is not None,
                                   step=trainer.step)
        return validation

    def _check_labels(self, file: Optional[str]) -> None:
        """DataError unless some validation frame carries the label of the ranking metric."""
        family = self.config.metric.partition(":")[0]
        labels = {"E": (K.ENERGY,), "F": (K.FORCES,)}.get(family, (K.VIRIAL, K.STRESS))
        frames = self.data.valid.frames
        for index in range(len(frames)):
            frame = frames[index]
            periodic = family in ("E", "F") or bool(np.all(frame.get(K.PBC, False)))
            if periodic and any(label in frame and float(np.max(frame.get(K.weight_key(label), 1.0))) > 0
                                for label in labels):
                return
        where = "periodic frame with " if family in ("S", "V") else "frame with "
        raise DataError(f"full_validation.metric {self.config.metric}: no {where}{' or '.join(labels)} "
                        "labels in the validation data", file=file)

    def due(self, step: int) -> bool:
        """True when displayed step ``step`` (1-based) runs a full validation."""
        return bool(self.flows) and step >= self.start_step and (step - self.start_step) % self.config.freq == 0

    def run(self, step: int, state: Callable[[], dict]) -> Optional[Dict[str, Dict[str, float]]]:
        """After displayed step ``step``: evaluate, log, save best checkpoints when due.

        state: returns the training checkpoint dict of now (called after the records are updated,
        so a best checkpoint carries them). Returns {flow: errors (eV-based)} or None.
        """
        if not self.due(step):
            return None
        results = {}
        for flow in self.flows:
            weights = self.ema.applied(self.model) if flow.name == "ema" else contextlib.nullcontext()
            with weights:
                errors = validation_errors(self.model, self.data, self.config.chunk_atoms, self.hessian)
            name = _error_name(*self.config.metric.split(":"))
            value = errors.get(name, math.nan)
            if math.isnan(value):
                raise DataError(f"full_validation.metric {self.config.metric} is not available on the validation "
                                f"data at step {step}")
            saved = flow.offer(value, step)
            if saved is not None:
                save_checkpoint(saved, self._best_state(state(), flow.name))
                flow.reconcile()
            flow.write_row(step, errors, saved, value)
            if saved is not None and flow.name == "live":
                self.write(f"saved best checkpoint {flow.relative(saved)} ({flow.describe(value)})")
            results[flow.name] = errors
        return results

    @staticmethod
    def _best_state(state: dict, flow: str) -> dict:
        """The training checkpoint as a best checkpoint of ``flow`` (see the module docstring)."""
        if flow == "live":
            return {**state, "ema_state_dict": None}
        drop = ("optimizer", "scheduler", "ema")
        return {**{k: v for k, v in state.items() if k not in drop}, "model_state_dict": state["ema_state_dict"]}

    def state_dict(self) -> dict:
        return {flow.name: flow.state_dict() for flow in self.flows}

    def load_state_dict(self, state: Optional[dict], restart: bool, step: int) -> None:
        """Set up records and files: ``restart`` resumes at ``step`` with ``state`` (may be None)."""
        for flow in self.flows:
            flow.start((state or {}).get(flow.name), restart, step)
