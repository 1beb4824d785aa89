"""Hand-computed checks of every arithmetic pitfall listed in docs/arithmetic.md.

Each expected value below is worked out by hand in the comment next to it (and checked against the
oracle, which tests/ops/test_reference_self.py validates independently).
"""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuq
from support import reference_numpy as R

INT32_MIN, INT32_MAX = R.INT32_MIN, R.INT32_MAX


def _rq(acc, m0, e, s=0, rounding="double", **kw):
    a = np.array([acc], np.int32)
    out = npuq.ops.requantize(a, multiplier=m0, exponent=e, channel_shift=np.array([s]), rounding=rounding, **kw)
    return int(np.asarray(out)[0])


# ------------------------------------------------------------------------------------------------
# the fixed-point primitives, where the package exposes them
# ------------------------------------------------------------------------------------------------


def _find_primitive(name):
    for modname in ("fixedpoint", "_C", "_core", "_npuq", "_native", "ops"):
        mod = getattr(npuq, modname, None)
        if mod is not None and hasattr(mod, name):
            return getattr(mod, name)
    return getattr(npuq, name, None)


def test_srdhm_primitive():
    """SRDHM(INT32_MIN, INT32_MIN) saturates to INT32_MAX: unreachable through requantize (M0 >= 0)."""
    srdhm = _find_primitive("srdhm")
    if srdhm is None:
        # still pin the oracle: the requantize tests below then cover every reachable SRDHM input
        assert int(R.srdhm(INT32_MIN, INT32_MIN)) == INT32_MAX
        pytest.skip("npuq exposes no srdhm primitive; checked in the oracle only")
    assert int(srdhm(INT32_MIN, INT32_MIN)) == INT32_MAX
    assert int(srdhm(-1, 2**30)) == 0
    assert int(srdhm(1, 2**30)) == 1
    assert int(srdhm(-3, 2**30)) == -1
    assert int(srdhm(1000, 1690499128)) == 787
    assert int(srdhm(INT32_MIN, 2**30)) == -(2**30)


def test_rdbpot_primitive():
    rdbpot = _find_primitive("rdbpot")
    if rdbpot is None:
        assert int(R.rdbpot(INT32_MIN, 32)) == -1
        pytest.skip("npuq exposes no rdbpot primitive; checked in the oracle only")
    assert int(rdbpot(787, 6)) == 12
    assert int(rdbpot(787, 9)) == 2
    assert int(rdbpot(-3, 1)) == -2  # -1.5 -> away from zero
    assert int(rdbpot(5, 0)) == 5
    assert int(rdbpot(INT32_MIN, 32)) == -1  # -0.5 -> -1
    assert int(rdbpot(INT32_MIN + 1, 32)) == 0
    assert int(rdbpot(INT32_MAX, 40)) == 0


@given(
    st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX])),
    st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from([INT32_MIN, 0, 2**30, INT32_MAX])),
)
def test_srdhm_primitive_matches_oracle(a, b):
    srdhm = _find_primitive("srdhm")
    if srdhm is None:
        pytest.skip("npuq exposes no srdhm primitive")
    assert int(srdhm(a, b)) == int(R.srdhm(a, b))


@given(
    st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX])),
    st.integers(0, 63),
)
def test_rdbpot_primitive_matches_oracle(h, n):
    rdbpot = _find_primitive("rdbpot")
    if rdbpot is None:
        pytest.skip("npuq exposes no rdbpot primitive")
    assert int(rdbpot(h, n)) == int(R.rdbpot(h, n))


# ------------------------------------------------------------------------------------------------
# section 3.4: worked example and the double-vs-single table, through npuq.ops.requantize
# ------------------------------------------------------------------------------------------------


def test_worked_example():
    m0, e = (int(v) for v in npuq.quantize_multiplier(0.0123))
    assert (m0, e) == (1690499128, -6)
    for rounding in ("double", "single"):
        assert _rq(1000, m0, e, rounding=rounding) == 12
        assert _rq(1000, m0, e, rounding=rounding, output_zero_point=-5) == 7
        assert _rq(1000, m0, e, s=3, rounding=rounding) == 2  # WESS: e_c = -9


