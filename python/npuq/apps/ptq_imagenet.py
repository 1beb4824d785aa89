"""The post-training quantization benchmark on a real pretrained ImageNet network.

``npuq ptq-bench --config configs/ptq_imagenet.toml`` runs it: EfficientNet-Lite0 with its published
weights (the ``imagenet`` extra), every method x weight bits x (weight-only, int8 activations), judged against the
FP32 model on real photographs (:mod:`npuq.data.photos`; no ImageNet labels exist offline, so the numbers
are fidelity to FP32: top-1 / top-5 agreement, mean KL, logit SQNR, each with its bootstrap spread,
:mod:`npuq.fidelity`). Calibration and evaluation crops come from disjoint photographs.

It also reports the per-channel range statistics that make this model hard for per-layer weights (dead
channels, channels beyond the reach of a 4-bit shift), what the quantizer's bias policy had to change,
the paired comparison of the best WESS variant with the best per-channel variant at each bit width, rows
of label-free quantization-aware distillation (from ``scripts/qat_imagenet.py``, when its results file is
named), and an end-to-end check of the NPU path: the best W8A8 WESS model compiled, run by the emulator on
every evaluation crop and compared with the simulation, with golden vectors exported and verified.

Writes ``results.json``, ``results.md``, ``fidelity_vs_bits.png`` and ``channel_ranges.png``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npuq.apps.ptq_benchmark import wa8_label
from npuq.fidelity import collect_logits, fidelity, paired_difference
from npuq.quant.api import quantize
from npuq.quant.graph import Graph, prepare
from npuq.quant.weights import per_channel_ranges, quantize_weight

# name -> (family, keyword arguments of npuq.quantize). The family decides which variants the summary
# compares: WESS variants (one scale per layer + 4-bit shifts) against per-channel variants.
METHODS: dict[str, tuple[str, dict]] = {
    "per_layer": ("per_layer", dict(weights="per_layer")),
    "per_channel": ("per_channel", dict(weights="per_channel")),
    "per_channel_bc": ("per_channel", dict(weights="per_channel", bias_correction=True)),
    "wess": ("wess", dict(weights="wess")),
    "wess_bc": ("wess", dict(weights="wess", bias_correction=True)),
    "wess_mse_bc": ("wess", dict(weights="wess_mse", bias_correction=True)),
    "cle_wess": ("wess", dict(weights="wess", cle=True)),
    # data-aware: the WESS grid chosen for each layer's output error, adaptive rounding on top
    "wess_output": ("wess", dict(weights="wess_output")),
    "wess_output_bc": ("wess", dict(weights="wess_output", bias_correction=True)),
    "wess_output_ada_bc": ("wess", dict(weights="wess_output", adaround=True, bias_correction=True)),
    # the same adaptive rounding on the per-channel grid, so that the comparison stays fair
    "per_channel_ada_bc": ("per_channel", dict(weights="per_channel", adaround=True, bias_correction=True)),
}
LABELS = {
    "per_layer": "per-layer",
    "per_channel": "per-channel",
    "per_channel_bc": "per-channel+BC",
    "wess": "WESS",
    "wess_bc": "WESS+BC",
    "wess_mse_bc": "WESS-MSE+BC",
    "cle_wess": "CLE+WESS",
    "wess_output": "WESS-output",
    "wess_output_bc": "WESS-output+BC",
    "wess_output_ada_bc": "WESS-output+AdaRound+BC",
    "per_channel_ada_bc": "per-channel+AdaRound+BC",
}
MODES = ("weight_only", "w_a8")


@dataclass
class ImageNetBenchConfig:
    task: str = "imagenet"
    model: str = "efficientnet_lite0"
    methods: tuple[str, ...] = tuple(METHODS)
    bits: tuple[int, ...] = (8, 6, 4)
    modes: tuple[str, ...] = MODES
    activations: str = "mse"
    calib_crops: int = 256
    calib_batch_size: int = 32
    eval_crops: int = 512
    eval_batch_size: int = 64
    seed: int = 0
    rounding: str = "double"
    qat: str | None = None  # results.json of scripts/qat_imagenet.py, shown as extra rows
    npu_check: bool = True  # compile the best W8A8 WESS model, emulate it, export golden vectors
    threads: int | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.task != "imagenet":
            raise ValueError(f"task must be 'imagenet', got {self.task!r}")
        if self.model != "efficientnet_lite0":
            raise ValueError(
                f"model must be 'efficientnet_lite0' (the pretrained network available offline), got {self.model!r}"
            )
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        bad = [b for b in self.bits if not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8]
        if bad:
            raise ValueError(f"bits must be ints in [2, 8], got {bad}")
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes:
            raise ValueError(f"modes must be 'weight_only' and/or 'w_a8', got {bad_modes}")
        for name in ("calib_crops", "calib_batch_size", "eval_crops", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.qat is not None and not Path(self.qat).is_file():
            raise ValueError(f"qat results file {self.qat} does not exist (scripts/qat_imagenet.py writes it)")


# ------------------------------------------------------------------------------------------ pieces


def load_task(cfg: ImageNetBenchConfig, progress: bool = False):
    """The pretrained model and the preprocessed calibration / evaluation crops."""
    from npuq.data.photos import photo_crops
    from npuq.models.efficientnet import efficientnet_lite0, preprocess

    model = efficientnet_lite0(pretrained=True)
    calib = preprocess(photo_crops("calibration", cfg.calib_crops, seed=cfg.seed, progress=progress))
    evaluation = preprocess(photo_crops("evaluation", cfg.eval_crops, seed=cfg.seed, progress=progress))
    return model, list(torch.split(calib, cfg.calib_batch_size)), evaluation


def channel_statistics(graph: Graph, shift_bits: int = 4) -> dict:
    """Per-channel weight ranges after batch-norm folding: how far below its layer each channel lies.

    A channel more than ``2^(2^shift_bits - 1)`` below its layer's range is out of the 4-bit shift's
    reach (WESS quantizes it with a coarser step than per-channel would); a channel 10^6 or more below
    is dead for all practical purposes (its output is its bias).
    """
    reach = 2.0 ** ((1 << shift_bits) - 1)
    rows = []
    for node in graph.layers():
        r = per_channel_ranges(node.weight)
        top = float(r.max())
        nz = r[r > 0]
        rows.append(
            dict(
                path=node.path,
                depthwise=node.is_depthwise,
                channels=int(r.numel()),
                zero=int((r == 0).sum()),
                beyond_shift_reach=int(((r > 0) & (r * reach < top)).sum()),
                below_1e6=int(((r > 0) & (r * 1e6 < top)).sum()),
                range_ratio=float(top / float(nz.min())) if nz.numel() else float("nan"),
            )
        )
    finite = [r["range_ratio"] for r in rows if math.isfinite(r["range_ratio"])]
    return dict(
        layers=rows,
        channels=sum(r["channels"] for r in rows),
        zero=sum(r["zero"] for r in rows),
        beyond_shift_reach=sum(r["beyond_shift_reach"] for r in rows),
        below_1e6=sum(r["below_1e6"] for r in rows),
        layers_with_beyond_reach=sum(1 for r in rows if r["beyond_shift_reach"]),
        max_range_ratio=max(finite, default=float("nan")),
    )


def _worst_depthwise(graph: Graph) -> dict:
    best, ratio = None, -1.0
    for node in graph.layers():
        if node.is_depthwise:
            r = per_channel_ranges(node.weight)
            nz = r[r > 0]
            v = float(nz.max() / nz.min()) if nz.numel() else 0.0
            if v > ratio:
                best, ratio = node, v
    if best is None:
        return {}
    r = per_channel_ranges(best.weight)
    qw = quantize_weight(best.weight, "wess", 8)
    return dict(
        path=best.path,
        range_ratio=ratio,
        ranges=r.tolist(),
        ranges_after_wess=(r * 2.0 ** qw.shift.double()).tolist(),
        shifts=qw.shift.tolist(),
    )


def _bias_changes(report) -> int | None:
    """How many channels the quantizer's bias policy changed (None where the report has no such field)."""
    changes = getattr(report, "bias_adjustments", None)
    return len(changes) if changes is not None else None


