"""Import an int8 TFLite model as an npuq program, bit-exact against TFLite's reference kernels.

Each TFLite operator becomes the npuq op with the same integer semantics (docs/interop.md has the table),
its integer parameters derived from the file's float scales exactly as TFLite's kernels derive them at
``Prepare`` time, so that the emulator reproduces LiteRT's reference kernels bit for bit. Where TFLite's
rounding is not npuq's own (FULLY_CONNECTED, MEAN), the op carries the TFLite-compatible variant as an
attribute; activations TFLite computes with its own fixed-point algorithms (HARD_SWISH, LOGISTIC, TANH, ...)
become 256-entry tables computed with those algorithms (:mod:`npuq.interop.tflite_math`).

Per-channel filter scales that are one per-layer scale times powers of two are exactly WESS shifts
(``s_w[c] = s_w / 2^s_c``): such a layer becomes a per-layer multiplier plus 4-bit shifts, which a
per-layer NPU runs as it is. The :class:`ImportReport` counts them.

What cannot be imported raises :class:`TFLiteImportError`: a float model, int16 activations, asymmetric
(zero point != 0) weights, or unsupported operators, all listed with their index.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npuq.fixedpoint import quantize_multipliers
from npuq.interop import tflite_math as tm
from npuq.interop.tflite_read import (
    TFLiteGraph,
    TFLiteImportError,
    TFLiteOperator,
    TFLiteTensor,
    parse_tflite,
    read_tflite,
)

MAX_SHIFT = 15  # the 4-bit WESS shift field of the program (docs/program.md 3)

# the fused activations of TFLite's int8 kernels: a clamp (tflite_math.activation_range)
FUSED_ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1")

# elementwise activations imported as 256-entry tables: TFLite opcode -> the program's lut `function`
TABLE_OPS = {
    "HARD_SWISH": "hardswish",
    "LOGISTIC": "sigmoid",
    "TANH": "tanh",
    "RELU": "relu",
    "RELU6": "relu6",
    "RELU_N1_TO_1": "clamp",
    "LEAKY_RELU": "leaky_relu",
    "QUANTIZE": "custom",  # int8 -> int8: a requantization between two scales
    "GELU": "gelu",  # "gelu_tanh" with approximate=True
    "ELU": "custom",
}


@dataclass
class LayerReport:
    """How one conv / fully-connected layer's filter scales were imported."""

    name: str
    operator: int
    opcode: str
    channels: int
    weights: str  # "per_tensor", "wess" (per-layer scale + shifts, exact) or "per_channel"
    max_shift: int = 0
    why_per_channel: str = ""


@dataclass
class ImportReport:
    """What :func:`import_tflite` made of a model."""

    source: str
    operators: int
    ops: dict[str, int] = field(default_factory=dict)  # npuq op kind -> count
    layers: list[LayerReport] = field(default_factory=list)
    tflite_variants: list[str] = field(default_factory=list)  # ops that carry TFLite's own rounding
    dropped: list[str] = field(default_factory=list)  # operators with no npuq op (and why that is safe)
    notes: list[str] = field(default_factory=list)  # what else a reader of the import should know
    # TFLite tensor name -> the npuq value holding the same int8 values (for comparisons)
    values: dict[str, str] = field(default_factory=dict)

    @property
    def per_layer_ready(self) -> int:
        """Layers a per-layer NPU runs as they are: per-tensor filter scales, or WESS-exact ones."""
        return sum(1 for layer in self.layers if layer.weights != "per_channel")

    def to_json(self) -> dict:
        d = asdict(self)
        d["per_layer_ready"] = self.per_layer_ready
        return d

    def summary(self) -> str:
        forms: dict[str, int] = {}
        for layer in self.layers:
            forms[layer.weights] = forms.get(layer.weights, 0) + 1
        lines = [
            f"imported {self.source}: {self.operators} TFLite operators -> "
            + ", ".join(f"{n} {k}" for k, n in sorted(self.ops.items())),
            f"layers: {len(self.layers)} ({', '.join(f'{n} {k}' for k, n in sorted(forms.items())) or 'none'}); "
            f"{self.per_layer_ready} of {len(self.layers)} run on a per-layer NPU as they are "
            f"(per-tensor scales, or per-channel scales that are exact 4-bit WESS shifts)",
        ]
        lines += [f"TFLite rounding kept: {v}" for v in self.tflite_variants]
        lines += [f"dropped: {d}" for d in self.dropped]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class TFLiteImport:
    program: Any  # npuq.npu.program.Program
    report: ImportReport


FC_RESCALES = ("tflite", "integer")


def from_tflite(source, *, name: str | None = None, drop_softmax: bool = False, fc_rescale: str = "tflite"):
    """The npuq program of an int8 TFLite model (a path, or the file's bytes). The import report is in
    ``program.info["tflite_import"]``; :func:`import_tflite` returns it as an object."""
    return import_tflite(source, name=name, drop_softmax=drop_softmax, fc_rescale=fc_rescale).program


