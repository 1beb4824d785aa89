"""torch's own int8 model of a float network, on the fbgemm engine: the baseline of the emulator benchmark.

:func:`convert_int8` turns a float network (MobileNetV2, EfficientNet-Lite0) into torch's quantized model
with ``torch.ao.quantization``:

* **FX graph mode** (the default): ``prepare_fx`` with ``get_default_qconfig_mapping(engine)`` (conv + BN
  folded, per-channel qint8 weights, quint8 activations with histogram observers), calibration on the
  given batches, ``convert_fx``. The result takes float NCHW images and returns float logits: it
  quantizes its input itself, like ``npuq.Emulator.run`` on float images.
* **eager mode** (the fallback, or ``mode="eager"``): a copy of the model with QuantStub / DeQuantStub
  around it, conv + BN fused, residual additions through ``FloatFunctional``, ``get_default_qconfig``,
  ``prepare`` / calibrate / ``convert``.

**Zero pads** (EfficientNet-Lite's TF-SAME padding is an ``nn.ZeroPad2d`` in front of every
convolution). torch's default backend configuration has no quantized pattern for ``ZeroPad2d``, so as
traced (``pads="keep"``) every pad runs in float between a ``dequantize`` and a ``quantize_per_tensor``:
49 float round trips per image that npuq does not pay (``npuq.quant.prepare`` folds the pads into the
convolutions). :func:`prepare_pads` gives torch the same treatment, leaving the float function unchanged:

* ``pads="fold"`` (the default): every per-axis symmetric pad moves into the padding of the convolution
  after it (the 1x1 convolutions' empty pads disappear). The asymmetric ones that remain (stride 2 on
  an even input) are declared to torch as ops that share their input's quantization parameters
  (:func:`backend_config_with_pads`); ``convert_fx`` still wraps them in ``dequantize`` /
  ``quantize_per_tensor`` (its lowering knows a fixed list of ops that run on quantized tensors), so
  :func:`drop_requantization` then removes that round trip: with the same scale and zero point on both
  sides it is the identity, and torch's quantized ``ZeroPad2d`` pads with the zero point, i.e. with the
  real value 0. What stays is a stride-2 convolution with padding 0 on an odd-sized input, and for a
  depthwise one fbgemm then leaves its fast depthwise kernel for a generic path that is 10-50 times
  slower (measured per layer; it dominates the int8 model's time on EfficientNet-Lite0).
* ``pads="stride1"``: as "fold", and each depthwise stride-2 convolution behind an asymmetric pad
  (before, after) with after - before in {0, 1} is computed at stride 1 with symmetric padding
  ``after`` and then subsampled, ``y[..., d::2, d::2]`` with ``d = after - before`` (:class:`Subsample2d`,
  after its batch norm and ReLU6, which act per element): the same outputs, four times the depthwise
  arithmetic of those layers, and fbgemm's fast kernel. A hand rewrite, not what FX gives.

Networks without pads convert the same in every mode.

:func:`select_engine` sets ``torch.backends.quantized.engine`` to fbgemm, or x86 when fbgemm is not
available (x86 is fbgemm plus onednn behind one name), and says which one it got.

Needs torch only (the model and the calibration batches come from the caller).
"""

from __future__ import annotations

import copy
import itertools
import operator
import types
import warnings
from collections.abc import Iterable

import torch
from torch import nn

ENGINES = ("fbgemm", "x86")
PADS = ("fold", "stride1", "keep")


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


class Subsample2d(nn.Module):
    """``x[:, :, offset::2, offset::2]``: the stride-2 outputs of a stride-1 convolution."""

    def __init__(self, offset: int):
        super().__init__()
        self.offset = int(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.offset :: 2, self.offset :: 2]

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


def fold_zero_pads(model: nn.Module) -> tuple[nn.Module, int, int]:
    """A copy of ``model`` in which every ``nn.ZeroPad2d`` directly followed by an ``nn.Conv2d`` in an
    ``nn.Sequential`` and padding the same amount on both sides of each axis is folded into that
    convolution's padding (the pad becomes an ``nn.Identity``). Returns ``(copy, folded, kept)``:
    ``kept`` counts the zero pads left in place (asymmetric ones, or pads not in front of a convolution).
    The copy computes the same function (a zero pad then an unpadded convolution is the padded
    convolution)."""
    out = copy.deepcopy(model)
    folded = 0
    for seq, i, pad, conv in _pad_conv_pairs(out):
        left, right, top, bottom = pad.padding
        if left != right or top != bottom:
            continue
        conv.padding = (conv.padding[0] + top, conv.padding[1] + left)
        seq[i] = nn.Identity()
        folded += 1
    kept = sum(isinstance(m, nn.ZeroPad2d) for m in out.modules())
    return out, folded, kept


