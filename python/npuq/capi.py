"""Where npuq's C ABI is: the header ``npuq.h`` and the shared library ``libnpuq`` (docs/c_api.md).

A C program, a Makefile or an RTL simulator's DPI-C build finds them with ``npuq config --cflags --libs``
(pkg-config style) or, from Python, :func:`get_include` and :func:`get_library` (as numpy and pybind11
offer theirs). Both are installed inside the package: ``npuq/include/npuq.h`` and ``npuq/lib/libnpuq.so``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
LIBRARY_NAME = "libnpuq.so"
HEADER_NAME = "npuq.h"


class CApiNotFoundError(FileNotFoundError):
    """The C ABI's header or library is not where the installed package keeps it."""


def get_include() -> str:
    """The directory that holds ``npuq.h`` (``-I`` of a C compiler)."""
    installed = _PACKAGE / "include"
    if (installed / HEADER_NAME).is_file():
        return str(installed)
    # a source checkout run in place (PYTHONPATH=python): the header's source
    source = _PACKAGE.parent.parent / "csrc" / "include"
    if (source / HEADER_NAME).is_file():
        return str(source)
    raise CApiNotFoundError(f"{HEADER_NAME} is not in {installed}: reinstall npuq (pip install npuq)")


def get_library_dir() -> str:
    """The directory that holds ``libnpuq.so`` (``-L`` of a linker, and the run-time search path)."""
    return str(Path(get_library()).parent)


def get_library() -> str:
    """The path of the shared library ``libnpuq.so``."""
    lib = _PACKAGE / "lib" / LIBRARY_NAME
    if lib.is_file():
        return str(lib)
    raise CApiNotFoundError(
        f"{LIBRARY_NAME} is not in {lib.parent}: reinstall npuq (pip install npuq), or in a source checkout build "
        "it (cmake --build build/dev --target npuq_capi) and copy it there"
    )


def cflags() -> list[str]:
    return [f"-I{get_include()}"]


def libs() -> list[str]:
    """Linker flags, with a run-time path so that the program finds the library without LD_LIBRARY_PATH."""
    d = get_library_dir()
    return [f"-L{d}", f"-Wl,-rpath,{d}", "-lnpuq"]


def add_commands(sub) -> None:
    c = sub.add_parser(
        "config",
        help="print the compiler and linker flags of npuq's C ABI (npuq.h, libnpuq), as pkg-config does",
        description="Print flags for building against npuq's C ABI, e.g. cc app.c $(npuq config --cflags --libs). "
        "docs/c_api.md documents the functions.",
    )
    c.add_argument("--cflags", action="store_true", help="the -I flag of the directory of npuq.h")
    c.add_argument("--libs", action="store_true", help="the -L, -rpath and -lnpuq flags of libnpuq.so")
    c.add_argument("--include-dir", action="store_true", help="the directory of npuq.h")
    c.add_argument("--library", action="store_true", help="the path of libnpuq.so")
    c.add_argument("--abi-version", action="store_true", help="the C ABI version of the installed header")
    c.set_defaults(func=_run_config)


def abi_version() -> int:
    """NPUQ_ABI_VERSION as the installed header defines it."""
    for line in (Path(get_include()) / HEADER_NAME).read_text().splitlines():
        words = line.split()
        if words[:2] == ["#define", "NPUQ_ABI_VERSION"] and len(words) >= 3:
            return int(words[2])
    raise CApiNotFoundError(f"{HEADER_NAME} defines no NPUQ_ABI_VERSION")


def _run_config(args) -> int:
    chosen = [args.cflags, args.libs, args.include_dir, args.library, args.abi_version]
    if not any(chosen):
        raise ValueError("say what to print: --cflags, --libs, --include-dir, --library or --abi-version")
    words: list[str] = []
    if args.cflags:
        words += cflags()
    if args.libs:
        words += libs()
    if args.include_dir:
        words.append(get_include())
    if args.library:
        words.append(get_library())
    if args.abi_version:
        words.append(str(abi_version()))
    print(" ".join(shlex.quote(w) for w in words))
    return 0
