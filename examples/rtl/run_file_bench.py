#!/usr/bin/env python3
"""Run tb_file (the file-driven requantization bench) on the layers of an npuq golden vector set.

The set must come from ``npuq export-vectors PROGRAM INPUTS OUTDIR --accumulators`` (``--formats hex`` is
enough); each conv2d / fully_connected op folder then holds accumulator.hex. For each selected layer
this script reads the sizes, zero point, clamps and rounding from manifest.json, runs the bench built by
the Makefile (``make icarus`` or ``make verilator``) with them as plusargs and checks what it printed:

    python3 run_file_bench.py VECTORS --sim icarus [--build build] [--op NAME ...] [--broken] [--dump DIR]

Exit status: 0 when every selected layer printed ``PASS n`` with n its number of outputs; 1 when a bench
reported mismatches (``FAIL k of n``); 2 for a usage or vector-set problem or a bench that ended
without a verdict. ``--dump DIR`` writes the unit's outputs to DIR/<op folder>/output.hex, the layout
``npuq verify VECTORS DIR`` reads. Standard library only: no npuq import.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

LAYER_KINDS = ("conv2d", "fully_connected")
PASS_RE = re.compile(r"^PASS (\d+)$", re.M)
FAIL_RE = re.compile(r"^FAIL (\d+) of (\d+)", re.M)


class BenchError(Exception):
    """A problem that is not a mismatch: bad arguments, a vector set without accumulators, a bench crash."""


def simulator_command(sim: str, build: Path) -> list[str]:
    if sim == "icarus":
        image = build / "tb_file.vvp"
        command = ["vvp", "-n", str(image)]
    else:
        image = build / "tb_file" / "tb_file"
        command = [str(image)]
    if not image.is_file():
        raise BenchError(f"{image}: no such bench; build it first (make -C examples/rtl {sim} BUILD={build})")
    return command


def layer_ops(manifest: dict, selection: list[str] | None) -> list[dict]:
    layers = [op for op in manifest.get("ops", []) if op.get("kind") in LAYER_KINDS]
    if not layers:
        raise BenchError("the vector set has no conv2d or fully_connected op folder")
    if not selection:
        return layers
    chosen = []
    for wanted in selection:
        match = [op for op in layers if wanted in (op["name"], op["dir"], Path(op["dir"]).name, str(op["index"]))]
        if not match:
            names = ", ".join(f"{op['index']} {op['name']!r}" for op in layers)
            raise BenchError(f"--op {wanted!r}: not a layer op of the set (layer ops: {names})")
        chosen.extend(match)
    return chosen


def plusargs(vectors: Path, manifest: dict, op: dict) -> list[str]:
    folder = vectors / op["dir"]
    if not (folder / "accumulator.hex").is_file():
        raise BenchError(
            f"{folder}/accumulator.hex: missing; export the set with --accumulators (and the hex format): "
            f"npuq export-vectors PROGRAM INPUTS OUTDIR --accumulators --formats hex"
        )
    shape = op["arrays"]["output"]["shape"]
    params = op["params"]
    return [
        f"+vectors={folder}",
        f"+count={math.prod(shape)}",
        f"+channels={shape[-1]}",
        f"+zero_point={params['output_zero_point']}",
        f"+act_min={params['act_min']}",
        f"+act_max={params['act_max']}",
        f"+rounding={manifest['rounding']}",
    ]


def run_layer(command: list[str], args: list[str], count: int, echo: bool) -> tuple[str, int]:
    """('pass', 0) or ('fail', mismatches); raises BenchError when the bench gave no consistent verdict."""
    result = subprocess.run(command + args, capture_output=True, text=True, timeout=3600)
    text = result.stdout + result.stderr
    if echo:
        sys.stdout.write(text)
    passed = PASS_RE.findall(text)
    failed = FAIL_RE.findall(text)
    if result.returncode == 0 and passed == [str(count)] and not failed:
        return "pass", 0
    if result.returncode != 0 and len(failed) == 1 and not passed and int(failed[0][1]) == count:
        return "fail", int(failed[0][0])
    tail = "\n".join(text.strip().splitlines()[-5:])
    raise BenchError(f"the bench ended with status {result.returncode} and no verdict for {count} values:\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vectors", type=Path, help="the golden vector set (npuq export-vectors --accumulators)")
    parser.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    parser.add_argument(
        "--build",
        type=Path,
        default=Path(__file__).resolve().parent / "build",
        help="the Makefile's BUILD directory (default: examples/rtl/build)",
    )
    parser.add_argument(
        "--op",
        action="append",
        default=None,
        metavar="NAME",
        help="a layer op to run (name, folder or index); repeatable (default: every layer op)",
    )
    parser.add_argument("--broken", action="store_true", help="check the BROKEN_ROUNDING unit")
    parser.add_argument("--dump", type=Path, default=None, help="write the outputs as DIR/<op folder>/output.hex")
    parser.add_argument("--max-report", type=int, default=10, help="mismatches printed per layer")
    parser.add_argument("--quiet", action="store_true", help="print only the per-layer verdicts")
    args = parser.parse_args(argv)

    try:
        manifest_path = args.vectors / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BenchError(f"{manifest_path}: cannot read the manifest ({exc})") from None
        command = simulator_command(args.sim, args.build)
        ops = layer_ops(manifest, args.op)
        failures = 0
        for op in ops:
            extra = [f"+max_report={args.max_report}"] + (["+broken=1"] if args.broken else [])
            if args.dump is not None:
                out = args.dump / op["dir"]
                out.mkdir(parents=True, exist_ok=True)
                extra.append(f"+dump={out / 'output.hex'}")
            count = math.prod(op["arrays"]["output"]["shape"])
            verdict, mismatches = run_layer(
                command, plusargs(args.vectors, manifest, op) + extra, count, echo=not args.quiet
            )
            status = "PASS" if verdict == "pass" else f"FAIL {mismatches} of {count}"
            print(
                f"op {op['index']} {op['name']!r} ({op['kind']}, {count} values, {args.sim}"
                f"{', BROKEN_ROUNDING' if args.broken else ''}): {status}"
            )
            failures += verdict == "fail"
    except BenchError as exc:
        print(f"run_file_bench: error: {exc}", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
