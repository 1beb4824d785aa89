"""lut, mul and concat (docs/arithmetic.md 9, 10, 11): the fast paths (every instruction set of this
machine, 1 and 2 threads), the scalar reference (npuq.ops.reference) and the numpy oracle agree bit for
bit; torch CPU tensors in and out; bad input. The CUDA kernels are checked where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npuq
from npuq import _C, _cuda
from support import reference_numpy as R
from support.helpers import DATA_MODES, M0_STRATEGY, ROUNDING_STRATEGY, assert_same, clamps, int8_data, using_isa

ops = npuq.ops
ISAS = tuple(npuq.cpu_features()["supported"])
ISA_THREADS = st.tuples(st.sampled_from((None,) + ISAS), st.sampled_from([None, 1, 2]))
EXAMPLES = settings(max_examples=150, deadline=None)
ZERO_POINTS = st.one_of(st.integers(-128, 127), st.sampled_from([-128, 0, 127]))
# every exponent, with those that give outputs away from the clamp (|acc| up to 2^16) over-represented
MUL_EXPONENTS = st.one_of(st.integers(-31, 30), st.integers(-16, -4), st.sampled_from([-31, 0, 1, 15, 16, 30]))
CONCAT_EXPONENTS = st.one_of(st.integers(-31, 30), st.integers(-6, 2))
IDENTITY = (2**30, 1)


def _as_int8(expected) -> np.ndarray:
    return np.asarray(expected, dtype=np.int64).astype(np.int8)


def _check_paths(expected, fast, reference, isa, what):
    """The fast path under ``isa`` and the scalar reference both equal the oracle's ``expected``."""
    with using_isa(isa):
        assert_same(expected, fast(), f"fast path {what} isa={isa}")
    assert_same(expected, reference(), f"reference {what}")


# ------------------------------------------------------------------------------------------------
# lut
# ------------------------------------------------------------------------------------------------

SHAPES_ANY = st.lists(st.integers(1, 9), min_size=0, max_size=4).map(tuple)


