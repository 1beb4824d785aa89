"""``npuq selftest``: passes on a good build, fails (exit 1) on a wrong golden value, refuses (exit 2) a
corrupt case file or a kernel family the CPU lacks."""

from __future__ import annotations

import json

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
