"""Writing a golden vector set (:func:`export_vectors`, ``npuq export-vectors``) and the emulator's outputs
in the layout of a hardware dump (:func:`write_dump`, ``npuq run --dump``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npuq.npu.optable import OP_TABLE
from npuq.npu.program import Program, load_program
from npuq.npu.vectors.files import _install, _output_target, _staging, _write_file
from npuq.npu.vectors.formats import (
    _ENCODERS,
    ACCUMULATOR_ARRAY,
    ACCUMULATOR_KINDS,
    COMPLETE_SET_FORMAT_VERSION,
    DIGEST_FIELD,
    FILE_FORMATS,
    MANIFEST_NAME,
    PROGRAM_FILE,
    VECTORS_FORMAT,
    VECTORS_FORMAT_VERSION,
    VectorsError,
    _described_fields,
    _hex_header,
    _input_keys,
    _op_dir,
    _op_manifest,
    crc32_hex,
    hex_bytes,
    manifest_digest,
    required_arrays,
)
from npuq.npu.vectors.selection import Selection, make_selection


# ====================================================================================== export
@dataclass
class _ArrayPlan:
    """One array to write: its files are ``<stem>.hex/.bin/.npy`` under the output directory."""

    stem: str  # relative path without suffix, "/"-separated
    name: str  # for people and the hex header, e.g. "conv1.weight"
    array: np.ndarray | Callable[[], np.ndarray]  # a function: computed when written (accumulators)
    layout: str
    value: str | None = None  # for activations: the program value (input or op) it holds


def _activation_layout(array: np.ndarray) -> str:
    return "NHWC" if array.ndim == 4 else "NK"


def _plan_op(
    index: int, op, n_ops: int, values: dict[str, np.ndarray], accumulators: Callable | None = None
) -> dict[str, _ArrayPlan]:
    """The arrays of one op, keyed by file name: input(s), parameters (layers only), the accumulators
    when ``accumulators`` (computes them) is given, output."""
    keys = _input_keys(op.kind, len(op.inputs))
    if len(op.inputs) != len(keys):
        raise VectorsError(
            f"op '{op.name}' ({op.kind}) reads {len(op.inputs)} values; a {op.kind} op reads {len(keys)}"
        )
    folder = _op_dir(index, op.name, n_ops)
    plan = {}
    for key, source in zip(keys, op.inputs):
        plan[key] = _ArrayPlan(
            f"{folder}/{key}", f"{op.name}.{key}", values[source], _activation_layout(values[source]), value=source
        )
    for key, tensor in OP_TABLE[op.kind].tensors.items():
        plan[key] = _ArrayPlan(f"{folder}/{key}", f"{op.name}.{key}", op.tensors[key], tensor.layout)
    out = values[op.name]
    if accumulators is not None:
        plan[ACCUMULATOR_ARRAY] = _ArrayPlan(
            f"{folder}/{ACCUMULATOR_ARRAY}", f"{op.name}.{ACCUMULATOR_ARRAY}", accumulators, _activation_layout(out)
        )
    plan["output"] = _ArrayPlan(f"{folder}/output", f"{op.name}.output", out, _activation_layout(out), value=op.name)
    return plan


def _check_accumulator_support() -> None:
    """Fail before the emulation, not after it, where this build cannot compute accumulators."""
    from npuq import ops

    try:
        probe = ops.Conv2d(np.ones((1, 1, 1, 1), np.int8), multiplier=1 << 30, exponent=0)
        probe.accumulators(np.zeros((1, 1, 1, 1), np.int8))
    except AttributeError as exc:
        raise VectorsError(
            f"accumulators: this npuq build cannot compute them ({exc}); the native module predates "
            f"npuq.ops.Conv2d.accumulators: rebuild it"
        ) from None


def _accumulators_of(index: int, op, program: Program, x: np.ndarray) -> Callable[[], np.ndarray]:
    """A function computing the int32 accumulators of layer ``op`` on its input ``x``: the layer packed as
    the emulator packs it, run through the scalar reference (after the overflow policy, before
    requantization). Its shape is the output's."""

    def compute() -> np.ndarray:
        layer = OP_TABLE[op.kind].pack(op, program.rounding, program.overflow)
        try:
            acc = np.ascontiguousarray(layer.accumulators(x), dtype=np.int32)
        except (ValueError, RuntimeError, OverflowError, AttributeError) as exc:
            raise VectorsError(f"op {index} '{op.name}' ({op.kind}): cannot compute the accumulators: {exc}") from None
        return acc

    return compute


