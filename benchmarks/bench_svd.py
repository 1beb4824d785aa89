#!/usr/bin/env python3
"""Speed of npuq's truncated SVD against torch and scikit-learn at equal accuracy.

For every matrix shape and rank this script, in one process and with the same thread count for all:

1. builds a float matrix with a trained-weight-like spectrum: A = U diag(sigma) V^T + noise, U and V
   random orthonormal, sigma_i = i^-alpha (alpha = --alpha, default 0.75), plus i.i.d. Gaussian noise of
   standard deviation --noise * sigma_1 / sqrt(max(m, n)) (a flat noise floor, like the tail of a
   trained layer's spectrum); the exact singular values of A come from a float64 LAPACK SVD;
2. the accuracy target of a rank-r approximation A_r: ||A - A_r||_F <= (1 + --tol) * opt, where
   opt = sqrt(sum_{i>r} sigma_i^2) is the optimal (Eckart-Young) truncation error (--tol 0.01: 1%);
3. calibrates each randomized method: the cheapest settings (oversampling p, power iterations q, in
   order of (2q + 2)(r + p), the number of matrix-vector products) that reach the target with a fixed
   seed; a method that reaches it with none of them is reported as such and not timed;
4. times, interleaved (each round takes one sample of every method, in rotating order), the best and
   median of --repeats samples, with the garbage collector off:
   * ``npuq``     npuq.lrf.svd.truncated_svd, the faster of its two calibrated algorithms (the table
                  says which): method "auto" (the exact path when the sketch would be >= 2/3 of
                  min(m, n), otherwise randomized with the calibrated p, q), and method "krylov" with
                  the calibrated block size b and depth q: for each b in {r/4, r/2, r, r + 5} the smallest
                  q reaching the target, then the fastest of those (timed, best of 3);
   * ``torch_svd`` torch.linalg.svd(full_matrices=False) then slicing (rank-independent: timed once per
                  matrix and reused for every rank);
   * ``lowrank``  torch.svd_lowrank(A, q=r+p, niter=q);
   * ``sklearn``  sklearn.utils.extmath.randomized_svd(A, r, n_oversamples=p, n_iter=q), its default
                  power-iteration normalizer (none for q <= 2, LU above).
5. prints a markdown table (times in ms, each method's error / opt - 1 in %, the ratio of the fastest
   baseline's time to npuq's: > 1 means npuq is faster) and writes JSON and a plot to --out.

Examples:
    python3 benchmarks/bench_svd.py --quick
    nice -n 10 python3 benchmarks/bench_svd.py --threads 1 --out results/bench_svd
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from machine import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = [(512, 512), (1024, 1024), (2048, 2048), (4096, 4096), (8192, 512), (4096, 1024)]
RANKS = [16, 64, 128, 256, 512]
QUICK_SHAPES = [(512, 512), (1024, 1024), (2048, 512)]
QUICK_RANKS = [16, 128]
BASELINES = ("torch_svd", "lowrank", "sklearn")
# candidate (oversampling, power iterations), tried in order of cost (2q + 2)(r + p)
GRID = [(p, q) for p in (5, 10, 20, 40) for q in (0, 1, 2, 3, 4, 6, 8)]


def make_matrix(m: int, n: int, alpha: float, noise: float, dtype, seed: int):
    """A (dtype) and its exact singular values (float64, from LAPACK on the float64 matrix rounded to dtype)."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    sigma = np.arange(1, k + 1, dtype=np.float64) ** -alpha
    a = (u * sigma) @ v.T
    a += rng.standard_normal((m, n)) * (noise * sigma[0] / np.sqrt(max(m, n)))
    a = np.ascontiguousarray(a.astype(dtype))
    exact = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    return a, exact


def frob_error(a64: np.ndarray, u, s, vt) -> float:
    u, s, vt = (np.asarray(x, dtype=np.float64) for x in (u, s, vt))
    return float(np.linalg.norm(a64 - (u * s) @ vt))


def methods(threads: int):
    from sklearn.utils.extmath import randomized_svd

    from npuq.lrf.svd import truncated_svd

    def npuq_run(a, t, r, p, q):
        res = truncated_svd(a, r, oversampling=p, power_iterations=q, seed=0, threads=threads)
        return res.u, res.s, res.vt

    def npuq_krylov(a, t, r, b, q):
        res = truncated_svd(a, r, method="krylov", block_size=b, power_iterations=q, seed=0, threads=threads)
        return res.u, res.s, res.vt

    def lowrank(a, t, r, p, q):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(t, q=min(r + p, min(t.shape)), niter=q)
        return u[:, :r], s[:r], v[:, :r].T

    def sklearn(a, t, r, p, q):
        u, s, vt = randomized_svd(a, r, n_oversamples=p, n_iter=q, random_state=0)
        return u, s, vt

    def torch_svd(a, t, r, p, q):
        u, s, vt = torch.linalg.svd(t, full_matrices=False)
        return u[:, :r], s[:r], vt[:r]

    return {
        "npuq": npuq_run,
        "npuq_krylov": npuq_krylov,
        "torch_svd": torch_svd,
        "lowrank": lowrank,
        "sklearn": sklearn,
    }


