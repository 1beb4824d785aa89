"""Self tests of the numpy oracle's new ops (docs/arithmetic.md 9-15) against worked examples and torch.

The oracle (tests/support/reference_numpy.py) is the ground truth of the kernels' tests, so it is itself
checked here: against values worked by hand from the specification, against the claims the specification
makes (the identity concat, the output sizes of ceil mode), and against torch's float implementations
of the same operations where those are exact or within the rounding the specification describes.
"""

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from support import npu_reference as NR
from support import reference_numpy as R

INT8 = st.integers(-128, 127)


def _nhwc(x: np.ndarray) -> torch.Tensor:
    """int NHWC -> float64 NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float64))


def _to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.numpy().transpose(0, 2, 3, 1)


@st.composite
def images(draw, max_hw=6, max_c=4, min_hw=1):
    n = draw(st.integers(1, 2))
    h = draw(st.integers(min_hw, max_hw))
    w = draw(st.integers(min_hw, max_hw))
    c = draw(st.integers(1, max_c))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(-128, 128, size=(n, h, w, c))


# --------------------------------------------------------------------------------------------------
# Section 9: tables
# --------------------------------------------------------------------------------------------------


def test_hardswish_table_example_of_section_9():
    table = R.make_table("hardswish", 0.05, -10, 0.03, -40)
    assert table[128] == -30  # q = 0: r = 0.5, f = 0.291666..., 9.72 -> 10, 10 - 40
    # q = -10 is r = 0: hardswish(0) = 0, so the entry is the output zero point
    assert table[-10 + 128] == -40
    # q = -128: r = -5.9, below -3: hardswish is 0 there too
    assert table[0] == -40


def test_table_rounds_half_away_from_zero():
    # identity (a clamp wider than the range) with s_y = 2 s_x: v / s_y = (q - z_x) / 2, ties at odd q - z_x
    table = R.make_table("clamp", 1.0, 0, 2.0, 0, lo=-1e9, hi=1e9)
    assert table[3 + 128] == 2 and table[-3 + 128] == -2  # 1.5 -> 2, -1.5 -> -2
    assert table[1 + 128] == 1 and table[-1 + 128] == -1  # 0.5 -> 1, -0.5 -> -1
    assert table[4 + 128] == 2 and table[-4 + 128] == -2
    assert table[127 + 128] == 64 and table[0] == -64


def test_table_clamps_to_int8():
    # relu with s_y much smaller than s_x: every positive input saturates at 127
    table = R.make_table("relu", 1.0, 0, 0.01, -128)
    assert table[128] == -128 and table[127] == -128  # r = 0 and r = -1 -> 0 -> z_y
    assert table[129] == -28 and table[130] == 72  # 1 / 0.01 = 100 (float: 100.0 exactly after rounding)
    assert (table[131:] == 127).all()


def test_leaky_relu_and_sigmoid_by_hand():
    table = R.make_table("leaky_relu", 1.0, 5, 0.25, 0, alpha=0.25)
    # q = 2: r = -3, alpha * r = -0.75, / 0.25 = -3; q = 7: r = 2, / 0.25 = 8
    assert table[2 + 128] == -3 and table[7 + 128] == 8
    sig = R.make_table("sigmoid", 0.1, 3, 2.0**-8, -128)
    assert sig[3 + 128] == 0  # r = 0: 0.5 * 256 = 128, - 128
    assert sig[127 + 128] == 127  # sigmoid(12.4) * 256 = 255.99... -> 256, clamped


def test_table_scales_are_float32():
    """Section 9: the scales are the program's float32 values widened to float64."""
    a = R.make_table("gelu", 0.1, 0, 0.07, 0)
    b = R.make_table("gelu", float(np.float32(0.1)), 0, float(np.float32(0.07)), 0)
    np.testing.assert_array_equal(a, b)


def test_table_errors():
    with pytest.raises(ValueError, match="not finite"):
        R.make_table("leaky_relu", 1.0, 0, 1.0, 0, alpha=math.inf)
    with pytest.raises(ValueError, match="parameters"):
        R.make_table("clamp", 1.0, 0, 1.0, 0, lo=0.0)
    with pytest.raises(ValueError, match="unknown"):
        R.make_table("custom", 1.0, 0, 1.0, 0)


