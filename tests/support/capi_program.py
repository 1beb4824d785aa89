"""ctypes declarations of the whole-program functions of npuq's C ABI (csrc/include/npuq.h, "whole programs")
and :class:`CProgram`, a small wrapper that loads a program file through libnpuq and runs it on numpy arrays.

The library is the one :func:`support.capi.library_path` names: npuq's installed one, or a sanitizer build.
"""

from __future__ import annotations

import ctypes as C
import json
import struct
from typing import Any, Callable

import numpy as np

from npuq.npu import InputSpec, Op, Program
from npuq.npu.program import DIGEST_KEY, METADATA_KEY, content_digest
from support.capi import CApiError, library_path
from support.program_builders import build_program, conv_op, fc_op, flatten_op, max_pool_op

NPUQ_LOAD_SKIP_DIGEST = 1
MAX_DIMS = 3
MAX_OP_INPUTS = 64

i8p = C.POINTER(C.c_int8)
i64 = C.c_int64
i64p = C.POINTER(C.c_int64)


class ValueInfo(C.Structure):
    _fields_ = [
        ("ndim", C.c_int32),
        ("shape", i64 * MAX_DIMS),
        ("count", i64),
        ("zero_point", C.c_int32),
        ("scale", C.c_double),
    ]

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(int(self.shape[k]) for k in range(self.ndim))


class OpInfo(C.Structure):
    _fields_ = [
        ("name", C.c_char_p),
        ("kind", C.c_char_p),
        ("input_count", C.c_int32),
        ("inputs", i64 * MAX_OP_INPUTS),
        ("output", ValueInfo),
    ]


_lib = None


def lib() -> C.CDLL:
    """libnpuq with the program functions' argument and result types declared."""
    global _lib
    if _lib is None:
        _lib = _declare(C.CDLL(library_path()))
    return _lib


