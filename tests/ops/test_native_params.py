"""The parameter structs of the native core (npuq._C.Conv2dParams, RequantParams, AddParams, Pool2dParams):
keyword construction, named read/write fields, and the checks an op makes when it converts one, which are
the same (same words) for the CPU plan, the reference and, where the build has them, the CUDA bindings."""

import numpy as np
import pytest

import npuq
from npuq import _C

RNG = np.random.default_rng(7)
X = RNG.integers(-128, 128, (1, 5, 5, 4), dtype=np.int8)
W = RNG.integers(-127, 128, (6, 3, 3, 4), dtype=np.int8)
B = RNG.integers(-1000, 1000, 6).astype(np.int32)


def requant(channels=6, **over):
    fields = dict(multiplier=np.full(channels, 2**30, np.int32), exponent=np.full(channels, -8, np.int32))
    fields.update(over)
    return _C.RequantParams(**fields)


def conv_params(**over):
    fields = dict(in_channels=4, requant=requant(), padding=(1, 1, 1, 1))
    fields.update(over)
    return _C.Conv2dParams(**fields)


def add_params(**over):
    fields = dict(a_zero_point=1, b_zero_point=-2, output_zero_point=3, **npuq.ops.add_params(0.5, 0.25, 0.75))
    fields.update(over)
    return _C.AddParams(**fields)


def test_conv2d_params_defaults_and_fields():
    p = _C.Conv2dParams(in_channels=4, requant=requant())
    assert (p.in_channels, list(p.stride), list(p.padding), list(p.dilation), p.groups) == (
        4,
        [1, 1],
        [0] * 4,
        [1, 1],
        1,
    )
    assert (p.input_zero_point, p.overflow, p.fully_connected) == (0, "raise", False)
    p.stride = (2, 1)
    p.padding = [1, 0, 1, 0]
    p.groups = 2
    p.overflow = "wrap"
    p.requant.act_min = -5  # the nested struct is the one p holds, not a copy
    assert (list(p.stride), list(p.padding), p.groups, p.overflow, p.requant.act_min) == (
        [2, 1],
        [1, 0, 1, 0],
        2,
        "wrap",
        -5,
    )
    assert repr(p).startswith("Conv2dParams(in_channels=4, stride=[2, 1], padding=[1, 0, 1, 0]")
    assert "RequantParams(multiplier=array(" in repr(p)


def test_requant_params_defaults_and_fields():
    m0 = np.full(3, 2**30, np.int32)
    r = _C.RequantParams(multiplier=m0, exponent=np.zeros(3, np.int32))
    assert r.multiplier is m0  # the array itself, not a copy
    assert (r.channel_shift, r.output_zero_point, r.act_min, r.act_max, r.rounding) == (None, 0, -128, 127, "double")
    r.channel_shift = np.ones(3, np.uint8)
    r.rounding = "single"
    assert r.channel_shift.tolist() == [1, 1, 1] and r.rounding == "single"


def test_add_and_pool_params_fields():
    a = add_params(left_shift=18)
    assert (a.a_zero_point, a.b_zero_point, a.output_zero_point, a.left_shift) == (1, -2, 3, 18)
    assert (a.act_min, a.act_max, a.rounding) == (-128, 127, "double")
    a.act_max = 100
    assert a.act_max == 100 and "left_shift=18" in repr(a)
    p = _C.Pool2dParams(kernel=(3, 3), stride=(2, 2))
    assert (list(p.kernel), list(p.stride), list(p.padding), p.count_include_pad) == ([3, 3], [2, 2], [0] * 4, False)
    assert (p.input_zero_point, p.act_min, p.act_max) == (0, -128, 127)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _C.Conv2dParams(4, requant()),  # keywords only
        lambda: _C.Conv2dParams(in_channels=4),  # requant is required
        lambda: _C.RequantParams(multiplier=np.ones(2, np.int32)),  # exponent is required
        lambda: _C.Pool2dParams(kernel=(2, 2)),  # stride is required
        lambda: _C.AddParams(a_zero_point=0),
        lambda: _C.Conv2dParams(in_channels="4", requant=requant()),
        lambda: _C.RequantParams(multiplier=[1, 2], exponent=np.ones(2, np.int32)),  # numpy arrays only
    ],
)
def test_construction_type_errors(make):
    with pytest.raises(TypeError):
        make()


def test_field_assignment_type_errors():
    p = conv_params()
    with pytest.raises(TypeError):
        p.groups = "2"
    with pytest.raises(TypeError):
        p.stride = (1, 2, 3)
    with pytest.raises(TypeError):
        p.requant.multiplier = [1, 2]
    with pytest.raises(TypeError):
        p.requant.act_min = 2**40  # int32


