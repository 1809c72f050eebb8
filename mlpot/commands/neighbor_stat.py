"""``mlpot neighbor-stat -s SYSTEM... -r RCUT [-t TYPE...]``: DeePMD-kit's ``dp neighbor-stat``.

Prints the two lines DeePMD-kit logs::

    min_nbor_dist: 0.959976
    max_nbor_size: [38, 76]

min_nbor_dist is the shortest interatomic distance (Å) among the pairs closer than RCUT (periodic
images included); max_nbor_size[t] is, over all atoms of all frames, the largest number of
neighbours of type t within RCUT (the count DeePMD's ``sel: "auto"`` scales). ``-t`` fixes the type
order (default: the data's type map); ``--mixed-type`` counts all types as one. The numbers come
from :func:`mlpot.data.statistics.compute_statistics`, the same code as ``sel: "auto"``.
"""

from __future__ import annotations

from mlpot.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("-s", "--system", dest="systems", nargs="+", action="extend", required=True,
                        help="data paths: DeePMD systems, folders searched for them, extxyz/ASE files")
    parser.add_argument("-r", "--rcut", type=float, required=True, help="cutoff radius (Angstrom)")
    parser.add_argument("-t", "--type-map", dest="type_map", nargs="+", default=None,
                        help="type names in order (default: the data's type map)")
    parser.add_argument("--mixed-type", "--one-type", dest="mixed_type", action="store_true",
                        help="treat all types as one (se_atten)")
    parser.add_argument("--format", default=None, help="data format (default: detected)")


def neighbor_stat(systems, rcut: float, type_map=None, mixed_type: bool = False, fmt=None):
    """(min_nbor_dist Å or None when no pair is closer than ``rcut``, max_nbor_size list per type,
    type names) of the frames of ``systems``."""
    from mlpot.data import compute_statistics, read_systems

    if rcut <= 0:
        raise ConfigError(f"rcut must be positive, got {rcut}", key="rcut")
    frame_lists = read_systems(systems, fmt, type_map=type_map)
    names = list(frame_lists[0].type_map) if frame_lists else list(type_map or [])
    stats = compute_statistics(frame_lists, names, cutoff=rcut)
    if mixed_type:
        return stats.min_distance, [stats.max_neighbors_total], ["*"]
    return stats.min_distance, list(stats.max_neighbors_per_type), names


def run(args) -> int:
    min_dist, max_size, _ = neighbor_stat(args.systems, args.rcut, args.type_map, args.mixed_type, args.format)
    print(f"min_nbor_dist: {min_dist if min_dist is not None else float('inf'):f}")
    print(f"max_nbor_size: {max_size}")
    return 0
