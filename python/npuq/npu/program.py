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
import stat
import struct
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from npuq._C import ARITHMETIC_VERSION  # the version of docs/arithmetic.md the ops follow
from npuq._untrusted import JSONRejected, file_kind, loads_strict
from npuq._validate import OVERFLOW_POLICIES, ROUNDING_MODES
from npuq.npu._checks import ProgramError
from npuq.npu._checks import elements as _elements
from npuq.npu._checks import fail as _fail
from npuq.npu.optable import LAYER_KINDS, OP_KINDS, OP_TABLE, OP_TENSORS, OpFootprint

FORMAT = "npuq-program"
FORMAT_VERSION = 2  # what this npuq writes
READABLE_FORMAT_VERSIONS = (1, 2)  # what it reads: format 1 has the kinds and attributes of format 1 only
METADATA_KEY = "npuq.program"
DIGEST_KEY = "npuq.sha256"  # SHA-256 of the graph and the tensors (content_digest), checked on load

# The op kinds (OP_KINDS) and each kind's tensors (OP_TENSORS: field -> dtype), attributes, shape checks,
# footprint, kernels and cost are the op table's (npuq.npu.optable.OP_TABLE). ROUNDING_MODES and
# OVERFLOW_POLICIES are npuq._validate's, shared with npuq.ops.
LAYER_TENSORS = dict(OP_TENSORS[LAYER_KINDS[0]])  # the tensors of a layer (conv2d, fully_connected)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
_SAFETENSORS_DTYPES = {"I8": np.int8, "U8": np.uint8, "I32": np.int32}
_DTYPE_CODES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024

# ---------------------------------------------------------------------------------- resource limits
# A program file is hostile until validated: a 1 KB file can declare a pooling window whose padded plane
# is gigabytes, or shapes whose products leave int64. These bound what loading, costing and emulating an
# accepted program may take (docs/program.md 4, "Resource limits"); a program beyond any of them is a
# ProgramError at load time. Real networks are orders of magnitude below every one.
MAX_FILE_BYTES = 2 << 30  # a program file (2 GiB)
MAX_TENSOR_ELEMENTS = 2**31 - 1  # any tensor of the file and any per-image value: int32 indexing is safe
MAX_OP_BYTES = 256 << 20  # per image, one op: its inputs, output and temporary buffers (256 MiB)
MAX_PEAK_BYTES = 1 << 30  # per image: the values alive together plus the running op's buffers (1 GiB)
MAX_OP_WORK = 2**34  # per image, one op: multiply-accumulates or element operations
MAX_OP_PARAM_BYTES = 256 << 20  # one layer's parameters as the native kernels pack them (256 MiB)
MAX_PARAM_BYTES = 4 << 30  # all layers' packed parameters together (4 GiB)
# (the native kernels' own limits, mirrored so that a valid program never fails in them, are the op
# table's: npuq.npu.optable)


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
        return [o for o in self.ops if o.kind in LAYER_KINDS]

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
            "input": {
                "name": self.input.name,
                "shape": list(self.input.shape),
                "layout": "HWC",
                "scale": float(self.input.scale),
                "zero_point": int(self.input.zero_point),
            },
            "output": self.output,
            "ops": [
                {
                    "name": o.name,
                    "kind": o.kind,
                    "inputs": list(o.inputs),
                    "attrs": _jsonable(o.attrs),
                    "tensors": sorted(o.tensors),
                    "scale": float(o.scale),
                    "zero_point": int(o.zero_point),
                    "path": o.path,
                }
                for o in self.ops
            ],
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
        lines = [
            f"npuq program '{self.model}': {len(self.ops)} ops, input {self.input.name} "
            f"{shapes[self.input.name]} int8 (scale {self.input.scale:.6g}, zero point {self.input.zero_point}), "
            f"rounding={self.rounding}, overflow={self.overflow}"
        ]
        for o in self.ops:
            lines.append(
                f"  {o.name:<32} {o.kind:<16} {'x'.join(map(str, shapes[o.name])):<12} <- {', '.join(o.inputs)}"
            )
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"Program(model={self.model!r}, ops={len(self.ops)}, input={self.input.shape}, "
            f"output={self.output!r}, rounding={self.rounding!r})"
        )


