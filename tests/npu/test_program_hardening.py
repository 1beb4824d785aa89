"""Hostile program files: a tiny file must not make the loader, the cost model or the emulator use
unbounded memory or time, and every way of making it try is a ProgramError at load time.

Each test here reproduces one defect of the issue "Hardening: a golden reference that cannot be fooled"
(the resource limits of docs/program.md 4): padded / intermediate buffers, shape products beyond int64,
duplicate JSON keys, huge files read before their header is checked, quadratic liveness, a 0-d input to
``requantize``, and the emulator's per-batch memory. Files are written here without validation
(:func:`hostile_bytes`), the way an attacker or a broken tool would write them, with a correct checksum so
that only the field checks can catch them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import struct
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npuq.npu.emulator as emulator_module
import npuq.npu.program as P
from npuq import ops
from npuq.npu import Emulator, ProgramError, load_program
from npuq.npu.cost import activation_liveness, estimate_cost
from npuq.npu.program import (
    DIGEST_KEY,
    METADATA_KEY,
    Op,
    Program,
    _safetensors_bytes,
    content_digest,
    program_from_bytes,
    validate,
)
from support import ROOT
from support.program_builders import add_op, avg_pool_op, build_program, conv_op, fc_op, flatten_op, max_pool_op

SOURCE = "hostile.npuq"
MiB = 1 << 20


# ------------------------------------------------------------------------------------------------ builders
def conv(name, src, w_shape, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1) -> Op:
    return conv_op(name, src, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups)


def build(shape, *ops_, output=None) -> Program:
    """A program, not validated (the hostile ones must be representable)."""
    return build_program(shape, *ops_, output=output, model="hostile", check=False)


fc, max_pool, avg_pool, add, flatten = fc_op, max_pool_op, avg_pool_op, add_op, flatten_op


def hostile_bytes(prog: Program, graph_text: str | None = None) -> bytes:
    """The program's file as a writer that does not validate would write it (checksum included)."""
    text = graph_text if graph_text is not None else json.dumps(prog.to_json(), sort_keys=True, separators=(",", ":"))
    tensors = dict(prog.tensor_items())
    return _safetensors_bytes(tensors, {METADATA_KEY: text, DIGEST_KEY: content_digest(text, tensors)})


@contextlib.contextmanager
def allocation_limit(limit: int):
    """Fail if the Python allocations inside the block peak above ``limit`` bytes (numpy arrays and bytes
    objects are traced): a structural check of what was read or allocated, not a timing."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"{peak:,} bytes allocated, more than {limit:,}"


def rejected(prog: Program, *fragments: str) -> str:
    """Loading the program's file raises ProgramError naming the file and every fragment (regexes)."""
    data = hostile_bytes(prog)
    with allocation_limit(len(data) * 4 + 8 * MiB), pytest.raises(ProgramError) as info:
        program_from_bytes(data, SOURCE)
    msg = str(info.value)
    assert msg.startswith(SOURCE + ": "), msg
    for f in fragments:
        assert re.search(f, msg), f"{f!r} not in: {msg}"
    return msg


# ======================================================================= 1. padded / intermediate buffers
def test_max_pool_padding_that_asks_for_gigabytes_is_rejected_at_load():
    """A 1 KB file: kernel 65536, padding 32768 on a 1x1 input. The max pool kernel clips its windows (it
    makes no padded copy of the input), but 2^32 taps per window are beyond what the native pooling kernels
    take: loading refuses it, naming the op and the taps. The same padding in ceil mode, likewise."""
    prog = build((1, 1, 1), max_pool("pool", "x", (65536, 65536), padding=(32768,) * 4))
    rejected(prog, r"op 0 'pool'", "taps")
    prog = build((1, 1, 1), max_pool("pool", "x", (65536, 65536), padding=(32768,) * 4, ceil_mode=True))
    rejected(prog, r"op 0 'pool'", "taps")


