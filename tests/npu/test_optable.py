"""The op table (npuq.npu.optable): one declarative entry per op kind, the only place the loader, the
emulator, the cost model and the golden vectors learn about kinds.

Checked here: every entry is complete and consistent, the public kind lists of the other modules are views
of the table, the loader's attribute / tensor / input checks come from the table, a program holding every
kind of the table loads, runs bit-exactly against the independent numpy reference, is costed and exported
as golden vectors, and a kind added to the table alone (no other module touched) does all of that too.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import npuq._validate
import npuq.npu.cost as cost
import npuq.npu.emulator as emulator
import npuq.npu.program as program_module
import npuq.npu.vectors as vectors
from npuq import ops
from npuq.npu import Emulator, Op, Program, ProgramError, load_program, optable
from npuq.npu.optable import COST_UNITS, OP_TABLE, Attr, OpFootprint, OpSpec, Tensor
from npuq.npu.program import program_from_json, validate
from npuq.quant import simulate
from support import ROOT
from support import npu_reference as NR
from support.program_builders import RNG_SEED, every_kind_program


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(RNG_SEED + 1).integers(-128, 128, (n, 6, 6, 3), dtype=np.int8)


def test_the_program_of_every_kind_holds_every_kind_of_the_table():
    """A kind added to the table must be added here too: the tests below then run it end to end."""
    assert sorted({op.kind for op in every_kind_program().ops}) == sorted(OP_TABLE)


# ====================================================================================== the entries
def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: str) -> set[str]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("kind", list(OP_TABLE))
def test_every_entry_has_every_field(kind):
    spec = OP_TABLE[kind]
    assert isinstance(spec, OpSpec) and spec.name == kind
    assert isinstance(spec.n_inputs, int) and spec.n_inputs >= 0  # 0: variadic
    assert all(isinstance(k, str) and isinstance(a, Attr) for k, a in spec.attrs.items())
    for t in spec.tensors.values():
        assert isinstance(t, Tensor)
        assert np.dtype(t.dtype).name in vectors.HEX_DIGITS  # a dtype program files and vector sets store
        assert t.layout in vectors.LAYOUT_AXES and len(vectors.LAYOUT_AXES[t.layout]) == t.ndim
    for fn in (spec.infer, spec.footprint, spec.run):
        assert callable(fn)
    for fn in (spec.run_cuda, spec.pack, spec.native, spec.mac_dims, spec.vector_ops):
        assert fn is None or callable(fn)
    assert spec.cost_unit in COST_UNITS
    assert (spec.mac_dims is not None) == (spec.cost_unit == "mac_array")
    assert (spec.vector_ops is not None) == (spec.cost_unit == "vector")
    assert isinstance(spec.view, bool) and isinstance(spec.layer, bool)
    assert not spec.layer or (spec.tensors and spec.pack is not None)
    if spec.variadic:
        assert spec.input_names(3) == ("input_0", "input_1", "input_2")
        assert spec.required_arrays_for(2) == ("input_0", "input_1", *spec.tensors, "output")
    else:
        assert len(spec.vector_inputs) == spec.n_inputs
        assert spec.required_arrays == spec.vector_inputs + tuple(spec.tensors) + ("output",)
    assert spec.docs, "every kind names the section that defines it"
    for anchor in spec.docs:
        doc, _, section = anchor.partition("#")
        assert section in _anchors(doc), f"{kind}: {anchor} names no heading of {doc}"


def test_the_entries_are_read_only():
    spec = OP_TABLE["conv2d"]
    with pytest.raises(TypeError):
        OP_TABLE["softmax"] = spec  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.attrs["bogus"] = Attr("int", 0, 1)  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.view = True  # type: ignore[misc]


def _stub(**kw) -> dict:
    base = dict(
        name="stub",
        n_inputs=1,
        attrs={},
        tensors={},
        infer=lambda op, where, s: s[0],
        footprint=lambda op, i, y, r, o: OpFootprint(r, o),
        run=lambda op, args, ctx: args[0],
        cost_unit="none",
        docs=("docs/program.md#3-ops",),
    )
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "change,what",
    [
        (dict(cost_unit="gpu"), "cost_unit"),
        (dict(cost_unit="mac_array"), "mac_dims"),
        (dict(cost_unit="vector"), "vector_ops"),
        (dict(mac_dims=lambda op, y: (1, 1, 1)), "mac_dims"),
        (dict(pack=lambda op, rounding, overflow: None, view=True), "pack"),
        (dict(n_inputs=0, vector_inputs=("a",)), "variadic"),
        (dict(layer=True), "layer"),
        (dict(n_inputs=2), "golden vector input"),
        (dict(view=True, cost_unit="vector", vector_ops=lambda op, i, y: 1), "view"),
        (dict(docs=()), "docs"),
        (dict(docs=("program.md 3",)), "docs"),
    ],
)
def test_an_inconsistent_entry_is_refused_when_the_table_is_built(change, what):
    OpSpec(**_stub())  # the stub itself is consistent
    with pytest.raises(ValueError, match=what):
        OpSpec(**_stub(**change))
    with pytest.raises(ValueError, match="attribute type"):
        Attr("float")


# ====================================================================================== the views of the table
def test_the_public_kind_lists_are_views_of_the_table():
    kinds = tuple(OP_TABLE)
    assert program_module.OP_KINDS == optable.OP_KINDS == vectors.OP_KINDS == kinds
    assert (
        cost.MAC_KINDS
        == tuple(k for k in kinds if OP_TABLE[k].cost_unit == "mac_array")
        == ("conv2d", "fully_connected")
    )
    assert cost.VECTOR_KINDS == tuple(k for k in kinds if OP_TABLE[k].cost_unit == "vector")
    assert set(cost.VECTOR_KINDS) == {
        "add",
        "avg_pool2d",
        "global_avg_pool",
        "max_pool2d",
        "lut",
        "mul",
        "concat",
        "upsample",
        "mean",
        "channel_shuffle",
        "slice",
        "pad",
    }
    assert vectors.LAYER_KINDS == optable.LAYER_KINDS == tuple(k for k in kinds if OP_TABLE[k].layer)
    assert optable.VIEW_KINDS == ("flatten",)
    assert dict(program_module.OP_TENSORS) == {
        k: {f: t.dtype for f, t in s.tensors.items()} for k, s in OP_TABLE.items() if s.tensors
    }
    assert program_module.LAYER_TENSORS == {
        "weight": np.int8,
        "bias": np.int32,
        "multiplier": np.int32,
        "exponent": np.int32,
        "shift": np.uint8,
    }
    for k in optable.LAYER_KINDS:
        assert tuple(OP_TABLE[k].tensors) == vectors.LAYER_ARRAYS
    for k, spec in OP_TABLE.items():
        n = 3 if spec.variadic else None
        assert vectors.required_arrays(k, n) == spec.required_arrays_for(n)
    assert [o.name for o in every_kind_program().layers()] == ["conv", "fc"]


def test_rounding_modes_and_overflow_policies_are_the_shared_ones():
    assert program_module.ROUNDING_MODES is npuq._validate.ROUNDING_MODES
    assert program_module.OVERFLOW_POLICIES is npuq._validate.OVERFLOW_POLICIES


def test_docs_program_md_lists_the_attributes_and_tensors_of_every_kind():
    """docs/program.md 3 has a row per kind naming each of its attributes and tensors."""
    text = (ROOT / "docs" / "program.md").read_text(encoding="utf-8")
    for kind, spec in OP_TABLE.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{kind}` |")]
        assert len(rows) == 1, f"docs/program.md 3 has no row for {kind}"
        for name in [*spec.attrs, *spec.tensors]:
            assert f"`{name}" in rows[0], f"docs/program.md 3: the {kind} row does not name {name!r}"


# ====================================================================================== the loader, through the table
def _graph_and_tensors(p: Program) -> tuple[dict, dict]:
    return json.loads(json.dumps(p.to_json())), dict(p.tensor_items())


def _op_json(graph: dict, kind: str) -> dict:
    return next(o for o in graph["ops"] if o["kind"] == kind)


def _load(graph: dict, tensors: dict):
    return program_from_json(graph, tensors, "t.npuq")


def test_the_loader_rejects_an_unknown_kind_naming_the_table_kinds():
    graph, tensors = _graph_and_tensors(every_kind_program())
    _op_json(graph, "max_pool2d")["kind"] = "softmax"
    with pytest.raises(ProgramError) as info:
        _load(graph, tensors)
    assert str(info.value) == f"t.npuq: op 1 'mp': unknown kind 'softmax'; known: {', '.join(OP_TABLE)}"


@pytest.mark.parametrize("kind", list(OP_TABLE))
def test_the_loader_rejects_unknown_attributes_listing_the_table_ones(kind):
    graph, tensors = _graph_and_tensors(every_kind_program())
    _op_json(graph, kind)["attrs"]["bogus"] = 1
    with pytest.raises(
        ProgramError,
        match=re.escape(f"unknown attribute(s) ['bogus']; this op kind has {sorted(OP_TABLE[kind].attrs)}"),
    ):
        _load(graph, tensors)


ATTRS = [(k, a) for k, s in OP_TABLE.items() for a in s.attrs if not s.attrs[a].optional]
OPTIONAL_ATTRS = [(k, a) for k, s in OP_TABLE.items() for a in s.attrs if s.attrs[a].optional]


@pytest.mark.parametrize("kind,attr", ATTRS)
def test_every_attribute_of_the_table_is_required_and_typed(kind, attr):
    graph, tensors = _graph_and_tensors(every_kind_program())
    del _op_json(graph, kind)["attrs"][attr]
    with pytest.raises(ProgramError, match=f"'{attr}'"):
        _load(graph, tensors)
    graph, tensors = _graph_and_tensors(every_kind_program())
    _op_json(graph, kind)["attrs"][attr] = "7"
    with pytest.raises(ProgramError, match=f"'{attr}'"):
        _load(graph, tensors)


@pytest.mark.parametrize("kind,attr", OPTIONAL_ATTRS)
def test_optional_attributes_may_be_absent_but_are_typed(kind, attr):
    graph, tensors = _graph_and_tensors(every_kind_program())
    assert attr not in _op_json(graph, kind)["attrs"]
    _load(graph, tensors)  # absent: the default
    for bad in ("7", [], [0.0], [float("inf")], [True]):
        graph, tensors = _graph_and_tensors(every_kind_program())
        _op_json(graph, kind)["attrs"][attr] = bad
        with pytest.raises(ProgramError, match=f"'{attr}'"):
            _load(graph, tensors)


@pytest.mark.parametrize("kind,attr", [(k, a) for k, a in ATTRS if OP_TABLE[k].attrs[a].type in ("int", "ints")])
def test_every_integer_attribute_is_range_checked_as_the_table_says(kind, attr):
    spec = OP_TABLE[kind].attrs[attr]
    for bad in (spec.lo - 1, spec.hi + 1):
        graph, tensors = _graph_and_tensors(every_kind_program())
        o = _op_json(graph, kind)
        o["attrs"][attr] = [bad] * (spec.length or len(o["inputs"])) if spec.type == "ints" else bad
        with pytest.raises(ProgramError, match=re.escape(f"'{attr}'") + r".*out of range"):
            _load(graph, tensors)


@pytest.mark.parametrize("kind", list(OP_TABLE))
def test_the_loader_checks_inputs_and_tensors_as_the_table_says(kind):
    spec = OP_TABLE[kind]
    p = every_kind_program()
    op = next(o for o in p.ops if o.kind == kind)
    if spec.variadic:
        op.inputs = op.inputs[:1]
        with pytest.raises(ProgramError, match=f"{kind} takes 2 to 64 inputs, got 1"):
            validate(p)
        op.inputs = op.inputs * 65
        with pytest.raises(ProgramError, match=f"{kind} takes 2 to 64 inputs, got 65"):
            validate(p)
    else:
        op.inputs = op.inputs + ["x"]
        with pytest.raises(ProgramError, match=f"{kind} takes {spec.n_inputs} input"):
            validate(p)
    if not spec.tensors:
        p = every_kind_program()
        next(o for o in p.ops if o.kind == kind).tensors["weight"] = np.zeros(1, np.int8)
        with pytest.raises(ProgramError, match=f"{kind} has no tensors"):
            validate(p)
        return
    for key, t in spec.tensors.items():
        p = every_kind_program()
        op = next(o for o in p.ops if o.kind == kind)
        del op.tensors[key]
        with pytest.raises(ProgramError, match=re.escape(f"missing tensor '{op.name}.{key}'")):
            validate(p)
        p = every_kind_program()
        op = next(o for o in p.ops if o.kind == kind)
        op.tensors[key] = op.tensors[key].astype(np.int16)
        with pytest.raises(ProgramError, match=re.escape(f"has dtype int16, expected {np.dtype(t.dtype)}")):
            validate(p)
    p = every_kind_program()
    next(o for o in p.ops if o.kind == kind).tensors["extra"] = np.zeros(1, np.int8)
    with pytest.raises(ProgramError, match=re.escape("unknown tensor(s) ['extra']")):
        validate(p)


# ====================================================================================== every kind, end to end
def test_every_kind_runs_bit_exactly_on_the_emulator():
    p = every_kind_program()
    x = _images()
    want = NR.run_program(p, x)
    for threads in (1, 2):
        out, values = Emulator(p, threads=threads).run(x, capture=True)
        assert set(values) == set(want)
        for name, v in want.items():
            np.testing.assert_array_equal(values[name], v, err_msg=f"{name} (threads={threads})")
        np.testing.assert_array_equal(out, want["fc"])


def test_every_kind_is_costed_by_its_table_unit():
    p = every_kind_program()
    shapes = validate(p)
    report = cost.estimate_cost(p)
    assert [o.kind for o in report.ops] == [op.kind for op in p.ops]
    for op, c in zip(p.ops, report.ops):
        spec = OP_TABLE[op.kind]
        assert c.unit == spec.cost_unit, op.kind
        in_shapes = [shapes[s] for s in op.inputs]
        if spec.cost_unit == "mac_array":
            assert c.macs == math.prod(spec.mac_dims(op, shapes[op.name])) > 0 and c.vector_ops == 0
            assert c.weight_bytes == op.tensors["weight"].size  # 8-bit weights
        elif spec.cost_unit == "vector":
            assert c.vector_ops == spec.vector_ops(op, in_shapes, shapes[op.name]) > 0 and c.macs == 0
        else:
            assert c.macs == c.vector_ops == c.cycles == 0 and c.utilization is None
    by = {o.name: o for o in report.ops}
    assert by["conv"].macs == 6 * 6 * 8 * 3 * 3 * 3 and by["fc"].macs == 5 * 28
    assert by["mp"].vector_ops == 6 * 6 * 8 * 9 and by["gap"].vector_ops == 6 * 6 * 8 and by["sum"].vector_ops == 288
    assert by["mp"].scratch_bytes == 0  # the native max pool clips its windows: no padded copy
    assert by["flat"].live_activation_bytes == 28 and by["flat"].offchip_bytes == 0  # a view: pooled's buffer
    assert by["act"].weight_bytes == 256 and by["act"].vector_ops == 6 * 6 * 8  # a table read per element
    assert by["cat"].vector_ops == by["shuf"].vector_ops * 20 // 8 == 6 * 6 * 20  # one move per output byte


def test_every_kind_exports_golden_vectors_that_verify(tmp_path):
    p = every_kind_program()
    x = _images(2)
    manifest = vectors.export_vectors(p, x, tmp_path / "golden")
    for entry, op in zip(manifest["ops"], p.ops):
        assert entry["required_arrays"] == list(OP_TABLE[op.kind].required_arrays_for(len(op.inputs)))
        assert sorted(entry["arrays"]) == sorted(entry["required_arrays"])
    vectors.write_dump(p, x, tmp_path / "dump", fmt="bin")
    result = vectors.verify(tmp_path / "golden", tmp_path / "dump")
    assert result.passed
    assert {o.name: o.status for o in result.ops}["flat"] in ("pass", "skipped")


def test_every_kind_saves_and_loads_back_the_same():
    p = every_kind_program()
    data = p.to_bytes()
    q = program_module.program_from_bytes(data, "t.npuq")
    assert q.to_bytes() == data


# ====================================================================================== one max pooling
def test_max_pooling_has_one_implementation(monkeypatch):
    """The emulator's and the simulation's max pooling are npuq.ops.max_pool2d (numpy on the host)."""
    x = np.random.default_rng(3).integers(-128, 128, (2, 7, 6, 5), dtype=np.int8)
    want = NR.max_pool2d(x, (3, 2), (2, 1), (1, 1, 0, 1)).astype(np.int8)
    np.testing.assert_array_equal(emulator.max_pool2d(x, (3, 2), (2, 1), (1, 1, 0, 1)), want)
    sym = NR.max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1)).astype(np.int8)
    got = simulate._max_pool_nhwc(x, dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)))
    np.testing.assert_array_equal(got, sym)
    assert simulate.max_pool2d is ops.max_pool2d is ops._ops_resample.max_pool2d
    calls = []

    def spy(*args, **kw):
        calls.append(args[1:])
        return real(*args, **kw)

    real = ops.max_pool2d
    monkeypatch.setattr(ops, "max_pool2d", spy)
    emulator.max_pool2d(x, (2, 2), (2, 2), (0, 0, 0, 0))
    Emulator(every_kind_program()).run(_images(1))
    assert calls == [((2, 2),), ((3, 3),)]


# ====================================================================================== a new kind: one table entry
def _clip_infer(op, where, in_shapes):
    return in_shapes[0]


def _clip_footprint(op, in_shapes, y, reads, out):
    return OpFootprint(reads, out, work=out)


def _clip_run(op, args, ctx):
    return np.clip(args[0], op.attrs["act_min"], op.attrs["act_max"]).astype(np.int8)


CLIP = OpSpec(
    "clip",
    1,
    attrs={"act_min": Attr("int", -128, 127), "act_max": Attr("int", -128, 127)},
    tensors={},
    infer=_clip_infer,
    footprint=_clip_footprint,
    run=_clip_run,
    cost_unit="vector",
    vector_ops=lambda op, in_shapes, y: math.prod(y),
    docs=("docs/program.md#7-adding-an-op-kind",),
)


def _clip_program() -> Program:
    p = every_kind_program()
    i = [o.name for o in p.ops].index("sum")
    p.ops.insert(i + 1, Op("clip", "clip", ["sum"], dict(act_min=-20, act_max=30), scale=0.2, zero_point=-7))
    p.ops[i + 2].inputs = ["clip"]  # the global average pool reads the clipped sum
    return p


def test_a_kind_added_to_the_table_alone_is_loaded_run_costed_and_exported(tmp_path, monkeypatch):
    """Adding an op kind is one table entry: the loader, the emulator, the cost model and the golden vectors
    take it with no other change (docs/program.md 7)."""
    p = _clip_program()
    with pytest.raises(ProgramError, match="unknown kind 'clip'"):
        validate(p)
    monkeypatch.setitem(optable._TABLE, "clip", CLIP)
    path = p.save(tmp_path / "clip.npuq")
    loaded = load_program(path)
    assert [o.kind for o in loaded.ops][3:5] == ["add", "clip"]
    x = _images(2)
    _, values = Emulator(loaded).run(x, capture=True)
    np.testing.assert_array_equal(values["clip"], np.clip(values["sum"], -20, 30))
    report = cost.estimate_cost(loaded)
    clip = next(o for o in report.ops if o.kind == "clip")
    assert (clip.unit, clip.vector_ops, clip.macs) == ("vector", 6 * 6 * 8, 0)
    manifest = vectors.export_vectors(loaded, x, tmp_path / "golden")
    assert next(o for o in manifest["ops"] if o["kind"] == "clip")["required_arrays"] == ["input", "output"]
    vectors.write_dump(loaded, x, tmp_path / "dump")
    assert vectors.verify(tmp_path / "golden", tmp_path / "dump").passed
    # the table's checks hold for it: its attributes, the clamp order, its input count
    bad = _clip_program()
    next(o for o in bad.ops if o.kind == "clip").attrs["act_min"] = 40
    with pytest.raises(ProgramError, match=r"act_min \(40\) > act_max \(30\)"):
        validate(bad)
    bad.ops[4].attrs = dict(act_min=0, act_max=1, slope=2)
    with pytest.raises(
        ProgramError, match=re.escape("unknown attribute(s) ['slope']; this op kind has ['act_max', 'act_min']")
    ):
        validate(bad)
    monkeypatch.undo()
    with pytest.raises(ProgramError, match="unknown kind 'clip'"):
        load_program(path)
