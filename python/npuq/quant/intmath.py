"""The NPU integer arithmetic (docs/arithmetic.md, version 1) in plain torch tensor ops.

This module is the quantization simulation's arithmetic: batched, vectorized, on CPU or CUDA tensors,
and bit-exact with the native kernels of :mod:`npuq.ops` (the tests hold it to that). It never calls
into the native core; everything below is written from the specification.

Conventions
-----------
* Integer results are ``torch.int64`` tensors on the device of the input (int8 activations, int32
  accumulators and every intermediate value are held in int64, which keeps all intermediate products
  exact: see the comments at each step).
* Integer inputs (activations, weights, accumulators) may be any torch integer dtype, or a floating
  dtype holding integral values (as a fake-quantized float tensor does); both are converted to int64.
  Values are checked against their range (e.g. [-128, 127] for activations); a non-integral float
  value or one out of range raises ``ValueError``.
* Activations use torch's NCHW layout (any memory format). Conv weights are torch's
  ``(C_out, C_in / groups, KH, KW)``, linear weights ``(C_out, K)``.
* Per-channel parameters (multiplier, exponent, channel shift) are ints (per layer) or 1-D integer
  sequences / arrays / tensors of length C along ``channel_axis`` (1 by default: the C of NCHW and the
  last axis of (N, C)); every combination of per-layer and per-channel parameters is allowed.
* Bad arguments raise ``TypeError`` (wrong type / dtype) or ``ValueError`` (range, shape) naming the
  argument; an accumulator outside int32 under ``overflow="raise"`` raises ``OverflowError``. Scalar
  arguments are checked by :mod:`npuq._validate`, as those of :mod:`npuq.ops` are: the same values are
  accepted (strides, dilations, kernel sizes and paddings up to ``MAX_EXTENT`` = 2^20) with the same words.

The float fast path of the convolution and the linear layer is exact by construction (see
:func:`accumulation_dtype`); while it runs, reduced-precision float modes (TF32, bf16) are switched off
and, on CUDA, cuDNN is bypassed (its Winograd / FFT algorithms are not exact) for the duration of the
call. These are process-wide torch settings, restored on exit; do not change them from another thread
during a call. The float kernels are only given freshly allocated NCHW-contiguous tensors (torch 2.13's
CPU convolution miscomputes some inputs whose strides are ambiguous between NCHW and channels_last).

The requantization of every channel with ``e_c <= 0`` (a multiplier below 1: all convolution, linear and
add-input stages) runs as one 64-bit multiply, add and arithmetic shift per element (the form of
docs/arithmetic.md 3.5); channels with ``e_c > 0`` follow the step-by-step definition with its int32
saturation. Both are tested against the native kernels.
"""

from __future__ import annotations

import contextlib
from numbers import Integral, Real

import torch
import torch.nn.functional as F

from npuq import _validate
from npuq._validate import OVERFLOW, ROUNDING, check, clamp, integer, pair

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "accumulation_dtype",
    "add",
    "avg_pool2d",
    "conv2d_accumulator",
    "dequantize",
    "global_avg_pool",
    "linear_accumulator",
    "quantize_input",
    "rdbpot",
    "requantize",
    "saturate_accumulator",
    "srdhm",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
_Q31_MIN = 2**30  # the smallest non-zero multiplier mantissa
_FLOAT32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
_FLOAT64_EXACT = 2**53

# --------------------------------------------------------------------------------------------------
# argument checks: the scalars through npuq._validate (the same words as npuq.ops), the tensors here
# --------------------------------------------------------------------------------------------------


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0].tolist())


def _range_error(x: torch.Tensor, name: str, lo: int, hi: int):
    bad = (x < lo) | (x > hi)
    if x.dtype.is_floating_point:
        bad |= x != torch.round(x)  # NaN compares unequal: caught too
    i = _first_index(bad)
    v = x[i].item()
    what = "is not an integer in" if x.dtype.is_floating_point else "is outside"
    return ValueError(f"{name}{list(i)} = {v!r} {what} [{lo}, {hi}]")


