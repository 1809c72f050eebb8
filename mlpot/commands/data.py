"""``mlpot data info PATH...``: a first look at a dataset.

Prints frames, atoms per frame, elements, labels present (with frame counts), the least-squares
energy bias per element, forces RMS and, at ``--cutoff``, neighbour counts and the minimum
distance. A human table by default, JSON with ``--json``. Several paths are read as systems with
one merged type map (a directory that is not a system is searched for DeePMD systems).

Every frame is checked for atoms closer than ``--min-distance`` (default 0.3 Å, the training
default): after the summary, such a pair is an error naming the file, frame and atoms (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List

from mlpot.data import MIN_SANE_DISTANCE, check_distances, compute_statistics, read_systems
from mlpot.data.statistics import DatasetStatistics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    info = sub.add_parser("info", help="summarise datasets (frames, labels, energy bias, neighbours)",
                          description="A first look at datasets: frames, atoms, elements, labels, energy bias, forces RMS, neighbours.")
    info.add_argument("paths", nargs="+", metavar="PATH",
                      help="extxyz files or DeePMD system directories (parents are searched for systems)")
    info.add_argument("--format", dest="fmt", default=None, help="deepmd/npy, deepmd/raw, deepmd/hdf5 or extxyz (default: detect)")
    info.add_argument("--cutoff", type=float, default=None, help="neighbour statistics at this cutoff (Å)")
    info.add_argument("--type-map", nargs="+", default=None, metavar="NAME",
                      help="type names in model order (DeePMD systems are re-mapped by name)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--min-distance", type=float, default=MIN_SANE_DISTANCE, metavar="ANGSTROM",
                      help=f"atoms closer than this are an error (default {MIN_SANE_DISTANCE} Å; 0: no check)")
    info.add_argument("--cache-dir", default=None, help="statistics file to read and write the statistics (HDF5 file .h5/.hdf5 or a directory)")
    parser.set_defaults(data_parser=parser)


def _fmt(value, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_table(stats: DatasetStatistics, systems: List) -> str:
    """Human-readable summary of :class:`DatasetStatistics`."""
    lines = []
    lines.append(f"systems          {len(systems)}")
    for system in systems:
        lines.append(f"  {system.source}: {len(system)} frames")
    apf = stats.atoms_per_frame
    lines.append(f"frames           {stats.n_frames}")
    lines.append(f"atoms per frame  min {apf['min']}  mean {apf['mean']:.2f}  max {apf['max']}")
    lines.append("labels           " + (", ".join(f"{k} ({v})" for k, v in stats.label_counts.items()) or "none"))
    if stats.energy_per_atom_mean is not None:
        lines.append(f"energy per atom  mean {_fmt(stats.energy_per_atom_mean, 8)} eV  "
                     f"std {_fmt(stats.energy_per_atom_std, 4)} eV")
        lines.append(f"bias residual    std {_fmt(stats.bias_residual_std, 4)} eV/frame  "
                     f"rms {_fmt(stats.bias_residual_rms_per_atom, 4)} eV/atom")
    if stats.forces_rms is not None:
        lines.append(f"forces RMS       {_fmt(stats.forces_rms, 5)} eV/Å")
    if stats.cutoff is not None:
        lines.append(f"cutoff           {stats.cutoff:g} Å: mean neighbours {_fmt(stats.mean_neighbors, 5)}, "
                     f"min distance {(f'{stats.min_distance:.6f}' if stats.min_distance is not None else '-')} Å")
    header = f"{'element':<8} {'atoms':>9} {'energy bias/eV':>16} {'forces RMS':>11}"
    if stats.cutoff is not None:
        header += f" {'mean nbrs':>10} {'max nbrs':>9}"
    lines += ["", header]
    for t, name in enumerate(stats.type_map):
        row = (f"{name:<8} {stats.atoms_per_type[t]:>9} "
               f"{(f'{stats.energy_bias[t]:.5f}' if stats.energy_bias else '-'):>16} "
               f"{_fmt(stats.forces_rms_per_type[t] if stats.forces_rms_per_type else None, 5):>11}")
        if stats.cutoff is not None:
            row += (f" {_fmt(stats.mean_neighbors_per_type[t], 5):>10}"
                    f" {stats.max_neighbors_per_type[t]:>9}")
        lines.append(row)
    if stats.cutoff is not None:
        lines.append("(mean nbrs: around atoms of this element; max nbrs: of this element around any atom, "
                     "as DeePMD's sel)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "info":
        args.data_parser.print_help()
        return 1
    systems = read_systems(args.paths, args.fmt, type_map=args.type_map)
    type_map = systems[0].type_map
    stats = compute_statistics(systems, type_map, cutoff=args.cutoff, cache=args.cache_dir)
    if args.json:
        out = stats.to_dict()
        out["systems"] = [{"path": s.source, "frames": len(s)} for s in systems]
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(stats, systems))
    for system in systems:  # after the summary, which shows the minimum distance at --cutoff
        check_distances(system, args.min_distance)
    return 0
