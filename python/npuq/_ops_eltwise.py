"""The table activation, elementwise multiply and channel concatenation of npuq.ops (re-exported there;
docs/arithmetic.md 9, 10, 11).

Host inputs are numpy arrays (NHWC) or torch CPU tensors ((N, C, H, W) in channels_last memory for 4-D
activations); device inputs (torch CUDA tensors, ``__cuda_array_interface__`` arrays) run the CUDA kernels.
Every op returns the type it was given.
"""

from __future__ import annotations

import numpy as np

from npuq import _C, _cuda
from npuq import _tensors as T
from npuq import _validate as V
from npuq.fixedpoint import quantize_multiplier

__all__ = ["concat", "concat_params", "lut", "mul", "mul_params"]

MAX_CONCAT_INPUTS = 64
_LUT_ENTRIES = 256


def _int(v, name: str, lo: int, hi: int) -> int:
    """V.integer, without its constraint objects for the common case of a plain int in range (the ops are
    called per layer on small tensors, where argument checks would otherwise cost more than the kernel)."""
    if type(v) is int and lo <= v <= hi:
        return v
    return V.integer(v, name, lo, hi)


def _zero_point(v, name: str) -> int:
    return _int(v, name, -128, 127)


def _exponent(v, name: str) -> int:
    return _int(v, name, -31, 30)


def _threads(v) -> int:
    return 0 if v is None else V.threads(v)


def _q31(v, name: str) -> int:
    m = _int(v, name, 0, 2**31 - 1)
    if m != 0 and m < 2**30:
        raise ValueError(f"{name} = {m} is not a Q31 mantissa: it must be 0 or in [2**30, 2**31 - 1]")
    return m


def _rounding(v) -> str:
    return v if type(v) is str and v in ("double", "single") else V.choice(v, "rounding", V.ROUNDING_MODES)


def _is_channels_last_4d(x) -> bool:
    """A 4-D torch tensor whose memory is NHWC: the ops read it in place and answer in the same layout."""
    import torch

    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _no_reference_on_device(reference: bool) -> None:
    if reference:
        raise TypeError("the reference kernels run on the CPU: pass host arrays")


# --- lut ---------------------------------------------------------------------------------------------


def _table(table) -> np.ndarray:
    if _cuda.is_device_array(table):
        raise TypeError("table must be a host array (numpy or a torch CPU tensor) of 256 int8 entries")
    arr = T.array(table, "table", np.int8)
    if arr.shape != (_LUT_ENTRIES,):
        raise ValueError(f"table must have shape (256,) (one entry per int8 input), got {tuple(arr.shape)}")
    return arr


def _lut(x, table, reference, *, threads=None):
    t = _threads(threads)
    if _host_int8(x) and _host_int8(table) and table.shape == (_LUT_ENTRIES,):
        return _C.lut(x, table, t, reference)
    tbl = _table(table)
    if _cuda.is_device_array(x):
        _no_reference_on_device(reference)
        activation = _cuda.is_torch_cuda(x) and _is_channels_last_4d(x)
        v = _cuda.view(x, "x", np.int8, nhwc_from_torch=activation)
        out, ptr = _cuda.empty(v.shape, np.int8, v, nchw_from_nhwc=activation)
        _C.cuda_lut(v.ptr, v.size, tbl, ptr, v.size, v.device, v.stream)
        return out
    if T.is_torch(x) and _is_channels_last_4d(x):
        arr, to_torch = T.activation(x)
        return T.activation_out(_C.lut(arr, tbl, t, reference), to_torch)
    arr = T.array(x, "x", np.int8)
    return T.plain_out(_C.lut(arr, tbl, t, reference), T.is_torch(x))


def lut(x, table, *, threads=None):
    """Table activation (docs/arithmetic.md 9): ``y = table[x + 128]`` for every element of an int8 ``x`` of
    any shape; ``table`` is 256 int8 entries (``npuq.quant.lut.make_table`` builds one from a function and
    the scales). Returns ``x``'s type and shape."""
    return _lut(x, table, False, threads=threads)


