"""Small int8 TFLite models for the import tests, and the comparison of an imported program with LiteRT.

Each ``*_model`` function draws its shapes and quantization from a ``numpy`` generator and returns the
model bytes and an int8 input; :func:`compare_with_litert` runs both sides and counts mismatches on
every tensor the importer mapped to an npuq value (outputs and intermediates alike).
"""

from __future__ import annotations

import numpy as np

from support.litert import litert_interpreter, require_tflite, run_litert

# a module importing these cases skips without the interop packages (and fails on CI, where they must be)
require_tflite()
litert_interpreter()

from npuq.interop.tflite_build import TFLiteBuilder  # noqa: E402

ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


class CaseBuilder(TFLiteBuilder):
    """The builder, remembering each tensor's per-tensor scale and zero point for the next layer."""

    def __init__(self):
        super().__init__()
        self.quant: dict[int, tuple[np.float32, int]] = {}

    def tensor(self, name, shape, dtype, *, scale=None, zero_point=None, axis=0, data=None):
        index = super().tensor(name, shape, dtype, scale=scale, zero_point=zero_point, axis=axis, data=data)
        if scale is not None and np.ndim(scale) == 0:
            self.quant[index] = (np.float32(scale), int(zero_point or 0))
        return index

    def scale_of(self, t: int) -> np.float32:
        return self.quant[t][0]

    def zero_point_of(self, t: int) -> int:
        return self.quant[t][1]


def scale(rng, lo=1e-3, hi=0.2) -> np.float32:
    return np.float32(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def zp(rng) -> int:
    return int(rng.integers(-128, 128))


def act_tensor(b: TFLiteBuilder, rng, name: str, shape, s=None, z=None) -> int:
    return b.tensor(
        name, list(shape), "int8", scale=scale(rng) if s is None else s, zero_point=zp(rng) if z is None else z
    )


def filter_scales(rng, channels: int, form: str) -> np.ndarray:
    """Per-channel filter scales: ``per_tensor`` (one), ``per_channel`` (arbitrary) or ``wess`` (one
    scale times powers of two, the form a per-layer NPU runs as it is)."""
    base = scale(rng, 2e-4, 2e-2)
    if form == "per_tensor":
        return np.array([base], np.float32)
    if form == "wess":
        return (base / np.float32(2.0) ** rng.integers(0, 8, channels)).astype(np.float32)
    return (base * rng.uniform(0.05, 1.0, channels)).astype(np.float32)


def weights(rng, shape) -> np.ndarray:
    w = rng.integers(-127, 128, shape).astype(np.int8)
    return w


def bias(b: TFLiteBuilder, rng, name: str, s_in, s_w, channels: int) -> int:
    s_b = (np.float64(s_in) * s_w.astype(np.float64)).astype(np.float32)
    data = rng.integers(-30000, 30000, channels).astype(np.int32)
    if s_b.size == 1:  # a per-tensor filter has a per-tensor bias
        return b.tensor(name, [channels], "int32", scale=s_b[0], zero_point=0, data=data)
    return b.tensor(name, [channels], "int32", scale=s_b, zero_point=np.zeros(channels, np.int64), data=data)


def conv_layer(
    b,
    rng,
    x: int,
    x_shape,
    s_in,
    c_out: int,
    *,
    kernel=3,
    stride=1,
    padding="SAME",
    dilation=1,
    depthwise=False,
    multiplier=1,
    groups=1,
    form="per_channel",
    act=None,
    name="conv",
) -> tuple[int, tuple]:
    h, w, c_in = x_shape
    if depthwise:
        c_out = c_in * multiplier
        wshape = [1, kernel, kernel, c_out]
        axis = 3
    else:
        wshape = [c_out, kernel, kernel, c_in // groups]
        axis = 0
    s_w = filter_scales(rng, c_out, form)
    wt = b.tensor(
        f"{name}_w",
        wshape,
        "int8",
        scale=s_w,
        zero_point=np.zeros(s_w.size, np.int64),
        axis=axis,
        data=weights(rng, wshape),
    )
    bt = bias(b, rng, f"{name}_b", s_in, s_w, c_out)
    span = (kernel - 1) * dilation + 1
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-w // stride)
    else:
        oh, ow = (h - span) // stride + 1, (w - span) // stride + 1
    out_shape = (oh, ow, c_out)
    y = act_tensor(b, rng, name, [1, *out_shape])
    opts = dict(
        padding=padding,
        stride_h=stride,
        stride_w=stride,
        dilation_h_factor=dilation,
        dilation_w_factor=dilation,
        fused_activation_function=act or rng.choice(ACTIVATIONS),
    )
    if depthwise:
        opts["depth_multiplier"] = multiplier
    b.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, wt, bt], [y], **opts)
    return y, out_shape


def random_input(rng, shape) -> np.ndarray:
    return rng.integers(-128, 128, (1, *shape)).astype(np.int8)


def compare_with_litert(model: bytes, x: np.ndarray, *, drop_softmax: bool = False, threads: int = 1) -> dict:
    """Import ``model``, run it on npuq's emulator and on LiteRT's reference kernels. Returns
    ``{tensor name: (elements, mismatches, max |diff|)}`` for every mapped tensor, and the import."""
    import npuq
    from npuq.interop.tflite_import import import_tflite

    outs, tensors = run_litert(model, [x])
    imported = import_tflite(model, drop_softmax=drop_softmax)
    _, values = npuq.Emulator(imported.program, threads=threads).run(x, capture=True)
    result = {}
    for tname, vname in imported.report.values.items():
        ref = tensors[tname].astype(np.int64)
        ours = values[vname].astype(np.int64).reshape(ref.shape)
        diff = np.abs(ref - ours)
        result[tname] = (int(diff.size), int(np.count_nonzero(diff)), int(diff.max(initial=0)))
    return {"tensors": result, "import": imported}


