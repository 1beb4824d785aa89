"""Algebraic properties of the numpy oracle's new ops (docs/arithmetic.md 9-15), independent of any kernel.

Each property follows from the specification alone (an identity multiplier, a real value of 1, a
permutation and its inverse, ...), so a slip in the oracle that the worked examples miss shows up here.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from support import reference_numpy as R

INT8 = st.integers(-128, 127)
ROUNDING = st.sampled_from(["double", "single"])
PROPS = settings(max_examples=100, deadline=None)


@st.composite
def nhwc(draw, max_hw=5, max_c=6, c=None, hw=None):
    n = draw(st.integers(1, 2))
    h, w = hw if hw is not None else (draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw)))
    c = draw(st.integers(1, max_c)) if c is None else c
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(-128, 128, size=(n, h, w, c))


def _divisors(c):
    return [d for d in range(1, c + 1) if c % d == 0]


# --------------------------------------------------------------------------------------------------
# concat, mul, mean: the rounding ops
# --------------------------------------------------------------------------------------------------


@PROPS
@given(x=nhwc(), data=st.data(), z=INT8, rounding=ROUNDING, scale=st.floats(1e-4, 1.0))
def test_identity_concat_is_a_copy(x, data, z, rounding, scale):
    """An input with the output's scale and zero point comes out bit for bit (section 11)."""
    n, h, w, _ = x.shape
    c_other = data.draw(st.integers(1, 3))
    other = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(-128, 128, (n, h, w, c_other))
    z_other = data.draw(INT8)
    p = R.concat_params([scale, data.draw(st.floats(1e-4, 1.0))], scale)
    assert (p["multipliers"][0], p["exponents"][0]) == (2**30, 1)
    y = R.concat([x, other], zero_points=[z, z_other], output_zero_point=z, rounding=rounding, **p)
    np.testing.assert_array_equal(y[..., : x.shape[-1]], x)


@PROPS
@given(x=nhwc(c=2), zs=st.lists(INT8, min_size=3, max_size=3), rounding=ROUNDING, data=st.data())
def test_concat_of_reordered_inputs_is_the_reordered_output(x, zs, rounding, data):
    """Each input is requantized on its own: swapping two inputs swaps their channel blocks."""
    a, b = x[..., :1], x[..., 1:]
    m = [data.draw(st.integers(2**30, 2**31 - 1)) for _ in range(2)]
    e = [data.draw(st.integers(-8, 2)) for _ in range(2)]
    kw = dict(output_zero_point=zs[2], rounding=rounding)
    ab = R.concat([a, b], zero_points=zs[:2], multipliers=m, exponents=e, **kw)
    ba = R.concat([b, a], zero_points=zs[1::-1], multipliers=m[::-1], exponents=e[::-1], **kw)
    np.testing.assert_array_equal(ab[..., ::-1], ba)


@PROPS
@given(a=nhwc(), z_a=INT8, z_y=INT8, k=st.integers(0, 7), b_base=INT8, rounding=ROUNDING)
def test_mul_by_a_power_of_two_one_is_exact(a, z_a, z_y, k, b_base, rounding):
    """b with real value 1 as s_b = 2^-k, b - z_b = 2^k: the product scale is exact and y = a - z_a + z_y."""
    d = 2**k
    z_b = max(-128, b_base - d) if b_base - d >= -128 else b_base
    b_val = z_b + d
    if b_val > 127:  # keep b an int8: move both down
        z_b, b_val = z_b - (b_val - 127), 127
    b = np.full_like(a, b_val)
    p = R.mul_params(0.05, 2.0**-k, 0.05)
    got = R.mul(a, b, a_zero_point=z_a, b_zero_point=z_b, output_zero_point=z_y, rounding=rounding, **p)
    np.testing.assert_array_equal(got, np.clip(a - z_a + z_y, -128, 127))


@PROPS
@given(a=nhwc(), z_a=INT8, d=st.integers(1, 255), shift=st.integers(0, 255), rounding=ROUNDING)
def test_mul_by_one_reproduces_a_within_one(a, z_a, d, shift, rounding):
    """b with real value 1 for any b - z_b = d (s_b = 1/d): equal to a up to the multiplier's rounding."""
    z_b = -128 + min(shift, 255 - d)
    b = np.full((a.shape[0], 1, 1, a.shape[3]), z_b + d)  # the broadcast form of section 10
    p = R.mul_params(0.02, 1.0 / d, 0.02)
    got = R.mul(a, b, a_zero_point=z_a, b_zero_point=z_b, output_zero_point=z_a, rounding=rounding, **p)
    assert np.abs(got - a).max() <= 1


