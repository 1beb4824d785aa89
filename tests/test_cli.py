"""The command line as a new user meets it: every mistake is one line on stderr and exit code 2, never a
traceback; help texts show defaults and name only options that exist; the argument surface is fuzzed."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuq
from npuq import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``npuq ARGV`` in this process; argparse's SystemExit included."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, command: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("PTQ benchmark", "\r"))]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"npuq {command}: " if command else "npuq: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def program_file(tmp_path_factory) -> Path:
    """A small valid NPU program (conv, pool, fc) on 1 x 8 x 8 inputs."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    calib = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    program = npuq.compile(npuq.quantize(model, calib, activations="minmax"), name="tiny")
    return program.save(tmp_path_factory.mktemp("prog") / "tiny.npuq")


# ------------------------------------------------------------------------------------------ user mistakes
@pytest.mark.parametrize("command", ["compile", "quantize"])
def test_a_text_file_as_model_is_one_line(capsys, tmp_path, command):
    argv = [command, "--model", ROOT / "README.md"] + (["-o", tmp_path / "x.npuq"] if command == "compile" else [])
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, command, "README.md", "not a checkpoint")


def test_a_program_file_as_model_says_what_it_is(capsys, tmp_path, program_file):
    code, _, err = run_cli(capsys, "compile", "--model", program_file, "-o", tmp_path / "x.npuq")
    assert_one_line_error(code, err, "compile", "NPU program", "npuq run")


@pytest.mark.parametrize(
    "argv",
    [
        ["quantize", "--model", "m", "--bits", "9"],
        ["compile", "--model", "m", "-o", "x", "--bits", "1"],
        ["ptq-bench", "--bits", "8", "9"],
    ],
)
def test_bits_are_checked_by_argparse_with_the_range(capsys, argv):
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, argv[0], "--bits", "[2, 8]")


@pytest.mark.parametrize(
    "flag,value,fragment",
    [
        ("--batch-size", "0", "[1, 65536]"),
        ("--limit", "-5", ">= 1"),
        ("--threads", "2000", f"[1, {npuq.MAX_THREADS}]"),
        ("--threads", "0", "[1,"),
        ("--limit", "ten", "integer"),
    ],
)
def test_run_numbers_out_of_range(capsys, program_file, flag, value, fragment):
    code, _, err = run_cli(capsys, "run", program_file, flag, value)
    assert_one_line_error(code, err, "run", flag, fragment)


@pytest.mark.parametrize("value", ["0", "2000"])
def test_export_vectors_threads_are_checked_like_run(capsys, program_file, tmp_path, value):
    code, _, err = run_cli(
        capsys, "export-vectors", program_file, "fashion-mnist:test:1", tmp_path / "v", "--threads", value
    )
    assert_one_line_error(code, err, "export-vectors", "--threads", f"[1, {npuq.MAX_THREADS}]")


def test_run_images_without_labels_exits_2(capsys, program_file, tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((2, 1, 8, 8), np.float32))
    for argv in (["--images", images], ["--labels", images]):
        code, _, err = run_cli(capsys, "run", program_file, *argv)
        assert_one_line_error(code, err, "run", "--images and --labels")


def test_run_on_npy_files_works_and_bad_ones_are_one_line(capsys, program_file, tmp_path):
    images, labels = tmp_path / "images.npy", tmp_path / "labels.npy"
    np.save(images, np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32))
    np.save(labels, np.arange(5) % 3)
    code, out, err = run_cli(capsys, "run", program_file, "--images", images, "--labels", labels, "--limit", 3)
    assert code == 0, err
    assert "(" in out and "/3)" in out  # evaluated exactly the first 3 images
    np.save(labels, np.arange(4) % 3)
    code, _, err = run_cli(capsys, "run", program_file, "--images", images, "--labels", labels)
    assert_one_line_error(code, err, "run", "5 images but 4 labels")
    code, _, err = run_cli(capsys, "run", program_file, "--images", ROOT / "README.md", "--labels", labels)
    assert_one_line_error(code, err, "run", "README.md", "not a readable .npy file")


def test_missing_program_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", tmp_path / "nope.npuq")
    assert_one_line_error(code, err, "run", "nope.npuq")


def test_ptq_bench_missing_config(capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "ptq-bench", "--config", tmp_path / "missing.toml", "--out", out)
    assert_one_line_error(code, err, "ptq-bench", "missing.toml", "not found")
    assert not out.exists()


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('methods = ["nope"]\n', "unknown method"),
        ("bogus = 1\n", "unknown field"),
        ('task = "audio"\n', "unknown task"),
        ("bits = [\n", "not valid TOML"),
    ],
)
def test_ptq_bench_bad_config(capsys, tmp_path, text, fragment):
    config, out = tmp_path / "c.toml", tmp_path / "out"
    config.write_text(text)
    code, _, err = run_cli(capsys, "ptq-bench", "--config", config, "--out", out)
    assert_one_line_error(code, err, "ptq-bench", fragment)
    assert not out.exists()