def run_one(
    graph: Graph,
    calib,
    evaluation,
    reference,
    cfg: ImageNetBenchConfig,
    mode: str,
    bits: int,
    method: str,
    keep_logits: dict | None = None,
) -> tuple[dict, object]:
    """One (mode, bits, method) run: quantize, evaluate fidelity on the evaluation crops."""
    row = dict(mode=mode, bits=bits, method=method, family=METHODS[method][0])
    t0 = time.perf_counter()
    qmodel = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            qmodel = quantize(
                graph,
                calib,
                bits=bits,
                activations=cfg.activations if mode == "w_a8" else None,
                calib_batches=None,
                rounding=cfg.rounding,
                **METHODS[method][1],
            )
        row["quantize_seconds"] = time.perf_counter() - t0
        row["warnings"] = sorted(
            {str(w.message).splitlines()[0][:200] for w in caught if not issubclass(w.category, DeprecationWarning)}
        )[:10]
        logits = collect_logits(qmodel, evaluation, batch_size=cfg.eval_batch_size)
        row.update(fidelity(reference, logits))
        row["bias_channels_changed"] = _bias_changes(qmodel.report)
        eq = getattr(qmodel.report, "equalization", None)
        if eq:
            row["equalization"] = {
                k: v for k, v in eq.items() if k in ("pairs", "skipped", "relu6_replaced", "float_fidelity")
            }
        if keep_logits is not None:
            keep_logits[(mode, bits, method)] = logits
    except Exception as exc:  # reported in the table, never hidden: "nothing crashes" is one of the claims
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    row["seconds"] = time.perf_counter() - t0
    return row, qmodel


