"""Truncated SVD of a dense matrix by the native core (float32 and float64), for low-rank factorization.

    res = truncated_svd(weight, rank=64)      # numpy array or torch CPU tensor
    approx = (res.u * res.s) @ res.vt         # res.error == ||weight - approx||_F

Three algorithms (``docs/lrf.md``, "Truncated SVD"): ``"exact"`` runs LAPACK's divide-and-conquer SVD
(gesdd) on the whole matrix and keeps the leading ``rank`` triplets; ``"randomized"`` is the range
finder of Halko, Martinsson and Tropp (2011): a sketch of ``rank + oversampling`` random directions,
``power_iterations`` passes over A and A^T (re-normalized in between), an orthonormal basis Q of the
sketch (Cholesky QR, Householder QR as the fallback), and gesdd of the small matrix Q^T A;
``"krylov"`` is randomized block Krylov iteration (Musco and Musco, 2015): the same products, but the
basis keeps every block, [Y, (A A^T) Y, ..., (A A^T)^q Y] with q = ``power_iterations`` (the depth) and
blocks of ``rank + oversampling`` columns, which reaches a given accuracy with fewer passes over A.
``"auto"`` picks the exact one for small matrices and when the sketch would be a large fraction of
min(m, n), where it is also the faster (``auto_method`` says which runs).

The dense linear algebra is OpenBLAS from the ``scipy-openblas32`` package (a dependency of npuq),
opened by the native core the first time a CPU matrix is factorized; that call raises ImportError when
the package is missing (``cpu_available()`` tells beforehand). The BLAS threads follow ``threads``
(default: ``npuq.get_num_threads()``).

Device matrices (torch CUDA tensors, objects with ``__cuda_array_interface__``) are factorized on the
GPU by cuBLAS + cuSOLVER, opened at run time (``npuq.lrf.svd_cuda``; docs/lrf.md, "On the GPU"):
methods ``"randomized"`` (what ``"auto"`` runs there) and ``"exact"``; the results stay on the input's
device and stream, as torch CUDA tensors for torch input, ``npuq.CudaArray`` otherwise.

Results are deterministic: the random test matrix comes from a counter-based generator seeded by
``seed``, so the same input, seed and thread count give the same bits.
"""

from __future__ import annotations

import importlib.util
import os
from numbers import Integral
from typing import Any, NamedTuple

import numpy as np

from npuq import _C

__all__ = ["METHODS", "TruncatedSVD", "auto_method", "cpu_available", "truncated_svd"]

METHODS = ("auto", "randomized", "exact", "krylov")
SUPPORTED_DTYPES = ("float32", "float64")


class TruncatedSVD(NamedTuple):
    """``a ~ u @ diag(s) @ vt``; ``error`` is ``||a - u @ diag(s) @ vt||_F`` (a Python float).

    u: (m, rank), s: (rank,) in decreasing order, vt: (rank, n); numpy arrays, or torch CPU tensors when
    the input was a torch tensor, in the input's dtype. For device input: torch CUDA tensors on the
    input's device (torch input) or ``npuq.CudaArray`` (other ``__cuda_array_interface__`` input)."""

    u: Any
    s: Any
    vt: Any
    error: float


