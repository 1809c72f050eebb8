"""Reading mace-torch ``.model`` files (``torch.save`` of a whole module) without running their code.

A ``.model`` is a zip archive whose ``data.pkl`` pickles the module tree: it names mace-torch,
e3nn and torch classes, which an ordinary unpickler would import and call. Here:

* ``RestrictedUnpickler.find_class`` maps every class of the ``mace`` and ``e3nn`` packages and a
  short list of torch containers, activations and ``torch.fx`` rebuild functions to inert
  ``PickledObject`` records (class path, constructor arguments, state) and allows only a handful of
  harmless callables (``collections.OrderedDict``, ``set``, ``_codecs.encode`` and torch's tensor
  rebuild functions). Anything else — ``os.system``, ``builtins.eval``, any other module — is
  refused with a ``CheckpointError`` naming the file and the global, before it is called.
* Tensor storages come through torch's own persistent-load mechanism: ``torch.load`` with this
  unpickler as its ``pickle_module``.
* e3nn keeps the TorchScript code of its generated modules as bytes (``__codegen__``); only the
  tensors of those nested archives are read (``codegen_buffers``), by the same restricted
  unpickler and a storage reader of their zip records. Their code is never loaded.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile
from typing import Any, Dict, Optional

import numpy as np
import torch

from mlpot.errors import CheckpointError

__all__ = ["PickledObject", "RestrictedUnpickler", "read_pickled_module", "codegen_buffers", "module_state"]

_SAFE_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("_codecs", "encode"): codecs.encode,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}
_RECORDED_PACKAGES = ("mace", "e3nn", "__torch__")
_RECORDED_TORCH = {
    "torch.nn.modules.container": None, "torch.nn.modules.module": None, "torch.nn.modules.linear": None,
    "torch.nn.modules.activation": None, "torch.fx.graph_module": {"reduce_graph_module", "GraphModule"},
    "torch.nn.functional": {"silu", "tanh", "relu", "gelu", "softplus", "sigmoid"},
    "torch": {"tanh", "abs", "sigmoid", "relu"},
}
_TYPE_TAGS = {"restore_type_tag", "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"}
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class PickledObject:
    """An inert record of a pickled object: ``qualname``, constructor ``args``, ``state``, and the
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


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that records mace/e3nn/torch module classes and refuses every other global."""

    source = "<model file>"

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[(module, name)]
        if module.split(".")[0] in _RECORDED_PACKAGES:
            return _record_class(module, name)
        allowed = _RECORDED_TORCH.get(module, False)
        if allowed is None or (allowed and name in allowed):
            return _record_class(module, name)
        raise CheckpointError(f"refusing to unpickle the global {module}.{name}: a mace-torch model file holds only "
                              "mace, e3nn and torch module classes (the file may be corrupted or malicious)",
                              file=self.source)


def _pickle_module(source: str):
    """A ``pickle_module`` for ``torch.load`` whose Unpickler is restricted and names ``source``."""
    unpickler = type("Unpickler", (RestrictedUnpickler,), {"source": source})

    def load(file, **kwargs):
        return unpickler(file, **kwargs).load()

    return type("restricted_pickle", (), {"Unpickler": unpickler, "load": staticmethod(load),
                                          "__name__": "restricted_pickle"})


def read_pickled_module(path) -> PickledObject:
    """The pickled module tree of a ``.model`` file as ``PickledObject`` records (tensors are real)."""
    path = str(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError("not a torch.save zip archive (mace-torch .model files are)", file=path)
    try:
        root = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(path))
    except CheckpointError:
        raise
    except Exception as exc:  # truncated archive, unknown pickle opcode, ...
        raise CheckpointError(f"cannot read the model file: {exc}", file=path) from None
    if not isinstance(root, PickledObject):
        raise CheckpointError(f"expected a pickled mace-torch module, found {type(root).__name__}", file=path)
    return root


class _ArchiveUnpickler(RestrictedUnpickler):
    """Restricted unpickler of a nested TorchScript archive: storages from its zip records."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: storage.as_strided(size, stride, offset).clone()
        if module == "torch.jit._pickle" and name in _TYPE_TAGS:  # TorchScript's typed containers: keep the value
            return lambda value, *tag: value
        return super().find_class(module, name)

    def persistent_load(self, saved_id):
        kind, dtype, key, _location, numel = saved_id
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unexpected persistent record {saved_id!r} in a generated-code archive", file=self.source)
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        array = np.frombuffer(raw, dtype=torch.empty(0, dtype=dtype).numpy().dtype, count=int(numel))
        return torch.from_numpy(array.copy())


def codegen_buffers(blob: bytes, source: str) -> Dict[str, torch.Tensor]:
    """Tensors (buffers) of one e3nn ``__codegen__`` archive, e.g. {'_w3j_1_2_1': (3, 5, 3)}."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        prefix = pickles[0][: -len("data.pkl")]
        unpickler = _ArchiveUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix)
        unpickler.source = source
        record = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read an e3nn generated-code archive: {exc}", file=source) from None
    state = record.attr("_buffers") if isinstance(record, PickledObject) else None
    tensors = {} if state is None else dict(state)
    if isinstance(record, PickledObject) and isinstance(record.state, dict):
        tensors.update({k: v for k, v in record.state.items() if isinstance(v, torch.Tensor)})
    return tensors


def module_state(record: PickledObject, source: str, prefix: str = "") -> Dict[str, torch.Tensor]:
    """The state dict (mace-torch names) of a pickled module tree, generated-code buffers included."""
    out: Dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (record.attr(group) or {}).items():
            if tensor is not None:
                out[prefix + name] = tensor.detach() if isinstance(tensor, torch.Tensor) else tensor
    for name, blob in (record.attr("__codegen__") or {}).items():
        if isinstance(blob, (bytes, bytearray)):
            for key, tensor in codegen_buffers(bytes(blob), source).items():
                out[f"{prefix}{name}.{key}"] = tensor
    for name, child in (record.attr("_modules") or {}).items():
        if isinstance(child, PickledObject):
            out.update(module_state(child, source, f"{prefix}{name}."))
    return out