def test_ptq_bench_unknown_method_lists_the_known_ones(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ptq-bench", "--methods", "wess", "nope", "--out", tmp_path / "out")
    line = assert_one_line_error(code, err, "ptq-bench", "nope")
    assert "per_channel" in line and "cle_wess" in line
    assert not (tmp_path / "out").exists()


def test_ptq_bench_failing_before_its_first_run_leaves_no_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NPUQ_FASHION_MNIST", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "results" / "ptq"
    code, _, err = run_cli(
        capsys,
        "ptq-bench",
        "--methods",
        "wess",
        "--bits",
        "8",
        "--modes",
        "weight_only",
        "--checkpoints",
        "mobilenet_v2_w0.5_sgd",
        "--limit",
        "10",
        "--out",
        out,
    )
    line = assert_one_line_error(code, err, "ptq-bench", f"NPUQ_FASHION_MNIST={tmp_path / 'empty'}")
    assert "set the environment variable" not in line  # the user did set it: say it points at the wrong place
    assert not out.exists()


def test_wrong_fashion_mnist_variable_says_it_is_wrong(tmp_path, monkeypatch):
    from npuq.data.fashion_mnist import DatasetNotFoundError, fashion_mnist_tensors

    monkeypatch.setenv("NPUQ_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist_tensors("test")
    assert f"NPUQ_FASHION_MNIST={tmp_path}" in str(info.value) and "point NPUQ_FASHION_MNIST" in str(info.value)


def test_no_command_and_unknown_command(capsys):
    code, _, err = run_cli(capsys)
    assert_one_line_error(code, err, "", "COMMAND")
    code, _, err = run_cli(capsys, "frobnicate")
    assert_one_line_error(code, err, "", "frobnicate")


def test_lrf_errors_carry_the_sub_command(capsys, tmp_path):
    code, _, err = run_cli(capsys, "lrf", "search", tmp_path / "missing.toml")
    assert_one_line_error(code, err, "lrf search", "missing.toml")


def test_distill_missing_config(capsys, tmp_path):
    code, _, err = run_cli(capsys, "distill", tmp_path / "missing.toml", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "distill", "missing.toml")


def test_npuq_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NPUQ_DEBUG", "1")
    with pytest.raises(ValueError, match="nope.npuq"):  # ProgramError, with its traceback
        cli.main(["run", str(tmp_path / "nope.npuq")])


def test_a_bug_is_not_disguised_as_a_user_error(capsys, monkeypatch):
    """Only input errors become one line; an internal error (here a TypeError) keeps its traceback."""

    def buggy(args):
        raise TypeError("bug")

    monkeypatch.setattr(cli, "_run_info", buggy)
    with pytest.raises(TypeError, match="bug"):
        cli.main(["info"])


# ------------------------------------------------------------------------------------------ threads
def test_thread_counts_are_bounded_everywhere():
    from npuq import _C

    assert npuq.MAX_THREADS == _C.MAX_THREADS == 256
    for call in (
        lambda: npuq.set_num_threads(2000),
        lambda: _C.set_num_threads(2000),
        lambda: npuq.ops.requantize(
            np.zeros((1, 2), np.int32), multiplier=1 << 30, exponent=0, output_zero_point=0, threads=2000
        ),
    ):
        with pytest.raises(ValueError, match=r"\[1, 256\]"):
            call()
    before = npuq.get_num_threads()
    npuq.set_num_threads(before)  # a valid count still works


def test_threads_2000_in_a_fresh_process_is_an_error_not_an_abort(program_file):
    """The reported crash: OpenMP's 'Thread creation failed' killed the process. Bounded now, in the native
    core too, so a script that asks for 2000 threads gets a Python exception."""
    code = (
        "import numpy as np, npuq\n"
        "x = np.zeros((1, 4, 4, 8), np.int8); w = np.ones((8, 1, 1, 8), np.int8)\n"
        "try:\n"
        "    npuq.ops.conv2d(x, w, multiplier=1 << 30, exponent=0, threads=2000)\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert result.returncode == 0, result.stderr
    assert "ValueError" in result.stdout and "256" in result.stdout


# ------------------------------------------------------------------------------------------ help and info
def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {}

    def walk(name, parser):
        parsers[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}", sub)

    walk("npuq", cli.build_parser())
    return parsers


def test_help_shows_defaults(capsys):
    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0 and "(default: 500)" in out and "(default: test)" in out
    code, out, _ = run_cli(capsys, "quantize", "--help")
    assert "(default: wess)" in out and "(default: 8)" in out and "{2..8}" in out


def test_every_option_a_help_text_refers_to_exists():
    """`npuq quantize --help` once pointed at a `--list` that did not exist."""
    parsers = _all_parsers()
    problems = []
    for name, parser in parsers.items():
        texts = [parser.description or ""] + [a.help or "" for a in parser._actions]
        for text in texts:
            for command, option in re.findall(r"`(npuq(?: [a-z-]+)*) (--[a-z-]+)", text):
                target = parsers.get(command)
                if target is None or option not in target._option_string_actions:
                    problems.append(f"{name}: `{command} {option}`")
    assert not problems, problems


def test_every_option_has_a_help_text():
    missing = [
        f"{name} {a.option_strings}"
        for name, p in _all_parsers().items()
        for a in p._actions
        if a.option_strings and not a.help and not isinstance(a, argparse._HelpAction)
    ]
    assert not missing, missing


def test_model_help_lists_the_shipped_checkpoints(capsys):
    from npuq.models.checkpoints import list_checkpoints

    names = list_checkpoints()
    assert names
    for command in ("quantize", "compile"):
        _, out, _ = run_cli(capsys, command, "--help")
        flat = " ".join(out.split())
        assert all(n in flat for n in names), (command, names)
    code, out, _ = run_cli(capsys, "quantize", "--list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == names


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"npuq {npuq.__version__} (arithmetic version {npuq.ARITHMETIC_VERSION})"


def test_info_says_whether_a_cuda_device_is_usable(capsys):
    from npuq import _cuda

    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    info = _cuda.info()
    cuda_lines = [line for line in out.splitlines() if line.startswith("CUDA")]
    if not info["built"]:
        assert "not built" in cuda_lines[0]
    else:
        # the architectures the build covers, then each device and whether this build's code runs on it
        assert cuda_lines[0].startswith("CUDA: built with machine code for sm_")
        if info["devices"] == 0:
            assert "no usable device" in cuda_lines[1] and (info["reason"] or "no GPU") in cuda_lines[1]
        else:
            assert len(cuda_lines) == 1 + info["devices"]
            for d, line in enumerate(cuda_lines[1:]):
                usable = _cuda.unusable_reason(info, d) is None
                assert line.startswith(f"CUDA device {d}: ") and line.endswith(": usable") == usable
    assert "CUDA build: True" not in out


def test_the_installed_entry_point_has_no_traceback(tmp_path):
    """`npuq` as installed (console script): a user mistake is one line and exit 2."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from npuq.cli import main; sys.exit(main())",
            "compile",
            "--model",
            str(ROOT / "README.md"),
            "-o",
            str(tmp_path / "x.npuq"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ assembly
def test_every_command_is_registered_by_the_module_the_table_names():
    import importlib

    parsers = _all_parsers()
    for command, module_name in cli.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_commands), module_name
        assert f"npuq {command}" in parsers, command
    top = {name.split()[1] for name in parsers if name.count(" ") == 1}
    assert top == {*cli.COMMANDS, "info"}


def test_no_module_of_the_package_imports_the_cli():
    """The command modules share npuq._cliutil; npuq.cli only assembles them (no import cycle through it)."""
    import ast

    package = Path(npuq.__file__).resolve().parent
    offenders = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if "npuq.cli" in names:
                offenders.append(str(path.relative_to(package)))
    assert not offenders, offenders


def _without_torch(*argv: str) -> subprocess.CompletedProcess:
    code = "import sys; sys.modules['torch'] = None\nfrom npuq.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )


def test_the_commands_that_need_no_torch_work_without_it(tmp_path):
    result = _without_torch("--help")
    assert result.returncode == 0 and "verify" in result.stdout and "quantize" in result.stdout, result.stderr
    for command in ("run", "verify", "export-vectors", "cost", "lrf"):
        result = _without_torch(command, "--help")
        assert result.returncode == 0 and "usage: npuq " + command in result.stdout, (command, result.stderr)
    result = _without_torch("run", str(tmp_path / "nope.npuq"))
    assert result.returncode == 2 and result.stderr.startswith("npuq run: ") and "nope.npuq" in result.stderr
    # a command that needs torch says so in one line
    for argv in (["quantize", "--model", "x"], ["distill", "c.toml", "--help"]):
        result = _without_torch(*argv)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (argv, result.stderr)
        assert result.stderr.startswith(f"npuq {argv[0]}: ") and "torch" in result.stderr, result.stderr


def test_a_command_imports_only_its_own_subsystem():
    code = (
        "import sys\nfrom npuq.cli import main\n"
        "try:\n    main(['verify', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'npuq.quant', 'npuq.distill', 'npuq.lrf') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------ fuzzing
# Tokens a careless user or a script could pass: every command, every option of every parser, values of
# every kind (negative, huge, non-numeric, empty, paths to the wrong sort of file). Heavy work is replaced
# by a sentinel, so an argv that passes every check ends there instead of running a benchmark.
class _Reached(Exception):
    pass


def _values(tmp: Path) -> list[str]:
    return [
        "0",
        "-1",
        "1",
        "8",
        "9",
        "2000",
        "99999999999999999999",
        "-5",
        "1e9",
        "nan",
        "",
        "x",
        "--",
        "-",
        "wess",
        "mse",
        "test",
        "weight_only",
        str(ROOT / "README.md"),
        str(tmp),
        str(tmp / "missing"),
        "/dev/null",
        str(ROOT / "configs" / "ptq_quick.toml"),
        "fashion-mnist:test:0",
        "mobilenet_v2_w0.5_sgd",
    ]


@pytest.fixture(scope="module")
def fuzz_tokens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    parsers = _all_parsers()
    commands = sorted({name.split(" ", 1)[1] for name in parsers if name != "npuq"})
    options = sorted({o for p in parsers.values() for o in p._option_string_actions})
    return commands, options, _values(tmp)


@pytest.fixture
def heavy_work_stubbed(monkeypatch):
    import npuq.apps.demo
    import npuq.apps.ptq_benchmark
    import npuq.apps.ptq_imagenet
    from npuq.distill import experiment
    from npuq.models import checkpoints
    from npuq.npu import emulator, vectors

    def reached(*args, **kwargs):
        raise _Reached

    for module, name in (
        (npuq.apps.ptq_benchmark, "run_benchmark"),
        (npuq.apps.ptq_imagenet, "run_benchmark"),
        (npuq.apps.demo, "run_demo"),
        (experiment, "run_experiment"),
        (checkpoints, "load_checkpoint"),
        (emulator.Emulator, "evaluate"),
        (vectors, "export_vectors"),
    ):
        monkeypatch.setattr(module, name, reached)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_command_lines_never_show_a_traceback(capsys, fuzz_tokens, heavy_work_stubbed, data):
    commands, options, values = fuzz_tokens
    command = data.draw(st.sampled_from(commands), label="command")
    rest = data.draw(st.lists(st.sampled_from(options + values), max_size=6), label="argv")
    argv = command.split() + rest
    try:
        code, out, err = run_cli(capsys, *argv)
    except _Reached:
        return  # every argument check passed; the real work is not run here
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("npuq"), (argv, err)


# ------------------------------------------------------------------------------------------ benchmark script
def test_percent_of_peak_uses_the_kernel_family_that_ran():
    """benchmarks/bench_conv.py once used the AVX-512 VNNI peak on CPUs without VNNI."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_conv_script", ROOT / "benchmarks" / "bench_conv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class FakeNpuq:
        def __init__(self, active):
            self.active = active

        def cpu_features(self):
            return {"active": self.active, "supported": ["portable", self.active]}

    assert module.kernel_family(FakeNpuq("avx2")) == "avx2"
    assert module.kernel_family(npuq) == npuq.cpu_features()["active"]
    assert module.MACS_PER_CYCLE["portable"] < module.MACS_PER_CYCLE["avx2"]
    assert set(npuq.cpu_features()["supported"]) <= set(module.MACS_PER_CYCLE)  # a peak for every family
    assert set(module.MACS_PER_CYCLE) == set(module.PEAK_INSTRUCTION)  # and the instruction it counts


@pytest.mark.parametrize("make", ["fifo", "device", "huge_header", "pickle"])
def test_run_images_from_hostile_files(capsys, program_file, tmp_path, make):
    """--images / --labels are read only as regular .npy files whose header matches their size."""
    images, labels = tmp_path / "images.npy", tmp_path / "labels.npy"
    np.save(labels, np.arange(2))
    if make == "fifo":
        os.mkfifo(images)  # would block np.load forever
    elif make == "device":
        images.symlink_to("/dev/zero")
    elif make == "huge_header":  # claims 2^36 float32 elements, holds 32 bytes
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (68719476736,), }"
        header += " " * (118 - len(header)) + "\n"
        images.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(32))
    else:
        np.save(images, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    code, _, err = run_cli(capsys, "run", program_file, "--images", images, "--labels", labels)
    assert_one_line_error(code, err, "run", str(images))
