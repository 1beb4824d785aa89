"""Hostile program files and bad arguments against the C ABI's program functions (csrc/capi/program*.cc).

The Python loader (npuq.load_program) is the reference: every file here, mutated at random by hypothesis (JSON
edits of the graph and the header re-saved with a valid checksum, tensor edits, flipped / truncated / appended
bytes, character edits of the JSON text) or crafted for one rule (JSON details, resource limits, the file
itself), gets the same verdict from both: refused by Python means a non-OK status from C (never a crash),
accepted by Python means accepted by C, and then both runs give equal values. A segfault fails the run. Bad
arguments (NULL pointers, wrong counts, batch 0, op indices out of range, unknown flags) give
NPUQ_INVALID_ARGUMENT with a message."""

from __future__ import annotations

import copy
import ctypes as C
import json
import math
import os
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuq
from npuq.npu import Emulator, Op, ProgramError
from npuq.npu.optable import OP_KINDS, OP_TABLE
from npuq.npu.program import MAX_FILE_BYTES, memory_plan
from support import ROOT
from support.capi_program import (
    NPUQ_LOAD_SKIP_DIGEST,
    CApiError,
    CProgram,
    OpInfo,
    ValueInfo,
    i8p,
    i64,
    last_error,
    lib,
    load_status,
    program_bytes,
    varied_program,
)
from support.program_builders import (
    add_op,
    avg_pool_op,
    build_program,
    conv_op,
    every_kind_program,
    flatten_op,
    max_pool_op,
)

FORMAT1_FILE = ROOT / "tests" / "npu" / "data" / "every_kind_format1.npuq"
OK, INVALID, OVERFLOW, PROGRAM_ERROR, IO_ERROR = 0, 1, 2, 3, 4
RUN_BUDGET = 2_000_000  # elements per image and operations: a mutated program larger than this is loaded, not run
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ============================================================================== the differential check
def _base(name: str):
    """(graph dict, tensors) of a valid program."""
    if name == "every_kind":
        program = every_kind_program()
    elif name == "varied":
        program = varied_program()
    else:
        program = npuq.load_program(FORMAT1_FILE)
    graph = json.loads(json.dumps(program.to_json(), sort_keys=True))
    return graph, dict(program.tensor_items())


BASES = {name: _base(name) for name in ("every_kind", "varied", "format1")}


def _python_verdict(path, skip_digest: bool):
    """("ok", program) / ("refused", message) / ("error", exception) of the Python loader."""
    try:
        return "ok", npuq.load_program(path, check_digest=not skip_digest)
    except ProgramError as exc:
        return "refused", str(exc)
    except Exception as exc:  # the reference itself failing otherwise: reported, so that a test names it
        return "error", exc


def _comparable(python: str, c: str) -> bool:
    """Whether the C message must be the Python one word for word: not where Python's Unicode tables decide
    how a character prints, nor for nesting, which Python meets as a recursion limit (C: 64 levels)."""
    return python.isascii() and "\\u" not in python and "\\U" not in python and "nest" not in python + c


def _affordable(program) -> bool:
    plan = memory_plan(program)
    shapes = program.shapes()
    values = sum(math.prod(s) for s in shapes.values())
    return values <= RUN_BUDGET and sum(f.work for f in plan.footprints) <= RUN_BUDGET


def same_verdict(path, skip_digest: bool = False, run: bool = True) -> str:
    """Load ``path`` with both loaders and assert they agree; when both accept, run both on random inputs and
    compare every value. Returns the Python verdict."""
    verdict, detail = _python_verdict(path, skip_digest)
    status, message = load_status(path, NPUQ_LOAD_SKIP_DIGEST if skip_digest else 0)
    if verdict != "ok":
        assert status in (PROGRAM_ERROR, IO_ERROR), f"Python: {detail}; C: status {status} {message!r}"
        assert message.startswith(f"npuq_program_load: {path}: "), message
        if verdict == "refused" and _comparable(detail, message):
            assert message.removeprefix("npuq_program_load: ") == detail
        return verdict
    assert status == OK, f"Python accepts the file, C refuses it: {message}"
    if run and _affordable(detail):
        _same_run(detail, path, skip_digest)
    return verdict


def _same_run(program, path, skip_digest: bool) -> None:
    shape = tuple(program.input.shape)
    x = np.random.default_rng(len(program.ops)).integers(-128, 128, (2, *shape)).astype(np.int8)
    c = CProgram(path, skip_digest=skip_digest)
    try:
        _, want = Emulator(program, threads=1).run(x, capture=True)
        py_error = None
    except OverflowError:
        py_error = "NPUQ_ACCUMULATOR_OVERFLOW"
    except (ValueError, MemoryError) as exc:
        py_error = f"other: {exc}"
    try:
        got = c.run(x, threads=1)
        c_error = None
    except CApiError as exc:
        c_error = exc.status
    if py_error is None:
        assert c_error is None, f"the emulator runs the program, C gives {c_error}: {last_error()}"
        for i, op in enumerate(program.ops):
            assert np.array_equal(got[i], want[op.name]), f"op {i} '{op.name}' differs"
    elif py_error == "NPUQ_ACCUMULATOR_OVERFLOW":
        assert c_error == py_error
    else:
        assert c_error is not None, f"the emulator fails ({py_error}), C runs"


