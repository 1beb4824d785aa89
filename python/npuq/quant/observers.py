"""Activation observers: they see float activations batch by batch during calibration and then choose the
int8 scale and zero point of an activation tensor.

Activations are asymmetric int8 (``docs/arithmetic.md`` section 1): ``real = scale * (q - zero_point)``,
``q`` and ``zero_point`` in [-128, 127] (for ``bits`` b: [-2^(b-1), 2^(b-1) - 1]), and real 0.0 is exactly
representable (it quantizes to ``zero_point``). :func:`qparams_from_range` is the one place that turns a
real range into a scale and a zero point; the observers only choose the range.

Observers (``make_observer(kind, **kwargs)``; each class is registered under its ``kind`` in
:data:`npuq.registry.ACTIVATION_OBSERVERS`, whose declared names list them):

* ``"minmax"`` (:class:`MinMaxObserver`): the exact minimum and maximum of all observed values.
* ``"percentile"`` (:class:`PercentileObserver`): ``hi`` is the ``percentile``-th percentile of the observed
  values and ``lo`` the ``(100 - percentile)``-th (both tails are clipped by the same fraction of
  values). Default 99.99.
* ``"mse"`` (:class:`MSEObserver`): the range whose int8 quantization has the smallest mean squared error
  over the observed values: a grid search over ``[lo * a, hi * b]`` shrinking the observed range
  (``a, b = 2^-t``: coordinate descent over t on 0, 1/4, ..., 8, then in steps of 1/32 around the best).
  The error of a candidate is integrated in closed form over the histogram, values being uniform within
  a bin. The observed range itself (``a = b = 1``) is a candidate and wins ties.
* ``"kl"`` (:class:`KLObserver`): entropy calibration in the manner of TensorRT: the observed values are
  binned into a 2048-bin histogram, and the clipping window that minimizes ``KL(P || Q)`` is chosen,
  ``P`` being the histogram inside the window with the values outside it added to its end bins and ``Q``
  the window's own histogram merged into 255 quantization levels (equal groups of bins) and expanded back
  evenly over the bins where ``P`` has mass. Asymmetric and one-signed data: the 2048 bins cover
  ``[min(lo, 0), max(hi, 0)]`` with 0 on a bin edge and one common bin width, the bins split between the
  two signs in proportion to the observed extents. A window is ``n`` bins below 0 and ``p`` bins above
  (``n + p >= 255``); the 255 levels always span the whole window, as the asymmetric int8 grid does.
  ``n`` and ``p`` are found by coordinate descent from the full range: the best ``p`` for the current ``n``
  (a scan of every 4th ``p``, then of every ``p`` next to the best of those), then the best ``n`` for that
  ``p``, and so on until a scan keeps its value (at most 8 rounds),
  so an outlier tail on one side is clipped without clipping the other side. One-signed data (e.g.
  after ReLU) only searches its own side and puts all 255 levels on it; symmetric data ends near
  TensorRT's symmetric threshold (which spends 128 levels per side). Windows narrower than 255 bins
  (1/8 of the range) are not considered. Exact zeros are left out of the histogram: 0.0 is exactly
  representable for every candidate, so they carry no information about the threshold (a ReLU output's
  spike of zeros would otherwise dominate the divergence). ``Q`` is smoothed by mixing it with 1e-4 of a
  uniform distribution over ``P``'s support, so that a clipped end bin that holds no values of its own
  costs a finite divergence; a window that holds no values at all scores +inf. On ties the widest window
  wins.

Histogram observers (percentile, mse, kl) keep, per sign, a histogram of ``hist_bins`` (default 8192)
equal bins over ``[0, H]`` of the magnitudes, plus a count of exact zeros. ``H`` starts at the largest
magnitude of the first batch that has values of that sign; when a later batch exceeds it, ``H`` is doubled
as often as needed and groups of 2^k old bins are merged into one (exact: the old bin edges are new bin
edges), so the histogram always has a resolution of at least ``hist_bins / 2`` bins over the observed
range. The state is O(hist_bins) whatever the number of values (see ``nbytes``), and the result depends
only on the sequence of batches (no randomness). At ``compute()`` the histograms are read as a piecewise
linear CDF (values uniform within a bin), which percentiles interpolate and which the KL observer
resamples onto its 2048-bin grid; the MSE observer integrates over the stored bins (merged to 1024 per
sign). Chosen ranges are clipped to the exact observed
``[min, max]``.

Errors: ``update`` raises TypeError for a non-tensor or a non-float tensor and ValueError (naming the
observer) for NaN/inf values, leaving the observer unchanged; ``compute()`` without any observed value
raises RuntimeError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch

from npuq.quant.weights import _check_bits, round_half_away
from npuq.registry import ACTIVATION_OBSERVERS

__all__ = [
    "DEGENERATE_SCALE",
    "OBSERVER_KINDS",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "Observer",
    "PercentileObserver",
    "QParams",
    "make_observer",
    "qparams_from_range",
]

# the scale given to a range that is a single point (lo == hi == 0, e.g. a dead ReLU layer): any positive
# scale represents the data exactly; 1.0 keeps the multipliers of neighbouring layers and the bias scale
# (s_in * s_w) of the next layer in a sane range.
DEGENERATE_SCALE = 1.0
# the smallest scale of a non-degenerate range (float32's smallest normal number): a tinier range is
# widened to it, so that the scale is a normal float32 as well
MIN_SCALE = 2.0**-126
_HISTC_CHUNK = 1 << 24
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _int_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class QParams:
    """Activation quantization parameters: ``real = scale * (q - zero_point)``, q in [qmin, qmax].

    ``lo``/``hi`` is the real range that was chosen (widened to include 0), from which ``scale`` and
    ``zero_point`` were computed; the representable range is ``scale * ([qmin, qmax] - zero_point)``,
    which covers it up to half a step at either end (zero point rounding).
    """

    scale: float
    zero_point: int
    lo: float
    hi: float
    qmin: int = -128
    qmax: int = 127

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``clamp(round_half_away(x / scale) + zero_point, qmin, qmax)`` as an int64 tensor."""
        x = torch.as_tensor(x, dtype=torch.float64)
        return (round_half_away(x / self.scale) + self.zero_point).clamp_(self.qmin, self.qmax).to(torch.int64)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """``scale * (q - zero_point)`` as a float64 tensor."""
        return (torch.as_tensor(q).to(torch.float64) - self.zero_point) * self.scale


