"""npuq.lrf.svd.truncated_svd on device matrices (npuq.lrf.svd_cuda): the checks that need no GPU (argument
validation before any CUDA call, the library search and its error messages, the build without CUDA
kernels, importing without OpenBLAS) run everywhere; the rest runs on a GPU against torch.linalg."""

import os
import subprocess
import sys

import numpy as np
import pytest

import npuq
from npuq import _C
from npuq.lrf import svd_cuda
from npuq.lrf.svd import truncated_svd

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the test extra
    torch = None

BUILT = bool(getattr(_C, "BUILT_WITH_CUDA", False))
HAS_GPU_SVD = BUILT and hasattr(_C, "cuda_truncated_svd")
GPU_READY = HAS_GPU_SVD and torch is not None and torch.cuda.is_available()
if not BUILT:
    GPU_REASON = "npuq was built without CUDA kernels (npuq._C.BUILT_WITH_CUDA is False)"
elif not HAS_GPU_SVD:
    GPU_REASON = "this CUDA build of npuq has no cuda_truncated_svd"
elif torch is None:
    GPU_REASON = "torch is not installed"
else:
    GPU_REASON = "no CUDA GPU is available to torch"


class FakeDeviceMatrix:
    """An object with __cuda_array_interface__ and no memory behind it: for the checks made before any
    CUDA call."""

    def __init__(self, shape, typestr="<f4", strides=None, ptr=0x7F0000000000):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "strides": strides,
            "version": 3,
        }


# ------------------------------------------------------------------------------- no GPU needed


@pytest.mark.parametrize("typestr", ["<i4", "<f2", "|i1", "<c8", "|b1"])
def test_device_input_bad_dtype(typestr):
    with pytest.raises(TypeError, match="unsupported dtype"):
        truncated_svd(FakeDeviceMatrix((8, 6), typestr), 2)


def test_device_input_not_contiguous():
    with pytest.raises(ValueError, match="contiguous"):
        truncated_svd(FakeDeviceMatrix((8, 6), "<f4", strides=(4, 32)), 2)  # a transposed view


def test_device_input_shapes_and_options():
    with pytest.raises(ValueError, match="2 dimensions"):
        truncated_svd(FakeDeviceMatrix((8, 6, 2)), 2)
    with pytest.raises(ValueError, match="empty"):
        truncated_svd(FakeDeviceMatrix((0, 6)), 1)
    for rank in (0, 7, -1):
        with pytest.raises(ValueError, match="rank"):
            truncated_svd(FakeDeviceMatrix((8, 6)), rank)
    with pytest.raises(TypeError, match="rank"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2.0)
    with pytest.raises(ValueError, match="not available on the GPU"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2, method="krylov")
    with pytest.raises(ValueError, match="method must be one of"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2, method="qr")
    with pytest.raises(ValueError, match="block_size"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2, block_size=4)
    with pytest.raises(ValueError, match="oversampling"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2, oversampling=-1)
    with pytest.raises(ValueError, match="power_iterations"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2, power_iterations=-1)
    with pytest.raises(ValueError, match="seed"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2, seed=-1)


@pytest.mark.skipif(BUILT, reason="this build has CUDA kernels")
def test_device_input_without_cuda_build():
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2)
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        svd_cuda.load_libraries()


def test_library_candidates_order(tmp_path, monkeypatch):
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    for name in ("libcublas.so.13", "libcublasLt.so.13", "libcusolver.so.12", "libcusolverMg.so.12"):
        (lib / name).write_bytes(b"")
    old = tmp_path / "nvidia" / "cublas" / "lib"
    old.mkdir(parents=True)
    (old / "libcublas.so.12").write_bytes(b"")
    monkeypatch.setenv("NPUQ_CUBLAS", "/opt/mine/libcublas.so.13")
    monkeypatch.delenv("NPUQ_CUSOLVER", raising=False)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    cublas = svd_cuda.library_candidates("cublas", site_dirs=[str(tmp_path)], include_loaded=False)
    assert cublas[0] == "/opt/mine/libcublas.so.13"
    assert cublas[1:3] == ["libcublas.so.13", "libcublas.so.12"]
    assert str(lib / "libcublas.so.13") in cublas and str(old / "libcublas.so.12") in cublas
    assert not any("libcublasLt" in c for c in cublas)
    cusolver = svd_cuda.library_candidates("cusolver", site_dirs=[str(tmp_path)], include_loaded=False)
    assert cusolver[:3] == ["libcusolver.so.12", "libcusolver.so.11", "libcusolver.so.13"]
    assert str(lib / "libcusolver.so.12") in cusolver
    assert not any("libcusolverMg" in c for c in cusolver)
    # cuSOLVER next to the chosen cuBLAS is tried first
    ordered = svd_cuda._same_folder_first(cusolver, [str(lib / "libcublas.so.13")])
    assert ordered[0] == str(lib / "libcusolver.so.12")
    with pytest.raises(ValueError):
        svd_cuda.library_candidates("cufft")


