"""ProgramError and the field checks that the program loader (:mod:`npuq.npu.program`) and the op table
(:mod:`npuq.npu.optable`) share. Every message names ``where`` (the file and the op) and the field.

Only numpy: this module imports nothing of npuq, so both of those can import it.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import NoReturn

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class ProgramError(ValueError):
    """A program (in memory or in a file) is malformed; the message names the file, op and field."""


# where people import it from (npuq.ProgramError, npuq.npu.program.ProgramError): what tracebacks and
# pickles name
ProgramError.__module__ = "npuq.npu.program"


def fail(where: str, msg: str) -> NoReturn:
    raise ProgramError(f"{where}: {msg}")


def int_field(attrs: dict, key: str, where: str, lo: int, hi: int) -> int:
    if key not in attrs:
        fail(where, f"missing attribute '{key}'")
    v = attrs[key]
    if isinstance(v, bool) or not isinstance(v, Integral):
        fail(where, f"attribute '{key}' must be an integer, got {type(v).__name__} {v!r}")
    if not lo <= v <= hi:
        fail(where, f"attribute '{key}' = {v} is out of range [{lo}, {hi}]")
    return int(v)


def int_list(attrs: dict, key: str, where: str, n: int, lo: int, hi: int) -> tuple[int, ...]:
    if key not in attrs:
        fail(where, f"missing attribute '{key}'")
    v = attrs[key]
    if not isinstance(v, (list, tuple)) or len(v) != n:
        fail(where, f"attribute '{key}' must be a list of {n} integers, got {v!r}")
    out = []
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, Integral):
            fail(where, f"attribute '{key}'[{i}] must be an integer, got {x!r}")
        if not lo <= x <= hi:
            fail(where, f"attribute '{key}'[{i}] = {x} is out of range [{lo}, {hi}]")
        out.append(int(x))
    return tuple(out)


def check_keys(attrs: dict, allowed, where: str) -> None:
    if not isinstance(attrs, dict):
        fail(where, f"attrs must be an object, got {type(attrs).__name__}")
    unknown = set(attrs) - set(allowed)
    if unknown:
        fail(where, f"unknown attribute(s) {sorted(unknown)}; this op kind has {sorted(allowed)}")


def first_bad(mask: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(mask)[0])
    return f"{int(mask.sum())} value(s), first at index {idx if len(idx) > 1 else idx[0]}"


def elements(shape) -> int:
    return math.prod(int(d) for d in shape)  # Python ints: no int64 wrap-around


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def out_size(n: int, k: int, stride: int, dilation: int, lo: int, hi: int) -> int:
    """Output size of a window op: ``floor((n + lo + hi - dilation * (k - 1) - 1) / stride) + 1``."""
    return (n + lo + hi - dilation * (k - 1) - 1) // stride + 1
