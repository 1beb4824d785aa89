"""Rewrite a per-channel program into WESS form, for an NPU that requantizes with one scale per layer.

An imported TFLite model usually has per-channel filter scales. A per-layer NPU holds one multiplier per
layer plus a 4-bit right shift per output channel (WESS, docs/quantization.md): this module moves each
per-channel layer onto that grid. The layer's real weights ``q[c] * s_w[c]`` (the file's integers times
their scales) are quantized again with npuq's own WESS quantizer (:func:`npuq.quant.weights.quantize_weight`,
method ``"wess"``): one layer scale, channel ``c`` scaled up by ``2^shift[c]`` before rounding. Biases are
re-expressed in the new accumulator units. Layers that already are per-tensor or exact WESS are kept bit
for bit. Rounding the weights to a coarser grid changes outputs: each :class:`RewrittenLayer` gives the
weight SQNR, and the caller measures what it does to the network (``npuq import-tflite --per-layer`` and
``scripts/tflite_real_model.py`` report top-1 agreement and KL on real photographs).

With ``calibration`` inputs, the rounding's systematic part is corrected layer by layer, in program
order (empirical bias correction, on the integer programs themselves): the rewritten layer's mean output
per channel is brought back to the original program's on those inputs, with every earlier layer already
rewritten and corrected, by adding ``round(mean(y_orig - y_new) / m'[c])`` to its int32 bias (``m'[c]``
the channel's new real multiplier, so the change is in accumulator units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npuq.fixedpoint import quantize_multiplier
from npuq.interop import layer_multipliers


@dataclass
class RewrittenLayer:
    name: str
    channels: int
    max_shift: int
    weight_sqnr_db: float  # of the rewritten weights against the original per-channel ones
    clipped_bias: int  # biases that left int32 (clamped), normally 0
    bias_correction: float = 0.0  # mean |change| of the bias by the calibration, in output LSBs (0: none)


PER_LAYER_METHODS = ("wess", "wess_mse")


def to_per_layer(
    program, *, method: str = "wess_mse", shift_bits: int = 4, calibration=None, threads: int | None = None
):
    """A copy of ``program`` whose every conv / fully-connected layer has one multiplier (WESS form), and
    a list of :class:`RewrittenLayer` for the layers that changed.

    ``method``: npuq's WESS weight quantizer, ``"wess_mse"`` (default: the layer scale and shifts that
    minimize the weights' squared error, clipping outliers) or ``"wess"`` (the layer scale covers the
    largest weight). On EfficientNet-Lite0 the first keeps more of the network (docs/interop.md 4).
    ``calibration``: optional int8 inputs of the program (N, H, W, C) for the bias correction of the
    module's description (without: none); ``threads`` for its emulator runs."""
    import torch

    from npuq.npu.program import validate
    from npuq.quant.weights import quantize_weight, round_half_away, weight_sqnr_db

    if method not in PER_LAYER_METHODS:
        raise ValueError(f"method must be one of {', '.join(PER_LAYER_METHODS)}, got {method!r}")
    out = program.copy()
    scales = {out.input.name: float(out.input.scale)}
    for op in out.ops:
        scales[op.name] = float(op.scale)
    changed: list[RewrittenLayer] = []
    for op in out.ops:
        if op.kind not in ("conv2d", "fully_connected") or op.tensors["multiplier"].shape[0] == 1:
            continue
        s_in, s_out = scales[op.inputs[0]], float(op.scale)
        real = layer_multipliers(op)  # each channel's s_in * s_w[c] / s_out
        s_w = real * s_out / s_in
        q = op.tensors["weight"].astype(np.float64)
        shape = (-1,) + (1,) * (q.ndim - 1)
        w = torch.from_numpy(q * s_w.reshape(shape))
        if not torch.any(w != 0):
            continue  # an all-zero layer has nothing to rescale
        qw = quantize_weight(w, method, 8, shift_bits=shift_bits, name=op.name)
        layer_m0, layer_e = quantize_multiplier(s_in * float(qw.layer_scale) / s_out)
        channel_scale = qw.channel_scale.numpy()
        bias_real = op.tensors["bias"].astype(np.float64) * s_in * s_w
        bias = round_half_away(torch.from_numpy(bias_real / (s_in * channel_scale))).numpy()
        clipped = int(np.sum((bias < -(2**31)) | (bias > 2**31 - 1)))
        # the weights are laid out as the program stores them (OHWI / OK): quantize_weight keeps the shape
        new_q = qw.q.numpy().astype(np.int8)
        op.tensors.update(
            weight=new_q,
            bias=np.clip(bias, -(2**31), 2**31 - 1).astype(np.int32),
            multiplier=np.array([layer_m0], np.int32),
            exponent=np.array([layer_e], np.int32),
            shift=qw.shift.numpy().astype(np.uint8),
        )
        changed.append(
            RewrittenLayer(
                op.name,
                int(q.shape[0]),
                int(qw.shift.max()),
                float(weight_sqnr_db(w, qw.dequantize().double())),
                clipped,
            )
        )
    if calibration is not None and changed:
        _correct_biases(program, out, changed, calibration, threads)
    info = out.info.setdefault("per_layer_rewrite", {})
    info.update(layers=len(changed), method="wess", shift_bits=shift_bits, bias_correction=calibration is not None)
    validate(out, "per-layer rewrite")
    return out, changed


def _correct_biases(original, rewritten, changed: list[RewrittenLayer], calibration, threads) -> None:
    from npuq.npu.emulator import Emulator

    x = np.asarray(calibration)
    if x.dtype != np.int8:
        raise ValueError(f"calibration must be the program's int8 inputs, got dtype {x.dtype}")
    _, reference = Emulator(original, threads=threads).run(x, capture=True)
    for layer in changed:
        op = rewritten.op(layer.name)
        _, values = Emulator(rewritten, threads=threads).run(x, capture=True)
        diff = reference[op.name].astype(np.float64) - values[op.name].astype(np.float64)
        mean = diff.reshape(-1, diff.shape[-1]).mean(axis=0)  # output LSBs per channel
        real = layer_multipliers(op)
        delta = np.round(np.divide(mean, real, out=np.zeros_like(mean), where=real > 0))
        bias = op.tensors["bias"].astype(np.int64) + delta.astype(np.int64)
        op.tensors["bias"] = np.clip(bias, -(2**31), 2**31 - 1).astype(np.int32)
        layer.bias_correction = float(np.abs(mean).mean())
