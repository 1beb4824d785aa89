"""An NPU program as an ONNX model in the QDQ form, and the float model behind it as plain ONNX.

:func:`program_to_onnx` writes every op of a :class:`npuq.Program` as the ONNX operators that compute it
in float between a DequantizeLinear of its int8 inputs and a QuantizeLinear of its int8 output, the form
that onnxruntime and other toolchains recognise as a quantized graph (onnxruntime fuses it into
QLinearConv and friends). The program keeps integer multipliers, not float scales, so the weight scale of
a layer is recovered from them: ``s_w[c] = M0[c] * 2^(e[c] - shift[c] - 31) * s_out / s_in``, which makes
the float product ``s_in * s_w[c] / s_out`` the program's own multiplier. Likewise the input scales of
``add``, ``mul``, ``concat`` and ``mean`` come from their multipliers. Ops without rounding (max pooling,
flatten, table lookups, padding, slices, shuffles, nearest upsampling) are exact integer ONNX operators.

ONNX requantizes in float and rounds half to even where the NPU rounds in fixed point (docs/arithmetic.md
3), so an exported program agrees with the emulator up to an occasional LSB per op; the table lookups and
data movements are exact. Every value of the program is an int8 tensor of the ONNX graph named as its op
(NCHW, or (N, K) after a flatten), which is how :mod:`npuq.interop.onnx_compare` reads them back.

:func:`float_model_to_onnx` exports the float model after npuq's graph preparation (batch norms folded,
activations fused), so other toolchains can quantize the very graph npuq quantized.

onnx (and onnxruntime for the check of the float export) are optional: ``pip install "npuq[interop]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from npuq.interop import layer_multipliers, require

OPSET = 21  # QDQ with int8 / int32 per-channel quantization; onnxruntime 1.32 fuses it at this opset
INPUT_TYPES = ("float", "int8")
ACTIVATION_TYPES = ("int8", "uint8")
LOGITS = "logits"  # the dequantized output of the program's output op
# kinds written here, most common first
SUPPORTED_KINDS = (
    "conv2d",
    "fully_connected",
    "add",
    "global_avg_pool",
    "mean",
    "flatten",
    "avg_pool2d",
    "max_pool2d",
    "lut",
    "mul",
    "concat",
    "pad",
    "slice",
    "channel_shuffle",
    "upsample",
)


def require_onnx():
    """The ``onnx`` module, or an ImportError that says how to install it."""
    return require("onnx", "ONNX export")


def require_onnxruntime():
    return require("onnxruntime", "running ONNX models")


# ============================================================================================ scales
def _q31(m0: int, e: int) -> float:
    return float(m0) * 2.0 ** (int(e) - 31)


def weight_scales(op, s_in: float) -> np.ndarray:
    """Per-channel float weight scales that reproduce the layer's multipliers (float64)."""
    return layer_multipliers(op) * float(op.scale) / float(s_in)


def _per_channel(op) -> bool:
    return op.tensors["multiplier"].size > 1 or bool(op.tensors["shift"].any())


