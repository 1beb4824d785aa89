"""The NPU program: a quantized network as a list of integer ops with all their integer parameters.

A program is what the NPU (and :class:`npuq.Emulator`) runs. It holds no float arithmetic except the
quantization of the network input (``docs/quantization.md`` 5) and the scales that dequantize outputs
for people to read. Format and semantics: ``docs/program.md``.

On disk a program is one safetensors file (``.npuq``): the integer tensors, and the graph as JSON in
the header's ``__metadata__`` under the key ``"npuq.program"``. Loading executes no code (no pickle)
and validates everything (:func:`load_program`); every problem is a :class:`ProgramError` that names
the file, the op and the field.

Only numpy is needed here: the hardware team can read, check and run programs without torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from npuq._C import ARITHMETIC_VERSION  # the version of docs/arithmetic.md the ops follow

FORMAT = "npuq-program"
FORMAT_VERSION = 1
METADATA_KEY = "npuq.program"
DIGEST_KEY = "npuq.sha256"  # SHA-256 of the graph and the tensors (content_digest), checked on load

OP_KINDS = ("conv2d", "fully_connected", "add", "avg_pool2d", "global_avg_pool", "max_pool2d", "flatten")
ROUNDING_MODES = ("double", "single")
OVERFLOW_POLICIES = ("raise", "saturate", "wrap")

# the integer tensors of each op kind: field -> dtype (shapes are checked per kind below)
LAYER_TENSORS = {"weight": np.int8, "bias": np.int32, "multiplier": np.int32, "exponent": np.int32,
                 "shift": np.uint8}
OP_TENSORS = {"conv2d": LAYER_TENSORS, "fully_connected": LAYER_TENSORS}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_SAFETENSORS_DTYPES = {"I8": np.int8, "U8": np.uint8, "I32": np.int32}
_DTYPE_CODES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class ProgramError(ValueError):
    """A program (in memory or in a file) is malformed; the message names the file, op and field."""


@dataclass
class Op:
    """One NPU op. ``attrs`` holds its integer / string parameters (JSON), ``tensors`` its arrays.

    ``scale`` / ``zero_point`` describe the real value of the op's int8 output (``scale * (q - zp)``);
    the NPU never uses the scale, the emulator uses it to dequantize.
    """

    name: str
    kind: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    scale: float = 1.0
    zero_point: int = 0
    path: str = ""  # the torch module this op came from, for people

    def describe(self) -> str:
        return f"{self.name} ({self.kind}{', ' + self.path if self.path and self.path != self.name else ''})"


@dataclass
class InputSpec:
    """The network input: int8 activations of ``shape`` (per image, HWC) quantized from float with
    ``scale`` / ``zero_point`` (``scale`` is a float32 value; docs/quantization.md 5)."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int


