"""Hardening of the golden reference (npuq export-vectors / npuq verify / npuq run --dump).

Each test reproduces one way the golden set or the check could be fooled or broken: an edited
manifest that still passed, ``--force`` following a symlink out of the output directory, a failed
export that blocked the next one, golden or dump files that are devices, FIFOs or links leaving their
directory, inputs that escaped as the wrong exception (exit 1 instead of 2). The fuzz tests at the end
feed random manifests and dump files to the readers: only clean :class:`VectorsError` outcomes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npuq.cli import main as cli_main
from npuq.npu import vectors
from npuq.npu.vectors import DumpError, GoldenVectorsError, VectorsError
from support.helpers import json_paths
from support.vector_sets import flip_bin_element, make_dump, op_entry, tree_bytes

IMAGES = 2


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).standard_normal((IMAGES, 1, 28, 28)).astype(np.float32)


@pytest.fixture(scope="module")
def pristine(program, images, tmp_path_factory):
    """A golden set and a matching dump, never modified (tests copy them)."""
    root = tmp_path_factory.mktemp("pristine")
    manifest = vectors.export_vectors(program, images, root / "vectors")
    make_dump(root / "vectors", manifest, root / "dump", formats=("bin",))
    return root / "vectors", root / "dump", manifest


@pytest.fixture
def golden(pristine, tmp_path):
    """A private copy of the golden set and of the dump: (vectors dir, dump dir, manifest)."""
    src, dump, manifest = pristine
    shutil.copytree(src, tmp_path / "vectors")
    shutil.copytree(dump, tmp_path / "dump")
    return tmp_path / "vectors", tmp_path / "dump", json.loads(json.dumps(manifest))


def write_manifest(root: Path, manifest: dict, *, redigest: bool = False) -> None:
    """Write ``manifest`` as the set's manifest.json, with a freshly computed digest if asked (what a
    careful forger, or a tool that edits manifests, would do)."""
    if redigest:
        manifest = dict(manifest, manifest_sha256=vectors.manifest_digest(manifest))
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def finishes_within(fn, seconds: float, unblock=None):
    """Run ``fn()`` in a thread; fail if it is still running after ``seconds`` (a hang). ``unblock`` is
    called then, so that the stuck thread can end. Returns ``fn``'s result or re-raises its error."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock:
            unblock()
        pytest.fail(f"still running after {seconds} s: it hangs")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def unblock_fifo(path: Path):
    def unblock():
        try:  # a writer that opens and closes at once lets a blocked reader see end-of-file
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    return unblock


# ================================================================== 1. verify passes when it should fail
def test_an_emptied_ops_list_fails(golden, capsys):
    out, dump, manifest = golden
    manifest["ops"] = []
    write_manifest(out, manifest)
    with pytest.raises(GoldenVectorsError, match="digest"):
        vectors.verify(out, dump)
    assert cli_main(["verify", str(out), str(dump)]) == 2
    assert capsys.readouterr().err.startswith("npuq verify: ")


def test_a_deleted_op_entry_cannot_hide_a_corrupted_output(golden):
    out, dump, manifest = golden
    victim = manifest["ops"].pop(2)
    write_manifest(out, manifest)
    flip_bin_element(dump / victim["arrays"]["output"]["files"]["bin"]["path"], 0, 1)
    with pytest.raises(GoldenVectorsError, match="digest"):
        vectors.verify(out, dump)


def test_a_deleted_weight_entry_cannot_hide_a_corrupted_weight(golden):
    out, dump, manifest = golden
    conv = op_entry(manifest, "conv2d")
    weight_hex = out / conv["arrays"].pop("weight")["files"]["hex"]["path"]
    write_manifest(out, manifest)
    weight_hex.write_text(weight_hex.read_text().replace("\n0", "\nf", 1))
    with pytest.raises(GoldenVectorsError, match="digest"):
        vectors.verify(out, dump)


