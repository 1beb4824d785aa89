"""Checking a golden vector set before it is trusted (:func:`check_vectors`): the manifest's digest, its
fields and op entries against the program copy and the op table, every file's size and CRC32."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from npuq._untrusted import read_regular
from npuq.npu.optable import OP_TABLE
from npuq.npu.program import Program, program_from_bytes
from npuq.npu.vectors.files import _safe_path
from npuq.npu.vectors.formats import (
    _CRC32,
    _SHA256,
    ACCUMULATOR_ARRAY,
    COMPLETE_SET_FORMAT_VERSION,
    DIGEST_FIELD,
    FILE_FORMATS,
    LAYOUT_AXES,
    MANIFEST_NAME,
    PROGRAM_FILE,
    READABLE_FORMAT_VERSIONS,
    VECTORS_FORMAT,
    DumpError,
    GoldenVectorsError,
    _array_spec,
    _described_fields,
    _golden_size_range,
    _input_keys,
    _one_line,
    _op_dir,
    _op_manifest,
    _read_manifest,
    bin_bytes,
    crc32_hex,
    decode_npy,
    manifest_digest,
    parse_hex,
    required_arrays,
)
from npuq.npu.vectors.selection import Selection, complete_selection


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
    """Every array entry of a checked manifest: the network input, each op's arrays, the network output
    (the network's input and output only where the set holds every op)."""
    arrays = [manifest["input"]["array"]] if "array" in manifest["input"] else []
    for op in manifest["ops"]:
        arrays.extend(op["arrays"][key] for key in op["required_arrays"])
    if "array" in manifest["output"]:
        arrays.append(manifest["output"]["array"])
    return arrays


def set_selection(manifest: dict, where: str = MANIFEST_NAME) -> Selection:
    """What a set holds, from its manifest: a format-2 set holds everything (every op, every format, no
    accumulators); a format-3 set records its ``selection``, which is checked here: known formats in
    their order, op indices of the program in ascending order, a flag, the request text."""
    ops = manifest.get("ops")
    n_ops = len(ops) if isinstance(ops, list) else 0
    if manifest.get("format_version") == COMPLETE_SET_FORMAT_VERSION:
        if "selection" in manifest:
            raise GoldenVectorsError(
                f"{where}: a format-{COMPLETE_SET_FORMAT_VERSION} manifest holds every op and records no "
                f"selection, but this one has a 'selection' field"
            )
        return complete_selection(n_ops)
    w = f"{where}: selection"
    sel = _field(manifest, "selection", dict, where)
    extra = sorted(set(sel) - {"formats", "ops", "accumulators", "ops_request"})
    if extra:
        raise GoldenVectorsError(f"{w}: unknown field(s) {extra}")
    formats = _field(sel, "formats", list, w)
    if not formats or formats != [f for f in FILE_FORMATS if f in formats]:  # also refuses repeats and non-names
        raise GoldenVectorsError(
            f"{w}: formats {formats!r}; expected one or more of {list(FILE_FORMATS)}, in that order, once each"
        )
    indices = _field(sel, "ops", list, w)
    if (
        not indices
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_ops for i in indices)
        or any(a >= b for a, b in zip(indices, indices[1:]))
    ):
        raise GoldenVectorsError(
            f"{w}: ops must be op indices in [0, {n_ops}) in ascending order, at least one (got {_short_repr(indices)})"
        )
    accumulators = _field(sel, "accumulators", bool, w)
    request = sel.get("ops_request")
    if "ops_request" not in sel or not (request is None or isinstance(request, str)):
        raise GoldenVectorsError(f"{w}: ops_request must be the selection text or null")
    return Selection(tuple(formats), tuple(indices), accumulators, request)