def import_tflite(
    source, *, name: str | None = None, drop_softmax: bool = False, fc_rescale: str = "tflite"
) -> TFLiteImport:
    """Import an int8 TFLite model: ``source`` is a path or the bytes of a ``.tflite`` file.

    ``drop_softmax``: a SOFTMAX at the end of the graph (npuq has no softmax op) is left out, so that the
    program's output is the logits it reads; the arg-max is unchanged. Without it such a model is refused.

    ``fc_rescale``: ``"tflite"`` (default) gives FULLY_CONNECTED layers TFLite's floating-point rescale
    (attribute ``tflite_rescale``, docs/arithmetic.md 16), bit-exact against LiteRT; ``"integer"`` gives
    them npuq's integer requantization, which an NPU runs (and libnpuq), at most 1 LSB from LiteRT's
    outputs on a fraction of a percent of them.
    """
    if fc_rescale not in FC_RESCALES:
        raise ValueError(f"fc_rescale must be one of {', '.join(FC_RESCALES)}, got {fc_rescale!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        graph, label = parse_tflite(bytes(source), "model"), "model"
    elif isinstance(source, (str, os.PathLike)):
        graph, label = read_tflite(source), str(source)
    else:
        raise TypeError(f"source must be a path or the bytes of a .tflite file, got {type(source).__name__}")
    if not isinstance(drop_softmax, bool):
        raise TypeError(f"drop_softmax must be a bool, got {type(drop_softmax).__name__}")
    if name is None:
        name = Path(label).stem if label != "model" else "tflite_model"
    return _Importer(graph, label, name, drop_softmax, fc_rescale).run()


# ====================================================================================== the importer
@dataclass
class _Value:
    name: str  # the npuq value (program input or op)
    shape: tuple[int, ...]  # per image: (H, W, C) or (K,)
    scale: float
    zero_point: int


class _Importer:
    def __init__(self, graph: TFLiteGraph, label: str, model_name: str, drop_softmax: bool, fc_rescale: str):
        self.g = graph
        self.fc_rescale = fc_rescale
        self.label = label
        self.model_name = model_name
        self.drop_softmax = drop_softmax
        self.values: dict[int, _Value] = {}  # TFLite tensor index -> npuq value
        self.ops: list = []
        self.names: set[str] = set()
        self.report = ImportReport(label, len(graph.operators))
        self.consumers: dict[int, list[int]] = {}
        for op in graph.operators:
            for t in op.inputs:
                if t >= 0:
                    self.consumers.setdefault(t, []).append(op.index)

    # ---------------------------------------------------------------------------------- errors
    def fail(self, what: str) -> TFLiteImportError:
        return TFLiteImportError(f"{self.label}: {what}")

    def op_fail(self, op: TFLiteOperator, what: str) -> TFLiteImportError:
        return self.fail(f"{op.describe()}: {what}")

    # ---------------------------------------------------------------------------------- driver
    def run(self) -> TFLiteImport:
        from npuq.npu.program import InputSpec, Program, ProgramError, validate

        self.check_types()
        skip = self.plan_edges()
        unsupported = [
            op.describe() for op in self.g.operators if op.index not in skip and op.opcode not in _CONVERTERS
        ]
        if unsupported:
            raise self.fail(
                f"{len(unsupported)} operator(s) have no npuq equivalent: {', '.join(unsupported)} "
                f"(docs/interop.md lists the supported ones)"
            )
        for op in self.g.operators:
            if op.index not in skip:
                _CONVERTERS[op.opcode](self, op)
        out_tensor = self.output_tensor
        if out_tensor not in self.values:
            raise self.fail(f"the graph output {self.g.tensors[out_tensor].describe()} is not computed by any operator")
        out = self.values[out_tensor]
        if out.name == self.input_spec.name:
            raise self.fail("the graph computes nothing (its output is its input)")
        for op in self.ops:
            self.report.ops[op.kind] = self.report.ops.get(op.kind, 0) + 1
        program = Program(
            input=InputSpec(**self.input_spec.__dict__),
            ops=self.ops,
            output=out.name,
            model=self.model_name,
            info={
                "tflite_import": self.report.to_json(),
                "source": {"format": "tflite", "description": self.g.description},
            },
        )
        try:
            validate(program, self.label)
        except ProgramError as exc:
            raise self.fail(f"the imported program is not valid: {exc}") from None
        return TFLiteImport(program, self.report)

    # ---------------------------------------------------------------------------------- checks
    def check_types(self) -> None:
        """A float or int16 model is refused before anything else, naming a tensor that shows it."""
        g = self.g
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise self.fail(
                f"the model has {len(g.inputs)} inputs and {len(g.outputs)} outputs; npuq imports models with "
                f"one input and one output"
            )
        edge = {g.inputs[0], g.outputs[0]}
        for op in g.operators:
            if op.opcode in ("QUANTIZE", "DEQUANTIZE") and any(t in edge for t in op.inputs + op.outputs):
                continue  # the float interface of a quantized model
            for t in op.inputs + op.outputs:
                if t < 0:
                    continue
                tensor = g.tensors[t]
                if tensor.data is not None and tensor.dtype in ("int32", "int64"):
                    continue  # biases, axes, shapes, paddings
                if tensor.dtype in ("float32", "float16", "float64"):
                    raise self.op_fail(
                        op,
                        f"{tensor.describe()} is floating point: this is a float (non-quantized) model. npuq "
                        f"imports full-integer int8 models (TFLite post-training integer quantization)",
                    )
                if tensor.dtype == "int16":
                    raise self.op_fail(
                        op,
                        f"{tensor.describe()} holds int16 activations (16x8 quantization); npuq's NPU computes "
                        f"int8 activations with int8 weights",
                    )
                if tensor.dtype not in ("int8", "int32") or (tensor.dtype == "int32" and tensor.data is None):
                    raise self.op_fail(
                        op, f"{tensor.describe()} has type {tensor.dtype}; npuq imports int8 activations and weights"
                    )
                if tensor.data is None and tensor.scale is None:
                    raise self.op_fail(op, f"{tensor.describe()} is int8 but carries no quantization parameters")

    def plan_edges(self) -> set[int]:
        """The program input and output: the graph's, or across the QUANTIZE / DEQUANTIZE (and, with
        ``drop_softmax``, SOFTMAX) that give a quantized model a float interface. Returns the operators
        that need no npuq op."""
        g = self.g
        skip: set[int] = set()
        t_in = g.tensors[g.inputs[0]]
        if t_in.dtype == "float32":
            users = self.consumers.get(t_in.index, [])
            first = g.operators[users[0]] if len(users) == 1 else None
            if first is None or first.opcode != "QUANTIZE" or g.tensors[first.outputs[0]].dtype != "int8":
                raise self.fail(
                    f"the input {t_in.describe()} is float and does not feed exactly one QUANTIZE to int8: "
                    f"this is a float (non-quantized) model; npuq imports full-integer int8 models"
                )
            skip.add(first.index)
            self.report.dropped.append(
                f"{first.describe()}: the float input's quantization; the program quantizes float images with "
                f"the same scale and zero point (round half away from zero, as TFLite)"
            )
            t_in = g.tensors[first.outputs[0]]
        elif t_in.dtype != "int8":
            raise self.fail(
                f"the input {t_in.describe()} has type {t_in.dtype}; npuq imports int8 (or float, quantized by a "
                f"QUANTIZE) inputs"
            )
        self.input_spec = self.make_input(t_in)
        self.values[t_in.index] = _Value(
            self.input_spec.name, self.input_spec.shape, self.input_spec.scale, self.input_spec.zero_point
        )

        out = g.outputs[0]
        producers = {t: op for op in g.operators for t in op.outputs}
        seen = {out}
        while True:
            op = producers.get(out)
            if op is None or not op.inputs or op.inputs[0] in seen:  # a file may close a cycle here
                break
            if op.opcode == "DEQUANTIZE":
                what = "the output's dequantization; the program's output is int8 with the same scale and zero point"
            elif op.opcode == "SOFTMAX" and self.drop_softmax:
                what = "the final softmax (drop_softmax): the program outputs the logits it reads (same arg-max)"
            elif op.opcode == "SOFTMAX":
                raise self.op_fail(
                    op,
                    "the graph ends in a softmax, which npuq has no op for; import with drop_softmax=True "
                    "(--drop-softmax) to output the logits before it (the arg-max is the same)",
                )
            else:
                break
            if len(self.consumers.get(op.inputs[0], [])) != 1:
                break
            skip.add(op.index)
            self.report.dropped.append(f"{op.describe()}: {what}")
            out = op.inputs[0]
            seen.add(out)
        self.output_tensor = out
        return skip

    def make_input(self, t: TFLiteTensor):
        from npuq.npu.program import InputSpec

        scale, zp = self.per_tensor(t, None)
        shape = self.image_shape(t, None)
        return InputSpec(self.unique_name("input", t.name), shape, scale, zp)

    # ---------------------------------------------------------------------------------- helpers
    def unique_name(self, stem: str, tensor_name: str = "") -> str:
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem)[:100]
        if not base or not (base[0].isalpha() or base[0] == "_"):
            base = "v_" + base
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def per_tensor(self, t: TFLiteTensor, op: TFLiteOperator | None) -> tuple[float, int]:
        where = (lambda s: self.op_fail(op, s)) if op is not None else self.fail
        if t.scale is None:
            raise where(f"{t.describe()} has no quantization parameters")
        if t.scale.size != 1 or (t.zero_point is not None and t.zero_point.size != 1):
            raise where(f"{t.describe()} is quantized per channel; npuq's activations have one scale and zero point")
        scale, zp = float(t.scale[0]), int(t.zero_point[0]) if t.zero_point is not None else 0
        if not (np.isfinite(scale) and scale > 0):
            raise where(f"{t.describe()} has scale {scale}; a scale must be finite and > 0")
        if not -128 <= zp <= 127:
            raise where(f"{t.describe()} has zero point {zp}, outside int8")
        return scale, zp

    def image_shape(self, t: TFLiteTensor, op: TFLiteOperator | None) -> tuple[int, ...]:
        """The per-image shape of an activation: (H, W, C) from [N, H, W, C], (K,) from [N, K]."""
        s = t.shape
        if len(s) == 4:
            shape = tuple(s[1:])
        elif len(s) == 2:
            shape = (s[1],)
        else:
            where = (lambda m: self.op_fail(op, m)) if op is not None else self.fail
            raise where(f"{t.describe()} has rank {len(s)}; npuq's values are [N, H, W, C] or [N, K]")
        if any(d < 1 for d in shape):
            raise self.fail(f"{t.describe()} has an empty dimension")
        return shape

    def value(self, op: TFLiteOperator, i: int) -> _Value:
        t = op.inputs[i] if i < len(op.inputs) else -1
        if t < 0:
            raise self.op_fail(op, f"input {i} is missing")
        if t not in self.values:
            tensor = self.g.tensors[t]
            if tensor.data is not None:
                raise self.op_fail(
                    op, f"input {i} {tensor.describe()} is a constant; npuq's {op.opcode} takes computed values"
                )
            raise self.op_fail(op, f"input {i} {tensor.describe()} is not computed by an earlier operator")
        return self.values[t]

    def output(self, op: TFLiteOperator) -> TFLiteTensor:
        if len(op.outputs) != 1 or op.outputs[0] < 0:
            raise self.op_fail(op, f"has {len(op.outputs)} outputs; npuq imports operators with one output")
        return self.g.tensors[op.outputs[0]]

    def constant(self, op: TFLiteOperator, i: int, what: str, dtype: str | None = None) -> TFLiteTensor:
        t = op.inputs[i] if i < len(op.inputs) else -1
        if t < 0:
            raise self.op_fail(op, f"the {what} (input {i}) is missing")
        tensor = self.g.tensors[t]
        if tensor.data is None:
            raise self.op_fail(op, f"the {what} {tensor.describe()} is not a constant; npuq needs it at import time")
        if dtype is not None and tensor.dtype != dtype:
            raise self.op_fail(op, f"the {what} {tensor.describe()} has type {tensor.dtype}, not {dtype}")
        return tensor

    def emit(
        self,
        op: TFLiteOperator,
        kind: str,
        inputs: list[str],
        attrs: dict,
        out: TFLiteTensor,
        shape,
        *,
        tensors=None,
        suffix: str = "",
    ) -> _Value:
        from npuq.npu.program import Op

        scale, zp = self.per_tensor(out, op)
        name = self.unique_name(f"{op.opcode.lower()}_{op.index}{suffix}")
        self.ops.append(
            Op(
                name,
                kind,
                inputs,
                attrs,
                tensors or {},
                scale=scale,
                zero_point=zp,
                path=f"tflite:{op.index}:{out.name}"[:400],
            )
        )
        return _Value(name, tuple(shape), scale, zp)

    def bind(self, op: TFLiteOperator, value: _Value) -> None:
        out = self.output(op)
        want = self.image_shape(out, op)
        if tuple(want) != tuple(value.shape):
            raise self.op_fail(
                op, f"its output {out.describe()} has shape {list(want)} per image, npuq computes {list(value.shape)}"
            )
        self.values[out.index] = value
        self.report.values[out.name] = value.name

    def activation_range(self, op: TFLiteOperator, out: TFLiteTensor) -> tuple[int, int]:
        act = op.options.get("fused_activation_function", "NONE")
        if act not in FUSED_ACTIVATIONS:
            raise self.op_fail(
                op, f"fused activation {act} is not supported (npuq fuses {', '.join(FUSED_ACTIVATIONS)})"
            )
        scale, zp = self.per_tensor(out, op)
        return tm.activation_range(act, scale, zp)

    def flat(self, op: TFLiteOperator, v: _Value) -> _Value:
        """``v`` as (K,): a flatten op in front of a layer that reads a map (TFLite reads [N, H, W, C] in
        (H, W, C) order, as npuq's flatten does)."""
        from npuq.npu.program import Op

        if len(v.shape) == 1:
            return v
        name = self.unique_name(f"{op.opcode.lower()}_{op.index}_flatten")
        self.ops.append(
            Op(name, "flatten", [v.name], {}, {}, scale=v.scale, zero_point=v.zero_point, path=f"tflite:{op.index}")
        )
        return _Value(name, (int(np.prod(v.shape)),), v.scale, v.zero_point)

    def same_quantization(self, op: TFLiteOperator, a: _Value, out: TFLiteTensor) -> None:
        """Pools, padding, resizing and reshapes move int8 values without rescaling them; LiteRT does so
        even where the file gives the output another scale or zero point (it reads the values as they are).
        The import does the same, and says so."""
        scale, zp = self.per_tensor(out, op)
        if np.float32(scale) != np.float32(a.scale) or zp != a.zero_point:
            self.report.notes.append(
                f"{op.describe()}: output quantization (scale {scale:.9g}, zero point {zp}) differs from the "
                f"input's ({a.scale:.9g}, {a.zero_point}); the values pass unchanged, as in TFLite"
            )


