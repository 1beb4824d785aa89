"""npuq.quantize_multiplier(s) and npuq.ops.requantize against the oracle (arithmetic.md sections 2, 3)."""

import math
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuq
from support import reference_numpy as R
from support.helpers import (
    EXPONENT_STRATEGY,
    INT32_MAX,
    INT32_MIN,
    INT32_STRATEGY,
    M0_STRATEGY,
    ROUNDING_STRATEGY,
    SHIFT_STRATEGY,
    as_int32_params,
    assert_same,
    clamps,
    isa_threads,
    scaled_examples,
    using_isa,
)

# ------------------------------------------------------------------------------------------------
# quantize_multiplier
# ------------------------------------------------------------------------------------------------


def _double_from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


POSITIVE_DOUBLES = st.one_of(
    # every positive finite double, subnormals included, uniformly over the bit patterns
    st.integers(1, 0x7FEFFFFFFFFFFFFF).map(_double_from_bits),
    st.floats(min_value=5e-324, max_value=1.7976931348623157e308, allow_subnormal=True),
    # the interesting window [2^-40, 2^32]
    st.floats(min_value=2.0**-40, max_value=2.0**32),
    # powers of two and their neighbours
    st.integers(-1074, 1023).map(lambda k: 2.0**k),
    st.integers(-1073, 1023).map(lambda k: math.nextafter(2.0**k, 0.0)),
    st.integers(-1074, 1022).map(lambda k: math.nextafter(2.0**k, math.inf)),
    # mantissas that round up to 2^31 (step 4) at any exponent: q in [1 - 2^-32, 1)
    st.tuples(st.integers(1, 2**21 - 1), st.integers(-60, 40)).map(lambda t: (1.0 - t[0] * 2.0**-53) * 2.0 ** t[1]),
    # exact ties of llround at q * 2^31 = k + 1/2
    st.tuples(st.integers(2**30, 2**31 - 1), st.integers(-40, 31)).map(lambda t: (t[0] + 0.5) * 2.0 ** (t[1] - 32)),
)


