"""Weight quantizers of npuq.quant.weights: per-layer, per-channel, WESS and WESS with an MSE search.

The WESS shift is checked against an independent exact computation with fractions.Fraction; error bounds
are checked element by element in float64."""

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npuq.quant.weights import (
    DATA_AWARE_METHODS,
    METHODS,
    QuantizedWeight,
    per_channel_ranges,
    quantize_weight,
    round_half_away,
    weight_sqnr_db,
    wess_shifts,
)

ALL_BITS = range(2, 9)

# the methods that need nothing but the weight (data-aware ones: tests/quant/test_data_aware.py)
DATA_FREE = tuple(m for m in METHODS if m not in DATA_AWARE_METHODS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: see conftest.py


def qmax_of(bits):
    return 2 ** (bits - 1) - 1


def make_layer(seed, channels=8, shape=(3, 3, 3), spread=10, dtype=torch.float32):
    """A conv-like weight whose channel ranges differ by up to 2^spread (what BN folding produces)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, *shape))
    w *= np.exp2(-rng.integers(0, spread + 1, size=(channels,) + (1,) * len(shape)))
    return torch.tensor(w, dtype=dtype)


def channel_of(t, c):
    return t.reshape(t.shape[0], -1)[c]


def floor_log2_fraction(num: Fraction) -> int:
    """floor(log2(num)) for a positive Fraction, with integers only."""
    k = num.numerator.bit_length() - num.denominator.bit_length()
    while Fraction(2) ** k > num:
        k -= 1
    while Fraction(2) ** (k + 1) <= num:
        k += 1
    return k


def reference_shifts(w: torch.Tensor, shift_bits: int) -> list[int]:
    rows = w.double().reshape(w.shape[0], -1).abs().amax(dim=1).tolist()
    ranges = [Fraction(r) for r in rows]  # exact binary values
    r_layer = max(ranges)
    cap = 2**shift_bits - 1
    return [0 if r == 0 else min(cap, floor_log2_fraction(r_layer / r)) for r in ranges]


def abs_error(w, qw):
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (w.double() - qw.q.double() * qw.channel_scale.view(shape)).abs()


def sq_error(w, qw):
    return float((abs_error(w, qw) ** 2).sum())


# ----------------------------------------------------------------------------- round_half_away


@pytest.mark.parametrize(
    "x, expect",
    [
        (0.5, 1),
        (-0.5, -1),
        (1.5, 2),
        (2.5, 3),
        (-2.5, -3),
        (0.49999999999999994, 0),
        (-0.49999999999999994, 0),
        (2.4999999999999996, 2),
        (-0.0, 0),
        (1e300, int(1e300)),
        (4503599627370497.0, 4503599627370497),
        (-7.0, -7),
    ],
)
def test_round_half_away_examples(x, expect):
    assert round_half_away(x) == expect
    t = round_half_away(torch.tensor([x], dtype=torch.float64))
    assert t.dtype == torch.float64 and t.item() == expect


@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_round_half_away_matches_fractions(x):
    def exact(v):
        f = Fraction(v)
        return math.floor(abs(f) + Fraction(1, 2)) * (1 if f >= 0 else -1)

    assert round_half_away(x) == exact(x)
    assert round_half_away(torch.tensor([x], dtype=torch.float64)).item() == exact(x)
    x32 = float(np.float32(x))
    assert round_half_away(torch.tensor([x32])).item() == exact(x32)


def test_round_half_away_rejects_nonfinite():
    with pytest.raises(ValueError):
        round_half_away(math.nan)
    with pytest.raises(TypeError):
        round_half_away("1.5")


# ----------------------------------------------------------------------------- error bounds


@settings(max_examples=25)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(["per_layer", "per_channel", "wess"]),
    st.sampled_from(ALL_BITS),
    st.integers(0, 4),
    st.sampled_from([(5,), (2, 3, 3), (1, 1, 1)]),
)
def test_error_bound_and_ranges(seed, method, bits, shift_bits, shape):
    w = make_layer(seed, channels=6, shape=shape, spread=18)
    qw = quantize_weight(w, method, bits, shift_bits=shift_bits)
    qmax = qmax_of(bits)
    assert isinstance(qw, QuantizedWeight) and qw.method == method and qw.bits == bits
    assert qw.q.dtype == torch.int8 and qw.q.shape == w.shape
    assert int(qw.q.abs().max()) <= qmax
    assert qw.channel_scale.dtype == torch.float64 and qw.channel_scale.shape == (6,)
    assert bool((qw.channel_scale > 0).all()) and bool(torch.isfinite(qw.channel_scale).all())
    assert qw.shift.dtype == torch.int64 and qw.shift.shape == (6,)
    # these methods never clip: every element is within half a step of its channel's grid
    bound = qw.channel_scale.view((-1,) + (1,) * len(shape)) / 2
    assert bool((abs_error(w, qw) <= bound * (1 + 1e-12)).all())
    if method == "per_channel":
        assert qw.layer_scale is None and int(qw.shift.abs().sum()) == 0
        # the largest |w| of each channel maps to +-qmax
        assert qw.q.reshape(6, -1).abs().amax(dim=1).tolist() == [qmax] * 6
    else:
        r_layer = float(w.double().abs().max())
        assert qw.layer_scale == r_layer / qmax
        expect = torch.pow(2.0, -qw.shift.double()) * qw.layer_scale
        assert torch.equal(qw.channel_scale, expect)
        if method == "per_layer":
            assert int(qw.shift.abs().sum()) == 0


def test_dequantize_is_float32_q_times_scale():
    w = make_layer(1)
    qw = quantize_weight(w, "wess")
    d = qw.dequantize()
    assert d.dtype == torch.float32 and d.shape == w.shape
    ref = (qw.q.double() * qw.channel_scale.view(-1, 1, 1, 1)).float()
    assert torch.equal(d, ref)


def test_quantization_rounds_half_away_from_zero():
    # layer scale 1.0 (max 127): 2.5 -> 3, -2.5 -> -3, 0.5 -> 1 (torch.round would give 2, -2, 0)
    w = torch.tensor([[127.0, 2.5, -2.5, 0.5, -0.5, 1.4999]], dtype=torch.float64)
    qw = quantize_weight(w, "per_layer", 8)
    assert qw.layer_scale == 1.0
    assert qw.q.tolist() == [[127, 3, -3, 1, -1, 1]]


# ----------------------------------------------------------------------------- WESS shifts


def _layer_with_ranges(ranges, rng, k=7):
    """A (C, k) float64 weight whose row c has max |w| == ranges[c] exactly."""
    rows = []
    for r in ranges:
        row = rng.uniform(-1, 1, k) * r
        row[rng.integers(k)] = r if rng.integers(2) else -r
        rows.append(row)
    return torch.tensor(np.array(rows), dtype=torch.float64)


@settings(max_examples=60)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 4),
    st.lists(
        st.tuples(
            st.integers(-25, 2),
            st.sampled_from(["pow2", "below", "above", "mantissa", "zero"]),
            st.floats(0.5, 1.0, exclude_max=True),
        ),
        min_size=1,
        max_size=8,
    ),
    st.floats(0.5, 1.0, exclude_max=True),
    st.integers(-60, 60),
)
def test_wess_shift_formula_matches_fractions(seed, shift_bits, specs, top_mantissa, top_exp):
    """Ranges R_layer / 2^k exactly, one ulp above and below, and arbitrary mantissas."""
    rng = np.random.default_rng(seed)
    r_layer = math.ldexp(top_mantissa, top_exp)
    ranges = [r_layer]
    for k, kind, m in specs:
        k = abs(k)
        base = math.ldexp(r_layer, -k)
        r = {
            "pow2": base,
            "below": math.nextafter(base, 0),
            "above": math.nextafter(base, math.inf),
            "mantissa": base * m,
            "zero": 0.0,
        }[kind]
        ranges.append(min(r, r_layer))
    rng.shuffle(ranges)
    w = _layer_with_ranges(ranges, rng)
    assert per_channel_ranges(w).tolist() == ranges
    s = wess_shifts(w, shift_bits)
    assert s.dtype == torch.int64
    assert s.tolist() == reference_shifts(w, shift_bits)
    for r, sc in zip(ranges, s.tolist()):
        assert Fraction(r) * 2**sc <= Fraction(r_layer)
        assert 0 <= sc <= 2**shift_bits - 1
    qw = quantize_weight(w, "wess", 8, shift_bits=shift_bits)
    assert qw.shift.tolist() == s.tolist()


@pytest.mark.parametrize("r_layer", [1.0, 3.0, 0.7, 2.0**-40])
def test_wess_exact_powers_of_two(r_layer):
    ks = list(range(21))
    ranges = [r_layer] + [math.ldexp(r_layer, -k) for k in ks]
    below = [math.nextafter(math.ldexp(r_layer, -k), 0) for k in ks[1:]]  # ratio just above 2^k
    above = [math.nextafter(math.ldexp(r_layer, -k), math.inf) for k in ks[1:]]  # ratio just below 2^k
    w = _layer_with_ranges(ranges + below + above, np.random.default_rng(0))
    s = wess_shifts(w).tolist()
    n = len(ks)
    assert s[: 1 + n] == [0] + [min(k, 15) for k in ks]
    assert s[1 + n : 1 + n + len(below)] == [min(k, 15) for k in ks[1:]]
    assert s[1 + n + len(below) :] == [min(k - 1, 15) for k in ks[1:]]


@pytest.mark.parametrize("shift_bits", [0, 1, 2, 3, 4])
def test_shift_cap(shift_bits):
    ranges = [1.0] + [2.0**-k for k in range(1, 25)]
    w = _layer_with_ranges(ranges, np.random.default_rng(1))
    cap = 2**shift_bits - 1
    s = wess_shifts(w, shift_bits).tolist()
    assert s == [min(k, cap) for k in range(25)]
    assert max(s) == cap  # the cap is reached (15 for the NPU's 4 bits)


def test_zero_channel():
    w = make_layer(3, channels=5)
    w[2] = 0.0
    for method in DATA_FREE:
        qw = quantize_weight(w, method, 8)
        assert int(qw.shift[2]) == 0
        assert int(qw.q[2].abs().sum()) == 0
        assert float(qw.channel_scale[2]) > 0 and math.isfinite(float(qw.channel_scale[2]))
        assert not torch.isnan(qw.dequantize()).any()
    assert float(quantize_weight(w, "per_channel").channel_scale[2]) == 1.0
    assert wess_shifts(w)[2].item() == 0
    assert wess_shifts(torch.zeros(3, 4)).tolist() == [0, 0, 0]  # shifts of an all-zero tensor are defined


def test_shift_bits_zero_is_per_layer():
    w = make_layer(4, spread=12)
    a, b = quantize_weight(w, "wess", 8, shift_bits=0), quantize_weight(w, "per_layer", 8)
    assert torch.equal(a.q, b.q) and torch.equal(a.channel_scale, b.channel_scale)
    assert int(a.shift.abs().sum()) == 0


def test_wess_q_is_shifted_per_layer_quantization():
    """q[c] == round_half_away(w[c] * 2^s_c / layer_scale), computed here with numpy."""
    w = make_layer(5, channels=12, spread=14)
    qw = quantize_weight(w, "wess")
    wn = w.double().numpy()
    s = reference_shifts(w, 4)
    r_layer = np.abs(wn).max()
    v = wn * np.exp2(np.array(s, dtype=np.float64)).reshape(-1, 1, 1, 1) / (r_layer / 127)
    ref = np.sign(v) * np.floor(np.abs(v) + 0.5)
    assert np.array_equal(qw.q.numpy(), ref.astype(np.int8))


# ----------------------------------------------------------------------------- SQNR


def test_weight_sqnr_db():
    w = torch.tensor([[1.0, 1.0]])
    assert weight_sqnr_db(w, w.clone()) == math.inf
    assert weight_sqnr_db(w, torch.tensor([[1.0, 0.0]])) == pytest.approx(10 * math.log10(2.0))
    assert weight_sqnr_db(torch.zeros(2, 2), torch.ones(2, 2)) == -math.inf
    with pytest.raises(ValueError, match="shape"):
        weight_sqnr_db(w, torch.zeros(3))


@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1), st.sampled_from(ALL_BITS), st.integers(0, 16))
def test_wess_sqnr_at_least_per_layer(seed, bits, spread):
    """WESS refines each channel's grid by 2^s_c without clipping, so its error is never larger."""
    w = make_layer(seed, channels=6, spread=spread)
    wess, plain = quantize_weight(w, "wess", bits), quantize_weight(w, "per_layer", bits)
    assert bool((abs_error(w, wess) <= abs_error(w, plain) + 1e-15).all())
    assert weight_sqnr_db(w, wess.dequantize().double()) >= weight_sqnr_db(w, plain.dequantize().double()) - 1e-6


def test_per_layer_collapses_wess_keeps_small_channels():
    """Channel ranges spanning 2^12: at 8 bits per-layer sets the small channels to 0, WESS keeps them."""
    rng = np.random.default_rng(7)
    ranges = [2.0**-k for k in range(13)]
    w = _layer_with_ranges(ranges, rng, k=9 * 8).float()
    plain, wess = quantize_weight(w, "per_layer", 8), quantize_weight(w, "wess", 8)
    assert wess.shift.tolist() == list(range(13))
    plain_db = [weight_sqnr_db(channel_of(w, c), channel_of(plain.dequantize(), c)) for c in range(13)]
    wess_db = [weight_sqnr_db(channel_of(w, c), channel_of(wess.dequantize(), c)) for c in range(13)]
    for c in range(8, 13):  # |w| <= 2^-8 < half a step (1/254): everything rounds to 0
        assert int(channel_of(plain.q, c).abs().sum()) == 0
        assert plain_db[c] == pytest.approx(0.0)
    assert all(db > 35.0 for db in wess_db), wess_db
    assert min(wess_db) > max(plain_db[8:]) + 30


# ----------------------------------------------------------------------------- wess_mse


@settings(max_examples=15)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(ALL_BITS),
    st.integers(0, 4),
    st.integers(0, 12),
    st.sampled_from([(4,), (2, 2, 2)]),
    st.booleans(),
)
def test_wess_mse_never_worse_than_wess(seed, bits, shift_bits, spread, shape, heavy):
    w = make_layer(seed, channels=5, shape=shape, spread=spread)
    if heavy:  # an outlier makes clipping worthwhile
        w.view(-1)[seed % w.numel()] *= 8
    mse = quantize_weight(w, "wess_mse", bits, shift_bits=shift_bits)
    wess = quantize_weight(w, "wess", bits, shift_bits=shift_bits)
    qmax = qmax_of(bits)
    assert mse.method == "wess_mse" and int(mse.q.abs().max()) <= qmax
    assert 0 < mse.layer_scale <= wess.layer_scale * (1 + 1e-12)
    assert int(mse.shift.min()) >= 0 and int(mse.shift.max()) <= 2**shift_bits - 1
    assert torch.equal(mse.channel_scale, mse.layer_scale * torch.pow(2.0, -mse.shift.double()))
    assert sq_error(w, mse) <= sq_error(w, wess) * (1 + 1e-12)
    # where nothing clips, the usual half-step bound holds
    unclipped = mse.q.abs() < qmax
    bound = mse.channel_scale.view((-1,) + (1,) * len(shape)).expand_as(w) / 2
    assert bool((abs_error(w, mse)[unclipped] <= bound[unclipped] * (1 + 1e-12)).all())


