"""torch's own int8 model of a float network, on the fbgemm engine: the baseline of the emulator benchmark.

:func:`convert_int8` turns the float MobileNetV2 into torch's quantized model with
``torch.ao.quantization``:

* **FX graph mode** (the default): ``prepare_fx`` with ``get_default_qconfig_mapping(engine)`` (conv + BN
  folded, per-channel qint8 weights, quint8 activations with histogram observers), calibration on the
  given batches, ``convert_fx``. The result takes float NCHW images and returns float logits: it
  quantizes its input itself, like ``npuq.Emulator.run`` on float images.
* **eager mode** (the fallback, or ``mode="eager"``): a copy of the model with QuantStub / DeQuantStub
  around it, conv + BN fused, residual additions through ``FloatFunctional``, ``get_default_qconfig``,
  ``prepare`` / calibrate / ``convert``.

:func:`select_engine` sets ``torch.backends.quantized.engine`` to fbgemm, or x86 when fbgemm is not
available (x86 is fbgemm plus onednn behind one name), and says which one it got.

Needs torch only (the model and the calibration batches come from the caller).
"""

from __future__ import annotations

import copy
import itertools
import types
import warnings
from collections.abc import Iterable

import torch
from torch import nn

ENGINES = ("fbgemm", "x86")


def select_engine(preferred: str = "fbgemm") -> str:
    """Make ``preferred`` (else the next of :data:`ENGINES` this torch build supports) torch's quantized
    engine; return its name. Raises RuntimeError when neither is supported."""
    supported = torch.backends.quantized.supported_engines
    for engine in (preferred,) + tuple(e for e in ENGINES if e != preferred):
        if engine in supported:
            try:
                torch.backends.quantized.engine = engine
            except RuntimeError:
                continue
            return engine
    raise RuntimeError(f"no x86 quantized engine in this torch build (supported: {', '.join(supported)})")


def _calibrate(model: nn.Module, batches: Iterable) -> int:
    n = 0
    with torch.inference_mode():
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images)
            n += int(images.shape[0])
    if n == 0:
        raise ValueError("no calibration images")
    return n


def convert_fx(model: nn.Module, batches: Iterable, example: torch.Tensor, engine: str) -> nn.Module:
    """FX graph mode: prepare_fx / calibrate / convert_fx with the default qconfig mapping of ``engine``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx as _convert_fx, prepare_fx

    float_model = copy.deepcopy(model).eval()
    prepared = prepare_fx(float_model, get_default_qconfig_mapping(engine), example_inputs=(example,))
    _calibrate(prepared, batches)
    return _convert_fx(prepared).eval()


class _EagerQuantWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.model = model
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.model(self.quant(x)))


def _residual_forward(self, x):
    # InvertedResidual.forward with the addition made quantizable
    if self.use_residual:
        return self.skip_add.add(x, self.body(x))
    return self.body(x)


def _conv_bn_pairs(model: nn.Module) -> list:
    """Names of every (Conv2d, BatchNorm2d) pair that follow each other inside an nn.Sequential."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (n1, m1), (n2, m2) in itertools.pairwise(children):
            if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                pairs.append([prefix + n1, prefix + n2])
    return pairs


def convert_eager(model: nn.Module, batches: Iterable, engine: str) -> nn.Module:
    """Eager mode: stubs, conv + BN fusion, FloatFunctional residual adds, prepare / calibrate / convert.

    Written for the MobileNets of ``npuq.models.mobilenet`` (their residual blocks carry ``use_residual``
    and ``body``); ReLU6 stays a module of its own (eager mode fuses conv + BN + ReLU only)."""
    from torch.ao.quantization import convert, fuse_modules, get_default_qconfig, prepare

    body = copy.deepcopy(model).eval()
    for module in body.modules():
        if hasattr(module, "use_residual") and hasattr(module, "body"):
            module.skip_add = torch.ao.nn.quantized.FloatFunctional()
            module.forward = types.MethodType(_residual_forward, module)
    body = fuse_modules(body, _conv_bn_pairs(body))
    wrapped = _EagerQuantWrapper(body).eval()
    wrapped.qconfig = get_default_qconfig(engine)
    prepared = prepare(wrapped)
    _calibrate(prepared, batches)
    return convert(prepared).eval()


def convert_int8(model: nn.Module, batches: Iterable, example: torch.Tensor, *, engine: str | None = None,
                 mode: str = "fx") -> tuple[nn.Module, str, str]:
    """torch's int8 model of ``model``, calibrated on ``batches`` (an iterable of images or (images, labels)).

    ``engine``: the quantized engine (default: :func:`select_engine`). ``mode``: "fx" (eager mode when
    FX fails on the model) or "eager". Returns ``(int8 model, engine, mode used)``; the model maps float
    NCHW images to float logits.
    """
    if mode not in ("fx", "eager"):
        raise ValueError(f"mode must be 'fx' or 'eager', got {mode!r}")
    engine = select_engine() if engine is None else select_engine(engine)
    if mode == "fx":
        try:
            return _quiet(convert_fx, model, batches, example, engine), engine, "fx"
        except Exception as exc:  # noqa: BLE001 - any tracing / conversion failure: fall back
            warnings.warn(f"FX graph mode quantization failed ({type(exc).__name__}: {exc}); "
                          f"falling back to eager mode", RuntimeWarning, stacklevel=2)
    return _quiet(convert_eager, model, batches, engine), engine, "eager"


def _quiet(fn, *args):
    # torch.ao.quantization announces its move to torchao (and more) on every call; nothing to act on here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


__all__ = ["ENGINES", "convert_eager", "convert_fx", "convert_int8", "select_engine"]