@pytest.mark.parametrize("groups", [1, 8], ids=["dense", "depthwise"])
def test_dilated_padded_conv_on_a_1x1_input_is_rejected(groups):
    """Dilation 65536 with padding 65536 on a 1x1 input: the dense conv has a 65537 x 65537 output, the
    depthwise one (stride 65536, a 2 x 2 output) a native row ring of 65537 padded rows of 131073 columns."""
    c = 8 if groups == 8 else 1
    stride = (65536, 65536) if groups == 8 else (1, 1)
    prog = build(
        (1, 1, c),
        conv("conv", "x", (c, 2, 2, 1), stride=stride, padding=(65536,) * 4, dilation=(65536, 65536), groups=groups),
    )
    rejected(prog, r"op 0 'conv'", "working set|elements")


def test_avg_pool_kernel_beyond_the_native_limit_is_rejected_at_load():
    """A 65536 x 65536 average-pool window (2^32 taps) on a 1x1 input: cheap to compute, but the native pool
    kernels refuse windows above 2^30 taps, so the program loaded and then failed in the emulator."""
    prog = build((1, 1, 1), avg_pool("pool", "x", (65536, 65536), padding=(32768,) * 4))
    rejected(prog, r"op 0 'pool'", "kernel")


def test_pool_work_is_bounded():
    """A 2048 x 2048 max-pool window slid over a 4096 x 4096 map: 1.8e13 comparisons for one image."""
    prog = build((4096, 4096, 1), max_pool("pool", "x", (2048, 2048)))
    rejected(prog, r"op 0 'pool'", "operations")


def test_peak_of_values_alive_together_is_bounded():
    """16 branches of 64 MiB each, all alive until a chain of adds consumes them: every op is within its own
    limit but the values alive at once (the 4 MiB input and 16 x 64 MiB when the last branch runs) exceed
    the program's per-image limit."""
    branches = [conv(f"c{i}", "x", (16, 1, 1, 1)) for i in range(16)]
    adds, prev = [], "c0"
    for i in range(1, 16):
        adds.append(add(f"a{i}", prev, f"c{i}"))
        prev = f"a{i}"
    prog = build((2048, 2048, 1), *branches, *adds)
    rejected(prog, r"op 15 'c15'", "alive")


def test_grouped_conv_whose_packed_weights_dwarf_the_file_is_rejected():
    """2^19 groups of 2 output channels: the native plan pads every group to 16 channels with 36 bytes of
    constants each, about 400 times the file's bytes."""
    g = 1 << 19
    prog = build((1, 1, g), conv("conv", "x", (2 * g, 1, 1, 1), groups=g))
    rejected(prog, r"op 0 'conv'", "packed")


def test_conv_the_native_plan_would_refuse_is_rejected_at_load():
    """The native plan checks the layer on an input as large as the dilated kernel: 65537 x 65537 x 2^16
    is beyond its 2^40 limit, so this program loaded and then failed when the emulator was built."""
    prog = build(
        (1, 1, 1 << 16),
        conv("conv", "x", (1, 2, 2, 1 << 16), stride=(65536, 65536), padding=(65536,) * 4, dilation=(65536, 65536)),
    )
    rejected(prog, r"op 0 'conv'", "native")


