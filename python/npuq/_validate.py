"""The validation vocabulary of npuq, and the argument checks of npuq.ops built from it.

Constraints are small objects that check one value and say what they accept (the idea of scikit-learn's
``Interval`` / ``StrOptions``): :class:`Interval` for integers and real numbers in a range,
:class:`Options` for one of a fixed set of names. ``check(value, name, constraint)`` returns the value
normalized (a Python ``int`` or ``float``) or raises ``TypeError`` (wrong type) / ``ValueError`` (out of
range, not an option) naming the argument. The quantizers, the torch integer arithmetic
(``npuq.quant.intmath``), the config files (``npuq.config``) and every public op use these, so the same
value is accepted or refused with the same words everywhere.

Every public op of npuq.ops passes its arguments through here before they reach the native core (which
checks them again, so that nothing can crash it)."""

from __future__ import annotations

import math
import operator
from numbers import Integral, Real

import numpy as np

from npuq import _tensors

ROUNDING_MODES = ("double", "single")
OVERFLOW_POLICIES = ("raise", "saturate", "wrap")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
MAX_EXTENT = 1 << 20  # strides, dilations, kernel sizes and paddings: far past any real layer, safe in int64 products


def _as_int(v, name: str) -> int:
    """An integer argument as a Python int: ints, numpy integers and 0-d integer tensors; never a bool
    (``True`` is an ``int`` in Python, but never a meaningful count or zero point)."""
    if type(v) is int:  # the common case skips the (slow) abstract-base-class checks
        return v
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if isinstance(v, Integral):
        return int(v)
    if (
        _tensors.is_torch(v)
        and v.dim() == 0
        and not v.dtype.is_floating_point
        and not v.dtype.is_complex
        and str(v.dtype) != "torch.bool"
    ):
        return int(v.item())
    try:  # other integer scalars (0-d integer numpy arrays)
        if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iu":
            return operator.index(v)
    except TypeError:
        pass
    raise TypeError(f"{name} must be an int, got {type(v).__name__}")


class Interval:
    """Numbers of ``kind`` (``int`` or ``float``) in ``[lo, hi]``; ``None`` leaves a side open.

    ``closed`` says which ends belong to it: "both" (default), "left", "right" or "neither". Floats must be
    finite; ints may be given as any integer type (never a bool), floats as any real number."""

    def __init__(self, kind: type, lo=None, hi=None, closed: str = "both"):
        if kind not in (int, float):
            raise TypeError(f"Interval kind must be int or float, got {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither', got {closed!r}")
        self.kind, self.lo, self.hi, self.closed = kind, lo, hi, closed

    def __str__(self) -> str:
        """``[lo, hi]`` (the ends as ``closed`` says), or ``>= lo`` / ``<= hi`` for a half-open one."""
        if self.hi is None and self.lo is not None:
            return f"{'>=' if self.closed in ('both', 'left') else '>'} {self.lo}"
        if self.lo is None and self.hi is not None:
            return f"{'<=' if self.closed in ('both', 'right') else '<'} {self.hi}"
        left = "[" if self.closed in ("both", "left") and self.lo is not None else "("
        right = "]" if self.closed in ("both", "right") and self.hi is not None else ")"
        lo = "-inf" if self.lo is None else str(self.lo)
        hi = "inf" if self.hi is None else str(self.hi)
        return f"{left}{lo}, {hi}{right}"

    def _phrase(self) -> str:  # "in [0, 1)", ">= 1"
        return str(self) if self.lo is None or self.hi is None else f"in {self}"

    def describe(self) -> str:
        return f"{'an int' if self.kind is int else 'a number'} {self._phrase()}"

    def contains(self, v) -> bool:
        if self.lo is not None and (v < self.lo or (v == self.lo and self.closed in ("right", "neither"))):
            return False
        if self.hi is not None and (v > self.hi or (v == self.hi and self.closed in ("left", "neither"))):
            return False
        return True

    def check(self, v, name: str):
        if self.kind is int:
            v = _as_int(v, name)
        else:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, Real):
                raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if not self.contains(v):
            raise ValueError(f"{name} must be {self._phrase()}, got {v}")
        return v


class Options:
    """One of a fixed set of names (strings)."""

    def __init__(self, options, what: str | None = None):
        self.options = tuple(options)
        self.what = what

    def __str__(self) -> str:
        return ", ".join(map(repr, self.options))

    def describe(self) -> str:
        return f"one of {self}"

    def contains(self, v) -> bool:
        return isinstance(v, str) and v in self.options

    def check(self, v, name: str):
        if not self.contains(v):
            raise ValueError(f"{name} must be one of {self}; got {v!r}")
        return v


ROUNDING = Options(ROUNDING_MODES)
OVERFLOW = Options(OVERFLOW_POLICIES)


def check(v, name: str, constraint):
    """``v`` normalized by ``constraint`` (an :class:`Interval` or :class:`Options`), or the error that
    names ``name``."""
    return constraint.check(v, name)


