"""npuq.quant.intmath (the torch implementation of the NPU arithmetic) bit-exact against the native kernels
(npuq.ops) and the numpy oracle (reference_numpy), docs/arithmetic.md sections 3-7."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import npuq
from npuq.quant import intmath as I
from support import reference_numpy as R
from support.helpers import (
    BIAS_MODES,
    DATA_MODES,
    INT32_STRATEGY,
    OVERFLOW_STRATEGY,
    ROUNDING_STRATEGY,
    as_int32_params,
    bias_data,
    clamps,
    int8_data,
    requant_params,
    weight_data,
)

INT32_MIN, INT32_MAX = R.INT32_MIN, R.INT32_MAX


# ------------------------------------------------------------------------------------------------
# conversions between the native ops' NHWC numpy world and torch NCHW tensors
# ------------------------------------------------------------------------------------------------


def nchw(x_nhwc: np.ndarray, *, as_float=False, channels_last=False) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2)
    t = t.to(torch.float32) if as_float else t.to(torch.int64)
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def oihw(w_ohwi: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(w_ohwi)).permute(0, 3, 1, 2).contiguous()


def to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def assert_equal(expected, actual: torch.Tensor, what=""):
    assert actual.dtype == torch.int64, f"{what}: dtype {actual.dtype}"
    actual = actual.numpy()
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not np.array_equal(actual.astype(np.int64), expected.astype(np.int64)):
        bad = np.argwhere(actual != expected)
        i = tuple(int(v) for v in bad[0])
        raise AssertionError(
            f"{what}: {len(bad)} of {expected.size} differ; first at {i}: expected {expected[i]}, got {actual[i]}"
        )


def outcome(fn):
    """fn() or the OverflowError class when it raises one."""
    try:
        return fn()
    except OverflowError:
        return OverflowError


def maybe_tensor(v, draw):
    """Per-channel numpy arrays sometimes as torch tensors, sometimes as lists (all are accepted)."""
    if isinstance(v, np.ndarray):
        form = draw(st.sampled_from(["numpy", "torch", "list"]))
        return {"numpy": v, "torch": torch.from_numpy(v.copy()), "list": v.tolist()}[form]
    return v


@st.composite
def mixed_params(draw, acc, c):
    """requant_params, then multiplier / exponent independently switched between per layer and per channel."""
    p = draw(requant_params(acc, c))
    if draw(st.booleans()):
        p = as_int32_params(p)
    for key in ("multiplier", "exponent"):
        v = p[key]
        mode = draw(st.sampled_from(["keep", "keep", "flip"]))
        if mode == "flip":
            if isinstance(v, np.ndarray):
                p[key] = int(v[draw(st.integers(0, c - 1))])
            else:
                p[key] = np.full(c, int(v), dtype=np.int64)
    if p["channel_shift"] is None and draw(st.integers(0, 3)) == 0:
        p["channel_shift"] = draw(st.integers(0, 15))  # a per-layer shift
    return p


def torch_params(p, draw):
    return {k: maybe_tensor(v, draw) for k, v in p.items()}


def native_params(p, c):
    out = dict(p)
    if isinstance(out["channel_shift"], int):  # the native ops take shifts per channel only
        out["channel_shift"] = np.full(c, out["channel_shift"], dtype=np.int64)
    return out


# ------------------------------------------------------------------------------------------------
# section 3 primitives and the requantization
# ------------------------------------------------------------------------------------------------


@given(st.lists(st.tuples(INT32_STRATEGY, INT32_STRATEGY), min_size=1, max_size=40))
def test_srdhm_matches_oracle(pairs):
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    assert_equal(R.srdhm(a, b), I.srdhm(torch.from_numpy(a), torch.from_numpy(b)), "srdhm")
    assert_equal(R.srdhm(a, b[0]), I.srdhm(torch.from_numpy(a), int(b[0])), "srdhm scalar b")


def test_srdhm_corners():
    t = torch.tensor
    assert I.srdhm(t([INT32_MIN]), INT32_MIN).tolist() == [INT32_MAX]
    assert I.srdhm(t([-1, 1, -3, 3]), 2**30).tolist() == [0, 1, -1, 2]  # ties toward +infinity
    assert I.srdhm(t([INT32_MIN, INT32_MAX]), INT32_MAX).tolist() == R.srdhm([INT32_MIN, INT32_MAX], INT32_MAX).tolist()


@given(st.lists(st.tuples(INT32_STRATEGY, st.one_of(st.integers(0, 40), st.integers(0, 200))), min_size=1, max_size=40))
def test_rdbpot_matches_oracle(pairs):
    h = np.array([p[0] for p in pairs], np.int64)
    n = np.array([p[1] for p in pairs], np.int64)
    assert_equal(R.rdbpot(h, n), I.rdbpot(torch.from_numpy(h), torch.from_numpy(n)), "rdbpot")
    assert_equal(R.rdbpot(h, int(n[0])), I.rdbpot(torch.from_numpy(h), int(n[0])), "rdbpot scalar n")


def test_rdbpot_corners():
    t = torch.tensor
    h = t([INT32_MIN, INT32_MIN, INT32_MIN, INT32_MAX, INT32_MAX, 5, -5, 6, -6, 7, -7, 0, -1])
    n = t([32, 31, 33, 31, 32, 1, 1, 2, 2, 0, 0, 5, 1])
    assert I.rdbpot(h, n).tolist() == [-1, -1, 0, 1, 0, 3, -3, 2, -2, 7, -7, 0, -1]
    assert I.rdbpot(t([INT32_MIN]), 10**6).tolist() == [0]
    # beyond int32 (|h| < 2^62): the shift count never reaches 64
    big = t([2**62 - 1, -(2**62) + 1, 2**61, -(2**61)])
    assert I.rdbpot(big, 62).tolist() == [1, -1, 1, -1]
    assert I.rdbpot(big, 63).tolist() == [0, 0, 0, 0]


@st.composite
def requant_case(draw):
    layout = draw(st.sampled_from(["nc", "nchw", "nhwc"]))
    c = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = {"nc": (draw(st.integers(1, 6)), c), "nchw": (2, c, 2, 3), "nhwc": (2, 3, 2, c)}[layout]
    kind = draw(st.sampled_from(["any", "small", "edge"]))
    if kind == "any":
        acc = rng.integers(INT32_MIN, INT32_MAX + 1, shape, dtype=np.int64)
    elif kind == "small":
        acc = rng.integers(-(2**12), 2**12, shape, dtype=np.int64)
    else:
        acc = rng.choice(np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX]), shape)
    p = draw(mixed_params(acc, c))
    return layout, acc, p, torch_params(p, draw)


@given(requant_case())
def test_requantize_matches_native_and_oracle(case):
    layout, acc, p, tp = case
    c = acc.shape[1] if layout != "nhwc" else acc.shape[-1]
    acc_last = np.moveaxis(acc, 1, -1) if layout == "nchw" else acc  # channels last for the native op
    expected = npuq.ops.requantize(np.ascontiguousarray(acc_last).astype(np.int32), threads=1, **native_params(p, c))
    oracle = R.requantize(acc_last, **native_params(p, c))
    np.testing.assert_array_equal(expected, oracle)
    if layout == "nchw":
        expected = np.moveaxis(expected, -1, 1)
    axis = -1 if layout == "nhwc" else 1
    got = I.requantize(torch.from_numpy(acc), channel_axis=axis, **tp)
    assert_equal(expected, got, f"requantize {layout}")


# the rows of docs/arithmetic.md 3.4: (acc, M0, e, s_c, double, single) before the output zero point
WORKED = [
    (1000, 1690499128, -6, 0, 12, 12),
    (1000, 1690499128, -6, 3, 2, 2),
    (-40, 2**30, -3, 0, -3, -2),
    (-37, 1610612736, -3, 0, -4, -3),
    (-32, 1610612736, -4, 0, -2, -1),
    (5, 2**30, 0, 0, 3, 3),
]


@pytest.mark.parametrize("acc,m0,e,s,double,single", WORKED)
def test_requantize_worked_examples(acc, m0, e, s, double, single):
    for rounding, want in (("double", double), ("single", single)):
        got = I.requantize(torch.tensor([[acc]]), m0, e, [s], rounding=rounding)
        assert got.tolist() == [[want]], rounding
        native = npuq.ops.requantize(
            np.array([[acc]], np.int32), multiplier=m0, exponent=e, channel_shift=np.array([s]), rounding=rounding
        )
        assert native.tolist() == [[want]]
    assert I.requantize(torch.tensor([1000]), 1690499128, -6, output_zero_point=-5).tolist() == [7]


def _grid():
    """Every combination of a few multipliers, exponents (incl. e_c > 0 and e_c < -31) and shifts as
    channels, over dense small accumulators (all rounding ties of small divisors) and the int32 edges."""
    m0s = [0, 2**30, 2**30 + 1, 1610612736, 1690499128, 2**31 - 2, 2**31 - 1]
    es = list(range(-14, 4)) + [-31, -30, 10, 29, 30]
    ss = [0, 1, 3, 15]
    combos = [(m, e, s) for m in m0s for e in es for s in ss]
    m = np.array([c[0] for c in combos], np.int64)
    e = np.array([c[1] for c in combos], np.int64)
    s = np.array([c[2] for c in combos], np.int64)
    acc = np.concatenate(
        [
            np.arange(-700, 701),
            [
                INT32_MIN,
                INT32_MIN + 1,
                INT32_MAX - 1,
                INT32_MAX,
                2**30,
                -(2**30),
                2**24 + 1,
                -(2**24) - 1,
                3 * 2**20,
                -3 * 2**20,
            ],
        ]
    )
    return np.repeat(acc[:, None], len(combos), axis=1), m, e, s


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantize_corner_grid(rounding):
    acc, m, e, s = _grid()
    for zp, lo, hi in ((0, -128, 127), (-7, -7, 127), (100, -128, 127)):
        expected = npuq.ops.requantize(
            acc.astype(np.int32),
            multiplier=m,
            exponent=e,
            channel_shift=s,
            output_zero_point=zp,
            act_min=lo,
            act_max=hi,
            rounding=rounding,
            threads=1,
        )
        got = I.requantize(
            torch.from_numpy(acc),
            torch.from_numpy(m),
            torch.from_numpy(e),
            torch.from_numpy(s),
            zp,
            lo,
            hi,
            rounding=rounding,
        )
        assert_equal(expected, got, f"grid {rounding} zp={zp}")


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantize_raw_value_matches_oracle(rounding):
    """The value before the output clamp, where int32 saturation for e_c > 0, RDBPOT with n >= 32 and t >= 63
    are visible (after the int8 clamp they would be hidden)."""
    acc, m, e, s = _grid()
    expected = R.requantize_raw(acc, m, e, s, rounding)
    # the step-by-step path (every e_c)
    got = I._requantize_raw(torch.from_numpy(acc), torch.from_numpy(m), torch.from_numpy(e - s), rounding)
    assert_equal(expected, got, f"raw {rounding}")
    # the fused one-shift path (the channels with e_c <= 0)
    keep = (e - s) <= 0
    got = I._requantize_value(
        torch.from_numpy(acc[:, keep]), torch.from_numpy(m[keep]), torch.from_numpy((e - s)[keep]), rounding, 1
    )
    assert_equal(expected[:, keep], got, f"fused {rounding}")
    # e_c > 0 saturates: acc = 2^30, M0 = 2^31 - 1, e = 30 (a 2^30-fold multiplier)
    big = torch.tensor([2**30, -(2**30), INT32_MIN])
    raw = I._requantize_raw(big, torch.tensor(2**31 - 1), torch.tensor(30), rounding).tolist()
    # double: a = saturate(acc * 2^30), then SRDHM(a, 2^31 - 1); single: saturate(floor((acc * M0 + 1) / 2))
    assert raw == (
        [2**31 - 2, -(2**31) + 1, -(2**31) + 1] if rounding == "double" else [INT32_MAX, INT32_MIN, INT32_MIN]
    )
    assert raw == R.requantize_raw(big.numpy().reshape(3, 1), 2**31 - 1, 30, None, rounding).ravel().tolist()


def test_flushed_multiplier_gives_zero_point():
    acc = torch.tensor([[INT32_MIN, -5, 0, 7, INT32_MAX]]).T
    for rounding in ("double", "single"):
        assert I.requantize(acc, 0, 30, output_zero_point=-9, rounding=rounding).flatten().tolist() == [-9] * 5
        assert I.requantize(acc, [0], [-31], [15], -9, -3, 10, rounding=rounding).flatten().tolist() == [-3] * 5


# ------------------------------------------------------------------------------------------------
# sections 4 and 5: convolution and fully-connected
# ------------------------------------------------------------------------------------------------


@st.composite
def conv_case(draw):
    kind = draw(st.sampled_from(["general", "general", "depthwise", "pointwise"]))
    if kind == "depthwise":
        c_in = draw(st.integers(1, 6))
        groups, c_out = c_in, c_in * draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        c_in, c_out = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    kh, kw = (1, 1) if kind == "pointwise" else (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    pad = tuple(draw(st.integers(0, ext - 1)) for ext in (eh, eh, ew, ew))  # (top, bottom, left, right)
    h = draw(st.integers(max(1, eh - pad[0] - pad[1]), max(1, eh - pad[0] - pad[1]) + 5))
    w = draw(st.integers(max(1, ew - pad[2] - pad[3]), max(1, ew - pad[2] - pad[3]) + 5))
    n = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = int8_data(rng, (n, h, w, c_in), draw(DATA_MODES))
    wt = weight_data(rng, (c_out, kh, kw, c_in // groups), draw(DATA_MODES))
    bias = bias_data(rng, c_out, draw(BIAS_MODES))
    zx = draw(st.one_of(st.just(0), st.integers(-128, 127)))
    geo = dict(stride=(sh, sw), padding=pad, dilation=(dh, dw), groups=groups)
    acc = R.conv2d_acc(x, wt, bias, input_zero_point=zx, **geo)
    p = draw(mixed_params(R.saturate_int32(acc), c_out))
    overflow = draw(OVERFLOW_STRATEGY)
    form = draw(st.sampled_from(["int", "float", "channels_last", "int8"]))
    return x, wt, bias, zx, geo, acc, p, torch_params(p, draw), overflow, form


def _torch_x(x, form):
    if form == "int8":
        return nchw(x).to(torch.int8)
    return nchw(x, as_float=form == "float", channels_last=form == "channels_last")


@given(conv_case())
def test_conv2d_matches_native_and_oracle(case):
    x, wt, bias, zx, geo, acc, p, tp, overflow, form = case
    c_out = wt.shape[0]
    bias_t = None if bias is None else torch.from_numpy(bias)
    got_acc = I.conv2d_accumulator(
        _torch_x(x, form), zx, oihw(wt), bias_t, geo["stride"], geo["padding"], geo["dilation"], geo["groups"]
    )
    assert_equal(np.moveaxis(acc, -1, 1), got_acc, "conv accumulator vs oracle")

    expected = outcome(
        lambda: npuq.ops.conv2d(
            x, wt, bias, input_zero_point=zx, overflow=overflow, threads=1, **geo, **native_params(p, c_out)
        )
    )

    def simulate():
        a = I.saturate_accumulator(got_acc, overflow, "conv2d")
        return I.requantize(a, channel_axis=1, **tp)

    got = outcome(simulate)
    if expected is OverflowError:
        assert got is OverflowError
    else:
        assert got is not OverflowError
        assert_equal(np.moveaxis(expected, -1, 1), got, "conv2d")


def test_conv2d_naive_oracle_tiny():
    """The accumulators against the literal formula of section 4 (asymmetric padding, dilation, groups)."""
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (1, 5, 4, 4), dtype=np.int8)
    wt = rng.integers(-127, 128, (6, 2, 3, 2), dtype=np.int8)
    bias = rng.integers(-1000, 1000, 6).astype(np.int32)
    geo = dict(stride=(2, 1), padding=(1, 0, 1, 3), dilation=(1, 2), groups=2)
    want = R.conv2d_acc_naive(x, wt, bias, input_zero_point=-17, **geo).astype(np.int64)
    got = I.conv2d_accumulator(nchw(x), -17, oihw(wt), torch.from_numpy(bias), **geo)
    assert_equal(np.moveaxis(want, -1, 1), got, "naive")


def test_conv2d_ambiguous_strides():
    """Tensors whose strides are ambiguous between NCHW and channels_last (a size-1 channel axis) as torch and
    numpy views produce them: torch's own CPU convolution gets some of these wrong, the accumulators must not."""
    rng = np.random.default_rng(8)
    # one output column with a horizontal stride > 1 and a channels_last-like weight of C_in = 1: torch 2.13's
    # F.conv2d returns wrong sums for these (found by the conv2d property test)
    for (h, w), (kh, kw), stride, dil in [
        ((7, 4), (3, 3), (1, 3), (1, 1)),
        ((10, 5), (4, 4), (1, 2), (2, 1)),
        ((6, 6), (4, 4), (1, 3), (1, 1)),
        ((9, 8), (2, 3), (2, 1), (1, 2)),
    ]:
        x = rng.integers(-128, 128, (2, h, w, 1), dtype=np.int8)  # NHWC, one channel
        wt = rng.integers(-127, 128, (1, kh, kw, 1), dtype=np.int8)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # strides (72, 1, 8, 1)
        wtt = torch.from_numpy(wt).permute(0, 3, 1, 2)  # strides (kh*kw, 1, kw, 1): channels_last-like
        want = R.conv2d_acc(x, wt, None, input_zero_point=-7, stride=stride, dilation=dil)
        for xv in (xt, xt.to(torch.int64), xt.to(torch.float32), xt.contiguous(memory_format=torch.channels_last)):
            got = I.conv2d_accumulator(xv, -7, wtt, None, stride, 0, dil)
            assert_equal(np.moveaxis(want, -1, 1), got, f"strides {tuple(xv.stride())} / {tuple(wtt.stride())}")


