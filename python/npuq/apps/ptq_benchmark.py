"""The post-training quantization benchmark: methods x weight bits x (weight-only, int8 activations) on the full
Fashion-MNIST test set, for the shipped MobileNet checkpoints. ``npuq ptq-bench`` runs it.

Writes ``results.json`` (every number), ``results.md`` (the tables), ``accuracy_vs_bits.png`` and
``channel_ranges.png`` (per-channel weight ranges of the worst depthwise layer before / after WESS).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from npuq.quant.api import evaluate, quantize
from npuq.quant.graph import Graph, prepare
from npuq.quant.weights import per_channel_ranges, quantize_weight

# name -> keyword arguments of npuq.quantize (weights, cle, bias_correction)
METHODS: dict[str, dict] = {
    "per_layer": dict(weights="per_layer"),
    "per_channel": dict(weights="per_channel"),
    "wess": dict(weights="wess"),
    "wess_mse": dict(weights="wess_mse"),
    "cle": dict(weights="per_layer", cle=True),
    "cle_bc": dict(weights="per_layer", cle=True, bias_correction=True),
    "cle_wess": dict(weights="wess", cle=True),
}
LABELS = {
    "per_layer": "per-layer",
    "per_channel": "per-channel",
    "wess": "WESS",
    "wess_mse": "WESS-MSE",
    "cle": "CLE",
    "cle_bc": "CLE+BC",
    "cle_wess": "CLE+WESS",
}
DEFAULT_CHECKPOINTS = (
    "mobilenet_v1_w0.5_sgd",
    "mobilenet_v2_w0.5_sgd",
    "mobilenet_v1_w0.5_adam-l2",
    "mobilenet_v2_w0.5_adam-l2",
)


@dataclass
class BenchConfig:
    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    methods: tuple[str, ...] = tuple(METHODS)
    bits: tuple[int, ...] = (8, 6, 5, 4)
    modes: tuple[str, ...] = ("weight_only", "w_a8")
    activations: str = "mse"  # activation observer of the integer (W8A8 ... W2A8) mode
    calib_batches: int = 4
    calib_batch_size: int = 256
    eval_batch_size: int = 250
    test_limit: int | None = None  # None: the full 10k test set
    rounding: str = "double"
    threads: int | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        from npuq._shipped import listing
        from npuq.models.checkpoints import list_checkpoints

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        bad_bits = [b for b in self.bits if not isinstance(b, int) or not 2 <= b <= 8]
        if bad_bits:
            raise ValueError(f"bits must be ints in [2, 8], got {bad_bits}")
        bad_modes = [m for m in self.modes if m not in ("weight_only", "w_a8")]
        if bad_modes:
            raise ValueError(f"modes must be 'weight_only' and/or 'w_a8', got {bad_modes}")
        available = set(list_checkpoints())
        missing = [c for c in self.checkpoints if c not in available and not Path(c).is_file()]
        if missing:
            raise ValueError(f"checkpoint(s) {missing} not found; available: {listing(sorted(available))}")


def wa8_label(bits) -> str:
    """The integer mode's name for these weight widths: "W8A8 / W6A8 / W4A8" (widest first)."""
    return " / ".join(f"W{b}A8" for b in sorted(set(bits), reverse=True))


def _mode_label(mode: str, bits: int) -> str:
    return f"W{bits} (float activations)" if mode == "weight_only" else f"W{bits}A8"


def worst_depthwise_layer(graph: Graph):
    """The depthwise layer whose per-channel ranges spread the most (max / min over non-zero channels)."""
    best, best_ratio = None, -1.0
    for node in graph.layers():
        if not node.is_depthwise:
            continue
        r = per_channel_ranges(node.weight)
        nz = r[r > 0]
        ratio = float(nz.max() / nz.min()) if nz.numel() else 0.0
        if ratio > best_ratio:
            best, best_ratio = node, ratio
    return best, best_ratio


