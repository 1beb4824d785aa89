"""Partial golden vector sets (npuq export-vectors --formats / --ops / --accumulators) and their check.

The complete set of the shared fixture (``golden``, format 2) is the reference: a partial set must hold
byte for byte the same files at the same paths, and nothing else. Accumulators are compared with an
int64 numpy computation of docs/arithmetic.md 4-5 (tests/support/reference_numpy.py) and must
requantize to the op's output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuq
from npuq.cli import main as cli_main
from npuq.npu import vectors
from npuq.npu.vectors import GoldenVectorsError, VectorsError
from support import reference_numpy as ref
from support.vector_sets import flip_bin_element, make_dump, parse_golden_hex, tree_bytes

LAYERS = ("conv2d", "fully_connected")


def accumulators_supported() -> bool:
    try:
        npuq.ops.Conv2d(np.ones((1, 1, 1, 1), np.int8), multiplier=1 << 30, exponent=0).accumulators(
            np.zeros((1, 1, 1, 1), np.int8)
        )
    except AttributeError:  # the method, or its native kernel, is not in this build yet
        return False
    return True


needs_accumulators = pytest.mark.skipif(
    not accumulators_supported(), reason="npuq.ops.Conv2d.accumulators is not available in this build"
)


def write_manifest(root: Path, manifest: dict, *, redigest: bool = False) -> None:
    if redigest:
        manifest = dict(manifest, manifest_sha256=vectors.manifest_digest(manifest))
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def listed_files(manifest: dict) -> list[dict]:
    arrays = [manifest[k]["array"] for k in ("input", "output") if "array" in manifest[k]]
    arrays += [a for op in manifest["ops"] for a in op["arrays"].values()]
    return [f for a in arrays for f in a["files"].values()] + [manifest["program_file"]]


def fix_totals(manifest: dict) -> None:
    files = listed_files(manifest)
    manifest["file_count"], manifest["total_bytes"] = len(files), sum(f["bytes"] for f in files)


def on_disk(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def partial(program, images, tmp_path_factory):
    """A set of two formats and some ops (a kind, an index, a range), with accumulators where the build
    has them; never modified (tests copy it)."""
    out = tmp_path_factory.mktemp("partial") / "vectors"
    manifest = vectors.export_vectors(
        program, images, out, formats="hex,npy", ops="add,-1,1:3", accumulators=accumulators_supported()
    )
    return out, manifest


@pytest.fixture
def partial_copy(partial, golden, tmp_path):
    """A private copy of the partial set and a dump of every op's output (from the complete set)."""
    src, manifest = partial
    shutil.copytree(src, tmp_path / "vectors")
    full, full_manifest = golden
    dump = make_dump(full, full_manifest, tmp_path / "dump", formats=("bin",))
    return tmp_path / "vectors", dump, json.loads(json.dumps(manifest))


# ---------------------------------------------------------------------------------------- the default
def test_the_default_is_the_complete_format_2_set(program, images, golden, tmp_path):
    full, manifest = golden
    assert manifest["format_version"] == 2 and "selection" not in manifest
    assert vectors.set_selection(manifest).is_complete(len(program.ops))
    # asking for everything explicitly is the default set, byte for byte (manifest included)
    vectors.export_vectors(program, images, tmp_path / "all", formats=["npy", "bin", "hex"], ops=":")
    assert tree_bytes(tmp_path / "all") == tree_bytes(full)


# ---------------------------------------------------------------------------------------- --formats
@pytest.mark.parametrize("formats", ["bin", "hex", "npy", "hex,bin", ["npy", "HEX"], "bin, npy"])
def test_formats_write_only_the_chosen_files(program, images, golden, tmp_path, formats):
    full, _ = golden
    out = tmp_path / "v"
    manifest = vectors.export_vectors(program, images, out, formats=formats)
    asked = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    expected = [f for f in ("bin", "hex", "npy") if f in asked]
    assert manifest["format_version"] == 3 and manifest["selection"]["formats"] == expected
    assert manifest["selection"]["ops"] == list(range(len(program.ops)))
    files = on_disk(out) - {"manifest.json", "program.npuq"}
    assert {Path(f).suffix[1:] for f in files} == set(expected)
    # the same files as the complete set at the same paths, and all of its files of those formats
    reference = tree_bytes(full)
    assert files == {f for f in reference if Path(f).suffix[1:] in expected}
    assert all((out / f).read_bytes() == reference[f] for f in files)
    assert "array" in manifest["input"] and "array" in manifest["output"]  # every op: the network files too
    vectors.check_vectors(out)


