"""Models npuq cannot import, and files that are not models: a clear TFLiteImportError, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npuq.cli import main
from npuq.interop.tflite_import import SUPPORTED_OPCODES, import_tflite
from npuq.interop.tflite_read import TFLiteImportError
from support.tflite_cases import (
    CaseBuilder,
    act_tensor,
    compare_with_litert,
    conv_layer,
    mismatches,
    mobilenet_v3_block,
    random_input,
    scale,
)


def conv_model(seed: int = 0, **conv) -> bytes:
    rng = np.random.default_rng(seed)
    b = CaseBuilder()
    s_in = scale(rng)
    x = act_tensor(b, rng, "x", [1, 6, 6, 3], s=s_in)
    y, _ = conv_layer(b, rng, x, (6, 6, 3), s_in, 4, **conv)
    return b.finish([x], [y])


def test_a_float_model_is_refused_naming_a_float_tensor():
    b = CaseBuilder()
    x = b.tensor("x", [1, 4, 4, 2], "float32")
    w = b.tensor("w", [3, 1, 1, 2], "float32", data=np.ones((3, 1, 1, 2), np.float32))
    y = b.tensor("y", [1, 4, 4, 3], "float32")
    b.op("CONV_2D", [x, w, -1], [y], padding="VALID", stride_h=1, stride_w=1)
    with pytest.raises(TFLiteImportError, match=r"float \(non-quantized\) model"):
        import_tflite(b.finish([x], [y]))


def test_int16_activations_are_refused():
    b = CaseBuilder()
    x = b.tensor("x", [1, 4, 4, 2], "int16", scale=0.01, zero_point=0)
    y = b.tensor("y", [1, 4, 4, 2], "int16", scale=0.01, zero_point=0)
    b.op("MAX_POOL_2D", [x], [y], padding="SAME", stride_h=1, stride_w=1, filter_height=2, filter_width=2)
    with pytest.raises(TFLiteImportError, match=r"int16 activations"):
        import_tflite(b.finish([x], [y]))


def test_asymmetric_weights_are_refused_naming_the_operator():
    rng = np.random.default_rng(1)
    b = CaseBuilder()
    x = act_tensor(b, rng, "x", [1, 4, 4, 2])
    w = b.tensor(
        "w",
        [3, 1, 1, 2],
        "int8",
        scale=np.full(3, 0.01, np.float32),
        zero_point=np.array([0, 5, 0]),
        data=np.ones((3, 1, 1, 2), np.int8),
    )
    y = act_tensor(b, rng, "y", [1, 4, 4, 3])
    b.op("CONV_2D", [x, w, -1], [y], padding="VALID", stride_h=1, stride_w=1)
    with pytest.raises(TFLiteImportError, match=r"operator 0 \(CONV_2D\).*asymmetric.*zero point 5"):
        import_tflite(b.finish([x], [y]))


def test_unsupported_operators_are_listed_by_index_and_name():
    rng = np.random.default_rng(2)
    b = CaseBuilder()
    x = act_tensor(b, rng, "x", [1, 4, 4, 2])
    s = act_tensor(b, rng, "s", [1, 4, 4, 2])
    b.op("QUANTIZE", [x], [s])
    d = act_tensor(b, rng, "d", [1, 4, 4, 2])
    b.op("SUB", [x, s], [d])
    m = act_tensor(b, rng, "m", [1, 4, 4, 2])
    b.op("MAXIMUM", [d, s], [m])
    with pytest.raises(TFLiteImportError, match=r"2 operator\(s\).*operator 1 \(SUB\), operator 2 \(MAXIMUM\)"):
        import_tflite(b.finish([x], [m]))
    assert "SUB" not in SUPPORTED_OPCODES


@pytest.mark.parametrize("float_io", [False, True])
def test_a_final_softmax_is_refused_unless_dropped(float_io):
    rng = np.random.default_rng(4)
    model, shape = mobilenet_v3_block(rng, float_io=float_io, softmax=True)
    with pytest.raises(TFLiteImportError, match=r"SOFTMAX.*drop_softmax=True"):
        import_tflite(model)
    result = import_tflite(model, drop_softmax=True)
    dropped = " ".join(result.report.dropped)
    assert "SOFTMAX" in dropped and ("QUANTIZE" in dropped) == float_io and ("DEQUANTIZE" in dropped) == float_io
    assert result.program.output_op.kind == "fully_connected"
    if not float_io:  # the logits before the softmax are LiteRT's
        assert mismatches(compare_with_litert(model, random_input(rng, shape), drop_softmax=True)) == {}


def test_weight_minus_128_is_refused():
    rng = np.random.default_rng(3)
    b = CaseBuilder()
    x = act_tensor(b, rng, "x", [1, 4, 4, 2])
    w = b.tensor(
        "w", [1, 1, 1, 2], "int8", scale=np.float32(0.01), zero_point=0, data=np.array([[[[-128, 3]]]], np.int8)
    )
    y = act_tensor(b, rng, "y", [1, 4, 4, 1])
    b.op("CONV_2D", [x, w, -1], [y], padding="VALID", stride_h=1, stride_w=1)
    with pytest.raises(TFLiteImportError, match=r"holds -128"):
        import_tflite(b.finish([x], [y]))


def test_not_a_flatbuffer():
    with pytest.raises(TFLiteImportError, match="not a TFLite flatbuffer"):
        import_tflite(b"\x00" * 64)
    with pytest.raises(TFLiteImportError, match="not a TFLite flatbuffer"):
        import_tflite(b"")


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_models_raise_import_errors_only(data):
    """Truncations, flipped bytes and overwritten words of a valid model: either an import that validates,
    or a TFLiteImportError, never another exception (or a hang)."""
    model = bytearray(conv_model(seed=data.draw(st.integers(0, 3), label="seed")))
    how = data.draw(st.sampled_from(["truncate", "flip", "word"]), label="how")
    if how == "truncate":
        model = model[: data.draw(st.integers(0, len(model) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            at = data.draw(st.integers(0, len(model) - 4), label="at")
            if how == "flip":
                model[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
            else:
                word = data.draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, len(model)]), label="word")
                model[at : at + 4] = int(word).to_bytes(4, "little")
    try:
        import_tflite(bytes(model))
    except TFLiteImportError:
        pass


def test_cli_imports_and_reports(tmp_path, capsys):
    model = tmp_path / "m.tflite"
    model.write_bytes(conv_model(form="wess"))
    out = tmp_path / "m.npuq"
    report = tmp_path / "r.json"
    assert main(["import-tflite", str(model), "-o", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "1 of 1 run on a per-layer NPU" in text and out.is_file() and report.is_file()
    import npuq

    program = npuq.load_program(out)
    assert program.info["tflite_import"]["per_layer_ready"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"garbage" * 10, "not a TFLite flatbuffer"),
        (None, "no such file"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, content, message):
    model = tmp_path / "m.tflite"
    if content is not None:
        model.write_bytes(content)
    out = tmp_path / "m.npuq"
    assert main(["import-tflite", str(model), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == ([model] if content is not None else [])


def test_cli_refuses_a_float_model_without_writing(tmp_path, capsys):
    b = CaseBuilder()
    x = b.tensor("x", [1, 2], "float32")
    y = b.tensor("y", [1, 2], "float32")
    b.op("RELU", [x], [y])
    model = tmp_path / "f.tflite"
    model.write_bytes(b.finish([x], [y]))
    out = tmp_path / "f.npuq"
    assert main(["import-tflite", str(model), "-o", str(out)]) == 2
    assert "float" in capsys.readouterr().err and not out.exists()


def test_tflite_rescale_round_trips_and_the_c_library_refuses_it(tmp_path):
    """The imported fully-connected layer's doubles survive the file exactly; libnpuq, which runs NPU
    arithmetic only, refuses the attribute by name, and the integer import loads there."""
    import npuq
    from support.capi_program import load_status

    model, shape = mobilenet_v3_block(np.random.default_rng(5))
    program = import_tflite(model).program
    fc = next(op for op in program.ops if op.kind == "fully_connected")
    path = program.save(tmp_path / "p.npuq")
    loaded = npuq.load_program(path)
    assert loaded.op(fc.name).attrs["tflite_rescale"] == fc.attrs["tflite_rescale"]
    x = random_input(np.random.default_rng(6), shape)
    assert np.array_equal(npuq.Emulator(loaded, threads=1).run(x), npuq.Emulator(program, threads=1).run(x))
    status, message = load_status(path)
    assert status != 0 and "tflite_rescale" in message and "--fc-rescale integer" in message
    integer = import_tflite(model, fc_rescale="integer").program
    assert "tflite_rescale" not in integer.op(fc.name).attrs
    status, message = load_status(integer.save(tmp_path / "q.npuq"))
    assert status == 0, message


def test_a_cycle_at_the_output_is_an_error_not_a_hang():
    rng = np.random.default_rng(8)
    b = CaseBuilder()
    x = act_tensor(b, rng, "x", [1, 4])
    y = b.tensor("y", [1, 4], "float32")
    b.op("DEQUANTIZE", [y], [y])  # reads its own output
    with pytest.raises(TFLiteImportError):
        import_tflite(b.finish([x], [y]))
