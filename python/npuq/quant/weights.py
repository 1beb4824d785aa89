"""Post-training weight quantization for the NPU: per-layer, per-channel and the weight equalizing
shift scaler (WESS).

Weights are float torch tensors in torch layout with the output channel on axis 0 (Conv2d
``(C_out, C_in / groups, KH, KW)``, Linear ``(C_out, K)``), after batch-norm folding. They are quantized
symmetrically (zero point 0) to ``[-qmax, qmax]`` with ``qmax = 2^(bits - 1) - 1`` (the NPU rejects
-128, see ``docs/arithmetic.md`` section 1), rounding half away from zero.

Methods (``quantize_weight(w, method)``):

* ``"per_layer"``: one scale ``R_layer / qmax`` with ``R_layer = max |w|``.
* ``"per_channel"``: scale ``R_c / qmax`` per output channel, ``R_c = max |w[c]|`` (an all-zero
  channel gets scale 1.0 and q = 0).
* ``"wess"``: per output channel the shift ``s_c = min(2^shift_bits - 1, floor(log2(R_layer / R_c)))``
  (0 for an all-zero channel); channel c is multiplied by ``2^s_c`` and the layer is quantized with the
  one scale ``R_layer / qmax``. The effective scale of channel c is ``layer_scale / 2^s_c``; on the NPU
  the inverse shift is part of the requantization's right shift (``e_c = e - s_c``).
* ``"wess_mse"``: the layer scale and the shifts that minimize the total squared quantization error of
  the layer: for each of 100 candidate layer scales ``R_layer / qmax * alpha``, alpha in [0.3, 1.0]
  (values beyond ``qmax`` are clipped), every channel picks its best shift independently; the scale
  with the smallest total error wins. The plain WESS solution (alpha = 1 with the WESS shifts) is
  always a candidate, and the result is checked against it, so ``"wess_mse"`` is never worse than
  ``"wess"`` in total squared error.
* ``"wess_output"``: the WESS grid (one layer scale, 4-bit shifts) chosen to minimize the error of the
  layer's *output* on calibration data rather than the weight error; it needs the moments of the
  layer's inputs: ``quantize_weight(w, "wess_output", stats=...)`` with a
  :class:`npuq.quant.data_aware.LayerStats` (``npuq.quantize`` collects them itself). See
  :mod:`npuq.quant.data_aware`.

Any of these grids can then be rounded adaptively instead of to nearest (:mod:`npuq.quant.adaround`);
``QuantizedWeight.rounding`` says which.

Each method is a function registered in :data:`npuq.registry.WEIGHT_QUANTIZERS` where it is defined
(``@WEIGHT_QUANTIZERS.register("wess", data_aware=False)``); a new one is that function, its name in the
registry's declared names and, if it needs calibration data, in ``npuq.methods.DATA_AWARE_WEIGHT_METHODS``.

All computations run in float64 on the CPU; the returned tensors are CPU tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch

from npuq._validate import Interval
from npuq.methods import DATA_AWARE_WEIGHT_METHODS
from npuq.registry import WEIGHT_QUANTIZERS

__all__ = [
    "DATA_AWARE_METHODS",
    "DATA_FREE_METHODS",
    "MAX_SHIFT_BITS",
    "METHODS",
    "QuantizedWeight",
    "per_channel_ranges",
    "quantize_weight",
    "round_half_away",
    "weight_sqnr_db",
    "wess_shifts",
]

# the names come from the registry's declaration and the data-aware ones from npuq.methods, so that neither
# list loads a quantizer module (quantize_weight checks each against the registration it dispatches to)
METHODS = WEIGHT_QUANTIZERS.names()
DATA_AWARE_METHODS = DATA_AWARE_WEIGHT_METHODS  # need calibration statistics (``stats=``)
DATA_FREE_METHODS = tuple(m for m in METHODS if m not in DATA_AWARE_METHODS)
MAX_SHIFT_BITS = 4  # the NPU stores a 4-bit shift per output channel (docs/arithmetic.md, section 1)
MIN_BITS, MAX_BITS = 2, 8
_BITS = Interval(int, MIN_BITS, MAX_BITS)
_SHIFT_BITS = Interval(int, 0, MAX_SHIFT_BITS)

# wess_mse search grid: layer scales R_layer / qmax * alpha, alpha = linspace(0.3, 1.0, 100)
_MSE_ALPHA_MIN, _MSE_ALPHA_COUNT = 0.3, 100
# elements of one vectorized block of the wess_mse search (bounds its memory to a few tens of MB)
_MSE_BLOCK = 1 << 20


def round_half_away(x):
    """Round to the nearest integer, ties away from zero (C's ``round``; not torch.round's half-to-even).

    A floating-point tensor gives a tensor of the same dtype (integer tensors are returned as a copy);
    a Python real number gives an ``int``. Exact for every finite value: the fractional part
    ``x - trunc(x)`` is computed without rounding, and ``trunc(2 * frac)`` is -1, 0 or 1.
    """
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            return x.clone()
        t = torch.trunc(x)
        return t + torch.trunc(2.0 * (x - t))
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"round_half_away expects a torch.Tensor or a real number, got {type(x).__name__}")
    if isinstance(x, Integral):
        return int(x)
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"round_half_away: cannot round {x} to an integer")
    t = math.trunc(x)
    return t + math.trunc(2.0 * (x - t))


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized weight tensor.

    ``q`` is int8 with the shape of the float weight and values in ``[-qmax, qmax]``;
    ``w[c] ~= q[c] * channel_scale[c]``. ``channel_scale`` (float64, ``[C_out]``) is the effective scale of
    each output channel, the WESS shift included (``layer_scale / 2^shift[c]``). ``layer_scale`` is the one
    per-layer scale of ``per_layer``, ``wess`` and ``wess_mse`` (None for ``per_channel``). ``shift``
    (int64, ``[C_out]``) holds the WESS shifts ``s_c`` in ``[0, 2^shift_bits - 1]`` (all 0 unless WESS).
    ``rounding`` is ``"nearest"`` or ``"adaround"`` (adaptive rounding on the same grid).
    """

    q: torch.Tensor
    channel_scale: torch.Tensor
    layer_scale: float | None
    shift: torch.Tensor
    bits: int
    method: str
    rounding: str = "nearest"

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def dequantize(self) -> torch.Tensor:
        """``q * channel_scale`` (broadcast over axis 0) as a float32 tensor."""
        shape = (-1,) + (1,) * (self.q.dim() - 1)
        return (self.q.to(torch.float64) * self.channel_scale.view(shape)).to(torch.float32)


