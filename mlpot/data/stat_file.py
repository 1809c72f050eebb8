"""The statistics file (DeePMD-kit's ``training/stat_file``): computed data statistics stored once
and read back by later runs on the same data.

The file is an HDF5 file (suffix ``.h5`` / ``.hdf5``) or else a directory, as in DeePMD-kit. mlpot
writes only under its own top-level ``mlpot`` group (HDF5) or ``mlpot/`` folder (directory), one
entry per named record of arrays, so a file that DeePMD-kit wrote at the same path keeps its
content (mlpot cannot use DeePMD-kit's records: they are tied to its networks).

Modes (``stat_file_mode``): ``update`` (default) reads what is there and writes what is missing;
``read`` never writes: a missing record is an error of the caller's choosing. A record is written
complete or not at all (temporary name, then rename), so a run killed while writing leaves no
half record behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from mlpot.errors import DataError

__all__ = ["StatisticsFile", "STAT_FILE_MODES"]

STAT_FILE_MODES = ("update", "read")
_ROOT = "mlpot"
_TEXT = "__json__"  # the array holding a JSON record (UTF-8 bytes)


class StatisticsFile:
    """Named records of arrays in an HDF5 file or a directory (see the module docstring)."""

    def __init__(self, path, mode: str = "update"):
        if mode not in STAT_FILE_MODES:
            raise DataError(f"unknown stat_file_mode {mode!r}; valid: {', '.join(STAT_FILE_MODES)}",
                            key="stat_file_mode")
        self.path = Path(path)
        self.mode = mode
        self.hdf5 = self.path.suffix.lower() in (".h5", ".hdf5")

    def __repr__(self) -> str:
        return f"StatisticsFile({str(self.path)!r}, mode={self.mode!r})"

    # ---- arrays ------------------------------------------------------------------------------
    def read(self, name: str) -> Optional[Dict[str, np.ndarray]]:
        """The arrays of record ``name`` (``a/b`` paths allowed), or None when absent or unreadable."""
        try:
            return self._read_hdf5(name) if self.hdf5 else self._read_folder(name)
        except (OSError, ValueError, KeyError):
            return None

    def write(self, name: str, arrays: Dict[str, np.ndarray]) -> None:
        """Store record ``name`` (replacing an older one); nothing is written in ``read`` mode."""
        if self.mode == "read":
            return
        try:
            (self._write_hdf5 if self.hdf5 else self._write_folder)(name, {k: np.asarray(v) for k, v in arrays.items()})
        except OSError as exc:
            raise DataError(f"cannot write the statistics ({exc})", file=str(self.path), key="stat_file") from None

    # ---- JSON records ------------------------------------------------------------------------
    def read_json(self, name: str):
        record = self.read(name)
        if record is None or _TEXT not in record:
            return None
        return json.loads(record[_TEXT].tobytes().decode())

    def write_json(self, name: str, value) -> None:
        self.write(name, {_TEXT: np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)})

    # ---- backends ----------------------------------------------------------------------------
    def _read_hdf5(self, name: str) -> Optional[Dict[str, np.ndarray]]:
        import h5py

        if not self.path.is_file():
            return None
        with h5py.File(self.path, "r") as handle:
            group = handle.get(f"{_ROOT}/{name}")
            if group is None:
                return None
            return {key: np.asarray(group[key]) for key in group}

    def _write_hdf5(self, name: str, arrays: Dict[str, np.ndarray]) -> None:
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.path, "a") as handle:
            target = f"{_ROOT}/{name}"
            temporary = f"{target}.tmp{os.getpid()}"
            if temporary in handle:
                del handle[temporary]
            group = handle.create_group(temporary)
            for key, value in arrays.items():
                group.create_dataset(key, data=value)
            if target in handle:
                del handle[target]
            handle.move(temporary, target)

    def _read_folder(self, name: str) -> Optional[Dict[str, np.ndarray]]:
        folder = self.path / _ROOT / name
        if not folder.is_dir():
            return None
        return {file.stem: np.load(file, allow_pickle=False) for file in sorted(folder.glob("*.npy"))}

    def _write_folder(self, name: str, arrays: Dict[str, np.ndarray]) -> None:
        target = self.path / _ROOT / name
        temporary = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        for key, value in arrays.items():
            np.save(temporary / f"{key}.npy", value, allow_pickle=False)
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
