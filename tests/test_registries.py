"""The registries of npuq.registry are the one list of names: the docs, the shipped configs and the command
line's choices name exactly what is registered."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from npuq import _validate
from npuq.registry import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGS = ROOT / "configs"


def _names(text: str) -> list[str]:
    """The names in backticks (lower-case identifiers: `kd`, `wess_mse`) of a piece of text."""
    return re.findall(r"`([a-z][a-z0-9_]*)`", text)


def _table(text: str, heading: str, column: str) -> list[str]:
    """The cells of ``column`` of the first markdown table after the line that contains ``heading``."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    index = header.index(column)
    cells = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells.append([c.strip() for c in line.strip("|").split("|")][index])
    return cells


def _row(text: str, key: str) -> str:
    """The second cell of the table row whose first cell is ``key``."""
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {key} |")]
    return line.split("|")[2]


def _between(text: str, start: str, end: str) -> str:
    return re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, re.S).group(1)


def _doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# registry -> (the doc that lists its names, how to read them from it)
DOCUMENTED = {
    "weight_quantizers": (
        "quantization.md",
        lambda t: [_names(c)[0] for c in _table(t, "## 2. Weight quantizers", "method")],
    ),
    "activation_observers": ("quantization.md", lambda t: _names(_between(t, "Observers:", "The module"))),
    "distill_losses": (
        "distillation_losses.md",
        lambda t: [n for c in _table(t, "| loss | config name", "config name") for n in _names(c)],
    ),
    "distill_processes": ("distillation.md", lambda t: _names(_between(t, "the process (", ")"))),
    "search_strategies": ("lrf_search.md", lambda t: _names(_row(t, "`strategy`"))),
    "search_tasks": ("lrf_search.md", lambda t: _names(_between(_row(t, "`[task]`"), "(", ")"))),
    "models": ("distillation.md", lambda t: _names(_between(t, "(models:", ")"))),
}


def test_every_registry_is_documented():
    assert set(DOCUMENTED) == set(REGISTRIES)


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_the_docs_list_the_registered_names(key):
    doc, read = DOCUMENTED[key]
    listed = read(_doc(doc))
    assert len(listed) == len(set(listed)), f"docs/{doc} lists a {REGISTRIES[key].kind} twice: {listed}"
    assert set(listed) == set(REGISTRIES[key].names()), f"docs/{doc} and npuq.registry.{key} disagree"


# ------------------------------------------------------------------------------------------- configs
def _unregistered(key: str, names, where: str) -> list[str]:
    registry = REGISTRIES[key]
    return [f"{where}: {registry.kind} {n!r}" for n in names if n not in registry]


def _distill(table: dict, where: str) -> list[str]:
    models = [table.get("student", {}).get("model", "cnn")]
    models += [t.get("model", "cnn") for t in [*table.get("teachers", []), table.get("assistant", {})]]
    return (
        _unregistered("distill_losses", [t.get("loss", "kd") for t in table.get("terms", [])], where)
        + _unregistered("distill_processes", [table.get("process", "offline")], where)
        + _unregistered("models", models, where)
    )


def _lrf(table: dict, where: str) -> list[str]:
    return _unregistered("search_strategies", [table.get("strategy", "reinforce")], where) + _unregistered(
        "search_tasks", [table.get("task", {}).get("name", "fashion_mnist")], where
    )


def _ptq(table: dict, where: str) -> list[str]:
    if table.get("task") == "imagenet":
        from npuq.apps.ptq_imagenet import METHODS

        weights = {name: kwargs["weights"] for name, (_, kwargs) in METHODS.items()}
    else:
        from npuq.apps.ptq_benchmark import METHODS

        weights = {name: kwargs["weights"] for name, kwargs in METHODS.items()}
    methods = table.get("methods", list(weights))
    unknown = [f"{where}: benchmark method {m!r}" for m in methods if m not in weights]
    return (
        unknown
        + _unregistered("weight_quantizers", [weights[m] for m in methods if m in weights], where)
        + _unregistered("activation_observers", [table.get("activations", "mse")], where)
    )


def _checker(path: Path):
    relative = path.relative_to(CONFIGS)
    if relative.parts[0] == "distill":
        return _distill
    if relative.parts[0] == "lrf":
        return _lrf
    if relative.name.startswith("ptq"):
        return _ptq
    return None


def test_every_shipped_config_uses_registered_names():
    files = sorted(CONFIGS.rglob("*.toml"))
    assert len(files) >= 20
    unchecked = [str(p.relative_to(ROOT)) for p in files if _checker(p) is None]
    assert not unchecked, f"configs no check here reads: {unchecked}"
    bad = []
    for path in files:
        bad += _checker(path)(tomllib.loads(path.read_text(encoding="utf-8")), str(path.relative_to(ROOT)))
    assert not bad, "unregistered names in configs:\n" + "\n".join(bad)


def test_the_benchmark_methods_use_registered_weight_quantizers():
    from npuq.apps import ptq_benchmark, ptq_imagenet

    used = {kw["weights"] for kw in ptq_benchmark.METHODS.values()}
    used |= {kw["weights"] for _, kw in ptq_imagenet.METHODS.values()}
    assert used <= set(REGISTRIES["weight_quantizers"].names())


# ------------------------------------------------------------------------------------- command line
# option -> the names its choices must be (a registry's, or the arithmetic's vocabulary in npuq._validate);
# "none" of `--activations` is weight-only quantization, not an observer
CHOICES = {
    "--weights": (lambda: REGISTRIES["weight_quantizers"].names(), ()),
    "--activations": (lambda: REGISTRIES["activation_observers"].names(), ("none",)),
    "--strategy": (lambda: REGISTRIES["search_strategies"].names(), ()),
    "--rounding": (lambda: _validate.ROUNDING_MODES, ()),
    "--overflow": (lambda: _validate.OVERFLOW_POLICIES, ()),
}


def _options_with_choices(parser: argparse.ArgumentParser, command: tuple = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_with_choices(sub, (*command, name))
        elif action.choices is not None and action.option_strings:
            yield " ".join(command), action.option_strings[-1], list(action.choices)


def test_the_command_line_choices_are_the_registered_names():
    from npuq.cli import build_parser

    found = list(_options_with_choices(build_parser()))
    assert {option for _, option, _ in found} >= set(CHOICES), "an option this test checks is gone"
    bad = []
    for command, option, choices in found:
        if option not in CHOICES:
            continue
        names, extra = CHOICES[option]
        expected = list(names())
        if [c for c in choices if c not in extra] != expected:
            bad.append(f"npuq {command} {option}: {choices}, registered: {expected}")
    assert not bad, "\n".join(bad)