def _window(imp: _Importer, op: TFLiteOperator, shape, kernel, stride, dilation) -> list[int]:
    """[top, bottom, left, right] for the op's padding, checked against TFLite's output size rule."""
    padding = op.options.get("padding")
    if padding not in ("SAME", "VALID"):
        raise imp.op_fail(op, "has no padding option (SAME or VALID)")
    if min(stride) < 1 or min(dilation) < 1:
        raise imp.op_fail(op, f"stride {list(stride)} and dilation {list(dilation)} must be >= 1")
    pads = []
    for n, k, s, d in zip(shape[:2], kernel, stride, dilation):
        if padding == "SAME":
            _, lo, hi = tm.same_padding(n, k, s, d)
        else:
            if (k - 1) * d + 1 > n:
                raise imp.op_fail(op, f"a {k}-wide window (dilation {d}) does not fit an input of {n} (VALID)")
            lo = hi = 0
        pads += [lo, hi]
    return pads


# ====================================================================================== layers
def _filter_scales(imp: _Importer, op: TFLiteOperator, w: TFLiteTensor, channels: int, axis: int) -> np.ndarray:
    if w.dtype != "int8":
        raise imp.op_fail(op, f"the filter {w.describe()} has type {w.dtype}; npuq imports int8 weights")
    if w.scale is None:
        raise imp.op_fail(op, f"the filter {w.describe()} has no quantization parameters")
    if w.zero_point is not None and np.any(w.zero_point != 0):
        raise imp.op_fail(
            op,
            f"the filter {w.describe()} is quantized asymmetrically (zero point "
            f"{int(w.zero_point[np.flatnonzero(w.zero_point)[0]])}); npuq's weights are symmetric (zero point 0)",
        )
    if w.scale.size not in (1, channels):
        raise imp.op_fail(op, f"the filter {w.describe()} has {w.scale.size} scales for {channels} output channels")
    if w.scale.size == channels and channels > 1 and w.axis != axis:
        raise imp.op_fail(
            op, f"the filter {w.describe()} is quantized along dimension {w.axis}; {op.opcode} needs {axis}"
        )
    if not np.all(np.isfinite(w.scale)) or np.any(w.scale <= 0):
        raise imp.op_fail(op, f"the filter {w.describe()} has a scale that is not finite and > 0")
    if int(w.data.min(initial=0)) < -127:
        raise imp.op_fail(
            op,
            f"the filter {w.describe()} holds -128; npuq's 8-bit weights are symmetric, in [-127, 127] (as "
            f"TFLite's own quantizer makes them)",
        )
    return w.scale.astype(np.float32)