def test_saturate_accumulator_wrap_and_saturate_match_oracle():
    rng = np.random.default_rng(4)
    v = np.concatenate(
        [
            rng.integers(-(2**62), 2**62, 200),
            rng.integers(-(2**33), 2**33, 200),
            [INT32_MIN - 1, INT32_MIN, INT32_MAX, INT32_MAX + 1, 2**32, -(2**32), 2**63 - 1, -(2**63)],
        ]
    )
    t = torch.from_numpy(v)
    assert_equal(R.wrap_int32(v), I.saturate_accumulator(t, "wrap"), "wrap")
    assert_equal(R.saturate_int32(v), I.saturate_accumulator(t, "saturate"), "saturate")
    ok = torch.tensor([[INT32_MIN, INT32_MAX]], dtype=torch.int32)
    assert I.saturate_accumulator(ok).tolist() == [[INT32_MIN, INT32_MAX]]


@st.composite
def fc_case(draw):
    n, k, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 200)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = int8_data(rng, (n, k), draw(DATA_MODES))
    wt = weight_data(rng, (c_out, k), draw(DATA_MODES))
    bias = bias_data(rng, c_out, draw(BIAS_MODES))
    zx = draw(st.one_of(st.just(0), st.integers(-128, 127)))
    acc = R.fully_connected_acc(x, wt, bias, input_zero_point=zx)
    p = draw(mixed_params(R.saturate_int32(acc), c_out))
    return x, wt, bias, zx, acc, p, torch_params(p, draw), draw(OVERFLOW_STRATEGY), draw(st.booleans())


