"""mean, upsample, pad, channel_shuffle, channel_slice and max_pool2d with ceil_mode (docs/arithmetic.md
12-15): the fast paths (every instruction set, 1 and 2 threads) and the scalar reference against the
independent numpy oracle bit for bit, torch where the semantics must agree, torch tensors in and out, and
bad input."""

import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

import npuq  # noqa: E402
from npuq import _cuda  # noqa: E402
from support import reference_numpy as R  # noqa: E402

ISAS = list(npuq.cpu_features()["supported"])
CL = torch.channels_last
INFO = _cuda.info()
HAS_GPU = bool(INFO["built"]) and INFO["devices"] > 0


# ------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _isa(name):
    npuq.set_isa(name)
    try:
        yield
    finally:
        npuq.set_isa("auto")


def _same(expected, got, what):
    got = np.asarray(got)
    assert got.dtype == np.int8, (what, got.dtype)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    bad = np.argwhere(got.astype(np.int64) != expected)
    assert bad.size == 0, (
        f"{what}: {len(bad)} values differ, first at {tuple(bad[0])}: {got[tuple(bad[0])]} != {expected[tuple(bad[0])]}"
    )


@st.composite
def images(draw, max_n=3, max_hw=9, max_c=20, min_c=1):
    """An int8 NHWC image: uniform values, only the two extremes (the accumulators' bounds), or one constant."""
    shape = (
        draw(st.integers(1, max_n)),
        draw(st.integers(1, max_hw)),
        draw(st.integers(1, max_hw)),
        draw(st.integers(min_c, max_c)),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "extremes", "constant"]))
    if kind == "uniform":
        return rng.integers(-128, 128, shape, dtype=np.int8)
    if kind == "extremes":
        return rng.choice(np.array([-128, 127], np.int8), shape)
    return np.full(shape, draw(st.integers(-128, 127)), np.int8)


zero_points = st.integers(-128, 127)
isas = st.sampled_from(ISAS)
thread_counts = st.sampled_from([1, 2])


