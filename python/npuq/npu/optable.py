"""The NPU op table: one declarative entry per op kind, consulted by everything that handles ops.

Each :class:`OpSpec` (in the spirit of ONNX's op schemas) says, for one kind: how many inputs it reads;
its attributes with the types and ranges the loader checks, and its tensors with their dtypes; how its
output shape follows from its inputs (with the checks only the kind knows); what it needs in memory and
work (:class:`OpFootprint`) and which limits of the native kernels it must respect; how the emulator runs
it on the host and on a GPU; what it costs (the MAC array, the vector unit or nothing); whether it is a
view of its input (flatten) or a layer with weights; the arrays of its folder in a golden vector set; and
the sections of the docs that define it.

The consumers read the table and nothing else about kinds: the loader (:func:`npuq.npu.program.validate`,
``op_footprint``, the memory plan), the emulator (:class:`npuq.npu.emulator.Emulator`), the cost model
(:mod:`npuq.npu.cost`) and the golden vectors (:mod:`npuq.npu.vectors`). Adding an op kind is one entry
here, its kernels and its tests: docs/program.md 7.

Imports numpy, the field checks of :mod:`npuq.npu._checks` and the kernels of :mod:`npuq.ops`; nothing
that imports this module.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

import numpy as np

from npuq import ops
from npuq.npu import optable_format2 as F2
from npuq.npu._checks import elements, fail, first_bad, out_size, round_up
from npuq.npu.opschema import (
    COST_UNITS,
    MAX_VARIADIC_INPUTS,
    Attr,
    OpFootprint,
    OpSpec,
    RunContext,
    Shape,
    Tensor,
)

if TYPE_CHECKING:  # pragma: no cover
    from npuq.npu.program import Op


# What the native kernels allocate and accept (csrc/cpu/kernels.h, conv_plan.cc, common/validate.cc),
# mirrored here so that a program that validates never fails in them.
_NATIVE_INDEX_LIMIT = 1 << 40  # validate.cc: products of indices of a conv / pool
_NATIVE_REDUCTION_LIMIT = 1 << 31  # validate.cc: KH * KW * C_in / groups of a conv
_NATIVE_POOL_TAPS = 1 << 30  # validate.cc: taps of one pooling window
_PANEL_ROWS = 24  # kernels.h kPanelRows: im2col rows packed at once, per thread
_SCRATCH_ALIGN = 64  # conv_plan.cc Scratch: every scratch buffer is over-allocated for alignment
_CONSTANT_BYTES = 36  # kernels.h ChannelConstants per padded channel: 3 int32 + 3 int64
_GROUP_OVERHEAD = 512  # per GEMM group: vector headers and allocator overhead (an upper estimate)


# ====================================================================================== shared pieces
def _int8() -> Attr:
    return Attr("int", -128, 127)


def _pairs(n: int, lo: int) -> Attr:
    return Attr("ints", lo, 1 << 16, n)


def _needs_image(op: Op, where: str, x: Shape) -> None:
    if len(x) != 3:
        fail(where, f"{op.kind} needs an (H, W, C) input, but '{op.inputs[0]}' has shape {x}")


def _ints(attrs: dict, key: str) -> tuple[int, ...]:
    """A list attribute (already checked) as a tuple of Python ints: for messages and shape arithmetic."""
    return tuple(int(v) for v in attrs[key])


# ---------------------------------------------------------------------------------- layers (MAC array)
_LAYER_ATTRS = {
    "input_zero_point": _int8(),
    "output_zero_point": _int8(),
    "act_min": _int8(),
    "act_max": _int8(),
    "weight_bits": Attr("int", 2, 8),
}


def _layer_tensors(weight_ndim: int, weight_layout: str) -> dict[str, Tensor]:
    return {
        "weight": Tensor(np.int8, weight_ndim, weight_layout),
        "bias": Tensor(np.int32, 1, "C"),
        "multiplier": Tensor(np.int32, 1, "C"),
        "exponent": Tensor(np.int32, 1, "C"),
        "shift": Tensor(np.uint8, 1, "C"),
    }


def _check_layer_tensors(op: Op, where: str) -> int:
    """The sizes and values of a layer's tensors (docs/program.md 3); returns C_out."""
    t, bits = op.tensors, op.attrs["weight_bits"]
    w = t["weight"]
    c_out = w.shape[0]
    if w.size == 0:
        fail(where, f"tensor '{op.name}.weight' is empty (shape {w.shape})")
    limit = 2 ** (bits - 1) - 1
    bad = (w < -limit) | (w > limit)
    if bad.any():
        fail(where, f"tensor '{op.name}.weight': {first_bad(bad)} outside [-{limit}, {limit}] (weight_bits = {bits})")
    if t["bias"].shape != (c_out,):
        fail(where, f"tensor '{op.name}.bias' has shape {t['bias'].shape}, expected ({c_out},)")
    m, e, s = t["multiplier"], t["exponent"], t["shift"]
    if m.shape[0] not in (1, c_out):
        fail(
            where,
            f"tensor '{op.name}.multiplier' has {m.shape[0]} values; expected 1 (per layer) or {c_out} (per channel)",
        )
    if e.shape != m.shape:
        fail(where, f"tensor '{op.name}.exponent' has shape {e.shape}, expected {m.shape} like the multiplier")
    if s.shape != (c_out,):
        fail(where, f"tensor '{op.name}.shift' has shape {s.shape}, expected ({c_out},)")
    bad = (m != 0) & (m < 2**30)
    if bad.any():
        fail(where, f"tensor '{op.name}.multiplier': {first_bad(bad)} not a Q31 mantissa (0 or in [2^30, 2^31-1])")
    bad = (e < -31) | (e > 30)
    if bad.any():
        fail(where, f"tensor '{op.name}.exponent': {first_bad(bad)} outside [-31, 30]")
    bad = s > 15
    if bad.any():
        fail(where, f"tensor '{op.name}.shift': {first_bad(bad)} above 15 (shifts are 4-bit)")
    return c_out


