"""Shared strategies and data generators for the npuq tests (test-side only; no package code)."""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st

from support import reference_numpy as R

INT32_MIN, INT32_MAX = R.INT32_MIN, R.INT32_MAX


def on_ci() -> bool:
    """Whether this is CI (.ci/run sets NPUQ_CI=1), where every test must run: a missing tool or server is
    then a failure, not a skip."""
    return os.environ.get("NPUQ_CI", "") not in ("", "0")


def skip_unless_ci(reason: str, allow_module_level: bool = False):
    if on_ci():
        pytest.fail(f"{reason} (NPUQ_CI is set: on CI this test must run)", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def scaled_examples(factor: int) -> settings:
    """Run `factor` times the active profile's max_examples (for the cheap, central properties)."""
    return settings(max_examples=factor * settings.default.max_examples)


# M0: 0 or [2^30, 2^31 - 1], with the edges over-represented
M0_STRATEGY = st.one_of(
    st.integers(2**30, 2**31 - 1),
    st.integers(2**30, 2**31 - 1),
    st.sampled_from([0, 2**30, 2**30 + 1, 2**31 - 2, 2**31 - 1, 1610612736, 1690499128]),
)
EXPONENT_STRATEGY = st.integers(-31, 30)
SHIFT_STRATEGY = st.integers(0, 15)
ROUNDING_STRATEGY = st.sampled_from(["double", "single"])
OVERFLOW_STRATEGY = st.sampled_from(["raise", "saturate", "wrap"])
INT32_STRATEGY = st.one_of(
    st.integers(INT32_MIN, INT32_MAX),
    st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX]),
    st.integers(-(2**16), 2**16),
)


@st.composite
def clamps(draw):
    """(output_zero_point, act_min, act_max): mostly the full range, sometimes ReLU-like or narrow."""
    zp = draw(st.one_of(st.just(0), st.integers(-128, 127)))
    kind = draw(st.sampled_from(["full", "full", "relu", "random"]))
    if kind == "full":
        return zp, -128, 127
    if kind == "relu":
        return zp, zp, draw(st.sampled_from([127, min(127, zp + 60)]))
    lo = draw(st.integers(-128, 127))
    hi = draw(st.integers(lo, 127))
    return zp, lo, hi


def int8_data(rng: np.random.Generator, shape, mode: str) -> np.ndarray:
    """Activations: uniform, extremes, or all-equal fills (the extremes stress overflow bounds)."""
    if mode == "uniform":
        return rng.integers(-128, 128, shape, dtype=np.int8)
    if mode == "extreme":
        return rng.choice(np.array([-128, 127], np.int8), size=shape)
    if mode == "min":
        return np.full(shape, -128, np.int8)
    if mode == "max":
        return np.full(shape, 127, np.int8)
    if mode == "small":
        return rng.integers(-3, 4, shape, dtype=np.int8)
    raise ValueError(mode)


def weight_data(rng: np.random.Generator, shape, mode: str) -> np.ndarray:
    if mode == "uniform":
        return rng.integers(-127, 128, shape, dtype=np.int8)
    if mode == "extreme":
        return rng.choice(np.array([-127, 127], np.int8), size=shape)
    if mode == "max":
        return np.full(shape, 127, np.int8)
    if mode == "min":
        return np.full(shape, -127, np.int8)
    if mode == "small":
        return rng.integers(-2, 3, shape, dtype=np.int8)
    raise ValueError(mode)


BIAS_MODES = st.sampled_from(["none", "small", "small", "medium", "huge", "edge"])


def bias_data(rng: np.random.Generator, c_out: int, mode: str):
    """None, or int32 biases: small, medium, anywhere in int32, or within 2^16 of the int32 limits (so that
    modest sums overflow and every overflow policy matters)."""
    if mode == "none":
        return None
    if mode == "edge":
        mag = INT32_MAX - rng.integers(0, 2**16, c_out, dtype=np.int64)
        return np.where(rng.random(c_out) < 0.5, mag, -mag - 1).astype(np.int32)
    lim = {"small": 2**10, "medium": 2**22, "huge": 2**31}[mode]
    return rng.integers(-lim, lim, c_out, dtype=np.int64).astype(np.int32)


DATA_MODES = st.sampled_from(["uniform", "uniform", "uniform", "extreme", "min", "max", "small"])