# ============================================================================================ builder
class _Graph:
    """Nodes and constants of the graph being written. Helper names carry a '/', which program names
    cannot hold, so they never collide with a value named after an op."""

    def __init__(self, onnx, activations: str = "int8"):
        self.onnx = onnx
        # uint8 activations are the int8 values plus 128, zero points too: the same reals, exactly
        self.act_dtype = np.dtype(activations)
        self.offset = 128 if activations == "uint8" else 0
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0
        self._dequantized: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}/{self._count}"

    def const(self, hint: str, value) -> str:
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        out = output or self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=self.name(hint), **attrs))
        return out

    def dequantize(self, x: str, scale, zero_point: int, hint: str) -> str:
        """The real values of the activation ``x`` (its int8 zero point; uint8 activations are offset)."""
        return self.dequantize_const(x, scale, int(zero_point) + self.offset, hint, dtype=self.act_dtype)

    def dequantize_const(self, x: str, scale, zero_point, hint: str, dtype=np.int8, axis: int | None = None) -> str:
        scale = np.asarray(scale, np.float32)
        zp = np.broadcast_to(np.asarray(zero_point, dtype), scale.shape).copy()
        attrs = {} if axis is None or scale.ndim == 0 else {"axis": axis}
        # one DequantizeLinear per value and parameters, whatever reads it
        key = (x, scale.tobytes(), zp.tobytes(), axis if attrs else None)
        if key not in self._dequantized:
            ins = [x, self.const(f"{hint}/scale", scale), self.const(f"{hint}/zp", zp)]
            self._dequantized[key] = self.node("DequantizeLinear", ins, hint, **attrs)
        return self._dequantized[key]

    def quantize(self, y: str, scale: float, zero_point: int, output: str) -> str:
        return self.node(
            "QuantizeLinear",
            [
                y,
                self.const(f"{output}/scale", np.float32(scale)),
                self.const(f"{output}/zp", np.asarray(int(zero_point) + self.offset, self.act_dtype)),
            ],
            output,
            output=output,
        )

    def clamp(self, y: str, act_min: int, act_max: int, scale: float, zero_point: int, hint: str) -> str:
        """The fused activation in real units: Relu where it is exactly one, Clip otherwise, nothing when
        the clamp is the int8 range (the QuantizeLinear saturates there)."""
        if act_min <= -128 and act_max >= 127:
            return y
        if act_min == zero_point and act_max >= 127:
            return self.node("Relu", [y], f"{hint}/relu")
        lo = self.const(f"{hint}/min", np.float32((act_min - zero_point) * float(scale))) if act_min > -128 else ""
        hi = self.const(f"{hint}/max", np.float32((act_max - zero_point) * float(scale))) if act_max < 127 else ""
        ins = [y, lo, hi]
        while ins[-1] == "":
            ins.pop()
        return self.node("Clip", ins, f"{hint}/clip")

    def ints(self, hint: str, values) -> str:
        return self.const(hint, np.asarray(values, np.int64))


class _Value:
    """One program value in the ONNX graph: its int8 tensor, real scale and zero point, rank."""

    __slots__ = ("name", "scale", "zero_point", "rank")

    def __init__(self, name: str, scale: float, zero_point: int, rank: int):
        self.name, self.scale, self.zero_point, self.rank = name, float(scale), int(zero_point), rank


# ============================================================================================ ops
def _conv2d(g: _Graph, op, x: _Value) -> str:
    a, t = op.attrs, op.tensors
    s_w = weight_scales(op, x.scale)
    per_channel = _per_channel(op)
    w = np.ascontiguousarray(t["weight"].transpose(0, 3, 1, 2))  # OHWI -> OIHW
    w_scale = s_w.astype(np.float32) if per_channel else np.float32(s_w.reshape(-1)[0])
    # the bias scale is the product of the two float32 scales, as the fused QLinearConv assumes
    b_scale = (np.float64(np.float32(x.scale)) * np.asarray(w_scale, np.float64)).astype(np.float32)
    xf = g.dequantize(x.name, x.scale, a["input_zero_point"], f"{op.name}/x")
    wf = g.dequantize_const(g.const(f"{op.name}/weight", w), w_scale, 0, f"{op.name}/w", axis=0)
    bf = g.dequantize_const(g.const(f"{op.name}/bias", t["bias"]), b_scale, 0, f"{op.name}/b", dtype=np.int32, axis=0)
    top, bottom, left, right = (int(v) for v in a["padding"])
    y = g.node(
        "Conv",
        [xf, wf, bf],
        f"{op.name}/conv",
        kernel_shape=list(w.shape[2:]),
        strides=list(a["stride"]),
        pads=[top, left, bottom, right],
        dilations=list(a["dilation"]),
        group=int(a["groups"]),
    )
    return _output(g, op, y)


def _fully_connected(g: _Graph, op, x: _Value) -> str:
    a, t = op.attrs, op.tensors
    s_w = weight_scales(op, x.scale)
    w_scale = s_w.astype(np.float32) if _per_channel(op) else np.float32(s_w.reshape(-1)[0])
    b_scale = (np.float64(np.float32(x.scale)) * np.asarray(w_scale, np.float64)).astype(np.float32)
    if b_scale.ndim == 0:
        b_scale = np.full(t["bias"].shape, b_scale, np.float32)
    xf = g.dequantize(x.name, x.scale, a["input_zero_point"], f"{op.name}/x")
    wf = g.dequantize_const(g.const(f"{op.name}/weight", t["weight"]), w_scale, 0, f"{op.name}/w", axis=0)
    bf = g.dequantize_const(g.const(f"{op.name}/bias", t["bias"]), b_scale, 0, f"{op.name}/b", dtype=np.int32, axis=0)
    y = g.node("Gemm", [xf, wf, bf], f"{op.name}/gemm", transB=1)
    return _output(g, op, y)