def _requantization(
    imp: _Importer, op: TFLiteOperator, name: str, s_in: float, s_w: np.ndarray, s_out: float, channels: int
) -> tuple[dict, LayerReport, np.ndarray]:
    """The multiplier tensors of a layer, and how they were formed. TFLite computes each channel's real
    multiplier in double from the float32 scales, then QuantizeMultiplier: so does npuq."""
    real = tm.fc_rescale(s_in, s_w, s_out)  # double(s_in) * double(s_w[c]) / double(s_out), as TFLite
    try:
        m0, e = quantize_multipliers(real)
    except ValueError as exc:
        raise imp.op_fail(op, f"its requantization cannot be represented: {exc}") from None
    report = LayerReport(name, op.index, op.opcode, channels, "per_tensor")
    if s_w.size == 1:
        return dict(multiplier=m0, exponent=e, shift=np.zeros(channels, np.uint8)), report, real
    # per channel: exactly WESS when every channel's (M0, e) is the largest scale's M0 with e lowered by
    # a shift in [0, 15]; checked on the integers themselves, so the two forms are the same arithmetic
    top = int(np.argmax(s_w))
    shift = e[top].astype(np.int64) - e.astype(np.int64)
    exact = bool(np.all(m0 == m0[top]) and np.all((shift >= 0) & (shift <= MAX_SHIFT)) and m0[top] != 0)
    if exact:
        report.weights, report.max_shift = "wess", int(shift.max())
        quant = dict(multiplier=m0[top : top + 1], exponent=e[top : top + 1], shift=shift.astype(np.uint8))
        return quant, report, real
    report.weights = "per_channel"
    ratio = np.log2(s_w.max() / s_w.astype(np.float64))
    if np.any(ratio > MAX_SHIFT + 1e-9):
        report.why_per_channel = f"channel scales span 2^{ratio.max():.1f}, beyond a 4-bit shift"
    else:
        report.why_per_channel = "channel scales are not the layer scale times powers of two"
    return dict(multiplier=m0, exponent=e, shift=np.zeros(channels, np.uint8)), report, real