@given(fc_case())
def test_fully_connected_matches_native_and_oracle(case):
    x, wt, bias, zx, acc, p, tp, overflow, as_float = case
    xt = torch.from_numpy(x).to(torch.float32 if as_float else torch.int64)
    got_acc = I.linear_accumulator(xt, zx, torch.from_numpy(wt), None if bias is None else torch.from_numpy(bias))
    assert_equal(acc, got_acc, "fc accumulator vs oracle")
    expected = outcome(
        lambda: npuq.ops.fully_connected(
            x, wt, bias, input_zero_point=zx, overflow=overflow, threads=1, **native_params(p, wt.shape[0])
        )
    )
    got = outcome(lambda: I.requantize(I.saturate_accumulator(got_acc, overflow, "fully_connected"), **tp))
    if expected is OverflowError:
        assert got is OverflowError
    else:
        assert_equal(expected, got, "fully_connected")


def test_overflow_policies_match_native():
    """docs/arithmetic.md 5: K = 70000 inputs 127 with z_x = -128, weights 127: acc = 2266950000."""
    k = 70000
    x = np.full((1, k), 127, np.int8)
    wt = np.full((1, k), 127, np.int8)
    acc = I.linear_accumulator(torch.from_numpy(x), -128, torch.from_numpy(wt))
    assert acc.tolist() == [[2266950000]]
    rq = dict(multiplier=1610612736, exponent=-25, output_zero_point=3)
    with pytest.raises(OverflowError):
        npuq.ops.fully_connected(x, wt, input_zero_point=-128, overflow="raise", **rq)
    with pytest.raises(OverflowError, match=r"fully_connected.*\(0, 0\).*2266950000"):
        I.saturate_accumulator(acc, "raise", "fully_connected")
    assert I.saturate_accumulator(acc, "saturate").tolist() == [[INT32_MAX]]
    assert I.saturate_accumulator(acc, "wrap").tolist() == [[2266950000 - 2**32]]
    for policy in ("saturate", "wrap"):
        for rounding in ("double", "single"):
            want = npuq.ops.fully_connected(x, wt, input_zero_point=-128, overflow=policy, rounding=rounding, **rq)
            got = I.requantize(I.saturate_accumulator(acc, policy), rounding=rounding, **rq)
            assert_equal(want, got, policy)
            assert got.item() not in (-128, 127)  # the two policies give distinct, unclamped outputs
    # a convolution whose bias pushes one output past int32 (the index names (n, c, h, w))
    xc = torch.full((1, 2, 3, 3), 100)
    wc = torch.ones((3, 2, 1, 1), dtype=torch.int64)
    bias = torch.tensor([0, INT32_MAX - 100, INT32_MIN + 500])
    accc = I.conv2d_accumulator(xc, -28, wc, bias)
    with pytest.raises(OverflowError, match=r"conv2d.*\(0, 1, 0, 0\)"):
        I.saturate_accumulator(accc, "raise", "conv2d")
    for policy in ("saturate", "wrap"):
        want = npuq.ops.conv2d(
            to_nhwc(xc).astype(np.int8),
            to_nhwc(wc).astype(np.int8),
            bias.numpy().astype(np.int32),
            input_zero_point=-28,
            multiplier=2**30,
            exponent=-22,
            overflow=policy,
        )
        got = I.requantize(I.saturate_accumulator(accc, policy), 2**30, -22)
        assert_equal(np.moveaxis(want, -1, 1), got, policy)


