"""TFLiteBuilder: the flatbuffer it writes (read back with the tflite schema accessors) and its argument
checks. That LiteRT runs what it writes is tests/interop/test_tflite_math.py and test_tflite_import.py."""

from __future__ import annotations

import numpy as np
import pytest

from support.litert import require_tflite  # noqa: E402

tflite = require_tflite()

from npuq.interop.tflite_build import TFLiteBuilder  # noqa: E402


def _conv_model():
    rng = np.random.default_rng(0)
    b = TFLiteBuilder()
    x = b.tensor("x", [1, 5, 5, 2], "int8", scale=0.02, zero_point=-3)
    w = b.tensor(
        "w", [3, 3, 3, 2], "int8", scale=[0.01, 0.02, 0.03], axis=0, data=rng.integers(-127, 128, (3, 3, 3, 2))
    )
    bias = b.tensor("b", [3], "int32", scale=[2e-4, 4e-4, 6e-4], data=np.array([1, -2, 3]))
    y = b.tensor("y", [1, 5, 5, 3], "int8", scale=0.05, zero_point=1)
    z = b.tensor("z", [1, 5, 5, 3], "int8", scale=0.05, zero_point=1)
    b.op("CONV_2D", [x, w, bias], [y], padding="SAME", stride_h=1, stride_w=1, fused_activation_function="RELU")
    b.op("MAX_POOL_2D", [y], [z], padding="SAME", stride_h=1, stride_w=1, filter_height=3, filter_width=3)
    c = b.tensor("c", [1, 5, 5, 3], "int8", scale=0.05, zero_point=1)
    b.op("CONV_2D", [z, w, -1], [c], padding="VALID", stride_h=2, stride_w=1)  # a second conv, no bias
    return b.finish([x], [c], description="unit test"), rng


def test_model_structure():
    data, _ = _conv_model()
    assert data[4:8] == b"TFL3"
    m = tflite.Model.GetRootAs(data, 0)
    assert m.Version() == 3
    assert m.Description() == b"unit test"
    assert m.SubgraphsLength() == 1
    assert m.BuffersLength() == 3  # the empty buffer 0, w, b
    assert m.Buffers(0).DataLength() == 0
    # two CONV_2D share one operator code
    assert m.OperatorCodesLength() == 2
    codes = [m.OperatorCodes(i).BuiltinCode() for i in range(2)]
    assert codes == [tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.MAX_POOL_2D]
    assert [m.OperatorCodes(i).DeprecatedBuiltinCode() for i in range(2)] == codes
    g = m.Subgraphs(0)
    assert list(g.InputsAsNumpy()) == [0] and list(g.OutputsAsNumpy()) == [5]
    names = [g.Tensors(i).Name().decode() for i in range(g.TensorsLength())]
    assert names == ["x", "w", "b", "y", "z", "c"]
    x, w, bias = g.Tensors(0), g.Tensors(1), g.Tensors(2)
    assert x.Buffer() == 0 and w.Buffer() == 1 and bias.Buffer() == 2
    assert x.Type() == tflite.TensorType.INT8 and bias.Type() == tflite.TensorType.INT32
    assert list(x.ShapeAsNumpy()) == [1, 5, 5, 2]
    assert x.Quantization().ScaleAsNumpy().tolist() == [np.float32(0.02)]
    assert x.Quantization().ZeroPointAsNumpy().tolist() == [-3]
    assert w.Quantization().ScaleAsNumpy().tolist() == np.float32([0.01, 0.02, 0.03]).tolist()
    assert w.Quantization().QuantizedDimension() == 0
    raw = m.Buffers(2).DataAsNumpy()
    assert np.frombuffer(raw.tobytes(), "<i4").tolist() == [1, -2, 3]
    op = g.Operators(0)
    assert op.OpcodeIndex() == 0 and list(op.InputsAsNumpy()) == [0, 1, 2]
    assert op.BuiltinOptionsType() == tflite.BuiltinOptions.Conv2DOptions
    opts = tflite.Conv2DOptions()
    opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
    assert opts.Padding() == tflite.Padding.SAME
    assert opts.FusedActivationFunction() == tflite.ActivationFunctionType.RELU
    assert list(g.Operators(2).InputsAsNumpy()) == [4, 1, -1]
    pool = tflite.Pool2DOptions()
    o = g.Operators(1).BuiltinOptions()
    pool.Init(o.Bytes, o.Pos)
    assert (pool.FilterHeight(), pool.FilterWidth()) == (3, 3)


def test_constant_data_is_aligned():
    data, _ = _conv_model()
    m = tflite.Model.GetRootAs(data, 0)
    for i in (1, 2):
        buf = m.Buffers(i)
        start = buf._tab.Vector(buf._tab.Offset(4))
        assert start % 16 == 0


