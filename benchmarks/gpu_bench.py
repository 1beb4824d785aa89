"""GPU speed of npuq's CUDA kernels, each against its named baseline in the same run (docs/cuda.md).

* ``conv``: every distinct conv layer of MobileNetV2 (width 1.0, 224x224, ``mobilenetv2_layers.py``) at
  batch 64: npuq's int8 conv with fused requantization (``npuq.ops.Conv2d`` on a channels_last int8 CUDA
  tensor) against torch's float16 conv (cuDNN, channels_last, ``cudnn.benchmark`` on). Each npuq output
  is also checked against the CPU kernels bit for bit. Goal: geometric mean of torch time / npuq time
  >= 1.0.
* ``emulator``: a whole MobileNetV2 program (torchvision architecture, random weights, 224x224) on the
  GPU emulator (int8 input already on the device) against the CPU emulator on all cores: images/s.
  Goal: >= 20x.

Timing: CUDA events around back-to-back calls (enough to last >= 20 ms), after warm-up; the median of
5 such samples. The CPU emulator: ``time.perf_counter`` around whole runs, median of 3.

    python3 benchmarks/gpu_bench.py --out results/gpu_bench.json [--parts conv emulator] [--quick]

Prints a table per part and writes the numbers to ``--out`` (JSON) and ``<out>.png`` (plot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np


def cuda_time_ms(fn, min_ms: float = 20.0, samples: int = 5) -> float:
    """Median per-call time of ``fn`` in ms, by CUDA events around back-to-back calls."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    iters = int(min(max(math.ceil(min_ms / once), 1), 500))
    times = []
    for _ in range(samples):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def bench_conv(batch: int, quick: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from conv_cases import make_conv_data, npuq_kwargs
    from mobilenetv2_layers import unique_layers

    import npuq

    torch.backends.cudnn.benchmark = True
    layers = unique_layers(224)
    if quick:
        layers = layers[::4]
    rows = []
    for layer in layers:
        data = make_conv_data(layer, batch)
        kw = npuq_kwargs(data, npuq)
        conv = npuq.ops.Conv2d(data.w_ohwi, data.bias, **kw)
        x_dev = torch.from_numpy(data.x).cuda().permute(0, 3, 1, 2)  # channels_last int8 (N, C, H, W)
        got = conv(x_dev).permute(0, 2, 3, 1).cpu().numpy()
        bitexact = bool(np.array_equal(got, conv(data.x)))
        t_npuq = cuda_time_ms(lambda: conv(x_dev))
        xh = torch.randn(x_dev.shape, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        wh = torch.randn(data.w_oihw.shape, device="cuda", dtype=torch.float16).contiguous(
            memory_format=torch.channels_last
        )
        bh = torch.randn(layer.c_out, device="cuda", dtype=torch.float16)
        with torch.inference_mode():
            t_torch = cuda_time_ms(lambda: F.conv2d(xh, wh, bh, layer.stride, layer.padding, 1, layer.groups))
        rows.append(
            dict(
                layer=layer.id,
                kind=layer.kind,
                count=layer.count,
                macs=data.macs,
                path=conv.cuda_plan(0).path,
                npuq_ms=t_npuq,
                torch_fp16_ms=t_torch,
                ratio=t_torch / t_npuq,
                bitexact=bitexact,
                npuq_tops=2 * data.macs / t_npuq / 1e9,
            )
        )
        r = rows[-1]
        print(
            f"{r['layer']:>24} {r['path']:>9}  npuq {t_npuq:8.3f} ms  torch fp16 {t_torch:8.3f} ms  "
            f"ratio {r['ratio']:5.2f}  {r['npuq_tops']:6.1f} TOPS  bitexact={bitexact}",
            flush=True,
        )
    ratios = [r["ratio"] for r in rows]
    weighted_npuq = sum(r["npuq_ms"] * r["count"] for r in rows)
    weighted_torch = sum(r["torch_fp16_ms"] * r["count"] for r in rows)
    summary = dict(
        batch=batch,
        layers=len(rows),
        geomean_ratio=math.exp(statistics.fmean(map(math.log, ratios))),
        network_ratio=weighted_torch / weighted_npuq,
        all_bitexact=all(r["bitexact"] for r in rows),
        npuq_network_ms=weighted_npuq,
        torch_network_ms=weighted_torch,
    )
    print(
        f"conv: geometric mean torch fp16 / npuq int8 = {summary['geomean_ratio']:.2f} (goal >= 1.0); "
        f"whole network {summary['network_ratio']:.2f}; all bit-exact: {summary['all_bitexact']}",
        flush=True,
    )
    return dict(rows=rows, summary=summary)


def _mobilenet_v2_program():
    import torch
    import torchvision

    import npuq

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 224, 224, generator=g) for _ in range(2)]
    return npuq.compile(npuq.quantize(model, calib, activations="minmax"), name="mobilenet_v2_random")


