"""The constants of a TensorFlow frozen graph (``GraphDef`` protobuf, a ``.pb`` file), read without
TensorFlow or the ``protobuf`` package.

A frozen graph is one protobuf message, ``GraphDef``; its weights are the ``Const`` nodes, each
holding a ``TensorProto`` in its ``value`` attribute. mlpot reads only those, so a minimal decoder
of the protobuf wire format is hand-written here instead of depending on TensorFlow (hundreds of MB,
and DeePMD-kit's custom ops would be needed to import the graph) or on ``protobuf`` (not an mlpot
dependency, and it would still need TensorFlow's ``.proto`` message classes). Nothing of the graph
is run: its operations are read as names only (``op``), to recognise kinds of graph.

Wire format: every field is a varint key ``(number << 3) | wire_type``; wire type 0 a varint,
1 eight bytes, 2 a length-delimited byte string (strings, sub-messages, packed numbers), 5 four
bytes. The messages and field numbers read (TensorFlow's ``graph.proto``, ``node_def.proto``,
``attr_value.proto``, ``tensor.proto``, ``tensor_shape.proto``):

| message | fields read |
|---|---|
| GraphDef | 1 node (NodeDef, repeated) |
| NodeDef | 1 name, 2 op, 5 attr (map entries: 1 key, 2 AttrValue) |
| AttrValue | 8 tensor (TensorProto) |
| TensorProto | 1 dtype, 2 tensor_shape, 4 tensor_content, 5 float_val, 6 double_val, 7 int_val, 8 string_val, 10 int64_val, 11 bool_val |
| TensorShapeProto | 2 dim (Dim: 1 size) |

Typed ``*_val`` lists may be packed or not; a list shorter than the shape is broadcast from its
last value (TensorFlow's rule: one value fills a constant). Numbers are decoded with
``numpy.frombuffer`` (little-endian, as the wire format is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

import numpy as np

from mlpot.errors import CheckpointError

__all__ = ["GraphConstants", "read_graph_constants", "looks_like_graph"]

# TensorFlow DataType enum -> numpy dtype (DT_STRING: 7, decoded as str)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64, 10: np.bool_,
           19: np.float16}
_STRING = 7
_FLOAT, _DOUBLE = 1, 2


class _Truncated(Exception):
    pass


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _Truncated()
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of a message: value an int (varint), bytes (wire type 2) or
    the raw 4/8 bytes (wire types 5/1)."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value = data[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value = data[pos:pos + size]
            pos += size
        else:
            raise _Truncated()
        if pos > end:
            raise _Truncated()
        yield number, wire, value


def _varints(data: bytes) -> List[int]:
    out, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        out.append(value)
    return out


def _numbers(chunks: List[Tuple[int, Union[int, bytes]]], field: int) -> np.ndarray:
    """A typed repeated field of TensorProto from its (wire type, value) occurrences, packed or not:
    float_val / double_val are fixed-width little-endian numbers, the others varints."""
    if field in _FIXED:
        raw = b"".join(value for _, value in chunks)
        return np.frombuffer(raw, dtype=np.dtype(_FIXED[field]).newbyteorder("<"))
    values: List[int] = []
    for wire, value in chunks:
        values.extend(_varints(value) if wire == 2 else [value])
    # varints of negative int32/int64 values are their 64-bit two's complement
    return np.array([v - (1 << 64) if v >= 1 << 63 else v for v in values], dtype=np.int64)


def _shape(data: bytes) -> Tuple[int, ...]:
    dims = []
    for number, _, value in _fields(data):
        if number == 2:
            size = 0
            for n, _, v in _fields(value):
                if n == 1:
                    size = v - (1 << 64) if v >= 1 << 63 else v
            dims.append(size)
    return tuple(dims)


_FIXED = {5: np.float32, 6: np.float64}  # float_val, double_val
# the typed value field of each dtype: float_val, double_val, int_val (int32 and smaller ints),
# int64_val, bool_val, half_val (float16 bits in int32 varints)
_VALUE_FIELD = {1: 5, 2: 6, 3: 7, 4: 7, 5: 7, 6: 7, 9: 10, 10: 11, 19: 13}


def _tensor(data: bytes) -> Union[np.ndarray, str, List[str]]:
    """A TensorProto as a numpy array (a str, or list of str, for DT_STRING)."""
    dtype, shape, content = 0, (), None
    typed: Dict[int, List[Tuple[int, Union[int, bytes]]]] = {}
    strings: List[bytes] = []
    for number, wire, value in _fields(data):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _shape(value)
        elif number == 4:
            content = value
        elif number == 8:
            strings.append(value)
        elif number in (5, 6, 7, 10, 11, 13):
            typed.setdefault(number, []).append((wire, value))
    size = int(np.prod(shape)) if shape else 1
    if dtype == _STRING:
        text = [s.decode("utf-8", errors="replace") for s in strings]
        return text[0] if not shape and len(text) == 1 else text
    if dtype not in _DTYPES:
        raise ValueError(f"TensorFlow dtype {dtype} not read")
    numpy_dtype = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    if content is not None:
        array = np.frombuffer(content, dtype=numpy_dtype)
    else:
        values = _numbers(typed.get(_VALUE_FIELD[dtype], []), _VALUE_FIELD[dtype])
        array = values.astype(np.uint16).view(np.float16) if dtype == 19 else values.astype(numpy_dtype)
        if 0 < array.size < size:
            array = np.concatenate([array, np.full(size - array.size, array[-1], dtype=array.dtype)])
        elif array.size == 0:
            array = np.zeros(size, dtype=numpy_dtype)
    if array.size != size:
        raise ValueError(f"{array.size} values for shape {shape}")
    return array.astype(array.dtype.newbyteorder("=")).reshape(shape)


@dataclass
class GraphConstants:
    """What mlpot reads of a frozen graph: ``constants`` (Const node name -> numpy array, or str for
    a string constant) and ``ops`` (every node's op name -> how many nodes run it)."""

    file: str
    constants: Dict[str, Union[np.ndarray, str, List[str]]]
    ops: Dict[str, int]


def _node(data: bytes) -> Tuple[str, str, bytes]:
    name, op, value = "", "", b""
    for number, _, field in _fields(data):
        if number == 1:
            name = field.decode("utf-8", errors="replace")
        elif number == 2:
            op = field.decode("utf-8", errors="replace")
        elif number == 5:
            key, attr = b"", b""
            for n, _, v in _fields(field):
                if n == 1:
                    key = v
                elif n == 2:
                    attr = v
            if key == b"value":
                value = attr
    return name, op, value


def read_graph_constants(path) -> GraphConstants:
    """The Const nodes and op counts of the GraphDef in ``path``; CheckpointError naming the file for
    anything that is not a well-formed GraphDef."""
    source = str(path)
    try:
        data = open(path, "rb").read()
    except OSError as error:
        raise CheckpointError(f"cannot read the file: {error}", file=source) from error
    constants: Dict[str, Union[np.ndarray, str, List[str]]] = {}
    ops: Dict[str, int] = {}
    name = ""
    try:
        for number, wire, field in _fields(data):
            if number != 1 or wire != 2:
                continue
            name, op, value = _node(field)
            ops[op] = ops.get(op, 0) + 1
            if op == "Const":
                tensor = b"".join(v for n, _, v in _fields(value) if n == 8)
                constants[name] = _tensor(tensor)
    except (_Truncated, ValueError, UnicodeDecodeError) as error:
        where = f" (node {name})" if name else ""
        raise CheckpointError(f"not a readable TensorFlow GraphDef{where}: {error or 'truncated'}", file=source) from error
    if not ops:
        raise CheckpointError("not a TensorFlow GraphDef: no graph nodes", file=source)
    return GraphConstants(source, constants, ops)


def looks_like_graph(path) -> bool:
    """True when the file starts as a GraphDef does: a node field (tag 0x0a) whose NodeDef starts with
    its name (tag 0x0a, printable text) followed by its op (tag 0x12); cheap, reads 512 bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
        if len(head) < 6 or head[0] != 0x0A:
            return False
        _, pos = _varint(head, 1)
        if head[pos] != 0x0A:
            return False
        size, pos = _varint(head, pos + 1)
        name = head[pos:pos + size]
        return 0 < size == len(name) and name.isascii() and name.decode().isprintable() and head[pos + size] == 0x12
    except (OSError, _Truncated, IndexError):
        return False
