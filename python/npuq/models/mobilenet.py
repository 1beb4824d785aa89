"""MobileNet V1 and V2 sized for 28x28x1 inputs (Fashion-MNIST), 10 classes.

Both are built only from plain ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU``/``nn.ReLU6``,
``nn.AdaptiveAvgPool2d(1)``, ``torch.flatten`` and ``nn.Linear``, with a residual written as a
plain ``x + y``, so that ``torch.fx.symbolic_trace`` yields a graph whose every node a
quantizer can recognise (conv -> BN -> activation chains, adds, pooling, the classifier).

Sizing: the stem convolution has stride 2, so the body runs at 14x14 -> 7x7 -> 4x4. At width
0.5 each network costs about 3 million multiply-accumulates per image, which keeps a float
forward of the 10k test images around a second on two CPU cores -- the budget that lets a
benchmark evaluate hundreds of quantized variants on the full test set. (Feed batches of a few
hundred images: at 1000 the expanded V2 activations no longer fit in cache and the same forward
takes about twice as long.)
"""

from __future__ import annotations

import torch
from torch import nn

from npuq.models.blocks import conv_bn, scale_channels
from npuq.registry import MODELS

NUM_CLASSES = 10

# MobileNet V1 body: (output channels at width 1, stride) of each depthwise-separable block.
# The ImageNet sequence up to 512 channels, with two of its five 512-channel blocks and without
# the final 1024 stage: enough depth for Fashion-MNIST within the CPU budget.
V1_BLOCKS = (
    (64, 1),  # 14x14
    (128, 2),  # 7x7
    (128, 1),
    (256, 2),  # 4x4
    (256, 1),
    (512, 1),
    (512, 1),
)
V1_STEM = 32

# MobileNet V2 body: (expansion t, output channels c at width 1, repeats n, stride s of the first).
# The ImageNet table cut to fit 28x28 inputs and the CPU budget: the t=1 block downsamples
# (14x14 -> 7x7) so that no expanded tensor lives at 14x14, the second downsampling takes 7x7 ->
# 4x4, the repeats are trimmed (24: 2->1, 64: 4->3, 96: 3->2, 160: 3->1) and the 320 stage is
# dropped. Six-fold expansion with ReLU6 is kept: it is what makes V2 hard to quantize.
V2_BLOCKS = (
    (1, 16, 1, 2),  # 14x14 -> 7x7
    (6, 24, 1, 1),
    (6, 32, 3, 2),  # 7x7 -> 4x4
    (6, 64, 3, 1),
    (6, 96, 2, 1),
    (6, 160, 1, 1),
)
V2_STEM = 32
V2_LAST = 1280


class DepthwiseSeparable(nn.Module):
    """MobileNet V1 block: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.depthwise = nn.Sequential(*conv_bn(cin, cin, 3, stride, groups=cin), nn.ReLU(inplace=False))
        self.pointwise = nn.Sequential(*conv_bn(cin, cout, 1, 1), nn.ReLU(inplace=False))

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNet V2 block: expand 1x1 + BN + ReLU6 (absent when t == 1), depthwise 3x3 + BN + ReLU6,
    linear projection 1x1 + BN; the input is added back when the shape is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*conv_bn(cin, hidden, 1, 1), nn.ReLU6(inplace=False)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=False)]
        layers += conv_bn(hidden, cout, 1, 1)
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_residual:
            return x + self.body(x)
        return self.body(x)


class MobileNet(nn.Module):
    """Common skeleton: ``features`` (stem + blocks [+ last conv]), global average pool, flatten,
    optional dropout, linear classifier."""

    def __init__(self, features: nn.Sequential, feature_channels: int, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        # None rather than nn.Identity: keeps a no-op node out of the traced graph
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.classifier = nn.Linear(feature_channels, NUM_CLASSES)
        _init_weights(self)

    def forward(self, x):
        x = self.features(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.classifier(x)


def _init_weights(model: nn.Module) -> None:
    # He init for convs (ReLU nets), unit BN, small normal classifier: the usual MobileNet recipe
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


@MODELS.register("mobilenet_v1")
def mobilenet_v1(width: float = 0.5, dropout: float = 0.0) -> MobileNet:
    """MobileNet V1 for 28x28x1: 3x3 stride-2 stem, the blocks of ``V1_BLOCKS``, pool, linear."""
    cin = scale_channels(V1_STEM, width)
    layers: list[nn.Module] = [nn.Sequential(*conv_bn(1, cin, 3, 2), nn.ReLU(inplace=False))]
    for channels, stride in V1_BLOCKS:
        cout = scale_channels(channels, width)
        layers.append(DepthwiseSeparable(cin, cout, stride))
        cin = cout
    return MobileNet(nn.Sequential(*layers), cin, dropout)


@MODELS.register("mobilenet_v2")
def mobilenet_v2(width: float = 0.5, dropout: float = 0.0) -> MobileNet:
    """MobileNet V2 for 28x28x1: 3x3 stride-2 stem, the inverted residuals of ``V2_BLOCKS``,
    a last 1x1 conv to ``1280 * width`` channels, pool, (dropout), linear."""
    cin = scale_channels(V2_STEM, width)
    layers: list[nn.Module] = [nn.Sequential(*conv_bn(1, cin, 3, 2), nn.ReLU6(inplace=False))]
    for t, c, n, s in V2_BLOCKS:
        cout = scale_channels(c, width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    last = scale_channels(V2_LAST, width)
    layers.append(nn.Sequential(*conv_bn(cin, last, 1, 1), nn.ReLU6(inplace=False)))
    return MobileNet(nn.Sequential(*layers), last, dropout)


def count_macs(model: nn.Module, input_shape=(1, 1, 28, 28), per_layer: bool = False):
    """Multiply-accumulates of one forward pass per image, counted with forward hooks on every
    Conv2d and Linear (BN, activations, pooling and adds are not MACs and are left out).

    Returns the total, or ``(total, rows)`` with ``rows`` a list of
    ``(name, kind, in_channels, out_channels, stride, output_hw, macs)`` when ``per_layer``.
    """
    rows = []
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            batch = output.shape[0]
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_out = kh * kw * module.in_channels // module.groups
                macs = output.numel() // batch * per_out
                if module.groups == module.in_channels and module.groups > 1:
                    kind = "dw"
                elif (kh, kw) == (1, 1):
                    kind = "pw"
                else:
                    kind = "conv"
                rows.append(
                    (
                        name,
                        kind,
                        module.in_channels,
                        module.out_channels,
                        module.stride[0],
                        tuple(output.shape[2:]),
                        macs,
                    )
                )
            else:
                macs = module.in_features * module.out_features
                rows.append((name, "fc", module.in_features, module.out_features, 1, (), macs))

        return record

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    total = sum(r[-1] for r in rows)
    return (total, rows) if per_layer else total
