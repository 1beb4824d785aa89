"""Quantization-aware training model: its forward is the weight-only quantized network, gradients pass
straight through the rounding, and the trained graph goes back into npuq.quantize."""

import pytest
import torch
import torch.nn as nn

import npuq
from npuq.models.zoo import randomize_batch_norms
from npuq.quant import UnsupportedOpsError, prepare
from npuq.quant.qat import FakeQuantModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net():
    torch.manual_seed(0)
    return randomize_batch_norms(
        nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Conv2d(8, 8, 3, 1, 1, groups=8),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Conv2d(8, 16, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        ),
        3,
    ).eval()


def _x(n=16, seed=1):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method,bits", [("wess", 4), ("per_channel", 3), ("per_layer", 8)])
def test_forward_equals_the_weight_only_quantized_model(method, bits):
    model, x = _net(), _x()
    fq = FakeQuantModel(prepare(model, x[:2]), bits=bits, method=method)
    qm = npuq.quantize(model, [x], weights=method, bits=bits, activations=None)
    with torch.no_grad():
        assert torch.allclose(fq(x), qm(x), rtol=1e-5, atol=1e-6)


def test_gradients_pass_straight_through_and_training_reduces_the_loss():
    model, x = _net(), _x(64)
    y = (x[:, 0, :8].mean((1, 2)) > x[:, 0, 8:].mean((1, 2))).long()  # learnable: which half is brighter
    fq = FakeQuantModel(prepare(model, x[:2]), bits=4)
    opt = torch.optim.SGD(fq.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(fq(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fq.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    graph = fq.to_graph()
    name = fq.names[0]
    assert torch.equal(graph[name].weight, fq.weights[0].detach())
    assert not torch.equal(graph[name].weight, prepare(model, x[:2])[name].weight)  # it trained
    qm = npuq.quantize(graph, [x], weights="wess", bits=4, activations="minmax")
    assert qm(x).shape == (64, 10)


def test_refuses_float_ops_and_bad_options():
    class Elu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.act = nn.ELU()

        def forward(self, x):
            return self.act(self.conv(x)).mean((2, 3))

    x = _x()
    with pytest.raises(UnsupportedOpsError, match="ELU"):
        FakeQuantModel(prepare(Elu().eval(), x[:2]))
    with pytest.raises(ValueError, match="bits"):
        FakeQuantModel(prepare(_net(), x[:2]), bits=1)