def depthwise_stride1(model: nn.Module) -> tuple[nn.Module, int]:
    """Rewrite (in place) every ``ZeroPad2d(before, after) -> depthwise Conv2d(stride 2, padding 0)`` in an
    ``nn.Sequential`` with the same (before, after) on both axes and ``after - before`` in {0, 1} into the
    convolution at stride 1 with padding ``after`` and a :class:`Subsample2d` at the end of the
    sequence (which must hold only per-element or per-channel modules after the convolution: batch
    norm, ReLU / ReLU6 / Hardtanh, Identity). Output ``i`` of the stride-2 convolution reads inputs
    ``2i - before .. 2i - before + k - 1``; output ``m = 2i + after - before`` of the stride-1 one reads
    ``m - after ..``, the same ones, with zeros wherever the original padding had them. Returns
    ``(model, rewritten)``."""
    done = 0
    for seq, i, pad, conv in _pad_conv_pairs(model):
        left, right, top, bottom = pad.padding
        if (
            (left, right) != (top, bottom)
            or right - left not in (0, 1)
            or tuple(conv.stride) != (2, 2)
            or tuple(conv.padding) != (0, 0)
            or conv.groups != conv.in_channels
            or conv.groups == 1
            or tuple(conv.dilation) != (1, 1)
        ):
            continue
        rest = list(seq)[i + 2 :]
        if not all(isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity)) for m in rest):
            continue
        conv.stride, conv.padding = (1, 1), (right, right)
        seq[i] = nn.Identity()
        seq.append(Subsample2d(right - left))
        done += 1
    return model, done


def _pad_conv_pairs(model: nn.Module):
    """(sequence, index, ZeroPad2d, Conv2d) for each zero pad directly followed by a zero-padded conv."""
    pairs = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            pad, conv = seq[i], seq[i + 1]
            if (
                isinstance(pad, nn.ZeroPad2d)
                and isinstance(conv, nn.Conv2d)
                and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple)
            ):
                pairs.append((seq, i, pad, conv))
    return pairs


def prepare_pads(model: nn.Module, pads: str = "fold") -> tuple[nn.Module, dict]:
    """A copy of ``model`` with its zero pads treated as ``pads`` says (see the module doc), and what was
    done: ``{"mode", "folded_into_conv", "depthwise_stride1", "kept"}`` (``kept``: zero pads left)."""
    if pads not in PADS:
        raise ValueError(f"pads must be one of {', '.join(PADS)}, got {pads!r}")
    if pads == "keep":
        out = copy.deepcopy(model)
        return out, {
            "mode": pads,
            "folded_into_conv": 0,
            "depthwise_stride1": 0,
            "kept": sum(isinstance(m, nn.ZeroPad2d) for m in out.modules()),
        }
    out, folded, _ = fold_zero_pads(model)
    strided = depthwise_stride1(out)[1] if pads == "stride1" else 0
    kept = sum(isinstance(m, nn.ZeroPad2d) for m in out.modules())
    return out, {"mode": pads, "folded_into_conv": folded, "depthwise_stride1": strided, "kept": kept}


def backend_config_with_pads():
    """The backend configuration ``prepare_fx`` / ``convert_fx`` use by default (torch's native one, for
    fbgemm and x86 alike) plus ``nn.ZeroPad2d`` and ``operator.getitem`` (:class:`Subsample2d`'s
    slicing) as quantized ops whose output shares its input's quantization parameters (like ReLU or
    max pooling in torch's own table)."""
    import torch.ao.quantization.backend_config.utils  # noqa: F401 - some torch builds need it imported first
    from torch.ao.quantization.backend_config import (
        BackendPatternConfig,
        DTypeConfig,
        ObservationType,
        get_native_backend_config,
    )

    int8 = DTypeConfig(input_dtype=torch.quint8, output_dtype=torch.quint8)
    config = get_native_backend_config()
    for op in _SAME_QPARAMS_OPS:
        config.set_backend_pattern_config(
            BackendPatternConfig(op)
            .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
            .set_dtype_configs([int8])
        )
    return config


def drop_requantization(gm: torch.fx.GraphModule) -> int:
    """Rewrite ``dequantize -> op -> quantize_per_tensor`` in a converted model, for the ops of
    :data:`_SAME_QPARAMS_OPS` (zero pad, slicing), into the op on the quantized tensor, where the
    quantization after the op has the same scale and zero point as the tensor before it (then the
    round trip is the identity). Returns how many it rewrote (the graph is recompiled when any)."""
    modules = dict(gm.named_modules())
    done = 0
    for node in list(gm.graph.nodes):
        if not _is_same_qparams_op(node, modules, _SAME_QPARAMS_OPS):
            continue
        dq, users = node.args[0], list(node.users)
        if not (
            isinstance(dq, torch.fx.Node)
            and dq.op == "call_method"
            and dq.target == "dequantize"
            and len(users) == 1
            and users[0].target is torch.quantize_per_tensor
        ):
            continue
        q = users[0]
        before = _qparams_of(gm, modules, dq.args[0])
        if before is None or before != _qparams_of(gm, modules, q):
            continue
        node.args = (dq.args[0],) + tuple(node.args[1:])
        q.replace_all_uses_with(node)
        gm.graph.erase_node(q)
        if not dq.users:
            gm.graph.erase_node(dq)
        done += 1
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return done