def qparams_from_range(lo, hi, bits: int = 8) -> QParams:
    """Scale and zero point of the real range [lo, hi].

    The range is widened to include 0; ``scale = (hi - lo) / (2^bits - 1)`` (at least ``MIN_SCALE``),
    ``zero_point = round_half_away(qmin - lo / scale)`` clamped to [qmin, qmax] (qmin = -128 for 8 bits).
    A non-negative range gives ``zero_point = qmin`` (-128), a non-positive one ``qmax``. A single-point range
    (``lo == hi == 0``) gets ``scale = DEGENERATE_SCALE`` (1.0) and ``zero_point = qmin``.
    """
    bits = _check_bits(bits)
    for v, n in ((lo, "lo"), (hi, "hi")):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
            raise ValueError(f"qparams_from_range: {n} must be a finite real number, got {v!r}")
    lo, hi = float(lo), float(hi)
    if lo > hi:
        raise ValueError(f"qparams_from_range: lo ({lo}) must be <= hi ({hi})")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = _int_range(bits)
    if hi == lo:
        return QParams(DEGENERATE_SCALE, qmin, lo, hi, qmin, qmax)
    width = hi - lo
    if not math.isfinite(width):
        raise ValueError(f"qparams_from_range: the range [{lo}, {hi}] is too wide for float64")
    scale = max(width / (qmax - qmin), MIN_SCALE)
    zero_point = min(max(round_half_away(qmin - lo / scale), qmin), qmax)
    return QParams(scale, int(zero_point), lo, hi, qmin, qmax)


# ---------------------------------------------------------------------------------------- observers