def test_library_load_failure_lists_everything(monkeypatch):
    calls = []

    def fail(cublas, cusolver):
        calls.append((list(cublas), list(cusolver)))
        raise RuntimeError("cannot load cuBLAS; tried:\n  cuBLAS /nowhere/libcublas.so.13: No such file")

    monkeypatch.setattr(_C, "BUILT_WITH_CUDA", True, raising=False)
    monkeypatch.setattr(_C, "cuda_truncated_svd", lambda *a, **k: 0.0, raising=False)
    monkeypatch.setattr(_C, "cuda_libs_loaded", lambda: False, raising=False)
    monkeypatch.setattr(_C, "cuda_load_libs", fail, raising=False)
    monkeypatch.setenv("NPUQ_CUBLAS", "/nowhere/libcublas.so.13")
    monkeypatch.setenv("NPUQ_CUSOLVER", "/nowhere/libcusolver.so.12")
    with pytest.raises(RuntimeError) as info:
        svd_cuda.load_libraries()
    text = str(info.value)
    for part in ("NPUQ_CUBLAS", "NPUQ_CUSOLVER", "/nowhere/libcublas.so.13", "pip install"):
        assert part in text
    assert calls and calls[0][0][0] == "/nowhere/libcublas.so.13" and calls[0][1][0] == "/nowhere/libcusolver.so.12"


def test_cuda_build_without_gpu_svd(monkeypatch):
    monkeypatch.setattr(_C, "BUILT_WITH_CUDA", True, raising=False)
    if hasattr(_C, "cuda_truncated_svd"):
        monkeypatch.delattr(_C, "cuda_truncated_svd")
    with pytest.raises(RuntimeError, match="no GPU truncated SVD"):
        truncated_svd(FakeDeviceMatrix((8, 6)), 2)


