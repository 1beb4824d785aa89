"""`npuq.quantize`: a torch model and calibration data in, a quantized model and its report out."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from npuq import evaluation
from npuq._validate import OVERFLOW_POLICIES, ROUNDING_MODES
from npuq.methods import ACTIVATION_METHODS, WEIGHT_METHODS  # re-exported
from npuq.quant.bias_range import BiasRangeWarning, fit_biases
from npuq.quant.equalize import RELU6_MODES, EqualizationResult, cross_layer_equalize, empirical_bias_correction
from npuq.quant.graph import OBSERVED_KINDS, Graph, prepare
from npuq.quant.layerwise import LAYER_INPUTS, quantize_graph_data_aware, resolve_adaround
from npuq.quant.observers import QParams, make_observer
from npuq.quant.simulate import QuantizedModel
from npuq.quant.weights import QuantizedWeight, _quantizer, per_channel_ranges, quantize_weight, weight_sqnr_db
from npuq.registry import ACTIVATION_OBSERVERS, WEIGHT_QUANTIZERS


@dataclass
class LayerReport:
    path: str
    kind: str
    depthwise: bool
    shape: list[int]
    method: str
    bits: int
    layer_scale: float | None
    channel_scale_min: float
    channel_scale_max: float
    shift_histogram: list[int]  # counts of s_c = 0 .. 15
    sqnr_db: float  # weight SQNR of the chosen method
    sqnr_per_layer_db: float  # weight SQNR of plain per-layer quantization at the same bits
    range_ratio: float  # max / min of the per-channel ranges max|W_c| (non-zero channels)
    zero_channels: int
    output_scale: float | None = None
    output_zero_point: int | None = None


@dataclass
class QuantReport:
    config: dict
    layers: list[LayerReport] = field(default_factory=list)
    equalization: dict | None = None
    activations: dict[str, dict] = field(default_factory=dict)
    float_ops: list[str] = field(default_factory=list)
    # channels whose weight scale was coarsened (or bias saturated) to keep the int32 bias exact, one dict
    # per channel (npuq.quant.bias_range.BiasAdjustment)
    bias_adjustments: list[dict] = field(default_factory=list)
    # per pass ("weights", then "activations" in integer mode): npuq.quant.equalize.BiasCorrectionResult
    bias_correction: dict | None = None

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "layers": [asdict(r) for r in self.layers],
            "equalization": self.equalization,
            "activations": self.activations,
            "float_ops": self.float_ops,
            "bias_adjustments": self.bias_adjustments,
            "bias_correction": self.bias_correction,
        }

    def save_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))

    def shift_histogram(self) -> list[int]:
        total = [0] * 16
        for r in self.layers:
            total = [a + b for a, b in zip(total, r.shift_histogram)]
        return total

    def to_markdown(self) -> str:
        head = (
            "| layer | kind | shape | scale | shifts used (s: count) | SQNR per-layer dB | SQNR dB | "
            "range max/min |\n|---|---|---|---|---|---|---|---|"
        )
        rows = []
        for r in self.layers:
            shifts = ", ".join(f"{s}:{c}" for s, c in enumerate(r.shift_histogram) if c) or "-"
            scale = (
                f"{r.layer_scale:.3g}"
                if r.layer_scale is not None
                else f"{r.channel_scale_min:.2g}..{r.channel_scale_max:.2g}"
            )
            kind = "depthwise" if r.depthwise else r.kind
            rows.append(
                f"| {r.path} | {kind} | {'x'.join(map(str, r.shape))} | {scale} | {shifts} | "
                f"{r.sqnr_per_layer_db:.1f} | {r.sqnr_db:.1f} | {r.range_ratio:.3g} |"
            )
        table = "\n".join([head, *rows])
        adjusted = self.bias_adjustments_markdown()
        return f"{table}\n\n{adjusted}" if adjusted else table

    def bias_adjustments_markdown(self) -> str:
        """The channels changed by the bias policy, one row each ("" when there are none)."""
        if not self.bias_adjustments:
            return ""
        head = (
            "Bias range: channels whose int32 bias did not fit (docs/quantization.md)\n\n"
            "| layer | channel | action | reason | scale before | scale after | shift before | shift after | "
            "bias | int32 bias needed | int32 bias |\n|---|---|---|---|---|---|---|---|---|---|---|"
        )
        rows = [
            f"| {a['layer']} | {a['channel']} | {a['action']} | {a['reason']} | {a['old_scale']:.3g} | "
            f"{a['new_scale']:.3g} | {a['old_shift']} | {a['new_shift']} | {a['bias']:.4g} | "
            f"{a['bias_q_needed']:.4g} | {a['bias_q']} |"
            for a in self.bias_adjustments
        ]
        return "\n".join([head, *rows])


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _choice(value, name: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def calibration_batches(
    loader, n_batches: int | None, expected_shape: tuple[int, ...] | None = None
) -> list[torch.Tensor]:
    """The first ``n_batches`` input tensors of ``loader`` (batches may be tensors or (input, label) pairs)."""
    if loader is None:
        raise ValueError("calibration data is required: pass calib_loader (an iterable of input batches)")
    if n_batches is not None and (not isinstance(n_batches, int) or isinstance(n_batches, bool) or n_batches < 1):
        raise ValueError(f"calib_batches must be a positive int or None (all batches), got {n_batches!r}")
    batches = []
    for i, batch in enumerate(loader):
        if n_batches is not None and i >= n_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(batch, dict):
            raise TypeError("calibration batches must be tensors or (input, label) pairs, got a dict")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration batch {i} is a {type(x).__name__}, expected a torch tensor")
        if not x.is_floating_point():
            raise TypeError(
                f"calibration batch {i} has dtype {x.dtype}; expected float inputs (as the model sees them)"
            )
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"calibration batch {i} has shape {tuple(x.shape)}; expected (batch, ...) with batch >= 1")
        ref = expected_shape if expected_shape is not None else (tuple(batches[0].shape[1:]) if batches else None)
        if ref is not None and tuple(x.shape[1:]) != tuple(ref):
            raise ValueError(f"calibration batch {i} has per-sample shape {tuple(x.shape[1:])}, expected {tuple(ref)}")
        if not torch.all(torch.isfinite(x)):
            raise ValueError(f"calibration batch {i} contains NaN or infinite values")
        batches.append(x.detach().float())
    if not batches:
        raise ValueError("the calibration loader yielded no batches")
    return batches


def quantize_graph_weights(graph: Graph, method: str, bits: int, shift_bits: int) -> dict[str, QuantizedWeight]:
    out = {}
    for node in graph.layers():
        out[node.name] = quantize_weight(node.weight, method, bits, shift_bits=shift_bits, name=node.path)
    return out


def layer_reports(graph: Graph, weights: dict[str, QuantizedWeight], bits: int) -> list[LayerReport]:
    rows = []
    for node in graph.layers():
        qw = weights[node.name]
        w = node.weight
        ranges = per_channel_ranges(w)
        nz = ranges[ranges > 0]
        ratio = float(nz.max() / nz.min()) if nz.numel() else float("nan")
        plain = quantize_weight(w, "per_layer", bits, name=node.path)
        hist = torch.bincount(qw.shift.to(torch.int64), minlength=16)[:16].tolist()
        rows.append(
            LayerReport(
                path=node.path,
                kind=node.kind,
                depthwise=node.is_depthwise,
                shape=list(w.shape),
                method=qw.method,
                bits=bits,
                layer_scale=qw.layer_scale,
                channel_scale_min=float(qw.channel_scale.min()),
                channel_scale_max=float(qw.channel_scale.max()),
                shift_histogram=hist,
                sqnr_db=weight_sqnr_db(w, qw.dequantize()),
                sqnr_per_layer_db=weight_sqnr_db(w, plain.dequantize()),
                range_ratio=ratio,
                zero_channels=int((ranges == 0).sum()),
            )
        )
    return rows


def calibrate(
    model: QuantizedModel, batches: list[torch.Tensor], kind: str, progress: bool = False, **observer_kwargs
) -> dict[str, QParams]:
    """Observe every node output of the weight-quantized float model and choose int8 scales."""
    graph = model.graph
    observers = {n.name: make_observer(kind, name=n.path, **observer_kwargs) for n in graph if n.kind in OBSERVED_KINDS}
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=f"calibrating ({kind})", unit="batch", leave=False)
    for x in it:
        _, env = model.run_weight_only(x, capture=True)
        for name, obs in observers.items():
            obs.update(env[name])
    qparams: dict[str, QParams] = {}
    for node in graph:
        if node.name in observers:
            qparams[node.name] = observers[node.name].compute()
        else:  # pooling, flatten and the output keep their input's scale and zero point
            qparams[node.name] = qparams[node.inputs[0]]
    return qparams


def quantize(
    model: nn.Module | Graph,
    calib_loader: Iterable | None = None,
    *,
    weights: str = "wess",
    bits: int = 8,
    activations: str | None = "mse",
    calib_batches: int | None = 8,
    shift_bits: int = 4,
    cle: bool = False,
    absorb_high_bias: bool | None = None,
    bias_correction: bool | str = False,
    rounding: str = "double",
    overflow: str = "raise",
    unsupported: str = "error",
    example_input: torch.Tensor | None = None,
    progress: bool = False,
    cle_relu6: str = "skip",
    adaround=False,
    layer_inputs: str = "quantized",
) -> QuantizedModel:
    """Post-training quantization of ``model`` for the NPU.

    Parameters
    ----------
    model : a torch module (traced with torch.fx) or a :class:`~npuq.quant.graph.Graph` already prepared
        with :func:`npuq.quant.prepare` (not modified; reuse it to quantize one model many ways).
    calib_loader : iterable of input batches (tensors or ``(input, label)`` pairs). Needed for activation
        calibration, bias correction, and to trace a module when ``example_input`` is not given.
    weights : ``"per_layer"``, ``"per_channel"``, ``"wess"`` (4-bit shift per output channel, one scale per
        layer), ``"wess_mse"`` (shifts and layer scale minimizing the weight quantization error) or
        ``"wess_output"`` (the WESS grid minimizing the error of each layer's output on the calibration
        data, :mod:`npuq.quant.data_aware`; needs ``calib_loader``).
    bits : weight bits, 2..8 (activations are always int8).
    activations : ``None`` for weight-only quantization (float activations), else the observer that
        chooses the int8 activation ranges: ``"minmax"``, ``"percentile"``, ``"mse"``, ``"kl"``.
    calib_batches : how many batches of ``calib_loader`` to use (``None``: all).
    shift_bits : width of the WESS shift, 0..4 (the NPU stores 4 bits per channel).
    cle, absorb_high_bias : cross-layer equalization and high-bias absorption (default: on with CLE) of
        Nagel et al. 2019, restricted to the layer pairs where they leave the float function unchanged
        (``docs/quantization.md``); the float fidelity is in ``report.equalization``.
    cle_relu6 : ``"skip"`` (default) leaves pairs with a ReLU6 between them unequalized; ``"replace"``
        turns those ReLU6 into ReLU first (the paper's choice; it changes the float model, and warns).
    bias_correction : ``False``, ``True`` (per output channel, the mean error of each layer measured on
        the calibration data with the quantized network upstream is added to its bias) or ``"auto"`` (the
        same, kept only for the layers whose output error it lowers). Composes with every weight method.
    rounding : requantization rounding, ``"double"`` (TFLite, default) or ``"single"``.
    overflow : accumulator overflow policy, ``"raise"``, ``"saturate"`` or ``"wrap"``. Biases that do not
        fit int32 get a coarser weight scale in their channel (``report.bias_adjustments``); where that is
        not possible, ``"raise"`` raises and the other policies saturate the bias with a warning.
    unsupported : ``"error"`` (default) refuses ops the NPU cannot run and lists them; ``"float"`` keeps
        them in float between a dequantize and a quantize (simulation only: such a model cannot be
        compiled for the NPU).
    adaround : ``False`` (round to nearest), ``True`` or an :class:`npuq.quant.adaround.AdaRoundConfig`:
        after the weight method has chosen the grid, choose each weight's rounding (down or up) to minimize
        its layer's output error on the calibration data. The grid (scales, shifts) and the range
        ``[-qmax, qmax]`` are unchanged, so the NPU cost is that of ``weights``. Needs ``calib_loader``.
    layer_inputs : where ``weights="wess_output"`` and ``adaround`` take each layer's calibration inputs:
        ``"quantized"`` (default; layer by layer, through the already-quantized layers in front, matching
        the float model's output) or ``"float"`` (from the float model; less memory). See
        :mod:`npuq.quant.adaround`.
    """
    # the registries at call time, not the name lists of import time: a quantizer or observer registered
    # since is usable
    _choice(weights, "weights", WEIGHT_QUANTIZERS.names())
    _choice(activations, "activations", (None, *ACTIVATION_OBSERVERS.names()))
    _choice(rounding, "rounding", ROUNDING_MODES)
    _choice(overflow, "overflow", OVERFLOW_POLICIES)
    _choice(unsupported, "unsupported", ("error", "float"))
    _choice(bias_correction, "bias_correction", (False, True, "auto"))
    _choice(cle_relu6, "cle_relu6", RELU6_MODES)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    if not isinstance(shift_bits, int) or isinstance(shift_bits, bool) or not 0 <= shift_bits <= 4:
        raise ValueError(
            f"shift_bits must be an int in [0, 4] (the NPU stores 4 bits of shift per channel), got {shift_bits!r}"
        )
    ada = resolve_adaround(adaround)
    _choice(layer_inputs, "layer_inputs", LAYER_INPUTS)
    data_aware = _quantizer(weights)[1] or ada is not None
    needs_data = (
        activations is not None
        or bias_correction
        or data_aware
        or (not isinstance(model, Graph) and example_input is None)
    )
    batches = None
    if isinstance(model, Graph):
        graph = model.clone()
    elif isinstance(model, nn.Module):
        if needs_data:
            batches = calibration_batches(
                calib_loader, calib_batches, tuple(example_input.shape[1:]) if example_input is not None else None
            )
        graph = prepare(model, example_input if example_input is not None else batches[0])
    else:
        raise TypeError(f"model must be a torch.nn.Module or a prepared npuq Graph, got {type(model).__name__}")
    if batches is None and (needs_data or (cle and calib_loader is not None)):
        batches = calibration_batches(calib_loader, calib_batches, graph.input_shape)
    if batches is not None and tuple(batches[0].shape[1:]) != tuple(graph.input_shape):
        raise ValueError(
            f"calibration batches have per-sample shape {tuple(batches[0].shape[1:])}, the model was "
            f"prepared for {tuple(graph.input_shape)}"
        )
    if unsupported == "error":
        graph.check_supported(
            " Pass unsupported='float' to keep them in float (simulation only; such a model "
            "cannot be compiled for the NPU)."
        )
    eq = None
    if cle:
        eq = cross_layer_equalize(
            graph,
            absorb_high_bias=True if absorb_high_bias is None else absorb_high_bias,
            relu6=cle_relu6,
            batches=batches,
        )
    if data_aware:
        qweights = quantize_graph_data_aware(
            graph,
            batches,
            weights,
            bits,
            shift_bits,
            adaround=ada,
            layer_inputs=layer_inputs,
            centered=bool(bias_correction),
            progress=progress,
        )
    else:
        qweights = quantize_graph_weights(graph, weights, bits, shift_bits)
    biases = {n.name: n.bias for n in graph.layers()}
    corrections = {}
    if bias_correction:  # first with float activations (the weight-only model, calibrated next)
        biases, bc = empirical_bias_correction(graph, qweights, biases, batches, auto=bias_correction == "auto")
        corrections["weights"] = asdict(bc)
    config = dict(
        model=graph.model_name,
        weights=weights,
        bits=bits,
        activations=activations,
        calib_batches=len(batches) if batches else 0,
        shift_bits=shift_bits,
        cle=cle,
        absorb_high_bias=bool(cle and (absorb_high_bias is None or absorb_high_bias)),
        bias_correction=bias_correction,
        rounding=rounding,
        overflow=overflow,
        unsupported=unsupported,
        cle_relu6=cle_relu6,
        adaround=asdict(ada) if ada is not None else False,
        layer_inputs=layer_inputs if data_aware else None,
    )
    report = QuantReport(
        config=config,
        layers=layer_reports(graph, qweights, bits),
        equalization=asdict(eq) if isinstance(eq, EqualizationResult) else None,
        float_ops=[n.describe() for n in graph.unsupported()],
        bias_correction=corrections or None,
    )
    qmodel = QuantizedModel(graph, qweights, biases, None, rounding=rounding, overflow=overflow, report=report)
    if activations is None:
        return qmodel
    qparams = calibrate(qmodel, batches, activations, progress=progress)
    if bias_correction:  # again with the int8 activations simulated at the calibrated scales
        biases, bc = empirical_bias_correction(
            graph, qweights, biases, batches, auto=bias_correction == "auto", qparams=qparams
        )
        corrections["activations"] = asdict(bc)
    # the int32 bias policy (npuq.quant.bias_range): needs the input scales, so it runs after calibration
    fit = fit_biases(graph, qweights, biases, qparams, overflow=overflow)
    if fit.adjustments:
        qweights, biases = fit.weights, fit.biases
        report.layers = layer_reports(graph, qweights, bits)
        report.bias_adjustments = [asdict(a) for a in fit.adjustments]
        saturated = sum(a.action == "saturated" for a in fit.adjustments)
        warnings.warn(
            f"{len(fit.adjustments)} output channel(s) in {len(fit.changed_layers)} layer(s) had a bias that does not "
            f"fit int32 at their weight scale ({', '.join(fit.changed_layers[:5])}"
            f"{', ...' if len(fit.changed_layers) > 5 else ''}): {len(fit.adjustments) - saturated} got a coarser "
            f"weight scale (bias kept exact), {saturated} a saturated bias; see report.bias_adjustments",
            BiasRangeWarning,
            stacklevel=2,
        )
    qmodel = QuantizedModel(graph, qweights, biases, qparams, rounding=rounding, overflow=overflow, report=report)
    by_path = {n.path: n.name for n in graph.layers()}
    for row in report.layers:
        q = qparams[by_path[row.path]]
        row.output_scale, row.output_zero_point = q.scale, q.zero_point
    report.activations = {
        n.path: {"scale": qparams[n.name].scale, "zero_point": qparams[n.name].zero_point}
        for n in graph
        if n.name in qparams and n.kind in OBSERVED_KINDS
    }
    return qmodel


def evaluate(model, loader, *, progress: bool = False, desc: str = "evaluating") -> float:
    """Top-1 accuracy of ``model`` (a torch module or a QuantizedModel, put in eval mode and then restored,
    or any callable) over ``loader`` of (input, label); see :func:`npuq.evaluation.top1_accuracy`."""
    return evaluation.top1_accuracy(model, loader, progress=progress, desc=desc)


__all__ = [
    "ACTIVATION_METHODS",
    "LayerReport",
    "QuantReport",
    "WEIGHT_METHODS",
    "calibrate",
    "calibration_batches",
    "evaluate",
    "quantize",
    "quantize_graph_weights",
]
