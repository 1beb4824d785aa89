"""Data-aware weight quantization: the layer-input statistics, the output-error WESS search
("wess_output") and adaptive rounding on a fixed grid (npuq.quant.data_aware, npuq.quant.adaround)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq import methods
from npuq.quant import quantize
from npuq.quant.adaround import AdaRoundConfig, adaround_weight
from npuq.quant.data_aware import layer_objective, layer_stats
from npuq.quant.weights import DATA_AWARE_METHODS, DATA_FREE_METHODS, METHODS, quantize_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = AdaRoundConfig(iters=200)


# ------------------------------------------------------------------------------------- synthetic layers


def linear_layer(seed=0, k=48, c=24, n=3000, mean=3.0):
    """A linear layer whose inputs are strongly correlated (a mixing matrix with decaying columns) and have
    a large mean, and whose output channels' ranges differ by 10^3. Returns (w, calibration x, test x)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g, dtype=torch.float64) * torch.logspace(0, -2, k, dtype=torch.float64)
    w = torch.randn(c, k, generator=g, dtype=torch.float64) * torch.logspace(0, -3, c, dtype=torch.float64)[:, None]

    def data(s):
        gg = torch.Generator().manual_seed(s)
        return torch.randn(n, k, generator=gg, dtype=torch.float64) @ mix.T + mean

    return w.float(), data(seed + 100), data(seed + 200)


def depthwise_layer(decades, seed=0, c=24, n=48, hw=12):
    """A 3x3 depthwise layer whose channel ranges span 10^decades (as after folding a batch norm with
    collapsed channels); inputs spatially correlated, with a large mean, larger where weights are small."""
    g = torch.Generator().manual_seed(seed)
    exps = torch.linspace(0, -decades, c, dtype=torch.float64)
    w = torch.randn(c, 1, 3, 3, generator=g, dtype=torch.float64) * (10.0**exps)[:, None, None, None]

    def data(s):
        gg = torch.Generator().manual_seed(s)
        x = torch.randn(n, c, hw, hw, generator=gg, dtype=torch.float64)
        x = F.avg_pool2d(x, 3, 1, 1) * 3.0 + 1.0
        return x * (10.0 ** (-0.5 * exps))[None, :, None, None]

    return w.float(), data(seed + 100), data(seed + 200)


def linear_stats(w, x, **kw):
    return layer_stats([x], kind="linear", weight_shape=tuple(w.shape), **kw)


def dw_stats(w, x, **kw):
    return layer_stats([x], kind="conv", weight_shape=tuple(w.shape), padding=1, groups=w.shape[0], **kw)


def out_mse_linear(w, w_hat, x):
    return float(((x.double() @ (w_hat.double() - w.double()).T) ** 2).mean())


def out_mse_dw(w, w_hat, x):
    y = F.conv2d(x.double(), w_hat.double() - w.double(), None, 1, 1, 1, w.shape[0])
    return float((y**2).mean())


