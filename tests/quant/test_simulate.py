"""The quantization simulation computes exactly what the native kernels compute, layer by layer and end to
end, for every weight method and both rounding modes; and npuq.quantize rejects bad input clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import npuq
from npuq import ops
from npuq.quant import UnsupportedOpsError, quantize
from npuq.quant.graph import prepare


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # model initialisation is part of each test's input


class SmallNet(nn.Module):
    """Every NPU op kind the simulation supports: conv (plain, strided, depthwise, grouped, dilated),
    residual add with a fused ReLU, average and global pooling, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 24, 3, 1, 2, dilation=2, groups=4), nn.ReLU())
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Conv2d(24, 32, (1, 3), padding=(0, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.pw(self.dw(x)) + x)
        x = self.pool(self.grouped(x))
        x = F.relu(self.head(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def _randomize_bn(model, spread=1.0):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * spread + 0.1)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model


def _calib(n=3, batch=16, shape=(1, 28, 28), seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, *shape), generator=g) for _ in range(n)]


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.permute(0, 2, 3, 1).numpy().astype(np.int8))


def _ohwi(w: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(w.permute(0, 2, 3, 1).numpy().astype(np.int8))


def _per_channel(v, c):
    if isinstance(v, torch.Tensor):
        return v.numpy().astype(np.int64)
    return int(v)


def native_node(qmodel, node, ins):
    """One node of the quantized model run by the native kernels on the simulation's integer inputs."""
    k = node.kind
    if k in ("conv", "linear"):
        lp = qmodel.layers[node.name]
        c = lp.weight.shape[0]
        req = dict(
            multiplier=_per_channel(lp.multiplier, c),
            exponent=_per_channel(lp.exponent, c),
            channel_shift=lp.shift.numpy().astype(np.int64),
            output_zero_point=lp.output_zero_point,
            act_min=lp.act_min,
            act_max=lp.act_max,
            rounding=qmodel.rounding,
        )
        bias = lp.bias.numpy().astype(np.int32)
        if k == "conv":
            a = node.attrs
            y = ops.conv2d(
                _nhwc(ins[0]),
                _ohwi(lp.weight),
                bias,
                input_zero_point=lp.input_zero_point,
                stride=a["stride"],
                padding=a["padding"],
                dilation=a["dilation"],
                groups=a["groups"],
                **req,
            )
            return torch.from_numpy(y.astype(np.int64)).permute(0, 3, 1, 2)
        y = ops.fully_connected(
            ins[0].numpy().astype(np.int8),
            lp.weight.numpy().astype(np.int8),
            bias,
            input_zero_point=lp.input_zero_point,
            **req,
        )
        return torch.from_numpy(y.astype(np.int64))
    if k == "add":
        y = ops.add(_nhwc(ins[0]), _nhwc(ins[1]), rounding=qmodel.rounding, **qmodel.add_params[node.name])
        return torch.from_numpy(y.astype(np.int64)).permute(0, 3, 1, 2)
    if k == "avg_pool":
        a = node.attrs
        y = ops.avg_pool2d(
            _nhwc(ins[0]),
            a["kernel_size"],
            stride=a["stride"],
            padding=a["padding"],
            count_include_pad=a["count_include_pad"],
            input_zero_point=qmodel.qparams[node.inputs[0]].zero_point,
        )
        return torch.from_numpy(y.astype(np.int64)).permute(0, 3, 1, 2)
    if k == "global_pool":
        y = ops.global_avg_pool(_nhwc(ins[0]))
        return torch.from_numpy(y.astype(np.int64)).permute(0, 3, 1, 2)
    if k in ("flatten", "output"):
        return torch.flatten(ins[0], 1) if k == "flatten" else ins[0]
    raise AssertionError(f"no native op for {k}")


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("weights", ["per_layer", "per_channel", "wess", "wess_mse"])
def test_simulation_equals_native_kernels_layer_by_layer(weights, rounding):
    model = _randomize_bn(SmallNet().eval())
    calib = _calib()
    q = quantize(model, calib, weights=weights, bits=8, activations="minmax", rounding=rounding)
    x = _calib(1, 8, seed=7)[0] * 1.5  # beyond the calibrated range: clamps are exercised too
    out, env = q.run_integer(x, capture=True)
    native_env = {q.graph.input_name: env[q.graph.input_name]}
    checked = 0
    for node in q.graph:
        if node.kind == "input":
            continue
        # layer by layer: the native op gets the simulation's own inputs
        expected = native_node(q, node, [env[i] for i in node.inputs])
        assert torch.equal(env[node.name], expected), f"{node.describe()} differs from the native kernel"
        # end to end: the native ops chained on their own outputs
        native_env[node.name] = native_node(q, node, [native_env[i] for i in node.inputs])
        checked += 1
    assert checked == len(q.graph) - 1
    assert torch.equal(native_env[q.graph.output_name], out)
    # sanity: the integer network approximates the float one (logits of a random network: compare values)
    with torch.no_grad():
        ref = model(x)
    assert float((q(x) - ref).norm() / ref.norm()) < 0.25


def test_wess_shift_reaches_the_requantizer():
    model = _randomize_bn(SmallNet().eval(), spread=30.0)
    q = quantize(model, _calib(), weights="wess", bits=8, activations="minmax")
    shifted = [lp for lp in q.layers.values() if int(lp.shift.max()) > 0]
    assert shifted, "expected some WESS shifts with spread-out BN variances"
    for name, lp in q.layers.items():
        assert isinstance(lp.multiplier, int) and isinstance(lp.exponent, int)  # one multiplier per layer
        qw = q.weights[name]
        assert torch.equal(lp.shift, qw.shift)


class WideRangeNet(nn.Module):
    """A depthwise layer whose output-channel ranges span 2^12 after folding, as when batch norm divides
    by the tiny spread of a nearly dead input channel: the stem's channel c is scaled by 2^-k_c and the
    depthwise channel c by 2^+k_c, k_c from 0 to 12, so the float function stays well conditioned."""

    def __init__(self, channels=16, span_bits=12):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw = nn.Conv2d(channels, 10, 1)
        with torch.no_grad():
            for m in (self.conv, self.dw, self.pw):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            scale = 2.0 ** -torch.linspace(0, span_bits, channels)
            self.conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            self.conv.bias.mul_(scale)
            self.dw.weight.div_(scale.reshape(-1, 1, 1, 1))

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.dw(x))
        return self.pw(x).mean((2, 3))