def summarize(results: dict, logits: dict, reference: torch.Tensor) -> dict:
    """Best WESS variant against best per-channel variant per (mode, bits), by top-1 agreement and by KL,
    with the paired bootstrap interval of each difference; and the per-layer -> per-channel gap each
    WESS variant recovers."""
    rows = [r for r in results["results"] if "error" not in r]
    out = {}
    for mode in MODES:
        for bits in sorted({r["bits"] for r in rows}, reverse=True):
            sel = [r for r in rows if r["mode"] == mode and r["bits"] == bits]
            wess = [r for r in sel if r["family"] == "wess"]
            pc = [r for r in sel if r["family"] == "per_channel"]
            pl = next((r for r in sel if r["method"] == "per_layer"), None)
            if not wess or not pc:
                continue
            entry = {}
            for metric, better in (("top1_agreement", max), ("kl_mean", min)):
                bw = better(wess, key=lambda r: r[metric])
                bp = better(pc, key=lambda r: r[metric])
                d = paired_difference(reference, logits[(mode, bits, bw["method"])], logits[(mode, bits, bp["method"])])
                diff, ci = d["difference"][metric], d["ci"][metric]
                wins = diff > 0 if metric == "top1_agreement" else diff < 0
                verdict = (
                    ("WESS better" if wins else "per-channel better")
                    if d["significant"][metric]
                    else "within the spread"
                )
                entry[metric] = dict(
                    best_wess=bw["method"],
                    wess=bw[metric],
                    best_per_channel=bp["method"],
                    per_channel=bp[metric],
                    difference=diff,
                    ci=ci,
                    verdict=verdict,
                )
            if pl is not None:
                bp = max(pc, key=lambda r: r["top1_agreement"])
                gap = bp["top1_agreement"] - pl["top1_agreement"]
                entry["gap_recovered"] = {
                    r["method"]: ((r["top1_agreement"] - pl["top1_agreement"]) / gap if gap > 0.01 else None)
                    for r in wess
                }
                entry["per_layer_gap_points"] = 100 * gap
            out[f"{mode}_w{bits}"] = entry
    return out


