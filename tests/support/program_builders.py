"""Hand-built NPU programs for the tests of the loader and the cost model: one op of each kind with neutral
parameters (unit weights, zero biases, a multiplier of 2^30 * 2^-8, zero points 0, full int8 clamps), so a
test states only the geometry it is about."""

from __future__ import annotations

import numpy as np

from npuq.npu.program import InputSpec, Op, Program, validate


def layer_tensors(w: np.ndarray, per_channel: bool = False, shifts=None) -> dict:
    """The tensors of a conv / fully-connected op with weights ``w``: per-layer (or per-channel)
    requantization, zero WESS shifts unless ``shifts`` are given."""
    c_out = w.shape[0]
    n = c_out if per_channel else 1
    return dict(
        weight=w.astype(np.int8),
        bias=np.zeros(c_out, np.int32),
        multiplier=np.full(n, 2**30, np.int32),
        exponent=np.full(n, -8, np.int32),
        shift=np.zeros(c_out, np.uint8) if shifts is None else np.asarray(shifts, np.uint8),
    )


def conv_op(
    name,
    src,
    w_shape,
    *,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
    bits=8,
    per_channel=False,
    shifts=None,
) -> Op:
    """A conv2d with unit weights of shape ``w_shape`` (O, KH, KW, I / groups)."""
    attrs = dict(
        stride=list(stride),
        padding=list(padding),
        dilation=list(dilation),
        groups=groups,
        input_zero_point=0,
        output_zero_point=0,
        act_min=-128,
        act_max=127,
        weight_bits=bits,
    )
    tensors = layer_tensors(np.ones(w_shape, np.int8), per_channel, shifts)
    return Op(name=name, kind="conv2d", inputs=[src], attrs=attrs, tensors=tensors, scale=0.1)


def fc_op(name, src, k, o, bits=8) -> Op:
    attrs = dict(input_zero_point=0, output_zero_point=0, act_min=-128, act_max=127, weight_bits=bits)
    tensors = layer_tensors(np.ones((o, k), np.int8))
    return Op(name=name, kind="fully_connected", inputs=[src], attrs=attrs, tensors=tensors, scale=0.1)


def add_op(name, a, b) -> Op:
    attrs = dict(
        a_zero_point=0,
        a_multiplier=2**30,
        a_exponent=0,
        b_zero_point=0,
        b_multiplier=2**30,
        b_exponent=0,
        output_zero_point=0,
        output_multiplier=2**30,
        output_exponent=0,
        left_shift=20,
        act_min=-128,
        act_max=127,
    )
    return Op(name=name, kind="add", inputs=[a, b], attrs=attrs, scale=0.1)


def max_pool_op(name, src, kernel, stride=(1, 1), padding=(0, 0, 0, 0), ceil_mode=False) -> Op:
    attrs = dict(kernel=list(kernel), stride=list(stride), padding=list(padding), ceil_mode=ceil_mode)
    return Op(name=name, kind="max_pool2d", inputs=[src], attrs=attrs, scale=0.1)


def avg_pool_op(name, src, kernel, stride=(1, 1), padding=(0, 0, 0, 0)) -> Op:
    attrs = dict(
        kernel=list(kernel),
        stride=list(stride),
        padding=list(padding),
        count_include_pad=False,
        input_zero_point=0,
        act_min=-128,
        act_max=127,
    )
    return Op(name=name, kind="avg_pool2d", inputs=[src], attrs=attrs, scale=0.1)


def flatten_op(name, src) -> Op:
    return Op(name=name, kind="flatten", inputs=[src], scale=0.1)


def build_program(shape, *ops, output=None, model="hand", check=True) -> Program:
    """A program reading an input of ``shape``; validated unless ``check`` is false (a hostile program must
    be representable)."""
    p = Program(
        input=InputSpec(name="x", shape=tuple(shape), scale=0.5, zero_point=0),
        ops=list(ops),
        output=output or ops[-1].name,
        model=model,
    )
    if check:
        validate(p)
    return p


# ---------------------------------------------------------------------------------- a program of every kind
RNG_SEED = 20240607


def _layer_tensors(rng, w: np.ndarray, per_channel: bool) -> dict:
    c_out = w.shape[0]
    n = c_out if per_channel else 1
    return dict(
        weight=w.astype(np.int8),
        bias=rng.integers(-2000, 2000, c_out).astype(np.int32),
        multiplier=rng.integers(2**30, 2**31 - 1, n).astype(np.int32),
        exponent=np.full(n, -9, np.int32),
        shift=rng.integers(0, 3, c_out).astype(np.uint8),
    )


def _table(rng) -> np.ndarray:
    return rng.integers(-128, 128, 256).astype(np.int8)


def _mul_attrs(za: int, zb: int, zo: int) -> dict:
    return dict(
        a_zero_point=za,
        b_zero_point=zb,
        output_zero_point=zo,
        multiplier=1518500250,
        exponent=-6,
        act_min=-128,
        act_max=127,
    )


