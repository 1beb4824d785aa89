#!/usr/bin/env python3
"""Images per second of the NPU emulator on a whole network against the quantization simulation, torch's
float model and torch's own int8 model on the fbgemm engine: one process, one thread count.

Two networks (``--model``; benchmarks/emulator_cases.py builds them, benchmarks/fbgemm_baseline.py
converts the torch int8 model):

* ``mobilenet_v2`` (default): MobileNetV2 w0.5 on the 10,000 Fashion-MNIST test images; timed:
  emulator, simulation, fbgemm.
* ``efficientnet_lite0``: the published ImageNet EfficientNet-Lite0 at 224x224 on crops of real
  photographs (``--images`` evaluation crops, default 256; ``--calib-images`` calibration crops for both
  quantizers, default 64); timed: emulator, fp32, fbgemm, fbgemm_stride1. No labels exist for these
  images, so instead of accuracy the script reports how often each int8 model agrees with FP32 (top-1
  and top-5, with 95% bootstrap intervals, ``npuq.fidelity``).

What runs:

* ``emulator``    ``npuq.Emulator(npuq.compile(qm), threads=T).run(x)`` on float NCHW images (the input
                  quantization is part of the time), ``--batch-emulator`` images per native call;
* ``simulation``  ``qm.run_integer(x)``, the integer simulation in torch arithmetic, ``--batch-simulation``
                  images per call (it computes the emulator's integers, bit for bit);
* ``fp32``        the float torch model, ``--batch-fp32`` images per call, under ``torch.inference_mode``
                  (EfficientNet: with its zero pads folded into the convolutions, see ``--pads``);
* ``fbgemm``      torch.ao.quantization's int8 model of the same float network (FX graph mode,
                  ``get_default_qconfig_mapping("fbgemm")``, calibrated on the same images as npuq),
                  ``--batch-fbgemm`` images per call, under ``torch.inference_mode``; EfficientNet: its
                  zero pads folded into the convolutions like npuq's (``--pads``);
* ``fbgemm_stride1`` (EfficientNet) the same with a hand rewrite that keeps fbgemm's four strided
                  depthwise convolutions on its fast kernel (benchmarks/fbgemm_baseline.py, "Zero pads").

One more row, ``emulator_int8_input``, is for information only (not in the ratios): the emulator on the
same images quantized beforehand, i.e. the native kernels without the float input's quantization.

``torch.set_num_threads(T)`` and ``npuq.set_num_threads(T)`` with ``T = --threads`` (default: all CPUs).

Timing: after one untimed warm-up pass of each, ``--rounds`` interleaved rounds (the order rotates); a
round times one pass of each backend over all test images (``--images``, default all of them), except
the simulation, which runs over ``--sim-images`` of them (a different slice each round: with the
defaults, 5 x 2000 covers the test set once). The reported speed is images / (fastest pass); the median
pass is reported too, and the ratios are the emulator's speed over each other backend's. The machine may
be shared: before each round the script waits (up to ``--wait-idle`` s) until the CPUs are idle, each
pass records the CPU share other processes used meanwhile (bg%), and a pass with bg >= 5% is timed
again (up to ``--busy-retries`` times).

Checks (untimed where not covered by the timed passes): the emulator's int8 outputs equal the
simulation's integers on every test image (exit status 1 otherwise; where the simulation is not timed,
``--check integer`` runs ``qm.run_integer``, ``--check native`` the faster ``qm.run_native``); top-1
accuracy of all of them and of the float model (MobileNetV2), or their agreement with the float model
(EfficientNet).

``--sweep`` first times each backend at several batch sizes (best of 2 passes); ``--profile`` adds where
the time goes per op kind, for the emulator (``Emulator._run_op`` timed per op) and for torch's int8
model (forward hooks on its modules).

Examples:
    python3 benchmarks/bench_emulator.py --out results/bench_emulator.json
    python3 benchmarks/bench_emulator.py --threads 1 --rounds 3 --out results/bench_emulator_t1.json
    python3 benchmarks/bench_emulator.py --sweep --profile --out results/bench_emulator.json
    python3 benchmarks/bench_emulator.py --model efficientnet_lite0 --rounds 3 \
        --out results/bench_emulator_efficientnet.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import emulator_cases as ec
import numpy as np
import torch
from machine import LoadMeter, cpu_model, wait_idle

BUSY = 0.05  # background CPU share above which a pass counts as disturbed
INT8_INPUT = "emulator_int8_input"
INT8_INPUT_DESCRIPTION = (
    "npuq.Emulator(program).run(int8 images quantized beforehand): the native kernels only, for information"
)


# ------------------------------------------------------------------------------------------ machine
# ------------------------------------------------------------------------------------------- timing
def timed(fn: Callable[..., Any], *args, usage: dict | None = None):
    """(result, seconds, background CPU share) of ``fn(*args)``, GC off meanwhile. ``usage``, when given,
    receives this process's system CPU seconds and minor page faults during the call."""
    gc_on = gc.isenabled()
    gc.disable()
    meter = LoadMeter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        t = time.perf_counter()
        out = fn(*args)
        dt = time.perf_counter() - t
    finally:
        if gc_on:
            gc.enable()
    if usage is not None:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        usage.update(system_s=r1.ru_stime - r0.ru_stime, minor_faults=r1.ru_minflt - r0.ru_minflt)
    return out, dt, meter.background_fraction()


