"""Table activations: an elementwise function of one int8 value as a 256-entry int8 table
(docs/arithmetic.md 9).

:func:`make_table` fills the table from the input's and the output's scale and zero point; the NPU op
``lut`` then only reads it. The formulas are evaluated in float64 with numpy / math (not torch), so the
table does not depend on torch's kernels or threads.
"""

from __future__ import annotations

import math

import numpy as np

#: function name -> f(r) on a float64 array (params: "lo"/"hi" of clamp, "alpha" of leaky_relu)
_FORMULAS = {
    "hardswish": lambda r, p: r * np.clip(r + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda r, p: np.clip(r + 3.0, 0.0, 6.0) / 6.0,
    "sigmoid": lambda r, p: 1.0 / (1.0 + np.exp(-r)),
    "tanh": lambda r, p: np.tanh(r),
    "silu": lambda r, p: r / (1.0 + np.exp(-r)),
    "gelu": lambda r, p: r * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in r])) / 2.0,
    "gelu_tanh": lambda r, p: r * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (r + 0.044715 * r**3))) / 2.0,
    "relu": lambda r, p: np.maximum(r, 0.0),
    "relu6": lambda r, p: np.clip(r, 0.0, 6.0),
    "clamp": lambda r, p: np.clip(r, float(p["lo"]), float(p["hi"])),
    "leaky_relu": lambda r, p: np.where(r >= 0.0, r, float(p["alpha"]) * r),
}
FUNCTIONS = tuple(_FORMULAS)


def make_table(
    function: str, input_scale: float, input_zero_point: int, output_scale: float, output_zero_point: int, **params
) -> np.ndarray:
    """The int8 table of ``function`` (one of :data:`FUNCTIONS`): entry ``q + 128`` is
    ``clamp(round_half_away(f(s_x (q - z_x)) / s_y) + z_y, -128, 127)`` in float64 (docs/arithmetic.md 9).

    Scales are taken as float32 values (as programs store them). Raises ValueError for an unknown
    function, a missing parameter, a scale that is not a finite positive number or a non-finite f."""
    if function not in _FORMULAS:
        raise ValueError(f"unknown table function {function!r}; known: {', '.join(FUNCTIONS)}")
    needed = {"clamp": ("lo", "hi"), "leaky_relu": ("alpha",)}.get(function, ())
    missing = [k for k in needed if k not in params]
    if missing:
        raise ValueError(f"table function {function!r} needs parameter(s) {missing}")
    s_x, s_y = (float(np.float32(s)) for s in (input_scale, output_scale))
    for name, s in (("input_scale", s_x), ("output_scale", s_y)):
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {s!r}")
    for name, z in (("input_zero_point", input_zero_point), ("output_zero_point", output_zero_point)):
        if not -128 <= int(z) <= 127:
            raise ValueError(f"{name} must lie in [-128, 127], got {z}")
    r = s_x * (np.arange(-128, 128, dtype=np.float64) - int(input_zero_point))
    v = np.asarray(_FORMULAS[function](r, params), dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"table function {function!r} is not finite on the input range")
    t = v / s_y
    whole = np.floor(np.abs(t))
    rounded = np.sign(t) * (whole + (np.abs(t) - whole >= 0.5))  # half away from zero; the difference is exact
    return np.clip(rounded + int(output_zero_point), -128, 127).astype(np.int8)


__all__ = ["FUNCTIONS", "make_table"]