def bench_emulator(quick: bool) -> dict:
    import torch

    import npuq

    prog = _mobilenet_v2_program()
    rng = np.random.default_rng(0)
    n_gpu, gpu_batch = (256, 128) if quick else (1024, 256)
    n_cpu = 32 if quick else 64
    x = rng.integers(-128, 128, (n_gpu, 224, 224, 3), dtype=np.int8)
    cpu = npuq.npu.Emulator(prog, batch_size=64)
    gpu = npuq.npu.Emulator(prog, batch_size=gpu_batch, device="cuda")
    x_dev = torch.from_numpy(x).cuda()
    bitexact = bool(np.array_equal(gpu.run(x_dev[:n_cpu]).cpu().numpy(), cpu.run(x[:n_cpu])))
    t_gpu = cuda_time_ms(lambda: gpu.run(x_dev), min_ms=200, samples=3) / 1e3
    cpu_times = []
    cpu.run(x[:8])
    for _ in range(3):
        t0 = time.perf_counter()
        cpu.run(x[:n_cpu])
        cpu_times.append(time.perf_counter() - t0)
    t_cpu = statistics.median(cpu_times)
    res = dict(
        gpu_images_per_s=n_gpu / t_gpu,
        cpu_images_per_s=n_cpu / t_cpu,
        cpu_threads=npuq.get_num_threads(),
        gpu_batch=gpu_batch,
        bitexact=bitexact,
    )
    res["ratio"] = res["gpu_images_per_s"] / res["cpu_images_per_s"]
    # end to end from float images in host memory (quantized on the host, copied per batch)
    xf = rng.normal(0, 1, (256, 3, 224, 224)).astype(np.float32)
    t0 = time.perf_counter()
    gpu.run(xf)
    res["gpu_from_host_float_images_per_s"] = 256 / (time.perf_counter() - t0)
    print(
        f"emulator: GPU {res['gpu_images_per_s']:.0f} images/s, CPU ({res['cpu_threads']} threads) "
        f"{res['cpu_images_per_s']:.1f} images/s, ratio {res['ratio']:.1f} (goal >= 20); from host float images "
        f"{res['gpu_from_host_float_images_per_s']:.0f} images/s; bit-exact: {bitexact}",
        flush=True,
    )
    return res


def plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = results.get("conv", {}).get("rows")
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.bar(
        range(len(rows)),
        [r["ratio"] for r in rows],
        color=[
            "tab:blue" if r["kind"] == "pointwise" else "tab:orange" if r["kind"] == "depthwise" else "tab:green"
            for r in rows
        ],
    )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=75, fontsize=7)
    ax.set_ylabel("torch fp16 time / npuq int8 time")
    ax.set_title(
        f"MobileNetV2 layers, batch {results['conv']['summary']['batch']} "
        f"(blue pointwise, orange depthwise, green stem); geomean "
        f"{results['conv']['summary']['geomean_ratio']:.2f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/gpu_bench.json")
    ap.add_argument("--parts", nargs="+", default=["conv", "emulator"], choices=["conv", "emulator"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="every 4th layer, fewer images")
    args = ap.parse_args(argv)

    import torch

    import npuq

    if not torch.cuda.is_available() or not npuq._cuda.available():
        print(f"no GPU to benchmark: torch.cuda.is_available()={torch.cuda.is_available()}, npuq: {npuq._cuda.info()}")
        return 2
    results = {
        "device": torch.cuda.get_device_name(0),
        "npuq_cuda": {k: v for k, v in npuq._cuda.info().items()},
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
    }
    status = 0
    for part in args.parts:
        try:
            results[part] = bench_conv(args.batch, args.quick) if part == "conv" else bench_emulator(args.quick)
        except Exception as exc:  # one part failing must not lose the others
            traceback.print_exc()
            results[part] = {"error": f"{type(exc).__name__}: {exc}"}
            status = 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, default=str)
    plot(results, os.path.splitext(args.out)[0] + ".png")
    return status


if __name__ == "__main__":
    sys.exit(main())
