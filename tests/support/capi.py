"""ctypes declarations of npuq's C ABI (csrc/include/npuq.h), for the tests that call libnpuq directly.

The library is the installed one (``npuq.get_library()``), or the one the environment variable
``NPUQ_CAPI_LIBRARY`` names (a build with AddressSanitizer, say). Structs mirror the header field for field;
:func:`check` turns a status into an exception carrying ``npuq_last_error()``.
"""

from __future__ import annotations

import ctypes as C
import os

import numpy as np

import npuq

i8p = C.POINTER(C.c_int8)
i32p = C.POINTER(C.c_int32)
u8p = C.POINTER(C.c_uint8)
i64 = C.c_int64
i32 = C.c_int32

STATUS = {
    0: "NPUQ_OK",
    1: "NPUQ_INVALID_ARGUMENT",
    2: "NPUQ_ACCUMULATOR_OVERFLOW",
    3: "NPUQ_PROGRAM_ERROR",
    4: "NPUQ_IO_ERROR",
    5: "NPUQ_OUT_OF_MEMORY",
    6: "NPUQ_VERSION_MISMATCH",
    7: "NPUQ_INTERNAL_ERROR",
}
ROUNDING = {"double": 0, "single": 1}
OVERFLOW = {"raise": 0, "saturate": 1, "wrap": 2}


class Requant(C.Structure):
    _fields_ = [
        ("multiplier", i32p),
        ("exponent", i32p),
        ("param_count", i64),
        ("shift", u8p),
        ("zero_point", i32),
        ("act_min", i32),
        ("act_max", i32),
        ("rounding", C.c_int),
    ]


class Conv2dParams(C.Structure):
    _fields_ = [
        (n, i64)
        for n in (
            "in_channels out_channels kernel_h kernel_w stride_h stride_w dilation_h dilation_w "
            "pad_top pad_bottom pad_left pad_right groups"
        ).split()
    ] + [("input_zero_point", i32), ("overflow", C.c_int), ("requant", Requant)]


class FcParams(C.Structure):
    _fields_ = [
        ("in_features", i64),
        ("out_features", i64),
        ("input_zero_point", i32),
        ("overflow", C.c_int),
        ("requant", Requant),
    ]


class AddParams(C.Structure):
    _fields_ = [
        (n, i32)
        for n in (
            "a_zero_point a_multiplier a_exponent b_zero_point b_multiplier b_exponent out_zero_point "
            "out_multiplier out_exponent left_shift act_min act_max"
        ).split()
    ] + [("rounding", C.c_int)]


class MulParams(C.Structure):
    _fields_ = (
        [("batch", i64), ("positions", i64), ("channels", i64)]
        + [
            (n, i32)
            for n in (
                "broadcast_b a_zero_point b_zero_point out_zero_point multiplier exponent act_min act_max"
            ).split()
        ]
        + [("rounding", C.c_int)]
    )


class ConcatInput(C.Structure):
    _fields_ = [
        ("data", i8p),
        ("count", i64),
        ("channels", i64),
        ("zero_point", i32),
        ("multiplier", i32),
        ("exponent", i32),
    ]


class Pool2dParams(C.Structure):
    _fields_ = [
        (n, i64)
        for n in (
            "batch in_h in_w channels kernel_h kernel_w stride_h stride_w pad_top pad_bottom pad_left pad_right"
        ).split()
    ] + [(n, i32) for n in "count_include_pad ceil_mode input_zero_point act_min act_max".split()]


class MeanParams(C.Structure):
    _fields_ = (
        [(n, i64) for n in "batch in_h in_w channels".split()]
        + [
            (n, i32)
            for n in "input_zero_point output_zero_point multiplier exponent act_min act_max tflite_rounding".split()
        ]
        + [("rounding", C.c_int)]
    )


_lib = None


def library_path() -> str:
    return os.environ.get("NPUQ_CAPI_LIBRARY") or npuq.get_library()


def lib() -> C.CDLL:
    """libnpuq with every function's argument and result types declared."""
    global _lib
    if _lib is None:
        _lib = _declare(C.CDLL(library_path()))
    return _lib


