"""Data-aware weight quantization: statistics of each layer's inputs on calibration data, the layer-output
error they define, and the WESS search that minimizes it (``"wess_output"``).

**Output error.** For output channel ``c`` of a conv / linear layer with weights ``w_c`` (a vector of
``D = C_in / groups * KH * KW`` values, or ``K`` for a linear layer) and an input patch ``x`` (the
``D`` input values the channel multiplies, im2col order ``(c_in, kh, kw)`` of its group), quantization
changes the pre-activation output by ``(w_hat_c - w_c) . x``. Its mean square over the calibration patches
is the quadratic form ``dw_c^T H dw_c`` with ``H = E[x x^T]``, the second-moment matrix of the patches
(one ``D x D`` matrix per group: a depthwise layer has one 9 x 9 matrix per channel). Unlike the weight
error ``|dw_c|^2`` it weighs each weight by how strongly (and how correlated) its inputs actually drive
the output: weights on inputs that are nearly zero or nearly constant cost little.

*Centered* (``centered=True``, used with bias correction): ``H`` is replaced by the covariance
``E[x x^T] - E[x] E[x]^T``. Bias correction removes the mean output error ``dw_c . E[x]`` afterwards, so
only the remainder should be minimized.

*Quantized inputs* (``LayerStats`` with ``hqq``): when the layers in front are already quantized, the
layer sees ``x_hat`` instead of ``x``, and the error to minimize is ``E[(w_hat_c . x_hat - w_c . x)^2]
= w_hat^T E[x_hat x_hat^T] w_hat - 2 w_hat^T E[x_hat x^T] w + w^T E[x x^T] w``: the layer then also
compensates part of the upstream error.

*Damping*: ``damping * mean(diag H) * |w_hat_c - w_c|^2`` is added to every channel's error. It keeps
directions the calibration set does not excite (a rank-deficient ``H``, e.g. a linear layer with fewer
calibration images than inputs) from being ignored.

**``"wess_output"``.** The WESS grid: one layer scale ``L`` and a shift ``s_c`` in ``[0, 2^shift_bits - 1]``
per channel, channel step ``L / 2^s_c``. Candidate layer scales are ``L = R / qmax * 2^-u`` with
``u = j + k / steps_per_octave`` (``R = max |w|``): ``steps_per_octave`` fractional positions per octave,
the octave offset ``j`` from 0 up to the number of octaves by which the channel ranges overflow the
shift field (so the scale may also slide down, clipping the widest channels when they matter little,
to give resolution to channels the shifts alone cannot reach), and ``u`` slightly negative (``L`` up to
``alpha_max * R / qmax``, the widest channel then clipping a little). For every candidate ``L`` each
channel takes its best shift independently; the candidate with the least total output error wins.

The channel step depends only on ``(k, t = j + s_c)``, so each channel's error is computed once per
``(k, t)``. For each channel only the steps near its own no-clip step ``t0`` are evaluated
(``t0 - 1 .. t0 + 3``: one octave coarser, up to three octaves of clipping), plus the steps a candidate
``L`` forces on it when its window of shifts does not reach ``t0`` (the finest shift for a channel too
narrow for the window, the coarsest for a channel too wide), so every candidate ``L`` is evaluated
exactly with each channel's best shift among the evaluated ones. The result is then compared, in the same
objective, with the plain WESS and the WESS-MSE solutions and the best of the three is returned:
``"wess_output"`` is never worse than either in the output error it minimizes. Everything is float64 and
deterministic.

**Statistics.** :func:`layer_stats` accumulates the moments of one layer from input batches;
:func:`npuq.quant.layerwise.quantize_graph_data_aware` runs a prepared graph over calibration batches and
quantizes its layers one after the other (optionally with adaptive rounding, :mod:`npuq.quant.adaround`),
each layer's inputs coming from the already-quantized layers in front of it or from the float model. A conv
layer's patches are subsampled (a fixed number of output positions per batch, chosen with a seeded generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npuq.quant.weights import (
    DATA_AWARE_METHODS,
    QuantizedWeight,
    _as_weight,
    _check_bits,
    _check_scale,
    _check_shift_bits,
    quantize_weight,
    round_half_away,
)
from npuq.registry import WEIGHT_QUANTIZERS

__all__ = [
    "DATA_AWARE_METHODS",
    "LayerObjective",
    "LayerStats",
    "StatsAccumulator",
    "layer_objective",
    "layer_stats",
    "wess_output",
]

DEFAULT_DAMPING = 1e-3

# wess_output search defaults
_STEPS_PER_OCTAVE = 32
_ALPHA_MAX = 1.25
_BELOW, _ABOVE = 1, 3  # steps evaluated around each channel's no-clip step
_MAX_OCTAVES = 16  # the layer scale slides down by at most this many octaves
_EXHAUSTIVE_COST = float(1 << 24)  # channels * D^2 up to which every fraction of the octave is evaluated
_BLOCK = 1 << 21  # float64 elements per evaluation block (bounds memory to tens of MB)


# -------------------------------------------------------------------------------------------- stats


@dataclass
class LayerStats:
    """Moments of one layer's input patches (per group), float64.

    ``hff = E[x x^T]`` ``[G, D, D]`` and ``mean_f = E[x]`` ``[G, D]`` of the float model's inputs. With
    quantized upstream layers also ``hqq = E[x_hat x_hat^T]``, ``hqf = E[x_hat x^T]`` and ``mean_q``
    (None otherwise). ``count`` is the number of patches averaged. Output channel ``c`` uses group
    ``c // (C_out / G)``. ``samples`` (``[count, D]``, one group only) keeps the patches themselves (the
    quantized-input ones when there are both) when they are fewer than half of ``D``: products with the
    second-moment matrix are then cheaper through them (e.g. a classifier calibrated on few images).
    """

    hff: torch.Tensor
    mean_f: torch.Tensor
    count: int
    hqq: torch.Tensor | None = None
    hqf: torch.Tensor | None = None
    mean_q: torch.Tensor | None = None
    samples: torch.Tensor | None = None

    @property
    def groups(self) -> int:
        return int(self.hff.shape[0])

    @property
    def dim(self) -> int:
        return int(self.hff.shape[1])

    @property
    def quantized_inputs(self) -> bool:
        return self.hqq is not None


class StatsAccumulator:
    """Sums of patch outer products of one layer over batches (see :func:`layer_stats`)."""

    def __init__(
        self,
        kind: str,
        attrs: dict | None,
        weight_shape: tuple[int, ...],
        *,
        positions: int | None = None,
        seed: int = 0,
        paired: bool = False,
    ):
        if kind not in ("conv", "linear"):
            raise ValueError(f"layer statistics exist for conv and linear layers, not {kind!r}")
        self.kind = kind
        self.attrs = dict(attrs or {})
        self.groups = int(self.attrs.get("groups", 1)) if kind == "conv" else 1
        self.dim = int(math.prod(weight_shape[1:]))
        self.positions = positions
        self.seed = int(seed)
        self.paired = paired
        g, d = self.groups, self.dim
        self.sff = torch.zeros(g, d, d, dtype=torch.float64)
        self.sf = torch.zeros(g, d, dtype=torch.float64)
        if paired:
            self.sqq = torch.zeros(g, d, d, dtype=torch.float64)
            self.sqf = torch.zeros(g, d, d, dtype=torch.float64)
            self.sq = torch.zeros(g, d, dtype=torch.float64)
        self.count = 0
        self.batches = 0
        self.kept: list[torch.Tensor] | None = [] if self.groups == 1 else None

    def _patches(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """``[P, G, D]`` float64 patches of ``x`` at the flat output positions ``idx`` (None: all)."""
        if self.kind == "linear":
            rows = x.reshape(-1, x.shape[-1])
            if idx is not None:
                rows = rows[idx]
            return rows.to(torch.float64).reshape(rows.shape[0], 1, -1)
        a = self.attrs
        (sh, sw), (dh, dw) = a["stride"], a["dilation"]
        top, bottom, left, right = self._pads
        kh, kw = self._kernel
        n, c, h, w = x.shape
        oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        if idx is None:
            idx = torch.arange(n * oh * ow)
        xp = F.pad(x, (left, right, top, bottom)) if any(self._pads) else x
        img = idx // (oh * ow)
        rem = idx % (oh * ow)
        oy, ox = rem // ow, rem % ow
        cols = [xp[img, :, oy * sh + i * dh, ox * sw + j * dw] for i in range(kh) for j in range(kw)]
        p = torch.stack(cols, dim=2).to(torch.float64)  # [P, C_in, KH*KW]
        return p.reshape(p.shape[0], self.groups, self.dim)

    def _count_positions(self, x: torch.Tensor) -> int:
        if self.kind == "linear":
            return int(x.numel() // x.shape[-1])
        a = self.attrs
        (sh, sw), (dh, dw) = a["stride"], a["dilation"]
        top, bottom, left, right = self._pads
        kh, kw = self._kernel
        oh = (x.shape[2] + top + bottom - dh * (kh - 1) - 1) // sh + 1
        ow = (x.shape[3] + left + right - dw * (kw - 1) - 1) // sw + 1
        return int(x.shape[0] * oh * ow)

    @property
    def _kernel(self) -> tuple[int, int]:
        return self.attrs["kernel"]

    @property
    def _pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right): conv nodes hold (h, w) when symmetric, else the four sides."""
        p = tuple(int(v) for v in self.attrs["padding"])
        return p if len(p) == 4 else (p[0], p[0], p[1], p[1])

    def update(self, x: torch.Tensor, x_hat: torch.Tensor | None = None) -> None:
        """Add one batch of layer inputs (``x_hat``: the same batch through the quantized upstream)."""
        if self.paired != (x_hat is not None):
            raise ValueError("a paired accumulator needs x_hat with every batch (and an unpaired one none)")
        total = self._count_positions(x)
        idx = None
        if self.positions is not None and total > self.positions:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches)
            idx = torch.randperm(total, generator=gen)[: self.positions].sort().values
        self.batches += 1
        pf = self._patches(x, idx)  # [P, G, D]
        pt = pf.permute(1, 2, 0)  # [G, D, P]
        self.sff += torch.bmm(pt, pt.transpose(1, 2))
        self.sf += pf.sum(dim=0)
        if x_hat is not None:
            pq = self._patches(x_hat, idx)
            qt = pq.permute(1, 2, 0)
            self.sqq += torch.bmm(qt, qt.transpose(1, 2))
            self.sqf += torch.bmm(qt, pt.transpose(1, 2))
            self.sq += pq.sum(dim=0)
        self.count += pf.shape[0]
        if self.kept is not None:
            self.kept.append((pq if x_hat is not None else pf)[:, 0, :])
            if 2 * self.count >= self.dim:
                self.kept = None

    def result(self) -> LayerStats:
        if self.count == 0:
            raise ValueError("no calibration inputs were accumulated")
        n = float(self.count)
        samples = torch.cat(self.kept) if self.kept else None
        if self.paired:
            return LayerStats(self.sff / n, self.sf / n, self.count, self.sqq / n, self.sqf / n, self.sq / n, samples)
        return LayerStats(self.sff / n, self.sf / n, self.count, samples=samples)


