#!/usr/bin/env python3
"""The emulator against the quantization simulation on the whole Fashion-MNIST test set.

For each shipped checkpoint and rounding mode: quantize (WESS W8A8 by default), compile, run the
program on the emulator and the quantized model on the torch simulation, and compare every int8 output
and the top-1 accuracy. Any difference is a bug (the two compute the same integers); the script exits
with status 1 if it finds one. Prints a markdown table and writes JSON.

    python3 scripts/emulator_vs_simulation.py --out results/emulator_vs_simulation.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import npuq
from npuq.data.fashion_mnist import fashion_mnist_loader, fashion_mnist_tensors
from npuq.models.checkpoints import list_checkpoints, load_checkpoint


def compare(name: str, rounding: str, weights: str, bits: int, x: torch.Tensor, y: np.ndarray) -> dict:
    model, _ = load_checkpoint(name)
    calib = fashion_mnist_loader("train", batch_size=256, shuffle=True, seed=1234, limit=8 * 256)
    qm = npuq.quantize(model, calib, weights=weights, bits=bits, activations="mse", rounding=rounding)
    emu = npuq.Emulator(npuq.compile(qm, name=name))
    start = time.perf_counter()
    q_emu = emu.run(x)
    t_emu = time.perf_counter() - start
    start = time.perf_counter()
    q_sim = torch.cat([qm.run_integer(x[i : i + 1000]) for i in range(0, len(x), 1000)]).numpy()
    t_sim = time.perf_counter() - start
    differing = int((q_emu != q_sim).any(axis=1).sum())
    return dict(
        checkpoint=name,
        rounding=rounding,
        weights=weights,
        bits=bits,
        images=len(y),
        emulator_top1=float((q_emu.argmax(1) == y).mean()),
        simulation_top1=float((q_sim.argmax(1) == y).mean()),
        images_with_any_different_logit=differing,
        emulator_seconds=t_emu,
        simulation_seconds=t_sim,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", default=None, help="default: every shipped checkpoint")
    p.add_argument("--roundings", nargs="+", default=["double", "single"], choices=("double", "single"))
    p.add_argument("--weights", default="wess")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--out", default="results/emulator_vs_simulation.json")
    args = p.parse_args(argv)
    x, y = fashion_mnist_tensors("test")
    y = y.numpy()
    rows = []
    names = args.checkpoints or list_checkpoints()
    for name in names:
        for rounding in args.roundings:
            rows.append(compare(name, rounding, args.weights, args.bits, x, y))
            r = rows[-1]
            print(
                f"{name} {rounding}: emulator {100 * r['emulator_top1']:.2f}%  simulation "
                f"{100 * r['simulation_top1']:.2f}%  differing images {r['images_with_any_different_logit']}",
                flush=True,
            )
    print(
        "\n| checkpoint | rounding | emulator top-1 | simulation top-1 | images with a differing logit | "
        "emulator s | simulation s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['checkpoint']} | {r['rounding']} | {100 * r['emulator_top1']:.2f}% | "
            f"{100 * r['simulation_top1']:.2f}% | {r['images_with_any_different_logit']} | "
            f"{r['emulator_seconds']:.2f} | {r['simulation_seconds']:.2f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(threads=npuq.get_num_threads(), rows=rows), indent=1) + "\n")
    print(f"wrote {out}")
    return 1 if any(r["images_with_any_different_logit"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
