"""``npuq quantize``: quantize a Fashion-MNIST checkpoint and report its accuracy and per-layer statistics.

The parser is built without torch; the command imports the quantizer when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_commands(sub) -> None:
    """Register ``npuq quantize`` on the argparse sub-parsers ``sub``."""
    from npuq._cliutil import add_quantization_options, int_range, shipped_checkpoints_help

    p = sub.add_parser("quantize", help="quantize a Fashion-MNIST checkpoint and report accuracy and per-layer stats")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help=shipped_checkpoints_help())
    group.add_argument(
        "--list", action="store_true", help="list the shipped checkpoints with their test accuracy and exit"
    )
    add_quantization_options(p, weight_only=True)
    p.add_argument("--limit", type=int_range(1), default=None, help="evaluate on the first N test images only")
    p.add_argument("--out", default=None, help="folder for report.json and report.md")
    p.set_defaults(func=_run_quantize)


def _list_checkpoints() -> int:
    import sys

    from npuq._cliutil import shipped_image_checkpoints, shipped_metadata
    from npuq._shipped import INSTALL_HINT

    names = shipped_image_checkpoints()
    if not names:  # an empty list is an answer, not an error; stdout stays empty for scripts
        print(f"npuq quantize: no shipped checkpoints installed; {INSTALL_HINT}", file=sys.stderr)
    for name in names:
        meta = shipped_metadata(name)
        acc = meta.get("test_accuracy")
        acc_text = f"{100 * float(acc):.2f}%" if acc not in (None, "") else "-"
        print(f"{name:28s} {meta.get('model', '?'):14s} width {meta.get('width', '?'):4s} test top-1 {acc_text}")
    return 0


def _run_quantize(args) -> int:
    if args.list:
        return _list_checkpoints()
    import npuq
    from npuq.data.fashion_mnist import fashion_mnist_loader
    from npuq.models.checkpoints import load_checkpoint
    from npuq.quant.api import evaluate

    model, meta = load_checkpoint(args.model)
    calib = fashion_mnist_loader(
        "train", batch_size=args.batch_size, shuffle=True, seed=1234, limit=args.calib_batches * args.batch_size
    )
    test = fashion_mnist_loader("test", batch_size=1000, limit=args.limit)
    acts = None if args.activations == "none" else args.activations
    qmodel = npuq.quantize(
        model,
        calib,
        weights=args.weights,
        bits=args.bits,
        activations=acts,
        calib_batches=args.calib_batches,
        cle=args.cle,
        bias_correction=args.bias_correction,
        rounding=args.rounding,
        progress=True,
    )
    fp32 = evaluate(model, test, progress=True, desc="FP32")
    acc = evaluate(qmodel, test, progress=True, desc="quantized")
    mode = f"W{args.bits}A8" if acts else f"W{args.bits} weight-only"
    print(qmodel.report.to_markdown())
    print(
        f"\n{args.model}: FP32 {100 * fp32:.2f}%  ->  {args.weights} {mode}: {100 * acc:.2f}% "
        f"({100 * (acc - fp32):+.2f} points)"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        qmodel.report.save_json(out / "report.json")
        (out / "report.md").write_text(qmodel.report.to_markdown() + "\n")
        (out / "accuracy.json").write_text(
            json.dumps(dict(model=args.model, fp32=fp32, quantized=acc, config=qmodel.report.config), indent=1)
        )
        print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'accuracy.json'}")
    return 0


__all__ = ["add_commands"]