def _accumulator_for(node, *, positions, seed, paired) -> StatsAccumulator:
    attrs = None
    if node.kind == "conv":
        attrs = dict(node.attrs, kernel=(int(node.weight.shape[2]), int(node.weight.shape[3])))
    return StatsAccumulator(node.kind, attrs, tuple(node.weight.shape), positions=positions, seed=seed, paired=paired)


def default_positions(dim: int, batches: int) -> int:
    """Output positions sampled per batch for a layer whose patches have ``dim`` values: about
    ``max(4096, 8 * dim)`` patches over all batches."""
    return max(1, math.ceil(max(4096, 8 * dim) / max(1, batches)))


def layer_stats(
    x_batches,
    *,
    kind: str = "linear",
    weight_shape: tuple[int, ...],
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    groups: int = 1,
    x_hat_batches=None,
    positions: int | None = None,
    seed: int = 0,
) -> LayerStats:
    """:class:`LayerStats` of a conv (``kind="conv"``, NCHW inputs) or linear layer from input batches.

    ``weight_shape`` is the layer's weight shape (torch layout); ``padding`` is ``(h, w)`` or ``(top, bottom,
    left, right)``; ``x_hat_batches`` (optional) the same
    batches as the layer sees them behind quantized layers. ``positions``: output positions sampled per
    batch (None: all).
    """
    attrs = None
    if kind == "conv":
        pair = lambda v: (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))  # noqa: E731
        pads = (
            tuple(int(v) for v in padding)
            if isinstance(padding, (tuple, list)) and len(padding) == 4
            else pair(padding)
        )
        attrs = dict(
            stride=pair(stride),
            padding=pads,
            dilation=pair(dilation),
            groups=int(groups),
            kernel=(int(weight_shape[2]), int(weight_shape[3])),
        )
    x_batches = list(x_batches)
    acc = StatsAccumulator(
        kind, attrs, tuple(weight_shape), positions=positions, seed=seed, paired=x_hat_batches is not None
    )
    hats = list(x_hat_batches) if x_hat_batches is not None else [None] * len(x_batches)
    if len(hats) != len(x_batches):
        raise ValueError("x_hat_batches must have as many batches as x_batches")
    for x, xh in zip(x_batches, hats):
        acc.update(x.detach(), None if xh is None else xh.detach())
    return acc.result()


