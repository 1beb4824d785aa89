"""torch CPU tensors in and out (docs/ops.md, Layout): channels_last activations, torch-shaped weights."""

import contextlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npuq  # noqa: E402
from support import reference_numpy as R  # noqa: E402

CL = torch.channels_last


def _nhwc_to_torch(x):
    """numpy NHWC -> torch (N, C, H, W) in channels_last memory (zero-copy view of the same buffer)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    assert t.is_contiguous(memory_format=CL)
    return t


def _ohwi_to_torch(w):
    return torch.from_numpy(np.ascontiguousarray(w)).permute(0, 3, 1, 2).contiguous()


def _torch_to_nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


def _check_cl_output(out, shape):
    assert isinstance(out, torch.Tensor), type(out)
    assert out.dtype == torch.int8
    assert tuple(out.shape) == shape, (tuple(out.shape), shape)
    assert out.is_contiguous(memory_format=CL), out.stride()


@contextlib.contextmanager
def _no_layout_warning():
    """A channels_last tensor is zero-copy: a LayoutWarning here is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", npuq.LayoutWarning)
        yield


CONV_CASES = [
    # (x shape NHWC, w shape OHWI, geometry)
    ((2, 9, 8, 6), (10, 3, 3, 6), dict(padding=1, stride=1)),
    ((1, 10, 10, 16), (16, 3, 3, 1), dict(padding=1, stride=2, groups=16)),  # depthwise
    ((1, 7, 7, 8), (16, 3, 3, 1), dict(padding=(0, 1, 0, 1), stride=2, groups=8)),  # depth multiplier 2
    ((1, 5, 6, 24), (12, 1, 1, 24), dict()),  # pointwise
    ((1, 9, 9, 6), (4, 3, 3, 3), dict(groups=2, dilation=2, padding=(2, 1, 0, 2))),
]


def _conv_inputs(i, x_shape, w_shape, geo):
    rng = np.random.default_rng(i)
    x = rng.integers(-128, 128, x_shape, dtype=np.int8)
    w = rng.integers(-127, 128, w_shape, dtype=np.int8)
    b = rng.integers(-3000, 3000, w_shape[0]).astype(np.int32)
    kw = dict(
        geo,
        input_zero_point=-5,
        multiplier=rng.integers(2**30, 2**31, w_shape[0]),
        exponent=np.full(w_shape[0], -9),
        output_zero_point=3,
    )
    return x, w, b, kw


@pytest.mark.parametrize("i", range(len(CONV_CASES)))
def test_conv2d_channels_last(i):
    x, w, b, kw = _conv_inputs(i, *CONV_CASES[i])
    expected = np.asarray(npuq.ops.conv2d(x, w, b, **kw))
    assert np.array_equal(expected, R.conv2d(x, w, b, **kw))
    xt = _nhwc_to_torch(x)
    with _no_layout_warning():
        out = npuq.ops.conv2d(xt, _ohwi_to_torch(w), torch.from_numpy(b), **kw)
    n, ho, wo, c = expected.shape
    _check_cl_output(out, (n, c, ho, wo))
    assert np.array_equal(_torch_to_nhwc(out), expected)
    # the packed layer takes the torch-shaped weight too
    layer = npuq.ops.Conv2d(_ohwi_to_torch(w), torch.from_numpy(b), **kw)
    with _no_layout_warning():
        out2 = layer(xt)
    _check_cl_output(out2, (n, c, ho, wo))
    assert np.array_equal(_torch_to_nhwc(out2), expected)


def test_conv2d_weight_any_memory_format():
    x, w, b, kw = _conv_inputs(0, *CONV_CASES[0])
    expected = np.asarray(npuq.ops.conv2d(x, w, b, **kw))
    wt = _ohwi_to_torch(w)
    for variant in (wt, wt.contiguous(memory_format=CL), wt.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)):
        out = npuq.ops.conv2d(_nhwc_to_torch(x), variant, torch.from_numpy(b), **kw)
        assert np.array_equal(_torch_to_nhwc(out), expected)


def test_conv2d_nchw_contiguous_warns():
    x, w, b, kw = _conv_inputs(0, *CONV_CASES[0])
    expected = np.asarray(npuq.ops.conv2d(x, w, b, **kw))
    xt = _nhwc_to_torch(x).contiguous()  # default NCHW memory
    assert not xt.is_contiguous(memory_format=CL)
    with pytest.warns(npuq.LayoutWarning):
        out = npuq.ops.conv2d(xt, _ohwi_to_torch(w), torch.from_numpy(b), **kw)
    n, ho, wo, c = expected.shape
    _check_cl_output(out, (n, c, ho, wo))
    assert np.array_equal(_torch_to_nhwc(out), expected)
    # the input tensor itself is untouched
    assert np.array_equal(_torch_to_nhwc(xt), x)


