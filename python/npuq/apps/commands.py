"""``npuq ptq-bench`` (the post-training quantization benchmark, :mod:`npuq.apps.ptq_benchmark` and
:mod:`npuq.apps.ptq_imagenet`) and ``npuq demo`` (:mod:`npuq.apps.demo`).

The parsers are built without torch; a command imports its application when it runs.
"""

from __future__ import annotations

from npuq._cliutil import CommandError


def add_commands(sub) -> None:
    """Register ``npuq ptq-bench`` and ``npuq demo`` on the argparse sub-parsers ``sub``."""
    from npuq._cliutil import int_range

    p = sub.add_parser(
        "ptq-bench",
        help="the post-training quantization benchmark on the shipped checkpoints "
        "(methods x bits x weight-only / integer W8A8..W2A8, full test set): tables, JSON and plots",
    )
    p.add_argument("--out", default="results/ptq", help="output folder")
    p.add_argument(
        "--config",
        default=None,
        help="a TOML file with BenchConfig fields (checkpoints, methods, bits, "
        'modes, activations, calib_batches, test_limit, ...; task = "imagenet" for the real-model '
        "section); command-line options override it",
    )
    p.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        help="checkpoint names or paths (default: the four shipped MobileNets)",
    )
    p.add_argument(
        "--methods", nargs="+", default=None, help="methods to run (default: all; an unknown name lists the known ones)"
    )
    p.add_argument("--bits", nargs="+", type=int_range(2, 8), metavar="{2..8}", default=None, help="weight bits")
    p.add_argument(
        "--modes", nargs="+", default=None, choices=("weight_only", "w_a8"), help="weight-only and/or int8 activations"
    )
    p.add_argument("--activations", default=None, help="activation observer of the w_a8 mode")
    p.add_argument("--calib-batches", type=int_range(1, 100_000), default=None, help="calibration batches")
    p.add_argument("--limit", type=int_range(1), default=None, help="first N test images only (default: all 10000)")
    p.set_defaults(func=_run_ptq_bench)

    demo = sub.add_parser("demo", help="run the integer kernels on a small network and compare with float")
    demo.add_argument("--out", default="results/demo", help="folder for the JSON report and the plot")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random network and inputs")
    demo.add_argument("--batch", type=int_range(1, 4096), default=8, help="images per batch")
    demo.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from npuq.apps.demo import run_demo

    return run_demo(out_dir=args.out, seed=args.seed, batch=args.batch)


def _read_config(path: str) -> dict:
    from pathlib import Path

    from npuq.config import ConfigError, read_toml

    try:
        return read_toml(path)
    except ConfigError:
        # a mistyped --config path is the common mistake: it keeps the command's own words
        if not Path(path).exists():
            raise CommandError(f"config file {path} not found") from None
        raise


def _check_fields(path: str, fields: dict, known) -> None:
    unknown = set(fields) - set(known)
    if unknown:
        raise CommandError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")


def _run_ptq_bench(args) -> int:
    from npuq._cliutil import removes_if_empty
    from npuq.apps.ptq_benchmark import BenchConfig, run_benchmark, to_markdown

    fields = _read_config(args.config) if args.config else {}
    task = fields.get("task", "fashion_mnist")
    if task == "imagenet":
        return _run_imagenet_bench(args, fields)
    if task != "fashion_mnist":
        raise CommandError(f"{args.config}: unknown task {task!r}; known: 'fashion_mnist' (default), 'imagenet'")
    fields.pop("task", None)
    _check_fields(args.config, fields, BenchConfig.__dataclass_fields__)
    for key, value in (
        ("checkpoints", args.checkpoints),
        ("methods", args.methods),
        ("bits", args.bits),
        ("modes", args.modes),
        ("activations", args.activations),
        ("calib_batches", args.calib_batches),
        ("test_limit", args.limit),
    ):
        if value is not None:
            fields[key] = value
    for key in ("checkpoints", "methods", "bits", "modes"):
        if key in fields:
            fields[key] = tuple(fields[key])
    try:
        cfg = BenchConfig(**fields)
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise CommandError(f"{args.config}: {exc}" if args.config else str(exc)) from None
    with removes_if_empty(args.out):
        results = run_benchmark(cfg, args.out)
    print(to_markdown(results))
    print(f"wrote {args.out}/results.json, results.md, accuracy_vs_bits.png, channel_ranges.png")
    return 0


def _run_imagenet_bench(args, fields: dict) -> int:
    """The real-model section (``task = "imagenet"`` in the config): see npuq.apps.ptq_imagenet."""
    from npuq._cliutil import removes_if_empty
    from npuq.apps.ptq_imagenet import ImageNetBenchConfig, run_benchmark, to_markdown

    _check_fields(args.config, fields, ImageNetBenchConfig.__dataclass_fields__)
    for key, value in (
        ("methods", args.methods),
        ("bits", args.bits),
        ("modes", args.modes),
        ("activations", args.activations),
        ("eval_crops", args.limit),
    ):
        if value is not None:
            fields[key] = value
    if args.checkpoints is not None or args.calib_batches is not None:
        raise CommandError(
            "--checkpoints and --calib-batches do not apply to the ImageNet benchmark; set model and "
            "calib_crops in its config"
        )
    for key in ("methods", "bits", "modes"):
        if key in fields:
            fields[key] = tuple(fields[key])
    try:
        cfg = ImageNetBenchConfig(**fields)
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise CommandError(f"{args.config}: {exc}") from None
    with removes_if_empty(args.out):
        results = run_benchmark(cfg, args.out)
    print(to_markdown(results))
    print(f"wrote {args.out}/results.json, results.md, fidelity_vs_bits.png, channel_ranges.png")
    return 0


__all__ = ["add_commands"]