# ------------------------------------------------------------------------------------------------
# the exact float fast path
# ------------------------------------------------------------------------------------------------


def test_accumulation_dtype_threshold():
    # z_x = -128: max |x - z_x| = 255; 255 * 65793 = 2^24 - 1 < 2^24 <= 255 * 65794
    below = torch.tensor([[127] * 518 + [7], [1] * 519])
    above = torch.tensor([[127] * 518 + [8], [1] * 519])
    assert I.accumulation_dtype(below, -128) == torch.float32
    assert I.accumulation_dtype(above, -128) == torch.float64
    # the same weights with z_x = 0 (max |x| = 128) are far from the limit
    assert I.accumulation_dtype(above, 0) == torch.float32
    assert I.accumulation_dtype(above.reshape(2, 519, 1, 1), 127) == torch.float64  # 255 again


def test_conv2d_uses_the_float_dtype_it_chose(monkeypatch):
    seen = []
    real_conv = F.conv2d

    def spy(x, w, *args, **kwargs):
        seen.append((x.dtype, w.dtype))
        return real_conv(x, w, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    x = torch.full((1, 519, 1, 1), 127)
    small = torch.tensor([127] * 518 + [7]).reshape(1, 519, 1, 1)
    big = torch.tensor([127] * 518 + [8]).reshape(1, 519, 1, 1)
    a = I.conv2d_accumulator(x, -128, small, None)
    b = I.conv2d_accumulator(x, -128, big, None)
    assert seen == [(torch.float32, torch.float32), (torch.float64, torch.float64)]
    assert a.item() == 255 * (127 * 518 + 7) == 2**24 - 1
    assert b.item() == 255 * (127 * 518 + 8)


@pytest.mark.parametrize("op", ["conv", "linear"])
def test_accumulators_beyond_2_24_are_exact(op):
    """Sums far beyond 2^24: float32 would round them, float64 (chosen) gets them exactly."""
    rng = np.random.default_rng(11)
    k = 4096
    x = np.where(rng.random((2, k)) < 0.9, 127, rng.integers(-128, 128, (2, k))).astype(np.int64)
    wt = (rng.integers(50, 64, (3, k)) * 2 + 1).astype(np.int64)  # odd weights in [101, 127]
    zx = -128
    exact = (x - zx) @ wt.T
    assert exact.min() > 2**26  # every output far beyond 2^24
    xt, wtt = torch.from_numpy(x), torch.from_numpy(wt)
    with I._exact_float_math(torch.device("cpu")):
        naive32 = F.linear((xt - zx).to(torch.float32), wtt.to(torch.float32)).round().to(torch.int64)
    assert not torch.equal(naive32, torch.from_numpy(exact)), "float32 happened to be exact: pick other data"
    assert I.accumulation_dtype(wtt, zx) == torch.float64
    if op == "linear":
        got = I.linear_accumulator(xt, zx, wtt)
        assert_equal(exact, got, "linear > 2^24")
    else:  # the same reduction as a 64-channel 8x8 convolution
        x4 = xt.reshape(2, 64, 8, 8)
        w4 = wtt.reshape(3, 64, 8, 8)
        got = I.conv2d_accumulator(x4, zx, w4, None)
        assert_equal(exact.reshape(2, 3, 1, 1), got, "conv > 2^24")


def test_exact_float_math_restores_settings():
    before = (
        torch.backends.mkldnn.conv.fp32_precision,
        torch.backends.mkldnn.matmul.fp32_precision,
        torch._C._get_nnpack_enabled(),
    )
    old = torch.get_float32_matmul_precision()
    old_matmul = (torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    try:
        torch.set_float32_matmul_precision("medium")  # would allow bf16 matmuls on CPU
        mid = torch.backends.mkldnn.matmul.fp32_precision
        x = torch.full((1, 300), 127)
        w = torch.tensor([[127] * 299 + [1]])
        assert I.linear_accumulator(x, -1, w).item() == 128 * (127 * 299 + 1)
        assert torch.backends.mkldnn.matmul.fp32_precision == mid
    finally:
        torch.set_float32_matmul_precision(old)
        torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision = old_matmul
    assert (torch.backends.mkldnn.conv.fp32_precision, torch._C._get_nnpack_enabled()) == (before[0], before[2])


# ------------------------------------------------------------------------------------------------
# section 6: add
# ------------------------------------------------------------------------------------------------

SCALES = st.floats(1e-4, 1.0, allow_nan=False, allow_infinity=False)


@st.composite
def add_case(draw):
    shape = draw(st.sampled_from([(7,), (2, 3, 4, 5), (3, 1, 2, 2), (1, 64)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = int8_data(rng, shape, draw(DATA_MODES))
    b = int8_data(rng, shape, draw(DATA_MODES))
    ls = draw(st.one_of(st.just(20), st.integers(0, 22)))
    if draw(st.integers(0, 3)):
        sa, sb, so = draw(SCALES), draw(SCALES), draw(SCALES)
        if draw(st.booleans()):
            sb = sa  # equal scales: many exact ties
        so = max(so, 2.0 * max(sa, sb) / 2**ls / 2**29)  # keeps the output multiplier below 2^30
        kw = npuq.ops.add_params(sa, sb, so, left_shift=ls)
    else:  # raw parameters, including flushed multipliers and positive output exponents
        m = st.one_of(st.integers(2**30, 2**31 - 1), st.sampled_from([0, 2**30, 2**31 - 1]))
        kw = dict(
            a_multiplier=draw(m),
            a_exponent=draw(st.integers(-31, 0)),
            b_multiplier=draw(m),
            b_exponent=draw(st.integers(-31, 0)),
            output_multiplier=draw(m),
            output_exponent=draw(st.integers(-31, 30)),
            left_shift=ls,
        )
    zo, lo, hi = draw(clamps())
    kw.update(
        a_zero_point=draw(st.integers(-128, 127)),
        b_zero_point=draw(st.integers(-128, 127)),
        output_zero_point=zo,
        act_min=lo,
        act_max=hi,
        rounding=draw(ROUNDING_STRATEGY),
    )
    return a, b, kw


@given(add_case())
def test_add_matches_native_and_oracle(case):
    a, b, kw = case
    expected = npuq.ops.add(a, b, threads=1, **kw)
    np.testing.assert_array_equal(expected, R.add(a, b, **kw))
    got = I.add(torch.from_numpy(a), torch.from_numpy(b).to(torch.float32), **kw)
    assert_equal(expected, got, "add")


def test_add_ties_exhaustive():
    """Every (a, b) pair with equal and with 2:1 scales: all the rounding ties of both modes."""
    v = np.arange(-128, 128, dtype=np.int8)
    a, b = np.meshgrid(v, v, indexing="ij")
    for sa, sb, so in ((0.02, 0.02, 0.03), (0.04, 0.02, 0.05), (0.5, 0.25, 0.125)):
        for rounding in ("double", "single"):
            kw = dict(
                npuq.ops.add_params(sa, sb, so), a_zero_point=3, b_zero_point=-5, output_zero_point=1, rounding=rounding
            )
            expected = npuq.ops.add(a, b, **kw)
            assert_equal(expected, I.add(torch.from_numpy(a), torch.from_numpy(b), **kw), f"{sa} {sb} {rounding}")


# ------------------------------------------------------------------------------------------------
# section 7: average pooling
# ------------------------------------------------------------------------------------------------


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    pad = (
        draw(st.integers(0, kh - 1)),
        draw(st.integers(0, kh - 1)),
        draw(st.integers(0, kw - 1)),
        draw(st.integers(0, kw - 1)),
    )
    h = draw(st.integers(max(1, kh - pad[0] - pad[1]), kh + 5))
    w = draw(st.integers(max(1, kw - pad[2] - pad[3]), kw + 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = int8_data(rng, (draw(st.integers(1, 2)), h, w, draw(st.integers(1, 5))), draw(DATA_MODES))
    _, lo, hi = draw(clamps())
    kw_ = dict(
        stride=stride,
        padding=pad,
        count_include_pad=draw(st.booleans()),
        input_zero_point=draw(st.integers(-128, 127)),
        act_min=lo,
        act_max=hi,
    )
    return x, (kh, kw), kw_


@given(pool_case())
def test_avg_pool2d_matches_native_and_oracle(case):
    x, kernel, kw = case
    expected = npuq.ops.avg_pool2d(x, kernel, threads=1, **kw)
    np.testing.assert_array_equal(expected, R.avg_pool2d(x, kernel, **kw))
    got = I.avg_pool2d(nchw(x), kernel, **kw)
    assert_equal(np.moveaxis(expected, -1, 1), got, "avg_pool2d")


def test_avg_pool2d_ties():
    # pairs (p, q): the mean (p + q) / 2 is a tie whenever p + q is odd; both signs
    v = np.arange(-128, 128)
    p, q = np.meshgrid(v, v, indexing="ij")
    x = np.stack([p.ravel(), q.ravel()], axis=1).astype(np.int8).reshape(1, 1, -1, 1)  # NHWC (1, 1, 2*65536, 1)
    expected = npuq.ops.avg_pool2d(x, (1, 2))
    got = I.avg_pool2d(nchw(x), (1, 2))
    assert_equal(np.moveaxis(expected, -1, 1), got, "pair ties")
    mean = (p.ravel() + q.ravel()) / 2
    away = np.sign(mean) * np.floor(np.abs(mean) + 0.5)
    np.testing.assert_array_equal(got.flatten().numpy(), away)
    # 3x3 windows cut by padding: counts 4, 6, 9
    x3 = np.arange(-40, 41, 5, dtype=np.int8)[:16].reshape(1, 4, 4, 1)
    for cip in (False, True):
        want = npuq.ops.avg_pool2d(x3, 3, stride=1, padding=1, count_include_pad=cip, input_zero_point=-3)
        assert_equal(
            np.moveaxis(want, -1, 1),
            I.avg_pool2d(nchw(x3), 3, 1, 1, count_include_pad=cip, input_zero_point=-3),
            f"cip={cip}",
        )


@given(
    st.integers(1, 3),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 6),
    DATA_MODES,
    clamps(),
    st.integers(0, 2**32 - 1),
)
def test_global_avg_pool_matches_native_and_oracle(n, h, w, c, mode, clamp, seed):
    x = int8_data(np.random.default_rng(seed), (n, h, w, c), mode)
    _, lo, hi = clamp
    expected = npuq.ops.global_avg_pool(x, act_min=lo, act_max=hi, threads=1)
    np.testing.assert_array_equal(expected, R.global_avg_pool(x, act_min=lo, act_max=hi))
    got = I.global_avg_pool(nchw(x, channels_last=True), lo, hi)
    assert got.shape == (n, c, 1, 1)
    assert_equal(np.moveaxis(expected, -1, 1), got, "global_avg_pool")


# ------------------------------------------------------------------------------------------------
# quantize_input / dequantize
# ------------------------------------------------------------------------------------------------


def quantize_oracle(x, scale, zp):
    """The documented computation in numpy float32 and Python integers."""
    v = np.asarray(x, np.float32) / np.float32(scale)  # IEEE float32 division
    out = []
    for vi in v.ravel().tolist():  # exact doubles of the float32 quotients
        if math.isinf(vi):
            r = 10**9 if vi > 0 else -(10**9)
        else:
            r = math.floor(abs(vi) + 0.5)  # exact in double for a float32 value
            r = r if vi >= 0 else -r
        out.append(min(127, max(-128, r + zp)))
    return np.array(out, np.int64).reshape(v.shape)


@given(
    st.lists(st.floats(-300, 300, width=32), min_size=1, max_size=30),
    st.one_of(st.floats(1e-3, 4.0), st.sampled_from([0.1, 1.0, 0.5, 1 / 255, 0.0078125, 2.0 / 3.0])),
    st.integers(-128, 127),
)
def test_quantize_input_matches_float32_oracle(xs, scale, zp):
    x = np.array(xs, np.float32)
    assert_equal(quantize_oracle(x, scale, zp), I.quantize_input(torch.from_numpy(x), scale, zp), "quantize_input")


def test_quantize_input_corners():
    below_half = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997: x + 0.5 would round up to 1
    x = np.array(
        [
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            below_half,
            -below_half,
            126.5,
            -127.5,
            -128.5,
            1e30,
            -1e30,
            np.inf,
            -np.inf,
            -0.0,
            0.0,
            3 * 2**22 + 0.5,
            2**23 + 1,
        ],
        np.float32,
    )
    want = [1, -1, 2, -2, 3, -3, 0, 0, 127, -128, -128, 127, -128, 127, -128, 0, 0, 127, 127]
    assert I.quantize_input(torch.from_numpy(x), 1.0, 0).tolist() == want
    assert_equal(quantize_oracle(x, 1.0, 0), I.quantize_input(torch.from_numpy(x), 1.0, 0))
    # a true division, not a multiplication by the reciprocal: these differ for scale 0.1 somewhere in here
    xs = np.arange(-2000, 2000, dtype=np.float32) * np.float32(0.0371)
    s = np.float32(0.1)
    assert not np.array_equal(xs / s, xs * (np.float32(1) / s))
    np.testing.assert_array_equal((torch.from_numpy(xs) / torch.tensor(s)).numpy(), xs / s)
    assert_equal(quantize_oracle(xs / 100, 0.1, 4), I.quantize_input(torch.from_numpy(xs / 100), 0.1, 4))
    # float64 input is converted to float32 first; the scale too
    x64 = torch.tensor([0.30000001192092896 * 3, 1 / 3], dtype=torch.float64)
    assert_equal(quantize_oracle(x64.numpy().astype(np.float32), 1 / 30, -1), I.quantize_input(x64, 1 / 30, -1))


def test_dequantize():
    q = torch.arange(-128, 128)
    got = I.dequantize(q, 0.1, -3)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), (np.arange(-128, 128) + 3).astype(np.float32) * np.float32(0.1))
    # per-channel scales broadcast
    q2 = torch.ones((2, 3, 1, 1), dtype=torch.int8)
    s = torch.tensor([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1)
    assert I.dequantize(q2, s, 0).flatten().tolist() == [1.0, 2.0, 4.0] * 2
    # round trip of in-range values
    x = torch.linspace(-1, 1, 101)
    assert torch.equal(
        I.quantize_input(I.dequantize(I.quantize_input(x, 0.01, 2), 0.01, 2), 0.01, 2), I.quantize_input(x, 0.01, 2)
    )


# ------------------------------------------------------------------------------------------------
# argument validation
# ------------------------------------------------------------------------------------------------

ACC = torch.zeros((2, 3), dtype=torch.int64)
X = torch.zeros((1, 2, 4, 4), dtype=torch.int64)
W = torch.ones((3, 2, 3, 3), dtype=torch.int64)

BAD = [
    (lambda: I.requantize(ACC, 2**30 - 1, 0), ValueError, "multiplier"),
    (lambda: I.requantize(ACC, [2**30, 5, 2**30], 0), ValueError, r"multiplier\[1\]"),
    (lambda: I.requantize(ACC, 2**31, 0), ValueError, "multiplier"),
    (lambda: I.requantize(ACC, 2**30, 31), ValueError, "exponent"),
    (lambda: I.requantize(ACC, 2**30, [0, -32, 0]), ValueError, "exponent"),
    (lambda: I.requantize(ACC, 2**30, 0, [0, 16, 0]), ValueError, "channel_shift"),
    (lambda: I.requantize(ACC, 2**30, 0, -1), ValueError, "channel_shift"),
    (lambda: I.requantize(ACC, 2**30, 0, output_zero_point=128), ValueError, "output_zero_point"),
    (lambda: I.requantize(ACC, 2**30, 0, act_min=5, act_max=4), ValueError, "act_min"),
    (lambda: I.requantize(ACC, 2**30, 0, act_max=128), ValueError, "act_max"),
    (lambda: I.requantize(ACC, 2**30, 0, rounding="nearest"), ValueError, "rounding"),
    (lambda: I.requantize(ACC, [2**30] * 2, 0), ValueError, "multiplier"),
    (lambda: I.requantize(ACC, 2**30, np.zeros((3, 1), np.int64)), ValueError, "exponent"),
    (lambda: I.requantize(ACC, 2**30, [0.0, 0.0, 0.0]), TypeError, "exponent"),
    (lambda: I.requantize(ACC, 2**30.0, 0), TypeError, "multiplier"),
    (lambda: I.requantize(ACC, True, 0), TypeError, "multiplier"),
    (lambda: I.requantize(ACC + 2**31, 2**30, 0), ValueError, "acc"),
    (lambda: I.requantize(ACC.numpy(), 2**30, 0), TypeError, "acc"),
    (lambda: I.requantize(ACC.to(torch.float32) + 0.5, 2**30, 0), ValueError, "acc"),
    (lambda: I.requantize(ACC, 2**30, 0, [1, 2, 3], channel_axis=2), ValueError, "channel_shift"),
    (lambda: I.srdhm(torch.tensor([2**31]), 1), ValueError, "a"),
    (lambda: I.rdbpot(torch.tensor([1]), -1), ValueError, "n"),
    (lambda: I.saturate_accumulator(ACC, "clip"), ValueError, "overflow"),
    (lambda: I.conv2d_accumulator(X, 128, W, None, 1, 1), ValueError, "zero_point"),
    (lambda: I.conv2d_accumulator(X, 0, W * -128, None), ValueError, "w_q"),
    (lambda: I.conv2d_accumulator(X + 128, 0, W, None), ValueError, "x_q"),
    (lambda: I.conv2d_accumulator(X[0], 0, W, None), ValueError, "x_q"),
    (lambda: I.conv2d_accumulator(X, 0, W, None, 1, 3), ValueError, "padding"),
    (lambda: I.conv2d_accumulator(X, 0, W, None, 1, (0, 0, 3, 0)), ValueError, "padding"),
    (lambda: I.conv2d_accumulator(X, 0, W, None, 0), ValueError, "stride"),
    (lambda: I.conv2d_accumulator(X, 0, W, None, 1, 0, (1, 0)), ValueError, "dilation"),
    (lambda: I.conv2d_accumulator(X, 0, W, None, 1, 0, 1, 2), ValueError, "groups"),
    (lambda: I.conv2d_accumulator(X, 0, W, torch.zeros(2, dtype=torch.int32)), ValueError, "bias_q"),
    (lambda: I.conv2d_accumulator(X, 0, W, torch.tensor([0, 0, 2**31])), ValueError, "bias_q"),
    (lambda: I.conv2d_accumulator(X[:, :, :2, :2], 0, W, None), ValueError, "empty"),
    (lambda: I.conv2d_accumulator(X.bool(), 0, W, None), TypeError, "x_q"),
    (lambda: I.linear_accumulator(ACC, 0, torch.ones((4, 2))), ValueError, "w_q"),
    (
        lambda: I.add(
            ACC,
            ACC[:1],
            a_zero_point=0,
            a_multiplier=2**30,
            a_exponent=0,
            b_zero_point=0,
            b_multiplier=2**30,
            b_exponent=0,
            output_zero_point=0,
            output_multiplier=2**30,
            output_exponent=0,
        ),
        ValueError,
        "shape",
    ),
    (
        lambda: I.add(
            ACC,
            ACC,
            a_zero_point=0,
            a_multiplier=2**30,
            a_exponent=1,
            b_zero_point=0,
            b_multiplier=2**30,
            b_exponent=0,
            output_zero_point=0,
            output_multiplier=2**30,
            output_exponent=0,
        ),
        ValueError,
        "a_exponent",
    ),
    (
        lambda: I.add(
            ACC,
            ACC,
            a_zero_point=0,
            a_multiplier=2**30,
            a_exponent=0,
            b_zero_point=0,
            b_multiplier=7,
            b_exponent=0,
            output_zero_point=0,
            output_multiplier=2**30,
            output_exponent=0,
        ),
        ValueError,
        "b_multiplier",
    ),
    (
        lambda: I.add(
            ACC,
            ACC,
            a_zero_point=0,
            a_multiplier=2**30,
            a_exponent=0,
            b_zero_point=0,
            b_multiplier=2**30,
            b_exponent=0,
            output_zero_point=0,
            output_multiplier=2**30,
            output_exponent=0,
            left_shift=23,
        ),
        ValueError,
        "left_shift",
    ),
    (lambda: I.avg_pool2d(X, 3, padding=3), ValueError, "padding"),
    (lambda: I.avg_pool2d(X, 3, count_include_pad=1), TypeError, "count_include_pad"),
    (lambda: I.avg_pool2d(X, 0), ValueError, "kernel_size"),
    (lambda: I.avg_pool2d(X, 5), ValueError, "empty"),
    (lambda: I.global_avg_pool(X, act_min=-129), ValueError, "act_min"),
    (lambda: I.quantize_input(X, 0.1, 0), TypeError, "x_float"),
    (lambda: I.quantize_input(X.float(), 0.0, 0), ValueError, "scale"),
    (lambda: I.quantize_input(X.float(), 1e-50, 0), ValueError, "scale"),
    (lambda: I.quantize_input(X.float(), 0.1, -129), ValueError, "zero_point"),
    (lambda: I.quantize_input(torch.tensor([float("nan")]), 0.1, 0), ValueError, "NaN"),
    (lambda: I.dequantize(X, "0.1", 0), TypeError, "scale"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_arguments(i):
    fn, exc, pattern = BAD[i]
    with pytest.raises(exc, match=pattern):
        fn()


# ------------------------------------------------------------------------------------------------
# CUDA: the same results as on the CPU
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    dev = torch.device("cuda")
    for groups, c_in, c_out, k, dil, stride, pad, zx in [
        (1, 16, 8, 3, 1, 1, (1, 1, 1, 1), -128),
        (16, 16, 32, 3, 2, 2, (2, 0, 1, 2), 5),
        (1, 1024, 4, 3, 1, 1, 1, -128),  # float64 path
        (2, 64, 64, 5, 1, 3, (0, 4, 4, 0), 127),
    ]:
        x = torch.from_numpy(rng.integers(-128, 128, (2, c_in, 9, 9)))
        w = torch.from_numpy(rng.integers(-127, 128, (c_out, c_in // groups, k, k)))
        b = torch.from_numpy(rng.integers(-(2**20), 2**20, c_out))
        cpu = I.conv2d_accumulator(x, zx, w, b, stride, pad, dil, groups)
        gpu = I.conv2d_accumulator(x.to(dev), zx, w.to(dev), b.to(dev), stride, pad, dil, groups)
        assert torch.equal(cpu, gpu.cpu())
        m = torch.from_numpy(rng.integers(2**30, 2**31, c_out))
        e = torch.from_numpy(rng.integers(-25, -10, c_out))
        s = torch.from_numpy(rng.integers(0, 4, c_out))
        for rounding in ("double", "single"):
            a = I.saturate_accumulator(cpu, "wrap")
            assert torch.equal(
                I.requantize(a, m, e, s, 3, rounding=rounding),
                I.requantize(a.to(dev), m.to(dev), e.to(dev), s.to(dev), 3, rounding=rounding).cpu(),
            )
    xf = torch.from_numpy(rng.standard_normal(4096).astype(np.float32) * 50)
    for scale in (0.1, 0.37, 1 / 255):
        assert torch.equal(I.quantize_input(xf, scale, -3), I.quantize_input(xf.to(dev), scale, -3).cpu())
    xi = torch.from_numpy(rng.integers(-128, 128, (2, 5, 7, 6)))
    assert torch.equal(I.avg_pool2d(xi, 3, 2, (1, 2, 0, 1)), I.avg_pool2d(xi.to(dev), 3, 2, (1, 2, 0, 1)).cpu())
    kw = dict(npuq.ops.add_params(0.02, 0.03, 0.04), a_zero_point=1, b_zero_point=-2, output_zero_point=0)
    assert torch.equal(I.add(xi, xi.flip(0), **kw), I.add(xi.to(dev), xi.flip(0).to(dev), **kw).cpu())