@pytest.mark.parametrize("edit", ["empty_ops", "drop_op", "drop_last_op", "drop_weight", "drop_output"])
def test_edits_with_a_recomputed_digest_are_still_caught(golden, edit):
    """The digest catches accidents; the op count, the program copy and the required-files rule catch
    a manifest edited consistently (a tool that rewrote it, or a forger)."""
    out, dump, manifest = golden
    ops = manifest["ops"]
    conv = op_entry(manifest, "conv2d")
    if edit == "empty_ops":
        manifest["ops"] = []
        message = "op"
    elif edit == "drop_op":
        ops.pop(2)
        manifest["op_count"] -= 1
        message = "op"
    elif edit == "drop_last_op":
        ops.pop()
        manifest["op_count"] -= 1
        message = "op"
    elif edit == "drop_weight":
        del conv["arrays"]["weight"]
        message = "weight"
    else:
        del ops[-1]["arrays"]["output"]
        message = "output"
    write_manifest(out, manifest, redigest=True)
    with pytest.raises(GoldenVectorsError, match=message):
        vectors.verify(out, dump)


def test_the_required_arrays_follow_the_op_kind(golden):
    out, _, manifest = golden
    for op in manifest["ops"]:
        required = vectors.required_arrays(op["kind"])
        assert op["required_arrays"] == list(required) and set(op["arrays"]) == set(required)
    assert vectors.required_arrays("conv2d") == ("input", "weight", "bias", "multiplier", "exponent", "shift", "output")
    assert vectors.required_arrays("add") == ("input_a", "input_b", "output")
    with pytest.raises(GoldenVectorsError, match="kind"):
        vectors.required_arrays("mystery")
    # the recorded list is no loophole either: shortening it with the arrays still fails
    conv = op_entry(manifest, "conv2d")
    conv["required_arrays"].remove("bias")
    del conv["arrays"]["bias"]
    write_manifest(out, manifest, redigest=True)
    with pytest.raises(GoldenVectorsError, match="bias"):
        vectors.check_vectors(out)


def test_any_changed_field_breaks_the_digest(golden):
    out, _, manifest = golden
    assert manifest["manifest_sha256"] == vectors.manifest_digest(manifest)
    manifest["images"] += 1
    write_manifest(out, manifest)
    with pytest.raises(GoldenVectorsError, match="digest"):
        vectors.check_vectors(out)


def test_a_manifest_without_a_digest_is_rejected_with_re_export_advice(golden, capsys):
    out, dump, manifest = golden
    del manifest["manifest_sha256"]
    manifest["format_version"] = 1
    write_manifest(out, manifest)
    with pytest.raises(GoldenVectorsError, match="re-export"):
        vectors.check_vectors(out)
    assert cli_main(["verify", str(out), str(dump)]) == 2
    assert "re-export" in capsys.readouterr().err
    manifest["format_version"] = vectors.VECTORS_FORMAT_VERSION
    write_manifest(out, manifest)
    with pytest.raises(GoldenVectorsError, match="manifest_sha256"):
        vectors.check_vectors(out)


def test_the_program_copy_is_checked(golden, program):
    out, dump, manifest = golden
    assert manifest["op_count"] == len(program.ops) and manifest["program_sha256"] == program.digest()
    info = manifest["program_file"]
    assert (out / info["path"]).read_bytes() == program.to_bytes()
    # another (valid) program in its place, with the manifest's size, CRC and digest fixed up: the
    # program's SHA-256 no longer is the manifest's
    other = program.copy()
    other.model = "another"
    data = other.to_bytes()
    (out / info["path"]).write_bytes(data)
    info.update(bytes=len(data), crc32=vectors.crc32_hex(data))
    manifest["total_bytes"] = sum(f["bytes"] for f in _listed_files(manifest))
    write_manifest(out, manifest, redigest=True)
    with pytest.raises(GoldenVectorsError, match="program"):
        vectors.verify(out, dump)


def test_the_manifest_ops_must_be_the_programs(golden):
    out, _, manifest = golden
    manifest["ops"][1]["kind"] = "max_pool2d"  # a consistent-looking lie: the program says otherwise
    manifest["ops"][1]["required_arrays"] = ["input", "output"]
    for key in vectors.LAYER_ARRAYS:
        manifest["ops"][1]["arrays"].pop(key, None)
    manifest["ops"][1].pop("requantization", None)
    files = _listed_files(manifest)
    manifest["file_count"], manifest["total_bytes"] = len(files), sum(f["bytes"] for f in files)
    write_manifest(out, manifest, redigest=True)
    with pytest.raises(GoldenVectorsError, match="program"):
        vectors.check_vectors(out)