def _encode(array: np.ndarray, fmt: str, header: str) -> bytes:
    return hex_bytes(array, header) if fmt == "hex" else _ENCODERS[fmt](array)


def _write_array(outdir: Path, plan: _ArrayPlan, formats: tuple[str, ...] = FILE_FORMATS) -> dict:
    """Write the files of one array, one per format; return its manifest entry."""
    array = plan.array() if callable(plan.array) else plan.array
    header = _hex_header(plan.name, array.dtype.name, plan.layout, array.shape)
    files = {}
    for fmt in formats:
        data = _encode(array, fmt, header)
        rel = f"{plan.stem}.{fmt}"
        _write_file(outdir, rel, data)
        files[fmt] = {"path": rel, "bytes": len(data), "crc32": crc32_hex(data)}
    entry = {
        "name": plan.name,
        "dtype": array.dtype.name,
        "layout": plan.layout,
        "shape": [int(d) for d in array.shape],
        "files": files,
    }
    if plan.value is not None:
        entry["value"] = plan.value
    return entry


def _as_program(program) -> Program:
    return program if isinstance(program, Program) else load_program(program)


def _emulate(program: Program, inputs, layout: str, threads: int | None, label: str) -> dict[str, np.ndarray]:
    """Every value of the program on ``inputs``: the network input's and each op's int8 output."""
    from npuq.npu.emulator import Emulator

    try:
        _, values = Emulator(program, threads=threads).run(inputs, capture=True, layout=layout)
    except (TypeError, ValueError, OverflowError) as exc:  # an accumulator out of int32 under overflow "raise"
        raise VectorsError(f"{label}: {exc}") from None
    return values


@contextlib.contextmanager
def _progress(iterable, total: int, enabled: bool):
    """``iterable``, with a progress bar when enabled; the bar is closed (its line cleared) however the
    block ends, so that an error message is not printed after a half-drawn bar."""
    bar = None
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional: no bar then
            pass
        else:
            bar = tqdm(iterable, total=total, desc="writing vectors", unit="array", leave=False)
    try:
        yield iterable if bar is None else bar
    finally:
        if bar is not None:
            bar.close()


def export_vectors(
    program: Program | str | os.PathLike,
    inputs,
    outdir: str | os.PathLike,
    *,
    threads: int | None = None,
    layout: str = "NCHW",
    source: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    formats=None,
    ops=None,
    accumulators: bool = False,
) -> dict:
    """Run ``program`` on ``inputs`` and write its golden vectors to ``outdir``; return the manifest.

    ``inputs``: int8 quantized images (N, H, W, C), or float images (torch tensor or numpy array) in
    ``layout`` (``NCHW`` as the torch model takes them, or ``NHWC``), quantized by
    :meth:`Emulator.quantize_input`. ``source`` is recorded in the manifest (e.g.
    ``"fashion-mnist:test:8"``). The files and the manifest are byte-identical for the same program
    and inputs, whatever ``threads``. ``outdir`` must be new or empty, or hold a previous vector set
    (and nothing else) and ``overwrite=True``. The set is written next to ``outdir`` and renamed into
    place at the end: a failed export changes nothing.

    What the set holds (docs/golden_vectors.md 7): ``formats``, ``"hex,bin"`` or a sequence (default:
    ``bin``, ``hex`` and ``npy``); ``ops``, the op folders to write: op names or glob patterns, kinds
    (``"conv2d"``), indices (``5``, ``-1``) and half-open index ranges (``"3:7"``), comma-separated or as
    a sequence (default: every op; see :func:`~npuq.npu.vectors.selection.select_ops`);
    ``accumulators``: conv2d and fully_connected folders also hold ``accumulator.*``, the int32
    accumulators before requantization. The default, a complete set, is a format-2 set; any other
    selection is recorded in the manifest of a format-3 set.
    """
    program = _as_program(program)
    sel = make_selection(program, formats=formats, ops=ops, accumulators=accumulators)
    if sel.accumulators:
        _check_accumulator_support()
    target = _output_target(Path(outdir), overwrite)
    values = _emulate(program, inputs, layout, threads, source or "inputs")
    n_ops = len(program.ops)
    op_plans = {}
    for i in sel.ops:
        op = program.ops[i]
        layer = sel.accumulators and op.kind in ACCUMULATOR_KINDS
        acc = _accumulators_of(i, op, program, values[op.inputs[0]]) if layer else None
        op_plans[i] = _plan_op(i, op, n_ops, values, acc)
    net_in = values[program.input.name]
    net_out = values[program.output]
    # the network's input and output files repeat op folders' arrays; a set of some ops leaves them out
    network_arrays = len(sel.ops) == n_ops
    plans = [p for op_plan in op_plans.values() for p in op_plan.values()]
    if network_arrays:
        plans.insert(0, _ArrayPlan("input", "input", net_in, _activation_layout(net_in), value=program.input.name))
        plans.append(_ArrayPlan("output", "output", net_out, _activation_layout(net_out), value=program.output))

    with _staging(target) as stage:
        with _progress(plans, len(plans), progress) as bar:
            entries = {p.stem: _write_array(stage, p, sel.formats) for p in bar}
        program_bytes = program.to_bytes()
        _write_file(stage, PROGRAM_FILE, program_bytes)
        program_file = {"path": PROGRAM_FILE, "bytes": len(program_bytes), "crc32": crc32_hex(program_bytes)}
        ops_manifest = [_op_entry(i, op, n_ops, sel, op_plans.get(i), entries) for i, op in enumerate(program.ops)]
        all_files = [f for e in entries.values() for f in e["files"].values()] + [program_file]
        complete = sel.is_complete(n_ops)
        manifest = {
            "format": VECTORS_FORMAT,
            "format_version": COMPLETE_SET_FORMAT_VERSION if complete else VECTORS_FORMAT_VERSION,
            "program_sha256": hashlib.sha256(program_bytes).hexdigest(),
            "program_file": program_file,
            "op_count": n_ops,
            "images": int(net_in.shape[0]),
            "input_source": source or "array",
            "ops": ops_manifest,
            "file_count": len(all_files),
            "total_bytes": sum(f["bytes"] for f in all_files),
            **_described_fields(program),
        }
        if not complete:
            manifest["selection"] = sel.to_manifest()
        if network_arrays:
            manifest["input"]["array"] = entries["input"]
            manifest["output"]["array"] = entries["output"]
        # the digest is taken over what a reader parses back (lists, not tuples; floats as printed)
        manifest = json.loads(json.dumps(manifest, allow_nan=False))
        manifest[DIGEST_FIELD] = manifest_digest(manifest)
        text = json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n"
        _write_file(stage, MANIFEST_NAME, text.encode("utf-8"))
        _install(stage, target)
    return json.loads(text)  # exactly what the file holds


