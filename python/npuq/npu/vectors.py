"""Golden test vectors for the NPU hardware, and the check of hardware dumps against them.

:func:`export_vectors` runs the emulator on a batch of images and writes, op by op, everything a test
bench needs to drive and check one op of the NPU: the op's int8 input(s), its integer parameters
(weights, bias, multiplier, exponent, WESS shifts) and its expected int8 output. Every array is written
three times: ``.hex`` (one two's-complement word per line, for Verilog ``$readmemh``), ``.bin`` (raw
little-endian) and ``.npy``. ``manifest.json`` describes the set and holds the size and CRC32 of
every file.

:func:`verify` compares a directory of hardware outputs (same relative paths as the golden op outputs)
with a golden set, op by op in program order, and reports the first mismatching op and element.

File formats, directory layout and exit codes: ``docs/golden_vectors.md``.

Only numpy and the standard library are needed (tqdm, when installed, draws the progress bar).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from npuq.npu.program import Program, load_program

VECTORS_FORMAT = "npuq-golden-vectors"
VECTORS_FORMAT_VERSION = 1
REPORT_FORMAT = "npuq-verify-report"
REPORT_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: the three encodings of every array; verify reads a dump's files in this order
FILE_FORMATS = ("bin", "hex", "npy")
#: hex digits per value: the full two's-complement width of the dtype
HEX_DIGITS = {"int8": 2, "uint8": 2, "int32": 8}
#: the axis names of each layout, for reporting an element's position
LAYOUT_AXES = {"NHWC": ("n", "h", "w", "c"), "NK": ("n", "k"), "OHWI": ("o", "h", "w", "i"), "OK": ("o", "k"),
               "C": ("c",)}
#: the per-layer parameter arrays in the order they are written
LAYER_ARRAYS = ("weight", "bias", "multiplier", "exponent", "shift")

_FASHION_SPEC = re.compile(r"^fashion-mnist:(train|test):([0-9]+)$")
_HEX_WORD = re.compile(r"^[0-9a-fA-F][0-9a-fA-F_]*$")
_HEX_DIGITS_ONLY = re.compile(r"[0-9a-fA-F]*")


class VectorsError(ValueError):
    """Golden vectors or a hardware dump cannot be used; the message names the file."""


class GoldenVectorsError(VectorsError):
    """The golden vector directory is incomplete or corrupted (missing file, wrong size, CRC mismatch)."""


class DumpError(VectorsError):
    """A hardware dump file is malformed (wrong size, bad hex line, wrong dtype or shape)."""


# ====================================================================================== encodings
def hex_bytes(array: np.ndarray, header: str | None = None) -> bytes:
    """``array`` as ``$readmemh`` text: one value per line, two's complement, lower case, fixed width
    (2 hex digits for int8/uint8, 8 for int32), row-major; ``header`` becomes a leading ``//`` line."""
    width = HEX_DIGITS[array.dtype.name]
    # big-endian bytes printed in hex are exactly the two's-complement words, most significant digit first
    big = np.ascontiguousarray(array).astype(array.dtype.newbyteorder(">"), copy=False)
    digits = big.tobytes().hex().encode("ascii")
    words = np.frombuffer(digits, dtype=f"S{width}")
    text = b"\n".join(words.tolist()) + b"\n"
    return (f"// {header}\n".encode("ascii") if header else b"") + text


def bin_bytes(array: np.ndarray) -> bytes:
    """``array`` as raw little-endian bytes, row-major."""
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a ``.npy`` file (little-endian, C order)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False),
            allow_pickle=False)
    return buf.getvalue()


_ENCODERS = {"hex": hex_bytes, "bin": bin_bytes, "npy": npy_bytes}


