"""Fashion-MNIST from the IDX files of the Debian package ``dataset-fashion-mnist``.

The package installs ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
Reading those files directly (instead of through torchvision) keeps the dependency list short
and never touches the network, which matters on machines that build and test offline.

Where the files are looked for, first match wins:

1. the ``root`` argument,
2. the environment variable ``NPUQ_FASHION_MNIST``,
3. ``/usr/share/datasets/fashion-mnist``.

Each file may be gzip-compressed (``*.gz``) or raw.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "NPUQ_FASHION_MNIST"

#: Per-pixel statistics of the training images scaled to [0, 1]; fixed constants (not recomputed
#: per run) so that every model, calibration set and test sees exactly the same input scaling.
MEAN = 0.2860
STD = 0.3530

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type code -> big-endian numpy dtype (the format stores everything most significant byte first)
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message says where it was looked for and how to get it."""


class IdxFormatError(ValueError):
    """An IDX file is corrupt or truncated; the message names the file."""


def default_root() -> Path:
    """The directory searched when no ``root`` is given: ``$NPUQ_FASHION_MNIST`` or the Debian path."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_ROOT


def _resolve_root(root) -> Path:
    return Path(root) if root is not None else default_root()


def _where_from(root: Path) -> str:
    """How ``root`` was chosen, so that a "not found" message tells the user what to change."""
    env = os.environ.get(ENV_VAR)
    if env and Path(env) == root:
        return f"the directory named by {ENV_VAR}={env}"
    if root == DEFAULT_ROOT:
        return f"the Debian package's directory {DEFAULT_ROOT}"
    return f"the directory {root}"


def _find_file(root: Path, stem: str) -> Path:
    candidates = [root / f"{stem}.gz", root / stem]
    for path in candidates:
        if path.is_file():
            return path
    where = _where_from(root)
    if where.startswith("the Debian"):
        fix = (
            f"install the dataset with `sudo apt-get install dataset-fashion-mnist`, or set the environment "
            f"variable {ENV_VAR} to a directory holding the IDX files"
        )
    elif ENV_VAR in where:
        fix = (
            f"point {ENV_VAR} at the directory that holds {stem}.gz (or unset it to use the Debian package "
            f"dataset-fashion-mnist)"
        )
    else:
        fix = (
            f"pass a directory holding the IDX files, or leave root unset to use {ENV_VAR} or the Debian "
            f"package (`sudo apt-get install dataset-fashion-mnist`)"
        )
    raise DatasetNotFoundError(
        f"Fashion-MNIST file {candidates[0]} (or {candidates[1].name}) not found in {where}; {fix}"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise IdxFormatError(f"{path}: cannot decompress ({exc}); the file is corrupt or truncated") from exc


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an IDX blob: 2 zero bytes, a type code, the number of dimensions, the big-endian
    uint32 dimensions, then the values. Raises IdxFormatError (naming ``name``) on any mismatch."""
    if len(data) < 4:
        raise IdxFormatError(f"{name}: only {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(f"{name}: bad IDX magic number 0x{data[:4].hex()} (the first two bytes must be zero)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise IdxFormatError(f"{name}: unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise IdxFormatError(f"{name}: IDX header declares zero dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(f"{name}: truncated IDX header ({len(data)} bytes, {header_len} needed)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header_len + math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{name}: {what}: header says shape {dims} of {dtype.name} ({expected} bytes in all), "
            f"file holds {len(data)} bytes"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return values.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def read_idx(path) -> np.ndarray:
    """Read one IDX file, gzip-compressed if its name ends in ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"IDX file not found: {path}")
    return parse_idx(_read_bytes(path), str(path))


@functools.lru_cache(maxsize=8)
def _load_cached(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _FILES[split]
    image_path = _find_file(Path(root), image_stem)
    label_path = _find_file(Path(root), label_stem)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxFormatError(
            f"{image_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxFormatError(f"{label_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise IdxFormatError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path}")
    if labels.size and labels.max() >= len(CLASSES):
        raise IdxFormatError(f"{label_path}: label {labels.max()} out of range 0..{len(CLASSES) - 1}")
    labels = labels.astype(np.int64)
    # shared between callers through the cache, so make accidental in-place edits fail loudly
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_split(split: str) -> None:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_fashion_mnist(split: str = "train", root=None) -> tuple[np.ndarray, np.ndarray]:
    """Images as a read-only uint8 array (N, 28, 28) and labels as int64 (N,).

    Parsed once per (split, root) and cached for the life of the process.
    """
    _check_split(split)
    return _load_cached(split, str(_resolve_root(root).resolve()))


@functools.lru_cache(maxsize=4)
def _tensors_cached(split: str, root: str):
    import torch

    images, labels = _load_cached(split, root)
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.from_numpy(labels.copy())
    return x, y


def fashion_mnist_tensors(split: str = "train", root=None):
    """Normalized float32 images (N, 1, 28, 28), ``(pixel/255 - MEAN) / STD``, and int64 labels (N,).

    The tensors are cached and shared between callers: treat them as read-only.
    """
    _check_split(split)
    return _tensors_cached(split, str(_resolve_root(root).resolve()))


def fashion_mnist_loader(
    split: str = "train",
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
    limit: int | None = None,
    root=None,
    drop_last: bool = False,
):
    """A DataLoader yielding ``(images, labels)`` batches from the in-memory tensors.

    ``limit`` keeps the first N samples (before shuffling). With ``shuffle=True`` the order comes
    from a ``torch.Generator`` seeded with ``seed`` when the loader is built: two loaders built
    with the same arguments yield the same batches, epoch after epoch. Batches are sliced from
    the tensors in one indexing operation (no per-sample collation), which keeps a 60k-image
    epoch cheap.
    """
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = fashion_mnist_tensors(split, root)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        x, y = x[:limit], y[:limit]
    dataset = TensorDataset(x, y)
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    # batch_size=None: each sampled index list fetches a whole batch via tensor indexing
    return DataLoader(dataset, sampler=batches, batch_size=None, collate_fn=_as_tuple)


def _as_tuple(batch):
    return tuple(batch)
