"""npuq.ops.conv2d (fast path), npuq.ops.reference.conv2d and the packed npuq.ops.Conv2d against the
numpy oracle, bit for bit (arithmetic.md sections 3-5)."""

import numpy as np
import pytest
from hypothesis import given

import npuq
from support import reference_numpy as R
from support.helpers import (
    assert_paths_agree,
    assert_same,
    fitting_exponent,
    isa_threads,
    scaled_examples,
    using_isa,
)
from support.op_cases import conv_case


def _expect(x, wt, bias, kwargs):
    try:
        return R.conv2d(x, wt, bias, **kwargs)
    except OverflowError:
        return OverflowError


def _check_all_paths(x, wt, bias, kwargs, what="", isa=None, threads=None):
    expected = _expect(x, wt, bias, kwargs)
    fast_kwargs = dict(kwargs) if threads is None else dict(kwargs, threads=threads)
    paths = [
        ("npuq.ops.conv2d", lambda: npuq.ops.conv2d(x, wt, bias, **fast_kwargs)),
        ("npuq.ops.reference.conv2d", lambda: npuq.ops.reference.conv2d(x, wt, bias, **kwargs)),
        ("npuq.ops.Conv2d", lambda: npuq.ops.Conv2d(wt, bias, **fast_kwargs)(x)),
    ]
    assert_paths_agree(expected, paths, isa, f"{what} isa={isa} threads={threads}")


@scaled_examples(10)
@given(conv_case(), isa_threads())
def test_conv2d_matches_oracle(case, isa_and_threads):
    x, wt, bias, geometry, params = case
    _check_all_paths(x, wt, bias, {**geometry, **params}, "", *isa_and_threads)


@pytest.mark.slow
@scaled_examples(100)
@given(conv_case(), isa_threads())
def test_conv2d_matches_oracle_soak(case, isa_and_threads):
    """The same property, 10x longer (run with --runslow)."""
    x, wt, bias, geometry, params = case
    _check_all_paths(x, wt, bias, {**geometry, **params}, "", *isa_and_threads)


# ------------------------------------------------------------------------------------------------
# fixed MobileNet-like shapes (vector tails, strides, asymmetric TF "SAME" padding)
# ------------------------------------------------------------------------------------------------


def _per_channel_params(rng, acc, c_out, rounding):
    e = np.clip(fitting_exponent(acc, 0) + rng.integers(-2, 3, c_out), -31, 30)
    return dict(
        multiplier=rng.integers(2**30, 2**31, c_out),
        exponent=e,
        rounding=rounding,
        output_zero_point=int(rng.integers(-20, 20)),
        act_min=-128,
        act_max=127,
    )


def _run_shape(seed, x_shape, w_shape, rounding, per_channel=True, wess=False, **geometry):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, x_shape, dtype=np.int8)
    wt = rng.integers(-127, 128, w_shape, dtype=np.int8)
    c_out = w_shape[0]
    bias = rng.integers(-(2**14), 2**14, c_out).astype(np.int32)
    geometry.setdefault("input_zero_point", int(rng.integers(-128, 128)))
    acc = R.conv2d_acc(x, wt, bias, **geometry)
    params = _per_channel_params(rng, acc, c_out, rounding)
    if not per_channel:
        params["multiplier"] = int(params["multiplier"][0])
        params["exponent"] = int(np.max(params["exponent"]))
        if wess:
            params["channel_shift"] = rng.integers(0, 4, c_out)
    _check_all_paths(x, wt, bias, {**geometry, **params}, f"x{x_shape} w{w_shape} {geometry}")


@pytest.mark.parametrize("c", [3, 5, 8, 16, 17, 24, 32, 33, 64, 65, 96, 144])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_mobilenet_depthwise_3x3(c, stride, rounding):
    _run_shape(c * 10 + stride, (1, 9, 9, c), (c, 3, 3, 1), rounding, stride=stride, padding=1, groups=c)


@pytest.mark.parametrize("c", [3, 16, 33])
@pytest.mark.parametrize("dm", [1, 2])
def test_depthwise_multiplier(c, dm):
    _run_shape(c + dm, (2, 8, 7, c), (c * dm, 3, 3, 1), "double", stride=2, padding=(0, 1, 0, 1), groups=c)


@pytest.mark.parametrize("c_in", [3, 5, 16, 17, 24, 32, 33, 65, 96, 160, 320])
@pytest.mark.parametrize("c_out", [8, 17, 64])
def test_mobilenet_pointwise(c_in, c_out):
    for i, rounding in enumerate(("double", "single")):
        _run_shape(c_in * 1000 + c_out + i, (1, 5, 4, c_in), (c_out, 1, 1, c_in), rounding)