# ----------------------------------------------------------------------------------------- checks


def _is_int_in(v, interval: Interval) -> bool:
    # a bad type is a ValueError here (not _validate's TypeError): these messages predate the vocabulary
    return not isinstance(v, bool) and isinstance(v, Integral) and interval.contains(int(v))


def _check_bits(bits) -> int:
    if not _is_int_in(bits, _BITS):
        raise ValueError(f"bits must be {_BITS.describe()}, got {bits!r}")
    return int(bits)


def _check_shift_bits(shift_bits) -> int:
    if not _is_int_in(shift_bits, _SHIFT_BITS):
        raise ValueError(
            f"shift_bits must be {_SHIFT_BITS.describe()} (the NPU stores at most "
            f"{MAX_SHIFT_BITS} bits per channel for the WESS shift), got {shift_bits!r}"
        )
    return int(shift_bits)


def _quantizer(method):
    """The registered quantizer of ``method`` and whether it is data-aware; an unknown name raises the
    registry's error, which lists the known ones."""
    # a registration carries the data_aware of its declaration (npuq.registry refuses one that differs)
    return WEIGHT_QUANTIZERS.get(method), bool(WEIGHT_QUANTIZERS.meta(method).get("data_aware"))


def _as_weight(w, name: str) -> torch.Tensor:
    """Validate a float weight tensor and return it as a float64 CPU tensor (detached)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight tensor `{name}` must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"weight tensor `{name}` must have a floating-point dtype, got {w.dtype}")
    if w.dim() < 2:
        raise ValueError(
            f"weight tensor `{name}` must have at least 2 dims with the output channel on axis 0 "
            f"(Linear (C_out, K), Conv2d (C_out, C_in/groups, KH, KW)), got shape {tuple(w.shape)}"
        )
    if w.numel() == 0:
        raise ValueError(f"weight tensor `{name}` is empty (shape {tuple(w.shape)})")
    w64 = w.detach().to(device="cpu", dtype=torch.float64)
    finite = torch.isfinite(w64)
    if not bool(finite.all()):
        bad = ~finite
        count = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"weight tensor `{name}` has {count} non-finite value(s) (NaN or inf); the first is "
            f"{w64[first].item()} at index {first}"
        )
    return w64


def _ranges(w64: torch.Tensor) -> torch.Tensor:
    return w64.reshape(w64.shape[0], -1).abs().amax(dim=1)


def _bshape(w64: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (w64.dim() - 1)


def _shifts_from_ranges(r: torch.Tensor, cap: int) -> torch.Tensor:
    """``min(cap, floor(log2(max(r) / r_c)))`` per channel (0 where ``r_c == 0``), exactly.

    With ``r = m * 2^e``, ``m`` in [0.5, 1) (frexp, exact also for subnormals):
    ``floor(log2(R_layer / R_c)) = e_layer - e_c - [m_layer < m_c]``, because ``m_layer / m_c`` lies in
    (0.5, 2) and is >= 1 exactly when ``m_layer >= m_c``. No division, no logarithm.
    """
    s = torch.zeros(r.shape[0], dtype=torch.int64)
    r_layer = r.max()
    if cap == 0 or float(r_layer) == 0.0:
        return s
    nz = r > 0
    m_layer, e_layer = torch.frexp(r_layer)
    m_c, e_c = torch.frexp(r[nz])
    k = (e_layer.to(torch.int64) - e_c.to(torch.int64)) - (m_layer < m_c).to(torch.int64)
    s[nz] = k.clamp(0, cap)
    return s


def _quantize(w64: torch.Tensor, channel_scale: torch.Tensor, qmax: int) -> torch.Tensor:
    q = round_half_away(w64 / channel_scale.view(_bshape(w64)))
    return q.clamp_(-qmax, qmax).to(torch.int8)


def _sq_error(w64: torch.Tensor, q: torch.Tensor, channel_scale: torch.Tensor) -> float:
    return float(((w64 - q.to(torch.float64) * channel_scale.view(_bshape(w64))) ** 2).sum())


def _check_scale(scale: float, name: str) -> float:
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"weight tensor `{name}`: its range is too small for a float64 scale (scale {scale})")
    return scale


# ------------------------------------------------------------------------------------------ public


def per_channel_ranges(w, *, name: str = "weight") -> torch.Tensor:
    """``R_c = max |w[c]|`` over each output channel (axis 0), as float64 ``[C_out]``."""
    return _ranges(_as_weight(w, name))


def wess_shifts(w, shift_bits: int = 4, *, name: str = "weight") -> torch.Tensor:
    """The WESS shifts ``s_c = min(2^shift_bits - 1, floor(log2(R_layer / R_c)))`` as int64 ``[C_out]``.

    An all-zero channel (and every channel of an all-zero tensor) gets 0. ``R_c * 2^s_c <= R_layer``
    holds exactly.
    """
    cap = (1 << _check_shift_bits(shift_bits)) - 1
    return _shifts_from_ranges(_ranges(_as_weight(w, name)), cap)


def weight_sqnr_db(w, w_hat) -> float:
    """``10 log10(sum w^2 / sum (w - w_hat)^2)`` in float64; ``+inf`` when ``w_hat == w`` exactly."""
    a = torch.as_tensor(w).detach().to(device="cpu", dtype=torch.float64)
    b = torch.as_tensor(w_hat).detach().to(device="cpu", dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"weight_sqnr_db: shapes differ: w {tuple(a.shape)}, w_hat {tuple(b.shape)}")
    noise = float(((a - b) ** 2).sum())
    if noise == 0.0:
        return math.inf
    signal = float((a**2).sum())
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def quantize_weight(
    w,
    method: str = "wess",
    bits: int = 8,
    *,
    shift_bits: int = 4,
    name: str = "weight",
    stats=None,
    centered: bool = False,
) -> QuantizedWeight:
    """Quantize a float weight tensor (output channel on axis 0) with ``method`` (see the module doc).

    ``bits`` in [2, 8]; ``shift_bits`` in [0, 4] (only used by the WESS methods; 0 means plain per-layer).
    ``name`` (e.g. the layer path) is used in error messages. ``stats`` (a
    :class:`npuq.quant.data_aware.LayerStats`, required by ``"wess_output"``, ignored by the others) and
    ``centered`` (minimize the output error left after bias correction) define the output error of the
    data-aware methods. Raises TypeError for a non-tensor or non-float input, ValueError for fewer than 2
    dims, NaN/inf values, an all-zero tensor (the caller may skip such a layer), an unknown method,
    bits / shift_bits out of range, or a data-aware method without ``stats``.

    ``method`` names an entry of :data:`npuq.registry.WEIGHT_QUANTIZERS`: a function ``fn(w, bits, *,
    shift_bits, name, stats, centered, objective=None)`` returning a :class:`QuantizedWeight`, registered
    with ``data_aware=True`` when it needs ``stats``.
    """
    fn, data_aware = _quantizer(method)
    bits = _check_bits(bits)
    shift_bits = _check_shift_bits(shift_bits)
    if data_aware and stats is None:
        raise ValueError(
            f"weight method {method!r} (weight `{name}`) minimizes the layer's output error on calibration "
            f"data and needs the layer's input statistics: pass stats=npuq.quant.data_aware.layer_stats("
            f"<input batches>, kind=..., weight_shape=...), or quantize the model with "
            f"npuq.quantize(model, calib_loader, weights={method!r}); the data-free methods are "
            f"{', '.join(DATA_FREE_METHODS)}"
        )
    return fn(w, bits, shift_bits=shift_bits, name=name, stats=stats, centered=centered)


# The data-free quantizers ignore the data arguments (stats, centered, objective) that every quantizer is given.


def _nonzero_weight(w, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The validated float64 weight, its per-channel ranges and their maximum (refusing an all-zero tensor)."""
    w64 = _as_weight(w, name)
    r = _ranges(w64)
    r_layer = float(r.max())
    if r_layer == 0.0:
        raise ValueError(
            f"cannot choose a scale for an all-zero weight tensor `{name}` (shape {tuple(w64.shape)}); "
            f"the caller may skip it"
        )
    return w64, r, r_layer


