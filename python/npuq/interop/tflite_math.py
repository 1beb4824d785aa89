"""TFLite's int8 arithmetic as LiteRT's reference kernels compute it, for importing TFLite ops bit-exactly.

Every formula here was measured against ``ai-edge-litert`` 2.3.0 run with ``OpResolverType.BUILTIN_REF``
(one-op int8 models fed random and exhaustive inputs; ``tests/interop/test_tflite_math.py``). The scales of a
TFLite file are float32; functions take them as Python floats and convert them to float32 first, so
``0.1`` means ``float32(0.1)`` exactly as the flatbuffer would hold it.

Notation used in the docstrings:

* ``f32(...)``: the expression evaluated in IEEE float32, each operation rounded to float32;
  ``f64(...)``: in double.
* ``round_away(v)``: C's ``std::round``, nearest integer with ties away from zero.
* ``QM(real)``: TFLite's ``QuantizeMultiplier`` of a double: ``(M0, e)`` with ``real ~= M0 * 2**(e - 31)``,
  ``M0 = round_away(frexp(real).mantissa * 2**31)`` in ``[2**30, 2**31)``; identical to
  :func:`npuq.quantize_multiplier` (docs/arithmetic.md 2) for ``2**-32 <= real < 2**30``.
* ``MBQM(x, M0, e)``: TFLite's ``MultiplyByQuantizedMultiplier`` on int32 with double rounding:
  ``RDBPOT(SRDHM(x * 2**max(e, 0), M0), max(-e, 0))``, npuq's ``rounding="double"``
  (docs/arithmetic.md 3.1).

What is not npuq's own arithmetic is said where it occurs: FULLY_CONNECTED rescales its accumulator in
double precision (:func:`fc_rescale`; npuq runs it as ``npuq.ops.fully_connected_tflite``), MEAN divides
by the element count inside a non-normalized multiplier (npuq's ``mean`` with ``tflite_rounding``,
docs/arithmetic.md 15), MUL, RELU and LEAKY_RELU build their multipliers from float32 products, and
LOGISTIC / TANH / ELU / GELU tables are built in float32 with the C library's float functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import warnings
from collections.abc import Callable

import numpy as np

from npuq.fixedpoint import MultiplierFlushedWarning
from npuq.fixedpoint import quantize_multiplier as _npuq_quantize_multiplier

__all__ = [
    "ACTIVATION_OPCODES",
    "activation_range",
    "activation_table",
    "add_params",
    "concat_params",
    "conv_params",
    "depthwise_conv_params",
    "fc_rescale",
    "mul_params",
    "multiply_by_quantized_multiplier",
    "pad_value",
    "pool_params",
    "quantize_multiplier",
    "resize_nearest_indices",
    "resize_nearest_as_upsample",
    "round_away",
    "same_padding",
]

_F32 = np.float32
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT16_MIN, _INT16_MAX = -(2**15), 2**15 - 1
_FUSED = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1")


# ------------------------------------------------------------------------------------------ checks


def _scale(v, name: str) -> np.float32:
    """A positive finite scale as the float32 a TFLite file stores."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    s = _F32(v)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"{name} must be finite and > 0 (as float32), got {v!r}")
    return s