def test_footprint_of_each_kind_by_hand():
    """What op_footprint counts, worked out from the buffers the emulator and the native kernels allocate."""
    shape = (10, 12, 16)
    prog = build(
        shape,
        max_pool("mp", "x", (3, 3), padding=(1, 1, 1, 1)),
        max_pool("mp0", "mp", (2, 2), (2, 2)),
        conv("dense", "mp0", (8, 3, 3, 16), padding=(1, 1, 1, 1)),
        conv("dw", "dense", (8, 3, 3, 1), padding=(1, 1, 1, 1), groups=8),
        avg_pool("avg", "dw", (2, 2)),
        add("sum", "avg", "avg"),
        flatten("flat", "sum"),
        fc("fc", "flat", 4 * 5 * 8, 10),
    )
    shapes = validate(prog)
    fp = {op.name: P.op_footprint(op, [shapes[s] for s in op.inputs], shapes[op.name]) for op in prog.ops}
    # max pool: the native kernel clips the windows, padded or not: no temporary
    assert fp["mp"].intermediate_bytes == 0 and fp["mp"].output_bytes == 10 * 12 * 16
    assert fp["mp0"].intermediate_bytes == 0 and fp["mp0"].work == 5 * 6 * 16 * 4
    # dense conv: one im2col panel of 24 rows per thread, reduction 3*3*16 = 144 (a multiple of 4), with 16
    # bytes of slack rounded up to 64, its int16 copy, and 64 bytes for the alignment of every native
    # scratch buffer
    assert fp["dense"].scratch_bytes == 3520 + 24 * 144 * 2 + 64 and fp["dense"].intermediate_bytes == 0
    assert fp["dense"].input_bytes == 5 * 6 * 16 and fp["dense"].output_bytes == 5 * 6 * 8
    # depthwise: a ring of 3 padded rows (6 + 2 columns) of 32 channel lanes of int32, and its extras
    assert fp["dw"].scratch_bytes == 3 * 8 * 32 * 4 + 32 * 4 + 8 + 2 * 1024 + 128 + 64
    assert fp["avg"].scratch_bytes == fp["avg"].intermediate_bytes == 0
    assert fp["sum"].input_bytes == 4 * 5 * 8 and fp["sum"].work == 4 * 5 * 8  # one value read twice
    assert fp["flat"].working_set_bytes == 0  # a view
    assert fp["fc"].scratch_bytes == 3904 + 24 * 160 * 2 + 64 and fp["fc"].work == 16 * 160
    for f in fp.values():
        assert f.working_set_bytes == f.input_bytes + f.output_bytes + f.intermediate_bytes + f.scratch_bytes


def test_cost_reports_the_working_set_the_loader_bounds():
    """`npuq cost` reports the emulator's working set (the im2col panel of a conv included), computed by the
    function the loader bounds; the NPU's activation peak is unchanged."""
    prog = build((30, 30, 4), conv("conv", "x", (4, 9, 9, 4), padding=(4, 4, 4, 4)))
    validate(prog)
    r = estimate_cost(prog)
    plan = P.memory_plan(prog)
    assert r.peak_activation_bytes == 2 * 30 * 30 * 4
    panel = 7808 + 24 * 324 * 2 + 64  # one im2col panel (24 rows of the 324-tap reduction) and its int16 copy
    assert r.ops[0].scratch_bytes == panel
    assert r.peak_working_set_bytes == plan.peak_bytes == 2 * 30 * 30 * 4 + panel
    assert r.ops[0].working_set_bytes == r.peak_working_set_bytes and r.peak_working_set_op == "conv"
    assert r.totals()["peak_working_set_bytes"] == plan.peak_bytes
    assert f"{plan.peak_bytes:,} B per image" in r.to_table()


