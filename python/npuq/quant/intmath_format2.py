"""The integer arithmetic of the ops of program format 2, in torch (docs/arithmetic.md 9-15).

The quantization simulation (:meth:`npuq.QuantizedModel.run_integer`) runs these; they are written
from the docs independently of the native kernels (``npuq.ops``), and the tests hold the two equal.
Values are int64 tensors holding int8 values in torch's layouts: (N, C, H, W) or (N, K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from npuq.quant.intmath import _multiplier, _param, _requantize_value


def lut(x: torch.Tensor, table) -> torch.Tensor:
    """Section 9: ``table[x + 128]`` (``table``: 256 int8 values)."""
    t = torch.as_tensor(table, dtype=torch.int64, device=x.device)
    if t.shape != (256,):
        raise ValueError(f"a table has 256 entries, got shape {tuple(t.shape)}")
    return t[x.long() + 128]


def _requantized(acc: torch.Tensor, multiplier: int, exponent: int, zero_point: int, lo: int, hi: int, rounding: str):
    m0 = _multiplier(int(multiplier), "multiplier")
    e = _param(int(exponent), "exponent", -31, 30)
    return (_requantize_value(acc, m0, e, rounding, None) + int(zero_point)).clamp_(lo, hi)


def mul(a, b, *, a_zero_point, b_zero_point, output_zero_point, multiplier, exponent, act_min, act_max, rounding):
    """Section 10: ``requantize((a - z_a) * (b - z_b))``; ``b`` has a's shape or is (N, C, 1, 1)."""
    acc = (a.long() - int(a_zero_point)) * (b.long() - int(b_zero_point))  # broadcasts an (N, C, 1, 1) b
    return _requantized(acc, multiplier, exponent, output_zero_point, act_min, act_max, rounding)


def concat(values, *, zero_points, multipliers, exponents, output_zero_point, rounding):
    """Section 11: each input requantized to the output's scale, joined along the channels (axis 1)."""
    parts = [
        _requantized(v.long() - int(z), m, e, output_zero_point, -128, 127, rounding)
        for v, z, m, e in zip(values, zero_points, multipliers, exponents)
    ]
    return torch.cat(parts, dim=1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Section 12: channel ``i * k + j`` goes to ``j * g + i`` (k = C / g)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def pad(x: torch.Tensor, padding, value: int) -> torch.Tensor:
    """Section 12: ``padding`` (top, bottom, left, right) filled with the int8 ``value``."""
    t, b, left, r = (int(p) for p in padding)
    return F.pad(x, (left, r, t, b), value=int(value))


def _bilinear_axis(n: int, f: int, device) -> tuple[torch.Tensor, ...]:
    """(i0, i1, w0, w1) of section 13 along one axis of size ``n`` upsampled by ``f``."""
    o = torch.arange(n * f, device=device)
    num = (2 * o + 1 - f).clamp_(min=0)
    i0 = torch.div(num, 2 * f, rounding_mode="floor")
    lam = num - 2 * f * i0
    i1 = (i0 + 1).clamp_(max=n - 1)
    return i0, i1, 2 * f - lam, lam


def upsample(x: torch.Tensor, scale, mode: str, zero_point: int) -> torch.Tensor:
    """Sections 12 (nearest) and 13 (bilinear, exact weights, one rounding half away from zero)."""
    fh, fw = (int(s) for s in scale)
    if mode == "nearest":
        return x.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)
    n, c, h, w = x.shape
    h0, h1, wh0, wh1 = _bilinear_axis(h, fh, x.device)
    w0, w1, ww0, ww1 = _bilinear_axis(w, fw, x.device)
    v = x.long() - int(zero_point)
    rows = v[:, :, h0] * wh0.view(1, 1, -1, 1) + v[:, :, h1] * wh1.view(1, 1, -1, 1)  # exact: |.| <= 255 * 2 f_h
    acc = rows[..., w0] * ww0 + rows[..., w1] * ww1
    d = 4 * fh * fw
    half = d // 2
    avg = torch.where(
        acc > 0, torch.div(acc + half, d, rounding_mode="trunc"), torch.div(acc - half, d, rounding_mode="trunc")
    )
    return avg + int(zero_point)


__all__ = ["channel_shuffle", "concat", "lut", "mul", "pad", "upsample"]
