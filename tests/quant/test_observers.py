"""Activation observers of npuq.quant.observers and qparams_from_range (asymmetric int8 activations)."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from npuq.quant.observers import (
    DEGENERATE_SCALE,
    KLObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    QParams,
    make_observer,
    qparams_from_range,
)

KINDS = ["minmax", "percentile", "mse", "kl"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: see conftest.py


def gen(seed):
    return torch.Generator().manual_seed(seed)


def feed(obs, x, batches=4):
    for b in x.reshape(-1).chunk(batches):
        obs.update(b)
    return obs


def mse_of(qp: QParams, x: torch.Tensor) -> float:
    x = x.double()
    return float(((qp.dequantize(qp.quantize(x)) - x) ** 2).mean())


def check_valid(qp: QParams):
    assert isinstance(qp.zero_point, int) and -128 <= qp.zero_point <= 127
    assert isinstance(qp.scale, float) and qp.scale > 0 and math.isfinite(qp.scale)
    assert qp.lo <= 0.0 <= qp.hi
    # real 0.0 is exactly representable: it quantizes to the zero point, which dequantizes to 0.0
    assert int(qp.quantize(torch.tensor([0.0]))) == qp.zero_point
    assert float(qp.dequantize(torch.tensor([qp.zero_point]))) == 0.0


# ----------------------------------------------------------------------------- qparams_from_range


@given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4))
def test_qparams_from_range_properties(a, b):
    lo, hi = min(a, b), max(a, b)
    qp = qparams_from_range(lo, hi)
    check_valid(qp)
    wlo, whi = min(lo, 0.0), max(hi, 0.0)
    assert (qp.lo, qp.hi) == (wlo, whi)
    if whi == wlo:
        assert qp.scale == DEGENERATE_SCALE
        return
    assert qp.scale == pytest.approx((whi - wlo) / 255, rel=1e-12) or qp.scale == 2.0**-126
    # the representable range covers [lo, hi] up to half a step
    assert qp.scale * (-128 - qp.zero_point) <= wlo + qp.scale / 2 * (1 + 1e-9)
    assert qp.scale * (127 - qp.zero_point) >= whi - qp.scale / 2 * (1 + 1e-9)
    for v in (wlo, whi):
        assert abs(float(qp.dequantize(qp.quantize(torch.tensor([v])))) - v) <= qp.scale / 2 * (1 + 1e-9)


def test_qparams_from_range_examples():
    qp = qparams_from_range(0.0, 2.55)  # post-ReLU
    assert qp.zero_point == -128 and qp.scale == pytest.approx(0.01)
    assert qparams_from_range(1.0, 3.0).zero_point == -128  # widened to [0, 3]
    assert qparams_from_range(1.0, 3.0).lo == 0.0
    assert qparams_from_range(-2.55, 0.0).zero_point == 127
    qp = qparams_from_range(-1.0, 3.0)
    assert qp.zero_point == -64  # -128 + 63.75 = -64.25
    # round half away from zero: scale 0.125 exactly, -128 - lo / scale = -0.5 exactly -> -1 (half-to-even: 0)
    qp = qparams_from_range(-127.5 * 2**-3, 127.5 * 2**-3)
    assert qp.scale == 0.125 and qp.zero_point == -1
    dead = qparams_from_range(0.0, 0.0)
    assert dead == QParams(DEGENERATE_SCALE, -128, 0.0, 0.0)
    tiny = qparams_from_range(0.0, 1e-300)
    assert tiny.scale == 2.0**-126 and tiny.zero_point == -128
    four = qparams_from_range(-1.0, 2.0, bits=4)
    assert (four.qmin, four.qmax) == (-8, 7) and four.scale == pytest.approx(3 / 15) and -8 <= four.zero_point <= 7


@pytest.mark.parametrize("lo, hi", [(1.0, 0.0), (math.nan, 1.0), (0.0, math.inf), (-math.inf, 0.0), ("0", 1.0)])
def test_qparams_from_range_rejects(lo, hi):
    with pytest.raises(ValueError):
        qparams_from_range(lo, hi)


def test_qparams_from_range_rejects_bits():
    with pytest.raises(ValueError, match="bits"):
        qparams_from_range(0.0, 1.0, bits=9)


# ----------------------------------------------------------------------------- minmax, percentile


def test_minmax_exact_range():
    x = torch.randn(10000, generator=gen(0)) * 3 + 1
    obs = feed(MinMaxObserver(), x, 7)
    qp = obs.compute()
    assert (qp.lo, qp.hi) == (float(x.min()), float(x.max()))
    assert qp == qparams_from_range(float(x.min()), float(x.max()))
    assert obs.n_batches == 7 and obs.n_values == 10000


def test_percentile_on_known_data():
    x = torch.linspace(-1.0, 1.0, 20001)  # uniform: the p-th percentile is -1 + 2 p / 100
    for p in (99.0, 99.9, 90.0):
        qp = feed(PercentileObserver(p), x[torch.randperm(20001, generator=gen(1))], 5).compute()
        expect = -1 + 2 * p / 100
        tol = 2 * 2.0 / 8192  # two histogram bins
        assert qp.hi == pytest.approx(expect, abs=tol) and qp.lo == pytest.approx(-expect, abs=tol)
    skewed = torch.cat([torch.full((99000,), 0.0), torch.linspace(1.0, 2.0, 1000)])
    obs = PercentileObserver(99.5)
    obs.update(skewed)
    assert obs.compute().hi == pytest.approx(1.5, abs=2e-3)  # 99.5 % of the values lie below 1.5
    assert obs.compute().lo == 0.0


def test_percentile_against_torch_quantile():
    x = torch.randn(50000, generator=gen(2)).double() * 2
    for p in (99.0, 99.99):
        obs = feed(PercentileObserver(p), x, 3)
        qp = obs.compute()
        lo_ref, hi_ref = torch.quantile(x, torch.tensor([1 - p / 100, p / 100], dtype=torch.float64)).tolist()
        bin_width = float(x.abs().max()) / 8192
        assert abs(qp.hi - hi_ref) <= 3 * bin_width + 0.01 * (p > 99.9)
        assert abs(qp.lo - lo_ref) <= 3 * bin_width + 0.01 * (p > 99.9)


def test_percentile_100_is_minmax():
    x = torch.randn(5000, generator=gen(3))
    a = feed(PercentileObserver(100), x).compute()
    b = feed(MinMaxObserver(), x).compute()
    assert a == b


# ----------------------------------------------------------------------------- MSE, KL


@pytest.mark.parametrize("bits, dist, gain", [(8, "student2", 0.97), (8, "laplace", 1.0), (4, "normal", 0.6)])
def test_mse_beats_minmax_on_heavy_tails(bits, dist, gain):
    torch.manual_seed(4)
    x = {
        "student2": lambda: torch.distributions.StudentT(torch.tensor(2.0)).sample((20000,)),
        "laplace": lambda: torch.distributions.Laplace(0.0, 1.0).sample((20000,)),
        "normal": lambda: torch.randn(20000),
    }[dist]()
    mm = feed(MinMaxObserver(bits=bits), x).compute()
    ms = feed(MSEObserver(bits=bits), x).compute()
    assert mse_of(ms, x) <= gain * mse_of(mm, x)
    if gain < 1:
        assert ms.hi < mm.hi and ms.lo > mm.lo
    # and it is about as good as a brute-force search of shrunk ranges on the values themselves
    t = torch.arange(0, 4.01, 0.5).tolist()
    brute = min(mse_of(qparams_from_range(mm.lo * 2**-a, mm.hi * 2**-b, bits), x) for a in t for b in t)
    assert mse_of(ms, x) <= 1.03 * brute


def test_mse_never_worse_than_minmax_on_light_tails():
    x = torch.rand(30000, generator=gen(5)) * 4 - 1  # uniform: nothing to clip
    mm = feed(MinMaxObserver(), x).compute()
    ms = feed(MSEObserver(), x).compute()
    assert mse_of(ms, x) <= mse_of(mm, x) * 1.02


@pytest.mark.parametrize("outliers", ["positive", "both"])
def test_kl_clips_outliers(outliers):
    x = torch.randn(200000, generator=gen(6))
    x[:20] = 25.0
    if outliers == "both":
        x[20:40] = -25.0
    kl = feed(KLObserver(), x).compute()
    mm = feed(MinMaxObserver(), x).compute()
    assert mm.hi == 25.0
    assert 2.5 < kl.hi < 8.0, kl  # the outliers are clipped, the Gaussian body is kept
    assert -8.0 < kl.lo < -2.5, kl
    assert mse_of(kl, x[40:]) < 0.2 * mse_of(mm, x[40:])  # far better resolution for the body


def test_kl_one_signed_uses_all_levels():
    x = torch.relu(torch.randn(100000, generator=gen(7)))
    x[:10] = 40.0
    qp = feed(KLObserver(), x).compute()
    assert qp.zero_point == -128 and qp.lo == 0.0
    assert 2.0 < qp.hi < 8.0


def test_kl_keeps_a_single_spike():
    x = torch.full((1000,), 3.0)
    qp = feed(KLObserver(), x).compute()
    assert qp.hi == 3.0 and qp.zero_point == -128


# ----------------------------------------------------------------------------- all observers


@pytest.mark.parametrize("kind", KINDS)
def test_zero_representable_and_relu_zero_point(kind):
    x = torch.randn(20000, generator=gen(8)) * 2 + 0.5
    check_valid(feed(make_observer(kind), x).compute())
    relu = torch.relu(x)
    qp = feed(make_observer(kind), relu).compute()
    check_valid(qp)
    assert qp.zero_point == -128 and qp.lo == 0.0
    assert int(qp.quantize(torch.tensor([0.0]))) == -128
    neg = -relu
    qp = feed(make_observer(kind), neg).compute()
    assert qp.zero_point == 127 and qp.hi == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_dead_layer(kind):
    obs = feed(make_observer(kind, name="dead"), torch.zeros(3, 16, 4, 4))
    qp = obs.compute()
    assert qp.scale == DEGENERATE_SCALE and qp.zero_point == -128 and qp.lo == qp.hi == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind):
    x = torch.randn(4, 8, 10, 10, generator=gen(9)) * torch.linspace(0.1, 5, 4).view(4, 1, 1, 1)
    a = make_observer(kind)
    b = make_observer(kind)
    for obs in (a, b):
        for batch in x:
            obs.update(batch)
    assert a.compute() == b.compute() == a.compute()


def test_same_result_for_any_thread_count():
    x = torch.randn(6, 16, 9, 9, generator=gen(16)) * 2 + 0.3
    x.view(-1)[:3] = 30.0
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        row = []
        for kind in KINDS:
            obs = make_observer(kind)
            for batch in x:
                obs.update(batch)
            row.append(obs.compute())
        results.append(row)
    assert results[0] == results[1]


@pytest.mark.parametrize("kind", ["percentile", "mse", "kl"])
def test_growing_range_across_batches(kind):
    """Batches whose range grows (and whose negative side appears late) give about the same range as
    one batch of everything, with bounded state."""
    g = gen(10)
    batches = [torch.rand(5000, generator=g) * 0.01]  # positive, tiny
    batches += [torch.randn(5000, generator=g) * s for s in (0.1, 1.0, 3.0)]
    batches += [torch.randn(5000, generator=g) * 0.5]
    obs = make_observer(kind)
    sizes = set()
    for b in batches:
        obs.update(b)
        sizes.add(obs.nbytes)
    assert len(sizes) == 1 and 0 < sizes.pop() <= 2 * 8192 * 8
    whole = make_observer(kind)
    whole.update(torch.cat(batches))
    a, b = obs.compute(), whole.compute()
    check_valid(a)
    span = max(b.hi - b.lo, 1e-9)
    assert abs(a.hi - b.hi) <= 0.05 * span and abs(a.lo - b.lo) <= 0.05 * span, (a, b)
    assert obs.min_val == whole.min_val and obs.max_val == whole.max_val


def test_memory_is_bounded():
    obs = make_observer("kl")
    obs.update(torch.randn(64, 64, 14, 14, generator=gen(11)))
    before = obs.nbytes
    for s in (2.0, 10.0, 0.5):
        obs.update(torch.randn(64, 64, 14, 14, generator=gen(12)) * s)
    assert obs.nbytes == before
    assert obs.n_values == 4 * 64 * 64 * 14 * 14 and obs.n_batches == 4


def test_input_dtypes_and_layouts():
    x = torch.randn(2, 3, 5, 5, generator=gen(13))
    ref = feed(make_observer("percentile"), x, 1).compute()
    for y in (x.double(), x.permute(0, 2, 3, 1), x.to(memory_format=torch.channels_last)):
        assert feed(make_observer("percentile"), y, 1).compute().hi == pytest.approx(ref.hi, rel=1e-6)
    half = feed(make_observer("minmax"), x.half(), 1).compute()
    assert half.hi == float(x.half().max())


# ----------------------------------------------------------------------------- errors


def _raises(exc, pattern, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(pattern, str(info.value)), str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_errors(kind):
    obs = make_observer(kind, name="blocks.2.relu")
    _raises(RuntimeError, "no calibration data: the calibration loader was empty", obs.compute)
    obs.update(torch.zeros(0))
    _raises(RuntimeError, "no calibration data", obs.compute)
    obs.update(torch.randn(100, generator=gen(14)))
    state = (obs.n_values, obs.min_val, obs.max_val, obs.compute())
    bad = torch.randn(50, generator=gen(15))
    bad[7] = math.nan
    bad[9] = math.inf
    _raises(ValueError, r"`blocks\.2\.relu`.*2 non-finite", obs.update, bad)
    _raises(ValueError, r"`blocks\.2\.relu`.*non-finite", obs.update, torch.tensor([-math.inf]))
    _raises(TypeError, r"`blocks\.2\.relu`.*floating-point.*int64", obs.update, torch.arange(5))
    _raises(TypeError, r"`blocks\.2\.relu`.*torch\.Tensor", obs.update, np.zeros(3, dtype=np.float32))
    assert (obs.n_values, obs.min_val, obs.max_val, obs.compute()) == state  # bad batches change nothing


def test_constructor_errors():
    _raises(ValueError, r"unknown observer kind 'histogram'.*minmax, percentile, mse, kl", make_observer, "histogram")
    _raises(ValueError, "percentile", make_observer, "percentile", percentile=101)
    _raises(ValueError, "percentile", make_observer, "percentile", percentile=10)
    _raises(ValueError, "bits", make_observer, "minmax", bits=1)
    _raises(ValueError, "bins", make_observer, "kl", bins=100)
    _raises(ValueError, "hist_bins", make_observer, "mse", hist_bins=1000)
    assert isinstance(make_observer("percentile", percentile=99.0, name="a"), Observer)
    assert make_observer("kl", bins=4096).bins == 4096
