"""The file formats of a golden vector set: the format names and limits, the errors, the encodings of an
array (hex for ``$readmemh``, raw binary, npy), the manifest digest, and which arrays the folder of an op
holds (docs/golden_vectors.md)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from npuq._untrusted import JSONRejected, loads_strict, npy_header, read_regular, size_limit
from npuq.npu.optable import LAYER_KINDS, MAX_VARIADIC_INPUTS, OP_TABLE
from npuq.npu.program import Program

VECTORS_FORMAT = "npuq-golden-vectors"
#: 2: the manifest digest, the op count, the program copy and the per-op required arrays;
#: 3: the set records a selection (formats, op folders, accumulators) in its manifest
VECTORS_FORMAT_VERSION = 3
#: a complete set (every op, every format, no accumulators) records no selection and stays version 2
COMPLETE_SET_FORMAT_VERSION = 2
#: the versions this npuq reads (version 1 sets, without a digest, must be exported again)
READABLE_FORMAT_VERSIONS = (2, 3)
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
    "T": ("t",),  # a lookup table: entry t is the output for the int8 input t - 128
}
#: the per-layer parameter arrays in the order they are written (a layer's tensors in the op table; every
#: layer kind, LAYER_KINDS, has these)
LAYER_ARRAYS = tuple(OP_TABLE[LAYER_KINDS[0]].tensors)
#: the kinds whose folders hold ``accumulator.*`` in a set exported with accumulators: the layers (what the
#: emulator runs as ops.Conv2d / ops.FullyConnected)
ACCUMULATOR_KINDS = LAYER_KINDS
#: a layer's int32 accumulators, after the overflow policy, before requantization (docs/arithmetic.md 4-5)
ACCUMULATOR_ARRAY = "accumulator"

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


def decode_npy(
    data: bytes, path, dtype: np.dtype, shape: tuple[int, ...], what: str, error: type[VectorsError]
) -> np.ndarray:
    """A ``.npy`` file's array, its header checked against ``dtype`` and ``shape`` before the data is
    touched (a header may claim any size; np.load would try to allocate it). Any byte order and
    C or Fortran order; no objects, no structured dtypes, no trailing bytes. ``error`` is raised, naming ``path``."""
    found_shape, fortran, found, offset = npy_header(data, error, path)
    if (
        found.hasobject
        or found.fields is not None
        or found.subdtype is not None
        or found.kind != dtype.kind
        or found.itemsize != dtype.itemsize
    ):
        raise error(f"{path}: dtype {found}, expected {dtype.name}")
    if tuple(found_shape) != shape:
        raise error(f"{path}: shape {tuple(found_shape)}, expected {shape}")
    body = data[offset:]
    if len(body) != math.prod(shape) * dtype.itemsize:
        raise error(
            f"{path}: {len(body)} bytes of data after the .npy header, expected "
            f"{math.prod(shape) * dtype.itemsize} ({what})"
        )
    flat = np.frombuffer(body, dtype=found)
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return np.ascontiguousarray(array.astype(dtype))


def crc32_hex(data: bytes) -> str:
    """zlib's CRC-32 of ``data`` as 8 lower-case hex digits (what the ``crc32`` command prints)."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


# ====================================================================================== manifest JSON
def _load_json(data: bytes, where: str) -> Any:
    """Parse manifest bytes strictly: UTF-8, no duplicate keys, no NaN or infinity, no huge integers."""
    try:
        return loads_strict(data, max_int_digits=_MAX_INT_DIGITS, finite=True)
    except JSONRejected as exc:
        raise GoldenVectorsError(f"{where}: not a valid manifest: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise GoldenVectorsError(f"{where}: cannot read the manifest ({_one_line(exc)})") from None


def _read_manifest(root: Path, error: type[VectorsError]) -> tuple[Any, str | None]:
    """The parsed ``root/manifest.json`` (read only if it is a regular file inside ``root`` of at most
    ``MANIFEST_MAX_BYTES``, parsed strictly) and its ``format`` field; ``(None, None)`` if there is no
    manifest. ``error`` is raised for an unreadable file, GoldenVectorsError for bad JSON."""
    path = root / MANIFEST_NAME
    data = read_regular(
        path, error, "manifest", root=root, check_size=size_limit(path, error, "manifest", MANIFEST_MAX_BYTES)
    )
    if data is None:
        return None, None
    manifest = _load_json(data, str(path))
    return manifest, manifest.get("format") if isinstance(manifest, dict) else None


def manifest_digest(manifest: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of ``manifest`` without its ``manifest_sha256`` field: keys
    sorted, no whitespace, ASCII escapes (``json.dumps(sort_keys=True, separators=(",", ":"))``)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def required_arrays(kind: str, n_inputs: int | None = None, *, accumulators: bool = False) -> tuple[str, ...]:
    """The arrays an op of ``kind`` has in a vector set, in the order they are written: its input(s)
    (``input``; ``input_a`` and ``input_b`` for an add or a mul; ``input_0`` ... for the ``n_inputs``
    inputs of a concat), its tensors (the layer parameters of conv2d and fully_connected, a lut's
    table) and ``output`` (the op table's ``OpSpec.required_arrays_for``). ``accumulators``: the set
    was exported with them, so a layer also has ``accumulator`` (before ``output``). Raises
    :class:`GoldenVectorsError` for an unknown kind or a count a variadic kind cannot have."""
    if not isinstance(kind, str) or kind not in OP_TABLE:
        raise GoldenVectorsError(f"op kind {kind!r} is not one of {', '.join(OP_TABLE)}")
    _input_keys(kind, n_inputs)
    arrays = OP_TABLE[kind].required_arrays_for(n_inputs)
    if accumulators and kind in ACCUMULATOR_KINDS:
        arrays = (*arrays[:-1], ACCUMULATOR_ARRAY, arrays[-1])
    return arrays


def _input_keys(kind: str, n_inputs: int | None = None) -> tuple[str, ...]:
    spec = OP_TABLE[kind]
    if spec.variadic and (
        isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or not 2 <= n_inputs <= MAX_VARIADIC_INPUTS
    ):
        raise GoldenVectorsError(f"a {kind} op reads 2 to {MAX_VARIADIC_INPUTS} values, got {n_inputs!r}")
    return spec.input_names(n_inputs)


def _array_spec(kind: str, key: str) -> tuple[str, tuple[str, ...]]:
    """The dtype and the allowed layouts of array ``key`` of an op of ``kind``: a tensor's from the op
    table, else an activation's (an input or the output; ``kind`` "" for the network's input and output)."""
    spec = OP_TABLE.get(kind)
    tensor = spec.tensors.get(key) if spec is not None else None
    if tensor is not None:
        return np.dtype(tensor.dtype).name, (tensor.layout,)
    if key == ACCUMULATOR_ARRAY and kind in ACCUMULATOR_KINDS:
        return "int32", ("NHWC", "NK")  # the layout of the layer's output, one int32 per output value
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


# ------------------------------------------------------------------------------ manifest entries
def _op_dir(index: int, name: str, n_ops: int) -> str:
    width = max(3, len(str(n_ops - 1)))
    return f"ops/{index:0{width}d}_{name}"


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


def _op_manifest(index: int, op, folder: str, arrays: dict[str, dict], required: tuple[str, ...] | None = None) -> dict:
    """An op's manifest entry; ``required``: its arrays in this set (default: those of a complete set;
    none for an op the set does not hold)."""
    if required is None:
        required = required_arrays(op.kind, len(op.inputs))
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
        "required_arrays": list(required),
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
