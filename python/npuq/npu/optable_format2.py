"""The op kinds of program format 2 (docs/program.md 3, docs/arithmetic.md 9-15): their attributes,
shape checks, footprints, run functions and costs, assembled into :data:`SPECS` for the op table
(:mod:`npuq.npu.optable`).

Table activations (``lut``), the squeeze-excitation multiply (``mul``), channel concatenation
(``concat``), the data movements ShuffleNet needs (``channel_shuffle``, ``slice``), constant padding
(``pad``), nearest / bilinear upsampling (``upsample``) and the mean over H, W with its own output scale
(``mean``, npuq's or TFLite's rounding). Max pooling's ``ceil_mode`` is an attribute of the format-1
kind, in the table itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from npuq import ops
from npuq.npu._checks import elements, fail
from npuq.npu.opschema import Attr, OpFootprint, OpSpec, RunContext, Shape, Tensor

if TYPE_CHECKING:  # pragma: no cover
    from npuq.npu.program import Op

VERSION = 2  # the program format that introduced these kinds
LUT_FUNCTIONS = (
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "tanh",
    "silu",
    "gelu",
    "gelu_tanh",
    "relu",
    "relu6",
    "clamp",
    "leaky_relu",
    "custom",
)
UPSAMPLE_MODES = ("nearest", "bilinear")
MAX_UPSAMPLE = 64
MAX_MEAN_ELEMENTS = 1 << 23  # H * W of a mean: 255 * 2^23 < 2^31, the sum is exact in int32

_PROGRAM = "docs/program.md#3-ops"


def _int8() -> Attr:
    return Attr("int", -128, 127)


def _image(op: Op, where: str, x: Shape, name: str = "") -> None:
    if len(x) != 3:
        fail(where, f"{op.kind} needs an (H, W, C) input, but '{name or op.inputs[0]}' has shape {x}")


def _elementwise_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, work=elements(y))


def _per_output(op: Op, in_shapes, y: Shape) -> int:
    """One vector-unit operation per output element: a multiply-requantize, a table read, or a move (a
    concat's copied or requantized element, a shuffle, slice or pad)."""
    return elements(y)


# ---------------------------------------------------------------------------------- lut (section 9)
def _lut_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    table = op.tensors["table"]
    if table.shape != (256,):
        fail(where, f"tensor '{op.name}.table' has shape {table.shape}, expected (256,): one entry per int8 input")
    return in_shapes[0]


def _lut_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, param_bytes=256, work=elements(y))


def _lut_run(op: Op, args, ctx: RunContext):
    return ops.lut(args[0], op.tensors["table"], threads=ctx.threads)


# ---------------------------------------------------------------------------------- mul (section 10)
def _mul_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    a, b = in_shapes
    if b == a:
        return a
    if len(a) == 3 and b == (1, 1, a[2]):
        return a
    fail(
        where,
        f"input '{op.inputs[1]}' {b} does not broadcast to '{op.inputs[0]}' {a}: it must have the same shape "
        f"or be (1, 1, C) with C = {a[-1]}",
    )


def _mul_run(op: Op, args, ctx: RunContext):
    return ops.mul(args[0], args[1], rounding=ctx.rounding, threads=ctx.threads, **op.attrs)


# ---------------------------------------------------------------------------------- concat (section 11)
def _concat_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    first = in_shapes[0]
    for name, s in zip(op.inputs, in_shapes):
        if len(s) != len(first) or s[:-1] != first[:-1]:
            fail(
                where,
                f"input '{name}' {s} does not match '{op.inputs[0]}' {first}: concat joins (H, W, C) values of "
                f"equal H and W (or flat values) along the channels",
            )
    return (*first[:-1], sum(s[-1] for s in in_shapes))


def _concat_run(op: Op, args, ctx: RunContext):
    return ops.concat(list(args), rounding=ctx.rounding, threads=ctx.threads, **op.attrs)


# ---------------------------------------------------------------------------------- data movement (12)
def _shuffle_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    x = in_shapes[0]
    _image(op, where, x)
    g = op.attrs["groups"]
    if x[2] % g:
        fail(where, f"groups ({g}) does not divide the {x[2]} channels of '{op.inputs[0]}'")
    return x


def _shuffle_run(op: Op, args, ctx: RunContext):
    return ops.channel_shuffle(args[0], op.attrs["groups"])


def _slice_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    x, a = in_shapes[0], op.attrs
    if not 0 <= a["begin"] < a["end"] <= x[-1]:
        fail(where, f"channels [{a['begin']}, {a['end']}) are not a non-empty range of the {x[-1]} of '{op.inputs[0]}'")
    return (*x[:-1], a["end"] - a["begin"])


def _slice_run(op: Op, args, ctx: RunContext):
    return ops.channel_slice(args[0], op.attrs["begin"], op.attrs["end"])


def _pad_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    x = in_shapes[0]
    _image(op, where, x)
    t, b, left, r = op.attrs["padding"]
    return (x[0] + t + b, x[1] + left + r, x[2])


def _pad_run(op: Op, args, ctx: RunContext):
    return ops.pad(args[0], tuple(op.attrs["padding"]), op.attrs["value"])


# ---------------------------------------------------------------------------------- upsample (12, 13)
def _upsample_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    x = in_shapes[0]
    _image(op, where, x)
    fh, fw = op.attrs["scale"]
    return (x[0] * fh, x[1] * fw, x[2])


def _upsample_vector_ops(op: Op, in_shapes, y: Shape) -> int:
    return (4 if op.attrs["mode"] == "bilinear" else 1) * elements(y)  # bilinear: 4 taps; nearest: one read


def _upsample_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, work=_upsample_vector_ops(op, in_shapes, y))


