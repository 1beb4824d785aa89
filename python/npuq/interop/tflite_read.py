"""Reading a TFLite flatbuffer from outside into plain, validated Python values.

A ``.tflite`` file is hostile until read: every offset, vector length and buffer reference in it comes
from the file. The generated accessors of the ``tflite`` schema package follow offsets without checking
them, so this module wraps them: every vector length is checked against the file's size before it is
iterated (a 30-byte file cannot make us loop 2^31 times), every exception the accessors raise on a broken
offset becomes a :class:`TFLiteImportError` naming the file, and nothing of the file is kept as a view
(constants are copied out). What comes out, :class:`TFLiteGraph`, holds numbers and numpy arrays only;
:mod:`npuq.interop.tflite_import` decides what they mean.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npuq._untrusted import read_regular, size_limit
from npuq.interop import require

#: the largest ``.tflite`` file read (the flatbuffer format itself stops at 2 GiB)
MAX_TFLITE_BYTES = 2 << 30
_IDENTIFIER = b"TFL3"

# TensorType enum of the schema -> numpy dtype name (the types an int8 model can hold)
TENSOR_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: "string",
    6: "bool",
    7: "int16",
    8: "complex64",
    9: "int8",
    10: "float64",
    11: "complex128",
    12: "uint64",
    13: "resource",
    14: "variant",
    15: "uint32",
    16: "uint16",
    17: "int4",
    18: "bfloat16",
}
_NUMPY_TYPES = {
    "float32",
    "float16",
    "int32",
    "uint8",
    "int64",
    "int16",
    "int8",
    "float64",
    "uint64",
    "uint32",
    "uint16",
}

_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

# opcode -> (options class of the schema package, [(field name, accessor, converter)]). Only the options
# the importer reads; an op whose options are absent gets its defaults, as the TFLite runtime gives them.
_OPTIONS: dict[str, tuple[str, list[tuple[str, str, Any]]]] = {
    "CONV_2D": (
        "Conv2DOptions",
        [
            ("padding", "Padding", _PADDING.get),
            ("stride_w", "StrideW", int),
            ("stride_h", "StrideH", int),
            ("dilation_w_factor", "DilationWFactor", int),
            ("dilation_h_factor", "DilationHFactor", int),
            ("fused_activation_function", "FusedActivationFunction", _ACTIVATION.get),
        ],
    ),
    "DEPTHWISE_CONV_2D": (
        "DepthwiseConv2DOptions",
        [
            ("padding", "Padding", _PADDING.get),
            ("stride_w", "StrideW", int),
            ("stride_h", "StrideH", int),
            ("depth_multiplier", "DepthMultiplier", int),
            ("dilation_w_factor", "DilationWFactor", int),
            ("dilation_h_factor", "DilationHFactor", int),
            ("fused_activation_function", "FusedActivationFunction", _ACTIVATION.get),
        ],
    ),
    "FULLY_CONNECTED": (
        "FullyConnectedOptions",
        [
            ("fused_activation_function", "FusedActivationFunction", _ACTIVATION.get),
            ("weights_format", "WeightsFormat", int),
            ("keep_num_dims", "KeepNumDims", bool),
            ("asymmetric_quantize_inputs", "AsymmetricQuantizeInputs", bool),
        ],
    ),
    "ADD": ("AddOptions", [("fused_activation_function", "FusedActivationFunction", _ACTIVATION.get)]),
    "MUL": ("MulOptions", [("fused_activation_function", "FusedActivationFunction", _ACTIVATION.get)]),
    "AVERAGE_POOL_2D": (
        "Pool2DOptions",
        [
            ("padding", "Padding", _PADDING.get),
            ("stride_w", "StrideW", int),
            ("stride_h", "StrideH", int),
            ("filter_width", "FilterWidth", int),
            ("filter_height", "FilterHeight", int),
            ("fused_activation_function", "FusedActivationFunction", _ACTIVATION.get),
        ],
    ),
    "MEAN": ("ReducerOptions", [("keep_dims", "KeepDims", bool)]),
    "CONCATENATION": (
        "ConcatenationOptions",
        [("axis", "Axis", int), ("fused_activation_function", "FusedActivationFunction", _ACTIVATION.get)],
    ),
    "SOFTMAX": ("SoftmaxOptions", [("beta", "Beta", float)]),
    "LEAKY_RELU": ("LeakyReluOptions", [("alpha", "Alpha", float)]),
    "GELU": ("GeluOptions", [("approximate", "Approximate", bool)]),
    "RESIZE_NEAREST_NEIGHBOR": (
        "ResizeNearestNeighborOptions",
        [("align_corners", "AlignCorners", bool), ("half_pixel_centers", "HalfPixelCenters", bool)],
    ),
}
_OPTIONS["MAX_POOL_2D"] = _OPTIONS["AVERAGE_POOL_2D"]
# vector-valued options, read with their length checked
_VECTOR_OPTIONS = {
    "RESHAPE": ("ReshapeOptions", "new_shape", "NewShape"),
    "SQUEEZE": ("SqueezeOptions", "squeeze_dims", "SqueezeDims"),
}


class TFLiteImportError(ValueError):
    """A TFLite model that cannot be read or imported; the message names the file and, where it applies,
    the operator (by index and opcode) or the tensor."""


@dataclass
class TFLiteTensor:
    """One tensor of the subgraph. ``scale`` / ``zero_point`` are None for an unquantized tensor, 1-D
    arrays (length 1 for a per-tensor quantization) otherwise; ``axis`` is the quantized dimension.
    ``data`` holds a constant's values (a copy, in the tensor's shape), None for an activation."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    axis: int = 0
    data: np.ndarray | None = None

    def describe(self) -> str:
        return f"tensor {self.index} '{self.name}' ({self.dtype}{list(self.shape)})"