def test_chained_ops_stay_channels_last():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 8, 8, 8), dtype=np.int8)
    w1 = rng.integers(-127, 128, (8, 3, 3, 1), dtype=np.int8)
    w2 = rng.integers(-127, 128, (12, 1, 1, 8), dtype=np.int8)
    kw1 = dict(padding=1, groups=8, multiplier=2**30, exponent=-6)
    kw2 = dict(multiplier=2**30, exponent=-8)
    y_np = npuq.ops.conv2d(npuq.ops.conv2d(x, w1, **kw1), w2, **kw2)
    with _no_layout_warning():
        y1 = npuq.ops.conv2d(_nhwc_to_torch(x), _ohwi_to_torch(w1), **kw1)
        y2 = npuq.ops.conv2d(y1, _ohwi_to_torch(w2), **kw2)
        pooled = npuq.ops.global_avg_pool(y2)
    assert np.array_equal(_torch_to_nhwc(y2), np.asarray(y_np))
    _check_cl_output(pooled, (1, 12, 1, 1))
    assert np.array_equal(_torch_to_nhwc(pooled), np.asarray(npuq.ops.global_avg_pool(np.asarray(y_np))))


def test_fully_connected_torch():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (3, 50), dtype=np.int8)
    w = rng.integers(-127, 128, (7, 50), dtype=np.int8)
    b = rng.integers(-1000, 1000, 7).astype(np.int32)
    kw = dict(input_zero_point=2, multiplier=2**30 + 5, exponent=-9)
    expected = np.asarray(npuq.ops.fully_connected(x, w, b, **kw))
    out = npuq.ops.fully_connected(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **kw)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int8 and tuple(out.shape) == (3, 7)
    assert np.array_equal(out.numpy(), expected)
    layer = npuq.ops.FullyConnected(torch.from_numpy(w), torch.from_numpy(b), **kw)
    out = layer(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), expected)


def test_add_torch():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (2, 5, 4, 6), dtype=np.int8)
    b = rng.integers(-128, 128, (2, 5, 4, 6), dtype=np.int8)
    kw = dict(npuq.ops.add_params(0.1, 0.2, 0.25), a_zero_point=1, b_zero_point=-2, output_zero_point=0)
    expected = np.asarray(npuq.ops.add(a, b, **kw))
    with _no_layout_warning():
        out = npuq.ops.add(_nhwc_to_torch(a), _nhwc_to_torch(b), **kw)
    _check_cl_output(out, (2, 6, 5, 4))
    assert np.array_equal(_torch_to_nhwc(out), expected)


def test_pools_torch():
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 128, (2, 7, 9, 5), dtype=np.int8)
    expected = np.asarray(npuq.ops.avg_pool2d(x, 3, stride=2, padding=1))
    with _no_layout_warning():
        out = npuq.ops.avg_pool2d(_nhwc_to_torch(x), 3, stride=2, padding=1)
    _check_cl_output(out, (2, 5, expected.shape[1], expected.shape[2]))
    assert np.array_equal(_torch_to_nhwc(out), expected)
    with _no_layout_warning():
        g = npuq.ops.global_avg_pool(_nhwc_to_torch(x))
    _check_cl_output(g, (2, 5, 1, 1))
    assert np.array_equal(_torch_to_nhwc(g), np.asarray(npuq.ops.global_avg_pool(x)))
    with pytest.warns(npuq.LayoutWarning):
        g2 = npuq.ops.global_avg_pool(_nhwc_to_torch(x).contiguous())
    assert np.array_equal(_torch_to_nhwc(g2), np.asarray(npuq.ops.global_avg_pool(x)))


def test_requantize_torch():
    rng = np.random.default_rng(7)
    acc = rng.integers(-(2**20), 2**20, (11, 6)).astype(np.int32)
    kw = dict(multiplier=rng.integers(2**30, 2**31, 6), exponent=np.full(6, -14))
    expected = np.asarray(npuq.ops.requantize(acc, **kw))
    out = npuq.ops.requantize(torch.from_numpy(acc), **kw)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int8
    assert np.array_equal(out.numpy(), expected)


