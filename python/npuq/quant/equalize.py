"""Cross-layer equalization (CLE), high-bias absorption and bias correction on a prepared
:class:`~npuq.quant.graph.Graph` (the baselines of data-free quantization, Nagel et al., ICCV 2019),
restricted to what leaves the float function unchanged.

CLE divides output channel ``i`` of a layer by ``s_i`` and multiplies the matching input channel of the
next layer by ``s_i`` (``s_i = sqrt(r1_i / r2_i)``), which gives both layers the per-channel range
``sqrt(r1_i r2_i)``. That is exact when nothing or a ReLU sits between the two layers (ReLU is positively
homogeneous). A ReLU6 is not: its clip at 6 would have to move to ``6 / s_i`` per channel. Such pairs are
skipped by default (``relu6="skip"``) and listed in the result with the reason; ``relu6="replace"``
keeps the paper's behaviour (the ReLU6 becomes a ReLU, which changes the float model).

High-bias absorption moves ``c = max(0, beta - 3|gamma|)`` of a ReLU layer's bias into the next layer.
``relu(x) - c == relu(x - c)`` only where ``x >= c``, and a consumer that zero-pads its input would see
``0`` instead of ``-c`` at the border, so absorption is only done into consumers without padding, and,
given calibration data, ``c`` is limited per channel to the smallest pre-activation observed there.

Given calibration batches, :func:`cross_layer_equalize` also runs the float graph before and after and
reports the output SQNR and top-1 agreement; a change beyond float rounding (below ``min_sqnr_db``)
warns (or raises) naming the layers that were changed in a non-exact way.

Bias correction (:func:`empirical_bias_correction`) measures, layer by layer on calibration data, the
mean per output channel of ``y_float - y_quant`` (pre-activation, with the quantized network upstream)
and adds it to the bias. It only uses ``QuantizedWeight.dequantize()``, so it works for every weight
method; it sees border padding; with activation scales it also simulates the int8 activations.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch

from npuq.quant import intmath
from npuq.quant.graph import OBSERVED_KINDS, Graph, Node, apply_activation, run_float_node

RELU6_MODES = ("skip", "replace")


class EqualizationWarning(UserWarning):
    """Cross-layer equalization skipped pairs, or changed the float function of the model."""


class EqualizationError(ValueError):
    """Cross-layer equalization changed the float function beyond ``min_sqnr_db`` (``on_change="raise"``)."""


@dataclass
class EqualizationResult:
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (producer, consumer) paths equalized
    relu6_replaced: list[str] = field(default_factory=list)  # paths whose ReLU6 became a ReLU (opt-in)
    sweeps: int = 0
    absorbed: dict[str, float] = field(default_factory=dict)  # path -> total bias moved to the next layer
    # (producer, consumer, reason) of the pairs left alone because rescaling them would not be exact
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    # (producer, consumer, reason) of equalized pairs where high-bias absorption was not done (or limited)
    absorption_skipped: list[tuple[str, str, str]] = field(default_factory=list)
    absorption_checked: bool = False  # absorbed amounts limited by the pre-activations of calibration data
    dead_channels: dict[str, int] = field(default_factory=dict)  # path -> numerically dead channels not rescaled
    relu6: str = "skip"
    # fidelity of the float graph after vs before (None without calibration batches)
    fidelity_samples: int = 0
    float_sqnr_db: float | None = None
    float_top1_agreement: float | None = None
    float_max_abs_error: float | None = None
    function_changed: bool = False


def _has_padding(node: Node) -> bool:
    return node.kind == "conv" and any(int(p) != 0 for p in node.attrs["padding"])


def _pre_activation(node: Node) -> Node:
    """A shallow copy of ``node`` without its fused activation (same inputs, weights and attributes)."""
    pre = copy.copy(node)
    pre.act = None
    return pre


def _channel_view(t: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (t.dim() - 2)


def _reduce_dims(t: torch.Tensor) -> list[int]:
    return [d for d in range(t.dim()) if d != 1]


def equalizable_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """Consecutive (layer, layer) pairs where the first feeds only the second, through at most a ReLU(6)."""
    pairs = []
    for a in graph.layers():
        users = graph.users(a.name)
        if len(users) != 1 or a.name == graph.output_name:
            continue
        b = users[0]
        if not b.is_layer or b.inputs != [a.name]:
            continue
        if a.kind == "linear" and b.kind != "linear":
            continue
        if b.kind == "linear" and a.kind != "linear":
            continue
        if b.kind == "conv" and b.weight.shape[1] * b.attrs["groups"] != a.out_channels:
            continue
        pairs.append((a, b))
    return pairs


def _input_channel_absmax(b: Node) -> torch.Tensor:
    w = b.weight.double().abs()
    if b.kind == "linear":
        return w.amax(dim=0)
    g = b.attrs["groups"]
    cout, cin_g = w.shape[0], w.shape[1]
    return w.reshape(g, cout // g, cin_g, -1).amax(dim=(1, 3)).reshape(-1)


def _scale_input_channels(b: Node, s: torch.Tensor) -> None:
    w = b.weight.double()
    if b.kind == "linear":
        b.weight = (w * s.reshape(1, -1)).float()
        return
    g = b.attrs["groups"]
    cout, cin_g = w.shape[0], w.shape[1]
    b.weight = (w.reshape(g, cout // g, cin_g, -1) * s.reshape(g, 1, cin_g, 1)).reshape(w.shape).float()


def _input_channel_sums(b: Node) -> torch.Tensor:
    """For each output channel o and input channel i, the sum of the weights connecting them: (C_out, C_in)."""
    w = b.weight.double()
    if b.kind == "linear":
        return w
    g = b.attrs["groups"]
    cout, cin_g = w.shape[0], w.shape[1]
    summed = w.reshape(cout, cin_g, -1).sum(dim=2)  # (C_out, C_in/g)
    full = torch.zeros(cout, cin_g * g, dtype=torch.float64)
    for grp in range(g):
        rows = slice(grp * (cout // g), (grp + 1) * (cout // g))
        full[rows, grp * cin_g : (grp + 1) * cin_g] = summed[rows]
    return full


def cross_layer_equalize(
    graph: Graph,
    *,
    max_sweeps: int = 50,
    tol: float = 1e-4,
    absorb_high_bias: bool = True,
    relu6: str = "skip",
    batches=None,
    min_sqnr_db: float = 60.0,
    on_change: str = "warn",
    dead_ratio: float = 2.0**-16,
) -> EqualizationResult:
    """Equalize ``graph`` in place where that is exact; optionally absorb high biases into the next layer.

    ``relu6``: ``"skip"`` (default) leaves pairs with a ReLU6 between them alone (with an
    :class:`EqualizationWarning` naming them); ``"replace"`` turns that ReLU6 into a ReLU and equalizes
    (the paper's choice; it changes the float model). ``batches``: calibration inputs; with them, high-bias
    absorption is limited to what the data shows to be exact, and the float outputs before and after are
    compared (``result.float_sqnr_db``, ``result.float_top1_agreement``). When the SQNR falls below
    ``min_sqnr_db``, ``on_change="warn"`` warns and ``"raise"`` raises :class:`EqualizationError`.

    Output channels of a producer whose weight range is below ``dead_ratio`` times the layer's largest
    (numerically dead channels, e.g. after batch norm folds a collapsed variance) are not rescaled: their
    output is essentially their bias, and dividing by a tiny ``s_i`` would blow that constant up by
    ``1 / s_i`` in an activation whose int8 scale all channels share (``result.dead_channels``).
    """
    if relu6 not in RELU6_MODES:
        raise ValueError(f"relu6 must be one of {', '.join(map(repr, RELU6_MODES))}, got {relu6!r}")
    if on_change not in ("warn", "raise"):
        raise ValueError(f"on_change must be 'warn' or 'raise', got {on_change!r}")
    batches = list(batches) if batches is not None else []
    with torch.no_grad():
        reference = [graph.run_float(x) for x in batches]
    result = EqualizationResult(relu6=relu6)
    pairs = []
    for a, b in equalizable_pairs(graph):
        if a.act in (None, "relu"):
            pairs.append((a, b))
        elif a.act == "relu6" and relu6 == "replace":
            a.act = "relu"
            result.relu6_replaced.append(a.path)
            pairs.append((a, b))
        elif a.act == "relu6":
            result.skipped.append(
                (
                    a.path,
                    b.path,
                    "ReLU6 between the layers: its clip at 6 does not commute with a per-channel rescaling",
                )
            )
        else:
            result.skipped.append(
                (a.path, b.path, f"activation {a.act!r} between the layers is not positively homogeneous")
            )
    result.pairs = [(a.path, b.path) for a, b in pairs]
    if result.skipped:
        warnings.warn(
            f"cross-layer equalization left {len(result.skipped)} of "
            f"{len(result.skipped) + len(pairs)} layer pair(s) alone because rescaling them would change "
            f"the float function: {_list_pairs(result.skipped)} (relu6='replace' forces the paper's "
            f"ReLU6 -> ReLU replacement)",
            EqualizationWarning,
            stacklevel=2,
        )
    _equalize(pairs, result, max_sweeps, tol, dead_ratio)
    if absorb_high_bias:
        _absorb_high_biases(graph, pairs, result, batches)
    if batches:
        _check_fidelity(graph, batches, reference, result, min_sqnr_db, on_change)
    return result


def _list_pairs(items, limit: int = 8) -> str:
    shown = "; ".join(f"{a} -> {b} ({why})" for a, b, why in items[:limit])
    more = f"; and {len(items) - limit} more (see the result's 'skipped')" if len(items) > limit else ""
    return shown + more


def _equalize(pairs, result: EqualizationResult, max_sweeps: int, tol: float, dead_ratio: float) -> None:
    dead = {}
    for a, _ in pairs:
        r1 = a.weight.double().abs().reshape(a.out_channels, -1).amax(dim=1)
        dead[a.name] = (r1 > 0) & (r1 < dead_ratio * r1.max())
        if bool(dead[a.name].any()):
            result.dead_channels[a.path] = int(dead[a.name].sum())
    for sweep in range(max_sweeps):
        worst = 0.0
        for a, b in pairs:
            r1 = a.weight.double().abs().reshape(a.out_channels, -1).amax(dim=1)
            r2 = _input_channel_absmax(b)
            ok = (r1 > 0) & (r2 > 0) & ~dead[a.name]
            s = torch.ones_like(r1)
            s[ok] = torch.sqrt(r1[ok] / r2[ok])
            shape = (-1,) + (1,) * (a.weight.dim() - 1)
            a.weight = (a.weight.double() / s.reshape(shape)).float()
            a.bias = (a.bias.double() / s).float()
            if a.bn is not None:
                a.bn = ((a.bn[0].double() / s).float(), (a.bn[1].double() / s).float())
            _scale_input_channels(b, s)
            worst = max(worst, float(torch.log(s).abs().max()))
        result.sweeps = sweep + 1
        if worst < tol:
            break


@torch.no_grad()
def _absorb_high_biases(graph: Graph, pairs, result: EqualizationResult, batches: list) -> None:
    candidates = []
    for a, b in pairs:
        if a.act != "relu" or a.bn is None:
            continue
        beta, gamma = a.bn
        c = torch.clamp(beta.double() - 3.0 * gamma.double(), min=0.0)
        if not torch.any(c > 0):
            continue
        if _has_padding(b):
            result.absorption_skipped.append(
                (a.path, b.path, "the consumer zero-pads its input: the border would not see the absorbed shift")
            )
            continue
        candidates.append((a, b, c))
    if not candidates:
        return
    if batches:  # the smallest pre-activation of each channel on the data bounds what can move exactly
        result.absorption_checked = True
        low = {a.name: None for a, _, _ in candidates}
        for x in batches:
            _, env = graph.run_float(x, capture=True)
            for a, _, _ in candidates:
                z = run_float_node(graph, _pre_activation(a), env, x).double()
                m = z.amin(dim=_reduce_dims(z))
                low[a.name] = m if low[a.name] is None else torch.minimum(low[a.name], m)
        limited = []
        for a, b, c in candidates:
            bound = torch.clamp(low[a.name], min=0.0)
            if torch.any(bound < c):
                n = int((bound < c).sum())
                result.absorption_skipped.append(
                    (
                        a.path,
                        b.path,
                        f"limited on {n} channel(s) to the smallest pre-activation seen in the calibration data",
                    )
                )
            limited.append((a, b, torch.minimum(c, bound)))
        candidates = limited
    for a, b, c in candidates:
        if not torch.any(c > 0):
            continue
        beta, gamma = a.bn
        a.bias = (a.bias.double() - c).float()
        a.bn = ((beta.double() - c).float(), gamma)
        b.bias = (b.bias.double() + _input_channel_sums(b) @ c).float()
        result.absorbed[a.path] = float(c.sum())


def output_fidelity(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> dict:
    """SQNR (dB) of ``outputs`` against ``reference``, top-1 agreement (classifier outputs) and the
    largest absolute difference, over matching lists of output batches."""
    signal = noise = 0.0
    agree = total = 0
    worst = 0.0
    for r, o in zip(reference, outputs):
        r64, o64 = r.double(), o.double()
        signal += float((r64**2).sum())
        noise += float(((r64 - o64) ** 2).sum())
        worst = max(worst, float((r64 - o64).abs().max())) if r64.numel() else worst
        if r64.dim() == 2 and r64.shape[1] > 1:
            agree += int((r64.argmax(dim=1) == o64.argmax(dim=1)).sum())
            total += r64.shape[0]
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    return dict(
        sqnr_db=sqnr,
        top1_agreement=agree / total if total else None,
        max_abs_error=worst,
        samples=sum(int(r.shape[0]) for r in reference),
    )


@torch.no_grad()
def _check_fidelity(
    graph: Graph, batches: list, reference: list, result: EqualizationResult, min_sqnr_db: float, on_change: str
) -> None:
    fid = output_fidelity(reference, [graph.run_float(x) for x in batches])
    result.fidelity_samples = fid["samples"]
    result.float_sqnr_db = fid["sqnr_db"]
    result.float_top1_agreement = fid["top1_agreement"]
    result.float_max_abs_error = fid["max_abs_error"]
    if fid["sqnr_db"] >= min_sqnr_db:
        return
    result.function_changed = True
    suspects = [f"{p} (ReLU6 -> ReLU)" for p in result.relu6_replaced]
    suspects += [f"{p} (high bias absorbed)" for p in result.absorbed]
    agree = "" if fid["top1_agreement"] is None else f", top-1 agreement {100 * fid['top1_agreement']:.1f}%"
    msg = (
        f"cross-layer equalization CHANGED the float model: output SQNR {fid['sqnr_db']:.1f} dB against the "
        f"model before (threshold {min_sqnr_db:g} dB){agree} on {fid['samples']} calibration sample(s); "
        f"layers changed in a non-exact way: {', '.join(suspects) if suspects else 'none identified'}"
    )
    if on_change == "raise":
        raise EqualizationError(msg)
    warnings.warn(msg, EqualizationWarning, stacklevel=3)


def input_channel_means(graph: Graph, batches) -> dict[str, torch.Tensor]:
    """Per-input-channel mean of every layer's float input over calibration batches."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    layers = graph.layers()
    for x in batches:
        _, env = graph.run_float(x, capture=True)
        count += x.shape[0]  # weight by samples: a short last batch must not count as a full one
        for n in layers:
            v = env[n.inputs[0]].double()
            m = v.sum(dim=0).mean(dim=(1, 2)) if v.dim() == 4 else v.sum(dim=0)
            sums[n.name] = sums.get(n.name, 0) + m
    if count == 0:
        raise ValueError("bias correction needs calibration data: the calibration loader yielded no batches")
    return {k: v / count for k, v in sums.items()}


def bias_correction(node: Node, quantized_weight: torch.Tensor, input_mean: torch.Tensor) -> torch.Tensor:
    """Bias that cancels the expected output shift ``E[(W_q - W) x]`` caused by weight quantization.

    The input-mean form of the paper's correction: ``E[x]`` per input channel (float network upstream) is
    measured on calibration data instead of derived from the previous batch norm; border padding is
    ignored, as in the paper. :func:`empirical_bias_correction` measures the output error directly.
    """
    err = node.weight.double()
    err = quantized_weight.double() - err
    tmp = Node(name=node.name, kind=node.kind, inputs=node.inputs, path=node.path, weight=err, attrs=node.attrs)
    shift = _input_channel_sums(tmp) @ input_mean.double()
    return (node.bias.double() - shift).float()


# ------------------------------------------------------------------------------ empirical bias correction


@dataclass
class BiasCorrectionResult:
    auto: bool  # applied per layer only where it lowered the layer's output MSE
    activations: bool  # int8 activations simulated (with the calibrated scales)
    samples: int = 0
    # per layer: path, applied, mse_before, mse_after (layer output vs float), mean / max |correction|
    layers: list[dict] = field(default_factory=list)


def _fake_quantize(t: torch.Tensor, qp) -> torch.Tensor:
    """``t`` rounded to its int8 grid exactly as the integer model quantizes, back in float."""
    return intmath.dequantize(intmath.quantize_input(t, qp.scale, qp.zero_point), qp.scale, qp.zero_point)


@torch.no_grad()
def empirical_bias_correction(
    graph: Graph, weights: dict, biases: dict | None, batches, *, auto: bool = False, qparams: dict | None = None
) -> tuple[dict[str, torch.Tensor], BiasCorrectionResult]:
    """Per-output-channel bias correction measured on calibration data, layer by layer.

    For each conv / linear layer in execution order, the float graph gives the reference pre-activation
    ``y`` and the quantized network (``weights[name].dequantize()`` with the biases corrected so far, and,
    with ``qparams``, every activation rounded to its int8 grid) gives ``y_q`` on the same inputs. The mean
    of ``y - y_q`` over samples and positions, per output channel, is added to the layer's bias; so the
    correction covers weight errors of any method, errors propagated from upstream, and border padding.
    With ``auto`` the correction is kept only for the layers whose output MSE (after the activation)
    against the float reference it lowers. Returns the new biases (a new dict) and a report.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("bias correction needs calibration data: the calibration loader yielded no batches")
    biases = dict(biases) if biases is not None else {n.name: n.bias for n in graph.layers()}
    result = BiasCorrectionResult(
        auto=bool(auto), activations=qparams is not None, samples=sum(int(x.shape[0]) for x in batches)
    )
    remaining: dict[str, int] = {}
    for n in graph:
        for i in set(n.inputs):
            remaining[i] = remaining.get(i, 0) + 1
    ref_store: dict[str, list[torch.Tensor]] = {}
    q_store: dict[str, list[torch.Tensor]] = {}
    for node in graph:
        if node.kind == "input":
            ref_vals, q_vals = list(batches), list(batches)
        else:
            ref_envs = [{i: ref_store[i][k] for i in node.inputs} for k in range(len(batches))]
            q_envs = [{i: q_store[i][k] for i in node.inputs} for k in range(len(batches))]
            if node.is_layer:
                ref_vals, q_vals = _correct_layer(
                    graph, node, weights[node.name], biases, batches, ref_envs, q_envs, auto, result
                )
            else:
                ref_vals = [run_float_node(graph, node, e, x) for e, x in zip(ref_envs, batches)]
                q_vals = [run_float_node(graph, node, e, x) for e, x in zip(q_envs, batches)]
            for i in set(node.inputs):
                remaining[i] -= 1
                if remaining[i] == 0 and i != graph.output_name:
                    ref_store.pop(i, None)
                    q_store.pop(i, None)
        if qparams is not None and node.kind in OBSERVED_KINDS and node.name in qparams:
            q_vals = [_fake_quantize(v, qparams[node.name]) for v in q_vals]
        ref_store[node.name], q_store[node.name] = ref_vals, q_vals
    return biases, result


def _correct_layer(graph, node, qw, biases, batches, ref_envs, q_envs, auto, result):
    pre = _pre_activation(node)
    w_q = qw.dequantize()
    ref_pre = [run_float_node(graph, pre, e, x) for e, x in zip(ref_envs, batches)]
    q_pre = [run_float_node(graph, pre, e, x, w_q, biases[node.name]) for e, x in zip(q_envs, batches)]
    total, count = None, 0
    for r, q in zip(ref_pre, q_pre):
        d = (r.double() - q.double()).sum(dim=_reduce_dims(r))
        total = d if total is None else total + d
        count += r.numel() // r.shape[1]
    delta = total / max(count, 1)
    ref_out = [apply_activation(r, node.act) for r in ref_pre]
    plain = [apply_activation(q, node.act) for q in q_pre]
    corrected = [apply_activation(q + delta.to(q.dtype).reshape(_channel_view(q)), node.act) for q in q_pre]
    n_el = sum(r.numel() for r in ref_out)

    def mse(outs):
        return sum(float(((o.double() - r.double()) ** 2).sum()) for o, r in zip(outs, ref_out)) / max(n_el, 1)

    before, after = mse(plain), mse(corrected)
    apply = (after < before) if auto else True
    if apply:
        biases[node.name] = (biases[node.name].double() + delta).float()
    result.layers.append(
        dict(
            path=node.path,
            applied=bool(apply),
            mse_before=before,
            mse_after=after,
            mean_abs_correction=float(delta.abs().mean()),
            max_abs_correction=float(delta.abs().max()),
        )
    )
    return ref_out, corrected if apply else plain


__all__ = [
    "BiasCorrectionResult",
    "EqualizationError",
    "EqualizationResult",
    "EqualizationWarning",
    "RELU6_MODES",
    "bias_correction",
    "cross_layer_equalize",
    "empirical_bias_correction",
    "equalizable_pairs",
    "input_channel_means",
    "output_fidelity",
]
