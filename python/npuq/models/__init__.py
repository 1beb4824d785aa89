"""Example networks (MobileNetV1/V2 for the quantization benchmark, a plain CNN in several widths for the
distillation experiments), trained checkpoints, and EfficientNet-Lite0 with its published ImageNet weights
(the ``imagenet`` extra)."""

from npuq.models.cnn import CNN, cnn
from npuq.models.efficientnet import EfficientNetLite, efficientnet_lite0
from npuq.models.mobilenet import (
    MODELS,
    MobileNet,
    build_model,
    count_macs,
    mobilenet_v1,
    mobilenet_v2,
    scale_channels,
)

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