def _declare(L: C.CDLL) -> C.CDLL:
    S = C.c_int
    sigs = {
        "npuq_abi_version": (C.c_uint32, []),
        "npuq_check_abi": (S, [C.c_uint32]),
        "npuq_arithmetic_version": (C.c_uint32, []),
        "npuq_version": (C.c_char_p, []),
        "npuq_isa": (C.c_char_p, []),
        "npuq_last_error": (C.c_char_p, []),
        "npuq_status_name": (C.c_char_p, [S]),
        "npuq_quantize_multiplier": (S, [C.c_double, i32p, i32p]),
        "npuq_requantize_one": (S, [i32, i32, i32, C.c_uint32, i32, i32, i32, C.c_int, i8p]),
        "npuq_requantize": (S, [i32p, i64, i64, C.POINTER(Requant), i8p, i64, C.c_int]),
        "npuq_conv2d_output_size": (S, [C.POINTER(Conv2dParams), i64, i64, C.POINTER(i64), C.POINTER(i64)]),
        "npuq_conv2d_plan_create": (
            S,
            [C.POINTER(Conv2dParams), i8p, i64, i32p, i64, C.POINTER(C.c_void_p)],
        ),
        "npuq_conv2d_plan_free": (None, [C.c_void_p]),
        "npuq_conv2d_plan_run": (S, [C.c_void_p, i8p, i64, i64, i64, i64, i8p, i64, C.c_int]),
        "npuq_conv2d": (
            S,
            [C.POINTER(Conv2dParams), i8p, i64, i64, i64, i64, i8p, i64, i32p, i64, i8p, i64, C.c_int],
        ),
        "npuq_conv2d_accumulators": (
            S,
            [C.POINTER(Conv2dParams), i8p, i64, i64, i64, i64, i8p, i64, i32p, i64, i32p, i64],
        ),
        "npuq_fully_connected": (S, [C.POINTER(FcParams), i8p, i64, i64, i8p, i64, i32p, i64, i8p, i64, C.c_int]),
        "npuq_add": (S, [C.POINTER(AddParams), i8p, i8p, i64, i8p, C.c_int]),
        "npuq_lut": (S, [i8p, i64, i8p, i8p, C.c_int]),
        "npuq_mul": (S, [C.POINTER(MulParams), i8p, i64, i8p, i64, i8p, i64, C.c_int]),
        "npuq_concat": (S, [C.POINTER(ConcatInput), i32, i64, i32, C.c_int, i8p, i64, C.c_int]),
        "npuq_pool2d_output_size": (S, [C.POINTER(Pool2dParams), C.c_int, C.POINTER(i64), C.POINTER(i64)]),
        "npuq_avg_pool2d": (S, [C.POINTER(Pool2dParams), i8p, i64, i8p, i64, C.c_int]),
        "npuq_max_pool2d": (S, [C.POINTER(Pool2dParams), i8p, i64, i8p, i64, C.c_int]),
        "npuq_mean": (S, [C.POINTER(MeanParams), i8p, i64, i8p, i64, C.c_int]),
        "npuq_upsample": (S, [i8p, i64, i64, i64, i64, i64, i64, i64, i32, i32, i8p, i64, C.c_int]),
        "npuq_channel_shuffle": (S, [i8p, i64, i64, i64, i8p, i64, C.c_int]),
        "npuq_channel_slice": (S, [i8p, i64, i64, i64, i64, i8p, i64]),
        "npuq_pad": (S, [i8p, i64, i64, i64, i64, i64, i64, i64, i64, i64, i32, i8p, i64]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(L, name)
        f.restype = res
        f.argtypes = args
    return L


class CApiError(Exception):
    """A failed call: ``status`` is the status's name (``"NPUQ_PROGRAM_ERROR"``), ``message`` npuq_last_error()."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{STATUS.get(status, status)}: {message}")
        self.status = STATUS.get(status, str(status))
        self.message = message


def check(status: int) -> None:
    if status != 0:
        raise CApiError(status, lib().npuq_last_error().decode("utf-8", "replace"))


def ptr(a: np.ndarray | None, ctype=C.c_int8):
    """A pointer to a C-contiguous array's data (NULL for None)."""
    if a is None:
        return None
    assert a.flags.c_contiguous
    return a.ctypes.data_as(C.POINTER(ctype))


def requant(multiplier, exponent, shift=None, zero_point=0, act_min=-128, act_max=127, rounding="double"):
    """A Requant struct and the arrays it points into (keep them alive together)."""
    m = np.ascontiguousarray(np.atleast_1d(multiplier), dtype=np.int32)
    e = np.ascontiguousarray(np.atleast_1d(exponent), dtype=np.int32)
    s = None if shift is None else np.ascontiguousarray(shift, dtype=np.uint8)
    r = Requant(
        ptr(m, C.c_int32),
        ptr(e, C.c_int32),
        m.size,
        ptr(s, C.c_uint8),
        zero_point,
        act_min,
        act_max,
        ROUNDING[rounding],
    )
    return r, (m, e, s)
