"""What real pretrained models need from the quantizer: int32 biases that always fit (dead channels after
batch-norm folding), cross-layer equalization that never changes the float function silently, and bias
correction that works with every weight method. Each test builds the smallest layer or graph that shows
the problem."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.fixedpoint import MultiplierFlushedWarning
from npuq.quant import quantize
from npuq.quant.api import quantize_graph_weights
from npuq.quant.bias_range import INT32_MAX, BiasRangeWarning, fit_biases, max_input_deviation
from npuq.quant.equalize import EqualizationError, EqualizationWarning, cross_layer_equalize, empirical_bias_correction
from npuq.quant.graph import prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEAD = 5  # the dead output channel of the first layer


def _batches(n, shape, seed, scale=1.0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(*shape, generator=gen) + offset for _ in range(n)]


def dead_channel_model(act=nn.ReLU6, gamma=1e-9, beta=0.7) -> nn.Module:
    """conv 3x3 + BN (eps 1e-3) + act -> padded 3x3 conv; BN channel DEAD has gamma ``gamma``: after folding
    its weights are ~1e9 below the other channels' while its bias (its constant output) stays ``beta``."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, eps=1e-3), act(), nn.Conv2d(8, 4, 3, padding=1)
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(0.2 * torch.rand(8, generator=gen) - 0.1)
        bn.running_var.copy_(0.5 + torch.rand(8, generator=gen))
        bn.weight.copy_(0.5 + torch.rand(8, generator=gen))
        bn.bias.copy_(0.6 * torch.rand(8, generator=gen) - 0.3)
        bn.weight[DEAD] = gamma
        bn.bias[DEAD] = beta
    return model.eval()


def _capture(q, x):
    _, env = q.run_integer(x, capture=True)
    _, fenv = q.graph.run_float(x, capture=True)
    return env, fenv


# ------------------------------------------------------------------------------------------- bias range


@pytest.mark.parametrize("cle, act", [(False, nn.ReLU6), (True, nn.ReLU6), (True, nn.ReLU)])
@pytest.mark.parametrize("weights", ["per_channel", "wess", "wess_mse"])
def test_dead_channel_bias_fits_int32(weights, cle, act):
    model = dead_channel_model(act)
    calib = _batches(2, (8, 3, 12, 12), seed=2, scale=0.1)  # small inputs: a small input scale
    graph = prepare(model, calib[0])
    first = graph.layers()[0]
    ranges = first.weight.abs().reshape(8, -1).amax(dim=1)
    assert float(ranges[DEAD] / ranges.max()) < 1e-8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize(model, calib, weights=weights, bits=8, activations="minmax", cle=cle)
    ranged = [w for w in caught if issubclass(w.category, BiasRangeWarning)]
    assert len(ranged) == 1 and "1 output channel(s) in 1 layer(s)" in str(ranged[0].message)
    assert not [w for w in caught if issubclass(w.category, MultiplierFlushedWarning)]
    (adj,) = q.report.bias_adjustments
    assert adj["layer"] == first.path and adj["channel"] == DEAD and adj["action"] == "coarsened"
    assert adj["reason"] == "bias overflow" and abs(adj["bias_q_needed"]) > INT32_MAX
    if cle:  # ReLU: equalized, the dead channel left unscaled (no absorption into a padded consumer)
        eq = q.report.equalization
        assert bool(eq["pairs"]) == (act is nn.ReLU) and eq["absorbed"] == {}
        assert eq["dead_channels"] == ({first.path: 1} if act is nn.ReLU else {})
    assert adj["new_scale"] > adj["old_scale"]
    if weights == "per_channel":
        assert adj["old_shift"] == adj["new_shift"] == 0
    else:
        assert 0 <= adj["new_shift"] < adj["old_shift"] == 15
    name = q.graph.layers()[0].name
    lp, qw = q.layers[name], q.weights[name]
    qin = q.qparams[q.graph[name].inputs[0]]
    acc = qin.scale * qw.channel_scale.double()
    # every bias, the dead channel's included, is exact within half an accumulator step ...
    err = (lp.bias.double() * acc - q.biases[name].double()).abs()
    assert torch.all(err <= 0.5 * acc * (1 + 1e-9))
    # ... and leaves room for the largest accumulation
    dev = max_input_deviation(qin.zero_point)
    assert torch.all(lp.bias.abs() + dev * lp.weight.abs().reshape(8, -1).sum(dim=1) <= INT32_MAX)
    # the untouched channels keep the weight quantization of the method
    others = [c for c in range(8) if c != DEAD]
    x = _batches(1, (8, 3, 12, 12), seed=3, scale=0.1)[0]
    env, fenv = _capture(q, x)
    out = q.qparams[name]
    y = (env[name].double() - out.zero_point) * out.scale
    # the dead channel outputs its bias, as the float model does
    torch.testing.assert_close(y[:, DEAD], fenv[name][:, DEAD].double(), rtol=0, atol=1.01 * out.scale)
    assert float(fenv[name][:, DEAD].mean()) == pytest.approx(0.7, rel=1e-3)
    assert float((y[:, others] - fenv[name][:, others].double()).abs().max()) < 3 * out.scale
    # the integer model is the native one
    assert torch.equal(q.run_integer(x), q.run_native(x))


