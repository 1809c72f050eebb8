"""Compiled models written by ``mlpot compile`` (:mod:`mlpot.calculators.compile`): detection and runner.

:class:`CompiledRunner` runs such a file (AOTInductor package, exported program or TorchScript
fallback) for the ASE calculator and the LAMMPS driver: one function of plain tensors

    (positions (n, 3) Å, cell (1, 3, 3) Å, pbc (1, 3), atom_types (n,), numbers (n,),
     edge_index (2, E), edge_shifts (E, 3))
        -> (energy (1,) eV, atom_energy (n,) eV, forces (n, 3) eV/Å, virial (1, 3, 3) eV)

with the numbers of atoms and edges dynamic; its ``mlpot`` metadata record gives type_map, cutoff,
dtype, family and source.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Dict, Union

import torch

from mlpot.data import keys as K
from mlpot.errors import ConfigError, DataError

__all__ = ["CompiledRunner", "load_compiled", "is_compiled_file", "FORMAT", "COMPILED_INPUTS", "COMPILED_OUTPUTS"]

FORMAT = "mlpot-compiled"
COMPILED_INPUTS = (K.POSITIONS, K.CELL, K.PBC, K.ATOM_TYPES, K.NUMBERS, K.EDGE_INDEX, K.EDGE_SHIFTS)
COMPILED_OUTPUTS = (K.ENERGY, K.ATOM_ENERGY, K.FORCES, K.VIRIAL)


def is_compiled_file(path: Union[str, Path]) -> bool:
    """True for the files ``mlpot compile`` writes: zip archives with an ``archive_format`` entry
    (AOTInductor packages, exported programs) or TorchScript archives with our ``extra/mlpot.json``;
    frozen models and checkpoints are ``torch.save`` zips with neither."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(("archive_format", "extra/mlpot.json")) for name in archive.namelist())


class CompiledRunner:
    """Runs a compiled file (see :mod:`mlpot.calculators.runner` for the runner interface)."""

    kind = "compiled"

    def __init__(self, path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
        self.path = Path(path)
        self.device = torch.device(device)
        self.metadata, self.module = _open(self.path, self.device)
        self.type_map = list(self.metadata["type_map"])
        self.cutoff = float(self.metadata["cutoff"])
        self.dtype = getattr(torch, self.metadata.get("dtype", "float64"))
        self.kind = f"compiled, {self.metadata['backend']}"

    def __call__(self, batch: Dict[str, torch.Tensor], virial: bool = True) -> Dict[str, torch.Tensor]:
        n_atoms, n_edges = batch[K.POSITIONS].shape[0], batch[K.EDGE_INDEX].shape[1]
        if n_atoms < 2 or n_edges < 2:
            raise DataError(f"a compiled model needs at least 2 atoms and 2 pairs within its cutoff "
                            f"(got {n_atoms} atoms, {n_edges} pairs); use the frozen model", key="structure")
        types = batch[K.ATOM_TYPES]
        if int(types.max()) >= len(self.type_map) or int(types.min()) < 0:
            raise DataError(f"atom type out of range for type_map {self.type_map}", key=K.ATOM_TYPES)
        arguments = tuple(batch[key].to(self.device) for key in COMPILED_INPUTS)
        with torch.no_grad() if self.metadata["backend"] == "aoti" else torch.enable_grad():
            outputs = self.module(*arguments)
        return {key: value.detach() for key, value in zip(COMPILED_OUTPUTS, outputs)}


def _open(path: Path, device: torch.device):
    """(metadata, callable) of a compiled file."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        extra = [n for n in names if n.endswith("extra/mlpot.json") or n.endswith("mlpot.json")]
        aoti = any("aotinductor" in n for n in names)
        text = archive.read(extra[0]).decode() if extra else None
    if aoti:
        from torch._inductor import aoti_load_package

        module = aoti_load_package(str(path))
        text = module.get_metadata().get("mlpot", text)
    elif text is not None and json.loads(text).get("backend") == "torchscript":
        module = torch.jit.load(str(path), map_location=device)
    else:
        module = torch.export.load(str(path)).module()
    if text is None:
        raise DataError("not a model written by mlpot compile (no mlpot metadata)", file=str(path))
    metadata = json.loads(text)
    if metadata.get("device", "cpu") != device.type:
        raise DataError(f"compiled for {metadata.get('device')}, asked to run on {device.type}: compile it again "
                        f"with --device {device.type}", file=str(path))
    return metadata, module


def load_compiled(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> CompiledRunner:
    """The runner of a file written by :func:`compile_model`."""
    return CompiledRunner(path, device=device)
