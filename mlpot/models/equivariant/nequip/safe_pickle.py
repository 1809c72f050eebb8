"""Read pickles of PyTorch zip archives without running code from them.

NequIP checkpoints (``torch.save`` zip files) and packages (``torch.package`` zip files) store their
content as pickles. ``pickle`` would import and call whatever a pickle names, so a model file could
run arbitrary code. :class:`SafeUnpickler` resolves only an explicit allow-list:

* containers: ``collections.OrderedDict``, ``builtins.set`` / ``frozenset`` / ``slice``;
* tensors: ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` (mapped to local
  functions that view the raw storage bytes), the ``torch.*Storage`` types and ``torch`` dtypes;
* classes under the ``record_prefixes`` given by the caller (e.g. ``nequip``, ``e3nn``,
  ``torch.nn.modules`` for a pickled model): they become inert :class:`Record` objects holding the
  constructor arguments and pickled state (the module's ``__dict__``); nothing is imported.

Any other name raises a ``CheckpointError`` naming the file and the refused global. Storages are
read from the archive (``persistent_load``) and checked against their declared size.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Tuple

import torch

from mlpot.errors import CheckpointError

__all__ = ["Record", "SafeUnpickler", "safe_load", "module_state_dict"]

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
}
_TORCH_DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool", "complex64", "complex128")}


class Record:
    """Stand-in for an object of a class named in the pickle: ``qualname``, ``args``, ``state``."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"Record({self.qualname})"


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor without a storage")
    return storage.as_strided(tuple(size), tuple(stride), int(storage_offset)).clone()


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *state):
    return data


class SafeUnpickler(pickle.Unpickler):
    """Unpickler with an allow-list (module docstring). ``read_storage(key) -> bytes`` reads a storage
    record of the archive; ``file`` names the archive in errors."""

    _EXACT = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): tuple,
    }

    def __init__(self, data: bytes, read_storage: Callable[[str], bytes], file: str, record_prefixes: Iterable[str] = ()):
        super().__init__(io.BytesIO(data))
        self._read_storage, self._file = read_storage, str(file)
        self._prefixes = tuple(record_prefixes)
        self._records: Dict[Tuple[str, str], type] = {}
        self._storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._EXACT:
            return self._EXACT[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if any(module == p or module.startswith(p + ".") for p in self._prefixes):
            key = (module, name)
            if key not in self._records:
                self._records[key] = type(name, (Record,), {"qualname": f"{module}.{name}"})
            return self._records[key]
        raise CheckpointError(f"refusing to unpickle the global {module}.{name}: only weights and known containers are read "
                              "(mlpot never runs code from a model file)", file=self._file)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unexpected persistent id {pid!r:.80}", file=self._file)
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            raw = self._read_storage(key)
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise CheckpointError(f"storage {key}: {len(raw)} bytes for {numel} elements of {storage_type.dtype}", file=self._file)
            self._storages[key] = (torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw
                                   else torch.empty(0, dtype=storage_type.dtype))
        return self._storages[key]


def safe_load(data: bytes, read_storage: Callable[[str], bytes], file, record_prefixes: Iterable[str] = ()):
    """Unpickle ``data`` with :class:`SafeUnpickler`; malformed pickles become CheckpointErrors."""
    try:
        return SafeUnpickler(data, read_storage, str(file), record_prefixes).load()
    except CheckpointError:
        raise
    except Exception as error:  # a corrupt or foreign pickle: report it, do not leak pickle internals
        raise CheckpointError(f"cannot read the pickled data: {type(error).__name__}: {error}", file=str(file)) from None


def module_state_dict(record: Record, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """The ``state_dict`` of a pickled ``torch.nn.Module`` tree of Records (parameters and persistent buffers)."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    state = record.state if isinstance(record, Record) else None
    if not isinstance(state, dict):
        return out
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, prefix + name + "."))
    return out