@pytest.mark.parametrize(
    "acc, m0, e, double, single",
    [
        (-40, 2**30, -3, -3, -2),  # -2.5: RDBPOT away from zero, single toward +inf
        (-37, 1610612736, -3, -4, -3),  # -3.46875: SRDHM -27.75 -> -28, then -3.5 -> -4
        (-32, 1610612736, -4, -2, -1),  # -1.5: tie
        (5, 2**30, 0, 3, 3),  # 2.5: positive ties agree
    ],
)
def test_double_vs_single_table(acc, m0, e, double, single):
    assert _rq(acc, m0, e, rounding="double") == double
    assert _rq(acc, m0, e, rounding="single") == single
    # the same rows through the WESS shift: e = e' + s gives e_c = e'
    assert _rq(acc, m0, e + 5, s=5, rounding="double") == double
    assert _rq(acc, m0, e + 5, s=5, rounding="single") == single


# ------------------------------------------------------------------------------------------------
# shifts at the edges of the exponent range
# ------------------------------------------------------------------------------------------------


def test_right_shift_31_tie():
    # acc * M = -2^31 * 2^30 * 2^(-31-31) = -0.5.  double: SRDHM(-2^31, 2^30) = -2^30, RDBPOT(-2^30, 31) = -1
    # (away from zero); single: t = 62, floor((-2^61 + 2^61) / 2^62) = 0.
    assert _rq(INT32_MIN, 2**30, -31, rounding="double") == -1
    assert _rq(INT32_MIN, 2**30, -31, rounding="single") == 0
    # the same through e = -16, s_c = 15
    assert _rq(INT32_MIN, 2**30, -16, s=15, rounding="double") == -1
    assert _rq(INT32_MIN, 2**30, -16, s=15, rounding="single") == 0


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_right_shift_beyond_32(rounding):
    # e_c = -46 (e = -31, s_c = 15): right = 46 (double) / t = 77 (single): everything is 0
    for acc in (INT32_MIN, INT32_MIN + 1, -1, 1, INT32_MAX):
        assert _rq(acc, 2**31 - 1, -31, s=15, rounding=rounding) == 0
        assert _rq(acc, 2**31 - 1, -31, s=15, rounding=rounding, output_zero_point=-7) == -7
    # e_c = -32: |acc * M| <= 2^31 * (2^31 - 1) / 2^63 < 0.25 -> 0
    assert _rq(INT32_MIN, 2**31 - 1, -17, s=15, rounding=rounding) == 0
    # e_c = -31, M0 = 2^31 - 1: INT32_MAX * (2^31 - 1) / 2^62 = 0.99999... -> 1; INT32_MIN -> -0.9999... -> -1
    assert _rq(INT32_MAX, 2**31 - 1, -31, rounding=rounding) == 1
    assert _rq(INT32_MIN, 2**31 - 1, -31, rounding=rounding) == -1


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_left_shift_saturates_not_wraps(rounding):
    # e = 30, M0 = 2^30 (M = 2^29): -4 * 2^30 = -2^32 saturates to -2^31 (TFLite would wrap to 0)
    assert _rq(-4, 2**30, 30, rounding=rounding) == -128
    assert _rq(4, 2**30, 30, rounding=rounding) == 127
    # acc * 2^30 overflows for every |acc| >= 2: the outputs clamp at the int8 bounds, never wrap around
    assert _rq(3, 2**30, 30, rounding=rounding) == 127
    assert _rq(INT32_MIN, 2**31 - 1, 30, rounding=rounding) == -128
    assert _rq(INT32_MAX, 2**31 - 1, 30, rounding=rounding) == 127
    # e = 1, M0 = 2^30 (M = 1): the identity on small values, also at the int8 limits
    for acc in (-128, -1, 0, 1, 127):
        assert _rq(acc, 2**30, 1, rounding=rounding) == acc
    # M = 1 with a WESS shift of 1: e_c = 0, M = 1/2.  -1.5: in double mode the only rounding is SRDHM's
    # (SRDHM(-3, 2^30) = -1, ties toward +inf, RDBPOT(-1, 0) = -1); single: floor(-1.5 + 0.5) = -1
    assert _rq(-3, 2**30, 1, s=1, rounding=rounding) == -1
    assert _rq(3, 2**30, 1, s=1, rounding=rounding) == 2


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_flushed_multiplier_gives_zero_point(rounding):
    with pytest.warns(npuq.MultiplierFlushedWarning):
        m0, e = (int(v) for v in npuq.quantize_multiplier(1e-10))
    assert (m0, e) == (0, 0)
    acc = np.array([INT32_MIN, -1, 0, 1, INT32_MAX], np.int32)
    out = npuq.ops.requantize(acc, multiplier=m0, exponent=e, output_zero_point=5, rounding=rounding)
    assert np.asarray(out).tolist() == [5] * 5
    out = npuq.ops.requantize(acc, multiplier=m0, exponent=e, output_zero_point=5, act_min=10, rounding=rounding)
    assert np.asarray(out).tolist() == [10] * 5
    # M0 = 0 with any exponent is still zero
    out = npuq.ops.requantize(acc, multiplier=0, exponent=30, output_zero_point=-3, rounding=rounding)
    assert np.asarray(out).tolist() == [-3] * 5