def test_torch_wrong_dtype_rejected():
    x = torch.zeros((1, 3, 4, 4), dtype=torch.float32).contiguous(memory_format=CL)
    w = torch.zeros((2, 3, 1, 1), dtype=torch.int8)
    with pytest.raises(TypeError, match="x"):
        npuq.ops.conv2d(x, w, multiplier=2**30, exponent=0)
    with pytest.raises(TypeError, match="weight"):
        npuq.ops.conv2d(x.to(torch.int8), w.float(), multiplier=2**30, exponent=0)


def _two_call_sites(op, xt):
    """Call the op 3 times from one line and once from another, directly (the call site is this code)."""
    x, w, b, kw = _conv_inputs(0, *CONV_CASES[0])
    wt = _ohwi_to_torch(w)
    layer = npuq.ops.Conv2d(wt, **kw)
    for _ in range(3):
        if op == "conv2d":
            npuq.ops.conv2d(xt, wt, **kw)
        elif op == "Conv2d":
            layer(xt)
        elif op == "avg_pool2d":
            npuq.ops.avg_pool2d(xt, 2)
        elif op == "global_avg_pool":
            npuq.ops.global_avg_pool(xt)
    if op == "conv2d":
        npuq.ops.conv2d(xt, wt, **kw)
    elif op == "Conv2d":
        layer(xt)
    elif op == "avg_pool2d":
        npuq.ops.avg_pool2d(xt, 2)
    elif op == "global_avg_pool":
        npuq.ops.global_avg_pool(xt)


@pytest.mark.parametrize("op", ["conv2d", "Conv2d", "avg_pool2d", "global_avg_pool"])
def test_layout_warning_once_per_call_site(op):
    """ops.md: the NCHW copy emits LayoutWarning once per call site, i.e. a warning attributed to the
    caller's line (stacklevel), which the default warning filter then shows once per line."""
    x, _, _, _ = _conv_inputs(0, *CONV_CASES[0])
    xt = _nhwc_to_torch(x).contiguous()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")
        _two_call_sites(op, xt)
    layout = [r for r in rec if issubclass(r.category, npuq.LayoutWarning)]
    where = [f"{r.filename}:{r.lineno}" for r in layout]
    assert all(r.filename == __file__ for r in layout), f"{op}: LayoutWarning attributed to {where}, not the caller"
    assert len(layout) == 2, f"{op}: expected one warning per call site (2), got {where}"


def test_add_nchw_values():
    """add on contiguous NCHW tensors: values equal the numpy path (the layout of the result is not pinned:
    an elementwise op needs no copy, see the report)."""
    rng = np.random.default_rng(12)
    a = rng.integers(-128, 128, (2, 5, 4, 6), dtype=np.int8)
    b = rng.integers(-128, 128, (2, 5, 4, 6), dtype=np.int8)
    kw = dict(npuq.ops.add_params(0.1, 0.2, 0.25), a_zero_point=1, b_zero_point=-2, output_zero_point=0)
    expected = np.asarray(npuq.ops.add(a, b, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", npuq.LayoutWarning)
        out = npuq.ops.add(_nhwc_to_torch(a).contiguous(), _nhwc_to_torch(b).contiguous(), **kw)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 6, 5, 4)
    assert np.array_equal(_torch_to_nhwc(out), expected)


def test_strided_channels_last_views():
    """A slice of a channels_last tensor is neither contiguous format; the result must still be right."""
    rng = np.random.default_rng(8)
    x = rng.integers(-128, 128, (2, 10, 9, 8), dtype=np.int8)
    w = rng.integers(-127, 128, (5, 3, 3, 8), dtype=np.int8)
    kw = dict(padding=1, multiplier=2**30 + 3, exponent=-8, input_zero_point=1)
    xt = _nhwc_to_torch(x)
    for view, ref in (
        (xt[:, :, 1:7], x[:, 1:7]),
        (xt[:, 2:6], x[:, :, :, 2:6]),
        (xt[1:, :, ::2, ::3], x[1:, ::2, ::3]),
    ):
        if view.shape[1] != w.shape[3]:
            wv = w[..., : view.shape[1]]
        else:
            wv = w
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", npuq.LayoutWarning)
            out = npuq.ops.conv2d(view, _ohwi_to_torch(wv), **kw)
        assert np.array_equal(_torch_to_nhwc(out), R.conv2d(ref, wv, None, **kw))


def test_non_cpu_tensor_rejected():
    x = torch.empty((1, 4, 5, 5), dtype=torch.int8, device="meta").contiguous(memory_format=CL)
    w = torch.zeros((2, 4, 1, 1), dtype=torch.int8)
    with pytest.raises((ValueError, TypeError), match="x"):
        npuq.ops.conv2d(x, w, multiplier=2**30, exponent=0)
