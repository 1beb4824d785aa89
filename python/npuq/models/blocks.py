"""Building blocks shared by the example networks (:mod:`npuq.models.mobilenet`, :mod:`npuq.models.cnn`)."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn", "scale_channels"]


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to the nearest multiple of ``divisor`` (ties up), at least ``divisor``.

    Multiples of 8 map cleanly onto the vector lanes of the integer kernels.
    """
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    scaled = channels * width
    return max(divisor, int(scaled + divisor / 2) // divisor * divisor)


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    """A bias-free ``kernel x kernel`` convolution with "same" padding (odd kernels) and its BatchNorm."""
    # bias-free conv: the following BatchNorm supplies the shift, and folds into the conv later
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]
