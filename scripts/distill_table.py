#!/usr/bin/env python3
"""The distillation comparison: every method's config x several seeds, one table.

Runs ``configs/distill/<name>.toml`` for each name and seed (resumable: finished runs are read back),
in worker processes with one torch thread each, and writes the student's final top-1 on the full
Fashion-MNIST test set as mean +- standard deviation over the seeds: ``table.md``, ``table.json`` and
``table.png`` in ``--out``. ``--epochs`` / ``--train-limit`` shrink every run alike (say so when quoting).

    python3 scripts/distill_table.py --out results/distill_table
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    "student_alone",
    "kd",
    "kd_balanced",
    "kd_ensemble",
    "hint",
    "attention",
    "rkd",
    "similarity",
    "pkt",
    "dml",
    "born_again",
    "teacher_assistant",
    "student_alone_noisy",
    "privileged",
]
# the run each method is compared with (default: the student alone on clean images)
BASELINES = {"privileged": "student_alone_noisy"}
LABELS = {
    "student_alone": "student alone",
    "kd": "KD (response)",
    "kd_balanced": "KD, T = 2, labels 0.5 / KD 0.5",
    "kd_ensemble": "KD from 2 teachers (logits averaged)",
    "hint": "KD + FitNets hint",
    "attention": "attention transfer",
    "rkd": "relational KD (distance + angle)",
    "similarity": "similarity-preserving",
    "pkt": "probabilistic KT",
    "dml": "deep mutual learning (2 peers)",
    "born_again": "born-again (2 generations)",
    "teacher_assistant": "teacher assistant (CNN w1)",
    "privileged": "privileged information (noisy student input)",
    "student_alone_noisy": "student alone, noisy input",
}


def run_one(job) -> dict:
    name, seed, epochs, train_limit, out = job
    import torch

    torch.set_num_threads(1)
    from npuq.distill.experiment import load_experiment, run_experiment
    from npuq.distill.trainer import OptimConfig

    exp = load_experiment(ROOT / "configs" / "distill" / f"{name}.toml")
    exp.seed = seed
    if epochs is not None:
        exp.optim = OptimConfig(**{**vars(exp.optim), "epochs": epochs})
    if train_limit is not None:
        exp.data.train_limit = train_limit
    metrics = run_experiment(exp, Path(out) / f"{name}-seed{seed}", progress=False)
    return {"method": name, "seed": seed, "final": metrics["final_test_accuracy"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="override every config's optim.epochs")
    p.add_argument("--train-limit", type=int, default=None, help="first N training images in every run (0: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="results/distill_table")
    args = p.parse_args(argv)
    jobs = [(m, s, args.epochs, args.train_limit, args.out) for s in args.seeds for m in args.methods]
    rows = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for r in pool.map(run_one, jobs):
            rows.append(r)
            print(f"{r['method']} seed {r['seed']}: student {100 * r['final']['student']:.2f}%", flush=True)
    table = {}
    for m in args.methods:
        accs = [r["final"]["student"] for r in rows if r["method"] == m]
        table[m] = dict(mean=statistics.mean(accs), stdev=statistics.stdev(accs) if len(accs) > 1 else 0.0, runs=accs)
    teachers = {k: v for r in rows for k, v in r["final"].items() if k.startswith("teacher")}
    base = table.get("student_alone", {}).get("mean")
    lines = [f"| method | student top-1 (mean +- std, {len(args.seeds)} seeds) | vs baseline |", "| --- | --- | --- |"]
    for m, t in table.items():
        ref = BASELINES.get(m, "student_alone")
        delta = ""
        if ref in table and m != ref and not (m == "student_alone_noisy"):
            delta = f"{100 * (t['mean'] - table[ref]['mean']):+.2f}" + (
                f" (vs {LABELS[ref]})" if ref != "student_alone" else ""
            )
        lines.append(f"| {LABELS.get(m, m)} | {100 * t['mean']:.2f}% +- {100 * t['stdev']:.2f} | {delta} |")
    for key, label in (
        ("teacher0", "teacher: MobileNetV2 w0.5"),
        ("teacher1", "second teacher of kd_ensemble: MobileNetV1 w0.5"),
    ):
        if key in teachers:
            lines.append(f"| ({label}) | {100 * teachers[key]:.2f}% | |")
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    (out / "table.json").write_text(
        json.dumps(dict(config=vars(args), table=table, teachers=teachers, rows=rows), indent=1) + "\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 3.8))
        names = list(table)
        ax.bar(
            range(len(names)),
            [100 * table[n]["mean"] for n in names],
            yerr=[100 * table[n]["stdev"] for n in names],
            capsize=3,
        )
        ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], rotation=30, ha="right", fontsize=7)
        lo = min(100 * table[n]["mean"] for n in names)
        ax.set_ylim(lo - 2, max(100 * table[n]["mean"] for n in names) + 1)
        if base is not None:
            ax.axhline(100 * base, color="gray", lw=0.8, ls="--")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title("Distillation into a 6 k-parameter CNN (Fashion-MNIST)")
        fig.tight_layout()
        fig.savefig(out / "table.png", dpi=110)
    except ImportError:  # pragma: no cover
        pass
    print(f"wrote {out}/table.md, table.json, table.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