def test_codes_beyond_127_keep_the_deprecated_placeholder():
    b = TFLiteBuilder()
    x = b.tensor("x", [4], "float32")
    axis = b.tensor("axis", [], "int32", data=np.array(0, np.int32))
    y = b.tensor("y", [4], "float32")
    b.op("CUMSUM", [x, axis], [y])
    m = tflite.Model.GetRootAs(b.finish([x], [y]), 0)
    code = m.OperatorCodes(0)
    assert code.BuiltinCode() == tflite.BuiltinOperator.CUMSUM > 127
    assert code.DeprecatedBuiltinCode() == 127


def test_vector_and_float_options():
    b = TFLiteBuilder()
    x = b.tensor("x", [1, 2, 3], "int8", scale=0.1)
    y = b.tensor("y", [6], "int8", scale=0.1)
    z = b.tensor("z", [6], "int8", scale=0.1)
    b.op("RESHAPE", [x], [y], new_shape=[6])
    b.op("LEAKY_RELU", [y], [z], alpha=0.25)
    g = tflite.Model.GetRootAs(b.finish([x], [z]), 0).Subgraphs(0)
    r = tflite.ReshapeOptions()
    o = g.Operators(0).BuiltinOptions()
    r.Init(o.Bytes, o.Pos)
    assert r.NewShapeAsNumpy().tolist() == [6]
    lr = tflite.LeakyReluOptions()
    o = g.Operators(1).BuiltinOptions()
    lr.Init(o.Bytes, o.Pos)
    assert lr.Alpha() == 0.25


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="int4"), "unknown dtype 'int4'"),
        (dict(dtype="bfloat16"), "unknown dtype"),
        (dict(scale=0.0), "scales must be finite and > 0"),
        (dict(scale=[0.1, 0.2]), "2 per-channel scales for dimension 0 of size 1"),
        (dict(scale=[0.1, 0.2, 0.3], axis=5), "quantized axis 5 outside shape"),
        (dict(scale=0.1, zero_point=200), "outside int8"),
        (dict(scale=0.1, zero_point=[1, 2]), "zero_point must be an int or 1 ints"),
        (dict(zero_point=3), "zero_point given without scale"),
        (dict(data=np.zeros((2, 2), np.int8)), "data of shape [2, 2] for shape [1, 2, 3]"),
        (dict(data=np.full((1, 2, 3), 300)), "does not fit int8"),
        (dict(data=np.full((1, 2, 3), 0.5)), "does not fit int8"),
        (dict(shape=[1, -2]), "negative"),
    ],
)
def test_tensor_checks(kwargs, message):
    b = TFLiteBuilder()
    args = dict(shape=[1, 2, 3], dtype="int8")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        b.tensor("t", args.pop("shape"), args.pop("dtype"), **args)


def test_duplicate_tensor_name():
    b = TFLiteBuilder()
    b.tensor("t", [1], "int8")
    with pytest.raises(ValueError, match="'t' is used twice"):
        b.tensor("t", [1], "int8")


@pytest.mark.parametrize(
    "opcode, options, message",
    [
        ("CONV_3X3", {}, "unknown TFLite builtin opcode 'CONV_3X3'"),
        ("_private", {}, "unknown TFLite builtin opcode"),
        ("CONV_2D", {"strides": 1}, "CONV_2D: unknown option 'strides'"),
        ("CONV_2D", {"padding": "FULL"}, "padding: unknown value 'FULL'; one of SAME, VALID"),
        ("CONV_2D", {"stride_h": 1.5}, "stride_h must be an int"),
        ("CONV_2D", {"fused_activation_function": "GELU"}, "fused_activation_function: unknown value 'GELU'"),
        ("MEAN", {"keep_dims": 1}, "keep_dims must be a bool"),
        ("LOGISTIC", {"alpha": 0.1}, "LOGISTIC: unknown option 'alpha' \\(its options: none\\)"),
    ],
)
def test_op_checks(opcode, options, message):
    b = TFLiteBuilder()
    x = b.tensor("x", [1, 4, 4, 1], "int8", scale=0.1)
    y = b.tensor("y", [1, 4, 4, 1], "int8", scale=0.1)
    with pytest.raises(ValueError, match=message):
        b.op(opcode, [x], [y], **options)


def test_op_tensor_indices():
    b = TFLiteBuilder()
    x = b.tensor("x", [1], "int8", scale=0.1)
    with pytest.raises(ValueError, match="output tensor 3 does not exist"):
        b.op("RELU", [x], [3])
    with pytest.raises(ValueError, match="output tensor -1 does not exist"):
        b.op("RELU", [x], [-1])
    with pytest.raises(ValueError, match="input tensor 7 does not exist"):
        b.op("RELU", [7], [x])
    with pytest.raises(ValueError, match="is not a tensor index"):
        b.op("RELU", ["x"], [x])
    c = b.tensor("c", [1], "int8", scale=0.1, data=np.zeros(1, np.int8))
    with pytest.raises(ValueError, match="subgraph input 'c' is a constant"):
        b.finish([c], [x])