@EXAMPLES
@given(shape=SHAPES_ANY, mode=DATA_MODES, seed=st.integers(0, 2**32 - 1), isa_threads=ISA_THREADS)
def test_lut_matches_oracle(shape, mode, seed, isa_threads):
    isa, threads = isa_threads
    rng = np.random.default_rng(seed)
    x = int8_data(rng, shape, mode)
    table = rng.integers(-128, 128, 256, dtype=np.int8)
    expected = _as_int8(R.lut(x, table))
    _check_paths(
        expected,
        lambda: ops.lut(x, table, threads=threads),
        lambda: ops.reference.lut(x, table),
        isa,
        f"lut shape={shape}",
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("length", [1, 63, 64, 65, 127, 128, 255, 256, 257, 1000])
def test_lut_reads_every_entry_at_every_tail(isa, length):
    """Every input value at every offset of the 64-byte vector blocks, and every tail length."""
    rng = np.random.default_rng(length)
    table = rng.permutation(np.arange(-128, 128)).astype(np.int8)
    for start in (0, 1, 100):
        x = ((np.arange(length) + start) % 256 - 128).astype(np.int8)
        with using_isa(isa):
            assert_same(_as_int8(R.lut(x, table)), ops.lut(x, table), f"length={length} start={start}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_lut_large_input_every_isa_and_thread_count(isa, threads):
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (3, 57, 61, 24), dtype=np.int8)  # past the one-thread size
    table = rng.integers(-128, 128, 256, dtype=np.int8)
    with using_isa(isa):
        assert_same(_as_int8(R.lut(x, table)), ops.lut(x, table, threads=threads), f"{isa} threads={threads}")


def test_lut_hardswish_table_example():
    """docs/arithmetic.md 9: hardswish with s_x = 0.05, z_x = -10, s_y = 0.03, z_y = -40 maps 0 to -30."""
    table = R.make_table("hardswish", input_scale=0.05, input_zero_point=-10, output_scale=0.03, output_zero_point=-40)
    x = np.array([[0, -128, 127]], np.int8)
    y = ops.lut(x, table.astype(np.int8))
    assert y[0, 0] == -30
    assert_same(_as_int8(R.lut(x, table)), y, "hardswish")


# ------------------------------------------------------------------------------------------------
# mul
# ------------------------------------------------------------------------------------------------


@st.composite
def mul_case(draw):
    """(a, b, keywords): NHWC with b of a's shape or (N, 1, 1, C), or flat (N, K)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["broadcast", "broadcast", "same", "flat"]))
    n = draw(st.integers(1, 3))
    c = draw(st.one_of(st.integers(1, 40), st.sampled_from([16, 32, 48, 72, 96, 130])))
    if kind == "flat":
        a_shape = b_shape = (n, c)
    else:
        a_shape = (n, draw(st.integers(1, 9)), draw(st.integers(1, 9)), c)
        b_shape = (n, 1, 1, c) if kind == "broadcast" else a_shape
    a = int8_data(rng, a_shape, draw(DATA_MODES))
    b = int8_data(rng, b_shape, draw(DATA_MODES))
    zp, lo, hi = draw(clamps())
    kw = dict(
        a_zero_point=draw(ZERO_POINTS),
        b_zero_point=draw(ZERO_POINTS),
        output_zero_point=zp,
        multiplier=draw(M0_STRATEGY),
        exponent=draw(MUL_EXPONENTS),
        act_min=lo,
        act_max=hi,
        rounding=draw(ROUNDING_STRATEGY),
    )
    return a, b, kw


@EXAMPLES
@given(case=mul_case(), isa_threads=ISA_THREADS)
def test_mul_matches_oracle(case, isa_threads):
    a, b, kw = case
    isa, threads = isa_threads
    expected = _as_int8(R.mul(a, b, **kw))
    _check_paths(
        expected,
        lambda: ops.mul(a, b, threads=threads, **kw),
        lambda: ops.reference.mul(a, b, **kw),
        isa,
        f"mul a={a.shape} b={b.shape} {kw}",
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("exponent", [-31, -30, -17, -16, -9, -1, 0, 1, 14, 15, 16, 30])
def test_mul_extreme_products_at_every_exponent(isa, rounding, exponent):
    """|acc| = 255 * 255 with the largest mantissas: where the vector path's 64-bit formula and the
    saturation of a positive exponent are closest to their limits."""
    vals = np.array([-128, -127, -1, 0, 1, 126, 127], np.int8)
    a, b = (g.reshape(1, -1).astype(np.int8) for g in np.meshgrid(vals, vals))
    for za, zb in ((127, -128), (-128, 127), (0, 0), (127, 127)):
        for m0 in (2**31 - 1, 2**30, 1610612736, 0):
            kw = dict(a_zero_point=za, b_zero_point=zb, output_zero_point=-3, multiplier=m0, exponent=exponent)
            expected = _as_int8(R.mul(a, b, rounding=rounding, **kw))
            _check_paths(
                expected,
                lambda kw=kw: ops.mul(a, b, rounding=rounding, **kw),
                lambda kw=kw: ops.reference.mul(a, b, rounding=rounding, **kw),
                isa,
                f"{kw} {rounding}",
            )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((2, 56, 56, 16), (2, 1, 1, 16)),
        ((3, 14, 14, 120), (3, 1, 1, 120)),
        ((1, 28, 28, 600), (1, 1, 1, 600)),
        ((1, 40, 40, 50), (1, 40, 40, 50)),
        ((300, 333), (300, 333)),
    ],
)
def test_mul_large_inputs_every_isa_and_thread_count(isa, threads, a_shape, b_shape):
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, a_shape, dtype=np.int8)
    b = rng.integers(-128, 128, b_shape, dtype=np.int8)
    kw = dict(a_zero_point=-5, b_zero_point=3, output_zero_point=9, **R.mul_params(0.02, 0.004, 0.03))
    for rounding in ("double", "single"):
        with using_isa(isa):
            got = ops.mul(a, b, threads=threads, rounding=rounding, **kw)
        assert_same(_as_int8(R.mul(a, b, rounding=rounding, **kw)), got, f"{a_shape} {rounding}")


def test_mul_params_match_the_oracle():
    for scales in ((0.02, 0.004, 0.03), (0.5, 0.5, 0.25), (1.0, 1.0, 1.0), (3e-3, 7e-4, 2.5e-2), (2.0, 3.0, 1e-4)):
        assert ops.mul_params(*scales) == R.mul_params(*scales), scales


# ------------------------------------------------------------------------------------------------
# concat
# ------------------------------------------------------------------------------------------------


@st.composite
def concat_case(draw):
    """(inputs, keywords): 2 to 6 NHWC inputs with equal N, H, W (or flat), each input either the identity
    or its own zero point and multiplier."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(2, 6))
    flat = draw(st.booleans())
    lead = (
        (draw(st.integers(1, 3)),)
        if flat
        else (draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    )
    out_zp = draw(ZERO_POINTS)
    inputs, zps, m0s, exps = [], [], [], []
    for _ in range(count):
        c = draw(st.one_of(st.integers(1, 40), st.sampled_from([16, 64, 65, 128])))
        inputs.append(int8_data(rng, lead + (c,), draw(DATA_MODES)))
        if draw(st.booleans()):
            zps.append(out_zp)
            m0, e = IDENTITY
        else:
            zps.append(draw(ZERO_POINTS))
            m0, e = draw(M0_STRATEGY), draw(CONCAT_EXPONENTS)
        m0s.append(m0)
        exps.append(e)
    kw = dict(
        zero_points=zps,
        multipliers=m0s,
        exponents=exps,
        output_zero_point=out_zp,
        rounding=draw(ROUNDING_STRATEGY),
    )
    return inputs, kw


@EXAMPLES
@given(case=concat_case(), isa_threads=ISA_THREADS)
def test_concat_matches_oracle(case, isa_threads):
    inputs, kw = case
    isa, threads = isa_threads
    expected = _as_int8(R.concat(inputs, **kw))
    _check_paths(
        expected,
        lambda: ops.concat(inputs, threads=threads, **kw),
        lambda: ops.reference.concat(inputs, **kw),
        isa,
        f"concat {[x.shape for x in inputs]} {kw}",
    )


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_concat_identity_inputs_are_copied_bit_for_bit(rounding):
    """(2^30, 1) with the output's zero point is y = x for every int8 x (docs/arithmetic.md 11)."""
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 4, 4, 16)
    y = x[:, :, :, ::-1].copy()
    for zp in (-128, 0, 55, 127):
        kw = dict(zero_points=[zp, zp], multipliers=[2**30] * 2, exponents=[1, 1], output_zero_point=zp)
        expected = np.concatenate([x, y], axis=-1)
        assert_same(expected, ops.concat([x, y], rounding=rounding, **kw), f"zp={zp}")
        assert_same(expected, ops.reference.concat([x, y], rounding=rounding, **kw), f"reference zp={zp}")
        assert_same(expected, _as_int8(R.concat([x, y], rounding=rounding, **kw)), f"oracle zp={zp}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_concat_large_inputs_every_isa_and_thread_count(isa, threads):
    rng = np.random.default_rng(11)
    chans = (64, 16, 3, 128)
    inputs = [rng.integers(-128, 128, (2, 30, 31, c), dtype=np.int8) for c in chans]
    kw = dict(
        zero_points=[4, -7, 0, 4],
        multipliers=[2**30, 1500000000, 2**31 - 1, 2**30],
        exponents=[1, 0, -2, 1],
        output_zero_point=4,
    )
    for rounding in ("double", "single"):
        with using_isa(isa):
            got = ops.concat(inputs, threads=threads, rounding=rounding, **kw)
        assert_same(_as_int8(R.concat(inputs, rounding=rounding, **kw)), got, rounding)


def test_concat_of_64_inputs():
    rng = np.random.default_rng(3)
    inputs = [rng.integers(-128, 128, (1, 2, 3, 1 + i % 5), dtype=np.int8) for i in range(64)]
    kw = dict(
        zero_points=list(rng.integers(-128, 128, 64)),
        multipliers=[2**30 + i for i in range(64)],
        exponents=[-(i % 8) for i in range(64)],
        output_zero_point=-1,
    )
    assert_same(_as_int8(R.concat(inputs, **kw)), ops.concat(inputs, **kw), "64 inputs")


def test_concat_params_match_the_oracle_and_give_the_identity():
    for scales, out in (([0.1, 0.1], 0.1), ([0.05, 0.2, 0.1], 0.1), ([1e-3, 7.5], 0.25)):
        assert ops.concat_params(scales, out) == R.concat_params(scales, out)
    p = ops.concat_params([0.0625, 0.03], 0.0625)
    assert (p["multipliers"][0], p["exponents"][0]) == IDENTITY


# ------------------------------------------------------------------------------------------------
# torch CPU tensors
# ------------------------------------------------------------------------------------------------


def _nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(x).permute(0, 3, 1, 2)  # channels_last memory


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (2, 5, 6, 24), dtype=np.int8)
    s = rng.integers(-128, 128, (2, 1, 1, 24), dtype=np.int8)
    table = rng.integers(-128, 128, 256, dtype=np.int8)

    y = ops.lut(_nchw(x), torch.from_numpy(table))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 24, 5, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_same(_as_int8(R.lut(x, table)), y.permute(0, 2, 3, 1).numpy(), "lut torch channels_last")
    flat = torch.from_numpy(x.reshape(10, -1))
    assert_same(_as_int8(R.lut(x.reshape(10, -1), table)), ops.lut(flat, table).numpy(), "lut torch 2-D")

    kw = dict(a_zero_point=3, b_zero_point=-4, output_zero_point=1, **R.mul_params(0.05, 0.01, 0.02))
    y = ops.mul(_nchw(x), _nchw(s), **kw)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 24, 5, 6)
    assert_same(_as_int8(R.mul(x, s, **kw)), y.permute(0, 2, 3, 1).numpy(), "mul torch broadcast")
    y = ops.mul(_nchw(x), _nchw(x[::-1].copy()), **kw)
    assert_same(_as_int8(R.mul(x, x[::-1], **kw)), y.permute(0, 2, 3, 1).numpy(), "mul torch same shape")

    parts = [x[..., :10].copy(), x[..., 10:].copy()]
    kw = dict(zero_points=[0, 5], multipliers=[2**30, 1717986918], exponents=[1, 0], output_zero_point=0)
    y = ops.concat([_nchw(p) for p in parts], **kw)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 24, 5, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_same(_as_int8(R.concat(parts, **kw)), y.permute(0, 2, 3, 1).numpy(), "concat torch")
    y = ops.concat([torch.from_numpy(p.reshape(2, -1)) for p in parts], **kw)
    assert_same(_as_int8(R.concat([p.reshape(2, -1) for p in parts], **kw)), y.numpy(), "concat torch flat")


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

