"""An npuq program as an int8 TFLite model whose reference kernels compute the program's integers.

``program_to_tflite(program)`` writes one TFLite op (or a PAD and the op) per program op: its output
tensor carries the op's name, scale and zero point, so after a run every program value can be read back
by name. The model's input is int8 NHWC ``[1, H, W, C]`` (or ``[1, K]``) with the program input's scale
and zero point; its output is the output op's int8 values.

TFLite stores no integer parameters: its kernels derive them from the float32 scales of the tensors,
``QuantizeMultiplier(double(s_in) * double(s_w[c]) / double(s_out))`` for a conv / fully-connected
channel, the three scales of an add, and so on. npuq derives its parameters from float64 activation
scales (only the program input's scale is a float32 value), so two things stand between a compiled
program and an exact TFLite model:

* a layer's multiplier: each filter scale ``s_w[c]`` is chosen such that TFLite's derivation gives back
  the program's ``(M0, exponent - shift[c])`` (the float32 nearest to the real multiplier times
  ``s_out / s_in`` and its neighbours are tried). A float32 step of ``s_w`` moves the real multiplier by
  2^-24 to 2^-23 of itself, about 128 steps of a 31-bit ``M0``, so only about one multiplier in a hundred
  has such a scale;
* the parameters TFLite derives from activation scales alone (add, mul, mean, the ReLU6 clamp): they come
  out of the float32 scales, npuq's out of the float64 ones, and differ in the last bits of ``M0``.

``multipliers="exact"`` (the default) refuses both, naming the op; ``multipliers="nearest"`` writes the
float32 filter scales whose multipliers are nearest (within about 2^-24 of the program's, relative) and
the rounded activation scales, which changes an output only where a value lands that close to a rounding
boundary. :func:`snap_to_tflite` returns the program re-derived from float32 scales the way TFLite derives
it (float32 activation scales, the nearest expressible layer multipliers, add / mul / mean / concat
parameters and ReLU6 clamps from the float32 scales): that program exports exactly.

Two kernels of LiteRT's reference kernels have their own rounding, which npuq reproduces by an op
attribute (docs/arithmetic.md 15, 16): FULLY_CONNECTED rescales its accumulator in double precision and
rounds once (``tflite_rescale``; a layer without it is written all the same, and LiteRT's outputs then
differ from the program's by one step on a fraction of a percent of the values), and MEAN folds 1 / count
into its multiplier (``tflite_rounding``; a mean without it, npuq's own rounding, has no TFLite form and
is refused). :func:`snap_to_tflite` gives both their TFLite form.

Everything else is checked against what TFLite's kernels can do (fused activations, SAME / VALID padding
or an explicit pad, depthwise groups, scale-preserving pooling, byte-copying concatenation); anything TFLite
would compute differently raises ``ValueError`` naming the op.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from npuq.fixedpoint import MultiplierFlushedWarning, quantize_multipliers
from npuq.interop import tflite_math as tm
from npuq.npu.program import Op, Program

# Search radius (float32 steps either way) around the filter scale nearest the real multiplier.
_SEARCH_STEPS = 256
MULTIPLIER_MODES = ("exact", "nearest")
SUPPORTED_KINDS = (
    "conv2d",
    "fully_connected",
    "add",
    "avg_pool2d",
    "global_avg_pool",
    "max_pool2d",
    "flatten",
    "mean",
    "mul",
    "concat",
    "pad",
)


class TFLiteExportError(ValueError):
    """The program holds something TFLite's int8 kernels would compute differently; the message names
    the op."""


# ------------------------------------------------------------------------------ float32 scale search
def _f32(v) -> np.float32:
    return np.float32(v)


def _tflite_multipliers(s_in: np.float32, s_w: np.ndarray, s_out: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(M0, exponent) of TFLite's per-channel derivation from float32 scales."""
    real = np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultiplierFlushedWarning)
        m0, e = quantize_multipliers(real)
    return np.asarray(m0, np.int64), np.asarray(e, np.int64)