def test_cost_cli_refuses_the_hostile_file(tmp_path, capsys):
    from npuq.cli import main

    path = tmp_path / "pool.npuq"
    path.write_bytes(hostile_bytes(build((1, 1, 1), max_pool("pool", "x", (65536, 65536), padding=(32768,) * 4))))
    assert main(["cost", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pool.npuq" in err and "op 0 'pool'" in err and "taps" in err


def test_limits_are_documented():
    """docs/program.md states every limit the loader enforces, with the values of the code."""
    doc = open(ROOT / "docs" / "program.md").read()
    for name, text in (
        ("MAX_FILE_BYTES", "2 GiB"),
        ("MAX_OP_BYTES", "256 MiB"),
        ("MAX_PEAK_BYTES", "1 GiB"),
        ("MAX_OP_PARAM_BYTES", "256 MiB"),
        ("MAX_PARAM_BYTES", "4 GiB"),
        ("MAX_TENSOR_ELEMENTS", "2^31 - 1"),
        ("MAX_OP_WORK", "2^34"),
    ):
        assert name in doc and text in doc, name
    assert P.MAX_FILE_BYTES == 2 << 30 and P.MAX_OP_BYTES == 256 * MiB and P.MAX_PEAK_BYTES == 1 << 30
    assert P.MAX_OP_PARAM_BYTES == 256 * MiB and P.MAX_PARAM_BYTES == 4 << 30
    assert P.MAX_TENSOR_ELEMENTS == 2**31 - 1 and P.MAX_OP_WORK == 2**34


# ============================================================================== 2. shape products
def _int64_overflow_chain() -> Program:
    """The issue's shape: 17 dilated convs grow a 2^20 x 2^20 map by 2^16 each (to 2162688), a 1x1 conv
    widens it to 2^21 channels; the flatten's size, 2162688^2 * 2^21, does not fit int64."""
    chain, src = [], "x"
    for i in range(17):
        chain.append(conv(f"grow{i}", src, (1, 2, 2, 1), padding=(65536,) * 4, dilation=(65536, 65536)))
        src = f"grow{i}"
    chain.append(conv("wide", src, (1 << 21, 1, 1, 1)))
    chain.append(flatten("flat", "wide"))
    return build((1 << 20, 1 << 20, 1), *chain)


def test_shape_products_beyond_int64_are_rejected_not_wrapped():
    prog = _int64_overflow_chain()
    with pytest.raises(ProgramError, match="elements"):
        validate(prog, SOURCE)
    with pytest.raises(ProgramError, match="elements"):
        estimate_cost(prog)  # never a report with negative sizes


def test_input_above_the_element_limit_is_rejected():
    prog = build((1 << 20, 1 << 20, 1 << 20), flatten("flat", "x"))
    rejected(prog, "input", "elements")


# ================================================================================= 3. duplicate keys
def _small_program() -> Program:
    return build(
        (6, 6, 2), conv("conv", "x", (4, 3, 3, 2), padding=(1, 1, 1, 1)), max_pool("pool", "conv", (2, 2), (2, 2))
    )


def test_duplicate_key_in_the_graph_is_rejected():
    """A first-wins reader would run stride 1, this loader ran stride 2: the same bytes, two programs."""
    prog = _small_program()
    text = json.dumps(prog.to_json(), sort_keys=True, separators=(",", ":"))
    assert text.count('"stride":[1,1]') == 1
    text = text.replace('"stride":[1,1]', '"stride":[1,1],"stride":[2,2]')
    with pytest.raises(ProgramError, match=r"hostile\.npuq: .*'stride'.*twice"):
        program_from_bytes(hostile_bytes(prog, text), SOURCE)


def _header_with_duplicate(data: bytes, key: str) -> bytes:
    """The file with a first ``key`` entry put in front of its header's: a first-wins reader takes that one,
    a last-wins reader the original (for a tensor, the same entry: still a malformed header)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n].decode().rstrip()
    if key == "__metadata__":
        value = json.dumps({METADATA_KEY: "{}"})
    else:
        value = re.search(r'"%s":(\{[^{}]*\})' % re.escape(key), header).group(1)
    header = ('{"%s":%s,' % (key, value) + header[1:]).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + n :]


@pytest.mark.parametrize("key", ["conv.bias", "__metadata__"])
def test_duplicate_key_in_the_safetensors_header_is_rejected(key):
    data = _header_with_duplicate(hostile_bytes(_small_program()), key)
    assert json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])  # valid JSON for a lenient parser
    with pytest.raises(ProgramError, match=r"hostile\.npuq: .*'%s'.*twice" % re.escape(key)):
        program_from_bytes(data, SOURCE)


def test_header_in_utf16_is_rejected():
    """safetensors headers are UTF-8; json.loads on bytes would guess UTF-16 from a byte-order mark, so the
    loader decodes UTF-8 itself (a reader that does not would see a program where others see garbage)."""
    data = hostile_bytes(_small_program())
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n].decode().rstrip().encode("utf-16")
    header += b" " * (-len(header) % 8)
    with pytest.raises(ProgramError, match="not valid JSON"):
        program_from_bytes(struct.pack("<Q", len(header)) + header + data[8 + n :], SOURCE)


# ======================================================================================= 4. big files
def _sparse_file(path, size: int, head: bytes) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # a hole: no disk blocks, no time to write


def test_bad_header_is_rejected_before_the_body_is_read(tmp_path):
    """A 64 MiB file whose size field is absurd: rejected after reading its first 8 bytes."""
    path = tmp_path / "big.npuq"
    _sparse_file(path, 64 * MiB, struct.pack("<Q", 1 << 40))
    with allocation_limit(4 * MiB), pytest.raises(ProgramError, match="header size field"):
        load_program(path)


def test_header_length_must_fit_in_the_file(tmp_path):
    path = tmp_path / "short.npuq"
    _sparse_file(path, 1000, struct.pack("<Q", 1000))  # 1000 header bytes cannot follow 8 of 1000
    with pytest.raises(ProgramError, match="header size field says 1000 bytes but the file has 992"):
        load_program(path)


def test_file_above_the_size_limit_is_rejected_unread(tmp_path):
    """A file over MAX_FILE_BYTES (a sparse one: no disk space) with a plausible header is refused from its
    size alone; before, the whole file was read into memory first."""
    path = tmp_path / "huge.npuq"
    _sparse_file(path, P.MAX_FILE_BYTES + 8, struct.pack("<Q", 8) + b"{}      ")
    with allocation_limit(4 * MiB), pytest.raises(ProgramError, match=r"larger than .*2 GiB"):
        load_program(path)


@pytest.mark.parametrize("target", ["/dev/zero", "symlink", "fifo"])
def test_devices_and_pipes_are_refused_without_reading(tmp_path, target):
    if target == "/dev/zero" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    path = tmp_path / "p.npuq"
    if target == "/dev/zero":
        path = "/dev/zero"
    elif target == "symlink":
        os.symlink("/dev/zero", path)
    else:
        os.mkfifo(path)
    with allocation_limit(MiB), pytest.raises(ProgramError, match="not a regular file"):
        load_program(path)


# ===================================================================================== 5. requantize
def test_requantize_of_a_0d_accumulator_is_a_scalar():
    """A 0-d accumulator is one value of one channel (npuq.quant.intmath.requantize takes it too): the
    result is 0-d, equal to the 1-element computation, on both kernels and for torch."""
    torch = pytest.importorskip("torch")
    from npuq.quant import intmath

    params = dict(multiplier=1518500250, exponent=-5, output_zero_point=3)
    want = ops.requantize(np.array([12345], np.int32), **params)[0]
    got = ops.requantize(np.array(12345, np.int32), **params)
    assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.int8 and got == want
    assert ops.reference.requantize(np.array(12345, np.int32), **params) == want
    t = ops.requantize(torch.tensor(12345, dtype=torch.int32), **params)
    assert isinstance(t, torch.Tensor) and t.shape == () and int(t) == int(want)
    assert int(intmath.requantize(torch.tensor(12345, dtype=torch.int32), 1518500250, -5, output_zero_point=3)) == want
    with pytest.raises(ValueError, match="channel"):  # a 0-d value has one channel
        ops.requantize(np.array(5, np.int32), multiplier=np.full(2, 2**30, np.int32), exponent=np.zeros(2, np.int32))


# ================================================================================== 6. linear liveness
class _OverBudget(Exception):
    pass


@contextlib.contextmanager
def line_budget(budget: int):
    """Count the Python lines executed inside the block (every frame, loop iterations included) and stop it
    once ``budget`` is exceeded: a count of work done, independent of the machine's speed."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count > budget:
                raise _OverBudget(f"more than {budget:,} lines executed")
        return local

    old = sys.gettrace()
    sys.settrace(lambda frame, event, arg: local)
    try:
        yield lambda: count
    finally:
        sys.settrace(old)


def _chain(n: int) -> Program:
    ops_ = [max_pool("p0", "x", (1, 1))] + [max_pool(f"p{i}", f"p{i - 1}", (1, 1)) for i in range(1, n)]
    return build((2, 2, 1), *ops_)


def test_liveness_of_a_20000_op_chain_is_linear():
    """activation_liveness must do a bounded amount of work per op (about 20 lines today): the quadratic
    version (a sum over every buffer for every op) runs 4e8 lines on this chain and is stopped by the
    budget after a few dozen ops."""
    n = 20_000
    prog = _chain(n)
    shapes = validate(prog)
    with line_budget(40 * n):
        live, peak, where = activation_liveness(prog, shapes)
    assert live == [8] * n and (peak, where) == (8, "p0")


def test_estimate_cost_is_linear_in_the_op_count():
    """The whole cost model (validation and memory plan included) within a per-op line budget: about 400
    lines per op today; anything quadratic runs thousands per op at this size."""
    n = 4_000
    prog = _chain(n)
    with line_budget(1000 * n):
        report = estimate_cost(prog)
    assert len(report.ops) == n


def _naive_liveness(prog: Program, shapes) -> list[int]:
    """docs/cost_model.md's definition, quadratic and obvious: a buffer is alive at op i if it was written at
    or before i and read at or after i (the output to the end); a flatten shares its input's buffer."""
    storage = {prog.input.name: prog.input.name}
    for op in prog.ops:
        storage[op.name] = storage[op.inputs[0]] if op.kind == "flatten" else op.name
    born = {prog.input.name: -1, **{op.name: i for i, op in enumerate(prog.ops) if storage[op.name] == op.name}}
    live = []
    for i in range(len(prog.ops)):
        total = 0
        for buf, b in born.items():
            reads = [j for j, op in enumerate(prog.ops) for s in op.inputs if storage[s] == buf]
            last = max([b] + reads + ([len(prog.ops)] if storage[prog.output] == buf else []))
            if b <= i <= last:
                total += math.prod(shapes[buf])
        live.append(total)
    return live


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["pool", "add", "flatten"]), st.integers(0, 10**6), st.integers(0, 10**6)),
        min_size=1,
        max_size=25,
    ),
    st.integers(0, 10**6),
)
def test_linear_liveness_equals_the_definition(steps, out_pick):
    """Random DAGs of pools, adds and flattens (4x4x2 values, flattened ones (32,)): the one-pass liveness
    equals the quadratic definition op by op."""
    ops_, maps, flats = [], ["x"], []
    for i, (kind, a, b) in enumerate(steps):
        name = f"v{i}"
        if kind == "pool":
            ops_.append(max_pool(name, maps[a % len(maps)], (1, 1)))
            maps.append(name)
        elif kind == "add":
            ops_.append(add(name, maps[a % len(maps)], maps[b % len(maps)]))
            maps.append(name)
        else:
            ops_.append(flatten(name, maps[a % len(maps)]))
            flats.append(name)
    prog = build((4, 4, 2), *ops_, output=ops_[out_pick % len(ops_)].name)
    shapes = validate(prog)
    live, peak, _ = activation_liveness(prog, shapes)
    assert live == _naive_liveness(prog, shapes)
    assert peak == max(live)