# ------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize(
    "groups,stride,padding,dilation",
    [(1, 1, (1, 1), 1), (2, 2, (0, 1, 2, 1), 1), (6, 1, (2, 2), 2), (1, (2, 1), (1, 0, 0, 1), (1, 2))],
)
def test_patch_moments_equal_unfold_and_objective_equals_output_mse(groups, stride, padding, dilation):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 9, 8, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(12, 6 // groups, 3, 3, generator=g)
    st = layer_stats(
        [x[:2], x[2:]],
        kind="conv",
        weight_shape=tuple(w.shape),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    # reference: torch's unfold on the explicitly padded input, per group
    pad4 = padding if len(padding) == 4 else (padding[0], padding[0], padding[1], padding[1])
    xp = F.pad(x, (pad4[2], pad4[3], pad4[0], pad4[1]))
    cols = F.unfold(xp, 3, dilation=dilation, stride=stride)  # [N, C*9, L]
    cols = cols.transpose(1, 2).reshape(-1, groups, 6 // groups * 9)  # [P, G, D]
    ref = torch.einsum("pgd,pge->gde", cols, cols) / cols.shape[0]
    assert st.count == cols.shape[0]
    assert torch.allclose(st.hff, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(st.mean_f, cols.mean(dim=0), rtol=1e-12, atol=1e-12)
    # the objective (no damping) is the mean squared output error of every channel, computed by a convolution
    obj = layer_objective(w, st, damping=0.0)
    w_hat = quantize_weight(w, "wess", 4).dequantize()
    y = F.conv2d(xp, (w_hat - w).double(), None, stride, 0, dilation, groups)
    per_channel = (y**2).mean(dim=(0, 2, 3))
    assert torch.allclose(obj.errors(w_hat), per_channel, rtol=1e-9)
    # centered: what is left after removing each channel's mean error
    cen = layer_objective(w, st, damping=0.0, centered=True)
    assert torch.allclose(cen.errors(w_hat), y.var(dim=(0, 2, 3), unbiased=False), rtol=1e-9, atol=1e-18)


def test_few_samples_use_the_low_rank_form_with_the_same_objective():
    w, x, _ = linear_layer(k=64, c=16, n=20)  # 20 samples < 64 / 2 inputs
    st = linear_stats(w, x)
    assert st.samples is not None and st.samples.shape == (20, 64)
    dense = dataclasses.replace(st, samples=None)
    w_hat = quantize_weight(w, "wess", 4).dequantize()
    for centered in (False, True):
        low, full = layer_objective(w, st, centered=centered), layer_objective(w, dense, centered=centered)
        assert low.factor is not None and full.factor is None
        assert torch.allclose(low.errors(w_hat), full.errors(w_hat), rtol=1e-9)
        a = adaround_weight(w, quantize_weight(w, "wess", 4), low, FAST)
        b = adaround_weight(w, quantize_weight(w, "wess", 4), full, FAST)
        assert abs(low.total(a.dequantize()) - low.total(b.dequantize())) <= 0.05 * low.total(b.dequantize())


def test_position_subsampling_is_seeded():
    w, x, _ = depthwise_layer(3)
    a = dw_stats(w, x, positions=500, seed=1)
    b = dw_stats(w, x, positions=500, seed=1)
    c = dw_stats(w, x, positions=500, seed=2)
    assert a.count == 500 and torch.equal(a.hff, b.hff)
    assert not torch.equal(a.hff, c.hff)


# --------------------------------------------------------------------------------------- wess_output


def test_method_tables_in_sync_and_data_aware_needs_stats():
    assert METHODS == methods.WEIGHT_METHODS
    assert set(DATA_AWARE_METHODS) == set(methods.DATA_AWARE_WEIGHT_METHODS) == {"wess_output"}
    assert set(DATA_FREE_METHODS) | set(DATA_AWARE_METHODS) == set(METHODS)
    w, _, _ = linear_layer()
    with pytest.raises(ValueError) as info:
        quantize_weight(w, "wess_output", 8, name="blocks.3.expand")
    msg = str(info.value)
    assert "`blocks.3.expand`" in msg and "stats=" in msg and re.search(r"npuq\.quantize\(.*wess_output", msg)


def _ratios(make, stats, mse, bits, seeds=range(4)):
    """Held-out output MSE of wess_output over the better of wess and wess_mse, per seed."""
    out = []
    for seed in seeds:
        w, x, x_test = make(seed)
        st = stats(w, x)
        err = {
            m: mse(w, quantize_weight(w, m, bits, stats=st).dequantize(), x_test)
            for m in ("wess", "wess_mse", "wess_output")
        }
        out.append(err["wess_output"] / min(err["wess"], err["wess_mse"]))
    return out


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_wess_output_lowers_linear_output_error(bits):
    r = _ratios(lambda s: linear_layer(s), linear_stats, out_mse_linear, bits)
    assert sum(r) / len(r) < 0.85 and max(r) < 1.02, r


@pytest.mark.parametrize("decades", [3, 6, 9])
@pytest.mark.parametrize("bits", [8, 4])
def test_wess_output_lowers_depthwise_output_error_with_huge_channel_spans(decades, bits):
    r = _ratios(lambda s: depthwise_layer(decades, seed=s), dw_stats, out_mse_dw, bits)
    assert sum(r) / len(r) < 0.9 and max(r) < 1.02, r
    w, x, _ = depthwise_layer(decades)
    q = quantize_weight(w, "wess_output", bits, stats=dw_stats(w, x))
    assert q.method == "wess_output" and q.layer_scale is not None
    assert int(q.shift.min()) >= 0 and int(q.shift.max()) <= 15
    assert int(q.q.abs().max()) <= 2 ** (bits - 1) - 1
    # the grid is a WESS grid: channel scale = layer scale / 2^shift, exactly
    assert torch.equal(q.channel_scale, q.layer_scale / torch.pow(2.0, q.shift.double()))


@pytest.mark.parametrize("shift_bits", [0, 2, 4])
@pytest.mark.parametrize("centered", [False, True])
def test_wess_output_never_worse_than_wess_or_wess_mse_in_its_objective(shift_bits, centered):
    for seed, (w, x, _) in enumerate([linear_layer(1, k=16, c=12), depthwise_layer(5, seed=2, c=10, n=8)]):
        st = linear_stats(w, x) if w.dim() == 2 else dw_stats(w, x)
        obj = layer_objective(w, st, centered=centered)
        for bits in (3, 8):
            mine = quantize_weight(w, "wess_output", bits, shift_bits=shift_bits, stats=st, centered=centered)
            e = obj.total(mine.dequantize())
            for other in ("wess", "wess_mse"):
                ref = quantize_weight(w, other, bits, shift_bits=shift_bits)
                assert e <= obj.total(ref.dequantize()) * (1 + 1e-9), (seed, bits, other)
            assert int(mine.shift.max()) <= 2**shift_bits - 1


def test_wess_output_is_deterministic_and_handles_zero_channels():
    w, x, _ = depthwise_layer(6)
    w[5] = 0.0
    st = dw_stats(w, x, positions=300, seed=4)
    a = quantize_weight(w, "wess_output", 6, stats=st)
    b = quantize_weight(w, "wess_output", 6, stats=dw_stats(w, x, positions=300, seed=4))
    assert torch.equal(a.q, b.q) and torch.equal(a.shift, b.shift) and a.layer_scale == b.layer_scale
    assert int(a.q[5].abs().sum()) == 0 and int(a.shift[5]) == 0


# ------------------------------------------------------------------------------------------ adaround


@pytest.mark.parametrize("method", ["per_layer", "per_channel", "wess", "wess_output"])
@pytest.mark.parametrize("case", ["linear", "depthwise"])
def test_adaround_lowers_output_error_on_the_same_grid(method, case):
    if case == "linear":
        w, x, x_test = linear_layer()
        st, mse = linear_stats(w, x), out_mse_linear
    else:
        w, x, x_test = depthwise_layer(4)
        st, mse = dw_stats(w, x), out_mse_dw
    bits = 4
    qmax = 2 ** (bits - 1) - 1
    near = quantize_weight(w, method, bits, stats=st)
    ada = adaround_weight(w, near, st, FAST)
    assert ada.rounding == "adaround" and near.rounding == "nearest"
    # held-out inputs; the wess_output grid was already chosen for the output error, so less is left to gain
    margin = 1.0 if method == "wess_output" else 0.9
    assert mse(w, ada.dequantize(), x_test) < margin * mse(w, near.dequantize(), x_test)
    # same grid, integers in range, each weight rounded to one of its two neighbours
    assert torch.equal(ada.channel_scale, near.channel_scale) and torch.equal(ada.shift, near.shift)
    assert ada.layer_scale == near.layer_scale and ada.bits == near.bits and ada.method == near.method
    assert ada.q.dtype == torch.int8 and int(ada.q.abs().max()) <= qmax
    ratio = w.double() / near.channel_scale.view((-1,) + (1,) * (w.dim() - 1))
    inside = ratio.abs() <= qmax  # a grid with a layer scale below the range clips the rest to +-qmax
    assert bool(((ada.q.double() - ratio).abs() < 1)[inside].all())
    assert bool((ada.q.double().abs() == qmax)[~inside].all())
    assert int((ada.q != near.q).sum()) > 0


def test_adaround_is_deterministic_and_never_worse_in_its_objective():
    w, x, _ = linear_layer(5)
    st = linear_stats(w, x, positions=1000, seed=7)
    near = quantize_weight(w, "wess", 8)
    a = adaround_weight(w, near, st, FAST)
    b = adaround_weight(w, near, linear_stats(w, x, positions=1000, seed=7), FAST)
    assert torch.equal(a.q, b.q)
    obj = layer_objective(w, st)
    assert obj.total(a.dequantize()) <= obj.total(near.dequantize())
    # zero iterations: nothing changes
    assert adaround_weight(w, near, st, AdaRoundConfig(iters=0)) is near
    with pytest.raises(ValueError, match="iters"):
        AdaRoundConfig(iters=-1)


# ------------------------------------------------------------------------------------------ end to end


class DwNet(nn.Module):
    """Conv + BN + ReLU6, depthwise + BN + ReLU6 (some channels nearly dead), pointwise + BN, a residual
    add, global pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.pw(self.dw(x)) + x
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _dw_net():
    torch.manual_seed(0)
    model = DwNet().eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.1)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3 + 0.5)
    model.dw[1].weight.data[::4] *= 1e-5  # collapsed channels: depthwise ranges spanning 2^17
    return model


def _batches(n, batch=8, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(weights="wess_output"),
        dict(weights="wess", adaround=FAST),
        dict(weights="wess_output", adaround=FAST, layer_inputs="float"),
        dict(weights="per_channel", adaround=FAST, bias_correction=True),
    ],
)
def test_quantize_end_to_end_weight_only_and_integer(kwargs):
    model = _dw_net()
    calib = _batches(3)
    x = _batches(1, 16, seed=9)[0]
    with torch.no_grad():
        ref = model(x)
    base_kwargs = {k: v for k, v in kwargs.items() if k not in ("adaround", "layer_inputs")}
    base_kwargs["weights"] = "wess" if kwargs["weights"] == "wess_output" else kwargs["weights"]
    wo = quantize(model, calib, bits=4, activations=None, **kwargs)
    plain = quantize(model, calib, bits=4, activations=None, **base_kwargs)
    err = float(((wo(x) - ref) ** 2).mean())
    assert err < float(((plain(x) - ref) ** 2).mean())
    assert wo.report.config["layer_inputs"] == kwargs.get("layer_inputs", "quantized")
    if "adaround" in kwargs:
        assert any(q.rounding == "adaround" for q in wo.weights.values())
    # integer mode: the simulation equals the native kernels
    q = quantize(model, calib, bits=8, activations="minmax", **kwargs)
    out_t, env_t = q.run_integer(x, capture=True)
    out_n, env_n = q.run_native(x, capture=True)
    for node in q.graph:
        assert torch.equal(env_t[node.name], env_n[node.name]), node.describe()
    assert torch.equal(out_t, out_n)
    assert float((q(x) - ref).norm() / ref.norm()) < 0.1


def test_quantize_rejects_bad_data_aware_options():
    model = _dw_net()
    with pytest.raises(ValueError, match="calib"):
        quantize(model, None, weights="wess_output", activations=None, example_input=_batches(1)[0])
    with pytest.raises(TypeError, match="adaround"):
        quantize(model, _batches(1), adaround="yes", activations=None)
    with pytest.raises(ValueError, match="layer_inputs"):
        quantize(model, _batches(1), adaround=True, layer_inputs="int8", activations=None)
