"""The golden vector set of the vectors tests: a small network with every op kind the NPU runs, its
compiled program, input images, the exported set, and helpers that read it independently of
npuq.npu.vectors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import npuq  # noqa: E402
from npuq.npu import vectors  # noqa: E402

IMAGES = 3
SIGNED_BITS = {"int8": 8, "int32": 32}
HEX_WIDTH = {"int8": 2, "uint8": 2, "int32": 8}


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU())
        self.pw = nn.Conv2d(8, 8, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.pw(self.dw(x)) + x)
        x = nn.functional.adaptive_avg_pool2d(self.pool(x), 1)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def program():
    torch.manual_seed(0)
    model = TinyNet().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 1, 28, 28, generator=g) for _ in range(2)]
    return npuq.compile(npuq.quantize(model, calib))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).standard_normal((IMAGES, 1, 28, 28)).astype(np.float32)


@pytest.fixture(scope="module")
def golden(program, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "vectors"
    manifest = vectors.export_vectors(program, images, out, threads=2)
    return out, manifest


# ---------------------------------------------------------------------------------------- helpers
def read_hex_file(path: Path, dtype: str) -> tuple[str, np.ndarray]:
    return parse_golden_hex(path.read_text(encoding="ascii"), dtype, str(path))


def parse_golden_hex(text: str, dtype: str, path: str) -> tuple[str, np.ndarray]:
    """The header comment and the values of golden hex text, checking the exact line format."""
    lines = text.split("\n")
    assert lines[-1] == "", f"{path}: must end with a newline"
    header, body = lines[0], lines[1:-1]
    assert header.startswith("// ")
    word = re.compile(f"[0-9a-f]{{{HEX_WIDTH[dtype]}}}")
    values = []
    for line in body:
        assert word.fullmatch(line), f"{path}: bad line {line!r}"
        v = int(line, 16)
        bits = SIGNED_BITS.get(dtype)
        if bits and v >= 2 ** (bits - 1):
            v -= 2**bits
        values.append(v)
    return header, np.array(values, dtype=np.int64)


def all_arrays(manifest: dict) -> list[dict]:
    arrays = [manifest["input"]["array"], manifest["output"]["array"]]
    for op in manifest["ops"]:
        arrays.extend(op["arrays"].values())
    return arrays


def make_dump(golden_dir: Path, manifest: dict, dump: Path, formats=("bin", "hex", "npy"), skip=()) -> Path:
    """A dump as the hardware would write it: each op's output file(s), same relative paths."""
    for op in manifest["ops"]:
        if op["name"] in skip:
            continue
        for fmt in formats:
            rel = op["arrays"]["output"]["files"][fmt]["path"]
            (dump / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(golden_dir / rel, dump / rel)
    return dump


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def op_entry(manifest: dict, kind: str) -> dict:
    return next(op for op in manifest["ops"] if op["kind"] == kind)


def flip_bin_element(path: Path, flat: int, itemsize: int) -> None:
    data = bytearray(path.read_bytes())
    data[flat * itemsize] ^= 0x5A
    path.write_bytes(bytes(data))