# ====================================================================================== validation
def _check_op(op: Op, where: str, in_shapes: list[tuple[int, ...]], version: int) -> tuple[int, ...]:
    """One op (of a known kind, its inputs defined, in a program of format ``version``): the op table's
    checks (OpSpec.check); its output shape."""
    return OP_TABLE[op.kind].check(op, where, in_shapes, version)


# ====================================================================================== resources
def op_footprint(op: Op, in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]) -> OpFootprint:
    """The memory and work of running ``op`` (validated, with its inputs' and its output's per-image shapes)
    in the emulator: what the loader bounds and the cost model reports. Each kind's footprint function in
    the op table (npuq.npu.optable) mirrors what the emulator and the native kernels allocate; keep it in
    step with csrc/cpu (kernels.h, conv_plan.cc)."""
    return OP_TABLE[op.kind].footprint_of(op, in_shapes, out_shape)


def live_activation_bytes(program: Program, shapes: dict[str, tuple[int, ...]]) -> list[int]:
    """Per-image activation bytes alive while each op runs (docs/cost_model.md 2), in one pass.

    Every value lives in one buffer (a view's output, a flatten's, shares its input's). A buffer is alive
    from the op that writes it (the input: from the start) to its last reader (the program output: to the
    end). Each
    buffer adds its size on its first op and removes it after its last, so the live bytes of every op are
    prefix sums: linear in the op count (a sum over all buffers per op was quadratic).
    """
    n = len(program.ops)
    storage = {program.input.name: program.input.name}
    born = {program.input.name: 0}
    last = {program.input.name: 0}
    for i, op in enumerate(program.ops):
        if OP_TABLE[op.kind].view:
            storage[op.name] = storage[op.inputs[0]]
        else:
            storage[op.name] = op.name
            born[op.name] = last[op.name] = i
        for src in op.inputs:
            last[storage[src]] = i  # ops run in order: the latest reader so far is the last
    last[storage[program.output]] = n - 1
    change = [0] * (n + 1)
    for buf, first in born.items():
        size = _elements(shapes[buf])
        change[first] += size
        change[last[buf] + 1] -= size
    live, total = [], 0
    for delta in change[:n]:
        total += delta
        live.append(total)
    return live


@dataclass(frozen=True)
class MemoryPlan:
    """The footprint of every op and the memory around it, per image (built by :func:`memory_plan`)."""

    footprints: list[OpFootprint]
    live: list[int]  # activation bytes alive while each op runs (live_activation_bytes)
    working_sets: list[int]  # live + the op's temporaries + one thread's scratch: bounded by MAX_PEAK_BYTES
    peak_bytes: int  # the largest working set
    peak_index: int  # the first op reaching it
    param_bytes: int  # every layer's packed parameters (per program): bounded by MAX_PARAM_BYTES


def memory_plan(program: Program, shapes: dict[str, tuple[int, ...]] | None = None) -> MemoryPlan:
    """:class:`MemoryPlan` of a program (validated first unless its ``shapes`` are given)."""
    shapes = validate(program) if shapes is None else shapes
    footprints = [op_footprint(op, [shapes[s] for s in op.inputs], shapes[op.name]) for op in program.ops]
    return _plan(program, shapes, footprints)


def _plan(program: Program, shapes: dict[str, tuple[int, ...]], footprints: list[OpFootprint]) -> MemoryPlan:
    live = live_activation_bytes(program, shapes)
    working = [v + f.intermediate_bytes + f.scratch_bytes for v, f in zip(live, footprints)]
    peak = max(working)
    return MemoryPlan(footprints, live, working, peak, working.index(peak), sum(f.param_bytes for f in footprints))


def _check_elements(where: str, what: str, shape: tuple[int, ...]) -> None:
    n = _elements(shape)
    if n > MAX_TENSOR_ELEMENTS:
        _fail(
            where,
            f"{what} {tuple(shape)} has {n:,} elements, more than the limit of {MAX_TENSOR_ELEMENTS:,} "
            f"(2^31 - 1; docs/program.md 4)",
        )


