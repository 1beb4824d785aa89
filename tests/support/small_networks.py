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
    and global pooling; a head that flattens either a pooled 1x1 map or a whole H x W map into linears."""
    c = draw(st.integers(1, 4))
    h, w = draw(st.integers(4, 11)), draw(st.integers(4, 11))
    spec = {"c_in": c, "h": h, "w": w, "blocks": []}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "conv", "avg_pool", "max_pool"]))
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
            size = [(n + 2 * p - kk) // s + 1 for n, p, kk, s in zip((h, w), pad, k, stride)]
            if min(size) < 1:
                continue
            block = dict(kind=kind, k=k, stride=stride, pad=pad, count_include_pad=draw(st.booleans()))
            h, w = size
        spec["blocks"].append(block)
    spec["head"] = draw(st.sampled_from(["global", "global_mean", "flatten"]))
    spec["features"] = c if spec["head"] != "flatten" else c * h * w
    spec["hidden"] = draw(st.sampled_from([0, 0, 7]))
    spec["seed"] = draw(st.integers(0, 2**16))
    return spec


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
            else:
                self.layers.append(nn.MaxPool2d(b["k"], b["stride"], b["pad"]))
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
