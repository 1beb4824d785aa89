"""``npuq demo``: the integer kernels against float on a small depthwise-separable block.

A stem conv, a depthwise 3x3 conv whose output channels have weight ranges spread over three orders of
magnitude (as after batch-norm folding in MobileNets), and a pointwise conv are quantized three ways:
per-layer weights, per-layer weights with the weight equalizing shift scaler (WESS, 4-bit shift per
channel), and per-channel weights. Each is run by npuq's integer kernels and compared with the float
computation; the report is written as JSON and as a plot.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

import npuq
from npuq import ops


def _float_conv(x, w, b, stride, pad, groups):
    """Plain float64 NHWC / OHWI convolution (the meaning the integer kernels approximate)."""
    n, h, wd, c = x.shape
    co, kh, kw, ci_g = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, oh, ow, co))
    co_g = co // groups
    for g in range(groups):
        xs = xp[..., g * ci_g : (g + 1) * ci_g]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :]
                out[..., g * co_g : (g + 1) * co_g] += patch @ w[g * co_g : (g + 1) * co_g, i, j, :].T
    return out + b


class _Act:
    """Asymmetric int8 activation quantization from a float range."""

    def __init__(self, lo, hi):
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        self.scale = (hi - lo) / 255.0
        self.zero_point = int(np.clip(round(-128 - lo / self.scale), -128, 127))

    def quantize(self, v):
        return np.clip(np.round(v / self.scale) + self.zero_point, -128, 127).astype(np.int8)

    def dequantize(self, q):
        return (q.astype(np.float64) - self.zero_point) * self.scale


def _quantize_weights(w, mode):
    """(int8 weights, per-channel real scale of the integer weights, channel shifts or None)."""
    r_c = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    r_c = np.where(r_c > 0, r_c, 1e-12)
    shifts = None
    if mode == "per_channel":
        scale = r_c / 127.0
    else:
        if mode == "wess":
            shifts = np.minimum(15, np.floor(np.log2(r_c.max() / r_c))).astype(np.uint8)
        layer_scale = r_c.max() / 127.0  # WESS: 2^s_c * R_c <= R_layer, so one scale still covers all
        scale = np.full(w.shape[0], layer_scale)
        if shifts is not None:
            scale = scale / (2.0**shifts)  # effective scale of channel c: the shift is undone on the NPU
    q = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
    return q, scale, shifts


def _int_layer(xq, x_act, w, b, out_act, stride, pad, groups, mode, relu):
    q, w_scale, shifts = _quantize_weights(w, mode)
    acc_scale = x_act.scale * w_scale
    bias = npuq.quantize_bias(b, acc_scale)
    # With WESS the stored weights are q_c = W_c * 2^s_c / s_layer; the NPU shifts channel c right by s_c more.
    real = (x_act.scale * (w_scale if shifts is None else w_scale * 2.0**shifts)) / out_act.scale
    m0, e = npuq.quantize_multipliers(real)
    act_min = out_act.zero_point if relu else -128
    layer = ops.Conv2d(
        q,
        bias,
        input_zero_point=x_act.zero_point,
        stride=stride,
        padding=pad,
        groups=groups,
        multiplier=m0,
        exponent=e,
        channel_shift=shifts,
        output_zero_point=out_act.zero_point,
        act_min=act_min,
        act_max=127,
    )
    return layer(xq), layer


def _sqnr_db(ref, approx):
    noise = np.mean((ref - approx) ** 2)
    return float("inf") if noise == 0 else 10 * math.log10(np.mean(ref**2) / noise)


def run_demo(out_dir="results/demo", seed=0, batch=8) -> int:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (batch, 28, 28, 8))
    c = 32
    w1 = rng.normal(0, 0.2, (c, 3, 3, 8))
    b1 = rng.normal(0, 0.1, c)
    # Depthwise channels spread over ~3 decades, as BN folding leaves MobileNet depthwise layers.
    spread = 10.0 ** rng.uniform(-3, 0, c)
    w2 = rng.normal(0, 1, (c, 3, 3, 1)) * spread[:, None, None, None]
    b2 = rng.normal(0, 0.01, c)
    w3 = rng.normal(0, 0.15, (64, 1, 1, c))
    b3 = rng.normal(0, 0.1, 64)

    f1 = np.maximum(_float_conv(x, w1, b1, 2, 1, 1), 0)
    f2 = np.maximum(_float_conv(f1, w2, b2, 1, 1, c), 0)
    f3 = _float_conv(f2, w3, b3, 1, 0, 1)
    acts = [_Act(x.min(), x.max()), _Act(0, f1.max()), _Act(0, f2.max()), _Act(f3.min(), f3.max())]

    report = {
        "npuq_version": npuq.__version__,
        "arithmetic_version": npuq.ARITHMETIC_VERSION,
        "cpu": npuq.cpu_features(),
        "threads": npuq.get_num_threads(),
        "batch": batch,
        "depthwise_channel_range_ratio": float(spread.max() / spread.min()),
        "modes": {},
    }
    for mode in ("per_layer", "wess", "per_channel"):
        q0 = acts[0].quantize(x)
        q1, _ = _int_layer(q0, acts[0], w1, b1, acts[1], 2, 1, 1, mode, True)
        q2, dw = _int_layer(q1, acts[1], w2, b2, acts[2], 1, 1, c, mode, True)
        q3, _ = _int_layer(q2, acts[2], w3, b3, acts[3], 1, 0, 1, mode, False)
        exact = bool(np.array_equal(dw(q1), dw.reference(q1)))  # also warms the fast path up
        t0 = time.perf_counter()
        for _ in range(10):
            dw(q1)
        fast_us = (time.perf_counter() - t0) / 10 * 1e6
        t0 = time.perf_counter()
        dw.reference(q1)
        ref_us = (time.perf_counter() - t0) * 1e6
        report["modes"][mode] = {
            "sqnr_db": {
                "stem": _sqnr_db(f1, acts[1].dequantize(q1)),
                "depthwise": _sqnr_db(f2, acts[2].dequantize(q2)),
                "pointwise": _sqnr_db(f3, acts[3].dequantize(q3)),
            },
            "top1_agreement_with_float": float(
                np.mean(acts[3].dequantize(q3).mean(axis=(1, 2)).argmax(1) == f3.mean(axis=(1, 2)).argmax(1))
            ),
            "depthwise_fast_equals_reference": exact,
            "depthwise_fast_us": fast_us,
            "depthwise_reference_us": ref_us,
        }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    print(
        f"npuq {npuq.__version__} demo: batch {batch}, kernels {report['cpu']['active']}, "
        f"{report['threads']} threads; depthwise channel range ratio {report['depthwise_channel_range_ratio']:.0f}"
    )
    print(
        f"{'weights':<12} {'stem dB':>8} {'dw dB':>8} {'pw dB':>8} {'top1=float':>11} {'bit-exact':>10} "
        f"{'dw fast us':>11} {'dw ref us':>10}"
    )
    for mode, r in report["modes"].items():
        s = r["sqnr_db"]
        print(
            f"{mode:<12} {s['stem']:8.1f} {s['depthwise']:8.1f} {s['pointwise']:8.1f} "
            f"{r['top1_agreement_with_float']:11.3f} {str(r['depthwise_fast_equals_reference']):>10} "
            f"{r['depthwise_fast_us']:11.0f} {r['depthwise_reference_us']:10.0f}"
        )
    written = [out / "demo.json"] + ([out / "demo.png"] if _plot(report, out / "demo.png") else [])
    print("wrote " + " and ".join(map(str, written)))
    return 0 if all(r["depthwise_fast_equals_reference"] for r in report["modes"].values()) else 1


def _plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    layers = ["stem", "depthwise", "pointwise"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.25
    for i, (mode, r) in enumerate(report["modes"].items()):
        ax.bar([k + i * width for k in range(3)], [r["sqnr_db"][l] for l in layers], width, label=mode)
    ax.set_xticks([k + width for k in range(3)], layers)
    ax.set_ylabel("output SQNR vs float (dB)")
    ax.set_title("npuq int8 kernels vs float: per-layer, WESS and per-channel weights")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