def _requant_args(op: Op, rounding: str, overflow: str) -> dict:
    t, a = op.tensors, op.attrs
    m, e = t["multiplier"], t["exponent"]
    return dict(
        multiplier=int(m[0]) if m.shape[0] == 1 else m,
        exponent=int(e[0]) if e.shape[0] == 1 else e,
        channel_shift=t["shift"],
        output_zero_point=a["output_zero_point"],
        act_min=a["act_min"],
        act_max=a["act_max"],
        rounding=rounding,
        overflow=overflow,
    )


def _run_layer(op: Op, args, ctx: RunContext):
    return ctx.kernel(args[0], threads=ctx.threads)


def _gemm_scratch(k: int) -> int:
    """One im2col panel of a GEMM conv / fully-connected layer and its int16 copy (per thread; kernels.h
    gemm_scratch_bytes)."""
    k4 = round_up(k, 4)
    return round_up(_PANEL_ROWS * k4 + 16, 64) + _PANEL_ROWS * k4 * 2 + _SCRATCH_ALIGN


def _gemm_params(groups: int, c_out: int, k: int) -> int:
    """Conv2dPlan's packed GEMM weights: per group int8 and int16 copies of the weights and the channel
    constants, padded to 16 channels; plus its plain copies of the weights, bias and requantization."""
    n16, k4 = round_up(c_out // groups, 16), round_up(k, 4)
    return groups * (n16 * k4 * 3 + n16 * _CONSTANT_BYTES + _GROUP_OVERHEAD) + c_out * (k + 13)


# ---------------------------------------------------------------------------------- conv2d
def _conv2d_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    a, w, x = op.attrs, op.tensors["weight"], in_shapes[0]
    c_out = _check_layer_tensors(op, where)
    if len(x) != 3:
        fail(where, f"conv2d needs an (H, W, C) input, but '{op.inputs[0]}' has shape {x}")
    stride, pad, dil, groups = _ints(a, "stride"), _ints(a, "padding"), _ints(a, "dilation"), int(a["groups"])
    if c_out % groups:
        fail(where, f"groups ({groups}) does not divide the {c_out} output channels")
    extent = (dil[0] * (w.shape[1] - 1) + 1, dil[1] * (w.shape[2] - 1) + 1)
    for side, p_, ext in zip(("top", "bottom", "left", "right"), pad, (extent[0], extent[0], extent[1], extent[1])):
        if p_ >= ext:  # a window of padding alone (docs/arithmetic.md 4)
            fail(where, f"padding {side} = {p_} must be smaller than the dilated kernel extent {ext}")
    if w.shape[3] * groups != x[2]:
        fail(
            where,
            f"weight {w.shape} with groups={groups} expects {w.shape[3] * groups} input channels, "
            f"but '{op.inputs[0]}' has {x[2]}",
        )
    oh = out_size(x[0], w.shape[1], stride[0], dil[0], pad[0], pad[1])
    ow = out_size(x[1], w.shape[2], stride[1], dil[1], pad[2], pad[3])
    if oh < 1 or ow < 1:
        fail(
            where,
            f"kernel {w.shape[1]}x{w.shape[2]} (dilation {dil}, padding {pad}) does not fit the {x[0]}x{x[1]} input",
        )
    return (oh, ow, c_out)


def _conv2d_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    a, w, x = op.attrs, op.tensors["weight"], in_shapes[0]
    c_out, kh, kw, c_group = (int(d) for d in w.shape)
    groups = int(a["groups"])
    pixels = y[0] * y[1]
    if groups == x[2] and groups > 1 and c_out == x[2]:  # Conv2dPlan's depthwise path
        c16, c32, pairs = round_up(c_out, 16), round_up(c_out, 32), -(-kw // 2)
        pt, pb, pl, pr = a["padding"]
        padded_w = x[1] + pl + pr
        ring = (kh - 1) * a["dilation"][0] + 1  # kernels.h depthwise_scratch_bytes
        scratch = ring * padded_w * c32 * 4 + c32 * 4 + padded_w + c32 // 16 * 1024 + 128 + _SCRATCH_ALIGN
        params = (
            kh * kw * c16 * 4
            + (c32 + c16) * kh * pairs * 4
            + (2 * c16 + c32) * _CONSTANT_BYTES
            + c_out * (kh * kw + 13)
        )
        work = pixels * c16 * kh * kw + x[0] * padded_w * c32
        return OpFootprint(
            reads,
            out,
            scratch_bytes=scratch,
            param_bytes=params,
            work=work,
            temporary=f"the depthwise row ring ({ring} rows of {padded_w} columns)",
        )
    k = kh * kw * c_group
    work = pixels * groups * round_up(c_out // groups, 16) * round_up(k, 4)
    return OpFootprint(
        reads,
        out,
        scratch_bytes=_gemm_scratch(k),
        param_bytes=_gemm_params(groups, c_out, k),
        work=work,
        temporary="the im2col panel",
    )


def _conv2d_native(op: Op, where: str, x: Shape, y: Shape) -> None:
    limit = _NATIVE_INDEX_LIMIT
    c_out, kh, kw, c_group = (int(d) for d in op.tensors["weight"].shape)
    dil = op.attrs["dilation"]
    extent = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)  # Conv2dPlan checks the layer on this input
    for h, w in ((x[0], x[1]), extent):
        if h * w > limit // x[2]:
            fail(
                where,
                f"the native convolution kernels refuse it: a {h}x{w}x{x[2]} input is beyond their 2^40 index limit",
            )
    k = kh * kw * c_group
    if y[0] * y[1] > limit // c_out or k > _NATIVE_REDUCTION_LIMIT or c_out * k > limit:
        fail(
            where,
            f"the native convolution kernels refuse it: output {y} with a reduction of {k} is beyond "
            f"their index limits",
        )


def _conv2d_pack(op: Op, rounding: str, overflow: str):
    t, a = op.tensors, op.attrs
    return ops.Conv2d(
        t["weight"],
        t["bias"],
        input_zero_point=a["input_zero_point"],
        stride=tuple(a["stride"]),
        padding=tuple(a["padding"]),
        dilation=tuple(a["dilation"]),
        groups=a["groups"],
        **_requant_args(op, rounding, overflow),
    )


def _conv2d_mac_dims(op: Op, y: Shape) -> tuple[int, int, int]:
    """C_out, the reduction KH * KW * C_in / groups (the OHWI weight holds C_in / groups), output pixels."""
    w = op.tensors["weight"]
    return int(w.shape[0]), int(np.prod(w.shape[1:])), int(y[0] * y[1])


# ---------------------------------------------------------------------------------- fully_connected
def _fc_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    w, x = op.tensors["weight"], in_shapes[0]
    c_out = _check_layer_tensors(op, where)
    if len(x) != 1:
        fail(where, f"fully_connected needs a flat input (K,), but '{op.inputs[0]}' has shape {x}; insert a flatten op")
    if w.shape[1] != x[0]:
        fail(where, f"weight has {w.shape[1]} input features but '{op.inputs[0]}' has {x[0]}")
    rescale = op.attrs.get("tflite_rescale")
    if rescale is not None and len(rescale) not in (1, c_out):
        fail(where, f"attribute 'tflite_rescale' has {len(rescale)} values; it needs 1 or {c_out} (one per channel)")
    return (c_out,)


def _fc_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    c_out, kk = (int(d) for d in op.tensors["weight"].shape)
    return OpFootprint(
        reads,
        out,
        scratch_bytes=_gemm_scratch(kk),
        param_bytes=_gemm_params(1, c_out, kk),
        work=round_up(c_out, 16) * round_up(kk, 4),
        temporary="the im2col panel",
    )


class _TFLiteFullyConnected:
    """A fully-connected layer with TFLite's floating-point rescale (``tflite_rescale``, arithmetic.md 16):
    emulated on the host only, as no NPU computes it."""

    def __init__(self, op: Op, overflow: str):
        t, a = op.tensors, op.attrs
        self.name = op.name
        self.weight, self.bias = t["weight"], t["bias"]
        self.kw = dict(
            input_zero_point=a["input_zero_point"],
            rescale=np.asarray(a["tflite_rescale"], np.float64),
            output_zero_point=a["output_zero_point"],
            act_min=a["act_min"],
            act_max=a["act_max"],
            overflow=overflow,
        )

    def __call__(self, x, threads=None):
        if not isinstance(x, np.ndarray):
            raise ValueError(
                f"fully_connected '{self.name}' carries TFLite's floating-point rescale (tflite_rescale), which "
                f"the emulator runs on the CPU only"
            )
        return ops.fully_connected_tflite(x, self.weight, self.bias, **self.kw)

    def cuda_plan(self, device: int):
        raise ValueError(
            f"fully_connected '{self.name}' carries TFLite's floating-point rescale (tflite_rescale), which the "
            f"emulator runs on the CPU only; import the model with fc_rescale='integer' to run it on a GPU"
        )


def _fc_pack(op: Op, rounding: str, overflow: str):
    t, a = op.tensors, op.attrs
    if a.get("tflite_rescale"):
        return _TFLiteFullyConnected(op, overflow)
    return ops.FullyConnected(
        t["weight"], t["bias"], input_zero_point=a["input_zero_point"], **_requant_args(op, rounding, overflow)
    )


def _fc_mac_dims(op: Op, y: Shape) -> tuple[int, int, int]:
    w = op.tensors["weight"]
    return int(w.shape[0]), int(np.prod(w.shape[1:])), 1


# ---------------------------------------------------------------------------------- add
_ADD_ATTRS: dict[str, Attr] = {
    **{
        f"{side}_{name}": attr
        for side in ("a", "b", "output")
        for name, attr in (
            ("zero_point", _int8()),
            ("multiplier", Attr("q31")),
            ("exponent", Attr("int", -31, 30 if side == "output" else 0)),
        )
    },
    "left_shift": Attr("int", 0, 22),
    "act_min": _int8(),
    "act_max": _int8(),
}


def _add_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    if in_shapes[0] != in_shapes[1]:
        fail(where, f"inputs '{op.inputs[0]}' {in_shapes[0]} and '{op.inputs[1]}' {in_shapes[1]} differ in shape")
    return in_shapes[0]


def _add_vector_ops(op: Op, in_shapes, y: Shape) -> int:
    return elements(y)  # one per output element


def _add_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, work=_add_vector_ops(op, in_shapes, y))


def _add_pack(op: Op, rounding: str, overflow: str) -> ops.Add:
    # the parameters checked once per program: a run then costs the kernel and little else, which matters on
    # the small tensors of the last stages of a network
    return ops.Add(rounding=rounding, **op.attrs)


def _add_run(op: Op, args, ctx: RunContext):
    add = ctx.kernel if ctx.kernel is not None else _add_pack(op, ctx.rounding, ctx.overflow)
    return add(args[0], args[1], threads=ctx.threads)


# ---------------------------------------------------------------------------------- pools
_WINDOW_ATTRS = {"kernel": _pairs(2, 1), "stride": _pairs(2, 1), "padding": _pairs(4, 0)}


def _window_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    a, x = op.attrs, in_shapes[0]
    _needs_image(op, where, x)
    kernel, stride, pad = _ints(a, "kernel"), _ints(a, "stride"), _ints(a, "padding")
    if any(p > kk // 2 for p, kk in zip(pad, (kernel[0], kernel[0], kernel[1], kernel[1]))):
        fail(where, f"padding {pad} exceeds half the kernel {kernel} (a window could lie wholly in the padding)")
    ceil = bool(attr_value(op, "ceil_mode")) if "ceil_mode" in OP_TABLE[op.kind].attrs else False
    try:  # the kernels' own rule (docs/arithmetic.md 14); it refuses a kernel larger than the padded input
        oh = ops.pool_output_size(x[0], kernel[0], stride[0], pad[0], pad[1], ceil)
        ow = ops.pool_output_size(x[1], kernel[1], stride[1], pad[2], pad[3], ceil)
    except ValueError:
        oh = ow = 0
    if oh < 1 or ow < 1:
        fail(where, f"kernel {kernel} does not fit the {x[0]}x{x[1]} input")
    return (oh, ow, x[2])


def _window_taps(op: Op, in_shapes, y: Shape) -> int:
    kh, kw = op.attrs["kernel"]
    return elements(y) * kh * kw  # one add or compare per window tap


def _window_native(op: Op, where: str, x: Shape, y: Shape) -> None:
    kh, kw = op.attrs["kernel"]
    if kh * kw > _NATIVE_POOL_TAPS:
        fail(
            where,
            f"kernel {[kh, kw]} has {kh * kw:,} taps, more than the {_NATIVE_POOL_TAPS:,} (2^30) the native "
            f"pooling kernels take",
        )


def _avg_pool2d_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, work=_window_taps(op, in_shapes, y))  # the native kernel clips windows


def _avg_pool2d_run(op: Op, args, ctx: RunContext):
    a = op.attrs
    return ops.avg_pool2d(
        args[0],
        tuple(a["kernel"]),
        stride=tuple(a["stride"]),
        padding=tuple(a["padding"]),
        count_include_pad=a["count_include_pad"],
        input_zero_point=a["input_zero_point"],
        act_min=a["act_min"],
        act_max=a["act_max"],
        threads=ctx.threads,
    )


def _max_pool2d_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, work=_window_taps(op, in_shapes, y))  # the native kernel clips windows


