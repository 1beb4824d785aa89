"""The hypothesis cases of the ops (convolution: shapes, strides, padding, dilation, groups; fully connected,
add and pooling), with their data and requantization corners, shared by the CPU and CUDA kernel tests."""

import warnings

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from support import reference_numpy as R
from support.helpers import (
    BIAS_MODES,
    DATA_MODES,
    OVERFLOW_STRATEGY,
    ROUNDING_STRATEGY,
    as_int32_params,
    bias_data,
    clamps,
    int8_data,
    requant_params,
    weight_data,
)

KERNELS = st.sampled_from([1, 2, 3, 3, 4, 5, 7])


def _padding_arg(draw, pad):
    pt, pb, pl, pr = pad
    forms = [pad]
    if pt == pb and pl == pr:
        forms.append((pt, pl))
        if pt == pl:
            forms.append(pt)
    return draw(st.sampled_from(forms))


def _pair_arg(draw, h, w):
    return h if h == w and draw(st.booleans()) else (h, w)


@st.composite
def conv_case(draw):
    kind = draw(st.sampled_from(["general", "general", "wide", "depthwise", "depthwise", "pointwise"]))
    if kind == "wide":
        # many channels on a small image: output-channel blocks and reduction tails of the GEMM kernels
        groups = draw(st.sampled_from([1, 1, 2]))
        cig = draw(st.one_of(st.integers(1, 80), st.sampled_from([4, 16, 31, 32, 33, 63, 64, 65])))
        og = draw(st.one_of(st.integers(1, 130), st.sampled_from([16, 17, 31, 32, 33, 63, 64, 65, 128, 129])))
        c_in, c_out = groups * cig, groups * og
    elif kind == "general":
        groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
        cig = draw(st.integers(1, 9))
        og = draw(st.integers(1, 9))
        c_in, c_out = groups * cig, groups * og
    elif kind == "depthwise":
        c_in = draw(st.one_of(st.integers(1, 40), st.sampled_from([3, 5, 8, 16, 17, 32, 33, 64, 65])))
        dm = draw(st.sampled_from([1, 2]))
        groups, cig, c_out = c_in, 1, c_in * dm
    else:
        groups = 1
        c_in = draw(st.one_of(st.integers(1, 70), st.sampled_from([16, 24, 32, 33, 65, 96])))
        c_out = draw(st.integers(1, 40))
        cig = c_in
    if kind == "pointwise":
        kh = kw = 1
        dh = dw = 1
    elif kind == "wide":
        kh, kw = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 3]))
        dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    else:
        kh, kw = draw(KERNELS), draw(KERNELS)
        max_d = 3 if max(kh, kw) <= 4 else (2 if max(kh, kw) <= 5 else 1)
        dh, dw = draw(st.integers(1, max_d)), draw(st.integers(1, max_d))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    pad = tuple(draw(st.integers(0, ext - 1)) for ext in (ext_h, ext_h, ext_w, ext_w))
    min_h = max(1, ext_h - pad[0] - pad[1])
    min_w = max(1, ext_w - pad[2] - pad[3])
    grow = 3 if kind == "wide" else 6
    h = draw(st.integers(min_h, min_h + grow))
    w = draw(st.integers(min_w, min_w + grow))
    n = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = int8_data(rng, (n, h, w, c_in), draw(DATA_MODES))
    wt = weight_data(rng, (c_out, kh, kw, cig), draw(DATA_MODES))
    bias = bias_data(rng, c_out, draw(BIAS_MODES))
    zx = draw(st.one_of(st.just(0), st.integers(-128, 127), st.sampled_from([-128, 127])))
    geometry = dict(
        input_zero_point=zx,
        stride=_pair_arg(draw, sh, sw),
        padding=_padding_arg(draw, pad),
        dilation=_pair_arg(draw, dh, dw),
        groups=groups,
    )
    acc = R.conv2d_acc(x, wt, bias, **geometry)
    params = draw(requant_params(R.saturate_int32(acc), c_out))
    params["overflow"] = draw(OVERFLOW_STRATEGY)
    if draw(st.booleans()):
        params = as_int32_params(params)
    return x, wt, bias, geometry, params