def test_plan_and_reference_agree_with_the_ops():
    p = conv_params(requant=requant(output_zero_point=3, act_min=-100))
    plan = _C.Conv2dPlan(p, W, B)
    want = npuq.ops.conv2d(X, W, B, padding=1, multiplier=2**30, exponent=-8, output_zero_point=3, act_min=-100)
    np.testing.assert_array_equal(plan.run(X), want)
    np.testing.assert_array_equal(_C.ref_conv2d(p, X, W, B), want)
    p.requant.act_min = 0  # the plan holds copies of everything it needs
    np.testing.assert_array_equal(plan.run(X), want)
    assert not np.array_equal(_C.Conv2dPlan(p, W, B).run(X), want)


def test_requantize_add_pool_take_the_structs():
    acc = RNG.integers(-(2**20), 2**20, (4, 6), dtype=np.int32)
    np.testing.assert_array_equal(
        _C.requantize(requant(), acc), npuq.ops.requantize(acc, multiplier=2**30, exponent=-8)
    )
    a = RNG.integers(-128, 128, (2, 3, 3, 5), dtype=np.int8)
    b = RNG.integers(-128, 128, (2, 3, 3, 5), dtype=np.int8)
    kw = dict(a_zero_point=1, b_zero_point=-2, output_zero_point=3, **npuq.ops.add_params(0.5, 0.25, 0.75))
    np.testing.assert_array_equal(_C.add(add_params(), a, b), npuq.ops.add(a, b, **kw))
    np.testing.assert_array_equal(_C.add(add_params(), a, b, reference=True), npuq.ops.reference.add(a, b, **kw))
    pool = _C.Pool2dParams(kernel=(2, 2), stride=(1, 1), padding=(1, 0, 1, 0), count_include_pad=True)
    np.testing.assert_array_equal(
        _C.avg_pool2d(pool, a), npuq.ops.avg_pool2d(a, 2, stride=1, padding=(1, 0, 1, 0), count_include_pad=True)
    )


# (struct fields changed, exception, message): the words of the native checks, which predate the structs.
CONV_ERRORS = [
    (dict(groups=0), ValueError, "groups must be >= 1, got 0"),
    (dict(groups=3), ValueError, r"groups \(3\) must divide the input channels \(4\)"),
    (
        dict(in_channels=8),
        ValueError,
        r"weight has 4 input channels per group but the input has 8 channels in 1 "
        r"groups \(expected 8\)",
    ),
    (dict(overflow="clip"), ValueError, "overflow must be 'raise', 'saturate' or 'wrap', got 'clip'"),
    (dict(requant=requant(rounding="up")), ValueError, "rounding must be 'double' or 'single', got 'up'"),
    (dict(requant=requant(channels=5)), ValueError, r"multiplier must have shape \(6,\), got \(5,\)"),
    (dict(requant=requant(exponent=np.zeros(6, np.int64))), TypeError, "exponent must have dtype int32, got int64"),
    (
        dict(requant=requant(channel_shift=np.zeros(6, np.int32))),
        TypeError,
        "channel_shift must have dtype uint8, got int32",
    ),
    (
        dict(requant=requant(channel_shift=np.full(6, 16, np.uint8))),
        ValueError,
        r"conv2d: channel_shift\[0\] = 16 is outside \[0, 15\]",
    ),
    (dict(requant=requant(act_min=10, act_max=5)), ValueError, r"conv2d: act_min \(10\) must be <= act_max \(5\)"),
    (dict(requant=requant(multiplier=np.full(6, 5, np.int32))), ValueError, "is not a Q31 mantissa"),
    (dict(input_zero_point=200), ValueError, r"conv2d: input_zero_point must be in \[-128, 127\], got 200"),
    (dict(padding=(3, 0, 0, 0)), ValueError, "conv2d: vertical padding"),
    (dict(stride=(0, 1)), ValueError, "conv2d: stride must be >= 1, got 0"),
]


@pytest.mark.parametrize("over, error, match", CONV_ERRORS)
def test_conv_params_checks(over, error, match):
    p = conv_params(**over)
    with pytest.raises(error, match=match):
        _C.Conv2dPlan(p, W, B)
    with pytest.raises(error, match=match):
        _C.ref_conv2d(p, X, W, B)


