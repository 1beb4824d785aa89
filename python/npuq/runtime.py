"""Instruction-set and thread settings of the native kernels."""

from __future__ import annotations

from npuq import _C


def cpu_features() -> dict:
    """What this CPU and build support: ``{"supported": [...], "active": name, "openmp": bool}``."""
    return dict(_C.cpu_features())


def set_isa(name: str) -> None:
    """Force a kernel family (``"portable"``, ``"avx2"``, ``"avx_vnni"``, ``"avx512_vnni"``) or ``"auto"`` for the best.

    Every family computes the same bits; forcing one is for testing and benchmarking.
    """
    if not isinstance(name, str):
        raise TypeError(f"set_isa expects a string, got {type(name).__name__}")
    _C.set_isa(name)


def get_num_threads() -> int:
    """Default number of threads of the native kernels."""
    return int(_C.get_num_threads())


MAX_THREADS: int = int(_C.MAX_THREADS)
"""The most threads the native kernels accept (OpenMP aborts the process when thread creation fails)."""


def set_num_threads(n: int) -> None:
    """Set the default number of threads, 1..MAX_THREADS. Results do not depend on it."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"threads must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"threads must be in [1, {MAX_THREADS}], got {n}")
    _C.set_num_threads(n)