def _to_torch(x):
    """numpy NHWC -> torch (N, C, H, W) channels_last (a view of the same memory)."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def _from_torch(t):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int8, type(t)
    assert t.is_contiguous(memory_format=CL), t.stride()
    return t.permute(0, 2, 3, 1).numpy()


@contextlib.contextmanager
def _no_layout_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", npuq.LayoutWarning)
        yield


# ---------------------------------------------------------------------------------------- mean (15)
@st.composite
def mean_cases(draw):
    x = draw(images())
    tflite = draw(st.booleans())
    if draw(st.booleans()):  # realistic: the multiplier of two scales
        s_x = draw(st.floats(1e-3, 1.0))
        s_y = draw(st.floats(1e-3, 1.0))
        q = R.mean_params(s_x, s_y, x.shape[1] * x.shape[2], tflite)
    else:  # anywhere in the exponent range, including a flushed multiplier
        m0 = draw(st.one_of(st.just(0), st.integers(2**30, 2**31 - 1)))
        q = dict(multiplier=m0, exponent=draw(st.integers(-31, 30)))
    lo = draw(st.integers(-128, 127))
    hi = draw(st.integers(lo, 127))
    kw = dict(
        q,
        input_zero_point=draw(zero_points),
        output_zero_point=draw(zero_points),
        act_min=lo,
        act_max=hi,
        tflite_rounding=tflite,
        rounding=draw(st.sampled_from(["double", "single"])),
    )
    return x, kw


@settings(max_examples=250, deadline=None)
@given(case=mean_cases(), isa=isas, threads=thread_counts)
def test_mean_matches_the_oracle(case, isa, threads):
    x, kw = case
    expected = R.mean(x, **kw)
    with _isa(isa):
        _same(expected, npuq.ops.mean(x, threads=threads, **kw), f"mean {kw} isa={isa} threads={threads}")
    _same(expected, npuq.ops.reference.mean(x, **kw), f"reference mean {kw}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 64, 64, 24),  # one image split across threads
        (1, 300, 1, 1000),
        (3, 40, 40, 17),  # a batch at least as large as the thread count
        (1, 2048, 4096, 1),  # H * W = 2^23, the largest mean: |acc| = 255 * 2^23
    ],
)
def test_mean_large_images_and_the_int32_bound(shape, threads):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    count = shape[1] * shape[2]
    cases = [(x, -7)]
    if count == 2**23:  # the sum at both ends of its range: every value 127 with z = -128, and the converse
        cases = [(np.full(shape, 127, np.int8), -128), (np.full(shape, -128, np.int8), 127)]
    for img, z in cases:
        for tflite in (False, True):
            kw = dict(
                R.mean_params(0.02, 0.017, count, tflite),
                input_zero_point=z,
                output_zero_point=3,
                tflite_rounding=tflite,
            )
            _same(R.mean(img, **kw), npuq.ops.mean(img, threads=threads, **kw), f"mean {shape} z={z} {kw}")


@settings(max_examples=200, deadline=None)
@given(
    s_x=st.floats(1e-4, 10.0),
    s_y=st.floats(1e-4, 10.0),
    count=st.integers(1, 2**23),
    tflite=st.booleans(),
)
def test_mean_params_matches_the_oracle(s_x, s_y, count, tflite):
    real = s_x / (s_y if tflite else count * s_y)
    with warnings.catch_warnings(record=True) as caught:  # a multiplier below 2^-32 flushes, and says so
        warnings.simplefilter("always", npuq.MultiplierFlushedWarning)
        got = npuq.ops.mean_params(s_x, s_y, count, tflite)
    assert got == R.mean_params(s_x, s_y, count, tflite)
    flushed = [w for w in caught if issubclass(w.category, npuq.MultiplierFlushedWarning)]
    assert bool(flushed) == (got == dict(multiplier=0, exponent=0)), real


def test_the_two_mean_roundings_differ_somewhere():
    """TFLite's two roundings are not the one-rounding form: the flag must change some outputs."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (64, 3, 5, 16), dtype=np.int8)
    one = npuq.ops.mean(x, input_zero_point=1, output_zero_point=0, **npuq.ops.mean_params(0.02, 0.011, 15))
    two = npuq.ops.mean(
        x, input_zero_point=1, output_zero_point=0, tflite_rounding=True, **npuq.ops.mean_params(0.02, 0.011, 15, True)
    )
    assert 0 < np.count_nonzero(one != two) and np.abs(one.astype(int) - two).max() == 1


# ---------------------------------------------------------------------------------- upsample (12, 13)
factors = st.one_of(st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5)))


@settings(max_examples=250, deadline=None)
@given(
    x=images(max_hw=6, max_c=12),
    scale=factors,
    mode=st.sampled_from(["nearest", "bilinear"]),
    z=zero_points,
    isa=isas,
    threads=thread_counts,
)
def test_upsample_matches_the_oracle(x, scale, mode, z, isa, threads):
    expected = R.upsample(x, scale, mode, z)
    with _isa(isa):
        got = npuq.ops.upsample(x, scale, mode=mode, zero_point=z, threads=threads)
    _same(expected, got, f"upsample {scale} {mode} z={z} isa={isa} threads={threads}")
    _same(expected, npuq.ops.reference.upsample(x, scale, mode=mode, zero_point=z), "reference upsample")


@settings(max_examples=30, deadline=None)
@given(x=images(max_n=1, max_hw=2, max_c=3), f_h=st.integers(30, 64), f_w=st.integers(1, 64), z=zero_points)
def test_upsample_large_factors_match_the_oracle(x, f_h, f_w, z):
    for mode in ("nearest", "bilinear"):
        _same(R.upsample(x, (f_h, f_w), mode, z), npuq.ops.upsample(x, (f_h, f_w), mode=mode, zero_point=z), mode)


@settings(max_examples=150, deadline=None)
@given(x=images(max_hw=7, max_c=6), f=st.integers(1, 8))
def test_nearest_upsample_is_torch_nearest(x, f):
    want = F.interpolate(_to_torch(x).double(), scale_factor=f, mode="nearest")
    got = npuq.ops.upsample(_to_torch(x), f, mode="nearest")
    assert torch.equal(got.double(), want)


