"""onnxruntime against the emulator on EfficientNet-Lite0 (published weights), per op.

Quantizes the network W8A8 twice as the ImageNet PTQ benchmark does (per-channel weights and WESS, MSE
activation calibration on the photo calibration crops), compiles both, exports each program to ONNX (QDQ,
float input) and compares onnxruntime (graph optimizations off and all on) with npuq.Emulator on the
evaluation crops (npuq.interop.onnx_compare), with int8 activations in the graph and with uint8 ones.
Writes results.json and lsb_per_op_<weights>_<activations>.png to --out.

    PYTHONPATH=python python3 scripts/onnx_vs_emulator.py --out docs/results/interop/onnx
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import npuq
from npuq.data.photos import photo_crops
from npuq.interop import onnx_compare
from npuq.models.efficientnet import efficientnet_lite0, preprocess

WEIGHTS = ("per_channel", "wess")
ACTIVATIONS = ("int8", "uint8")  # the NPU's types, and the ones onnxruntime's x86 kernels fuse everywhere


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/results/interop/onnx")
    p.add_argument("--calib-crops", type=int, default=256)
    p.add_argument("--eval-crops", type=int, default=512)
    p.add_argument("--isolated-crops", type=int, default=64, help="crops for the per-op isolated measurement")
    p.add_argument("--programs", default=None, help="folder with effl0_<weights>.npuq to reuse instead of quantizing")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    evaluation = preprocess(photo_crops("evaluation", args.eval_crops, seed=0)).numpy()
    model = efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():  # the float model's classes: how far quantization itself moves the top-1
        fp32_top1 = torch.cat([model(b).argmax(1) for b in torch.split(torch.from_numpy(evaluation), 64)]).numpy()
    programs = {}
    if args.programs:
        programs = {w: npuq.load_program(Path(args.programs) / f"effl0_{w}.npuq") for w in WEIGHTS}
    else:
        calib = list(torch.split(preprocess(photo_crops("calibration", args.calib_crops, seed=0)), 32))
        for w in WEIGHTS:
            q = npuq.quantize(model, calib, weights=w, bits=8, activations="mse", calib_batches=None)
            programs[w] = npuq.compile(q, name=f"efficientnet_lite0_{w}_w8a8")
    results = dict(
        model="efficientnet_lite0 (published weights), W8A8, MSE activations, rounding double",
        eval_crops=args.eval_crops,
        calib_crops=args.calib_crops,
        environment=dict(
            onnxruntime=__import__("onnxruntime").__version__,
            onnx=__import__("onnx").__version__,
            torch=torch.__version__,
            machine=platform.machine(),
        ),
        programs={},
    )
    for w, program in programs.items():
        for act in ACTIVATIONS:
            r = onnx_compare.compare(program, evaluation, activations=act, batch_size=32)
            r["isolated"] = onnx_compare.isolated(program, evaluation, activations=act, limit=args.isolated_crops)
            r["ops"] = len(program.ops)
            r["fp32_top1_agreement"] = {
                "emulator": float(np.mean(np.asarray(r["emulator_top1"]) == fp32_top1)),
                **{
                    level: float(np.mean(np.asarray(v["unprobed"]["top1"]) == fp32_top1))
                    for level, v in r["levels"].items()
                },
            }
            results["programs"][f"{w}/{act}"] = r
            onnx_compare.plot(
                r, out / f"lsb_per_op_{w}_{act}.png", title=f"EfficientNet-Lite0 {w} W8A8, {act} activations in ONNX"
            )
            for level, v in r["levels"].items():
                iso = r["isolated"][level]
                print(
                    f"{w} {act} {level}: top-1 agreement {v['top1_agreement']:.4f}"
                    f" (unprobed {v['unprobed']['top1_agreement']:.4f}),"
                    f" max {v['max_lsb']} LSB, output max {v['output']['max_lsb']} mean {v['output']['mean_lsb']:.3f};"
                    f" isolated ops max {max(x['max_lsb'] for x in iso)}",
                    flush=True,
                )
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / 'results.json'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