def npu_check(qmodel, evaluation: torch.Tensor, out: Path, method: str, progress: bool = False) -> dict:
    """Compile, save, emulate every evaluation crop and compare with the simulation; export golden vectors
    of the first crop and verify them."""
    import npuq
    from npuq.npu.vectors import export_vectors, verify

    t0 = time.perf_counter()
    program = npuq.compile(qmodel)
    path = out / "efficientnet_lite0_w8a8.npuq"
    program.save(path)
    emulator = npuq.Emulator(npuq.load_program(path))  # the saved file, validated on load
    emulated = np.asarray(emulator.run(evaluation, progress=progress))
    simulated = qmodel.run_native(evaluation).numpy()
    independent = qmodel.run_integer(evaluation[:64]).numpy()  # torch arithmetic, written from the spec
    vec_dir = out / "vectors"
    export_vectors(program, evaluation[:1], vec_dir, overwrite=True, source="photos:evaluation:1")
    verdict = verify(vec_dir, vec_dir)  # the golden set checked against itself: manifest, digests, files
    return dict(
        method=method,
        program=str(path),
        program_bytes=path.stat().st_size,
        ops=len(program.ops),
        images=int(evaluation.shape[0]),
        images_equal=int((emulated.astype(np.int64) == simulated).all(axis=1).sum()),
        equal_to_torch_arithmetic_on_first_64=bool(np.array_equal(emulated[:64].astype(np.int64), independent)),
        vectors=str(vec_dir),
        vectors_verified=bool(verdict.passed),
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------------------------- driver


def run_benchmark(cfg: ImageNetBenchConfig, out_dir: str | Path, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from npuq.runtime import set_num_threads

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, calib, evaluation = load_task(cfg, progress=progress)
    graph = prepare(model, calib[0])
    reference = collect_logits(model, evaluation, batch_size=cfg.eval_batch_size, progress=progress, desc="FP32")
    prepared = collect_logits(graph.run_float, evaluation, batch_size=cfg.eval_batch_size)
    results: dict[str, Any] = dict(
        config=asdict(cfg),
        model=cfg.model,
        graph_notes=list(graph.notes),
        prepared_graph_vs_model=fidelity(reference, prepared, bootstrap=0),
        channels=channel_statistics(graph),
        worst_depthwise=_worst_depthwise(graph),
        fp32_prediction_spread=dict(
            distinct_top1=int(reference.argmax(1).unique().numel()),
            mean_max_probability=float(reference.softmax(1).max(1).values.mean()),
        ),
        environment=dict(
            torch=torch.__version__,
            cpus=os.cpu_count(),
            machine=platform.machine(),
            processor=_cpu_name(),
            python=platform.python_version(),
        ),
        results=[],
    )
    runs = [(mode, bits, method) for mode in cfg.modes for bits in cfg.bits for method in cfg.methods]
    logits: dict = {}
    best_w8a8 = None
    bar = tqdm(runs, desc="PTQ on EfficientNet-Lite0", unit="run", disable=not progress)
    if cfg.qat:
        results["qat"] = json.loads(Path(cfg.qat).read_text())
    try:  # the bar ends its line before an error is printed
        for i, (mode, bits, method) in enumerate(bar):
            bar.set_postfix_str(f"{_mode_label(mode, bits)} {LABELS.get(method, method)}")
            row, qmodel = run_one(graph, calib, evaluation, reference, cfg, mode, bits, method, logits)
            results["results"].append(row)
            if (
                mode == "w_a8"
                and bits == 8
                and row["family"] == "wess"
                and "error" not in row
                and (best_w8a8 is None or row["top1_agreement"] > best_w8a8[0]["top1_agreement"])
            ):
                best_w8a8 = (row, qmodel)
            last_w8a8 = i + 1 == len(runs) or runs[i + 1][:2] != ("w_a8", 8)
            if (
                cfg.npu_check
                and best_w8a8 is not None
                and "npu" not in results
                and mode == "w_a8"
                and bits == 8
                and last_w8a8
            ):
                results["npu"] = npu_check(best_w8a8[1], evaluation, out, best_w8a8[0]["method"], progress=progress)
                best_w8a8 = None  # its simulation holds the calibration state: let it go
            # tables written after every run, so that an interrupted benchmark still leaves what it measured
            results["summary"] = summarize(results, logits, reference)
            results["seconds"] = time.perf_counter() - started
            (out / "results.partial.json").write_text(json.dumps(results, indent=1, default=_json_default))
            (out / "results.md").write_text(to_markdown(results))
    finally:
        bar.close()
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "results.partial.json").unlink(missing_ok=True)
    (out / "results.md").write_text(to_markdown(results))
    plot_results(results, out)
    return results


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (torch.Tensor, np.ndarray)):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def _mode_label(mode: str, bits: int) -> str:
    return f"W{bits} (float activations)" if mode == "weight_only" else f"W{bits}A8"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def to_markdown(results: dict) -> str:
    cfg = results["config"]
    ch = results["channels"]
    env = results["environment"]
    lines = [
        "# Post-training quantization of a pretrained ImageNet network (EfficientNet-Lite0)",
        "",
        f"Fidelity to the FP32 model on {cfg['eval_crops']} crops of real photographs (evaluation photographs, "
        f"disjoint from the {cfg['calib_crops']} calibration crops). No ImageNet labels exist offline: top-1 / top-5 "
        f"agreement with FP32, mean KL(FP32 || quantized) and logit SQNR, not accuracy. Brackets: 95% bootstrap "
        f"interval over the crops (one crop is {100 / cfg['eval_crops']:.2f} points of agreement).",
        "",
        f"Activation observer of the int8-activation mode: `{cfg['activations']}`; rounding `{cfg['rounding']}`. "
        f"Total time {results.get('seconds', 0):.0f} s on {env['cpus']} CPUs ({env['processor']}).",
        "",
        "Preparation: " + "; ".join(results["graph_notes"]) + ". Prepared graph vs the torch model: top-1 "
        f"agreement {_pct(results['prepared_graph_vs_model']['top1_agreement'])}%, logit SQNR "
        f"{results['prepared_graph_vs_model']['logit_sqnr_db']:.0f} dB.",
        "",
        f"Channels after batch-norm folding: {ch['channels']} in {len(ch['layers'])} layers; all-zero {ch['zero']}; "
        f"more than 2^15 below their layer's range (beyond a 4-bit shift) {ch['beyond_shift_reach']} in "
        f"{ch['layers_with_beyond_reach']} layers; 10^6 or more below {ch['below_1e6']}. Largest range ratio "
        f"{ch['max_range_ratio']:.3g}; worst depthwise layer `{results['worst_depthwise'].get('path')}` "
        f"({results['worst_depthwise'].get('range_ratio', float('nan')):.3g}).",
        "",
    ]
    rows = results["results"]
    bits = sorted({r["bits"] for r in rows}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for mode in MODES:
        sel = [r for r in rows if r["mode"] == mode]
        if not sel:
            continue
        title = (
            "Weight-only (float activations)"
            if mode == "weight_only"
            else f"{wa8_label(bits)}: int8 activations (integer simulation)"
        )
        lines += [
            f"## {title}",
            "",
            "Top-1 agreement % [95% interval] / mean KL per weight bit width.",
            "",
            "| method | " + " | ".join(f"W{b}" if mode == "weight_only" else f"W{b}A8" for b in bits) + " |",
            "|---|" + "---|" * len(bits),
        ]
        for m in methods:
            cells = []
            for b in bits:
                r = next((x for x in sel if x["method"] == m and x["bits"] == b), None)
                if r is None:
                    cells.append("")
                elif "error" in r:
                    cells.append("error")
                else:
                    lo, hi = r.get("top1_agreement_ci", [float("nan")] * 2)
                    cells.append(
                        f"{100 * r['top1_agreement']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] / {r['kl_mean']:.3f}"
                    )
            lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        errors = [r for r in sel if "error" in r]
        lines += (
            [""]
            + [
                f"- error in {LABELS.get(r['method'], r['method'])} {_mode_label(mode, r['bits'])}: `{r['error']}`"
                for r in errors
            ]
            + ([""] if errors else [])
        )
    if results.get("summary"):
        lines += [
            "## Best WESS variant vs best per-channel variant",
            "",
            "Differences are WESS minus per-channel on the same crops, with the 95% interval of a paired "
            "bootstrap; a difference whose interval contains 0 is within the spread, not a win.",
            "",
            "| setting | metric | best WESS | best per-channel | difference [95%] | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for key, e in results["summary"].items():
            for metric, scale, fmt in (("top1_agreement", 100, "{:+.1f}"), ("kl_mean", 1, "{:+.4f}")):
                v = e[metric]
                val = (lambda x: f"{100 * x:.1f}%") if metric == "top1_agreement" else (lambda x: f"{x:.4f}")
                lines.append(
                    f"| {key} | {metric} | {LABELS.get(v['best_wess'], v['best_wess'])} {val(v['wess'])} | "
                    f"{LABELS.get(v['best_per_channel'], v['best_per_channel'])} {val(v['per_channel'])} | "
                    f"{fmt.format(scale * v['difference'])} [{fmt.format(scale * v['ci'][0])}, "
                    f"{fmt.format(scale * v['ci'][1])}] | {v['verdict']} |"
                )
        lines += [
            "",
            "Per-layer -> per-channel gap (top-1 agreement) recovered by each WESS variant:",
            "",
            "| setting | gap (points) | "
            + " | ".join(LABELS.get(m, m) for m in methods if METHODS[m][0] == "wess")
            + " |",
            "|---|---|" + "---|" * sum(1 for m in methods if METHODS[m][0] == "wess"),
        ]
        for key, e in results["summary"].items():
            rec = e.get("gap_recovered")
            if rec is None:
                continue
            cells = ["-" if rec.get(m) is None else f"{100 * rec[m]:.0f}%" for m in methods if METHODS[m][0] == "wess"]
            lines.append(f"| {key} | {e['per_layer_gap_points']:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    changed = [r for r in rows if r.get("bias_channels_changed")]
    if changed:
        lines += [
            "Bias policy: channels whose weight scale was coarsened so that the bias stays exact in int32: "
            + ", ".join(
                f"{LABELS.get(r['method'], r['method'])} {_mode_label(r['mode'], r['bits'])}: "
                f"{r['bias_channels_changed']}"
                for r in changed
            )
            + ".",
            "",
        ]
    if results.get("qat"):
        lines += [
            "## Label-free quantization-aware distillation",
            "",
            "From `scripts/qat_imagenet.py` (the FP32 model as teacher, calibration photographs only):",
            "",
            "```",
            json.dumps(results["qat"].get("summary", results["qat"]), indent=1, default=str)[:3000],
            "```",
            "",
        ]
    npu = results.get("npu")
    if npu:
        lines += [
            "## On the NPU path",
            "",
            f"Best W8A8 WESS variant ({LABELS.get(npu['method'], npu['method'])}) compiled to "
            f"`{Path(npu['program']).name}` ({npu['ops']} ops, {npu['program_bytes']} bytes); the emulator's "
            f"int8 logits equal the simulation's on {npu['images_equal']} of {npu['images']} crops "
            f"(and the torch-arithmetic simulation on the first 64: {npu['equal_to_torch_arithmetic_on_first_64']}); "
            f"golden vectors of one crop exported to `vectors/` and verified: {npu['vectors_verified']}.",
            "",
        ]
    return "\n".join(lines)


def plot_results(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["results"] if "error" not in r]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    if modes:
        fig, axes = plt.subplots(2, len(modes), figsize=(5.2 * len(modes), 7.0), squeeze=False)
        for j, mode in enumerate(modes):
            for m in dict.fromkeys(r["method"] for r in rows):
                pts = sorted((r["bits"], r) for r in rows if r["mode"] == mode and r["method"] == m)
                if not pts:
                    continue
                xs = [b for b, _ in pts]
                style = "-" if METHODS[m][0] == "wess" else "--"
                agree = [100 * r["top1_agreement"] for _, r in pts]
                err = [
                    [100 * (r["top1_agreement"] - r["top1_agreement_ci"][0]) for _, r in pts],
                    [100 * (r["top1_agreement_ci"][1] - r["top1_agreement"]) for _, r in pts],
                ]
                axes[0][j].errorbar(xs, agree, yerr=err, ls=style, marker="o", capsize=2, label=LABELS.get(m, m))
                axes[1][j].semilogy(
                    xs, [max(r["kl_mean"], 1e-6) for _, r in pts], ls=style, marker="o", label=LABELS.get(m, m)
                )
            mode_bits = [r["bits"] for r in rows if r["mode"] == mode]
            axes[0][j].set_title(
                "weight-only" if mode == "weight_only" else f"{wa8_label(mode_bits)} (integer)", fontsize=9
            )
            axes[0][j].set_ylabel("top-1 agreement with FP32 (%)")
            axes[1][j].set_ylabel("mean KL(FP32 || quantized)")
            for ax in (axes[0][j], axes[1][j]):
                ax.set_xlabel("weight bits")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("EfficientNet-Lite0, real photographs (solid: WESS, one scale per layer)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "fidelity_vs_bits.png", dpi=120)
        plt.close(fig)
    wd = results.get("worst_depthwise") or {}
    if wd.get("ranges"):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        xs = range(len(wd["ranges"]))
        ax.semilogy(xs, [max(v, 1e-12) for v in wd["ranges"]], ".", label="max|W_c| (BN folded)")
        ax.semilogy(xs, [max(v, 1e-12) for v in wd["ranges_after_wess"]], ".", label="x 2^s_c (WESS)")
        ax.set_title(f"EfficientNet-Lite0 {wd['path']}", fontsize=8)
        ax.set_xlabel("output channel")
        ax.set_ylabel("per-channel range")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "channel_ranges.png", dpi=120)
        plt.close(fig)


__all__ = ["ImageNetBenchConfig", "METHODS", "channel_statistics", "run_benchmark", "summarize", "to_markdown"]
