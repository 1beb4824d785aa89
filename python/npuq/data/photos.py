"""Real photographs for measuring a quantized ImageNet model against its float original, offline.

No labelled ImageNet data can be had on a machine that reaches only package registries, so the
fidelity of a quantized model is measured against the FP32 model on real photographs: how often the
two agree on the top-1 class, how often FP32's class is in the quantized top-5, the mean KL divergence
of the two softmax outputs, and the SQNR of the logits (:mod:`npuq.fidelity`). Agreement is not
accuracy: the paper's ImageNet accuracies are quoted in the docs, never claimed.

The photographs are those bundled with scikit-image (the ``imagenet`` extra installs it): the files are
read straight from its package data with Pillow, no download and no code from them. Calibration and
evaluation crops come from disjoint source photographs (:data:`CALIBRATION_SOURCES`,
:data:`EVALUATION_SOURCES`), so a quantizer tuned on the calibration set is judged on scenes it never
saw. Crops are deterministic for a seed: a square window of 25-100% of the shorter side at a random
position, flipped left-right with probability 1/2, resized to ``size`` with Pillow's bilinear filter
(with antialiasing), as RGB floats in [0, 1]. Grey photographs are replicated to three channels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Photographs of scenes and objects (no charts, logos, synthetic test patterns or binary masks).
# The two motorcycle views are a stereo pair: they stay on the same side of the split.
CALIBRATION_SOURCES = ("coffee.png", "ihc.png", "grass.png", "gravel.png", "text.png", "clock_motion.png")
EVALUATION_SOURCES = (
    "chelsea.png",
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "brick.png",
    "cell.png",
    "microaneurysms.png",
    "page.png",
)
SPLITS = ("calibration", "evaluation")
MIN_CROP_FRACTION = 0.25


class PhotosNotFoundError(FileNotFoundError):
    """The bundled photographs (scikit-image) are not installed, or one is missing."""


def source_names(split: str) -> tuple[str, ...]:
    """The photographs of a split, by file name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return CALIBRATION_SOURCES if split == "calibration" else EVALUATION_SOURCES


def photo_directory() -> Path:
    """scikit-image's bundled data folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise PhotosNotFoundError(
            "the fidelity photographs come from scikit-image's bundled data, and scikit-image "
            'is not installed; install it with: pip install "npuq[imagenet]" (or pip install '
            "scikit-image)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_photo(name: str, directory: Path | None = None) -> np.ndarray:
    """One photograph as uint8 RGB (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    path = (directory or photo_directory()) / name
    if not path.is_file():
        raise PhotosNotFoundError(f"photograph {path} is missing; reinstall scikit-image")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise PhotosNotFoundError(f"photograph {path} cannot be decoded: {exc}") from exc
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or min(arr.shape[:2]) < 32:
        raise PhotosNotFoundError(f"photograph {path} has shape {arr.shape}; expected an RGB image of at least 32x32")
    return arr


@dataclass(frozen=True)
class CropSpec:
    """Where one crop comes from: photograph, square window (top, left, side) and flip."""

    source: str
    top: int
    left: int
    side: int
    flip: bool


def crop_specs(
    split: str, count: int, *, seed: int = 0, shapes: dict[str, tuple[int, int]] | None = None
) -> list[CropSpec]:
    """``count`` deterministic crop windows of ``split``, cycling over its photographs."""
    names = source_names(split)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if shapes is None:
        shapes = {n: load_photo(n).shape[:2] for n in names}
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    specs = []
    for i in range(count):
        name = names[i % len(names)]
        h, w = shapes[name]
        short = min(h, w)
        side = int(round(short * rng.uniform(MIN_CROP_FRACTION, 1.0)))
        side = max(16, min(side, short))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        specs.append(CropSpec(name, top, left, side, bool(rng.integers(0, 2))))
    return specs


def photo_crops(split: str, count: int, *, size: int = 224, seed: int = 0, progress: bool = False):
    """``count`` crops of ``split`` as a float32 torch tensor (count, 3, size, size) in [0, 1]."""
    import torch
    from PIL import Image

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 4096:
        raise ValueError(f"size must be an int in [16, 4096], got {size!r}")
    photos = {n: load_photo(n) for n in source_names(split)}
    specs = crop_specs(split, count, seed=seed, shapes={n: p.shape[:2] for n, p in photos.items()})
    out = np.empty((count, size, size, 3), dtype=np.float32)
    it = enumerate(specs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=count, desc=f"{split} crops", unit="crop", leave=False)
    for i, s in it:
        window = photos[s.source][s.top : s.top + s.side, s.left : s.left + s.side]
        im = Image.fromarray(window).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        out[i] = arr[:, ::-1] if s.flip else arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


__all__ = [
    "CALIBRATION_SOURCES",
    "CropSpec",
    "EVALUATION_SOURCES",
    "PhotosNotFoundError",
    "SPLITS",
    "crop_specs",
    "load_photo",
    "photo_crops",
    "photo_directory",
    "source_names",
]
