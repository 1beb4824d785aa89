"""The registries of the quantizers, observers and models: their names are the public name lists, they refuse
duplicates and undeclared names, an unknown name is answered with the known ones, and an entry registered
later is reachable through npuq.quantize."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import npuq
import npuq.quant
from npuq import _validate, methods
from npuq.models import MODELS as MODEL_NAMES
from npuq.models import build_model
from npuq.quant import observers, weights
from npuq.quant.weights import quantize_weight
from npuq.registry import ACTIVATION_OBSERVERS, MODELS, WEIGHT_QUANTIZERS, Registry, UnknownNameError


def test_the_weight_method_lists_are_the_registry():
    assert methods.WEIGHT_METHODS == WEIGHT_QUANTIZERS.names() == weights.METHODS == npuq.quant.WEIGHT_METHODS
    assert methods.DATA_AWARE_WEIGHT_METHODS == WEIGHT_QUANTIZERS.select(data_aware=True) == weights.DATA_AWARE_METHODS
    assert weights.DATA_FREE_METHODS == WEIGHT_QUANTIZERS.select(data_aware=False)
    assert all(isinstance(WEIGHT_QUANTIZERS.meta(m)["data_aware"], bool) for m in WEIGHT_QUANTIZERS)


def test_the_observer_lists_are_the_registry():
    assert methods.ACTIVATION_METHODS == ACTIVATION_OBSERVERS.names() == npuq.quant.ACTIVATION_METHODS
    assert tuple(observers.OBSERVER_KINDS) == ACTIVATION_OBSERVERS.names()
    for name, cls in ACTIVATION_OBSERVERS.items():
        assert cls.kind == name and observers.make_observer(name).kind == name


def test_the_model_list_is_the_registry():
    assert tuple(MODEL_NAMES) == MODELS.names() == ("cnn", "mobilenet_v1", "mobilenet_v2")
    for name in MODELS:
        assert isinstance(build_model(name, width=0.25), nn.Module)


def test_the_arithmetic_modes_have_one_home():
    assert methods.ROUNDINGS is _validate.ROUNDING_MODES and methods.OVERFLOWS is _validate.OVERFLOW_POLICIES


def test_the_method_names_load_without_torch():
    code = "import sys, npuq.methods as m; assert m.WEIGHT_METHODS and 'torch' not in sys.modules, sys.modules.keys()"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -------------------------------------------------------------------------------------------- refusals


def test_a_duplicate_or_undeclared_name_is_refused():
    with pytest.raises(ValueError, match="'wess' is registered twice"):
        WEIGHT_QUANTIZERS.add("wess", lambda *a, **k: None, data_aware=False)
    with pytest.raises(ValueError, match="'wess_new' is not declared"):
        WEIGHT_QUANTIZERS.register("wess_new", data_aware=False)(lambda *a, **k: None)
    with pytest.raises(ValueError, match="'kl' is registered twice"):
        ACTIVATION_OBSERVERS.register("kl")(type("Other", (observers.Observer,), {}))
    with pytest.raises(ValueError, match="'histogram' is not declared"):
        ACTIVATION_OBSERVERS.add("histogram", observers.MinMaxObserver)
    with pytest.raises(ValueError, match="'cnn' is registered twice"):
        MODELS.register("cnn")(lambda width=1.0: None)
    assert "wess_new" not in WEIGHT_QUANTIZERS and "histogram" not in ACTIVATION_OBSERVERS


@pytest.mark.parametrize(
    "call, known",
    [
        (lambda: quantize_weight(torch.ones(2, 3), "wes"), methods.WEIGHT_METHODS),
        (lambda: observers.make_observer("histogram"), methods.ACTIVATION_METHODS),
        (lambda: build_model("resnet18"), ("cnn", "mobilenet_v1", "mobilenet_v2")),
    ],
)
def test_an_unknown_name_lists_the_known_ones(call, known):
    with pytest.raises(UnknownNameError) as info:
        call()
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    assert str(info.value).endswith("; known: " + ", ".join(known))


def test_a_registration_that_contradicts_its_declared_metadata_is_refused():
    registry = Registry("method", declared={"a": {"data_aware": False}, "b": {"data_aware": True}})
    with pytest.raises(ValueError, match=r"'a' is declared with data_aware=False .* registered with data_aware=True"):
        registry.add("a", object(), data_aware=True)
    registry.add("a", len)  # the declared metadata fills what the registration leaves out
    assert registry.meta("a") == {"data_aware": False}
    assert registry.select(data_aware=True) == ("b",)  # from the declaration: "b" has no implementation yet
    with pytest.raises(ValueError, match="'c' is not declared"):
        registry.add("c", len)


def test_the_data_aware_list_needs_no_import():
    code = (
        "import sys; from npuq.methods import DATA_AWARE_WEIGHT_METHODS as d; "
        "assert d == ('wess_output',), d; assert 'torch' not in sys.modules and 'npuq.quant' not in sys.modules"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------------- later registrations


def _extend(monkeypatch, registry, name, obj, **meta):
    """Register ``name`` for the duration of a test (the registry is restored afterwards)."""
    registry.items()  # load the providers first, so that the restored state is the loaded one
    monkeypatch.setattr(registry, "declared", registry.declared + (name,))
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(registry, "_meta", dict(registry._meta))
    registry.add(name, obj, **meta)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_a_quantizer_and_an_observer_registered_later_are_reachable_through_quantize(monkeypatch):
    seen = []

    def per_layer_copy(w, bits, *, name, **data):
        seen.append(name)
        qw = WEIGHT_QUANTIZERS.get("per_layer")(w, bits, name=name, **data)
        return dataclasses.replace(qw, method="per_layer_copy")

    class Widened(observers.MinMaxObserver):
        kind = "widened"

        def _choose_range(self):
            return 2 * self.min_val, 2 * self.max_val

    _extend(monkeypatch, WEIGHT_QUANTIZERS, "per_layer_copy", per_layer_copy, data_aware=False)
    _extend(monkeypatch, ACTIVATION_OBSERVERS, "widened", Widened)
    torch.manual_seed(0)
    batches = [torch.randn(4, 2, 5, 5) for _ in range(2)]
    qmodel = npuq.quantize(_Net().eval(), batches, weights="per_layer_copy", activations="widened")
    assert seen == ["conv+relu", "fc"] and qmodel.report.config["weights"] == "per_layer_copy"
    assert {r.method for r in qmodel.report.layers} == {"per_layer_copy"}
    assert qmodel(batches[0]).shape == (4, 3)


def test_later_registrations_are_gone_after_their_test():
    assert "per_layer_copy" not in WEIGHT_QUANTIZERS and "widened" not in ACTIVATION_OBSERVERS
    assert WEIGHT_QUANTIZERS.names() == methods.WEIGHT_METHODS
