"""``mlpot plot``: loss curves from a training log and parity plots from evaluation detail files.

* ``mlpot plot losses LOG [--min_epoch N] [--max_epoch N] [--output PNG]``. LOG is either a debug
  log with MACE-SCF's ``loss breakdown: name: value, ...`` lines (one line per batch; epochs end at
  lines ``Epoch N: loss=...``; mace_scf.md §4) or a DeePMD ``lcurve.out``. The PNG has two stacked
  log-y panels: the raw per-batch values and their exponential moving average (decay 0.99, NaN
  skipped), with dashed lines at epoch ends. For lcurve.out, the panels are the rmse columns
  (training and validation) against the step. Default output: ``<log stem>.png`` with ``_debug``
  and ``_run-<seed>`` removed from the stem.
* ``mlpot plot parity PREFIX [--output PNG]``: reads ``PREFIX.e_peratom.out`` / ``.f.out`` /
  ``.v_peratom.out`` / ``.s.out`` (written by ``mlpot test --detail PREFIX``) and draws predicted
  against reference with the RMSE in each panel's title.
* ``mlpot plot md LOG [--output PNG]``: an ``mlpot md`` log as two panels against time (ps): the
  total energy per atom relative to its first value (meV/atom), with the least-squares drift line
  and its slope (eV/atom/ps) in the title, and the temperature.

matplotlib is used with the non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlpot.errors import DataError

BREAKDOWN = re.compile(r"loss breakdown:\s*(.*)")
ITEM = re.compile(r"([A-Za-z0-9_]+):\s*([-+0-9.eEnaNinf]+)")
EPOCH_END = re.compile(r"Epoch\s+(\d+):\s+loss=")
EMA_DECAY = 0.99


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="plot_kind", metavar="KIND", required=True)
    losses = sub.add_parser("losses", help="per-batch loss terms from a debug log, or the lcurve.out columns")
    losses.add_argument("log", type=Path, help="debug log with 'loss breakdown:' lines, or lcurve.out")
    losses.add_argument("--min_epoch", "--min-epoch", type=int, default=None, help="first epoch to show")
    losses.add_argument("--max_epoch", "--max-epoch", type=int, default=None, help="last epoch to show")
    losses.add_argument("--output", "--name", "-o", type=Path, default=None, help="output PNG")
    parity = sub.add_parser("parity", help="predicted vs reference from `mlpot test --detail PREFIX` files")
    parity.add_argument("prefix", help="detail-file prefix (e.g. detail for detail.f.out)")
    parity.add_argument("--output", "-o", type=Path, default=None, help="output PNG (default PREFIX.parity.png)")
    md = sub.add_parser("md", help="total energy and temperature against time from an `mlpot md` log")
    md.add_argument("log", type=Path, help="log written by mlpot md")
    md.add_argument("--output", "-o", type=Path, default=None, help="output PNG (default <log stem>.png)")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def default_output(log: Path) -> Path:
    """``<stem>.png`` next to the log, the stem without ``_debug`` and ``_run-<seed>``."""
    stem = re.sub(r"_run-\d+", "", log.stem).replace("_debug", "")
    return log.with_name(f"{stem}.png")


def parse_loss_breakdown(path: Path) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Loss terms per batch record and the epoch of each record.

    Returns ({term: (n_records,) values, NaN where a record lacks the term}, (n_records,) epochs).
    Records before the first ``Epoch N: loss=`` line belong to the epoch before N's successor: a
    line ``Epoch N:`` closes epoch N, and later records belong to N + 1 (the first epoch is 0 or
    whatever precedes the first closing line).
    """
    records: List[Dict[str, float]] = []
    record_epoch: List[int] = []
    pending: List[int] = []  # records not yet assigned to an epoch
    last_closed: Optional[int] = None
    with open(path, errors="replace") as handle:
        for line in handle:
            match = BREAKDOWN.search(line)
            if match:
                records.append({k: float(v) for k, v in ITEM.findall(match.group(1))})
                record_epoch.append(-1)
                pending.append(len(records) - 1)
                continue
            match = EPOCH_END.search(line)
            if match:
                last_closed = int(match.group(1))
                for index in pending:
                    record_epoch[index] = last_closed
                pending = []
    if not records:
        raise DataError("no 'loss breakdown:' lines found", file=str(path))
    for index in pending:  # records after the last closing line belong to the next epoch
        record_epoch[index] = 0 if last_closed is None else last_closed + 1
    names = sorted({name for record in records for name in record})
    terms = {name: np.array([record.get(name, np.nan) for record in records]) for name in names}
    return terms, np.array(record_epoch)


def ema(values: np.ndarray, decay: float = EMA_DECAY) -> np.ndarray:
    """Exponential moving average that skips NaN (a NaN keeps the previous average)."""
    out = np.full_like(values, np.nan, dtype=np.float64)
    average = np.nan
    for i, value in enumerate(values):  # sequential by definition; logs are small
        if np.isfinite(value):
            average = value if not np.isfinite(average) else decay * average + (1 - decay) * value
        out[i] = average
    return out


def read_lcurve(path: Path) -> Dict[str, np.ndarray]:
    """Columns of a DeePMD lcurve.out by header name (``step``, ``rmse_f_val``, ..., ``lr``)."""
    with open(path) as handle:
        header = handle.readline()
    if not header.startswith("#"):
        raise DataError("not an lcurve.out file: the first line must be the '# step ...' header", file=str(path))
    names = header.lstrip("#").split()
    data = np.atleast_2d(np.loadtxt(path, comments="#"))
    if data.size == 0:
        raise DataError("no data rows", file=str(path))
    return {name: data[:, i] for i, name in enumerate(names)}