def _max_pool2d_run(op: Op, args, ctx: RunContext):
    # npuq.ops.max_pool2d: the native kernel on host arrays, the CUDA one on device arrays (the one implementation,
    # shared with npuq.quant.simulate)
    a = op.attrs
    return ops.max_pool2d(
        args[0],
        tuple(a["kernel"]),
        stride=tuple(a["stride"]),
        padding=tuple(a["padding"]),
        ceil_mode=bool(attr_value(op, "ceil_mode")),
        threads=ctx.threads,
    )


def _global_avg_pool_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    x = in_shapes[0]
    _needs_image(op, where, x)
    return (1, 1, x[2])


def _global_avg_pool_vector_ops(op: Op, in_shapes, y: Shape) -> int:
    return elements(in_shapes[0])  # one per input element


def _global_avg_pool_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, work=_global_avg_pool_vector_ops(op, in_shapes, y))


def _global_avg_pool_native(op: Op, where: str, x: Shape, y: Shape) -> None:
    if x[0] * x[1] > _NATIVE_POOL_TAPS:
        fail(where, f"a {x[0]}x{x[1]} window has more than the 2^30 taps the native pooling kernels take")


def _global_avg_pool_run(op: Op, args, ctx: RunContext):
    a = op.attrs
    return ops.global_avg_pool(args[0], act_min=a["act_min"], act_max=a["act_max"], threads=ctx.threads)