def test_flush_threshold():
    # just below 2^-32 rounds up into range (step 4 precedes step 5): no flush, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", npuq.MultiplierFlushedWarning)
        assert tuple(map(int, npuq.quantize_multiplier(2.0**-32 * (1 - 2.0**-53)))) == (2**30, -31)
        assert tuple(map(int, npuq.quantize_multiplier(2.0**-32))) == (2**30, -31)
    with pytest.warns(npuq.MultiplierFlushedWarning):
        assert tuple(map(int, npuq.quantize_multiplier(2.0**-32 * (1 - 2.0**-30)))) == (0, 0)
    with pytest.warns(npuq.MultiplierFlushedWarning):
        assert tuple(map(int, npuq.quantize_multiplier(5e-324))) == (0, 0)


def test_exponent_upper_bound():
    assert tuple(map(int, npuq.quantize_multiplier(2.0**30 * (1 - 2.0**-31)))) == (2**31 - 1, 30)
    assert tuple(map(int, npuq.quantize_multiplier(2.0**29))) == (2**30, 30)
    for real in (2.0**30, 2.0**30 * (1 - 2.0**-53), 2.0**31, 1e300):
        with pytest.raises(ValueError):
            npuq.quantize_multiplier(real)


def test_mantissa_rounds_up_to_2_pow_31():
    assert tuple(map(int, npuq.quantize_multiplier(1 - 2.0**-40))) == (2**30, 1)
    assert tuple(map(int, npuq.quantize_multiplier(0.5 - 2.0**-60))) == (2**30, 0)
    assert tuple(map(int, npuq.quantize_multiplier((1 - 2.0**-40) * 2.0**-10))) == (2**30, -9)


def test_llround_ties_away_from_zero():
    assert tuple(map(int, npuq.quantize_multiplier(0.5 + 2.0**-32))) == (2**30 + 1, 0)
    assert tuple(map(int, npuq.quantize_multiplier(0.5 + 2.5 * 2.0**-31))) == (2**30 + 3, 0)
    assert tuple(map(int, npuq.quantize_multiplier(0.5 + 2.0**-33))) == (2**30, 0)


# ------------------------------------------------------------------------------------------------
# bias quantization
# ------------------------------------------------------------------------------------------------


def test_quantize_bias_rounding():
    got = npuq.quantize_bias(np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49, -0.49, 0.0]), 1.0)
    assert np.asarray(got).dtype == np.int32
    assert np.asarray(got).tolist() == [1, -1, 2, -2, 3, -3, 0, 0, 0]
    got = npuq.quantize_bias(np.array([1.0, -1.0]), 0.25)
    assert np.asarray(got).tolist() == [4, -4]


def test_quantize_bias_limits():
    assert np.asarray(npuq.quantize_bias(np.array([2.0**31 - 1, -(2.0**31)]), 1.0)).tolist() == [INT32_MAX, INT32_MIN]
    with pytest.raises(OverflowError):
        npuq.quantize_bias(np.array([2.0**31]), 1.0)
    with pytest.raises(OverflowError):
        npuq.quantize_bias(np.array([-(2.0**31) - 1]), 1.0)
    with pytest.raises(OverflowError):
        npuq.quantize_bias(np.array([2.0**31 - 0.5]), 1.0)  # rounds half away to 2^31


def test_quantize_bias_overflow_with_large_wess_shift():
    # a bias of 1.0 in a scale s_x * s_w / 2^15 with s_x * s_w = 2^-17: 2^32 does not fit
    s_x, s_w, s_c = 2.0**-8, 2.0**-9, 15
    assert np.asarray(npuq.quantize_bias(np.array([1.0]), s_x * s_w)).tolist() == [2**17]
    with pytest.raises(OverflowError):
        npuq.quantize_bias(np.array([1.0]), s_x * s_w / 2**s_c)