@dataclass
class ScaleChoice:
    scale: np.float32  # the filter scale
    multiplier: int  # the (M0, exponent) TFLite derives from it
    exponent: int
    exact: bool


def filter_scale_for(m0: int, exponent: int, s_in: float, s_out: float) -> ScaleChoice:
    """The float32 filter scale whose TFLite multiplier is ``(m0, exponent)``, or the nearest one.

    ``s_in`` / ``s_out`` are the float32 scales of the op's input and output.
    """
    s_in32, s_out32 = _f32(s_in), _f32(s_out)
    m0, exponent = int(m0), int(exponent)
    if m0 == 0:  # a flushed multiplier: any real below 2^-32 flushes the same way
        real = 2.0**-40
    else:
        real = m0 * 2.0 ** (exponent - 31)
    start = _f32(real * np.float64(s_out32) / np.float64(s_in32))
    if not np.isfinite(start) or start <= 0:
        start = np.float32(np.finfo(np.float32).tiny)
    up = start + np.zeros(_SEARCH_STEPS, np.float32)
    down = up.copy()
    for i in range(1, _SEARCH_STEPS):
        up[i] = np.nextafter(up[i - 1], np.float32(np.inf))
        down[i] = np.nextafter(down[i - 1], np.float32(0))
    cands = np.concatenate([up, down[1:]])
    cands = cands[cands > 0]
    got_m, got_e = _tflite_multipliers(s_in32, cands, s_out32)
    hit = np.flatnonzero((got_m == m0) & (got_e == exponent))
    if hit.size:
        i = hit[np.argmin(np.abs(cands[hit].astype(np.float64) - np.float64(start)))]
        return ScaleChoice(cands[i], m0, exponent, True)
    want = float(m0) * 2.0 ** (exponent - 31)
    have = got_m.astype(np.float64) * np.exp2(got_e.astype(np.float64) - 31)
    i = int(np.argmin(np.abs(have - want)))
    return ScaleChoice(cands[i], int(got_m[i]), int(got_e[i]), False)