@pytest.mark.parametrize("fmt", ["bin", "hex", "npy"])
def test_verify_reads_the_golden_values_from_the_one_format_a_set_has(program, images, golden, tmp_path, fmt):
    full, full_manifest = golden
    out = tmp_path / "v"
    vectors.export_vectors(program, images, out, formats=fmt)
    dump = make_dump(full, full_manifest, tmp_path / "dump", formats=("bin",))  # any dump format is read
    assert vectors.verify(out, dump).exit_code == 0
    op = full_manifest["ops"][2]
    entry = op["arrays"]["output"]
    expected = np.load(full / entry["files"]["npy"]["path"]).reshape(-1)
    flip_bin_element(dump / entry["files"]["bin"]["path"], 7, 1)
    result = vectors.verify(out, dump)
    first = result.first_mismatch
    assert result.exit_code == 1 and first.op == op["name"] and first.flat_index == 7
    assert first.expected == int(expected[7]) and first.actual != first.expected


# ---------------------------------------------------------------------------------------- --ops
def test_a_partial_set_holds_exactly_its_op_folders(program, golden, partial):
    out, manifest = partial
    full, _ = golden
    kinds = [op.kind for op in program.ops]
    n = len(kinds)
    chosen = sorted({i for i in range(n) if kinds[i] == "add"} | {n - 1, 1, 2})
    sel = manifest["selection"]
    assert manifest["format_version"] == 3
    assert sel["ops"] == chosen and sel["formats"] == ["hex", "npy"] and sel["ops_request"] == "add,-1,1:3"
    assert manifest["op_count"] == n == len(manifest["ops"])
    for i, op in enumerate(manifest["ops"]):
        assert op["index"] == i and op["name"] == program.ops[i].name
        if i not in chosen:
            assert op["arrays"] == {} and op["required_arrays"] == []
            assert not (out / op["dir"]).exists()
    # no network input / output copies in a set of some ops
    assert "array" not in manifest["input"] and "array" not in manifest["output"]
    folders = {str(Path(f).parent) for f in on_disk(out)} - {"."}
    assert folders == {manifest["ops"][i]["dir"] for i in chosen}
    reference = tree_bytes(full)
    for rel in on_disk(out) - {"manifest.json"}:
        if "accumulator" not in rel:
            assert (out / rel).read_bytes() == reference[rel], rel
    vectors.check_vectors(out)


NAMES = ["stem", "dw_0", "pw", "add", "pool", "gap", "flatten", "fc"]
KINDS = ["conv2d", "conv2d", "conv2d", "add", "avg_pool2d", "global_avg_pool", "flatten", "fully_connected"]


@pytest.mark.parametrize(
    "request_, expected",
    [
        (None, list(range(8))),
        ("3", [3]),
        (3, [3]),
        ("-1", [7]),
        ("-8", [0]),
        ("2:5", [2, 3, 4]),
        (":2", [0, 1]),
        ("6:", [6, 7]),
        ("-3:-1", [5, 6]),
        (":", list(range(8))),
        ("conv2d", [0, 1, 2]),
        ("fully_connected,stem", [0, 7]),
        ("*a*", [3, 5, 6]),  # add, gap, flatten
        (["pool", 0, "6:"], [0, 4, 6, 7]),
        (" pw , 2 ", [2]),  # spaces around items; repeats are one op
        ("add", [3]),  # a kind and a name at once
    ],
)
def test_op_selection_syntax(request_, expected):
    ops, text = vectors.select_ops(NAMES, KINDS, request_)
    assert list(ops) == expected
    assert (text is None) == (request_ is None)
    if isinstance(request_, str):
        assert text == request_.strip()


