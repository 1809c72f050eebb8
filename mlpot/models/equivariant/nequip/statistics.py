"""NequIP's training-data statistics (``${training_data_stats:NAME}``), with the managers' semantics.

A statistics manager (NequIP ``DataStatisticsManager``, spec nequip.md §1.3) is a list of entries
``{field, metric, name, per_type}``; ``data_statistics`` in a ``nequip`` model section is
``{"manager": "common"}`` (the default, ``CommonDataStatisticsManager``), ``{"manager":
"energy_only"}`` (``EnergyOnlyDataStatisticsManager``) or ``{"metrics": [...]}`` (a custom
``DataStatisticsManager``). Values are computed in float64 over the training split (after the
type mapping; neighbour lists at the data cutoff):

* fields: ``total_energy`` (eV per frame), ``per_atom_energy`` (E / N per frame, NequIP's
  ``PerAtomModifier(total_energy)``), ``forces`` (every Cartesian component of every atom),
  ``stress`` (9 components per frame), ``num_neighbors`` (edges whose centre is the atom, counted
  with an explicit length: atoms without neighbours count 0 wherever they are [BUG of NequIP's
  padded unique-count, not copied]);
* metrics: ``mean``, ``mean_abs``, ``rms``, ``std`` / ``var`` (unbiased unless
  ``unbiased: false``), ``max`` / ``min`` (``absmax`` / ``absmin`` with ``abs``), ``count``;
* ``per_type`` (node fields): the metric over the atoms of each type, as a dict {type name: value}
  under the entry's name and as scalars ``<name>_<type>``.

So ``num_neighbors_mean`` is the mean over all atoms of their neighbour counts,
``per_atom_energy_mean`` the frame-weighted mean of E / N, ``forces_rms`` sqrt(mean F_c^2) over all
components; the tests recompute them from the data independently.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from mlpot.data import keys as K
from mlpot.data.neighbors import neighbor_list
from mlpot.errors import ConfigError

__all__ = ["STAT_PLACEHOLDER", "MANAGERS", "manager_entries", "statistic_names", "compute_statistics", "placeholders"]

STAT_PLACEHOLDER = re.compile(r"^\$\{training_data_stats:([^}]+)\}$")
_NUM = "num_neighbors"
MANAGERS: Dict[str, List[Dict[str, Any]]] = {
    "common": [
        {"name": "num_neighbors_mean", "field": _NUM, "metric": "mean"},
        {"name": "per_type_num_neighbors_mean", "field": _NUM, "metric": "mean", "per_type": True},
        {"name": "per_atom_energy_mean", "field": "per_atom_energy", "metric": "mean"},
        {"name": "forces_rms", "field": "forces", "metric": "rms"},
        {"name": "per_type_forces_rms", "field": "forces", "metric": "rms", "per_type": True},
    ],
    "energy_only": [
        {"name": "num_neighbors_mean", "field": _NUM, "metric": "mean"},
        {"name": "per_type_num_neighbors_mean", "field": _NUM, "metric": "mean", "per_type": True},
        {"name": "per_atom_energy_mean", "field": "per_atom_energy", "metric": "mean"},
        {"name": "per_atom_energy_std", "field": "per_atom_energy", "metric": "std"},
        {"name": "total_energy_std", "field": "total_energy", "metric": "std"},
    ],
}
FIELDS = {"total_energy": "graph", "per_atom_energy": "graph", "forces": "node", "stress": "graph", _NUM: "node"}
METRICS = ("mean", "mean_abs", "rms", "std", "var", "max", "min", "absmax", "absmin", "count")
_FIELD_ABBREV = {"total_energy": "E", "per_atom_energy": "per_atom_E", "forces": "F"}


def manager_entries(spec: Mapping[str, Any] | None, key: str = "model.data_statistics") -> List[Dict[str, Any]]:
    """The entries of a ``data_statistics`` spec (module docstring), checked; ConfigError at ``key``."""
    spec = dict(spec or {"manager": "common"})
    unknown = sorted(set(spec) - {"manager", "metrics"})
    if unknown or ("manager" in spec) == ("metrics" in spec):
        raise ConfigError("give either manager (common | energy_only) or metrics", key=f"{key}.{unknown[0]}" if unknown else key)
    if "manager" in spec:
        if spec["manager"] not in MANAGERS:
            raise ConfigError(f"unknown manager {spec['manager']!r}; valid: {sorted(MANAGERS)}", key=f"{key}.manager")
        return [dict(e) for e in MANAGERS[spec["manager"]]]
    entries = []
    for index, entry in enumerate(spec["metrics"] or []):
        where = f"{key}.metrics.{index}"
        bad = sorted(set(entry) - {"name", "field", "metric", "per_type", "ignore_nan", "unbiased"})
        if bad:
            raise ConfigError("unknown key", key=f"{where}.{bad[0]}")
        if entry.get("field") not in FIELDS:
            raise ConfigError(f"not supported yet: field {entry.get('field')!r} (supported: {sorted(FIELDS)})", key=f"{where}.field")
        if entry.get("metric") not in METRICS:
            raise ConfigError(f"not supported yet: metric {entry.get('metric')!r} (supported: {list(METRICS)})", key=f"{where}.metric")
        if entry.get("per_type") and FIELDS[entry["field"]] != "node":
            raise ConfigError("per_type needs a node field (forces, num_neighbors)", key=f"{where}.per_type")
        if entry.get("ignore_nan"):
            raise ConfigError("not supported yet: ignore_nan (mlpot's data carry no NaN labels)", key=f"{where}.ignore_nan")
        name = entry.get("name") or f"{_FIELD_ABBREV.get(entry['field'], entry['field'])}_{entry['metric']}"
        entries.append({**entry, "name": name})
    return entries


def statistic_names(entries: Sequence[Mapping[str, Any]], type_names: Sequence[str]) -> Dict[str, str]:
    """Every name ``${training_data_stats:NAME}`` may use -> "scalar" or "per_type" (a dict by type)."""
    names: Dict[str, str] = {}
    for entry in entries:
        names[entry["name"]] = "per_type" if entry.get("per_type") else "scalar"
        if entry.get("per_type"):
            names.update({f"{entry['name']}_{t}": "scalar" for t in type_names})
    return names


def placeholders(value, path: Tuple = ()):
    """(key path, NAME) of every ``${training_data_stats:NAME}`` string in a nested section."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from placeholders(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from placeholders(item, path + (index,))
    elif isinstance(value, str) and STAT_PLACEHOLDER.match(value.strip()):
        yield path, STAT_PLACEHOLDER.match(value.strip()).group(1).strip()