def parse_hex(text: str, dtype, source: str = "<hex>") -> np.ndarray:
    """Read ``$readmemh``-style text into a flat array of ``dtype`` (int8, uint8 or int32).

    Accepts ``//`` comments, blank lines, several whitespace-separated words per line, ``_`` inside a
    word, upper or lower case and ``@address`` lines that continue at the next value (the form
    ``$writememh`` writes). Words are two's complement of the dtype's width. Raises :class:`DumpError`
    naming ``source`` and the line for anything else (``x``/``z`` digits, words too wide, jumps).
    """
    dtype = np.dtype(dtype)
    fast = _parse_fixed_width_hex(text, dtype)
    if fast is not None:
        return fast
    bits = 8 * dtype.itemsize
    values: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for word in line.split("//", 1)[0].split():
            where = f"{source}: line {lineno}"
            if word.startswith("@"):
                address = _hex_word(word[1:], where)
                if address != len(values):
                    raise DumpError(f"{where}: address {word} does not continue at value {len(values)} "
                                    f"(only sequential data is accepted)")
                continue
            value = _hex_word(word, where)
            if value >> bits:
                raise DumpError(f"{where}: {word!r} is out of range for {dtype.name} (at most {bits // 4} hex "
                                f"digits, {(1 << bits) - 1:x})")
            values.append(value)
    unsigned = np.array(values, dtype=np.int64)
    if dtype.kind == "i":  # two's complement: words with the top bit set are negative
        unsigned = np.where(unsigned >= 1 << (bits - 1), unsigned - (1 << bits), unsigned)
    return unsigned.astype(dtype)


def _parse_fixed_width_hex(text: str, dtype: np.dtype) -> np.ndarray | None:
    """The common case in one numpy pass: whole-line ``//`` comments and one full-width word per line
    (what export writes and ``$writememh`` of a word of that width writes). None for anything else,
    which the general reader then handles (and reports precisely)."""
    width = 2 * dtype.itemsize
    lines = [line for line in text.split("\n") if not line.startswith("//")]
    if lines and lines[-1] == "":  # the final newline
        lines.pop()
    if any(len(line) != width for line in lines):
        return None
    body = "".join(lines)
    if not _HEX_DIGITS_ONLY.fullmatch(body):
        return None
    return np.frombuffer(bytes.fromhex(body), dtype=dtype.newbyteorder(">")).astype(dtype)


def _hex_word(word: str, where: str) -> int:
    if not _HEX_WORD.match(word):
        if word and set(word.lower()) <= set("0123456789abcdef_xz?"):
            raise DumpError(f"{where}: {word!r} holds undefined (x/z) digits")
        raise DumpError(f"{where}: {word!r} is not a hexadecimal number")
    return int(word.replace("_", ""), 16)


