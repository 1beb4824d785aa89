#!/usr/bin/env python3
"""The common vision model zoo on the NPU: for each torchvision architecture (random weights, randomized
batch-norm statistics; ``npuq.models.zoo``) quantize (WESS W8A8, MSE calibration), compile, and report

* the op count by kind and the program size,
* emulator images/s at 224x224 with 1 and 2 threads (best of ``--repeats`` runs of ``--images`` images),
* whether the emulator equals the quantization simulation on every value of every op (yes / no),
* whether a golden vector set of one image verifies PASS against the emulator's dump of it,
* the SQNR of the emulator's dequantized logits against the float model's (random weights: a measure of
  how much the int8 arithmetic of the network's ops loses, not of accuracy).

Writes ``zoo.json``, ``zoo.md`` and ``zoo_speed.png`` to ``--out``; exits 1 if any model's emulator and
simulation differ or its vectors fail to verify. Needs torchvision (the tests' extra).

    python3 benchmarks/bench_zoo.py --out results/zoo
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import LoadMeter, cpu_model

import npuq
from npuq.models.zoo import ZOO, zoo_model
from npuq.npu import Emulator, vectors
from npuq.runtime import cpu_features


def _images_per_s(emu: Emulator, x: np.ndarray, threads: int, repeats: int) -> tuple[float, float | None]:
    """(images/s of the best of ``repeats`` runs, the fraction of the CPUs other processes used meanwhile)."""
    emu.run(x[:1], threads=threads)  # warm-up: packs the layers
    meter = LoadMeter()
    best = min(_timed(lambda: emu.run(x, threads=threads)) for _ in range(repeats))
    return len(x) / best, meter.background_fraction()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _equal_to_simulation(qm, program, x: torch.Tensor) -> bool:
    _, values = Emulator(program).run(x, capture=True)
    _, env = qm.run_integer(x, capture=True)
    for op in program.ops:
        sim = env[op.name].numpy()
        sim = sim.transpose(0, 2, 3, 1) if sim.ndim == 4 else sim
        if not np.array_equal(values[op.name], sim):
            return False
    return True


def _verifies(program, x: torch.Tensor) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        vectors.export_vectors(program, x, Path(tmp) / "golden")
        vectors.write_dump(program, x, Path(tmp) / "dump", fmt=("bin", "hex", "npy"))
        return vectors.verify(Path(tmp) / "golden", Path(tmp) / "dump").passed


def report(name: str, images: int, repeats: int) -> dict:
    model = zoo_model(name, seed=3)
    g = torch.Generator().manual_seed(4)
    calib = [torch.randn(2, 3, 224, 224, generator=g) for _ in range(2)]
    start = time.perf_counter()
    qm = npuq.quantize(model, calib, weights="wess", bits=8, activations="mse")
    program = npuq.compile(qm, name=name)
    build_s = time.perf_counter() - start
    x = torch.randn(images, 3, 224, 224, generator=g)
    emu = Emulator(program)
    xq = emu.quantize_input(x)
    with torch.no_grad():
        reference = model(x).double()
    noise = torch.from_numpy(np.asarray(emu.logits(x), dtype=np.float64)) - reference
    one, two = _images_per_s(emu, xq, 1, repeats), _images_per_s(emu, xq, 2, repeats)
    sqnr = 10 * math.log10(float((reference**2).sum()) / max(float((noise**2).sum()), 1e-30))
    return {
        "model": name,
        "exercises": ZOO[name],
        "ops": len(program.ops),
        "ops_by_kind": dict(sorted(collections.Counter(op.kind for op in program.ops).items())),
        "program_bytes": len(program.to_bytes()),
        "images_per_s_1_thread": one[0],
        "images_per_s_2_threads": two[0],
        "background_load": [one[1], two[1]],  # other processes' share of the CPUs while timing
        "emulator_equals_simulation": _equal_to_simulation(qm, program, x[:2]),
        "verify_pass": _verifies(program, x[:1]),
        "logit_sqnr_db": sqnr,
        "quantize_and_compile_s": build_s,
    }


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| model | ops by kind | program | img/s 1 thread | img/s 2 threads | emulator == simulation | verify "
        "| logit SQNR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        kinds = ", ".join(f"{k} {n}" for k, n in r["ops_by_kind"].items())
        lines.append(
            f"| {r['model']} | {r['ops']}: {kinds} | {r['program_bytes'] / 1e6:.1f} MB | "
            f"{r['images_per_s_1_thread']:.1f} | {r['images_per_s_2_threads']:.1f} | "
            f"{'yes' if r['emulator_equals_simulation'] else 'NO'} | {'PASS' if r['verify_pass'] else 'FAIL'} | "
            f"{r['logit_sqnr_db']:.1f} dB |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(pos - 0.2, [r["images_per_s_1_thread"] for r in rows], 0.4, label="1 thread")
    ax.bar(pos + 0.2, [r["images_per_s_2_threads"] for r in rows], 0.4, label="2 threads")
    ax.set_xticks(pos, names, rotation=20, ha="right")
    ax.set_ylabel("images / s (224x224)")
    ax.set_title("npuq emulator on the model zoo (WESS W8A8)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(ZOO), default=list(ZOO))
    ap.add_argument("--images", type=int, default=4, help="images per timed run (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per thread count; the best counts")
    ap.add_argument("--out", type=Path, default=Path("results/zoo"))
    args = ap.parse_args(argv)
    if args.images < 2 or args.repeats < 1:
        ap.error("--images must be >= 2 and --repeats >= 1")
    from tqdm.auto import tqdm

    rows = []
    for name in tqdm(args.models, desc="model zoo", unit="model"):
        rows.append(report(name, args.images, args.repeats))
        tqdm.write(f"{name}: {rows[-1]['images_per_s_1_thread']:.1f} / {rows[-1]['images_per_s_2_threads']:.1f} img/s")
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"cpu": cpu_model(), "kernels": cpu_features()["active"], "torch_threads": torch.get_num_threads()}
    (args.out / "zoo.json").write_text(json.dumps({"machine": info, "models": rows}, indent=2) + "\n")
    (args.out / "zoo.md").write_text(_markdown(rows))
    _plot(rows, args.out / "zoo_speed.png")
    print(f"{info['cpu']}, {info['kernels']} kernels\n")
    print(_markdown(rows))
    ok = all(r["emulator_equals_simulation"] and r["verify_pass"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
