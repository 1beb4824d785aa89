"""The torch integer arithmetic (npuq.quant.intmath) checks its scalar arguments with npuq._validate, the
vocabulary of npuq.ops: the same value is accepted or refused, with the same words."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npuq import _validate
from npuq.quant import intmath as I

ACC = torch.zeros(2, 3, dtype=torch.int64)
X = torch.zeros(1, 2, 4, 4, dtype=torch.int64)


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize(
    "value",
    [
        3,
        -3,
        200,
        np.int16(5),
        torch.tensor(5),
        torch.tensor(5, dtype=torch.uint8),
        np.array(7),
        True,
        np.bool_(True),
        torch.tensor(True),
        5.0,
        np.float32(5),
        "5",
        None,
        torch.tensor([5]),
    ],
)
def test_a_zero_point_is_judged_as_npuq_ops_judges_it(value):
    expected = _outcome(_validate.zero_point, value, "output_zero_point")
    got = _outcome(I.requantize, ACC, 2**30, -1, output_zero_point=value)
    if isinstance(expected, int):
        assert isinstance(got, torch.Tensor)
    else:
        assert got == expected


@pytest.mark.parametrize("value", [np.bool_(True), True, torch.tensor(False)])
def test_bools_are_never_ints(value):
    for fn in (
        lambda: I.requantize(ACC, 2**30, -1, act_min=value),
        lambda: I.rdbpot(torch.tensor([4]), value),
        lambda: I.conv2d_accumulator(X, 0, torch.ones(2, 2, 1, 1), None, groups=value),
    ):
        with pytest.raises(TypeError, match="must (be an int|hold integers)"):  # a tensor n is elementwise
            fn()


def test_extents_are_capped_as_in_npuq_ops():
    cap = _validate.MAX_EXTENT
    assert I.avg_pool2d(X, 1, stride=cap).shape == (1, 2, 1, 1)
    for kwargs, name in (
        ({"stride": cap + 1}, "stride"),
        ({"stride": (1, cap + 1)}, "stride"),
        ({"padding": cap + 1}, "padding"),
    ):
        with pytest.raises(ValueError, match=rf"{name} must be in \[\d, {cap}\], got {cap + 1}"):
            I.avg_pool2d(X, 1, **kwargs)
    with pytest.raises(ValueError, match=rf"dilation must be in \[1, {cap}\]"):
        I.conv2d_accumulator(X, 0, torch.ones(2, 2, 1, 1), None, dilation=cap + 1)


def test_the_mode_names_come_from_the_vocabulary():
    for mode in _validate.ROUNDING_MODES:
        I.requantize(ACC, 2**30, -1, rounding=mode)
    for policy in _validate.OVERFLOW_POLICIES:
        I.saturate_accumulator(ACC, policy)
    with pytest.raises(ValueError, match="rounding must be one of 'double', 'single'; got 'nearest'"):
        I.requantize(ACC, 2**30, -1, rounding="nearest")
    with pytest.raises(ValueError, match="overflow must be one of 'raise', 'saturate', 'wrap'; got 'clip'"):
        I.saturate_accumulator(ACC, "clip")
