#!/usr/bin/env python3
"""Single-shot against iterative rank search on the digits recognizer, with the run-to-run spread measured.

Three parts, each resumable (finished pieces are read back), each a separate process when run with
``--part`` so that two cores can share the work:

* ``dense``: the uncompressed model fine-tuned with the same recipe as every compressed model (distillation
  from itself, ``finetune_epochs`` epochs), once per ``--dense-seeds`` seed: the spread of the fine-tuning.
* ``trained``: the test WER of uncompressed models trained from scratch with other seeds by
  ``scripts/train_asr.py`` (``--trained-checkpoints``): the spread of training runs.
  A compressed model "keeps the WER" when its test WER is at most the worst of the shipped model's and
  those of one group; both limits are reported.
* ``iterative``: ``npuq.lrf.search.iterate`` with the config's targets, one run per ``--seeds`` seed (the
  search seed and the fine-tuning seed).
* ``single``: for each target of ``--single-targets``, one search on the *original* model with the candidates
  the iterative run had spent up to and including that target's round, and one fine-tuning with the epochs it
  had spent (so both sides get the same number of candidates and of fine-tuning epochs).
* ``report`` (also run after every part): ``summary.json``, ``table.md`` and ``test_wer.png`` in ``--out``.

    python3 scripts/lrf_asr_experiment.py --out results/lrf/asr_experiment            # everything, in order
    python3 scripts/lrf_asr_experiment.py --part iterative &                          # or two processes
    python3 scripts/lrf_asr_experiment.py --part dense single
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))


def _load(config_path: Path, seed: int, epochs: int | None = None):
    from npuq.lrf.search.config import load_config

    config = load_config(config_path)
    config.seed = seed
    config.task_options = {**config.task_options, "seed": seed}
    if epochs is not None:
        config.task_options["finetune_epochs"] = epochs
    return config, config.make_task()


def _iterate(config, task, model, targets, budget, out: Path):
    from npuq.lrf.search import iterate

    sp = config.space
    return iterate(
        model,
        evaluate=task.evaluate,
        finetune=lambda m: task.finetune(m, model),
        targets=targets,
        out_dir=out,
        strategy=config.strategy,
        budget_per_round=budget,
        layers=sp.layers or None,
        fractions=sp.fractions,
        basis=sp.basis,
        scope=sp.scope,
        max_error_increase=config.max_error_increase,
        seed=config.seed,
        reinforce=config.reinforce.policy(),
        reward_config=config.reinforce.reward(targets[0]),
        optuna_options=config.optuna.options(),
        single_shot=False,
        test_error=task.test_error,
    )


def run_dense(args, out: Path) -> None:
    for seed in args.dense_seeds:
        path = out / f"dense_seed{seed}.json"
        if path.exists():
            continue
        config, task = _load(args.config, seed)
        model = task.load_model()
        student = copy.deepcopy(model).train()
        start = time.perf_counter()
        task.finetune(student, model)
        entry = {
            "seed": seed,
            "dev_wer": task.evaluate(student),
            "test_wer": task.test_error(student),
            "epochs": task.options.finetune_epochs,
            "seconds": time.perf_counter() - start,
        }
        path.write_text(json.dumps(entry, indent=1) + "\n")
        print(f"dense fine-tuned, seed {seed}: dev {entry['dev_wer']:.4f}, test {entry['test_wer']:.4f}", flush=True)


def run_trained(args, out: Path) -> None:
    from npuq.asr import load_asr_checkpoint

    for path in args.trained_checkpoints:
        target = out / f"trained_{Path(path).parent.name}.json"
        if target.exists():
            continue
        _, task = _load(args.config, 0)
        model, meta = load_asr_checkpoint(path)
        entry = {
            "checkpoint": str(path),
            "seed": meta.get("seed"),
            "dev_wer": task.evaluate(model),
            "test_wer": task.test_error(model),
        }
        target.write_text(json.dumps(entry, indent=1) + "\n")
        print(f"trained {path}: dev {entry['dev_wer']:.4f}, test {entry['test_wer']:.4f}", flush=True)


def run_iterative(args, out: Path) -> None:
    for seed in args.seeds:
        config, task = _load(args.config, seed)
        model = task.load_model()
        start = time.perf_counter()
        folder = out / f"iterative_seed{seed}"
        _iterate(config, task, model, config.iterate.targets, config.iterate.budget_per_round, folder)
        (folder / "wall.json").write_text(json.dumps({"seconds_this_call": time.perf_counter() - start}) + "\n")


def run_single(args, out: Path) -> None:
    for seed in args.seeds:
        for target in args.single_targets:
            config, _ = _load(args.config, seed)
            targets = config.iterate.targets
            if target not in targets:
                raise SystemExit(f"--single-targets: {target} is not one of the config's targets {targets}")
            rounds = targets.index(target) + 1
            per_round = int(config.task_options.get("finetune_epochs", 2))
            # "matched": the epochs the iterative run had spent by then; "once": one round's fine-tuning, the
            # protocol of a single-shot search (search once, fine-tune once)
            epochs = rounds * per_round if args.single_epochs == "matched" else per_round
            config, task = _load(args.config, seed, epochs)
            model = task.load_model()
            label = "" if args.single_epochs == "matched" else "_once"
            _iterate(
                config,
                task,
                model,
                [target],
                rounds * config.iterate.budget_per_round,
                out / f"single_x{target:g}{label}_seed{seed}",
            )


def _spread(values):
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def report(args, out: Path) -> dict:
    """Collect what has finished into ``summary.json``, ``table.md`` and ``test_wer.png``."""
    config, task = _load(args.config, 0)
    dense = [json.loads(p.read_text()) for p in sorted(out.glob("dense_seed*.json"))]
    shipped = None
    summary: dict = {
        "config": str(args.config),
        "dense_finetuned": dense,
        "iterative": {},
        "single_shot": {},
        "single_shot_once": {},
    }
    runs = sorted(out.glob("iterative_seed*/summary.json")) + sorted(out.glob("single_x*_seed*/summary.json"))
    for path in runs:
        data = json.loads(path.read_text())
        shipped = data["original_error"] if shipped is None else shipped
        name = path.parent.name
        rounds = []
        for state in data["rounds"]:
            search = (
                json.loads((path.parent / f"round_{state['round']}" / "search.json").read_text())
                if (path.parent / f"round_{state['round']}" / "search.json").exists()
                else {}
            )
            rounds.append(
                {
                    k: state[k]
                    for k in (
                        "round",
                        "target",
                        "compression",
                        "model_params",
                        "error_before_finetune",
                        "error_after_finetune",
                        "test_error",
                        "candidates",
                        "evaluations",
                        "seconds_search",
                        "seconds_finetune",
                    )
                }
                | {"search_seconds_total": search.get("seconds")}
            )
        kind = (
            "iterative" if name.startswith("iterative") else "single_shot_once" if "_once_" in name else "single_shot"
        )
        summary[kind][name] = {
            "original_dev_wer": data["original_error"],
            "rounds": rounds,
            "wall_seconds": sum(r["seconds_search"] + r["seconds_finetune"] for r in rounds),
        }
    # the shipped model's test WER: the search runs record only its dev WER
    test_path = out / "original_test_wer.json"
    if not test_path.exists():
        model = task.load_model()
        test_path.write_text(json.dumps({"test_wer": task.test_error(model), "dev_wer": task.evaluate(model)}) + "\n")
    original = json.loads(test_path.read_text())
    trained = [json.loads(p.read_text()) for p in sorted(out.glob("trained_*.json"))]
    summary["original"] = original
    summary["trained_from_scratch"] = trained
    groups = {
        "training runs": [original["test_wer"]] + [t["test_wer"] for t in trained],
        "fine-tuning reruns": [original["test_wer"]] + [d["test_wer"] for d in dense],
    }
    limits = {name: max(values) for name, values in groups.items()}
    summary["reference_test_wers"] = groups
    summary["reference_spread"] = {name: _spread(values) for name, values in groups.items()}
    summary["wer_limits"] = limits

    def largest_ok(rounds, limit):
        ok = [r for r in rounds if r["test_error"] is not None and r["test_error"] <= limit + 1e-12]
        return max(ok, key=lambda r: r["compression"]) if ok else None

    def percents(entries):
        return ", ".join(f"{e['test_wer']:.2%}" for e in entries) or "none"

    lines = [
        f"Test WER of the shipped model: {original['test_wer']:.2%}; of models trained from scratch with "
        f"seeds {[t['seed'] for t in trained]}: {percents(trained)}; of the shipped model fine-tuned with the "
        f"recipe, seeds {[d['seed'] for d in dense]}: {percents(dense)}.",
        "Limits (the worst of the shipped model and each group): "
        + "; ".join(f"{name}: {limit:.2%}" for name, limit in limits.items())
        + ".",
        "",
        "| run | round | target | compression | dev WER before / after fine-tuning | test WER | candidates "
        "(evaluated) | search + fine-tuning |",
        "|---|---|---:|---:|---|---:|---|---:|",
    ]
    headline: dict = {name: {} for name in limits}
    for kind in ("iterative", "single_shot", "single_shot_once"):
        for name, run in summary[kind].items():
            for r in run["rounds"]:
                lines.append(
                    f"| {name} | {r['round']} | {r['target']:g}x | {r['compression']:.2f}x | "
                    f"{r['error_before_finetune']:.2%} / {r['error_after_finetune']:.2%} | "
                    f"{r['test_error']:.2%} | {r['candidates']} ({r['evaluations']}) | "
                    f"{r['seconds_search']:.0f} + {r['seconds_finetune']:.0f} s |"
                )
            run["largest_compression_within_limit"] = {}
            for limit_name, limit in limits.items():
                best = largest_ok(run["rounds"], limit)
                value = 1.0 if best is None else best["compression"]
                run["largest_compression_within_limit"][limit_name] = value
                seed = name.rsplit("seed", 1)[1]
                per_kind = headline[limit_name].setdefault(kind, {})
                per_kind[seed] = max(per_kind.get(seed, 1.0), value)
    summary["largest_compression_within_limit_per_seed"] = headline
    for limit_name, kinds in headline.items():
        lines += [
            "",
            f"Largest compression with test WER within the {limit_name} limit ({limits[limit_name]:.2%}), "
            "per seed: "
            + "; ".join(
                f"{kind}: " + ", ".join(f"seed {s}: {v:.2f}x" for s, v in sorted(seeds.items()))
                for kind, seeds in kinds.items()
            ),
        ]
    limit = limits["training runs"]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(summary, out / "test_wer.png", limit)
    print("\n".join(lines))
    return summary


def _plot(summary: dict, path: Path, limit: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, values), color in zip(summary["reference_test_wers"].items(), ("tab:blue", "tab:green")):
        ax.axhspan(
            100 * min(values),
            100 * max(values),
            color=color,
            alpha=0.12,
            label=f"uncompressed, {name}: {', '.join(f'{100 * v:.2f}' for v in values)}%",
        )
    for (name, run), style in zip(summary["iterative"].items(), ("-", "--", ":", "-.")):
        points = [(1.0, summary["original"]["test_wer"])] + [(r["compression"], r["test_error"]) for r in run["rounds"]]
        ax.plot(
            [x for x, _ in points],
            [100 * y for _, y in points],
            "o" + style,
            color="black",
            alpha=0.8,
            ms=5,
            label=f"iterative, seed {name.rsplit('seed', 1)[1]} (one point per round)",
        )
    for kind, color, label in (
        ("single_shot", "tab:red", "single-shot, fine-tuned with the epochs of the iterative rounds up to its target"),
        ("single_shot_once", "tab:orange", "single-shot, fine-tuned with one round's epochs"),
    ):
        single = [(r["compression"], r["test_error"]) for run in summary[kind].values() for r in run["rounds"]]
        if single:
            ax.plot(
                [x for x, _ in single], [100 * y for _, y in single], "s", color=color, ms=8, ls="none", label=label
            )
    ax.set_xlabel("compression (parameters of the original / of the model)")
    ax.set_ylabel("test WER, % (500 utterances, unseen speakers)")
    ax.set_title("Digits recognizer: iterative vs single-shot rank search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "lrf" / "asr_iterate.toml")
    p.add_argument("--out", type=Path, default=Path("results/lrf/asr_experiment"))
    p.add_argument(
        "--part",
        nargs="+",
        default=["dense", "trained", "iterative", "single"],
        choices=("dense", "trained", "iterative", "single", "report"),
    )
    p.add_argument(
        "--trained-checkpoints",
        nargs="*",
        type=Path,
        default=sorted(Path("results").glob("asr_digits_seed*/model.safetensors")),
        help="uncompressed models trained from scratch with other seeds (scripts/train_asr.py)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--dense-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--single-targets", nargs="+", type=float, default=[3.0, 5.0, 7.0, 14.0])
    p.add_argument(
        "--single-epochs",
        choices=("matched", "once"),
        default="matched",
        help="fine-tuning of a single-shot choice: the epochs of all iterative rounds up to its target "
        "(matched), or those of one round (once)",
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    for part in args.part:
        start = time.perf_counter()
        {
            "dense": run_dense,
            "trained": run_trained,
            "iterative": run_iterative,
            "single": run_single,
            "report": lambda a, o: None,
        }[part](args, args.out)
        print(f"part {part}: {time.perf_counter() - start:.0f} s", flush=True)
    report(args, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
