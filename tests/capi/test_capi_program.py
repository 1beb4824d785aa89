"""The C ABI's whole-program functions (npuq_program_* / npuq_run_*, csrc/capi/program*.cc) run programs
bit for bit as npuq.Emulator does: every op's output of a run, for hand-built programs of every op kind (format
2 and a format-1 file), random small torch networks compiled by npuq.compile, both rounding modes, several
batch sizes and thread counts; npuq_program_run_op equals the op table's run of one op on random inputs; the
program's description (ops, shapes, zero points, scales) equals the Python loader's; the content digest
(SHA-256, written by the library) agrees with hashlib's on graphs of every length modulo the block size."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuq
from npuq.npu import Emulator, Op, Program, load_program
from npuq.npu.optable import OP_TABLE, RunContext
from npuq.npu.program import DIGEST_KEY, METADATA_KEY, content_digest
from support import ROOT
from support.capi_program import CApiError, CProgram, load_status, program_bytes, varied_program
from support.program_builders import build_program, every_kind_program, fc_op

FORMAT1_FILE = ROOT / "tests" / "npu" / "data" / "every_kind_format1.npuq"
ROUNDINGS = ("double", "single")


# ------------------------------------------------------------------------------------------- comparisons
def random_input(shape, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (batch, *shape)).astype(np.int8)


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.argwhere(a != b)
    idx = tuple(int(i) for i in diff[0])
    return f"{len(diff)} of {a.size} values differ, first at {idx}: {int(a[idx])} vs {int(b[idx])}"


def assert_runs_equal(program: Program, c: CProgram, x: np.ndarray, threads: int = 0) -> dict:
    """Every value of the C run equals the emulator's (capture=True); returns the emulator's values."""
    out, want = Emulator(program).run(x, capture=True)
    got = c.run(x, threads=threads)
    assert np.array_equal(got[-1], x)
    for i, op in enumerate(program.ops):
        g, w = got[i], want[op.name]
        assert g.shape == w.shape, f"op {i} '{op.name}': shape {g.shape} vs the emulator's {w.shape}"
        assert np.array_equal(g, w), f"op {i} '{op.name}' ({op.kind}): {_first_difference(g, w)}"
    assert np.array_equal(got[c.output], out)
    return want


def python_op(program: Program, op: Op, args: list[np.ndarray]) -> np.ndarray:
    """One op through the op table, as the emulator runs it (its packed kernel, the program's policies)."""
    spec = OP_TABLE[op.kind]
    kernel = spec.pack(op, program.rounding, program.overflow) if spec.pack else None
    out = spec.run(op, args, RunContext(kernel=kernel, rounding=program.rounding, overflow=program.overflow))
    return np.asarray(out)


def saved(program: Program, tmp_path, name: str = "p.npuq"):
    return program.save(tmp_path / name)


def with_policies(program: Program, rounding: str, overflow: str = "raise") -> Program:
    p = program.copy()
    p.rounding, p.overflow = rounding, overflow
    return p


# ------------------------------------------------------------------------------------------- whole runs
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("batch,threads", [(1, 0), (3, 1), (5, 2)])
def test_every_kind_program_equals_the_emulator(tmp_path, rounding, batch, threads):
    program = with_policies(every_kind_program(), rounding)
    c = CProgram(saved(program, tmp_path))
    assert_runs_equal(program, c, random_input(program.input.shape, batch, seed=batch), threads)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("overflow", ["raise", "saturate", "wrap"])
def test_varied_program_equals_the_emulator(tmp_path, rounding, overflow):
    program = with_policies(varied_program(), rounding, overflow)
    c = CProgram(saved(program, tmp_path))
    for batch, threads in ((1, 1), (4, 2), (2, 0)):
        assert_runs_equal(program, c, random_input(program.input.shape, batch, seed=7 * batch), threads)


def test_format1_file_equals_the_emulator():
    program = load_program(FORMAT1_FILE)
    assert program.format_version == 1
    c = CProgram(FORMAT1_FILE)
    assert [o["kind"] for o in c.ops] == [op.kind for op in program.ops]
    for batch, threads in ((1, 1), (3, 2)):
        assert_runs_equal(program, c, random_input(program.input.shape, batch, seed=batch), threads)


def test_results_do_not_depend_on_threads_or_batch(tmp_path):
    program = every_kind_program()
    c = CProgram(saved(program, tmp_path))
    x = random_input(program.input.shape, 6, seed=3)
    whole = c.run(x, threads=1)
    for threads in (0, 2, 7):
        got = c.run(x, threads=threads)
        assert all(np.array_equal(got[i], whole[i]) for i in whole)
    for lo, hi in ((0, 1), (1, 4), (4, 6)):
        part = c.run(x[lo:hi], threads=2)
        assert all(np.array_equal(part[i], whole[i][lo:hi]) for i in whole)


def test_concurrent_runs_of_one_program(tmp_path):
    """Objects are immutable: runs of one program from several threads at once give the single run's values."""
    program = varied_program()
    c = CProgram(saved(program, tmp_path))
    inputs = [random_input(program.input.shape, 3, seed=s) for s in range(4)]
    want = [c.run(x, threads=1) for x in inputs]
    got, errors = [None] * 4, []

    def work(k):
        try:
            for _ in range(3):
                got[k] = c.run(inputs[k], threads=1)
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors
    for k in range(4):
        assert all(np.array_equal(got[k][i], want[k][i]) for i in want[k])


_TORCH_CASES = 0


@settings(max_examples=8, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_compiled_torch_networks_equal_the_emulator(tmp_path_factory, data):
    """Small random CNNs (every op kind the compiler emits) quantized and compiled by npuq: the C ABI's run of
    the program file equals the emulator's, op by op."""
    import torch

    from npuq.models.zoo import randomize_batch_norms
    from support.small_networks import SmallNet, small_networks

    global _TORCH_CASES
    spec = data.draw(small_networks())
    rounding = data.draw(st.sampled_from(ROUNDINGS))
    weights = data.draw(st.sampled_from(["per_layer", "per_channel", "wess"]))
    torch.manual_seed(spec["seed"])
    model = randomize_batch_norms(SmallNet(spec), spec["seed"]).eval()
    g = torch.Generator().manual_seed(spec["seed"])
    shape = (spec["c_in"], spec["h"], spec["w"])
    calib = [torch.randn(4, *shape, generator=g) for _ in range(2)]
    qm = npuq.quantize(model, calib, weights=weights, bits=8, activations="minmax", rounding=rounding)
    program = npuq.compile(qm)
    path = program.save(tmp_path_factory.mktemp("net") / "net.npuq")
    c = CProgram(path)
    emu = Emulator(program)
    x = emu.quantize_input((1.5 * torch.randn(3, *shape, generator=g)).numpy())
    assert_runs_equal(program, c, x, threads=data.draw(st.sampled_from([0, 1, 2])))
    _TORCH_CASES += 1


def test_compiled_torch_networks_ran(request):
    if any(item.name == "test_compiled_torch_networks_equal_the_emulator" for item in request.session.items):
        assert _TORCH_CASES > 0


# ------------------------------------------------------------------------------------------- one op
@pytest.mark.parametrize("which", ["every_kind", "varied"])
def test_run_op_equals_the_op_table_on_random_inputs(tmp_path, which):
    program = every_kind_program() if which == "every_kind" else varied_program()
    c = CProgram(saved(program, tmp_path))
    shapes = program.shapes()
    rng = np.random.default_rng(5)
    seen = set()
    for i, op in enumerate(program.ops):
        for batch, threads in ((1, 1), (3, 2)):
            args = [rng.integers(-128, 128, (batch, *shapes[s])).astype(np.int8) for s in op.inputs]
            want = python_op(program, op, args)
            got = c.run_op(i, args, threads=threads)
            assert got.shape == want.shape, f"op {i} '{op.name}'"
            assert np.array_equal(got, want), f"op {i} '{op.name}' ({op.kind}): {_first_difference(got, want)}"
        seen.add(op.kind)
    if which == "every_kind":
        assert seen == set(OP_TABLE)


def test_run_op_on_a_run_s_own_values(tmp_path):
    program = every_kind_program()
    c = CProgram(saved(program, tmp_path))
    values = c.run(random_input(program.input.shape, 2, seed=9))
    for i, info in enumerate(c.ops):
        got = c.run_op(i, [values[k] for k in info["inputs"]])
        assert np.array_equal(got, values[i])


# ------------------------------------------------------------------------------------------- accumulator overflow
def _overflowing_program(overflow: str) -> Program:
    """A fully-connected layer whose accumulators leave int32 for most inputs (bias at the int32 edge)."""
    fc = fc_op("classifier", "x", 8, 3)
    fc.tensors["weight"] = np.full((3, 8), 120, np.int8)
    fc.tensors["weight"][1] = -120
    fc.tensors["bias"] = np.array([2**31 - 1, -(2**31), 5], np.int32)
    fc.attrs["input_zero_point"] = -128
    return with_policies(build_program((8,), fc), "double", overflow)


def test_accumulator_overflow_under_raise_names_the_op(tmp_path):
    program = _overflowing_program("raise")
    c = CProgram(saved(program, tmp_path))
    x = np.full((2, 8), 100, np.int8)
    with pytest.raises(OverflowError):
        Emulator(program).run(x)
    with pytest.raises(CApiError) as info:
        c.run(x)
    assert info.value.status == "NPUQ_ACCUMULATOR_OVERFLOW"
    assert "op 0 'classifier'" in info.value.message and "fully_connected" in info.value.message
    with pytest.raises(CApiError) as info:
        c.run_op(0, [x])
    assert info.value.status == "NPUQ_ACCUMULATOR_OVERFLOW" and "'classifier'" in info.value.message
    # inputs at the zero point add nothing: the same layer runs
    ok = np.full((1, 8), -128, np.int8)
    assert_runs_equal(program, c, ok)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_accumulator_overflow_policies_equal_the_emulator(tmp_path, overflow):
    program = _overflowing_program(overflow)
    c = CProgram(saved(program, tmp_path))
    x = random_input((8,), 4, seed=2)
    x[:2] = 127
    assert_runs_equal(program, c, x)


# ------------------------------------------------------------------------------------------- description
@pytest.mark.parametrize("which", ["every_kind", "varied", "format1"])
def test_description_equals_the_python_loader(tmp_path, which):
    if which == "format1":
        program, path = load_program(FORMAT1_FILE), FORMAT1_FILE
    else:
        program = every_kind_program() if which == "every_kind" else varied_program()
        path = saved(program, tmp_path)
    c = CProgram(path)
    shapes = program.shapes()
    index = {program.input.name: -1, **{op.name: i for i, op in enumerate(program.ops)}}
    assert c.input["shape"] == tuple(program.input.shape)
    assert c.input["count"] == int(np.prod(program.input.shape))
    assert (c.input["zero_point"], c.input["scale"]) == (program.input.zero_point, program.input.scale)
    assert len(c.ops) == len(program.ops)
    for i, (info, op) in enumerate(zip(c.ops, program.ops)):
        assert (info["name"], info["kind"]) == (op.name, op.kind)
        assert info["inputs"] == [index[s] for s in op.inputs]
        assert info["shape"] == shapes[op.name] and info["count"] == int(np.prod(shapes[op.name]))
        assert (info["zero_point"], info["scale"]) == (op.zero_point, op.scale)
        assert c.find(op.name) == i
    assert c.find("no_such_op") == -1 and c.find(program.input.name) == -1
    assert c.output == index[program.output]


# ------------------------------------------------------------------------------------------- the content digest
def _tiny(model: str) -> Program:
    fc = fc_op("fc", "x", 5, 3)
    fc.tensors["weight"] = np.arange(15, dtype=np.int8).reshape(3, 5) - 7
    return build_program((5,), fc, model=model)


def test_digest_agrees_with_hashlib_on_every_length_modulo_the_block(tmp_path):
    """Graph texts of 130 consecutive lengths (every remainder modulo the 64-byte block, both sides of the
    padding boundary): each stored hashlib digest is the one the library computes."""
    for n in range(130):
        path = saved(_tiny("m" * n), tmp_path, f"t{n}.npuq")
        assert load_status(path) == (0, ""), n


def test_digest_covers_graph_and_tensor_bytes(tmp_path):
    program = every_kind_program()
    graph = program.to_json()
    text = json.dumps(graph, sort_keys=True, separators=(",", ":"))
    tensors = dict(program.tensor_items())
    assert load_status(_write(tmp_path, "same.npuq", program_bytes(text, tensors)))[0] == 0
    # a field edit that keeps the program valid: only the checksum tells
    edited = json.loads(text)
    edited["model"] = "Every_kind"
    stale = content_digest(text, tensors)
    path = _write(tmp_path, "edited.npuq", program_bytes(edited, tensors, digest=stale))
    status, message = load_status(path)
    assert status == 3 and "checksum mismatch" in message and str(path) in message
    assert load_status(path, flags=1) == (0, "")
    npuq.load_program(path, check_digest=False)  # the Python loader agrees
    # one weight changed
    changed = dict(tensors)
    changed["conv.weight"] = tensors["conv.weight"].copy()
    changed["conv.weight"][0, 0, 0, 0] ^= 1
    path = _write(tmp_path, "weight.npuq", program_bytes(text, changed, digest=content_digest(text, tensors)))
    assert load_status(path)[0] == 3 and "checksum mismatch" in load_status(path)[1]
    assert load_status(path, flags=1)[0] == 0
    # no checksum at all
    path = _write(tmp_path, "none.npuq", program_bytes(text, tensors, digest=None))
    status, message = load_status(path)
    assert status == 3 and DIGEST_KEY in message
    assert load_status(path, flags=1)[0] == 0
    assert METADATA_KEY in load_status(_write(tmp_path, "nograph.npuq", _no_graph(tensors)))[1]


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _no_graph(tensors) -> bytes:
    return program_bytes("{}", tensors, metadata={"other": "x"}, graph_key=None)