@dataclass
class TFLiteOperator:
    index: int
    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"operator {self.index} ({self.opcode})"


@dataclass
class TFLiteGraph:
    """The one subgraph of a model: tensors, operators in execution order, the graph's inputs/outputs."""

    source: str
    tensors: list[TFLiteTensor]
    operators: list[TFLiteOperator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    description: str = ""
    version: int = 3


def _schema():
    return require("tflite", "reading TFLite models")


def read_tflite(path: str | os.PathLike) -> TFLiteGraph:
    """Read the ``.tflite`` file at ``path`` (a regular file of at most 2 GiB)."""
    path = Path(path)
    data = read_regular(
        path,
        TFLiteImportError,
        "TFLite model",
        check_size=size_limit(path, TFLiteImportError, "TFLite model", MAX_TFLITE_BYTES),
    )
    if data is None:
        raise TFLiteImportError(f"{path}: no such file")
    return parse_tflite(data, str(path))


def parse_tflite(data: bytes, source: str = "model") -> TFLiteGraph:
    """Parse the bytes of a TFLite flatbuffer. Raises :class:`TFLiteImportError` for anything malformed."""
    schema = _schema()
    data = bytes(data)
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise TFLiteImportError(
            f"{source}: not a TFLite flatbuffer (its file identifier is {data[4:8]!r}, a TFLite model has "
            f"{_IDENTIFIER!r} at byte 4)"
        )
    reader = _Reader(data, source, schema)
    try:
        return reader.graph()
    except TFLiteImportError:
        raise
    except (IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError, AttributeError) as exc:
        # the accessors follow offsets from the file: a broken one surfaces as one of these
        raise TFLiteImportError(f"{source}: corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # struct.error and the flatbuffers library's own errors
        raise TFLiteImportError(f"{source}: corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


class _Reader:
    def __init__(self, data: bytes, source: str, schema):
        self.data = data
        self.source = source
        self.schema = schema
        # a vector element is at least 1 byte (tables are referenced by 4-byte offsets): no honest length
        # exceeds the file size
        self.max_len = len(data)
        self.opcode_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def fail(self, what: str) -> TFLiteImportError:
        return TFLiteImportError(f"{self.source}: {what}")

    def length(self, n: int, what: str, elem_bytes: int = 4) -> int:
        n = int(n)
        if n < 0 or n * elem_bytes > self.max_len:
            raise self.fail(f"corrupt TFLite flatbuffer ({what} claims {n:,} entries in a {self.max_len:,}-byte file)")
        return n

    def ints(self, obj, name: str, what: str, elem_bytes: int = 4) -> tuple[int, ...]:
        if getattr(obj, name + "IsNone")():
            return ()
        n = self.length(getattr(obj, name + "Length")(), what, elem_bytes)
        if n == 0:
            return ()
        arr = getattr(obj, name + "AsNumpy")()
        return tuple(int(v) for v in np.asarray(arr)[:n])

    def graph(self) -> TFLiteGraph:
        model = self.schema.Model.GetRootAs(self.data, 0)
        version = int(model.Version())
        if version != 3:
            raise self.fail(f"TFLite schema version {version}; npuq reads version 3 (every TFLite model since 2018)")
        n_sub = self.length(model.SubgraphsLength(), "the subgraph list")
        if n_sub != 1:
            raise self.fail(
                f"the model has {n_sub} subgraphs; npuq imports single-subgraph models (no control flow or "
                f"signatures with their own graphs)"
            )
        sub = model.Subgraphs(0)
        buffers = self.buffers(model)
        opcodes = self.opcodes(model)
        n_tensors = self.length(sub.TensorsLength(), "the tensor list")
        tensors = [self.tensor(sub.Tensors(i), i, buffers) for i in range(n_tensors)]
        n_ops = self.length(sub.OperatorsLength(), "the operator list")
        operators = [self.operator(sub.Operators(i), i, opcodes, n_tensors) for i in range(n_ops)]
        inputs = self.ints(sub, "Inputs", "the subgraph inputs")
        outputs = self.ints(sub, "Outputs", "the subgraph outputs")
        for t in inputs + outputs:
            if not 0 <= t < n_tensors:
                raise self.fail(f"the subgraph names tensor {t} as an input or output; it has {n_tensors} tensors")
        desc = model.Description()
        return TFLiteGraph(
            self.source,
            tensors,
            operators,
            inputs,
            outputs,
            description=desc.decode("utf-8", "replace") if desc else "",
            version=version,
        )

    def buffers(self, model) -> list:
        n = self.length(model.BuffersLength(), "the buffer list")
        return [model.Buffers(i) for i in range(n)]

    def opcodes(self, model) -> list[str]:
        n = self.length(model.OperatorCodesLength(), "the operator code list")
        names = []
        for i in range(n):
            code = model.OperatorCodes(i)
            # schema rule: the real code is the larger of the two fields (the deprecated one stops at 127)
            value = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
            name = self.opcode_names.get(value, f"BUILTIN_{value}")
            if name == "CUSTOM":
                custom = code.CustomCode()
                name = f"CUSTOM:{custom.decode('utf-8', 'replace') if custom else '?'}"
            names.append(name)
        return names

    def tensor(self, t, index: int, buffers: list) -> TFLiteTensor:
        raw_name = t.Name()
        name = raw_name.decode("utf-8", "replace") if raw_name else f"tensor_{index}"
        type_code = int(t.Type())
        dtype = TENSOR_TYPES.get(type_code, f"type {type_code}")
        shape = self.ints(t, "Shape", f"tensor {index}'s shape")
        if any(d < 0 for d in shape):
            raise self.fail(
                f"tensor {index} '{name}' has a dynamic or negative shape {list(shape)}; npuq imports static shapes"
            )
        out = TFLiteTensor(index, name, shape, dtype)
        q = t.Quantization()
        if q is not None and not q.ScaleIsNone() and q.ScaleLength() > 0:
            n = self.length(q.ScaleLength(), f"tensor {index}'s scales")
            out.scale = np.array(q.ScaleAsNumpy()[:n], dtype=np.float32)
            nz = self.length(q.ZeroPointLength(), f"tensor {index}'s zero points", 8) if not q.ZeroPointIsNone() else 0
            out.zero_point = np.array(q.ZeroPointAsNumpy()[:nz], dtype=np.int64) if nz else np.zeros(n, np.int64)
            out.axis = int(q.QuantizedDimension())
            if out.zero_point.size not in (1, n):
                raise self.fail(f"{out.describe()} has {n} scales and {out.zero_point.size} zero points")
        b = int(t.Buffer())
        if not 0 <= b < len(buffers):
            raise self.fail(f"{out.describe()} names buffer {b}; the model has {len(buffers)}")
        if b > 0:
            out.data = self.constant(buffers[b], out)
        return out

    def constant(self, buf, t: TFLiteTensor) -> np.ndarray | None:
        offset, size = int(buf.Offset()), int(buf.Size())
        if offset > 1:  # data stored after the flatbuffer (models over 2 GiB)
            if offset + size > len(self.data):
                raise self.fail(f"{t.describe()}: its buffer lies outside the file")
            raw = self.data[offset : offset + size]
        elif buf.DataIsNone() or buf.DataLength() == 0:
            return None  # an activation with an (empty) buffer of its own
        else:
            n = self.length(buf.DataLength(), f"{t.describe()}'s buffer", 1)
            raw = buf.DataAsNumpy()[:n].tobytes()
        if t.dtype not in _NUMPY_TYPES:
            raise self.fail(f"{t.describe()} is a constant of type {t.dtype}, which npuq cannot read")
        dtype = np.dtype(t.dtype).newbyteorder("<")
        count = math.prod(t.shape)  # Python integers: a hostile shape cannot wrap
        if count * dtype.itemsize != len(raw):
            raise self.fail(
                f"{t.describe()}: its buffer holds {len(raw):,} bytes, the shape needs {count * dtype.itemsize:,}"
            )
        # the file is little-endian; the copy gets numpy's own dtype object (native code checks identity)
        return np.frombuffer(raw, dtype=dtype).astype(np.dtype(t.dtype), copy=True).reshape(t.shape)

    def operator(self, op, index: int, opcodes: list[str], n_tensors: int) -> TFLiteOperator:
        code = int(op.OpcodeIndex())
        if not 0 <= code < len(opcodes):
            raise self.fail(f"operator {index} names operator code {code}; the model has {len(opcodes)}")
        name = opcodes[code]
        inputs = self.ints(op, "Inputs", f"operator {index}'s inputs")
        outputs = self.ints(op, "Outputs", f"operator {index}'s outputs")
        for t in inputs + outputs:
            if not -1 <= t < n_tensors:
                raise self.fail(f"operator {index} ({name}) names tensor {t}; the model has {n_tensors}")
        result = TFLiteOperator(index, name, inputs, outputs)
        result.options = self.options(op, name)
        return result

    def options(self, op, opcode: str) -> dict[str, Any]:
        table = op.BuiltinOptions()
        if opcode in _VECTOR_OPTIONS:
            cls_name, key, accessor = _VECTOR_OPTIONS[opcode]
            if table is None:
                return {}
            self.check_options_type(op, opcode, cls_name)
            opt = getattr(self.schema, cls_name)()
            opt.Init(table.Bytes, table.Pos)
            return {key: self.ints(opt, accessor, f"{opcode}'s {key}")}
        if opcode not in _OPTIONS or table is None:
            return {}
        cls_name, fields = _OPTIONS[opcode]
        self.check_options_type(op, opcode, cls_name)
        opt = getattr(self.schema, cls_name)()
        opt.Init(table.Bytes, table.Pos)
        out = {}
        for key, accessor, convert in fields:
            raw = getattr(opt, accessor)()
            value = convert(raw)
            if value is None:
                raise self.fail(f"{opcode} has an unknown {key} value {raw}")
            out[key] = value
        return out

    def check_options_type(self, op, opcode: str, cls_name: str) -> None:
        # the options union is tagged: reading a table of another type would give arbitrary field values
        want = getattr(self.schema.BuiltinOptions, cls_name)
        got = int(op.BuiltinOptionsType())
        if got != want:
            raise self.fail(f"an operator {opcode} carries options of union type {got}, not {cls_name} ({want})")