def _qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


@WEIGHT_QUANTIZERS.register("per_channel", data_aware=False)
def _per_channel(w, bits: int, *, name: str, **data) -> QuantizedWeight:
    w64, r, _ = _nonzero_weight(w, name)
    qmax = _qmax(bits)
    scale = torch.where(r > 0, r / qmax, torch.ones_like(r))
    _check_scale(float(scale.min()), name)
    no_shift = torch.zeros(w64.shape[0], dtype=torch.int64)
    return QuantizedWeight(_quantize(w64, scale, qmax), scale, None, no_shift, bits, "per_channel")


@WEIGHT_QUANTIZERS.register("per_layer", data_aware=False)
def _per_layer(w, bits: int, *, name: str, **data) -> QuantizedWeight:
    w64, _, r_layer = _nonzero_weight(w, name)
    qmax = _qmax(bits)
    layer_scale = _check_scale(r_layer / qmax, name)
    channels = w64.shape[0]
    scale = torch.full((channels,), layer_scale, dtype=torch.float64)
    no_shift = torch.zeros(channels, dtype=torch.int64)
    return QuantizedWeight(_quantize(w64, scale, qmax), scale, layer_scale, no_shift, bits, "per_layer")


def _wess_grid(
    w64: torch.Tensor, r: torch.Tensor, r_layer: float, bits: int, shift_bits: int, name: str, method: str
) -> QuantizedWeight:
    qmax = _qmax(bits)
    layer_scale = _check_scale(r_layer / qmax, name)
    shift = _shifts_from_ranges(r, (1 << shift_bits) - 1)
    scale = layer_scale / torch.pow(2.0, shift.to(torch.float64))
    _check_scale(float(scale.min()), name)
    return QuantizedWeight(_quantize(w64, scale, qmax), scale, layer_scale, shift, bits, method)


