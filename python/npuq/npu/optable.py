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

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from npuq import ops
from npuq.npu._checks import INT32_MAX, elements, fail, first_bad, int_field, int_list, out_size, round_up

if TYPE_CHECKING:  # pragma: no cover
    from npuq.npu.program import Op

Shape = tuple[int, ...]

COST_UNITS = ("mac_array", "vector", "none")

# What the native kernels allocate and accept (csrc/cpu/kernels.h, conv_plan.cc, common/validate.cc),
# mirrored here so that a program that validates never fails in them.
_NATIVE_INDEX_LIMIT = 1 << 40  # validate.cc: products of indices of a conv / pool
_NATIVE_REDUCTION_LIMIT = 1 << 31  # validate.cc: KH * KW * C_in / groups of a conv
_NATIVE_POOL_TAPS = 1 << 30  # validate.cc: taps of one pooling window
_PANEL_ROWS = 24  # kernels.h kPanelRows: im2col rows packed at once, per thread
_SCRATCH_ALIGN = 64  # conv_plan.cc Scratch: every scratch buffer is over-allocated for alignment
_CONSTANT_BYTES = 36  # kernels.h ChannelConstants per padded channel: 3 int32 + 3 int64
_GROUP_OVERHEAD = 512  # per GEMM group: vector headers and allocator overhead (an upper estimate)


# ====================================================================================== the schema
@dataclass(frozen=True)
class Attr:
    """One attribute of an op kind, as the loader checks it (every attribute of a kind is required).

    ``type``: ``"int"`` (an integer in ``[lo, hi]``), ``"ints"`` (a list of ``length`` integers in
    ``[lo, hi]``), ``"q31"`` (a Q31 mantissa: 0 or in ``[2^30, 2^31 - 1]``) or ``"bool"``."""

    type: str
    lo: int = 0
    hi: int = 0
    length: int = 0

    def __post_init__(self):
        if self.type not in ("int", "ints", "q31", "bool"):
            raise ValueError(f"unknown attribute type {self.type!r}")

    def check(self, attrs: dict, key: str, where: str):
        """The value of ``attrs[key]``, or a ProgramError naming ``where`` and the attribute."""
        if self.type == "int":
            return int_field(attrs, key, where, self.lo, self.hi)
        if self.type == "ints":
            return int_list(attrs, key, where, self.length, self.lo, self.hi)
        if self.type == "q31":
            m = int_field(attrs, key, where, 0, INT32_MAX)
            if m and m < 2**30:
                fail(where, f"attribute '{key}' = {m} is not a Q31 mantissa (0 or in [2^30, 2^31-1])")
            return m
        v = attrs.get(key)
        if not isinstance(v, bool):
            fail(where, f"attribute '{key}' must be true or false, got {v!r}")
        return v


@dataclass(frozen=True)
class Tensor:
    """One integer tensor of an op kind: its dtype and number of dimensions (the loader checks both; the
    kind's ``infer`` checks the sizes) and its layout in a golden vector set (docs/golden_vectors.md 1)."""

    dtype: type
    ndim: int
    layout: str

    def check(self, op: Op, key: str, where: str) -> np.ndarray:
        if key not in op.tensors:
            fail(where, f"missing tensor '{op.name}.{key}'")
        t = op.tensors[key]
        want = np.dtype(self.dtype)
        if not isinstance(t, np.ndarray):
            fail(where, f"tensor '{op.name}.{key}' must be a numpy array, got {type(t).__name__}")
        if t.dtype != want:
            fail(where, f"tensor '{op.name}.{key}' has dtype {t.dtype}, expected {want}")
        if t.ndim != self.ndim:
            fail(where, f"tensor '{op.name}.{key}' has shape {t.shape}, expected {self.ndim} dimension(s)")
        return t


