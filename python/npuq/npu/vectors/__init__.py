"""Golden test vectors for the NPU hardware, and the check of hardware dumps against them.

:func:`export_vectors` runs the emulator on a batch of images and writes, op by op, everything a test
bench needs to drive and check one op of the NPU: the op's int8 input(s), its integer parameters
(weights, bias, multiplier, exponent, WESS shifts) and its expected int8 output. Every array is written
three times: ``.hex`` (one two's-complement word per line, for Verilog ``$readmemh``), ``.bin`` (raw
little-endian) and ``.npy``. ``manifest.json`` describes the set, holds the size and CRC32 of every
file and a SHA-256 digest of itself; ``program.npuq`` is a copy of the program the set was written for.

:func:`export_vectors` can also write part of the set (``formats``, ``ops``) and the layers' int32
accumulators (``accumulators``); such a set records its selection in the manifest (format version 3)
and the check holds it to exactly what it records (:mod:`~npuq.npu.vectors.selection`).

:func:`verify` compares a directory of hardware outputs (same relative paths as the golden op outputs)
with a golden set, op by op in program order, and reports the first mismatching op and element.
:func:`write_dump` writes the emulator's outputs in that dump layout (``npuq run --dump``).

The golden set certifies itself: the manifest digest catches any edit of the manifest, the op count
and the program copy catch a consistently edited manifest that drops an op, and every op must list
exactly the arrays its kind requires. Files are read only when they are regular files inside their
directory and of the size the manifest (or the expected shape) allows, so a link to a device, a FIFO
or a huge file is an error, not a hang.

File formats, directory layout and exit codes: ``docs/golden_vectors.md``. Which arrays an op's folder
holds (its inputs, its tensors with their dtypes and layouts, its output) is the op table's
(:mod:`npuq.npu.optable`: ``vector_inputs``, ``tensors``, ``required_arrays``).

The modules: :mod:`~npuq.npu.vectors.formats` (file formats, encodings, the manifest entries),
:mod:`~npuq.npu.vectors.files` (safe file access, the staged output folder), :mod:`~npuq.npu.vectors.export`,
:mod:`~npuq.npu.vectors.golden` (the check of a golden set), :mod:`~npuq.npu.vectors.verify` (dumps against a
golden set), :mod:`~npuq.npu.vectors.selection` (what a set holds) and :mod:`~npuq.npu.vectors.commands`
(``npuq export-vectors``, ``npuq verify``).

Only numpy and the standard library are needed (tqdm, when installed, draws the progress bar).
"""

from npuq.npu.optable import LAYER_KINDS, OP_KINDS
from npuq.npu.vectors.commands import add_commands, load_inputs
from npuq.npu.vectors.export import export_vectors, write_dump
from npuq.npu.vectors.formats import (
    ACCUMULATOR_ARRAY,
    ACCUMULATOR_KINDS,
    COMPLETE_SET_FORMAT_VERSION,
    DIGEST_FIELD,
    FILE_FORMATS,
    HEX_DIGITS,
    LAYER_ARRAYS,
    LAYOUT_AXES,
    PROGRAM_FILE,
    READABLE_FORMAT_VERSIONS,
    VECTORS_FORMAT,
    VECTORS_FORMAT_VERSION,
    DumpError,
    GoldenVectorsError,
    VectorsError,
    bin_bytes,
    crc32_hex,
    hex_bytes,
    manifest_digest,
    npy_bytes,
    parse_hex,
    required_arrays,
)
from npuq.npu.vectors.golden import check_vectors, set_selection
from npuq.npu.vectors.selection import Selection, parse_formats, select_ops
from npuq.npu.vectors.verify import FileCheck, Mismatch, OpCheck, VerifyResult, read_dump, verify

__all__ = [
    "ACCUMULATOR_ARRAY",
    "ACCUMULATOR_KINDS",
    "COMPLETE_SET_FORMAT_VERSION",
    "DIGEST_FIELD",
    "FILE_FORMATS",
    "HEX_DIGITS",
    "LAYER_ARRAYS",
    "LAYOUT_AXES",
    "PROGRAM_FILE",
    "READABLE_FORMAT_VERSIONS",
    "VECTORS_FORMAT",
    "VECTORS_FORMAT_VERSION",
    "DumpError",
    "FileCheck",
    "GoldenVectorsError",
    "Mismatch",
    "OpCheck",
    "Selection",
    "VectorsError",
    "VerifyResult",
    "add_commands",
    "bin_bytes",
    "check_vectors",
    "crc32_hex",
    "export_vectors",
    "hex_bytes",
    "load_inputs",
    "manifest_digest",
    "npy_bytes",
    "parse_formats",
    "parse_hex",
    "read_dump",
    "required_arrays",
    "select_ops",
    "set_selection",
    "verify",
    "write_dump",
]
