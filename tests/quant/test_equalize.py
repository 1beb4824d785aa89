"""Cross-layer equalization, high-bias absorption and bias correction (`npuq.quant.equalize`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.quant.equalize import bias_correction, cross_layer_equalize, equalizable_pairs, input_channel_means
from npuq.quant.graph import Graph, Node, prepare
from support.torchvision_compat import torchvision_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: see conftest.py


# --------------------------------------------------------------------------------------------- helpers


def randomize_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert scale > 0
    assert err <= rtol * scale, f"max abs error {err:.3g} vs output scale {scale:.3g}"


def out_ranges(n: Node) -> torch.Tensor:
    """max |W| per output channel."""
    return n.weight.double().abs().reshape(n.weight.shape[0], -1).amax(dim=1)


def in_ranges(n: Node) -> torch.Tensor:
    """max |W| per input channel of the layer (grouped convs: channel index = group * C_in/g + j)."""
    w = n.weight.double().abs()
    if n.kind == "linear":
        return w.amax(dim=0)
    g = n.attrs["groups"]
    per_group = w.reshape(g, w.shape[0] // g, w.shape[1], -1).amax(dim=(1, 3))  # (g, C_in/g)
    return per_group.reshape(-1)


def spread(r: torch.Tensor) -> float:
    return float(r.max() / r.min())


def mobile_chain(act=nn.ReLU, dw_spread: float | None = None) -> nn.Module:
    """conv-bn-act -> depthwise-bn-act -> 1x1 conv-bn-act -> pool -> linear-act -> linear."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        act(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        act(),
        nn.Conv2d(8, 12, 1),
        nn.BatchNorm2d(12),
        act(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 10),
        act(),
        nn.Linear(10, 5),
    )
    randomize_batch_norms(model, 1)
    if dw_spread is not None:
        with torch.no_grad():
            model[3].weight.mul_(torch.logspace(0, torch.log10(torch.tensor(dw_spread)), 8).reshape(-1, 1, 1, 1))
    return model.eval()


# -------------------------------------------------------------------------------------- equalization


def test_pairs_of_the_chain():
    graph = prepare(mobile_chain(), torch.randn(1, 3, 8, 8))
    pairs = [(a.path, b.path) for a, b in equalizable_pairs(graph)]
    assert pairs == [("0+1+2", "3+4+5"), ("3+4+5", "6+7+8"), ("11+12", "13")]


def test_cle_keeps_the_float_function():
    model = mobile_chain()
    graph = prepare(model, torch.randn(1, 3, 8, 8))
    before = [(n.weight.clone(), n.bias.clone()) for n in graph.layers()]
    result = cross_layer_equalize(graph, absorb_high_bias=False)
    assert result.pairs == [("0+1+2", "3+4+5"), ("3+4+5", "6+7+8"), ("11+12", "13")]
    assert result.relu6_replaced == [] and result.absorbed == {}
    assert 1 < result.sweeps < 50
    # the weights did change (otherwise the equivalence below says nothing)
    assert any(not torch.allclose(n.weight, w, rtol=1e-2) for n, (w, _) in zip(graph.layers(), before))
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_rel(graph.run_float(x), model(x))
    # converged: every pair has r1_i == r2_i
    for a, b in equalizable_pairs(graph):
        torch.testing.assert_close(out_ranges(a), in_ranges(b), rtol=1e-3, atol=0)


def test_cle_balances_an_unbalanced_depthwise_layer():
    model = mobile_chain(dw_spread=3000.0)
    graph = prepare(model, torch.randn(1, 3, 8, 8))
    c1, dw, pw = graph.layers()[:3]
    assert dw.is_depthwise
    r1, rdw, r3 = out_ranges(c1), out_ranges(dw), in_ranges(pw)
    assert spread(rdw) > 1000
    # per channel i, CLE only moves scale between the three layers: r1_i * rdw_i * r3_i is invariant, and at
    # the fixed point the three ranges are equal, i.e. each is the cube root of that product
    target = (r1 * rdw * r3) ** (1 / 3)
    cross_layer_equalize(graph, absorb_high_bias=False)
    for r in (out_ranges(c1), out_ranges(dw), in_ranges(dw), in_ranges(pw)):
        torch.testing.assert_close(r, target, rtol=2e-3, atol=0)
    assert spread(out_ranges(dw)) < 20
    assert spread(out_ranges(dw)) == pytest.approx(spread(target), rel=1e-2)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_close_rel(graph.run_float(x), model(x))


