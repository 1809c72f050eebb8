"""Extended XYZ through ASE, with a key map from the file's names onto the batch keys.

The file's per-frame ``info`` keys, per-atom ``arrays`` and any results ASE moved into a
``SinglePointCalculator`` (``energy``, ``forces``, ``stress``, ...) are looked up in a key map
(file name -> batch key). The default map covers MACE-SCF/FHI-aims names (``AIMS_energy``,
``AIMS_forces``, ``AIMS_atom_multipoles``, ``AIMS_dipole``, ``the_fermi_level``,
``the_external_field``, ``total_charge``), MACE/NequIP ``REF_*`` names and the plain names.
Per-config weights ``config_<name>_weight`` (``<name>`` = our key or the file's key) become
``<label>_weight``; ``config_dipole_weight`` may be a 3-vector (component mask).
Units are taken as in the file: eV, Å, e, V/Å, stress eV/Å^3 (ASE sign convention).
A one-atom frame with ``config_type=IsolatedAtom`` (MACE's reference atoms) gets ``ISOLATED_ATOM``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import voigt_6_to_full_3x3_stress

from mlpot.data import keys as K
from mlpot.data.frames import FrameList, check_finite, numbers_from_type_map
from mlpot.errors import DataError, suggest

__all__ = ["DEFAULT_KEY_MAP", "read_extxyz", "write_extxyz"]

DEFAULT_KEY_MAP: Dict[str, str] = {}
for _our, _names in {
    K.ENERGY: ["AIMS_energy", "REF_energy", "energy", "free_energy"],
    K.FORCES: ["AIMS_forces", "REF_forces", "forces"],
    K.ATOMIC_MULTIPOLES: ["AIMS_atom_multipoles", "REF_atomic_multipoles", "atomic_multipoles"],
    K.DIPOLE: ["AIMS_dipole", "REF_dipole", "dipole"],
    K.TOTAL_CHARGE: ["total_charge", "REF_total_charge"],
    K.FERMI_LEVEL: ["the_fermi_level", "REF_fermi_level", "fermi_level"],
    K.EXTERNAL_FIELD: ["the_external_field", "REF_external_field", "external_field"],
    K.STRESS: ["REF_stress", "stress"],
    K.VIRIAL: ["REF_virial", "virial"],
    K.CHARGES: ["REF_charges", "charges"],
    K.POLARIZABILITY: ["REF_polarizability", "polarizability"],
    K.ESPS: ["electrostatic_potentials", "REF_esps", "esps"],
    K.ATOM_ENERGY: ["REF_atom_energy", "atom_energy", "energies"],
    K.MOL_ID: ["molID", "mol_id"],
}.items():
    for _name in _names:
        DEFAULT_KEY_MAP[_name] = _our

# our own key names read back as themselves (what write_extxyz writes)
for _name, _spec in K.KEYS.items():
    if _spec.level != "edge" and not _name.endswith("_weight") and _name not in (
            K.POSITIONS, K.ATOM_TYPES, K.NUMBERS, K.CELL, K.PBC, K.BATCH, K.PTR, K.N_ATOMS, K.FRAME_ID,
            K.ISOLATED_ATOM):
        DEFAULT_KEY_MAP.setdefault(_name, _name)


def _as_array(key: str, value, file, frame_index, file_key) -> np.ndarray:
    """Value as float64 with the key's trailing shape (stress may come in Voigt order)."""
    array = np.asarray(value, dtype=np.float64)
    if key == K.STRESS and array.shape == (6,):
        return voigt_6_to_full_3x3_stress(array)
    spec = K.KEYS[key]
    if -1 in spec.shape:
        return array
    shape = spec.shape if spec.level == "frame" else (-1,) + spec.shape
    try:
        return array.reshape(shape)
    except ValueError:
        raise DataError(f"has shape {array.shape}, expected {shape}",
                        file=file, frame=frame_index, key=file_key) from None