def test_import_without_openblas():
    """Without scipy-openblas32 the module still imports (the GPU path needs no OpenBLAS); CPU calls then
    raise ImportError naming the package."""
    code = (
        "import importlib.util as u\n"
        "orig = u.find_spec\n"
        "u.find_spec = lambda name, *a, **k: None if name == 'scipy_openblas32' else orig(name, *a, **k)\n"
        "import numpy as np\n"
        "import npuq.lrf.svd as svd\n"
        "assert not svd.cpu_available()\n"
        "try:\n"
        "    svd.truncated_svd(np.eye(4), 1)\n"
        "except ImportError as e:\n"
        "    assert 'scipy-openblas32' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
        "print('ok')\n"
    )
    # the npuq this test process imported (an installed one, or the source tree with its built _C)
    where = os.path.dirname(os.path.dirname(os.path.abspath(npuq.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([where, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# ------------------------------------------------------------------------------------- on a GPU

EPS = {"float32": 1.1920929e-07, "float64": 2.220446049250313e-16}


def decaying(m, n, dtype, alpha=1.0, noise=1e-3, device="cuda", seed=0):
    """A (dtype, on device) = U diag(i^-alpha) V^T + noise, and its exact singular values (float64)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    sigma = torch.arange(1, k + 1, dtype=torch.float64) ** -alpha
    a = (u * sigma) @ v.T + noise * torch.randn(m, n, generator=g, dtype=torch.float64) / max(m, n) ** 0.5
    a = a.to(getattr(torch, dtype)).to(device)
    exact = torch.linalg.svdvals(a.double())
    return a.contiguous(), exact


def frob_error(a, res):
    u, s, vt = (x.double() for x in (res.u, res.s, res.vt))
    return float(torch.linalg.norm(a.double() - (u * s) @ vt))


def check_orthonormal(res, dtype):
    r = res.s.shape[0]
    m, n = res.u.shape[0], res.vt.shape[1]
    tol = 100 * EPS[dtype] * max(m, n) ** 0.5
    eye = torch.eye(r, dtype=torch.float64, device=res.u.device)
    assert float((res.u.double().T @ res.u.double() - eye).abs().max()) < tol
    assert float((res.vt.double() @ res.vt.double().T - eye).abs().max()) < tol


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason=GPU_REASON)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (512, 512), (1000, 64), (64, 1000)])
@pytest.mark.parametrize("method", ["randomized", "exact"])
def test_gpu_against_torch(dtype, shape, method):
    m, n = shape
    a, exact = decaying(m, n, dtype)
    for r in (1, 10, 32):
        res = truncated_svd(a, r, method=method, power_iterations=4)
        assert res.u.shape == (m, r) and res.s.shape == (r,) and res.vt.shape == (r, n)
        for x in (res.u, res.s, res.vt):
            assert x.device == a.device and x.dtype == a.dtype and x.is_contiguous()
        check_orthonormal(res, dtype)
        s = res.s.double()
        assert bool((s[:-1] >= s[1:]).all()), s
        if method == "exact":
            tol = 50 * EPS[dtype] * max(m, n) ** 0.5 * float(exact[0])
        else:
            tol = 1e-2 * exact[:r] + 100 * EPS[dtype] * float(exact[0])
        assert bool(((s - exact[:r]).abs() <= tol).all()), (s - exact[:r]).abs().max()
        opt = float(torch.sqrt((exact[r:] ** 2).sum()))
        direct = frob_error(a, res)
        assert direct <= 1.01 * opt + 10 * EPS[dtype] * float(exact[0]), (direct, opt)
        assert abs(res.error - direct) <= 1e-3 * direct + 100 * EPS[dtype] * float(torch.linalg.norm(a.double()))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason=GPU_REASON)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(2048, 1024), (1024, 2048)])
def test_gpu_error_within_one_percent(dtype, shape):
    m, n = shape
    a, exact = decaying(m, n, dtype, alpha=0.75, noise=0.1)
    for r in (32, 128):
        opt = float(torch.sqrt((exact[r:] ** 2).sum()))
        res = truncated_svd(a, r, oversampling=10, power_iterations=4)
        direct = frob_error(a, res)
        assert direct <= 1.01 * opt, (r, direct / opt)
        assert abs(res.error - direct) <= 1e-3 * direct


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason=GPU_REASON)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_deterministic(dtype):
    a, _ = decaying(700, 500, dtype)
    r1 = truncated_svd(a, 20, seed=7)
    r2 = truncated_svd(a, 20, seed=7)
    assert torch.equal(r1.u, r2.u) and torch.equal(r1.s, r2.s) and torch.equal(r1.vt, r2.vt)
    assert r1.error == r2.error
    r3 = truncated_svd(a, 20, seed=8)
    assert not torch.equal(r1.u, r3.u)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason=GPU_REASON)
def test_gpu_special_matrices():
    z = torch.zeros(50, 40, device="cuda")
    res = truncated_svd(z, 5)
    assert res.error == 0 and float(res.s.abs().max()) == 0
    check_orthonormal(res, "float32")
    # exactly rank 3 with a sketch of 13 columns: the Householder fallback keeps the basis orthonormal
    g = torch.Generator(device="cpu").manual_seed(1)
    low = (torch.randn(200, 3, generator=g) @ torch.randn(3, 150, generator=g)).cuda()
    res = truncated_svd(low, 5)
    check_orthonormal(res, "float32")
    assert res.error <= 1e-4 * float(torch.linalg.norm(low))
    # extreme magnitudes are scaled exactly
    for scale in (2.0**100, 2.0**-100):
        a, exact = decaying(120, 80, "float32", noise=0)
        res = truncated_svd(a * scale, 4, power_iterations=4)
        assert torch.isfinite(res.s).all()
        assert float((res.s.double() / scale - exact[:4]).abs().max()) <= 1e-4
    # rank = min(m, n): the whole matrix
    a, exact = decaying(60, 40, "float64")
    res = truncated_svd(a, 40)
    assert res.error <= 1e-10
    assert float((res.s - exact).abs().max()) <= 1e-12


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason=GPU_REASON)
def test_gpu_bad_input():
    a, _ = decaying(64, 48, "float32")
    with pytest.raises(ValueError, match=r"\.contiguous\(\)"):
        truncated_svd(a.t(), 4)
    with pytest.raises(ValueError, match=r"\.contiguous\(\)"):
        truncated_svd(a[:, ::2], 4)
    for dt in (torch.int32, torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match="unsupported dtype"):
            truncated_svd(a.to(dt), 4)
    for r in (0, 49):
        with pytest.raises(ValueError, match="rank"):
            truncated_svd(a, r)
    bad = a.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) at row 3, column 5"):
        truncated_svd(bad, 4)
    svd_cuda.load_libraries()
    # host memory where device memory is expected: refused, no crash
    dev = a.device.index or 0
    stream = torch.cuda.current_stream(dev).cuda_stream
    u = torch.empty(64, 4, device="cuda")
    s_host = torch.empty(4)
    vt = torch.empty(4, 48, device="cuda")
    with pytest.raises(ValueError, match="host memory"):
        _C.cuda_truncated_svd(
            a.data_ptr(),
            64,
            48,
            "float32",
            4,
            10,
            2,
            0,
            "randomized",
            dev,
            stream,
            u.data_ptr(),
            s_host.data_ptr(),
            vt.data_ptr(),
        )
    with pytest.raises(ValueError, match="host memory"):
        _C.cuda_truncated_svd(
            a.cpu().data_ptr(),
            64,
            48,
            "float32",
            4,
            10,
            2,
            0,
            "randomized",
            dev,
            stream,
            u.data_ptr(),
            u.data_ptr(),
            vt.data_ptr(),
        )
    with pytest.raises(ValueError, match="null pointer"):
        _C.cuda_truncated_svd(
            a.data_ptr(), 64, 48, "float32", 4, 10, 2, 0, "randomized", dev, stream, 0, u.data_ptr(), vt.data_ptr()
        )
    with pytest.raises(TypeError, match="dtype"):
        _C.cuda_truncated_svd(
            a.data_ptr(),
            64,
            48,
            "int8",
            4,
            10,
            2,
            0,
            "randomized",
            dev,
            stream,
            u.data_ptr(),
            u.data_ptr(),
            vt.data_ptr(),
        )
    with pytest.raises(ValueError, match="rank"):
        _C.cuda_truncated_svd(
            a.data_ptr(),
            64,
            48,
            "float32",
            49,
            10,
            2,
            0,
            "randomized",
            dev,
            stream,
            u.data_ptr(),
            u.data_ptr(),
            vt.data_ptr(),
        )


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason=GPU_REASON)
def test_gpu_stream_and_other_device():
    a, exact = decaying(256, 128, "float64")
    here = truncated_svd(a, 8)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        res = truncated_svd(a, 8)
    side.synchronize()
    assert torch.equal(res.u, here.u) and torch.equal(res.s, here.s) and torch.equal(res.vt, here.vt)
    assert float((res.s - exact[:8]).abs().max()) <= 1e-3 * float(exact[0])
    if torch.cuda.device_count() > 1:
        b = a.to("cuda:1")
        res = truncated_svd(b, 8)
        assert res.u.device == b.device and res.s.device == b.device


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason=GPU_REASON)
def test_gpu_cuda_array_interface_input():
    from npuq import _cuda

    if not hasattr(_C, "CudaArray"):
        pytest.skip("this build has no npuq.CudaArray")
    a, exact = decaying(128, 96, "float32")
    arr = _cuda.to_device(a.cpu().numpy(), 0)
    res = truncated_svd(arr, 6)
    assert isinstance(res.u, _C.CudaArray) and tuple(res.u.shape) == (128, 6)
    s = _cuda.to_host(res.s)
    assert np.abs(s - exact[:6].cpu().numpy()).max() <= 1e-3 * float(exact[0])
