"""A C program compiled against the installed npuq.h and libnpuq (flags from `npuq config`), run on random
cases: its outputs equal the Python API's, and bad arguments give statuses, never a crash."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

import npuq
from support import reference_numpy as R
from support.op_cases import conv_case

SOURCE = Path(__file__).resolve().parent / "c" / "capi_check.c"


def _compiler():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        if os.environ.get("NPUQ_CI") == "1":
            pytest.fail("no C compiler on PATH")
        pytest.skip("no C compiler on PATH")
    return cc


@pytest.fixture(scope="module")
def capi_check(tmp_path_factory):
    """capi_check built with the flags `npuq config` prints, warnings as errors, strict C99."""
    flags = subprocess.run(
        [sys.executable, "-m", "npuq.cli", "config", "--cflags", "--libs"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert any(f.startswith("-I") for f in flags) and "-lnpuq" in flags
    exe = tmp_path_factory.mktemp("capi") / "capi_check"
    cmd = [_compiler(), "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", str(SOURCE), "-o", str(exe), *flags]
    subprocess.run(cmd, check=True)
    return exe


def test_versions_match_the_python_package(capi_check):
    out = subprocess.run([capi_check, "version"], check=True, capture_output=True, text=True).stdout.split()
    fields = dict(zip(out[::2], out[1::2]))
    assert int(fields["abi"]) == npuq.capi.abi_version()
    assert int(fields["arithmetic"]) == npuq.ARITHMETIC_VERSION
    assert fields["version"] == npuq.__version__
    assert fields["isa"] == npuq.cpu_features()["active"]


def _write_case(d: Path, x, wt, bias, geometry, params):
    groups = geometry.get("groups", 1)
    sh, sw = R._pair(geometry.get("stride", 1), "stride")
    dh, dw = R._pair(geometry.get("dilation", 1), "dilation")
    t, b, left, r = R.normalize_padding(geometry.get("padding", 0))
    values = [
        wt.shape[3] * groups,
        wt.shape[0],
        wt.shape[1],
        wt.shape[2],
        sh,
        sw,
        dh,
        dw,
        t,
        b,
        left,
        r,
        groups,
        geometry.get("input_zero_point", 0),
        ["raise", "saturate", "wrap"].index(params.get("overflow", "raise")),
        params.get("output_zero_point", 0),
        params.get("act_min", -128),
        params.get("act_max", 127),
        ["double", "single"].index(params.get("rounding", "double")),
        *x.shape[:3],
    ]
    (d / "params.txt").write_text(" ".join(str(int(v)) for v in values))
    x.tofile(d / "x.bin")
    wt.tofile(d / "weight.bin")
    if bias is not None:
        np.asarray(bias, np.int32).tofile(d / "bias.bin")
    np.atleast_1d(np.asarray(params["multiplier"], np.int32)).tofile(d / "multiplier.bin")
    np.atleast_1d(np.asarray(params["exponent"], np.int32)).tofile(d / "exponent.bin")
    if params.get("channel_shift") is not None:
        np.asarray(params["channel_shift"], np.uint8).tofile(d / "shift.bin")


@settings(max_examples=5 * settings.default.max_examples, deadline=None)
@given(conv_case())
def test_conv2d_from_c_equals_python_api(capi_check, tmp_path_factory, case):
    x, wt, bias, geometry, params = case
    try:
        expected = npuq.ops.conv2d(x, wt, bias, **geometry, **params)
        acc = npuq.ops.Conv2d(wt, bias, **geometry, **params).accumulators(x)
    except OverflowError:
        expected = None
    d = tmp_path_factory.mktemp("case")
    _write_case(d, x, wt, bias, geometry, params)
    run = subprocess.run([capi_check, "conv2d", str(d)], capture_output=True, text=True)
    if expected is None:
        assert run.returncode == 1 and "NPUQ_ACCUMULATOR_OVERFLOW" in run.stderr
        return
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(np.fromfile(d / "out.bin", np.int8).reshape(expected.shape), expected)
    np.testing.assert_array_equal(np.fromfile(d / "acc.bin", np.int32).reshape(acc.shape), acc)


def test_bad_arguments_from_c_are_statuses(capi_check):
    run = subprocess.run([capi_check, "errors"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    expected = [
        ("NPUQ_VERSION_MISMATCH", "ABI version"),
        ("NPUQ_INVALID_ARGUMENT", "params is NULL"),
        ("NPUQ_INVALID_ARGUMENT", "x_count is 3"),
        ("NPUQ_INVALID_ARGUMENT", "out is NULL"),
        ("NPUQ_INVALID_ARGUMENT", "shift"),
        ("NPUQ_INVALID_ARGUMENT", "path"),
        ("NPUQ_IO_ERROR", "/nonexistent/program.npuq"),
        (None, "."),
        ("NPUQ_OK", ""),
    ]
    assert len(lines) == len(expected), run.stdout
    for line, (status, words) in zip(lines, expected):
        if status is not None:
            assert line.startswith(status), line
        assert words in line, line
    assert not lines[7].startswith("NPUQ_OK"), lines[7]  # a directory is not a program


def test_a_program_from_c_equals_the_emulator(capi_check, tmp_path):
    from support.program_builders import every_kind_program

    program = every_kind_program()
    path = tmp_path / "p.npuq"
    program.save(path)
    emu = npuq.Emulator(program)
    rng = np.random.default_rng(3)
    for batch, threads in ((1, 1), (3, 2)):
        x = rng.integers(-128, 128, (batch, *emu.input_shape), dtype=np.int8)
        x.tofile(tmp_path / "x.bin")
        out_dir = tmp_path / f"out{batch}"
        out_dir.mkdir()
        run = subprocess.run(
            [capi_check, "program", str(path), str(tmp_path / "x.bin"), str(batch), str(threads), str(out_dir)],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        expected_out, values = emu.run(x, capture=True)
        np.testing.assert_array_equal(np.fromfile(out_dir / "output.bin", np.int8), expected_out.reshape(-1))
        for i, op in enumerate(program.ops):
            got = np.fromfile(out_dir / f"op_{i}.bin", np.int8)
            np.testing.assert_array_equal(got, values[op.name].reshape(-1), err_msg=f"op {i} {op.name} ({op.kind})")