def sweep(setup: ec.Setup, n_images: int, log, max_wait: float = 30.0) -> dict[str, dict[int, float]]:
    """Images/s of each backend at each batch size of the case's ``sweep_batches`` (best of 2 passes, each
    after waiting up to ``max_wait`` s for idle CPUs)."""
    result: dict[str, dict[int, float]] = {}
    saved = dict(setup.batch)
    for impl, batches in setup.case.sweep_batches.items():
        n = min(n_images, 1000) if impl == "simulation" else n_images
        x = setup.x[:n]
        result[impl] = {}
        for b in batches:
            setup.batch[impl] = b
            fn = setup.runner(impl)
            fn(x[:b])  # warm-up
            best = math.inf
            for _ in range(2):
                if max_wait > 0:
                    wait_idle(max_wait)
                best = min(best, timed(fn, x)[1])
            result[impl][b] = n / best
            log(f"  sweep {impl:10s} batch {b:5d}: {n / best:9.0f} images/s ({n} images)")
    setup.batch.clear()
    setup.batch.update(saved)
    return result


# ------------------------------------------------------------------------------------------ profile
def conv_kind(groups: int, kh: int, kw: int) -> str:
    if groups > 1:
        return f"conv {kh}x{kw} depthwise"
    if kh == kw == 1:
        return "conv 1x1 (pointwise)"
    return f"conv {kh}x{kw} (stem)"


def profile_emulator(setup: ec.Setup, x: torch.Tensor, passes: int = 3) -> dict[str, Any]:
    """Seconds per op kind of ``emulator.run(x)`` (min over passes), input quantization and the rest."""
    emu = setup.emulator
    emu.batch_size = setup.batch["emulator"]
    kinds: dict[str, str] = {}
    for op in emu.program.ops:
        if op.kind == "conv2d":
            _, kh, kw, _ = op.tensors["weight"].shape
            kinds[op.name] = conv_kind(int(op.attrs["groups"]), kh, kw)
        else:
            kinds[op.name] = op.kind
    best: dict[str, float] = {}
    counts: dict[str, int] = defaultdict(int)
    for kind in kinds.values():
        counts[kind] += 1
    totals = []
    original_run_op, original_input = emu._run_op, emu.quantize_input
    try:
        for _ in range(passes):
            acc: dict[str, float] = defaultdict(float)

            def run_op(op, args, threads, _acc=acc):
                t = time.perf_counter()
                out = original_run_op(op, args, threads)
                _acc[kinds[op.name]] += time.perf_counter() - t
                return out

            def as_int8(xx, layout="NCHW", _acc=acc):
                t = time.perf_counter()
                out = original_input(xx, layout)
                _acc["input quantization"] += time.perf_counter() - t
                return out

            emu._run_op, emu.quantize_input = run_op, as_int8
            _, total, _ = timed(emu.run, x)
            acc["other (Python, slicing, concatenation)"] = total - sum(acc.values())
            totals.append(total)
            for k, v in acc.items():
                best[k] = min(best.get(k, v), v)
    finally:
        emu.__dict__.pop("_run_op", None)  # back to the class's methods
        emu.__dict__.pop("quantize_input", None)
    return {"images": int(x.shape[0]), "total_s": min(totals), "seconds": best, "ops": dict(counts)}


def _fbgemm_kind(module) -> str | None:
    name = type(module).__name__
    if "Conv2d" in name:
        kh, kw = module.kernel_size
        return conv_kind(module.groups, kh, kw)
    if "Linear" in name:
        return "linear"
    if "ReLU6" in name or "Hardtanh" in name:
        return "relu6"
    if "Pool" in name:
        return "pool"
    return None