@dataclass(frozen=True)
class OpFootprint:
    """What running one op takes, per image unless said otherwise (bytes; activations are int8).

    ``intermediate_bytes`` are per-image temporaries beyond the inputs and the output (the padded plane of
    a max pool); ``scratch_bytes`` is per thread of a native kernel and independent of the batch (the
    im2col panel of a GEMM conv, the row ring of a depthwise conv); ``param_bytes`` is per program (the
    layer's parameters as the native kernels pack them); ``work`` counts multiply-accumulates or element
    operations as the kernels run them (GEMM tiles padded to 16 channels and 4 taps)."""

    input_bytes: int
    output_bytes: int
    intermediate_bytes: int = 0
    scratch_bytes: int = 0
    param_bytes: int = 0
    work: int = 0
    temporary: str = ""  # what the temporaries are, for messages

    @property
    def working_set_bytes(self) -> int:
        """Everything the op touches for one image on one thread: bounded by MAX_OP_BYTES."""
        return self.input_bytes + self.output_bytes + self.intermediate_bytes + self.scratch_bytes


@dataclass(frozen=True)
class RunContext:
    """What a run function gets besides the op and its input values: the op's packed kernel (from
    :attr:`OpSpec.pack`, else None), the program's rounding and overflow policy, and the thread count
    (None: the default; always None on a GPU)."""

    kernel: Any
    rounding: str
    overflow: str
    threads: int | None = None


@dataclass(frozen=True, eq=False)
class OpSpec:
    """One op kind. Functions take the op (validated unless said otherwise) and per-image shapes."""

    name: str
    n_inputs: int
    attrs: Mapping[str, Attr]  # allowed = required attributes, checked in this order
    tensors: Mapping[str, Tensor]  # required tensors, in the order golden vector sets write them
    # (op, where, input shapes) -> output shape: the checks beyond the attributes' types and ranges and the
    # tensors' dtypes and ranks (done before it), raising ProgramError via npuq.npu._checks.fail
    infer: Callable[..., Shape]
    # (op, input shapes, output shape, bytes read, bytes written) -> OpFootprint
    footprint: Callable[..., OpFootprint]
    # (op, args, RunContext) -> output values: host numpy arrays; also device arrays unless run_cuda is set
    run: Callable[..., Any]
    cost_unit: str  # "mac_array", "vector" or "none" (docs/cost_model.md 2)
    docs: tuple[str, ...]  # "docs/<file>.md#<section anchor>" that define the kind
    run_cuda: Callable[..., Any] | None = None  # device arrays; None: run handles them
    pack: Callable[..., Any] | None = None  # (op, rounding, overflow) -> the packed native kernel
    native: Callable[..., None] | None = None  # (op, where, input shape, output shape): the kernels' limits
    mac_dims: Callable[..., tuple[int, int, int]] | None = None  # mac_array: (C_out, reduction, pixels)
    vector_ops: Callable[..., int] | None = None  # vector: (op, input shapes, output shape) -> element ops
    view: bool = False  # the output is its input's buffer, reshaped: no work, no memory
    layer: bool = False  # a layer with weights (its tensors), packed once per program
    vector_inputs: tuple[str, ...] = ("input",)  # golden vector array names of its inputs

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(f"op table entry '{self.name}': {what}")

        need(self.cost_unit in COST_UNITS, f"cost_unit {self.cost_unit!r} is not one of {COST_UNITS}")
        need(len(self.vector_inputs) == self.n_inputs >= 1, "one golden vector input name per input")
        need(self.layer == bool(self.tensors) == (self.pack is not None), "a layer has tensors and a pack function")
        need((self.cost_unit == "mac_array") == (self.mac_dims is not None), "mac_dims iff the unit is mac_array")
        need((self.cost_unit == "vector") == (self.vector_ops is not None), "vector_ops iff the unit is vector")
        need(self.cost_unit != "mac_array" or self.layer, "a MAC-array op is a layer (weights, requantization)")
        need(
            not self.view or (self.cost_unit == "none" and self.n_inputs == 1 and not self.layer),
            "a view reads one value and costs nothing",
        )
        need(bool(self.docs) and all(d.startswith("docs/") and "#" in d for d in self.docs), "docs anchors")
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))

    @property
    def required_arrays(self) -> tuple[str, ...]:
        """The arrays of an op folder in a golden vector set, in order: inputs, tensors, output."""
        return self.vector_inputs + tuple(self.tensors) + ("output",)

    def check(self, op: Op, where: str, in_shapes: list[Shape]) -> Shape:
        """Validate ``op`` (of this kind, its inputs defined with ``in_shapes``): inputs, attributes,
        tensors, then the kind's own checks. Returns the output shape; raises ProgramError."""
        k, a = self.name, op.attrs
        if len(op.inputs) != self.n_inputs:
            fail(where, f"{k} takes {self.n_inputs} input(s), got {len(op.inputs)}")
        if not isinstance(a, dict):
            fail(where, f"attrs must be an object, got {type(a).__name__}")
        unknown = set(a) - set(self.attrs)
        if unknown:
            fail(where, f"unknown attribute(s) {sorted(unknown)}; this op kind has {sorted(self.attrs)}")
        for key, attr in self.attrs.items():
            attr.check(a, key, where)
        if "act_min" in self.attrs and "act_max" in self.attrs and a["act_min"] > a["act_max"]:
            fail(where, f"act_min ({a['act_min']}) > act_max ({a['act_max']})")  # the fused activation clamp
        if not self.tensors:
            if op.tensors:
                fail(where, f"{k} has no tensors, got {sorted(op.tensors)}")
        else:
            for key, tensor in self.tensors.items():
                tensor.check(op, key, where)
            extra = set(op.tensors) - set(self.tensors)
            if extra:
                fail(where, f"unknown tensor(s) {sorted(extra)}")
        return self.infer(op, where, in_shapes)

    def footprint_of(self, op: Op, in_shapes: list[Shape], out_shape: Shape) -> OpFootprint:
        reads = sum(elements(s) for s in dict(zip(op.inputs, in_shapes)).values())  # a value read twice: one buffer
        return self.footprint(op, in_shapes, out_shape, reads, elements(out_shape))


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
    """One im2col panel of a GEMM conv / fully-connected layer (per thread)."""
    return _PANEL_ROWS * round_up(k, 4) + _SCRATCH_ALIGN


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