def _listed_files(manifest):
    arrays = [manifest["input"]["array"], manifest["output"]["array"]]
    arrays += [a for op in manifest["ops"] for a in op["arrays"].values()]
    return [f for a in arrays for f in a["files"].values()] + [manifest["program_file"]]


def test_allow_missing_takes_names_and_globs(golden, capsys):
    out, dump, manifest = golden
    gone = op_entry(manifest, "add")
    (dump / gone["arrays"]["output"]["files"]["bin"]["path"]).unlink()
    assert vectors.verify(out, dump).exit_code == 1
    assert vectors.verify(out, dump, allow_missing=["pool"]).exit_code == 1  # names another op
    for allowed in ([gone["name"]], (gone["dir"],), ("ops/*_add",), [f"{gone['dir']}/output.bin"], ["*"]):
        result = vectors.verify(out, dump, allow_missing=allowed)
        assert result.exit_code == 0, allowed
        assert result.missing == [gone["name"]]
    assert vectors.verify(out, dump, allow_missing=True).exit_code == 0  # True: any op, as before
    assert cli_main(["verify", str(out), str(dump), "--allow-missing", "pool"]) == 1
    assert cli_main(["verify", str(out), str(dump), "--allow-missing", "pool", "--allow-missing", gone["name"]]) == 0
    assert cli_main(["verify", str(out), str(dump), "--allow-missing", f"pool,{gone['name']}"]) == 0
    assert cli_main(["verify", str(out), str(dump), "--allow-missing"]) == 0  # bare: any op
    report = capsys.readouterr().out
    assert "allowed" in report


# ================================================================== 2. --force and symlinks
def test_force_never_follows_a_symlink_out_of_the_output_directory(program, images, tmp_path):
    precious_dir = tmp_path / "elsewhere"
    precious_dir.mkdir()
    (precious_dir / "precious.txt").write_text("keep me")
    out = tmp_path / "vectors"
    out.mkdir()
    os.symlink(precious_dir, out / "ops")
    old = {
        "format": vectors.VECTORS_FORMAT,
        "format_version": 1,
        "input": {"array": {"files": {"bin": {"path": "ops/precious.txt", "bytes": 7, "crc32": "0"}}}},
        "ops": [],
        "output": {"array": {"files": {}}},
    }
    (out / "manifest.json").write_text(json.dumps(old))
    vectors.export_vectors(program, images, out, overwrite=True)
    assert (precious_dir / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in precious_dir.iterdir()) == ["precious.txt"]  # nothing written there
    assert (out / "ops").is_dir() and not (out / "ops").is_symlink()
    vectors.check_vectors(out)


def test_force_refuses_a_vector_set_holding_foreign_files(program, images, tmp_path):
    out = tmp_path / "vectors"
    vectors.export_vectors(program, images, out)
    (out / "ops" / "notes.txt").write_text("mine")
    before = tree_bytes(out)
    with pytest.raises(VectorsError, match="notes.txt"):
        vectors.export_vectors(program, images[:1], out, overwrite=True)
    assert tree_bytes(out) == before


def test_force_replaces_a_set_of_the_previous_format(program, images, tmp_path):
    out = tmp_path / "vectors"
    manifest = vectors.export_vectors(program, images, out)
    del manifest["manifest_sha256"]
    manifest["format_version"] = 1
    write_manifest(out, manifest)
    vectors.export_vectors(program, images[:1], out, overwrite=True)
    assert vectors.check_vectors(out)["images"] == 1