@settings(max_examples=200, deadline=None)
@given(x=images(max_hw=7, max_c=6), f_h=st.integers(1, 8), f_w=st.integers(1, 8), z=zero_points)
def test_bilinear_upsample_is_torch_bilinear_rounded(x, f_h, f_w, z):
    """torch interpolates in float64 with float weights; npuq's exact integer weights give the correctly
    rounded value: within 1/2 (+ float error) everywhere, and the rounding of torch's value away from ties."""
    want = F.interpolate(_to_torch(x).double(), scale_factor=(f_h, f_w), mode="bilinear", align_corners=False)
    want = want.permute(0, 2, 3, 1).numpy()
    got = npuq.ops.upsample(x, (f_h, f_w), mode="bilinear", zero_point=z).astype(np.float64)
    assert np.abs(got - want).max() <= 0.5 + 1e-9
    frac = np.abs((want - z) - np.trunc(want - z))
    away_from_ties = np.abs(frac - 0.5) > 1e-9
    rounded = z + np.sign(want - z) * np.floor(np.abs(want - z) + 0.5)  # half away from zero, around z
    assert np.array_equal(got[away_from_ties], rounded[away_from_ties])


@pytest.mark.parametrize("threads", [1, 2])
def test_bilinear_upsample_by_two_on_a_wide_image(threads):
    """The 2x2 factor has its own compile-time divisor; 33 channels are not a multiple of any vector width."""
    x = np.random.default_rng(8).integers(-128, 128, (2, 5, 6, 33), dtype=np.int8)
    for z in (-128, 0, 5, 127):
        expected = R.upsample(x, 2, "bilinear", z)
        _same(expected, npuq.ops.upsample(x, 2, mode="bilinear", zero_point=z, threads=threads), f"2x2 z={z}")


# ------------------------------------------------------------------------------ data movement (12)
paddings = st.tuples(*[st.integers(0, 4)] * 4)


@settings(max_examples=150, deadline=None)
@given(x=images(), padding=paddings, value=zero_points)
def test_pad_matches_the_oracle(x, padding, value):
    _same(R.pad(x, padding, value), npuq.ops.pad(x, padding, value), f"pad {padding} {value}")


@st.composite
def shuffles(draw):
    groups = draw(st.integers(1, 8))
    x = draw(images(max_c=4))
    return np.ascontiguousarray(np.tile(x, (1, 1, 1, groups))), groups  # C = groups * k


@settings(max_examples=150, deadline=None)
@given(case=shuffles())
def test_channel_shuffle_matches_the_oracle_and_torch(case):
    x, g = case
    _same(R.channel_shuffle(x, g), npuq.ops.channel_shuffle(x, g), f"channel_shuffle {g}")
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # NCHW contiguous, torch's layout
    n, c, h, w = t.shape
    want = t.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
    got = npuq.ops.channel_shuffle(t.contiguous(memory_format=CL), g)
    assert torch.equal(got, want)


@settings(max_examples=150, deadline=None)
@given(x=images(), data=st.data())
def test_channel_slice_matches_the_oracle(x, data):
    c = x.shape[3]
    begin = data.draw(st.integers(0, c - 1))
    end = data.draw(st.integers(begin + 1, c))
    _same(R.channel_slice(x, begin, end), npuq.ops.channel_slice(x, begin, end), f"slice {begin}:{end}")
    flat = np.ascontiguousarray(x.reshape(-1, c))  # (N, K)
    _same(R.channel_slice(flat, begin, end), npuq.ops.channel_slice(flat, begin, end), "slice of (N, K)")
    got = npuq.ops.channel_slice(torch.from_numpy(flat), begin, end)
    assert isinstance(got, torch.Tensor) and torch.equal(got, torch.from_numpy(flat)[:, begin:end])


