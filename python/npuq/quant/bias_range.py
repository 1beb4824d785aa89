"""Keeping every int32 bias in range: the bias policy of :func:`npuq.quantize`.

A bias is stored in the accumulator scale ``s_in * s_w[c]`` of its output channel (``docs/arithmetic.md``
sections 1 and 4). After batch-norm folding a dead channel (a tiny ``gamma`` or a collapsed variance)
keeps its bias (``beta``, the channel's constant output) while its weights shrink by factors of 1e8 and
more. Per-channel quantization then gives it a weight scale near 1e-12, and WESS its largest shift, so
``bias / (s_in * s_w[c])`` leaves int32; the per-channel multiplier ``s_in * s_w[c] / s_out`` may even
flush to zero (the channel then outputs its zero point and loses the bias).

The policy, applied once the activation scales are known (after calibration), per output channel:

1. The channel fits when its accumulator cannot overflow for any input:
   ``|b_q| + max|x - z_x| * sum |w_q| <= 2^31 - 1`` with ``max|x - z_x| = max(127 - z_x, z_x + 128)``
   (the bound the kernels check, section 5), and, with a multiplier per channel, when that multiplier is
   at least ``2^-31`` (it does not flush).
2. A channel that does not fit gets a coarser weight scale, just coarse enough, and its weights are
   quantized again with it: with one scale per channel (``per_channel``) the scale is raised; with a
   layer scale and a WESS shift the shift ``s_c`` is lowered one step at a time. The bias itself stays
   exact (within half an accumulator step); the coarser scale only costs weight precision in a channel
   whose weights are, in practice, negligible against its bias.
3. With nothing left to coarsen (per-layer quantization, shift 0), the bias is saturated to the largest
   value the bound allows, with a warning, unless the overflow policy is ``"raise"``: then the
   quantizer raises :class:`OverflowError` naming the layer and the channel.

Every changed channel is recorded as a :class:`BiasAdjustment`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from npuq.quant.graph import Graph
from npuq.quant.weights import QuantizedWeight, round_half_away

INT32_MAX = 2**31 - 1
# smallest per-channel multiplier kept: quantize_multiplier flushes below 2^-32, this leaves a factor of 2
MIN_MULTIPLIER = 2.0**-31
# the largest real multiplier a coarsened channel may need (quantize_multiplier refuses 2^30 and above)
_MAX_MULTIPLIER = 2.0**29
_SCALE_STEPS = 64


class BiasRangeWarning(UserWarning):
    """Weight scales of some channels were coarsened, or biases saturated, to keep the int32 biases exact."""


@dataclass
class BiasAdjustment:
    """One output channel changed by the bias policy."""

    layer: str  # layer path
    channel: int
    action: str  # "coarsened" (weight scale / shift changed) or "saturated" (bias clamped)
    reason: str  # "bias overflow" (bias + accumulator headroom outside int32) or "multiplier flush"
    old_scale: float  # effective weight scale of the channel (shift included)
    new_scale: float
    old_shift: int
    new_shift: int
    bias: float  # the real bias
    bias_q_needed: float  # bias / (s_in * old_scale), the integer the old scale needed
    bias_q: int  # the stored int32 bias
    limit: int  # 2^31 - 1 - max|x - z_x| * sum |w_q|: the largest |bias| the channel may store


@dataclass
class BiasFit:
    weights: dict[str, QuantizedWeight]
    biases: dict[str, torch.Tensor]
    adjustments: list[BiasAdjustment]

    @property
    def changed_layers(self) -> list[str]:
        return sorted({a.layer for a in self.adjustments})


def max_input_deviation(zero_point: int) -> int:
    """``max |x - z_x|`` over int8 ``x``."""
    return max(127 - int(zero_point), int(zero_point) + 128)


def _quantize_row(w: torch.Tensor, scale: float, qmax: int) -> torch.Tensor:
    return round_half_away(w / scale).clamp_(-qmax, qmax)


def _bias_q(bias: float, acc_scale: float) -> float:
    return float(round_half_away(torch.tensor(bias / acc_scale, dtype=torch.float64)))


def _limit(q_row: torch.Tensor, dev: int) -> int:
    return INT32_MAX - dev * int(q_row.abs().sum())


def _fits(bias: float, acc_scale: float, q_row: torch.Tensor, dev: int) -> bool:
    return abs(_bias_q(bias, acc_scale)) <= _limit(q_row, dev)


def fit_biases(
    graph: Graph,
    weights: dict[str, QuantizedWeight],
    biases: dict[str, torch.Tensor],
    qparams: dict,
    *,
    overflow: str = "raise",
) -> BiasFit:
    """Apply the bias policy (module doc) to every conv / linear layer of ``graph``.

    ``weights`` / ``biases``: per layer name, as :class:`~npuq.quant.simulate.QuantizedModel` takes them;
    ``qparams``: the calibrated activation scales. Returns new dicts (the inputs are not modified) and
    the list of changed channels. Only the weight tensors of changed channels are quantized again (from
    the layer's float weight); a saturated bias is stored as the float32 value that quantizes to it.
    """
    new_weights = dict(weights)
    new_biases = dict(biases)
    adjustments: list[BiasAdjustment] = []
    for node in graph.layers():
        qw = weights[node.name]
        qin, qout = qparams[node.inputs[0]], qparams[node.name]
        s_in, s_out = float(qin.scale), float(qout.scale)
        dev = max_input_deviation(qin.zero_point)
        bias = biases[node.name].double()
        scale = qw.channel_scale.double()
        channels = scale.shape[0]
        q = qw.q.to(torch.int64).reshape(channels, -1)
        acc = s_in * scale
        bias_q = round_half_away(bias / acc)
        over = bias_q.abs() + dev * q.abs().sum(dim=1) > INT32_MAX
        flush = torch.zeros_like(over)
        if qw.layer_scale is None:
            flush = s_in * scale / s_out < MIN_MULTIPLIER
        bad = (over | flush).nonzero().flatten().tolist()
        if not bad:
            continue
        w = node.weight.detach().double().reshape(channels, -1)
        q_new, scale_new, shift_new = q.clone(), scale.clone(), qw.shift.to(torch.int64).clone()
        bias_new = biases[node.name].clone()
        for c in bad:
            b = float(bias[c])
            reason = "bias overflow" if bool(over[c]) else "multiplier flush"
            old_scale, old_shift = float(scale[c]), int(shift_new[c])
            needed = float(bias_q[c])
            if qw.layer_scale is None:
                found = _coarsen_channel_scale(w[c], b, old_scale, s_in, s_out, dev, qw.qmax, bool(flush[c]))
            else:
                found = _lower_shift(w[c], b, qw.layer_scale, old_shift, s_in, dev, qw.qmax)
            if found is not None:
                new_scale, new_shift, row = found
                q_new[c], scale_new[c], shift_new[c] = row, new_scale, new_shift
                adjustments.append(
                    BiasAdjustment(
                        layer=node.path,
                        channel=c,
                        action="coarsened",
                        reason=reason,
                        old_scale=old_scale,
                        new_scale=new_scale,
                        old_shift=old_shift,
                        new_shift=new_shift,
                        bias=b,
                        bias_q_needed=needed,
                        bias_q=int(_bias_q(b, s_in * new_scale)),
                        limit=_limit(row, dev),
                    )
                )
                continue
            # nothing left to coarsen: the coarsest scale this channel can have, then saturate the bias
            if qw.layer_scale is not None and old_shift > 0:
                new_shift = 0
                new_scale = float(qw.layer_scale)
                row = _quantize_row(w[c], new_scale, qw.qmax)
            else:
                new_shift, new_scale, row = old_shift, old_scale, q[c].double()
            limit = max(_limit(row, dev), 0)
            if _fits(b, s_in * new_scale, row, dev):  # only the multiplier could not be fixed; keep the bias
                continue
            if overflow == "raise":
                raise OverflowError(
                    f"layer '{node.path}': quantized bias of channel {c} is {needed:.0f} (real {b!r} / accumulator "
                    f"scale {s_in * old_scale!r}) and does not fit int32 with the accumulator headroom "
                    f"({limit}) even at the coarsest weight scale of the channel ({new_scale!r}); pass "
                    f"overflow='saturate' to saturate such biases instead"
                )
            acc_c = s_in * new_scale
            stored = _float32_toward_zero(math.copysign(limit, b) * acc_c, acc_c, limit)
            q_new[c], scale_new[c], shift_new[c] = row, new_scale, new_shift
            bias_new[c] = stored
            adjustments.append(
                BiasAdjustment(
                    layer=node.path,
                    channel=c,
                    action="saturated",
                    reason=reason,
                    old_scale=old_scale,
                    new_scale=new_scale,
                    old_shift=old_shift,
                    new_shift=new_shift,
                    bias=b,
                    bias_q_needed=needed,
                    bias_q=int(_bias_q(float(stored), acc_c)),
                    limit=limit,
                )
            )
        new_weights[node.name] = dataclasses.replace(
            qw, q=q_new.reshape(qw.q.shape).to(qw.q.dtype), channel_scale=scale_new, shift=shift_new.to(qw.shift.dtype)
        )
        new_biases[node.name] = bias_new
    return BiasFit(new_weights, new_biases, adjustments)


def _coarsen_channel_scale(
    w: torch.Tensor, bias: float, scale: float, s_in: float, s_out: float, dev: int, qmax: int, flushed: bool
):
    """The smallest channel scale >= ``scale`` at which the channel fits; (scale, 0, q) or None."""
    n = w.numel()
    room = INT32_MAX - dev * (n / 2.0) - 1.0  # rounding adds at most 1/2 per weight and 1/2 to the bias
    if room <= 0:
        return None
    # |b_q| + dev * sum|w_q| <= (|b| / s_in + dev * sum|w|) / s + dev * n / 2 + 1/2
    target = max(scale, (abs(bias) / s_in + dev * float(w.abs().sum())) / room)
    if flushed:
        target = max(target, MIN_MULTIPLIER * s_out / s_in)
    for _ in range(_SCALE_STEPS):
        if s_in * target / s_out >= _MAX_MULTIPLIER:
            return None
        row = _quantize_row(w, target, qmax)
        if _fits(bias, s_in * target, row, dev):
            return target, 0, row
        target *= 1.0 + 2.0**-10
    return None


def _lower_shift(w: torch.Tensor, bias: float, layer_scale: float, shift: int, s_in: float, dev: int, qmax: int):
    """The largest WESS shift below ``shift`` at which the channel fits; (scale, shift, q) or None."""
    for s in range(shift - 1, -1, -1):
        scale = layer_scale / 2.0**s
        row = _quantize_row(w, scale, qmax)
        if _fits(bias, s_in * scale, row, dev):
            return scale, s, row
    return None


def _float32_toward_zero(value: float, acc_scale: float, limit: int) -> float:
    """A float32 bias near ``value`` whose quantized magnitude does not exceed ``limit``."""
    t = torch.tensor(value, dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float32)
    while abs(_bias_q(float(t), acc_scale)) > limit:
        t = torch.nextafter(t, zero)
    return float(t)


__all__ = [
    "BiasAdjustment",
    "BiasFit",
    "BiasRangeWarning",
    "INT32_MAX",
    "MIN_MULTIPLIER",
    "fit_biases",
    "max_input_deviation",
]