def _output(g: _Graph, op, y: str) -> str:
    a = op.attrs
    y = g.clamp(y, a["act_min"], a["act_max"], op.scale, a["output_zero_point"], op.name)
    return g.quantize(y, op.scale, a["output_zero_point"], op.name)


def _add(g: _Graph, op, a_: _Value, b_: _Value) -> str:
    a = op.attrs
    # A + B = ((a - z_a) s_a + (b - z_b) s_b) / s_out in the program's fixed point: recover s_a, s_b
    out = _q31(a["output_multiplier"], a["output_exponent"]) * 2.0 ** a["left_shift"] * op.scale
    s_a = _q31(a["a_multiplier"], a["a_exponent"]) * out
    s_b = _q31(a["b_multiplier"], a["b_exponent"]) * out
    af = g.dequantize(a_.name, s_a, a["a_zero_point"], f"{op.name}/a")
    bf = g.dequantize(b_.name, s_b, a["b_zero_point"], f"{op.name}/b")
    return _output(g, op, g.node("Add", [af, bf], f"{op.name}/add"))


def _mul(g: _Graph, op, a_: _Value, b_: _Value) -> str:
    a = op.attrs
    # only the product s_a * s_b / s_out is in the program: keep s_a, give b the rest
    s_b = _q31(a["multiplier"], a["exponent"]) * op.scale / a_.scale
    af = g.dequantize(a_.name, a_.scale, a["a_zero_point"], f"{op.name}/a")
    bf = g.dequantize(b_.name, s_b, a["b_zero_point"], f"{op.name}/b")
    return _output(g, op, g.node("Mul", [af, bf], f"{op.name}/mul"))


def _concat(g: _Graph, op, *xs: _Value) -> str:
    a = op.attrs
    parts = [
        g.dequantize(x.name, _q31(m, e) * op.scale, z, f"{op.name}/in{i}")
        for i, (x, m, e, z) in enumerate(zip(xs, a["multipliers"], a["exponents"], a["zero_points"]))
    ]
    y = g.node("Concat", parts, f"{op.name}/concat", axis=1)
    return g.quantize(y, op.scale, a["output_zero_point"], op.name)


def _pool_output(g: _Graph, op, y: str, scale: float, zero_point: int) -> str:
    a = op.attrs
    y = g.clamp(y, a["act_min"], a["act_max"], scale, zero_point, op.name)
    return g.quantize(y, scale, zero_point, op.name)


def _avg_pool2d(g: _Graph, op, x: _Value) -> str:
    a = op.attrs
    # the integer op averages the raw int8 values: dequantizing and quantizing with one scale and zero point
    # is that average (the output takes the input's scale and zero point)
    z = a["input_zero_point"]
    xf = g.dequantize(x.name, op.scale, z, f"{op.name}/x")
    top, bottom, left, right = (int(v) for v in a["padding"])
    y = g.node(
        "AveragePool",
        [xf],
        f"{op.name}/pool",
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        pads=[top, left, bottom, right],
        count_include_pad=int(bool(a["count_include_pad"])),
    )
    return _pool_output(g, op, y, op.scale, z)


def _global_avg_pool(g: _Graph, op, x: _Value) -> str:
    xf = g.dequantize(x.name, op.scale, x.zero_point, f"{op.name}/x")
    return _pool_output(g, op, g.node("GlobalAveragePool", [xf], f"{op.name}/pool"), op.scale, x.zero_point)


def _mean(g: _Graph, op, x: _Value, n: int) -> str:
    a = op.attrs
    ratio = _q31(a["multiplier"], a["exponent"])  # s_x / (n s_y), or s_x / s_y with TFLite's rounding
    s_x = ratio * op.scale * (1 if a["tflite_rounding"] else n)
    xf = g.dequantize(x.name, s_x, a["input_zero_point"], f"{op.name}/x")
    y = g.node("ReduceMean", [xf, g.ints(f"{op.name}/axes", [2, 3])], f"{op.name}/mean", keepdims=1)
    return _output(g, op, y)


