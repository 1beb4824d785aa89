"""Low-rank factorized layers (`npuq.lrf`): full-rank factors reproduce Linear, Conv2d and LSTM layers
(LSTM configurations drawn by hypothesis, packed and unbatched inputs included); truncated factors are
the optimal rank-r approximation (Eckart-Young) with the singular values split evenly; the break-even
rule; parameter counts of the compression report checked by hand; `factorize` on a mixed model, with a
state-dict round trip and an SVDCache; torchvision's and the project's MobileNets; every bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_sequence

import npuq.lrf as lrf
from npuq.lrf import (
    FactorizedConv2d,
    FactorizedLinear,
    FactorizedLSTM,
    KeptDenseWarning,
    SVDCache,
    UnknownLayerError,
    compression_report,
    factorizable_layers,
    factorize,
    factorized_ranks,
)
from npuq.lrf.layers import torch_truncated_svd
from support.torchvision_compat import torchvision_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: see conftest.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.detach().double())


def assert_close(actual, expected, atol=2e-5, rtol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------ full rank is exact


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 12), (12, 7), (9, 9)])
def test_full_rank_linear_reproduces_the_layer(shape, bias):
    torch.manual_seed(0)
    out_features, in_features = shape
    linear = nn.Linear(in_features, out_features, bias=bias)
    factorized = FactorizedLinear.from_linear(linear, min(shape))
    assert (factorized.rank, factorized.in_features, factorized.out_features) == (min(shape), in_features, out_features)
    x = torch.randn(5, 3, in_features)
    assert_close(factorized(x), linear(x))
    dense = factorized.to_dense()
    assert isinstance(dense, nn.Linear)
    assert_close(dense.weight, linear.weight)
    assert (dense.bias is None) == (not bias)


CONV_VARIANTS = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(kernel_size=3, dilation=2, padding=2, bias=False),
    dict(kernel_size=1, bias=False),
    pytest.param(
        dict(kernel_size=4, padding="same"),  # even kernel: torch pads one side more
        marks=pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
    ),
    dict(kernel_size=(3, 4), padding="same", dilation=(1, 2)),
    dict(kernel_size=3, padding="valid", stride=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=(1, 2), padding_mode="circular"),
    dict(kernel_size=3, padding=1, padding_mode="replicate", stride=2),
]


@pytest.mark.parametrize("options", CONV_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_full_rank_conv2d_reproduces_the_layer(options):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 6, **options)
    m, n = conv.out_channels, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    factorized = FactorizedConv2d.from_conv2d(conv, min(m, n))
    x = torch.randn(2, 3, 9, 10)
    assert_close(factorized(x), conv(x))
    assert factorized.first.weight.shape[1:] == conv.weight.shape[1:] and factorized.second.kernel_size == (1, 1)
    assert (factorized.stride, factorized.padding, factorized.dilation, factorized.padding_mode) == (
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.padding_mode,
    )
    assert_close(factorized.to_dense().weight, conv.weight)


def lstm_outputs_match(lstm: nn.LSTM, factorized: FactorizedLSTM, inputs, hx=None):
    expected_out, (expected_h, expected_c) = lstm(inputs, hx)
    out, (h, c) = factorized(inputs, hx)
    if isinstance(expected_out, torch.Tensor):
        assert_close(out, expected_out)
    else:  # PackedSequence: same layout, same order
        assert_close(out.data, expected_out.data)
        assert torch.equal(out.batch_sizes, expected_out.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out, name), getattr(expected_out, name)
            assert (a is None and b is None) or torch.equal(a, b)
    assert_close(h, expected_h)
    assert_close(c, expected_c)


@given(
    input_size=st.integers(1, 6),
    hidden_size=st.integers(1, 6),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    bias=st.booleans(),
    steps=st.integers(1, 5),
    batch=st.integers(1, 3),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_full_rank_lstm_reproduces_the_layer(
    input_size, hidden_size, num_layers, bidirectional, batch_first, bias, steps, batch, with_state, seed
):
    torch.manual_seed(seed)
    lstm = nn.LSTM(
        input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional
    ).eval()
    factorized = FactorizedLSTM.from_lstm(lstm, 1.0)  # every matrix at its full rank
    assert all(rank == min(factorized.shapes[name]) for name, rank in factorized.ranks.items())
    x = torch.randn(batch, steps, input_size) if batch_first else torch.randn(steps, batch, input_size)
    states = (2 if bidirectional else 1) * num_layers
    hx = (torch.randn(states, batch, hidden_size), torch.randn(states, batch, hidden_size)) if with_state else None
    lstm_outputs_match(lstm, factorized, x, hx)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_full_rank_lstm_on_packed_sequences(bidirectional, enforce_sorted):
    torch.manual_seed(2)
    lstm = nn.LSTM(4, 5, num_layers=2, bidirectional=bidirectional).eval()
    factorized = FactorizedLSTM.from_lstm(lstm, {"weight_ih_l0": 4, "weight_hh_l0": 5, "weight_ih_l1": None})
    lengths = (5, 3, 3, 1) if enforce_sorted else (2, 5, 1, 3)
    packed = pack_sequence([torch.randn(n, 4) for n in lengths], enforce_sorted=enforce_sorted)
    states = 4 if bidirectional else 2
    lstm_outputs_match(lstm, factorized, packed)
    lstm_outputs_match(lstm, factorized, packed, (torch.randn(states, 4, 5), torch.randn(states, 4, 5)))


def test_full_rank_lstm_on_unbatched_input():
    torch.manual_seed(3)
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True).eval()
    factorized = FactorizedLSTM.from_lstm(lstm, 1.0)
    x = torch.randn(6, 3)
    lstm_outputs_match(lstm, factorized, x)
    lstm_outputs_match(lstm, factorized, x, (torch.randn(4, 4), torch.randn(4, 4)))


def test_factorized_lstm_trains_and_round_trips_to_lstm():
    torch.manual_seed(4)
    lstm = nn.LSTM(6, 8, num_layers=2, dropout=0.5)
    factorized = FactorizedLSTM.from_lstm(lstm, {"weight_ih_l0": 2, "weight_hh_l1": 3})
    assert factorized.training and factorized.ranks == {
        "weight_ih_l0": 2,
        "weight_hh_l0": None,
        "weight_ih_l1": None,
        "weight_hh_l1": 3,
    }
    names = {name for name, _ in factorized.named_parameters()}
    assert {"weight_ih_l0_u", "weight_ih_l0_v", "weight_hh_l0", "weight_hh_l1_u", "bias_ih_l1"} <= names
    assert "weight_ih_l0" not in names
    out, (h, c) = factorized(torch.randn(5, 2, 6))  # training: inter-layer dropout
    (out.sum() + h.sum() + c.sum()).backward()
    assert factorized.weight_ih_l0_u.grad is not None and factorized.weight_hh_l1_v.grad is not None
    factorized.eval()
    dense = factorized.to_lstm().eval()
    x = torch.randn(5, 2, 6)
    lstm_outputs_match(dense, factorized, x)
    factorized.flatten_parameters()  # nn.LSTM's API, a no-op here


# ---------------------------------------------------------------------------- truncated: optimal


def test_truncated_linear_is_the_optimal_rank_r_approximation():
    torch.manual_seed(5)
    linear = nn.Linear(30, 20, dtype=torch.float64)
    sigma = singular_values(linear.weight)
    for rank in (1, 4, 11):
        factorized = FactorizedLinear.from_linear(linear, rank)
        assert factorized.first.weight.dtype == factorized.second.bias.dtype == torch.float64
        error = torch.linalg.matrix_norm(linear.weight - factorized.weight_product()).item()
        assert error == pytest.approx(math.sqrt((sigma[rank:] ** 2).sum().item()), rel=1e-6)
        # sqrt(S) in both factors: the rows of V^T scaled by sqrt(s) and the columns of U likewise
        root = sigma[:rank].sqrt()
        assert_close(factorized.first.weight.norm(dim=1), root, atol=1e-9, rtol=1e-7)
        assert_close(factorized.second.weight.norm(dim=0), root, atol=1e-9, rtol=1e-7)


def test_truncated_conv_and_lstm_matrices_are_optimal():
    torch.manual_seed(6)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    matrix = conv.weight.detach().reshape(12, -1)
    sigma = singular_values(matrix)
    factorized = FactorizedConv2d.from_conv2d(conv, 5)
    error = torch.linalg.matrix_norm((matrix - factorized.weight_product()).double()).item()
    assert error == pytest.approx(math.sqrt((sigma[5:] ** 2).sum().item()), rel=1e-4)
    assert factorized.first.weight.shape == (5, 8, 3, 3) and factorized.second.weight.shape == (12, 5, 1, 1)

    lstm = nn.LSTM(10, 6, bidirectional=True)
    ranks = {"weight_ih_l0": 3, "weight_hh_l0_reverse": 2}
    factorized = FactorizedLSTM.from_lstm(lstm, ranks)
    for name, rank in ranks.items():
        dense = getattr(lstm, name)
        sigma = singular_values(dense)
        error = torch.linalg.matrix_norm((dense - factorized.matrix(name)).double()).item()
        assert error == pytest.approx(math.sqrt((sigma[rank:] ** 2).sum().item()), rel=1e-4)
    assert torch.equal(factorized.matrix("weight_hh_l0"), lstm.weight_hh_l0)


def test_fraction_of_full_rank():
    linear = nn.Linear(40, 10)
    assert FactorizedLinear.from_linear(linear, 0.25).rank == 3  # 2.5 rounds half up
    assert FactorizedLinear.from_linear(linear, 0.01).rank == 1
    assert FactorizedLinear.from_linear(linear, 1.0).rank == 10


def test_a_custom_svd_callable_is_used():
    calls = []

    def numpy_svd(matrix, rank):
        calls.append((type(matrix), matrix.dtype, rank))
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vt[:rank], "error estimate"

    torch.manual_seed(7)
    linear = nn.Linear(9, 6)
    a = FactorizedLinear.from_linear(linear, 2, svd=numpy_svd)
    b = FactorizedLinear.from_linear(linear, 2, svd=torch_truncated_svd)
    assert calls == [(np.ndarray, np.float64, 2)]
    assert_close(a.weight_product(), b.weight_product())

    with pytest.raises(ValueError, match=r"must return U \(6, 2\)"):
        FactorizedLinear.from_linear(linear, 2, svd=lambda m, r: numpy_svd(m, r + 1))


def test_default_svd_switches_to_the_native_module(monkeypatch):
    from npuq.lrf.layers import _default_svd

    if importlib.util.find_spec("npuq.lrf.svd") is None:
        assert _default_svd() is torch_truncated_svd
    calls = []

    def native(matrix, rank):
        calls.append(rank)
        return (*torch_truncated_svd(matrix, rank), 0.0)  # (u, s, vt, error)

    module = types.ModuleType("npuq.lrf.svd")
    module.truncated_svd = native
    monkeypatch.setitem(sys.modules, "npuq.lrf.svd", module)
    assert _default_svd() is native and lrf.truncated_svd is native
    factorize(nn.Sequential(nn.Linear(12, 9)), {"0": 3})
    assert calls == [3]


def test_truncated_svd_is_lazy():
    if importlib.util.find_spec("npuq.lrf.svd") is None:
        with pytest.raises(ImportError, match="npuq.lrf.svd"):
            _ = lrf.truncated_svd
    else:
        assert callable(lrf.truncated_svd)
    with pytest.raises(AttributeError):
        _ = lrf.no_such_name


# ------------------------------------------------------------------------------------ break-even


def test_break_even_rank_keeps_layers_dense():
    model = nn.Sequential(nn.Linear(64, 10), nn.Linear(4, 4))  # break-even 640/74 = 8.65 and 16/8 = 2
    assert lrf.break_even_rank(10, 64) == pytest.approx(8.6486, abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = factorize(model, {"0": 8, "1": 1})
    assert isinstance(small[0], FactorizedLinear) and isinstance(small[1], FactorizedLinear)

    with pytest.warns(KeptDenseWarning, match=r"'0' rank 9 >= 8\.6.*'1' rank 2 >= 2\.0"):
        kept = factorize(model, {"0": 9, "1": 2})  # 9*74 = 666 > 640; 2*8 = 16: no saving at break-even
    assert type(kept[0]) is nn.Linear and type(kept[1]) is nn.Linear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = factorize(model, {"0": 9}, above_break_even="ignore")
    assert type(kept[0]) is nn.Linear
    with pytest.raises(ValueError, match="break-even"):
        factorize(model, {"0": 9}, above_break_even="raise")


def test_break_even_applies_to_each_lstm_matrix():
    lstm = nn.LSTM(4, 8)  # weight_ih 32 x 4 (break-even 3.6), weight_hh 32 x 8 (6.4)
    with pytest.warns(KeptDenseWarning, match="weight_ih_l0 rank 4"):
        model = factorize(nn.Sequential(lstm), {"0": 4})
    assert model[0].ranks == {"weight_ih_l0": None, "weight_hh_l0": 4}
    with pytest.warns(KeptDenseWarning):
        model = factorize(nn.Sequential(lstm), {"0": {"weight_ih_l0": 4}})
    assert type(model[0]) is nn.LSTM  # nothing left to factorize


# ---------------------------------------------------------------------------------------- report


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8 x 27, bias 8
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # not factorizable: 72
        self.norm = nn.BatchNorm2d(8)  # 16 parameters
        self.rnn = nn.LSTM(8, 6, batch_first=True)  # 24 x 8 and 24 x 6, biases 24 + 24
        self.head = nn.Linear(6, 5)  # 5 x 6, bias 5

    def forward(self, x):
        x = self.norm(self.depthwise(self.conv(x)))  # (N, 8, H, W)
        x = x.flatten(2).transpose(1, 2)  # the pixels as a sequence
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def small_model(seed: int = 8) -> Small:
    torch.manual_seed(seed)
    return Small().eval()


def test_factorizable_layers_lists_the_matrices():
    assert factorizable_layers(small_model()) == {
        "conv": {"weight": (8, 27)},
        "rnn": {"weight_ih_l0": (24, 8), "weight_hh_l0": (24, 6)},
        "head": {"weight": (5, 6)},
    }


def test_compression_report_counts_by_hand():
    model = small_model()
    total = 8 * 27 + 8 + 72 + 16 + (24 * 8 + 24 + 24 * 6 + 24) + (5 * 6 + 5)
    assert total == sum(p.numel() for p in model.parameters())

    dense = compression_report(model)
    assert [(row.path, row.matrix, row.rank) for row in dense.layers] == [
        ("conv", "weight", None),
        ("rnn", "weight_ih_l0", None),
        ("rnn", "weight_hh_l0", None),
        ("head", "weight", None),
    ]
    assert dense.model_params_before == dense.model_params_after == total
    assert dense.layer_params_before == dense.layer_params_after == total - 72 - 16
    assert dense.model_ratio == 1.0

    factorized = factorize(model, {"conv": 3, "rnn": {"weight_ih_l0": 2}, "head": 2})
    report = compression_report(factorized)
    rows = {(row.path, row.matrix): row for row in report.layers}
    conv, ih, hh, head = (
        rows["conv", "weight"],
        rows["rnn", "weight_ih_l0"],
        rows["rnn", "weight_hh_l0"],
        rows["head", "weight"],
    )
    assert (conv.shape, conv.rank, conv.params_before, conv.params_after) == ((8, 27), 3, 224, 3 * 35 + 8)
    assert conv.break_even == pytest.approx(216 / 35)
    assert (ih.rank, ih.params_before, ih.params_after) == (2, 192 + 24, 2 * 32 + 24)
    assert (hh.rank, hh.params_before, hh.params_after) == (None, 144 + 24, 144 + 24)
    assert (head.rank, head.params_before, head.params_after) == (2, 35, 2 * 11 + 5)
    after = 113 + 88 + 168 + 27
    assert report.layer_params_after == after and report.layer_params_before == 224 + 216 + 168 + 35
    assert report.model_params_after == sum(p.numel() for p in factorized.parameters()) == after + 72 + 16
    assert report.model_params_before == total
    assert report.model_ratio == pytest.approx(total / (after + 88))
    assert report.layer_ratio == pytest.approx((total - 88) / after)
    assert [row.path for row in report.factorized] == ["conv", "rnn", "head"]

    data = json.loads(report.to_json())
    assert data["model_params_before"] == total and data["layers"][0]["shape"] == [8, 27]
    markdown = report.to_markdown()
    assert "| `conv` | weight | Conv2d | 8 x 27 | 3 |" in markdown and "| dense |" in markdown


# ------------------------------------------------------------------------------------- factorize


def test_factorize_a_mixed_model_and_reload_its_state_dict(tmp_path):
    model = small_model()
    ranks = {"conv": 2, "rnn": {"weight_ih_l0": 3, "weight_hh_l0": 2}, "head": 0.4}
    factorized = factorize(model, ranks)
    assert type(model.conv) is nn.Conv2d and type(model.rnn) is nn.LSTM  # a copy by default
    assert isinstance(factorized.conv, FactorizedConv2d) and isinstance(factorized.rnn, FactorizedLSTM)
    assert factorized.head.rank == 2 and factorized.rnn.batch_first
    assert factorized_ranks(factorized) == {"conv": 2, "rnn": {"weight_ih_l0": 3, "weight_hh_l0": 2}, "head": 2}
    x = torch.randn(2, 3, 4, 4)
    assert factorized(x).shape == model(x).shape == (2, 5)

    torch.save(factorized.state_dict(), tmp_path / "factorized.pt")
    rebuilt = factorize(small_model(seed=9), factorized_ranks(factorized))
    rebuilt.load_state_dict(torch.load(tmp_path / "factorized.pt"))
    assert torch.equal(rebuilt(x), factorized(x))

    same = factorize(model, ranks, inplace=True)
    assert same is model and isinstance(model.conv, FactorizedConv2d)


def test_factorize_full_rank_keeps_outputs_and_the_model_itself_can_be_the_layer():
    model = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 8))
    with pytest.warns(KeptDenseWarning):
        same = factorize(model, {"0": 3, "2": 3})  # full rank 3 is above break-even 24/11
    x = torch.randn(4, 8)
    assert torch.equal(same(x), model(x))
    layer = nn.Linear(20, 30)
    factorized = factorize(layer, {"": 4})
    assert isinstance(factorized, FactorizedLinear) and type(layer) is nn.Linear


def test_shared_layers_stay_shared():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    factorized = factorize(model, {"0": 2})
    assert isinstance(factorized[0], FactorizedLinear) and factorized[2] is factorized[0]
    with pytest.raises(ValueError, match="'0' and '2' are the same module"):
        factorize(model, {"0": 2, "2": 2})


def test_svd_cache_gives_the_direct_result():
    model = small_model()
    cache = SVDCache(model)
    assert len(cache) == 4  # conv, both LSTM matrices, head
    calls = []

    def counting_svd(matrix, rank):
        calls.append(rank)
        return torch_truncated_svd(matrix, rank)

    lazy = SVDCache(svd=counting_svd)
    x = torch.randn(2, 3, 4, 4)
    for ranks in ({"conv": 2, "head": 1}, {"conv": 4, "rnn": {"weight_hh_l0": 3}}, {"conv": 1, "rnn": 2}):
        direct = factorize(model, ranks)
        for c in (cache, lazy):
            cached = factorize(model, ranks, cache=c)
            assert_close(cached(x), direct(x), atol=1e-6, rtol=1e-6)
            for name, param in direct.state_dict().items():
                assert_close(cached.state_dict()[name], param, atol=1e-6, rtol=1e-6)
    assert sorted(calls) == [5, 6, 8, 8]  # one full SVD per matrix used: head, weight_hh, conv and weight_ih

    model.head.weight.data.mul_(2)
    with pytest.raises(ValueError, match="differ from those this SVDCache decomposed"):
        factorize(model, {"head": 1}, cache=cache)


# ------------------------------------------------------------------------------------ MobileNets


def test_torchvision_mobilenet_v2():
    torch.manual_seed(10)
    model = torchvision_models().mobilenet_v2(num_classes=10).eval()
    layers = factorizable_layers(model)
    assert layers["classifier.1"] == {"weight": (10, 1280)}
    assert layers["features.18.0"] == {"weight": (1280, 320)}  # the last pointwise conv
    assert "features.2.conv.1.0" not in layers  # a depthwise conv
    assert all(
        module.groups == 1 for path, module in model.named_modules() if path in layers and isinstance(module, nn.Conv2d)
    )
    with pytest.raises(ValueError, match=r"'features\.2\.conv\.1\.0'.*depthwise.*groups=96"):
        factorize(model, {"features.2.conv.1.0": 4})
    ranks = {"classifier.1": 4, "features.17.conv.2": 32}  # 320 x 960
    factorized = factorize(model, ranks)
    x = torch.randn(1, 3, 32, 32)
    assert factorized(x).shape == (1, 10)
    report = compression_report(factorized)
    assert report.model_params_before == sum(p.numel() for p in model.parameters())
    assert report.model_params_before - report.model_params_after == (10 * 1280 - 4 * 1290) + (320 * 960 - 32 * 1280)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_project_mobilenets(name):
    from npuq.models import build_model

    torch.manual_seed(11)
    model = build_model(name, width=0.25).eval()
    layers = factorizable_layers(model)
    convs = {path: module for path, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    pointwise = {path for path, conv in convs.items() if conv.kernel_size == (1, 1)}
    depthwise = {path for path, conv in convs.items() if conv.groups > 1}
    assert "classifier" in layers and pointwise <= set(layers) and not depthwise & set(layers)
    ranks = {"classifier": 2, **{path: 0.25 for path in sorted(pointwise)[-2:]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KeptDenseWarning)
        factorized = factorize(model, ranks)
    assert factorized(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert compression_report(factorized).model_ratio > 1.0


# ------------------------------------------------------------------------------------- bad input


def test_unknown_paths_list_close_names():
    with pytest.raises(UnknownLayerError, match=r"no module 'haed'; close names: 'head'") as info:
        factorize(small_model(), {"haed": 2})
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownLayerError, match=r"no matrix 'weight_ih_l1'.*close: 'weight_ih_l0'"):
        factorize(small_model(), {"rnn": {"weight_ih_l1": 2}})
    with pytest.raises(TypeError, match="module paths"):
        factorize(small_model(), {0: 2})


@pytest.mark.parametrize(
    "path,module,message",
    [
        ("norm", None, r"'norm'.*BatchNorm2d; only torch.nn.Linear, torch.nn.Conv2d"),
        ("depthwise", None, r"'depthwise'.*grouped convolution \(depthwise\) with groups=8"),
        ("gru", nn.GRU(4, 4), r"'gru'.*torch.nn.modules.rnn.GRU"),
        ("conv1d", nn.Conv1d(4, 8, 3), r"'conv1d'.*Conv1d"),
        ("projected", nn.LSTM(4, 8, proj_size=2), r"'projected'.*proj_size=2"),
        ("grouped", nn.Conv2d(4, 8, 3, groups=2), r"'grouped'.*grouped convolution with groups=2"),
    ],
)
def test_unsupported_layers_are_named(path, module, message):
    model = small_model()
    if module is not None:
        model.add_module(path, module)
    with pytest.raises(ValueError, match=message):
        factorize(model, {path: 1})


def test_factorized_layers_are_refused_and_not_listed():
    factorized = factorize(small_model(), {"head": 2})
    assert "head" not in factorizable_layers(factorized) and "head.first" not in factorizable_layers(factorized)
    with pytest.raises(ValueError, match="'head'.*already factorized"):
        factorize(factorized, {"head": 1})
    with pytest.raises(ValueError, match="'head.second' is a factor of the factorized layer 'head'"):
        factorize(factorized, {"head.second": 1})
    with pytest.raises(ValueError, match="proj_size.*not supported"):
        FactorizedLSTM(4, 4, proj_size=2)


@pytest.mark.parametrize(
    "rank,error,message",
    [
        (0, ValueError, r"rank of layer 'conv' .* must be in \[1, 8\].*got 0"),
        (-1, ValueError, r"must be in \[1, 8\]"),
        (9, ValueError, r"must be in \[1, 8\] \(min\(m, n\) of its 8 x 27 matrix\), got 9"),
        (0.0, ValueError, r"fraction of its full rank 8 and must be in \(0, 1\]"),
        (1.5, ValueError, r"must be in \(0, 1\]"),
        (float("nan"), ValueError, r"must be in \(0, 1\]"),
        (True, TypeError, "bool"),
        ("4", TypeError, "got str"),
    ],
)
def test_bad_ranks_give_the_limit(rank, error, message):
    with pytest.raises(error, match=message):
        factorize(small_model(), {"conv": rank})


def test_bad_lstm_ranks():
    with pytest.raises(ValueError, match=r"'rnn'.*weight_hh_l0 must be in \[1, 6\]"):
        factorize(small_model(), {"rnn": {"weight_hh_l0": 7}})
    with pytest.raises(ValueError, match=r"weight_ih_l0 must be in \[1, 8\]"):
        factorize(small_model(), {"rnn": 0})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_layer(bad):
    model = small_model()
    with torch.no_grad():
        model.rnn.weight_hh_l0[3, 1] = bad
    with pytest.raises(ValueError, match=r"'rnn'.*NaN or inf in weight_hh_l0"):
        factorize(model, {"conv": 2, "rnn": 2}, inplace=True)
    assert type(model.conv) is nn.Conv2d  # checked before anything changed
    with pytest.raises(ValueError, match="NaN or inf in weight"):
        FactorizedLinear.from_linear(
            nn.Linear(3, 3)
            .requires_grad_(False)
            .apply(lambda m: m.weight.fill_(bad) if isinstance(m, nn.Linear) else None),
            1,
        )


def test_bad_arguments():
    model = small_model()
    with pytest.raises(TypeError, match="ranks must be a dict"):
        factorize(model, [("conv", 2)])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        factorize("model", {})
    with pytest.raises(ValueError, match="above_break_even must be one of"):
        factorize(model, {}, above_break_even="skip")
    with pytest.raises(TypeError, match="svd must be a callable"):
        factorize(model, {}, svd="lapack")
    with pytest.raises(ValueError, match="give the svd function to the SVDCache"):
        factorize(model, {"conv": 2}, svd=torch_truncated_svd, cache=SVDCache())
    with pytest.raises(ValueError, match=r"must be in \[1, 4\]"):
        FactorizedLinear(4, 6, 5)
    lstm = FactorizedLSTM(3, 4)
    with pytest.raises(ValueError, match="input has 5 features"):
        lstm(torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(1, 1, 4\)"):
        lstm(torch.randn(2, 1, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
