"""Baselines from data-free quantization (Nagel et al., ICCV 2019): cross-layer equalization (CLE),
high-bias absorption and bias correction, on a prepared :class:`~npuq.quant.graph.Graph`.

CLE rescales output channel ``i`` of a layer by ``1 / s_i`` and the matching input channel of the next
layer by ``s_i`` with ``s_i = sqrt(r1_i / r2_i)``, which leaves the float function unchanged through a
ReLU (positive homogeneity) and gives both layers the same per-channel range ``sqrt(r1_i r2_i)``. A
ReLU6 is not homogeneous (its clip at 6 would have to move per channel), so, as in the paper, CLE
replaces the ReLU6 of every equalized pair by a ReLU and says so in its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from npuq.quant.graph import Graph, Node


@dataclass
class EqualizationResult:
    pairs: list[tuple[str, str]] = field(default_factory=list)   # (producer, consumer) paths equalized
    relu6_replaced: list[str] = field(default_factory=list)        # paths whose ReLU6 became a ReLU
    sweeps: int = 0
    absorbed: dict[str, float] = field(default_factory=dict)      # path -> total bias moved to the next layer


def equalizable_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """Consecutive (layer, layer) pairs where the first feeds only the second, through at most a ReLU(6)."""
    pairs = []
    for a in graph.layers():
        users = graph.users(a.name)
        if len(users) != 1 or a.name == graph.output_name:
            continue
        b = users[0]
        if not b.is_layer or b.inputs != [a.name]:
            continue
        if a.kind == "linear" and b.kind != "linear":
            continue
        if b.kind == "linear" and a.kind != "linear":
            continue
        if b.kind == "conv" and b.weight.shape[1] * b.attrs["groups"] != a.out_channels:
            continue
        pairs.append((a, b))
    return pairs


def _input_channel_absmax(b: Node) -> torch.Tensor:
    w = b.weight.double().abs()
    if b.kind == "linear":
        return w.amax(dim=0)
    g = b.attrs["groups"]
    cout, cin_g = w.shape[0], w.shape[1]
    return w.reshape(g, cout // g, cin_g, -1).amax(dim=(1, 3)).reshape(-1)


def _scale_input_channels(b: Node, s: torch.Tensor) -> None:
    w = b.weight.double()
    if b.kind == "linear":
        b.weight = (w * s.reshape(1, -1)).float()
        return
    g = b.attrs["groups"]
    cout, cin_g = w.shape[0], w.shape[1]
    b.weight = (w.reshape(g, cout // g, cin_g, -1) * s.reshape(g, 1, cin_g, 1)).reshape(w.shape).float()


def _input_channel_sums(b: Node) -> torch.Tensor:
    """For each output channel o and input channel i, the sum of the weights connecting them: (C_out, C_in)."""
    w = b.weight.double()
    if b.kind == "linear":
        return w
    g = b.attrs["groups"]
    cout, cin_g = w.shape[0], w.shape[1]
    summed = w.reshape(cout, cin_g, -1).sum(dim=2)  # (C_out, C_in/g)
    full = torch.zeros(cout, cin_g * g, dtype=torch.float64)
    for grp in range(g):
        rows = slice(grp * (cout // g), (grp + 1) * (cout // g))
        full[rows, grp * cin_g:(grp + 1) * cin_g] = summed[rows]
    return full


def cross_layer_equalize(graph: Graph, *, max_sweeps: int = 50, tol: float = 1e-4,
                         absorb_high_bias: bool = True) -> EqualizationResult:
    """Equalize ``graph`` in place; optionally absorb high biases into the next layer."""
    result = EqualizationResult()
    pairs = equalizable_pairs(graph)
    for a, b in pairs:
        result.pairs.append((a.path, b.path))
        if a.act == "relu6":
            a.act = "relu"
            result.relu6_replaced.append(a.path)
    for sweep in range(max_sweeps):
        worst = 0.0
        for a, b in pairs:
            r1 = a.weight.double().abs().reshape(a.out_channels, -1).amax(dim=1)
            r2 = _input_channel_absmax(b)
            ok = (r1 > 0) & (r2 > 0)
            s = torch.ones_like(r1)
            s[ok] = torch.sqrt(r1[ok] / r2[ok])
            shape = (-1,) + (1,) * (a.weight.dim() - 1)
            a.weight = (a.weight.double() / s.reshape(shape)).float()
            a.bias = (a.bias.double() / s).float()
            if a.bn is not None:
                a.bn = ((a.bn[0].double() / s).float(), (a.bn[1].double() / s).float())
            _scale_input_channels(b, s)
            worst = max(worst, float(torch.log(s).abs().max()))
        result.sweeps = sweep + 1
        if worst < tol:
            break
    if absorb_high_bias:
        for a, b in pairs:
            if a.act != "relu" or a.bn is None:
                continue
            beta, gamma = a.bn
            c = torch.clamp(beta.double() - 3.0 * gamma.double(), min=0.0)
            if not torch.any(c > 0):
                continue
            a.bias = (a.bias.double() - c).float()
            a.bn = ((beta.double() - c).float(), gamma)
            b.bias = (b.bias.double() + _input_channel_sums(b) @ c).float()
            result.absorbed[a.path] = float(c.sum())
    return result


def input_channel_means(graph: Graph, batches) -> dict[str, torch.Tensor]:
    """Per-input-channel mean of every layer's float input over calibration batches."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    layers = graph.layers()
    for x in batches:
        _, env = graph.run_float(x, capture=True)
        count += x.shape[0]  # weight by samples: a short last batch must not count as a full one
        for n in layers:
            v = env[n.inputs[0]].double()
            m = v.sum(dim=0).mean(dim=(1, 2)) if v.dim() == 4 else v.sum(dim=0)
            sums[n.name] = sums.get(n.name, 0) + m
    if count == 0:
        raise ValueError("bias correction needs calibration data: the calibration loader yielded no batches")
    return {k: v / count for k, v in sums.items()}


def bias_correction(node: Node, quantized_weight: torch.Tensor, input_mean: torch.Tensor) -> torch.Tensor:
    """Bias that cancels the expected output shift ``E[(W_q - W) x]`` caused by weight quantization.

    Empirical variant of the paper's correction: ``E[x]`` per input channel is measured on calibration
    data instead of derived from the previous batch norm; border padding is ignored, as in the paper.
    """
    err = node.weight.double()
    err = quantized_weight.double() - err
    tmp = Node(name=node.name, kind=node.kind, inputs=node.inputs, path=node.path, weight=err, attrs=node.attrs)
    shift = _input_channel_sums(tmp) @ input_mean.double()
    return (node.bias.double() - shift).float()


__all__ = ["EqualizationResult", "bias_correction", "cross_layer_equalize", "equalizable_pairs",
           "input_channel_means"]
