"""Comparing a hardware dump with a golden set (:func:`verify`, ``npuq verify``): reading dump files of any
format safely, op by op in program order, and the report of the first mismatching op and element."""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from npuq._untrusted import read_regular
from npuq.npu.optable import is_view
from npuq.npu.vectors.formats import (
    FILE_FORMATS,
    HEX_DUMP_BYTES_PER_VALUE,
    HEX_DUMP_SLACK_BYTES,
    LAYOUT_AXES,
    NPY_HEADER_MAX_BYTES,
    REPORT_FORMAT,
    REPORT_FORMAT_VERSION,
    DumpError,
    decode_npy,
    parse_hex,
)
from npuq.npu.vectors.golden import _read_golden, check_vectors


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
    return decode_npy(data, path, dtype, shape, what, DumpError)


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
    """One op's output in the dump. ``status``: ``pass``, ``mismatch``, ``missing``, ``skipped`` (a
    flatten that was not dumped) or ``not_in_set`` (the vector set was exported without this op: it is
    not checked, and not a failure). When several
    formats of the output were dumped, each is compared; ``mismatches`` and ``first_mismatch`` are those
    of the first mismatching file in the order bin, hex, npy. ``missing_allowed``: an ``allow_missing``
    pattern names the op, so its absence does not fail the check."""

    index: int
    name: str
    kind: str
    elements: int
    files: list[FileCheck] = field(default_factory=list)
    missing_allowed: bool = False
    in_set: bool = True

    @property
    def status(self) -> str:
        if not self.in_set:
            return "not_in_set"
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
    def not_in_set(self) -> list[str]:
        """Names of the ops the vector set does not hold (exported with an op selection): not checked."""
        return [o.name for o in self.ops if o.status == "not_in_set"]

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
            "ops_not_in_set": self.not_in_set,
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
                + (f", {len(self.not_in_set)} not in the vector set" if self.not_in_set else "")
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
            (self.not_in_set, "not in the vector set (exported with --ops; not checked)"),
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
    if not op["required_arrays"]:  # a checked manifest lists no arrays exactly for the ops the set does not hold
        return OpCheck(index=op_index, name=op["name"], kind=op["kind"], elements=0, in_set=False)
    entry = op["arrays"]["output"]
    expected = _read_golden(golden, entry)
    result = OpCheck(
        index=op_index,
        name=op["name"],
        kind=op["kind"],
        elements=expected.size,
        missing_allowed=_missing_allowed(op, allow),
    )
    stem = f"{op['dir']}/output"
    for fmt in FILE_FORMATS:  # whatever formats the set has: the hardware may write any of them
        rel = f"{stem}.{fmt}"
        path = dump.joinpath(*PurePosixPath(rel).parts)
        actual = _read_dump(path, dump, fmt, np.dtype(entry["dtype"]), tuple(entry["shape"]))
        if actual is not None:
            result.files.append(_compare(expected, actual, op_index, op, entry, rel, fmt))
    return result


def verify(vectors_dir: str | os.PathLike, dump_dir: str | os.PathLike, *, allow_missing=()) -> VerifyResult:
    """Compare the hardware outputs in ``dump_dir`` with the golden vectors in ``vectors_dir``.

    First checks the golden set (:func:`check_vectors`: manifest digest, op count, program copy, every
    file). Then, op by op in program order, reads ``<op dir>/output.bin``, ``.hex`` and ``.npy`` from
    the dump (every one present, whichever formats the set has; regular files inside ``dump_dir``
    only) and compares it with the golden output. Ops a set exported with an op selection does not
    hold are reported as ``not_in_set``, not checked and no failure. ``allow_missing``: op names, op
    folders or output file paths (glob patterns, e.g. ``"pool"``, ``"ops/01*"``) whose absence from the
    dump does not fail the check; True allows any.
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