def _max_pool2d(g: _Graph, op, x: _Value) -> str:
    a = op.attrs
    top, bottom, left, right = (int(v) for v in a["padding"])
    return g.node(
        "MaxPool",
        [x.name],
        op.name,
        output=op.name,
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        pads=[top, left, bottom, right],
        ceil_mode=int(bool(a.get("ceil_mode", False))),
    )


def _flatten(g: _Graph, op, x: _Value) -> str:
    if x.rank == 2:
        return g.node("Identity", [x.name], op.name, output=op.name)
    # the program flattens NHWC values in (H, W, C) order
    nhwc = g.node("Transpose", [x.name], f"{op.name}/nhwc", perm=[0, 2, 3, 1])
    return g.node("Flatten", [nhwc], op.name, output=op.name, axis=1)


def _lut(g: _Graph, op, x: _Value) -> str:
    # y = table[x + 128], in integers: exact (a uint8 activation is already x + 128)
    index = g.node("Cast", [x.name], f"{op.name}/int32", to=g.onnx.TensorProto.INT32)
    if g.offset == 0:
        index = g.node("Add", [index, g.const(f"{op.name}/offset", np.int32(128))], f"{op.name}/index")
    table = g.const(f"{op.name}/table", (op.tensors["table"].astype(np.int32) + g.offset).astype(g.act_dtype))
    return g.node("Gather", [table, index], op.name, output=op.name, axis=0)


def _pad(g: _Graph, op, x: _Value) -> str:
    top, bottom, left, right = (int(v) for v in op.attrs["padding"])
    pads = g.ints(f"{op.name}/pads", [0, 0, top, left, 0, 0, bottom, right])
    value = g.const(f"{op.name}/value", np.asarray(int(op.attrs["value"]) + g.offset, g.act_dtype))
    return g.node("Pad", [x.name, pads, value], op.name, output=op.name, mode="constant")


def _slice(g: _Graph, op, x: _Value) -> str:
    a = op.attrs
    ins = [x.name, g.ints(f"{op.name}/begin", [a["begin"]]), g.ints(f"{op.name}/end", [a["end"]])]
    return g.node("Slice", [*ins, g.ints(f"{op.name}/axes", [1])], op.name, output=op.name)


