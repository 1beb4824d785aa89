"""Graph preparation (`npuq.quant.graph.prepare`): tracing, batch-norm folding, activation fusion, NPU node
kinds, float_op fallback and the errors on models that cannot be prepared."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.models.zoo import randomize_batch_norms
from npuq.quant.graph import Graph, TraceError, UnsupportedOpsError, prepare
from support.torchvision_compat import torchvision_models

# --------------------------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: see conftest.py


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert scale > 0, "degenerate test: the expected output is all zeros"
    assert err <= rtol * scale + 1e-7, f"max abs error {err:.3g} vs output scale {scale:.3g}"


def kinds(graph: Graph) -> Counter:
    return Counter(n.kind for n in graph if n.kind not in ("input", "output"))


@torch.no_grad()
def eval_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was_training)


def check_equivalent(model: nn.Module, graph: Graph, shape, seed: int = 1, rtol: float = 1e-4) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    assert_close_rel(graph.run_float(x), eval_output(model, x), rtol)


# ------------------------------------------------------------------------------------- torchvision models


def _torchvision_model(name: str, seed: int) -> nn.Module:
    models = torchvision_models()
    torch.manual_seed(seed)
    model = getattr(models, name)(weights=None)
    return randomize_batch_norms(model, seed).eval()


@pytest.fixture(scope="module")
def mobilenet_v2():
    model = _torchvision_model("mobilenet_v2", 0)
    return model, prepare(model, torch.randn(1, 3, 64, 64))


@pytest.fixture(scope="module")
def resnet18():
    model = _torchvision_model("resnet18", 1)
    return model, prepare(model, torch.randn(1, 3, 64, 64))


@pytest.fixture(scope="module")
def mobilenet_v3_small():
    model = _torchvision_model("mobilenet_v3_small", 2)
    return model, prepare(model, torch.randn(1, 3, 64, 64))


def _assert_folded_and_fused(graph: Graph) -> None:
    assert "bn" not in kinds(graph) and "act" not in kinds(graph)
    for n in graph.unsupported():
        assert "BatchNorm" not in n.op_name and n.op_name not in ("relu", "relu6"), n.describe()
    for n in graph:
        assert n.act in (None, "relu", "relu6")


def test_mobilenet_v2_prepared(mobilenet_v2):
    model, graph = mobilenet_v2
    assert kinds(graph) == Counter(conv=52, add=10, global_pool=1, flatten=1, linear=1)
    assert graph.unsupported() == []
    graph.check_supported()
    _assert_folded_and_fused(graph)
    # every ReLU6 of the model sits behind a conv: stem, 17 depthwise, 16 expansions, the last 1x1 conv
    relu6 = [n for n in graph if n.act == "relu6"]
    assert len(relu6) == sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 35
    assert all(n.kind == "conv" for n in relu6)
    # projections and the classifier stay linear; adds carry no activation
    assert all(n.act is None for n in graph if n.kind in ("add", "linear"))
    depthwise = [n for n in graph if n.kind == "conv" and n.is_depthwise]
    assert len(depthwise) == 17
    # each conv absorbed the batch norm after it
    assert all("+" in n.path for n in graph if n.kind == "conv")
    assert graph.input_shape == (3, 64, 64)
    check_equivalent(model, graph, (2, 3, 64, 64))


def test_mobilenet_v2_224():
    model = _torchvision_model("mobilenet_v2", 3)
    graph = prepare(model, torch.randn(1, 3, 224, 224))
    assert kinds(graph) == Counter(conv=52, add=10, global_pool=1, flatten=1, linear=1)
    check_equivalent(model, graph, (1, 3, 224, 224), seed=5)


def test_resnet18_prepared(resnet18):
    model, graph = resnet18
    assert kinds(graph) == Counter(conv=20, add=8, max_pool=1, global_pool=1, flatten=1, linear=1)
    graph.check_supported()
    _assert_folded_and_fused(graph)
    adds = [n for n in graph if n.kind == "add"]
    assert all(n.act == "relu" for n in adds)  # out = relu(out + identity) in every basic block
    relu_convs = [n for n in graph if n.kind == "conv" and n.act == "relu"]
    assert len(relu_convs) == 9  # stem + conv1 of each of the 8 blocks
    tail_convs = [n for n in graph if n.kind == "conv" and (".conv2" in n.path or ".downsample." in n.path)]
    assert len(tail_convs) == 8 + 3 and all(n.act is None for n in tail_convs)
    mp = next(n for n in graph if n.kind == "max_pool")
    assert mp.attrs == dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=False)
    check_equivalent(model, graph, (2, 3, 64, 64))


def test_mobilenet_v3_small_prepares_into_npu_ops(mobilenet_v3_small):
    """Hard-swish and hard-sigmoid become table activations, the squeeze-excitation scaling a broadcast
    multiply: no float op is left (they were float ops before program format 2)."""
    model, graph = mobilenet_v3_small
    _assert_folded_and_fused(graph)
    n_hswish = sum(isinstance(m, nn.Hardswish) for m in model.modules())
    n_hsig = sum(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    se_paths = [p for p, m in model.named_modules() if type(m).__name__ == "SqueezeExcitation"]
    assert n_hswish > 0 and n_hsig == len(se_paths) == 9
    assert not graph.unsupported()
    graph.check_supported()
    k = kinds(graph)
    assert k["lut"] == n_hswish + n_hsig and k["mul"] == len(se_paths) and k["conv"] == 52 and k["linear"] == 2
    assert Counter(n.attrs["function"] for n in graph if n.kind == "lut") == Counter(
        hardswish=n_hswish, hardsigmoid=n_hsig
    )
    # the 9 squeeze-excitation pools and the final average pool
    assert k["global_pool"] == 10
    for path in se_paths:  # each SE block's multiply: the full map first, the (N, C, 1, 1) scale second
        mul = next(n for n in graph if n.kind == "mul" and n.path == f"{path}.mul")
        assert graph[mul.inputs[0]].shape[2:] != (1, 1) and graph[mul.inputs[1]].shape[2:] == (1, 1)
    check_equivalent(model, graph, (2, 3, 64, 64))


def test_an_op_the_npu_lacks_is_named_with_its_module_path():
    class EluNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ELU())

        def forward(self, x):
            return torch.cumsum(self.block(x), dim=1)

    graph = prepare(EluNet().eval(), torch.randn(1, 3, 8, 8))
    with pytest.raises(UnsupportedOpsError) as info:
        graph.check_supported()
    msg = str(info.value)
    assert "2 op(s)" in msg and "block.1 (ELU)" in msg and "cumsum" in msg


# ------------------------------------------------------------------------------------ hand-written models


class Fn(nn.Module):
    """A module whose forward is ``fn(self, x)``; submodules are given as keyword arguments."""

    def __init__(self, fn, **modules):
        super().__init__()
        for name, m in modules.items():
            setattr(self, name, m)
        self.fn = fn

    def forward(self, x):
        return self.fn(self, x)


def _conv(cin=4, cout=6, k=3, **kw):
    kw.setdefault("padding", k // 2 if isinstance(k, int) else 0)
    return nn.Conv2d(cin, cout, k, **kw)


def _add_inplace(m, x):
    y = m.a(x)
    y += m.b(x)
    return y


def _bn_on_shared(m, x):
    y = m.c(x)  # two users: the batch norm cannot be folded into it
    return m.bn(y) + m.c2(y)


def _relu_on_shared(m, x):
    y = m.c(x)  # two users: the ReLU cannot be fused into it
    return F.relu(y) + y


def _add_broadcast(m, x):
    y = m.a(x)
    return y + y.mean(1, keepdim=True)  # (N, 6, H, W) + (N, 1, H, W): not an NPU add


def _mean_linear(keepdim):
    def fn(m, x):
        y = m.c(x).mean((2, 3), keepdim=keepdim)
        return y if keepdim else m.fc(y)

    return fn


# name -> (model factory, input shape, expected kinds); float equivalence is checked for all of them
CASES = {
    # ---- batch norm folding
    "conv_bn_relu": (lambda: nn.Sequential(_conv(3, 8), nn.BatchNorm2d(8), nn.ReLU()), (3, 8, 8), dict(conv=1)),
    "conv_nobias_bn": (lambda: nn.Sequential(_conv(3, 8, bias=False), nn.BatchNorm2d(8)), (3, 8, 8), dict(conv=1)),
    "linear_bn1d_relu": (
        lambda: nn.Sequential(nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4)),
        (12,),
        dict(linear=2),
    ),
    "flatten_linear_bn1d": (
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 5, bias=False), nn.BatchNorm1d(5)),
        (3, 4, 4),
        dict(flatten=1, linear=1),
    ),
    "standalone_bn2d": (lambda: nn.Sequential(nn.BatchNorm2d(4), _conv(4, 6)), (4, 6, 6), dict(conv=2)),
    "bn_after_relu": (lambda: nn.Sequential(_conv(4, 6), nn.ReLU(), nn.BatchNorm2d(6)), (4, 6, 6), dict(conv=2)),
    "bn_after_add": (
        lambda: Fn(lambda m, x: m.bn(m.a(x) + m.b(x)), a=_conv(), b=_conv(), bn=nn.BatchNorm2d(6)),
        (4, 6, 6),
        dict(conv=3, add=1),
    ),
    "bn_on_shared_conv": (
        lambda: Fn(_bn_on_shared, c=_conv(4, 6), bn=nn.BatchNorm2d(6), c2=_conv(6, 6, 1)),
        (4, 6, 6),
        dict(conv=3, add=1),
    ),
    "standalone_bn1d": (
        lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)),
        (3, 2, 2),
        dict(flatten=1, float_op=1),
    ),
    # ---- activations
    "module_relu6": (lambda: nn.Sequential(_conv(), nn.ReLU6(inplace=True)), (4, 6, 6), dict(conv=1)),
    "module_hardtanh_0_6": (lambda: nn.Sequential(_conv(), nn.Hardtanh(0.0, 6.0)), (4, 6, 6), dict(conv=1)),
    "F_relu": (lambda: Fn(lambda m, x: F.relu(m.c(x)), c=_conv()), (4, 6, 6), dict(conv=1)),
    "F_relu_inplace": (lambda: Fn(lambda m, x: F.relu(m.c(x), inplace=True), c=_conv()), (4, 6, 6), dict(conv=1)),
    "torch_relu": (lambda: Fn(lambda m, x: torch.relu(m.c(x)), c=_conv()), (4, 6, 6), dict(conv=1)),
    "method_relu": (lambda: Fn(lambda m, x: m.c(x).relu(), c=_conv()), (4, 6, 6), dict(conv=1)),
    "F_relu6": (lambda: Fn(lambda m, x: F.relu6(m.c(x)), c=_conv()), (4, 6, 6), dict(conv=1)),
    "F_hardtanh_0_6": (lambda: Fn(lambda m, x: F.hardtanh(m.c(x), 0.0, 6.0), c=_conv()), (4, 6, 6), dict(conv=1)),
    "clamp_0_6": (lambda: Fn(lambda m, x: torch.clamp(m.c(x), 0, 6), c=_conv()), (4, 6, 6), dict(conv=1)),
    "clamp_min_0": (lambda: Fn(lambda m, x: torch.clamp(m.c(x), min=0.0), c=_conv()), (4, 6, 6), dict(conv=1)),
    "linear_relu": (lambda: nn.Sequential(nn.Linear(12, 8), nn.ReLU()), (12,), dict(linear=1)),
    "add_relu": (
        lambda: Fn(lambda m, x: F.relu(m.a(x) + m.b(x)), a=_conv(), b=_conv()),
        (4, 6, 6),
        dict(conv=2, add=1),
    ),
    "relu6_then_relu": (lambda: nn.Sequential(_conv(), nn.ReLU6(), nn.ReLU()), (4, 6, 6), dict(conv=1)),
    # an activation with nothing to fuse into, or another clamp: a table of its own
    "relu_on_shared_conv": (lambda: Fn(_relu_on_shared, c=_conv()), (4, 6, 6), dict(conv=1, add=1, lut=1)),
    "hardtanh_default": (lambda: Fn(lambda m, x: F.hardtanh(m.c(x)), c=_conv()), (4, 6, 6), dict(conv=1, lut=1)),
    "clamp_0_4": (lambda: Fn(lambda m, x: torch.clamp(m.c(x), 0, 4), c=_conv()), (4, 6, 6), dict(conv=1, lut=1)),
    "relu_on_input": (lambda: nn.Sequential(nn.ReLU(), _conv()), (4, 6, 6), dict(conv=1, lut=1)),
    "clamp_min_only": (
        lambda: Fn(lambda m, x: torch.clamp(m.c(x), min=-1.0), c=_conv()),
        (4, 6, 6),
        dict(conv=1, float_op=1),
    ),
    # ---- flatten
    "view_size0": (
        lambda: Fn(lambda m, x: m.fc(m.c(x).view(x.size(0), -1)), c=_conv(), fc=nn.Linear(6 * 36, 5)),
        (4, 6, 6),
        dict(conv=1, flatten=1, linear=1),
    ),
    "reshape_shape0": (
        lambda: Fn(lambda m, x: m.fc(m.c(x).reshape(x.shape[0], -1)), c=_conv(), fc=nn.Linear(6 * 36, 5)),
        (4, 6, 6),
        dict(conv=1, flatten=1, linear=1),
    ),
    "view_minus1_k": (
        lambda: Fn(lambda m, x: m.fc(m.c(x).view(-1, 6 * 36)), c=_conv(), fc=nn.Linear(6 * 36, 5)),
        (4, 6, 6),
        dict(conv=1, flatten=1, linear=1),
    ),
    "torch_flatten": (
        lambda: Fn(lambda m, x: m.fc(torch.flatten(m.c(x), 1)), c=_conv(), fc=nn.Linear(6 * 36, 5)),
        (4, 6, 6),
        dict(conv=1, flatten=1, linear=1),
    ),
    "method_flatten": (
        lambda: Fn(lambda m, x: m.fc(m.c(x).flatten(1)), c=_conv(), fc=nn.Linear(6 * 36, 5)),
        (4, 6, 6),
        dict(conv=1, flatten=1, linear=1),
    ),
    "nn_flatten": (
        lambda: nn.Sequential(_conv(), nn.Flatten(), nn.Linear(6 * 36, 5)),
        (4, 6, 6),
        dict(conv=1, flatten=1, linear=1),
    ),
    "view_hardcoded_batch": (
        lambda: Fn(lambda m, x: m.c(x).view(1, -1), c=_conv()),
        (4, 6, 6),
        dict(conv=1, float_op=1),
    ),
    "flatten_start0": (lambda: Fn(lambda m, x: torch.flatten(m.c(x)), c=_conv()), (4, 6, 6), dict(conv=1, float_op=1)),
    # ---- global average pooling
    "mean_23": (
        lambda: Fn(_mean_linear(False), c=_conv(), fc=nn.Linear(6, 3)),
        (4, 6, 6),
        dict(conv=1, global_pool=1, flatten=1, linear=1),
    ),
    "mean_23_keepdim": (lambda: Fn(_mean_linear(True), c=_conv()), (4, 6, 6), dict(conv=1, global_pool=1)),
    "mean_negative_dims": (
        lambda: Fn(lambda m, x: m.c(x).mean(dim=[-1, -2]), c=_conv()),
        (4, 6, 6),
        dict(conv=1, global_pool=1, flatten=1),
    ),
    "torch_mean_23": (
        lambda: Fn(lambda m, x: torch.mean(m.c(x), dim=(2, 3), keepdim=True), c=_conv()),
        (4, 6, 6),
        dict(conv=1, global_pool=1),
    ),
    "mean_channels": (lambda: Fn(lambda m, x: m.c(x).mean(1), c=_conv()), (4, 6, 6), dict(conv=1, float_op=1)),
    "F_adaptive_avg_pool_1": (
        lambda: Fn(lambda m, x: F.adaptive_avg_pool2d(m.c(x), 1), c=_conv()),
        (4, 6, 6),
        dict(conv=1, global_pool=1),
    ),
    "F_adaptive_avg_pool_11": (
        lambda: Fn(lambda m, x: F.adaptive_avg_pool2d(m.c(x), (1, 1)), c=_conv()),
        (4, 6, 6),
        dict(conv=1, global_pool=1),
    ),
    "adaptive_avg_pool_module": (
        lambda: nn.Sequential(_conv(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()),
        (4, 6, 6),
        dict(conv=1, global_pool=1, flatten=1),
    ),
    "adaptive_avg_pool_2": (
        lambda: nn.Sequential(_conv(), nn.AdaptiveAvgPool2d(2)),
        (4, 6, 6),
        dict(conv=1, float_op=1),
    ),
    # ---- average / max pooling
    "avg_pool_module": (lambda: nn.Sequential(_conv(), nn.AvgPool2d(2)), (4, 8, 8), dict(conv=1, avg_pool=1)),
    "avg_pool_module_pad": (
        lambda: nn.Sequential(_conv(), nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        (4, 9, 9),
        dict(conv=1, avg_pool=1),
    ),
    "max_pool_module": (lambda: nn.Sequential(_conv(), nn.MaxPool2d(3, 2, 1)), (4, 9, 9), dict(conv=1, max_pool=1)),
    "F_avg_pool": (lambda: Fn(lambda m, x: F.avg_pool2d(m.c(x), 2), c=_conv()), (4, 8, 8), dict(conv=1, avg_pool=1)),
    "F_avg_pool_kw": (
        lambda: Fn(lambda m, x: F.avg_pool2d(m.c(x), 3, stride=2, padding=1, count_include_pad=False), c=_conv()),
        (4, 9, 9),
        dict(conv=1, avg_pool=1),
    ),
    "F_max_pool": (
        lambda: Fn(lambda m, x: F.max_pool2d(m.c(x), 3, 2, 1), c=_conv()),
        (4, 9, 9),
        dict(conv=1, max_pool=1),
    ),
    "F_max_pool_kw": (
        lambda: Fn(lambda m, x: F.max_pool2d(m.c(x), kernel_size=2), c=_conv()),
        (4, 8, 8),
        dict(conv=1, max_pool=1),
    ),
    "max_pool_ceil": (
        lambda: nn.Sequential(_conv(), nn.MaxPool2d(2, ceil_mode=True)),
        (4, 7, 7),
        dict(conv=1, max_pool=1),
    ),
    # ---- dropout / identity
    "dropout_modules": (
        lambda: nn.Sequential(_conv(), nn.Dropout(0.5), nn.ReLU(), nn.Dropout2d(0.3), nn.Identity()),
        (4, 6, 6),
        dict(conv=1),
    ),
    "F_dropout": (
        lambda: Fn(lambda m, x: F.relu(F.dropout(m.c(x), 0.5, m.training)), c=_conv()),
        (4, 6, 6),
        dict(conv=1),
    ),
    # ---- residual add
    "add_operator": (lambda: Fn(lambda m, x: m.a(x) + m.b(x), a=_conv(), b=_conv()), (4, 6, 6), dict(conv=2, add=1)),
    "add_inplace": (lambda: Fn(_add_inplace, a=_conv(), b=_conv()), (4, 6, 6), dict(conv=2, add=1)),
    "torch_add": (
        lambda: Fn(lambda m, x: torch.add(m.a(x), m.b(x)), a=_conv(), b=_conv()),
        (4, 6, 6),
        dict(conv=2, add=1),
    ),
    "method_add": (lambda: Fn(lambda m, x: m.a(x).add(m.b(x)), a=_conv(), b=_conv()), (4, 6, 6), dict(conv=2, add=1)),
    "add_input_skip": (lambda: Fn(lambda m, x: F.relu(m.a(x) + x), a=_conv(4, 4)), (4, 6, 6), dict(conv=1, add=1)),
    "add_alpha": (
        lambda: Fn(lambda m, x: torch.add(m.a(x), m.b(x), alpha=2), a=_conv(), b=_conv()),
        (4, 6, 6),
        dict(conv=2, float_op=1),
    ),
    "add_scalar": (lambda: Fn(lambda m, x: m.a(x) + 1.0, a=_conv()), (4, 6, 6), dict(conv=1, float_op=1)),
    "add_broadcast": (lambda: Fn(_add_broadcast, a=_conv()), (4, 6, 6), dict(conv=1, float_op=2)),
    # ---- convolution variants
    "grouped_conv": (
        lambda: nn.Sequential(_conv(4, 8, groups=2), nn.BatchNorm2d(8), nn.ReLU()),
        (4, 6, 6),
        dict(conv=1),
    ),
    "depthwise_conv": (
        lambda: nn.Sequential(_conv(4, 4, groups=4), nn.BatchNorm2d(4), nn.ReLU6()),
        (4, 6, 6),
        dict(conv=1),
    ),
    "depthwise_multiplier": (lambda: nn.Sequential(_conv(4, 8, groups=4), nn.BatchNorm2d(8)), (4, 6, 6), dict(conv=1)),
    "dilated_conv": (
        lambda: nn.Sequential(_conv(4, 6, 3, padding=2, dilation=2), nn.BatchNorm2d(6)),
        (4, 9, 9),
        dict(conv=1),
    ),
    "asymmetric_kernels": (
        lambda: nn.Sequential(
            _conv(4, 6, (1, 3), padding=(0, 1)),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            _conv(6, 6, (3, 1), stride=(2, 1), padding=(1, 0)),
        ),
        (4, 7, 9),
        dict(conv=2),
    ),
    "strided_conv": (
        lambda: nn.Sequential(_conv(4, 6, 3, stride=2, padding=0), nn.BatchNorm2d(6)),
        (4, 9, 8),
        dict(conv=1),
    ),
    "padding_same": (
        lambda: nn.Sequential(_conv(4, 6, 3, padding="same"), nn.BatchNorm2d(6), nn.ReLU()),
        (4, 7, 7),
        dict(conv=1),
    ),
    "padding_same_dilated": (
        lambda: nn.Sequential(_conv(4, 6, (5, 3), padding="same", dilation=2)),
        (4, 11, 11),
        dict(conv=1),
    ),
    "padding_valid": (
        lambda: nn.Sequential(_conv(4, 6, 3, padding="valid"), nn.BatchNorm2d(6)),
        (4, 7, 7),
        dict(conv=1),
    ),
    # torch pads an even "same" extent one pixel more at the bottom / right: asymmetric NPU padding
    "padding_same_even_kernel": (lambda: nn.Sequential(_conv(4, 6, 4, padding="same")), (4, 7, 7), dict(conv=1)),
    "zero_pad_then_conv": (
        lambda: nn.Sequential(nn.ZeroPad2d((0, 1, 1, 0)), _conv(4, 6, 3, stride=2)),
        (4, 8, 8),
        dict(conv=1),
    ),
    "zero_pad_then_pool": (
        lambda: nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(2)),
        (4, 8, 8),
        dict(pad=1, max_pool=1),
    ),
    "padding_mode_reflect": (
        lambda: nn.Sequential(_conv(4, 6, 3, padding=1, padding_mode="reflect")),
        (4, 7, 7),
        dict(float_op=1),
    ),
    # ---- the ops of program format 2
    "concat_channels": (
        lambda: Fn(lambda m, x: torch.cat([m.a(x), F.relu(m.b(x))], 1), a=_conv(), b=_conv()),
        (4, 6, 6),
        dict(conv=2, concat=1),
    ),
    "concat_batch_axis": (
        lambda: Fn(lambda m, x: torch.cat([m.c(x), m.c(x)], 0), c=_conv()),
        (4, 6, 6),
        dict(conv=2, float_op=1),
    ),
    "channel_shuffle": (
        lambda: Fn(lambda m, x: _shuffle(m.c(x), 3), c=_conv()),
        (4, 6, 6),
        dict(conv=1, channel_shuffle=1),
    ),
    "grouped_view_unfinished": (  # a 5-D view that ends in a sum, not a shuffle: its steps stay float ops
        lambda: Fn(lambda m, x: m.c(x).view(x.size(0), 2, 3, 6, 6).sum(1), c=_conv()),
        (4, 6, 6),
        dict(conv=1, float_op=3),  # x.size(), .view(), .sum()
    ),
    "chunk_and_split": (
        lambda: Fn(_chunk_and_split, c=_conv()),
        (4, 6, 6),
        dict(conv=1, slice=5, concat=1),
    ),
    "se_multiply": (
        lambda: Fn(
            lambda m, x: m.c(x) * torch.sigmoid(m.s(F.adaptive_avg_pool2d(m.c(x), 1))), c=_conv(), s=_conv(6, 6, 1)
        ),
        (4, 6, 6),
        dict(conv=3, global_pool=1, lut=1, mul=1),
    ),
    "mul_of_mismatched_shapes": (
        lambda: Fn(lambda m, x: m.c(x) * m.c(x)[:, :1], c=_conv()),
        (4, 6, 6),
        dict(conv=2, float_op=2),
    ),
    "activation_tables": (
        lambda: nn.Sequential(
            _conv(), nn.Hardswish(), nn.SiLU(), nn.GELU(approximate="tanh"), nn.LeakyReLU(0.2), nn.Tanh()
        ),
        (4, 6, 6),
        dict(conv=1, lut=5),
    ),
    "upsample_nearest_and_bilinear": (
        lambda: nn.Sequential(_conv(), nn.Upsample(scale_factor=2), nn.Upsample(scale_factor=(1, 3), mode="bilinear")),
        (4, 5, 5),
        dict(conv=1, upsample=2),
    ),
    "upsample_align_corners": (
        lambda: nn.Sequential(_conv(), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)),
        (4, 5, 5),
        dict(conv=1, float_op=1),
    ),
}


def _chunk_and_split(m, x):
    y = m.c(x)
    p, q = y.chunk(3, dim=1), torch.split(y, [1, 5], dim=1)
    return torch.cat([p[2], p[1], p[0], q[0], q[1]], 1)


def _shuffle(x, groups):
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name", list(CASES))
def test_hand_written_model(name):
    factory, shape, expected = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    model = randomize_batch_norms(factory(), seed=len(name)).eval()
    graph = prepare(model, torch.randn(1, *shape))
    assert kinds(graph) == Counter(expected), graph.summary()
    assert "bn" not in kinds(graph) and "act" not in kinds(graph)
    batch = 1 if name == "view_hardcoded_batch" else 3
    check_equivalent(model, graph, (batch, *shape), seed=7)


def _single(graph: Graph, kind: str):
    found = [n for n in graph if n.kind == kind]
    assert len(found) == 1, graph.summary()
    return found[0]


@pytest.mark.parametrize(
    "name, act",
    [
        ("conv_bn_relu", "relu"),
        ("conv_nobias_bn", None),
        ("module_relu6", "relu6"),
        ("module_hardtanh_0_6", "relu6"),
        ("F_relu", "relu"),
        ("F_relu_inplace", "relu"),
        ("torch_relu", "relu"),
        ("method_relu", "relu"),
        ("F_relu6", "relu6"),
        ("F_hardtanh_0_6", "relu6"),
        ("clamp_0_6", "relu6"),
        ("clamp_min_0", "relu"),
        ("relu6_then_relu", "relu6"),
        ("dropout_modules", "relu"),
        ("F_dropout", "relu"),
        ("padding_same", "relu"),
        ("depthwise_conv", "relu6"),
        ("grouped_conv", "relu"),
    ],
)
def test_activation_fused_into_conv(name, act):
    factory, shape, _ = CASES[name]
    graph = prepare(factory().eval(), torch.randn(1, *shape))
    assert _single(graph, "conv").act == act


def test_fused_activations_on_add_and_linear():
    g = prepare(CASES["add_relu"][0]().eval(), torch.randn(1, 4, 6, 6))
    assert _single(g, "add").act == "relu"
    assert all(n.act is None for n in g if n.kind == "conv")
    g = prepare(CASES["linear_relu"][0]().eval(), torch.randn(1, 12))
    assert _single(g, "linear").act == "relu"
    g = prepare(CASES["linear_bn1d_relu"][0]().eval(), torch.randn(1, 12))
    assert [n.act for n in g.layers()] == ["relu", None]


def test_method_clamp_is_fused():
    model = Fn(lambda m, x: m.c(x).clamp(0, 6), c=_conv()).eval()
    graph = prepare(model, torch.randn(1, 4, 6, 6))
    check_equivalent(model, graph, (2, 4, 6, 6))
    assert kinds(graph) == Counter(conv=1)
    assert _single(graph, "conv").act == "relu6"


def test_batch_norm_folding_details():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, bias=False)
    bn = randomize_batch_norms(nn.BatchNorm2d(5), 3)
    model = nn.Sequential(conv, bn).eval()
    node = _single(prepare(model, torch.randn(1, 3, 5, 5)), "conv")
    std = torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(node.weight, conv.weight.detach() * (bn.weight / std).detach().reshape(-1, 1, 1, 1))
    torch.testing.assert_close(node.bias, (bn.bias - bn.running_mean * bn.weight / std).detach())
    beta, abs_gamma = node.bn
    torch.testing.assert_close(beta, bn.bias.detach())
    torch.testing.assert_close(abs_gamma, bn.weight.detach().abs())
    assert node.path == "0+1"
    assert node.attrs == dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)


def test_standalone_bn2d_is_depthwise_1x1():
    model = randomize_batch_norms(nn.Sequential(nn.BatchNorm2d(4), _conv(4, 6)), 4).eval()
    graph = prepare(model, torch.randn(1, 4, 6, 6))
    dw = graph.layers()[0]
    assert dw.kind == "conv" and dw.is_depthwise and dw.weight.shape == (4, 1, 1, 1)
    assert dw.attrs == dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=4)
    assert dw.bn is not None and dw.path == "0"
    assert graph.layers()[1].bn is None


def test_conv_attributes():
    g = prepare(CASES["padding_same_dilated"][0]().eval(), torch.randn(1, 4, 11, 11))
    assert _single(g, "conv").attrs == dict(stride=(1, 1), padding=(4, 2), dilation=(2, 2), groups=1)
    g = prepare(CASES["asymmetric_kernels"][0]().eval(), torch.randn(1, 4, 7, 9))
    a, b = g.layers()
    assert a.attrs["padding"] == (0, 1) and b.attrs["stride"] == (2, 1) and b.attrs["padding"] == (1, 0)
    g = prepare(CASES["grouped_conv"][0]().eval(), torch.randn(1, 4, 6, 6))
    n = _single(g, "conv")
    assert n.attrs["groups"] == 2 and not n.is_depthwise
    g = prepare(CASES["depthwise_multiplier"][0]().eval(), torch.randn(1, 4, 6, 6))
    assert not _single(g, "conv").is_depthwise  # 2 outputs per group: grouped, not depthwise
    g = prepare(CASES["avg_pool_module_pad"][0]().eval(), torch.randn(1, 4, 9, 9))
    assert _single(g, "avg_pool").attrs == dict(
        kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=False
    )
    g = prepare(CASES["F_max_pool_kw"][0]().eval(), torch.randn(1, 4, 8, 8))
    assert _single(g, "max_pool").attrs == dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False)


def test_view_with_hardcoded_batch_is_not_flatten():
    model = CASES["view_hardcoded_batch"][0]().eval()
    graph = prepare(model, torch.randn(1, 4, 6, 6))
    op = _single(graph, "float_op")
    assert op.op_name == ".view()"
    with pytest.raises(UnsupportedOpsError, match=r"\.view"):
        graph.check_supported()
    # followed by a layer sized for batch 1, the model does not run at batch 2: refused, never taken for a flatten
    model = Fn(lambda m, x: m.fc(m.c(x).view(1, -1)), c=_conv(), fc=nn.Linear(6 * 36, 5)).eval()
    with pytest.raises(ValueError, match=r"\(4, 6, 6\) \(batch 2\)"):
        prepare(model, torch.randn(1, 4, 6, 6))


def test_shape_helpers_are_pruned():
    # x.size(0) / x.shape[0] only feed the recognised flatten: no float_op is left for them
    for name in ("view_size0", "reshape_shape0"):
        graph = prepare(CASES[name][0]().eval(), torch.randn(2, 4, 6, 6))
        assert graph.unsupported() == []
        assert [n.kind for n in graph] == ["input", "conv", "flatten", "linear", "output"]


def test_adaptive_pool_with_none_output_size_is_float_op():
    model = nn.Sequential(_conv(), nn.AdaptiveAvgPool2d((None, 1))).eval()
    graph = prepare(model, torch.randn(1, 4, 6, 6))
    assert kinds(graph) == Counter(conv=1, float_op=1)
    check_equivalent(model, graph, (2, 4, 6, 6))


# ---------------------------------------------------------------------------------------------- errors


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            return y
        return -y


class _Middle(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(4, 4, 1)
        self.branchy = _Branchy()

    def forward(self, x):
        return self.branchy(torch.relu(self.pre(x)))


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.blocks = nn.Sequential(nn.ReLU(), _Middle())

    def forward(self, x):
        return self.blocks(self.stem(x))


def test_data_dependent_control_flow_names_the_submodule():
    with pytest.raises(TraceError) as info:
        prepare(_Outer(), torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "'blocks.1.branchy'" in msg and "_Branchy" in msg
    assert "control flow" in msg


def test_data_dependent_control_flow_at_top_level():
    class Top(nn.Module):
        def forward(self, x):
            return x if x.mean() > 0 else -x

    with pytest.raises(TraceError, match="top-level forward of Top"):
        prepare(Top(), torch.randn(1, 3, 4, 4))


def test_tuple_output_is_rejected():
    model = Fn(lambda m, x: (m.a(x), m.b(x)), a=_conv(), b=_conv())
    with pytest.raises(UnsupportedOpsError, match="must return one tensor.*tuple"):
        prepare(model, torch.randn(1, 4, 6, 6))


def test_two_inputs_with_default_are_rejected():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = _conv()

        def forward(self, x, offset=0.5):
            return self.c(x) + offset

    with pytest.raises(UnsupportedOpsError, match="exactly one input"):
        prepare(TwoIn(), torch.randn(1, 4, 6, 6))


def test_two_inputs_are_rejected_with_a_clear_message():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = _conv()

        def forward(self, x, y):
            return self.c(x) + self.c(y)

    with pytest.raises(ValueError) as info:
        prepare(TwoIn(), torch.randn(1, 4, 6, 6))
    assert isinstance(info.value, UnsupportedOpsError) and "one input" in str(info.value)


def test_two_inputs_still_raise_value_error():
    # whatever the message, a two-input model never produces a graph
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = _conv()

        def forward(self, x, y):
            return self.c(x) + self.c(y)

    with pytest.raises(ValueError):
        prepare(TwoIn(), torch.randn(1, 4, 6, 6))


def test_nan_conv_weight_names_the_layer():
    model = nn.Sequential(nn.Sequential(_conv(4, 6), nn.ReLU()), nn.Sequential(_conv(6, 6), nn.BatchNorm2d(6)))
    with torch.no_grad():
        model[1][0].weight[2, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'1\.0\+1\.1'.*NaN/inf.*weight.*\(2, 1, 0, 0\)"):
        prepare(model, torch.randn(1, 4, 6, 6))


def test_inf_bn_running_var_names_the_layer():
    model = nn.Sequential(_conv(4, 6), nn.Sequential(nn.BatchNorm2d(6), nn.ReLU()))
    with torch.no_grad():
        model[1][0].running_var[3] = float("inf")
    with pytest.raises(ValueError, match=r"batch norm '1\.0'.*running_var"):
        prepare(model, torch.randn(1, 4, 6, 6))


def test_nan_linear_bias_names_the_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"'1'.*bias"):
        prepare(model, torch.randn(1, 2, 2, 2))


def test_type_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        prepare(lambda x: x, torch.randn(1, 3, 4, 4))
    model = nn.Sequential(_conv())
    with pytest.raises(TypeError, match="example_input"):
        prepare(model, [[1.0, 2.0]])
    with pytest.raises(TypeError, match="example_input"):
        prepare(model, torch.zeros(1, 4, 6, 6, dtype=torch.int64))


def test_wrong_example_shape_is_value_error():
    model = nn.Sequential(_conv(4, 6), nn.Flatten(), nn.Linear(6 * 36, 3))
    with pytest.raises(ValueError, match=r"\(3, 6, 6\)"):
        prepare(model, torch.randn(1, 3, 6, 6))  # wrong channel count
    with pytest.raises(ValueError, match=r"\(4, 8, 8\)"):
        prepare(model, torch.randn(1, 4, 8, 8))  # wrong spatial size for the linear layer
    with pytest.raises(ValueError, match=r"\(216,\)"):
        prepare(model, torch.randn(216))  # no batch dimension


def test_prepare_does_not_modify_the_model():
    torch.manual_seed(0)
    model = randomize_batch_norms(
        nn.Sequential(
            _conv(3, 8),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            _conv(8, 8, groups=8),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
            nn.BatchNorm1d(4),
        ),
        0,
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = prepare(model, torch.randn(2, 3, 8, 8))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model.training and all(m.training for m in model.modules())
    # the graph owns its tensors: editing them leaves the model alone
    for n in graph.layers():
        n.weight.mul_(0.0)
        n.bias.add_(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_clone_is_deep():
    torch.manual_seed(0)
    model = randomize_batch_norms(nn.Sequential(_conv(3, 6), nn.BatchNorm2d(6), nn.ReLU(), _conv(6, 6)), 1).eval()
    graph = prepare(model, torch.randn(1, 3, 6, 6))
    x = torch.randn(2, 3, 6, 6)
    ref = graph.run_float(x)
    snapshot = [(n.weight.clone(), n.bias.clone()) for n in graph.layers()]
    clone = graph.clone()
    for n in clone.layers():
        n.weight.mul_(-3.0)
        n.bias.add_(2.0)
        if n.bn is not None:
            n.bn[0].add_(1.0)
            n.bn[1].mul_(2.0)
        n.attrs["stride"] = (2, 2)
        n.inputs.append("bogus")
    clone.nodes[1].act = None
    clone[clone.nodes[1].name].path = "changed"
    for n, (w, b) in zip(graph.layers(), snapshot):
        assert torch.equal(n.weight, w) and torch.equal(n.bias, b)
        assert n.attrs["stride"] == (1, 1) and "bogus" not in n.inputs
    first = graph.layers()[0]
    assert first.act == "relu" and first.path == "0+1+2"
    torch.testing.assert_close(first.bn[0], model[1].bias.detach())
    assert torch.equal(graph.run_float(x), ref)
    assert [n.name for n in clone] == [n.name for n in graph]


def test_run_float_capture():
    model = randomize_batch_norms(nn.Sequential(_conv(3, 6), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten()), 2).eval()
    graph = prepare(model, torch.randn(1, 3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    out, env = graph.run_float(x, capture=True)
    assert torch.equal(env[graph.input_name], x)
    assert torch.equal(env[graph.output_name], out)
    conv = _single(graph, "conv")
    assert env[conv.name].min() >= 0  # the fused ReLU is applied to the captured value
    with torch.no_grad():
        torch.testing.assert_close(env[conv.name], model[:3](x), rtol=1e-5, atol=1e-5)
