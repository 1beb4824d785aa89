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


def max_pool_op(name, src, kernel, stride=(1, 1), padding=(0, 0, 0, 0)) -> Op:
    attrs = dict(kernel=list(kernel), stride=list(stride), padding=list(padding))
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