def read_extxyz(path, *, type_map: Optional[Sequence[str]] = None,
                key_map: Optional[Mapping[str, str]] = None, index=":") -> FrameList:
    """Read an extxyz file into a :class:`FrameList`.

    ``key_map`` (file name -> batch key, or None to ignore a file key) takes precedence over
    :data:`DEFAULT_KEY_MAP`: when several file keys map to one batch key, the user's come first,
    then the defaults in their listed order. Types are the element symbols mapped through
    ``type_map`` (default: symbols in order of first appearance).
    """
    file = str(path)
    key_map = dict(key_map or {})
    for file_key, our_key in key_map.items():
        if our_key is not None and our_key not in K.KEYS:
            raise DataError(f"key_map maps {file_key!r} to unknown batch key {our_key!r}", file=file,
                            key="key_map", hint=f"did you mean {suggest(our_key, K.KEYS)!r}?"
                            if suggest(our_key, K.KEYS) else None)
    candidates = [(f, o) for f, o in key_map.items() if o is not None] + \
        [(f, o) for f, o in DEFAULT_KEY_MAP.items() if f not in key_map]
    try:
        images = ase.io.read(file, index=index, format="extxyz")
    except Exception as exc:  # ASE raises many types for malformed files
        raise DataError(f"cannot read as extxyz: {exc}", file=file) from exc
    if isinstance(images, Atoms):
        images = [images]
    symbols_seen = list(type_map) if type_map is not None else []
    if type_map is None:
        for atoms in images:
            for symbol in dict.fromkeys(atoms.get_chemical_symbols()):
                if symbol not in symbols_seen:
                    symbols_seen.append(symbol)
    type_of = {name: t for t, name in enumerate(symbols_seen)}
    frames = FrameList(type_map=symbols_seen, source=file)
    for frame_index, atoms in enumerate(images):
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(type_of))
        if unknown:
            raise DataError(f"element(s) {unknown} not in the type_map {symbols_seen}",
                            file=file, frame=frame_index, key="species")
        frame = {
            K.POSITIONS: atoms.get_positions().astype(np.float64),
            K.ATOM_TYPES: np.array([type_of[s] for s in symbols], dtype=np.int64),
            K.NUMBERS: atoms.get_atomic_numbers().astype(np.int64),
            K.CELL: np.array(atoms.get_cell()[:], dtype=np.float64),
            K.PBC: np.array(atoms.get_pbc(), dtype=bool),
        }
        if len(atoms) == 1 and atoms.info.get("config_type") == "IsolatedAtom":
            frame[K.ISOLATED_ATOM] = np.array(True)  # MACE's marker of an element's reference energy
        sources = dict(atoms.info)
        sources.update({k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")})
        if atoms.calc is not None:
            sources.update(atoms.calc.results)
        names = {}
        for file_key, key in candidates:
            if file_key in sources and key not in frame:
                frame[key] = _as_array(key, sources[file_key], file, frame_index, file_key)
                names[key] = file_key
        for label in K.LABELS:
            if label not in frame:
                continue
            weight = np.ones(3) if label == K.DIPOLE else np.array(1.0)
            for name in (label, names[label]):
                if f"config_{name}_weight" in sources:
                    given = np.asarray(sources[f"config_{name}_weight"], dtype=np.float64)
                    weight = np.broadcast_to(given, weight.shape).copy() if given.size in (1, weight.size) \
                        else weight
            frame[K.weight_key(label)] = weight
        check_finite(frame, file=file, frame_index=frame_index, names=names)
        frames.append(frame)
    return frames


def write_extxyz(path, frames: Sequence[dict], *, type_map: Sequence[str]) -> Path:
    """Write frames as extxyz with our key names (energy/forces/stress in ASE's calculator fields).

    Per-frame weights other than 1 are written as ``config_<key>_weight``. Species come from the
    atomic numbers (or the type_map names when the numbers are unknown).
    """
    path = Path(path)
    numbers_of_type = numbers_from_type_map(type_map)
    images = []
    for frame in frames:
        numbers = np.asarray(frame.get(K.NUMBERS, numbers_of_type[frame[K.ATOM_TYPES]]))
        numbers = np.where(numbers > 0, numbers, numbers_of_type[frame[K.ATOM_TYPES]])
        atoms = Atoms(numbers=numbers, positions=frame[K.POSITIONS], cell=frame[K.CELL], pbc=frame[K.PBC])
        results = {}
        for key, value in frame.items():
            spec = K.KEYS.get(key)
            if key in (K.POSITIONS, K.ATOM_TYPES, K.NUMBERS, K.CELL, K.PBC) or spec is None \
                    or spec.level == "edge" or key.endswith("_weight") or key in (K.FRAME_ID, K.ISOLATED_ATOM):
                continue
            value = np.asarray(value)
            if key in (K.ENERGY, K.FORCES):
                results[key] = value if value.ndim else float(value)
            elif spec.level == "atom":
                atoms.arrays[key] = value.reshape(len(atoms), -1) if value.ndim > 2 else value
            else:
                atoms.info[key] = value.reshape(-1) if value.ndim > 1 else value
            if spec.label:
                weight = np.asarray(frame.get(K.weight_key(key), 1.0))
                if np.any(weight != 1.0):
                    atoms.info[f"config_{key}_weight"] = weight
        if frame.get(K.ISOLATED_ATOM, False):
            atoms.info["config_type"] = "IsolatedAtom"
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")
    return path