def integer(v, name: str, lo: int | None = None, hi: int | None = None) -> int:
    return Interval(int, lo, hi).check(v, name)


def zero_point(v, name: str) -> int:
    return integer(v, name, -128, 127)


def clamp(act_min, act_max) -> tuple[int, int]:
    lo = integer(act_min, "act_min", -128, 127)
    hi = integer(act_max, "act_max", -128, 127)
    if lo > hi:
        raise ValueError(f"act_min ({lo}) must be <= act_max ({hi})")
    return lo, hi


def choice(v, name: str, options) -> str:
    return Options(options).check(v, name)


def threads(v) -> int:
    """0 means the default (npuq.get_num_threads()). The bound is the native core's (``npuq.MAX_THREADS``):
    past it OpenMP may fail to create threads, which aborts the process instead of raising."""
    if v is None:
        return 0
    from npuq import _C

    return integer(v, "threads", 1, int(_C.MAX_THREADS))


def pair(v, name: str, lo: int) -> tuple[int, int]:
    if isinstance(v, Integral) and not isinstance(v, bool):
        v = (v, v)
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
    return tuple(integer(x, name, lo, MAX_EXTENT) for x in v)


def padding(v) -> tuple[int, int, int, int]:
    """int, (h, w) or (top, bottom, left, right)."""
    if isinstance(v, Integral) and not isinstance(v, bool):
        v = (v,) * 4
    if isinstance(v, (tuple, list)) and len(v) == 2:
        v = (v[0], v[0], v[1], v[1])
    if not isinstance(v, (tuple, list)) or len(v) != 4:
        raise ValueError(f"padding must be an int, (h, w) or (top, bottom, left, right), got {v!r}")
    return tuple(integer(x, "padding", 0, MAX_EXTENT) for x in v)


def per_channel(v, name: str, channels: int, lo: int, hi: int, dtype) -> np.ndarray:
    """A per-layer int or a length-``channels`` integer array, as a contiguous array of ``dtype``."""
    if isinstance(v, Integral) and not isinstance(v, bool):
        integer(v, name, lo, hi)
        return np.full(channels, int(v), dtype=dtype)
    if _tensors.is_torch(v):
        v = v.detach().cpu().numpy()
    arr = np.asarray(v)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an int or an integer array, got dtype {arr.dtype}")
    if arr.shape != (channels,):
        raise ValueError(f"{name} must be an int or have shape ({channels},) (one per output channel), got {arr.shape}")
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {int(arr[i])} is outside [{lo}, {hi}]")
    return np.require(arr, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])


def requant(channels: int, multiplier, exponent, channel_shift, output_zero_point, act_min, act_max, rounding):
    """The per-channel arrays and scalars of a requantization (docs/ops.md)."""
    m0 = per_channel(multiplier, "multiplier", channels, 0, _INT32_MAX, np.int32)
    bad = np.flatnonzero((m0 != 0) & (m0 < 2**30))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"multiplier[{i}] = {int(m0[i])} is not a Q31 mantissa: it must be 0 or in [2**30, 2**31 - 1] "
            "(build it with npuq.quantize_multiplier)"
        )
    exp = per_channel(exponent, "exponent", channels, -31, 30, np.int32)
    shift = None if channel_shift is None else per_channel(channel_shift, "channel_shift", channels, 0, 15, np.uint8)
    zp = zero_point(output_zero_point, "output_zero_point")
    lo, hi = clamp(act_min, act_max)
    choice(rounding, "rounding", ROUNDING_MODES)
    return dict(
        multiplier=m0,
        exponent=exp,
        channel_shift=shift,
        output_zero_point=zp,
        act_min=lo,
        act_max=hi,
        rounding=rounding,
    )


def bias(b, channels: int):
    if b is None:
        return None
    if _tensors.is_torch(b):
        b = b.detach().cpu().numpy()
    if not isinstance(b, np.ndarray):
        b = np.asarray(b)
    if b.dtype.kind not in "iu":
        raise TypeError(
            f"bias must be an integer array (int32 in the accumulator scale), got dtype {b.dtype}; "
            "quantize it with npuq.quantize_bias"
        )
    if b.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},) (one per output channel), got {b.shape}")
    bad = np.flatnonzero((b < _INT32_MIN) | (b > _INT32_MAX))
    if bad.size:
        i = int(bad[0])
        raise OverflowError(f"bias[{i}] = {int(b[i])} does not fit int32")
    return np.require(b, dtype=np.int32, requirements=["C_CONTIGUOUS", "ALIGNED"])


def weights_in_range(w: np.ndarray, name: str = "weight") -> None:
    bad = np.flatnonzero(w.reshape(-1) == -128)
    if bad.size:
        idx = np.unravel_index(int(bad[0]), w.shape)
        raise ValueError(f"{name}{list(idx)} is -128: int8 weights must lie in [-127, 127] (symmetric quantization)")