_TORCH_FUNCTIONS = {
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda r: F.gelu(r, approximate="tanh"),
    "relu": F.relu,
    "relu6": F.relu6,
    "clamp": lambda r: torch.clamp(r, -1.0, 1.0),
    "leaky_relu": lambda r: F.leaky_relu(r, 0.1),
}
_PARAMS = {"clamp": dict(lo=-1.0, hi=1.0), "leaky_relu": dict(alpha=0.1)}


@settings(max_examples=150, deadline=None)
@given(
    function=st.sampled_from(sorted(_TORCH_FUNCTIONS)),
    s_x=st.floats(1e-3, 0.2),
    s_y=st.floats(1e-3, 0.2),
    z_x=INT8,
    z_y=INT8,
)
def test_tables_agree_with_torch_float64(function, s_x, s_y, z_x, z_y):
    """Each formula against torch's float64 function: equal up to a tie decided by the last ulp."""
    table = R.make_table(function, s_x, z_x, s_y, z_y, **_PARAMS.get(function, {}))
    s_x, s_y = float(np.float32(s_x)), float(np.float32(s_y))
    r = torch.tensor([s_x * (q - z_x) for q in range(-128, 128)], dtype=torch.float64)
    u = (_TORCH_FUNCTIONS[function](r) / s_y).numpy()
    want = np.clip(np.sign(u) * np.floor(np.abs(u) + 0.5) + z_y, -128, 127)
    diff = np.abs(table - want)
    assert diff.max() <= 1
    near_tie = np.abs(np.abs(u) - np.floor(np.abs(u)) - 0.5) < 1e-9
    assert not (diff.astype(bool) & ~near_tie).any()


@given(x=images())
def test_lut_indexes_the_table(x):
    table = np.arange(255, -1, -1) - 128  # T[q + 128] = -q - 1 (a bijection)
    np.testing.assert_array_equal(R.lut(x, table), -x - 1)


# --------------------------------------------------------------------------------------------------
# Sections 10, 11, 15: mul, concat, mean
# --------------------------------------------------------------------------------------------------


def test_mul_by_hand():
    p = R.mul_params(0.1, 0.2, 0.5)  # 0.04
    assert (p["multiplier"], p["exponent"]) == R.quantize_multiplier(0.1 * 0.2 / 0.5)
    a = np.array([[10, -3, 7]])
    b = np.array([[20, 5, 1]])
    y = R.mul(a, b, a_zero_point=0, b_zero_point=5, output_zero_point=-4, **p)
    # (10 * 15) * 0.04 = 6; (-3 * 0) = 0; 7 * -4 * 0.04 = -1.12 -> -1; then + z_y = -4
    np.testing.assert_array_equal(y, [[2, -4, -5]])
    y = R.mul(a, b, a_zero_point=0, b_zero_point=5, output_zero_point=-4, act_min=-4, act_max=0, **p)
    np.testing.assert_array_equal(y, [[0, -4, -4]])


@given(a=images(), seed=st.integers(0, 2**32 - 1), rounding=st.sampled_from(["double", "single"]))
def test_mul_broadcast_reads_b_at_0_0_c(a, seed, rounding):
    n, h, w, c = a.shape
    b = np.random.default_rng(seed).integers(-128, 128, size=(n, 1, 1, c))
    kw = dict(a_zero_point=3, b_zero_point=-7, output_zero_point=1, multiplier=1518500250, exponent=-12)
    got = R.mul(a, b, rounding=rounding, **kw)
    want = R.mul(a, np.tile(b, (1, h, w, 1)), rounding=rounding, **kw)
    np.testing.assert_array_equal(got, want)


def test_identity_concat_multiplier_is_2_30_1():
    p = R.concat_params([0.0371, 0.02, 0.0371], 0.0371)
    assert (p["multipliers"][0], p["exponents"][0]) == (2**30, 1)
    assert (p["multipliers"][2], p["exponents"][2]) == (2**30, 1)
    assert (p["multipliers"][1], p["exponents"][1]) == R.quantize_multiplier(0.02 / 0.0371)


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("z", [-128, -5, 0, 127])
def test_identity_concat_copies_every_int8(rounding, z):
    x = np.arange(-128, 128).reshape(1, 2, 128, 1)
    other = np.zeros((1, 2, 128, 2), dtype=np.int64)
    y = R.concat([x, other], zero_points=[z, 0], multipliers=[2**30, 2**30], exponents=[1, 1], output_zero_point=z)
    np.testing.assert_array_equal(y[..., :1], x)
    np.testing.assert_array_equal(y[..., 1:], np.clip(other + z, -128, 127))


