#!/usr/bin/env python3
"""Speed of npuq's table activation, elementwise add and multiply and concatenation against torch and memcpy.

In one process, with the same thread count for npuq and torch (--threads, else NPUQ_BENCH_THREADS, else
os.cpu_count()):

* ``lut``:    npuq.ops.lut with a hardswish table on int8 NHWC numpy arrays vs
  torch.ao.nn.quantized.functional.hardswish on a quint8 (N, C, H, W) channels_last tensor of the same
  shape (torch dequantizes, computes in float, requantizes);
* ``add``:    npuq.ops.Add, its parameters checked once as the emulator builds it per program, called on int8
  NHWC numpy arrays vs torch.ops.quantized.add on quint8 (N, C, H, W) channels_last tensors of the same
  shape; a second row per shape times the functional npuq.ops.add, which checks its keywords on every
  call, against the same torch samples;
* ``mul``:    npuq.ops.mul with the (N, 1, 1, C) squeeze-excitation scale broadcast over H and W vs
  torch.ops.quantized.mul on quint8 (N, C, H, W) channels_last and (N, C, 1, 1) (torch broadcasts);
* ``concat``: npuq.ops.concat of 2 to 4 inputs with identity parameters vs np.copyto of the same number
  of bytes into a preallocated buffer (one memcpy: the floor of any concatenation), and vs
  np.concatenate along the channels (which, like npuq, allocates its output).

npuq and torch allocate their outputs on every call; the memcpy baseline does not. Timing:
time.perf_counter around a loop lasting >= --min-time, after a warm-up; the reported time is the median of
--repeats samples, the samples of the two sides interleaved. The garbage collector is off while sampling.
Ratios are baseline_time / npuq_time: > 1 means npuq is faster.

Not part of the test run (pytest collects tests/ only). Examples:

    python3 benchmarks/bench_eltwise_ops.py
    python3 benchmarks/bench_eltwise_ops.py --threads 1 --repeats 31
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import warnings

import numpy as np
import torch

import npuq
from npuq.quant.lut import make_table

LUT_SHAPES = [(1, 112, 112, 16), (1, 56, 56, 72), (1, 28, 28, 96), (8, 14, 14, 576)]
# from a tiny tensor, where the cost of a call is all overhead, to the residual adds of MobileNetV2's stages
ADD_SHAPES = [(1, 1, 1, 16), (1, 56, 56, 24), (8, 56, 56, 24), (8, 14, 14, 96), (1, 14, 14, 96), (1, 7, 7, 160)]
MUL_SHAPES = [(1, 112, 112, 16), (1, 28, 28, 96), (1, 14, 14, 576), (8, 14, 14, 576)]
CONCAT_CASES = [
    [(1, 55, 55, 64), (1, 55, 55, 64)],  # SqueezeNet fire expand
    [(1, 28, 28, 64), (1, 28, 28, 128), (1, 28, 28, 32), (1, 28, 28, 32)],  # Inception branches
    [(8, 14, 14, 256), (8, 14, 14, 32)],  # DenseNet growth
    [(8, 28, 28, 24), (8, 28, 28, 24), (8, 28, 28, 48)],
    [(1, 56, 56, 224), (1, 56, 56, 32)],  # DenseNet-121, block 1, last layer
    [(1, 28, 28, 58), (1, 28, 28, 58)],  # ShuffleNetV2 x1.0 unit
]


def _time(fn, min_time: float) -> tuple[int, float]:
    """(loops, seconds per call of one sample) with loops chosen so that a sample lasts >= min_time."""
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return loops, dt / loops
        loops *= 2


def compare(fns: dict, repeats: int, min_time: float) -> dict:
    """Median seconds per call of each function, samples interleaved."""
    loops = {}
    for name, fn in fns.items():
        fn()
        loops[name], _ = _time(fn, min_time)
    samples = {name: [] for name in fns}
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(loops[name]):
                    fn()
                samples[name].append((time.perf_counter() - t0) / loops[name])
    finally:
        gc.enable()
    return {name: statistics.median(s) for name, s in samples.items()}


def _quint8_channels_last(x: np.ndarray, scale: float, zero_point: int):
    """The int8 NHWC array as torch quint8 (N, C, H, W) channels_last with the same real values."""
    u8 = (x.astype(np.int16) + 128).astype(np.uint8)
    t = torch.from_numpy(u8).permute(0, 3, 1, 2)
    return torch._make_per_tensor_quantized_tensor(t, scale, zero_point + 128)


def bench_lut(rng, repeats, min_time):
    from torch.ao.nn.quantized import functional as qF

    s_x, z_x, s_y, z_y = 0.05, -10, 0.03, -40
    table = make_table("hardswish", s_x, z_x, s_y, z_y)
    rows = []
    for shape in LUT_SHAPES:
        x = rng.integers(-128, 128, shape, dtype=np.int8)
        qx = _quint8_channels_last(x, s_x, z_x)
        t = compare(
            {"npuq": lambda x=x: npuq.ops.lut(x, table), "torch": lambda qx=qx: qF.hardswish(qx, s_y, z_y + 128)},
            repeats,
            min_time,
        )
        rows.append(("lut hardswish", shape, t["npuq"], "torch", t["torch"], x.nbytes))
    return rows


def bench_add(rng, repeats, min_time):
    s_a, s_b, s_y, z_a, z_b, z_y = 0.05, 0.04, 0.06, -3, 5, -1
    kw = dict(npuq.ops.add_params(s_a, s_b, s_y), a_zero_point=z_a, b_zero_point=z_b, output_zero_point=z_y)
    add = npuq.ops.Add(**kw)
    rows = []
    for shape in ADD_SHAPES:
        a = rng.integers(-128, 128, shape, dtype=np.int8)
        b = rng.integers(-128, 128, shape, dtype=np.int8)
        qa = _quint8_channels_last(a, s_a, z_a)
        qb = _quint8_channels_last(b, s_b, z_b)
        t = compare(
            {
                "npuq": lambda a=a, b=b: add(a, b),
                "torch": lambda qa=qa, qb=qb: torch.ops.quantized.add(qa, qb, s_y, z_y + 128),
                "functional": lambda a=a, b=b: npuq.ops.add(a, b, **kw),
            },
            repeats,
            min_time,
        )
        rows.append(("add (ops.Add)", shape, t["npuq"], "torch", t["torch"], a.nbytes + b.nbytes))
        rows.append(("add (ops.add)", shape, t["functional"], "torch", t["torch"], a.nbytes + b.nbytes))
    return rows


def bench_mul(rng, repeats, min_time):
    s_a, s_b, s_y = 0.05, 0.004, 0.03
    kw = dict(a_zero_point=3, b_zero_point=-128, output_zero_point=-5, **npuq.ops.mul_params(s_a, s_b, s_y))
    rows = []
    for shape in MUL_SHAPES:
        n, _, _, c = shape
        a = rng.integers(-128, 128, shape, dtype=np.int8)
        b = rng.integers(-128, 128, (n, 1, 1, c), dtype=np.int8)
        qa = _quint8_channels_last(a, s_a, 3)
        qb = _quint8_channels_last(b, s_b, -128)
        t = compare(
            {
                "npuq": lambda a=a, b=b: npuq.ops.mul(a, b, **kw),
                "torch": lambda qa=qa, qb=qb: torch.ops.quantized.mul(qa, qb, s_y, -5 + 128),
            },
            repeats,
            min_time,
        )
        rows.append(("mul SE broadcast", shape, t["npuq"], "torch", t["torch"], a.nbytes))
    return rows


def bench_concat(rng, repeats, min_time):
    rows = []
    for shapes in CONCAT_CASES:
        xs = [rng.integers(-128, 128, s, dtype=np.int8) for s in shapes]
        n = len(xs)
        kw = dict(zero_points=[0] * n, multipliers=[2**30] * n, exponents=[1] * n, output_zero_point=0)
        total = sum(x.nbytes for x in xs)
        src = rng.integers(-128, 128, total, dtype=np.int8)
        dst = np.empty_like(src)
        t = compare(
            {
                "npuq": lambda xs=xs: npuq.ops.concat(xs, **kw),
                "memcpy": lambda: np.copyto(dst, src),
                "numpy": lambda xs=xs: np.concatenate(xs, axis=-1),
            },
            repeats,
            min_time,
        )
        label = " + ".join(str(s[-1]) for s in shapes)
        shape = shapes[0][:-1] + (sum(s[-1] for s in shapes),)
        rows.append((f"concat C={label}", shape, t["npuq"], "memcpy", t["memcpy"], total))
        rows.append((f"concat C={label}", shape, t["npuq"], "np.cat", t["numpy"], total))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("NPUQ_BENCH_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--min-time", type=float, default=0.02)
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # torch's deprecation notes on quantized tensors
    torch.backends.quantized.engine = "fbgemm"
    torch.set_num_threads(args.threads)
    npuq.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"threads={args.threads} torch {torch.__version__} npuq isa={npuq.cpu_features()['active']} "
        f"repeats={args.repeats}"
    )
    print(f"{'case':<28} {'shape (NHWC)':<20} {'npuq us':>9} {'baseline':>8} {'base us':>9} {'ratio':>6} {'GB/s':>6}")
    rows = bench_lut(rng, args.repeats, args.min_time)
    rows += bench_add(rng, args.repeats, args.min_time)
    rows += bench_mul(rng, args.repeats, args.min_time)
    rows += bench_concat(rng, args.repeats, args.min_time)
    for case, shape, t_npuq, base, t_base, nbytes in rows:
        print(
            f"{case:<28} {'x'.join(map(str, shape)):<20} {t_npuq * 1e6:9.1f} {base:>8} {t_base * 1e6:9.1f} "
            f"{t_base / t_npuq:6.2f} {nbytes / t_npuq / 1e9:6.2f}"
        )
    if args.json:
        import json

        from machine import cpu_model

        keys = ("case", "shape", "npuq_s", "baseline", "baseline_s", "bytes")
        result = {
            "cpu": cpu_model(),
            "kernels": npuq.cpu_features()["active"],
            "threads": args.threads,
            "rows": [dict(zip(keys, r), ratio=r[4] / r[2]) for r in rows],
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