def write(tmp_path, data: bytes, name: str = "p.npuq"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ============================================================================== mutations (hypothesis)
INTERESTING_INTS = [
    -(2**63), -(2**31) - 1, -(2**31), -129, -128, -32, -1, 0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 22, 23, 30, 31, 63, 64,
    65, 127, 128, 255, 256, 4096, 2**16, 2**16 + 1, 2**20, 2**20 + 1, 2**23 + 1, 2**30 - 1, 2**30, 2**31 - 1,
    2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64, 10**30,
]  # fmt: skip
STRINGS = [
    "", "x", "conv", "fc", "sum", "flat", "x\n", "double", "single", "raise", "saturate", "wrap", "HWC", "CHW",
    "nearest", "bilinear", "custom", "relu", "npuq-program", "a.b", "-a", "0a", "\u00e9", "\U0001f600", "a" * 129,
    *OP_KINDS,
]  # fmt: skip


def _nested(depth: int):
    v: object = 0
    for _ in range(depth):
        v = [v]
    return v


def _values(old, deep: bool):
    """Replacement values for ``old``: its neighbours, interesting integers and strings, other JSON types."""
    options = [
        st.sampled_from(INTERESTING_INTS),
        st.integers(-(2**70), 2**70),
        st.sampled_from(STRINGS),
        st.text(max_size=4),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.5, 1.0, -0.0, 1e-45, 1.5e-45, 3.4028234663852886e38, 3.5e38, 1e308, 0.0625]),
        st.lists(st.sampled_from([-1, 0, 1, 2, 3, 8, 256, 2**16, 2**31]), max_size=5),
        st.just({}),
        st.just([[1, 2], [3]]),
    ]
    if isinstance(old, bool):
        options.append(st.just(not old))
    elif isinstance(old, int):
        options.append(st.sampled_from([old - 1, old + 1, -old, 2 * old, old + 2**16, old * 1000, 2**31 - old]))
    elif isinstance(old, list) and old and all(isinstance(v, int) and not isinstance(v, bool) for v in old):
        options.append(
            st.integers(0, len(old) - 1).flatmap(
                lambda i: st.sampled_from([-1, 1, 2**16]).map(lambda d: old[:i] + [old[i] + d] + old[i + 1 :])
            )
        )
        options.append(st.just(old + old[-1:]))
        options.append(st.just(old[:-1]))
    if deep:
        options.append(st.integers(60, 70).map(_nested))
    return st.one_of(*options)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _at(obj, path):
    for k in path:
        obj = obj[k]
    return obj