# ======================================================================== 7. the emulator's batches
def _wide_program() -> Program:
    # per image: input 32 KiB, conv output 256 KiB
    return build((64, 64, 8), conv("wide", "x", (64, 1, 1, 8)), max_pool("pool", "wide", (2, 2), (2, 2)))


def test_emulator_splits_a_batch_to_bound_its_memory(monkeypatch):
    prog = _wide_program()
    validate(prog)
    per_image = P.memory_plan(prog).peak_bytes
    monkeypatch.setattr(emulator_module, "BATCH_BYTES", 3 * per_image + 1, raising=False)
    sizes = []
    real = Emulator._run_batch

    def recording(self, xq, threads, keep_all):
        sizes.append(xq.shape[0])
        return real(self, xq, threads, keep_all)

    monkeypatch.setattr(Emulator, "_run_batch", recording)
    x = np.random.default_rng(0).integers(-128, 128, (10, 64, 64, 8), dtype=np.int8)
    em = Emulator(prog, threads=1)  # batch_size 500: the memory bound decides
    out = em.run(x)
    assert sizes == [3, 3, 3, 1]
    sizes.clear()
    out_c, values = em.run(x, capture=True)  # capture keeps every value: fewer images per call
    assert max(sizes) < 3 and sum(sizes) == 10
    assert np.array_equal(out, out_c)
    sizes.clear()
    assert np.array_equal(out, Emulator(prog, threads=1, batch_size=1).run(x))


