"""Integer NPU ops over numpy arrays and torch CPU tensors (docs/ops.md, docs/arithmetic.md).

Every op returns the type it was given. Activations are NHWC for numpy and (N, C, H, W) channels_last
for torch. ``npuq.ops.reference`` holds the same functions running the scalar reference kernels.
"""

from __future__ import annotations

import types

import numpy as np

from npuq import _C, _cuda
from npuq import _tensors as T
from npuq import _validate as V
from npuq.fixedpoint import quantize_multiplier

_MAX_THREADS = int(_C.MAX_THREADS)  # the bound of npuq._validate.threads

__all__ = [
    "Add",
    "Conv2d",
    "FullyConnected",
    "add",
    "add_params",
    "avg_pool2d",
    "channel_shuffle",
    "channel_slice",
    "concat",
    "concat_params",
    "conv2d",
    "fully_connected",
    "fully_connected_tflite",
    "global_avg_pool",
    "lut",
    "max_pool2d",
    "mean",
    "mean_params",
    "mul",
    "mul_params",
    "pad",
    "pool_output_size",
    "reference",
    "requantize",
    "upsample",
]


class Conv2d:
    """A quantized 2-D convolution with its weights packed once; call it on activations.

    Args:
        weight: int8 in [-127, 127]; numpy (C_out, KH, KW, C_in / groups) or torch
            (C_out, C_in / groups, KH, KW).
        bias: int32 (C_out,) in the accumulator scale, or None.
        input_zero_point, stride, padding, dilation, groups: the convolution (docs/arithmetic.md 4).
        multiplier, exponent, channel_shift, output_zero_point, act_min, act_max, rounding: the
            requantization (docs/arithmetic.md 3); per layer (int) or per output channel (arrays).
        overflow: "raise", "saturate" or "wrap" (docs/arithmetic.md 5).
        threads: default thread count of calls (None: npuq.get_num_threads()).

    Called on a device array (a torch CUDA tensor, channels_last, or an NHWC ``__cuda_array_interface__``
    array) it runs the CUDA kernels on that array's device and stream and returns a device array of the
    same kind; the weights are copied to each device once (docs/cuda.md).
    """

    def __init__(
        self,
        weight,
        bias=None,
        *,
        input_zero_point=0,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        multiplier,
        exponent,
        channel_shift=None,
        output_zero_point=0,
        act_min=-128,
        act_max=127,
        rounding="double",
        overflow="raise",
        threads=None,
        _op_name="conv2d",
    ):
        w = T.conv_weight(weight)
        V.weights_in_range(w)
        groups = V.integer(groups, "groups", 1)
        out_channels = w.shape[0]
        if out_channels % groups:
            raise ValueError(f"groups ({groups}) must divide the output channels ({out_channels})")
        self.in_channels = w.shape[3] * groups
        self.out_channels = out_channels
        self.kernel_size = (w.shape[1], w.shape[2])
        self.stride = V.pair(stride, "stride", 1)
        self.padding = V.padding(padding)
        self.dilation = V.pair(dilation, "dilation", 1)
        self.groups = groups
        self.input_zero_point = V.zero_point(input_zero_point, "input_zero_point")
        self.threads = V.threads(threads)
        self._bias = V.bias(bias, out_channels)
        rq = V.requant(out_channels, multiplier, exponent, channel_shift, output_zero_point, act_min, act_max, rounding)
        self.overflow = V.choice(overflow, "overflow", V.OVERFLOW_POLICIES)
        self._weight = w
        # the layer as the native plans and the reference take it (every backend checks it the same way)
        self._params = _C.Conv2dParams(
            in_channels=self.in_channels,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=groups,
            input_zero_point=self.input_zero_point,
            requant=_C.RequantParams(**rq),
            overflow=self.overflow,
            fully_connected=_op_name == "fully_connected",
        )
        self._plan = _C.Conv2dPlan(self._params, w, self._bias)
        self._op_name = _op_name
        self._cuda_plans = {}

    def __call__(self, x, *, threads=None, engine="auto"):
        if _cuda.is_device_array(x):
            return self._run_cuda(_cuda.view(x, "x", np.int8, 4, nhwc_from_torch=True), engine)
        arr, to_torch = T.activation(x)
        self._check_channels(arr)
        t = V.threads(threads) or self.threads
        return T.activation_out(self._plan.run(arr, t), to_torch)

    def reference(self, x):
        """The same convolution through the scalar reference kernel (slow; for checking)."""
        arr, to_torch = T.activation(x)
        self._check_channels(arr)
        out = _C.ref_conv2d(self._params, arr, self._weight, self._bias)
        return T.activation_out(out, to_torch)

    def accumulators(self, x) -> np.ndarray:
        """The int32 accumulators of the layer on ``x``, (N, OH, OW, C_out): bias + sum (x - z) w after the
        overflow policy, before requantization (docs/arithmetic.md 4, 5). Through the scalar reference (slow): for
        test vectors of a hardware requantization unit, not for inference."""
        arr, _ = T.activation(x)
        self._check_channels(arr)
        return _C.ref_conv2d_accumulators(self._params, arr, self._weight, self._bias)

    def _check_channels(self, arr):
        if arr.shape[3] != self.in_channels:
            raise ValueError(
                f"x has {arr.shape[3]} channels (NHWC shape {tuple(arr.shape)}) but the layer "
                f"expects {self.in_channels}"
            )

    def cuda_plan(self, device: int = 0, stream: int = 0):
        """The layer's weights and constants on CUDA device ``device`` (copied once, then cached)."""
        plan = self._cuda_plans.get(device)
        if plan is None:
            _cuda.require(device)
            plan = _C.CudaConv2dPlan(self._params, self._weight, self._bias, device, stream)
            self._cuda_plans[device] = plan
        return plan

    def _run_cuda(self, v, engine="auto", out_shape=None):
        """Run on the device view ``v`` (NHWC); the output is ``out_shape``-shaped memory (default NHWC)."""
        self._check_channels(v)
        if engine not in ("auto", "mma", "dp4a"):
            raise ValueError(f"engine must be 'auto', 'mma' or 'dp4a', got {engine!r}")
        plan = self.cuda_plan(v.device, v.stream)
        shape = tuple(plan.output_shape(*v.shape[:3]))
        if out_shape is None:
            out, ptr = _cuda.empty(shape, np.int8, v, nchw_from_nhwc=v.torch)
        else:
            out, ptr = _cuda.empty(out_shape, np.int8, v)
        plan.run(v.ptr, v.size, v.shape, ptr, int(np.prod(shape)), v.stream, engine)
        return out

    def __repr__(self):
        return (
            f"npuq.ops.Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups})"
        )