def _call_qm(real):
    """(outcome, value, flushed_warned) for npuq.quantize_multiplier."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            out = npuq.quantize_multiplier(real)
        except ValueError as ex:
            return "ValueError", str(ex), False
    warned = any(issubclass(w.category, npuq.MultiplierFlushedWarning) for w in rec)
    return "ok", out, warned


def _check_qm(real):
    try:
        m0, e, flushed = R.quantize_multiplier(real, return_flushed=True)
    except ValueError:
        outcome, val, _ = _call_qm(real)
        assert outcome == "ValueError", f"quantize_multiplier({real!r}) returned {val}, expected ValueError"
        return
    outcome, val, warned = _call_qm(real)
    assert outcome == "ok", f"quantize_multiplier({real!r}) raised ValueError: {val}"
    got_m0, got_e = val
    assert (int(got_m0), int(got_e)) == (m0, e), f"quantize_multiplier({real!r}) = {val}, expected {(m0, e)}"
    assert warned == flushed, f"quantize_multiplier({real!r}): flushed={flushed} but warned={warned}"


@scaled_examples(10)
@given(POSITIVE_DOUBLES)
def test_quantize_multiplier_matches_oracle(real):
    _check_qm(real)


@pytest.mark.parametrize(
    "real",
    [
        0.5,
        1.0,
        0.75,
        0.0078125,
        1 - 2.0**-40,
        3e-10,
        1e-10,
        0.0123,
        2.0**-32,
        math.nextafter(2.0**-32, 0),
        2.0**-32 * (1 - 2.0**-30),
        2.0**30 * (1 - 2.0**-31),
        math.nextafter(2.0**30, 0),
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        2.0**30,
        2.0**31,
        2.0**29,
        0.5 + 2.0**-32,
        0.5 + 2.5 * 2.0**-31,
        1.5,
        2.0**-31,
    ],
)
def test_quantize_multiplier_edges(real):
    _check_qm(real)


def test_quantize_multiplier_documented_examples():
    assert tuple(map(int, npuq.quantize_multiplier(0.5))) == (2**30, 0)
    assert tuple(map(int, npuq.quantize_multiplier(1.0))) == (2**30, 1)
    assert tuple(map(int, npuq.quantize_multiplier(0.75))) == (1610612736, 0)
    assert tuple(map(int, npuq.quantize_multiplier(0.0078125))) == (2**30, -6)
    assert tuple(map(int, npuq.quantize_multiplier(1 - 2.0**-40))) == (2**30, 1)
    assert tuple(map(int, npuq.quantize_multiplier(3e-10))) == (1383505806, -31)
    with pytest.warns(npuq.MultiplierFlushedWarning):
        assert tuple(map(int, npuq.quantize_multiplier(1e-10))) == (0, 0)
    with pytest.raises(ValueError):
        npuq.quantize_multiplier(2.0**30)


@pytest.mark.parametrize("real", [0.0, -0.0, -1.0, -5e-324, -1e300, float("nan"), float("inf"), float("-inf")])
def test_quantize_multiplier_rejects_non_positive(real):
    with pytest.raises(ValueError):
        npuq.quantize_multiplier(real)


def test_quantize_multiplier_accepts_numpy_scalars():
    assert tuple(map(int, npuq.quantize_multiplier(np.float64(0.75)))) == (1610612736, 0)
    assert tuple(map(int, npuq.quantize_multiplier(np.float32(0.75)))) == (1610612736, 0)


@given(st.lists(st.floats(min_value=2.0**-31, max_value=2.0**29), min_size=1, max_size=20))
def test_quantize_multipliers_matches_oracle(reals):
    m0, e = npuq.quantize_multipliers(np.array(reals))
    em0, ee = R.quantize_multipliers(reals)
    assert np.asarray(m0).astype(np.int64).tolist() == em0.tolist()
    assert np.asarray(e).astype(np.int64).tolist() == ee.tolist()


def test_quantize_multipliers_flush_and_errors():
    with pytest.warns(npuq.MultiplierFlushedWarning):
        m0, e = npuq.quantize_multipliers(np.array([0.5, 1e-12]))
    assert np.asarray(m0).tolist() == [2**30, 0] and np.asarray(e).tolist() == [0, 0]
    for bad in ([0.5, 0.0], [0.5, -1.0], [float("nan")], [2.0**30]):
        with pytest.raises(ValueError):
            npuq.quantize_multipliers(np.array(bad))


def test_arithmetic_version():
    assert npuq.ARITHMETIC_VERSION == 1


# ------------------------------------------------------------------------------------------------
# requantize
# ------------------------------------------------------------------------------------------------


@st.composite
def requant_case(draw):
    c = draw(st.integers(1, 40))
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 3), (1, 2, 2)]))
    shape = lead + (c,)
    size = int(np.prod(shape))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mode = draw(st.sampled_from(["full", "small", "edges", "list"]))
    if mode == "full":
        acc = rng.integers(INT32_MIN, INT32_MAX, shape, dtype=np.int64, endpoint=True)
    elif mode == "small":
        acc = rng.integers(-(2**12), 2**12, shape, dtype=np.int64)
    elif mode == "edges":
        acc = rng.choice(np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX]), shape)
    else:
        acc = np.array(draw(st.lists(INT32_STRATEGY, min_size=size, max_size=size)), np.int64).reshape(shape)
    acc = acc.astype(np.int32)
    per_channel = draw(st.booleans())
    if per_channel:
        m0 = np.array(draw(st.lists(M0_STRATEGY, min_size=c, max_size=c)), np.int64)
        e = np.array(draw(st.lists(EXPONENT_STRATEGY, min_size=c, max_size=c)), np.int64)
    else:
        m0 = draw(M0_STRATEGY)
        e = draw(EXPONENT_STRATEGY)
    shift = None
    if draw(st.booleans()):
        shift = np.array(draw(st.lists(SHIFT_STRATEGY, min_size=c, max_size=c)), np.int64)
    zp, lo, hi = draw(clamps())
    params = dict(
        multiplier=m0,
        exponent=e,
        channel_shift=shift,
        output_zero_point=zp,
        act_min=lo,
        act_max=hi,
        rounding=draw(ROUNDING_STRATEGY),
    )
    return acc, params


@scaled_examples(5)
@given(requant_case(), st.booleans(), isa_threads())
def test_requantize_matches_oracle(case, int32_params, isa_and_threads):
    acc, params = case
    isa, threads = isa_and_threads
    expected = R.requantize(acc, **params)
    if int32_params:
        params = as_int32_params(params)
    with using_isa(isa):
        assert_same(
            expected,
            npuq.ops.requantize(acc, threads=threads, **params),
            f"npuq.ops.requantize isa={isa} threads={threads}",
        )
    assert_same(expected, npuq.ops.reference.requantize(acc, **params), "npuq.ops.reference.requantize")


@scaled_examples(10)
@given(INT32_STRATEGY, M0_STRATEGY, EXPONENT_STRATEGY, SHIFT_STRATEGY, ROUNDING_STRATEGY)
def test_requantize_scalar_params_full_range(acc, m0, e, s, rounding):
    """One accumulator, every (M0, e, s) combination; the raw r is made visible via a 1-channel array."""
    a = np.array([[acc]], np.int32)
    expected = R.requantize(a, m0, e, [s], rounding=rounding)
    got = npuq.ops.requantize(a, multiplier=m0, exponent=e, channel_shift=np.array([s]), rounding=rounding)
    assert_same(expected, got, f"requantize(acc={acc}, M0={m0}, e={e}, s={s}, {rounding})")


@scaled_examples(3)
@given(st.integers(-128, 127), M0_STRATEGY, EXPONENT_STRATEGY, ROUNDING_STRATEGY)
def test_requantize_int32_extremes(zp, m0, e, rounding):
    acc = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX], np.int32)
    expected = R.requantize(acc, m0, e, output_zero_point=zp, rounding=rounding)
    got = npuq.ops.requantize(acc, multiplier=m0, exponent=e, output_zero_point=zp, rounding=rounding)
    assert_same(expected, got, "requantize extremes")


def test_requantize_default_rounding_is_double():
    acc = np.array([-40], np.int32)
    assert npuq.ops.requantize(acc, multiplier=2**30, exponent=-3).tolist() == [-3]


def test_requantize_large_tensor_matches_oracle():
    """Big enough for the vectorized / threaded paths and their tails."""
    rng = np.random.default_rng(1)
    for c in (1, 7, 16, 33, 64, 65):
        acc = rng.integers(-(2**20), 2**20, (257, c)).astype(np.int32)
        m0 = rng.integers(2**30, 2**31, c)
        e = rng.integers(-20, -8, c)
        s = rng.integers(0, 16, c)
        for rounding in ("double", "single"):
            expected = R.requantize(acc, m0, e, s, output_zero_point=3, rounding=rounding)
            got = npuq.ops.requantize(
                acc, multiplier=m0, exponent=e, channel_shift=s, output_zero_point=3, rounding=rounding
            )
            assert_same(expected, got, f"c={c} {rounding}")


@pytest.mark.slow
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantize_every_exponent_and_shift(rounding):
    """Every (e, s_c) pair of the whole range, many accumulators and mantissas each (run with --runslow)."""
    rng = np.random.default_rng(0 if rounding == "double" else 1)
    e_all, s_all = np.meshgrid(np.arange(-31, 31), np.arange(0, 16), indexing="ij")
    e_all, s_all = e_all.ravel(), s_all.ravel()  # 992 channels
    c = e_all.size
    edges = np.array([INT32_MIN, INT32_MIN + 1, -(2**30), -1, 0, 1, 2**30, INT32_MAX - 1, INT32_MAX])
    acc = np.concatenate(
        [
            np.repeat(edges[:, None], c, 1),
            rng.integers(INT32_MIN, INT32_MAX, (300, c), endpoint=True),
            rng.integers(-(2**16), 2**16, (300, c)),
        ]
    ).astype(np.int32)
    for m0 in (2**30, 2**31 - 1, 1610612736, rng.integers(2**30, 2**31, c)):
        m0 = np.broadcast_to(np.asarray(m0, np.int64), (c,)).copy()
        for zp in (0, -128, 127):
            expected = R.requantize(acc, m0, e_all, s_all, output_zero_point=zp, rounding=rounding)
            got = npuq.ops.requantize(
                acc, multiplier=m0, exponent=e_all, channel_shift=s_all, output_zero_point=zp, rounding=rounding
            )
            assert_same(expected, got, f"m0={m0[0]} zp={zp}")
