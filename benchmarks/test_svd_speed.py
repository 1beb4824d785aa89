"""Speed of the truncated SVD: npuq.lrf.svd.truncated_svd (method auto, and method "krylov") vs
torch.svd_lowrank vs scikit-learn's randomized_svd, all with the same settings (oversampling 10, two
power iterations; for "krylov" blocks of rank + 10 columns, depth 2: the same products over A, a
three times wider and more accurate basis), and the exact torch.linalg.svd + slicing, on float32
matrices with a decaying spectrum (sigma_i = i^-0.75 plus noise).

    python3 -m pytest benchmarks/test_svd_speed.py --benchmark-only --benchmark-group-by=group

Each (shape, rank) is a benchmark group. ``extra_info["error_vs_optimal"]`` is the method's Frobenius
error over the optimal truncation error, minus 1. benchmarks/bench_svd.py compares at equal accuracy (each
method's settings calibrated to within 1% of the optimum) and prints one table.
"""

import numpy as np
import pytest

CASES = [((1024, 1024), 64), ((2048, 512), 128)]
IMPLS = ("npuq", "npuq_krylov", "torch_svd", "lowrank", "sklearn")


def _matrix(m, n, seed=0):
    rng = np.random.default_rng(seed)
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    sigma = np.arange(1, k + 1, dtype=np.float64) ** -0.75
    a = (u * sigma) @ v.T + rng.standard_normal((m, n)) * (0.1 / np.sqrt(max(m, n)))
    return np.ascontiguousarray(a.astype(np.float32)), np.linalg.svd(
        a.astype(np.float32).astype(np.float64), compute_uv=False
    )


def _build(impl, a, rank, threads):
    import torch

    t = torch.from_numpy(a)
    if impl == "npuq":
        svd_mod = pytest.importorskip("npuq.lrf.svd")
        return lambda: svd_mod.truncated_svd(a, rank, threads=threads)[:3]
    if impl == "npuq_krylov":
        svd_mod = pytest.importorskip("npuq.lrf.svd")
        return lambda: svd_mod.truncated_svd(a, rank, method="krylov", threads=threads)[:3]
    if impl == "torch_svd":

        def full():
            u, s, vt = torch.linalg.svd(t, full_matrices=False)
            return u[:, :rank], s[:rank], vt[:rank]

        return full
    if impl == "lowrank":

        def lowrank():
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(t, q=rank + 10, niter=2)
            return u[:, :rank], s[:rank], v[:, :rank].T

        return lowrank
    extmath = pytest.importorskip("sklearn.utils.extmath")
    return lambda: extmath.randomized_svd(a, rank, n_oversamples=10, n_iter=2, random_state=0)


@pytest.mark.benchmark(warmup=True, warmup_iterations=1)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape, rank", CASES, ids=[f"{m}x{n}-r{r}" for (m, n), r in CASES])
def test_svd_speed(benchmark, shape, rank, impl, bench_threads):
    a, sigma = _matrix(*shape)
    fn = _build(impl, a, rank, bench_threads)
    u, s, vt = (np.asarray(x, dtype=np.float64) for x in fn())
    err = float(np.linalg.norm(a.astype(np.float64) - (u * s) @ vt))
    benchmark.group = f"svd {shape[0]}x{shape[1]} r{rank}"
    benchmark.extra_info["error_vs_optimal"] = err / float(np.sqrt(np.sum(sigma[rank:] ** 2))) - 1
    benchmark.extra_info["threads"] = bench_threads
    benchmark.pedantic(fn, rounds=5, iterations=1)
