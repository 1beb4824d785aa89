"""Self tests of the numpy oracle (tests/support/reference_numpy.py) against hand-computed values.

Everything here comes from docs/arithmetic.md (worked examples of sections 2 and 3.4) or from a second,
deliberately naive, Python-int / Fraction implementation of the same formulas, so that the oracle that
all other tests trust is itself checked.  Does not import npuq.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import reference_numpy as R

I32 = st.integers(R.INT32_MIN, R.INT32_MAX)
M0S = st.one_of(st.just(0), st.integers(2**30, 2**31 - 1), st.sampled_from([2**30, 2**31 - 1]))


# ------------------------------------------------------------------------------------------------
# section 2
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "real, expected",
    [
        (0.5, (2**30, 0)),
        (1.0, (2**30, 1)),
        (0.75, (1610612736, 0)),
        (0.0078125, (2**30, -6)),
        (2.0**-7, (2**30, -6)),
        (1 - 2.0**-40, (2**30, 1)),
        (3e-10, (1383505806, -31)),
        (1e-10, (0, 0)),
        (0.0123, (1690499128, -6)),
        # extra hand values: exponent bounds and ties of llround (half away from zero, not to even)
        (2.0**-32, (2**30, -31)),
        (2.0**-32 * (1 - 2.0**-53), (2**30, -31)),  # rounds up to 2^31 (step 4) before the flush test
        (2.0**-32 * (1 - 2.0**-30), (0, 0)),  # M0 = 2^31 - 2 at e = -32: flushed
        (2.0**30 * (1 - 2.0**-31), (2**31 - 1, 30)),  # the largest representable multiplier
        (0.5 + 2.0**-32, (2**30 + 1, 0)),  # q * 2^31 = 2^30 + 0.5 -> away from zero
        (0.5 + 2.5 * 2.0**-31, (2**30 + 3, 0)),  # 2^30 + 2.5 -> 2^30 + 3 (banker's would give +2)
        (0.5 + 2.0**-33, (2**30, 0)),  # 2^30 + 0.25 -> 2^30
        (5e-324, (0, 0)),  # smallest subnormal
    ],
)
def test_quantize_multiplier_examples(real, expected):
    assert R.quantize_multiplier(real) == expected


def test_quantize_multiplier_flushed_flag():
    assert R.quantize_multiplier(1e-10, return_flushed=True) == (0, 0, True)
    assert R.quantize_multiplier(3e-10, return_flushed=True)[2] is False


@pytest.mark.parametrize(
    "real",
    [0.0, -0.0, -1.0, -1e-300, float("nan"), float("inf"), float("-inf"), 2.0**30, 2.0**30 * (1 - 2.0**-53), 1e300],
)
def test_quantize_multiplier_errors(real):
    with pytest.raises(ValueError):
        R.quantize_multiplier(real)


@given(st.floats(min_value=2.0**-32, max_value=2.0**30, exclude_max=True, allow_subnormal=False))
def test_quantize_multiplier_is_nearest(real):
    """Independent check with Fractions: M0 is the nearest Q31 mantissa of real at its binade."""
    try:
        m0, e = R.quantize_multiplier(real)
    except ValueError:
        # only the values that round up to 2^30 may raise
        assert Fraction(real) >= Fraction(2**30) - Fraction(1, 4)
        return
    assert 2**30 <= m0 <= 2**31 - 1 and -31 <= e <= 30
    approx = Fraction(m0) * Fraction(2) ** (e - 31)
    exact = Fraction(real)
    # half an ulp of the Q31 mantissa at this exponent (when rounding up to 2^31 the error is smaller)
    assert abs(approx - exact) <= Fraction(2) ** (e - 32)


# ------------------------------------------------------------------------------------------------
# section 3 primitives
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (-1, 2**30, 0),
        (1, 2**30, 1),
        (-3, 2**30, -1),
        (R.INT32_MIN, R.INT32_MIN, R.INT32_MAX),
        (1000, 1690499128, 787),
        (R.INT32_MIN, 2**30, -(2**30)),
        (R.INT32_MIN, 2**31 - 1, -(2**31 - 1)),
        (2**31 - 1, 2**31 - 1, 2**31 - 2),
        (0, 2**31 - 1, 0),
    ],
)
def test_srdhm_examples(a, b, expected):
    assert int(R.srdhm(a, b)) == expected


def _srdhm_exact(a, b):
    if a == b == R.INT32_MIN:
        return R.INT32_MAX
    x = Fraction(a * b, 2**31)
    fl = math.floor(x)
    return fl + 1 if x - fl >= Fraction(1, 2) else fl  # nearest, ties toward +infinity


@given(I32, I32)
def test_srdhm_is_round_half_up(a, b):
    assert int(R.srdhm(a, b)) == _srdhm_exact(a, b)


@pytest.mark.parametrize(
    "h, n, expected",
    [
        (787, 6, 12),
        (787, 9, 2),
        (787, 0, 787),
        (-5, 0, -5),
        (3, 1, 2),
        (-3, 1, -2),
        (5, 2, 1),
        (6, 2, 2),
        (-6, 2, -2),
        (-5, 2, -1),
        (-(2**31), 32, -1),
        (-(2**31) + 1, 32, 0),
        (2**31 - 1, 32, 0),
        (-(2**31), 31, -1),
        (-(2**30), 31, -1),
        (2**30, 31, 1),
        (2**30 - 1, 31, 0),
        (-(2**31), 33, 0),
        (-(2**31), 46, 0),
        (2**31 - 1, 46, 0),
        (-(2**31), 63, 0),
        (2**31 - 1, 63, 0),
        (-1, 63, 0),
    ],
)
def test_rdbpot_examples(h, n, expected):
    assert int(R.rdbpot(h, n)) == expected


def _round_half_away(x: Fraction) -> int:
    fl = math.floor(abs(x))
    r = fl + 1 if abs(x) - fl >= Fraction(1, 2) else fl
    return r if x >= 0 else -r


@given(I32, st.integers(0, 63))
def test_rdbpot_is_round_half_away(h, n):
    assert int(R.rdbpot(h, n)) == _round_half_away(Fraction(h, 2**n))


# ------------------------------------------------------------------------------------------------
# section 3.4 worked examples and the double-vs-single table
# ------------------------------------------------------------------------------------------------


def test_worked_example_0123():
    m0, e = R.quantize_multiplier(0.0123)
    assert (m0, e) == (1690499128, -6)
    assert int(R.requantize_raw([1000], m0, e, None, "double")[0]) == 12
    assert int(R.requantize_raw([1000], m0, e, None, "single")[0]) == 12
    for mode in ("double", "single"):
        assert int(R.requantize([1000], m0, e, None, output_zero_point=-5, rounding=mode)[0]) == 7
        # WESS shift 3: e_c = -9
        assert int(R.requantize_raw([1000], m0, e, [3], mode)[0]) == 2


@pytest.mark.parametrize(
    "acc, m0, e, double, single",
    [
        (-40, 2**30, -3, -3, -2),
        (-37, 1610612736, -3, -4, -3),
        (-32, 1610612736, -4, -2, -1),
        (5, 2**30, 0, 3, 3),
        # extra hand rows: acc * M = -0.5 exactly at the largest right shift with an int32 result
        (R.INT32_MIN, 2**30, -31, -1, 0),
        # saturate (not wrap) when the left shift overflows: -4 * 2^30 = -2^32
        (-4, 2**30, 30, -128, -128),
        (4, 2**30, 30, 127, 127),
        (R.INT32_MIN, 2**31 - 1, 30, -128, -128),
        (R.INT32_MAX, 2**31 - 1, -31, 1, 1),  # ~0.99999999953 -> 1
        (R.INT32_MIN, 2**31 - 1, -31, -1, -1),
        (12345, 0, 17, 0, 0),  # M0 = 0
    ],
)
def test_double_vs_single_table(acc, m0, e, double, single):
    assert int(R.requantize([acc], m0, e, rounding="double")[0]) == double
    assert int(R.requantize([acc], m0, e, rounding="single")[0]) == single


def _requant_scalar(acc, m0, e, s, mode):
    """Straight transcription of section 3 with Python ints (independent of the numpy tricks)."""
    e_c = e - s
    if mode == "double":
        left, right = max(e_c, 0), max(-e_c, 0)
        a = min(max(acc * 2**left, R.INT32_MIN), R.INT32_MAX)
        h = _srdhm_exact(a, m0)
        return _round_half_away(Fraction(h, 2**right))
    t = 31 - e_c
    r = (acc * m0 + 2 ** (t - 1)) // 2**t  # Python's // is floor
    return min(max(r, R.INT32_MIN), R.INT32_MAX)


@given(
    st.lists(st.one_of(I32, st.sampled_from([R.INT32_MIN, R.INT32_MAX, 0, -1, 1])), min_size=1, max_size=8),
    M0S,
    st.integers(-31, 30),
    st.integers(0, 15),
    st.sampled_from(["double", "single"]),
)
def test_requantize_raw_matches_scalar(accs, m0, e, s, mode):
    got = R.requantize_raw(np.array(accs, dtype=np.int64).reshape(-1, 1), m0, e, [s], mode).ravel()
    assert [int(v) for v in got] == [_requant_scalar(a, m0, e, s, mode) for a in accs]


@given(st.data())
def test_requantize_per_channel_broadcast(data):
    c = data.draw(st.integers(1, 6))
    rows = data.draw(st.integers(1, 4))
    acc = np.array(data.draw(st.lists(I32, min_size=rows * c, max_size=rows * c)), np.int64).reshape(rows, c)
    m0 = data.draw(st.lists(M0S, min_size=c, max_size=c))
    e = data.draw(st.lists(st.integers(-31, 30), min_size=c, max_size=c))
    s = data.draw(st.lists(st.integers(0, 15), min_size=c, max_size=c))
    mode = data.draw(st.sampled_from(["double", "single"]))
    got = R.requantize_raw(acc, np.array(m0), np.array(e), np.array(s), mode)
    for i in range(rows):
        for j in range(c):
            assert int(got[i, j]) == _requant_scalar(int(acc[i, j]), m0[j], e[j], s[j], mode)


def test_output_stage_clamp():
    y = R.requantize([1000, -1000, 0], 2**30, 0, output_zero_point=3, act_min=0, act_max=6)
    assert y.tolist() == [6, 0, 3]
    y = R.requantize([0], 0, 0, output_zero_point=-128, act_min=-128, act_max=127)
    assert y.tolist() == [-128]


# ------------------------------------------------------------------------------------------------
# section 5 overflow policies
# ------------------------------------------------------------------------------------------------


def test_overflow_policies():
    acc = np.array([2**31, -(2**31) - 1, 2**32 + 5, 7], np.int64)
    assert R.apply_overflow(acc, "saturate").tolist() == [2**31 - 1, -(2**31), 2**31 - 1, 7]
    assert R.apply_overflow(acc, "wrap").tolist() == [-(2**31), 2**31 - 1, 5, 7]
    with pytest.raises(OverflowError, match="conv2d"):
        R.apply_overflow(acc, "raise")
    assert R.apply_overflow(np.array([2**31 - 1, -(2**31)]), "raise").tolist() == [2**31 - 1, -(2**31)]


def test_quantize_bias_oracle():
    assert R.quantize_bias([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49], 1.0).tolist() == [1, -1, 2, -2, 3, -3, 0]
    assert R.quantize_bias([2.0**31 - 1, -(2.0**31)], 1.0).tolist() == [2**31 - 1, -(2**31)]
    with pytest.raises(OverflowError):
        R.quantize_bias([2.0**31], 1.0)
    with pytest.raises(OverflowError):
        R.quantize_bias([1.0], 2.0**-31)


# ------------------------------------------------------------------------------------------------
# section 4 convolution: im2col oracle == literal loops == float64 convolution
# ------------------------------------------------------------------------------------------------


@st.composite
def small_conv(draw):
    groups = draw(st.integers(1, 3))
    cig = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    pad = tuple(draw(st.integers(0, ext - 1)) for ext in (ext_h, ext_h, ext_w, ext_w))
    h = draw(st.integers(max(1, ext_h - pad[0] - pad[1]), max(1, ext_h - pad[0] - pad[1]) + 4))
    w = draw(st.integers(max(1, ext_w - pad[2] - pad[3]), max(1, ext_w - pad[2] - pad[3]) + 4))
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (n, h, w, groups * cig), dtype=np.int8)
    wt = rng.integers(-127, 128, (groups * og, kh, kw, cig), dtype=np.int8)
    bias = rng.integers(-(2**20), 2**20, groups * og).astype(np.int32)
    zx = draw(st.integers(-128, 127))
    return dict(
        x=x, weight=wt, bias=bias, input_zero_point=zx, stride=(sh, sw), padding=pad, dilation=(dh, dw), groups=groups
    )


@given(small_conv())
def test_conv_acc_matches_naive_loops(case):
    fast = R.conv2d_acc(**case)
    slow = R.conv2d_acc_naive(**case)
    assert fast.shape == slow.shape
    assert fast.tolist() == slow.tolist()


@given(small_conv())
def test_conv_acc_matches_float64_conv(case):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = torch.from_numpy(case["x"].astype(np.float64) - case["input_zero_point"]).permute(0, 3, 1, 2)
    pt, pb, pl, pr = case["padding"]
    x = F.pad(x, (pl, pr, pt, pb))  # real zeros after subtracting the zero point
    w = torch.from_numpy(case["weight"].astype(np.float64)).permute(0, 3, 1, 2)
    b = torch.from_numpy(case["bias"].astype(np.float64))
    y = F.conv2d(x, w, b, stride=case["stride"], dilation=case["dilation"], groups=case["groups"])
    expect = y.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(R.conv2d_acc(**case).astype(np.float64), expect)


def test_conv_hand_example():
    # 1x3x3x1 image, 2x2 kernel, pad 1 on top/left only, zero point 2
    x = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9], np.int8).reshape(1, 3, 3, 1)
    w = np.array([1, -1, 2, 3], np.int8).reshape(1, 2, 2, 1)
    acc = R.conv2d_acc(x, w, np.array([10]), input_zero_point=2, padding=(1, 0, 1, 0))
    # x - zp = [[-1,0,1],[2,3,4],[5,6,7]] padded with 0 on top/left
    xz = np.pad(np.array([[-1, 0, 1], [2, 3, 4], [5, 6, 7]]), ((1, 0), (1, 0)))
    expect = np.zeros((3, 3), np.int64)
    for i in range(3):
        for j in range(3):
            expect[i, j] = 10 + xz[i, j] * 1 + xz[i, j + 1] * -1 + xz[i + 1, j] * 2 + xz[i + 1, j + 1] * 3
    assert acc[0, :, :, 0].tolist() == expect.tolist()
    assert acc[0, 0, 0, 0] == 10 + 3 * -1  # only the bottom-right tap sees the image: x=1 -> -1
    assert R.output_size(3, 2, 1, 1, 1, 0) == 3


def test_fully_connected_is_1x1_conv():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (3, 20), dtype=np.int8)
    w = rng.integers(-127, 128, (5, 20), dtype=np.int8)
    b = rng.integers(-1000, 1000, 5)
    fc = R.fully_connected_acc(x, w, b, input_zero_point=-7)
    cv = R.conv2d_acc(x.reshape(3, 1, 1, 20), w.reshape(5, 1, 1, 20), b, input_zero_point=-7).reshape(3, 5)
    assert fc.tolist() == cv.tolist()


# ------------------------------------------------------------------------------------------------
# section 6 add, section 7 pooling
# ------------------------------------------------------------------------------------------------


def test_add_params_oracle():
    p = R.add_params(1.0, 1.0, 1.0)
    assert (p["a_multiplier"], p["a_exponent"]) == (2**30, 0)  # 0.5
    assert (p["b_multiplier"], p["b_exponent"]) == (2**30, 0)
    assert (p["output_multiplier"], p["output_exponent"]) == (2**30, -18)  # 2 / 2^20 = 2^-19
    p = R.add_params(0.5, 0.25, 1.0)
    assert (p["b_multiplier"], p["b_exponent"]) == (2**30, -1)  # 0.25


def test_add_hand_examples():
    p = R.add_params(1.0, 1.0, 1.0)
    kw = dict(
        a_zero_point=0,
        b_zero_point=0,
        output_zero_point=0,
        a_multiplier=p["a_multiplier"],
        a_exponent=p["a_exponent"],
        b_multiplier=p["b_multiplier"],
        b_exponent=p["b_exponent"],
        output_multiplier=p["output_multiplier"],
        output_exponent=p["output_exponent"],
    )
    assert R.add(np.array([1, -50, 100]), np.array([2, -60, 100]), **kw).tolist() == [3, -110, 127]
    # output scale 2: (a + b) / 2, a tie at -0.5: double rounds away (-1), single toward +inf (0)
    p = R.add_params(1.0, 1.0, 2.0)
    kw.update(output_multiplier=p["output_multiplier"], output_exponent=p["output_exponent"])
    assert (p["output_multiplier"], p["output_exponent"]) == (2**30, -19)
    assert R.add(np.array([-1, 1, 3]), np.array([0, 0, 0]), **kw, rounding="double").tolist() == [-1, 1, 2]
    assert R.add(np.array([-1, 1, 3]), np.array([0, 0, 0]), **kw, rounding="single").tolist() == [0, 1, 2]
    # zero points
    kw.update(a_zero_point=10, b_zero_point=-10)
    assert R.add(np.array([14]), np.array([-6]), **kw).tolist() == [4]


@pytest.mark.parametrize(
    "vals, expected",
    [
        ([-1, -2], -2),
        ([1, 2], 2),
        ([-1, 0, 0, 0], 0),
        ([-2, 0, 0, 0], -1),
        ([2, 0, 0, 0], 1),
        ([1, 0, 0, 0], 0),
        ([127, 127], 127),
        ([-128, -128, -128], -128),
        ([3, 3, 4], 3),
        ([-3, -3, -4], -3),
        ([0, 0], 0),
        ([-1, 0], -1),
        ([1, 0], 1),
    ],
)
def test_global_avg_pool_rounding(vals, expected):
    x = np.array(vals, np.int8).reshape(1, 1, len(vals), 1)
    assert R.global_avg_pool(x)[0, 0, 0, 0] == expected


def test_avg_pool_hand_example():
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.int8).reshape(1, 3, 3, 1)
    y = R.avg_pool2d(x, 2, stride=1, padding=(1, 0, 1, 0))
    # windows: [1] -> 1; [1,2] -> 1.5 -> 2; [2,3] -> 2.5 -> 3; [1,4] -> 2.5 -> 3; [1,2,4,5] -> 3
    assert y[0, :, :, 0].tolist() == [[1, 2, 3], [3, 3, 4], [6, 6, 7]]
    y = R.avg_pool2d(x, 2, stride=1, padding=(1, 0, 1, 0), count_include_pad=True, input_zero_point=-3)
    # window [pad, pad, pad, 1]: (-9 + 1) / 4 = -2; [pad, pad, 1, 2]: (-6 + 3) / 4 = -0.75 -> -1
    assert y[0, 0, 0, 0] == -2 and y[0, 0, 1, 0] == -1
    assert y[0, 1, 1, 0] == 3  # (1 + 2 + 4 + 5) / 4
    y = R.avg_pool2d(x, (3, 3), stride=(3, 3))
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 5
    y = R.avg_pool2d(x, 3)  # stride defaults to the kernel
    assert y.shape == (1, 1, 1, 1)


def test_wrap_int32():
    assert R.wrap_int32([2**31, -(2**31) - 1, 2**33 + 3, -5]).tolist() == [-(2**31), 2**31 - 1, 3, -5]


# ------------------------------------------------------------------------------------------------
# section 3.5: the one-rounding form of both modes (a claim of the spec, checked against sections 3.1/3.2)
# ------------------------------------------------------------------------------------------------


@given(I32, M0S, st.integers(0, 31))
def test_fused_rounding_identity(acc, m0, n):
    p = acc * m0
    single = (p + 2 ** (30 + n)) // 2 ** (31 + n)
    if n == 0:
        double = (p + 2**30) // 2**31
    else:
        double = (p + 2**30 + 2 ** (30 + n) - (2**31 if p < 0 else 0)) // 2 ** (31 + n)
    assert int(R.requantize_raw([acc], m0, -n, None, "double")[0]) == double
    assert int(R.requantize_raw([acc], m0, -n, None, "single")[0]) == single
