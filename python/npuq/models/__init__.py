"""Example networks for the post-training quantization benchmark, and their trained checkpoints."""

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
    "MODELS",
    "MobileNet",
    "build_model",
    "count_macs",
    "mobilenet_v1",
    "mobilenet_v2",
    "scale_channels",
]