class Observer:
    """Base class: ``update(x)`` per calibration batch, then ``compute() -> QParams``.

    Tracks ``n_batches`` (calls of ``update``), ``n_values`` (values seen) and the exact ``min_val`` /
    ``max_val``. ``name`` (e.g. the layer path) is used in error messages.
    """

    kind = "base"

    def __init__(self, *, bits: int = 8, name: str = "activation"):
        self.bits = _check_bits(bits)
        self.name = str(name)
        self.reset()

    def reset(self) -> None:
        """Forget everything observed."""
        self.n_batches = 0
        self.n_values = 0
        self.min_val = math.inf
        self.max_val = -math.inf

    @property
    def nbytes(self) -> int:
        """Bytes of observed state (bounded: it does not grow with the number of values)."""
        return 0

    def _check(self, x) -> tuple[torch.Tensor, float, float]:
        """Validate a batch; returns it flat (float32 or float64, on the CPU) with its min and max."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"observer `{self.name}`: update expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"observer `{self.name}`: update expects a floating-point tensor, got dtype {x.dtype}")
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        x = x.to("cpu").reshape(-1)
        if x.numel() == 0:
            return x, math.inf, -math.inf
        lo, hi = (float(v) for v in torch.aminmax(x))  # NaN propagates, so one pass checks finiteness
        if not (math.isfinite(lo) and math.isfinite(hi)):
            count = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"observer `{self.name}`: the batch has {count} non-finite value(s) (NaN or inf) of {x.numel()}"
            )
        return x, lo, hi

    def update(self, x: torch.Tensor) -> None:
        """Observe one batch of float activations (any shape)."""
        x, lo, hi = self._check(x)
        self.n_batches += 1
        if x.numel() == 0:
            return
        self._observe(x, lo, hi)
        self.n_values += x.numel()
        self.min_val = min(self.min_val, lo)
        self.max_val = max(self.max_val, hi)

    def _observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        """x: flat, finite, non-empty, float32 or float64; lo, hi: its min and max."""

    def _choose_range(self) -> tuple[float, float]:
        raise NotImplementedError

    def compute(self) -> QParams:
        """The scale and zero point of the observed activations."""
        if self.n_values == 0:
            raise RuntimeError(
                f"observer `{self.name}`: no calibration data: the calibration loader was empty? "
                f"({self.n_batches} batch(es), 0 values)"
            )
        lo, hi = self._choose_range()
        lo = min(max(lo, self.min_val), 0.0)
        hi = max(min(hi, self.max_val), 0.0)
        return qparams_from_range(lo, hi, self.bits)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, bits={self.bits}, n_batches={self.n_batches}, "
            f"n_values={self.n_values})"
        )


@ACTIVATION_OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The exact range [min, max] of all observed values."""

    kind = "minmax"

    def _choose_range(self) -> tuple[float, float]:
        return self.min_val, self.max_val


