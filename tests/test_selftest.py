"""``npuq selftest``: passes on a good build, fails (exit 1) on a wrong golden value, refuses (exit 2) a
corrupt case file or a kernel family the CPU lacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npuq import selftest
from npuq.cli import main


def test_the_embedded_cases_match_every_kernel_family(capsys):
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "selftest passed: 0 mismatch(es)" in out and "arithmetic version" in out and "BLAS:" in out


def test_the_cases_file_is_what_the_specs_give(tmp_path):
    path = tmp_path / "cases.json"
    selftest.write_cases(path)
    assert json.loads(path.read_text()) == json.loads(selftest.CASES_FILE.read_text())


def _edited(tmp_path, edit, *, keep_checksum: bool = False):
    doc = json.loads(selftest.CASES_FILE.read_text())
    edit(doc)
    if not keep_checksum:
        doc["sha256"] = selftest._file_digest(doc["cases"])
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_wrong_golden_value_fails_naming_the_case(tmp_path, capsys):
    def wrong(doc):
        case = next(c for c in doc["cases"] if c["name"] == "depthwise_3x3")
        case["sha256"] = "0" * 64

    assert main(["selftest", "--isa", "portable", "--cases", _edited(tmp_path, wrong)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH depthwise_3x3: the scalar reference's output differs from the golden hash" in out
    assert "selftest FAILED: 1 mismatch(es)" in out


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot be read"),
        ('{"format": "something else", "cases": []}', "not an npuq self-test case file"),
    ],
)
def test_an_unreadable_case_file_is_refused(tmp_path, capsys, content, message):
    path = tmp_path / "cases.json"
    path.write_text(content)
    assert main(["selftest", "--cases", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_corrupt_case_file_fails_its_checksum(tmp_path, capsys):
    def flip(doc):
        doc["cases"][0]["seed"] += 1

    assert main(["selftest", "--cases", _edited(tmp_path, flip, keep_checksum=True)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_a_case_that_describes_no_op_is_refused(tmp_path, capsys):
    def bad(doc):
        doc["cases"][0]["op"] = "softmax"

    assert main(["selftest", "--cases", _edited(tmp_path, bad)]) == 2
    assert "unknown op 'softmax'" in capsys.readouterr().err


def test_a_family_the_cpu_lacks_is_refused(monkeypatch, capsys):
    assert main(["selftest", "--isa", "avx9"]) == 2
    assert "kernel family 'avx9' is not supported" in capsys.readouterr().err
    monkeypatch.setenv("NPUQ_ISA", "avx9")
    assert selftest.main([]) == 2


def test_one_thread_only(capsys):
    assert selftest.main(["--threads", "1", "--isa", "portable"]) == 0
    assert "threads [1]" in capsys.readouterr().out


# --------------------------------------------------------------------------- a broken build, and no OpenMP
def test_a_fast_kernel_that_differs_from_the_reference_fails_naming_family_and_threads(monkeypatch, capsys):
    """What a miscompiled SIMD path looks like: one value of one family's output is off by one."""
    import npuq

    real_fast = selftest._fast

    def broken(case, threads):
        out = real_fast(case, threads)
        if case.name == "pointwise_wess" and npuq.cpu_features()["active"] == "portable" and threads > 1:
            out = out.copy()
            out.flat[7] = np.int8(out.flat[7] ^ 1)
        return out

    monkeypatch.setattr(selftest, "_fast", broken)
    assert main(["selftest", "--isa", "portable", "--threads", "2"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH pointwise_wess: portable kernels, 2 thread(s): 1 of " in out
    assert "selftest FAILED: 1 mismatch(es)" in out


def test_a_kernel_that_raises_is_a_failure_not_a_crash(monkeypatch, capsys):
    real_fast = selftest._fast

    def raising(case, threads):
        if case.name == "add":
            raise RuntimeError("illegal instruction emulated")
        return real_fast(case, threads)

    monkeypatch.setattr(selftest, "_fast", raising)
    assert main(["selftest", "--isa", "portable", "--threads", "1"]) == 1
    assert (
        "MISMATCH add: portable kernels, 1 thread(s): raised RuntimeError: illegal instruction"
        in capsys.readouterr().out
    )


def _without_openmp(monkeypatch):
    import npuq

    real = npuq.cpu_features
    monkeypatch.setattr(npuq, "cpu_features", lambda: dict(real(), openmp=False))


def test_a_build_without_openmp_runs_one_thread_and_says_so(monkeypatch, capsys):
    _without_openmp(monkeypatch)
    assert main(["selftest", "--isa", "portable"]) == 0
    out = capsys.readouterr().out
    assert "OpenMP off" in out and "threads [1]" in out and "selftest passed" in out


def test_threads_asked_of_a_build_without_openmp_are_refused(monkeypatch, capsys):
    _without_openmp(monkeypatch)
    assert main(["selftest", "--threads", "4"]) == 2
    err = capsys.readouterr().err
    assert "--threads 4: this build has no OpenMP" in err and err.count("\n") == 1


@pytest.mark.parametrize("threads", ["0", "100000"])
def test_a_thread_count_out_of_range_is_refused(capsys, threads):
    assert main(["selftest", "--threads", threads]) == 2
    assert "--threads must be in [1," in capsys.readouterr().err


# --------------------------------------------------------------------------- the GPU part
def _fake_gpus(monkeypatch, *errors, capability=(9, 0)):
    """This machine's CUDA info as if GPUs were visible; ``errors``: each device's kernel-image error."""
    from npuq import _cuda

    real = _cuda.info()
    n = len(errors)
    fake = dict(
        real,
        built=True,
        devices=n,
        reason="",
        names=[f"Fake GPU {i}" for i in range(n)],
        capabilities=[capability] * n,
        architectures="75-real,80-real,90-real,120",
        architectures_text="machine code for sm_75, sm_80, sm_90, sm_120, PTX for compute_120",
        kernel_image_errors=list(errors),
    )
    monkeypatch.setattr(_cuda, "info", lambda: fake)


def _gpu_on_the_cpu(monkeypatch, runs, corrupt=None):
    """The GPU runner replaced by the CPU kernels (no GPU here); records (case, device, engine)."""

    def fake(case, device, engine):
        runs.append((case.name, device, engine))
        out = selftest._fast(case, 1)
        if corrupt is not None and corrupt == (case.name, engine):
            out = out.copy()
            out.flat[0] = np.int8(out.flat[0] ^ 1)
        return out

    monkeypatch.setattr(selftest, "_gpu", fake)


def test_every_usable_gpu_runs_every_case_with_each_engine(monkeypatch, capsys):
    _fake_gpus(monkeypatch, None, "cudaErrorNoKernelImageForDevice")
    runs: list = []
    _gpu_on_the_cpu(monkeypatch, runs)
    assert main(["selftest", "--isa", "portable", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "CUDA device 0: Fake GPU 0 (compute capability 9.0): checked" in out
    assert (
        "CUDA device 1: Fake GPU 1 (compute capability 9.0): CUDA device 1 (Fake GPU 1, compute capability 9.0)" in out
    )
    assert "cannot run npuq's CUDA kernels" in out and "17 cases on CUDA device 0 (engines mma, dp4a)" in out
    layers = {name for name, _, engine in runs if engine is not None}
    assert {d for _, d, _ in runs} == {0}  # the GPU outside the build is reported, not run
    assert len(runs) == 17 + len(layers)  # conv / fully-connected twice: mma and dp4a
    assert {("stem_3x3_s2", 0, "mma"), ("stem_3x3_s2", 0, "dp4a"), ("add", 0, None)} <= set(runs)


def test_a_gpu_without_tensor_cores_runs_dp4a_only(monkeypatch, capsys):
    _fake_gpus(monkeypatch, None, capability=(7, 5))
    runs: list = []
    _gpu_on_the_cpu(monkeypatch, runs)
    assert main(["selftest", "--isa", "portable", "--threads", "1"]) == 0
    assert {engine for _, _, engine in runs} == {"dp4a", None}


def test_a_gpu_mismatch_fails_naming_device_and_engine(monkeypatch, capsys):
    _fake_gpus(monkeypatch, None)
    _gpu_on_the_cpu(monkeypatch, [], corrupt=("depthwise_3x3", "dp4a"))
    assert main(["selftest", "--isa", "portable", "--threads", "1"]) == 1
    assert "MISMATCH depthwise_3x3: CUDA device 0, dp4a engine: 1 of " in capsys.readouterr().out


def test_gpu_off_and_gpu_on(monkeypatch, capsys):
    _fake_gpus(monkeypatch, "cudaErrorNoKernelImageForDevice")
    assert main(["selftest", "--gpu", "on", "--isa", "portable"]) == 2
    assert "--gpu on, but no GPU can run" in capsys.readouterr().err
    _fake_gpus(monkeypatch, None)
    runs: list = []
    _gpu_on_the_cpu(monkeypatch, runs)
    assert main(["selftest", "--gpu", "off", "--isa", "portable", "--threads", "1"]) == 0
    assert runs == [] and "not checked (--gpu off)" in capsys.readouterr().out


@pytest.mark.gpu
def test_the_cuda_kernels_pass_on_this_gpu(capsys):
    from npuq import _cuda

    info = _cuda.info()
    if not (info["built"] and info["devices"] > 0):
        pytest.skip(f"no usable CUDA GPU ({info.get('reason')})")
    assert main(["selftest", "--gpu", "on", "--isa", "portable", "--threads", "1"]) == 0
    assert "cases on CUDA device 0" in capsys.readouterr().out