def _field_values(frames, field: str, cutoff: float) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(values, atom types or None) per frame of one field, float64."""
    out = []
    for frame in frames:
        types = np.asarray(frame[K.ATOM_TYPES])
        n_atoms = len(types)
        if field == _NUM:
            edge_index, _ = neighbor_list(frame[K.POSITIONS], frame[K.CELL], frame[K.PBC], cutoff)
            out.append((np.bincount(np.asarray(edge_index[0]), minlength=n_atoms).astype(np.float64), types))
            continue
        label = {"total_energy": K.ENERGY, "per_atom_energy": K.ENERGY, "forces": K.FORCES, "stress": K.STRESS}[field]
        if label not in frame or float(np.max(frame.get(K.weight_key(label), 1.0))) <= 0:
            continue  # a frame without the label does not count
        values = np.asarray(frame[label], dtype=np.float64)
        if field == "per_atom_energy":
            values = values / n_atoms
        out.append((values.reshape(n_atoms, -1) if field == "forces" else values.reshape(-1), types))
    return out


def _metric(values: np.ndarray, metric: str, unbiased: bool) -> float:
    if metric == "count":
        return float(values.size)
    if values.size == 0:
        return float("nan")
    if metric in ("std", "var"):
        variance = values.var(ddof=1 if unbiased else 0)
        return float(variance if metric == "var" else np.sqrt(variance))
    if metric == "rms":
        return float(np.sqrt(np.mean(values ** 2)))
    function = {"mean": np.mean, "max": np.max, "min": np.min}.get(metric)
    if function is not None:
        return float(function(values))
    return float({"mean_abs": np.mean, "absmax": np.max, "absmin": np.min}[metric](np.abs(values)))


def compute_statistics(entries: Sequence[Mapping[str, Any]], frames, type_names: Sequence[str],
                       cutoff: float) -> Dict[str, Any]:
    """name -> value (float, or {type name: float} for per-type entries) over ``frames`` (module docstring)."""
    stats: Dict[str, Any] = {}
    cache: Dict[str, list] = {}
    for entry in entries:
        field = entry["field"]
        if field not in cache:
            cache[field] = _field_values(frames, field, cutoff)
        per_frame = cache[field]
        values = np.concatenate([v.reshape(len(v), -1) if FIELDS[field] == "node" else v.reshape(-1)
                                 for v, _ in per_frame]) if per_frame else np.zeros(0)
        unbiased = entry.get("unbiased", True)
        if not entry.get("per_type"):
            stats[entry["name"]] = _metric(values.reshape(-1), entry["metric"], unbiased)
            continue
        types = np.concatenate([t for _, t in per_frame]) if per_frame else np.zeros(0, dtype=int)
        per_type = {t: _metric(values[types == index].reshape(-1), entry["metric"], unbiased)
                    for index, t in enumerate(type_names)}
        stats[entry["name"]] = per_type
        stats.update({f"{entry['name']}_{t}": v for t, v in per_type.items()})
    return stats
