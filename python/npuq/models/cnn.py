"""A plain convolutional network for 28x28 Fashion-MNIST, in widths from tiny to wide.

Used as teacher and student in the distillation experiments: ``cnn(width=4)`` and ``cnn(width=0.25)``
differ in capacity by two orders of magnitude with the same structure, so feature taps line up by name
(``CNN.stage_outputs``: ``features.2``, ``features.6``, ``features.10``, the ReLU ending each stage).
"""

from __future__ import annotations

import torch.nn as nn

from npuq.models.blocks import conv_bn, scale_channels
from npuq.registry import MODELS


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [*conv_bn(cin, cout, 3, 1), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """Three stages of conv-BN-ReLU (28x28 -> 14x14 -> 7x7), global average pool, linear classifier."""

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        c1, c2, c3 = (scale_channels(c, width, divisor=4) for c in (32, 64, 128))
        self.width = width
        self.features = nn.Sequential(
            *_block(in_channels, c1),  # 0-2
            nn.MaxPool2d(2),
            *_block(c1, c2),  # 3, 4-6
            nn.MaxPool2d(2),
            *_block(c2, c3),  # 7, 8-10
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, num_classes)
        self.stage_outputs = ("features.2", "features.6", "features.10")  # the ReLU ending each stage

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@MODELS.register("cnn")
def cnn(width: float = 1.0, dropout: float = 0.0) -> CNN:
    if dropout:
        raise ValueError("cnn has no dropout option")
    return CNN(width)


__all__ = ["CNN", "cnn"]
