"""The resampling ops of npuq.ops (re-exported there): the mean over H and W, nearest / bilinear upsampling,
constant padding, channel shuffle and slice, and max pooling with ``ceil_mode`` (docs/arithmetic.md 12-15).

Host arrays are numpy NHWC or torch CPU (N, C, H, W) channels_last tensors, as for the other ops; device
arrays (torch CUDA tensors, ``__cuda_array_interface__`` arrays) run the CUDA kernels on their device and
stream and come back as the same kind of device array.
"""

from __future__ import annotations

import numpy as np

from npuq import _C, _cuda
from npuq import _tensors as T
from npuq import _validate as V
from npuq.fixedpoint import quantize_multiplier

__all__ = [
    "channel_shuffle",
    "channel_slice",
    "max_pool2d",
    "mean",
    "mean_params",
    "pad",
    "pool_output_size",
    "upsample",
]

UPSAMPLE_MODES = ("nearest", "bilinear")
MAX_UPSAMPLE_FACTOR = 64
MAX_MEAN_COUNT = 1 << 23  # H * W of a mean: 255 * 2^23 < 2^31, the channel sum is exact in int32
_POSITIVE_SCALE = V.Interval(float, 0, None, closed="neither")


def _bool(v, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def _device_image(x):
    """The NHWC device view of a 4-D device activation (torch: (N, C, H, W) channels_last)."""
    return _cuda.view(x, "x", np.int8, 4, nhwc_from_torch=True)


def _device_output(shape, v):
    """A new NHWC device array like ``v`` (torch: (N, C, H, W) channels_last), and its pointer."""
    _cuda.require(v.device)
    return _cuda.empty(shape, np.int8, v, nchw_from_nhwc=v.torch)


# ------------------------------------------------------------------------------------------- mean (15)
def mean_params(input_scale, output_scale, count, tflite_rounding=False) -> dict:
    """``multiplier`` and ``exponent`` of :func:`mean` (docs/arithmetic.md 15): ``quantize_multiplier`` of
    ``s_x / (count * s_y)``, or of ``s_x / s_y`` with ``tflite_rounding`` (the division by ``count`` is
    then a second rounding in the op)."""
    s_x = V.check(input_scale, "input_scale", _POSITIVE_SCALE)
    s_y = V.check(output_scale, "output_scale", _POSITIVE_SCALE)
    count = V.integer(count, "count", 1, MAX_MEAN_COUNT)
    real = s_x / s_y if _bool(tflite_rounding, "tflite_rounding") else s_x / (count * s_y)
    multiplier, exponent = quantize_multiplier(real)
    return dict(multiplier=multiplier, exponent=exponent)


def _mean_args(input_zero_point, output_zero_point, multiplier, exponent, act_min, act_max, tflite_rounding, rounding):
    multiplier = V.integer(multiplier, "multiplier", 0, 2**31 - 1)
    if multiplier != 0 and multiplier < 2**30:
        raise ValueError(
            f"multiplier = {multiplier} is not a Q31 mantissa: it must be 0 or in [2**30, 2**31 - 1] "
            "(build it with npuq.ops.mean_params)"
        )
    lo, hi = V.clamp(act_min, act_max)
    return dict(
        input_zero_point=V.zero_point(input_zero_point, "input_zero_point"),
        output_zero_point=V.zero_point(output_zero_point, "output_zero_point"),
        multiplier=multiplier,
        exponent=V.integer(exponent, "exponent", -31, 30),
        act_min=lo,
        act_max=hi,
        tflite_rounding=_bool(tflite_rounding, "tflite_rounding"),
        rounding=V.choice(rounding, "rounding", V.ROUNDING_MODES),
    )


def _check_mean_count(shape):
    if shape[1] * shape[2] > MAX_MEAN_COUNT:
        raise ValueError(
            f"x is {shape[1]}x{shape[2]}: a mean sums at most 2^23 values per channel (H * W = "
            f"{shape[1] * shape[2]}; the int32 sum could overflow)"
        )


def _mean(
    x,
    reference,
    *,
    input_zero_point,
    output_zero_point,
    multiplier,
    exponent,
    act_min=-128,
    act_max=127,
    tflite_rounding=False,
    rounding="double",
    threads=None,
):
    args = _mean_args(
        input_zero_point, output_zero_point, multiplier, exponent, act_min, act_max, tflite_rounding, rounding
    )
    threads = V.threads(threads)
    if _cuda.is_device_array(x) and not reference:
        v = _device_image(x)
        _check_mean_count(v.shape)
        out, ptr = _device_output((v.shape[0], 1, 1, v.shape[3]), v)
        _C.cuda_mean(v.ptr, v.size, v.shape, ptr, v.shape[0] * v.shape[3], **args, device=v.device, stream=v.stream)
        return out
    arr, to_torch = T.activation(x)
    _check_mean_count(arr.shape)
    return T.activation_out(_C.mean(arr, **args, threads=threads, reference=reference), to_torch)


def mean(
    x,
    *,
    input_zero_point,
    output_zero_point,
    multiplier,
    exponent,
    act_min=-128,
    act_max=127,
    tflite_rounding=False,
    rounding="double",
    threads=None,
):
    """Mean over H and W with its own output scale and zero point (docs/arithmetic.md 15): (N, H, W, C) int8
    -> (N, 1, 1, C) (torch: (N, C, 1, 1) channels_last); H * W <= 2^23.

    ``multiplier`` and ``exponent`` come from :func:`mean_params`. ``tflite_rounding``: TFLite's two
    roundings (requantize, then divide by H * W), whose multiplier is ``mean_params(..., tflite_rounding=True)``.
    ``rounding``: "double" or "single" (docs/arithmetic.md 3).
    """
    return _mean(
        x,
        False,
        input_zero_point=input_zero_point,
        output_zero_point=output_zero_point,
        multiplier=multiplier,
        exponent=exponent,
        act_min=act_min,
        act_max=act_max,
        tflite_rounding=tflite_rounding,
        rounding=rounding,
        threads=threads,
    )


# ------------------------------------------------------------------------------------- upsample (12, 13)
def _scale(scale) -> tuple[int, int]:
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2:
            raise ValueError(f"scale must be an int or a pair (f_h, f_w), got {scale!r}")
        pair = scale
    else:
        pair = (scale, scale)
    return tuple(V.integer(f, "scale", 1, MAX_UPSAMPLE_FACTOR) for f in pair)


def _upsample(x, reference, scale, *, mode="nearest", zero_point=0, threads=None):
    factors = _scale(scale)
    mode = V.choice(mode, "mode", UPSAMPLE_MODES)
    zero_point = V.zero_point(zero_point, "zero_point")
    threads = V.threads(threads)
    if _cuda.is_device_array(x) and not reference:
        v = _device_image(x)
        n, h, w, c = v.shape
        shape = (n, h * factors[0], w * factors[1], c)
        out, ptr = _device_output(shape, v)
        _C.cuda_upsample(
            v.ptr, v.size, v.shape, ptr, int(np.prod(shape)), factors, mode, zero_point, v.device, v.stream
        )
        return out
    arr, to_torch = T.activation(x)
    out = _C.upsample(arr, factors, mode, zero_point, threads=threads, reference=reference)
    return T.activation_out(out, to_torch)


def upsample(x, scale, *, mode="nearest", zero_point=0, threads=None):
    """Upsampling by integer factors (docs/arithmetic.md 12, 13): (N, H, W, C) -> (N, H f_h, W f_w, C).

    ``scale``: an int or a pair (f_h, f_w), each in [1, 64]. ``mode``: "nearest" (torch's nearest) or
    "bilinear" (half-pixel centres, torch's ``align_corners=False``, exact integer weights; ``zero_point``
    is the input's, which the output keeps).
    """
    return _upsample(x, False, scale, mode=mode, zero_point=zero_point, threads=threads)


# --------------------------------------------------------------------------------- data movement (12)
def pad(x, padding, value=0):
    """Constant padding of H and W (docs/arithmetic.md 12): ``padding`` (top, bottom, left, right) >= 0
    (or an int, or (h, w)); the new positions hold the int8 ``value`` (``value = z_x`` pads with real
    zero). (N, H, W, C) -> (N, H + top + bottom, W + left + right, C)."""
    t, b, left, r = V.padding(padding)
    value = V.integer(value, "value", -128, 127)
    if _cuda.is_device_array(x):
        v = _device_image(x)
        n, h, w, c = v.shape
        shape = (n, h + t + b, w + left + r, c)
        out, ptr = _device_output(shape, v)
        _C.cuda_pad(v.ptr, v.size, v.shape, ptr, int(np.prod(shape)), (t, b, left, r), value, v.device, v.stream)
        return out
    arr, to_torch = T.activation(x)
    n, h, w, c = arr.shape
    out = np.full((n, h + t + b, w + left + r, c), value, dtype=np.int8)
    out[:, t : t + h, left : left + w] = arr
    return T.activation_out(out, to_torch)


def _check_groups(channels: int, groups: int) -> None:
    if channels % groups:
        raise ValueError(f"groups ({groups}) must divide the {channels} channels of x")


def channel_shuffle(x, groups):
    """ShuffleNet's channel shuffle (docs/arithmetic.md 12) of (N, H, W, C): input channel ``i * k + j``
    (``k = C / groups``) goes to output channel ``j * groups + i``; ``groups`` must divide C."""
    groups = V.integer(groups, "groups", 1)
    if _cuda.is_device_array(x):
        v = _device_image(x)
        _check_groups(v.shape[3], groups)
        out, ptr = _device_output(v.shape, v)
        rows = v.size // v.shape[3]
        _C.cuda_channel_shuffle(v.ptr, v.size, rows, v.shape[3], ptr, v.size, groups, v.device, v.stream)
        return out
    arr, to_torch = T.activation(x)
    _check_groups(arr.shape[3], groups)
    return T.activation_out(_C.channel_shuffle(arr, groups), to_torch)


def _slice_view(x):
    """(device view or host array, to_torch, is_image) of a channel_slice input: (N, H, W, C) or (N, K)."""
    if _cuda.is_device_array(x):
        if _cuda.is_torch_cuda(x) and x.dim() == 4:
            return _device_image(x), False, True
        v = _cuda.view(x, "x", np.int8)
        if len(v.shape) not in (2, 4):
            raise ValueError(f"x must be (N, H, W, C) or (N, K), got shape {v.shape}")
        return v, False, len(v.shape) == 4
    if T.is_torch(x) and x.dim() == 4:
        arr, to_torch = T.activation(x)
        return arr, to_torch, True
    arr = T.array(x, "x", np.int8)
    if arr.ndim not in (2, 4):
        raise ValueError(f"x must be (N, H, W, C) or (N, K), got shape {arr.shape}")
    return arr, T.is_torch(x), arr.ndim == 4


def channel_slice(x, begin, end):
    """Channels ``begin .. end - 1`` of the last axis of (N, H, W, C) or (N, K) (docs/arithmetic.md 12);
    ``0 <= begin < end <= C``."""
    src, to_torch, image = _slice_view(x)
    c = src.shape[-1]
    begin = V.integer(begin, "begin", 0, c - 1)
    end = V.integer(end, "end", begin + 1, c)
    shape = (*src.shape[:-1], end - begin)
    if isinstance(src, _cuda.DeviceView):
        rows = src.size // c
        if image:
            out, ptr = _device_output(shape, src)
        else:
            _cuda.require(src.device)
            out, ptr = _cuda.empty(shape, np.int8, src)
        _C.cuda_channel_slice(src.ptr, src.size, rows, c, ptr, rows * (end - begin), begin, end, src.device, src.stream)
        return out
    out = np.ascontiguousarray(src[..., begin:end])
    return T.activation_out(out, to_torch) if image else T.plain_out(out, to_torch)


# ------------------------------------------------------------------------------------ max pooling (14)
def pool_output_size(size, kernel, stride, pad_lo, pad_hi, ceil_mode) -> int:
    """Output size of a pooling window along one axis (docs/arithmetic.md 14): ``floor((size + pad_lo +
    pad_hi - kernel) / stride) + 1``, or with ``ceil_mode`` the ceiling, less one where the last window
    would start in the trailing padding. ValueError unless ``0 <= pad < kernel`` and the kernel fits the
    padded input."""
    args = [V.integer(v, name, 1) for v, name in ((size, "size"), (kernel, "kernel"), (stride, "stride"))]
    pads = [V.integer(v, name, 0) for v, name in ((pad_lo, "pad_lo"), (pad_hi, "pad_hi"))]
    return int(_C.pool_output_size(*args, *pads, _bool(ceil_mode, "ceil_mode")))


def _pool_geometry(kernel_size, stride, padding, ceil_mode):
    kernel = V.pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else V.pair(stride, "stride", 1)
    return kernel, stride, V.padding(padding), _bool(ceil_mode, "ceil_mode")


def _max_pool2d_cuda(x, kernel, stride, pad, ceil_mode):
    """The CUDA pooling kernel with clipped windows: with ceil_mode the extra last window is the floor
    rule's last window over a larger trailing padding, which never wins."""
    v = _device_image(x)
    pt, pb, pl, pr = pad
    extra = []
    for size, k, s, lo, hi in ((v.shape[1], kernel[0], stride[0], pt, pb), (v.shape[2], kernel[1], stride[1], pl, pr)):
        out = pool_output_size(size, k, s, lo, hi, ceil_mode)
        extra.append(max(hi, (out - 1) * s + k - size - lo))  # < k: the last window starts inside
    params = _C.Pool2dParams(kernel=kernel, stride=stride, padding=(pt, extra[0], pl, extra[1]))
    shape = tuple(_C.pool_output_shape(v.shape, params.kernel, params.stride, params.padding))
    out, ptr = _device_output(shape, v)
    _C.cuda_pool2d(False, params, v.ptr, v.size, v.shape, ptr, int(np.prod(shape)), v.device, v.stream)
    return out


def _max_pool2d(x, reference, kernel_size, *, stride=None, padding=0, ceil_mode=False, threads=None):
    kernel, stride, pad, ceil_mode = _pool_geometry(kernel_size, stride, padding, ceil_mode)
    threads = V.threads(threads)
    if _cuda.is_device_array(x) and not reference:
        return _max_pool2d_cuda(x, kernel, stride, pad, ceil_mode)
    arr, to_torch = T.activation(x)
    out = _C.max_pool2d(arr, kernel, stride, pad, ceil_mode, threads=threads, reference=reference)
    return T.activation_out(out, to_torch)


def max_pool2d(x, kernel_size, *, stride=None, padding=0, ceil_mode=False, threads=None):
    """Max pooling of int8 activations (docs/arithmetic.md 14): no rounding, padded positions never win
    (windows are clipped to the image; no padded copy of the input is made). ``stride`` defaults to the
    kernel; ``padding``: int, (h, w) or (top, bottom, left, right), each smaller than the kernel;
    ``ceil_mode``: torch's output size rule; ``threads``: as the other ops (None: npuq.get_num_threads()).
    Device arrays run the CUDA kernel."""
    return _max_pool2d(x, False, kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode, threads=threads)


REFERENCE = {
    "mean": lambda x, **p: _mean(x, True, **p),
    "upsample": lambda x, scale, **p: _upsample(x, True, scale, **p),
    "max_pool2d": lambda x, kernel_size, **p: _max_pool2d(x, True, kernel_size, **p),
}