def _range_stats(graph: Graph) -> dict:
    rows = []
    for node in graph.layers():
        r = per_channel_ranges(node.weight)
        nz = r[r > 0]
        rows.append(
            dict(
                path=node.path,
                depthwise=node.is_depthwise,
                channels=int(r.numel()),
                zero_channels=int((r == 0).sum()),
                range_ratio=float(nz.max() / nz.min()) if nz.numel() else float("nan"),
                over_2_4=int((nz.max() / nz > 16).sum()) if nz.numel() else 0,
            )
        )
    return dict(
        layers=rows,
        max_range_ratio=max((r["range_ratio"] for r in rows if math.isfinite(r["range_ratio"])), default=float("nan")),
        layers_over_2_4=sum(1 for r in rows if r["range_ratio"] > 16),
    )


def _load_data(cfg: BenchConfig):
    from npuq.data.fashion_mnist import fashion_mnist_loader

    test = list(fashion_mnist_loader("test", batch_size=cfg.eval_batch_size, limit=cfg.test_limit))
    calib = list(
        fashion_mnist_loader(
            "train",
            batch_size=cfg.calib_batch_size,
            shuffle=True,
            seed=1234,
            limit=cfg.calib_batches * cfg.calib_batch_size,
        )
    )
    return test, calib


def run_checkpoint(cfg: BenchConfig, ckpt: str, tick=None, threads: int | None = None) -> dict:
    """Every (mode, bits, method) of one checkpoint; ``tick(label)`` is called after each run."""
    from npuq.models.checkpoints import load_checkpoint
    from npuq.runtime import set_num_threads

    if threads:
        torch.set_num_threads(threads)
        set_num_threads(threads)
    test, calib = _load_data(cfg)
    model, meta = load_checkpoint(ckpt)
    graph = prepare(model, calib[0][0])
    fp32 = evaluate(graph.run_float, test)
    worst, worst_ratio = worst_depthwise_layer(graph)
    stats = meta.get("dead_channel_stats") or {}
    entry = dict(
        metadata={k: v for k, v in meta.items() if k != "dead_channel_stats"},
        dead_channels=stats.get("summary"),
        fp32=fp32,
        ranges=_range_stats(graph),
        worst_depthwise=dict(path=worst.path if worst else None, range_ratio=worst_ratio),
        results=[],
    )
    if worst is not None:
        entry["worst_depthwise"]["ranges"] = per_channel_ranges(worst.weight).tolist()
        qw = quantize_weight(worst.weight, "wess", 8)
        entry["worst_depthwise"]["ranges_after_wess"] = (
            per_channel_ranges(worst.weight) * (2.0 ** qw.shift.double())
        ).tolist()
        entry["worst_depthwise"]["shifts"] = qw.shift.tolist()
    for mode in cfg.modes:
        for bits in cfg.bits:
            for method in cfg.methods:
                t0 = time.perf_counter()
                acts = cfg.activations if mode == "w_a8" else None
                row = dict(mode=mode, bits=bits, method=method)
                try:
                    qmodel = quantize(
                        graph,
                        calib,
                        bits=bits,
                        activations=acts,
                        calib_batches=None,
                        rounding=cfg.rounding,
                        **METHODS[method],
                    )
                    row["accuracy"] = evaluate(qmodel, test)
                    row["mean_weight_sqnr_db"] = _mean_finite([r.sqnr_db for r in qmodel.report.layers])
                    row["min_weight_sqnr_db"] = min(r.sqnr_db for r in qmodel.report.layers)
                except (OverflowError, ValueError) as exc:  # reported, never hidden
                    row["accuracy"] = None
                    row["error"] = f"{type(exc).__name__}: {exc}"
                row["seconds"] = time.perf_counter() - t0
                entry["results"].append(row)
                if tick is not None:
                    tick(f"{ckpt} {_mode_label(mode, bits)} {LABELS[method]}")
    return entry


def _worker(cfg: BenchConfig, ckpt: str, queue, threads: int) -> dict:
    return run_checkpoint(cfg, ckpt, tick=queue.put, threads=threads)


