"""fully_connected, add, avg_pool2d and global_avg_pool against the oracle and npuq.ops.reference
(arithmetic.md sections 4-7)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuq
from support import reference_numpy as R
from support.helpers import (
    DATA_MODES,
    assert_paths_agree,
    assert_same,
    clamps,
    int8_data,
    isa_threads,
    scaled_examples,
    using_isa,
)
from support.op_cases import add_case, fc_case, pool_case

# ------------------------------------------------------------------------------------------------
# fully_connected
# ------------------------------------------------------------------------------------------------


@scaled_examples(5)
@given(fc_case(), isa_threads())
def test_fully_connected_matches_oracle(case, isa_and_threads):
    x, w, bias, kw = case
    isa, threads = isa_and_threads
    try:
        expected = R.fully_connected(x, w, bias, **kw)
    except OverflowError:
        expected = OverflowError
    paths = [
        ("npuq.ops.fully_connected", lambda: npuq.ops.fully_connected(x, w, bias, threads=threads, **kw)),
        ("npuq.ops.reference.fully_connected", lambda: npuq.ops.reference.fully_connected(x, w, bias, **kw)),
        ("npuq.ops.FullyConnected", lambda: npuq.ops.FullyConnected(w, bias, threads=threads, **kw)(x)),
    ]
    assert_paths_agree(expected, paths, isa, f"isa={isa} threads={threads}")


def test_fully_connected_equals_1x1_conv():
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (4, 37), dtype=np.int8)
    w = rng.integers(-127, 128, (19, 37), dtype=np.int8)
    b = rng.integers(-5000, 5000, 19).astype(np.int32)
    kw = dict(
        input_zero_point=9, multiplier=rng.integers(2**30, 2**31, 19), exponent=np.full(19, -9), output_zero_point=-2
    )
    fc = npuq.ops.fully_connected(x, w, b, **kw)
    cv = npuq.ops.conv2d(x.reshape(4, 1, 1, 37), w.reshape(19, 1, 1, 37), b, **kw)
    assert_same(np.asarray(cv).reshape(4, 19), fc, "fc vs 1x1 conv")


# ------------------------------------------------------------------------------------------------
# add
# ------------------------------------------------------------------------------------------------


@scaled_examples(5)
@given(add_case(), isa_threads())
def test_add_matches_oracle(case, isa_and_threads):
    a, b, kw, scales = case
    isa, threads = isa_and_threads
    if scales is not None:
        got = npuq.ops.add_params(*scales[:3], left_shift=scales[3])
        expect = R.add_params(*scales)
        for key, val in expect.items():
            assert int(got[key]) == val, f"add_params{scales}[{key}] = {got[key]}, expected {val}"
    expected = R.add(a, b, **kw)
    with using_isa(isa):
        assert_same(expected, npuq.ops.add(a, b, threads=threads, **kw), f"npuq.ops.add isa={isa} threads={threads}")
    assert_same(expected, npuq.ops.reference.add(a, b, **kw), "npuq.ops.reference.add")


def test_add_params_default_left_shift():
    got = npuq.ops.add_params(0.5, 0.25, 0.1)
    expect = R.add_params(0.5, 0.25, 0.1)
    assert {k: int(got[k]) for k in expect} == expect
    assert int(got["left_shift"]) == 20


def test_add_all_pairs():
    """Every (a, b) int8 pair with fixed parameters: the whole 256 x 256 table."""
    a, b = np.meshgrid(np.arange(-128, 128, dtype=np.int8), np.arange(-128, 128, dtype=np.int8), indexing="ij")
    a = np.ascontiguousarray(a).reshape(1, 256, 256, 1)
    b = np.ascontiguousarray(b).reshape(1, 256, 256, 1)
    for scales in ((0.1, 0.07, 0.13), (0.02, 0.02, 0.04), (1.0, 1.0, 2.0)):
        for rounding in ("double", "single"):
            kw = dict(R.add_params(*scales), a_zero_point=-3, b_zero_point=5, output_zero_point=-1, rounding=rounding)
            assert_same(R.add(a, b, **kw), npuq.ops.add(a, b, **kw), f"add table {scales} {rounding}")


# ------------------------------------------------------------------------------------------------
# pooling
# ------------------------------------------------------------------------------------------------


@scaled_examples(5)
@given(pool_case(), isa_threads())
def test_avg_pool2d_matches_oracle(case, isa_and_threads):
    x, kernel, kw = case
    isa, threads = isa_and_threads
    if kw["stride"] is None:
        # ops.md lists stride=None without saying more; test it as the usual "stride = kernel" and pass the
        # explicit stride to the oracle
        kw_oracle = dict(kw, stride=kernel)
    else:
        kw_oracle = kw
    expected = R.avg_pool2d(x, kernel, **kw_oracle)
    with using_isa(isa):
        assert_same(
            expected,
            npuq.ops.avg_pool2d(x, kernel, threads=threads, **kw),
            f"npuq.ops.avg_pool2d isa={isa} threads={threads}",
        )
    assert_same(expected, npuq.ops.reference.avg_pool2d(x, kernel, **kw), "npuq.ops.reference.avg_pool2d")


@scaled_examples(3)
@given(
    st.integers(1, 2),
    st.integers(1, 16),
    st.integers(1, 16),
    st.one_of(st.integers(1, 70), st.sampled_from([16, 17, 32, 33, 64, 65])),
    st.integers(0, 2**32 - 1),
    DATA_MODES,
    clamps(),
    isa_threads(),
)
def test_global_avg_pool_matches_oracle(n, h, w, c, seed, mode, clamp, isa_and_threads):
    isa, threads = isa_and_threads
    x = int8_data(np.random.default_rng(seed), (n, h, w, c), mode)
    _, lo, hi = clamp
    expected = R.global_avg_pool(x, act_min=lo, act_max=hi)
    assert expected.shape == (n, 1, 1, c)
    with using_isa(isa):
        assert_same(
            expected,
            npuq.ops.global_avg_pool(x, act_min=lo, act_max=hi, threads=threads),
            f"npuq.ops.global_avg_pool isa={isa} threads={threads}",
        )
    assert_same(
        expected, npuq.ops.reference.global_avg_pool(x, act_min=lo, act_max=hi), "npuq.ops.reference.global_avg_pool"
    )


@pytest.mark.parametrize("shape", [(1, 7, 7, 1280), (2, 14, 14, 96), (1, 112, 112, 3), (1, 256, 256, 1)])
def test_global_avg_pool_large(shape):
    rng = np.random.default_rng(sum(shape))
    for mode in ("uniform", "max", "min"):
        x = int8_data(rng, shape, mode)
        assert_same(R.global_avg_pool(x), npuq.ops.global_avg_pool(x), f"global_avg_pool {shape} {mode}")


@pytest.mark.parametrize("height", [2048, 2049])  # 2^22 pixels: the last window the int32 path takes
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_global_avg_pool_huge_window_ties(height, offset):
    """Sums one LSB either side of a rounding tie, at the largest windows of the fast int32/double
    path and just past it (int64 path): the division must stay exact."""
    count = height * 2048
    x = np.full((1, height, 2048, 2), -3, dtype=np.int8)
    # Channel 0: sum = -3 * count + count / 2 + offset (a tie at -2.5 when offset = 0).
    # Channel 1: positive, 2.5 * count + offset.
    flat0 = x[0, :, :, 0].reshape(-1)
    flat0[: count // 2] = -2
    flat0[0] += offset
    x[0, :, :, 1] = 2
    flat1 = x[0, :, :, 1].reshape(-1)
    flat1[: count // 2] = 3
    flat1[0] += offset
    expected = R.global_avg_pool(x)
    for isa in npuq.cpu_features()["supported"]:
        with using_isa(isa):
            assert_same(expected, npuq.ops.global_avg_pool(x), f"global_avg_pool {height}x2048 isa={isa}")


def test_global_avg_pool_equals_full_kernel_avg_pool():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (2, 5, 6, 9), dtype=np.int8)
    assert_same(np.asarray(npuq.ops.avg_pool2d(x, (5, 6), stride=1)), npuq.ops.global_avg_pool(x), "global vs avg")