def test_a_symlinked_output_directory_is_written_where_it_points(program, images, tmp_path):
    real = tmp_path / "real"
    os.symlink(real, tmp_path / "link", target_is_directory=True)
    real.mkdir()
    vectors.export_vectors(program, images, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (real / "manifest.json").is_file()
    vectors.export_vectors(program, images[:1], tmp_path / "link", overwrite=True)
    assert (tmp_path / "link").is_symlink() and vectors.check_vectors(real)["images"] == 1


# ================================================================== 3. a failed export blocks nothing
def _failing_after(monkeypatch, calls: int):
    from npuq.npu.vectors import export  # the module that encodes the files of a set

    real = export.hex_bytes
    count = {"n": 0}

    def hex_bytes(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "hex_bytes", hex_bytes)


def test_a_failed_export_leaves_nothing_behind(program, images, tmp_path, monkeypatch):
    base = tmp_path / "sets"
    out = base / "vectors"
    _failing_after(monkeypatch, 5)
    with pytest.raises(OSError, match="No space"):
        vectors.export_vectors(program, images, out)
    assert sorted(base.iterdir()) == []  # no half-written set, no staging directory
    monkeypatch.undo()
    vectors.export_vectors(program, images, out)  # neither blocked nor in need of --force
    vectors.check_vectors(out)


def test_a_failed_force_export_keeps_the_previous_set(program, images, tmp_path, monkeypatch, capsys):
    base = tmp_path / "sets"
    out = base / "vectors"
    vectors.export_vectors(program, images, out)
    before = tree_bytes(out)
    _failing_after(monkeypatch, 5)
    with pytest.raises(OSError):
        vectors.export_vectors(program, images[:1], out, overwrite=True)
    assert tree_bytes(out) == before and sorted(p.name for p in base.iterdir()) == ["vectors"]
    program_file = program.save(tmp_path / "tiny.npuq")
    np.save(tmp_path / "one.npy", images[:1])
    command = ["export-vectors", str(program_file), str(tmp_path / "one.npy"), str(out), "--force"]
    assert cli_main(command) == 2
    assert "\nnpuq export-vectors: error: " in "\n" + capsys.readouterr().err.replace("\r", "\n")  # after the bar
    assert tree_bytes(out) == before and sorted(p.name for p in base.iterdir()) == ["vectors"]
    monkeypatch.undo()
    assert cli_main(command) == 0
    assert vectors.check_vectors(out)["images"] == 1


# ================================================================== 4. only regular files, sizes first
def _golden_bin(manifest) -> str:
    return op_entry(manifest, "conv2d")["arrays"]["input"]["files"]["bin"]["path"]


def test_a_golden_file_linked_to_a_device_is_rejected(golden):
    out, dump, manifest = golden
    path = out / _golden_bin(manifest)
    path.unlink()
    os.symlink("/dev/zero", path)
    with pytest.raises(GoldenVectorsError, match=re.escape(str(path))):
        finishes_within(lambda: vectors.verify(out, dump), 30)


def test_a_golden_fifo_does_not_hang_verify(golden):
    out, dump, manifest = golden
    path = out / _golden_bin(manifest)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(GoldenVectorsError, match="regular file"):
        finishes_within(lambda: vectors.verify(out, dump), 30, unblock_fifo(path))


def test_a_golden_link_leaving_the_directory_is_rejected(golden, tmp_path):
    out, dump, manifest = golden
    path = out / _golden_bin(manifest)
    outside = tmp_path / "outside.bin"
    shutil.copyfile(path, outside)  # the very same bytes: only where it lies is wrong
    path.unlink()
    os.symlink(outside, path)
    with pytest.raises(GoldenVectorsError, match="outside"):
        vectors.verify(out, dump)


def test_an_oversized_golden_file_is_rejected_before_reading(golden):
    out, dump, manifest = golden
    path = out / _golden_bin(manifest)
    os.truncate(path, 1 << 34)  # sparse: 16 GiB that must never be read
    tracemalloc.start()
    try:
        with pytest.raises(GoldenVectorsError, match="bytes"):
            finishes_within(lambda: vectors.verify(out, dump), 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def _dump_bin(manifest) -> str:
    return op_entry(manifest, "add")["arrays"]["output"]["files"]["bin"]["path"]


def test_dump_files_must_be_regular_files_inside_the_dump(golden, tmp_path):
    out, dump, manifest = golden
    path = dump / _dump_bin(manifest)
    data = path.read_bytes()
    path.unlink()
    os.symlink("/dev/zero", path)
    with pytest.raises(DumpError, match=re.escape(str(path))):
        finishes_within(lambda: vectors.verify(out, dump), 30)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(DumpError, match="regular file"):
        finishes_within(lambda: vectors.verify(out, dump), 30, unblock_fifo(path))
    path.unlink()
    (tmp_path / "outside.bin").write_bytes(data)
    os.symlink(tmp_path / "outside.bin", path)
    with pytest.raises(DumpError, match="outside"):
        vectors.verify(out, dump)
    path.unlink()
    os.symlink(path.parent / "elsewhere.bin", path)  # a dangling link is an error, not a missing op
    with pytest.raises(DumpError, match="link"):
        vectors.verify(out, dump)
    path.unlink()
    (path.parent / "real.bin").write_bytes(data)
    os.symlink("real.bin", path)  # a link that stays inside the dump is fine
    assert vectors.verify(out, dump).exit_code == 0


@pytest.mark.parametrize("fmt", ["bin", "hex", "npy"])
def test_oversized_dump_files_are_rejected_before_reading(golden, fmt):
    out, dump, manifest = golden
    entry = op_entry(manifest, "add")["arrays"]["output"]
    (dump / entry["files"]["bin"]["path"]).unlink()
    path = dump / entry["files"][fmt]["path"]
    path.write_bytes(b"")
    os.truncate(path, 1 << 34)
    tracemalloc.start()
    try:
        with pytest.raises(DumpError, match=re.escape(str(path)) + ".*bytes"):
            finishes_within(lambda: vectors.verify(out, dump), 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


# ================================================================== 5. bad input is exit 2, not exit 1
def test_a_manifest_with_a_huge_integer_is_a_clean_error(golden, capsys):
    out, dump, _ = golden
    path = out / "manifest.json"
    text = path.read_text()
    path.write_text(re.sub(r'"images": \d+', '"images": ' + "9" * 5000, text))
    with pytest.raises(GoldenVectorsError, match="manifest.json"):
        vectors.verify(out, dump)
    assert cli_main(["verify", str(out), str(dump)]) == 2
    assert capsys.readouterr().err.startswith("npuq verify: ")


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "a", "format": "npuq-golden-vectors"}',
        '{"images": NaN}',
        '{"x": 1e999}',
        "[" * 100000,
        '{"images": -' + "1" * 5000 + "}",
    ],
    ids=["duplicate", "nan", "infinite", "deep", "bigint"],
)
def test_odd_json_is_a_clean_error(golden, text):
    out, dump, _ = golden
    (out / "manifest.json").write_text(text)
    with pytest.raises(GoldenVectorsError, match="manifest.json"):
        vectors.check_vectors(out)


