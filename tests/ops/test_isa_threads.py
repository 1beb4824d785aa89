"""Determinism (arithmetic.md section 8): every instruction set and thread count gives the same bytes."""

import functools

import numpy as np
import pytest

import npuq
from support import reference_numpy as R

ISAS = list(npuq.cpu_features()["supported"])


@functools.lru_cache(maxsize=None)
def _cases():
    rng = np.random.default_rng(2024)
    cases = {}

    def conv(name, x_shape, w_shape, bias_lim=2**12, rounding="double", overflow="raise", per_channel=True, **geo):
        x = rng.integers(-128, 128, x_shape, dtype=np.int8)
        w = rng.integers(-127, 128, w_shape, dtype=np.int8)
        c_out = w_shape[0]
        bias = rng.integers(-bias_lim, bias_lim, c_out, dtype=np.int64).astype(np.int32)
        kw = dict(
            geo,
            input_zero_point=int(rng.integers(-128, 128)),
            rounding=rounding,
            overflow=overflow,
            output_zero_point=int(rng.integers(-10, 10)),
        )
        if per_channel:
            kw.update(multiplier=rng.integers(2**30, 2**31, c_out), exponent=rng.integers(-16, -8, c_out))
        else:
            kw.update(multiplier=int(rng.integers(2**30, 2**31)), exponent=-12, channel_shift=rng.integers(0, 4, c_out))
        expected = R.conv2d(x, w, bias, **kw)
        cases[name] = (lambda t: npuq.ops.conv2d(x, w, bias, threads=t, **kw), expected)
        layer = npuq.ops.Conv2d(w, bias, **kw)
        cases[name + "/packed"] = (lambda t: layer(x), expected)  # packed with the ISA active at import

    conv("conv3x3", (2, 12, 11, 17), (33, 3, 3, 17), padding=1)
    conv("conv3x3/single", (1, 10, 10, 8), (16, 3, 3, 8), padding=(0, 1, 1, 0), stride=2, rounding="single")
    conv("conv5x5/dilated", (1, 13, 13, 5), (7, 5, 5, 5), dilation=2, padding=2, per_channel=False)
    conv("conv/grouped", (1, 9, 9, 12), (18, 3, 3, 4), groups=3, padding=1)
    conv("depthwise/s1", (1, 14, 14, 65), (65, 3, 3, 1), groups=65, padding=1)
    conv("depthwise/s2/dm2", (2, 15, 15, 33), (66, 3, 3, 1), groups=33, padding=(0, 1, 0, 1), stride=2)
    conv("depthwise/wess", (1, 8, 8, 32), (32, 3, 3, 1), groups=32, padding=1, per_channel=False)
    conv("pointwise", (1, 14, 14, 96), (65, 1, 1, 96))
    conv("pointwise/wess", (1, 7, 7, 320), (17, 1, 1, 320), per_channel=False, rounding="single")
    # huge biases: some channels fail the overflow bound and take the exact 64-bit path
    conv("conv/saturate", (1, 6, 6, 16), (24, 3, 3, 16), bias_lim=2**31, overflow="saturate", padding=1)
    conv("conv/wrap", (1, 6, 6, 16), (24, 3, 3, 16), bias_lim=2**31, overflow="wrap", padding=1)
    conv("pointwise/wrap", (1, 5, 5, 33), (17, 1, 1, 33), bias_lim=2**31, overflow="wrap")

    x = rng.integers(-128, 128, (3, 1000), dtype=np.int8)
    w = rng.integers(-127, 128, (65, 1000), dtype=np.int8)
    b = rng.integers(-(2**31), 2**31, 65, dtype=np.int64).astype(np.int32)
    for overflow in ("saturate", "wrap"):
        kw = dict(
            input_zero_point=-1, multiplier=rng.integers(2**30, 2**31, 65), exponent=np.full(65, -24), overflow=overflow
        )
        expected = R.fully_connected(x, w, b, **kw)
        cases["fc/" + overflow] = (lambda t, kw=kw: npuq.ops.fully_connected(x, w, b, threads=t, **kw), expected)
    xb = rng.integers(-128, 128, (67, 129), dtype=np.int8)
    wb = rng.integers(-127, 128, (33, 129), dtype=np.int8)
    bkw = dict(
        input_zero_point=-100, multiplier=rng.integers(2**30, 2**31, 33), exponent=np.full(33, -13), rounding="single"
    )
    cases["fc/batch"] = (
        lambda t: npuq.ops.fully_connected(xb, wb, None, threads=t, **bkw),
        R.fully_connected(xb, wb, None, **bkw),
    )
    layer_fc = npuq.ops.FullyConnected(wb, None, **bkw)
    cases["fc/batch/packed"] = (lambda t: layer_fc(xb), R.fully_connected(xb, wb, None, **bkw))
    kw = dict(input_zero_point=3, multiplier=2**30 + 12345, exponent=-12)
    b_small = (b // 2**20).astype(np.int32)
    cases["fc"] = (
        lambda t: npuq.ops.fully_connected(x, w, b_small, threads=t, **kw),
        R.fully_connected(x, w, b_small, **kw),
    )

    a = rng.integers(-128, 128, (2, 16, 16, 65), dtype=np.int8)
    bb = rng.integers(-128, 128, (2, 16, 16, 65), dtype=np.int8)
    for rounding in ("double", "single"):
        akw = dict(
            R.add_params(0.05, 0.031, 0.07), a_zero_point=4, b_zero_point=-9, output_zero_point=1, rounding=rounding
        )
        cases["add/" + rounding] = (lambda t, akw=akw: npuq.ops.add(a, bb, threads=t, **akw), R.add(a, bb, **akw))

    p = rng.integers(-128, 128, (2, 17, 15, 65), dtype=np.int8)
    for cip in (False, True):
        pkw = dict(stride=2, padding=1, count_include_pad=cip, input_zero_point=-7)
        cases[f"avg_pool/cip={cip}"] = (
            lambda t, pkw=pkw: npuq.ops.avg_pool2d(p, 3, threads=t, **pkw),
            R.avg_pool2d(p, 3, **pkw),
        )
    cases["global_avg_pool"] = (lambda t: npuq.ops.global_avg_pool(p, threads=t), R.global_avg_pool(p))

    acc = rng.integers(-(2**31), 2**31, (999, 65), dtype=np.int64).astype(np.int32)
    for rounding in ("double", "single"):
        rkw = dict(
            multiplier=rng.integers(2**30, 2**31, 65),
            exponent=rng.integers(-31, 31, 65),
            channel_shift=rng.integers(0, 16, 65),
            output_zero_point=-3,
            rounding=rounding,
        )
        cases["requantize/" + rounding] = (
            lambda t, rkw=rkw: npuq.ops.requantize(acc, threads=t, **rkw),
            R.requantize(acc, **rkw),
        )
    return cases


@pytest.fixture
def isa_guard():
    yield
    npuq.set_isa("auto")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
def test_identical_bytes(isa, threads, isa_guard):
    npuq.set_isa(isa)
    failures = []
    for name, (fn, expected) in _cases().items():
        got = np.asarray(fn(threads))
        if got.dtype != np.int8 or got.shape != expected.shape or got.tobytes() != expected.tobytes():
            n_bad = int(np.sum(got != expected)) if got.shape == expected.shape else -1
            failures.append(f"{name}: {n_bad} values differ (dtype {got.dtype}, shape {got.shape})")
    assert not failures, f"isa={isa} threads={threads}:\n" + "\n".join(failures)


@pytest.mark.parametrize("isa", ISAS)
def test_packed_layer_under_each_isa(isa, isa_guard):
    """A layer packed while a given ISA is active computes the same bytes."""
    npuq.set_isa(isa)
    rng = np.random.default_rng(9)
    x = rng.integers(-128, 128, (1, 9, 9, 33), dtype=np.int8)
    for w_shape, groups in (((33, 3, 3, 1), 33), ((17, 1, 1, 33), 1), ((16, 3, 3, 33), 1)):
        w = rng.integers(-127, 128, w_shape, dtype=np.int8)
        kw = dict(
            padding=1 if w_shape[1] == 3 else 0, groups=groups, multiplier=2**30 + 77, exponent=-10, input_zero_point=-2
        )
        expected = R.conv2d(x, w, None, **kw)
        layer = npuq.ops.Conv2d(w, None, **kw)
        for threads_isa in ISAS:
            npuq.set_isa(threads_isa)
            assert np.asarray(layer(x)).tobytes() == expected.tobytes(), (isa, threads_isa, w_shape)
        npuq.set_isa(isa)


def test_cpu_features_and_set_isa():
    feats = npuq.cpu_features()
    assert "portable" in feats["supported"]
    try:
        for isa in ISAS:
            npuq.set_isa(isa)
            current = npuq.cpu_features()
            assert isa in [v for k, v in current.items() if k != "supported"], (isa, current)
        npuq.set_isa("auto")
        for name in ("avx512_vnni", "avx_vnni", "avx2"):
            if name not in ISAS:
                with pytest.raises((ValueError, RuntimeError)):
                    npuq.set_isa(name)
        with pytest.raises((ValueError, RuntimeError)):
            npuq.set_isa("no_such_isa")
    finally:
        npuq.set_isa("auto")


def test_default_thread_count():
    old = npuq.get_num_threads()
    assert isinstance(old, int) and old >= 1
    fn, expected = _cases()["conv3x3"]
    try:
        for n in (1, 2, 3):
            npuq.set_num_threads(n)
            assert npuq.get_num_threads() == n
            assert np.asarray(fn(None)).tobytes() == expected.tobytes()
        with pytest.raises(ValueError):
            npuq.set_num_threads(0)
    finally:
        npuq.set_num_threads(old)


def test_many_threads():
    """More threads than rows/channels/cores must still give the same bytes."""
    for name in ("conv3x3", "depthwise/s2/dm2", "fc", "global_avg_pool", "requantize/double"):
        fn, expected = _cases()[name]
        assert np.asarray(fn(7)).tobytes() == expected.tobytes(), name


def test_concurrent_python_threads():
    """Several Python threads calling the same functions and the same packed layer at once (the native core
    may release the GIL): every result is still the oracle's."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(77)
    w = rng.integers(-127, 128, (40, 3, 3, 24), dtype=np.int8)
    bias = rng.integers(-5000, 5000, 40).astype(np.int32)
    kw = dict(
        padding=1,
        stride=(1, 2),
        multiplier=rng.integers(2**30, 2**31, 40),
        exponent=np.full(40, -11),
        input_zero_point=-4,
    )
    layer = npuq.ops.Conv2d(w, bias, **kw)
    xs = [rng.integers(-128, 128, (1 + i % 3, 11 + i % 4, 9 + i % 5, 24), dtype=np.int8) for i in range(12)]
    expected = [R.conv2d(x, w, bias, **kw) for x in xs]

    def job(i):
        x = xs[i]
        return (
            np.asarray(layer(x)),
            np.asarray(npuq.ops.conv2d(x, w, bias, threads=2, **kw)),
            np.asarray(npuq.ops.global_avg_pool(x)),
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            for i, (a, b, g) in enumerate(pool.map(job, range(len(xs)))):
                assert a.tobytes() == expected[i].tobytes(), f"packed layer, job {i}"
                assert b.tobytes() == expected[i].tobytes(), f"conv2d, job {i}"
                assert g.tobytes() == R.global_avg_pool(xs[i]).tobytes(), f"global_avg_pool, job {i}"