def fitting_exponent(acc: np.ndarray, offset: int) -> int:
    """An exponent that maps max |acc| to roughly +-64 (so that outputs are not all clamped), + offset."""
    m = int(np.max(np.abs(acc.astype(np.int64)))) if acc.size else 1
    m = max(m, 1)
    e = 7 - math.ceil(math.log2(m + 1)) + offset
    return int(min(max(e, -31), 30))


@st.composite
def requant_params(draw, acc: np.ndarray, c_out: int, allow_shift: bool = True):
    """Multiplier/exponent/shift for c_out channels, per layer or per channel.

    acc: the exact accumulators (used to pick exponents that give non-trivial outputs most of the time).
    """
    per_channel = draw(st.booleans())
    e_mode = draw(st.sampled_from(["fit", "fit", "fit", "any"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if per_channel:
        m0 = rng.integers(2**30, 2**31, c_out, dtype=np.int64)
        edge = rng.random(c_out)
        m0[edge < 0.05] = 0
        m0[(edge >= 0.05) & (edge < 0.1)] = 2**31 - 1
        m0[(edge >= 0.1) & (edge < 0.15)] = 2**30
        if e_mode == "fit":
            base = fitting_exponent(acc, 0)
            e = np.clip(base + rng.integers(-3, 4, c_out), -31, 30).astype(np.int64)
        else:
            e = rng.integers(-31, 31, c_out, dtype=np.int64)
        multiplier, exponent = m0, e
    else:
        multiplier = draw(M0_STRATEGY)
        exponent = fitting_exponent(acc, draw(st.integers(-3, 3))) if e_mode == "fit" else draw(EXPONENT_STRATEGY)
    channel_shift = None
    if allow_shift and draw(st.booleans()):
        channel_shift = rng.integers(0, 16, c_out, dtype=np.int64)
        if draw(st.booleans()):
            channel_shift = np.minimum(channel_shift, 3)  # small shifts keep outputs interesting
    zp, lo, hi = draw(clamps())
    return dict(
        multiplier=multiplier,
        exponent=exponent,
        channel_shift=channel_shift,
        output_zero_point=zp,
        act_min=lo,
        act_max=hi,
        rounding=draw(ROUNDING_STRATEGY),
    )


def as_int32_params(params: dict) -> dict:
    """The same parameters with numpy int32 arrays (the natural dtype) instead of int64 ones."""
    out = dict(params)
    for k in ("multiplier", "exponent", "channel_shift"):
        v = out.get(k)
        if isinstance(v, np.ndarray):
            out[k] = v.astype(np.int32)
    return out


def run_or_exc(fn, *args, **kwargs):
    """Call fn; return ('ok', result) or ('exc', exception type)."""
    try:
        return "ok", fn(*args, **kwargs)
    except (OverflowError, ValueError, TypeError) as ex:  # noqa: PERF203
        return "exc", type(ex)


def assert_same(expected, actual, what=""):
    """Exact equality of int8 outputs (shape, dtype and every value)."""
    actual = np.asarray(actual)
    assert actual.dtype == np.int8, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not np.array_equal(actual, expected):
        bad = np.argwhere(actual != expected)
        i = tuple(int(v) for v in bad[0])
        raise AssertionError(
            f"{what}: {len(bad)} of {expected.size} values differ; "
            f"first at {i}: expected {expected[i]}, got {actual[i]}"
        )


def assert_paths_agree(expected, paths, isa, what=""):
    """Run each (name, thunk) of ``paths`` under ``isa``: each must equal ``expected`` exactly, or raise
    OverflowError when ``expected`` is the OverflowError class (the oracle's accumulator overflowed)."""
    import pytest

    with using_isa(isa):
        for name, fn in paths:
            if expected is OverflowError:
                with pytest.raises(OverflowError):
                    fn()
            else:
                assert_same(expected, fn(), f"{name} {what}")


def isa_threads():
    """Strategy: (ISA to force or None for "auto", threads keyword).  Call from modules that import npuq."""
    import npuq

    isas = tuple(npuq.cpu_features()["supported"])
    return st.tuples(st.sampled_from((None,) + isas), st.sampled_from([None, 1, 2, 3]))


@contextlib.contextmanager
def using_isa(isa):
    """Force an instruction set for the block (None: leave "auto"), always restoring "auto"."""
    import npuq

    if isa is None:
        yield
        return
    npuq.set_isa(isa)
    try:
        yield
    finally:
        npuq.set_isa("auto")


def json_paths(obj, prefix=()):
    """Every path (tuple of keys / list indexes) into a JSON value, the root's () included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, prefix + (i,))