def conv2d(x, weight, bias=None, *, threads=None, **params):
    """Quantized 2-D convolution (packs the weights on every call; see :class:`Conv2d` to pack once)."""
    return Conv2d(weight, bias, **params)(x, threads=threads)


class FullyConnected:
    """A quantized fully-connected layer: x (N, K) int8, weight (C_out, K) int8, bias (C_out,) int32."""

    def __init__(self, weight, bias=None, *, input_zero_point=0, **params):
        w = T.array(weight, "weight", np.int8, ndim=2, hint=" (quantize the weights to int8 first)")
        self.in_features = w.shape[1]
        self.out_features = w.shape[0]
        self._conv = Conv2d(
            w.reshape(w.shape[0], 1, 1, w.shape[1]),
            bias,
            input_zero_point=input_zero_point,
            _op_name="fully_connected",
            **params,
        )

    def _as_image(self, x):
        arr = T.array(x, "x", np.int8, ndim=2)
        if arr.shape[1] != self.in_features:
            raise ValueError(
                f"x has {arr.shape[1]} features (shape {arr.shape}) but the layer expects {self.in_features}"
            )
        return arr.reshape(arr.shape[0], 1, 1, arr.shape[1]), T.is_torch(x)

    def __call__(self, x, *, threads=None, engine="auto"):
        if _cuda.is_device_array(x):
            v = _cuda.view(x, "x", np.int8, 2)
            if v.shape[1] != self.in_features:
                raise ValueError(
                    f"x has {v.shape[1]} features (shape {v.shape}) but the layer expects {self.in_features}"
                )
            image = v._replace(shape=(v.shape[0], 1, 1, v.shape[1]))
            return self._conv._run_cuda(image, engine, out_shape=(v.shape[0], self.out_features))
        img, to_torch = self._as_image(x)
        out = self._conv(img, threads=threads)
        return T.plain_out(out.reshape(out.shape[0], out.shape[3]), to_torch)

    def accumulators(self, x) -> np.ndarray:
        """The int32 accumulators (N, C_out) before requantization (see :meth:`Conv2d.accumulators`)."""
        img, _ = self._as_image(x)
        acc = self._conv.accumulators(img)
        return acc.reshape(acc.shape[0], acc.shape[3])

    def reference(self, x):
        img, to_torch = self._as_image(x)
        out = self._conv.reference(img)
        return T.plain_out(out.reshape(out.shape[0], out.shape[3]), to_torch)


