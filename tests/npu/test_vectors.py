"""Golden test vectors (npuq export-vectors) and the check of hardware dumps (npuq verify).

The program comes from the real pipeline: a small random torch network with every op kind the NPU runs
(strided conv, depthwise conv, pointwise conv, residual add, average pool, global pool, flatten, linear)
is calibrated on random data, quantized and compiled. Hex files are read back by a parser written here,
independent of the one in npuq.npu.vectors.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import npuq
from npuq.cli import main as cli_main
from npuq.npu import vectors
from npuq.npu.vectors import DumpError, GoldenVectorsError, VectorsError
from support.vector_sets import (
    IMAGES,
    all_arrays,
    flip_bin_element,
    make_dump,
    op_entry,
    parse_golden_hex,
    read_hex_file,
    tree_bytes,
)


# ---------------------------------------------------------------------------------------- export
def test_three_formats_hold_the_same_values(golden):
    out, manifest = golden
    for entry in all_arrays(manifest):
        files = entry["files"]
        shape = tuple(entry["shape"])
        npy = np.load(out / files["npy"]["path"], allow_pickle=False)
        assert npy.dtype == np.dtype(entry["dtype"]) and npy.shape == shape, entry["name"]
        raw = (out / files["bin"]["path"]).read_bytes()
        from_bin = np.frombuffer(raw, dtype=np.dtype(entry["dtype"]).newbyteorder("<")).reshape(shape)
        header, from_hex = read_hex_file(out / files["hex"]["path"], entry["dtype"])
        assert np.array_equal(from_bin, npy) and np.array_equal(from_hex.reshape(shape), npy), entry["name"]
        assert header == (
            f"// {entry['name']} dtype={entry['dtype']} layout={entry['layout']} shape={'x'.join(map(str, shape))}"
        )


def test_files_hold_the_emulator_values_and_program_tensors(program, images, golden):
    out, manifest = golden
    _, values = npuq.Emulator(program).run(images, capture=True)
    assert [op["name"] for op in manifest["ops"]] == [op.name for op in program.ops]
    for i, (entry, op) in enumerate(zip(manifest["ops"], program.ops)):
        assert entry["dir"] == f"ops/{i:03d}_{op.name}" and entry["kind"] == op.kind
        assert entry["params"] == json.loads(json.dumps(op.attrs))
        arrays = entry["arrays"]

        def load(key, arrays=arrays):
            return np.load(out / arrays[key]["files"]["npy"]["path"])

        assert np.array_equal(load("output"), values[op.name])
        input_keys = ["input"] if len(op.inputs) == 1 else ["input_a", "input_b"]
        for key, source in zip(input_keys, op.inputs):
            assert np.array_equal(load(key), values[source]) and arrays[key]["value"] == source
        expected_keys = set(input_keys) | {"output"}
        if op.kind in ("conv2d", "fully_connected"):
            expected_keys |= set(vectors.LAYER_ARRAYS)
            for key in vectors.LAYER_ARRAYS:
                assert np.array_equal(load(key), op.tensors[key])
            assert arrays["weight"]["layout"] == ("OHWI" if op.kind == "conv2d" else "OK")
            assert arrays["shift"]["dtype"] == "uint8" and arrays["bias"]["dtype"] == "int32"
        assert set(arrays) == expected_keys
        assert arrays["output"]["layout"] == ("NHWC" if values[op.name].ndim == 4 else "NK")
    assert np.array_equal(np.load(out / "input.npy"), values[program.input.name])
    assert np.array_equal(np.load(out / "output.npy"), values[program.output])


def test_manifest_header_sizes_and_crcs(program, golden):
    out, manifest = golden
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "npuq-golden-vectors" and manifest["format_version"] == 2
    assert manifest["manifest_sha256"] == vectors.manifest_digest(manifest)
    assert manifest["op_count"] == len(program.ops) == len(manifest["ops"])
    assert manifest["program_sha256"] == program.digest()
    assert manifest["model"] == program.model
    assert manifest["arithmetic_version"] == npuq.ARITHMETIC_VERSION
    assert (manifest["rounding"], manifest["overflow"]) == (program.rounding, program.overflow)
    assert manifest["byte_order"] == "little" and manifest["images"] == IMAGES
    listed = set()
    for entry in all_arrays(manifest):
        for info in entry["files"].values():
            data = (out / info["path"]).read_bytes()
            assert info["bytes"] == len(data)
            assert info["crc32"] == f"{zlib.crc32(data):08x}"
            listed.add(info["path"])
    assert manifest["program_file"]["path"] == "program.npuq"
    assert (out / "program.npuq").read_bytes() == program.to_bytes()
    listed.add("program.npuq")
    assert manifest["total_bytes"] == sum((out / p).stat().st_size for p in listed)
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == listed and manifest["file_count"] == len(listed)
    add = op_entry(manifest, "add")
    assert {"a_multiplier", "b_multiplier", "output_multiplier", "left_shift"} <= set(add["params"])


def test_export_is_deterministic_across_runs_and_threads(program, images, golden, tmp_path):
    out, _ = golden  # written with threads=2
    vectors.export_vectors(program, images, tmp_path / "one", threads=1)
    vectors.export_vectors(program, images, tmp_path / "two", threads=2)
    reference = tree_bytes(out)
    assert tree_bytes(tmp_path / "one") == reference
    assert tree_bytes(tmp_path / "two") == reference


def test_int8_input_gives_the_same_vectors(program, images, golden, tmp_path):
    out, _ = golden
    xq = npuq.Emulator(program).quantize_input(images)
    vectors.export_vectors(program, xq, tmp_path / "q")
    assert tree_bytes(tmp_path / "q") == tree_bytes(out)


def test_export_refuses_a_non_empty_directory_and_overwrites_a_vector_set(program, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(VectorsError, match="not empty"):
        vectors.export_vectors(program, images, other)
    with pytest.raises(VectorsError, match="refusing"):
        vectors.export_vectors(program, images, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep"
    target = tmp_path / "set"
    vectors.export_vectors(program, images, target)
    before = tree_bytes(target)
    with pytest.raises(VectorsError, match="not empty"):
        vectors.export_vectors(program, images[:1], target)
    vectors.export_vectors(program, images[:1], target, overwrite=True)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["images"] == 1 and tree_bytes(target) != before


def test_export_rejects_inputs_of_the_wrong_shape(program, tmp_path):
    with pytest.raises(VectorsError, match="shape"):
        vectors.export_vectors(program, np.zeros((2, 1, 27, 28), np.float32), tmp_path / "v")


# ---------------------------------------------------------------------------------------- verify
def test_verify_passes_on_the_emulator_outputs(golden, tmp_path):
    out, manifest = golden
    dump = make_dump(out, manifest, tmp_path / "dump")
    result = vectors.verify(out, dump)
    assert result.status == "pass" and result.exit_code == 0 and result.passed
    assert result.total_mismatches == 0 and result.missing == [] and result.first_mismatch is None
    assert all(len(o.files) == 3 for o in result.ops)
    assert "PASS" in result.report()


def test_one_flipped_byte_in_a_bin_dump_is_located(golden, tmp_path):
    out, manifest = golden
    dump = make_dump(out, manifest, tmp_path / "dump")
    op = op_entry(manifest, "add")
    entry = op["arrays"]["output"]
    expected = np.load(out / entry["files"]["npy"]["path"])
    flat = int(np.random.default_rng(7).integers(expected.size))
    flip_bin_element(dump / entry["files"]["bin"]["path"], flat, 1)

    result = vectors.verify(out, dump)
    assert result.status == "mismatch" and result.exit_code == 1
    assert [o.name for o in result.mismatched] == [op["name"]]
    assert result.total_mismatches == 1
    first = result.first_mismatch
    assert (first.op, first.kind, first.op_index) == (op["name"], "add", op["index"])
    assert first.file == entry["files"]["bin"]["path"]
    assert first.flat_index == flat
    index = np.unravel_index(flat, expected.shape)
    assert first.index == tuple(int(i) for i in index) and first.layout == "NHWC"
    assert first.position() == dict(zip("nhwc", first.index))
    assert first.expected == int(expected.reshape(-1)[flat])
    assert first.actual == int(np.int8(np.uint8(expected.reshape(-1)[flat].view(np.uint8) ^ 0x5A).view(np.int8)))
    op_check = next(o for o in result.ops if o.name == op["name"])
    assert [f.mismatches for f in op_check.files] == [1, 0, 0]  # the .hex and .npy copies still agree
    assert f"element {flat}" in result.report()


def test_one_changed_line_in_a_hex_dump_is_located(golden, tmp_path):
    out, manifest = golden
    dump = make_dump(out, manifest, tmp_path / "dump", formats=("hex",))
    op = op_entry(manifest, "fully_connected")
    entry = op["arrays"]["output"]
    expected = np.load(out / entry["files"]["npy"]["path"])
    flat = expected.size - 2
    path = dump / entry["files"]["hex"]["path"]
    lines = path.read_text().split("\n")
    new_value = (int(expected.reshape(-1)[flat]) + 1 + 128) % 256 - 128
    lines[1 + flat] = f"{new_value & 0xFF:02x}"  # line 0 is the header comment
    path.write_text("\n".join(lines))

    result = vectors.verify(out, dump)
    assert result.exit_code == 1 and result.total_mismatches == 1
    first = result.first_mismatch
    assert first.op == op["name"] and first.file.endswith("output.hex")
    assert first.flat_index == flat and first.layout == "NK"
    assert first.position() == {"n": flat // expected.shape[1], "k": flat % expected.shape[1]}
    assert (first.expected, first.actual) == (int(expected.reshape(-1)[flat]), new_value)


def test_first_mismatch_follows_program_order(golden, tmp_path):
    out, manifest = golden
    dump = make_dump(out, manifest, tmp_path / "dump", formats=("bin",))
    early, late = manifest["ops"][1], manifest["ops"][-1]
    for op, elements in ((late, (0,)), (early, (5, 9, 11))):
        for flat in elements:
            flip_bin_element(dump / op["arrays"]["output"]["files"]["bin"]["path"], flat, 1)
    result = vectors.verify(out, dump)
    assert result.first_mismatch.op == early["name"] and result.first_mismatch.flat_index == 5
    counts = {o.name: o.mismatches for o in result.ops}
    assert counts[early["name"]] == 3 and counts[late["name"]] == 1 and result.total_mismatches == 4


def test_missing_ops(golden, tmp_path):
    out, manifest = golden
    gone = manifest["ops"][2]["name"]
    dump = make_dump(out, manifest, tmp_path / "dump", formats=("npy",), skip={gone})
    result = vectors.verify(out, dump)
    assert result.missing == [gone] and result.status == "missing" and result.exit_code == 1
    assert vectors.verify(out, dump, allow_missing=True).exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = vectors.verify(out, empty, allow_missing=True)
    not_flatten = [o["name"] for o in manifest["ops"] if o["kind"] != "flatten"]
    assert nothing.exit_code == 1 and nothing.missing == not_flatten


def test_an_undumped_flatten_is_skipped_not_missing(golden, tmp_path):
    out, manifest = golden
    flat = [o["name"] for o in manifest["ops"] if o["kind"] == "flatten"]
    assert flat, "the test network has a flatten"
    dump = make_dump(out, manifest, tmp_path / "dump", formats=("bin",), skip=set(flat))
    result = vectors.verify(out, dump)
    assert result.exit_code == 0 and result.missing == []
    assert [o.status for o in result.ops if o.name in flat] == ["skipped"] * len(flat)
    assert "skipped (flatten" in result.report()


def test_malformed_dumps_name_the_file(golden, tmp_path):
    out, manifest = golden
    op = op_entry(manifest, "conv2d")
    files = op["arrays"]["output"]["files"]
    shape = tuple(op["arrays"]["output"]["shape"])

    def fresh(name, fmt):
        return make_dump(out, manifest, tmp_path / name, formats=(fmt,)) / files[fmt]["path"]

    truncated = fresh("truncated", "bin")
    truncated.write_bytes(truncated.read_bytes()[:-1])
    with pytest.raises(DumpError, match=re.escape(str(truncated)) + ".*bytes, expected"):
        vectors.verify(out, tmp_path / "truncated")

    wide = fresh("wide", "npy")
    np.save(wide, np.zeros(shape, np.int32))
    with pytest.raises(DumpError, match=re.escape(str(wide)) + ".*dtype int32, expected int8"):
        vectors.verify(out, tmp_path / "wide")

    reshaped = fresh("reshaped", "npy")
    np.save(reshaped, np.zeros((1, int(np.prod(shape))), np.int8))
    with pytest.raises(DumpError, match="shape"):
        vectors.verify(out, tmp_path / "reshaped")

    for name, line, message in (
        ("badword", "g1", "not a hexadecimal"),
        ("undefined", "xx", "undefined"),
        ("toobig", "1ff", "out of range for int8"),
    ):
        path = fresh(name, "hex")
        lines = path.read_text().split("\n")
        lines[3] = line
        path.write_text("\n".join(lines))
        with pytest.raises(DumpError, match=re.escape(str(path)) + ": line 4: .*" + message):
            vectors.verify(out, tmp_path / name)

    short = fresh("short", "hex")
    short.write_text("\n".join(short.read_text().split("\n")[:-3]) + "\n")
    with pytest.raises(DumpError, match="values, expected"):
        vectors.verify(out, tmp_path / "short")


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32"])
def test_hex_writer_and_reader_round_trip(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(11)
    array = rng.integers(info.min, info.max, size=(3, 5), endpoint=True).astype(dtype)
    array.reshape(-1)[:2] = (info.min, info.max)
    text = vectors.hex_bytes(array, "a header").decode("ascii")
    _, independent = parse_golden_hex(text, dtype, "<text>")
    assert np.array_equal(independent.reshape(array.shape), array)
    assert np.array_equal(vectors.parse_hex(text, dtype), array.reshape(-1))
    # CRLF line ends take the general, line-by-line reader: it must agree with the fast one
    assert np.array_equal(vectors.parse_hex(text.replace("\n", "\r\n"), dtype), array.reshape(-1))


def test_hex_reader_accepts_writememh_output():
    text = "// memory dump\n@0\nFF 01\n7f_\n@3 80 // tail\n\n"
    assert vectors.parse_hex(text, np.int8).tolist() == [-1, 1, 127, -128]
    assert vectors.parse_hex("ffffffff\n80000000\n", np.int32).tolist() == [-1, -(2**31)]
    assert vectors.parse_hex("0f\n", np.uint8).tolist() == [15]
    with pytest.raises(DumpError, match="address"):
        vectors.parse_hex("@2\n00\n", np.int8, "d.hex")


def test_altered_or_missing_golden_files_are_named(golden, tmp_path):
    src, manifest = golden
    out = tmp_path / "golden"
    shutil.copytree(src, out)
    dump = make_dump(out, manifest, tmp_path / "dump")
    weight = out / op_entry(manifest, "conv2d")["arrays"]["weight"]["files"]["bin"]["path"]
    flip_bin_element(weight, 0, 1)
    with pytest.raises(GoldenVectorsError, match=re.escape(str(weight)) + ": CRC32"):
        vectors.verify(out, dump)
    weight.write_bytes(weight.read_bytes()[:-1])
    with pytest.raises(GoldenVectorsError, match=re.escape(str(weight)) + ".*bytes"):
        vectors.verify(out, dump)
    weight.unlink()
    with pytest.raises(GoldenVectorsError, match=re.escape(str(weight)) + ": golden file is missing"):
        vectors.verify(out, dump)
    (out / "manifest.json").unlink()
    with pytest.raises(GoldenVectorsError, match="manifest.json: missing"):
        vectors.check_vectors(out)


# ---------------------------------------------------------------------------------------- command line
def test_cli_exit_statuses(program, images, golden, tmp_path, capsys):
    out, manifest = golden
    program_file = program.save(tmp_path / "tiny.npuq")
    inputs = tmp_path / "images.npy"
    np.save(inputs, images)
    assert cli_main(["export-vectors", str(program_file), str(inputs), str(tmp_path / "cli")]) == 0
    cli_manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert cli_manifest["input_source"] == "images.npy"
    assert {k: v for k, v in tree_bytes(tmp_path / "cli").items() if k != "manifest.json"} == {
        k: v for k, v in tree_bytes(out).items() if k != "manifest.json"
    }

    dump = make_dump(out, manifest, tmp_path / "dump", formats=("bin",))
    report = tmp_path / "report.json"
    assert cli_main(["verify", str(out), str(dump), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["status"] == "pass"

    entry = op_entry(manifest, "avg_pool2d")["arrays"]["output"]
    flip_bin_element(dump / entry["files"]["bin"]["path"], 4, 1)
    assert cli_main(["verify", str(out), str(dump), "--json", str(report)]) == 1
    data = json.loads(report.read_text())
    assert data["status"] == "mismatch" and data["total_mismatches"] == 1
    assert data["first_mismatch"]["op"] == op_entry(manifest, "avg_pool2d")["name"]
    assert data["first_mismatch"]["flat_index"] == 4
    assert "first mismatch" in capsys.readouterr().out

    (dump / entry["files"]["bin"]["path"]).unlink()
    assert cli_main(["verify", str(out), str(dump)]) == 1
    assert cli_main(["verify", str(out), str(dump), "--allow-missing"]) == 0

    (dump / entry["files"]["bin"]["path"]).write_bytes(b"\x00")
    assert cli_main(["verify", str(out), str(dump), "--json", str(report)]) == 2
    assert json.loads(report.read_text())["status"] == "error"
    assert cli_main(["verify", str(tmp_path / "nowhere"), str(dump)]) == 2
    assert cli_main(["export-vectors", str(program_file), "fashion-mnist:test", str(tmp_path / "x")]) == 2
    np.save(tmp_path / "labels.npy", np.arange(3))
    assert cli_main(["export-vectors", str(program_file), str(tmp_path / "labels.npy"), str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "fashion-mnist:test:N" in err and "labels.npy" in err


def test_fashion_mnist_inputs_match_the_torch_tensors():
    from npuq.data.fashion_mnist import DatasetNotFoundError, fashion_mnist_tensors

    try:
        x, _ = fashion_mnist_tensors("test")
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    images, source = vectors.load_inputs("fashion-mnist:test:5")
    assert source == "fashion-mnist:test:5" and images.dtype == np.float32
    assert np.array_equal(images, x[:5].numpy())
    with pytest.raises(VectorsError, match="N must be"):
        vectors.load_inputs("fashion-mnist:train:0")