def test_duplicate_manifest_keys_are_rejected(golden):
    out, _, _ = golden
    path = out / "manifest.json"
    text = path.read_text()
    # a second "images" key that a last-one-wins reader would take: the digest would not see it
    path.write_text(text.replace('"images": ', '"images": 99, "images": ', 1))
    with pytest.raises(GoldenVectorsError, match="duplicate.*images"):
        vectors.check_vectors(out)


def _npy_header(descr: str, shape, fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    return buf.getvalue()


def test_an_npy_dump_claiming_a_huge_shape_is_a_clean_error(golden, capsys):
    out, dump, manifest = golden
    entry = op_entry(manifest, "add")["arrays"]["output"]
    (dump / entry["files"]["bin"]["path"]).unlink()
    path = dump / entry["files"]["npy"]["path"]
    path.write_bytes(_npy_header("|i1", (1 << 36,)))
    tracemalloc.start()
    try:
        with pytest.raises(DumpError, match=re.escape(str(path)) + ".*shape"):
            vectors.verify(out, dump)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    assert cli_main(["verify", str(out), str(dump)]) == 2
    assert capsys.readouterr().err.startswith("npuq verify: ")


def test_npy_dumps_are_read_by_their_header(golden):
    out, dump, manifest = golden
    entry = op_entry(manifest, "add")["arrays"]["output"]
    expected = np.load(out / entry["files"]["npy"]["path"])
    (dump / entry["files"]["bin"]["path"]).unlink()
    path = dump / entry["files"]["npy"]["path"]
    np.save(path, np.asfortranarray(expected))  # Fortran order and big-endian headers are fine
    assert vectors.verify(out, dump).exit_code == 0
    path.write_bytes(_npy_header(">i1", expected.shape) + expected.tobytes())
    assert vectors.verify(out, dump).exit_code == 0
    path.write_bytes(_npy_header("|i1", expected.shape) + expected.tobytes() + b"\0")
    with pytest.raises(DumpError, match="bytes"):
        vectors.verify(out, dump)
    path.write_bytes(_npy_header("|u1", expected.shape) + expected.tobytes())
    with pytest.raises(DumpError, match="dtype"):
        vectors.verify(out, dump)


# ================================================================== 6. npuq run --dump
def test_run_dump_is_a_reference_dump_for_verify(program, images, tmp_path, capsys):
    program_file = program.save(tmp_path / "tiny.npuq")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(IMAGES))
    assert cli_main(["export-vectors", str(program_file), str(tmp_path / "images.npy"), str(tmp_path / "vec")]) == 0
    base = [
        "run",
        str(program_file),
        "--images",
        str(tmp_path / "images.npy"),
        "--labels",
        str(tmp_path / "labels.npy"),
        "--threads",
        "1",
    ]
    assert cli_main(base + ["--dump", str(tmp_path / "dump")]) == 0
    assert cli_main(["verify", str(tmp_path / "vec"), str(tmp_path / "dump")]) == 0
    assert "PASS" in capsys.readouterr().out
    manifest = vectors.check_vectors(tmp_path / "vec")
    rel = op_entry(manifest, "conv2d")["arrays"]["output"]["files"]["bin"]["path"]
    flip_bin_element(tmp_path / "dump" / rel, 3, 1)
    assert cli_main(["verify", str(tmp_path / "vec"), str(tmp_path / "dump")]) == 1
    for fmt in ("hex", "npy"):
        assert cli_main(base + ["--dump", str(tmp_path / fmt), "--dump-format", fmt]) == 0
        assert cli_main(["verify", str(tmp_path / "vec"), str(tmp_path / fmt)]) == 0
    capsys.readouterr()
    assert cli_main(base + ["--dump", str(tmp_path / "dump")]) == 2  # not empty: never overwritten
    assert capsys.readouterr().err.startswith("npuq run: ")


