"""The C ABI's cost over the native kernels: the same conv layers timed through libnpuq from a C program (no
Python in the process), through the Python API (``npuq.ops.Conv2d``) and through the pybind11 plan the
Python API wraps, all in one run on this machine.

    python3 benchmarks/bench_capi.py [--batch 1] [--threads 1] [--reps 200] [--json results/capi.json]

The C side is built here from benchmarks/c/capi_conv_timer.c with ``npuq config --cflags --libs``. Prints
per layer the median times and the ratio C ABI / pybind11 plan (1.00 = no cost), and the geometric mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model
from mobilenetv2_layers import unique_layers

import npuq

HERE = Path(__file__).resolve().parent


def build_timer(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_capi: no C compiler (cc) on PATH")
    exe = workdir / "capi_conv_timer"
    flags = subprocess.run(
        [sys.executable, "-m", "npuq.cli", "config", "--cflags", "--libs"], check=True, capture_output=True, text=True
    ).stdout.split()
    subprocess.run([cc, "-O2", "-std=c99", str(HERE / "c" / "capi_conv_timer.c"), "-o", str(exe), *flags], check=True)
    return exe


def median_ns(f, reps: int) -> float:
    for _ in range(3):
        f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        f()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--limit", type=int, default=None, help="only the first N unique layers")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_timer(Path(tmp))
        layers = unique_layers()[: args.limit]
        for layer in layers:
            d = Path(tmp) / layer.id
            d.mkdir()
            wt = rng.integers(-127, 128, layer.weight_shape_ohwi, dtype=np.int8)
            bias = rng.integers(-(2**12), 2**12, layer.c_out).astype(np.int32)
            x = rng.integers(-128, 128, (args.batch, layer.h, layer.w, layer.c_in), dtype=np.int8)
            pad = layer.padding
            m, e = npuq.quantize_multiplier(2.0**-10)
            kw = dict(
                stride=layer.stride,
                padding=pad,
                groups=layer.groups,
                input_zero_point=-128,
                multiplier=m,
                exponent=e,
                threads=args.threads,
            )
            conv = npuq.ops.Conv2d(wt, bias, **kw)
            params = [
                layer.c_in,
                layer.c_out,
                layer.kernel,
                layer.stride,
                pad,
                layer.groups,
                -128,
                args.batch,
                layer.h,
                layer.w,
                m,
                e,
            ]
            (d / "params.txt").write_text(" ".join(map(str, params)))
            x.tofile(d / "x.bin")
            wt.tofile(d / "weight.bin")
            bias.tofile(d / "bias.bin")
            py = median_ns(lambda: conv(x), args.reps)
            native = median_ns(lambda: conv._plan.run(x, args.threads), args.reps)
            out = subprocess.run(
                [str(exe), str(d), str(args.reps), str(args.threads)],
                check=True,
                capture_output=True,
                text=True,
                env=os.environ,
            ).stdout.split()
            c_ns = float(out[0])
            rows.append(
                dict(
                    layer=layer.id, python_api_ns=py, pybind_plan_ns=native, c_abi_ns=c_ns, c_over_pybind=c_ns / native
                )
            )
            print(
                f"{layer.id:32s} python {py / 1e3:9.1f} us  pybind plan {native / 1e3:9.1f} us  "
                f"C ABI {c_ns / 1e3:9.1f} us  C/pybind {c_ns / native:5.2f}",
                flush=True,
            )
    gm = math.exp(sum(math.log(r["c_over_pybind"]) for r in rows) / len(rows))
    gm_py = math.exp(sum(math.log(r["c_abi_ns"] / r["python_api_ns"]) for r in rows) / len(rows))
    cpu = cpu_model()
    isa = npuq.cpu_features()["active"]
    print(
        f"geometric mean C ABI / pybind plan: {gm:.3f}; C ABI / Python API: {gm_py:.3f} "
        f"({len(rows)} layers, batch {args.batch}, {args.threads} thread(s), {cpu}, {isa} kernels)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                dict(
                    cpu=cpu,
                    isa=isa,
                    batch=args.batch,
                    threads=args.threads,
                    reps=args.reps,
                    geomean_c_over_pybind=gm,
                    geomean_c_over_python=gm_py,
                    layers=rows,
                ),
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
