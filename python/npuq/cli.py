"""The ``npuq`` command line."""

from __future__ import annotations

import argparse
import sys

from npuq._cliutil import CommandError, Parser, int_range, run_command


def build_parser() -> Parser:
    parser = Parser(prog="npuq", description="Integer NPU toolkit: quantize (WESS), compile, emulate bit-exactly, "
                    "export golden vectors, distill, factorize. `npuq CMD --help` describes each command.")
    parser.add_argument("--version", action=_VersionAction, help="print npuq's version and arithmetic version")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the integer kernels on a small network and compare with float")
    demo.add_argument("--out", default="results/demo", help="folder for the JSON report and the plot")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random network and inputs")
    demo.add_argument("--batch", type=int_range(1, 4096), default=8, help="images per batch")
    demo.set_defaults(func=_run_demo)
    info = sub.add_parser("info", help="print the build, the arithmetic version, the CPU kernels in use and "
                          "whether a CUDA device is usable")
    info.set_defaults(func=_run_info)
    _add_quantize_parser(sub)
    _add_ptq_bench_parser(sub)
    _add_npu_commands(sub)
    _add_distill_parser(sub)
    _add_lrf_commands(sub)
    return parser


def main(argv=None) -> int:
    """The ``npuq`` entry point: exit 0 on success, 2 on a user's mistake (one line on stderr)."""
    args = build_parser().parse_args(argv)
    prog = " ".join(["npuq", args.command, *([args.lrf_command] if getattr(args, "lrf_command", None) else [])])
    return run_command(prog, args.func, args)


