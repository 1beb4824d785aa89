"""Argument checks of npuq.ops, in one place: every public op passes its arguments through here
before they reach the native core (which checks them again, so that nothing can crash it)."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from npuq import _tensors

ROUNDING_MODES = ("double", "single")
OVERFLOW_POLICIES = ("raise", "saturate", "wrap")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def integer(v, name: str, lo: int | None = None, hi: int | None = None) -> int:
    if type(v) is not int:  # the common case skips the (slow) abstract-base-class checks
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def zero_point(v, name: str) -> int:
    return integer(v, name, -128, 127)


def clamp(act_min, act_max) -> tuple[int, int]:
    lo = integer(act_min, "act_min", -128, 127)
    hi = integer(act_max, "act_max", -128, 127)
    if lo > hi:
        raise ValueError(f"act_min ({lo}) must be <= act_max ({hi})")
    return lo, hi


def choice(v, name: str, options) -> str:
    if v not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {v!r}")
    return v


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
    return tuple(integer(x, name, lo, 1 << 20) for x in v)


def padding(v) -> tuple[int, int, int, int]:
    """int, (h, w) or (top, bottom, left, right)."""
    if isinstance(v, Integral) and not isinstance(v, bool):
        v = (v,) * 4
    if isinstance(v, (tuple, list)) and len(v) == 2:
        v = (v[0], v[0], v[1], v[1])
    if not isinstance(v, (tuple, list)) or len(v) != 4:
        raise ValueError(f"padding must be an int, (h, w) or (top, bottom, left, right), got {v!r}")
    return tuple(integer(x, "padding", 0, 1 << 20) for x in v)


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
    return dict(multiplier=m0, exponent=exp, channel_shift=shift, output_zero_point=zp, act_min=lo, act_max=hi,
                rounding=rounding)


def bias(b, channels: int):
    if b is None:
        return None
    if _tensors.is_torch(b):
        b = b.detach().cpu().numpy()
    if not isinstance(b, np.ndarray):
        b = np.asarray(b)
    if b.dtype.kind not in "iu":
        raise TypeError(f"bias must be an integer array (int32 in the accumulator scale), got dtype {b.dtype}; "
                        "quantize it with npuq.quantize_bias")
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