def test_concat_rescales_by_hand():
    # input 1 at half the output scale, (2^30, 0): the halving is SRDHM's, ties toward +infinity in both
    # modes (-3 / 2 -> -1); input 2 at a quarter, (2^30, -1): SRDHM halves exactly, then RDBPOT ties away
    # from zero ("double": -6 / 4 -> -2), while "single" ties toward +infinity (-> -1)
    x0 = np.array([[1, 2]])
    x1 = np.array([[3, -3, 100]])
    x2 = np.array([[6, -6, -5]])
    p = R.concat_params([0.1, 0.05, 0.025], 0.1)
    assert p == dict(multipliers=[2**30] * 3, exponents=[1, 0, -1])
    y = R.concat([x0, x1, x2], zero_points=[0, 0, 0], output_zero_point=10, **p)
    np.testing.assert_array_equal(y, [[11, 12, 12, 9, 60, 12, 8, 9]])
    y = R.concat([x0, x1, x2], zero_points=[0, 0, 0], output_zero_point=10, rounding="single", **p)
    np.testing.assert_array_equal(y, [[11, 12, 12, 9, 60, 12, 9, 9]])
    # the output is clamped to int8 and the input zero point is subtracted first
    two = dict(multipliers=p["multipliers"][:2], exponents=p["exponents"][:2])
    y = R.concat([x0, x1], zero_points=[-128, 100], output_zero_point=120, **two)
    np.testing.assert_array_equal(y, [[127, 127, 72, 69, 120]])  # 129 + 120; -97 / 2 -> -48; -103 / 2 -> -51


def test_mean_two_roundings_by_hand():
    x = np.array([1, 0, 0, 2]).reshape(1, 2, 2, 1)  # acc = 3, n = 4
    one = R.mean_params(1.0, 2.0, 4)  # 1 / 8
    assert (one["multiplier"], one["exponent"]) == (2**30, -2)
    two = R.mean_params(1.0, 2.0, 4, tflite_rounding=True)  # 1 / 2
    assert (two["multiplier"], two["exponent"]) == (2**30, 0)
    # npuq "single": 3 / 8 = 0.375 -> 0 in one rounding; npuq "double": SRDHM 1.5 -> 2, RDBPOT 2 / 4 -> 1
    assert R.mean(x, input_zero_point=0, output_zero_point=0, rounding="single", **one).item() == 0
    assert R.mean(x, input_zero_point=0, output_zero_point=0, rounding="double", **one).item() == 1
    # TFLite: (2^30, 0) with n = 4 = 2^2 becomes (2^30, -2), the npuq multiplier: the same results
    for rounding, want in (("single", 0), ("double", 1)):
        got = R.mean(x, input_zero_point=0, output_zero_point=0, tflite_rounding=True, rounding=rounding, **two)
        assert got.item() == want
    # n = 3: the factor 2^1 / 3 truncates, M' = floor(2^31 / 3) = 715827882 < 2^30, e' = 0, so
    # acc * M' / 2^31 is just below acc / 3: 4 -> 1.333 -> 1, 5 -> 1.667 -> 2, -5 -> -2
    ident = R.mean_params(0.5, 0.5, 3, tflite_rounding=True)
    for acc, want in ((4, 1), (5, 2), (-5, -2)):
        row = np.array([acc, 0, 0]).reshape(1, 1, 3, 1)
        assert R.mean(row, input_zero_point=0, output_zero_point=0, tflite_rounding=True, **ident).item() == want
    # the zero point is subtracted before summing: x - (-1) = [2, 1, 1, 3], acc = 7: 7 / 8 -> 1
    assert R.mean(x, input_zero_point=-1, output_zero_point=5, **one).item() == 6


