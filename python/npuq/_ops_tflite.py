"""TFLite's floating-point requantization of FULLY_CONNECTED (docs/arithmetic.md 16), for imported models.

LiteRT's reference int8 FULLY_CONNECTED does not requantize with the integer multiplier: it scales the
exact int32 accumulator by the double ``s_x s_w[c] / s_y`` and rounds once, half away from zero. An NPU
never does this; the emulator does it for TFLite models imported with ``fc_rescale="tflite"`` so that
they match LiteRT bit for bit. The accumulation is exact (float64 holds every sum of at most 2^37
products of 9-bit by 8-bit integers), so only the documented rescale can differ from the integer path.
"""

from __future__ import annotations

import numpy as np

from npuq import _validate as V

__all__ = ["fully_connected_tflite"]

_INT32 = (-(2**31), 2**31 - 1)


def fully_connected_tflite(
    x,
    weight,
    bias=None,
    *,
    input_zero_point: int = 0,
    rescale,
    output_zero_point: int = 0,
    act_min: int = -128,
    act_max: int = 127,
    overflow: str = "raise",
) -> np.ndarray:
    """``clamp(round_half_away(acc * rescale[c]) + z_y, act_min, act_max)`` with ``acc = bias[c] + sum_k
    (x[n, k] - z_x) w[c, k]`` in int32 (``overflow`` as in docs/arithmetic.md 5). ``x`` (N, K) int8,
    ``weight`` (C_out, K) int8, ``bias`` (C_out,) int32 or None, ``rescale`` one real or C_out reals (the
    doubles ``s_x s_w[c] / s_y``). numpy arrays only; returns (N, C_out) int8."""
    x = np.asarray(x)
    weight = np.asarray(weight)
    if x.dtype != np.int8 or x.ndim != 2:
        raise ValueError(f"x must be an (N, K) int8 array, got {x.dtype} {x.shape}")
    if weight.dtype != np.int8 or weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be a (C_out, {x.shape[1]}) int8 array, got {weight.dtype} {weight.shape}")
    c_out = weight.shape[0]
    b = np.zeros(c_out, np.int64) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1)
    if b.shape != (c_out,):
        raise ValueError(f"bias must have {c_out} values, got {b.size}")
    scale = np.asarray(rescale, dtype=np.float64).reshape(-1)
    if scale.size not in (1, c_out) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"rescale must be 1 or {c_out} finite reals > 0")
    z_x = V.zero_point(input_zero_point, "input_zero_point")
    z_y = V.zero_point(output_zero_point, "output_zero_point")
    if not -128 <= act_min <= act_max <= 127:
        raise ValueError(f"need -128 <= act_min <= act_max <= 127, got {act_min}, {act_max}")
    # exact: every partial sum is an integer below 2^53 in magnitude
    acc = (x.astype(np.float64) - z_x) @ weight.astype(np.float64).T + b.astype(np.float64)
    if acc.size and (acc.min() < _INT32[0] or acc.max() > _INT32[1]):
        if overflow == "raise":
            raise OverflowError("fully_connected: an int32 accumulator overflows (docs/arithmetic.md 5)")
        if overflow == "saturate":
            acc = np.clip(acc, *_INT32)
        else:  # wrap: two's complement, as the int32 adder
            acc = ((acc.astype(np.int64) - _INT32[0]) % 2**32 + _INT32[0]).astype(np.float64)
    prod = acc * scale  # one correctly rounded double product, as TFLite's
    t = np.trunc(prod)
    frac = prod - t  # exact
    r = np.clip(t + (frac >= 0.5) - (frac <= -0.5), -(2.0**40), 2.0**40).astype(np.int64)
    return np.clip(r + z_y, act_min, act_max).astype(np.int8)