def mismatches(comparison: dict) -> dict:
    return {k: v for k, v in comparison["tensors"].items() if v[1]}


def mobilenet_v3_block(rng, *, float_io: bool = False, softmax: bool = False):
    """Stem conv + hard-swish, an inverted residual with squeeze-excitation (mean, two 1x1 convs, a
    hard-sigmoid-like table, multiply), a residual add, a concatenation, pooling and a classifier."""
    b = CaseBuilder()
    hw, c = 12, 3
    s_in, z_in = np.float32(1 / 128), 0
    if float_io:
        xf = b.tensor("image", [1, hw, hw, c], "float32")
        x = b.tensor("image_q", [1, hw, hw, c], "int8", scale=s_in, zero_point=z_in)
        b.op("QUANTIZE", [xf], [x])
    else:
        x = xf = b.tensor("image_q", [1, hw, hw, c], "int8", scale=s_in, zero_point=z_in)
    stem, shape = conv_layer(b, rng, x, (hw, hw, c), s_in, 16, stride=2, form="per_channel", act="NONE", name="stem")
    # LiteRT's hard-swish needs the output scale above 1/128 of the input's
    hs = act_tensor(b, rng, "stem_hswish", [1, *shape], s=np.float32(b.scale_of(stem) * rng.uniform(0.5, 1.5)))
    b.op("HARD_SWISH", [stem], [hs])
    s_hs = _scale_of(b, hs)
    expand, eshape = conv_layer(b, rng, hs, shape, s_hs, 32, kernel=1, form="wess", act="RELU6", name="expand")
    dw, dshape = conv_layer(
        b, rng, expand, eshape, _scale_of(b, expand), 0, depthwise=True, form="per_channel", act="RELU", name="dw"
    )
    axes = b.tensor("axes", [2], "int32", data=np.array([1, 2], np.int32))
    pooled = act_tensor(b, rng, "se_mean", [1, 1, 1, dshape[2]])
    b.op("MEAN", [dw, axes], [pooled], keep_dims=True)
    squeeze, sq_shape = conv_layer(
        b,
        rng,
        pooled,
        (1, 1, dshape[2]),
        _scale_of(b, pooled),
        8,
        kernel=1,
        form="per_channel",
        act="RELU",
        name="se_reduce",
    )
    excite, _ = conv_layer(
        b,
        rng,
        squeeze,
        sq_shape,
        _scale_of(b, squeeze),
        dshape[2],
        kernel=1,
        form="per_channel",
        act="NONE",
        name="se_expand",
    )
    gate = b.tensor("se_gate", [1, 1, 1, dshape[2]], "int8", scale=np.float32(1 / 256), zero_point=-128)
    b.op("LOGISTIC", [excite], [gate])
    scaled = act_tensor(b, rng, "se_mul", [1, *dshape])
    b.op("MUL", [dw, gate], [scaled])
    project, pshape = conv_layer(
        b, rng, scaled, dshape, _scale_of(b, scaled), 16, kernel=1, form="per_channel", act="NONE", name="project"
    )
    res = act_tensor(b, rng, "residual", [1, *pshape])
    b.op("ADD", [project, hs], [res])
    s_r, z_r = _scale_of(b, res), _zp_of(b, res)
    side = b.tensor("side", [1, *pshape], "int8", scale=s_r, zero_point=z_r)
    b.op("MAX_POOL_2D", [res], [side], padding="SAME", stride_h=1, stride_w=1, filter_height=3, filter_width=3)
    cat = b.tensor("concat", [1, pshape[0], pshape[1], 32], "int8", scale=s_r, zero_point=z_r)
    b.op("CONCATENATION", [res, side], [cat], axis=3)
    gap = b.tensor("gap", [1, 1, 1, 32], "int8", scale=s_r, zero_point=z_r)
    b.op(
        "AVERAGE_POOL_2D",
        [cat],
        [gap],
        padding="VALID",
        stride_h=1,
        stride_w=1,
        filter_height=pshape[0],
        filter_width=pshape[1],
    )
    flat = b.tensor("flat", [1, 32], "int8", scale=s_r, zero_point=z_r)
    shape_t = b.tensor("flat_shape", [2], "int32", data=np.array([1, 32], np.int32))
    b.op("RESHAPE", [gap, shape_t], [flat], new_shape=[1, 32])
    s_w = filter_scales(rng, 10, "per_channel")
    wt = b.tensor("fc_w", [10, 32], "int8", scale=s_w, zero_point=np.zeros(10, np.int64), data=weights(rng, (10, 32)))
    bt = bias(b, rng, "fc_b", s_r, s_w, 10)
    logits = act_tensor(b, rng, "logits", [1, 10])
    b.op("FULLY_CONNECTED", [flat, wt, bt], [logits])
    out = logits
    if softmax:
        probs = b.tensor("probs", [1, 10], "int8", scale=np.float32(1 / 256), zero_point=-128)
        b.op("SOFTMAX", [logits], [probs], beta=1.0)
        out = probs
    if float_io:
        of = b.tensor("probs_f", [1, 10], "float32")
        b.op("DEQUANTIZE", [out], [of])
        out = of
    return b.finish([xf], [out]), (hw, hw, c)


def _scale_of(b, t):
    return b.scale_of(t)


def _zp_of(b, t):
    return b.zero_point_of(t)