# --- mul ---------------------------------------------------------------------------------------------


def mul_params(a_scale: float, b_scale: float, output_scale: float) -> dict:
    """The integer parameters of :func:`mul` from the three real scales: ``dict(multiplier, exponent)`` of
    ``quantize_multiplier(a_scale * b_scale / output_scale)`` (docs/arithmetic.md 10)."""
    for name, s in (("a_scale", a_scale), ("b_scale", b_scale), ("output_scale", output_scale)):
        V.check(s, name, V.Interval(float, 0, None, closed="neither"))
    m0, e = quantize_multiplier(float(a_scale) * float(b_scale) / float(output_scale))
    return dict(multiplier=m0, exponent=e)


def _mul(
    a,
    b,
    reference,
    *,
    a_zero_point,
    b_zero_point,
    output_zero_point,
    multiplier,
    exponent,
    act_min=-128,
    act_max=127,
    rounding="double",
    threads=None,
):
    if type(act_min) is int and type(act_max) is int and -128 <= act_min <= act_max <= 127:
        lo, hi = act_min, act_max
    else:
        lo, hi = V.clamp(act_min, act_max)
    q = dict(
        a_zero_point=_zero_point(a_zero_point, "a_zero_point"),
        b_zero_point=_zero_point(b_zero_point, "b_zero_point"),
        output_zero_point=_zero_point(output_zero_point, "output_zero_point"),
        multiplier=_q31(multiplier, "multiplier"),
        exponent=_exponent(exponent, "exponent"),
        act_min=lo,
        act_max=hi,
        rounding=_rounding(rounding),
    )
    t = _threads(threads)
    on_device = _cuda.is_device_array(a), _cuda.is_device_array(b)
    if any(on_device):
        if not all(on_device):
            raise TypeError(
                f"{'a' if on_device[0] else 'b'} is a device array but {'b' if on_device[0] else 'a'} is "
                "not: put both on the same CUDA device"
            )
        _no_reference_on_device(reference)
        return _mul_cuda(a, b, q)
    if _host_int8(a) and _host_int8(b):
        return _C.mul(a, b, *q.values(), t, reference)
    to_torch = T.is_torch(a)
    if to_torch != T.is_torch(b):
        raise TypeError("a and b must both be numpy arrays or both torch tensors")
    if to_torch and a.dim() == 4:
        # (N, C, H, W) activations; b is (N, C, H, W) or the (N, C, 1, 1) scale
        a_arr, _ = T.activation(a, "a")
        b_arr, _ = T.activation(b, "b")
        wrap = T.activation_out
    else:
        a_arr = T.array(a, "a", np.int8)
        b_arr = T.array(b, "b", np.int8)
        wrap = T.plain_out
    return wrap(_C.mul(a_arr, b_arr, *q.values(), t, reference), to_torch)


def _mul_cuda(a, b, q):
    activation = _cuda.is_torch_cuda(a) and a.dim() == 4
    va = _cuda.view(a, "a", np.int8, nhwc_from_torch=activation)
    vb = _cuda.view(b, "b", np.int8, nhwc_from_torch=activation and _cuda.is_torch_cuda(b) and b.dim() == 4)
    if va.device != vb.device:
        raise ValueError(f"a is on CUDA device {va.device} but b is on device {vb.device}: put both on one device")
    out, ptr = _cuda.empty(va.shape, np.int8, va, nchw_from_nhwc=activation)
    _C.cuda_mul(
        va.ptr, va.shape, va.size, vb.ptr, vb.shape, vb.size, ptr, va.size, **q, device=va.device, stream=va.stream
    )
    return out