def crc32_hex(data: bytes) -> str:
    """zlib's CRC-32 of ``data`` as 8 lower-case hex digits (what the ``crc32`` command prints)."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


# ====================================================================================== export
@dataclass
class _ArrayPlan:
    """One array to write: its files are ``<stem>.hex/.bin/.npy`` under the output directory."""

    stem: str         # relative path without suffix, "/"-separated
    name: str         # for people and the hex header, e.g. "conv1.weight"
    array: np.ndarray
    layout: str
    value: str | None = None  # for activations: the program value (input or op) it holds


def _activation_layout(array: np.ndarray) -> str:
    return "NHWC" if array.ndim == 4 else "NK"


def _op_dir(index: int, name: str, n_ops: int) -> str:
    width = max(3, len(str(n_ops - 1)))
    return f"ops/{index:0{width}d}_{name}"


def _input_file_names(op) -> list[str]:
    return ["input"] if len(op.inputs) == 1 else [f"input_{chr(ord('a') + i)}" for i in range(len(op.inputs))]


def _plan_op(index: int, op, n_ops: int, values: dict[str, np.ndarray]) -> dict[str, _ArrayPlan]:
    """The arrays of one op, keyed by file name: input(s), parameters (layers only), output."""
    folder = _op_dir(index, op.name, n_ops)
    plan = {}
    for key, source in zip(_input_file_names(op), op.inputs):
        plan[key] = _ArrayPlan(f"{folder}/{key}", f"{op.name}.{key}", values[source],
                               _activation_layout(values[source]), value=source)
    if op.kind in ("conv2d", "fully_connected"):
        for key in LAYER_ARRAYS:
            tensor = op.tensors[key]
            layout = ("OHWI" if tensor.ndim == 4 else "OK") if key == "weight" else "C"
            plan[key] = _ArrayPlan(f"{folder}/{key}", f"{op.name}.{key}", tensor, layout)
    out = values[op.name]
    plan["output"] = _ArrayPlan(f"{folder}/output", f"{op.name}.output", out, _activation_layout(out),
                                value=op.name)
    return plan


def _write_array(outdir: Path, plan: _ArrayPlan) -> dict:
    """Write the three files of one array; return its manifest entry."""
    shape = "x".join(str(d) for d in plan.array.shape)
    header = f"{plan.name} dtype={plan.array.dtype.name} layout={plan.layout} shape={shape}"
    files = {}
    for fmt in FILE_FORMATS:
        data = hex_bytes(plan.array, header) if fmt == "hex" else _ENCODERS[fmt](plan.array)
        rel = f"{plan.stem}.{fmt}"
        path = outdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[fmt] = {"path": rel, "bytes": len(data), "crc32": crc32_hex(data)}
    entry = {"name": plan.name, "dtype": plan.array.dtype.name, "layout": plan.layout,
             "shape": [int(d) for d in plan.array.shape], "files": files}
    if plan.value is not None:
        entry["value"] = plan.value
    return entry


def _as_program(program) -> Program:
    return program if isinstance(program, Program) else load_program(program)


def _prepare_outdir(outdir: Path, overwrite: bool) -> None:
    """Create ``outdir``; a non-empty one is only reused with ``overwrite`` and only if it holds a
    previous vector set, whose listed files are removed first (so no stale op folder survives)."""
    if outdir.exists() and not outdir.is_dir():
        raise VectorsError(f"{outdir}: exists and is not a directory")
    if not outdir.exists() or not any(outdir.iterdir()):
        outdir.mkdir(parents=True, exist_ok=True)
        return
    manifest_path = outdir / MANIFEST_NAME
    if not overwrite:
        raise VectorsError(f"{outdir}: the directory is not empty; choose a new one or overwrite a previous "
                           f"vector set (overwrite=True, --force)")
    try:
        old = json.loads(manifest_path.read_text())
        if old.get("format") != VECTORS_FORMAT:
            raise ValueError(f"format {old.get('format')!r} is not {VECTORS_FORMAT!r}")
        old_files = [f["path"] for entry in _manifest_arrays(old, str(manifest_path)) for f in entry["files"].values()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VectorsError(f"{outdir}: not empty and holds no readable {MANIFEST_NAME} of a previous vector set "
                           f"({exc}); refusing to overwrite it") from None
    for rel in old_files:
        _safe_path(outdir, rel, str(manifest_path)).unlink(missing_ok=True)
    manifest_path.unlink()
    ops_dir = outdir / "ops"
    if ops_dir.is_dir():
        for sub in sorted(ops_dir.iterdir()):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar then
        return iterable
    return tqdm(iterable, total=total, desc="writing vectors", unit="array", leave=False)


def _op_manifest(index: int, op, folder: str, arrays: dict[str, dict]) -> dict:
    entry = {"index": index, "name": op.name, "kind": op.kind, "path": op.path, "dir": folder,
             "inputs": list(op.inputs), "params": _json_scalars(op.attrs),
             "output_scale": float(op.scale), "output_zero_point": int(op.zero_point), "arrays": arrays}
    if op.kind in ("conv2d", "fully_connected"):
        entry["requantization"] = "per_channel" if op.tensors["multiplier"].shape[0] > 1 else "per_layer"
    return entry


def _json_scalars(obj):
    if isinstance(obj, dict):
        return {str(k): _json_scalars(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_scalars(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def export_vectors(program: Program | str | os.PathLike, inputs, outdir: str | os.PathLike, *,
                   threads: int | None = None, layout: str = "NCHW", source: str | None = None,
                   overwrite: bool = False, progress: bool = False) -> dict:
    """Run ``program`` on ``inputs`` and write its golden vectors to ``outdir``; return the manifest.

    ``inputs``: int8 quantized images (N, H, W, C), or float images (torch tensor or numpy array) in
    ``layout`` (``NCHW`` as the torch model takes them, or ``NHWC``), quantized by
    :meth:`Emulator.quantize_input`. ``source`` is recorded in the manifest (e.g.
    ``"fashion-mnist:test:8"``). The files and the manifest are byte-identical for the same program
    and inputs, whatever ``threads``. ``outdir`` must be new or empty, or hold a previous vector set
    and ``overwrite=True``.
    """
    from npuq.npu.emulator import Emulator

    program = _as_program(program)
    emulator = Emulator(program, threads=threads)
    label = source or "inputs"
    try:
        _, values = emulator.run(inputs, capture=True, layout=layout)
    except (TypeError, ValueError) as exc:
        raise VectorsError(f"{label}: {exc}") from None
    outdir = Path(outdir)
    _prepare_outdir(outdir, overwrite)

    n_ops = len(program.ops)
    op_plans = [_plan_op(i, op, n_ops, values) for i, op in enumerate(program.ops)]
    net_in = values[program.input.name]
    net_out = values[program.output]
    plans = [_ArrayPlan("input", "input", net_in, _activation_layout(net_in), value=program.input.name)]
    plans += [p for op_plan in op_plans for p in op_plan.values()]
    plans.append(_ArrayPlan("output", "output", net_out, _activation_layout(net_out), value=program.output))

    entries = {p.stem: _write_array(outdir, p) for p in _progress(plans, len(plans), progress)}
    ops = [_op_manifest(i, op, _op_dir(i, op.name, n_ops), {k: entries[p.stem] for k, p in op_plans[i].items()})
           for i, op in enumerate(program.ops)]
    out_op = program.output_op
    all_files = [f for e in entries.values() for f in e["files"].values()]
    manifest = {
        "format": VECTORS_FORMAT,
        "format_version": VECTORS_FORMAT_VERSION,
        "model": program.model,
        "program_sha256": program.digest(),
        "program_format_version": program.format_version,
        "arithmetic_version": program.arithmetic_version,
        "rounding": program.rounding,
        "overflow": program.overflow,
        "byte_order": "little",
        "images": int(net_in.shape[0]),
        "input_source": source or "array",
        "hex": {"digits": dict(HEX_DIGITS), "order": "row-major", "header": "one leading // comment line",
                "encoding": "two's complement, lower case, one value per line"},
        "input": {"name": program.input.name, "scale": float(program.input.scale),
                  "zero_point": int(program.input.zero_point), "array": entries["input"]},
        "output": {"op": program.output, "scale": float(out_op.scale), "zero_point": int(out_op.zero_point),
                   "array": entries["output"]},
        "ops": ops,
        "file_count": len(all_files),
        "total_bytes": sum(f["bytes"] for f in all_files),
    }
    text = json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n"
    (outdir / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return json.loads(text)  # exactly what the file holds (lists, not tuples)


# ====================================================================================== golden check
def _field(obj: Any, key: str, kind, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise GoldenVectorsError(f"{where}: missing field '{key}'")
    value = obj[key]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise GoldenVectorsError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _manifest_arrays(manifest: dict, where: str) -> list[dict]:
    """Every array entry of a manifest: the network input, each op's arrays, the network output."""
    arrays = [_field(_field(manifest, "input", dict, where), "array", dict, f"{where}: input")]
    for i, op in enumerate(_field(manifest, "ops", list, where)):
        arrays.extend(_field(op, "arrays", dict, f"{where}: ops[{i}]").values())
    arrays.append(_field(_field(manifest, "output", dict, where), "array", dict, f"{where}: output"))
    return arrays


