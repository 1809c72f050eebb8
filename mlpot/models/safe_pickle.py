"""Read the pickles of PyTorch zip archives (peers' model files) without running code from them.

Peers store trained models as pickles inside zip archives: NequIP checkpoints (``torch.save``,
``<root>/data.pkl`` + ``<root>/data/<key>``) and packages (``torch.package``,
``<root>/model/eager_model.pkl`` + ``<root>/.data/<key>.storage``), mace-torch ``.model`` files
(``torch.save`` of the whole module) and the TorchScript archives e3nn nests inside them
(``__codegen__``). ``pickle`` would import and call whatever such a pickle names, so a model file
could run arbitrary code. :class:`RestrictedUnpickler` resolves only:

* harmless containers and constructors: ``collections.OrderedDict``, ``set``, ``frozenset``,
  ``slice``, ``_codecs.encode`` (bytes in protocol-2 pickles), ``torch.Size``, torch dtypes and the
  ``torch.*Storage`` type names, TorchScript's typed-container tags (``torch.jit._pickle``);
* tensors: ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` mapped to local functions
  that view the raw storage bytes read from the archive (``persistent_load``, size-checked);
* the classes a family's :class:`AllowList` names (e.g. ``nequip``, ``e3nn``, ``mace``,
  ``torch.nn.modules``): they become inert :class:`PickledObject` records holding the
  constructor arguments and the pickled state (a module's ``__dict__``); nothing is imported.

Any other global raises a ``CheckpointError`` naming the file and the refused global, before it
is called. ``module_state`` turns a pickled ``torch.nn.Module`` tree into its state dict.
Written by hand: ``torch.load(weights_only=True)`` refuses the module classes that these files
pickle, and ``weights_only=False`` would run them.
"""

from __future__ import annotations

import codecs
import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

import torch

from mlpot.errors import CheckpointError

__all__ = ["AllowList", "PickledObject", "RestrictedUnpickler", "load_pickle", "open_archive", "archive_root",
           "load_archive_pickle", "module_state", "codegen_buffers"]

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
}
_TORCH_DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool", "complex64", "complex128")}
_TYPE_TAGS = ("restore_type_tag", "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")


@dataclass(frozen=True)
class AllowList:
    """Which classes of a peer's model file are read as inert records.

    packages: top-level packages (and their sub-modules) whose every name is recorded;
    modules: exact module -> names recorded (None: every name of that module);
    everything: record every global (to look at a file's structure before choosing its reader:
    records are inert, so nothing runs either);
    holds: what such a file holds, for the refusal message.
    """

    packages: Tuple[str, ...] = ()
    modules: Mapping[str, Optional[FrozenSet[str]]] = field(default_factory=dict)
    holds: str = "only weights and known containers are read"
    everything: bool = False

    def records(self, module: str, name: str) -> bool:
        if self.everything or any(module == p or module.startswith(p + ".") for p in self.packages):
            return True
        if module not in self.modules:
            return False
        names = self.modules[module]
        return names is None or name in names