# ------------------------------------------------------------------------------------------------
# accumulator overflow for long reductions (section 5)
# ------------------------------------------------------------------------------------------------

K_LONG = 70000  # 255 * 127 * 70000 = 2 266 950 000 > 2^31 - 1


def _long_fc_case():
    # x - z_x = -128 - 127 = -255 everywhere, w = -127: every product is +32385
    x = np.full((1, K_LONG), -128, np.int8)
    w = np.full((3, K_LONG), -127, np.int8)
    w[1, :] = 127  # channel 1: -2 266 950 000 < -2^31
    w[2, K_LONG // 2 :] = 127  # channel 2: exactly 0 (K even) -> never overflows
    bias = np.array([0, 0, 5], np.int32)
    kw = dict(input_zero_point=127, multiplier=2**30, exponent=-24, output_zero_point=0)
    return x, w, bias, kw


@pytest.mark.parametrize("overflow, acc32", [("saturate", 2147483647), ("wrap", -2028017296)])
def test_documented_overflow_example(overflow, acc32):
    """arithmetic.md 5: K = 70000, x = 127, z_x = -128, w = 127, bias 0 -> 2266950000."""
    x = np.full((1, K_LONG), 127, np.int8)
    w = np.full((1, K_LONG), 127, np.int8)
    kw = dict(input_zero_point=-128, multiplier=2**30, exponent=-24)
    assert R.fully_connected_acc(x, w, None, input_zero_point=-128).tolist() == [[2266950000]]
    with pytest.raises(OverflowError, match="fully_connected"):
        npuq.ops.fully_connected(x, w, **kw)
    expected = R.requantize(np.array([[acc32]]), 2**30, -24)  # requantization of the policy's int32 value
    assert np.asarray(npuq.ops.fully_connected(x, w, overflow=overflow, **kw)).tolist() == expected.tolist()


def test_long_reduction_raise():
    x, w, bias, kw = _long_fc_case()
    acc = R.fully_connected_acc(x, w, bias, input_zero_point=127)
    assert acc.tolist() == [[2266950000, -2266950000, 5]]
    with pytest.raises(OverflowError) as info:
        npuq.ops.fully_connected(x, w, bias, **kw)
    msg = str(info.value)
    assert "fully_connected" in msg, msg
    assert "2266950000" in msg.replace(",", "").replace("_", "") or "-2266950000" in msg, msg
    with pytest.raises(OverflowError):
        npuq.ops.fully_connected(x, w, bias, overflow="raise", **kw)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_long_reduction_policies(overflow):
    x, w, bias, kw = _long_fc_case()
    expected = R.fully_connected(x, w, bias, overflow=overflow, **kw)
    acc = R.apply_overflow(R.fully_connected_acc(x, w, bias, input_zero_point=127), overflow)
    if overflow == "saturate":
        assert acc.tolist() == [[INT32_MAX, INT32_MIN, 5]]
        # 2^31 / 2^(31+25) * 2^30... M = 2^30 * 2^(-24-31) = 2^-25: INT32_MAX * 2^-25 = 64 (63.99...)
        assert expected.tolist() == [[64, -64, 0]]
    else:
        # 2266950000 - 2^32 = -2028017296 -> * 2^-25 = -60.44 -> -60
        assert acc.tolist() == [[2266950000 - 2**32, -2266950000 + 2**32, 5]]
        assert expected.tolist() == [[-60, 60, 0]]
    got = npuq.ops.fully_connected(x, w, bias, overflow=overflow, **kw)
    assert np.asarray(got).tolist() == expected.tolist()
    got = npuq.ops.reference.fully_connected(x, w, bias, overflow=overflow, **kw)
    assert np.asarray(got).tolist() == expected.tolist()


@pytest.mark.parametrize("overflow", ["raise", "saturate", "wrap"])
def test_long_reduction_conv(overflow):
    # 7x7 kernel over 1400 channels = 68 600 taps, all +32385: 2 221 611 000 overflows
    c = 1400
    x = np.full((1, 7, 7, c), -128, np.int8)
    w = np.full((2, 7, 7, c), -127, np.int8)
    w[1] = 1  # channel 1: small, fine
    kw = dict(input_zero_point=127, multiplier=2**30, exponent=-24)
    acc = R.conv2d_acc(x, w, None, input_zero_point=127)
    assert acc.ravel().tolist() == [2221611000, -255 * 68600]
    if overflow == "raise":
        with pytest.raises(OverflowError, match="conv2d"):
            npuq.ops.conv2d(x, w, **kw)
        return
    expected = R.conv2d(x, w, None, overflow=overflow, **kw)
    assert np.asarray(npuq.ops.conv2d(x, w, overflow=overflow, **kw)).tolist() == expected.tolist()


def test_overflow_bound_fails_but_sum_fits():
    """The per-channel bound test must only choose the slow path, never raise by itself."""
    k = 64
    rng = np.random.default_rng(3)
    x = rng.integers(-5, 6, (4, k), dtype=np.int8)
    w = np.full((2, k), 127, np.int8)
    w[:, ::2] = -127
    # bound: |b| + 255 * 127 * 64 > 2^31 - 1, but the actual sums are tiny
    bias = np.array([INT32_MAX - 255 * 127 * k + 10, INT32_MIN + 255 * 127 * k - 10], np.int32)
    kw = dict(input_zero_point=0, multiplier=2**30, exponent=-30)
    expected = R.fully_connected(x, w, bias, **kw)
    assert np.asarray(npuq.ops.fully_connected(x, w, bias, **kw)).tolist() == expected.tolist()
    # and one that does overflow by exactly one
    x1 = np.full((1, k), 1, np.int8)
    w1 = np.full((1, k), 1, np.int8)
    b1 = np.array([INT32_MAX - k + 1], np.int32)  # acc = 2^31
    with pytest.raises(OverflowError) as info:
        npuq.ops.fully_connected(x1, w1, b1, **kw)
    assert "2147483648" in str(info.value).replace(",", "").replace("_", ""), str(info.value)
    b1 = np.array([INT32_MAX - k], np.int32)  # acc = 2^31 - 1: fits
    expected = R.fully_connected(x1, w1, b1, **kw)
    assert np.asarray(npuq.ops.fully_connected(x1, w1, b1, **kw)).tolist() == expected.tolist()


def test_bias_alone_at_int32_limits():
    x = np.zeros((1, 1, 1, 2), np.int8)
    w = np.zeros((2, 1, 1, 2), np.int8)
    bias = np.array([INT32_MAX, INT32_MIN], np.int32)
    for rounding in ("double", "single"):
        got = npuq.ops.conv2d(x, w, bias, multiplier=2**31 - 1, exponent=-31, rounding=rounding)
        assert np.asarray(got).ravel().tolist() == [1, -1]


# ------------------------------------------------------------------------------------------------
# average pooling rounding (section 7)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vals, expected",
    [
        ([-1, -2], -2),
        ([1, 2], 2),
        ([-1, 0, 0, 0], 0),
        ([-2, 0, 0, 0], -1),
        ([2, 0, 0, 0], 1),
        ([-128, -127], -128),
        ([127, 126], 127),
        ([-3, -3, -4], -3),
        ([-1, 0], -1),
        ([1, 0], 1),
        ([0, 0, 0], 0),
    ],
)
def test_avg_rounding_ties_away(vals, expected):
    x = np.array(vals, np.int8).reshape(1, 1, len(vals), 1)
    assert np.asarray(npuq.ops.global_avg_pool(x)).ravel().tolist() == [expected]
    y = npuq.ops.avg_pool2d(x, (1, len(vals)), stride=1)
    assert np.asarray(y).ravel().tolist() == [expected]