@given(n=st.integers(1, 30), a=st.integers(-35, 35) | st.none(), b=st.integers(-35, 35) | st.none())
def test_ranges_are_python_slices(n, a, b):
    names, kinds = [f"op{i}" for i in range(n)], ["add"] * n
    text = f"{'' if a is None else a}:{'' if b is None else b}"
    expected = list(range(n))[slice(a, b)]
    in_bounds = all(v is None or -n <= v <= n for v in (a, b))
    if in_bounds and expected:
        assert list(vectors.select_ops(names, kinds, text)[0]) == expected
    else:
        with pytest.raises(VectorsError, match="range"):
            vectors.select_ops(names, kinds, text)


@pytest.mark.parametrize(
    "request_, message",
    [
        ("nosuch", "no op name or kind matches 'nosuch'"),
        ("conv", "did you mean"),
        ("lut", "the program has no lut op"),
        ("8", "op index 8 is out of range"),
        ("-9", "op index -9 is out of range"),
        ("5:3", "'5:3' selects no op"),
        ("4:4", "selects no op"),
        (":9", "bound 9 is out of range"),
        ("1:x", "'1:x' is not an A:B index range"),
        ("1:2:3", "not an A:B index range"),
        ("pw,,fc", "empty item"),
        ("", "empty item"),
        ([], "empty"),
        ([1.5], "1.5"),
        ([True], "True"),
    ],
)
def test_bad_op_selections_are_refused_by_name(request_, message):
    with pytest.raises(VectorsError, match="ops selection") as info:
        vectors.select_ops(NAMES, KINDS, request_)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_bad_item_is_named_in_one_message():
    with pytest.raises(VectorsError) as info:
        vectors.select_ops(NAMES, KINDS, "pw,ghost,12,lut")
    text = str(info.value)
    assert "'ghost'" in text and "12" in text and "lut" in text and "'pw'" not in text.split(":", 1)[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"formats": "hex,txt"}, "unknown format(s) 'txt'"),
        ({"formats": ""}, "empty format"),
        ({"formats": [1]}, "format names"),
        ({"ops": "nosuch"}, "nosuch"),
        ({"ops": "add", "accumulators": True}, "none of the selected ops"),
        ({"accumulators": "yes"}, "True or False"),
    ],
)
def test_bad_selections_fail_before_anything_is_written(program, images, tmp_path, kwargs, message):
    with pytest.raises(VectorsError) as info:
        vectors.export_vectors(program, images, tmp_path / "v", **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "v").exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- verify on partial sets
