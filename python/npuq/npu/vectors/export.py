"""Writing a golden vector set (:func:`export_vectors`, ``npuq export-vectors``) and the emulator's outputs
in the layout of a hardware dump (:func:`write_dump`, ``npuq run --dump``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npuq.npu.optable import OP_TABLE
from npuq.npu.program import Program, load_program
from npuq.npu.vectors.files import _install, _output_target, _staging, _write_file
from npuq.npu.vectors.formats import (
    _ENCODERS,
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
)


# ====================================================================================== export
@dataclass
class _ArrayPlan:
    """One array to write: its files are ``<stem>.hex/.bin/.npy`` under the output directory."""

    stem: str  # relative path without suffix, "/"-separated
    name: str  # for people and the hex header, e.g. "conv1.weight"
    array: np.ndarray
    layout: str
    value: str | None = None  # for activations: the program value (input or op) it holds


def _activation_layout(array: np.ndarray) -> str:
    return "NHWC" if array.ndim == 4 else "NK"


def _plan_op(index: int, op, n_ops: int, values: dict[str, np.ndarray]) -> dict[str, _ArrayPlan]:
    """The arrays of one op, keyed by file name: input(s), parameters (layers only), output."""
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
    plan["output"] = _ArrayPlan(f"{folder}/output", f"{op.name}.output", out, _activation_layout(out), value=op.name)
    return plan


def _encode(array: np.ndarray, fmt: str, header: str) -> bytes:
    return hex_bytes(array, header) if fmt == "hex" else _ENCODERS[fmt](array)


def _write_array(outdir: Path, plan: _ArrayPlan) -> dict:
    """Write the three files of one array; return its manifest entry."""
    header = _hex_header(plan.name, plan.array.dtype.name, plan.layout, plan.array.shape)
    files = {}
    for fmt in FILE_FORMATS:
        data = _encode(plan.array, fmt, header)
        rel = f"{plan.stem}.{fmt}"
        _write_file(outdir, rel, data)
        files[fmt] = {"path": rel, "bytes": len(data), "crc32": crc32_hex(data)}
    entry = {
        "name": plan.name,
        "dtype": plan.array.dtype.name,
        "layout": plan.layout,
        "shape": [int(d) for d in plan.array.shape],
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
    except (TypeError, ValueError) as exc:
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
) -> dict:
    """Run ``program`` on ``inputs`` and write its golden vectors to ``outdir``; return the manifest.

    ``inputs``: int8 quantized images (N, H, W, C), or float images (torch tensor or numpy array) in
    ``layout`` (``NCHW`` as the torch model takes them, or ``NHWC``), quantized by
    :meth:`Emulator.quantize_input`. ``source`` is recorded in the manifest (e.g.
    ``"fashion-mnist:test:8"``). The files and the manifest are byte-identical for the same program
    and inputs, whatever ``threads``. ``outdir`` must be new or empty, or hold a previous vector set
    (and nothing else) and ``overwrite=True``. The set is written next to ``outdir`` and renamed into
    place at the end: a failed export changes nothing.
    """
    program = _as_program(program)
    target = _output_target(Path(outdir), overwrite)
    values = _emulate(program, inputs, layout, threads, source or "inputs")
    n_ops = len(program.ops)
    op_plans = [_plan_op(i, op, n_ops, values) for i, op in enumerate(program.ops)]
    net_in = values[program.input.name]
    net_out = values[program.output]
    plans = [_ArrayPlan("input", "input", net_in, _activation_layout(net_in), value=program.input.name)]
    plans += [p for op_plan in op_plans for p in op_plan.values()]
    plans.append(_ArrayPlan("output", "output", net_out, _activation_layout(net_out), value=program.output))

    with _staging(target) as stage:
        with _progress(plans, len(plans), progress) as bar:
            entries = {p.stem: _write_array(stage, p) for p in bar}
        program_bytes = program.to_bytes()
        _write_file(stage, PROGRAM_FILE, program_bytes)
        program_file = {"path": PROGRAM_FILE, "bytes": len(program_bytes), "crc32": crc32_hex(program_bytes)}
        ops = [
            _op_manifest(i, op, _op_dir(i, op.name, n_ops), {k: entries[p.stem] for k, p in op_plans[i].items()})
            for i, op in enumerate(program.ops)
        ]
        all_files = [f for e in entries.values() for f in e["files"].values()] + [program_file]
        manifest = {
            "format": VECTORS_FORMAT,
            "format_version": VECTORS_FORMAT_VERSION,
            "program_sha256": hashlib.sha256(program_bytes).hexdigest(),
            "program_file": program_file,
            "op_count": n_ops,
            "images": int(net_in.shape[0]),
            "input_source": source or "array",
            "ops": ops,
            "file_count": len(all_files),
            "total_bytes": sum(f["bytes"] for f in all_files),
            **_described_fields(program),
        }
        manifest["input"]["array"] = entries["input"]
        manifest["output"]["array"] = entries["output"]
        # the digest is taken over what a reader parses back (lists, not tuples; floats as printed)
        manifest = json.loads(json.dumps(manifest, allow_nan=False))
        manifest[DIGEST_FIELD] = manifest_digest(manifest)
        text = json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n"
        _write_file(stage, MANIFEST_NAME, text.encode("utf-8"))
        _install(stage, target)
    return json.loads(text)  # exactly what the file holds


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