@pytest.mark.parametrize("wess", [False, True])
def test_mobilenet_first_layer(wess):
    # 3x3 stride 2 over RGB, TF "SAME" padding for an even input: (0, 1, 0, 1)
    _run_shape(7, (1, 16, 16, 3), (32, 3, 3, 3), "double", per_channel=False, wess=wess, stride=2, padding=(0, 1, 0, 1))


@pytest.mark.parametrize("c_in, kernel", [(1, 3), (3, 3), (4, 4), (5, 3), (2, 7), (16, 1), (8, 2)])
@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (2, (0, 1, 0, 1)), (3, 2)])
def test_short_kernel_rows_every_isa(c_in, kernel, stride, padding):
    """kernel_w * C_in <= 16 (the stem's 3 x 3 x 3): im2col copies 16 bytes per kernel row where the window
    lies inside the image, and must fall back where those 16 bytes would run past the input (its last
    pixels) or the window crosses the padding. Batches of 1 and 2, inputs that end exactly at a window."""
    padding = tuple(min(p, kernel - 1) for p in (padding if isinstance(padding, tuple) else (padding,) * 4))
    for batch, size in ((1, kernel + 2 * stride), (2, 11)):
        for isa in npuq.cpu_features()["supported"]:
            with using_isa(isa):
                _run_shape(
                    c_in * 100 + kernel * 10 + stride + batch,
                    (batch, size, size + 1, c_in),
                    (9, kernel, kernel, c_in),
                    "double",
                    stride=stride,
                    padding=padding,
                )


@pytest.mark.parametrize("c", [1, 7, 17, 40])
def test_large_kernels_and_dilation(c):
    _run_shape(c, (1, 12, 11, c), (5, 7, 7, c), "single", padding=(3, 2, 1, 0))
    _run_shape(c + 1, (2, 13, 12, c), (4, 3, 3, c), "double", dilation=(3, 2), stride=(1, 2), padding=(2, 1, 0, 3))


def test_channel_shift_with_per_channel_multipliers():
    """arithmetic.md defines e_c = e - s_c for both; combining them must follow the formula too."""
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (1, 6, 6, 8), dtype=np.int8)
    wt = rng.integers(-127, 128, (16, 3, 3, 8), dtype=np.int8)
    acc = R.conv2d_acc(x, wt, None, padding=1)
    params = _per_channel_params(rng, acc, 16, "double")
    params["exponent"] = params["exponent"] + 3
    params["channel_shift"] = rng.integers(0, 7, 16)
    _check_all_paths(x, wt, None, {"padding": 1, **params})


def test_packed_layer_reused():
    rng = np.random.default_rng(5)
    wt = rng.integers(-127, 128, (24, 3, 3, 8), dtype=np.int8)
    bias = rng.integers(-1000, 1000, 24).astype(np.int32)
    kw = dict(
        input_zero_point=-3,
        stride=2,
        padding=(1, 0, 0, 1),
        multiplier=rng.integers(2**30, 2**31, 24),
        exponent=np.full(24, -10),
        output_zero_point=4,
        act_min=4,
        act_max=127,
    )
    layer = npuq.ops.Conv2d(wt, bias, **kw)
    for shape in ((1, 8, 8, 8), (3, 9, 5, 8), (1, 2, 2, 8), (2, 8, 8, 8)):
        x = rng.integers(-128, 128, shape, dtype=np.int8)
        expected = R.conv2d(x, wt, bias, **kw)
        assert_same(expected, layer(x), f"Conv2d layer on {shape}")
        assert_same(expected, npuq.ops.conv2d(x, wt, bias, **kw), f"conv2d on {shape}")


def test_packed_layer_does_not_alias_inputs():
    """Changing the caller's weight/bias arrays after packing must not change the layer."""
    rng = np.random.default_rng(6)
    wt = rng.integers(-127, 128, (8, 3, 3, 4), dtype=np.int8)
    bias = rng.integers(-1000, 1000, 8).astype(np.int32)
    kw = dict(padding=1, multiplier=2**30, exponent=-8)
    x = rng.integers(-128, 128, (1, 5, 5, 4), dtype=np.int8)
    expected = R.conv2d(x, wt, bias, **kw)
    layer = npuq.ops.Conv2d(wt, bias, **kw)
    wt[...] = 0
    bias[...] = 0
    assert_same(expected, layer(x), "Conv2d after mutating the caller's weights")


