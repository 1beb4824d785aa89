"""Bad arguments raise the documented exception (docs/ops.md, Errors) with a message naming the argument;
odd-but-valid inputs (non-contiguous, misaligned) give the same result as the plain ones."""

import re

import numpy as np
import pytest

import npuq
from support import reference_numpy as R

RNG = np.random.default_rng(123)
X = RNG.integers(-128, 128, (1, 5, 5, 4), dtype=np.int8)
W = RNG.integers(-127, 128, (6, 3, 3, 4), dtype=np.int8)
B = RNG.integers(-1000, 1000, 6).astype(np.int32)
KW = dict(padding=1, multiplier=2**30, exponent=-8)
XF = np.ascontiguousarray(X.reshape(1, -1)[:, :36])  # fully-connected input, K = 36
WF = W.reshape(6, -1)  # (6, 36)


def _raises(exc, names, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises exc and the message names one of `names` (whole words)."""
    names = [names] if isinstance(names, str) else names
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    pattern = "|".join(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])" for n in names)
    assert re.search(pattern, msg), f"{exc.__name__} message does not name {names}: {msg!r}"
    return msg


def conv(**over):
    args = dict(x=X, weight=W, bias=B)
    kw = dict(KW)
    for k, v in over.items():
        (args if k in args else kw)[k] = v
    return npuq.ops.conv2d(args["x"], args["weight"], args["bias"], **kw)


def test_baseline_is_valid():
    assert np.array_equal(np.asarray(conv()), R.conv2d(X, W, B, **KW))


# ------------------------------------------------------------------------------------------------
# types and dtypes
# ------------------------------------------------------------------------------------------------


def test_float_weights():
    _raises(TypeError, "weight", conv, weight=W.astype(np.float32))


def test_int16_input():
    _raises(TypeError, "x", conv, x=X.astype(np.int16))


def test_uint8_input():
    _raises(TypeError, "x", conv, x=X.view(np.uint8))


def test_list_input():
    _raises(TypeError, "x", conv, x=X.tolist())


def test_float_bias():
    _raises(TypeError, "bias", conv, bias=B.astype(np.float32))


def test_requantize_wrong_dtype():
    for acc in (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int8)):
        _raises(TypeError, "acc", npuq.ops.requantize, acc, multiplier=2**30, exponent=0)


def test_add_wrong_dtype():
    a = np.zeros((1, 2, 2, 3), np.int8)
    p = npuq.ops.add_params(0.1, 0.1, 0.1)
    _raises(
        TypeError, "b", npuq.ops.add, a, a.astype(np.int32), a_zero_point=0, b_zero_point=0, output_zero_point=0, **p
    )


# ------------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------------


def test_wrong_rank():
    _raises(ValueError, "x", conv, x=X[0])
    _raises(ValueError, "x", conv, x=X[None])
    _raises(ValueError, "weight", conv, weight=W[0])
    _raises(ValueError, "bias", conv, bias=B.reshape(2, 3))
    _raises(ValueError, "x", npuq.ops.fully_connected, X, WF, multiplier=2**30, exponent=0)
    _raises(ValueError, "weight", npuq.ops.fully_connected, XF, W, multiplier=2**30, exponent=0)


def test_mismatched_channels():
    _raises(ValueError, ["weight", "x", "groups", "C_in", "channels"], conv, x=X[..., :3].copy())
    _raises(
        ValueError, ["weight", "x", "K"], npuq.ops.fully_connected, XF, WF[:, :-1].copy(), multiplier=2**30, exponent=0
    )


def test_bias_wrong_length():
    _raises(ValueError, "bias", conv, bias=B[:5].copy())
    _raises(ValueError, "bias", conv, bias=np.zeros(7, np.int32))


def test_per_channel_wrong_length():
    _raises(ValueError, "multiplier", conv, multiplier=np.full(5, 2**30))
    _raises(ValueError, "exponent", conv, exponent=np.full(7, -8))
    _raises(ValueError, "channel_shift", conv, channel_shift=np.zeros(5, np.int32))
    acc = np.zeros((3, 4), np.int32)
    _raises(ValueError, "multiplier", npuq.ops.requantize, acc, multiplier=np.full(3, 2**30), exponent=0)


def test_zero_size_tensors():
    for shape in ((1, 0, 5, 4), (1, 5, 0, 4)):
        _raises(ValueError, "x", conv, x=np.zeros(shape, np.int8))
    _raises(
        ValueError, ["x", "weight"], conv, x=np.zeros((1, 5, 5, 0), np.int8), weight=np.zeros((6, 3, 3, 0), np.int8)
    )
    _raises(
        ValueError, "weight", conv, weight=np.zeros((0, 3, 3, 4), np.int8), bias=np.zeros(0, np.int32), multiplier=2**30
    )
    _raises(ValueError, "weight", conv, weight=np.zeros((6, 0, 3, 4), np.int8))
    _raises(ValueError, "x", npuq.ops.global_avg_pool, np.zeros((1, 0, 3, 2), np.int8))
    _raises(ValueError, "x", npuq.ops.avg_pool2d, np.zeros((1, 3, 0, 2), np.int8), 2)
    _raises(
        ValueError,
        ["x", "weight", "K"],
        npuq.ops.fully_connected,
        np.zeros((2, 0), np.int8),
        np.zeros((3, 0), np.int8),
        multiplier=2**30,
        exponent=0,
    )


def test_empty_batch_is_empty_or_rejected():
    """N = 0 is not spelled out in ops.md: accept a correctly shaped empty result or a ValueError naming x."""
    try:
        out = conv(x=np.zeros((0, 5, 5, 4), np.int8))
    except ValueError as ex:
        assert re.search(r"\bx\b", str(ex)), str(ex)
        return
    assert np.asarray(out).shape == (0, 5, 5, 6) and np.asarray(out).dtype == np.int8


def test_output_smaller_than_one():
    _raises(
        ValueError,
        ["x", "weight", "padding", "kernel", "output", "H", "W"],
        conv,
        x=np.zeros((1, 2, 2, 4), np.int8),
        padding=0,
    )


def test_padding_larger_than_kernel():
    _raises(ValueError, "padding", conv, padding=3)  # 3x3 kernel: each padding must be < 3
    _raises(ValueError, "padding", conv, padding=(0, 0, 0, 3))
    _raises(ValueError, "padding", conv, padding=(3, 0))
    _raises(ValueError, "padding", conv, padding=-1)
    _raises(ValueError, "padding", conv, padding=(1, 1, 1))
    # with dilation 2 the extent is 5: padding 4 is fine, 5 is not
    assert np.array_equal(np.asarray(conv(padding=4, dilation=2)), R.conv2d(X, W, B, **dict(KW, padding=4, dilation=2)))
    _raises(ValueError, "padding", conv, padding=5, dilation=2)
    _raises(ValueError, "padding", npuq.ops.avg_pool2d, X, 2, stride=1, padding=2)
    _raises(ValueError, "padding", npuq.ops.avg_pool2d, X, 3, stride=1, padding=(0, 3, 0, 0))


def test_groups_do_not_divide():
    # C_in = 4 is not a multiple of groups = 3: necessarily also a mismatch between x and weight
    _raises(ValueError, ["groups", "x", "weight"], conv, weight=np.ones((6, 3, 3, 1), np.int8), groups=3)
    _raises(ValueError, "groups", conv, weight=np.ones((5, 3, 3, 2), np.int8), bias=None, groups=2)  # C_out = 5
    _raises(ValueError, "groups", conv, groups=0)
    _raises(ValueError, "groups", conv, groups=-1)


def test_bad_stride_dilation():
    _raises(ValueError, "stride", conv, stride=0)
    _raises(ValueError, "stride", conv, stride=(1, -1))
    _raises(ValueError, "dilation", conv, dilation=0)
    _raises(ValueError, "stride", npuq.ops.avg_pool2d, X, 2, stride=0)
    _raises(ValueError, "kernel_size", npuq.ops.avg_pool2d, X, 0)


# ------------------------------------------------------------------------------------------------
# value ranges
# ------------------------------------------------------------------------------------------------


def test_weight_minus_128():
    w = W.copy()
    w[2, 1, 1, 3] = -128
    _raises(ValueError, "weight", conv, weight=w)
    _raises(ValueError, "weight", npuq.ops.Conv2d, w, B, **KW)
    _raises(ValueError, "weight", npuq.ops.fully_connected, XF, w.reshape(6, -1), multiplier=2**30, exponent=0)


@pytest.mark.parametrize("shift", [16, -1, 255, 256])
def test_channel_shift_out_of_range(shift):
    s = np.zeros(6, np.int64)
    s[4] = shift
    _raises(ValueError, "channel_shift", conv, channel_shift=s)
    acc = np.zeros((2, 6), np.int32)
    _raises(ValueError, "channel_shift", npuq.ops.requantize, acc, multiplier=2**30, exponent=0, channel_shift=s)


@pytest.mark.parametrize("e", [-32, 31, -1000, 2**31])
def test_exponent_out_of_range(e):
    _raises(ValueError, "exponent", conv, exponent=e)
    ea = np.full(6, -8, np.int64)
    ea[1] = e
    _raises(ValueError, "exponent", conv, exponent=ea)
    _raises(ValueError, "exponent", npuq.ops.requantize, np.zeros(3, np.int32), multiplier=2**30, exponent=e)


@pytest.mark.parametrize("m0", [1, -1, 2**30 - 1, 2**31, -(2**31), 2**40])
def test_multiplier_out_of_range(m0):
    _raises(ValueError, "multiplier", conv, multiplier=m0)
    ma = np.full(6, 2**30, np.int64)
    ma[5] = m0
    _raises(ValueError, "multiplier", conv, multiplier=ma)
    _raises(ValueError, "multiplier", npuq.ops.requantize, np.zeros(3, np.int32), multiplier=m0, exponent=0)


def test_multiplier_edges_accepted():
    for m0 in (0, 2**30, 2**31 - 1):
        assert np.array_equal(np.asarray(conv(multiplier=m0)), R.conv2d(X, W, B, **dict(KW, multiplier=m0)))
    for e in (-31, 30):
        assert np.array_equal(np.asarray(conv(exponent=e)), R.conv2d(X, W, B, **dict(KW, exponent=e)))


@pytest.mark.parametrize("real", [0.0, -0.0, -0.5, float("nan"), float("inf"), float("-inf"), 2.0**30])
def test_quantize_multiplier_bad_real(real):
    with pytest.raises(ValueError):
        npuq.quantize_multiplier(real)


def test_quantize_multiplier_bad_type():
    with pytest.raises((TypeError, ValueError)):
        npuq.quantize_multiplier("0.5")


def test_act_range():
    _raises(ValueError, ["act_min", "act_max"], conv, act_min=10, act_max=9)
    _raises(ValueError, "act_min", conv, act_min=-129)
    _raises(ValueError, "act_max", conv, act_max=128)
    _raises(
        ValueError,
        ["act_min", "act_max"],
        npuq.ops.requantize,
        np.zeros(3, np.int32),
        multiplier=2**30,
        exponent=0,
        act_min=5,
        act_max=4,
    )
    _raises(ValueError, ["act_min", "act_max"], npuq.ops.global_avg_pool, X, act_min=1, act_max=0)
    # act_min == act_max is valid
    assert np.all(np.asarray(conv(act_min=7, act_max=7)) == 7)


def test_zero_points_out_of_range():
    _raises(ValueError, "input_zero_point", conv, input_zero_point=128)
    _raises(ValueError, "input_zero_point", conv, input_zero_point=-129)
    _raises(ValueError, "output_zero_point", conv, output_zero_point=128)
    p = npuq.ops.add_params(0.1, 0.1, 0.1)
    a = np.zeros((1, 2, 2, 3), np.int8)
    _raises(ValueError, "a_zero_point", npuq.ops.add, a, a, a_zero_point=200, b_zero_point=0, output_zero_point=0, **p)


def test_add_bad_arguments():
    a = np.zeros((1, 2, 2, 3), np.int8)
    p = npuq.ops.add_params(0.1, 0.1, 0.1)
    base = dict(p, a_zero_point=0, b_zero_point=0, output_zero_point=0)
    _raises(ValueError, ["a", "b", "shape"], npuq.ops.add, a, np.zeros((1, 2, 2, 4), np.int8), **base)
    _raises(ValueError, "left_shift", npuq.ops.add, a, a, **dict(base, left_shift=23))
    _raises(ValueError, "left_shift", npuq.ops.add, a, a, **dict(base, left_shift=-1))
    _raises(ValueError, "a_multiplier", npuq.ops.add, a, a, **dict(base, a_multiplier=5))
    _raises(ValueError, "output_exponent", npuq.ops.add, a, a, **dict(base, output_exponent=31))
    # arithmetic.md 6: the input exponents must be <= 0
    _raises(ValueError, "a_exponent", npuq.ops.add, a, a, **dict(base, a_exponent=1))
    _raises(ValueError, "b_exponent", npuq.ops.add, a, a, **dict(base, b_exponent=30))


def test_accumulator_overflow():
    x = np.full((1, 1, 1, 2), 127, np.int8)
    w = np.full((2, 1, 1, 2), 127, np.int8)
    bias = np.array([R.INT32_MAX - 2 * 127 * 127 + 1, 0], np.int32)  # channel 0: exactly 2^31
    msg = _raises(OverflowError, "conv2d", npuq.ops.conv2d, x, w, bias, multiplier=2**30, exponent=0)
    assert "2147483648" in msg.replace(",", "").replace("_", ""), msg
    _raises(OverflowError, "conv2d", npuq.ops.reference.conv2d, x, w, bias, multiplier=2**30, exponent=0)
    _raises(OverflowError, "conv2d", npuq.ops.Conv2d(w, bias, multiplier=2**30, exponent=0), x)
    bias[0] -= 1  # exactly 2^31 - 1: fine
    out = npuq.ops.conv2d(x, w, bias, multiplier=2**30, exponent=0)
    assert np.array_equal(np.asarray(out), R.conv2d(x, w, bias, multiplier=2**30, exponent=0))


def test_bad_strings():
    _raises(ValueError, "rounding", conv, rounding="nearest")
    _raises(ValueError, "rounding", conv, rounding="DOUBLE ")
    _raises(ValueError, "overflow", conv, overflow="clip")
    _raises(
        ValueError,
        "rounding",
        npuq.ops.requantize,
        np.zeros(3, np.int32),
        multiplier=2**30,
        exponent=0,
        rounding="banker",
    )
    _raises(ValueError, "overflow", npuq.ops.fully_connected, XF, WF, multiplier=2**30, exponent=0, overflow="ignore")


@pytest.mark.parametrize("threads", [0, -1])
def test_bad_threads(threads):
    _raises(ValueError, "threads", conv, threads=threads)
    _raises(
        ValueError, "threads", npuq.ops.requantize, np.zeros(3, np.int32), multiplier=2**30, exponent=0, threads=threads
    )
    _raises(ValueError, "threads", npuq.ops.global_avg_pool, X, threads=threads)


# ------------------------------------------------------------------------------------------------
# odd but valid memory: non-contiguous, negative strides, Fortran order, misaligned
# ------------------------------------------------------------------------------------------------


def test_non_contiguous_numpy():
    expected = R.conv2d(X, W, B, **KW)
    big = np.zeros((1, 10, 10, 8), np.int8)
    big[:, ::2, ::2, ::2] = X
    xs = big[:, ::2, ::2, ::2]
    assert not xs.flags.c_contiguous
    ws = np.asfortranarray(W)
    assert not ws.flags.c_contiguous
    bs = np.zeros(12, np.int32)
    bs[::2] = B
    bs = bs[::2]
    xr = X[:, ::-1][:, ::-1]  # negative strides
    for args in ((xs, W, B), (X, ws, B), (X, W, bs), (xr, ws, bs)):
        assert np.array_equal(np.asarray(npuq.ops.conv2d(*args, **KW)), expected)
    # non-contiguous per-channel parameter arrays
    m = np.repeat(np.arange(2**30, 2**30 + 6, dtype=np.int64), 2)[::2]
    e = np.repeat(np.full(6, -8), 2)[::2]
    kw = dict(KW, multiplier=m, exponent=e)
    assert np.array_equal(np.asarray(npuq.ops.conv2d(xs, ws, bs, **kw)), R.conv2d(X, W, B, **kw))
    # fc and requantize on transposed views
    xf = np.ascontiguousarray(XF.repeat(3, 0).T).T  # Fortran order
    wf = WF[:, ::-1]  # negative stride
    assert np.array_equal(
        np.asarray(npuq.ops.fully_connected(xf, wf, multiplier=2**30, exponent=-6)),
        R.fully_connected(xf, wf, multiplier=2**30, exponent=-6),
    )
    acc = np.arange(-60, 60, dtype=np.int32).reshape(6, 20).T
    assert np.array_equal(
        np.asarray(npuq.ops.requantize(acc, multiplier=2**30, exponent=-1)), R.requantize(acc, 2**30, -1)
    )


def test_misaligned_bias():
    buf = np.zeros(4 * 6 + 1, np.uint8)
    buf[1:] = B.view(np.uint8)
    bm = np.frombuffer(buf.tobytes(), dtype=np.int32, count=6, offset=1)
    assert bm.tolist() == B.tolist()
    expected = R.conv2d(X, W, B, **KW)
    try:
        out = npuq.ops.conv2d(X, W, bm, **KW)
    except (TypeError, ValueError) as ex:
        assert re.search(r"\bbias\b", str(ex)), f"misaligned bias rejected without naming it: {ex}"
    else:
        assert np.array_equal(np.asarray(out), expected)
    # a misaligned int32 accumulator for requantize, and misaligned per-channel parameter arrays
    acc_ok = np.arange(-60, 60, dtype=np.int32).reshape(6, 20).T.copy()
    buf = np.zeros(acc_ok.nbytes + 1, np.uint8)
    buf[1:] = acc_ok.reshape(-1).view(np.uint8)
    acc = np.frombuffer(buf.tobytes(), np.int32, count=acc_ok.size, offset=1).reshape(acc_ok.shape)
    try:
        out = npuq.ops.requantize(acc, multiplier=2**30, exponent=-1)
    except (TypeError, ValueError) as ex:
        assert re.search(r"\bacc\b", str(ex)), f"misaligned acc rejected without naming it: {ex}"
    else:
        assert np.array_equal(np.asarray(out), R.requantize(acc_ok, 2**30, -1))
    m_ok = np.arange(2**30, 2**30 + 6, dtype=np.int32)
    buf = np.zeros(m_ok.nbytes + 1, np.uint8)
    buf[1:] = m_ok.view(np.uint8)
    m = np.frombuffer(buf.tobytes(), np.int32, count=6, offset=1)
    try:
        out = npuq.ops.conv2d(X, W, B, **dict(KW, multiplier=m))
    except (TypeError, ValueError) as ex:
        assert re.search(r"\bmultiplier\b", str(ex)), f"misaligned multiplier rejected without naming it: {ex}"
    else:
        assert np.array_equal(np.asarray(out), R.conv2d(X, W, B, **dict(KW, multiplier=m_ok)))


def test_misaligned_activations_and_read_only():
    buf = np.zeros(X.size + 1, np.uint8)
    buf[1:] = X.reshape(-1).view(np.uint8)
    xm = np.frombuffer(buf.tobytes(), dtype=np.int8, count=X.size, offset=1).reshape(X.shape)
    assert not xm.flags.writeable
    expected = R.conv2d(X, W, B, **KW)
    assert np.array_equal(np.asarray(npuq.ops.conv2d(xm, W, B, **KW)), expected)
    acc = np.frombuffer(np.arange(-50, 50, dtype=np.int32).tobytes(), np.int32).reshape(4, 25)
    assert np.array_equal(
        np.asarray(npuq.ops.requantize(acc, multiplier=2**30, exponent=-2)), R.requantize(acc, 2**30, -2)
    )


def test_inputs_not_modified():
    x, w, b = X.copy(), W.copy(), B.copy()
    conv(x=x, weight=w, bias=b)
    assert np.array_equal(x, X) and np.array_equal(w, W) and np.array_equal(b, B)


def test_non_native_byte_order():
    """'>i4' / '>i1'-style arrays hold the right values in a different layout: use them or reject them."""
    expected = R.conv2d(X, W, B, **KW)
    b_be = B.astype(">i4")
    assert b_be.tolist() == B.tolist()
    try:
        out = npuq.ops.conv2d(X, W, b_be, **KW)
    except (TypeError, ValueError) as ex:
        assert re.search(r"\bbias\b", str(ex)), f"big-endian bias rejected without naming it: {ex}"
    else:
        assert np.array_equal(np.asarray(out), expected)
    acc = np.arange(-50, 50, dtype=">i4").reshape(4, 25)
    try:
        out = npuq.ops.requantize(acc, multiplier=2**30, exponent=-2)
    except (TypeError, ValueError) as ex:
        assert re.search(r"\bacc\b", str(ex)), f"big-endian acc rejected without naming it: {ex}"
    else:
        assert np.array_equal(np.asarray(out), R.requantize(acc.astype(np.int32), 2**30, -2))


def test_multiplier_unusual_dtypes():
    # values that only look in range after a narrowing cast must still be rejected
    _raises(ValueError, "multiplier", conv, multiplier=np.full(6, 2**31, np.uint32))
    _raises(ValueError, "multiplier", conv, multiplier=np.full(6, 2**32 + 2**30, np.uint64))
    _raises(ValueError, "exponent", conv, exponent=np.full(6, 2**32 - 8, np.int64))
    _raises(ValueError, "channel_shift", conv, channel_shift=np.full(6, 256 + 3, np.int64))
    # a real multiplier passed where the integer M0 belongs
    _raises((TypeError, ValueError), "multiplier", conv, multiplier=0.5)
    _raises((TypeError, ValueError), "multiplier", conv, multiplier=np.full(6, 0.5))
    # small integer dtypes holding valid values are fine
    out = conv(exponent=np.full(6, -8, np.int8), channel_shift=np.zeros(6, np.uint8))
    assert np.array_equal(np.asarray(out), R.conv2d(X, W, B, **KW))