def _declare(L: C.CDLL) -> C.CDLL:
    S = C.c_int
    vp = C.c_void_p
    sigs = {
        "npuq_last_error": (C.c_char_p, []),
        "npuq_program_load": (S, [C.c_char_p, C.c_uint32, C.POINTER(vp)]),
        "npuq_program_free": (None, [vp]),
        "npuq_program_input_info": (S, [vp, C.POINTER(ValueInfo)]),
        "npuq_program_op_count": (S, [vp, i64p]),
        "npuq_program_op_info": (S, [vp, i64, C.POINTER(OpInfo)]),
        "npuq_program_output_op": (S, [vp, i64p]),
        "npuq_program_find_op": (S, [vp, C.c_char_p, i64p]),
        "npuq_program_run": (S, [vp, i8p, i64, i64, C.c_int, C.POINTER(vp)]),
        "npuq_run_free": (None, [vp]),
        "npuq_run_value": (S, [vp, i64, C.POINTER(i8p), i64p]),
        "npuq_run_output": (S, [vp, C.POINTER(i8p), i64p]),
        "npuq_program_run_op": (S, [vp, i64, C.POINTER(i8p), i64p, C.c_int32, i64, i8p, i64, C.c_int]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(L, name)
        f.restype = res
        f.argtypes = args
    return L


def check(status: int) -> None:
    if status != 0:
        raise CApiError(status, last_error())


def last_error() -> str:
    return lib().npuq_last_error().decode("utf-8", "replace")


def i8(a: np.ndarray):
    assert a.dtype == np.int8 and a.flags.c_contiguous
    return a.ctypes.data_as(i8p)


def load_status(path, flags: int = 0) -> tuple[int, str]:
    """(status, message) of loading ``path`` (the program is freed at once when it loads)."""
    handle = C.c_void_p()
    status = lib().npuq_program_load(str(path).encode(), flags, C.byref(handle))
    message = last_error()
    if status == 0:
        lib().npuq_program_free(handle)
    return status, message


class CProgram:
    """A program loaded by libnpuq. ``run`` returns every value of a run by name, as ``Emulator.run(...,
    capture=True)`` does; ``run_op`` runs one op alone."""

    def __init__(self, path, *, skip_digest: bool = False):
        self._handle = C.c_void_p()
        check(
            lib().npuq_program_load(
                str(path).encode(), NPUQ_LOAD_SKIP_DIGEST if skip_digest else 0, C.byref(self._handle)
            )
        )
        n = i64()
        check(lib().npuq_program_op_count(self._handle, C.byref(n)))
        self.ops = []
        for i in range(n.value):
            info = OpInfo()
            check(lib().npuq_program_op_info(self._handle, i, C.byref(info)))
            self.ops.append(
                dict(
                    name=info.name.decode(),
                    kind=info.kind.decode(),
                    inputs=[int(info.inputs[k]) for k in range(info.input_count)],
                    shape=info.output.as_tuple(),
                    count=int(info.output.count),
                    zero_point=int(info.output.zero_point),
                    scale=float(info.output.scale),
                )
            )
        inp = ValueInfo()
        check(lib().npuq_program_input_info(self._handle, C.byref(inp)))
        self.input_shape = inp.as_tuple()
        self.input = dict(
            shape=inp.as_tuple(), count=int(inp.count), zero_point=int(inp.zero_point), scale=float(inp.scale)
        )
        out = i64()
        check(lib().npuq_program_output_op(self._handle, C.byref(out)))
        self.output = out.value

    @property
    def handle(self) -> C.c_void_p:
        return self._handle

    def shape_of(self, index: int) -> tuple[int, ...]:
        return self.input_shape if index < 0 else self.ops[index]["shape"]

    def find(self, name: str) -> int:
        index = i64()
        check(lib().npuq_program_find_op(self._handle, name.encode(), C.byref(index)))
        return index.value

    def run(self, x: np.ndarray, *, threads: int = 0) -> dict[int, np.ndarray]:
        """Every value (index -1: the input, i: op i) of a run on int8 ``x`` (N, *input shape), copied out."""
        x = np.ascontiguousarray(x, dtype=np.int8)
        run = C.c_void_p()
        check(lib().npuq_program_run(self._handle, i8(x), x.shape[0], x.size, threads, C.byref(run)))
        try:
            values = {}
            for index in range(-1, len(self.ops)):
                data, count = i8p(), i64()
                check(lib().npuq_run_value(run, index, C.byref(data), C.byref(count)))
                shape = (x.shape[0], *self.shape_of(index))
                assert count.value == int(np.prod(shape))
                values[index] = np.ctypeslib.as_array(data, shape=(count.value,)).reshape(shape).copy()
            data, count = i8p(), i64()
            check(lib().npuq_run_output(run, C.byref(data), C.byref(count)))
            out = np.ctypeslib.as_array(data, shape=(count.value,)).copy()
            assert np.array_equal(out, values[self.output].reshape(-1))
            return values
        finally:
            lib().npuq_run_free(run)

    def run_op(self, index: int, inputs: list[np.ndarray], *, threads: int = 0) -> np.ndarray:
        inputs = [np.ascontiguousarray(a, dtype=np.int8) for a in inputs]
        batch = inputs[0].shape[0]
        ptrs = (i8p * len(inputs))(*[i8(a) for a in inputs])
        counts = (i64 * len(inputs))(*[a.size for a in inputs])
        out = np.empty((batch, *self.ops[index]["shape"]), np.int8)
        check(
            lib().npuq_program_run_op(self._handle, index, ptrs, counts, len(inputs), batch, i8(out), out.size, threads)
        )
        return out

    def close(self) -> None:
        if self._handle.value:
            lib().npuq_program_free(self._handle)
            self._handle = C.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------- writing files
_CODES = {np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32"}
AUTO = "auto"


def program_bytes(
    graph: dict | str,
    tensors: dict[str, np.ndarray],
    *,
    digest: str | None = AUTO,
    metadata: dict[str, Any] | None = None,
    graph_key: str | None = METADATA_KEY,
    header_edit: Callable[[dict], dict] | None = None,
) -> bytes:
    """A program file's bytes from any graph (a dict, or JSON text taken as it is) and tensors, without the
    validation of Program.save: the way to write files the loader must refuse. ``digest``: AUTO for the
    content digest of this graph text and these tensors (npuq.npu.program.content_digest), a string to store
    instead, None for none. ``metadata``: more metadata entries; ``header_edit``: a last edit of the header
    dict (any JSON). Tensors of other dtypes are stored under numpy's dtype string."""
    text = graph if isinstance(graph, str) else json.dumps(graph, sort_keys=True, separators=(",", ":"))
    meta: dict[str, Any] = {}
    if graph_key is not None:
        meta[graph_key] = text
    if digest == AUTO:
        meta[DIGEST_KEY] = content_digest(text, tensors)
    elif digest is not None:
        meta[DIGEST_KEY] = digest
    meta.update(metadata or {})
    header: dict[str, Any] = {"__metadata__": meta}
    chunks, offset = [], 0
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {
            "dtype": _CODES.get(arr.dtype, arr.dtype.str),
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    if header_edit is not None:
        header = header_edit(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


# ------------------------------------------------------------------------------------------- programs
def varied_program() -> Program:
    """The conv geometries the every-kind program lacks: a depthwise conv with dilation and stride and
    per-layer requantization with WESS shifts, a grouped conv, a ceil-mode max pool whose last window hangs
    past the input, an avg pool counting its padding, a flatten of a spatial map into a linear layer."""
    rng = np.random.default_rng(11)
    dw = conv_op(
        "dw",
        "x",
        (6, 3, 3, 1),
        stride=(2, 1),
        padding=(2, 2, 1, 1),
        dilation=(2, 1),
        groups=6,
        shifts=rng.integers(0, 4, 6),
    )
    dw.tensors["weight"] = rng.integers(-127, 128, (6, 3, 3, 1)).astype(np.int8)
    dw.tensors["bias"] = rng.integers(-500, 500, 6).astype(np.int32)
    dw.tensors["multiplier"] = np.array([1518500250], np.int32)
    dw.tensors["exponent"] = np.array([-5], np.int32)
    dw.attrs.update(input_zero_point=4, output_zero_point=-9, act_min=-100, act_max=90)
    mp = max_pool_op("mp", "dw", (3, 2), stride=(2, 2), padding=(1, 0, 1, 1), ceil_mode=True)
    grouped = conv_op("grouped", "mp", (4, 2, 1, 3), groups=2, per_channel=True)
    grouped.tensors["weight"] = rng.integers(-7, 8, (4, 2, 1, 3)).astype(np.int8)
    grouped.tensors["multiplier"] = rng.integers(2**30, 2**31 - 1, 4).astype(np.int32)
    grouped.tensors["exponent"] = np.array([-3, -4, -2, 1], np.int32)
    grouped.attrs.update(weight_bits=4, input_zero_point=-9)
    ap = Op(
        "ap",
        "avg_pool2d",
        ["grouped"],
        dict(
            kernel=[2, 3],
            stride=[1, 2],
            padding=[1, 0, 1, 1],
            count_include_pad=True,
            input_zero_point=0,
            act_min=-120,
            act_max=127,
        ),
        scale=0.1,
    )
    flat = flatten_op("flat", "ap")
    p = build_program((9, 7, 6), dw, mp, grouped, ap, flat, model="varied", check=False)
    k = p.shapes()["flat"][0]
    fc = fc_op("fc", "flat", k, 3)
    fc.tensors["weight"] = rng.integers(-127, 128, (3, k)).astype(np.int8)
    p.ops.append(fc)
    p.output = "fc"
    p.input = InputSpec("x", (9, 7, 6), 0.25, -3)
    p.shapes()  # validates
    return p