def fully_connected(x, weight, bias=None, *, threads=None, **params):
    """Quantized fully-connected layer (packs on every call; see :class:`FullyConnected`)."""
    return FullyConnected(weight, bias, **params)(x, threads=threads)


def _requantize(
    acc,
    reference,
    *,
    multiplier,
    exponent,
    channel_shift=None,
    output_zero_point=0,
    act_min=-128,
    act_max=127,
    rounding="double",
    threads=None,
):
    to_torch = T.is_torch(acc)
    arr = T.array(acc, "acc", np.int32)
    scalar = arr.ndim == 0  # one value of one channel, as npuq.quant.intmath.requantize takes it
    if scalar:
        arr = arr.reshape(1)  # the native kernel reads the channels from the last axis
    rq = V.requant(arr.shape[-1], multiplier, exponent, channel_shift, output_zero_point, act_min, act_max, rounding)
    out = _C.requantize(_C.RequantParams(**rq), arr, V.threads(threads), reference)
    return T.plain_out(out.reshape(()) if scalar else out, to_torch)


def requantize(acc, **params):
    """Requantize int32 accumulators (last axis = channels) to int8 (docs/arithmetic.md 3). A 0-d ``acc`` is one
    value of one channel and gives a 0-d result."""
    return _requantize(acc, False, **params)


def add_params(a_scale: float, b_scale: float, output_scale: float, left_shift: int = 20) -> dict:
    """The integer parameters of :func:`add` from the three real scales (docs/arithmetic.md 6)."""
    for name, s in (("a_scale", a_scale), ("b_scale", b_scale), ("output_scale", output_scale)):
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"{name} must be finite and > 0, got {s!r}")
    left_shift = V.integer(left_shift, "left_shift", 0, 22)
    twice_max = 2.0 * max(a_scale, b_scale)
    a_m, a_e = quantize_multiplier(a_scale / twice_max)
    b_m, b_e = quantize_multiplier(b_scale / twice_max)
    o_m, o_e = quantize_multiplier(twice_max / ((1 << left_shift) * output_scale))
    return dict(
        a_multiplier=a_m,
        a_exponent=a_e,
        b_multiplier=b_m,
        b_exponent=b_e,
        output_multiplier=o_m,
        output_exponent=o_e,
        left_shift=left_shift,
    )


# The keywords of add and Add, in the order of their signatures (and of their repr).
_ADD_KEYWORDS = (
    "a_zero_point",
    "a_multiplier",
    "a_exponent",
    "b_zero_point",
    "b_multiplier",
    "b_exponent",
    "output_zero_point",
    "output_multiplier",
    "output_exponent",
    "left_shift",
    "act_min",
    "act_max",
    "rounding",
)


