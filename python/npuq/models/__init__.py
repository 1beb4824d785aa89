"""Example networks (MobileNetV1/V2 for the quantization benchmark, a plain CNN in several widths for the
distillation experiments), trained checkpoints, and EfficientNet-Lite0 with its published ImageNet weights
(the ``imagenet`` extra).

:data:`MODELS` is the registry of the networks :func:`build_model` builds by name (``"cnn"``,
``"mobilenet_v1"``, ``"mobilenet_v2"``): a builder ``fn(width=..., **options) -> nn.Module`` joins it with
``@npuq.registry.MODELS.register("name")`` where it is defined (a module of its own is added to the
registry's providers)."""

from torch import nn

from npuq.models.blocks import scale_channels
from npuq.models.cnn import CNN, cnn
from npuq.models.efficientnet import EfficientNetLite, efficientnet_lite0
from npuq.models.mobilenet import MobileNet, count_macs, mobilenet_v1, mobilenet_v2
from npuq.registry import MODELS


def build_model(name: str, width: float = 0.5, **kwargs) -> nn.Module:
    """Build a registered model by name (see :data:`MODELS`); an unknown name raises a ValueError that lists
    the known ones."""
    return MODELS.get(name)(width=width, **kwargs)


__all__ = [
    "CNN",
    "EfficientNetLite",
    "cnn",
    "efficientnet_lite0",
    "MODELS",
    "MobileNet",
    "build_model",
    "count_macs",
    "mobilenet_v1",
    "mobilenet_v2",
    "scale_channels",
]