@pytest.mark.parametrize(
    "weight, bias, error, match",
    [
        (W.astype(np.int32), B, TypeError, "weight must have dtype int8, got int32"),
        (W[0], B, ValueError, r"weight must have 4 dimensions, got shape \(3, 3, 4\)"),
        (W, B[:5], ValueError, r"bias must have shape \(6,\), got \(5,\)"),
        (W, B.astype(np.int64), TypeError, "bias must have dtype int32, got int64"),
    ],
)
def test_conv_weight_and_bias_checks(weight, bias, error, match):
    with pytest.raises(error, match=match):
        _C.Conv2dPlan(conv_params(), weight, bias)


def test_reference_checks_the_input_against_the_layer():
    with pytest.raises(ValueError, match=r"x has 3 channels \(NHWC shape \(1, 5, 5, 3\)\) but the layer expects 4"):
        _C.ref_conv2d(conv_params(), X[..., :3].copy(), W, B)


def test_fully_connected_names_itself_in_overflow_errors():
    w = np.full((2, 1, 1, 4), 127, np.int8)
    b = np.full(2, 2**31 - 1, np.int32)
    x = np.full((1, 1, 1, 4), 127, np.int8)
    for fc, name in ((False, "conv2d"), (True, "fully_connected")):
        p = _C.Conv2dParams(in_channels=4, requant=requant(channels=2), input_zero_point=-128, fully_connected=fc)
        with pytest.raises(OverflowError, match=f"^{name}: the accumulator"):
            _C.Conv2dPlan(p, w, b).run(x)


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(left_shift=30), r"add: left_shift must be in \[0, 22\], got 30"),
        (dict(a_zero_point=300), r"add: a_zero_point must be in \[-128, 127\], got 300"),
        (dict(a_exponent=1), r"add: input multipliers must be <= 1"),
        (dict(rounding="down"), "rounding must be 'double' or 'single', got 'down'"),
        (dict(act_min=5, act_max=-5), r"add: act_min \(5\) must be <= act_max \(-5\)"),
    ],
)
def test_add_params_checks(over, match):
    a = np.zeros(4, np.int8)
    with pytest.raises(ValueError, match=match):
        _C.add(add_params(**over), a, a)


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(kernel=(0, 2)), "avg_pool2d: kernel height must be >= 1, got 0"),
        (dict(padding=(2, 0, 0, 0)), r"avg_pool2d: padding \(2, 0, 0, 0\) must be smaller than the kernel \(2 x 2\)"),
        (dict(input_zero_point=-200), r"avg_pool2d: input_zero_point must be in \[-128, 127\], got -200"),
        (dict(kernel=(9, 9), stride=(9, 9)), r"avg_pool2d: the kernel \(9 x 9\) is larger than the padded input"),
    ],
)
def test_pool_params_checks(over, match):
    fields = dict(kernel=(2, 2), stride=(2, 2))
    fields.update(over)
    with pytest.raises(ValueError, match=match):
        _C.avg_pool2d(_C.Pool2dParams(**fields), X)


@pytest.mark.skipif(not _C.BUILT_WITH_CUDA, reason="npuq was built without CUDA kernels")
@pytest.mark.parametrize("over, error, match", CONV_ERRORS[:8])
def test_cuda_bindings_convert_the_structs_alike(over, error, match):
    # The struct is converted before any device is touched: no GPU is needed to reach these checks.
    with pytest.raises(error, match=match):
        _C.CudaConv2dPlan(conv_params(**over), W, B, 0, 0)


@pytest.mark.skipif(not _C.BUILT_WITH_CUDA, reason="npuq was built without CUDA kernels")
def test_cuda_add_and_pool_check_the_structs_first():
    with pytest.raises(ValueError, match=r"add: left_shift must be in \[0, 22\], got 30"):
        _C.cuda_add(add_params(left_shift=30), 1, 4, 1, 4, 1, 4, 0, 0)
    with pytest.raises(ValueError, match=r"avg_pool2d: padding \(2, 0, 0, 0\) must be smaller"):
        _C.cuda_pool2d(
            True,
            _C.Pool2dParams(kernel=(2, 2), stride=(2, 2), padding=(2, 0, 0, 0)),
            1,
            100,
            (1, 5, 5, 4),
            1,
            100,
            0,
            0,
        )


def _gpu_usable() -> bool:
    from npuq import _cuda

    info = _cuda.info()
    return bool(info["built"]) and info["devices"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_usable(), reason="needs a usable CUDA device")
@pytest.mark.parametrize("over, error, match", CONV_ERRORS)
def test_the_cuda_plan_checks_the_whole_layer_as_the_cpu_plan_does(over, error, match):
    # past the struct conversion, on a device: the input zero point, the requantization's channel count and
    # the overflow policy are checked by the one validate() of the CPU plan
    with pytest.raises(error, match=match):
        _C.CudaConv2dPlan(conv_params(**over), W, B, 0, 0)
