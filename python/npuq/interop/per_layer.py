"""Rewrite a per-channel program into WESS form, for an NPU that requantizes with one scale per layer.

An imported TFLite model usually has per-channel filter scales. A per-layer NPU holds one multiplier per
layer plus a 4-bit right shift per output channel (WESS, docs/quantization.md): this module moves each
per-channel layer onto that grid. The layer's real weights ``q[c] * s_w[c]`` (the file's integers times
their scales) are quantized again with npuq's own WESS quantizer (:func:`npuq.quant.weights.quantize_weight`,
method ``"wess"``): one layer scale, channel ``c`` scaled up by ``2^shift[c]`` before rounding. Biases are
re-expressed in the new accumulator units. Layers that already are per-tensor or exact WESS are kept bit
for bit. Rounding the weights to a coarser grid changes outputs: :func:`rewrite_report` says by how much
per layer (weight SQNR), and the caller measures what it does to the network (``npuq import-tflite
--per-layer`` and ``scripts/tflite_real_model.py`` report top-1 agreement and KL on real photographs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npuq.fixedpoint import quantize_multiplier


@dataclass
class RewrittenLayer:
    name: str
    channels: int
    max_shift: int
    weight_sqnr_db: float  # of the rewritten weights against the original per-channel ones
    clipped_bias: int  # biases that left int32 (clamped), normally 0


def to_per_layer(program, *, shift_bits: int = 4):
    """A copy of ``program`` whose every conv / fully-connected layer has one multiplier (WESS form), and
    a list of :class:`RewrittenLayer` for the layers that changed."""
    import torch

    from npuq.npu.program import validate
    from npuq.quant.weights import quantize_weight, round_half_away, weight_sqnr_db

    out = program.copy()
    scales = {out.input.name: float(out.input.scale)}
    for op in out.ops:
        scales[op.name] = float(op.scale)
    changed: list[RewrittenLayer] = []
    for op in out.ops:
        if op.kind not in ("conv2d", "fully_connected") or op.tensors["multiplier"].shape[0] == 1:
            continue
        m0 = op.tensors["multiplier"].astype(np.float64)
        e = op.tensors["exponent"].astype(np.float64)
        s_in, s_out = scales[op.inputs[0]], float(op.scale)
        real = m0 * np.exp2(e - 31.0)  # each channel's real multiplier s_in * s_w[c] / s_out
        s_w = real * s_out / s_in
        q = op.tensors["weight"].astype(np.float64)
        shape = (-1,) + (1,) * (q.ndim - 1)
        w = torch.from_numpy(q * s_w.reshape(shape))
        if not torch.any(w != 0):
            continue  # an all-zero layer has nothing to rescale
        qw = quantize_weight(w, "wess", 8, shift_bits=shift_bits, name=op.name)
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
    info = out.info.setdefault("per_layer_rewrite", {})
    info.update(layers=len(changed), method="wess", shift_bits=shift_bits)
    validate(out, "per-layer rewrite")
    return out, changed
