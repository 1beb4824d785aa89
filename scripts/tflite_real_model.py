#!/usr/bin/env python3
"""EfficientNet-Lite0 (published weights) as int8 TFLite models, run by LiteRT against npuq's emulator.

For per-channel and WESS W8A8 (MSE activation calibration on real photographs, as the ImageNet PTQ
benchmark quantizes): compile the program, export it with ``program_to_tflite(multipliers="nearest")``
(the compiled multipliers are not float32-expressible, see npuq.interop.tflite_export), and also export
the program re-derived the TFLite way (``snap_to_tflite``), which exports exactly. Each model runs on
LiteRT's reference kernels (every intermediate kept) and its program on the emulator, on the same int8
evaluation crops; the script reports per op the values that differ and the largest difference, whether
the logits are equal, and top-1 agreement. Writes the two .tflite files and a JSON.

Then the other direction, as a user with a TFLite file would: the exactly exported per-channel model is
imported (``npuq.from_tflite``) and checked against LiteRT on every tensor, and the import rewritten for a
per-layer NPU (``npuq.interop.per_layer.to_per_layer``: one scale per layer + 4-bit WESS shifts) is
measured against the imported int8 model on the evaluation photographs (top-1 agreement, mean KL of the
softmax outputs, logit SQNR; ``npuq.fidelity``).

    python3 scripts/tflite_real_model.py --crops 32 --out docs/results/interop --models results/interop
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import npuq
from npuq.fidelity import fidelity
from npuq.interop.per_layer import to_per_layer
from npuq.interop.tflite_export import inexact_ops, program_to_tflite, snap_to_tflite
from npuq.interop.tflite_import import import_tflite


def litert(model: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=model,
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
        num_threads=1,
    )
    interp.allocate_tensors()
    return interp


def run_litert(interp, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return {n: interp.get_tensor(index[n]).copy() for n in names}


def compare(program: npuq.Program, model: bytes, xq: np.ndarray) -> dict:
    """Per op: values that differ between LiteRT and the emulator, max |diff|, images where it differs;
    logits equal per image; top-1 agreement; seconds per image of each."""
    emu = npuq.Emulator(program)
    t0 = time.perf_counter()
    _, values = emu.run(xq, capture=True)
    t_emu = (time.perf_counter() - t0) / len(xq)
    interp = litert(model)
    names = [op.name for op in program.ops]
    per_op = {op.name: dict(kind=op.kind, values=0, differ=0, max_abs=0, images=0) for op in program.ops}
    logits_equal = top1_equal = 0
    t0 = time.perf_counter()
    for i in range(len(xq)):
        got = run_litert(interp, xq[i : i + 1], names)
        for op in program.ops:
            want = np.asarray(values[op.name][i]).astype(np.int32)
            d = np.abs(got[op.name][0].astype(np.int32).reshape(want.shape) - want)
            row = per_op[op.name]
            row["values"] += d.size
            row["differ"] += int((d > 0).sum())
            row["max_abs"] = max(row["max_abs"], int(d.max()))
            row["images"] += int(d.max() > 0)
        out_emu = np.asarray(values[program.output][i]).ravel()
        out_tfl = got[program.output][0].ravel()
        logits_equal += bool(np.array_equal(out_emu, out_tfl))
        top1_equal += int(np.argmax(out_emu) == np.argmax(out_tfl))
    t_tfl = (time.perf_counter() - t0) / len(xq)
    kinds: dict[str, dict] = {}
    for row in per_op.values():
        k = kinds.setdefault(row["kind"], dict(ops=0, ops_differing=0, values=0, differ=0, max_abs=0))
        k["ops"] += 1
        k["ops_differing"] += row["differ"] > 0
        k["values"] += row["values"]
        k["differ"] += row["differ"]
        k["max_abs"] = max(k["max_abs"], row["max_abs"])
    first_op = next((op.name for op in program.ops if per_op[op.name]["differ"]), None)
    return dict(
        images=len(xq),
        logits_equal_images=logits_equal,
        top1_agreement=top1_equal / len(xq),
        ops_differing=sum(r["differ"] > 0 for r in per_op.values()),
        ops=len(per_op),
        first_differing_op=first_op,
        by_kind=kinds,
        per_op={k: v for k, v in per_op.items() if v["differ"]},
        litert_seconds_per_image=t_tfl,
        emulator_seconds_per_image=t_emu,
    )


def compare_import(model: bytes, xq: np.ndarray) -> tuple[dict, object]:
    """The imported program of ``model`` against LiteRT on every tensor the import maps."""
    imported = import_tflite(model)
    values_of = imported.report.values
    _, values = npuq.Emulator(imported.program).run(xq, capture=True)
    interp = litert(model)
    differ = total = 0
    worst: dict[str, int] = {}
    for i in range(len(xq)):
        got = run_litert(interp, xq[i : i + 1], list(values_of))
        for tname, vname in values_of.items():
            want = np.asarray(values[vname][i]).astype(np.int32)
            d = np.abs(got[tname][0].astype(np.int32).reshape(want.shape) - want)
            total += d.size
            differ += int((d > 0).sum())
            if d.max() > 0:
                worst[tname] = max(worst.get(tname, 0), int(d.max()))
    report = imported.report
    return (
        dict(
            tensors_compared=len(values_of),
            values=total,
            values_differing=differ,
            tensors_differing=worst,
            layers=len(report.layers),
            per_layer_ready=report.per_layer_ready,
            layer_forms={
                f: sum(1 for x in report.layers if x.weights == f) for f in ("per_tensor", "wess", "per_channel")
            },
            tflite_variants=len(report.tflite_variants),
        ),
        imported,
    )


def per_layer_fidelity(imported, xq: np.ndarray, calibration: np.ndarray) -> dict:
    """The per-layer (WESS) rewrite of an imported per-channel program against the program itself, without
    and with the bias correction on calibration crops (disjoint photographs)."""
    ref = torch.from_numpy(np.asarray(npuq.Emulator(imported.program).logits(xq)))
    out: dict = {}
    variants = [
        (f"{m}{'+bc' if c is not None else ''}", m, c) for m in ("wess", "wess_mse") for c in (None, calibration)
    ]
    for label, method, calib in variants:
        rewritten, changed = to_per_layer(imported.program, method=method, calibration=calib)
        got = torch.from_numpy(np.asarray(npuq.Emulator(rewritten).logits(xq)))
        sqnr = [c.weight_sqnr_db for c in changed]
        out[label] = dict(
            layers_rewritten=len(changed),
            max_shift=max((c.max_shift for c in changed), default=0),
            weight_sqnr_db_min=min(sqnr, default=None),
            weight_sqnr_db_median=float(np.median(sqnr)) if sqnr else None,
            fidelity_vs_imported_int8=fidelity(ref, got),
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=32, help="evaluation crops (default 32)")
    ap.add_argument("--calib-crops", type=int, default=64, help="calibration crops (default 64)")
    ap.add_argument(
        "--fidelity-crops", type=int, default=512, help="evaluation crops of the per-layer rewrite's fidelity"
    )
    ap.add_argument("--methods", default="per_channel,wess")
    ap.add_argument("--out", default="docs/results/interop", help="folder of the JSON")
    ap.add_argument("--models", default="results/interop", help="folder of the .tflite files")
    ap.add_argument("--threads", type=int, default=1, help="torch and emulator threads (LiteRT runs on one)")
    ap.add_argument("--no-snapped", action="store_true", help="skip the exactly exported re-derived programs")
    args = ap.parse_args(argv)
    from npuq.data.photos import photo_crops
    from npuq.models.efficientnet import efficientnet_lite0, preprocess

    torch.set_num_threads(args.threads)
    npuq.set_num_threads(args.threads)
    model = efficientnet_lite0(pretrained=True).eval()
    calib = preprocess(photo_crops("calibration", args.calib_crops, seed=0))
    evaluation = preprocess(photo_crops("evaluation", args.crops, seed=0))
    out, models = Path(args.out), Path(args.models)
    out.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    result: dict = dict(
        command="python3 scripts/tflite_real_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        model="efficientnet_lite0 (published weights)",
        calibration_crops=args.calib_crops,
        evaluation_crops=args.crops,
        machine=platform.processor() or platform.machine(),
        threads=args.threads,
        methods={},
    )
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qm = npuq.quantize(
                model, list(torch.split(calib, 32)), weights=method, bits=8, activations="mse", calib_batches=None
            )
        program = npuq.compile(qm, name=f"efficientnet_lite0_{method}_w8a8")
        xq = npuq.Emulator(program).quantize_input(evaluation)
        entry: dict = dict(quantize_compile_seconds=time.perf_counter() - t0)
        kinds: dict[str, int] = {}
        for op in program.ops:
            kinds[op.kind] = kinds.get(op.kind, 0) + 1
        entry["program_ops"] = kinds
        bad = inexact_ops(program)
        entry["ops_not_expressible_exactly"] = len(bad)
        data = program_to_tflite(program, multipliers="nearest")
        path = models / f"efficientnet_lite0_{method}_w8a8.tflite"
        path.write_bytes(data)
        entry["tflite"] = dict(path=str(path), bytes=len(data))
        print(f"{method}: {len(program.ops)} ops, {len(bad)} not expressible exactly; exported {len(data)} bytes")
        entry["as_compiled_nearest"] = compare(program, data, xq)
        print(f"  as compiled (nearest): {_line(entry['as_compiled_nearest'])}")
        if not args.no_snapped:
            snapped = snap_to_tflite(program)
            exact = program_to_tflite(snapped)
            entry["snapped_exact"] = compare(snapped, exact, xq)
            print(f"  snapped (exact): {_line(entry['snapped_exact'])}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = npuq.Emulator(program).run(xq)
                b = npuq.Emulator(snapped).run(xq)
            entry["snapped_vs_compiled_emulator"] = dict(
                logits_equal_images=int(np.all(a == b, axis=1).sum()),
                top1_agreement=float(np.mean(np.argmax(a, 1) == np.argmax(b, 1))),
                max_abs_logit_diff=int(np.abs(a.astype(int) - b.astype(int)).max()),
            )
            entry["imported_vs_litert"], imported = compare_import(exact, xq)
            r = entry["imported_vs_litert"]
            print(
                f"  imported back: {r['values_differing']}/{r['values']} values differ from LiteRT over "
                f"{r['tensors_compared']} tensors; {r['per_layer_ready']} of {r['layers']} layers per-layer ready"
            )
            if method == "per_channel":
                many = preprocess(photo_crops("evaluation", args.fidelity_crops, seed=1))
                xq_many = npuq.Emulator(imported.program).quantize_input(many)
                xq_calib = npuq.Emulator(imported.program).quantize_input(calib)
                entry["per_layer_rewrite"] = pl = per_layer_fidelity(imported, xq_many, xq_calib)
                for label, r in pl.items():
                    fv = r["fidelity_vs_imported_int8"]
                    print(
                        f"  per-layer rewrite ({label}): {r['layers_rewritten']} layers; top-1 agreement with "
                        f"the int8 import {fv['top1_agreement']:.3f}, mean KL {fv['kl_mean']:.4f} (n={fv['n']})"
                    )
        result["methods"][method] = entry
    path = out / "tflite_real_model.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return 0


def _line(r: dict) -> str:
    kinds = ", ".join(
        f"{k} {v['differ']}/{v['values']} (max {v['max_abs']})" for k, v in r["by_kind"].items() if v["differ"]
    )
    return (
        f"{r['ops_differing']}/{r['ops']} ops differ [{kinds or 'none'}]; logits equal on "
        f"{r['logits_equal_images']}/{r['images']} images; top-1 agreement {100 * r['top1_agreement']:.1f}%; "
        f"LiteRT {r['litert_seconds_per_image']:.2f} s/image, "
        f"emulator {r['emulator_seconds_per_image'] * 1e3:.1f} ms/image"
    )


if __name__ == "__main__":
    sys.exit(main())