def test_write_dump_matches_the_golden_layout(program, images, pristine, tmp_path):
    out, _, manifest = pristine
    written = vectors.write_dump(program, images, tmp_path / "d", fmt=("bin", "npy"))
    expected = sorted(op["arrays"]["output"]["files"][f]["path"] for op in manifest["ops"] for f in ("bin", "npy"))
    assert sorted(written) == expected
    assert all((tmp_path / "d" / rel).read_bytes() == (out / rel).read_bytes() for rel in expected)
    with pytest.raises(VectorsError, match="format"):
        vectors.write_dump(program, images, tmp_path / "e", fmt="txt")


# ================================================================== 7. fuzzing the readers
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", "..", "/etc/passwd", "ops/../../x", "conv2d", "int8", "NHWC", "bin", "output", "00000000"]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def _mutate(manifest: dict, data) -> dict:
    manifest = json.loads(json.dumps(manifest))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = [p for p in json_paths(manifest) if p]
        path = data.draw(st.sampled_from(paths), label="path")
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if action == "replace":
            parent[path[-1]] = data.draw(json_values, label="value")
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8), label="key")] = data.draw(json_values, label="value")
        else:
            parent.append(data.draw(json_values, label="value"))
    return manifest


@pytest.fixture(scope="module")
def fuzz_set(program, images, tmp_path_factory):
    """A one-image golden set whose manifest.json the fuzz examples rewrite (and restore)."""
    root = tmp_path_factory.mktemp("fuzz")
    manifest = vectors.export_vectors(program, images[:1], root / "vectors")
    dump = make_dump(root / "vectors", manifest, root / "dump", formats=("bin",))
    return root / "vectors", dump, manifest