# ------------------------------------------------------------------------------------ max pooling (14)
@st.composite
def pools(draw, symmetric=False):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if symmetric:  # torch: padding at most half the kernel, the same on both sides
        ph, pw = draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2))
        padding = (ph, ph, pw, pw)
    else:
        padding = tuple(draw(st.integers(0, kernel[i // 2] - 1)) for i in range(4))
    x = draw(images(max_c=9))
    h_min, w_min = kernel[0] - padding[0] - padding[1], kernel[1] - padding[2] - padding[3]
    if x.shape[1] < h_min or x.shape[2] < w_min:  # the kernel must fit the padded input
        x = np.ascontiguousarray(np.resize(x, (x.shape[0], max(x.shape[1], h_min), max(x.shape[2], w_min), x.shape[3])))
    return x, kernel, stride, padding


@settings(max_examples=250, deadline=None)
@given(case=pools(), ceil_mode=st.booleans(), isa=isas, threads=thread_counts)
def test_max_pool2d_matches_the_oracle(case, ceil_mode, isa, threads):
    x, kernel, stride, padding = case
    expected = R.max_pool2d(x, kernel, stride, padding, ceil_mode)
    with _isa(isa):
        # threads: npuq's default, set for the call
        previous = npuq.get_num_threads()
        npuq.set_num_threads(threads)
        try:
            got = npuq.ops.max_pool2d(x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
        finally:
            npuq.set_num_threads(previous)
    what = f"max_pool2d k={kernel} s={stride} p={padding} ceil={ceil_mode}"
    _same(expected, got, what)
    ref = npuq.ops.reference.max_pool2d(x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    _same(expected, ref, "reference " + what)


@settings(max_examples=250, deadline=None)
@given(case=pools(symmetric=True), ceil_mode=st.booleans())
def test_max_pool2d_is_torch_max_pool2d(case, ceil_mode):
    """Exactly torch's on the int values (max commutes with the increasing int8 -> real map)."""
    x, kernel, stride, (ph, _, pw, _) = case
    t = _to_torch(x)
    want = F.max_pool2d(t.double(), kernel, stride, (ph, pw), ceil_mode=ceil_mode)
    got = npuq.ops.max_pool2d(t, kernel, stride=stride, padding=(ph, pw), ceil_mode=ceil_mode)
    assert tuple(got.shape) == tuple(want.shape)
    assert torch.equal(got.double(), want)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 7),
    pad=st.integers(0, 3),
    ceil_mode=st.booleans(),
)
def test_pool_output_size_is_torch_and_the_oracle(size, kernel, stride, pad, ceil_mode):
    pad = min(pad, kernel // 2)
    pool = torch.nn.MaxPool2d((kernel, 1), (stride, 1), (pad, 0), ceil_mode=ceil_mode)
    try:
        want = pool(torch.zeros(1, 1, size, 1)).shape[2]
    except RuntimeError:  # torch: "output size is too small" (a window larger than the input, floor mode)
        with pytest.raises(ValueError, match="larger than the padded input"):
            npuq.ops.pool_output_size(size, kernel, stride, pad, pad, ceil_mode)
        with pytest.raises(ValueError, match="larger than the padded input"):
            R.max_pool2d_output_size(size, kernel, stride, pad, pad, ceil_mode)
        return
    got = npuq.ops.pool_output_size(size, kernel, stride, pad, pad, ceil_mode)
    assert got == want == R.max_pool2d_output_size(size, kernel, stride, pad, pad, ceil_mode)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 7),
    lo=st.integers(0, 6),
    hi=st.integers(0, 6),
    ceil_mode=st.booleans(),
)
def test_pool_output_size_with_asymmetric_padding(size, kernel, stride, lo, hi, ceil_mode):
    if lo >= kernel or hi >= kernel:
        with pytest.raises(ValueError, match="smaller than the kernel"):
            npuq.ops.pool_output_size(size, kernel, stride, lo, hi, ceil_mode)
    elif size + lo + hi < kernel and (not ceil_mode or -(-(size + lo + hi - kernel) // stride) < 0):
        # floor mode needs the whole window; ceil mode one (clipped) window at least
        with pytest.raises(ValueError, match="larger than the padded input"):
            npuq.ops.pool_output_size(size, kernel, stride, lo, hi, ceil_mode)
    else:
        got = npuq.ops.pool_output_size(size, kernel, stride, lo, hi, ceil_mode)
        assert got == R.max_pool2d_output_size(size, kernel, stride, lo, hi, ceil_mode)
        assert (got - 1) * stride < size + lo  # the last window starts inside the image or the top padding


def test_ceil_mode_adds_the_clipped_window():
    """SqueezeNet's 3x3 / 2 pooling of 56 rows: 27 rows, 28 with ceil_mode; the last window sees two rows."""
    x = np.arange(56, dtype=np.int64).reshape(1, 56, 1, 1)
    x = (x - 60).astype(np.int8)  # increasing: each window's maximum is its last row inside the image
    floor_ = npuq.ops.max_pool2d(x, (3, 1), stride=(2, 1))
    ceil_ = npuq.ops.max_pool2d(x, (3, 1), stride=(2, 1), ceil_mode=True)
    assert floor_.shape == (1, 27, 1, 1) and ceil_.shape == (1, 28, 1, 1)
    assert np.array_equal(ceil_[:, :27], floor_) and ceil_[0, 27, 0, 0] == x[0, 55, 0, 0]


# ------------------------------------------------------------------------- threads on large tensors
@contextlib.contextmanager
def _default_threads(n):
    previous = npuq.get_num_threads()
    npuq.set_num_threads(n)
    try:
        yield
    finally:
        npuq.set_num_threads(previous)


def _large_cases():
    """Tensors past the size from which the kernels use a team of threads (small ones stay on one)."""
    rng = np.random.default_rng(21)
    a = rng.integers(-128, 128, (4, 64, 64, 40), dtype=np.int8)
    b = rng.integers(-128, 128, (1, 128, 128, 24), dtype=np.int8)
    c = rng.integers(-128, 128, (2, 40, 40, 48), dtype=np.int8)
    d = rng.integers(-128, 128, (1, 30, 30, 20), dtype=np.int8)
    q = dict(input_zero_point=-2, output_zero_point=4, **R.mean_params(0.03, 0.01, 64 * 64))
    qb = dict(input_zero_point=3, output_zero_point=0, tflite_rounding=True, **R.mean_params(0.03, 0.05, 1, True))
    return [
        ("mean/by image", lambda t: npuq.ops.mean(a, threads=t, **q), lambda: R.mean(a, **q)),
        ("mean/by part", lambda t: npuq.ops.mean(b, threads=t, **qb), lambda: R.mean(b, **qb)),
        ("nearest", lambda t: npuq.ops.upsample(c, (2, 3), threads=t), lambda: R.upsample(c, (2, 3))),
        (
            "bilinear 2x2",
            lambda t: npuq.ops.upsample(d, 2, mode="bilinear", zero_point=-3, threads=t),
            lambda: R.upsample(d, 2, "bilinear", -3),
        ),
        (
            "bilinear 3x2",
            lambda t: npuq.ops.upsample(d, (3, 2), mode="bilinear", zero_point=9, threads=t),
            lambda: R.upsample(d, (3, 2), "bilinear", 9),
        ),
        (
            "max_pool2d",
            lambda t: npuq.ops.max_pool2d(c, 3, stride=2, padding=(1, 0, 0, 1), ceil_mode=True),
            lambda: R.max_pool2d(c, 3, 2, (1, 0, 0, 1), True),
        ),
        ("channel_shuffle", lambda t: npuq.ops.channel_shuffle(a, 4), lambda: R.channel_shuffle(a, 4)),
    ]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
def test_large_tensors_under_every_isa_and_thread_count(isa, threads):
    failures = []
    for name, fn, oracle in _large_cases():
        with _isa(isa), _default_threads(threads):
            got = fn(threads)
        expected = oracle()
        if got.shape != expected.shape or not np.array_equal(got, expected):
            failures.append(name)
    assert not failures, f"isa={isa} threads={threads}: {failures}"


# --------------------------------------------------------------------------------- torch in / out
def test_torch_tensors_in_and_out():
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (2, 6, 5, 8), dtype=np.int8)
    t = _to_torch(x)
    q = dict(input_zero_point=-4, output_zero_point=2, **npuq.ops.mean_params(0.1, 0.05, 30))
    cases = [
        ("mean", lambda a: npuq.ops.mean(a, **q)),
        ("nearest", lambda a: npuq.ops.upsample(a, (2, 3))),
        ("bilinear", lambda a: npuq.ops.upsample(a, 3, mode="bilinear", zero_point=5)),
        ("pad", lambda a: npuq.ops.pad(a, (1, 0, 2, 3), value=-9)),
        ("shuffle", lambda a: npuq.ops.channel_shuffle(a, 4)),
        ("slice", lambda a: npuq.ops.channel_slice(a, 2, 7)),
        ("max_pool", lambda a: npuq.ops.max_pool2d(a, 3, stride=2, padding=1, ceil_mode=True)),
        ("ref mean", lambda a: npuq.ops.reference.mean(a, **q)),
        ("ref bilinear", lambda a: npuq.ops.reference.upsample(a, 2, mode="bilinear")),
        ("ref max_pool", lambda a: npuq.ops.reference.max_pool2d(a, 2, ceil_mode=True)),
    ]
    for name, fn in cases:
        with _no_layout_warning():
            got = _from_torch(fn(t))
        _same(fn(x).astype(np.int64), got, f"{name} on torch")


def test_a_contiguous_nchw_tensor_is_copied_with_a_layout_warning():
    x = np.random.default_rng(2).integers(-128, 128, (1, 4, 4, 3), dtype=np.int8)
    t = _to_torch(x).contiguous()
    with pytest.warns(npuq.LayoutWarning):
        got = npuq.ops.upsample(t, 2, mode="bilinear")
    _same(R.upsample(x, 2, "bilinear"), _from_torch(got), "upsample of NCHW")


# ----------------------------------------------------------------------------------------- bad input
X = np.zeros((1, 4, 4, 6), np.int8)
MEAN = dict(input_zero_point=0, output_zero_point=0, multiplier=2**30, exponent=-4)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: npuq.ops.mean(X.astype(np.int16), **MEAN), TypeError, "dtype int8"),
        (lambda: npuq.ops.mean(X[0], **MEAN), ValueError, "4 dimensions"),
        (lambda: npuq.ops.mean(X, **dict(MEAN, multiplier=2**29)), ValueError, "multiplier"),
        (lambda: npuq.ops.mean(X, **dict(MEAN, exponent=31)), ValueError, "exponent"),
        (lambda: npuq.ops.mean(X, **dict(MEAN, input_zero_point=128)), ValueError, "input_zero_point"),
        (lambda: npuq.ops.mean(X, **dict(MEAN, output_zero_point=-129)), ValueError, "output_zero_point"),
        (lambda: npuq.ops.mean(X, **MEAN, act_min=5, act_max=4), ValueError, "act_min"),
        (lambda: npuq.ops.mean(X, **MEAN, rounding="up"), ValueError, "rounding"),
        (lambda: npuq.ops.mean(X, **MEAN, tflite_rounding=1), TypeError, "tflite_rounding"),
        (lambda: npuq.ops.mean(X, **MEAN, threads=0), ValueError, "threads"),
        (lambda: npuq.ops.mean(np.zeros((1, 2**12, 2**11 + 1, 1), np.int8), **MEAN), ValueError, "2\\^23"),
        (lambda: npuq.ops.mean_params(0.0, 1.0, 4), ValueError, "input_scale"),
        (lambda: npuq.ops.mean_params(1.0, float("nan"), 4), ValueError, "output_scale"),
        (lambda: npuq.ops.mean_params(1.0, 1.0, 0), ValueError, "count"),
        (lambda: npuq.ops.mean_params(1.0, 1.0, 2**23 + 1), ValueError, "count"),
        (lambda: npuq.ops.upsample(X, 0), ValueError, "scale"),
        (lambda: npuq.ops.upsample(X, (2, 65)), ValueError, "scale"),
        (lambda: npuq.ops.upsample(X, (1, 2, 3)), ValueError, "scale"),
        (lambda: npuq.ops.upsample(X, 2.0), TypeError, "scale"),
        (lambda: npuq.ops.upsample(X, 2, mode="bicubic"), ValueError, "mode"),
        (lambda: npuq.ops.upsample(X, 2, zero_point=200), ValueError, "zero_point"),
        (lambda: npuq.ops.upsample(X.astype(np.uint8), 2), TypeError, "dtype int8"),
        (lambda: npuq.ops.pad(X, (1, -1, 0, 0)), ValueError, "padding"),
        (lambda: npuq.ops.pad(X, (1, 1, 1)), ValueError, "padding"),
        (lambda: npuq.ops.pad(X, 1, value=128), ValueError, "value"),
        (lambda: npuq.ops.channel_shuffle(X, 4), ValueError, "groups"),
        (lambda: npuq.ops.channel_shuffle(X, 0), ValueError, "groups"),
        (lambda: npuq.ops.channel_slice(X, 3, 3), ValueError, "end"),
        (lambda: npuq.ops.channel_slice(X, -1, 3), ValueError, "begin"),
        (lambda: npuq.ops.channel_slice(X, 0, 7), ValueError, "end"),
        (lambda: npuq.ops.channel_slice(X, 6, 7), ValueError, "begin"),
        (lambda: npuq.ops.channel_slice(X[0], 0, 1), ValueError, "\\(N, K\\)"),
        (lambda: npuq.ops.max_pool2d(X, 2, padding=2), ValueError, "smaller than the kernel"),
        (lambda: npuq.ops.max_pool2d(X, 7), ValueError, "larger than the padded input"),
        (lambda: npuq.ops.max_pool2d(X, 2, ceil_mode="yes"), TypeError, "ceil_mode"),
        (lambda: npuq.ops.max_pool2d(X, 0), ValueError, "kernel_size"),
        (lambda: npuq.ops.max_pool2d(X, 2, stride=0), ValueError, "stride"),
        (lambda: npuq.ops.pool_output_size(0, 1, 1, 0, 0, False), ValueError, "size"),
        (lambda: npuq.ops.pool_output_size(4, 2, 1, 0, 0, 1), TypeError, "ceil_mode"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("reference", [False, True])
def test_the_native_core_checks_again(reference):
    """npuq._C is reached only through the wrappers, but it must refuse what they refuse."""
    from npuq import _C

    with pytest.raises(ValueError, match="2\\^23"):
        _C.mean(np.zeros((1, 2**12, 2**11 + 1, 1), np.int8), 0, 0, 2**30, 0, reference=reference)
    with pytest.raises(ValueError, match="multiplier"):
        _C.mean(X, 0, 0, 5, 0, reference=reference)
    with pytest.raises(ValueError, match="scale"):
        _C.upsample(X, (65, 1), "nearest", 0, reference=reference)
    with pytest.raises(ValueError, match="mode"):
        _C.upsample(X, (2, 1), "area", 0, reference=reference)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        _C.max_pool2d(X, (2, 2), (1, 1), (0, 2, 0, 0), True, reference=reference)
    with pytest.raises(ValueError, match="must be in"):
        _C.max_pool2d(X, (2, 2), (0, 1), (0, 0, 0, 0), False, reference=reference)
    with pytest.raises(TypeError, match="dtype int8"):
        _C.upsample(X.astype(np.int32), (2, 2), "nearest", 0, reference=reference)


class FakeDeviceArray:
    """``__cuda_array_interface__`` whose pointer is never dereferenced: the checks made before any CUDA call."""

    def __init__(self, shape):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": "|i1",
            "data": (0x10000, False),
            "version": 3,
            "strides": None,
        }


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: npuq.ops.channel_shuffle(d, 4), "groups"),
        (lambda d: npuq.ops.channel_slice(d, 2, 9), "end"),
        (lambda d: npuq.ops.upsample(d, 65), "scale"),
        (lambda d: npuq.ops.max_pool2d(d, 2, padding=3), "smaller than the kernel"),
        (lambda d: npuq.ops.mean(d, **dict(MEAN, exponent=-40)), "exponent"),
        (lambda d: npuq.ops.pad(d, (0, 0, 0, -2)), "padding"),
    ],
)
def test_device_arrays_are_checked_before_any_cuda_call(call, match):
    with pytest.raises(ValueError, match=match):
        call(FakeDeviceArray((1, 4, 4, 6)))