@pytest.mark.parametrize("bits", [3, 8])
def test_wess_mse_exact_when_wess_is_exact(bits):
    """Weights that lie exactly on the WESS grid: WESS is error-free, so must be the MSE search."""
    rng = np.random.default_rng(bits)
    qmax = qmax_of(bits)
    k = rng.integers(-qmax, qmax + 1, size=(6, 10))
    k[:, 0] = qmax  # each channel reaches its range
    shifts = np.array([0, 1, 3, 5, 9, 15])
    w = torch.tensor(k * 0.125 * np.exp2(-shifts)[:, None], dtype=torch.float64)  # layer scale 1/8 exactly
    wess = quantize_weight(w, "wess", bits)
    assert wess.shift.tolist() == shifts.tolist() and sq_error(w, wess) == 0.0
    mse = quantize_weight(w, "wess_mse", bits)
    assert sq_error(w, mse) == 0.0


def test_wess_mse_helps_at_low_bits():
    w = make_layer(11, channels=8, shape=(16,), spread=6)
    for bits in (2, 3, 4):
        mse, wess = quantize_weight(w, "wess_mse", bits), quantize_weight(w, "wess", bits)
        assert sq_error(w, mse) < 0.9 * sq_error(w, wess)


# ----------------------------------------------------------------------------- all methods x bits