def _concat_attrs(zero_points: list[int], zo: int) -> dict:
    n = len(zero_points)
    multipliers = [2**30] + [1431655765] * (n - 1)  # the first input copied ((2^30, 1) and z = z_out)
    exponents = [1] + [0] * (n - 1)
    return dict(zero_points=[zo] + zero_points[1:], multipliers=multipliers, exponents=exponents, output_zero_point=zo)


def _mean_attrs(zi: int, zo: int, tflite: bool) -> dict:
    return dict(
        input_zero_point=zi,
        output_zero_point=zo,
        multiplier=1288490189,
        exponent=-4 if not tflite else 1,
        act_min=-128,
        act_max=127,
        tflite_rounding=tflite,
    )


def every_kind_program() -> Program:
    """x (6, 6, 3) -> conv2d -> max_pool2d (padded) and avg_pool2d -> add -> global_avg_pool and a branch
    of the format-2 kinds -> concat -> flatten -> fully_connected: every kind in the table."""
    rng = np.random.default_rng(RNG_SEED)
    layer = dict(input_zero_point=-3, output_zero_point=5, act_min=-128, act_max=127, weight_bits=8)
    ops_ = [
        Op(
            "conv",
            "conv2d",
            ["x"],
            dict(stride=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=1, **layer),
            _layer_tensors(rng, rng.integers(-127, 128, (8, 3, 3, 3)), per_channel=True),
            scale=0.1,
            zero_point=5,
        ),
        Op(
            "mp",
            "max_pool2d",
            ["conv"],
            dict(kernel=[3, 3], stride=[1, 1], padding=[1, 1, 1, 1], ceil_mode=False),
            scale=0.1,
            zero_point=5,
        ),
        Op(
            "ap",
            "avg_pool2d",
            ["conv"],
            dict(
                kernel=[3, 3],
                stride=[1, 1],
                padding=[1, 1, 1, 1],
                count_include_pad=False,
                input_zero_point=5,
                act_min=-128,
                act_max=127,
            ),
            scale=0.1,
            zero_point=5,
        ),
        Op(
            "sum",
            "add",
            ["mp", "ap"],
            dict(
                a_zero_point=5,
                a_multiplier=2**30,
                a_exponent=0,
                b_zero_point=5,
                b_multiplier=2**30,
                b_exponent=0,
                output_zero_point=-7,
                output_multiplier=2**30,
                output_exponent=-18,
                left_shift=20,
                act_min=-128,
                act_max=127,
            ),
            scale=0.2,
            zero_point=-7,
        ),
        Op("gap", "global_avg_pool", ["sum"], dict(act_min=-128, act_max=127), scale=0.2, zero_point=-7),
        # the kinds of format 2, on a branch of (6, 6, 8) values that joins the classifier again
        Op("act", "lut", ["sum"], dict(function="custom"), dict(table=_table(rng)), scale=0.1, zero_point=3),
        Op("se", "mul", ["act", "gap"], _mul_attrs(3, -7, 2), scale=0.1, zero_point=2),
        Op("shuf", "channel_shuffle", ["se"], dict(groups=2), scale=0.1, zero_point=2),
        Op("half", "slice", ["shuf"], dict(begin=2, end=6), scale=0.1, zero_point=2),
        Op("padded", "pad", ["half"], dict(padding=[1, 0, 2, 1], value=2), scale=0.1, zero_point=2),
        Op("up", "upsample", ["padded"], dict(scale=[2, 3], mode="bilinear", zero_point=2), scale=0.1, zero_point=2),
        Op("near", "upsample", ["half"], dict(scale=[1, 2], mode="nearest", zero_point=2), scale=0.1, zero_point=2),
        Op("cat", "concat", ["half", "se", "act"], _concat_attrs([2, 2, 3], -1), scale=0.15, zero_point=-1),
        Op("avg", "mean", ["cat"], _mean_attrs(-1, 4, tflite=False), scale=0.1, zero_point=4),
        Op("avg_tfl", "mean", ["up"], _mean_attrs(2, 4, tflite=True), scale=0.1, zero_point=4),
        Op("pooled", "concat", ["gap", "avg"], _concat_attrs([-7, 4], -7), scale=0.2, zero_point=-7),
        Op("flat", "flatten", ["pooled"], {}, scale=0.2, zero_point=-7),
        Op(
            "fc",
            "fully_connected",
            ["flat"],
            dict(layer, input_zero_point=-7),
            _layer_tensors(rng, rng.integers(-127, 128, (5, 8 + 20)), per_channel=False),
            scale=0.3,
            zero_point=5,
        ),
    ]
    p = Program(input=InputSpec("x", (6, 6, 3), 0.0625, -3), ops=ops_, output="fc", model="every_kind")
    validate(p)
    return p
