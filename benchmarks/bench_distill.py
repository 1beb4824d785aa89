#!/usr/bin/env python3
"""Overhead of a distillation step: one training step of the student with KD and one FitNets hint tap
(forward hooks on both models, a 1x1 adapter) against the sum of its unavoidable parts, a teacher forward
(no gradient) plus a plain training step of the student (cross-entropy only), measured in one run with
the same threads, batch and models. Goal: ratio < 1.2.

    python3 benchmarks/bench_distill.py --out results/bench_distill.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from npuq.distill import DistillationObjective, OptimConfig, Term
from npuq.distill.losses import HintLoss, KDLoss
from npuq.distill.objective import tap_channels
from npuq.models import build_model


def _time(fn, repeats: int, inner: int) -> float:
    """Median seconds per call over ``repeats`` samples of ``inner`` calls (after a warm-up)."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t) / inner)
    return statistics.median(samples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-width", type=float, default=2.0)
    p.add_argument("--student-width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--inner", type=int, default=5)
    p.add_argument("--tap", default="features.10", help="the hinted module path (same in both CNNs)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = build_model("cnn", args.teacher_width).eval()
    student = build_model("cnn", args.student_width)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    optim = OptimConfig(lr=0.01)

    plain_opt = optim.make(student.parameters())

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        F.cross_entropy(student(x), y).backward()
        plain_opt.step()

    def teacher_forward():
        with torch.no_grad():
            teacher(x)

    hint = HintLoss(tap_channels(student, args.tap, x[:2]), tap_channels(teacher, args.tap, x[:2]))
    objective = DistillationObjective(
        student, [teacher], [Term(KDLoss(4.0), 0.9), Term(hint, 1.0, args.tap, args.tap)], task_weight=0.1
    )
    distill_opt = optim.make(objective.trainable_parameters())

    def distill_step():
        distill_opt.zero_grad(set_to_none=True)
        total, _ = objective(x, y)
        total.backward()
        distill_opt.step()

    # interleave the three measurements so that a disturbance hits all of them alike
    results = {"plain_step": [], "teacher_forward": [], "distill_step": []}
    fns = {"plain_step": plain_step, "teacher_forward": teacher_forward, "distill_step": distill_step}
    for _ in range(3):
        for name, fn in fns.items():
            results[name].append(_time(fn, max(1, args.repeats // 3), args.inner))
    t = {k: min(v) for k, v in results.items()}
    ratio = t["distill_step"] / (t["teacher_forward"] + t["plain_step"])
    report = dict(
        threads=torch.get_num_threads(),
        batch=args.batch,
        teacher=f"cnn w{args.teacher_width}",
        student=f"cnn w{args.student_width}",
        tap=args.tap,
        seconds=t,
        ratio=ratio,
        goal=1.2,
    )
    for k, v in t.items():
        print(f"{k:<16} {1000 * v:8.2f} ms")
    print(
        f"distill_step / (teacher_forward + plain_step) = {ratio:.3f}  "
        f"(goal < 1.2: {'met' if ratio < 1.2 else 'NOT met'})"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
