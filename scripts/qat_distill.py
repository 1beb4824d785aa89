#!/usr/bin/env python3
"""Quantization-aware distillation: a W4A8 WESS student distilled from its FP32 self.

For each seed: post-training quantization (WESS 4-bit weights, int8 activations, MSE observer) of a
shipped checkpoint gives the starting accuracy; then the batch-norm-folded network is fine-tuned with
fake-quantized WESS weights (``npuq.quant.qat.FakeQuantModel``), once with the labels alone (QAT) and
once with the FP32 model as teacher (QAT + KD), and quantized again for real. Every accuracy is the
NPU's: the integer program run by ``npuq.Emulator`` on the full Fashion-MNIST test set. Reports the
share of the post-training loss each recovers (goal for QAT + KD: at least half).

    python3 scripts/qat_distill.py --out results/qat_distill.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import npuq
from npuq.data.fashion_mnist import fashion_mnist_loader, fashion_mnist_tensors
from npuq.distill import OptimConfig, Term, fit, offline_learner
from npuq.distill.losses import KDLoss
from npuq.models.checkpoints import load_checkpoint
from npuq.quant import prepare
from npuq.quant.qat import FakeQuantModel


def integer_accuracy(graph_or_model, calib, bits: int, test) -> float:
    """Quantize (WESS, int8 activations), compile, emulate: top-1 on the test set."""
    qm = npuq.quantize(graph_or_model, calib, weights="wess", bits=bits, activations="mse")
    return npuq.Emulator(npuq.compile(qm)).evaluate(test)["accuracy"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="mobilenet_v2_w0.5_sgd")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--kd-weight", type=float, default=0.9)
    p.add_argument("--task-weight", type=float, default=0.1)
    p.add_argument("--train-limit", type=int, default=None, help="first N training images only")
    p.add_argument("--out", default="results/qat_distill.json")
    args = p.parse_args(argv)

    x_train, y_train = fashion_mnist_tensors("train")
    if args.train_limit:
        x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    test = fashion_mnist_tensors("test")
    calib = fashion_mnist_loader("train", batch_size=256, shuffle=True, seed=1234, limit=2048)
    teacher, _ = load_checkpoint(args.checkpoint)
    teacher.eval()
    graph = prepare(teacher, test[0][:2])
    with torch.no_grad():
        fp32 = float(
            (torch.cat([teacher(test[0][i : i + 1000]).argmax(1) for i in range(0, 10000, 1000)]) == test[1])
            .float()
            .mean()
        )
    ptq = integer_accuracy(graph, calib, args.bits, test)
    print(f"{args.checkpoint}: FP32 {100 * fp32:.2f}%, PTQ W{args.bits}A8 WESS {100 * ptq:.2f}%", flush=True)
    optim = OptimConfig(
        name="sgd", lr=args.lr, momentum=0.9, weight_decay=0.0, epochs=args.epochs, batch_size=args.batch_size
    )
    runs = []
    for seed in args.seeds:
        for variant in ("qat", "qat_kd"):
            torch.manual_seed(seed)
            student = FakeQuantModel(graph, bits=args.bits, method="wess")
            terms = [Term(KDLoss(args.temperature), args.kd_weight)] if variant == "qat_kd" else []
            learner = offline_learner(
                student, [teacher] if terms else [], terms, optim, task_weight=args.task_weight if terms else 1.0
            )
            start = time.perf_counter()
            fit(learner, x_train, y_train, optim, seed=seed, progress=True, desc=f"{variant} seed {seed}")
            acc = integer_accuracy(student.to_graph(), calib, args.bits, test)
            runs.append(
                dict(
                    seed=seed,
                    variant=variant,
                    accuracy=acc,
                    seconds=time.perf_counter() - start,
                    recovered=(acc - ptq) / (fp32 - ptq) if fp32 > ptq else None,
                )
            )
            print(
                f"seed {seed} {variant}: W{args.bits}A8 {100 * acc:.2f}% (recovered "
                f"{100 * runs[-1]['recovered']:.0f}% of the PTQ loss)",
                flush=True,
            )
    summary = {}
    for variant in ("qat", "qat_kd"):
        accs = [r["accuracy"] for r in runs if r["variant"] == variant]
        rec = [r["recovered"] for r in runs if r["variant"] == variant]
        summary[variant] = dict(
            mean=statistics.mean(accs),
            stdev=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            recovered_mean=statistics.mean(rec),
        )
    print(
        f"\n| W{args.bits}A8 WESS, {args.checkpoint} | top-1 (mean +- std over {len(args.seeds)} seeds) | "
        f"share of the PTQ loss recovered |"
    )
    print("| --- | --- | --- |")
    print(f"| FP32 | {100 * fp32:.2f}% | |")
    print(f"| post-training quantization | {100 * ptq:.2f}% | 0% |")
    for variant, label in (("qat", "QAT, labels only"), ("qat_kd", "QAT + KD from the FP32 model")):
        s = summary[variant]
        print(f"| {label} | {100 * s['mean']:.2f}% +- {100 * s['stdev']:.2f} | {100 * s['recovered_mean']:.0f}% |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(config=vars(args), fp32=fp32, ptq=ptq, runs=runs, summary=summary, threads=torch.get_num_threads()),
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