def _zero_point(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not -128 <= int(v) <= 127:
        raise ValueError(f"{name} must be in [-128, 127] (int8), got {v}")
    return int(v)


def _fused(v) -> str:
    if v is None:
        return "NONE"
    if not isinstance(v, str) or v.upper() not in _FUSED:
        raise ValueError(f"fused_activation_function must be one of {', '.join(_FUSED)}, got {v!r}")
    return v.upper()


# ------------------------------------------------------------------------------- integer primitives


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier(double)``: ``(M0, e)`` with ``real ~= M0 * 2**(e - 31)``.

    ``q, e = frexp(real)``, ``M0 = round_away(q * 2**31)`` (``2**31`` becomes ``2**30`` with ``e + 1``);
    ``e < -31`` flushes to ``(0, 0)``. 0 gives ``(0, 0)`` as in TFLite. Equal to
    :func:`npuq.quantize_multiplier` on ``(0, 2**30)``; ``real >= 2**30`` and negative values raise.
    """
    value = float(real)
    if value == 0.0:
        return 0, 0
    with warnings.catch_warnings():
        # a flushed multiplier is TFLite's behaviour too (every output is the zero point)
        warnings.simplefilter("ignore", MultiplierFlushedWarning)
        return _npuq_quantize_multiplier(value)


def _srdhm(a: np.ndarray, b: int, bits: int = 32) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int``bits`` (32 or 16): ``a * b / 2**(bits-1)``
    rounded to nearest with ties toward +infinity; ``min * min`` saturates to ``max``."""
    a = np.asarray(a, dtype=np.int64)
    lo = -(2 ** (bits - 1))
    p = a * np.int64(b)
    nudge = np.where(p >= 0, 1 << (bits - 2), 1 - (1 << (bits - 2)))
    v = p + nudge
    q = np.where(v >= 0, v >> (bits - 1), -((-v) >> (bits - 1)))  # C division: toward zero
    return np.where((a == lo) & (b == lo), -lo - 1, q)


def _rdbpot(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: ``x / 2**exponent`` rounded to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    if exponent == 0:
        return x
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def multiply_by_quantized_multiplier(x, multiplier: int, shift: int) -> np.ndarray:
    """TFLite's int32 ``MultiplyByQuantizedMultiplier`` (double rounding), element-wise, as int64 values:
    ``RDBPOT(SRDHM(x * 2**max(shift, 0), M0), max(-shift, 0))``. ``x * 2**shift`` must fit int32 (TFLite
    wraps there; no op of this module gets near it)."""
    x = np.asarray(x, dtype=np.int64)
    left, right = max(shift, 0), max(-shift, 0)
    return _rdbpot(_srdhm(x * (1 << left), multiplier), right)


def activation_range(fused_activation_function, output_scale, output_zero_point) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized`` for an int8 output: ``(act_min, act_max)``.

    With ``q(v) = z_out + int(round_away(f32(v / s_out)))``: NONE ``[-128, 127]``; RELU
    ``[max(-128, q(0)), 127]``; RELU6 ``[max(-128, q(0)), min(127, q(6))]``; RELU_N1_TO_1
    ``[max(-128, q(-1)), min(127, q(1))]``; RELU_0_TO_1 ``[max(-128, q(0)), min(127, q(1))]``.
    """
    act = _fused(fused_activation_function)
    s = _scale(output_scale, "output_scale")
    z = _zero_point(output_zero_point, "output_zero_point")

    def q(v: float) -> int:
        return z + int(_round_away_f32(_F32(_F32(v) / s)))

    lo, hi = -128, 127
    if act in ("RELU", "RELU6", "RELU_0_TO_1"):
        lo = max(lo, q(0.0))
    if act == "RELU6":
        hi = min(hi, q(6.0))
    if act in ("RELU_N1_TO_1", "RELU_0_TO_1"):
        hi = min(hi, q(1.0))
    if act == "RELU_N1_TO_1":
        lo = max(lo, q(-1.0))
    return lo, hi


def round_away(v) -> np.ndarray:
    """``std::round``: nearest integer, ties away from zero, as float64 (float32 input is widened exactly).

    Computed from the exact fraction ``v - trunc(v)``, not as ``floor(v + 0.5)``: the addition rounds, and
    turns the float just below 0.5 (``0.49999997f``, ``0.49999999999999994``) into 1.
    """
    v = np.asarray(v, dtype=np.float64)
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= 0.5, np.sign(v), 0.0)


def _round_away_f32(v) -> np.ndarray:
    """``std::round`` of float32 values, as float32 (every integer result of a float32 is a float32)."""
    return round_away(np.asarray(v, dtype=np.float32)).astype(np.float32)


# ------------------------------------------------------------------------------------ LUT activations

ACTIVATION_OPCODES = (
    "ELU",
    "GELU",
    "HARD_SWISH",
    "LEAKY_RELU",
    "LOGISTIC",
    "QUANTIZE",
    "RELU",
    "RELU6",
    "RELU_0_TO_1",
    "RELU_N1_TO_1",
    "TANH",
)
_INPUTS = np.arange(-128, 128, dtype=np.int64)


@functools.cache
def _libm_float(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The C library's float32 function ``name`` (``tanhf``...), element-wise.

    LiteRT fills these tables with ``std::tanh(float)`` and friends, i.e. the C library's float
    functions; calling the same ones reproduces the last bit. Without a loadable libm the double result
    rounded to float32 is used, which can differ by an ulp (and then, rarely, by one table entry).
    """
    path = ctypes.util.find_library("m")
    fn = None
    if path is not None:
        try:
            fn = getattr(ctypes.CDLL(path), name)
            fn.restype = ctypes.c_float
            fn.argtypes = [ctypes.c_float]
        except (OSError, AttributeError):
            fn = None
    if fn is None:
        fallback = {"tanhf": math.tanh, "expf": math.exp, "expm1f": math.expm1, "erfcf": math.erfc}[name]

        def apply(v: np.ndarray) -> np.ndarray:
            return np.array([_F32(fallback(float(x))) for x in np.ravel(v)], np.float32).reshape(np.shape(v))

        return apply

    def call(v: np.ndarray) -> np.ndarray:
        return np.array([fn(float(x)) for x in np.ravel(v)], np.float32).reshape(np.shape(v))

    return call


def _lut_populate(s_in, z_in, s_out, z_out, transform) -> np.ndarray:
    """TFLite's ``LUTPopulate<int8_t>``, all in float32:

    x_f   = f32(s_in * (q - z_in))            for q in [-128, 127]
    y_f   = transform(x_f)                    (float32 in, float32 out)
    r     = round_away(f32(y_f * f32(1 / s_out)))
    T[q]  = clamp(int(f32(r + z_out)), -128, 127)
    """
    inverse = _F32(_F32(1.0) / s_out)
    with np.errstate(over="ignore", invalid="ignore"):
        x = (s_in * (_INPUTS - z_in).astype(np.float32)).astype(np.float32)
        y = transform(x).astype(np.float32)
        r = _round_away_f32((y * inverse).astype(np.float32))
        total = (r + _F32(z_out)).astype(np.float32)
    if not np.all(np.isfinite(total)):
        raise ValueError("the activation overflows float32 for these scales (LiteRT's table is undefined there)")
    return np.clip(np.clip(total, -(2.0**31), 2.0**31 - 1).astype(np.int64), -128, 127).astype(np.int8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = _libm_float("expf")((-x).astype(np.float32))
    return (_F32(1.0) / (_F32(1.0) + e).astype(np.float32)).astype(np.float32)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, _libm_float("expm1f")(x), x).astype(np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    # 0.5f * x * erfcf(x * float(-M_SQRT1_2)), left to right in float32
    t = _libm_float("erfcf")((x * _F32(-math.sqrt(0.5))).astype(np.float32))
    return ((_F32(0.5) * x).astype(np.float32) * t).astype(np.float32)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    # 0.5f * x * (1 + tanhf(k * (x + 0.044715f * x * x * x))), k = float(2/sqrt(pi) * 1/sqrt(2))
    k = _F32((2.0 / math.sqrt(math.pi)) * math.sqrt(0.5))
    cube = (((_F32(0.044715) * x).astype(np.float32) * x).astype(np.float32) * x).astype(np.float32)
    inner = (k * (x + cube).astype(np.float32)).astype(np.float32)
    t = _libm_float("tanhf")(inner)
    return ((_F32(0.5) * x).astype(np.float32) * (_F32(1.0) + t).astype(np.float32)).astype(np.float32)


def _requantize_table(z_in, z_out, multiplier, shift, lo=-128, hi=127) -> np.ndarray:
    v = multiply_by_quantized_multiplier(_INPUTS - z_in, multiplier, shift) + z_out
    return np.clip(v, lo, hi).astype(np.int8)


def _relu_table(opcode, s_in, z_in, s_out, z_out) -> np.ndarray:
    # ReluPrepare: QM(f32(s_in / s_out)); QuantizedReluX: clamp(z_out + MBQM(q - z_in), range)
    multiplier, shift = quantize_multiplier(float(_F32(s_in / s_out)))
    act = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1", "RELU_0_TO_1": "RELU_0_TO_1"}[opcode]
    lo, hi = activation_range(act, s_out, z_out)
    return _requantize_table(z_in, z_out, multiplier, shift, lo, hi)


def _leaky_relu_table(s_in, z_in, s_out, z_out, alpha) -> np.ndarray:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"LEAKY_RELU alpha must be a real number, got {type(alpha).__name__}")
    a = _F32(alpha)
    if not np.isfinite(a) or a < 0:
        raise ValueError(f"LEAKY_RELU alpha must be finite and >= 0, got {alpha!r}")
    # LeakyReluPrepare: QM(f32(f32(s_in * alpha) / s_out)) and QM(f32(s_in / s_out))
    m_alpha, e_alpha = quantize_multiplier(float(_F32(_F32(s_in * a) / s_out)))
    m_id, e_id = quantize_multiplier(float(_F32(s_in / s_out)))
    d = _INPUTS - z_in
    pos = multiply_by_quantized_multiplier(d, m_id, e_id)
    neg = multiply_by_quantized_multiplier(d, m_alpha, e_alpha)
    return np.clip(z_out + np.where(d >= 0, pos, neg), -128, 127).astype(np.int8)


def _hard_swish_table(s_in, z_in, s_out, z_out) -> np.ndarray:
    # HardSwishPrepare: float32 multipliers, quantized to Q31 and rounded down to Q15
    hires = _F32(_F32(1.0 / 128.0) * s_in)
    out_m, out_e = quantize_multiplier(float(_F32(hires / s_out)))
    if out_e > 0:
        raise ValueError(
            f"HARD_SWISH: input_scale / (128 * output_scale) = {float(hires / s_out)!r} >= 1, which TFLite refuses"
        )
    relu_m, relu_e = quantize_multiplier(float(_F32(hires / _F32(_F32(3.0) / _F32(32768.0)))))
    out_m16, relu_m16 = _q15(out_m), _q15(relu_m)

    x = (_INPUTS - z_in) * 128  # the input on the "hires" scale, |x| <= 32640
    pre_out = _srdhm(x, out_m16, 16)
    r = x
    if relu_e > 0:
        r = _saturating_left_shift16(r, relu_e - 1)
    r = _srdhm(r, relu_m16, 16)
    if relu_e > 0:
        r = _saturating_left_shift16(r, 1)
    if relu_e < 0:
        r = _rdbpot(r, -relu_e)
    r = (r + 32768) >> 1  # [-1, 1] -> [0, 1] in Q15
    # SaturatingDoublingHighMul: truncating (not rounding) high half; r >= 0, so no saturation case
    p = r * pre_out
    pre_shift = np.where(p >= 0, p >> 15, -((-p) >> 15))
    y = _rdbpot(pre_shift, -out_e) + z_out
    return np.clip(y, -128, 127).astype(np.int8)


def _q15(m32: int) -> int:
    """TFLite's ``DownScaleInt32ToInt16Multiplier``: ``(m + 2**15) >> 16``, saturated to ``2**15 - 1``."""
    if m32 >= _INT32_MAX - (1 << 15):
        return _INT16_MAX
    return (m32 + (1 << 15)) >> 16


def _saturating_left_shift16(v: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(np.asarray(v, np.int64) * (1 << amount), _INT16_MIN, _INT16_MAX)


def activation_table(
    opcode: str, input_scale, input_zero_point, output_scale, output_zero_point, **options
) -> np.ndarray:
    """The int8 op ``opcode`` as a 256-entry table: entry ``i`` is LiteRT's output for input ``i - 128``.

    Feed it to ``npuq.ops.lut`` (the table indexes by ``x + 128``). Per opcode, with ``d = q - z_in``:

    * ``RELU``, ``RELU6``, ``RELU_N1_TO_1``, ``RELU_0_TO_1``: ``(M0, e) = QM(f32(s_in / s_out))``;
      ``T = clamp(z_out + MBQM(d, M0, e), act_min, act_max)`` with :func:`activation_range` of the op.
    * ``LEAKY_RELU`` (``alpha >= 0``): ``QM(f32(f32(s_in * alpha) / s_out))`` for ``d < 0``,
      ``QM(f32(s_in / s_out))`` for ``d >= 0``; ``T = clamp(z_out + MBQM(d, ...), -128, 127)``.
    * ``QUANTIZE`` (int8 -> int8 requantization): ``QM(f64(s_in) / f64(s_out))``,
      ``T = clamp(z_out + MBQM(d, M0, e), -128, 127)``.
    * ``HARD_SWISH``: TFLite's 16-bit fixed-point algorithm. ``hires = f32(s_in / 128)``;
      ``(Mo, eo) = QM(f32(hires / s_out))`` (``eo <= 0`` or ValueError),
      ``(Mr, er) = QM(f32(hires / f32(3 / 32768)))``, both rounded to Q15 as ``(M + 2**15) >> 16``. Then
      ``h = 128 d``; ``o = SRDHM16(h, Mo16)``; ``r = SRDHM16(h << max(er - 1, 0) saturated, Mr16)``, shifted left
      one more (saturating) if ``er > 0`` or ``RDBPOT(r, -er)`` if ``er < 0``; ``r = (r + 2**15) >> 1``;
      ``T = clamp(RDBPOT(trunc(r * o / 2**15), -eo) + z_out, -128, 127)``. SRDHM16 is the 16-bit
      rounding doubling high multiply (ties toward +infinity), ``trunc`` rounds toward zero.
    * ``LOGISTIC`` (``s_out`` must be ``1/256``, as LiteRT requires), ``TANH``, ``ELU``, ``GELU``
      (``approximate=False``: ``0.5 x erfc(-x / sqrt 2)``; ``True``: the tanh form): TFLite's float32 table
      (:func:`_lut_populate`) of ``1 / (1 + expf(-x))``, ``tanhf(x)``, ``x < 0 ? expm1f(x) : x`` and the
      GELU forms, with the C library's float functions.

    Raises:
        ValueError: an opcode outside :data:`ACTIVATION_OPCODES` (named in the message), a bad option, or
            parameters that LiteRT refuses.
    """
    if not isinstance(opcode, str) or opcode.upper() not in ACTIVATION_OPCODES:
        raise ValueError(
            f"activation_table: no int8 table for opcode {opcode!r} (supported: {', '.join(ACTIVATION_OPCODES)})"
        )
    op = opcode.upper()
    s_in = _scale(input_scale, "input_scale")
    s_out = _scale(output_scale, "output_scale")
    z_in = _zero_point(input_zero_point, "input_zero_point")
    z_out = _zero_point(output_zero_point, "output_zero_point")
    allowed = {"LEAKY_RELU": {"alpha"}, "GELU": {"approximate"}}.get(op, set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"{op}: unknown option(s) {', '.join(sorted(unknown))}")
    if op in ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1"):
        return _relu_table(op, s_in, z_in, s_out, z_out)
    if op == "LEAKY_RELU":
        if "alpha" not in options:
            raise ValueError("LEAKY_RELU needs alpha")
        return _leaky_relu_table(s_in, z_in, s_out, z_out, options["alpha"])
    if op == "QUANTIZE":
        m, e = quantize_multiplier(float(s_in) / float(s_out))
        return _requantize_table(z_in, z_out, m, e)
    if op == "HARD_SWISH":
        return _hard_swish_table(s_in, z_in, s_out, z_out)
    if op == "LOGISTIC":
        if float(s_out) != 1.0 / 256:
            raise ValueError(f"LOGISTIC: LiteRT requires output_scale == 1/256 for int8, got {float(s_out)!r}")
        return _lut_populate(s_in, z_in, s_out, z_out, _sigmoid)
    if op == "TANH":
        return _lut_populate(s_in, z_in, s_out, z_out, _libm_float("tanhf"))
    if op == "ELU":
        return _lut_populate(s_in, z_in, s_out, z_out, _elu)
    approximate = options.get("approximate", False)
    if not isinstance(approximate, (bool, np.bool_)):
        raise TypeError(f"GELU approximate must be a bool, got {type(approximate).__name__}")
    return _lut_populate(s_in, z_in, s_out, z_out, _gelu_tanh if approximate else _gelu)


# --------------------------------------------------------------------------- parameter derivations


def conv_params(input_scale, weight_scales, output_scale, output_zero_point=0, fused_activation_function="NONE"):
    """npuq requantization keywords of an int8 CONV_2D (TFLite's Prepare), per output channel:

    ``(M0[c], e[c]) = QM(f64(s_in) * f64(s_w[c]) / f64(s_out))`` (per-tensor weights: one scale repeated),
    ``act_min, act_max`` from :func:`activation_range`. LiteRT's reference convolution then computes
    ``clamp(MBQM(acc, M0[c], e[c]) + z_out, act_min, act_max)``, i.e. ``npuq.ops.conv2d`` with these
    keywords and ``rounding="double"`` (bit-exact; the accumulator is npuq's, padding is ``z_in``).

    Returns ``dict(multiplier, exponent, output_zero_point, act_min, act_max, rounding="double")``
    (``multiplier``/``exponent`` int32 arrays).
    """
    s_in = _scale(input_scale, "input_scale")
    s_out = _scale(output_scale, "output_scale")
    ws = np.atleast_1d(np.asarray(weight_scales, dtype=np.float64)).astype(np.float32)
    if ws.ndim != 1 or ws.size == 0 or not np.all(np.isfinite(ws)) or np.any(ws <= 0):
        raise ValueError("weight_scales must be a positive finite scale or a 1-D array of them")
    z_out = _zero_point(output_zero_point, "output_zero_point")
    pairs = [quantize_multiplier(float(s_in) * float(w) / float(s_out)) for w in ws]
    lo, hi = activation_range(fused_activation_function, s_out, z_out)
    return dict(
        multiplier=np.array([p[0] for p in pairs], np.int32),
        exponent=np.array([p[1] for p in pairs], np.int32),
        output_zero_point=z_out,
        act_min=lo,
        act_max=hi,
        rounding="double",
    )


def depthwise_conv_params(
    input_scale, weight_scales, output_scale, output_zero_point=0, fused_activation_function="NONE"
):
    """DEPTHWISE_CONV_2D: the same derivation as :func:`conv_params` (per output channel of the depthwise
    filter, ``C_out = C_in * depth_multiplier``)."""
    return conv_params(input_scale, weight_scales, output_scale, output_zero_point, fused_activation_function)


def add_params(
    a_scale, a_zero_point, b_scale, b_zero_point, output_scale, output_zero_point, fused_activation_function="NONE"
):
    """Keywords of ``npuq.ops.add`` for an int8 ADD (TFLite's general int8 path, ``left_shift = 20``):

    ``twice_max = 2 * f64(max(s_a, s_b))``; ``QM(f64(s_a) / twice_max)``, ``QM(f64(s_b) / twice_max)``,
    ``QM(twice_max / f64(f32(2**20 * s_out)))``; per element
    ``clamp(MBQM(MBQM((a - z_a) << 20, Ma) + MBQM((b - z_b) << 20, Mb), Mo) + z_out, act range)``,
    exactly npuq's add (docs/arithmetic.md 6) with ``rounding="double"``.
    """
    s_a, s_b, s_out = _scale(a_scale, "a_scale"), _scale(b_scale, "b_scale"), _scale(output_scale, "output_scale")
    twice_max = 2.0 * float(max(s_a, s_b))
    left_shift = 20
    a_m, a_e = quantize_multiplier(float(s_a) / twice_max)
    b_m, b_e = quantize_multiplier(float(s_b) / twice_max)
    o_m, o_e = quantize_multiplier(twice_max / float(_F32((1 << left_shift) * s_out)))
    lo, hi = activation_range(fused_activation_function, s_out, output_zero_point)
    return dict(
        a_zero_point=_zero_point(a_zero_point, "a_zero_point"),
        a_multiplier=a_m,
        a_exponent=a_e,
        b_zero_point=_zero_point(b_zero_point, "b_zero_point"),
        b_multiplier=b_m,
        b_exponent=b_e,
        output_zero_point=_zero_point(output_zero_point, "output_zero_point"),
        output_multiplier=o_m,
        output_exponent=o_e,
        left_shift=left_shift,
        act_min=lo,
        act_max=hi,
        rounding="double",
    )


def mul_params(
    a_scale, a_zero_point, b_scale, b_zero_point, output_scale, output_zero_point, fused_activation_function="NONE"
):
    """Keywords of ``npuq.ops.mul`` for an int8 MUL.

    TFLite's Prepare builds the multiplier in float32: ``QM(f32(f32(s_a * s_b) / s_out))`` (not the
    double product that ``npuq.ops.mul_params`` uses; the two differ in the last bits of ``M0`` for some
    scales). Per element ``clamp(z_out + MBQM((a - z_a) * (b - z_b), M0, e), act range)``, npuq's mul with
    ``rounding="double"``.
    """
    s_a, s_b, s_out = _scale(a_scale, "a_scale"), _scale(b_scale, "b_scale"), _scale(output_scale, "output_scale")
    m, e = quantize_multiplier(float(_F32(_F32(s_a * s_b) / s_out)))
    lo, hi = activation_range(fused_activation_function, s_out, output_zero_point)
    return dict(
        a_zero_point=_zero_point(a_zero_point, "a_zero_point"),
        b_zero_point=_zero_point(b_zero_point, "b_zero_point"),
        output_zero_point=_zero_point(output_zero_point, "output_zero_point"),
        multiplier=m,
        exponent=e,
        act_min=lo,
        act_max=hi,
        rounding="double",
    )


def concat_params(input_scales, input_zero_points, output_scale, output_zero_point) -> dict:
    """Keywords of ``npuq.ops.concat`` for an int8 CONCATENATION.

    LiteRT refuses an int8 concatenation whose inputs do not all carry the output's scale and zero point
    (its Prepare checks equality), so the only valid case is a plain copy: every input gets the identity
    multiplier ``(2**30, 1)`` and zero point ``z_out``. Raises ValueError naming the first input that
    differs.
    """
    s_out = _scale(output_scale, "output_scale")
    z_out = _zero_point(output_zero_point, "output_zero_point")
    scales = list(np.atleast_1d(np.asarray(input_scales, dtype=np.float64)))
    zps = list(np.atleast_1d(np.asarray(input_zero_points)))
    if len(scales) != len(zps) or not scales:
        raise ValueError("input_scales and input_zero_points must be non-empty and of the same length")
    for i, (s, z) in enumerate(zip(scales, zps)):
        if _F32(s) != s_out or int(z) != z_out:
            raise ValueError(
                f"CONCATENATION input {i} has scale {float(_F32(s))!r} / zero point {int(z)}, the output "
                f"{float(s_out)!r} / {z_out}: LiteRT's int8 concatenation does not rescale"
            )
    n = len(scales)
    return dict(zero_points=[z_out] * n, multipliers=[2**30] * n, exponents=[1] * n, output_zero_point=z_out)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """TFLite's SAME padding along one axis: ``(out, pad_before, pad_after)`` with
    ``out = ceil(size / stride)``, ``total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``,
    ``pad_before = total // 2`` and the odd pixel after."""
    for name, v in (("size", size), ("kernel", kernel), ("stride", stride), ("dilation", dilation)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return out, total // 2, total - total // 2


def pool_params(
    opcode: str,
    input_hw,
    filter_height: int,
    filter_width: int,
    stride_h: int,
    stride_w: int,
    padding: str,
    output_scale,
    output_zero_point,
    fused_activation_function="NONE",
) -> dict:
    """Keywords of ``npuq.ops.avg_pool2d`` / ``npuq.ops.max_pool2d`` for an int8 AVERAGE_POOL_2D / MAX_POOL_2D.

    Geometry: VALID is ``out = (size - kernel) // stride + 1`` without padding; SAME is :func:`same_padding`.
    AVERAGE_POOL_2D counts only the pixels inside the image and rounds ``sum / count`` half away from zero
    (``(sum +- count // 2) / count`` truncated), then clamps to the fused activation range: npuq's
    ``avg_pool2d`` with ``count_include_pad=False`` (docs/arithmetic.md 7). MAX_POOL_2D ignores padded
    positions and clamps to the range. The output scale and zero point must equal the input's (TFLite's
    requirement); ``act_min``/``act_max`` are :func:`activation_range` of them.

    Returns ``dict(kernel_size, stride, padding=(top, bottom, left, right), act_min, act_max)`` plus
    ``count_include_pad=False`` for the average. For MAX_POOL_2D npuq's ``max_pool2d`` has no clamp: apply
    ``act_min``/``act_max`` after it (a no-op for NONE).
    """
    op = opcode.upper() if isinstance(opcode, str) else opcode
    if op not in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        raise ValueError(f"pool_params: opcode must be AVERAGE_POOL_2D or MAX_POOL_2D, got {opcode!r}")
    h, w = (int(v) for v in input_hw)
    if padding == "SAME":
        _, top, bottom = same_padding(h, filter_height, stride_h)
        _, left, right = same_padding(w, filter_width, stride_w)
    elif padding == "VALID":
        if filter_height > h or filter_width > w:
            raise ValueError(f"VALID pooling with a {filter_height}x{filter_width} window on a {h}x{w} image")
        top = bottom = left = right = 0
    else:
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    lo, hi = activation_range(fused_activation_function, output_scale, output_zero_point)
    out = dict(
        kernel_size=(filter_height, filter_width),
        stride=(stride_h, stride_w),
        padding=(top, bottom, left, right),
        act_min=lo,
        act_max=hi,
    )
    if op == "AVERAGE_POOL_2D":
        out["count_include_pad"] = False
    return out


def pad_value(output_zero_point, constant_value=None) -> int:
    """The int8 fill of PAD / PADV2: PAD (or PADV2 without ``constant_values``) pads with the output zero
    point (the input's: TFLite requires them equal); PADV2 pads with its int8 ``constant_values`` as stored."""
    z = _zero_point(output_zero_point, "output_zero_point")
    if constant_value is None:
        return z
    return _zero_point(int(np.asarray(constant_value).reshape(-1)[0]), "constant_value")


def resize_nearest_indices(in_size: int, out_size: int, align_corners=False, half_pixel_centers=False) -> np.ndarray:
    """RESIZE_NEAREST_NEIGHBOR's source index for each output index along one axis (float32, as TFLite):

    ``scale = f32(in - 1) / f32(out - 1)`` if ``align_corners and out > 1`` else ``f32(in) / f32(out)``;
    ``offset = 0.5 if half_pixel_centers else 0``; ``src = min(align_corners ? round_away(f32(f32(i + offset) *
    scale)) : floor(f32(f32(i + offset) * scale)), in - 1)``, then ``max(src, 0)`` with half_pixel_centers.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got {in_size} -> {out_size}")
    if align_corners and out_size > 1:
        scale = _F32(_F32(in_size - 1) / _F32(out_size - 1))
    else:
        scale = _F32(_F32(in_size) / _F32(out_size))
    offset = _F32(0.5) if half_pixel_centers else _F32(0.0)
    pos = ((np.arange(out_size, dtype=np.float32) + offset).astype(np.float32) * scale).astype(np.float32)
    src = _round_away_f32(pos) if align_corners else np.floor(pos)
    src = np.minimum(src.astype(np.int64), in_size - 1)
    if half_pixel_centers:
        src = np.maximum(src, 0)
    return src


def resize_nearest_as_upsample(input_hw, output_hw, align_corners=False, half_pixel_centers=False):
    """The integer factors ``(sh, sw)`` for which ``npuq.ops.upsample(x, (sh, sw), mode="nearest")`` (output
    ``[i] = input[i // s]``) equals this RESIZE_NEAREST_NEIGHBOR, or None when it does not (a non-integer
    ratio, or align_corners moving the sampled pixels)."""
    factors = []
    for size_in, size_out in zip(input_hw, output_hw):
        if size_out % size_in:
            return None
        s = size_out // size_in
        want = np.arange(size_out) // s
        if not np.array_equal(resize_nearest_indices(size_in, size_out, align_corners, half_pixel_centers), want):
            return None
        factors.append(int(s))
    return tuple(factors)


# ------------------------------------------------------------------- FULLY_CONNECTED


def fc_rescale(input_scale, weight_scales, output_scale) -> np.ndarray:
    """The doubles LiteRT's reference int8 FULLY_CONNECTED scales its int32 accumulator by (one per output
    channel, or one): ``f64(s_in) * f64(s_w[o]) / f64(s_out)``; it then rounds ``f64(acc) * real[o]`` half
    away from zero, once. That is ``npuq.ops.fully_connected_tflite`` (docs/arithmetic.md 16), the
    ``tflite_rescale`` attribute of an imported layer."""
    sw = np.atleast_1d(np.asarray(weight_scales, dtype=np.float64)).astype(np.float32)
    if sw.ndim != 1 or sw.size == 0 or not np.all(np.isfinite(sw)) or np.any(sw <= 0):
        raise ValueError("weight_scales must be a positive finite scale or a 1-D array of them")
    return (
        float(_scale(input_scale, "input_scale")) * sw.astype(np.float64) / float(_scale(output_scale, "output_scale"))
    )