def profile_fbgemm(setup: ec.Setup, x: torch.Tensor, passes: int = 3) -> dict[str, Any]:
    """Seconds per module kind of torch's int8 model (forward hooks); functional ops (input quantization,
    quantized add, flatten, dequantization) fall into 'other'."""
    handles, counts = [], defaultdict(int)
    acc: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}

    def pre(module, _inputs):
        starts[id(module)] = time.perf_counter()

    def post(module, _inputs, _out):
        acc[module._bench_kind] += time.perf_counter() - starts.pop(id(module))

    for module in setup.fbgemm.modules():
        kind = _fbgemm_kind(module)
        if kind is not None and not list(module.children()):
            module._bench_kind = kind
            counts[kind] += 1
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    fn = setup.runner("fbgemm")
    best: dict[str, float] = {}
    totals = []
    try:
        for _ in range(passes):
            acc.clear()
            _, total, _ = timed(fn, x)
            acc["other (quantize, add, flatten, dequantize, Python)"] = total - sum(acc.values())
            totals.append(total)
            for k, v in acc.items():
                best[k] = min(best.get(k, v), v)
    finally:
        for h in handles:
            h.remove()
    return {"images": int(x.shape[0]), "total_s": min(totals), "seconds": best, "ops": dict(counts)}


def format_profile(title: str, prof: dict[str, Any]) -> str:
    n, total = prof["images"], prof["total_s"]
    lines = [
        f"{title}: {n} images, {total * 1e3:.1f} ms per pass ({n / total:.0f} images/s), fastest of 3 passes per kind",
        f"  {'kind':42s} {'ops':>4s} {'ms':>9s} {'us/image':>9s} {'share':>6s}",
    ]
    for kind, s in sorted(prof["seconds"].items(), key=lambda kv: -kv[1]):
        ops = prof["ops"].get(kind, "")
        lines.append(f"  {kind:42s} {ops!s:>4s} {s * 1e3:9.1f} {s / n * 1e6:9.2f} {s / total:6.1%}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default=ec.DEFAULT_MODEL,
        choices=ec.MODELS,
        help=f"the network (default {ec.DEFAULT_MODEL}: MobileNetV2 w0.5 on Fashion-MNIST)",
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads of all backends (default: all CPUs)"
    )
    p.add_argument("--rounds", type=int, default=5, help="timed passes of each backend (default 5)")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="test images (default: all; efficientnet_lite0: evaluation crops, default "
        f"{ec.EFFICIENTNET_EVALUATION['count']})",
    )
    p.add_argument(
        "--calib-images",
        type=int,
        default=None,
        help=f"efficientnet_lite0: calibration crops (default {ec.EFFICIENTNET_CALIBRATION['count']})",
    )
    p.add_argument(
        "--sim-images", type=int, default=2000, help="test images per simulation pass, where it is timed (default 2000)"
    )
    p.add_argument(
        "--weights", default=None, help="npuq's weight quantization method (default wess; e.g. per_layer, per_channel)"
    )
    p.add_argument(
        "--check",
        default="integer",
        choices=("integer", "native"),
        help="where the simulation is not timed: check the emulator against qm.run_integer (default) or qm.run_native",
    )
    for impl in ec.ALL_IMPLEMENTATIONS:
        defaults = ", ".join(f"{c.name} {c.batch[impl]}" for c in ec.CASES.values() if impl in c.batch)
        p.add_argument(
            f"--batch-{impl}", type=int, default=None, help=f"images per call of the {impl} (default: {defaults})"
        )
    p.add_argument(
        "--engine",
        default="fbgemm",
        choices=("fbgemm", "x86"),
        help="torch quantized engine (default fbgemm; x86 is tried when fbgemm is missing)",
    )
    p.add_argument("--fbgemm-mode", default="fx", choices=("fx", "eager"), help="torch quantization workflow")
    p.add_argument(
        "--pads",
        default="fold",
        choices=("fold", "stride1", "keep"),
        help="zero pads (EfficientNet) in torch's models: folded into the convolutions like npuq does "
        "(default; the fbgemm_stride1 row adds the strided depthwise rewrite), also with that "
        "rewrite (stride1), or kept as traced (keep); see benchmarks/fbgemm_baseline.py",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each round, wait up to this many seconds for idle CPUs (default 30; 0: never)",
    )
    p.add_argument(
        "--busy-retries",
        type=int,
        default=2,
        help="time a pass again (after waiting for idle CPUs) when other processes used >= 5%% of the "
        "CPUs meanwhile, up to this many times (default 2)",
    )
    p.add_argument("--sweep", action="store_true", help="first time each backend at several batch sizes")
    p.add_argument("--profile", action="store_true", help="also time the emulator and fbgemm per op kind")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.sim_images < 1:
        p.error("--threads, --rounds and --sim-images must be >= 1")
    for opt in ("images", "calib_images", *(f"batch_{impl}" for impl in ec.ALL_IMPLEMENTATIONS)):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be >= 1")

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    case = ec.CASES[args.model]
    batch = {
        impl: getattr(args, f"batch_{impl}")
        for impl in ec.ALL_IMPLEMENTATIONS
        if getattr(args, f"batch_{impl}") is not None
    }
    extra = {"images": args.images, "calib_images": args.calib_images} if args.model == "efficientnet_lite0" else {}
    setup = ec.build(
        args.threads,
        model=args.model,
        batch=batch,
        engine=args.engine,
        fbgemm_mode=args.fbgemm_mode,
        pads=args.pads,
        weights=args.weights,
        log=log,
        **extra,
    )
    import npuq

    x_all, y_all = setup.x, setup.y
    if args.images is not None:
        x_all = x_all[: args.images]
        y_all = None if y_all is None else y_all[: args.images]
    n = int(x_all.shape[0])
    sim_n = min(args.sim_images, n)
    engine_note = "" if setup.engine == "fbgemm" else " (fbgemm is not available in this torch build)"
    log(
        f"threads {args.threads} (torch {torch.get_num_threads()}, npuq {npuq.get_num_threads()}), "
        f"torch {torch.__version__}, quantized engine {setup.engine}{engine_note}, torch int8 via "
        f"{setup.fbgemm_mode}; setup {', '.join(f'{k} {v:.1f} s' for k, v in setup.setup_s.items())}"
    )
    for name, info in (setup.pads or {}).items():
        log(
            f"zero pads of torch's model ({name}): {info['folded_into_conv']} folded into the convolutions, "
            f"{info['depthwise_stride1']} strided depthwise convolutions run at stride 1 and subsampled, "
            f"{info['kept']} left as pads" + (" (quantized pads in the int8 model)" if name != "keep" else "")
        )

    timed_impls = list(setup.implementations)
    float_chunk = setup.batch["fp32"]
    if "fp32" not in timed_impls:  # the float model's outputs (untimed): the reference of accuracy / agreement
        with torch.inference_mode():
            float_out = torch.cat([setup.model(x_all[lo : lo + float_chunk]) for lo in range(0, n, float_chunk)])

    sweep_result = sweep(setup, n, log, args.wait_idle) if args.sweep else None

    runners = {impl: setup.runner(impl) for impl in timed_impls}
    # for information (not in the ratios): the emulator on the int8 input quantized beforehand
    runners[INT8_INPUT] = runners["emulator"]
    inputs = {impl: x_all for impl in runners}
    inputs[INT8_INPUT] = setup.emulator.quantize_input(x_all)
    n_of = {impl: (sim_n if impl == "simulation" else n) for impl in runners}
    log("warm-up ...")
    for impl, fn in runners.items():
        fn(inputs[impl][: n_of[impl]])

    names = list(runners)
    samples: dict[str, list[dict[str, Any]]] = {impl: [] for impl in names}
    outputs: dict[str, Any] = {}
    sim_parts: dict[int, torch.Tensor] = {}
    retried = {impl: 0 for impl in names}
    for r in range(args.rounds):
        waited = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
        order = names[r % len(names) :] + names[: r % len(names)]
        for impl in order:
            lo = (r * sim_n) % n if impl == "simulation" else 0
            lo = lo if lo + n_of[impl] <= n else 0
            xs = inputs[impl][lo : lo + n_of[impl]]
            usage: dict[str, Any] = {}
            for attempt in range(args.busy_retries + 1):
                if attempt:
                    retried[impl] += 1
                    if args.wait_idle > 0:
                        wait_idle(args.wait_idle)
                out, dt, bg = timed(runners[impl], xs, usage=usage)
                if bg is None or bg < BUSY:
                    break
            if impl == "simulation":
                sim_parts.setdefault(lo, out)
            else:
                outputs[impl] = out
            samples[impl].append({"seconds": dt, "images": n_of[impl], "background": bg, **usage})
        log(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{impl} {samples[impl][-1]['images'] / samples[impl][-1]['seconds']:.0f}/s" for impl in names)
            + (f" (machine busy: {waited:.0%} before the round)" if waited is not None and waited >= BUSY else "")
        )

    # the simulation's integers on every image (the timed passes cover what they cover; the rest runs untimed)
    t_check = time.perf_counter()
    if sim_parts:
        covered = np.zeros(n, dtype=bool)
        sim_out = torch.empty((n,) + tuple(next(iter(sim_parts.values())).shape[1:]), dtype=torch.int64)
        for lo, part in sim_parts.items():
            sim_out[lo : lo + part.shape[0]] = part
            covered[lo : lo + part.shape[0]] = True
        if not covered.all():
            log(f"simulation on the {int((~covered).sum())} test images the timed passes did not cover (untimed) ...")
            for lo in range(0, n, sim_n):
                hi = min(lo + sim_n, n)
                if not covered[lo:hi].all():
                    sim_out[lo:hi] = runners["simulation"](x_all[lo:hi])
        check_with = "run_integer"
    else:
        check_with = "run_integer" if args.check == "integer" else "run_native"
        log(f"checking the emulator against qm.{check_with} on all {n} images (untimed) ...")
        sim_out = setup.reference_integers(x_all, args.check)
    check_s = time.perf_counter() - t_check
    bit_exact = ec.same_integers(outputs["emulator"], sim_out) and bool(
        np.array_equal(outputs["emulator"], outputs[INT8_INPUT])
    )
    float_ref = outputs["fp32"] if "fp32" in outputs else float_out
    float_pred = ec.top1("fp32", float_ref)
    preds = {impl: ec.top1(impl, outputs[impl]) for impl in timed_impls if impl not in ("simulation", "fp32")}
    preds["simulation"] = ec.top1("simulation", sim_out)
    accuracy = agreement = fidelity = None
    if y_all is not None:
        labels = y_all.numpy()
        accuracy = {
            "float": float((float_pred == labels).mean()),
            **{impl: float((preds[impl] == labels).mean()) for impl in preds},
        }
        quality_of = dict(accuracy, fp32=accuracy["float"])
    else:
        from npuq.fidelity import fidelity as _fidelity

        ref = ec.logits(setup, "fp32", float_ref)
        fidelity = {
            impl: _fidelity(ref, ec.logits(setup, impl, outputs[impl]))
            for impl in timed_impls
            if impl not in ("fp32", "simulation")
        }
        agreement = {"float": 1.0, **{impl: float((preds[impl] == float_pred).mean()) for impl in preds}}
        quality_of = dict(agreement, fp32=1.0)
    quality_of[INT8_INPUT] = quality_of["emulator"]

    speed = {}
    for impl in names:
        per_image = [s["seconds"] / s["images"] for s in samples[impl]]
        bgs = [s["background"] for s in samples[impl] if s["background"] is not None]
        speed[impl] = {
            "images_per_pass": n_of[impl],
            "batch": setup.batch[impl.split("_")[0]],
            "images_per_s": 1.0 / min(per_image),
            "images_per_s_median": 1.0 / statistics.median(per_image),
            "max_background": max(bgs) if bgs else None,
            "median_background": statistics.median(bgs) if bgs else None,
            "retried_busy": retried[impl],
            "median_system_s": statistics.median(s["system_s"] for s in samples[impl]),
            "median_minor_faults": statistics.median(s["minor_faults"] for s in samples[impl]),
            "samples": samples[impl],
            "what": (ec.DESCRIPTION.get(impl) or INT8_INPUT_DESCRIPTION).format(engine=setup.engine),
        }
    ratios = {}
    others = [impl for impl in timed_impls if impl != "emulator"]
    for impl in others:
        ratios[f"emulator_vs_{impl}"] = speed["emulator"]["images_per_s"] / speed[impl]["images_per_s"]
    for impl in others:
        ratios[f"emulator_vs_{impl}_median"] = (
            speed["emulator"]["images_per_s_median"] / speed[impl]["images_per_s_median"]
        )
    goals = dict(case.goals)

    profiles = None
    if args.profile:
        if args.wait_idle > 0:
            wait_idle(args.wait_idle)
        profiles = {"emulator": profile_emulator(setup, x_all), "fbgemm": profile_fbgemm(setup, x_all)}

    # ------------------------------------------------------------------------------------ report
    log("")
    log(f"{case.title}, {cpu_model()}, {args.threads} threads, torch {torch.__version__} ({setup.engine})")
    quality = "top-1" if accuracy is not None else "agree"
    log(
        f"{'':20s} {'images/s':>9s} {'(median)':>9s} {'batch':>6s} {'images':>7s} {quality:>7s} {'max bg':>7s} "
        f"{'sys ms':>7s} {'faults':>7s}"
    )
    for impl in names:
        s = speed[impl]
        bg = "" if s["max_background"] is None else f"{s['max_background']:.0%}"
        log(
            f"{impl:20s} {s['images_per_s']:9.0f} {s['images_per_s_median']:9.0f} {s['batch']:6d} "
            f"{s['images_per_pass']:7d} {quality_of[impl]:7.2%} {bg:>7s} {s['median_system_s'] * 1e3:7.0f} "
            f"{s['median_minor_faults']:7.0f}"
        )
    if "fp32" not in names:
        log(f"{'float':20s} {'':9s} {'':9s} {'':6s} {n:7d} {quality_of['float']:7.2%}")
    log(
        f"images/s = images / fastest of {args.rounds} interleaved passes (median pass in parentheses); "
        f"sys ms, faults: median system CPU time and minor page faults of this process per pass; "
        f"{INT8_INPUT}: the emulator on input quantized beforehand (not in the ratios)"
    )
    if accuracy is None:
        log("agree = top-1 agreement with the float model on the same images (no labels: not accuracy)")
    for impl in others:
        key = f"emulator_vs_{impl}"
        r, rm = ratios[key], ratios[key + "_median"]
        goal = goals.get(key)
        verdict = "" if goal is None else f"  goal >= {goal:g}x: {'met' if r >= goal else 'NOT met'}"
        log(f"{key:24s} {r:6.2f}x (median {rm:.2f}x){verdict}")
    log(f"emulator == simulation ({check_with}) on all {n} images (int8 outputs): {'yes' if bit_exact else 'NO'}")
    if fidelity:
        for impl, f in fidelity.items():
            log(
                f"{impl:14s} vs fp32: top-1 agreement {f['top1_agreement']:.1%} "
                f"[{f['top1_agreement_ci'][0]:.1%}, {f['top1_agreement_ci'][1]:.1%}], top-5 {f['top5_agreement']:.1%} "
                f"[{f['top5_agreement_ci'][0]:.1%}, {f['top5_agreement_ci'][1]:.1%}], KL {f['kl_mean']:.3f}, "
                f"logit SQNR {f['logit_sqnr_db']:.1f} dB (95% bootstrap intervals, n={f['n']})"
            )
    if sweep_result:
        log("batch sweep (images/s, best of 2):")
        for impl, row in sweep_result.items():
            log(f"  {impl:11s} " + "  ".join(f"{b}: {v:.0f}" for b, v in row.items()))
    if profiles:
        log("")
        log(format_profile("emulator", profiles["emulator"]))
        log(format_profile(f"torch int8 ({setup.engine})", profiles["fbgemm"]))
    disturbed = [impl for impl in names if (speed[impl]["max_background"] or 0) >= BUSY]
    if disturbed:
        log(
            f"note: other processes used >= {BUSY:.0%} of the CPUs during some passes of {', '.join(disturbed)}; "
            f"the fastest pass is the one least disturbed, but rerun on an idle machine to be sure"
        )

    if args.out:
        result = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["benchmarks/bench_emulator.py", *(sys.argv[1:] if argv is None else argv)]),
            "model": case.name,
            "title": case.title,
            "data": case.data,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "quantized_engine": setup.engine,
            "torch_quantization": setup.fbgemm_mode,
            "npuq": getattr(npuq, "__version__", None),
            "npuq_cpu_features": _jsonable(npuq.cpu_features()),
            "checkpoint": case.checkpoint,
            "quantize": setup.quantize,
            "calibration": setup.calibration,
            "zero_pads": setup.pads,
            "test_images": n,
            "simulation_images_per_pass": sim_n if "simulation" in names else None,
            "rounds": args.rounds,
            "speed": speed,
            "ratios": ratios,
            "goals": goals,
            "accuracy": accuracy,
            "agreement_with_fp32": agreement,
            "fidelity_vs_fp32": fidelity,
            "emulator_equals_simulation": bit_exact,
            "checked_with": check_with,
            "check_seconds": check_s,
            "sweep": sweep_result,
            "profile": profiles,
            "setup_seconds": setup.setup_s,
            "total_seconds": time.perf_counter() - t_start,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {args.out}")
    return 0 if bit_exact else 1


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


if __name__ == "__main__":
    sys.exit(main())