def _fc_pack(op: Op, rounding: str, overflow: str):
    t, a = op.tensors, op.attrs
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


def _add_run(op: Op, args, ctx: RunContext):
    return ops.add(args[0], args[1], rounding=ctx.rounding, threads=ctx.threads, **op.attrs)


# ---------------------------------------------------------------------------------- pools
_WINDOW_ATTRS = {"kernel": _pairs(2, 1), "stride": _pairs(2, 1), "padding": _pairs(4, 0)}


def _window_infer(op: Op, where: str, in_shapes: list[Shape]) -> Shape:
    a, x = op.attrs, in_shapes[0]
    _needs_image(op, where, x)
    kernel, stride, pad = _ints(a, "kernel"), _ints(a, "stride"), _ints(a, "padding")
    if any(p > kk // 2 for p, kk in zip(pad, (kernel[0], kernel[0], kernel[1], kernel[1]))):
        fail(where, f"padding {pad} exceeds half the kernel {kernel} (a window could lie wholly in the padding)")
    oh = out_size(x[0], kernel[0], stride[0], 1, pad[0], pad[1])
    ow = out_size(x[1], kernel[1], stride[1], 1, pad[2], pad[3])
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
    work = _window_taps(op, in_shapes, y)
    pt, pb, pl, pr = op.attrs["padding"]
    if pt or pb or pl or pr:  # ops.max_pool2d pads a copy of the input with np.pad
        h, w, c = in_shapes[0]
        plane = (h + pt + pb, w + pl + pr, c)
        return OpFootprint(
            reads,
            out,
            intermediate_bytes=elements(plane),
            work=work,
            temporary=f"the padded input plane {'x'.join(map(str, plane))}",
        )
    return OpFootprint(reads, out, work=work)


def _max_pool2d_run(op: Op, args, ctx: RunContext):
    # npuq.ops.max_pool2d: numpy on host arrays, the CUDA kernel on device arrays (the one implementation,
    # shared with npuq.quant.simulate)
    a = op.attrs
    return ops.max_pool2d(args[0], tuple(a["kernel"]), stride=tuple(a["stride"]), padding=tuple(a["padding"]))


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
            attrs=_LAYER_ATTRS,
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
            attrs=_WINDOW_ATTRS,
            tensors={},
            infer=_window_infer,
            footprint=_max_pool2d_footprint,
            run=_max_pool2d_run,
            native=_window_native,
            cost_unit="vector",
            vector_ops=_window_taps,
            docs=(_PROGRAM,),
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


def is_view(kind: str) -> bool:
    """Whether ``kind`` is a view of its input (False for a kind not in the table)."""
    spec = OP_TABLE.get(kind)
    return spec is not None and spec.view


__all__ = [
    "Attr",
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
