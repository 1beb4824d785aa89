"""Adaptive rounding on a fixed quantization grid (after Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020).

Rounding every weight to its nearest grid point minimizes the weight error, not the layer's output error:
the errors of the weights feeding the same output add up, and with correlated inputs a few weights
rounded the "wrong" way can cancel the others' errors. Adaptive rounding keeps the grid of a quantized
weight (any method: per-layer, per-channel, WESS, ...; the channel scales, layer scale and shifts are
untouched) and chooses for every weight whether to round down or up, minimizing the layer's output error
on calibration data, the quadratic :class:`~npuq.quant.data_aware.LayerObjective` (``E|(W_hat - W) x|^2``
per output channel, or its quantized-input form).

The choice is relaxed to a continuous variable: ``w_soft = scale * clamp(floor(w / scale) + h(V), -qmax,
qmax)`` with the rectified sigmoid ``h(V) = clamp(sigmoid(V) * 1.2 - 0.1, 0, 1)`` (which reaches 0 and 1
exactly), ``V`` initialized so that ``w_soft = w``. Adam minimizes ``err(w_soft) / err(nearest) + lambda *
mean(1 - |2 h(V) - 1|^beta)``: no regularizer for the first ``warmup`` fraction of the iterations, then
``beta`` decays linearly from 20 to 2, so the regularizer first leaves the soft values free and then
drives each to 0 or 1. The result rounds down where ``V < 0`` and up otherwise; it is kept only if its
output error (float64) is below that of nearest rounding, so adaptive rounding never makes a layer worse
in its objective. The optimization uses the full second-moment matrices (a deterministic full-batch
gradient) in float32; the integers stay in ``[-qmax, qmax]`` on the input's grid, so the NPU runs the
result at the cost of its method.

Where a layer's calibration inputs come from (``npuq.quantize(..., layer_inputs=...)``): ``"quantized"``
(the default) quantizes the layers in execution order and feeds each the calibration data through the
already-quantized layers in front of it, minimizing ``E|W_hat x_hat - W x|^2`` against the float model's
output of that layer; so every layer also absorbs part of the error its inputs already carry (in
particular their mean shifts), which the float-input objective ``E|(W_hat - W) x|^2`` cannot see. It
measured better on the models we tried (see ``docs/quantization.md``), at the price of keeping the
calibration activations in memory twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from npuq.quant.data_aware import LayerObjective, LayerStats, layer_objective
from npuq.quant.weights import QuantizedWeight, _as_weight

__all__ = ["AdaRoundConfig", "adaround_weight"]

_ZETA, _GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    """Options of adaptive rounding (``npuq.quantize(..., adaround=AdaRoundConfig(...))``; ``True`` gives
    the defaults).

    ``iters``: Adam iterations per layer; ``lr``: its learning rate on ``V``; ``reg``: weight ``lambda``
    of the rounding regularizer; ``warmup``: fraction of the iterations without it; ``beta``: its
    exponent's (start, end).
    """

    iters: int = 500
    lr: float = 0.1
    reg: float = 30.0
    warmup: float = 0.2
    beta: tuple[float, float] = (20.0, 2.0)
    polish: int = 256

    def __post_init__(self):
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 0:
            raise ValueError(f"AdaRoundConfig.iters must be an int >= 0, got {self.iters!r}")
        for name in ("lr", "reg"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"AdaRoundConfig.{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.polish, bool) or not isinstance(self.polish, int) or self.polish < 0:
            raise ValueError(f"AdaRoundConfig.polish must be an int >= 0, got {self.polish!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"AdaRoundConfig.warmup must be in [0, 1), got {self.warmup!r}")
        if len(self.beta) != 2 or not all(b >= 1 for b in self.beta):
            raise ValueError(f"AdaRoundConfig.beta must be two numbers >= 1 (start, end), got {self.beta!r}")


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


def flip_polish(
    q: torch.Tensor,
    fl: torch.Tensor,
    free: torch.Tensor,
    scale: torch.Tensor,
    wf: torch.Tensor,
    obj: LayerObjective,
    max_sweeps: int,
) -> torch.Tensor:
    """Greedy descent over single roundings (float64): in each sweep every channel flips the one free weight
    (between ``floor`` and ``floor + 1``) whose flip lowers its error most, until no flip helps or
    ``max_sweeps``. Channels are independent, so they flip together; each flip updates the channel's
    gradient ``A dv - r`` exactly with one row of ``A``. Returns the improved integers ``[C, D]``."""
    q = q.clone()
    a = obj.a
    grp = obj.group
    r = obj.b - obj.apply_all(wf)
    g = obj.apply_all(q * scale - wf) - r  # d err / d dv / 2, per weight
    diag = torch.diagonal(a, dim1=1, dim2=2)[grp]  # [C, D]
    for _ in range(max_sweeps):
        sign = torch.where(q == fl, 1.0, -1.0)  # the other rounding of each weight
        delta = sign * scale
        gain = 2.0 * delta * g + delta * delta * diag  # exact change of the channel's error
        gain = torch.where(free, gain, torch.full_like(gain, math.inf))
        best, idx = gain.min(dim=1)
        # strict decrease, beyond float64 rounding of the channel's terms
        tol = 1e-12 * (g.abs() * scale).sum(dim=1) + 1e-300
        act = (best < -tol).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        i = idx[act]
        d = delta[act, i]
        q[act, i] += sign[act, i]
        g[act] += d[:, None] * a[grp[act], i, :]
    return q


def adaround_weight(
    w,
    qw: QuantizedWeight,
    objective: LayerObjective | LayerStats,
    config: AdaRoundConfig | None = None,
    *,
    centered: bool = False,
    name: str = "weight",
) -> QuantizedWeight:
    """Re-round the quantized weight ``qw`` of float weight ``w`` on its own grid to minimize ``objective``
    (a :class:`LayerObjective`, or :class:`LayerStats` from which one is built with ``centered``).

    Returns a :class:`QuantizedWeight` with the same ``channel_scale``, ``layer_scale``, ``shift``,
    ``bits`` and ``method`` and ``rounding="adaround"``, or ``qw`` itself (rounding unchanged) when no
    better rounding was found. Deterministic.
    """
    config = AdaRoundConfig() if config is None else config
    if not isinstance(config, AdaRoundConfig):
        raise TypeError(f"config must be an AdaRoundConfig, got {type(config).__name__}")
    w64 = _as_weight(w, name)
    if tuple(qw.q.shape) != tuple(w64.shape):
        raise ValueError(f"weight `{name}`: quantized shape {tuple(qw.q.shape)} differs from {tuple(w64.shape)}")
    obj = (
        objective
        if isinstance(objective, LayerObjective)
        else layer_objective(w64, objective, centered=centered, name=name)
    )
    c = w64.shape[0]
    wf = w64.reshape(c, -1)
    qmax = qw.qmax
    scale = qw.channel_scale.to(torch.float64)[:, None]
    q0 = qw.q.to(torch.float64).reshape(c, -1)
    fl = torch.floor(wf / scale)
    free = (fl >= -qmax) & (fl <= qmax - 1)
    if config.iters == 0 or not bool(free.any()):
        return qw
    e_near = float(obj.errors(q0 * scale).sum())
    if not (e_near > 0 and math.isfinite(e_near)):
        return qw

    # float32 optimization of dv = w_soft - w: err = dv^T A dv - 2 r . dv + const with r = b - A w. Gradients
    # by hand (no autograd: the per-iteration overhead matters for small layers), Adam written out.
    r = (obj.b - obj.apply_all(wf)).to(torch.float32)
    obj32 = LayerObjective(
        obj.a.to(torch.float32),
        obj.b,
        obj.k,
        obj.group,
        None if obj.factor is None else obj.factor.to(torch.float32),
        obj.ridge,
    )
    s32 = scale.to(torch.float32).expand_as(wf).contiguous()
    free32 = free.to(torch.float32)
    base = torch.where(free, fl, q0)
    c0 = (base * scale - wf).to(torch.float32)  # dv with h = 0
    gs = s32 * free32 * (2.0 / e_near)  # d rec / d h = gs * (dv A - r)
    rest = (wf / scale - fl).clamp(0.0, 1.0)
    p = ((rest - _GAMMA) / (_ZETA - _GAMMA)).clamp(1e-6, 1 - 1e-6)
    v = torch.log(p / (1 - p)).to(torch.float32)
    m1 = torch.zeros_like(v)
    m2 = torch.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    n_free = float(free.sum())
    warm = int(config.warmup * config.iters)
    b_start, b_end = config.beta
    span = _ZETA - _GAMMA
    for it in range(config.iters):
        sg = torch.sigmoid(v)
        h_raw = sg * span + _GAMMA
        h = h_raw.clamp(0.0, 1.0)
        dv = torch.addcmul(c0, h, s32)
        grad_h = obj32.apply_all(dv).sub_(r).mul_(gs)
        if it >= warm and config.reg > 0:
            t = (it - warm) / max(1, config.iters - warm)
            beta = b_end + (b_start - b_end) * (1.0 - t)
            u = 2.0 * h - 1.0
            # d/dh of reg * mean(1 - |u|^beta) = -reg / n * beta * |u|^(beta - 1) * sign(u) * 2
            grad_h.add_(u.abs().pow(beta - 1.0).mul_(u.sign()).mul_(free32), alpha=-2.0 * beta * config.reg / n_free)
        inside = ((h_raw > 0) & (h_raw < 1)).to(torch.float32)
        g = grad_h.mul_(sg * (1.0 - sg) * span * inside)
        m1.mul_(b1).add_(g, alpha=1 - b1)
        m2.mul_(b2).addcmul_(g, g, value=1 - b2)
        k = it + 1
        step = config.lr * math.sqrt(1 - b2**k) / (1 - b1**k)
        v.addcdiv_(m1, m2.sqrt().add_(eps * math.sqrt(1 - b2**k)), value=-step)
    up = (v >= 0).to(torch.float64)
    q = torch.where(free, torch.clamp(fl + up, -qmax, qmax), q0)
    if config.polish:
        q = flip_polish(q, fl, free, scale, wf, obj, config.polish)
    e_ada = float(obj.errors(q * scale).sum())
    if not e_ada < e_near:
        return qw
    return QuantizedWeight(
        q.reshape(w64.shape).to(torch.int8),
        qw.channel_scale,
        qw.layer_scale,
        qw.shift,
        qw.bits,
        qw.method,
        rounding="adaround",
    )
