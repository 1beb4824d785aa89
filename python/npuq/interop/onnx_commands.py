"""``npuq export-onnx``: an NPU program as a QDQ ONNX model, or a checkpoint's float model (batch norms
folded) as ONNX for other toolchains to quantize."""

from __future__ import annotations

from pathlib import Path

from npuq._cliutil import CommandError

# models the command knows besides the checkpoints of `npuq compile`, with their input shape
_PRETRAINED = {"efficientnet_lite0": (3, 224, 224)}
_FMNIST_SHAPE = (1, 28, 28)


def add_commands(sub) -> None:
    from npuq._cliutil import shipped_checkpoints_help

    p = sub.add_parser(
        "export-onnx",
        help="write an NPU program as an ONNX QDQ model, or a checkpoint's float model (batch norms folded) as ONNX",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("program", nargs="?", default=None, help="a program file written by `npuq compile`")
    src.add_argument(
        "--model",
        default=None,
        help=f"export the float model instead: {shipped_checkpoints_help()}, or efficientnet_lite0 (published "
        "weights, the `imagenet` extra)",
    )
    p.add_argument("-o", "--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--input",
        default="float",
        choices=("float", "int8"),
        help="program export: float32 NCHW images quantized in the graph, or the program's int8 NHWC input",
    )
    p.add_argument(
        "--activation-type",
        default="int8",
        choices=("int8", "uint8"),
        help="program export: activation type in the graph (uint8: zero points + 128, the same values; "
        "what onnxruntime's fused x86 kernels take everywhere)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (program: 21, float model: 17)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from npuq.interop.onnx_export import OPSET, require_onnx

    require_onnx()
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise CommandError(f"{out}: the output file must end in .onnx")
    if not out.parent.is_dir():
        raise CommandError(f"{out.parent}: no such folder")
    if args.model is not None:
        return _export_float(args, out)
    from npuq.interop.onnx_export import program_to_onnx, save_onnx
    from npuq.npu import load_program

    program = load_program(args.program)
    model = program_to_onnx(program, input_type=args.input, activations=args.activation_type, opset=args.opset or OPSET)
    save_onnx(model, out)
    kinds = sorted({op.kind for op in program.ops})
    print(
        f"wrote {out} ({out.stat().st_size} bytes): {len(program.ops)} ops ({', '.join(kinds)}) as QDQ, "
        f"{args.input} input, {args.activation_type} activations, opset {args.opset or OPSET}"
    )
    return 0


def _export_float(args, out: Path) -> int:
    from npuq.interop.onnx_export import float_model_to_onnx

    if args.input != "float" or args.activation_type != "int8":
        raise CommandError("--input and --activation-type apply to a program export; a float model takes float images")
    if args.model in _PRETRAINED:
        from npuq.models.efficientnet import efficientnet_lite0

        model, shape = efficientnet_lite0(pretrained=True), _PRETRAINED[args.model]
    else:
        from npuq.models.checkpoints import load_checkpoint

        model, _ = load_checkpoint(args.model)
        shape = _FMNIST_SHAPE
    import importlib.util

    check = importlib.util.find_spec("onnxruntime") is not None  # the check runs where onnxruntime is installed
    result = float_model_to_onnx(model.eval(), shape, out, opset=args.opset or 17, check=check)
    check = (
        f"; onnxruntime vs the folded torch model: max |diff| {result['max_abs_diff']:.2e} "
        f"(logits up to {result['max_abs_logit']:.3g})"
        if result["max_abs_diff"] is not None
        else ""
    )
    print(f"wrote {out} ({out.stat().st_size} bytes): {args.model}, input (N, {', '.join(map(str, shape))}){check}")
    return 0


__all__ = ["add_commands"]