def _check_native(op: Op, where: str, x: tuple[int, ...], y: tuple[int, ...]) -> None:
    """The native kernels' own size checks (csrc/common/validate.cc), on one image: a program they would
    refuse is refused here, naming the op, instead of failing in the emulator (the op table's ``native``)."""
    native = OP_TABLE[op.kind].native
    if native is not None:
        native(op, where, x, y)


def _check_footprint(where: str, f: OpFootprint) -> None:
    if f.working_set_bytes > MAX_OP_BYTES:
        temp = f" + temporaries {f.intermediate_bytes + f.scratch_bytes:,} B ({f.temporary})" if f.temporary else ""
        _fail(
            where,
            f"working set of {f.working_set_bytes:,} bytes per image (inputs {f.input_bytes:,} B + output "
            f"{f.output_bytes:,} B{temp}) exceeds the limit of {MAX_OP_BYTES:,} bytes (256 MiB; "
            f"docs/program.md 4)",
        )
    if f.work > MAX_OP_WORK:
        _fail(
            where,
            f"needs {f.work:,} operations per image, more than the limit of {MAX_OP_WORK:,} (2^34; docs/program.md 4)",
        )
    if f.param_bytes > MAX_OP_PARAM_BYTES:
        _fail(
            where,
            f"its parameters packed for the native kernels take {f.param_bytes:,} bytes, more than the "
            f"limit of {MAX_OP_PARAM_BYTES:,} (256 MiB; docs/program.md 4)",
        )


def _check_resources(op: Op, where: str, in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]) -> OpFootprint:
    """Every resource limit of one op (docs/program.md 4), the cheapest and clearest first."""
    _check_elements(where, "the output shape", out_shape)
    footprint = op_footprint(op, in_shapes, out_shape)
    _check_footprint(where, footprint)
    _check_native(op, where, in_shapes[0], out_shape)
    return footprint


def _check_program_memory(
    p: Program, source: str, shapes: dict[str, tuple[int, ...]], footprints: list[OpFootprint]
) -> None:
    plan = _plan(p, shapes, footprints)
    for i, ws in enumerate(plan.working_sets):  # the first op over the limit, like every other check
        if ws > MAX_PEAK_BYTES:
            _fail(
                f"{source}: op {i} '{p.ops[i].name}'",
                f"the values alive while it runs and its temporaries take "
                f"{ws:,} bytes per image ({plan.live[i]:,} B of values alive), more than the limit of "
                f"{MAX_PEAK_BYTES:,} (1 GiB; docs/program.md 4)",
            )
    if plan.param_bytes > MAX_PARAM_BYTES:
        _fail(
            source,
            f"the layers' parameters packed for the native kernels take {plan.param_bytes:,} bytes in "
            f"total, more than the limit of {MAX_PARAM_BYTES:,} (4 GiB; docs/program.md 4)",
        )


