#!/usr/bin/env python3
"""Speed of npuq's int8 convolution against torch (fbgemm int8 and float32) on MobileNetV2's layers.

For every distinct conv layer of MobileNetV2 (width 1.0, 224x224 input; see
benchmarks/mobilenetv2_layers.py) and every requested batch size this script, in one process:

1. builds the layer's data once (int8 NHWC input, int8 weights, int32 bias, per-tensor requantization);
2. checks that npuq's prepacked ``npuq.ops.Conv2d`` output is bit-identical to
   ``npuq.ops.reference.conv2d`` (the scalar reference), and times that reference call;
3. times, with the same thread count and the same (reused) input each:
   * ``npuq``      npuq.ops.Conv2d (weights packed once), numpy NHWC int8 in/out, fused requantization;
   * ``t8_cl``     torch.ao.nn.quantized.Conv2d, fbgemm engine, quint8 input in channels_last memory;
   * ``t8_nchw``   the same module on a contiguous NCHW quint8 input (fbgemm converts it internally);
   * ``fp32``      torch.nn.functional.conv2d, float32 channels_last input and weight.
   Every side allocates its output on every call. Timing: time.perf_counter around a loop of
   ``loops`` calls (``loops`` chosen so one sample lasts >= --min-time), after a warm-up; the reported
   time is the median over --repeats samples (min and all samples go to the JSON). The samples of the
   implementations are interleaved (round r takes one sample of each, in rotating order), so slow
   drifts and disturbances hit all of them alike. The garbage collector is off while sampling.
   The machine may be shared: each row reports the CPU share other processes used meanwhile (bg%)
   and is measured again (--busy-retries) when that is >= 5%; --nice -20 (root) raises this process's
   priority, including its session's autogroup, so that other work barely disturbs it.
4. prints a table per batch, then the geometric-mean speedups per layer kind and batch, the
   whole-network totals (each layer weighted by how often it occurs), and the throughput as a fraction
   of this CPU's int8 peak.

Peak int8 throughput (the assumption, override with --peak-gmacs):
    cores x GHz x MACs/cycle/core of the instruction set that ran (npuq.cpu_features()["active"]): the
    best int8 multiply-accumulate that instruction set offers, not the one a kernel happens to use
* avx512_vnni, 64: one ``vpdpbusd zmm`` (64 u8 x s8 multiply-accumulates: 16 int32 lanes x 4) per cycle
  per core. AMD Zen 4 executes a 512-bit op as two 256-bit halves and is assumed to sustain one such
  zmm ``vpdpbusd`` per cycle per core (two 256-bit VNNI pipes).
* avx_vnni, 64: two ``vpdpbusd ymm`` (32 each) per cycle per core.
* avx2, 64: two ``vpmaddubsw ymm`` (32 u8 x s8 products each) per cycle per core, the instruction torch's
  fbgemm builds on. It saturates in int16, so npuq's exact AVX2 kernels use ``vpmaddwd`` on int16 pairs
  (16 multiply-accumulates each) and can reach at most half of this peak.
* portable, 16: the compiler's baseline SIMD (SSE2 ``pmaddwd xmm``, 8 multiply-accumulates), two per cycle.

``cores`` is the number of physical cores the benchmark uses (min(threads, physical cores)); GHz is read
from /proc/cpuinfo "cpu MHz" (falling back to lscpu). In a VM that is the nominal clock; with boost the real
peak is higher, so "% of peak" is an upper estimate.

Speedups are torch_time / npuq_time: > 1 means npuq is faster.

Examples:
    python3 benchmarks/bench_conv.py --quick
    python3 benchmarks/bench_conv.py --batch 1 8 --json bench.json --plot bench.png
    python3 benchmarks/bench_conv.py --nice -20          # on a shared machine (root)
    python3 benchmarks/bench_conv.py --layers dw --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import conv_cases as cc
import numpy as np
import torch
from machine import LoadMeter, cpu_model, wait_idle
from machine import read_text as _read
from mobilenetv2_layers import ConvLayer, unique_layers

try:  # optional
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

# Columns timed, in order; the JSON uses these names.
IMPLS = ("npuq", "t8_cl", "t8_nchw", "fp32")
IMPL_BUILD = {"npuq": "npuq", "t8_cl": "torch_fbgemm_int8", "t8_nchw": "torch_fbgemm_int8_nchw", "fp32": "torch_fp32"}
IMPL_DESC = {
    "npuq": "npuq.ops.Conv2d (prepacked), numpy NHWC int8, fused requantization",
    "t8_cl": "torch.ao.nn.quantized.Conv2d, fbgemm, quint8 channels_last input",
    "t8_nchw": "torch.ao.nn.quantized.Conv2d, fbgemm, quint8 contiguous NCHW input",
    "fp32": "torch.nn.functional.conv2d, float32 channels_last",
}
# --quick: one layer of each interesting sort.
QUICK_IDS = (
    "stem3-32_224x224_s2",
    "dw32-32_112x112_s1",
    "dw96-96_112x112_s2",
    "pw16-96_112x112_s1",
    "pw96-24_56x56_s1",
    "dw576-576_14x14_s1",
    "pw320-1280_7x7_s1",
)
# int8 multiply-accumulates per cycle per core of each kernel family (see the module docstring)
MACS_PER_CYCLE = {"avx512_vnni": 64, "avx_vnni": 64, "avx2": 64, "portable": 16}
# The instruction each peak counts (printed next to it).
PEAK_INSTRUCTION = {
    "avx512_vnni": "1 vpdpbusd zmm per cycle per core",
    "avx_vnni": "2 vpdpbusd ymm per cycle per core",
    "avx2": "2 vpmaddubsw ymm per cycle per core; the exact kernels' vpmaddwd does half",
    "portable": "2 pmaddwd xmm per cycle per core",
}
BUSY = 0.05  # background CPU share above which a row counts as disturbed


# ------------------------------------------------------------------------------------------ machine
def kernel_family(npuq) -> str:
    """The kernel family whose peak "% of peak" is measured against: the one npuq runs, or, without npuq,
    the best this CPU has (torch's fbgemm picks its kernels the same way)."""
    if npuq is not None:
        return npuq.cpu_features()["active"]
    flags = cpu_flags()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx_vnni" if "avx_vnni" in flags else "avx2" if "avx2" in flags else "portable"


def physical_cores() -> int:
    info = _read("/proc/cpuinfo")
    pairs = set()
    phys = core = None
    for line in info.splitlines() + [""]:
        if line.startswith("physical id"):
            phys = line.split(":")[1].strip()
        elif line.startswith("core id"):
            core = line.split(":")[1].strip()
        elif not line.strip():
            if core is not None:
                pairs.add((phys, core))
            phys = core = None
    return len(pairs) or (os.cpu_count() or 1)


def cpu_ghz() -> Tuple[Optional[float], str]:
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", _read("/proc/cpuinfo"), re.M)]
    if mhz:
        return max(mhz) / 1000.0, "/proc/cpuinfo cpu MHz"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for key in ("CPU max MHz", "CPU MHz"):
        m = re.search(rf"^{key}:\s*([0-9.]+)", out, re.M)
        if m:
            return float(m.group(1)) / 1000.0, f"lscpu {key}"
    return None, "unknown"


def cpu_flags() -> set:
    m = re.search(r"^flags\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    return set(m.group(1).split()) if m else set()


def raise_priority(nice: int) -> Optional[str]:
    """Set the nice value of every thread of this process (Linux nice is per thread; threads created
    later inherit it from their creator). Lower = higher priority; < 0 needs root/CAP_SYS_NICE."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def set_autogroup_nice(nice: int) -> Optional[int]:
    """With kernel.sched_autogroup_enabled, CPU time is shared fairly between sessions whatever the
    thread nice values, so also set the nice of this session's autogroup. Returns the previous value
    (to restore at exit), or None when there is no autogroup or it can't be changed."""
    path = "/proc/self/autogroup"
    m = re.search(r"nice\s+(-?\d+)", _read(path))
    if not m:
        return None
    try:
        with open(path, "w") as f:
            f.write(str(nice))
    except OSError:
        return None
    return int(m.group(1))


# ------------------------------------------------------------------------------------------- timing
def warm_up(fn: Callable[[], Any], min_time: float, warmup_time: float) -> int:
    """Call ``fn`` for >= warmup_time seconds (and >= 2 calls); return the loop count that makes one
    timed sample last >= min_time."""
    t0 = time.perf_counter()
    calls = 0
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= 2 and elapsed >= warmup_time:
            break
    per_call = elapsed / calls
    return max(1, math.ceil(min_time / per_call)) if per_call > 0 else 1000


def sample(fn: Callable[[], Any], loops: int) -> float:
    """Seconds per call over ``loops`` back-to-back calls (each call's result is dropped at once)."""
    t = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t) / loops


def measure_interleaved(
    fns: Dict[str, Callable[[], Any]], repeats: int, min_time: float, warmup_time: float
) -> Dict[str, Dict[str, Any]]:
    """Warm each implementation up, then ``repeats`` rounds; a round takes one sample of every
    implementation (the order rotating from round to round), so a disturbance or a clock change hits
    all of them alike rather than whichever happened to run at that moment. GC is off meanwhile."""
    names = list(fns)
    loops = {k: warm_up(fns[k], min_time, warmup_time) for k in names}
    samples: Dict[str, List[float]] = {k: [] for k in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for k in order:
                samples[k].append(sample(fns[k], loops[k]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "loops": loops[k], "samples_s": v}
        for k, v in samples.items()
    }


def geomean(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


# -------------------------------------------------------------------------------------------- table
ROW_FMT = (
    "{kind:<9} {shape:<24} {count:>2} {mmac:>7} | {t_npuq:>8} {t_t8cl:>8} {t_t8nchw:>8} {t_fp32:>8} | "
    "{g_npuq:>6} {g_t8cl:>6} {g_t8nchw:>6} {g_fp32:>6} | {p_npuq:>5} {p_t8cl:>5} | "
    "{s_t8:>6} {s_fp32:>6} | {check:<8} {ref:>8} {dt8:>4} {bg:>4}"
)


def header() -> str:
    top = ROW_FMT.format(
        kind="",
        shape="",
        count="",
        mmac="",
        t_npuq="time ms:",
        t_t8cl="",
        t_t8nchw="",
        t_fp32="",
        g_npuq="GMAC/s",
        g_t8cl="",
        g_t8nchw="",
        g_fp32="",
        p_npuq="%peak",
        p_t8cl="",
        s_t8="speedup",
        s_fp32="",
        check="check",
        ref="",
        dt8="",
        bg="",
    )
    sub = ROW_FMT.format(
        kind="kind",
        shape="shape (k, C, H x W, s)",
        count="n",
        mmac="MMAC",
        t_npuq="npuq",
        t_t8cl="t8_cl",
        t_t8nchw="t8_nchw",
        t_fp32="fp32",
        g_npuq="npuq",
        g_t8cl="t8_cl",
        g_t8nchw="t8nchw",
        g_fp32="fp32",
        p_npuq="npuq",
        p_t8cl="t8_cl",
        s_t8="t8/np",
        s_fp32="f32/np",
        check="vs ref",
        ref="ref ms",
        dt8="dt8",
        bg="bg%",
    )
    return top.rstrip() + "\n" + sub + "\n" + "-" * len(sub)


def _ms(t: Optional[float]) -> str:
    if t is None:
        return "n/a"
    return f"{t * 1e3:.3f}" if t < 1 else f"{t * 1e3:.1f}"


def _f(v: Optional[float], fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def format_row(r: Dict[str, Any]) -> str:
    layer = r["layer"]
    t = {k: (r["impls"][k]["median_s"] if r["impls"].get(k, {}).get("median_s") else None) for k in IMPLS}
    g = {k: r["impls"].get(k, {}).get("gmacs") for k in IMPLS}
    p = {k: r["impls"].get(k, {}).get("peak_fraction") for k in IMPLS}
    chk = r["check"]
    return ROW_FMT.format(
        kind=layer["kind"],
        shape=layer["shape"],
        count=layer["count"],
        mmac=f"{r['macs'] / 1e6:.2f}",
        t_npuq="ERR"
        if r["impls"].get("npuq", {}).get("error", "npuq not importable") != "npuq not importable"
        else _ms(t["npuq"]),
        t_t8cl=_ms(t["t8_cl"]),
        t_t8nchw=_ms(t["t8_nchw"]),
        t_fp32=_ms(t["fp32"]),
        g_npuq=_f(g["npuq"], ".1f"),
        g_t8cl=_f(g["t8_cl"], ".1f"),
        g_t8nchw=_f(g["t8_nchw"], ".1f"),
        g_fp32=_f(g["fp32"], ".1f"),
        p_npuq=_f(None if p["npuq"] is None else 100 * p["npuq"], ".1f"),
        p_t8cl=_f(None if p["t8_cl"] is None else 100 * p["t8_cl"], ".1f"),
        s_t8=_f(r["speedup_t8"], ".2f"),
        s_fp32=_f(r["speedup_fp32"], ".2f"),
        check=chk["status"],
        ref=_ms(chk.get("ref_time_s")),
        dt8="n/a" if r.get("max_diff_vs_t8") is None else str(r["max_diff_vs_t8"]),
        bg="n/a" if r.get("background_load") is None else f"{100 * r['background_load']:.0f}",
    )


# ---------------------------------------------------------------------------------------- benchmark
def layer_dict(layer: ConvLayer) -> Dict[str, Any]:
    return {
        "id": layer.id,
        "name": layer.name,
        "kind": layer.kind,
        "shape": layer.shape_str(),
        "c_in": layer.c_in,
        "c_out": layer.c_out,
        "h": layer.h,
        "w": layer.w,
        "h_out": layer.h_out,
        "w_out": layer.w_out,
        "kernel": layer.kernel,
        "stride": layer.stride,
        "padding": layer.padding,
        "groups": layer.groups,
        "count": layer.count,
        "occurrences": list(layer.occurrences),
    }


def check_npuq(data: cc.ConvData, y: np.ndarray, npuq, ref_time_b1: Optional[float], args) -> Dict[str, Any]:
    """Compare npuq's output with npuq.ops.reference.conv2d (bit-exact)."""
    if args.no_check:
        return {"status": "skip", "reason": "--no-check"}
    macs = data.macs
    if args.check_max_mmac is not None and macs / 1e6 > args.check_max_mmac:
        return {"status": "skip", "reason": f"{macs / 1e6:.1f} MMAC > --check-max-mmac"}
    if data.batch > 1 and ref_time_b1 is not None:
        predicted = ref_time_b1 * data.batch
        if predicted > args.check_max_seconds:
            return {"status": "skip", "reason": f"reference predicted {predicted:.1f} s > --check-max-seconds"}
    t = time.perf_counter()
    try:
        ref = cc.npuq_reference(data, npuq)
    except Exception as exc:
        return {"status": "ref-ERR", "error": f"{type(exc).__name__}: {exc}"}
    ref_time = time.perf_counter() - t
    ref = np.asarray(ref)
    y = np.asarray(y)
    out = {"ref_time_s": ref_time}
    if y.shape != ref.shape or y.dtype != ref.dtype:
        out.update(status="FAIL", error=f"npuq {y.dtype}{y.shape} vs reference {ref.dtype}{ref.shape}")
        return out
    bad = y != ref
    n_bad = int(bad.sum())
    if n_bad == 0:
        out["status"] = "exact"
        return out
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    out.update(
        status="FAIL",
        mismatches=n_bad,
        total=int(y.size),
        max_abs_diff=int(np.max(np.abs(y.astype(np.int16) - ref.astype(np.int16)))),
        first_mismatch_nhwc=first,
        npuq_value=int(y[first]),
        ref_value=int(ref[first]),
    )
    return out


def bench_layer(
    layer: ConvLayer, batch: int, npuq, args, peak_gmacs: Optional[float], ref_time_b1: Dict[str, float]
) -> Dict[str, Any]:
    data = cc.make_conv_data(layer, batch, seed=args.seed)
    macs = data.macs
    res: Dict[str, Any] = {
        "layer": layer_dict(layer),
        "batch": batch,
        "macs": macs,
        "impls": {},
        "check": {"status": "-"},
    }
    first_out: Dict[str, Any] = {}
    fns: Dict[str, Callable[[], Any]] = {}
    for impl in IMPLS:
        if impl == "npuq" and npuq is None:
            res["impls"][impl] = {"error": "npuq not importable"}
            continue
        if impl == "t8_nchw" and args.no_nchw:
            continue
        try:
            fn = cc.build(IMPL_BUILD[impl], data, npuq)
            first_out[impl] = fn()
        except Exception as exc:
            res["impls"][impl] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        fns[impl] = fn
        if impl == "npuq":
            chk = check_npuq(data, first_out[impl], npuq, ref_time_b1.get(layer.id), args)
            res["check"] = chk
            if batch == 1 and chk.get("ref_time_s") is not None:
                ref_time_b1[layer.id] = chk["ref_time_s"]
    meter = LoadMeter()
    for impl, m in measure_interleaved(fns, args.repeats, args.min_time, args.warmup).items():
        m["gmacs"] = macs / m["median_s"] / 1e9
        m["peak_fraction"] = m["gmacs"] / peak_gmacs if peak_gmacs else None
        res["impls"][impl] = m
    res["background_load"] = meter.background_fraction()
    del fns
    tn = res["impls"].get("npuq", {}).get("median_s")
    t8 = res["impls"].get("t8_cl", {}).get("median_s")
    tf = res["impls"].get("fp32", {}).get("median_s")
    res["speedup_t8"] = t8 / tn if (tn and t8) else None
    res["speedup_fp32"] = tf / tn if (tn and tf) else None
    if "npuq" in first_out and "t8_cl" in first_out:
        res["max_diff_vs_t8"] = cc.max_abs_diff_npuq_vs_torch(first_out["npuq"], first_out["t8_cl"])
    return res


def summarize(results: List[Dict[str, Any]], batches: List[int], peak_gmacs: Optional[float]) -> Tuple[str, Dict]:
    lines = []
    summary: Dict[str, Any] = {"per_kind": {}, "network": {}}
    kinds = ["stem", "depthwise", "pointwise", "all"]
    lines.append(
        "Geometric mean over layers of the speedup (torch time / npuq time, > 1: npuq faster), unweighted; layers:"
    )
    lines.append(f"{'batch':>5} {'kind':<10} {'layers':>6} {'t8_cl/npuq':>11} {'t8_nchw/npuq':>13} {'fp32/npuq':>10}")
    for b in batches:
        for kind in kinds:
            rows = [r for r in results if r["batch"] == b and (kind == "all" or r["layer"]["kind"] == kind)]
            if not rows:
                continue

            def ratio(r, impl):
                tn = r["impls"].get("npuq", {}).get("median_s")
                ti = r["impls"].get(impl, {}).get("median_s")
                return ti / tn if (tn and ti) else None

            g8 = geomean([ratio(r, "t8_cl") for r in rows])
            g8n = geomean([ratio(r, "t8_nchw") for r in rows])
            gf = geomean([ratio(r, "fp32") for r in rows])
            summary["per_kind"][f"b{b}/{kind}"] = {"layers": len(rows), "t8_cl": g8, "t8_nchw": g8n, "fp32": gf}
            lines.append(
                f"{b:>5} {kind:<10} {len(rows):>6} {_f(g8, '.2f'):>11} {_f(g8n, '.2f'):>13} {_f(gf, '.2f'):>10}"
            )
    lines.append("")
    lines.append("Whole network (sum over the layers benchmarked, each weighted by its count in MobileNetV2):")
    lines.append(f"{'batch':>5} {'impl':<8} {'conv ms':>9} {'ms/image':>9} {'GMAC/s':>7} {'%peak':>6} {'vs npuq':>8}")
    for b in batches:
        rows = [r for r in results if r["batch"] == b]
        macs = sum(r["macs"] * r["layer"]["count"] for r in rows)
        tot: Dict[str, Optional[float]] = {}
        for impl in IMPLS:
            ts = [r["impls"].get(impl, {}).get("median_s") for r in rows]
            tot[impl] = (
                None
                if (not ts or any(t is None for t in ts))
                else sum(t * r["layer"]["count"] for t, r in zip(ts, rows))
            )
        for impl in IMPLS:
            t = tot[impl]
            if t is None:
                lines.append(f"{b:>5} {impl:<8} {'n/a':>9}")
                continue
            gm = macs / t / 1e9
            pk = 100 * gm / peak_gmacs if peak_gmacs else None
            vs = (t / tot["npuq"]) if tot.get("npuq") else None
            summary["network"][f"b{b}/{impl}"] = {
                "time_s": t,
                "macs": macs,
                "gmacs": gm,
                "peak_fraction": gm / peak_gmacs if peak_gmacs else None,
                "time_vs_npuq": vs,
            }
            lines.append(
                f"{b:>5} {impl:<8} {t * 1e3:>9.3f} {t * 1e3 / b:>9.3f} {gm:>7.1f} {_f(pk, '.1f'):>6} {_f(vs, '.2f'):>8}"
            )
    return "\n".join(lines), summary


def plot(results: List[Dict[str, Any]], batches: List[int], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot ({path})")
        return
    ids = []
    for r in results:
        if r["layer"]["id"] not in ids:
            ids.append(r["layer"]["id"])
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.45 * len(ids) + 3), 9), sharex=True)
    width = 0.8 / max(1, len(batches))
    for ax, key, title in (
        (axes[0], "speedup_t8", "torch fbgemm int8 (channels_last) time / npuq time"),
        (axes[1], "speedup_fp32", "torch float32 (channels_last) time / npuq time"),
    ):
        for j, b in enumerate(batches):
            vals = []
            for lid in ids:
                r = next((r for r in results if r["layer"]["id"] == lid and r["batch"] == b), None)
                vals.append(r[key] if r and r[key] else 0.0)
            xs = [i + (j - (len(batches) - 1) / 2) * width for i in range(len(ids))]
            ax.bar(xs, vals, width, label=f"batch {b}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup (>1: npuq faster)")
        ax.set_title(title)
        ax.legend()
    axes[1].set_xticks(range(len(ids)))
    axes[1].set_xticklabels(ids, rotation=70, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for torch and npuq (default: env NPUQ_BENCH_THREADS, else os.cpu_count())",
    )
    ap.add_argument("--repeats", type=int, default=15, help="timed samples per measurement (default 15)")
    ap.add_argument(
        "--min-time", type=float, default=0.02, help="minimum seconds per sample; sets the loop count (default 0.02)"
    )
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up seconds per measurement (default 0.05)")
    ap.add_argument("--quick", action="store_true", help=f"only {len(QUICK_IDS)} representative layers")
    ap.add_argument(
        "--layers", nargs="+", default=None, help="only layers whose id, name or kind contains one of these strings"
    )
    ap.add_argument("--json", metavar="OUT", default=None, help="write all raw numbers to this JSON file")
    ap.add_argument("--plot", metavar="OUT.png", default=None, help="bar plot of the speedups (needs matplotlib)")
    ap.add_argument("--peak-gmacs", type=float, default=None, help="override the int8 peak (GMAC/s)")
    ap.add_argument("--ghz", type=float, default=None, help="override the clock used for the peak (GHz)")
    ap.add_argument("--isa", default=None, help="npuq.set_isa(ISA) before timing (avx512_vnni, avx2, portable)")
    ap.add_argument("--no-nchw", action="store_true", help="skip the torch int8 NCHW-input column")
    ap.add_argument("--no-check", action="store_true", help="skip the bit-exact check against the reference")
    ap.add_argument(
        "--check-max-mmac",
        type=float,
        default=None,
        help="skip the reference check on layers above this many MMAC (at the batch checked)",
    )
    ap.add_argument(
        "--check-max-seconds",
        type=float,
        default=5.0,
        help="check batches > 1 only when the reference is predicted (from batch 1) to take "
        "at most this long (default 5)",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        metavar="SEC",
        help="before starting, wait up to SEC seconds for other processes to leave the CPUs idle "
        "(default 60; 0: don't wait)",
    )
    ap.add_argument(
        "--busy-retries",
        type=int,
        default=2,
        help="re-measure a row up to this many times (after waiting for idle CPUs) when other "
        "processes used >= 5%% of the CPUs while it ran (default 2)",
    )
    ap.add_argument(
        "--max-wait-total",
        type=float,
        default=300.0,
        metavar="SEC",
        help="give up waiting for idle CPUs after this many seconds in total (default 300)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=None,
        help="set this nice value on all threads (e.g. -20, needs root): on a shared machine it "
        "keeps other processes' CPU use from disturbing the timings",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.nice is not None:
        err = raise_priority(args.nice)
        if err:
            print(f"WARNING: could not set nice {args.nice}: {err}")
        old_autogroup_nice = set_autogroup_nice(args.nice)
        if old_autogroup_nice is not None:
            import atexit

            atexit.register(set_autogroup_nice, old_autogroup_nice)
    threads = args.threads if args.threads is not None else cc.bench_threads()
    npuq, npuq_err = cc.import_npuq()
    cc.configure(threads, npuq)
    if npuq is not None and args.isa:
        npuq.set_isa(args.isa)

    layers = unique_layers()
    if args.quick:
        layers = [l for l in layers if l.id in QUICK_IDS]
    if args.layers:
        layers = [l for l in layers if any(s in l.id or s in l.name or s == l.kind for s in args.layers)]
    if not layers:
        print("no layer selected", file=sys.stderr)
        return 2

    ghz, ghz_src = cpu_ghz()
    if args.ghz:
        ghz, ghz_src = args.ghz, "--ghz"
    cores = physical_cores()
    used_cores = min(threads, cores)
    family = kernel_family(npuq)
    if args.peak_gmacs:
        peak, peak_note = args.peak_gmacs, "--peak-gmacs"
    elif ghz:
        peak = used_cores * ghz * MACS_PER_CYCLE[family]
        peak_note = (
            f"{used_cores} cores x {ghz:.3f} GHz ({ghz_src}) x {MACS_PER_CYCLE[family]} MACs/cycle "
            f"(the {family} peak: {PEAK_INSTRUCTION[family]})"
        )
    else:
        peak, peak_note = None, "unknown clock (use --peak-gmacs)"

    features = None
    if npuq is not None:
        try:
            features = npuq.cpu_features()
        except Exception as exc:
            features = f"error: {exc}"
    print(f"CPU      : {cpu_model()}, {cores} physical cores, {os.cpu_count()} logical")
    print(
        f"threads  : {threads} (torch.get_num_threads()={torch.get_num_threads()}"
        + (f", npuq.get_num_threads()={npuq.get_num_threads()})" if npuq is not None else ")")
    )
    print(f"int8 peak: {_f(peak, '.1f')} GMAC/s = {peak_note}")
    print(f"torch    : {torch.__version__}, quantized engine {torch.backends.quantized.engine}")
    if npuq is None:
        print(f"npuq     : NOT IMPORTABLE ({npuq_err}); timing torch only")
    else:
        print(
            f"npuq     : {getattr(npuq, '__version__', '?')} from {os.path.dirname(npuq.__file__)}, "
            f"cpu_features={features}"
        )
    autogroup = _read("/proc/self/autogroup").strip()
    print(f"priority : nice {os.getpriority(os.PRIO_PROCESS, 0)}" + (f", {autogroup}" if autogroup else ""))
    print(
        f"timing   : median of {args.repeats} interleaved samples, each >= {args.min_time * 1e3:.0f} ms, "
        f"after >= {args.warmup * 1e3:.0f} ms warm-up; {len(layers)} layers x batches {args.batch}"
    )
    print("columns  : " + "; ".join(f"{k} = {v}" for k, v in IMPL_DESC.items()))
    print(
        "           speedup t8/np = t8_cl time / npuq time, f32/np = fp32 time / npuq time (>1: npuq faster);"
        " 'check vs ref' = bit-exact check against npuq.ops.reference.conv2d, 'ref ms' = its time;"
        " dt8 = max |npuq - torch int8| output difference in LSB (informational);"
        " bg% = CPU share used by other processes while the row ran (should be 0)"
    )
    print()

    if args.wait_idle > 0 and args.nice is None:
        bg = wait_idle(args.wait_idle)
        if bg is not None and bg >= BUSY:
            print(f"WARNING: other processes use {100 * bg:.0f}% of the CPUs; timings will be disturbed")
    results: List[Dict[str, Any]] = []
    ref_time_b1: Dict[str, float] = {}
    total = len(layers) * len(args.batch)
    bar = tqdm(total=total, unit="layer", leave=False, file=sys.stderr) if tqdm is not None else None
    out = bar.write if bar is not None else print
    t_start = time.perf_counter()
    waited = 0.0
    for b in sorted(args.batch):
        out(f"batch {b}")
        out(header())
        for layer in layers:
            if bar is not None:
                bar.set_description(f"b{b} {layer.id}")
            if args.nice is not None:
                raise_priority(args.nice)  # also reaches thread-pool threads started since
            for attempt in range(args.busy_retries + 1):
                r = bench_layer(layer, b, npuq, args, peak, ref_time_b1)
                bg = r.get("background_load")
                if bg is None or bg < BUSY or attempt == args.busy_retries or waited >= args.max_wait_total:
                    break
                # Something else ran on the (shared) CPUs meanwhile: wait for quiet and measure again.
                # (At raised priority --nice, measure again at once: waiting for an idle machine is
                # pointless when the other work just runs while this process sleeps.)
                if args.nice is None:
                    t_wait = time.perf_counter()
                    wait_idle(min(args.wait_idle, args.max_wait_total - waited))
                    waited += time.perf_counter() - t_wait
            r["attempts"] = attempt + 1
            results.append(r)
            out(format_row(r))
            if bar is None:
                sys.stdout.flush()
            else:
                bar.update(1)
        out("")
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_start

    batches = sorted(args.batch)
    text, summary = summarize(results, batches, peak)
    print(text)
    print()
    failures = [r for r in results if r["check"]["status"] not in ("exact", "skip", "-")]
    errors = [
        (r["layer"]["id"], r["batch"], k, v["error"]) for r in results for k, v in r["impls"].items() if "error" in v
    ]
    for r in failures:
        print(
            f"CHECK {r['check']['status']}: {r['layer']['id']} batch {r['batch']}: "
            + ", ".join(f"{k}={v}" for k, v in r["check"].items() if k != "status")
        )
    for lid, b, k, e in errors:
        if e != "npuq not importable":
            print(f"ERROR: {lid} batch {b} {k}: {e}")
    dw_diff = [
        r.get("max_diff_vs_t8")
        for r in results
        if r["layer"]["kind"] == "depthwise" and r.get("max_diff_vs_t8") is not None
    ]
    if dw_diff and max(dw_diff) > 1:
        print(
            "note: dt8 > 1 on depthwise layers is torch's, not npuq's: fbgemm's depthwise kernel sums pairs"
            " of u8*s8 products in saturating int16 (vpmaddubsw), which overflows for full-range 8-bit"
            " activations (torch's x86 qconfigs use reduce_range to avoid it)."
        )
    busy = [r for r in results if (r.get("background_load") or 0) >= BUSY]
    if busy:
        print(
            f"WARNING: {len(busy)} rows were measured while other processes used >= 5% of the CPUs (bg%):"
            " " + ", ".join(f"{r['layer']['id']}/b{r['batch']}" for r in busy) + "; rerun them (--layers)"
        )
    over = [r for r in results for k, v in r["impls"].items() if (v.get("peak_fraction") or 0) > 1.0]
    if over and not args.peak_gmacs:
        print(
            f"note: {len(over)} measurements exceed the computed peak of {peak:.1f} GMAC/s, so the cores run"
            f" faster than the {ghz:.2f} GHz read from {ghz_src} (boost clock; in a VM the nominal one"
            " is reported); '% of peak' overstates the fraction. Pass --ghz or --peak-gmacs."
        )
    checked = sum(1 for r in results if r["check"]["status"] == "exact")
    print(
        f"{checked} of {len(results)} layer/batch cases checked bit-exact against the reference; "
        f"{len(failures)} failed. Total run {elapsed:.0f} s ({waited:.0f} s of it waiting for idle CPUs)."
    )

    if args.json:
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "argv": sys.argv,
            "args": vars(args),
            "threads": threads,
            "cpu_model": cpu_model(),
            "physical_cores": cores,
            "logical_cpus": os.cpu_count(),
            "ghz": ghz,
            "ghz_source": ghz_src,
            "peak_gmacs": peak,
            "peak_note": peak_note,
            "kernel_family": family,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version,
            "npuq_error": npuq_err,
            "npuq_version": getattr(npuq, "__version__", None) if npuq else None,
            "npuq_arithmetic_version": getattr(npuq, "ARITHMETIC_VERSION", None) if npuq else None,
            "npuq_cpu_features": features if isinstance(features, (dict, list, str, type(None))) else str(features),
            "impls": IMPL_DESC,
            "elapsed_s": elapsed,
            "waited_for_idle_s": waited,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "summary": summary}, f, indent=1, default=str)
        print(f"JSON written to {args.json}")
    if args.plot:
        plot(results, batches, args.plot)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