def test_verify_checks_the_ops_of_the_set_and_names_the_others(partial_copy, tmp_path):
    out, dump, manifest = partial_copy
    chosen = set(manifest["selection"]["ops"])
    others = [op["name"] for op in manifest["ops"] if op["index"] not in chosen]
    result = vectors.verify(out, dump)
    assert result.exit_code == 0 and result.status == "pass"
    assert [o.index for o in result.checked] == sorted(chosen)
    assert result.not_in_set == others and result.missing == []
    assert all(o.status == "not_in_set" for o in result.ops if o.name in others)
    report = result.report()
    assert "not in the vector set" in report and others[0] in report and "PASS" in report
    data = result.to_dict()
    assert data["ops_not_in_set"] == others and data["ops_checked"] == len(chosen)

    # a corrupted output of an op outside the set is not looked at; one inside is found
    outside = next(op for op in manifest["ops"] if op["index"] not in chosen)
    flip_bin_element(dump / f"{outside['dir']}/output.bin", 0, 1)
    assert vectors.verify(out, dump).exit_code == 0
    inside = manifest["ops"][max(chosen)]
    flip_bin_element(dump / f"{inside['dir']}/output.bin", 0, 1)
    assert vectors.verify(out, dump).first_mismatch.op == inside["name"]

    # an op of the set missing from the dump is missing; outside ones never are
    (dump / f"{inside['dir']}/output.bin").unlink()
    result = vectors.verify(out, dump)
    assert result.missing == [inside["name"]] and result.exit_code == 1
    assert cli_main(["verify", str(out), str(dump), "--json", str(tmp_path / "r.json")]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["ops_not_in_set"] == others


def test_a_tampered_golden_file_of_a_partial_set_is_caught(partial_copy):
    out, dump, manifest = partial_copy
    op = manifest["ops"][manifest["selection"]["ops"][0]]
    weight_hex = out / op["arrays"]["weight"]["files"]["hex"]["path"]
    text = weight_hex.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    weight_hex.write_text(text[: -len(last) - 1] + ("00" if last != "00" else "01") + "\n")
    with pytest.raises(GoldenVectorsError, match="CRC32"):
        vectors.verify(out, dump)


@pytest.mark.parametrize("which", ["output.npy", "weight.hex", "input.hex"])
def test_a_deleted_required_file_of_a_partial_set_is_caught(partial_copy, which):
    out, dump, manifest = partial_copy
    op = manifest["ops"][manifest["selection"]["ops"][0]]
    (out / op["dir"] / which).unlink()
    with pytest.raises(GoldenVectorsError, match="golden file is missing"):
        vectors.verify(out, dump)


def test_a_manifest_edit_of_a_partial_set_breaks_the_digest(partial_copy):
    out, dump, manifest = partial_copy
    manifest["selection"]["ops"] = manifest["selection"]["ops"][1:]
    write_manifest(out, manifest)
    with pytest.raises(GoldenVectorsError, match="digest"):
        vectors.verify(out, dump)


def _drop_op_keep_arrays(m):
    m["selection"]["ops"].pop(0)


def _drop_op_and_arrays(m):
    first = m["ops"][m["selection"]["ops"][0]]
    del first["arrays"]["output"]
    first["required_arrays"].remove("output")


def _formats_shrunk(m):
    m["selection"]["formats"] = ["hex"]


def _files_dropped(m):
    for op in m["ops"]:
        for a in op["arrays"].values():
            a["files"].pop("npy")
    fix_totals(m)


def _claims_complete(m):
    del m["selection"]
    m["format_version"] = 2


def _network_array_added(m):
    m["input"]["array"] = m["ops"][m["selection"]["ops"][0]]["arrays"]["input"]


def _accumulators_dropped(m):
    m["selection"]["accumulators"] = not m["selection"]["accumulators"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_op_keep_arrays, "does not hold"),
        (_drop_op_and_arrays, "output"),
        (_formats_shrunk, "formats"),
        (_files_dropped, "npy"),
        (_claims_complete, "array"),
        (_network_array_added, "network input or output"),
        (_accumulators_dropped, "accumulator"),
        (lambda m: m["selection"].update(ops=[5, 3]), "ascending"),
        (lambda m: m["selection"].update(ops=[]), "at least one"),
        (lambda m: m["selection"].update(ops=[0, 99]), "op indices"),
        (lambda m: m["selection"].update(ops=[0, True]), "op indices"),
        (lambda m: m["selection"].update(formats=["hex", "hex"]), "formats"),
        (lambda m: m["selection"].update(formats=["npy", "hex"]), "formats"),
        (lambda m: m["selection"].update(formats=["txt"]), "formats"),
        (lambda m: m["selection"].update(accumulators=1), "accumulators"),
        (lambda m: m["selection"].update(ops_request=3), "ops_request"),
        (lambda m: m["selection"].update(extra=1), "unknown field"),
        (lambda m: m["selection"].pop("formats"), "formats"),
        (lambda m: m.pop("selection"), "selection"),
        (lambda m: m.update(format_version=4), "not supported"),
    ],
)
def test_consistent_manifest_edits_of_a_partial_set_are_still_caught(partial_copy, edit, message):
    """The digest recomputed: what each op must hold follows from its kind and the recorded selection."""
    out, dump, manifest = partial_copy
    edit(manifest)
    write_manifest(out, manifest, redigest=True)
    with pytest.raises(GoldenVectorsError, match=message):
        vectors.verify(out, dump)


def test_a_complete_set_must_hold_everything_whatever_its_manifest_claims(golden, tmp_path):
    src, manifest = golden
    out = tmp_path / "v"
    shutil.copytree(src, out)
    manifest = json.loads(json.dumps(manifest))
    manifest["selection"] = {"formats": ["bin"], "ops": [0], "accumulators": False, "ops_request": "0"}
    write_manifest(out, manifest, redigest=True)  # still format 2: it records no selection
    with pytest.raises(GoldenVectorsError, match="records no selection"):
        vectors.check_vectors(out)