def _add_params(
    a_zero_point,
    a_multiplier,
    a_exponent,
    b_zero_point,
    b_multiplier,
    b_exponent,
    output_zero_point,
    output_multiplier,
    output_exponent,
    left_shift,
    act_min,
    act_max,
    rounding,
) -> _C.AddParams:
    """The checked parameters of an add (docs/arithmetic.md 6): the one set of rules of :func:`add` and
    :class:`Add`, each bad value refused with the error that names it."""
    q = {}
    for side, zp, m, e in (
        ("a", a_zero_point, a_multiplier, a_exponent),
        ("b", b_zero_point, b_multiplier, b_exponent),
        ("output", output_zero_point, output_multiplier, output_exponent),
    ):
        q[f"{side}_zero_point"] = V.zero_point(zp, f"{side}_zero_point")
        m = q[f"{side}_multiplier"] = V.integer(m, f"{side}_multiplier", 0, 2**31 - 1)
        if m != 0 and m < 2**30:
            raise ValueError(f"{side}_multiplier = {m} is not a Q31 mantissa (0 or in [2**30, 2**31 - 1])")
        hi = 0 if side != "output" else 30
        q[f"{side}_exponent"] = V.integer(e, f"{side}_exponent", -31, hi)
    lo, hi = V.clamp(act_min, act_max)
    V.choice(rounding, "rounding", V.ROUNDING_MODES)
    left_shift = V.integer(left_shift, "left_shift", 0, 22)
    return _C.AddParams(**q, left_shift=left_shift, act_min=lo, act_max=hi, rounding=rounding)


def _add(
    a,
    b,
    reference,
    *,
    a_zero_point,
    a_multiplier,
    a_exponent,
    b_zero_point,
    b_multiplier,
    b_exponent,
    output_zero_point,
    output_multiplier,
    output_exponent,
    left_shift=20,
    act_min=-128,
    act_max=127,
    rounding="double",
    threads=None,
):
    params = _add_params(**{k: v for k, v in locals().items() if k in _ADD_KEYWORDS})
    return _add_arrays(params, a, b, threads, reference)


def _add_arrays(params: _C.AddParams, a, b, threads, reference: bool):
    """``a + b`` with checked ``params``: device arrays on their GPU, numpy arrays and torch CPU tensors on
    the host. ``threads`` is the caller's value, checked here (None: the default count)."""
    on_device = _cuda.is_device_array(a), _cuda.is_device_array(b)
    if any(on_device):
        if not all(on_device):
            raise TypeError(
                f"{'a' if on_device[0] else 'b'} is a device array but {'b' if on_device[0] else 'a'} is "
                "not: put both on the same CUDA device"
            )
        if reference:
            raise TypeError("the reference kernels run on the CPU: pass host arrays")
        return _add_cuda(a, b, params)
    to_torch = T.is_torch(a)
    if to_torch != T.is_torch(b):
        raise TypeError("a and b must both be numpy arrays or both torch tensors")
    if (
        to_torch
        and a.dim() == 4
        and (
            a.is_contiguous(memory_format=_torch_channels_last())
            or b.is_contiguous(memory_format=_torch_channels_last())
        )
    ):
        a_arr, _ = T.activation(a, "a")
        b_arr, _ = T.activation(b, "b")
        wrap = T.activation_out
    else:
        a_arr = T.array(a, "a", np.int8)
        b_arr = T.array(b, "b", np.int8)
        wrap = T.plain_out
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must have the same shape, got {a_arr.shape} and {b_arr.shape}")
    out = _C.add(params, a_arr, b_arr, V.threads(threads), reference)
    return wrap(out, to_torch)


def _add_cuda(a, b, params):
    activation = (
        _cuda.is_torch_cuda(a)
        and a.dim() == 4
        and _cuda.is_torch_cuda(b)
        and (
            a.is_contiguous(memory_format=_torch_channels_last())
            or b.is_contiguous(memory_format=_torch_channels_last())
        )
    )
    va = _cuda.view(a, "a", np.int8, nhwc_from_torch=activation)
    vb = _cuda.view(b, "b", np.int8, nhwc_from_torch=activation)
    if va.shape != vb.shape:
        raise ValueError(f"a and b must have the same shape, got {va.shape} and {vb.shape}")
    if va.device != vb.device:
        raise ValueError(f"a is on CUDA device {va.device} but b is on device {vb.device}: put both on one device")
    out, ptr = _cuda.empty(va.shape, np.int8, va, nchw_from_nhwc=activation)
    _C.cuda_add(params, va.ptr, va.size, vb.ptr, vb.size, ptr, va.size, va.device, va.stream)
    return out