def test_emulator_limits_the_threads_of_a_kernel_with_large_scratch(monkeypatch):
    """Each thread of the depthwise kernel allocates its own row ring: the threads of such a call are capped
    so that their scratch together stays within SCRATCH_BYTES (results do not depend on threads)."""
    prog = build((8, 8, 16), conv("dw", "x", (16, 3, 3, 1), padding=(1, 1, 1, 1), groups=16))
    shapes = validate(prog)
    scratch = P.op_footprint(prog.ops[0], [shapes["x"]], shapes["dw"]).scratch_bytes
    monkeypatch.setattr(emulator_module, "SCRATCH_BYTES", 3 * scratch, raising=False)
    em = Emulator(prog, threads=8)
    seen = []
    kernel = em._kernels["dw"]

    def recording(x, threads=None, **kw):
        seen.append(threads)
        return kernel(x, threads=threads, **kw)

    em._kernels["dw"] = recording
    x = np.random.default_rng(1).integers(-128, 128, (2, 8, 8, 16), dtype=np.int8)
    out = em.run(x)
    assert seen == [3]
    assert np.array_equal(out, Emulator(prog, threads=1).run(x))


# ================================================================================= 8. fuzz the bounds
_BIG = st.sampled_from([1, 2, 3, 255, 256, 4096, 32767, 32768, 65535, 65536])


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg", "conv", "dw"]),
    hw=st.tuples(st.sampled_from([1, 2, 7, 1000, 1 << 16, 1 << 20]), st.sampled_from([1, 3, 1 << 12, 1 << 20])),
    c=st.sampled_from([1, 8, 1 << 10]),
    k=st.tuples(_BIG, _BIG),
    s=st.tuples(_BIG, _BIG),
    d=st.tuples(_BIG, _BIG),
    pad=st.tuples(_BIG, _BIG, _BIG, _BIG),
)
def test_fuzz_huge_attributes_give_program_error_or_a_bounded_program(kind, hw, c, k, s, d, pad):
    """Random huge kernels, strides, dilations, paddings and input sizes: the loader either refuses the file
    with ProgramError or accepts a program whose memory plan is within every limit; it never allocates more
    than a small multiple of the file."""
    if kind in ("max", "avg"):
        pad = tuple(min(p, kk // 2) for p, kk in zip(pad, (k[0], k[0], k[1], k[1])))  # else a trivial rejection
        op = (max_pool if kind == "max" else avg_pool)("op", "x", k, s, pad)
    else:
        kh, kw = (min(k[0], 3), min(k[1], 3))
        ext = (d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1)
        pad = tuple(min(p, e - 1) for p, e in zip(pad, (ext[0], ext[0], ext[1], ext[1])))
        groups = c if kind == "dw" else 1
        op = conv("op", "x", (c if kind == "dw" else 4, kh, kw, 1 if kind == "dw" else c), s, pad, d, groups)
    prog = build((*hw, c), op)
    data = hostile_bytes(prog)
    with allocation_limit(len(data) * 4 + 8 * MiB):
        try:
            loaded = program_from_bytes(data, SOURCE)
        except ProgramError as exc:
            assert str(exc).startswith(SOURCE + ": ")
            return
    plan = P.memory_plan(loaded)
    assert plan.peak_bytes <= P.MAX_PEAK_BYTES
    assert all(f.working_set_bytes <= P.MAX_OP_BYTES and f.work <= P.MAX_OP_WORK for f in plan.footprints)


def test_emulator_frees_values_nothing_reads():
    """The memory plan counts a value up to its last reader; one that nothing reads dies where it is made.
    The emulator kept such values to the end of the batch: a program of many unread 200 MiB outputs passed
    the loader's bounds and then held all of them at once."""
    prog = build(
        (8, 8, 4),
        conv("unread", "x", (4, 1, 1, 4)),
        conv("read", "x", (4, 1, 1, 4)),
        max_pool("out", "read", (2, 2), (2, 2)),
    )
    em = Emulator(prog, threads=1)
    xq = np.zeros((2, 8, 8, 4), np.int8)
    assert set(em._run_batch(xq, 1, keep_all=False)) == {"out"}
    assert set(em._run_batch(xq, 1, keep_all=True)) == {"x", "unread", "read", "out"}