def test_cle_on_resnet18():
    models = torchvision_models()
    torch.manual_seed(0)
    model = randomize_batch_norms(models.resnet18(weights=None, num_classes=10), 2).eval()
    graph = prepare(model, torch.randn(1, 3, 32, 32))
    result = cross_layer_equalize(graph, absorb_high_bias=False)
    # conv1 -> conv2 inside each basic block; all other convs feed adds or several users
    assert len(result.pairs) == 8
    for a, b in result.pairs:
        block = a.split(".conv1+")[0]
        assert block.startswith("layer") and a.startswith(f"{block}.conv1+{block}.bn1+")
        assert b == f"{block}.conv2+{block}.bn2"
    for a, b in equalizable_pairs(graph):
        torch.testing.assert_close(out_ranges(a), in_ranges(b), rtol=1e-3, atol=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_close_rel(graph.run_float(x), model(x))


def test_cle_leaves_dead_channels_alone():
    model = mobile_chain()
    with torch.no_grad():
        model[0].weight[2] = 0.0  # an output channel with zero range
        model[6].weight[:, 5] = 0.0  # an input channel with zero range
    graph = prepare(model, torch.randn(1, 3, 8, 8))
    cross_layer_equalize(graph, absorb_high_bias=False)
    for n in graph.layers():
        assert torch.all(torch.isfinite(n.weight)) and torch.all(torch.isfinite(n.bias))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert_close_rel(graph.run_float(x), model(x))


def test_cle_rescales_the_batch_norm_statistics():
    graph = prepare(mobile_chain(), torch.randn(1, 3, 8, 8))
    first = graph.layers()[0]
    beta0, gamma0 = (t.clone() for t in first.bn)
    w0 = out_ranges(first)
    cross_layer_equalize(graph, absorb_high_bias=False)
    s = w0 / out_ranges(first)  # the layer's output channels were divided by s
    torch.testing.assert_close(first.bn[0].double(), beta0.double() / s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(first.bn[1].double(), gamma0.double() / s, rtol=1e-4, atol=1e-6)


def test_relu6_pairs_become_relu_with_the_opt_in():
    model = mobile_chain(act=nn.ReLU6)
    with torch.no_grad():  # small weights: no activation reaches 6, where ReLU6 and ReLU differ
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(0.3)
    graph = prepare(model, torch.randn(1, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    _, env = graph.run_float(x, capture=True)
    assert max(float(env[n.name].max()) for n in graph.layers()) < 6
    assert [n.act for n in graph.layers()] == ["relu6", "relu6", "relu6", "relu6", None]
    result = cross_layer_equalize(graph, absorb_high_bias=False, relu6="replace")
    assert result.relu6_replaced == ["0+1+2", "3+4+5", "11+12"] and result.skipped == []
    # the paired producers became ReLU; the 1x1 conv feeds the pool, not a layer, so it keeps its ReLU6
    assert [n.act for n in graph.layers()] == ["relu", "relu", "relu6", "relu", None]
    with torch.no_grad():
        assert_close_rel(graph.run_float(x), model(x))


# ----------------------------------------------------------------------------------- high-bias absorption


class HighBias(nn.Module):
    """conv (no padding) -> BN with a large beta -> ReLU -> conv (no padding) -> ReLU -> 1x1 conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3)
        self.conv3 = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def _high_bias_model(calib: torch.Tensor) -> HighBias:
    model = HighBias().eval()
    with torch.no_grad():
        y = model.conv1(calib)
        # running statistics wider than the data: the normalized pre-activation stays within +-3 sigma
        model.bn1.running_mean.copy_(y.mean((0, 2, 3)))
        model.bn1.running_var.copy_(4.0 * y.var((0, 2, 3)))
        model.bn1.weight.copy_(torch.tensor([0.5, -0.8, 1.0, 0.3, 2.0, 0.7]))
        # channels 0, 1, 4, 5: beta - 3|gamma| > 0 (absorbed); channels 2, 3: nothing to absorb
        model.bn1.bias.copy_(torch.tensor([4.0, 3.0, 1.0, -0.5, 7.0, 2.2]))
    return model


def test_high_bias_absorption_is_exact_above_the_threshold():
    gen = torch.Generator().manual_seed(12)
    calib = torch.rand(8, 3, 10, 10, generator=gen) * 2 - 1
    model = _high_bias_model(calib)
    graph = prepare(model, calib[:1])
    # precondition: every pre-activation of conv1 lies above beta - 3|gamma|
    node1 = graph.layers()[0]
    z = F.conv2d(calib, node1.weight, node1.bias)
    beta, abs_gamma = node1.bn
    assert torch.all(z >= (beta - 3 * abs_gamma).reshape(1, -1, 1, 1))

    only_cle = graph.clone()
    cross_layer_equalize(only_cle, absorb_high_bias=False)
    result = cross_layer_equalize(graph, absorb_high_bias=True)
    a, b = graph.layers()[:2]
    a_cle, b_cle = only_cle.layers()[:2]
    assert result.pairs == [("conv1+bn1+relu", "conv2+relu"), ("conv2+relu", "conv3")]
    torch.testing.assert_close(a.weight, a_cle.weight)

    c = torch.clamp(a_cle.bn[0].double() - 3 * a_cle.bn[1].double(), min=0)
    assert torch.equal(c > 0, torch.tensor([True, True, False, False, True, True]))
    # the first layer's bias went down by c, the next layer's bias took W @ c
    torch.testing.assert_close(a.bias.double(), a_cle.bias.double() - c, rtol=0, atol=1e-5)
    assert torch.all(a.bias[c > 0] < a_cle.bias[c > 0]) and torch.equal(a.bias[c == 0], a_cle.bias[c == 0])
    shift = b_cle.weight.double().sum(dim=(2, 3)) @ c
    torch.testing.assert_close(b.bias.double(), b_cle.bias.double() + shift, rtol=0, atol=1e-4)
    assert result.absorbed["conv1+bn1+relu"] == pytest.approx(float(c.sum()), rel=1e-5)
    torch.testing.assert_close(a.bn[0].double(), a_cle.bn[0].double() - c, rtol=0, atol=1e-5)

    with torch.no_grad():
        ref = model(calib)
        assert_close_rel(only_cle.run_float(calib), ref)
        assert_close_rel(graph.run_float(calib), ref)
    # the activations after the absorbing layer moved down by exactly c
    _, env = graph.run_float(calib, capture=True)
    _, env_cle = only_cle.run_float(calib, capture=True)
    torch.testing.assert_close(env[a.name], env_cle[a.name] - c.float().reshape(1, -1, 1, 1), rtol=0, atol=1e-4)


def test_high_bias_absorption_changes_the_output_below_the_threshold():
    # with running statistics much narrower than the data, pre-activations fall below beta - 3|gamma|:
    # absorbing is then an approximation, and the test shows the exact case above is not vacuous
    gen = torch.Generator().manual_seed(13)
    calib = torch.rand(8, 3, 10, 10, generator=gen) * 2 - 1
    model = _high_bias_model(calib)
    with torch.no_grad():
        model.bn1.running_var.mul_(1e-3)
    graph = prepare(model, calib[:1])
    cross_layer_equalize(graph, absorb_high_bias=True)
    with torch.no_grad():
        ref = model(calib)
    assert float((graph.run_float(calib) - ref).abs().max()) > 1e-2 * float(ref.abs().max())


def test_no_absorption_for_small_biases():
    graph = prepare(mobile_chain(), torch.randn(1, 3, 8, 8))
    for n in graph.layers():
        if n.bn is not None:
            assert torch.all(n.bn[0] - 3 * n.bn[1] <= 0)
    reference = graph.clone()
    cross_layer_equalize(reference, absorb_high_bias=False)
    result = cross_layer_equalize(graph, absorb_high_bias=True)
    assert result.absorbed == {}
    for n, m in zip(graph.layers(), reference.layers()):
        assert torch.equal(n.bias, m.bias)


# ------------------------------------------------------------------------------------------ bias correction


def _quantize(w: torch.Tensor, levels: int = 7) -> torch.Tensor:
    step = w.abs().max() / levels
    return torch.round(w / step) * step


def _batches(shape, n, seed, offset=1.5):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) + offset for _ in range(n)]


def test_bias_correction_linear_exact():
    torch.manual_seed(20)
    graph = prepare(nn.Sequential(nn.Linear(16, 8)).eval(), torch.randn(1, 16))
    node = graph.layers()[0]
    batches = _batches((32, 16), 4, seed=21)
    means = input_channel_means(graph, batches)
    assert set(means) == {node.name}
    x = torch.cat(batches)
    torch.testing.assert_close(means[node.name], x.double().mean(0))
    wq = _quantize(node.weight)
    corrected = bias_correction(node, wq, means[node.name])
    assert corrected.shape == node.bias.shape and corrected.dtype == torch.float32
    ref = F.linear(x, node.weight, node.bias).mean(0)
    before = F.linear(x, wq, node.bias).mean(0)
    after = F.linear(x, wq, corrected).mean(0)
    assert float((before - ref).abs().max()) > 0.05  # the quantization shifted the mean output
    torch.testing.assert_close(after, ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(bias_correction(node, node.weight, means[node.name]), node.bias)


@pytest.mark.parametrize("kernel, groups, constant_maps", [(1, 1, False), (1, 4, False), (3, 1, True), (3, 2, True)])
def test_bias_correction_conv_exact(kernel, groups, constant_maps):
    """Exact where every input position counts equally in the output mean: 1x1 convs (no padding, stride 1),
    or feature maps that are constant over space for larger kernels (no padding)."""
    torch.manual_seed(22)
    graph = prepare(nn.Sequential(nn.Conv2d(4, 8, kernel, groups=groups)).eval(), torch.randn(1, 4, 8, 8))
    node = graph.layers()[0]
    batches = _batches((16, 4, 1, 1) if constant_maps else (16, 4, 8, 8), 3, seed=23)
    batches = [b.expand(16, 4, 8, 8).contiguous() for b in batches]
    mean = input_channel_means(graph, batches)[node.name]
    wq = _quantize(node.weight)
    corrected = bias_correction(node, wq, mean)
    x = torch.cat(batches)
    ref = F.conv2d(x, node.weight, node.bias, groups=groups).mean((0, 2, 3))
    before = F.conv2d(x, wq, node.bias, groups=groups).mean((0, 2, 3))
    after = F.conv2d(x, wq, corrected, groups=groups).mean((0, 2, 3))
    assert float((before - ref).abs().max()) > 0.01
    torch.testing.assert_close(after, ref, rtol=0, atol=2e-5)


def test_bias_correction_valid_conv_general_inputs():
    # border pixels of a 3x3 valid conv enter fewer output windows than the per-channel input mean assumes, so
    # the correction is approximate for general inputs; it still removes most of the shift
    torch.manual_seed(24)
    graph = prepare(nn.Sequential(nn.Conv2d(4, 8, 3, stride=2)).eval(), torch.randn(1, 4, 9, 9))
    node = graph.layers()[0]
    batches = _batches((16, 4, 9, 9), 4, seed=25)
    mean = input_channel_means(graph, batches)[node.name]
    wq = _quantize(node.weight, levels=3)
    corrected = bias_correction(node, wq, mean)
    x = torch.cat(batches)
    ref = F.conv2d(x, node.weight, node.bias, stride=2).mean((0, 2, 3))
    before = float((F.conv2d(x, wq, node.bias, stride=2).mean((0, 2, 3)) - ref).abs().max())
    after = float((F.conv2d(x, wq, corrected, stride=2).mean((0, 2, 3)) - ref).abs().max())
    assert after < 0.1 * before


def test_input_channel_means_of_every_layer():
    torch.manual_seed(26)
    model = mobile_chain()
    graph = prepare(model, torch.randn(1, 3, 8, 8))
    batches = _batches((4, 3, 8, 8), 3, seed=27, offset=0.5)
    means = input_channel_means(graph, batches)
    assert set(means) == {n.name for n in graph.layers()}
    x = torch.cat(batches)
    _, env = graph.run_float(x, capture=True)
    for n in graph.layers():
        v = env[n.inputs[0]].double()
        expected = v.mean(dim=(0, 2, 3)) if v.dim() == 4 else v.mean(dim=0)
        torch.testing.assert_close(means[n.name], expected)


def test_input_channel_means_with_unequal_batches():
    graph = prepare(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4))
    gen = torch.Generator().manual_seed(28)
    batches = [torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen), torch.randn(1, 4, generator=gen) + 5]
    means = input_channel_means(graph, batches)[graph.layers()[0].name]
    torch.testing.assert_close(means, torch.cat(batches).double().mean(0))


def test_input_channel_means_needs_data():
    graph = prepare(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4))
    with pytest.raises(ValueError, match="no batches"):
        input_channel_means(graph, [])
    with pytest.raises(ValueError, match="no batches"):
        input_channel_means(graph, (b for b in []))


def test_input_channel_means_accepts_a_generator():
    graph = prepare(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4))
    batches = _batches((5, 4), 3, seed=29)
    from_gen = input_channel_means(graph, (b for b in batches))
    from_list = input_channel_means(graph, batches)
    node = graph.layers()[0].name
    torch.testing.assert_close(from_gen[node], from_list[node])


def test_equalize_types():
    # Graph and Node are what the functions take; a graph of a bare linear layer has no pairs
    graph = prepare(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4))
    assert isinstance(graph, Graph)
    assert equalizable_pairs(graph) == []
    result = cross_layer_equalize(graph)
    assert result.pairs == [] and result.sweeps == 1