X4 = np.zeros((1, 2, 2, 3), np.int8)
TABLE = np.zeros(256, np.int8)
MUL_KW = dict(a_zero_point=0, b_zero_point=0, output_zero_point=0, multiplier=2**30, exponent=0)
CAT_KW = dict(zero_points=[0, 0], multipliers=[2**30, 2**30], exponents=[1, 1], output_zero_point=0)


@pytest.mark.parametrize(
    "call,error,word",
    [
        (lambda: ops.lut(X4.astype(np.int16), TABLE), TypeError, "x"),
        (lambda: ops.lut(X4, TABLE[:255]), ValueError, "table"),
        (lambda: ops.lut(X4, np.zeros((2, 128), np.int8)), ValueError, "table"),
        (lambda: ops.lut(X4, TABLE.astype(np.uint8)), TypeError, "table"),
        (lambda: ops.lut([1, 2], TABLE), TypeError, "x"),
        (lambda: ops.lut(np.zeros((0, 3), np.int8), TABLE), ValueError, "x"),
        (lambda: ops.lut(X4, TABLE, threads=0), ValueError, "threads"),
        (lambda: ops.mul(X4.astype(np.uint8), X4, **MUL_KW), TypeError, "a"),
        (lambda: ops.mul(X4, X4.astype(np.int32), **MUL_KW), TypeError, "b"),
        (lambda: ops.mul(X4, np.zeros((1, 2, 1, 3), np.int8), **MUL_KW), ValueError, "b"),
        (lambda: ops.mul(X4, np.zeros((1, 1, 1, 4), np.int8), **MUL_KW), ValueError, "b"),
        (lambda: ops.mul(X4, np.zeros((2, 1, 1, 3), np.int8), **MUL_KW), ValueError, "b"),
        (lambda: ops.mul(np.zeros((2, 3), np.int8), np.zeros((1, 3), np.int8), **MUL_KW), ValueError, "b"),
        (lambda: ops.mul(np.zeros((2, 3, 4), np.int8), np.zeros((2, 3, 4), np.int8), **MUL_KW), ValueError, "a"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "a_zero_point": 128}), ValueError, "a_zero_point"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "b_zero_point": -129}), ValueError, "b_zero_point"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "output_zero_point": 200}), ValueError, "output_zero_point"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "multiplier": 5}), ValueError, "multiplier"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "multiplier": 2**31}), ValueError, "multiplier"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "exponent": 31}), ValueError, "exponent"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "exponent": -32}), ValueError, "exponent"),
        (lambda: ops.mul(X4, X4, **MUL_KW, act_min=10, act_max=9), ValueError, "act_min"),
        (lambda: ops.mul(X4, X4, **MUL_KW, act_max=128), ValueError, "act_max"),
        (lambda: ops.mul(X4, X4, **MUL_KW, rounding="nearest"), ValueError, "rounding"),
        (lambda: ops.mul(X4, X4, **{**MUL_KW, "exponent": 1.5}), TypeError, "exponent"),
        (lambda: ops.concat([X4], **CAT_KW), ValueError, "inputs"),
        (lambda: ops.concat(X4, **CAT_KW), TypeError, "inputs"),
        (lambda: ops.concat([X4] * 65, **CAT_KW), ValueError, "inputs"),
        (lambda: ops.concat([X4, np.zeros((1, 2, 3, 3), np.int8)], **CAT_KW), ValueError, "inputs[1]"),
        (lambda: ops.concat([X4, np.zeros((1, 2, 3), np.int8)], **CAT_KW), ValueError, "inputs[1]"),
        (lambda: ops.concat([X4, X4.astype(np.int32)], **CAT_KW), TypeError, "inputs[1]"),
        (lambda: ops.concat([X4, X4], **{**CAT_KW, "zero_points": [0]}), ValueError, "zero_points"),
        (lambda: ops.concat([X4, X4], **{**CAT_KW, "zero_points": [0, 128]}), ValueError, "zero_points[1]"),
        (lambda: ops.concat([X4, X4], **{**CAT_KW, "multipliers": [2**30, 7]}), ValueError, "multipliers[1]"),
        (lambda: ops.concat([X4, X4], **{**CAT_KW, "exponents": [31, 0]}), ValueError, "exponents[0]"),
        (lambda: ops.concat([X4, X4], **{**CAT_KW, "output_zero_point": -129}), ValueError, "output_zero_point"),
        (lambda: ops.concat([X4, X4], **CAT_KW, rounding="up"), ValueError, "rounding"),
        (lambda: ops.mul_params(0.1, 0.0, 0.1), ValueError, "b_scale"),
        (lambda: ops.mul_params(0.1, 0.1, float("nan")), ValueError, "output_scale"),
        (lambda: ops.concat_params([0.1, -1.0], 0.1), ValueError, "input_scales[1]"),
        (lambda: ops.concat_params([0.1, 0.1], 0.0), ValueError, "output_scale"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, word):
    with pytest.raises(error, match=word.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_numpy_and_torch_do_not_mix():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        ops.mul(X4, torch.from_numpy(X4), **MUL_KW)
    with pytest.raises(TypeError):
        ops.concat([torch.from_numpy(X4), X4], **CAT_KW)


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: _C.lut(X4, TABLE[:100]), "table"),
        (lambda: _C.lut(X4, TABLE, threads=100000), "threads"),
        (lambda: _C.concat([X4, X4], [0, 0], [2**30, 2**30], [1, 1], 0, threads=-1), "threads"),
        (lambda: _C.mul(X4, X4, 0, 0, 0, 2**30 - 1, 0), "multiplier"),
        (lambda: _C.mul(X4, X4, 0, 0, 0, 2**30, 31), "exponent"),
        (lambda: _C.mul(X4, X4, 300, 0, 0, 2**30, 0), "a_zero_point"),
        (lambda: _C.mul(X4, X4, 0, 0, 0, 2**30, 0, 5, 4), "act_min"),
        (lambda: _C.mul(X4, X4[:, :1], 0, 0, 0, 2**30, 0), "b"),
        (lambda: _C.mul(X4, X4[:, :, :, :2].copy(), 0, 0, 0, 2**30, 0, reference=True), "b"),
        (lambda: _C.concat([X4], [0], [2**30], [1], 0), "inputs"),
        (lambda: _C.concat([X4, X4], [0], [2**30, 2**30], [1, 1], 0), "zero_points"),
        (lambda: _C.concat([X4, X4[:1, :1]], [0, 0], [2**30, 2**30], [1, 1], 0), "inputs"),
        (lambda: _C.concat([X4, X4], [0, 0], [2**30, 3], [1, 1], 0), "multipliers"),
        (lambda: _C.concat([X4, X4], [0, 0], [2**30, 2**30], [1, 1], 0, reference=True, rounding="x"), "rounding"),
    ],
)
def test_the_native_core_checks_its_arguments(call, word):
    """The checks behind the Python layer: nothing reaches a kernel unchecked."""
    with pytest.raises(ValueError, match=word):
        call()