def _op_entry(i: int, op, n_ops: int, sel: Selection, plan: dict[str, _ArrayPlan] | None, entries: dict) -> dict:
    """The manifest entry of op ``i``; one the set does not hold (``plan`` None) lists no arrays."""
    folder = _op_dir(i, op.name, n_ops)
    if plan is None:
        return _op_manifest(i, op, folder, {}, ())
    required = required_arrays(op.kind, len(op.inputs), accumulators=sel.accumulators)
    return _op_manifest(i, op, folder, {k: entries[p.stem] for k, p in plan.items()}, required)


def _dump_formats(fmt) -> tuple[str, ...]:
    formats = FILE_FORMATS if fmt == "all" else (fmt,) if isinstance(fmt, str) else tuple(fmt)
    bad = [f for f in formats if f not in FILE_FORMATS]
    if bad or not formats:
        raise VectorsError(f"dump format {bad[0] if bad else fmt!r} is not one of {', '.join(FILE_FORMATS)} (or 'all')")
    return formats


def write_dump(
    program: Program | str | os.PathLike,
    inputs,
    outdir: str | os.PathLike,
    *,
    fmt: str | tuple[str, ...] = "bin",
    threads: int | None = None,
    layout: str = "NCHW",
) -> list[str]:
    """Write the emulator's output of every op on ``inputs`` in the dump layout :func:`verify` reads
    (``ops/<NNN>_<op>/output.<fmt>``, the golden set's relative paths): a reference dump, or a model
    for the hardware's. ``fmt``: ``bin``, ``hex``, ``npy``, several of them, or ``all``. ``outdir``
    must be new or empty. Returns the relative paths written, in program order.
    """
    formats = _dump_formats(fmt)
    program = _as_program(program)
    target = _output_target(Path(outdir), overwrite=False, what="dump")
    values = _emulate(program, inputs, layout, threads, "inputs")
    n_ops = len(program.ops)
    written = []
    with _staging(target) as stage:
        for i, op in enumerate(program.ops):
            array = values[op.name]
            header = _hex_header(f"{op.name}.output", array.dtype.name, _activation_layout(array), array.shape)
            for f in formats:
                rel = f"{_op_dir(i, op.name, n_ops)}/output.{f}"
                _write_file(stage, rel, _encode(array, f, header))
                written.append(rel)
        _install(stage, target)
    return written
