"""Independent numpy oracle for npuq's integer arithmetic.

Written only from ``docs/arithmetic.md`` (version 1); it shares no code with the package and never
imports ``npuq``.  Everything is computed in numpy int64 (or Python ints where int64 could overflow),
so every intermediate value is the exact mathematical integer the specification talks about.

Clarity first, speed second: the convolution is an im2col + einsum over int64, which is quick enough
for the small shapes the hypothesis tests draw.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
ARITHMETIC_VERSION = 1

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "quantize_multiplier",
    "add_params",
    "srdhm",
    "rdbpot",
    "saturate_int32",
    "wrap_int32",
    "requantize_raw",
    "requantize",
    "output_size",
    "normalize_padding",
    "conv2d_acc",
    "conv2d_acc_naive",
    "apply_overflow",
    "conv2d",
    "fully_connected",
    "add",
    "avg_pool2d",
    "global_avg_pool",
    "quantize_bias",
    "TABLE_FUNCTIONS",
    "make_table",
    "lut",
    "mul_params",
    "mul",
    "concat_params",
    "concat",
    "rounded_average",
    "mean_params",
    "mean",
    "upsample",
    "pad",
    "channel_shuffle",
    "channel_slice",
    "max_pool2d_output_size",
    "max_pool2d",
]


# --------------------------------------------------------------------------------------------------
# Section 2: quantize_multiplier
# --------------------------------------------------------------------------------------------------


def _llround_nonneg(v: float) -> int:
    """Round a non-negative double half away from zero, exactly (C's llround for v >= 0)."""
    ip = math.floor(v)
    frac = v - ip  # exact: v and ip are doubles of the same binade or ip == 0
    return int(ip) + (1 if frac >= 0.5 else 0)


def quantize_multiplier(real: float, *, return_flushed: bool = False):
    """Section 2.  Returns (M0, e); with return_flushed=True returns (M0, e, flushed)."""
    real = float(real)
    if math.isnan(real) or math.isinf(real) or real <= 0.0:
        raise ValueError(f"real multiplier must be finite and > 0, got {real!r}")
    q, e = math.frexp(real)  # real = q * 2^e, q in [0.5, 1)
    assert 0.5 <= q < 1.0
    m0 = _llround_nonneg(q * 2.0**31)  # q * 2^31 is exact
    if m0 == 2**31:
        m0 = 2**30
        e += 1
    flushed = False
    if e < -31:
        m0, e, flushed = 0, 0, True
    if e > 30:
        raise ValueError(f"real multiplier {real!r} >= 2^30")
    assert m0 == 0 or 2**30 <= m0 <= 2**31 - 1
    if return_flushed:
        return m0, e, flushed
    return m0, e


def quantize_multipliers(reals):
    out = [quantize_multiplier(r) for r in np.asarray(reals, dtype=np.float64).ravel()]
    m0 = np.array([o[0] for o in out], dtype=np.int64)
    e = np.array([o[1] for o in out], dtype=np.int64)
    return m0, e


def add_params(a_scale: float, b_scale: float, output_scale: float, left_shift: int = 20) -> dict:
    """Section 6 parameters."""
    twice_max = 2.0 * max(a_scale, b_scale)
    m0_a, e_a = quantize_multiplier(a_scale / twice_max)
    m0_b, e_b = quantize_multiplier(b_scale / twice_max)
    m0_o, e_o = quantize_multiplier(twice_max / ((2.0**left_shift) * output_scale))
    return dict(
        a_multiplier=m0_a,
        a_exponent=e_a,
        b_multiplier=m0_b,
        b_exponent=e_b,
        output_multiplier=m0_o,
        output_exponent=e_o,
        left_shift=left_shift,
    )


def quantize_bias(real_bias, scale):
    """Section 5 (bias overflow): round(real_bias / scale) half away from zero, int32 or OverflowError."""
    v = np.asarray(real_bias, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
    out = []
    for vi in np.atleast_1d(v).ravel():
        vi = float(vi)
        if not math.isfinite(vi) or abs(vi) >= 2.0**32:
            raise OverflowError(f"bias value {vi} does not fit int32")
        ri = _llround_nonneg(abs(vi))
        ri = ri if vi >= 0 else -ri
        if ri < INT32_MIN or ri > INT32_MAX:
            raise OverflowError(f"bias value {vi} does not fit int32")
        out.append(ri)
    return np.array(out, dtype=np.int64).reshape(np.shape(v))


# --------------------------------------------------------------------------------------------------
# Section 3: primitives
# --------------------------------------------------------------------------------------------------


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def saturate_int32(v) -> np.ndarray:
    return np.clip(_i64(v), INT32_MIN, INT32_MAX)


def wrap_int32(v) -> np.ndarray:
    v = _i64(v)
    return ((v - INT32_MIN) & np.int64(0xFFFFFFFF)) + INT32_MIN


def _trunc_div_pow2(v: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """trunc(v / 2^n) for int64 v (|v| < 2^63)."""
    v = _i64(v)
    return np.where(v >= 0, v >> n, -((-v) >> n))


def srdhm(a, b) -> np.ndarray:
    """Saturating rounding doubling high multiply of two int32 values (section 3.1)."""
    a = _i64(a)
    b = _i64(b)
    assert np.all((a >= INT32_MIN) & (a <= INT32_MAX)) and np.all((b >= INT32_MIN) & (b <= INT32_MAX))
    p = a * b  # |p| <= 2^62: exact in int64
    nudge = np.where(p >= 0, np.int64(2**30), np.int64(1 - 2**30))
    r = _trunc_div_pow2(p + nudge, 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, np.int64(INT32_MAX), r)


def rdbpot(h, n) -> np.ndarray:
    """Rounding divide by power of two, ties away from zero (section 3.1, gemmlowp form).

    h: int64 values (any magnitude below 2^62), n: non-negative shift(s) (> 62 via Python ints).
    """
    h = _i64(h)
    n = _i64(n)
    assert np.all(n >= 0)
    h, n = np.broadcast_arrays(h, n)
    if np.any(n > 62):  # 2^n no longer fits int64: the same formula with Python ints
        out = [_rdbpot_int(int(hi), int(ni)) for hi, ni in zip(h.ravel(), n.ravel())]
        return np.array(out, dtype=np.int64).reshape(h.shape)
    mask = (np.int64(1) << n) - 1
    rem = h & mask  # h mod 2^n, non-negative (two's complement and)
    threshold = (mask >> 1) + (h < 0).astype(np.int64)
    return (h >> n) + (rem > threshold).astype(np.int64)


def _rdbpot_int(h: int, n: int) -> int:
    mask = (1 << n) - 1
    rem = h & mask
    threshold = (mask >> 1) + (1 if h < 0 else 0)
    return (h >> n) + (1 if rem > threshold else 0)


def _broadcast_channel_params(shape_last: int, multiplier, exponent, channel_shift):
    m0 = _i64(multiplier)
    e = _i64(exponent)
    s = np.zeros((), np.int64) if channel_shift is None else _i64(channel_shift)
    for name, arr in (("multiplier", m0), ("exponent", e), ("channel_shift", s)):
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != shape_last):
            raise ValueError(f"{name}: expected a scalar or length-{shape_last} array, got {arr.shape}")
    if not np.all((m0 == 0) | ((m0 >= 2**30) & (m0 <= INT32_MAX))):
        raise ValueError("multiplier out of range")
    if not np.all((e >= -31) & (e <= 30)):
        raise ValueError("exponent out of range")
    if not np.all((s >= 0) & (s <= 15)):
        raise ValueError("channel_shift out of range")
    return m0, e, s


def requantize_raw(acc, multiplier, exponent, channel_shift=None, rounding: str = "double") -> np.ndarray:
    """The value r of section 3.1/3.2 (before the output stage), as int64.

    acc: int32-range integers of any shape, last axis = channel axis for per-channel parameters.
    """
    acc = _i64(acc)
    assert np.all((acc >= INT32_MIN) & (acc <= INT32_MAX)), "acc must be int32"
    last = acc.shape[-1] if acc.ndim else 1
    m0, e, s = _broadcast_channel_params(last, multiplier, exponent, channel_shift)
    e_c = e - s  # in [-46, 30]
    return _multiply(acc, m0, e_c, rounding)


def _multiply(acc, m0, e_c, rounding: str) -> np.ndarray:
    """Sections 3.1 / 3.2 for any int32 multiplier ``m0 >= 0`` (TFLite's mean uses unnormalized ones)."""
    acc, m0, e_c = np.broadcast_arrays(_i64(acc), _i64(m0), _i64(e_c))
    if rounding == "double":
        left = np.maximum(e_c, 0)
        right = np.maximum(-e_c, 0)
        a = saturate_int32(acc << left)  # |acc| * 2^30 <= 2^61: exact
        h = srdhm(a, m0)
        return rdbpot(h, right)
    if rounding == "single":
        t = 31 - e_c  # in [1, 77]
        p = acc * m0  # |p| < 2^62 (acc >= -2^31, m0 <= 2^31 - 1)
        small = t <= 62
        ts = np.where(small, t, 1)
        # for t <= 62: p + 2^(t-1) < 2^62 + 2^61 < 2^63, exact; floor division is an arithmetic shift
        r_small = (p + (np.int64(1) << (ts - 1))) >> ts
        # for t >= 63: |p| < 2^62 <= 2^(t-1), so 0 <= p + 2^(t-1) < 2^t and the floor is 0
        r = np.where(small, r_small, np.int64(0))
        return saturate_int32(r)
    raise ValueError(f"rounding must be 'double' or 'single', got {rounding!r}")


def requantize(
    acc,
    multiplier,
    exponent,
    channel_shift=None,
    output_zero_point: int = 0,
    act_min: int = -128,
    act_max: int = 127,
    rounding: str = "double",
) -> np.ndarray:
    """Section 3 including the output stage 3.3; returns int8."""
    if not (-128 <= act_min <= act_max <= 127):
        raise ValueError("act_min/act_max")
    r = requantize_raw(acc, multiplier, exponent, channel_shift, rounding)
    y = np.clip(r + int(output_zero_point), act_min, act_max)
    return y.astype(np.int8)


def tflite_float_rescale(acc, rescale, output_zero_point: int, act_min: int, act_max: int) -> np.ndarray:
    """Section 16 (TFLite's FULLY_CONNECTED): each accumulator times the double ``rescale[c]`` (one
    correctly rounded product, as Python's float multiply), rounded half away from zero exactly (as a
    fraction), plus the zero point, clamped. ``acc`` (N, C) int64; returns int64."""
    acc = _i64(acc)
    scale = [float(v) for v in rescale]
    out = np.empty(acc.shape, dtype=np.int64)
    for idx, v in np.ndenumerate(acc):
        prod = Fraction(float(int(v)) * scale[idx[-1] if len(scale) > 1 else 0])
        r = math.floor(abs(prod) + Fraction(1, 2))
        out[idx] = min(max((r if prod >= 0 else -r) + int(output_zero_point), act_min), act_max)
    return out


# --------------------------------------------------------------------------------------------------
# Sections 4 and 5: convolution, fully-connected, overflow policy
# --------------------------------------------------------------------------------------------------


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"{name}: expected int or pair")
    return v


def normalize_padding(padding):
    """int, (h, w) or (top, bottom, left, right) -> (top, bottom, left, right)."""
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return p, p, p, p
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4:
        return padding
    raise ValueError("padding: expected int, (h, w) or (top, bottom, left, right)")


def output_size(size: int, k: int, stride: int, dilation: int, pad_lo: int, pad_hi: int) -> int:
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def conv2d_acc(x, weight, bias=None, *, input_zero_point=0, stride=1, padding=0, dilation=1, groups=1):
    """Exact int64 accumulators (bias included) of section 4, shape (N, H_out, W_out, C_out)."""
    x = np.asarray(x)
    weight = np.asarray(weight)
    assert x.ndim == 4 and weight.ndim == 4
    n, h, w, c_in = x.shape
    c_out, kh_, kw_, c_in_g = weight.shape
    assert c_in % groups == 0 and c_out % groups == 0 and c_in // groups == c_in_g
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pb, pl, pr = normalize_padding(padding)
    ho = output_size(h, kh_, sh, dh, pt, pb)
    wo = output_size(w, kw_, sw, dw, pl, pr)
    assert ho >= 1 and wo >= 1
    # padding is real zero: subtract the zero point first, then pad with 0
    xp = np.zeros((n, h + pt + pb, w + pl + pr, c_in), dtype=np.int64)
    xp[:, pt : pt + h, pl : pl + w, :] = x.astype(np.int64) - int(input_zero_point)
    cols = np.empty((n, ho, wo, kh_, kw_, c_in), dtype=np.int64)
    for kh in range(kh_):
        for kw in range(kw_):
            r0, c0 = kh * dh, kw * dw
            cols[:, :, :, kh, kw, :] = xp[:, r0 : r0 + sh * (ho - 1) + 1 : sh, c0 : c0 + sw * (wo - 1) + 1 : sw, :]
    og = c_out // groups
    cols = cols.reshape(n, ho, wo, kh_, kw_, groups, c_in_g)
    wg = weight.astype(np.int64).reshape(groups, og, kh_, kw_, c_in_g)
    acc = np.einsum("nhwabgc,goabc->nhwgo", cols, wg).reshape(n, ho, wo, c_out)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    return acc


def conv2d_acc_naive(x, weight, bias=None, *, input_zero_point=0, stride=1, padding=0, dilation=1, groups=1):
    """The formula of section 4 literally, with Python ints (tiny shapes only; checks conv2d_acc)."""
    x = np.asarray(x)
    weight = np.asarray(weight)
    n_, h, w, c_in = x.shape
    c_out, kh_, kw_, c_in_g = weight.shape
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pb, pl, pr = normalize_padding(padding)
    ho = output_size(h, kh_, sh, dh, pt, pb)
    wo = output_size(w, kw_, sw, dw, pl, pr)
    og = c_out // groups
    zx = int(input_zero_point)
    out = np.zeros((n_, ho, wo, c_out), dtype=object)
    for n in range(n_):
        for oh in range(ho):
            for ow in range(wo):
                for o in range(c_out):
                    g = o // og
                    acc = 0 if bias is None else int(bias[o])
                    for kh in range(kh_):
                        for kw in range(kw_):
                            ih = oh * sh + kh * dh - pt
                            iw = ow * sw + kw * dw - pl
                            for i in range(c_in_g):
                                if 0 <= ih < h and 0 <= iw < w:
                                    xv = int(x[n, ih, iw, g * c_in_g + i])
                                else:
                                    xv = zx
                                acc += (xv - zx) * int(weight[o, kh, kw, i])
                    out[n, oh, ow, o] = acc
    return out


def apply_overflow(acc, overflow: str = "raise", op: str = "conv2d") -> np.ndarray:
    """Section 5: map exact accumulators to int32 according to the policy."""
    acc = _i64(acc)
    if overflow == "raise":
        bad = (acc < INT32_MIN) | (acc > INT32_MAX)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise OverflowError(f"{op}: accumulator at output index {idx} is {int(acc[idx])}")
        return acc
    if overflow == "saturate":
        return saturate_int32(acc)
    if overflow == "wrap":
        return wrap_int32(acc)
    raise ValueError(f"overflow must be 'raise', 'saturate' or 'wrap', got {overflow!r}")


def conv2d(
    x,
    weight,
    bias=None,
    *,
    input_zero_point=0,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    multiplier,
    exponent,
    channel_shift=None,
    output_zero_point=0,
    act_min=-128,
    act_max=127,
    rounding="double",
    overflow="raise",
):
    acc = conv2d_acc(
        x,
        weight,
        bias,
        input_zero_point=input_zero_point,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    acc = apply_overflow(acc, overflow, "conv2d")
    return requantize(acc, multiplier, exponent, channel_shift, output_zero_point, act_min, act_max, rounding)


def fully_connected(
    x,
    weight,
    bias=None,
    *,
    input_zero_point=0,
    multiplier,
    exponent,
    channel_shift=None,
    output_zero_point=0,
    act_min=-128,
    act_max=127,
    rounding="double",
    overflow="raise",
):
    """x: (N, K), weight: (C_out, K); a 1x1 convolution on a 1x1 image."""
    x = np.asarray(x)
    weight = np.asarray(weight)
    acc = (x.astype(np.int64) - int(input_zero_point)) @ weight.astype(np.int64).T
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    acc = apply_overflow(acc, overflow, "fully_connected")
    return requantize(acc, multiplier, exponent, channel_shift, output_zero_point, act_min, act_max, rounding)


def fully_connected_acc(x, weight, bias=None, *, input_zero_point=0):
    acc = (np.asarray(x).astype(np.int64) - int(input_zero_point)) @ np.asarray(weight).astype(np.int64).T
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    return acc


# --------------------------------------------------------------------------------------------------
# Section 6: elementwise add
# --------------------------------------------------------------------------------------------------


def add(
    a,
    b,
    *,
    a_zero_point,
    a_multiplier,
    a_exponent,
    b_zero_point,
    b_multiplier,
    b_exponent,
    output_zero_point,
    output_multiplier,
    output_exponent,
    left_shift=20,
    act_min=-128,
    act_max=127,
    rounding="double",
):
    a = _i64(a)
    b = _i64(b)
    assert a.shape == b.shape
    assert 0 <= left_shift <= 22
    va = (a - int(a_zero_point)) << left_shift
    vb = (b - int(b_zero_point)) << left_shift
    ra = requantize_raw(va.reshape(-1, 1), a_multiplier, a_exponent, None, rounding).reshape(a.shape)
    rb = requantize_raw(vb.reshape(-1, 1), b_multiplier, b_exponent, None, rounding).reshape(b.shape)
    s = ra + rb
    assert np.all((s >= INT32_MIN) & (s <= INT32_MAX))
    r = requantize_raw(s.reshape(-1, 1), output_multiplier, output_exponent, None, rounding).reshape(a.shape)
    return np.clip(r + int(output_zero_point), act_min, act_max).astype(np.int8)


# --------------------------------------------------------------------------------------------------
# Section 7: average pooling
# --------------------------------------------------------------------------------------------------


def _round_div_away(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """trunc((s +- trunc(c/2)) / c): s / c rounded to nearest, ties away from zero (c > 0)."""
    s = _i64(s)
    c = _i64(c)
    half = c // 2
    num = np.where(s > 0, s + half, s - half)
    q = np.abs(num) // c  # trunc for the magnitude
    return np.where(num >= 0, q, -q)


def avg_pool2d(
    x,
    kernel_size,
    *,
    stride=None,
    padding=0,
    count_include_pad=False,
    input_zero_point=0,
    act_min=-128,
    act_max=127,
):
    x = np.asarray(x)
    n, h, w, c = x.shape
    kh_, kw_ = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    pt, pb, pl, pr = normalize_padding(padding)
    assert pt < kh_ and pb < kh_ and pl < kw_ and pr < kw_
    ho = output_size(h, kh_, sh, 1, pt, pb)
    wo = output_size(w, kw_, sw, 1, pl, pr)
    assert ho >= 1 and wo >= 1
    xp = np.zeros((n, h + pt + pb, w + pl + pr, c), dtype=np.int64)
    inside = np.zeros((h + pt + pb, w + pl + pr), dtype=np.int64)
    if count_include_pad:
        xp[:] = int(input_zero_point)
    xp[:, pt : pt + h, pl : pl + w, :] = x.astype(np.int64)
    inside[pt : pt + h, pl : pl + w] = 1
    sums = np.zeros((n, ho, wo, c), dtype=np.int64)
    counts = np.zeros((ho, wo), dtype=np.int64)
    for kh in range(kh_):
        for kw in range(kw_):
            rs = slice(kh, kh + sh * (ho - 1) + 1, sh)
            cs = slice(kw, kw + sw * (wo - 1) + 1, sw)
            if count_include_pad:
                sums += xp[:, rs, cs, :]
            else:
                sums += xp[:, rs, cs, :] * inside[rs, cs][None, :, :, None]
            counts += inside[rs, cs]
    if count_include_pad:
        counts = np.full((ho, wo), kh_ * kw_, dtype=np.int64)
    assert np.all(counts > 0), "a window with no image pixel"
    avg = _round_div_away(sums, counts[None, :, :, None])
    return np.clip(avg, act_min, act_max).astype(np.int8)


def global_avg_pool(x, *, act_min=-128, act_max=127):
    x = np.asarray(x)
    n, h, w, c = x.shape
    s = x.astype(np.int64).sum(axis=(1, 2), keepdims=True)
    avg = _round_div_away(s, np.int64(h * w))
    return np.clip(avg, act_min, act_max).astype(np.int8)


def rounded_average(s, c) -> np.ndarray:
    """Section 7's rounded average ``s / c`` (nearest, ties away from zero), used by sections 13 and 15."""
    return _round_div_away(s, c)


# --------------------------------------------------------------------------------------------------
# Section 9: table activations
# --------------------------------------------------------------------------------------------------


def _exp(t: float) -> float:
    """exp in float64; an overflow is +inf (IEEE), which the formulas below turn into a finite limit."""
    try:
        return math.exp(t)
    except OverflowError:
        return math.inf


def _clip6(r: float) -> float:
    return min(max(r + 3.0, 0.0), 6.0)


# Each formula is evaluated left to right exactly as section 9's table writes it, one float64 operation
# at a time, so that the rounding of every intermediate is the one the specification implies.
_TABLE_FORMULAS = {
    "hardswish": lambda r, p: r * _clip6(r) / 6.0,
    "hardsigmoid": lambda r, p: _clip6(r) / 6.0,
    "sigmoid": lambda r, p: 1.0 / (1.0 + _exp(-r)),
    "tanh": lambda r, p: math.tanh(r),
    "silu": lambda r, p: r / (1.0 + _exp(-r)),
    "gelu": lambda r, p: r * (1.0 + math.erf(r / math.sqrt(2.0))) / 2.0,
    "gelu_tanh": lambda r, p: r * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (r + 0.044715 * r**3))) / 2.0,
    "relu": lambda r, p: max(r, 0.0),
    "relu6": lambda r, p: min(max(r, 0.0), 6.0),
    "clamp": lambda r, p: min(max(r, float(p["lo"])), float(p["hi"])),
    "leaky_relu": lambda r, p: r if r >= 0 else float(p["alpha"]) * r,
}
_TABLE_PARAMS = {"clamp": ("lo", "hi"), "leaky_relu": ("alpha",)}
TABLE_FUNCTIONS = tuple(_TABLE_FORMULAS)


def _round_half_away(u: float) -> int:
    """Exact round half away from zero of a float64 (no ``floor(u + 0.5)`` double rounding)."""
    if math.isinf(u):  # a finite v over a tiny scale; the clamp that follows saturates it
        return -(2**31) if u < 0 else 2**31
    r = _llround_nonneg(abs(u))
    return r if u >= 0 else -r


def make_table(function, input_scale, input_zero_point, output_scale, output_zero_point, **params) -> np.ndarray:
    """Section 9: the 256-entry table (int64 values in [-128, 127]; entry ``q + 128`` is ``f`` at ``q``).

    ``input_scale`` / ``output_scale`` are the program's float32 scales: they are rounded to float32
    (a no-op for a float32 value) and widened to float64 before any arithmetic.
    """
    if function not in _TABLE_FORMULAS:
        raise ValueError(f"function: unknown table function {function!r} (a custom table has no formula)")
    need = _TABLE_PARAMS.get(function, ())
    if set(params) != set(need):
        raise ValueError(f"{function}: expected parameters {need}, got {tuple(params)}")
    f = _TABLE_FORMULAS[function]
    s_x = float(np.float32(input_scale))
    s_y = float(np.float32(output_scale))
    if not (s_x > 0 and s_y > 0 and math.isfinite(s_x) and math.isfinite(s_y)):
        raise ValueError("scales must be finite and > 0")
    z_x, z_y = int(input_zero_point), int(output_zero_point)
    table = np.empty(256, dtype=np.int64)
    for q in range(-128, 128):
        r = s_x * float(q - z_x)
        v = f(r, params)
        if not math.isfinite(v):
            raise ValueError(f"{function}({r!r}) is not finite")
        table[q + 128] = min(max(_round_half_away(v / s_y) + z_y, -128), 127)
    return table


def lut(x, table) -> np.ndarray:
    """Section 9 at run time: ``y = T[x + 128]`` elementwise."""
    x = _i64(x)
    table = _i64(table)
    if table.shape != (256,):
        raise ValueError(f"table: expected 256 entries, got shape {table.shape}")
    if x.size and (x.min() < -128 or x.max() > 127):
        raise ValueError("x: values outside int8")
    return table[x + 128]


# --------------------------------------------------------------------------------------------------
# Section 10: elementwise multiply
# --------------------------------------------------------------------------------------------------


def mul_params(a_scale: float, b_scale: float, output_scale: float) -> dict:
    """Section 10: ``quantize_multiplier(s_a * s_b / s_y)`` (float64, left to right)."""
    m0, e = quantize_multiplier(float(a_scale) * float(b_scale) / float(output_scale))
    return dict(multiplier=m0, exponent=e)


def _mul_operand_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b read at the position of every element of a: itself, or (n, 0, 0, c) for the (N, 1, 1, C) scale."""
    if b.shape == a.shape:
        return b
    if a.ndim == 4 and b.shape == (a.shape[0], 1, 1, a.shape[3]):
        out = np.empty_like(a)
        for h in range(a.shape[1]):
            for w in range(a.shape[2]):
                out[:, h, w, :] = b[:, 0, 0, :]
        return out
    raise ValueError(f"b: shape {b.shape} is neither a's {a.shape} nor (N, 1, 1, C)")


def mul(
    a,
    b,
    *,
    a_zero_point,
    b_zero_point,
    output_zero_point,
    multiplier,
    exponent,
    act_min=-128,
    act_max=127,
    rounding="double",
):
    """Section 10, int64 result of a's shape."""
    a = _i64(a)
    b = _mul_operand_b(a, _i64(b))
    acc = (a - int(a_zero_point)) * (b - int(b_zero_point))
    flat = acc.reshape(-1, 1)  # one channel: the multiplier is per layer
    y = requantize(flat, int(multiplier), int(exponent), None, output_zero_point, act_min, act_max, rounding)
    return y.astype(np.int64).reshape(a.shape)


# --------------------------------------------------------------------------------------------------
# Section 11: concatenation along channels
# --------------------------------------------------------------------------------------------------


def concat_params(input_scales, output_scale: float) -> dict:
    """Section 11: ``quantize_multiplier(s_i / s_y)`` per input."""
    qs = [quantize_multiplier(float(s) / float(output_scale)) for s in input_scales]
    return dict(multipliers=[m for m, _ in qs], exponents=[e for _, e in qs])


def concat(inputs, *, zero_points, multipliers, exponents, output_zero_point, rounding="double"):
    """Section 11 along the last axis; each input requantized by its own multiplier."""
    inputs = [_i64(x) for x in inputs]
    n = len(inputs)
    if n < 2:
        raise ValueError("inputs: concat needs at least 2 inputs")
    if not (len(zero_points) == len(multipliers) == len(exponents) == n):
        raise ValueError("zero_points/multipliers/exponents: one per input")
    lead = inputs[0].shape[:-1]
    if any(x.shape[:-1] != lead for x in inputs):
        raise ValueError("inputs: all axes but the last must agree")
    parts = []
    for x, z, m0, e in zip(inputs, zero_points, multipliers, exponents):
        flat = (x - int(z)).reshape(-1, 1)
        y = requantize(flat, int(m0), int(e), None, output_zero_point, -128, 127, rounding)
        parts.append(y.astype(np.int64).reshape(x.shape))
    return np.concatenate(parts, axis=-1)


# --------------------------------------------------------------------------------------------------
# Section 15: mean over H and W
# --------------------------------------------------------------------------------------------------


def mean_params(input_scale: float, output_scale: float, count: int, tflite_rounding: bool = False) -> dict:
    """Section 15: ``s_x / (n * s_y)`` (npuq) or ``s_x / s_y`` (TFLite, 1 / n folded in at run time)."""
    s_x, s_y = float(input_scale), float(output_scale)
    real = s_x / s_y if tflite_rounding else s_x / (int(count) * s_y)
    m0, e = quantize_multiplier(real)
    return dict(multiplier=m0, exponent=e)


def mean(
    x,
    *,
    input_zero_point,
    output_zero_point,
    multiplier,
    exponent,
    act_min=-128,
    act_max=127,
    tflite_rounding=False,
    rounding="double",
):
    """Section 15 on (N, H, W, C) -> (N, 1, 1, C), int64."""
    x = _i64(x)
    n_img, h, w, c = x.shape
    count = h * w
    if not 1 <= count <= 2**23:
        raise ValueError(f"x: H * W = {count} outside [1, 2^23]")
    if not (-128 <= act_min <= act_max <= 127):
        raise ValueError("act_min/act_max")
    acc = (x - int(input_zero_point)).sum(axis=(1, 2), keepdims=True)  # exact, |acc| <= 255 * 2^23
    if not tflite_rounding:
        y = requantize(acc, int(multiplier), int(exponent), None, output_zero_point, act_min, act_max, rounding)
        return y.astype(np.int64)
    # TFLite: 1 / n as the factor 2^k / n of the multiplier, k = floor(log2 n) capped at 32 and at 31 + e
    k = min(count.bit_length() - 1, 32, 31 + int(exponent))
    m = (int(multiplier) << k) // count  # truncated: may fall below 2^30
    r = _multiply(acc, m, int(exponent) - k, rounding)
    return np.clip(r + int(output_zero_point), act_min, act_max)


# --------------------------------------------------------------------------------------------------
# Sections 12 and 13: data movement, upsampling
# --------------------------------------------------------------------------------------------------


def pad(x, padding, value=0) -> np.ndarray:
    """Section 12: (N, H + t + b, W + l + r, C) with the new positions holding the int8 ``value``."""
    x = _i64(x)
    t, b, l, r = normalize_padding(padding)
    if min(t, b, l, r) < 0:
        raise ValueError("padding: must be non-negative")
    if not -128 <= int(value) <= 127:
        raise ValueError("value: must be int8")
    n, h, w, c = x.shape
    out = np.full((n, h + t + b, w + l + r, c), int(value), dtype=np.int64)
    out[:, t : t + h, l : l + w, :] = x
    return out


def channel_shuffle(x, groups: int) -> np.ndarray:
    """Section 12: input channel ``i * k + j`` goes to output channel ``j * g + i`` (k = C / g)."""
    x = _i64(x)
    c = x.shape[-1]
    g = int(groups)
    if g < 1 or c % g:
        raise ValueError(f"groups: {g} does not divide C = {c}")
    k = c // g
    out = np.empty_like(x)
    for i in range(g):
        for j in range(k):
            out[..., j * g + i] = x[..., i * k + j]
    return out


def channel_slice(x, begin: int, end: int) -> np.ndarray:
    """Section 12: channels ``begin .. end - 1`` of the last axis."""
    x = _i64(x)
    c = x.shape[-1]
    if not 0 <= begin < end <= c:
        raise ValueError(f"begin/end: need 0 <= begin < end <= C, got {begin}, {end}, C = {c}")
    return x[..., begin:end].copy()


def _upsample_axis(o: int, n: int, f: int):
    """Section 13 along one axis: (i0, i1, weight of i0, weight of i1), weights summing to 2f."""
    num = max(2 * o + 1 - f, 0)
    i0 = num // (2 * f)
    lam = num - 2 * f * i0
    i1 = min(i0 + 1, n - 1)
    return i0, i1, 2 * f - lam, lam


def upsample(x, scale, mode="nearest", zero_point=0) -> np.ndarray:
    """Sections 12 (nearest) and 13 (bilinear, half-pixel centres, exact weights) on (N, H, W, C)."""
    x = _i64(x)
    fh, fw = _pair(scale, "scale")
    if fh < 1 or fw < 1:
        raise ValueError("scale: factors must be >= 1")
    n, h, w, c = x.shape
    out = np.empty((n, h * fh, w * fw, c), dtype=np.int64)
    if mode == "nearest":
        for oh in range(h * fh):
            for ow in range(w * fw):
                out[:, oh, ow, :] = x[:, oh // fh, ow // fw, :]
        return out
    if mode != "bilinear":
        raise ValueError(f"mode: expected 'nearest' or 'bilinear', got {mode!r}")
    z = int(zero_point)
    d = 4 * fh * fw
    for oh in range(h * fh):
        i0, i1, wh0, wh1 = _upsample_axis(oh, h, fh)
        for ow in range(w * fw):
            j0, j1, ww0, ww1 = _upsample_axis(ow, w, fw)
            acc = (
                wh0 * ww0 * (x[:, i0, j0, :] - z)
                + wh0 * ww1 * (x[:, i0, j1, :] - z)
                + wh1 * ww0 * (x[:, i1, j0, :] - z)
                + wh1 * ww1 * (x[:, i1, j1, :] - z)
            )
            out[:, oh, ow, :] = z + rounded_average(acc, d)
    return out


# --------------------------------------------------------------------------------------------------
# Section 14: max pooling (with ceil mode)
# --------------------------------------------------------------------------------------------------


def max_pool2d_output_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, ceil_mode: bool) -> int:
    """Section 4's size (floor), or section 14's ceil-mode size."""
    span = size + pad_lo + pad_hi - k
    if not ceil_mode:
        out = span // stride + 1 if span >= 0 else 0
    else:
        out = -((-span) // stride) + 1  # ceil(span / stride) + 1, span may be negative
        if (out - 1) * stride >= size + pad_lo:  # the last window would start in the bottom padding
            out -= 1
    if out < 1:
        raise ValueError("kernel: larger than the padded input")
    return out


def max_pool2d(x, kernel, stride, padding, ceil_mode=False) -> np.ndarray:
    """Section 14 on (N, H, W, C): the max over each window clipped to the image (padding never wins)."""
    x = _i64(x)
    n, h, w, c = x.shape
    kh, kw = _pair(kernel, "kernel")
    sh, sw = _pair(stride, "stride")
    pt, pb, pl, pr = normalize_padding(padding)
    ho = max_pool2d_output_size(h, kh, sh, pt, pb, ceil_mode)
    wo = max_pool2d_output_size(w, kw, sw, pl, pr, ceil_mode)
    out = np.empty((n, ho, wo, c), dtype=np.int64)
    for oh in range(ho):
        r0, r1 = max(oh * sh - pt, 0), min(oh * sh - pt + kh, h)
        for ow in range(wo):
            c0, c1 = max(ow * sw - pl, 0), min(ow * sw - pl + kw, w)
            if r0 >= r1 or c0 >= c1:
                raise ValueError(f"window ({oh}, {ow}) holds no image value")
            out[:, oh, ow, :] = x[:, r0:r1, c0:c1, :].max(axis=(1, 2))
    return out
