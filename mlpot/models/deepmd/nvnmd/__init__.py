"""NVNMD (non-von Neumann MD, Mo et al., npj Comput Mater 8, 107 (2022)) emulated in software.

A standard DeePMD model whose section has ``nvnmd`` (keys ``NVNMD_MODEL_KEYS``) is built here:
the NVNMD se_a descriptor (``descriptor.py``; version 1: se_atten, ``descriptor_v1.py``, continuous
only) and the tanh4 energy fitting (``fitting.py``),
continuous (CNN) or quantised (QNN: ``quantize_descriptor`` / ``quantize_fitting_net``), with the
mapping tables of ``tables.py`` (from ``map_file``, DeePMD-kit's map.npy layout, or from the
state dict). DeePMD-kit's weight.npy / map.npy / config.npy files: ``files.py``. The DeePMD-kit
input's ``nvnmd`` section is translated by ``mlpot.config._deepmd_nvnmd``; the two-stage flow is
``mlpot train-nvnmd``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from mlpot.errors import ConfigError
from mlpot.models.deepmd.nvnmd.descriptor import DescriptorSeANvnmd
from mlpot.models.deepmd.nvnmd.descriptor_v1 import DescriptorSeAttenNvnmd
from mlpot.models.deepmd.nvnmd.fitting import NvnmdEnerFitting
from mlpot.models.sections import key, read_section

__all__ = ["NVNMD_MODEL_KEYS", "build_nvnmd", "DescriptorSeANvnmd", "DescriptorSeAttenNvnmd", "NvnmdEnerFitting"]

_DESCRIPTOR_TYPES = {0: ("se_e2_a", "se_a"), 1: ("se_atten", "dpa1")}

NVNMD_MODEL_KEYS = {
    "version": key(0, note="0: se_a with up to 4 types; 1: se_atten with up to 32 types", annotation=int),
    "max_nnei": key(128, note="128 or 256; every sel entry must be at most this", annotation=int),
    "quantize_descriptor": key(False, note="quantised (QNN) descriptor: tables and short floats", annotation=bool),
    "quantize_fitting_net": key(False, note="quantised (QNN) fitting nets: 23-bit fixed point", annotation=bool),
    "map_file": key(None, note="DeePMD-kit map.npy: the tables of the quantised descriptor (else from the state dict)",
                    annotation=Optional[str]),
}


def build_nvnmd(options: Dict[str, Any], descriptor_section: Dict[str, Any], fitting_section: Dict[str, Any],
                n_types: int, dtype: torch.dtype) -> Tuple[torch.nn.Module, NvnmdEnerFitting]:
    """(descriptor, fitting) of a standard model section with ``nvnmd`` options."""
    values = read_section(options, "model/nvnmd", NVNMD_MODEL_KEYS, "NvnmdModelSection")
    version = values["version"]
    if version not in _DESCRIPTOR_TYPES:
        raise ConfigError(f"expected 0 or 1, got {version}", key="model/nvnmd/version")
    if values["max_nnei"] not in (128, 256):
        raise ConfigError(f"expected 128 or 256, got {values['max_nnei']}", key="model/nvnmd/max_nnei")
    if descriptor_section.get("type") not in _DESCRIPTOR_TYPES[version]:
        raise ConfigError(f"NVNMD version {version} uses descriptor {_DESCRIPTOR_TYPES[version][0]}, got "
                          f"{descriptor_section.get('type')!r}", key="model/descriptor/type")
    if fitting_section.get("type", "ener") != "ener":
        raise ConfigError(f"NVNMD fits energies only (type ener), got {fitting_section.get('type')!r}",
                          key="model/fitting_net/type")
    descriptor_cls = DescriptorSeANvnmd if version == 0 else DescriptorSeAttenNvnmd
    descriptor = descriptor_cls.from_config(descriptor_section, n_types, dtype)
    descriptor.setup_nvnmd(values["quantize_descriptor"], values["max_nnei"])
    if values["map_file"] is not None and not values["quantize_descriptor"]:
        raise ConfigError("the tables are read by the quantised descriptor only: set quantize_descriptor true or "
                          "leave map_file out", key="model/nvnmd/map_file")
    if values["map_file"] is not None:
        from mlpot.models.deepmd.nvnmd.files import read_npy_dict

        descriptor.set_tables(read_npy_dict(values["map_file"], "model/nvnmd/map_file"))
    fitting = NvnmdEnerFitting.from_config(fitting_section, n_types, descriptor, dtype)
    fitting.setup_nvnmd(values["quantize_fitting_net"], tebd_width=descriptor.type_embedding.dim_out if version else 0)
    return descriptor, fitting