# ---------------------------------------------------------------------------------------- accumulators
def _layer_accumulators(op, x: np.ndarray, overflow: str) -> np.ndarray:
    """docs/arithmetic.md 4-5 in int64 numpy, independent of the native code."""
    t, a = op.tensors, op.attrs
    if op.kind == "conv2d":
        exact = ref.conv2d_acc(
            x,
            t["weight"],
            t["bias"],
            input_zero_point=a["input_zero_point"],
            stride=tuple(a["stride"]),
            padding=tuple(a["padding"]),
            dilation=tuple(a["dilation"]),
            groups=a["groups"],
        )
    else:
        exact = ref.fully_connected_acc(x, t["weight"], t["bias"], input_zero_point=a["input_zero_point"])
    return ref.apply_overflow(exact, overflow, op.kind)


def _check_accumulators(out: Path, manifest: dict, program) -> int:
    checked = 0
    for op, entry in zip(program.ops, manifest["ops"]):
        arrays = entry["arrays"]
        if not arrays:
            continue
        if op.kind not in LAYERS:
            assert "accumulator" not in arrays
            continue
        acc_entry = arrays["accumulator"]
        assert entry["required_arrays"][-2:] == ["accumulator", "output"]
        assert acc_entry["dtype"] == "int32" and acc_entry["shape"] == arrays["output"]["shape"]
        assert acc_entry["layout"] == ("NHWC" if op.kind == "conv2d" else "NK") == arrays["output"]["layout"]
        fmt = next(iter(acc_entry["files"]))
        x = np.load(out / arrays["input"]["files"]["npy"]["path"]) if "npy" in arrays["input"]["files"] else None
        if x is None:
            _, x = parse_golden_hex((out / arrays["input"]["files"]["hex"]["path"]).read_text(), "int8", "input")
            x = x.reshape(arrays["input"]["shape"])
        if fmt == "npy":
            acc = np.load(out / acc_entry["files"]["npy"]["path"])
        else:
            _, acc = parse_golden_hex((out / acc_entry["files"]["hex"]["path"]).read_text(), "int32", "acc")
            acc = acc.reshape(acc_entry["shape"])
        if "hex" in acc_entry["files"] and "npy" in acc_entry["files"]:  # the two files hold the same values
            _, from_hex = parse_golden_hex((out / acc_entry["files"]["hex"]["path"]).read_text(), "int32", "acc")
            assert np.array_equal(from_hex.reshape(acc.shape), acc)
        assert np.array_equal(acc.astype(np.int64), _layer_accumulators(op, x, program.overflow)), op.name
        m, e = op.tensors["multiplier"], op.tensors["exponent"]
        requantized = npuq.ops.requantize(
            acc.astype(np.int32),
            multiplier=int(m[0]) if m.size == 1 else m,
            exponent=int(e[0]) if e.size == 1 else e,
            channel_shift=op.tensors["shift"],
            output_zero_point=op.attrs["output_zero_point"],
            act_min=op.attrs["act_min"],
            act_max=op.attrs["act_max"],
            rounding=program.rounding,
        )
        out_files = arrays["output"]["files"]
        expected = (
            np.load(out / out_files["npy"]["path"])
            if "npy" in out_files
            else parse_golden_hex((out / out_files["hex"]["path"]).read_text(), "int8", "out")[1].reshape(acc.shape)
        )
        assert np.array_equal(requantized, expected), op.name
        checked += 1
    return checked


@needs_accumulators
def test_accumulators_are_the_int32_sums_that_requantize_to_the_output(program, partial):
    out, manifest = partial
    assert manifest["selection"]["accumulators"] is True
    assert _check_accumulators(out, manifest, program) == 3  # dw_0, pw and the fully connected layer
    vectors.check_vectors(out)