@torch.no_grad()
def test_channel_ranges_spanning_2_12_collapse_per_layer_and_wess_recovers():
    model = WideRangeNet().eval()
    calib = _calib(4, 32, shape=(1, 12, 12))
    x = _calib(1, 256, shape=(1, 12, 12), seed=9)[0]
    ref = model(x)

    def rel_err(q):
        return float((q(x) - ref).norm() / ref.norm())

    per_layer = quantize(model, calib, weights="per_layer", bits=8, activations=None)
    wess = quantize(model, calib, weights="wess", bits=8, activations=None)
    per_channel = quantize(model, calib, weights="per_channel", bits=8, activations=None)
    dw = [r for r in per_layer.report.layers if r.depthwise][0]
    assert dw.range_ratio > 2**11
    # per-layer: the small channels quantize to zero and the output is mostly lost; WESS keeps them
    assert rel_err(per_layer) > 0.3
    assert rel_err(wess) < 0.02
    assert rel_err(wess) < 2 * rel_err(per_channel) + 0.005
    wdw = [r for r in wess.report.layers if r.depthwise][0]
    assert wdw.shift_histogram[0] >= 1 and sum(wdw.shift_histogram[11:13]) >= 1
    assert min(r.sqnr_db for r in wess.report.layers) > 30