def mul(
    a,
    b,
    *,
    a_zero_point,
    b_zero_point,
    output_zero_point,
    multiplier,
    exponent,
    act_min=-128,
    act_max=127,
    rounding="double",
    threads=None,
):
    """Elementwise multiply of int8 tensors (TFLite int8 Mul, docs/arithmetic.md 10).

    ``a`` is (N, H, W, C) (torch: (N, C, H, W) channels_last) or (N, K); ``b`` has ``a``'s shape or is the
    (N, 1, 1, C) squeeze-excitation scale (torch: (N, C, 1, 1)), broadcast over H and W.
    ``npuq.ops.mul_params(a_scale, b_scale, output_scale)`` gives ``multiplier`` and ``exponent``.
    """
    return _mul(
        a,
        b,
        False,
        a_zero_point=a_zero_point,
        b_zero_point=b_zero_point,
        output_zero_point=output_zero_point,
        multiplier=multiplier,
        exponent=exponent,
        act_min=act_min,
        act_max=act_max,
        rounding=rounding,
        threads=threads,
    )


# --- concat ------------------------------------------------------------------------------------------


def concat_params(input_scales, output_scale: float) -> dict:
    """The integer parameters of :func:`concat`: ``dict(multipliers, exponents)``, one
    ``quantize_multiplier(s_i / output_scale)`` per input (docs/arithmetic.md 11). An input with the
    output's scale gets ``(2**30, 1)``, the identity that the kernels copy."""
    V.check(output_scale, "output_scale", V.Interval(float, 0, None, closed="neither"))
    scales = _sequence(input_scales, "input_scales")
    multipliers, exponents = [], []
    for i, s in enumerate(scales):
        s = V.check(s, f"input_scales[{i}]", V.Interval(float, 0, None, closed="neither"))
        m0, e = quantize_multiplier(s / float(output_scale))
        multipliers.append(m0)
        exponents.append(e)
    return dict(multipliers=multipliers, exponents=exponents)


def _sequence(v, name: str) -> list:
    if type(v) in (list, tuple):
        return v
    if T.is_torch(v) or isinstance(v, np.ndarray):
        if v.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {tuple(v.shape)}")
        return list(v.tolist())
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or not hasattr(v, "__iter__"):
        raise TypeError(f"{name} must be a sequence, got {type(v).__name__}")
    return list(v)


def _per_input(v, name: str, n: int, lo: int, hi: int) -> list:
    items = _sequence(v, name)
    if len(items) != n:
        raise ValueError(f"{name} must have one entry per input ({n}), got {len(items)}")
    if all(type(x) is int and lo <= x <= hi for x in items):
        return items
    return [V.integer(x, f"{name}[{i}]", lo, hi) for i, x in enumerate(items)]


_INT8 = np.dtype(np.int8)


def _host_int8(x) -> bool:
    """A numpy array the native core takes as it is (the common case, checked without the general path)."""
    if type(x) is not np.ndarray or x.dtype != _INT8 or x.size == 0:
        return False
    flags = x.flags
    return flags.c_contiguous and flags.aligned