def plot_losses(log: Path, output: Optional[Path] = None, min_epoch: Optional[int] = None,
                max_epoch: Optional[int] = None) -> Path:
    """Write the loss-curve PNG of a debug log or lcurve.out; returns its path."""
    plt = _pyplot()
    output = Path(output) if output else default_output(Path(log))
    with open(log, errors="replace") as handle:
        is_lcurve = handle.readline().lstrip("# ").startswith("step")
    fig, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    if is_lcurve:
        columns = read_lcurve(Path(log))
        step = columns["step"]
        for name, values in columns.items():
            if name.startswith("rmse") and np.any(np.isfinite(values)):
                axis = axes[0] if name.startswith(("rmse_val", "rmse_trn")) else axes[1]
                axis.plot(step, values, label=name, linestyle="-" if name.endswith("_val") else "--")
        axes[0].set_title("total loss (sqrt, DeePMD rmse)")
        axes[1].set_title("per-label RMSE (energy per atom eV, force eV/Å)")
        axes[1].set_xlabel("step")
    else:
        terms, epochs = parse_loss_breakdown(Path(log))
        keep = np.ones(len(epochs), dtype=bool)
        if min_epoch is not None:
            keep &= epochs >= min_epoch
        if max_epoch is not None:
            keep &= epochs <= max_epoch
        if not keep.any():
            raise DataError(f"no records between epochs {min_epoch} and {max_epoch}", file=str(log))
        index = np.nonzero(keep)[0]
        for name, values in terms.items():
            axes[0].plot(index, values[keep], label=name, linewidth=0.8)
            axes[1].plot(index, ema(values)[keep], label=name)
        ends = index[np.nonzero(np.diff(epochs[keep]))[0]]
        for axis in axes:
            for end in ends:
                axis.axvline(end, color="grey", linestyle="--", linewidth=0.6)
        axes[0].set_title("weighted loss terms per batch")
        axes[1].set_title(f"exponential moving average (decay {EMA_DECAY})")
        axes[1].set_xlabel("batch record")
    for axis in axes:
        axis.set_yscale("log")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def parity_panels(prefix: str) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """(title, reference, predicted) for each detail file of ``prefix`` that exists."""
    panels = []
    for suffix, title, n in (("e_peratom", "energy per atom (eV)", 1), ("f", "force components (eV/Å)", 3),
                             ("v_peratom", "virial per atom (eV)", 9), ("s", "stress (eV/Å³)", 9)):
        path = Path(f"{prefix}.{suffix}.out")
        if path.exists():
            data = np.atleast_2d(np.loadtxt(path, comments="#"))
            panels.append((title, data[:, :n].ravel(), data[:, n:2 * n].ravel()))
    return panels


def plot_parity(panels: Sequence[Tuple[str, np.ndarray, np.ndarray]], output: Path) -> Path:
    """Predicted-vs-reference scatter, one panel per label, RMSE in the titles; returns the path."""
    if not panels:
        raise DataError("nothing to plot: no detail files with labels")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for axis, (title, ref, pred) in zip(axes[0], panels):
        rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
        low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.scatter(ref, pred, s=4, alpha=0.6)
        axis.set_xlabel("reference")
        axis.set_ylabel("predicted")
        axis.set_title(f"{title}\nRMSE {rmse:.3g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return Path(output)


def plot_md(log: Path, output: Optional[Path] = None) -> Path:
    """E_tot per atom (relative, meV/atom) with its drift line, and T, against time; returns the path."""
    from mlpot.calculators.md import energy_drift, read_md_log

    columns = read_md_log(log)
    if not len(columns["step"]):
        raise DataError("no records in the md log", file=str(log))
    output = Path(output) if output is not None else default_output(Path(log))
    n_atoms = _md_atoms(log)
    time_ps, total = columns["time_ps"], columns["E_tot_eV"]
    drift = energy_drift(time_ps, total, n_atoms)
    relative = (total - total[0]) / n_atoms * 1e3
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(time_ps, relative, linewidth=0.8, label="E_tot")
    fit = np.polyfit(time_ps, relative, 1) if len(time_ps) > 1 else np.array([0.0, relative[0]])
    top.plot(time_ps, np.polyval(fit, time_ps), "k--", linewidth=0.8, label=f"drift {drift:.2e} eV/atom/ps")
    top.set_ylabel("E_tot - E_tot(0) (meV/atom)")
    top.set_title(f"{Path(log).name}: {n_atoms} atoms, {len(time_ps)} samples over {time_ps[-1]:g} ps", fontsize=9)
    top.legend(fontsize=8)
    bottom.plot(time_ps, columns["T_K"], linewidth=0.8, color="tab:red")
    bottom.set_ylabel("T (K)")
    bottom.set_xlabel("time (ps)")
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def _md_atoms(log: Path) -> int:
    """Atom count from the log's header line ``# atoms: N`` (1 when absent: per-frame energies)."""
    with open(log) as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            match = re.match(r"#\s*atoms:\s*(\d+)", line)
            if match:
                return int(match.group(1))
    return 1


def run(args) -> int:
    if args.plot_kind == "losses":
        output = plot_losses(args.log, args.output, args.min_epoch, args.max_epoch)
    elif args.plot_kind == "md":
        output = plot_md(args.log, args.output)
    else:
        output = plot_parity(parity_panels(args.prefix), args.output or Path(f"{args.prefix}.parity.png"))
    print(f"wrote {output}")
    return 0