class PickledObject:
    """An inert record of a pickled object: ``qualname``, constructor ``args``, ``state`` and the
    items a list/dict subclass would have received. Nothing of the original class runs."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, []
        return obj

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def attr(self, name: str, default: Any = None) -> Any:
        """Attribute ``name`` of the original object (from its pickled ``__dict__``)."""
        state = self.state[-1] if isinstance(self.state, tuple) else self.state
        return state.get(name, default) if isinstance(state, dict) else default

    def child(self, name: str) -> Optional["PickledObject"]:
        """Sub-module ``name`` (a torch ``_modules`` entry)."""
        return (self.attr("_modules") or {}).get(name)

    @property
    def class_name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"<pickled {self.qualname}>"


_record_classes: Dict[str, type] = {}


def _record_class(module: str, name: str) -> type:
    qualname = f"{module}.{name}"
    if qualname not in _record_classes:
        _record_classes[qualname] = type(name, (PickledObject,), {"qualname": qualname})
    return _record_classes[qualname]


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor without a storage")
    return storage.as_strided(tuple(size), tuple(stride), int(storage_offset)).clone()


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *state):
    return data


def _type_tag(value, *tag):
    return value


_EXACT = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice, ("_codecs", "encode"): codecs.encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    **{("torch.jit._pickle", tag): _type_tag for tag in _TYPE_TAGS},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler with an allow-list (module docstring). ``read_storage(key) -> bytes`` reads a storage
    record of the archive; ``file`` names the archive in errors."""

    def __init__(self, data: bytes, read_storage: Callable[[str], bytes], file: str, allow: AllowList = AllowList()):
        super().__init__(io.BytesIO(data))
        self._read_storage, self._file, self._allow = read_storage, str(file), allow
        self._storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _EXACT:
            return _EXACT[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if self._allow.records(module, name):
            return _record_class(module, name)
        raise CheckpointError(f"refusing to unpickle the global {module}.{name}: {self._allow.holds} "
                              "(mlpot never runs code from a model file)", file=self._file)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], (_StorageType, torch.dtype))):
            raise CheckpointError(f"unexpected persistent id {pid!r:.80}", file=self._file)
        _, storage_type, key, _location, numel = pid
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else storage_type
        key = str(key)
        if key not in self._storages:
            raw = self._read_storage(key)
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise CheckpointError(f"storage {key}: {len(raw)} bytes for {numel} elements of {dtype}", file=self._file)
            self._storages[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def load_pickle(data: bytes, read_storage: Callable[[str], bytes], file, allow: AllowList = AllowList()):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; malformed pickles become CheckpointErrors."""
    try:
        return RestrictedUnpickler(data, read_storage, str(file), allow).load()
    except CheckpointError:
        raise
    except Exception as error:  # a corrupt or foreign pickle: report it, do not leak pickle internals
        raise CheckpointError(f"cannot read the pickled data: {type(error).__name__}: {error}", file=str(file)) from None


def open_archive(path, not_zip: str) -> zipfile.ZipFile:
    """The zip archive at ``path``; CheckpointError "file not found" or ``not_zip`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("file not found", file=str(path))
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(not_zip, file=str(path)) from None


def archive_root(archive: zipfile.ZipFile, marker: str, file) -> str:
    """Top folder of the archive entry ``<root>/<marker>`` (e.g. 'data.pkl'); little-endian checked."""
    for name in archive.namelist():
        parts = name.split("/")
        if "/".join(parts[1:]) == marker:
            root = parts[0]
            order = f"{root}/byteorder"
            if order in archive.namelist() and archive.read(order).decode().strip() != "little":
                raise CheckpointError("big-endian archives are not supported", file=str(file))
            return root
    raise CheckpointError(f"no {marker} inside: not a model file of the expected kind", file=str(file))


def load_archive_pickle(archive: zipfile.ZipFile, pickle_entry: str, storage_entry: Callable[[str], str], file,
                        allow: AllowList = AllowList()):
    """Unpickle the archive entry ``pickle_entry``; storage ``key`` is read from ``storage_entry(key)``."""
    names = set(archive.namelist())

    def storage(key: str) -> bytes:
        entry = storage_entry(key)
        if entry not in names:
            raise CheckpointError(f"missing storage record {entry}", file=str(file))
        return archive.read(entry)

    return load_pickle(archive.read(pickle_entry), storage, file, allow)


def codegen_buffers(blob: bytes, file: str, allow: AllowList = AllowList()) -> Dict[str, torch.Tensor]:
    """Tensors of one TorchScript archive kept as bytes (e3nn's ``__codegen__``), e.g.
    {'_w3j_1_2_1': (3, 5, 3)}; its code is never loaded."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        entry = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
    except Exception as exc:
        raise CheckpointError(f"cannot read a generated-code archive: {exc}", file=file) from None
    prefix = entry[: -len("data.pkl")]
    record = load_archive_pickle(archive, entry, lambda key: f"{prefix}data/{key}", file, allow)
    tensors = dict(record.attr("_buffers") or {}) if isinstance(record, PickledObject) else {}
    if isinstance(record, PickledObject) and isinstance(record.state, dict):
        tensors.update({k: v for k, v in record.state.items() if isinstance(v, torch.Tensor)})
    return tensors


def module_state(record: PickledObject, file: str, prefix: str = "", persistent_only: bool = False,
                 allow: AllowList = AllowList()) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of a pickled ``torch.nn.Module`` tree of records: parameters, buffers (only the
    persistent ones with ``persistent_only``, as ``state_dict``) and the tensors of e3nn
    generated-code archives (``<module>.<codegen name>.<buffer>``)."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    if not isinstance(record, PickledObject):
        return out
    skip = (record.attr("_non_persistent_buffers_set") or set()) if persistent_only else set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (record.attr(group) or {}).items():
            if tensor is not None and name not in skip:
                out[prefix + name] = tensor.detach() if isinstance(tensor, torch.Tensor) else tensor
    for name, blob in (record.attr("__codegen__") or {}).items():
        if isinstance(blob, (bytes, bytearray)):
            for key, tensor in codegen_buffers(bytes(blob), file, allow).items():
                out[f"{prefix}{name}.{key}"] = tensor
    for name, child in (record.attr("_modules") or {}).items():
        if isinstance(child, PickledObject):
            out.update(module_state(child, file, f"{prefix}{name}.", persistent_only, allow))
    return out
