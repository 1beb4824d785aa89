"""``npuq selftest`` / ``python -m npuq.selftest``: prove that the installed binary computes npuq's arithmetic.

A hardware team trusts an install as its golden reference only after this passes on the machine in
question. It reports the build (version, arithmetic version, kernel families this CPU supports, threads,
OpenMP, BLAS, CUDA) and then, for every compiled kernel family the CPU supports and every usable GPU,
runs a fixed set of cases:

* against the **scalar reference** kernels of the same binary (``npuq.ops.reference``): the CPU fast paths
  with one and with several threads (one only on a build without OpenMP), and on each GPU whose
  architecture the build covers, every op through its CUDA kernels (convolutions with both engines, int8
  tensor cores and dp4a, where the GPU has both): all must give the same bits;
* against **embedded golden outputs** (``selftest_cases.json``): each case's inputs come from numpy's legacy
  ``RandomState`` stream (frozen across numpy releases) and its int8 output must hash to the SHA-256
  recorded when the file was made. The file carries a checksum of its own; a file that fails it, or does
  not parse, is reported as corrupt.

Exit status 0 when everything matches, 1 on any mismatch or failing kernel (each named), 2 when the test
cannot run as asked (a corrupt case file, a kernel family forced with ``--isa`` / ``NPUQ_ISA`` that this CPU
lacks, ``--threads`` above 1 on a build without OpenMP, ``--gpu on`` without a usable GPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

CASES_FILE = Path(__file__).with_name("selftest_cases.json")
FORMAT = "npuq-selftest-cases"


class SelftestError(RuntimeError):
    """The self-test cannot run (as opposed to running and finding a mismatch)."""


# ============================================================================================ the cases
def _ints(rs: np.random.RandomState, shape, lo: int = -128, hi: int = 127, dtype=np.int8) -> np.ndarray:
    return rs.randint(lo, hi + 1, size=shape).astype(dtype)


def _requant(rs, channels: int, per_channel: bool, wess: bool) -> dict:
    n = channels if per_channel else 1
    out = dict(
        multiplier=rs.randint(2**30, 2**31 - 1, size=n).astype(np.int32),
        exponent=rs.randint(-12, -4, size=n).astype(np.int32),
        output_zero_point=int(rs.randint(-20, 21)),
    )
    if not per_channel:
        out = dict(out, multiplier=int(out["multiplier"][0]), exponent=int(out["exponent"][0]))
    if wess:
        out["channel_shift"] = rs.randint(0, 5, size=channels).astype(np.int32)
    return out


def _conv(spec: dict, rs) -> tuple[Callable, tuple, dict]:
    h, w, c_in, c_out, k, groups = (spec[x] for x in ("h", "w", "c_in", "c_out", "k", "groups"))
    x = _ints(rs, (spec.get("n", 1), h, w, c_in))
    weight = _ints(rs, (c_out, k, k, c_in // groups), -127, 127)
    bias = rs.randint(-5000, 5000, size=c_out).astype(np.int32)
    kw = dict(
        input_zero_point=int(rs.randint(-10, 11)),
        stride=spec.get("stride", 1),
        padding=spec.get("padding", 0),
        dilation=spec.get("dilation", 1),
        groups=groups,
        rounding=spec.get("rounding", "double"),
        **_requant(rs, c_out, spec.get("per_channel", False), spec.get("wess", False)),
    )
    return "conv2d", (x, weight, bias), kw


def _fc(spec: dict, rs):
    x = _ints(rs, (spec["n"], spec["k"]))
    weight = _ints(rs, (spec["c_out"], spec["k"]), -127, 127)
    bias = rs.randint(-5000, 5000, size=spec["c_out"]).astype(np.int32)
    kw = dict(input_zero_point=int(rs.randint(-10, 11)), **_requant(rs, spec["c_out"], True, False))
    return "fully_connected", (x, weight, bias), kw


def _add(spec: dict, rs):
    from npuq.ops import add_params

    shape = tuple(spec["shape"])
    kw = dict(
        add_params(0.02, 0.035, 0.04),
        a_zero_point=int(rs.randint(-20, 21)),
        b_zero_point=int(rs.randint(-20, 21)),
        output_zero_point=int(rs.randint(-20, 21)),
    )
    return "add", (_ints(rs, shape), _ints(rs, shape)), kw


def _pool(spec: dict, rs):
    x = _ints(rs, tuple(spec["shape"]))
    if spec["op"] == "global_avg_pool":
        return "global_avg_pool", (x,), {}
    kw = dict(stride=spec.get("stride"), padding=spec.get("padding", 0))
    if spec["op"] == "max_pool2d":
        kw["ceil_mode"] = spec.get("ceil_mode", False)
    return spec["op"], (x, spec["k"]), kw


def _lut(spec: dict, rs):
    return "lut", (_ints(rs, tuple(spec["shape"])), _ints(rs, (256,))), {}


def _mul(spec: dict, rs):
    shape = tuple(spec["shape"])
    b_shape = (shape[0], 1, 1, shape[3]) if spec.get("se") else shape
    kw = dict(
        a_zero_point=int(rs.randint(-20, 21)),
        b_zero_point=int(rs.randint(-20, 21)),
        output_zero_point=int(rs.randint(-20, 21)),
        multiplier=int(rs.randint(2**30, 2**31 - 1)),
        exponent=-7,
    )
    return "mul", (_ints(rs, shape), _ints(rs, b_shape)), kw


def _mean(spec: dict, rs):
    kw = dict(
        input_zero_point=int(rs.randint(-20, 21)),
        output_zero_point=int(rs.randint(-20, 21)),
        multiplier=int(rs.randint(2**30, 2**31 - 1)),
        exponent=int(rs.randint(-8, 0)),
        tflite_rounding=bool(spec.get("tflite_rounding", False)),
    )
    return "mean", (_ints(rs, tuple(spec["shape"])),), kw


def _upsample(spec: dict, rs):
    kw = dict(mode=spec["mode"], zero_point=int(rs.randint(-20, 21)))
    return "upsample", (_ints(rs, tuple(spec["shape"])), spec["scale"]), kw


_BUILDERS: dict[str, Callable[[dict, Any], tuple]] = {
    "conv2d": _conv,
    "fully_connected": _fc,
    "add": _add,
    "avg_pool2d": _pool,
    "max_pool2d": _pool,
    "global_avg_pool": _pool,
    "lut": _lut,
    "mul": _mul,
    "mean": _mean,
    "upsample": _upsample,
}

# The cases, written once into selftest_cases.json with their hashes (``--write``): every kernel shape the
# fast paths specialize (stems, depthwise rows, 1x1 GEMMs, grouped, strided, dilated, padded, per-layer,
# per-channel, WESS shifts, both roundings) and each elementwise / resampling family.
SPECS: tuple[dict, ...] = (
    dict(name="stem_3x3_s2", op="conv2d", seed=1, h=17, w=19, c_in=3, c_out=16, k=3, groups=1, stride=2, padding=1),
    dict(name="pointwise_wess", op="conv2d", seed=2, n=2, h=7, w=9, c_in=24, c_out=40, k=1, groups=1, wess=True),
    dict(
        name="pointwise_single_round",
        op="conv2d",
        seed=3,
        h=6,
        w=5,
        c_in=32,
        c_out=16,
        k=1,
        groups=1,
        rounding="single",
    ),
    dict(
        name="depthwise_3x3",
        op="conv2d",
        seed=4,
        h=13,
        w=11,
        c_in=48,
        c_out=48,
        k=3,
        groups=48,
        padding=1,
        per_channel=True,
    ),
    dict(
        name="depthwise_5x5_s2",
        op="conv2d",
        seed=5,
        h=15,
        w=16,
        c_in=20,
        c_out=20,
        k=5,
        groups=20,
        stride=2,
        padding=2,
        wess=True,
    ),
    dict(
        name="grouped_dilated",
        op="conv2d",
        seed=6,
        h=12,
        w=12,
        c_in=16,
        c_out=8,
        k=3,
        groups=4,
        dilation=2,
        padding=2,
        per_channel=True,
    ),
    dict(
        name="conv_3x3_wide",
        op="conv2d",
        seed=7,
        h=9,
        w=10,
        c_in=20,
        c_out=36,
        k=3,
        groups=1,
        padding=(1, 0, 2, 1),
        per_channel=True,
    ),
    dict(name="fully_connected", op="fully_connected", seed=8, n=3, k=301, c_out=37),
    dict(name="add", op="add", seed=9, shape=[2, 7, 5, 33]),
    dict(name="avg_pool_3x3", op="avg_pool2d", seed=10, shape=[1, 9, 8, 19], k=3, stride=2, padding=1),
    dict(name="max_pool_ceil", op="max_pool2d", seed=11, shape=[2, 10, 9, 7], k=3, stride=2, ceil_mode=True),
    dict(name="global_avg_pool", op="global_avg_pool", seed=12, shape=[2, 7, 7, 40]),
    dict(name="lut", op="lut", seed=13, shape=[1, 5, 6, 37]),
    dict(name="mul_se", op="mul", seed=14, shape=[2, 6, 5, 24], se=True),
    dict(name="mean_tflite", op="mean", seed=15, shape=[1, 7, 7, 30], tflite_rounding=True),
    dict(name="mean", op="mean", seed=16, shape=[2, 5, 3, 9]),
    dict(name="upsample_bilinear", op="upsample", seed=17, shape=[1, 4, 5, 6], scale=3, mode="bilinear"),
)


@dataclass
class Case:
    name: str
    op: str
    args: tuple
    kwargs: dict
    sha256: str | None = None


def build(spec: dict) -> Case:
    if spec.get("op") not in _BUILDERS:
        raise SelftestError(f"case {spec.get('name')!r}: unknown op {spec.get('op')!r}")
    rs = np.random.RandomState(int(spec["seed"]))
    op, args, kwargs = _BUILDERS[spec["op"]](spec, rs)
    return Case(str(spec["name"]), op, args, kwargs, spec.get("sha256"))


def _digest(out: np.ndarray) -> str:
    arr = np.ascontiguousarray(out)
    return hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()).hexdigest()


def _file_digest(cases: list) -> str:
    return hashlib.sha256(json.dumps(cases, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_cases(path: str | os.PathLike = CASES_FILE) -> list[Case]:
    """The embedded cases, checked: a readable JSON object of this format whose checksum matches."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SelftestError(f"{path}: the case file cannot be read ({exc}); reinstall npuq") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("cases"), list):
        raise SelftestError(f"{path}: not an npuq self-test case file; reinstall npuq")
    if doc.get("sha256") != _file_digest(doc["cases"]):
        raise SelftestError(f"{path}: the case file is corrupt (its checksum does not match); reinstall npuq")
    from npuq import ARITHMETIC_VERSION

    if doc.get("arithmetic_version") != ARITHMETIC_VERSION:
        raise SelftestError(
            f"{path}: cases of arithmetic version {doc.get('arithmetic_version')}, this build computes version "
            f"{ARITHMETIC_VERSION}; reinstall npuq"
        )
    try:
        return [build(spec) for spec in doc["cases"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SelftestError(f"{path}: a case does not describe an op ({exc}); reinstall npuq") from None


def write_cases(path: str | os.PathLike = CASES_FILE) -> None:
    """Record each case's output hash, computed with the scalar reference (for npuq's developers, when
    the cases or the arithmetic change)."""
    from npuq import ARITHMETIC_VERSION

    cases = []
    for spec in SPECS:
        case = build(spec)
        cases.append(dict(spec, sha256=_digest(_reference(case))))
    doc = dict(format=FORMAT, arithmetic_version=ARITHMETIC_VERSION, cases=cases, sha256=_file_digest(cases))
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


# ============================================================================================ running
def _reference(case: Case) -> np.ndarray:
    from npuq import ops

    return getattr(ops.reference, case.op)(*case.args, **case.kwargs)


def _fast(case: Case, threads: int) -> np.ndarray:
    from npuq import ops

    return getattr(ops, case.op)(*case.args, threads=threads, **case.kwargs)


def environment() -> dict:
    """What the self-test ran on."""
    import npuq
    from npuq import _cuda

    features = npuq.cpu_features()
    blas = "not loadable"
    try:
        from npuq.lrf import svd

        blas = svd._openblas_library() if svd.cpu_available() else "not loadable"
    except ImportError as exc:
        blas = f"not loadable ({exc})"
    cuda = _cuda.info()
    devices = [
        dict(
            index=d,
            name=name,
            capability=list(cuda["capabilities"][d]),
            unusable=_cuda.unusable_reason(cuda, d),
        )
        for d, name in enumerate(cuda.get("names") or [])
    ]
    return dict(
        version=npuq.__version__,
        arithmetic_version=npuq.ARITHMETIC_VERSION,
        isa_active=features["active"],
        isa_supported=list(features["supported"]),
        openmp=bool(features["openmp"]),
        threads=npuq.get_num_threads(),
        blas=blas,
        cuda=dict(
            built=bool(cuda["built"]),
            devices=int(cuda.get("devices") or 0),
            reason=cuda.get("reason"),
            architectures=cuda.get("architectures_text"),
            gpus=devices,
        ),
    )


# the positional arguments of each op that are activations: copied to the GPU for its runs (weights,
# tables and scalars stay host values, as a user passes them)
_DEVICE_ARGS: dict[str, tuple[int, ...]] = {"add": (0, 1), "mul": (0, 1)}
_LAYERS = {"conv2d": "Conv2d", "fully_connected": "FullyConnected"}


def _gpu(case: Case, device: int, engine: str | None) -> np.ndarray:
    from npuq import _C, ops

    def on_device(a):
        return _C.CudaArray.from_numpy(np.ascontiguousarray(a), device)

    if case.op in _LAYERS:
        x, weight, bias = case.args
        layer = getattr(ops, _LAYERS[case.op])(weight, bias, **case.kwargs)
        out = layer(on_device(x), engine=engine)
    else:
        moved = _DEVICE_ARGS.get(case.op, (0,))
        args = [on_device(a) if i in moved else a for i, a in enumerate(case.args)]
        out = getattr(ops, case.op)(*args, **case.kwargs)
    return out.numpy()


def gpu_engines(capability) -> list[str]:
    """The convolution engines of a GPU: int8 tensor cores from compute capability 8.0, dp4a everywhere."""
    return ["mma", "dp4a"] if tuple(capability) >= (8, 0) else ["dp4a"]


def _compare(failures: list[str], case: Case, where: str, compute: Callable[..., np.ndarray], args: tuple, ref) -> None:
    name = case.name
    try:
        out = np.asarray(compute(case, *args))
    except Exception as exc:  # a kernel that raises is a failure of this install, reported with the rest
        failures.append(f"{name}: {where}: raised {type(exc).__name__}: {exc}")
        return
    if out.shape != ref.shape or out.dtype != ref.dtype:
        failures.append(f"{name}: {where}: output {out.dtype}{out.shape}, the reference gives {ref.dtype}{ref.shape}")
    elif not np.array_equal(out, ref):
        n = int(np.count_nonzero(out != ref))
        failures.append(f"{name}: {where}: {n} of {ref.size} values differ")


def run(cases: list[Case], isas: list[str], threads: list[int], gpus: list[dict] | None = None, log=print) -> list[str]:
    """The mismatches (empty: all passed). ``gpus``: ``{"index", "capability"}`` of the GPUs to check."""
    import npuq

    gpus = gpus or []
    failures: list[str] = []
    previous = npuq.cpu_features()["active"]
    try:
        for case in cases:
            ref = _reference(case)
            if case.sha256 is not None and _digest(ref) != case.sha256:
                failures.append(f"{case.name}: the scalar reference's output differs from the golden hash")
            for isa in isas:
                npuq.set_isa(isa)
                for t in threads:
                    _compare(failures, case, f"{isa} kernels, {t} thread(s)", _fast, (t,), ref)
            for gpu in gpus:
                engines = gpu_engines(gpu["capability"]) if case.op in _LAYERS else [None]
                for engine in engines:
                    where = f"CUDA device {gpu['index']}" + (f", {engine} engine" if engine else "")
                    _compare(failures, case, where, _gpu, (gpu["index"], engine), ref)
        log(f"{len(cases)} cases x {len(isas)} CPU kernel families ({', '.join(isas)}) x threads {threads}")
        for gpu in gpus:
            engines = ", ".join(gpu_engines(gpu["capability"]))
            log(f"{len(cases)} cases on CUDA device {gpu['index']} (engines {engines})")
    finally:
        npuq.set_isa(previous if previous in npuq.cpu_features()["supported"] else "auto")
    return failures


# ============================================================================================ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--isa",
        default=os.environ.get("NPUQ_ISA") or None,
        help="check one kernel family only (default: every family this CPU supports; env NPUQ_ISA)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="the thread count of the multi-threaded runs (default: all cores)"
    )
    p.add_argument(
        "--gpu",
        choices=("auto", "on", "off"),
        default="auto",
        help="check the CUDA kernels on every usable GPU: auto (when there is one), on (fail without one), off",
    )
    p.add_argument("--cases", default=str(CASES_FILE), help=argparse.SUPPRESS)  # a case file of one's own (tests)
    p.add_argument("--json", default=None, help="write the environment and the result as JSON to this file")


def _gpus_to_check(cuda: dict, mode: str) -> list[dict]:
    """Print the CUDA status; the GPUs whose kernels are checked (``mode``: auto, on, off)."""
    from npuq import _cuda

    print("\n".join(_cuda.status_lines(_cuda.info(), "checked" if mode != "off" else "not checked (--gpu off)")))
    usable = [g for g in cuda["gpus"] if g["unusable"] is None]
    if mode == "on" and not usable:
        raise SelftestError(
            "--gpu on, but no GPU can run this build's CUDA kernels (see the CUDA lines above); use --gpu auto or off"
        )
    return [] if mode == "off" else usable


def run_command(args) -> int:
    import npuq

    env = environment()
    print(f"npuq {env['version']} (arithmetic version {env['arithmetic_version']})")
    print(
        f"CPU kernels: supported {', '.join(env['isa_supported'])} (default {env['isa_active']}); OpenMP "
        f"{'on' if env['openmp'] else 'off'}; threads {env['threads']}"
    )
    print(f"BLAS: {env['blas']}")
    gpus = _gpus_to_check(env["cuda"], args.gpu)
    if args.isa:
        if args.isa not in env["isa_supported"]:
            raise SelftestError(
                f"kernel family {args.isa!r} is not supported on this CPU (or this build); supported: "
                f"{', '.join(env['isa_supported'])}"
            )
        isas = [args.isa]
    else:
        isas = env["isa_supported"]
    if args.threads is not None and not 1 <= args.threads <= npuq.MAX_THREADS:
        raise SelftestError(f"--threads must be in [1, {npuq.MAX_THREADS}], got {args.threads}")
    if not env["openmp"]:
        if args.threads is not None and args.threads > 1:
            raise SelftestError(
                f"--threads {args.threads}: this build has no OpenMP, so every kernel runs on one thread and "
                "threaded runs cannot be checked; rebuild with NPUQ_OPENMP=ON and an OpenMP runtime, or drop --threads"
            )
        print("OpenMP off: every kernel runs on one thread; the multi-threaded runs are left out")
        threads = [1]
    else:
        threads = sorted({1, args.threads or max(2, npuq.get_num_threads())})
    cases = load_cases(args.cases)
    failures = run(cases, isas, threads, gpus)
    for f in failures:
        print(f"MISMATCH {f}")
    result = "FAILED" if failures else "passed"
    print(f"selftest {result}: {len(failures)} mismatch(es)")
    if args.json:
        gpu_indices = [g["index"] for g in gpus]
        Path(args.json).write_text(
            json.dumps(dict(environment=env, isas=isas, threads=threads, gpus=gpu_indices, failures=failures), indent=1)
            + "\n"
        )
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m npuq.selftest", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_command(args)
    except SelftestError as exc:
        print(f"npuq selftest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


def add_commands(sub) -> None:
    """``npuq selftest`` (the CLI's command table names this module)."""
    p = sub.add_parser(
        "selftest",
        help="check every kernel family this CPU supports against the scalar reference and embedded golden cases",
    )
    add_arguments(p)
    p.set_defaults(func=run_command)