# ------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------

INFO = _cuda.info()
HAS_GPU = bool(INFO["built"]) and INFO["devices"] > 0


class FakeDeviceArray:
    """``__cuda_array_interface__`` with a pointer that is never dereferenced: the checks before any CUDA call."""

    def __init__(self, shape, typestr="|i1"):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (0x10000, False),
            "version": 3,
            "strides": None,
        }


def test_device_arrays_are_checked_before_any_cuda_call():
    with pytest.raises(TypeError, match="x"):
        ops.lut(FakeDeviceArray((4,), "<i4"), TABLE)
    with pytest.raises(TypeError, match="table"):
        ops.lut(X4, FakeDeviceArray((256,)))
    with pytest.raises(TypeError, match="device array"):
        ops.mul(FakeDeviceArray((1, 2, 2, 3)), X4, **MUL_KW)
    with pytest.raises(TypeError, match="device array"):
        ops.concat([FakeDeviceArray((1, 2, 2, 3)), X4], **CAT_KW)
    with pytest.raises(TypeError, match="reference"):
        ops.reference.lut(FakeDeviceArray((4,)), TABLE)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and npuq's CUDA kernels")
@EXAMPLES
@given(mul=mul_case(), cat=concat_case(), seed=st.integers(0, 2**32 - 1))
def test_cuda_kernels_match_oracle(mul, cat, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, rng.integers(1, 2000), dtype=np.int8)
    table = rng.integers(-128, 128, 256, dtype=np.int8)
    assert_same(_as_int8(R.lut(x, table)), _cuda.to_host(ops.lut(_cuda.to_device(x, 0), table)), "cuda lut")
    a, b, kw = mul
    got = _cuda.to_host(ops.mul(_cuda.to_device(a, 0), _cuda.to_device(b, 0), **kw))
    assert_same(_as_int8(R.mul(a, b, **kw)), got, f"cuda mul {kw}")
    inputs, kw = cat
    got = _cuda.to_host(ops.concat([_cuda.to_device(v, 0) for v in inputs], **kw))
    assert_same(_as_int8(R.concat(inputs, **kw)), got, f"cuda concat {kw}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and npuq's CUDA kernels")
def test_cuda_torch_tensors_in_place():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (2, 7, 5, 12), dtype=np.int8)
    s = rng.integers(-128, 128, (2, 1, 1, 12), dtype=np.int8)
    table = rng.integers(-128, 128, 256, dtype=np.int8)
    xt, st_ = _nchw(x).cuda(), _nchw(s).cuda()
    y = ops.lut(xt, table)
    assert y.is_cuda and y.is_contiguous(memory_format=torch.channels_last)
    assert_same(_as_int8(R.lut(x, table)), y.permute(0, 2, 3, 1).cpu().numpy(), "cuda lut torch")
    kw = dict(a_zero_point=1, b_zero_point=-2, output_zero_point=3, **R.mul_params(0.1, 0.01, 0.05))
    y = ops.mul(xt, st_, **kw)
    assert_same(_as_int8(R.mul(x, s, **kw)), y.permute(0, 2, 3, 1).cpu().numpy(), "cuda mul torch")
    y = ops.concat([xt, xt], **CAT_KW)
    assert_same(np.concatenate([x, x], -1), y.permute(0, 2, 3, 1).cpu().numpy(), "cuda concat torch")
