"""Quantization-aware training: the prepared graph as a trainable float module whose conv / linear
weights pass through the weight quantizer (WESS by default) with a straight-through estimator.

``FakeQuantModel(graph, bits=4, method="wess")`` holds the batch-norm-folded weights and biases of every
layer as parameters. Its forward runs the graph in float with each weight replaced by its quantized
value ``dequantize(quantize_weight(w))`` (the same quantizer the post-training path uses), while the
gradient flows to ``w`` as if the rounding were the identity (STE: ``w + (w_q - w).detach()``). Scales
and WESS shifts are recomputed from the current weights at every step. Activations stay float during
training: ``to_graph()`` gives the trained graph, which :func:`npuq.quantize` then quantizes for real
(activation calibration, integer arithmetic), so the accuracy reported is that of the NPU's integers.

Used as the student of quantization-aware distillation (the FP32 model as teacher): see
``scripts/qat_distill.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from npuq.quant.graph import Graph, run_float_node
from npuq.quant.weights import quantize_weight


class FakeQuantModel(nn.Module):
    """A prepared :class:`Graph` as a trainable module with fake-quantized weights (see module doc)."""

    def __init__(self, graph: Graph, *, bits: int = 4, method: str = "wess", shift_bits: int = 4):
        super().__init__()
        graph.check_supported(" Quantization-aware training covers NPU ops only.")
        quantize_weight(graph.layers()[0].weight, method, bits, shift_bits=shift_bits)  # validates the options
        self.graph = graph.clone()
        self.bits, self.method, self.shift_bits = bits, method, shift_bits
        # parameter names cannot hold dots: index the layers by position
        self.names = [n.name for n in self.graph.layers()]
        self.weights = nn.ParameterList([nn.Parameter(n.weight.clone()) for n in self.graph.layers()])
        self.biases = nn.ParameterList([nn.Parameter(n.bias.clone()) for n in self.graph.layers()])

    def quantized_weight(self, i: int) -> torch.Tensor:
        w = self.weights[i]
        if not torch.any(w != 0):  # an all-zero layer quantizes to itself
            return w
        wq = (
            quantize_weight(w.detach(), self.method, self.bits, shift_bits=self.shift_bits, name=self.names[i])
            .dequantize()
            .to(w.dtype)
        )
        return w + (wq - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {}
        index = {name: i for i, name in enumerate(self.names)}
        for node in self.graph:
            if node.is_layer:
                i = index[node.name]
                env[node.name] = run_float_node(self.graph, node, env, x, self.quantized_weight(i), self.biases[i])
            else:
                env[node.name] = run_float_node(self.graph, node, env, x)
        return env[self.graph.output_name]

    @torch.no_grad()
    def to_graph(self) -> Graph:
        """A copy of the graph holding the trained (float) weights and biases."""
        graph = self.graph.clone()
        for i, name in enumerate(self.names):
            graph[name].weight = self.weights[i].detach().clone()
            graph[name].bias = self.biases[i].detach().clone()
        return graph


__all__ = ["FakeQuantModel"]