def _channel_shuffle(g: _Graph, op, x: _Value, shape: tuple[int, ...]) -> str:
    h, w, c = shape
    groups = int(op.attrs["groups"])
    split = g.node("Reshape", [x.name, g.ints(f"{op.name}/split", [-1, groups, c // groups, h, w])], op.name)
    swapped = g.node("Transpose", [split], f"{op.name}/swap", perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [swapped, g.ints(f"{op.name}/merge", [-1, c, h, w])], op.name, output=op.name)


def _upsample(g: _Graph, op, x: _Value) -> str:
    a = op.attrs
    scales = g.const(f"{op.name}/scales", np.asarray([1, 1, *a["scale"]], np.float32))
    if a["mode"] == "nearest":
        # y[o] = x[floor(o / f)]: exact on the int8 values
        return g.node(
            "Resize",
            [x.name, "", scales],
            op.name,
            output=op.name,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
    # bilinear with half-pixel centres, in float between the input's own scale and zero point
    xf = g.dequantize(x.name, op.scale, a["zero_point"], f"{op.name}/x")
    y = g.node(
        "Resize", [xf, "", scales], f"{op.name}/resize", mode="linear", coordinate_transformation_mode="half_pixel"
    )
    return g.quantize(y, op.scale, a["zero_point"], op.name)


# ============================================================================================ program
_MOVES = ("max_pool2d", "flatten", "pad", "slice", "channel_shuffle", "global_avg_pool")


def _zero_point(op, first: _Value) -> int:
    """The zero point the op's int8 output is written with in the ONNX graph."""
    if op.kind in _MOVES or (op.kind == "upsample" and op.attrs["mode"] == "nearest"):
        return first.zero_point  # the values (or their raw average) of the input
    if op.kind == "avg_pool2d":
        return int(op.attrs["input_zero_point"])
    if op.kind == "upsample":
        return int(op.attrs["zero_point"])
    return int(op.attrs.get("output_zero_point", op.zero_point))


def program_to_onnx(program, *, input_type: str = "float", activations: str = "int8", opset: int = OPSET):
    """``program`` (a validated :class:`npuq.Program`) as an ONNX ``ModelProto`` in the QDQ form.

    ``input_type="float"``: the input is float32 images ``(N, C, H, W)`` (or ``(N, K)``), quantized by a
    QuantizeLinear with the program input's scale and zero point (ONNX rounds half to even, the emulator half
    away from zero: only exact ties differ). ``input_type="int8"``: the program's own int8 input ``(N, H, W,
    C)`` (or ``(N, K)``), as :meth:`npuq.Emulator.run` takes it. The output ``logits`` is the dequantized
    output op; every op's int8 values are the tensor named after it.

    ``activations="uint8"`` writes every activation as uint8 with its zero point moved by 128 (the same
    real values, exactly): onnxruntime's fused kernels on x86 take uint8 activations and convert an int8
    QuantizeLinear only where a single DequantizeLinear reads it, so int8 values that feed two ops (the
    residual branches) keep their ops in float at full optimization; uint8 ones do not. Weights stay int8.
    Raises ValueError naming the first op whose kind has no ONNX form here.
    """
    return export_program(program, input_type=input_type, activations=activations, opset=opset)[0]


def export_program(program, *, input_type: str = "float", activations: str = "int8", opset: int = OPSET):
    """:func:`program_to_onnx` and every value's ``(scale, zero_point)`` in the graph, by name (``logits``:
    those of the output's dequantization)."""
    onnx = require_onnx()
    from npuq.npu.program import validate

    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, got {activations!r}")
    if not isinstance(opset, int) or not 13 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be an int in [13, {onnx.defs.onnx_opset_version()}], got {opset!r}")
    if opset < 18 and any(op.kind == "mean" for op in program.ops):
        raise ValueError("the mean op needs opset 18 or later (ReduceMean with axes as an input)")
    shapes = validate(program)
    for i, op in enumerate(program.ops):
        if op.kind not in SUPPORTED_KINDS:
            raise ValueError(
                f"op {i} '{op.name}': kind '{op.kind}' has no ONNX export (supported: {', '.join(SUPPORTED_KINDS)})"
            )

    g = _Graph(onnx, activations)
    spec = program.input
    in_shape = tuple(shapes[spec.name])
    batch: list[Any] = ["N"]
    if input_type == "float":
        graph_in = "input"
        dims = batch + ([in_shape[2], in_shape[0], in_shape[1]] if len(in_shape) == 3 else [in_shape[0]])
        inputs = [onnx.helper.make_tensor_value_info(graph_in, onnx.TensorProto.FLOAT, dims)]
        g.quantize(graph_in, spec.scale, spec.zero_point, spec.name)
    else:
        graph_in = "input"
        inputs = [onnx.helper.make_tensor_value_info(graph_in, onnx.TensorProto.INT8, batch + list(in_shape))]
        x = graph_in
        if len(in_shape) == 3:  # the program's NHWC -> the NCHW of ONNX's operators
            x = g.node("Transpose", [x], f"{spec.name}/nchw", perm=[0, 3, 1, 2])
        if g.offset:  # int8 -> uint8 activations: + 128, in integers
            wide = g.node("Cast", [x], f"{spec.name}/int16", to=onnx.TensorProto.INT16)
            wide = g.node("Add", [wide, g.const(f"{spec.name}/offset", np.int16(g.offset))], f"{spec.name}/shifted")
            x = g.node("Cast", [wide], f"{spec.name}/uint8", to=onnx.TensorProto.UINT8)
        g.node("Identity", [x], spec.name, output=spec.name)
    values = {spec.name: _Value(spec.name, spec.scale, spec.zero_point, 2 if len(in_shape) == 1 else 4)}

    for op in program.ops:
        ins = [values[name] for name in op.inputs]
        k = op.kind
        if k == "conv2d":
            _conv2d(g, op, ins[0])
        elif k == "fully_connected":
            _fully_connected(g, op, ins[0])
        elif k == "add":
            _add(g, op, *ins)
        elif k == "mul":
            _mul(g, op, *ins)
        elif k == "concat":
            _concat(g, op, *ins)
        elif k == "avg_pool2d":
            _avg_pool2d(g, op, ins[0])
        elif k == "global_avg_pool":
            _global_avg_pool(g, op, ins[0])
        elif k == "mean":
            h, w, _ = shapes[op.inputs[0]]
            _mean(g, op, ins[0], h * w)
        elif k == "max_pool2d":
            _max_pool2d(g, op, ins[0])
        elif k == "flatten":
            _flatten(g, op, ins[0])
        elif k == "lut":
            _lut(g, op, ins[0])
        elif k == "pad":
            _pad(g, op, ins[0])
        elif k == "slice":
            _slice(g, op, ins[0])
        elif k == "channel_shuffle":
            _channel_shuffle(g, op, ins[0], tuple(shapes[op.inputs[0]]))
        elif k == "upsample":
            _upsample(g, op, ins[0])
        else:  # pragma: no cover - refused above
            raise AssertionError(k)
        values[op.name] = _Value(op.name, op.scale, _zero_point(op, ins[0]), 2 if len(shapes[op.name]) == 1 else 4)

    out = values[program.output]
    logits = (out.scale, program.output_op.zero_point)  # the real values of Emulator.logits
    g.dequantize(out.name, *logits, LOGITS)
    g.nodes[-1].output[0] = LOGITS
    out_shape = tuple(shapes[program.output])
    out_dims = batch + ([out_shape[2], out_shape[0], out_shape[1]] if len(out_shape) == 3 else [out_shape[0]])
    outputs = [onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, out_dims)]
    graph = onnx.helper.make_graph(g.nodes, program.model or "npuq_program", inputs, outputs, g.initializers)
    model = onnx.helper.make_model(
        graph,
        producer_name="npuq",
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        doc_string=f"npuq program '{program.model}' ({len(program.ops)} ops, rounding {program.rounding}) in QDQ form",
    )
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.32 reads
    props = {"npuq.input_type": input_type, "npuq.activations": activations, "npuq.output": program.output}
    onnx.helper.set_model_props(model, props)
    return model, {**{name: (v.scale, v.zero_point) for name, v in values.items()}, LOGITS: logits}


def save_onnx(model, path) -> Path:
    onnx = require_onnx()
    path = Path(path)
    onnx.save_model(model, str(path))
    return path


# ============================================================================================ float model
def _prepared_module(graph):
    """A torch module that runs a prepared graph in float (folded weights, fused activations)."""
    import torch

    from npuq.quant.graph import run_float_node

    class Prepared(torch.nn.Module):
        def forward(self, x):
            env: dict = {}
            for node in graph.nodes:
                env[node.name] = run_float_node(graph, node, env, x)
            return env[graph.output_name]

    return Prepared().eval()


def float_model_to_onnx(model, input_shape, path, *, opset: int = 17, check: bool = True) -> dict:
    """Export ``model`` (a float torch module) after npuq's graph preparation: batch norms folded into the
    layers, ReLU / ReLU6 fused, zero pads folded (:func:`npuq.quant.graph.prepare`), as ONNX with a dynamic
    batch. Ops the NPU does not run stay in the graph as torch exports them. ``input_shape`` is one image's
    ``(C, H, W)`` (or a batch shape ``(N, C, H, W)``).

    With ``check`` (onnxruntime installed) the ONNX model is run on random images and compared with the
    prepared torch graph. Returns ``{"path", "max_abs_diff", "max_abs_logit", "notes"}``.
    """
    onnx = require_onnx()
    import torch

    from npuq.quant.graph import prepare

    shape = tuple(int(v) for v in input_shape)
    if len(shape) in (1, 3):
        shape = (1, *shape)
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W), (N, C, H, W) or (K,) with positive sizes, got {input_shape}")
    example = torch.zeros((1, *shape[1:]))
    graph = prepare(model, example)
    module = _prepared_module(graph)
    path = Path(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the graph's Python-level shape checks
        # the TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, which npuq does not depend on
        torch.onnx.export(
            module,
            (torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(0)),),
            str(path),
            input_names=["input"],
            output_names=[LOGITS],
            dynamic_axes={"input": {0: "N"}, LOGITS: {0: "N"}},
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    result: dict[str, Any] = {"path": str(path), "max_abs_diff": None, "max_abs_logit": None, "notes": graph.notes}
    if check:
        ort = require_onnxruntime()
        x = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(1))
        want = graph.run_float(x).numpy()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
        result["max_abs_diff"] = float(np.abs(got - want).max())
        result["max_abs_logit"] = float(np.abs(want).max())
    return result


__all__ = [
    "ACTIVATION_TYPES",
    "INPUT_TYPES",
    "LOGITS",
    "OPSET",
    "SUPPORTED_KINDS",
    "export_program",
    "float_model_to_onnx",
    "program_to_onnx",
    "save_onnx",
    "weight_scales",
]