@settings(max_examples=100, deadline=None)
@given(x=images(max_hw=5), z_x=INT8, z_y=INT8, rounding=st.sampled_from(["double", "single"]))
def test_tflite_mean_with_equal_scales_is_within_one_of_the_rounded_average(x, z_x, z_y, rounding):
    """s_x = s_y: the multiplier is the identity (2^30, 1), and TFLite's truncated fixed-point 1 / n puts
    the result at most 1 from the exact mean of x - z_x rounded half away from zero."""
    n = x.shape[1] * x.shape[2]
    p = R.mean_params(0.02, 0.02, n, tflite_rounding=True)
    assert (p["multiplier"], p["exponent"]) == (2**30, 1)
    got = R.mean(x, input_zero_point=z_x, output_zero_point=z_y, tflite_rounding=True, rounding=rounding, **p)
    for img in range(x.shape[0]):
        for ch in range(x.shape[3]):
            exact = Fraction(int((x[img, :, :, ch] - z_x).sum()), n)
            want = _round_half_away(exact) + z_y
            assert abs(int(got[img, 0, 0, ch]) - min(max(want, -128), 127)) <= 1


# --------------------------------------------------------------------------------------------------
# Sections 12, 13: data movement and upsampling
# --------------------------------------------------------------------------------------------------


def test_bilinear_by_hand():
    x = np.array([0, 100]).reshape(1, 1, 2, 1)
    # source coordinates of f = 2: -0.25 (clamped to 0), 0.25, 0.75, 1.25 (i1 clamped to the edge)
    np.testing.assert_array_equal(R.upsample(x, (1, 2), "bilinear").ravel(), [0, 25, 75, 100])
    # 0.25 * 2 = 0.5 and -0.5 round away from zero
    np.testing.assert_array_equal(
        R.upsample(np.array([0, 2]).reshape(1, 1, 2, 1), (1, 2), "bilinear").ravel(), [0, 1, 2, 2]
    )
    np.testing.assert_array_equal(
        R.upsample(np.array([0, -2]).reshape(1, 1, 2, 1), (1, 2), "bilinear").ravel(), [0, -1, -2, -2]
    )
    # the rounding is of x - z: with z = 1, [1, 3] is [0, 2] shifted (0.5 -> 1, so 2), not 1 + 0.5 = 2.5 -> 3
    np.testing.assert_array_equal(
        R.upsample(np.array([1, 3]).reshape(1, 1, 2, 1), (1, 2), "bilinear", 1).ravel(), [1, 2, 3, 3]
    )
    np.testing.assert_array_equal(
        R.upsample(np.array([1, -1]).reshape(1, 1, 2, 1), (1, 2), "bilinear", 1).ravel(), [1, 0, -1, -1]
    )
    # 2-D: at (1, 1) the weights are 3/4, 1/4 on each axis: (9 * 0 + 3 * 40 + 3 * 80 + 120) / 16 = 30
    x = np.array([[0, 40], [80, 120]]).reshape(1, 2, 2, 1)
    y = R.upsample(x, 2, "bilinear")[0, :, :, 0]
    assert y[1, 1] == 30 and y[0, 0] == 0 and y[3, 3] == 120 and y[0, 1] == 10 and y[1, 0] == 20
    # f = 3: o = 1 is the centre of input 0 (num = 0), o = 2 reads 1/3 of the way to input 1
    y = R.upsample(np.array([0, 90]).reshape(1, 1, 2, 1), (1, 3), "bilinear").ravel()
    np.testing.assert_array_equal(y, [0, 0, 30, 60, 90, 90])


def _round_half_away(q: Fraction) -> int:
    r = math.floor(abs(q) + Fraction(1, 2))
    return r if q >= 0 else -r


def _source(o: int, f: int, n: int):
    """Half-pixel source coordinate of output o as an exact fraction: (lower index, upper index, fraction)."""
    src = max(Fraction(2 * o + 1, 2 * f) - Fraction(1, 2), Fraction(0))
    i0 = math.floor(src)
    return i0, min(i0 + 1, n - 1), src - i0


@settings(max_examples=60, deadline=None)
@given(x=images(max_hw=4, max_c=2), fh=st.integers(1, 5), fw=st.integers(1, 5), z=INT8)
def test_bilinear_is_the_exact_interpolation_rounded_half_away_from_z(x, fh, fw, z):
    """The continuous formula of section 13 in exact rationals: x - z interpolated, rounded to nearest
    with ties away from zero, plus z."""
    got = R.upsample(x, (fh, fw), "bilinear", z)
    n, h, w, c = x.shape
    for oh in range(h * fh):
        i0, i1, a = _source(oh, fh, h)
        for ow in range(w * fw):
            j0, j1, b = _source(ow, fw, w)
            for img in range(n):
                for ch in range(c):
                    v = [[int(x[img, i, j, ch]) - z for j in (j0, j1)] for i in (i0, i1)]
                    exact = (1 - a) * ((1 - b) * v[0][0] + b * v[0][1]) + a * ((1 - b) * v[1][0] + b * v[1][1])
                    assert got[img, oh, ow, ch] == z + _round_half_away(exact)