def test_avg_pool_count_include_pad_hand():
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.int8).reshape(1, 3, 3, 1)
    y = npuq.ops.avg_pool2d(x, 2, stride=1, padding=(1, 0, 1, 0))
    assert np.asarray(y)[0, :, :, 0].tolist() == [[1, 2, 3], [3, 3, 4], [6, 6, 7]]
    y = npuq.ops.avg_pool2d(x, 2, stride=1, padding=(1, 0, 1, 0), count_include_pad=True, input_zero_point=-3)
    y = np.asarray(y)
    assert y[0, 0, 0, 0] == -2  # (-3 * 3 + 1) / 4 = -2
    assert y[0, 0, 1, 0] == -1  # (-3 - 3 + 1 + 2) / 4 = -0.75
    assert y[0, 1, 1, 0] == 3  # 12 / 4


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("zx", [-128, 127])
def test_overflow_bound_exact_limit(sign, zx):
    """The bound of section 5 with max |x - z_x| = 255 at both zero-point extremes, hit exactly."""
    k = 40
    d = 255 if zx == -128 else -255  # x - z_x
    x = np.full((1, k), zx + d, np.int8)
    w = np.full((1, k), 127 * sign * (1 if d > 0 else -1), np.int8)  # every term is sign * 32385
    total = sign * 32385 * k
    limit = INT32_MAX if sign > 0 else INT32_MIN
    kw = dict(input_zero_point=zx, multiplier=2**31 - 1, exponent=-31)
    bias = np.array([limit - total], np.int32)
    assert R.fully_connected_acc(x, w, bias, input_zero_point=zx).tolist() == [[limit]]
    for overflow in ("raise", "saturate", "wrap"):
        got = npuq.ops.fully_connected(x, w, bias, overflow=overflow, **kw)
        assert np.asarray(got).tolist() == [[sign]], overflow
    over = np.array([limit - total + sign], np.int32)  # one past the limit
    with pytest.raises(OverflowError):
        npuq.ops.fully_connected(x, w, over, **kw)
    # saturate keeps the sign, wrap flips it (2^31 -> -2^31, -2^31 - 1 -> 2^31 - 1)
    assert np.asarray(npuq.ops.fully_connected(x, w, over, overflow="saturate", **kw)).tolist() == [[sign]]
    assert np.asarray(npuq.ops.fully_connected(x, w, over, overflow="wrap", **kw)).tolist() == [[-sign]]
    for overflow in ("saturate", "wrap"):
        exp = R.fully_connected(x, w, over, overflow=overflow, **kw)
        assert np.asarray(npuq.ops.fully_connected(x, w, over, overflow=overflow, **kw)).tolist() == exp.tolist()