@PROPS
@given(x=nhwc(c=2), zs=st.lists(INT8, min_size=3, max_size=3), m0=st.integers(2**30, 2**31 - 1))
def test_mul_is_commutative(x, zs, m0):
    a, b = x[..., :1], x[..., 1:]
    kw = dict(output_zero_point=zs[2], multiplier=m0, exponent=-9)
    ab = R.mul(a, b, a_zero_point=zs[0], b_zero_point=zs[1], **kw)
    ba = R.mul(b, a, a_zero_point=zs[1], b_zero_point=zs[0], **kw)
    np.testing.assert_array_equal(ab, ba)


@PROPS
@given(
    x=nhwc(max_hw=8),
    z_x=INT8,
    z_y=INT8,
    s_x=st.floats(1e-3, 0.1),
    ratio=st.floats(0.05, 20.0),
    rounding=ROUNDING,
)
def test_mean_tflite_rounding_within_one_of_npuq(x, z_x, z_y, s_x, ratio, rounding):
    """Rounding twice (TFLite) and once (npuq) land on neighbouring integers at worst (section 15)."""
    n = x.shape[1] * x.shape[2]
    s_y = s_x / ratio
    kw = dict(input_zero_point=z_x, output_zero_point=z_y, rounding=rounding)
    one = R.mean(x, **kw, **R.mean_params(s_x, s_y, n))
    two = R.mean(x, **kw, tflite_rounding=True, **R.mean_params(s_x, s_y, n, tflite_rounding=True))
    assert one.shape == two.shape == (x.shape[0], 1, 1, x.shape[3])
    assert np.abs(one - two).max() <= 1


@PROPS
@given(data=st.data(), z_x=INT8, z_y=INT8, tflite=st.booleans(), rounding=ROUNDING)
def test_mean_of_a_constant_image_is_exact(data, z_x, z_y, tflite, rounding):
    """Same scales in and out: the mean of a constant c is c - z_x + z_y in both roundings."""
    x0 = data.draw(nhwc(max_hw=7))
    x = np.broadcast_to(x0[:, :1, :1, :], x0.shape)
    n = x.shape[1] * x.shape[2]
    p = R.mean_params(0.03, 0.03, n, tflite_rounding=tflite)
    got = R.mean(x, input_zero_point=z_x, output_zero_point=z_y, tflite_rounding=tflite, rounding=rounding, **p)
    np.testing.assert_array_equal(got, np.clip(x[:, :1, :1, :] - z_x + z_y, -128, 127))


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


@PROPS
@given(z=INT8, s=st.floats(1e-3, 1.0), x=nhwc())
def test_identity_and_relu_tables(z, s, x):
    """Same scale and zero point in and out: a wide clamp is the identity and relu is max(q, z)."""
    ident = R.make_table("clamp", s, z, s, z, lo=-1e9, hi=1e9)
    np.testing.assert_array_equal(R.lut(x, ident), x)
    relu = R.make_table("relu", s, z, s, z)
    np.testing.assert_array_equal(R.lut(x, relu), np.maximum(x, z))


@PROPS
@given(
    function=st.sampled_from(["hardsigmoid", "sigmoid", "tanh", "relu", "relu6", "gelu", "silu", "hardswish"]),
    s_x=st.floats(1e-3, 0.2),
    s_y=st.floats(1e-3, 0.2),
    z_x=INT8,
    z_y=INT8,
)
def test_monotone_functions_give_monotone_tables(function, s_x, s_y, z_x, z_y):
    """The table of a non-decreasing f is non-decreasing (rounding and clamping keep order) on the part
    of the axis where f is non-decreasing (gelu, silu, hardswish dip below 0 for r < 0)."""
    table = R.make_table(function, s_x, z_x, s_y, z_y)
    start = 128 + z_x if function in ("gelu", "silu", "hardswish") else 0
    assert (np.diff(table[start:]) >= 0).all()


# --------------------------------------------------------------------------------------------------
# data movement and upsampling
# --------------------------------------------------------------------------------------------------


