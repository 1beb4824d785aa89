"""``npuq import-tflite``: an int8 TFLite model becomes an NPU program."""

from __future__ import annotations

import json
from pathlib import Path

from npuq._cliutil import CommandError


def add_commands(sub) -> None:
    p = sub.add_parser(
        "import-tflite",
        help="import an int8 TFLite model as an NPU program, bit-exact against TFLite's reference kernels",
    )
    p.add_argument("model", help="an int8 .tflite file (full-integer quantization)")
    p.add_argument("-o", "--out", required=True, help="the program file to write (e.g. model.npuq)")
    p.add_argument(
        "--drop-softmax",
        action="store_true",
        help="leave out a final SOFTMAX (npuq has no softmax op): the program outputs the logits (same arg-max)",
    )
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="rewrite per-channel layers into WESS form (one scale per layer + 4-bit shifts) for a per-layer NPU",
    )
    p.add_argument(
        "--fc-rescale",
        default="tflite",
        choices=("tflite", "integer"),
        help="FULLY_CONNECTED requantization: TFLite's floating-point rescale (bit-exact against LiteRT, emulator "
        "only) or the NPU's integer multiplier (runs everywhere; at most 1 LSB from LiteRT on rare outputs)",
    )
    p.add_argument(
        "--per-layer-method",
        default="wess_mse",
        choices=("wess_mse", "wess"),
        help="the WESS weight quantizer of --per-layer (wess_mse: minimum squared error; wess: the layer scale "
        "covers the largest weight)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="NPY",
        help="with --per-layer: a .npy of the model's int8 inputs (N, H, W, C) or float images (N, C, H, W) for "
        "the bias correction of the rewritten layers",
    )
    p.add_argument("--report", default=None, help="write the import report as JSON to this file")
    p.add_argument("--name", default=None, help="the program's model name (default: the file's stem)")
    p.set_defaults(func=_run_import)


def _run_import(args) -> int:
    from npuq.interop.tflite_import import import_tflite

    if args.calibration and not args.per_layer:
        raise CommandError("--calibration is for the bias correction of --per-layer; add --per-layer")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise CommandError(f"{out}: is a directory; give the program file to write")
    if Path(args.model).resolve() == out.resolve():
        raise CommandError(f"{out}: the output would overwrite the model being imported")
    result = import_tflite(args.model, name=args.name, drop_softmax=args.drop_softmax, fc_rescale=args.fc_rescale)
    program, report = result.program, result.report
    summary = report.to_json()
    if args.per_layer:
        from npuq.interop.per_layer import to_per_layer

        calibration = None
        if args.calibration:
            from npuq._untrusted import load_npy
            from npuq.npu.emulator import Emulator

            arr = load_npy(args.calibration, CommandError, "calibration array")
            calibration = arr if arr.dtype.kind != "f" else Emulator(program).quantize_input(arr)
        program, changed = to_per_layer(program, method=args.per_layer_method, calibration=calibration)
        summary["per_layer_rewrite"] = [vars(c) for c in changed]
    print(report.summary())
    if args.per_layer:
        print(
            f"per-layer rewrite: {len(summary['per_layer_rewrite'])} per-channel layers moved to one scale + "
            f"4-bit shifts; all {len(report.layers)} layers now run on a per-layer NPU"
        )
        for c in summary["per_layer_rewrite"]:
            print(f"  {c['name']:<32} max shift {c['max_shift']:>2}  weight SQNR {c['weight_sqnr_db']:6.1f} dB")
    if args.report:
        Path(args.report).write_text(json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")
    written = program.save(out)
    print(f"wrote {written} ({written.stat().st_size} bytes, sha256 {program.digest()[:16]}...)")
    return 0
