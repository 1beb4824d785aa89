"""Real numbers to the integer parameters of the NPU (docs/arithmetic.md sections 2 and 5)."""

from __future__ import annotations

import warnings

import numpy as np

from npuq import _C

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_STATUS_OK, _STATUS_FLUSHED, _STATUS_INVALID, _STATUS_TOO_LARGE = 0, 1, 2, 3


class MultiplierFlushedWarning(UserWarning):
    """A real multiplier below 2^-32 was quantized to zero: the layer outputs its zero point only."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Quantize a real multiplier ``M > 0`` to ``(M0, exponent)`` with ``M ~= M0 * 2**(exponent - 31)``.

    ``M0`` is a Q31 mantissa in ``[2**30, 2**31)`` and ``exponent`` lies in ``[-31, 30]``. Multipliers
    below ``2**-32`` flush to ``(0, 0)`` with a :class:`MultiplierFlushedWarning`.

    Raises:
        TypeError: ``real`` is not a real number.
        ValueError: ``real`` is zero, negative, NaN, infinite, or ``>= 2**30``.
    """
    if isinstance(real, (bool, np.bool_)) or not isinstance(real, (int, float, np.integer, np.floating)):
        raise TypeError(f"real multiplier must be a real number, got {type(real).__name__}")
    value = float(real)
    m0, exponent, status = _C.quantize_multiplier(value)
    if status == _STATUS_INVALID:
        raise ValueError(
            f"real multiplier must be finite and > 0, got {value!r}"
            + (" (a zero multiplier means a zero scale upstream)" if value == 0 else "")
        )
    if status == _STATUS_TOO_LARGE:
        raise ValueError(f"real multiplier {value!r} is too large: it must be < 2**30")
    if status == _STATUS_FLUSHED:
        warnings.warn(
            f"real multiplier {value!r} is below 2**-32 and flushes to zero: every output will be the "
            "output zero point",
            MultiplierFlushedWarning,
            stacklevel=2,
        )
    return int(m0), int(exponent)


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of :func:`quantize_multiplier`: int32 arrays ``(M0, exponent)`` of the same length."""
    arr = np.asarray(reals, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"reals must be one-dimensional, got shape {arr.shape}")
    m0 = np.empty(arr.shape, dtype=np.int32)
    exponent = np.empty(arr.shape, dtype=np.int32)
    for i, value in enumerate(arr):
        m0[i], exponent[i] = quantize_multiplier(float(value))
    return m0, exponent


def _int32(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not _INT32_MIN <= int(v) <= _INT32_MAX:
        raise ValueError(f"{name} must fit int32, got {int(v)}")
    return int(v)


def srdhm(a: int, b: int) -> int:
    """Saturating rounding doubling high multiply of two int32 values (docs/arithmetic.md 3.1)."""
    return int(_C.srdhm(_int32(a, "a"), _int32(b, "b")))


def rdbpot(h: int, n: int) -> int:
    """Rounding divide of an int32 by 2**n, ties away from zero (docs/arithmetic.md 3.1); n in [0, 63]."""
    n = _int32(n, "n")
    if not 0 <= n <= 63:
        raise ValueError(f"n must be in [0, 63], got {n}")
    return int(_C.rdbpot(_int32(h, "h"), n))


def quantize_bias(real_bias, scale) -> np.ndarray:
    """Quantize a real bias to int32 in the accumulator scale ``scale`` (= s_x * s_w, per channel or not).

    Rounds half away from zero. Raises ``OverflowError`` naming the channel when a value does not fit
    int32, e.g. a large bias multiplied by a large weight equalizing shift ``2**s_c``.
    """
    bias = np.asarray(real_bias, dtype=np.float64)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), bias.shape)
    if not np.all(np.isfinite(bias)):
        raise ValueError("bias contains NaN or infinite values")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError("bias scale must be finite and > 0")
    q = bias / scale
    rounded = np.where(q >= 0, np.floor(q + 0.5), -np.floor(-q + 0.5))
    bad = np.flatnonzero((rounded < _INT32_MIN) | (rounded > _INT32_MAX))
    if bad.size:
        i = int(bad[0])
        raise OverflowError(
            f"quantized bias of channel {i} is {rounded.flat[i]:.0f} (real {bias.flat[i]!r} / scale "
            f"{scale.flat[i]!r}), outside int32; {bad.size} channel(s) overflow"
        )
    return rounded.astype(np.int32)


__all__ = [
    "MultiplierFlushedWarning",
    "quantize_bias",
    "quantize_multiplier",
    "quantize_multipliers",
    "rdbpot",
    "srdhm",
]