# ops that torch runs on quantized tensors, keeping the scale and zero point, but that its FX lowering
# does not know as such
_SAME_QPARAMS_OPS = (nn.ZeroPad2d, operator.getitem)


def _is_same_qparams_op(node, modules: dict, ops) -> bool:
    if not isinstance(node, torch.fx.Node):
        return False
    if node.op == "call_module":
        return any(isinstance(modules.get(node.target), op) for op in ops if isinstance(op, type))
    return node.op == "call_function" and any(node.target is op for op in ops if not isinstance(op, type))


# what keeps its input's scale and zero point in a converted model
_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity, nn.MaxPool2d, nn.ZeroPad2d, operator.getitem)


def _qparams_of(gm: torch.fx.GraphModule, modules: dict, node) -> tuple | None:
    """(scale, zero point) of a quantized tensor made by ``node``: a ``quantize_per_tensor`` with
    attribute arguments or a quantized module, looking through the ops that keep their input's
    quantization (ReLU6 after a convolution, ...); None when it cannot be told."""
    while _is_same_qparams_op(node, modules, _PASS_THROUGH):
        node = node.args[0]
    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "call_function" and node.target is torch.quantize_per_tensor:
        vals = []
        for a in node.args[1:3]:
            if not (isinstance(a, torch.fx.Node) and a.op == "get_attr"):
                return None
            vals.append(float(getattr(gm, a.target)))
        return tuple(vals)
    if node.op == "call_module":
        mod = modules.get(node.target)
        if hasattr(mod, "scale") and hasattr(mod, "zero_point"):
            return float(mod.scale), float(mod.zero_point)
    return None


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


def convert_fx(
    model: nn.Module, batches: Iterable, example: torch.Tensor, engine: str, pads: str = "fold"
) -> nn.Module:
    """FX graph mode: prepare_fx / calibrate / convert_fx with the default qconfig mapping of ``engine``
    (zero pads: see the module doc)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx as _convert_fx
    from torch.ao.quantization.quantize_fx import prepare_fx

    float_model, info = prepare_pads(model, pads)
    float_model.eval()
    # torch's own backend configuration, unless ops remain that it would run in float between a
    # dequantize and a quantize
    quantize_more = pads != "keep" and (info["kept"] or info["depthwise_stride1"])
    extra = {"backend_config": backend_config_with_pads()} if quantize_more else {}
    prepared = prepare_fx(float_model, get_default_qconfig_mapping(engine), example_inputs=(example,), **extra)
    _calibrate(prepared, batches)
    converted = _convert_fx(prepared, **extra).eval()
    if quantize_more:
        drop_requantization(converted)
    return converted


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


def convert_int8(
    model: nn.Module,
    batches: Iterable,
    example: torch.Tensor,
    *,
    engine: str | None = None,
    mode: str = "fx",
    pads: str = "fold",
) -> tuple[nn.Module, str, str]:
    """torch's int8 model of ``model``, calibrated on ``batches`` (an iterable of images or (images, labels)).

    ``engine``: the quantized engine (default: :func:`select_engine`). ``mode``: "fx" (eager mode when
    FX fails on the model) or "eager". ``pads`` (FX only): "fold", "stride1" or "keep" (module doc).
    Returns ``(int8 model, engine, mode used)``; the model maps float NCHW images to float logits.
    """
    if mode not in ("fx", "eager"):
        raise ValueError(f"mode must be 'fx' or 'eager', got {mode!r}")
    engine = select_engine() if engine is None else select_engine(engine)
    if mode == "fx":
        try:
            return _quiet(convert_fx, model, batches, example, engine, pads), engine, "fx"
        except Exception as exc:  # noqa: BLE001 - any tracing / conversion failure: fall back
            warnings.warn(
                f"FX graph mode quantization failed ({type(exc).__name__}: {exc}); falling back to eager mode",
                RuntimeWarning,
                stacklevel=2,
            )
    return _quiet(convert_eager, model, batches, engine), engine, "eager"


def _quiet(fn, *args):
    # torch.ao.quantization announces its move to torchao (and more) on every call; nothing to act on here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


__all__ = [
    "ENGINES",
    "PADS",
    "Subsample2d",
    "backend_config_with_pads",
    "convert_eager",
    "convert_fx",
    "convert_int8",
    "depthwise_stride1",
    "drop_requantization",
    "fold_zero_pads",
    "prepare_pads",
    "select_engine",
]