def test_weight_only_uses_dequantized_weights():
    model = _randomize_bn(SmallNet().eval())
    q = quantize(model, _calib(), weights="wess", bits=4, activations=None)
    assert not q.integer
    x = _calib(1, 4, seed=5)[0]
    y = q(x)
    graph = prepare(model, x)
    # rebuild by hand: float graph with q * scale weights
    env = {}
    from npuq.quant.graph import run_float_node

    for node in graph:
        if node.is_layer:
            env[node.name] = run_float_node(graph, node, env, x, q.weights[node.name].dequantize(), node.bias)
        else:
            env[node.name] = run_float_node(graph, node, env, x)
    assert torch.allclose(y, env[graph.output_name], atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="weight-only"):
        q.run_integer(x)


def test_report_contents():
    model = _randomize_bn(SmallNet().eval(), spread=30.0)
    q = quantize(model, _calib(), weights="wess", bits=6, activations="percentile")
    rep = q.report
    assert rep.config["weights"] == "wess" and rep.config["bits"] == 6
    assert len(rep.layers) == len(q.graph.layers())
    for r in rep.layers:
        assert sum(r.shift_histogram) == r.shape[0]
        assert r.sqnr_db >= r.sqnr_per_layer_db - 1e-6
        assert r.output_scale is not None and r.output_scale > 0
    d = rep.to_dict()
    assert d["layers"][0]["path"].startswith("stem.0")
    assert "| layer |" in rep.to_markdown()