@st.composite
def json_edits(draw, doc, protect=()):
    """``doc`` after one to three random edits: a value replaced, a member deleted or added, a list element
    dropped or repeated. Paths under ``protect`` are left alone."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p and not any(p[: len(q)] == q for q in protect)]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _at(doc, path[:-1]), path[-1]
        old = parent[key]
        deep = path[0] == "info"  # deeper than 64 only where the Python loader looks at the depth
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "repeat"]))
        if action == "replace":
            parent[key] = draw(_values(old, deep))
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(old, dict):
            old[draw(st.sampled_from(["extra", "name", "kind", "ceil_mode", "attrs", "x", "__metadata__"]))] = draw(
                _values(0, deep)
            )
        elif action == "repeat" and isinstance(old, list) and old:
            i = draw(st.integers(0, len(old) - 1))
            old.insert(i, copy.deepcopy(old[i]))
    return doc


@settings(**_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data(), skip_digest=st.booleans())
def test_graph_edits_get_the_python_verdict(tmp_path_factory, base, data, skip_digest):
    graph, tensors = BASES[base]
    edited = data.draw(json_edits(graph))
    path = write(tmp_path_factory.mktemp("g"), program_bytes(edited, tensors))
    same_verdict(path, skip_digest)


def _tensor_edit(draw, tensors):
    tensors = dict(tensors)
    key = draw(st.sampled_from(sorted(tensors)))
    arr = tensors[key]
    action = draw(st.sampled_from(["dtype", "reshape", "shorter", "longer", "value", "delete", "stray", "empty"]))
    if action == "dtype":
        tensors[key] = arr.astype(draw(st.sampled_from([np.int8, np.uint8, np.int32, np.int16, np.float32])))
    elif action == "reshape":
        tensors[key] = draw(st.sampled_from([arr.reshape(-1), arr[None], arr.reshape(arr.shape + (1,))]))
    elif action == "shorter" and arr.shape and arr.shape[0] > 1:
        tensors[key] = arr[:-1]
    elif action == "longer" and arr.shape:
        tensors[key] = np.concatenate([arr, arr[:1]])
    elif action == "value" and arr.size:
        flat = arr.astype(np.int64).reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(
            st.sampled_from([-(2**31), -129, -128, -127, -64, -32, -1, 0, 1, 15, 16, 63, 64, 127, 255, 2**30 - 1,
                             2**30, 2**31 - 1])
        )  # fmt: skip
        info = np.iinfo(arr.dtype)
        tensors[key] = np.clip(flat, info.min, info.max).astype(arr.dtype).reshape(arr.shape)
    elif action == "delete":
        del tensors[key]
    elif action == "stray":
        tensors[draw(st.sampled_from(["nosuch.weight", key.split(".")[0] + ".extra", "x.weight"]))] = arr
    elif action == "empty":
        tensors[key] = np.zeros((0,) + arr.shape[1:], arr.dtype)
    return tensors


@settings(**_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_tensor_edits_get_the_python_verdict(tmp_path_factory, base, data):
    graph, tensors = BASES[base]
    edited = _tensor_edit(data.draw, tensors)
    if data.draw(st.booleans()):  # the graph lists the tensors it has now (or the edit stays a missing one)
        graph = json_for_tensors(graph, edited)
    path = write(tmp_path_factory.mktemp("t"), program_bytes(graph, edited))
    same_verdict(path)


def json_for_tensors(graph, tensors):
    graph = copy.deepcopy(graph)
    for op in graph["ops"]:
        op["tensors"] = sorted(k.split(".", 1)[1] for k in tensors if k.split(".", 1)[0] == op["name"])
    return graph


@settings(**_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_header_edits_get_the_python_verdict(tmp_path_factory, base, data):
    """The safetensors header edited as JSON (dtypes, shapes, offsets, entries, metadata): the graph string
    itself is left alone, so what is tested is the table of tensors and the metadata map."""
    graph, tensors = BASES[base]
    holder = {}

    def edit(header):
        holder["h"] = data.draw(json_edits(header, protect=(("__metadata__", "npuq.program"),)))
        return holder["h"]

    path = write(tmp_path_factory.mktemp("h"), program_bytes(graph, tensors, header_edit=edit))
    same_verdict(path, skip_digest=data.draw(st.booleans()))


@settings(**_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_byte_mutations_get_the_python_verdict(tmp_path_factory, base, data):
    graph, tensors = BASES[base]
    raw = bytearray(program_bytes(graph, tensors))
    action = data.draw(st.sampled_from(["flip", "flip", "byte", "truncate", "append", "insert", "size"]))
    if action == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "byte":
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif action == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif action == "append":
        raw += data.draw(st.binary(min_size=1, max_size=16))
    elif action == "insert":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        (n,) = struct.unpack("<Q", raw[:8])
        new = data.draw(st.sampled_from([0, 1, n - 8, n - 1, n + 1, n + 8, len(raw), 2**63, 2**64 - 1, 100 << 20]))
        raw[:8] = struct.pack("<Q", new % 2**64)
    path = write(tmp_path_factory.mktemp("b"), bytes(raw))
    same_verdict(path, skip_digest=data.draw(st.booleans()))


def _attr_values(attr, n_inputs: int):
    """Values of an attribute inside its declared range (mostly near its low end, where shapes still chain)."""

    def one(lo, hi):
        return st.one_of(st.integers(lo, min(hi, lo + 8)), st.integers(lo, hi), st.sampled_from([lo, hi]))

    q31 = st.one_of(st.just(0), st.integers(2**30, 2**31 - 1), st.sampled_from([2**30, 2**31 - 1]))
    if attr.type == "int":
        return one(attr.lo, attr.hi)
    if attr.type == "q31":
        return q31
    if attr.type == "bool":
        return st.booleans()
    if attr.type == "choice":
        return st.sampled_from(attr.choices)
    n = attr.length or n_inputs
    return st.lists(q31 if attr.type == "q31s" else one(attr.lo, attr.hi), min_size=n, max_size=n)


@st.composite
def in_range_edits(draw, graph, tensors):
    """Attributes, requantization tensors, zero points and the program's policies set to random values each
    check accepts: programs that mostly load, with parameters at the edges of the arithmetic."""
    graph, tensors = copy.deepcopy(graph), dict(tensors)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(graph["ops"]))
        what = draw(st.sampled_from(["attr", "attr", "tensor", "zero_point", "policy"]))
        if what == "attr" and op["attrs"]:
            key = draw(st.sampled_from(sorted(op["attrs"])))
            op["attrs"][key] = draw(_attr_values(OP_TABLE[op["kind"]].attrs[key], len(op["inputs"])))
        elif what == "tensor" and op["tensors"]:
            field = draw(st.sampled_from(sorted(op["tensors"])))
            key = f"{op['name']}.{field}"
            arr = tensors[key].copy()
            bounds = {"multiplier": (2**30, 2**31 - 1), "exponent": (-31, 30), "shift": (0, 15),
                      "bias": (-(2**31), 2**31 - 1), "weight": (-127, 127), "table": (-128, 127)}[field]  # fmt: skip
            flat = arr.reshape(-1)
            for _ in range(draw(st.integers(1, 3))):
                flat[draw(st.integers(0, flat.size - 1))] = draw(
                    st.one_of(st.sampled_from(bounds), st.integers(*bounds))
                )
            tensors[key] = arr
        elif what == "zero_point":
            op["zero_point"] = draw(st.integers(-128, 127))
        else:
            graph["rounding"] = draw(st.sampled_from(["double", "single"]))
            graph["overflow"] = draw(st.sampled_from(["raise", "saturate", "wrap"]))
    return graph, tensors


@settings(**_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_in_range_edits_run_like_the_emulator(tmp_path_factory, base, data):
    graph, tensors = data.draw(in_range_edits(*BASES[base]))
    path = write(tmp_path_factory.mktemp("v"), program_bytes(graph, tensors))
    same_verdict(path)


JSON_CHARS = ' \t\n\r,:{}[]"\\/0123456789.eE+-ntfuaNIy\x00\x01\x7f\u00e9'


@settings(**_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_json_text_edits_get_the_python_verdict(tmp_path_factory, base, data):
    """Characters of the graph's JSON text replaced, inserted or deleted (the checksum recomputed): the two
    JSON readers must agree on every near-miss of the grammar (numbers, escapes, literals, whitespace)."""
    graph, tensors = BASES[base]
    text = json.dumps(graph, sort_keys=True, separators=(",", ":"))
    for _ in range(data.draw(st.integers(1, 2))):
        at = data.draw(st.integers(0, len(text) - 1))
        ch = data.draw(st.sampled_from(JSON_CHARS))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "replace":
            text = text[:at] + ch + text[at + 1 :]
        elif action == "insert":
            text = text[:at] + ch + text[at:]
        else:
            text = text[:at] + text[at + 1 :]
    path = write(tmp_path_factory.mktemp("j"), program_bytes(text, tensors))
    same_verdict(path)


# ============================================================================== crafted files
def _graph_text(base="every_kind", **changes) -> tuple[str, dict]:
    graph, tensors = BASES[base]
    graph = copy.deepcopy(graph)
    graph.update(changes)
    return json.dumps(graph, sort_keys=True, separators=(",", ":")), tensors


def _text_variant(name: str) -> str:
    text, _ = _graph_text()
    replace = {
        "bom": lambda t: "\ufeff" + t,
        "trailing garbage": lambda t: t + "x",
        "trailing whitespace": lambda t: t + " \n\t\r",
        "leading whitespace": lambda t: "\n  " + t,
        "trailing comma": lambda t: t[:-1] + ",}",
        "format_version 2.0": lambda t: t.replace('"format_version":2', '"format_version":2.0'),
        "format_version 2e0": lambda t: t.replace('"format_version":2', '"format_version":2e0'),
        "format_version true": lambda t: t.replace('"format_version":2', '"format_version":true'),
        "format_version 02": lambda t: t.replace('"format_version":2', '"format_version":02'),
        "arithmetic_version -0": lambda t: t.replace('"arithmetic_version":1', '"arithmetic_version":-0'),
        "scale as an integer": lambda t: t.replace('"scale":0.1,', '"scale":1,', 1),
        "scale 1e400": lambda t: t.replace('"scale":0.1,', '"scale":1e400,', 1),
        "scale NaN": lambda t: t.replace('"scale":0.1,', '"scale":NaN,', 1),
        "scale -Infinity": lambda t: t.replace('"scale":0.1,', '"scale":-Infinity,', 1),
        "scale a 400-digit integer": lambda t: t.replace('"scale":0.1,', '"scale":' + "9" * 400 + ",", 1),
        "scale a 300-digit integer": lambda t: t.replace('"scale":0.1,', '"scale":' + "9" * 300 + ",", 1),
        "scale 1.": lambda t: t.replace('"scale":0.1,', '"scale":1.,', 1),
        "scale .5": lambda t: t.replace('"scale":0.1,', '"scale":.5,', 1),
        "scale 1e": lambda t: t.replace('"scale":0.1,', '"scale":1e,', 1),
        "scale 1E+1": lambda t: t.replace('"scale":0.1,', '"scale":1E+1,', 1),
        "scale subnormal": lambda t: t.replace('"scale":0.1,', '"scale":5e-324,', 1),
        "scale underflow": lambda t: t.replace('"scale":0.1,', '"scale":1e-400,', 1),
        "input scale not float32": lambda t: t.replace('"scale":0.0625', '"scale":0.1'),
        "surrogate pair escape": lambda t: t.replace('"model":"every_kind"', '"model":"\\ud83d\\ude00"'),
        "lone surrogate escape": lambda t: t.replace('"model":"every_kind"', '"model":"\\ud800x"'),
        "high then high surrogate": lambda t: t.replace('"model":"every_kind"', '"model":"\\ud800\\ud801"'),
        "bad escape": lambda t: t.replace('"model":"every_kind"', '"model":"\\x41"'),
        "bad unicode escape": lambda t: t.replace('"model":"every_kind"', '"model":"\\u12G4"'),
        "escaped slash": lambda t: t.replace('"model":"every_kind"', '"model":"a\\/b\\b\\f\\n\\r\\t"'),
        "raw control character": lambda t: t.replace('"model":"every_kind"', '"model":"a\x01b"'),
        "raw DEL": lambda t: t.replace('"model":"every_kind"', '"model":"a\x7fb"'),
        "escaped key duplicate": lambda t: t.replace(
            '{"arithmetic_version"', '{"\\u0061rithmetic_version":1,"arithmetic_version"'
        ),
        "unterminated": lambda t: t[:-2],
        "nothing": lambda t: "",
        "null graph": lambda t: "null",
        "list graph": lambda t: "[]",
        "name with a final newline": lambda t: t.replace('"conv"', '"conv\\n"'),
        "name with a newline inside": lambda t: t.replace('"conv"', '"co\\nnv"'),
        "unknown input field": lambda t: t.replace('"layout":"HWC"', '"layout":"HWC","extra":[1,{"a":null}]'),
        "input shape with a bool": lambda t: t.replace('"shape":[6,6,3]', '"shape":[6,true,3]'),
        "input shape (K,)": lambda t: t.replace('"shape":[6,6,3]', '"shape":[108]'),
        "duplicate in attrs": lambda t: t.replace('"groups":1,', '"groups":1,"groups":2,', 1),
        "duplicate in info": lambda t: t.replace('"info":{}', '"info":{"a":{"b":1,"b":1}}'),
        "info 4300 digits": lambda t: t.replace('"info":{}', '"info":{"n":' + "7" * 4300 + "}"),
        "info 4301 digits": lambda t: t.replace('"info":{}', '"info":{"n":-' + "7" * 4301 + "}"),
        "info long float": lambda t: t.replace('"info":{}', '"info":{"n":' + "7" * 5000 + ".5}"),
        "info huge float": lambda t: t.replace('"info":{}', '"info":{"n":1e999}'),
        "info NaN": lambda t: t.replace('"info":{}', '"info":{"n":[NaN]}'),
        "info null": lambda t: t.replace('"info":{}', '"info":null'),
        "info nested 64": lambda t: t.replace('"info":{}', '"info":' + json.dumps({"a": _nested(63)})),
        "info nested 65": lambda t: t.replace('"info":{}', '"info":' + json.dumps({"a": _nested(64)})),
        "info nested 500": lambda t: t.replace('"info":{}', '"info":' + json.dumps({"a": _nested(500)})),
        "no info": lambda t: t.replace(',"info":{}', ""),
    }
    return replace[name](text)


TEXT_VARIANTS = [
    "bom", "trailing garbage", "trailing whitespace", "leading whitespace", "trailing comma", "format_version 2.0",
    "format_version 2e0", "format_version true", "format_version 02", "arithmetic_version -0", "scale as an integer",
    "scale 1e400", "scale NaN", "scale -Infinity", "scale a 400-digit integer", "scale a 300-digit integer",
    "scale 1.", "scale .5", "scale 1e", "scale 1E+1", "scale subnormal", "scale underflow", "input scale not float32",
    "surrogate pair escape", "lone surrogate escape", "high then high surrogate", "bad escape", "bad unicode escape",
    "escaped slash", "raw control character", "raw DEL", "escaped key duplicate", "unterminated", "nothing",
    "null graph", "list graph", "name with a final newline", "name with a newline inside", "unknown input field",
    "input shape with a bool", "input shape (K,)", "duplicate in attrs", "duplicate in info", "info 4300 digits",
    "info 4301 digits", "info long float", "info huge float", "info NaN", "info null", "info nested 64",
    "info nested 65", "info nested 500", "no info",
]  # fmt: skip


@pytest.mark.parametrize("variant", TEXT_VARIANTS)
def test_json_details_get_the_python_verdict(tmp_path, variant):
    text = _text_variant(variant)
    _, tensors = BASES["every_kind"]
    if variant == "name with a final newline":  # the op's tensors follow its name
        tensors = {k.replace("conv.", "conv\n."): v for k, v in tensors.items()}
    path = write(tmp_path, program_bytes(text, tensors))
    same_verdict(path)


def _raw_header_file(header_text: bytes, body: bytes = b"") -> bytes:
    header_text += b" " * (-len(header_text) % 8)
    return struct.pack("<Q", len(header_text)) + header_text + body


def _valid_header() -> tuple[bytes, bytes]:
    data = program_bytes(*BASES["every_kind"])
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + n].rstrip(b" "), data[8 + n :]


HEADER_VARIANTS = {
    "not UTF-8": lambda h: h.replace(b'"every_kind', b'"every\xff_kind', 1),
    "overlong UTF-8": lambda h: h.replace(b'"every_kind', b'"every\xc0\xafkind', 1),
    "UTF-8 surrogate": lambda h: h.replace(b'"every_kind', b'"every\xed\xa0\x80kind', 1),
    "truncated UTF-8": lambda h: h.replace(b'"every_kind', b'"every\xe2\x82', 1),
    "above U+10FFFF": lambda h: h.replace(b'"every_kind', b'"every\xf4\x90\x80\x80kind', 1),
    "raw UTF-8 in the graph": lambda h: h.replace(b"every_kind", "\u00e9v\U0001f600".encode(), 1),
    "lone surrogate in the graph text": lambda h: h.replace(b"every_kind", b"\\ud800", 1),
    "BOM": lambda h: b"\xef\xbb\xbf" + h,
    "UTF-16": lambda h: h.decode().encode("utf-16"),
    "header is a list": lambda h: b"[" + h + b"]",
    "metadata not strings": lambda h: h.replace(b'"__metadata__":{', b'"__metadata__":{"n":1,', 1),
    "metadata a list": lambda h: h.replace(b'"__metadata__":{', b'"__metadata__":[{', 1).replace(b'"},', b'"}],', 1),
    "duplicate metadata key": lambda h: h.replace(b'"__metadata__":{', b'"__metadata__":{"npuq.sha256":"0",', 1),
    "dtype F32": lambda h: h.replace(b'"dtype":"I32"', b'"dtype":"F32"', 1),
    "dtype lowercase": lambda h: h.replace(b'"dtype":"I8"', b'"dtype":"i8"', 1),
    "shape with a float": lambda h: h.replace(b'"shape":[8]', b'"shape":[8.0]', 1),
    "offsets beyond int64": lambda h: h.replace(b'"data_offsets":[0,', b'"data_offsets":[100000000000000000000,', 1),
    "offsets negative": lambda h: h.replace(b'"data_offsets":[0,', b'"data_offsets":[-1,', 1),
    "nine dimensions": lambda h: h.replace(b'"shape":[8]', b'"shape":[8,1,1,1,1,1,1,1,1]', 1),
    "a 2^40 dimension": lambda h: h.replace(b'"shape":[8]', b'"shape":[1099511627776]', 1),
    "an entry with a fourth key": lambda h: h.replace(b'"dtype":"I8"', b'"dtype":"I8","x":1', 1),
    "deep nesting": lambda h: h.replace(b'"__metadata__"', b'"a":' + b"[" * 70 + b"]" * 70 + b',"__metadata__"', 1),
    "empty": lambda h: b"",
}


@pytest.mark.parametrize("variant", sorted(HEADER_VARIANTS))
def test_header_details_get_the_python_verdict(tmp_path, variant):
    header, body = _valid_header()
    path = write(tmp_path, _raw_header_file(HEADER_VARIANTS[variant](header), body))
    for skip in (False, True):
        same_verdict(path, skip_digest=skip)


def test_a_lone_surrogate_in_the_graph_text(tmp_path):
    """A lone surrogate in the graph text has no UTF-8 form, so its checksum cannot be computed: both loaders
    refuse the file with the same message. Without the checksum both accept it."""
    header, body = _valid_header()
    path = write(tmp_path, _raw_header_file(HEADER_VARIANTS["lone surrogate in the graph text"](header), body))
    verdict, detail = _python_verdict(path, skip_digest=False)
    assert verdict == "refused" and "lone surrogate" in detail
    status, message = load_status(path)
    assert status == PROGRAM_ERROR and message.endswith(detail.split(": ", 1)[1])
    assert same_verdict(path, skip_digest=True) == "ok"


# ---------------------------------------------------------------------------------- resource limits
def _hostile_programs():
    """The hardening cases of tests/npu/test_program_hardening.py, and cases at the edge of each limit."""
    build = lambda shape, *ops: build_program(shape, *ops, model="hostile", check=False)  # noqa: E731
    conv = conv_op
    cases = {
        "max pool of 2^32 taps": build((1, 1, 1), max_pool_op("pool", "x", (65536, 65536), padding=(32768,) * 4)),
        "ceil max pool of 2^32 taps": build(
            (1, 1, 1), max_pool_op("pool", "x", (65536, 65536), padding=(32768,) * 4, ceil_mode=True)
        ),
        "dilated padded conv": build(
            (1, 1, 1), conv("conv", "x", (1, 2, 2, 1), padding=(65536,) * 4, dilation=(65536, 65536))
        ),
        "dilated padded depthwise": build(
            (1, 1, 8),
            conv(
                "conv",
                "x",
                (8, 2, 2, 1),
                stride=(65536, 65536),
                padding=(65536,) * 4,
                dilation=(65536, 65536),
                groups=8,
            ),
        ),  # fmt: skip
        "avg pool beyond the native taps": build(
            (1, 1, 1), avg_pool_op("pool", "x", (65536, 65536), padding=(32768,) * 4)
        ),
        "pool work": build((4096, 4096, 1), max_pool_op("pool", "x", (2048, 2048))),
        "grouped conv packing": build((1, 1, 1 << 19), conv("conv", "x", (2 << 19, 1, 1, 1), groups=1 << 19)),
        "native conv limit": build(
            (1, 1, 1 << 20),
            conv("conv", "x", (1, 2, 2, 1 << 20), stride=(65536, 65536), padding=(65536,) * 4, dilation=(65536, 65536)),
        ),  # fmt: skip
        "input above the element limit": build((1 << 20, 1 << 20, 1 << 20), flatten_op("flat", "x")),
        "input at the element limit": build((1 << 11, 1 << 10, 1 << 10), flatten_op("flat", "x")),
        "global pool of 2^31 taps": build(
            (1 << 20, 1 << 11, 1), plain_op("gap", "global_avg_pool", ["x"], dict(act_min=-128, act_max=127))
        ),
        "mean of more than 2^23": build(
            (4096, 2049, 1),
            plain_op(
                "m",
                "mean",
                ["x"],
                dict(
                    input_zero_point=0,
                    output_zero_point=0,
                    multiplier=2**30,
                    exponent=0,
                    act_min=-128,
                    act_max=127,
                    tflite_rounding=False,
                ),
            ),
        ),  # fmt: skip
        "upsample past the element limit": build(
            (1 << 12, 1 << 12, 2), plain_op("u", "upsample", ["x"], dict(scale=[64, 64], mode="nearest", zero_point=0))
        ),
        "pad growth": build((1, 1, 1 << 14), plain_op("p", "pad", ["x"], dict(padding=[65536, 65536, 0, 0], value=0))),
        "add of two 200 MiB values": build((200 << 10, 1 << 10, 1), add_op("a", "x", "x")),
    }
    branches = [conv(f"c{i}", "x", (16, 1, 1, 1)) for i in range(16)]
    adds, prev = [], "c0"
    for i in range(1, 16):
        adds.append(add_op(f"a{i}", prev, f"c{i}"))
        prev = f"a{i}"
    cases["peak of values alive"] = build((2048, 2048, 1), *branches, *adds)
    chain, src = [], "x"
    for i in range(17):
        chain.append(conv(f"grow{i}", src, (1, 2, 2, 1), padding=(65536,) * 4, dilation=(65536, 65536)))
        src = f"grow{i}"
    chain += [conv("wide", src, (1 << 21, 1, 1, 1)), flatten_op("flat", "wide")]
    cases["shape products beyond int64"] = build((1 << 20, 1 << 20, 1), *chain)
    return cases


def plain_op(name, kind, inputs, attrs) -> Op:
    """An op without tensors (pools, resampling)."""
    return Op(name=name, kind=kind, inputs=inputs, attrs=attrs, scale=0.1)


HOSTILE = _hostile_programs()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_resource_limits_get_the_python_verdict(tmp_path, case):
    program = HOSTILE[case]
    graph = json.loads(json.dumps(program.to_json()))
    path = write(tmp_path, program_bytes(graph, dict(program.tensor_items())))
    t0 = time.perf_counter()
    same_verdict(path, run=False)
    assert time.perf_counter() - t0 < 20


_BIG = st.sampled_from([1, 2, 3, 255, 256, 4096, 32767, 32768, 65535, 65536])


@settings(**_SETTINGS)
@given(
    kind=st.sampled_from(["max", "avg", "conv", "dw"]),
    hw=st.tuples(st.sampled_from([1, 2, 7, 1000, 1 << 16, 1 << 20]), st.sampled_from([1, 3, 1 << 12, 1 << 20])),
    c=st.sampled_from([1, 8, 1 << 10]),
    k=st.tuples(_BIG, _BIG),
    s=st.tuples(_BIG, _BIG),
    d=st.tuples(_BIG, _BIG),
    pad=st.tuples(_BIG, _BIG, _BIG, _BIG),
    ceil=st.booleans(),
)
def test_huge_attributes_get_the_python_verdict(tmp_path_factory, kind, hw, c, k, s, d, pad, ceil):
    """Huge kernels, strides, dilations, paddings and inputs (the Python loader's own fuzz): both loaders
    refuse the same programs, for every resource limit and native-kernel limit."""
    if kind in ("max", "avg"):
        pad = tuple(min(p, kk // 2) for p, kk in zip(pad, (k[0], k[0], k[1], k[1])))
        op = max_pool_op("op", "x", k, s, pad, ceil) if kind == "max" else avg_pool_op("op", "x", k, s, pad)
    else:
        kh, kw = (min(k[0], 3), min(k[1], 3))
        ext = (d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1)
        pad = tuple(min(p, e - 1) for p, e in zip(pad, (ext[0], ext[0], ext[1], ext[1])))
        groups = c if kind == "dw" else 1
        op = conv_op(
            "op", "x", (c if kind == "dw" else 4, kh, kw, 1 if kind == "dw" else c), stride=s, padding=pad,
            dilation=d, groups=groups,
        )  # fmt: skip
    program = build_program((*hw, c), op, model="hostile", check=False)
    graph = json.loads(json.dumps(program.to_json()))
    path = write(tmp_path_factory.mktemp("r"), program_bytes(graph, dict(program.tensor_items())))
    same_verdict(path)


# ---------------------------------------------------------------------------------- the file itself
def test_files_that_are_not_programs(tmp_path):
    empty = write(tmp_path, b"", "empty.npuq")
    assert load_status(empty)[0] == PROGRAM_ERROR and "too short" in load_status(empty)[1]
    seven = write(tmp_path, b"\x08\x00\x00\x00\x00\x00\x00", "seven.npuq")
    assert load_status(seven)[0] == PROGRAM_ERROR
    status, message = load_status(tmp_path / "missing.npuq")
    assert status == IO_ERROR and "no such program file" in message
    status, message = load_status(tmp_path)
    assert status == IO_ERROR and "directory" in message
    status, message = load_status("")
    assert status == IO_ERROR
    for p in (empty, seven, tmp_path / "missing.npuq", tmp_path):
        assert _python_verdict(p, False)[0] == "refused"


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "symlink"])
def test_pipes_and_devices_are_refused_without_reading(tmp_path, target):
    path = tmp_path / "p.npuq"
    if target == "fifo":
        os.mkfifo(path)  # no writer: an open or read that blocked would hang here
    elif target == "symlink":
        os.symlink("/dev/zero", path)
    else:
        path = "/dev/zero"
        if not os.path.exists(path):
            pytest.skip("no /dev/zero")
    t0 = time.perf_counter()
    status, message = load_status(path)
    assert status == IO_ERROR and "not a regular file" in message
    assert time.perf_counter() - t0 < 5


def test_big_files_are_judged_by_size_and_header_first(tmp_path):
    """A sparse file over 2 GiB and a 64 MiB one with an absurd header size: refused from their first 8 bytes
    (quickly, without reading or allocating the rest)."""
    huge = tmp_path / "huge.npuq"
    with open(huge, "wb") as f:
        f.write(struct.pack("<Q", 8) + b"{}      ")
        f.truncate(MAX_FILE_BYTES + 8)
    big = tmp_path / "big.npuq"
    with open(big, "wb") as f:
        f.write(struct.pack("<Q", 1 << 40))
        f.truncate(64 << 20)
    t0 = time.perf_counter()
    status, message = load_status(huge)
    assert status == PROGRAM_ERROR and "2 GiB" in message
    status, message = load_status(big)
    assert status == PROGRAM_ERROR and "header size field" in message
    assert time.perf_counter() - t0 < 2
    symlink = tmp_path / "link.npuq"
    os.symlink(tmp_path / "big.npuq", symlink)
    assert load_status(symlink)[0] == PROGRAM_ERROR


# ============================================================================== arguments
@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    program = every_kind_program()
    path = program.save(tmp_path_factory.mktemp("args") / "p.npuq")
    c = CProgram(path)
    yield program, c
    c.close()


def _status_is(status: int, expected: int, *fragments: str) -> None:
    message = last_error()
    assert status == expected, f"status {status}, expected {expected}: {message}"
    for f in fragments:
        assert f in message, f"{f!r} not in {message!r}"


def test_load_arguments(loaded, tmp_path):
    program, _ = loaded
    path = str(program.save(tmp_path / "q.npuq")).encode()
    L, handle = lib(), C.c_void_p()
    _status_is(L.npuq_program_load(None, 0, C.byref(handle)), INVALID, "path")
    _status_is(L.npuq_program_load(path, 0, None), INVALID, "program")
    for flags in (2, 3, 0x80000000, 0xFFFFFFFF):
        _status_is(L.npuq_program_load(path, flags, C.byref(handle)), INVALID, "flags")
    assert handle.value is None  # nothing was written on failure
    _status_is(L.npuq_program_load(path, NPUQ_LOAD_SKIP_DIGEST, C.byref(handle)), OK)
    assert last_error() == ""
    L.npuq_program_free(handle)
    L.npuq_program_free(None)
    L.npuq_run_free(None)


def test_description_arguments(loaded):
    _, c = loaded
    L, h = lib(), c.handle
    n, info, vinfo = i64(), OpInfo(), ValueInfo()
    _status_is(L.npuq_program_op_count(None, C.byref(n)), INVALID, "program")
    _status_is(L.npuq_program_op_count(h, None), INVALID, "count")
    _status_is(L.npuq_program_input_info(None, C.byref(vinfo)), INVALID, "program")
    _status_is(L.npuq_program_input_info(h, None), INVALID, "info")
    _status_is(L.npuq_program_output_op(h, None), INVALID, "op_index")
    _status_is(L.npuq_program_output_op(None, C.byref(n)), INVALID, "program")
    _status_is(L.npuq_program_find_op(h, None, C.byref(n)), INVALID, "name")
    _status_is(L.npuq_program_find_op(h, b"conv", None), INVALID, "op_index")
    _status_is(L.npuq_program_op_info(h, 0, None), INVALID, "info")
    _status_is(L.npuq_program_op_info(None, 0, C.byref(info)), INVALID, "program")
    for index in (-1, -2, len(c.ops), 2**62, -(2**63)):
        _status_is(L.npuq_program_op_info(h, index, C.byref(info)), INVALID, "op_index")
    _status_is(L.npuq_program_op_info(h, len(c.ops) - 1, C.byref(info)), OK)


def test_run_arguments(loaded):
    program, c = loaded
    L, h = lib(), c.handle
    count = int(np.prod(program.input.shape))
    x = np.zeros((2, *program.input.shape), np.int8)
    xp = x.ctypes.data_as(i8p)
    run = C.c_void_p()
    _status_is(L.npuq_program_run(None, xp, 2, x.size, 0, C.byref(run)), INVALID, "program")
    _status_is(L.npuq_program_run(h, None, 2, x.size, 0, C.byref(run)), INVALID, "x")
    _status_is(L.npuq_program_run(h, xp, 2, x.size, 0, None), INVALID, "run")
    for wrong in (x.size - 1, x.size + 1, 0, -x.size, count):
        _status_is(L.npuq_program_run(h, xp, 2, wrong, 0, C.byref(run)), INVALID, "x_count")
    for batch in (0, -1, -(2**63)):
        _status_is(L.npuq_program_run(h, xp, batch, 0, 0, C.byref(run)), INVALID, "batch")
    # batch x count beyond int64: an error, never a wrapped product that happens to equal x_count
    wrapped = (2**62 * count) % 2**64
    wrapped = wrapped - 2**64 if wrapped >= 2**63 else wrapped
    _status_is(L.npuq_program_run(h, xp, 2**62, wrapped, 0, C.byref(run)), INVALID)
    for threads in (-1, 257, 2**31 - 1):
        _status_is(L.npuq_program_run(h, xp, 2, x.size, threads, C.byref(run)), INVALID, "threads")
    assert run.value is None
    _status_is(L.npuq_program_run(h, xp, 2, x.size, 0, C.byref(run)), OK)
    try:
        data, n = i8p(), i64()
        _status_is(L.npuq_run_value(None, 0, C.byref(data), C.byref(n)), INVALID, "run")
        _status_is(L.npuq_run_value(run, 0, None, C.byref(n)), INVALID, "data")
        _status_is(L.npuq_run_value(run, 0, C.byref(data), None), INVALID, "count")
        for index in (-2, len(program.ops), 2**40):
            _status_is(L.npuq_run_value(run, index, C.byref(data), C.byref(n)), INVALID, "op_index")
        _status_is(L.npuq_run_value(run, -1, C.byref(data), C.byref(n)), OK)
        assert n.value == x.size
        _status_is(L.npuq_run_output(None, C.byref(data), C.byref(n)), INVALID, "run")
        _status_is(L.npuq_run_output(run, None, C.byref(n)), INVALID, "data")
        _status_is(L.npuq_run_output(run, C.byref(data), None), INVALID, "count")
    finally:
        L.npuq_run_free(run)


def test_run_op_arguments(loaded):
    program, c = loaded
    L, h = lib(), c.handle
    shapes = program.shapes()
    i = c.find("sum")  # an add: two inputs
    a = np.zeros((3, *shapes["mp"]), np.int8)
    b = np.zeros((3, *shapes["ap"]), np.int8)
    out = np.zeros((3, *shapes["sum"]), np.int8)
    ptrs = (i8p * 2)(a.ctypes.data_as(i8p), b.ctypes.data_as(i8p))
    counts = (i64 * 2)(a.size, b.size)
    op = out.ctypes.data_as(i8p)

    def call(program=h, index=i, inputs=ptrs, input_counts=counts, n=2, batch=3, out_ptr=op, out_count=out.size,
             threads=0):  # fmt: skip
        return L.npuq_program_run_op(program, index, inputs, input_counts, n, batch, out_ptr, out_count, threads)

    _status_is(call(), OK)
    _status_is(call(program=None), INVALID, "program")
    for index in (-1, len(c.ops), 2**50):
        _status_is(call(index=index), INVALID, "op_index")
    _status_is(call(inputs=None), INVALID, "inputs")
    _status_is(call(input_counts=None), INVALID, "input_counts")
    _status_is(call(out_ptr=None), INVALID, "out")
    for n in (0, 1, 3, 64, -1):
        _status_is(call(n=n), INVALID, "input_count")
    for batch in (0, -5):
        _status_is(call(batch=batch), INVALID, "batch")
    _status_is(call(batch=2), INVALID, "input_counts[0]")
    _status_is(call(input_counts=(i64 * 2)(a.size, b.size - 1)), INVALID, "input_counts[1]")
    _status_is(call(inputs=(i8p * 2)(a.ctypes.data_as(i8p), None)), INVALID, "inputs[1]")
    _status_is(call(out_count=out.size + 1), INVALID, "out_count")
    _status_is(call(threads=-3), INVALID, "threads")