@WEIGHT_QUANTIZERS.register("wess", data_aware=False)
def _wess(w, bits: int, *, shift_bits: int, name: str, **data) -> QuantizedWeight:
    w64, r, r_layer = _nonzero_weight(w, name)
    return _wess_grid(w64, r, r_layer, bits, shift_bits, name, "wess")


@WEIGHT_QUANTIZERS.register("wess_mse", data_aware=False)
def _wess_mse(w, bits: int, *, shift_bits: int, name: str, **data) -> QuantizedWeight:
    w64, r, r_layer = _nonzero_weight(w, name)
    plain = _wess_grid(w64, r, r_layer, bits, shift_bits, name, "wess_mse")
    qmax, cap = _qmax(bits), (1 << shift_bits) - 1
    best_scale, best_shift = _mse_search(w64, r_layer / qmax, qmax, cap)
    _check_scale(best_scale / 2.0**cap, name)
    mse_cs = best_scale / torch.pow(2.0, best_shift.to(torch.float64))
    mse_q = _quantize(w64, mse_cs, qmax)
    if _sq_error(w64, mse_q, mse_cs) <= _sq_error(w64, plain.q, plain.channel_scale):
        return QuantizedWeight(mse_q, mse_cs, best_scale, best_shift, bits, "wess_mse")
    return plain  # never worse than wess