def _openblas_library() -> str:
    """Path of scipy-openblas32's shared library, found without importing the package (which would
    load the library into the global symbol namespace)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("npuq.lrf.svd needs OpenBLAS from the scipy-openblas32 package: pip install scipy-openblas32")
    for root in spec.submodule_search_locations:
        lib_dir = os.path.join(root, "lib")
        names = (
            sorted(n for n in os.listdir(lib_dir) if n.startswith("libscipy_openblas"))
            if os.path.isdir(lib_dir)
            else []
        )
        if names:
            return os.path.join(lib_dir, names[0])
    raise ImportError("the scipy-openblas32 package has no libscipy_openblas library; reinstall it")


def _load() -> None:
    """Open OpenBLAS for the CPU path (once); ImportError saying what is missing."""
    if not hasattr(_C, "lrf_truncated_svd"):
        raise ImportError("this build of npuq._C has no truncated SVD; reinstall npuq")
    if not _C.lrf_lapack_loaded():
        path = _openblas_library()
        try:
            _C.lrf_load_lapack(path)
        except RuntimeError as exc:
            raise ImportError(str(exc)) from exc


def cpu_available() -> bool:
    """Whether CPU matrices can be factorized here (OpenBLAS from scipy-openblas32 loads); loads it."""
    try:
        _load()
    except ImportError:
        return False
    return True


def _integer(v, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def _is_torch(a) -> bool:
    return type(a).__module__.split(".")[0] == "torch" and hasattr(a, "detach") and hasattr(a, "numpy")


def _is_device(a) -> bool:
    """A torch CUDA tensor or another object with __cuda_array_interface__ (torch CPU tensors have none)."""
    if _is_torch(a):
        return a.device.type == "cuda"
    return hasattr(a, "__cuda_array_interface__")


def _as_matrix(a) -> tuple[np.ndarray, bool]:
    """The input as a C-contiguous, aligned float32/float64 numpy array (copied only when needed), and
    whether it was a torch tensor."""
    from_torch = _is_torch(a)
    if from_torch:
        if a.device.type != "cpu":
            raise ValueError(f"truncated_svd takes CPU tensors, got one on {a.device}")
        import torch  # already imported by whoever made the tensor

        if a.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"truncated_svd: unsupported dtype {a.dtype}; supported: torch.float32, torch.float64")
        arr = a.detach().resolve_conj().resolve_neg().numpy()
    elif isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(memoryview(a))  # buffer-protocol objects
        except TypeError:
            raise TypeError(
                f"truncated_svd takes a numpy array, a torch CPU tensor or a buffer, got {type(a).__name__}"
            ) from None
    if arr.dtype not in (np.float32, np.float64) or arr.dtype.byteorder not in ("=", "|"):
        if arr.dtype.kind == "f" and arr.dtype.itemsize in (4, 8):
            arr = arr.astype(np.float32 if arr.dtype.itemsize == 4 else np.float64)  # native byte order
        else:
            raise TypeError(f"truncated_svd: unsupported dtype {arr.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    if arr.ndim != 2:
        raise ValueError(f"truncated_svd: the matrix must have 2 dimensions, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"truncated_svd: the matrix is empty: shape {tuple(arr.shape)}")
    return np.require(arr, requirements=("C", "A")), from_torch


def auto_method(m: int, n: int, rank: int, oversampling: int = 10, power_iterations: int = 2) -> str:
    """The algorithm ``method="auto"`` runs on an m x n CPU matrix: ``"exact"``, ``"randomized"`` or
    ``"krylov"`` (on the GPU it always runs ``"randomized"``)."""
    return _C.lrf_auto_method(m, n, rank, oversampling, power_iterations)


def truncated_svd(
    a,
    rank: int,
    *,
    method: str = "auto",
    oversampling: int = 10,
    power_iterations: int = 2,
    seed: int = 0,
    threads: int | None = None,
    block_size: int | None = None,
) -> TruncatedSVD:
    """The leading ``rank`` singular triplets of the 2-D matrix ``a`` (float32 or float64).

    ``rank`` in [1, min(m, n)]; ``method`` ``"auto"``, ``"randomized"``, ``"exact"`` or ``"krylov"``;
    ``oversampling`` (>= 0) extra sketch (block) columns and ``power_iterations`` (>= 0) passes of the
    randomized algorithm, or the depth of the Krylov one (its basis has ``(rank + oversampling) *
    (power_iterations + 1)`` columns, at most min(m, n));
    ``seed`` (0 <= seed < 2**64) of its random test matrix; ``threads`` (None: npuq's default);
    ``block_size`` (``"krylov"`` only; None: ``rank + oversampling``) columns per Krylov block: narrower
    blocks than the rank make the basis deeper for the same width, at fewer flops per pass over A (the
    basis, ``block_size * (power_iterations + 1)`` columns capped at min(m, n), must hold ``rank``).
    Non-contiguous inputs are copied first; the input is never modified.

    Device input (a torch CUDA tensor or an ``__cuda_array_interface__`` object, C-contiguous) runs on
    the GPU, on the input's own device and (for torch) the current stream of that device: methods
    ``"auto"`` (= ``"randomized"``) and ``"exact"``; ``threads`` does not apply there. Non-contiguous
    device input is refused (ValueError: pass ``a.contiguous()``), as is a build without CUDA kernels or
    a machine where cuBLAS / cuSOLVER cannot be loaded (RuntimeError, saying what was tried).

    Raises ValueError for empty or non-2-D input, NaN/inf entries (naming the first one), and options
    out of range; TypeError for other dtypes and non-integer options; RuntimeError when LAPACK fails;
    MemoryError when the GPU runs out of memory.
    """
    if _is_device(a):
        return _truncated_svd_device(
            a,
            rank,
            method=method,
            oversampling=oversampling,
            power_iterations=power_iterations,
            seed=seed,
            block_size=block_size,
        )
    _load()
    arr, from_torch = _as_matrix(a)
    m, n = arr.shape
    rank = _integer(rank, "rank", 1, min(m, n))
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    oversampling = _integer(oversampling, "oversampling", 0, 1 << 30)
    power_iterations = _integer(power_iterations, "power_iterations", 0, 1 << 20)
    seed = _integer(seed, "seed", 0, (1 << 64) - 1)
    threads = 0 if threads is None else _integer(threads, "threads", 1, 1 << 16)
    if block_size is None:
        block_size = 0
    else:
        block_size = _integer(block_size, "block_size", 1, 1 << 30)
        if method != "krylov":
            raise ValueError(f"block_size applies to method 'krylov' only; got method {method!r}")
        width = min(min(m, n), min(block_size, min(m, n)) * (power_iterations + 1))
        if width < rank:
            raise ValueError(
                f"the Krylov basis, block_size * (power_iterations + 1) = {block_size} * "
                f"{power_iterations + 1} columns (at most min(m, n) = {min(m, n)}), is narrower "
                f"than rank {rank}"
            )
    u, s, vt, error, _info = _C.lrf_truncated_svd(
        arr, rank, method, oversampling, power_iterations, seed, threads, "auto", block_size
    )
    if from_torch:
        import torch

        u, s, vt = torch.from_numpy(u), torch.from_numpy(s), torch.from_numpy(vt)
    return TruncatedSVD(u, s, vt, float(error))


def _truncated_svd_device(a, rank, *, method, oversampling, power_iterations, seed, block_size) -> TruncatedSVD:
    from npuq.lrf import svd_cuda

    view, dtype = svd_cuda.describe(a)  # dtype, shape and contiguity, before any CUDA call
    m, n = view.shape
    rank = _integer(rank, "rank", 1, min(m, n))
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    if method not in svd_cuda.GPU_METHODS:
        raise ValueError(
            f"method {method!r} is not available on the GPU; use one of "
            f"{', '.join(map(repr, svd_cuda.GPU_METHODS))} (or a CPU matrix)"
        )
    oversampling = _integer(oversampling, "oversampling", 0, 1 << 30)
    power_iterations = _integer(power_iterations, "power_iterations", 0, 1 << 20)
    seed = _integer(seed, "seed", 0, (1 << 64) - 1)
    if block_size is not None:
        raise ValueError("block_size applies to method 'krylov' only, which runs on the CPU")
    u, s, vt, error = svd_cuda.truncated_svd_gpu(
        a,
        rank,
        method=method,
        oversampling=oversampling,
        power_iterations=power_iterations,
        seed=seed,
        view=view,
        dtype=dtype,
    )
    return TruncatedSVD(u, s, vt, error)