def _bias(imp: _Importer, op: TFLiteOperator, channels: int) -> np.ndarray:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return np.zeros(channels, np.int32)
    b = imp.constant(op, 2, "bias")
    if b.dtype != "int32":
        raise imp.op_fail(op, f"the bias {b.describe()} has type {b.dtype}; int8 layers have int32 biases")
    if b.data.size != channels:
        raise imp.op_fail(op, f"the bias {b.describe()} has {b.data.size} values for {channels} output channels")
    return b.data.reshape(channels).astype(np.int32)


def _layer(
    imp: _Importer,
    op: TFLiteOperator,
    x: _Value,
    weight_ohwi: np.ndarray,
    w: TFLiteTensor,
    axis: int,
    attrs: dict,
    kind: str,
) -> None:
    out = imp.output(op)
    channels = weight_ohwi.shape[0]
    s_w = _filter_scales(imp, op, w, channels, axis)
    s_out, z_out = imp.per_tensor(out, op)
    act_min, act_max = imp.activation_range(op, out)
    name_hint = f"{op.opcode.lower()}_{op.index}"
    quant, layer, real = _requantization(imp, op, name_hint, x.scale, s_w, s_out, channels)
    tensors = dict(weight=np.ascontiguousarray(weight_ohwi, dtype=np.int8), bias=_bias(imp, op, channels), **quant)
    attrs = dict(
        attrs, input_zero_point=x.zero_point, output_zero_point=z_out, act_min=act_min, act_max=act_max, weight_bits=8
    )
    tflite_fc = kind == "fully_connected" and imp.fc_rescale == "tflite"
    if tflite_fc:  # the doubles TFLite scales the accumulators by; the integer multipliers stay for the NPU
        attrs["tflite_rescale"] = [float(v) for v in real]  # = tflite_math.fc_rescale of the same scales
    shape = imp.image_shape(out, op)
    value = imp.emit(op, kind, [x.name], attrs, out, shape, tensors=tensors)
    if tflite_fc:
        imp.report.tflite_variants.append(
            f"{value.name} ({op.describe()}): TFLite's floating-point rescale (tflite_rescale); "
            f"fc_rescale='integer' gives the NPU's integer requantization instead"
        )
    layer.name = value.name
    imp.report.layers.append(layer)
    imp.bind(op, value)


