"""The ``npuq`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="npuq", description="Integer NPU toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the integer kernels on a small network and compare with float")
    demo.add_argument("--out", default="results/demo", help="folder for the JSON report and the plot")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch", type=int, default=8)
    sub.add_parser("info", help="print the build, the arithmetic version and the CPU kernels in use")
    _add_quantize_parser(sub)
    _add_ptq_bench_parser(sub)
    _add_npu_commands(sub)
    _add_distill_parser(sub)
    _add_lrf_commands(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "func"):
        return args.func(args)
    if args.command == "quantize":
        return _run_quantize(args)
    if args.command == "ptq-bench":
        return _run_ptq_bench(args)
    if args.command == "info":
        import npuq

        print(f"npuq {npuq.__version__}, arithmetic version {npuq.ARITHMETIC_VERSION}, "
              f"CUDA build: {npuq.BUILT_WITH_CUDA}")
        print(f"CPU kernels: {npuq.cpu_features()}, threads: {npuq.get_num_threads()}")
        return 0
    from npuq.demo import run_demo

    return run_demo(out_dir=args.out, seed=args.seed, batch=args.batch)


def _add_npu_commands(sub) -> None:
    """compile, run, export-vectors, verify, cost: each module registers its own sub-commands."""
    from npuq.npu import commands, cost, vectors

    commands.add_commands(sub)
    vectors.add_commands(sub)
    cost.add_commands(sub)


def _add_lrf_commands(sub) -> None:
    # importing the npuq.lrf package imports torch, which `npuq run` must not need; its command module imports
    # nothing heavy, so it is loaded on its own file and the package is imported only when a command runs
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("npuq.lrf.commands", Path(__file__).parent / "lrf" / "commands.py")
    commands = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(commands)
    commands.add_commands(sub)


def _add_distill_parser(sub) -> None:
    p = sub.add_parser("distill", help="run a knowledge-distillation experiment described by a TOML config "
                       "(docs/distillation.md): metrics.json, curves.png, resumable checkpoints")
    p.add_argument("config", help="a TOML config, e.g. configs/distill/kd.toml")
    p.add_argument("--out", default=None, help="run folder (default: results/distill/<name>-seed<seed>); an interrupted "
                   "run resumes from its checkpoints when started again with the same folder")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    p.set_defaults(func=_run_distill)


def _run_distill(args) -> int:
    import json
    import sys

    from npuq.distill.experiment import ConfigError, load_experiment, run_experiment
    from npuq.distill.trainer import OptimConfig

    try:
        exp = load_experiment(args.config)
        if args.seed is not None:
            exp.seed = args.seed
        if args.epochs is not None:
            fields = dict(vars(exp.optim), epochs=args.epochs)
            exp.optim = OptimConfig(**fields)
    except (ConfigError, ValueError) as exc:
        print(f"npuq distill: {exc}", file=sys.stderr)
        return 2
    out = args.out or f"results/distill/{exp.name}-seed{exp.seed}"
    metrics = run_experiment(exp, out)
    print(json.dumps(metrics["final_test_accuracy"], indent=1))
    print(f"wrote {out}/metrics.json, {out}/curves.png")
    return 0


def _add_quantize_parser(sub) -> None:
    from npuq.methods import ACTIVATION_METHODS, WEIGHT_METHODS

    p = sub.add_parser("quantize", help="quantize a Fashion-MNIST checkpoint and report accuracy and per-layer stats")
    p.add_argument("--model", required=True, help="a shipped checkpoint name (see `npuq quantize --list`) or a "
                   ".safetensors path written by scripts/train_fmnist.py")
    p.add_argument("--weights", default="wess", choices=WEIGHT_METHODS)
    p.add_argument("--bits", type=int, default=8, help="weight bits, 2..8")
    p.add_argument("--activations", default="mse", choices=[*ACTIVATION_METHODS, "none"],
                   help="activation observer for int8 activations, or 'none' for weight-only quantization")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256, help="calibration batch size")
    p.add_argument("--cle", action="store_true", help="cross-layer equalization (+ high-bias absorption)")
    p.add_argument("--bias-correction", action="store_true")
    p.add_argument("--rounding", default="double", choices=("double", "single"))
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--out", default=None, help="folder for report.json and report.md")


def _run_quantize(args) -> int:
    import json
    from pathlib import Path

    import npuq
    from npuq.data.fashion_mnist import fashion_mnist_loader
    from npuq.models.checkpoints import load_checkpoint
    from npuq.quant.api import evaluate

    model, meta = load_checkpoint(args.model)
    calib = fashion_mnist_loader("train", batch_size=args.batch_size, shuffle=True, seed=1234,
                                 limit=args.calib_batches * args.batch_size)
    test = fashion_mnist_loader("test", batch_size=1000, limit=args.limit)
    acts = None if args.activations == "none" else args.activations
    qmodel = npuq.quantize(model, calib, weights=args.weights, bits=args.bits, activations=acts,
                           calib_batches=args.calib_batches, cle=args.cle, bias_correction=args.bias_correction,
                           rounding=args.rounding, progress=True)
    fp32 = evaluate(model, test, progress=True, desc="FP32")
    acc = evaluate(qmodel, test, progress=True, desc="quantized")
    mode = f"W{args.bits}A8" if acts else f"W{args.bits} weight-only"
    print(qmodel.report.to_markdown())
    print(f"\n{args.model}: FP32 {100 * fp32:.2f}%  ->  {args.weights} {mode}: {100 * acc:.2f}% "
          f"({100 * (acc - fp32):+.2f} points)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        qmodel.report.save_json(out / "report.json")
        (out / "report.md").write_text(qmodel.report.to_markdown() + "\n")
        (out / "accuracy.json").write_text(json.dumps(dict(model=args.model, fp32=fp32, quantized=acc,
                                                           config=qmodel.report.config), indent=1))
        print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'accuracy.json'}")
    return 0


def _add_ptq_bench_parser(sub) -> None:
    p = sub.add_parser("ptq-bench", help="the post-training quantization benchmark on the shipped checkpoints "
                       "(methods x bits x weight-only/W<b>A8, full test set): tables, JSON and plots")
    p.add_argument("--out", default="results/ptq")
    p.add_argument("--config", default=None, help="a TOML file with BenchConfig fields (checkpoints, methods, bits, "
                   "modes, activations, calib_batches, test_limit, ...); command-line options override it")
    p.add_argument("--checkpoints", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--bits", nargs="+", type=int, default=None)
    p.add_argument("--modes", nargs="+", default=None, choices=("weight_only", "w_a8"))
    p.add_argument("--activations", default=None)
    p.add_argument("--calib-batches", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="first N test images only (default: all 10000)")


def _run_ptq_bench(args) -> int:
    import tomllib

    from npuq.ptq_benchmark import BenchConfig, run_benchmark

    fields = {}
    if args.config:
        with open(args.config, "rb") as f:
            fields = tomllib.load(f)
        if fields.get("task") == "imagenet":
            return _run_imagenet_bench(args, fields)
        unknown = set(fields) - set(BenchConfig.__dataclass_fields__)
        if unknown:
            raise SystemExit(f"{args.config}: unknown field(s) {sorted(unknown)}; "
                             f"known: {sorted(BenchConfig.__dataclass_fields__)}")
    for key, value in (("checkpoints", args.checkpoints), ("methods", args.methods), ("bits", args.bits),
                       ("modes", args.modes), ("activations", args.activations),
                       ("calib_batches", args.calib_batches), ("test_limit", args.limit)):
        if value is not None:
            fields[key] = value
    for key in ("checkpoints", "methods", "bits", "modes"):
        if key in fields:
            fields[key] = tuple(fields[key])
    cfg = BenchConfig(**fields)
    results = run_benchmark(cfg, args.out)
    from npuq.ptq_benchmark import to_markdown

    print(to_markdown(results))
    print(f"wrote {args.out}/results.json, results.md, accuracy_vs_bits.png, channel_ranges.png")
    return 0


def _run_imagenet_bench(args, fields: dict) -> int:
    """The real-model section (``task = "imagenet"`` in the config): see npuq.ptq_imagenet."""
    from npuq.ptq_imagenet import ImageNetBenchConfig, run_benchmark, to_markdown

    unknown = set(fields) - set(ImageNetBenchConfig.__dataclass_fields__)
    if unknown:
        raise SystemExit(f"{args.config}: unknown field(s) {sorted(unknown)}; "
                         f"known: {sorted(ImageNetBenchConfig.__dataclass_fields__)}")
    for key, value in (("methods", args.methods), ("bits", args.bits), ("modes", args.modes),
                       ("activations", args.activations), ("eval_crops", args.limit)):
        if value is not None:
            fields[key] = value
    if args.checkpoints is not None or args.calib_batches is not None:
        raise SystemExit("--checkpoints and --calib-batches do not apply to the ImageNet benchmark; set model and "
                         "calib_crops in its config")
    for key in ("methods", "bits", "modes"):
        if key in fields:
            fields[key] = tuple(fields[key])
    cfg = ImageNetBenchConfig(**fields)
    try:
        cfg.validate()
    except ValueError as exc:
        raise SystemExit(f"{args.config}: {exc}") from None
    results = run_benchmark(cfg, args.out)
    print(to_markdown(results))
    print(f"wrote {args.out}/results.json, results.md, fidelity_vs_bits.png, channel_ranges.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