def _upsample_run(op: Op, args, ctx: RunContext):
    a = op.attrs
    return ops.upsample(args[0], tuple(a["scale"]), mode=a["mode"], zero_point=a["zero_point"], threads=ctx.threads)


# ---------------------------------------------------------------------------------- mean (section 15)
def _mean_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    x = in_shapes[0]
    _image(op, where, x)
    if x[0] * x[1] > MAX_MEAN_ELEMENTS:
        fail(where, f"a {x[0]}x{x[1]} mean sums more than 2^23 values per channel (its int32 sum could overflow)")
    return (1, 1, x[2])


def _mean_vector_ops(op: Op, in_shapes, y: Shape) -> int:
    return elements(in_shapes[0])


def _mean_footprint(op: Op, in_shapes, y: Shape, reads: int, out: int) -> OpFootprint:
    return OpFootprint(reads, out, work=_mean_vector_ops(op, in_shapes, y))


def _mean_run(op: Op, args, ctx: RunContext):
    return ops.mean(args[0], rounding=ctx.rounding, threads=ctx.threads, **op.attrs)


# ====================================================================================== the entries
def _docs(*sections: str) -> tuple[str, ...]:
    return (_PROGRAM, *(f"docs/arithmetic.md#{s}" for s in sections))


SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        "lut",
        1,
        attrs={"function": Attr("choice", choices=LUT_FUNCTIONS)},
        tensors={"table": Tensor(np.int8, 1, "T")},
        infer=_lut_infer,
        footprint=_lut_footprint,
        run=_lut_run,
        cost_unit="vector",
        vector_ops=_per_output,
        since=VERSION,
        docs=_docs("9-table-activations-lut"),
    ),
    OpSpec(
        "mul",
        2,
        attrs={
            "a_zero_point": _int8(),
            "b_zero_point": _int8(),
            "output_zero_point": _int8(),
            "multiplier": Attr("q31"),
            "exponent": Attr("int", -31, 30),
            "act_min": _int8(),
            "act_max": _int8(),
        },
        tensors={},
        infer=_mul_infer,
        footprint=_elementwise_footprint,
        run=_mul_run,
        cost_unit="vector",
        vector_ops=_per_output,
        vector_inputs=("input_a", "input_b"),
        since=VERSION,
        docs=_docs("10-elementwise-multiply-mul-tflite-int8-mul"),
    ),
    OpSpec(
        "concat",
        0,
        attrs={
            "zero_points": Attr("ints", -128, 127),
            "multipliers": Attr("q31s"),
            "exponents": Attr("ints", -31, 30),
            "output_zero_point": _int8(),
        },
        tensors={},
        infer=_concat_infer,
        footprint=_elementwise_footprint,
        run=_concat_run,
        cost_unit="vector",
        vector_ops=_per_output,
        vector_inputs=(),
        since=VERSION,
        docs=_docs("11-concatenation-along-channels-concat"),
    ),
    OpSpec(
        "channel_shuffle",
        1,
        attrs={"groups": Attr("int", 1, 1 << 20)},
        tensors={},
        infer=_shuffle_infer,
        footprint=_elementwise_footprint,
        run=_shuffle_run,
        cost_unit="vector",
        vector_ops=_per_output,
        since=VERSION,
        docs=_docs("12-data-movement-channel_shuffle-slice-pad-nearest-upsample"),
    ),
    OpSpec(
        "slice",
        1,
        attrs={"begin": Attr("int", 0, 1 << 31), "end": Attr("int", 1, 1 << 31)},
        tensors={},
        infer=_slice_infer,
        footprint=_elementwise_footprint,
        run=_slice_run,
        cost_unit="vector",
        vector_ops=_per_output,
        since=VERSION,
        docs=_docs("12-data-movement-channel_shuffle-slice-pad-nearest-upsample"),
    ),
    OpSpec(
        "pad",
        1,
        attrs={"padding": Attr("ints", 0, 1 << 16, 4), "value": _int8()},
        tensors={},
        infer=_pad_infer,
        footprint=_elementwise_footprint,
        run=_pad_run,
        cost_unit="vector",
        vector_ops=_per_output,
        since=VERSION,
        docs=_docs("12-data-movement-channel_shuffle-slice-pad-nearest-upsample"),
    ),
    OpSpec(
        "upsample",
        1,
        attrs={
            "scale": Attr("ints", 1, MAX_UPSAMPLE, 2),
            "mode": Attr("choice", choices=UPSAMPLE_MODES),
            "zero_point": _int8(),
        },
        tensors={},
        infer=_upsample_infer,
        footprint=_upsample_footprint,
        run=_upsample_run,
        cost_unit="vector",
        vector_ops=_upsample_vector_ops,
        since=VERSION,
        docs=_docs(
            "12-data-movement-channel_shuffle-slice-pad-nearest-upsample",
            "13-bilinear-upsampling-upsample-mode--bilinear",
        ),
    ),
    OpSpec(
        "mean",
        1,
        attrs={
            "input_zero_point": _int8(),
            "output_zero_point": _int8(),
            "multiplier": Attr("q31"),
            "exponent": Attr("int", -31, 30),
            "act_min": _int8(),
            "act_max": _int8(),
            "tflite_rounding": Attr("bool"),
        },
        tensors={},
        infer=_mean_infer,
        footprint=_mean_footprint,
        run=_mean_run,
        cost_unit="vector",
        vector_ops=_mean_vector_ops,
        since=VERSION,
        docs=_docs("15-mean-over-h-and-w-mean"),
    ),
)

__all__ = ["LUT_FUNCTIONS", "MAX_MEAN_ELEMENTS", "MAX_UPSAMPLE", "SPECS", "UPSAMPLE_MODES", "VERSION"]
