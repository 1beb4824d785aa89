"""examples/rtl: the requantization unit in Verilog, its two benches, and the deliberately broken variant.

The commands are those of examples/rtl/README.md: a program, `npuq export-vectors --accumulators`,
`make` of the benches into tmp_path, run_file_bench.py (iverilog and Verilator), `npuq verify` of the
dump, and the DPI-C bench whose scoreboard calls libnpuq's npuq_requantize_one.

Oracles independent of the code under test: every expected output comes from npuq (the golden vectors,
the C ABI), and what the broken unit must get wrong is predicted here with tests/support/reference_numpy.py
(its mismatches are exactly the negative ties of double rounding's RDBPOT, docs/arithmetic.md 3.1).

Needs verilator, iverilog and make: skipped with the install command as the reason when one is missing,
except under CI (NPUQ_CI=1), where that fails. Each simulator is built once for the module (Verilator
builds take ~10 s each); the good and the broken unit share a build (+broken=1 selects the broken one).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npuq
from npuq.npu.program import InputSpec, Op, Program, validate
from support import reference_numpy as R
from support.helpers import skip_unless_ci

pytestmark = pytest.mark.rtl

ROOT = Path(__file__).resolve().parents[2]
RTL = ROOT / "examples" / "rtl"
RUNNER = RTL / "run_file_bench.py"
TOOLS = ("make", "verilator", "iverilog", "vvp")
LAYER_KINDS = ("conv2d", "fully_connected")
SIMS = ("icarus", "verilator")
DPI_TXNS = 300_000

MISMATCH_FILE = re.compile(r"^MISMATCH index (\d+) channel (\d+): expected (-?\d+), got (-?\d+)", re.M)
MISMATCH_DPI = re.compile(
    r"^MISMATCH transaction \d+: acc (-?\d+) M0 (-?\d+) e (-?\d+) s (\d+) z (-?\d+) clamp \[(-?\d+), (-?\d+)\] "
    r"(double|single): expected (-?\d+), got (-?\d+)$",
    re.M,
)
RATE = re.compile(r"^RATE simulation_txn_per_s=(\d+) c_abi_calls_per_s=(\d+)$", re.M)


# ------------------------------------------------------------------------------------------------ setup
@pytest.fixture(scope="module")
def env():
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        skip_unless_ci(f"{', '.join(missing)} not installed (sudo apt-get install verilator iverilog make)")
    # the subprocesses import this npuq (python -m npuq.cli), wherever the test run found it
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def run(cmd, env, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args}: status {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def make(env, build: Path, *targets: str) -> subprocess.CompletedProcess:
    config = f"NPUQ_CONFIG={sys.executable} -m npuq.cli config"
    return run(["make", "-C", RTL, f"BUILD={build}", config, "JOBS=2", *targets], env)


@pytest.fixture(scope="module")
def file_build(env, tmp_path_factory):
    """tb_file built with iverilog and with Verilator (make icarus verilator)."""
    build = tmp_path_factory.mktemp("rtl_build")
    checked(make(env, build, "icarus", "verilator"))
    return build


@pytest.fixture(scope="module")
def dpi_bench(env, tmp_path_factory):
    """tb_dpi linked with libnpuq (make dpi, flags from `npuq config`)."""
    try:
        npuq.get_library()
    except FileNotFoundError as exc:
        skip_unless_ci(f"libnpuq.so is missing: {exc}")
    build = tmp_path_factory.mktemp("rtl_dpi")
    checked(make(env, build, "dpi"))
    return build / "tb_dpi" / "tb_dpi"


def _layer(rng, name, src, w, *, per_channel, exponents, shifts, zi, zo, lo, hi, **geometry) -> Op:
    c_out = w.shape[0]
    n = c_out if per_channel else 1
    attrs = dict(input_zero_point=zi, output_zero_point=zo, act_min=lo, act_max=hi, weight_bits=8)
    if w.ndim == 4:
        attrs.update(
            stride=list(geometry.get("stride", (1, 1))),
            padding=list(geometry.get("padding", (0, 0, 0, 0))),
            dilation=[1, 1],
            groups=1,
        )
    tensors = dict(
        weight=w.astype(np.int8),
        bias=rng.integers(-3000, 3000, c_out).astype(np.int32),
        multiplier=rng.integers(2**30, 2**31 - 1, n).astype(np.int32),
        exponent=np.asarray(exponents, np.int32).reshape(n),
        shift=np.asarray(shifts, np.uint8).reshape(c_out),
    )
    kind = "conv2d" if w.ndim == 4 else "fully_connected"
    return Op(name, kind, [src], attrs, tensors, scale=0.1, zero_point=zo)


def tiny_program(rng) -> Program:
    """x (8, 8, 3) -> conv 3x3 (per-channel M0 / e, WESS shifts, fused ReLU) -> conv 3x3 stride 2 (per layer,
    e_c = -5 / -6: negative ties of RDBPOT are common, about 1 in 32) -> flatten -> fully connected."""
    ops = [
        _layer(
            rng,
            "conv_relu",
            "x",
            rng.integers(-20, 21, (16, 3, 3, 3)),
            per_channel=True,
            exponents=rng.integers(-9, -6, 16),
            shifts=rng.integers(0, 4, 16),
            zi=-3,
            zo=-20,
            lo=-20,
            hi=127,
            padding=(1, 1, 1, 1),
        ),
        _layer(
            rng,
            "conv_proj",
            "conv_relu",
            rng.integers(-6, 7, (24, 3, 3, 16)),
            per_channel=False,
            exponents=[-5],
            shifts=rng.integers(0, 2, 24),
            zi=-20,
            zo=7,
            lo=-128,
            hi=80,
            stride=(2, 2),
            padding=(1, 1, 1, 1),
        ),
        Op("flat", "flatten", ["conv_proj"], {}, scale=0.1, zero_point=7),
        _layer(
            rng,
            "fc",
            "flat",
            rng.integers(-10, 11, (10, 4 * 4 * 24)),
            per_channel=False,
            exponents=[-6],
            shifts=np.zeros(10),
            zi=7,
            zo=0,
            lo=-128,
            hi=127,
        ),
    ]
    program = Program(input=InputSpec("x", (8, 8, 3), 0.0625, -3), ops=ops, output="fc", model="rtl_tiny")
    validate(program)
    return program


@pytest.fixture(scope="module")
def vectors(env, tmp_path_factory):
    """The golden vectors with accumulators of the tiny program's layers on 6 images (the README's export)."""
    d = tmp_path_factory.mktemp("rtl_vectors")
    rng = np.random.default_rng(20240611)
    tiny_program(rng).save(d / "tiny.npuq")
    np.save(d / "images.npy", rng.integers(-128, 128, (6, 8, 8, 3)).astype(np.int8))
    checked(
        run(
            [
                sys.executable,
                "-m",
                "npuq.cli",
                "export-vectors",
                d / "tiny.npuq",
                d / "images.npy",
                d / "vectors",
                "--accumulators",
                "--ops",
                "conv2d,fully_connected",
            ],
            env,
        )
    )
    return d / "vectors"


# ------------------------------------------------------------------------------------------ independent model
def layers(vectors: Path) -> list[dict]:
    manifest = json.loads((vectors / "manifest.json").read_text())
    return [op for op in manifest["ops"] if op["kind"] in LAYER_KINDS]


def requantize_layer(vectors: Path, op: dict, broken: bool) -> tuple[np.ndarray, np.ndarray]:
    """(golden output, what the unit computes) of a layer, flat; the unit is the good one unless ``broken``.

    The good unit is reference_numpy's requantization (section 3). The broken one rounds RDBPOT's negative
    ties toward +infinity: floor((h + 2^(n-1)) / 2^n) instead of floor((h + 2^(n-1) - [h < 0]) / 2^n).
    """
    d = vectors / op["dir"]
    acc = np.load(d / "accumulator.npy").astype(np.int64)
    golden = np.load(d / "output.npy").ravel()
    m0, e, s = (np.load(d / f"{name}.npy").astype(np.int64) for name in ("multiplier", "exponent", "shift"))
    p = op["params"]
    c = acc.shape[-1]
    a = acc.reshape(-1, c)
    if not broken:
        y = R.requantize(
            a,
            m0 if m0.size > 1 else m0[0],
            e if e.size > 1 else e[0],
            s,
            p["output_zero_point"],
            p["act_min"],
            p["act_max"],
            "double",
        )
        return golden, y.ravel()
    m0, n = np.broadcast_arrays(m0, s - e)  # n = -e_c
    assert np.all(n > 0), "the broken model covers right shifts only (e_c < 0), as in these layers"
    h = R.srdhm(a, np.broadcast_to(m0, a.shape))
    n = np.broadcast_to(n, a.shape)
    r = np.where(n > 0, (h + (np.int64(1) << np.maximum(n - 1, 0))) >> n, h)
    return golden, np.clip(r + p["output_zero_point"], p["act_min"], p["act_max"]).ravel()


def test_the_accumulators_requantize_to_the_golden_outputs(vectors):
    """What the benches rely on: accumulator.* requantized by the independent reference is output.*."""
    ops = layers(vectors)
    assert [op["name"] for op in ops] == ["conv_relu", "conv_proj", "fc"]
    assert json.loads((vectors / "manifest.json").read_text())["rounding"] == "double"  # as requantize_layer
    for op in ops:
        golden, y = requantize_layer(vectors, op, broken=False)
        np.testing.assert_array_equal(y, golden, err_msg=op["name"])


# ---------------------------------------------------------------------------------------------------- lint
def test_the_unit_is_lint_clean(env, tmp_path):
    result = checked(make(env, tmp_path, "lint"))
    text = result.stdout + result.stderr
    assert "%Warning" not in text and "%Error" not in text, text


# --------------------------------------------------------------------------------------- file-driven bench
def verdicts(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^op \d+ '(\w+)' \([^)]*\): (PASS|FAIL \d+ of \d+)$", stdout, re.M))


@pytest.mark.parametrize("sim", SIMS)
def test_file_bench_passes_the_good_unit(sim, env, file_build, vectors, tmp_path):
    dump = tmp_path / "dump"
    result = checked(run([sys.executable, RUNNER, vectors, "--sim", sim, "--build", file_build, "--dump", dump], env))
    assert verdicts(result.stdout) == {op["name"]: "PASS" for op in layers(vectors)}
    for op in layers(vectors):
        count = math.prod(op["arrays"]["output"]["shape"])
        assert re.search(rf"^PASS {count}$", result.stdout, re.M), op["name"]
    # the unit's outputs, as the bench dumped them, pass npuq's own comparison
    report = checked(run([sys.executable, "-m", "npuq.cli", "verify", vectors, dump], env))
    assert "PASS (exit 0)" in report.stdout


def reported_mismatches(stdout: str) -> dict[str, dict[int, tuple[int, int, int]]]:
    """Per layer op, the MISMATCH lines its bench printed: index -> (channel, expected, got)."""
    by_op, pending = {}, {}
    for line in stdout.splitlines():
        mismatch = MISMATCH_FILE.match(line)
        if mismatch:
            index, channel, expected, got = map(int, mismatch.groups())
            pending[index] = (channel, expected, got)
        verdict = re.match(r"^op \d+ '(\w+)' ", line)
        if verdict:
            by_op[verdict.group(1)], pending = pending, {}
    return by_op


@pytest.mark.parametrize("sim", SIMS)
def test_file_bench_catches_the_broken_unit(sim, env, file_build, vectors, tmp_path):
    dump = tmp_path / "dump"
    result = run(
        [
            sys.executable,
            RUNNER,
            vectors,
            "--sim",
            sim,
            "--build",
            file_build,
            "--broken",
            "--dump",
            dump,
            "--max-report",
            "1000",
        ],
        env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    reported = reported_mismatches(result.stdout)
    expected_verdicts, total = {}, 0
    for op in layers(vectors):
        golden, broken = requantize_layer(vectors, op, broken=True)
        channels = op["arrays"]["output"]["shape"][-1]
        wrong = np.flatnonzero(golden != broken)
        expected_verdicts[op["name"]] = f"FAIL {wrong.size} of {golden.size}" if wrong.size else "PASS"
        total += wrong.size
        # each predicted mismatch is reported with its index, channel, expected and computed value
        assert reported[op["name"]] == {int(i): (int(i) % channels, int(golden[i]), int(broken[i])) for i in wrong}
    assert expected_verdicts["conv_proj"] != "PASS", "the layer meant to catch the broken unit has no negative ties"
    assert verdicts(result.stdout) == expected_verdicts
    report = run([sys.executable, "-m", "npuq.cli", "verify", vectors, dump], env)
    assert report.returncode == 1, report.stdout + report.stderr
    assert f"total: {total} mismatching element(s)" in report.stdout


def test_file_bench_names_bad_inputs(env, file_build, vectors, tmp_path):
    op = next(op for op in layers(vectors) if op["name"] == "conv_proj")
    count = math.prod(op["arrays"]["output"]["shape"])
    args = ["+channels=24", "+zero_point=7", "+act_min=-128", "+act_max=80", "+rounding=double"]
    sims = {"icarus": ["vvp", "-n", file_build / "tb_file.vvp"], "verilator": [file_build / "tb_file" / "tb_file"]}

    # a set exported without --accumulators: the runner says what to do
    bare = tmp_path / "bare"
    shutil.copytree(vectors, bare)
    (bare / op["dir"] / "accumulator.hex").unlink()
    result = run([sys.executable, RUNNER, bare, "--sim", "icarus", "--build", file_build, "--op", "conv_proj"], env)
    assert result.returncode == 2 and "accumulator.hex" in result.stderr and "--accumulators" in result.stderr

    # a truncated accumulator file and a wrong count: the bench fails and names the file
    short = tmp_path / "short"
    shutil.copytree(vectors / op["dir"], short)
    lines = (short / "accumulator.hex").read_text().splitlines(keepends=True)
    (short / "accumulator.hex").write_text("".join(lines[:-1]))
    for sim, command in sims.items():
        for folder, n in ((short, count), (vectors / op["dir"], count - 24)):
            result = run([*command, f"+vectors={folder}", f"+count={n}", *args], env, timeout=120)
            text = result.stdout + result.stderr
            assert result.returncode != 0, (sim, text)
            assert "accumulator.hex" in text and "values, expected" in text, (sim, text)
            assert not re.search(r"^PASS", text, re.M), (sim, text)


# ----------------------------------------------------------------------------------------------- DPI bench
def test_dpi_bench_passes_the_good_unit(dpi_bench, env):
    result = run([dpi_bench, f"+txns={DPI_TXNS}", "+seed=1"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^PASS {DPI_TXNS}$", result.stdout, re.M)
    assert f"simulation: {DPI_TXNS} transactions (DPI calls)" in result.stdout
    sim_rate, c_rate = map(int, RATE.search(result.stdout).groups())
    assert sim_rate > 0 and c_rate > 0
    print(f"DPI bench: {sim_rate} transactions/s in simulation, {c_rate} npuq_requantize_one calls/s alone")


def test_dpi_bench_catches_the_broken_unit(dpi_bench, env):
    result = run([dpi_bench, f"+txns={DPI_TXNS}", "+seed=2", "+broken=1", "+max_report=50"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = re.search(rf"^FAIL (\d+) of {DPI_TXNS}$", result.stdout, re.M)
    assert failed and int(failed.group(1)) > 0, result.stdout
    reported = MISMATCH_DPI.findall(result.stdout)
    assert len(reported) == min(50, int(failed.group(1)))
    for acc, m0, e, s, z, lo, hi, rounding, expected, got in reported:
        acc, m0, e, s, z, lo, hi, expected, got = map(int, (acc, m0, e, s, z, lo, hi, expected, got))
        # the scoreboard's expected value (from the C ABI) is the independent reference's
        assert expected == int(R.requantize(np.array([acc]), m0, e, s, z, lo, hi, rounding)[0])
        # and every mismatch is a negative exact tie of RDBPOT in double rounding, as the broken unit predicts
        n = s - e
        h = int(R.srdhm(np.array([acc]), m0)[0])
        assert rounding == "double" and n >= 1 and h < 0 and h % (1 << n) == 1 << (n - 1)
        assert got == max(lo, min(hi, ((h + (1 << (n - 1))) >> n) + z))