def test_quantize_accepts_prepared_graph_without_modifying_it():
    model = _randomize_bn(SmallNet().eval())
    calib = _calib()
    graph = prepare(model, calib[0])
    before = [n.weight.clone() for n in graph.layers()]
    q1 = quantize(graph, calib, weights="wess", activations="minmax", cle=True)
    after = [n.weight for n in graph.layers()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    q2 = quantize(model, calib, weights="wess", activations="minmax", cle=True)
    x = calib[0]
    assert torch.equal(q1.run_integer(x), q2.run_integer(x))


@pytest.mark.parametrize("kind", ["minmax", "percentile", "mse", "kl"])
def test_every_observer_gives_a_working_integer_model(kind):
    model = _randomize_bn(SmallNet().eval())
    calib = _calib()
    q = quantize(model, calib, weights="wess", activations=kind)
    x = calib[0]
    assert (q(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.6


def test_cle_and_bias_correction_compose_with_wess():
    model = _randomize_bn(SmallNet().eval(), spread=30.0)
    calib = _calib()
    # SmallNet's only pair has a ReLU6 between: equalized only with the explicit opt-in
    q = quantize(
        model, calib, weights="wess", bits=6, activations="minmax", cle=True, bias_correction=True, cle_relu6="replace"
    )
    assert q.report.config["cle"] and q.report.config["bias_correction"]
    assert q.report.equalization["pairs"]
    x = calib[0]
    assert (q(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.6


def test_unsupported_ops_are_listed_or_kept_in_float():
    class WithElu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.act = nn.ELU()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.act(self.conv(x)) * 0.5
            return self.fc(x.mean((2, 3)))

    model = WithElu().eval()
    calib = _calib(2, 8)
    with pytest.raises(UnsupportedOpsError) as info:
        quantize(model, calib)
    msg = str(info.value)
    assert "act (ELU)" in msg and "mul" in msg and "unsupported='float'" in msg
    q = quantize(model, calib, unsupported="float", activations="minmax")
    assert len(q.report.float_ops) == 2
    x = calib[0]
    assert torch.allclose(q(x), model(x), atol=0.1)


def test_bad_input_is_rejected_clearly():
    model = SmallNet().eval()
    calib = _calib(2, 4)
    with pytest.raises(ValueError, match="bits must be an int in \\[2, 8\\]"):
        quantize(model, calib, bits=9)
    with pytest.raises(ValueError, match="bits must be an int in \\[2, 8\\]"):
        quantize(model, calib, bits=1)
    with pytest.raises(ValueError, match="shift_bits must be an int in \\[0, 4\\]"):
        quantize(model, calib, shift_bits=5)
    with pytest.raises(ValueError, match="weights must be one of"):
        quantize(model, calib, weights="per_tensor")
    with pytest.raises(ValueError, match="activations must be one of"):
        quantize(model, calib, activations="max")
    with pytest.raises(ValueError, match="yielded no batches"):
        quantize(model, [])
    with pytest.raises(ValueError, match="calibration data is required"):
        quantize(model, None)
    with pytest.raises(ValueError, match="per-sample shape"):
        quantize(model, [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 14, 14)])
    with pytest.raises(ValueError, match="does not run on an input of shape"):
        quantize(model, [torch.randn(4, 3, 28, 28)])
    with pytest.raises(TypeError, match="dtype"):
        quantize(model, [torch.zeros(4, 1, 28, 28, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(model, [torch.full((4, 1, 28, 28), float("nan"))])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantize("mobilenet", calib)
    # (input, label) pairs are accepted
    quantize(model, [(c, torch.zeros(c.shape[0])) for c in calib], activations="minmax")

    bad = SmallNet().eval()
    with torch.no_grad():
        bad.dw[0].weight[3, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="dw.0.*NaN"):
        quantize(bad, calib)
    zero = SmallNet().eval()
    with torch.no_grad():
        zero.head.weight.zero_()
    with pytest.raises(ValueError, match="head"):
        quantize(zero, calib)


def test_bias_overflow_names_the_layer():
    model = SmallNet().eval()
    with torch.no_grad():
        model.fc.bias.fill_(1e9)
    with pytest.raises(OverflowError, match="fc"):
        quantize(model, _calib(2, 4), activations="minmax")


def test_lazy_top_level_entry_points():
    assert npuq.quantize is quantize
    assert npuq.prepare is prepare


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("weights", ["per_channel", "wess"])
def test_native_backend_equals_torch_simulation_node_by_node(weights, rounding):
    model = _randomize_bn(SmallNet().eval(), spread=10.0)
    calib = _calib()
    q = quantize(model, calib, weights=weights, bits=6, activations="percentile", rounding=rounding)
    x = _calib(1, 8, seed=11)[0] * 2
    assert q.backend == "native"  # the default for an NPU-only graph
    out_t, env_t = q.run_integer(x, capture=True)
    out_n, env_n = q.run_native(x, capture=True, threads=2)
    for node in q.graph:
        assert torch.equal(env_t[node.name], env_n[node.name]), node.describe()
    assert torch.equal(out_t, out_n)
    q.backend = "native"
    assert torch.equal(
        q(x),
        q.run_integer(x).sub(q.output_qparams().zero_point).float()
        * torch.tensor(q.output_qparams().scale, dtype=torch.float32),
    )


def test_native_backend_refuses_float_ops():
    class WithElu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(F.elu(self.conv(x)).mean((2, 3)))

    q = quantize(WithElu().eval(), _calib(2, 4), unsupported="float", activations="minmax")
    assert q.backend == "torch"  # the default where float ops remain
    with pytest.raises(UnsupportedOpsError, match="run_integer"):
        q.run_native(_calib(1, 2)[0])


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18", "mobilenet_v3_small"])
def test_torchvision_architectures_quantize_end_to_end(arch):
    from support.torchvision_compat import torchvision_models

    models = torchvision_models()
    model = _randomize_bn(getattr(models, arch)(num_classes=10).eval())
    calib = _calib(2, 4, shape=(3, 64, 64))
    x = _calib(1, 4, shape=(3, 64, 64), seed=4)[0]
    q = quantize(model, calib, weights="wess", activations="minmax")  # mobilenet_v3_small: tables and SE multiplies
    assert not q.report.float_ops and q.backend == "native"
    out_t, env_t = q.run_integer(x, capture=True)
    out_n, env_n = q.run_native(x, capture=True)
    for node in q.graph:
        assert torch.equal(env_t[node.name], env_n[node.name]), node.describe()
    with torch.no_grad():
        ref = model(x)
    assert float((q(x) - ref).norm() / ref.norm()) < 0.5


# ------------------------------------------------------------------ random networks (hypothesis)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def conv_stacks(draw):
    """A random small CNN: conv blocks with random kernel, stride, padding, dilation, groups and
    activation, optional residual adds and average pooling, then global pooling and a classifier."""
    c_in = draw(st.integers(1, 4))
    image = size = draw(st.integers(6, 12))
    layers, c = [], c_in
    for _ in range(draw(st.integers(1, 4))):
        groups = draw(st.sampled_from([1, c] if c > 1 else [1]))
        c_out = c * draw(st.integers(1, 2)) if groups == c and groups > 1 else draw(st.integers(1, 12))
        k = draw(st.sampled_from([1, 2, 3]))
        dil = draw(st.sampled_from([1, 2])) if k > 1 else 1
        ext = dil * (k - 1) + 1
        pad = draw(st.integers(0, ext - 1))
        stride = draw(st.sampled_from([1, 2]))
        if (size + 2 * pad - ext) // stride + 1 < 2:
            stride, pad = 1, ext - 1
        act = draw(st.sampled_from([None, "relu", "relu6"]))
        residual = stride == 1 and c_out == c and 2 * pad == ext - 1 and draw(st.booleans())
        pool = draw(st.booleans()) and size >= 4
        layers.append(
            dict(
                c_in=c,
                c_out=c_out,
                k=k,
                stride=stride,
                pad=pad,
                dil=dil,
                groups=groups,
                act=act,
                residual=residual,
                pool=pool,
            )
        )
        size = (size + 2 * pad - ext) // stride + 1
        if pool:
            size = (size - 2) // 2 + 1
        c = c_out
    return c_in, image, layers, draw(st.integers(0, 2**16))


class RandomNet(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.spec = layers
        self.convs = nn.ModuleList(
            nn.Conv2d(s["c_in"], s["c_out"], s["k"], s["stride"], s["pad"], s["dil"], s["groups"]) for s in layers
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(s["c_out"]) for s in layers)
        self.fc = nn.Linear(layers[-1]["c_out"], 5)

    def forward(self, x):
        for s, conv, bn in zip(self.spec, self.convs, self.bns):
            y = bn(conv(x))
            if s["residual"]:
                y = y + x
            if s["act"] == "relu":
                y = F.relu(y)
            elif s["act"] == "relu6":
                y = F.relu6(y)
            x = F.avg_pool2d(y, 2) if s["pool"] else y
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    net=conv_stacks(),
    weights=st.sampled_from(["per_layer", "per_channel", "wess", "wess_mse"]),
    rounding=st.sampled_from(["double", "single"]),
    bits=st.integers(2, 8),
    observer=st.sampled_from(["minmax", "percentile", "mse", "kl"]),
)
def test_random_networks_simulation_equals_native(net, weights, rounding, bits, observer):
    c_in, size, layers, seed = net
    torch.manual_seed(seed)
    model = _randomize_bn(RandomNet(layers).eval(), spread=5.0)
    calib = _calib(2, 4, shape=(c_in, size, size), seed=seed)
    q = quantize(model, calib, weights=weights, bits=bits, activations=observer, rounding=rounding)
    x = _calib(1, 3, shape=(c_in, size, size), seed=seed + 1)[0] * 1.5
    out_t, env_t = q.run_integer(x, capture=True)
    out_n, env_n = q.run_native(x, capture=True)
    for node in q.graph:
        if node.kind != "input":
            expected = native_node(q, node, [env_t[i] for i in node.inputs])
            assert torch.equal(env_t[node.name], expected), node.describe()
        assert torch.equal(env_t[node.name], env_n[node.name]), node.describe()
    assert torch.equal(out_t, out_n)
