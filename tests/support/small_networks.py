"""Random small networks (hypothesis): every op kind the NPU runs, in random sizes and orders, shared by the
emulator's bit-exactness tests and the CUDA tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st


@st.composite
def small_networks(draw):
    """A random small CNN covering every op kind: convs with random (non-square) kernel, stride, padding and
    dilation, grouped and depthwise; residual adds; average (with and without counting the padding), max
    (also ceil mode) and global pooling; table activations; squeeze-excitation (a broadcast multiply);
    fire modules (concat); ShuffleNet units (split, concat, channel shuffle); zero padding; nearest and
    bilinear upsampling; a head that flattens either a pooled 1x1 map or a whole H x W map into linears."""
    c = draw(st.integers(1, 4))
    h, w = draw(st.integers(4, 11)), draw(st.integers(4, 11))
    spec = {"c_in": c, "h": h, "w": w, "blocks": []}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                ["conv", "conv", "conv", "avg_pool", "max_pool", "act", "se", "fire", "shuffle", "upsample", "pad"]
            )
        )
        if kind == "act":
            spec["blocks"].append(dict(kind="act", fn=draw(st.sampled_from(sorted(ACTIVATIONS)))))
            continue
        if kind == "se":
            spec["blocks"].append(dict(kind="se", c=c, hidden=max(1, c // 2), gate=draw(st.sampled_from(GATES))))
            continue
        if kind == "fire":
            e1, e2 = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            spec["blocks"].append(dict(kind="fire", c_in=c, squeeze=draw(st.integers(1, 3)), e1=e1, e2=e2))
            c = e1 + e2
            continue
        if kind == "shuffle":
            if c % 2:
                continue
            spec["blocks"].append(dict(kind="shuffle", c=c))
            continue
        if kind == "upsample":
            f = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
            if h * f[0] > 24 or w * f[1] > 24:
                continue
            spec["blocks"].append(dict(kind="upsample", f=f, mode=draw(st.sampled_from(["nearest", "bilinear"]))))
            h, w = h * f[0], w * f[1]
            continue
        if kind == "pad":
            p = tuple(draw(st.integers(0, 2)) for _ in range(4))  # left, right, top, bottom
            spec["blocks"].append(dict(kind="pad", p=p))
            h, w = h + p[2] + p[3], w + p[0] + p[1]
            continue
        if kind == "conv":
            groups = draw(st.sampled_from(sorted({1, c} | {g for g in (2, 3) if c % g == 0})))
            residual = draw(st.integers(0, 2)) == 0  # a block shaped for a residual add: same size, same width
            if residual:
                c_out = c
            elif groups == c and c > 1 and draw(st.booleans()):
                c_out = c * draw(st.integers(1, 2))  # depthwise (with a depth multiplier)
            else:
                c_out = groups * draw(st.integers(1, max(1, 8 // groups)))
            k = tuple(draw(st.sampled_from([1, 3] if residual else [1, 2, 3])) for _ in range(2))
            dil = tuple(draw(st.sampled_from([1, 2])) if kk > 1 else 1 for kk in k)
            ext = [d * (kk - 1) + 1 for d, kk in zip(dil, k)]
            if residual:
                pad, stride = tuple((e - 1) // 2 for e in ext), (1, 1)
            else:
                pad = tuple(draw(st.integers(0, e - 1)) for e in ext)
                stride = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
            size = [(n + 2 * p - e) // s + 1 for n, p, e, s in zip((h, w), pad, ext, stride)]
            if min(size) < 1:
                continue
            block = dict(
                kind="conv",
                c_in=c,
                c_out=c_out,
                k=k,
                stride=stride,
                pad=pad,
                dil=dil,
                groups=groups,
                bias=draw(st.booleans()),
                bn=draw(st.booleans()),
                act=draw(st.sampled_from([None, "relu", "relu6"])),
                residual=residual,
            )
            assert not residual or (size == [h, w] and c_out == c)
            c, (h, w) = c_out, size
        else:
            k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
            stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
            pad = tuple(draw(st.integers(0, kk // 2)) for kk in k)
            ceil = kind == "max_pool" and draw(st.booleans())
            size = [_pool_size(n, kk, s, p, ceil) for n, p, kk, s in zip((h, w), pad, k, stride)]
            if min(size) < 1:
                continue
            block = dict(kind=kind, k=k, stride=stride, pad=pad, count_include_pad=draw(st.booleans()), ceil=ceil)
            h, w = size
        spec["blocks"].append(block)
    spec["head"] = draw(st.sampled_from(["global", "global_mean", "flatten"]))
    spec["features"] = c if spec["head"] != "flatten" else c * h * w
    spec["hidden"] = draw(st.sampled_from([0, 0, 7]))
    spec["seed"] = draw(st.integers(0, 2**16))
    return spec


ACTIVATIONS = {
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "hardtanh": nn.Hardtanh,
    "relu": nn.ReLU,
}
GATES = ("hardsigmoid", "sigmoid")


def _pool_size(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    if not ceil:
        return (n + 2 * p - k) // s + 1
    size = -(-(n + 2 * p - k) // s) + 1
    return size - 1 if (size - 1) * s >= n + p else size


def conv_count(spec) -> int:
    """The conv2d ops a compiled SmallNet has."""
    per_block = {"conv": 1, "se": 2, "fire": 3, "shuffle": 1}
    return sum(per_block.get(b["kind"], 0) for b in spec["blocks"])


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, hidden: int, gate: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, c, 1)
        self.gate = ACTIVATIONS[gate]()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(F.relu(self.fc1(s))))


class Fire(nn.Module):
    def __init__(self, c_in: int, squeeze: int, e1: int, e2: int):
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.e1, self.e2 = nn.Conv2d(squeeze, e1, 1), nn.Conv2d(squeeze, e2, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e2(x))], 1)


class ShuffleUnit(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.branch = nn.Conv2d(c // 2, c // 2, 1)

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        y = torch.cat((x1, F.relu(self.branch(x2))), dim=1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w)
        return torch.transpose(y, 1, 2).contiguous().view(n, c, h, w)


class SmallNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList()
        for b in spec["blocks"]:
            if b["kind"] == "conv":
                conv = nn.Conv2d(
                    b["c_in"], b["c_out"], b["k"], b["stride"], b["pad"], b["dil"], b["groups"], bias=b["bias"]
                )
                self.layers.append(nn.Sequential(conv, nn.BatchNorm2d(b["c_out"])) if b["bn"] else conv)
            elif b["kind"] == "avg_pool":
                self.layers.append(
                    nn.AvgPool2d(b["k"], b["stride"], b["pad"], count_include_pad=b["count_include_pad"])
                )
            elif b["kind"] == "max_pool":
                self.layers.append(nn.MaxPool2d(b["k"], b["stride"], b["pad"], ceil_mode=b["ceil"]))
            elif b["kind"] == "act":
                self.layers.append(ACTIVATIONS[b["fn"]]())
            elif b["kind"] == "se":
                self.layers.append(SqueezeExcite(b["c"], b["hidden"], b["gate"]))
            elif b["kind"] == "fire":
                self.layers.append(Fire(b["c_in"], b["squeeze"], b["e1"], b["e2"]))
            elif b["kind"] == "shuffle":
                self.layers.append(ShuffleUnit(b["c"]))
            elif b["kind"] == "upsample":
                corners = {"align_corners": False} if b["mode"] == "bilinear" else {}
                self.layers.append(nn.Upsample(scale_factor=b["f"], mode=b["mode"], **corners))
            else:
                self.layers.append(nn.ZeroPad2d(b["p"]))
        out = spec["features"]
        if spec["hidden"]:
            self.hidden = nn.Linear(out, spec["hidden"])
            out = spec["hidden"]
        self.fc = nn.Linear(out, 5)

    def forward(self, x):
        for b, layer in zip(self.spec["blocks"], self.layers):
            y = layer(x)
            if b["kind"] == "conv":
                if b["residual"]:
                    y = y + x
                if b["act"] == "relu":
                    y = F.relu(y)
                elif b["act"] == "relu6":
                    y = F.relu6(y)
            x = y
        head = self.spec["head"]
        if head == "global":
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        elif head == "global_mean":
            x = x.mean((2, 3))
        else:
            x = torch.flatten(x, 1)
        if self.spec["hidden"]:
            x = F.relu(self.hidden(x))
        return self.fc(x)