def _concat(
    inputs, reference, *, zero_points, multipliers, exponents, output_zero_point, rounding="double", threads=None
):
    if type(inputs) not in (list, tuple) and (
        T.is_torch(inputs) or isinstance(inputs, np.ndarray) or _cuda.is_device_array(inputs)
    ):
        raise TypeError("inputs must be a sequence of tensors (a list or tuple), not one tensor")
    xs = _sequence(inputs, "inputs")
    n = len(xs)
    if not 2 <= n <= MAX_CONCAT_INPUTS:
        raise ValueError(f"inputs must hold 2 to {MAX_CONCAT_INPUTS} tensors, got {n}")
    m0s = _per_input(multipliers, "multipliers", n, 0, 2**31 - 1)
    for i, m in enumerate(m0s):
        if 0 < m < 2**30:
            _q31(m, f"multipliers[{i}]")  # raises
    q = dict(
        zero_points=_per_input(zero_points, "zero_points", n, -128, 127),
        multipliers=m0s,
        exponents=_per_input(exponents, "exponents", n, -31, 30),
        output_zero_point=_zero_point(output_zero_point, "output_zero_point"),
        rounding=_rounding(rounding),
    )
    t = _threads(threads)
    if all(_host_int8(x) for x in xs):
        return _concat_host(xs, q, t, reference)
    on_device = [_cuda.is_device_array(x) for x in xs]
    if any(on_device):
        if not all(on_device):
            raise TypeError(
                f"inputs[{on_device.index(False)}] is a host array but inputs[{on_device.index(True)}] is a "
                "device array: put every input on the same CUDA device"
            )
        _no_reference_on_device(reference)
        return _concat_cuda(xs, q)
    is_torch = [T.is_torch(x) for x in xs]
    if any(is_torch) and not all(is_torch):
        raise TypeError("inputs must all be numpy arrays or all torch tensors")
    to_torch = is_torch[0]
    if to_torch and xs[0].dim() == 4:
        arrs = [T.activation(x, f"inputs[{i}]")[0] for i, x in enumerate(xs)]
        wrap = T.activation_out
    else:
        arrs = [T.array(x, f"inputs[{i}]", np.int8) for i, x in enumerate(xs)]
        wrap = T.plain_out
    return wrap(_concat_host(arrs, q, t, reference), to_torch)


def _concat_host(arrs, q, threads, reference):
    # positional: keyword arguments cost the native call a microsecond, a tenth of a small concat
    return _C.concat(
        arrs,
        q["zero_points"],
        q["multipliers"],
        q["exponents"],
        q["output_zero_point"],
        q["rounding"],
        threads,
        reference,
    )


def _concat_cuda(xs, q):
    activation = _cuda.is_torch_cuda(xs[0]) and xs[0].dim() == 4
    views = [_cuda.view(x, f"inputs[{i}]", np.int8, nhwc_from_torch=activation) for i, x in enumerate(xs)]
    device = views[0].device
    for i, v in enumerate(views):
        if v.device != device:
            raise ValueError(f"inputs[{i}] is on CUDA device {v.device} but inputs[0] on device {device}")
        if len(v.shape) != len(views[0].shape) or v.shape[:-1] != views[0].shape[:-1]:
            raise ValueError(
                f"inputs[{i}] has shape {v.shape} but inputs[0] has {views[0].shape}: all but the last "
                "dimension must agree"
            )
    shape = views[0].shape[:-1] + (sum(v.shape[-1] for v in views),)
    out, ptr = _cuda.empty(shape, np.int8, views[0], nchw_from_nhwc=activation)
    _C.cuda_concat(
        [v.ptr for v in views],
        [list(v.shape) for v in views],
        [v.size for v in views],
        **q,
        out=ptr,
        out_count=int(np.prod(shape)),
        device=device,
        stream=views[0].stream,
    )
    return out


def concat(inputs, *, zero_points, multipliers, exponents, output_zero_point, rounding="double", threads=None):
    """Concatenation along the last axis (channels; docs/arithmetic.md 11) with per-input requantization.

    ``inputs``: 2 to 64 int8 tensors (N, H, W, C_i) with equal N, H, W (torch: (N, C_i, H, W)
    channels_last), or (N, K_i) with equal N. Input ``i`` is requantized by ``(multipliers[i],
    exponents[i])`` from its zero point ``zero_points[i]`` to ``output_zero_point``;
    ``npuq.ops.concat_params(input_scales, output_scale)`` gives the multipliers. Inputs whose parameters
    are the identity ((2**30, 1) and the output's zero point) are copied.
    """
    return _concat(
        inputs,
        False,
        zero_points=zero_points,
        multipliers=multipliers,
        exponents=exponents,
        output_zero_point=output_zero_point,
        rounding=rounding,
        threads=threads,
    )


REFERENCE = {
    "lut": lambda x, table, **p: _lut(x, table, True, **p),
    "mul": lambda a, b, **p: _mul(a, b, True, **p),
    "concat": lambda inputs, **p: _concat(inputs, True, **p),
}