def _conv(imp: _Importer, op: TFLiteOperator, depthwise: bool) -> None:
    x = imp.value(op, 0)
    if len(x.shape) != 3:
        raise imp.op_fail(op, f"takes a (H, W, C) map, got a value of shape {list(x.shape)}")
    w = imp.constant(op, 1, "filter")
    if w.data.ndim != 4:
        raise imp.op_fail(op, f"the filter {w.describe()} must have rank 4")
    c_in = x.shape[2]
    o = op.options
    if depthwise:
        if w.data.shape[0] != 1:
            raise imp.op_fail(op, f"a depthwise filter is [1, KH, KW, C_out], got {list(w.data.shape)}")
        weight = w.data[0].transpose(2, 0, 1)[..., None]  # (C_out, KH, KW, 1)
        c_out = weight.shape[0]
        mult = o.get("depth_multiplier", 1)
        if c_out % c_in or (mult not in (0, c_out // c_in)):
            raise imp.op_fail(op, f"{c_out} output channels for {c_in} input channels with depth multiplier {mult}")
        groups, axis = c_in, 3
    else:
        weight = w.data
        c_out, cin_g = weight.shape[0], weight.shape[3]
        if c_in % cin_g:
            raise imp.op_fail(op, f"the filter reads {cin_g} input channels per group; the input has {c_in}")
        groups, axis = c_in // cin_g, 0
    kernel = weight.shape[1:3]
    stride = (o.get("stride_h", 1), o.get("stride_w", 1))
    dilation = (o.get("dilation_h_factor", 1), o.get("dilation_w_factor", 1))
    pads = _window(imp, op, x.shape, kernel, stride, dilation)
    attrs = dict(stride=list(stride), padding=pads, dilation=list(dilation), groups=groups)
    _layer(imp, op, x, weight, w, axis, attrs, "conv2d")


def _fully_connected(imp: _Importer, op: TFLiteOperator) -> None:
    x = imp.flat(op, imp.value(op, 0))
    w = imp.constant(op, 1, "weights")
    if w.data.ndim != 2 or w.data.shape[1] != x.shape[0]:
        raise imp.op_fail(op, f"the weights {w.describe()} must be [C_out, {x.shape[0]}]")
    if op.options.get("weights_format", 0) != 0:
        raise imp.op_fail(op, "uses a shuffled weights format; npuq imports the default format")
    if op.options.get("asymmetric_quantize_inputs", False):
        raise imp.op_fail(op, "is a hybrid (float-activation) layer; npuq imports full-integer layers")
    _layer(imp, op, x, w.data, w, 0, {}, "fully_connected")


# ====================================================================================== other ops
def _add(imp: _Importer, op: TFLiteOperator) -> None:
    a, b = imp.value(op, 0), imp.value(op, 1)
    if a.shape != b.shape:
        raise imp.op_fail(
            op, f"adds shapes {list(a.shape)} and {list(b.shape)}; npuq's add takes equal shapes (no broadcasting)"
        )
    out = imp.output(op)
    s_out, z_out = imp.per_tensor(out, op)
    act_min, act_max = imp.activation_range(op, out)
    attrs = tm.add_params(a.scale, a.zero_point, b.scale, b.zero_point, s_out, z_out)  # left shift 20
    attrs.pop("rounding")
    attrs.update(act_min=act_min, act_max=act_max)
    imp.bind(op, imp.emit(op, "add", [a.name, b.name], attrs, out, a.shape))


def _mul(imp: _Importer, op: TFLiteOperator) -> None:
    a, b = imp.value(op, 0), imp.value(op, 1)
    if a.shape != b.shape and len(a.shape) == 3 and a.shape[:2] == (1, 1) and b.shape[:2] != (1, 1):
        a, b = b, a  # the squeeze-excitation scale goes second
    se = len(a.shape) == 3 and b.shape == (1, 1, a.shape[2])
    if a.shape != b.shape and not se:
        raise imp.op_fail(
            op,
            f"multiplies shapes {list(a.shape)} and {list(b.shape)}; npuq's mul takes equal shapes or an "
            f"(H, W, C) map times a (1, 1, C) scale",
        )
    out = imp.output(op)
    s_out, z_out = imp.per_tensor(out, op)
    act_min, act_max = imp.activation_range(op, out)
    # TFLite builds this multiplier from float32 products, not npuq.ops.mul_params' doubles
    attrs = tm.mul_params(a.scale, a.zero_point, b.scale, b.zero_point, s_out, z_out)
    attrs.pop("rounding")
    attrs.update(act_min=act_min, act_max=act_max)
    imp.bind(op, imp.emit(op, "mul", [a.name, b.name], attrs, out, a.shape))


def _pool(imp: _Importer, op: TFLiteOperator, average: bool) -> None:
    x = imp.value(op, 0)
    if len(x.shape) != 3:
        raise imp.op_fail(op, f"pools a (H, W, C) map, got shape {list(x.shape)}")
    out = imp.output(op)
    imp.same_quantization(op, x, out)
    o = op.options
    kernel = (o.get("filter_height", 0), o.get("filter_width", 0))
    stride = (o.get("stride_h", 0), o.get("stride_w", 0))
    if min(kernel) < 1:
        raise imp.op_fail(op, f"has filter size {list(kernel)}")
    pads = _window(imp, op, x.shape, kernel, stride, (1, 1))
    act_min, act_max = imp.activation_range(op, out)
    shape = imp.image_shape(out, op)
    if average:
        attrs = dict(
            kernel=list(kernel),
            stride=list(stride),
            padding=pads,
            count_include_pad=False,
            input_zero_point=x.zero_point,
            act_min=act_min,
            act_max=act_max,
        )
        imp.bind(op, imp.emit(op, "avg_pool2d", [x.name], attrs, out, shape))
        return
    if (act_min, act_max) != (-128, 127):
        raise imp.op_fail(op, "a max pool with a fused activation clamp is not supported")
    attrs = dict(kernel=list(kernel), stride=list(stride), padding=pads, ceil_mode=False)
    imp.bind(op, imp.emit(op, "max_pool2d", [x.name], attrs, out, shape))


def _mean(imp: _Importer, op: TFLiteOperator) -> None:
    from npuq.ops import mean_params

    x = imp.value(op, 0)
    axes = imp.constant(op, 1, "axes").data.reshape(-1).astype(np.int64)
    if len(x.shape) != 3 or sorted(int(a) % 4 for a in axes) != [1, 2]:
        raise imp.op_fail(
            op, f"averages axes {axes.tolist()} of shape {list(x.shape)}; npuq's mean averages H and W of [N, H, W, C]"
        )
    out = imp.output(op)
    s_out, z_out = imp.per_tensor(out, op)
    p = mean_params(x.scale, s_out, x.shape[0] * x.shape[1], tflite_rounding=True)
    attrs = dict(
        input_zero_point=x.zero_point, output_zero_point=z_out, act_min=-128, act_max=127, tflite_rounding=True, **p
    )
    keep = op.options.get("keep_dims", False)
    value = imp.emit(op, "mean", [x.name], attrs, out, (1, 1, x.shape[2]))
    imp.report.tflite_variants.append(
        f"{value.name} ({op.describe()}): mean with TFLite's two roundings (tflite_rounding)"
    )
    if not keep:
        value = imp.flat(op, value)
    imp.bind(op, value)


def _concat(imp: _Importer, op: TFLiteOperator) -> None:
    parts = [imp.value(op, i) for i in range(len(op.inputs))]
    rank = len(parts[0].shape)
    axis = op.options.get("axis", 0)
    last = 3 if rank == 3 else 1
    if axis not in (last, -1):
        raise imp.op_fail(op, f"concatenates along axis {axis}; npuq concatenates channels (the last axis)")
    if any(len(p.shape) != rank or p.shape[:-1] != parts[0].shape[:-1] for p in parts):
        raise imp.op_fail(op, f"concatenates shapes {[list(p.shape) for p in parts]} that differ outside the channels")
    out = imp.output(op)
    s_out, z_out = imp.per_tensor(out, op)
    if imp.activation_range(op, out) != (-128, 127):
        raise imp.op_fail(op, "a concatenation with a fused activation clamp is not supported")
    try:  # TFLite's int8 concatenation copies: every input has the output's scale and zero point
        attrs = tm.concat_params([q.scale for q in parts], [q.zero_point for q in parts], s_out, z_out)
    except ValueError as exc:
        raise imp.op_fail(op, str(exc)) from None
    shape = (*parts[0].shape[:-1], sum(q.shape[-1] for q in parts))
    imp.bind(op, imp.emit(op, "concat", [q.name for q in parts], attrs, out, shape))


def _reshape(imp: _Importer, op: TFLiteOperator) -> None:
    x = imp.value(op, 0)
    out = imp.output(op)
    imp.same_quantization(op, x, out)
    want = imp.image_shape(out, op) if len(out.shape) in (2, 4) else None
    if want is not None and want == x.shape:
        imp.bind(op, x)  # no data movement: the same value
        return
    if want is not None and len(want) == 1 and want[0] == int(np.prod(x.shape)):
        imp.bind(op, imp.flat(op, x))
        return
    raise imp.op_fail(
        op, f"reshapes {list(x.shape)} to {list(out.shape)}; npuq imports reshapes that flatten a map to [N, K]"
    )


def _table(imp: _Importer, op: TFLiteOperator) -> None:
    from npuq.interop.tflite_math import activation_table

    x = imp.value(op, 0)
    out = imp.output(op)
    if out.dtype != "int8":
        raise imp.op_fail(op, f"outputs {out.describe()}; npuq imports int8 outputs")
    s_out, z_out = imp.per_tensor(out, op)
    options = {k: v for k, v in op.options.items() if k in ("alpha", "approximate")}
    try:
        table = activation_table(op.opcode, x.scale, x.zero_point, s_out, z_out, **options)
    except ValueError as exc:
        raise imp.op_fail(op, str(exc)) from None
    function = "gelu_tanh" if op.opcode == "GELU" and options.get("approximate") else TABLE_OPS[op.opcode]
    value = imp.emit(op, "lut", [x.name], dict(function=function), out, x.shape, tensors=dict(table=table))
    imp.bind(op, value)


def _pad(imp: _Importer, op: TFLiteOperator) -> None:
    x = imp.value(op, 0)
    out = imp.output(op)
    imp.same_quantization(op, x, out)
    pads = imp.constant(op, 1, "paddings").data.astype(np.int64)
    if len(x.shape) != 3 or pads.shape != (4, 2) or np.any(pads[0] != 0) or np.any(pads[3] != 0) or np.any(pads < 0):
        raise imp.op_fail(op, f"pads {pads.tolist()}; npuq pads H and W of [N, H, W, C] (non-negative)")
    value = x.zero_point
    if op.opcode == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        c = imp.constant(op, 2, "pad value", "int8")
        value = int(c.data.reshape(-1)[0])
    attrs = dict(padding=[int(v) for v in pads[1:3].reshape(-1)], value=value)
    imp.bind(op, imp.emit(op, "pad", [x.name], attrs, out, imp.image_shape(out, op)))


def _resize_nearest(imp: _Importer, op: TFLiteOperator) -> None:
    x = imp.value(op, 0)
    out = imp.output(op)
    imp.same_quantization(op, x, out)
    if op.options.get("align_corners", False):
        raise imp.op_fail(op, "align_corners=True is not supported (npuq upsamples by integer factors)")
    shape = imp.image_shape(out, op)
    if len(x.shape) != 3 or shape[0] % x.shape[0] or shape[1] % x.shape[1]:
        raise imp.op_fail(op, f"resizes {list(x.shape)} to {list(shape)}; npuq upsamples by integer factors")
    # with an integer factor f, half-pixel centres pick floor((i + 0.5) / f) = floor(i / f): the same pixels
    attrs = dict(scale=[shape[0] // x.shape[0], shape[1] // x.shape[1]], mode="nearest", zero_point=x.zero_point)
    imp.bind(op, imp.emit(op, "upsample", [x.name], attrs, out, shape))


_CONVERTERS = {
    "CONV_2D": lambda imp, op: _conv(imp, op, False),
    "DEPTHWISE_CONV_2D": lambda imp, op: _conv(imp, op, True),
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "MUL": _mul,
    "AVERAGE_POOL_2D": lambda imp, op: _pool(imp, op, True),
    "MAX_POOL_2D": lambda imp, op: _pool(imp, op, False),
    "MEAN": _mean,
    "CONCATENATION": _concat,
    "RESHAPE": _reshape,
    "SQUEEZE": _reshape,
    "PAD": _pad,
    "PADV2": _pad,
    "RESIZE_NEAREST_NEIGHBOR": _resize_nearest,
    **{k: _table for k in TABLE_OPS},
}
#: the TFLite operators npuq imports
SUPPORTED_OPCODES = tuple(sorted(_CONVERTERS))


def write_report(report: ImportReport, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