def _mse_search(w64: torch.Tensor, base: float, qmax: int, cap: int) -> tuple[float, torch.Tensor]:
    """Grid search of the layer scale ``base * alpha``; per scale each channel takes its best shift.

    Returns (layer_scale, shifts). On ties the larger alpha (less clipping) and the smaller shift win.

    Exact pruning of the shifts of channel c at a layer scale: let ``s0`` be the largest shift at which no
    value of the channel clips. Below ``s0`` the grid of a shift is a subset of the grid of the next one
    and nothing clips, so no shift below ``s0`` has a smaller error. Above it, ``sum relu(|w| - qmax *
    step)^2`` is a lower bound of the error that grows with the shift, so the search walks up from ``s0``
    and stops as soon as that bound reaches the best error found.
    """
    channels = w64.shape[0]
    wf = w64.reshape(channels, -1)
    n = wf.shape[1]
    r = wf.abs().amax(dim=1)
    alphas = torch.linspace(_MSE_ALPHA_MIN, 1.0, _MSE_ALPHA_COUNT, dtype=torch.float64)
    alphas[-1] = 1.0
    scales = base * alphas  # [A]; scales[-1] == base exactly
    pow2 = torch.pow(2.0, torch.arange(cap + 1, dtype=torch.float64))
    steps = scales[:, None] / pow2[None, :]  # [A, S]: the channel scale of (alpha, shift)
    n_alpha = len(scales)

    noclip = round_half_away(r[None, :, None] / steps[:, None, :]) <= qmax  # [A, C, S], monotone in S
    s0 = (noclip.sum(dim=2) - 1).clamp_(min=0)
    s0[:, r == 0] = 0
    shift = s0.reshape(-1).clone()  # per (alpha, channel) pair, index a * C + c
    err = torch.full((n_alpha * channels,), math.inf, dtype=torch.float64)
    cur = shift.clone()  # the next shift to evaluate, per pair
    pending = torch.arange(n_alpha * channels)
    block = max(1, _MSE_BLOCK // n)
    while pending.numel():
        keep = []
        for i in range(0, pending.numel(), block):
            pair = pending[i : i + block]
            a_idx, c_idx = pair // channels, pair % channels
            s = cur[pair]
            rows = wf[c_idx]  # [P, N]
            step = steps[a_idx, s][:, None]
            q = round_half_away(rows / step).clamp_(-qmax, qmax)
            e = ((rows - q * step) ** 2).sum(dim=1)
            better = e < err[pair]
            err[pair] = torch.where(better, e, err[pair])
            shift[pair] = torch.where(better, s, shift[pair])
            nxt = s + 1
            more = nxt <= cap
            step_next = steps[a_idx, nxt.clamp(max=cap)][:, None]
            bound = (torch.relu(rows.abs() - qmax * step_next) ** 2).sum(dim=1)
            more &= bound < err[pair]
            cur[pair] = nxt
            keep.append(pair[more])
        pending = torch.cat(keep)
    totals = err.view(n_alpha, channels).sum(dim=1)
    idx = int((totals <= totals.min()).nonzero().max())  # the largest alpha among the minima
    return float(scales[idx]), shift.view(n_alpha, channels)[idx].clone()