def _layer_multipliers(op: Op) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel (M0, effective exponent e - shift[c]) of a conv / fully-connected op."""
    t = op.tensors
    shift = np.asarray(t["shift"], np.int64)
    c_out = shift.size
    m0 = np.broadcast_to(np.asarray(t["multiplier"], np.int64), (c_out,))
    e = np.broadcast_to(np.asarray(t["exponent"], np.int64), (c_out,)) - shift
    return m0, e


def _value_scales(program: Program) -> dict[str, tuple[float, int]]:
    out = {program.input.name: (float(program.input.scale), int(program.input.zero_point))}
    for op in program.ops:
        out[op.name] = (float(op.scale), int(op.zero_point))
    return out


def snap_to_tflite(program: Program) -> Program:
    """A copy of ``program`` with every parameter re-derived the way TFLite derives it, so that
    :func:`program_to_tflite` exports it exactly: activation scales rounded to float32; conv /
    fully-connected multipliers the nearest ones a float32 filter scale gives (per channel, or one per
    layer plus the unchanged shifts of a WESS layer), with TFLite's double rescale on fully-connected
    layers (``tflite_rescale``); add, mul and concat parameters and TFLite's mean (``tflite_rounding``)
    from the float32 scales; ReLU6 clamps as TFLite computes them. Weights, biases and everything else
    are unchanged; the result is validated."""
    from npuq.ops import add_params, concat_params

    snapped = program.copy()
    old_scale = {op.name: float(op.scale) for op in snapped.ops}
    for op in snapped.ops:
        op.scale = float(_f32(op.scale))
    scales = _value_scales(snapped)
    snapped.shapes()  # validates the rounded scales before the re-derivation

    def s(name: str) -> float:
        return scales[name][0]

    for op in snapped.ops:
        a, t = op.attrs, op.tensors
        if op.kind in ("conv2d", "fully_connected"):
            m0, e = _layer_multipliers(op)
            shift = np.asarray(t["shift"], np.int64)
            if np.asarray(t["multiplier"]).size == 1:  # one (M0, e) for the layer: s_w[c] = s_w / 2^shift[c]
                choices = [filter_scale_for(int(m0[0]), int(e[0] + shift[0]), s(op.inputs[0]), op.scale)]
            else:
                choices = [
                    filter_scale_for(int(m), int(x + sh), s(op.inputs[0]), op.scale)
                    for m, x, sh in zip(m0, e, shift, strict=True)
                ]
            t["multiplier"] = np.array([c.multiplier for c in choices], np.int32)
            t["exponent"] = np.array([c.exponent for c in choices], np.int32)
            if op.kind == "fully_connected":  # LiteRT's FULLY_CONNECTED rescales in double (arithmetic.md 16)
                # from the per-channel filter scales the export writes (a WESS layer's channels included)
                m0c, ec = _layer_multipliers(op)
                found: dict[tuple[int, int], float] = {}
                for key in zip(m0c.tolist(), ec.tolist()):
                    if key not in found:
                        found[key] = filter_scale_for(key[0], key[1], s(op.inputs[0]), op.scale).scale
                s_w = np.array([found[k] for k in zip(m0c.tolist(), ec.tolist())], np.float32)
                a["tflite_rescale"] = [float(v) for v in tm.fc_rescale(s(op.inputs[0]), s_w, op.scale)]
        elif op.kind == "add":
            a.update(add_params(s(op.inputs[0]), s(op.inputs[1]), op.scale, int(a["left_shift"])))
        elif op.kind == "mul":  # TFLite builds this multiplier from float32 products
            p = tm.mul_params(s(op.inputs[0]), 0, s(op.inputs[1]), 0, op.scale, 0)
            a.update(multiplier=p["multiplier"], exponent=p["exponent"])
        elif op.kind == "concat":
            p = concat_params([s(n) for n in op.inputs], op.scale)
            a["multipliers"], a["exponents"] = [int(v) for v in p["multipliers"]], [int(v) for v in p["exponents"]]
        elif op.kind == "mean":
            (m,), (x,) = quantize_multipliers([np.float64(s(op.inputs[0])) / np.float64(op.scale)])
            a.update(multiplier=int(m), exponent=int(x), tflite_rounding=True)
        if "act_min" in a and op.kind not in ("mean",):
            a["act_min"], a["act_max"] = _snap_clamp(op, int(a["act_min"]), int(a["act_max"]), old_scale[op.name])
    snapped.shapes()  # validate
    return snapped


# ------------------------------------------------------------------------------ activations and padding
def _activation_ranges(scale: float, zp: int) -> dict[str, tuple[int, int]]:
    """TFLite's clamp of each fused activation at this output quantization (tflite_math.activation_range)."""
    return {name: tm.activation_range(name, scale, zp) for name in ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")}


def _snap_clamp(op: Op, act_min: int, act_max: int, old_scale: float) -> tuple[int, int]:
    """The clamp TFLite computes for the activation ``[act_min, act_max]`` was made for at ``old_scale``
    (npuq's ReLU6 is ``zp + round(6 / scale)`` in float64; TFLite divides in float32)."""
    zp = int(op.zero_point)
    npuq_relu6 = (max(-128, zp), max(max(-128, zp), min(127, zp + int(tm.round_away(6.0 / old_scale)))))
    tflite = _activation_ranges(op.scale, zp)
    if (act_min, act_max) in tflite.values():
        return act_min, act_max
    if (act_min, act_max) == npuq_relu6:
        return tflite["RELU6"]
    return act_min, act_max


def _fused_activation(op: Op, act_min: int, act_max: int) -> str:
    """The TFLite fused activation whose clamp is ``[act_min, act_max]`` at the op's output scale."""
    scale, zp = op.scale, int(op.zero_point)
    ranges = _activation_ranges(scale, zp)
    for name, (lo, hi) in ranges.items():
        if (lo, hi) == (act_min, act_max):
            return name
    raise TFLiteExportError(
        f"op '{op.name}' ({op.kind}): the clamp [{act_min}, {act_max}] is no TFLite fused activation at "
        f"scale {float(_f32(scale))!r}, zero point {zp} (NONE, RELU, RELU6, RELU_N1_TO_1 clamp to "
        + ", ".join(f"{k} {list(v)}" for k, v in ranges.items())
        + ")"
    )


def _tflite_padding(hw, kernel, stride, dilation, padding) -> str | None:
    """The name of TFLite's padding, VALID or SAME, that gives ``padding`` (top, bottom, left, right), else None."""
    pads = tuple(int(p) for p in padding)
    if pads == (0, 0, 0, 0):
        return "VALID"
    same = (
        tm.same_padding(hw[0], kernel[0], stride[0], dilation[0])[1:]
        + tm.same_padding(hw[1], kernel[1], stride[1], dilation[1])[1:]
    )
    return "SAME" if pads == same else None


# ------------------------------------------------------------------------------ the exporter
class _Exporter:
    def __init__(self, program: Program, multipliers: str):
        from npuq.interop.tflite_build import TFLiteBuilder

        self.program = program
        self.mode = multipliers
        self.shapes = program.shapes()
        self.scales = _value_scales(program)
        self.b = TFLiteBuilder()
        self.tensors: dict[str, int] = {}
        self.inexact: list[str] = []

    def value(self, name: str, shape, scale: float, zp: int) -> int:
        idx = self.b.tensor(name, shape, "int8", scale=float(_f32(scale)), zero_point=int(zp))
        self.tensors[name] = idx
        return idx

    def out(self, op: Op) -> int:
        return self.value(op.name, (1, *self.shapes[op.name]), op.scale, op.zero_point)

    def const(self, name: str, data: np.ndarray, dtype: str, **quant) -> int:
        return self.b.tensor(name, data.shape, dtype, data=data, **quant)

    def derived(self, op: Op, have: dict, want: dict) -> None:
        """Parameters TFLite derives from the float32 scales (``want``) against the program's (``have``):
        a difference refuses the exact export and is recorded by the nearest one."""
        diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
        if not diff:
            return
        if self.mode == "exact":
            raise TFLiteExportError(
                f"op '{op.name}' ({op.kind}): TFLite derives its parameters from the float32 scales of its "
                f"tensors, and they differ from the program's (program, TFLite): {diff} (npuq derived them "
                f"from float64 scales; npuq.interop.tflite_export.snap_to_tflite re-derives them)"
            )
        self.inexact.append(op.name)

    def activation(self, op: Op) -> str:
        """The fused activation of the op's clamp; in the nearest export, npuq's float64 ReLU6 clamp that
        TFLite's float32 one misses by a step is written as RELU6 (and recorded)."""
        act_min, act_max = int(op.attrs["act_min"]), int(op.attrs["act_max"])
        if self.mode == "nearest":
            snapped = _snap_clamp(op, act_min, act_max, float(op.scale))
            if snapped != (act_min, act_max):
                self.inexact.append(op.name)
                act_min, act_max = snapped
        return _fused_activation(op, act_min, act_max)

    def run(self) -> bytes:
        p = self.program
        if p.rounding != "double":
            raise TFLiteExportError(
                f"the program rounds '{p.rounding}'; TFLite's kernels (built without TFLITE_SINGLE_ROUNDING) "
                f"round 'double'"
            )
        bad = [f"'{op.name}' ({op.kind})" for op in p.ops if op.kind not in SUPPORTED_KINDS]
        if bad:
            raise TFLiteExportError(
                f"{len(bad)} op(s) have no TFLite int8 export: {', '.join(bad)} "
                f"(supported kinds: {', '.join(SUPPORTED_KINDS)})"
            )
        x = self.value(p.input.name, (1, *p.input.shape), p.input.scale, p.input.zero_point)
        for op in p.ops:
            getattr(self, f"_{op.kind}")(op)
        return self.b.finish([x], [self.tensors[p.output]], description=f"npuq program {p.model}".strip())

    # -------------------------------------------------------------- layers
    def _filter_scales(self, op: Op) -> np.ndarray:
        s_in, s_out = self.scales[op.inputs[0]][0], float(op.scale)
        m0, e = _layer_multipliers(op)
        out = np.empty(m0.size, np.float32)
        cache: dict[tuple[int, int], ScaleChoice] = {}
        for c in range(m0.size):
            key = (int(m0[c]), int(e[c]))
            if key not in cache:
                cache[key] = filter_scale_for(key[0], key[1], s_in, s_out)
            choice = cache[key]
            if not choice.exact:
                if self.mode == "exact":
                    raise TFLiteExportError(
                        f"op '{op.name}' ({op.kind}) channel {c}: no float32 filter scale makes TFLite derive "
                        f"the multiplier (M0={key[0]}, exponent={key[1]}) from the scales s_in={s_in!r}, "
                        f"s_out={s_out!r}; the nearest is (M0={choice.multiplier}, exponent={choice.exponent}) "
                        f"(program_to_tflite(..., multipliers='nearest') writes it; "
                        f"npuq.interop.tflite_export.snap_to_tflite makes the program exportable exactly)"
                    )
                self.inexact.append(op.name)
            out[c] = choice.scale
        return out

    def _layer_consts(self, op: Op, weight: np.ndarray, axis: int) -> tuple[int, int]:
        s_w = self._filter_scales(op)
        s_in = _f32(self.scales[op.inputs[0]][0])
        per_tensor = np.all(s_w == s_w[0])
        w_scale = s_w[:1] if per_tensor else s_w
        tw = self.const(f"{op.name}/weight", weight, "int8", scale=w_scale, axis=axis)
        bias_scale = (np.float64(s_in) * w_scale.astype(np.float64)).astype(np.float32)
        bias = np.asarray(op.tensors["bias"], np.int32)
        tb = self.const(f"{op.name}/bias", bias, "int32", scale=bias_scale, axis=0)
        return tw, tb

    def _pad_input(self, op: Op, src: int, padding, value: int) -> int:
        """An explicit PADV2 in front of a VALID op, for paddings TFLite's SAME rule does not give."""
        t, bt, l, r = (int(v) for v in padding)
        h, w, c = self.shapes[op.inputs[0]]
        s, zp = self.scales[op.inputs[0]]
        pads = self.const(f"{op.name}/paddings", np.array([[0, 0], [t, bt], [l, r], [0, 0]], np.int32), "int32")
        val = self.const(f"{op.name}/pad_value", np.array(value, np.int8), "int8", scale=float(_f32(s)), zero_point=zp)
        y = self.value(f"{op.name}/padded", (1, h + t + bt, w + l + r, c), s, zp)
        self.b.op("PADV2", [src, pads, val], [y])
        return y

    def _conv2d(self, op: Op) -> None:
        a = op.attrs
        src = self.tensors[op.inputs[0]]
        h, w, c_in = self.shapes[op.inputs[0]]
        weight = np.asarray(op.tensors["weight"], np.int8)
        c_out, kh, kw, _ = weight.shape
        groups = int(a["groups"])
        act = self.activation(op)
        if groups == 1:
            opcode, tw_data, axis, extra = "CONV_2D", weight, 0, {}
        elif groups == c_in:
            # TFLite's depthwise filter is [1, KH, KW, C_out]; output channel o reads input o // multiplier
            opcode, tw_data, axis = "DEPTHWISE_CONV_2D", weight.transpose(3, 1, 2, 0), 3
            extra = {"depth_multiplier": c_out // c_in}
        else:
            raise TFLiteExportError(
                f"op '{op.name}' (conv2d): {groups} groups of {c_in} input channels; TFLite has CONV_2D "
                f"(groups 1) and DEPTHWISE_CONV_2D (groups = input channels) only"
            )
        if int(a["input_zero_point"]) != self.scales[op.inputs[0]][1] or int(a["output_zero_point"]) != op.zero_point:
            raise TFLiteExportError(f"op '{op.name}' (conv2d): its zero points differ from its values' zero points")
        tw, tb = self._layer_consts(op, np.ascontiguousarray(tw_data), axis)
        stride, dil = [int(v) for v in a["stride"]], [int(v) for v in a["dilation"]]
        padding = _tflite_padding((h, w), (kh, kw), stride, dil, a["padding"])
        if padding is None:  # padding with the input zero point is real zero: an explicit pad is the same
            src = self._pad_input(op, src, a["padding"], int(a["input_zero_point"]))
            padding = "VALID"
        self.b.op(
            opcode,
            [src, tw, tb],
            [self.out(op)],
            padding=padding,
            stride_h=stride[0],
            stride_w=stride[1],
            dilation_h_factor=dil[0],
            dilation_w_factor=dil[1],
            fused_activation_function=act,
            **extra,
        )

    def _fully_connected(self, op: Op) -> None:
        a = op.attrs
        if int(a["input_zero_point"]) != self.scales[op.inputs[0]][1] or int(a["output_zero_point"]) != op.zero_point:
            raise TFLiteExportError(f"op '{op.name}' (fully_connected): its zero points differ from its values'")
        act = self.activation(op)
        tw, tb = self._layer_consts(op, np.asarray(op.tensors["weight"], np.int8), 0)
        if a.get("tflite_rescale"):  # the doubles LiteRT will compute from the scales just written
            s_w = self._filter_scales(op)
            want = tm.fc_rescale(self.scales[op.inputs[0]][0], s_w, op.scale)
            have = np.broadcast_to(np.asarray(a["tflite_rescale"], np.float64), want.shape)
            if not np.array_equal(have, want):
                self.derived(op, {"tflite_rescale": list(have)}, {"tflite_rescale": list(want)})
        self.b.op(
            "FULLY_CONNECTED", [self.tensors[op.inputs[0]], tw, tb], [self.out(op)], fused_activation_function=act
        )

    # -------------------------------------------------------------- elementwise
    def _add(self, op: Op) -> None:
        from npuq.ops import add_params

        a = op.attrs
        (sa, za), (sb, zb) = self.scales[op.inputs[0]], self.scales[op.inputs[1]]
        if int(a["left_shift"]) != 20:
            raise TFLiteExportError(f"op '{op.name}' (add): left_shift {a['left_shift']}; TFLite's int8 ADD uses 20")
        zps = (int(a["a_zero_point"]), int(a["b_zero_point"]), int(a["output_zero_point"]))
        if zps != (za, zb, op.zero_point):
            raise TFLiteExportError(
                f"op '{op.name}' (add): zero points {zps} differ from its values' {(za, zb, op.zero_point)}"
            )
        want = add_params(float(_f32(sa)), float(_f32(sb)), float(_f32(op.scale)))
        self.derived(op, {k: int(a[k]) for k in want}, want)
        act = self.activation(op)
        ins = [self.tensors[n] for n in op.inputs]
        self.b.op("ADD", ins, [self.out(op)], fused_activation_function=act)

    def _mul(self, op: Op) -> None:
        a = op.attrs
        (sa, za), (sb, zb) = self.scales[op.inputs[0]], self.scales[op.inputs[1]]
        zps = (int(a["a_zero_point"]), int(a["b_zero_point"]), int(a["output_zero_point"]))
        if zps != (za, zb, op.zero_point):
            raise TFLiteExportError(
                f"op '{op.name}' (mul): zero points {zps} differ from its values' {(za, zb, op.zero_point)}"
            )
        p = tm.mul_params(sa, 0, sb, 0, op.scale, 0)  # from float32 products, as TFLite's Prepare
        want = {"multiplier": p["multiplier"], "exponent": p["exponent"]}
        self.derived(op, {k: int(a[k]) for k in want}, want)
        act = self.activation(op)
        ins = [self.tensors[n] for n in op.inputs]
        self.b.op("MUL", ins, [self.out(op)], fused_activation_function=act)

    def _concat(self, op: Op) -> None:
        # TFLite's int8 CONCATENATION copies bytes: every input must have the output's scale and zero point
        a = op.attrs
        for i, name in enumerate(op.inputs):
            s, zp = self.scales[name]
            if _f32(s) != _f32(op.scale) or zp != op.zero_point:
                raise TFLiteExportError(
                    f"op '{op.name}' (concat): input {i} '{name}' has scale {s!r} and zero point {zp}, the "
                    f"output {op.scale!r} and {op.zero_point}; TFLite's int8 concatenation only copies, it "
                    f"cannot rescale"
                )
            if (int(a["multipliers"][i]), int(a["exponents"][i])) != (2**30, 1):
                raise TFLiteExportError(f"op '{op.name}' (concat): input {i} is rescaled, TFLite would copy it")
        axis = len(self.shapes[op.name])  # the channel axis of [1, ..., C]
        ins = [self.tensors[n] for n in op.inputs]
        self.b.op("CONCATENATION", ins, [self.out(op)], axis=axis, fused_activation_function="NONE")

    def _pad(self, op: Op) -> None:
        t, bt, l, r = (int(v) for v in op.attrs["padding"])
        s, zp = self.scales[op.inputs[0]]
        if _f32(s) != _f32(op.scale) or zp != op.zero_point:
            raise TFLiteExportError(f"op '{op.name}' (pad): its output's scale / zero point differ from its input's")
        pads = self.const(f"{op.name}/paddings", np.array([[0, 0], [t, bt], [l, r], [0, 0]], np.int32), "int32")
        value = int(op.attrs["value"])
        src = self.tensors[op.inputs[0]]
        if value == zp:  # PAD fills with the output zero point
            self.b.op("PAD", [src, pads], [self.out(op)])
        else:
            val = self.const(f"{op.name}/value", np.array(value, np.int8), "int8", scale=float(_f32(s)), zero_point=zp)
            self.b.op("PADV2", [src, pads, val], [self.out(op)])

    # -------------------------------------------------------------- pooling and reshapes
    def _same_scale(self, op: Op) -> None:
        s, zp = self.scales[op.inputs[0]]
        if _f32(s) != _f32(op.scale) or zp != op.zero_point:
            raise TFLiteExportError(
                f"op '{op.name}' ({op.kind}): output scale / zero point ({op.scale!r}, {op.zero_point}) differ "
                f"from the input's ({s!r}, {zp}); TFLite's pooling keeps them"
            )

    def _avg_pool2d(self, op: Op) -> None:
        a = op.attrs
        self._same_scale(op)
        h, w, _ = self.shapes[op.inputs[0]]
        kernel, stride = [int(v) for v in a["kernel"]], [int(v) for v in a["stride"]]
        padding = _tflite_padding((h, w), kernel, stride, (1, 1), a["padding"])
        if padding is None or (padding == "SAME" and a["count_include_pad"] and any(a["padding"])):
            raise TFLiteExportError(
                f"op '{op.name}' (avg_pool2d): padding {list(a['padding'])} (count_include_pad="
                f"{a['count_include_pad']}) is not TFLite's SAME or VALID for this size, and an explicit pad "
                f"would change the counts"
            )
        act = self.activation(op)
        self._pool(op, "AVERAGE_POOL_2D", self.tensors[op.inputs[0]], kernel, stride, padding, act)

    def _global_avg_pool(self, op: Op) -> None:
        self._same_scale(op)
        h, w, _ = self.shapes[op.inputs[0]]
        act = self.activation(op)
        self._pool(op, "AVERAGE_POOL_2D", self.tensors[op.inputs[0]], [h, w], [1, 1], "VALID", act)

    def _max_pool2d(self, op: Op) -> None:
        a = op.attrs
        self._same_scale(op)
        if a.get("ceil_mode", False):
            raise TFLiteExportError(f"op '{op.name}' (max_pool2d): ceil_mode has no TFLite equivalent")
        h, w, _ = self.shapes[op.inputs[0]]
        kernel, stride = [int(v) for v in a["kernel"]], [int(v) for v in a["stride"]]
        padding = _tflite_padding((h, w), kernel, stride, (1, 1), a["padding"])
        src = self.tensors[op.inputs[0]]
        if padding is None:  # -128 padding never wins a max (at worst it ties with a -128 of the image)
            src = self._pad_input(op, src, a["padding"], -128)
            padding = "VALID"
        self._pool(op, "MAX_POOL_2D", src, kernel, stride, padding, "NONE")

    def _pool(self, op: Op, opcode: str, src: int, kernel, stride, padding: str, act: str) -> None:
        self.b.op(
            opcode,
            [src],
            [self.out(op)],
            padding=padding,
            stride_h=stride[0],
            stride_w=stride[1],
            filter_height=kernel[0],
            filter_width=kernel[1],
            fused_activation_function=act,
        )

    def _flatten(self, op: Op) -> None:
        self._same_scale(op)
        k = int(np.prod(self.shapes[op.name]))
        shape = self.const(f"{op.name}/shape", np.array([1, k], np.int32), "int32")
        self.b.op("RESHAPE", [self.tensors[op.inputs[0]], shape], [self.out(op)], new_shape=[1, k])

    def _mean(self, op: Op) -> None:
        a = op.attrs
        s, zp = self.scales[op.inputs[0]]
        if not a["tflite_rounding"]:
            raise TFLiteExportError(
                f"op '{op.name}' (mean): npuq's own rounding (tflite_rounding=false, 1 / n in the real "
                f"multiplier) has no TFLite form; TFLite's MEAN is tflite_rounding=true (arithmetic.md 15; "
                f"snap_to_tflite converts it)"
            )
        if (int(a["input_zero_point"]), int(a["output_zero_point"])) != (zp, op.zero_point):
            raise TFLiteExportError(f"op '{op.name}' (mean): its zero points differ from its values'")
        (m0,), (e,) = quantize_multipliers([np.float64(_f32(s)) / np.float64(_f32(op.scale))])
        self.derived(
            op,
            {"multiplier": int(a["multiplier"]), "exponent": int(a["exponent"])},
            {"multiplier": int(m0), "exponent": int(e)},
        )
        if (int(a["act_min"]), int(a["act_max"])) != (-128, 127):
            raise TFLiteExportError(f"op '{op.name}' (mean): TFLite's MEAN has no clamp besides int8")
        axes = self.const(f"{op.name}/axes", np.array([1, 2], np.int32), "int32")
        self.b.op("MEAN", [self.tensors[op.inputs[0]], axes], [self.out(op)], keep_dims=True)


def program_to_tflite(program: Program, *, multipliers: str = "exact") -> bytes:
    """The int8 TFLite model (bytes) of ``program``; see the module's description.

    ``multipliers``: ``"exact"`` refuses a conv / fully-connected channel whose multiplier no float32
    filter scale reproduces; ``"nearest"`` writes the nearest one. Raises :class:`TFLiteExportError`
    (a ``ValueError``) naming the op for anything TFLite cannot compute as the program does.
    """
    if multipliers not in MULTIPLIER_MODES:
        raise ValueError(f"multipliers must be one of {MULTIPLIER_MODES}, got {multipliers!r}")
    return _Exporter(program, multipliers).run()


def inexact_ops(program: Program) -> list[str]:
    """The ops of ``program`` whose parameters TFLite cannot derive exactly from float32 scales (what
    ``multipliers="exact"`` refuses and ``"nearest"`` approximates), in program order."""
    ex = _Exporter(program, "nearest")
    ex.run()
    return list(dict.fromkeys(ex.inexact))
