#!/usr/bin/env python3
"""Speed of npuq's GPU truncated SVD against torch.svd_lowrank on the same GPU, at equal accuracy.

For every matrix shape and rank, in one process, float32 by default:

1. builds on the GPU a matrix with a trained-weight-like spectrum (as benchmarks/bench_svd.py does on the
   CPU): A = U diag(sigma) V^T + noise, U and V random orthonormal, sigma_i = i^-alpha (--alpha, default
   0.75), plus i.i.d. Gaussian noise of standard deviation --noise * sigma_1 / sqrt(max(m, n)); the exact
   singular values come from torch.linalg.svdvals of the matrix in float64;
2. the accuracy target of a rank-r result: ||A - U S Vt||_F <= (1 + --tol) * opt, opt the optimal
   (Eckart-Young) truncation error sqrt(sum_{i>r} sigma_i^2) (--tol 0.01: within 1%);
3. calibrates each method: the cheapest (oversampling p, power iterations q) of a small grid, in order of
   (2q + 2)(r + p) matrix-vector products, that reaches the target with a fixed seed:
   * ``npuq``     npuq.lrf.svd.truncated_svd(A, r, oversampling=p, power_iterations=q) (method "randomized");
   * ``lowrank``  torch.svd_lowrank(A, q=r+p, niter=q), then the leading r triplets;
4. times each calibrated call: one warm-up, then the median (and best) of --repeats samples, each
   torch.cuda.synchronize() + time.perf_counter() around one call;
5. prints a table (times in ms, ratio = lowrank time / npuq time: > 1 means npuq is faster) and writes
   JSON to --out.

The whole run is bounded (--budget seconds, default 80): cases that would start after it are recorded
as skipped; a case that fails is recorded with its error and the script goes on.

Examples:
    python3 benchmarks/gpu_svd.py --quick --out results/gpu_svd_quick.json
    python3 benchmarks/gpu_svd.py --out results/gpu_svd.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback

SHAPES = [(4096, 4096), (8192, 2048), (2048, 2048), (4096, 1024)]
RANKS = [32, 128, 512]
QUICK_SHAPES = [(2048, 2048), (4096, 1024)]
QUICK_RANKS = [32, 128]
GRID = [(p, q) for p in (5, 10, 20) for q in (0, 1, 2, 3, 4, 6)]


def make_matrix(torch, m, n, alpha, noise, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, device="cuda", dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, device="cuda", dtype=torch.float64))
    sigma = torch.arange(1, k + 1, device="cuda", dtype=torch.float64) ** -alpha
    a = (u * sigma) @ v.T
    floor = noise * float(sigma[0]) / max(m, n) ** 0.5
    a += torch.randn(m, n, generator=g, device="cuda", dtype=torch.float64) * floor
    a = a.to(dtype).contiguous()
    exact = torch.linalg.svdvals(a.double())
    del u, v
    return a, exact


def frob_error(torch, a, u, s, vt) -> float:
    return float(torch.linalg.norm(a.double() - (u.double() * s.double()) @ vt.double()))


def methods(torch):
    from npuq.lrf.svd import truncated_svd

    def npuq_run(a, r, p, q):
        res = truncated_svd(a, r, method="randomized", oversampling=p, power_iterations=q, seed=0)
        return res.u, res.s, res.vt

    def lowrank(a, r, p, q):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(a, q=min(r + p, min(a.shape)), niter=q)
        return u[:, :r], s[:r], v[:, :r].T

    return {"npuq": npuq_run, "lowrank": lowrank}


def calibrate(torch, fn, a, r, opt, tol, k):
    """(p, q, error) of the cheapest grid settings reaching the target, or None."""
    cands = sorted({(min(p, k - r), q) for p, q in GRID}, key=lambda pq: ((2 * pq[1] + 2) * (r + pq[0]), pq[1]))
    for p, q in cands:
        err = frob_error(torch, a, *fn(a, r, p, q))
        if err <= (1 + tol) * opt:
            return p, q, err
    return None


def time_call(torch, call, repeats):
    call()  # warm-up
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=None, help="MxN, e.g. 4096x4096 8192x2048")
    ap.add_argument("--ranks", nargs="*", type=int, default=None)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--budget", type=float, default=80.0, help="seconds; later cases are skipped")
    ap.add_argument("--quick", action="store_true", help="two shapes, two ranks, 5 repeats")
    ap.add_argument("--out", default=os.path.join("results", "gpu_svd.json"), help="JSON file to write")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU is available to torch", file=sys.stderr)
        return 2
    shapes = (
        [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes]
        if args.shapes
        else (QUICK_SHAPES if args.quick else SHAPES)
    )
    ranks = args.ranks or (QUICK_RANKS if args.quick else RANKS)
    repeats = max(5, min(args.repeats, 50))
    dtype = getattr(torch, args.dtype)
    fns = methods(torch)
    device_name = torch.cuda.get_device_name(0)

    rows = []
    print(
        f"# truncated SVD on {device_name}, {args.dtype}, sigma_i = i^-{args.alpha} + noise {args.noise}, "
        f"target error <= (1 + {args.tol}) * optimal, median of {repeats}\n",
        flush=True,
    )
    print("| shape | rank | npuq ms | lowrank ms | lowrank / npuq | npuq p,q | lowrank p,q | err % npuq / lowrank |")
    print("| --- " * 8 + "|", flush=True)
    for m, n in shapes:
        k = min(m, n)
        a = exact = None
        for r in ranks:
            row = {"shape": [m, n], "rank": r, "dtype": args.dtype}
            rows.append(row)
            if r >= k:
                row["skipped"] = "rank >= min(m, n)"
                continue
            if time.perf_counter() - start > args.budget:
                row["skipped"] = f"time budget of {args.budget} s spent"
                print(f"| {m}x{n} | {r} | skipped (time budget) |", flush=True)
                continue
            try:
                if a is None:
                    a, exact = make_matrix(torch, m, n, args.alpha, args.noise, dtype, seed=m * 7 + n)
                opt = float(torch.sqrt((exact[r:] ** 2).sum()))
                row["optimal_error"] = opt
                settings, med, best = {}, {}, {}
                for name, fn in fns.items():
                    c = calibrate(torch, fn, a, r, opt, args.tol, k)
                    settings[name] = (
                        None
                        if c is None
                        else {
                            "oversampling": c[0],
                            "power_iterations": c[1],
                            "error": c[2],
                            "error_vs_opt": c[2] / opt - 1,
                        }
                    )
                    if c is None:
                        continue
                    samples = time_call(torch, lambda fn=fn, c=c, a=a, r=r: fn(a, r, c[0], c[1]), repeats)
                    med[name], best[name] = statistics.median(samples), min(samples)
                    row.setdefault("samples_s", {})[name] = samples
                row.update(settings=settings, median_s=med, best_s=best)
                ratio = med["lowrank"] / med["npuq"] if "lowrank" in med and "npuq" in med else None
                row["ratio_lowrank_over_npuq"] = ratio

                def ms(name):
                    return "n/a" if name not in med else f"{med[name] * 1e3:.2f}"

                def pq(name):
                    st = settings.get(name)
                    return "none" if st is None else f"{st['oversampling']},{st['power_iterations']}"

                def pct(name):
                    st = settings.get(name)
                    return "-" if st is None else f"{st['error_vs_opt'] * 100:.2f}"

                print(
                    f"| {m}x{n} | {r} | {ms('npuq')} | {ms('lowrank')} | "
                    f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {pq('npuq')} | {pq('lowrank')} | "
                    f"{pct('npuq')} / {pct('lowrank')} |",
                    flush=True,
                )
            except Exception as exc:  # noqa: BLE001 - one failing case must not end the run
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc()
                print(f"| {m}x{n} | {r} | failed: {type(exc).__name__}: {exc} |", flush=True)
        del a, exact
        torch.cuda.empty_cache()

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name,
        "dtype": args.dtype,
        "alpha": args.alpha,
        "noise": args.noise,
        "tol": args.tol,
        "repeats": repeats,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "argv": sys.argv[1:],
        "seconds": time.perf_counter() - start,
    }
    try:
        from npuq import _C

        if getattr(_C, "cuda_libs_loaded", lambda: False)():
            meta["cublas"], meta["cusolver"] = _C.cuda_libs_paths()
    except Exception:  # noqa: BLE001 - metadata only
        pass
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"\nwrote {args.out} ({meta['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