def test_tiny_per_channel_multiplier_no_longer_flushes():
    # gamma 1e-12 and beta 0: the bias fits, but s_in * s_w / s_out is below 2^-32 and used to flush to 0
    model = dead_channel_model(nn.ReLU6, gamma=1e-12, beta=0.0)
    calib = _batches(2, (8, 3, 12, 12), seed=4, scale=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize(model, calib, weights="per_channel", activations="minmax")
    assert not [w for w in caught if issubclass(w.category, MultiplierFlushedWarning)]
    (adj,) = q.report.bias_adjustments
    assert adj["channel"] == DEAD and adj["reason"] == "multiplier flush" and adj["action"] == "coarsened"
    name = q.graph.layers()[0].name
    lp = q.layers[name]
    assert int(lp.multiplier[DEAD]) != 0
    x = calib[0]
    assert torch.equal(q.run_integer(x), q.run_native(x))


def test_per_layer_bias_out_of_range_raises_or_saturates():
    # a bias that no weight scale of its channel can hold: nothing to coarsen with one scale per layer
    model = dead_channel_model(nn.ReLU6)
    with torch.no_grad():
        model[3].bias[1] = 1e6
    calib = _batches(2, (8, 3, 12, 12), seed=5, scale=0.1)
    with pytest.raises(OverflowError, match=r"layer '3'.*channel 1.*overflow='saturate'"):
        quantize(model, calib, weights="per_layer", activations="minmax")
    with pytest.warns(BiasRangeWarning, match="1 a saturated bias"):
        q = quantize(model, calib, weights="per_layer", activations="minmax", overflow="saturate")
    sat = [a for a in q.report.bias_adjustments if a["action"] == "saturated"]
    assert len(sat) == 1 and sat[0]["layer"] == "3" and sat[0]["channel"] == 1
    assert 0 < sat[0]["bias_q"] <= sat[0]["limit"] < INT32_MAX
    name = q.graph.layers()[1].name
    assert int(q.layers[name].bias[1]) == sat[0]["bias_q"]
    q.overflow = "raise"  # the saturated bias leaves the accumulator room: no overflow at run time
    x = calib[1] * 3
    assert torch.equal(q.run_integer(x), q.run_native(x))


def test_bias_adjustments_in_the_report(tmp_path):
    model = dead_channel_model(nn.ReLU6)
    calib = _batches(2, (8, 3, 12, 12), seed=6, scale=0.1)
    with pytest.warns(BiasRangeWarning):
        q = quantize(model, calib, weights="wess", activations="minmax")
    rep = q.report
    d = rep.to_dict()
    assert d["bias_adjustments"] == rep.bias_adjustments and len(d["bias_adjustments"]) == 1
    rep.save_json(tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["bias_adjustments"][0]["channel"] == DEAD
    md = rep.to_markdown()
    assert "Bias range" in md and f"| {DEAD} | coarsened | bias overflow |" in md
    # the layer's report row shows the changed shift
    assert rep.layers[0].shift_histogram[15] == 0 and rep.layers[0].shift_histogram[14] == 1


def test_fit_biases_leaves_ordinary_layers_alone():
    model = dead_channel_model(nn.ReLU6, gamma=0.7)
    calib = _batches(2, (8, 3, 12, 12), seed=7)
    q = quantize(model, calib, weights="wess", activations="minmax")
    assert q.report.bias_adjustments == []
    fit = fit_biases(q.graph, q.weights, q.biases, q.qparams)
    assert fit.adjustments == [] and all(fit.weights[k] is q.weights[k] for k in q.weights)


# ------------------------------------------------------------------------------- exact-only equalization


def pair_model(act) -> nn.Module:
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        act(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([8.0, 0.1, 1.0, 3.0, 0.3, 1.0]).reshape(-1, 1, 1, 1))
        model[1].running_var.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_relu6_pair_is_skipped_and_the_function_kept():
    model = pair_model(nn.ReLU6)
    x = _batches(3, (8, 3, 10, 10), seed=9, scale=3.0)
    graph = prepare(model, x[0])
    _, env = graph.run_float(x[0], capture=True)
    assert float(env[graph.layers()[0].name].max()) == 6.0  # the clip is active
    before = [(n.weight.clone(), n.bias.clone(), n.act) for n in graph.layers()]
    with pytest.warns(EqualizationWarning, match=r"0\+1\+2 -> 3 \(ReLU6"):
        result = cross_layer_equalize(graph, batches=x)
    assert result.pairs == []  # the conv feeds a pool, and the linear layer has no successor
    assert [(a, b) for a, b, _ in result.skipped] == [("0+1+2", "3")]
    assert "ReLU6" in result.skipped[0][2] and result.relu6_replaced == []
    for n, (w, b, act) in zip(graph.layers()[:2], before[:2]):
        assert torch.equal(n.weight, w) and torch.equal(n.bias, b) and n.act == act
    assert result.float_sqnr_db > 100 and result.float_top1_agreement == 1.0 and not result.function_changed
    with torch.no_grad():
        torch.testing.assert_close(graph.run_float(x[1]), model(x[1]), rtol=1e-5, atol=1e-6)


def test_relu_pair_is_equalized_exactly():
    model = pair_model(nn.ReLU)
    x = _batches(3, (8, 3, 10, 10), seed=10, scale=3.0)
    graph = prepare(model, x[0])
    w0 = graph.layers()[0].weight.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", EqualizationWarning)
        result = cross_layer_equalize(graph, batches=x, absorb_high_bias=False)
    assert ("0+1+2", "3") in result.pairs and result.skipped == []
    assert not torch.allclose(graph.layers()[0].weight, w0, rtol=1e-2)
    with torch.no_grad():
        ref = model(x[2])
        out = graph.run_float(x[2])
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert result.float_sqnr_db > 80 and result.float_top1_agreement == 1.0


def test_relu6_replacement_is_an_opt_in_that_reports_the_change():
    model = pair_model(nn.ReLU6)
    x = _batches(3, (8, 3, 10, 10), seed=11, scale=3.0)
    graph = prepare(model, x[0])
    with pytest.warns(EqualizationWarning, match=r"CHANGED the float model.*0\+1\+2 \(ReLU6 -> ReLU\)"):
        result = cross_layer_equalize(graph, batches=x, relu6="replace")
    assert result.relu6_replaced == ["0+1+2"] and result.function_changed
    assert result.float_sqnr_db < 60
    with pytest.raises(EqualizationError, match="CHANGED"):
        cross_layer_equalize(prepare(model, x[0]), batches=x, relu6="replace", on_change="raise")
    with pytest.raises(ValueError, match="relu6 must be one of"):
        cross_layer_equalize(prepare(model, x[0]), relu6="clip")


class AbsorbInto(nn.Module):
    """conv -> BN (large beta) -> ReLU -> conv with ``padding`` -> 1x1 conv."""

    def __init__(self, padding: int, var_scale: float = 4.0):
        super().__init__()
        torch.manual_seed(12)
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=padding)
        self.conv3 = nn.Conv2d(5, 4, 1)
        self.var_scale = var_scale

    def calibrate(self, x):
        with torch.no_grad():
            y = self.conv1(x)
            self.bn1.running_mean.copy_(y.mean((0, 2, 3)))
            self.bn1.running_var.copy_(self.var_scale * y.var((0, 2, 3)))
            self.bn1.weight.copy_(torch.tensor([0.5, -0.8, 1.0, 0.3, 2.0, 0.7]))
            self.bn1.bias.copy_(torch.tensor([4.0, 3.0, 1.0, -0.5, 7.0, 2.2]))
        return self.eval()

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def test_no_high_bias_absorption_into_a_zero_padded_consumer():
    x = _batches(2, (8, 3, 10, 10), seed=13)
    model = AbsorbInto(padding=1).calibrate(torch.cat(x))
    graph = prepare(model, x[0])
    result = cross_layer_equalize(graph, batches=x, absorb_high_bias=True)
    assert result.absorbed == {}
    assert result.absorption_skipped and "zero-pads" in result.absorption_skipped[0][2]
    with torch.no_grad():
        ref = model(x[0])
    assert float((graph.run_float(x[0]) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_high_bias_absorption_is_limited_to_what_the_data_allows():
    # running statistics far narrower than the data: beta - 3|gamma| lies above many pre-activations
    x = _batches(2, (8, 3, 10, 10), seed=14)
    model = AbsorbInto(padding=0, var_scale=4e-3).calibrate(torch.cat(x))
    graph = prepare(model, x[0])
    result = cross_layer_equalize(graph, batches=x, absorb_high_bias=True)
    assert result.absorption_checked
    assert any("limited" in why for _, _, why in result.absorption_skipped)
    with torch.no_grad():
        for xb in x:
            ref = model(xb)
            assert float((graph.run_float(xb) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert result.float_sqnr_db > 80 and not result.function_changed


def test_quantize_reports_the_float_fidelity_of_cle():
    model = pair_model(nn.ReLU6)
    calib = _batches(2, (8, 3, 10, 10), seed=15, scale=3.0)
    with pytest.warns(EqualizationWarning):
        q = quantize(model, calib, weights="wess", activations="minmax", cle=True)
    eq = q.report.equalization
    assert eq["relu6"] == "skip" and eq["skipped"][0][:2] == ("0+1+2", "3")
    assert eq["float_sqnr_db"] > 100 and eq["float_top1_agreement"] == 1.0
    with pytest.warns(EqualizationWarning, match="CHANGED"):
        q = quantize(model, calib, weights="wess", activations="minmax", cle=True, cle_relu6="replace")
    assert q.report.config["cle_relu6"] == "replace" and q.report.equalization["function_changed"]


# ------------------------------------------------------------------------------------------ bias correction


def offset_model() -> nn.Module:
    """Two padded 3x3 convs on an input with a large mean: quantization errors shift the output mean."""
    torch.manual_seed(16)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1)).eval()


def _mean_error(q, model, x) -> float:
    with torch.no_grad():
        return float((q(x) - model(x)).mean(dim=(0, 2, 3)).abs().mean())


@pytest.mark.parametrize("activations", [None, "minmax"])
@pytest.mark.parametrize("weights", ["per_layer", "per_channel", "wess", "wess_mse"])
def test_bias_correction_lowers_the_output_mean_error(weights, activations):
    model = offset_model()
    calib = _batches(4, (16, 4, 8, 8), seed=17, offset=3.0)
    test = _batches(1, (64, 4, 8, 8), seed=18, offset=3.0)[0]
    kw = dict(weights=weights, bits=4, activations=activations)
    plain = quantize(model, calib, **kw)
    corrected = quantize(model, calib, bias_correction=True, **kw)
    auto = quantize(model, calib, bias_correction="auto", **kw)
    e0, e1, e2 = (_mean_error(q, model, test) for q in (plain, corrected, auto))
    # the measured correction removes nearly all of the shift (the input-mean formula, which ignores the
    # padded borders and the quantized upstream, left 15% of it here)
    assert e1 < 0.05 * e0, (e0, e1)
    assert e2 < 0.05 * e0, (e0, e2)
    passes = ["weights"] + (["activations"] if activations else [])
    assert list(corrected.report.bias_correction) == passes
    for p in passes:
        for layer in auto.report.bias_correction[p]["layers"]:
            assert layer["applied"] == (layer["mse_after"] < layer["mse_before"])
    if activations:
        assert torch.equal(corrected.run_integer(test), corrected.run_native(test))


def test_empirical_bias_correction_sees_the_padding():
    # a padded conv: border outputs see zeros, so the input-mean formula cannot cancel the shift exactly;
    # the measured per-channel error does, on the data it was measured on
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)).eval()
    batches = _batches(3, (8, 4, 6, 6), seed=19, offset=2.0)
    graph = prepare(model, batches[0])
    qw = quantize_graph_weights(graph, "per_layer", 3, 4)
    node = graph.layers()[0]
    biases, result = empirical_bias_correction(graph, qw, None, batches)
    assert result.layers[0]["applied"] and result.samples == 24
    x = torch.cat(batches)
    ref = F.conv2d(x, node.weight, node.bias, padding=1).double().mean((0, 2, 3))
    wq = qw[node.name].dequantize()
    before = F.conv2d(x, wq, node.bias, padding=1).double().mean((0, 2, 3))
    after = F.conv2d(x, wq, biases[node.name], padding=1).double().mean((0, 2, 3))
    assert float((before - ref).abs().max()) > 0.02
    assert float((after - ref).abs().max()) < 1e-5
    assert torch.equal(node.bias, graph.layers()[0].bias)  # the graph is not modified


def test_bias_correction_composes_with_cle_and_rejects_bad_values():
    model = pair_model(nn.ReLU)
    calib = _batches(2, (8, 3, 10, 10), seed=20, scale=2.0, offset=1.0)
    q = quantize(model, calib, weights="wess", bits=4, activations="minmax", cle=True, bias_correction="auto")
    assert q.report.config["bias_correction"] == "auto" and q.report.equalization["pairs"]
    assert torch.equal(q.run_integer(calib[0]), q.run_native(calib[0]))
    with pytest.raises(ValueError, match="bias_correction must be one of"):
        quantize(model, calib, bias_correction="always")
    assert math.isfinite(q.report.equalization["float_sqnr_db"])