class _Side:
    """Histogram of the magnitudes of one sign: ``bins`` equal bins over [0, H], growing by doubling H."""

    def __init__(self, bins: int):
        self.bins = bins
        self.h = 0.0  # 0: nothing seen yet
        self.counts = torch.zeros(bins, dtype=torch.int64)

    def grow(self, m: float) -> None:
        """Make the histogram cover [0, m] (m > 0): set H, or double it and merge bins."""
        if self.h == 0.0:
            self.h = m
            return
        if m <= self.h:
            return
        h, factor = self.h, 1
        while h < m:
            h *= 2.0
            factor *= 2
            if not math.isfinite(h):
                raise ValueError(f"activation magnitude {m} is too large to histogram")
        merged = torch.zeros_like(self.counts)
        if factor >= self.bins:
            merged[0] = self.counts.sum()
        else:
            merged[: self.bins // factor] = self.counts.view(self.bins // factor, factor).sum(dim=1)
        self.counts, self.h = merged, h

    def add(self, v: torch.Tensor, n_zero: int) -> None:
        """Count the values of v in (0, H] (others are ignored); v holds n_zero exact zeros, which
        torch.histc puts into bin 0 and which are taken out again. Bin of v: floor(v / H * bins)."""
        if v.dtype == torch.float32 and self.h > _FLOAT32_MAX:
            v = v.to(torch.float64)
        for i in range(0, v.numel(), _HISTC_CHUNK):  # float32 counts are exact below 2^24
            self.counts += torch.histc(v[i : i + _HISTC_CHUNK], self.bins, 0.0, self.h).to(torch.int64)
        self.counts[0] -= n_zero

    def edges(self) -> np.ndarray:
        return self.h * (np.arange(self.bins + 1, dtype=np.float64) / self.bins)


class _HistogramObserver(Observer):
    """Keeps bounded per-sign histograms (see the module doc) and a count of exact zeros."""

    def __init__(self, *, hist_bins: int = 8192, bits: int = 8, name: str = "activation"):
        if (
            isinstance(hist_bins, bool)
            or not isinstance(hist_bins, Integral)
            or hist_bins < 256
            or hist_bins & (hist_bins - 1)
        ):
            raise ValueError(f"hist_bins must be a power of two >= 256, got {hist_bins!r}")
        self.hist_bins = int(hist_bins)
        super().__init__(bits=bits, name=name)

    def reset(self) -> None:
        super().reset()
        self._pos = _Side(self.hist_bins)
        self._neg = _Side(self.hist_bins)
        self._zeros = 0

    @property
    def nbytes(self) -> int:
        return sum(s.counts.numel() * s.counts.element_size() for s in (self._pos, self._neg))

    def _observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        zeros = int((x == 0).sum())
        if hi > 0.0:
            self._pos.grow(hi)
            self._pos.add(x, zeros)
        if lo < 0.0:
            self._neg.grow(-lo)
            self._neg.add(-x, zeros)
        self._zeros += zeros

    def _cdf(self, include_zeros: bool) -> tuple[np.ndarray, np.ndarray]:
        """Points (x, F) of the piecewise linear CDF (counts, not normalized); x and F non-decreasing.

        With ``include_zeros`` the exact zeros are a jump of F at x = 0 (two points with x = 0)."""
        xs, fs = [], []
        total = 0.0
        if self._neg.h > 0.0:
            xs.append(-self._neg.edges()[::-1])
            fs.append(np.concatenate([[0.0], np.cumsum(self._neg.counts.numpy()[::-1], dtype=np.float64)]))
            total = float(fs[-1][-1])
        else:
            xs.append(np.zeros(1))
            fs.append(np.zeros(1))
        if include_zeros and self._zeros:
            total += self._zeros
            xs.append(np.zeros(1))
            fs.append(np.array([total]))
        if self._pos.h > 0.0:
            xs.append(self._pos.edges()[1:])
            fs.append(total + np.cumsum(self._pos.counts.numpy(), dtype=np.float64))
        return np.concatenate(xs), np.concatenate(fs)

    def _quantile(self, p: float) -> float:
        """The value below which a fraction p of the observed values (zeros included) lie."""
        x, f = self._cdf(include_zeros=True)
        target = p * f[-1]
        k = int(np.searchsorted(f, target, side="left"))
        if k == 0:
            return float(x[0])
        if k >= len(f):
            return float(x[-1])
        f0, f1 = f[k - 1], f[k]
        return float(x[k - 1] + (target - f0) / (f1 - f0) * (x[k] - x[k - 1]))


@ACTIVATION_OBSERVERS.register("percentile")
class PercentileObserver(_HistogramObserver):
    """Clips both tails: ``hi`` = the ``percentile``-th percentile, ``lo`` = the ``(100 - percentile)``-th.

    ``percentile`` in [50, 100]; 100 gives the observed [min, max]. Percentiles are interpolated in the
    histogram (values uniform within a bin), so they are exact up to one histogram bin.
    """

    kind = "percentile"

    def __init__(self, percentile: float = 99.99, *, hist_bins: int = 8192, bits: int = 8, name: str = "activation"):
        if isinstance(percentile, bool) or not isinstance(percentile, Real) or not 50.0 <= float(percentile) <= 100.0:
            raise ValueError(f"percentile must be a number in [50, 100], got {percentile!r}")
        self.percentile = float(percentile)
        super().__init__(hist_bins=hist_bins, bits=bits, name=name)

    def _choose_range(self) -> tuple[float, float]:
        if self.percentile == 100.0:
            return self.min_val, self.max_val
        p = self.percentile / 100.0
        return self._quantile(1.0 - p), self._quantile(p)


def _sq_error_integral(u: torch.Tensor, top_level: torch.Tensor) -> torch.Tensor:
    """``integral_0^u (v - Q(v))^2 dv`` for ``u >= 0`` (in units of the scale), where ``Q`` rounds to the
    nearest integer and clamps at ``top_level`` (>= 0). The rounding error is periodic with
    ``integral = 1/12`` per period up to ``top_level + 1/2``; beyond it the error is ``v - top_level``."""
    edge = top_level + 0.5
    w = torch.minimum(u, edge) + 0.5
    n = torch.floor(w)
    r = w - n - 0.5  # in [-0.5, 0.5)
    inside = n / 12.0 + (r**3 + 0.125) / 3.0 - 1.0 / 24.0
    beyond = ((u - top_level).clamp(min=0.5) ** 3 - 0.125) / 3.0
    return inside + beyond


def _hist_sq_error(
    a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Total squared quantization error of histogram bins [a, b] (all of one sign, values uniform within a
    bin) for each candidate range [lo, hi] turned into a scale and zero point as by qparams_from_range.
    Exact under the uniform-within-bin model (closed-form integrals). Returns [K]."""
    scale = ((hi - lo) / (qmax - qmin)).clamp_(min=MIN_SCALE)[:, None]  # [K, 1]
    zp = round_half_away(qmin - lo[:, None] / scale).clamp_(qmin, qmax)
    pos = a[None, :] >= 0
    top = torch.where(pos, qmax - zp, zp - qmin)  # the levels above (below) real 0, in steps: [K, B]
    alpha, beta = a[None, :].abs() / scale, b[None, :].abs() / scale  # [K, B]
    # with I(u) = integral_0^u: a bin [a, b] >= 0 gives I(b) - I(a), a bin [a, b] <= 0 gives I(|a|) - I(|b|)
    diff = _sq_error_integral(beta, top) - _sq_error_integral(alpha, top)
    span = beta - alpha
    narrow = span.abs() < 1e-6  # (a bin clipped to a point): the error at its midpoint, free of cancellation
    mid = 0.5 * (alpha + beta)
    point = (mid - torch.minimum(round_half_away(mid), top)) ** 2
    mean_sq = torch.where(narrow, point, diff / torch.where(narrow, 1.0, span)) * scale**2
    return (mean_sq * counts[None, :]).sum(dim=1)


@ACTIVATION_OBSERVERS.register("mse")
class MSEObserver(_HistogramObserver):
    """The range ``[lo * a, hi * b]`` (a, b in (0, 1]) minimizing the quantization MSE of the observed values.

    The error of a candidate is computed on the stored histograms (merged to 1024 bins per sign), in
    closed form for values uniform within each bin (no bin-center approximation); exact zeros are exactly
    representable for every candidate and left out. ``a, b = 2^-t`` are found by coordinate descent (the best
    ``b`` for the current ``a``, then the best ``a`` for that ``b``, ...) over t = 0, 1/4, ..., 8, then in
    steps of 1/32 around the result; the observed range (t = 0) is the start and wins ties.
    """

    kind = "mse"
    _BLOCK = 1 << 20  # elements of one vectorized block (candidates x bins)
    _SEARCH_BINS = 1024  # per sign: the stored bins are merged in groups for the search

    def _bins(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The non-empty histogram bins, merged to at most ``_SEARCH_BINS`` per sign, as (left edge,
        right edge, count), clipped to [min, max]."""
        parts = []
        for side, sign in ((self._pos, 1.0), (self._neg, -1.0)):
            if side.h == 0.0:
                continue
            m = min(side.bins, self._SEARCH_BINS)
            e = torch.from_numpy(side.h * (np.arange(m + 1, dtype=np.float64) / m))
            c = side.counts.view(m, -1).sum(dim=1).to(torch.float64)
            keep = c > 0
            lo_e, hi_e, c = e[:-1][keep], e[1:][keep], c[keep]
            if sign > 0:
                parts.append((lo_e, hi_e.clamp(max=self.max_val), c))
            else:
                parts.append((-hi_e.clamp(max=-self.min_val), -lo_e, c))
        a, b, c = (torch.cat(t) for t in zip(*parts))
        return a, torch.maximum(a, b), c

    def _choose_range(self) -> tuple[float, float]:
        lo, hi = min(self.min_val, 0.0), max(self.max_val, 0.0)
        if lo == hi or (self._pos.h == 0.0 and self._neg.h == 0.0):
            return lo, hi
        a_edge, b_edge, counts = self._bins()
        qmin, qmax = _int_range(self.bits)
        step = max(1, self._BLOCK // len(counts))

        def best(t_lo: torch.Tensor, t_hi: torch.Tensor) -> tuple[float, float, float, float]:
            """The candidate (t_lo, t_hi) pair with the smallest error, the first one among equals."""
            cand_lo, cand_hi = lo * torch.exp2(-t_lo), hi * torch.exp2(-t_hi)
            err = torch.cat(
                [
                    _hist_sq_error(a_edge, b_edge, counts, cand_lo[i : i + step], cand_hi[i : i + step], qmin, qmax)
                    for i in range(0, len(t_lo), step)
                ]
            )
            k = int(torch.argmin(err))
            return float(t_lo[k]), float(t_hi[k]), float(cand_lo[k]), float(cand_hi[k])

        # coordinate descent over (t_lo, t_hi), range [lo * 2^-t_lo, hi * 2^-t_hi]: a coarse stage on
        # t = 0, 1/4, ..., 8, then a fine stage in steps of 1/32 around the current values; each scan
        # includes the current value, and t ascends (the widest range wins ties)
        sides = [i for i, extent in enumerate((lo, hi)) if extent != 0.0]
        t = [0.0, 0.0]
        result = (lo, hi)
        coarse = torch.arange(33, dtype=torch.float64) / 4.0
        fine = torch.arange(-8, 9, dtype=torch.float64) / 32.0
        for stage in ("coarse", "fine"):
            for _ in range(8):
                before = list(t)
                for side in sides:
                    values = coarse if stage == "coarse" else (t[side] + fine).clamp(min=0.0).unique()
                    other = torch.full_like(values, t[1 - side])
                    pair = (values, other) if side == 0 else (other, values)
                    t[0], t[1], *result = best(*pair)
                if t == before or len(sides) == 1:
                    break
        return result[0], result[1]


@ACTIVATION_OBSERVERS.register("kl")
class KLObserver(_HistogramObserver):
    """TensorRT-style entropy calibration with 255 quantization levels (see the module doc).

    ``bins`` (default 2048) is the number of histogram bins over the observed range; a window is at
    least ``2^bits - 1`` bins wide.
    """

    kind = "kl"
    _SMOOTH = 1e-4
    _BLOCK = 1 << 18  # elements of one vectorized block of candidate windows
    _MAX_ROUNDS = 8
    _STRIDE = 4

    def __init__(self, bins: int = 2048, *, hist_bins: int = 8192, bits: int = 8, name: str = "activation"):
        levels = (1 << _check_bits(bits)) - 1
        if isinstance(bins, bool) or not isinstance(bins, Integral) or not levels <= bins <= 1 << 16:
            raise ValueError(f"bins must be an int in [{levels}, 65536], got {bins!r}")
        self.bins = int(bins)
        super().__init__(hist_bins=hist_bins, bits=bits, name=name)

    def _choose_range(self) -> tuple[float, float]:
        lo, hi = min(self.min_val, 0.0), max(self.max_val, 0.0)
        nb = self.bins
        if lo == hi:
            return lo, hi
        # 0 on a bin edge: kn bins below it, nb - kn above, one common width
        if lo < 0.0 and hi > 0.0:
            kn = min(max(round_half_away(nb * (-lo) / (hi - lo)), 1), nb - 1)
            width = max(-lo / kn, hi / (nb - kn))
        elif hi > 0.0:
            kn, width = 0, hi / nb
        else:
            kn, width = nb, -lo / nb
        x, f = self._cdf(include_zeros=False)
        edges = (np.arange(nb + 1, dtype=np.float64) - kn) * width
        hist = torch.from_numpy(np.diff(np.interp(edges, x, f)).clip(min=0.0))
        if float(hist.sum()) == 0.0:
            return 0.0, 0.0
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(hist, 0)])
        levels = (1 << self.bits) - 1
        # coordinate descent on the window [kn - n, kn + p) (n bins below 0, p above), from the full range:
        # alternately the best p for the current n and the best n for the current p, until a scan keeps
        # its coordinate (then the other one is already the best for it)
        n, p = kn, nb - kn
        scans = []
        if p > 0:
            scans.append("p")
        if n > 0:
            scans.append("n")
        for r in range(self._MAX_ROUNDS * len(scans)):
            if scans[r % len(scans)] == "p":
                lo_p = max(levels - n, 1)
                new = self._scan(hist, cum, lo_p, nb - kn, lambda c, n=n: (torch.full_like(c, kn - n), n + c), levels)
                changed, p = new != p, new
            else:
                lo_n = max(levels - p, 1)
                new = self._scan(hist, cum, lo_n, kn, lambda c, p=p: (kn - c, c + p), levels)
                changed, n = new != n, new
            if len(scans) == 1 or (r > 0 and not changed):
                break
        return -n * width, p * width

    def _scan(self, hist, cum, first: int, last: int, window, levels: int) -> int:
        """The best value c in [first, last] of one window coordinate: ``window(c) -> (start, width)``.
        Every ``_STRIDE``-th value (and ``last``), then every value around the best of those."""
        coarse = torch.cat([torch.arange(first, last + 1, self._STRIDE), torch.tensor([last])]).unique()
        start, width = window(coarse)
        c = coarse[self._best(hist, cum, start, width, levels)]
        fine = torch.arange(max(first, int(c) - self._STRIDE + 1), min(last, int(c) + self._STRIDE - 1) + 1)
        start, width = window(fine)
        return int(fine[self._best(hist, cum, start, width, levels)])

    def _best(self, hist, cum, start, width, levels) -> int:
        """Index of the candidate window with the smallest divergence (the last one among equals;
        candidates are ordered narrow to wide)."""
        nb = hist.shape[0]
        kl = torch.empty(len(width), dtype=torch.float64)
        order = torch.argsort(width, stable=True)
        step = max(1, self._BLOCK // nb)
        for c in range(0, len(order), step):
            sel = order[c : c + step]
            kl[sel] = self._divergence(hist, cum, start[sel], width[sel], levels)
        return int((kl <= kl.min()).nonzero().max())

    def _divergence(self, hist, cum, start, width, levels) -> torch.Tensor:
        """KL(P || Q) of the windows hist[start : start + width] (one per candidate). Returns [K].

        Per bin, P is the window's count plus the values below the window (first bin) or above it (last
        bin); Q is the window's count of the bin's level spread evenly over the level's bins where P > 0,
        smoothed. Q is constant over a level, so ``sum P log Q`` is a sum over levels."""
        k, nb = len(width), hist.shape[0]
        cols = int(width.max())
        j = torch.arange(cols, dtype=torch.int64)[None, :]
        valid = j < width[:, None]
        padded = torch.cat([hist, torch.zeros(1, dtype=hist.dtype)])
        win = padded[torch.where(valid, start[:, None] + j, nb)]  # [K, cols], 0 outside the window
        level = torch.where(valid, (j * levels) // width[:, None], levels)  # level `levels`: padding
        rows = torch.arange(k)
        left, right = cum[start], cum[-1] - cum[start + width]
        first, last = win[:, 0], win[rows, width - 1]
        f64 = torch.float64
        g_win = torch.zeros(k, levels + 1, dtype=f64).scatter_add_(1, level, win)
        g_n = torch.zeros(k, levels + 1, dtype=f64).scatter_add_(1, level, (win > 0).to(f64))
        g_n[:, 0] += ((first == 0) & (left > 0)).to(f64)  # bins that only the clipped values fill
        g_n[:, levels - 1] += ((last == 0) & (right > 0)).to(f64)  # (the last bin is in the last level)
        g_p = g_win.clone()
        g_p[:, 0] += left
        g_p[:, levels - 1] += right
        q_total = g_win.sum(dim=1)
        total = q_total + left + right
        n_support = g_n.sum(dim=1, keepdim=True)
        q = (1.0 - self._SMOOTH) * (g_win / g_n.clamp(min=1.0)) / q_total.clamp(min=1e-300)[:, None]
        q = q + self._SMOOTH / n_support
        p_log_p = (
            torch.xlogy(win, win).sum(dim=1)
            - torch.xlogy(first, first)
            - torch.xlogy(last, last)
            + torch.xlogy(first + left, first + left)
            + torch.xlogy(last + right, last + right)
        )
        kl = (p_log_p - torch.xlogy(g_p, q).sum(dim=1)) / total - torch.log(total)
        return kl.masked_fill_(q_total == 0.0, math.inf)  # a window without values


def make_observer(kind: str, **kwargs) -> Observer:
    """A new observer of ``kind`` ("minmax", "percentile", "mse", "kl"); kwargs go to its constructor
    (all take ``name`` and ``bits``; percentile: ``percentile``; kl: ``bins``; histogram observers:
    ``hist_bins``)."""
    return ACTIVATION_OBSERVERS.get(ACTIVATION_OBSERVERS.check(kind, "observer kind"))(**kwargs)


class _ObserverKinds(Mapping):
    """The observer classes by kind, read-only: a view of :data:`npuq.registry.ACTIVATION_OBSERVERS` (a copy
    made at import time would miss the classes registered after this module)."""

    def __getitem__(self, kind: str) -> type:
        if kind not in ACTIVATION_OBSERVERS:
            raise KeyError(kind)
        return ACTIVATION_OBSERVERS.get(kind)

    def __iter__(self):
        return iter(ACTIVATION_OBSERVERS.names())

    def __len__(self) -> int:
        return len(ACTIVATION_OBSERVERS)


OBSERVER_KINDS = _ObserverKinds()