@settings(max_examples=120, deadline=None)
@given(x=images(max_hw=5, max_c=3), fh=st.integers(1, 5), fw=st.integers(1, 5), z=INT8)
def test_bilinear_against_torch_float64(x, fh, fw, z):
    """torch's float64 half-pixel bilinear is within its rounding error of the exact value, which the
    oracle rounds correctly: |oracle - torch| <= 1/2 (+ the float error)."""
    got = R.upsample(x, (fh, fw), "bilinear", z)
    t = F.interpolate(_nhwc(x), scale_factor=(fh, fw), mode="bilinear", align_corners=False)
    want = _to_nhwc(t)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 0.5 + 1e-9


@given(x=images(), fh=st.integers(1, 4), fw=st.integers(1, 4))
def test_nearest_against_torch(x, fh, fw):
    got = R.upsample(x, (fh, fw))
    want = _to_nhwc(F.interpolate(_nhwc(x), scale_factor=(fh, fw), mode="nearest"))
    np.testing.assert_array_equal(got, want)


@given(x=images(max_c=12), data=st.data())
def test_channel_shuffle_against_torch(x, data):
    n, h, w, c = x.shape
    g = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
    t = _nhwc(x)
    want = _to_nhwc(t.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w))
    np.testing.assert_array_equal(R.channel_shuffle(x, g), want)