def _safe_path(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` for a manifest path; absolute paths and ``..`` would leave the vector directory."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise GoldenVectorsError(f"{where}: file path {rel!r} is not a relative path inside the vector directory")
    return root.joinpath(*parts)


def _check_array_entry(root: Path, entry: dict, where: str) -> None:
    name = _field(entry, "name", str, where)
    where = f"{where} '{name}'"
    dtype = _field(entry, "dtype", str, where)
    if dtype not in HEX_DIGITS:
        raise GoldenVectorsError(f"{where}: dtype {dtype!r} is not one of {', '.join(HEX_DIGITS)}")
    layout = _field(entry, "layout", str, where)
    shape = _field(entry, "shape", list, where)
    if layout not in LAYOUT_AXES or len(shape) != len(LAYOUT_AXES[layout]) or \
            not all(isinstance(d, int) and d >= 1 for d in shape):
        raise GoldenVectorsError(f"{where}: layout {layout!r} and shape {shape} do not fit together")
    files = _field(entry, "files", dict, where)
    for fmt in FILE_FORMATS:
        _check_file(root, _field(files, fmt, dict, where), f"{where} ({fmt})")
    want = math.prod(shape) * np.dtype(dtype).itemsize
    if files["bin"]["bytes"] != want:
        raise GoldenVectorsError(f"{where}: the manifest lists {files['bin']['bytes']} bytes for "
                                 f"{files['bin']['path']} but shape {shape} of {dtype} needs {want}")


def _check_file(root: Path, info: dict, where: str) -> None:
    rel = _field(info, "path", str, where)
    size = _field(info, "bytes", int, where)
    crc = _field(info, "crc32", str, where)
    path = _safe_path(root, rel, where)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GoldenVectorsError(f"{path}: golden file is missing (listed in {MANIFEST_NAME})") from None
    except OSError as exc:
        raise GoldenVectorsError(f"{path}: cannot read golden file ({exc.strerror or exc})") from None
    if len(data) != size:
        raise GoldenVectorsError(f"{path}: golden file has {len(data)} bytes, the manifest says {size} "
                                 f"(truncated or altered)")
    actual = crc32_hex(data)
    if actual != crc.lower():
        raise GoldenVectorsError(f"{path}: CRC32 {actual} does not match the manifest's {crc} (the golden file "
                                 f"was altered or corrupted)")


def check_vectors(vectors_dir: str | os.PathLike) -> dict:
    """Check a golden vector directory against its manifest (every file present, sizes and CRC32s);
    return the manifest. Raises :class:`GoldenVectorsError` naming the first bad file."""
    root = Path(vectors_dir)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise GoldenVectorsError(f"{root}: no such vector directory")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoldenVectorsError(f"{manifest_path}: missing; {root} is not a golden vector directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise GoldenVectorsError(f"{manifest_path}: cannot read the manifest ({exc})") from None
    where = str(manifest_path)
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != VECTORS_FORMAT:
        raise GoldenVectorsError(f"{where}: field 'format' is {fmt!r}, expected {VECTORS_FORMAT!r}")
    version = _field(manifest, "format_version", int, where)
    if version != VECTORS_FORMAT_VERSION:
        raise GoldenVectorsError(f"{where}: format_version {version} is not supported (this npuq reads "
                                 f"version {VECTORS_FORMAT_VERSION})")
    for key in ("model", "program_sha256"):
        _field(manifest, key, str, where)
    _field(manifest, "images", int, where)
    for i, op in enumerate(_field(manifest, "ops", list, where)):
        op_where = f"{where}: ops[{i}]"
        for key in ("name", "kind", "dir"):
            _field(op, key, str, op_where)
        _field(_field(op, "arrays", dict, op_where), "output", dict, op_where)
    for entry in _manifest_arrays(manifest, where):
        _check_array_entry(root, entry, f"{where}: array")
    return manifest


def _read_golden(root: Path, entry: dict) -> np.ndarray:
    data = _safe_path(root, entry["files"]["bin"]["path"], MANIFEST_NAME).read_bytes()
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    return np.frombuffer(data, dtype=dtype).reshape(entry["shape"]).astype(entry["dtype"])


# ====================================================================================== dumps
def read_dump(path: str | os.PathLike, fmt: str, dtype, shape) -> np.ndarray:
    """Read one hardware dump file (``fmt`` ``bin``, ``hex`` or ``npy``) that must hold ``shape`` values
    of ``dtype``. Raises :class:`DumpError` naming the file for a wrong size, dtype, shape or bad line."""
    path = Path(path)
    dtype = np.dtype(dtype)
    shape = tuple(shape)
    count = math.prod(shape)
    what = f"shape {'x'.join(map(str, shape))} of {dtype.name}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DumpError(f"{path}: cannot read the dump file ({exc.strerror or exc})") from None
    if fmt == "bin":
        want = count * dtype.itemsize
        if len(data) != want:
            raise DumpError(f"{path}: {len(data)} bytes, expected {want} ({what}, little-endian); truncated or "
                            f"written with another dtype?")
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype)
    if fmt == "hex":
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DumpError(f"{path}: not an ASCII hex file (byte {exc.start} is {data[exc.start]:#04x})") from None
        flat = parse_hex(text, dtype, str(path))
        if flat.size != count:
            raise DumpError(f"{path}: holds {flat.size} values, expected {count} ({what})")
        return flat.reshape(shape)
    if fmt == "npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise DumpError(f"{path}: not a readable .npy file ({exc})") from None
        if not isinstance(array, np.ndarray):
            raise DumpError(f"{path}: holds an archive, not one array")
        # any byte order is fine; the kind and width must be the golden dtype's
        if array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
            raise DumpError(f"{path}: dtype {array.dtype}, expected {dtype.name}")
        if array.shape != shape:
            raise DumpError(f"{path}: shape {array.shape}, expected {shape}")
        return array.astype(dtype)
    raise ValueError(f"unknown dump format {fmt!r}; use one of {FILE_FORMATS}")


@dataclass
class Mismatch:
    """The first differing element of one dump file."""

    op: str
    kind: str
    op_index: int
    file: str          # relative to the dump directory
    flat_index: int    # row-major index in the array
    index: tuple[int, ...]
    layout: str
    expected: int
    actual: int

    def position(self) -> dict[str, int]:
        """The element's index by axis name of the layout, e.g. ``{"n": 0, "h": 3, "w": 1, "c": 7}``."""
        return dict(zip(LAYOUT_AXES[self.layout], self.index))

    def describe(self) -> str:
        where = " ".join(f"{k}={v}" for k, v in self.position().items())
        return (f"op {self.op_index} '{self.op}' ({self.kind}), {self.file}: element {self.flat_index} "
                f"[{self.layout} {where}]: expected {self.expected}, got {self.actual}")

    def to_dict(self) -> dict:
        return {"op": self.op, "kind": self.kind, "op_index": self.op_index, "file": self.file,
                "flat_index": self.flat_index, "index": list(self.index), "layout": self.layout,
                "position": self.position(), "expected": self.expected, "actual": self.actual}


@dataclass
class FileCheck:
    """One dump file compared with the golden output."""

    file: str
    format: str
    mismatches: int
    first_mismatch: Mismatch | None

    def to_dict(self) -> dict:
        return {"file": self.file, "format": self.format, "mismatches": self.mismatches,
                "first_mismatch": self.first_mismatch.to_dict() if self.first_mismatch else None}


@dataclass
class OpCheck:
    """One op's output in the dump. ``status``: ``pass``, ``mismatch``, ``missing`` or ``skipped`` (a
    flatten that was not dumped). When several
    formats of the output were dumped, each is compared; ``mismatches`` and ``first_mismatch`` are those
    of the first mismatching file in the order bin, hex, npy."""

    index: int
    name: str
    kind: str
    elements: int
    files: list[FileCheck] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.files:
            # a flatten is a reshape of its input's bytes (NHWC order): hardware that does not run it as
            # an op has nothing to dump, and its input was checked already
            return "skipped" if self.kind == "flatten" else "missing"
        return "mismatch" if self.mismatches else "pass"

    @property
    def _first_bad(self) -> FileCheck | None:
        return next((f for f in self.files if f.mismatches), None)

    @property
    def mismatches(self) -> int:
        bad = self._first_bad
        return bad.mismatches if bad else 0

    @property
    def first_mismatch(self) -> Mismatch | None:
        bad = self._first_bad
        return bad.first_mismatch if bad else None

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "kind": self.kind, "status": self.status,
                "elements": self.elements, "mismatches": self.mismatches,
                "first_mismatch": self.first_mismatch.to_dict() if self.first_mismatch else None,
                "files": [f.to_dict() for f in self.files]}


@dataclass
class VerifyResult:
    """The comparison of a hardware dump with a golden vector set (see :func:`verify`)."""

    vectors_dir: str
    dump_dir: str
    model: str
    program_sha256: str
    images: int
    ops: list[OpCheck]
    allow_missing: bool = False

    @property
    def missing(self) -> list[str]:
        """Names of the ops with no output file in the dump, in program order."""
        return [o.name for o in self.ops if o.status == "missing"]

    @property
    def mismatched(self) -> list[OpCheck]:
        return [o for o in self.ops if o.status == "mismatch"]

    @property
    def checked(self) -> list[OpCheck]:
        return [o for o in self.ops if o.status in ("pass", "mismatch")]

    @property
    def total_mismatches(self) -> int:
        return sum(o.mismatches for o in self.ops)

    @property
    def first_mismatch(self) -> Mismatch | None:
        """The first differing element of the first mismatching op in program order."""
        bad = self.mismatched
        return bad[0].first_mismatch if bad else None

    @property
    def status(self) -> str:
        """``pass``, ``mismatch`` or ``missing`` (ops missing without ``allow_missing``, or no op dumped)."""
        if self.mismatched:
            return "mismatch"
        if self.missing and (not self.allow_missing or not self.checked):
            return "missing"
        return "pass"

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "pass" else 1

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        first = self.first_mismatch
        return {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION, "status": self.status,
                "exit_code": self.exit_code, "vectors": self.vectors_dir, "dump": self.dump_dir,
                "model": self.model, "program_sha256": self.program_sha256, "images": self.images,
                "allow_missing": self.allow_missing, "ops_total": len(self.ops), "ops_checked": len(self.checked),
                "ops_passed": sum(o.status == "pass" for o in self.ops),
                "ops_mismatched": [o.name for o in self.mismatched], "ops_missing": self.missing,
                "total_mismatches": self.total_mismatches,
                "first_mismatch": first.to_dict() if first else None,
                "ops": [o.to_dict() for o in self.ops]}

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def report(self, max_ops: int = 20) -> str:
        """A short report for people: the verdict, the mismatching and missing ops, the first mismatch."""
        lines = [(f"golden {self.vectors_dir} (model '{self.model}', program {self.program_sha256[:12]}, "
                  f"{len(self.ops)} ops, {self.images} images) vs dump {self.dump_dir}"),
                 (f"ops: {len(self.checked)} checked, {sum(o.status == 'pass' for o in self.ops)} passed, "
                  f"{len(self.mismatched)} mismatched, {len(self.missing)} missing"
                  + (f", {sum(o.status == 'skipped' for o in self.ops)} skipped (flatten, not dumped)"
                     if any(o.status == "skipped" for o in self.ops) else ""))]
        for o in self.mismatched[:max_ops]:
            bad = o._first_bad
            lines.append(f"  MISMATCH op {o.index} {o.name} ({o.kind}): {o.mismatches} of {o.elements} "
                         f"elements differ in {bad.file}")
        if len(self.mismatched) > max_ops:
            lines.append(f"  ... and {len(self.mismatched) - max_ops} more mismatching ops")
        if self.missing:
            shown = ", ".join(self.missing[:max_ops])
            more = f" ... (+{len(self.missing) - max_ops})" if len(self.missing) > max_ops else ""
            lines.append(f"  missing from the dump: {shown}{more}")
        first = self.first_mismatch
        if first:
            lines.append(f"first mismatch: {first.describe()}")
            if len(self.mismatched) > 1:
                lines.append("  (later ops fed by the first mismatching one may differ as a consequence)")
        verdict = {"pass": "PASS", "mismatch": "FAIL: outputs differ", "missing": "FAIL: ops missing from the dump"
                   if self.checked else "FAIL: no op output found in the dump"}[self.status]
        lines.append(f"total: {self.total_mismatches} mismatching element(s); {verdict} (exit {self.exit_code})")
        return "\n".join(lines)


def _compare(expected: np.ndarray, actual: np.ndarray, op_index: int, op: dict, entry: dict, rel: str,
             fmt: str) -> FileCheck:
    differ = (expected != actual).reshape(-1)
    count = int(differ.sum())
    if not count:
        return FileCheck(rel, fmt, 0, None)
    flat = int(np.flatnonzero(differ)[0])
    index = tuple(int(i) for i in np.unravel_index(flat, expected.shape))
    first = Mismatch(op=op["name"], kind=op["kind"], op_index=op_index, file=rel, flat_index=flat,
                     index=index, layout=entry["layout"], expected=int(expected.reshape(-1)[flat]),
                     actual=int(actual.reshape(-1)[flat]))
    return FileCheck(rel, fmt, count, first)


def _check_op_dump(golden: Path, dump: Path, op_index: int, op: dict) -> OpCheck:
    entry = op["arrays"]["output"]
    expected = _read_golden(golden, entry)
    stem = entry["files"]["bin"]["path"][: -len(".bin")]
    result = OpCheck(index=op_index, name=op["name"], kind=op["kind"], elements=expected.size)
    for fmt in FILE_FORMATS:
        rel = f"{stem}.{fmt}"
        path = dump.joinpath(*PurePosixPath(rel).parts)
        if not path.exists():
            continue
        if not path.is_file():
            raise DumpError(f"{path}: exists but is not a file")
        actual = read_dump(path, fmt, entry["dtype"], entry["shape"])
        result.files.append(_compare(expected, actual, op_index, op, entry, rel, fmt))
    return result


def verify(vectors_dir: str | os.PathLike, dump_dir: str | os.PathLike, *, allow_missing: bool = False) -> VerifyResult:
    """Compare the hardware outputs in ``dump_dir`` with the golden vectors in ``vectors_dir``.

    First checks the golden set against its manifest (:func:`check_vectors`). Then, op by op in program
    order, reads ``<op dir>/output.bin``, ``.hex`` and ``.npy`` from the dump (every one present) and
    compares it with the golden output. Raises :class:`GoldenVectorsError` / :class:`DumpError` for a
    broken golden set or a malformed dump file; mismatches and missing ops are in the result.
    """
    golden = Path(vectors_dir)
    manifest = check_vectors(golden)
    dump = Path(dump_dir)
    if not dump.is_dir():
        raise DumpError(f"{dump}: no such dump directory")
    ops = [_check_op_dump(golden, dump, i, op) for i, op in enumerate(manifest["ops"])]
    return VerifyResult(vectors_dir=str(golden), dump_dir=str(dump), model=manifest["model"],
                        program_sha256=manifest["program_sha256"], images=manifest["images"], ops=ops,
                        allow_missing=allow_missing)


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
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise VectorsError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise VectorsError(f"{path}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray) or not (array.dtype == np.int8 or array.dtype.kind == "f"):
        raise VectorsError(f"{path}: dtype {getattr(array, 'dtype', type(array).__name__)}; give int8 quantized "
                           f"inputs (N, H, W, C) or float images (N, C, H, W)")
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
    e = sub.add_parser("export-vectors", help="write golden test vectors of an NPU program (per-op inputs, "
                       "parameters and expected outputs as .hex/.bin/.npy, with a manifest)")
    e.add_argument("program", help="a program file written by `npuq compile`")
    e.add_argument("inputs", help="fashion-mnist:test:N, fashion-mnist:train:N, or a .npy of int8 inputs "
                   "(N, H, W, C) or float images (N, C, H, W)")
    e.add_argument("outdir", help="the directory to write (new or empty)")
    e.add_argument("--threads", type=int, default=None, help="native kernel threads (the files do not depend on it)")
    e.add_argument("--force", action="store_true", help="replace a previous vector set in OUTDIR")
    e.set_defaults(func=_run_export)

    v = sub.add_parser("verify", help="compare a hardware dump with golden vectors; exit 0 pass, 1 mismatch "
                       "or missing ops, 2 broken golden set or malformed dump")
    v.add_argument("vectors", help="the golden vector directory written by `npuq export-vectors`")
    v.add_argument("dump", help="the hardware's outputs: <op dir>/output.bin, .hex or .npy, same relative paths")
    v.add_argument("--json", default=None, help="also write the report as JSON to this file")
    v.add_argument("--allow-missing", action="store_true", help="ops absent from the dump do not fail the check")
    v.set_defaults(func=_run_verify)


def _run_export(args) -> int:
    from npuq.data.fashion_mnist import IdxFormatError
    from npuq.npu.program import ProgramError

    try:
        program = load_program(args.program)
        images, source = load_inputs(args.inputs)
        manifest = export_vectors(program, images, args.outdir, threads=args.threads, source=source,
                                  overwrite=args.force, progress=True)
    except (VectorsError, ProgramError, IdxFormatError, OSError) as exc:
        print(f"npuq export-vectors: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {manifest['file_count']} files ({manifest['total_bytes']} bytes) for {len(manifest['ops'])} ops "
          f"and {manifest['images']} images of '{manifest['model']}' to {args.outdir}/ "
          f"({MANIFEST_NAME}: program sha256 {manifest['program_sha256'][:16]}...)")
    return 0


def _run_verify(args) -> int:
    try:
        result = verify(args.vectors, args.dump, allow_missing=args.allow_missing)
    except VectorsError as exc:
        print(f"npuq verify: error: {exc}", file=sys.stderr)
        if args.json:
            report = {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION, "status": "error",
                      "exit_code": 2, "vectors": str(args.vectors), "dump": str(args.dump), "error": str(exc)}
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return 2
    print(result.report())
    if args.json:
        try:
            result.save_json(args.json)
        except OSError as exc:
            print(f"npuq verify: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
    return result.exit_code


__all__ = [
    "FILE_FORMATS",
    "HEX_DIGITS",
    "LAYOUT_AXES",
    "DumpError",
    "FileCheck",
    "GoldenVectorsError",
    "Mismatch",
    "OpCheck",
    "VectorsError",
    "VerifyResult",
    "add_commands",
    "bin_bytes",
    "check_vectors",
    "crc32_hex",
    "export_vectors",
    "hex_bytes",
    "load_inputs",
    "npy_bytes",
    "parse_hex",
    "read_dump",
    "verify"
]
