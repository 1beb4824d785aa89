"""Distillation losses and processes come from npuq.registry: a config names them, the public lists are
read from the registries, and a process's needs (teachers, terms, an assistant) are checked from its entry."""

import pytest
import torch

import npuq.config
import npuq.distill
from npuq.distill import losses
from npuq.distill.experiment import (
    LEAF_PROCESSES,
    LOSS_KINDS,
    PROCESSES,
    ConfigError,
    TermSpec,
    build_loss,
    load_experiment,
    parse_experiment,
)
from npuq.registry import DISTILL_LOSSES, DISTILL_PROCESSES


def test_the_public_lists_are_the_registries():
    assert LOSS_KINDS == npuq.distill.LOSS_KINDS == DISTILL_LOSSES.names()
    assert set(LOSS_KINDS) == {"kd", "hint", "attention", "rkd", "rkd_distance", "rkd_angle", "similarity", "pkt"}
    assert PROCESSES == npuq.distill.PROCESSES == DISTILL_PROCESSES.names()
    assert PROCESSES == ("alone", "offline", "dml", "born_again", "teacher_assistant")
    assert LEAF_PROCESSES == ("alone", "offline", "dml")
    assert DISTILL_LOSSES.get("kd") is losses.KDLoss and DISTILL_LOSSES.get("rkd") is losses.RKD
    assert DISTILL_LOSSES.select(channels=True) == ("hint",)


@pytest.mark.parametrize("name", sorted(DISTILL_LOSSES.names()))
def test_every_registered_loss_builds_from_a_term(name):
    loss = build_loss(TermSpec(loss=name), f"terms[{name}]", 4, 8)
    assert isinstance(loss, DISTILL_LOSSES.get(name))


def test_a_channels_loss_gets_the_tapped_channel_counts():
    hint = build_loss(TermSpec(loss="hint"), "t", 4, 8)
    assert hint(torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)).shape == ()
    assert sum(p.numel() for p in hint.parameters()) > 0  # the adapter from 4 to 8 channels
    with pytest.raises(ConfigError, match="bad argument for loss 'kd'"):
        build_loss(TermSpec(loss="kd", params={"beta": 1}), "t")


BASE = {
    "process": "offline",
    "student": {"model": "cnn", "width": 0.25},
    "teachers": [{"model": "cnn", "width": 0.5, "epochs": 1}],
    "terms": [{"loss": "kd"}],
}


@pytest.mark.parametrize(
    "process, drop, match",
    [
        ("offline", "teachers", "process 'offline' needs at least one \\[\\[teachers\\]\\] table"),
        ("teacher_assistant", "teachers", "process 'teacher_assistant' needs at least one \\[\\[teachers\\]\\]"),
        ("teacher_assistant", None, "process 'teacher_assistant' needs an \\[assistant\\] table"),
        ("born_again", "terms", "process 'born_again' needs at least one \\[\\[terms\\]\\] table"),
        ("offline", "terms", "process 'offline' needs at least one \\[\\[terms\\]\\] table"),
    ],
)
def test_a_process_needs_what_its_entry_says(process, drop, match):
    table = {k: v for k, v in {**BASE, "process": process}.items() if k != drop}
    with pytest.raises(ConfigError, match=match):
        parse_experiment(table, "cfg.toml")


@pytest.mark.parametrize("process", ["alone", "dml"])
def test_processes_without_teachers_parse_alone(process):
    assert parse_experiment({"process": process, "student": {"model": "cnn"}}).process == process


def test_the_config_reader_is_the_shared_one(tmp_path):
    assert ConfigError is npuq.config.ConfigError
    with pytest.raises(ConfigError, match="missing.toml: no such config file"):
        load_experiment(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('process = "offline\n')
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_experiment(bad)
    terms = tmp_path / "terms.toml"
    terms.write_text('process = "alone"\n[[terms]]\nloss = "pkt"\nweight = 2\neps = 1e-6\n')
    (term,) = load_experiment(terms).terms
    assert (term.loss, term.weight, term.params) == ("pkt", 2.0, {"eps": 1e-6})