def _torch_channels_last():
    import torch

    return torch.channels_last


def add(a, b, **params):
    """Elementwise add of two int8 tensors with their own scales (TFLite int8 Add, docs/arithmetic.md 6).

    ``npuq.ops.add_params(a_scale, b_scale, out_scale)`` gives the multiplier keywords.
    """
    return _add(a, b, False, **params)


def _add_param(name: str) -> property:
    return property(lambda self: getattr(self._params, name), doc=f"``{name}``, as checked at construction")


class Add:
    """An elementwise add (TFLite int8 Add, docs/arithmetic.md 6) with its parameters checked once; call it
    on two tensors: ``Add(**params)(a, b)`` is ``add(a, b, **params)``.

    Takes the keywords of :func:`add` and refuses a bad one with the same error, here rather than at every
    call. A call checks only its arrays: two C-contiguous int8 numpy arrays of one shape go straight to the
    native kernel (a microsecond or two on small tensors, where :func:`add` spends tens checking its
    keywords); torch tensors (channels_last or contiguous) and device arrays take the same paths as in
    :func:`add`, with the same results and errors. ``threads`` is the default thread count of calls (None:
    ``npuq.get_num_threads()``); a call's own ``threads`` overrides it.
    """

    __slots__ = ("_params", "_threads", "_count")

    def __init__(
        self,
        *,
        a_zero_point,
        a_multiplier,
        a_exponent,
        b_zero_point,
        b_multiplier,
        b_exponent,
        output_zero_point,
        output_multiplier,
        output_exponent,
        left_shift=20,
        act_min=-128,
        act_max=127,
        rounding="double",
        threads=None,
    ):
        self._params = _add_params(**{k: v for k, v in locals().items() if k in _ADD_KEYWORDS})
        self._threads = None if threads is None else V.threads(threads)
        self._count = self._threads or 0  # the native core's thread argument (0: its default)

    def __call__(self, a, b, *, threads=None):
        if type(a) is np.ndarray and type(b) is np.ndarray:
            if threads is None:
                count = self._count
            elif type(threads) is int and 0 < threads <= _MAX_THREADS:
                count = threads
            else:
                count = -1  # let the general path name the bad value
            if count >= 0:
                # The native core checks dtype, layout, emptiness and shapes itself, in less time than the
                # same checks take in Python; where it refuses, the general path below gives add's error
                # (or copies a strided array, which the native core does not take).
                try:
                    return _C.add(self._params, a, b, count)
                except (TypeError, ValueError):
                    pass
        return _add_arrays(self._params, a, b, self._threads if threads is None else threads, False)

    a_zero_point = _add_param("a_zero_point")
    a_multiplier = _add_param("a_multiplier")
    a_exponent = _add_param("a_exponent")
    b_zero_point = _add_param("b_zero_point")
    b_multiplier = _add_param("b_multiplier")
    b_exponent = _add_param("b_exponent")
    output_zero_point = _add_param("output_zero_point")
    output_multiplier = _add_param("output_multiplier")
    output_exponent = _add_param("output_exponent")
    left_shift = _add_param("left_shift")
    act_min = _add_param("act_min")
    act_max = _add_param("act_max")
    rounding = _add_param("rounding")

    @property
    def threads(self) -> int | None:
        """The default thread count of calls (None: ``npuq.get_num_threads()``)."""
        return self._threads

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self._params, k)!r}" for k in _ADD_KEYWORDS)
        threads = "" if self._threads is None else f", threads={self._threads}"
        return f"npuq.ops.Add({args}{threads})"


