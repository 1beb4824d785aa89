"""Example networks (MobileNetV1/V2 for the quantization benchmark, a plain CNN in several widths for the
distillation experiments) and trained checkpoints."""

from npuq.models.cnn import CNN, cnn
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
    "cnn",
    "MODELS",
    "MobileNet",
    "build_model",
    "count_macs",
    "mobilenet_v1",
    "mobilenet_v2",
    "scale_channels",
]