# ---------------------------------------------------------------------------------------- objective


@dataclass
class LayerObjective:
    """Output error of each channel as a quadratic in its quantized weights (float64):
    ``err_c(v) = v^T A_g v - 2 b_c . v + k_c`` for the flattened channel ``v``; ``group[c]`` is ``g``."""

    a: torch.Tensor  # [G, D, D]
    b: torch.Tensor  # [C, D]
    k: torch.Tensor  # [C]
    group: torch.Tensor  # [C] int64
    # optional low-rank form of a single group: A = factor^T factor + ridge * I (factor [P, D], 2 P < D)
    factor: torch.Tensor | None = None
    ridge: float = 0.0

    @property
    def groups(self) -> int:
        return int(self.a.shape[0])

    def apply_a(self, v: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """``A_{group[c]} v`` for rows ``v`` ``[P, D]`` of the given channels ``[P]``."""
        if self.factor is not None:
            f = self.factor.to(v.dtype)
            return (v @ f.T) @ f + self.ridge * v
        a = self.a.to(v.dtype)
        if self.groups == 1:
            return v @ a[0]
        d = a.shape[1]
        grp = self.group[channels]
        out = torch.empty_like(v)
        if d * d <= 1024:
            chunk = max(1, (1 << 20) // (d * d))
            for i in range(0, v.shape[0], chunk):
                sl = slice(i, i + chunk)
                out[sl] = torch.bmm(v[sl].unsqueeze(1), a[grp[sl]]).squeeze(1)
            return out
        for g in torch.unique(grp).tolist():
            sel = (grp == g).nonzero().squeeze(1)
            out[sel] = v[sel] @ a[g]
        return out

    def apply_all(self, v: torch.Tensor) -> torch.Tensor:
        """``A_{group[c]} v_c`` for all channels in order (``v`` ``[C, D]``, any float dtype)."""
        if self.factor is not None:
            f = self.factor.to(v.dtype)
            return (v @ f.T) @ f + self.ridge * v
        a = self.a.to(v.dtype)
        g, d = a.shape[0], a.shape[1]
        return torch.bmm(v.reshape(g, -1, d), a).reshape(v.shape)

    def rows_error(self, v: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        av = self.apply_a(v, channels)
        return av.sub_(self.b[channels], alpha=2.0).mul_(v).sum(dim=1).add_(self.k[channels])

    def errors(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Per-channel error ``[C]`` of a quantized weight (float tensor of the weight's shape)."""
        v = w_hat.detach().to(torch.float64).reshape(w_hat.shape[0], -1)
        out = torch.empty(v.shape[0], dtype=torch.float64)
        block = max(1, _BLOCK // max(1, v.shape[1]))
        for i in range(0, v.shape[0], block):
            ch = torch.arange(i, min(i + block, v.shape[0]))
            out[ch] = self.rows_error(v[ch], ch)
        return out

    def total(self, w_hat: torch.Tensor) -> float:
        return float(self.errors(w_hat).sum())


def layer_objective(
    w, stats: LayerStats, *, centered: bool = False, damping: float = DEFAULT_DAMPING, name: str = "weight"
) -> LayerObjective:
    """The :class:`LayerObjective` of weight ``w`` (output channel on axis 0) under ``stats``."""
    w64 = _as_weight(w, name)
    if not isinstance(stats, LayerStats):
        raise TypeError(f"stats must be a LayerStats (npuq.quant.data_aware.layer_stats), got {type(stats).__name__}")
    c = w64.shape[0]
    wf = w64.reshape(c, -1)
    g, d = stats.groups, stats.dim
    if wf.shape[1] != d or c % g:
        raise ValueError(
            f"weight `{name}` of shape {tuple(w64.shape)} does not match its input statistics "
            f"({g} group(s) of {d} inputs per output channel)"
        )
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    group = torch.arange(c) // (c // g)
    hff = stats.hff
    if centered:
        hff = hff - stats.mean_f[:, :, None] * stats.mean_f[:, None, :]
    if stats.quantized_inputs:
        hqq, hqf = stats.hqq, stats.hqf
        if centered:
            hqq = hqq - stats.mean_q[:, :, None] * stats.mean_q[:, None, :]
            hqf = hqf - stats.mean_q[:, :, None] * stats.mean_f[:, None, :]
    else:
        hqq = hqf = hff
    a = hqq.clone()
    wg = wf[:, None, :]  # [C, 1, D]
    b = torch.bmm(wg, hqf[group].transpose(1, 2)).squeeze(1) if g > 1 else wf @ hqf[0].T
    k = (torch.bmm(wg, hff[group]).squeeze(1) * wf).sum(dim=1) if g > 1 else ((wf @ hff[0]) * wf).sum(dim=1)
    lam = torch.zeros(g, dtype=torch.float64)
    if damping > 0:
        lam = damping * torch.diagonal(hqq, dim1=1, dim2=2).mean(dim=1).clamp(min=0)  # [G]
        lam = torch.where(lam > 0, lam, torch.full_like(lam, damping))
        a = a + lam[:, None, None] * torch.eye(d, dtype=torch.float64)
        b = b + lam[group][:, None] * wf
        k = k + lam[group] * (wf * wf).sum(dim=1)
    factor = None
    if stats.samples is not None and g == 1 and 2 * stats.samples.shape[0] < d:
        x = stats.samples.to(torch.float64)
        if centered:
            x = x - (stats.mean_q if stats.quantized_inputs else stats.mean_f)[0]
        factor = x / math.sqrt(stats.count)
    return LayerObjective(a, b, k, group, factor, float(lam[0]) if g == 1 else 0.0)


# ---------------------------------------------------------------------------------------- the search


def _pow2(t: torch.Tensor) -> torch.Tensor:
    """``2^t`` (float64, exact) for an integer tensor ``t``."""
    return torch.pow(2.0, t.to(torch.float64))


def _quantized_rows(ratio: torch.Tensor, step: torch.Tensor, qmax: int) -> torch.Tensor:
    """``step * clamp(round_half_away(ratio), -qmax, qmax)`` (``ratio`` = weights / step), in place."""
    t = torch.trunc(ratio)
    return ratio.sub_(t).mul_(2.0).trunc_().add_(t).clamp_(-qmax, qmax).mul_(step)


def wess_output_search(
    w64: torch.Tensor,
    obj: LayerObjective,
    qmax: int,
    cap: int,
    *,
    steps_per_octave: int = _STEPS_PER_OCTAVE,
    alpha_max: float = _ALPHA_MAX,
    below: int = _BELOW,
    above: int = _ABOVE,
    exhaustive_cost: float = _EXHAUSTIVE_COST,
) -> tuple[float, torch.Tensor]:
    """The (layer scale, shifts) of the WESS grid with the least output error (see the module doc)."""
    c = w64.shape[0]
    wf = w64.reshape(c, -1)
    d = wf.shape[1]
    r = wf.abs().amax(dim=1)
    base = float(r.max()) / qmax
    nz = (r > 0).nonzero().squeeze(1)
    n = nz.numel()
    kf = steps_per_octave
    fracs = torch.arange(kf, dtype=torch.float64) / kf
    fbase = base * torch.pow(2.0, -fracs)  # [K]; fbase[0] == base
    # j_min per fraction: -1 where the scale 2 * fbase <= alpha_max * base (alpha slightly above 1)
    jmin = torch.where(2.0 * fbase <= alpha_max * base, -1, 0).to(torch.int64)
    jmin[0] = 0
    shift = torch.zeros(c, dtype=torch.int64)
    if n == 0:
        return base, shift
    # t0[k, c]: the finest step index t (step = fbase[k] * 2^-t) at which channel c does not clip
    rn = r[nz]
    est = torch.floor(torch.log2((qmax + 0.5) * fbase[:, None] / rn[None, :])).to(torch.int64)  # [K, N]
    t0 = est - 2
    for dt in range(-1, 3):
        cand = est + dt
        step = fbase[:, None] / _pow2(cand)
        ok = round_half_away(rn[None, :] / step) <= qmax
        t0 = torch.where(ok, torch.maximum(t0, cand), t0)
    jmax = int(max(0, min(_MAX_OCTAVES, int(t0.max()) + above - cap)))
    t_lo, t_hi = -1, jmax + cap
    n_t = t_hi - t_lo + 1
    err = torch.full((kf, n, n_t), math.inf, dtype=torch.float64)
    wn = wf[nz]
    block = max(1, _BLOCK // d)

    def evaluate(k: int, rows: torch.Tensor, ts: torch.Tensor) -> None:
        scaled = wn / fbase[k]  # w / step = scaled * 2^t exactly (a power-of-two scaling)
        for i in range(0, rows.numel(), block):
            rr, tt = rows[i : i + block], ts[i : i + block]
            p2 = _pow2(tt)[:, None]
            v = _quantized_rows(scaled[rr].mul_(p2), fbase[k] / p2, qmax)
            err[k, rr, tt - t_lo] = obj.rows_error(v, nz[rr])

    def evaluate_fraction(k: int) -> None:
        # required: one step coarser .. one finer than no-clip, and the steps a window of shifts forces on
        # channels it cannot reach (see the module doc); then up to `above` octaves of clipping, each
        # evaluated only for the channels whose error the previous octave lowered
        tk = t0[k]
        start = torch.minimum(tk - below, jmin[k] + cap).clamp(t_lo, t_hi)
        stop = torch.maximum(torch.minimum(tk + 1, tk + above), torch.full_like(tk, jmax)).clamp(t_lo, t_hi)
        counts = stop - start + 1
        rows = torch.repeat_interleave(torch.arange(n), counts)
        first = torch.cumsum(counts, 0) - counts
        evaluate(k, rows, start[rows] + (torch.arange(rows.numel()) - first[rows]))
        for extra in range(2, above + 1):
            t = tk + extra
            prev = err[k, torch.arange(n), (t - 1 - t_lo).clamp(0, n_t - 1)]
            before = err[k, torch.arange(n), (t - 2 - t_lo).clamp(0, n_t - 1)]
            sel = ((t <= t_hi) & (t - 1 >= t_lo) & (prev < before)).nonzero().squeeze(1)
            sel = sel[torch.isinf(err[k, sel, t[sel] - t_lo])]
            if sel.numel() == 0:
                break
            evaluate(k, sel, t[sel])

    def total(k: int, j: int) -> float:
        return float(err[k, :, j - t_lo : j + cap - t_lo + 1].amin(dim=1).sum())

    # candidate layer scales as u = j + k / K (scale = R / qmax * 2^-u), in order of preference on ties:
    # alpha = 1, then decreasing alpha, then alpha > 1
    def candidates(ks) -> list[tuple[int, int]]:
        out = [(k, j) for j in range(0, jmax + 1) for k in sorted(ks)]
        return out + [(k, -1) for k in sorted(ks, reverse=True) if int(jmin[k]) == -1]

    done: set[int] = set()
    coarse_step = 1 if float(n) * d * d <= exhaustive_cost else 4
    for k in range(0, kf, coarse_step):
        evaluate_fraction(k)
        done.add(k)
    if coarse_step > 1:  # refine around the best coarse scale
        k_best, j_best = min(candidates(done), key=lambda kj: total(*kj))
        u = j_best * kf + k_best
        for du in range(1 - coarse_step, coarse_step):
            k = (u + du) % kf
            if k not in done and (u + du) // kf >= int(jmin[k]) and (u + du) // kf <= jmax:
                evaluate_fraction(k)
                done.add(k)
    best, best_total = None, math.inf
    for k, j in candidates(done):
        t = total(k, j)
        if t < best_total:
            best, best_total = (k, j), t
    k, j = best
    window = err[k, :, j - t_lo : j + cap - t_lo + 1]
    shift[nz] = window.argmin(dim=1)  # ties: the smallest shift
    return float(fbase[k] / 2.0**j), shift


def wess_output(
    w,
    stats: LayerStats,
    bits: int = 8,
    *,
    shift_bits: int = 4,
    centered: bool = False,
    damping: float = DEFAULT_DAMPING,
    name: str = "weight",
    objective: LayerObjective | None = None,
    **search,
) -> QuantizedWeight:
    """``quantize_weight(w, "wess_output", stats=...)``: see the module doc."""
    bits = _check_bits(bits)
    shift_bits = _check_shift_bits(shift_bits)
    w64 = _as_weight(w, name)
    qmax = (1 << (bits - 1)) - 1
    cap = (1 << shift_bits) - 1
    obj = (
        objective
        if objective is not None
        else layer_objective(w64, stats, centered=centered, damping=damping, name=name)
    )
    plain = quantize_weight(w64, "wess", bits, shift_bits=shift_bits, name=name)  # validates, refuses all-zero
    mse = quantize_weight(w64, "wess_mse", bits, shift_bits=shift_bits, name=name)
    layer_scale, shift = wess_output_search(w64, obj, qmax, cap, **search)
    scale = layer_scale / _pow2(shift)
    _check_scale(float(scale.min()), name)
    q = round_half_away(w64 / scale.view((-1,) + (1,) * (w64.dim() - 1))).clamp_(-qmax, qmax).to(torch.int8)
    found = QuantizedWeight(q, scale, layer_scale, shift, bits, "wess_output")
    best = found
    best_err = obj.total(found.q.to(torch.float64) * scale.view((-1,) + (1,) * (w64.dim() - 1)))
    for other in (plain, mse):
        e = obj.total(other.q.to(torch.float64) * other.channel_scale.view((-1,) + (1,) * (w64.dim() - 1)))
        if e < best_err:
            best, best_err = other, e
    if best is not found:
        best = QuantizedWeight(best.q, best.channel_scale, best.layer_scale, best.shift, bits, "wess_output")
    return best


@WEIGHT_QUANTIZERS.register("wess_output", data_aware=True)
def _wess_output(
    w,
    bits: int,
    *,
    shift_bits: int,
    name: str,
    stats: LayerStats,
    centered: bool = False,
    objective: LayerObjective | None = None,
) -> QuantizedWeight:
    return wess_output(w, stats, bits, shift_bits=shift_bits, centered=centered, name=name, objective=objective)
