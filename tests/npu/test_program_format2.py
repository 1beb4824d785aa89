"""Program format 2: version-1 files still load and run, unknown versions are refused by number, and the
loader names the op and the field of every malformed format-2 op (docs/program.md 3, 4).

``data/every_kind_format1.npuq`` was written by npuq's format-1 writer (the every-kind program of
tests/support/program_builders.py as it was then: conv2d, max_pool2d, avg_pool2d, add, global_avg_pool, flatten,
fully_connected), so it is a file from the outside, not one this version wrote.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from npuq.npu import Emulator, ProgramError, load_program
from npuq.npu.program import FORMAT_VERSION, program_from_bytes, program_from_json
from support import npu_reference as NR
from support.program_builders import every_kind_program

FORMAT1_FILE = Path(__file__).parent / "data" / "every_kind_format1.npuq"


def _images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(5).integers(-128, 128, (n, 6, 6, 3), dtype=np.int8)


# ====================================================================================== versions
def test_a_format1_file_loads_runs_and_saves_back_unchanged():
    data = FORMAT1_FILE.read_bytes()
    p = load_program(FORMAT1_FILE)
    assert p.format_version == 1 and FORMAT_VERSION == 2
    mp = next(op for op in p.ops if op.kind == "max_pool2d")
    assert "ceil_mode" not in mp.attrs  # format 1 has no ceil_mode; the loader reads it as false
    x = _images()
    out, values = Emulator(p).run(x, capture=True)
    want = NR.run_program(p, x)
    for name, v in want.items():
        np.testing.assert_array_equal(values[name], v, err_msg=name)
    assert p.to_bytes() == data  # still format 1, byte for byte


def _graph_and_tensors(p):
    return json.loads(json.dumps(p.to_json())), dict(p.tensor_items())


def test_a_format1_program_may_not_use_the_ops_or_attributes_of_format2():
    graph, tensors = _graph_and_tensors(load_program(FORMAT1_FILE))
    g = copy.deepcopy(graph)
    next(o for o in g["ops"] if o["kind"] == "max_pool2d")["attrs"]["ceil_mode"] = True
    with pytest.raises(ProgramError, match=r"op 1 'mp': unknown attribute\(s\) \['ceil_mode'\]"):
        program_from_json(g, tensors, "old.npuq")
    g = copy.deepcopy(graph)
    g["ops"].insert(5, dict(g["ops"][4], name="shuf", kind="channel_shuffle", inputs=["sum"], attrs={"groups": 2}))
    with pytest.raises(ProgramError, match=r"op 5 'shuf': op kind 'channel_shuffle' needs program format version 2"):
        program_from_json(g, tensors, "old.npuq")


@pytest.mark.parametrize("version", [0, 3, 99])
def test_an_unknown_format_version_is_refused_by_number(version):
    graph, tensors = _graph_and_tensors(every_kind_program())
    graph["format_version"] = version
    message = rf"format_version {version} is not supported: this npuq reads versions 1, 2"
    with pytest.raises(ProgramError, match=message):
        program_from_json(graph, tensors, "future.npuq")
    if version > 2:
        with pytest.raises(ProgramError, match="written by a newer npuq"):
            program_from_json(graph, tensors, "future.npuq")


def test_a_program_of_every_kind_is_written_as_format2_and_reads_back():
    p = every_kind_program()
    assert p.format_version == 2
    q = program_from_bytes(p.to_bytes(), "t.npuq")
    assert q.to_bytes() == p.to_bytes() and q.format_version == 2


# ====================================================================================== malformed format-2 ops
def _refused(edit, *fragments):
    p = every_kind_program()
    edit({op.name: op for op in p.ops})
    with pytest.raises(ProgramError) as info:
        from npuq.npu.program import validate

        validate(p, "bad.npuq")
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_a_lut_without_its_table_or_with_a_table_of_the_wrong_length_is_refused():
    _refused(lambda ops: ops["act"].tensors.pop("table"), "op 5 'act'", "missing tensor 'act.table'")
    _refused(
        lambda ops: ops["act"].tensors.update(table=np.zeros(255, np.int8)),
        "op 5 'act'",
        "'act.table' has shape (255,), expected (256,)",
    )
    _refused(
        lambda ops: ops["act"].tensors.update(table=np.zeros((16, 16), np.int8)),
        "'act.table' has shape (16, 16), expected 1 dimension(s)",
    )
    _refused(lambda ops: ops["act"].tensors.update(table=np.zeros(256, np.int32)), "has dtype int32, expected int8")
    _refused(lambda ops: ops["act"].attrs.update(function="softmax"), "attribute 'function' must be one of")


def test_a_broadcast_that_does_not_fit_is_refused():
    # se = mul(act (6, 6, 8), gap (1, 1, 8)); give it the (6, 6, 3) input as its scale instead
    _refused(lambda ops: setattr(ops["se"], "inputs", ["act", "x"]), "op 6 'se'", "does not broadcast")


def test_a_concat_of_mismatched_spatial_sizes_is_refused():
    _refused(
        lambda ops: setattr(ops["cat"], "inputs", ["half", "se", "padded"]),
        "op 12 'cat'",
        "input 'padded' (7, 9, 4) does not match 'half' (6, 6, 4)",
    )
    _refused(lambda ops: ops["cat"].attrs.update(zero_points=[0, 0]), "attribute 'zero_points' must be a list of 3")
    _refused(lambda ops: ops["cat"].attrs.update(multipliers=[2**30, 5, 2**30]), "'multipliers'[1] = 5 is not a Q31")


def test_shuffles_slices_and_pads_that_do_not_fit_are_refused():
    _refused(lambda ops: ops["shuf"].attrs.update(groups=3), "op 7 'shuf'", "groups (3) does not divide the 8 channels")
    _refused(lambda ops: ops["half"].attrs.update(end=9), "op 8 'half'", "channels [2, 9) are not a non-empty range")
    _refused(lambda ops: ops["half"].attrs.update(begin=6, end=6), "channels [6, 6)")
    _refused(lambda ops: ops["padded"].attrs.update(padding=[1, 0, -1, 0]), "op 9 'padded'", "'padding'[2] = -1")


def test_an_upsample_factor_of_zero_or_an_unknown_mode_is_refused():
    _refused(lambda ops: ops["up"].attrs.update(scale=[0, 2]), "op 10 'up'", "attribute 'scale'[0] = 0 is out of range")
    _refused(lambda ops: ops["up"].attrs.update(scale=[2, 65]), "attribute 'scale'[1] = 65 is out of range [1, 64]")
    _refused(lambda ops: ops["up"].attrs.update(mode="bicubic"), "attribute 'mode' must be one of ['nearest'")


def test_a_mean_with_a_bad_rounding_flag_or_multiplier_is_refused():
    _refused(lambda ops: ops["avg"].attrs.update(tflite_rounding=1), "'tflite_rounding' must be true or false")
    _refused(lambda ops: ops["avg"].attrs.update(multiplier=12345), "'multiplier' = 12345 is not a Q31 mantissa")