def _load_manifest(root: Path) -> dict:
    """Read, parse and fully check ``root/manifest.json`` (no other file is read)."""
    where = str(root / MANIFEST_NAME)
    manifest, fmt = _read_manifest(root, GoldenVectorsError)
    if manifest is None:
        raise GoldenVectorsError(f"{where}: missing; {root} is not a golden vector directory")
    if fmt != VECTORS_FORMAT:
        raise GoldenVectorsError(f"{where}: field 'format' is {fmt!r}, expected {VECTORS_FORMAT!r}")
    version = _field(manifest, "format_version", int, where)
    if version < min(READABLE_FORMAT_VERSIONS):
        raise GoldenVectorsError(
            f"{where}: format_version {version} was written by an older npuq, without the "
            f"manifest digest and program copy this npuq requires; re-export the vectors "
            f"(npuq export-vectors PROGRAM INPUTS {root} --force)"
        )
    if version not in READABLE_FORMAT_VERSIONS:
        raise GoldenVectorsError(
            f"{where}: format_version {version} is not supported (this npuq reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))})"
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
    sel = set_selection(m, where)
    # the network's own input and output files repeat op folders' arrays: only a set of every op has them
    network_arrays = len(sel.ops) == len(ops)
    net_in = _field(m, "input", dict, where)
    in_name = _field(net_in, "name", str, f"{where}: input")
    shapes: dict[str, tuple[int, ...] | None] = {in_name: None}
    if _network_array(net_in, network_arrays, f"{where}: input"):
        shapes[in_name] = _check_array(
            net_in["array"],
            f"{where}: input",
            kind="",
            key="input",
            name="input",
            stem="input",
            value=in_name,
            images=images,
            formats=sel.formats,
        )
    in_set = set(sel.ops)
    for i, op in enumerate(ops):
        _check_op(op, i, len(ops), shapes, images, where, sel, i in in_set)
    net_out = _field(m, "output", dict, where)
    out_op = _field(net_out, "op", str, f"{where}: output")
    if out_op not in shapes or out_op == in_name:
        raise GoldenVectorsError(f"{where}: output op {out_op!r} is not one of the ops")
    if _network_array(net_out, network_arrays, f"{where}: output"):
        shape = _check_array(
            net_out["array"],
            f"{where}: output",
            kind="",
            key="output",
            name="output",
            stem="output",
            value=out_op,
            images=images,
            formats=sel.formats,
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


def _network_array(entry: dict, expected: bool, where: str) -> bool:
    """Whether the network input / output entry has its ``array``, which it must iff ``expected``."""
    if expected:
        _field(entry, "array", dict, where)
    elif "array" in entry:
        raise GoldenVectorsError(
            f"{where}: lists an array, but a set of some ops holds no network input or output files"
        )
    return expected


def _check_op(
    op: Any,
    i: int,
    n_ops: int,
    shapes: dict[str, tuple[int, ...] | None],
    images: int,
    where: str,
    sel: Selection,
    in_set: bool,
) -> None:
    """One op entry; adds the op's output shape to ``shapes`` (value name -> shape; None for the values
    whose arrays the set does not hold). An op the set does not hold has no arrays."""
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
    try:
        keys = _input_keys(kind, len(inputs))
    except GoldenVectorsError as exc:
        raise GoldenVectorsError(f"{w}: {exc}") from None
    if len(inputs) != len(keys) or not all(isinstance(s, str) for s in inputs):
        raise GoldenVectorsError(f"{w}: inputs {inputs!r}; a {kind} op reads {len(keys)} named value(s)")
    for source in inputs:
        if source not in shapes:
            raise GoldenVectorsError(f"{w}: reads {source!r}, which neither the network input nor an earlier op is")
    required = required_arrays(kind, len(inputs), accumulators=sel.accumulators) if in_set else ()
    what = (
        f"a {kind} op of this set"
        + (" (exported with accumulators)" if sel.accumulators and ACCUMULATOR_ARRAY in required else "")
        if in_set
        else "an op this set does not hold (selection.ops)"
    )
    recorded = _field(op, "required_arrays", list, w)
    if recorded != list(required):
        raise GoldenVectorsError(f"{w}: required_arrays is {recorded!r}; {what} has {list(required)}")
    arrays = _field(op, "arrays", dict, w)
    missing = [k for k in required if k not in arrays]
    if missing:
        raise GoldenVectorsError(f"{w}: the manifest lacks the {', '.join(missing)} array(s) that {what} requires")
    extra = sorted(set(arrays) - set(required))
    if extra:
        raise GoldenVectorsError(f"{w}: arrays {extra} are not arrays of {what}")
    if not in_set:
        shapes[name] = None
        return
    common = {"images": images, "formats": sel.formats}
    for key, source in zip(keys, inputs):
        shape = _check_array(
            arrays[key], w, kind=kind, key=key, name=f"{name}.{key}", stem=f"{folder}/{key}", value=source, **common
        )
        if shapes[source] is not None and shape != shapes[source]:
            raise GoldenVectorsError(f"{w}: {key} has shape {list(shape)}, but {source!r} has {list(shapes[source])}")
    for key in OP_TABLE[kind].tensors:
        _check_array(
            arrays[key],
            w,
            kind=kind,
            key=key,
            name=f"{name}.{key}",
            stem=f"{folder}/{key}",
            value=None,
            images=None,
            formats=sel.formats,
        )
    shapes[name] = _check_array(
        arrays["output"],
        w,
        kind=kind,
        key="output",
        name=f"{name}.output",
        stem=f"{folder}/output",
        value=name,
        **common,
    )
    if ACCUMULATOR_ARRAY in required:
        acc = arrays[ACCUMULATOR_ARRAY]
        shape = _check_array(
            acc,
            w,
            kind=kind,
            key=ACCUMULATOR_ARRAY,
            name=f"{name}.{ACCUMULATOR_ARRAY}",
            stem=f"{folder}/{ACCUMULATOR_ARRAY}",
            value=None,
            **common,
        )
        if shape != shapes[name] or acc["layout"] != arrays["output"]["layout"]:
            raise GoldenVectorsError(
                f"{w}: {ACCUMULATOR_ARRAY} is {acc['layout']} {list(shape)}; it has one value per output value "
                f"({arrays['output']['layout']} {list(shapes[name])})"
            )


def _check_array(
    entry: Any,
    where: str,
    *,
    kind: str,
    key: str,
    name: str,
    stem: str,
    value: str | None,
    images: int | None,
    formats: tuple[str, ...],
) -> tuple[int, ...]:
    """One array entry: the name, dtype and layout its place requires, a sane shape, a file in each of
    the set's ``formats`` at its path with the size that shape gives. Returns the shape."""
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
    if (entry.get("value") != value) if value is not None else ("value" in entry):
        raise GoldenVectorsError(f"{w}: value {entry.get('value')!r}, expected {value!r}")
    files = _field(entry, "files", dict, w)
    if set(files) != set(formats):
        raise GoldenVectorsError(f"{w}: files {sorted(files)}, expected {list(formats)} (the set's formats)")
    count, itemsize = math.prod(shape), np.dtype(dtype).itemsize
    for fmt in formats:
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
    sel = set_selection(m, where)
    in_set = set(sel.ops)
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
        required = required_arrays(op.kind, len(op.inputs), accumulators=sel.accumulators) if i in in_set else ()
        described = _normalized(_op_manifest(i, op, entry["dir"], {}, required))
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
        contents = {fmt: _read_listed(root, info) for fmt, info in entry["files"].items()}
        tensor = tensors.get(entry["name"])
        if tensor is not None:
            fmt = _golden_format(entry)
            same = list(tensor.shape) == entry["shape"] and (
                contents[fmt] == bin_bytes(tensor)
                if fmt == "bin"
                else np.array_equal(_decode_golden(root, entry, fmt, contents[fmt]), tensor)
            )
            if not same:
                raise GoldenVectorsError(
                    f"{root / entry['files'][fmt]['path']}: differs from the program's {entry['name']}"
                )
    return manifest


#: the format a golden array is read from: the first of these the set has (raw bytes are the quickest)
_READ_ORDER = ("bin", "npy", "hex")


def _golden_format(entry: dict) -> str:
    return next(fmt for fmt in _READ_ORDER if fmt in entry["files"])


def _decode_golden(root: Path, entry: dict, fmt: str, data: bytes) -> np.ndarray:
    """The values of golden file ``data`` (already checked: listed size and CRC32) of array ``entry``."""
    dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
    path = root / entry["files"][fmt]["path"]
    if fmt == "bin":
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype)
    if fmt == "npy":
        return decode_npy(data, path, dtype, shape, "the manifest's shape", GoldenVectorsError)
    try:
        flat = parse_hex(data.decode("ascii"), dtype, str(path))
    except (UnicodeDecodeError, DumpError) as exc:
        raise GoldenVectorsError(f"{path}: not a golden hex file ({_one_line(exc)})") from None
    if flat.size != math.prod(shape):
        raise GoldenVectorsError(
            f"{path}: holds {flat.size} values, the manifest's shape {list(shape)} has {math.prod(shape)}"
        )
    return flat.reshape(shape)


def _read_golden(root: Path, entry: dict) -> np.ndarray:
    """The values of a golden array, read from one of the formats the set has."""
    fmt = _golden_format(entry)
    return _decode_golden(root, entry, fmt, _read_listed(root, entry["files"][fmt]))
