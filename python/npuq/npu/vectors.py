"""Golden test vectors for the NPU hardware, and the check of hardware dumps against them.

:func:`export_vectors` runs the emulator on a batch of images and writes, op by op, everything a test
bench needs to drive and check one op of the NPU: the op's int8 input(s), its integer parameters
(weights, bias, multiplier, exponent, WESS shifts) and its expected int8 output. Every array is written
three times: ``.hex`` (one two's-complement word per line, for Verilog ``$readmemh``), ``.bin`` (raw
little-endian) and ``.npy``. ``manifest.json`` describes the set, holds the size and CRC32 of every
file and a SHA-256 digest of itself; ``program.npuq`` is a copy of the program the set was written for.

:func:`verify` compares a directory of hardware outputs (same relative paths as the golden op outputs)
with a golden set, op by op in program order, and reports the first mismatching op and element.
:func:`write_dump` writes the emulator's outputs in that dump layout (``npuq run --dump``).

The golden set certifies itself: the manifest digest catches any edit of the manifest, the op count
and the program copy catch a consistently edited manifest that drops an op, and every op must list
exactly the arrays its kind requires. Files are read only when they are regular files inside their
directory and of the size the manifest (or the expected shape) allows, so a link to a device, a FIFO
or a huge file is an error, not a hang.

File formats, directory layout and exit codes: ``docs/golden_vectors.md``. Which arrays an op's folder
holds (its inputs, its tensors with their dtypes and layouts, its output) is the op table's
(:mod:`npuq.npu.optable`: ``vector_inputs``, ``tensors``, ``required_arrays``).

Only numpy and the standard library are needed (tqdm, when installed, draws the progress bar).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import secrets
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from npuq._untrusted import JSONRejected, inside, load_npy, loads_strict, npy_header, read_regular, size_limit
from npuq.npu.optable import LAYER_KINDS, OP_KINDS, OP_TABLE, is_view  # noqa: F401 - OP_KINDS re-exported
from npuq.npu.program import Program, ProgramError, load_program, program_from_bytes

VECTORS_FORMAT = "npuq-golden-vectors"
#: 2: the manifest digest, the op count, the program copy and the per-op required arrays
VECTORS_FORMAT_VERSION = 2
REPORT_FORMAT = "npuq-verify-report"
REPORT_FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
#: the manifest field holding the SHA-256 of the canonical JSON of all the other fields
DIGEST_FIELD = "manifest_sha256"
#: the copy of the program inside a vector set
PROGRAM_FILE = "program.npuq"

#: the three encodings of every array; verify reads a dump's files in this order
FILE_FORMATS = ("bin", "hex", "npy")
#: hex digits per value: the full two's-complement width of the dtype
HEX_DIGITS = {"int8": 2, "uint8": 2, "int32": 8}
#: the axis names of each layout, for reporting an element's position
LAYOUT_AXES = {
    "NHWC": ("n", "h", "w", "c"),
    "NK": ("n", "k"),
    "OHWI": ("o", "h", "w", "i"),
    "OK": ("o", "k"),
    "C": ("c",),
}
#: the per-layer parameter arrays in the order they are written (a layer's tensors in the op table; every
#: layer kind, LAYER_KINDS, has these)
LAYER_ARRAYS = tuple(OP_TABLE[LAYER_KINDS[0]].tensors)

# Size limits checked before a file is read. A manifest of a 1000-op program is a few MB; a hex dump
# may carry comments and @address lines, hence the generous bytes per value; a .npy header is at most
# 64 KiB (numpy's own reader refuses headers over 10000 characters).
MANIFEST_MAX_BYTES = 256 << 20
HEX_DUMP_BYTES_PER_VALUE = 64
HEX_DUMP_SLACK_BYTES = 64 << 10
NPY_HEADER_MAX_BYTES = 64 << 10
#: no manifest integer needs more digits (a byte count); Python refuses to parse over 4300 anyway
_MAX_INT_DIGITS = 40

_FASHION_SPEC = re.compile(r"^fashion-mnist:(train|test):([0-9]+)$")
_HEX_WORD = re.compile(r"^[0-9a-fA-F][0-9a-fA-F_]*$")
_HEX_DIGITS_ONLY = re.compile(r"[0-9a-fA-F]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CRC32 = re.compile(r"[0-9a-f]{8}")


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
    np.save(buf, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False), allow_pickle=False)
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
                    raise DumpError(
                        f"{where}: address {word} does not continue at value {len(values)} "
                        f"(only sequential data is accepted)"
                    )
                continue
            value = _hex_word(word, where)
            if value >> bits:
                raise DumpError(
                    f"{where}: {word!r} is out of range for {dtype.name} (at most {bits // 4} hex "
                    f"digits, {(1 << bits) - 1:x})"
                )
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


# ====================================================================================== safe file access
def _safe_path(root: Path, rel: Any, where: str) -> Path:
    """``root / rel`` for a manifest path; absolute paths and ``..`` would leave the vector directory."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise GoldenVectorsError(f"{where}: file path {rel!r} is not a relative path inside the vector directory")
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise GoldenVectorsError(f"{where}: file path {rel!r} is not a relative path inside the vector directory")
    return root.joinpath(*parts)


