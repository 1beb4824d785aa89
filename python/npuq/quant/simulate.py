"""Quantization simulation: a torch module that computes what the NPU computes.

Two modes:

* **weight-only** (``activations=None`` in :func:`npuq.quantize`): activations stay float; every
  conv / linear uses its dequantized integer weights ``q * channel_scale`` and its float bias.
* **integer** (W8A8, or W4A8 ... W2A8 with fewer weight bits): the network runs in the integer arithmetic of
  ``docs/arithmetic.md``: int8 activations with zero points, int32 biases, exact accumulators, requantization with the
  per-layer multiplier and the per-channel WESS shift (or per-channel multipliers), fused clamps,
  TFLite-style add and pooling. The integers are those the NPU produces (the tests hold them equal to
  the native kernels layer by layer), so the accuracy measured here is the NPU's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq import ops as native_ops
from npuq.fixedpoint import MultiplierFlushedWarning, quantize_bias, quantize_multiplier, quantize_multipliers
from npuq.ops import add_params, max_pool2d
from npuq.quant import intmath
from npuq.quant import intmath_format2 as intmath2
from npuq.quant.graph import Graph, Node, _resolve, run_float_node
from npuq.quant.lut import make_table
from npuq.quant.observers import QParams
from npuq.quant.weights import QuantizedWeight, round_half_away


@dataclass
class LayerParams:
    """Integer parameters of one conv / linear layer, as the NPU stores them."""

    weight: torch.Tensor  # int64 tensor holding int8 values, torch layout
    bias: torch.Tensor  # int64 tensor holding int32 values, accumulator scale per channel
    multiplier: int | torch.Tensor  # M0: one int (per-layer, WESS) or an int64 tensor per channel
    exponent: int | torch.Tensor
    shift: torch.Tensor  # int64 [C_out] WESS shifts (zeros otherwise)
    input_zero_point: int
    output_zero_point: int
    act_min: int
    act_max: int


def activation_clamp(qp: QParams, act: str | None) -> tuple[int, int]:
    """Integer clamp of a fused activation in the output scale (docs/arithmetic.md 3.3)."""
    lo, hi = -128, 127
    if act in ("relu", "relu6"):
        lo = max(lo, qp.zero_point)
    if act == "relu6":
        hi = min(hi, qp.zero_point + int(round_half_away(torch.tensor(6.0 / qp.scale, dtype=torch.float64))))
        hi = max(hi, lo)
    return lo, hi


def layer_params(node: Node, qw: QuantizedWeight, bias: torch.Tensor, qin: QParams, qout: QParams) -> LayerParams:
    """Integer parameters of ``node`` from its quantized weight and the activation scales around it."""
    acc_scale = qin.scale * qw.channel_scale.double()  # per channel: s_in * s_w / 2^s_c
    try:
        bias_q = quantize_bias(bias.double().numpy(), acc_scale.numpy())
    except OverflowError as exc:
        raise OverflowError(
            f"layer '{node.path}': {exc} (npuq.quantize coarsens the weight scale of such channels "
            f"first: npuq.quant.bias_range.fit_biases)"
        ) from exc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MultiplierFlushedWarning)
        if qw.layer_scale is not None:
            m0, e = quantize_multiplier(qin.scale * qw.layer_scale / qout.scale)
            multiplier, exponent = int(m0), int(e)
        else:
            m0s, es = quantize_multipliers((qin.scale * qw.channel_scale.double() / qout.scale).numpy())
            multiplier = torch.from_numpy(np.asarray(m0s, dtype=np.int64))
            exponent = torch.from_numpy(np.asarray(es, dtype=np.int64))
    for w in caught:
        warnings.warn(f"layer '{node.path}': {w.message}", MultiplierFlushedWarning, stacklevel=3)
    lo, hi = activation_clamp(qout, node.act)
    return LayerParams(
        weight=qw.q.to(torch.int64),
        bias=torch.from_numpy(bias_q.astype(np.int64)),
        multiplier=multiplier,
        exponent=exponent,
        shift=qw.shift.to(torch.int64),
        input_zero_point=int(qin.zero_point),
        output_zero_point=int(qout.zero_point),
        act_min=lo,
        act_max=hi,
    )


class QuantizedModel(nn.Module):
    """The quantized network. ``model(x)`` returns float logits (dequantized in integer mode).

    Attributes: ``graph`` (the prepared graph the quantization applies to, after any equalization),
    ``weights`` (``QuantizedWeight`` per layer), ``qparams`` (activation scale / zero point per node,
    ``None`` in weight-only mode), ``layers`` (``LayerParams`` per layer, integer mode), ``report``.
    """

    def __init__(
        self,
        graph: Graph,
        weights: dict[str, QuantizedWeight],
        biases: dict[str, torch.Tensor],
        qparams: dict[str, QParams] | None,
        *,
        rounding: str = "double",
        overflow: str = "raise",
        report=None,
    ):
        super().__init__()
        self.graph = graph
        self.weights = weights
        self.biases = biases
        self.qparams = qparams
        self.rounding = rounding
        self.overflow = overflow
        self.report = report
        # forward() of the integer mode: "native" (the npuq.ops kernels, fast) or "torch" (this module's
        # arithmetic, which also runs float ops and CUDA tensors); both give the same integers
        self.backend = "torch" if graph.unsupported() else "native"
        self._packed = None
        self._dequantized = {k: qw.dequantize() for k, qw in weights.items()}
        self.layers: dict[str, LayerParams] = {}
        self.add_params: dict[str, dict] = {}
        # the integer parameters of the other ops with scales of their own: the program's attributes
        # (mul, concat) and tables (lut), by node name
        self.op_params: dict[str, dict] = {}
        self.lut_tables: dict[str, np.ndarray] = {}
        if qparams is not None:
            self._build_integer_params()

    @property
    def integer(self) -> bool:
        return self.qparams is not None

    def _build_integer_params(self) -> None:
        for node in self.graph:
            if node.is_layer:
                if node.name not in self.weights:
                    raise ValueError(f"layer '{node.path}' has no quantized weight")
                self.layers[node.name] = layer_params(
                    node,
                    self.weights[node.name],
                    self.biases[node.name],
                    self.qparams[node.inputs[0]],
                    self.qparams[node.name],
                )
            elif node.kind == "add":
                qa, qb, qo = (self.qparams[node.inputs[0]], self.qparams[node.inputs[1]], self.qparams[node.name])
                params = add_params(qa.scale, qb.scale, qo.scale)
                lo, hi = activation_clamp(qo, node.act)
                params.update(
                    a_zero_point=qa.zero_point,
                    b_zero_point=qb.zero_point,
                    output_zero_point=qo.zero_point,
                    act_min=lo,
                    act_max=hi,
                )
                self.add_params[node.name] = params
            elif node.kind == "lut":
                qi, qo = self.qparams[node.inputs[0]], self.qparams[node.name]
                self.lut_tables[node.name] = make_table(
                    node.attrs["function"], qi.scale, qi.zero_point, qo.scale, qo.zero_point, **node.attrs["params"]
                )
            elif node.kind == "mul":
                qa, qb, qo = (self.qparams[i] for i in (*node.inputs, node.name))
                lo, hi = activation_clamp(qo, node.act)
                self.op_params[node.name] = dict(
                    a_zero_point=qa.zero_point,
                    b_zero_point=qb.zero_point,
                    output_zero_point=qo.zero_point,
                    act_min=lo,
                    act_max=hi,
                    **native_ops.mul_params(qa.scale, qb.scale, qo.scale),
                )
            elif node.kind == "concat":
                qs, qo = [self.qparams[i] for i in node.inputs], self.qparams[node.name]
                self.op_params[node.name] = dict(
                    zero_points=[q.zero_point for q in qs],
                    output_zero_point=qo.zero_point,
                    **native_ops.concat_params([q.scale for q in qs], qo.scale),
                )

    # ------------------------------------------------------------------------------------ float modes
    @torch.no_grad()
    def run_weight_only(self, x: torch.Tensor, capture: bool = False):
        self.graph.check_input(x)
        env = {}
        for node in self.graph:
            if node.is_layer:
                env[node.name] = run_float_node(
                    self.graph, node, env, x, self._dequantized[node.name], self.biases[node.name]
                )
            else:
                env[node.name] = run_float_node(self.graph, node, env, x)
        out = env[self.graph.output_name]
        return (out, env) if capture else out

    # ---------------------------------------------------------------------------------- integer mode
    @torch.no_grad()
    def run_integer(self, x: torch.Tensor, capture: bool = False):
        """Integer outputs of every node (int64 tensors holding int8 values, NCHW or (N, K)).

        Returns the output node's integers, or ``(output, {node name: integers})`` with ``capture``.
        """
        if not self.integer:
            raise RuntimeError("this model was quantized weight-only (activations=None); it has no integer mode")
        self.graph.check_input(x)
        env: dict[str, torch.Tensor] = {}
        qp = self.qparams
        for node in self.graph:
            k = node.kind
            if k == "input":
                q = qp[node.name]
                env[node.name] = intmath.quantize_input(x.float(), q.scale, q.zero_point)
                continue
            ins = [env[i] for i in node.inputs]
            if k in ("conv", "linear"):
                lp = self.layers[node.name]
                if k == "conv":
                    a = node.attrs
                    acc = intmath.conv2d_accumulator(
                        ins[0],
                        lp.input_zero_point,
                        lp.weight,
                        lp.bias,
                        a["stride"],
                        a["padding"],
                        a["dilation"],
                        a["groups"],
                    )
                else:
                    acc = intmath.linear_accumulator(ins[0], lp.input_zero_point, lp.weight, lp.bias)
                acc = intmath.saturate_accumulator(acc, self.overflow, op=node.path)
                y = intmath.requantize(
                    acc,
                    lp.multiplier,
                    lp.exponent,
                    lp.shift,
                    lp.output_zero_point,
                    lp.act_min,
                    lp.act_max,
                    rounding=self.rounding,
                    channel_axis=1,
                )
            elif k == "add":
                y = intmath.add(ins[0], ins[1], rounding=self.rounding, **self.add_params[node.name])
            elif k == "avg_pool":
                a = node.attrs
                y = intmath.avg_pool2d(
                    ins[0],
                    a["kernel_size"],
                    a["stride"],
                    a["padding"],
                    a["count_include_pad"],
                    input_zero_point=qp[node.name].zero_point,
                )
            elif k == "global_pool":
                y = intmath.global_avg_pool(ins[0])
            elif k == "max_pool":
                a = node.attrs
                # max commutes with the monotonic int8 mapping; torch pads max pooling with -inf
                y = F.max_pool2d(
                    ins[0].double(), a["kernel_size"], a["stride"], a["padding"], ceil_mode=a.get("ceil_mode", False)
                ).to(torch.int64)
            elif k == "flatten":
                y = torch.flatten(ins[0], 1)
            elif k == "lut":
                y = intmath2.lut(ins[0], self.lut_tables[node.name])
            elif k == "mul":
                y = intmath2.mul(ins[0], ins[1], rounding=self.rounding, **self.op_params[node.name])
            elif k == "concat":
                y = intmath2.concat(ins, rounding=self.rounding, **self.op_params[node.name])
            elif k == "channel_shuffle":
                y = intmath2.channel_shuffle(ins[0], node.attrs["groups"])
            elif k == "slice":
                y = ins[0][:, node.attrs["begin"] : node.attrs["end"]]
            elif k == "pad":
                y = intmath2.pad(ins[0], node.attrs["padding"], qp[node.name].zero_point)
            elif k == "upsample":
                a = node.attrs
                y = intmath2.upsample(ins[0], a["scale"], a["mode"], qp[node.name].zero_point)
            elif k == "output":
                y = ins[0]
            elif k == "float_op":
                y = self._float_op(node, env)
            else:  # pragma: no cover
                raise AssertionError(k)
            env[node.name] = y
        out = env[self.graph.output_name]
        return (out, env) if capture else out

    # -------------------------------------------------------------------------- native integer backend
    def _native_layers(self) -> dict:
        """Packed native kernels of every layer and add (built on first use)."""
        if getattr(self, "_packed", None) is None:
            from npuq import ops

            packed = {}
            for node in self.graph.layers():
                lp = self.layers[node.name]
                req = dict(
                    multiplier=_as_native(lp.multiplier),
                    exponent=_as_native(lp.exponent),
                    channel_shift=lp.shift.numpy(),
                    output_zero_point=lp.output_zero_point,
                    act_min=lp.act_min,
                    act_max=lp.act_max,
                    rounding=self.rounding,
                    overflow=self.overflow,
                )
                w = lp.weight.to(torch.int8)
                bias = lp.bias.numpy().astype(np.int32)
                if node.kind == "conv":
                    a = node.attrs
                    packed[node.name] = ops.Conv2d(
                        w,
                        bias,
                        input_zero_point=lp.input_zero_point,
                        stride=a["stride"],
                        padding=a["padding"],
                        dilation=a["dilation"],
                        groups=a["groups"],
                        **req,
                    )
                else:
                    packed[node.name] = ops.FullyConnected(w.numpy(), bias, input_zero_point=lp.input_zero_point, **req)
            for node in self.graph:  # adds: their parameters checked once, not on every forward
                if node.kind == "add":
                    packed[node.name] = ops.Add(rounding=self.rounding, **self.add_params[node.name])
            self._packed = packed
        return self._packed

    @torch.no_grad()
    def run_native(self, x: torch.Tensor, capture: bool = False, threads: int | None = None):
        """:meth:`run_integer` on the native kernels of :mod:`npuq.ops` (NHWC, multi-threaded, much faster).

        Same integers as :meth:`run_integer` (the tests hold the two equal node by node); the results are
        int64 tensors in the same NCHW / (N, K) layout. ``float_op`` nodes are not NPU ops: a graph with
        any is refused.
        """
        from npuq import ops

        if not self.integer:
            raise RuntimeError("this model was quantized weight-only (activations=None); it has no integer mode")
        self.graph.check_supported(" The native backend runs NPU ops only; use run_integer() for this model.")
        self.graph.check_input(x)
        packed = self._native_layers()
        env: dict[str, np.ndarray] = {}
        qp = self.qparams
        for node in self.graph:
            k = node.kind
            if k == "input":
                q = qp[node.name]
                xq = intmath.quantize_input(x.float(), q.scale, q.zero_point).to(torch.int8)
                env[node.name] = _to_nhwc(xq)
                continue
            ins = [env[i] for i in node.inputs]
            if k == "conv":
                y = packed[node.name](ins[0], threads=threads)
            elif k == "linear":
                y = packed[node.name](ins[0], threads=threads)
            elif k == "add":
                y = packed[node.name](ins[0], ins[1], threads=threads)
            elif k == "avg_pool":
                a = node.attrs
                y = ops.avg_pool2d(
                    ins[0],
                    a["kernel_size"],
                    stride=a["stride"],
                    padding=a["padding"],
                    count_include_pad=a["count_include_pad"],
                    input_zero_point=qp[node.name].zero_point,
                    threads=threads,
                )
            elif k == "global_pool":
                y = ops.global_avg_pool(ins[0], threads=threads)
            elif k == "max_pool":
                y = _max_pool_nhwc(ins[0], node.attrs)
            elif k == "lut":
                y = ops.lut(ins[0], self.lut_tables[node.name], threads=threads)
            elif k == "mul":
                y = ops.mul(ins[0], ins[1], rounding=self.rounding, threads=threads, **self.op_params[node.name])
            elif k == "concat":
                y = ops.concat(ins, rounding=self.rounding, threads=threads, **self.op_params[node.name])
            elif k == "channel_shuffle":
                y = ops.channel_shuffle(ins[0], node.attrs["groups"])
            elif k == "slice":
                y = ops.channel_slice(ins[0], node.attrs["begin"], node.attrs["end"])
            elif k == "pad":
                y = ops.pad(ins[0], tuple(node.attrs["padding"]), qp[node.name].zero_point)
            elif k == "upsample":
                a = node.attrs
                y = ops.upsample(ins[0], tuple(a["scale"]), mode=a["mode"], zero_point=qp[node.name].zero_point)
            elif k == "flatten":
                # torch flattens in (C, H, W) order; the activations here are (N, H, W, C)
                y = np.ascontiguousarray(ins[0].transpose(0, 3, 1, 2).reshape(ins[0].shape[0], -1))
            elif k == "output":
                y = ins[0]
            else:  # pragma: no cover - refused above
                raise AssertionError(k)
            env[node.name] = y
        if capture:
            return _from_native(env[self.graph.output_name]), {k: _from_native(v) for k, v in env.items()}
        return _from_native(env[self.graph.output_name])

    def _float_op(self, node: Node, env: dict) -> torch.Tensor:
        deq = {}
        for name in node.inputs:
            q = self.qparams[name]
            deq[name] = intmath.dequantize(env[name], q.scale, q.zero_point)
        args, kwargs = _resolve(node.args, deq), _resolve(node.kwargs, deq)
        target = self.graph.modules[node.name] if node.name in self.graph.modules else node.target
        y = target(*args, **kwargs)
        q = self.qparams[node.name]
        return intmath.quantize_input(y.float(), q.scale, q.zero_point)

    def output_qparams(self) -> QParams:
        return self.qparams[self.graph.output_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            return self.run_weight_only(x)
        q = self.run_native(x) if self.backend == "native" else self.run_integer(x)
        out = self.output_qparams()
        return intmath.dequantize(q, out.scale, out.zero_point)

    def extra_repr(self) -> str:
        mode = "integer" if self.integer else "weight-only"
        return f"{self.graph.model_name}, {len(self.weights)} quantized layers, {mode}, rounding={self.rounding}"


def _as_native(v):
    return v.numpy() if isinstance(v, torch.Tensor) else int(v)


def _to_nhwc(t: torch.Tensor) -> np.ndarray:
    if t.dim() == 4:
        return np.ascontiguousarray(t.permute(0, 2, 3, 1).numpy())
    return np.ascontiguousarray(t.numpy())


def _from_native(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(a.astype(np.int64))
    return t.permute(0, 3, 1, 2).contiguous() if t.dim() == 4 else t


def _max_pool_nhwc(x: np.ndarray, attrs: dict) -> np.ndarray:
    # the NPU's max pooling (npuq.ops.max_pool2d, the emulator's too): padding (h, w) on both sides
    return max_pool2d(
        x,
        attrs["kernel_size"],
        stride=attrs["stride"],
        padding=attrs["padding"],
        ceil_mode=attrs.get("ceil_mode", False),
    )


__all__ = ["LayerParams", "QuantizedModel", "activation_clamp", "layer_params"]