@dataclass
class Program:
    """A compiled network. Build one with :func:`npuq.compile`, read one with :func:`load_program`."""

    input: InputSpec
    ops: list[Op]
    output: str
    rounding: str = "double"
    overflow: str = "raise"
    model: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # free-form provenance (quantization config, ...)
    arithmetic_version: int = ARITHMETIC_VERSION
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------------------ lookups
    def op(self, name: str) -> Op:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(f"the program has no op '{name}'; ops: {', '.join(o.name for o in self.ops)}")

    def layers(self) -> list[Op]:
        return [o for o in self.ops if o.kind in ("conv2d", "fully_connected")]

    @property
    def output_op(self) -> Op:
        return self.op(self.output)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image shape of every value (the input and each op's output): (H, W, C) or (K,)."""
        return validate(self)

    def tensor_items(self):
        """``(key, array)`` of every tensor, keys ``"<op>.<field>"``, in op order."""
        for o in self.ops:
            for f in sorted(o.tensors):
                yield f"{o.name}.{f}", o.tensors[f]

    # ------------------------------------------------------------------------------ files
    def to_json(self) -> dict:
        """The graph (everything but the tensors) as a JSON-ready dict."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "arithmetic_version": self.arithmetic_version,
            "model": self.model,
            "rounding": self.rounding,
            "overflow": self.overflow,
            "input": {"name": self.input.name, "shape": list(self.input.shape), "layout": "HWC",
                      "scale": float(self.input.scale), "zero_point": int(self.input.zero_point)},
            "output": self.output,
            "ops": [{"name": o.name, "kind": o.kind, "inputs": list(o.inputs), "attrs": _jsonable(o.attrs),
                     "tensors": sorted(o.tensors), "scale": float(o.scale), "zero_point": int(o.zero_point),
                     "path": o.path} for o in self.ops],
            "info": _jsonable(self.info),
        }

    def to_bytes(self) -> bytes:
        """The program file's bytes (safetensors; deterministic: the same program gives the same bytes)."""
        validate(self)
        graph = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        tensors = dict(self.tensor_items())
        return _safetensors_bytes(tensors, {METADATA_KEY: graph, DIGEST_KEY: content_digest(graph, tensors)})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the program to ``path`` (suffix ``.npuq`` by convention). Returns the path."""
        path = Path(path)
        data = self.to_bytes()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def digest(self) -> str:
        """SHA-256 of the program's file bytes: identifies a program in vector manifests and reports."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def copy(self) -> "Program":
        return copy.deepcopy(self)

    def summary(self) -> str:
        shapes = self.shapes()
        lines = [f"npuq program '{self.model}': {len(self.ops)} ops, input {self.input.name} "
                 f"{shapes[self.input.name]} int8 (scale {self.input.scale:.6g}, zero point {self.input.zero_point}), "
                 f"rounding={self.rounding}, overflow={self.overflow}"]
        for o in self.ops:
            lines.append(f"  {o.name:<32} {o.kind:<16} {'x'.join(map(str, shapes[o.name])):<12} "
                         f"<- {', '.join(o.inputs)}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"Program(model={self.model!r}, ops={len(self.ops)}, input={self.input.shape}, "
                f"output={self.output!r}, rounding={self.rounding!r})")


# ====================================================================================== validation
def _fail(where: str, msg: str):
    raise ProgramError(f"{where}: {msg}")


def _int_field(attrs: dict, key: str, where: str, lo: int, hi: int) -> int:
    if key not in attrs:
        _fail(where, f"missing attribute '{key}'")
    v = attrs[key]
    if isinstance(v, bool) or not isinstance(v, Integral):
        _fail(where, f"attribute '{key}' must be an integer, got {type(v).__name__} {v!r}")
    if not lo <= v <= hi:
        _fail(where, f"attribute '{key}' = {v} is out of range [{lo}, {hi}]")
    return int(v)


def _int_list(attrs: dict, key: str, where: str, n: int, lo: int, hi: int) -> tuple[int, ...]:
    if key not in attrs:
        _fail(where, f"missing attribute '{key}'")
    v = attrs[key]
    if not isinstance(v, (list, tuple)) or len(v) != n:
        _fail(where, f"attribute '{key}' must be a list of {n} integers, got {v!r}")
    out = []
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, Integral):
            _fail(where, f"attribute '{key}'[{i}] must be an integer, got {x!r}")
        if not lo <= x <= hi:
            _fail(where, f"attribute '{key}'[{i}] = {x} is out of range [{lo}, {hi}]")
        out.append(int(x))
    return tuple(out)


def _clamp(attrs: dict, where: str) -> None:
    lo = _int_field(attrs, "act_min", where, -128, 127)
    hi = _int_field(attrs, "act_max", where, -128, 127)
    if lo > hi:
        _fail(where, f"act_min ({lo}) > act_max ({hi})")


def _check_keys(attrs: dict, allowed: set[str], where: str) -> None:
    if not isinstance(attrs, dict):
        _fail(where, f"attrs must be an object, got {type(attrs).__name__}")
    unknown = set(attrs) - allowed
    if unknown:
        _fail(where, f"unknown attribute(s) {sorted(unknown)}; this op kind has {sorted(allowed)}")


def _tensor(op: Op, key: str, where: str, ndim: int) -> np.ndarray:
    if key not in op.tensors:
        _fail(where, f"missing tensor '{op.name}.{key}'")
    t = op.tensors[key]
    want = np.dtype(LAYER_TENSORS[key])
    if not isinstance(t, np.ndarray):
        _fail(where, f"tensor '{op.name}.{key}' must be a numpy array, got {type(t).__name__}")
    if t.dtype != want:
        _fail(where, f"tensor '{op.name}.{key}' has dtype {t.dtype}, expected {want}")
    if t.ndim != ndim:
        _fail(where, f"tensor '{op.name}.{key}' has shape {t.shape}, expected {ndim} dimension(s)")
    return t


def _first_bad(mask: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(mask)[0])
    return f"{int(mask.sum())} value(s), first at index {idx if len(idx) > 1 else idx[0]}"


_LAYER_ATTRS = {"input_zero_point", "output_zero_point", "act_min", "act_max", "weight_bits"}
_CONV_ATTRS = _LAYER_ATTRS | {"stride", "padding", "dilation", "groups"}
_ADD_ATTRS = {"a_zero_point", "a_multiplier", "a_exponent", "b_zero_point", "b_multiplier", "b_exponent",
              "output_zero_point", "output_multiplier", "output_exponent", "left_shift", "act_min", "act_max"}
_POOL_ATTRS = {"kernel", "stride", "padding", "count_include_pad", "input_zero_point", "act_min", "act_max"}
_ALLOWED_ATTRS = {"conv2d": _CONV_ATTRS, "fully_connected": _LAYER_ATTRS, "add": _ADD_ATTRS,
                  "avg_pool2d": _POOL_ATTRS, "global_avg_pool": {"act_min", "act_max"},
                  "max_pool2d": {"kernel", "stride", "padding"}, "flatten": set()}


def _check_requant(op: Op, where: str, c_out: int) -> None:
    m = _tensor(op, "multiplier", where, 1)
    e = _tensor(op, "exponent", where, 1)
    s = _tensor(op, "shift", where, 1)
    if m.shape[0] not in (1, c_out):
        _fail(where, f"tensor '{op.name}.multiplier' has {m.shape[0]} values; expected 1 (per layer) or {c_out} "
                     f"(per channel)")
    if e.shape != m.shape:
        _fail(where, f"tensor '{op.name}.exponent' has shape {e.shape}, expected {m.shape} like the multiplier")
    if s.shape != (c_out,):
        _fail(where, f"tensor '{op.name}.shift' has shape {s.shape}, expected ({c_out},)")
    bad = (m != 0) & (m < 2**30)
    if bad.any():
        _fail(where, f"tensor '{op.name}.multiplier': {_first_bad(bad)} not a Q31 mantissa (0 or in [2^30, 2^31-1])")
    bad = (e < -31) | (e > 30)
    if bad.any():
        _fail(where, f"tensor '{op.name}.exponent': {_first_bad(bad)} outside [-31, 30]")
    bad = s > 15
    if bad.any():
        _fail(where, f"tensor '{op.name}.shift': {_first_bad(bad)} above 15 (shifts are 4-bit)")


def _check_layer(op: Op, where: str, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    a = op.attrs
    _check_keys(a, _ALLOWED_ATTRS[op.kind], where)
    _int_field(a, "input_zero_point", where, -128, 127)
    _int_field(a, "output_zero_point", where, -128, 127)
    _clamp(a, where)
    bits = _int_field(a, "weight_bits", where, 2, 8)
    conv = op.kind == "conv2d"
    w = _tensor(op, "weight", where, 4 if conv else 2)
    c_out = w.shape[0]
    if w.size == 0:
        _fail(where, f"tensor '{op.name}.weight' is empty (shape {w.shape})")
    limit = 2 ** (bits - 1) - 1
    bad = (w < -limit) | (w > limit)
    if bad.any():
        _fail(where, f"tensor '{op.name}.weight': {_first_bad(bad)} outside [-{limit}, {limit}] "
                     f"(weight_bits = {bits})")
    b = _tensor(op, "bias", where, 1)
    if b.shape != (c_out,):
        _fail(where, f"tensor '{op.name}.bias' has shape {b.shape}, expected ({c_out},)")
    _check_requant(op, where, c_out)
    extra = set(op.tensors) - set(LAYER_TENSORS)
    if extra:
        _fail(where, f"unknown tensor(s) {sorted(extra)}")
    if not conv:
        if len(in_shape) != 1:
            _fail(where, f"fully_connected needs a flat input (K,), but '{op.inputs[0]}' has shape {in_shape}; "
                         f"insert a flatten op")
        if w.shape[1] != in_shape[0]:
            _fail(where, f"weight has {w.shape[1]} input features but '{op.inputs[0]}' has {in_shape[0]}")
        return (c_out,)
    if len(in_shape) != 3:
        _fail(where, f"conv2d needs an (H, W, C) input, but '{op.inputs[0]}' has shape {in_shape}")
    stride = _int_list(a, "stride", where, 2, 1, 1 << 16)
    pad = _int_list(a, "padding", where, 4, 0, 1 << 16)
    dil = _int_list(a, "dilation", where, 2, 1, 1 << 16)
    groups = _int_field(a, "groups", where, 1, 1 << 20)
    if c_out % groups:
        _fail(where, f"groups ({groups}) does not divide the {c_out} output channels")
    extent = (dil[0] * (w.shape[1] - 1) + 1, dil[1] * (w.shape[2] - 1) + 1)
    for side, p_, ext in zip(("top", "bottom", "left", "right"), pad, (extent[0], extent[0], extent[1], extent[1])):
        if p_ >= ext:  # a window of padding alone (docs/arithmetic.md 4)
            _fail(where, f"padding {side} = {p_} must be smaller than the dilated kernel extent {ext}")
    if w.shape[3] * groups != in_shape[2]:
        _fail(where, f"weight {w.shape} with groups={groups} expects {w.shape[3] * groups} input channels, "
                     f"but '{op.inputs[0]}' has {in_shape[2]}")
    oh = _out_size(in_shape[0], w.shape[1], stride[0], dil[0], pad[0], pad[1])
    ow = _out_size(in_shape[1], w.shape[2], stride[1], dil[1], pad[2], pad[3])
    if oh < 1 or ow < 1:
        _fail(where, f"kernel {w.shape[1]}x{w.shape[2]} (dilation {dil}, padding {pad}) does not fit the "
                     f"{in_shape[0]}x{in_shape[1]} input")
    return (oh, ow, c_out)


def _out_size(n: int, k: int, stride: int, dilation: int, lo: int, hi: int) -> int:
    return (n + lo + hi - dilation * (k - 1) - 1) // stride + 1


def _check_op(op: Op, where: str, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    k, a = op.kind, op.attrs
    n_inputs = 2 if k == "add" else 1
    if len(op.inputs) != n_inputs:
        _fail(where, f"{k} takes {n_inputs} input(s), got {len(op.inputs)}")
    if k in ("conv2d", "fully_connected"):
        return _check_layer(op, where, in_shapes[0])
    _check_keys(a, _ALLOWED_ATTRS[k], where)
    if op.tensors:
        _fail(where, f"{k} has no tensors, got {sorted(op.tensors)}")
    x = in_shapes[0]
    if k == "add":
        if in_shapes[0] != in_shapes[1]:
            _fail(where, f"inputs '{op.inputs[0]}' {in_shapes[0]} and '{op.inputs[1]}' {in_shapes[1]} differ in shape")
        for side in ("a", "b", "output"):
            _int_field(a, f"{side}_zero_point", where, -128, 127)
            m = _int_field(a, f"{side}_multiplier", where, 0, _INT32_MAX)
            if m and m < 2**30:
                _fail(where, f"attribute '{side}_multiplier' = {m} is not a Q31 mantissa (0 or in [2^30, 2^31-1])")
            _int_field(a, f"{side}_exponent", where, -31, 30 if side == "output" else 0)
        _int_field(a, "left_shift", where, 0, 22)
        _clamp(a, where)
        return x
    if k == "flatten":
        return (int(np.prod(x)),)
    if len(x) != 3:
        _fail(where, f"{k} needs an (H, W, C) input, but '{op.inputs[0]}' has shape {x}")
    if k == "global_avg_pool":
        _clamp(a, where)
        return (1, 1, x[2])
    kernel = _int_list(a, "kernel", where, 2, 1, 1 << 16)
    stride = _int_list(a, "stride", where, 2, 1, 1 << 16)
    pad = _int_list(a, "padding", where, 4, 0, 1 << 16)
    if any(p > kk // 2 for p, kk in zip(pad, (kernel[0], kernel[0], kernel[1], kernel[1]))):
        _fail(where, f"padding {pad} exceeds half the kernel {kernel} (a window could lie wholly in the padding)")
    if k == "avg_pool2d":
        _int_field(a, "input_zero_point", where, -128, 127)
        if not isinstance(a.get("count_include_pad"), bool):
            _fail(where, f"attribute 'count_include_pad' must be true or false, got {a.get('count_include_pad')!r}")
        _clamp(a, where)
    oh = _out_size(x[0], kernel[0], stride[0], 1, pad[0], pad[1])
    ow = _out_size(x[1], kernel[1], stride[1], 1, pad[2], pad[3])
    if oh < 1 or ow < 1:
        _fail(where, f"kernel {kernel} does not fit the {x[0]}x{x[1]} input")
    return (oh, ow, x[2])


def validate(program: Program, source: str = "program") -> dict[str, tuple[int, ...]]:
    """Check every field of ``program``; return the per-image shape of every value.

    Raises :class:`ProgramError` naming ``source`` (the file), the op and the field at the first problem.
    """
    p = program
    if p.format_version != FORMAT_VERSION:
        _fail(source, f"format_version {p.format_version!r} is not supported (this npuq reads version "
                      f"{FORMAT_VERSION}); re-compile the program with this npuq")
    if p.arithmetic_version != ARITHMETIC_VERSION:
        _fail(source, f"arithmetic_version {p.arithmetic_version!r} differs from this npuq's "
                      f"({ARITHMETIC_VERSION}); its outputs would not be bit-exact here")
    if p.rounding not in ROUNDING_MODES:
        _fail(source, f"rounding must be one of {ROUNDING_MODES}, got {p.rounding!r}")
    if p.overflow not in OVERFLOW_POLICIES:
        _fail(source, f"overflow must be one of {OVERFLOW_POLICIES}, got {p.overflow!r}")
    inp = p.input
    if not isinstance(inp.name, str) or not _NAME.match(inp.name):
        _fail(f"{source}: input", f"name {inp.name!r} is not a valid name ({_NAME.pattern})")
    shape = tuple(inp.shape) if isinstance(inp.shape, (list, tuple)) else None
    if shape is None or len(shape) not in (1, 3) or any(isinstance(d, bool) or not isinstance(d, Integral)
                                                         or not 1 <= d <= 1 << 20 for d in shape):
        _fail(f"{source}: input", f"shape must be (H, W, C) or (K,) of positive integers, got {inp.shape!r}")
    _check_scale(inp.scale, f"{source}: input")
    if float(np.float32(inp.scale)) != inp.scale:
        _fail(f"{source}: input", f"scale {inp.scale!r} is not a float32 value (the input is quantized in float32)")
    _check_zp(inp.zero_point, f"{source}: input")
    shapes: dict[str, tuple[int, ...]] = {inp.name: tuple(int(d) for d in shape)}
    if not p.ops:
        _fail(source, "the program has no ops")
    for i, op in enumerate(p.ops):
        where = f"{source}: op {i}"
        if not isinstance(op.name, str) or not _NAME.match(op.name):
            _fail(where, f"name {op.name!r} is not a valid name ({_NAME.pattern})")
        where = f"{source}: op {i} '{op.name}'"
        if op.name in shapes:
            _fail(where, "the name is used twice")
        if op.kind not in OP_KINDS:
            _fail(where, f"unknown kind {op.kind!r}; known: {', '.join(OP_KINDS)}")
        if not isinstance(op.inputs, (list, tuple)) or not all(isinstance(s, str) for s in op.inputs):
            _fail(where, f"inputs must be a list of names, got {op.inputs!r}")
        for s in op.inputs:
            if s not in shapes:
                _fail(where, f"input '{s}' is not the program input or an earlier op's output")
        if not isinstance(op.tensors, dict):
            _fail(where, "tensors must be a dict")
        _check_scale(op.scale, where)
        _check_zp(op.zero_point, where)
        shapes[op.name] = _check_op(op, where, [shapes[s] for s in op.inputs])
    if p.output not in shapes or p.output == inp.name:
        _fail(source, f"output {p.output!r} is not the name of an op")
    return shapes


def _check_scale(v, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v <= 0:
        _fail(where, f"scale must be a finite number > 0, got {v!r}")


def _check_zp(v, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, Integral) or not -128 <= v <= 127:
        _fail(where, f"zero_point must be an integer in [-128, 127], got {v!r}")


# ====================================================================================== file I/O
def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def content_digest(graph_text: str, tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over the graph's JSON text and every tensor (name, dtype, shape, little-endian bytes) in
    name order. Independent of how a writer lays the tensors out, so any safetensors writer can store a
    program; a flipped bit anywhere in the graph or the data changes it."""
    h = hashlib.sha256(graph_text.encode("utf-8"))
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        h.update(f"\n{key}:{_DTYPE_CODES.get(arr.dtype, arr.dtype.str)}:{list(arr.shape)}\n".encode())
        h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def _safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialize in the safetensors layout (8-byte little-endian header size, JSON header, raw data).

    Written here rather than with the safetensors package so the bytes are fixed by this code alone
    (tensors in sorted-name order, header padded to 8 bytes); the package reads the files.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        if arr.dtype not in _DTYPE_CODES:
            raise ProgramError(f"tensor '{key}': dtype {arr.dtype} cannot be stored (int8, uint8, int32 only)")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": _DTYPE_CODES[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _parse_safetensors(data: bytes, source: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    if len(data) < 8:
        _fail(source, f"the file is {len(data)} bytes long: too short to be a program (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        _fail(source, f"header size field says {n} bytes but the file has {len(data) - 8} after it "
                      f"(truncated or not a program file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, integers beyond Python's digit limit
        _fail(source, f"the header is not valid JSON ({exc}); the file is corrupted or not a program")
    if not isinstance(header, dict):
        _fail(source, "the header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        _fail(source, "the header has no '__metadata__' string map: not an npuq program (plain safetensors?)")
    body = data[8 + n:]
    tensors, spans = {}, []
    for key, entry in header.items():
        where = f"{source}: tensor '{key}'"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            _fail(where, "entry must have exactly 'dtype', 'shape' and 'data_offsets'")
        dt = _SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dt is None:
            _fail(where, f"dtype {entry['dtype']!r} is not one a program uses ({', '.join(_SAFETENSORS_DTYPES)})")
        shape, offs = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**40 for d in shape) or len(shape) > 8:
            _fail(where, f"shape {shape!r} is not a list of non-negative integers")
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(d) is int for d in offs):
            _fail(where, f"data_offsets {offs!r} is not a pair of integers")
        begin, end = offs
        nbytes = math.prod(shape) * np.dtype(dt).itemsize
        if not 0 <= begin <= end <= len(body):
            _fail(where, f"data_offsets {offs} fall outside the {len(body)} data bytes (truncated file?)")
        if end - begin != nbytes:
            _fail(where, f"data_offsets {offs} hold {end - begin} bytes but shape {shape} x {np.dtype(dt)} needs "
                         f"{nbytes}")
        spans.append((begin, end, key))
        tensors[key] = np.frombuffer(body, dtype=np.dtype(dt).newbyteorder("<"), count=math.prod(shape),
                                     offset=begin).reshape(shape).astype(dt)
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            _fail(f"{source}: tensor '{key}'", f"data starts at byte {begin}, expected {pos} (overlapping "
                                               f"or gapped tensor data)")
        pos = end
    if pos != len(body):
        _fail(source, f"{len(body) - pos} bytes after the last tensor's data (corrupted or appended file)")
    return meta, tensors


_MAX_INFO_NESTING = 64


def _nesting(obj) -> int:
    """Depth of nested lists / dicts, without recursion (a hostile file can nest thousands deep)."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (list, dict)):
            d += 1
            deepest = max(deepest, d)
            if deepest > _MAX_INFO_NESTING:
                return deepest
            stack.extend((v, d) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def _get(d: dict, key: str, kind, where: str):
    if key not in d:
        _fail(where, f"missing field '{key}'")
    v = d[key]
    if kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok:
            try:
                v = float(v)
            except OverflowError:
                _fail(where, f"field '{key}' = {str(v)[:20]}... does not fit a float")
    else:
        ok = isinstance(v, kind)
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        _fail(where, f"field '{key}' must be {name}, got {type(v).__name__} {v!r:.80}")
    return v


def program_from_json(graph: dict, tensors: dict[str, np.ndarray], source: str = "program") -> Program:
    """Build (and validate) a program from its JSON graph and its tensors by ``"<op>.<field>"`` key."""
    if not isinstance(graph, dict):
        _fail(source, "the graph is not a JSON object")
    fmt = graph.get("format")
    if fmt != FORMAT:
        _fail(source, f"field 'format' is {fmt!r}, expected {FORMAT!r}: not an npuq program")
    version = _get(graph, "format_version", int, source)
    if version != FORMAT_VERSION:
        _fail(source, f"format_version {version} is not supported (this npuq reads version {FORMAT_VERSION}); "
                      f"re-compile the program with this npuq")
    known = {"format", "format_version", "arithmetic_version", "model", "rounding", "overflow", "input", "output",
             "ops", "info"}
    unknown = set(graph) - known
    if unknown:
        _fail(source, f"unknown field(s) {sorted(unknown)}")
    inp = _get(graph, "input", dict, source)
    w_in = f"{source}: input"
    layout = _get(inp, "layout", str, w_in)
    if layout != "HWC":
        _fail(w_in, f"layout {layout!r} is not supported (HWC)")
    spec = InputSpec(name=_get(inp, "name", str, w_in), shape=tuple(_get(inp, "shape", list, w_in)),
                     scale=float(_get(inp, "scale", float, w_in)), zero_point=_get(inp, "zero_point", int, w_in))
    ops, used = [], set()
    for i, o in enumerate(_get(graph, "ops", list, source)):
        where = f"{source}: op {i}"
        if not isinstance(o, dict):
            _fail(where, "is not a JSON object")
        extra = set(o) - {"name", "kind", "inputs", "attrs", "tensors", "scale", "zero_point", "path"}
        if extra:
            _fail(where, f"unknown field(s) {sorted(extra)}")
        name = _get(o, "name", str, where)
        where = f"{source}: op {i} '{name}'"
        fields = _get(o, "tensors", list, where)
        op_tensors = {}
        for f in fields:
            if not isinstance(f, str):
                _fail(where, f"tensor field names must be strings, got {f!r}")
            key = f"{name}.{f}"
            if key not in tensors:
                _fail(where, f"tensor '{key}' is missing from the file")
            op_tensors[f] = tensors[key]
            used.add(key)
        ops.append(Op(name=name, kind=_get(o, "kind", str, where), inputs=list(_get(o, "inputs", list, where)),
                      attrs=dict(_get(o, "attrs", dict, where)), tensors=op_tensors,
                      scale=float(_get(o, "scale", float, where)), zero_point=_get(o, "zero_point", int, where),
                      path=_get(o, "path", str, where)))
    stray = set(tensors) - used
    if stray:
        _fail(source, f"tensor(s) {sorted(stray)[:5]} belong to no op")
    info = graph.get("info", {})
    if not isinstance(info, dict):
        _fail(source, "field 'info' must be an object")
    if _nesting(info) > _MAX_INFO_NESTING:
        _fail(source, f"field 'info' is nested deeper than {_MAX_INFO_NESTING} levels")
    try:  # what is loaded must save again: no NaN / infinity
        json.dumps(info, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        _fail(source, f"field 'info' cannot be written back as JSON ({str(exc)[:80]})")
    program = Program(input=spec, ops=ops, output=_get(graph, "output", str, source),
                      rounding=_get(graph, "rounding", str, source), overflow=_get(graph, "overflow", str, source),
                      model=_get(graph, "model", str, source), info=info,
                      arithmetic_version=_get(graph, "arithmetic_version", int, source), format_version=version)
    validate(program, source)
    return program


def program_from_bytes(data: bytes, source: str = "program", *, check_digest: bool = True) -> Program:
    """Parse and validate a program file's bytes (see :func:`load_program`)."""
    meta, tensors = _parse_safetensors(bytes(data), source)
    text = meta.get(METADATA_KEY)
    if text is None:
        _fail(source, f"the header metadata has no '{METADATA_KEY}' entry: a safetensors file, but not an npuq "
                      f"program")
    try:
        graph = json.loads(text)
    except (ValueError, RecursionError) as exc:
        _fail(source, f"the '{METADATA_KEY}' graph is not valid JSON ({exc})")
    program = program_from_json(graph, tensors, source)
    if check_digest:  # after validation, so that a hand edit is reported by the field it broke
        stored = meta.get(DIGEST_KEY)
        if stored is None:
            _fail(source, f"the header metadata has no '{DIGEST_KEY}' checksum (load with check_digest=False to "
                          f"accept a program written without one)")
        if stored != content_digest(text, tensors):
            _fail(source, f"checksum mismatch: the graph or the tensor data differ from what was written "
                          f"('{DIGEST_KEY}' {stored[:16]}...); the file is corrupted or was edited (load with "
                          f"check_digest=False to accept an edited program)")
    return program


def load_program(path: str | os.PathLike, *, check_digest: bool = True) -> Program:
    """Read and validate a program file. Raises :class:`ProgramError` naming the file and the field.

    ``check_digest``: compare the stored SHA-256 of the graph and tensors (catches corruption that still
    parses); turn it off to load a program that was edited on purpose (it is validated all the same).
    """
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise ProgramError(f"{path}: not a regular file (a pipe or device?); a program is a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProgramError(f"{path}: no such program file") from None
    except IsADirectoryError:
        raise ProgramError(f"{path}: is a directory, not a program file") from None
    except OSError as exc:
        raise ProgramError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return program_from_bytes(data, str(path), check_digest=check_digest)


__all__ = ["ARITHMETIC_VERSION", "FORMAT_VERSION", "InputSpec", "Op", "OP_KINDS", "Program", "ProgramError",
           "load_program", "program_from_bytes", "program_from_json", "validate"]