def run_benchmark(cfg: BenchConfig, out_dir: str | Path, progress: bool = True, workers: int | None = None) -> dict:
    """Run the benchmark and write its files. ``workers`` processes (default: one per core, at most one per
    checkpoint) each take whole checkpoints with one thread: small convolutions scale better that way."""
    import multiprocessing as mp
    import os
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = len(cfg.checkpoints) * len(cfg.methods) * len(cfg.bits) * len(cfg.modes)
    if workers is None:
        workers = cfg.threads or os.cpu_count() or 1
    workers = max(1, min(workers, len(cfg.checkpoints)))
    results = dict(
        config={k: v for k, v in cfg.__dict__.items()},
        models={},
        workers=workers,
        environment=dict(
            torch=torch.__version__, cpus=os.cpu_count(), machine=platform.machine(), python=platform.python_version()
        ),
    )
    started = time.perf_counter()
    bar = tqdm(total=runs, desc="PTQ benchmark", unit="run", disable=not progress)

    def tick(label):
        bar.set_postfix_str(label)
        bar.update(1)

    try:  # the bar ends its line before an error is printed
        if workers == 1:
            for ckpt in cfg.checkpoints:
                results["models"][ckpt] = run_checkpoint(cfg, ckpt, tick, threads=cfg.threads)
        else:
            ctx = mp.get_context("spawn")  # no fork after torch / OpenMP threads exist
            with mp.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                queue = manager.Queue()
                futures = {ckpt: pool.submit(_worker, cfg, ckpt, queue, 1) for ckpt in cfg.checkpoints}
                done = 0
                while done < runs:
                    try:
                        tick(queue.get(timeout=1.0))
                        done += 1
                    except queue_module.Empty:
                        failed = [f for f in futures.values() if f.done() and f.exception() is not None]
                        if failed:  # a worker died: report its error instead of waiting forever
                            raise failed[0].exception() from None
                for ckpt, fut in futures.items():
                    results["models"][ckpt] = fut.result()
    finally:
        bar.close()
    results["test_images"] = _count_test(cfg)
    results["seconds"] = time.perf_counter() - started
    results["summary"] = summarize(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(to_markdown(results))
    plot_results(results, out)
    return results


def _count_test(cfg: BenchConfig) -> int:
    from npuq.data.fashion_mnist import load_fashion_mnist

    n = len(load_fashion_mnist("test")[1])
    return n if cfg.test_limit is None else min(n, cfg.test_limit)


def _mean_finite(xs):
    xs = [x for x in xs if math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _lookup(entry, mode, bits, method):
    for r in entry["results"]:
        if r["mode"] == mode and r["bits"] == bits and r["method"] == method:
            return r.get("accuracy")
    return None


def summarize(results: dict) -> dict:
    """The claims of the issue, measured: WESS vs per-channel and FP32 at 8 bits, and the gap recovered."""
    out = {}
    for name, entry in results["models"].items():
        s = {}
        for mode in ("weight_only", "w_a8"):
            for bits in sorted({r["bits"] for r in entry["results"]}, reverse=True):
                pl, pc, ws = (_lookup(entry, mode, bits, m) for m in ("per_layer", "per_channel", "wess"))
                if None in (pl, pc, ws):
                    continue
                gap = pc - pl
                s[f"{mode}_w{bits}"] = dict(
                    per_layer=pl,
                    per_channel=pc,
                    wess=ws,
                    fp32=entry["fp32"],
                    wess_minus_per_channel_points=100 * (ws - pc),
                    wess_minus_fp32_points=100 * (ws - entry["fp32"]),
                    gap_points=100 * gap,
                    gap_recovered=(ws - pl) / gap if gap > 0.005 else None,
                )
        out[name] = s
    return out


def to_markdown(results: dict) -> str:
    lines = [
        "# Post-training quantization on Fashion-MNIST",
        "",
        f"Full test set: {results['test_images']} images. Accuracy (%) of each method; weight bits per column.",
        f"Activation observer of the int8-activation mode: `{results['config']['activations']}`, "
        f"{results['config']['calib_batches']} calibration batches of {results['config']['calib_batch_size']}.",
        f"Total time {results['seconds']:.0f} s on {results['environment']['cpus']} CPUs "
        f"({results['workers']} worker process(es)).",
        "",
    ]
    for name, entry in results["models"].items():
        bits = sorted({r["bits"] for r in entry["results"]}, reverse=True)
        methods = list(dict.fromkeys(r["method"] for r in entry["results"]))
        dc = entry.get("dead_channels") or {}
        lines += [
            f"## {name}",
            "",
            f"FP32: **{100 * entry['fp32']:.2f}%**. Largest per-channel range ratio after BN "
            f"folding: {entry['ranges']['max_range_ratio']:.3g} (layers with a ratio > 2^4: "
            f"{entry['ranges']['layers_over_2_4']}); worst depthwise layer `{entry['worst_depthwise']['path']}` "
            f"({entry['worst_depthwise']['range_ratio']:.3g}).",
            "",
        ]
        if dc:
            lines += [
                f"Dead channels (BN running_var < {dc.get('var_threshold')} or activation always 0): "
                f"{dc.get('dead')} / {dc.get('channels')} in {dc.get('layers_with_dead')} / {dc.get('layers')} "
                f"layers; largest BN fold factor {dc.get('max_fold', float('nan')):.1f}.",
                "",
            ]
        for mode in ("weight_only", "w_a8"):
            rows = [r for r in entry["results"] if r["mode"] == mode]
            if not rows:
                continue
            title = (
                "weight-only (float activations)"
                if mode == "weight_only"
                else f"{wa8_label(bits)}: int8 activations (integer simulation)"
            )
            lines += [
                f"### {title}",
                "",
                "| method | " + " | ".join(f"W{b}" for b in bits) + " |",
                "|---|" + "---|" * len(bits),
            ]
            for m in methods:
                cells = []
                for b in bits:
                    acc = _lookup(entry, mode, b, m)
                    cells.append("error" if acc is None else f"{100 * acc:.2f}")
                lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
            lines.append("")
        summ = results.get("summary", {}).get(name, {})
        if summ:
            lines += [
                "| setting | WESS - per-channel (points) | WESS - FP32 (points) | per-layer gap (points) | "
                "gap recovered by WESS |",
                "|---|---|---|---|---|",
            ]
            for key, v in summ.items():
                rec = "-" if v["gap_recovered"] is None else f"{100 * v['gap_recovered']:.0f}%"
                lines.append(
                    f"| {key} | {v['wess_minus_per_channel_points']:+.2f} | {v['wess_minus_fp32_points']:+.2f} | "
                    f"{v['gap_points']:.2f} | {rec} |"
                )
            lines.append("")
    return "\n".join(lines)


def plot_results(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"].items())
    modes = [m for m in ("weight_only", "w_a8") if any(r["mode"] == m for _, e in models for r in e["results"])]
    fig, axes = plt.subplots(len(modes), len(models), figsize=(4.2 * len(models), 3.6 * len(modes)), squeeze=False)
    for j, (name, entry) in enumerate(models):
        for i, mode in enumerate(modes):
            ax = axes[i][j]
            for m in dict.fromkeys(r["method"] for r in entry["results"]):
                pts = sorted(
                    (r["bits"], 100 * r["accuracy"])
                    for r in entry["results"]
                    if r["mode"] == mode and r["method"] == m and r.get("accuracy") is not None
                )
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=LABELS.get(m, m))
            ax.axhline(100 * entry["fp32"], color="k", ls="--", lw=0.8, label="FP32")
            bits = [r["bits"] for r in entry["results"] if r["mode"] == mode]
            ax.set_title(f"{name}\n{'weight-only' if mode == 'weight_only' else wa8_label(bits)}", fontsize=9)
            ax.set_xlabel("weight bits")
            ax.set_ylabel("top-1 (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_bits.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False)
    for j, (name, entry) in enumerate(models):
        ax = axes[0][j]
        wd = entry["worst_depthwise"]
        if wd.get("ranges"):
            xs = range(len(wd["ranges"]))
            ax.semilogy(xs, [max(v, 1e-12) for v in wd["ranges"]], ".", label="max|W_c| (BN folded)")
            ax.semilogy(xs, [max(v, 1e-12) for v in wd["ranges_after_wess"]], ".", label="x 2^s_c (WESS)")
            ax.set_title(f"{name}\n{wd['path']}", fontsize=8)
            ax.set_xlabel("output channel")
            ax.set_ylabel("per-channel range")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "channel_ranges.png", dpi=120)
    plt.close(fig)


__all__ = ["BenchConfig", "METHODS", "run_benchmark", "summarize", "to_markdown"]