@pytest.mark.skipif(HAS_GPU, reason="checks the error of a machine without a GPU")
@pytest.mark.parametrize(
    "call",
    [
        lambda d: npuq.ops.mean(d, **MEAN),
        lambda d: npuq.ops.upsample(d, 2, mode="bilinear"),
        lambda d: npuq.ops.pad(d, 1),
        lambda d: npuq.ops.channel_shuffle(d, 3),
        lambda d: npuq.ops.channel_slice(d, 1, 2),
        lambda d: npuq.ops.max_pool2d(d, 2, ceil_mode=True),
    ],
)
def test_device_arrays_take_the_cuda_path(call):
    """A valid device array never falls back to the host: without a GPU the call says so."""
    with pytest.raises(RuntimeError, match="CUDA"):
        call(FakeDeviceArray((1, 4, 4, 6)))


# ------------------------------------------------------------------------------------------- GPU
def _dev(x):
    return _cuda.to_device(np.ascontiguousarray(x), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU (or no CUDA kernels in this build)")
@pytest.mark.parametrize("as_torch", [False, True])
def test_the_gpu_gives_the_host_bytes(as_torch):
    rng = np.random.default_rng(17)
    x = rng.integers(-128, 128, (3, 9, 7, 40), dtype=np.int8)
    flat = np.ascontiguousarray(x.reshape(-1, 40))
    dev = _to_torch(x).cuda() if as_torch else _dev(x)
    host = (lambda out: _from_torch(out.cpu())) if as_torch else _cuda.to_host
    for tflite in (False, True):
        for rounding in ("double", "single"):
            q = dict(
                npuq.ops.mean_params(0.03, 0.02, 63, tflite),
                input_zero_point=-5,
                output_zero_point=1,
                tflite_rounding=tflite,
                rounding=rounding,
            )
            _same(R.mean(x, **q), host(npuq.ops.mean(dev, **q)), f"mean on the GPU {q}")
    for mode in ("nearest", "bilinear"):
        for scale in (2, (3, 1), (1, 64)):
            got = host(npuq.ops.upsample(dev, scale, mode=mode, zero_point=9))
            _same(R.upsample(x, scale, mode, 9), got, f"upsample on the GPU {scale} {mode}")
    _same(R.pad(x, (1, 2, 0, 3), -4), host(npuq.ops.pad(dev, (1, 2, 0, 3), -4)), "pad on the GPU")
    _same(R.channel_shuffle(x, 8), host(npuq.ops.channel_shuffle(dev, 8)), "shuffle on the GPU")
    _same(R.channel_slice(x, 5, 33), host(npuq.ops.channel_slice(dev, 5, 33)), "slice on the GPU")
    flat_dev = torch.from_numpy(flat).cuda() if as_torch else _dev(flat)
    got = npuq.ops.channel_slice(flat_dev, 1, 2)
    _same(R.channel_slice(flat, 1, 2), got.cpu().numpy() if as_torch else _cuda.to_host(got), "slice of (N, K)")
    for ceil_mode in (False, True):
        got = host(npuq.ops.max_pool2d(dev, 3, stride=2, padding=(1, 0, 0, 1), ceil_mode=ceil_mode))
        _same(R.max_pool2d(x, 3, 2, (1, 0, 0, 1), ceil_mode), got, f"max_pool2d on the GPU ceil={ceil_mode}")
