"""Electronic-configuration vectors of the elements: the input of DeePMD-kit's ``use_econf_tebd``
type embedding (DeePMD-kit 3.x, DPA-2/DPA-3 era), in place of a one-hot vector.

An element's ground-state configuration is written over 19 subshells (1s 2s 2p 3s 3p 3d 4s 4p 4d
4f 5s 5p 5d 5f 6s 6p 6d 7s 7p; 59 orbitals in all). Each subshell's electrons go into its 2l + 1
orbitals by Hund's rule: with e <= 2l + 1 electrons the first e orbitals hold one, else the first
e - (2l + 1) hold two and the rest one. An orbital holding 0, 1 or 2 electrons is written as the
pair (-1, -1), (-1, 1) or (1, 1), so the vector has 2 x 59 = 118 entries of +-1, and is scaled by
1 / sqrt(118) (unit length).

Configurations follow the Madelung (n + l, then n) filling order, except for the 21 elements whose
measured ground states differ from it (:data:`MADELUNG_EXCEPTIONS`: Cr, Cu, the 4d and 5d
exceptions, La, Ce, Gd, the early actinides, Cm, Ds, Rg). These are facts of atomic physics;
a test checks the vectors of all 118 elements against the ones DeePMD-kit 3.2 uses.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np
from ase.data import atomic_numbers

from mlpot.errors import ConfigError

__all__ = ["ECONF_DIM", "SUBSHELLS", "MADELUNG_EXCEPTIONS", "configuration", "econf_vector", "econf_table"]

_LETTERS = "spdf"
# the subshells of the vector, in its order
SUBSHELLS: Tuple[Tuple[int, int], ...] = tuple(
    (n, _LETTERS.index(letter)) for n, letter in (
        (1, "s"), (2, "s"), (2, "p"), (3, "s"), (3, "p"), (3, "d"), (4, "s"), (4, "p"), (4, "d"), (4, "f"),
        (5, "s"), (5, "p"), (5, "d"), (5, "f"), (6, "s"), (6, "p"), (6, "d"), (7, "s"), (7, "p")))
ECONF_DIM = 2 * sum(2 * l + 1 for _, l in SUBSHELLS)  # 118

# ground states that differ from Madelung filling: the subshells whose occupation differs
MADELUNG_EXCEPTIONS: Dict[str, str] = {
    "Cr": "3d5 4s1", "Cu": "3d10 4s1",
    "Nb": "4d4 5s1", "Mo": "4d5 5s1", "Ru": "4d7 5s1", "Rh": "4d8 5s1", "Pd": "4d10 5s0", "Ag": "4d10 5s1",
    "La": "4f0 5d1", "Ce": "4f1 5d1", "Gd": "4f7 5d1", "Pt": "5d9 6s1", "Au": "5d10 6s1",
    "Ac": "5f0 6d1", "Th": "5f0 6d2", "Pa": "5f2 6d1", "U": "5f3 6d1", "Np": "5f4 6d1", "Cm": "5f7 6d1",
    "Ds": "6d9 7s1", "Rg": "6d10 7s1",
}


def _parse(text: str) -> Dict[Tuple[int, int], int]:
    return {(int(item[0]), _LETTERS.index(item[1])): int(item[2:]) for item in text.split()}


def configuration(symbol: str) -> Dict[Tuple[int, int], int]:
    """Ground-state occupation {(n, l): electrons} of element ``symbol`` (KeyError if not an element)."""
    z = atomic_numbers[symbol]
    if not 1 <= z <= 118:
        raise KeyError(symbol)
    occupation, left = {}, z
    for n, l in sorted(SUBSHELLS, key=lambda s: (s[0] + s[1], s[0])):
        occupation[(n, l)] = min(left, 2 * (2 * l + 1))
        left -= occupation[(n, l)]
    occupation.update(_parse(MADELUNG_EXCEPTIONS.get(symbol, "")))
    return {shell: e for shell, e in occupation.items() if e}


_SPIN_PAIR = {0: (-1, -1), 1: (-1, 1), 2: (1, 1)}


@lru_cache(maxsize=None)
def econf_vector(symbol: str) -> Tuple[float, ...]:
    """The (ECONF_DIM,) unit vector of element ``symbol`` (module docstring)."""
    occupation, out = configuration(symbol), []
    for n, l in SUBSHELLS:
        width, e = 2 * l + 1, occupation.get((n, l), 0)
        slots = [1] * e + [0] * (width - e) if e <= width else [2] * (e - width) + [1] * (2 * width - e)
        out.extend(v for slot in slots for v in _SPIN_PAIR[slot])
    return tuple(v / math.sqrt(ECONF_DIM) for v in out)


def econf_table(type_map: Sequence[str], *, key: str = "model/type_map") -> np.ndarray:
    """(n_types, ECONF_DIM) float64 rows of the elements of ``type_map``; ConfigError naming ``key``
    when a type is not an element symbol."""
    bad: List[str] = [name for name in type_map if atomic_numbers.get(name, 0) not in range(1, 119)]
    if bad:
        raise ConfigError(f"use_econf_tebd needs element symbols as types; not elements: {bad}", key=key)
    return np.array([econf_vector(name) for name in type_map], dtype=np.float64)