@st.composite
def fc_case(draw):
    n = draw(st.integers(1, 5))
    k = draw(st.one_of(st.integers(1, 300), st.sampled_from([1, 3, 16, 17, 31, 32, 33, 64, 65, 1024, 1280, 2049])))
    c_out = draw(st.one_of(st.integers(1, 40), st.sampled_from([1, 8, 16, 17, 33, 64, 65])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = int8_data(rng, (n, k), draw(DATA_MODES))
    w = weight_data(rng, (c_out, k), draw(DATA_MODES))
    bias = bias_data(rng, c_out, draw(BIAS_MODES))
    zx = draw(st.one_of(st.just(0), st.integers(-128, 127)))
    acc = R.fully_connected_acc(x, w, bias, input_zero_point=zx)
    params = draw(requant_params(R.saturate_int32(acc), c_out))
    params["overflow"] = draw(OVERFLOW_STRATEGY)
    if draw(st.booleans()):
        params = as_int32_params(params)
    return x, w, bias, dict(input_zero_point=zx, **params)


SCALES = st.floats(min_value=-12, max_value=4).map(lambda v: float(2.0**v))


@st.composite
def add_case(draw):
    shape = (
        draw(st.integers(1, 2)),
        draw(st.integers(1, 6)),
        draw(st.integers(1, 6)),
        draw(st.one_of(st.integers(1, 40), st.sampled_from([16, 17, 32, 33, 64, 65]))),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = int8_data(rng, shape, draw(DATA_MODES))
    b = int8_data(rng, shape, draw(DATA_MODES))
    zp, lo, hi = draw(clamps())
    if draw(st.booleans()):
        s_a, s_b = draw(SCALES), draw(SCALES)
        s_out = draw(SCALES) * max(s_a, s_b) / 8
        left_shift = draw(st.sampled_from([20, 20, 0, 7, 22]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                params = R.add_params(s_a, s_b, s_out, left_shift)
        except (ValueError, Warning):
            assume(False)
        scales = (s_a, s_b, s_out, left_shift)
    else:
        params = dict(
            a_multiplier=draw(st.integers(2**30, 2**31 - 1)),
            a_exponent=draw(st.integers(-31, 0)),
            b_multiplier=draw(st.integers(2**30, 2**31 - 1)),
            b_exponent=draw(st.integers(-31, 0)),
            output_multiplier=draw(st.integers(2**30, 2**31 - 1)),
            output_exponent=draw(st.integers(-31, 30)),
            left_shift=draw(st.integers(0, 22)),
        )
        scales = None
    kw = dict(
        params,
        a_zero_point=draw(st.integers(-128, 127)),
        b_zero_point=draw(st.integers(-128, 127)),
        output_zero_point=zp,
        act_min=lo,
        act_max=hi,
        rounding=draw(ROUNDING_STRATEGY),
    )
    return a, b, kw, scales


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    pad = (
        draw(st.integers(0, kh - 1)),
        draw(st.integers(0, kh - 1)),
        draw(st.integers(0, kw - 1)),
        draw(st.integers(0, kw - 1)),
    )
    h = draw(st.integers(max(1, kh - pad[0] - pad[1]), max(1, kh - pad[0] - pad[1]) + 7))
    w = draw(st.integers(max(1, kw - pad[2] - pad[3]), max(1, kw - pad[2] - pad[3]) + 7))
    c = draw(st.one_of(st.integers(1, 40), st.sampled_from([16, 17, 32, 33, 64, 65])))
    n = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = int8_data(rng, (n, h, w, c), draw(DATA_MODES))
    _, lo, hi = draw(clamps())
    padding = draw(st.sampled_from([pad] + ([(pad[0], pad[2])] if pad[0] == pad[1] and pad[2] == pad[3] else [])))
    kernel = (kh, kw) if kh != kw or draw(st.booleans()) else kh
    kwargs = dict(
        stride=stride,
        padding=padding,
        count_include_pad=draw(st.booleans()),
        input_zero_point=draw(st.integers(-128, 127)),
        act_min=lo,
        act_max=hi,
    )
    return x, kernel, kwargs
