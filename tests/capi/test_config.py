"""npuq.get_include / get_library and `npuq config`: where a C build finds the C ABI."""

import subprocess
import sys
from pathlib import Path

import npuq


def _config(*args):
    return subprocess.run([sys.executable, "-m", "npuq.cli", "config", *args], capture_output=True, text=True)


def test_paths_hold_the_header_and_the_library():
    assert (Path(npuq.get_include()) / "npuq.h").is_file()
    lib = Path(npuq.get_library())
    assert lib.name == "libnpuq.so" and lib.is_file()


def test_config_prints_pkg_config_style_flags():
    run = _config("--cflags", "--libs")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [
        f"-I{npuq.get_include()}",
        f"-L{Path(npuq.get_library()).parent}",
        f"-Wl,-rpath,{Path(npuq.get_library()).parent}",
        "-lnpuq",
    ]
    assert _config("--library").stdout.strip() == npuq.get_library()
    assert _config("--include-dir").stdout.strip() == npuq.get_include()


def test_header_abi_version_is_the_library_s():
    import ctypes

    lib = ctypes.CDLL(npuq.get_library())
    assert int(_config("--abi-version").stdout) == lib.npuq_abi_version() == npuq.capi.abi_version()


def test_config_without_a_question_is_a_one_line_usage_error():
    run = _config()
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--cflags" in run.stderr and "Traceback" not in run.stderr