class _VersionAction(argparse.Action):
    """``--version``: imports npuq only when asked (the version lives in the package)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import npuq

        print(f"npuq {npuq.__version__} (arithmetic version {npuq.ARITHMETIC_VERSION})")
        parser.exit(0)


def _run_demo(args) -> int:
    from npuq.demo import run_demo

    return run_demo(out_dir=args.out, seed=args.seed, batch=args.batch)


def _run_info(args) -> int:
    import npuq
    from npuq import _cuda

    print(f"npuq {npuq.__version__}, arithmetic version {npuq.ARITHMETIC_VERSION}")
    cuda = _cuda.info()
    if not cuda["built"]:
        print(f"CUDA: not built ({cuda.get('reason') or 'no CUDA toolkit at build time'}); the CPU kernels run")
    elif cuda["devices"] > 0:
        names = ", ".join(cuda.get("names") or [])
        print(f"CUDA: built, {cuda['devices']} usable device(s): {names}")
    else:
        print(f"CUDA: built, but no usable device ({cuda.get('reason') or 'no GPU visible'}); "
              "the CPU kernels run")
    features = npuq.cpu_features()
    print(f"CPU kernels: {features['active']} (supported: {', '.join(features['supported'])}; OpenMP "
          f"{'on' if features['openmp'] else 'off'}), threads: {npuq.get_num_threads()} "
          f"(at most {npuq.MAX_THREADS})")
    return 0


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
    p.add_argument("--epochs", type=int_range(1, 100_000), default=None, help="override optim.epochs (a folder "
                   "trained with other settings is refused: docs/distillation.md)")
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


def shipped_checkpoints_help() -> str:
    """The ``--model`` help: the shipped image checkpoints by name, read without importing torch."""
    from npuq._cliutil import shipped_image_checkpoints

    names = shipped_image_checkpoints()
    return (f"a shipped checkpoint ({', '.join(names) or 'none installed'}) or a .safetensors checkpoint "
            "written by scripts/train_fmnist.py")


def add_quantization_options(p, *, weight_only: bool) -> None:
    """The options `npuq quantize` and `npuq compile` share."""
    from npuq.methods import ACTIVATION_METHODS, ROUNDINGS, WEIGHT_METHODS

    p.add_argument("--weights", default="wess", choices=WEIGHT_METHODS, help="weight quantization method")
    p.add_argument("--bits", type=int_range(2, 8), default=8, metavar="{2..8}", help="weight bits")
    acts = [*ACTIVATION_METHODS, "none"] if weight_only else list(ACTIVATION_METHODS)
    p.add_argument("--activations", default="mse", choices=acts, help="activation observer for int8 activations"
                   + (", or 'none' for weight-only quantization" if weight_only else ""))
    p.add_argument("--calib-batches", type=int_range(1, 100_000), default=8, help="calibration batches")
    p.add_argument("--batch-size", type=int_range(1, 65_536), default=256, help="calibration batch size")
    p.add_argument("--cle", action="store_true", help="cross-layer equalization (+ high-bias absorption)")
    p.add_argument("--bias-correction", action="store_true", help="correct the mean output error of each layer")
    p.add_argument("--rounding", default="double", choices=ROUNDINGS, help="requantization rounding")


def _add_quantize_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a Fashion-MNIST checkpoint and report accuracy and per-layer stats")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help=shipped_checkpoints_help())
    group.add_argument("--list", action="store_true", help="list the shipped checkpoints with their test accuracy "
                       "and exit")
    add_quantization_options(p, weight_only=True)
    p.add_argument("--limit", type=int_range(1), default=None, help="evaluate on the first N test images only")
    p.add_argument("--out", default=None, help="folder for report.json and report.md")
    p.set_defaults(func=_run_quantize)


def _list_checkpoints() -> int:
    from npuq._cliutil import shipped_image_checkpoints, shipped_metadata

    for name in shipped_image_checkpoints():
        meta = shipped_metadata(name)
        acc = meta.get("test_accuracy")
        acc_text = f"{100 * float(acc):.2f}%" if acc not in (None, "") else "-"
        print(f"{name:28s} {meta.get('model', '?'):14s} width {meta.get('width', '?'):4s} test top-1 {acc_text}")
    return 0


def _run_quantize(args) -> int:
    import json

    if args.list:
        return _list_checkpoints()
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
                       "(methods x bits x weight-only / integer W8A8..W2A8, full test set): tables, JSON and plots")
    p.add_argument("--out", default="results/ptq", help="output folder")
    p.add_argument("--config", default=None, help="a TOML file with BenchConfig fields (checkpoints, methods, bits, "
                   "modes, activations, calib_batches, test_limit, ...; task = \"imagenet\" for the real-model "
                   "section); command-line options override it")
    p.add_argument("--checkpoints", nargs="+", default=None, help="checkpoint names or paths (default: the four "
                   "shipped MobileNets)")
    p.add_argument("--methods", nargs="+", default=None, help="methods to run (default: all; an unknown name lists "
                   "the known ones)")
    p.add_argument("--bits", nargs="+", type=int_range(2, 8), metavar="{2..8}", default=None, help="weight bits")
    p.add_argument("--modes", nargs="+", default=None, choices=("weight_only", "w_a8"), help="weight-only and/or "
                   "int8 activations")
    p.add_argument("--activations", default=None, help="activation observer of the w_a8 mode")
    p.add_argument("--calib-batches", type=int_range(1, 100_000), default=None, help="calibration batches")
    p.add_argument("--limit", type=int_range(1), default=None, help="first N test images only (default: all "
                   "10000)")
    p.set_defaults(func=_run_ptq_bench)


def _read_config(path: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CommandError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise CommandError(f"config {path} is a directory, not a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: not valid TOML ({exc})") from None


def _check_fields(path: str, fields: dict, known) -> None:
    unknown = set(fields) - set(known)
    if unknown:
        raise CommandError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")


def _run_ptq_bench(args) -> int:
    from npuq._cliutil import removes_if_empty
    from npuq.ptq_benchmark import BenchConfig, run_benchmark, to_markdown

    fields = _read_config(args.config) if args.config else {}
    task = fields.get("task", "fashion_mnist")
    if task == "imagenet":
        return _run_imagenet_bench(args, fields)
    if task != "fashion_mnist":
        raise CommandError(f"{args.config}: unknown task {task!r}; known: 'fashion_mnist' (default), 'imagenet'")
    fields.pop("task", None)
    _check_fields(args.config, fields, BenchConfig.__dataclass_fields__)
    for key, value in (("checkpoints", args.checkpoints), ("methods", args.methods), ("bits", args.bits),
                       ("modes", args.modes), ("activations", args.activations),
                       ("calib_batches", args.calib_batches), ("test_limit", args.limit)):
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
    """The real-model section (``task = "imagenet"`` in the config): see npuq.ptq_imagenet."""
    from npuq._cliutil import removes_if_empty
    from npuq.ptq_imagenet import ImageNetBenchConfig, run_benchmark, to_markdown

    _check_fields(args.config, fields, ImageNetBenchConfig.__dataclass_fields__)
    for key, value in (("methods", args.methods), ("bits", args.bits), ("modes", args.modes),
                       ("activations", args.activations), ("eval_crops", args.limit)):
        if value is not None:
            fields[key] = value
    if args.checkpoints is not None or args.calib_batches is not None:
        raise CommandError("--checkpoints and --calib-batches do not apply to the ImageNet benchmark; set model and "
                           "calib_crops in its config")
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


if __name__ == "__main__":
    sys.exit(main())
