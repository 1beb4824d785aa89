"""Shared setup of the conv speed benchmarks: data, quantization parameters and the callables timed.

Used by ``benchmarks/test_conv_speed.py`` (pytest-benchmark) and ``benchmarks/bench_conv.py`` (standalone
table), so that both time exactly the same thing.

One problem, three implementations:

* ``npuq``: ``npuq.ops.Conv2d`` (weights packed once) on a numpy NHWC int8 input, per-tensor
  fixed-point requantization fused (``multiplier``/``exponent`` from ``npuq.quantize_multiplier``).
* ``torch_fbgemm_int8``: ``torch.ao.nn.quantized.Conv2d`` with the fbgemm engine (weights prepacked by
  ``set_weight_bias``), per-tensor qint8 weight, quint8 input in channels_last memory (fbgemm's native
  layout; ``channels_last=False`` gives the NCHW variant, which fbgemm converts internally).
* ``torch_fp32``: ``torch.nn.functional.conv2d`` on float32 channels_last input and weight.

Both int8 sides compute the same convolution: the npuq int8 input ``x`` with zero point -128 is the
torch quint8 input ``x + 128`` with zero point 0, the weights are the same integers (per-tensor scale
2^-7, symmetric), the bias the same int32 values (torch receives them as floats that are exact multiples
of ``s_x * s_w``), and the output zero points differ by 128 likewise. Only the requantization differs
(npuq: integer fixed point per arithmetic.md; fbgemm: float32 multiplier), so the two outputs may differ
by one LSB at rounding ties; :func:`max_abs_diff_npuq_vs_torch` measures it as a sanity check that the
two sides really compute the same layer.

Every callable allocates its output on each call (none takes an ``out=``), and reuses the same input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import zlib
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from mobilenetv2_layers import ConvLayer

# Scales: powers of two so that the float <-> int conversions on the torch side are exact.
S_X = 2.0**-5  # input scale
S_W = 2.0**-7  # weight scale (per tensor, symmetric)
NPUQ_INPUT_ZERO_POINT = -128  # int8; torch quint8 zero point 0 (post-ReLU activations)
NPUQ_OUTPUT_ZERO_POINT = 0  # int8; torch quint8 zero point 128
TARGET_OUTPUT_STD = 30.0  # output LSBs: keeps the outputs mostly inside the int8 range

IMPLEMENTATIONS = ("npuq", "torch_fbgemm_int8", "torch_fp32")


def bench_threads() -> int:
    """Thread count for every implementation: env ``NPUQ_BENCH_THREADS``, else ``os.cpu_count()``."""
    env = os.environ.get("NPUQ_BENCH_THREADS")
    if env:
        n = int(env)
        if n < 1:
            raise ValueError(f"NPUQ_BENCH_THREADS must be >= 1, got {env!r}")
        return n
    return os.cpu_count() or 1


def import_npuq():
    """Return ``(npuq module, None)`` or ``(None, error message)``."""
    try:
        import npuq  # noqa: F401
        import npuq.ops  # noqa: F401

        return npuq, None
    except Exception as exc:  # ImportError, or a half-built extension
        return None, f"{type(exc).__name__}: {exc}"


def configure(threads: int, npuq_module=None) -> None:
    """Same thread count for torch and npuq; fbgemm as the quantized engine."""
    torch.backends.quantized.engine = "fbgemm"
    torch.set_num_threads(threads)
    if npuq_module is not None:
        npuq_module.set_num_threads(threads)


@dataclasses.dataclass
class ConvData:
    """Inputs and parameters of one layer at one batch size (deterministic per layer and batch)."""

    layer: ConvLayer
    batch: int
    x: np.ndarray  # (N, H, W, C_in) int8, zero point NPUQ_INPUT_ZERO_POINT
    w_oihw: np.ndarray  # (C_out, C_in/g, K, K) int8 in [-127, 127]
    w_ohwi: np.ndarray  # the same, npuq layout (C order)
    bias: np.ndarray  # (C_out,) int32, scale S_X * S_W
    multiplier_real: float  # S_X * S_W / s_out
    s_out: float

    @property
    def macs(self) -> int:
        return self.layer.macs(self.batch)


def make_conv_data(layer: ConvLayer, batch: int, seed: int = 0) -> ConvData:
    rng = np.random.default_rng([seed, zlib.crc32(layer.id.encode()), batch])
    x = rng.integers(-128, 128, size=layer.input_shape_nhwc(batch), dtype=np.int8)
    w = rng.integers(-127, 128, size=layer.weight_shape_oihw, dtype=np.int8)
    k = layer.c_in_per_group * layer.kernel * layer.kernel
    # std of (x - z_x) * w summed over k terms: x - z_x uniform in [0, 255], w uniform in [-127, 127].
    acc_std = math.sqrt(k * (255 * 257 / 12 + 127.5**2) * (255 * 255 - 1) / 12)
    bias = rng.integers(-int(acc_std), int(acc_std) + 1, size=layer.c_out, dtype=np.int64).astype(np.int32)
    multiplier_real = TARGET_OUTPUT_STD / acc_std
    return ConvData(
        layer=layer,
        batch=batch,
        x=x,
        w_oihw=w,
        w_ohwi=np.ascontiguousarray(w.transpose(0, 2, 3, 1)),
        bias=bias,
        multiplier_real=multiplier_real,
        s_out=S_X * S_W / multiplier_real,
    )


# ---------------------------------------------------------------------------------------------- npuq
def npuq_kwargs(data: ConvData, npuq_module) -> Dict[str, Any]:
    m0, e = npuq_module.quantize_multiplier(data.multiplier_real)
    layer = data.layer
    return dict(
        input_zero_point=NPUQ_INPUT_ZERO_POINT,
        stride=layer.stride,
        padding=layer.padding,
        groups=layer.groups,
        multiplier=int(m0),
        exponent=int(e),
        output_zero_point=NPUQ_OUTPUT_ZERO_POINT,
        act_min=-128,
        act_max=127,
    )


def build_npuq(data: ConvData, npuq_module) -> Callable[[], np.ndarray]:
    """The prepacked layer applied to the (reused) numpy NHWC input."""
    conv = npuq_module.ops.Conv2d(data.w_ohwi, data.bias, **npuq_kwargs(data, npuq_module))
    x = data.x

    def run():
        return conv(x)

    return run


def npuq_reference(data: ConvData, npuq_module) -> np.ndarray:
    """``npuq.ops.reference.conv2d`` (the scalar reference kernels) on the same problem."""
    return npuq_module.ops.reference.conv2d(data.x, data.w_ohwi, data.bias, **npuq_kwargs(data, npuq_module))


# --------------------------------------------------------------------------------------------- torch
def torch_int8_module(data: ConvData):
    import torch.ao.nn.quantized as nnq

    layer = data.layer
    with warnings.catch_warnings():  # torch deprecates quantized tensors; silence it (setup only)
        warnings.simplefilter("ignore")
        conv = nnq.Conv2d(
            layer.c_in,
            layer.c_out,
            layer.kernel,
            stride=layer.stride,
            padding=layer.padding,
            groups=layer.groups,
            bias=True,
        )
        w = torch.quantize_per_tensor(torch.from_numpy(data.w_oihw).float() * S_W, S_W, 0, torch.qint8)
        bias = torch.from_numpy(data.bias).double().mul(S_X * S_W).float()
        conv.set_weight_bias(w, bias)
        conv.scale = data.s_out
        conv.zero_point = NPUQ_OUTPUT_ZERO_POINT + 128
    return conv


def torch_quint8_input(data: ConvData, channels_last: bool = True) -> torch.Tensor:
    u8 = data.x.view(np.uint8) ^ np.uint8(0x80)  # x + 128, as uint8
    nchw = torch.from_numpy(u8).permute(0, 3, 1, 2)  # channels_last strides, NCHW shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qx = torch.quantize_per_tensor(nchw.float() * S_X, S_X, NPUQ_INPUT_ZERO_POINT + 128, torch.quint8)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return qx.contiguous(memory_format=fmt)


def build_torch_int8(data: ConvData, channels_last: bool = True) -> Callable[[], torch.Tensor]:
    conv = torch_int8_module(data)
    qx = torch_quint8_input(data, channels_last)

    def run():
        return conv(qx)

    return run


def build_torch_fp32(data: ConvData) -> Callable[[], torch.Tensor]:
    layer = data.layer
    x = torch.from_numpy(data.x).float().sub_(NPUQ_INPUT_ZERO_POINT).mul_(S_X).permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.from_numpy(data.w_oihw).float() * S_W).contiguous(memory_format=torch.channels_last)
    b = torch.from_numpy(data.bias).double().mul(S_X * S_W).float()
    stride, padding, groups = layer.stride, layer.padding, layer.groups

    def run():
        return F.conv2d(x, w, b, stride, padding, 1, groups)

    return run


def build(impl: str, data: ConvData, npuq_module=None) -> Callable[[], Any]:
    if impl == "npuq":
        if npuq_module is None:
            raise RuntimeError("npuq is not importable")
        return build_npuq(data, npuq_module)
    if impl == "torch_fbgemm_int8":
        return build_torch_int8(data, channels_last=True)
    if impl == "torch_fbgemm_int8_nchw":
        return build_torch_int8(data, channels_last=False)
    if impl == "torch_fp32":
        return build_torch_fp32(data)
    raise ValueError(f"unknown implementation {impl!r}")


def torch_int8_as_npuq(y: torch.Tensor) -> np.ndarray:
    """A torch quint8 NCHW output as the equivalent npuq int8 NHWC array."""
    u8 = y.int_repr().permute(0, 2, 3, 1).contiguous().numpy()
    return (u8 ^ np.uint8(0x80)).view(np.int8)


def max_abs_diff_npuq_vs_torch(y_npuq: np.ndarray, y_torch: torch.Tensor) -> Optional[int]:
    t = torch_int8_as_npuq(y_torch)
    if t.shape != np.shape(y_npuq):
        return None
    return int(np.max(np.abs(t.astype(np.int16) - np.asarray(y_npuq).astype(np.int16))))