@pytest.mark.parametrize("bits", ALL_BITS)
def test_all_methods_all_bits(bits):
    w = make_layer(bits, channels=4, shape=(2, 3, 3), spread=8)
    errs = {}
    for method in DATA_FREE:
        qw = quantize_weight(w, method, bits)
        assert qw.q.dtype == torch.int8 and int(qw.q.abs().max()) <= qmax_of(bits)
        assert qw.dequantize().shape == w.shape
        errs[method] = sq_error(w, qw)
    assert errs["wess"] <= errs["per_layer"] * (1 + 1e-12)
    assert errs["wess_mse"] <= errs["wess"] * (1 + 1e-12)


def test_torch_modules_and_dtypes():
    conv = torch.nn.Conv2d(3, 8, 3)
    lin = torch.nn.Linear(10, 4)
    assert quantize_weight(conv.weight).q.shape == (8, 3, 3, 3)  # a Parameter that requires grad
    assert quantize_weight(lin.weight, "per_channel").q.shape == (4, 10)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        qw = quantize_weight(lin.weight.detach().to(dtype), "wess")
        assert qw.q.dtype == torch.int8


# ----------------------------------------------------------------------------- bad input


def _raises(exc, pattern, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(pattern, str(info.value)), str(info.value)
    return str(info.value)


def test_bad_inputs():
    w = make_layer(0)
    _raises(TypeError, "`features.3.conv`", quantize_weight, w.numpy(), name="features.3.conv")
    _raises(TypeError, r"`layer1\.0`.*floating-point.*int8", quantize_weight, w.to(torch.int8), name="layer1.0")
    _raises(ValueError, r"`fc`.*at least 2 dims", quantize_weight, torch.ones(5), name="fc")
    _raises(ValueError, r"`fc`.*empty", quantize_weight, torch.ones(0, 5), name="fc")
    bad = w.clone()
    bad[1, 0, 2, 1] = float("nan")
    bad[3, 1, 0, 0] = float("inf")
    msg = _raises(ValueError, r"`conv1`.*2 non-finite", quantize_weight, bad, name="conv1")
    assert "(1, 0, 2, 1)" in msg and "nan" in msg
    _raises(
        ValueError,
        r"cannot choose a scale for an all-zero weight tensor `head`",
        quantize_weight,
        torch.zeros(4, 3),
        name="head",
    )
    msg = _raises(ValueError, r"unknown .*method 'wes'", quantize_weight, w, "wes")
    assert all(m in msg for m in METHODS)
    for bits in (1, 9, 0, 8.0, True, "8", None):
        _raises(ValueError, r"bits must be an int in \[2, 8\]", quantize_weight, w, "wess", bits)
    for sb in (5, -1, 2.0, 16):
        _raises(ValueError, r"shift_bits.*at most 4 bits per channel", quantize_weight, w, "wess", 8, shift_bits=sb)
        _raises(ValueError, r"at most 4 bits per channel", wess_shifts, w, sb)
    _raises(TypeError, "`w3`", per_channel_ranges, torch.ones(3, 3, dtype=torch.int32), name="w3")