def validate(program: Program, source: str = "program") -> dict[str, tuple[int, ...]]:
    """Check every field of ``program``; return the per-image shape of every value.

    Raises :class:`ProgramError` naming ``source`` (the file), the op and the field at the first problem.
    """
    p = program
    if isinstance(p.format_version, bool) or p.format_version not in READABLE_FORMAT_VERSIONS:
        _fail(source, _unknown_version(p.format_version))
    if p.arithmetic_version != ARITHMETIC_VERSION:
        _fail(
            source,
            f"arithmetic_version {p.arithmetic_version!r} differs from this npuq's "
            f"({ARITHMETIC_VERSION}); its outputs would not be bit-exact here",
        )
    if p.rounding not in ROUNDING_MODES:
        _fail(source, f"rounding must be one of {ROUNDING_MODES}, got {p.rounding!r}")
    if p.overflow not in OVERFLOW_POLICIES:
        _fail(source, f"overflow must be one of {OVERFLOW_POLICIES}, got {p.overflow!r}")
    inp = p.input
    if not isinstance(inp.name, str) or not _NAME.fullmatch(inp.name):
        _fail(f"{source}: input", f"name {inp.name!r} is not a valid name ({_NAME.pattern})")
    shape = tuple(inp.shape) if isinstance(inp.shape, (list, tuple)) else None
    if (
        shape is None
        or len(shape) not in (1, 3)
        or any(isinstance(d, bool) or not isinstance(d, Integral) or not 1 <= d <= 1 << 20 for d in shape)
    ):
        _fail(f"{source}: input", f"shape must be (H, W, C) or (K,) of positive integers, got {inp.shape!r}")
    _check_scale(inp.scale, f"{source}: input")
    if float(np.float32(inp.scale)) != inp.scale:
        _fail(f"{source}: input", f"scale {inp.scale!r} is not a float32 value (the input is quantized in float32)")
    _check_zp(inp.zero_point, f"{source}: input")
    _check_elements(f"{source}: input", "shape", shape)
    shapes: dict[str, tuple[int, ...]] = {inp.name: tuple(int(d) for d in shape)}
    footprints = []
    if not p.ops:
        _fail(source, "the program has no ops")
    for i, op in enumerate(p.ops):
        where = f"{source}: op {i}"
        if not isinstance(op.name, str) or not _NAME.fullmatch(op.name):
            _fail(where, f"name {op.name!r} is not a valid name ({_NAME.pattern})")
        where = f"{source}: op {i} '{op.name}'"
        if op.name in shapes:
            _fail(where, "the name is used twice")
        if not isinstance(op.kind, str) or op.kind not in OP_TABLE:
            _fail(where, f"unknown kind {op.kind!r}; known: {', '.join(OP_TABLE)}")
        if not isinstance(op.inputs, (list, tuple)) or not all(isinstance(s, str) for s in op.inputs):
            _fail(where, f"inputs must be a list of names, got {op.inputs!r}")
        for s in op.inputs:
            if s not in shapes:
                _fail(where, f"input '{s}' is not the program input or an earlier op's output")
        if not isinstance(op.tensors, dict):
            _fail(where, "tensors must be a dict")
        _check_scale(op.scale, where)
        _check_zp(op.zero_point, where)
        in_shapes = [shapes[s] for s in op.inputs]
        shapes[op.name] = _check_op(op, where, in_shapes, p.format_version)
        footprints.append(_check_resources(op, where, in_shapes, shapes[op.name]))
    if p.output not in shapes or p.output == inp.name:
        _fail(source, f"output {p.output!r} is not the name of an op")
    _check_program_memory(p, source, shapes, footprints)
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
        header[key] = {
            "dtype": _DTYPE_CODES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _load_json(text: str | bytes, source: str, what: str, hint: str = ""):
    """Strict JSON (npuq._untrusted): a key twice in one object would be two different programs to two
    readers; bytes must be UTF-8. NaN / Infinity are left to the field checks (free-form info may hold them)."""
    try:
        return loads_strict(text)
    except JSONRejected as exc:
        _fail(source, f"{what}: {exc}")
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, integers beyond Python's digit limit
        _fail(source, f"{what} is not valid JSON ({exc}){hint}")


def _header_size(head: bytes, file_size: int, source: str) -> int:
    """The header size field of the first 8 bytes of a file of ``file_size`` bytes, checked: the header
    must fit in the file (and in _MAX_HEADER) before anything more is read or parsed."""
    if file_size < 8:
        _fail(source, f"the file is {file_size} bytes long: too short to be a program (truncated?)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > min(_MAX_HEADER, file_size - 8):
        _fail(
            source,
            f"header size field says {n} bytes but the file has {file_size - 8} after it "
            f"(truncated or not a program file; a header has at most {_MAX_HEADER:,} bytes)",
        )
    return n


def _parse_safetensors(data, source: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    data = memoryview(data).cast("B")  # slices of a memoryview are views: the file is never copied whole
    n = _header_size(data[:8], len(data), source)
    header = _load_json(bytes(data[8 : 8 + n]), source, "the header", "; the file is corrupted or not a program")
    if not isinstance(header, dict):
        _fail(source, "the header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        _fail(source, "the header has no '__metadata__' string map: not an npuq program (plain safetensors?)")
    body = data[8 + n :]
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
        _check_elements(where, "shape", tuple(max(d, 1) for d in shape))  # an empty tensor's other dims too
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(d) is int for d in offs):
            _fail(where, f"data_offsets {offs!r} is not a pair of integers")
        begin, end = offs
        nbytes = math.prod(shape) * np.dtype(dt).itemsize
        if not 0 <= begin <= end <= len(body):
            _fail(where, f"data_offsets {offs} fall outside the {len(body)} data bytes (truncated file?)")
        if end - begin != nbytes:
            _fail(
                where, f"data_offsets {offs} hold {end - begin} bytes but shape {shape} x {np.dtype(dt)} needs {nbytes}"
            )
        spans.append((begin, end, key))
        tensors[key] = (
            np.frombuffer(body, dtype=np.dtype(dt).newbyteorder("<"), count=math.prod(shape), offset=begin)
            .reshape(shape)
            .astype(dt)
        )
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            _fail(
                f"{source}: tensor '{key}'",
                f"data starts at byte {begin}, expected {pos} (overlapping or gapped tensor data)",
            )
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


def _unknown_version(version) -> str:
    newer = isinstance(version, int) and version > FORMAT_VERSION
    return (
        f"format_version {version!r} is not supported: this npuq reads versions "
        f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
        + ("; the program was written by a newer npuq, upgrade npuq to run it" if newer else "")
    )


def program_from_json(graph: dict, tensors: dict[str, np.ndarray], source: str = "program") -> Program:
    """Build (and validate) a program from its JSON graph and its tensors by ``"<op>.<field>"`` key."""
    if not isinstance(graph, dict):
        _fail(source, "the graph is not a JSON object")
    fmt = graph.get("format")
    if fmt != FORMAT:
        _fail(source, f"field 'format' is {fmt!r}, expected {FORMAT!r}: not an npuq program")
    version = _get(graph, "format_version", int, source)
    if version not in READABLE_FORMAT_VERSIONS:
        _fail(source, _unknown_version(version))
    known = {
        "format",
        "format_version",
        "arithmetic_version",
        "model",
        "rounding",
        "overflow",
        "input",
        "output",
        "ops",
        "info",
    }
    unknown = set(graph) - known
    if unknown:
        _fail(source, f"unknown field(s) {sorted(unknown)}")
    inp = _get(graph, "input", dict, source)
    w_in = f"{source}: input"
    extra = set(inp) - {"name", "shape", "layout", "scale", "zero_point"}
    if extra:
        _fail(w_in, f"unknown field(s) {sorted(extra)}")
    layout = _get(inp, "layout", str, w_in)
    if layout != "HWC":
        _fail(w_in, f"layout {layout!r} is not supported (HWC)")
    spec = InputSpec(
        name=_get(inp, "name", str, w_in),
        shape=tuple(_get(inp, "shape", list, w_in)),
        scale=float(_get(inp, "scale", float, w_in)),
        zero_point=_get(inp, "zero_point", int, w_in),
    )
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
        ops.append(
            Op(
                name=name,
                kind=_get(o, "kind", str, where),
                inputs=list(_get(o, "inputs", list, where)),
                attrs=dict(_get(o, "attrs", dict, where)),
                tensors=op_tensors,
                scale=float(_get(o, "scale", float, where)),
                zero_point=_get(o, "zero_point", int, where),
                path=_get(o, "path", str, where),
            )
        )
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
    program = Program(
        input=spec,
        ops=ops,
        output=_get(graph, "output", str, source),
        rounding=_get(graph, "rounding", str, source),
        overflow=_get(graph, "overflow", str, source),
        model=_get(graph, "model", str, source),
        info=info,
        arithmetic_version=_get(graph, "arithmetic_version", int, source),
        format_version=version,
    )
    validate(program, source)
    return program


def program_from_bytes(data: bytes, source: str = "program", *, check_digest: bool = True) -> Program:
    """Parse and validate a program file's bytes (any bytes-like object; see :func:`load_program`)."""
    size = memoryview(data).nbytes
    if size > MAX_FILE_BYTES:
        _fail(
            source,
            f"{size:,} bytes: larger than the maximum program size of {MAX_FILE_BYTES:,} bytes (2 GiB; "
            f"docs/program.md 4)",
        )
    meta, tensors = _parse_safetensors(data, source)
    text = meta.get(METADATA_KEY)
    if text is None:
        _fail(source, f"the header metadata has no '{METADATA_KEY}' entry: a safetensors file, but not an npuq program")
    graph = _load_json(text, source, f"the '{METADATA_KEY}' graph")
    program = program_from_json(graph, tensors, source)
    if check_digest:  # after validation, so that a hand edit is reported by the field it broke
        stored = meta.get(DIGEST_KEY)
        if stored is None:
            _fail(
                source,
                f"the header metadata has no '{DIGEST_KEY}' checksum (load with check_digest=False to "
                f"accept a program written without one)",
            )
        try:
            computed = content_digest(text, tensors)
        except UnicodeEncodeError:  # a lone \ud800-style escape decodes to a string with no UTF-8 form
            _fail(
                source,
                f"the '{METADATA_KEY}' graph holds a lone surrogate (\\ud800-\\udfff), which has no UTF-8 form: its "
                f"checksum cannot be computed",
            )
        if stored != computed:
            _fail(
                source,
                f"checksum mismatch: the graph or the tensor data differ from what was written "
                f"('{DIGEST_KEY}' {stored[:16]}...); the file is corrupted or was edited (load with "
                f"check_digest=False to accept an edited program)",
            )
    return program


def load_program(path: str | os.PathLike, *, check_digest: bool = True) -> Program:
    """Read and validate a program file. Raises :class:`ProgramError` naming the file and the field.

    ``check_digest``: compare the stored SHA-256 of the graph and tensors (catches corruption that still
    parses); turn it off to load a program that was edited on purpose (it is validated all the same).
    """
    path = Path(path)
    try:
        data = _read_program_file(path)
    except FileNotFoundError:
        raise ProgramError(f"{path}: no such program file") from None
    except IsADirectoryError:
        raise ProgramError(f"{path}: is a directory, not a program file") from None
    except OSError as exc:
        raise ProgramError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return program_from_bytes(data, str(path), check_digest=check_digest)


def _read_program_file(path: Path) -> bytearray:
    """The file's bytes, read in full only after its type, its size and its header size field pass: a pipe,
    a device or a 4 GB file is refused after at most 8 bytes."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(info.st_mode):
            _fail(str(path), f"is {file_kind(info.st_mode)}, not a regular file; a program is a file")
        size = info.st_size
        if size > MAX_FILE_BYTES:
            _fail(
                str(path),
                f"the file is {size:,} bytes, larger than the maximum program size of "
                f"{MAX_FILE_BYTES:,} bytes (2 GiB; docs/program.md 4)",
            )
        head = bytearray(min(size, 8))
        _read_into(f, memoryview(head), path)
        _header_size(head, size, str(path))
        data = bytearray(size)  # allocated only now that the header size fits the file
        data[:8] = head
        _read_into(f, memoryview(data)[8:], path)
        if f.read(1):
            _fail(str(path), "the file grew while it was read; read it again once it is written")
    return data


def _read_into(f, view: memoryview, path: Path) -> int:
    """Fill ``view`` from ``f``; a file shorter than its size said (truncated meanwhile) is an error."""
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            _fail(
                str(path),
                f"the file shrank while it was read ({len(view) - done:,} bytes missing); read it "
                f"again once it is written",
            )
        done += got
    return done


__all__ = [
    "ARITHMETIC_VERSION",
    "FORMAT_VERSION",
    "InputSpec",
    "MAX_FILE_BYTES",
    "MAX_OP_BYTES",
    "MAX_OP_PARAM_BYTES",
    "MAX_OP_WORK",
    "MAX_PARAM_BYTES",
    "MAX_PEAK_BYTES",
    "MAX_TENSOR_ELEMENTS",
    "MemoryPlan",
    "Op",
    "OP_KINDS",
    "OpFootprint",
    "Program",
    "ProgramError",
    "live_activation_bytes",
    "load_program",
    "memory_plan",
    "op_footprint",
    "program_from_bytes",
    "program_from_json",
    "validate",
]
