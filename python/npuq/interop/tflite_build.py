"""A small writer of int8 TFLite flatbuffers: tensors, builtin ops and their options, one subgraph.

``TFLiteBuilder`` collects tensors and ops as plain Python records and serializes everything in
:meth:`TFLiteBuilder.finish` with the ``tflite`` package's generated builder functions on a
``flatbuffers.Builder`` (flatbuffers writes children before their parents, so nothing can be written
while the graph is still growing). The model follows what TFLite's loader expects: schema version 3,
file identifier ``TFL3``, one subgraph, buffer 0 empty (the buffer of every tensor without data), one
buffer per constant, operator codes shared by all ops of a kind, and each code with both the deprecated
int8 ``deprecated_builtin_code`` (``min(code, 127)``) and the full ``builtin_code``, as schema 3a readers
of either generation look at one or the other.

Example::

    b = TFLiteBuilder()
    x = b.tensor("x", [1, 8, 8, 3], "int8", scale=0.02, zero_point=-3)
    w = b.tensor("w", [4, 3, 3, 3], "int8", scale=np.full(4, 0.01), axis=0, data=weights)
    bias = b.tensor("b", [4], "int32", scale=np.full(4, 0.0002), axis=0, data=bias_values)
    y = b.tensor("y", [1, 8, 8, 4], "int8", scale=0.05, zero_point=1)
    b.op("CONV_2D", [x, w, bias], [y], padding="SAME", stride_h=1, stride_w=1)
    model = b.finish([x], [y])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from npuq.interop import require

SCHEMA_VERSION = 3
# TFLite maps the buffers of constants into memory and reads int32 / float data in place: align every
# constant's bytes generously (the converter uses 16 as well)
_DATA_ALIGNMENT = 16

DTYPES = {
    # name -> (numpy dtype, tflite TensorType member)
    "int8": (np.int8, "INT8"),
    "uint8": (np.uint8, "UINT8"),
    "int16": (np.int16, "INT16"),
    "int32": (np.int32, "INT32"),
    "int64": (np.int64, "INT64"),
    "float32": (np.float32, "FLOAT32"),
}

# Field kinds of the options tables: "int", "bool", "float", "ivec" (an int32 vector), or the name of the
# tflite enum class whose member names the caller passes as strings.
_ACT = "ActivationFunctionType"
_CONV = {"padding": "Padding", "stride_w": "int", "stride_h": "int", "fused_activation_function": _ACT}
_OPTIONS: dict[str, tuple[str, dict[str, str]]] = {
    # opcode -> (options table, {snake_case field: kind})
    "CONV_2D": ("Conv2DOptions", {**_CONV, "dilation_w_factor": "int", "dilation_h_factor": "int"}),
    "DEPTHWISE_CONV_2D": (
        "DepthwiseConv2DOptions",
        {**_CONV, "depth_multiplier": "int", "dilation_w_factor": "int", "dilation_h_factor": "int"},
    ),
    "FULLY_CONNECTED": (
        "FullyConnectedOptions",
        {
            "fused_activation_function": _ACT,
            "weights_format": "FullyConnectedOptionsWeightsFormat",
            "keep_num_dims": "bool",
            "asymmetric_quantize_inputs": "bool",
        },
    ),
    "AVERAGE_POOL_2D": ("Pool2DOptions", {**_CONV, "filter_width": "int", "filter_height": "int"}),
    "MAX_POOL_2D": ("Pool2DOptions", {**_CONV, "filter_width": "int", "filter_height": "int"}),
    "ADD": ("AddOptions", {"fused_activation_function": _ACT, "pot_scale_int16": "bool"}),
    "SUB": ("SubOptions", {"fused_activation_function": _ACT, "pot_scale_int16": "bool"}),
    "MUL": ("MulOptions", {"fused_activation_function": _ACT}),
    "MEAN": ("ReducerOptions", {"keep_dims": "bool"}),
    "SUM": ("ReducerOptions", {"keep_dims": "bool"}),
    "CONCATENATION": ("ConcatenationOptions", {"axis": "int", "fused_activation_function": _ACT}),
    "RESHAPE": ("ReshapeOptions", {"new_shape": "ivec"}),
    "SQUEEZE": ("SqueezeOptions", {"squeeze_dims": "ivec"}),
    "SOFTMAX": ("SoftmaxOptions", {"beta": "float"}),
    "LEAKY_RELU": ("LeakyReluOptions", {"alpha": "float"}),
    "HARD_SWISH": ("HardSwishOptions", {}),
    "GELU": ("GeluOptions", {"approximate": "bool"}),
    "QUANTIZE": ("QuantizeOptions", {}),
    "DEQUANTIZE": ("DequantizeOptions", {}),
    "PAD": ("PadOptions", {}),
    "PADV2": ("PadV2Options", {}),
    "TRANSPOSE": ("TransposeOptions", {}),
    "RESIZE_NEAREST_NEIGHBOR": (
        "ResizeNearestNeighborOptions",
        {"align_corners": "bool", "half_pixel_centers": "bool"},
    ),
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", {"align_corners": "bool", "half_pixel_centers": "bool"}),
    "GATHER": ("GatherOptions", {"axis": "int", "batch_dims": "int"}),
    "SPLIT": ("SplitOptions", {"num_splits": "int"}),
    "STRIDED_SLICE": (
        "StridedSliceOptions",
        {
            "begin_mask": "int",
            "end_mask": "int",
            "ellipsis_mask": "int",
            "new_axis_mask": "int",
            "shrink_axis_mask": "int",
            "offset": "bool",
        },
    ),
    "SLICE": ("SliceOptions", {}),
    "MAXIMUM": ("MaximumMinimumOptions", {}),
    "MINIMUM": ("MaximumMinimumOptions", {}),
}


def _tflite():
    require("flatbuffers", "writing TFLite models")
    return require("tflite", "writing TFLite models")


def _camel(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: np.ndarray | None  # float32, 1-D
    zero_point: np.ndarray | None  # int64, 1-D
    axis: int
    data: np.ndarray | None


@dataclass
class _Op:
    opcode: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any]


class TFLiteBuilder:
    """Collects the tensors and builtin ops of one subgraph and writes them as a TFLite model."""

    def __init__(self) -> None:
        self._tf = _tflite()
        self._tensors: list[_Tensor] = []
        self._names: set[str] = set()
        self._ops: list[_Op] = []

    # ------------------------------------------------------------------------------ graph
    def tensor(
        self,
        name: str,
        shape,
        dtype: str,
        *,
        scale=None,
        zero_point=None,
        axis: int = 0,
        data: np.ndarray | None = None,
    ) -> int:
        """Add a tensor and return its index.

        ``dtype``: one of ``DTYPES``. ``scale``: None (not quantized), a float (per tensor) or a 1-D array
        (per channel along ``axis``); ``zero_point``: an int or an array of the scale's length (default
        zeros). ``data`` makes the tensor a constant with its own buffer (its shape must be ``shape``
        and its values must fit ``dtype``).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor name must be a non-empty string, got {name!r}")
        if name in self._names:
            raise ValueError(f"tensor name {name!r} is used twice")
        if dtype not in DTYPES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        try:
            dims = tuple(int(d) for d in shape)
        except TypeError as exc:
            raise ValueError(f"tensor {name!r}: shape must be a sequence of ints, got {shape!r}") from exc
        if any(d < 0 for d in dims) or any(int(d) != d for d in shape):
            raise ValueError(f"tensor {name!r}: shape {list(shape)} has a negative or non-integer dimension")
        q_scale = q_zp = None
        if scale is not None:
            q_scale = np.atleast_1d(np.asarray(scale, dtype=np.float64))
            if q_scale.ndim != 1 or q_scale.size == 0:
                raise ValueError(f"tensor {name!r}: scale must be a float or a non-empty 1-D array")
            if not np.all(np.isfinite(q_scale)) or np.any(q_scale <= 0):
                raise ValueError(f"tensor {name!r}: scales must be finite and > 0, got {q_scale.tolist()}")
            if np.any(q_scale.astype(np.float32) <= 0):
                raise ValueError(f"tensor {name!r}: a scale underflows float32: {q_scale.tolist()}")
            q_zp = np.zeros(q_scale.size, np.int64) if zero_point is None else np.atleast_1d(np.asarray(zero_point))
            if q_zp.ndim != 1 or q_zp.size != q_scale.size or q_zp.dtype.kind not in "iu":
                raise ValueError(
                    f"tensor {name!r}: zero_point must be an int or {q_scale.size} ints, got {zero_point!r}"
                )
            info = np.iinfo(DTYPES[dtype][0]) if dtype != "float32" else None
            if info is not None and (q_zp.min() < info.min or q_zp.max() > info.max):
                raise ValueError(f"tensor {name!r}: zero point {q_zp.tolist()} outside {dtype}")
            if q_scale.size > 1:
                if not 0 <= axis < len(dims):
                    raise ValueError(f"tensor {name!r}: quantized axis {axis} outside shape {list(dims)}")
                if dims[axis] != q_scale.size:
                    raise ValueError(
                        f"tensor {name!r}: {q_scale.size} per-channel scales for dimension {axis} of size {dims[axis]}"
                    )
            q_scale = q_scale.astype(np.float32)
            q_zp = q_zp.astype(np.int64)
        elif zero_point is not None:
            raise ValueError(f"tensor {name!r}: zero_point given without scale")
        values = None
        if data is not None:
            arr = np.asarray(data)
            if tuple(arr.shape) != dims:
                raise ValueError(f"tensor {name!r}: data of shape {list(arr.shape)} for shape {list(dims)}")
            np_dtype = DTYPES[dtype][0]
            values = np.array(arr, dtype=np_dtype, order="C")  # (ascontiguousarray would make a scalar 1-D)
            if (arr.dtype.kind == "f" and dtype != "float32") or not np.array_equal(values, arr):
                raise ValueError(f"tensor {name!r}: data of dtype {arr.dtype} does not fit {dtype} exactly")
        self._names.add(name)
        self._tensors.append(_Tensor(name, dims, dtype, q_scale, q_zp, int(axis), values))
        return len(self._tensors) - 1

    def op(self, opcode: str, inputs, outputs, **options) -> int:
        """Add a builtin op and return its index. ``inputs`` may hold -1 (an optional input left out);
        ``options`` are its builtin options' fields in snake_case (enum fields as their member names)."""
        codes = self._tf.BuiltinOperator
        if not isinstance(opcode, str) or opcode.startswith("_") or not isinstance(getattr(codes, opcode, None), int):
            raise ValueError(f"unknown TFLite builtin opcode {opcode!r}")
        ins = self._indices(opcode, "input", inputs, allow_absent=True)
        outs = self._indices(opcode, "output", outputs, allow_absent=False)
        if not outs:
            raise ValueError(f"{opcode}: an op needs at least one output")
        fields = _OPTIONS.get(opcode, (None, {}))[1]
        checked: dict[str, Any] = {}
        for key, value in options.items():
            if key not in fields:
                known = ", ".join(fields) if fields else "none"
                raise ValueError(f"{opcode}: unknown option {key!r} (its options: {known})")
            checked[key] = self._option_value(opcode, key, fields[key], value)
        self._ops.append(_Op(opcode, ins, outs, checked))
        return len(self._ops) - 1

    def _indices(self, opcode: str, what: str, values, allow_absent: bool) -> list[int]:
        out = []
        for v in values:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{opcode}: {what} {v!r} is not a tensor index")
            i = int(v)
            if not (0 <= i < len(self._tensors) or (allow_absent and i == -1)):
                raise ValueError(f"{opcode}: {what} tensor {i} does not exist ({len(self._tensors)} tensors)")
            out.append(i)
        return out

    def _option_value(self, opcode: str, key: str, kind: str, value):
        where = f"{opcode} option {key}"
        if kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{where} must be a bool, got {value!r}")
            return bool(value)
        if kind == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{where} must be an int, got {value!r}")
            if not -(2**31) <= int(value) < 2**31:
                raise ValueError(f"{where} = {value} does not fit int32")
            return int(value)
        if kind == "float":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ValueError(f"{where} must be a number, got {value!r}")
            return float(value)
        if kind == "ivec":
            try:
                vec = [int(v) for v in value]
            except TypeError as exc:
                raise ValueError(f"{where} must be a sequence of ints, got {value!r}") from exc
            return vec
        enum = getattr(self._tf, kind)
        if not isinstance(value, str) or value.startswith("_") or not isinstance(getattr(enum, value, None), int):
            members = sorted(k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int))
            raise ValueError(f"{where}: unknown value {value!r}; one of {', '.join(members)}")
        return getattr(enum, value)

    # ------------------------------------------------------------------------------ serialization
    def finish(self, inputs, outputs, *, description: str = "npuq") -> bytes:
        """The model's bytes, with ``inputs`` / ``outputs`` (tensor indices) as the subgraph's."""
        import flatbuffers

        tf = self._tf
        ins = self._indices("subgraph", "input", inputs, allow_absent=False)
        outs = self._indices("subgraph", "output", outputs, allow_absent=False)
        for i in ins:
            if self._tensors[i].data is not None:
                raise ValueError(f"subgraph input {self._tensors[i].name!r} is a constant")
        if not outs:
            raise ValueError("the subgraph needs at least one output")
        b = flatbuffers.Builder(1024)

        # buffers: 0 is the empty buffer every non-constant tensor refers to
        buffer_of: dict[int, int] = {}
        buffer_offsets = [self._buffer(b, None)]
        for i, t in enumerate(self._tensors):
            if t.data is not None:
                buffer_of[i] = len(buffer_offsets)
                buffer_offsets.append(self._buffer(b, t.data))

        tensor_offsets = [self._tensor(b, t, buffer_of.get(i, 0)) for i, t in enumerate(self._tensors)]

        codes: list[str] = []
        for op in self._ops:
            if op.opcode not in codes:
                codes.append(op.opcode)
        code_offsets = []
        for name in codes:
            value = getattr(tf.BuiltinOperator, name)
            tf.OperatorCodeStart(b)
            tf.OperatorCodeAddDeprecatedBuiltinCode(b, min(value, 127))
            tf.OperatorCodeAddBuiltinCode(b, value)
            tf.OperatorCodeAddVersion(b, 1)
            code_offsets.append(tf.OperatorCodeEnd(b))

        op_offsets = [self._operator(b, op, codes.index(op.opcode)) for op in self._ops]

        sg_tensors = self._vector(b, tf.SubGraphStartTensorsVector, tensor_offsets)
        sg_inputs = b.CreateNumpyVector(np.asarray(ins, np.int32))
        sg_outputs = b.CreateNumpyVector(np.asarray(outs, np.int32))
        sg_ops = self._vector(b, tf.SubGraphStartOperatorsVector, op_offsets)
        sg_name = b.CreateString("main")
        tf.SubGraphStart(b)
        tf.SubGraphAddTensors(b, sg_tensors)
        tf.SubGraphAddInputs(b, sg_inputs)
        tf.SubGraphAddOutputs(b, sg_outputs)
        tf.SubGraphAddOperators(b, sg_ops)
        tf.SubGraphAddName(b, sg_name)
        subgraph = tf.SubGraphEnd(b)

        m_codes = self._vector(b, tf.ModelStartOperatorCodesVector, code_offsets)
        m_subgraphs = self._vector(b, tf.ModelStartSubgraphsVector, [subgraph])
        m_buffers = self._vector(b, tf.ModelStartBuffersVector, buffer_offsets)
        m_description = b.CreateString(str(description))
        tf.ModelStart(b)
        tf.ModelAddVersion(b, SCHEMA_VERSION)
        tf.ModelAddOperatorCodes(b, m_codes)
        tf.ModelAddSubgraphs(b, m_subgraphs)
        tf.ModelAddDescription(b, m_description)
        tf.ModelAddBuffers(b, m_buffers)
        model = tf.ModelEnd(b)
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _vector(b, start, offsets: list[int]) -> int:
        start(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    def _buffer(self, b, data: np.ndarray | None) -> int:
        tf = self._tf
        data_off = None
        if data is not None:
            payload = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
            b.StartVector(1, len(payload), _DATA_ALIGNMENT)
            b.head = b.head - len(payload)
            b.Bytes[b.head : b.head + len(payload)] = payload
            b.vectorNumElems = len(payload)
            data_off = b.EndVector()
        tf.BufferStart(b)
        if data_off is not None:
            tf.BufferAddData(b, data_off)
        return tf.BufferEnd(b)

    def _tensor(self, b, t: _Tensor, buffer: int) -> int:
        tf = self._tf
        quant = None
        if t.scale is not None:
            scale = b.CreateNumpyVector(t.scale.astype(np.float32))
            zp = b.CreateNumpyVector(t.zero_point.astype(np.int64))
            tf.QuantizationParametersStart(b)
            tf.QuantizationParametersAddScale(b, scale)
            tf.QuantizationParametersAddZeroPoint(b, zp)
            tf.QuantizationParametersAddQuantizedDimension(b, t.axis if t.scale.size > 1 else 0)
            quant = tf.QuantizationParametersEnd(b)
        shape = b.CreateNumpyVector(np.asarray(t.shape, np.int32))
        name = b.CreateString(t.name)
        tf.TensorStart(b)
        tf.TensorAddShape(b, shape)
        tf.TensorAddType(b, getattr(tf.TensorType, DTYPES[t.dtype][1]))
        tf.TensorAddBuffer(b, buffer)
        tf.TensorAddName(b, name)
        if quant is not None:
            tf.TensorAddQuantization(b, quant)
        return tf.TensorEnd(b)

    def _operator(self, b, op: _Op, code_index: int) -> int:
        tf = self._tf
        options = None
        if op.opcode in _OPTIONS:
            table, fields = _OPTIONS[op.opcode]
            vectors = {}
            for key, value in op.options.items():
                if fields[key] == "ivec":
                    vectors[key] = b.CreateNumpyVector(np.asarray(value, np.int32))
            getattr(tf, f"{table}Start")(b)
            for key, value in op.options.items():
                getattr(tf, f"{table}Add{_camel(key)}")(b, vectors.get(key, value))
            options = (getattr(tf.BuiltinOptions, table), getattr(tf, f"{table}End")(b))
        ins = b.CreateNumpyVector(np.asarray(op.inputs, np.int32))
        outs = b.CreateNumpyVector(np.asarray(op.outputs, np.int32))
        tf.OperatorStart(b)
        tf.OperatorAddOpcodeIndex(b, code_index)
        tf.OperatorAddInputs(b, ins)
        tf.OperatorAddOutputs(b, outs)
        if options is not None:
            tf.OperatorAddBuiltinOptionsType(b, options[0])
            tf.OperatorAddBuiltinOptions(b, options[1])
        return tf.OperatorEnd(b)