@PROPS
@given(data=st.data(), fh=st.integers(1, 4), fw=st.integers(1, 4), z=INT8)
def test_bilinear_upsample_of_a_constant_image_is_constant(data, fh, fw, z):
    x0 = data.draw(nhwc(max_hw=4, max_c=3))
    x = np.broadcast_to(x0[:, :1, :1, :], x0.shape)
    y = R.upsample(x, (fh, fw), "bilinear", z)
    np.testing.assert_array_equal(y, np.broadcast_to(x0[:, :1, :1, :], y.shape))


@PROPS
@given(x=nhwc(max_hw=4, max_c=3), fh=st.integers(1, 4), fw=st.integers(1, 4), z=INT8)
def test_bilinear_stays_within_the_inputs_range(x, fh, fw, z):
    """Section 13: no clamping is needed, the result lies between the smallest and largest input."""
    y = R.upsample(x, (fh, fw), "bilinear", z)
    assert y.shape == (x.shape[0], x.shape[1] * fh, x.shape[2] * fw, x.shape[3])
    assert (y >= x.min(axis=(1, 2), keepdims=True)).all() and (y <= x.max(axis=(1, 2), keepdims=True)).all()


@PROPS
@given(x=nhwc(), z=INT8)
def test_bilinear_by_one_is_the_identity(x, z):
    np.testing.assert_array_equal(R.upsample(x, 1, "bilinear", z), x)


@PROPS
@given(x=nhwc(), fh=st.integers(1, 5), fw=st.integers(1, 5), oh=st.integers(0, 4), ow=st.integers(0, 4))
def test_nearest_upsample_then_subsampling_recovers_x(x, fh, fw, oh, ow):
    y = R.upsample(x, (fh, fw))
    np.testing.assert_array_equal(y[:, oh % fh :: fh, ow % fw :: fw, :], x)


@PROPS
@given(x=nhwc(max_c=12), data=st.data())
def test_channel_shuffle_inverse(x, data):
    """Shuffling with g then with C / g is the identity (the transpose of a g x k matrix, transposed back)."""
    c = x.shape[-1]
    g = data.draw(st.sampled_from(_divisors(c)))
    y = R.channel_shuffle(x, g)
    assert sorted(y[0, 0, 0]) == sorted(x[0, 0, 0])
    np.testing.assert_array_equal(R.channel_shuffle(y, c // g), x)


@PROPS
@given(x=nhwc(max_c=8), data=st.data())
def test_channel_slices_tile_the_channels(x, data):
    c = x.shape[-1]
    cut = data.draw(st.integers(0, c))
    parts = [R.channel_slice(x, b, e) for b, e in ((0, cut), (cut, c)) if b < e]
    np.testing.assert_array_equal(np.concatenate(parts, axis=-1), x)


@PROPS
@given(x=nhwc(), pads=st.lists(st.integers(0, 3), min_size=4, max_size=4), value=INT8)
def test_pad_then_window_recovers_x(x, pads, value):
    t, b, l, r = pads
    n, h, w, c = x.shape
    y = R.pad(x, pads, value)
    assert y.shape == (n, h + t + b, w + l + r, c)
    np.testing.assert_array_equal(y[:, t : t + h, l : l + w, :], x)
    border = np.ones(y.shape[1:3], dtype=bool)
    border[t : t + h, l : l + w] = False
    assert (y[:, border, :] == value).all()


@PROPS
@given(x=nhwc(max_hw=8, max_c=3), data=st.data())
def test_ceil_mode_adds_at_most_one_window_and_picks_input_values(x, data):
    n, h, w, c = x.shape
    kh, kw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    pad = (data.draw(st.integers(0, kh // 2)), data.draw(st.integers(0, kh // 2)))
    pad += (data.draw(st.integers(0, kw // 2)), data.draw(st.integers(0, kw // 2)))
    floor = R.max_pool2d(x, (kh, kw), (sh, sw), pad)
    ceil = R.max_pool2d(x, (kh, kw), (sh, sw), pad, ceil_mode=True)
    assert floor.shape[1] <= ceil.shape[1] <= floor.shape[1] + 1
    assert floor.shape[2] <= ceil.shape[2] <= floor.shape[2] + 1
    # the windows both modes share are the same windows
    np.testing.assert_array_equal(ceil[:, : floor.shape[1], : floor.shape[2]], floor)
    for i in range(n):
        for ch in range(c):
            assert np.isin(ceil[i, :, :, ch], x[i, :, :, ch]).all()


@PROPS
@given(x=nhwc())
def test_max_pool_1x1_is_the_identity(x):
    np.testing.assert_array_equal(R.max_pool2d(x, 1, 1, 0, ceil_mode=True), x)
