"""Strategies and tasks of the rank search come from npuq.registry: one list of names, lookups through the
registry, and modules that import on their own in any order (no import cycle)."""

import importlib
import os
import subprocess
import sys

import pytest
import torch.nn as nn

import npuq.config
import npuq.lrf.search as search_package
from npuq.lrf.search import Evaluator, SearchSpace, reinforce, search, strategies
from npuq.lrf.search.config import STRATEGIES, ConfigError, load_config
from npuq.lrf.search.tasks import TASKS, FashionMnistTask, make_task
from npuq.registry import SEARCH_STRATEGIES, SEARCH_TASKS
from support import ROOT

optuna_module = importlib.import_module("npuq.lrf.search.optuna_search")  # the package's name is the function


def test_the_strategy_lists_are_the_registry():
    assert STRATEGIES == search_package.STRATEGIES == strategies.STRATEGIES == SEARCH_STRATEGIES.names()
    assert SEARCH_STRATEGIES.names() == ("reinforce", "nsga2", "tpe", "random")
    assert SEARCH_STRATEGIES.get("reinforce") is reinforce._strategy
    assert optuna_module.SAMPLERS == SEARCH_STRATEGIES.select(sampler=True) == ("nsga2", "tpe", "random")


def test_search_dispatches_through_the_registry(monkeypatch):
    seen = {}

    def fake(evaluator, **kwargs):
        seen.update(kwargs, evaluator=evaluator)
        return "result"

    SEARCH_STRATEGIES.get("tpe")  # the providers are loaded before the entry is replaced
    monkeypatch.setitem(SEARCH_STRATEGIES._entries, "tpe", fake)
    assert search("evaluator", strategy="tpe", target=2.0, budget=3, optuna_options={"population_size": 4}) == "result"
    assert seen["evaluator"] == "evaluator" and seen["strategy"] == "tpe" and seen["budget"] == 3
    assert seen["optuna_options"] == {"population_size": 4}
    with pytest.raises(ValueError, match="strategy must be one of"):
        search("evaluator", strategy="annealing", target=2.0, budget=3)


def test_an_optuna_strategy_runs_its_sampler():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    evaluator = Evaluator(SearchSpace(model, fractions=(0.5,)), lambda m: 0.1)
    result = search(
        evaluator, strategy="random", target=1.2, budget=3, progress=False, optuna_options={"population_size": 2}
    )
    assert result.strategy == "random" and len(result.history) == 3
    with pytest.raises(ValueError, match="sampler must be one of"):
        optuna_module._make_sampler(None, "cmaes", 0, 2)


def test_tasks_is_a_read_only_view_of_the_registry():
    # in the order of registration, which depends on which task module was imported first
    assert list(TASKS) == list(SEARCH_TASKS.names()) and sorted(TASKS) == ["asr_digits", "fashion_mnist"]
    assert TASKS["fashion_mnist"] is FashionMnistTask is SEARCH_TASKS.get("fashion_mnist")
    assert "speech" not in TASKS and len(TASKS) == 2
    with pytest.raises(KeyError):
        TASKS["speech"]
    with pytest.raises(TypeError):
        TASKS["mine"] = FashionMnistTask
    with pytest.raises(ConfigError, match=r"cfg: task\.name: unknown task 'speech'; registered: asr_digits"):
        make_task("speech", {}, "cfg: task")
    assert make_task("fashion_mnist", {"dev_size": 10}).options.dev_size == 10


def test_one_config_error_and_one_reader(tmp_path):
    from npuq.distill import experiment

    assert ConfigError is npuq.config.ConfigError is experiment.ConfigError
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("strategy = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    assert load_config(ROOT / "configs" / "lrf" / "mobilenet_v2_search.toml").strategy in STRATEGIES


@pytest.mark.parametrize(
    "first", ["npuq.lrf.search.asr_task", "npuq.lrf.search.tasks", "npuq.lrf.search.config", "npuq.lrf.search.iterate"]
)
def test_each_module_imports_first_and_every_task_is_found(first):
    code = (
        f"import {first}\nfrom npuq.registry import SEARCH_TASKS, SEARCH_STRATEGIES\n"
        "print(','.join(SEARCH_TASKS.names()), len(SEARCH_STRATEGIES.items()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        # the npuq this test imports (installed, or the source tree under PYTHONPATH=python)
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert out.returncode == 0, out.stderr
    tasks, count = out.stdout.split()
    assert sorted(tasks.split(",")) == ["asr_digits", "fashion_mnist"] and count == "4"
