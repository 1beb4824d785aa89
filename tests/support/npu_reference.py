"""Independent numpy interpreter of an NPU program, op by op.

Built only on ``tests/support/reference_numpy.py`` (written from ``docs/arithmetic.md``): it imports neither
``npuq`` (no ``npuq.ops``, no ``npuq._C``) nor torch. A program is read through its documented
attributes only (``program.input``, ``program.ops``, ``program.output``, ``program.rounding``,
``program.overflow``; each op's ``name``, ``kind``, ``inputs``, ``attrs`` and ``tensors``), so any
object with that shape can be interpreted. Every intermediate value is an exact integer computed in
int64; :func:`run_program` returns them all by name (int8 arrays, NHWC or (N, K)).

Speed: ``reference_numpy.conv2d_acc`` (im2col + an int64 einsum over the groups) is fast enough as it is:
the whole of torchvision's mobilenet_v2 at 224x224 takes about 0.8 s for one image on the 2-core
development machine (the slowest conv, the first depthwise one at 112x112, about 0.05 s).
"""

from __future__ import annotations

import numpy as np

from support import reference_numpy as R

__all__ = ["quantize_input", "max_pool2d", "run_op", "run_program"]


def quantize_input(x, scale: float, zero_point: int) -> np.ndarray:
    """docs/quantization.md 5: ``clamp(round_half_away(float32(x) / float32(scale)) + zero_point)``.

    The division is one IEEE float32 division (numpy's float32 ``/``). Its quotient ``v`` is converted
    to float64 (exactly) and rounded there as ``sign(v) * floor(|v| + 1/2)``: the float64 sum may round,
    but a float32 ``|v|`` lies at least one float32 spacing below ``m - 1/2`` for the integer ``m`` above
    it, and that spacing is far larger than float64's rounding error at that magnitude, so the floor is
    the exact one. Returns int64 values of ``x``'s shape.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"float input expected, got {x.dtype}")
    v = x.astype(np.float32) / np.float32(scale)
    if np.isnan(v).any():
        raise ValueError("NaN in the input")
    v64 = v.astype(np.float64)
    r = np.sign(v64) * np.floor(np.abs(v64) + 0.5)
    r = np.clip(r, -1000.0, 1000.0).astype(np.int64)  # +-inf (and huge values) saturate
    return np.clip(r + int(zero_point), -128, 127)


def max_pool2d(x, kernel, stride, padding, ceil_mode: bool = False) -> np.ndarray:
    """Max of each window's image values; padded positions are excluded (they never win).

    Written as an explicit loop over the kernel taps with a mask of the positions inside the image,
    so it shares nothing with the emulator's sliding-window version (nor with the per-window
    ``reference_numpy.max_pool2d``). With ``ceil_mode`` (arithmetic.md 14) the last window may run past
    the bottom / right padding: the mask drops those taps like padded ones.
    """
    x = np.asarray(x, dtype=np.int64)
    n, h, w, c = x.shape
    kh, kw = kernel
    sh, sw = stride
    pt, pb, pl, pr = padding
    ho = R.max_pool2d_output_size(h, kh, sh, pt, pb, ceil_mode)
    wo = R.max_pool2d_output_size(w, kw, sw, pl, pr, ceil_mode)
    assert ho >= 1 and wo >= 1
    lowest = np.iinfo(np.int64).min
    best = np.full((n, ho, wo, c), lowest, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            rows = np.arange(ho) * sh + i - pt
            cols = np.arange(wo) * sw + j - pl
            inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
            vals = x[:, np.clip(rows, 0, h - 1)][:, :, np.clip(cols, 0, w - 1)]
            best = np.where(inside[None, :, :, None], np.maximum(best, vals), best)
    assert (best != lowest).all(), "a max-pool window holds no image value"
    return best


def _per_layer_or_channel(t: np.ndarray):
    t = np.asarray(t, dtype=np.int64).reshape(-1)
    return int(t[0]) if t.shape[0] == 1 else t


def _layer(op, x: np.ndarray, rounding: str, overflow: str) -> np.ndarray:
    a, t = op.attrs, op.tensors
    weight = np.asarray(t["weight"], dtype=np.int64)
    bias = np.asarray(t["bias"], dtype=np.int64)
    if op.kind == "conv2d":
        acc = R.conv2d_acc(
            x,
            weight,
            bias,
            input_zero_point=a["input_zero_point"],
            stride=tuple(a["stride"]),
            padding=tuple(a["padding"]),
            dilation=tuple(a["dilation"]),
            groups=a["groups"],
        )
    else:
        acc = R.fully_connected_acc(x, weight, bias, input_zero_point=a["input_zero_point"])
    acc = R.apply_overflow(acc, overflow, op.name)
    if a.get("tflite_rescale"):
        return R.tflite_float_rescale(acc, a["tflite_rescale"], a["output_zero_point"], a["act_min"], a["act_max"])
    return R.requantize(
        acc,
        _per_layer_or_channel(t["multiplier"]),
        _per_layer_or_channel(t["exponent"]),
        np.asarray(t["shift"], dtype=np.int64),
        a["output_zero_point"],
        a["act_min"],
        a["act_max"],
        rounding,
    ).astype(np.int64)


def run_op(op, args: list[np.ndarray], rounding: str, overflow: str) -> np.ndarray:
    """One op on int64 inputs (NHWC / (N, K)); returns int64 values in [-128, 127]."""
    k, a = op.kind, op.attrs
    if k in ("conv2d", "fully_connected"):
        return _layer(op, args[0], rounding, overflow)
    if k == "add":
        y = R.add(
            args[0],
            args[1],
            a_zero_point=a["a_zero_point"],
            a_multiplier=a["a_multiplier"],
            a_exponent=a["a_exponent"],
            b_zero_point=a["b_zero_point"],
            b_multiplier=a["b_multiplier"],
            b_exponent=a["b_exponent"],
            output_zero_point=a["output_zero_point"],
            output_multiplier=a["output_multiplier"],
            output_exponent=a["output_exponent"],
            left_shift=a["left_shift"],
            act_min=a["act_min"],
            act_max=a["act_max"],
            rounding=rounding,
        )
    elif k == "avg_pool2d":
        y = R.avg_pool2d(
            args[0],
            tuple(a["kernel"]),
            stride=tuple(a["stride"]),
            padding=tuple(a["padding"]),
            count_include_pad=a["count_include_pad"],
            input_zero_point=a["input_zero_point"],
            act_min=a["act_min"],
            act_max=a["act_max"],
        )
    elif k == "global_avg_pool":
        y = R.global_avg_pool(args[0], act_min=a["act_min"], act_max=a["act_max"])
    elif k == "max_pool2d":
        ceil_mode = bool(a.get("ceil_mode", False))  # format 1 has no ceil_mode: false
        y = max_pool2d(args[0], tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), ceil_mode)
    elif k == "flatten":
        y = args[0].reshape(args[0].shape[0], -1)  # NHWC order
    elif k in _FORMAT2_KINDS:
        y = _FORMAT2_KINDS[k](op, args, rounding)
    else:
        raise ValueError(f"op '{op.name}': unknown kind {k!r}")
    return np.asarray(y, dtype=np.int64)


# Format-2 kinds (program.md 3, rows marked (2)); each reads its attributes by their documented names.
# None of them accumulates past int32 (arithmetic.md 10, 11, 13, 15), so the overflow policy never applies.


def _lut(op, args, rounding):
    return R.lut(args[0], np.asarray(op.tensors["table"], dtype=np.int64).reshape(-1))


def _mul(op, args, rounding):
    a = op.attrs
    return R.mul(
        args[0],
        args[1],
        a_zero_point=a["a_zero_point"],
        b_zero_point=a["b_zero_point"],
        output_zero_point=a["output_zero_point"],
        multiplier=a["multiplier"],
        exponent=a["exponent"],
        act_min=a["act_min"],
        act_max=a["act_max"],
        rounding=rounding,
    )


def _concat(op, args, rounding):
    a = op.attrs
    return R.concat(
        args,
        zero_points=list(a["zero_points"]),
        multipliers=list(a["multipliers"]),
        exponents=list(a["exponents"]),
        output_zero_point=a["output_zero_point"],
        rounding=rounding,
    )


def _mean(op, args, rounding):
    a = op.attrs
    return R.mean(
        args[0],
        input_zero_point=a["input_zero_point"],
        output_zero_point=a["output_zero_point"],
        multiplier=a["multiplier"],
        exponent=a["exponent"],
        act_min=a["act_min"],
        act_max=a["act_max"],
        tflite_rounding=bool(a["tflite_rounding"]),
        rounding=rounding,
    )


def _upsample(op, args, rounding):
    a = op.attrs
    return R.upsample(args[0], tuple(a["scale"]), mode=a["mode"], zero_point=a["zero_point"])


_FORMAT2_KINDS = {
    "lut": _lut,
    "mul": _mul,
    "concat": _concat,
    "channel_shuffle": lambda op, args, rounding: R.channel_shuffle(args[0], op.attrs["groups"]),
    "slice": lambda op, args, rounding: R.channel_slice(args[0], op.attrs["begin"], op.attrs["end"]),
    "pad": lambda op, args, rounding: R.pad(args[0], tuple(op.attrs["padding"]), op.attrs["value"]),
    "upsample": _upsample,
    "mean": _mean,
}


def run_program(program, x, *, layout: str = "NCHW") -> dict[str, np.ndarray]:
    """Interpret ``program`` on ``x``; return ``{name: int8 values}`` for the input and every op.

    ``x``: int8 quantized input (N, H, W, C) / (N, K), or float images (``layout`` NCHW or NHWC for image
    inputs), quantized with :func:`quantize_input`.
    """
    spec = program.input
    x = np.asarray(x)
    if x.dtype == np.int8:
        q = x.astype(np.int64)
    else:
        q = quantize_input(x, spec.scale, spec.zero_point)
        if q.ndim == 4 and layout == "NCHW":
            q = q.transpose(0, 2, 3, 1)
    want = tuple(spec.shape)
    assert q.shape[1:] == want, f"input shape {q.shape} vs the program's (N, {want})"
    env = {spec.name: np.ascontiguousarray(q)}
    for op in program.ops:
        y = run_op(op, [env[s] for s in op.inputs], program.rounding, program.overflow)
        assert y.min() >= -128 and y.max() <= 127, f"op '{op.name}' left the int8 range"
        env[op.name] = y
    return {k: v.astype(np.int8) for k, v in env.items()}
