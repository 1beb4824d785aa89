"""The convolution layers of MobileNetV2 (width multiplier 1.0), generated from the architecture table.

No torchvision: the table of Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks"
(2018), Table 2, is written out below and expanded layer by layer:

* stem: 3x3 conv, stride 2, padding 1, 3 -> 32 channels;
* 17 inverted residual blocks from the rows (t, c, n, s): each row gives ``n`` blocks with ``c`` output
  channels, the first of them with stride ``s`` (the others stride 1). A block with input ``C_in`` is
  expansion 1x1 ``C_in -> t * C_in`` (absent when t = 1), depthwise 3x3 ``t * C_in`` channels with
  padding 1 and the block's stride, projection 1x1 ``t * C_in -> c``;
* head: 1x1 conv 320 -> 1280 on the final 7x7 map (at 224x224 input).

Shapes are batch-independent: ``h``/``w`` are the layer's *input* spatial size. Identical layers
(same kind, C_in, C_out, H, W, stride) are merged by :func:`unique_layers`, which keeps how many times
each occurs in the network (``count``) and the names of the occurrences.

Run ``python3 benchmarks/mobilenetv2_layers.py`` to print the table.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

__all__ = ["ConvLayer", "INVERTED_RESIDUAL_SETTING", "mobilenetv2_layers", "unique_layers"]

# (expansion t, output channels c, repeats n, first stride s) -- MobileNetV2 Table 2, width 1.0.
INVERTED_RESIDUAL_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

_KIND_TAG = {"stem": "stem", "depthwise": "dw", "pointwise": "pw"}


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One 2-D convolution, independent of the batch size N.

    ``h``, ``w`` are the input spatial size; ``padding`` is symmetric (the same on all four sides);
    dilation is 1. Weight shapes: torch ``(c_out, c_in // groups, kernel, kernel)`` (OIHW), npuq
    ``(c_out, kernel, kernel, c_in // groups)`` (OHWI).
    """

    name: str  # name of the first occurrence, e.g. "block2.expand"
    kind: str  # "stem", "depthwise" or "pointwise"
    c_in: int
    c_out: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: int
    groups: int
    count: int = 1  # how many identical layers the network has
    occurrences: Tuple[str, ...] = ()  # names of all of them (in network order)

    # --- derived shapes -------------------------------------------------------------------------
    @property
    def key(self) -> Tuple[str, int, int, int, int, int]:
        """The deduplication key (kind, C_in, C_out, H, W, stride)."""
        return (self.kind, self.c_in, self.c_out, self.h, self.w, self.stride)

    @property
    def id(self) -> str:
        """A short unique id usable as a pytest id, e.g. ``pw16-96_112x112_s1``."""
        return f"{_KIND_TAG[self.kind]}{self.c_in}-{self.c_out}_{self.h}x{self.w}_s{self.stride}"

    @property
    def h_out(self) -> int:
        return (self.h + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def w_out(self) -> int:
        return (self.w + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def c_in_per_group(self) -> int:
        return self.c_in // self.groups

    @property
    def weight_shape_oihw(self) -> Tuple[int, int, int, int]:
        return (self.c_out, self.c_in_per_group, self.kernel, self.kernel)

    @property
    def weight_shape_ohwi(self) -> Tuple[int, int, int, int]:
        return (self.c_out, self.kernel, self.kernel, self.c_in_per_group)

    def input_shape_nhwc(self, n: int) -> Tuple[int, int, int, int]:
        return (n, self.h, self.w, self.c_in)

    def input_shape_nchw(self, n: int) -> Tuple[int, int, int, int]:
        return (n, self.c_in, self.h, self.w)

    def output_shape_nhwc(self, n: int) -> Tuple[int, int, int, int]:
        return (n, self.h_out, self.w_out, self.c_out)

    def macs(self, n: int = 1) -> int:
        """Multiply-accumulates of one forward pass at batch ``n``."""
        return n * self.h_out * self.w_out * self.c_out * self.c_in_per_group * self.kernel * self.kernel

    def shape_str(self) -> str:
        """e.g. ``3x3 dw 96 112x112 s2`` or ``1x1 16->96 112x112 s1``."""
        k = f"{self.kernel}x{self.kernel}"
        ch = f"dw {self.c_in}" if self.kind == "depthwise" else f"{self.c_in}->{self.c_out}"
        return f"{k} {ch} {self.h}x{self.w} s{self.stride}"


def mobilenetv2_layers(input_size: int = 224) -> List[ConvLayer]:
    """Every convolution of MobileNetV2 (width 1.0) in network order, without deduplication."""
    layers: List[ConvLayer] = []
    size = input_size

    def add(name, kind, c_in, c_out, kernel, stride, padding, groups):
        nonlocal size
        layer = ConvLayer(
            name=name,
            kind=kind,
            c_in=c_in,
            c_out=c_out,
            h=size,
            w=size,
            kernel=kernel,
            stride=stride,
            padding=padding,
            groups=groups,
            count=1,
            occurrences=(name,),
        )
        layers.append(layer)
        size = layer.h_out
        return c_out

    channels = add("stem", "stem", 3, STEM_CHANNELS, 3, 2, 1, 1)
    block = 0
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            block += 1
            stride = s if i == 0 else 1
            hidden = channels * t
            if t != 1:
                add(f"block{block}.expand", "pointwise", channels, hidden, 1, 1, 0, 1)
            add(f"block{block}.depthwise", "depthwise", hidden, hidden, 3, stride, 1, hidden)
            channels = add(f"block{block}.project", "pointwise", hidden, c, 1, 1, 0, 1)
    add("head", "pointwise", channels, HEAD_CHANNELS, 1, 1, 0, 1)
    return layers


def unique_layers(input_size: int = 224) -> List[ConvLayer]:
    """The distinct layers (by kind, C_in, C_out, H, W, stride) in order of first occurrence, each
    with ``count`` and ``occurrences`` filled in. ``sum(l.count for l in ...)`` is the number of
    convolutions of the network."""
    merged: Dict[tuple, List[ConvLayer]] = {}
    for layer in mobilenetv2_layers(input_size):
        merged.setdefault(layer.key, []).append(layer)
    out = []
    for group in merged.values():
        first = group[0]
        out.append(dataclasses.replace(first, count=len(group), occurrences=tuple(l.name for l in group)))
    return out


def _main() -> None:
    all_layers = mobilenetv2_layers()
    uniq = unique_layers()
    print(f"{'id':<24} {'name':<20} {'kind':<9} {'shape':<28} {'out':>9} {'count':>5} {'MMAC':>8}")
    for l in uniq:
        print(
            f"{l.id:<24} {l.name:<20} {l.kind:<9} {l.shape_str():<28} "
            f"{l.h_out:>4}x{l.w_out:<4} {l.count:>5} {l.macs() / 1e6:>8.2f}"
        )
    total = sum(l.macs() for l in all_layers)
    print(
        f"{len(all_layers)} conv layers, {len(uniq)} distinct, {total / 1e6:.1f} MMAC per image "
        f"(the paper quotes ~300M multiply-adds for the whole network)"
    )


if __name__ == "__main__":
    _main()