LARGE_LAYERS = [
    # (x shape, w shape, geometry): MobileNetV2 at 224x224
    ((1, 224, 224, 3), (32, 3, 3, 3), dict(stride=2, padding=(0, 1, 0, 1))),
    ((1, 112, 112, 32), (32, 3, 3, 1), dict(padding=1, groups=32)),
    ((1, 112, 112, 32), (16, 1, 1, 32), dict()),
    ((1, 112, 112, 96), (96, 3, 3, 1), dict(stride=2, padding=(0, 1, 0, 1), groups=96)),
    ((1, 14, 14, 576), (576, 3, 3, 1), dict(padding=1, groups=576)),
    ((1, 7, 7, 320), (1280, 1, 1, 320), dict()),
    ((4, 28, 28, 64), (64, 3, 3, 64), dict(padding=1)),
]


@pytest.mark.parametrize("i", range(len(LARGE_LAYERS)))
def test_large_realistic_layers(i):
    x_shape, w_shape, geo = LARGE_LAYERS[i]
    rng = np.random.default_rng(i)
    x = rng.integers(-128, 128, x_shape, dtype=np.int8)
    wt = rng.integers(-127, 128, w_shape, dtype=np.int8)
    bias = rng.integers(-(2**16), 2**16, w_shape[0]).astype(np.int32)
    geo = dict(geo, input_zero_point=-6)
    acc = R.conv2d_acc(x, wt, bias, **geo)
    for rounding in ("double", "single"):
        kw = dict(geo, **_per_channel_params(rng, acc, w_shape[0], rounding))
        expected = R.conv2d(x, wt, bias, **kw)
        for threads in (1, 2):
            assert_same(expected, npuq.ops.conv2d(x, wt, bias, threads=threads, **kw), f"layer {i} t={threads}")
        assert_same(expected, npuq.ops.Conv2d(wt, bias, **kw)(x), f"packed layer {i}")
    assert_same(R.conv2d(x, wt, bias, **kw), npuq.ops.reference.conv2d(x, wt, bias, **kw), f"reference layer {i}")


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_every_effective_exponent_every_isa(rounding):
    """One output channel per (e, s_c) pair over the whole range (e_c in [-46, 30]), under each ISA: the vector
    kernels' fused requantization (arithmetic.md 3.5 covers e_c in [-31, 0]) and its fallbacks."""
    e_all, s_all = np.meshgrid(np.arange(-31, 31), np.array([0, 1, 7, 15]), indexing="ij")
    e_all, s_all = e_all.ravel(), s_all.ravel()  # 248 channels
    c_out = e_all.size
    rng = np.random.default_rng(21)
    x = rng.integers(-128, 128, (2, 5, 5, 8), dtype=np.int8)
    wt = rng.integers(-127, 128, (c_out, 3, 3, 8), dtype=np.int8)
    wt[::5] //= 60  # some channels with tiny accumulators
    bias = rng.integers(-(2**12), 2**12, c_out).astype(np.int32)
    for m0 in (rng.integers(2**30, 2**31, c_out), np.full(c_out, 2**30), np.full(c_out, 2**31 - 1)):
        kw = dict(
            padding=1,
            input_zero_point=-1,
            multiplier=m0,
            exponent=e_all,
            channel_shift=s_all,
            output_zero_point=2,
            rounding=rounding,
        )
        expected = R.conv2d(x, wt, bias, **kw)
        for isa in npuq.cpu_features()["supported"]:
            with using_isa(isa):
                assert_same(expected, npuq.ops.conv2d(x, wt, bias, **kw), f"conv isa={isa}")
                # the same parameters through depthwise and pointwise kernels
                xd = rng.integers(-128, 128, (1, 4, 4, c_out), dtype=np.int8)
                wd = rng.integers(-127, 128, (c_out, 3, 3, 1), dtype=np.int8)
                kwd = dict(kw, groups=c_out)
                assert_same(R.conv2d(xd, wd, bias, **kwd), npuq.ops.conv2d(xd, wd, bias, **kwd), f"dw isa={isa}")
                wp = rng.integers(-127, 128, (c_out, 1, 1, 8), dtype=np.int8)
                kwp = dict(kw, padding=0)
                assert_same(R.conv2d(x, wp, bias, **kwp), npuq.ops.conv2d(x, wp, bias, **kwp), f"pw isa={isa}")
