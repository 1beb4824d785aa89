"""Reading files that come from outside (programs, golden vectors, hardware dumps, user arrays), and the
JSON inside them, so that no file can hang the reader, make it allocate without bound or mean two things.

* A file is read only when it is a regular file: a FIFO would block the open or the read, ``/dev/zero``
  never ends, a directory is not data. It is opened without blocking and without following a final
  link, its type and size are checked on the open descriptor, and its size is judged by the caller
  before a byte is read.
* A link may be required to stay inside a directory (``root``): a vector set must not read or write
  through a link to elsewhere.
* JSON objects may not repeat a key (readers disagree on which value wins, so such a file would be two
  different files to two tools), and text must be UTF-8 (``json.loads`` guesses UTF-16/32 from bytes).

Every function takes the exception class to raise, so each caller reports errors in its own terms
(``ProgramError``, ``GoldenVectorsError``, ``DumpError``, ...).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

import numpy as np

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


# ====================================================================================== files
def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for an error message."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def inside(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or below it (both resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def regular_size(path: Path, error: type[Exception], what: str, *, root: Path | None = None) -> int | None:
    """The size of ``path`` if it is a regular file, None if nothing is there.

    Links are resolved first and, with ``root``, must stay inside it: a link out of the directory, a
    broken link, a FIFO, a device or a directory is an ``error`` naming ``path``.
    """
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{path}: cannot access the {what} ({exc.strerror or exc})") from None
    real = os.path.realpath(path)
    if root is not None and not inside(real, os.path.realpath(root)):
        raise error(f"{path}: is a link leading outside {root} (to {real}); a {what} must lie inside it")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise error(f"{path}: is a broken link (to {real})") from None
    except OSError as exc:
        raise error(f"{path}: cannot access the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {file_kind(st.st_mode)}, not a regular file; a {what} must be a regular file")
    return st.st_size


def read_regular(
    path: Path,
    error: type[Exception],
    what: str,
    *,
    root: Path | None = None,
    check_size: Callable[[int], None] | None = None,
) -> bytes | None:
    """The bytes of the regular file ``path`` (None if absent). ``check_size(size)`` raises for a size the
    caller cannot accept, before a byte is read. The file is checked again once open, so that one swapped
    for a FIFO or a link in between is not read, and must keep its size while it is read."""
    size = regular_size(path, error, what, root=root)
    if size is None:
        return None
    if check_size is not None:
        check_size(size)
    try:
        fd = os.open(os.path.realpath(path), _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                raise error(f"{path}: the {what} changed while it was being read")
            data = f.read(size + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) != size:
        raise error(f"{path}: the {what} changed while it was being read")
    return data


def size_limit(path: Path, error: type[Exception], what: str, max_bytes: int) -> Callable[[int], None]:
    """A ``check_size`` for :func:`read_regular`: at most ``max_bytes``."""

    def check(size: int) -> None:
        if size > max_bytes:
            raise error(f"{path}: the {what} is {size:,} bytes, more than the {max_bytes:,} accepted")

    return check


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_header(data: bytes, error: type[Exception], path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of ``.npy`` bytes, read without touching the data: a
    header may claim any size, and np.load would allocate it before finding the bytes missing."""
    import tokenize
    import warnings

    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():  # numpy warns about Python 2 headers; the caller's checks decide
            warnings.simplefilter("ignore")
            version = np.lib.format.read_magic(stream)
            reader = _NPY_HEADER_READERS.get(version)
            if reader is None:
                raise error(f"{path}: .npy format version {version[0]}.{version[1]} is not supported (1.0, 2.0)")
            shape, fortran, dtype = reader(stream)
    except (
        ValueError,
        TypeError,
        SyntaxError,
        RecursionError,
        MemoryError,
        OverflowError,
        EOFError,
        tokenize.TokenError,
    ) as exc:
        if isinstance(exc, error):
            raise
        raise error(f"{path}: not a readable .npy file ({' '.join(str(exc).split())[:120]})") from None
    return tuple(shape), bool(fortran), dtype, stream.tell()


def load_npy(path: str | os.PathLike, error: type[Exception], what: str, *, max_bytes: int = 4 << 30) -> np.ndarray:
    """A ``.npy`` array from a user's file: a regular file of at most ``max_bytes``, a plain numeric dtype
    (no pickled objects), and a header whose shape accounts for exactly the bytes that follow it."""
    path = Path(path)
    data = read_regular(path, error, what, check_size=size_limit(path, error, what, max_bytes))
    if data is None:
        raise error(f"{path}: no such file (the {what})")
    shape, fortran, dtype, offset = npy_header(data, error, path)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise error(f"{path}: dtype {dtype} is not a plain numeric array (the {what})")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - offset != expected:
        raise error(
            f"{path}: its header says shape {shape} of {dtype} ({expected:,} bytes) but "
            f"{len(data) - offset:,} bytes follow (the {what})"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=offset)
    return np.array(flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape), order="C")


# ====================================================================================== JSON
class JSONRejected(ValueError):
    """Raised by :func:`loads_strict`; the message says what was refused, the caller names the file."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONRejected(
                f"duplicate key {key!r:.80}: it appears twice in one object (readers that keep the "
                "first or the last value would read different files)"
            )
        out[key] = value
    return out


def _bounded_int(max_digits: int):
    def parse(text: str) -> int:
        digits = len(text.lstrip("-"))
        if digits > max_digits:
            raise JSONRejected(f"an integer of {digits} digits (at most {max_digits})")
        return int(text)

    return parse


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRejected(f"the number {text[:24]} is out of range")
    return value


def _no_constant(name: str):
    raise JSONRejected(f"{name} is not a JSON number")


def loads_strict(data: str | bytes, *, max_int_digits: int | None = None, finite: bool = False) -> Any:
    """``json.loads`` that refuses repeated keys and non-UTF-8 bytes; with ``max_int_digits`` also longer
    integers, with ``finite`` also NaN, Infinity and floats that overflow. Raises :class:`JSONRejected`
    for those and ``ValueError`` / ``RecursionError`` for text that is not JSON."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")  # UnicodeDecodeError is a ValueError
    kwargs: dict[str, Any] = {"object_pairs_hook": _unique_keys}
    if max_int_digits is not None:
        kwargs["parse_int"] = _bounded_int(max_int_digits)
    if finite:
        kwargs.update(parse_float=_finite_float, parse_constant=_no_constant)
    return json.loads(data, **kwargs)


__all__ = [
    "JSONRejected",
    "file_kind",
    "inside",
    "load_npy",
    "loads_strict",
    "npy_header",
    "read_regular",
    "regular_size",
    "size_limit",
]