@pytest.mark.parametrize("overflow", ["raise", "saturate", "wrap"])
@pytest.mark.parametrize("sign", [1, -1])
def test_transient_partial_sums(overflow, sign):
    """Only the exact final accumulator counts (section 5): partial sums beyond int32 are not overflows,
    and "saturate" clamps the exact sum, not each step."""
    k = 64
    x = np.full((1, k), 127, np.int8)
    w = np.full((2, k), 127, np.int8)
    w[:, k // 2 :] = -127
    w[1] = w[1, ::-1]  # the negative half first
    bias = np.array([sign * (INT32_MAX - 1000)] * 2, np.int32)
    kw = dict(input_zero_point=-128, multiplier=2**31 - 1, exponent=-31, overflow=overflow)
    # the exact sums are just the bias; every order of evaluation has partial sums beyond int32
    assert R.fully_connected_acc(x, w, bias, input_zero_point=-128).tolist() == [bias.tolist()]
    expected = R.fully_connected(x, w, bias, **kw)
    assert expected.tolist() == [[sign, sign]]
    assert np.asarray(npuq.ops.fully_connected(x, w, bias, **kw)).tolist() == expected.tolist()
    xc = x.reshape(1, 1, 1, k)
    wc = w.reshape(2, 1, 1, k)
    assert np.asarray(npuq.ops.conv2d(xc, wc, bias, **kw)).ravel().tolist() == expected.ravel().tolist()
    # the same through a 3x3 depthwise conv with 64 channels (the channel loop is the vector loop):
    # per channel 3 taps of +sign * 32385 and 6 of -sign * 32385 on a bias of sign * INT32_MAX
    xd = np.full((1, 3, 3, 64), 127, np.int8)
    wd = np.full((64, 3, 3, 1), sign * 127, np.int8)
    wd[:, :, :2] = -sign * 127
    bd = np.full(64, sign * INT32_MAX, np.int32)
    kwd = dict(kw, groups=64)
    exp_d = R.conv2d(xd, wd, bd, **kwd)
    assert (
        R.conv2d_acc(xd, wd, bd, input_zero_point=-128, groups=64).ravel().tolist()
        == [sign * (INT32_MAX - 3 * 32385)] * 64
    )
    assert np.asarray(npuq.ops.conv2d(xd, wd, bd, **kwd)).tolist() == exp_d.tolist()