@needs_accumulators
@pytest.mark.parametrize("overflow", ["wrap", "saturate"])
def test_accumulators_follow_the_overflow_policy(program, images, tmp_path, overflow):
    """A bias at the top of int32 overflows the first layer's accumulators: they are what the policy makes
    of the exact sums, and still requantize to the output the emulator produced."""
    p = program.copy()
    p.overflow = overflow
    p.ops[0].tensors["bias"] = np.full_like(p.ops[0].tensors["bias"], 2**31 - 1000)
    manifest = vectors.export_vectors(p, images, tmp_path / "v", ops="0", formats="npy", accumulators=True)
    acc = np.load(tmp_path / "v" / manifest["ops"][0]["arrays"]["accumulator"]["files"]["npy"]["path"])
    x = np.load(tmp_path / "v" / manifest["ops"][0]["arrays"]["input"]["files"]["npy"]["path"])
    exact = _layer_accumulators(p.ops[0], x, "wrap" if overflow == "wrap" else "saturate")
    assert (ref.conv2d_acc(x, p.ops[0].tensors["weight"], p.ops[0].tensors["bias"]).max()) > 2**31 - 1
    assert np.array_equal(acc.astype(np.int64), exact)
    assert _check_accumulators(tmp_path / "v", manifest, p) == 1
    # under "raise" the same program is refused with the emulator's message, not a crash
    p.overflow = "raise"
    with pytest.raises(VectorsError, match="accumulator"):
        vectors.export_vectors(p, images, tmp_path / "r", ops="0", accumulators=True)


@needs_accumulators
def test_accumulators_of_a_complete_set(program, images, golden, tmp_path):
    full, _ = golden
    out = tmp_path / "v"
    manifest = vectors.export_vectors(program, images, out, accumulators=True)
    assert manifest["format_version"] == 3 and manifest["selection"]["accumulators"] is True
    assert _check_accumulators(out, manifest, program) == sum(op.kind in LAYERS for op in program.ops)
    reference = tree_bytes(full)
    mine = tree_bytes(out)
    extra = {rel for rel in mine if rel not in reference}
    assert extra and all(Path(rel).stem == "accumulator" for rel in extra)
    assert all(mine[rel] == reference[rel] for rel in mine if rel in reference and rel != "manifest.json")
    make_dump(full, json.loads((full / "manifest.json").read_text()), tmp_path / "dump", formats=("npy",))
    assert vectors.verify(out, tmp_path / "dump").exit_code == 0


def test_accumulators_required_iff_recorded(program, images, tmp_path):
    assert vectors.required_arrays("conv2d", accumulators=True) == (
        "input",
        "weight",
        "bias",
        "multiplier",
        "exponent",
        "shift",
        "accumulator",
        "output",
    )
    assert vectors.required_arrays("fully_connected", accumulators=True)[-2:] == ("accumulator", "output")
    assert vectors.required_arrays("add", accumulators=True) == vectors.required_arrays("add")
    assert vectors.required_arrays("conv2d") == vectors.required_arrays("conv2d", accumulators=False)


# ---------------------------------------------------------------------------------------- a property
FUZZ = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FUZZ
@given(data=st.data())
def test_any_selection_gives_a_set_that_checks_and_holds_only_its_files(program, images, golden, tmp_path, data):
    n = len(program.ops)
    chosen = data.draw(st.sets(st.integers(0, n - 1), min_size=1))
    formats = data.draw(st.sets(st.sampled_from(["bin", "hex", "npy"]), min_size=1))
    out = tmp_path / f"v{len(list(tmp_path.iterdir()))}"
    manifest = vectors.export_vectors(program, images, out, formats=sorted(formats), ops=sorted(chosen))
    vectors.check_vectors(out)
    full, full_manifest = golden
    expected = {
        f["path"]
        for i in chosen
        for a in full_manifest["ops"][i]["arrays"].values()
        for fmt, f in a["files"].items()
        if fmt in formats
    }
    if len(chosen) == n:
        expected |= {f["path"] for k in ("input", "output") for fmt, f in full_manifest[k]["array"]["files"].items()}
        expected = {p for p in expected if Path(p).suffix[1:] in formats}
    assert on_disk(out) == expected | {"manifest.json", "program.npuq"}
    assert manifest["file_count"] == len(expected) + 1
    complete = len(chosen) == n and len(formats) == 3
    assert manifest["format_version"] == (2 if complete else 3)


