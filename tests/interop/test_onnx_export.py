"""ONNX export of NPU programs (QDQ) and of prepared float models, checked with onnx's checker and run by
onnxruntime against the emulator.

The bound: onnxruntime requantizes in float with round-half-to-even, the NPU in fixed point with TFLite's
double rounding, so one op by itself may differ from the emulator by 1 LSB where the exact result lies
near a half (a tie, or the two roundings of docs/arithmetic.md 3.4); never more. Ops without arithmetic
(table lookups, max pooling, padding, slices, shuffles, flatten, nearest upsampling) are exact.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from npuq import cli  # noqa: E402
from npuq.fixedpoint import quantize_multiplier  # noqa: E402
from npuq.interop import onnx_compare, onnx_export  # noqa: E402
from npuq.interop.onnx_export import export_program, program_to_onnx  # noqa: E402
from npuq.npu.program import InputSpec, Op, Program  # noqa: E402
from npuq.ops import add_params  # noqa: E402
from support.program_builders import every_kind_program  # noqa: E402

EXACT = {"lut", "max_pool2d", "pad", "slice", "channel_shuffle", "flatten"}
RNG = np.random.default_rng(7)


def _check(model) -> None:
    onnx.checker.check_model(model, full_check=True)


def _random_int8(shape, n=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (n, *shape)).astype(np.int8)


@pytest.mark.parametrize("activations", ["int8", "uint8"])
def test_every_kind_exports_and_each_op_is_within_one_lsb(activations):
    program = every_kind_program()
    for input_type in ("float", "int8"):
        _check(program_to_onnx(program, input_type=input_type, activations=activations))
    x = _random_int8(program.input.shape, n=16)
    rows = onnx_compare.isolated(program, x, activations=activations, limit=16)
    for level, ops in rows.items():
        assert {r["kind"] for r in ops} >= {"conv2d", "fully_connected", "lut", "upsample", "mean", "max_pool2d"}
        for r in ops:
            limit = 0 if r["kind"] in EXACT or r["name"] == "near" else 1
            assert r["max_lsb"] <= limit, (level, r)
    if activations == "uint8":  # the fused kernels ran
        fused = {r["kind"]: r["fused"] for r in rows["enable_all"]}
        assert "QLinearConv" in fused["conv2d"] and "QGemm" in fused["fully_connected"]


def _one_op_program(op: Op, shape=(5, 6, 4), scale=0.05, zp=3) -> Program:
    spec = InputSpec("x", shape, float(np.float32(scale)), zp)  # the input scale is a float32 value
    return Program(input=spec, ops=[op], output=op.name, model=op.name)


def _run_both(program, x):
    """The emulator's output and onnxruntime's (int8, NHWC) at both optimization levels, with int8 and with
    uint8 activations in the graph (the second runs onnxruntime's fused kernels at ``enable_all``)."""
    import npuq

    want = npuq.Emulator(program).run(x).astype(np.int32)
    got = {}
    for activations in onnx_export.ACTIVATION_TYPES:
        got.update(_run_onnx(program, x, activations))
    return want, got


def _run_onnx(program, x, activations):
    model, params = export_program(program, input_type="int8", activations=activations)
    _check(model)
    got = {}
    for level in onnx_compare.LEVELS:
        sess = onnx_compare.session(model, level)
        real = sess.run([onnx_export.LOGITS], {sess.get_inputs()[0].name: x})[0]
        if real.ndim == 4:
            real = real.transpose(0, 2, 3, 1)
        got[level, activations] = onnx_compare.probe_int8(real, *params[onnx_export.LOGITS])
    return got


def _layer(kind: str, w: np.ndarray, *, per_channel: bool, shifts=None, **attrs) -> Op:
    c = w.shape[0]
    n = c if per_channel else 1
    tensors = dict(
        weight=w.astype(np.int8),
        bias=RNG.integers(-3000, 3000, c).astype(np.int32),
        multiplier=RNG.integers(2**30, 2**31 - 1, n).astype(np.int32),
        exponent=np.full(n, -7, np.int32),
        shift=np.zeros(c, np.uint8) if shifts is None else np.asarray(shifts, np.uint8),
    )
    base = dict(input_zero_point=3, output_zero_point=-5, act_min=-5, act_max=127, weight_bits=8)
    base.update(attrs)
    return Op("layer", kind, ["x"], base, tensors, scale=0.1, zero_point=-5)


@pytest.mark.parametrize(
    "groups, per_channel, shifts", [(1, False, None), (1, True, None), (1, False, "wess"), (4, False, "wess")]
)
def test_conv2d_within_one_lsb(groups, per_channel, shifts):
    w = RNG.integers(-127, 128, (8, 3, 3, 4 // groups))
    sh = RNG.integers(0, 4, 8) if shifts else None
    conv = dict(stride=[2, 1], padding=[1, 0, 1, 1], dilation=[1, 1], groups=groups)
    program = _one_op_program(_layer("conv2d", w, per_channel=per_channel, shifts=sh, **conv), shape=(9, 7, 4))
    x = _random_int8((9, 7, 4), n=32)
    want, got = _run_both(program, x)
    for level, values in got.items():
        d = np.abs(values - want)
        assert d.max() <= 1, level
        assert d.mean() < 0.05, level  # a difference is the exception, not the rule
    assert (want >= -5).all()  # the ReLU clamp (act_min = output zero point) took effect


def test_fully_connected_within_one_lsb():
    fc = _layer("fully_connected", RNG.integers(-127, 128, (10, 12)), per_channel=False, shifts=RNG.integers(0, 3, 10))
    fc.attrs["act_max"] = 40  # a ReLU6-like upper clamp: a Clip in the graph
    program = _one_op_program(fc, shape=(12,))
    want, got = _run_both(program, _random_int8((12,), n=64))
    for values in got.values():
        assert np.abs(values - want).max() <= 1
    assert want.max() <= 40


@pytest.mark.parametrize("kind", ["add", "mul", "concat"])
def test_two_input_ops_within_one_lsb(kind):
    s_x, s_y = 0.05, 0.07
    if kind == "add":
        p = add_params(s_x, s_x, s_y)
        attrs = dict(
            a_zero_point=3,
            a_multiplier=p["a_multiplier"],
            a_exponent=p["a_exponent"],
            b_zero_point=3,
            b_multiplier=p["b_multiplier"],
            b_exponent=p["b_exponent"],
            output_zero_point=-2,
            output_multiplier=p["output_multiplier"],
            output_exponent=p["output_exponent"],
            left_shift=p["left_shift"],
            act_min=-128,
            act_max=127,
        )
    elif kind == "mul":
        m, e = quantize_multiplier(s_x * s_x / s_y)
        attrs = dict(
            a_zero_point=3, b_zero_point=3, output_zero_point=-2, multiplier=m, exponent=e, act_min=-2, act_max=127
        )
    else:
        m, e = quantize_multiplier(s_x / s_y)
        attrs = dict(zero_points=[3, 3], multipliers=[m, m], exponents=[e, e], output_zero_point=-2)
    op = Op("op", kind, ["x", "x"], attrs, scale=s_y, zero_point=-2)
    program = _one_op_program(op, scale=s_x)
    want, got = _run_both(program, _random_int8((5, 6, 4), n=32))
    for values in got.values():
        assert np.abs(values - want).max() <= 1


def test_lut_is_exact_on_every_input_value():
    table = np.random.default_rng(1).integers(-128, 128, 256).astype(np.int8)
    op = Op("act", "lut", ["x"], dict(function="custom"), dict(table=table), scale=0.1, zero_point=0)
    program = _one_op_program(op, shape=(256,))
    x = np.arange(-128, 128, dtype=np.int8)[None]
    want, got = _run_both(program, x)
    assert np.array_equal(want[0], table.astype(np.int32))
    for values in got.values():
        assert np.array_equal(values, want)


def test_an_op_without_an_export_is_named(monkeypatch):
    program = every_kind_program()
    monkeypatch.setattr(onnx_export, "SUPPORTED_KINDS", tuple(k for k in onnx_export.SUPPORTED_KINDS if k != "lut"))
    with pytest.raises(ValueError, match=r"op \d+ 'act': kind 'lut' has no ONNX export"):
        program_to_onnx(program)


def test_bad_arguments_are_refused():
    program = every_kind_program()
    with pytest.raises(ValueError, match="input_type"):
        program_to_onnx(program, input_type="uint8")
    with pytest.raises(ValueError, match="opset"):
        program_to_onnx(program, opset=11)


def test_float_input_quantizes_like_the_emulator(tmp_path):
    import npuq

    program = every_kind_program()
    images = np.random.default_rng(2).standard_normal((4, 3, 6, 6)).astype(np.float32)
    result = onnx_compare.compare(program, images, levels=("disable_all",), batch_size=4)
    rows = {r["name"]: r for r in result["levels"]["disable_all"]["ops"]}
    assert rows["x"]["max_lsb"] == 0  # no exact tie among random floats: both roundings agree
    assert rows["conv"]["max_lsb"] <= 1
    assert result["levels"]["disable_all"]["unprobed"]["output_max_lsb"] == rows["fc"]["max_lsb"]
    assert npuq.Emulator(program).run(images).shape == (4, 5)
    assert onnx_compare.plot(result, tmp_path / "lsb.png").stat().st_size > 0


def test_float_model_export_matches_the_folded_model(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.Conv2d(6, 6, 3, groups=6),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    result = onnx_export.float_model_to_onnx(model, (1, 12, 12), tmp_path / "f.onnx")
    loaded = onnx.load(tmp_path / "f.onnx")
    assert not any(n.op_type == "BatchNormalization" for n in loaded.graph.node)  # folded
    assert result["max_abs_diff"] <= 1e-5 * max(1.0, result["max_abs_logit"])
    # and equal to the original (unfolded) model within float tolerance
    import onnxruntime as ort

    x = torch.randn(2, 1, 12, 12)
    got = ort.InferenceSession(str(tmp_path / "f.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports_a_program(tmp_path, capsys):
    path = every_kind_program().save(tmp_path / "p.npuq")
    code, out, _ = _cli(capsys, "export-onnx", path, "-o", tmp_path / "p.onnx", "--input", "int8")
    assert code == 0 and "wrote" in out
    _check(onnx.load(tmp_path / "p.onnx"))


@pytest.mark.parametrize("problem", ["missing", "corrupt", "suffix"])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, problem):
    path = tmp_path / "p.npuq"
    out_file = tmp_path / "p.onnx"
    if problem == "corrupt":
        data = bytearray(every_kind_program().to_bytes())
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif problem == "suffix":
        every_kind_program().save(path)
        out_file = tmp_path / "p.txt"
    code, _, err = _cli(capsys, "export-onnx", path, "-o", out_file)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("npuq export-onnx: ")
    assert not out_file.exists()
