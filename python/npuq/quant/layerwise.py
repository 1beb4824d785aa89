"""Quantizing a whole graph layer by layer on calibration data: the data-aware weight methods
(:mod:`npuq.quant.data_aware`) and adaptive rounding (:mod:`npuq.quant.adaround`) both minimize each layer's
output error on the inputs the layer sees, which come either from the float model or through the layers in
front of it, already quantized (``layer_inputs``)."""

from __future__ import annotations

import math

from npuq.quant.adaround import AdaRoundConfig, adaround_weight
from npuq.quant.data_aware import (
    DEFAULT_DAMPING,
    _accumulator_for,
    default_positions,
    layer_objective,
)
from npuq.quant.graph import run_float_node
from npuq.quant.weights import _quantizer, quantize_weight

__all__ = ["LAYER_INPUTS", "quantize_graph_data_aware", "resolve_adaround"]

LAYER_INPUTS = ("quantized", "float")


def resolve_adaround(adaround):
    """``npuq.quantize``'s ``adaround`` argument as an AdaRoundConfig, or None for nearest rounding."""
    if adaround is False or adaround is None:
        return None
    if adaround is True:
        return AdaRoundConfig()
    if isinstance(adaround, AdaRoundConfig):
        return adaround
    raise TypeError(f"adaround must be False, True or an npuq.quant.adaround.AdaRoundConfig, got {adaround!r}")


def _users_count(graph) -> dict[str, int]:
    return {n.name: len(graph.users(n.name)) for n in graph}


def quantize_graph_data_aware(
    graph,
    batches,
    method: str,
    bits: int,
    shift_bits: int = 4,
    *,
    adaround=None,
    layer_inputs: str = "quantized",
    centered: bool = False,
    damping: float = DEFAULT_DAMPING,
    positions: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Quantize every conv / linear layer of ``graph`` with ``method`` using calibration ``batches``.

    Layers are visited in execution order. For each, the moments of its inputs are collected
    (:class:`~npuq.quant.data_aware.LayerStats`), its weight is quantized (data-aware methods use the moments; the
    others ignore them) and, when ``adaround`` is an :class:`~npuq.quant.adaround.AdaRoundConfig`, re-rounded on the
    same grid to minimize the layer's output error. ``layer_inputs="quantized"``: each layer's inputs come from the
    calibration batches run through the float graph with every layer in front already quantized (weight-only), and
    the target is the float model's output of the layer (see :mod:`npuq.quant.adaround` for why this is the
    default); ``"float"``: from the float graph. ``positions``: conv output positions sampled per batch (None:
    :func:`~npuq.quant.data_aware.default_positions`).

    Returns ``{node name: QuantizedWeight}``. Memory: ``"quantized"`` holds the live activations of all
    calibration batches twice (float and quantized); ``"float"`` one batch at a time.
    """
    if layer_inputs not in LAYER_INPUTS:
        raise ValueError(f"layer_inputs must be one of {', '.join(map(repr, LAYER_INPUTS))}, got {layer_inputs!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("data-aware weight quantization needs calibration batches")
    quantizer, data_aware = _quantizer(method)
    layers = graph.layers()
    index = {n.name: i for i, n in enumerate(layers)}

    def accumulator(node, paired):
        dim = int(math.prod(node.weight.shape[1:]))
        pos = positions if positions is not None else default_positions(dim, len(batches))
        return _accumulator_for(node, positions=pos, seed=seed * 7919 + index[node.name], paired=paired)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        what = method + ("+adaround" if adaround is not None else "")
        bar = tqdm(total=len(layers), desc=f"quantizing weights ({what})", unit="layer", leave=False)

    def quantize_layer(node, stats):
        obj = layer_objective(node.weight, stats, centered=centered, damping=damping, name=node.path)
        if data_aware:  # the objective it minimizes is the one just built (adaround's too)
            qw = quantizer(
                node.weight, bits, shift_bits=shift_bits, name=node.path, stats=stats, centered=centered, objective=obj
            )
        else:
            qw = quantize_weight(node.weight, method, bits, shift_bits=shift_bits, name=node.path)
        if adaround is not None:
            qw = adaround_weight(node.weight, qw, obj, adaround, name=node.path)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(node.path[-40:], refresh=False)
        return qw

    out: dict = {}
    users = _users_count(graph)
    try:
        if layer_inputs == "float":
            accs = {n.name: accumulator(n, False) for n in layers}
            for x in batches:
                env: dict = {}
                left = dict(users)
                for node in graph:
                    env[node.name] = run_float_node(graph, node, env, x)
                    if node.is_layer:
                        accs[node.name].update(env[node.inputs[0]])
                    for i in set(node.inputs):
                        left[i] -= 1
                        if left[i] <= 0:
                            env.pop(i, None)
            for node in layers:
                out[node.name] = quantize_layer(node, accs[node.name].result())
            return out
        # sequential: float and quantized streams over all batches, node by node
        env_f = [dict() for _ in batches]
        env_q = [dict() for _ in batches]
        left = dict(users)
        last = max(i for i, n in enumerate(graph.nodes) if n.is_layer)
        for pos, node in enumerate(graph.nodes):
            if pos > last:
                break
            if node.is_layer:
                acc = accumulator(node, True)
                for b in range(len(batches)):
                    acc.update(env_f[b][node.inputs[0]], env_q[b][node.inputs[0]])
                qw = quantize_layer(node, acc.result())
                out[node.name] = qw
                w_hat = qw.dequantize()
            for b, x in enumerate(batches):
                env_f[b][node.name] = run_float_node(graph, node, env_f[b], x)
                if node.is_layer:
                    env_q[b][node.name] = run_float_node(graph, node, env_q[b], x, w_hat, node.bias)
                else:
                    env_q[b][node.name] = run_float_node(graph, node, env_q[b], x)
            for i in set(node.inputs):
                left[i] -= 1
                if left[i] <= 0:
                    for e in (*env_f, *env_q):
                        e.pop(i, None)
        return out
    finally:
        if bar is not None:
            bar.close()