# ---------------------------------------------------------------------------------- flatten
def _flatten_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    return (elements(in_shapes[0]),)


def _flatten_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(0, 0, temporary="none (a view of its input)")


def _flatten_run(op: Op, args, ctx: RunContext):
    return args[0].reshape(args[0].shape[0], -1)  # NHWC order: a view


def _flatten_run_cuda(op: Op, args, ctx: RunContext):
    shape = tuple(args[0].shape)
    return args[0].reshape([shape[0], int(np.prod(shape[1:]))])


# ====================================================================================== the table
_PROGRAM = "docs/program.md#3-ops"

_TABLE: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "conv2d",
            1,
            attrs={
                "stride": _pairs(2, 1),
                "padding": _pairs(4, 0),
                "dilation": _pairs(2, 1),
                "groups": Attr("int", 1, 1 << 20),
                **_LAYER_ATTRS,
            },
            tensors=_layer_tensors(4, "OHWI"),
            infer=_conv2d_infer,
            footprint=_conv2d_footprint,
            run=_run_layer,
            pack=_conv2d_pack,
            native=_conv2d_native,
            cost_unit="mac_array",
            mac_dims=_conv2d_mac_dims,
            layer=True,
            docs=(
                _PROGRAM,
                "docs/arithmetic.md#4-convolution-and-fully-connected",
                "docs/arithmetic.md#3-requantizeacc-m0-e-s_c---int8",
            ),
        ),
        OpSpec(
            "fully_connected",
            1,
            attrs={**_LAYER_ATTRS, "tflite_rescale": Attr("floats", optional=True, default=())},
            tensors=_layer_tensors(2, "OK"),
            infer=_fc_infer,
            footprint=_fc_footprint,
            run=_run_layer,
            pack=_fc_pack,
            cost_unit="mac_array",
            mac_dims=_fc_mac_dims,
            layer=True,
            docs=(
                _PROGRAM,
                "docs/arithmetic.md#4-convolution-and-fully-connected",
                "docs/arithmetic.md#3-requantizeacc-m0-e-s_c---int8",
            ),
        ),
        OpSpec(
            "add",
            2,
            attrs=_ADD_ATTRS,
            tensors={},
            infer=_add_infer,
            footprint=_add_footprint,
            run=_add_run,
            pack=_add_pack,
            cost_unit="vector",
            vector_ops=_add_vector_ops,
            vector_inputs=("input_a", "input_b"),
            docs=(_PROGRAM, "docs/arithmetic.md#6-elementwise-add-tflite-int8-add"),
        ),
        OpSpec(
            "avg_pool2d",
            1,
            attrs={
                **_WINDOW_ATTRS,
                "count_include_pad": Attr("bool"),
                "input_zero_point": _int8(),
                "act_min": _int8(),
                "act_max": _int8(),
            },
            tensors={},
            infer=_window_infer,
            footprint=_avg_pool2d_footprint,
            run=_avg_pool2d_run,
            native=_window_native,
            cost_unit="vector",
            vector_ops=_window_taps,
            docs=(_PROGRAM, "docs/arithmetic.md#7-average-pooling"),
        ),
        OpSpec(
            "global_avg_pool",
            1,
            attrs={"act_min": _int8(), "act_max": _int8()},
            tensors={},
            infer=_global_avg_pool_infer,
            footprint=_global_avg_pool_footprint,
            run=_global_avg_pool_run,
            native=_global_avg_pool_native,
            cost_unit="vector",
            vector_ops=_global_avg_pool_vector_ops,
            docs=(_PROGRAM, "docs/arithmetic.md#7-average-pooling"),
        ),
        OpSpec(
            "max_pool2d",
            1,
            attrs={**_WINDOW_ATTRS, "ceil_mode": Attr("bool", since=F2.VERSION, default=False)},
            tensors={},
            infer=_window_infer,
            footprint=_max_pool2d_footprint,
            run=_max_pool2d_run,
            native=_window_native,
            cost_unit="vector",
            vector_ops=_window_taps,
            docs=(_PROGRAM, "docs/arithmetic.md#14-max-pooling-with-ceil-mode"),
        ),
        OpSpec(
            "flatten",
            1,
            attrs={},
            tensors={},
            infer=_flatten_infer,
            footprint=_flatten_footprint,
            run=_flatten_run,
            run_cuda=_flatten_run_cuda,
            cost_unit="none",
            view=True,
            docs=(_PROGRAM,),
        ),
        *F2.SPECS,
    )
}
#: kind -> OpSpec, in the order of docs/program.md 3 (read-only; the consumers look kinds up here at run time)
OP_TABLE: Mapping[str, OpSpec] = MappingProxyType(_TABLE)

