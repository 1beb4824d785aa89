"""program_to_tflite: random small torch networks quantized and compiled by npuq, exported, run by LiteRT's
reference kernels, against npuq's emulator on every value of every op.

TFLite derives every integer parameter from float32 scales: a conv / fully-connected multiplier through a
float32 filter scale, which reaches only about one 31-bit multiplier in a hundred, and an add's from the
activation scales, which npuq keeps in float64. So the exact export is tested on programs re-derived the
way TFLite derives them (``snap_to_tflite``): there every op's values must be equal. The program as
compiled is exported with the nearest parameters and the differences are measured and bounded.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from support.litert import litert_interpreter, require_tflite, run_litert

require_tflite()
litert_interpreter()  # skip the module without ai_edge_litert (a failure on CI)

import npuq  # noqa: E402
from npuq.interop.tflite_export import (  # noqa: E402
    TFLiteExportError,
    filter_scale_for,
    inexact_ops,
    program_to_tflite,
    snap_to_tflite,
)
from npuq.npu.program import InputSpec, Op, Program  # noqa: E402

FEW = settings(max_examples=25, deadline=None)


# ------------------------------------------------------------------------------ random networks
@st.composite
def net_specs(draw):
    c = draw(st.integers(1, 4))
    h, w = draw(st.integers(5, 10)), draw(st.integers(5, 10))
    spec = {"c": c, "h": h, "w": w, "blocks": []}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "conv", "avg_pool", "max_pool", "pad"]))
        if kind == "conv":
            depthwise = draw(st.booleans())
            k = draw(st.integers(1, 3))
            dil = draw(st.integers(1, 2)) if k > 1 else 1
            ext = (k - 1) * dil + 1
            stride = draw(st.integers(1, 2))
            pad = draw(st.integers(0, ext - 1))
            c_out = c * draw(st.integers(1, 2)) if depthwise else draw(st.integers(1, 6))
            oh, ow = (h + 2 * pad - ext) // stride + 1, (w + 2 * pad - ext) // stride + 1
            if oh < 1 or ow < 1:
                continue
            residual = stride == 1 and c_out == c and (oh, ow) == (h, w) and draw(st.booleans())
            act = draw(st.sampled_from(["none", "relu", "relu6"]))
            spec["blocks"].append(
                dict(
                    kind="conv",
                    c=c,
                    c_out=c_out,
                    k=k,
                    dil=dil,
                    stride=stride,
                    pad=pad,
                    dw=depthwise,
                    act=act,
                    res=residual,
                )
            )
            c, h, w = c_out, oh, ow
        elif kind in ("avg_pool", "max_pool"):
            k = draw(st.integers(2, 3))
            stride = draw(st.integers(1, 2))
            pad = draw(st.integers(0, k // 2)) if kind == "max_pool" else 0
            if h + 2 * pad < k or w + 2 * pad < k:
                continue
            spec["blocks"].append(dict(kind=kind, k=k, stride=stride, pad=pad))
            h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        else:
            p = tuple(draw(st.integers(0, 2)) for _ in range(4))  # left, right, top, bottom
            spec["blocks"].append(dict(kind="pad", p=p))
            h, w = h + p[2] + p[3], w + p[0] + p[1]
    spec["hidden"] = draw(st.sampled_from([0, 5]))
    spec["classes"] = draw(st.integers(2, 6))
    spec["seed"] = draw(st.integers(0, 2**16))
    return spec


class _Res(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def build_net(spec) -> nn.Module:
    torch.manual_seed(spec["seed"])
    layers: list[nn.Module] = []
    for b in spec["blocks"]:
        if b["kind"] == "conv":
            conv = nn.Conv2d(b["c"], b["c_out"], b["k"], b["stride"], b["pad"], b["dil"], b["c"] if b["dw"] else 1)
            body = nn.Sequential(conv, {"none": nn.Identity(), "relu": nn.ReLU(), "relu6": nn.ReLU6()}[b["act"]])
            layers.append(_Res(body) if b["res"] else body)
        elif b["kind"] == "avg_pool":
            layers.append(nn.AvgPool2d(b["k"], b["stride"], count_include_pad=False))
        elif b["kind"] == "max_pool":
            layers.append(nn.MaxPool2d(b["k"], b["stride"], b["pad"]))
        else:
            layers.append(nn.ZeroPad2d(b["p"]))
    c = _channels(spec)
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if spec["hidden"]:
        head += [nn.Linear(c, spec["hidden"]), nn.ReLU(), nn.Linear(spec["hidden"], spec["classes"])]
    else:
        head += [nn.Linear(c, spec["classes"])]
    return nn.Sequential(*layers, *head).eval()


def _channels(spec) -> int:
    c = spec["c"]
    for b in spec["blocks"]:
        if b["kind"] == "conv":
            c = b["c_out"]
    return c


def compile_net(spec, weights: str) -> Program:
    model = build_net(spec)
    g = torch.Generator().manual_seed(spec["seed"])
    calib = [torch.randn(4, spec["c"], spec["h"], spec["w"], generator=g) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = npuq.quantize(model, calib, weights=weights, bits=8, activations="mse")
    return npuq.compile(qm)


def images(program: Program, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (n, *program.input.shape)).astype(np.int8)


def compare(program: Program, model: bytes, x: np.ndarray) -> dict[str, tuple[int, int, bool]]:
    """Per op: (values that differ between LiteRT and the emulator over the images x, max |diff|, whether
    an input of the op differed already)."""
    result = {op.name: (0, 0, False) for op in program.ops}
    _, values = npuq.Emulator(program, threads=1).run(x, capture=True)
    for i in range(x.shape[0]):
        (out,), tensors = run_litert(model, [x[i : i + 1]])
        differs = {program.input.name: False}
        for op in program.ops:
            want = np.asarray(values[op.name][i]).astype(np.int32)
            got = tensors[op.name][0].astype(np.int32).reshape(want.shape)
            d = np.abs(got - want)
            n, m, upstream = result[op.name]
            upstream = upstream or any(differs[s] for s in op.inputs)
            result[op.name] = (n + int((d > 0).sum()), max(m, int(d.max(initial=0))), upstream)
            differs[op.name] = bool((d > 0).any())
        np.testing.assert_array_equal(out[0], tensors[program.output][0])
    return result


# ------------------------------------------------------------------------------ exactness
@FEW
@given(net_specs(), st.sampled_from(["per_channel", "wess"]))
def test_snapped_programs_export_bit_exactly(spec, weights):
    """Every op equal, fully-connected layers included: the snapped program carries TFLite's double
    rescale on them (tflite_rescale)."""
    program = snap_to_tflite(compile_net(spec, weights))
    assert inexact_ops(program) == []
    assert all(op.attrs.get("tflite_rescale") for op in program.ops if op.kind == "fully_connected")
    model = program_to_tflite(program)
    diffs = compare(program, model, images(program, 2, spec["seed"]))
    assert all(n == 0 for n, _, _ in diffs.values()), diffs


def test_snapping_changes_only_derived_parameters():
    spec = dict(
        c=3,
        h=8,
        w=8,
        blocks=[dict(kind="conv", c=3, c_out=4, k=3, dil=1, stride=1, pad=1, dw=False, act="relu", res=False)],
        hidden=0,
        classes=3,
        seed=1,
    )
    for weights in ("per_channel", "wess"):
        program = compile_net(spec, weights)
        snapped = snap_to_tflite(program)
        for a, b in zip(program.ops, snapped.ops, strict=True):
            assert b.scale == float(np.float32(a.scale))
            derived = ("act_max", "tflite_rescale")  # fully-connected layers gain TFLite's double rescale
            assert {k: v for k, v in a.attrs.items() if k not in derived} == {
                k: v for k, v in b.attrs.items() if k not in derived
            }
            assert ("tflite_rescale" in b.attrs) == (a.kind == "fully_connected")
            for name in a.tensors:
                if name not in ("multiplier", "exponent"):
                    np.testing.assert_array_equal(a.tensors[name], b.tensors[name])
                else:
                    assert a.tensors[name].shape == b.tensors[name].shape
            if a.kind == "conv2d":  # within 2^-22 of the program's real multiplier
                ra = a.tensors["multiplier"] * 2.0 ** (a.tensors["exponent"].astype(float) - 31)
                rb = b.tensors["multiplier"] * 2.0 ** (b.tensors["exponent"].astype(float) - 31)
                assert np.all(np.abs(rb / ra - 1) < 2**-22)


@FEW
@given(net_specs(), st.sampled_from(["per_channel", "wess"]))
def test_compiled_programs_export_with_nearest_multipliers(spec, weights):
    """The program as compiled: its multipliers are (almost always) not expressible, so the exact export
    refuses naming the first such op, and the nearest one differs from the emulator rarely, where a
    requantization lands within ~2^-23 of a rounding boundary (and in what follows from that)."""
    program = compile_net(spec, weights)
    bad = inexact_ops(program)
    if bad:
        with pytest.raises(TFLiteExportError, match=f"op '{bad[0]}' "):
            program_to_tflite(program)
    model = program_to_tflite(program, multipliers="nearest")
    x = images(program, 2, spec["seed"])
    diffs = compare(program, model, x)
    total = sum(int(np.prod(program.shapes()[op.name])) * len(x) for op in program.ops)
    # plus, in a compiled (integer) fully-connected layer, LiteRT's double rescale (arithmetic.md 16)
    assert sum(n for n, _, _ in diffs.values()) <= max(4, total // 100), diffs


# ------------------------------------------------------------------------------ the scale search
def test_filter_scale_search():
    s_in, s_out = np.float32(0.0123), np.float32(0.0456)
    s_w = np.float32(0.00321)
    real = np.float64(s_in) * np.float64(s_w) / np.float64(s_out)
    (m0,), (e,) = npuq.quantize_multipliers([real])
    c = filter_scale_for(int(m0), int(e), float(s_in), float(s_out))
    assert c.exact and (c.multiplier, c.exponent) == (m0, e)
    # one M0 step off: no float32 scale reaches it (a float32 step is ~2^7 M0 steps here)
    c = filter_scale_for(int(m0) + 1, int(e), float(s_in), float(s_out))
    assert not c.exact and abs(c.multiplier - (m0 + 1)) <= 256
    # a flushed multiplier
    c = filter_scale_for(0, 0, float(s_in), float(s_out))
    assert c.exact and c.multiplier == 0


# ------------------------------------------------------------------------------ refusals
def _program(ops, shape=(6, 6, 2), scale=0.05, zp=3) -> Program:
    return Program(input=InputSpec("x", shape, float(np.float32(scale)), zp), ops=ops, output=ops[-1].name)


def _conv(
    name, src, c_in, c_out, groups=1, act=(-128, 127), padding=(0, 0, 0, 0), scale=0.1, zp=0, in_zp=3, k=3, stride=1
):
    rng = np.random.default_rng(0)
    s_in, s_out = np.float32(0.05), np.float32(scale)
    s_w = np.float32(rng.uniform(0.001, 0.01, c_out))
    m0, e = npuq.quantize_multipliers(np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out))
    return Op(
        name=name,
        kind="conv2d",
        inputs=[src],
        attrs=dict(
            stride=[stride, stride],
            padding=list(padding),
            dilation=[1, 1],
            groups=groups,
            input_zero_point=in_zp,
            output_zero_point=zp,
            act_min=act[0],
            act_max=act[1],
            weight_bits=8,
        ),
        tensors=dict(
            weight=rng.integers(-127, 128, (c_out, k, k, c_in // groups)).astype(np.int8),
            bias=rng.integers(-100, 100, c_out).astype(np.int32),
            multiplier=m0.astype(np.int32),
            exponent=e.astype(np.int32),
            shift=np.zeros(c_out, np.uint8),
        ),
        scale=float(s_out),
        zero_point=zp,
    )


def test_hand_program_with_padding_activation_and_groups():
    # symmetric padding 1 of a 3x3 kernel on 6x6 is SAME; ReLU6 clamp at the output scale
    scale, zp = float(np.float32(0.05)), -20
    relu6 = (zp, zp + int(np.floor(6 / np.float32(scale) + 0.5)))
    ops = [
        _conv("c1", "x", 2, 4, act=relu6, padding=(1, 1, 1, 1), scale=scale, zp=zp),
        _conv("dw", "c1", 4, 8, groups=4, padding=(0, 2, 0, 2), in_zp=zp),  # not SAME: an explicit pad
    ]
    ops[1].tensors["multiplier"], ops[1].tensors["exponent"] = [
        np.asarray(v, np.int32)
        for v in npuq.quantize_multipliers(
            np.float64(np.float32(scale)) * np.float64(np.float32(0.004)) / np.float64(np.float32(0.1)) * np.ones(8)
        )
    ]
    program = _program(ops)
    program.shapes()
    model = program_to_tflite(program)
    diffs = compare(program, model, images(program, 2, 0))
    assert diffs == {"c1": (0, 0, False), "dw": (0, 0, False)}


def test_asymmetric_padding_is_same_only_at_the_bottom_right():
    # 3x3 stride 2 on 6x6: TFLite's SAME pads one row / column at the bottom / right; the mirror image
    # (top / left) is no SAME and goes through an explicit pad
    ops = [
        _conv("same", "x", 2, 3, padding=(0, 1, 0, 1), stride=2),
        _conv("mirror", "x", 2, 3, padding=(1, 0, 1, 0), stride=2),
    ]
    program = _program(ops)
    model = program_to_tflite(program)
    assert b"same/padded" not in model and b"mirror/padded" in model
    diffs = compare(program, model, images(program, 3, 4))
    assert diffs == {"same": (0, 0, False), "mirror": (0, 0, False)}


def test_refusals_name_the_op():
    grouped = _program([_conv("g", "x", 4, 4, groups=2)], shape=(6, 6, 4))
    with pytest.raises(TFLiteExportError, match="op 'g' \\(conv2d\\): 2 groups"):
        program_to_tflite(grouped)
    odd_clamp = _program([_conv("clamped", "x", 2, 3, act=(-100, 100))])
    with pytest.raises(TFLiteExportError, match="op 'clamped' \\(conv2d\\): the clamp \\[-100, 100\\]"):
        program_to_tflite(odd_clamp)
    ok = _conv("c", "x", 2, 3)
    lut = Op(
        name="act",
        kind="lut",
        inputs=["c"],
        attrs={"function": "custom"},
        tensors={"table": np.arange(-128, 128).astype(np.int8)},
        scale=0.1,
        zero_point=0,
    )
    with pytest.raises(TFLiteExportError, match="'act' \\(lut\\)"):
        program_to_tflite(_program([ok, lut]))
    single = _program([_conv("c", "x", 2, 3)])
    single.rounding = "single"
    with pytest.raises(TFLiteExportError, match="rounds 'single'"):
        program_to_tflite(single)
    with pytest.raises(ValueError, match="multipliers must be one of"):
        program_to_tflite(single, multipliers="closest")


def test_add_parameters_must_be_tflites():
    c1, c2 = _conv("a", "x", 2, 3), _conv("b", "x", 2, 3, scale=0.07)
    params = npuq.ops.add_params(c1.scale, c2.scale, float(np.float32(0.2)))
    add = Op(
        name="sum",
        kind="add",
        inputs=["a", "b"],
        scale=float(np.float32(0.2)),
        zero_point=5,
        attrs=dict(a_zero_point=0, b_zero_point=0, output_zero_point=5, act_min=-128, act_max=127, **params),
    )
    program = _program([c1, c2, add])
    diffs = compare(program, program_to_tflite(program), images(program, 2, 1))
    assert all(v == (0, 0, False) for v in diffs.values()), diffs
    add.attrs["output_multiplier"] += 1
    with pytest.raises(TFLiteExportError, match="op 'sum' \\(add\\): TFLite derives .*output_multiplier"):
        program_to_tflite(program)


def test_format2_kinds_export_exactly():
    """mean (TFLite's rounding), a broadcast mul, a pad with a value other than the zero point (PADV2) and
    a concat of inputs with the output's scale: hand-built, re-derived by snap_to_tflite, exported, equal."""
    conv = _conv("c", "x", 2, 4, padding=(1, 1, 1, 1), scale=0.1, zp=-4)
    s_c = conv.scale
    mean = Op(
        name="m",
        kind="mean",
        inputs=["c"],
        scale=0.037,
        zero_point=-2,
        attrs=dict(
            input_zero_point=-4,
            output_zero_point=-2,
            multiplier=2**30,
            exponent=0,
            act_min=-128,
            act_max=127,
            tflite_rounding=True,
        ),
    )
    mul = Op(
        name="g",
        kind="mul",
        inputs=["c", "m"],
        scale=0.21,
        zero_point=7,
        attrs=dict(
            a_zero_point=-4, b_zero_point=-2, output_zero_point=7, multiplier=2**30, exponent=0, act_min=7, act_max=127
        ),
    )
    pad = Op(name="p", kind="pad", inputs=["g"], scale=0.21, zero_point=7, attrs=dict(padding=[1, 0, 2, 1], value=-100))
    pad2 = Op(name="q", kind="pad", inputs=["g"], scale=0.21, zero_point=7, attrs=dict(padding=[1, 0, 2, 1], value=7))
    cat = Op(
        name="cat",
        kind="concat",
        inputs=["p", "q"],
        scale=0.21,
        zero_point=7,
        attrs=dict(zero_points=[7, 7], multipliers=[2**30, 2**30], exponents=[1, 1], output_zero_point=7),
    )
    program = snap_to_tflite(_program([conv, mean, mul, pad, pad2, cat]))
    assert program.op("c").scale == s_c
    assert program.op("m").attrs["tflite_rounding"] is True
    diffs = compare(program, program_to_tflite(program), images(program, 3, 2))
    assert all(v == (0, 0, False) for v in diffs.values()), diffs


def test_mean_and_concat_refusals():
    conv = _conv("c", "x", 2, 4, padding=(1, 1, 1, 1), scale=0.1, zp=-4)
    mean = Op(
        name="m",
        kind="mean",
        inputs=["c"],
        scale=0.037,
        zero_point=-2,
        attrs=dict(
            input_zero_point=-4,
            output_zero_point=-2,
            multiplier=2**30,
            exponent=0,
            act_min=-128,
            act_max=127,
            tflite_rounding=False,
        ),
    )
    with pytest.raises(TFLiteExportError, match="op 'm' \\(mean\\): npuq's own rounding .* no TFLite form"):
        program_to_tflite(_program([conv, mean]))
    other = _conv("d", "x", 2, 3, padding=(1, 1, 1, 1), scale=0.2, zp=-4)
    cat = Op(
        name="cat",
        kind="concat",
        inputs=["c", "d"],
        scale=0.2,
        zero_point=-4,
        attrs=dict(zero_points=[-4, -4], multipliers=[2**30, 2**30], exponents=[0, 1], output_zero_point=-4),
    )
    with pytest.raises(TFLiteExportError, match="op 'cat' \\(concat\\): input 0 'c' has scale"):
        program_to_tflite(_program([conv, other, cat]))