def test_channel_shuffle_slice_pad_by_hand():
    x = np.arange(6).reshape(1, 1, 1, 6)
    # g = 2, k = 3: input i * 3 + j -> output j * 2 + i
    np.testing.assert_array_equal(R.channel_shuffle(x, 2).ravel(), [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(R.channel_shuffle(x, 3).ravel(), [0, 2, 4, 1, 3, 5])
    np.testing.assert_array_equal(R.channel_slice(x, 2, 5).ravel(), [2, 3, 4])
    np.testing.assert_array_equal(R.channel_slice(np.arange(4).reshape(1, 4), 1, 2), [[1]])
    with pytest.raises(ValueError, match="begin"):
        R.channel_slice(x, 3, 3)
    with pytest.raises(ValueError, match="groups"):
        R.channel_shuffle(x, 4)
    y = R.pad(np.array([[5, 6]]).reshape(1, 1, 2, 1), (1, 0, 0, 2), value=-9)[0, :, :, 0]
    np.testing.assert_array_equal(y, [[-9, -9, -9, -9], [5, 6, -9, -9]])


# --------------------------------------------------------------------------------------------------
# Section 14: max pooling with ceil mode
# --------------------------------------------------------------------------------------------------


def _torch_max_pool(x, k, s, p, ceil_mode):
    return _to_nhwc(F.max_pool2d(_nhwc(x), k, s, p, ceil_mode=ceil_mode))


def test_ceil_mode_sizes_against_torch():
    for size in range(1, 12):
        for k in range(1, 5):
            for s in range(1, 5):
                for p in range(0, k // 2 + 1):
                    if size + 2 * p < k:
                        continue
                    for ceil_mode in (False, True):
                        got = R.max_pool2d_output_size(size, k, s, p, p, ceil_mode)
                        want = F.max_pool2d(torch.zeros(1, 1, size, 1), (k, 1), (s, 1), (p, 0), ceil_mode=ceil_mode)
                        assert got == want.shape[2], (size, k, s, p, ceil_mode)


def test_ceil_mode_squeezenet_example():
    # SqueezeNet: 3x3 stride 2 on 13x13 -> 6 with floor, 6 with ceil; on 55 -> 27 both; on 14 -> 6 vs 7
    assert R.max_pool2d_output_size(13, 3, 2, 0, 0, True) == 6
    assert R.max_pool2d_output_size(14, 3, 2, 0, 0, False) == 6
    assert R.max_pool2d_output_size(14, 3, 2, 0, 0, True) == 7
    x = np.arange(14 * 14).reshape(1, 14, 14, 1) % 251 - 128
    y = R.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    assert y[0, 6, 6, 0] == x[0, 12:, 12:, 0].max()  # the clipped 2x2 last window


@settings(max_examples=120, deadline=None)
@given(x=images(max_hw=9, max_c=3, min_hw=2), data=st.data())
def test_max_pool_against_torch_and_the_interpreter(x, data):
    n, h, w, c = x.shape
    kh = data.draw(st.integers(1, min(h, 4)))
    kw = data.draw(st.integers(1, min(w, 4)))
    s = data.draw(st.integers(1, 3))
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    ceil_mode = data.draw(st.booleans())
    got = R.max_pool2d(x, (kh, kw), s, (ph, pw), ceil_mode=ceil_mode)
    np.testing.assert_array_equal(got, _torch_max_pool(x, (kh, kw), s, (ph, pw), ceil_mode))
    np.testing.assert_array_equal(got, NR.max_pool2d(x, (kh, kw), (s, s), (ph, ph, pw, pw), ceil_mode))


# --------------------------------------------------------------------------------------------------
# npu_reference: the format-2 kinds read their documented attributes
# --------------------------------------------------------------------------------------------------


def _op(kind, attrs, tensors=None):
    return SimpleNamespace(name=f"an_{kind}", kind=kind, attrs=attrs, tensors=tensors or {})


def test_run_op_reads_the_documented_attributes():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(2, 3, 4, 6))
    b = rng.integers(-128, 128, size=(2, 1, 1, 6))
    table = rng.integers(-128, 128, size=256)
    q = dict(multiplier=1288490189, exponent=-7)
    cases = [
        (_op("lut", {"function": "custom"}, {"table": table.astype(np.int8)}), [x], R.lut(x, table)),
        (
            _op("mul", dict(a_zero_point=2, b_zero_point=-3, output_zero_point=4, act_min=-100, act_max=90, **q)),
            [x, b],
            R.mul(
                x,
                b,
                a_zero_point=2,
                b_zero_point=-3,
                output_zero_point=4,
                act_min=-100,
                act_max=90,
                **q,
                rounding="single",
            ),
        ),
        (
            _op(
                "concat",
                dict(zero_points=[1, -2], multipliers=[2**30, 1500000000], exponents=[1, -1], output_zero_point=3),
            ),
            [x, b[:, :, :, :2] + 0 * x[..., :2]],
            R.concat(
                [x, b[:, :, :, :2] + 0 * x[..., :2]],
                zero_points=[1, -2],
                multipliers=[2**30, 1500000000],
                exponents=[1, -1],
                output_zero_point=3,
                rounding="single",
            ),
        ),
        (_op("channel_shuffle", {"groups": 3}), [x], R.channel_shuffle(x, 3)),
        (_op("slice", {"begin": 1, "end": 4}), [x], x[..., 1:4]),
        (_op("pad", {"padding": [1, 0, 2, 1], "value": -7}), [x], R.pad(x, (1, 0, 2, 1), -7)),
        (
            _op("upsample", {"scale": [2, 3], "mode": "bilinear", "zero_point": 5}),
            [x],
            R.upsample(x, (2, 3), "bilinear", 5),
        ),
        (_op("upsample", {"scale": [2, 1], "mode": "nearest", "zero_point": 5}), [x], R.upsample(x, (2, 1))),
        (
            _op(
                "mean",
                dict(input_zero_point=-3, output_zero_point=6, act_min=-128, act_max=127, tflite_rounding=True, **q),
            ),
            [x],
            R.mean(x, input_zero_point=-3, output_zero_point=6, tflite_rounding=True, rounding="single", **q),
        ),
        (
            _op("max_pool2d", {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1], "ceil_mode": True}),
            [x],
            R.max_pool2d(x, 3, 2, 1, ceil_mode=True),
        ),
        (
            _op("max_pool2d", {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0, 0, 0]}),
            [x],
            R.max_pool2d(x, 2, 2, 0, ceil_mode=False),
        ),
    ]
    for op, args, want in cases:
        got = NR.run_op(op, args, "single", "raise")
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want, err_msg=op.kind)
    # the program's rounding reaches the rounding ops
    op = cases[-3][0]
    double = R.mean(x, input_zero_point=-3, output_zero_point=6, tflite_rounding=True, rounding="double", **q)
    np.testing.assert_array_equal(NR.run_op(op, [x], "double", "raise"), double)
