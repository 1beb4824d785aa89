"""The GPU path of :func:`npuq.lrf.svd.truncated_svd`: device matrices (torch CUDA tensors, objects with
``__cuda_array_interface__``) factorized on cuBLAS + cuSOLVER, without copies through the host.

cuBLAS and cuSOLVER are not linked into npuq: the native core opens them at first use
(``npuq._C.cuda_load_libs``), from the first of these that loads:

1. the paths in the environment variables ``NPUQ_CUBLAS`` / ``NPUQ_CUSOLVER``;
2. the copies already loaded in this process (torch loads its own when it initializes CUDA);
3. the sonames on the dynamic loader's path (``libcublas.so.13``, ``.so.12``; ``libcusolver.so.12``,
   ``.so.11``, ``.so.13``);
4. the files of the ``nvidia-*`` wheels under site-packages (``nvidia/cu13/lib/``, ``nvidia/cublas/lib/``,
   ...), then ``$CUDA_HOME/lib64``, ``$CUDA_PATH/lib64`` and ``/usr/local/cuda/lib64``.

torch is never imported here: a tensor is recognised through ``sys.modules`` (``npuq._cuda``).
"""

from __future__ import annotations

import glob
import os
import site
import sys
import threading

import numpy as np

from npuq import _C

__all__ = ["GPU_METHODS", "library_candidates", "load_libraries", "truncated_svd_gpu"]

GPU_METHODS = ("auto", "randomized", "exact")
ENV = {"cublas": "NPUQ_CUBLAS", "cusolver": "NPUQ_CUSOLVER"}
SONAMES = {
    "cublas": ("libcublas.so.13", "libcublas.so.12"),
    "cusolver": ("libcusolver.so.12", "libcusolver.so.11", "libcusolver.so.13"),
}
_BASENAME = {"cublas": "libcublas.so", "cusolver": "libcusolver.so"}

_lock = threading.Lock()


def _built_with_cuda() -> bool:
    return bool(getattr(_C, "BUILT_WITH_CUDA", False))


def require_cuda_build() -> None:
    """RuntimeError unless this build of npuq has the GPU truncated SVD."""
    if not _built_with_cuda():
        raise RuntimeError(
            "truncated_svd got a CUDA matrix, but this build of npuq has no CUDA kernels "
            "(npuq.BUILT_WITH_CUDA is False); reinstall npuq on a machine with the CUDA toolkit "
            "(nvcc), or pass a CPU matrix (a.cpu())"
        )
    if not hasattr(_C, "cuda_truncated_svd"):
        raise RuntimeError(
            "this build of npuq has CUDA kernels but no GPU truncated SVD (npuq._C has no "
            "cuda_truncated_svd); rebuild npuq from a source tree that has csrc/lrf/cuda/svd.cu"
        )


def _is_library(basename: str, kind: str) -> bool:
    """libcublas.so[.N...] (not libcublasLt), libcusolver.so[.N...] (not libcusolverMg)."""
    base = _BASENAME[kind]
    return basename == base or basename.startswith(base + ".")


def _loaded_in_process(kind: str) -> list[str]:
    """Paths of the matching libraries mapped into this process (Linux /proc/self/maps)."""
    found: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if path.startswith("/") and _is_library(os.path.basename(path), kind) and path not in found:
                        found.append(path)
    except OSError:
        pass
    return found


def _site_dirs() -> list[str]:
    dirs: list[str] = []
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # pragma: no cover - virtualenvs of old Python versions
        pass
    try:
        dirs.append(site.getusersitepackages())
    except AttributeError:  # pragma: no cover
        pass
    dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    out: list[str] = []
    for d in dirs:
        if d and os.path.isdir(d) and d not in out:
            out.append(d)
    return out


def _version_key(path: str):
    """Sort key: newer major versions first (libcublas.so.13 before .so.12), unversioned last."""
    tail = os.path.basename(path).split(".so", 1)[1].lstrip(".")
    nums = [int(x) for x in tail.split(".") if x.isdigit()]
    return [-x for x in nums] or [1]


def _files_in(dirs, kind: str) -> list[str]:
    out: list[str] = []
    for d in dirs:
        names = sorted(glob.glob(os.path.join(glob.escape(d), _BASENAME[kind] + "*")), key=_version_key)
        out += [p for p in names if _is_library(os.path.basename(p), kind)]
    return out


def _wheel_dirs(site_dirs=None) -> list[str]:
    """``nvidia/**/lib`` folders of the site-packages directories (cu13 wheels: nvidia/cu13/lib; older:
    nvidia/cublas/lib, nvidia/cusolver/lib)."""
    out: list[str] = []
    for d in _site_dirs() if site_dirs is None else site_dirs:
        root = os.path.join(d, "nvidia")
        if os.path.isdir(root):
            out += sorted(
                p for p in glob.glob(os.path.join(glob.escape(root), "**", "lib"), recursive=True) if os.path.isdir(p)
            )
    return out


def _toolkit_dirs() -> list[str]:
    out: list[str] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            out.append(os.path.join(os.environ[var], "lib64"))
    out.append("/usr/local/cuda/lib64")
    return [d for d in dict.fromkeys(out) if os.path.isdir(d)]