def _avg_pool2d(
    x,
    reference,
    kernel_size,
    *,
    stride=None,
    padding=0,
    count_include_pad=False,
    input_zero_point=0,
    act_min=-128,
    act_max=127,
    threads=None,
):
    kernel = V.pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else V.pair(stride, "stride", 1)
    pad = V.padding(padding)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"count_include_pad must be a bool, got {type(count_include_pad).__name__}")
    zp = V.zero_point(input_zero_point, "input_zero_point")
    lo, hi = V.clamp(act_min, act_max)
    params = _C.Pool2dParams(
        kernel=kernel,
        stride=stride,
        padding=pad,
        count_include_pad=bool(count_include_pad),
        input_zero_point=zp,
        act_min=lo,
        act_max=hi,
    )
    if _cuda.is_device_array(x) and not reference:
        return _pool_cuda(True, x, params)
    arr, to_torch = T.activation(x)
    out = _C.avg_pool2d(params, arr, V.threads(threads), reference)
    return T.activation_out(out, to_torch)


def avg_pool2d(x, kernel_size, **params):
    """Average pooling with TFLite's rounding (docs/arithmetic.md 7); scale and zero point unchanged."""
    return _avg_pool2d(x, False, kernel_size, **params)


def _global_avg_pool(x, reference, *, act_min=-128, act_max=127, threads=None):
    if _cuda.is_device_array(x) and not reference:
        v = _cuda.view(x, "x", np.int8, 4, nhwc_from_torch=True)
        return _pool_cuda(True, v, _global_pool_params(v.shape, act_min, act_max))
    arr, to_torch = T.activation(x)
    out = _C.avg_pool2d(_global_pool_params(arr.shape, act_min, act_max), arr, V.threads(threads), reference)
    return T.activation_out(out, to_torch)


def _global_pool_params(shape, act_min, act_max):
    lo, hi = V.clamp(act_min, act_max)
    kernel = (shape[1], shape[2])
    return _C.Pool2dParams(kernel=kernel, stride=kernel, act_min=lo, act_max=hi)


def global_avg_pool(x, **params):
    """Average over the whole image: (N, H, W, C) -> (N, 1, 1, C) (torch: (N, C, 1, 1) channels_last)."""
    return _global_avg_pool(x, False, **params)


def _pool_cuda(average, x, params):
    v = x if isinstance(x, _cuda.DeviceView) else _cuda.view(x, "x", np.int8, 4, nhwc_from_torch=True)
    shape = tuple(_C.pool_output_shape(v.shape, params.kernel, params.stride, params.padding))
    out, ptr = _cuda.empty(shape, np.int8, v, nchw_from_nhwc=v.torch)
    _C.cuda_pool2d(average, params, v.ptr, v.size, v.shape, ptr, int(np.prod(shape)), v.device, v.stream)
    return out


def _ref_conv2d(x, weight, bias=None, **params):
    params.pop("threads", None)
    return Conv2d(weight, bias, **params).reference(x)


def _ref_fully_connected(x, weight, bias=None, **params):
    params.pop("threads", None)
    return FullyConnected(weight, bias, **params).reference(x)


reference = types.SimpleNamespace(
    conv2d=_ref_conv2d,
    fully_connected=_ref_fully_connected,
    requantize=lambda acc, **p: _requantize(acc, True, **p),
    add=lambda a, b, **p: _add(a, b, True, **p),
    avg_pool2d=lambda x, kernel_size, **p: _avg_pool2d(x, True, kernel_size, **p),
    global_avg_pool=lambda x, **p: _global_avg_pool(x, True, **p),
)
reference.__doc__ = "The scalar reference kernels of csrc/reference (single-threaded, slow): the fast paths' oracle."

# The ops of program format 2 live in one module per family (docs/ops.md); their scalar-reference variants
# join ``reference``.
from npuq import _ops_eltwise, _ops_resample  # noqa: E402
from npuq._ops_eltwise import concat, concat_params, lut, mul, mul_params  # noqa: E402
from npuq._ops_resample import (  # noqa: E402
    channel_shuffle,
    channel_slice,
    max_pool2d,
    mean,
    mean_params,
    pad,
    pool_output_size,
    upsample,
)
from npuq._ops_tflite import fully_connected_tflite  # noqa: E402

for _family in (_ops_eltwise, _ops_resample):
    for _name, _fn in _family.REFERENCE.items():
        setattr(reference, _name, _fn)