def _write_file(root: Path, rel: str, data: bytes) -> None:
    """Write a new file ``root/rel``; it must not exist yet and must land inside ``root`` (no link on the
    way leads out: writing never goes through a symlink)."""
    path = _safe_path(root, rel, str(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not inside(os.path.realpath(path.parent), os.path.realpath(root)):
        raise VectorsError(f"{path}: would be written outside {root} (through a link); refusing")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(path, flags, 0o666), "wb") as f:
        f.write(data)


def _remove_tree(path: Path) -> None:
    """Remove a directory tree, best effort, never following a symlink: a link is removed itself and
    what it points to is not touched (an old vector set may hold links to directories outside it)."""
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
            return
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(Path(entry.path))
                else:
                    os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        pass


# ====================================================================================== manifest JSON
def _load_json(data: bytes, where: str) -> Any:
    """Parse manifest bytes strictly: UTF-8, no duplicate keys, no NaN or infinity, no huge integers."""
    try:
        return loads_strict(data, max_int_digits=_MAX_INT_DIGITS, finite=True)
    except JSONRejected as exc:
        raise GoldenVectorsError(f"{where}: not a valid manifest: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise GoldenVectorsError(f"{where}: cannot read the manifest ({_one_line(exc)})") from None


def manifest_digest(manifest: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of ``manifest`` without its ``manifest_sha256`` field: keys
    sorted, no whitespace, ASCII escapes (``json.dumps(sort_keys=True, separators=(",", ":"))``)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def required_arrays(kind: str) -> tuple[str, ...]:
    """The arrays an op of ``kind`` has in a vector set, in the order they are written: its input(s)
    (``input``, or ``input_a`` and ``input_b`` for an add), the layer parameters (conv2d and
    fully_connected) and ``output`` (the op table's ``OpSpec.required_arrays``). Raises
    :class:`GoldenVectorsError` for an unknown kind."""
    if not isinstance(kind, str) or kind not in OP_TABLE:
        raise GoldenVectorsError(f"op kind {kind!r} is not one of {', '.join(OP_TABLE)}")
    return OP_TABLE[kind].required_arrays


def _input_keys(kind: str) -> tuple[str, ...]:
    return OP_TABLE[kind].vector_inputs


def _array_spec(kind: str, key: str) -> tuple[str, tuple[str, ...]]:
    """The dtype and the allowed layouts of array ``key`` of an op of ``kind``: a tensor's from the op
    table, else an activation's (an input or the output; ``kind`` "" for the network's input and output)."""
    spec = OP_TABLE.get(kind)
    tensor = spec.tensors.get(key) if spec is not None else None
    if tensor is not None:
        return np.dtype(tensor.dtype).name, (tensor.layout,)
    return "int8", ("NHWC", "NK")


def _hex_header(name: str, dtype: str, layout: str, shape) -> str:
    return f"{name} dtype={dtype} layout={layout} shape={'x'.join(str(d) for d in shape)}"


def _golden_size_range(fmt: str, entry: dict, count: int, itemsize: int) -> tuple[int, int]:
    """The sizes a golden file of an (already checked) array entry may have: exact for ``.bin`` and
    ``.hex`` (written by this module), the data plus a bounded header for ``.npy``."""
    data = count * itemsize
    if fmt == "bin":
        return data, data
    if fmt == "hex":
        header = f"// {_hex_header(entry['name'], entry['dtype'], entry['layout'], entry['shape'])}\n"
        size = len(header.encode("utf-8")) + count * (2 * itemsize + 1)
        return size, size
    return data + 16, data + NPY_HEADER_MAX_BYTES


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


def _op_dir(index: int, name: str, n_ops: int) -> str:
    width = max(3, len(str(n_ops - 1)))
    return f"ops/{index:0{width}d}_{name}"


def _plan_op(index: int, op, n_ops: int, values: dict[str, np.ndarray]) -> dict[str, _ArrayPlan]:
    """The arrays of one op, keyed by file name: input(s), parameters (layers only), output."""
    keys = _input_keys(op.kind)
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


# ------------------------------------------------------------------------------ the output directory
@dataclass
class _Target:
    """Where a vector set or a dump goes: the resolved directory, and whether it holds a previous
    vector set to replace (``--force``)."""

    path: Path
    shown: str  # as the user wrote it, for messages
    replace: bool


def _output_target(outdir: Path, overwrite: bool, what: str = "vector set") -> _Target:
    """Check ``outdir`` before anything is computed: new or empty, or (``overwrite``) a previous vector
    set holding nothing else. A link to a directory is followed once, here: everything else works on
    the resolved path."""
    real = Path(os.path.realpath(outdir))
    if real.parent == real:
        raise VectorsError(f"{outdir}: cannot write a {what} in place of the file-system root")
    if os.path.lexists(real) and not real.is_dir():
        raise VectorsError(f"{outdir}: exists and is not a directory")
    try:
        empty = not real.exists() or not any(real.iterdir())
    except OSError as exc:
        raise VectorsError(f"{outdir}: cannot list the directory ({exc.strerror or exc})") from None
    if empty:
        return _Target(real, str(outdir), replace=False)
    if not overwrite:
        hint = " or overwrite a previous vector set (overwrite=True, --force)" if what == "vector set" else ""
        raise VectorsError(f"{outdir}: the directory is not empty; choose a new one{hint}")
    _check_previous_set(real, str(outdir))
    return _Target(real, str(outdir), replace=True)


def _check_previous_set(real: Path, shown: str) -> None:
    """A directory may be replaced only if it holds a vector set (of any format version) and nothing but
    its files: the manifest, the files it lists, their folders, and links (which are removed themselves,
    never followed). Anything else is someone's file: refuse."""
    manifest_path = real / MANIFEST_NAME
    try:
        data = read_regular(
            manifest_path,
            VectorsError,
            "manifest",
            root=real,
            check_size=size_limit(manifest_path, VectorsError, "manifest", MANIFEST_MAX_BYTES),
        )
        if data is None:
            raise VectorsError(f"no {MANIFEST_NAME}")
        old = _load_json(data, str(manifest_path))
        fmt = old.get("format") if isinstance(old, dict) else None
        if fmt != VECTORS_FORMAT:
            raise VectorsError(f"format {fmt!r} is not {VECTORS_FORMAT!r}")
    except VectorsError as exc:
        raise VectorsError(
            f"{shown}: not empty and holds no readable {MANIFEST_NAME} of a previous vector set "
            f"({exc}); refusing to overwrite it"
        ) from None
    foreign = _foreign_files(real, {MANIFEST_NAME} | _listed_paths(old))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise VectorsError(
            f"{shown}: holds {', '.join(foreign[:5])}{more}, which the previous vector set's "
            f"{MANIFEST_NAME} does not list; refusing to replace the directory (move them first)"
        )


def _listed_paths(manifest: Any) -> set[str]:
    """The file paths a (possibly old or damaged) manifest lists: every ``path`` of an object that also
    has a ``crc32`` (an op's ``path`` is a torch module name, not a file). Iterative: any depth."""
    paths, stack = set(), [manifest]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if isinstance(obj.get("path"), str) and "crc32" in obj:
                paths.add(str(PurePosixPath(obj["path"])))
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)
    return paths


def _foreign_files(real: Path, ours: set[str]) -> list[str]:
    """The entries under ``real`` that are not ``ours`` (relative paths), without following links."""
    foreign, stack = [], [("", real)]
    while stack:
        prefix, directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_symlink():
                    continue  # removed as a link; what it points to is never touched
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", Path(entry.path)))
                elif not (entry.is_file(follow_symlinks=False) and rel in ours):
                    foreign.append(rel)
    return sorted(foreign)


def _fresh_sibling(target: Path, tag: str) -> Path:
    """An unused hidden name next to ``target`` (same file system: a rename there is atomic)."""
    for _ in range(100):
        candidate = target.parent / f".{target.name}.{tag}-{secrets.token_hex(4)}"
        if not os.path.lexists(candidate):
            return candidate
    raise VectorsError(f"{target}: no free temporary name next to it")


@contextlib.contextmanager
def _staging(target: _Target):
    """A new directory next to the target to write into; removed again if writing fails, so that a
    failed export leaves neither a half-written set nor anything that blocks the next export."""
    target.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        stage = _fresh_sibling(target.path, "partial")
        try:
            stage.mkdir()
            break
        except FileExistsError:  # taken in between: draw another name
            continue
    else:
        raise VectorsError(f"{target.shown}: no free temporary name next to it")
    try:
        yield stage
    except BaseException:
        _remove_tree(stage)
        raise


def _install(stage: Path, target: _Target) -> None:
    """Move the finished ``stage`` into place with renames: the target directory is either the old one
    or the complete new one, never a mixture."""
    real = target.path
    if not target.replace:
        try:
            if real.is_dir():
                real.rmdir()  # empty when checked; a file written there since is not overwritten
            os.rename(stage, real)
        except OSError as exc:
            raise VectorsError(
                f"{target.shown}: cannot move the new files into place ({exc.strerror or exc})"
            ) from None
        return
    _check_previous_set(real, target.shown)  # again: the emulation may have taken a while
    aside = _fresh_sibling(real, "old")
    os.rename(real, aside)
    try:
        os.rename(stage, real)
    except BaseException:
        os.rename(aside, real)
        raise
    _remove_tree(aside)


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


def _described_fields(program: Program) -> dict:
    """The top-level manifest fields that describe the program and the file conventions: export writes
    them, the check compares them with the program copy (so an edited description is caught too)."""
    out_op = program.output_op
    return {
        "model": program.model,
        "program_format_version": program.format_version,
        "arithmetic_version": program.arithmetic_version,
        "rounding": program.rounding,
        "overflow": program.overflow,
        "byte_order": "little",
        "hex": {
            "digits": dict(HEX_DIGITS),
            "order": "row-major",
            "header": "one leading // comment line",
            "encoding": "two's complement, lower case, one value per line",
        },
        "input": {
            "name": program.input.name,
            "scale": float(program.input.scale),
            "zero_point": int(program.input.zero_point),
        },
        "output": {"op": program.output, "scale": float(out_op.scale), "zero_point": int(out_op.zero_point)},
    }


def _op_manifest(index: int, op, folder: str, arrays: dict[str, dict]) -> dict:
    entry = {
        "index": index,
        "name": op.name,
        "kind": op.kind,
        "path": op.path,
        "dir": folder,
        "inputs": list(op.inputs),
        "params": _json_scalars(op.attrs),
        "output_scale": float(op.scale),
        "output_zero_point": int(op.zero_point),
        "arrays": arrays,
        "required_arrays": list(required_arrays(op.kind)),
    }
    if OP_TABLE[op.kind].layer:
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


def _manifest_arrays(manifest: dict) -> list[dict]:
    """Every array entry of a checked manifest: the network input, each op's arrays, the network output."""
    arrays = [manifest["input"]["array"]]
    for op in manifest["ops"]:
        arrays.extend(op["arrays"][key] for key in op["required_arrays"])
    arrays.append(manifest["output"]["array"])
    return arrays


def _load_manifest(root: Path) -> dict:
    """Read, parse and fully check ``root/manifest.json`` (no other file is read)."""
    path = root / MANIFEST_NAME
    where = str(path)
    data = read_regular(
        path,
        GoldenVectorsError,
        "manifest",
        root=root,
        check_size=size_limit(path, GoldenVectorsError, "manifest", MANIFEST_MAX_BYTES),
    )
    if data is None:
        raise GoldenVectorsError(f"{where}: missing; {root} is not a golden vector directory")
    manifest = _load_json(data, where)
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != VECTORS_FORMAT:
        raise GoldenVectorsError(f"{where}: field 'format' is {fmt!r}, expected {VECTORS_FORMAT!r}")
    version = _field(manifest, "format_version", int, where)
    if version < VECTORS_FORMAT_VERSION:
        raise GoldenVectorsError(
            f"{where}: format_version {version} was written by an older npuq, without the "
            f"manifest digest and program copy this npuq requires; re-export the vectors "
            f"(npuq export-vectors PROGRAM INPUTS {root} --force)"
        )
    if version != VECTORS_FORMAT_VERSION:
        raise GoldenVectorsError(
            f"{where}: format_version {version} is not supported (this npuq reads version {VECTORS_FORMAT_VERSION})"
        )
    stored = _field(manifest, DIGEST_FIELD, str, where)
    try:
        actual = manifest_digest(manifest)
    except (ValueError, TypeError, RecursionError) as exc:
        raise GoldenVectorsError(f"{where}: cannot compute the manifest digest ({_one_line(exc)})") from None
    if actual != stored:
        raise GoldenVectorsError(
            f"{where}: the manifest digest ({DIGEST_FIELD}) does not match its content: the "
            f"manifest was edited or corrupted after export; re-export the vectors"
        )
    _check_manifest(manifest, where)
    return manifest


def _check_manifest(m: dict, where: str) -> None:
    """The manifest's structure: the op count, each op's arrays as its kind requires, every path and
    size as export writes them, the inputs of each op written before it. A manifest edited with its
    digest recomputed still has to pass all of this (and the program copy, :func:`_check_program`)."""
    for key in ("model", "rounding", "overflow", "input_source"):
        _field(m, key, str, where)
    if not _SHA256.fullmatch(_field(m, "program_sha256", str, where)):
        raise GoldenVectorsError(f"{where}: program_sha256 is not 64 lower-case hex digits")
    images = _field(m, "images", int, where)
    if images < 1:
        raise GoldenVectorsError(f"{where}: images is {images}; at least 1")
    ops = _field(m, "ops", list, where)
    op_count = _field(m, "op_count", int, where)
    if op_count != len(ops):
        raise GoldenVectorsError(
            f"{where}: lists {len(ops)} ops but op_count is {op_count}: an op entry was removed or added"
        )
    if not ops:
        raise GoldenVectorsError(f"{where}: lists no op")
    net_in = _field(m, "input", dict, where)
    in_name = _field(net_in, "name", str, f"{where}: input")
    shapes = {
        in_name: _check_array(
            _field(net_in, "array", dict, f"{where}: input"),
            f"{where}: input",
            kind="",
            key="input",
            name="input",
            stem="input",
            value=in_name,
            images=images,
        )
    }
    for i, op in enumerate(ops):
        _check_op(op, i, len(ops), shapes, images, where)
    net_out = _field(m, "output", dict, where)
    out_op = _field(net_out, "op", str, f"{where}: output")
    if out_op not in shapes or out_op == in_name:
        raise GoldenVectorsError(f"{where}: output op {out_op!r} is not one of the ops")
    shape = _check_array(
        _field(net_out, "array", dict, f"{where}: output"),
        f"{where}: output",
        kind="",
        key="output",
        name="output",
        stem="output",
        value=out_op,
        images=images,
    )
    if shape != shapes[out_op]:
        raise GoldenVectorsError(f"{where}: output has shape {list(shape)}, op '{out_op}' {list(shapes[out_op])}")
    _check_file_info(_field(m, "program_file", dict, where), PROGRAM_FILE, f"{where}: program_file", 1, None)
    files = [f for entry in _manifest_arrays(m) for f in entry["files"].values()] + [m["program_file"]]
    if _field(m, "file_count", int, where) != len(files) or _field(m, "total_bytes", int, where) != sum(
        f["bytes"] for f in files
    ):
        raise GoldenVectorsError(
            f"{where}: file_count / total_bytes do not match the files listed "
            f"({len(files)} files, {sum(f['bytes'] for f in files)} bytes)"
        )


def _check_op(op: Any, i: int, n_ops: int, shapes: dict[str, tuple[int, ...]], images: int, where: str) -> None:
    """One op entry; adds the op's output shape to ``shapes`` (value name -> shape)."""
    w = f"{where}: ops[{i}]"
    if not isinstance(op, dict):
        raise GoldenVectorsError(f"{w}: not an object")
    index = _field(op, "index", int, w)
    name = _field(op, "name", str, w)
    kind = _field(op, "kind", str, w)
    w = f"{where}: op {i} '{name}'"
    if index != i:
        raise GoldenVectorsError(f"{w}: index {index} at position {i} (an op entry was removed, added or moved)")
    if name in shapes:
        raise GoldenVectorsError(f"{w}: the name is used twice")
    if kind not in OP_TABLE:
        raise GoldenVectorsError(f"{w}: kind {kind!r} is not one of {', '.join(OP_TABLE)}")
    folder = _field(op, "dir", str, w)
    if folder != _op_dir(i, name, n_ops):
        raise GoldenVectorsError(f"{w}: dir {folder!r}, expected {_op_dir(i, name, n_ops)!r}")
    inputs = _field(op, "inputs", list, w)
    keys = _input_keys(kind)
    if len(inputs) != len(keys) or not all(isinstance(s, str) for s in inputs):
        raise GoldenVectorsError(f"{w}: inputs {inputs!r}; a {kind} op reads {len(keys)} named value(s)")
    for source in inputs:
        if source not in shapes:
            raise GoldenVectorsError(f"{w}: reads {source!r}, which neither the network input nor an earlier op is")
    required = required_arrays(kind)
    recorded = _field(op, "required_arrays", list, w)
    if recorded != list(required):
        raise GoldenVectorsError(f"{w}: required_arrays is {recorded!r}; a {kind} op has {list(required)}")
    arrays = _field(op, "arrays", dict, w)
    missing = [k for k in required if k not in arrays]
    if missing:
        raise GoldenVectorsError(f"{w}: the manifest lacks the {', '.join(missing)} array(s) that a {kind} op requires")
    extra = sorted(set(arrays) - set(required))
    if extra:
        raise GoldenVectorsError(f"{w}: arrays {extra} are not arrays of a {kind} op")
    for key, source in zip(keys, inputs):
        shape = _check_array(
            arrays[key],
            w,
            kind=kind,
            key=key,
            name=f"{name}.{key}",
            stem=f"{folder}/{key}",
            value=source,
            images=images,
        )
        if shape != shapes[source]:
            raise GoldenVectorsError(f"{w}: {key} has shape {list(shape)}, but {source!r} has {list(shapes[source])}")
    for key in OP_TABLE[kind].tensors:
        _check_array(
            arrays[key], w, kind=kind, key=key, name=f"{name}.{key}", stem=f"{folder}/{key}", value=None, images=None
        )
    shapes[name] = _check_array(
        arrays["output"],
        w,
        kind=kind,
        key="output",
        name=f"{name}.output",
        stem=f"{folder}/output",
        value=name,
        images=images,
    )


def _check_array(
    entry: Any, where: str, *, kind: str, key: str, name: str, stem: str, value: str | None, images: int | None
) -> tuple[int, ...]:
    """One array entry: the name, dtype and layout its place requires, a sane shape, the three files at
    their paths with the sizes that shape gives. Returns the shape."""
    w = f"{where}: array '{key}'"
    if not isinstance(entry, dict):
        raise GoldenVectorsError(f"{w}: not an object")
    if _field(entry, "name", str, w) != name:
        raise GoldenVectorsError(f"{w}: name {entry['name']!r}, expected {name!r}")
    want_dtype, layouts = _array_spec(kind, key)
    dtype = _field(entry, "dtype", str, w)
    if dtype != want_dtype:
        raise GoldenVectorsError(f"{w}: dtype {dtype!r}, expected {want_dtype!r}")
    layout = _field(entry, "layout", str, w)
    shape = _field(entry, "shape", list, w)
    if (
        layout not in layouts
        or len(shape) != len(LAYOUT_AXES[layout])
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise GoldenVectorsError(
            f"{w}: layout {layout!r} and shape {shape!r} do not fit together (layouts: {', '.join(layouts)})"
        )
    if images is not None and shape[0] != images:
        raise GoldenVectorsError(f"{w}: shape {shape} does not hold the set's {images} image(s)")
    if value is not None and entry.get("value") != value:
        raise GoldenVectorsError(f"{w}: value {entry.get('value')!r}, expected {value!r}")
    files = _field(entry, "files", dict, w)
    if set(files) != set(FILE_FORMATS):
        raise GoldenVectorsError(f"{w}: files {sorted(files)}, expected {list(FILE_FORMATS)}")
    count, itemsize = math.prod(shape), np.dtype(dtype).itemsize
    for fmt in FILE_FORMATS:
        lo, hi = _golden_size_range(fmt, entry, count, itemsize)
        _check_file_info(files[fmt], f"{stem}.{fmt}", f"{w} ({fmt})", lo, hi)
    return tuple(shape)


def _check_file_info(info: Any, rel: str, where: str, lo: int, hi: int | None) -> None:
    """A file entry: at the path export writes, of a size in [lo, hi], with a well-formed CRC32."""
    path = _field(info, "path", str, where)
    if path != rel:
        raise GoldenVectorsError(f"{where}: path {path!r}, expected {rel!r}")
    size = _field(info, "bytes", int, where)
    if size < lo or (hi is not None and size > hi):
        want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi is not None else f"at least {lo}"
        raise GoldenVectorsError(
            f"{where}: the manifest lists {size} bytes for {rel}, but its dtype and shape give {want}"
        )
    if not _CRC32.fullmatch(_field(info, "crc32", str, where)):
        raise GoldenVectorsError(f"{where}: crc32 {info['crc32']!r} is not 8 lower-case hex digits")


def _read_listed(root: Path, info: dict) -> bytes:
    """A golden file listed in the (checked) manifest: a regular file inside ``root``, of the listed
    size (checked before reading) and CRC32."""
    path = _safe_path(root, info["path"], MANIFEST_NAME)
    size = info["bytes"]

    def check(actual):
        if actual != size:
            raise GoldenVectorsError(
                f"{path}: golden file has {actual} bytes, the manifest says {size} (truncated or altered)"
            )

    data = read_regular(path, GoldenVectorsError, "golden file", root=root, check_size=check)
    if data is None:
        raise GoldenVectorsError(f"{path}: golden file is missing (listed in {MANIFEST_NAME})")
    actual = crc32_hex(data)
    if actual != info["crc32"]:
        raise GoldenVectorsError(
            f"{path}: CRC32 {actual} does not match the manifest's {info['crc32']} (the golden "
            f"file was altered or corrupted)"
        )
    return data


def _check_program(root: Path, m: dict) -> Program:
    """The program copy must be the program the manifest names (SHA-256), and its ops the manifest's:
    same count, names, kinds and inputs. Returns it."""
    path = root / PROGRAM_FILE
    data = _read_listed(root, m["program_file"])
    if hashlib.sha256(data).hexdigest() != m["program_sha256"]:
        raise GoldenVectorsError(f"{path}: not the program the manifest names (its SHA-256 is not program_sha256)")
    try:
        program = program_from_bytes(data, str(path))
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
        raise GoldenVectorsError(f"{path}: not a valid program copy ({_one_line(exc)})") from None
    where = f"{root / MANIFEST_NAME}"
    if len(program.ops) != m["op_count"]:
        raise GoldenVectorsError(
            f"{where}: lists {m['op_count']} ops, the program {PROGRAM_FILE} has {len(program.ops)}"
        )
    for i, (op, entry) in enumerate(zip(program.ops, m["ops"])):
        if (op.name, op.kind, list(op.inputs)) != (entry["name"], entry["kind"], entry["inputs"]):
            raise GoldenVectorsError(
                f"{where}: op {i} is '{entry['name']}' ({entry['kind']}, reads "
                f"{entry['inputs']}) but the program {PROGRAM_FILE} has '{op.name}' "
                f"({op.kind}, reads {list(op.inputs)})"
            )
        described = _normalized(_op_manifest(i, op, entry["dir"], {}))
        _same_description(entry, described, f"{where}: op {i} '{op.name}'", skip=("arrays",))
    _same_description(m, _normalized(_described_fields(program)), where, skip=())
    return program


def _normalized(obj: Any) -> Any:
    """``obj`` as a JSON reader sees it (lists, not tuples; floats as printed)."""
    return json.loads(json.dumps(obj, allow_nan=False))


def _same_description(entry: dict, described: dict, where: str, skip: tuple[str, ...]) -> None:
    for key, want in described.items():
        if key in skip:
            continue
        got = entry.get(key)
        if isinstance(want, dict) and isinstance(got, dict):
            got = {k: got.get(k) for k in want}  # input / output also hold the array entry
        if got != want:
            raise GoldenVectorsError(
                f"{where}: field '{key}' is {_short_repr(got)}, but the program {PROGRAM_FILE} "
                f"gives {_short_repr(want)}"
            )


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_vectors(vectors_dir: str | os.PathLike) -> dict:
    """Check a golden vector directory; return its manifest. The manifest's digest and structure, the
    program copy against the manifest, then every listed file (a regular file, size, CRC32) and every
    layer parameter against the program's tensors. Raises :class:`GoldenVectorsError` naming the first
    bad file or field."""
    root = Path(vectors_dir)
    if not root.is_dir():
        raise GoldenVectorsError(f"{root}: no such vector directory")
    manifest = _load_manifest(root)
    program = _check_program(root, manifest)
    tensors = {f"{op.name}.{key}": array for op in program.ops for key, array in op.tensors.items()}
    for entry in _manifest_arrays(manifest):
        for fmt in FILE_FORMATS:
            data = _read_listed(root, entry["files"][fmt])
            tensor = tensors.get(entry["name"])
            if (
                fmt == "bin"
                and tensor is not None
                and (list(tensor.shape) != entry["shape"] or data != bin_bytes(tensor))
            ):
                raise GoldenVectorsError(
                    f"{root / entry['files'][fmt]['path']}: differs from the program's {entry['name']}"
                )
    return manifest


def _read_golden(root: Path, entry: dict) -> np.ndarray:
    data = _read_listed(root, entry["files"]["bin"])
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    return np.frombuffer(data, dtype=dtype).reshape(entry["shape"]).astype(entry["dtype"])


# ====================================================================================== dumps
def read_dump(path: str | os.PathLike, fmt: str, dtype, shape, *, root: str | os.PathLike | None = None) -> np.ndarray:
    """Read one hardware dump file (``fmt`` ``bin``, ``hex`` or ``npy``) that must hold ``shape`` values
    of ``dtype``. Raises :class:`DumpError` naming the file for a wrong size, dtype, shape or bad line,
    and for anything but a regular file (a FIFO, a device, a link out of ``root`` when given). The size
    is checked before the file is read, a ``.npy`` header before its data."""
    path = Path(path)
    if fmt not in FILE_FORMATS:
        raise ValueError(f"unknown dump format {fmt!r}; use one of {FILE_FORMATS}")
    array = _read_dump(path, None if root is None else Path(root), fmt, np.dtype(dtype), tuple(shape))
    if array is None:
        raise DumpError(f"{path}: no such dump file")
    return array


def _read_dump(path: Path, root: Path | None, fmt: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
    count = math.prod(shape)
    what = f"shape {'x'.join(map(str, shape))} of {dtype.name}"

    def check(size):
        if fmt == "bin" and size != count * dtype.itemsize:
            raise DumpError(
                f"{path}: {size} bytes, expected {count * dtype.itemsize} ({what}, little-endian); "
                f"truncated or written with another dtype?"
            )
        limit = (
            count * HEX_DUMP_BYTES_PER_VALUE + HEX_DUMP_SLACK_BYTES
            if fmt == "hex"
            else count * dtype.itemsize + NPY_HEADER_MAX_BYTES
        )
        if size > limit:
            raise DumpError(
                f"{path}: {size} bytes, more than a {fmt} file of {what} can hold (at most {limit}); "
                f"not this op's output?"
            )

    data = read_regular(path, DumpError, "dump file", root=root, check_size=check)
    if data is None:
        return None
    if fmt == "bin":
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
    return _decode_npy(data, path, dtype, shape, what)


def _decode_npy(data: bytes, path: Path, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A ``.npy`` file's array, its header checked against ``dtype`` and ``shape`` before the data is
    touched (a header may claim any size; np.load would try to allocate it). Any byte order and
    C or Fortran order; no objects, no structured dtypes, no trailing bytes."""
    found_shape, fortran, found, offset = npy_header(data, DumpError, path)
    if (
        found.hasobject
        or found.fields is not None
        or found.subdtype is not None
        or found.kind != dtype.kind
        or found.itemsize != dtype.itemsize
    ):
        raise DumpError(f"{path}: dtype {found}, expected {dtype.name}")
    if tuple(found_shape) != shape:
        raise DumpError(f"{path}: shape {tuple(found_shape)}, expected {shape}")
    body = data[offset:]
    if len(body) != math.prod(shape) * dtype.itemsize:
        raise DumpError(
            f"{path}: {len(body)} bytes of data after the .npy header, expected "
            f"{math.prod(shape) * dtype.itemsize} ({what})"
        )
    flat = np.frombuffer(body, dtype=found)
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return np.ascontiguousarray(array.astype(dtype))


@dataclass
class Mismatch:
    """The first differing element of one dump file."""

    op: str
    kind: str
    op_index: int
    file: str  # relative to the dump directory
    flat_index: int  # row-major index in the array
    index: tuple[int, ...]
    layout: str
    expected: int
    actual: int

    def position(self) -> dict[str, int]:
        """The element's index by axis name of the layout, e.g. ``{"n": 0, "h": 3, "w": 1, "c": 7}``."""
        return dict(zip(LAYOUT_AXES[self.layout], self.index))

    def describe(self) -> str:
        where = " ".join(f"{k}={v}" for k, v in self.position().items())
        return (
            f"op {self.op_index} '{self.op}' ({self.kind}), {self.file}: element {self.flat_index} "
            f"[{self.layout} {where}]: expected {self.expected}, got {self.actual}"
        )

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "kind": self.kind,
            "op_index": self.op_index,
            "file": self.file,
            "flat_index": self.flat_index,
            "index": list(self.index),
            "layout": self.layout,
            "position": self.position(),
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass
class FileCheck:
    """One dump file compared with the golden output."""

    file: str
    format: str
    mismatches: int
    first_mismatch: Mismatch | None

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "format": self.format,
            "mismatches": self.mismatches,
            "first_mismatch": self.first_mismatch.to_dict() if self.first_mismatch else None,
        }


@dataclass
class OpCheck:
    """One op's output in the dump. ``status``: ``pass``, ``mismatch``, ``missing`` or ``skipped`` (a
    flatten that was not dumped). When several
    formats of the output were dumped, each is compared; ``mismatches`` and ``first_mismatch`` are those
    of the first mismatching file in the order bin, hex, npy. ``missing_allowed``: an ``allow_missing``
    pattern names the op, so its absence does not fail the check."""

    index: int
    name: str
    kind: str
    elements: int
    files: list[FileCheck] = field(default_factory=list)
    missing_allowed: bool = False

    @property
    def status(self) -> str:
        if not self.files:
            # a view (a flatten) is a reshape of its input's bytes (NHWC order): hardware that does not run
            # it as an op has nothing to dump, and its input was checked already
            return "skipped" if is_view(self.kind) else "missing"
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
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "missing_allowed": self.missing_allowed if self.status == "missing" else False,
            "elements": self.elements,
            "mismatches": self.mismatches,
            "first_mismatch": self.first_mismatch.to_dict() if self.first_mismatch else None,
            "files": [f.to_dict() for f in self.files],
        }


@dataclass
class VerifyResult:
    """The comparison of a hardware dump with a golden vector set (see :func:`verify`)."""

    vectors_dir: str
    dump_dir: str
    model: str
    program_sha256: str
    images: int
    ops: list[OpCheck]
    allow_missing: tuple[str, ...] = ()

    @property
    def missing(self) -> list[str]:
        """Names of the ops with no output file in the dump, in program order (allowed or not)."""
        return [o.name for o in self.ops if o.status == "missing"]

    @property
    def missing_allowed(self) -> list[str]:
        """The missing ops that ``allow_missing`` names."""
        return [o.name for o in self.ops if o.status == "missing" and o.missing_allowed]

    @property
    def missing_not_allowed(self) -> list[str]:
        return [o.name for o in self.ops if o.status == "missing" and not o.missing_allowed]

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
        """``pass``, ``mismatch`` or ``missing`` (an op missing that ``allow_missing`` does not name, or
        no op dumped at all)."""
        if self.mismatched:
            return "mismatch"
        if self.missing_not_allowed or not self.checked:
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
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_FORMAT_VERSION,
            "status": self.status,
            "exit_code": self.exit_code,
            "vectors": self.vectors_dir,
            "dump": self.dump_dir,
            "model": self.model,
            "program_sha256": self.program_sha256,
            "images": self.images,
            "allow_missing": list(self.allow_missing),
            "ops_total": len(self.ops),
            "ops_checked": len(self.checked),
            "ops_passed": sum(o.status == "pass" for o in self.ops),
            "ops_mismatched": [o.name for o in self.mismatched],
            "ops_missing": self.missing,
            "ops_missing_allowed": self.missing_allowed,
            "total_mismatches": self.total_mismatches,
            "first_mismatch": first.to_dict() if first else None,
            "ops": [o.to_dict() for o in self.ops],
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def report(self, max_ops: int = 20) -> str:
        """A short report for people: the verdict, the mismatching and missing ops, the first mismatch."""
        lines = [
            (
                f"golden {self.vectors_dir} (model '{self.model}', program {self.program_sha256[:12]}, "
                f"{len(self.ops)} ops, {self.images} images) vs dump {self.dump_dir}"
            ),
            (
                f"ops: {len(self.checked)} checked, {sum(o.status == 'pass' for o in self.ops)} passed, "
                f"{len(self.mismatched)} mismatched, {len(self.missing)} missing"
                + (
                    f", {sum(o.status == 'skipped' for o in self.ops)} skipped (flatten, not dumped)"
                    if any(o.status == "skipped" for o in self.ops)
                    else ""
                )
            ),
        ]
        for o in self.mismatched[:max_ops]:
            bad = o._first_bad
            lines.append(
                f"  MISMATCH op {o.index} {o.name} ({o.kind}): {o.mismatches} of {o.elements} "
                f"elements differ in {bad.file}"
            )
        if len(self.mismatched) > max_ops:
            lines.append(f"  ... and {len(self.mismatched) - max_ops} more mismatching ops")
        for names, label in (
            (self.missing_not_allowed, "missing from the dump"),
            (self.missing_allowed, f"missing, allowed by --allow-missing {','.join(self.allow_missing)}"),
        ):
            if names:
                more = f" ... (+{len(names) - max_ops})" if len(names) > max_ops else ""
                lines.append(f"  {label}: {', '.join(names[:max_ops])}{more}")
        first = self.first_mismatch
        if first:
            lines.append(f"first mismatch: {first.describe()}")
            if len(self.mismatched) > 1:
                lines.append("  (later ops fed by the first mismatching one may differ as a consequence)")
        verdict = {
            "pass": "PASS",
            "mismatch": "FAIL: outputs differ",
            "missing": "FAIL: ops missing from the dump" if self.checked else "FAIL: no op output found in the dump",
        }[self.status]
        lines.append(f"total: {self.total_mismatches} mismatching element(s); {verdict} (exit {self.exit_code})")
        return "\n".join(lines)


def _compare(
    expected: np.ndarray, actual: np.ndarray, op_index: int, op: dict, entry: dict, rel: str, fmt: str
) -> FileCheck:
    differ = (expected != actual).reshape(-1)
    count = int(differ.sum())
    if not count:
        return FileCheck(rel, fmt, 0, None)
    flat = int(np.flatnonzero(differ)[0])
    index = tuple(int(i) for i in np.unravel_index(flat, expected.shape))
    first = Mismatch(
        op=op["name"],
        kind=op["kind"],
        op_index=op_index,
        file=rel,
        flat_index=flat,
        index=index,
        layout=entry["layout"],
        expected=int(expected.reshape(-1)[flat]),
        actual=int(actual.reshape(-1)[flat]),
    )
    return FileCheck(rel, fmt, count, first)


def _allow_patterns(allow_missing) -> tuple[str, ...]:
    """``allow_missing`` as glob patterns: names or patterns (a string may hold several, comma-separated);
    True means any op (``*``), False or None none."""
    if allow_missing is True:
        return ("*",)
    if allow_missing is False or allow_missing is None:
        return ()
    items = [allow_missing] if isinstance(allow_missing, str) else list(allow_missing)
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"allow_missing must be op or file names / glob patterns (strings), got {allow_missing!r}")
    return tuple(p.strip() for item in items for p in item.split(",") if p.strip())


def _missing_allowed(op: dict, patterns: tuple[str, ...]) -> bool:
    """Whether a pattern names the op: by its name, its folder, or its output file (any format)."""
    stem = f"{op['dir']}/output"
    names = [op["name"], op["dir"], stem] + [f"{stem}.{fmt}" for fmt in FILE_FORMATS]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def _check_op_dump(golden: Path, dump: Path, op_index: int, op: dict, allow: tuple[str, ...]) -> OpCheck:
    entry = op["arrays"]["output"]
    expected = _read_golden(golden, entry)
    result = OpCheck(
        index=op_index,
        name=op["name"],
        kind=op["kind"],
        elements=expected.size,
        missing_allowed=_missing_allowed(op, allow),
    )
    for fmt in FILE_FORMATS:
        rel = entry["files"][fmt]["path"]
        path = dump.joinpath(*PurePosixPath(rel).parts)
        actual = _read_dump(path, dump, fmt, np.dtype(entry["dtype"]), tuple(entry["shape"]))
        if actual is not None:
            result.files.append(_compare(expected, actual, op_index, op, entry, rel, fmt))
    return result


def verify(vectors_dir: str | os.PathLike, dump_dir: str | os.PathLike, *, allow_missing=()) -> VerifyResult:
    """Compare the hardware outputs in ``dump_dir`` with the golden vectors in ``vectors_dir``.

    First checks the golden set (:func:`check_vectors`: manifest digest, op count, program copy, every
    file). Then, op by op in program order, reads ``<op dir>/output.bin``, ``.hex`` and ``.npy`` from
    the dump (every one present; regular files inside ``dump_dir`` only) and compares it with the
    golden output. ``allow_missing``: op names, op folders or output file paths (glob patterns, e.g.
    ``"pool"``, ``"ops/01*"``) whose absence from the dump does not fail the check; True allows any.
    Raises :class:`GoldenVectorsError` / :class:`DumpError` for a broken golden set or a malformed dump
    file; mismatches and missing ops are in the result.
    """
    allow = _allow_patterns(allow_missing)
    golden = Path(vectors_dir)
    manifest = check_vectors(golden)
    dump = Path(dump_dir)
    if not dump.is_dir():
        raise DumpError(f"{dump}: no such dump directory")
    ops = [_check_op_dump(golden, dump, i, op, allow) for i, op in enumerate(manifest["ops"])]
    return VerifyResult(
        vectors_dir=str(golden),
        dump_dir=str(dump),
        model=manifest["model"],
        program_sha256=manifest["program_sha256"],
        images=manifest["images"],
        ops=ops,
        allow_missing=allow,
    )


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
    array = load_npy(path, VectorsError, "inputs")
    if not isinstance(array, np.ndarray) or not (array.dtype == np.int8 or array.dtype.kind == "f"):
        raise VectorsError(
            f"{path}: dtype {getattr(array, 'dtype', type(array).__name__)}; give int8 quantized "
            f"inputs (N, H, W, C) or float images (N, C, H, W)"
        )
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
    e = sub.add_parser(
        "export-vectors",
        help="write golden test vectors of an NPU program (per-op inputs, "
        "parameters and expected outputs as .hex/.bin/.npy, with a manifest)",
    )
    e.add_argument("program", help="a program file written by `npuq compile`")
    e.add_argument(
        "inputs",
        help="fashion-mnist:test:N, fashion-mnist:train:N, or a .npy of int8 inputs "
        "(N, H, W, C) or float images (N, C, H, W)",
    )
    e.add_argument("outdir", help="the directory to write (new or empty)")
    e.add_argument("--threads", type=int, default=None, help="native kernel threads (the files do not depend on it)")
    e.add_argument(
        "--force",
        action="store_true",
        help="replace a previous vector set in OUTDIR (one holding nothing but the set's files)",
    )
    e.set_defaults(func=_run_export)

    v = sub.add_parser(
        "verify",
        help="compare a hardware dump with golden vectors; exit 0 pass, 1 mismatch "
        "or missing ops, 2 broken golden set or malformed dump",
    )
    v.add_argument("vectors", help="the golden vector directory written by `npuq export-vectors`")
    v.add_argument(
        "dump",
        help="the hardware's outputs: <op dir>/output.bin, .hex or .npy, same relative paths "
        "(`npuq run --dump` writes one)",
    )
    v.add_argument("--json", default=None, help="also write the report as JSON to this file")
    # append + optional value: repeatable, and a bare --allow-missing still means any op (as before)
    v.add_argument(
        "--allow-missing",
        action="append",
        nargs="?",
        const="*",
        default=None,
        metavar="NAME",
        help="ops that may be absent from the dump: op names, op folders or output paths, glob "
        "patterns allowed ('pool', 'ops/01*'); repeat or separate with commas; bare: any op",
    )
    v.set_defaults(func=_run_verify)


def _run_export(args) -> int:
    from npuq.data.fashion_mnist import IdxFormatError

    try:
        program = load_program(args.program)
        images, source = load_inputs(args.inputs)
        manifest = export_vectors(
            program, images, args.outdir, threads=args.threads, source=source, overwrite=args.force, progress=True
        )
    except (VectorsError, ProgramError, IdxFormatError, OSError) as exc:
        print(f"npuq export-vectors: error: {_one_line(exc, 2000)}", file=sys.stderr)
        return 2
    print(
        f"wrote {manifest['file_count']} files ({manifest['total_bytes']} bytes) for {len(manifest['ops'])} ops "
        f"and {manifest['images']} images of '{manifest['model']}' to {args.outdir}/ "
        f"({MANIFEST_NAME}: program sha256 {manifest['program_sha256'][:16]}...)"
    )
    return 0


def _run_verify(args) -> int:
    try:
        result = verify(args.vectors, args.dump, allow_missing=args.allow_missing or ())
    except VectorsError as exc:
        print(f"npuq verify: error: {_one_line(exc, 2000)}", file=sys.stderr)
        if args.json:
            report = {
                "format": REPORT_FORMAT,
                "format_version": REPORT_FORMAT_VERSION,
                "status": "error",
                "exit_code": 2,
                "vectors": str(args.vectors),
                "dump": str(args.dump),
                "error": str(exc),
            }
            try:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            except OSError as err:
                print(f"npuq verify: cannot write {args.json}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(result.report())
    if args.json:
        try:
            result.save_json(args.json)
        except OSError as exc:
            print(f"npuq verify: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return result.exit_code


__all__ = [
    "DIGEST_FIELD",
    "FILE_FORMATS",
    "HEX_DIGITS",
    "LAYER_ARRAYS",
    "LAYOUT_AXES",
    "PROGRAM_FILE",
    "VECTORS_FORMAT",
    "VECTORS_FORMAT_VERSION",
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
    "manifest_digest",
    "npy_bytes",
    "parse_hex",
    "read_dump",
    "required_arrays",
    "verify",
    "write_dump",
]
