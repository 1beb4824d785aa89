"""``npuq distill CONFIG``: a knowledge-distillation experiment described by a TOML config
(:mod:`npuq.distill.experiment`, ``docs/distillation.md``).

The parser is built without torch; the command imports the experiment when it runs.
"""

from __future__ import annotations


def add_commands(sub) -> None:
    """Register ``npuq distill`` on the argparse sub-parsers ``sub``."""
    from npuq._cliutil import int_range

    p = sub.add_parser(
        "distill",
        help="run a knowledge-distillation experiment described by a TOML config "
        "(docs/distillation.md): metrics.json, curves.png, resumable checkpoints",
    )
    p.add_argument("config", help="a TOML config, e.g. configs/distill/kd.toml")
    p.add_argument(
        "--out",
        default=None,
        help="run folder (default: results/distill/<name>-seed<seed>); an "
        "interrupted run resumes from its checkpoints when started again with the same folder",
    )
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument(
        "--epochs",
        type=int_range(1, 100_000),
        default=None,
        help="override optim.epochs (a folder trained with other settings is refused: docs/distillation.md)",
    )
    p.set_defaults(func=_run_distill)


def _run_distill(args) -> int:
    import json

    from npuq.distill.experiment import load_experiment, run_experiment
    from npuq.distill.trainer import OptimConfig

    # a bad config, a missing teacher or a folder trained with other settings (ResumeError) are ValueErrors:
    # run_command reports them as one line, exit 2
    exp = load_experiment(args.config)
    if args.seed is not None:
        exp.seed = args.seed
    if args.epochs is not None:
        exp.optim = OptimConfig(**dict(vars(exp.optim), epochs=args.epochs))
    out = args.out or f"results/distill/{exp.name}-seed{exp.seed}"
    metrics = run_experiment(exp, out)
    print(json.dumps(metrics["final_test_accuracy"], indent=1))
    print(f"wrote {out}/metrics.json, {out}/curves.png")
    return 0


__all__ = ["add_commands"]
