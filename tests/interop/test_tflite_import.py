"""An imported int8 TFLite model computes exactly what LiteRT's reference kernels compute.

Every model here is built with :class:`npuq.interop.tflite_build.TFLiteBuilder`, run by LiteRT
(``BUILTIN_REF``, every intermediate kept) and, imported, by npuq's emulator: every TFLite tensor the
importer maps to an npuq value must be equal, element for element.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npuq.interop.tflite_import import import_tflite
from support.tflite_cases import (
    ACTIVATIONS,
    CaseBuilder,
    act_tensor,
    bias,
    compare_with_litert,
    conv_layer,
    filter_scales,
    mismatches,
    mobilenet_v3_block,
    random_input,
    scale,
    weights,
    zp,
)

SEEDS = st.integers(0, 2**32 - 1)
FORMS = st.sampled_from(["per_tensor", "per_channel", "wess"])


def _exact(model, x, **kw):
    result = compare_with_litert(model, x, **kw)
    assert result["tensors"], "no tensor was compared"
    assert mismatches(result) == {}, mismatches(result)
    return result


# ------------------------------------------------------------------------------------------ layers
@settings(deadline=None, max_examples=25)
@given(
    seed=SEEDS,
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["SAME", "VALID"]),
    groups=st.sampled_from([1, 1, 2]),
    form=FORMS,
)
def test_conv2d(seed, kernel, stride, dilation, padding, groups, form):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers((kernel - 1) * dilation + 1, 14)), int(rng.integers((kernel - 1) * dilation + 1, 14))
    c_in = groups * int(rng.integers(1, 9))
    b = CaseBuilder()
    s_in = scale(rng)
    x = act_tensor(b, rng, "x", [1, h, w, c_in], s=s_in)
    c_out = groups * int(rng.integers(1, 12))
    y, _ = conv_layer(
        b,
        rng,
        x,
        (h, w, c_in),
        s_in,
        c_out,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        form=form,
    )
    _exact(b.finish([x], [y]), random_input(rng, (h, w, c_in)))


@settings(deadline=None, max_examples=25)
@given(
    seed=SEEDS,
    kernel=st.sampled_from([3, 5, 1]),
    stride=st.integers(1, 2),
    multiplier=st.sampled_from([1, 1, 2]),
    padding=st.sampled_from(["SAME", "VALID"]),
    form=FORMS,
)
def test_depthwise_conv2d(seed, kernel, stride, multiplier, padding, form):
    rng = np.random.default_rng(seed)
    h, w, c = int(rng.integers(kernel, 12)), int(rng.integers(kernel, 12)), int(rng.integers(1, 20))
    b = CaseBuilder()
    s_in = scale(rng)
    x = act_tensor(b, rng, "x", [1, h, w, c], s=s_in)
    y, _ = conv_layer(
        b,
        rng,
        x,
        (h, w, c),
        s_in,
        0,
        kernel=kernel,
        stride=stride,
        padding=padding,
        depthwise=True,
        multiplier=multiplier,
        form=form,
    )
    _exact(b.finish([x], [y]), random_input(rng, (h, w, c)))


@settings(deadline=None, max_examples=30)
@given(seed=SEEDS, form=FORMS, from_map=st.booleans())
def test_fully_connected(seed, form, from_map):
    rng = np.random.default_rng(seed)
    b = CaseBuilder()
    s_in = scale(rng)
    if from_map:  # FULLY_CONNECTED flattens an [N, H, W, C] map in (H, W, C) order
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 16)))
    else:
        shape = (int(rng.integers(1, 400)),)
    k = int(np.prod(shape))
    x = act_tensor(b, rng, "x", [1, *shape], s=s_in)
    c_out = int(rng.integers(1, 40))
    s_w = filter_scales(rng, c_out, form)
    wt = b.tensor(
        "w", [c_out, k], "int8", scale=s_w, zero_point=np.zeros(s_w.size, np.int64), data=weights(rng, (c_out, k))
    )
    bt = bias(b, rng, "b", s_in, s_w, c_out)
    y = act_tensor(b, rng, "y", [1, c_out])
    b.op("FULLY_CONNECTED", [x, wt, bt], [y], fused_activation_function=str(rng.choice(ACTIVATIONS)))
    _exact(b.finish([x], [y]), random_input(rng, shape))


def test_wess_scales_import_as_per_layer_multipliers():
    rng = np.random.default_rng(7)
    b = CaseBuilder()
    s_in = scale(rng)
    x = act_tensor(b, rng, "x", [1, 8, 8, 6], s=s_in)
    y1, shape = conv_layer(b, rng, x, (8, 8, 6), s_in, 12, form="wess", name="wess")
    y2, _ = conv_layer(b, rng, y1, shape, b.scale_of(y1), 8, form="per_channel", name="pc")
    result = import_tflite(b.finish([x], [y2]))
    forms = {layer.name: layer.weights for layer in result.report.layers}
    assert list(forms.values()) == ["wess", "per_channel"]
    first = result.program.ops[0]
    assert first.tensors["multiplier"].shape == (1,) and first.tensors["shift"].max() > 0
    assert result.report.per_layer_ready == 1
    assert "1 of 2 run on a per-layer NPU" in result.report.summary()


# ------------------------------------------------------------------------------------------ elementwise
@settings(deadline=None, max_examples=30)
@given(seed=SEEDS, act=st.sampled_from(ACTIVATIONS))
def test_add(seed, act):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 33)))
    b = CaseBuilder()
    x = act_tensor(b, rng, "x", [1, *shape])
    # the second operand is computed from the first so that both are values, with their own scales
    sq = act_tensor(b, rng, "q", [1, *shape])
    b.op("QUANTIZE", [x], [sq])
    y = act_tensor(b, rng, "y", [1, *shape])
    b.op("ADD", [x, sq], [y], fused_activation_function=act)
    _exact(b.finish([x], [y]), random_input(rng, shape))


@settings(deadline=None, max_examples=30)
@given(seed=SEEDS, se=st.booleans(), se_first=st.booleans())
def test_mul(seed, se, se_first):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 33)))
    b = CaseBuilder()
    x = act_tensor(b, rng, "x", [1, *shape])
    if se:  # the squeeze-excitation form: a map times a per-channel (1, 1, C) scale
        axes = b.tensor("axes", [2], "int32", data=np.array([1, 2], np.int32))
        g = act_tensor(b, rng, "g", [1, 1, 1, shape[2]])
        b.op("MEAN", [x, axes], [g], keep_dims=True)
    else:
        g = b.tensor("g", [1, *shape], "int8", scale=np.float32(1 / 256), zero_point=-128)  # LiteRT's rule
        b.op("LOGISTIC", [x], [g])
    y = act_tensor(b, rng, "y", [1, *shape])
    b.op("MUL", [g, x] if se_first else [x, g], [y], fused_activation_function=str(rng.choice(ACTIVATIONS)))
    _exact(b.finish([x], [y]), random_input(rng, shape))


TABLE_OPCODES = ["HARD_SWISH", "LOGISTIC", "TANH", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "QUANTIZE", "GELU"]


@settings(deadline=None, max_examples=60)
@given(seed=SEEDS, opcode=st.sampled_from(TABLE_OPCODES))
def test_table_activations_on_every_input_byte(seed, opcode):
    rng = np.random.default_rng(seed)
    b = CaseBuilder()
    s_in = scale(rng, 1e-3, 0.5)
    x = act_tensor(b, rng, "x", [1, 256], s=s_in)
    out_scale, out_zp = scale(rng, 1e-3, 0.5), zp(rng)
    if opcode == "HARD_SWISH":  # LiteRT refuses an output scale below 1/128 of the input's
        out_scale = np.float32(s_in * rng.uniform(0.01, 4.0))
    if opcode == "LOGISTIC":  # TFLite requires the output quantization of its int8 kernels
        out_scale, out_zp = np.float32(1 / 256), -128
    if opcode == "TANH":
        out_scale, out_zp = np.float32(1 / 128), 0
    y = b.tensor("y", [1, 256], "int8", scale=out_scale, zero_point=out_zp)
    opts = dict(alpha=float(rng.uniform(0.01, 0.9))) if opcode == "LEAKY_RELU" else {}
    if opcode == "GELU":
        opts = dict(approximate=bool(rng.integers(0, 2)))
    b.op(opcode, [x], [y], **opts)
    _exact(b.finish([x], [y]), np.arange(-128, 128, dtype=np.int8)[None])


# ------------------------------------------------------------------------------------------ pooling, mean, data
@settings(deadline=None, max_examples=30)
@given(
    seed=SEEDS,
    average=st.booleans(),
    padding=st.sampled_from(["SAME", "VALID"]),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
)
def test_pooling(seed, average, padding, k, s):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(k, 12)), int(rng.integers(k, 12)), int(rng.integers(1, 17)))
    b = CaseBuilder()
    s_x, z_x = scale(rng), zp(rng)
    x = act_tensor(b, rng, "x", [1, *shape], s=s_x, z=z_x)
    if padding == "SAME":
        oh, ow = -(-shape[0] // s), -(-shape[1] // s)
    else:
        oh, ow = (shape[0] - k) // s + 1, (shape[1] - k) // s + 1
    y = b.tensor("y", [1, oh, ow, shape[2]], "int8", scale=s_x, zero_point=z_x)
    act = str(rng.choice(ACTIVATIONS)) if average else "NONE"
    b.op(
        "AVERAGE_POOL_2D" if average else "MAX_POOL_2D",
        [x],
        [y],
        padding=padding,
        stride_h=s,
        stride_w=s,
        filter_height=k,
        filter_width=k,
        fused_activation_function=act,
    )
    _exact(b.finish([x], [y]), random_input(rng, shape))


@settings(deadline=None, max_examples=40)
@given(seed=SEEDS, keep_dims=st.booleans(), same_scale=st.booleans())
def test_mean(seed, keep_dims, same_scale):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 16)), int(rng.integers(1, 16)), int(rng.integers(1, 33)))
    b = CaseBuilder()
    s_x, z_x = scale(rng), zp(rng)
    x = act_tensor(b, rng, "x", [1, *shape], s=s_x, z=z_x)
    axes = b.tensor("axes", [2], "int32", data=np.array([1, 2], np.int32))
    out = [1, 1, 1, shape[2]] if keep_dims else [1, shape[2]]
    y = b.tensor("y", out, "int8", scale=s_x if same_scale else scale(rng), zero_point=z_x if same_scale else zp(rng))
    b.op("MEAN", [x, axes], [y], keep_dims=keep_dims)
    result = _exact(b.finish([x], [y]), random_input(rng, shape))
    assert result["import"].report.tflite_variants


@settings(deadline=None, max_examples=20)
@given(seed=SEEDS, parts=st.integers(2, 4))
def test_concatenation(seed, parts):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    b = CaseBuilder()
    s_x, z_x = scale(rng), zp(rng)
    x = act_tensor(b, rng, "x", [1, h, w, 4], s=s_x, z=z_x)
    inputs, total = [], 0
    for i in range(parts):  # TFLite's int8 concatenation keeps one scale and zero point throughout
        t = b.tensor(f"p{i}", [1, h, w, 4], "int8", scale=s_x, zero_point=z_x)
        b.op("MAX_POOL_2D", [x], [t], padding="SAME", stride_h=1, stride_w=1, filter_height=i + 1, filter_width=i + 1)
        inputs.append(t)
        total += 4
    y = b.tensor("y", [1, h, w, total], "int8", scale=s_x, zero_point=z_x)
    b.op("CONCATENATION", inputs, [y], axis=3)
    _exact(b.finish([x], [y]), random_input(rng, (h, w, 4)))


@settings(deadline=None, max_examples=20)
@given(seed=SEEDS, v2=st.booleans())
def test_pad(seed, v2):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 8)), int(rng.integers(1, 8)), int(rng.integers(1, 9)))
    pads = rng.integers(0, 3, (2, 2))
    b = CaseBuilder()
    s_x, z_x = scale(rng), zp(rng)
    x = act_tensor(b, rng, "x", [1, *shape], s=s_x, z=z_x)
    p = b.tensor("pads", [4, 2], "int32", data=np.array([[0, 0], *pads.tolist(), [0, 0]], np.int32))
    out = (shape[0] + pads[0].sum(), shape[1] + pads[1].sum(), shape[2])
    y = b.tensor("y", [1, *map(int, out)], "int8", scale=s_x, zero_point=z_x)
    if v2:
        v = b.tensor("v", [1], "int8", scale=s_x, zero_point=z_x, data=np.array([zp(rng)], np.int8))
        b.op("PADV2", [x, p, v], [y])
    else:
        b.op("PAD", [x, p], [y])
    _exact(b.finish([x], [y]), random_input(rng, shape))


@settings(deadline=None, max_examples=15)
@given(seed=SEEDS, half_pixel=st.booleans())
def test_resize_nearest_by_integer_factors(seed, half_pixel):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 9)))
    f = rng.integers(1, 4, 2)
    b = CaseBuilder()
    s_x, z_x = scale(rng), zp(rng)
    x = act_tensor(b, rng, "x", [1, *shape], s=s_x, z=z_x)
    size = b.tensor("size", [2], "int32", data=np.array([shape[0] * f[0], shape[1] * f[1]], np.int32))
    y = b.tensor("y", [1, int(shape[0] * f[0]), int(shape[1] * f[1]), shape[2]], "int8", scale=s_x, zero_point=z_x)
    b.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [y], align_corners=False, half_pixel_centers=half_pixel)
    _exact(b.finish([x], [y]), random_input(rng, shape))


# ------------------------------------------------------------------------------------------ whole graphs
@settings(deadline=None, max_examples=8)
@given(seed=SEEDS)
def test_mobilenet_v3_like_graph_every_intermediate(seed):
    rng = np.random.default_rng(seed)
    model, shape = mobilenet_v3_block(rng)
    result = _exact(model, random_input(rng, shape))
    report = result["import"].report
    assert len(result["tensors"]) >= 15
    assert {"conv2d", "lut", "mul", "add", "concat", "mean", "max_pool2d", "avg_pool2d", "fully_connected"} <= set(
        report.ops
    )
