"""The ``npuq export-vectors`` and ``npuq verify`` commands, and the inputs they read (``.npy`` images or
Fashion-MNIST)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from npuq._untrusted import load_npy
from npuq.npu.program import ProgramError, load_program
from npuq.npu.vectors.export import export_vectors
from npuq.npu.vectors.formats import (
    _FASHION_SPEC,
    MANIFEST_NAME,
    REPORT_FORMAT,
    REPORT_FORMAT_VERSION,
    VectorsError,
    _one_line,
)
from npuq.npu.vectors.verify import verify


# ====================================================================================== inputs for the CLI
def load_inputs(spec: str) -> tuple[np.ndarray, str]:
    """The images named by a command-line INPUTS argument, and a description for the manifest.

    ``fashion-mnist:test:N`` / ``fashion-mnist:train:N``: the first N images of the split, normalized
    as the torch models take them (float32 NCHW). A ``.npy`` file: int8 (already quantized, NHWC) or
    float (NCHW images).
    """
    match = _FASHION_SPEC.match(spec)
    if match:
        return _fashion_mnist_images(match.group(1), int(match.group(2))), spec
    if spec.startswith("fashion-mnist"):
        raise VectorsError(f"inputs {spec!r}: write fashion-mnist:test:N or fashion-mnist:train:N (N images)")
    path = Path(spec)
    if path.suffix != ".npy":
        raise VectorsError(f"inputs {spec!r}: expected a .npy file or fashion-mnist:<train|test>:N")
    array = load_npy(path, VectorsError, "inputs")
    if not isinstance(array, np.ndarray) or not (array.dtype == np.int8 or array.dtype.kind == "f"):
        raise VectorsError(
            f"{path}: dtype {getattr(array, 'dtype', type(array).__name__)}; give int8 quantized "
            f"inputs (N, H, W, C) or float images (N, C, H, W)"
        )
    return array, path.name


def _fashion_mnist_images(split: str, count: int) -> np.ndarray:
    from npuq.data.fashion_mnist import MEAN, STD, load_fashion_mnist

    images, _ = load_fashion_mnist(split)
    if not 1 <= count <= len(images):
        raise VectorsError(f"fashion-mnist:{split}:{count}: N must be in [1, {len(images)}]")
    # the same float32 steps as fashion_mnist_tensors: (pixel / 255 - MEAN) / STD
    x = images[:count].astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x[:, None])


# ====================================================================================== command line
def add_commands(sub) -> None:
    """Register ``npuq export-vectors`` and ``npuq verify`` on the argparse sub-parsers ``sub``."""
    from npuq._cliutil import threads_arg

    e = sub.add_parser(
        "export-vectors",
        help="write golden test vectors of an NPU program (per-op inputs, "
        "parameters and expected outputs as .hex/.bin/.npy, with a manifest)",
    )
    e.add_argument("program", help="a program file written by `npuq compile`")
    e.add_argument(
        "inputs",
        help="fashion-mnist:test:N, fashion-mnist:train:N, or a .npy of int8 inputs "
        "(N, H, W, C) or float images (N, C, H, W)",
    )
    e.add_argument("outdir", help="the directory to write (new or empty)")
    e.add_argument(
        "--threads", type=threads_arg, default=None, help="native kernel threads (the files do not depend on it)"
    )
    e.add_argument(
        "--force",
        action="store_true",
        help="replace a previous vector set in OUTDIR (one holding nothing but the set's files)",
    )
    e.add_argument(
        "--formats",
        default=None,
        metavar="LIST",
        help="the file formats to write, comma-separated: hex (for $readmemh), bin, npy (default: all three)",
    )
    e.add_argument(
        "--ops",
        default=None,
        metavar="SELECTION",
        help="the op folders to write, comma-separated: op names or glob patterns, kinds (conv2d), indices "
        "(5; -1 is the last op) and half-open index ranges (3:7, :10, 40:); write --ops=-3: when it starts "
        "with '-' (default: every op)",
    )
    e.add_argument(
        "--accumulators",
        action="store_true",
        help="conv2d and fully_connected folders also get accumulator.*: the int32 accumulators after the "
        "overflow policy, before requantization",
    )
    e.set_defaults(func=_run_export)

    v = sub.add_parser(
        "verify",
        help="compare a hardware dump with golden vectors; exit 0 pass, 1 mismatch "
        "or missing ops, 2 broken golden set or malformed dump",
    )
    v.add_argument("vectors", help="the golden vector directory written by `npuq export-vectors`")
    v.add_argument(
        "dump",
        help="the hardware's outputs: <op dir>/output.bin, .hex or .npy, same relative paths "
        "(`npuq run --dump` writes one)",
    )
    v.add_argument("--json", default=None, help="also write the report as JSON to this file")
    # append + optional value: repeatable, and a bare --allow-missing still means any op (as before)
    v.add_argument(
        "--allow-missing",
        action="append",
        nargs="?",
        const="*",
        default=None,
        metavar="NAME",
        help="ops that may be absent from the dump: op names, op folders or output paths, glob "
        "patterns allowed ('pool', 'ops/01*'); repeat or separate with commas; bare: any op",
    )
    v.set_defaults(func=_run_verify)


def _run_export(args) -> int:
    from npuq.data.fashion_mnist import IdxFormatError

    try:
        program = load_program(args.program)
        images, source = load_inputs(args.inputs)
        manifest = export_vectors(
            program,
            images,
            args.outdir,
            threads=args.threads,
            source=source,
            overwrite=args.force,
            progress=True,
            formats=args.formats,
            ops=args.ops,
            accumulators=args.accumulators,
        )
    except (VectorsError, ProgramError, IdxFormatError, OSError) as exc:
        print(f"npuq export-vectors: error: {_one_line(exc, 2000)}", file=sys.stderr)
        return 2
    sel = manifest.get("selection")
    ops = f"{len(manifest['ops'])} ops" if sel is None else f"{len(sel['ops'])} of {len(manifest['ops'])} ops"
    detail = (
        "" if sel is None else f" as {','.join(sel['formats'])}" + (" with accumulators" if sel["accumulators"] else "")
    )
    print(
        f"wrote {manifest['file_count']} files ({manifest['total_bytes']} bytes) for {ops}{detail} "
        f"and {manifest['images']} images of '{manifest['model']}' to {args.outdir}/ "
        f"({MANIFEST_NAME}: program sha256 {manifest['program_sha256'][:16]}...)"
    )
    return 0


def _run_verify(args) -> int:
    try:
        result = verify(args.vectors, args.dump, allow_missing=args.allow_missing or ())
    except VectorsError as exc:
        print(f"npuq verify: error: {_one_line(exc, 2000)}", file=sys.stderr)
        if args.json:
            report = {
                "format": REPORT_FORMAT,
                "format_version": REPORT_FORMAT_VERSION,
                "status": "error",
                "exit_code": 2,
                "vectors": str(args.vectors),
                "dump": str(args.dump),
                "error": str(exc),
            }
            try:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            except OSError as err:
                print(f"npuq verify: cannot write {args.json}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(result.report())
    if args.json:
        try:
            result.save_json(args.json)
        except OSError as exc:
            print(f"npuq verify: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return result.exit_code