# ------------------------------------------------------------------------------ views of the table
OP_KINDS: tuple[str, ...] = tuple(OP_TABLE)
LAYER_KINDS: tuple[str, ...] = tuple(k for k, s in OP_TABLE.items() if s.layer)
MAC_KINDS: tuple[str, ...] = tuple(k for k, s in OP_TABLE.items() if s.cost_unit == "mac_array")
VECTOR_KINDS: tuple[str, ...] = tuple(k for k, s in OP_TABLE.items() if s.cost_unit == "vector")
VIEW_KINDS: tuple[str, ...] = tuple(k for k, s in OP_TABLE.items() if s.view)
# the integer tensors of each kind that has any: field -> dtype
OP_TENSORS: Mapping[str, Mapping[str, type]] = MappingProxyType(
    {k: MappingProxyType({f: t.dtype for f, t in s.tensors.items()}) for k, s in OP_TABLE.items() if s.tensors}
)


def attr_value(op: Op, key: str):
    """``op.attrs[key]``, or the attribute's default where the op's program predates it (a format-1
    ``max_pool2d`` has no ``ceil_mode``: false)."""
    if key in op.attrs:
        return op.attrs[key]
    return OP_TABLE[op.kind].attrs[key].default


def is_view(kind: str) -> bool:
    """Whether ``kind`` is a view of its input (False for a kind not in the table)."""
    spec = OP_TABLE.get(kind)
    return spec is not None and spec.view


__all__ = [
    "Attr",
    "MAX_VARIADIC_INPUTS",
    "attr_value",
    "COST_UNITS",
    "LAYER_KINDS",
    "MAC_KINDS",
    "OP_KINDS",
    "OP_TABLE",
    "OP_TENSORS",
    "OpFootprint",
    "OpSpec",
    "RunContext",
    "Tensor",
    "VECTOR_KINDS",
    "VIEW_KINDS",
    "is_view",
]