def test_each_op_of_every_kind_alone_makes_a_set_that_verifies(tmp_path):
    from support.program_builders import RNG_SEED, every_kind_program

    p = every_kind_program()
    x = np.random.default_rng(RNG_SEED + 1).integers(-128, 128, (2, 6, 6, 3), dtype=np.int8)
    vectors.write_dump(p, x, tmp_path / "dump", fmt="npy")
    acc = accumulators_supported()
    for i, op in enumerate(p.ops):
        out = tmp_path / f"op{i}"
        with_acc = acc and op.kind in LAYERS
        manifest = vectors.export_vectors(p, x, out, ops=str(i), formats="bin", accumulators=with_acc)
        entry = manifest["ops"][i]
        assert entry["required_arrays"] == list(vectors.required_arrays(op.kind, len(op.inputs), accumulators=with_acc))
        assert on_disk(out) == {f"{entry['dir']}/{k}.bin" for k in entry["required_arrays"]} | {
            "manifest.json",
            "program.npuq",
        }
        result = vectors.verify(out, tmp_path / "dump")
        assert result.exit_code == 0 and [o.name for o in result.checked] == [op.name], op.kind
        assert len(result.not_in_set) == len(p.ops) - 1


# ---------------------------------------------------------------------------------------- --force
def test_force_replaces_partial_sets_and_is_replaced_by_them(program, images, tmp_path):
    out = tmp_path / "v"
    vectors.export_vectors(program, images, out, ops="0", formats="hex")
    vectors.export_vectors(program, images, out, overwrite=True)
    assert vectors.check_vectors(out)["format_version"] == 2
    vectors.export_vectors(program, images, out, overwrite=True, ops="fc", formats="bin")
    assert vectors.check_vectors(out)["selection"]["ops"] == [len(program.ops) - 1]
    assert {Path(p).suffix for p in on_disk(out)} == {".bin", ".json", ".npuq"}


# ---------------------------------------------------------------------------------------- command line
def test_cli_flags(program, images, golden, tmp_path, capsys):
    full, _ = golden
    program_file = program.save(tmp_path / "tiny.npuq")
    inputs = tmp_path / "images.npy"
    np.save(inputs, images)
    args = ["export-vectors", str(program_file), str(inputs)]
    assert cli_main([*args, str(tmp_path / "a"), "--formats", "hex", "--ops", "conv2d,fc"]) == 0
    said = capsys.readouterr().out
    conv = [i for i, op in enumerate(program.ops) if op.kind == "conv2d"]
    assert f"for {len(conv) + 1} of {len(program.ops)} ops as hex" in said
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["selection"] == {
        "formats": ["hex"],
        "ops": [*conv, len(program.ops) - 1],
        "accumulators": False,
        "ops_request": "conv2d,fc",
    }
    assert cli_main([*args, str(tmp_path / "b"), "--ops=-1", "--formats=npy,bin"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["selection"]["ops"] == [len(program.ops) - 1]
    assert manifest["selection"]["formats"] == ["bin", "npy"]
    assert cli_main([*args, str(tmp_path / "c")]) == 0  # no flag: the complete set
    assert {k: v for k, v in tree_bytes(tmp_path / "c").items() if k != "manifest.json"} == {
        k: v for k, v in tree_bytes(full).items() if k != "manifest.json"
    }
    if accumulators_supported():
        assert cli_main([*args, str(tmp_path / "d"), "--ops", "0", "--accumulators"]) == 0
        assert "with accumulators" in capsys.readouterr().out
        assert (tmp_path / "d" / "ops" / f"000_{program.ops[0].name}" / "accumulator.hex").is_file()
    dump = make_dump(full, json.loads((full / "manifest.json").read_text()), tmp_path / "dump", formats=("bin",))
    capsys.readouterr()
    assert cli_main(["verify", str(tmp_path / "a"), str(dump)]) == 0
    assert "not in the vector set" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--ops", "nosuch,99"], "nosuch"),
        (["--ops", "lut"], "lut"),
        (["--ops", "5:2"], "5:2"),
        (["--ops=-99"], "-99"),
        (["--formats", "hex,vhdl"], "vhdl"),
        (["--ops", "add", "--accumulators"], "accumulators"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(program, images, tmp_path, capsys, flags, named):
    program_file = program.save(tmp_path / "tiny.npuq")
    np.save(tmp_path / "images.npy", images)
    code = cli_main(["export-vectors", str(program_file), str(tmp_path / "images.npy"), str(tmp_path / "v"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "v").exists()
    assert err.startswith("npuq export-vectors: error: ") and err.count("\n") == 1 and named in err