def _only_clean_errors(fn):
    try:
        return fn()
    except VectorsError:
        return None


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_manifests(fuzz_set, data):
    out, dump, manifest = fuzz_set
    mutated = _mutate(manifest, data)
    redigest = data.draw(st.booleans(), label="redigest")
    try:
        write_manifest(out, mutated, redigest=redigest)
        _only_clean_errors(lambda: vectors.verify(out, dump))
    finally:
        write_manifest(out, manifest)


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_text(fuzz_set, data):
    out, dump, manifest = fuzz_set
    text = json.dumps(manifest, indent=1, sort_keys=True)
    kind = data.draw(st.sampled_from(["truncate", "splice", "bytes", "duplicate", "bigint"]), label="kind")
    if kind == "truncate":
        raw = text[: data.draw(st.integers(0, len(text) - 1), label="cut")].encode()
    elif kind == "splice":
        at = data.draw(st.integers(0, len(text)), label="at")
        raw = (text[:at] + data.draw(st.text(max_size=20), label="insert") + text[at:]).encode("utf-8", "surrogatepass")
    elif kind == "bytes":
        raw = data.draw(st.binary(max_size=200), label="raw")
    elif kind == "duplicate":
        key = data.draw(st.sampled_from(sorted(manifest)), label="key")
        raw = text.replace("{", "{" + json.dumps(key) + ": " + json.dumps(manifest[key]) + ", ", 1).encode()
    else:
        raw = re.sub(r'"images": \d+', '"images": ' + "7" * data.draw(st.integers(4000, 6000)), text).encode()
    path = out / "manifest.json"
    try:
        path.write_bytes(raw)
        outcome = _only_clean_errors(lambda: vectors.check_vectors(out))
        assert outcome is None or kind == "splice"  # only an insertion into a string can leave it valid
        assert _only_clean_errors(lambda: cli_main(["verify", str(out), str(dump)])) in (0, 2)
    finally:
        write_manifest(out, manifest)


@pytest.fixture(scope="module")
def dump_target(tmp_path_factory):
    return tmp_path_factory.mktemp("dumpfuzz")


def _fuzz_read(path: Path, fmt: str, raw: bytes):
    path.write_bytes(raw)
    for dtype, shape in (("int8", (2, 3, 1, 2)), ("int32", (3,)), ("uint8", (2, 2))):
        array = _only_clean_errors(lambda dtype=dtype, shape=shape: vectors.read_dump(path, fmt, dtype, shape))
        if array is not None:
            assert array.dtype == np.dtype(dtype) and array.shape == shape


@FUZZ
@given(fmt=st.sampled_from(["bin", "hex", "npy"]), raw=st.binary(max_size=300))
def test_fuzz_dump_random_bytes(dump_target, fmt, raw):
    _fuzz_read(dump_target / f"out.{fmt}", fmt, raw)


@FUZZ
@given(text=st.text(alphabet="0123456789abcdefABCDEFxz_@/ \t\r\n\x0b", max_size=120))
def test_fuzz_dump_hex_like_text(dump_target, text):
    _fuzz_read(dump_target / "out.hex", "hex", text.encode("ascii"))


npy_descrs = st.one_of(
    st.sampled_from(["|i1", "<i1", ">i4", "<i4", "|u1", "<f4", "|b1", "O", "<i8", "|V1", "x", ""]), st.text(max_size=6)
)
npy_shapes = st.one_of(st.lists(st.integers(-3, 2**40), max_size=4), st.just([2, 3, 1, 2]), st.just([3]))


@FUZZ
@given(
    descr=npy_descrs,
    shape=npy_shapes,
    fortran=st.booleans(),
    body=st.binary(max_size=64),
    header=st.one_of(st.none(), st.text(max_size=80)),
)
def test_fuzz_dump_npy_headers(dump_target, descr, shape, fortran, body, header):
    if header is None:
        head = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}"
    else:
        head = header
    encoded = head.encode("latin1", "replace")
    raw = b"\x93NUMPY\x01\x00" + len(encoded).to_bytes(2, "little") + encoded + body
    _fuzz_read(dump_target / "out.npy", "npy", raw)