def calibrate_krylov(fn, a, t, a64, r, opt, tol, k, max_depth=10):
    """(b, q, error) of npuq's block Krylov method: for each block size b the smallest depth q reaching
    the target (basis b (q + 1) between r + 5 and min(m, n) columns), then the fastest of those (CPU time,
    best of 3), or None."""
    reached = []
    for b in sorted({max(4, r // 4), max(4, r // 2), r, r + 5}):
        for q in range(0, max_depth + 1):
            if b * (q + 1) < min(k, r + 5):
                continue
            if b * (q + 1) > k:
                break
            err = frob_error(a64, *fn(a, t, r, b, q))
            if err <= (1 + tol) * opt:
                reached.append((b, q, err))
                break
    best = None
    for b, q, err in reached:
        samples = []
        for _ in range(3):
            t0 = time.process_time()
            fn(a, t, r, b, q)
            samples.append(time.process_time() - t0)
        if best is None or min(samples) < best[0]:
            best = (min(samples), (b, q, err))
    return None if best is None else best[1]


def calibrate(name, fn, a, t, a64, r, opt, tol, k):
    """(p, q, error) of the cheapest grid settings reaching the target, or None. For torch_svd also the
    time of that call."""
    if name == "torch_svd":
        t0 = time.perf_counter()
        out = fn(a, t, r, 0, 0)
        return (0, 0, frob_error(a64, *out), time.perf_counter() - t0)
    cands = sorted({(min(p, k - r), q) for p, q in GRID}, key=lambda pq: ((2 * pq[1] + 2) * (r + pq[0]), pq[1]))
    if name == "npuq":
        from npuq.lrf.svd import auto_method

        cands = [pq for pq in cands if auto_method(*a.shape, r, pq[0], pq[1]) == "randomized"] or [(10, 2)]
    for p, q in cands:
        err = frob_error(a64, *fn(a, t, r, p, q))
        if err <= (1 + tol) * opt:
            return (p, q, err)
    return None


def time_interleaved(calls: dict, repeats: int, min_time: float):
    samples = {k: [] for k in calls}
    names = list(calls)
    gc.disable()
    try:
        for rnd in range(repeats):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for k in order:
                t0 = time.perf_counter()
                calls[k]()
                samples[k].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=None, help="MxN, e.g. 1024x1024 8192x512")
    ap.add_argument("--ranks", nargs="*", type=int, default=None)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--quick", action="store_true", help="three small shapes, two ranks, 3 repeats")
    ap.add_argument("--out", default=os.path.join(REPO, "results", "bench_svd"))
    args = ap.parse_args(argv)

    shapes = (
        [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes]
        if args.shapes
        else (QUICK_SHAPES if args.quick else SHAPES)
    )
    ranks = args.ranks or (QUICK_RANKS if args.quick else RANKS)
    repeats = 3 if args.quick else args.repeats
    dtype = np.dtype(args.dtype)
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=args.threads)  # numpy / scipy BLAS of scikit-learn
    except ImportError:  # pragma: no cover
        limiter = None
    fns = methods(args.threads)

    rows = []
    print(
        f"# truncated SVD, {args.dtype}, {args.threads} threads, {cpu_model()}, "
        f"sigma_i = i^-{args.alpha} + noise {args.noise}, target error <= (1 + {args.tol}) * optimal\n",
        flush=True,
    )
    header = (
        "| shape | rank | npuq ms | torch_svd ms | lowrank ms | sklearn ms | fastest baseline / npuq | "
        "npuq algorithm (settings): randomized p,q / krylov b,q | "
        "err % npuq / svd / lowrank / sklearn | settings (p, q) lowrank / sklearn |"
    )
    print(header)
    print("| --- " * 10 + "|")
    for m, n in shapes:
        a, sig = make_matrix(m, n, args.alpha, args.noise, dtype, seed=m * 7 + n)
        a64 = a.astype(np.float64)
        t = torch.from_numpy(a)
        k = min(m, n)
        svd_samples = None
        for r in ranks:
            if r >= k:
                continue
            opt = float(np.sqrt(np.sum(sig[r:] ** 2)))
            settings, calls = {}, {}
            for name in ("npuq", "npuq_krylov", "torch_svd", "lowrank", "sklearn"):
                if name == "npuq_krylov":
                    c = calibrate_krylov(fns[name], a, t, a64, r, opt, args.tol, k)
                else:
                    c = calibrate(name, fns[name], a, t, a64, r, opt, args.tol, k)
                settings[name] = c
                if name == "torch_svd":
                    # rank-independent: sampled with the first rank only; one sample when it takes > 1 s
                    if svd_samples is None and c[3] > 1.0:
                        svd_samples = [c[3]]
                    if svd_samples is not None:
                        continue
                if c is not None:
                    p, q = c[0], c[1]
                    calls[name] = lambda f=fns[name], p=p, q=q: f(a, t, r, p, q)
            samples = time_interleaved(calls, repeats, 0)
            if "torch_svd" in samples:
                svd_samples = samples["torch_svd"]
            samples["torch_svd"] = svd_samples
            best = {k_: (min(v) if v else None) for k_, v in samples.items()}
            med = {k_: (statistics.median(v) if v else None) for k_, v in samples.items()}
            # npuq: the faster of its two calibrated algorithms
            algos = [x for x in ("npuq", "npuq_krylov") if best.get(x) is not None and settings[x] is not None]
            npuq_algo = min(algos, key=lambda x: best[x]) if algos else None
            randomized_settings = settings["npuq"]
            if npuq_algo == "npuq_krylov":
                best["npuq"], med["npuq"], settings["npuq"] = best[npuq_algo], med[npuq_algo], settings[npuq_algo]
            base = [best[b] for b in BASELINES if best.get(b) is not None and settings[b] is not None]
            ratio = min(base) / best["npuq"] if base and best.get("npuq") else None
            fastest = min(
                (b for b in BASELINES if best.get(b) is not None and settings[b] is not None),
                key=lambda b: best[b],
                default=None,
            )
            row = {
                "shape": [m, n],
                "rank": r,
                "dtype": args.dtype,
                "threads": args.threads,
                "optimal_error": opt,
                "best_s": best,
                "median_s": med,
                "samples_s": samples,
                "ratio_vs_fastest_baseline": ratio,
                "fastest_baseline": fastest,
                "npuq_algorithm": {"npuq": "randomized", "npuq_krylov": "krylov", None: None}[npuq_algo],
                "npuq_randomized_settings": randomized_settings,
                "settings": {
                    k_: (
                        None
                        if v is None
                        else {
                            (
                                "block_size"
                                if k_ == "npuq_krylov" or (k_ == "npuq" and npuq_algo == "npuq_krylov")
                                else "oversampling"
                            ): v[0],
                            "power_iterations": v[1],
                            "error": v[2],
                            "error_vs_opt": v[2] / opt - 1,
                        }
                    )
                    for k_, v in settings.items()
                },
            }
            rows.append(row)

            def ms(name):
                return "n/a" if best.get(name) is None else f"{best[name] * 1e3:.1f}"

            def pct(name):
                return "-" if settings[name] is None else f"{(settings[name][2] / opt - 1) * 100:.2f}"

            def pq(name):
                return "none" if settings[name] is None else f"{settings[name][0]},{settings[name][1]}"

            def algo_text():
                rnd = (
                    "none"
                    if randomized_settings is None
                    else f"{randomized_settings[0]},{randomized_settings[1]} {ms_of('npuq_rand')}"
                )
                kry = pq("npuq_krylov") + f" {ms('npuq_krylov')}"
                return f"{'krylov' if npuq_algo == 'npuq_krylov' else 'randomized'} ({rnd} / {kry})"

            def ms_of(_):
                v = samples.get("npuq")
                return "n/a" if not v else f"{min(v) * 1e3:.1f}"

            print(
                f"| {m}x{n} | {r} | {ms('npuq')} | {ms('torch_svd')} | {ms('lowrank')} | {ms('sklearn')} | "
                f"{'n/a' if ratio is None else f'{ratio:.2f}'} ({fastest}) | {algo_text()} | "
                f"{pct('npuq')} / {pct('torch_svd')} / {pct('lowrank')} / {pct('sklearn')} | "
                f"{pq('lowrank')} / {pq('sklearn')} |",
                flush=True,
            )

    os.makedirs(args.out, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "threads": args.threads,
        "dtype": args.dtype,
        "alpha": args.alpha,
        "noise": args.noise,
        "tol": args.tol,
        "repeats": repeats,
        "torch": torch.__version__,
        "argv": sys.argv[1:],
    }
    with open(os.path.join(args.out, f"bench_svd_{args.dtype}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4.5))
        labels = [f"{r['shape'][0]}x{r['shape'][1]}\nr={r['rank']}" for r in rows]
        x = np.arange(len(rows))
        for i, name in enumerate(("npuq",) + BASELINES):
            vals = [(r["best_s"].get(name) or np.nan) * 1e3 if r["settings"].get(name) else np.nan for r in rows]
            ax.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=name)
        ax.set_yscale("log")
        ax.set_ylabel("best time (ms), log scale")
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_title(f"truncated SVD at equal accuracy ({args.dtype}, {args.threads} threads)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"bench_svd_{args.dtype}.png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
