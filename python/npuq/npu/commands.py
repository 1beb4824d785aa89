"""``npuq compile`` and ``npuq run``: a checkpoint becomes an NPU program; a program is evaluated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from npuq._cliutil import CommandError


def add_commands(sub) -> None:
    from npuq._cliutil import add_quantization_options, int_range, shipped_checkpoints_help, threads_arg
    from npuq.methods import OVERFLOWS

    c = sub.add_parser("compile", help="quantize a Fashion-MNIST checkpoint and compile it into an NPU program file")
    c.add_argument("--model", required=True, help=shipped_checkpoints_help())
    c.add_argument("-o", "--out", required=True, help="the program file to write (e.g. mobilenet_v2.npuq)")
    add_quantization_options(c, weight_only=False)
    c.add_argument("--overflow", default="raise", choices=OVERFLOWS, help="what an int32 accumulator overflow does")
    c.set_defaults(func=_run_compile)

    r = sub.add_parser(
        "run", help="accuracy of an NPU program on Fashion-MNIST (or on .npy images + labels), emulated bit-exactly"
    )
    r.add_argument("program", help="a program file written by `npuq compile`")
    r.add_argument("--split", default="test", choices=("test", "train"), help="Fashion-MNIST split")
    r.add_argument(
        "--images",
        default=None,
        help="a .npy of float images (N, C, H, W) or int8 inputs (N, H, W, C) instead of Fashion-MNIST; needs --labels",
    )
    r.add_argument("--labels", default=None, help="a .npy of integer labels (N,); needs --images")
    r.add_argument("--limit", type=int_range(1), default=None, help="first N images only")
    r.add_argument("--threads", type=threads_arg, default=None, help="native kernel threads (default: all cores)")
    r.add_argument("--batch-size", type=int_range(1, 65_536), default=500, help="images per emulator call")
    r.add_argument("--json", default=None, help="write the result as JSON to this file")
    r.add_argument(
        "--dump",
        default=None,
        metavar="DIR",
        help="also write every op's output in the dump layout "
        "`npuq verify` reads (a reference dump; DIR must be new or empty; all images: mind --limit)",
    )
    r.add_argument("--dump-format", default="bin", choices=("bin", "hex", "npy", "all"), help="file format of --dump")
    r.set_defaults(func=_run_run)


def _run_compile(args) -> int:
    import npuq
    from npuq.data.fashion_mnist import fashion_mnist_loader
    from npuq.models.checkpoints import load_checkpoint

    model, meta = load_checkpoint(args.model)
    calib = fashion_mnist_loader(
        "train", batch_size=args.batch_size, shuffle=True, seed=1234, limit=args.calib_batches * args.batch_size
    )
    qmodel = npuq.quantize(
        model,
        calib,
        weights=args.weights,
        bits=args.bits,
        activations=args.activations,
        calib_batches=args.calib_batches,
        cle=args.cle,
        bias_correction=args.bias_correction,
        rounding=args.rounding,
        overflow=args.overflow,
        progress=True,
    )
    name = Path(args.model).stem if args.model.endswith(".safetensors") else args.model
    program = npuq.compile(qmodel, name=name)
    program.info["checkpoint"] = {"name": name, "test_accuracy": meta.get("test_accuracy")}
    out = program.save(args.out)
    print(program.summary())
    print(f"wrote {out} ({out.stat().st_size} bytes, sha256 {program.digest()[:16]}...)")
    return 0


def _load_arrays(args):
    from npuq._untrusted import load_npy

    images = load_npy(args.images, CommandError, "--images file")
    labels = load_npy(args.labels, CommandError, "--labels file")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CommandError(f"{args.labels}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if images.ndim < 2:
        raise CommandError(
            f"{args.images}: images must be a batch (N, C, H, W) or (N, H, W, C), got shape {images.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise CommandError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise CommandError(f"{args.images}: no images")
    return images, labels


def _run_run(args) -> int:
    import time

    from npuq.npu import Emulator, load_program

    if (args.images is None) != (args.labels is None):
        raise CommandError("--images and --labels go together: give both (or neither, for Fashion-MNIST)")
    program = load_program(args.program)
    emu = Emulator(program, threads=args.threads, batch_size=args.batch_size)
    if args.images is not None:
        images, labels = _load_arrays(args)
        source = args.images
    else:
        from npuq.data.fashion_mnist import fashion_mnist_tensors

        images, labels = fashion_mnist_tensors(args.split)
        source = f"fashion-mnist:{args.split}"
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    if args.dump is not None:
        from npuq.npu.vectors import write_dump

        written = write_dump(program, images, args.dump, fmt=args.dump_format, threads=args.threads)
        print(f"wrote {len(written)} op output files of {len(labels)} images to {args.dump}/")
    batches = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, len(labels), args.batch_size)
    ]
    start = time.perf_counter()
    try:
        result = emu.evaluate(batches, progress=True)
    except (TypeError, ValueError) as exc:
        print(f"npuq run: {source}: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    result.update(
        program=str(args.program),
        model=program.model,
        data=source,
        seconds=seconds,
        images_per_second=result["total"] / seconds,
        rounding=program.rounding,
    )
    print(
        f"{program.model}: top-1 {100 * result['accuracy']:.2f}% ({result['correct']}/{result['total']}) on "
        f"{source}, {result['images_per_second']:.0f} images/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


__all__ = ["add_commands"]