def library_candidates(kind: str, *, site_dirs=None, include_loaded: bool = True) -> list[str]:
    """Where ``kind`` ("cublas" or "cusolver") is looked for, in order (see the module docstring)."""
    if kind not in ENV:
        raise ValueError(f"kind must be 'cublas' or 'cusolver', got {kind!r}")
    cands: list[str] = []
    env = os.environ.get(ENV[kind])
    if env:
        cands.append(env)
    if include_loaded:
        cands += _loaded_in_process(kind)
    cands += list(SONAMES[kind])
    cands += _files_in(_wheel_dirs(site_dirs), kind)
    cands += _files_in(_toolkit_dirs(), kind)
    return list(dict.fromkeys(cands))


def _same_folder_first(cusolver: list[str], cublas: list[str]) -> list[str]:
    """cuSOLVER candidates next to the first cuBLAS file come first: the two must come from one CUDA
    release (cuSOLVER links against that cuBLAS)."""
    folder = next((os.path.dirname(p) for p in cublas if os.sep in p), None)
    if folder is None:
        return cusolver
    env = os.environ.get(ENV["cusolver"])
    head = [p for p in cusolver if p == env]
    near = [p for p in cusolver if os.path.dirname(p) == folder and p not in head]
    return head + near + [p for p in cusolver if p not in head and p not in near]


def load_libraries() -> tuple[str, str]:
    """Open cuBLAS and cuSOLVER (once) and return the paths opened. RuntimeError listing everything tried
    and the environment variables that choose them when none loads."""
    require_cuda_build()
    with _lock:
        if _C.cuda_libs_loaded():
            return tuple(_C.cuda_libs_paths())
        cublas = library_candidates("cublas")
        cusolver = _same_folder_first(library_candidates("cusolver"), cublas)
        try:
            _C.cuda_load_libs(cublas, cusolver)
        except RuntimeError as exc:
            raise RuntimeError(
                "npuq's GPU truncated SVD needs cuBLAS and cuSOLVER, opened at run time, and could not load them "
                f"({exc}). Set {ENV['cublas']} and {ENV['cusolver']} to the paths of libcublas.so.* and "
                "libcusolver.so.*, or install the libraries (pip install nvidia-cublas nvidia-cusolver, or the "
                "CUDA toolkit under $CUDA_HOME)"
            ) from None
        return tuple(_C.cuda_libs_paths())


def _dtype_of(a) -> np.dtype:
    """The input's dtype as numpy's; TypeError for anything but float32 / float64."""
    from npuq import _cuda

    if _cuda.is_torch_cuda(a):
        name = str(a.dtype).replace("torch.", "")
        if name not in ("float32", "float64"):
            raise TypeError(f"truncated_svd: unsupported dtype {a.dtype}; supported: torch.float32, torch.float64")
        return np.dtype(name)
    cai = a.__cuda_array_interface__
    try:
        dt = np.dtype(cai["typestr"])
    except (TypeError, KeyError) as exc:
        raise TypeError(f"truncated_svd: unreadable __cuda_array_interface__ typestr: {exc}") from None
    if dt.kind != "f" or dt.itemsize not in (4, 8) or dt.byteorder not in ("=", "|", "<"):
        raise TypeError(f"truncated_svd: unsupported dtype {dt}; supported: float32, float64")
    return np.dtype(np.float32 if dt.itemsize == 4 else np.float64)


def describe(a):
    """(view, dtype) of a device matrix after the checks that need no GPU: dtype (TypeError), 2-D,
    non-empty and C-contiguous (ValueError)."""
    from npuq import _cuda

    dtype = _dtype_of(a)
    view = _cuda.view(a, "a", dtype, ndim=2)
    return view, dtype


def truncated_svd_gpu(
    a, rank: int, *, method: str, oversampling: int, power_iterations: int, seed: int, view=None, dtype=None
):
    """(u, s, vt, error) of the device matrix ``a``; options already checked by ``truncated_svd``.
    Outputs: torch CUDA tensors on ``a``'s device for torch input, ``npuq.CudaArray`` otherwise."""
    from npuq import _cuda

    if view is None:
        view, dtype = describe(a)
    require_cuda_build()
    if method not in GPU_METHODS:
        raise ValueError(
            f"method {method!r} is not available on the GPU; use one of {', '.join(map(repr, GPU_METHODS))}"
        )
    load_libraries()
    m, n = view.shape
    u, u_ptr = _cuda.empty((m, rank), dtype, view)
    s, s_ptr = _cuda.empty((rank,), dtype, view)
    vt, vt_ptr = _cuda.empty((rank, n), dtype, view)
    error = _C.cuda_truncated_svd(
        view.ptr,
        m,
        n,
        dtype.name,
        rank,
        oversampling,
        power_iterations,
        seed,
        "randomized" if method == "auto" else method,
        view.device,
        view.stream,
        u_ptr,
        s_ptr,
        vt_ptr,
    )
    return u, s, vt, float(error)