def _int_tensor(x, name: str, lo: int, hi: int, *, ndim: int | None = None) -> torch.Tensor:
    """A torch tensor of integers (integer dtype, or float holding integers) as int64, range-checked."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_quantized:
        raise TypeError(f"{name} is a quantized torch tensor; pass its int_repr()")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold integers (an integer or floating dtype), got dtype {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    x = x.detach()
    if x.numel() == 0:
        return x.to(torch.int64)
    if x.dtype.is_floating_point:
        lo_v, hi_v = torch.aminmax(x)
        if not (lo <= lo_v.item() and hi_v.item() <= hi) or bool((x != torch.round(x)).any()):
            raise _range_error(x, name, lo, hi)
        return x.to(torch.int64)
    info = torch.iinfo(x.dtype)
    if info.min < lo or info.max > hi:
        lo_v, hi_v = torch.aminmax(x)
        if not (lo <= lo_v.item() and hi_v.item() <= hi):
            raise _range_error(x, name, lo, hi)
    return x.to(torch.int64)


def _param(v, name: str, lo: int, hi: int) -> torch.Tensor:
    """A per-layer int (0-d) or per-channel (1-D) int64 CPU tensor, range-checked."""
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int or a 1-D integer array, got bool")
    if isinstance(v, Integral):
        return torch.tensor(integer(v, name, lo, hi), dtype=torch.int64)
    if isinstance(v, torch.Tensor):
        t = v.detach()
    else:
        try:
            t = torch.as_tensor(v)
        except (TypeError, ValueError, RuntimeError) as ex:
            raise TypeError(f"{name} must be an int or a 1-D integer array, got {type(v).__name__}") from ex
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.is_complex():
        raise TypeError(f"{name} must be an int or an integer array, got dtype {t.dtype}")
    if t.dim() > 1:
        raise ValueError(f"{name} must be an int or a 1-D array (one value per channel), got shape {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.int64)
    bad = (t < lo) | (t > hi)
    if bool(bad.any()):
        i = _first_index(bad) if t.dim() else ()
        raise ValueError(f"{name}{list(i) if i else ''} = {int(t[i])} is outside [{lo}, {hi}]")
    return t


def _multiplier(v, name: str) -> torch.Tensor:
    t = _param(v, name, 0, INT32_MAX)
    bad = (t != 0) & (t < _Q31_MIN)
    if bool(bad.any()):
        i = _first_index(bad) if t.dim() else ()
        raise ValueError(
            f"{name}{list(i) if i else ''} = {int(t[i])} is not a Q31 mantissa: it must be 0 or in "
            "[2**30, 2**31 - 1] (build it with npuq.quantize_multiplier)"
        )
    return t


def _check_length(t: torch.Tensor, name: str, shape: tuple[int, ...], axis: int | None) -> None:
    if t.dim() == 0:
        return
    if axis is None:
        raise ValueError(
            f"{name} is per-channel (shape {tuple(t.shape)}) but channel_axis is out of range for acc of shape {shape}"
        )
    if t.shape[0] != shape[axis]:
        raise ValueError(
            f"{name} must be an int or have shape ({shape[axis]},) (one per channel along axis {axis} of "
            f"shape {shape}), got {tuple(t.shape)}"
        )


def _along_axis(t: torch.Tensor, ndim: int, axis: int | None, device) -> torch.Tensor:
    """A 0-d parameter as is, a 1-D one reshaped to broadcast along ``axis`` of an ``ndim``-D tensor."""
    if t.dim() == 1:
        view = [1] * ndim
        view[axis] = t.shape[0]
        t = t.reshape(view)
    return t.to(device)


def _channel_axis(channel_axis, ndim: int) -> int | None:
    """The normalized channel axis, or None when ``acc`` has no such axis (then only per-layer
    parameters are accepted)."""
    axis = integer(channel_axis, "channel_axis")
    if not -ndim <= axis < ndim:
        return None
    return axis % ndim


# --------------------------------------------------------------------------------------------------
# section 3: the primitives and the requantization
# --------------------------------------------------------------------------------------------------


def _pow2(n: torch.Tensor) -> torch.Tensor:
    """2^n as int64 for an int64 tensor 0 <= n <= 62."""
    return torch.bitwise_left_shift(torch.ones_like(n), n)


def _srdhm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # |a * b| <= 2^62 for int32 operands, and adding the nudge (|nudge| <= 2^30) stays below 2^63
    p = a * b
    nudge = torch.where(p >= 0, 2**30, 1 - 2**30)
    v = p + nudge
    # trunc(v / 2^31) with shifts: an arithmetic shift floors, so bias negative values by 2^31 - 1 first
    q = (v + (torch.bitwise_right_shift(v, 63) & (2**31 - 1))) >> 31
    return torch.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def _rdbpot(h: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """h / 2^n rounded to nearest, ties away from zero, for |h| < 2^62 and int64 n >= 0.

    For n >= 1, rdbpot(h, n) = floor((h + 2^(n-1) - [h < 0]) / 2^n): this is the gemmlowp form
    floor(h / 2^n) + [h mod 2^n > 2^(n-1) - 1 + [h < 0]] written as one floor. For n >= 63,
    |h / 2^n| < 1/2, so the result is 0; below that the shift count stays <= 62 and h + 2^61 < 2^63.
    """
    nn = torch.clamp(n, max=62)
    half = torch.bitwise_right_shift(_pow2(nn), 1)  # 2^(n-1), and 0 for n = 0
    neg = ((h < 0) & (nn > 0)).to(torch.int64)
    r = torch.bitwise_right_shift(h + half - neg, nn)
    return torch.where(n >= 63, 0, r)


def _requantize_raw(acc: torch.Tensor, m0: torch.Tensor, e_c: torch.Tensor, rounding: str) -> torch.Tensor:
    """The value r of sections 3.1 / 3.2 (before the output stage) as int64 in int32 range.

    acc: int64 holding int32 values; m0: 0 or [2^30, 2^31 - 1]; e_c in [-46, 30]; all broadcastable.
    """
    if rounding == "double":
        left = torch.clamp(e_c, min=0)
        right = torch.clamp(-e_c, min=0)
        # |acc| * 2^30 <= 2^61: exact before saturating to int32
        a = torch.clamp(acc * _pow2(left), INT32_MIN, INT32_MAX)
        return _rdbpot(_srdhm(a, m0), right)
    # single rounding: t = 31 - e_c in [1, 77]; |acc * m0| < 2^62
    t = 31 - e_c
    tt = torch.clamp(t, max=62)
    p = acc * m0
    # for t <= 62: p + 2^(t-1) < 2^62 + 2^61, exact, and the arithmetic shift is the floor.
    # for t >= 63: 0 <= p + 2^(t-1) < 2^t, so the floor is 0.
    r = torch.bitwise_right_shift(p + torch.bitwise_right_shift(_pow2(tt), 1), tt)
    r = torch.where(t >= 63, 0, r)
    return torch.clamp(r, INT32_MIN, INT32_MAX)


def _fused_constants(m0: torch.Tensor, n: torch.Tensor, rounding: str):
    """Per-channel constants of the one-shift form of docs/arithmetic.md 3.5, for e_c = -n <= 0.

    Both modes become ``r = (p + offset - (2^31 if p < 0 else 0) * neg) >> shift`` with ``p = acc * m``:

    * single: ``shift = 31 + n``, ``offset = 2^(30 + n)``, ``neg = 0``.
    * double: SRDHM(acc, M0) = floor((p + 2^30) / 2^31) for M0 >= 0 (the nudge 1 - 2^30 of negative
      products turns the truncation into that floor), and RDBPOT(h, n) = floor((h + 2^(n-1) - [h < 0]) / 2^n)
      for n >= 1; the two floors merge into one: ``shift = 31 + n``, ``offset = 2^30 + 2^(30 + n)``,
      ``neg = 1`` for n >= 1 ([h < 0] may be read as [p < 0]: they differ only where h = 0, and there both
      offsets give 0); for n = 0 it is SRDHM alone: ``offset = 2^30``, ``neg = 0``.

    For n >= 32 the result is 0 in both modes (single: shift >= 63 > log2 |p| + 1; double: |h| <= 2^31 - 1
    because M0 >= 0, and |h| / 2^32 < 1/2), so those channels get m = 0 and n is capped at 31: every shift
    is <= 62 and |p + offset| < 2^62 + 2^61 + 2^30 < 2^63.
    Returns (m, shift, offset, negative_correction) with the correction ``2^31 * neg``.
    """
    dead = n >= 32
    m = torch.where(dead, 0, m0)
    n = torch.clamp(n, max=31)
    shift = n + 31
    if rounding == "single":
        offset = _pow2(n + 30)
        correction = torch.zeros_like(n)
    else:
        offset = torch.where(n >= 1, _pow2(n + 30), 0) + 2**30
        correction = torch.where(n >= 1, 2**31, 0)
    return m, shift, offset, correction


def _requantize_fused(acc: torch.Tensor, consts, rounding: str) -> torch.Tensor:
    """r of section 3 for e_c <= 0 from :func:`_fused_constants` (already shaped and on acc's device)."""
    m, shift, offset, correction = consts
    p = acc * m  # a new tensor: the steps below work in place
    if rounding == "double":
        p -= torch.bitwise_right_shift(p, 63).bitwise_and_(correction)  # -2^31 where p < 0 (and n >= 1)
    p += offset
    p.bitwise_right_shift_(shift)  # arithmetic shift: the floor
    return p


def _requantize_value(acc: torch.Tensor, m0: torch.Tensor, e_c: torch.Tensor, rounding: str, axis: int | None):
    """r of sections 3.1 / 3.2 for int64 ``acc`` (int32 values), CPU parameters ``m0`` and ``e_c`` (0-d or
    per channel along ``axis``). Exponents e_c <= 0 (multipliers < 1: every conv / fc / add input)
    take the fused path; otherwise the step-by-step definition (with the int32 saturations)."""
    nd, dev = acc.dim(), acc.device
    if bool((e_c > 0).any()):
        return _requantize_raw(acc, _along_axis(m0, nd, axis, dev), _along_axis(e_c, nd, axis, dev), rounding)
    m0, n = torch.broadcast_tensors(m0, -e_c)
    consts = tuple(_along_axis(c, nd, axis, dev) for c in _fused_constants(m0, n, rounding))
    return _requantize_fused(acc, consts, rounding)


def srdhm(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """Saturating rounding doubling high multiply (docs/arithmetic.md 3.1), elementwise with broadcasting.

    ``a``, ``b``: int32 values (any integer dtype, ``b`` may be an int). Returns int64:
    ``trunc((a * b + nudge) / 2^31)`` with ``nudge = 2^30`` if ``a * b >= 0`` else ``1 - 2^30``, and
    ``2^31 - 1`` for ``a == b == -2^31``.
    """
    a = _int_tensor(a, "a", INT32_MIN, INT32_MAX)
    if isinstance(b, torch.Tensor):
        b = _int_tensor(b, "b", INT32_MIN, INT32_MAX).to(a.device)
    else:
        b = torch.tensor(integer(b, "b", INT32_MIN, INT32_MAX), dtype=torch.int64, device=a.device)
    return _srdhm(a, b)


def rdbpot(h: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Rounding divide by a power of two, ``h / 2^n`` rounded to nearest with ties away from zero
    (docs/arithmetic.md 3.1), elementwise with broadcasting.

    ``h``: integers with ``|h| < 2^62`` (int32 values in the specification); ``n``: an int or an integer
    tensor, ``n >= 0`` (any size: the result is 0 once ``|h / 2^n| < 1/2``). Returns int64.
    """
    h = _int_tensor(h, "h", -(2**62) + 1, 2**62 - 1)
    if isinstance(n, torch.Tensor):
        n = _int_tensor(n, "n", 0, torch.iinfo(torch.int64).max).to(h.device)
    else:
        # every n >= 63 gives the same result (0) as n = 63
        n = torch.tensor(min(integer(n, "n", 0), 63), dtype=torch.int64, device=h.device)
    return _rdbpot(h, n)


def requantize(
    acc: torch.Tensor,
    multiplier,
    exponent,
    channel_shift=None,
    output_zero_point: int = 0,
    act_min: int = -128,
    act_max: int = 127,
    rounding: str = "double",
    channel_axis: int = 1,
) -> torch.Tensor:
    """Requantize int32 accumulators to int8 values (docs/arithmetic.md 3, output stage 3.3).

    Args:
        acc: integer tensor of int32 values (the exact accumulator, already in int32 range, e.g. from
            :func:`saturate_accumulator`), any shape.
        multiplier: ``M0``, 0 or in [2^30, 2^31 - 1]: an int or a length-C array/tensor.
        exponent: ``e`` in [-31, 30]: an int or a length-C array/tensor.
        channel_shift: ``None`` (all 0) or ``s_c`` in [0, 15] (WESS): an int or a length-C array/tensor.
            The effective exponent is ``e_c = e - s_c``.
        output_zero_point: int in [-128, 127].
        act_min, act_max: the output clamp, ``-128 <= act_min <= act_max <= 127``.
        rounding: ``"double"`` (default, TFLite's) or ``"single"``.
        channel_axis: the axis of ``acc`` the per-channel arrays run along (1: NCHW and (N, C)).

    Returns:
        int64 tensor of ``acc``'s shape with values in [act_min, act_max].
    """
    acc = _int_tensor(acc, "acc", INT32_MIN, INT32_MAX)
    rounding = check(rounding, "rounding", ROUNDING)
    zp = _validate.zero_point(output_zero_point, "output_zero_point")
    lo, hi = clamp(act_min, act_max)
    axis = _channel_axis(channel_axis, acc.dim())
    shape = tuple(acc.shape)
    m0 = _multiplier(multiplier, "multiplier")
    e = _param(exponent, "exponent", -31, 30)
    _check_length(m0, "multiplier", shape, axis)
    _check_length(e, "exponent", shape, axis)
    if channel_shift is not None:
        s = _param(channel_shift, "channel_shift", 0, 15)
        _check_length(s, "channel_shift", shape, axis)
        e = e - s  # e_c in [-46, 30]
    r = _requantize_value(acc, m0, e, rounding, axis)  # a new tensor
    r += zp
    return r.clamp_(lo, hi)


# --------------------------------------------------------------------------------------------------
# section 5: the overflow policy
# --------------------------------------------------------------------------------------------------


def saturate_accumulator(acc: torch.Tensor, overflow: str = "raise", op: str = "conv") -> torch.Tensor:
    """Map exact accumulators to int32 by the overflow policy (docs/arithmetic.md 5).

    ``"raise"``: ``OverflowError`` naming ``op``, the index of the first accumulator outside int32 (in
    ``acc``'s own layout, e.g. (n, c, h, w)) and its value; otherwise ``acc`` unchanged.
    ``"saturate"``: clamp to [-2^31, 2^31 - 1]. ``"wrap"``: reduce modulo 2^32 into int32.
    ``acc``: integers (any int64 value). Returns int64.
    """
    overflow = check(overflow, "overflow", OVERFLOW)
    if not isinstance(op, str):
        raise TypeError(f"op must be a str, got {type(op).__name__}")
    acc = _int_tensor(acc, "acc", torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max)
    if overflow == "saturate":
        return torch.clamp(acc, INT32_MIN, INT32_MAX)
    if overflow == "wrap":
        # two's complement: the low 32 bits, read as signed
        return torch.bitwise_and(acc, 0xFFFFFFFF).add_(2**31).bitwise_and_(0xFFFFFFFF).sub_(2**31)
    if acc.numel() == 0:
        return acc
    lo_v, hi_v = torch.aminmax(acc)
    if lo_v.item() < INT32_MIN or hi_v.item() > INT32_MAX:
        i = _first_index((acc < INT32_MIN) | (acc > INT32_MAX))
        raise OverflowError(
            f"{op}: the accumulator at output index {i} is {int(acc[i])}, outside int32 [{INT32_MIN}, "
            f"{INT32_MAX}]; pass overflow='saturate' or 'wrap' to emulate a saturating or wrapping accumulator"
        )
    return acc


# --------------------------------------------------------------------------------------------------
# section 4: convolution and linear accumulators through exact float arithmetic
# --------------------------------------------------------------------------------------------------


def _max_input_deviation(zero_point: int) -> int:
    """max |x - z_x| over int8 x."""
    return max(127 - zero_point, zero_point + 128)


def _accumulation_dtype(w: torch.Tensor, zero_point: int) -> torch.dtype:
    # every partial sum of sum_k (x_k - z_x) * w[c, k] is at most max|x - z_x| * sum_k |w[c, k]|
    per_channel = w.abs().reshape(w.shape[0], -1).sum(dim=1)
    bound = _max_input_deviation(zero_point) * int(per_channel.max()) if w.numel() else 0
    if bound < _FLOAT32_EXACT:
        return torch.float32
    if bound < _FLOAT64_EXACT:
        return torch.float64
    raise ValueError(f"the reduction is too long for exact float64 accumulation (bound {bound} >= 2^53)")


def accumulation_dtype(w_q: torch.Tensor, zero_point: int) -> torch.dtype:
    """The float dtype :func:`conv2d_accumulator` / :func:`linear_accumulator` compute in for these weights.

    With ``B = max(127 - z_x, z_x + 128) * max_c sum |w[c]|`` (a bound on every partial sum of every
    output channel, whatever the order of summation), ``torch.float32`` when ``B < 2^24`` and
    ``torch.float64`` otherwise (exact below 2^53). The choice is static: it depends on the layer, not on
    the data.
    """
    w = _int_tensor(w_q, "w_q", -127, 127)
    if w.dim() < 1:
        raise ValueError("w_q must have an output-channel axis")
    return _accumulation_dtype(w, _validate.zero_point(zero_point, "zero_point"))


def _set_attr(saved: list, obj, name: str, value) -> None:
    try:
        old = getattr(obj, name)
        setattr(obj, name, value)
    except (AttributeError, RuntimeError):  # an older torch without this knob
        return
    saved.append((obj, name, old))


@contextlib.contextmanager
def _exact_float_math(device: torch.device):
    """IEEE float32 arithmetic for convolutions and matrix products on ``device`` for the block.

    Switches off TF32 / bf16 reduced precision, NNPACK (Winograd / FFT) on CPU, and cuDNN on CUDA
    (whose Winograd / FFT algorithms round); the native CUDA kernels that remain compute plain sums.
    """
    saved: list = []
    backends = torch.backends
    try:
        if device.type == "cuda":
            _set_attr(saved, backends.cudnn, "enabled", False)
            _set_attr(saved, backends.cuda.matmul, "fp32_precision", "ieee")
        else:
            # attributes that torch creates at run time (its stubs do not declare them)
            _set_attr(saved, backends.mkldnn.conv, "fp32_precision", "ieee")  # type: ignore[attr-defined]
            _set_attr(saved, backends.mkldnn.matmul, "fp32_precision", "ieee")  # type: ignore[attr-defined]
            if torch._C._get_nnpack_enabled():
                torch._C._set_nnpack_enabled(False)
                saved.append((None, "nnpack", True))
        yield
    finally:
        for obj, name, old in reversed(saved):
            if obj is None:
                torch._C._set_nnpack_enabled(old)
            else:
                setattr(obj, name, old)


def _fresh(shape: tuple[int, ...], dtype: torch.dtype, device, fill: float | None = None) -> torch.Tensor:
    """A new tensor with the standard contiguous strides.

    The float kernels are only fed such tensors: torch 2.13's CPU convolution computes wrong sums for
    some tensors whose strides are ambiguous between NCHW and channels_last (a size-1 channel axis,
    e.g. a channels_last or permuted weight with C_in / groups = 1, combined with unequal strides),
    and a dtype conversion keeps such strides.
    """
    if fill is None:
        return torch.empty(shape, dtype=dtype, device=device, memory_format=torch.contiguous_format)
    return torch.full(shape, fill, dtype=dtype, device=device)


def _bias(bias_q, c_out: int, device) -> torch.Tensor | None:
    if bias_q is None:
        return None
    b = _int_tensor(bias_q, "bias_q", INT32_MIN, INT32_MAX)
    if tuple(b.shape) != (c_out,):
        raise ValueError(f"bias_q must have shape ({c_out},) (one per output channel), got {tuple(b.shape)}")
    return b.to(device)


def conv2d_accumulator(
    x_q: torch.Tensor,
    zero_point: int,
    w_q: torch.Tensor,
    bias_q: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """The exact convolution accumulators of docs/arithmetic.md 4: ``b[o] + sum (x - z_x) * w``.

    Args:
        x_q: (N, C_in, H, W) int8 values. zero_point: ``z_x`` in [-128, 127].
        w_q: (C_out, C_in / groups, KH, KW) weights in [-127, 127]. bias_q: (C_out,) int32 values or None.
        stride, dilation: int or (h, w). padding: int, (h, w) or (top, bottom, left, right); padded
            positions are real zero (``x - z_x = 0``) and each padding must be smaller than the dilated
            kernel extent. groups: divides C_in and C_out (depthwise: groups = C_in).

    Returns:
        int64 (N, C_out, H_out, W_out): the exact accumulators, not yet checked against int32 (see
        :func:`saturate_accumulator`).

    The sums run through ``torch.nn.functional.conv2d`` on floats holding ``x - z_x`` and ``w`` in the
    dtype of :func:`accumulation_dtype`, where every partial sum is an exactly representable integer, so
    the float result is the exact integer whatever the summation order.
    """
    x = _int_tensor(x_q, "x_q", -128, 127, ndim=4)
    w = _int_tensor(w_q, "w_q", -127, 127, ndim=4).to(x.device)
    zp = _validate.zero_point(zero_point, "zero_point")
    groups = integer(groups, "groups", 1)
    sh, sw = pair(stride, "stride", 1)
    dh, dw = pair(dilation, "dilation", 1)
    pt, pb, pl, pr = _validate.padding(padding)
    n, c_in, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    if c_out == 0 or c_in_g == 0 or kh == 0 or kw == 0:
        raise ValueError(f"w_q must not be empty, got shape {tuple(w.shape)}")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups ({groups}) must divide the input channels ({c_in}) and the output channels ({c_out})")
    if c_in_g * groups != c_in:
        raise ValueError(
            f"w_q has {c_in_g} input channels per group (shape {tuple(w.shape)}) but x_q has {c_in} channels "
            f"in {groups} groups"
        )
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if pt >= ext_h or pb >= ext_h:
        raise ValueError(
            f"padding: vertical padding ({pt}, {pb}) must be smaller than the dilated kernel height {ext_h}"
        )
    if pl >= ext_w or pr >= ext_w:
        raise ValueError(
            f"padding: horizontal padding ({pl}, {pr}) must be smaller than the dilated kernel width {ext_w}"
        )
    h_out = (h + pt + pb - ext_h) // sh + 1
    w_out = (wd + pl + pr - ext_w) // sw + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"the output would be empty ({h_out} x {w_out}): the input {h} x {wd} is smaller than the kernel"
        )
    bias = _bias(bias_q, c_out, x.device)
    dtype = _accumulation_dtype(w, zp)
    # padding is real zero: x - z_x goes into the interior of a zero tensor
    xf = _fresh((n, c_in, h + pt + pb, wd + pl + pr), dtype, x.device, 0.0)
    xf[:, :, pt : pt + h, pl : pl + wd] = x - zp
    wf = _fresh(tuple(w.shape), dtype, x.device)
    wf.copy_(w)
    with _exact_float_math(x.device):
        out = F.conv2d(xf, wf, None, (sh, sw), 0, (dh, dw), groups)
    acc = torch.round(out).to(torch.int64)
    if bias is not None:
        acc += bias.reshape(1, c_out, 1, 1)
    return acc


def linear_accumulator(
    x_q: torch.Tensor, zero_point: int, w_q: torch.Tensor, bias_q: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact fully-connected accumulators ``b[o] + sum_k (x[n, k] - z_x) * w[o, k]`` (section 4).

    ``x_q``: (N, K) int8 values; ``w_q``: (C_out, K) in [-127, 127]; ``bias_q``: (C_out,) or None.
    Returns int64 (N, C_out), computed exactly in the float dtype of :func:`accumulation_dtype`.
    """
    x = _int_tensor(x_q, "x_q", -128, 127, ndim=2)
    w = _int_tensor(w_q, "w_q", -127, 127, ndim=2).to(x.device)
    zp = _validate.zero_point(zero_point, "zero_point")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w_q has {w.shape[1]} inputs (shape {tuple(w.shape)}) but x_q has {x.shape[1]} features")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"w_q must not be empty, got shape {tuple(w.shape)}")
    bias = _bias(bias_q, w.shape[0], x.device)
    dtype = _accumulation_dtype(w, zp)
    xf = _fresh(tuple(x.shape), dtype, x.device)
    xf.copy_(x - zp)
    wf = _fresh(tuple(w.shape), dtype, x.device)
    wf.copy_(w)
    with _exact_float_math(x.device):
        out = F.linear(xf, wf)
    acc = torch.round(out).to(torch.int64)
    if bias is not None:
        acc += bias
    return acc


# --------------------------------------------------------------------------------------------------
# section 6: elementwise add
# --------------------------------------------------------------------------------------------------


def add(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_zero_point: int,
    a_multiplier: int,
    a_exponent: int,
    b_zero_point: int,
    b_multiplier: int,
    b_exponent: int,
    output_zero_point: int,
    output_multiplier: int,
    output_exponent: int,
    left_shift: int = 20,
    act_min: int = -128,
    act_max: int = 127,
    rounding: str = "double",
) -> torch.Tensor:
    """Elementwise int8 add with per-input scales (TFLite int8 Add, docs/arithmetic.md 6).

    ``a``, ``b``: int8 values of the same shape (any layout). The keywords are those of
    ``npuq.ops.add_params(a_scale, b_scale, output_scale, left_shift)`` plus the zero points and clamp:
    input exponents in [-31, 0], output exponent in [-31, 30], multipliers 0 or in [2^30, 2^31 - 1],
    ``left_shift`` in [0, 22]. Returns int64 of the same shape, in [act_min, act_max].
    """
    a = _int_tensor(a, "a", -128, 127)
    b = _int_tensor(b, "b", -128, 127)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    b = b.to(a.device)
    za = _validate.zero_point(a_zero_point, "a_zero_point")
    zb = _validate.zero_point(b_zero_point, "b_zero_point")
    zo = _validate.zero_point(output_zero_point, "output_zero_point")
    ma = _multiplier(integer(a_multiplier, "a_multiplier"), "a_multiplier")
    mb = _multiplier(integer(b_multiplier, "b_multiplier"), "b_multiplier")
    mo = _multiplier(integer(output_multiplier, "output_multiplier"), "output_multiplier")
    ea = _param(integer(a_exponent, "a_exponent"), "a_exponent", -31, 0)
    eb = _param(integer(b_exponent, "b_exponent"), "b_exponent", -31, 0)
    eo = _param(integer(output_exponent, "output_exponent"), "output_exponent", -31, 30)
    ls = integer(left_shift, "left_shift", 0, 22)
    lo, hi = clamp(act_min, act_max)
    rounding = check(rounding, "rounding", ROUNDING)
    # |a - z_a| <= 255, so (a - z_a) * 2^22 < 2^30 and |A|, |B| < 2^30: A + B fits int32
    ra = _requantize_value((a - za).mul_(1 << ls), ma, ea, rounding, None)
    rb = _requantize_value((b - zb).mul_(1 << ls), mb, eb, rounding, None)
    r = _requantize_value(ra.add_(rb), mo, eo, rounding, None)
    r += zo
    return r.clamp_(lo, hi)


# --------------------------------------------------------------------------------------------------
# section 7: average pooling
# --------------------------------------------------------------------------------------------------


def _round_div_half_away(s: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """s / count rounded to nearest, ties away from zero: trunc((s +- trunc(count / 2)) / count)."""
    half = torch.div(count, 2, rounding_mode="floor")
    num = torch.where(s > 0, s + half, s - half)
    return torch.div(num, count, rounding_mode="trunc")


def avg_pool2d(
    x: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    count_include_pad: bool = False,
    input_zero_point: int = 0,
    act_min: int = -128,
    act_max: int = 127,
) -> torch.Tensor:
    """Average pooling with TFLite's rounding (docs/arithmetic.md 7); the scale and zero point are unchanged.

    ``x``: (N, C, H, W) int8 values. ``kernel_size``, ``stride`` (None: the kernel): int or (h, w).
    ``padding``: int, (h, w) or (top, bottom, left, right), each smaller than the kernel. Without
    ``count_include_pad`` a window averages the image pixels it covers; with it, padded positions count
    and hold ``input_zero_point``. Returns int64 (N, C, H_out, W_out) in [act_min, act_max].
    """
    x = _int_tensor(x, "x", -128, 127, ndim=4)
    kh, kw = pair(kernel_size, "kernel_size", 1)
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride", 1)
    pt, pb, pl, pr = _validate.padding(padding)
    if not isinstance(count_include_pad, bool):
        raise TypeError(f"count_include_pad must be a bool, got {type(count_include_pad).__name__}")
    zp = _validate.zero_point(input_zero_point, "input_zero_point")
    lo, hi = clamp(act_min, act_max)
    if max(pt, pb) >= kh or max(pl, pr) >= kw:
        raise ValueError(f"padding {(pt, pb, pl, pr)} must be smaller than the kernel ({kh} x {kw})")
    _, _, h, w = x.shape
    h_out = (h + pt + pb - kh) // sh + 1
    w_out = (w + pl + pr - kw) // sw + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"the output would be empty ({h_out} x {w_out}): the input {h} x {w} is smaller than the kernel"
        )
    # window sums of at most kh * kw values of magnitude <= 128: exact in float32 below 2^24
    dtype = torch.float32 if kh * kw * 128 < _FLOAT32_EXACT else torch.float64
    padded = (x.shape[0], x.shape[1], h + pt + pb, w + pl + pr)
    xf = _fresh(padded, dtype, x.device, float(zp) if count_include_pad else 0.0)
    xf[:, :, pt : pt + h, pl : pl + w] = x
    sums = F.avg_pool2d(xf, (kh, kw), (sh, sw), 0, divisor_override=1)
    sums = torch.round(sums).to(torch.int64)
    if count_include_pad:
        count = torch.tensor(kh * kw, dtype=torch.int64, device=x.device)
    else:
        inside = _fresh((1, 1) + padded[2:], dtype, x.device, 0.0)
        inside[:, :, pt : pt + h, pl : pl + w] = 1.0
        count = torch.round(F.avg_pool2d(inside, (kh, kw), (sh, sw), 0, divisor_override=1)).to(torch.int64)
    return torch.clamp(_round_div_half_away(sums, count), lo, hi)


def global_avg_pool(x: torch.Tensor, act_min: int = -128, act_max: int = 127) -> torch.Tensor:
    """Average over the whole image (``avg_pool2d`` with the kernel equal to the image, count = H * W).

    ``x``: (N, C, H, W) int8 values. Returns int64 (N, C, 1, 1) in [act_min, act_max].
    """
    x = _int_tensor(x, "x", -128, 127, ndim=4)
    lo, hi = clamp(act_min, act_max)
    _, _, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"x has an empty image: shape {tuple(x.shape)}")
    s = x.sum(dim=(2, 3), keepdim=True)
    count = torch.tensor(h * w, dtype=torch.int64, device=x.device)
    return torch.clamp(_round_div_half_away(s, count), lo, hi)


# --------------------------------------------------------------------------------------------------
# float <-> int8 at the boundary of the integer graph
# --------------------------------------------------------------------------------------------------


def _float32_scale(scale, device) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or not scale.dtype.is_floating_point:
            raise ValueError(
                f"scale must be a float or a one-element float tensor, got {tuple(scale.shape)} {scale.dtype}"
            )
        s = scale.detach().reshape(()).to(device=device, dtype=torch.float32)
    elif isinstance(scale, Real) and not isinstance(scale, bool):
        s = torch.tensor(float(scale), dtype=torch.float32, device=device)
    else:
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    v = float(s)
    if not (v > 0.0 and v != float("inf")):
        raise ValueError(f"scale must be finite and > 0 in float32, got {v!r} (from {scale!r})")
    return s


def quantize_input(x_float: torch.Tensor, scale, zero_point: int) -> torch.Tensor:
    """Quantize a float tensor to int8 values: how real inputs (images) enter the NPU.

    The exact computation, in this order:

    1. ``x32 = x_float`` converted to float32 (round to nearest even; exact from float16 / bfloat16).
    2. ``s32 = scale`` converted to float32 (round to nearest even); it must be finite and > 0.
    3. ``v = x32 / s32``: one IEEE-754 float32 division, correctly rounded (round to nearest even). It is
       a true division, never a multiplication by the reciprocal ``1 / s32``, which rounds differently.
    4. ``r = round_half_away_from_zero(v)``: ``trunc(v)`` plus ``sign(v)`` where ``|v - trunc(v)| >= 0.5``
       (the fraction ``v - trunc(v)`` is exact in float32, so this is the exact rounding of ``v``).
    5. ``q = clamp(r + zero_point, -128, 127)`` on the exact integers (``+-inf`` saturate to 127 / -128).

    In numpy: ``v = np.float32(x) / np.float32(scale)`` followed by the same integer steps.
    ``x_float``: a floating tensor without NaN (ValueError). ``zero_point``: int in [-128, 127].
    Returns int64 of ``x_float``'s shape.
    """
    if not isinstance(x_float, torch.Tensor):
        raise TypeError(f"x_float must be a torch.Tensor, got {type(x_float).__name__}")
    if not x_float.dtype.is_floating_point:
        raise TypeError(f"x_float must have a floating dtype, got {x_float.dtype}")
    zp = _validate.zero_point(zero_point, "zero_point")
    x32 = x_float.detach().to(torch.float32)
    if bool(torch.isnan(x32).any()):
        raise ValueError("x_float contains NaN")
    s32 = _float32_scale(scale, x32.device)
    v = torch.div(x32, s32)  # a 0-d tensor on the device: elementwise IEEE division
    t = torch.trunc(v)
    frac = v - t
    r = t + (frac >= 0.5).to(torch.float32) - (frac <= -0.5).to(torch.float32)
    # r is integral or +-inf; clamping before the conversion keeps it in range
    r = torch.clamp(r, -256.0, 256.0).to(torch.int64)
    return torch.clamp(r + zp, -128, 127)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """The real value of quantized integers: float32 ``(q - zero_point) * scale``.

    ``q - zero_point`` is computed exactly in int64 and converted to float32 (exact for int8 values);
    ``scale`` (a float or a float tensor broadcastable to ``q``) is converted to float32 and multiplied
    once (IEEE float32 rounding). ``zero_point``: an int or an integer tensor broadcastable to ``q``.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    qi = _int_tensor(q, "q", -(2**31), 2**31 - 1)
    if isinstance(zero_point, torch.Tensor):
        if zero_point.dtype.is_floating_point or zero_point.dtype == torch.bool:
            raise TypeError(f"zero_point must be an int or an integer tensor, got dtype {zero_point.dtype}")
        zp = zero_point.detach().to(device=qi.device, dtype=torch.int64)
    else:
        zp = _validate.zero_point(zero_point, "zero_point")
    if isinstance(scale, torch.Tensor):
        if not scale.dtype.is_floating_point:
            raise TypeError(f"scale must be a float or a floating tensor, got dtype {scale.dtype}")
        s = scale.detach().to(device=qi.device, dtype=torch.float32)
    elif isinstance(scale, Real) and not isinstance(scale, bool):
        s = torch.tensor(float(scale), dtype=torch.float32, device=qi.device)
    else:
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    return (qi - zp).to(torch.float32) * s
